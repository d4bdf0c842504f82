"""Training traces for the adaptation step: the split, the simulated clock, the loss mask, and
that a rendered trace is exactly what the engine holds after the same run."""

import json
import random
from dataclasses import replace

import numpy as np
import pytest
from django.conf import settings

from engine.backends.base import Sequence
from engine.backends.delegating import DelegatingBackend
from engine.backends.llamacpp import LlamaCppBackend
from engine.catalog import AdapterSpec, get_model
from engine.messages import TaskSubmission
from engine.modelfiles import verified_path
from engine.scheduler import Scheduler
from engine.state import Status
from engine.tools import ToolSpec
from finetune import plans as plans_module
from finetune import split
from finetune.build import build, plans
from finetune.plans import combined_plan, demo_plan, entry_plan, web_times
from finetune.traces import FORCED, FRAME, MISTAKE, MODEL, Message, Plan, PlanCall, render, simulate
from tests.scripted import ScriptedBackend
from webapp.tools.bfcl import dataset, question

QWEN = "qwen2.5-coder-0.5b"


@pytest.fixture(scope="module")
def qwen() -> LlamaCppBackend:
    spec = get_model(QWEN)
    return LlamaCppBackend(spec, verified_path(spec, settings.ASYNCLM_MODEL_DIR), n_ctx=4096)


def tool(name: str, est: int, **props: str) -> ToolSpec:
    schema = {"type": "object", "properties": {k: {"type": v} for k, v in props.items()}}
    return ToolSpec(name, f"{name} things", schema, est_latency_ms=est)


# -- the split --------------------------------------------------------------------------------
def test_it_splits_stably_and_disjointly():
    ids = [f"parallel_{i}" for i in range(200)]
    train, held = split.split_ids(ids)
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(ids)
    assert len(held) == 50  # 25%, and at least 50
    shuffled = ids[:]
    random.Random(1).shuffle(shuffled)
    assert set(split.split_ids(shuffled)[1]) == set(held)  # the order it is read in does not matter
    # A dataset that grows never moves a held-out entry into training.
    assert set(held) <= set(split.split_ids([*ids, "parallel_999", "parallel_1000"])[1])


def test_it_holds_out_at_least_fifty_entries_of_a_small_dataset():
    ids = [f"x_{i}" for i in range(120)]
    assert len(split.split_ids(ids)[1]) == 50
    assert len(split.split_ids(ids[:30])[1]) == 30  # a dataset smaller than that is held out whole


def test_it_ships_the_split_of_the_installed_bfcl_data():
    recorded = json.loads(split.HELDOUT_FILE.read_text())
    assert recorded["heldout"] == split.compute_heldout(recorded["seed"])
    assert recorded["digest"] == split.split_digest(recorded["heldout"])


# -- the simulated clock (one character = one token with the scripted backend) -----------------
def test_it_injects_a_result_at_the_first_boundary_after_it_arrives():
    """Hand-computed, 10 ms per token. a (est 500 ms, runs 100 ms) is written first (LPT):
    `[CALL]` 6 + forced ` c1 [HEAD]` 10 + ` a(x=1) [END]` 13 tokens -> dispatched at 290 ms, result
    at 393 ms. b follows: ` [CALL]` 7 + 10 + ` b(y=2) [END]` 13 -> 590 ms. a's result arrived while
    b's block was open (a critical section), so its frame goes in right after b's [END]; then the
    model traps until b's result (590 + 3 + 200 = 793 ms)."""
    tools = (tool("a", 500, x="integer"), tool("b", 100, y="integer"))
    plan = Plan("hand", "test", "q", tools,
                (PlanCall("a", {"x": 1}, 100.0, {"v": 1}), PlanCall("b", {"y": 2}, 200.0, {"v": 2})), "done")
    trace = simulate(plan, "async", 10.0, ScriptedBackend([]))
    kinds = [(s.kind, s.text) for s in trace.segments]
    assert kinds[:6] == [(MODEL, "[CALL]"), (FORCED, " c1 [HEAD]"), (MODEL, " a(x=1) [END]"),
                         (MODEL, " [CALL]"), (FORCED, " c2 [HEAD]"), (MODEL, " b(y=2) [END]")]
    assert trace.segments[2].at_ms == 290 and trace.segments[5].at_ms == 590
    first = trace.segments[6]
    assert first.kind == FRAME and [cid for cid, _ in first.delivered] == ["c1"]
    assert trace.segments[7].text == "[TRAP][END]"  # no space after a frame
    second = trace.segments[8]
    assert second.kind == FRAME and [cid for cid, _ in second.delivered] == ["c2"]
    assert second.at_ms == pytest.approx(793 + len(second.text) * 2.5)  # injected at 0.25 of a token
    assert trace.segments[-1].text == "done" and trace.segments[-1].at_ms == pytest.approx(
        trace.segments[8].at_ms + 4 * 10)


def test_it_injects_what_arrives_during_a_frame_right_after_it():
    """As above, but b runs 20 ms: its result (590 + 3 + 20 = 613 ms) arrives while a's frame
    (` [INTR] c1 [HEAD] {"v":1} [END] `, 32 tokens at 2.5 ms: 590 -> 670 ms) is evaluated, so it
    goes in right after, reading as one frame (no second blank), and the model answers without a
    trap: what a real run looks like when the tools are faster than a frame."""
    tools = (tool("a", 500, x="integer"), tool("b", 100, y="integer"))
    plan = Plan("hand", "test", "q", tools,
                (PlanCall("a", {"x": 1}, 100.0, {"v": 1}), PlanCall("b", {"y": 2}, 20.0, {"v": 2})), "done")
    segments = simulate(plan, "async", 10.0, ScriptedBackend([])).segments
    first, second, answer = segments[6:]
    assert first.kind == second.kind == FRAME
    assert first.text == ' [INTR] c1 [HEAD] {"v":1} [END] ' and first.at_ms == pytest.approx(670)
    assert second.text == '[INTR] c2 [HEAD] {"v":2} [END] ' and [c for c, _ in second.delivered] == ["c2"]
    assert (answer.kind, answer.text) == (MODEL, "done")


def test_it_traps_only_while_a_result_is_still_to_come():
    rng_plans = [p for e in dataset("parallel")[:40] if (p := entry_plan("parallel", e, 0))]
    rng_plans += [demo_plan(k, 0) for k in range(20)]
    backend = ScriptedBackend([])
    for plan in rng_plans:
        for mode in ("async", "sync", "sync_parallel"):
            segments = simulate(plan, mode, 12.0, backend).segments
            for i, seg in enumerate(segments):
                if "[TRAP]" in seg.text and seg.kind == MODEL:
                    assert mode != "sync"
                    assert segments[i + 1].kind == FRAME, (plan.source, mode)  # it waited for something
            # Every call's result went in before the answer, exactly once.
            delivered = [cid for s in segments for cid, _ in s.delivered]
            assert len(delivered) == len(set(delivered)) == len(plan.calls) + (
                len(plan.message.calls) if plan.message else 0)
            assert segments[-1].kind == MODEL and "[" not in segments[-1].text


def test_it_waits_for_a_dependency_before_writing_the_dependent_call():
    tools = (tool("cd", 10, folder="string"), tool("ls", 900))
    plan = Plan("dep", "test", "q", tools,
                (PlanCall("cd", {"folder": "x"}, 50.0, {"ok": 1}), PlanCall("ls", {}, 5.0, ["f"], deps=(0,))), "ok")
    segments = simulate(plan, "async", 10.0, ScriptedBackend([])).segments
    texts = [s.text for s in segments]
    ls_at = next(i for i, t in enumerate(texts) if "ls()" in t)
    frame_at = next(i for i, s in enumerate(segments) if s.kind == FRAME)
    assert frame_at < ls_at and "[TRAP][END]" in texts[frame_at - 1]


def test_it_lets_a_refused_call_be_retried_with_a_new_id():
    tools = (tool("f", 100, n="integer"),)
    plan = Plan("m", "test", "q", tools, (PlanCall("f", {"n": 3}, 10.0, {"v": 9}, mistake={"n": "3"}),), "9")
    trace = simulate(plan, "sync", 10.0, ScriptedBackend([]))
    kinds = [s.kind for s in trace.segments]
    assert kinds[:4] == [MISTAKE, FORCED, MISTAKE, FRAME]
    assert "c1" in trace.segments[3].text and "invalid_call" in trace.segments[3].text
    assert trace.segments[5].text == " c2 [HEAD]"  # the burnt id is never reused


# -- the loss mask, on the real tokenizer ------------------------------------------------------
@pytest.mark.slow
def test_it_trains_only_on_what_the_model_writes(qwen):
    plans = [demo_plan(k, 0, message=True) for k in range(4)]
    plans += [p for e in dataset("parallel_multiple")[:4] if (p := entry_plan("parallel_multiple", e, 0))]
    for plan in plans:
        for mode in ("async", "sync_parallel", "sync"):
            rendered = render(simulate(plan, mode, 20.0, qwen), qwen)
            pairs = zip(rendered.ids, rendered.mask, strict=True)
            trained = b"".join(qwen.token_bytes(t) for t, m in pairs if m).decode(errors="replace")
            assert "INTR" not in trained and "<|im_start|>" not in trained
            assert not any(rendered.mask[: rendered.prompt_tokens])
            assert rendered.mask[-1] == 1  # the end of the turn is learned too


def test_it_asks_two_entries_as_one_question():
    a, b = dataset("parallel")[0], dataset("multiple")[0]
    plan = combined_plan([("parallel", a), ("multiple", b)], 0)
    one, two = entry_plan("parallel", a, 0), entry_plan("multiple", b, 0)
    assert plan.entries == (("parallel", a["id"]), ("multiple", b["id"]))
    assert plan.question.startswith(question(a).strip()) and plan.question.endswith(question(b).strip())
    assert [(c.name, c.args) for c in plan.calls] == [(c.name, c.args) for c in (*one.calls, *two.calls)]
    assert {t.name for t in plan.tools} == {t.name for t in (*one.tools, *two.tools)}


def test_it_refuses_to_combine_two_functions_of_one_name():
    a = dataset("simple_python")[0]
    clash = {**a, "function": [{**a["function"][0], "description": "something else"}]}
    assert combined_plan([("simple_python", a), ("simple_python", clash)], 0) is None


def test_it_gives_a_share_of_the_plans_web_api_tool_times(monkeypatch):
    assert not any(web_times(0, e["id"]) for e in dataset("parallel"))  # off by default
    monkeypatch.setattr(plans_module, "WEB_SHARE", 0.5)
    made = [p for e in dataset("parallel")[:60] if (p := entry_plan("parallel", e, 0))]
    web = [p for p in made if web_times(0, p.source)]
    assert 0.35 * len(made) <= len(web) <= 0.65 * len(made)  # WEB_SHARE of them, seeded
    assert any(t.est_latency_ms > 1000 for p in web for t in p.tools)
    for plan in made:
        low, high = (200, 5000) if plan in web else (1, 1000)
        assert all(low <= c.latency_ms <= high for c in plan.calls)
        assert all(low <= t.est_latency_ms <= high for t in plan.tools)
    assert entry_plan("parallel", dataset("parallel")[0], 0) == made[0]  # reproducible


def test_it_parks_a_web_plan_until_its_results_come(monkeypatch):
    monkeypatch.setattr(plans_module, "WEB_SHARE", 0.5)
    plan = next(p for e in dataset("parallel") if (p := entry_plan("parallel", e, 0))
                and min(c.latency_ms for c in p.calls) > 600 and not any(c.error or c.mistake for c in p.calls))
    trace = simulate(plan, "async", 10.0, ScriptedBackend([]))
    assert trace.waits >= 1
    assert [s.kind for s in trace.segments[-2:]] == [FRAME, MODEL]  # the answer follows the last result
    assert trace.segments[-1].at_ms > max(c.latency_ms for c in plan.calls)
    assert sum(len(f.delivered) for f in trace.frames) == len(plan.calls)


@pytest.mark.slow
def test_it_builds_a_dataset_without_held_out_entries(tmp_path):
    stats = build(tmp_path, QWEN, 0, limit=2, say=lambda _: None)
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").open()]
    heldout = split.load_heldout()
    assert len(rows) == stats["train"]["traces"] > 0
    assert not any(r["source"] in heldout.get(r["dataset"], set()) for r in rows)
    assert not any(i in heldout[d] for r in rows for d, i in r["entries"])
    assert {r["dataset"] for r in rows} >= {"simple_python", "parallel", "irrelevance", "combined", "demo"}
    assert all(len(r["entries"]) == 2 for r in rows if r["dataset"] == "combined")
    assert sum(stats["train"]["by_dataset_mode"].values()) == len(rows)
    evals = [json.loads(line) for line in (tmp_path / "eval.jsonl").open()]
    assert evals and all(r["source"] in heldout.get(r["dataset"], set()) or r["dataset"] == "demo" for r in evals)


@pytest.mark.slow
def test_it_leaves_combined_questions_out_when_asked():
    made = plans("train", 0, 1, lambda _: None, combined=0)
    assert made and all(len(p.entries) <= 1 for p in made)
    assert sum(len(p.entries) == 2 for p in plans("train", 0, 1, lambda _: None, combined=3)) == 3


@pytest.mark.slow
def test_it_draws_again_the_questions_that_need_many_calls():
    made = plans("train", 0, 8, lambda _: None, combined=0, variants=True)
    pm = [p for p in made if p.dataset == "parallel_multiple"]
    again = [p for p in pm if "~" in p.source]
    first = {p.source: p for p in pm if "~" not in p.source}
    assert again and len(first) == 8
    for plan in again:
        original = first[plan.source.split("~")[0]]
        assert plan.entries == original.entries and plan.question == original.question
        assert [(c.name, c.args) for c in plan.calls] == [(c.name, c.args) for c in original.calls]
        assert len(plan.calls) >= 3 and plan.tools != original.tools  # other latencies drawn
    assert len(again) == sum(len(p.calls) >= 3 for p in first.values())
    assert not any(p.dataset != "parallel_multiple" and "~" in p.source for p in made)
    assert not any("~" in p.source for p in plans("train", 0, 8, lambda _: None, combined=0))  # off by default


# -- the rendered trace is the engine's context ------------------------------------------------
class ReplaySequence(Sequence):
    """Predicts the next token of the expected context, whatever the engine did so far: if the
    engine forced, injected or framed anything differently, the contexts part ways."""

    def __init__(self, backend: "ReplayBackend", prompt: list[int]) -> None:
        self.backend, self.ids = backend, []

    @property
    def n_tokens(self) -> int:
        return len(self.ids)

    def append(self, ids) -> None:
        self.ids.extend(ids)

    def logits(self) -> np.ndarray:
        out = np.zeros(self.backend.n_vocab, dtype=np.float32)
        expected = self.backend.expected
        out[expected[len(self.ids)] if len(self.ids) < len(expected) else 0] = 30.0
        return out

    def truncate(self, n_tokens: int) -> None:
        del self.ids[n_tokens:]

    def close(self) -> None:
        self.backend.final = list(self.ids)


class ReplayBackend(DelegatingBackend):
    constrained_calls = True
    typed_call_values = False  # traces teach recovery from a number written as a string

    def __init__(self, real: LlamaCppBackend, expected: list[int]) -> None:
        super().__init__(real)
        adapter = AdapterSpec("cml", "unused.gguf", "0" * 64, 1)
        self.expected, self.final = expected, None
        self.spec = replace(real.spec, name="replay", adapter=adapter)  # the tuned prompt profile
        self.constrained_calls = True

    @property
    def n_ctx(self) -> int:
        return 4096

    def open_sequence(self, prompt_ids=()):
        return ReplaySequence(self, list(prompt_ids))


def replay(plan: Plan, mode: str, qwen: LlamaCppBackend, vocab: list[str]) -> tuple[list[int], list[int]]:
    trace = simulate(plan, mode, 15.0, qwen)
    rendered = render(trace, qwen)
    backend = ReplayBackend(qwen, rendered.ids)
    backend.vocab_texts = lambda: vocab  # noqa: E731 - the real vocabulary, read once per module
    scheduler = Scheduler(lambda _: backend)
    sub = TaskSubmission(1, "replay", plan.question, 400, 0.0, mode=mode, tools=[t.to_dict() for t in plan.tools])
    scheduler.submit(sub)
    run = scheduler.task(1)
    frames, position = [], rendered.prompt_tokens
    for seg in trace.segments:
        if seg.kind == FRAME:
            frames.append((position, seg))
        position += len(seg.ids)
    for _ in range(5000):
        if run.status.value in ("finished", "failed", "cancelled"):
            break
        while frames and frames[0][0] <= run.context_len:
            at, seg = frames.pop(0)
            # A refused block's error is queued by the engine itself; results and messages arrive
            # when the context reaches the frame's place in the trace.
            if seg.delivered or seg.messages:
                assert at == run.context_len, (at, run.context_len)
            for cid, call in seg.delivered:
                if call.error:
                    scheduler.deliver(1, cid, ok=False, error=call.error[1], error_type=call.error[0])
                else:
                    scheduler.deliver(1, cid, ok=True, value=call.result)
            for text in seg.messages:
                scheduler.human_message(1, text)
        scheduler.step()
        scheduler.take_dispatches()
    assert run.status is Status.FINISHED, run.status
    return backend.final, rendered.ids[:-1]  # the end-of-turn token is sampled, never kept


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["async", "sync", "sync_parallel"])
def test_it_renders_exactly_the_engines_context(qwen, mode):
    vocab = qwen.vocab_texts()
    weather = next(t for t in demo_plan(0, 0).tools if t.name == "get_weather")
    plans = [
        demo_plan(3, 0, message=True),
        next(p for e in dataset("parallel_multiple") if (p := entry_plan("parallel_multiple", e, 0))),
        Plan("errors", "test", "Weather in Oslo and Rome?", (weather,), (
            PlanCall("get_weather", {"city": "Oslo"}, 400.0, None, ("timeout", "timed out after 5 s")),
            PlanCall("get_weather", {"city": "Rome"}, 100.0, {"temp_c": 20}, mistake={"city": 7}),
        ), "Rome is at 20 °C; Oslo timed out.", Message(50.0, "Also check Paris.", (
            PlanCall("get_weather", {"city": "Paris"}, 80.0, {"temp_c": 18}),))),
        # Rome's result (5 ms) arrives while Oslo's frame is evaluated: two frames back to back.
        Plan("back-to-back", "test", "Weather in Oslo and Rome?", (weather,), (
            PlanCall("get_weather", {"city": "Oslo"}, 50.0, {"temp_c": 5}),
            PlanCall("get_weather", {"city": "Rome"}, 5.0, {"temp_c": 20}),
        ), "Oslo is at 5 °C and Rome at 20 °C."),
    ]
    for plan in plans:
        engine_context, rendered = replay(plan, mode, qwen, vocab)
        assert engine_context == rendered, plan.source
