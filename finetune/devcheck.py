"""Compares two runs of `scripts/finetune-device-check.sh run` (this machine's CPU and another
machine, a CUDA GPU): the same seed, data and tiny stand-in model must give the same losses at
every step (to 1e-3 nats; the 6 steps move the loss by ~0.04), and each run's exported adapter,
loaded by the engine's llama.cpp backend on top of the stand-in, must change the logits and
change them the same way.

    python -m finetune.devcheck A B [--tolerance 1e-3]   # exit 1 when they disagree

Runs in the service's virtualenv (llama.cpp, numpy); no torch.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = "qwen2.5-coder-0.5b"
PROBE = "[CALL] c1 [HEAD] get_weather(city='Paris') [END]"


def losses(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    return (json.loads((run / "train.json").read_text(encoding="utf-8")),
            json.loads((run / "losses.json").read_text(encoding="utf-8")))


def probe_logits(base: Path, adapter: Path | None) -> np.ndarray:
    from engine.backends.llamacpp import LlamaCppBackend
    from engine.catalog import AdapterSpec, get_model, tuned
    from engine.modelfiles import sha256_of

    spec = get_model(MODEL)
    if adapter is not None:
        spec = tuned(spec, name=f"{MODEL}-devcheck", label="device check",
                     adapter=AdapterSpec(name="devcheck", path=str(adapter), sha256=sha256_of(adapter),
                                         size=adapter.stat().st_size))
    backend = LlamaCppBackend(spec, base, adapter_path=adapter, n_ctx=256,
                              max_idle_contexts=1)
    seq = backend.open_sequence()
    seq.append(backend.tokenize(PROBE))
    logits = np.array(seq.logits(), dtype=np.float64)
    seq.close()
    return logits


def adapter_gap(a: Path, b: Path) -> tuple[float, float]:
    """The largest difference between the two adapters' tensors, and their largest entry."""
    import gguf

    ta, tb = ({t.name: np.asarray(t.data, dtype=np.float64) for t in gguf.GGUFReader(str(p)).tensors} for p in (a, b))
    if ta.keys() != tb.keys():
        return math.inf, 0.0
    return (max((float(np.abs(ta[k] - tb[k]).max()) for k in ta), default=0.0),
            max((float(np.abs(ta[k]).max()) for k in ta), default=0.0))


def compare(a: Path, b: Path, base: Path, tolerance: float) -> bool:
    ok = True
    runs = sorted(p.name for p in a.iterdir() if (p / "train.json").exists())
    if not runs or runs != sorted(p.name for p in b.iterdir() if (p / "train.json").exists()):
        print(f"the two folders hold different runs: {a} and {b}")
        return False
    plain = probe_logits(base, None)
    for run in runs:
        (ta, la), (tb, lb) = losses(a / run), losses(b / run)
        print(f"{run}: {ta['device']} vs {tb['device']}, {ta['steps']} vs {tb['steps']} steps")
        worst = 0.0
        for kind in ("train", "eval"):
            if len(la[kind]) != len(lb[kind]):
                print(f"  {kind}: {len(la[kind])} vs {len(lb[kind])} points")
                ok = False
            for pa, pb in zip(la[kind], lb[kind], strict=False):
                diff = abs(pa["loss"] - pb["loss"])
                worst = max(worst, diff)
                print(f"  {kind} step {pa['step']}: {pa['loss']:.4f} vs {pb['loss']:.4f}")
        print(f"  largest loss difference: {worst:.1e} (tolerance {tolerance:.0e})")
        ok &= worst <= tolerance
        weights = adapter_gap(a / run / "adapter.gguf", b / run / "adapter.gguf")
        print(f"  adapter weights: largest difference {weights[0]:.1e}, largest entry {weights[1]:.1e}")
        ok &= weights[0] <= 0.01 * weights[1]
        xa, xb = (probe_logits(base, d / run / "adapter.gguf") for d in (a, b))
        change_a, change_b, apart = (float(np.abs(x).max()) for x in (xa - plain, xb - plain, xa - xb))
        print(f"  llama.cpp: each adapter moves the logits by {change_a:.4f} and {change_b:.4f} at most; "
              f"the two differ by {apart:.2e}")
        # The adapters differ by the order of floating-point sums on two devices: a tenth of what they
        # change is far above that and far below a wrong export.
        ok &= change_a > 0 and change_b > 0 and apart <= 0.1 * min(change_a, change_b)
    print("agree" if ok else "DISAGREE")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--base", type=Path, help="the tiny stand-in both runs trained on (default: .devcheck/'s)")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest loss difference (nats) at any step")
    args = parser.parse_args(argv)
    if args.base is None:
        from engine.catalog import get_model

        args.base = ROOT / ".devcheck" / "models" / get_model(MODEL).filename
    return 0 if compare(args.a, args.b, args.base, args.tolerance) else 1


if __name__ == "__main__":
    sys.exit(main())
