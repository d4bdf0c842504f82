"""Prompt profiles: how a task's text becomes the model's token context."""

from __future__ import annotations

from engine.backends.base import Backend


def chat_prompt_ids(backend: Backend, user_text: str) -> list[int]:
    """ChatML prompt. Template markers are tokenized as special tokens; the user's text is not,
    so a prompt that contains `<|im_start|>` cannot forge a turn."""
    spec = backend.spec
    if spec.chat_format != "chatml":
        raise ValueError(f"unsupported chat format {spec.chat_format!r}")
    tok = backend.tokenize
    return (
        tok("<|im_start|>system\n", special=True)
        + tok(spec.system_prompt)
        + tok("<|im_end|>\n<|im_start|>user\n", special=True)
        + tok(user_text)
        + tok("<|im_end|>\n<|im_start|>assistant\n", special=True)
    )
