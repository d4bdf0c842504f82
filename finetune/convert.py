"""The one converter from the GGUF files we ship to transformers' model: the fine-tuning pipeline
loads its base weights with `load_model`, and `save_hf` writes the same model as a Hugging Face
folder (config.json, model.safetensors, tokenizer files) for servers that read that format (an
SGLang server: `scripts/sglang-server.sh convert`). Runs in any virtualenv with torch,
transformers and gguf (.venv-finetune, .venv-sglang).

usage: python -m finetune.convert --model smollm2-135m --out DIR [--model-dir var/models] [--force]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def load_model(path: Path, device: str, dtype: Any) -> Any:
    from transformers import AutoModelForCausalLM, GgufConfig

    # Dense weights: transformers would otherwise keep the Q4_K_M blocks packed and dequantize
    # them in every matmul, ~2x slower per step on this CPU (measured 70 s vs 35 s on 512 tokens).
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype,
                                                 quantization_config=GgufConfig(dequantize=True))
    return model.to(device)


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def save_hf(model_name: str, out_dir: Path, model_dir: Path | None = None) -> Path:
    """Write catalog model `model_name` (its GGUF file under `model_dir`) to `out_dir` as a
    Hugging Face folder in float32: the dequantized GGUF weights are the model, so no precision is
    invented, and SGLang's CPU path runs float32. The folder appears whole or not at all."""
    import torch

    from finetune.train import model_file  # the GGUF file lookup the training run uses

    path = model_file(model_name, model_dir or Path(os.environ.get("ASYNCLM_MODEL_DIR", ROOT / "var" / "models")))
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model = load_model(path, "cpu", torch.float32)
    # The weights are dense now: a quantization entry in config.json would make a server look for
    # a quantized checkpoint.
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(str(tmp))
    load_tokenizer(path).save_pretrained(str(tmp))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="catalog name (engine/catalog.py)")
    parser.add_argument("--out", type=Path, required=True, help="the Hugging Face folder to write")
    parser.add_argument("--model-dir", type=Path,
                        default=Path(os.environ.get("ASYNCLM_MODEL_DIR", ROOT / "var" / "models")))
    parser.add_argument("--force", action="store_true", help="convert again when --out already holds a model")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if (args.out / "config.json").exists() and not args.force:
        print(f"{args.out} already holds a model (--force converts again)")
        return 0
    started = time.monotonic()
    out = save_hf(args.model, args.out, args.model_dir)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote {args.model} to {out} ({size / 2**20:.0f} MiB) in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
