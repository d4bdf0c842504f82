"""The model's standalone decode rate: plain greedy decoding with llama-cpp-python, no engine.

Measured once per embedded bench run, in the bench command's own process before the engine and
workers start (so nothing shares the CPU), with the engine's thread count, the same weights file
and, for a tuned model, its LoRA adapter applied as the engine applies it (LlamaCppBackend). The
bound at this rate (`bound_standalone_ms`) is the paper's latency formula for what the model wrote,
timed as if every token cost what decoding alone costs: measured/bound at it is the share the
whole system (engine, tools, injection) adds to the model's own work.
"""

from __future__ import annotations

import gc
import time

import numpy as np
from django.conf import settings

from engine.catalog import get_model

PROMPT = "<|im_start|>user\nCount from one to one hundred in words, separated by commas.<|im_end|>\n" \
         "<|im_start|>assistant\n"
TOKENS = 64
WARMUP = 8
REPEATS = 2


def ms_per_token(model: str, tokens: int = TOKENS, repeats: int = REPEATS) -> float:
    """Mean ms per greedily decoded token (one token per forward pass, as the engine decodes),
    the fastest of `repeats` runs of `tokens` tokens after `WARMUP` untimed ones."""
    try:
        return _measure(model, tokens, repeats)
    finally:
        gc.collect()  # frees the model's contexts: the engine about to start loads the same weights


def _measure(model: str, tokens: int, repeats: int) -> float:
    from engine.backends.llamacpp import LlamaCppBackend
    from engine.modelfiles import verified_adapter_path, verified_path

    spec = get_model(model)
    adapter = verified_adapter_path(spec, settings.BASE_DIR) if spec.adapter else None
    backend = LlamaCppBackend(spec, verified_path(spec, settings.ASYNCLM_MODEL_DIR), adapter_path=adapter,
                              n_ctx=512, n_threads=settings.ASYNCLM_ENGINE_THREADS, max_idle_contexts=1)
    prompt = backend.tokenize(PROMPT, special=True)
    best = float("inf")
    for _ in range(repeats):
        seq = backend.open_sequence(prompt)
        try:
            seq.append(prompt[seq.n_tokens:])
            token = int(np.argmax(seq.logits()))
            for _ in range(WARMUP):
                seq.append([token])
                token = int(np.argmax(seq.logits()))
            started = time.perf_counter()
            for _ in range(tokens):
                seq.append([token])
                token = int(np.argmax(seq.logits()))
            best = min(best, (time.perf_counter() - started) * 1000 / tokens)
        finally:
            seq.close()
    return round(best, 3)
