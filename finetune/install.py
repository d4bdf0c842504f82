"""Install a training run's adapter where the catalog finds it, with its manifest and loss plot.

usage: python -m finetune.install --model NAME --run var/finetune/run [--phases phases.json]
       [--update-phases]
finetune/adapters/<model>-cml.gguf is the adapter; <model>-cml.json its manifest (split digest,
trace counts per dataset and mode, hyper-parameters, steps, wall times, losses, sha256); and
<model>-cml-loss.png the training and held-out loss. The catalog builds the tuned model from the
manifest and refuses an adapter file whose sha256 differs from it. Commit the three to ship them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ADAPTERS = ROOT / "finetune" / "adapters"


def tuned_name(model: str) -> str:
    return f"{model}-cml"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def plot_losses(losses: dict[str, Any], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    train = losses["train"]
    ax.plot([p["step"] for p in train], [p["loss"] for p in train], lw=0.8, alpha=0.6, label="train (per step)")
    ev = losses["eval"]
    ax.plot([p["step"] for p in ev], [p["loss"] for p in ev], "o-", label="held-out")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (trained tokens)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def manifest(model: str, run: Path, data: Path, phases: dict[str, float], adapter: Path) -> dict[str, Any]:
    from finetune.split import HELDOUT_FILE

    trained = json.loads((run / "train.json").read_text(encoding="utf-8"))
    stats = json.loads((data / "stats.json").read_text(encoding="utf-8"))
    split = json.loads(HELDOUT_FILE.read_text(encoding="utf-8"))
    return {
        "name": tuned_name(model),
        "base_model": model,
        "adapter": {"name": "cml", "file": adapter.name, "sha256": sha256_file(adapter),
                    "size": adapter.stat().st_size, "format": "GGUF LoRA (llama.cpp)"},
        "split": {"seed": split["seed"], "digest": split["digest"],
                  "heldout": {k: len(v) for k, v in split["heldout"].items()}},
        "data": {side: {k: stats[side][k] for k in ("traces", "tokens", "trained_tokens", "mean_len",
                                                    "dropped_too_long", "by_dataset_mode", "async_waiting")}
                 for side in ("train", "eval")},
        "training": trained,
        "phases_s": phases,
    }


def install(model: str, run: Path, data: Path, phases: dict[str, float]) -> dict[str, Any]:
    ADAPTERS.mkdir(parents=True, exist_ok=True)
    name = tuned_name(model)
    target = ADAPTERS / f"{name}.gguf"
    shutil.copyfile(run / "adapter.gguf", target)
    doc = manifest(model, run, data, phases, target)
    (ADAPTERS / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    losses = json.loads((run / "losses.json").read_text(encoding="utf-8"))
    plot_losses(losses, ADAPTERS / f"{name}-loss.png",
                f"{name}: LoRA r={doc['training']['rank']}, {doc['training']['steps']} steps")
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--run", type=Path, default=ROOT / "var" / "finetune" / "run")
    parser.add_argument("--data", type=Path, default=ROOT / "var" / "finetune" / "data")
    parser.add_argument("--phases", type=Path, default=None, help="phase -> seconds, recorded by make finetune")
    parser.add_argument("--update-phases", action="store_true", help="only rewrite the manifest's phase times")
    args = parser.parse_args(argv)
    phases = json.loads(args.phases.read_text()) if args.phases and args.phases.exists() else {}
    path = ADAPTERS / f"{tuned_name(args.model)}.json"
    if args.update_phases:
        doc = json.loads(path.read_text(encoding="utf-8"))
        doc["phases_s"] = phases
        path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        return 0
    doc = install(args.model, args.run, args.data, phases)
    t = doc["training"]
    print(f"installed {doc['name']}: adapter {doc['adapter']['size']} bytes, sha256 {doc['adapter']['sha256']}; "
          f"{t['steps']} steps in {t['train_seconds']:.0f} s, train loss {t['final_train_loss']}, held-out "
          f"{t['first_eval_loss']} -> {t['final_eval_loss']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
