"""BFCL's own checker on the calls a run executed: the ground truth fed back scores 100%, and a
corrupted answer fails."""

import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest

from webapp.bench.checker import check
from webapp.bench.scenarios import MULTISTEP, SINGLE_TURN, scenarios


def executed(scenario):
    return [(c.name, c.args) for c in scenario.calls]


@pytest.mark.parametrize("dataset", SINGLE_TURN)
def test_it_accepts_the_ground_truth_of_every_entry(dataset):
    found = scenarios(dataset, seed=0)
    rejected = [(s.id, v.error) for s in found if not (v := check(dataset, s.sources, executed(s))).valid]
    assert not rejected and len(found) >= 15


def test_it_accepts_the_ground_truth_of_multistep_scenarios():
    for scenario in scenarios(MULTISTEP, seed=0, limit=8):
        verdict = check(MULTISTEP, scenario.sources, executed(scenario))
        assert verdict.valid, (scenario.id, verdict.error)


def test_it_rejects_a_wrong_value_a_missing_call_and_a_wrong_function():
    (scenario,) = scenarios("parallel", seed=0, limit=1)  # spotify.play twice
    calls = executed(scenario)
    wrong_value = [(calls[0][0], {**calls[0][1], "duration": 99}), *calls[1:]]
    assert not check("parallel", scenario.sources, wrong_value).valid
    assert not check("parallel", scenario.sources, calls[:1]).valid
    wrong_name = [("spotify.pause", calls[0][1]), *calls[1:]]
    assert not check("parallel", scenario.sources, wrong_name).valid
    assert check("parallel", scenario.sources, list(reversed(calls))).valid  # parallel: any order


def test_it_rejects_a_multistep_run_that_left_a_different_state():
    (scenario,) = scenarios(MULTISTEP, seed=0, limit=1)
    calls = executed(scenario)
    assert check(MULTISTEP, scenario.sources, calls).valid
    assert not check(MULTISTEP, scenario.sources, calls[1:]).valid  # the first entry's first call is missing
    # An argument changed: the state (or the results) differ from the ground truth's.
    index, (name, args) = next((i, c) for i, c in enumerate(calls) if c[1])
    key = next(iter(args))
    changed = dataclasses.replace(scenario.calls[index], args={**args, key: f"{args[key]}_wrong"})
    corrupted = [*calls[:index], (changed.name, changed.args), *calls[index + 1:]]
    verdict = check(MULTISTEP, scenario.sources, corrupted)
    assert not verdict.valid and scenario.sources[int(name[1]) - 1] in verdict.error


def test_it_refuses_a_dataset_it_has_no_checker_for():
    with pytest.raises(ValueError, match="no BFCL checker"):
        check("simple", ["simple_0"], [])


def _source(module: str) -> str:
    return Path(importlib.util.find_spec(module).origin).read_text()


def test_the_checker_needs_nothing_from_bfcls_model_registry_but_the_dots_rule():
    # checker.py stands in for bfcl_eval.constants.model_config (which imports every vendor SDK)
    # with "dots stay dots"; that is only sound while the checker reads nothing else from it.
    source = _source("bfcl_eval.eval_checker.ast_eval.ast_checker")
    assert re.findall(r"MODEL_CONFIG_MAPPING\[[^\]]+\]\.(\w+)", source) == ["underscore_to_dot"]
    assert source.count("MODEL_CONFIG_MAPPING") == 2  # the import and that one use
    for module in ("multi_turn_checker", "multi_turn_utils"):
        assert "model_config" not in _source(f"bfcl_eval.eval_checker.multi_turn_eval.{module}")
