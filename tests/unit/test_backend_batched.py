"""The batched llama.cpp backend on the real embedded model (the fast test model): sequences that
share one context keep their own KV cells, a batch gives each sequence what it would get alone,
prefixes are reused or copied, and one task's failure stays its own."""

import numpy as np
import pytest
from django.conf import settings

from engine.backends.base import BackendError
from engine.backends.llamacpp import LlamaCppBackend
from engine.backends.llamacpp_batched import BatchedLlamaBackend
from engine.catalog import get_model
from engine.messages import Budgets, Sampling, TaskSubmission
from engine.modelfiles import verified_path
from engine.scheduler import Scheduler

PROMPT = "The quick brown fox"


def load(n_ctx: int = 512, n_seq: int = 4, step_tokens: int = 64) -> BatchedLlamaBackend:
    spec = get_model(settings.ASYNCLM_TEST_MODEL)
    return BatchedLlamaBackend(spec, verified_path(spec, settings.ASYNCLM_MODEL_DIR), n_ctx=n_ctx, n_seq=n_seq,
                               step_tokens=step_tokens)


@pytest.fixture(scope="module")
def backend():
    return load()


@pytest.fixture(autouse=True)
def free_sequences(backend):
    """A failed test must not leave its sequences taken for the next one."""
    yield
    for slot in backend._slots:
        if slot.in_use:
            backend.release(slot)


def same_next_token(a: np.ndarray, b: np.ndarray) -> None:
    """llama.cpp's numbers depend on the batch's shape (a batch of 20 tokens goes through other
    kernels than one of 6): the same argmax and nearly the same distribution, not equal floats."""
    assert np.argmax(a) == np.argmax(b)
    assert np.corrcoef(a, b)[0, 1] > 0.995


@pytest.fixture(scope="module")
def plain():
    spec = get_model(settings.ASYNCLM_TEST_MODEL)
    return LlamaCppBackend(spec, verified_path(spec, settings.ASYNCLM_MODEL_DIR), n_ctx=512)


def alone(plain: LlamaCppBackend, ids: list[int]) -> np.ndarray:
    seq = plain.open_sequence()
    seq.append(ids)
    out = seq.logits()
    seq.close()
    return out


def test_appends_wait_for_the_batch_and_each_sequence_gets_its_own_logits(backend, plain):
    texts = [" jumps over", " sleeps under the big", " runs"]
    seqs = [backend.open_sequence() for _ in texts]
    for seq, text in zip(seqs, texts, strict=True):
        seq.append(backend.tokenize(PROMPT + text))
        assert seq.busy_s() > 0  # queued, not evaluated
    flushes = backend.flushes
    assert backend.flush()
    assert backend.flushes == flushes + 1 and all(seq.busy_s() == 0 for seq in seqs)  # one batch for all three
    for seq, text in zip(seqs, texts, strict=True):
        expected = alone(plain, backend.tokenize(PROMPT + text))
        same_next_token(seq.logits(), expected)
        seq.close()
    assert not backend.flush()  # nothing left


def test_a_long_prefill_goes_in_chunks_within_the_step_budget_while_others_decode(backend):
    long_prompt = backend.tokenize("word " * 150)
    decoding = backend.open_sequence()
    decoding.append(backend.tokenize(PROMPT))
    backend.flush(everything=True)
    filling = backend.open_sequence()
    filling.append(long_prompt)
    steps = 0
    while filling.busy_s() > 0:
        decoding.append([int(np.argmax(decoding.logits()))])
        backend.flush()
        steps += 1
        assert decoding.busy_s() == 0  # the decode token went in every batch
    assert steps >= len(long_prompt) // 64  # at most the budget of 64 per step (minus the decode token)
    assert filling.n_tokens == len(long_prompt) and backend.cells(filling.slot) == len(long_prompt)
    decoding.close()
    filling.close()


def test_truncate_rolls_one_sequence_back_and_leaves_the_others(backend, plain):
    prompt = backend.tokenize(PROMPT)
    a, b = backend.open_sequence(), backend.open_sequence()
    a.append(prompt + backend.tokenize(" sleeps under the table"))
    b.append(prompt + backend.tokenize(" jumps"))
    backend.flush(everything=True)
    b_before = b.logits()
    a.truncate(len(prompt))
    assert a.n_tokens == len(prompt) and backend.cells(a.slot) == len(prompt)
    a.append(backend.tokenize(" jumps"))
    same_next_token(a.logits(), alone(plain, prompt + backend.tokenize(" jumps")))
    np.testing.assert_array_equal(b.logits(), b_before)
    # Queued tokens are dropped by a truncate without being evaluated.
    b.append(backend.tokenize(" high"))
    b.truncate(len(prompt) + 1)
    assert b.busy_s() == 0 and b.n_tokens == len(prompt) + 1
    a.close()
    b.close()


def test_an_interrupt_appended_to_one_sequence_leaves_anothers_next_token(backend):
    prompt = backend.tokenize("List three colours:")
    a, b = backend.open_sequence(), backend.open_sequence()
    a.append(prompt)
    b.append(prompt)
    backend.flush(everything=True)
    b_next = int(np.argmax(b.logits()))
    a.append(backend.tokenize(" [INTR] c1 [HEAD] {\"colour\": \"teal\"} [END]"))
    b.append([b_next])
    backend.flush(everything=True)
    reference = backend.open_sequence()
    reference.append(prompt + [b_next])
    assert int(np.argmax(b.logits())) == int(np.argmax(reference.logits()))
    for seq in (a, b, reference):
        seq.close()


def test_a_new_task_reuses_a_cached_prefix_or_copies_a_live_one(backend, plain):
    system = backend.tokenize("You are a careful assistant. " * 8)
    first = backend.open_sequence(system + backend.tokenize("Question one?"))
    first.append((system + backend.tokenize("Question one?"))[first.n_tokens:])
    backend.flush(everything=True)
    # Live: the second task copies the shared system prompt instead of prefilling it.
    second_prompt = system + backend.tokenize("Question two?")
    second = backend.open_sequence(second_prompt)
    assert second.n_tokens >= len(system) - 1 and second.slot is not first.slot
    assert backend.cells(second.slot) == second.n_tokens
    second.append(second_prompt[second.n_tokens:])
    same_next_token(second.logits(), alone(plain, second_prompt))
    # Idle: once a task ended, its cells serve the next prompt with the same start.
    first.close()
    third_prompt = system + backend.tokenize("Question one? And more.")
    third = backend.open_sequence(third_prompt)
    assert third.slot is first.slot and third.n_tokens >= len(system)
    second.close()
    third.close()
    backend.drop_cache()  # a cold start for the next task: nothing cached is reused
    cold = backend.open_sequence(third_prompt)
    assert cold.n_tokens == 0 and backend.cells(cold.slot) == 0
    cold.close()


def test_a_closed_sequence_frees_its_slot_mid_batch(backend):
    seqs = [backend.open_sequence() for _ in range(4)]
    with pytest.raises(BackendError, match="all 4 sequences"):
        backend.open_sequence()
    for seq in seqs:
        seq.append(backend.tokenize(PROMPT))
    seqs[1].close()  # cancelled with work queued: it leaves the batch
    backend.flush(everything=True)
    assert seqs[1].slot.pending == [] and not seqs[1].slot.in_use
    again = backend.open_sequence()
    assert again.slot is seqs[1].slot
    for seq in (seqs[0], seqs[2], seqs[3], again):
        seq.close()


def test_a_full_context_fails_that_task_only(backend):
    small = load(n_ctx=64, n_seq=2)
    a, b = small.open_sequence(), small.open_sequence()
    a.append(small.tokenize("one two three"))
    with pytest.raises(BackendError, match="context full"):
        b.append(small.tokenize("word " * 80))
    small.flush(everything=True)
    assert a.logits().shape == (small.n_vocab,)
    a.close()
    b.close()


def test_a_batch_of_four_agrees_with_decoding_alone_teacher_forced(plain):
    """llama.cpp's numbers depend slightly on the batch's shape: the argmax must agree at >= 99%
    of 200 teacher-forced steps."""
    backend = load(n_ctx=512, n_seq=4)
    prompts = [backend.tokenize(p) for p in ("Once upon a time", "def main():", "The capital of France", "1, 2, 3,")]
    forced = backend.tokenize(" and then the story went on for a very long while, " * 12)[:200]
    seqs = [backend.open_sequence() for _ in prompts]
    single = plain.open_sequence()
    single.append(prompts[0])
    for seq, prompt in zip(seqs, prompts, strict=True):
        seq.append(prompt)
    agree, worst = 0, 0.0
    for token in forced:
        backend.flush(everything=True)
        batched, reference = seqs[0].logits(), single.logits()
        agree += int(np.argmax(batched) == np.argmax(reference))
        worst = max(worst, float(np.abs(batched - reference).max()))
        for seq in seqs:
            seq.append([token])
        single.append([token])
    assert agree >= 0.99 * len(forced), (agree, worst)
    for seq in seqs:
        seq.close()
    single.close()


def test_the_scheduler_decodes_several_tasks_in_shared_batches(backend):
    scheduler = Scheduler(lambda name: backend)
    for task_id in (1, 2, 3):
        scheduler.submit(TaskSubmission(task_id, settings.ASYNCLM_TEST_MODEL, f"Count to {task_id + 5}.", 12, 0.0,
                                        Sampling(temperature=0.0), budgets=Budgets()))
    flushes = backend.flushes
    events = []
    for _ in range(2000):
        if not scheduler.has_work():
            break
        events += scheduler.step()
    finishes = [e for e in events if e.kind == "finish"]
    assert sorted(e.task_id for e in finishes) == [1, 2, 3]
    assert all(e.payload["status"] == "finished" for e in finishes)
    tokens = sum(1 for e in events if e.kind == "token")
    assert backend.flushes - flushes < tokens * 0.6  # far fewer batches than tokens: they were shared


def test_tasks_that_shared_a_batch_say_a_rerun_may_differ_and_a_task_alone_does_not(backend):
    """Greedy decoding is reproducible only for a task whose tokens were never evaluated together
    with another sequence's (nor copied from one that was): its metrics say which it was."""

    def run(task_ids: tuple[int, ...]) -> dict[int, bool]:
        scheduler = Scheduler(lambda name: backend)
        for task_id in task_ids:
            scheduler.submit(TaskSubmission(task_id, settings.ASYNCLM_TEST_MODEL, f"Count to {task_id}.", 6, 0.0,
                                            Sampling(temperature=0.0), budgets=Budgets()))
        events = []
        while scheduler.has_work():
            events += scheduler.step()
        return {e.task_id: e.payload["metrics"]["reproducible"] for e in events if e.kind == "finish"}

    backend.drop_cache()
    assert run((1, 2)) == {1: False, 2: False}
    backend.drop_cache()
    assert run((3,)) == {3: True}
    assert run((3,)) == {3: True}  # its own cached cells were never shared either


def test_prefill_and_frames_report_the_time_of_the_batches_that_evaluated_them(backend):
    """Appends only queue here, so the time is taken from the batches: a prefill or frame event
    comes once its tokens were evaluated, with that time (not the microseconds of queueing)."""
    backend.drop_cache()
    scheduler = Scheduler(lambda name: backend)
    prompt = "Write a long story about a fox who lives in a forest near a river."
    scheduler.submit(TaskSubmission(1, settings.ASYNCLM_TEST_MODEL, prompt, 40, 0.0, Sampling(temperature=0.0),
                                    budgets=Budgets()))
    events = []
    while not any(e.kind == "token" for e in events):
        events += scheduler.step()
    run = scheduler.task(1)
    (prefill,) = [e for e in events if e.kind == "prefill"]
    assert prefill.payload["ms"] >= run.seq.work_s() * 1000 * 0.99 > 1.0  # the prompt's batches, no less
    assert run.seq.work_s() * 1000 < prefill.payload["ms"] + 200  # and not the decode after it
    events += scheduler.human_message(1, "Also mention the river's name, please, in one short sentence.")
    before = run.seq.work_s()
    while not any(e.kind == "interrupt_injected" for e in events):
        events += scheduler.step()
    (frame,) = [e for e in events if e.kind == "interrupt_injected"]
    assert frame.payload["tokens"] > 10
    assert frame.payload["ms"] >= (run.seq.work_s() - before) * 1000 * 0.99 > 1.0
    assert frame.t_ms >= frame.payload["began_ms"] + frame.payload["ms"] * 0.99  # reported once it was in
    scheduler.cancel(1)
