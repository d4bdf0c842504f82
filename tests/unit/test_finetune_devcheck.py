"""The tiny stand-in model (finetune/tiny.py) and the comparison of two training runs
(finetune/devcheck.py) behind scripts/finetune-device-check.sh. No torch: the runs compared here
are written by hand, their adapters by the export code."""

import json
import shutil

import gguf
import numpy as np
import pytest
from django.conf import settings

from engine.backends.llamacpp import LlamaCppBackend
from engine.catalog import get_model
from engine.modelfiles import verified_path
from finetune.devcheck import compare
from finetune.export import write_lora_gguf
from finetune.tiny import write_tiny

BASE = "qwen2.5-coder-0.5b"
HIDDEN, KV = 16, 8  # the stand-in's default shape: 2 heads of 8, one KV head


@pytest.fixture(scope="module")
def real_path():
    return verified_path(get_model(BASE), settings.ASYNCLM_MODEL_DIR)


@pytest.fixture(scope="module")
def tiny(real_path, tmp_path_factory):
    return write_tiny(real_path, tmp_path_factory.mktemp("tiny") / real_path.name)


def fields(path) -> dict:
    reader = gguf.GGUFReader(str(path))
    return {f.name: f.contents() for f in reader.fields.values() if not f.name.startswith("GGUF.")}


def write_source(path, arch: str = "qwen2"):
    """A small GGUF file with a vocabulary of its own (the real one takes ~15 s to read)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(3)
    writer.add_embedding_length(32)
    writer.add_context_length(4096)
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "ab", "<|endoftext|>"])
    writer.add_array("tokenizer.ggml.merges", ["a b"])
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_it_keeps_the_tokenizer_and_metadata_and_writes_the_asked_shape(tmp_path):
    source = fields(write_source(tmp_path / "src.gguf"))
    out = fields(write_tiny(tmp_path / "src.gguf", tmp_path / "tiny.gguf", layers=2, hidden=HIDDEN))
    assert out["tokenizer.ggml.tokens"] == source["tokenizer.ggml.tokens"]
    assert out["tokenizer.ggml.merges"] == source["tokenizer.ggml.merges"]
    assert out["qwen2.context_length"] == 4096
    assert (out["qwen2.block_count"], out["qwen2.embedding_length"], out["qwen2.attention.head_count_kv"]) == (
        2, HIDDEN, 1)
    names = {t.name for t in gguf.GGUFReader(str(tmp_path / "tiny.gguf")).tensors}
    assert "blk.1.ffn_down.weight" in names and "blk.2.ffn_down.weight" not in names
    assert "output.weight" not in names


def test_it_writes_the_same_file_for_the_same_seed_and_another_for_another(tmp_path):
    source = write_source(tmp_path / "src.gguf")
    first = write_tiny(source, tmp_path / "a.gguf").read_bytes()
    assert write_tiny(source, tmp_path / "b.gguf").read_bytes() == first
    assert write_tiny(source, tmp_path / "c.gguf", seed=1).read_bytes() != first


def test_the_real_models_stand_in_runs_in_llama_cpp_with_its_tokens(real_path, tiny):
    text = "[CALL] c1 [HEAD] get_weather(city='Paris') [END]"
    assert tiny.stat().st_size < 16 * 2**20
    small = LlamaCppBackend(get_model(BASE), tiny, n_ctx=128, max_idle_contexts=1)
    real = LlamaCppBackend(get_model(BASE), real_path, n_ctx=128, max_idle_contexts=1)
    assert small.tokenize(text) == real.tokenize(text)
    logits = []
    for backend in (small, real):
        seq = backend.open_sequence()
        seq.append(backend.tokenize(text))
        logits.append(np.asarray(seq.logits()))
        seq.close()
    assert logits[0].shape == logits[1].shape and np.isfinite(logits[0]).all()


def test_it_refuses_an_architecture_it_was_not_written_for(tmp_path):
    with pytest.raises(SystemExit, match="qwen2 only"):
        write_tiny(write_source(tmp_path / "llama.gguf", arch="llama"), tmp_path / "out.gguf")


# --- comparing two runs -----------------------------------------------------------------------------


def lora(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in (0, 1):
        for module, out in (("q_proj", HIDDEN), ("v_proj", KV)):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = rng.normal(0, 0.5, (4, HIDDEN)).astype(np.float32)
            tensors[f"{prefix}.lora_B.weight"] = rng.normal(0, 0.5, (out, 4)).astype(np.float32)
    return tensors


def write_run(folder, device: str, train_losses: list[float], seed: int = 0):
    run = folder / "all"
    run.mkdir(parents=True)
    points = [{"step": i + 1, "loss": loss, "s": float(i)} for i, loss in enumerate(train_losses)]
    (run / "losses.json").write_text(json.dumps({"train": points, "eval": [{"step": 0, "loss": 11.93}]}))
    (run / "train.json").write_text(json.dumps({"device": device, "steps": len(points)}))
    write_lora_gguf(lora(seed), alpha=8.0, out=run / "adapter.gguf")
    return folder


def test_it_agrees_on_two_runs_that_match(tiny, tmp_path, capsys):
    a = write_run(tmp_path / "cpu", "cpu", [11.92, 11.90])
    b = write_run(tmp_path / "gpu", "cuda", [11.9202, 11.8995])
    assert compare(a, b, tiny, tolerance=1e-3)
    out = capsys.readouterr().out
    assert "cpu vs cuda" in out and "agree" in out


def test_it_flags_a_loss_that_drifts(tiny, tmp_path, capsys):
    a = write_run(tmp_path / "cpu", "cpu", [11.92, 11.90])
    b = write_run(tmp_path / "gpu", "cuda", [11.92, 11.88])
    assert not compare(a, b, tiny, tolerance=1e-3)
    assert "DISAGREE" in capsys.readouterr().out


def test_it_flags_adapters_that_differ(tiny, tmp_path):
    a = write_run(tmp_path / "cpu", "cpu", [11.92, 11.90])
    b = write_run(tmp_path / "gpu", "cuda", [11.92, 11.90], seed=1)
    assert not compare(a, b, tiny, tolerance=1e-3)


def test_it_flags_a_run_missing_on_one_side(tiny, tmp_path):
    a = write_run(tmp_path / "cpu", "cpu", [11.92, 11.90])
    b = write_run(tmp_path / "gpu", "cuda", [11.92, 11.90])
    shutil.copytree(a / "all", a / "top1")
    assert not compare(a, b, tiny, tolerance=1e-3)
