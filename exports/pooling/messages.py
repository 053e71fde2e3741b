"""What a failed pooled run says to its reader, in their language (pages and API)."""

from __future__ import annotations

import re

from django.utils.translation import gettext_lazy

# A failed run's `error` is a fixed English sentence (kept so, for logs and the API's
# `error`): pages and the API's `error_message` say it in the reader's language. Group 1
# is a detail kept as it is (tenant slugs, an error's class name, declaration paths).
_RUN_ERRORS = (
    (re.compile(r"^POOLING_SECRET is not set$"),
     gettext_lazy("Pooling is not configured on this platform; ask the platform operator.")),
    (re.compile(r"^the consortium's common data elements are not valid: (.*)$"),
     gettext_lazy("The consortium's common data elements are not valid (%(detail)s); ask the platform operator.")),
    (re.compile(r"^extraction failed for (.*)$"),
     gettext_lazy("Extracting the data of these organisations failed: %(detail)s.")),
    (re.compile(r"^combining the parts failed \((.*)\)$"), gettext_lazy("Combining the parts failed (%(detail)s).")),
    (re.compile(r"^could not queue the run \((.*)\)$"), gettext_lazy("The run could not be queued (%(detail)s).")),
    (re.compile(r"^a tenant's part did not finish \(its worker process stopped\)$"),
     gettext_lazy("An organisation's part did not finish: its worker process stopped.")),
)


def run_error_text(error: str) -> str:
    """The run's `error` in the active language; an unknown one as it is."""
    for pattern, text in _RUN_ERRORS:
        found = pattern.match(error or "")
        if found:
            return str(text) % {"detail": found.group(1)} if found.groups() else str(text)
    return error
