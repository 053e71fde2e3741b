"""The consortium web pages, server side. On a tenant host, the administrator's pages
(accept, withdraw): other roles get 403 and change nothing, the form keeps what was
chosen with messages next to the fields, withdrawing asks first, and one tenant's
administrator never sees or withdraws another tenant's agreement. On the public host, the
members' page: participating organisations (withdrawn ones marked), the pooled runs paged,
the start button for coordinators only, and a 403 page with a way back for everyone
else."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from lxml import html as lxml_html

from exports.pooling.models import Consortium, ConsortiumMember, DataSharingAgreement, PooledRun
from studies import services as study_services
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

NOT_ADMINS = ("data_manager", "statistician", "coordinator", "investigator", "monitor", "viewer")
STATUS_IN_LIST = "//tr[@data-slug='cardio']/td[contains(@class, 'agreement-status')]"
ELEMENTS = [{"form": "VITALS", "items": ["weight", "height", "sex"], "safe_text": []},
            {"form": "LAB", "items": ["hba1c"]}]


def _tree(response: Any) -> Any:
    return lxml_html.fromstring(response.content.decode())


def _text(tree: Any, xpath: str) -> list[str]:
    return [" ".join(node.text_content().split()) for node in tree.xpath(xpath)]


@pytest.fixture
def pool(world, in_tenant, email_of):  # type: ignore[no-untyped-def]
    """Study CPS in alpha and beta; consortium "cardio" where alpha takes part (an
    earlier agreement withdrawn) and beta has withdrawn."""
    for tenant in (world.alpha, world.beta):
        in_tenant(tenant)
        study_services.study_create(code="CPS", title="Cardio pooling study", study_type="registry",
                                    target_enrolment=9)
    connection.set_schema_to_public()
    consortium = Consortium.objects.create(slug="cardio", name="Cardio registry", coordinating_organisation="Heart CDC",
                                           protocol="Adults after a first infarction.\nFollow-up at 12 months.",
                                           common_data_elements=ELEMENTS, k=3)
    alpha_admin = world.users[email_of("tenant_admin", "alpha")]
    beta_admin = world.users[email_of("tenant_admin", "beta")]
    long_ago = timezone.now() - dt.timedelta(days=60)
    DataSharingAgreement.objects.create(consortium=consortium, tenant=world.alpha, study_code="CPS",
                                        fields=["VITALS.sex"], accepted_by=alpha_admin, accepted_at=long_ago,
                                        status="withdrawn", withdrawn_at=long_ago, withdrawn_by=alpha_admin)
    alpha = DataSharingAgreement.objects.create(consortium=consortium, tenant=world.alpha, study_code="CPS",
                                                fields=["VITALS.height", "VITALS.weight"], accepted_by=alpha_admin)
    beta = DataSharingAgreement.objects.create(
        consortium=consortium, tenant=world.beta, study_code="CPS", fields=["LAB.hba1c"], accepted_by=beta_admin,
        accepted_at=long_ago, status="withdrawn", withdrawn_at=long_ago + dt.timedelta(days=1),
        withdrawn_by=beta_admin)
    return {"consortium": consortium, "alpha": alpha, "beta": beta}


@pytest.fixture
def page_as(web, world, email_of):  # type: ignore[no-untyped-def]
    """page_as(role, tenant) -> a client signed in on the tenant's host, in English."""

    def make(role: str, tenant: Any) -> Client:
        client = web(tenant)
        client.cookies["django_language"] = "en"
        assert client.post("/login/", {"email": email_of(role, tenant.slug), "password": PASSWORD}).status_code == 302
        return client

    return make


def _states() -> list[tuple[str, str, str, Any]]:
    return list(DataSharingAgreement.objects.order_by("pk").values_list("tenant__slug", "status", "study_code",
                                                                       "withdrawn_at"))


# --- the tenant's pages ---------------------------------------------------------------------

def test_only_the_tenant_admin_sees_or_changes_the_agreement(pool, page_as, world, web):
    before = _states()
    for role in NOT_ADMINS:
        client = page_as(role, world.alpha)
        assert client.get("/consortia/").status_code == 403, role
        assert client.get("/consortia/cardio/").status_code == 403, role
        assert client.post("/consortia/cardio/withdraw/").status_code == 403, role
        assert client.get("/consortia/cardio/withdraw/").status_code == 403, role
        beta = page_as(role, world.beta)
        assert beta.post("/consortia/cardio/", {"study": "CPS", "items": ["VITALS.weight"]}).status_code == 403, role
        assert "/consortia/" not in beta.get("/").content.decode(), role  # no link in the navigation
    assert _states() == before
    anonymous = web(world.alpha)
    response = anonymous.get("/consortia/cardio/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert anonymous.post("/consortia/cardio/withdraw/").status_code == 302
    assert _states() == before
    # The administrator has the link in the navigation.
    assert 'href="/consortia/"' in page_as("tenant_admin", world.alpha).get("/").content.decode()


def test_an_admin_never_sees_or_withdraws_another_organisations_agreement(pool, page_as, world):
    before = _states()
    beta = page_as("tenant_admin", world.beta)
    listed = _tree(beta.get("/consortia/"))
    assert _text(listed, STATUS_IN_LIST) == ["Withdrawn"]
    page = _tree(beta.get("/consortia/cardio/"))
    # Only beta's own (withdrawn) agreement; alpha's active one is nowhere on beta's page.
    assert [row.xpath("td")[2].text_content() for row in page.xpath("//*[@id='agreement-history']//tbody//tr")] == [
        "LAB.hba1c"]
    assert page.xpath("//*[@id='agreement-status']")[0].text_content() == "Withdrawn"
    assert page.xpath("//*[@id='accept-form']") and not page.xpath("//*[@id='withdraw']")
    # Beta's administrator withdrawing: beta has nothing active, alpha is untouched.
    refused = beta.post("/consortia/cardio/withdraw/", follow=True)
    assert "This organisation does not take part in this consortium." in refused.content.decode()
    assert _states() == before
    # Alpha's administrator's session on beta's host is nobody there.
    alpha = page_as("tenant_admin", world.alpha)
    for response in (alpha.get("/consortia/cardio/", HTTP_HOST="beta.localhost"),
                     alpha.post("/consortia/cardio/withdraw/", HTTP_HOST="beta.localhost")):
        assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert _states() == before
    # On alpha's host, alpha's administrator withdraws alpha's agreement and nothing else.
    assert alpha.post("/consortia/cardio/withdraw/").status_code == 302
    after = _states()
    assert [s[:2] for s in after] == [("alpha", "withdrawn"), ("alpha", "withdrawn"), ("beta", "withdrawn")]
    assert after[2] == before[2] and after[0] == before[0]
    pool["alpha"].refresh_from_db()
    assert pool["alpha"].withdrawn_by_id == world.users["tenant_admin@alpha.example.org"].pk


def test_the_accept_form_keeps_what_was_chosen_and_names_the_field_in_error(pool, page_as, world):
    beta = page_as("tenant_admin", world.beta)
    url = "/consortia/cardio/"

    def checked(tree: Any) -> list[str]:
        return [box.get("value") for box in tree.xpath("//*[@id='items-choices']//input[@checked]")]

    # No field chosen: the message is next to the fields, the study stays chosen.
    response = beta.post(url, {"study": "CPS"})
    assert response.status_code == 400
    tree = _tree(response)
    assert _text(tree, "//*[@id='items-error']") == ["Choose at least one field to share."]
    assert tree.xpath("//*[@id='id_study']//option[@selected]")[0].get("value") == "CPS"
    assert "has-error" in tree.xpath("//*[@id='items-choices']")[0].get("class")
    # No study: its message, and the ticked fields stay ticked.
    tree = _tree(beta.post(url, {"items": ["VITALS.weight", "LAB.hba1c"]}))
    assert _text(tree, "//*[@id='id_study-error']") == ["Choose the study that contributes."]
    assert checked(tree) == ["VITALS.weight", "LAB.hba1c"] and not tree.xpath("//*[@id='items-error']")
    # A study this organisation does not have, a field that is not a common data element.
    for body, where in (({"study": "NOPE", "items": ["VITALS.weight"]}, "//*[@id='id_study-error']"),
                        ({"study": "CPS", "items": ["VITALS.email"]}, "//*[@id='items-error']")):
        response = beta.post(url, body)
        assert response.status_code == 400 and _text(_tree(response), where), body
    assert DataSharingAgreement.objects.filter(tenant=world.beta).count() == 1  # nothing saved
    # Accepted: listed as active with its fields, and the form gives way to the withdraw link.
    accepted = beta.post(url, {"study": "CPS", "items": ["VITALS.weight", "LAB.hba1c"]})
    assert accepted.status_code == 302 and accepted["Location"] == url
    page = beta.get(url)
    tree = _tree(page)
    assert "Your organisation now takes part in Cardio registry." in page.content.decode()
    assert _text(tree, "//*[@id='agreement-status']") == ["Active"]
    assert _text(tree, "//*[@id='agreement-study']") == ["CPS"]
    assert [c.text_content() for c in tree.xpath("//*[@id='agreement-fields']//code")] == ["LAB.hba1c", "VITALS.weight"]
    assert not tree.xpath("//*[@id='accept-form']") and tree.xpath("//*[@id='withdraw']")
    assert _text(_tree(beta.get("/consortia/")), STATUS_IN_LIST) == ["Active"]
    active = DataSharingAgreement.objects.get(tenant=world.beta, status="active")
    assert active.fields == ["LAB.hba1c", "VITALS.weight"] and active.study_code == "CPS"
    # A second acceptance (another tab): refused with a message, still one active agreement.
    again = beta.post(url, {"study": "CPS", "items": ["VITALS.height"]})
    assert again.status_code == 409
    assert "withdraw first" in again.content.decode()
    assert DataSharingAgreement.objects.filter(tenant=world.beta, status="active").count() == 1
    assert beta.get("/consortia/no-such-consortium/").status_code == 404


def test_withdrawing_asks_first_and_then_shows_the_agreement_as_withdrawn(pool, page_as, world):
    alpha = page_as("tenant_admin", world.alpha)
    confirm = alpha.get("/consortia/cardio/withdraw/")
    assert confirm.status_code == 200
    tree = _tree(confirm)
    assert tree.xpath("//*[@id='withdraw-form']//button[@type='submit']") and tree.xpath("//a[@id='cancel']")
    assert "study CPS" in confirm.content.decode()
    assert DataSharingAgreement.objects.get(pk=pool["alpha"].pk).status == "active"  # asking changed nothing
    done = alpha.post("/consortia/cardio/withdraw/", follow=True)
    tree = _tree(done)
    assert "Your organisation has withdrawn from Cardio registry." in done.content.decode()
    assert _text(tree, "//*[@id='agreement-status']") == ["Withdrawn"] and tree.xpath("//*[@id='accept-form']")
    badges = "//table[@id='agreement-history']/tbody/tr/td/span[contains(@class, 'badge')]"
    assert _text(tree, badges) == ["Withdrawn", "Withdrawn"]
    assert DataSharingAgreement.objects.get(pk=pool["alpha"].pk).status == "withdrawn"
    # Nothing left to withdraw: back to the page with a message, no confirmation offered.
    again = alpha.get("/consortia/cardio/withdraw/", follow=True)
    assert "This organisation does not take part in this consortium." in again.content.decode()
    assert again.redirect_chain[-1][0] == "/consortia/cardio/"


# --- the members' page on the public host ----------------------------------------------------

def _member(email: str, consortium: Consortium, role: str) -> Any:
    from tenants.models import User

    user = User.objects.create_user(email=email, password=PASSWORD)
    ConsortiumMember.objects.create(consortium=consortium, user=user, role=role)
    return user


def _public(email: str) -> Client:
    client = Client(HTTP_HOST="localhost")
    client.cookies["django_language"] = "en"
    signed_in = client.post("/consortia/login/", {"email": email, "password": PASSWORD, "next": "/consortia/"})
    assert signed_in.status_code == 302, signed_in.content
    return client


@pytest.fixture
def members(pool):  # type: ignore[no-untyped-def]
    consortium = pool["consortium"]
    other = Consortium.objects.create(slug="other", name="Other registry", coordinating_organisation="X")
    return {"lead": _member("lead@cardio.example.org", consortium, "coordinator"),
            "stats": _member("stats@cardio.example.org", consortium, "statistician"),
            "outsider": _member("stats@other.example.org", other, "statistician"),
            "other": other}


def _runs(consortium: Consortium, user: Any, count: int) -> list[PooledRun]:
    start = timezone.now() - dt.timedelta(days=count)
    return [PooledRun.objects.create(consortium=consortium, requested_by=user, status="failed", error="X",
                                     created=start + dt.timedelta(days=n)) for n in range(count)]


def test_members_see_participants_and_paged_runs_without_a_query_per_row(pool, members, world):
    consortium = pool["consortium"]
    client = _public("stats@cardio.example.org")
    listed = _tree(client.get("/consortia/"))
    assert [a.get("href") for a in listed.xpath("//*[@id='consortia']//a")] == ["/consortia/cardio/"]
    runs = _runs(consortium, members["lead"], 3)
    with CaptureQueriesContext(connection) as few:
        assert client.get("/consortia/cardio/").status_code == 200
    runs += _runs(consortium, members["lead"], 22)
    with CaptureQueriesContext(connection) as many:
        page = client.get("/consortia/cardio/")
    assert len(many.captured_queries) == len(few.captured_queries)
    tree = _tree(page)
    assert _text(tree, "//*[@id='coordinating-organisation']") == ["Heart CDC"]
    assert _text(tree, "//*[@id='your-role']") == ["Consortium statistician"]
    assert "Follow-up at 12 months." in _text(tree, "//*[@id='protocol']")[0]
    assert _text(tree, "//*[@id='common-data-elements']//li") == ["VITALS: weight height sex", "LAB: hba1c"]
    # Each organisation once, by its latest agreement: alpha active (its older one withdrawn), beta withdrawn.
    rows = {row.get("data-tenant"): " ".join(row.text_content().split())
            for row in tree.xpath("//*[@id='participants']//tr[@data-tenant]")}
    assert list(rows) == ["alpha", "beta"]
    assert "Active" in rows["alpha"] and "Withdrawn" in rows["beta"]
    assert rows["beta"].count(pool["beta"].withdrawn_at.strftime("%Y-%m-%d")) == 1
    # Runs: newest first, 20 a page.
    shown = [int(r.get("data-run")) for r in tree.xpath("//tr[@data-run]")]
    assert shown == [r.pk for r in sorted(runs, key=lambda r: (r.created, r.pk), reverse=True)][:20]
    assert not tree.xpath("//*[@id='start-run']")  # a statistician starts nothing
    second = _tree(client.get("/consortia/cardio/?page=2"))
    assert len(second.xpath("//tr[@data-run]")) == 25 - 20
    assert second.xpath("//nav[@class='pager']/a[@rel='prev']")
    assert not second.xpath("//nav[@class='pager']/a[@rel='next']")
    assert client.get("/consortia/cardio/?page=zzz").status_code == 200  # a bad page number: the first page


def test_only_coordinators_start_runs_and_non_members_get_a_403_page_with_a_way_back(pool, members, world,
                                                                                    settings):
    consortium = pool["consortium"]
    stats = _public("stats@cardio.example.org")
    refused = stats.post("/consortia/cardio/runs/")
    assert refused.status_code == 403 and not PooledRun.objects.exists()
    outsider = _public("stats@other.example.org")
    for url in ("/consortia/cardio/", "/consortia/no-such-one/"):  # the same answer: slugs cannot be probed
        response = outsider.get(url)
        assert response.status_code == 403
        assert [a.get("href") for a in _tree(response).xpath("//a[@id='back-to-list']")] == ["/consortia/"]
    assert outsider.post("/consortia/cardio/runs/").status_code == 403 and not PooledRun.objects.exists()
    assert [a.get("href") for a in _tree(outsider.get("/consortia/")).xpath("//*[@id='consortia']//a")] == [
        "/consortia/other/"]

    lead = _public("lead@cardio.example.org")
    started = lead.post("/consortia/cardio/runs/")
    assert started.status_code == 302 and started["Location"] == "/consortia/cardio/#runs"
    run = PooledRun.objects.get(consortium=consortium)
    assert run.status == "queued" and run.requested_by_id == members["lead"].pk
    page = lead.get("/consortia/cardio/")
    tree = _tree(page)
    assert f"Pooled run #{run.pk} queued." in page.content.decode()
    assert _text(tree, f"//tr[@data-run='{run.pk}']//span[contains(@class, 'run-status')]") == ["Queued"]
    # Without the pooling secret: a message, and no run that could only fail.
    settings.POOLING_SECRET = ""
    failed = lead.post("/consortia/cardio/runs/", follow=True)
    assert "Pooling is not configured" in failed.content.decode()
    assert PooledRun.objects.filter(consortium=consortium).count() == 1
    # Signing out ends the session.
    out = lead.post("/consortia/logout/", follow=True)
    assert "You have signed out." in out.content.decode()
    assert lead.get("/consortia/cardio/").status_code == 302


@pytest.mark.parametrize("slug", ["login", "logout"])
def test_a_consortium_cannot_take_the_name_of_the_sign_in_pages(slug):
    from django.core.exceptions import ValidationError
    from django.db import IntegrityError, transaction

    consortium = Consortium(slug=slug, name="Reserved", coordinating_organisation="Org")
    with pytest.raises(ValidationError) as refused:
        consortium.full_clean()
    assert "reserved" in str(refused.value)
    with pytest.raises(IntegrityError), transaction.atomic():
        Consortium.objects.create(slug=slug, name="Reserved", coordinating_organisation="Org")
    assert not Consortium.objects.filter(slug=slug).exists()
    Consortium(slug=f"{slug}-study", name="Fine", coordinating_organisation="Org").full_clean(
        exclude=["common_data_elements", "quasi_identifiers"])


def test_the_consortium_sign_in_speaks_to_members_not_to_an_organisation(pool, members):
    client = Client(HTTP_HOST="localhost")
    client.cookies["django_language"] = "en"
    page = client.get("/consortia/login/?next=/consortia/").content.decode()
    assert "Consortium members" in page
    wrong = client.post("/consortia/login/", {"email": "stats@cardio.example.org", "password": "wrong-password",
                                               "next": "/consortia/"})
    body = wrong.content.decode()
    assert wrong.status_code == 400 and "Email or password is incorrect." in body
    assert "organisation" not in body and 'value="stats@cardio.example.org"' in body  # typed email kept
    client.cookies["django_language"] = "zh-hans"
    assert "联盟成员" in client.get("/consortia/login/").content.decode()


@pytest.mark.parametrize(("next_url", "lands_on"), [
    ("", "/consortia/"),  # no next: the consortium pages, not the landing page
    ("/", "/consortia/"),  # where a member counts as signed out
    ("/admin/", "/consortia/"),  # the operators' console
    ("/consortia/cardio/", "/consortia/cardio/"),  # a member's own page is kept
])
def test_a_member_signed_in_lands_where_they_are_signed_in(pool, members, next_url, lands_on):
    client = Client(HTTP_HOST="localhost")
    client.cookies["django_language"] = "en"
    signed_in = client.post("/consortia/login/", {"email": "stats@cardio.example.org", "password": PASSWORD,
                                                  "next": next_url})
    assert signed_in.status_code == 302
    assert signed_in["Location"] == lands_on
    page = client.get(lands_on)
    assert page.status_code == 200
    assert "stats@cardio.example.org" in page.content.decode()  # shown as signed in


def test_a_click_after_the_session_ended_signs_in_and_lands_on_the_page_not_a_405(pool, members):
    """The session ended while the page was open: "Start a pooled run" sends the user to
    sign in; signed in, they land on the consortium's page, and nothing was started."""
    client = Client(HTTP_HOST="localhost")
    client.cookies["django_language"] = "en"
    clicked = client.post("/consortia/cardio/runs/")
    assert clicked.status_code == 302 and clicked["Location"].startswith("/consortia/login/?next=")
    next_url = clicked["Location"].split("next=", 1)[1].replace("%2F", "/")
    signed_in = client.post("/consortia/login/", {"email": "lead@cardio.example.org", "password": PASSWORD,
                                                  "next": next_url})
    landing = client.get(signed_in["Location"], follow=True)
    assert landing.status_code == 200 and "Start a pooled run" in landing.content.decode()
    assert client.get("/consortia/cardio/runs/").status_code == 302  # a GET never starts a run
    assert not PooledRun.objects.filter(consortium=pool["consortium"]).exists()


def test_a_failed_runs_reason_is_said_in_the_readers_language(pool, members):
    consortium = pool["consortium"]
    lead = members["lead"]
    PooledRun.objects.create(consortium=consortium, requested_by=lead, status="failed",
                             error="extraction failed for alpha (KeyError)")
    client = _public("lead@cardio.example.org")
    english = client.get("/consortia/cardio/").content.decode()
    assert "Extracting the data of these organisations failed: alpha (KeyError)." in english
    client.cookies["django_language"] = "zh-hans"
    chinese = client.get("/consortia/cardio/").content.decode()
    assert "alpha (KeyError)" in chinese and "extraction failed" not in chinese
    assert "Extracting the data" not in chinese


def test_malformed_common_data_elements_are_said_not_a_500(pool, page_as, world, api, email_of):
    """Elements written without the operator's form (no "form", not an object): the
    admin's page says why no agreement can be accepted, and accepting is a 409."""
    from tests.tenants.test_api import _assert_error_shape

    Consortium.objects.filter(pk=pool["consortium"].pk).update(
        common_data_elements=[{"items": ["weight"]}, "VITALS", {"form": "LAB", "items": ["hba1c"]}])
    beta = page_as("tenant_admin", world.beta)
    page = beta.get("/consortia/cardio/")
    assert page.status_code == 200
    tree = _tree(page)
    assert "not valid" in _text(tree, "//*[@id='elements-invalid']")[0]
    assert not tree.xpath("//*[@id='accept-form']")
    refused = beta.post("/consortia/cardio/", {"study": "CPS", "items": ["LAB.hba1c"]})
    assert refused.status_code == 409 and "not valid" in refused.content.decode()
    admin = api(world.beta, email_of("tenant_admin", "beta"))
    body = _assert_error_shape(admin.post("/api/v1/consortia/cardio/agreement/",
                                          {"study": "CPS", "items": ["LAB.hba1c"]}, format="json"), 409)
    assert body["code"] == "consortium_invalid"
    assert not DataSharingAgreement.objects.filter(tenant=world.beta, status="active").exists()


def test_the_agreement_history_pages_and_the_current_agreement_stays_shown(pool, page_as, world, monkeypatch):
    from exports.pooling import tenant_views

    monkeypatch.setattr(tenant_views, "PAGE_SIZE", 1)
    alpha = page_as("tenant_admin", world.alpha)
    first, second = (_tree(alpha.get(f"/consortia/cardio/?history_page={n}")) for n in (1, 2))
    for tree in (first, second):
        assert _text(tree, "//*[@id='agreement-status']") == ["Active"]  # the current one, on every page
        assert len(tree.xpath("//*[@id='agreement-history']//tbody/tr")) == 1
    assert first.xpath("//nav[@class='pager']/a[@rel='next']/@href") == ["?history_page=2#agreement-history"]
    assert "withdrawn" in second.xpath("//*[@id='agreement-history']//tbody/tr")[0].get("class")
    assert alpha.get("/consortia/cardio/?history_page=zz").status_code == 200


def test_members_consortia_and_participants_are_paged(pool, members, monkeypatch):
    from exports.pooling import views

    monkeypatch.setattr(views, "PARTICIPANTS_PAGE_SIZE", 1)
    monkeypatch.setattr(views, "CONSORTIA_PAGE_SIZE", 1)
    ConsortiumMember.objects.create(consortium=members["other"], user=members["stats"], role="statistician")
    client = _public("stats@cardio.example.org")
    pages = [_tree(client.get(f"/consortia/?page={n}")) for n in (1, 2)]
    hrefs = [a.get("href") for tree in pages for a in tree.xpath("//*[@id='consortia']//a")]
    assert sorted(hrefs) == ["/consortia/cardio/", "/consortia/other/"]
    shown = [row.get("data-tenant") for n in (1, 2) for row in _tree(
        client.get(f"/consortia/cardio/?participants_page={n}")).xpath("//*[@id='participants']//tr[@data-tenant]")]
    assert shown == ["alpha", "beta"]
    # Paging one list keeps the other's page: the runs' pager carries participants_page.
    monkeypatch.setattr(views, "RUNS_PAGE_SIZE", 1)
    _runs(pool["consortium"], members["lead"], 2)
    second = _tree(client.get("/consortia/cardio/?participants_page=2"))
    runs_next = second.xpath("//*[@id='runs']//nav[@class='pager']/a[@rel='next']/@href")
    assert runs_next == ["?participants_page=2&page=2#runs"]
    listed = client.get("/api/v1/consortia/?page_size=1").json()
    assert listed["count"] == 2 and len(listed["results"]) == 1 and listed["next"]
