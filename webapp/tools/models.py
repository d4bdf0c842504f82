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
        MCP = "mcp", "MCP server's tool"

    pack = models.ForeignKey(ToolPack, on_delete=models.CASCADE, related_name="tools")
    name = models.CharField(max_length=200, help_text="dotted names are allowed, e.g. e1.cd")
    description = models.TextField()
    parameters = models.JSONField(default=dict, help_text="JSON Schema of the arguments (an object schema)")
    est_latency_ms = models.PositiveIntegerField(default=100, help_text="shown to the model (LPT ordering)")
    timeout_s = models.FloatField(default=10.0)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.SIMULATED)
    config = models.JSONField(default=dict, blank=True, help_text="kind-specific configuration")
    enabled = models.BooleanField(default=True)
    read_only = models.BooleanField(default=False, help_text="only reads, changes nothing (an MCP server's "
                                                             "readOnlyHint)")

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


class McpServer(models.Model):
    """An MCP server whose tools are imported into a pack of their own (`mcp-<name>`)."""

    class Transport(models.TextChoices):
        HTTP = "http", "streamable HTTP"
        STDIO = "stdio", "stdio (a command from ASYNCLM_MCP_STDIO_COMMANDS)"

    name = models.SlugField(max_length=100, unique=True)
    transport = models.CharField(max_length=10, choices=Transport.choices, default=Transport.HTTP)
    url = models.URLField(max_length=500, blank=True, help_text="streamable HTTP: the server's endpoint, e.g. "
                                                                 "http://127.0.0.1:8765/mcp (allow-listed hosts only)")
    command = models.CharField(max_length=100, blank=True, help_text="stdio: the name of an allow-listed command")
    timeout_s = models.FloatField(default=30.0, help_text="per call; also the imported tools' timeout")
    imported_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "MCP server"

    def __str__(self) -> str:
        return self.name

    @property
    def pack_name(self) -> str:
        return f"mcp-{self.name}"

    def connection_config(self) -> dict[str, str]:
        return {"transport": self.transport, "url": self.url if self.transport == self.Transport.HTTP else "",
                "command": self.command if self.transport == self.Transport.STDIO else ""}

    def clean(self):
        from workers.executors import ToolError
        from workers.mcp_sessions import McpConnection

        field = "url" if self.transport == self.Transport.HTTP else "command"
        try:
            McpConnection.of(self.connection_config())
        except ToolError as exc:
            raise ValidationError({field: str(exc)}) from exc
