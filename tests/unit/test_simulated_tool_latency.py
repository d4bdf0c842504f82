"""The simulated tool kind's latency draws (workers/executors/simulated.py): distributions, clamping, seeds."""

import random
import statistics

import pytest

from workers.executors import ToolError
from workers.executors.simulated import draw_latency_ms


def draws(spec, n=4000, seed=1):
    rng = random.Random(seed)
    return [draw_latency_ms(spec, rng) for _ in range(n)]


def test_the_papers_distribution_is_expressible():
    values = draws({"dist": "lognormal", "mean": 110, "sigma": 0.6, "min": 30, "max": 500})
    assert min(values) >= 30 and max(values) <= 500
    assert 95 < statistics.mean(values) < 125


@pytest.mark.parametrize("spec", [
    {"dist": "fixed", "value": 42},
    {"dist": "uniform", "low": 10, "high": 20},
    {"dist": "normal", "mean": 100, "sd": 30, "min": 50, "max": 150},
])
def test_draws_are_reproducible_and_clamped(spec):
    assert draws(spec, 50) == draws(spec, 50)
    values = draws(spec)
    assert min(values) >= spec.get("min", 0) and max(values) <= spec.get("max", 1e9)


def test_an_unknown_distribution_is_a_clear_error():
    with pytest.raises(ToolError, match="unknown latency distribution 'zipf'"):
        draw_latency_ms({"dist": "zipf"}, random.Random(0))
