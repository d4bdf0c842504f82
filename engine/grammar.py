"""The grammar of a CML call body, as an SGLang `structural_tag` (xgrammar's triggered tags):
once the model writes `[CALL]`, what follows up to `[END]` must be ` id [HEAD] name(args) `
with `name` one of the task's tools and literal Python-style arguments. Outside a call the
model writes freely. (Checked against a real SGLang server only when a GPU is available.)"""

from __future__ import annotations

import json

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


def call_grammar(tool_names: list[str]) -> str:
    names = " | ".join(json.dumps(n) for n in sorted(tool_names))
    return _RULES + f"name ::= {names}\n"


def call_structural_tag(tool_names: list[str]) -> str:
    """The `sampling_params.structural_tag` string for a task with these tools."""
    return json.dumps({
        "type": "structural_tag",
        "format": {
            "type": "triggered_tags",
            "triggers": ["[CALL]"],
            "tags": [{"begin": "[CALL]", "content": {"type": "grammar", "grammar": call_grammar(tool_names)},
                      "end": "[END]"}],
        },
    })
