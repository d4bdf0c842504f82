"""Incremental CML monitor: decoded text in, typed protocol events out.

CML: `[CALL] id [HEAD] fn(arg=value) [END]` (the `id [HEAD]` part is
optional), `[TRAP][END]`, and `[INTR] ... [END]`, which only the engine writes. Detection works
on text, so it is indifferent to how the tokenizer split or merged the markers. The monitor
holds back text that may still become a marker, and reports that as a critical section.
"""

from __future__ import annotations

import ast
import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any

CALL, HEAD, END, TRAP, INTR = "[CALL]", "[HEAD]", "[END]", "[TRAP]", "[INTR]"
OPENERS = (CALL, TRAP, INTR)
MARKERS = (CALL, HEAD, END, TRAP, INTR)
MAX_BLOCK_CHARS = 4000
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Injected frames are neutralised (no marker inside), so a block ends at its first [END].
_BLOCKS = re.compile(r"\[(?:CALL|INTR)\][\s\S]*?\[END\]|\[TRAP\]\s*\[END\]"
                     r"|<\|im_end\|>\s*<\|im_start\|>user[\s\S]*?<\|im_end\|>\s*<\|im_start\|>assistant"
                     r"|<\|im_(?:start|end)\|>")


def prose(text: str) -> str:
    """What a model wrote outside its calls, traps, injected frames and the messages it was sent:
    a sub-agent's answer as its caller should read it."""
    return " ".join(_BLOCKS.sub(" ", text).split())


@dataclass(frozen=True)
class Future:
    """An argument naming an earlier call: its value is substituted when that call finishes."""

    call_id: str


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class CallOpened:
    pass


@dataclass(frozen=True)
class CallComplete:
    call_id: str
    name: str
    positional: list[Any]
    keywords: dict[str, Any]
    raw: str
    auto_id: bool = False

    @property
    def futures(self) -> list[str]:
        values = itertools.chain(self.positional, self.keywords.values())
        return [v.call_id for v in values if isinstance(v, Future)]


@dataclass(frozen=True)
class Trap:
    pass


@dataclass(frozen=True)
class Malformed:
    raw: str
    reason: str


Event = Text | CallOpened | CallComplete | Trap | Malformed


class CallSyntaxError(ValueError):
    pass


def _dotted_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted_name(node.value)}.{node.attr}"
    raise CallSyntaxError("the function name must be a plain or dotted name")


def _value(node: ast.expr) -> Any:
    if isinstance(node, ast.Name):
        return Future(node.id)
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):  # TypeError: {[1]: 2}
        raise CallSyntaxError(f"argument {_shown(node)} is not a literal or an earlier call id") from None
    return _json(value, node)


MAX_INT = 2**63  # beyond this a number loses precision in JSON readers and does not fit a database


def _json(value: Any, node: ast.expr) -> Any:
    """The value as JSON has it (tuples become lists), or a CallSyntaxError saying why it is not
    one: arguments travel as JSON, and one task's odd value must not break another's storage."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if "\x00" in value:
            raise CallSyntaxError(f"argument {_shown(node)} contains a NUL character")
        return value
    if isinstance(value, int):
        if abs(value) >= MAX_INT:
            raise CallSyntaxError(f"argument {_shown(node)} is out of range (at most 2**63 in magnitude)")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CallSyntaxError(f"argument {_shown(node)} is not a finite number")
        return value
    if isinstance(value, list | tuple):
        return [_json(v, node) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise CallSyntaxError(f"argument {_shown(node)} has a key that is not a string")
        return {k: _json(v, node) for k, v in value.items()}
    kind = type(value).__name__
    raise CallSyntaxError(f"argument {_shown(node)} is of type {kind}: only JSON values are allowed (strings, numbers, "
                          "True/False/None, lists, dicts with string keys)")


def _shown(node: ast.expr) -> str:
    try:
        text = ast.unparse(node)
    except (RecursionError, ValueError):
        text = "(too deeply nested to show)"
    return repr(text[:80] + ("…" if len(text) > 80 else ""))


def parse_call(body: str) -> tuple[str, list[Any], dict[str, Any]]:
    """Parse `fn(a=1, b=x)` with ast (never eval): name, positional args, keyword args."""
    try:
        tree = ast.parse(body.strip(), mode="eval")
    except SyntaxError as exc:
        raise CallSyntaxError(f"syntax error in call: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError):  # ValueError: a NUL byte in the source
        raise CallSyntaxError("the call is too deeply nested or not valid source text") from None
    node = tree.body
    if not isinstance(node, ast.Call):
        raise CallSyntaxError("expected a function call like name(arg=value)")
    name = _dotted_name(node.func)
    positional = []
    for arg in node.args:
        if isinstance(arg, ast.Starred):
            raise CallSyntaxError("*args are not allowed")
        positional.append(_value(arg))
    keywords = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise CallSyntaxError("**kwargs are not allowed")
        keywords[kw.arg] = _value(kw.value)
    return name, positional, keywords


@dataclass
class Monitor:
    """Feed decoded text with `feed`; call `close` at end of sequence."""

    id_prefix: str = "_a"
    _buf: str = ""
    _block: str | None = None  # the opener of the block we are inside
    _auto: int = 0
    _events: list[Event] = field(default_factory=list)

    @property
    def in_block(self) -> bool:
        return self._block is not None

    @property
    def open_call(self) -> str | None:
        """Inside a call block: what was written after its `[CALL]` so far (else None)."""
        return self._buf if self._block == CALL else None

    @property
    def critical(self) -> bool:
        """Inside a block, or holding text that may still become a marker: no injection now."""
        return self._block is not None or bool(self._buf)

    def feed(self, text: str) -> list[Event]:
        self._buf += text
        self._events = []
        while self._step():
            pass
        return self._events

    def close(self) -> list[Event]:
        """End of sequence: an open block is malformed; held-back text is plain text."""
        self._events = []
        if self._block is not None:
            self._events.append(Malformed(self._block + self._buf, f"unterminated {self._block} block"))
        elif self._buf:
            self._events.append(Text(self._buf))
        self._block = None
        self._buf = ""
        return self._events

    def _step(self) -> bool:
        if self._block is None:
            return self._outside()
        return self._inside()

    def _outside(self) -> bool:
        starts = [(i, m) for m in OPENERS if (i := self._buf.find(m)) >= 0]
        if starts:
            i, marker = min(starts)
            if i:
                self._events.append(Text(self._buf[:i]))
            self._buf = self._buf[i + len(marker):]
            self._block = marker
            if marker == CALL:
                self._events.append(CallOpened())
            return True
        # Hold back a tail that is a prefix of an opener ("[", "[CA", ...).
        keep = _partial_marker_len(self._buf)
        emit = self._buf[: len(self._buf) - keep]
        if emit:
            self._events.append(Text(emit))
        self._buf = self._buf[len(emit):]
        return False

    def _inside(self) -> bool:
        end = self._buf.find(END)
        # A new opener before the end: the current block was never closed.
        reopen = [(i, m) for m in OPENERS if (i := self._buf.find(m)) >= 0 and (end < 0 or i < end)]
        if reopen:
            i, _ = min(reopen)
            self._events.append(Malformed(f"{self._block}{self._buf[:i]}", f"{self._block} block without {END}"))
            self._buf = self._buf[i:]
            self._block = None
            return True
        if end < 0:
            if len(self._buf) > MAX_BLOCK_CHARS:
                self._events.append(Malformed(f"{self._block}{self._buf}", f"{self._block} block too long"))
                self._buf = ""
                self._block = None
            return False
        body, self._buf = self._buf[:end], self._buf[end + len(END):]
        block, self._block = self._block, None
        raw = f"{block}{body}{END}"
        if block == TRAP:
            self._events.append(Trap() if not body.strip() else Malformed(raw, "[TRAP] takes no content"))
        elif block == INTR:
            self._events.append(Malformed(raw, "the model may not write [INTR]"))
        else:
            self._events.append(self._call(body, raw))
        return True

    def _call(self, body: str, raw: str) -> Event:
        auto = HEAD not in body
        if auto:
            self._auto += 1
            call_id, expr = f"{self.id_prefix}{self._auto}", body
        else:
            call_id, expr = (part.strip() for part in body.split(HEAD, 1))
            if not _IDENT.match(call_id):
                return Malformed(raw, f"call id {call_id!r} is not an identifier")
        try:
            name, positional, keywords = parse_call(expr)
        except CallSyntaxError as exc:
            return Malformed(raw, str(exc))
        return CallComplete(call_id, name, positional, keywords, raw, auto_id=auto)


def _partial_marker_len(text: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of an opener."""
    for n in range(min(len(text), max(map(len, OPENERS)) - 1), 0, -1):
        tail = text[-n:]
        if any(m.startswith(tail) for m in OPENERS):
            return n
    return 0
