"""Study exports over the API: start, run, progress, manifest, the long CSV against the
entries it came from, byte-identical retries, signed short-lived download links,
roles, other tenants, and bad input."""

from __future__ import annotations

import csv
import hashlib
import io
import re
from typing import Any

import pytest
from django.db import connection
from django.utils import translation

from ecrf.models_audit import AuditEvent
from exports.models import ExportFile, ExportJob
from tests.ecrf.test_entries import GOOD, crf  # noqa: F401 (fixture)
from tests.tenants.test_api import _assert_error_shape

pytestmark = pytest.mark.django_db


def _flatten(values: dict[str, Any], missing: dict[str, str]) -> list[tuple[str, str, str, str]]:
    """(item, row, value, missing code) as a statistician expects them, computed here from
    the values document independently of the SQL that writes the CSV."""
    out = []
    for code, value in values.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            for index, row in enumerate(value):
                for child, cell in row.items():
                    out.append((f"{code}.{child}", str(index + 1), _text(cell), ""))
        else:
            out.append((code, "", _text(value), ""))
    for path, code in missing.items():
        out.append((path, "", "", code))
    return sorted(out)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(value)
    return "" if value is None else str(value)


@pytest.fixture
def exported(crf, api, world, email_of, in_tenant):  # noqa: F811
    """Two saved entries' worth of data... one subject's D7 VITALS, with a missing code."""
    values = {**GOOD, "weight": None, "meds": [{"med_name": "Aspirin", "med_dose": 100},
                                              {"med_name": "Metformin, XR", "med_dose": 500}]}
    values.pop("weight")
    saved = crf["coordinator"].put(crf["url"], {"values": values, "missing": {"weight": "UNK"}, "version": 0},
                                   format="json")
    assert saved.status_code == 200, saved.content
    manager = api(world.alpha, email_of("data_manager", "alpha"))
    return {**crf, "manager": manager, "entry": saved.json()}


def _run(world, in_tenant, job_id: int) -> ExportJob:  # type: ignore[no-untyped-def]
    from exports.services import export_run

    in_tenant(world.alpha)
    job = export_run(job_id=job_id)
    connection.set_schema_to_public()
    return job


def _download(client, job_state: dict[str, Any], name_suffix: str = "long.csv") -> bytes:  # type: ignore[no-untyped-def]
    file = next(f for f in job_state["files"] if f["name"].endswith(name_suffix))
    link = client.post(f"/api/v1/exports/{job_state['id']}/files/{file['id']}/link/")
    assert link.status_code == 200, link.content
    response = client.get(link.json()["url"])
    assert response.status_code == 200, response.content
    return b"".join(response.streaming_content)


def test_long_csv_holds_every_item_value_and_the_manifest_adds_up(exported, world, in_tenant):
    manager = exported["manager"]
    started = manager.post(f"/api/v1/studies/{exported['study']}/exports/", {"formats": ["csv_long"]},
                           format="json")
    assert started.status_code == 202, started.content
    assert started.json()["status"] == "queued" and started.json()["files"] == []
    _run(world, in_tenant, started.json()["id"])
    state = manager.get(f"/api/v1/exports/{started.json()['id']}/").json()
    assert state["status"] == "done" and state["progress"] == 1.0
    body = _download(manager, state)
    assert hashlib.sha256(body).hexdigest() == state["files"][0]["sha256"] == state["manifest"]["files"][0]["sha256"]
    rows = list(csv.DictReader(io.StringIO(body.decode("utf-8"))))
    assert list(rows[0]) == ["study", "site", "subject", "event", "occurrence", "visit_date", "form",
                             "form_version", "entry_status", "item", "item_row", "value", "missing_code"]
    assert {(r["study"], r["site"], r["event"], r["form"], r["form_version"]) for r in rows} == {
        ("CRF", "S1", "D7", "VITALS", "1")}
    in_tenant(world.alpha)
    from ecrf.models import Entry

    entry = Entry.objects.get()
    connection.set_schema_to_public()
    got = sorted((r["item"], r["item_row"], r["value"], r["missing_code"]) for r in rows)
    assert got == _flatten(entry.values, entry.missing)
    # Text is text: the script tag and the comma inside a value survive CSV quoting.
    assert any(r["value"] == "<script>alert(1)</script> 无不适" for r in rows)
    assert any(r["value"] == "Metformin, XR" and r["item_row"] == "2" for r in rows)
    manifest = state["manifest"]
    assert manifest["rows_by_form_and_site"] == [{"form": "VITALS", "site": "S1", "values": len(rows)}]
    assert state["files"][0]["rows"] == len(rows) and manifest["form_versions"] == {"VITALS": [1]}
    assert manifest["snapshot"]["audit_seq"] > 0


def test_a_retry_of_the_same_snapshot_is_byte_identical_and_a_changed_one_says_so(exported, world, in_tenant):
    manager = exported["manager"]
    job_id = manager.post(f"/api/v1/studies/{exported['study']}/exports/", {"formats": ["csv_long"]},
                          format="json").json()["id"]
    first = _run(world, in_tenant, job_id)
    first_sha = first.manifest["files"][0]["sha256"]
    in_tenant(world.alpha)
    ExportJob.objects.filter(pk=job_id).update(status="failed")  # as if the worker died after writing
    connection.set_schema_to_public()
    again = _run(world, in_tenant, job_id)
    assert again.attempts == 2 and again.manifest["files"][0]["sha256"] == first_sha
    assert again.manifest["snapshot"]["changed_since_first_attempt"] is False
    changed = exported["coordinator"].put(exported["url"], {
        "values": {**GOOD, "pain": 7}, "version": exported["entry"]["version"]}, format="json")
    assert changed.status_code == 200, changed.content
    in_tenant(world.alpha)
    ExportJob.objects.filter(pk=job_id).update(status="failed")
    connection.set_schema_to_public()
    third = _run(world, in_tenant, job_id)
    assert third.manifest["snapshot"]["changed_since_first_attempt"] is True
    assert third.manifest["files"][0]["sha256"] != first_sha


def test_exports_and_downloads_are_audited(exported, world, in_tenant):
    manager = exported["manager"]
    job_id = manager.post(f"/api/v1/studies/{exported['study']}/exports/", {"formats": ["csv_long"]},
                          format="json").json()["id"]
    _run(world, in_tenant, job_id)
    _download(manager, manager.get(f"/api/v1/exports/{job_id}/").json())
    in_tenant(world.alpha)
    # (Filtered by this job: the audit trail is append-only, so rows committed by a browser
    # test earlier in the session stay.)
    actions = list(AuditEvent.objects.filter(action__in=["export_run", "export_download"], detail__export=job_id)
                   .order_by("seq").values_list("action", "detail"))
    assert [a for a, _ in actions] == ["export_run", "export_download"]
    assert actions[0][1]["export"] == job_id and actions[1][1]["file"] == "CRF_long.csv"


def test_roles_other_tenants_and_links(exported, api, world, email_of, in_tenant, monkeypatch):
    manager = exported["manager"]
    job_id = manager.post(f"/api/v1/studies/{exported['study']}/exports/", {"formats": ["csv_long"]},
                          format="json").json()["id"]
    _run(world, in_tenant, job_id)
    state = manager.get(f"/api/v1/exports/{job_id}/").json()
    file_id = state["files"][0]["id"]
    link = manager.post(f"/api/v1/exports/{job_id}/files/{file_id}/link/").json()["url"]
    for role in ("coordinator", "monitor", "viewer", "investigator"):
        client = api(world.alpha, email_of(role, "alpha"))
        _assert_error_shape(client.post(f"/api/v1/studies/{exported['study']}/exports/",
                                        {"formats": ["csv_long"]}, format="json"), 403)
        _assert_error_shape(client.get(f"/api/v1/exports/{job_id}/"), 403)
        assert client.get(link).status_code in (403, 404)  # bound to the manager, and the role is checked
    # Another tenant: no such job, no such file, and alpha's link means nothing there.
    beta = api(world.beta, email_of("data_manager", "beta"))
    _assert_error_shape(beta.get(f"/api/v1/exports/{job_id}/"), 404)
    _assert_error_shape(beta.post(f"/api/v1/exports/{job_id}/files/{file_id}/link/"), 404)
    _assert_error_shape(beta.get(link), 404)
    _assert_error_shape(beta.post(f"/api/v1/studies/{exported['study']}/exports/", {"formats": ["csv_long"]},
                                  format="json"), 404)
    # A statistician may export; a tampered or expired link is refused.
    statistician = api(world.alpha, email_of("statistician", "alpha"))
    assert statistician.get(f"/api/v1/studies/{exported['study']}/exports/").status_code == 200
    _assert_error_shape(manager.get(link[:-5] + "xxxx/"), 404)
    from exports.api import views

    monkeypatch.setattr(views, "LINK_MAX_AGE", -1)
    assert _assert_error_shape(manager.get(link), 404)["code"] == "link_expired"


def test_a_link_stops_working_when_its_user_may_no_longer_see_the_export(exported, api, world, email_of,
                                                                        in_tenant):
    """A data manager's link to an admin's export, then the data manager becomes a
    statistician (who sees only their own exports): the link is refused, not served."""
    from tenants.models import TenantMembership

    admin = api(world.alpha, email_of("tenant_admin", "alpha"))
    job_id = admin.post(f"/api/v1/studies/{exported['study']}/exports/", {"formats": ["csv_long"]},
                        format="json").json()["id"]
    _run(world, in_tenant, job_id)
    manager = exported["manager"]
    file_id = manager.get(f"/api/v1/exports/{job_id}/").json()["files"][0]["id"]
    link = manager.post(f"/api/v1/exports/{job_id}/files/{file_id}/link/").json()["url"]
    assert manager.get(link).status_code == 200  # while allowed
    user = world.users[email_of("data_manager", "alpha")]
    TenantMembership.objects.filter(user=user, tenant=world.alpha).update(role="statistician")
    _assert_error_shape(manager.get(f"/api/v1/exports/{job_id}/"), 404)
    _assert_error_shape(manager.get(link), 404)


def test_a_file_lost_from_storage_is_a_409_with_a_message_not_a_500(exported, world, in_tenant):
    from exports.storage import export_storage

    manager = exported["manager"]
    job_id = manager.post(f"/api/v1/studies/{exported['study']}/exports/", {"formats": ["csv_long"]},
                          format="json").json()["id"]
    _run(world, in_tenant, job_id)
    file_id = manager.get(f"/api/v1/exports/{job_id}/").json()["files"][0]["id"]
    link = manager.post(f"/api/v1/exports/{job_id}/files/{file_id}/link/").json()["url"]
    in_tenant(world.alpha)
    export_storage().delete(ExportFile.objects.get(pk=file_id).storage_name)
    connection.set_schema_to_public()
    # The link asked for now is refused with the reason; one made before fails the same way.
    response = manager.post(f"/api/v1/exports/{job_id}/files/{file_id}/link/")
    refused = _assert_error_shape(response, 409)
    assert refused["code"] == "export_file_missing"
    with translation.override(response["Content-Language"]):  # the reader's language
        assert refused["message"] == translation.gettext("This file is no longer stored. Run the export again.")
    assert _assert_error_shape(manager.get(link), 409)["code"] == "export_file_missing"


@pytest.mark.parametrize(("body", "field"), [
    ({}, "formats"),
    ({"formats": []}, "formats"),
    ({"formats": ["csv"]}, "formats"),
    ({"formats": "csv_long"}, "formats"),
    ({"formats": ["parquet", "pdf"]}, "formats"),  # one unknown format: the whole request is refused
    ({"formats": ["csv_long"], "forms": ["NOPE"]}, "forms"),
    ({"formats": ["csv_long"], "sites": ["x"]}, "sites"),
    ({"formats": ["csv_long"], "sites": [987654]}, "sites"),  # no such site: not a "done" empty export
    ({"formats": ["csv_long"], "sites": [10**25]}, "sites"),
    ({"formats": ["csv_long"], "forms": ["A"] * 201}, "forms"),
    ({"formats": ["csv_long"], "date_from": "2026-02-01", "date_to": "2026-01-01"}, "date_to"),
    ({"formats": ["csv_long"], "date_from": "yesterday"}, "date_from"),
])
def test_bad_requests_are_refused_per_field_and_create_nothing(exported, world, in_tenant, body, field):
    response = exported["manager"].post(f"/api/v1/studies/{exported['study']}/exports/", body, format="json")
    fields = _assert_error_shape(response, 400)["fields"]
    assert any(key == field or key.startswith(field + ".") for key in fields), fields
    in_tenant(world.alpha)
    assert not ExportJob.objects.exists()


def test_a_filter_narrows_the_rows(exported, world, in_tenant):
    manager = exported["manager"]
    job_id = manager.post(f"/api/v1/studies/{exported['study']}/exports/",
                          {"formats": ["csv_long"], "date_from": "2099-01-01"}, format="json").json()["id"]
    job = _run(world, in_tenant, job_id)
    assert job.manifest["rows_by_form_and_site"] == [] and job.manifest["files"][0]["rows"] == 0


def test_the_celery_task_runs_the_job_in_its_tenant(exported, world, in_tenant):
    from exports.tasks import export_run_task

    job_id = exported["manager"].post(f"/api/v1/studies/{exported['study']}/exports/", {"formats": ["csv_long"]},
                                      format="json").json()["id"]
    in_tenant(world.alpha)
    result = export_run_task.apply(args=[job_id])
    assert result.get() == {"job": job_id, "status": "done"}
    assert ExportJob.objects.get(pk=job_id).files.count() == 1


def test_odm_export_is_valid_against_the_official_schema_and_holds_every_value(exported, world, in_tenant):
    from lxml import etree

    from exports.cdisc.xsd import odm_problems

    manager = exported["manager"]
    job_id = manager.post(f"/api/v1/studies/{exported['study']}/exports/", {"formats": ["odm", "csv_long"]},
                          format="json").json()["id"]
    _run(world, in_tenant, job_id)
    state = manager.get(f"/api/v1/exports/{job_id}/").json()
    assert state["status"] == "done", state
    body = _download(manager, state, "odm.xml")
    assert odm_problems(body) == []
    tree = etree.fromstring(body)
    ns = {"odm": "http://www.cdisc.org/ns/odm/v1.3"}
    assert [s.get("SubjectKey") for s in tree.iterfind(".//odm:SubjectData", ns)] == [
        r["subject"] for r in csv.DictReader(io.StringIO(_download(manager, state).decode()))][:1]
    values = {d.get("ItemOID"): d.get("Value") for d in tree.iterfind(".//odm:ItemData", ns)}
    assert values["I.VITALS.height"] == "170" and values["I.VITALS.notes"] == "<script>alert(1)</script> 无不适"
    nulls = [d for d in tree.iterfind(".//odm:ItemData", ns) if d.get("IsNull") == "Yes"]
    assert [d.get("ItemOID") for d in nulls] == ["I.VITALS.weight"]  # the UNK missing code


def test_sdtm_export_is_xpt_v5_with_a_valid_define(exported, world, in_tenant):
    import tempfile
    import zipfile
    from pathlib import Path

    import pyreadstat

    from exports.cdisc.xsd import define_problems

    manager = exported["manager"]
    job_id = manager.post(f"/api/v1/studies/{exported['study']}/exports/", {"formats": ["sdtm"]},
                          format="json").json()["id"]
    _run(world, in_tenant, job_id)
    state = manager.get(f"/api/v1/exports/{job_id}/").json()
    archive = zipfile.ZipFile(io.BytesIO(_download(manager, state, "sdtm.zip")))
    names = archive.namelist()
    # The datasets as they are built, then define.xml, which describes exactly them.
    assert names == ["dm.xpt", "sv.xpt", "ds.xpt", "define.xml"]
    assert define_problems(archive.read("define.xml")) == []
    described = re.findall(rb'<def:leaf ID="[^"]+" xlink:href="([^"]+)"', archive.read("define.xml"))
    assert sorted(described) == [b"dm.xpt", b"ds.xpt", b"sv.xpt"]
    with tempfile.TemporaryDirectory() as folder:
        archive.extractall(folder)
        dm, meta = pyreadstat.read_xport(str(Path(folder) / "dm.xpt"))
        # SAS XPORT v5: the library header record (v8 files say LIBV8).
        assert archive.read("dm.xpt").startswith(b"HEADER RECORD*******LIBRARY HEADER RECORD!!!!!!!")
        assert meta.table_name == "DM"
        assert list(dm["USUBJID"]) == [f"CRF-S1-{dm['SUBJID'][0]}"] and dm["RFSTDTC"][0]
        assert len(dm) == 1 and dm["DOMAIN"][0] == "DM"
    # The same snapshot, written again, gives the same archive.
    in_tenant(world.alpha)
    ExportJob.objects.filter(pk=job_id).update(status="failed")
    connection.set_schema_to_public()
    again = _run(world, in_tenant, job_id)
    assert again.manifest["files"][0]["sha256"] == state["files"][0]["sha256"]


def test_on_s3_the_link_redirects_to_a_short_presigned_url_with_the_same_bytes(exported, world, in_tenant,
                                                                               s3_settings):
    """Export files in a real S3 endpoint (moto's server): stored there, private, and the
    download link answers with a presigned URL after the role check and the audit."""
    import urllib.request

    manager = exported["manager"]
    job_id = manager.post(f"/api/v1/studies/{exported['study']}/exports/", {"formats": ["csv_long"]},
                          format="json").json()["id"]
    _run(world, in_tenant, job_id)
    state = manager.get(f"/api/v1/exports/{job_id}/").json()
    file = state["files"][0]
    key = f"exports/{world.alpha.schema_name}/{job_id}/{file['name']}"
    stored = s3_settings.client.get_object(Bucket=s3_settings.bucket, Key=key)
    assert stored["ServerSideEncryption"] == "AES256"
    link = manager.post(f"/api/v1/exports/{job_id}/files/{file['id']}/link/").json()["url"]
    response = manager.get(link)
    assert response.status_code == 302 and response["Cache-Control"] == "no-store"
    assert "X-Amz-Expires=60" in response["Location"]
    with urllib.request.urlopen(response["Location"]) as fetched:  # noqa: S310 (the test's own S3 endpoint)
        assert hashlib.sha256(fetched.read()).hexdigest() == file["sha256"]
    in_tenant(world.alpha)
    assert AuditEvent.objects.filter(action="export_download", detail__export=job_id).count() == 1


def test_every_tabular_format_in_one_job_holds_the_same_values(exported, world, in_tenant):
    import zipfile

    import openpyxl
    import pyarrow.parquet as pq

    manager = exported["manager"]
    job_id = manager.post(f"/api/v1/studies/{exported['study']}/exports/",
                          {"formats": ["csv_long", "csv_wide", "xlsx", "parquet"]}, format="json").json()["id"]
    _run(world, in_tenant, job_id)
    state = manager.get(f"/api/v1/exports/{job_id}/").json()
    assert state["status"] == "done" and len(state["files"]) == 4
    long_rows = list(csv.DictReader(io.StringIO(_download(manager, state, "long.csv").decode())))
    table = pq.read_table(io.BytesIO(_download(manager, state, "long.parquet"))).to_pylist()
    assert [(r["item"], r["value"] or "") for r in table] == [(r["item"], r["value"]) for r in long_rows]
    book = openpyxl.load_workbook(io.BytesIO(_download(manager, state, "long.xlsx")), read_only=True)
    sheet_rows = list(book["long_1"].iter_rows(values_only=True))[1:]
    assert [(r[9], r[11] or "") for r in sheet_rows] == [(r["item"], r["value"]) for r in long_rows]
    wide = zipfile.ZipFile(io.BytesIO(_download(manager, state, "wide.zip")))
    vitals = list(csv.DictReader(io.StringIO(wide.read("VITALS.csv").decode())))
    assert len(vitals) == 1 and vitals[0]["height"] == "170" and vitals[0]["meds.med_name_2"] == "Metformin, XR"


def test_a_job_already_running_elsewhere_is_not_run_twice(exported, world, in_tenant):
    """A manual retry and Celery's own retry must not write the same job at once: the
    second run finds the job's lock held (here by another database session) and leaves it."""
    import psycopg2
    from django.conf import settings

    from exports.services import export_run

    job_id = exported["manager"].post(f"/api/v1/studies/{exported['study']}/exports/", {"formats": ["csv_long"]},
                                      format="json").json()["id"]
    db = settings.DATABASES["default"]
    other = psycopg2.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], password=db["PASSWORD"],
                             dbname=connection.settings_dict["NAME"])
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(('x' || substr(md5(%s), 1, 16))::bit(64)::bigint)",
                           [f"suifang:export:{world.alpha.schema_name}:{job_id}"])
        in_tenant(world.alpha)
        job = export_run(job_id=job_id)
        assert job.status == "queued" and job.attempts == 0 and not job.files.exists()
    finally:
        other.close()  # the lock goes with the session
    job = export_run(job_id=job_id)
    assert job.status == "done" and job.attempts == 1


def test_a_file_being_written_reports_its_size_on_the_job(exported, world, in_tenant, monkeypatch):
    """A single large file would otherwise show no progress until it is finished: while
    it is written, the job's state says which file and how large it is so far."""
    import time

    from django.core.cache import cache

    from exports import extract, services

    monkeypatch.setattr(services, "FILE_PROGRESS_EVERY", 0.05)
    manager_id = world.users["data_manager@alpha.example.org"].pk
    in_tenant(world.alpha)
    job = ExportJob.objects.create(study_id=exported["study"], requested_by_id=manager_id, formats=["csv_long"],
                                   status="running", rows_done=10, rows_total=40)
    seen: list[dict[str, Any]] = []

    def slow_writer(scope: Any, out: Any) -> int:
        for _chunk in range(3):
            out.write(b"x" * 300_000)
            out.flush()
            time.sleep(0.3)
            seen.append(services.job_state(job))
        return 3

    written = services._write_file(job, connection.schema_name, "long.csv", "csv_wide", slow_writer,
                                   extract.ExportScope(study_id=exported["study"]))
    assert written.size == 900_000 and written.rows == 3
    sizes = [state["writing"]["bytes"] for state in seen if state["writing"]]
    assert sizes and sizes == sorted(sizes) and sizes[-1] >= 600_000  # it grows as the file does
    assert {state["writing"]["file"] for state in seen if state["writing"]} == {"long.csv"}
    assert all((state["rows_done"], state["rows_total"]) == (10, 40) for state in seen if state["writing"])
    cache.delete(services.progress_key(connection.schema_name, job.pk))
