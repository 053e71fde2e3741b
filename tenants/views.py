"""Web pages of the tenants app (thin: forms -> services/selectors -> templates)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import authenticate, login, logout
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from config.errors import DomainError
from tenants import selectors, services
from tenants.forms import AcceptInvitationForm, FindOrganisationForm, InviteForm, LoginForm, add_domain_errors
from tenants.roles import Role


def login_view(request: HttpRequest, *, consortium: bool = False) -> HttpResponse:
    """Sign-in. `consortium` (set by the public host's /consortia/login/ route): for
    consortium members, who belong to no organisation there; the page and its error say so."""
    next_url = request.POST.get("next") or request.GET.get("next") or ""
    if not url_has_allowed_host_and_scheme(next_url, allowed_hosts={request.get_host()}):
        next_url = ""
    form = LoginForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            user = authenticate(request, email=form.cleaned_data["email"],
                                password=form.cleaned_data["password"])
            if user is not None:
                login(request, user)
                # A consortium member counts as signed in on the consortium pages only:
                # sent anywhere else ("/") they would land looking signed out.
                if consortium and not user.is_staff and not next_url.startswith(
                        tuple(settings.PUBLIC_MEMBER_PATH_PREFIXES)):
                    next_url = reverse("consortia")
                return HttpResponseRedirect(next_url or settings.LOGIN_REDIRECT_URL_PATH)
            form.add_error("password", _("Email or password is incorrect.") if consortium else
                           _("Email or password is incorrect, or you have no access to this organisation."))
        status = 400
    return render(request, "tenants/login.html", {"form": form, "next": next_url, "consortium": consortium},
                  status=status)


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    messages.info(request, _("You have signed out."))
    return redirect("login")


def home(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return redirect(f"{settings.LOGIN_URL_PATH}?next=/")
    others = selectors.memberships_of_user(user=request.user).exclude(tenant=request.tenant)  # type: ignore[attr-defined]
    # Each organisation lives on its own host; the link leads to its sign-in.
    other_memberships = [(m, services.tenant_url(m.tenant.slug) + "/") for m in others]
    return render(request, "tenants/home.html", {"other_memberships": other_memberships})


@login_required
def members_view(request: HttpRequest) -> HttpResponse:
    membership = request.membership  # type: ignore[attr-defined]
    if membership is None or membership.role != Role.TENANT_ADMIN:
        raise PermissionDenied
    form = InviteForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                services.member_invite(tenant=request.tenant, invited_by=request.user,  # type: ignore[attr-defined,arg-type]
                                       accept_url_base=request.build_absolute_uri("/"), **form.cleaned_data)
            except DomainError as exc:
                add_domain_errors(form, exc)
            else:
                messages.success(request, _("Invitation sent to %(email)s.") % {"email": form.cleaned_data["email"]})
                return redirect("members")
        status = 400
    role = request.GET.get("role") or None
    if role not in Role.values:
        role = None
    search = (request.GET.get("q") or "")[:100]
    members = selectors.members_of_tenant(tenant=request.tenant, role=role, search=search or None)  # type: ignore[attr-defined]
    page = Paginator(members, 25).get_page(request.GET.get("page"))
    return render(request, "tenants/members.html",
                  {"form": form, "page": page, "roles": Role.choices, "role": role, "q": search},
                  status=status)


@login_required
@require_POST
def member_resend_invitation_view(request: HttpRequest, membership_id: int) -> HttpResponse:
    membership = request.membership  # type: ignore[attr-defined]
    if membership is None or membership.role != Role.TENANT_ADMIN:
        raise PermissionDenied
    target = selectors.member_get(tenant=request.tenant, membership_id=membership_id)  # type: ignore[attr-defined]
    if target is None:
        raise Http404
    try:
        services.invitation_resend(membership=target, accept_url_base=request.build_absolute_uri("/"))
    except DomainError as exc:
        messages.error(request, str(exc.message))
    else:
        messages.success(request, _("A new invitation link was sent to %(email)s.") % {"email": target.user.email})
    return redirect("members")


INVITATION_SESSION_KEY = "suifang_invitation"


def invitation_link_view(request: HttpRequest, token: str) -> HttpResponse:
    """The emailed link. The token moves into the session at once and the browser goes
    on to a URL without it, so it never appears in logs, Referer headers or history."""
    request.session[INVITATION_SESSION_KEY] = token
    return redirect("invitation-accept")


def invitation_accept_view(request: HttpRequest) -> HttpResponse:
    token = request.session.get(INVITATION_SESSION_KEY, "")
    invitation = services.invitation_pending(raw_token=token, tenant=request.tenant)  # type: ignore[attr-defined]
    if invitation is None:
        return render(request, "tenants/invitation_accept.html", {"invalid": True}, status=404)
    existing_account = invitation.membership.user.has_usable_password()
    form = AcceptInvitationForm(request.POST or None, existing_account=existing_account)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                services.invitation_accept(
                    raw_token=token, tenant=request.tenant,  # type: ignore[attr-defined]
                    password=form.cleaned_data["password"], full_name=form.cleaned_data["full_name"],
                    password_again=None if existing_account else form.cleaned_data["password_again"],
                )
            except DomainError as exc:
                add_domain_errors(form, exc)
            else:
                request.session.pop(INVITATION_SESSION_KEY, None)
                messages.success(request, _("You have joined %(org)s. Sign in to continue.")
                                 % {"org": invitation.membership.tenant.name})
                return redirect("login")
        status = 400
    return render(request, "tenants/invitation_accept.html",
                  {"form": form, "existing_account": existing_account, "email": invitation.membership.user.email,
                   "organisation": invitation.membership.tenant.name}, status=status)


def public_home(request: HttpRequest) -> HttpResponse:
    # Bound only when the finder was submitted: links carry other parameters
    # (utm_source, lang...) that are no search.
    form = FindOrganisationForm(request.GET if "slug" in request.GET else None)
    if form.is_bound and form.is_valid():
        return HttpResponseRedirect(services.tenant_url(form.cleaned_data["slug"].lower()) + "/login/")
    return render(request, "tenants/public_home.html", {"form": form},
                  status=400 if form.is_bound and form.errors else 200)
