"""The grammar of a CML call body, as an SGLang `structural_tag` (xgrammar's triggered tags):
once the model writes `[CALL]`, what follows up to `[END]` must be ` id [HEAD] name(args) `
with `name` one of the task's tools and literal Python-style arguments. Outside a call the
model writes freely.

SGLang turns a triggered tag on only when it generates the trigger itself: a request whose input
already ends inside a call block (the tokens that slipped after an abort opened one) would write
the rest of the block unconstrained. For such a request `call_structural_tag(names, open_block=
written)` starts in that state: a grammar for the rest of this block (derived from what was
written so far), then `[END]`, then the usual triggered tags.
"""

from __future__ import annotations

import json
import re

# EBNF in xgrammar's dialect. Arguments: literals, lists, dicts, or a bare name (a future).
_RULES = r'''
root ::= " " id " [HEAD] " name "(" args? ")" " "
id ::= [A-Za-z_] [A-Za-z0-9_]*
args ::= arg (", " arg)*
arg ::= (id "=")? value
value ::= string | number | "True" | "False" | "None" | list | dict | id
string ::= "\"" ([^"\\\n] | "\\" [\\"nrt/])* "\"" | "'" ([^'\\\n] | "\\" [\\'nrt/])* "'"
number ::= "-"? [0-9]+ ("." [0-9]+)? ([eE] [-+]? [0-9]+)?
list ::= "[" (value (", " value)*)? "]"
dict ::= "{" (string ": " value (", " string ": " value)*)? "}"
'''


_ID_START = re.compile(r"[A-Za-z_]")
_ID_CHARS = re.compile(r"[A-Za-z0-9_]*")
_HEAD = " [HEAD] "
_AFTER_NAME = '"(" args? ")" " "'


def rest_of_block(written: str, tool_names: list[str]) -> str | None:
    """An EBNF grammar (the rules of `call_grammar`) for the rest of a call block of which
    `written` (the text after `[CALL]`) is already in the context. None when `written` is already
    in the arguments, or cannot begin a valid body: no rest is given then."""
    def done(*rest: str) -> str:
        rules = _RULES.replace(_RULES.splitlines()[1], "root ::= " + " ".join(rest))
        return rules + "idchar ::= [A-Za-z0-9_]\n" + f"name ::= {_names(tool_names)}\n"

    if written == "":
        return done('" "', "id", json.dumps(_HEAD), "name", _AFTER_NAME)
    if written[0] != " ":
        return None
    ident = _ID_CHARS.match(written, 1)
    text = ident.group(0) if ident else ""
    if text and not _ID_START.match(text):
        return None
    at = 1 + len(text)
    if at == len(written):
        return done("idchar*" if text else "id", json.dumps(_HEAD), "name", _AFTER_NAME)
    if not text:
        return None
    head = written[at:at + len(_HEAD)]
    if not _HEAD.startswith(head):
        return None
    at += len(head)
    if at == len(written) and head != _HEAD:
        return done(json.dumps(_HEAD[len(head):]), "name", _AFTER_NAME)
    started = written[at:]
    tails = [n[len(started):] for n in sorted(tool_names) if n.startswith(started)]
    if "(" in started or not tails:
        return None
    if all(t == "" for t in tails):
        return done(_AFTER_NAME)
    alternatives = "(" + " | ".join(json.dumps(t) for t in tails if t) + ")" + ("?" if "" in tails else "")
    return done(alternatives, _AFTER_NAME)


def _names(tool_names: list[str]) -> str:
    return " | ".join(json.dumps(n) for n in sorted(tool_names))


def call_grammar(tool_names: list[str]) -> str:
    return _RULES + f"name ::= {_names(tool_names)}\n"


def call_structural_tag(tool_names: list[str], open_block: str | None = None) -> str:
    """The `sampling_params.structural_tag` string for a task with these tools; `open_block`: the
    text of the call block the request's input ends inside (after `[CALL]`), if any."""
    triggered = {
        "type": "triggered_tags",
        "triggers": ["[CALL]"],
        "tags": [{"begin": "[CALL]", "content": {"type": "grammar", "grammar": call_grammar(tool_names)},
                  "end": "[END]"}],
    }
    rest = None if open_block is None else rest_of_block(open_block, tool_names)
    if rest is None:
        return json.dumps({"type": "structural_tag", "format": triggered})
    return json.dumps({"type": "structural_tag", "format": {"type": "sequence", "elements": [
        {"type": "grammar", "grammar": rest}, {"type": "const_string", "value": "[END]"}, triggered]}})
