"""Prefill and injection chunks follow the backend's measured speed, so no step outgrows the
time budget however slow the model is."""

from engine.drivers.chunks import ChunkSizer
from engine.messages import TaskSubmission
from engine.scheduler import Scheduler
from tests.helpers import run_until_idle
from tests.scripted import ScriptedBackend, ScriptedSequence


class SlowClock:
    """Time moves only when the model evaluates tokens: `per_token` seconds each, plus a fixed
    `per_call` for every evaluation."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SlowSequence(ScriptedSequence):
    def append(self, ids) -> None:
        super().append(ids)
        backend = self.backend
        backend.clock.now += backend.per_call + backend.per_token * len(ids)
        backend.steps.append(backend.per_call + backend.per_token * len(ids))


class SlowBackend(ScriptedBackend):
    def __init__(self, clock: SlowClock, per_token: float, per_call: float = 0.0) -> None:
        super().__init__([b"ok"])
        self.clock, self.per_token, self.per_call = clock, per_token, per_call
        self.steps: list[float] = []

    def open_sequence(self, prompt_ids=()) -> SlowSequence:
        return SlowSequence(self)


def submission(task_id: int, prompt: str) -> TaskSubmission:
    return TaskSubmission(task_id=task_id, model="scripted", prompt=prompt, max_tokens=5, submitted_at=0.0)


def test_it_starts_with_the_first_chunk_then_sizes_chunks_to_the_budget():
    sizer = ChunkSizer(budget_s=1.0, first=32, low=8, high=1024)
    assert sizer.size(1) == 32
    sizer.observe(1, 32, 0.64)  # 20 ms a token: 50 would fit, a power of two is taken
    assert sizer.size(1) == 32
    sizer.observe(1, 32, 0.32)  # faster: the estimate moves halfway, to 15 ms (66 fit)
    assert sizer.size(1) == 64
    assert sizer.size(2) == 32  # another backend is measured on its own


def test_it_believes_a_slower_reading_at_once_and_a_faster_one_halfway():
    sizer = ChunkSizer(budget_s=1.0, first=32)
    sizer.observe(1, 100, 1.0)
    sizer.observe(1, 100, 0.5)
    assert sizer.seconds_per_token(1) == 0.0075
    sizer.observe(1, 100, 2.0)
    assert sizer.seconds_per_token(1) == 0.02


def test_it_ignores_chunks_too_small_to_measure_and_keeps_sizes_in_bounds():
    sizer = ChunkSizer(budget_s=1.0, first=32, low=8, high=256, min_measured=8)
    sizer.observe(1, 2, 5.0)
    assert sizer.seconds_per_token(1) is None
    sizer.observe(1, 10, 100.0)
    assert sizer.size(1) == 8
    sizer.observe(2, 1000, 0.001)
    assert sizer.size(2) == 256


def test_it_keeps_every_prefill_step_of_a_slow_model_within_the_budget():
    clock = SlowClock()
    backend = SlowBackend(clock, per_token=0.04, per_call=0.05)  # 25 tokens a second
    scheduler = Scheduler(lambda name: backend, clock=clock, wall=lambda: 0.0,
                          chunks=ChunkSizer(budget_s=1.0, first=16))
    prompt = "x" * 600
    events = scheduler.submit(submission(1, prompt)) + run_until_idle(scheduler)
    assert events[-1].payload["status"] == "finished"
    prefill = next(e for e in events if e.kind == "prefill").payload
    sizes = [n for kind, n in backend.calls if kind == "append"]
    n_prefill = next(i for i in range(len(sizes) + 1) if sum(sizes[:i]) == prefill["prompt_tokens"])
    assert prefill["prompt_tokens"] >= 600
    assert n_prefill > 20  # a fixed 128-token chunk would take 5.2 s a step
    assert max(backend.steps) <= 1.0
    assert prefill["ms"] == round(sum(backend.steps[:n_prefill]) * 1000, 2)

def test_a_model_that_evaluates_128_tokens_within_the_budget_always_gets_128():
    sizer = ChunkSizer()  # the engine's defaults: 2 s, 128 tokens at most
    for seconds in (0.2, 1.4, 0.6, 1.9):  # a loaded machine's readings vary; the cut does not
        sizer.observe(1, 128, seconds)
        assert sizer.size(1) == 128
    sizer.observe(1, 128, 3.0)  # too slow for 128 in 2 s
    assert sizer.size(1) == 64


def test_it_grows_chunks_on_a_fast_model_up_to_the_cap():
    clock = SlowClock()
    backend = SlowBackend(clock, per_token=0.0005)
    scheduler = Scheduler(lambda name: backend, clock=clock, wall=lambda: 0.0,
                          chunks=ChunkSizer(budget_s=1.0, first=16))
    scheduler.submit(submission(1, "y" * 3000))
    run_until_idle(scheduler)
    sizes = [n for kind, n in backend.calls if kind == "append"]
    assert sizes[0] == 16
    assert set(sizes[1:-3]) == {128}  # 2000 would fit the budget; the cap holds
