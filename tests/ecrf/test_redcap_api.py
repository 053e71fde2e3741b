"""REDCap dictionaries over the API: import as draft forms with the line-by-line report,
export, round trip; roles, tenants and bad files."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.ecrf.test_redcap import sample_bytes
from tests.tenants.test_api import _assert_error_shape

pytestmark = pytest.mark.django_db


@pytest.fixture
def study(world, email_of, api):  # type: ignore[no-untyped-def]
    admin = api(world.alpha, email_of("tenant_admin", "alpha"))
    created = admin.post("/api/v1/studies/", {"code": "RC", "title": "REDCap", "study_type": "registry",
                                              "target_enrolment": 10}, format="json").json()
    return {"id": created["id"], "admin": admin, "url": f"/api/v1/studies/{created['id']}/forms/redcap/"}


def _upload(client, url, content, name="dictionary.csv"):  # type: ignore[no-untyped-def]
    return client.post(url, {"file": SimpleUploadedFile(name, content, "text/csv")}, format="multipart")


def test_a_dictionary_becomes_draft_forms_and_comes_back_out(study, api, world, email_of):
    imported = _upload(study["admin"], study["url"], sample_bytes("redcapr-longitudinal.csv"))
    assert imported.status_code == 201, imported.content
    body = imported.json()
    assert len(body["forms"]) == 9 and body["field_count"] == 95
    assert all(f["version"] == 1 for f in body["forms"])
    # What could not be translated is reported with its line, never dropped.
    assert body["report"] and all(isinstance(r["line"], int) and r["message"] for r in body["report"])
    forms = study["admin"].get(f"/api/v1/studies/{study['id']}/forms/").json()
    assert len(forms) == 9 and all(f["versions"][0]["status"] == "draft" for f in forms)
    exported = study["admin"].get(study["url"])
    assert exported.status_code == 200 and exported["Content-Type"].startswith("text/csv")
    assert "Variable / Field Name" in exported.content.decode().splitlines()[0]
    # What the dictionary cannot carry is there to read, item by item, not only counted.
    assert study["admin"].get(study["url"] + "?report=1").json() == {"count": 0, "report": []}  # all carried
    from ecrf.samples import VITALS  # zh-Hans texts, soft ranges, a repeating group: REDCap has none of them

    assert study["admin"].post(f"/api/v1/studies/{study['id']}/forms/", {"definition": VITALS},
                               format="json").status_code == 200
    counted = int(study["admin"].get(study["url"])["X-Export-Report-Count"])
    losses = study["admin"].get(study["url"] + "?report=1").json()
    assert losses["count"] == counted == len(losses["report"]) > 0
    assert all(entry["message"] for entry in losses["report"])
    # Importing the export again replaces the drafts with the same forms.
    again = _upload(study["admin"], study["url"], exported.content)
    assert again.status_code == 201 and [f["version"] for f in again.json()["forms"]] == [1] * 9
    manager = api(world.alpha, email_of("data_manager", "alpha"))
    assert _upload(manager, study["url"], sample_bytes("tlfb-scoring-module.csv")).status_code == 201


@pytest.mark.parametrize(("content", "name"), [
    (b"", "empty.csv"), (b"\x89PNG\r\n\x1a\n\x00\x00", "x.png"), (b"a,b,c\n1,2,3\n", "x.csv"),
    (b"x" * (6 * 1024 * 1024), "big.csv"),
])
def test_bad_dictionaries_are_refused_on_the_file_field(study, content, name):
    response = _upload(study["admin"], study["url"], content, name)
    assert "file" in _assert_error_shape(response, 400)["fields"]


def test_dictionaries_are_for_designers_of_this_tenant(study, api, world, email_of):
    content = sample_bytes("tlfb-scoring-module.csv")
    _assert_error_shape(_upload(api(world.alpha, email_of("coordinator", "alpha")), study["url"], content), 403)
    _assert_error_shape(_upload(api(world.beta, email_of("tenant_admin", "beta")), study["url"], content), 404)
    _assert_error_shape(api(world.beta, email_of("tenant_admin", "beta")).get(study["url"]), 404)
    _assert_error_shape(study["admin"].get(study["url"]), 404)  # no forms yet


def test_a_refused_dictionary_says_why_line_by_line(study):
    """Every field's type unknown: no form can be made, and the answer names each line."""
    header = ("Variable / Field Name,Form Name,Section Header,Field Type,Field Label,"
              "Choices, Calculations, OR Slider Labels,Field Note,Text Validation Type OR Show Slider Number,"
              "Text Validation Min,Text Validation Max,Identifier?,Branching Logic (Show field only if...),"
              "Required Field?,Custom Alignment,Question Number (surveys only),Matrix Group Name,Matrix Ranking?,"
              "Field Annotation\n")
    rows = "".join(f"f{n},demo,,hologram,Field {n},,,,,,,,,,,,,,\n" for n in range(1, 4))
    response = _upload(study["admin"], study["url"], (header + rows).encode())
    fields = _assert_error_shape(response, 400)["fields"]
    lines = {key: value for key, value in fields.items() if key.startswith("line ")}
    assert sorted(lines) == ["line 2", "line 3", "line 4"], fields
    assert all(messages and messages[0].startswith(f"f{n - 1}") for n, messages in
               ((int(key.split()[1]), value) for key, value in lines.items()))
