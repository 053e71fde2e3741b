"""REDCap logic (branching logic, calculations, @CALCTEXT) <-> JSON Logic (ecrf.logic).

``redcap_to_logic`` is a real parser: a tokenizer, then precedence climbing into a small
syntax tree, then a translation of the tree. ``logic_to_redcap`` prints JSON Logic back in
REDCap syntax for the operator subset the importer produces (and a little more).

REDCap syntax understood, from loosest to tightest binding::

    or  ||                      (left-assoc, n-ary in JSON Logic)
    and &&
    not !                       (prefix)
    = == <> != < <= > >=        (REDCap "=" is loose: numbers as numbers -> JSON Logic "==")
    + -
    * /
    unary -
    ^                           (right-assoc; integer exponents 0..10 only, as repeated "*")

    [field]  [field(code)]  [event][field]  [event][field(code)]
    'text'  "text"  (a doubled quote inside is one quote)  12  1.5  .5  true  false
    if(c, a, b)  round(x[, d])  sum(..)  mean(..)  min(..)  max(..)
    datediff(a, b, unit[, "ymd"|"mdy"|"dmy"][, signed])  isblankormissingcode(x)

Translation::

    [field]                  {"var": <path>}   the path comes from the resolver (same form:
                             "field", other form: "FORM.field", other event: "EVENT.FORM.field")
    [cb(code)] = "1" / 1     {"in": ["code", {"var": "cb"}]}     (= "0" / <> "1": {"!": [...]})
    [cb(code)] elsewhere     {"if": [{"in": [...]}, 1, 0]}
    x = ""  /  x <> ""       {"is_empty": [x]}  /  {"!": [{"is_empty": [x]}]}
    isblankormissingcode(x)  {"is_empty": [x]}
    a = b  a <> b            {"==": [a, b]}  {"!=": [a, b]}
    a < "5"                  {"<": [a, 5]}   (numeric text is a number in ordering comparisons)
    sum(a, b)  a + b         {"+": [a, b]}                      (sum: warning, REDCap skips blanks)
    mean(a, b)               {"/": [{"+": [a, b]}, 2]}          (warning: REDCap skips blanks)
    round(x)                 {"round": [x, 0]}
    datediff(a, b, "d")      {"date_diff": ["days", a, b]}      ("M" months, "y" years; warning
                             unless the signed flag is true: REDCap returns |b - a|)
    "today" / "now" in datediff  {"today": []}

Printing: ``{"!": [x]}`` becomes the inverted comparison (``<>`` for ``==``, ``= "0"`` for a
checkbox option, ``<> ""`` for is_empty, De Morgan for and/or), otherwise ``if(x, 0, 1) = 1``.

Not translatable (RedcapLogicError): instance piping ``[field][1]``, smart variables
(``[event-name]``, ``[field:value]``), unknown functions, powers other than small integer
exponents, datediff units h/m/s.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["FieldRef", "RedcapLogicError", "default_namer", "logic_to_redcap", "redcap_to_logic"]


MAX_SOURCE_LENGTH = 20_000


class RedcapLogicError(Exception):
    """The expression cannot be translated; the message says why (in English)."""


@dataclass(frozen=True)
class FieldRef:
    field: str
    event: str | None = None
    code: str | None = None  # checkbox option: [field(code)]


# The resolver turns a reference into (JSON Logic variable path, is_checkbox) or raises
# RedcapLogicError (unknown field, field without a value, bad event name).
Resolver = Callable[[FieldRef], tuple[str, bool]]

# --- tokenizer ---------------------------------------------------------------------------------

_NAME_RE = re.compile(r"[a-z][a-z0-9_]*")
_NUMBER_RE = re.compile(r"\d+(\.\d*)?|\.\d+")
_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = ("<>", "<=", ">=", "!=", "==", "&&", "||", "=", "<", ">", "+", "-", "*", "/", "^", "!")


@dataclass
class _Token:
    kind: str  # num str ref name op ( ) , end
    value: Any
    position: int


def _reference(parts: list[str], position: int) -> FieldRef:
    instance = len(parts) >= 2 and parts[-1].strip().isdigit()
    if instance:
        raise RedcapLogicError(
            f"the instance reference [{']['.join(parts)}] (repeating instruments/events) is not supported")
    if len(parts) > 2:
        raise RedcapLogicError(f"the reference [{']['.join(parts)}] has too many parts")
    event = parts[0].strip().lower() if len(parts) == 2 else None
    body = parts[-1].strip()
    code = None
    match = re.fullmatch(r"([^()]*)\(([^()]*)\)", body)
    if match:
        body, code = match.group(1).strip(), match.group(2).strip()
        if not code:
            raise RedcapLogicError(f"the checkbox reference [{parts[-1]}] has no option code")
    name = body.lower()
    for part in (name, event):
        if part is not None and not _NAME_RE.fullmatch(part):
            kind = "smart variable or modifier" if re.search(r"[-:]", part) else "reference"
            raise RedcapLogicError(f"the {kind} [{part}] is not supported")
    return FieldRef(field=name, event=event, code=code)


def _tokens(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(source)
    while i < n:
        char = source[i]
        if char.isspace():
            i += 1
            continue
        start = i
        if char == "[":
            parts: list[str] = []
            while i < n and source[i] == "[":
                end = source.find("]", i + 1)
                if end < 0:
                    raise RedcapLogicError(f"a [ at position {i + 1} is never closed")
                parts.append(source[i + 1:end])
                i = end + 1
            tokens.append(_Token("ref", _reference(parts, start), start))
            continue
        if char in "'\"":
            text: list[str] = []
            i += 1
            while True:
                if i >= n:
                    raise RedcapLogicError(f"the text starting at position {start + 1} is never closed")
                if source[i] == char:
                    if i + 1 < n and source[i + 1] == char:  # a doubled quote
                        text.append(char)
                        i += 2
                        continue
                    i += 1
                    break
                text.append(source[i])
                i += 1
            tokens.append(_Token("str", "".join(text), start))
            continue
        number = _NUMBER_RE.match(source, i)
        if number:
            i = number.end()
            literal = number.group(0)
            value: int | float = float(literal) if "." in literal else int(literal)
            tokens.append(_Token("num", value, start))
            continue
        word = _WORD_RE.match(source, i)
        if word:
            i = word.end()
            tokens.append(_Token("name", word.group(0).lower(), start))
            continue
        if char in "(),":
            tokens.append(_Token(char, char, start))
            i += 1
            continue
        for op in _OPERATORS:
            if source.startswith(op, i):
                tokens.append(_Token("op", op, start))
                i += len(op)
                break
        else:
            raise RedcapLogicError(f"unexpected character {char!r} at position {i + 1}")
    tokens.append(_Token("end", None, n))
    return tokens


# --- parser: tokens -> tree ---------------------------------------------------------------------
# Nodes: ("num", v) ("str", v) ("bool", v) ("ref", FieldRef) ("not", x) ("neg", x)
#        ("bin", op, a, b) ("call", name, [args])

_BINARY: dict[str, tuple[int, str]] = {  # op -> (precedence, canonical op)
    "or": (1, "or"), "||": (1, "or"),
    "and": (2, "and"), "&&": (2, "and"),
    "=": (4, "="), "==": (4, "="), "<>": (4, "<>"), "!=": (4, "<>"),
    "<": (4, "<"), "<=": (4, "<="), ">": (4, ">"), ">=": (4, ">="),
    "+": (5, "+"), "-": (5, "-"),
    "*": (6, "*"), "/": (6, "/"),
    "^": (8, "^"),
}
_PREC_NOT = 3
_PREC_NEG = 7
_COMPARISONS = frozenset({"=", "<>", "<", "<=", ">", ">="})


class _Parser:
    def __init__(self, source: str) -> None:
        self.tokens = _tokens(source)
        self.index = 0

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def take(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def expect(self, kind: str) -> _Token:
        token = self.take()
        if token.kind != kind:
            where = "but the expression ends" if token.kind == "end" else f"at position {token.position + 1}"
            raise RedcapLogicError(f"expected {kind!r} {where}")
        return token

    def parse(self) -> Any:
        if self.peek().kind == "end":
            raise RedcapLogicError("the expression is empty")
        tree = self.expression(0)
        token = self.peek()
        if token.kind != "end":
            raise RedcapLogicError(f"unexpected {token.value!r} at position {token.position + 1}")
        return tree

    def binary_op(self) -> tuple[int, str] | None:
        token = self.peek()
        if token.kind in ("op", "name") and token.value in _BINARY:
            return _BINARY[token.value]
        return None

    def expression(self, min_prec: int) -> Any:
        left = self.unary()
        while True:
            found = self.binary_op()
            if found is None or found[0] < min_prec:
                return left
            prec, op = found
            self.take()
            right = self.expression(prec if op == "^" else prec + 1)
            if op in _COMPARISONS and left[0] == "bin" and left[1] in _COMPARISONS:
                raise RedcapLogicError("chained comparisons (a < b < c) are ambiguous; use and")
            left = ("bin", op, left, right)

    def unary(self) -> Any:
        token = self.peek()
        if (token.kind == "name" and token.value == "not") or (token.kind == "op" and token.value == "!"):
            self.take()
            return ("not", self.expression(_PREC_NOT))
        if token.kind == "op" and token.value in ("-", "+"):
            self.take()
            operand = self.expression(_PREC_NEG)
            return ("neg", operand) if token.value == "-" else operand
        return self.primary()

    def primary(self) -> Any:
        token = self.take()
        if token.kind == "num":
            return ("num", token.value)
        if token.kind == "str":
            return ("str", token.value)
        if token.kind == "ref":
            return ("ref", token.value)
        if token.kind == "(":
            inner = self.expression(0)
            self.expect(")")
            return inner
        if token.kind == "name":
            if token.value in ("true", "false") and self.peek().kind != "(":
                return ("bool", token.value == "true")
            if self.peek().kind != "(":
                raise RedcapLogicError(f"unknown word {token.value!r} at position {token.position + 1}")
            self.take()
            args: list[Any] = []
            if self.peek().kind != ")":
                args.append(self.expression(0))
                while self.peek().kind == ",":
                    self.take()
                    args.append(self.expression(0))
            self.expect(")")
            return ("call", token.value, args)
        if token.kind == "end":
            raise RedcapLogicError("the expression ends too early")
        raise RedcapLogicError(f"unexpected {token.value!r} at position {token.position + 1}")


# --- translation: tree -> JSON Logic -------------------------------------------------------------

_NUMERIC_TEXT = re.compile(r"-?(\d+(\.\d*)?|\.\d+)")
_JSON_COMPARISON = {"=": "==", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_DATEDIFF_UNITS = {"d": "days", "m": "months", "y": "years"}
_UNSUPPORTED_FUNCTIONS = frozenset({
    "roundup", "rounddown", "sqrt", "abs", "exponential", "stdev", "median", "log", "isnumber", "isinteger",
    "contains", "not_contain", "starts_with", "ends_with", "concat", "concat_ws", "left", "right", "length",
    "find", "mid", "upper", "lower", "trim", "replace_text", "datediff_ymd", "year", "month", "day",
    "mod", "round_to", "if_error",
})


def _as_number(value: str) -> int | float:
    return float(value) if "." in value else int(value)


class _Translator:
    def __init__(self, resolve: Resolver) -> None:
        self.resolve = resolve
        self.warnings: list[str] = []

    def var(self, ref: FieldRef) -> tuple[dict[str, Any], bool]:
        path, checkbox = self.resolve(ref)
        return {"var": path}, checkbox

    def value(self, node: Any) -> Any:
        kind = node[0]
        if kind in ("num", "str", "bool"):
            return node[1]
        if kind == "ref":
            ref: FieldRef = node[1]
            var, checkbox = self.var(FieldRef(field=ref.field, event=ref.event))
            if ref.code is not None:
                if not checkbox:
                    raise RedcapLogicError(f"[{ref.field}({ref.code})] names an option, but "
                                           f"{ref.field} is not a checkbox field")
                return {"if": [{"in": [ref.code, var]}, 1, 0]}
            if checkbox:
                raise RedcapLogicError(f"the checkbox field [{ref.field}] is used without an option code "
                                       f"(write [{ref.field}(code)])")
            return var
        if kind == "not":
            return {"!": [self.value(node[1])]}
        if kind == "neg":
            operand = self.value(node[1])
            if _is_number(operand):
                return -operand
            return {"-": [operand]}
        if kind == "bin":
            return self.binary(node[1], node[2], node[3])
        return self.call(node[1], node[2])

    def checkbox_test(self, ref: FieldRef, literal: Any, op: str) -> Any | None:
        """[cb(code)] = "1" and the like; None when this is not such a test."""
        if op not in ("=", "<>"):
            return None
        var, checkbox = self.var(FieldRef(field=ref.field, event=ref.event))
        if not checkbox:
            raise RedcapLogicError(f"[{ref.field}({ref.code})] names an option, but {ref.field} is not a "
                                   f"checkbox field")
        text = str(literal).strip().lower() if not isinstance(literal, bool) else ("1" if literal else "0")
        if text in ("1", "true"):
            checked = True
        elif text in ("0", "false"):
            checked = False
        else:
            return None
        test = {"in": [ref.code, var]}
        return test if checked == (op == "=") else {"!": [test]}

    def binary(self, op: str, a: Any, b: Any) -> Any:
        if op in ("and", "or"):
            left, right = self.value(a), self.value(b)
            parts = left[op] if isinstance(left, dict) and list(left) == [op] else [left]
            return {op: [*parts, right]}
        if op in ("=", "<>"):
            for one, other in ((a, b), (b, a)):
                if one[0] == "ref" and one[1].code is not None and other[0] in ("num", "str", "bool"):
                    test = self.checkbox_test(one[1], other[1], op)
                    if test is not None:
                        return test
                if other[0] == "str" and other[1] == "":
                    empty = {"is_empty": [self.value(one)]}
                    return empty if op == "=" else {"!": [empty]}
        if op in _COMPARISONS:
            left, right = self.value(a), self.value(b)
            if op not in ("=", "<>"):
                left, right = (_as_number(v) if isinstance(v, str) and _NUMERIC_TEXT.fullmatch(v) else v
                               for v in (left, right))
            return {_JSON_COMPARISON[op]: [left, right]}
        if op == "^":
            exponent = b[1] if b[0] == "num" else None
            if b[0] == "neg" or not isinstance(exponent, int) or not 0 <= exponent <= 10:
                raise RedcapLogicError("powers (^) are supported only with a whole exponent from 0 to 10")
            base = self.value(a)
            if exponent == 0:
                return 1
            return base if exponent == 1 else {"*": [base] * exponent}
        left, right = self.value(a), self.value(b)
        if op in ("+", "*") and isinstance(left, dict) and list(left) == [op] and len(left[op]) > 1:
            return {op: [*left[op], right]}
        return {op: [left, right]}

    def call(self, name: str, args: list[Any]) -> Any:
        def arity(low: int, high: int) -> None:
            if not low <= len(args) <= high:
                expected = str(low) if low == high else f"{low} to {high}"
                raise RedcapLogicError(f"{name}() takes {expected} arguments, not {len(args)}")

        if name == "if":
            arity(3, 3)
            return {"if": [self.value(arg) for arg in args]}
        if name == "round":
            arity(1, 2)
            return {"round": [self.value(args[0]), self.value(args[1]) if len(args) == 2 else 0]}
        if name in ("sum", "min", "max", "mean"):
            arity(1, 100)
            values = [self.value(arg) for arg in args]
            if name == "sum":
                if len(values) == 1 and isinstance(values[0], dict) and list(values[0]) == ["+"]:
                    return values[0]
                if len(values) > 1:
                    self.warnings.append("sum() skips blank values in REDCap; here it is +, which is blank "
                                         "when any value is blank")
                return {"+": values}
            if name == "mean":
                self.warnings.append("mean() skips blank values in REDCap; here it is the sum divided by "
                                     f"{len(values)}, which is blank when any value is blank")
                return {"/": [{"+": values}, len(values)]}
            return {name: values}
        if name == "isblankormissingcode":
            arity(1, 1)
            return {"is_empty": [self.value(args[0])]}
        if name == "datediff":
            return self.datediff(args)
        if name in _UNSUPPORTED_FUNCTIONS:
            raise RedcapLogicError(f"the function {name}() is not supported")
        raise RedcapLogicError(f"unknown function {name}()")

    def datediff(self, args: list[Any]) -> Any:
        if not 3 <= len(args) <= 5:
            raise RedcapLogicError(f"datediff() takes 3 to 5 arguments, not {len(args)}")
        unit_node = args[2]
        if unit_node[0] != "str" or unit_node[1].strip() not in ("d", "M", "y", "m", "h", "s"):
            raise RedcapLogicError("the unit of datediff() must be \"d\", \"M\" or \"y\"")
        unit = unit_node[1].strip()
        if unit not in ("d", "M", "y"):
            raise RedcapLogicError(f"datediff() in unit {unit!r} (hours, minutes, seconds) is not supported")
        signed = False
        for extra in args[3:]:
            if extra[0] == "bool":
                signed = extra[1]
            elif extra[0] == "str" and extra[1].strip().lower() in ("ymd", "mdy", "dmy"):
                continue
            elif extra[0] == "str" and extra[1].strip().lower() in ("true", "false"):
                signed = extra[1].strip().lower() == "true"
            else:
                raise RedcapLogicError("datediff() takes a date format (\"ymd\") and/or true/false after the unit")
        if not signed:
            self.warnings.append("datediff() without the signed flag returns the absolute difference in REDCap; "
                                 "it is translated as a signed difference (second date minus first)")
        ends: list[Any] = []
        for arg in args[:2]:
            if arg[0] == "str" and arg[1].strip().lower() in ("today", "now"):
                ends.append({"today": []})
            else:
                ends.append(self.value(arg))
        return {"date_diff": [_DATEDIFF_UNITS[unit.lower()], *ends]}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def redcap_to_logic(source: str, *, resolve: Resolver) -> tuple[Any, list[str]]:
    """JSON Logic for a REDCap expression, and warnings about lossy parts.

    Raises RedcapLogicError (English message) for anything it cannot translate."""
    if len(source) > MAX_SOURCE_LENGTH:
        raise RedcapLogicError(f"the expression is longer than {MAX_SOURCE_LENGTH} characters")
    try:
        tree = _Parser(source).parse()
        translator = _Translator(resolve)
        return translator.value(tree), translator.warnings
    except RecursionError as exc:
        raise RedcapLogicError("the expression is nested too deeply") from exc


# --- printing: JSON Logic -> REDCap --------------------------------------------------------------

_ATOM = 10
_PRINT_PREC = {"or": 1, "and": 2, "not": 3, "cmp": 4, "+": 5, "-": 5, "*": 6, "/": 6, "neg": 7}
_NEGATED = {"==": "!=", "===": "!==", "!=": "==", "!==": "===", "<": ">=", "<=": ">", ">": "<=", ">=": "<"}
_REDCAP_COMPARISON = {"==": "=", "===": "=", "!=": "<>", "!==": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_UNITS_BACK = {"days": "d", "months": "M", "years": "y"}


def _literal(value: Any) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RedcapLogicError(f"the number {value} cannot be written in REDCap")
        if value.is_integer() and abs(value) < 1e15:
            return repr(value)
        text = repr(value)
        return format(value, "f") if "e" in text else text
    if isinstance(value, str):
        if '"' not in value:
            return f'"{value}"'
        if "'" not in value:
            return f"'{value}'"
        return '"' + value.replace('"', '""') + '"'
    raise RedcapLogicError(f"the value {value!r} cannot be written in REDCap")


# The namer turns a JSON Logic variable path into (REDCap event or None, REDCap field name).
Namer = Callable[[str], tuple[str | None, str]]


def default_namer(path: str) -> tuple[str | None, str]:
    """"item" and "FORM.item" -> [item]; "EVENT.FORM.item" -> [event][item]."""
    parts = path.split(".")
    if len(parts) > 3 or any(not part for part in parts) or not _NAME_RE.fullmatch(parts[-1]):
        raise RedcapLogicError(f"the variable {path!r} has no REDCap equivalent")
    return (parts[0].lower() if len(parts) == 3 else None), parts[-1]


class _Printer:
    def __init__(self, namer: Namer) -> None:
        self.namer = namer

    def reference(self, path: Any, code: str | None = None) -> str:
        if isinstance(path, list) and len(path) == 1:
            path = path[0]
        if not isinstance(path, str) or not path:
            raise RedcapLogicError(f"the variable {path!r} cannot be written in REDCap")
        event, field = self.namer(path)
        option = f"({code})" if code is not None else ""
        return f"[{event}][{field}{option}]" if event else f"[{field}{option}]"

    def op_of(self, expr: Any) -> tuple[str, Any]:
        if not isinstance(expr, dict) or len(expr) != 1:
            raise RedcapLogicError(f"not a JSON Logic operation: {expr!r}")
        op, args = next(iter(expr.items()))
        if not isinstance(args, list):
            args = [args]
        return op, args

    def wrap(self, printed: tuple[str, int], min_prec: int) -> str:
        text, prec = printed
        return f"({text})" if prec < min_prec else text

    def show(self, expr: Any) -> tuple[str, int]:
        if not isinstance(expr, dict):
            if isinstance(expr, list):
                raise RedcapLogicError("lists have no REDCap equivalent")
            return _literal(expr), _ATOM
        op, args = self.op_of(expr)
        if op == "var":
            if len(args) != 1:
                raise RedcapLogicError("a variable with a default value has no REDCap equivalent")
            return self.reference(args[0]), _ATOM
        if op in ("and", "or"):
            if not args:
                raise RedcapLogicError(f"an empty {op} has no REDCap equivalent")
            if len(args) == 1:
                return self.show(args[0])
            prec = _PRINT_PREC[op]
            # "and" inside "or" gets parentheses too: clearer, and the same tree on re-import.
            parts = [self.wrap(self.show(arg), prec + 1 if i or op == "or" else prec) for i, arg in enumerate(args)]
            return f" {op} ".join(parts), prec
        if op in ("!", "!!"):
            if len(args) != 1:
                raise RedcapLogicError(f"{op} takes one argument")
            return self.negate(args[0]) if op == "!" else self.negate({"!": [args[0]]})
        if op in _REDCAP_COMPARISON:
            prec = _PRINT_PREC["cmp"]
            if len(args) == 3 and op in ("<", "<="):
                shown = [self.wrap(self.show(arg), prec + 1) for arg in args]
                pieces = [f"{shown[i]} {op} {shown[i + 1]}" for i in (0, 1)]
                return " and ".join(pieces), _PRINT_PREC["and"]
            if len(args) != 2:
                raise RedcapLogicError(f"{op} takes two arguments")
            left, right = (self.wrap(self.show(arg), prec + 1) for arg in args)
            return f"{left} {_REDCAP_COMPARISON[op]} {right}", prec
        if op == "in":
            return self.checkbox(args, checked=True)
        if op == "is_empty":
            if len(args) != 1:
                raise RedcapLogicError("is_empty takes one argument")
            return f'{self.wrap(self.show(args[0]), _PRINT_PREC["cmp"] + 1)} = ""', _PRINT_PREC["cmp"]
        if op in ("+", "*"):
            if not args:
                raise RedcapLogicError(f"an empty {op} has no REDCap equivalent")
            if len(args) == 1:
                return (f"sum({self.show(args[0])[0]})", _ATOM) if op == "+" else self.show(args[0])
            prec = _PRINT_PREC[op]
            parts = [self.wrap(self.show(arg), prec if i == 0 else prec + 1) for i, arg in enumerate(args)]
            return f" {op} ".join(parts), prec
        if op in ("-", "/"):
            if op == "-" and len(args) == 1:
                return "-" + self.wrap(self.show(args[0]), _ATOM), _PRINT_PREC["neg"]
            if len(args) != 2:
                raise RedcapLogicError(f"{op} takes two arguments")
            prec = _PRINT_PREC[op]
            return (f"{self.wrap(self.show(args[0]), prec)} {op} {self.wrap(self.show(args[1]), prec + 1)}",
                    prec)
        if op == "if":
            return self.conditional(args), _ATOM
        if op == "round":
            if len(args) not in (1, 2):
                raise RedcapLogicError("round takes one or two arguments")
            digits = self.show(args[1])[0] if len(args) == 2 else "0"
            return f"round({self.show(args[0])[0]}, {digits})", _ATOM
        if op in ("min", "max"):
            if not args:
                raise RedcapLogicError(f"an empty {op} has no REDCap equivalent")
            return f"{op}({', '.join(self.show(arg)[0] for arg in args)})", _ATOM
        if op == "date_diff":
            if len(args) != 3 or args[0] not in _UNITS_BACK:
                raise RedcapLogicError("date_diff needs a unit (days, months, years) and two dates")
            ends = [self.show(arg)[0] for arg in args[1:]]
            return f'datediff({ends[0]}, {ends[1]}, "{_UNITS_BACK[args[0]]}", true)', _ATOM
        if op == "today":
            return '"today"', _ATOM
        raise RedcapLogicError(f"the JSON Logic operation {op!r} has no REDCap equivalent")

    def checkbox(self, args: list[Any], *, checked: bool) -> tuple[str, int]:
        if len(args) != 2 or not isinstance(args[0], str | int) or isinstance(args[0], bool) \
                or not isinstance(args[1], dict) or list(args[1]) != ["var"]:
            raise RedcapLogicError("only \"in\" of an option code in a checkbox field has a REDCap equivalent")
        code = str(args[0])
        if not code or any(c in code for c in "()[]"):
            raise RedcapLogicError(f"the option code {code!r} cannot be written in REDCap")
        path = args[1]["var"]
        return f'{self.reference(path, code)} = "{1 if checked else 0}"', _PRINT_PREC["cmp"]

    def conditional(self, args: list[Any]) -> str:
        if len(args) < 2:
            raise RedcapLogicError("if needs a condition and a value")
        if len(args) == 2:
            args = [*args, ""]
        if len(args) % 2 == 0:
            args = [*args, None]
        condition, then, rest = args[0], args[1], args[2:]
        otherwise = self.show(rest[0])[0] if len(rest) == 1 else self.conditional(rest)
        return f"if({self.show(condition)[0]}, {self.show(then)[0]}, {otherwise})"

    def negate(self, expr: Any) -> tuple[str, int]:
        if not isinstance(expr, dict):
            if isinstance(expr, list):
                return _literal(not expr), _ATOM
            truthy = bool(expr) and not (isinstance(expr, float) and math.isnan(expr))
            return _literal(not truthy), _ATOM
        op, args = self.op_of(expr)
        if op in _NEGATED and len(args) == 2:
            return self.show({_NEGATED[op]: args})
        if op == "in":
            return self.checkbox(args, checked=False)
        if op == "is_empty" and len(args) == 1:
            return f'{self.wrap(self.show(args[0]), _PRINT_PREC["cmp"] + 1)} <> ""', _PRINT_PREC["cmp"]
        if op == "!" and len(args) == 1:
            return self.show(args[0])
        if op in ("and", "or") and args:
            flipped = "or" if op == "and" else "and"
            return self.show({flipped: [{"!": [arg]} for arg in args]})
        # Anything else: JSON Logic truthiness through if() (REDCap has no general "not").
        return f"if({self.show(expr)[0]}, 0, 1) = 1", _PRINT_PREC["cmp"]


def logic_to_redcap(expr: Any, *, namer: Namer = default_namer) -> str:
    """REDCap syntax for a JSON Logic expression; RedcapLogicError if it has no equivalent.

    ``namer`` maps a variable path to (event, field) when item codes were renamed."""
    try:
        return _Printer(namer).show(expr)[0]
    except RecursionError as exc:
        raise RedcapLogicError("the expression is nested too deeply") from exc
