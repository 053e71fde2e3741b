"""The input rules of enrolling a subject, in one place.

``services.subject_enrol`` (one subject from the API or a page) and ``imports`` (a file
of thousands of rows, checked before anything is written) both apply them, so a rule
changed here changes for both. Pure: no queries. What needs the database (the site is
active, the national ID is not taken) stays with the callers, which batch it
differently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date

from django.utils.translation import gettext as _

from studies.pii import normalize_national_id, pii_keyed_hash

LANGUAGES = ("zh-hans", "en")
LENGTH_LIMITS = (("name", 150), ("phone", 30), ("email", 254), ("address", 500), ("national_id", 40))
PHONE_RE = re.compile(r"\+?[0-9 \-]{5,30}")
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
NATIONAL_ID_RE = re.compile(r"[0-9A-Z]{6,40}")
# How far the index date (surgery, diagnosis...) may lie from enrolment. Visits anchored
# on it are planned from it: a typo such as 9999 or 0001 would plan the timeline
# millennia away, or past the end of the calendar.
INDEX_DATE_MAX_YEARS = 20


@dataclass
class EnrolmentCheck:
    """Problems as (field, message) in the order found, and the keyed hash of a valid
    national ID (None when there is none)."""

    problems: list[tuple[str, str]] = field(default_factory=list)
    national_id_hash: str | None = None

    def add(self, field_name: str, message: str) -> None:
        self.problems.append((field_name, message))

    def as_field_errors(self) -> dict[str, list[str]]:
        errors: dict[str, list[str]] = {}
        for field_name, message in self.problems:
            errors.setdefault(field_name, []).append(message)
        return errors


def enrolment_check(
    *, today: date | None, consent_date: date | None, enrolment_date: date | None, birth_date: date | None,
    language: str, index_date: date | None = None, name: str = "", phone: str = "", email: str = "",
    national_id: str = "", address: str = "",
) -> EnrolmentCheck:
    """Check one subject's enrolment input. `today` is the site's today (None when the
    site is unknown: the date checks that need it are skipped, the site is reported by
    the caller). A missing enrolment date means "today"."""
    check = EnrolmentCheck()
    enrolled_on = enrolment_date or today
    if today is not None and consent_date is not None and consent_date > today:
        check.add("consent_date", _("The consent date is in the future."))
    if consent_date is not None and enrolled_on is not None and enrolled_on < consent_date:
        check.add("enrolment_date", _("Enrolment cannot precede consent."))
    if today is not None and enrolled_on is not None and enrolled_on > today:
        check.add("enrolment_date", _("The enrolment date is in the future."))
    if (index_date is not None and enrolled_on is not None
            and abs((index_date - enrolled_on).days) > INDEX_DATE_MAX_YEARS * 366):
        check.add("index_date", _("The index date must be within %(years)d years of enrolment.")
                  % {"years": INDEX_DATE_MAX_YEARS})
    if today is not None and birth_date is not None and birth_date > today:
        check.add("birth_date", _("The birth date is in the future."))
    if language not in LANGUAGES:
        check.add("language", _("Choose zh-hans or en."))
    values = {"name": name, "phone": phone, "email": email, "address": address, "national_id": national_id}
    for field_name, limit in LENGTH_LIMITS:
        if len(values[field_name] or "") > limit:
            check.add(field_name, _("At most %(max)d characters.") % {"max": limit})
    if phone and not PHONE_RE.fullmatch(phone):
        check.add("phone", _("Enter digits only, optionally with +, spaces or hyphens."))
    if email and not EMAIL_RE.fullmatch(email):
        check.add("email", _("Enter a valid email address."))
    if national_id:
        normalized = normalize_national_id(national_id)
        if not NATIONAL_ID_RE.fullmatch(normalized):
            check.add("national_id", _("Enter a valid national ID number."))
        else:
            check.national_id_hash = pii_keyed_hash(normalized, purpose="subject.national_id")
    return check


def duplicate_national_id_message() -> str:
    return _("A subject with this national ID is already enrolled in this organisation.")
