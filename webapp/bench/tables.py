"""Pieces of bench.md's tables: a section's opening (heading, what it shows, a table's head) and
cells that more than one table writes."""

from __future__ import annotations


def section_head(title: str, text: str, columns: list[str]) -> list[str]:
    return ["", f"## {title}", "", text, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def cut_cell(cut: int, in_answer: int | None) -> str:
    """Runs cut at the token limit, and of them those cut in the answer, every result in (rows
    measured before that was recorded have None)."""
    return f"{cut} ({in_answer} in the answer)" if cut and in_answer is not None else str(cut)
