#!/usr/bin/env bash
# The evaluation of `make finetune`: base vs tuned on held-out BFCL entries through the real
# engine, Celery workers and Redis (`python manage.py bench --decoder embedded`), one report in
# the bench directory (var/bench: bench.md, bench.json, bench.png; kept under runs/, which the
# dashboard's Benchmarks page lists).
# The rows the accuracy goals are read from (base async, tuned sync and async, no cheat sheet) run
# on every held-out entry of parallel and parallel_multiple (50 each): on 16 entries one run is 6
# points, and such samples were seen 14 to 30 points off the whole set. The other rows run on
# SCENARIOS_PER_DATASET entries.
# usage: scripts/eval-finetune.sh [BASE_MODEL] [SCENARIOS_PER_DATASET] [GOAL_SCENARIOS_PER_DATASET]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

base="${1:-qwen2.5-coder-0.5b}"
tuned="$base-cml"
limit="${2:-8}"
goal_limit="${3:-50}"
out="${ASYNCLM_BENCH_DIR:-$ROOT/var/bench}"
bench() { "$PY" manage.py bench --decoder embedded --out "$out" "$@"; }
goals=(--datasets parallel,parallel_multiple --no-cheat-sheet --limit "$goal_limit")
rest=(--datasets parallel,parallel_multiple --no-cheat-sheet --limit "$limit")

say "accuracy without the cheat sheet: $base (call grammar, no adapter) vs $tuned ($goal_limit held-out entries a dataset for the goals' rows)"
bench --model "$base" "${goals[@]}" --modes async
bench --append --model "$tuned" "${goals[@]}" --modes sync,async
bench --append --model "$base" "${rest[@]}" --modes sync
bench --append --model "$tuned" "${rest[@]}" --modes sync_parallel
say "latency with the cheat sheet (every mode makes the same calls): the paper's tool latencies, then web APIs"
bench --append --model "$tuned" --limit "$limit" --datasets parallel,parallel_multiple --modes sync,async
bench --append --model "$tuned" --limit "$limit" --datasets parallel,parallel_multiple --modes sync,async --latency-profile web
say "a person's message mid-task (\"Also check Oslo.\"): is the extra call made?"
bench --append --model "$tuned" --datasets human_message --modes async --limit 10
bench --append --model "$base" --datasets human_message --modes async --limit 10
say "report: $out/bench.md"
