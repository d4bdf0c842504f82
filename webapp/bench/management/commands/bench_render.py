"""Measure what drawing the token stream costs the task page per frame, as a task grows.

Runs static/js/trace.js (or `--script`, e.g. an older version for a before/after) in headless
Chromium: a synthetic task of `--tokens` tokens (a call every `--call-every` tokens, its result injected 10
tokens later) is applied one token per frame, and each `drawStream` call is timed with the layout
it causes. Prints and
saves the numbers (var/bench/render.json); nothing else runs, so the machine should be idle.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]

# In the page: a trace fed token by token, with a call block every `every` tokens (0: none) and its
# result 10 tokens later; returns each drawStream's duration (ms) and the stream's final text.
DRIVE = """(arg) => {
  const n = typeof arg === "number" ? arg : arg.n, every = typeof arg === "number" ? 50 : arg.every;
  const lines = typeof arg === "number" ? 0 : arg.lines;
  const T = window.AsyncLMTrace, out = document.getElementById("out"), trace = new T.Trace();
  window.benchTrace = trace;
  const times = [];
  let seq = 0, t = 0;
  const apply = (kind, payload) => trace.apply({seq: ++seq, t_ms: ++t, kind: kind, payload: payload});
  apply("status", {status: "running"});
  apply("prefill", {prompt_tokens: 100, reused_tokens: 0, ms: 5});
  let call = 0;
  for (let i = 1; i <= n; i++) {
    const k = every ? i % every : 0;
    let text = (lines && i % lines === 0 ? "\\n" : " ") + "word" + i;
    if (k === 1) text = " [CALL] c" + (++call) + " [HEAD] f(";
    else if (k === 2) text = "x=" + i + ")";
    else if (k === 3) {
      text = " [END]";
      apply("token", {i: i, id: 1, text: text});
      apply("call_decoded", {call_id: "c" + call, name: "f", args: {x: i}, position: i});
      text = null;
    } else if (k === 13) {
      apply("interrupt_injected", {calls: ["c" + call], messages: [], began_ms: t, position: i, tokens: 9, ms: 1,
        text: " [INTR] c" + call + " [HEAD] {\\"y\\":" + i + "} [END] "});
    }
    if (text !== null) apply("token", {i: i, id: 1, text: text});
    const start = performance.now();
    T.drawStream(out, trace);
    void out.offsetHeight;  // the layout the new spans cost, as the next frame would pay it
    times.push(performance.now() - start);
  }
  return {times: times, text: out.textContent};
}"""


class Command(BaseCommand):
    help = "Time the task page's stream drawing per frame over a long synthetic task (headless Chromium)."

    def add_arguments(self, parser):
        parser.add_argument("--tokens", type=int, default=5000)
        parser.add_argument("--call-every", type=int, default=50,
                            help="a call block every this many tokens (0: none, one long run of text)")
        parser.add_argument("--line-every", type=int, default=0,
                            help="a line break every this many tokens (0: none)")
        parser.add_argument("--script", default=str(Path(settings.BASE_DIR) / "static" / "js" / "trace.js"),
                            help="the trace.js to measure (default: this checkout's)")
        parser.add_argument("--out", default=str(Path(settings.ASYNCLM_BENCH_DIR) / "render.json"))

    def handle(self, *args: Any, **opts: Any) -> None:
        from playwright.sync_api import sync_playwright

        script = Path(opts["script"])
        if not script.is_file():
            raise CommandError(f"no such script: {script}")
        if not 1 <= opts["tokens"] <= 100_000:
            raise CommandError("--tokens must be between 1 and 100000")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page()
            # The task page's stream element with its styles.
            css = (Path(settings.BASE_DIR) / "static" / "css" / "app.css").read_text()
            page.set_content(f'<style>{css}</style><pre id="out" class="output"></pre>')
            page.add_script_tag(content=kinds_script())
            page.add_script_tag(content=script.read_text())
            started = time.time()
            result = page.evaluate(DRIVE, {"n": opts["tokens"], "every": opts["call_every"],
                                           "lines": opts["line_every"]})
            wall = time.time() - started
            browser.close()
        times = result["times"]
        tail = times[-500:]
        summary = {
            "script": str(script), "tokens": opts["tokens"], "call_every": opts["call_every"],
            "line_every": opts["line_every"],
            "wall_s": round(wall, 2),
            "frame_ms": _stats(times), "last_500_frames_ms": _stats(tail),
            "output_chars": len(result["text"]), "machine": platform.node(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        out = Path(opts["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2) + "\n")
        self.stdout.write(
            f"{opts['tokens']} tokens, drawStream per frame: mean {summary['frame_ms']['mean']} ms, "
            f"p95 {summary['frame_ms']['p95']} ms; last 500 frames mean {summary['last_500_frames_ms']['mean']} ms "
            f"({len(result['text'])} characters drawn) -> {out}"
        )


def kinds_script() -> str:
    """What the task page gives trace.js: the engine's event kinds (older versions ignore it)."""
    from engine.timeline import EventKind

    return "window.AsyncLMEventKinds = " + json.dumps({kind.name: kind.value for kind in EventKind}) + ";"


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"mean": round(statistics.fmean(values), 3), "p50": round(ordered[len(ordered) // 2], 3),
            "p95": round(ordered[int(len(ordered) * 0.95)], 3), "max": round(ordered[-1], 3)}
