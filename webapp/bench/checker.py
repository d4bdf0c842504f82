"""Accuracy by BFCL's own checker (bfcl-eval's `ast_checker` and `multi_turn_checker`), applied to
the calls a run executed.

bfcl-eval's `ast_checker` module imports the package's model registry
(`bfcl_eval.constants.model_config`), which imports a handler for every vendor it can evaluate
(OpenAI, Anthropic, Mistral, Cohere, ... and sentence-transformers, i.e. torch) and pins
numpy 1.26.4; none of that is installed here (requirements/bfcl.txt). The checker reads the
registry for one thing only: whether the model under test writes dots in function names as
underscores. So the registry is replaced, for the import only, by a one-line module saying that
ours keeps dots (CML writes `math.factorial(...)` as it is); every check is bfcl-eval's own code.

Single-turn datasets: `ast_checker` with the entry's function documents and possible answers, on
the executed calls as `[{name: {arg: value}}]`. Multi-step scenarios: `multi_turn_checker` per
BFCL entry, on that entry's executed calls (namespace `e1.` removed) as its first turn; it
re-executes them and the ground truth on fresh instances of BFCL's classes and compares state and
results. A scenario is accepted when every entry is. The human_message scenarios (not BFCL's) are
accepted when exactly their expected calls ran (`check_calls`).
"""

from __future__ import annotations

import importlib
import itertools
import json
import sys
import types
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from webapp.bench.plan import call_text
from webapp.bench.scenarios import MULTISTEP, SINGLE_TURN, answers
from webapp.tools.bfcl import dataset

MODEL_NAME = "asynclm"  # how the checker names the model under test
_REGISTRY = "bfcl_eval.constants.model_config"
_runs = itertools.count()


@dataclass(frozen=True)
class Verdict:
    valid: bool
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"valid": self.valid, "error": self.error}


class _KeepsDots(dict):
    def __missing__(self, model: str) -> types.SimpleNamespace:
        return types.SimpleNamespace(underscore_to_dot=False)


@cache
def _ast_checker() -> types.ModuleType:
    had_registry = _REGISTRY in sys.modules
    if not had_registry:
        registry = types.ModuleType(_REGISTRY)
        registry.MODEL_CONFIG_MAPPING = _KeepsDots()  # type: ignore[attr-defined]
        sys.modules[_REGISTRY] = registry
    try:
        return importlib.import_module("bfcl_eval.eval_checker.ast_eval.ast_checker")
    finally:
        if not had_registry:
            del sys.modules[_REGISTRY]


def _entry(name: str, entry_id: str) -> dict[str, Any]:
    entry = next((e for e in dataset(name) if e["id"] == entry_id), None)
    if entry is None:
        raise ValueError(f"no entry {entry_id!r} in BFCL dataset {name!r}")
    return entry


def check(dataset_name: str, sources: list[str], executed: Iterable[tuple[str, dict[str, Any]]]) -> Verdict:
    """BFCL's verdict on the calls a scenario's run executed, in execution order."""
    executed = list(executed)
    if dataset_name in SINGLE_TURN:
        return _single_turn(dataset_name, sources[0], executed)
    if dataset_name == MULTISTEP:
        return _multistep(sources, executed)
    raise ValueError(f"no BFCL checker for dataset {dataset_name!r}")


def _single_turn(name: str, entry_id: str, executed: list[tuple[str, dict[str, Any]]]) -> Verdict:
    checker = _ast_checker()
    language = importlib.import_module("bfcl_eval.constants.enums").Language.PYTHON
    entry = _entry(name, entry_id)
    output = [{fn: dict(args)} for fn, args in executed]
    result = checker.ast_checker(entry["function"], output, answers(name)[entry_id], language, name, MODEL_NAME)
    return Verdict(bool(result["valid"]), "; ".join(map(str, result.get("error", []))))


def _multistep(sources: list[str], executed: list[tuple[str, dict[str, Any]]]) -> Verdict:
    mt_checker = importlib.import_module("bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker")
    mt_utils = importlib.import_module("bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils")
    truth = answers("multi_turn_base")
    # The checker keeps its class instances in module globals named after the model: a fresh name
    # per check keeps checks apart, and they are removed afterwards.
    model = f"{MODEL_NAME}{next(_runs)}"
    errors = []
    try:
        for n, entry_id in enumerate(sources, start=1):
            prefix = f"e{n}."
            calls = [call_text(fn.removeprefix(prefix), args) for fn, args in executed if fn.startswith(prefix)]
            result = mt_checker.multi_turn_checker([[calls]], [truth[entry_id][0]], _entry("multi_turn_base", entry_id),
                                                   "multi_turn_base", model)
            if not result["valid"]:
                errors.append(f"{entry_id}: {result.get('error_message', result.get('error_type', 'invalid'))}")
    finally:
        for key in [k for k in vars(mt_utils) if k.startswith(model + "_")]:
            delattr(mt_utils, key)
    return Verdict(not errors, "; ".join(errors))


def check_calls(expected: Iterable[tuple[str, dict[str, Any]]], executed: Iterable[tuple[str, dict[str, Any]]]
                ) -> Verdict:
    """For scenarios with no BFCL checker (human_message): accepted when the executed calls are
    exactly the expected ones, in any order (same function, same arguments, as many times)."""
    def key(call: tuple[str, dict[str, Any]]) -> str:
        return json.dumps([call[0], call[1]], sort_keys=True)

    missing = Counter(map(key, expected))
    missing.subtract(map(key, executed))
    problems = [f"missing {k}" for k, n in missing.items() if n > 0] + \
        [f"unexpected {k}" for k, n in missing.items() if n < 0]
    return Verdict(not problems, "; ".join(problems))
