"""Build the training and held-out-loss sets: BFCL entries (train side of the split) and demo-pack
scenarios, each simulated in one mode and rendered to token ids with the engine's own tokenizer.

usage: python -m finetune.build [--out var/finetune/data] [--model qwen2.5-coder-0.5b] [--limit N]
       [--combined N] [--variants] [--web-share F]
Writes train.jsonl and eval.jsonl (one trace per line: ids, mask, source, dataset, mode) and
stats.json (counts per dataset and mode, token lengths).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Async is the mode whose decisions are hardest (go on writing calls, wait, or answer once the
# frames are in), so it gets the larger share.
MODE_WEIGHTS = {"async": 0.6, "sync": 0.2, "sync_parallel": 0.2}
# Train entries per dataset, drawn with the seed from the train side of the split: every train-side
# entry of the two datasets the goals are measured on, a sample of the others. Sized for the CPU:
# a trace costs ~3.3 s of training here (the default 200 steps of 4 traces, ~1.4 passes over these,
# must train in under an hour); on a GPU, --limit takes every entry.
TRAIN_PER_DATASET = {"simple_python": 50, "multiple": 50, "parallel": 150, "parallel_multiple": 150,
                     "irrelevance": 35, "multi_turn_base": 20}
# With --variants, every train-side `parallel_multiple` entry whose question needs 3 or more calls
# is traced once more, drawn again (`single_turn_plan(..., variant=1)`), ~100 traces. Off by
# default: measured on every held-out entry it made the tuned model stop early less often but
# write more wrong values, with no gain in accuracy (docs/benchmarks.md).
VARIANTS_FROM = {"parallel_multiple": 3}  # dataset: the fewest calls an entry needs to be traced twice
DEMO_TRAIN = 120  # demo-pack traces, half of them with a person's message mid-task
# Questions made of two train-side single-turn entries (finetune.plans.combined_plan), so entries
# the sample above leaves out are seen too; `parallel_multiple` pairs would make prompts of ~1000
# tokens, too long for the CPU's hour.
COMBINED_TRAIN = 80
COMBINED_FROM = ("simple_python", "multiple", "parallel")
EVAL_PER_DATASET = 2  # held-out entries whose traces give the held-out loss (never trained on)
MAX_TOKENS = 1536  # longer traces are left out (a few multi-turn prompts with big tool lists)


def _setup_django() -> None:
    import os

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.local")
    django.setup()


def tokenizer_backend(model: str):
    """The engine's llama.cpp backend for the base model: tokenization exactly as in the engine."""
    from django.conf import settings

    from engine.backends.llamacpp import LlamaCppBackend
    from engine.catalog import get_model
    from engine.modelfiles import verified_path

    spec = get_model(model)
    return LlamaCppBackend(spec, verified_path(spec, Path(settings.ASYNCLM_MODEL_DIR)), n_ctx=4096, n_threads=2)


def pick_mode(seed: int, source: str) -> str:
    rng = random.Random(f"{seed}|mode|{source}")
    return rng.choices(list(MODE_WEIGHTS), weights=list(MODE_WEIGHTS.values()))[0]


def trace_row(plan: Any, mode: str, seed: int, backend: Any) -> dict[str, Any]:
    from finetune.traces import draw_token_ms, render, simulate

    token_ms = draw_token_ms(random.Random(f"{seed}|clock|{plan.source}"))
    trace = simulate(plan, mode, token_ms, backend)
    rendered = render(trace, backend)
    return {"source": plan.source, "dataset": plan.dataset, "mode": mode, "token_ms": token_ms,
            "frames": len(trace.frames), "waits": trace.waits, "message": plan.message is not None,
            "calls": len(plan.calls), "prompt_tokens": rendered.prompt_tokens,
            "entries": [list(e) for e in plan.entries],
            "ids": rendered.ids, "mask": rendered.mask}


def plans(side: str, seed: int, limit: int | None, say, combined: int | None = None,
          variants: bool = False) -> list[Any]:
    """Plans of one side of the split ("train" or "eval")."""
    from finetune.plans import demo_plan, entry_plan
    from finetune.split import DATASETS, load_heldout
    from webapp.tools.bfcl import dataset

    heldout = load_heldout()
    out = []
    for name in DATASETS:
        held = heldout.get(name, set())
        if side == "train":
            entries = [e for e in dataset(name) if e["id"] not in held]
            random.Random(f"{seed}|pick|{name}").shuffle(entries)
            cap = limit if limit is not None else TRAIN_PER_DATASET[name]
        else:
            entries = [e for e in dataset(name) if e["id"] in held]
            cap = EVAL_PER_DATASET
        picked = entries[:cap] if cap is not None else entries
        made = [p for e in picked if (p := entry_plan(name, e, seed))]
        say(f"  {name}: {len(made)} plans from {len(picked)} {side} entries")
        out += made
        if side == "train" and variants and name in VARIANTS_FROM:
            again = variant_plans(name, picked, made, seed)
            say(f"  {name}: {len(again)} more plans, entries of {VARIANTS_FROM[name]} or more calls drawn again")
            out += again
    if side == "train":
        joined = combined_plans(combined_count(limit, combined), seed, heldout)
        say(f"  combined: {len(joined)} plans of two entries each")
        out += joined
    demos = (DEMO_TRAIN if limit is None else limit) if side == "train" else EVAL_PER_DATASET
    out += [demo_plan(k, seed, heldout=side == "eval") for k in range(demos)]
    say(f"  demo: {demos} plans")
    return out


def variant_plans(name: str, entries: list[dict[str, Any]], made: list[Any], seed: int) -> list[Any]:
    """The entries planned once (`made`) whose question needs VARIANTS_FROM[name] calls or more
    (a plan's failures and refused attempts keep its number of calls), planned again."""
    from finetune.plans import single_turn_plan

    many = {p.source for p in made if len(p.calls) >= VARIANTS_FROM[name]}
    return [p for e in entries if e["id"] in many and (p := single_turn_plan(name, e, seed, variant=1))]


def combined_count(limit: int | None, combined: int | None) -> int:
    """How many combined questions a build makes: as asked, else the default (or --limit)."""
    if combined is not None:
        return combined
    return COMBINED_TRAIN if limit is None else limit


def combined_plans(count: int, seed: int, heldout: dict[str, set[str]]) -> list[Any]:
    from finetune.plans import combined_plan
    from webapp.tools.bfcl import dataset

    rng = random.Random(f"{seed}|combined")
    pools = {}
    for name in COMBINED_FROM:
        pools[name] = [e for e in dataset(name) if e["id"] not in heldout.get(name, set())]
        rng.shuffle(pools[name])
    made: list[Any] = []
    for k in range(4 * count):  # a pair whose functions clash is skipped
        if len(made) == count:
            break
        names = [rng.choice(COMBINED_FROM) for _ in range(2)]
        parts = [(name, pools[name][(2 * k + i) % len(pools[name])]) for i, name in enumerate(names)]
        if parts[0][1]["id"] != parts[1][1]["id"] and (plan := combined_plan(parts, seed)):
            made.append(plan)
    return made


def check_split(say) -> None:
    from finetune.split import HELDOUT_FILE, compute_heldout, split_digest

    if not HELDOUT_FILE.exists():
        raise SystemExit(f"{HELDOUT_FILE} is missing: run `python -m finetune.split` once and commit it")
    recorded = json.loads(HELDOUT_FILE.read_text(encoding="utf-8"))
    if recorded["digest"] != split_digest(compute_heldout(recorded["seed"])):
        raise SystemExit(f"{HELDOUT_FILE} no longer matches the installed BFCL data: refusing to build "
                         "(a changed split could put evaluation entries into training)")
    say(f"split: {sum(len(v) for v in recorded['heldout'].values())} held-out entries, digest "
        f"{recorded['digest'][:12]}")


def build(out: Path, model: str, seed: int, limit: int | None, say=print,
          combined: int | None = None, variants: bool = False) -> dict[str, Any]:
    from finetune import plans as plan_module
    from finetune.split import load_heldout

    started = time.monotonic()
    check_split(say)
    backend = tokenizer_backend(model)
    out.mkdir(parents=True, exist_ok=True)
    heldout = load_heldout()
    stats: dict[str, Any] = {"model": model, "seed": seed, "limit": limit, "combined": combined_count(limit, combined),
                             "variants": VARIANTS_FROM if variants else {},
                             "max_tokens": MAX_TOKENS, "web_share": plan_module.WEB_SHARE}
    for side in ("train", "eval"):
        say(f"{side} plans:")
        counts: Counter[str] = Counter()
        lengths, trained, dropped, waiting = [], 0, 0, 0
        with (out / f"{side}.jsonl").open("w", encoding="utf-8") as f:
            side_plans = plans(side, seed, limit, say, combined, variants)
            for n, plan in enumerate(side_plans, 1):
                if side == "train" and any(i in heldout.get(d, set()) for d, i in plan.entries):
                    raise AssertionError(f"held-out entry {plan.source} reached the training set")
                row = trace_row(plan, pick_mode(seed, plan.source), seed, backend)
                if len(row["ids"]) > MAX_TOKENS:
                    dropped += 1
                    continue
                f.write(json.dumps(row) + "\n")
                counts[f"{row['dataset']}/{row['mode']}"] += 1
                lengths.append(len(row["ids"]))
                trained += sum(row["mask"])
                waiting += row["mode"] == "async" and row["waits"] > 0
                if n % 100 == 0 or n == len(side_plans):
                    say(f"  rendered {n}/{len(side_plans)} traces")
        stats[side] = {"traces": len(lengths), "dropped_too_long": dropped, "tokens": sum(lengths),
                       "trained_tokens": trained, "max_len": max(lengths, default=0),
                       "mean_len": round(sum(lengths) / max(1, len(lengths)), 1), "by_dataset_mode": dict(counts),
                       "async_waiting": waiting}
        say(f"{side}: {len(lengths)} traces ({dropped} longer than {MAX_TOKENS} tokens left out), "
            f"{sum(lengths)} tokens, {trained} trained on; {waiting} async traces wait for a result")
    stats["seconds"] = round(time.monotonic() - started, 1)
    (out / "stats.json").write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "finetune" / "data")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None,
                        help="train entries per dataset (default: a CPU-sized sample, see TRAIN_PER_DATASET)")
    parser.add_argument("--combined", type=int, default=None,
                        help=f"questions made of two train entries (default {COMBINED_TRAIN}, or --limit)")
    parser.add_argument("--variants", action="store_true",
                        help="trace the entries of many calls twice (see VARIANTS_FROM)")
    parser.add_argument("--web-share", type=float, default=None,
                        help="share of the BFCL plans whose tools take web-API times (default 0, see WEB_SHARE)")
    args = parser.parse_args(argv)
    if args.web_share is not None and not 0 <= args.web_share <= 1:
        parser.error("--web-share must be between 0 and 1")
    _setup_django()
    if args.web_share is not None:
        from finetune import plans as plan_module

        plan_module.WEB_SHARE = args.web_share
    stats = build(args.out, args.model, args.seed, args.limit, combined=args.combined,
                  variants=args.variants)
    print(json.dumps({k: v for k, v in stats.items() if k in ("train", "eval", "seconds")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
