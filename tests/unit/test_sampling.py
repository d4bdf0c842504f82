import numpy as np

from engine.messages import Sampling
from engine.sampling import sample


def test_it_is_greedy_at_temperature_zero():
    logits = np.array([0.1, 3.0, 2.9, -1.0])
    assert sample(logits, Sampling(temperature=0), np.random.default_rng(1)) == 1


def test_top_k_one_is_greedy_at_any_temperature():
    logits = np.array([0.1, 3.0, 2.9, -1.0])
    rng = np.random.default_rng(0)
    assert {sample(logits, Sampling(temperature=5.0, top_k=1), rng) for _ in range(50)} == {1}


def test_top_p_keeps_only_the_nucleus():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(0)
    drawn = {sample(logits, Sampling(temperature=1.0, top_p=0.7), rng) for _ in range(300)}
    assert drawn == {0, 1}
