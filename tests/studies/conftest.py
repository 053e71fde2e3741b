"""Fixtures shared by the studies tests."""

# `trial` (alpha with two active sites, staff and an active study) is defined next to the
# API tests that grew it; registered here so other modules use it without re-importing.
from tests.studies.test_studies_api import trial  # noqa: F401
