"""bench.json / bench.md from rows: latency profiles side by side, the standalone bound, the
human-message section, and which rows an appended run replaces."""

from webapp.bench.management.commands.bench import previous
from webapp.bench.report import markdown, overhead, summarize

LABEL = "embedded qwen2.5-coder-0.5b, with cheat sheet"


def row(scenario, mode, profile, latency, *, dataset="parallel", label=LABEL, **extra):
    return {"scenario": scenario, "dataset": dataset, "decoder": "embedded", "label": label,
            "model": "qwen2.5-coder-0.5b", "cheat_sheet": True, "profile": profile, "heldout": True, "mode": mode,
            "task_id": 1, "latency_ms": latency, "bound_ms": latency * 0.99, "token_ms": 30.0, "dispatch_ms": 5.0,
            "g_ms_per_call": 600.0, "measured_over_bound": round(1 / 0.99, 4), "bound_standalone_ms": latency * 0.8,
            "measured_over_bound_standalone": 1.25, "tokens": 40, "finish_reason": "stop", "injected_tokens": 10,
            "calls": [{"call_id": "c1", "name": "f", "drawn_latency_ms": 100.0, "started_ms": 1.0,
                       "finished_ms": 2.0}],
            "checker": {"valid": True, "error": ""}, "executed": [], "errors": [], "model_errors": [],
            "sources": [scenario], **extra}


def part(profile, datasets=("parallel",), modes=("sync", "async"), label=LABEL):
    return {"decoder": "embedded", "label": label, "model": "qwen2.5-coder-0.5b", "datasets": list(datasets),
            "modes": list(modes), "limit": 2, "cheat_sheet": True, "profile": profile, "heldout": True,
            "split": {"heldout": True, "file": "finetune/heldout.json", "digest": "15fae9835225",
                      "datasets": {"parallel": "50 held-out of 200 entries"}},
            "standalone_ms_per_token": 24.0, "token_ms": None, "inject_ms": None, "seconds": 60}


PARAMS = {"seed": 0, "git_commit": "abc1234", "date": "2026-12-01", "machine": "vm",
          "parts": [part("paper"), part("web")]}
ROWS = [row("parallel_6", "sync", "paper", 2000.0), row("parallel_6", "async", "paper", 1800.0),
        row("parallel_6", "sync", "web", 4000.0), row("parallel_6", "async", "web", 3000.0)]


def test_it_keeps_rows_of_two_latency_profiles_apart_in_one_report():
    results = summarize(ROWS)
    assert [(r["profile"], r["mode"]) for r in results] == [
        ("paper", "sync"), ("paper", "async"), ("web", "sync"), ("web", "async")]
    speedups = {r["profile"]: r["speedup_vs_sync"]["mean"] for r in results if r["mode"] == "async"}
    assert speedups == {"paper": round(2000 / 1800, 3), "web": round(4000 / 3000, 3)}  # paired within a profile
    assert all(r["heldout"] is True for r in results)
    text = markdown(PARAMS, results)
    assert f"## {LABEL}; paper tool latencies" in text and f"## {LABEL}; web tool latencies" in text
    assert "| parallel | async | web | held-out entries | 1 | 3000.0 |" in text
    assert "standalone decode 24 ms/token" in text and "held-out entries of the adaptation step's split" in text
    assert "web-API tool latencies (lognormal, mean 1100 ms, 200-5000 ms)" in text


def test_an_appended_run_replaces_only_the_rows_of_its_own_profile():
    again = [row("parallel_6", "sync", "web", 4100.0), row("parallel_6", "async", "web", 2900.0)]
    kept, parts = previous(ROWS, PARAMS["parts"], LABEL, "web", ["parallel"], ["sync", "async"])
    assert kept == ROWS[:2] and [p["profile"] for p in parts] == ["paper"]
    results = summarize(kept + again)
    assert {(r["profile"], r["mode"]): r["latency_ms"]["mean"] for r in results} == {
        ("paper", "sync"): 2000.0, ("paper", "async"): 1800.0, ("web", "sync"): 4100.0, ("web", "async"): 2900.0}
    # Another decoder setup or another mode is not replaced either.
    other = row("parallel_6", "async", "web", 10.0, label="embedded qwen2.5-coder-0.5b, without cheat sheet")
    kept, _ = previous([*ROWS, other], PARAMS["parts"], LABEL, "web", ["parallel"], ["sync"])
    assert kept == [*ROWS[:2], ROWS[3], other]


def test_rows_from_before_profiles_existed_count_as_the_papers():
    old = [{k: v for k, v in r.items() if k not in ("profile", "heldout", "bound_standalone_ms",
                                                      "measured_over_bound_standalone")} for r in ROWS[:2]]
    results = summarize(old + ROWS[2:])
    assert [(r["profile"], r["mode"]) for r in results][:2] == [("paper", "sync"), ("paper", "async")]
    kept, _ = previous(old, [], LABEL, "paper", ["parallel"], ["async"])
    assert kept == old[:1]
    assert "| parallel | sync | paper | entries not recorded |" in markdown({**PARAMS, "parts": []}, results)


def test_it_shows_both_bounds_for_each_row():
    (sync, *_) = summarize(ROWS)
    assert sync["bound_ms"] == 1980.0 and sync["measured_over_bound"] == round(1 / 0.99, 4)
    assert sync["bound_standalone_ms"] == 1600.0 and sync["measured_over_bound_standalone"] == 1.25
    assert "| 1980.0 | 1.0 | 1.0101 | 1600.0 | 1.25 |" in markdown(PARAMS, summarize(ROWS))


def test_it_reports_in_how_many_runs_the_extra_call_was_made():
    def outcome(made, delivered=True):
        return {"message": {"text": "Also check Oslo.", "delivered": delivered, "extra_call_made": made}}

    rows = [row(f"human_message_{k}", "async", "paper", 2000.0, dataset="human_message", **outcome(k < 2))
            for k in range(3)]
    rows += [row("human_message_0", "sync", "paper", 2500.0, dataset="human_message", **outcome(False, False))]
    results = summarize(rows)
    by_mode = {r["mode"]: r["messages"] for r in results}
    assert by_mode == {"async": {"runs": 3, "delivered": 3, "extra_call_made": 2},
                       "sync": {"runs": 1, "delivered": 0, "extra_call_made": 0}}
    text = markdown({**PARAMS, "parts": [part("paper", datasets=("human_message",))]}, results)
    assert "## Human messages" in text
    assert f"- {LABEL}, paper tool latencies, async: extra call made in 2 of 3 runs." in text
    assert f"| {LABEL} | paper | sync | 1 | 0 | 0 of 1 |" in text
    assert "## Human messages" not in markdown(PARAMS, summarize(ROWS))
    assert all(r["messages"] is None for r in summarize(ROWS))


def test_it_counts_calls_written_again_after_their_result_was_in_the_context():
    from types import SimpleNamespace as Ev

    from webapp.bench.runner import repeated_calls

    def decoded(cid, city):
        return Ev(kind="call_decoded", payload={"call_id": cid, "name": "get_weather", "args": {"city": city}})

    events = [decoded("c1", "Oslo"), decoded("c2", "Rome"),
              decoded("c3", "Oslo"),  # before c1's result: not a repeat of an answered call
              Ev(kind="interrupt_injected", payload={"calls": ["c1", "c2"]}),
              decoded("c4", "Rome"), decoded("c5", "Paris"), decoded("c6", "Oslo")]
    assert repeated_calls(events) == 2


def test_it_tells_a_run_cut_in_its_answer_from_one_cut_while_calling():
    from types import SimpleNamespace as Ev

    from webapp.bench.runner import cut_in_answer

    decoded = [Ev(kind="call_decoded", payload={"call_id": c, "name": "f", "args": {}}) for c in ("c1", "c2")]
    answered = Ev(kind="interrupt_injected", payload={"calls": ["c1", "c2"]})
    cut = Ev(kind="finish", payload={"finish_reason": "length"})
    done = Ev(kind="finish", payload={"finish_reason": "stop"})
    frames = "[CALL] c1 [HEAD] f() [END] [CALL] c2 [HEAD] f() [END] [INTR] c1 [HEAD] 1 [END] [INTR] c2 [HEAD] 2 [END]"
    assert cut_in_answer([*decoded, answered, cut], frames + " Both calls returned, the fir")
    assert not cut_in_answer([*decoded, answered, done], frames + " Both calls returned.")
    # Cut while opening another call, or with a call still out: not an answer that ran long.
    assert not cut_in_answer([*decoded, answered, cut], frames + " [CALL] c3 [HEAD] f(")
    assert not cut_in_answer([*decoded, cut], frames[:frames.index("[INTR]")] + "Waiting")
    # A run that made no call and ran out: not the answer to any result.
    assert not cut_in_answer([cut], "I think the answer is")


def test_it_tells_an_answer_begun_with_a_result_out_from_one_that_waited():
    from types import SimpleNamespace as Ev

    from webapp.bench.runner import answered_early

    def written(*pieces):
        return [Ev(kind="token", payload={"text": p}) for p in pieces]

    def decoded(cid):
        return Ev(kind="call_decoded", payload={"call_id": cid, "name": "f", "args": {}})

    def frame(*calls):
        return Ev(kind="interrupt_injected", payload={"calls": list(calls), "messages": []})

    calls = [*written("[CALL]", " c1 [HEAD]", " f() [END]"), decoded("c1"),
             *written(" [CALL]", " c2 [HEAD]", " f() [END]"), decoded("c2")]
    assert answered_early([*calls, *written(" Done", ": 2 calls"), frame("c2"), *written(" [CALL]")])
    assert not answered_early([*calls, *written(" [TRAP]", "[END]"), frame("c1", "c2"), *written("Done.")])
    assert not answered_early([*calls, frame("c1", "c2"), *written("Both returned.")])
    assert not answered_early([*calls, *written(" [TR", "AP][", "END]"), frame("c1"), *written(" [TRAP][END]"),
                               frame("c2")])
    # Words before any call, or a person's message after the answer began: not an early answer.
    assert not answered_early([*written("Let me check."), frame()])
    assert not answered_early([*calls, frame("c1", "c2"), *written("Done."),
                               Ev(kind="interrupt_injected", payload={"calls": [], "messages": ["Also Paris."]})])


def test_it_reports_dispatch_over_every_call_and_names_the_worst_row():
    def calls(*ms):
        return [{"call_id": f"c{i}", "name": "f", "drawn_latency_ms": 100.0, "started_ms": 1.0, "finished_ms": 2.0,
                 "dispatch_ms": d} for i, d in enumerate(ms)]

    rows = [row("parallel_6", "sync", "paper", 2000.0, calls=calls(1.0, 2.0, 3.0)),
            row("parallel_6", "async", "paper", 1800.0, calls=calls(4.0), measured_over_bound=1.08),
            # A failed run's calls are not counted; an old row without per-call dispatch is skipped.
            row("parallel_7", "async", "paper", 1700.0, calls=calls(90.0), errors=["task failed: x"]),
            row("parallel_8", "async", "paper", 1750.0, measured_over_bound=1.02)]
    results = summarize(rows)
    (found,) = overhead(rows, results)
    # 4 calls: a median of the calls (2.5), not of the rows' means (2.0 and 4.0 -> 3.0).
    assert found["calls"] == 4 and found["dispatch_ms"]["p50"] == 2.5 and found["dispatch_ms"]["mean"] == 2.5
    assert found["worst_row"] == {"dataset": "parallel", "mode": "async", "profile": "paper",
                                  "measured_over_bound": 1.05}
    assert found["measured_over_bound_mean"] == round((1.0101 + 1.05) / 2, 4)
    text = markdown(PARAMS, results, [found])
    assert "## What the system adds" in text and "| 4 | 2.5 / " in text and "1.05 (parallel, async, paper)" in text
    assert "## What the system adds" not in markdown(PARAMS, results)
