// The compare view: one live trace per mode, drawn on one shared time axis, with latencies and
// speedups against the sync run.
(function () {
  "use strict";
  const T = window.AsyncLMTrace;
  const detail = document.getElementById("marker-detail");
  const runs = Array.from(document.querySelectorAll("svg.timeline[data-task]")).map(function (svg) {
    return {id: svg.dataset.task, svg: svg, trace: new T.Trace(), row: document.querySelector('#summary tr[data-task="' + svg.dataset.task + '"]'), anchor: null};
  });

  function nowT(run) {
    return run.anchor && !run.trace.finish ? run.anchor.t + (performance.now() - run.anchor.at) : 0;
  }

  function cell(run, cls, text) {
    const el = run.row.querySelector("." + cls);
    if (el.textContent !== text) el.textContent = text;
  }

  function draw() {
    const maxT = Math.max.apply(null, runs.map(r => r.trace.endT(nowT(r))).concat([1]));
    const sync = runs.find(r => r.row.dataset.mode === "sync");
    const syncLatency = sync && sync.trace.finish ? sync.trace.metrics().latency_ms : null;
    runs.forEach(function (run) {
      T.drawTimeline(run.svg, run.trace, {maxT: maxT, nowT: nowT(run), onSelect: function (tr, inj) {
        detail.hidden = false;
        detail.textContent = "task " + run.id + ": " + T.describeInjection(tr, inj);
      }});
      const m = run.trace.metrics(nowT(run));
      const status = run.trace.status || run.row.querySelector(".status").textContent;
      const badge = run.row.querySelector(".status");
      badge.textContent = status;
      badge.className = "status status-" + status;
      cell(run, "c-latency", m.latency_ms !== null ? T.fmt(m.latency_ms) : "–");
      cell(run, "c-tokens", String(m.tokens));
      cell(run, "c-calls", String(m.calls));
      cell(run, "c-overlap", T.fmt(m.overlap_ms));
      cell(run, "c-speedup", run.trace.finish && syncLatency && m.latency_ms ? (syncLatency / m.latency_ms).toFixed(2) + "×" : "–");
    });
  }

  const schedule = T.redrawer(draw, function () {
    return runs.some(run => run.trace.status === "running" && !run.trace.finish);
  });

  runs.forEach(function (run) {
    const live = document.getElementById("live-" + run.id);
    T.follow(run.svg.dataset.wsPath, run.trace, {
      onEvents: function (events) {
        run.anchor = {t: events[events.length - 1].t_ms, at: performance.now()};
        schedule();
      },
      onState: function (state) {
        live.textContent = run.trace.finish ? "finished (" + run.trace.finish.finishReason + ")" : (run.trace.status ? state : "waiting for its turn");
      },
    });
  });
  window.addEventListener("resize", schedule);
  schedule();
})();
