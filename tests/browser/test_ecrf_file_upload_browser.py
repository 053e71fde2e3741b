"""File items on the data-entry page in a real browser (Chromium via Playwright) against a
real server: a file is uploaded as soon as it is chosen, saved with the form, shown after
a reload with a working download link, and removed; a refused file is explained next to
its item without losing what was typed (so are a lost network and an ended session); the
local draft keeps an uploaded file; a file in a medication row is chosen with the
keyboard, and saving while it uploads waits for it."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from ecrf import services as ecrf_services
from ecrf.models import Entry, EntryFile
from ecrf.samples import VITALS
from tests.browser.test_ecrf_browser import _email, _entry_url, _in_tenant, _login, _ready, ecrf_world  # noqa: F401
from tests.browser.test_login_browser import browser, server  # noqa: F401  (fixtures)
from tests.ecrf.test_entry_page_files import ECG, SCAN
from tests.ecrf.test_files import PDF, PNG

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
pytestmark = [pytest.mark.browser, pytest.mark.django_db]

GIF = b"GIF89a" + b"\x00" * 32  # a real image, but not a type the ECG item accepts


@pytest.fixture(scope="module", autouse=True)
def server_media(tmp_path_factory) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    """The server process (started after this, it inherits the environment) stores the
    uploads in a temporary folder rather than in the checkout's .data/."""
    folder = tmp_path_factory.mktemp("server-media")
    before = os.environ.get("MEDIA_ROOT")
    os.environ["MEDIA_ROOT"] = str(folder)
    try:
        yield folder
    finally:
        if before is None:
            os.environ.pop("MEDIA_ROOT", None)
        else:
            os.environ["MEDIA_ROOT"] = before


@pytest.fixture(scope="module")
def file_world(ecrf_world, world, django_db_blocker):  # type: ignore[no-untyped-def]  # noqa: F811
    """The eCRF browser world with VITALS v2: an ECG file item (PDF or PNG, at most 1 KB)
    and a prescription scan in each medication row."""
    definition = copy.deepcopy(VITALS)
    definition["items"].append(ECG)
    next(i for i in definition["items"] if i["code"] == "meds")["items"].append(SCAN)
    with django_db_blocker.unblock():
        connection.set_tenant(world.alpha)
        designer = ecrf_services.Actor(user_id=world.users[_email("data_manager")].pk, label=_email("data_manager"),
                                       role="data_manager")
        draft = ecrf_services.form_draft_save(study=ecrf_world["study"], definition=definition, actor=designer)
        ecrf_services.form_publish(version=draft, actor=designer)
        connection.set_schema_to_public()
    try:
        yield ecrf_world
    finally:
        with django_db_blocker.unblock():
            connection.set_tenant(world.alpha)
            ids = [s.pk for s in ecrf_world["subjects"].values()]
            EntryFile.objects.filter(subject_id__in=ids).delete()  # before ecrf_world removes the subjects
            connection.set_schema_to_public()


def _entry(world, django_db_blocker, data: dict[str, Any], subject: str) -> Entry:  # type: ignore[no-untyped-def]
    return _in_tenant(world, django_db_blocker, lambda: Entry.objects.get(subject=data["subjects"][subject]))


def _text(locator) -> str:  # type: ignore[no-untyped-def]
    return str(locator.inner_text()).replace("\xa0", " ")


def _saved(page) -> None:  # type: ignore[no-untyped-def]
    page.click("#save-button")
    page.wait_for_selector("#save-notice.notice-success, #save-notice.notice-warning")


def test_upload_save_reload_download_and_remove(browser, server, file_world, world,  # noqa: F811
                                                django_db_blocker):
    context, page, base = _login(browser, server, "coordinator", accept_downloads=True)
    url = _entry_url(base, file_world, "flow")
    page.goto(url)
    _ready(page)
    ecg = page.locator('.item[data-path="ecg"]')
    assert "Accepted: PDF, PNG; at most 1.0 KB." in _text(ecg)
    assert _text(ecg.locator(".file-value")) == "—" and ecg.locator(".file-remove").is_hidden()
    page.fill("#f-weight", "70")
    # The input is found by the item's label; choosing a file uploads it at once.
    page.get_by_label("ECG").set_input_files({"name": "ecg.pdf", "mimeType": "application/pdf", "buffer": PDF})
    ecg.locator("a.file-link").wait_for()
    assert _text(ecg.locator(".file-value")) == f"ecg.pdf ({len(PDF)} bytes)"
    assert "“ecg.pdf” is uploaded. Save the form" in _text(ecg.locator(".file-status"))
    assert _text(ecg.locator(".file-pick")) == "Replace the file…" and ecg.locator(".file-remove").is_visible()
    assert ecg.locator(".file-progress").is_hidden() and ecg.locator(".errors li").count() == 0
    _saved(page)
    stored = _entry(world, django_db_blocker, file_world, "flow")
    assert stored.values["ecg"]["name"] == "ecg.pdf" and stored.values["ecg"]["size"] == len(PDF)
    assert stored.values["weight"] == 70
    # After a reload the server shows the file, and its link downloads the same bytes.
    page.reload()
    _ready(page)
    link = ecg.locator("a.file-link")
    assert _text(link) == "ecg.pdf" and link.get_attribute("href") == f"/api/v1/files/{stored.values['ecg']['id']}/"
    with page.expect_download() as download_info:
        link.click()
    download = download_info.value
    assert download.suggested_filename == "ecg.pdf" and Path(download.path()).read_bytes() == PDF
    # Remove: the value is cleared (focus back on the input), and the save applies it.
    ecg.get_by_role("button", name="Remove the file").click()
    assert _text(ecg.locator(".file-value")) == "—" and ecg.locator(".file-remove").is_hidden()
    assert "File removed" in _text(ecg.locator(".file-status"))
    assert page.evaluate("document.activeElement.id") == "f-ecg"
    _saved(page)
    assert "ecg" not in _entry(world, django_db_blocker, file_world, "flow").values
    page.reload()
    _ready(page)
    assert _text(ecg.locator(".file-value")) == "—" and _text(ecg.locator(".file-pick")) == "Choose a file…"
    context.close()


def test_a_refused_file_is_explained_and_an_upload_survives_a_reload(browser, server, file_world,  # noqa: F811
                                                                     world, django_db_blocker):
    context, page, base = _login(browser, server, "coordinator")
    page.goto(_entry_url(base, file_world, "draft"))
    _ready(page)
    page.fill("#f-weight", "81.5")
    page.fill("#f-notes", "typed before the upload")
    ecg = page.locator('.item[data-path="ecg"]')
    # A type the item does not accept: the server's reason next to the item.
    page.set_input_files("#f-ecg", {"name": "ecg.gif", "mimeType": "image/gif", "buffer": GIF})
    ecg.locator(".errors li").wait_for()
    assert "Accepted here: application/pdf, image/png" in _text(ecg.locator(".errors"))
    assert "has-error" in (ecg.get_attribute("class") or "") and _text(ecg.locator(".file-value")) == "—"
    assert page.input_value("#f-weight") == "81.5" and page.input_value("#f-notes") == "typed before the upload"
    # Over the item's size: refused before uploading, with both sizes.
    page.set_input_files("#f-ecg", {"name": "big.pdf", "mimeType": "application/pdf",
                                    "buffer": b"%PDF-" + b"x" * 2000})
    assert "This file is 2.0 KB; at most 1.0 KB is accepted here." in _text(ecg.locator(".errors"))
    assert "Accepted here" not in _text(ecg.locator(".errors"))
    # A good one clears the error.
    page.set_input_files("#f-ecg", {"name": "ecg.png", "mimeType": "image/png", "buffer": PNG})
    ecg.locator("a.file-link").wait_for()
    assert ecg.locator(".errors li").count() == 0 and "has-error" not in (ecg.get_attribute("class") or "")
    # Not saved yet: the local draft keeps the uploaded file with the rest.
    page.reload()
    _ready(page)
    assert "Restored unsaved changes from this device" in page.inner_text("#entry-notices")
    assert _text(ecg.locator("a.file-link")) == "ecg.png" and page.input_value("#f-weight") == "81.5"
    assert _text(ecg.locator(".file-pick")) == "Replace the file…"
    _saved(page)
    stored = _entry(world, django_db_blocker, file_world, "draft")
    assert stored.values["ecg"]["name"] == "ecg.png" and stored.values["ecg"]["type"] == "image/png"
    assert stored.values["notes"] == "typed before the upload"
    context.close()


def test_a_row_file_chosen_by_keyboard_is_saved_even_when_save_is_pressed_during_upload(
        browser, server, file_world, world, django_db_blocker):  # noqa: F811
    context, page, base = _login(browser, server, "coordinator")
    # Playwright turns on file-chooser interception without waiting for the browser to
    # confirm it; a listener added before the page loads has it in place long before the
    # keypress (added inside expect_file_chooser, the real dialog sometimes won the race).
    choosers: list[Any] = []
    page.on("filechooser", lambda chooser: choosers.append(chooser))
    page.goto(_entry_url(base, file_world, "conflict"))
    _ready(page)
    page.click('[data-path="meds"] .add-row')
    page.fill('.item[data-path="meds[0].med_name"] input', "Aspirin")
    # Hold the upload at the network layer (the real request reaches the server later).
    held: list[Any] = []
    page.route("**/files/", lambda route: held.append(route))
    page.focus('.item[data-path="meds[0].med_dose"] input')
    page.keyboard.press("Tab")  # the row's file input is next, reachable by keyboard
    assert page.evaluate("document.activeElement.closest('.item').dataset.path") == "meds[0].scan"
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    assert len(choosers) == 1  # one dialog, seen by both listeners
    chooser.value.set_files({"name": "rx.png", "mimeType": "image/png", "buffer": PNG})
    scan = page.locator('.item[data-path="meds[0].scan"]')
    assert "Uploading “rx.png”" in _text(scan.locator(".file-status"))
    assert scan.locator(".file-progress").is_visible() and scan.locator(".file-cancel").is_visible()
    page.click("#save-button")
    page.wait_for_selector("#save-notice:has-text('Waiting for the file upload to finish')")
    assert page.is_disabled("#save-button")
    for _ in range(100):  # the route handler runs while Playwright processes events
        if held:
            break
        page.wait_for_function("true")
    held[0].continue_()
    page.wait_for_selector("#save-notice.notice-success, #save-notice.notice-warning")
    assert _text(scan.locator("a.file-link")) == "rx.png"
    stored = _entry(world, django_db_blocker, file_world, "conflict")
    assert stored.values["meds"][0]["med_name"] == "Aspirin" and stored.values["meds"][0]["scan"]["name"] == "rx.png"
    page.unroute("**/files/")
    # A lost network and an ended session: explained next to the item; the typing stays.
    page.fill('.item[data-path="meds[0].med_dose"] input', "100")
    ecg = page.locator('.item[data-path="ecg"]')
    page.route("**/files/", lambda route: route.abort("internetdisconnected"))
    page.set_input_files("#f-ecg", {"name": "ecg.pdf", "mimeType": "application/pdf", "buffer": PDF})
    ecg.locator(".errors li").wait_for()
    assert "the server could not be reached" in _text(ecg.locator(".errors"))
    page.unroute("**/files/")
    context.clear_cookies()  # signed out (another tab, or the session expired): a real 403
    page.set_input_files("#f-ecg", {"name": "ecg.pdf", "mimeType": "application/pdf", "buffer": PDF})
    ecg.locator(".errors li:has-text('signed out')").wait_for()
    assert "could not be reached" not in _text(ecg.locator(".errors")) and _text(ecg.locator(".file-value")) == "—"
    assert page.input_value('.item[data-path="meds[0].med_dose"] input') == "100"
    assert _text(page.locator('.item[data-path="meds[0].scan"] a.file-link')) == "rx.png"
    context.close()
