import json

import pytest

from engine.messages import MessageError, Sampling, TaskSubmission


def test_it_round_trips_a_submission():
    sub = TaskSubmission(3, "m", "prompt ✓", 10, 12.5, Sampling(temperature=0.7, seed=9))
    assert TaskSubmission.from_json(sub.to_json()) == sub


@pytest.mark.parametrize("raw, message", [
    ('{"version": 99}', "unsupported TaskSubmission version"),
    ("not json", "malformed"),
    ('{"version": 1, "task_id": 1}', "malformed"),
    ('{"version": 1, "task_id": "1", "model": "m", "prompt": "p", "max_tokens": 1, "submitted_at": 0}', "integers"),
])
def test_it_rejects_bad_submissions_clearly(raw, message):
    with pytest.raises(MessageError, match=message):
        TaskSubmission.from_json(raw)


def test_the_wire_format_is_versioned_json():
    data = json.loads(TaskSubmission(1, "m", "p", 1, 0.0).to_json())
    assert data["version"] == 1 and data["sampling"]["temperature"] == 0.0
