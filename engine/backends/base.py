"""The per-step contract between the engine core and a model backend.

A backend owns model weights; a Sequence is one task's KV state on top of them. The core drives
a sequence token by token: `append` evaluates tokens onto the KV cache (the prompt, one sampled
token, or later an interrupt's tokens without re-prefilling anything), `logits` exposes the
next-token distribution, and `truncate` rolls the cache back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.catalog import ModelSpec


class BackendError(Exception):
    """The backend cannot serve a request (context full, model failed to load, ...)."""


class Sequence(ABC):
    @property
    @abstractmethod
    def n_tokens(self) -> int: ...

    @abstractmethod
    def append(self, ids: Seq[int]) -> None:
        """Evaluate `ids` on top of the current KV state."""

    @abstractmethod
    def logits(self) -> np.ndarray:
        """Next-token logits after the last append (1-D, vocabulary sized)."""

    @abstractmethod
    def truncate(self, n_tokens: int) -> None:
        """Forget everything after the first `n_tokens` tokens."""

    @abstractmethod
    def close(self) -> None:
        """Give the KV state back to the backend."""

    # True once the sequence's tokens were evaluated in a batch together with another sequence's
    # (a batching backend): llama.cpp's numbers depend slightly on a batch's shape, so the same
    # greedy task run again need not write the same text.
    @property
    def batched_with_others(self) -> bool:
        return False

    # True where `append` only records the work and returns (its cost shows in `busy_s`): the
    # engine then appends a sampled token at once, so the work overlaps the engine's bookkeeping.
    defers_work = False

    def work_s(self) -> float | None:
        """Seconds of evaluation this sequence's appends have cost since it was opened, for a
        backend whose `append` only queues and evaluates later in a shared batch (the whole
        batch's time: what the task waited for). None where `append` itself does the work, so its
        duration is the cost."""
        return None

    def busy_s(self) -> float:
        """Seconds until the last append's work is done (0: ready). A backend that models a
        device's timing (the simulated decoder) answers here instead of sleeping, so the engine
        loop steps other tasks meanwhile; a real backend's work is done when `append` returns."""
        return 0.0


@dataclass(frozen=True)
class StreamEnd:
    """A remote request ended: "stop", "length", "abort" (asked for) or "error"."""

    finish: str
    message: str = ""


@dataclass
class Submission:
    """One request to a remote server: what it carried and what its prefix cache held."""

    rid: str
    reason: str  # "prompt" | "interrupt" | "continue"
    expected_cached: int  # tokens the server had already seen in this context
    prompt_tokens: int | None = None  # from the first chunk's meta_info
    cached_tokens: int | None = None
    abort_to_first_token_ms: float | None = None  # previous request's abort sent -> this one's first chunk


class RemoteSequence(ABC):
    """A task's context on a server that samples for itself (SGLang): the engine submits the
    context, reads the tokens the server streams back, and to inject an interrupt aborts the
    request and submits again with the interrupt appended."""

    submissions: list[Submission]

    @property
    @abstractmethod
    def n_tokens(self) -> int:
        """Tokens in the context: submitted, plus generated ones of finished requests."""

    @property
    @abstractmethod
    def streaming(self) -> bool: ...

    @abstractmethod
    def submit(self, extra_ids: Seq[int], params: dict[str, Any], reason: str) -> None:
        """Append `extra_ids` to the context and start generating from it."""

    @abstractmethod
    def poll(self) -> list[tuple[int, str] | StreamEnd]:
        """What arrived since the last poll, without waiting: (token id, its text) items, then a
        StreamEnd once the request is over (its tokens are then part of the context)."""

    @abstractmethod
    def abort(self) -> None:
        """Ask the server to stop the running request; it still ends with a StreamEnd."""

    @abstractmethod
    def truncate(self, n_tokens: int) -> None:
        """Forget everything after the first `n_tokens` tokens (not while streaming)."""

    @abstractmethod
    def close(self) -> None: ...


class Backend(ABC):
    """What every backend offers: the model's tokenizer and limits. A backend is one of the two
    kinds below; the engine picks its driver (engine/drivers) by the kind."""

    spec: ModelSpec
    n_vocab: int
    # A token id means the same text in every process (a model's vocabulary); False for a backend
    # that numbers pieces as it meets them (the simulated decoder): a resumed task's record is
    # then read by its tokens' texts.
    stable_token_ids: bool = True

    @property
    @abstractmethod
    def n_ctx(self) -> int: ...

    def reproducible(self, temperature: float) -> bool:
        """Whether the same seed gives the same tokens at this temperature (the engine's own
        sampler: always; a server that samples: see its backend)."""
        return True

    @abstractmethod
    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Token ids of `text`; `special=True` parses template markers like <|im_start|>."""

    @abstractmethod
    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes of one token (may be part of a multi-byte character)."""

    def vocab_texts(self) -> list[str]:
        """Every token's text (lossy for partial UTF-8), indexed by id; cached by the caller."""
        return [self.token_bytes(i).decode("utf-8", errors="replace") for i in range(self.n_vocab)]

    @abstractmethod
    def stop_ids(self) -> frozenset[int]:
        """Ids that end generation (end of sequence, end of turn)."""



class LocalBackend(Backend):
    """The engine holds the KV state and samples from the logits (llama.cpp, the simulated decoder)."""

    constrained_calls = False  # True: the engine writes call ids and masks call bodies (engine/constrain.py)

    @abstractmethod
    def open_sequence(self, prompt_ids: Seq[int] = ()) -> Sequence:
        """A fresh KV state for a task. It may already hold a prefix of `prompt_ids` (a reused
        cache): the caller evaluates only `prompt_ids[seq.n_tokens:]`."""

    def flush(self) -> bool:
        """A batching backend queues appends and evaluates them together here, once every
        runnable task has queued its work (its sequences are busy until then). Returns whether
        there was work. Others evaluate in `append`."""
        return False


class RemoteBackend(Backend):
    """A server samples for itself (SGLang): the engine submits contexts and reads streams."""

    @abstractmethod
    def open_sequence(self, prompt_ids: Seq[int] = ()) -> RemoteSequence:
        """A task's context on the server (empty: the prompt goes with the first submission)."""

    @abstractmethod
    def sampling_params(
        self, *, max_new_tokens: int, temperature: float, top_p: float, seed: int, structural_tag: str | None = None
    ) -> dict[str, Any]:
        """The request's sampling parameters in the server's own terms."""
