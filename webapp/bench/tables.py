"""The opening of one section of bench.md: its heading, what it shows, and a table's head."""

from __future__ import annotations


def section_head(title: str, text: str, columns: list[str]) -> list[str]:
    return ["", f"## {title}", "", text, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
