"""Constrained call blocks for backends whose logits the engine samples from (the embedded model).

Small models reuse call ids and write malformed call bodies. Once the model decodes `[CALL]`, the
engine writes the id itself (`head_text(next_call_id(...))`, forced tokens); from `[HEAD]` to
`[END]` a character-level automaton (`CallBody`, engine/callbody.py) decides which tokens may come next, so every
call block parses, names one of the task's tools, uses each of its arguments at most once, gives
each a value of a kind its schema declares and refers only to earlier calls.

The mask stays cheap: only the best-scored tokens are tested against a copy of the automaton, in
logit order; the whole vocabulary is searched only when none of them fits.

Token texts are decoded lossily, so a token holding part of a UTF-8 character reads as U+FFFD:
the grammar allows that inside a string literal (the character completes with the next token,
still inside the string) and nowhere else.
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from engine.callbody import CallBody, CallGrammar
from engine.cml import CALL, CallComplete, CallOpened, Malformed
from engine.tools import ToolSpec

TOP_K = 64
WINDOW = 1024  # the fallback walks the rest of the vocabulary in logit order, this many at a time
NEGLIGIBLE = 12.0  # logits this far (times the temperature) below the best valid token: p < 1e-5 of its
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


_TABLES: weakref.WeakKeyDictionary[Any, TokenTable] = weakref.WeakKeyDictionary()


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
    best: np.ndarray = near[np.isfinite(logits[near])]
    return best


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
        if self.phase != "body" or self.body is None:
            return logits
        if temperature <= 0 and self.table.tester(self.body)(int(np.argmax(logits))):
            return logits  # greedy picks a valid token anyway: no vocabulary-sized mask to build
        valid = valid_tokens(self.body, self.table, logits, temperature=temperature)
        if not valid:
            return logits  # nothing continues the call: the monitor reports what the model writes
        out = np.full_like(logits, -np.inf)
        out[valid] = logits[valid]
        return out

    def observe(self, piece: str, events: Sequence[object], calls: Mapping[str, Any]) -> list[int]:
        if self.phase == "forcing":
            self.skip -= 1
            if self.skip <= 0:
                self._start_body("", calls)
        elif self.phase == "body" and self.body is not None and not self.body.feed(piece):
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
    # `typed_call_values = False`: values of any kind, as before the grammar read the schemas (the
    # fine-tuning replay test: its traces hold first attempts the schema refuses, a number written
    # as a string, which a model on the SGLang path can still write).
    grammar = CallGrammar(tools.values(), typed=getattr(backend, "typed_call_values", True))
    return CallGuard(grammar, token_table(backend), backend.tokenize)
