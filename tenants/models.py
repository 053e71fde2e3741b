"""Public-schema models: tenants and their domains, global users, memberships, API
tokens, invitations and the pool of spare tenant schemas."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any, ClassVar

from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django_tenants.models import DomainMixin, TenantMixin

from tenants.roles import Role


class TenantKind(models.TextChoices):
    HOSPITAL = "hospital", _("Hospital")
    CDC = "cdc", _("Disease-control centre")
    DEVICE_COMPANY = "device_company", _("Medical-device company")
    OTHER = "other", _("Other")


class TenantStatus(models.TextChoices):
    TRIAL = "trial", _("Trial")
    ACTIVE = "active", _("Active")
    PAST_DUE = "past_due", _("Past due")
    SUSPENDED = "suspended", _("Suspended")


class Language(models.TextChoices):
    ZH_HANS = "zh-hans", "简体中文"
    EN = "en", "English"


class Tenant(TenantMixin):
    name: models.CharField[str, str] = models.CharField(_("name"), max_length=120)
    slug: models.SlugField[str, str] = models.SlugField(_("slug"), max_length=40, unique=True)
    kind: models.CharField[str, str] = models.CharField(_("kind"), max_length=20, choices=TenantKind.choices)
    status: models.CharField[str, str] = models.CharField(
        _("status"), max_length=20, choices=TenantStatus.choices, default=TenantStatus.TRIAL
    )
    time_zone: models.CharField[str, str] = models.CharField(_("time zone"), max_length=64, default="Asia/Shanghai")
    default_language: models.CharField[str, str] = models.CharField(
        _("default language"), max_length=10, choices=Language.choices, default=Language.ZH_HANS
    )
    created: models.DateTimeField[Any, Any] = models.DateTimeField(_("created"), default=timezone.now, editable=False)

    # Schemas come from the spare pool (tenants/schema_pool.py), never from
    # django-tenants' create_schema on save().
    auto_create_schema = False
    auto_drop_schema = False

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.slug})"


class Domain(DomainMixin):
    pass


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def _create(self, email: str, password: str | None, **extra: Any) -> User:
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        if password:
            user.set_password(password)
        else:
            user.set_unusable_password()
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create(email, password, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra.update(is_staff=True, is_superuser=True)
        return self._create(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """A global account. What it may do in a tenant comes from its TenantMembership.
    `is_staff` marks a platform operator (public-schema console)."""

    email = models.EmailField(_("email"), unique=True)
    full_name = models.CharField(_("full name"), max_length=150, blank=True)
    preferred_language = models.CharField(
        _("preferred language"), max_length=10, choices=Language.choices, blank=True
    )
    is_active = models.BooleanField(_("active"), default=True)
    is_staff = models.BooleanField(_("platform operator"), default=False)
    date_joined = models.DateTimeField(_("date joined"), default=timezone.now)

    objects: ClassVar[UserManager] = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    class Meta:
        ordering = ["email"]

    def __str__(self) -> str:
        return self.email


class TenantMembership(models.Model):
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(_("role"), max_length=20, choices=Role.choices)
    # The name this tenant knows the member by. The global User.full_name is never shown
    # to other tenants: it may have been written by another organisation.
    display_name = models.CharField(_("display name"), max_length=150, blank=True)
    # False while an invitation is pending, or after deactivation.
    is_active = models.BooleanField(_("active"), default=True)
    created = models.DateTimeField(default=timezone.now, editable=False)
    invited_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "tenant"], name="membership_user_tenant_uniq")
        ]
        indexes = [models.Index(fields=["tenant", "role"], name="membership_tenant_role_idx")]
        ordering = ["tenant", "user__email"]

    def __str__(self) -> str:
        return f"{self.user} @ {self.tenant.slug}: {self.role}"


def _token_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiToken(models.Model):
    """A REST API token. Only its SHA-256 is stored; it works only on its tenant's host."""

    PREFIX = "sf_"

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_tokens")
    digest = models.CharField(max_length=64, unique=True)
    label = models.CharField(max_length=80, blank=True)
    created = models.DateTimeField(default=timezone.now, editable=False)
    last_used = models.DateTimeField(null=True, blank=True)
    expires = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"token {self.pk} for {self.user} @ {self.tenant.slug}"

    @classmethod
    def new_key(cls) -> str:
        return cls.PREFIX + secrets.token_urlsafe(32)

    @staticmethod
    def digest_of(raw: str) -> str:
        return _token_digest(raw)


class Invitation(models.Model):
    """An invitation to join a tenant. The raw token goes out by email only."""

    membership = models.OneToOneField(
        TenantMembership, on_delete=models.CASCADE, related_name="invitation"
    )
    digest = models.CharField(max_length=64, unique=True)
    created = models.DateTimeField(default=timezone.now, editable=False)
    expires = models.DateTimeField()
    accepted = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"invitation {self.pk}"

    @staticmethod
    def digest_of(raw: str) -> str:
        return _token_digest(raw)


class SpareSchema(models.Model):
    """A fully migrated, unused tenant schema waiting to be renamed to a new tenant's.

    `fingerprint` names the migration state it was built at; only spares that match
    the running code's state are handed out."""

    schema_name = models.CharField(max_length=63, unique=True)
    fingerprint = models.CharField(max_length=64, db_index=True)
    created = models.DateTimeField(default=timezone.now, editable=False)

    def __str__(self) -> str:
        return self.schema_name


class SchemaTemplate(models.Model):
    """The SQL that builds a tenant schema at one migration state, captured once from a
    real `migrate` and replayed into new spare schemas (see tenants/schema_pool.py)."""

    fingerprint = models.CharField(max_length=64, unique=True)
    statements = models.JSONField()
    created = models.DateTimeField(default=timezone.now, editable=False)

    def __str__(self) -> str:
        return f"schema template {self.fingerprint[:12]}"
