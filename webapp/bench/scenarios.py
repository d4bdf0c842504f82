"""Benchmark scenarios from the installed bfcl-eval package (the paper's latency experiment).

A scenario is a question, the tools the model gets, and the ground-truth calls it should make,
each with a tool latency drawn from a latency profile (`paper`: the paper's distribution; `web`:
web-API calls) by a generator seeded with (run seed, scenario, call index): every mode faces
exactly the same latencies.

- `parallel`, `parallel_multiple`, `live_parallel`, `live_parallel_multiple`: one BFCL entry; the
  first acceptable value of each ground-truth argument (an empty string marks an optional argument
  that may be left out);
- `multistep_parallel` (the paper's multi-step parallel set): the first-turn ground truth of 3
  `multi_turn_base` entries drawn with the run seed, run against BFCL's stateful classes with
  one instance per (entry, class); tools are namespaced per entry (`e1.cd`, `e2.cd`); calls of one
  entry depend on each other through state, so call k+1 of an entry needs call k's result.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from engine.cml import parse_call
from engine.tools import ToolSpec
from webapp.tools.bfcl import PAPER_LATENCY_MS, class_functions, data_dir, dataset, doc_tool, question
from workers.executors.simulated import draw_latency_ms

SINGLE_TURN = ("parallel", "parallel_multiple", "live_parallel", "live_parallel_multiple")
MULTISTEP = "multistep_parallel"
DATASETS = (*SINGLE_TURN, MULTISTEP)
HUMAN_MESSAGE = "human_message"
ALL_DATASETS = (*DATASETS, HUMAN_MESSAGE)
ENTRIES_PER_MULTISTEP = 3

# Tool-latency profiles: the paper's (30-500 ms, mean 110) and web-API calls (200 ms - 5 s, mean 1.1 s).
WEB_LATENCY_MS = {"dist": "lognormal", "mean": 1100, "sigma": 0.8, "min": 200, "max": 5000}
PROFILES: dict[str, dict[str, Any]] = {"paper": PAPER_LATENCY_MS, "web": WEB_LATENCY_MS}
PROFILE_TEXT = {"paper": "the paper's tool latencies (lognormal, mean 110 ms, 30-500 ms)",
                "web": "web-API tool latencies (lognormal, mean 1100 ms, 200-5000 ms)"}
DEFAULT_PROFILE = "paper"


@dataclass(frozen=True)
class PlannedCall:
    index: int  # position in the scenario's ground truth
    name: str  # as the model writes it (namespaced in multistep scenarios)
    args: dict[str, Any]
    latency_ms: float
    after: int | None = None  # the call whose result this one needs first (same multistep entry)


@dataclass(frozen=True)
class Scenario:
    id: str
    dataset: str
    question: str
    tools: list[dict[str, Any]]  # ToolSpec dicts
    calls: list[PlannedCall]
    sources: list[str] = field(default_factory=list)  # BFCL entry ids
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)  # instance -> class, initial_config
    profile: str = DEFAULT_PROFILE  # the latency profile its calls' latencies were drawn from
    # human_message: the person's message, and the calls (indices into `calls`) it asks for.
    message: str = ""
    message_calls: tuple[int, ...] = ()

    @property
    def asked(self) -> list[PlannedCall]:
        """The calls the question asks for (all but those a person's message adds)."""
        return [c for c in self.calls if c.index not in self.message_calls]


def latency_profile(name: str) -> dict[str, Any]:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown latency profile {name!r} (one of {', '.join(PROFILES)})") from None


def draw_latencies(seed: int, scenario_id: str, n: int, profile: str = DEFAULT_PROFILE) -> list[float]:
    """Drawn from the profile's distribution, one seeded generator per call (the same generators
    for every profile: a call slow in one profile is slow in the other)."""
    spec = latency_profile(profile)
    return [round(draw_latency_ms(spec, random.Random(f"{seed}|{scenario_id}|{i}")), 3) for i in range(n)]


def heldout_ids(name: str) -> set[str] | None:
    """The entries of a BFCL dataset the adaptation step held out (finetune/heldout.json); None
    for a dataset it did not train on at all (every entry is unseen). `multistep_parallel` draws
    from `multi_turn_base`."""
    from finetune.split import DATASETS as TRAINED
    from finetune.split import HELDOUT_FILE, load_heldout

    source = "multi_turn_base" if name == MULTISTEP else name
    if source not in TRAINED:
        return None
    found = load_heldout()
    if source not in found:
        raise ValueError(f"{HELDOUT_FILE} lists no held-out entries of {source!r}: run python -m finetune.split")
    return found[source]


@cache
def answers(name: str) -> dict[str, Any]:
    path = data_dir() / "possible_answer" / f"BFCL_v4_{name}.json"
    with path.open(encoding="utf-8") as f:
        return {d["id"]: d["ground_truth"] for d in map(json.loads, f) if d}


def _first_acceptable(values: dict[str, list[Any]], known: set[str] | None = None,
                      unasked: Callable[[str, Any], bool] | None = None) -> dict[str, Any]:
    """BFCL lists the acceptable values of each argument ("" = may be left out); a dict argument
    is itself written that way, one level down. An optional argument the function's document does
    not define (BFCL's data has a few) is left out: its checker rejects it as unexpected, and so is
    one that may be left out and for which `unasked(argument, value)` says true."""
    args = {}
    for arg, acceptable in values.items():
        omittable = isinstance(acceptable, list) and "" in acceptable
        if omittable and known is not None and arg not in known:
            continue
        chosen = next((v for v in acceptable if v != ""), None) if isinstance(acceptable, list) else acceptable
        if omittable and unasked is not None and unasked(arg, chosen):
            continue
        if isinstance(chosen, dict):
            chosen = _first_acceptable(chosen)
        if chosen is not None:
            args[arg] = chosen
    return args


def single_turn(name: str, seed: int, limit: int | None = None, only: set[str] | None = None,
                profile: str = DEFAULT_PROFILE) -> list[Scenario]:
    """The dataset's first `limit` entries (of those in `only`, when given) whose ground truth fits
    the functions' own schemas (BFCL's data has a few calls that do not, e.g. a value outside the
    parameter's enum: the engine would refuse them before they run; `unusable` lists them)."""
    out = []
    for entry in dataset(name):
        if limit is not None and len(out) >= limit:
            break
        if only is not None and entry["id"] not in only:
            continue
        scenario, _ = single_turn_entry(name, entry, seed, profile)
        if scenario is not None:
            out.append(scenario)
    return out


@cache
def unusable(name: str) -> dict[str, str]:
    """Entries of a single-turn dataset left out of the benchmark, with the reason."""
    return {entry["id"]: problem for entry in dataset(name)
            if (problem := single_turn_entry(name, entry, 0)[1])}


def single_turn_entry(name: str, entry: dict[str, Any], seed: int, profile: str = DEFAULT_PROFILE,
                      *, minimal: bool = False) -> tuple[Scenario | None, str]:
    """The entry as a scenario (or None and why not). `minimal`: the ground truth's calls without
    the optional arguments that may be left out and whose value the question does not state
    (training traces: a model taught to fill every optional argument invents values for them,
    which BFCL's checker refuses)."""
    truth = answers(name)[entry["id"]]
    text = question(entry).lower()

    def stated(value: Any) -> bool:
        if isinstance(value, list | tuple):
            return bool(value) and all(map(stated, value))
        return str(value).lower() in text

    def unasked(required: set[str]) -> Callable[[str, Any], bool]:
        return lambda arg, value: arg not in required and not stated(value)

    latencies = draw_latencies(seed, entry["id"], len(truth), profile)
    tools = [ToolSpec.from_dict(doc_tool(fn, "simulated", {})) for fn in entry["function"]]
    by_name = {t.name: t for t in tools}
    params = {fn["name"]: set(fn.get("parameters", {}).get("properties", {})) for fn in entry["function"]}
    required = {fn["name"]: set(fn.get("parameters", {}).get("required", [])) for fn in entry["function"]}
    calls = []
    for i, (call, ms) in enumerate(zip(truth, latencies, strict=True)):
        (fn, values), = call.items()
        args = _first_acceptable(values, params.get(fn), unasked(required.get(fn, set())) if minimal else None)
        try:
            by_name[fn].validate(args)
        except (KeyError, ValueError) as exc:
            return None, f"ground truth call {fn}: {exc}"
        calls.append(PlannedCall(i, fn, args, ms))
    return Scenario(entry["id"], name, question(entry), [t.to_dict() for t in tools], calls, [entry["id"]],
                    profile=profile), ""


def multistep(seed: int, limit: int | None = None, only: set[str] | None = None,
              profile: str = DEFAULT_PROFILE) -> list[Scenario]:
    """Scenarios of 3 `multi_turn_base` entries each (of those in `only`, when given)."""
    entries = [e for e in dataset("multi_turn_base") if only is None or e["id"] in only]
    truths = answers("multi_turn_base")
    count = limit if limit is not None else len(entries) // ENTRIES_PER_MULTISTEP
    out = []
    for k in range(count):
        sid = f"{MULTISTEP}_{k}"
        picked = random.Random(f"{seed}|{sid}").sample(entries, ENTRIES_PER_MULTISTEP)
        tools: list[dict[str, Any]] = []
        instances: dict[str, dict[str, Any]] = {}
        planned: list[tuple[str, dict[str, Any], int | None]] = []
        questions = []
        for n, entry in enumerate(picked, start=1):
            prefix = f"e{n}"
            for cls in entry["involved_classes"]:
                instance = f"{prefix}_{cls}"
                instances[instance] = {"class": cls, "initial_config": entry["initial_config"].get(cls, {})}
                for fn in class_functions(cls):
                    config = {"class": cls, "method": fn["name"], "instance": instance,
                              "initial_config": instances[instance]["initial_config"]}
                    tools.append(ToolSpec.from_dict(doc_tool(fn, "bfcl", config, name=f"{prefix}.{fn['name']}")
                                                    ).to_dict())
            previous = None
            for text in truths[entry["id"]][0]:
                fn, positional, keywords = parse_call(text)
                spec = next(ToolSpec.from_dict(t) for t in tools if t["name"] == f"{prefix}.{fn}")
                planned.append((spec.name, spec.bind(positional, keywords), previous))
                previous = len(planned) - 1
            questions.append(f"({prefix}) {question(entry)}")
        latencies = draw_latencies(seed, sid, len(planned), profile)
        calls = [PlannedCall(i, name, args, ms, after)
                 for i, ((name, args, after), ms) in enumerate(zip(planned, latencies, strict=True))]
        out.append(Scenario(sid, MULTISTEP, " ".join(questions), tools, calls, [e["id"] for e in picked], instances,
                            profile=profile))
    return out


def scenarios(name: str, seed: int, limit: int | None = None, *, heldout: bool = False,
              profile: str = DEFAULT_PROFILE) -> list[Scenario]:
    """A dataset's scenarios; `heldout`: only from entries the adaptation step held out
    (human_message scenarios always use held-out values)."""
    latency_profile(profile)
    if name == HUMAN_MESSAGE:
        from webapp.bench.human import human_scenarios  # it imports finetune, which imports this module

        return human_scenarios(seed, limit, profile)
    only = heldout_ids(name) if heldout else None
    if name == MULTISTEP:
        return multistep(seed, limit, only, profile)
    if name in SINGLE_TURN:
        return single_turn(name, seed, limit, only, profile)
    raise ValueError(f"unknown dataset {name!r} (one of {', '.join(ALL_DATASETS)})")
