// The trace model's pure parts (static/js/trace.js), without a browser: node --test tests/js
"use strict";
const test = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");

// The engine's event kinds (engine/timeline.py), passed by tests/unit/test_js.py, which runs this.
const KINDS = JSON.parse(process.env.ASYNCLM_EVENT_KINDS || "null");
if (!KINDS) throw new Error("run these through pytest (tests/unit/test_js.py), which passes the event kinds");
globalThis.window = {AsyncLMEventKinds: KINDS};
require(path.join(__dirname, "..", "..", "static", "js", "trace.js"));
const T = window.AsyncLMTrace;

function ev(seq, t_ms, kind, payload) { return {seq: seq, t_ms: t_ms, kind: kind, payload: payload || {}}; }

test("union merges overlapping and touching intervals and drops empty ones", () => {
  assert.deepEqual(T.union([[5, 9], [0, 2], [2, 3], [8, 12], [4, 4]]), [[0, 3], [5, 12]]);
});

test("overlap sums the pairwise intersections", () => {
  assert.equal(T.overlap([[0, 10], [20, 30]], [[5, 25]]), 10);
  assert.equal(T.overlap([[0, 10]], []), 0);
});

test("the reducer follows the lanes and computes the overlap the engine reports", () => {
  // The same trace as the Python reducer's hand-computed case (tests/unit/test_timeline.py).
  const events = [
    ev(1, 0, "status", {status: "running"}), ev(2, 10, "prefill", {prompt_tokens: 5, reused_tokens: 0, ms: 10}),
    ev(3, 11, "token", {i: 1, id: 7, text: "x"}),
    ev(4, 15, "call_decoded", {call_id: "a", name: "f", args: {a: 1}, position: 3}),
    ev(5, 16, "call_dispatched", {call_id: "a", name: "f", args: {a: 1}}),
    ev(6, 17, "call_decoded", {call_id: "b", name: "g", args: {}, position: 4}),
    ev(7, 18, "call_dispatched", {call_id: "b", name: "g", args: {}}),
    ev(8, 20, "call_started", {call_id: "b", worker: "w", at_ms: 20}),
    ev(9, 50, "call_started", {call_id: "a", worker: "w", at_ms: 50}),
    ev(10, 60, "call_finished", {call_id: "b", worker: "w", at_ms: 60}),
    ev(11, 100, "trap", {action: "parked", pending: ["a"]}),
    ev(12, 295, "resumed", {from: "parked"}),
    ev(13, 310, "interrupt_injected", {calls: ["b"], messages: [], began_ms: 300, position: 9, tokens: 5, ms: 10,
      text: " [INTR] b [HEAD] 1 [END] "}),
    ev(14, 350, "call_finished", {call_id: "a", worker: "w", at_ms: 350}),
  ];
  const trace = new T.Trace();
  events.forEach(e => assert.ok(trace.apply(e)));
  assert.equal(trace.apply(events[3]), false, "an event seen before is ignored");
  assert.deepEqual(trace.segments.map(s => [s.state, s.start, s.end]), [
    ["prefill", 0, 10], ["decoding", 10, 100], ["parked", 100, 295], ["decoding", 295, 300],
    ["injecting", 300, 310], ["decoding", 310, null],
  ]);
  trace.apply(ev(15, 400, "finish", {status: "finished", reason: "", finish_reason: "stop", text: "", metrics: {}}));
  assert.equal(trace.metrics().overlap_ms, 135);
  assert.equal(trace.calls.get("a").status, "running");
});

test("the engine's final figures win over the browser's", () => {
  const trace = new T.Trace();
  trace.apply(ev(1, 0, "status", {status: "running"}));
  trace.apply(ev(2, 5, "finish", {status: "finished", reason: "", finish_reason: "stop", text: "",
    metrics: {overlap_ms: 42, tokens: 3}}));
  assert.equal(trace.metrics().overlap_ms, 42);
  assert.equal(trace.metrics().tokens, 3);
});

test("every kind the page handles is one the engine writes", () => {
  const values = Object.values(KINDS);
  T.handledKinds().forEach(kind => assert.ok(values.includes(kind), kind));
  assert.ok(T.handledKinds().includes("token") && T.kinds.TOKEN === "token");
});

test("a worker's notice shows a queued call as running before the engine's event", () => {
  const trace = new T.Trace();
  trace.apply(ev(1, 0, "call_decoded", {call_id: "c1", name: "f", args: {}}));
  assert.equal(trace.report({call_id: "c1", phase: "started", worker: "w1"}), false, "not dispatched yet");
  trace.apply(ev(2, 1, "call_dispatched", {call_id: "c1", name: "f", args: {}}));
  assert.equal(trace.report({call_id: "c1", phase: "started", worker: "w1"}), true);
  assert.equal(trace.calls.get("c1").status, "running");
  assert.equal(trace.report({call_id: "zz", phase: "started", worker: "w1"}), false, "unknown call");
  trace.apply(ev(3, 2, "call_result", {call_id: "c1", ok: true, injected: "1"}));
  assert.equal(trace.report({call_id: "c1", phase: "started", worker: "w1"}), false, "already done");
});
