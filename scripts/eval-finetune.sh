#!/usr/bin/env bash
# The evaluation of `make finetune`: base vs tuned on held-out BFCL entries through the real
# engine, Celery workers and Redis (`python manage.py bench --decoder embedded`), one report in
# the bench directory (var/bench: bench.md, bench.json, bench.png; kept under runs/, which the
# dashboard's Benchmarks page lists).
# usage: scripts/eval-finetune.sh [BASE_MODEL] [SCENARIOS_PER_DATASET]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

base="${1:-qwen2.5-coder-0.5b}"
tuned="$base-cml"
limit="${2:-8}"
out="${ASYNCLM_BENCH_DIR:-$ROOT/var/bench}"
bench() { "$PY" manage.py bench --decoder embedded --out "$out" --limit "$limit" "$@"; }

say "accuracy without the cheat sheet: $base (call grammar, no adapter) vs $tuned"
bench --model "$base" --datasets parallel,parallel_multiple --modes sync,async --no-cheat-sheet
bench --append --model "$tuned" --datasets parallel,parallel_multiple --modes sync,sync_parallel,async --no-cheat-sheet
say "latency with the cheat sheet (every mode makes the same calls): the paper's tool latencies, then web APIs"
bench --append --model "$tuned" --datasets parallel,parallel_multiple --modes sync,async
bench --append --model "$tuned" --datasets parallel,parallel_multiple --modes sync,async --latency-profile web
say "a person's message mid-task (\"Also check Oslo.\"): is the extra call made?"
bench --append --model "$tuned" --datasets human_message --modes async --limit 10
bench --append --model "$base" --datasets human_message --modes async --limit 10
say "report: $out/bench.md"
