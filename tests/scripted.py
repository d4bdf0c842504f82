"""A scripted backend for tests of the pure engine core: it 'predicts' a fixed list of byte
pieces, one per step, then the stop token. It honours the Backend contract (KV length,
truncate, context limit) so the core cannot tell it from a model."""

from __future__ import annotations

from collections.abc import Sequence as Seq

import numpy as np

from engine.backends.base import (
    Backend,
    BackendError,
    LocalBackend,
    RemoteBackend,
    RemoteSequence,
    Sequence,
    StreamEnd,
    Submission,
)
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


class _ScriptedModel(Backend):
    """The script's vocabulary and limits, shared by the local and the remote kind."""

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


class ScriptedBackend(_ScriptedModel, LocalBackend):
    def open_sequence(self, prompt_ids=()) -> ScriptedSequence:
        return ScriptedSequence(self)


# ---- a scripted remote backend: the "server" samples and streams, like SGLang ----------------
FALLBACK = 900  # what the scripted server says instead of a banned token


class ScriptedRemoteSequence(RemoteSequence):
    """Streams the script's next pieces from wherever the context stands; an abort lets
    `backend.after_abort` more tokens through; each submission's cached tokens come from a
    prefix cache of earlier contexts (like SGLang's radix cache)."""

    def __init__(self, backend: ScriptedRemoteBackend) -> None:
        self.backend = backend
        self.context: list[int] = []
        self.submissions: list[Submission] = []
        self._pending: list = []
        self._streaming = False
        self._abort_left: int | None = None
        self._banned: set[int] = set()
        self._budget = 0
        self._produced = 0

    @property
    def n_tokens(self) -> int:
        return len(self.context)

    @property
    def streaming(self) -> bool:
        return self._streaming

    def submit(self, extra_ids, params, reason) -> None:
        assert not self._streaming, "submitted while streaming"
        expected = len(self.context)
        self.context.extend(extra_ids)
        cached = max((_common(self.context, c) for c in self.backend.cache), default=0)
        self.submissions.append(Submission(f"asynclm-{len(self.backend.requests):032d}", reason,
                                           expected, len(self.context), cached))
        self.backend.requests.append({"input_ids": list(self.context), "params": params, "reason": reason})
        self._banned = {int(k) for k in params.get("logit_bias", {})}
        self._budget = params["max_new_tokens"]
        self._produced = 0
        self._streaming, self._abort_left = True, None

    def _next(self) -> int:
        k = sum(1 for i in self.context if 0 < i < PROMPT_BASE)  # a fallback takes its piece's place
        nxt = k + 1 if k < len(self.backend.pieces) else STOP
        return FALLBACK if nxt in self._banned else nxt

    def poll(self) -> list:
        if not self._streaming:
            return []
        if self.backend.fail_at is not None and len(self.backend.requests) > self.backend.fail_at:
            return self._end(StreamEnd("error", message="connection reset"))
        if self._abort_left == 0:
            return self._end(StreamEnd("abort", message="Aborted"))
        token = self._next()
        if self._abort_left is not None:
            self._abort_left -= 1
        if token == STOP:
            return self._end(StreamEnd("stop"))
        self.context.append(token)
        self._produced += 1
        text = "fallback" if token == FALLBACK else self.backend.pieces[token - 1].decode()
        if self._produced >= self._budget:
            return [(token, text)] + self._end(StreamEnd("length"))
        return [(token, text)]

    def _end(self, end: StreamEnd) -> list:
        self._streaming = False
        self.backend.cache.append(list(self.context[:-1]))
        return [end]

    def abort(self) -> None:
        if self._streaming and self._abort_left is None:
            self._abort_left = self.backend.after_abort

    def truncate(self, n_tokens: int) -> None:
        assert not self._streaming
        del self.context[n_tokens:]

    def close(self) -> None:
        self._streaming = False


class ScriptedRemoteBackend(_ScriptedModel, RemoteBackend):
    def __init__(self, pieces: list[bytes], after_abort: int = 1, fail_at: int | None = None) -> None:
        super().__init__(pieces)
        self.after_abort = after_abort
        self.fail_at = fail_at
        self.requests: list[dict] = []
        self.cache: list[list[int]] = []
        self.sequences: list[ScriptedRemoteSequence] = []

    def open_sequence(self, prompt_ids=()) -> ScriptedRemoteSequence:
        seq = ScriptedRemoteSequence(self)
        self.sequences.append(seq)
        return seq

    def sampling_params(self, *, max_new_tokens, temperature, top_p, seed, structural_tag=None) -> dict:
        params = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "sampling_seed": seed}
        if structural_tag:
            params["structural_tag"] = structural_tag
        return params


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
