"""Pooling across three tenants under a consortium agreement: no direct identifier in the
output bytes, k-anonymity reached (measured independently with pycanon), the same inputs
give the same pseudonyms, and a withdrawn tenant is left out of the next pool."""

from __future__ import annotations

import csv
import io
from typing import Any

import pandas as pd
import pytest
from django.core.files.storage import default_storage
from django.db import connection

from exports.pooling.aggregate import pooled_run_execute
from exports.pooling.models import Consortium, DataSharingAgreement, PooledRun
from tests.conftest import PASSWORD
from tests.ecrf.test_entries import GOOD, _crf_in

pytestmark = pytest.mark.django_db

FIELDS = ["VITALS.visit_date", "VITALS.sex", "VITALS.weight", "VITALS.height", "VITALS.notes", "VITALS.meds"]


def _identity(tenant: str, n: int) -> dict[str, str]:
    return {"name": f"{tenant.title()}患者{n}号", "phone": f"1390{n:03d}{len(tenant):04d}",
            "national_id": f"11010519{80 + n:02d}0101{n:03d}X", "email": f"patient{n}@{tenant}.example.org",
            "birth_date": f"19{60 + n}-03-0{1 + n % 8}"}


@pytest.fixture
def three_tenants(world, in_tenant, email_of, api):  # type: ignore[no-untyped-def]
    from tenants import services as tenant_services

    gamma = tenant_services.tenant_create(name="Gamma Org", slug="gamma", kind="cdc",
                                          admin_email="tenant_admin@gamma.example.org", admin_password=PASSWORD)
    for role in ("coordinator", "investigator", "monitor"):
        tenant_services.member_add(tenant=gamma, email=f"{role}@gamma.example.org", role=role, password=PASSWORD)
    world.users.update({u.email: u for u in type(next(iter(world.users.values()))).objects.filter(
        email__endswith="@gamma.example.org")})
    seeded: dict[str, list[dict[str, str]]] = {}
    codes: list[str] = []
    for tenant in (world.alpha, world.beta, gamma):
        crf = _crf_in(tenant, world, in_tenant, email_of, api)
        seeded[tenant.slug] = []
        for n in range(6):
            identity = _identity(tenant.slug, n)
            subject = crf["coordinator"].post("/api/v1/subjects/", {
                "study": crf["study"], "site": crf["site"], "consent_date": "2026-11-20", **identity},
                format="json")
            assert subject.status_code == 201, subject.content
            body = subject.json()
            codes.append(body["subject_code"])
            seeded[tenant.slug].append(identity)
            task = crf["coordinator"].get(f"/api/v1/subjects/{body['id']}/").json()["tasks"][0]
            values = {**GOOD, "notes": f"Called {identity['name']} on {identity['phone']}"}
            saved = crf["coordinator"].put(f"/api/v1/tasks/{task['id']}/forms/{crf['form']}/entry/",
                                           {"values": values, "version": 0}, format="json")
            assert saved.status_code == 200, saved.content
    connection.set_schema_to_public()
    consortium = Consortium.objects.create(
        slug="heart", name="Heart registry", coordinating_organisation="CDC",
        common_data_elements=[{"form": "VITALS", "items": ["visit_date", "sex", "weight", "height", "notes", "meds"],
                               "safe_text": []}],
        quasi_identifiers=["age"], k=3)
    admin = world.users["tenant_admin@alpha.example.org"]
    for tenant in (world.alpha, world.beta, gamma):
        DataSharingAgreement.objects.create(consortium=consortium, tenant=tenant, study_code="CRF", fields=FIELDS,
                                            accepted_by=admin)
    return {"consortium": consortium, "seeded": seeded, "codes": codes, "tenants": [world.alpha, world.beta, gamma],
            "admin": admin}


def _run(setup: dict[str, Any]) -> tuple[PooledRun, bytes, bytes]:
    run = PooledRun.objects.create(consortium=setup["consortium"], requested_by=setup["admin"])
    run = pooled_run_execute(run_id=run.pk)
    files = {f["name"]: f for f in run.manifest["files"]}
    with default_storage.open(files["pooled_long.csv"]["storage"], "rb") as handle:
        long_bytes = handle.read()
    with default_storage.open(files["pooled_subjects.csv"]["storage"], "rb") as handle:
        subjects_bytes = handle.read()
    return run, long_bytes, subjects_bytes


def test_pooled_output_has_no_direct_identifier_and_reaches_k(three_tenants):
    run, long_bytes, subjects_bytes = _run(three_tenants)
    assert run.status == "done", run.error
    everything = long_bytes + subjects_bytes
    for identities in three_tenants["seeded"].values():
        for identity in identities:
            for value in identity.values():
                assert value.encode() not in everything, value
    for code in three_tenants["codes"]:
        assert f",{code},".encode() not in everything
    rows = list(csv.DictReader(io.StringIO(long_bytes.decode())))
    assert {r["contributor"] for r in rows} == {"alpha", "beta", "gamma"}
    assert not any(r["item"] == "notes" or r["item"].startswith("meds.med_name") for r in rows)  # free text
    assert any(r["item"] == "weight" and r["value"] == "70.5" for r in rows)
    # k measured here, independently of the service's own report.
    from pycanon import anonymity

    subjects = pd.read_csv(io.BytesIO(subjects_bytes), dtype=str).fillna("")
    achieved = anonymity.k_anonymity(subjects, ["age"])
    report = run.manifest["deidentification"]
    assert achieved >= three_tenants["consortium"].k and report["achieved_k"] == achieved
    assert set(rows_subject := {r["subject"] for r in rows}) <= set(subjects["pseudonym"])
    assert all(p.startswith("P-") for p in rows_subject)
    assert [t["tenant"] for t in run.manifest["tenants"]] == ["alpha", "beta", "gamma"]
    assert all(t["rows_released"] > 0 for t in run.manifest["tenants"])


def test_the_same_inputs_give_the_same_pseudonyms_and_bytes(three_tenants):
    _first, first_long, first_subjects = _run(three_tenants)
    _second, second_long, second_subjects = _run(three_tenants)
    assert first_subjects == second_subjects and first_long == second_long
    assert {r["subject"] for r in csv.DictReader(io.StringIO(first_long.decode()))} == {
        r["subject"] for r in csv.DictReader(io.StringIO(second_long.decode()))}


def test_a_withdrawn_tenant_is_not_in_the_next_pool(three_tenants):
    from django.utils import timezone

    DataSharingAgreement.objects.filter(tenant__slug="beta").update(status="withdrawn", withdrawn_at=timezone.now())
    run, long_bytes, _ = _run(three_tenants)
    assert {r["contributor"] for r in csv.DictReader(io.StringIO(long_bytes.decode()))} == {"alpha", "gamma"}
    assert [t["tenant"] for t in run.manifest["tenants"]] == ["alpha", "gamma"]


# --- the API: consortium members on the public host, tenant admins on their host --------------

def _public(user):  # type: ignore[no-untyped-def]
    from rest_framework.test import APIClient

    client = APIClient(HTTP_HOST="localhost")
    if user is not None:
        client.force_login(user)
    return client


def test_only_members_with_a_consortium_role_see_and_download_pooled_outputs(three_tenants, world):
    from exports.pooling.models import ConsortiumMember
    from tenants.models import User

    consortium = three_tenants["consortium"]
    run, long_bytes, _ = _run(three_tenants)
    statistician = User.objects.create_user(email="stats@heart.example.org", password=PASSWORD)
    coordinator = User.objects.create_user(email="lead@heart.example.org", password=PASSWORD)
    outsider = User.objects.create_user(email="stats@other.example.org", password=PASSWORD)
    ConsortiumMember.objects.create(consortium=consortium, user=statistician, role="statistician")
    ConsortiumMember.objects.create(consortium=consortium, user=coordinator, role="coordinator")
    other = Consortium.objects.create(slug="other", name="Other", coordinating_organisation="X")
    ConsortiumMember.objects.create(consortium=other, user=outsider, role="statistician")
    base = f"/api/v1/consortia/{consortium.slug}/runs/"
    file_url = f"{base}{run.pk}/files/pooled_long.csv/"

    member = _public(statistician)
    assert [c["slug"] for c in member.get("/api/v1/consortia/").json()] == ["heart"]
    assert member.get(base).json()[0]["manifest"]["deidentification"]["achieved_k"] >= 3
    download = member.get(file_url)
    assert download.status_code == 200 and b"".join(download.streaming_content) == long_bytes
    # A statistician of another consortium, a tenant's own admin, nobody: 403 with the error shape.
    from tests.tenants.test_api import _assert_error_shape

    for client in (_public(outsider), _public(world.users["tenant_admin@alpha.example.org"]), _public(None)):
        _assert_error_shape(client.get(base), 403)
        _assert_error_shape(client.get(file_url), 403)
    # Starting a run is the coordinator's; a statistician may not.
    _assert_error_shape(member.post(base), 403)
    started = _public(coordinator).post(base)
    assert started.status_code == 202 and started.json()["status"] == "queued"
    _assert_error_shape(member.get(f"{base}{run.pk}/files/../../etc/passwd/"), 404)


def test_a_tenant_admin_accepts_and_withdraws_an_agreement_for_their_own_organisation(three_tenants, api, world,
                                                                                    email_of):
    from tests.tenants.test_api import _assert_error_shape

    url = "/api/v1/consortia/heart/agreement/"
    admin = api(world.beta, email_of("tenant_admin", "beta"))
    listed = admin.get("/api/v1/consortia/").json()
    assert listed[0]["slug"] == "heart" and listed[0]["agreement"]["status"] == "active"
    _assert_error_shape(admin.post(url, {"study": "CRF", "items": ["VITALS.weight"]}, format="json"), 409)
    assert admin.delete(url).json()["status"] == "withdrawn"
    _assert_error_shape(admin.delete(url), 404)
    for body, field in (({"study": "NOPE", "items": ["VITALS.weight"]}, "study"),
                        ({"study": "CRF", "items": ["VITALS.email"]}, "items"),  # not a common data element
                        ({"study": "CRF", "items": []}, "items"),
                        ({"study": "CRF"}, "items")):
        assert field in _assert_error_shape(admin.post(url, body, format="json"), 400)["fields"]
    accepted = admin.post(url, {"study": "CRF", "items": ["VITALS.weight", "VITALS.height"]}, format="json")
    assert accepted.status_code == 201 and accepted.json()["items"] == ["VITALS.height", "VITALS.weight"]
    # Only the admin, and only for the organisation whose host it is.
    _assert_error_shape(api(world.beta, email_of("data_manager", "beta")).delete(url), 403)
    assert DataSharingAgreement.objects.filter(tenant__slug="beta", status="active").count() == 1
    assert DataSharingAgreement.objects.filter(tenant__slug="alpha", status="active").count() == 1


def test_the_consortium_page_signs_members_in_and_shows_organisations_and_runs(three_tenants, world):
    from django.test import Client

    from exports.pooling.models import ConsortiumMember
    from tenants.models import User

    consortium = three_tenants["consortium"]
    run, _long, _subjects = _run(three_tenants)
    lead = User.objects.create_user(email="lead@heart.example.org", password=PASSWORD)
    ConsortiumMember.objects.create(consortium=consortium, user=lead, role="coordinator")
    client = Client(HTTP_HOST="localhost")
    client.cookies["django_language"] = "en"
    first = client.get("/consortia/")
    assert first.status_code == 302 and first["Location"].startswith("/consortia/login/")
    # A tenant's own administrator has no consortium role: no sign-in here.
    refused = client.post("/consortia/login/", {"email": "tenant_admin@alpha.example.org", "password": PASSWORD,
                                                "next": "/consortia/"})
    assert refused.status_code == 400
    signed_in = client.post("/consortia/login/", {"email": "lead@heart.example.org", "password": PASSWORD,
                                                  "next": "/consortia/"})
    assert signed_in.status_code == 302 and signed_in["Location"] == "/consortia/"
    page = client.get("/consortia/").content.decode()
    assert "Heart registry" in page and "Alpha Org" in page and "Gamma Org" in page
    assert f"/api/v1/consortia/heart/runs/{run.pk}/files/pooled_long.csv/" in page
    assert "Start a pooled run" in page
    assert client.post("/consortia/", {"consortium": "heart"}).status_code == 302
    assert PooledRun.objects.filter(consortium=consortium).count() == 2
    # The session only counts on consortium pages: the operator console stays closed.
    assert client.get("/admin/").status_code == 302
    assert client.post("/consortia/logout/").status_code == 302
    assert client.get("/consortia/").status_code == 302


def test_without_the_pooling_secret_no_run_starts_and_none_stays_running(three_tenants, settings):
    from django.core.exceptions import ImproperlyConfigured

    from exports.pooling.models import ConsortiumMember
    from tenants.models import User
    from tests.tenants.test_api import _assert_error_shape

    consortium = three_tenants["consortium"]
    lead = User.objects.create_user(email="lead@heart.example.org", password=PASSWORD)
    ConsortiumMember.objects.create(consortium=consortium, user=lead, role="coordinator")
    settings.POOLING_SECRET = ""
    refused = _public(lead).post(f"/api/v1/consortia/{consortium.slug}/runs/")
    assert _assert_error_shape(refused, 409)["code"] == "pooling_not_configured"
    assert not PooledRun.objects.exists()
    run = PooledRun.objects.create(consortium=consortium, requested_by=lead)  # queued before the secret went
    with pytest.raises(ImproperlyConfigured):
        pooled_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == "failed" and "POOLING_SECRET" in run.error
