"""Constrained call blocks (engine/constrain.py): the body automaton, call ids, the mask through
the scheduler with a scripted model that has preferences, and the real embedded model."""

import json
import random

import jsonschema
import numpy as np
import pytest
from django.conf import settings

from engine.backends.base import Sequence
from engine.backends.delegating import DelegatingBackend
from engine.callbody import CallBody, CallGrammar
from engine.cml import CallComplete, Future, Monitor
from engine.constrain import (
    CallGuard,
    TokenTable,
    call_guard,
    head_text,
    next_call_id,
    valid_tokens,
)
from engine.messages import Sampling, TaskSubmission
from engine.scheduler import Scheduler
from engine.tools import ToolSpec
from engine.valuerules import ANY, ValueRule, value_rule
from tests.helpers import Clock, run_until_idle
from tests.scripted import PROMPT_BASE, STOP, VOCAB, ScriptedBackend, ScriptedSequence
from tests.unit.test_scheduler_calls import F, G, make

CD = ToolSpec("e1.cd", "changes directory", {"type": "object", "properties": {"folder": {"type": "string"},
                                                                             "class": {"type": "string"}}})
H = ToolSpec("h", "takes anything", {"type": "object", "properties": {"v": {}}, "required": ["v"]})
T = ToolSpec("t", "typed", {"type": "object", "properties": {
    "s": {"type": "string"}, "i": {"type": "integer"}, "n": {"type": "number"}, "b": {"type": "boolean"},
    "o": {"type": ["string", "null"]}, "l": {"type": "array", "items": {"type": "integer"}},
    "d": {"type": "object"}, "e": {"type": "string", "enum": ["red", "dark blue"]}, "k": {"const": 3}}})
ALL = CallGrammar([F, G, CD, H, T])


def body_ok(text: str, futures=("c1",)) -> bool:
    body = CallBody(ALL, futures)
    return body.feed(text) and body.done


@pytest.mark.parametrize("text", [
    " f(a=1) [END]",
    "f(a=1)[END]",
    " f(a = 1) [END]",
    " g(x=1 ) [END]",
    " g() [END]",
    " e1.cd(folder='docs') [END]",
    " f(a=c1) [END]",  # a future: an earlier call's id
    " h(v=-1.5e-3) [END]",
    " f(a=" + "9" * 18 + ") [END]",  # a big int, within the range arguments may have
    " h(v=[1, [2, (3,)], {'k': {\"z\": None}}, (), {}, True, False]) [END]",
    " h(v='it\\'s \\\\ \\n \\x41 \\u00e9 日本 [EN') [END]",
    " f(a=1)  [END]",
    # values of the kinds their schema declares
    " t(s='x', i=-3, n=2.5, b=True, o=None, l=[1, 2], d={'k': [1.5]}, e='red', k=3) [END]",
    " t(n=2, o='x', l=(), e=\"dark blue\") [END]",  # an int is a number; a tuple is an array
    " t(l=(3,)) [END]", " t(l=(1, 2)) [END]",
    " t(s=c1, l=c1) [END]",  # a future stands for a value of any kind
])
def test_it_accepts_well_formed_bodies(text):
    assert body_ok(text)


@pytest.mark.parametrize("text", [
    " nope(a=1) [END]",  # unknown tool
    " f(z=1) [END]",  # unknown argument
    " f(a=1, a=2) [END]",  # repeated argument
    " f() [END]",  # `a` is required
    " h(v={1, 2}) [END]",  # a set
    " h(v=b'x') [END]",  # bytes
    " h(v=1j) [END]",  # complex
    " h(v=1e999) [END]",  # overflows to inf
    " f(a=" + "9" * 400 + ") [END]",  # beyond 2**63: refused at [END] (engine/cml.py), so never written
    " h(v='\\0') [END]",  # a NUL character
    " f(a=007) [END]",
    " f(a=c2) [END]",  # a future naming an unknown id
    " h(v=[c1]) [END]",  # a future inside a literal cannot be evaluated
    " h(v='x [END]') [END]",  # the monitor would end the block inside the string
    " h(v='a\nb') [END]",
    " h(v='\\q') [END]",
    " f(a=1,) [END]",
    " h(v=(,)) [END]",
    " e1.cd(class='x') [END]",  # a keyword cannot be an argument name
    " f(1) [END]",  # keywords only
    " f(a=1)   [END]",  # too many blanks
    # a value of a kind its schema does not allow
    " f(a='1') [END]", " t(i=1.5) [END]", " t(i=1e3) [END]", " t(s=1) [END]", " t(s=None) [END]",
    " t(b=1) [END]", " t(n=True) [END]", " t(o=1) [END]", " t(l=[1, 'a']) [END]", " t(l=[1.5]) [END]",
    " t(l={'a': 1}) [END]", " t(d=[1]) [END]", " t(e='blue') [END]", " t(e='re') [END]", " t(e=red) [END]",
    " t(e='red ') [END]", " t(k=4) [END]", " t(k=3.0) [END]",
    " t(l=(3)) [END]", " h(v=(3)) [END]",  # brackets around a value make no tuple
])
def test_it_rejects_malformed_bodies(text):
    assert not body_ok(text)


def test_it_allows_a_comma_only_while_an_argument_is_left():
    body = CallBody(ALL)
    assert body.feed(" e1.cd(folder='x'") and not body.accepts(",")  # `class` is no argument name
    assert body.accepts(")") and not body.accepts("")


def test_it_never_builds_a_body_the_monitor_cannot_parse():
    """Random walks through the automaton: every finished body parses to a call of a known tool."""
    alphabet = list("slD ()[]{}'\",:=-.0123456789eEjxTFNabcdfolderunk1_\\é") + [
        "[END]", "True", "c1", "e1.cd", "f(", "h(v=", "t(", "i=", "n=", "l=", "e=", "red", "dark blue"]
    finished = 0
    for seed in range(300):
        rnd, body, text = random.Random(seed), CallBody(ALL, ["c1"]), ""
        while not body.done and len(text) < 200:
            options = [c for c in alphabet if body.accepts(c)]
            assert options, f"no way on from {text!r}"
            closing = [c for c in options if c in ")]}'\"[" or c == "[END]"]
            c = rnd.choice(closing if len(text) > 40 and closing else options)
            assert body.feed(c)
            text += c
        if body.done:
            finished += 1
            (call,) = [e for e in Monitor().feed(f"[CALL]{head_text('c2')}{text}") if isinstance(e, CallComplete)]
            assert call.name in ("f", "g", "e1.cd", "h", "t") and not call.positional, text
            props = {"f": F, "g": G, "e1.cd": CD, "h": H, "t": T}[call.name].parameters["properties"]
            for key, value in call.keywords.items():
                if not isinstance(value, Future):  # a future's value comes later
                    jsonschema.validate(json.loads(json.dumps(value)), props[key])  # the value as a tool gets it
    assert finished > 200


def test_it_takes_values_of_any_kind_from_an_untyped_grammar():
    body = CallBody(CallGrammar([F], typed=False))
    assert body.feed(" f(a='1') [END]") and body.done  # `a` is an integer: only the typed grammar refuses it


def test_it_reads_only_the_schema_keywords_it_can_enforce():
    assert value_rule({"anyOf": [{"type": "string"}, {"type": "integer"}]}) == ANY
    assert value_rule({"type": "decimal"}) == ANY and value_rule({"type": []}) == ANY
    assert value_rule({"type": "array", "items": {"type": "integer"}}).element.kinds == {"int"}
    # enum values that are no plain literal, or would spell a marker, leave only the type
    assert value_rule({"type": "array", "enum": [[1], [2]]}) == ValueRule(frozenset({"list"}))
    assert value_rule({"type": "string", "enum": ["a", "x [END] y"]}).literals == ()
    assert value_rule({"enum": ["it's", 2, None]}).literals == ('"it\'s"', "2", "None")


def test_it_searches_past_the_best_candidates_and_drops_negligible_ones():
    backend = ScriptedBackend([])
    table = TokenTable(backend.vocab_texts(), backend.stop_ids())
    body = CallBody(CallGrammar([F]))
    assert body.feed(" f(a=")
    logits = np.full(VOCAB, -50.0, dtype=np.float32)
    char = {c: PROMPT_BASE + ord(c) for c in "789"}
    logits[PROMPT_BASE + 0x4E00:PROMPT_BASE + 0x4E00 + 100] = 10.0  # 100 CJK characters: no value starts so
    logits[char["7"]], logits[char["8"]], logits[char["9"]] = 5.0, 4.0, -30.0
    assert valid_tokens(body, table, logits, temperature=0.0) == [char["7"]]
    assert valid_tokens(body, table, logits, temperature=1.0) == [char["7"], char["8"]]  # 9 is 35 below


def test_it_takes_the_smallest_free_call_id():
    assert next_call_id([]) == "c1"
    assert next_call_id(["c1", "c2", "c4", "a"]) == "c3"
    assert head_text("c3") == " c3 [HEAD]"


# -- through the scheduler ---------------------------------------------------------------------
class PreferringBackend(ScriptedBackend):
    """A scripted model with preferences: each step lists pieces, best first (logits 10, 9, ...).
    Whichever of them is taken, the script moves on; the engine's own tokens do not move it."""

    constrained_calls = True

    def __init__(self, steps):
        self.steps = [(s,) if isinstance(s, str) else tuple(s) for s in steps]
        super().__init__([p.encode() for alts in self.steps for p in alts])
        self.first = np.cumsum([0] + [len(alts) for alts in self.steps]) + 1

    def open_sequence(self, prompt_ids=()):
        return PreferringSequence(self)


class PreferringSequence(ScriptedSequence):
    def logits(self):
        k = self.generated()
        out = np.full(VOCAB, -30.0, dtype=np.float32)  # far below: sampling with a temperature keeps to the script
        if k >= len(self.backend.steps):
            out[STOP] = 10.0
            return out
        for j in range(len(self.backend.steps[k])):
            out[self.backend.first[k] + j] = 10.0 - j
        return out


def run_script(steps, *, constrained=True, temperature=0.0, seed=0):
    backend = PreferringBackend(steps)
    backend.constrained_calls = constrained
    scheduler = Scheduler(lambda name: backend, clock=Clock(), wall=lambda: 1000.0)
    events = scheduler.submit(TaskSubmission(1, "scripted", "go", 200, 1000.0, tools=[F.to_dict(), G.to_dict()],
                                             sampling=Sampling(temperature=temperature, seed=seed)))
    return scheduler, events + run_until_idle(scheduler)


def decoded(events):
    return [(e.payload["call_id"], e.payload["name"], e.payload["args"]) for e in events if e.kind == "call_decoded"]


def final_text(scheduler, events):
    return "".join(e.payload["text"] for e in events if e.kind in ("token", "interrupt_injected"))


REUSING = ["[CALL]", (" c1 [HEAD] f(a=1) [END]", " f(a=1) [END]"),
           " [CALL]", (" c1 [HEAD] g(x=2) [END]", " g(x=2) [END]")]


def test_it_writes_a_fresh_call_id_when_the_model_would_reuse_one():
    scheduler, events = run_script(REUSING)
    assert decoded(events) == [("c1", "f", {"a": 1}), ("c2", "g", {"x": 2})]
    assert not [e for e in events if e.kind in ("call_error", "malformed")]
    assert "[CALL] c1 [HEAD] f(a=1) [END] [CALL] c2 [HEAD] g(x=2) [END]" in final_text(scheduler, events)
    # The same model unconstrained reuses the id, and the second call is refused.
    _, events = run_script(REUSING, constrained=False)
    assert "duplicate call id 'c1'" in next(e for e in events if e.kind == "call_error").payload["error"]


def test_it_masks_an_unknown_function_name_to_a_valid_one():
    steps = ["[CALL]", (" nope(", " f("), "a=1) [END]"]
    scheduler, events = run_script(steps)
    assert decoded(events) == [("c1", "f", {"a": 1})]
    assert [r.tool["name"] for r in scheduler.take_dispatches()] == ["f"]
    _, events = run_script(steps, constrained=False)
    assert "unknown function 'nope'" in next(e for e in events if e.kind == "call_error").payload["error"]


def test_it_masks_a_value_of_a_kind_the_schema_refuses_to_one_it_takes():
    steps = ["[CALL]", " g(x=", ("'2'", "2.0", "2"), ") [END]"]  # x is an integer
    scheduler, events = run_script(steps)
    assert decoded(events) == [("c1", "g", {"x": 2})]
    _, events = run_script(steps, constrained=False)
    assert "invalid arguments for g: x: '2' is not of type 'integer'" in next(
        e for e in events if e.kind == "call_error").payload["error"]


def test_it_samples_only_among_valid_tokens_with_a_temperature():
    for seed in range(5):
        _, events = run_script(["[CALL]", (" nope(", " f("), ("a=1, a=2) [END]", "a=3) [END]")], temperature=1.0,
                               seed=seed)
        assert decoded(events) == [("c1", "f", {"a": 3})], seed


def test_it_keeps_the_model_from_writing_past_the_call_marker():
    """`[CALL` is held by the monitor; a token `] c` would write the id itself, so it gets no
    probability and the engine writes the id after a bare `]`."""
    scheduler, events = run_script(["[CALL", ("] c", "]"), " f(a=1) [END]"])
    assert decoded(events) == [("c1", "f", {"a": 1})]
    assert "[CALL] c1 [HEAD] f(a=1) [END]" in final_text(scheduler, events)


def guard_for(backend):
    return CallGuard(CallGrammar([F, G]), TokenTable(backend.vocab_texts(), backend.stop_ids()), backend.tokenize)


def test_it_completes_an_id_the_token_after_the_marker_already_began():
    backend = ScriptedBackend([b"x"])
    guard = guard_for(backend)
    forced = guard.observe("[CALL] c", Monitor().feed("[CALL] c"), {})
    assert "".join(backend.token_bytes(i).decode() for i in forced) == "1 [HEAD]"
    # An id of the model's own that is not ours: the block goes unconstrained, the scheduler judges it.
    guard = guard_for(backend)
    assert guard.observe("[CALL] zz", Monitor().feed("[CALL] zz"), {}) == [] and guard.phase == "free"


def test_it_leaves_backends_without_the_flag_and_teacher_forced_runs_unconstrained():
    assert call_guard(ScriptedBackend([]), {"f": F}) is None
    assert call_guard(PreferringBackend([]), {}) is None
    backend = PreferringBackend(["[CALL]"])
    scheduler = Scheduler(lambda name: backend, clock=Clock())
    scheduler.submit(TaskSubmission(1, "scripted", "go", 20, 0.0, tools=[F.to_dict()], forced_text="[CALL] zz"))
    assert scheduler.task(1).guard is None


def test_it_does_not_change_the_scripted_backend():
    scheduler, events, *_ = make(["[CALL] a [HEAD] f(a=1) [END]", " x"])
    assert scheduler.task(1).guard is None
    run_until_idle(scheduler)
    assert [r.call_id for r in scheduler.take_dispatches()] == ["a"]


# -- the real embedded model -------------------------------------------------------------------
WEATHER = ToolSpec("get_weather", "Current weather of a city",
                   {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
TIME = ToolSpec("get_time", "Local time in a city",
                {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
QUESTION = "What is the weather and the local time in Paris, in Rome and in Oslo?"


def load(name: str):
    from engine.backends.llamacpp import LlamaCppBackend
    from engine.catalog import get_model
    from engine.modelfiles import verified_path

    spec = get_model(name)
    return LlamaCppBackend(spec, verified_path(spec, settings.ASYNCLM_MODEL_DIR), n_ctx=2048)


class Eager(DelegatingBackend):
    """The real model, pushed to open a call block whenever it is outside one (the fast test
    model never calls on its own). What follows `[CALL]` is the engine's id and the model's body."""

    def __init__(self, backend):
        super().__init__(backend)
        self.opener = backend.tokenize("[CALL]")

    def open_sequence(self, prompt_ids=()):
        return EagerSequence(self, self.real.open_sequence(prompt_ids))


class EagerSequence(Sequence):
    def __init__(self, eager, seq):
        self._eager, self._seq = eager, seq
        self._ids: list[int] = []
        self._monitor = Monitor()

    @property
    def n_tokens(self):
        return self._seq.n_tokens

    def truncate(self, n_tokens):
        self._seq.truncate(n_tokens)

    def close(self):
        self._seq.close()

    def append(self, ids):
        self._seq.append(ids)
        self._ids += ids
        self._monitor.feed(b"".join(self._eager.token_bytes(i) for i in ids).decode(errors="replace"))

    def logits(self):
        logits = self._seq.logits()
        if not self._monitor.in_block:
            opener = self._eager.opener
            done = next(k for k in range(len(opener) - 1, -1, -1) if k == 0 or self._ids[-k:] == opener[:k])
            logits[opener[done]] += 100.0
        return logits


def calls_of_real_model(backend, runs, max_tokens=120):
    """Run the question through the scheduler; every result arrives at once. Per run: its events."""
    out = []
    for seed, temperature in runs:
        scheduler = Scheduler(lambda name: backend)
        scheduler.submit(TaskSubmission(seed, backend.spec.name, QUESTION, max_tokens, 0.0, mode="async",
                                        tools=[WEATHER.to_dict(), TIME.to_dict()],
                                        sampling=Sampling(temperature=temperature, seed=seed)))
        events = []
        while scheduler.has_work():
            events += scheduler.step()
            for request in scheduler.take_dispatches():
                events += scheduler.deliver(seed, request.call_id, ok=True, value={"ok": 1})
        assert scheduler.task(seed) is None  # finished: no call left waiting
        out.append(events)
    return out


def assert_blocks_parse_with_fresh_ids(events) -> int:
    assert not [e for e in events if e.kind == "malformed"]
    # Every value is of the kind its schema asks for: the schema check refuses none.
    errors = [e.payload["error"] for e in events if e.kind == "call_error"]
    assert not errors
    ids = [e.payload["call_id"] for e in events if e.kind == "call_decoded"]
    assert ids == [f"c{n}" for n in range(1, len(ids) + 1)]
    assert {e.payload["name"] for e in events if e.kind == "call_decoded"} <= {"get_weather", "get_time"}
    return len(ids) + len(errors)


def test_it_makes_every_call_block_of_the_real_model_parse_with_fresh_ids():
    backend = Eager(load(settings.ASYNCLM_TEST_MODEL))
    runs = calls_of_real_model(backend, [(0, 0.0), (1, 0.9)], max_tokens=60)
    assert all(assert_blocks_parse_with_fresh_ids(events) >= 2 for events in runs)


@pytest.mark.slow
def test_it_keeps_the_default_models_own_calls_well_formed():
    (events,) = calls_of_real_model(load("qwen2.5-coder-0.5b"), [(1, 0.9)])
    assert assert_blocks_parse_with_fresh_ids(events) >= 2
