"""Importing tool documents into packs, idempotently: a re-import updates the pack's tools by
name and never duplicates them."""

from __future__ import annotations

import hashlib
import json
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
    deleted: int = 0
    unchanged: bool = False

    def __str__(self) -> str:
        if self.unchanged:
            return f"{self.pack}: unchanged"
        return f"{self.pack}: {self.created} created, {self.updated} updated, {self.deleted} deleted"


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


def _digest(description: str, tools: list[dict[str, Any]], defaults: dict[str, Any] | None) -> str:
    text = json.dumps([description, defaults, tools], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@transaction.atomic
def import_pack(pack_name: str, tools: list[dict[str, Any]], *, description: str = "",
                defaults: dict[str, Any] | None = None, prune: bool = False, source: str = "") -> ImportReport:
    """Create or update a pack's tools by name. With prune, tools the source no longer has are
    deleted (for packs that mirror a source). A pack whose source did not change since its last
    import, and still has exactly the source's tools, is left alone (an operator's edits stay)."""
    names = [t["name"] for t in tools]
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise ToolImportError(f"duplicate tool names in {pack_name}: {repeated}")
    digest = _digest(description, tools, defaults)
    pack, _ = ToolPack.objects.get_or_create(name=pack_name, defaults={"description": description})
    report = ImportReport(pack_name)
    if pack.source_digest == digest and set(pack.tools.values_list("name", flat=True)) == set(names):
        report.unchanged = True
        return report
    if description:
        pack.description = description
    pack.source, pack.source_digest = source or pack.source, digest
    pack.save()
    existing = {t.name: t for t in pack.tools.all()}
    for spec in tools:
        fields = {**(defaults or {}), **{k: v for k, v in spec.items() if k != "name"}}
        tool = existing.get(spec["name"]) or Tool(pack=pack, name=spec["name"])
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
    if prune:
        report.deleted, _ = pack.tools.exclude(name__in=names).delete()
    return report
