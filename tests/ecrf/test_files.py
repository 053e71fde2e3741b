"""File items: upload (type by content, size limit), refer to the upload in the entry,
download with the subject's scoping; other tenants, roles and forged references."""

from __future__ import annotations

import copy

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from ecrf.samples import VITALS, label
from tests.ecrf.test_entries import GOOD, crf  # noqa: F401 (fixture)
from tests.tenants.test_api import _assert_error_shape

pytestmark = pytest.mark.django_db

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture
def with_file(crf):  # noqa: F811
    """VITALS v2 with an ECG file item (PDF or PNG, at most 1 KB), published."""
    definition = copy.deepcopy(VITALS)
    definition["items"].append({"code": "ecg", "type": "file", "label": label("ECG"),
                                "file": {"types": ["application/pdf", "image/png"], "max_bytes": 1024}})
    admin = crf["admin"]
    assert admin.post(f"/api/v1/studies/{crf['study']}/forms/", {"definition": definition},
                      format="json").status_code == 200
    assert admin.post(f"/api/v1/forms/{crf['form']}/publish/").status_code == 200
    return {**crf, "files": f"/api/v1/tasks/{crf['task']}/forms/{crf['form']}/files/"}


def _upload(client, url, content, name="ecg.pdf", item="ecg"):  # type: ignore[no-untyped-def]
    return client.post(url, {"item": item, "file": SimpleUploadedFile(name, content)}, format="multipart")


def test_upload_refer_and_download(with_file, api, world, email_of):
    coordinator = with_file["coordinator"]
    uploaded = _upload(coordinator, with_file["files"], PDF)
    assert uploaded.status_code == 201, uploaded.content
    value = uploaded.json()
    assert value["type"] == "application/pdf" and value["size"] == len(PDF) and value["name"] == "ecg.pdf"
    saved = coordinator.put(with_file["url"], {"values": {**GOOD, "ecg": value}, "version": 0}, format="json")
    assert saved.status_code == 200, saved.content
    assert saved.json()["values"]["ecg"] == value
    download = api(world.alpha, email_of("monitor", "alpha")).get(f"/api/v1/files/{value['id']}/")
    assert download.status_code == 200 and b"".join(download.streaming_content) == PDF
    assert download["X-Content-Type-Options"] == "nosniff" and "attachment" in download["Content-Disposition"]
    trail = api(world.alpha, email_of("monitor", "alpha")).get(
        f"/api/v1/subjects/{with_file['subject']}/audit/?item=ecg").json()["results"]
    assert trail[0]["action"] == "item_create" and trail[0]["new"]["id"] == value["id"]


@pytest.mark.parametrize(("content", "name", "item"), [
    (b"<html><script>alert(1)</script></html>", "ecg.png", "ecg"),  # HTML dressed as an image
    (b"GIF89a" + b"\x00" * 10, "ecg.gif", "ecg"),  # a real image, not an accepted type
    (b"%PDF-" + b"x" * 2000, "big.pdf", "ecg"),  # over the item's 1 KB
    (b"", "empty.pdf", "ecg"),
    (PDF, "ecg.pdf", "weight"),  # not a file item
    (PDF, "ecg.pdf", "nope"),
])
def test_bad_uploads_are_refused_and_nothing_is_stored(with_file, content, name, item, settings):
    response = _upload(with_file["coordinator"], with_file["files"], content, name, item)
    error = _assert_error_shape(response, 400)
    assert {"file", "item"} & set(error["fields"])


def test_an_entry_cannot_point_at_a_file_it_did_not_upload(with_file, api, world, email_of):
    coordinator = with_file["coordinator"]
    forged = {"id": "0" * 32, "name": "x.pdf", "size": 1, "type": "application/pdf"}
    refused = coordinator.put(with_file["url"], {"values": {**GOOD, "ecg": forged}, "version": 0}, format="json")
    assert "ecg" in _assert_error_shape(refused, 400)["fields"]
    # A PNG uploaded for another subject's visit cannot be reused here.
    other = coordinator.post("/api/v1/subjects/", {"study": with_file["study"], "site": with_file["site"],
                                                   "consent_date": GOOD["visit_date"]}, format="json").json()
    other_task = coordinator.get(f"/api/v1/subjects/{other['id']}/").json()["tasks"][0]["id"]
    theirs = _upload(coordinator, f"/api/v1/tasks/{other_task}/forms/{with_file['form']}/files/", PNG, "e.png")
    assert theirs.status_code == 201
    mixed = coordinator.put(with_file["url"], {"values": {**GOOD, "ecg": theirs.json()}, "version": 0},
                            format="json")
    assert "ecg" in _assert_error_shape(mixed, 400)["fields"]


def test_files_stay_with_their_tenant_sites_and_roles(with_file, api, world, email_of):
    value = _upload(with_file["coordinator"], with_file["files"], PDF).json()
    _assert_error_shape(api(world.beta, email_of("tenant_admin", "beta")).get(f"/api/v1/files/{value['id']}/"), 404)
    _assert_error_shape(api(world.alpha, email_of("viewer", "alpha")).get(f"/api/v1/files/{value['id']}/"), 403)
    _assert_error_shape(_upload(api(world.alpha, email_of("monitor", "alpha")), with_file["files"], PDF), 403)
    _assert_error_shape(_upload(api(world.beta, email_of("coordinator", "beta")), with_file["files"], PDF), 404)
    _assert_error_shape(with_file["coordinator"].get("/api/v1/files/doesnotexist/"), 404)
    _assert_error_shape(with_file["coordinator"].get("/api/v1/files/a%00b/"), 404)  # NUL: was a database error
    _assert_error_shape(with_file["coordinator"].get(f"/api/v1/files/{value['id'].upper()}/"), 404)


def test_no_upload_into_a_locked_record(with_file, api, world, email_of, in_tenant):
    """A file for a locked form or casebook could never be saved into it: 409, nothing stored."""
    from ecrf.models import EntryFile

    coordinator = with_file["coordinator"]
    entry_id = coordinator.put(with_file["url"], {"values": GOOD, "version": 0}, format="json").json()["entry"]
    manager = api(world.alpha, email_of("data_manager", "alpha"))
    assert manager.post(f"/api/v1/entries/{entry_id}/lock/", {}, format="json").json()["locked"] is True
    assert _assert_error_shape(_upload(coordinator, with_file["files"], PDF), 409)["code"] == "locked"
    assert manager.post(f"/api/v1/entries/{entry_id}/unlock/", {"reason": "late ECG"},
                        format="json").status_code == 200
    casebook = f"/api/v1/subjects/{with_file['subject']}/casebook/"
    assert manager.post(casebook + "lock/", {}, format="json").status_code == 200
    assert _assert_error_shape(_upload(coordinator, with_file["files"], PDF), 409)["code"] == "locked"
    in_tenant(world.alpha)
    assert not EntryFile.objects.exists()
    connection.set_schema_to_public()
    assert manager.post(casebook + "unlock/", {"reason": "ECG"}, format="json").status_code == 200
    assert _upload(coordinator, with_file["files"], PDF).status_code == 201
