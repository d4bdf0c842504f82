#!/usr/bin/env bash
# `make finetune`: the adaptation step end to end. Installs the training virtualenv
# (.venv-finetune; not part of `make run`/`make test`), builds the CML traces, trains the LoRA
# adapter, exports it to GGUF, installs it under finetune/adapters/ with its manifest, evaluates
# base vs tuned and writes the report. Each phase's wall time goes into the manifest.
# usage: scripts/finetune.sh [--model NAME] [--steps N] [--accum K] [--rank R] [--layers N] [--limit N]
#                            [--combined N] [--variants] [--web-share F] [--no-install] [--no-eval]
#   a smoke run: FINETUNE_DIR=var/finetune-smoke scripts/finetune.sh --steps 2 --limit 2 --no-install --no-eval
#   (FINETUNE_DIR: where data, run and logs go, default var/finetune; FINETUNE_EVAL_GOAL_LIMIT:
#   held-out scenarios per dataset in the rows the accuracy goals are read from, default 50, every
#   held-out entry, about 47 minutes here; FINETUNE_EVAL_LIMIT: in the other rows, default 8)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

model=qwen2.5-coder-0.5b
train_args=()
build_args=()
evaluate=1
install=1
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; train_args+=(--model "$2"); build_args+=(--model "$2"); shift ;;
    --steps|--rank|--accum|--lr|--layers) train_args+=("$1" "$2"); shift ;;
    --limit) build_args+=(--limit "$2"); shift ;;
    --combined|--web-share) build_args+=("$1" "$2"); shift ;;
    --variants) build_args+=(--variants) ;;
    --no-eval) evaluate=0 ;;
    --no-install) install=0; evaluate=0 ;;
    *) die "unknown option $1 (see the usage line at the top of scripts/finetune.sh)" ;;
  esac
  shift
done

FT_VENV="$ROOT/.venv-finetune"
FT_PY="$FT_VENV/bin/python"
WORK="${FINETUNE_DIR:-$ROOT/var/finetune}"
RUN_DIR="$WORK/run"
DATA_DIR="$WORK/data"
mkdir -p "$WORK"
phases="$WORK/phases.json"
echo "{}" > "$phases"
now() { date +%s.%N; }
record() {  # record NAME START
  python3 - "$phases" "$1" "$2" "$(now)" <<'EOF'
import json, sys
path, name, start, end = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
data = json.load(open(path))
data[name] = round(end - start, 1)
json.dump(data, open(path, "w"), indent=1)
EOF
}

t=$(now)
say "install: the service's virtualenv and the $model weights"
scripts/bootstrap.sh --models "$model"
hash=$(sha256sum requirements/finetune.txt | cut -c1-16)
if [ ! -f "$FT_VENV/.installed-$hash" ]; then
  say "install: the training virtualenv (.venv-finetune: torch, transformers, peft, gguf)"
  [ -x "$FT_PY" ] || python3 -m venv "$FT_VENV"
  "$FT_PY" -m pip install --progress-bar off -r requirements/finetune.txt 2>&1 | pip_filter
  "$FT_PY" -c "import torch, transformers, peft, gguf" || die "the training requirements did not install"
  rm -f "$FT_VENV"/.installed-*
  touch "$FT_VENV/.installed-$hash"
else
  say "install: training virtualenv up to date"
fi
record install "$t"

t=$(now)
say "dataset: CML traces from the train side of the BFCL split"
"$PY" -m finetune.build --out "$DATA_DIR" "${build_args[@]}"
record dataset "$t"

t=$(now)
say "train: LoRA on the traces (progress bar: loss and ETA)"
rm -rf "$RUN_DIR"
"$FT_PY" -m finetune.train --data "$DATA_DIR" --out "$RUN_DIR" "${train_args[@]}"
record train "$t"

t=$(now)
say "export: the adapter as a llama.cpp GGUF LoRA, installed under finetune/adapters/"
"$FT_PY" -m finetune.export "$RUN_DIR/adapter" "$RUN_DIR/adapter.gguf"
record export "$t"
if [ "$install" = 1 ]; then
  "$PY" -m finetune.install --model "$model" --run "$RUN_DIR" --data "$DATA_DIR" --phases "$phases"
else
  say "not installed (--no-install): the adapter is $RUN_DIR/adapter.gguf"
fi

if [ "$evaluate" = 1 ]; then
  t=$(now)
  say "evaluate: base vs tuned on held-out BFCL entries (python manage.py bench --decoder embedded)"
  scripts/with-redis.sh scripts/eval-finetune.sh "$model" "${FINETUNE_EVAL_LIMIT:-8}" "${FINETUNE_EVAL_GOAL_LIMIT:-50}"
  record evaluate "$t"
  "$PY" -m finetune.install --model "$model" --run "$RUN_DIR" --data "$DATA_DIR" --phases "$phases" --update-phases
fi
if [ "$install" = 1 ]; then
  say "done: phase times in $phases; adapter, manifest and loss plot in finetune/adapters/ (commit them to ship the adapter)"
else
  say "done: phase times in $phases"
fi
