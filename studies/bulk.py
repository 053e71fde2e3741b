"""Bulk writes of follow-up tasks through PostgreSQL COPY.

`bulk_create` spends most of a large insert in Python: a model instance per row, then
each value prepared and bound into a multi-row INSERT. COPY takes the rows as text in
one stream, in chunks of `CHUNK_ROWS`, so a million tasks are a few dozen round trips.

- `tasks_insert(tasks)`: FollowUpTask instances, every column as bulk_create would
  write it (studies.services._apply for large plans). The instances are not given
  primary keys; callers that need them use bulk_create.
- `tasks_generate(...)`: every task of subjects that have none yet (a new study's
  backlog, a bulk load), planned once per distinct (enrolment date, index date) and
  written without building model instances.

`tasks_generate` gives the columns in TASK_COLUMNS; every other concrete column gets the
field's default, evaluated once per call (`created`/`updated` get one "now") and
prepared by the field itself (an encrypted field is encrypted), so a new column with a
default (or nullable) needs no change here."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, connections, models
from django.db.models.fields import NOT_PROVIDED
from django.utils import timezone

from studies.models import FollowUpTask, ScheduleVersion
from studies.schedule import event_spec_from_dict, plan_occurrences

CHUNK_ROWS = 50_000
# COPY text format: backslash, tab, newline and carriage return are escaped in values.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_value(value: Any) -> str:
    """One value as COPY text (NULL is \\N). Dates and aware datetimes print in ISO form."""
    if value is None:
        return "\\N"
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, str):
        return value.translate(_COPY_ESCAPES)
    return str(value)


def _constant_columns(model: type[models.Model], given: Sequence[str]) -> tuple[list[str], str]:
    """The concrete columns the caller does not give, and their values as one COPY text
    fragment: each field's default (or NULL), prepared for the database by the field."""
    now = timezone.now()
    columns, values = [], []
    for field in model._meta.concrete_fields:
        if field.primary_key or field.column in given:
            continue
        if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            value: Any = now
        elif field.default is not NOT_PROVIDED:
            value = now if field.default is timezone.now else field.get_default()
        elif field.null:
            value = None
        else:
            raise ValueError(f"{model.__name__}.{field.name} has no default: give the column {field.column!r}")
        columns.append(field.column)
        values.append(copy_value(field.get_db_prep_save(value, connection)))
    return columns, "\t".join(values)


def copy_lines(*, model: type[models.Model], columns: Sequence[str], lines: Iterable[str]) -> int:
    """COPY rows into `model`'s table. Each line holds the values of `columns` as COPY
    text, tab-separated, without the newline; the other columns get their defaults.
    Runs in the caller's transaction (and tenant schema). Returns the row count."""
    constant_columns, constant_text = _constant_columns(model, columns)
    suffix = ("\t" + constant_text if constant_columns else "") + "\n"
    table = connection.ops.quote_name(model._meta.db_table)
    column_list = ", ".join(connection.ops.quote_name(c) for c in [*columns, *constant_columns])
    statement = f"COPY {table} ({column_list}) FROM STDIN"
    written = 0
    buffer = io.StringIO()
    pending = 0
    # copy_expert bypasses Django's cursor wrapper: map driver errors (a duplicate task)
    # to django.db's IntegrityError and friends, as execute() does.
    with connection.cursor() as cursor, connection.wrap_database_errors:
        for line in lines:
            buffer.write(line)
            buffer.write(suffix)
            pending += 1
            if pending == CHUNK_ROWS:
                buffer.seek(0)
                cursor.copy_expert(statement, buffer)
                written += pending
                buffer, pending = io.StringIO(), 0
        if pending:
            buffer.seek(0)
            cursor.copy_expert(statement, buffer)
            written += pending
    return written


# The columns tasks_generate gives; FollowUpTask's other columns take their defaults.
TASK_COLUMNS = ("subject_id", "study_id", "site_id", "schedule_version_id", "assignee_id", "event_code", "sequence",
                "unscheduled", "mode", "target_date", "window_open", "window_close", "provisional", "status",
                "completed_on")


# Field classes whose database value is the attribute itself (no conversion by
# get_db_prep_save that COPY's text would not do the same way). Subclasses are not
# trusted: an encrypted text field is a TextField subclass and must encrypt.
_PLAIN_FIELDS = (models.AutoField, models.BigIntegerField, models.BooleanField, models.CharField,
                 models.DateField, models.ForeignKey, models.IntegerField, models.PositiveIntegerField,
                 models.PositiveSmallIntegerField, models.SmallIntegerField, models.TextField)


def _is_plain(field: models.Field[Any, Any]) -> bool:
    return type(field) in _PLAIN_FIELDS and not getattr(field, "auto_now", False) \
        and not getattr(field, "auto_now_add", False)


def tasks_insert(tasks: Sequence[FollowUpTask]) -> int:
    """Insert task instances with COPY: every column, as bulk_create would write it.
    Plain columns are read from the instance; the others (auto_now, encrypted, ...) are
    prepared by their field (pre_save, then get_db_prep_save). No primary keys are set
    on the instances."""
    fields = [f for f in FollowUpTask._meta.concrete_fields if not f.primary_key]
    # The connection itself, not django.db.connection: that proxy looks the connection up
    # in a context-local on every attribute access.
    db = connections[DEFAULT_DB_ALIAS]
    plain = [f.attname for f in fields if _is_plain(f)]
    prepared = [f for f in fields if not _is_plain(f)]

    def lines() -> Iterator[str]:
        for task in tasks:
            values = [getattr(task, name) for name in plain]
            values += [f.get_db_prep_save(f.pre_save(task, True), db) for f in prepared]
            yield "\t".join([copy_value(v) for v in values])

    columns = [f.column for f in fields if _is_plain(f)] + [f.column for f in prepared]
    return copy_lines(model=FollowUpTask, columns=columns, lines=lines())


def tasks_generate(*, version: ScheduleVersion, subjects: Iterable[tuple[int, int, int, date, date | None]],
                   today: date, assignee_by_site: Mapping[int, int | None]) -> int:
    """Write every task of `version` for subjects that have no tasks yet, with COPY.

    `subjects` yields (subject id, study id, site id, enrolment date, index date).
    Subjects without tasks have no actual visit dates, so a subject's plan depends only
    on its two dates: it is computed once per distinct pair (a study enrolling for two
    years has a few hundred), and its date, window and status columns are formatted once
    as text; each task then costs one string join. Returns the number of tasks."""
    from studies.services import task_status_on  # services imports this module

    specs = [event_spec_from_dict(raw) for raw in version.events]
    modes = {raw["code"]: raw.get("mode", "any") for raw in version.events}
    plans: dict[tuple[date, date | None], list[str]] = {}

    def plan_text(enrolment_date: date, index_date: date | None) -> list[str]:
        key = (enrolment_date, index_date)
        text = plans.get(key)
        if text is None:
            text = plans[key] = [
                "\t".join([copy_value(v) for v in (
                    occ.event_code, occ.sequence, False, modes.get(occ.event_code, "any"), occ.target,
                    occ.window_open, occ.window_close, occ.provisional,
                    task_status_on(window_open=occ.window_open, target=occ.target, window_close=occ.window_close,
                                   today=today),
                    None)])
                for occ in plan_occurrences(events=specs, enrolment_date=enrolment_date, index_date=index_date)]
        return text

    def lines() -> Iterator[str]:
        for subject_id, study_id, site_id, enrolment_date, index_date in subjects:
            assignee = assignee_by_site.get(site_id)
            prefix = f"{subject_id}\t{study_id}\t{site_id}\t{version.pk}\t{copy_value(assignee)}\t"
            for occurrence_text in plan_text(enrolment_date, index_date):
                yield prefix + occurrence_text

    return copy_lines(model=FollowUpTask, columns=TASK_COLUMNS, lines=lines())
