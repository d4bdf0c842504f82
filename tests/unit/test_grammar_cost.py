"""The call grammar's cost benchmark (webapp/bench/grammar_cost.py, `manage.py bench_grammar`)."""

import json

from django.conf import settings
from django.core.management import call_command

from engine.constrain import TokenTable
from engine.tools import ToolSpec
from webapp.bench import grammar_cost

WEATHER = ToolSpec("get_weather", "Weather in a city.", {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"]})
# A small vocabulary: every printable ASCII character, some merged pieces, and 70 tokens holding a
# newline (the ones the `refused` case puts first).
VOCAB = [chr(c) for c in range(32, 127)] + ["get", "_weather", "(city", "='", "Paris", "')", " [END]", ", days=", "12"]
VOCAB += [f"\n{i}" for i in range(70)]


def tokenize(text):
    """Longest match first, as a BPE tokenizer would merge these pieces."""
    ids, at = [], 0
    while at < len(text):
        best = max((i for i, t in enumerate(VOCAB) if t and text.startswith(t, at)), key=lambda i: len(VOCAB[i]))
        ids.append(best)
        at += len(VOCAB[best])
    return ids


def test_it_writes_every_token_of_every_call_through_the_mask_in_every_case():
    table = TokenTable(VOCAB, [])
    calls = [([WEATHER], "get_weather(city='Paris') [END]"), ([WEATHER], "get_weather(city='Paris', days=12) [END]")]
    result = grammar_cost.measure(table, tokenize, calls)
    tokens = sum(len(tokenize(text)) for _, text in calls)
    for grammar in ("typed", "untyped"):
        for case in grammar_cost.CASES:
            found = result[grammar][case]
            # The ground truth's own tokens pass the grammar, also when the favourites are refused.
            assert found["tokens"] == tokens, (grammar, case)
            assert 0 < found["p50_ms"] <= found["p99_ms"] <= found["max_ms"]
    assert result["calls"] == 2 and result["outside_block"]["tokens"] == 200


def test_it_stops_a_call_the_typed_grammar_refuses_and_counts_only_what_it_measured():
    table = TokenTable(VOCAB, [])
    # `days` is an integer: '12' in quotes is refused at its opening quote by the typed grammar.
    calls = [([WEATHER], "get_weather(city='Paris', days='12') [END]")]
    result = grammar_cost.measure(table, tokenize, calls)
    assert result["typed"]["fits"]["tokens"] < result["untyped"]["fits"]["tokens"] == len(tokenize(calls[0][1]))


def test_the_command_measures_a_real_vocabulary(tmp_path):
    out = tmp_path / "grammar.json"
    call_command("bench_grammar", model=settings.ASYNCLM_TEST_MODEL, datasets="parallel", limit=2, out=str(out))
    saved = json.loads(out.read_text())
    assert saved["model"] == settings.ASYNCLM_TEST_MODEL and saved["vocab"] > 40000
    assert saved["calls"] >= 4  # parallel entries ask for two calls or more
    assert all(saved[g][case]["tokens"] > 0 for g in ("typed", "untyped") for case in grammar_cost.CASES)
