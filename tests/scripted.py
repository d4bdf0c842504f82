"""A scripted backend for tests of the pure engine core: it 'predicts' a fixed list of byte
pieces, one per step, then the stop token. It honours the Backend contract (KV length,
truncate, context limit) so the core cannot tell it from a model."""

from __future__ import annotations

from collections.abc import Sequence as Seq

import numpy as np

from engine.backends.base import Backend, BackendError, Sequence
from engine.catalog import ModelSpec, WheelPart

STOP = 0
PROMPT_BASE = 1000  # prompt characters are ids PROMPT_BASE + ord(c)
VOCAB = PROMPT_BASE + 0x3000

SPEC = ModelSpec(name="scripted", label="scripted", filename="-", sha256="-", size=0,
                 parts=(WheelPart("-", "0", "-"),), system_prompt="sys")


class ScriptedSequence(Sequence):
    def __init__(self, backend: ScriptedBackend) -> None:
        self.backend = backend
        self.ids: list[int] = []
        self.appends = 0
        self.closed = False

    @property
    def n_tokens(self) -> int:
        return len(self.ids)

    def append(self, ids: Seq[int]) -> None:
        if len(self.ids) + len(ids) > self.backend.n_ctx:
            raise BackendError("context full")
        if self.backend.fail_after is not None and self.generated() >= self.backend.fail_after:
            raise RuntimeError("scripted failure")
        self.ids.extend(ids)
        self.backend.calls.append(("append", len(ids)))

    def generated(self) -> int:
        return sum(1 for i in self.ids if 0 < i < PROMPT_BASE)

    def logits(self) -> np.ndarray:
        k = self.generated()
        nxt = k + 1 if k < len(self.backend.pieces) else STOP
        out = np.zeros(VOCAB, dtype=np.float32)
        out[nxt] = 10.0
        out[(nxt % 7) + 1] += 9.0  # a close second, so sampling with temperature can differ
        return out

    def truncate(self, n_tokens: int) -> None:
        del self.ids[n_tokens:]

    def close(self) -> None:
        self.closed = True
        self.backend.closed += 1


class ScriptedBackend(Backend):
    def __init__(self, pieces: list[bytes], n_ctx: int = 4096, fail_after: int | None = None) -> None:
        self.spec = SPEC
        self.n_vocab = VOCAB
        self.pieces = pieces
        self._n_ctx = n_ctx
        self.fail_after = fail_after
        self.calls: list[tuple[str, int]] = []
        self.closed = 0

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return [PROMPT_BASE + min(ord(c), 0x2FFF) for c in text]

    def token_bytes(self, token_id: int) -> bytes:
        if token_id >= PROMPT_BASE:
            return chr(token_id - PROMPT_BASE).encode()
        return self.pieces[token_id - 1] if 0 < token_id <= len(self.pieces) else b""

    def stop_ids(self) -> frozenset[int]:
        return frozenset({STOP})

    def open_sequence(self, prompt_ids=()) -> ScriptedSequence:
        return ScriptedSequence(self)
