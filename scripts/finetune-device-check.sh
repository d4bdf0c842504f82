#!/usr/bin/env bash
# Checks that the training run works, unchanged, on another machine (a CUDA GPU) where the real
# weights cannot be taken: the same code trains a tiny stand-in of the default model (its
# tokenizer and architecture, random weights: finetune/tiny.py) on real traces, with and without
# frozen layers, saves its checkpoints and exports the adapter; the same run here on the CPU gives
# the losses the other machine's must match.
#
#   scripts/finetune-device-check.sh prepare          # here: .devcheck/ (tiny model, traces, wheels)
#   scripts/finetune-device-check.sh run OUT [PY]     # there (PY defaults to python3), and here
#   scripts/finetune-device-check.sh compare A B      # here: losses and llama.cpp logits (finetune/devcheck.py)
#   scripts/finetune-device-check.sh speed OUT [PY]   # there: seconds a step at the real model's shape
#
# `speed` writes a stand-in with the 0.5B's shape (24 layers of 896, random weights: a step costs
# what it costs with the real ones; its losses mean nothing) and times STEPS steps of the shipped
# recipe (all layers, 4 traces a step) and of the default (top 12 layers, 3 a step) on the full
# training data (--combined 0, the shipped adapter's).
#
# .devcheck/ (ignored by git) is what a call to the other machine carries.
set -euo pipefail
cd "$(dirname "$0")/.."
CHECK=.devcheck
MODEL=qwen2.5-coder-0.5b  # the stand-in copies its tokenizer and file name
# The pins of requirements/finetune.txt that a machine with its own torch needs on top of it.
mapfile -t WHEELS < <(grep -E '^(transformers|peft|gguf)==' requirements/finetune.txt)
# Two small runs: adapters on every layer (the shipped recipe) and on the top layer over a frozen one (the
# default recipe's Frozen path).
RUNS=("all 0" "top1 1")

# On a machine with its own torch (python3 there), the carried pins go on top of it.
with_wheels() {
  if [ "$1" = python3 ] && [ -d "$CHECK/whl" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ft-site \
      "$CHECK"/whl/*.whl
    export PYTHONPATH=/tmp/ft-site
  fi
}

case "${1:-}" in
  prepare)
    source scripts/lib.sh
    FT_PY=.venv-finetune/bin/python
    [ -x "$FT_PY" ] || die "the training virtualenv is missing: run \`make finetune\` (its install phase) first"
    rm -rf "$CHECK" && mkdir -p "$CHECK/models" "$CHECK/whl"
    "$FT_PY" -m finetune.tiny --like "$MODEL" --out "$CHECK/models" --layers 2
    "$PY" -m finetune.build --out "$CHECK/data" --limit 2 > "$CHECK/build.log"
    "$PY" -m finetune.build --out "$CHECK/full-data" --combined 0 > "$CHECK/build-full.log"
    tar czf "$CHECK/full-data.tgz" -C "$CHECK" full-data && rm -r "$CHECK/full-data"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$CHECK/whl" "${WHEELS[@]}"
    du -sh "$CHECK"
    ;;
  run)
    out="${2:?usage: run OUT [PY]}"
    py="${3:-python3}"
    mkdir -p "$out"
    with_wheels "$py"
    "$py" -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '', 'transformers', transformers.__version__,
      'peft', peft.__version__)" | tee "$out/versions.txt"
    export ASYNCLM_MODEL_DIR="$CHECK/models" OMP_WAIT_POLICY=PASSIVE
    for run in "${RUNS[@]}"; do
      set -- $run
      "$py" -m finetune.train --data "$CHECK/data" --out "$out/$1" --model "$MODEL" --steps 6 --accum 2 \
        --layers "$2" --eval-every 3 --lr 1e-2 > "$out/$1.log" 2>&1 || { tail -30 "$out/$1.log"; exit 1; }
      tr '\r' '\n' < "$out/$1.log" | grep -v '%|' || true  # not the progress bars
      "$py" -m finetune.export "$out/$1/adapter" "$out/$1/adapter.gguf"
      test -s "$out/$1/adapter.gguf"
    done
    ;;
  speed)
    out="${2:?usage: speed OUT [PY]}"
    py="${3:-python3}"
    mkdir -p "$out"
    with_wheels "$py"
    work=$(mktemp -d)
    tar xzf "$CHECK/full-data.tgz" -C "$work"
    # SPEED_SHAPE and SPEED_STEPS make a quick local try of this command possible.
    "$py" -m finetune.tiny --from "$CHECK/models/$(ls "$CHECK/models")" --out "$work/models" \
      ${SPEED_SHAPE:---layers 24 --hidden 896 --heads 14 --kv-heads 2 --ffn 4864 --lm-head}
    export ASYNCLM_MODEL_DIR="$work/models" OMP_WAIT_POLICY=PASSIVE
    steps=${SPEED_STEPS:-30}
    for recipe in "shipped 0 4" "default 12 3"; do
      set -- $recipe
      "$py" -m finetune.train --data "$work/full-data" --out "$work/$1" --model "$MODEL" --steps "$steps" \
        --accum "$3" --layers "$2" --eval-every "$steps" > "$out/$1.log" 2>&1 || { tail -30 "$out/$1.log"; exit 1; }
      cp "$work/$1/train.json" "$out/$1-train.json"
      cp "$work/$1/losses.json" "$out/$1-losses.json"
      "$py" - "$out/$1-train.json" "$out/$1-losses.json" "$1" <<'EOF'
import json, sys
summary, losses = (json.load(open(p)) for p in sys.argv[1:3])
t = [p["s"] for p in losses["train"]]
per_step = (t[-1] - t[0]) / max(1, len(t) - 1)  # from the end of step 1: no warm-up in it
print(f"{sys.argv[3]}: {summary['device']}, layers {summary['layers']}, {summary['accum']} traces a step: "
      f"{per_step:.3f} s a step after the first ({t[0]:.2f} s); training phase {summary['total_seconds']} s "
      f"for {summary['steps']} steps; peak GPU {summary.get('peak_gpu_mb', '-')} MB, RSS {summary['peak_rss_mb']} MB")
EOF
    done
    rm -rf "$work"
    ;;
  compare)
    source scripts/lib.sh
    "$PY" -m finetune.devcheck "${2:?usage: compare A B}" "${3:?usage: compare A B}"
    ;;
  *) echo "usage: $0 prepare | run OUT [PY] | compare A B | speed OUT [PY]" >&2; exit 2 ;;
esac
