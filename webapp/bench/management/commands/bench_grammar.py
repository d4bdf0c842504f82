"""Measure what the call grammar's mask costs the engine per token (webapp/bench/grammar_cost.py).

Loads a catalog model's vocabulary (llama.cpp, no decoding), writes every ground-truth call of the
held-out entries of `--datasets` through the mask, typed and untyped, and prints and saves ms per
token (var/bench/grammar.json). Nothing else should run: the figures are CPU time.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from webapp.bench import grammar_cost
from webapp.bench.provenance import git_commit
from webapp.bench.scenarios import SINGLE_TURN, scenarios


class Command(BaseCommand):
    help = "Measure the call grammar's mask per token on a real model's vocabulary (synthetic logits)."

    def add_arguments(self, parser):
        parser.add_argument("--model", default=settings.ASYNCLM_DEFAULT_MODEL)
        parser.add_argument("--datasets", default="parallel,parallel_multiple")
        parser.add_argument("--limit", type=int, default=50, help="held-out entries per dataset")
        parser.add_argument("--out", default=str(Path(settings.ASYNCLM_BENCH_DIR) / "grammar.json"))

    def handle(self, *args: Any, **opts: Any) -> None:
        from engine.backends.llamacpp import LlamaCppBackend
        from engine.catalog import get_model
        from engine.constrain import TokenTable
        from engine.modelfiles import verified_path

        names = [d for d in opts["datasets"].split(",") if d]
        if unknown := [d for d in names if d not in SINGLE_TURN]:
            raise CommandError(f"--datasets: {', '.join(unknown)} not among {', '.join(SINGLE_TURN)}")
        if opts["limit"] < 1:
            raise CommandError("--limit must be at least 1")
        try:
            spec = get_model(opts["model"])
            backend = LlamaCppBackend(spec, verified_path(spec, settings.ASYNCLM_MODEL_DIR), n_ctx=256)
        except Exception as exc:  # an unknown name, a missing file, a wrong hash: say which
            raise CommandError(f"cannot load {opts['model']}: {exc}") from exc
        found = [s for name in names for s in scenarios(name, 0, opts["limit"], heldout=True)]
        calls = grammar_cost.calls_of(found)
        self.stdout.write(f"{len(found)} held-out scenarios, {len(calls)} calls; reading the vocabulary")
        t0 = time.perf_counter()
        table = TokenTable(backend.vocab_texts(), backend.stop_ids())
        table_s = time.perf_counter() - t0
        result = grammar_cost.measure(table, backend.tokenize, calls)
        summary = {"model": spec.name, "datasets": names, "limit": opts["limit"], "table_s": round(table_s, 2),
                   "machine": platform.node(), "git_commit": git_commit(),
                   "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **result}
        out = Path(opts["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2) + "\n")
        self.stdout.write(f"token table: {table_s:.2f} s once per model ({result['vocab']} tokens)")
        self.stdout.write("| grammar | case | tokens | mean ms | p50 ms | p99 ms |\n|---|---|---|---|---|---|")
        for grammar in ("typed", "untyped"):
            for case in grammar_cost.CASES:
                s = result[grammar][case]
                self.stdout.write(f"| {grammar} | {case} | {s['tokens']} | {s.get('mean_ms', '–')} | "
                                  f"{s.get('p50_ms', '–')} | {s.get('p99_ms', '–')} |")
        s = result["outside_block"]
        self.stdout.write(f"| outside a block | ban | {s['tokens']} | {s['mean_ms']} | {s['p50_ms']} | {s['p99_ms']} |")
        self.stdout.write(f"-> {out}")

