// A task's trace in the browser: a model of its events (Trace), an SVG timeline of it
// (drawTimeline), the token stream with CML highlighted (drawStream), and a websocket that
// catches up from storage, then follows live, resuming from the last sequence number (follow).
// Everything from the model or a tool is inserted as text, never as HTML.
(function () {
  "use strict";
  const SVG = "http://www.w3.org/2000/svg";

  // ---- model ---------------------------------------------------------------------------
  class Trace {
    constructor() {
      this.lastSeq = 0;
      this.segments = [];  // decode lane: {state, start, end}
      this.state = null;
      this.calls = new Map();
      this.injections = [];  // {t, ms, calls, messages, position, tokens, text}
      this.messages = [];  // {t, text}
      this.chunks = [];  // stream: {kind: "model" | "intr" | "message" | "malformed", text, ...}
      this.tokens = 0;
      this.firstToken = null;
      this.lastToken = null;
      this.lastT = 0;
      this.started = null;
      this.finish = null;
      this.status = null;
      this.prefill = null;
    }

    // Returns false for an event already applied (a catch-up overlap after a reconnect).
    apply(ev) {
      if (ev.seq <= this.lastSeq) return false;
      this.lastSeq = ev.seq;
      const t = ev.t_ms, p = ev.payload;
      this.lastT = Math.max(this.lastT, t);
      const handler = HANDLERS[ev.kind];
      if (handler) handler(this, t, p);
      return true;
    }

    enter(state, t) {
      if (this.state && this.state.state === state) return;
      if (this.state) this.state.end = t;
      this.state = state ? {state: state, start: t, end: null} : null;
      if (this.state) this.segments.push(this.state);
    }

    // A worker's notice, straight from the worker (ahead of the engine's trace event): a call
    // that is queued shows as running on that worker. Returns whether anything changed.
    report(r) {
      const c = this.calls.get(r.call_id);
      if (!c || r.phase !== "started" || c.status !== "queued") return false;
      c.status = "running";
      c.worker = r.worker;
      return true;
    }

    call(id) {
      if (!this.calls.has(id)) this.calls.set(id, {id: id, name: "", args: null, status: "decoded"});
      return this.calls.get(id);
    }

    modelText(text) {
      const last = this.chunks[this.chunks.length - 1];
      if (last && last.kind === "model") last.text += text;
      else this.chunks.push({kind: "model", text: text});
    }

    // The time axis's end: the last event, or "now" while the task runs.
    endT(nowT) {
      if (this.finish) return this.finish.t;
      return Math.max(this.lastT, nowT || 0);
    }

    metrics(nowT) {
      const end = this.endT(nowT);
      const busy = this.segments.filter(s => s.state === "decoding" || s.state === "injecting")
        .map(s => [s.start, s.end === null ? end : s.end]);
      const running = [];
      this.calls.forEach(c => {
        if (c.started !== undefined) running.push([c.started, c.finished !== undefined ? c.finished : end]);
      });
      const m = {
        ttft_ms: this.firstToken,
        latency_ms: this.firstToken !== null ? this.lastToken - this.firstToken : null,
        tokens: this.tokens,
        calls: this.calls.size,
        injected_tokens: this.injections.reduce((n, i) => n + i.tokens, 0),
        overlap_ms: overlap(busy, union(running)),
      };
      m.tokens_per_s = m.latency_ms ? Math.round((m.tokens - 1) / (m.latency_ms / 1000) * 100) / 100 : null;
      m.injections = this.injections.length;
      if (this.prefill) Object.assign(m, this.prefill);
      // At the end the engine's own figures win (the overlap is only computed here).
      if (this.finish && this.finish.metrics) {
        Object.keys(this.finish.metrics).forEach(k => {
          if (this.finish.metrics[k] !== undefined && this.finish.metrics[k] !== null) m[k] = this.finish.metrics[k];
        });
      }
      return m;
    }
  }

  // The trace's event kinds, as the engine names them (engine/timeline.py, written into the page
  // by the server; the JavaScript tests pass the same list).
  const K = (function () {
    const el = typeof document !== "undefined" && document.getElementById("event-kinds");
    const kinds = el ? JSON.parse(el.textContent) : window.AsyncLMEventKinds;
    if (!kinds) throw new Error("trace.js needs the event kinds (#event-kinds)");
    return kinds;
  })();

  const HANDLERS = {
    [K.STATUS](tr, t, p) { tr.status = p.status; tr.started = t; tr.enter("prefill", t); },
    [K.PREFILL](tr, t, p) {
      tr.enter("decoding", t);
      tr.prefill = {prompt_tokens: p.prompt_tokens, prefill_ms: p.ms, reused_prompt_tokens: p.reused_tokens};
    },
    [K.TOKEN](tr, t, p) {
      if (!tr.state || tr.state.state !== "decoding") tr.enter("decoding", t);
      tr.tokens += 1;
      if (tr.firstToken === null) tr.firstToken = t;
      tr.lastToken = t;
      tr.modelText(p.text);
    },
    [K.PARKED](tr, t) { tr.enter("parked", t); },
    [K.TRAP](tr, t, p) { if (p.action === "parked") tr.enter("parked", t); },
    [K.BLOCKED](tr, t) { tr.enter("blocked", t); },
    [K.RESUMED](tr, t) { tr.enter("decoding", t); },
    [K.HUMAN_MESSAGE](tr, t, p) { tr.messages.push({t: t, text: p.text}); },
    [K.INTERRUPT_INJECTED](tr, t, p) {
      const start = p.began_ms !== undefined ? p.began_ms : t;
      const inj = {t: start, ms: p.ms || 0, calls: p.calls || [], messages: p.messages || [],
        position: p.position, tokens: p.tokens || 0, text: p.text};
      tr.injections.push(inj);
      tr.enter("injecting", start);
      tr.enter("decoding", start + inj.ms);
      inj.calls.forEach(id => { const c = tr.call(id); c.injected = start; c.position = p.position; });
      tr.chunks.push({kind: inj.messages.length && !inj.calls.length ? "message" : "intr", text: p.text,
        calls: inj.calls, error: /"error":\{/.test(p.text || "")});
    },
    [K.MALFORMED](tr, t, p) { tr.chunks.push({kind: "malformed", text: "", reason: p.reason}); },
    [K.CALL_DECODED](tr, t, p) {
      const c = tr.call(p.call_id);
      Object.assign(c, {name: p.name, args: p.args, decoded: t, at_position: p.position, status: "decoded"});
    },
    [K.CALL_ERROR](tr, t, p) {
      const c = tr.call(p.call_id);
      Object.assign(c, {name: p.name, decoded: t, result: t, ok: false, status: "error", error: p.error});
    },
    [K.CALL_WAITING](tr, t, p) { const c = tr.call(p.call_id); c.status = "waiting"; c.waitingOn = p.on; },
    [K.CALL_DISPATCHED](tr, t, p) { const c = tr.call(p.call_id); c.dispatched = t; c.args = p.args; c.status = "queued"; },
    [K.CALL_STARTED](tr, t, p) { const c = tr.call(p.call_id); c.started = p.at_ms; c.worker = p.worker; c.status = "running"; },
    [K.CALL_FINISHED](tr, t, p) { const c = tr.call(p.call_id); c.finished = p.at_ms; c.worker = p.worker; },
    [K.CALL_RESULT](tr, t, p) {
      const c = tr.call(p.call_id);
      c.result = t; c.ok = p.ok; c.status = p.ok ? "done" : "error";
      c.injectedText = p.injected; c.error = p.error;
      if (c.finished === undefined) c.finished = t;  // a timeout or an error raised before running
    },
    [K.FINISH](tr, t, p) {
      tr.finish = {t: t, status: p.status, reason: p.reason, finishReason: p.finish_reason, metrics: p.metrics};
      tr.status = p.status;
      tr.enter(null, t);
    },
  };

  function union(intervals) {
    const sorted = intervals.filter(i => i[1] > i[0]).sort((a, b) => a[0] - b[0]);
    const out = [];
    sorted.forEach(i => {
      const last = out[out.length - 1];
      if (last && i[0] <= last[1]) last[1] = Math.max(last[1], i[1]); else out.push(i.slice());
    });
    return out;
  }

  function overlap(a, b) {
    let total = 0;
    a.forEach(x => b.forEach(y => { total += Math.max(0, Math.min(x[1], y[1]) - Math.max(x[0], y[0])); }));
    return Math.round(total);
  }

  // ---- timeline (SVG) --------------------------------------------------------------------
  const LABEL_W = 150, ROW_H = 26, AXIS_H = 22;
  const STATE_TITLES = {prefill: "prefill (reading the prompt)", decoding: "decoding", parked: "parked on [TRAP] or end of turn, waiting for results",
    blocked: "blocked (sync: waiting for a result)", injecting: "injecting results into the context"};

  function el(name, attrs, parent, title) {
    const node = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(k => node.setAttribute(k, attrs[k]));
    if (title) { const tt = document.createElementNS(SVG, "title"); tt.textContent = title; node.appendChild(tt); }
    if (parent) parent.appendChild(node);
    return node;
  }

  function niceStep(span) {
    const raw = span / 8, mag = Math.pow(10, Math.floor(Math.log10(raw || 1)));
    return [1, 2, 5, 10].map(f => f * mag).find(s => s >= raw) || mag * 10;
  }

  function fmt(ms) { return ms >= 1000 ? (ms / 1000).toFixed(ms >= 10000 ? 0 : 1) + " s" : Math.round(ms) + " ms"; }

  // Draws `trace` into `svg`; `opts.maxT` shares one axis between several timelines.
  // Clears `svg`, sizes it for `rows` lanes and draws the time axis up to `maxT`; returns the
  // function from a time (ms) to an x coordinate.
  function axis(svg, rows, maxT) {
    const width = Math.max(480, svg.parentNode.clientWidth || 900);
    const height = AXIS_H + rows * ROW_H + 6;
    const plotW = width - LABEL_W - 10;
    const x = t => LABEL_W + Math.max(0, t) / maxT * plotW;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    const step = niceStep(maxT);
    for (let t = 0; t <= maxT + 1e-9; t += step) {
      el("line", {x1: x(t), x2: x(t), y1: AXIS_H - 4, y2: height, class: "grid"}, svg);
      el("text", {x: x(t), y: AXIS_H - 8, class: "tick"}, svg).textContent = fmt(t);
    }
    return x;
  }

  const rowY = i => AXIS_H + i * ROW_H;

  // The decode lane of `trace` in row `row`, shifted right by `offset` ms: its states and the
  // messages it received.
  function decodeLane(svg, trace, x, row, offset, nowT) {
    const end = trace.endT(nowT);
    trace.segments.forEach(s => {
      const s1 = s.end === null ? end : s.end;
      el("rect", {x: x(offset + s.start), y: rowY(row) + 4, width: Math.max(1, x(offset + s1) - x(offset + s.start)),
        height: ROW_H - 8, class: "seg seg-" + s.state}, svg, STATE_TITLES[s.state] + ": " + fmt(s.start) + " → " + fmt(s1));
    });
    trace.messages.forEach(m => {
      const cx = x(offset + m.t), cy = rowY(row) + ROW_H / 2;
      el("path", {d: `M${cx} ${cy - 7} L${cx + 6} ${cy} L${cx} ${cy + 7} L${cx - 6} ${cy} Z`, class: "mark-message"},
        svg, "message at " + fmt(m.t) + ": " + m.text);
    });
  }

  function drawTimeline(svg, trace, opts) {
    opts = opts || {};
    const calls = Array.from(trace.calls.values());
    const x = axis(svg, 1 + calls.length, Math.max(opts.maxT || 0, trace.endT(opts.nowT), 1));
    const height = AXIS_H + (1 + calls.length) * ROW_H + 6;
    el("text", {x: 4, y: rowY(0) + 17, class: "lane-label"}, svg).textContent = "model";
    const end = trace.endT(opts.nowT);
    decodeLane(svg, trace, x, 0, 0, opts.nowT);

    calls.forEach((c, i) => {
      const y = rowY(i + 1);
      const label = el("text", {x: 4, y: y + 17, class: "lane-label"}, svg);
      label.textContent = (c.id + " " + (c.name || "")).slice(0, 22);
      const bar = (from, to, cls, what) => {
        if (from === undefined || from === null) return;
        const t1 = to === undefined || to === null ? end : to;
        el("rect", {x: x(from), y: y + 6, width: Math.max(1.5, x(t1) - x(from)), height: ROW_H - 12, class: "call " + cls},
          svg, `${c.id}: ${what} ${fmt(from)} → ${fmt(t1)}`);
      };
      if (c.status === "error" && c.started === undefined) {
        bar(c.decoded, c.result, "call-error", "error: " + (c.error || ""));
      } else {
        bar(c.decoded, c.dispatched !== undefined ? c.dispatched : c.result, "call-waiting", "decoded, waiting to be dispatched");
        bar(c.dispatched, c.started !== undefined ? c.started : c.result, "call-queued", "queued for a worker");
        if (c.started !== undefined) {
          bar(c.started, c.finished, c.ok === false ? "call-error" : "call-running",
            "running on " + (c.worker || "a worker") + (c.ok === false ? " (error)" : ""));
        }
        if (c.result !== undefined) bar(c.result, c.injected !== undefined ? c.injected : null, "call-pending", "result waiting for a token boundary");
      }
    });

    trace.injections.forEach(inj => {
      const g = el("g", {class: "marker", tabindex: "0"}, svg);
      // A wide transparent target: the dashed line alone is hard to hit.
      el("rect", {x: x(inj.t) - 5, y: AXIS_H, width: 10, height: height - AXIS_H - 4, class: "mark-hit"}, g);
      el("line", {x1: x(inj.t), x2: x(inj.t), y1: AXIS_H, y2: height - 4, class: "mark-line"}, g);
      el("path", {d: `M${x(inj.t) - 5} ${AXIS_H} L${x(inj.t) + 5} ${AXIS_H} L${x(inj.t)} ${AXIS_H + 7} Z`, class: "mark-head"}, g);
      el("title", {}, g).textContent = describeInjection(trace, inj);
      const show = () => { if (opts.onSelect) opts.onSelect(trace, inj); };
      g.addEventListener("click", show);
      g.addEventListener("keydown", ev => { if (ev.key === "Enter") show(); });
    });
  }

  // Several tasks on one clock (a team, or a task and its sub-agents), one decode lane each:
  // lanes are [{label, url, current, trace, offset (ms; null while it waits for an engine), nowT}].
  function drawLanes(svg, lanes) {
    const placed = lanes.filter(l => l.offset !== null);
    const x = axis(svg, lanes.length, Math.max(1, ...placed.map(l => l.offset + l.trace.endT(l.nowT))));
    lanes.forEach((l, i) => {
      const link = el("a", {href: l.url, class: "lane-link" + (l.current ? " current" : "")}, svg);
      el("text", {x: 4, y: rowY(i) + 17, class: "lane-label"}, link).textContent = l.label.slice(0, 22);
      if (l.offset === null) {
        el("text", {x: LABEL_W, y: rowY(i) + 17, class: "tick lane-waiting"}, svg).textContent = "waiting for an engine";
        return;
      }
      decodeLane(svg, l.trace, x, i, l.offset, l.nowT);
      l.trace.injections.forEach(inj => {
        el("line", {x1: x(l.offset + inj.t), x2: x(l.offset + inj.t), y1: rowY(i) + 2, y2: rowY(i) + ROW_H - 2,
          class: "mark-line"}, svg, "injected at " + fmt(inj.t));
      });
    });
  }

  function describeInjection(trace, inj) {
    const parts = ["injected at " + fmt(inj.t) + ", token position " + inj.position + " (" + inj.tokens + " tokens, " + inj.ms + " ms)"];
    inj.calls.forEach(id => {
      const c = trace.calls.get(id);
      if (c) parts.push(id + " = " + c.name + "(" + JSON.stringify(c.args) + ") → " + (c.ok ? c.injectedText : "error: " + c.error));
      else parts.push(id);
    });
    inj.messages.forEach(m => parts.push("your message: " + m));
    return parts.join("\n");
  }

  // ---- token stream with CML highlighted ------------------------------------------------------
  const CML = /(\[CALL\][\s\S]*?\[END\]|\[TRAP\]\s*\[END\]|\[CALL\][\s\S]*$|\[TRAP\][\s\S]*$)/g;

  // What follows a model chunk's last settled part can only turn into CML if it ends in the start
  // of a marker: `[`, `[C`, ... `[TRAP`.
  const OPENING = /\[(C(A(L(L)?)?)?|T(R(A(P)?)?)?)?$/;

  function partSpan(trace, part, st) {
    const span = document.createElement("span");
    if (part.startsWith("[CALL]")) {
      const id = (part.match(/^\[CALL\]\s*([A-Za-z_][\w]*)\s*\[HEAD\]/) || [])[1];
      span.dataset.open = part.endsWith("[END]") ? "" : "1";
      callClass(span, id && trace.calls.get(id));
      if (id) st.callSpans.push({span: span, id: id});
    } else if (part.startsWith("[TRAP]")) {
      span.className = "cml-trap";
    }
    span.textContent = part;
    return span;
  }

  function callClass(span, call) {
    const cls = "cml-call" + (call && call.status === "error" ? " cml-error" : "") + (span.dataset.open ? " cml-open" : "");
    if (span.className !== cls) span.className = cls;
    const title = call && call.error ? call.error : "";
    if (span.title !== title) span.title = title;
  }

  function otherSpan(chunk) {
    const span = document.createElement("span");
    if (chunk.kind === "malformed") {
      span.className = "malformed";
      span.title = chunk.reason;  // the mark itself is drawn by CSS: the text stays the model's
    } else {
      span.className = chunk.kind === "message" ? "cml-message" : "intr" + (chunk.error ? " intr-error" : "");
      span.textContent = chunk.text;
    }
    return span;
  }

  // Incremental: what is settled stays in the DOM; each frame adds the new text and redraws only
  // the part that may still change (an open call block, or a possible marker's first letters).
  // The output is cut into one block per line of the model's plain text, so the browser keeps
  // the layout of the lines above and a frame costs what is new, not the whole output. Calls'
  // spans follow their status (an error arrives after the block was written).
  function drawStream(container, trace) {
    let st = container.asynclmStream;
    if (!st || st.trace !== trace) {
      while (container.firstChild) container.removeChild(container.firstChild);
      st = container.asynclmStream = {trace: trace, done: 0, settled: 0, live: [], callSpans: [], line: null};
    }
    const newLine = () => {
      st.line = document.createElement("span");
      st.line.className = "stream-line";
      container.appendChild(st.line);
    };
    if (!st.line) newLine();
    const put = (node) => st.line.appendChild(node);
    const settle = (part) => {
      if (part.startsWith("[CALL]") || part.startsWith("[TRAP]") || part.indexOf("\n") < 0) {
        put(partSpan(trace, part, st));
        return;
      }
      const lines = part.split(/(?<=\n)/);  // each line keeps its line break
      lines.forEach((line, k) => {
        put(partSpan(trace, line, st));
        if (k < lines.length - 1 || line.endsWith("\n")) newLine();
      });
    };
    st.live.forEach(node => node.remove());
    st.live = [];
    st.callSpans = st.callSpans.filter(c => c.span.isConnected);
    const chunks = trace.chunks;
    for (let i = st.done; i < chunks.length; i++) {
      const chunk = chunks[i], last = i === chunks.length - 1;
      if (chunk.kind !== "model") {
        put(otherSpan(chunk));
        st.done = i + 1;
        st.settled = 0;
        continue;
      }
      const parts = chunk.text.slice(st.settled).split(CML).filter(Boolean);
      const settled = last ? parts.length - 1 : parts.length;
      parts.slice(0, settled).forEach(part => {
        settle(part);
        st.settled += part.length;
      });
      if (last && parts.length) {
        let tail = parts[parts.length - 1];
        if (!tail.startsWith("[CALL]") && !tail.startsWith("[TRAP]")) {
          // Plain text is settled a line at a time (a span per line, not per token), up to what
          // might still begin a marker.
          const open = tail.match(OPENING);
          const fixed = tail.slice(0, tail.lastIndexOf("\n", open ? open.index - 1 : tail.length) + 1);
          if (fixed) {
            settle(fixed);
            st.settled += fixed.length;
            tail = tail.slice(fixed.length);
          }
        }
        if (tail) {
          const span = partSpan(trace, tail, st);
          put(span);
          st.live.push(span);  // removed before the next frame
        }
      } else if (!last) {
        st.done = i + 1;
        st.settled = 0;
      }
    }
    st.callSpans.forEach(c => callClass(c.span, trace.calls.get(c.id)));
  }

  // ---- websocket --------------------------------------------------------------------------------
  // Calls onEvents(list) with new events only; reconnects with ?after=<last seq> (1, 2, 4 ... 16 s).
  function follow(wsPath, trace, handlers) {
    let retry = 0;
    let closed = false;
    function connect() {
      const scheme = location.protocol === "https:" ? "wss://" : "ws://";
      const ws = new WebSocket(scheme + location.host + wsPath + "?after=" + trace.lastSeq);
      ws.onopen = () => { retry = 0; if (handlers.onState) handlers.onState(trace.finish ? "finished" : "live"); };
      ws.onmessage = msg => {
        const data = JSON.parse(msg.data);
        if (data.type === "call") {
          if (trace.report(data.report) && handlers.onCall) handlers.onCall(data.report);
          return;
        }
        if (data.type !== "events") return;
        const fresh = data.events.filter(ev => trace.apply(ev));
        if (fresh.length) handlers.onEvents(fresh);
        if (trace.finish && !closed) { closed = true; ws.close(); }
      };
      ws.onclose = ev => {
        if (trace.finish) { if (handlers.onState) handlers.onState("finished"); return; }
        if (ev.code === 4401 || ev.code === 4404) { if (handlers.onState) handlers.onState("not allowed"); return; }
        if (handlers.onState) handlers.onState("reconnecting…");
        retry = Math.min(retry + 1, 5);
        setTimeout(connect, 500 * Math.pow(2, retry - 1));
      };
    }
    connect();
  }

  // ---- drawing schedule ----------------------------------------------------------------------
  // One draw per animation frame however many events arrived, and while `running()` another one a
  // few times a second (a live timeline grows with the clock). Returns the function that asks
  // for a draw.
  function redrawer(draw, running) {
    let frame = null, tick = null;
    function frameDraw() {
      frame = null;
      draw();
      if (running() && !tick) tick = setTimeout(function () { tick = null; schedule(); }, 250);
    }
    function schedule() { if (!frame) frame = requestAnimationFrame(frameDraw); }
    return schedule;
  }

  window.AsyncLMTrace = {Trace: Trace, drawTimeline: drawTimeline, drawLanes: drawLanes, drawStream: drawStream, follow: follow,
    describeInjection: describeInjection, fmt: fmt, redrawer: redrawer, union: union, overlap: overlap,
    kinds: K, handledKinds: function () { return Object.keys(HANDLERS); }};
})();
