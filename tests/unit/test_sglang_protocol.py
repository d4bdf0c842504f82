"""The SGLang stream parser against a transcript recorded from a real SGLang 0.5.23 server."""

import json
from pathlib import Path

import pytest

from engine.backends.sglang_protocol import (
    DONE,
    Chunk,
    Finish,
    ProtocolError,
    SseReader,
    StreamError,
    StreamState,
    parse_event,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sglang-0.5.23"  # copied from ../shared/fixtures
RECORDED = FIXTURES / "abort_stream.sse"
IDS = json.loads((FIXTURES / "abort_resubmit_ids.json").read_text())


def events_of(raw: bytes, piece: int) -> list:
    reader = SseReader()
    out = []
    for i in range(0, len(raw), piece):
        out += [parse_event(d) for d in reader.feed(raw[i:i + piece])]
    return out


@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_it_reads_the_recorded_stream_in_any_pieces(piece):
    events = events_of(RECORDED.read_bytes(), piece)
    assert events[-1] == DONE
    chunks = [e for e in events if isinstance(e, Chunk)]
    assert len(chunks) == len(events) - 1
    final = chunks[-1]
    assert final.finish == Finish("abort", message="Aborted")
    assert list(final.output_ids) == IDS["gen"] and final.prompt_tokens == len(IDS["prompt_ids"]) == 44
    assert all(c.finish is None for c in chunks[:-1])
    assert final.rid.startswith("asynclm-") and len(final.rid) == len("asynclm-") + 32


def test_cumulative_chunks_become_tokens_with_their_text():
    state = StreamState()
    tokens = []
    for event in events_of(RECORDED.read_bytes(), 4096):
        if isinstance(event, Chunk):
            tokens += state.advance(event)
    assert [t for t, _ in tokens] == IDS["gen"]
    assert "".join(text for _, text in tokens) == state.text == "1. 1\n2. 2\n3. 3\n4. 4\n5. 5\n6"


def test_a_chunk_with_several_new_tokens_gives_its_text_to_the_last():
    state = StreamState()
    meta = {"id": "r", "prompt_tokens": 3, "completion_tokens": 3, "cached_tokens": 0, "finish_reason": None}
    chunk = Chunk("r", "abc", (1, 2, 3), 3, 3, 0, None, meta)
    assert state.advance(chunk) == [(1, ""), (2, ""), (3, "abc")]


def test_non_cumulative_chunks_are_refused():
    state = StreamState()
    state.advance(Chunk("r", "ab", (1, 2), 3, 2, 0))
    with pytest.raises(ProtocolError, match="not cumulative"):
        state.advance(Chunk("r", "ax", (1, 5), 3, 2, 0))


@pytest.mark.parametrize("payload, expected", [
    ('{"text":"","output_ids":[],"meta_info":{"id":"r","finish_reason":{"type":"stop","matched":2}}}',
     Finish("stop", matched=2)),
    ('{"text":"x","output_ids":[5],"meta_info":{"id":"r","finish_reason":{"type":"stop","matched":"[INTR"}}}',
     Finish("stop", matched="[INTR")),
    ('{"text":"x","output_ids":[5],"meta_info":{"id":"r","finish_reason":{"type":"length","length":16}}}',
     Finish("length")),
])
def test_every_finish_reason_type(payload, expected):
    assert parse_event(payload).finish == expected


def test_errors_mid_stream_and_garbage():
    assert parse_event('{"error": {"message": "out of memory", "code": 500}}') == StreamError("out of memory", 500)
    with pytest.raises(ProtocolError):
        parse_event("<html>502 Bad Gateway</html>")
    with pytest.raises(ProtocolError, match="unknown finish_reason"):
        parse_event('{"text":"","output_ids":[],"meta_info":{"finish_reason":{"type":"exploded"}}}')
