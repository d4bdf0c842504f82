"""The live trace publisher (engine/publish.py) against the real Redis: every event reaches the
task's stream and its group once, in order, and events handed over within the least interval
between two sends go out together."""

from __future__ import annotations

import time

from django.conf import settings

from engine.messages import TraceEvent
from engine.publish import TracePublisher, recent_events


class Layer:
    """A channel layer that records what each group was sent."""

    def __init__(self) -> None:
        self.sends: list[tuple[str, list[dict]]] = []

    async def group_send(self, group: str, message: dict) -> None:
        self.sends.append((group, message["events"]))


def wait_for_sends(layer: Layer, n: int, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while len(layer.sends) < n and time.monotonic() < deadline:
        time.sleep(0.01)


def token(task_id: int, seq: int) -> TraceEvent:
    return TraceEvent(task_id, seq, float(seq), "token", {"text": f"t{seq}"})


def test_it_sends_what_arrives_within_the_interval_together_in_order(redis_client):
    layer = Layer()
    publisher = TracePublisher(settings.REDIS_URL, layer, min_interval_s=1.0)
    try:
        publisher.publish_many([token(7, 1)])
        wait_for_sends(layer, 1)  # the first send is done: the next ones wait for the interval
        publisher.publish_many([token(7, 2)])
        publisher.publish_many([token(7, 3), token(8, 1)])
    finally:
        publisher.close()
    by_group: dict[str, list[list[int]]] = {}
    for group, events in layer.sends:
        by_group.setdefault(group, []).append([e["seq"] for e in events])
    assert list(by_group.values())[0] == [[1], [2, 3]]  # two sends for task 7, not three
    assert sum(len(v) for v in by_group.values()) == 3
    assert [e["seq"] for e in recent_events(redis_client, 7)] == [1, 2, 3]
    assert [e["seq"] for e in recent_events(redis_client, 8)] == [1]


def test_a_lone_event_is_sent_at_once(redis_client):
    layer = Layer()
    publisher = TracePublisher(settings.REDIS_URL, layer, min_interval_s=1.0)
    try:
        publisher.publish_many([token(9, 1)])
        wait_for_sends(layer, 1, within_s=0.5)
        assert [e["seq"] for _, events in layer.sends for e in events] == [1]  # not held for the interval
    finally:
        publisher.close()
