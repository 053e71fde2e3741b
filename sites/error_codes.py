"""Stable error codes of the sites app."""

CODE_TAKEN = "site_code_taken"
CHECKLIST_INCOMPLETE = "checklist_incomplete"
BAD_TRANSITION = "bad_transition"
NOT_A_MEMBER = "not_a_member"
ROLE_MISMATCH = "role_mismatch"
ALREADY_ASSIGNED = "already_assigned"
