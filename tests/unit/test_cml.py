import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cml import (
    CallComplete,
    CallOpened,
    CallSyntaxError,
    Future,
    Malformed,
    Monitor,
    Text,
    Trap,
    parse_call,
    prose,
)


def feed_all(chunks) -> list:
    monitor = Monitor()
    events = []
    for chunk in chunks:
        events += monitor.feed(chunk)
    return normalise(events + monitor.close())


def normalise(events) -> list:
    """Merge adjacent Text events: how text is split is not part of the contract."""
    out = []
    for e in events:
        if isinstance(e, Text) and out and isinstance(out[-1], Text):
            out[-1] = Text(out[-1].text + e.text)
        elif not (isinstance(e, Text) and not e.text):
            out.append(e)
    return out


def test_it_reads_a_call_with_an_id():
    (opened, call) = [
        e for e in feed_all(['[CALL] w1 [HEAD] get_weather(city="Paris") [END]']) if not isinstance(e, Text)
    ]
    assert isinstance(opened, CallOpened)
    assert call == CallComplete(
        "w1", "get_weather", [], {"city": "Paris"}, '[CALL] w1 [HEAD] get_weather(city="Paris") [END]'
    )


def test_it_assigns_ids_to_calls_without_a_head():
    calls = [e for e in feed_all(["[CALL] f(1) [END] and [CALL] g(x=[1, 2]) [END]"]) if isinstance(e, CallComplete)]
    assert [(c.call_id, c.auto_id) for c in calls] == [("_a1", True), ("_a2", True)]
    assert calls[0].positional == [1] and calls[1].keywords == {"x": [1, 2]}


def test_it_reads_dotted_names_and_futures():
    (call,) = [e for e in feed_all(["[CALL] b [HEAD] e1.cd(folder=a, n=None) [END]"]) if isinstance(e, CallComplete)]
    assert call.name == "e1.cd" and call.keywords == {"folder": Future("a"), "n": None}
    assert call.futures == ["a"]


def test_it_survives_markers_split_and_merged_across_tokens():
    chunks = ["Sure", ".[", "CA", "LL] x", " [HE", "AD] f(a=", "1) [E", "ND][", "TRAP", "][END]", "\nDone"]
    events = feed_all(chunks)
    assert [type(e) for e in events] == [Text, CallOpened, CallComplete, Trap, Text]
    assert events[0].text == "Sure." and events[-1].text == "\nDone"


def test_a_partial_marker_is_a_critical_section():
    monitor = Monitor()
    monitor.feed("Hello ")
    assert not monitor.critical
    monitor.feed("[")
    assert monitor.critical
    monitor.feed("CALL] f(")
    assert monitor.critical and monitor.in_block
    monitor.feed("a=1) [END] ")
    assert not monitor.critical
    monitor.feed("[1] is a list")  # a '[' that cannot become a marker is released
    assert not monitor.critical


@pytest.mark.parametrize(
    "text, reason",
    [
        ("[CALL] f(a=1", "unterminated [CALL] block"),
        ("[CALL] f(a=) [END]", "syntax error"),
        ("[CALL] f(a=open('x').read()) [END]", "is not a literal"),
        ("[CALL] x [HEAD] 1+2 [END]", "expected a function call"),
        ("[CALL] not an id [HEAD] f() [END]", "is not an identifier"),
        ("[CALL] f(*xs) [END]", "*args"),
        ("[CALL] f(a=1) [CALL] g() [END]", "block without [END]"),
        ("[INTR] a [HEAD] 5 [END]", "may not write [INTR]"),
        ("[TRAP] hello [END]", "takes no content"),
    ],
)
def test_malformed_blocks_become_events_not_exceptions(text, reason):
    bad = [e for e in feed_all([text]) if isinstance(e, Malformed)]
    assert bad and reason in bad[0].reason


def test_a_malformed_block_does_not_hide_the_next_call():
    events = feed_all(["[CALL] f(a=1 [CALL] y [HEAD] g(b=2) [END]"])
    assert isinstance(events[1], Malformed)
    assert events[-1] == CallComplete("y", "g", [], {"b": 2}, "[CALL] y [HEAD] g(b=2) [END]")


def test_it_never_evaluates_code():
    with pytest.raises(ValueError):
        parse_call("f(x=__import__('os').system('true'))")


CML_SAMPLES = [
    'Let me check. [CALL] a [HEAD] get_weather(city="Paris") [END] [CALL] b [HEAD] get_time(tz="CET") [END] '
    "[TRAP][END] The weather is nice.",
    "[CALL] f(1, 2) [END][CALL] g(x=f) [END]\nthen [TRAP][END]",
    "[[CALL] x [HEAD] e1.cd(folder='a[END') [END] tail [",
    "broken [CALL] f(a=1 [TRAP][END] more [INTR] z [HEAD] 1 [END] end",
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CML_SAMPLES), st.lists(st.integers(min_value=1, max_value=12), max_size=80))
def test_any_chunking_gives_the_same_events_as_the_whole_text(text, sizes):
    chunks, rest = [], text
    for size in sizes:
        if not rest:
            break
        chunks.append(rest[:size])
        rest = rest[size:]
    chunks.append(rest)
    assert feed_all(chunks) == feed_all([text])


@pytest.mark.parametrize("argument, why", [
    ("{1, 2}", "of type set"), ('b"x"', "of type bytes"), ("1e999", "not a finite number"), ("-1e999", "finite"),
    ("1j", "of type complex"), ("...", "of type ellipsis"), ("{[1]: 2}", "not a literal"),
    ("{1: 2}", "key that is not a string"), ("10**30", "not a literal"), ("2**70", "not a literal"),
    ("123456789012345678901234567890", "out of range"), ('"a\\x00b"', "NUL"), ("[" * 300 + "]" * 300, "nested"),
])
def test_it_refuses_arguments_that_are_not_json_values(argument, why):
    with pytest.raises(CallSyntaxError, match=re.escape(why)):
        parse_call(f"f(a={argument})")


def test_it_reads_tuples_as_lists_and_keeps_json_values():
    assert parse_call('f((1, 2.5), b={"k": [None, True, "s"]})') == ("f", [[1, 2.5]], {"b": {"k": [None, True, "s"]}})


def test_prose_is_what_the_model_wrote_outside_calls_frames_and_turns():
    text = ("Let me look. [CALL] c1 [HEAD] lookup(query='a') [END] [TRAP][END] [INTR] c1 [HEAD] "
            "{\"fact\": 993, \"note\": \"(END) not a marker\"} [END] The fact is 993."
            "<|im_end|>\n<|im_start|>user\nAlso b?<|im_end|>\n<|im_start|>assistant\nAnd b is 7.")
    assert prose(text) == "Let me look. The fact is 993. And b is 7."
    assert prose("[CALL] c1 [HEAD] f() [END]") == ""
