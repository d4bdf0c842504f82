"""Importing an MCP server's tools into its pack: each listed tool becomes (or updates) a tool of
kind `mcp` with the server's JSON Schema, description and read-only hint; tools the server no
longer lists are removed. Importing again changes nothing when the server's list is unchanged.

Tool names: ours must be identifiers (with dots) because the model writes them in CML calls; an
MCP name with other characters (`get-weather`) is kept in the config and the tool is named with
those characters replaced (`get_weather`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.utils import timezone

from engine.tools import ToolSpec
from webapp.tools.models import McpServer, Tool, ToolPack
from workers.executors import ToolError
from workers.mcp_sessions import McpConnection, pool

MAX_DESCRIPTION_CHARS = 2000
MAX_TOOLS = 200
DEFAULT_LATENCY_MS = 500  # shown to the model until an operator sets a measured one


@dataclass
class ImportReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # MCP name -> why

    def __str__(self) -> str:
        parts = [f"{len(self.created)} new", f"{len(self.updated)} updated", f"{len(self.unchanged)} unchanged",
                 f"{len(self.removed)} removed"]
        text = ", ".join(parts)
        if self.skipped:
            text += "; skipped: " + "; ".join(f"{name}: {why}" for name, why in self.skipped.items())
        return text


def local_name(mcp_name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", mcp_name)
    return name if re.match(r"[A-Za-z_]", name) else f"t_{name}"


def list_tools(server: McpServer) -> list[Any]:
    connection = McpConnection.of(server.connection_config())
    listed = pool().request(connection, "list_tools", timeout_s=server.timeout_s)
    return list(listed.tools)


def import_tools(server: McpServer) -> ImportReport:
    """List the server's tools and bring its pack in line. ToolError when the server cannot be
    reached; recorded on the server either way."""
    try:
        listed = list_tools(server)
    except ToolError as exc:
        McpServer.objects.filter(pk=server.pk).update(last_error=str(exc)[:2000])
        raise
    report = ImportReport()
    with transaction.atomic():
        pack, _ = ToolPack.objects.get_or_create(
            name=server.pack_name, defaults={"description": f"Tools of the MCP server {server.name}."})
        pack.source = f"mcp:{McpConnection.of(server.connection_config())}"
        pack.save(update_fields=["source"])
        kept: set[str] = set()
        for tool in listed[:MAX_TOOLS]:
            _import_one(server, pack, tool, kept, report)
        for stale in pack.tools.exclude(name__in=kept).order_by("name"):
            report.removed.append(stale.name)
            stale.delete()
        McpServer.objects.filter(pk=server.pk).update(imported_at=timezone.now(), last_error="")
    if len(listed) > MAX_TOOLS:
        report.skipped["..."] = f"the server lists {len(listed)} tools; the first {MAX_TOOLS} were imported"
    return report


def _import_one(server: McpServer, pack: ToolPack, tool: Any, kept: set[str], report: ImportReport) -> None:
    name = local_name(tool.name)
    if name in kept:
        report.skipped[tool.name] = f"its name becomes {name!r}, which another tool of this server has"
        return
    annotations = tool.annotations
    fields = {
        "description": (tool.description or getattr(tool, "title", None) or tool.name)[:MAX_DESCRIPTION_CHARS],
        "parameters": tool.input_schema,
        "kind": Tool.Kind.MCP,
        "config": {**server.connection_config(), "server": server.name, "tool": tool.name},
        "read_only": bool(annotations and annotations.read_only_hint),
        "timeout_s": server.timeout_s,
    }
    try:
        ToolSpec(name=name, description=fields["description"], parameters=fields["parameters"]).check()
    except ValueError as exc:
        report.skipped[tool.name] = f"its input schema is not usable: {exc}"
        return
    kept.add(name)
    existing = pack.tools.filter(name=name).first()
    if existing is None:
        Tool.objects.create(pack=pack, name=name, est_latency_ms=DEFAULT_LATENCY_MS, **fields)
        report.created.append(name)
    elif any(getattr(existing, k) != v for k, v in fields.items()):
        for k, v in fields.items():
            setattr(existing, k, v)
        existing.save()
        report.updated.append(name)
    else:
        report.unchanged.append(name)
