"""`python manage.py bench`: the paper's latency experiment on BFCL through the running system."""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from engine.backends.base import BackendError
from engine.catalog import MODELS, UnknownModel, get_model
from engine.modelfiles import ModelFileError
from webapp.bench.agents import KS
from webapp.bench.agents_command import parse_ks, run_agents
from webapp.bench.goals import accuracy_goals
from webapp.bench.plot import plot
from webapp.bench.provenance import git_commit
from webapp.bench.report import markdown, overhead, profile_of, summarize
from webapp.bench.runner import BENCH_REDIS_DB, BenchError, Services, Setup, measure, run_scenario
from webapp.bench.scenarios import (
    ALL_DATASETS,
    DATASETS,
    DEFAULT_PROFILE,
    HUMAN_MESSAGE,
    MULTISTEP,
    PROFILE_TEXT,
    PROFILES,
    SINGLE_TURN,
    Scenario,
    heldout_ids,
    scenarios,
    unusable,
)
from webapp.runs.models import Task

MODES = ("sync", "sync_parallel", "async")
DECODERS = ("simulated", "embedded")
FILES = ("bench.json", "bench.md", "bench.png", "scenarios.jsonl")


def _csv(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in allowed]
    if unknown or not items:
        raise CommandError(f"unknown {what}: {', '.join(unknown) or '(none)'}; choose from {', '.join(allowed)}")
    return items


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("--datasets", default=",".join(DATASETS),
                            help=f"comma-separated, of {', '.join(ALL_DATASETS)} (default the BFCL ones); "
                                 f"{HUMAN_MESSAGE}: demo-pack questions with a person's message mid-task "
                                 "(embedded decoder only)")
        parser.add_argument("--modes", default=",".join(MODES))
        parser.add_argument("--decoder", default="simulated", choices=DECODERS)
        parser.add_argument("--model", default=None,
                            help=f"embedded decoder: the catalog's model (default {settings.ASYNCLM_DEFAULT_MODEL})")
        parser.add_argument("--no-cheat-sheet", dest="cheat_sheet", action="store_false",
                            help="embedded decoder: give the model the question only (for accuracy)")
        parser.add_argument("--max-tokens", type=int, default=None,
                            help="per task (default 20000 simulated, 160 embedded: the cheat sheet's calls "
                                 "take 20-120 tokens; a model that loops is cut there, and counted)")
        parser.add_argument("--heldout", action=argparse.BooleanOptionalAction, default=None,
                            help="BFCL scenarios only from the entries the adaptation step held out "
                                 "(finetune/heldout.json; --limit then counts held-out scenarios; datasets it "
                                 "never trained on, live_*, keep every entry). Default: on for --decoder embedded "
                                 "(a tuned model must not be measured on its training data), off for the simulated "
                                 "decoder (which only replays the ground truth) unless given")
        parser.add_argument("--latency-profile", dest="profile", default=DEFAULT_PROFILE, choices=tuple(PROFILES),
                            help="tool latencies: " + "; ".join(f"{k}: {v}" for k, v in PROFILE_TEXT.items()) +
                                 f" (default {DEFAULT_PROFILE})")
        parser.add_argument("--token-ms", type=float, default=10.0, help="simulated decoder: ms per generated token")
        parser.add_argument("--inject-ms", type=float, default=None,
                            help="simulated decoder: ms per injected token (default a tenth of --token-ms)")
        parser.add_argument("--limit", type=int, default=None,
                            help="scenarios per dataset (default 20), or per k with --agents (default 3)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--concurrency", type=int, default=1,
                            help="scenarios run at once (1: one after another; concurrent runs on 2 cores distort "
                                 "each other's latencies)")
        parser.add_argument("--agents", action="store_true",
                            help="the sub-agent benchmark instead of BFCL: an orchestrator delegates k "
                                 "sub-questions to a sub-agent tool (report under --out/agents)")
        parser.add_argument("--ks", default=",".join(map(str, KS)),
                            help="--agents: the numbers of sub-questions (default %(default)s)")
        parser.add_argument("--engines", type=int, default=None,
                            help="--agents: engine processes (default: one per agent, the parent and its largest "
                                 "k children)")
        parser.add_argument("--out", default=str(settings.ASYNCLM_BENCH_DIR))
        parser.add_argument("--redis-db", type=int, default=BENCH_REDIS_DB,
                            help=f"the Redis database the benchmark's engine and worker use, emptied at the start "
                                 f"(default {BENCH_REDIS_DB}; never 0). Two runs at once need two databases; a run "
                                 "refuses a database where another one's engine or worker is alive")
        parser.add_argument("--append", action="store_true",
                            help="add to the results already in --out (another decoder, dataset or latency profile) "
                                 "instead of replacing them; rows of the same decoder, dataset, mode and latency "
                                 "profile are replaced")
        parser.add_argument("--remeasure", action="store_true",
                            help="run nothing: recompute every row in --out from its task's stored trace with "
                                 "the current code (bounds, checker) and rewrite the report")

    def handle(self, *args, **opts):
        if opts["remeasure"]:
            return self._remeasure(Path(opts["out"]))
        datasets, modes = _csv(opts["datasets"], ALL_DATASETS, "datasets"), _csv(opts["modes"], MODES, "modes")
        opts["limit"] = opts["limit"] if opts["limit"] is not None else 3 if opts["agents"] else 20
        if opts["concurrency"] < 1 or opts["limit"] < 1:
            raise CommandError("--concurrency and --limit must be at least 1")
        if not 1 <= opts["redis_db"] <= 15:
            raise CommandError("--redis-db must be 1-15 (the benchmark empties it; never database 0)")
        setup = self._setup(opts)
        if opts["agents"]:
            return self._agents(setup, modes, opts)
        if HUMAN_MESSAGE in datasets and setup.decoder != "embedded":
            raise CommandError(f"{HUMAN_MESSAGE} needs a real model (--decoder embedded): the simulated decoder "
                               "follows a fixed plan and cannot take up a message")
        out_dir = Path(opts["out"])
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            work = [s for d in datasets for s in scenarios(d, setup.seed, opts["limit"], heldout=setup.heldout,
                                                           profile=setup.profile)]
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if not work:
            raise CommandError("no scenarios: check --datasets and --limit")
        part = {"decoder": setup.decoder, "label": setup.label, "model": setup.model, "datasets": datasets,
                "modes": modes, "limit": opts["limit"], "cheat_sheet": setup.cheat_sheet,
                "profile": setup.profile, "heldout": setup.heldout, "split": _split(datasets, setup.heldout),
                "token_ms": setup.token_ms if setup.decoder == "simulated" else None,
                "inject_ms": setup.inject_ms if setup.decoder == "simulated" else None,
                "max_tokens": setup.max_tokens, "concurrency": opts["concurrency"],
                "left_out": {d: unusable(d) for d in datasets if d in SINGLE_TURN and unusable(d)}}
        previous_rows, previous_parts = self._previous(out_dir, setup, datasets, modes) if opts["append"] \
            else ([], [])
        started = time.monotonic()
        if setup.decoder == "embedded":
            # Before the engine starts, so nothing shares the CPU with it.
            from webapp.bench.standalone import ms_per_token

            self.stdout.write(f"{setup.model}: standalone decode rate (plain llama-cpp-python, no engine)")
            try:
                setup = dataclasses.replace(setup, standalone_ms_per_token=ms_per_token(setup.model))
            except (ModelFileError, BackendError) as exc:
                raise CommandError(f"cannot load {setup.model}: {exc}") from exc
            self.stdout.write(f"  {setup.standalone_ms_per_token} ms/token")
            part["standalone_ms_per_token"] = setup.standalone_ms_per_token
        rows = self._run(setup, work, modes, out_dir, opts["concurrency"], previous_rows, opts["redis_db"])
        part["seconds"] = round(time.monotonic() - started)
        params = {"seed": setup.seed, "concurrency": opts["concurrency"],
                  "latency_model": "per part: " + "; ".join(f"{k}: {v}" for k, v in PROFILE_TEXT.items()) +
                                   ", seeded per (seed, scenario, call)",
                  "latency_profiles": PROFILES,
                  "machine": platform.node(), "git_commit": git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "parts": [*previous_parts, part]}
        self._write(out_dir, params, rows, f"in {part['seconds']} s")

    def _agents(self, setup: Setup, modes: list[str], opts: dict[str, Any]) -> None:
        if opts["engines"] is not None and not 1 <= opts["engines"] <= 16:
            raise CommandError("--engines must be from 1 to 16")
        try:
            ks = parse_ks(opts["ks"])
            report = run_agents(setup, modes, ks, opts["limit"], opts["engines"], Path(opts["out"]) / "agents",
                                opts["append"], git_commit(), self.stdout.write, redis_db=opts["redis_db"])
        except (ValueError, BenchError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(report)
        self.stdout.write(self.style.SUCCESS(f"saved {Path(opts['out']) / 'agents'}/agents.json, agents.md, "
                                             "agents.jsonl"))

    def _write(self, out_dir: Path, params: dict[str, Any], rows: list[dict[str, Any]], how: str) -> None:
        params["decoder"] = " + ".join(dict.fromkeys(p["label"] for p in params["parts"]))
        params["profiles"] = list(dict.fromkeys(p.get("profile") or DEFAULT_PROFILE for p in params["parts"]))
        params["heldout"] = {f"{p['label']}; {p.get('profile') or DEFAULT_PROFILE}": p.get("heldout")
                             for p in params["parts"]}
        # The model's own decode rate (no engine), per model: the second bound's token time.
        params["standalone_ms_per_token"] = {p["model"]: p["standalone_ms_per_token"] for p in params["parts"]
                                             if p.get("standalone_ms_per_token")}
        results = summarize(rows)
        costs = overhead(rows, results)
        goals = accuracy_goals(results, {name: spec.base for name, spec in MODELS.items() if spec.base})
        with (out_dir / "scenarios.jsonl.partial").open("w") as lines:
            lines.writelines(json.dumps(row) + "\n" for row in rows)
        (out_dir / "scenarios.jsonl.partial").replace(out_dir / "scenarios.jsonl")
        (out_dir / "bench.json").write_text(json.dumps({"params": params, "results": results, "overhead": costs,
                                                        "goals": goals}, indent=2))
        (out_dir / "bench.md").write_text(markdown(params, results, costs, goals))
        plot(params, results, out_dir / "bench.png")
        # Every run is also kept under runs/, which the dashboard's benchmark page lists.
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{params['git_commit']}"
        archive = next(out_dir / "runs" / f"{stamp}{suffix}" for suffix in ("", *"bcdefghij")
                       if not (out_dir / "runs" / f"{stamp}{suffix}").exists())
        archive.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            shutil.copy2(out_dir / name, archive / name)
        self.stdout.write(markdown(params, results, costs, goals))
        self.stdout.write(self.style.SUCCESS(f"saved {out_dir}/bench.json, bench.md, bench.png, scenarios.jsonl "
                                             f"(and a copy in {archive}) {how}"))

    def _remeasure(self, out_dir: Path) -> None:
        rows, params = self._load(out_dir)
        setups = {(p["label"], p.get("profile") or DEFAULT_PROFILE): Setup(
            p["decoder"], p["model"], seed=params["seed"], token_ms=p["token_ms"] or 0.0,
            inject_ms=p["inject_ms"] or 0.0, cheat_sheet=p["cheat_sheet"], profile=p.get("profile") or DEFAULT_PROFILE,
            heldout=bool(p.get("heldout")), standalone_ms_per_token=p.get("standalone_ms_per_token"))
            for p in params["parts"]}
        found: dict[tuple[str, str, bool, str], Scenario] = {}
        fresh = []
        for row in rows:
            profile = profile_of(row)
            setup = setups[(row.get("label", row["decoder"]), profile)]
            # Held-out multistep scenarios join other entries than those drawn from all of them.
            heldout = bool(row.get("heldout", setup.heldout))
            key = (row["dataset"], profile, heldout, row["scenario"])
            if key not in found:
                if row["dataset"] == HUMAN_MESSAGE:
                    from webapp.bench.human import human_scenario, scenario_index

                    found[key] = human_scenario(scenario_index(row["scenario"]), params["seed"], profile)
                else:
                    found.update({(s.dataset, profile, heldout, s.id): s for s in scenarios(
                        row["dataset"], params["seed"], heldout=heldout, profile=profile)})
            task = Task.objects.filter(pk=row["task_id"]).first()
            if task is None:
                raise CommandError(f"task {row['task_id']} of {row['scenario']} is gone: cannot remeasure")
            fresh.append(measure(task, found[key], row["mode"], dataclasses.replace(setup, heldout=heldout)))
        params["remeasured"] = {"git_commit": git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self._write(out_dir, params, fresh, f"(remeasured {len(fresh)} rows from their traces)")

    def _load(self, out_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        try:
            lines = (out_dir / "scenarios.jsonl").read_text().splitlines()
            params = json.loads((out_dir / "bench.json").read_text())["params"]
            params["parts"]  # noqa: B018 - a run from before parts existed cannot be added to
        except (OSError, ValueError, KeyError) as exc:
            raise CommandError(f"no earlier run in {out_dir} to use ({exc})") from exc
        return [json.loads(line) for line in lines if line.strip()], params

    def _setup(self, opts: dict[str, Any]) -> Setup:
        decoder = opts["decoder"]
        if decoder == "simulated" and (opts["model"] or not opts["cheat_sheet"]):
            raise CommandError("--model and --no-cheat-sheet are for --decoder embedded")
        model = "simulated" if decoder == "simulated" else (opts["model"] or settings.ASYNCLM_DEFAULT_MODEL)
        try:
            spec = get_model(model)
        except UnknownModel as exc:
            raise CommandError(str(exc)) from exc
        if decoder == "embedded" and spec.backend == "simulated":
            raise CommandError("--decoder embedded needs a real model, not the simulated one")
        if opts["token_ms"] <= 0:
            raise CommandError("--token-ms must be positive")
        inject_ms = opts["token_ms"] / 10 if opts["inject_ms"] is None else opts["inject_ms"]
        max_tokens = opts["max_tokens"] or (20000 if decoder == "simulated" else 160)
        heldout = opts["heldout"] if opts["heldout"] is not None else decoder == "embedded"
        return Setup(decoder, model, seed=opts["seed"], token_ms=opts["token_ms"], inject_ms=inject_ms,
                     cheat_sheet=opts["cheat_sheet"], max_tokens=max_tokens, profile=opts["profile"], heldout=heldout)

    def _previous(self, out_dir: Path, setup: Setup, datasets: list[str], modes: list[str]) -> tuple[list, list]:
        """The rows and parts already in --out that this run does not replace: rows of the same
        decoder setup, latency profile, dataset and mode are replaced; a part stays while any of
        its rows does."""
        rows, params = self._load(out_dir)
        return previous(rows, params["parts"], setup.label, setup.profile, datasets, modes)

    def _run(self, setup: Setup, work: list[Scenario], modes: list[str], out_dir: Path, concurrency: int,
             previous_rows: list[dict[str, Any]], redis_db: int = BENCH_REDIS_DB) -> list[dict[str, Any]]:
        total = len(work) * len(modes)
        started = time.monotonic()
        services = Services(out_dir, model=setup.model, redis_db=redis_db)
        rows = list(previous_rows)
        lock = threading.Lock()
        try:
            services.start(self.stdout.write)
            # The first task of a fresh engine and worker pays for warming up: not measured.
            self.stdout.write(f"{setup.label}: warming up (not measured)")
            run_scenario(services, work[0], modes[0], setup)
            # Rows go to a side file as they come (an interrupted run leaves the last report whole).
            with (out_dir / "scenarios.jsonl.partial").open("w") as lines:
                for row in previous_rows:
                    lines.write(json.dumps(row) + "\n")

                def one(item: tuple[Scenario, str]) -> None:
                    scenario, mode = item
                    try:
                        row = run_scenario(services, scenario, mode, setup)
                    finally:
                        if threading.current_thread() is not threading.main_thread():
                            connections.close_all()  # the pool thread's own connection
                    with lock:
                        rows.append(row)
                        lines.write(json.dumps(row) + "\n")
                        lines.flush()
                        done = len(rows) - len(previous_rows)
                        self.stdout.write(_progress(row, done, total, time.monotonic() - started))
                        self.stdout.flush()

                items = [(s, m) for s in work for m in modes]
                if concurrency == 1:
                    for item in items:
                        one(item)
                else:
                    with ThreadPoolExecutor(concurrency) as pool:
                        list(pool.map(one, items))
        except BenchError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            services.stop()
        return rows


def previous(rows: list[dict[str, Any]], parts: list[dict[str, Any]], label: str, profile: str,
             datasets: list[str], modes: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    kept = [r for r in rows if not (r.get("label", r["decoder"]) == label and profile_of(r) == profile
                                    and r["dataset"] in datasets and r["mode"] in modes)]

    def alive(part: dict[str, Any]) -> bool:
        return any(r.get("label", r["decoder"]) == part["label"] and profile_of(r) == profile_of(part)
                   and r["dataset"] in part["datasets"] and r["mode"] in part["modes"] for r in kept)

    return kept, [p for p in parts if alive(p)]


def _split(datasets: list[str], heldout: bool) -> dict[str, Any]:
    """Which entries the scenarios come from, as bench.json and the report state it."""
    if not heldout:
        return {"heldout": False}
    from finetune.split import HELDOUT_FILE
    from webapp.tools.bfcl import dataset

    doc = json.loads(HELDOUT_FILE.read_text(encoding="utf-8")) if HELDOUT_FILE.exists() else {}
    found: dict[str, str] = {}
    for name in datasets:
        if name == HUMAN_MESSAGE:
            found[name] = "held-out cities and ticker symbols (finetune/plans.py)"
            continue
        ids = heldout_ids(name)
        source = "multi_turn_base" if name == MULTISTEP else name
        found[name] = (f"all {len(dataset(source))} entries (not used in training)" if ids is None else
                       f"{len(ids)} held-out of {len(dataset(source))} entries"
                       + (f" of {source}" if source != name else ""))
    return {"heldout": True, "file": str(HELDOUT_FILE.relative_to(settings.BASE_DIR)),
            "digest": doc.get("digest", ""), "seed": doc.get("seed", ""), "datasets": found}


def _progress(row: dict[str, Any], done: int, total: int, seconds: float) -> str:
    line = (f"[{done}/{total}, {seconds:.0f} s] {row['scenario']} {row['mode']}: {row['latency_ms']} ms "
            f"(bound {row['bound_ms']}), {row['tokens']} tokens, checker "
            f"{'accepted' if row['checker']['valid'] else 'not accepted'}")
    if row["errors"]:
        line += " ERRORS: " + "; ".join(row["errors"])[:200]
    if row["model_errors"]:
        line += " model mistakes: " + "; ".join(row["model_errors"])[:160]
    if "message" in row:
        m = row["message"]
        line += (f"; message {'taken at ' + str(m['sent_ms']) + ' ms' if m['delivered'] else 'not taken'}, extra call "
                 f"{'made' if m['extra_call_made'] else 'not made'}")
    return line

