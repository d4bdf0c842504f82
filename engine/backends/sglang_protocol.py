"""SGLang's native HTTP protocol as the engine reads it (SGLang 0.5.23, `POST /generate` with
`stream: true`): server-sent events whose `data:` lines each hold a JSON chunk with the
*cumulative* `text` and `output_ids` of the request and its `meta_info`, then `data: [DONE]`.
A failure mid-stream arrives as a `data:` object with an `error` member instead.

Pure parsing, no I/O: the backend feeds it lines; tests feed it recorded transcripts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

FINISH_TYPES = ("stop", "length", "abort")


class ProtocolError(ValueError):
    """The server sent something that is not SGLang's streaming protocol."""


@dataclass(frozen=True)
class Finish:
    type: str  # "stop" | "length" | "abort"
    matched: int | str | None = None  # stop: the stop token id or stop string that matched
    message: str = ""  # abort: why (e.g. "Aborted")
    status_code: int | None = None


@dataclass(frozen=True)
class Chunk:
    rid: str
    text: str  # cumulative
    output_ids: tuple[int, ...]  # cumulative
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    finish: Finish | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class StreamError:
    message: str
    code: int = 0


DONE = "[DONE]"


def parse_finish(value: Any) -> Finish | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in FINISH_TYPES:
        raise ProtocolError(f"unknown finish_reason {value!r}")
    return Finish(value["type"], matched=value.get("matched"), message=value.get("message") or "",
                  status_code=value.get("status_code"))


def parse_event(data: str) -> Chunk | StreamError | str:
    """One SSE `data:` payload: a Chunk, a StreamError, or DONE."""
    data = data.strip()
    if data == DONE:
        return DONE
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {data[:200]!r}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"expected an object, got {data[:200]!r}")
    if "error" in obj:
        err = obj["error"]
        if isinstance(err, dict):
            return StreamError(str(err.get("message", "")), int(err.get("code") or 0))
        return StreamError(str(err))
    meta = obj.get("meta_info")
    ids = obj.get("output_ids")
    if not isinstance(meta, dict) or not isinstance(ids, list) or not isinstance(obj.get("text"), str):
        raise ProtocolError(f"a chunk needs text, output_ids and meta_info: {data[:200]!r}")
    return Chunk(
        rid=str(meta.get("id", "")),
        text=obj["text"],
        output_ids=tuple(int(i) for i in ids),
        prompt_tokens=int(meta.get("prompt_tokens") or 0),
        completion_tokens=int(meta.get("completion_tokens") or 0),
        cached_tokens=int(meta.get("cached_tokens") or 0),
        finish=parse_finish(meta.get("finish_reason")),
        meta=meta,
    )


class SseReader:
    """Splits a byte stream into SSE `data:` payloads (lines may arrive in any pieces)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[str]:
        self._buffer += data
        out: list[str] = []
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            line = line.rstrip(b"\r")
            if line.startswith(b"data:"):
                out.append(line[5:].decode("utf-8").strip())
        return out


@dataclass
class StreamState:
    """Turns cumulative chunks into new tokens with their text: each chunk's new text goes to
    its last new token (several tokens may arrive in one chunk)."""

    output_ids: tuple[int, ...] = ()
    text: str = ""
    first: Chunk | None = None
    last: Chunk | None = None

    def advance(self, chunk: Chunk) -> list[tuple[int, str]]:
        if chunk.output_ids[: len(self.output_ids)] != self.output_ids:
            raise ProtocolError("output_ids are not cumulative: an earlier token changed")
        if not chunk.text.startswith(self.text):
            raise ProtocolError("text is not cumulative: earlier text changed")
        new_ids = chunk.output_ids[len(self.output_ids):]
        new_text = chunk.text[len(self.text):]
        self.output_ids, self.text = chunk.output_ids, chunk.text
        self.first = self.first or chunk
        self.last = chunk
        if not new_ids:
            if new_text:
                raise ProtocolError("text grew without new output ids")
            return []
        return [(tid, "") for tid in new_ids[:-1]] + [(new_ids[-1], new_text)]
