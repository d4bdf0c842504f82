"""What the call grammar's mask costs per token, on a real model's vocabulary.

Each held-out BFCL call of a dataset is written token by token (the model's own tokenizer) through
`valid_tokens` and `CallBody.feed`, the search and the automaton step `CallGuard` runs inside a call
block. Not timed: the vocabulary-sized masked copy `CallGuard.mask` builds when the best token does
not fit (one array fill). The logits are synthetic (a seeded normal draw per token, no model
runs), in three cases:

- `fits`: the call's next token is the best one (what a model that writes valid calls gives): a
  greedy step tests one token;
- `refused`: the best 64 tokens are ones the grammar refuses and the call's token ranks 65th (a
  model that wants to write something else): the greedy mask walks past them;
- `sampled`: temperature 0.7 (every token within the negligible-probability cut is tested).

Both the typed grammar (values of the kinds each schema declares) and the untyped one (any literal)
run on the same tokens. Outside a block the engine pays only `ban_past_call`, timed as well. The
numbers are CPU time of the engine's own step; a decode step of the 0.5b model here takes ~30 ms.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from engine.callbody import CallBody, CallGrammar
from engine.cml import END
from engine.constrain import TOP_K, TokenTable, valid_tokens
from engine.tools import ToolSpec
from webapp.bench.plan import call_text
from webapp.bench.scenarios import Scenario

CASES = ("fits", "refused", "sampled")
END_TEXT = f" {END}"


def calls_of(scenarios: list[Scenario]) -> list[tuple[list[ToolSpec], str]]:
    """(the task's tools, a call body as the model writes it) for every ground-truth call."""
    return [([ToolSpec.from_dict(t) for t in s.tools], call_text(c.name, c.args) + END_TEXT)
            for s in scenarios for c in s.calls]


def measure(table: TokenTable, tokenize: Callable[[str], list[int]], calls: list[tuple[list[ToolSpec], str]],
            *, seed: int = 0) -> dict[str, Any]:
    """Per grammar and case: ms per token (mean, p50, p99) over every token of every call."""
    rng = np.random.default_rng(seed)
    n_vocab = len(table.texts)
    base = rng.normal(0.0, 2.0, n_vocab).astype(np.float32)
    refused = _refused_ids(table, n_vocab)
    out: dict[str, Any] = {"calls": len(calls), "vocab": n_vocab}
    for typed in (True, False):
        grammar_times: dict[str, list[float]] = {case: [] for case in CASES}
        for tools, text in calls:
            ids = tokenize(text)
            grammar = CallGrammar(tools, typed=typed)
            for case in CASES:
                grammar_times[case] += _one_call(grammar, table, ids, base, refused, case)
        out["typed" if typed else "untyped"] = {case: _stats(t) for case, t in grammar_times.items()}
    outside = []
    for _ in range(200):
        logits = base.copy()
        t0 = time.perf_counter()
        table.ban_past_call(logits, "text [CA")
        outside.append(time.perf_counter() - t0)
    out["outside_block"] = _stats(outside)
    return out


def _refused_ids(table: TokenTable, n_vocab: int) -> np.ndarray:
    """Tokens no call body starts with in the middle of an argument list: those holding a newline."""
    found = [i for i, t in enumerate(table.texts) if "\n" in t]
    return np.array(found[:TOP_K] if len(found) >= TOP_K else list(range(min(TOP_K, n_vocab))), dtype=np.int64)


def _one_call(grammar: CallGrammar, table: TokenTable, ids: list[int], base: np.ndarray, refused: np.ndarray,
              case: str) -> list[float]:
    body = CallBody(grammar, [])
    times = []
    for token in ids:
        logits = base.copy()
        top = float(logits.max())
        if case == "refused":
            logits[refused] = top + 2.0
            logits[token] = top + 1.0
        else:
            logits[token] = top + 3.0
        temperature = 0.7 if case == "sampled" else 0.0
        t0 = time.perf_counter()
        valid = valid_tokens(body, table, logits, temperature=temperature)
        text = table.texts[token]
        fed = body.feed(text)
        times.append(time.perf_counter() - t0)
        if not fed or token not in valid:
            # The grammar refused the ground truth's own token (a literal it writes otherwise):
            # the rest of this call measures nothing the engine would do.
            break
    return times


def _stats(seconds: list[float]) -> dict[str, Any]:
    if not seconds:
        return {"tokens": 0}
    ms = sorted(s * 1000 for s in seconds)
    return {"tokens": len(ms), "mean_ms": round(statistics.fmean(ms), 4), "p50_ms": round(ms[len(ms) // 2], 4),
            "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 4), "max_ms": round(ms[-1], 4)}
