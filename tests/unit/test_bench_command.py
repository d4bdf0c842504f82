"""`manage.py bench` refuses bad options with a clear message before it starts anything."""

import pytest
from django.core.management import CommandError, call_command


@pytest.mark.parametrize(("args", "message"), [
    (["--datasets", "parallel,nope"], "unknown datasets: nope"),
    (["--modes", "fast"], "unknown modes: fast"),
    (["--limit", "0"], "at least 1"),
    (["--model", "qwen2.5-coder-0.5b"], "for --decoder embedded"),
    (["--no-cheat-sheet"], "for --decoder embedded"),
    (["--decoder", "embedded", "--model", "simulated"], "needs a real model"),
    (["--decoder", "embedded", "--model", "gpt-9"], "Unknown model 'gpt-9'"),
    (["--token-ms", "0"], "--token-ms must be positive"),
])
def test_it_refuses_bad_options(args, message, tmp_path):
    with pytest.raises(CommandError, match=message):
        call_command("bench", *args, "--out", str(tmp_path))
    assert not (tmp_path / "bench.json").exists()


def test_append_and_remeasure_need_an_earlier_run(tmp_path):
    with pytest.raises(CommandError, match="no earlier run"):
        call_command("bench", "--remeasure", "--out", str(tmp_path))
