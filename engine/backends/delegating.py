"""A local backend that stands in front of another: same vocabulary, tokenizer and limits. A
subclass overrides what it changes (the benchmark's timed backend wraps each sequence; tests
push or replay tokens)."""

from __future__ import annotations

from collections.abc import Sequence as Seq

from engine.backends.base import LocalBackend, Sequence


class DelegatingBackend(LocalBackend):
    def __init__(self, real: LocalBackend) -> None:
        self.real = real
        self.spec, self.n_vocab, self.constrained_calls = real.spec, real.n_vocab, real.constrained_calls

    @property
    def n_ctx(self) -> int:
        return self.real.n_ctx

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return self.real.tokenize(text, special=special)

    def token_bytes(self, token_id: int) -> bytes:
        return self.real.token_bytes(token_id)

    def stop_ids(self) -> frozenset[int]:
        return self.real.stop_ids()

    def vocab_texts(self) -> list[str]:
        return self.real.vocab_texts()

    def open_sequence(self, prompt_ids: Seq[int] = ()) -> Sequence:
        return self.real.open_sequence(prompt_ids)
