"""Embedded CPU backend on llama-cpp-python.

KV design: a `Llama` object holds exactly one sequence, so each task gets its own `Llama` context
over the same memory-mapped GGUF weights (each extra context costs ~126 MB at n_ctx 4096 and
~0.3 s to create; decoding round-robin over several gives the same aggregate tok/s as one).
Contexts are pooled and reset between tasks. The scheduler interleaves tasks round-robin, one
token per step, so a waiting task never costs decode steps.

LoRA adapters (a tuned catalog model): not `Llama(lora_path=...)`, which turns mmap off so every
context would hold a private copy of the weights. Each context's own llama_model loads the adapter
(a few MB, copied into that model's buffers) and the context applies it; the weights stay mapped
and shared. The model frees its adapters when it is freed, i.e. when the context is dropped.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any

import numpy as np

from engine.backends.base import BackendError, LocalBackend, Sequence
from engine.catalog import ModelSpec


class LlamaSequence(Sequence):
    def __init__(self, backend: LlamaCppBackend, llama: Any) -> None:
        self._backend = backend
        self._llama = llama
        self._closed = False

    @property
    def n_tokens(self) -> int:
        return int(self._llama.n_tokens)

    @property
    def llama(self) -> Any:
        """The llama_cpp.Llama context under this sequence (for benchmarks that drive it bare)."""
        return self._llama

    def append(self, ids: Seq[int]) -> None:
        if not ids:
            return
        if self.n_tokens + len(ids) > self._backend.n_ctx:
            raise BackendError(
                f"context full: {self.n_tokens} + {len(ids)} tokens exceed n_ctx={self._backend.n_ctx}"
            )
        self._llama.eval(list(ids))

    def logits(self) -> np.ndarray:
        if self.n_tokens == 0:
            raise BackendError("no logits before the first append")
        return self.logits_view().copy()

    def logits_view(self) -> np.ndarray:
        """The last position's logits in llama.cpp's own buffer (valid until the next eval)."""
        ptr = self._llama._ctx.get_logits()  # logits_all=False: only the last position's
        view: np.ndarray = np.ctypeslib.as_array(ptr, shape=(self._backend.n_vocab,))
        return view

    def truncate(self, n_tokens: int) -> None:
        if not 0 <= n_tokens <= self.n_tokens:
            raise BackendError(f"cannot truncate to {n_tokens} tokens (have {self.n_tokens})")
        # eval() clears the KV cells from n_tokens on before writing, so this is a rollback.
        self._llama.n_tokens = n_tokens

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._backend._release(self._llama)


class LlamaVocab:
    """The tokenizer side of both llama.cpp backends, from one `llama_cpp.Llama` object."""

    spec: ModelSpec
    n_vocab: int

    def _init_vocab(self, llama: Any) -> None:
        self._tokenizer = llama
        self.n_vocab = int(llama.n_vocab())
        self._piece_cache: dict[int, bytes] = {}
        self._stop = frozenset(
            {int(llama.token_eos())}
            | {ids[0] for s in self.spec.stop_tokens if len(ids := self.tokenize(s, special=True)) == 1}
        )

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return list(self._tokenizer.tokenize(text.encode("utf-8"), add_bos=False, special=special))

    def token_bytes(self, token_id: int) -> bytes:
        piece = self._piece_cache.get(token_id)
        if piece is None:
            piece = self._piece_cache[token_id] = self._tokenizer.detokenize([token_id], special=False)
        return piece

    def stop_ids(self) -> frozenset[int]:
        return self._stop


class LlamaCppBackend(LlamaVocab, LocalBackend):
    constrained_calls = True

    def __init__(self, spec: ModelSpec, path: Path, *, adapter_path: Path | None = None, n_ctx: int = 4096,
                 n_threads: int = 2, max_idle_contexts: int = 4) -> None:
        """`adapter_path`: the verified GGUF LoRA adapter of a tuned model (None: the plain model)."""
        import llama_cpp

        self.spec = spec
        self._path = str(path)
        self._adapter_path = None if adapter_path is None else str(adapter_path)
        self._adapter_scale = spec.adapter.scale if spec.adapter is not None else 1.0
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._max_idle = max_idle_contexts
        self._idle: list[Any] = []  # llama_cpp.Llama contexts (the binding is untyped)
        self._lock = threading.Lock()
        self._llama_cls = llama_cpp.Llama
        try:
            first = self._new_context()
        except BackendError:
            raise
        except Exception as exc:  # llama.cpp raises ValueError on unreadable files
            raise BackendError(f"could not load {spec.name} from {path}: {exc}") from exc
        self._idle.append(first)
        self._init_vocab(first)

    def _new_context(self) -> Any:
        llama = self._llama_cls(
            model_path=self._path,
            n_ctx=self._n_ctx,
            n_batch=256,
            n_threads=self._n_threads,
            n_threads_batch=self._n_threads,
            logits_all=False,
            verbose=False,
        )
        if self._adapter_path is not None:
            self._apply_adapter(llama)
        return llama

    def _apply_adapter(self, llama: Any) -> None:
        assert self._adapter_path is not None
        try:
            apply_adapter(llama, llama._ctx.ctx, self._adapter_path, self._adapter_scale, self.spec.name)
        except BackendError:
            llama.close()  # frees the model, which frees its adapters
            raise

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def open_sequence(self, prompt_ids: Seq[int] = ()) -> LlamaSequence:
        """A sequence for a new task. Idle contexts keep their KV cache, so the one sharing the
        longest prefix with `prompt_ids` is reused and only the rest needs prefilling (the system
        prompt, tools and examples are identical across most tasks)."""
        prompt = np.asarray(prompt_ids, dtype=np.intc)
        with self._lock:
            best, best_len = None, -1
            for llama in self._idle:
                shared = common_prefix(llama.input_ids[: llama.n_tokens], prompt)
                if shared > best_len:
                    best, best_len = llama, shared
            if best is not None:
                self._idle.remove(best)
        if best is None:
            best, best_len = self._new_context(), 0
        # Keep at least one prompt token to evaluate: its logits start the decode.
        best.n_tokens = max(0, min(best_len, len(prompt) - 1))
        return LlamaSequence(self, best)

    def drop_cache(self) -> None:
        """Forget what idle contexts hold, so the next task starts cold (benchmarks)."""
        with self._lock:
            for llama in self._idle:
                llama.reset()

    def _release(self, llama: Any) -> None:
        with self._lock:
            if len(self._idle) < self._max_idle or llama is self._tokenizer:
                self._idle.append(llama)


def apply_adapter(llama: Any, ctx: Any, adapter_path: str, scale: float, model_name: str) -> None:
    """Load the LoRA adapter into `llama`'s model and apply it to the context `ctx` (a
    llama_context pointer); BackendError says why not."""
    import llama_cpp

    log: list[str] = []
    with _llama_log_to(log):  # llama.cpp's reasons, and not a warning per tensor on stderr
        adapter = llama_cpp.llama_adapter_lora_init(llama._model.model, adapter_path.encode())
    if not adapter:
        errors = " ".join(line.strip() for line in log if "error" in line.lower() or "fail" in line.lower())
        raise BackendError(
            f"could not load adapter {adapter_path} for {model_name}: llama.cpp refused it "
            f"(not a GGUF LoRA adapter, or made for another base model): {errors or 'no reason given'}"
        )
    adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
    scales = (ctypes.c_float * 1)(scale)
    if llama_cpp.llama_set_adapters_lora(ctx, adapters, 1, scales) != 0:
        raise BackendError(f"could not apply adapter {adapter_path} to a context of {model_name}")
    # Owned by the model (freed with it); kept here so it is plain which one applies.
    llama._asynclm_adapter = adapter


@contextlib.contextmanager
def _llama_log_to(lines: list[str]) -> Iterator[None]:
    """Collect llama.cpp's log lines (a process-wide callback) instead of printing them, for the
    duration of one call on this thread; llama-cpp-python's own callback is restored after."""
    import llama_cpp
    from llama_cpp import _logger

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:  # noqa: ARG001
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.nonzero(a[:n] != b[:n])[0]
    return int(differ[0]) if len(differ) else n
