// Live trace of one task: catch up from the server, then follow live events over a websocket.
// Reconnects with ?after=<last seq> so no event is shown twice or skipped.
(function () {
  "use strict";
  const root = document.getElementById("task");
  if (!root) return;
  const output = document.getElementById("output");
  const statusEl = document.getElementById("status");
  const reasonEl = document.getElementById("reason");
  const liveEl = document.getElementById("live");
  let lastSeq = 0;
  let finished = false;
  let retry = 0;

  function setStatus(status) {
    statusEl.textContent = status;
    statusEl.className = "status status-" + status;
  }

  function showMetrics(metrics) {
    if (!metrics) return;
    document.querySelectorAll("[data-metric]").forEach(function (el) {
      const value = metrics[el.dataset.metric];
      if (value === undefined || value === null) return;
      el.textContent = value + (el.dataset.unit ? " " + el.dataset.unit : "");
    });
  }

  const callsBody = document.querySelector("#calls tbody");
  const CALL_COLUMNS = ["id", "tool", "args", "status", "worker", "decoded", "started", "finished", "injected", "result"];

  function callRow(callId) {
    let row = callsBody.querySelector('tr[data-call="' + CSS.escape(callId) + '"]');
    if (!row) {
      row = document.createElement("tr");
      row.dataset.call = callId;
      CALL_COLUMNS.forEach(function (name) {
        const cell = document.createElement("td");
        cell.dataset.col = name;
        row.appendChild(cell);
      });
      row.children[0].textContent = callId;
      callsBody.appendChild(row);
      document.getElementById("no-calls").hidden = true;
    }
    return row;
  }

  function setCell(row, col, text) {
    row.children[CALL_COLUMNS.indexOf(col)].textContent = text;
  }

  function ms(value) { return Math.round(value) + " ms"; }

  function applyCall(event) {
    const p = event.payload;
    if (event.kind === "interrupt_injected") {
      p.calls.forEach(function (id) {
        const row = callsBody.querySelector('tr[data-call="' + CSS.escape(id) + '"]');
        if (row) setCell(row, "injected", ms(event.t_ms));
      });
      return;
    }
    const row = callRow(p.call_id);
    if (event.kind === "call_decoded") {
      setCell(row, "tool", p.name); setCell(row, "args", JSON.stringify(p.args));
      setCell(row, "status", "decoded"); setCell(row, "decoded", ms(event.t_ms));
    } else if (event.kind === "call_error") {
      setCell(row, "tool", p.name); setCell(row, "status", "error"); setCell(row, "result", p.error);
      setCell(row, "decoded", ms(event.t_ms));
    } else if (event.kind === "call_dispatched") {
      setCell(row, "status", "dispatched"); setCell(row, "args", JSON.stringify(p.args));
    } else if (event.kind === "call_waiting") {
      setCell(row, "status", "waiting for " + p.on.join(", "));
    } else if (event.kind === "call_started") {
      setCell(row, "status", "running"); setCell(row, "worker", p.worker); setCell(row, "started", ms(p.at_ms));
    } else if (event.kind === "call_finished") {
      setCell(row, "finished", ms(p.at_ms));
    } else if (event.kind === "call_result") {
      setCell(row, "status", p.ok ? "done" : "error");
      setCell(row, "result", p.ok ? p.injected : p.error);
    }
  }

  function apply(event) {
    if (event.seq <= lastSeq) return;
    lastSeq = event.seq;
    const p = event.payload;
    if (event.kind === "token") {
      const span = document.createElement("span");
      span.className = "tok";
      span.dataset.seq = event.seq;
      span.textContent = p.text;
      output.appendChild(span);
    } else if (event.kind === "interrupt_injected") {
      const span = document.createElement("span");
      span.className = "intr";
      span.title = "injected at token position " + event.payload.position + " (" + event.payload.tokens + " tokens)";
      span.textContent = event.payload.text;
      output.appendChild(span);
      applyCall(event);
    } else if (event.kind.indexOf("call_") === 0) {
      applyCall(event);
    } else if (event.kind === "malformed") {
      const span = document.createElement("span");
      span.className = "malformed";
      span.title = event.payload.reason;
      output.appendChild(span);
    } else if (event.kind === "status") {
      setStatus(p.status);
    } else if (event.kind === "prefill") {
      showMetrics({prompt_tokens: p.prompt_tokens, prefill_ms: p.ms});
    } else if (event.kind === "warning") {
      reasonEl.hidden = false;
      reasonEl.textContent = p.message;
    } else if (event.kind === "finish") {
      finished = true;
      setStatus(p.status);
      if (p.reason) { reasonEl.hidden = false; reasonEl.textContent = p.reason; }
      showMetrics(p.metrics);
      liveEl.textContent = "finished (" + p.finish_reason + ")";
      const warning = document.getElementById("engine-warning");
      if (warning) warning.remove();
      const cancel = document.getElementById("cancel-form");
      if (cancel) cancel.remove();
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(scheme + location.host + root.dataset.wsPath + "?after=" + lastSeq);
    ws.onopen = function () { retry = 0; if (!finished) liveEl.textContent = "live"; };
    ws.onmessage = function (msg) {
      const data = JSON.parse(msg.data);
      if (data.type === "events") data.events.forEach(apply);
    };
    ws.onclose = function (ev) {
      if (finished) { ws.onclose = null; return; }
      if (ev.code === 4401 || ev.code === 4404) { liveEl.textContent = "not allowed"; return; }
      liveEl.textContent = "reconnecting…";
      retry = Math.min(retry + 1, 6);
      setTimeout(connect, 250 * Math.pow(2, retry));
    };
    window.asynclmSocket = ws;
  }

  showMetrics(JSON.parse(document.getElementById("initial-metrics").textContent || "{}"));
  connect();
})();
