// The task page: its trace (trace.js) drawn as a live timeline, the token stream, the calls
// table and the metrics, from stored events and then live over the websocket.
(function () {
  "use strict";
  const root = document.getElementById("task");
  if (!root) return;
  const T = window.AsyncLMTrace;
  const trace = new T.Trace();
  const output = document.getElementById("output");
  const statusEl = document.getElementById("status");
  const reasonEl = document.getElementById("reason");
  const liveEl = document.getElementById("live");
  const svg = document.getElementById("timeline");
  const detail = document.getElementById("marker-detail");
  const syncLatency = parseFloat(root.dataset.syncLatency || "");
  let anchor = null;  // {t, at}: maps the engine's task clock onto performance.now() while live
  let dirty = false;  // new events since the last draw (the timeline alone also grows with time)

  function nowT() {
    if (!anchor || trace.finish) return 0;
    return anchor.t + (performance.now() - anchor.at);
  }

  function setStatus(status) {
    statusEl.textContent = status;
    statusEl.className = "status status-" + status;
  }

  function showMetrics(metrics) {
    document.querySelectorAll("[data-metric]").forEach(function (el) {
      const value = metrics[el.dataset.metric];
      if (value === undefined || value === null) return;
      el.textContent = (typeof value === "number" ? Math.round(value * 100) / 100 : value) +
        (el.dataset.unit ? " " + el.dataset.unit : "");
    });
    const speedup = document.querySelector('[data-metric-speedup]');
    if (speedup && syncLatency && metrics.latency_ms && trace.finish) {
      speedup.textContent = (syncLatency / metrics.latency_ms).toFixed(2) + "× (sync: " + T.fmt(syncLatency) + ")";
    }
  }

  // ---- calls table -------------------------------------------------------------------------
  const callsBody = document.querySelector("#calls tbody");
  const COLUMNS = ["id", "tool", "args", "status", "worker", "decoded", "started", "finished", "injected", "result"];
  const ms = v => (v === undefined || v === null ? "" : Math.round(v) + " ms");

  function drawCalls() {
    trace.calls.forEach(function (c) {
      let row = callsBody.querySelector('tr[data-call="' + CSS.escape(c.id) + '"]');
      if (!row) {
        row = document.createElement("tr");
        row.dataset.call = c.id;
        COLUMNS.forEach(function () { row.appendChild(document.createElement("td")); });
        callsBody.appendChild(row);
        document.getElementById("no-calls").hidden = true;
      }
      const status = c.status === "waiting" ? "waiting for " + (c.waitingOn || []).join(", ") : c.status;
      const values = [c.id, c.name, c.args === null ? "" : JSON.stringify(c.args), status, c.worker || "",
        ms(c.decoded), ms(c.started), ms(c.finished), ms(c.injected),
        c.ok === false ? c.error || "" : c.injectedText || ""];
      values.forEach(function (v, i) { if (row.children[i].textContent !== v) row.children[i].textContent = v; });
      row.children[3].className = "call-status status-" + c.status;
    });
  }

  function select(tr, inj) {
    detail.hidden = false;
    detail.textContent = T.describeInjection(tr, inj);
  }

  // ---- lanes: the team, or this task and its sub-agents, on one clock ------------------------
  const lanesSvg = document.getElementById("agent-lanes");
  const lanes = new Map();  // task id -> {info, trace, anchor}
  const laneRunning = lane => lane.trace.status === "running" && !lane.trace.finish;

  function laneNow(lane) {
    if (lane.info.current) return nowT();
    return lane.anchor && !lane.trace.finish ? lane.anchor.t + (performance.now() - lane.anchor.at) : 0;
  }

  function addLanes(infos) {
    infos.forEach(function (info) {
      let lane = lanes.get(info.id);
      if (!lane) {
        lane = {info: info, trace: info.current ? trace : new T.Trace(), anchor: null};
        lanes.set(info.id, lane);
        if (!info.current) {
          T.follow(info.ws_path, lane.trace, {onEvents: function (events) {
            lane.anchor = {t: events[events.length - 1].t_ms, at: performance.now()};
            schedule();
          }});
        }
      }
      lane.info = info;
    });
  }

  // New sub-agents and late starts show up while anything here still runs.
  function pollLanes() {
    const done = trace.finish && Array.from(lanes.values()).every(l => l.trace.finish);
    if (done) return;
    fetch(lanesSvg.dataset.lanesUrl, {credentials: "same-origin"})
      .then(r => (r.ok ? r.json() : null))
      .then(function (data) { if (data) { addLanes(data.lanes); schedule(); } })
      .catch(function () {})
      .then(function () { setTimeout(pollLanes, 3000); });
  }

  function drawAgentLanes() {
    T.drawLanes(lanesSvg, Array.from(lanes.values()).map(l => ({label: l.info.label, url: l.info.url,
      current: l.info.current, trace: l.trace, offset: l.info.offset_ms, nowT: laneNow(l)})));
  }

  function draw() {
    if (dirty) {
      T.drawStream(output, trace);
      drawCalls();
      dirty = false;
    }
    T.drawTimeline(svg, trace, {nowT: nowT(), onSelect: select});
    if (lanesSvg) drawAgentLanes();
    showMetrics(trace.metrics(nowT()));
  }

  const schedule = T.redrawer(draw, function () {
    return (!trace.finish && anchor && trace.status === "running") || Array.from(lanes.values()).some(laneRunning);
  });

  function onEvents(events) {
    dirty = true;
    const last = events[events.length - 1];
    anchor = {t: last.t_ms, at: performance.now()};
    if (trace.status) setStatus(trace.status);
    const warning = events.find(e => e.kind === T.kinds.WARNING);
    if (warning) { reasonEl.hidden = false; reasonEl.textContent = warning.payload.message; }
    if (trace.finish) {
      setStatus(trace.finish.status);
      if (trace.finish.reason) { reasonEl.hidden = false; reasonEl.textContent = trace.finish.reason; }
      liveEl.textContent = "finished (" + trace.finish.finishReason + ")";
      ["engine-warning", "cancel-form", "message-form"].forEach(function (id) {
        const el = document.getElementById(id);
        if (el) el.remove();
      });
    }
    schedule();
  }

  // The message box posts without leaving the page; the message shows when the engine injects it.
  const messageForm = document.getElementById("message-form");
  if (messageForm) {
    messageForm.addEventListener("submit", function (ev) {
      ev.preventDefault();
      const note = document.getElementById("message-status");
      const input = document.getElementById("message-text");
      fetch(messageForm.action, {method: "POST", body: new FormData(messageForm),
        headers: {"X-Requested-With": "fetch"}, credentials: "same-origin"})
        .then(function (r) { return r.json(); })
        .then(function (data) {
          note.textContent = data.detail;
          note.className = data.ok ? "hint" : "error";
          if (data.ok) input.value = "";
        })
        .catch(function () { note.textContent = "Not sent: the server did not answer."; note.className = "error"; });
    });
  }

  const initial = JSON.parse(document.getElementById("initial-metrics").textContent || "{}");
  showMetrics(initial);
  T.follow(root.dataset.wsPath, trace, {
    onEvents: onEvents,
    onCall: function () { dirty = true; schedule(); },
    onState: function (state) { if (!trace.finish) liveEl.textContent = state; },
  });
  if (lanesSvg) {
    addLanes(JSON.parse(document.getElementById("initial-lanes").textContent));
    setTimeout(pollLanes, 3000);
  }
  window.addEventListener("resize", function () { dirty = true; schedule(); });
  if (document.body.dataset.testHooks !== undefined) { window.asynclmTrace = trace; window.asynclmLanes = lanes; }
})();
