"""Writes of the tenants app. Each service validates its input, raises a DomainError
for bad input, and runs in one transaction."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from datetime import timedelta

import structlog
from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import override

from config.errors import Conflict, DomainError, NotFound, ValidationFailed
from config.validation import time_zone_problem
from tenants import error_codes
from tenants.models import (
    ApiToken,
    Domain,
    Invitation,
    Language,
    Tenant,
    TenantKind,
    TenantMembership,
    TenantStatus,
    User,
)
from tenants.roles import Role
from tenants.schema_pool import TENANT_SCHEMA_PREFIX, schema_build, schema_exists, spare_claim

log = structlog.get_logger(__name__)

# 3-40 characters: lower-case letters, digits and single hyphens, starting with a
# letter. It becomes a DNS label and (with `-` -> `_`) part of a schema name.
SLUG_RE = re.compile(r"^[a-z](?:[a-z0-9]|-(?=[a-z0-9])){2,39}$")
NAME_MAX_LENGTH = Tenant._meta.get_field("name").max_length or 120
INVITATION_LIFETIME = timedelta(days=7)


def tenant_schema_name(slug: str) -> str:
    return TENANT_SCHEMA_PREFIX + slug.replace("-", "_")


def tenant_domain(slug: str) -> str:
    return f"{slug}.{settings.BASE_DOMAIN}"


def tenant_url(slug: str) -> str:
    """The tenant's base URL as users reach it (scheme and port from settings)."""
    port = f":{settings.SITE_PORT}" if settings.SITE_PORT else ""
    return f"{settings.SITE_SCHEME}://{tenant_domain(slug)}{port}"


def public_home_url() -> str:
    """The public site's home page (the organisation finder), as users reach it."""
    port = f":{settings.SITE_PORT}" if settings.SITE_PORT else ""
    return f"{settings.SITE_SCHEME}://{settings.BASE_DOMAIN}{port}/"


def _validate_tenant_input(
    *, name: str, slug: str, kind: str, admin_email: str, admin_password: str | None,
    time_zone: str, default_language: str, status: str,
) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    if not name.strip():
        errors["name"] = [_("Enter the organisation's name.")]
    elif len(name) > NAME_MAX_LENGTH:
        errors["name"] = [_("The name may have at most %(max)d characters (it has %(n)d).")
                          % {"max": NAME_MAX_LENGTH, "n": len(name)}]
    if slug in settings.RESERVED_TENANT_SLUGS or slug.startswith(("pg", "spare", "tpl")):
        errors["slug"] = [_("“%(slug)s” is reserved; choose another address.") % {"slug": slug}]
    elif not SLUG_RE.match(slug):
        errors["slug"] = [_("Use 3-40 lower-case letters, digits or single hyphens, "
                            "starting with a letter and not ending with a hyphen.")]
    elif Tenant.objects.filter(slug=slug).exists() or schema_exists(tenant_schema_name(slug)):
        # A schema left behind by hand (no tenant row) blocks the address too.
        errors["slug"] = [_("The address “%(slug)s” is already taken.") % {"slug": slug}]
    if kind not in TenantKind.values:
        errors["kind"] = [_("Choose one of: %(choices)s.") % {"choices": ", ".join(TenantKind.values)}]
    if status not in TenantStatus.values:
        errors["status"] = [_("Choose one of: %(choices)s.") % {"choices": ", ".join(TenantStatus.values)}]
    if default_language not in Language.values:
        errors["default_language"] = [_("Choose zh-hans or en.")]
    if problem := time_zone_problem(time_zone):
        errors["time_zone"] = [problem]
    try:
        validate_email(admin_email)
    except ValidationError:
        errors["admin_email"] = [_("Enter a valid email address.")]
    if admin_password is not None:
        try:
            validate_password(admin_password, User(email=admin_email))
        except ValidationError as exc:
            errors["admin_password"] = list(exc.messages)
    return errors


def tenant_create(
    *,
    name: str,
    slug: str,
    kind: str,
    admin_email: str,
    admin_password: str | None = None,
    admin_full_name: str = "",
    time_zone: str = "Asia/Shanghai",
    default_language: str = Language.ZH_HANS,
    status: str = TenantStatus.TRIAL,
    accept_url_base: str | None = None,
) -> Tenant:
    """Create a ready tenant: schema, primary domain and a first tenant_admin.

    With no `admin_password` the admin receives an invitation to set one. Either the
    whole tenant exists afterwards or nothing of it does.
    """
    slug = (slug or "").strip().lower()
    admin_email = (admin_email or "").strip().lower()
    errors = _validate_tenant_input(
        name=name or "", slug=slug, kind=kind, admin_email=admin_email,
        admin_password=admin_password, time_zone=time_zone,
        default_language=default_language, status=status,
    )
    if errors:
        raise ValidationFailed(errors)

    schema_name = tenant_schema_name(slug)
    try:
        with transaction.atomic():
            if not spare_claim(target_schema=schema_name):
                log.warning("schema_pool.empty", slug=slug)
                schema_build(schema_name=schema_name)
            tenant = Tenant(
                schema_name=schema_name, name=name.strip(), slug=slug, kind=kind, status=status,
                time_zone=time_zone, default_language=default_language,
            )
            tenant.save()
            Domain.objects.create(domain=tenant_domain(slug), tenant=tenant, is_primary=True)
            membership, raw_invitation = _membership_add(
                tenant=tenant, email=admin_email, role=Role.TENANT_ADMIN, full_name=admin_full_name,
                password=admin_password, invited_by=None, direct=admin_password is not None,
            )
            if raw_invitation:
                _send_invitation_on_commit(membership=membership, raw_token=raw_invitation,
                                           accept_url_base=accept_url_base)
            transaction.on_commit(_request_pool_refill)
    except IntegrityError as exc:
        constraint = getattr(getattr(exc.__cause__, "diag", None), "constraint_name", "") or ""
        if "slug" in constraint or "schema_name" in constraint or "domain" in constraint:
            # Two sign-ups raced for the same address; the loser gets the same message.
            raise ValidationFailed(
                {"slug": [_("The address “%(slug)s” is already taken.") % {"slug": slug}]}
            ) from exc
        # Another write raced with this one (e.g. the same new admin email): nothing was
        # saved, and trying again will work.
        raise Conflict("busy", _("Another change was saved at the same moment; please try again.")) from exc
    log.info("tenant.created", tenant=slug, kind=kind)
    return tenant


def _request_pool_refill() -> None:
    # A broker outage must not fail a sign-up that has committed; beat refills anyway.
    try:
        from tenants.tasks import schema_pool_refill

        schema_pool_refill.delay()
    except Exception:
        log.warning("schema_pool.refill_not_queued", exc_info=True)


def _membership_add(
    *, tenant: Tenant, email: str, role: str, full_name: str, password: str | None,
    invited_by: User | None, direct: bool = False,
) -> tuple[TenantMembership, str | None]:
    """Add a membership. `direct` (operator console, demo seed, a sign-up that sets the
    admin's password) makes it active at once. Otherwise it stays inactive behind an
    invitation that the person accepts: a new account by setting a password, an existing
    account by signing in. Either way the inviter learns nothing about the account."""
    user = User.objects.filter(email=email).first()
    if user is None:
        user = User.objects.create_user(email=email, password=password if direct else None, full_name=full_name)
    active = direct and user.has_usable_password()
    membership = TenantMembership.objects.create(
        user=user, tenant=tenant, role=role, invited_by=invited_by, display_name=full_name, is_active=active,
    )
    raw_token: str | None = None
    if not active:
        raw_token = secrets.token_urlsafe(32)
        Invitation.objects.create(
            membership=membership, digest=Invitation.digest_of(raw_token),
            expires=timezone.now() + INVITATION_LIFETIME,
        )
    return membership, raw_token


def _email_member_on_commit(
    *, membership: TenantMembership, compose: Callable[[], tuple[str, str]], failure_event: str
) -> None:
    """Send one email to a member, in their language, once the transaction commits.
    A mail failure never undoes the committed change; the email can be sent again."""
    tenant = membership.tenant
    language = membership.user.preferred_language or tenant.default_language
    recipient = membership.user.email

    def send() -> None:
        with override(language):
            subject, body = compose()
        try:
            send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [recipient])
        except Exception:
            log.warning(failure_event, tenant=tenant.slug, exc_info=True)

    transaction.on_commit(send)


def _send_invitation_on_commit(
    *, membership: TenantMembership, raw_token: str, accept_url_base: str | None
) -> None:
    tenant = membership.tenant
    link = f"{(accept_url_base or tenant_url(tenant.slug)).rstrip('/')}/invite/{raw_token}/"

    def compose() -> tuple[str, str]:
        subject = _("You are invited to %(org)s on Suifang") % {"org": tenant.name}
        body = _(
            "You have been invited to join %(org)s on Suifang as %(role)s.\n\n"
            "Accept here (the link is valid for 7 days). If you already use Suifang, you will "
            "sign in with your existing password; otherwise you will choose one:\n%(link)s\n"
        ) % {"org": tenant.name, "role": membership.get_role_display(), "link": link}
        return subject, body

    _email_member_on_commit(membership=membership, compose=compose, failure_event="invitation.email_failed")


def _validate_member_fields(*, email: str, role: str, full_name: str) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    try:
        validate_email(email)
    except ValidationError:
        errors["email"] = [_("Enter a valid email address.")]
    if role not in Role.values:
        errors["role"] = [_("Choose one of: %(choices)s.") % {"choices": ", ".join(Role.values)}]
    if len(full_name) > 150:
        errors["full_name"] = [_("The name may have at most 150 characters.")]
    return errors


def _refuse_existing_member(*, tenant: Tenant, email: str) -> None:
    if TenantMembership.objects.filter(tenant=tenant, user__email=email).exists():
        raise Conflict(
            error_codes.ALREADY_MEMBER, _("This person is already a member."),
            fields={"email": [_("%(email)s is already a member of this organisation.") % {"email": email}]},
        )


def member_invite(
    *, tenant: Tenant, email: str, role: str, invited_by: User, full_name: str = "",
    accept_url_base: str | None = None,
) -> TenantMembership:
    email = (email or "").strip().lower()
    errors = _validate_member_fields(email=email, role=role, full_name=full_name)
    if errors:
        raise ValidationFailed(errors)
    _refuse_existing_member(tenant=tenant, email=email)
    try:
        with transaction.atomic():
            membership, raw_token = _membership_add(
                tenant=tenant, email=email, role=role, full_name=full_name, password=None,
                invited_by=invited_by,
            )
            assert raw_token is not None  # an invited membership is always pending
            _send_invitation_on_commit(membership=membership, raw_token=raw_token, accept_url_base=accept_url_base)
    except IntegrityError as exc:
        raise Conflict(error_codes.ALREADY_MEMBER, _("This person is already a member."),
                       fields={"email": [_("This person is already a member.")]}) from exc
    log.info("member.invited", tenant=tenant.slug, role=role, membership_id=membership.pk)
    return membership


def member_update(
    *, membership: TenantMembership, by: User, role: str | None = None, is_active: bool | None = None
) -> TenantMembership:
    """Change a member's role or (de)activate them. The last active tenant_admin cannot
    be demoted or deactivated: the tenant would have no one to manage it."""
    if role is not None and role not in Role.values:
        raise ValidationFailed({"role": [_("Choose one of: %(choices)s.") % {"choices": ", ".join(Role.values)}]})
    with transaction.atomic():
        # Serialise every membership change of one tenant on its row: two admins demoting
        # each other at once must not both see "another admin is left".
        Tenant.objects.select_for_update().filter(pk=membership.tenant_id).first()
        locked = TenantMembership.objects.select_for_update().get(pk=membership.pk)
        losing_admin = locked.role == Role.TENANT_ADMIN and locked.is_active and (
            (role is not None and role != Role.TENANT_ADMIN) or is_active is False
        )
        if losing_admin:
            admins = TenantMembership.objects.filter(tenant_id=locked.tenant_id, role=Role.TENANT_ADMIN, is_active=True)
            if admins.count() <= 1:
                raise Conflict(
                    error_codes.LAST_ADMIN,
                    _("An organisation needs at least one active sponsor (tenant admin)."),
                    fields={"role": [_("This is the last active tenant admin.")]},
                )
        if is_active and not locked.is_active and Invitation.objects.filter(
                membership=locked, accepted__isnull=True).exists():
            raise Conflict(error_codes.INVITATION_PENDING,
                           _("This person has not accepted the invitation yet."),
                           fields={"is_active": [_("Only the invited person can activate this membership.")]})
        if role is not None:
            locked.role = role
        if is_active is not None:
            locked.is_active = is_active
        locked.save(update_fields=["role", "is_active"])
    log.info("member.updated", tenant=locked.tenant.slug, membership_id=locked.pk, role=locked.role,
             active=locked.is_active, by_user_id=by.pk)
    return locked


def invitation_resend(*, membership: TenantMembership, accept_url_base: str | None = None) -> None:
    """Issue a fresh link (the old one stops working) and email it again."""
    invitation = Invitation.objects.filter(membership=membership, accepted__isnull=True).first()
    if invitation is None:
        raise Conflict(error_codes.INVITATION_INVALID,
                       _("This member has no pending invitation; they can already sign in."))
    raw_token = secrets.token_urlsafe(32)
    with transaction.atomic():
        invitation.digest = Invitation.digest_of(raw_token)
        invitation.expires = timezone.now() + INVITATION_LIFETIME
        invitation.save(update_fields=["digest", "expires"])
        _send_invitation_on_commit(membership=membership, raw_token=raw_token, accept_url_base=accept_url_base)
    log.info("invitation.resent", tenant=membership.tenant.slug, membership_id=membership.pk)


def invitation_pending(*, raw_token: str, tenant: Tenant) -> Invitation | None:
    """The open invitation behind a link, if it is valid on this tenant's host."""
    invitation = (
        Invitation.objects.select_related("membership__user", "membership__tenant")
        .filter(digest=Invitation.digest_of(raw_token or ""), accepted__isnull=True,
                membership__tenant=tenant)
        .first()
    )
    if invitation is None or invitation.expires < timezone.now():
        return None
    return invitation


def invitation_accept(
    *, raw_token: str, tenant: Tenant, password: str, password_again: str | None = None, full_name: str = "",
) -> TenantMembership:
    """Accept an invitation on its tenant's host. A new account chooses its password
    (`password` and `password_again`); an existing account proves itself with its
    current password, which is never changed here."""
    invitation = invitation_pending(raw_token=raw_token, tenant=tenant)
    if invitation is None:
        raise NotFound(error_codes.INVITATION_INVALID,
                       _("This invitation link is invalid or has expired. Ask your administrator "
                         "to invite you again."))
    user = invitation.membership.user
    if len(full_name) > 150:
        raise ValidationFailed({"full_name": [_("The name may have at most 150 characters.")]})
    existing_account = user.has_usable_password()
    if existing_account:
        if not user.check_password(password):
            raise ValidationFailed({"password": [_("This is not the password of %(email)s.") % {"email": user.email}]})
    else:
        if password_again is not None and password != password_again:
            raise ValidationFailed({"password_again": [_("The two passwords differ.")]})
        try:
            validate_password(password, user)
        except ValidationError as exc:
            raise ValidationFailed({"password": list(exc.messages)}) from exc
    with transaction.atomic():
        locked = Invitation.objects.select_for_update().get(pk=invitation.pk)
        if locked.accepted is not None:
            raise NotFound(error_codes.INVITATION_INVALID, _("This invitation has already been accepted."))
        if not existing_account:
            user.set_password(password)
            if full_name:
                user.full_name = full_name
            user.save(update_fields=["password", "full_name"])
        membership = invitation.membership
        membership.is_active = True
        if full_name:
            membership.display_name = full_name
        membership.save(update_fields=["is_active", "display_name"])
        locked.accepted = timezone.now()
        locked.save(update_fields=["accepted"])
    log.info("invitation.accepted", tenant=tenant.slug, membership_id=membership.pk)
    return membership


def token_issue(*, user: User, tenant: Tenant, label: str = "") -> tuple[ApiToken, str]:
    """Issue an API token valid only on `tenant`'s host. The raw key is returned once."""
    if len(label) > 80:
        raise ValidationFailed({"name": [_("The name may have at most 80 characters.")]})
    raw = ApiToken.new_key()
    token = ApiToken.objects.create(user=user, tenant=tenant, digest=ApiToken.digest_of(raw), label=label)
    return token, raw


def token_revoke(*, token: ApiToken) -> None:
    token.delete()


def tenant_require_live(*, tenant: Tenant) -> None:
    if tenant.status == TenantStatus.SUSPENDED:
        raise DomainError("tenant_suspended", _("This organisation's account is suspended."),
                          status_code=403)


def member_add(
    *, tenant: Tenant, email: str, role: str, password: str, full_name: str = "",
) -> TenantMembership:
    """Add a member with a password set now (operator console, demo seed). An existing
    account keeps its password and simply gains the membership."""
    email = (email or "").strip().lower()
    errors = _validate_member_fields(email=email, role=role, full_name=full_name)
    try:
        validate_password(password, User(email=email))
    except ValidationError as exc:
        errors["password"] = list(exc.messages)
    if errors:
        raise ValidationFailed(errors)
    _refuse_existing_member(tenant=tenant, email=email)
    with transaction.atomic():
        membership, _raw = _membership_add(tenant=tenant, email=email, role=role, full_name=full_name,
                                           password=password, invited_by=None, direct=True)
    return membership


def public_tenant_ensure() -> Tenant:
    """Make sure the public site answers on the bare BASE_DOMAIN (deploy step)."""
    tenant, _created = Tenant.objects.get_or_create(
        schema_name="public",
        defaults={"name": "Suifang", "slug": "public", "kind": TenantKind.OTHER,
                  "status": TenantStatus.ACTIVE, "time_zone": "UTC"},
    )
    Domain.objects.get_or_create(domain=settings.BASE_DOMAIN,
                                 defaults={"tenant": tenant, "is_primary": True})
    return tenant
