"""Stable error codes of the tenants app."""

SLUG_RESERVED = "slug_reserved"
SLUG_INVALID = "slug_invalid"
SLUG_TAKEN = "slug_taken"
ALREADY_MEMBER = "already_member"
LAST_ADMIN = "last_admin"
INVITATION_INVALID = "invitation_invalid"
INVITATION_PENDING = "invitation_pending"
