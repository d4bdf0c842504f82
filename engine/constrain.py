"""Constrained call blocks for backends whose logits the engine samples from (the embedded model).

Small models reuse call ids and write malformed call bodies. Once the model decodes `[CALL]`, the
engine writes the id itself (`head_text(next_call_id(...))`, forced tokens); from `[HEAD]` to
`[END]` a character-level automaton (`CallBody`) decides which tokens may come next, so every
call block parses, names one of the task's tools, uses each of its arguments at most once and
refers only to earlier calls.

The mask stays cheap: only the best-scored tokens are tested against a copy of the automaton, in
logit order; the whole vocabulary is searched only when none of them fits.

Token texts are decoded lossily, so a token holding part of a UTF-8 character reads as U+FFFD:
the grammar allows that inside a string literal (the character completes with the next token,
still inside the string) and nowhere else.
"""

from __future__ import annotations

import keyword
import math
import re
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from engine.cml import CALL, END, MARKERS, CallComplete, CallOpened, Malformed
from engine.tools import ToolSpec

TOP_K = 64
WINDOW = 1024  # the fallback walks the rest of the vocabulary in logit order, this many at a time
NEGLIGIBLE = 12.0  # logits this far (times the temperature) below the best valid token: p < 1e-5 of its
MAX_SPACES = 2  # where a space is optional; more would let a model loop on blanks
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IDENT_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_IDENT_CHARS = _IDENT_START | frozenset("0123456789")
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
_ESCAPES = {**{c: 0 for c in "\\'\"nrtbfva0"}, "x": 2, "u": 4}  # escape letter -> hex digits that follow
_CLOSER = {"[": "]", "(": ")", "{": "}"}
_CONSTANTS = ("True", "False", "None")
_NUMBER_ENDS = frozenset({"zero", "int", "dot", "frac", "exp"})
_PLAIN = re.compile(r"[^'\"\\\]\x00-\x08\x0a-\x1f]+")  # text that cannot end, escape or mark a string


def next_call_id(existing_ids: Iterable[str]) -> str:
    """The smallest `c<n>` (n >= 1) not among `existing_ids`."""
    used = set(existing_ids)
    n = 1
    while f"c{n}" in used:
        n += 1
    return f"c{n}"


def head_text(call_id: str) -> str:
    """What the engine writes after the model's `[CALL]` (the fine-tuning renderer uses it too)."""
    return f" {call_id} [HEAD]"


class CallGrammar:
    """What a task's call bodies may contain: its tools and each tool's keyword arguments."""

    def __init__(self, tools: Iterable[ToolSpec]) -> None:
        # Names ast cannot parse as a call, or keys that are Python keywords, could never be
        # written validly, so they are left out rather than offered.
        self.keys: dict[str, frozenset[str]] = {}
        self.required: dict[str, frozenset[str]] = {}
        for tool in tools:
            if not _NAME.match(tool.name) or any(keyword.iskeyword(p) for p in tool.name.split(".")):
                continue
            props = tool.parameters.get("properties") or {}
            keys = frozenset(k for k in props if _IDENT.match(k) and not keyword.iskeyword(k))
            self.keys[tool.name] = keys
            self.required[tool.name] = frozenset(tool.parameters.get("required") or ()) & keys
        self.names = tuple(self.keys)


class CallBody:
    """Incremental validator of the text after `[HEAD]`: ` name(key=value, ...) [END]`.

    `feed` returns False (and the state is then meaningless) at the first character that cannot
    continue a valid body; `accepts` tests text on a copy. A bare identifier is allowed only as a
    whole argument value (a future): cml.py evaluates nested values with literal_eval."""

    __slots__ = ("g", "futures", "mode", "stack", "buf", "spaces", "tool", "used", "close_ok", "quote", "esc",
                 "is_key", "tail", "num")

    def __init__(self, grammar: CallGrammar, futures: Iterable[str] = ()) -> None:
        self.g = grammar
        self.futures = frozenset(futures)
        self.mode = "lead"
        self.stack: list[str] = []  # open containers: "[", "(", "{"; empty means a call argument
        self.buf = ""  # the name, key, word or number being read
        self.spaces = 0
        self.tool = ""
        self.used: frozenset[str] = frozenset()
        self.close_ok = False  # the current container (or argument list) may close here
        self.quote = ""
        self.esc = -1  # -1: no escape; 0: after a backslash; n > 0: hex digits still due
        self.is_key = False  # the string being read is a dict key
        self.tail = ""  # a string's last characters, so it cannot spell a CML marker
        self.num = ""

    @property
    def done(self) -> bool:
        return self.mode == "done"

    def copy(self) -> CallBody:
        other = CallBody.__new__(CallBody)
        for name in CallBody.__slots__:
            setattr(other, name, getattr(self, name))
        other.stack = list(self.stack)
        return other

    def feed(self, text: str) -> bool:
        for c in text:
            if self.mode == "done":
                return True  # the block is over: the rest of the token is plain text
            if self.mode == "dead":
                return False
            if not getattr(self, "_" + self.mode)(c):
                self.mode = "dead"
                return False
        return True

    def accepts(self, text: str) -> bool:
        return bool(text) and self.copy().feed(text)

    # -- the frame: name(key=value, ...) [END] ----------------------------------------------
    def _space(self, c: str) -> bool:
        if c == " " and self.spaces < MAX_SPACES:
            self.spaces += 1
            return True
        return False

    def _lead(self, c: str) -> bool:
        if self._space(c):
            return True
        self.mode, self.buf = "name", ""
        return self._name(c)

    def _name(self, c: str) -> bool:
        if c == "(" and self.buf in self.g.keys:
            self.tool, self.mode, self.close_ok, self.spaces = self.buf, "argkey", True, 0
            return True
        self.buf += c
        return any(n.startswith(self.buf) for n in self.g.names)

    def _argkey(self, c: str) -> bool:
        if self._space(c):
            return True
        if c == ")" and self.close_ok:
            return self._close_call()
        if c not in _IDENT_START:
            return False
        self.mode, self.buf = "key", ""
        return self._key(c)

    def _key(self, c: str) -> bool:
        free = self.g.keys[self.tool] - self.used
        if c in _IDENT_CHARS:
            self.buf += c
            return any(k.startswith(self.buf) for k in free)
        if self.buf not in free:
            return False
        self.used |= {self.buf}
        self.mode, self.spaces = "equals", 0
        return self._equals(c)

    def _equals(self, c: str) -> bool:
        if c == "=":
            self.mode, self.spaces, self.close_ok = "value", 0, False
            return True
        return self._space(c)

    def _close_call(self) -> bool:
        if not self.g.required[self.tool] <= self.used:
            return False
        self.mode, self.spaces = "closed", 0
        return True

    def _closed(self, c: str) -> bool:
        if c == "[":
            self.mode, self.buf = "end", "["
            return True
        return self._space(c)

    def _end(self, c: str) -> bool:
        self.buf += c
        if not END.startswith(self.buf):
            return False
        if self.buf == END:
            self.mode = "done"
        return True

    # -- values -------------------------------------------------------------------------------
    def _value(self, c: str) -> bool:
        if self._space(c):
            return True
        self.spaces = 0
        if self.stack and self.close_ok and c == _CLOSER[self.stack[-1]]:
            return self._pop()
        if c in "'\"":
            self.mode, self.quote, self.esc, self.is_key, self.tail = "string", c, -1, False, ""
            return True
        if c in _DIGITS or c == "-":
            self.mode, self.buf, self.num = "number", "", ""
            return self._number(c)
        if c in _IDENT_START:
            self.mode, self.buf = "word", ""
            return self._word(c)
        if c in _CLOSER:
            self.stack.append(c)
            self.mode, self.close_ok = ("dictkey" if c == "{" else "value"), True
            return True
        return False

    def _after(self, c: str) -> bool:
        """After a complete value: a separator or the closer of what holds it."""
        if self._space(c):
            return True
        self.spaces = 0
        if not self.stack:
            if c == "," and self.g.keys[self.tool] - self.used:  # else no key could follow it
                self.mode, self.close_ok = "argkey", False
                return True
            return c == ")" and self._close_call()
        top = self.stack[-1]
        if c == ",":
            self.mode, self.close_ok = ("dictkey" if top == "{" else "value"), True
            return True
        return c == _CLOSER[top] and self._pop()

    def _pop(self) -> bool:
        self.stack.pop()
        self.mode, self.spaces = "after", 0
        return True

    def _dictkey(self, c: str) -> bool:
        if self._space(c):
            return True
        self.spaces = 0
        if c == "}" and self.close_ok:
            return self._pop()
        if c in "'\"":
            self.mode, self.quote, self.esc, self.is_key, self.tail = "string", c, -1, True, ""
            return True
        return False

    def _colon(self, c: str) -> bool:
        if c == ":":
            self.mode, self.spaces, self.close_ok = "value", 0, False
            return True
        return self._space(c)

    def _string(self, c: str) -> bool:
        self.tail = (self.tail + c)[-len(END) - 1:]
        # The monitor finds markers in the raw text, even inside a string literal.
        if c == "]" and any(self.tail.endswith(m) for m in MARKERS):
            return False
        if self.esc >= 0:
            return self._escape(c)
        if c == self.quote:
            self.mode, self.spaces = ("colon" if self.is_key else "after"), 0
            return True
        if c == "\\":
            self.esc = 0
            return True
        return c >= " " or c == "\t"  # a newline ends the line; NUL makes ast refuse the source

    def _escape(self, c: str) -> bool:
        if self.esc == 0:
            if c not in _ESCAPES:
                return False
            self.esc = _ESCAPES[c] or -1
            return True
        if c not in _HEX:
            return False
        self.esc = self.esc - 1 or -1
        return True

    def _number(self, c: str) -> bool:
        state = _number_step(self.num, c)
        if state:
            self.num, self.buf = state, self.buf + c
            return True
        if self.num not in _NUMBER_ENDS or (self.num not in ("zero", "int") and not math.isfinite(float(self.buf))):
            return False  # 1e999 would be inf, which no JSON result can carry
        self.mode = "after"
        return self._after(c)

    def _word(self, c: str) -> bool:
        words = _CONSTANTS if self.stack else (*_CONSTANTS, *self.futures)
        if c in _IDENT_CHARS:
            self.buf += c
            return any(w.startswith(self.buf) for w in words)
        if self.buf not in words:
            return False
        self.mode = "after"
        return self._after(c)


def _number_step(state: str, c: str) -> str:
    """The next state of a Python int/float literal (no `_`, no hex, no complex), "" if none."""
    if c in _DIGITS:
        return {"": "zero" if c == "0" else "int", "neg": "zero" if c == "0" else "int", "int": "int",
                "dot": "frac", "frac": "frac", "e": "exp", "esign": "exp", "exp": "exp"}.get(state, "")
    if c == "-":
        return {"": "neg", "e": "esign"}.get(state, "")
    if c == "+":
        return "esign" if state == "e" else ""
    if c == ".":
        return "dot" if state in ("zero", "int") else ""
    if c in "eE":
        return "e" if state in ("zero", "int", "dot", "frac") else ""
    return ""


class TokenTable:
    """A backend's token texts and the tokens that would write past a `[CALL]` marker."""

    def __init__(self, texts: list[str], stop_ids: Iterable[int]) -> None:
        self.texts = list(texts)
        for i in stop_ids:
            if 0 <= i < len(self.texts):
                self.texts[i] = ""  # never valid inside a call body
        # The engine writes what follows `[CALL]`: no token may carry text past the marker, on its
        # own or after a held `[CA...` prefix.
        self.past_call = _ids(self.texts, _writes_past_call)
        self.past_call_after = {CALL[:n]: _ids(self.texts, _starts_past(CALL[n:])) for n in range(1, len(CALL))}
        self.plain = [_PLAIN.fullmatch(t) is not None for t in self.texts]
        # A token's first character: 0-127 ASCII, 128 any other (the grammar treats them all
        # alike), 129 no text (never valid).
        self.first = np.array([129 if not t else min(ord(t[0]), 128) for t in self.texts], dtype=np.int16)

    def first_ok(self, body: CallBody) -> np.ndarray:
        """Per token: may its first character come next? (A necessary condition, vectorised.)"""
        ok = np.array([body.accepts(chr(c)) for c in range(128)] + [body.accepts("\u00e9"), False])
        return ok[self.first]

    def tester(self, body: CallBody) -> Callable[[int], bool]:
        """Does token i continue `body`? Inside a string most tokens are plain text: no need to
        run the automaton for those."""
        texts = self.texts
        if body.mode == "string" and body.esc < 0:
            plain = self.plain
            return lambda i: plain[i] or body.accepts(texts[i])
        return lambda i: body.accepts(texts[i])

    def ban_past_call(self, logits: np.ndarray, tail: str) -> np.ndarray:
        logits[self.past_call] = -np.inf
        for n in range(len(CALL) - 1, 0, -1):
            if tail.endswith(CALL[:n]):
                logits[self.past_call_after[CALL[:n]]] = -np.inf
                break
        return logits


def _ids(texts: list[str], test: Callable[[str], bool]) -> np.ndarray:
    return np.array([i for i, t in enumerate(texts) if t and test(t)], dtype=np.int64)


def _writes_past_call(text: str) -> bool:
    at = text.find(CALL)
    return 0 <= at < len(text) - len(CALL)


def _starts_past(rest: str) -> Callable[[str], bool]:
    return lambda text: text.startswith(rest) and len(text) > len(rest)


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def token_table(backend: Any) -> TokenTable:
    """One table per backend: building it reads every token's text once."""
    table = _TABLES.get(backend)
    if table is None:
        table = _TABLES[backend] = TokenTable(backend.vocab_texts(), backend.stop_ids())
    return table


def valid_tokens(body: CallBody, table: TokenTable, logits: np.ndarray, *, temperature: float) -> list[int]:
    """Tokens that continue `body`, best logit first. Greedy: the first one. With a temperature:
    the valid ones among the top TOP_K whose probability is not negligible next to the best."""
    test = table.tester(body)
    if temperature <= 0 and test(best := int(np.argmax(logits))):
        return [best]
    cut = NEGLIGIBLE * temperature if temperature > 0 else np.inf
    found = _walk(_top(logits, cut), logits, test, cut)
    if found:
        return found
    # None of the model's favourites fits (a small model wants a positional argument, say): keep
    # the tokens whose first character may come next, then walk those in logit order.
    narrowed = np.where(table.first_ok(body), logits, -np.inf)
    found = _walk(_top(narrowed, np.inf), narrowed, test, cut)
    if found:
        return found
    rest = np.flatnonzero(np.isfinite(narrowed))
    rest = rest[np.argsort(-narrowed[rest], kind="stable")]
    for start in range(0, rest.size, WINDOW):
        if found := _walk(rest[start:start + WINDOW], narrowed, test, cut):
            return found
    return []


def _top(logits: np.ndarray, cut: float) -> np.ndarray:
    """The best TOP_K tokens, or fewer: those within `cut` of the best (one comparison instead of
    a partition of the whole vocabulary), best first, none at -inf."""
    k = min(TOP_K, logits.size)
    near = None if math.isinf(cut) else np.flatnonzero(logits >= logits.max() - cut)
    if near is None or near.size > k:
        near = np.argpartition(-logits, k - 1)[:k]
    near = near[np.argsort(-logits[near], kind="stable")]
    return near[np.isfinite(logits[near])]


def _walk(ids: np.ndarray, logits: np.ndarray, test: Callable[[int], bool], cut: float) -> list[int]:
    """The valid ones of `ids` (in logit order): only the first when greedy (cut is inf), else
    down to `cut` below the first valid one."""
    valid: list[int] = []
    greedy = math.isinf(cut)
    for i in ids:
        if valid and (greedy or logits[i] < logits[valid[0]] - cut):
            break
        if test(i):
            valid.append(int(i))
    return valid


class CallGuard:
    """One task's constraint: `mask` before each sampled token, `observe` after each token with
    the monitor's events; `observe` returns the tokens to force (the call's id)."""

    def __init__(self, grammar: CallGrammar, table: TokenTable, tokenize: Callable[[str], list[int]]) -> None:
        self.grammar = grammar
        self.table = table
        self.tokenize = tokenize
        self.phase = "outside"  # outside | forcing | body | free (unconstrained until the block ends)
        self.body: CallBody | None = None
        self.skip = 0  # forced tokens still to come
        self.issued: set[str] = set()  # ids the engine wrote, even in blocks that turned out malformed
        self.recent = ""

    def mask(self, logits: np.ndarray, tail: str, temperature: float) -> np.ndarray:
        if self.phase == "outside":
            return self.table.ban_past_call(logits, tail)
        if self.phase != "body":
            return logits
        valid = valid_tokens(self.body, self.table, logits, temperature=temperature)
        if not valid:
            return logits  # nothing continues the call: the monitor reports what the model writes
        out = np.full_like(logits, -np.inf)
        out[valid] = logits[valid]
        return out

    def observe(self, piece: str, events: list, calls: Mapping[str, Any]) -> list[int]:
        if self.phase == "forcing":
            self.skip -= 1
            if self.skip <= 0:
                self._start_body("", calls)
        elif self.phase == "body" and not self.body.feed(piece):
            self.phase = "free"  # text the mask did not choose (no valid token existed)
        forced: list[int] = []
        for event in events:
            if isinstance(event, CallComplete | Malformed):
                self.phase, self.body = "outside", None
            elif isinstance(event, CallOpened):
                joined = self.recent + piece
                forced = self._open(joined[joined.rfind(CALL) + len(CALL):], calls)
        self.recent = (self.recent + piece)[-len(CALL):]
        return forced

    def _open(self, leftover: str, calls: Mapping[str, Any]) -> list[int]:
        call_id = next_call_id([*calls, *self.issued])
        head = head_text(call_id)
        if not (leftover.startswith(head) or head.startswith(leftover)):
            self.phase = "free"  # the model already wrote another id; the scheduler judges it
            return []
        self.issued.add(call_id)
        if leftover.startswith(head):
            self._start_body(leftover[len(head):], calls)
            return []
        ids = self.tokenize(head[len(leftover):])
        self.phase, self.skip = "forcing", len(ids)
        return ids

    def _start_body(self, text: str, calls: Mapping[str, Any]) -> None:
        # A failed call as a future could only fail the new call too.
        futures = [cid for cid, call in calls.items() if call.status.value != "error"]
        self.body = CallBody(self.grammar, futures)
        self.phase = "body" if self.body.feed(text) else "free"


def call_guard(backend: Any, tools: Mapping[str, ToolSpec]) -> CallGuard | None:
    """A guard for a task on `backend`, or None where calls are not constrained."""
    if not tools or not getattr(backend, "constrained_calls", False):
        return None
    return CallGuard(CallGrammar(tools.values()), token_table(backend), backend.tokenize)
