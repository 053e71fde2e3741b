"""The operator console (public host only): tenants, domains, accounts, memberships."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.options import IS_POPUP_VAR
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from config.errors import DomainError
from config.validation import time_zone_problem
from tenants import services
from tenants.forms import add_domain_errors
from tenants.models import (
    ApiToken,
    Domain,
    Language,
    Tenant,
    TenantKind,
    TenantMembership,
    TenantStatus,
    User,
)
from tenants.roles import Role


class DomainInline(admin.TabularInline):
    model = Domain
    extra = 0


class TenantCreateForm(forms.Form):
    name = forms.CharField(label=_("Name"), max_length=120)
    slug = forms.CharField(label=_("Address (slug)"), max_length=40)
    kind = forms.ChoiceField(label=_("Kind"), choices=TenantKind.choices)
    status = forms.ChoiceField(label=_("Status"), choices=TenantStatus.choices, initial=TenantStatus.TRIAL)
    time_zone = forms.CharField(label=_("Time zone"), max_length=64, initial="Asia/Shanghai")
    default_language = forms.ChoiceField(label=_("Default language"), choices=Language.choices)
    admin_email = forms.EmailField(label=_("First admin's email"))
    admin_full_name = forms.CharField(label=_("First admin's name"), max_length=150, required=False)


class TenantChangeForm(forms.ModelForm):
    class Meta:
        model = Tenant
        fields = ["name", "kind", "status", "time_zone", "default_language"]

    def clean_time_zone(self) -> str:
        value = str(self.cleaned_data["time_zone"])
        if problem := time_zone_problem(value):
            raise forms.ValidationError(problem)
        return value


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    form = TenantChangeForm
    list_display = ["name", "slug", "kind", "status", "time_zone", "created"]
    list_filter = ["kind", "status"]
    search_fields = ["name", "slug"]
    readonly_fields = ["schema_name", "slug", "created", "members_link"]
    fields = ["name", "slug", "schema_name", "kind", "status", "time_zone", "default_language", "created",
              "members_link"]
    # No membership inline: inlines never page (a hospital has thousands of members) and
    # would save memberships past tenants.services. The paged, filtered list does both.
    inlines = [DomainInline]
    list_per_page = 50

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).exclude(schema_name="public")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting a tenant drops clinical data; it needs its own audited procedure.
        return False

    @admin.display(description=_("Members"))
    def members_link(self, obj: Tenant) -> str:
        if obj.pk is None:
            return "-"
        url = reverse("admin:tenants_tenantmembership_changelist") + f"?tenant__id__exact={obj.pk}"
        return format_html('<a href="{}">{}</a>', url,
                           gettext("Memberships (%(n)d): list and change them") % {"n": obj.memberships.count()})

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: Any = None) -> HttpResponse:
        """Creation goes through tenants.services.tenant_create (schema, domain, admin
        invitation in one transaction), never through a bare ModelForm save."""
        # Replacing changeform_view skips its permission check: provisioning is not
        # for every staff account.
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = TenantCreateForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                tenant = services.tenant_create(**form.cleaned_data)
            except DomainError as exc:
                add_domain_errors(form, exc)
            else:
                messages.success(request, _("Created %(name)s; the admin was emailed an invitation.")
                                 % {"name": tenant.name})
                return HttpResponseRedirect(reverse("admin:tenants_tenant_change", args=[tenant.pk]))
        context = {**self.admin_site.each_context(request), "form": form, "opts": self.model._meta,
                   "title": _("Create a tenant")}
        return TemplateResponse(request, "admin/tenants/tenant_create.html", context,
                                status=400 if form.errors else 200)


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    ordering = ["email"]
    list_display = ["email", "full_name", "is_staff", "is_active", "date_joined"]
    list_filter = ["is_staff", "is_active"]
    search_fields = ["email", "full_name"]
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        (_("Profile"), {"fields": ("full_name", "preferred_language")}),
        (_("Access"), {"fields": ("is_active", "is_staff", "is_superuser", "groups")}),
        (_("Dates"), {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)
    readonly_fields = ["last_login", "date_joined"]
    filter_horizontal = ["groups"]


@admin.register(TenantMembership)
class MembershipAdmin(admin.ModelAdmin):
    """Memberships are read here and changed only through the actions, which call
    tenants.services.member_update: its rules (a tenant keeps an active admin, only the
    invited person activates a pending membership) hold in the console too. Members are
    added by invitation from the tenant's own members page, never by a bare row."""

    list_display = ["user", "tenant", "role", "is_active", "created"]
    list_filter = ["role", "is_active", "tenant"]
    list_select_related = ["user", "tenant"]
    search_fields = ["user__email", "tenant__slug"]
    raw_id_fields = ["user", "tenant", "invited_by"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The change page is view-only; see has_manage_permission for the actions.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting could remove a tenant's last admin; deactivate instead.
        return False

    def has_manage_permission(self, request: HttpRequest) -> bool:
        """Who may run the actions: those with Django's change permission on memberships."""
        return super().has_change_permission(request)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions: dict[str, Any] = dict(super().get_actions(request))
        if IS_POPUP_VAR in request.GET or not self.has_manage_permission(request):
            return actions
        actions["deactivate"] = (MembershipAdmin._deactivate, "deactivate", gettext("Deactivate selected memberships"))
        actions["activate"] = (MembershipAdmin._activate, "activate", gettext("Activate selected memberships"))
        for value, label in Role.choices:
            actions[f"role_{value}"] = (_set_role_action(value), f"role_{value}",
                                        gettext("Change role to %(role)s") % {"role": label})
        return actions

    def _deactivate(self, request: HttpRequest, queryset: QuerySet[TenantMembership]) -> None:
        self._update(request, queryset, is_active=False)

    def _activate(self, request: HttpRequest, queryset: QuerySet[TenantMembership]) -> None:
        self._update(request, queryset, is_active=True)

    def _update(self, request: HttpRequest, queryset: QuerySet[TenantMembership], **change: Any) -> None:
        """One service call per membership, so one refusal does not undo the others."""
        changed = 0
        for membership in queryset.select_related("user", "tenant").order_by("pk"):
            try:
                services.member_update(membership=membership, by=request.user, **change)  # type: ignore[arg-type]
            except DomainError as exc:
                self.message_user(request, gettext("%(email)s at %(tenant)s was not changed: %(problem)s") % {
                    "email": membership.user.email, "tenant": membership.tenant.slug, "problem": exc.message,
                }, messages.ERROR)
            else:
                changed += 1
        if changed:
            self.message_user(request, gettext("Memberships changed: %(n)d.") % {"n": changed}, messages.SUCCESS)


def _set_role_action(role: str) -> Any:
    def action(modeladmin: MembershipAdmin, request: HttpRequest, queryset: QuerySet[TenantMembership]) -> None:
        modeladmin._update(request, queryset, role=role)

    return action


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens can be inspected and revoked, never read: only digests are stored."""

    list_display = ["user", "tenant", "label", "created", "last_used", "expires"]
    search_fields = ["user__email", "tenant__slug", "label"]
    readonly_fields = ["user", "tenant", "digest", "label", "created", "last_used"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
