"""The call grammar sent to SGLang, and the grammar for the rest of a block a request starts in."""

import json

import pytest

from engine.grammar import call_structural_tag, rest_of_block

NAMES = ["zz_lookup", "get_weather", "get"]


def root(written: str) -> str | None:
    grammar = rest_of_block(written, NAMES)
    return None if grammar is None else grammar.splitlines()[1]


@pytest.mark.parametrize(("written", "expected"), [
    ("", 'root ::= " " id " [HEAD] " name "(" args? ")" " "'),
    (" ", 'root ::= id " [HEAD] " name "(" args? ")" " "'),
    (" c2", 'root ::= idchar* " [HEAD] " name "(" args? ")" " "'),
    (" c2 [HE", 'root ::= "AD] " name "(" args? ")" " "'),
    (" c2 [HEAD]", 'root ::= " " name "(" args? ")" " "'),
    (" c2 [HEAD] ", 'root ::= ("get" | "get_weather" | "zz_lookup") "(" args? ")" " "'),
    (" c2 [HEAD] get", 'root ::= ("_weather")? "(" args? ")" " "'),  # "get" may be complete
    (" c2 [HEAD] zz_l", 'root ::= ("ookup") "(" args? ")" " "'),
    (" c2 [HEAD] zz_lookup", 'root ::= "(" args? ")" " "'),
])
def test_it_continues_a_block_from_where_it_stands(written, expected):
    assert root(written) == expected


@pytest.mark.parametrize("written", [" c2 [HEAD] zz_lookup(", " c2 [HEAD] nope", "x", " 2x", " c2 [HEX"])
def test_it_gives_no_rest_inside_the_arguments_or_for_a_body_that_cannot_be_valid(written):
    assert root(written) is None


def test_the_rest_keeps_the_rules_and_allows_only_the_tasks_tools():
    grammar = rest_of_block(" c2 [HEAD] ", NAMES)
    assert 'name ::= "get" | "get_weather" | "zz_lookup"' in grammar
    assert "args ::= arg" in grammar and "idchar ::=" in grammar
    assert grammar.count("root ::=") == 1


def test_a_request_inside_a_block_starts_with_its_rest_then_the_usual_triggered_tags():
    plain = json.loads(call_structural_tag(NAMES))
    assert plain["format"]["type"] == "triggered_tags"
    inside = json.loads(call_structural_tag(NAMES, open_block=" c2 [HEAD]"))
    rest, end, triggered = inside["format"]["elements"]
    assert inside["format"]["type"] == "sequence"
    assert rest == {"type": "grammar", "grammar": rest_of_block(" c2 [HEAD]", NAMES)}
    assert end == {"type": "const_string", "value": "[END]"} and triggered == plain["format"]
    # In the arguments no exact rest exists: the request gets the plain tag.
    assert json.loads(call_structural_tag(NAMES, open_block=" c2 [HEAD] get(")) == plain
