"""Bulk import of subjects from CSV and XLSX: row-level errors, all-or-nothing, valid rows
only, idempotent re-upload, in-file duplicates, encodings, limits and 10,000 rows."""

from __future__ import annotations

import csv
import datetime as dt
import io
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from openpyxl import Workbook

from config.errors import DomainError, PermissionDenied
from sites import services as site_services
from studies import imports, services
from studies.import_tasks import progress_key
from studies.imports import subjects_import
from studies.models import FollowUpTask, Subject, SubjectImportRow
from tenants.models import TenantMembership
from tests.studies.test_enrolment import event
from tests.studies.test_studies_api import _active_site

pytestmark = pytest.mark.django_db

# The sites here are in Asia/Shanghai, and "today" is theirs (the server keeps dates by
# the site's time zone): from 16:00 UTC it is already tomorrow there.
TODAY = dt.datetime.now(ZoneInfo("Asia/Shanghai")).date()
CONSENT = (TODAY - dt.timedelta(days=20)).isoformat()
HEADER = ["site", "arm", "consent_date", "name", "phone", "national_id", "external_ref"]


@pytest.fixture
def setup(world, in_tenant, email_of):  # type: ignore[no-untyped-def]
    """Alpha with active sites S1 and S2, an active study with arms A and B; the
    coordinator works at S1 only."""
    in_tenant(world.alpha)
    s1, s2 = _active_site("S1"), _active_site("S2")
    coordinator = world.users[email_of("coordinator", "alpha")]
    site_services.site_staff_assign(site=s1, tenant=world.alpha, user=coordinator, role="coordinator",
                                    is_primary=True)
    study = services.study_create(code="IMP", title="Import", study_type="registry", target_enrolment=100000,
                                  arms=[("A", "Arm A"), ("B", "Arm B")])
    services.schedule_publish(version=services.schedule_draft_save(
        study=study, events=[event("D7", 7), event("D30", 30)]))
    study = services.study_activate(study=study)

    def membership(role: str) -> TenantMembership:
        return TenantMembership.objects.get(tenant=world.alpha, user=world.users[email_of(role, "alpha")])

    return {"study": study, "s1": s1, "s2": s2, "admin": membership("tenant_admin"),
            "coordinator": membership("coordinator"), "viewer": membership("viewer")}


def _nid(i: int) -> str:
    return f"1101011990{i:08d}"


def _row(i: int, **extra: str) -> dict[str, str]:
    return {"site": "S1", "arm": "A", "consent_date": CONSENT, "name": f"病人{i}", "phone": f"138{i:08d}",
            "national_id": _nid(i), "external_ref": f"MRN-{i}", **extra}


def _csv(rows: list[dict[str, str]], header: list[str] = HEADER, encoding: str = "utf-8-sig") -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode(encoding)


def _run(setup, content: bytes, name: str = "subjects.csv", role: str = "admin", **kw):  # type: ignore[no-untyped-def]
    return subjects_import(study=setup["study"], file_name=name, content=content, membership=setup[role], **kw)


def test_csv_import_enrols_every_row_with_ids_tasks_and_encrypted_pii(setup):
    report = _run(setup, _csv([_row(1), _row(2), _row(3, site="S2", arm="")]))
    assert report.ok and report.imported == 3 and report.total_rows == 3
    subjects = Subject.objects.order_by("pk")
    assert [s.subject_code for s in subjects] == ["S1-0001", "S1-0002", "S2-0001"]
    assert subjects[0].name == "病人1" and subjects[0].arm.code == "A" and subjects[2].arm is None
    assert FollowUpTask.objects.count() == 6
    assert SubjectImportRow.objects.filter(file_sha256=report.fingerprint).count() == 3
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT phone FROM studies_subject LIMIT 1")
        assert "138" not in cursor.fetchone()[0]


def test_xlsx_with_chinese_headers_and_excel_dates(setup):
    workbook = Workbook()
    sheet = workbook.active
    sheet.append(["中心编号", "组别", "知情同意日期", "姓名", "手机号", "身份证号", "病历号", "备注"])
    consent = dt.datetime.combine(TODAY - dt.timedelta(days=3), dt.time())
    sheet.append(["S1", "B", consent, "张三", 13900000001, _nid(1), "X1", "ignored"])
    sheet.append(["s2", None, (TODAY - dt.timedelta(days=2)).isoformat(), "李四", "13900000002", _nid(2), "X2", ""])
    sheet.append([None] * 8)  # blank rows are skipped
    buffer = io.BytesIO()
    workbook.save(buffer)
    report = _run(setup, buffer.getvalue(), name="subjects.xlsx")
    assert report.ok, report.errors
    assert report.imported == 2
    first = Subject.objects.get(subject_code="S1-0001")
    assert first.consent_date == consent.date() and first.phone == "13900000001" and first.arm.code == "B"


def test_row_errors_have_row_numbers_and_nothing_is_imported(setup):
    rows = [_row(1), _row(2, consent_date="2999-01-01"), _row(3, phone="call me", site="NOPE"), _row(4),
            _row(5, arm="Z", national_id="!!"), _row(6, consent_date="")]
    report = _run(setup, _csv(rows))
    found = {(e["row"], e["field"]) for e in report.errors}
    # Consent in the future: enrolment (today by default) then precedes it, as subject_enrol says.
    assert found == {(2, "consent_date"), (2, "enrolment_date"), (3, "phone"), (3, "site"),
                     (5, "arm"), (5, "national_id"), (6, "consent_date")}
    assert all(e["message"] for e in report.errors)
    assert report.imported == 0 and not Subject.objects.exists() and not SubjectImportRow.objects.exists()


def test_valid_rows_only_imports_the_good_ones_and_reports_the_rest(setup):
    rows = [_row(1), _row(2, phone="call me"), _row(3)]
    report = _run(setup, _csv(rows), valid_rows_only=True)
    assert report.imported == 2 and [e["row"] for e in report.errors] == [2]
    assert sorted(Subject.objects.values_list("subject_code", flat=True)) == ["S1-0001", "S1-0002"]
    # After fixing row 2, the whole file again: only row 2 is new.
    again = _run(setup, _csv([_row(1), _row(2), _row(3)]))
    assert again.ok and again.imported == 1 and again.already_imported == [1, 3]
    assert Subject.objects.count() == 3


def test_reupload_of_the_same_file_imports_nothing_new(setup):
    content = _csv([_row(1), _row(2)])
    assert _run(setup, content).imported == 2
    again = _run(setup, content)
    assert again.ok and again.imported == 0 and again.already_imported == [1, 2]
    assert Subject.objects.count() == 2 and SubjectImportRow.objects.count() == 2
    # Rows without external_ref or national ID are keyed by their content.
    bare = _csv([{"site": "S1", "consent_date": CONSENT, "name": "无证件"}])
    assert _run(setup, bare).imported == 1 and _run(setup, bare).already_imported == [1]
    assert Subject.objects.count() == 3


def test_national_id_already_enrolled_outside_the_import_is_a_row_error(setup):
    services.subject_enrol(study=setup["study"], site=setup["s1"], consent_date=TODAY, national_id=_nid(2))
    report = _run(setup, _csv([_row(1), _row(2)]))
    assert [(e["row"], e["field"]) for e in report.errors] == [(2, "national_id")]
    assert "already enrolled" in report.errors[0]["message"] and Subject.objects.count() == 1


def test_duplicates_inside_the_file_are_row_errors(setup):
    rows = [_row(1), _row(2, national_id=_nid(1)), _row(3, external_ref="MRN-1", national_id=_nid(3)),
            _row(4, national_id="110101 19900101 0004"), _row(5, national_id="11010119900101 0004")]
    report = _run(setup, _csv(rows))
    assert {(e["row"], e["field"]) for e in report.errors} == {(2, "national_id"), (3, "external_ref"),
                                                               (5, "national_id")}
    assert "row 1" in next(e["message"] for e in report.errors if e["row"] == 2)
    assert not Subject.objects.exists()


def test_gb18030_csv_from_chinese_excel(setup):
    content = _csv([{"中心": "S1", "知情同意日期": CONSENT, "姓名": "欧阳娜娜", "身份证号码": _nid(9)}],
                   header=["中心", "知情同意日期", "姓名", "身份证号码"], encoding="gb18030")
    with pytest.raises(UnicodeDecodeError):
        content.decode("utf-8")
    report = _run(setup, content)
    assert report.ok and report.imported == 1
    assert Subject.objects.get().name == "欧阳娜娜"


def test_site_scoping_and_roles(setup):
    report = _run(setup, _csv([_row(1), _row(2, site="S2")]), role="coordinator")
    assert [(e["row"], e["field"]) for e in report.errors] == [(2, "site")]
    with pytest.raises(PermissionDenied):
        _run(setup, _csv([_row(1)]), role="viewer")
    assert not Subject.objects.exists()


def test_files_too_big_too_long_or_unreadable_are_refused(setup, monkeypatch):
    with pytest.raises(DomainError) as too_big:
        _run(setup, b"site,consent_date\n" + b"x" * (20 * 1024 * 1024))
    assert too_big.value.code == "import_too_large" and "file" in too_big.value.fields
    monkeypatch.setattr(imports, "MAX_ROWS", 5)
    with pytest.raises(DomainError) as too_long:
        _run(setup, _csv([_row(i) for i in range(6)]))
    assert too_long.value.code == "import_too_many_rows"
    assert _run(setup, _csv([_row(i) for i in range(5)])).imported == 5
    with pytest.raises(DomainError) as bad_header:
        _run(setup, _csv([{"name": "x"}], header=["name"]))
    assert bad_header.value.code == "import_bad_header"
    with pytest.raises(DomainError) as not_xlsx:
        _run(setup, b"PK\x03\x04garbage", name="s.xlsx")
    assert not_xlsx.value.code == "import_unreadable"


def test_the_default_row_limit_is_50000(setup):
    assert imports.MAX_ROWS == 50_000
    content = _csv([{"site": "S1", "consent_date": CONSENT}] * 50_001, header=["site", "consent_date"])
    with pytest.raises(DomainError) as too_long:
        _run(setup, content)
    assert too_long.value.code == "import_too_many_rows"


def test_ten_thousand_rows_with_progress(setup):
    calls: list[tuple[int, int]] = []
    rows = [_row(i, site="S1" if i % 2 else "S2") for i in range(10_000)]
    report = _run(setup, _csv(rows), progress=lambda done, total: calls.append((done, total)))
    assert report.ok and report.imported == 10_000
    assert Subject.objects.count() == 10_000 and FollowUpTask.objects.count() == 20_000
    assert Subject.objects.filter(site=setup["s2"]).order_by("-subject_code").first().subject_code == "S2-5000"
    assert calls[0] == (500, 10_000) and calls[-1] == (10_000, 10_000) and len(calls) == 21


def test_celery_task_stores_progress_and_report_in_cache(setup, settings):
    from django.core.cache import cache
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from studies.import_tasks import subjects_import_task

    path = default_storage.save("imports/subjects.csv", ContentFile(_csv([_row(1), _row(2)])))
    result = subjects_import_task.apply(args=[setup["study"].pk, path, setup["admin"].pk, False], task_id="t-1")
    assert result.get()["state"] == "done"
    stored = cache.get(progress_key(connection.schema_name, "t-1"))
    assert stored["state"] == "done" and stored["report"]["imported"] == 2
    assert Subject.objects.count() == 2


def test_an_index_date_far_from_enrolment_is_a_row_error(setup):
    header = [*HEADER, "index_date"]
    rows = [_row(1, index_date="9999-12-01"), _row(2, index_date="0001-01-01"),
            _row(3, index_date=(TODAY - dt.timedelta(days=400)).isoformat())]
    report = _run(setup, _csv(rows, header=header), valid_rows_only=True)
    assert [(e["row"], e["field"]) for e in report.errors] == [(1, "index_date"), (2, "index_date")]
    assert report.imported == 1 and Subject.objects.get().index_date == TODAY - dt.timedelta(days=400)


def _zip(files: dict[str, bytes]) -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _damaged_workbooks() -> dict[str, bytes]:
    """A workbook whose workbook.xml is not XML (lxml refuses it on opening), and one whose
    sheet is cut off mid-row (xml.etree refuses it while the rows are read)."""
    import zipfile

    workbook = Workbook()
    workbook.active.append(["site", "consent_date"])
    buffer = io.BytesIO()
    workbook.save(buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        parts = {name: archive.read(name) for name in archive.namelist()}
    return {
        "bad_workbook.xlsx": _zip({**parts, "xl/workbook.xml": b"<<<"}),
        "cut_sheet.xlsx": _zip({**parts, "xl/worksheets/sheet1.xml": b"<worksheet><sheetData><row><c t='s'><v>x"}),
    }


@pytest.mark.parametrize("name", ["bad_workbook.xlsx", "cut_sheet.xlsx"])
def test_a_damaged_xlsx_is_a_file_error(setup, name):
    with pytest.raises(DomainError) as refused:
        _run(setup, _damaged_workbooks()[name], name=name)
    assert refused.value.code == "import_unreadable"
    assert refused.value.fields == {"file": ["The file is not a readable XLSX workbook."]}


@pytest.mark.parametrize("name", ["bad_workbook.xlsx", "cut_sheet.xlsx"])
def test_a_damaged_xlsx_is_refused_on_the_page_and_the_api(api, web, world, email_of, trial, name):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from tests.studies.test_subject_web import _page

    content = _damaged_workbooks()[name]
    page = _page(web, world, email_of("coordinator", "alpha"))
    page.raise_request_exception = False
    response = page.post("/subjects/import/", {"study": trial["study"], "file": SimpleUploadedFile(name, content)})
    assert response.status_code == 400
    assert "The file is not a readable XLSX workbook." in response.content.decode()
    client = api(world.alpha, email_of("coordinator", "alpha"))
    client.raise_request_exception = False
    response = client.post(f"/api/v1/studies/{trial['study']}/imports/", {"file": SimpleUploadedFile(name, content)},
                           format="multipart")
    assert response.status_code == 400 and "file" in response.json()["error"]["fields"]


def test_the_import_report_is_in_the_language_of_the_upload_not_the_workers(web, world, email_of, trial, in_tenant):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.utils import translation

    from studies.import_tasks import subjects_import_task
    from tests.studies.test_subject_web import _page

    page = _page(web, world, email_of("coordinator", "alpha"))  # reads English
    rows = f"site,consent_date\nS9,{TODAY.isoformat()}\n".encode()
    started = page.post("/subjects/import/", {"study": trial["study"], "file": SimpleUploadedFile("s.csv", rows)})
    job_id = started["Location"].rstrip("/").rsplit("/", 1)[1]
    in_tenant(world.alpha)
    membership = TenantMembership.objects.get(tenant=world.alpha, user=world.users[email_of("coordinator", "alpha")])
    with translation.override("zh-hans"):  # the worker's default language
        english = "No such site, or it is not one of yours."
        assert translation.gettext(english) != english
        subjects_import_task.apply(args=[trial["study"], f"imports/{world.alpha.schema_name}/{job_id}.csv",
                                         membership.pk, False], task_id=job_id)
    connection.set_schema_to_public()
    assert english in page.get(started["Location"]).content.decode()


def test_the_import_jobs_own_failure_messages_are_translated(setup, monkeypatch):
    from django.core.cache import cache
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from studies import import_tasks

    monkeypatch.setattr(import_tasks, "_", lambda text: f"[{text}]")  # marks what goes through gettext

    def run(membership_id: int, job: str) -> dict:
        path = default_storage.save("imports/subjects.csv", ContentFile(_csv([_row(1)])))
        import_tasks.subjects_import_task.apply(args=[setup["study"].pk, path, membership_id, False], task_id=job)
        return cache.get(progress_key(connection.schema_name, job))["error"]

    assert run(999_999_999, "gone")["message"] == "[The member who started this import is no longer active.]"
    monkeypatch.setattr(import_tasks, "subjects_import", lambda **kw: 1 / 0)
    assert run(setup["admin"].pk, "crash")["message"] == "[An unexpected error stopped the import.]"
