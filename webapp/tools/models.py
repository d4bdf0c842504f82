from django.core.exceptions import ValidationError
from django.db import models

from engine.tools import ToolSpec


class ToolPack(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    source = models.CharField(max_length=200, blank=True, help_text="where an imported pack came from")
    source_digest = models.CharField(max_length=64, blank=True, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def tool_specs(self) -> list[dict]:
        """The snapshots of its enabled tools, as a task keeps them."""
        return [t.spec().to_dict() for t in self.tools.filter(enabled=True)]


class Tool(models.Model):
    class Kind(models.TextChoices):
        SIMULATED = "simulated"
        PYTHON = "python"
        HTTP = "http"
        BFCL = "bfcl", "BFCL stateful class"
        AGENT = "agent", "sub-agent (an LLM task)"

    pack = models.ForeignKey(ToolPack, on_delete=models.CASCADE, related_name="tools")
    name = models.CharField(max_length=200, help_text="dotted names are allowed, e.g. e1.cd")
    description = models.TextField()
    parameters = models.JSONField(default=dict, help_text="JSON Schema of the arguments (an object schema)")
    est_latency_ms = models.PositiveIntegerField(default=100, help_text="shown to the model (LPT ordering)")
    timeout_s = models.FloatField(default=10.0)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.SIMULATED)
    config = models.JSONField(default=dict, blank=True, help_text="kind-specific configuration")
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["pack__name", "name"]
        constraints = [models.UniqueConstraint(fields=["pack", "name"], name="tool_name_unique_in_pack")]

    def __str__(self) -> str:
        return f"{self.pack.name}/{self.name}"

    def spec(self, instance: str | None = None) -> ToolSpec:
        """The snapshot a task keeps. A BFCL tool belongs to an instance: by default one per
        class; a named instance prefixes the tool's name (`e1.cd`); its scenario is kept once, in
        the task's `instances`."""
        name, config = self.name, dict(self.config)
        timeout_s = self.timeout_s
        if self.kind == self.Kind.BFCL:
            config.setdefault("instance", config.get("class", ""))
            if instance:
                name, config["instance"] = f"{instance}.{self.name}", instance
        if self.kind == self.Kind.AGENT:
            from webapp.runs.agents import AGENT_GRACE_S, agent_wall_s

            timeout_s = agent_wall_s(config) + AGENT_GRACE_S  # the child's own budget, then a grace
        return ToolSpec(name=name, description=self.description, parameters=self.parameters,
                        est_latency_ms=self.est_latency_ms, timeout_s=timeout_s, kind=self.kind,
                        config=config, tool_id=self.pk)

    def clean(self):
        from workers.executors import ToolError, executor_for

        try:
            self.spec().check()
        except ValueError as exc:
            raise ValidationError({"parameters": str(exc)}) from exc
        try:
            executor_for(self.kind).check_config(self.config)
        except ToolError as exc:
            raise ValidationError({"config": str(exc)}) from exc
