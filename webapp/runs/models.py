from django.conf import settings
from django.db import models

from engine.metrics import UNSEEDED


class Task(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        FINISHED = "finished"
        FAILED = "failed"
        CANCELLED = "cancelled"

    FINAL = (Status.FINISHED, Status.FAILED, Status.CANCELLED)

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tasks")
    prompt = models.TextField()
    model = models.CharField(max_length=100)
    max_tokens = models.PositiveIntegerField(default=256)
    temperature = models.FloatField(default=0.0)
    top_p = models.FloatField(default=1.0)
    seed = models.PositiveIntegerField(default=0)

    class Mode(models.TextChoices):
        ASYNC = "async", "async (AsyncLM)"
        SYNC = "sync", "sync"
        SYNC_PARALLEL = "sync_parallel", "sync parallel"

    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.ASYNC)
    # Snapshot of the tools' specifications at submission: later registry edits never change it.
    tools = models.JSONField(default=list, blank=True)
    # Named stateful instances' starting states ({"e1": {...}}), once each rather than in every
    # tool snapshot of the instance.
    instances = models.JSONField(default=dict, blank=True)
    # A chat client's turns before `prompt` ([{"role", "content"}], system/user/assistant): the
    # OpenAI-compatible endpoint's message history. Empty for a task from the form or our API.
    conversation = models.JSONField(default=list, blank=True)
    max_calls = models.PositiveIntegerField(default=16)
    max_wall_s = models.FloatField(default=300.0)
    max_result_chars = models.PositiveIntegerField(default=2000)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    status_reason = models.TextField(blank=True)
    engine_id = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    final_text = models.TextField(blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    # Tasks submitted together to compare modes: same prompt, tools, seed and tool latencies,
    # run one after the other.
    compare_group = models.UUIDField(null=True, blank=True, db_index=True)
    # The LoRA adapter the engine ran the model with ({"name", "sha256"}), null for a plain model.
    adapter = models.JSONField(null=True, blank=True)
    # A sub-agent's task: the task whose call of an `agent` tool started it, that call's id, and
    # how deep it is below a task a person submitted (0).
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    parent_call_id = models.CharField(max_length=64, blank=True)
    depth = models.PositiveSmallIntegerField(default=0)
    # A team member's task: the team's id (every member's) and its name in the team.
    team = models.UUIDField(null=True, blank=True, db_index=True)
    member = models.CharField(max_length=32, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["parent", "parent_call_id"],
                                               condition=models.Q(parent__isnull=False),
                                               name="one_child_per_agent_call")]

    def __str__(self) -> str:
        return f"Task {self.pk} ({self.status})"

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL

    @property
    def rerun_may_differ(self) -> str:
        """Why running this task again may write other text ("" when it would not). Tasks stored
        before the reason was recorded could only differ for the first reason: an unseeded server."""
        metrics = self.metrics or {}
        if metrics.get("reproducible") is not False:
            return ""
        return str(metrics.get("not_reproducible_because") or UNSEEDED)


class TraceEvent(models.Model):
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    t_ms = models.FloatField(help_text="milliseconds since the engine started the task")
    kind = models.CharField(max_length=32)
    payload = models.JSONField(default=dict)

    class Meta:
        ordering = ["task", "seq"]
        constraints = [models.UniqueConstraint(fields=["task", "seq"], name="trace_event_task_seq")]

    def __str__(self) -> str:
        return f"{self.task_id}#{self.seq} {self.kind}"

    def as_message(self) -> dict:
        return {"task_id": self.task_id, "seq": self.seq, "t_ms": self.t_ms, "kind": self.kind,
                "payload": self.payload}


class ToolCall(models.Model):
    class Status(models.TextChoices):
        DECODED = "decoded"
        WAITING = "waiting"
        DISPATCHED = "dispatched"
        RUNNING = "running"
        DONE = "done"
        ERROR = "error"

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="calls")
    call_id = models.CharField(max_length=100)
    tool = models.CharField(max_length=200)
    arguments = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DECODED)
    worker = models.CharField(max_length=200, blank=True)
    decoded_ms = models.FloatField(null=True, blank=True)
    dispatched_ms = models.FloatField(null=True, blank=True)
    started_ms = models.FloatField(null=True, blank=True)
    finished_ms = models.FloatField(null=True, blank=True)
    injected_ms = models.FloatField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["task", "decoded_ms", "id"]
        constraints = [models.UniqueConstraint(fields=["task", "call_id"], name="tool_call_unique_id")]

    def __str__(self) -> str:
        return f"{self.task_id}:{self.call_id} {self.tool} ({self.status})"
