"""Export a PEFT LoRA adapter as a llama.cpp GGUF LoRA adapter.

The engine runs the base GGUF weights plus this adapter (engine/backends/llamacpp.py); the GGUF
layout is the one llama.cpp's convert_lora_to_gguf.py writes: `blk.{i}.attn_q.weight.lora_a` /
`.lora_b` and so on, with lora_a of numpy shape (r, in_features) and lora_b of (out_features, r),
and the metadata general.type="adapter", adapter.type="lora", adapter.lora.alpha. llama.cpp scales
each pair by alpha / r, as PEFT does.

Only numpy and the pure-Python `gguf` package: no torch here. The safetensors file is read by a
small parser of our own (safetensors' numpy loader cannot read bf16, which is what PEFT saves from
a bf16 model).

    python -m finetune.export PEFT_DIR OUT.gguf
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np

SUPPORTED_ARCHS = ("qwen2",)

# (PEFT block, PEFT module) -> llama.cpp tensor base name
MODULES: dict[tuple[str, str], str] = {
    ("self_attn", "q_proj"): "attn_q",
    ("self_attn", "k_proj"): "attn_k",
    ("self_attn", "v_proj"): "attn_v",
    ("self_attn", "o_proj"): "attn_output",
    ("mlp", "gate_proj"): "ffn_gate",
    ("mlp", "up_proj"): "ffn_up",
    ("mlp", "down_proj"): "ffn_down",
}
TARGET_MODULES = frozenset(module for _, module in MODULES)

_PEFT_NAME = re.compile(
    r"^base_model\.model\.model\.layers\.(?P<layer>\d+)\.(?P<block>self_attn|mlp)\.(?P<module>\w+)"
    r"\.lora_(?P<ab>[AB])(?:\.default)?\.weight$"
)


class ExportError(ValueError):
    """The adapter cannot be exported as a llama.cpp LoRA adapter for our models."""


def gguf_name(peft_name: str) -> str:
    """The llama.cpp tensor name for a PEFT LoRA tensor name; ExportError for anything else."""
    m = _PEFT_NAME.match(peft_name)
    base = MODULES.get((m["block"], m["module"])) if m else None
    if m is None or base is None:
        raise ExportError(
            f"unknown LoRA tensor {peft_name!r}: only base_model.model.model.layers.N.self_attn."
            f"{{q,k,v,o}}_proj and .mlp.{{gate,up,down}}_proj lora_A/lora_B weights can be exported"
        )
    return f"blk.{int(m['layer'])}.{base}.weight.lora_{m['ab'].lower()}"


def _check_pairs(converted: Mapping[str, np.ndarray]) -> None:
    for name, array in converted.items():
        if array.ndim != 2:
            raise ExportError(f"LoRA tensor {name} has shape {array.shape}, expected a matrix")
        stem, _, ab = name.rpartition(".lora_")
        other = f"{stem}.lora_{'b' if ab == 'a' else 'a'}"
        if other not in converted:
            raise ExportError(f"LoRA tensor {name} has no {other} to pair with")
        if ab == "a" and array.shape[0] != converted[other].shape[1]:
            raise ExportError(
                f"LoRA pair {stem}: lora_A has rank {array.shape[0]} (shape {array.shape}) but lora_B has "
                f"rank {converted[other].shape[1]} (shape {converted[other].shape})"
            )


def write_lora_gguf(tensors: dict[str, np.ndarray], *, alpha: float, out: Path, arch: str = "qwen2",
                    dtype: Literal["f32", "f16"] = "f32") -> str:
    """Write PEFT-named LoRA tensors as a llama.cpp GGUF adapter at `out`; returns its sha256."""
    if arch not in SUPPORTED_ARCHS:
        raise ExportError(
            f"architecture {arch!r} is not supported: only {', '.join(SUPPORTED_ARCHS)} (llama-architecture "
            "models need q/k permuted on conversion, which this exporter does not do)"
        )
    if not tensors:
        raise ExportError("no LoRA tensors to export")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ExportError(f"lora alpha must be a positive number, got {alpha!r}")
    if dtype not in ("f32", "f16"):
        raise ExportError(f"dtype must be 'f32' or 'f16', got {dtype!r}")
    np_dtype = np.float32 if dtype == "f32" else np.float16
    converted: dict[str, np.ndarray] = {}
    for name, array in tensors.items():
        target = gguf_name(name)
        if target in converted:
            raise ExportError(f"two tensors map to {target} (one is {name!r})")
        converted[target] = np.ascontiguousarray(np.asarray(array), dtype=np_dtype)
    _check_pairs(converted)

    import gguf  # the pure-Python writer from llama.cpp (requirements/dev.txt)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(partial, arch)  # writes general.architecture itself
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))

    def order(name: str) -> tuple[int, str]:
        return int(name.split(".")[1]), name

    for name in sorted(converted, key=order):
        # The writer reverses numpy's shape into ggml's ne: lora_a (r, in) -> ne [in, r],
        # lora_b (out, r) -> ne [r, out], which is what llama.cpp checks against the model tensor.
        writer.add_tensor(name, converted[name])
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(partial, out)
    digest = hashlib.sha256()
    with out.open("rb") as f:
        while block := f.read(1 << 23):
            digest.update(block)
    return digest.hexdigest()


# safetensors dtype -> how its raw little-endian data is read (bf16 as uint16, widened below)
_SAFETENSORS_DTYPES = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Float tensors of a .safetensors file as float32 arrays (bf16 included).

    The format: an 8-byte little-endian header length, a JSON header
    {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the raw data,
    offsets counted from the end of the header.
    """
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise ExportError(f"{path} is not a safetensors file (too short)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if 8 + header_len > len(data):
        raise ExportError(f"{path} is not a safetensors file (header length {header_len} beyond the file)")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except ValueError as exc:
        raise ExportError(f"{path} is not a safetensors file: {exc}") from exc
    body = memoryview(data)[8 + header_len :]
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dt is None:
            raise ExportError(f"{path}: tensor {name} has dtype {info['dtype']}, expected F32, F16, BF16 or F64")
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end - begin != math.prod(shape) * dt.itemsize or end > len(body):
            raise ExportError(
                f"{path}: tensor {name} has {end - begin} bytes of data for shape {shape} {info['dtype']}"
            )
        raw = np.frombuffer(body[begin:end], dtype=dt).reshape(shape)
        if info["dtype"] == "BF16":  # bf16 is the high half of a float32
            tensors[name] = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            tensors[name] = raw.astype(np.float32)
    return tensors


def export_peft_dir(peft_dir: Path, out: Path) -> str:
    """Export a PEFT LoRA directory (adapter_config.json + adapter_model.safetensors) to a GGUF
    adapter at `out`; returns its sha256."""
    peft_dir = Path(peft_dir)
    config_path = peft_dir / "adapter_config.json"
    weights_path = peft_dir / "adapter_model.safetensors"
    for p in (config_path, weights_path):
        if not p.exists():
            raise ExportError(f"{p} is missing: not a saved PEFT LoRA adapter directory")
    config = json.loads(config_path.read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ExportError(f"{config_path}: peft_type is {config.get('peft_type')!r}, only LORA is supported")
    for key in ("use_dora", "modules_to_save", "alpha_pattern"):
        if config.get(key):
            raise ExportError(f"{config_path}: {key}={config[key]!r} is not supported by llama.cpp LoRA adapters")
    if config.get("bias", "none") != "none":
        raise ExportError(f"{config_path}: bias={config['bias']!r} is not supported, train with bias='none'")
    targets = config.get("target_modules")
    if isinstance(targets, list) and (unknown := sorted(set(targets) - TARGET_MODULES)):
        raise ExportError(f"{config_path}: target modules {unknown} cannot be exported "
                          f"(supported: {', '.join(sorted(TARGET_MODULES))})")
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    if config.get("use_rslora"):
        if config.get("rank_pattern"):
            raise ExportError(f"{config_path}: use_rslora together with rank_pattern is not supported")
        alpha *= math.sqrt(r)  # PEFT scales by alpha/sqrt(r), llama.cpp by alpha/r
    tensors = read_safetensors(weights_path)
    if not config.get("rank_pattern"):
        for name, array in tensors.items():
            if ".lora_A." in name and array.shape[0] != r:
                raise ExportError(f"{weights_path}: {name} has rank {array.shape[0]}, adapter_config.json says r={r}")
    return write_lora_gguf(tensors, alpha=alpha, out=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export a PEFT LoRA adapter directory as a llama.cpp GGUF adapter.")
    parser.add_argument("peft_dir", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    try:
        sha = export_peft_dir(args.peft_dir, args.out)
    except (ExportError, OSError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: size={args.out.stat().st_size} sha256={sha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
