"""Importing tool documents into packs, idempotently: a re-import updates the pack's tools by
name and never duplicates them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from webapp.tools.models import Tool, ToolPack


class ToolImportError(ValueError):
    pass


@dataclass
class ImportReport:
    pack: str
    created: int = 0
    updated: int = 0


def openai_tools(document: Any) -> list[dict[str, Any]]:
    """OpenAI-style tool JSON: a list of {"type": "function", "function": {name, description,
    parameters}} (or of the bare function objects)."""
    items = document.get("tools", document) if isinstance(document, dict) else document
    if not isinstance(items, list):
        raise ToolImportError("expected a list of tools (or an object with a 'tools' list)")
    out = []
    for n, item in enumerate(items, start=1):
        fn = item.get("function", item) if isinstance(item, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ToolImportError(f"tool #{n} has no function name")
        out.append({"name": fn["name"], "description": fn.get("description", ""),
                    "parameters": fn.get("parameters") or {"type": "object", "properties": {}}})
    return out


@transaction.atomic
def import_pack(pack_name: str, tools: list[dict[str, Any]], *, description: str = "",
                defaults: dict[str, Any] | None = None) -> ImportReport:
    pack, _ = ToolPack.objects.get_or_create(name=pack_name, defaults={"description": description})
    report = ImportReport(pack_name)
    names = [t["name"] for t in tools]
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise ToolImportError(f"duplicate tool names in {pack_name}: {repeated}")
    for spec in tools:
        fields = {**(defaults or {}), **{k: v for k, v in spec.items() if k != "name"}}
        tool = Tool.objects.filter(pack=pack, name=spec["name"]).first() or Tool(pack=pack, name=spec["name"])
        created = tool.pk is None
        for key, value in fields.items():
            setattr(tool, key, value)
        try:
            tool.full_clean()
        except ValidationError as exc:
            raise ToolImportError(f"{pack_name}/{spec['name']}: {'; '.join(exc.messages)}") from None
        tool.save()
        report.created += created
        report.updated += not created
    return report
