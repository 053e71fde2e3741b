"""The domain error every service raises for bad input. The API and web layers turn it
into a 4xx with field-level messages (config.api.errors)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.utils.functional import Promise


class DomainError(Exception):
    """`code` is stable and machine-readable; `message` and `fields` are for people."""

    status_code = 400

    def __init__(
        self,
        code: str,
        message: str | Promise,
        *,
        fields: Mapping[str, Sequence[str | Promise]] | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(str(message))
        self.code = code
        self.message = message
        self.fields = {key: [str(m) for m in msgs] for key, msgs in (fields or {}).items()}
        if status_code is not None:
            self.status_code = status_code


class ValidationFailed(DomainError):
    def __init__(self, fields: Mapping[str, Sequence[str | Promise]], message: str | Promise = "") -> None:
        from django.utils.translation import gettext as _

        super().__init__("invalid", message or _("Some fields are not valid."), fields=fields)


class NotFound(DomainError):
    status_code = 404


class Conflict(DomainError):
    status_code = 409


class PermissionDenied(DomainError):
    status_code = 403


def add_domain_error(form: Any, error: DomainError) -> None:
    """Put a service's field errors on a Django form's fields (the rest above the form),
    so a page shows them where the API would name them."""
    for field_name, field_messages in (error.fields or {}).items():
        for message in field_messages:
            form.add_error(field_name if field_name in form.fields else None, message)
    if not error.fields:
        form.add_error(None, str(error.message))
