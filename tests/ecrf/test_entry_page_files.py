"""File items on the data-entry page (Django's test client): the upload input with the
item's accepted types and size limit, in both languages and in repeating groups; a
stored file shown with its download link; no input for read-only roles or locked
entries. The upload itself is driven in a browser (tests/browser/test_ecrf_file_upload_browser.py)."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from ecrf.samples import VITALS, label
from tests.ecrf.test_entries import GOOD, crf  # noqa: F401 (fixture)
from tests.ecrf.test_entry_web import _entry_url, _page
from tests.ecrf.test_files import PDF, PNG, _upload

pytestmark = pytest.mark.django_db

ECG = {"code": "ecg", "type": "file", "label": label("ECG"),
       "file": {"types": ["application/pdf", "image/png"], "max_bytes": 1024}}
SCAN = {"code": "scan", "type": "file", "label": label("Prescription scan"),
        "file": {"types": ["image/png", "image/jpeg"]}}  # no max_bytes: the 10 MB default


@pytest.fixture
def with_files(crf):  # noqa: F811
    """VITALS v2 with an ECG file item and a prescription scan in each medication row."""
    definition = copy.deepcopy(VITALS)
    definition["items"].append(ECG)
    next(i for i in definition["items"] if i["code"] == "meds")["items"].append(SCAN)
    admin = crf["admin"]
    assert admin.post(f"/api/v1/studies/{crf['study']}/forms/", {"definition": definition},
                      format="json").status_code == 200
    assert admin.post(f"/api/v1/forms/{crf['form']}/publish/").status_code == 200
    return {**crf, "files": f"/api/v1/tasks/{crf['task']}/forms/{crf['form']}/files/"}


def _config(html: str) -> dict[str, Any]:
    found = re.search(r'<script id="ecrf-config" type="application/json">(.*?)</script>', html, re.S)
    assert found
    return dict(json.loads(found.group(1)))


def _input(html: str, dom_id: str) -> str:
    found = re.search(rf'<input type="file" id="{re.escape(dom_id)}"[^>]*>', html)
    assert found, dom_id
    return found.group(0)


def test_a_file_item_offers_an_upload_input_with_its_types_and_size(with_files, web, world, email_of):
    html = _page(web, world, email_of("coordinator", "alpha")).get(_entry_url(with_files)).content.decode()
    ecg = _input(html, "f-ecg")
    assert 'accept="application/pdf,image/png,.pdf,.png"' in ecg and 'data-max-bytes="1024"' in ecg
    # Labelled by the item's legend and the visible button; described by the hint, help and errors.
    assert 'aria-labelledby="f-ecg-label f-ecg-pick"' in ecg and 'data-input disabled' in ecg
    assert 'aria-describedby="f-ecg-file-hint f-ecg-file-status f-ecg-help f-ecg-errors"' in ecg
    assert '<legend id="f-ecg-label"' in html and 'id="f-ecg-pick">Choose a file…</label>' in html
    assert 'id="f-ecg-file-hint">Accepted: PDF, PNG; at most 1.0\xa0KB.</p>' in html
    assert 'class="file-value" data-file="null">—</p>' in html
    # In a repeating group: the new-row template has it (with the default size limit).
    template = html.split('<template class="row-template">', 1)[1].split("</template>", 1)[0]
    scan = _input(template, "f-meds-__row__--scan")
    assert 'accept="image/png,image/jpeg,.png,.jpg,.jpeg"' in scan and 'data-max-bytes="10485760"' in scan
    assert "Accepted: PNG, JPEG; at most 10.0\xa0MB." in template
    config = _config(html)
    assert config["files_url"] == with_files["files"] and config["file_url"] == "/api/v1/files/__id__/"
    assert config["messages"]["file_choose"] == "Choose a file…"
    assert config["messages"]["file_replace"] == "Replace the file…"
    assert {"file_uploading", "file_uploaded", "file_network", "file_forbidden", "file_not_found", "file_error",
            "file_too_large", "file_wait", "file_failed", "file_removed", "file_byte", "file_bytes"} <= set(
        config["messages"])


def test_the_upload_input_speaks_chinese(with_files, web, world, email_of):
    html = _page(web, world, email_of("coordinator", "alpha"), "zh-hans").get(
        _entry_url(with_files)).content.decode()
    assert 'id="f-ecg-pick">选择文件…</label>' in html
    hint = re.search(r'id="f-ecg-file-hint">([^<]*)</p>', html)
    assert hint and "PDF, PNG" in hint.group(1) and "Accepted" not in hint.group(1)
    messages = _config(html)["messages"]
    assert messages["file_choose"] == "选择文件…" and "%(name)s" in messages["file_uploading"]
    assert not any(re.search(r"[A-Za-z]{4,}", messages[key].replace("%(name)s", "").replace("%(status)s", ""))
                   for key in ("file_network", "file_forbidden", "file_wait", "file_failed"))


def test_a_stored_file_is_shown_with_its_download_link(with_files, web, world, email_of):
    coordinator = with_files["coordinator"]
    ecg = _upload(coordinator, with_files["files"], PDF, "ecg 1.pdf").json()
    scan = _upload(coordinator, with_files["files"], PNG, "rx.png", item="scan").json()
    values = {**GOOD, "ecg": ecg, "meds": [{"med_name": "Aspirin", "scan": scan}]}
    saved = coordinator.put(with_files["url"], {"values": values, "version": 0}, format="json")
    assert saved.status_code == 200, saved.content
    page = _page(web, world, email_of("coordinator", "alpha"))
    html = page.get(_entry_url(with_files)).content.decode()
    assert (f'<a class="file-link" href="/api/v1/files/{ecg["id"]}/" download="ecg 1.pdf">ecg 1.pdf</a> '
            f'<span class="muted file-size">({len(PDF)}\xa0bytes)</span>') in html
    assert f'data-file="{{&quot;id&quot;:&quot;{ecg["id"]}&quot;' in html
    assert 'id="f-ecg-pick">Replace the file…</label>' in html
    remove = re.search(r'<button type="button" class="file-remove link"[^>]*>', html.split('id="f-ecg-item"')[1])
    assert remove and "hidden" not in remove.group(0)
    assert f'href="/api/v1/files/{scan["id"]}/" download="rx.png">rx.png</a>' in html  # in the row
    _input(html, "f-meds-0--scan")
    # The link downloads the file with the page's session.
    download = page.get(f"/api/v1/files/{ecg['id']}/")
    assert download.status_code == 200 and b"".join(download.streaming_content) == PDF


def test_read_only_roles_and_locked_entries_get_no_upload_input(with_files, web, world, email_of, api):
    coordinator = with_files["coordinator"]
    ecg = _upload(coordinator, with_files["files"], PDF).json()
    saved = coordinator.put(with_files["url"], {"values": {**GOOD, "ecg": ecg}, "version": 0}, format="json")
    assert saved.status_code == 200, saved.content
    html = _page(web, world, email_of("monitor", "alpha")).get(_entry_url(with_files)).content.decode()
    assert '<input type="file"' not in html and "file-remove" not in html and "file-pick" not in html
    assert f'href="/api/v1/files/{ecg["id"]}/"' in html  # a monitor still opens the source document
    assert _config(html)["files_url"] is None
    locked = api(world.alpha, email_of("data_manager", "alpha")).post(
        f"/api/v1/entries/{saved.json()['entry']}/lock/", {"reason": "Database lock"}, format="json")
    assert locked.status_code == 200, locked.content
    html = _page(web, world, email_of("coordinator", "alpha")).get(_entry_url(with_files)).content.decode()
    assert "This record is locked" in html and '<input type="file"' not in html and "file-remove" not in html
    assert f'href="/api/v1/files/{ecg["id"]}/"' in html and _config(html)["files_url"] is None
