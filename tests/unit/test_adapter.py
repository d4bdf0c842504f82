"""LoRA adapters: the GGUF export from PEFT tensors and directories, catalog adapters with verified
hashes, and the adapter loaded per context on the real default model (weights stay memory-mapped)."""

import gc
import hashlib
import json
import struct
import threading

import numpy as np
import pytest
from django.conf import settings

from engine.backends.base import BackendError
from engine.backends.llamacpp import LlamaCppBackend
from engine.catalog import MODELS, AdapterSpec, get_model, tuned
from engine.messages import Sampling, TaskSubmission
from engine.modelfiles import ModelFileError, ensure, verified_adapter_path, verified_path
from engine.scheduler import Scheduler
from finetune.export import ExportError, export_peft_dir, main, read_safetensors, write_lora_gguf

BASE = "qwen2.5-coder-0.5b"
HIDDEN, KV_OUT = 896, 128  # Qwen2.5-0.5B: q_proj 896 -> 896, v_proj 896 -> 128 (2 KV heads of 64)


def peft_name(layer: int, module: str, ab: str) -> str:
    block = "mlp" if module in ("gate_proj", "up_proj", "down_proj") else "self_attn"
    return f"base_model.model.model.layers.{layer}.{block}.{module}.lora_{ab}.weight"


def lora_tensors(seed: int = 0, layers=(0, 1, 2, 3), rank: int = 2, scale: float = 1.0) -> dict[str, np.ndarray]:
    """q_proj and v_proj of a few layers; `scale=0` gives a zero lora_B (an adapter that does nothing)."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in layers:
        for module, out in (("q_proj", HIDDEN), ("v_proj", KV_OUT)):
            tensors[peft_name(layer, module, "A")] = rng.normal(0, 1.0, (rank, HIDDEN)).astype(np.float32)
            tensors[peft_name(layer, module, "B")] = (scale * rng.normal(0, 1.0, (out, rank))).astype(np.float32)
    return tensors


def adapter_spec(path, name: str = "test-lora") -> AdapterSpec:
    data = path.read_bytes()
    return AdapterSpec(name=name, path=str(path), sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def gguf_contents(path):
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {f.name: f.contents() for f in reader.fields.values() if not f.name.startswith("GGUF.")}
    tensors = {t.name: (tuple(int(n) for n in t.shape), np.array(t.data)) for t in reader.tensors}
    return fields, tensors


def safetensors_bytes(tensors: dict[str, tuple[str, np.ndarray]]) -> bytes:
    """A .safetensors file by hand: header length (u64 LE), JSON header, raw little-endian data."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, (dtype, raw) in tensors.items():
        blob = raw.tobytes()
        header[name] = {"dtype": dtype, "shape": list(raw.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


# --- export ----------------------------------------------------------------------------------------


def test_it_writes_llama_cpp_tensor_names_shapes_and_metadata(tmp_path):
    tensors = lora_tensors(layers=(5,), rank=3)
    tensors[peft_name(7, "down_proj", "A")] = np.ones((3, 4864), np.float32)
    tensors[peft_name(7, "down_proj", "B")] = np.ones((HIDDEN, 3), np.float32)
    out = tmp_path / "a.gguf"
    sha = write_lora_gguf(tensors, alpha=6.0, out=out)
    assert sha == hashlib.sha256(out.read_bytes()).hexdigest()
    fields, written = gguf_contents(out)
    assert fields["general.architecture"] == "qwen2" and fields["general.type"] == "adapter"
    assert fields["adapter.type"] == "lora" and fields["adapter.lora.alpha"] == 6.0
    # GGUFReader reports ggml's ne (numpy's shape reversed): lora_a ne = [in, r], lora_b ne = [r, out].
    assert {name: shape for name, (shape, _) in written.items()} == {
        "blk.5.attn_q.weight.lora_a": (HIDDEN, 3), "blk.5.attn_q.weight.lora_b": (3, HIDDEN),
        "blk.5.attn_v.weight.lora_a": (HIDDEN, 3), "blk.5.attn_v.weight.lora_b": (3, KV_OUT),
        "blk.7.ffn_down.weight.lora_a": (4864, 3), "blk.7.ffn_down.weight.lora_b": (3, HIDDEN),
    }
    np.testing.assert_array_equal(written["blk.5.attn_v.weight.lora_b"][1].reshape(KV_OUT, 3),
                                  tensors[peft_name(5, "v_proj", "B")])


def test_it_refuses_an_architecture_other_than_qwen2(tmp_path):
    with pytest.raises(ExportError, match="architecture 'llama' is not supported.*permuted"):
        write_lora_gguf(lora_tensors(), alpha=2, out=tmp_path / "a.gguf", arch="llama")
    assert not (tmp_path / "a.gguf").exists()


@pytest.mark.parametrize("name", [
    "base_model.model.lm_head.lora_A.weight",
    "base_model.model.model.embed_tokens.lora_embedding_A",
    "base_model.model.model.layers.0.self_attn.rotary.lora_A.weight",
    "model.layers.0.self_attn.q_proj.weight",
])
def test_it_refuses_an_unknown_tensor_name(tmp_path, name):
    tensors = lora_tensors(layers=(0,))
    tensors[name] = np.zeros((2, HIDDEN), np.float32)
    with pytest.raises(ExportError, match=f"unknown LoRA tensor '{name}'"):
        write_lora_gguf(tensors, alpha=2, out=tmp_path / "a.gguf")


def test_it_refuses_a_lora_a_without_its_lora_b(tmp_path):
    tensors = lora_tensors(layers=(0,))
    del tensors[peft_name(0, "q_proj", "B")]
    with pytest.raises(ExportError, match="blk.0.attn_q.weight.lora_a has no blk.0.attn_q.weight.lora_b"):
        write_lora_gguf(tensors, alpha=2, out=tmp_path / "a.gguf")


def test_it_round_trips_a_peft_directory_with_bf16_tensors(tmp_path, capsys):
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, (2, HIDDEN)).astype(np.float32)
    b = rng.normal(0, 1, (KV_OUT, 2)).astype(np.float32)
    b_bf16 = (b.view(np.uint32) >> 16).astype(np.uint16)  # truncated to bf16, as torch would store it
    b_exact = (b_bf16.astype(np.uint32) << 16).view(np.float32)
    q_a, q_b = a.astype(np.float16), rng.normal(0, 1, (HIDDEN, 2)).astype(np.float16)
    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / "adapter_model.safetensors").write_bytes(safetensors_bytes({
        peft_name(3, "v_proj", "A"): ("F32", a),
        peft_name(3, "v_proj", "B"): ("BF16", b_bf16),
        peft_name(3, "q_proj", "A"): ("F16", q_a),
        peft_name(3, "q_proj", "B"): ("F16", q_b),
    }))
    (peft / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 2, "lora_alpha": 16, "target_modules": ["v_proj", "q_proj"], "bias": "none",
        "use_rslora": False, "use_dora": False, "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
    }))
    loaded = read_safetensors(peft / "adapter_model.safetensors")
    np.testing.assert_array_equal(loaded[peft_name(3, "v_proj", "B")], b_exact)
    assert all(t.dtype == np.float32 for t in loaded.values())

    out = tmp_path / "out.gguf"
    sha = export_peft_dir(peft, out)
    fields, written = gguf_contents(out)
    assert fields["adapter.lora.alpha"] == 16.0
    np.testing.assert_array_equal(written["blk.3.attn_v.weight.lora_a"][1].reshape(2, HIDDEN), a)
    np.testing.assert_array_equal(written["blk.3.attn_v.weight.lora_b"][1].reshape(KV_OUT, 2), b_exact)
    np.testing.assert_array_equal(written["blk.3.attn_q.weight.lora_b"][1].reshape(HIDDEN, 2), q_b.astype(np.float32))

    assert main([str(peft), str(tmp_path / "cli.gguf")]) == 0
    assert f"sha256={sha}" in capsys.readouterr().out  # the same bytes again


def test_it_folds_rslora_scaling_into_alpha_and_refuses_dora(tmp_path):
    peft = tmp_path / "peft"
    peft.mkdir()
    t = lora_tensors(layers=(0,), rank=4)
    (peft / "adapter_model.safetensors").write_bytes(safetensors_bytes({k: ("F32", v) for k, v in t.items()}))
    config = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "use_rslora": True}
    (peft / "adapter_config.json").write_text(json.dumps(config))
    export_peft_dir(peft, tmp_path / "a.gguf")
    # PEFT scales rsLoRA by alpha/sqrt(r) = 4; llama.cpp by alpha'/r, so alpha' = 16.
    assert gguf_contents(tmp_path / "a.gguf")[0]["adapter.lora.alpha"] == 16.0
    (peft / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ExportError, match="use_dora"):
        export_peft_dir(peft, tmp_path / "b.gguf")
    (peft / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["q_proj", "lm_head"]}))
    with pytest.raises(ExportError, match=r"target modules \['lm_head'\] cannot be exported"):
        export_peft_dir(peft, tmp_path / "c.gguf")


# --- catalog and verification ----------------------------------------------------------------------


def test_a_tuned_model_shares_its_base_models_file():
    base = MODELS[BASE]
    spec = tuned(base, name="x-cml", label="x", adapter=AdapterSpec("cml", "finetune/adapters/x.gguf", "0" * 64, 1))
    assert (spec.filename, spec.sha256, spec.size, spec.parts) == (base.filename, base.sha256, base.size, base.parts)
    assert (spec.base, spec.adapter.name, spec.stop_tokens) == (BASE, "cml", base.stop_tokens)
    assert spec.adapter_ref() == {"name": "cml", "sha256": "0" * 64} and base.adapter_ref() is None


def test_it_refuses_an_adapter_whose_hash_differs_naming_the_file(tmp_path):
    path = tmp_path / "adapters" / "cml.gguf"
    write_lora_gguf(lora_tensors(), alpha=2, out=path)
    good = adapter_spec(path)
    spec = tuned(MODELS[BASE], name="x-cml", label="x", adapter=good)
    assert verified_adapter_path(spec) == path
    bad = tuned(MODELS[BASE], name="x-cml", label="x", adapter=AdapterSpec("cml", "adapters/cml.gguf", "ab" * 32,
                                                                           good.size))
    with pytest.raises(ModelFileError) as info:
        verified_adapter_path(bad, tmp_path)
    message = str(info.value)
    assert str(path) in message and good.sha256 in message and "ab" * 32 in message and "x-cml" in message
    with pytest.raises(ModelFileError, match="is missing: .*nope.gguf"):
        verified_adapter_path(tuned(MODELS[BASE], name="x", label="x",
                                    adapter=AdapterSpec("cml", "nope.gguf", "0" * 64, 1)), tmp_path)


def test_ensure_checks_the_base_file_and_the_adapter(tmp_path):
    content = b"GGUF pretend model"
    (tmp_path / "tiny.gguf").write_bytes(content)
    from dataclasses import replace

    base = replace(MODELS["smollm2-135m"], name="tiny", filename="tiny.gguf", size=len(content),
                   sha256=hashlib.sha256(content).hexdigest())
    write_lora_gguf(lora_tensors(layers=(0,)), alpha=2, out=tmp_path / "cml.gguf")
    good = tuned(base, name="tiny-cml", label="t", adapter=adapter_spec(tmp_path / "cml.gguf"))
    said = []
    assert ensure(good, tmp_path, say=said.append, repo_root=tmp_path) == tmp_path / "tiny.gguf"
    assert any("adapter ready" in s for s in said)
    bad = replace(good, adapter=replace(good.adapter, sha256="0" * 64))
    with pytest.raises(ModelFileError, match="Refusing to load adapter .*cml.gguf"):
        ensure(bad, tmp_path, say=said.append, repo_root=tmp_path)


@pytest.mark.slow
def test_a_wrong_adapter_hash_fails_the_task_with_the_reason(tmp_path, monkeypatch):
    from webapp.runs.management.commands.run_engine import BackendCache

    path = tmp_path / "cml.gguf"
    write_lora_gguf(lora_tensors(), alpha=2, out=path)
    spec = tuned(MODELS[BASE], name="qwen-test-cml", label="t",
                 adapter=AdapterSpec("cml", str(path), "0" * 64, path.stat().st_size))
    monkeypatch.setitem(MODELS, spec.name, spec)
    scheduler = Scheduler(BackendCache(threading.Event()))
    events = scheduler.submit(TaskSubmission(1, spec.name, "hi", 8, 0.0, Sampling()))
    finish = events[-1].payload
    assert finish["status"] == "failed"
    assert "model 'qwen-test-cml' unavailable" in finish["reason"] and str(path) in finish["reason"]
    assert "does not match the pinned " + "0" * 64 in finish["reason"]


# --- loading on the real model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_path():
    return verified_path(get_model(BASE), settings.ASYNCLM_MODEL_DIR)


@pytest.fixture(scope="module")
def plain(base_path):
    return LlamaCppBackend(get_model(BASE), base_path, n_ctx=256, max_idle_contexts=2)


def load_with(tmp_path, base_path, tensors, alpha=2.0, **kwargs) -> LlamaCppBackend:
    path = tmp_path / "lora.gguf"
    write_lora_gguf(tensors, alpha=alpha, out=path, **kwargs)
    spec = tuned(get_model(BASE), name=f"{BASE}-test", label="t", adapter=adapter_spec(path))
    return LlamaCppBackend(spec, base_path, adapter_path=verified_adapter_path(spec), n_ctx=256,
                           max_idle_contexts=2)


def last_logits(backend: LlamaCppBackend, text: str = "def fibonacci(n):\n    ") -> np.ndarray:
    seq = backend.open_sequence()
    seq.append(backend.tokenize(text))
    logits = seq.logits()
    seq.close()
    return logits


@pytest.mark.slow
def test_it_changes_the_logits_with_a_random_adapter(tmp_path, base_path, plain):
    adapted = load_with(tmp_path, base_path, lora_tensors(seed=3))
    base, tuned_logits = last_logits(plain), last_logits(adapted)
    assert np.abs(tuned_logits - base).max() > 1.0
    assert np.corrcoef(tuned_logits, base)[0, 1] < 0.999
    # Deterministic: the same adapter gives the same logits again (the context keeps it applied).
    np.testing.assert_allclose(last_logits(adapted), tuned_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_a_zero_adapter_leaves_the_logits_as_they_were(tmp_path, base_path, plain):
    adapted = load_with(tmp_path, base_path, lora_tensors(seed=3, scale=0.0), dtype="f16")
    np.testing.assert_allclose(last_logits(adapted), last_logits(plain), rtol=1e-3, atol=1e-3)


def rss_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


@pytest.mark.slow
def test_every_pooled_context_applies_the_adapter_over_shared_weights(tmp_path, base_path, plain):
    adapted = load_with(tmp_path, base_path, lora_tensors(seed=4))
    expected = last_logits(adapted)  # the first context
    ids = adapted.tokenize("def fibonacci(n):\n    ")
    first = adapted.open_sequence()  # takes the idle first context
    before = rss_kb("RssAnon")
    second = adapted.open_sequence()  # a new context: its own llama_model over the same mmapped file
    grown_mb = (rss_kb("RssAnon") - before) / 1024
    for seq in (first, second):
        seq.append(ids)
        np.testing.assert_allclose(seq.logits(), expected, rtol=1e-3, atol=1e-3)
    import llama_cpp

    assert second._llama is not first._llama and second._llama.model_params.load_mode == llama_cpp.LLAMA_LOAD_MODE_MMAP
    # A private copy of the weights (Llama(lora_path=...) turns mmap off) would add ~400 MB here.
    assert grown_mb < 150, f"a second adapted context added {grown_mb:.0f} MB of private memory"
    third = adapted.open_sequence()
    for seq in (first, second, third):
        seq.close()  # one context more than max_idle_contexts: dropped, its model frees its adapter
    gc.collect()
    assert len(adapted._idle) == 2
    np.testing.assert_allclose(last_logits(adapted), expected, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_the_batched_backend_applies_the_adapter_to_its_one_context(tmp_path, base_path):
    from engine.backends.llamacpp_batched import BatchedLlamaBackend

    tensors = lora_tensors(seed=3)
    per_context = load_with(tmp_path, base_path, tensors)
    spec = tuned(get_model(BASE), name=f"{BASE}-test", label="t", adapter=adapter_spec(tmp_path / "lora.gguf"))
    batched = BatchedLlamaBackend(spec, base_path, adapter_path=verified_adapter_path(spec), n_ctx=256, n_seq=2)
    ids = batched.tokenize("def fibonacci(n):\n    ")
    seqs = [batched.open_sequence(), batched.open_sequence()]
    for seq in seqs:
        seq.append(ids)
    expected = last_logits(per_context)
    for seq in seqs:  # both sequences, evaluated in one batch, are the tuned model
        assert np.argmax(seq.logits()) == np.argmax(expected)
        assert np.corrcoef(seq.logits(), expected)[0, 1] > 0.995
        seq.close()


@pytest.mark.slow
def test_it_refuses_an_adapter_made_for_another_model(tmp_path, base_path):
    # Layer 30 does not exist in the 24-layer 0.5B model; llama.cpp's reason is in the message.
    with pytest.raises(BackendError, match="could not load adapter .*lora.gguf for qwen2.5-coder-0.5b-test.*"
                                           "LoRA tensor 'blk.30.attn_q.weight' does not exist in base model"):
        load_with(tmp_path, base_path, lora_tensors(layers=(30,)))


def test_a_gguf_adapter_goes_back_to_the_same_peft_tensors_for_sglang(tmp_path):
    from finetune.peft import main as peft_main
    from finetune.peft import read_lora_gguf

    tensors = lora_tensors(seed=3, rank=4)
    write_lora_gguf(tensors, alpha=8.0, out=tmp_path / "a.gguf")
    args = [str(tmp_path / "a.gguf"), str(tmp_path / "peft"), "--base", "Qwen/Qwen2.5-Coder-0.5B-Instruct"]
    assert peft_main(args) == 0
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0 and config["peft_type"] == "LORA"
    assert set(config["target_modules"]) == {n.split(".")[-3] for n in tensors}
    back = read_safetensors(tmp_path / "peft" / "adapter_model.safetensors")
    assert sorted(back) == sorted(tensors)
    for name, array in tensors.items():
        np.testing.assert_array_equal(back[name], array.astype(np.float32))
    # And the folder exports to the very same GGUF tensors: one format, two containers.
    export_peft_dir(tmp_path / "peft", tmp_path / "again.gguf")
    again, alpha, arch = read_lora_gguf(tmp_path / "again.gguf")
    assert alpha == 8.0 and arch == "qwen2" and all(np.array_equal(again[n], back[n]) for n in back)


def test_the_shipped_adapter_converts_to_peft(tmp_path):
    from finetune.peft import to_peft

    spec = next(s for s in MODELS.values() if s.adapter is not None)
    config = to_peft(settings.BASE_DIR / spec.adapter.path, tmp_path, spec.hf_repo)
    assert config["r"] > 0 and (tmp_path / "adapter_model.safetensors").stat().st_size > 1_000_000
