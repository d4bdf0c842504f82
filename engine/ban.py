"""Keep the model from writing interrupts: only the engine writes [INTR].

A ban on one spelling is not enough (in sync mode the model wrote `[_INTR]`), so the ban is
structural: outside a call block, after a `[` followed only by filler characters, no token may
continue with an I; and no token may itself contain such a sequence. What can begin CALL, TRAP,
END or HEAD, and ordinary text such as `[1]`, stays allowed. While no call is pending, a trap is
banned the same way (a `[` may not continue with a T): there is nothing to wait for.
"""

from __future__ import annotations

import re

import numpy as np

FILLER = r"[\s_\-*|/\\.:~`'\"]*"
_INSIDE_TOKEN = re.compile(r"\[" + FILLER + r"[iI]")
_CONTINUES = re.compile(r"^" + FILLER + r"[iI]")
_OPEN_TAIL = re.compile(r"\[" + FILLER + r"$")
_TRAP_INSIDE = re.compile(r"\[" + FILLER + r"T")
_TRAP_CONTINUES = re.compile(r"^" + FILLER + r"T")


class IntrBan:
    def __init__(self, vocab: list[str]) -> None:
        self.always = np.array([i for i, t in enumerate(vocab) if _INSIDE_TOKEN.search(t)], dtype=np.int64)
        self.after_open = np.array([i for i, t in enumerate(vocab) if _CONTINUES.match(t)], dtype=np.int64)
        self.trap_inside = np.array([i for i, t in enumerate(vocab) if _TRAP_INSIDE.search(t)], dtype=np.int64)
        self.trap_after_open = np.array([i for i, t in enumerate(vocab) if _TRAP_CONTINUES.match(t)], dtype=np.int64)

    @staticmethod
    def open_bracket(tail: str) -> bool:
        """The text ends in `[` plus filler: the next letter decides what the marker becomes."""
        return bool(_OPEN_TAIL.search(tail))

    def apply(self, logits: np.ndarray, tail: str, *, trap: bool = True) -> np.ndarray:
        """`trap=False` also keeps the model from beginning `[TRAP]`: with nothing to wait for, a
        small model otherwise writes `[TRAP][END]` again and again until its token limit."""
        logits[self.always] = -np.inf
        if not trap:
            logits[self.trap_inside] = -np.inf
        if self.open_bracket(tail):
            logits[self.after_open] = -np.inf
            if not trap:
                logits[self.trap_after_open] = -np.inf
        return logits


def forbidden_trap(tail: str, piece: str) -> bool:
    """Would appending `piece` begin a `[TRAP]` (banned while no call is pending)?"""
    return bool(_TRAP_INSIDE.search(piece)) or (IntrBan.open_bracket(tail) and bool(_TRAP_CONTINUES.match(piece)))


def forbidden(tail: str, piece: str) -> bool:
    """Would appending `piece` to text ending in `tail` start an interrupt marker? (For servers
    that sample themselves: the engine checks each streamed token instead of masking logits.)"""
    return bool(_INSIDE_TOKEN.search(piece)) or (IntrBan.open_bracket(tail) and bool(_CONTINUES.match(piece)))
