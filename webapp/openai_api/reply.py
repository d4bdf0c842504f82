"""A task's trace as an OpenAI chat reply: what the model wrote outside its CML blocks becomes
`content`, each call a `tool_calls` entry, each result our own `asynclm_tool_result` field.

`Reply.feed(event)` returns the deltas that event adds (the `delta` objects of a streamed
`chat.completion.chunk`); `Reply.message()` the whole message once the trace has ended. Both come
from the same fold, so a streamed reply and a non-streamed one say the same thing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from engine.cml import Monitor, Text

# The engine's reasons for ending, in OpenAI's words: only "stop" and "length" exist there (the
# tools ran on the server, so a reply never ends with "tool_calls").
FINISH_REASONS = {"length": "length", "context_full": "length", "time_limit": "length"}


@dataclass
class Reply:
    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tool_results: list[dict[str, Any]] = field(default_factory=list)
    finish: dict[str, Any] | None = None  # the finish event's payload
    prompt_tokens: int = 0
    _monitor: Monitor = field(default_factory=Monitor)
    _call_index: dict[str, int] = field(default_factory=dict)

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind, p = event["kind"], event["payload"]
        if kind == "token":
            return self._text(self._monitor.feed(p.get("text", "")))
        if kind == "prefill":
            self.prompt_tokens = int(p.get("prompt_tokens", 0))
        elif kind in ("call_decoded", "call_error"):
            return self._call(p)
        elif kind == "call_result":
            result = {"tool_call_id": p["call_id"], "ok": bool(p["ok"]), "content": p.get("injected", ""),
                      "error": p.get("error", "")}
            self.tool_results.append(result)
            return [{"asynclm_tool_result": result}]
        elif kind == "finish":
            self.finish = p
            return self._text(self._monitor.close())
        return []

    def _text(self, pieces: list[Any]) -> list[dict[str, Any]]:
        text = "".join(piece.text for piece in pieces if isinstance(piece, Text))
        if not self.content:
            text = text.lstrip()  # the blank a model writes after a block it opened with
        if not text:
            return []
        self.content += text
        return [{"content": text}]

    def _call(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        call_id = p["call_id"]
        if call_id in self._call_index:  # decoded again by an engine that resumed the task
            return []
        self._call_index[call_id] = len(self.tool_calls)
        call = {"id": call_id, "type": "function",
                "function": {"name": p.get("name", ""), "arguments": json.dumps(p.get("args", {}))}}
        self.tool_calls.append(call)
        return [{"tool_calls": [{"index": self._call_index[call_id], **call}]}]

    # -- the end -------------------------------------------------------------------------
    @property
    def status(self) -> str:
        return str((self.finish or {}).get("status", ""))

    @property
    def finish_reason(self) -> str:
        return FINISH_REASONS.get(str((self.finish or {}).get("finish_reason", "")), "stop")

    def usage(self) -> dict[str, int]:
        metrics = (self.finish or {}).get("metrics") or {}
        completion = int(metrics.get("tokens", 0) or 0)
        prompt = int(metrics.get("prompt_tokens", self.prompt_tokens) or 0)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "asynclm_injected_tokens": int(metrics.get("injected_tokens", 0) or 0)}

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content, "refusal": None}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
            message["asynclm_tool_results"] = self.tool_results
        return message
