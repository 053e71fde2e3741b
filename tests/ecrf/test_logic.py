"""JSON Logic: ecrf/logic.py against the shared case table, and parity with the browser.

``logic_cases.json`` holds {"name", "logic", "data", "expected"} or {..., "error": true}.
The expected values are what json-logic-js 2.0.5 with static/js/ecrf-logic.js produces
(derived by running node, reviewed by hand). Results are compared canonically: as parsed
JSON, numbers by value (so 3 == 3.0 and 1e21 == 1000000000000000000000), booleans never
equal to numbers, objects by keys regardless of order.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ecrf.logic import (
    MAX_NODES,
    LogicError,
    logic_evaluate,
    logic_truthy,
    logic_validate,
    logic_variables,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CASES: list[dict[str, Any]] = json.loads((HERE / "logic_cases.json").read_text(encoding="utf-8"))


def same_json(left: Any, right: Any) -> bool:
    """The canonical result comparison shared by the Python and the parity assertions."""
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, int | float) and isinstance(right, int | float):
        return math.isfinite(left) and math.isfinite(right) and float(left) == float(right)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(same_json(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(same_json(left[key], right[key]) for key in left)
    return type(left) is type(right) and left == right


def test_case_table_is_well_formed() -> None:
    names = [case["name"] for case in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    assert len(CASES) >= 150
    for case in CASES:
        assert set(case) in ({"name", "logic", "data", "expected"}, {"name", "logic", "data", "error"}), case["name"]
        assert case.get("error", True) is True
    operators_covered = set()

    def collect(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                collect(item)
        elif isinstance(node, dict):
            for op, args in node.items():
                operators_covered.add(op)
                collect(args)

    for case in CASES:
        if "expected" in case:
            collect(case["logic"])
    from ecrf.logic import OPERATORS

    assert set(OPERATORS) <= operators_covered, set(OPERATORS) - operators_covered


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_python_matches_expected(case: dict[str, Any]) -> None:
    if case.get("error"):
        with pytest.raises(LogicError):
            logic_evaluate(case["logic"], case["data"])
        return
    result = logic_evaluate(case["logic"], case["data"])
    assert same_json(result, case["expected"]), f"got {result!r}, expected {case['expected']!r}"
    # What the server would send to the browser round-trips unchanged.
    assert same_json(json.loads(json.dumps(result)), result)


def _node_results() -> list[dict[str, Any]]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: install Node 20 (the front-end build and this parity test need it)")
    if not (REPO / "node_modules" / "json-logic-js" / "logic.js").is_file():
        pytest.fail("node_modules/json-logic-js is missing: run `make install` (it runs `npm ci`) in the repo root")
    completed = subprocess.run(
        [node, str(HERE / "logic_parity.js")], cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert completed.returncode == 0, f"logic_parity.js failed: {completed.stderr}"
    results: list[dict[str, Any]] = json.loads(completed.stdout)
    return results


def test_browser_and_server_agree_on_every_case() -> None:
    results = _node_results()
    assert [result["name"] for result in results] == [case["name"] for case in CASES]
    problems = []
    for case, browser in zip(CASES, results, strict=True):
        name = case["name"]
        try:
            server: Any = logic_evaluate(case["logic"], case["data"])
            server_ok = True
        except LogicError as error:
            server, server_ok = str(error), False
        if server_ok != browser["ok"]:
            problems.append(f"{name}: server {'ok' if server_ok else 'error'} {server!r}, browser {browser!r}")
        elif not server_ok:
            if case.get("error") is not True:
                problems.append(f"{name}: both failed unexpectedly: {server}")
            elif browser["error"].startswith("UNEXPECTED"):
                problems.append(f"{name}: browser threw a non-LogicError: {browser['error']}")
        elif not same_json(server, browser["result"]):
            problems.append(f"{name}: server {server!r} != browser {browser['result']!r}")
        elif "expected" not in case or not same_json(server, case["expected"]):
            problems.append(f"{name}: both gave {server!r}, expected {case.get('expected', 'an error')!r}")
        elif sorted(logic_variables(case["logic"])) != browser["variables"]:
            problems.append(f"{name}: variables differ: {sorted(logic_variables(case['logic']))} "
                            f"!= {browser['variables']}")
    assert not problems, "\n".join(problems)


# --- the API around the evaluator ----------------------------------------------------------


def test_logic_error_is_a_value_error_with_the_problems() -> None:
    with pytest.raises(ValueError, match="unknown or forbidden operator 'log'"):
        logic_evaluate({"log": "x"}, {})


def test_validate_lists_every_problem_and_accepts_good_logic() -> None:
    assert logic_validate({"if": [{"var": "BL.VITALS.weight"}, {"round": [{"var": "x"}, 1]}, None]}) == []
    problems = logic_validate({"and": [{"var": "a b"}, {"foo": 1}, {"==": [1]}, {"a": 1, "b": 2}]})
    assert len(problems) == 4, problems
    assert any("a b" in problem for problem in problems)
    assert any("'foo'" in problem for problem in problems)
    assert any("takes 2 argument(s), got 1" in problem for problem in problems)
    assert any("exactly one key" in problem for problem in problems)


def test_validate_rejects_non_json_values_without_raising() -> None:
    assert logic_validate({"==": [float("nan"), 1]}) == ["$.==[0]: numbers must be finite"]
    assert "unsupported value of type tuple" in logic_validate({"==": [(1,), 1]})[0]
    assert "unsupported value of type set" in logic_validate({"in": [1, {1}]})[0]


def test_validate_stops_early_on_hostile_input() -> None:
    deep: Any = True
    for _ in range(100_000):  # far beyond Python's recursion limit
        deep = [deep]
    assert logic_validate(deep) == [
        "$" + "[0]" * 32 + ": expression is nested deeper than 32 levels"]
    wide = {"cat": ["x"] * 100_000}
    assert logic_validate(wide) == [f"expression has more than {MAX_NODES} nodes"]


def test_variables_are_root_paths_and_missing_keys() -> None:
    expr = {"and": [
        {"==": [{"var": "DM.sex"}, "F"]},
        {"var": ["BL.VITALS.weight", {"var": "DM.default_weight"}]},
        {"some": [{"var": "AE"}, {">=": [{"var": "grade"}, 3]}]},  # "grade" is per AE row
        {"reduce": [{"var": "CM"}, {"+": [{"var": "accumulator"}, 1]}, {"var": "CM_START"}]},
        {"missing": ["consent_date"]},
        {"missing_some": [1, ["phone", "email"]]},
        {"date_diff": ["years", {"var": "DM.dob"}, {"today": []}]},
    ]}
    assert logic_variables(expr) == {
        "DM.sex", "BL.VITALS.weight", "DM.default_weight", "AE", "CM", "CM_START", "consent_date",
        "phone", "email", "DM.dob"}
    assert logic_variables({"var": 0}) == {"0"}
    assert logic_variables(7) == set()
    with pytest.raises(LogicError):
        logic_variables({"var": "a-b"})


def test_truthy_follows_json_logic() -> None:
    falsy: tuple[Any, ...] = (0, 0.0, "", None, [], False, float("nan"))
    truthy: tuple[Any, ...] = ("0", "false", [0], {}, 1, -1, True, " ")
    assert [logic_truthy(value) for value in falsy] == [False] * len(falsy)
    assert [logic_truthy(value) for value in truthy] == [True] * len(truthy)


def test_evaluation_does_not_mutate_data() -> None:
    data = {"AE": [{"grade": 1}, {"grade": 2}], "xs": [3, 1, 2]}
    snapshot = json.dumps(data)
    logic_evaluate({"merge": [{"var": "xs"}, {"filter": [{"var": "AE"}, True]}, {"map": [{"var": "xs"}, 1]}]}, data)
    assert json.dumps(data) == snapshot


def test_non_json_data_is_rejected_when_touched() -> None:
    from datetime import date

    assert logic_evaluate({"var": "untouched"}, {"other": date(2024, 1, 1)}) is None
    with pytest.raises(LogicError, match="JSON values"):
        logic_evaluate({"==": [{"var": "d"}, 1]}, {"d": date(2024, 1, 1)})


def test_large_numbers_follow_doubles() -> None:
    # Python ints are exact; JavaScript rounds to a double first. Both sides see 2**53.
    assert logic_evaluate({"==": [{"var": "a"}, {"var": "b"}]}, {"a": 2**53 + 1, "b": 2**53}) is True
    assert logic_evaluate({"+": [{"var": "a"}, 0]}, {"a": 10**400}) is None  # Infinity -> null
    assert logic_evaluate({"cat": [10**21]}, None) == "1e+21"


def test_an_expression_object_is_bounded_once_and_every_new_object_again(monkeypatch):
    """Saves evaluate the cached definition's expressions many times: the bounding walk
    runs once per expression object, and never is skipped for a new object."""
    from ecrf import logic

    walks: list[object] = []
    real = logic.logic_validate
    monkeypatch.setattr(logic, "logic_validate", lambda expr: walks.append(expr) or real(expr))
    expression = {"+": [{"var": "a"}, 1]}
    assert [logic.logic_evaluate(expression, {"a": n}) for n in range(3)] == [1, 2, 3]
    assert len(walks) == 1
    deep: object = 1
    for _ in range(logic.MAX_DEPTH + 5):
        deep = {"+": [deep]}
    with pytest.raises(logic.LogicError):
        logic.logic_evaluate(deep, {})
    with pytest.raises(logic.LogicError):  # refused again, not remembered as valid
        logic.logic_evaluate(deep, {})
    assert len(walks) == 3
