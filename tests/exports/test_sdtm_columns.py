"""The SDTM findings by columns (exports.sdtm_columns, cells flattened by PostgreSQL) write
the same bytes as the Python path (every value through exports.sdtm) for the same study.

The study is written straight into the tables, so it holds what validation would never
let through a form but a database may still hold (older versions, imports, hand fixes):
numbers with trailing zeros, more digits than a double keeps, more decimals than the
item's precision, exponents, huge integers, text and yes/no in number items, missing-data
codes with and without a value. Subjects sit at three sites whose codes put USUBJID in
another order than the subject codes; visits include repeats and unscheduled ones."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from exports import extract
from exports.records import DatasetSpec
from exports.sdtm import SdtmError, sdtm_check, sdtm_write
from exports.xpt import XptError

pytestmark = pytest.mark.django_db

SNAPSHOT = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
LABEL = {"en": "x", "zh-hans": "x"}


def _item(code: str, kind: str, domain: str, testcd: str, **extra: Any) -> dict[str, Any]:
    cdisc = {"domain": domain, "variable": f"{domain}ORRES", "testcd": testcd, "test": f"Test {testcd}"}
    return {"code": code, "type": kind, "label": {"en": f"Item {code}", "zh-hans": code}, "cdisc": cdisc, **extra}


FINDINGS_FORM: dict[str, Any] = {
    "code": "VSF", "title": {"en": "Vital signs", "zh-hans": "生命体征"},
    "code_lists": {"SCORE": [{"value": v, "labels": {"en": f"Score {v}", "zh-hans": v}} for v in ("0", "1", "2", "x")],
                   "SYM": [{"value": "a", "labels": LABEL}, {"value": "b", "labels": {"en": "Fever"}}]},
    "items": [
        _item("w", "decimal", "VS", "WEIGHT", unit="kg"),
        {"code": "plain", "type": "text", "label": LABEL},
        _item("t", "decimal", "VS", "TEMP", unit="C", precision=1),
        _item("hr", "integer", "VS", "HR"),
        _item("p2", "decimal", "LB", "GLUC", unit="mmol/L", precision=2),
        _item("p0", "decimal", "LB", "CREAT", precision=0),
        _item("note", "text", "LB", "NOTE"),
        _item("yn", "yes_no", "LB", "FAST"),
        _item("sc", "single_choice", "QS", "SC1", code_list="SCORE"),
        _item("mc", "multiple_choice", "QS", "MC1", code_list="SYM"),
        {"code": "ae", "type": "group", "label": LABEL, "items": [
            {"code": "term", "type": "text", "label": LABEL, "cdisc": {"domain": "AE", "variable": "AETERM"}},
            {"code": "start", "type": "date", "label": LABEL, "partial": True,
             "cdisc": {"domain": "AE", "variable": "AESTDTC"}}]},
    ],
}
QS_FORM: dict[str, Any] = {
    "code": "QSF", "title": {"en": "Pain questionnaire", "zh-hans": "疼痛"},
    "code_lists": {"SCORE": FINDINGS_FORM["code_lists"]["SCORE"]},
    "items": [_item("pain", "scale", "QS", "PAIN", scale={"min": 0, "max": 10, "step": 1}),
              _item("sc", "single_choice", "QS", "SC1", code_list="SCORE"),
              _item("w", "decimal", "VS", "WEIGHT", unit="kg")],
}
# Values as JSON text, so that PostgreSQL keeps exactly these digits.
NUMBERS = ["72.5", "72.50", "100.0", "0.30000000000000004", "1e-07", "1e+20", "-3.25", "12.345",
           "1234567890123.1", "0", "-0.0", "5", "12345678901234567890", "1.5E3", "3.14159265358979",
           "0.1000000000000000055511151231257827", "99999999999999.9", "0.5", "7.0000", "-0.001"]
ODD = ["true", "false", '"abc"', '"12.5"', "null", '["a"]', '{"name": "f.pdf"}']
SITES = ("B", "A", "C")  # site B's subjects come first by code, last but one by USUBJID


def _value(seed: int) -> str:
    pool = NUMBERS + ODD if seed % 4 == 0 else NUMBERS
    return pool[seed % len(pool)]


def _entry_values(form: str, seed: int) -> tuple[dict[str, str], dict[str, str]]:
    """(item code -> JSON text, item code -> missing code JSON text) for one entry."""
    if form == "QSF":
        values = {"pain": str(seed % 11), "sc": json.dumps(("0", "1", "2", "x", "9")[seed % 5]), "w": _value(seed + 3)}
        missing = {"w": '"UNK"'} if seed % 7 == 0 else {}
        if seed % 6 == 0:
            del values["w"]
        return values, missing
    values = {"w": _value(seed), "plain": json.dumps(f"text {seed}"), "t": _value(seed + 1), "hr": _value(seed + 2),
              "p2": _value(seed + 5), "p0": _value(seed + 9),
              "note": json.dumps(("fine", "", "无不适", "ok")[seed % 4]),
              "yn": ("true", "false", '"1"', '"0"')[seed % 4], "sc": json.dumps(("0", "1", "2", "x")[seed % 4]),
              "mc": json.dumps([["a"], ["a", "b"], []][seed % 3]),
              "ae": json.dumps([{"term": f"Headache {seed}", "start": "2026-0" + str(1 + seed % 9)}]
                               if seed % 3 == 0 else [])}
    missing: dict[str, str] = {}
    if seed % 5 == 0:
        del values["w"]
        missing["w"] = '"UNK"'
    if seed % 5 == 1:
        values["hr"] = "null"
        missing["hr"] = '"NA"'
    if seed % 5 == 2:
        missing["t"] = '"ASKU"'  # a value and a code: the value is the finding
    if seed % 5 == 3:
        del values["p2"]
        missing["p2"] = "null"  # a code of null: not collected
    if seed % 5 == 4:
        del values["p0"]
        missing["p0"] = '"XYZ"'  # a code outside the standard ones
    return values, missing


def _build(world: Any, in_tenant: Any, subjects: int = 14) -> dict[str, Any]:
    from ecrf import services as ecrf_services
    from ecrf.models import FormVersion
    from sites.models import Site
    from studies.models import FollowUpTask, ScheduleStatus, ScheduleVersion, Study, StudyStatus, Subject
    from tenants.models import User

    in_tenant(world.alpha)
    sites = [Site.objects.create(code=code, name=f"Site {code}", institution="H", country_region="CN",
                                 principal_investigator="Dr", target_enrolment=100, time_zone="Asia/Shanghai",
                                 status="active") for code in SITES]
    study = Study.objects.create(code="COL", title="Columns", study_type="registry", status=StudyStatus.ACTIVE,
                                 target_enrolment=100)
    events = [{"code": code, "name_en": f"Visit {code}", "name_zh": code, "anchor": "enrolment",
               "anchor_event": None, "offset": {"amount": 30 * n, "unit": "day"}, "window_before": 7,
               "window_after": 7, "mode": "clinic", "forms": ["VSF", "QSF"], "repeat_every": None,
               "repeat_until": None} for n, code in enumerate(("V1", "V2", "V3"), start=1)]
    ScheduleVersion.objects.create(study=study, number=1, status=ScheduleStatus.PUBLISHED, events=events,
                                   published_at=SNAPSHOT)
    admin = User.objects.filter(is_superuser=False).first()
    actor = ecrf_services.Actor(user_id=admin.pk if admin else None, label="test", role="data_manager")
    versions = {}
    for definition in (FINDINGS_FORM, QS_FORM):
        version = ecrf_services.form_draft_save(study=study, definition=definition, actor=actor)
        versions[definition["code"]] = ecrf_services.form_publish(version=version, actor=actor)
    start = date(2026, 1, 5)
    seed = 0
    rows = []
    for number in range(subjects):
        site = sites[number % len(sites)]
        enrolled = start + timedelta(days=number)
        subject = Subject.objects.create(study=study, site=site, subject_code=f"{'ZYX'[number % 3]}-{number:03d}",
                                         status=("enrolled", "completed", "withdrawn")[number % 3],
                                         consent_date=enrolled, enrolment_date=enrolled)
        plan = [("V1", 1, False, 0), ("V2", 1, False, 30), ("V3", 1, False, 60)]
        if number % 2:
            plan += [("V2", 2, False, 40), ("UNS", 1, True, 45)]
        if number % 4 == 3:
            plan += [("V9", 1, False, 50)]  # an event the schedule does not know
        for event, sequence, unscheduled, offset in plan:
            day = enrolled + timedelta(days=offset)
            done = (number + offset) % 5 != 0
            task = FollowUpTask.objects.create(
                subject=subject, study=study, site=site, event_code=event, sequence=sequence,
                unscheduled=unscheduled, target_date=day, window_open=day, window_close=day,
                status="completed" if done else "upcoming", completed_on=day if done else None)
            for form in ("VSF", "QSF"):
                seed += 1
                if seed % 9 == 0:
                    continue  # a form not entered at this visit
                values, missing = _entry_values(form, seed * 5 + number)  # both parities for each form
                rows.append((subject.pk, task.pk, versions[form].form_id, versions[form].pk,
                             "{" + ", ".join(f'"{k}": {v}' for k, v in values.items()) + "}",
                             "{" + ", ".join(f'"{k}": {v}' for k, v in missing.items()) + "}"))
    with connection.cursor() as cursor:
        cursor.executemany(
            """INSERT INTO ecrf_entry (subject_id, task_id, form_id, form_version_id, status, values, missing,
                                       item_versions, verified, version, locked, created, updated)
               VALUES (%s, %s, %s, %s, 'complete', %s::jsonb, %s::jsonb, '{}', '{}', 1, false, now(), now())""",
            rows)
    assert FormVersion.objects.filter(form__study=study).count() == 2
    return {"study": study, "sites": sites}


def _write(scope: extract.ExportScope, directory: Path, *, columns: bool, ascii_only: bool = False,
           ) -> tuple[list[DatasetSpec], dict[str, bytes]]:
    data = extract.study_data(scope, snapshot_at=SNAPSHOT)
    if not columns:
        data = dataclasses.replace(data, sdtm_source=None)
    directory.mkdir()
    specs = sdtm_write(data, studyid="COL", directory=directory, ascii_only=ascii_only)
    return specs, {spec.file_name: (directory / spec.file_name).read_bytes() for spec in specs}


@pytest.fixture
def study(world, in_tenant):  # type: ignore[no-untyped-def]
    return _build(world, in_tenant)


def _spy_groups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Read groups of at least 10 entries (several per study), and count each group's entries."""
    monkeypatch.setattr(extract, "GROUP_ENTRIES", 10)
    groups: list[int] = []
    real = extract._cell_chunk

    def cell_chunk(group: Any, items: Any) -> Any:
        groups.append(len(group))
        return real(group, items)

    monkeypatch.setattr(extract, "_cell_chunk", cell_chunk)
    return groups


def test_columns_write_the_same_bytes_as_the_python_path(study, tmp_path, monkeypatch):
    groups = _spy_groups(monkeypatch)
    scope = extract.ExportScope(study_id=study["study"].pk)
    python_specs, python_files = _write(scope, tmp_path / "python", columns=False)
    assert groups == []  # the Python path reads no cells
    column_specs, column_files = _write(scope, tmp_path / "columns", columns=True)
    assert len(groups) > 5 and min(groups[:-1]) >= 10  # whole subjects, at least 10 entries a group
    assert column_specs == python_specs
    assert set(column_files) == {"dm.xpt", "sv.xpt", "ds.xpt", "ae.xpt", "vs.xpt", "lb.xpt", "qs.xpt"}
    for name, content in python_files.items():
        assert column_files[name] == content, name
    rows = {spec.name: spec.rows for spec in column_specs}
    assert rows["VS"] > 100 and rows["LB"] > 100 and rows["QS"] > 100


def test_the_column_rows_pass_the_checks_and_read_back_as_the_python_rows(study, tmp_path):
    import pyreadstat

    scope = extract.ExportScope(study_id=study["study"].pk)
    specs, _ = _write(scope, tmp_path / "columns", columns=True)
    from exports.sdtm import sdtm_build

    data = extract.study_data(scope, snapshot_at=SNAPSHOT)
    built = [(spec, list(rows)) for spec, rows in sdtm_build(data, studyid="COL")]
    assert sdtm_check(built) == []
    python = {spec.name: list(rows) for spec, rows in sdtm_build(
        dataclasses.replace(extract.study_data(scope, snapshot_at=SNAPSHOT), sdtm_source=None), studyid="COL")}
    for spec, rows in built:
        assert rows == python[spec.name], spec.name  # the tuples too (sdtm_check, other consumers)
    vs = next(rows for spec, rows in built if spec.name == "VS")
    frame, meta = pyreadstat.read_xport(str(tmp_path / "columns" / "vs.xpt"))
    assert meta.number_rows == len(vs) == next(spec.rows for spec in specs if spec.name == "VS")
    orres = list(frame["VSORRES"])
    assert orres == [row[6] for row in vs]
    # Written as the Python path writes them (exports.sdtm._entry_findings): as entered
    # ("72.50" -> 72.5), padded to a precision ("100.0" at 1), rounded as Python rounds
    # ("-3.25" at 1), exponents spelled out, long numbers, yes/no and text through Python.
    assert {"72.5", "100.0", "-3.2", "1500", "100000000000000000000", "0.30000000000000004", "12345678901234567890",
            "Y", "N", "abc"} <= set(orres)


def test_a_scope_narrowed_to_sites_gives_the_same_bytes(study, tmp_path):
    scope = extract.ExportScope(study_id=study["study"].pk, sites=(study["sites"][0].pk, study["sites"][2].pk))
    _, python_files = _write(scope, tmp_path / "python", columns=False)
    _, column_files = _write(scope, tmp_path / "columns", columns=True)
    assert column_files == python_files


def test_a_value_over_200_bytes_is_refused_the_same_way(study, tmp_path):
    from ecrf.models import Entry

    entry = Entry.objects.filter(form__code="VSF").order_by("pk")[3]
    entry.values = {**entry.values, "note": "长" * 70}  # 210 bytes in UTF-8
    entry.save(update_fields=["values"])
    scope = extract.ExportScope(study_id=study["study"].pk)
    messages = []
    for columns in (False, True):
        with pytest.raises(SdtmError) as refused:
            _write(scope, tmp_path / f"run-{columns}", columns=columns)
        messages.append(str(refused.value))
    assert messages[0] == messages[1]
    assert "LB, USUBJID COL-" in messages[0] and "LBORRES" in messages[0] and "210 bytes" in messages[0]


def test_ascii_only_refuses_chinese_text_the_same_way(study, tmp_path):
    scope = extract.ExportScope(study_id=study["study"].pk)
    messages = []
    for columns in (False, True):
        with pytest.raises(XptError) as refused:
            _write(scope, tmp_path / f"run-{columns}", columns=columns, ascii_only=True)
        messages.append(str(refused.value))
    assert messages[0] == messages[1] and "not ASCII" in messages[0]


def test_the_sdtm_export_run_uses_the_columns(study, tmp_path, monkeypatch):
    """The export service's SDTM file goes through the column path, and holds what the
    Python path writes."""
    from exports.models import ExportFile, ExportJob
    from exports.services import export_run
    from exports.storage import export_storage
    from tenants.models import User

    groups = _spy_groups(monkeypatch)
    requester = User.objects.filter(is_superuser=False).first()
    job = ExportJob.objects.create(study=study["study"], requested_by=requester, formats=["sdtm"], filters={})
    job = export_run(job_id=job.pk)
    assert job.status == "done", job.error
    assert len(groups) > 5
    file = ExportFile.objects.get(job=job)
    with export_storage().open(file.storage_name, "rb") as stored, zipfile.ZipFile(stored) as archive:
        written = {name: archive.read(name) for name in archive.namelist() if name.endswith(".xpt")}
    job.refresh_from_db()
    scope = extract.ExportScope(study_id=study["study"].pk)
    data = dataclasses.replace(extract.study_data(scope, snapshot_at=job.snapshot_at), sdtm_source=None)
    (tmp_path / "python").mkdir()
    specs = sdtm_write(data, studyid="COL", directory=tmp_path / "python")
    assert written == {spec.file_name: (tmp_path / "python" / spec.file_name).read_bytes() for spec in specs}


class _FailingFile:
    """A file that takes `room` bytes, then fails as a full disk does."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.written = 0

    def write(self, data: bytes) -> int:
        if self.written + len(data) > self.room:
            raise OSError(28, "No space left on device")
        self.written += len(data)
        return len(data)

    def tell(self) -> int:
        return self.written

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("room", [0, 100, 70_000])
def test_a_zip_entry_written_beside_raises_its_failure_to_the_writer(room):
    """The ZIP entry deflated on a thread (exports.services._ZipEntryBeside) hands a write
    failure back to the writer, wherever it happens (on a block, or on closing the
    entry): the export fails instead of hanging or writing a truncated archive."""
    import os
    import zipfile

    from exports.services import _zip_info, _ZipEntryBeside

    file = _FailingFile(room)
    archive = zipfile.ZipFile(file, "w")  # type: ignore[arg-type]
    data = os.urandom(1 << 16)  # does not deflate: every block reaches the file
    with pytest.raises(OSError, match="No space left"), _ZipEntryBeside(archive, _zip_info("vs.xpt")) as entry:
        for _ in range(8):
            entry.write(data)
        entry.flush()
    file.room = 1 << 30  # room again, so that the archive closes here rather than in the collector
    archive.close()


def test_groups_without_findings_values_give_the_same_bytes(study, tmp_path, monkeypatch):
    """Groups of entries with no findings value at all (a new site's subjects, only
    screening forms entered) are read as empty groups, not refused: the bytes match."""
    from ecrf.models import Entry

    monkeypatch.setattr(extract, "GROUP_ENTRIES", 10)
    first_site = study["sites"][1]  # site "A": its subjects come first by USUBJID
    Entry.objects.filter(subject__site=first_site).update(values={}, missing={})
    scope = extract.ExportScope(study_id=study["study"].pk)
    _, python_files = _write(scope, tmp_path / "python", columns=False)
    _, column_files = _write(scope, tmp_path / "columns", columns=True)
    assert column_files == python_files
    Entry.objects.filter(form__code="QSF").update(values={}, missing={})  # a whole domain empty
    Entry.objects.filter(form__code="VSF").update(values={"plain": "x"}, missing={})
    _, python_files = _write(scope, tmp_path / "python2", columns=False)
    _, column_files = _write(scope, tmp_path / "columns2", columns=True)
    assert column_files == python_files and {"vs.xpt", "lb.xpt", "qs.xpt"} <= set(column_files)


def test_two_subjects_with_one_usubjid_are_refused(study, tmp_path):
    from sites.models import Site
    from studies.models import Subject

    site = Site.objects.create(code="A-Q", name="Site A-Q", institution="H", country_region="CN",
                               principal_investigator="Dr", target_enrolment=100, time_zone="Asia/Shanghai",
                               status="active")
    Subject.objects.create(study=study["study"], site=site, subject_code="100", status="enrolled",
                           consent_date=date(2026, 1, 5), enrolment_date=date(2026, 1, 5))
    Subject.objects.create(study=study["study"], site=study["sites"][1], subject_code="Q-100", status="enrolled",
                           consent_date=date(2026, 1, 5), enrolment_date=date(2026, 1, 5))
    with pytest.raises(SdtmError, match="USUBJID COL-A-Q-100 would be the same for subjects"):
        _write(extract.ExportScope(study_id=study["study"].pk), tmp_path / "columns", columns=True)
