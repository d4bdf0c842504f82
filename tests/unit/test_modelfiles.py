import hashlib
from dataclasses import replace

import pytest
from django.conf import settings

from engine.catalog import MODELS, UnknownModel, get_model
from engine.modelfiles import ModelFileError, verified_path


@pytest.fixture
def tiny_spec(tmp_path):
    content = b"GGUF pretend model"
    (tmp_path / "tiny.gguf").write_bytes(content)
    spec = replace(MODELS["smollm2-135m"], name="tiny", filename="tiny.gguf", size=len(content),
                   sha256=hashlib.sha256(content).hexdigest())
    return spec


def test_it_accepts_a_file_matching_its_pin(tiny_spec, tmp_path):
    assert verified_path(tiny_spec, tmp_path) == tmp_path / "tiny.gguf"


def test_it_refuses_a_file_whose_hash_differs(tiny_spec, tmp_path):
    (tmp_path / "tiny.gguf").write_bytes(b"GGUF pretend modeX")  # same size, other bytes
    with pytest.raises(ModelFileError, match="Refusing to load .*sha256 .* does not match the pinned"):
        verified_path(tiny_spec, tmp_path)


def test_it_refuses_a_truncated_file(tiny_spec, tmp_path):
    (tmp_path / "tiny.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelFileError, match="its size is 4 bytes"):
        verified_path(tiny_spec, tmp_path)


def test_it_says_how_to_get_a_missing_file(tiny_spec, tmp_path):
    (tmp_path / "tiny.gguf").unlink()
    with pytest.raises(ModelFileError, match="python -m engine.modelfiles ensure tiny"):
        verified_path(tiny_spec, tmp_path)


def test_the_installed_models_match_their_pins():
    for name in ("qwen2.5-coder-0.5b", settings.ASYNCLM_TEST_MODEL):
        assert verified_path(get_model(name), settings.ASYNCLM_MODEL_DIR).stat().st_size == get_model(name).size


def test_unknown_models_are_named_with_the_known_ones():
    with pytest.raises(UnknownModel) as info:
        get_model("gpt-17")
    assert "gpt-17" in str(info.value) and "qwen2.5-coder-0.5b" in str(info.value)
