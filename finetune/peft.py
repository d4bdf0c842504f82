"""A shipped GGUF LoRA adapter back as a PEFT adapter folder, for servers that take PEFT (SGLang).

We ship the adapter in llama.cpp's format only (finetune/adapters/*.gguf, what the embedded
engine loads); SGLang serves LoRA adapters per request from PEFT folders (`--enable-lora
--lora-paths cml=DIR`, then `lora_path: "cml"` in each request). This is the exact inverse of
finetune/export.py (same tensor names, no permutation for qwen2, alpha as written), so the
server applies the same weights as the embedded engine.

    python -m finetune.peft finetune/adapters/qwen2.5-coder-0.5b-cml.gguf var/peft/cml \
        --base Qwen/Qwen2.5-Coder-0.5B-Instruct
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import sys
from pathlib import Path

import numpy as np

from finetune.export import MODULES, ExportError

_GGUF_NAME = re.compile(r"^blk\.(?P<layer>\d+)\.(?P<base>\w+)\.weight\.lora_(?P<ab>[ab])$")
_PEFT_OF = {base: (block, module) for (block, module), base in MODULES.items()}


def peft_name(gguf_name: str) -> str:
    m = _GGUF_NAME.match(gguf_name)
    where = _PEFT_OF.get(m["base"]) if m else None
    if m is None or where is None:
        raise ExportError(f"unknown LoRA tensor {gguf_name!r} in the GGUF adapter")
    block, module = where
    return f"base_model.model.model.layers.{int(m['layer'])}.{block}.{module}.lora_{m['ab'].upper()}.weight"


def read_lora_gguf(path: Path) -> tuple[dict[str, np.ndarray], float, str]:
    """The adapter's tensors under PEFT names (float32), its alpha and its architecture."""
    import gguf

    reader = gguf.GGUFReader(str(path))

    def field(key: str) -> object:
        f = reader.fields.get(key)
        if f is None:
            raise ExportError(f"{path} has no {key}: not a LoRA adapter written by finetune.export")
        return f.contents()

    if field(gguf.Keys.Adapter.TYPE) != "lora":
        raise ExportError(f"{path} is not a LoRA adapter")
    alpha = float(field(gguf.Keys.Adapter.LORA_ALPHA))  # type: ignore[arg-type]
    arch = str(field(gguf.Keys.General.ARCHITECTURE))
    tensors = {}
    for t in reader.tensors:
        # GGUF keeps ggml's order (ne): reversed, it is numpy's shape as written.
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        tensors[peft_name(t.name)] = np.asarray(t.data, dtype=np.float32).reshape(shape)
    return tensors, alpha, arch


def write_safetensors(tensors: dict[str, np.ndarray], out: Path) -> None:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    blobs = []
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with out.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)


def to_peft(gguf_path: Path, out_dir: Path, base_model: str) -> dict[str, object]:
    """Write `out_dir`/adapter_config.json and adapter_model.safetensors; returns the config."""
    tensors, alpha, arch = read_lora_gguf(gguf_path)
    ranks = {a.shape[0] for name, a in tensors.items() if name.endswith("lora_A.weight")}
    if len(ranks) != 1:
        raise ExportError(f"{gguf_path}: LoRA ranks {sorted(ranks)} differ between layers")
    modules = sorted({name.split(".")[-3] for name in tensors})
    config: dict[str, object] = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": ranks.pop(), "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none",
        "target_modules": modules, "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "inference_mode": True,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_safetensors(tensors, out_dir / "adapter_model.safetensors")
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A GGUF LoRA adapter as a PEFT adapter folder (for SGLang).")
    parser.add_argument("gguf", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--base", required=True, help="the Hugging Face model the adapter applies to")
    args = parser.parse_args(argv)
    try:
        config = to_peft(args.gguf, args.out_dir, args.base)
    except (ExportError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out_dir} (r={config['r']}, alpha={config['lora_alpha']}, modules {config['target_modules']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
