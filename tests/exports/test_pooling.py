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
