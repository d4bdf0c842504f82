"""The dashboard's benchmark pages: the runs `manage.py bench` kept under <bench dir>/runs/."""

import json
import re
from pathlib import Path

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404
from django.shortcuts import render

from webapp.bench.failures import FAILURES_TEXT, failure_rows
from webapp.bench.goals import GOALS_TEXT, with_verdicts

RUN_NAME = re.compile(r"^[0-9]{8}-[0-9]{6}-[A-Za-z0-9]+$")
FILES = {"bench.png": "image/png", "bench.json": "application/json", "bench.md": "text/markdown",
         "scenarios.jsonl": "application/x-ndjson"}


def _runs_dir() -> Path:
    return Path(settings.ASYNCLM_BENCH_DIR) / "runs"


def _run(name: str) -> tuple[Path, dict]:
    path = _runs_dir() / name
    if not RUN_NAME.match(name) or not (path / "bench.json").is_file():
        raise Http404("no such benchmark run")
    try:
        return path, json.loads((path / "bench.json").read_text())
    except ValueError:
        raise Http404("this run's bench.json is unreadable") from None


@login_required
def runs(request):
    found = []
    if _runs_dir().is_dir():
        for path in sorted(_runs_dir().iterdir(), reverse=True):
            if RUN_NAME.match(path.name) and (path / "bench.json").is_file():
                try:
                    found.append({"name": path.name, **json.loads((path / "bench.json").read_text())["params"]})
                except (ValueError, KeyError):
                    continue
    return render(request, "bench/runs.html", {"runs": found, "bench_dir": settings.ASYNCLM_BENCH_DIR})


@login_required
def run(request, name: str):
    path, report = _run(name)
    results = report["results"]
    return render(request, "bench/run.html", {"name": name, "params": report["params"], "results": results,
                                              "messages_results": [r for r in results if r.get("messages")],
                                              "goals": with_verdicts(report.get("goals") or []),
                                              "goals_text": GOALS_TEXT,
                                              "failures": failure_rows(results), "failures_text": FAILURES_TEXT,
                                              "has_plot": (path / "bench.png").is_file()})


@login_required
def run_file(request, name: str, filename: str):
    path, _ = _run(name)
    if filename not in FILES or not (path / filename).is_file():
        raise Http404("no such file")
    return FileResponse((path / filename).open("rb"), content_type=FILES[filename])
