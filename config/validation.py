"""Checks shared by every app's services and forms."""

from __future__ import annotations

import zoneinfo

from django.utils.translation import gettext as _


def time_zone_problem(value: str) -> str | None:
    """A user-facing message if `value` is not an IANA time zone name, else None."""
    try:
        if not value:
            raise zoneinfo.ZoneInfoNotFoundError
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return _("“%(tz)s” is not a known time zone; use a name such as Asia/Shanghai.") % {"tz": value}
    return None
