"""The browser's trace model (static/js/trace.js) under node's own test runner (tests/js)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

from engine.timeline import EventKind

ROOT = Path(__file__).resolve().parents[2]


def test_it_passes_the_javascript_unit_tests_with_the_engines_event_kinds():
    node = shutil.which("node") or shutil.which("nodejs")
    assert node, "node is missing: `make test` installs it (Debian package nodejs)"
    env = {**os.environ, "ASYNCLM_EVENT_KINDS": json.dumps({k.name: k.value for k in EventKind})}
    done = subprocess.run([node, "--test", str(ROOT / "tests" / "js")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "# fail 0" in done.stdout
