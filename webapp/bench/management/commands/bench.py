"""`python manage.py bench`: the paper's latency experiment on BFCL through the running system."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from webapp.bench.plot import plot
from webapp.bench.report import markdown, summarize
from webapp.bench.runner import BenchError, Services, run_scenario
from webapp.bench.scenarios import DATASETS, scenarios

MODES = ("sync", "sync_parallel", "async")


def _csv(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in allowed]
    if unknown or not items:
        raise CommandError(f"unknown {what}: {', '.join(unknown) or '(none)'}; choose from {', '.join(allowed)}")
    return items


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("--datasets", default=",".join(DATASETS))
        parser.add_argument("--modes", default=",".join(MODES))
        parser.add_argument("--decoder", default="simulated", choices=["simulated"],
                            help="the embedded decoder comes with a later change")
        parser.add_argument("--token-ms", type=float, default=10.0)
        parser.add_argument("--inject-ms", type=float, default=None, help="default: a tenth of --token-ms")
        parser.add_argument("--limit", type=int, default=20, help="scenarios per dataset")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--out", default=str(settings.ASYNCLM_BENCH_DIR))

    def handle(self, *args, datasets, modes, decoder, token_ms, inject_ms, limit, seed, out, **options):
        datasets, modes = _csv(datasets, DATASETS, "datasets"), _csv(modes, MODES, "modes")
        inject_ms = token_ms / 10 if inject_ms is None else inject_ms
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        work = [(d, s) for d in datasets for s in scenarios(d, seed, limit)]
        if not work:
            raise CommandError("no scenarios: check --datasets and --limit")
        total = len(work) * len(modes)
        params = {"datasets": datasets, "modes": modes, "decoder": decoder, "token_ms": token_ms,
                  "inject_ms": inject_ms, "limit": limit, "seed": seed, "concurrency": 1,
                  "latency_model": "lognormal mean 110 ms, clamped to 30-500 ms, seeded per (seed, scenario, call)",
                  "machine": platform.node(), "git_commit": _commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "labels": "simulated decoder: every figure here comes from the simulated decoder"}
        services = Services(out_dir)
        rows = []
        started = time.monotonic()
        try:
            services.start(self.stdout.write)
            # The first task of a fresh engine and worker pays for warming up: not measured.
            self.stdout.write("warming up (not measured)")
            for mode in modes:
                run_scenario(services, work[0][1], mode, token_ms=token_ms, inject_ms=inject_ms, seed=seed)
            with (out_dir / "scenarios.jsonl").open("w") as lines:
                for n, (dataset, scenario) in enumerate(work):
                    for mode in modes:
                        row = run_scenario(services, scenario, mode, token_ms=token_ms, inject_ms=inject_ms,
                                           seed=seed)
                        rows.append(row)
                        lines.write(json.dumps(row) + "\n")
                        done = len(rows)
                        self.stdout.write(f"[{done}/{total}] {dataset} {scenario.id} {mode}: {row['latency_ms']} ms "
                                          f"(bound {row['bound_ms']}){' ERRORS' if row['errors'] else ''}")
                    if n % 10 == 9:
                        self.stdout.write(f"  ... {time.monotonic() - started:.0f} s so far")
        except BenchError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            services.stop()
        results = summarize(rows)
        (out_dir / "bench.json").write_text(json.dumps({"params": params, "results": results}, indent=2))
        (out_dir / "bench.md").write_text(markdown(params, results))
        plot(params, results, out_dir / "bench.png")
        # Every run is also kept under runs/, which the dashboard's benchmark page lists.
        archive = out_dir / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{params['git_commit']}"
        archive.mkdir(parents=True, exist_ok=True)
        for name in ("bench.json", "bench.md", "bench.png", "scenarios.jsonl"):
            shutil.copy2(out_dir / name, archive / name)
        self.stdout.write(markdown(params, results))
        self.stdout.write(self.style.SUCCESS(f"saved {out_dir}/bench.json, bench.md, bench.png, scenarios.jsonl "
                                             f"(and a copy in {archive}) in {time.monotonic() - started:.0f} s"))


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=settings.BASE_DIR, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
