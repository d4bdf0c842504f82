"""A test server that imitates SGLang 0.5.23's native HTTP API as recorded from a real server
(tests/fixtures/sglang-0.5.23), generating real tokens with the embedded model. Tests only: the
product never uses it, and numbers measured against it are the imitation's, not SGLang's.

What it imitates: `POST /generate` streaming cumulative `text` / `output_ids` chunks with
`meta_info` and a final `data: [DONE]`; `POST /abort_request` matching rids by prefix, ignoring
unknown ones and letting exactly two more tokens through; duplicate running rids refused;
`cached_tokens` from a prefix cache of earlier requests (all tokens whose KV was computed);
`POST /tokenize`; `GET /health`; `GET /get_model_info` reporting a local path, as a server that
loads the model from disk does; `GET /get_server_info` with its version and whether inference is
deterministic. As the real server (checked against one by `make test-sglang`):
`sampling_seed` is ignored unless it runs deterministic (`--deterministic`); a `structural_tag`
that does not compile comes back as HTTP 200 with one token and an abort carrying "Failed to
compile structural_tag grammar"; a triggered call tag constrains a block only when the request
itself generated its `[CALL]` (a request whose input ends inside a block is not constrained
unless its tag is a sequence that starts with the rest of that block). What it enforces of the
call grammar is the tool name (the real server enforces all of it). Every request it receives
and every chunk it sends is checked against SGLang's own contract (`sglang/api/v1/api_types.py`
from the `sglang` wheel, loaded by file path: importing the package would pull in torch).

Test hooks: `POST /_imitation/fail` {"mode": "cut" | "500"} makes the next /generate cut its
stream after a few tokens or answer HTTP 500; `GET /_imitation/log` returns the requests seen.

usage: python -m tests.sglang_imitation --port 30000 --model qwen2.5-coder-0.5b [--model-dir var/models]
       [--deterministic] [--served-path /srv/models/NAME]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import distribution
from pathlib import Path
from types import ModuleType

import numpy as np

from engine.backends.llamacpp import LlamaCppBackend
from engine.catalog import get_model
from engine.messages import Sampling
from engine.modelfiles import verified_path
from engine.sampling import sample


def load_contract() -> ModuleType:
    path = Path(str(distribution("sglang").locate_file("sglang/api/v1/api_types.py")))
    spec = importlib.util.spec_from_file_location("sglang_api_types", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


class GrammarError(ValueError):
    pass


NAME_RULE = re.compile(r"^name ::= (.*)$", re.M)
HEADER = re.compile(r"^ [A-Za-z_][A-Za-z0-9_]* \[HEAD\]")


class CallTag:
    """What the imitation reads of a `structural_tag` (the project's call tags): the tool names
    it allows, and whether the request starts inside a block (a sequence whose first element is
    the rest of that block). Anything else does not compile, as on the real server."""

    def __init__(self, raw: str) -> None:
        try:
            tag = json.loads(raw)
            fmt = tag["format"]
            if fmt["type"] == "sequence":
                rest, triggered = fmt["elements"][0]["grammar"], fmt["elements"][-1]
                self._check(rest)
                self.starts_inside = True
            else:
                triggered, self.starts_inside = fmt, False
            if triggered["type"] != "triggered_tags":
                raise GrammarError(f"unknown format type {triggered['type']!r}")
            grammar = triggered["tags"][0]["content"]["grammar"]
            self._check(grammar)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise GrammarError(f"Failed to compile structural_tag grammar: {exc}") from None
        names = NAME_RULE.search(grammar)
        self.names = json.loads("[" + names.group(1).replace(" | ", ", ") + "]") if names else []

    @staticmethod
    def _check(grammar: str) -> None:
        if "root ::=" not in grammar or grammar.count("(") != grammar.count(")"):
            raise GrammarError("EBNF parser error: expect element")

    @staticmethod
    def in_name(block: str) -> bool:
        """Is the block (text after `[CALL]`) past its header and not yet past the tool name?"""
        header = HEADER.match(block)
        return header is not None and "(" not in block[header.end():]

    def allows(self, block: str, piece: str) -> bool:
        """May `piece` follow the text `block` of a constrained call block, as far as the tool name goes?"""
        header = HEADER.match(block)
        assert header is not None
        if not piece:
            return False  # no end of sequence (or empty token) inside a block
        after = (block + piece)[header.end():]
        name = after[1:]
        return after.startswith(" ") and any(n.startswith(name) or name.startswith(n + "(") for n in self.names)


class Imitation:
    def __init__(self, backend: LlamaCppBackend, contract: ModuleType, *, deterministic: bool = False,
                 served_path: str = "", loras: dict[str, LlamaCppBackend] | None = None) -> None:
        self.backend = backend
        self.loras = loras or {}  # adapter name -> the model with that LoRA adapter applied
        self.api = contract
        self.deterministic = deterministic
        self.served_path = served_path or f"/srv/models/{backend.spec.name}"
        self.lock = threading.Lock()
        self.running: dict[str, dict] = {}  # rid -> {"abort_after": int | None}
        self.cache: list[list[int]] = []
        self.log: list[dict] = []
        self.fail: str | None = None

    def cached_tokens(self, ids: list[int]) -> int:
        best = 0
        for seq in self.cache:
            n = 0
            for a, b in zip(ids, seq, strict=False):
                if a != b:
                    break
                n += 1
            best = max(best, n)
        return min(best, max(0, len(ids) - 1))


class Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer
    protocol_version = "HTTP/1.1"

    @property
    def sim(self) -> Imitation:
        return self.server.imitation  # type: ignore[attr-defined]

    def log_message(self, format, *args):  # noqa: A002, ANN001 - quiet
        pass

    def _json(self, status: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def do_GET(self):  # noqa: N802
        if self.path == "/health":
            return self._json(200, {})
        if self.path == "/get_model_info":
            spec = self.sim.backend.spec
            return self._json(200, {"model_path": self.sim.served_path, "served_model_name": self.sim.served_path,
                                    "tokenizer_path": self.sim.served_path, "is_generation": True,
                                    "model_type": spec.hf_architecture.removesuffix("ForCausalLM").lower(),
                                    "architectures": [spec.hf_architecture]})
        if self.path == "/get_server_info":
            return self._json(200, {"version": "0.5.23", "model_path": self.sim.served_path,
                                    "served_model_name": self.sim.served_path,
                                    "enable_deterministic_inference": self.sim.deterministic,
                                    "lora_paths": sorted(self.sim.loras) or None})
        if self.path == "/_imitation/log":
            return self._json(200, self.sim.log)
        return self._json(404, {"error": {"message": "not found", "code": 404}})

    def do_POST(self):  # noqa: N802
        body = self._body()
        if self.path == "/tokenize":
            ids = self.sim.backend.tokenize(body["prompt"], special=True)  # HF tokenizers parse markers
            return self._json(200, {"tokens": ids, "count": len(ids), "max_model_len": self.sim.backend.n_ctx})
        if self.path == "/abort_request":
            self.sim.api.AbortRequest.from_json_value(body)
            rid = body.get("rid", "")
            with self.sim.lock:
                for running, state in self.sim.running.items():
                    if running.startswith(rid) and state["abort_after"] is None:
                        state["abort_after"] = 1  # two more tokens, as on the real server
            return self._json(200, {})
        if self.path == "/_imitation/fail":
            self.sim.fail = body["mode"]
            return self._json(200, {})
        if self.path == "/generate":
            return self.generate(body)
        return self._json(404, {"error": {"message": "not found", "code": 404}})

    def generate(self, body: dict) -> None:
        sim = self.sim
        try:
            request = sim.api.GenerateRequest.from_json_value(body)
        except sim.api.JsonContractError as exc:
            return self._json(400, {"error": {"message": f"contract: {exc}", "code": 400}})
        params = body.get("sampling_params") or {}
        sim.api.SamplingParams.from_json_value(params)
        rid, ids = body["rid"], list(body["input_ids"])
        sim.log.append({"rid": rid, "input_ids": ids, "sampling_params": params, "stream": request.stream,
                        "lora_path": body.get("lora_path")})
        lora = body.get("lora_path")
        if lora is not None and lora not in sim.loras:
            return self._json(400, {"error": {"message": f"Got LoRA adapter that has never been loaded: {lora}",
                                              "code": 400}})
        fail, sim.fail = sim.fail, None
        if fail == "500":
            return self._json(500, {"error": {"message": "internal server error (imitated)", "code": 500}})
        with sim.lock:
            if rid in sim.running:
                return self._json(400, {"error": {"message": f"Duplicate request ID {rid}", "code": 400}})
            sim.running[rid] = {"abort_after": None}
        try:
            self._stream(rid, ids, params, cut=fail == "cut", model=sim.loras.get(lora) if lora else None)
        finally:
            with sim.lock:
                sim.running.pop(rid, None)

    def _send_chunk(self, chunk: dict) -> None:
        self.sim.api.GenerateResponse.from_json_value(chunk)  # what we send honours the contract
        self._write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

    def _write(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _stream(self, rid: str, ids: list[int], params: dict, cut: bool, model: LlamaCppBackend | None) -> None:
        sim, backend = self.sim, model or self.sim.backend
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        cached = sim.cached_tokens(ids)
        seq = backend.open_sequence(ids)
        seq.append(ids[seq.n_tokens:])
        stop_ids = set(params.get("stop_token_ids") or []) | set(backend.stop_ids())
        bias = {int(k): float(v) for k, v in (params.get("logit_bias") or {}).items()}
        sampling = Sampling(temperature=params.get("temperature", 1.0), top_p=params.get("top_p", 1.0))
        # The real server honours sampling_seed only when it runs with deterministic inference.
        rng = np.random.default_rng((params.get("sampling_seed") or 0) if sim.deterministic else None)
        out: list[int] = []
        raw = b""
        max_new = params.get("max_new_tokens", 128)
        finish = None
        try:
            tag = CallTag(params["structural_tag"]) if params.get("structural_tag") else None
        except GrammarError as exc:
            tag = None
            finish = {"type": "abort", "message": str(exc), "status_code": 400, "err_type": "BadRequestError"}
        # The call block the input ends inside, if any: constrained only if the tag says it starts there.
        before = b"".join(backend.token_bytes(t) for t in ids[-64:]).decode("utf-8", errors="ignore")
        opened = before.rfind("[CALL]")
        block = before[opened + len("[CALL]"):] if opened >= 0 and "[END]" not in before[opened:] else None
        constrained = tag is not None and block is not None and tag.starts_inside
        try:
            while True:
                logits = seq.logits()
                for token_id, value in bias.items():
                    logits[token_id] += value
                if constrained and tag is not None and block is not None:
                    logits = _allowed_only(logits, backend, tag, block)
                token = sample(logits, sampling, rng)
                out.append(token)
                if token not in stop_ids:
                    piece = backend.token_bytes(token)
                    raw += piece
                    seq.append([token])
                    block, constrained = _follow_block(block, constrained, piece.decode("utf-8", errors="ignore"),
                                                       tag is not None)
                if finish is not None:  # a grammar that did not compile: one token, then the abort
                    self._send_chunk({"text": raw.decode("utf-8", errors="ignore"), "output_ids": list(out),
                                      "meta_info": {"id": rid, "finish_reason": finish, "prompt_tokens": 1,
                                                    "completion_tokens": 1, "cached_tokens": 0,
                                                    "weight_version": "default"}})
                    break
                state = sim.running[rid]
                if token in stop_ids:
                    finish = {"type": "stop", "matched": token}
                elif len(out) >= max_new:
                    finish = {"type": "length", "length": len(out)}
                elif state["abort_after"] is not None:
                    state["abort_after"] -= 1
                    if state["abort_after"] < 0:
                        finish = {"type": "abort", "message": "Aborted", "status_code": None, "err_type": None}
                meta = {"id": rid, "finish_reason": finish, "prompt_tokens": len(ids), "completion_tokens": len(out),
                        "cached_tokens": cached, "weight_version": "default"}
                text = raw.decode("utf-8", errors="ignore")
                if cut and len(out) == 3:
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)  # the stream is cut mid-way
                    self.close_connection = True
                    return
                self._send_chunk({"text": text, "output_ids": list(out), "meta_info": meta})
                if finish is not None:
                    break
            self._write(b"data: [DONE]\n\n")
            self._write(b"")  # end of the chunked body
        finally:
            with sim.lock:
                sim.cache.append(ids + [t for t in out[:-1] if t not in stop_ids])
            seq.close()


def _allowed_only(logits: np.ndarray, backend: LlamaCppBackend, tag: CallTag, block: str) -> np.ndarray:
    """Inside a constrained block: only tokens that keep the tool name one of the tag's."""
    if not tag.in_name(block):
        return logits
    keep = [i for i in range(len(logits)) if tag.allows(block, backend.token_bytes(i).decode("utf-8", errors="ignore"))]
    if not keep:
        return logits
    masked = np.full_like(logits, -np.inf)
    masked[keep] = logits[keep]
    return masked


def _follow_block(block: str | None, constrained: bool, piece: str, tagged: bool) -> tuple[str | None, bool]:
    """Track the call block the output is in: one this request opens is constrained (the server
    generated the trigger); it ends at `[END]`."""
    if block is None:
        return (None, False) if "[CALL]" not in piece else (piece.split("[CALL]", 1)[1], tagged)
    block += piece
    return (None, False) if "[END]" in block else (block, constrained)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--model-dir", default="var/models")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--deterministic", action="store_true",
                        help="honour sampling_seed, as a server started with --enable-deterministic-inference")
    parser.add_argument("--served-path", default="", help="the model path to report (default /srv/models/MODEL)")
    parser.add_argument("--lora", action="append", default=[], metavar="NAME=GGUF",
                        help="a LoRA adapter requests may name in lora_path (as --lora-paths NAME=DIR)")
    args = parser.parse_args()
    spec = get_model(args.model)
    path = verified_path(spec, Path(args.model_dir))
    backend = LlamaCppBackend(spec, path, n_ctx=args.n_ctx, n_threads=2)
    loras = {}
    for item in args.lora:
        name, _, adapter = item.partition("=")
        loras[name] = LlamaCppBackend(spec, path, adapter_path=Path(adapter), n_ctx=args.n_ctx, n_threads=2)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.imitation = Imitation(backend, load_contract(), deterministic=args.deterministic,  # type: ignore[attr-defined]
                                 served_path=args.served_path, loras=loras)
    print(f"SGLang imitation on 127.0.0.1:{args.port} with {args.model}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
