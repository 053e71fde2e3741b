"""Visit-schedule arithmetic: pure functions over dates, no models and no database.

A schedule is an ordered list of `EventSpec`s. `plan_occurrences` turns it, with one
subject's enrolment and index dates, into dated `Occurrence`s (target and window), which
the follow-up task services store. Every date here is a calendar date in the site's
local time; only `local_day_bounds_utc` meets instants, so a DST change never moves a
target, only the UTC span of its day.

Rules (the tests spell each one out):
- A month is a calendar month; a day that does not exist in the target month clamps to its
  last day (31 Jan + 1 month = 28/29 Feb). Month counts always start from the anchor, never
  from the previous occurrence, so repeats never drift (31 Jan, 28 Feb, 31 Mar, ...).
- A week is 7 days.
- Repeats: day/week repeats step from the first occurrence; month repeats are
  anchor + offset + k*N months. The last occurrence is on or before anchor + repeat_until.
- An event anchored on another event uses that event's actual date when known, else the
  target of its first occurrence (and is then provisional).
"""

from __future__ import annotations

import calendar
import re
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any, Literal, cast

from django.utils.functional import Promise
from django.utils.translation import get_language
from django.utils.translation import gettext as _

from config.errors import ValidationFailed

Unit = Literal["day", "week", "month"]
Anchor = Literal["enrolment", "index", "event"]
Mode = Literal["clinic", "phone", "home", "epro", "any"]

UNITS: tuple[Unit, ...] = ("day", "week", "month")
ANCHORS: tuple[Anchor, ...] = ("enrolment", "index", "event")
MODES: tuple[Mode, ...] = ("clinic", "phone", "home", "epro", "any")

CODE_RE = re.compile(r"^[A-Z0-9_]{1,20}$")
NAME_MAX_LENGTH = 200
FORM_CODE_MAX_LENGTH = 64
MAX_WINDOW_DAYS = 366
# "More than 20 years" from the anchor: 240 calendar months, or 20 * 365.25 days.
MAX_OFFSET_MONTHS = 240
MAX_OFFSET_DAYS = 7305
MAX_OCCURRENCES = 500


class ScheduleError(ValidationFailed, ValueError):
    """Bad schedule or bad stored JSON. `fields` maps addresses such as
    "events.2.repeat_every" to user-facing messages; being a ValidationFailed, it reaches
    API users as a 400 with those field messages."""

    def __init__(self, fields: Mapping[str, Sequence[str | Promise]], message: str | Promise = "") -> None:
        super().__init__(fields, message or _("The visit schedule is not valid."))


@dataclass(frozen=True)
class Offset:
    amount: int
    unit: Unit


@dataclass(frozen=True)
class EventSpec:
    code: str
    name_en: str
    name_zh: str
    anchor: Anchor
    anchor_event: str | None
    offset: Offset  # first (or only) occurrence = anchor + offset; may be 0 or negative
    window_before: int  # days
    window_after: int  # days
    mode: Mode
    forms: tuple[str, ...] = ()
    repeat_every: Offset | None = None
    repeat_until: Offset | None = None  # relative to the anchor, inclusive

    @property
    def repeats(self) -> bool:
        return self.repeat_every is not None


@dataclass(frozen=True)
class Occurrence:
    event_code: str
    sequence: int  # 1-based per event
    target: date
    window_open: date  # target - window_before
    window_close: date  # target + window_after
    provisional: bool  # anchored on an event whose actual date is not known yet


# --- date arithmetic -------------------------------------------------------------------


def add_months(start: date, months: int) -> date:
    """`start` plus calendar months; a missing day clamps to the month's last day."""
    total = start.year * 12 + (start.month - 1) + months
    year, month0 = divmod(total, 12)
    month = month0 + 1
    return date(year, month, min(start.day, calendar.monthrange(year, month)[1]))


def add_offset(start: date, offset: Offset) -> date:
    if offset.unit == "month":
        return add_months(start, offset.amount)
    if offset.unit == "week":
        return start + timedelta(days=7 * offset.amount)
    if offset.unit == "day":
        return start + timedelta(days=offset.amount)
    raise ScheduleError({"unit": [_("Choose one of: %(choices)s.") % {"choices": ", ".join(UNITS)}]})


@lru_cache(maxsize=1024)
def _month_span_days(months: int) -> tuple[int, int]:
    """Fewest and most days that `months` calendar months can span, over all anchors.

    The Gregorian calendar repeats every 4 years between 1901 and 2099, so one 4-year cycle
    of anchors gives the exact range there; one day of slack on each side covers 2100,
    which has no 29 February."""
    first = date(2001, 1, 1)
    spans = [(add_months(d, months) - d).days for d in (first + timedelta(days=i) for i in range(1461))]
    return min(spans) - 1, max(spans) + 1


def _day_range(offset: Offset) -> tuple[int, int]:
    if offset.unit == "month":
        return _month_span_days(offset.amount)
    days = offset.amount * (7 if offset.unit == "week" else 1)
    return days, days


def _same_kind(a: Offset, b: Offset) -> bool:
    """Both in months, or both in days/weeks: then they compare exactly, for any anchor."""
    return (a.unit == "month") == (b.unit == "month")


def _as_days_or_months(offset: Offset) -> int:
    return offset.amount * 7 if offset.unit == "week" else offset.amount


# --- planning --------------------------------------------------------------------------


def _occurrence_dates(spec: EventSpec, anchor: date, *, limit: int) -> list[date]:
    """Targets of one event for one anchor date; at most `limit` + 1 of them, so that a
    caller can tell "too many" apart from "exactly the limit"."""
    first = add_offset(anchor, spec.offset)
    if spec.repeat_every is None or spec.repeat_until is None:
        return [first]
    until = add_offset(anchor, spec.repeat_until)
    step = spec.repeat_every
    targets = [first]
    if step.unit == "month":
        # Counted from the anchor (month offset) or from the first occurrence, never chained.
        base, months0 = (anchor, spec.offset.amount) if spec.offset.unit == "month" else (first, 0)
        k = 1
        while len(targets) <= limit:
            target = add_months(base, months0 + k * step.amount)
            if target > until:
                break
            targets.append(target)
            k += 1
    else:
        step_days = _as_days_or_months(step)
        if until > first:
            count = min((until - first).days // step_days, limit)
            targets.extend(first + timedelta(days=k * step_days) for k in range(1, count + 1))
    return targets


def plan_occurrences(
    *,
    events: Sequence[EventSpec],
    enrolment_date: date,
    index_date: date | None,
    actual_dates: Mapping[str, date] | None = None,
    max_occurrences: int = MAX_OCCURRENCES,
) -> list[Occurrence]:
    """All occurrences of a subject's schedule, sorted by (target, event order, sequence).

    An event anchored on the index date plans nothing while the index date is unknown, and
    neither do events anchored on it (unless their anchor event's actual date is known).
    `actual_dates` maps an event code to the actual date of its first occurrence; it only
    serves as an anchor and never moves the event's own targets. Raises ScheduleError for an
    invalid schedule or one that gives more than `max_occurrences` occurrences."""
    events = tuple(events)
    errors = _validation_errors(events, max_occurrences)
    if errors:
        raise ScheduleError(errors)
    actual_dates = actual_dates or {}
    order = {spec.code: i for i, spec in enumerate(events)}
    anchor_of: dict[str, tuple[date, bool] | None] = {}  # code -> (first target, provisional)
    planned: list[tuple[date, int, int, Occurrence]] = []
    for i in _anchor_order(events):
        spec = events[i]
        anchor: date | None
        provisional = False
        if spec.anchor == "enrolment":
            anchor = enrolment_date
        elif spec.anchor == "index":
            anchor = index_date
        else:
            assert spec.anchor_event is not None  # validated
            if spec.anchor_event in actual_dates:
                anchor = actual_dates[spec.anchor_event]
            else:
                upstream = anchor_of[spec.anchor_event]
                anchor, provisional = (upstream[0], True) if upstream else (None, False)
        if anchor is None:
            anchor_of[spec.code] = None
            continue
        remaining = max_occurrences - len(planned)
        targets = _occurrence_dates(spec, anchor, limit=remaining)
        if len(targets) > remaining:
            raise ScheduleError(
                {"events": [_("The schedule gives more than %(max)d visits per subject.") % {"max": max_occurrences}]}
            )
        anchor_of[spec.code] = (targets[0], provisional)
        for seq, target in enumerate(targets, start=1):
            occurrence = Occurrence(
                event_code=spec.code,
                sequence=seq,
                target=target,
                window_open=target - timedelta(days=spec.window_before),
                window_close=target + timedelta(days=spec.window_after),
                provisional=provisional,
            )
            planned.append((target, order[spec.code], seq, occurrence))
    planned.sort(key=lambda row: row[:3])
    return [row[3] for row in planned]


@lru_cache(maxsize=256)
def _anchor_order(events: tuple[EventSpec, ...]) -> tuple[int, ...]:
    """Indexes of a valid schedule with every anchor event before its dependents, otherwise
    in schedule order."""
    index = {spec.code: i for i, spec in enumerate(events)}
    done: list[int] = []
    seen: set[int] = set()

    def visit(i: int) -> None:
        if i in seen:
            return
        seen.add(i)
        anchor_event = events[i].anchor_event
        if events[i].anchor == "event" and anchor_event is not None:
            visit(index[anchor_event])
        done.append(i)

    for i in range(len(events)):
        visit(i)
    return tuple(done)


# --- validation ------------------------------------------------------------------------


def validate_schedule(events: Sequence[EventSpec], *, max_occurrences: int = MAX_OCCURRENCES) -> dict[str, list[str]]:
    """Field-addressed messages ("events.2.repeat_every": [...]) for everything wrong with a
    schedule; empty when it is valid. Indexes are 0-based positions in `events`."""
    return {key: list(msgs) for key, msgs in _validation_errors(tuple(events), max_occurrences).items()}


def _validation_errors(events: tuple[EventSpec, ...], max_occurrences: int) -> dict[str, list[str]]:
    """Cached, because task generation plans the same schedule for every subject; keyed by
    the active language too, since the messages are translated. Callers must not mutate the
    result. A spec built with unhashable values (a list of forms) is validated uncached, and
    gets its message."""
    try:
        return _validate_cached(events, max_occurrences, get_language())
    except TypeError:
        return _validate(events, max_occurrences)


@lru_cache(maxsize=256)
def _validate_cached(events: tuple[EventSpec, ...], max_occurrences: int, language: str | None) -> dict[str, list[str]]:
    return _validate(events, max_occurrences)


# add(event index or None for the whole schedule, field name, message)
_Add = Callable[[int | None, str, str], None]


def _validate(events: tuple[EventSpec, ...], max_occurrences: int) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}

    def add(i: int | None, name: str, message: str) -> None:
        errors.setdefault(f"events.{i}.{name}" if i is not None else "events", []).append(message)

    first_index: dict[str, int] = {}
    for i, spec in enumerate(events):
        if not isinstance(spec.code, str) or not CODE_RE.match(spec.code):
            add(i, "code", _("Use 1-20 capital letters, digits or underscores."))
        elif spec.code in first_index:
            add(i, "code", _("The code “%(code)s” is used by event %(n)d already.")
                % {"code": spec.code, "n": first_index[spec.code] + 1})
        else:
            first_index[spec.code] = i

    for i, spec in enumerate(events):
        for name in ("name_en", "name_zh"):
            value = getattr(spec, name)
            if not isinstance(value, str) or not value.strip():
                add(i, name, _("Enter the event's English name.") if name == "name_en"
                    else _("Enter the event's Chinese name."))
            elif len(value) > NAME_MAX_LENGTH:
                add(i, name, _("The name may have at most %(max)d characters.") % {"max": NAME_MAX_LENGTH})
        _validate_anchor(i, spec, first_index, add)
        for name in ("window_before", "window_after"):
            value = getattr(spec, name)
            if not _is_int(value) or not 0 <= value <= MAX_WINDOW_DAYS:
                add(i, name, _("Give a whole number of days from 0 to %(max)d.") % {"max": MAX_WINDOW_DAYS})
        if spec.mode not in MODES:
            add(i, "mode", _("Choose one of: %(choices)s.") % {"choices": ", ".join(MODES)})
        _validate_forms(i, spec, add)
        _validate_offsets(i, spec, add)

    _validate_cycles(events, first_index, add)
    if not errors:
        _validate_counts(events, max_occurrences, add)
    return errors


def _validate_anchor(i: int, spec: EventSpec, first_index: Mapping[str, int], add: _Add) -> None:
    if spec.anchor not in ANCHORS:
        add(i, "anchor", _("Choose one of: %(choices)s.") % {"choices": ", ".join(ANCHORS)})
    elif spec.anchor == "event":
        if not spec.anchor_event:
            add(i, "anchor_event", _("Choose the event this one is anchored on."))
        elif spec.anchor_event == spec.code:
            add(i, "anchor_event", _("An event cannot be anchored on itself."))
        elif not isinstance(spec.anchor_event, str) or spec.anchor_event not in first_index:
            add(i, "anchor_event", _("There is no event with the code “%(code)s”.") % {"code": spec.anchor_event})
    elif spec.anchor_event is not None:
        add(i, "anchor_event", _("Only an event anchored on another event names an anchor event."))


def _validate_forms(i: int, spec: EventSpec, add: _Add) -> None:
    if not isinstance(spec.forms, tuple):
        add(i, "forms", _("Give a list of form codes."))
        return
    for form in spec.forms:
        if not isinstance(form, str) or not form.strip() or len(form) > FORM_CODE_MAX_LENGTH:
            add(i, "forms", _("Each form code must have 1-%(max)d characters.") % {"max": FORM_CODE_MAX_LENGTH})
            return
    if len(set(spec.forms)) != len(spec.forms):
        add(i, "forms", _("A form is listed twice."))


def _offset_problem(offset: Any) -> str | None:
    """What is wrong with an Offset's shape or size (None if nothing)."""
    if not isinstance(offset, Offset) or not _is_int(offset.amount):
        return _("Give a whole number with a unit of day, week or month.")
    if offset.unit not in UNITS:
        return _("Choose one of: %(choices)s.") % {"choices": ", ".join(UNITS)}
    too_far = (
        abs(offset.amount) > MAX_OFFSET_MONTHS
        if offset.unit == "month"
        else abs(_as_days_or_months(offset)) > MAX_OFFSET_DAYS
    )
    if too_far:
        return _("That is more than 20 years.")
    return None


def _validate_offsets(i: int, spec: EventSpec, add: _Add) -> None:
    offset_problem = _offset_problem(spec.offset)
    if offset_problem:
        add(i, "offset", offset_problem)
    every, until = spec.repeat_every, spec.repeat_until
    if every is None and until is None:
        return
    if every is None:
        add(i, "repeat_every", _("Say how often the event repeats, or remove the repeat end."))
        return
    if until is None:
        add(i, "repeat_until", _("Say until when the event repeats."))
    every_problem = _offset_problem(every)
    if every_problem:
        add(i, "repeat_every", every_problem)
    elif every.amount <= 0:
        add(i, "repeat_every", _("The repeat interval must be more than zero."))
    if until is None:
        return
    until_problem = _offset_problem(until)
    if until_problem:
        add(i, "repeat_until", until_problem)
    elif not offset_problem:
        # Same kind of unit: exact. Mixed (months against days): refuse when some anchor
        # date could put the end before the first occurrence.
        if _same_kind(until, spec.offset):
            before = _as_days_or_months(until) < _as_days_or_months(spec.offset)
        else:
            before = _day_range(until)[0] < _day_range(spec.offset)[1]
        if before:
            add(i, "repeat_until", _("The repeat ends before the first occurrence."))


def _validate_cycles(events: tuple[EventSpec, ...], first_index: Mapping[str, int], add: _Add) -> None:
    def anchor_index(i: int) -> int | None:
        spec = events[i]
        if spec.anchor != "event" or not isinstance(spec.anchor_event, str) or spec.anchor_event == spec.code:
            return None  # self-anchoring has its own message
        return first_index.get(spec.anchor_event)

    reported: set[int] = set()
    for start in range(len(events)):
        path: list[int] = []
        i: int | None = start
        while i is not None and i not in path:
            path.append(i)
            i = anchor_index(i)
        if i is None or i in reported:
            continue
        cycle = path[path.index(i):]
        reported.update(cycle)
        codes = " → ".join(events[j].code for j in [*cycle, i])
        for j in cycle:
            add(j, "anchor_event", _("Events anchor on each other in a circle: %(codes)s.") % {"codes": codes})


def _occurrence_bound(spec: EventSpec, *, limit: int) -> int:
    """Most occurrences the event can have for any anchor date (at most limit + 1)."""
    every, until = spec.repeat_every, spec.repeat_until
    if every is None or until is None:
        return 1
    if every.unit == "month" and spec.offset.unit == "month" and until.unit == "month":
        return min((until.amount - spec.offset.amount) // every.amount + 1, limit + 1)
    if until.unit != "month" and spec.offset.unit != "month":
        room = _as_days_or_months(until) - _as_days_or_months(spec.offset)
    else:
        room = _day_range(until)[1] - _day_range(spec.offset)[0]
    if every.unit != "month":
        return min(room // _as_days_or_months(every) + 1, limit + 1)
    count = 1
    while count <= limit and _month_span_days(count * every.amount)[0] <= room:
        count += 1
    return count


def _validate_counts(events: tuple[EventSpec, ...], max_occurrences: int, add: _Add) -> None:
    total, one_too_many = 0, False
    for i, spec in enumerate(events):
        bound = _occurrence_bound(spec, limit=max_occurrences)
        if bound > max_occurrences:
            add(i, "repeat_every", _("This repeat gives more than %(max)d visits per subject.")
                % {"max": max_occurrences})
            one_too_many = True
        total += bound
    if total > max_occurrences and not one_too_many:
        add(None, "", _("The schedule gives up to %(n)d visits per subject; at most %(max)d are allowed.")
            % {"n": total, "max": max_occurrences})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- JSON storage ----------------------------------------------------------------------

_FIELDS = (
    "code", "name_en", "name_zh", "anchor", "anchor_event", "offset", "window_before", "window_after",
    "mode", "forms", "repeat_every", "repeat_until",
)
_OPTIONAL: dict[str, Any] = {"anchor_event": None, "forms": [], "repeat_every": None, "repeat_until": None}


def offset_to_dict(offset: Offset) -> dict[str, Any]:
    return {"amount": offset.amount, "unit": offset.unit}


def event_spec_to_dict(spec: EventSpec) -> dict[str, Any]:
    """A JSON-ready dict (for a JSONField) that event_spec_from_dict reads back."""
    return {
        "code": spec.code,
        "name_en": spec.name_en,
        "name_zh": spec.name_zh,
        "anchor": spec.anchor,
        "anchor_event": spec.anchor_event,
        "offset": offset_to_dict(spec.offset),
        "window_before": spec.window_before,
        "window_after": spec.window_after,
        "mode": spec.mode,
        "forms": list(spec.forms),
        "repeat_every": offset_to_dict(spec.repeat_every) if spec.repeat_every else None,
        "repeat_until": offset_to_dict(spec.repeat_until) if spec.repeat_until else None,
    }


def _offset_from(value: Any, *, optional: bool) -> Offset | str | None:
    """An Offset, None (when optional and null), or a message saying what is wrong."""
    if value is None and optional:
        return None
    if not isinstance(value, Mapping) or set(value) != {"amount", "unit"}:
        return _("Give an object with an amount and a unit.")
    amount, unit = value["amount"], value["unit"]
    if not _is_int(amount):
        return _("Give the amount as a whole number.")
    if unit not in UNITS:
        return _("Choose one of: %(choices)s.") % {"choices": ", ".join(UNITS)}
    return Offset(amount=amount, unit=cast(Unit, unit))


def event_spec_from_dict(data: Mapping[str, Any], *, prefix: str = "") -> EventSpec:
    """Read one event back from JSON, checking types and choices (not the schedule rules:
    that is validate_schedule). Raises ScheduleError; field keys are `prefix` + field name,
    so a caller reading a list passes prefix="events.3."."""
    if not isinstance(data, Mapping):
        raise ScheduleError({prefix.rstrip(".") or "event": [_("Give the event as an object.")]})
    errors: dict[str, list[str]] = {}

    def fail(name: str, message: str) -> None:
        errors.setdefault(prefix + name, []).append(message)

    for unknown in sorted(set(map(str, data)) - set(_FIELDS)):
        fail(unknown, _("Unknown field."))
    values = {name: data.get(name, _OPTIONAL.get(name)) for name in _FIELDS}
    for name in _FIELDS:
        if name not in data and name not in _OPTIONAL:
            fail(name, _("This field is required."))
    for name in ("code", "name_en", "name_zh"):
        if name in data and not isinstance(values[name], str):
            fail(name, _("Give a text value."))
    if values["anchor_event"] is not None and not isinstance(values["anchor_event"], str):
        fail("anchor_event", _("Give an event code or null."))
    for name, choices in (("anchor", ANCHORS), ("mode", MODES)):
        if name in data and values[name] not in choices:
            fail(name, _("Choose one of: %(choices)s.") % {"choices": ", ".join(choices)})
    for name in ("window_before", "window_after"):
        if name in data and not _is_int(values[name]):
            fail(name, _("Give a whole number of days."))
    forms = values["forms"]
    if not isinstance(forms, list) or not all(isinstance(f, str) for f in forms):
        fail("forms", _("Give a list of form codes."))
    offsets: dict[str, Offset | None] = {}
    for name in ("offset", "repeat_every", "repeat_until"):
        if name not in data and name not in _OPTIONAL:
            continue
        parsed = _offset_from(values[name], optional=name != "offset")
        if isinstance(parsed, str):
            fail(name, parsed)
        else:
            offsets[name] = parsed
    if errors:
        raise ScheduleError(errors)
    offset = offsets["offset"]
    assert offset is not None
    return EventSpec(
        code=values["code"],
        name_en=values["name_en"],
        name_zh=values["name_zh"],
        anchor=values["anchor"],
        anchor_event=values["anchor_event"],
        offset=offset,
        window_before=values["window_before"],
        window_after=values["window_after"],
        mode=values["mode"],
        forms=tuple(forms),
        repeat_every=offsets["repeat_every"],
        repeat_until=offsets["repeat_until"],
    )


def schedule_from_list(data: Any, *, max_occurrences: int = MAX_OCCURRENCES) -> list[EventSpec]:
    """Read and validate a whole stored schedule (a JSON list of events). Raises one
    ScheduleError carrying every problem, addressed "events.<i>.<field>"."""
    if not isinstance(data, list):
        raise ScheduleError({"events": [_("Give the schedule as a list of events.")]})
    specs: list[EventSpec] = []
    errors: dict[str, list[str]] = {}
    for i, item in enumerate(data):
        try:
            specs.append(event_spec_from_dict(item, prefix=f"events.{i}."))
        except ScheduleError as exc:
            errors.update(exc.fields)
    if errors:
        raise ScheduleError(errors)
    errors = validate_schedule(specs, max_occurrences=max_occurrences)
    if errors:
        raise ScheduleError(errors)
    return specs


def schedule_to_list(events: Sequence[EventSpec]) -> list[dict[str, Any]]:
    return [event_spec_to_dict(spec) for spec in events]


# --- local days and instants -----------------------------------------------------------


def _zone(tz_name: str) -> zoneinfo.ZoneInfo:
    try:
        if not tz_name:
            raise zoneinfo.ZoneInfoNotFoundError
        return zoneinfo.ZoneInfo(tz_name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            {"time_zone": [_("“%(tz)s” is not a known time zone; use a name such as Asia/Shanghai.") % {"tz": tz_name}]}
        ) from None


def local_day_bounds_utc(day: date, tz_name: str) -> tuple[datetime, datetime]:
    """[start, end) of a local calendar day as aware UTC datetimes: 23 or 25 hours long on
    DST change days. Where local midnight does not exist (clocks jump from 00:00), the day
    starts at the first local instant after the jump (fold=0 resolves to it)."""
    zone = _zone(tz_name)
    start = datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone).astimezone(UTC)
    return start, end


def local_date(moment: datetime, tz_name: str) -> date:
    """The calendar day an aware instant falls on in a time zone (for "today at the site")."""
    if moment.tzinfo is None:
        raise ValueError("local_date needs an aware datetime")
    return moment.astimezone(_zone(tz_name)).date()
