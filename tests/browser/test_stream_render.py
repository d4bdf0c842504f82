"""The token stream is drawn incrementally: what a page shows after many small frames is what a
single drawing of the whole trace shows."""

from pathlib import Path

import pytest

from webapp.bench.management.commands.bench_render import DRIVE, kinds_script

pytestmark = pytest.mark.browser

TRACE_JS = Path(__file__).resolve().parents[2] / "static" / "js" / "trace.js"

# Spans as (class, text), adjacent spans of one class merged: how text is cut into spans is not
# what a reader sees.
SPANS = """(id) => {
  const out = [];
  document.getElementById(id).querySelectorAll("span:not(.stream-line)").forEach(n => {
    const cls = n.className || "", text = n.textContent;
    if (out.length && out[out.length - 1][0] === cls) out[out.length - 1][1] += text;
    else out.push([cls, text]);
  });
  return out;
}"""


LINES = """(id) => Array.from(document.getElementById(id).children).map(n => [n.className, n.textContent])"""


def test_it_draws_frame_by_frame_exactly_what_one_full_drawing_shows(page):
    page.set_content('<div id="out"></div><div id="fresh"></div>')
    page.add_script_tag(content=kinds_script())
    page.add_script_tag(content=TRACE_JS.read_text())
    incremental = page.evaluate("""() => {
      const T = window.AsyncLMTrace, out = document.getElementById("out"), fresh = document.getElementById("fresh");
      const trace = new T.Trace();
      let seq = 0;
      const apply = (kind, payload) => trace.apply({seq: ++seq, t_ms: seq, kind: kind, payload: payload});
      apply("status", {status: "running"});
      const pieces = ["Hello", " [", "1] list\\nof", " things\\n", "\\n [CA", "LL] c1 [HE", "AD] f(x=1) [END]", " then",
                      " [CALL] c2 [HEAD] g(", "y=2) [END]", " [TR", "AP][END]", " ok [", "C", "ALL] c3 [HEAD] f("];
      out.textContent = "";
      pieces.forEach((text, i) => {
        apply("token", {i: i + 1, id: 1, text: text});
        if (text.endsWith("[END]") && text.includes("x=1")) apply("call_decoded", {call_id: "c1", name: "f", args: {}});
        if (text.endsWith("[END]") && text.includes("y=2")) {
          apply("call_decoded", {call_id: "c2", name: "g", args: {}});
          T.drawStream(out, trace);
          apply("call_result", {call_id: "c2", ok: false, error: "boom", injected: "{}"});
          apply("interrupt_injected", {calls: ["c2"], messages: [], began_ms: seq, position: 9, tokens: 3, ms: 1,
                                       text: " [INTR] c2 [HEAD] {\\"error\\":{\\"type\\":\\"x\\"}} [END] "});
        }
        T.drawStream(out, trace);
      });
      T.drawStream(fresh, trace);
      return true;
    }""")
    assert incremental
    drawn, whole = page.evaluate(SPANS, "out"), page.evaluate(SPANS, "fresh")
    assert drawn == whole
    assert page.evaluate(LINES, "out") == page.evaluate(LINES, "fresh")
    classes = [cls for cls, _ in drawn]
    assert "cml-call cml-error" in classes  # c2's error arrived after its block was drawn
    assert classes[-1] == "cml-call cml-open"  # c3 is still being written
    assert "cml-trap" in classes and "intr intr-error" in classes, drawn


def test_the_long_synthetic_task_draws_the_same_incrementally(page):
    page.set_content('<div id="out"></div><div id="fresh"></div>')
    page.add_script_tag(content=kinds_script())
    page.add_script_tag(content=TRACE_JS.read_text())
    text = page.evaluate("(n) => (" + DRIVE + ")({n: n, every: 50, lines: 7}).text", 400)
    assert "[CALL] c8 [HEAD] f(x=352) [END]" in text and "[INTR] c8" in text and "\n" in text
    page.evaluate("() => window.AsyncLMTrace.drawStream(document.getElementById('fresh'), window.benchTrace)")
    assert page.evaluate(SPANS, "out") == page.evaluate(SPANS, "fresh")


def test_each_line_of_the_models_text_is_a_block_of_its_own(page):
    page.set_content('<pre id="out"></pre>')
    page.add_script_tag(content=kinds_script())
    page.add_script_tag(content=TRACE_JS.read_text())
    lines = page.evaluate("""() => {
      const T = window.AsyncLMTrace, out = document.getElementById("out"), trace = new T.Trace();
      let seq = 0;
      ["one\\ntw", "o\\n\\nthree [CALL] c1 [HEAD] f(x=1)", " [END] four"].forEach(text => {
        trace.apply({seq: ++seq, t_ms: seq, kind: "token", payload: {i: seq, id: 1, text: text}});
        T.drawStream(out, trace);
      });
      return Array.from(out.children).map(n => n.textContent);
    }""")
    assert lines == ["one\n", "two\n", "\n", "three [CALL] c1 [HEAD] f(x=1) [END] four"]
