"""What one argument's value may be, read from the tool's JSON Schema, for the call-body grammar
(engine/callbody.py): which kinds of Python literal it may take and, for an `enum` or `const`, the
only texts it may be written as. A call the grammar lets through then passes the schema's type and
enum checks (engine/tools.py), so a model never spends a round trip on an error result for them.

Only `type`, `enum`, `const` and an array's `items` are read. A schema that combines others
(`anyOf`, `oneOf`, `allOf`, `not`, `$ref`) leaves its value unconstrained rather than risk refusing
a value it accepts; bounds, lengths and patterns are still checked when the call is validated.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from engine.cml import MARKERS, MAX_INT

KINDS = frozenset({"str", "int", "float", "bool", "none", "list", "dict"})
# JSON Schema types as the literal kinds that satisfy them (jsonschema counts no bool as a number).
_OF_TYPE = {"string": {"str"}, "integer": {"int"}, "number": {"int", "float"}, "boolean": {"bool"},
            "null": {"none"}, "array": {"list"}, "object": {"dict"}}
_COMBINED = ("anyOf", "oneOf", "allOf", "not", "$ref", "if")


@dataclass(frozen=True)
class ValueRule:
    kinds: frozenset[str] = KINDS
    literals: tuple[str, ...] = ()  # when set, the value is written as one of these texts
    items: ValueRule | None = None  # an array's elements; None: any

    @property
    def element(self) -> ValueRule:
        return self.items or ANY


ANY = ValueRule()


def value_rule(schema: Any) -> ValueRule:
    """The rule for a value that `schema` describes (ANY where it does not say or cannot be read)."""
    if not isinstance(schema, dict) or any(key in schema for key in _COMBINED):
        return ANY
    kinds = _kinds(schema.get("type"))
    values = [schema["const"]] if "const" in schema else schema.get("enum")
    if isinstance(values, list) and values:
        texts = [_spellings(v) for v in values]
        if all(texts):  # every allowed value can be written as a literal
            return ValueRule(kinds, tuple(t for spelled in texts for t in spelled))
    items = value_rule(schema["items"]) if "list" in kinds and isinstance(schema.get("items"), dict) else None
    return ValueRule(kinds, (), items if items != ANY else None)


def _kinds(declared: Any) -> frozenset[str]:
    names = [declared] if isinstance(declared, str) else declared
    if not isinstance(names, list) or not names:
        return KINDS
    found: set[str] = set()
    for name in names:
        if not isinstance(name, str) or name not in _OF_TYPE:
            return KINDS  # a type we do not know: leave it to the schema check
        found |= _OF_TYPE[name]
    return frozenset(found)


def _spellings(value: Any) -> list[str]:
    """The texts a model may write for one enum value; none when it is no plain literal or would
    spell a CML marker (the monitor reads markers even inside strings)."""
    if isinstance(value, bool) or value is None:
        texts = [repr(value)]
    elif (isinstance(value, int) and abs(value) < MAX_INT) or (isinstance(value, float) and math.isfinite(value)):
        texts = [repr(value)]
    elif isinstance(value, str):
        texts = list(dict.fromkeys((repr(value), json.dumps(value, ensure_ascii=False))))
    else:
        return []
    return [t for t in texts if not any(m in t for m in MARKERS) and "\n" not in t]
