"""Stable error codes of the studies app."""

STUDY_CODE_TAKEN = "study_code_taken"
STUDY_NOT_ACTIVE = "study_not_active"
SITE_NOT_ACTIVE = "site_not_active"
NO_SCHEDULE = "no_published_schedule"
DUPLICATE_NATIONAL_ID = "duplicate_national_id"
SCHEDULE_PUBLISHED = "schedule_published"
BAD_TRANSITION = "bad_transition"
