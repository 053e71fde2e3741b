"""Pooling across three tenants under a consortium agreement: no direct identifier in the
output bytes, k-anonymity reached (measured independently with pycanon), the same inputs
give the same pseudonyms, and a withdrawn tenant is left out of the next pool."""

from __future__ import annotations

import csv
import hashlib
import io
from typing import Any

import pandas as pd
import pytest
from django.core.files.storage import default_storage
from django.db import connection

from ecrf.samples import VITALS
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


def _seed(world, in_tenant, email_of, api, *, definitions=None, values_of=None):  # type: ignore[no-untyped-def]
    """Alpha, beta and a new tenant gamma, each with the CRF study collecting VITALS (or
    definitions[slug]) and six subjects with identifying data and one entry each (GOOD,
    or values_of[slug](n), with identifying free text in notes)."""
    from tenants import services as tenant_services

    # Gamma's schema is new in every test, so its ids start again at 1: the per-process
    # cache of published versions tells it apart by the tenant (config/caching.py).
    gamma = tenant_services.tenant_create(name="Gamma Org", slug="gamma", kind="cdc",
                                          admin_email="tenant_admin@gamma.example.org", admin_password=PASSWORD)
    for role in ("coordinator", "investigator", "monitor"):
        tenant_services.member_add(tenant=gamma, email=f"{role}@gamma.example.org", role=role, password=PASSWORD)
    world.users.update({u.email: u for u in type(next(iter(world.users.values()))).objects.filter(
        email__endswith="@gamma.example.org")})
    seeded: dict[str, list[dict[str, str]]] = {}
    codes: list[str] = []
    for tenant in (world.alpha, world.beta, gamma):
        crf = _crf_in(tenant, world, in_tenant, email_of, api, definition=(definitions or {}).get(tenant.slug, VITALS))
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
            chosen = (values_of or {}).get(tenant.slug, lambda n: GOOD)(n)
            values = {**chosen, "notes": f"Called {identity['name']} on {identity['phone']}"}
            saved = crf["coordinator"].put(f"/api/v1/tasks/{task['id']}/forms/{crf['form']}/entry/",
                                           {"values": values, "version": 0}, format="json")
            assert saved.status_code == 200, saved.content
    connection.set_schema_to_public()
    return {"seeded": seeded, "codes": codes, "tenants": [world.alpha, world.beta, gamma],
            "admin": world.users["tenant_admin@alpha.example.org"]}


def _consortium(setup: dict[str, Any], *, fields: list[str] = FIELDS, **extra: Any) -> Consortium:
    consortium = Consortium.objects.create(
        slug="heart", name="Heart registry", coordinating_organisation="CDC",
        **{"common_data_elements": [{"form": "VITALS", "items": ["visit_date", "sex", "weight", "height", "notes",
                                                                 "meds"], "safe_text": []}],
           "quasi_identifiers": ["age"], "k": 3, **extra})
    for tenant in setup["tenants"]:
        DataSharingAgreement.objects.create(consortium=consortium, tenant=tenant, study_code="CRF", fields=fields,
                                            accepted_by=setup["admin"])
    return consortium


@pytest.fixture
def three_tenants(world, in_tenant, email_of, api):  # type: ignore[no-untyped-def]
    setup = _seed(world, in_tenant, email_of, api)
    return {**setup, "consortium": _consortium(setup)}


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


def test_the_pooled_parquet_holds_the_csv_rows_typed_and_no_identifier(three_tenants):
    import pyarrow.parquet as pq

    run, long_bytes, _subjects = _run(three_tenants)
    files = {f["name"]: f for f in run.manifest["files"]}
    with default_storage.open(files["pooled_long.parquet"]["storage"], "rb") as handle:
        parquet_bytes = handle.read()
    assert hashlib.sha256(parquet_bytes).hexdigest() == files["pooled_long.parquet"]["sha256"]
    table = pq.read_table(io.BytesIO(parquet_bytes))
    assert str(table.schema.field("occurrence").type) == "int32"
    assert str(table.schema.field("visit_date").type) == "date32[day]"
    rows = list(csv.DictReader(io.StringIO(long_bytes.decode())))
    assert table.num_rows == len(rows) == files["pooled_long.parquet"]["rows"]

    def text(value: Any) -> str:
        return "" if value is None else value.isoformat() if hasattr(value, "isoformat") else str(value)

    as_read = [{name: text(value) for name, value in row.items()} for row in table.to_pylist()]
    assert as_read == rows  # the same rows, in the same order
    everything = " ".join(" ".join(row.values()) for row in as_read)
    for identities in three_tenants["seeded"].values():
        for identity in identities:
            for value in identity.values():
                assert value not in everything, value
    again, _, _ = _run(three_tenants)
    assert {f["name"]: f["sha256"] for f in again.manifest["files"]}["pooled_long.parquet"] == \
        files["pooled_long.parquet"]["sha256"]


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
    listed = member.get("/api/v1/consortia/").json()  # paged, as every list of the API
    assert listed["count"] == 1 and [c["slug"] for c in listed["results"]] == ["heart"]
    listed_runs = member.get(base).json()
    assert listed_runs["count"] == 1 and listed_runs["results"][0]["manifest"]["deidentification"]["achieved_k"] >= 3
    download = member.get(file_url)
    assert download.status_code == 200 and b"".join(download.streaming_content) == long_bytes
    # A statistician of another consortium: 403 with the error shape. A tenant's own admin
    # (their session belongs to their organisation's host) and nobody: 401, naming how to
    # authenticate, as on the tenants' API.
    from tests.tenants.test_api import _assert_error_shape

    _assert_error_shape(_public(outsider).get(base), 403)
    _assert_error_shape(_public(outsider).get(file_url), 403)
    for client in (_public(world.users["tenant_admin@alpha.example.org"]), _public(None)):
        for url in (base, file_url, "/api/v1/consortia/"):
            refused = client.get(url)
            assert _assert_error_shape(refused, 401)["code"] == "not_authenticated"
            assert refused["WWW-Authenticate"].startswith("Session")
    # An unknown consortium gets the same answer as one without a role: slugs cannot be probed.
    unknown = _assert_error_shape(_public(outsider).get("/api/v1/consortia/no-such-one/runs/"), 403)
    assert unknown == _assert_error_shape(_public(outsider).get(base), 403)
    # Starting a run is the coordinator's; a statistician may not.
    _assert_error_shape(member.post(base), 403)
    started = _public(coordinator).post(base)
    assert started.status_code == 202 and started.json()["status"] == "queued"
    _assert_error_shape(member.get(f"{base}{run.pk}/files/../../etc/passwd/"), 404)
    # The run list pages (older runs are reachable, not cut off).
    PooledRun.objects.bulk_create([PooledRun(consortium=consortium, requested_by=coordinator, status="failed",
                                             error="x") for _ in range(60)])
    first, second = member.get(base).json(), member.get(base + "?page=2").json()
    assert first["count"] == 62 and len(first["results"]) == 50 and first["next"]
    assert len(second["results"]) == 12
    assert not {r["id"] for r in first["results"]} & {r["id"] for r in second["results"]}


def test_a_tenant_admin_accepts_and_withdraws_an_agreement_for_their_own_organisation(three_tenants, api, world,
                                                                                    email_of):
    from tests.tenants.test_api import _assert_error_shape

    url = "/api/v1/consortia/heart/agreement/"
    admin = api(world.beta, email_of("tenant_admin", "beta"))
    listed = admin.get("/api/v1/consortia/").json()
    assert listed["count"] == 1
    assert listed["results"][0]["slug"] == "heart" and listed["results"][0]["agreement"]["status"] == "active"
    # What the organisation shares is the admin's business: other members get 403.
    for role in ("coordinator", "monitor", "viewer", "data_manager"):
        _assert_error_shape(api(world.beta, email_of(role, "beta")).get("/api/v1/consortia/"), 403)
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
    assert "/consortia/heart/" in client.get("/consortia/").content.decode()
    page = client.get("/consortia/heart/").content.decode()
    assert "Heart registry" in page and "Alpha Org" in page and "Gamma Org" in page
    assert f"/api/v1/consortia/heart/runs/{run.pk}/files/pooled_long.csv/" in page
    assert "Start a pooled run" in page
    assert client.post("/consortia/heart/runs/").status_code == 302
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


# --- the steps of a run: parts in storage, a failed tenant, a withdrawal mid-run -------------

def _parts_left(run: PooledRun) -> list[str]:
    folder = f"pooling/{run.consortium.slug}/{run.pk}/parts"
    try:
        return sorted(default_storage.listdir(folder)[1])
    except FileNotFoundError:
        return []


def test_a_tenant_part_is_arrow_and_json_lines_in_storage_and_is_deleted_after_the_run(three_tenants):
    import gzip
    import json

    import pyarrow as pa

    from exports.pooling.aggregate import POOLED_COLUMNS, pooled_run_combine, pooled_run_prepare, tenant_part_extract

    run = PooledRun.objects.create(consortium=three_tenants["consortium"], requested_by=three_tenants["admin"])
    agreement_ids = pooled_run_prepare(run_id=run.pk)
    assert PooledRun.objects.get(pk=run.pk).status == "running"
    assert pooled_run_prepare(run_id=run.pk) is None  # a second start (a redelivered task) does nothing
    parts = [tenant_part_extract(run_id=run.pk, agreement_id=pk) for pk in agreement_ids]
    alpha = parts[0]
    assert alpha["tenant"] == "alpha" and alpha["values_extracted"] > 0
    assert sorted(_parts_left(run)) == sorted(f"{t}.{kind}" for t in ("alpha", "beta", "gamma")
                                              for kind in ("cells.arrow", "subjects.jsonl.gz"))
    raw = {}
    for kind, key in alpha["parts"].items():
        assert key.startswith(f"pooling/heart/{run.pk}/parts/alpha.")
        with default_storage.open(key, "rb") as handle:
            raw[kind] = handle.read()
    assert raw["subjects"][:2] == b"\x1f\x8b"  # gzip, not a pickle
    assert raw["cells"][:4] == b"\xff\xff\xff\xff"  # an Arrow IPC stream, not a pickle
    table = pa.ipc.open_stream(raw["cells"]).read_all()
    assert table.column_names == [*POOLED_COLUMNS, "line"] and table.num_rows == alpha["values_extracted"]
    lines = "".join(table.column("line").to_pylist())
    rows = list(csv.reader(io.StringIO(lines)))
    assert rows and all(len(row) == len(POOLED_COLUMNS) and row[0] == "alpha" for row in rows)
    # Each line is its row's typed columns as text; a subject's rows are together.
    for row, typed in zip(rows, table.drop_columns(["line"]).to_pylist(), strict=True):
        assert row == ["" if value is None else value.isoformat() if hasattr(value, "isoformat") else str(value)
                       for value in typed.values()]
    subjects_in_order = [row[1] for row in rows]
    assert subjects_in_order == sorted(subjects_in_order)  # by pseudonym, not by subject code
    subjects = [json.loads(line) for line in gzip.decompress(raw["subjects"]).decode().splitlines()]
    assert len(subjects) == alpha["subjects"] == 7  # six seeded, one from the CRF set-up
    assert all(set(s) == {"pseudonym", "age", "country"} and s["pseudonym"].startswith("P-") for s in subjects)
    everything = b"".join([raw["cells"], gzip.decompress(raw["subjects"])])
    for identity in three_tenants["seeded"]["alpha"]:
        assert not any(value.encode() in everything for value in identity.values())

    every_cell = []
    for part in parts:
        with default_storage.open(part["parts"]["cells"], "rb") as handle:
            lines = "".join(pa.ipc.open_stream(handle.read()).read_all().column("line").to_pylist())
        every_cell += list(csv.reader(io.StringIO(lines)))

    done = pooled_run_combine(run_id=run.pk, parts=parts)
    assert done.status == "done" and _parts_left(done) == []
    files = {f["name"]: f for f in done.manifest["files"]}
    with default_storage.open(files["pooled_subjects.csv"]["storage"], "rb") as handle:
        released = set(pd.read_csv(handle, dtype=str)["pseudonym"])
    with default_storage.open(files["pooled_long.csv"]["storage"], "rb") as handle:
        pooled_bytes = handle.read()
    pooled = list(csv.reader(io.StringIO(pooled_bytes.decode("utf-8"))))
    # The pooled file is the parts' rows of the released subjects, in tenant order.
    assert pooled == [list(POOLED_COLUMNS), *(row for row in every_cell if row[1] in released)]
    assert len(pooled) - 1 == files["pooled_long.csv"]["rows"]
    assert files["pooled_long.csv"]["sha256"] == hashlib.sha256(pooled_bytes).hexdigest()
    assert files["pooled_long.csv"]["bytes"] == len(pooled_bytes)
    # A redelivered combine leaves the finished run as it is.
    assert pooled_run_combine(run_id=run.pk, parts=[]).manifest == done.manifest


def _corrupt_one_entry(tenant, in_tenant, text: str) -> None:  # type: ignore[no-untyped-def]
    """A visit date the form would refuse, written behind the services' back (as a bad
    import or a manual fix might): de-identification cannot shift it."""
    from ecrf.models import Entry

    in_tenant(tenant)
    entry = Entry.objects.order_by("pk").first()
    assert entry is not None
    Entry.objects.filter(pk=entry.pk).update(values={**entry.values, "visit_date": text})
    connection.set_schema_to_public()


def test_a_failed_tenant_part_fails_the_run_naming_the_tenant_and_no_value(three_tenants, world, in_tenant):
    from structlog.testing import capture_logs

    phi = three_tenants["seeded"]["beta"][0]["name"]
    _corrupt_one_entry(world.beta, in_tenant, f"{phi} 2026-13-45")
    run = PooledRun.objects.create(consortium=three_tenants["consortium"], requested_by=three_tenants["admin"])
    with capture_logs() as logs:
        run = pooled_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == "failed" and run.finished_at is not None
    assert "beta" in run.error and "DeidError" in run.error and "alpha" not in run.error
    assert phi not in run.error and "2026-13-45" not in run.error
    assert run.manifest == {} and _parts_left(run) == []  # the other tenants' parts are gone too
    failures = [event for event in logs if event["event"] == "pooling.tenant_failed"]
    assert [event["tenant"] for event in failures] == ["beta"]
    assert phi not in repr(logs) and "2026-13-45" not in repr(logs)


def test_a_tenant_withdrawn_during_a_run_contributes_nothing_to_it(three_tenants):
    from django.utils import timezone

    from exports.pooling.aggregate import pooled_run_combine, pooled_run_prepare, tenant_part_extract

    run = PooledRun.objects.create(consortium=three_tenants["consortium"], requested_by=three_tenants["admin"])
    agreement_ids = pooled_run_prepare(run_id=run.pk)
    DataSharingAgreement.objects.filter(tenant__slug="beta").update(status="withdrawn", withdrawn_at=timezone.now())
    run = pooled_run_combine(run_id=run.pk, parts=[tenant_part_extract(run_id=run.pk, agreement_id=pk)
                                                   for pk in agreement_ids])
    assert run.status == "done" and [t["tenant"] for t in run.manifest["tenants"]] == ["alpha", "gamma"]
    with default_storage.open(run.manifest["files"][0]["storage"], "rb") as handle:
        assert {r["contributor"] for r in csv.DictReader(io.StringIO(handle.read().decode()))} == {"alpha", "gamma"}


# --- harmonisation of code lists and units ---------------------------------------------------

def _vitals(*, sex_codes: list[str], pregnant_if: str, units: dict[str, str | None] | None = None,
            ranges: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """VITALS with another SEX code list (and the branching on it), units and ranges."""
    import copy

    from ecrf.samples import label

    definition = copy.deepcopy(VITALS)
    definition["code_lists"]["SEX"] = [{"value": code, "labels": label(code)} for code in sex_codes]
    items = [*definition["items"], *(child for item in definition["items"] for child in item.get("items", []))]
    for item in items:
        if item["code"] == "pregnant":
            item["show_if"] = {"==": [{"var": "sex"}, pregnant_if]}
        if item["code"] in (units or {}):
            item.pop("unit", None)
            if units[item["code"]] is not None:  # type: ignore[index]
                item["unit"] = units[item["code"]]  # type: ignore[index]
        if item["code"] in (ranges or {}):
            item["range"] = ranges[item["code"]]  # type: ignore[index]
    return definition


HARMONISE = {
    "sex": {"codes": {"1": "M", "2": "F", "M": "M", "F": "F"}, "codes_by_tenant": {"gamma": {"1": "F", "2": "M"}}},
    "symptoms": {"codes": {"a": "COUGH", "b": "FEVER", "c": "DYSPNOEA"}},
    "weight": {"unit": "kg", "factors": {"lb": 0.45359237}, "precision": 1},
    "height": {"unit": "cm", "factors": {"in": 2.54}, "precision": 0},
    "med_dose": {"unit": "mg", "factors": {"g": 1000}},
}


@pytest.fixture
def varied_tenants(world, in_tenant, email_of, api):  # type: ignore[no-untyped-def]
    """alpha: VITALS, its SEX list with an extra "9" (one subject); beta: sex "M"/"F",
    weight in lb, height in inches; gamma: sex "1" = female, "2" = male (the reverse of
    alpha), weight in stone (no factor declared), height without a unit, doses in g."""
    without_pregnant = {k: v for k, v in GOOD.items() if k != "pregnant"}
    setup = _seed(world, in_tenant, email_of, api, definitions={
        "alpha": _vitals(sex_codes=["1", "2", "9"], pregnant_if="2"),
        "beta": _vitals(sex_codes=["M", "F"], pregnant_if="F", units={"weight": "lb", "height": "in"},
                        ranges={"height": {"hard": {"min": 20, "max": 100}}}),
        "gamma": _vitals(sex_codes=["1", "2"], pregnant_if="1", units={"weight": "st", "height": None, "med_dose": "g"},
                         ranges={"weight": {"hard": {"min": 3, "max": 50}}}),
    }, values_of={
        "alpha": lambda n: GOOD if n < 5 else {**without_pregnant, "sex": "9"},
        "beta": lambda n: {**GOOD, "sex": "F", "weight": "155.5", "height": 67},
        "gamma": lambda n: {**GOOD, "sex": "1", "weight": "11.1", "meds": [{"med_name": "Aspirin", "med_dose": 0.1}]},
    })
    consortium = _consortium(
        setup, fields=[*FIELDS, "VITALS.symptoms"], quasi_identifiers=[],
        common_data_elements=[{"form": "VITALS", "items": ["visit_date", "sex", "weight", "height", "notes", "meds",
                                                           "symptoms"], "safe_text": [], "harmonise": HARMONISE}])
    return {**setup, "consortium": consortium}


def test_code_lists_and_units_are_harmonised_and_what_cannot_be_is_counted(varied_tenants):
    run, long_bytes, _subjects = _run(varied_tenants)
    assert run.status == "done", run.error
    rows = list(csv.DictReader(io.StringIO(long_bytes.decode())))

    def values(tenant: str, item: str) -> list[str]:
        return [r["value"] for r in rows if r["contributor"] == tenant and r["item"] == item]

    # Codes: the common map ("2" -> "F", "F" -> "F"); gamma's own map ("1" is female there).
    assert values("alpha", "sex") == ["F"] * 5 and values("beta", "sex") == ["F"] * 6
    assert values("gamma", "sex") == ["F"] * 6
    # Multiple choices: each code mapped, in the stored order.
    assert {v for t in ("alpha", "beta", "gamma") for v in values(t, "symptoms")} == {"COUGH;FEVER"}
    # Units: already the consortium's unit, unchanged; converted and rounded to the precision.
    assert values("alpha", "weight") == ["70.5"] * 6 and values("alpha", "height") == ["170"] * 6
    assert values("beta", "weight") == ["70.5"] * 6  # 155.5 lb = 70.53 kg, 1 digit
    assert values("beta", "height") == ["170"] * 6  # 67 in = 170.18 cm, 0 digits
    assert values("alpha", "meds.med_dose") == ["100.0"] * 6  # mg: unchanged
    assert values("gamma", "meds.med_dose") == ["100.00"] * 6  # 0.1 g, inside the repeating group, 2 digits
    # No factor for stone, no unit at all: those values are left out, and counted.
    assert values("gamma", "weight") == [] and values("gamma", "height") == []
    tenants = {t["tenant"]: t for t in run.manifest["tenants"]}
    assert tenants["alpha"]["values_unmapped"] == {"VITALS.sex": 1}
    assert tenants["beta"]["values_unmapped"] == {}
    assert tenants["gamma"]["values_unmapped"] == {"VITALS.height": 6, "VITALS.weight": 6}
    assert tenants["beta"]["values_harmonised"] == {"VITALS.height": 6, "VITALS.sex": 6, "VITALS.symptoms": 6,
                                                    "VITALS.weight": 6}
    assert tenants["gamma"]["values_harmonised"] == {"VITALS.meds.med_dose": 6, "VITALS.sex": 6,
                                                     "VITALS.symptoms": 6}
    for name, tenant in tenants.items():  # rows written = values extracted - values left out
        assert tenant["rows_released"] == len([r for r in rows if r["contributor"] == name])
    assert run.manifest["harmonisation"]["VITALS.weight"] == {"unit": "kg"}
    assert run.manifest["harmonisation"]["VITALS.sex"] == {"codes": ["F", "M"]}
    # Never a value in the counts, and nothing identifying anywhere.
    for identities in varied_tenants["seeded"].values():
        for identity in identities:
            assert not any(value.encode() in long_bytes for value in identity.values())


# --- the common data elements' declaration is checked -----------------------------------------

VALID_CDE = [{"form": "VITALS", "items": ["sex", "weight"], "safe_text": [], "harmonise": HARMONISE}]


@pytest.mark.parametrize(("harmonise", "path"), [
    ([], "common_data_elements[0].harmonise"),
    ({"Weight": {"unit": "kg"}}, "common_data_elements[0].harmonise.Weight"),
    ({"weight": {"unit": "kg", "offset": 32}}, "common_data_elements[0].harmonise.weight"),
    ({"sex": {"codes": {"1": "M"}, "unit": "kg"}}, "common_data_elements[0].harmonise.sex"),
    ({"sex": {"codes": {"1": 1}}}, "common_data_elements[0].harmonise.sex.codes"),
    ({"sex": {"codes": {}}}, "common_data_elements[0].harmonise.sex.codes"),
    ({"sex": {"codes_by_tenant": {"gamma": ["1"]}}}, "common_data_elements[0].harmonise.sex.codes_by_tenant.gamma"),
    ({"weight": {"unit": "", "factors": {}}}, "common_data_elements[0].harmonise.weight.unit"),
    ({"weight": {"unit": "kg", "factors": {"lb": -0.45}}}, "common_data_elements[0].harmonise.weight.factors"),
    ({"weight": {"unit": "kg", "factors": {"lb": True}}}, "common_data_elements[0].harmonise.weight.factors"),
    ({"weight": {"unit": "kg", "factors": {"lb": "0.45"}}}, "common_data_elements[0].harmonise.weight.factors"),
    ({"weight": {"unit": "kg", "precision": 11}}, "common_data_elements[0].harmonise.weight.precision"),
])
def test_a_bad_declaration_is_refused_naming_its_path_and_no_run_starts(world, harmonise, path):
    from django.core.exceptions import ValidationError

    from config.errors import Conflict
    from exports.pooling.models import ConsortiumMember, common_data_elements_problems
    from tenants.models import User
    from tests.tenants.test_api import _assert_error_shape

    assert common_data_elements_problems(VALID_CDE) == {}
    bad = [{**VALID_CDE[0], "harmonise": harmonise}]
    assert list(common_data_elements_problems(bad)) == [path]
    consortium = Consortium.objects.create(slug="heart", name="Heart registry", coordinating_organisation="CDC",
                                           common_data_elements=bad)
    with pytest.raises(ValidationError) as refused:
        consortium.full_clean()
    assert path in str(refused.value)
    lead = User.objects.create_user(email="lead@heart.example.org", password=PASSWORD)
    ConsortiumMember.objects.create(consortium=consortium, user=lead, role="coordinator")
    body = _assert_error_shape(_public(lead).post("/api/v1/consortia/heart/runs/"), 409)
    assert body["code"] == "common_data_elements_invalid" and path in body["fields"]
    assert not PooledRun.objects.exists()
    # A run queued before the declaration went bad fails at once; it is never left running.
    run = PooledRun.objects.create(consortium=consortium, requested_by=lead)
    with pytest.raises(Conflict):
        pooled_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == "failed" and path in run.error


def test_a_run_started_while_the_broker_is_down_is_failed_not_left_queued(
        three_tenants, broker_down, django_capture_on_commit_callbacks):
    from config.errors import DomainError
    from exports.pooling.models import ConsortiumMember
    from tenants.models import User

    consortium = three_tenants["consortium"]
    lead = User.objects.create_user(email="lead@heart.example.org", password=PASSWORD)
    ConsortiumMember.objects.create(consortium=consortium, user=lead, role="coordinator")
    with django_capture_on_commit_callbacks() as publish:
        assert _public(lead).post(f"/api/v1/consortia/{consortium.slug}/runs/").status_code == 202
    with pytest.raises(DomainError) as refused:
        publish[0]()  # what runs inside the request in production (views have no transaction)
    assert refused.value.status_code == 503 and refused.value.code == "queue_unavailable"
    run = PooledRun.objects.get()
    assert run.status == "failed" and run.finished_at is not None


def test_a_failed_run_says_why_in_the_readers_language_in_the_api(world):
    from exports.pooling.models import ConsortiumMember
    from tenants.models import User

    consortium = Consortium.objects.create(slug="lang", name="Lang", coordinating_organisation="X")
    lead = User.objects.create_user(email="lead@lang.example.org", password=PASSWORD)
    ConsortiumMember.objects.create(consortium=consortium, user=lead, role="coordinator")
    PooledRun.objects.create(consortium=consortium, requested_by=lead, status="failed",
                             error="could not queue the run (ConnectionRefusedError)")
    client = _public(lead)
    client.cookies["django_language"] = "en"
    english = client.get("/api/v1/consortia/lang/runs/").json()["results"][0]
    assert english["error"] == "could not queue the run (ConnectionRefusedError)"  # stable, for scripts
    assert english["error_message"] == "The run could not be queued (ConnectionRefusedError)."
    client.cookies["django_language"] = "zh-hans"
    chinese = client.get("/api/v1/consortia/lang/runs/").json()["results"][0]
    assert chinese["error"] == english["error"]
    assert chinese["error_message"] != english["error_message"] and "ConnectionRefusedError" in chinese[
        "error_message"]


def test_a_suppressed_subjects_rows_leave_neither_pooled_file_and_the_others_all_do(three_tenants, world, in_tenant):
    """One alpha subject made much younger than everyone: its class is too small for k, so
    it is suppressed; the combine step filters alpha's part, and copies the others whole."""
    import pyarrow.parquet as pq

    from studies.models import Subject

    in_tenant(world.alpha)
    young = next(subject for subject in Subject.objects.order_by("pk") if subject.birth_date)
    young.birth_date = "1995-06-01"
    young.save(update_fields=["birth_date"])
    connection.set_schema_to_public()
    run, long_bytes, subjects_bytes = _run(three_tenants)
    assert run.status == "done", run.error
    report = run.manifest["deidentification"]
    assert report["records_suppressed"] == 1 and report["achieved_k"] >= 3
    released = set(pd.read_csv(io.BytesIO(subjects_bytes), dtype=str)["pseudonym"])
    rows = list(csv.DictReader(io.StringIO(long_bytes.decode())))
    assert {r["subject"] for r in rows} <= released
    tenants = {t["tenant"]: t for t in run.manifest["tenants"]}
    # Alpha lost the suppressed subject's rows; beta and gamma released every value.
    assert 0 < tenants["alpha"]["rows_released"] < tenants["alpha"]["values_extracted"]
    assert all(tenants[name]["rows_released"] == tenants[name]["values_extracted"] for name in ("beta", "gamma"))
    assert sum(t["rows_released"] for t in tenants.values()) == len(rows)
    files = {f["name"]: f for f in run.manifest["files"]}
    with default_storage.open(files["pooled_long.parquet"]["storage"], "rb") as handle:
        table = pq.read_table(io.BytesIO(handle.read()))
    assert table.num_rows == len(rows) and set(table.column("subject").to_pylist()) == {r["subject"] for r in rows}


def test_the_pooled_parquet_in_many_row_groups_holds_the_csv_rows_in_order(three_tenants, monkeypatch):
    """Row groups of a few rows: several encodings queued on the encoder thread, one at a
    time, in order (the same rows as the CSV, as with one row group)."""
    import pyarrow.parquet as pq

    from exports.pooling import aggregate

    monkeypatch.setattr(aggregate, "_PARQUET_GROUP_ROWS", 7)
    run, long_bytes, _subjects = _run(three_tenants)
    files = {f["name"]: f for f in run.manifest["files"]}
    with default_storage.open(files["pooled_long.parquet"]["storage"], "rb") as handle:
        parquet = pq.ParquetFile(io.BytesIO(handle.read()))
    assert parquet.metadata.num_row_groups == 3  # a row group per tenant's batch, each over 7 rows
    rows = list(csv.DictReader(io.StringIO(long_bytes.decode())))
    as_read = [{name: "" if value is None else value.isoformat() if hasattr(value, "isoformat") else str(value)
                for name, value in row.items()} for row in parquet.read().to_pylist()]
    assert as_read == rows and str(parquet.schema_arrow.field("subject").type) == "string"
