"""A tiny model that stands in for a catalog model where its weights cannot go: the same
architecture, tokenizer and GGUF metadata, with a few narrow layers of seeded random weights
(~10 MB instead of ~490). The training pipeline runs on it unchanged, so a machine that the real
weights cannot reach (a lent GPU machine takes 64 MiB of files) can still check that the run,
the checkpoints and the export work there, and compare its losses with a CPU run of the same
seed (`scripts/finetune-device-check.sh`). It says nothing about what a real model learns.

Only numpy and the pure-Python `gguf` package.

    python -m finetune.tiny --like qwen2.5-coder-0.5b --out DIR   # writes DIR/<the model's file name>
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHAPE_KEYS = ("block_count", "embedding_length", "feed_forward_length", "attention.head_count",
              "attention.head_count_kv")


def write_tiny(src: Path, out: Path, *, layers: int = 2, hidden: int = 16, heads: int = 2, kv_heads: int = 1,
               ffn: int = 64, lm_head: bool = False, seed: int = 0) -> Path:
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    if arch != "qwen2":
        raise SystemExit(f"{src} is a {arch!r} model; the tiny stand-in is written for qwen2 only")
    vocab = len(reader.fields["tokenizer.ggml.tokens"].contents())
    shapes = {f"{arch}.{key}" for key in SHAPE_KEYS}
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out), arch)
    for name, field in reader.fields.items():
        # The reader's own GGUF.* entries describe the file, not the model; the writer writes the
        # architecture itself; the file type would claim Q4_K_M for float weights.
        if name.startswith("GGUF.") or name in shapes or name in ("general.architecture", "general.file_type"):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), kind, sub_type=sub)
    writer.add_block_count(layers)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)

    rng = np.random.default_rng(seed)
    kv = hidden // heads * kv_heads

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)

    # Shapes as PyTorch holds them (out, in); the writer reverses them into ggml's order.
    writer.add_tensor("token_embd.weight", normal(vocab, hidden).astype(np.float16))
    if lm_head:  # the real files carry the output projection apart from the embeddings
        writer.add_tensor("output.weight", normal(vocab, hidden).astype(np.float16))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    for i in range(layers):
        blk = f"blk.{i}"
        writer.add_tensor(f"{blk}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"{blk}.ffn_norm.weight", np.ones(hidden, np.float32))
        for name, rows in (("attn_q", hidden), ("attn_k", kv), ("attn_v", kv)):
            writer.add_tensor(f"{blk}.{name}.weight", normal(rows, hidden))
            writer.add_tensor(f"{blk}.{name}.bias", normal(rows))
        writer.add_tensor(f"{blk}.attn_output.weight", normal(hidden, hidden))
        writer.add_tensor(f"{blk}.ffn_gate.weight", normal(ffn, hidden))
        writer.add_tensor(f"{blk}.ffn_up.weight", normal(ffn, hidden))
        writer.add_tensor(f"{blk}.ffn_down.weight", normal(hidden, ffn))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--like", default="qwen2.5-coder-0.5b", help="the catalog model whose file is copied")
    parser.add_argument("--from", dest="source", type=Path,
                        help="copy this GGUF file's tokenizer and metadata instead (a stand-in written before)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the tiny file (same file name)")
    parser.add_argument("--model-dir", type=Path,
                        default=Path(os.environ.get("ASYNCLM_MODEL_DIR", ROOT / "var" / "models")))
    # The shape: tiny by default; the real model's (--layers 24 --hidden 896 --heads 14 --kv-heads 2
    # --ffn 4864 --lm-head for the 0.5B) times a training step as the real weights would.
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--kv-heads", type=int, default=1)
    parser.add_argument("--ffn", type=int, default=64)
    parser.add_argument("--lm-head", action="store_true",
                        help="an output projection of its own, as the real files have")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.source is None:
        from finetune.train import model_file

        args.source = model_file(args.like, args.model_dir)
    out = write_tiny(args.source, args.out / args.source.name, layers=args.layers, hidden=args.hidden, heads=args.heads,
                     kv_heads=args.kv_heads, ffn=args.ffn, lm_head=args.lm_head, seed=args.seed)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB): {args.source.name}'s tokenizer, "
          f"{args.layers} random layers of {args.hidden}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
