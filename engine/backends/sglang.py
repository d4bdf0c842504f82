"""SGLang backend: the model runs on an SGLang server, reached over its native HTTP API.

SGLang samples on the server, so a task's sequence is a stream of tokens rather than logits
(RemoteSequence). It has no way to add tokens to a running request, so an interrupt is injected
by abort and resubmit: `POST /abort_request` for the running request (only after its first chunk
arrived: earlier aborts are dropped), read its stream to the final chunk (a token or two may
follow the abort; the final `output_ids` are authoritative), then `POST /generate` again with
`input_ids` = everything so far + the interrupt's tokens. The server's radix cache still holds the
old tokens, so only the interrupt is prefilled; every submission's `cached_tokens` is reported.

Token ids always travel as ids (never re-tokenised text) and text is tokenised by the server's
own `/tokenize`, so the ids cannot drift from the server's tokenizer. The service never imports
`sglang`: it needs only an HTTP client.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

import httpx

from engine.backends.base import BackendError, RemoteBackend, RemoteSequence, StreamEnd, Submission
from engine.backends.sglang_protocol import DONE, Chunk, ProtocolError, SseReader, StreamError, StreamState, parse_event
from engine.catalog import PROBE_TEXT, ModelSpec

log = logging.getLogger(__name__)

# Fixed length: SGLang matches /abort_request rids by prefix, so no rid may prefix another.
RID_PREFIX = "asynclm-"


def new_rid() -> str:
    return RID_PREFIX + uuid.uuid4().hex


@dataclass
class _Stream:
    rid: str
    input_len: int
    first_chunk: threading.Event = field(default_factory=threading.Event)
    abort_wanted: bool = False
    abort_sent: bool = False
    # The reader (first chunk seen) and the engine (abort wanted) race: one of them must send.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def abort_due(self, *, first_chunk: bool = False, wanted: bool = False) -> bool:
        """Record an event; True exactly once: when the abort is wanted and may be sent."""
        with self.lock:
            if first_chunk:
                self.first_chunk.set()
            self.abort_wanted = self.abort_wanted or wanted
            if self.abort_wanted and self.first_chunk.is_set() and not self.abort_sent:
                self.abort_sent = True
                return True
            return False


class SGLangSequence(RemoteSequence):
    def __init__(self, backend: SGLangBackend) -> None:
        self._backend = backend
        self._context: list[int] = []
        self._items: queue.SimpleQueue[tuple[int, str] | StreamEnd] = queue.SimpleQueue()
        self._stream: _Stream | None = None
        self._lock = threading.Lock()
        self._abort_sent_at: float | None = None
        self.submissions: list[Submission] = []

    @property
    def n_tokens(self) -> int:
        return len(self._context)

    @property
    def streaming(self) -> bool:
        return self._stream is not None

    def submit(self, extra_ids: Seq[int], params: dict[str, Any], reason: str) -> None:
        if self._stream is not None:
            raise BackendError("a request is still streaming: abort it and read it to its end first")
        expected_cached = len(self._context)
        self._context.extend(extra_ids)
        stream = _Stream(new_rid(), len(self._context))
        self._stream = stream
        submission = Submission(stream.rid, reason, expected_cached)
        self.submissions.append(submission)
        aborted_at, self._abort_sent_at = self._abort_sent_at, None
        body = {"rid": stream.rid, "input_ids": list(self._context), "stream": True, "sampling_params": params}
        if self._backend.lora:
            body["lora_path"] = self._backend.lora  # the adapter's name on the server
        threading.Thread(target=self._read, args=(stream, body, submission, aborted_at), daemon=True,
                         name=f"sglang-{stream.rid[-6:]}").start()

    def _read(self, stream: _Stream, body: dict[str, Any], submission: Submission, aborted_at: float | None) -> None:
        """Reader thread: SSE chunks -> (token id, text) items, then one StreamEnd."""
        state = StreamState()
        reader = SseReader()
        end: StreamEnd | None = None
        try:
            with self._backend.client.stream("POST", "/generate", json=body,
                                             timeout=self._backend.stream_timeout) as response:
                if response.status_code != 200:
                    detail = response.read().decode("utf-8", "replace")[:300]
                    raise BackendError(f"SGLang refused the request: HTTP {response.status_code} {detail}")
                for data in response.iter_bytes():
                    for payload in reader.feed(data):
                        event = parse_event(payload)
                        if event == DONE:
                            break
                        if isinstance(event, StreamError):
                            raise BackendError(f"SGLang stream error: {event.message} (code {event.code})")
                        assert isinstance(event, Chunk)
                        if event.finish is not None and event.finish.type == "abort" and not stream.abort_sent:
                            # Not our abort: the server refused the request (a grammar it could not
                            # compile comes back as HTTP 200, a token and this). Nothing of it is
                            # shown: the task fails before any token.
                            raise BackendError(f"the server aborted the request: {event.finish.message}")
                        if state.first is None:
                            if aborted_at is not None:
                                submission.abort_to_first_token_ms = round((time.monotonic() - aborted_at) * 1000, 2)
                            submission.prompt_tokens = event.prompt_tokens
                            submission.cached_tokens = event.cached_tokens
                            if stream.abort_due(first_chunk=True):
                                self._send_abort(stream)
                        for item in state.advance(event):
                            self._items.put(item)
                        self._backend.notify()
                        if event.finish is not None:
                            end = StreamEnd(event.finish.type, event.finish.message)
            if end is None:
                end = StreamEnd("error", message="the stream ended without a finish reason (server restarted?)")
        except (httpx.HTTPError, ProtocolError, BackendError) as exc:
            end = StreamEnd("error", message=_describe(exc, self._backend.url))
        finally:
            stream.first_chunk.set()
        with self._lock:
            self._context.extend(state.output_ids)
            if self._stream is stream:
                self._stream = None
        self._items.put(end)
        self._backend.notify()

    def poll(self) -> list[tuple[int, str] | StreamEnd]:
        out: list[tuple[int, str] | StreamEnd] = []
        while True:
            try:
                out.append(self._items.get_nowait())
            except queue.Empty:
                return out

    def abort(self) -> None:
        stream = self._stream
        if stream is not None and stream.abort_due(wanted=True):
            self._send_abort(stream)

    def _send_abort(self, stream: _Stream) -> None:
        self._abort_sent_at = time.monotonic()
        try:
            self._backend.client.post("/abort_request", json={"rid": stream.rid}, timeout=5)
        except httpx.HTTPError as exc:  # the stream still ends (or fails) on its own
            log.warning("abort of %s failed: %s", stream.rid, exc)

    def truncate(self, n_tokens: int) -> None:
        with self._lock:
            if self._stream is not None:
                raise BackendError("cannot truncate while a request streams")
            if not 0 <= n_tokens <= len(self._context):
                raise BackendError(f"cannot truncate to {n_tokens} tokens (have {len(self._context)})")
            del self._context[n_tokens:]

    def close(self) -> None:
        self.abort()


class ServedModelMismatch(BackendError):
    """The server serves another model than the catalog entry it is configured for."""


class SGLangBackend(RemoteBackend):
    """`served_name`: what the server must report as its model (`model_path` or
    `served_model_name`), for servers that load from a local path; checked when given. The
    architecture and a tokenizer probe (engine/catalog.py) are always checked: a server with
    another model refuses to start, and so the engine fails its tasks with the reason. `lora`: the
    name of a LoRA adapter the server was started with (`--enable-lora --lora-paths NAME=DIR`),
    applied to every request of a tuned model."""

    def __init__(self, spec: ModelSpec, url: str, *, notify: Callable[[], None] = lambda: None,
                 timeout_s: float = 10.0, stream_timeout_s: float = 300.0, served_name: str = "",
                 lora: str = "") -> None:
        self.spec = spec
        self.lora = lora
        self.url = url.rstrip("/")
        self.notify = notify
        self.client = httpx.Client(base_url=self.url, timeout=timeout_s)
        self.stream_timeout = httpx.Timeout(timeout_s, read=stream_timeout_s)
        self._cache: dict[tuple[str, bool], list[int]] = {}
        try:
            info = self._tokenize_call("<|im_end|>")
        except BackendError as exc:
            raise BackendError(f"SGLang server for {spec.name} is not usable: {exc}") from exc
        self._n_ctx = int(info["max_model_len"])
        self.served = self._served_model()
        self.served_model = self.served["model_path"]
        self.deterministic = self.served["deterministic"]
        self._check_served(served_name)
        self._stop = frozenset(ids[0] for s in spec.stop_tokens if len(ids := self.tokenize(s, special=True)) == 1)
        self.n_vocab = 0  # not needed: the server samples

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def reproducible(self, temperature: float) -> bool:
        # Without --enable-deterministic-inference the server ignores `sampling_seed`.
        return self.deterministic or temperature <= 0

    def _get(self, path: str) -> dict[str, Any]:
        try:
            response = self.client.get(path)
            body = response.json() if response.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            body = {}
        return body if isinstance(body, dict) else {}

    def _served_model(self) -> dict[str, Any]:
        """What the server says it serves (recorded by the benchmark with its results)."""
        model, server = self._get("/get_model_info"), self._get("/get_server_info")
        return {
            "model_path": str(model.get("model_path", "")),
            "served_model_name": str(model.get("served_model_name", "") or server.get("served_model_name", "")),
            "architectures": [str(a) for a in model.get("architectures") or []],
            "version": str(server.get("version", "")),
            "deterministic": bool(server.get("enable_deterministic_inference", False)),
            "lora_paths": server.get("lora_paths"),
        }

    def _check_served(self, served_name: str) -> None:
        spec, served = self.spec, self.served
        problems = []
        if served_name and served_name not in (served["model_path"], served["served_model_name"]):
            problems.append(f"it reports {served['model_path']!r}, not {served_name!r}")
        if spec.hf_architecture and spec.hf_architecture not in served["architectures"]:
            problems.append(f"its architecture is {served['architectures'] or 'unknown'}, "
                            f"not {spec.hf_architecture}")
        if spec.probe_ids:
            got = self._tokenize_call(PROBE_TEXT)["tokens"]
            if [int(i) for i in got] != list(spec.probe_ids):
                problems.append(f"its tokenizer differs (probe ids {list(got)[:8]}..., expected "
                                f"{list(spec.probe_ids)[:8]}...)")
        if self.lora and self.lora not in json.dumps(served["lora_paths"] or []):
            problems.append(f"it has no LoRA adapter named {self.lora!r} (start it with --enable-lora --lora-paths "
                            f"{self.lora}=DIR; python -m finetune.peft writes DIR from the shipped adapter)")
        if problems:
            raise ServedModelMismatch(
                f"the SGLang server at {self.url} does not serve {spec.name} ({spec.hf_repo}): "
                + "; ".join(problems) + ". Start it with that model, or map the name with ASYNCLM_SGLANG_SERVED.")

    def _tokenize_call(self, text: str) -> dict[str, Any]:
        try:
            response = self.client.post("/tokenize", json={"prompt": text, "add_special_tokens": False})
        except httpx.HTTPError as exc:
            raise BackendError(_describe(exc, self.url)) from exc
        if response.status_code != 200:
            raise BackendError(f"/tokenize answered HTTP {response.status_code}: {response.text[:200]}")
        body: dict[str, Any] = response.json()
        return body

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """The server's own token ids. Its tokenizer always parses template markers, so for text
        that must stay text (special=False: a person's message, a tool result) a zero-width space
        breaks any marker written into it: such text cannot forge a chat turn."""
        if not special:
            text = text.replace("<|", "<\u200b|")
        key = (text, special)
        ids = self._cache.get(key)
        if ids is None:
            ids = [int(i) for i in self._tokenize_call(text)["tokens"]]
            if len(self._cache) < 10_000:
                self._cache[key] = ids
        return list(ids)

    def token_bytes(self, token_id: int) -> bytes:
        raise BackendError("the SGLang backend streams text with its tokens")

    def stop_ids(self) -> frozenset[int]:
        return self._stop

    def open_sequence(self, prompt_ids: Seq[int] = ()) -> SGLangSequence:
        return SGLangSequence(self)

    def sampling_params(self, *, max_new_tokens: int, temperature: float, top_p: float, seed: int,
                        stop_regex: str | None = None, structural_tag: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {
            "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
            "sampling_seed": seed, "stop_token_ids": sorted(self._stop), "skip_special_tokens": False,
        }
        if stop_regex:
            params["stop_regex"] = stop_regex
        if structural_tag:
            params["structural_tag"] = structural_tag
        return params


def _describe(exc: Exception, url: str) -> str:
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect to the SGLang server at {url} ({exc})"
    if isinstance(exc, httpx.TimeoutException):
        return f"the SGLang server at {url} did not answer in time ({type(exc).__name__})"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"the SGLang server at {url} cut the stream ({exc})"
    return str(exc)
