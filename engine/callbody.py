"""The grammar of a call body, one character at a time: what the engine lets the model write
between `[HEAD]` and `[END]` (engine/constrain.py turns it into a token mask).

A body is a call of one of the task's tools, `name(arg=value, ...)`, with each of the tool's
argument names at most once, values that are Python literals (strings, numbers, True/False/None,
lists, dicts, tuples) or the id of an earlier call (a future), then ` [END]`. Each value is of a
kind its schema allows (engine/valuerules.py: a string where it asks for a string, an int where
it asks for an integer, one of its enum values where it lists them; an array's elements too).
`CallBody` is the automaton: `feed` advances it, `accepts` tries text on a copy.
"""

from __future__ import annotations

import keyword
import math
import re
from collections.abc import Iterable

from engine.cml import END, MARKERS, MAX_INT
from engine.tools import ToolSpec
from engine.valuerules import ANY, ValueRule, value_rule

MAX_SPACES = 2  # where a space is optional; more would let a model loop on blanks
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IDENT_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_IDENT_CHARS = _IDENT_START | frozenset("0123456789")
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
# escape letter -> hex digits that follow (no \0: a NUL is no argument value)
_ESCAPES = {**{c: 0 for c in "\\'\"nrtbfva"}, "x": 2, "u": 4}
_CLOSER = {"[": "]", "(": ")", "{": "}"}
# What closes a container after one of its values: `(x)` is x in brackets, no tuple, so a `(`
# closes there only once it holds a comma ("(,").
_CLOSES = {**_CLOSER, "(,": ")", "(": ""}
_CONSTANTS = (("True", "bool"), ("False", "bool"), ("None", "none"))
_NUMBER_ENDS = frozenset({"zero", "int", "dot", "frac", "exp"})


class CallGrammar:
    """What a task's call bodies may contain: its tools and each tool's keyword arguments."""

    def __init__(self, tools: Iterable[ToolSpec], typed: bool = True) -> None:
        # Names ast cannot parse as a call, or keys that are Python keywords, could never be
        # written validly, so they are left out rather than offered.
        self.keys: dict[str, frozenset[str]] = {}
        self.required: dict[str, frozenset[str]] = {}
        self.rules: dict[str, dict[str, ValueRule]] = {}
        for tool in tools:
            if not _NAME.match(tool.name) or any(keyword.iskeyword(p) for p in tool.name.split(".")):
                continue
            props = tool.parameters.get("properties") or {}
            keys = frozenset(k for k in props if _IDENT.match(k) and not keyword.iskeyword(k))
            self.keys[tool.name] = keys
            self.required[tool.name] = frozenset(tool.parameters.get("required") or ()) & keys
            self.rules[tool.name] = {k: value_rule(props[k]) if typed else ANY for k in keys}
        self.names = tuple(self.keys)


class CallBody:
    """Incremental validator of the text after `[HEAD]`: ` name(key=value, ...) [END]`.

    `feed` returns False (and the state is then meaningless) at the first character that cannot
    continue a valid body; `accepts` tests text on a copy. A bare identifier is allowed only as a
    whole argument value (a future): cml.py evaluates nested values with literal_eval."""

    __slots__ = ("g", "futures", "mode", "stack", "rules", "rule", "buf", "spaces", "tool", "used", "close_ok",
                 "quote", "esc", "is_key", "tail", "num")

    def __init__(self, grammar: CallGrammar, futures: Iterable[str] = ()) -> None:
        self.g = grammar
        self.futures = frozenset(futures)
        self.mode = "lead"
        self.stack: list[str] = []  # open containers: "[", "(", "{"; empty means a call argument
        self.rules: list[ValueRule] = []  # per open container: the rule of its elements
        self.rule = ANY  # the rule of the value being read
        self.buf = ""  # the name, key, word or number being read
        self.spaces = 0
        self.tool = ""
        self.used: frozenset[str] = frozenset()
        self.close_ok = False  # the current container (or argument list) may close here
        self.quote = ""
        self.esc = -1  # -1: no escape; 0: after a backslash; n > 0: hex digits still due
        self.is_key = False  # the string being read is a dict key
        self.tail = ""  # a string's last characters, so it cannot spell a CML marker
        self.num = ""

    @property
    def done(self) -> bool:
        return self.mode == "done"

    def copy(self) -> CallBody:
        other = CallBody.__new__(CallBody)
        for name in CallBody.__slots__:
            setattr(other, name, getattr(self, name))
        other.stack = list(self.stack)
        other.rules = list(self.rules)
        return other

    def feed(self, text: str) -> bool:
        for c in text:
            if self.mode == "done":
                return True  # the block is over: the rest of the token is plain text
            if self.mode == "dead":
                return False
            if not getattr(self, "_" + self.mode)(c):
                self.mode = "dead"
                return False
        return True

    def accepts(self, text: str) -> bool:
        return bool(text) and self.copy().feed(text)

    # -- the frame: name(key=value, ...) [END] ----------------------------------------------
    def _space(self, c: str) -> bool:
        if c == " " and self.spaces < MAX_SPACES:
            self.spaces += 1
            return True
        return False

    def _lead(self, c: str) -> bool:
        if self._space(c):
            return True
        self.mode, self.buf = "name", ""
        return self._name(c)

    def _name(self, c: str) -> bool:
        if c == "(" and self.buf in self.g.keys:
            self.tool, self.mode, self.close_ok, self.spaces = self.buf, "argkey", True, 0
            return True
        self.buf += c
        return any(n.startswith(self.buf) for n in self.g.names)

    def _argkey(self, c: str) -> bool:
        if self._space(c):
            return True
        if c == ")" and self.close_ok:
            return self._close_call()
        if c not in _IDENT_START:
            return False
        self.mode, self.buf = "key", ""
        return self._key(c)

    def _key(self, c: str) -> bool:
        free = self.g.keys[self.tool] - self.used
        if c in _IDENT_CHARS:
            self.buf += c
            return any(k.startswith(self.buf) for k in free)
        if self.buf not in free:
            return False
        self.used |= {self.buf}
        self.rule = self.g.rules[self.tool][self.buf]
        self.mode, self.spaces = "equals", 0
        return self._equals(c)

    def _equals(self, c: str) -> bool:
        if c == "=":
            self.mode, self.spaces, self.close_ok = "value", 0, False
            return True
        return self._space(c)

    def _close_call(self) -> bool:
        if not self.g.required[self.tool] <= self.used:
            return False
        self.mode, self.spaces = "closed", 0
        return True

    def _closed(self, c: str) -> bool:
        if c == "[":
            self.mode, self.buf = "end", "["
            return True
        return self._space(c)

    def _end(self, c: str) -> bool:
        self.buf += c
        if not END.startswith(self.buf):
            return False
        if self.buf == END:
            self.mode = "done"
        return True

    # -- values -------------------------------------------------------------------------------
    def _value(self, c: str) -> bool:
        if self._space(c):
            return True
        self.spaces = 0
        if self.stack and self.close_ok and c == _CLOSER[self.stack[-1][0]]:
            return self._pop()
        kinds = self.rule.kinds
        if self.rule.literals:
            self.mode, self.buf = "literal", ""
            return self._literal(c)
        if c in "'\"" and "str" in kinds:
            self.mode, self.quote, self.esc, self.is_key, self.tail = "string", c, -1, False, ""
            return True
        if (c in _DIGITS or c == "-") and kinds & {"int", "float"}:
            self.mode, self.buf, self.num = "number", "", ""
            return self._number(c)
        if c in _IDENT_START:
            self.mode, self.buf = "word", ""
            return self._word(c)
        if c in _CLOSER and ("dict" if c == "{" else "list") in kinds:
            self.stack.append(c)
            self.rules.append(ANY if c == "{" else self.rule.element)
            self.rule = self.rules[-1]
            self.mode, self.close_ok = ("dictkey" if c == "{" else "value"), True
            return True
        return False

    def _literal(self, c: str) -> bool:
        """A value that must be one of a few texts (an enum's values, or a future)."""
        options = self.rule.literals if self.stack else (*self.rule.literals, *self.futures)
        if any(o.startswith(self.buf + c) for o in options):
            self.buf += c
            return True
        if self.buf not in options:
            return False
        self.mode = "after"
        return self._after(c)

    def _after(self, c: str) -> bool:
        """After a complete value: a separator or the closer of what holds it."""
        if self._space(c):
            return True
        self.spaces = 0
        if not self.stack:
            if c == "," and self.g.keys[self.tool] - self.used:  # else no key could follow it
                self.mode, self.close_ok = "argkey", False
                return True
            return c == ")" and self._close_call()
        top = self.stack[-1]
        if c == ",":
            if top == "(":
                self.stack[-1] = "(,"  # a tuple now: `(x)` alone is only x in brackets
            self.mode, self.close_ok, self.rule = ("dictkey" if top == "{" else "value"), True, self.rules[-1]
            return True
        return c == _CLOSES[top] and self._pop()

    def _pop(self) -> bool:
        self.stack.pop()
        self.rules.pop()
        self.mode, self.spaces = "after", 0
        return True

    def _dictkey(self, c: str) -> bool:
        if self._space(c):
            return True
        self.spaces = 0
        if c == "}" and self.close_ok:
            return self._pop()
        if c in "'\"":
            self.mode, self.quote, self.esc, self.is_key, self.tail = "string", c, -1, True, ""
            return True
        return False

    def _colon(self, c: str) -> bool:
        if c == ":":
            self.mode, self.spaces, self.close_ok, self.rule = "value", 0, False, self.rules[-1]
            return True
        return self._space(c)

    def _string(self, c: str) -> bool:
        self.tail = (self.tail + c)[-len(END) - 1:]
        # The monitor finds markers in the raw text, even inside a string literal.
        if c == "]" and any(self.tail.endswith(m) for m in MARKERS):
            return False
        if self.esc >= 0:
            return self._escape(c)
        if c == self.quote:
            self.mode, self.spaces = ("colon" if self.is_key else "after"), 0
            return True
        if c == "\\":
            self.esc = 0
            return True
        return c >= " " or c == "\t"  # a newline ends the line; NUL makes ast refuse the source

    def _escape(self, c: str) -> bool:
        if self.esc == 0:
            if c not in _ESCAPES:
                return False
            self.esc = _ESCAPES[c] or -1
            return True
        if c not in _HEX:
            return False
        self.esc = self.esc - 1 or -1
        return True

    def _number(self, c: str) -> bool:
        state = _number_step(self.num, c)
        if state in ("dot", "e") and "float" not in self.rule.kinds:
            state = ""  # an integer: no fraction, no exponent
        if state:
            self.num, self.buf = state, self.buf + c
            return True
        if self.num not in _NUMBER_ENDS or (self.num not in ("zero", "int") and not math.isfinite(float(self.buf))):
            return False  # 1e999 would be inf, which no JSON result can carry
        if self.num in ("zero", "int") and abs(int(self.buf)) >= MAX_INT:
            return False  # out of the range arguments may have (engine/cml.py)
        self.mode = "after"
        return self._after(c)

    def _word(self, c: str) -> bool:
        constants = [w for w, kind in _CONSTANTS if kind in self.rule.kinds]
        words = constants if self.stack else (*constants, *self.futures)
        if c in _IDENT_CHARS:
            self.buf += c
            return any(w.startswith(self.buf) for w in words)
        if self.buf not in words:
            return False
        self.mode = "after"
        return self._after(c)


def _number_step(state: str, c: str) -> str:
    """The next state of a Python int/float literal (no `_`, no hex, no complex), "" if none."""
    if c in _DIGITS:
        return {"": "zero" if c == "0" else "int", "neg": "zero" if c == "0" else "int", "int": "int",
                "dot": "frac", "frac": "frac", "e": "exp", "esign": "exp", "exp": "exp"}.get(state, "")
    if c == "-":
        return {"": "neg", "e": "esign"}.get(state, "")
    if c == "+":
        return "esign" if state == "e" else ""
    if c == ".":
        return "dot" if state in ("zero", "int") else ""
    if c in "eE":
        return "e" if state in ("zero", "int", "dot", "frac") else ""
    return ""
