"""JSON Logic for eCRF branching ("show if"), calculations and cross-field edit checks.

The server is the source of truth; the browser evaluates the same expressions live with the
npm package json-logic-js 2.0.5 plus ``static/js/ecrf-logic.js``. This module mirrors
json-logic-js operator by operator, including JavaScript's coercions, so that both sides
agree on every value. ``tests/ecrf/logic_cases.json`` is the shared table that keeps them
honest (``tests/ecrf/test_logic.py`` runs it in both languages).

Semantics, in short (where JavaScript and Python differ, JavaScript wins):

* Values are JSON values plus JavaScript's ``undefined`` (``UNDEFINED``) and the numbers NaN
  and +/-Infinity. Numbers behave as IEEE doubles (Python ints are converted at use).
* Truthiness is json-logic's: JS truthiness, except that an empty array is falsy.
  ``"0"`` and ``"false"`` are truthy, ``0``, ``""``, ``null`` and NaN are falsy.
* ``==``/``!=`` implement JavaScript's abstract (loose) equality for the JSON types:
  number/string compare numerically (``"1" == 1``, ``"" == 0``), a boolean is first turned
  into 0/1 (``"1" == true``, ``"2" == true`` is false), ``null`` equals only ``null``
  (``null == 0`` is false), an array compares as its ``join(",")`` string against a number
  or string (``[] == 0``, ``[1, 2] == "1,2"``), two arrays/objects are equal only if they are
  the very same value from ``data`` (reference identity, as in JS). ``===``/``!==`` require
  the same type; NaN equals nothing.
* ``<``, ``<=``, ``>``, ``>=``: two strings compare by UTF-16 code units (so ISO dates
  compare chronologically), anything else numerically after JS ``ToNumber``
  (``null`` -> 0, ``"abc"`` -> NaN, and every comparison with NaN is false).
* ``+`` and ``*`` use ``parseFloat`` (``"3.5 kg"`` -> 3.5, ``null`` -> NaN), ``-``, ``/``
  and ``%`` use ``ToNumber`` (``"5"`` -> 5, ``""`` -> 0, ``"5 kg"`` -> NaN). A single
  argument ``*`` returns its argument unchanged (json-logic-js reduces without a seed).
* ``var`` reads only the data's own values: object keys and canonical array indexes
  (``"AE.0.term"``). Deliberate difference to stock json-logic-js: no prototype
  properties, no ``length``, no indexing into strings; ecrf-logic.js overrides ``var``
  the same way so that an expression can never reach a JavaScript function.

Custom operators (identical in ecrf-logic.js):

* ``round [value, digits=0]``: rounds the shortest decimal representation of the number
  (what JS ``toExponential()`` and Python ``repr`` print) half away from zero, so
  ``1.005`` -> 1.01, ``2.5`` -> 3, ``-2.5`` -> -3. ``value`` may be a number or a numeric
  string; ``digits`` an integer 0..10. Anything else, or a non-finite number, gives null.
* ``date_diff [unit, from, to]``: ``unit`` is "days", "months" or "years"; dates are
  strict ISO "YYYY-MM-DD" strings (partial or invalid dates give null). Months count the
  whole calendar months from ``from`` to ``to``: ``(y2-y1)*12 + (m2-m1)``, minus one when
  the day of month of ``to`` is smaller than that of ``from`` (no end-of-month clamping:
  Jan 31 -> Feb 28 is 0 months, Feb 29 -> next Feb 28 is 0 years). Years are whole months
  // 12. When ``to`` is before ``from`` the result is the negated count of the reverse.
* ``today []``: the ISO date in the evaluation context's reserved key ``_today`` (of the
  root data, also inside map/filter), or null. The caller supplies it, which keeps
  evaluation deterministic and puts the study time zone decision with the caller.
* ``is_empty [x]``: true for null, "" and [], false otherwise.

Results are canonical JSON values: NaN, +/-Infinity and undefined become null, -0 becomes
0, and integral floats within +/-2**53 become ints, exactly what ``JSON.stringify`` does in
the browser. Limits (validated before evaluation and enforced during it) keep an expression
from running away: see the MAX_* constants.
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any, Final

__all__ = [
    "MAX_ARRAY_LENGTH",
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_OPERATIONS",
    "MAX_SERIALISED_BYTES",
    "MAX_STRING_LENGTH",
    "OPERATORS",
    "UNDEFINED",
    "LogicError",
    "logic_evaluate",
    "logic_truthy",
    "logic_validate",
    "logic_variables",
]

MAX_DEPTH: Final = 32  # nested arrays/objects, the expression itself counting as 1
MAX_NODES: Final = 500  # every JSON value in the expression
MAX_SERIALISED_BYTES: Final = 16 * 1024  # UTF-8 bytes of the compact JSON
MAX_ARRAY_LENGTH: Final = 1000  # arrays map/filter/reduce/all/none/some walk, and merge builds
MAX_STRING_LENGTH: Final = 10_000  # UTF-16 code units of a string cat builds
MAX_OPERATIONS: Final = 100_000  # operator evaluations per logic_evaluate call

ROUND_MAX_DIGITS: Final = 10
DATE_UNITS: Final = frozenset({"days", "months", "years"})
TODAY_KEY: Final = "_today"

# Operators with (minimum, maximum) argument counts; None means unbounded. json-logic-js
# itself accepts any count; the bounds reject expressions whose meaning is accidental
# (``{"and": []}`` is undefined, ``{"*": []}`` throws in JS).
OPERATORS: Final[dict[str, tuple[int, int | None]]] = {
    "==": (2, 2), "===": (2, 2), "!=": (2, 2), "!==": (2, 2),
    ">": (2, 2), ">=": (2, 2), "<": (2, 3), "<=": (2, 3),
    "!": (1, 1), "!!": (1, 1), "and": (1, None), "or": (1, None), "if": (1, None),
    "+": (1, None), "-": (1, 2), "*": (1, None), "/": (2, 2), "%": (2, 2),
    "min": (1, None), "max": (1, None),
    "var": (1, 2), "missing": (1, None), "missing_some": (2, 2),
    "in": (2, 2), "cat": (1, None), "substr": (2, 3), "merge": (1, None),
    "map": (2, 2), "filter": (2, 2), "reduce": (2, 3), "all": (2, 2), "none": (2, 2), "some": (2, 2),
    "round": (1, 2), "date_diff": (3, 3), "today": (0, 0), "is_empty": (1, 1),
}
# Their second argument runs once per array element, with the element (or, for reduce,
# {"current", "accumulator"}) as data.
SCOPED_OPERATORS: Final = frozenset({"map", "filter", "reduce", "all", "none", "some"})

_VAR_PATH = re.compile(r"[A-Za-z0-9_.]{1,200}")  # used with fullmatch: "$" would accept "\n"
_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]*")
_ISO_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
# ECMAScript StrWhiteSpaceChar (WhiteSpace + LineTerminator), what Number() and parseFloat trim.
_JS_WHITESPACE: Final = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
_DECIMAL_LITERAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NON_DECIMAL_LITERAL = re.compile(r"0(?:[xX][0-9a-fA-F]+|[oO][0-7]+|[bB][01]+)")
_PARSE_FLOAT_PREFIX = re.compile(r"[+-]?(?:Infinity|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)")
_SAFE_INTEGER: Final = 2**53


class LogicError(ValueError):
    """An invalid expression, or an evaluation that hit a limit or a JavaScript TypeError."""


class _Undefined:
    """JavaScript's ``undefined``: a missing argument, or ``{"and": []}``-like results."""

    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False


UNDEFINED: Final = _Undefined()


# --- validation --------------------------------------------------------------------------


class _Validator:
    """Walks the expression without recursion, so a hostile deep input cannot blow the stack."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.nodes = 0

    def run(self, expr: Any) -> list[str]:
        # (value, depth of the value if it is a container, inside scoped logic?, location)
        stack: list[tuple[Any, int, bool, str]] = [(expr, 1, False, "$")]
        while stack:
            node, depth, scoped, where = stack.pop()
            if not self._count(node, depth, where):
                return self.problems
            if isinstance(node, list):
                stack.extend((item, depth + 1, scoped, f"{where}[{index}]") for index, item in enumerate(node))
            elif isinstance(node, dict):
                stack.extend(self._operator(node, depth, scoped, where))
            elif not _is_json_scalar(node):
                self.problems.append(f"{where}: unsupported value of type {type(node).__name__}")
            elif isinstance(node, float) and not math.isfinite(node):
                self.problems.append(f"{where}: numbers must be finite")
        if not self.problems:
            size = len(json.dumps(expr, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))
            if size > MAX_SERIALISED_BYTES:
                self.problems.append(f"expression is {size} bytes of JSON; the limit is {MAX_SERIALISED_BYTES}")
        return self.problems

    def _count(self, node: Any, depth: int, where: str) -> bool:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            self.problems.append(f"expression has more than {MAX_NODES} nodes")
            return False
        if isinstance(node, list | dict) and depth > MAX_DEPTH:
            self.problems.append(f"{where}: expression is nested deeper than {MAX_DEPTH} levels")
            return False
        return True

    def _operator(self, node: dict[Any, Any], depth: int, scoped: bool, where: str) -> list[tuple[Any, int, bool, str]]:
        if len(node) != 1:
            shown = ", ".join(repr(key) for key in list(node)[:5])
            self.problems.append(f"{where}: an operator object has exactly one key, got {len(node)} ({shown})")
            return []
        ((op, raw),) = node.items()
        if not isinstance(op, str) or op not in OPERATORS:
            self.problems.append(f"{where}: unknown or forbidden operator {op!r}")
            return []
        where = f"{where}.{op}"
        args: list[Any] = raw if isinstance(raw, list) else [raw]
        arg_depth = depth + 1
        if isinstance(raw, list):
            # The argument list is a node of its own, as it is in the JSON.
            if not self._count(raw, depth + 1, where):
                return []
            arg_depth = depth + 2
        low, high = OPERATORS[op]
        if len(args) < low or (high is not None and len(args) > high):
            expected = str(low) if low == high else f"{low}..{high}" if high is not None else f"at least {low}"
            self.problems.append(f"{where}: takes {expected} argument(s), got {len(args)}")
            return []
        if op == "var":
            self._var_path(args[0], scoped, where)
        elif op == "missing":
            keys = args[0] if len(args) == 1 and isinstance(args[0], list) else args
            for key in keys:
                self._var_path(key, scoped, where, literal_only=True)
        elif op == "missing_some":
            need = args[0]
            if not (isinstance(need, int) and not isinstance(need, bool) and need >= 0):
                self.problems.append(f"{where}: the first argument is a non-negative integer literal")
            if not isinstance(args[1], list):
                self.problems.append(f"{where}: the second argument is a literal array of field paths")
            else:
                for key in args[1]:
                    self._var_path(key, scoped, where, literal_only=True)
        elif op == "date_diff" and not (isinstance(args[0], str) and args[0] in DATE_UNITS):
            self.problems.append(f"{where}: the unit is one of {', '.join(sorted(DATE_UNITS))} (a literal)")
        children: list[tuple[Any, int, bool, str]] = []
        for index, arg in enumerate(args):
            # Only the per-element logic is scoped; the array and reduce's initial value are not.
            arg_scoped = scoped or (op in SCOPED_OPERATORS and index == 1)
            children.append((arg, arg_depth, arg_scoped, f"{where}[{index}]"))
        return children

    def _var_path(self, path: Any, scoped: bool, where: str, *, literal_only: bool = False) -> None:
        if isinstance(path, int) and not isinstance(path, bool) and path >= 0 and not literal_only:
            return
        if isinstance(path, str) and path == "" and scoped:
            return  # the current element inside map/filter/reduce/all/none/some
        if isinstance(path, str) and _VAR_PATH.fullmatch(path):
            return
        if isinstance(path, str) and path == "":
            self.problems.append(f"{where}: the empty path (the current element) is only allowed inside "
                                 f"{', '.join(sorted(SCOPED_OPERATORS))}")
            return
        self.problems.append(f"{where}: field paths are literal strings matching [A-Za-z0-9_.]{{1,200}}, "
                             f"got {_short(path)}")


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_json_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def logic_validate(expr: Any) -> list[str]:
    """The problems that make ``expr`` unacceptable (an empty list when it is fine)."""
    return _Validator().run(expr)


# The expressions of a form version are evaluated several times per save (branching to a
# fixed point, then checks), and the same objects on every save while the version is
# cached. The bounding walk is done once per expression object: keyed by id(), with the
# object itself kept, so an id is never reused while it is here. Callers never mutate an
# expression after evaluating it (definitions are read-only once published).
_VALIDATED: OrderedDict[int, Any] = OrderedDict()
_VALIDATED_SIZE = 4096


def _require_valid(expr: Any) -> None:
    container = isinstance(expr, dict | list)
    if container and _VALIDATED.get(id(expr)) is expr:
        return
    problems = logic_validate(expr)
    if problems:
        raise LogicError("invalid logic: " + "; ".join(problems))
    if container:
        _VALIDATED[id(expr)] = expr
        if len(_VALIDATED) > _VALIDATED_SIZE:
            _VALIDATED.popitem(last=False)


def logic_variables(expr: Any) -> set[str]:
    """Every field path the expression reads from the data it is evaluated with.

    Paths inside the per-element logic of map/filter/reduce/all/none/some are relative to
    the element and are left out: the array's own path (``{"var": "AE"}``) covers them.
    Keys of ``missing``/``missing_some`` are included. Raises LogicError if ``expr`` is invalid.
    """
    _require_valid(expr)
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        ((op, raw),) = node.items()
        args = raw if isinstance(raw, list) else [raw]
        if op == "var":
            found.add(str(args[0]))
            for default in args[1:]:
                walk(default)
        elif op == "missing":
            found.update(args[0] if len(args) == 1 and isinstance(args[0], list) else args)
        elif op == "missing_some":
            found.update(args[1])
        elif op in SCOPED_OPERATORS:
            for index, arg in enumerate(args):
                if index != 1:
                    walk(arg)
        else:
            for arg in args:
                walk(arg)

    walk(expr)
    return found


# --- JavaScript value semantics ----------------------------------------------------------


def _js_type(value: Any) -> str:
    if value is UNDEFINED:
        return "undefined"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | dict):
        return "object"
    raise LogicError(f"data values must be JSON values, got {type(value).__name__}")


def _float(value: int | float) -> float:
    """A JSON number as the IEEE double JavaScript would hold (huge ints round, may overflow)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def logic_truthy(value: Any) -> bool:
    """json-logic truthiness: JavaScript's, except that an empty array is falsy."""
    if isinstance(value, list):
        return len(value) > 0
    return _js_truthy(value)


def _js_truthy(value: Any) -> bool:
    """Plain JavaScript ``!!value`` (an empty array is truthy here)."""
    kind = _js_type(value)
    if kind in ("undefined", "null"):
        return False
    if kind == "boolean":
        return bool(value)
    if kind == "number":
        number = _float(value)
        return number != 0 and not math.isnan(number)
    if kind == "string":
        return bool(value != "")
    return True


def _to_primitive(value: Any) -> Any:
    """ToPrimitive for plain data: arrays become their join(","), objects "[object Object]"."""
    if isinstance(value, list):
        return ",".join("" if item is None or item is UNDEFINED else _to_string(item) for item in value)
    if isinstance(value, dict):
        if "toString" in value:
            # An own non-callable toString shadows Object.prototype.toString and valueOf
            # returns the object itself, so JavaScript throws a TypeError here.
            raise LogicError("cannot convert object to primitive value (it has a 'toString' key)")
        return "[object Object]"
    _js_type(value)
    return value


def _to_string(value: Any) -> str:
    primitive = _to_primitive(value)
    if primitive is UNDEFINED:
        return "undefined"
    if primitive is None:
        return "null"
    if isinstance(primitive, bool):
        return "true" if primitive else "false"
    if isinstance(primitive, int | float):
        return _number_to_string(_float(primitive))
    return str(primitive)


def _number_to_string(number: float) -> str:
    """ECMAScript Number::toString(10): shortest round-trip digits, JS exponent thresholds."""
    if math.isnan(number):
        return "NaN"
    if number == 0:
        return "0"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    if number < 0:
        return "-" + _number_to_string(-number)
    digits, exponent = _shortest_digits(number)
    k = len(digits)
    n = exponent + k  # the decimal point sits after n digits
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    sign = "+" if n - 1 >= 0 else "-"
    mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{mantissa}e{sign}{abs(n - 1)}"


def _shortest_digits(number: float) -> tuple[str, int]:
    """(digits, exponent) with abs(number) == int(digits) * 10**exponent, digits shortest.

    Python's repr and JavaScript both print the shortest digit string that reads back as the
    same double (ties to the closer), so the digits are the same in both languages.
    """
    _, digit_tuple, exponent = Decimal(repr(abs(number))).as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple)).lstrip("0") or "0"
    stripped = digits.rstrip("0") or "0"
    return stripped, exponent + len(digits) - len(stripped)


def _to_number(value: Any) -> float:
    primitive = _to_primitive(value)
    if primitive is UNDEFINED:
        return math.nan
    if primitive is None:
        return 0.0
    if isinstance(primitive, bool):
        return 1.0 if primitive else 0.0
    if isinstance(primitive, int | float):
        return _float(primitive)
    return _string_to_number(primitive)


def _string_to_number(text: str) -> float:
    """JavaScript Number(string)."""
    text = text.strip(_JS_WHITESPACE)
    if text == "":
        return 0.0
    if text in ("Infinity", "+Infinity"):
        return math.inf
    if text == "-Infinity":
        return -math.inf
    if _DECIMAL_LITERAL.fullmatch(text):
        return float(text)
    if _NON_DECIMAL_LITERAL.fullmatch(text):
        base = {"x": 16, "o": 8, "b": 2}[text[1].lower()]
        return _float(int(text[2:], base))
    return math.nan


def _parse_float(value: Any) -> float:
    """JavaScript parseFloat(value): the longest decimal prefix of String(value)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = _float(value)
        return 0.0 if number == 0 else number  # String(-0) is "0"
    match = _PARSE_FLOAT_PREFIX.match(_to_string(value).lstrip(_JS_WHITESPACE))
    if match is None:
        return math.nan
    literal = match.group()
    if literal.lstrip("+-") == "Infinity":
        return -math.inf if literal.startswith("-") else math.inf
    return float(literal)


def _to_integer_or_infinity(value: Any) -> float:
    number = _to_number(value)
    if math.isnan(number):
        return 0
    if math.isinf(number):
        return number
    return math.trunc(number)


def _utf16_length(text: str) -> int:
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def _utf16_units(text: str) -> bytes:
    return text.encode("utf-16-be", "surrogatepass")


def _utf16_slice(text: str, start: int, end: int) -> str:
    if all(ord(char) <= 0xFFFF for char in text):
        return text[start:end]
    units = text.encode("utf-16-le", "surrogatepass")
    return units[2 * start : 2 * end].decode("utf-16-le", "surrogatepass")


def _strict_equal(left: Any, right: Any) -> bool:
    left_type, right_type = _js_type(left), _js_type(right)
    if left_type != right_type:
        return False
    if left_type == "number":
        return _float(left) == _float(right)
    if left_type == "object":
        return left is right
    return bool(left == right)


def _loose_equal(left: Any, right: Any) -> bool:
    """ECMAScript IsLooselyEqual for JSON values."""
    left_type, right_type = _js_type(left), _js_type(right)
    if left_type == right_type:
        return _strict_equal(left, right)
    nullish = ("null", "undefined")
    if left_type in nullish or right_type in nullish:
        return left_type in nullish and right_type in nullish
    if left_type == "boolean":
        return _loose_equal(_to_number(left), right)
    if right_type == "boolean":
        return _loose_equal(left, _to_number(right))
    if left_type == "number" and right_type == "string":
        return _float(left) == _string_to_number(right)
    if left_type == "string" and right_type == "number":
        return _string_to_number(left) == _float(right)
    if left_type == "object":
        return _loose_equal(_to_primitive(left), right)
    if right_type == "object":
        return _loose_equal(left, _to_primitive(right))
    return False


def _less_than(left: Any, right: Any) -> bool | None:
    """ECMAScript IsLessThan: None stands for undefined (a NaN was involved)."""
    left_primitive, right_primitive = _to_primitive(left), _to_primitive(right)
    if isinstance(left_primitive, str) and isinstance(right_primitive, str):
        # Code-unit order, as JavaScript compares strings (differs from code points above U+FFFF).
        return _utf16_units(left_primitive) < _utf16_units(right_primitive)
    left_number, right_number = _to_number(left_primitive), _to_number(right_primitive)
    if math.isnan(left_number) or math.isnan(right_number):
        return None
    return left_number < right_number


def _js_plus(left: Any, right: Any) -> Any:
    """The JavaScript binary ``+`` operator (concatenates when either side is a string)."""
    left_primitive, right_primitive = _to_primitive(left), _to_primitive(right)
    if isinstance(left_primitive, str) or isinstance(right_primitive, str):
        return _to_string(left_primitive) + _to_string(right_primitive)
    return _to_number(left_primitive) + _to_number(right_primitive)


def _js_divide(dividend: float, divisor: float) -> float:
    if divisor == 0:
        if dividend == 0 or math.isnan(dividend):
            return math.nan
        return math.copysign(math.inf, dividend) * math.copysign(1.0, divisor)
    return dividend / divisor


def _js_remainder(dividend: float, divisor: float) -> float:
    if math.isnan(dividend) or math.isnan(divisor) or math.isinf(dividend) or divisor == 0:
        return math.nan
    if math.isinf(divisor) or dividend == 0:
        return dividend
    return math.fmod(dividend, divisor)


def _js_min(numbers: list[float], *, largest: bool) -> float:
    """Math.min / Math.max: NaN wins, and -0 is smaller than +0."""
    result = -math.inf if largest else math.inf
    for number in numbers:
        if math.isnan(number):
            return math.nan
        if number == result == 0:
            negative = math.copysign(1.0, number) < 0
            if negative != largest:
                result = number
        elif (number > result) if largest else (number < result):
            result = number
    return result


# --- custom operators (mirrored in static/js/ecrf-logic.js) ------------------------------


def _round_half_away_from_zero(value: Any, digits: Any) -> float | None:
    if value is None or value is UNDEFINED or isinstance(value, bool | list | dict):
        return None
    if isinstance(value, str):
        if value.strip(_JS_WHITESPACE) == "":
            return None
        number = _string_to_number(value)
    else:
        number = _float(value)
    if not math.isfinite(number):
        return None
    if digits is UNDEFINED:
        places = 0
    elif (isinstance(digits, int | float) and not isinstance(digits, bool) and math.isfinite(digits)
          and digits == int(digits) and 0 <= digits <= ROUND_MAX_DIGITS):
        places = int(digits)
    else:
        return None
    if number == 0:
        return 0.0
    digit_string, exponent = _shortest_digits(number)
    drop = -places - exponent  # digits to the right of the kept decimal place
    if drop <= 0:
        return number
    if drop > len(digit_string):
        return 0.0
    kept = int(digit_string[: len(digit_string) - drop] or "0")
    if digit_string[len(digit_string) - drop] >= "5":
        kept += 1  # the dropped part is at least a half: away from zero
    if kept == 0:
        return 0.0
    return float(f"{'-' if number < 0 else ''}{kept}e-{places}")


def _iso_date(value: Any) -> date | None:
    if not isinstance(value, str):
        return None
    match = _ISO_DATE.fullmatch(value)
    if match is None:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def _whole_months(earlier: date, later: date) -> int:
    months = (later.year - earlier.year) * 12 + later.month - earlier.month
    return months - 1 if later.day < earlier.day else months


def _date_diff(unit: Any, start: Any, end: Any) -> int | None:
    first, second = _iso_date(start), _iso_date(end)
    if first is None or second is None or not isinstance(unit, str) or unit not in DATE_UNITS:
        return None
    if unit == "days":
        return second.toordinal() - first.toordinal()
    months = _whole_months(first, second) if second >= first else -_whole_months(second, first)
    if unit == "months":
        return months
    return months // 12 if months >= 0 else -(-months // 12)


def _is_empty(value: Any) -> bool:
    return value is None or value is UNDEFINED or value == "" or (isinstance(value, list) and not value)


# --- the evaluator -----------------------------------------------------------------------


def _own_property(value: Any, key: str) -> Any:
    if isinstance(value, dict):
        return value.get(key, UNDEFINED)
    if isinstance(value, list) and _ARRAY_INDEX.fullmatch(key) and int(key) < len(value):
        return value[int(key)]
    return UNDEFINED


def _arg(args: list[Any], index: int) -> Any:
    return args[index] if index < len(args) else UNDEFINED


class _Evaluation:
    """One evaluation: the root data (for ``today``) and the operation budget."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self.operations = 0

    def apply(self, logic: Any, data: Any) -> Any:
        # Mirrors jsonLogic.apply: arrays are evaluated element-wise (and so rebuilt), any
        # value that is not a one-key object is returned as it is.
        if isinstance(logic, list):
            return [self.apply(item, data) for item in logic]
        if not (isinstance(logic, dict) and len(logic) == 1):
            return logic
        self.operations += 1
        if self.operations > MAX_OPERATIONS:
            raise LogicError(f"evaluation exceeded {MAX_OPERATIONS} operations")
        ((op, raw),) = logic.items()
        values: list[Any] = raw if isinstance(raw, list) else [raw]
        lazy = self._LAZY.get(op)
        if lazy is not None:
            return lazy(self, values, data)
        function = _OPERATIONS.get(op)
        if function is None:
            raise LogicError(f"Unrecognized operation {op}")
        return function(self, data, [self.apply(value, data) for value in values])

    # Operators that decide themselves what to evaluate, as in json-logic-js.

    def _if(self, values: list[Any], data: Any) -> Any:
        index = 0
        while index < len(values) - 1:
            if logic_truthy(self.apply(values[index], data)):
                return self.apply(values[index + 1], data)
            index += 2
        if len(values) == index + 1:
            return self.apply(values[index], data)
        return None

    def _and(self, values: list[Any], data: Any) -> Any:
        current: Any = UNDEFINED
        for value in values:
            current = self.apply(value, data)
            if not logic_truthy(current):
                return current
        return current

    def _or(self, values: list[Any], data: Any) -> Any:
        current: Any = UNDEFINED
        for value in values:
            current = self.apply(value, data)
            if logic_truthy(current):
                return current
        return current

    def _source(self, values: list[Any], data: Any) -> Any:
        source = self.apply(_arg(values, 0), data)
        if isinstance(source, list) and len(source) > MAX_ARRAY_LENGTH:
            raise LogicError(f"arrays walked by logic are limited to {MAX_ARRAY_LENGTH} elements, got {len(source)}")
        return source

    def _filter(self, values: list[Any], data: Any) -> Any:
        source, logic = self._source(values, data), _arg(values, 1)
        if not isinstance(source, list):
            return []
        return [item for item in source if logic_truthy(self.apply(logic, item))]

    def _map(self, values: list[Any], data: Any) -> Any:
        source, logic = self._source(values, data), _arg(values, 1)
        if not isinstance(source, list):
            return []
        return [self.apply(logic, item) for item in source]

    def _reduce(self, values: list[Any], data: Any) -> Any:
        source, logic = self._source(values, data), _arg(values, 1)
        initial = _arg(values, 2)
        accumulator = None if initial is UNDEFINED else self.apply(initial, data)
        if not isinstance(source, list):
            return accumulator
        for current in source:
            accumulator = self.apply(logic, {"current": current, "accumulator": accumulator})
        return accumulator

    def _all(self, values: list[Any], data: Any) -> Any:
        source, logic = self._source(values, data), _arg(values, 1)
        if not isinstance(source, list) or not source:
            return False
        return all(logic_truthy(self.apply(logic, item)) for item in source)

    def _none(self, values: list[Any], data: Any) -> Any:
        source, logic = self._source(values, data), _arg(values, 1)
        if not isinstance(source, list) or not source:
            return True
        return not any(logic_truthy(self.apply(logic, item)) for item in source)

    def _some(self, values: list[Any], data: Any) -> Any:
        source, logic = self._source(values, data), _arg(values, 1)
        if not isinstance(source, list) or not source:
            return False
        return any(logic_truthy(self.apply(logic, item)) for item in source)

    _LAZY: Final[dict[str, Callable[[_Evaluation, list[Any], Any], Any]]] = {
        "if": _if, "and": _and, "or": _or, "filter": _filter, "map": _map, "reduce": _reduce,
        "all": _all, "none": _none, "some": _some,
    }


# Eager operators receive (evaluation, data, evaluated arguments), like json-logic-js's
# operations (data is their ``this``). Missing arguments are UNDEFINED.

def _op_var(evaluation: _Evaluation, data: Any, args: list[Any]) -> Any:
    path, default = _arg(args, 0), _arg(args, 1)
    not_found = None if default is UNDEFINED else default
    if path is UNDEFINED or path is None or (isinstance(path, str) and path == ""):
        return data
    current = data
    for segment in _to_string(path).split("."):
        if current is None or current is UNDEFINED:
            return not_found
        current = _own_property(current, segment)
        if current is UNDEFINED:
            return not_found
    return current


def _op_missing(evaluation: _Evaluation, data: Any, args: list[Any]) -> Any:
    keys = args[0] if args and isinstance(args[0], list) else args
    missing = []
    for key in keys:
        value = evaluation.apply({"var": key}, data)  # json-logic-js does exactly this
        if value is None or (isinstance(value, str) and value == ""):
            missing.append(key)
    return missing


def _op_missing_some(evaluation: _Evaluation, data: Any, args: list[Any]) -> Any:
    need_count, options = _arg(args, 0), _arg(args, 1)
    if not isinstance(options, list):  # the validator allows only a literal array here
        raise LogicError("missing_some expects an array of field paths")
    are_missing = evaluation.apply({"missing": options}, data)
    if _less_than(len(options) - len(are_missing), need_count) is False:
        return []
    return are_missing


def _op_in(evaluation: _Evaluation, data: Any, args: list[Any]) -> Any:
    needle, haystack = _arg(args, 0), _arg(args, 1)
    if not _js_truthy(haystack):
        return False
    if isinstance(haystack, str):
        return _to_string(needle) in haystack
    if isinstance(haystack, list):
        return any(_strict_equal(needle, item) for item in haystack)
    if isinstance(haystack, dict) and "indexOf" in haystack:
        raise LogicError("b.indexOf is not a function (the object has an 'indexOf' key)")
    return False


def _op_cat(evaluation: _Evaluation, data: Any, args: list[Any]) -> Any:
    result = "".join("" if value is None or value is UNDEFINED else _to_string(value) for value in args)
    if _utf16_length(result) > MAX_STRING_LENGTH:
        raise LogicError(f"strings built by logic are limited to {MAX_STRING_LENGTH} characters")
    return result


def _op_substr(evaluation: _Evaluation, data: Any, args: list[Any]) -> Any:
    source, start, end = _arg(args, 0), _arg(args, 1), _arg(args, 2)
    if _less_than(end, 0) is True:
        # json-logic-js emulates PHP's negative length: drop that many from the end.
        head = _substr(_to_string(source), start, UNDEFINED)
        return _substr(head, 0, _js_plus(_utf16_length(head), end))
    return _substr(_to_string(source), start, end)


def _substr(text: str, start: Any, length: Any) -> str:
    """String.prototype.substr, counted in UTF-16 code units like JavaScript."""
    size = _utf16_length(text)
    int_start = _to_integer_or_infinity(start)
    if int_start == -math.inf:
        first = 0
    elif int_start < 0:
        first = int(max(size + int_start, 0))
    else:
        first = int(min(int_start, size))
    int_length = size if length is UNDEFINED else _to_integer_or_infinity(length)
    last = int(min(first + min(max(int_length, 0), size), size))
    return _utf16_slice(text, first, last) if first < last else ""


def _op_merge(evaluation: _Evaluation, data: Any, args: list[Any]) -> Any:
    merged: list[Any] = []
    for value in args:
        if isinstance(value, list):
            merged.extend(value)
        else:
            merged.append(value)
    if len(merged) > MAX_ARRAY_LENGTH:
        raise LogicError(f"arrays built by logic are limited to {MAX_ARRAY_LENGTH} elements, got {len(merged)}")
    return merged


def _op_plus(evaluation: _Evaluation, data: Any, args: list[Any]) -> Any:
    total = 0.0
    for value in args:
        total = _parse_float(total) + _parse_float(value)
    return total


def _op_times(evaluation: _Evaluation, data: Any, args: list[Any]) -> Any:
    if not args:
        raise LogicError("Reduce of empty array with no initial value")
    product = args[0]  # Array.prototype.reduce without a seed: one argument comes back as is
    for value in args[1:]:
        product = _parse_float(product) * _parse_float(value)
    return product


def _op_minus(evaluation: _Evaluation, data: Any, args: list[Any]) -> Any:
    left, right = _arg(args, 0), _arg(args, 1)
    if right is UNDEFINED:
        return -_to_number(left)
    return _to_number(left) - _to_number(right)


def _op_between(strict: bool) -> Callable[[_Evaluation, Any, list[Any]], Any]:
    def compare(evaluation: _Evaluation, data: Any, args: list[Any]) -> Any:
        def holds(left: Any, right: Any) -> bool:
            return _less_than(left, right) is True if strict else _less_than(right, left) is False

        a, b, c = _arg(args, 0), _arg(args, 1), _arg(args, 2)
        if c is UNDEFINED:
            return holds(a, b)
        return holds(a, b) and holds(b, c)

    return compare


def _op_today(evaluation: _Evaluation, data: Any, args: list[Any]) -> Any:
    root = evaluation.root
    value = root.get(TODAY_KEY) if isinstance(root, dict) else None
    return value if _iso_date(value) is not None else None


_OPERATIONS: Final[dict[str, Callable[[_Evaluation, Any, list[Any]], Any]]] = {
    "==": lambda e, d, a: _loose_equal(_arg(a, 0), _arg(a, 1)),
    "===": lambda e, d, a: _strict_equal(_arg(a, 0), _arg(a, 1)),
    "!=": lambda e, d, a: not _loose_equal(_arg(a, 0), _arg(a, 1)),
    "!==": lambda e, d, a: not _strict_equal(_arg(a, 0), _arg(a, 1)),
    ">": lambda e, d, a: _less_than(_arg(a, 1), _arg(a, 0)) is True,
    ">=": lambda e, d, a: _less_than(_arg(a, 0), _arg(a, 1)) is False,
    "<": _op_between(strict=True),
    "<=": _op_between(strict=False),
    "!!": lambda e, d, a: logic_truthy(_arg(a, 0)),
    "!": lambda e, d, a: not logic_truthy(_arg(a, 0)),
    "%": lambda e, d, a: _js_remainder(_to_number(_arg(a, 0)), _to_number(_arg(a, 1))),
    "in": _op_in,
    "cat": _op_cat,
    "substr": _op_substr,
    "+": _op_plus,
    "*": _op_times,
    "-": _op_minus,
    "/": lambda e, d, a: _js_divide(_to_number(_arg(a, 0)), _to_number(_arg(a, 1))),
    "min": lambda e, d, a: _js_min([_to_number(value) for value in a], largest=False),
    "max": lambda e, d, a: _js_min([_to_number(value) for value in a], largest=True),
    "merge": _op_merge,
    "var": _op_var,
    "missing": _op_missing,
    "missing_some": _op_missing_some,
    "round": lambda e, d, a: _round_half_away_from_zero(_arg(a, 0), _arg(a, 1)),
    "date_diff": lambda e, d, a: _date_diff(_arg(a, 0), _arg(a, 1), _arg(a, 2)),
    "today": _op_today,
    "is_empty": lambda e, d, a: _is_empty(_arg(a, 0)),
}
assert set(_OPERATIONS) | set(_Evaluation._LAZY) == set(OPERATORS)


def _canonical(value: Any) -> Any:
    """What JSON.stringify would make of the value, read back in Python."""
    if value is None or value is UNDEFINED:
        return None
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        number = _float(value)
        if not math.isfinite(number):
            return None
        if number == int(number) and abs(number) <= _SAFE_INTEGER:
            return int(number)  # also turns -0.0 into 0
        return number
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items() if item is not UNDEFINED}
    raise LogicError(f"data values must be JSON values, got {type(value).__name__}")


def logic_evaluate(expr: Any, data: Any) -> Any:
    """Evaluate ``expr`` against ``data`` (a JSON value, usually a dict of field values).

    Validates first; raises LogicError for an invalid expression or when evaluation hits a
    limit or a case where JavaScript would throw. Returns a canonical JSON value.
    """
    _require_valid(expr)
    try:
        return _canonical(_Evaluation(data).apply(expr, data))
    except RecursionError as error:  # only reachable through absurdly deep data
        raise LogicError("data is nested too deeply") from error
