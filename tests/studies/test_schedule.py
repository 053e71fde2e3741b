"""Schedule arithmetic (studies.schedule). Pure functions: no database.

Expected dates are worked out by hand in comments next to each assertion; only the
property checks at the end compare the code with itself (invariants over generated cases).
"""

from __future__ import annotations

import calendar
import itertools
import json
import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from config.errors import DomainError
from studies.schedule import (
    MAX_OCCURRENCES,
    EventSpec,
    Occurrence,
    Offset,
    ScheduleError,
    add_offset,
    event_spec_from_dict,
    event_spec_to_dict,
    local_date,
    local_day_bounds_utc,
    plan_occurrences,
    schedule_from_list,
    schedule_to_list,
    validate_schedule,
)


def ev(code: str = "V1", **kw: Any) -> EventSpec:
    defaults: dict[str, Any] = {
        "name_en": f"Visit {code}", "name_zh": f"访视 {code}", "anchor": "enrolment", "anchor_event": None,
        "offset": Offset(0, "day"), "window_before": 0, "window_after": 0, "mode": "clinic",
    }
    defaults.update(kw)
    return EventSpec(code=code, **defaults)


def plan(events: list[EventSpec], *, enrolment: date = date(2026, 1, 1), index: date | None = None,
         actual: dict[str, date] | None = None) -> list[Occurrence]:
    return plan_occurrences(events=events, enrolment_date=enrolment, index_date=index, actual_dates=actual)


def targets(occurrences: list[Occurrence], code: str | None = None) -> list[date]:
    return [o.target for o in occurrences if code is None or o.event_code == code]


# --- months ----------------------------------------------------------------------------


def test_jan_31_plus_one_month_is_feb_28_in_a_common_year():
    assert add_offset(date(2026, 1, 31), Offset(1, "month")) == date(2026, 2, 28)


def test_jan_31_plus_one_month_is_feb_29_in_a_leap_year():
    assert add_offset(date(2028, 1, 31), Offset(1, "month")) == date(2028, 2, 29)


def test_aug_31_plus_six_months_clamps_to_end_of_february():
    assert add_offset(date(2026, 8, 31), Offset(6, "month")) == date(2027, 2, 28)
    assert add_offset(date(2027, 8, 31), Offset(6, "month")) == date(2028, 2, 29)


def test_31st_into_30_day_months_and_backwards():
    assert add_offset(date(2026, 3, 31), Offset(1, "month")) == date(2026, 4, 30)
    assert add_offset(date(2026, 10, 31), Offset(-1, "month")) == date(2026, 9, 30)
    assert add_offset(date(2026, 3, 31), Offset(-1, "month")) == date(2026, 2, 28)
    # Across a year end: 30 Nov + 3 months lands in February 2027 (28 days).
    assert add_offset(date(2026, 11, 30), Offset(3, "month")) == date(2027, 2, 28)


def test_monthly_repeat_from_jan_31_is_counted_from_the_anchor_and_never_drifts():
    spec = ev("M", offset=Offset(1, "month"), repeat_every=Offset(1, "month"), repeat_until=Offset(12, "month"))
    got = targets(plan([spec], enrolment=date(2028, 1, 31)))
    # Chaining would give 29 Feb, 29 Mar, 29 Apr, ...; counting from the anchor keeps month ends.
    assert got == [
        date(2028, 2, 29), date(2028, 3, 31), date(2028, 4, 30), date(2028, 5, 31), date(2028, 6, 30),
        date(2028, 7, 31), date(2028, 8, 31), date(2028, 9, 30), date(2028, 10, 31), date(2028, 11, 30),
        date(2028, 12, 31), date(2029, 1, 31),  # = anchor + 12 months, inclusive
    ]


def test_monthly_repeat_after_a_day_offset_counts_months_from_the_first_occurrence():
    # 17 Jan + 14 days = 31 Jan; then 31 Jan + 1, 2 months = 28 Feb, 31 Mar; + 3 months = 30 Apr is
    # after the end (17 Jan + 3 months = 17 Apr).
    spec = ev("M", offset=Offset(14, "day"), repeat_every=Offset(1, "month"), repeat_until=Offset(3, "month"))
    assert targets(plan([spec], enrolment=date(2026, 1, 17))) == [date(2026, 1, 31), date(2026, 2, 28),
                                                                   date(2026, 3, 31)]


# --- 29 February -----------------------------------------------------------------------


def test_feb_29_plus_12_months_is_feb_28_next_year():
    assert add_offset(date(2028, 2, 29), Offset(12, "month")) == date(2029, 2, 28)


def test_feb_29_plus_48_months_is_feb_29_again():
    assert add_offset(date(2028, 2, 29), Offset(48, "month")) == date(2032, 2, 29)


def test_feb_29_plus_one_month_and_24_months():
    assert add_offset(date(2028, 2, 29), Offset(1, "month")) == date(2028, 3, 29)
    assert add_offset(date(2028, 2, 29), Offset(24, "month")) == date(2030, 2, 28)


def test_yearly_repeat_from_feb_29_returns_to_feb_29_in_the_next_leap_year():
    spec = ev("Y", anchor="index", offset=Offset(0, "month"), repeat_every=Offset(12, "month"),
              repeat_until=Offset(48, "month"))
    # Chaining 28 Feb + 12 months would stay on 28 Feb in 2032.
    assert targets(plan([spec], index=date(2028, 2, 29))) == [
        date(2028, 2, 29), date(2029, 2, 28), date(2030, 2, 28), date(2031, 2, 28), date(2032, 2, 29),
    ]


# --- days and weeks --------------------------------------------------------------------


def test_a_week_is_seven_days():
    # 1 Jan + 42 days: 30 days to 31 Jan, 12 more to 12 Feb.
    assert add_offset(date(2026, 1, 1), Offset(6, "week")) == date(2026, 2, 12)
    assert add_offset(date(2026, 1, 1), Offset(-1, "week")) == date(2025, 12, 25)


def test_negative_offset_before_the_index_date_is_allowed():
    pre_op = ev("PREOP", anchor="index", offset=Offset(-7, "day"))
    assert validate_schedule([pre_op]) == {}
    # 3 Mar 2026 - 7 days: 3 days back to 28 Feb (2026 is not a leap year), 4 more to 24 Feb.
    assert targets(plan([pre_op], index=date(2026, 3, 3))) == [date(2026, 2, 24)]


def test_two_weekly_repeat_until_week_10_is_inclusive():
    spec = ev("W", offset=Offset(0, "week"), repeat_every=Offset(2, "week"), repeat_until=Offset(10, "week"))
    # 1 Jan + 70 days = 12 Mar is the end and is included.
    assert targets(plan([spec], enrolment=date(2026, 1, 1))) == [
        date(2026, 1, 1), date(2026, 1, 15), date(2026, 1, 29), date(2026, 2, 12), date(2026, 2, 26),
        date(2026, 3, 12),
    ]


def test_a_day_across_a_dst_change_is_still_one_calendar_day():
    # Targets are local calendar dates; the 23-hour day in Berlin does not move them.
    spec = ev("D1", offset=Offset(1, "day"))
    assert targets(plan([spec], enrolment=date(2026, 3, 28))) == [date(2026, 3, 29)]


# --- windows ---------------------------------------------------------------------------


def test_window_spanning_a_year_end():
    spec = ev("YE", offset=Offset(7, "day"), window_before=7, window_after=7)
    [occ] = plan([spec], enrolment=date(2026, 12, 23))
    assert occ.target == date(2026, 12, 30)
    assert occ.window_open == date(2026, 12, 23)
    assert occ.window_close == date(2027, 1, 6)  # 30 Dec + 2 = 1 Jan, + 5 = 6 Jan


def test_asymmetric_window():
    spec = ev("A", offset=Offset(1, "month"), window_before=3, window_after=10)
    [occ] = plan([spec], enrolment=date(2026, 1, 31))
    assert (occ.window_open, occ.target, occ.window_close) == (date(2026, 2, 25), date(2026, 2, 28),
                                                               date(2026, 3, 10))


# --- repeating -------------------------------------------------------------------------


def test_every_90_days_plus_minus_14_from_month_6_until_month_60():
    spec = ev("FU", anchor="index", offset=Offset(6, "month"), window_before=14, window_after=14,
              mode="phone", repeat_every=Offset(90, "day"), repeat_until=Offset(60, "month"))
    got = plan([spec], index=date(2026, 1, 15))
    # First: 15 Jul 2026. End: 15 Jan 2031. Days between: 15 Jul 2026 -> 15 Jul 2031 is 1826
    # (one 29 Feb, 2028), minus 15 Jan -> 15 Jul 2031 (31+28+31+30+31+30 = 181) = 1645.
    # 1645 // 90 = 18 steps, so 19 occurrences; the last is 18 * 90 = 1620 days after the first,
    # i.e. 25 days before 15 Jan 2031 = 21 Dec 2030.
    assert len(got) == 19
    assert [o.sequence for o in got] == list(range(1, 20))
    assert got[0].target == date(2026, 7, 15)
    assert got[1].target == date(2026, 10, 13)  # 16 days to 31 Jul, +31 Aug, +30 Sep = 77, +13
    assert got[-1].target == date(2030, 12, 21)
    assert (got[-1].window_open, got[-1].window_close) == (date(2030, 12, 7), date(2031, 1, 4))
    assert all(b.target - a.target == timedelta(days=90) for a, b in itertools.pairwise(got))


def test_repeat_until_on_the_first_occurrence_gives_one_occurrence():
    spec = ev("R", offset=Offset(3, "month"), repeat_every=Offset(1, "month"), repeat_until=Offset(3, "month"))
    assert targets(plan([spec], enrolment=date(2026, 1, 10))) == [date(2026, 4, 10)]


# --- anchors ---------------------------------------------------------------------------

SURGERY_CHAIN = [
    ev("BASE"),
    ev("SURG", anchor="index"),
    ev("POD30", anchor="event", anchor_event="SURG", offset=Offset(30, "day")),
    ev("M3", anchor="event", anchor_event="POD30", offset=Offset(2, "month")),
]


def by_code(occurrences: list[Occurrence]) -> dict[str, tuple[date, bool]]:
    return {o.event_code: (o.target, o.provisional) for o in occurrences}


def test_without_an_index_date_index_events_and_their_dependents_plan_nothing():
    got = plan(SURGERY_CHAIN, enrolment=date(2026, 1, 5), index=None)
    assert by_code(got) == {"BASE": (date(2026, 1, 5), False)}


def test_event_anchor_without_actual_dates_is_provisional_on_the_planned_target():
    got = plan(SURGERY_CHAIN, enrolment=date(2026, 1, 5), index=date(2026, 1, 10))
    assert by_code(got) == {
        "BASE": (date(2026, 1, 5), False),
        "SURG": (date(2026, 1, 10), False),
        "POD30": (date(2026, 2, 9), True),  # 10 Jan + 30 days = "40 Jan" = 9 Feb
        "M3": (date(2026, 4, 9), True),
    }


def test_event_anchor_uses_the_actual_date_when_known():
    got = plan(SURGERY_CHAIN, enrolment=date(2026, 1, 5), index=date(2026, 1, 10),
               actual={"SURG": date(2026, 1, 12)})
    assert by_code(got) == {
        "BASE": (date(2026, 1, 5), False),
        "SURG": (date(2026, 1, 10), False),  # an actual date anchors others, it does not re-plan SURG
        "POD30": (date(2026, 2, 11), False),  # 12 Jan + 30 days
        "M3": (date(2026, 4, 11), True),  # POD30 has no actual date yet
    }


def test_actual_date_of_a_middle_event_makes_its_dependents_firm():
    got = plan(SURGERY_CHAIN, enrolment=date(2026, 1, 5), index=date(2026, 1, 10),
               actual={"POD30": date(2026, 2, 20)})
    assert by_code(got)["POD30"] == (date(2026, 2, 9), True)
    assert by_code(got)["M3"] == (date(2026, 4, 20), False)


def test_actual_date_anchors_dependents_even_without_an_index_date():
    got = plan(SURGERY_CHAIN, enrolment=date(2026, 1, 5), index=None, actual={"POD30": date(2026, 2, 20)})
    assert by_code(got) == {"BASE": (date(2026, 1, 5), False), "M3": (date(2026, 4, 20), False)}


def test_anchoring_on_a_repeating_event_means_its_first_occurrence():
    events = [
        ev("FU", offset=Offset(1, "month"), repeat_every=Offset(3, "month"), repeat_until=Offset(12, "month")),
        ev("X", anchor="event", anchor_event="FU", offset=Offset(7, "day")),
    ]
    got = plan(events, enrolment=date(2026, 1, 5))
    # FU: months 1, 4, 7, 10 (month 13 is after month 12).
    assert targets(got, "FU") == [date(2026, 2, 5), date(2026, 5, 5), date(2026, 8, 5), date(2026, 11, 5)]
    assert [(o.target, o.provisional) for o in got if o.event_code == "X"] == [(date(2026, 2, 12), True)]


# --- order and determinism -------------------------------------------------------------


def test_sorted_by_target_then_schedule_order_then_sequence():
    events = [
        ev("LATE", anchor="event", anchor_event="EARLY", offset=Offset(0, "day")),  # listed first
        ev("EARLY", offset=Offset(1, "day"), repeat_every=Offset(1, "day"), repeat_until=Offset(2, "day")),
        ev("ZERO", offset=Offset(0, "day")),
    ]
    got = plan(events, enrolment=date(2026, 1, 1))
    assert [(o.event_code, o.sequence, o.target) for o in got] == [
        ("ZERO", 1, date(2026, 1, 1)),
        ("LATE", 1, date(2026, 1, 2)),  # same day as EARLY #1, but earlier in the schedule
        ("EARLY", 1, date(2026, 1, 2)),
        ("EARLY", 2, date(2026, 1, 3)),
    ]


def test_planning_is_deterministic():
    kwargs: dict[str, Any] = {"events": SURGERY_CHAIN, "enrolment_date": date(2026, 1, 5),
                              "index_date": date(2026, 1, 10)}
    first = plan_occurrences(**kwargs, actual_dates={"SURG": date(2026, 1, 11), "POD30": date(2026, 2, 12)})
    again = plan_occurrences(**kwargs, actual_dates={"POD30": date(2026, 2, 12), "SURG": date(2026, 1, 11)})
    assert first == again
    assert plan_occurrences(**kwargs) == plan_occurrences(**kwargs)


# --- validation ------------------------------------------------------------------------


def only_error(events: list[EventSpec], **kw: Any) -> tuple[str, str]:
    errors = validate_schedule(events, **kw)
    assert len(errors) == 1, errors
    [(key, messages)] = errors.items()
    assert len(messages) == 1 and isinstance(messages[0], str) and messages[0], messages
    return key, messages[0]


def test_valid_schedule_has_no_errors():
    assert validate_schedule(SURGERY_CHAIN) == {}
    assert validate_schedule([]) == {}


def test_duplicate_codes():
    assert only_error([ev("A"), ev("B"), ev("A")]) == ("events.2.code",
                                                      "The code “A” is used by event 1 already.")


@pytest.mark.parametrize("code", ["", "a1", "V-1", "V 1", "X" * 21, "访视"])
def test_bad_code_format(code):
    assert only_error([ev(code)])[0] == "events.0.code"


def test_code_of_20_characters_is_fine():
    assert validate_schedule([ev("A_1" + "9" * 17)]) == {}


def test_unknown_anchor_event():
    key, message = only_error([ev("A"), ev("B", anchor="event", anchor_event="NOPE")])
    assert (key, message) == ("events.1.anchor_event", "There is no event with the code “NOPE”.")


def test_anchor_event_set_when_anchor_is_not_event():
    assert only_error([ev("A"), ev("B", anchor="index", anchor_event="A")])[0] == "events.1.anchor_event"


def test_anchor_event_missing_when_anchor_is_event():
    assert only_error([ev("A", anchor="event")])[0] == "events.0.anchor_event"


def test_event_anchored_on_itself():
    assert only_error([ev("A", anchor="event", anchor_event="A")]) == (
        "events.0.anchor_event", "An event cannot be anchored on itself.")


def test_cycle_of_two_is_reported_on_both_events():
    events = [ev("A", anchor="event", anchor_event="B"), ev("B", anchor="event", anchor_event="A"), ev("C")]
    errors = validate_schedule(events)
    assert errors == {
        "events.0.anchor_event": ["Events anchor on each other in a circle: A → B → A."],
        "events.1.anchor_event": ["Events anchor on each other in a circle: A → B → A."],
    }


def test_cycle_of_three_behind_a_tail():
    events = [
        ev("TAIL", anchor="event", anchor_event="A"),
        ev("A", anchor="event", anchor_event="B"),
        ev("B", anchor="event", anchor_event="C"),
        ev("C", anchor="event", anchor_event="A"),
    ]
    assert sorted(validate_schedule(events)) == ["events.1.anchor_event", "events.2.anchor_event",
                                                 "events.3.anchor_event"]


def test_plan_refuses_an_invalid_schedule_with_field_errors():
    events = [ev("A", anchor="event", anchor_event="B"), ev("B", anchor="event", anchor_event="A")]
    with pytest.raises(ScheduleError) as caught:
        plan(events)
    assert set(caught.value.fields) == {"events.0.anchor_event", "events.1.anchor_event"}
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, DomainError) and caught.value.status_code == 400


@pytest.mark.parametrize(("name", "value", "ok"), [
    ("window_before", -1, False), ("window_after", -1, False), ("window_before", 367, False),
    ("window_after", 367, False), ("window_before", 366, True), ("window_after", 0, True),
])
def test_window_days_from_0_to_366(name, value, ok):
    errors = validate_schedule([ev("A", **{name: value})])
    assert errors == ({} if ok else {f"events.0.{name}": ["Give a whole number of days from 0 to 366."]})


@pytest.mark.parametrize("every", [Offset(0, "day"), Offset(-90, "day"), Offset(0, "month"), Offset(-1, "week")])
def test_repeat_every_must_be_more_than_zero(every):
    spec = ev("A", repeat_every=every, repeat_until=Offset(12, "month"))
    assert only_error([spec]) == ("events.0.repeat_every", "The repeat interval must be more than zero.")


def test_repeat_needs_both_interval_and_end():
    assert only_error([ev("A", repeat_every=Offset(1, "month"))])[0] == "events.0.repeat_until"
    assert only_error([ev("A", repeat_until=Offset(1, "month"))])[0] == "events.0.repeat_every"


@pytest.mark.parametrize(("offset", "until", "ok"), [
    (Offset(6, "month"), Offset(5, "month"), False),
    (Offset(6, "month"), Offset(6, "month"), True),
    (Offset(14, "day"), Offset(1, "week"), False),  # 14 days > 7 days
    (Offset(14, "day"), Offset(2, "week"), True),
    (Offset(6, "month"), Offset(180, "day"), False),  # 6 months is 181-184 days
    (Offset(6, "month"), Offset(200, "day"), True),
    (Offset(200, "day"), Offset(6, "month"), False),
    (Offset(30, "day"), Offset(2, "month"), True),  # 2 months is at least 59 days
])
def test_repeat_until_before_first_occurrence(offset, until, ok):
    spec = ev("A", offset=offset, repeat_every=Offset(7, "day"), repeat_until=until)
    errors = validate_schedule([spec])
    assert errors == ({} if ok else {"events.0.repeat_until": ["The repeat ends before the first occurrence."]})


@pytest.mark.parametrize(("field", "offset", "ok"), [
    ("offset", Offset(240, "month"), True), ("offset", Offset(241, "month"), False),
    ("offset", Offset(-241, "month"), False), ("offset", Offset(7305, "day"), True),
    ("offset", Offset(7306, "day"), False), ("offset", Offset(1043, "week"), True),
    ("offset", Offset(1044, "week"), False), ("repeat_until", Offset(241, "month"), False),
    ("repeat_every", Offset(7306, "day"), False),
])
def test_offsets_of_more_than_20_years(field, offset, ok):
    kw: dict[str, Any] = {"repeat_every": Offset(1, "month"), "repeat_until": Offset(1, "month")}
    kw[field] = offset
    if field == "offset":
        kw = {"offset": offset}
    errors = validate_schedule([ev("A", **kw)])
    assert errors == ({} if ok else {f"events.0.{field}": ["That is more than 20 years."]})


def test_more_than_max_occurrences_in_one_event():
    # Every day from day 0: until day 499 gives exactly 500, until day 500 gives 501.
    at_limit = ev("A", repeat_every=Offset(1, "day"), repeat_until=Offset(499, "day"))
    assert validate_schedule([at_limit]) == {}
    assert len(plan([at_limit])) == MAX_OCCURRENCES == 500
    over = ev("A", repeat_every=Offset(1, "day"), repeat_until=Offset(500, "day"))
    assert only_error([over]) == ("events.0.repeat_every", "This repeat gives more than 500 visits per subject.")


def test_more_than_max_occurrences_across_events():
    # Weekly for 100 weeks from week 0 = 101 each; 5 of them = 505.
    events = [ev(f"E{i}", repeat_every=Offset(1, "week"), repeat_until=Offset(100, "week")) for i in range(5)]
    assert only_error(events) == ("events", "The schedule gives up to 505 visits per subject; at most 500 are allowed.")
    assert validate_schedule(events, max_occurrences=505) == {}
    with pytest.raises(ScheduleError) as caught:
        plan(events)
    assert list(caught.value.fields) == ["events"]


@pytest.mark.parametrize("field", ["name_en", "name_zh"])
@pytest.mark.parametrize("value", ["", "   "])
def test_names_must_not_be_empty(field, value):
    assert only_error([ev("A", **{field: value})])[0] == f"events.0.{field}"


def test_bad_mode_anchor_and_forms():
    assert only_error([ev("A", mode="fax")])[0] == "events.0.mode"
    assert only_error([ev("A", anchor="surgery")])[0] == "events.0.anchor"
    assert only_error([ev("A", forms=("QOL", "QOL"))]) == ("events.0.forms", "A form is listed twice.")
    assert only_error([ev("A", forms=["QOL"])])[0] == "events.0.forms"  # a list is not hashable/storable
    assert validate_schedule([ev("A", forms=("QOL", "EQ5D"))]) == {}


def test_messages_follow_the_active_language_despite_the_cache():
    from django.utils import translation

    events = [ev("A", mode="fax")]
    english = validate_schedule(events)["events.0.mode"]
    with translation.override("zh-hans"):
        chinese = validate_schedule(events)["events.0.mode"]
    assert english == ["Choose one of: clinic, phone, home, epro, any."]
    assert chinese == ["请从以下选项中选择\uff1aclinic, phone, home, epro, any。"]


def test_several_problems_are_all_reported():
    events = [ev("A", name_en="", window_before=-1), ev("A", anchor="event", anchor_event="Q")]
    assert sorted(validate_schedule(events)) == ["events.0.name_en", "events.0.window_before", "events.1.anchor_event",
                                                 "events.1.code"]


def test_validate_schedule_returns_a_copy():
    events = [ev("A", name_en="")]
    validate_schedule(events)["events.0.name_en"].append("mutated")
    assert validate_schedule(events) == {"events.0.name_en": ["Enter the event's English name."]}


# --- JSON storage ----------------------------------------------------------------------

FULL_SPEC = ev("FU", name_zh="随访", anchor="event", anchor_event="SURG", offset=Offset(6, "month"),
               window_before=14, window_after=14, mode="phone", forms=("QOL", "AE"),
               repeat_every=Offset(90, "day"), repeat_until=Offset(60, "month"))


def test_json_round_trip():
    data = event_spec_to_dict(FULL_SPEC)
    assert data == {
        "code": "FU", "name_en": "Visit FU", "name_zh": "随访", "anchor": "event", "anchor_event": "SURG",
        "offset": {"amount": 6, "unit": "month"}, "window_before": 14, "window_after": 14, "mode": "phone",
        "forms": ["QOL", "AE"], "repeat_every": {"amount": 90, "unit": "day"},
        "repeat_until": {"amount": 60, "unit": "month"},
    }
    assert event_spec_from_dict(json.loads(json.dumps(data))) == FULL_SPEC


def test_optional_fields_default_when_absent():
    data = {"code": "B", "name_en": "Baseline", "name_zh": "基线", "anchor": "enrolment",
            "offset": {"amount": 0, "unit": "day"}, "window_before": 0, "window_after": 3, "mode": "any"}
    spec = event_spec_from_dict(data)
    assert (spec.anchor_event, spec.forms, spec.repeat_every, spec.repeat_until) == (None, (), None, None)


def test_missing_required_fields():
    with pytest.raises(ScheduleError) as caught:
        event_spec_from_dict({})
    assert sorted(caught.value.fields) == ["anchor", "code", "mode", "name_en", "name_zh", "offset",
                                           "window_after", "window_before"]
    assert caught.value.fields["code"] == ["This field is required."]


def test_wrong_types_get_field_level_messages_with_a_prefix():
    data = event_spec_to_dict(FULL_SPEC) | {
        "code": 5, "anchor": "surgery", "offset": {"amount": "6", "unit": "month"}, "window_before": True,
        "forms": "QOL", "repeat_every": {"amount": 90}, "repeat_until": {"amount": 5, "unit": "year"},
        "colour": "red",
    }
    with pytest.raises(ScheduleError) as caught:
        event_spec_from_dict(data, prefix="events.3.")
    assert caught.value.fields == {
        "events.3.colour": ["Unknown field."],
        "events.3.code": ["Give a text value."],
        "events.3.anchor": ["Choose one of: enrolment, index, event."],
        "events.3.window_before": ["Give a whole number of days."],
        "events.3.forms": ["Give a list of form codes."],
        "events.3.offset": ["Give the amount as a whole number."],
        "events.3.repeat_every": ["Give an object with an amount and a unit."],
        "events.3.repeat_until": ["Choose one of: day, week, month."],
    }


def test_not_an_object():
    with pytest.raises(ScheduleError) as caught:
        event_spec_from_dict(["code"])  # type: ignore[arg-type]
    assert list(caught.value.fields) == ["event"]


def test_schedule_from_list_reports_type_errors_then_schedule_rules():
    good = event_spec_to_dict(ev("SURG", anchor="index"))
    with pytest.raises(ScheduleError) as caught:
        schedule_from_list([good, event_spec_to_dict(FULL_SPEC) | {"mode": "fax"}])
    assert caught.value.fields == {"events.1.mode": ["Choose one of: clinic, phone, home, epro, any."]}
    with pytest.raises(ScheduleError) as caught:
        schedule_from_list([good, event_spec_to_dict(FULL_SPEC) | {"anchor_event": "NOPE"}])
    assert list(caught.value.fields) == ["events.1.anchor_event"]
    with pytest.raises(ScheduleError) as caught:
        schedule_from_list({"events": []})
    assert list(caught.value.fields) == ["events"]
    stored = json.loads(json.dumps(schedule_to_list([ev("SURG", anchor="index"), FULL_SPEC])))
    assert schedule_from_list(stored) == [ev("SURG", anchor="index"), FULL_SPEC]


# --- local days in UTC (DST) -----------------------------------------------------------


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(("day", "tz", "start", "end"), [
    # Berlin, spring forward on 29 Mar 2026: midnight is CET (+1), the next midnight CEST (+2).
    (date(2026, 3, 29), "Europe/Berlin", utc(2026, 3, 28, 23), utc(2026, 3, 29, 22)),
    # Berlin, fall back on 25 Oct 2026: midnight is CEST (+2), the next midnight CET (+1).
    (date(2026, 10, 25), "Europe/Berlin", utc(2026, 10, 24, 22), utc(2026, 10, 25, 23)),
    # New York: 2nd Sunday of March 2026 is 8 Mar (EST -5 -> EDT -4); 1st Sunday of Nov is 1 Nov.
    (date(2026, 3, 8), "America/New_York", utc(2026, 3, 8, 5), utc(2026, 3, 9, 4)),
    (date(2026, 11, 1), "America/New_York", utc(2026, 11, 1, 4), utc(2026, 11, 2, 5)),
    # Shanghai has no DST: always +8, 24 hours, even on Berlin's change day.
    (date(2026, 3, 29), "Asia/Shanghai", utc(2026, 3, 28, 16), utc(2026, 3, 29, 16)),
    (date(2026, 10, 25), "Asia/Shanghai", utc(2026, 10, 24, 16), utc(2026, 10, 25, 16)),
    # An ordinary Berlin winter day.
    (date(2026, 1, 15), "Europe/Berlin", utc(2026, 1, 14, 23), utc(2026, 1, 15, 23)),
    # São Paulo 4 Nov 2018: clocks jumped from 00:00 (-3) to 01:00 (-2), so there was no local
    # midnight; the day began at 01:00 -2 = 03:00 UTC and ended at midnight -2 = 02:00 UTC.
    (date(2018, 11, 4), "America/Sao_Paulo", utc(2018, 11, 4, 3), utc(2018, 11, 5, 2)),
])
def test_local_day_bounds_utc(day, tz, start, end):
    got_start, got_end = local_day_bounds_utc(day, tz)
    assert (got_start, got_end) == (start, end)
    assert got_start.utcoffset() == timedelta(0) and got_end.utcoffset() == timedelta(0)


def test_dst_days_last_23_and_25_hours():
    hours = {day: (lambda b: (b[1] - b[0]) / timedelta(hours=1))(local_day_bounds_utc(day, "Europe/Berlin"))
             for day in (date(2026, 3, 28), date(2026, 3, 29), date(2026, 10, 25))}
    assert hours == {date(2026, 3, 28): 24, date(2026, 3, 29): 23, date(2026, 10, 25): 25}


def test_unknown_time_zone():
    with pytest.raises(ScheduleError) as caught:
        local_day_bounds_utc(date(2026, 1, 1), "Mars/Olympus")
    assert list(caught.value.fields) == ["time_zone"]


def test_local_date():
    # 16:30 UTC on 31 Dec is already 1 Jan in Shanghai (+8), still 31 Dec in New York (-5).
    moment = utc(2026, 12, 31, 16, 30)
    assert local_date(moment, "Asia/Shanghai") == date(2027, 1, 1)
    assert local_date(moment, "America/New_York") == date(2026, 12, 31)
    with pytest.raises(ValueError, match="aware"):
        local_date(datetime(2026, 1, 1, 12), "Asia/Shanghai")


# --- property checks over generated cases ----------------------------------------------


def random_date(rng: random.Random, first: date = date(1950, 1, 1), last: date = date(2079, 12, 31)) -> date:
    return first + timedelta(days=rng.randrange((last - first).days + 1))


def test_month_arithmetic_never_raises_and_lands_in_the_right_month():
    rng = random.Random(20260329)
    for _ in range(2000):
        start = random_date(rng)
        months = rng.randint(-240, 240)
        got = add_offset(start, Offset(months, "month"))
        assert (got.year * 12 + got.month) - (start.year * 12 + start.month) == months
        assert got.day == min(start.day, calendar.monthrange(got.year, got.month)[1])


def random_offset(rng: random.Random, *, low: int, high: int) -> Offset:
    unit = rng.choice(["day", "week", "month"])
    scale = {"day": 30, "week": 4, "month": 1}[unit]
    return Offset(rng.randint(low, high) * scale, unit)


def random_schedule(rng: random.Random) -> list[EventSpec]:
    events: list[EventSpec] = []
    for i in range(rng.randint(1, 6)):
        anchor = rng.choice(["enrolment", "index", "event"]) if events else rng.choice(["enrolment", "index"])
        offset = random_offset(rng, low=-1, high=24)
        repeat: dict[str, Any] = {}
        if rng.random() < 0.5:
            # Same unit as the offset, so the end is never before the first occurrence.
            span = rng.randint(0, 60) * {"day": 30, "week": 4, "month": 1}[offset.unit]
            repeat = {"repeat_every": random_offset(rng, low=1, high=6),
                      "repeat_until": Offset(offset.amount + span, offset.unit)}
        events.append(ev(
            f"E{i}", anchor=anchor, anchor_event=rng.choice(events).code if anchor == "event" else None,
            offset=offset, window_before=rng.randint(0, 30), window_after=rng.randint(0, 30),
            mode=rng.choice(["clinic", "phone", "home", "epro", "any"]), **repeat,
        ))
    return events


def test_generated_schedules_keep_their_invariants():
    rng = random.Random(7)
    for _ in range(400):
        events = random_schedule(rng)
        assert validate_schedule(events) == {}
        enrolment = random_date(rng, date(2020, 1, 1), date(2035, 12, 31))
        index = rng.choice([None, enrolment + timedelta(days=rng.randint(-30, 60))])
        actual = {e.code: random_date(rng, date(2020, 1, 1), date(2040, 1, 1)) for e in events if rng.random() < 0.3}
        got = plan_occurrences(events=events, enrolment_date=enrolment, index_date=index, actual_dates=actual)
        assert got == plan_occurrences(events=events, enrolment_date=enrolment, index_date=index,
                                       actual_dates=dict(reversed(actual.items())))
        order = {e.code: i for i, e in enumerate(events)}
        assert got == sorted(got, key=lambda o: (o.target, order[o.event_code], o.sequence))
        specs = {e.code: e for e in events}
        for occ in got:
            spec = specs[occ.event_code]
            assert occ.window_open <= occ.target <= occ.window_close
            assert occ.target - occ.window_open == timedelta(days=spec.window_before)
            assert occ.window_close - occ.target == timedelta(days=spec.window_after)
            assert occ.provisional == (spec.anchor == "event" and spec.anchor_event not in actual)
        for code in specs:
            mine = [o for o in got if o.event_code == code]
            assert [o.sequence for o in mine] == list(range(1, len(mine) + 1))
            assert [o.target for o in mine] == sorted({o.target for o in mine})  # strictly increasing
            if specs[code].anchor == "index" and index is None:
                assert mine == []


def test_generated_repeats_stop_at_the_last_date_on_or_before_the_end():
    rng = random.Random(11)
    for _ in range(300):
        spec = random_schedule(rng)[0]
        if spec.repeat_every is None or spec.repeat_until is None:
            continue
        anchor = random_date(rng, date(2020, 1, 1), date(2035, 12, 31))
        got = targets(plan_occurrences(events=[spec], enrolment_date=anchor, index_date=anchor))
        end = add_offset(anchor, spec.repeat_until)
        assert got[0] == add_offset(anchor, spec.offset)
        assert got[-1] <= end or len(got) == 1
        # The next step would pass the end.
        if spec.repeat_every.unit == "month" and spec.offset.unit == "month":
            nxt = add_offset(anchor, Offset(spec.offset.amount + len(got) * spec.repeat_every.amount, "month"))
        elif spec.repeat_every.unit == "month":
            nxt = add_offset(got[0], Offset(len(got) * spec.repeat_every.amount, "month"))
        else:
            nxt = got[-1] + timedelta(days=spec.repeat_every.amount * (7 if spec.repeat_every.unit == "week" else 1))
        assert nxt > end


def test_validation_bound_means_planning_never_overflows():
    # Mixed units on purpose: validation estimates the count, planning must stay within it.
    rng = random.Random(3)
    checked = 0
    for _ in range(300):
        spec = ev("A", offset=random_offset(rng, low=-2, high=12), repeat_every=random_offset(rng, low=1, high=2),
                  repeat_until=random_offset(rng, low=0, high=40))
        limit = rng.randint(5, 60)
        if validate_schedule([spec], max_occurrences=limit):
            continue
        checked += 1
        for _ in range(10):
            anchor = random_date(rng, date(2000, 1, 1), date(2090, 12, 31))
            assert len(plan_occurrences(events=[spec], enrolment_date=anchor, index_date=None,
                                        max_occurrences=limit)) <= limit
    assert checked > 50


def test_generated_specs_survive_a_json_round_trip():
    rng = random.Random(5)
    for _ in range(200):
        events = random_schedule(rng)
        assert schedule_from_list(json.loads(json.dumps(schedule_to_list(events)))) == events


def test_local_days_tile_time_without_gaps():
    rng = random.Random(13)
    for tz in ("Europe/Berlin", "America/New_York", "Asia/Shanghai", "Australia/Sydney"):
        for _ in range(100):
            day = random_date(rng, date(2020, 1, 1), date(2030, 12, 31))
            start, end = local_day_bounds_utc(day, tz)
            assert end == local_day_bounds_utc(day + timedelta(days=1), tz)[0]
            assert end - start in (timedelta(hours=23), timedelta(hours=24), timedelta(hours=25))
            assert local_date(start, tz) == day
            assert local_date(end - timedelta(microseconds=1), tz) == day
