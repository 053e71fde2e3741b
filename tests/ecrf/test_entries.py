"""Data entry over the API: every field type, branching and calculation, edit checks,
412 on concurrent edits, reasons for change, auto-queries and the query lifecycle, SDV
reset, locks, signatures and their invalidation, the visit marked done; roles, sites,
other tenants and bad input."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest
from django.db import connection

from ecrf.models import Entry, Query, Signature
from ecrf.samples import VITALS, label
from studies.models import FollowUpTask, TaskStatus
from tests.conftest import PASSWORD
from tests.studies.test_enrolment import event
from tests.studies.test_studies_api import TODAY, _active_site
from tests.tenants.test_api import _assert_error_shape

pytestmark = pytest.mark.django_db


def _crf_in(tenant, world, in_tenant, email_of, api, definition=VITALS, later=None,  # type: ignore[no-untyped-def]
            also=()):
    """In `tenant` ("alpha"/"beta" objects of world): an active site S1 (coordinator,
    investigator, monitor), an active study whose D7 visit collects the form
    (published), and one enrolled subject."""
    from sites import services as site_services

    slug = tenant.slug
    in_tenant(tenant)
    site = _active_site("S1")
    for role, primary in (("coordinator", True), ("investigator", False), ("monitor", False)):
        site_services.site_staff_assign(site=site, tenant=tenant, user=world.users[email_of(role, slug)],
                                        role=role, is_primary=primary)
    connection.set_schema_to_public()
    admin = api(tenant, email_of("tenant_admin", slug))
    study = admin.post("/api/v1/studies/", {"code": "CRF", "title": "eCRF", "study_type": "registry",
                                            "target_enrolment": 10}, format="json").json()
    d7 = {**event("D7", 7, before=7, after=7), "forms": [definition["code"], *(d["code"] for d in also)]}
    events = [d7, *(later or [event("D30", 30)])]
    assert admin.post(f"/api/v1/studies/{study['id']}/schedule/", {"events": events},
                      format="json").status_code == 200
    assert admin.post(f"/api/v1/studies/{study['id']}/schedule/publish/").status_code == 200
    assert admin.post(f"/api/v1/studies/{study['id']}/activate/").status_code == 200
    draft = admin.post(f"/api/v1/studies/{study['id']}/forms/", {"definition": definition}, format="json")
    assert draft.status_code == 200, draft.content
    for other in also:  # more forms the D7 visit collects
        assert admin.post(f"/api/v1/studies/{study['id']}/forms/", {"definition": other},
                          format="json").status_code == 200
    forms = {f["code"]: f["id"] for f in admin.get(f"/api/v1/studies/{study['id']}/forms/").json()}
    for other_id in forms.values():
        assert admin.post(f"/api/v1/forms/{other_id}/publish/").status_code == 200
    form_id = forms[definition["code"]]
    coordinator = api(tenant, email_of("coordinator", slug))
    subject = coordinator.post("/api/v1/subjects/", {"study": study["id"], "site": site.pk,
                                                     "consent_date": TODAY.isoformat()}, format="json").json()
    task = coordinator.get(f"/api/v1/subjects/{subject['id']}/").json()["tasks"][0]
    return {"study": study["id"], "form": form_id, "subject": subject["id"], "task": task["id"],
            "url": f"/api/v1/tasks/{task['id']}/forms/{form_id}/entry/", "admin": admin,
            "coordinator": coordinator, "site": site.pk, "forms": forms}


@pytest.fixture
def crf(world, in_tenant, email_of, api):  # type: ignore[no-untyped-def]
    return _crf_in(world.alpha, world, in_tenant, email_of, api)


GOOD = {"visit_date": TODAY.isoformat(), "sex": "2", "pregnant": False, "weight": "70.5", "height": 170,
        "pain": 3, "symptoms": ["b", "a"], "diag_date": "2024-05", "dose_time": "08:30",
        "seen_at": "2026-01-02T09:15", "notes": "<script>alert(1)</script> 无不适", "email": "p@example.org",
        "sbp": 120, "dbp": 80, "meds": [{"med_name": "Aspirin", "med_dose": 100}]}


def _put(client, crf, values, **extra):  # type: ignore[no-untyped-def]
    return client.put(crf["url"], {"values": values, **extra}, format="json")


def test_every_field_type_is_parsed_calculated_and_stored(crf, in_tenant, world):
    empty = crf["coordinator"].get(crf["url"])
    assert empty.status_code == 200 and empty.json()["version"] == 0 and empty["ETag"] == '"0"'
    assert empty.json()["definition"]["code"] == "VITALS" and empty.json()["window"]["status"] == "open"
    saved = _put(crf["coordinator"], crf, GOOD, version=0)
    assert saved.status_code == 200, saved.content
    body = saved.json()
    values = body["values"]
    assert values["weight"] == 70.5 and values["height"] == 170 and values["bmi"] == 24.4
    assert values["pregnant"] == "0" and values["symptoms"] == ["a", "b"]  # code-list order
    assert values["diag_date"] == "2024-05" and values["dose_time"] == "08:30"
    assert values["notes"] == "<script>alert(1)</script> 无不适"  # stored as text, escaped on display
    assert values["meds"] == [{"med_name": "Aspirin", "med_dose": 100.0}]
    assert "hdr" not in values and body["version"] == 1 and saved["ETag"] == '"1"' and body["status"] == "in_progress"
    in_tenant(world.alpha)
    assert Entry.objects.get().values == values


def test_branching_hides_and_refuses_hidden_data(crf):
    male = {**GOOD, "sex": "1"}
    refused = _put(crf["coordinator"], crf, male, version=0)
    assert "pregnant" in _assert_error_shape(refused, 400)["fields"]  # hidden for men: clear it
    del male["pregnant"]
    assert _put(crf["coordinator"], crf, male, version=0).status_code == 200


@pytest.mark.parametrize(("change", "field"), [
    ({"weight": "heavy"}, "weight"), ({"weight": "70.55"}, "weight"), ({"height": 170.5}, "height"),
    ({"sex": "3"}, "sex"), ({"symptoms": ["z"]}, "symptoms"), ({"symptoms": "a"}, "symptoms"),
    ({"visit_date": "2026-02-30"}, "visit_date"), ({"diag_date": "2024-13"}, "diag_date"),
    ({"dose_time": "25:00"}, "dose_time"), ({"seen_at": "2026-01-02T09:15+08:00"}, "seen_at"),
    ({"pain": 11}, "pain"), ({"pain": 2.5}, "pain"), ({"email": "nope"}, "email"), ({"notes": "x" * 501}, "notes"),
    ({"bmi": 20}, "bmi"), ({"hdr": "x"}, "hdr"), ({"unknown_item": 1}, "unknown_item"),
    ({"meds": [{"med_name": "A", "bogus": 1}]}, "meds[0].bogus"), ({"meds": [{}] * 6}, "meds"),
    ({"meds": "aspirin"}, "meds"), ({"pregnant": "maybe"}, "pregnant"),
])
def test_malformed_values_are_refused_per_item_and_nothing_is_saved(crf, in_tenant, world, change, field):
    response = _put(crf["coordinator"], crf, {**GOOD, **change}, version=0)
    assert field in _assert_error_shape(response, 400)["fields"]
    in_tenant(world.alpha)
    assert not Entry.objects.exists()


def test_hard_problems_allow_a_partial_save_but_block_completion(crf):
    partial = {"sex": "1", "weight": "10", "sbp": 100, "dbp": 120, "meds": [{"med_dose": 5}]}
    saved = _put(crf["coordinator"], crf, partial, version=0)
    assert saved.status_code == 200
    hard = saved.json()["hard_errors"]
    assert {"visit_date", "weight", "dbp", "meds[0].med_name"} <= set(hard)
    assert "Diastolic must be below systolic." in hard["dbp"]
    blocked = _put(crf["coordinator"], crf, partial, version=1, complete=True)
    assert set(_assert_error_shape(blocked, 400)["fields"]) >= {"visit_date", "weight"}
    assert crf["coordinator"].get(crf["url"]).json()["status"] == "in_progress"


def test_missing_data_codes(crf):
    with_code = {**{k: v for k, v in GOOD.items() if k != "weight"}}
    saved = _put(crf["coordinator"], crf, with_code, version=0, missing={"weight": "UNK"})
    assert saved.status_code == 200 and saved.json()["missing"] == {"weight": "UNK"}
    both = _put(crf["coordinator"], crf, GOOD, version=1, missing={"weight": "UNK"})
    assert "weight" in _assert_error_shape(both, 400)["fields"]
    not_allowed = _put(crf["coordinator"], crf, with_code, version=1, missing={"height": "UNK"})
    assert "height" in _assert_error_shape(not_allowed, 400)["fields"]


def test_concurrent_edit_gets_412_with_the_conflicting_items(crf, api, world, email_of):
    first = crf["coordinator"]
    second = api(world.alpha, email_of("investigator", "alpha"))
    assert _put(first, crf, GOOD, version=0).status_code == 200
    assert _put(first, crf, {**GOOD, "weight": "71.0"}, version=1).status_code == 200
    stale = second.put(crf["url"], {"values": {**GOOD, "weight": "72.0"}}, format="json", HTTP_IF_MATCH='"1"')
    error = _assert_error_shape(stale, 412)
    assert error["code"] == "precondition_failed" and "weight" in error["fields"]
    assert first.get(crf["url"]).json()["values"]["weight"] == 71.0  # nothing overwritten
    no_version = _put(second, crf, GOOD)
    assert "version" in _assert_error_shape(no_version, 400)["fields"]
    assert _put(second, crf, GOOD, version=5).status_code == 412
    assert second.put(crf["url"], {"values": GOOD}, format="json", HTTP_IF_MATCH='"x"').status_code == 400
    assert "If-Match" in _assert_error_shape(
        second.put(crf["url"], {"values": GOOD}, format="json", HTTP_IF_MATCH='"²"'), 400)["fields"]


def test_completion_marks_the_visit_done_and_later_changes_need_a_reason(crf, in_tenant, world):
    done = _put(crf["coordinator"], crf, GOOD, version=0, complete=True)
    assert done.status_code == 200 and done.json()["status"] == "complete"
    in_tenant(world.alpha)
    assert FollowUpTask.objects.get(pk=crf["task"]).status == TaskStatus.COMPLETED
    connection.set_schema_to_public()
    no_reason = _put(crf["coordinator"], crf, {**GOOD, "weight": "69.0"}, version=1)
    assert "weight" in _assert_error_shape(no_reason, 400)["fields"]
    with_reason = _put(crf["coordinator"], crf, {**GOOD, "weight": "69.0"}, version=1,
                       reasons={"weight": "transcription error"})
    assert with_reason.status_code == 200, with_reason.content
    assert with_reason.json()["changed"] == ["bmi", "weight"]  # the BMI follows the weight
    # Saving the same values again changes nothing and needs no reason.
    assert _put(crf["coordinator"], crf, {**GOOD, "weight": "69.0"}, version=2).status_code == 200


def test_soft_problems_raise_queries_that_follow_the_lifecycle(crf, api, world, email_of):
    saved = _put(crf["coordinator"], crf, {**GOOD, "weight": "30", "dbp": 115, "sbp": 150}, version=0)
    assert saved.status_code == 200 and saved.json()["queries_raised"] == 2  # soft range + soft check
    entry_id = saved.json()["entry"]
    queries = crf["coordinator"].get(f"/api/v1/entries/{entry_id}/queries/").json()
    assert {(q["item"], q["check_code"], q["origin"]) for q in queries} == {
        ("weight", "RANGE", "auto"), ("dbp", "DBP_HIGH", "auto")}
    # Saving again does not raise them twice; correcting the weight closes its query.
    again = _put(crf["coordinator"], crf, {**GOOD, "weight": "60", "dbp": 115, "sbp": 150}, version=1)
    assert again.json()["queries_raised"] == 0 and again.json()["queries_closed"] == 1
    dbp = next(q for q in queries if q["item"] == "dbp")
    monitor = api(world.alpha, email_of("monitor", "alpha"))
    assert _assert_error_shape(monitor.post(f"/api/v1/queries/{dbp['id']}/answer/", {"text": "x"},
                                            format="json"), 403)
    answered = crf["coordinator"].post(f"/api/v1/queries/{dbp['id']}/answer/", {"text": "Confirmed with source"},
                                       format="json")
    assert answered.status_code == 200 and answered.json()["status"] == "answered"
    twice = crf["coordinator"].post(f"/api/v1/queries/{dbp['id']}/answer/", {"text": "again"}, format="json")
    assert _assert_error_shape(twice, 409)["code"] == "bad_transition"
    assert monitor.post(f"/api/v1/queries/{dbp['id']}/reopen/", {"text": "Source says 105"},
                        format="json").json()["status"] == "open"
    crf["coordinator"].post(f"/api/v1/queries/{dbp['id']}/answer/", {"text": "Corrected"}, format="json")
    closed = monitor.post(f"/api/v1/queries/{dbp['id']}/close/", {"text": "OK"}, format="json").json()
    assert closed["status"] == "closed" and [m["kind"] for m in closed["messages"]] == [
        "raise", "answer", "reopen", "answer", "close"]
    manual = monitor.post(f"/api/v1/entries/{entry_id}/queries/", {"item": "height", "text": "Shoes on?"},
                          format="json")
    assert manual.status_code == 201 and manual.json()["origin"] == "manual"
    assert _assert_error_shape(monitor.post(f"/api/v1/entries/{entry_id}/queries/",
                                            {"item": "nope", "text": "?"}, format="json"), 400)
    report = monitor.get("/api/v1/queries/report/").json()["sites"]
    assert report == [{"site": crf["site"], "site_code": "S1", "open": 1, "answered": 0, "closed": 2,
                       "open_0_7_days": 1, "open_8_30_days": 0, "open_over_30_days": 0}]
    assert monitor.get("/api/v1/queries/?status=open").json()["count"] == 1
    _assert_error_shape(monitor.get("/api/v1/queries/?status=later"), 400)
    assert "site" in _assert_error_shape(monitor.get("/api/v1/queries/?site=³"), 400)["fields"]


def test_changing_a_verified_item_clears_its_verification(crf, api, world, email_of):
    entry_id = _put(crf["coordinator"], crf, GOOD, version=0).json()["entry"]
    monitor = api(world.alpha, email_of("monitor", "alpha"))
    _assert_error_shape(crf["coordinator"].post(f"/api/v1/entries/{entry_id}/verify/", {}, format="json"), 403)
    verified = monitor.post(f"/api/v1/entries/{entry_id}/verify/", {"items": ["weight", "height"]}, format="json")
    assert set(verified.json()["verified"]) == {"weight", "height"}
    assert _assert_error_shape(monitor.post(f"/api/v1/entries/{entry_id}/verify/", {"items": ["nope"]},
                                            format="json"), 400)
    _put(crf["coordinator"], crf, {**GOOD, "weight": "71.0"}, version=1)
    assert set(crf["coordinator"].get(crf["url"]).json()["verified"]) == {"height"}


def test_locks_freeze_the_record_and_unlocking_needs_a_reason(crf, api, world, email_of):
    entry_id = _put(crf["coordinator"], crf, GOOD, version=0).json()["entry"]
    manager = api(world.alpha, email_of("data_manager", "alpha"))
    _assert_error_shape(crf["coordinator"].post(f"/api/v1/entries/{entry_id}/lock/", {}, format="json"), 403)
    assert manager.post(f"/api/v1/entries/{entry_id}/lock/", {}, format="json").json()["locked"] is True
    assert _assert_error_shape(_put(crf["coordinator"], crf, GOOD, version=1), 409)["code"] == "locked"
    no_reason = manager.post(f"/api/v1/entries/{entry_id}/unlock/", {}, format="json")
    assert "reason" in _assert_error_shape(no_reason, 400)["fields"]
    assert manager.post(f"/api/v1/entries/{entry_id}/unlock/", {"reason": "query correction"},
                        format="json").json()["locked"] is False
    assert _put(crf["coordinator"], crf, GOOD, version=1).status_code == 200
    casebook = f"/api/v1/subjects/{crf['subject']}/casebook/"
    assert manager.post(casebook + "lock/", {}, format="json").json()["locked"] is True
    assert _assert_error_shape(manager.post(casebook + "lock/", {}, format="json"), 409)
    assert _put(crf["coordinator"], crf, GOOD, version=2).status_code == 409
    assert manager.post(casebook + "unlock/", {"reason": "re-opened for AE"}, format="json").status_code == 200


def test_signature_needs_the_password_and_is_invalidated_by_a_change(crf, api, world, email_of, in_tenant):
    investigator = api(world.alpha, email_of("investigator", "alpha"))
    investigator.cookies["django_language"] = "en"
    url = f"/api/v1/subjects/{crf['subject']}/signatures/"
    assert _assert_error_shape(investigator.post(url, {"password": PASSWORD, "meaning": "review"},
                                                 format="json"), 409)["code"] == "casebook_incomplete"
    _put(crf["coordinator"], crf, GOOD, version=0, complete=True)
    wrong = investigator.post(url, {"password": "not-it", "meaning": "review"}, format="json")
    assert "password" in _assert_error_shape(wrong, 400)["fields"]
    _assert_error_shape(crf["coordinator"].post(url, {"password": PASSWORD, "meaning": "review"}, format="json"), 403)
    signed = investigator.post(url, {"password": PASSWORD, "meaning": "review"}, format="json")
    assert signed.status_code == 201, signed.content
    body = signed.json()
    assert body["valid"] and body["signer_name"] and len(body["content_hash"]) == 64
    assert "accurate and complete" in body["meaning_text"]
    _put(crf["coordinator"], crf, {**GOOD, "weight": "71.0"}, version=1, reason="late lab report")
    after = investigator.get(url).json()
    assert after[0]["valid"] is False and after[0]["invalidated_reason"]
    in_tenant(world.alpha)
    assert Signature.objects.get().invalidated_at is not None


def test_entry_access_by_role_site_and_tenant(crf, api, world, email_of, in_tenant):
    _assert_error_shape(_put(api(world.alpha, email_of("monitor", "alpha")), crf, GOOD, version=0), 403)
    _assert_error_shape(api(world.alpha, email_of("viewer", "alpha")).get(crf["url"]), 403)
    assert api(world.alpha, email_of("data_manager", "alpha")).get(crf["url"]).status_code == 200
    beta = api(world.beta, email_of("coordinator", "beta"))
    _assert_error_shape(beta.get(crf["url"]), 404)
    _assert_error_shape(_put(beta, crf, GOOD, version=0), 404)
    # A form of another study is not a form of this visit.
    other = crf["admin"].post("/api/v1/studies/", {"code": "OTHER", "title": "o", "study_type": "registry",
                                                   "target_enrolment": 1}, format="json").json()
    other_form = copy.deepcopy(VITALS)
    crf["admin"].post(f"/api/v1/studies/{other['id']}/forms/", {"definition": other_form}, format="json")
    other_id = crf["admin"].get(f"/api/v1/studies/{other['id']}/forms/").json()[0]["id"]
    _assert_error_shape(crf["coordinator"].get(f"/api/v1/tasks/{crf['task']}/forms/{other_id}/entry/"), 404)
    in_tenant(world.alpha)
    assert not Query.objects.exists()


def test_oversized_and_nonsense_bodies_are_4xx(crf):
    huge = {"values": {"notes": "x" * (1024 * 1024 + 10)}, "version": 0}
    assert _assert_error_shape(crf["coordinator"].put(crf["url"], huge, format="json"), 413)["code"] == \
        "payload_too_large"
    _assert_error_shape(crf["coordinator"].put(crf["url"], {"values": [1, 2]}, format="json"), 400)
    _assert_error_shape(crf["coordinator"].put(crf["url"], "not json", content_type="application/json"), 400)


@pytest.mark.parametrize(("mutate", "path"), [
    (lambda d: d.update(code="bad code"), "definition.code"),
    (lambda d: d["items"][4].update(type="weird"), "definition.items.4.type"),
    (lambda d: d["items"][2].update(code_list="NOPE"), "definition.items.2.code_list"),
    (lambda d: d["items"][3].update(show_if={"==": [{"var": "ghost"}, 1]}), "definition.items.3.show_if"),
    (lambda d: d["items"][3].update(show_if={"log": [1]}), "definition.items.3.show_if"),
    (lambda d: d["items"][1].update(code="sex"), "definition.items.2.code"),
    (lambda d: d["items"][4].update(range={"hard": {"min": 5, "max": 1}}), "definition.items.4.range.hard"),
    (lambda d: d["items"].append({"code": "deep", "type": "calculated", "label": label("d"),
                                  "calc": _deep(40)}), "definition.items.17.calc"),
    # Sent to patients, whose page has no upload: a file question could never be answered.
    (lambda d: d.update(patient_reported=True, items=[*d["items"], {"code": "scan", "type": "file",
                                                                   "label": label("Scan")}]),
     "definition.items.17.type"),
    (lambda d: d.update(patient_reported=True, items=[*d["items"], {
        "code": "docs", "type": "group", "label": label("Docs"),
        "items": [{"code": "doc", "type": "file", "label": label("Doc")}]}]), "definition.items.17.type"),
])
def test_bad_form_definitions_are_refused_with_paths(crf, mutate, path):
    definition = copy.deepcopy(VITALS)
    definition["code"] = "VITALS2"
    mutate(definition)
    response = crf["admin"].post(f"/api/v1/studies/{crf['study']}/forms/", {"definition": definition},
                                 format="json")
    assert path in _assert_error_shape(response, 400)["fields"]


def _deep(depth: int) -> Any:
    expr: Any = 1
    for _ in range(depth):
        expr = {"+": [expr, 1]}
    return expr


def test_form_versions_are_immutable_once_published_and_entries_keep_theirs(crf, in_tenant, world):
    _put(crf["coordinator"], crf, GOOD, version=0)
    amended = copy.deepcopy(VITALS)
    amended["items"][4]["range"]["soft"]["max"] = 150
    admin = crf["admin"]
    assert admin.post(f"/api/v1/studies/{crf['study']}/forms/", {"definition": amended},
                      format="json").json()["number"] == 2
    assert admin.post(f"/api/v1/forms/{crf['form']}/publish/").json()["status"] == "published"
    _assert_error_shape(admin.post(f"/api/v1/forms/{crf['form']}/publish/"), 404)  # no draft left
    assert crf["coordinator"].get(crf["url"]).json()["form_version"] == 1  # entered against v1
    versions = admin.get(f"/api/v1/forms/{crf['form']}/versions/").json()
    assert [(v["number"], v["status"]) for v in versions] == [(2, "published"), (1, "published")]
    _assert_error_shape(crf["coordinator"].post(f"/api/v1/studies/{crf['study']}/forms/",
                                                {"definition": amended}, format="json"), 403)
    in_tenant(world.alpha)
    assert Entry.objects.get().form_version.number == 1


def test_every_change_is_audited_item_by_item_with_reason_and_source(crf, api, world, email_of):
    _put(crf["coordinator"], crf, GOOD, version=0, complete=True)
    _put(crf["coordinator"], crf, {**GOOD, "weight": "69.0", "meds": []}, version=1, reason="wrong patient chart")
    monitor = api(world.alpha, email_of("monitor", "alpha"))
    url = f"/api/v1/subjects/{crf['subject']}/audit/"
    weight = monitor.get(url + "?item=weight").json()["results"]
    assert [(r["action"], r["old"], r["new"], r["reason"], r["source"]) for r in weight] == [
        ("item_update", 70.5, 69.0, "wrong patient chart", "api"),
        ("item_create", None, 70.5, "", "api")]
    assert weight[0]["user_email"] == email_of("coordinator", "alpha") and weight[0]["form_code"] == "VITALS"
    removed = monitor.get(url + "?item=meds[0].med_name").json()["results"]
    assert removed[0]["action"] == "item_delete" and removed[0]["old"] == "Aspirin" and removed[0]["new"] is None
    everything = monitor.get(url + "?form=VITALS&limit=5").json()
    assert len(everything["results"]) == 5 and everything["next_before_seq"] == everything["results"][-1]["seq"]
    older = monitor.get(url + f"?before_seq={everything['next_before_seq']}&limit=500").json()["results"]
    assert all(r["seq"] < everything["next_before_seq"] for r in older)
    actions = {r["action"] for r in older + everything["results"]}
    assert {"entry_complete", "item_create", "item_update", "item_delete"} <= actions
    _assert_error_shape(monitor.get(url + "?limit=abc"), 400)
    for bad in ("?form=a%00b", "?item=a%00b"):  # PostgreSQL refuses NUL in text: was a 500
        assert list(_assert_error_shape(monitor.get(url + bad), 400)["fields"]) == [bad[1:].split("=")[0]]
    for bad in ("?limit=²", "?before_seq=①", "?entry=" + "9" * 30):  # Unicode digits, past bigint
        assert list(_assert_error_shape(monitor.get(url + bad), 400)["fields"]) == [bad[1:].split("=")[0]]
    _assert_error_shape(monitor.get(url + "?limit=100000"), 400)
    _assert_error_shape(api(world.alpha, email_of("viewer", "alpha")).get(url), 403)
    _assert_error_shape(api(world.beta, email_of("tenant_admin", "beta")).get(url), 404)


def test_saves_from_the_pages_are_audited_as_web(crf, web, world, email_of, api):
    from tests.studies.test_worklist_web import _login

    page = web(world.alpha)
    _login(page, email_of("coordinator", "alpha"))
    saved = page.put(crf["url"], {"values": GOOD, "version": 0}, content_type="application/json")
    assert saved.status_code == 200, saved.content
    trail = api(world.alpha, email_of("monitor", "alpha")).get(
        f"/api/v1/subjects/{crf['subject']}/audit/?item=weight").json()["results"]
    assert [r["source"] for r in trail] == ["web"]


def test_checks_may_read_another_form_of_the_visit(crf):
    labs = {"code": "LABS", "title": label("Labs"), "items": [
        {"code": "dose_per_kg", "type": "decimal", "label": label("Dose per kg"),
         "checks": [{"code": "NEEDS_WEIGHT", "severity": "hard",
                     "rule": {"!": [{"is_empty": [{"var": "VITALS.weight"}]}]},
                     "message": label("Enter the weight in Vital signs first.")}]}]}
    admin = crf["admin"]
    assert admin.post(f"/api/v1/studies/{crf['study']}/forms/", {"definition": labs}, format="json").status_code == 200
    labs_id = next(f["id"] for f in admin.get(f"/api/v1/studies/{crf['study']}/forms/").json() if f["code"] == "LABS")
    assert admin.post(f"/api/v1/forms/{labs_id}/publish/").status_code == 200
    url = f"/api/v1/tasks/{crf['task']}/forms/{labs_id}/entry/"
    before = crf["coordinator"].put(url, {"values": {"dose_per_kg": 2}, "version": 0}, format="json").json()
    assert "Enter the weight in Vital signs first." in before["hard_errors"]["dose_per_kg"]
    _put(crf["coordinator"], crf, GOOD, version=0)
    after = crf["coordinator"].put(url, {"values": {"dose_per_kg": 2}, "version": 1}, format="json").json()
    assert after["hard_errors"] == {}


def test_wrong_signature_passwords_lock_the_signer_out_for_a_while(crf, api, world, email_of):
    investigator = api(world.alpha, email_of("investigator", "alpha"))
    url = f"/api/v1/subjects/{crf['subject']}/signatures/"
    _put(crf["coordinator"], crf, GOOD, version=0, complete=True)
    for _attempt in range(5):
        _assert_error_shape(investigator.post(url, {"password": "guess", "meaning": "review"}, format="json"), 400)
    locked = investigator.post(url, {"password": PASSWORD, "meaning": "review"}, format="json")
    assert _assert_error_shape(locked, 429)["code"] == "too_many_attempts"


def test_two_first_saves_at_once_give_one_entry_and_a_412(crf, in_tenant, world, monkeypatch):
    """Both saves find no entry (no row to lock yet); the unique (task, form) row decides:
    the second is refused with 412, never a 500 or a second entry."""
    from ecrf import services

    assert _put(crf["coordinator"], crf, GOOD, version=0).status_code == 200
    # The second save read "no entry" before the first committed:
    monkeypatch.setattr(services, "_entry_for_update",
                        lambda **_: services._EntryState(entry=None, casebook_locked=False, signed=False))
    late = _put(crf["coordinator"], crf, {**GOOD, "weight": "71"}, version=0)
    _assert_error_shape(late, 412)
    in_tenant(world.alpha)
    assert Entry.objects.count() == 1 and Entry.objects.get().values["weight"] == 70.5


def test_form_definitions_never_cross_tenants_through_the_version_cache(crf, world, in_tenant, email_of, api):
    """Published versions are cached per process; ids repeat across tenant schemas, so
    the cache must be per schema. Beta's form has the same version id as alpha's."""
    from ecrf.models import FormVersion

    in_tenant(world.alpha)
    alpha_version = FormVersion.objects.get(form_id=crf["form"]).pk
    in_tenant(world.beta)  # beta's next form version gets alpha's id
    with connection.cursor() as cursor:
        cursor.execute("SELECT setval(pg_get_serial_sequence('ecrf_formversion', 'id'), %s, false)", [alpha_version])
    other = copy.deepcopy(VITALS)
    other["items"][1]["label"] = label("Beta only item", "仅乙")
    beta = _crf_in(world.beta, world, in_tenant, email_of, api, definition=other)
    in_tenant(world.beta)
    assert FormVersion.objects.get(form_id=beta["form"]).pk == alpha_version  # the case that matters
    connection.set_schema_to_public()
    alpha_form = crf["coordinator"].get(crf["url"]).json()
    beta_form = beta["coordinator"].get(beta["url"]).json()
    assert alpha_form["definition"]["items"][1]["label"] == VITALS["items"][1]["label"]
    assert beta_form["definition"]["items"][1]["label"]["en"] == "Beta only item"
    # And a save in beta validates against beta's version, cached or not.
    saved = _put(beta["coordinator"], beta, GOOD, version=0)
    assert saved.status_code == 200 and "definition" not in saved.json()


def test_completing_the_form_of_an_anchor_visit_replans_the_events_anchored_on_it(world, in_tenant, email_of, api):
    """The usual completion is sent with the audit append; a visit that anchors other
    events takes the re-planning path. Both end with the task completed."""
    call = event("CALL", 14, anchor="event", anchor_event="D7", before=2, after=2)
    crf = _crf_in(world.alpha, world, in_tenant, email_of, api, later=[call])
    coordinator = crf["coordinator"]

    def tasks():  # type: ignore[no-untyped-def]
        return {t["event_code"]: t for t in coordinator.get(f"/api/v1/subjects/{crf['subject']}/").json()["tasks"]}

    assert tasks()["CALL"]["provisional"] is True
    assert _put(coordinator, crf, GOOD, version=0, complete=True).status_code == 200
    after = tasks()
    assert after["D7"]["status"] == "completed" and after["D7"]["completed_on"] == TODAY.isoformat()
    assert after["CALL"]["provisional"] is False
    assert after["CALL"]["target_date"] == (TODAY + dt.timedelta(days=14)).isoformat()


def test_the_save_target_read_says_whether_the_casebook_is_locked_or_signed(crf, in_tenant, world, email_of):
    from ecrf import selectors
    from ecrf.models import CasebookLock
    from tenants.models import TenantMembership

    in_tenant(world.alpha)
    membership = TenantMembership.objects.get(tenant=world.alpha, user=world.users[email_of("coordinator", "alpha")])

    def slot() -> Any:
        target = selectors.entry_target_get(membership=membership, task_id=crf["task"], form_id=crf["form"],
                                            for_save=True)
        assert target is not None
        return target.new_entry

    first = slot()
    assert first is not None and not first.casebook_locked and not first.signed
    assert slot().new_id != first.new_id  # each save its own id
    lock = CasebookLock.objects.create(subject_id=crf["subject"], locked_by=world.users[email_of("data_manager",
                                                                                               "alpha")])
    assert slot().casebook_locked
    lock.delete()
    Signature.objects.create(subject_id=crf["subject"], signer=world.users[email_of("investigator", "alpha")],
                             signer_name="Dr I", meaning="review", content_hash="0" * 64)
    assert slot().signed and not slot().casebook_locked
    connection.set_schema_to_public()
    assert _put(crf["coordinator"], crf, GOOD, version=0).status_code == 200
    in_tenant(world.alpha)
    assert slot() is None  # saved: the next save locks the entry's row


def test_a_lock_that_lands_during_an_edit_is_a_409_and_nothing_is_saved(crf, in_tenant, world, email_of,
                                                                       monkeypatch):
    """The locked path reads the lock at its start; the guard after the audit append
    catches one that committed after that read (simulated: the read is made to miss it)."""
    from ecrf import services
    from ecrf.models import CasebookLock

    assert _put(crf["coordinator"], crf, GOOD, version=0).status_code == 200
    in_tenant(world.alpha)
    CasebookLock.objects.create(subject_id=crf["subject"], locked_by=world.users[email_of("data_manager", "alpha")])
    real = services._entry_for_update

    def missed_the_lock(**kwargs: Any) -> Any:
        state = real(**kwargs)
        state.casebook_locked = False
        return state

    monkeypatch.setattr(services, "_entry_for_update", missed_the_lock)
    connection.set_schema_to_public()
    late = _put(crf["coordinator"], crf, {**GOOD, "weight": "80"}, version=1)
    assert _assert_error_shape(late, 409)["code"] == "locked"
    in_tenant(world.alpha)
    assert Entry.objects.get(task_id=crf["task"]).values["weight"] == 70.5


def test_an_empty_first_save_creates_the_entry_it_reports_and_audits_it(crf, in_tenant, world):
    """No values: the entry exists at version 1 (it was silently not written, then a 412)
    and its creation is audited; saving it again unchanged writes nothing."""
    from ecrf.models_audit import AuditEvent

    empty = _put(crf["coordinator"], crf, {}, version=0)
    assert empty.status_code == 200 and empty.json()["version"] == 1
    in_tenant(world.alpha)
    entry = Entry.objects.get(task_id=crf["task"])
    assert entry.version == 1
    actions = list(AuditEvent.objects.filter(entry_id=entry.pk).values_list("action", flat=True))
    assert actions[0] == "entry_create" and "item_create" not in actions  # (+ the soft "required" query)
    connection.set_schema_to_public()
    again = _put(crf["coordinator"], crf, {}, version=1)
    assert again.status_code == 200 and again.json()["version"] == 1 and again["ETag"] == '"1"'
    in_tenant(world.alpha)
    assert Entry.objects.get(task_id=crf["task"]).version == 1 and AuditEvent.objects.filter(
        entry_id=entry.pk).count() == len(actions)
    connection.set_schema_to_public()
    assert _put(crf["coordinator"], crf, GOOD, version=1).status_code == 200


def test_a_visit_of_two_forms_is_done_when_the_second_is_completed(world, in_tenant, email_of, api):
    from tests.ecrf.test_entry_web import PRO

    crf = _crf_in(world.alpha, world, in_tenant, email_of, api, also=[PRO])
    assert _put(crf["coordinator"], crf, GOOD, version=0, complete=True).status_code == 200
    in_tenant(world.alpha)
    assert FollowUpTask.objects.get(pk=crf["task"]).status != TaskStatus.COMPLETED  # one of two
    connection.set_schema_to_public()
    pro_url = f"/api/v1/tasks/{crf['task']}/forms/{crf['forms'][PRO['code']]}/entry/"
    done = crf["coordinator"].put(pro_url, {"values": {"sex": "1", "pain": 2}, "version": 0, "complete": True},
                                  format="json")
    assert done.status_code == 200, done.content
    in_tenant(world.alpha)
    assert FollowUpTask.objects.get(pk=crf["task"]).status == TaskStatus.COMPLETED


def test_a_reopened_automatic_query_is_not_closed_again_by_a_passing_check(crf, api, world, email_of):
    """A monitor re-opens a query its check had closed: they disagree with the data, so a
    later save (the check still passing) leaves it open for a person to close."""
    entry_id = _put(crf["coordinator"], crf, {**GOOD, "weight": "30"}, version=0).json()["entry"]
    assert _put(crf["coordinator"], crf, {**GOOD, "weight": "60"}, version=1).json()["queries_closed"] == 1
    queries_url = f"/api/v1/entries/{entry_id}/queries/"
    query = next(q for q in crf["coordinator"].get(queries_url).json() if q["item"] == "weight")
    monitor = api(world.alpha, email_of("monitor", "alpha"))
    reopened = monitor.post(f"/api/v1/queries/{query['id']}/reopen/", {"text": "Check the source again"},
                            format="json")
    assert reopened.json()["status"] == "open"
    again = _put(crf["coordinator"], crf, {**GOOD, "weight": "60", "pain": 4}, version=2)
    assert again.status_code == 200 and again.json()["queries_closed"] == 0
    after = next(q for q in crf["coordinator"].get(queries_url).json() if q["id"] == query["id"])
    assert after["status"] == "open" and [m["kind"] for m in after["messages"]][-1] == "reopen"
