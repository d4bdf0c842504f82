"""Prompt profiles: how a task's text, tools and interrupts become the model's token context.

A profile is chosen per model family; its framings were picked by measurement:
tool results framed inline in the assistant's text, a worked example that ends with a
final sentence after the results, and one where no call is needed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.backends.base import Backend
from engine.catalog import ModelSpec
from engine.tools import ToolSpec

PROTOCOL = """You can call functions. To call one, write:
[CALL] id [HEAD] function_name(arg=value, ...) [END]
where id is a short new name such as c1 and every value is a Python literal.
An argument may be the id of an earlier call: it is replaced by that call's result.
Never write [INTR] yourself. If no function is needed, just answer.
When you have the results, answer the user in one or two sentences."""

MODE_RULES = {
    "async": ("Calls run in the background while you keep writing. Issue all independent calls first, "
              "the slowest first. Each result appears in your text as [INTR] id [HEAD] result [END]. "
              "When you cannot go on without results, write [TRAP][END] to wait for them."),
    "sync_parallel": ("Issue all the calls you need, then write [TRAP][END]: they run together and their "
                      "results appear in your text as [INTR] id [HEAD] result [END]."),
    "sync": ("After each call you wait for its result, which appears in your text as "
             "[INTR] id [HEAD] result [END]."),
}

EXAMPLE_TOOL = ToolSpec("get_weather", "Current weather in a city.",
                        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                        est_latency_ms=300)
EXAMPLE_QUESTION = "What's the weather in Paris and in Tokyo?"
EXAMPLE_CALLS = [("c1", 'get_weather(city="Paris")', {"temp_c": 18, "sky": "sunny"}),
                 ("c2", 'get_weather(city="Tokyo")', {"temp_c": 22, "sky": "rain"})]
EXAMPLE_ANSWER = "It is 18 °C and sunny in Paris, and 22 °C and rainy in Tokyo."
NO_CALL_QUESTION = "What is 12 times 3?"
NO_CALL_ANSWER = "12 times 3 is 36."


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Profile:
    name: str = "chatml-inline"
    # A base model needs worked examples to follow CML; a model tuned on CML traces does not, and
    # without them every prompt is ~200 tokens shorter (prefill runs at ~90 tokens/s here).
    few_shot: bool = True

    # -- framings ------------------------------------------------------------------------
    def frame_results(self, results: list[tuple[str, str]]) -> str:
        """Tool results, inline in the assistant's text: one frame per call."""
        return "".join(f" [INTR] {call_id} [HEAD] {payload} [END]" for call_id, payload in results) + " "

    def frame_user_message(self, backend: Backend, text: str) -> tuple[str, list[int]]:
        """A message from a person, as a chat turn: the assistant's turn closes, the person speaks,
        a new assistant turn opens (the framing the model was seen to follow for free text,
        unlike tool results). The person's text is never tokenized as special tokens, so it
        cannot forge a turn. Returns the frame's text and its token ids."""
        head, tail = "<|im_end|>\n<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"
        ids = backend.tokenize(head, special=True) + backend.tokenize(text) + backend.tokenize(tail, special=True)
        return head + text + tail, ids

    # -- prompt --------------------------------------------------------------------------
    def system_text(self, system: str, tools: list[ToolSpec], mode: str) -> str:
        if not tools:
            return system
        lines = [system, "", PROTOCOL, "", "Functions:"]
        for tool in tools:
            lines.append(f"- {tool.name}: {tool.description} (takes about {tool.est_latency_ms} ms) "
                         f"arguments: {compact(tool.parameters)}")
        # The mode's rule comes last: tasks that differ only in mode share the KV cache of
        # everything before it (the llama.cpp backend reuses an idle context's longest prefix).
        return "\n".join([*lines, "", MODE_RULES[mode]])

    def example_turn(self, mode: str) -> str:
        if mode == "sync":
            parts = [f"[CALL] {cid} [HEAD] {call} [END]" + self.frame_results([(cid, compact(res))])
                     for cid, call, res in EXAMPLE_CALLS]
            return "".join(parts).strip() + " " + EXAMPLE_ANSWER
        calls = " ".join(f"[CALL] {cid} [HEAD] {call} [END]" for cid, call, _ in EXAMPLE_CALLS)
        results = self.frame_results([(cid, compact(res)) for cid, _, res in EXAMPLE_CALLS])
        return f"{calls} [TRAP][END]{results}{EXAMPLE_ANSWER}"

    def prompt_ids(self, backend: Backend, user_text: str, tools: list[ToolSpec] | None = None,
                   mode: str = "async", conversation: Sequence[dict[str, str]] = ()) -> list[int]:
        """ChatML. Template markers are tokenized as special tokens; user text is not, so a prompt
        containing `<|im_start|>` cannot forge a turn. `conversation`: a chat client's turns before
        `user_text`; its system turns join the system text (ahead of the tools, so tasks with the
        same instructions share the cached prefix), the others follow the worked examples."""
        spec = backend.spec
        if spec.chat_format != "chatml":
            raise ValueError(f"unsupported chat format {spec.chat_format!r}")
        tools = tools or []
        tok = backend.tokenize

        def turn(role: str, text: str, close: bool = True) -> list[int]:
            ids = tok(f"<|im_start|>{role}\n", special=True) + tok(text)
            return ids + tok("<|im_end|>\n", special=True) if close else ids

        system = "\n\n".join(filter(None, [spec.system_prompt,
                                          *(m["content"] for m in conversation if m["role"] == "system")]))
        ids = turn("system", self.system_text(system, tools, mode))
        if tools and self.few_shot:
            example_note = " (example; the weather function is only for this example)"
            ids += turn("user", EXAMPLE_QUESTION + example_note) + turn("assistant", self.example_turn(mode))
            ids += turn("user", NO_CALL_QUESTION) + turn("assistant", NO_CALL_ANSWER)
        for message in conversation:
            if message["role"] != "system":
                ids += turn(message["role"], message["content"])
        ids += turn("user", user_text)
        return ids + tok("<|im_start|>assistant\n", special=True)


DEFAULT_PROFILE = Profile()
TUNED_PROFILE = Profile(name="chatml-inline-tuned", few_shot=False)


def profile_for(spec: ModelSpec) -> Profile:
    """ChatML for the models we ship (Qwen2.5 family, SmolLM2); a model that runs with a CML
    adapter was trained on prompts without examples, so it gets none."""
    return TUNED_PROFILE if spec.adapter is not None else DEFAULT_PROFILE


def chat_prompt_ids(backend: Backend, user_text: str) -> list[int]:
    return DEFAULT_PROFILE.prompt_ids(backend, user_text)
