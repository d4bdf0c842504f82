"""The concurrency benchmark's own arithmetic, on the real test model: the ceiling measures both
ways of evaluating N tokens of one sequence in the same block, and a batched row's share of the
ceiling uses that block's numbers."""

import pytest
from django.conf import settings

from engine.backends.llamacpp import LlamaCppBackend
from engine.backends.llamacpp_batched import BatchedLlamaBackend
from engine.catalog import get_model
from engine.modelfiles import verified_path
from engine.profiles import profile_for
from webapp.bench.concurrency import QUESTION, _of_ceiling, alone, ceiling


@pytest.fixture(scope="module")
def plain():
    spec = get_model(settings.ASYNCLM_TEST_MODEL)
    return LlamaCppBackend(spec, verified_path(spec, settings.ASYNCLM_MODEL_DIR), n_ctx=512)


@pytest.fixture(scope="module")
def batched():
    spec = get_model(settings.ASYNCLM_TEST_MODEL)
    return BatchedLlamaBackend(spec, verified_path(spec, settings.ASYNCLM_MODEL_DIR), n_ctx=512, n_seq=4)


def test_it_measures_one_and_n_tokens_both_ways(plain):
    prompt = profile_for(plain.spec).prompt_ids(plain, QUESTION.format(i=0), [], "async")
    out = ceiling(plain, prompt, 4, repeats=2)
    assert set(out) == {"1", "4"}
    for row in out.values():
        assert row["ms"] > 0 and row["ms_all"] > 0
    assert out["1"]["speedup"] == out["1"]["speedup_all"] == 1.0
    assert out["4"]["speedup"] == pytest.approx(4 * out["1"]["ms"] / out["4"]["ms"], rel=0.02)
    assert out["4"]["speedup_all"] == pytest.approx(4 * out["1"]["ms_all"] / out["4"]["ms_all"], rel=0.02)
    # The sequence it borrowed is back: the next task can have the context.
    seq = plain.open_sequence()
    seq.append(prompt[:8])
    assert seq.logits().shape == (plain.n_vocab,)
    seq.close()


def test_it_times_the_batched_backends_step_in_the_same_rounds(plain, batched):
    prompt = profile_for(plain.spec).prompt_ids(plain, QUESTION.format(i=0), [], "async")
    flushes = batched.flushes
    out = ceiling(plain, prompt, 4, repeats=2, batched=batched)
    for row in out.values():
        assert row["ms_batched"] > 0
        assert row["batched_of_all"] == pytest.approx(row["ms_all"] / row["ms_batched"], abs=0.01)
    # One flush a round for each of 1 and 4 sequences, after the prompts went in.
    assert batched.flushes - flushes >= 4
    # Its sequences are free again: the backend can hold as many tasks as before.
    seqs = [batched.open_sequence(prompt) for _ in range(4)]
    for seq in seqs:
        seq.close()


def test_it_rates_a_batched_row_against_its_own_blocks_ceiling():
    row = {"aggregate_tok_s": 60.0}
    _of_ceiling(row, 40.0, {"speedup": 2.0, "speedup_all": 1.5})
    assert row == {"aggregate_tok_s": 60.0, "reference_tok_s": 40.0, "of_ceiling": 0.75, "of_ceiling_all": 1.0}


def test_it_leaves_a_row_without_tokens_unrated():
    row = {"aggregate_tok_s": None}
    _of_ceiling(row, 40.0, {"speedup": 2.0, "speedup_all": 1.5})
    assert "of_ceiling" not in row


def test_it_sets_one_task_on_each_backend_side_by_side_in_pairs(plain, batched):
    flushes = batched.flushes
    out = alone(plain, batched, [], tokens=6, pairs=3)
    assert out["pairs"] == 3
    assert len(out["contexts_tok_s"]) == len(out["batched_tok_s"]) == 3
    assert all(rate > 0 for rate in out["contexts_tok_s"] + out["batched_tok_s"])
    ratios = sorted(b / c for b, c in zip(out["batched_tok_s"], out["contexts_tok_s"], strict=True))
    assert out["ratio_p50"] == pytest.approx(ratios[1], abs=0.001)
    assert batched.flushes > flushes  # the batched runs went through the batched backend
