"""The eCRF web pages with Django's test client: the data-entry page renders every item
type from the definition; roles, sites and tenants; queries answered from the page; the
casebook signed through its page; the ePRO link's whole lifecycle."""

from __future__ import annotations

import copy
import datetime as dt
import re
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone
from lxml import html as lxml_html

from ecrf.models import Entry, EproLink, Query, QueryStatus, Signature
from ecrf.models_audit import AuditEvent
from ecrf.samples import label as _label
from tests.conftest import PASSWORD
from tests.ecrf import test_entries
from tests.ecrf.test_entries import GOOD, VITALS, _put
from tests.studies.test_studies_api import TODAY
from tests.tenants.test_api import _assert_error_shape

pytestmark = pytest.mark.django_db
crf = test_entries.crf  # the fixture: a study whose D7 visit collects VITALS

# The VITALS form with the remaining widgets: a dropdown, a scale with end labels, help
# texts, a read-only item and a default. (File items on the page: test_entry_page_files.py
# and tests/browser/test_ecrf_file_upload_browser.py.)
EVERYTHING = copy.deepcopy(VITALS)
EVERYTHING["code"] = "VITALS2"
EVERYTHING["items"][2]["widget"] = "dropdown"
EVERYTHING["items"][4]["help"] = {"en": "Without shoes.", "zh-hans": "不穿鞋。"}
EVERYTHING["items"][7]["scale"] = {"min": 0, "max": 10, "step": 1, "min_label": _label("none"),
                                   "max_label": _label("worst")}


def _login(client: Client, email: str) -> Client:
    response = client.post("/login/", {"email": email, "password": PASSWORD})
    assert response.status_code == 302, response.content
    return client


def _page(web, world, email: str, language: str = "en") -> Client:  # type: ignore[no-untyped-def]
    client = web(world.alpha)
    client.cookies["django_language"] = language
    return _login(client, email)


def _entry_url(crf: dict[str, Any], form: int | None = None) -> str:
    return f"/visits/{crf['task']}/forms/{form or crf['form']}/"


def test_the_entry_page_renders_every_item_type(crf, web, world, email_of):
    page = _page(web, world, email_of("coordinator", "alpha"))
    response = page.get(_entry_url(crf))
    assert response.status_code == 200
    html = response.content.decode()
    for code, kind in (("visit_date", "date"), ("sex", "single_choice"), ("pregnant", "yes_no"),
                       ("weight", "decimal"), ("height", "integer"), ("bmi", "calculated"), ("pain", "scale"),
                       ("symptoms", "multiple_choice"), ("diag_date", "date"), ("dose_time", "time"),
                       ("seen_at", "datetime"), ("notes", "long_text"), ("email", "text"), ("meds", "group"),
                       ("hdr", "section")):
        assert f'data-path="{code}" data-code="{code}" data-type="{kind}"' in html, code
    assert 'type="date" id="f-visit_date"' in html and 'type="time" id="f-dose_time"' in html
    assert 'type="datetime-local" id="f-seen_at"' in html and 'type="range" id="f-pain"' in html
    assert 'class="part-year"' in html and 'class="part-month"' in html  # the partial date
    assert 'type="radio" name="f-sex"' in html and 'type="checkbox" id="f-symptoms-1"' in html
    assert '<output id="f-bmi" class="calc"' in html and "<h2 class=\"section-title\" id=\"f-hdr\">Measurements" in html
    assert '<label class="item-label" for="f-weight" id="f-weight-label">' in html and "(kg)" in html  # bound, unit
    assert 'id="f-weight-missing"' in html and "Unknown (UNK)" in html  # missing-data codes where allowed
    assert 'title="Required">*' in html and "row-template" in html and "up to 5 rows" in html
    # Pregnant is hidden until Female is chosen (the server's evaluation of the stored data).
    assert re.search(r'data-path="pregnant"[^>]*hidden', html)
    # Read-only without JavaScript: every input starts disabled; the script enables them.
    assert re.search(r'id="f-weight"[^>]*data-input disabled', html)
    assert "JavaScript is off: the form is shown read-only." in html
    assert 'id="ecrf-config"' in html and "vendor/json-logic.js" in html and "js/ecrf-entry.js" in html
    assert "Not started" in html and "Asia/Shanghai" in html and "Mark complete" in html
    # The other widgets.
    crf["admin"].post(f"/api/v1/studies/{crf['study']}/forms/", {"definition": EVERYTHING}, format="json")
    other = next(f["id"] for f in crf["admin"].get(f"/api/v1/studies/{crf['study']}/forms/").json()
                 if f["code"] == "VITALS2")
    assert crf["admin"].post(f"/api/v1/forms/{other}/publish/").status_code == 200
    html = page.get(_entry_url(crf, other)).content.decode()
    assert '<select id="f-sex" class="value"' in html and "Without shoes." in html and "worst" in html


def test_the_page_shows_the_stored_data_in_the_users_language(crf, web, world, email_of):
    assert _put(crf["coordinator"], crf, {**GOOD, "weight": "30"}, version=0).status_code == 200
    page = _page(web, world, email_of("coordinator", "alpha"), language="zh-hans")
    html = page.get(_entry_url(crf)).content.decode()
    assert "生命体征" in html and "女" in html and "未开始" not in html
    assert 'value="30"' in html and 'value="170"' in html and 'value="2024"' in html  # weight, height, year
    assert 'value="2026-01-02T09:15"' in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert re.search(r'value="2"[^>]*checked', html)  # sex: Female
    assert 'value="Aspirin"' in html and '<output id="f-bmi" class="calc" aria-live="polite">10.4' in html
    # The soft range raised a query, shown next to the weight with an answer box.
    assert 'data-queries-for="weight"' in html and "/answer/" in html


def test_roles_sites_and_tenants(crf, web, world, email_of, api):
    url = _entry_url(crf)
    monitor = _page(web, world, email_of("monitor", "alpha"))
    html = monitor.get(url).content.decode()
    assert "Mark complete" not in html and "your role does not enter data" in html
    assert _page(web, world, email_of("viewer", "alpha")).get(url).status_code == 403
    assert _page(web, world, email_of("data_manager", "alpha")).get(url).status_code == 200
    anonymous = web(world.alpha)
    assert anonymous.get(url).status_code == 302 and "/login/" in anonymous.get(url)["Location"]
    beta = web(world.beta)
    _login(beta, email_of("coordinator", "beta"))
    assert beta.get(url).status_code == 404  # another tenant's visit does not exist here
    assert beta.get(f"/subjects/{crf['subject']}/sign/").status_code == 404
    coordinator = _page(web, world, email_of("coordinator", "alpha"))
    assert coordinator.get(f"/visits/{crf['task']}/forms/999999/").status_code == 404
    assert coordinator.get(f"/visits/999999/forms/{crf['form']}/").status_code == 404
    # Ids past bigint: "no such visit", never "bigint out of range" from the database.
    huge = "9" * 20
    for path in (f"/visits/{huge}/forms/{crf['form']}/", f"/visits/{crf['task']}/forms/{huge}/",
                 f"/visits/{crf['task']}/forms/{huge}/queries/"):
        assert coordinator.get(path).status_code == 404, path
    by_token = api(world.alpha, email_of("coordinator", "alpha"))
    for path in (f"/api/v1/tasks/{huge}/forms/{crf['form']}/entry/",
                 f"/api/v1/tasks/{crf['task']}/forms/{huge}/entry/"):
        assert by_token.get(path).status_code == 404, path
        assert by_token.put(path, {"values": {}, "version": 0}, format="json").status_code == 404, path
    # A monitor of the tenant who works at none of this subject's sites sees nothing of it.
    elsewhere = _page(web, world, "both@example.org")
    assert elsewhere.get(url).status_code == 404
    assert elsewhere.get(f"/subjects/{crf['subject']}/sign/").status_code == 404


def test_the_subject_page_and_the_worklist_link_to_the_forms(crf, web, world, email_of):
    page = _page(web, world, email_of("coordinator", "alpha"))
    subject_html = page.get(f"/subjects/{crf['subject']}/").content.decode()
    assert f'href="/visits/{crf["task"]}/forms/{crf["form"]}/">Vital signs</a>' in subject_html
    assert subject_html.count('class="form-link"') == 1  # D7 collects VITALS, D30 nothing
    assert f'href="/subjects/{crf["subject"]}/sign/"' in subject_html
    worklist = page.get("/worklist/").content.decode()
    assert f'href="/visits/{crf["task"]}/forms/{crf["form"]}/"' in worklist
    viewer = _page(web, world, email_of("viewer", "alpha"))
    assert "form-link" not in viewer.get("/worklist/").content.decode()


def test_an_unscheduled_visit_lists_every_published_form(crf, web, world, email_of):
    visit = crf["coordinator"].post(f"/api/v1/subjects/{crf['subject']}/unscheduled-visits/",
                                    {"visit_date": TODAY.isoformat(), "reason": "AE follow-up"}, format="json")
    assert visit.status_code == 201, visit.content
    page = _page(web, world, email_of("coordinator", "alpha"))
    html = page.get(f"/subjects/{crf['subject']}/").content.decode()
    assert f'href="/visits/{visit.json()["id"]}/forms/{crf["form"]}/"' in html


def test_queries_are_answered_from_the_page(crf, web, world, email_of, in_tenant):
    saved = _put(crf["coordinator"], crf, {**GOOD, "weight": "30"}, version=0)
    assert saved.json()["queries_raised"] == 1
    in_tenant(world.alpha)
    query = Query.objects.get()
    connection.set_schema_to_public()
    url = f"{_entry_url(crf)}queries/{query.pk}/answer/"
    monitor = _page(web, world, email_of("monitor", "alpha"))
    refused = monitor.post(url, {"text": "fine"}, HTTP_X_REQUESTED_WITH="fetch")
    assert _assert_error_shape(refused, 403)
    page = _page(web, world, email_of("coordinator", "alpha"))
    empty = page.post(url, {"text": "  "}, HTTP_X_REQUESTED_WITH="fetch")
    assert "text" in _assert_error_shape(empty, 400)["fields"]
    fragment = page.get(f"{_entry_url(crf)}queries/").content.decode()
    # The check's message is stored in the language of whoever saved (the API client: the tenant's Chinese).
    assert 'data-queries-for="weight"' in fragment and "预期在 35 到 200 之间。" in fragment
    answered = page.post(url, {"text": "Checked: the patient is a child."})  # a plain form post
    assert answered.status_code == 302 and answered["Location"].endswith("#f-weight-item")
    in_tenant(world.alpha)
    assert Query.objects.get().status == QueryStatus.ANSWERED
    connection.set_schema_to_public()
    assert page.post(f"{_entry_url(crf)}queries/{query.pk}/explode/", {"text": "x"}).status_code == 404
    assert "Checked: the patient is a child." in page.get(_entry_url(crf)).content.decode()
    # The monitor closes it from the same page.
    closed = monitor.post(f"{_entry_url(crf)}queries/{query.pk}/close/", {"text": "OK"},
                          HTTP_X_REQUESTED_WITH="fetch")
    assert closed.status_code == 200
    in_tenant(world.alpha)
    assert Query.objects.get().status == QueryStatus.CLOSED
    connection.set_schema_to_public()
    # Still on the form, folded, with its closing note; the monitor may re-open it there.
    tree = lxml_html.fromstring(monitor.get(_entry_url(crf)).content)
    folded = tree.xpath(f"//*[@data-queries-for='weight']//details[@data-query='{query.pk}']")
    assert len(folded) == 1 and "query-closed" in folded[0].get("class")
    assert "OK" in folded[0].text_content() and folded[0].xpath(".//form[@data-action='reopen']")
    assert not tree.xpath("//*[@data-queries-for='weight']//*[contains(@class, 'query-open')]")


def test_the_casebook_is_signed_through_its_page(crf, web, world, email_of, in_tenant):
    url = f"/subjects/{crf['subject']}/sign/"
    investigator = _page(web, world, email_of("investigator", "alpha"))
    html = investigator.get(url).content.decode()
    assert "Only a casebook whose forms are all complete can be signed." in html
    assert "Not started" in html and "accurate and complete" in html and "Asia/Shanghai" in html
    incomplete = investigator.post(url, {"meaning": "review", "password": PASSWORD})
    assert incomplete.status_code == 400
    assert "Only a casebook whose forms are all complete can be signed." in incomplete.content.decode()
    assert _put(crf["coordinator"], crf, GOOD, version=0, complete=True).status_code == 200
    wrong = investigator.post(url, {"meaning": "review", "password": "nope"})
    assert wrong.status_code == 400
    assert re.search(r'has-error.*?The password is not correct\.', wrong.content.decode(), re.S)
    no_meaning = investigator.post(url, {"password": PASSWORD})
    assert no_meaning.status_code == 400 and 'id="id_meaning-error"' in no_meaning.content.decode()
    coordinator = _page(web, world, email_of("coordinator", "alpha"))
    assert 'id="sign-form"' not in coordinator.get(url).content.decode()
    assert coordinator.post(url, {"meaning": "review", "password": PASSWORD}).status_code == 403
    assert _page(web, world, email_of("viewer", "alpha")).get(url).status_code == 403
    signed = investigator.post(url, {"meaning": "approval", "password": PASSWORD}, follow=True)
    page = signed.content.decode()
    assert "signed by" in page and "I approve the data in this casebook." in page and ">Valid<" in page
    in_tenant(world.alpha)
    signature = Signature.objects.get()
    assert signature.meaning == "approval" and signature.signer_name == email_of("investigator", "alpha")
    connection.set_schema_to_public()
    # A change invalidates it; the page says so.
    _put(crf["coordinator"], crf, {**GOOD, "weight": "71.0"}, version=1, reason="lab report")
    assert ">Invalidated<" in investigator.get(url).content.decode()
    # Guessing the password is stopped after five tries, even with the right one.
    for _attempt in range(5):
        assert investigator.post(url, {"meaning": "review", "password": "guess"}).status_code == 400
    paused = investigator.post(url, {"meaning": "review", "password": PASSWORD})
    assert paused.status_code == 400 and "Too many wrong passwords" in paused.content.decode()


# --- ePRO ---------------------------------------------------------------------------------------

PRO: dict[str, Any] = {
    "code": "PROQ",
    "title": {"en": "How are you?", "zh-hans": "您好吗"},
    "patient_reported": True,
    "code_lists": {"SEX": VITALS["code_lists"]["SEX"]},
    "items": [
        {"code": "sex", "type": "single_choice", "label": {"en": "Sex", "zh-hans": "性别"}, "code_list": "SEX",
         "required": "hard"},
        {"code": "pregnant", "type": "yes_no", "label": {"en": "Pregnant", "zh-hans": "怀孕"}, "required": "hard",
         "show_if": {"==": [{"var": "sex"}, "2"]}},
        {"code": "pain", "type": "scale", "label": {"en": "Pain today", "zh-hans": "今天的疼痛"},
         "scale": {"min": 0, "max": 10, "step": 1}, "required": "hard"},
        {"code": "comment", "type": "long_text", "label": {"en": "Anything else?", "zh-hans": "其他"}},
    ],
}


@pytest.fixture
def pro(crf, in_tenant, world):  # type: ignore[no-untyped-def]
    """A published patient-reported form and a subject with an email and a phone."""
    admin, coordinator = crf["admin"], crf["coordinator"]
    assert admin.post(f"/api/v1/studies/{crf['study']}/forms/", {"definition": PRO}, format="json").status_code == 200
    form = next(f["id"] for f in admin.get(f"/api/v1/studies/{crf['study']}/forms/").json() if f["code"] == "PROQ")
    assert admin.post(f"/api/v1/forms/{form}/publish/").status_code == 200
    subject = coordinator.post("/api/v1/subjects/", {
        "study": crf["study"], "site": crf["site"], "consent_date": TODAY.isoformat(), "language": "en",
        "email": "patient@example.org", "phone": "13800001111"}, format="json").json()
    task = coordinator.get(f"/api/v1/subjects/{subject['id']}/").json()["tasks"][0]
    return {**crf, "pro_form": form, "pro_subject": subject["id"], "pro_task": task["id"],
            "issue": f"/api/v1/tasks/{task['id']}/forms/{form}/epro-link/"}


def _token(url: str) -> str:
    match = re.search(r"/epro/([^/]+)/$", url)
    assert match, url
    return match.group(1)


def _epro_client(web, world) -> Client:  # type: ignore[no-untyped-def]
    """A patient's browser (no account). The form speaks the subject's language; pages
    about a link that does not work speak the organisation's (here: the cookie's)."""
    client = Client(HTTP_HOST=world.host(world.alpha), enforce_csrf_checks=True)
    client.cookies["django_language"] = "en"
    return client


def _epro_post(client: Client, url: str, body: dict[str, Any]) -> Any:
    client.get(url)  # the page sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    return client.post(url, body, content_type="application/json", HTTP_X_CSRFTOKEN=token)


def test_epro_link_lifecycle(pro, web, world, email_of, api, in_tenant):
    coordinator = pro["coordinator"]
    # Issuing: coordinator or investigator of the site; not a monitor; not another tenant.
    _assert_error_shape(api(world.alpha, email_of("monitor", "alpha")).post(pro["issue"], {"channel": "email"},
                                                                             format="json"), 403)
    _assert_error_shape(api(world.beta, email_of("coordinator", "beta")).post(pro["issue"], {"channel": "email"},
                                                                               format="json"), 404)
    bad = coordinator.post(pro["issue"], {"channel": "pigeon", "ttl_hours": 0}, format="json")
    assert {"channel", "ttl_hours"} <= set(_assert_error_shape(bad, 400)["fields"])
    not_pro = coordinator.post(f"/api/v1/tasks/{pro['pro_task']}/forms/{pro['form']}/epro-link/",
                               {"channel": "email"}, format="json")
    assert "form" in _assert_error_shape(not_pro, 400)["fields"]
    issued = coordinator.post(pro["issue"], {"channel": "sms", "ttl_hours": 48}, format="json")
    assert issued.status_code == 201, issued.content
    body = issued.json()
    assert "/epro/" in body["url"] and body["expires_at"] and body["url"].startswith("http")
    url = f"/epro/{_token(body['url'])}/"
    patient = _epro_client(web, world)
    page = patient.get(url)
    assert page.status_code == 200 and page["Cache-Control"] == "no-store"
    html = page.content.decode()
    assert "How are you?" in html and "Save for later" in html and "Submit" in html  # the subject's language: en
    assert "csrfmiddlewaretoken" in html and 'data-path="pregnant"' in html
    # CSRF: a post without the token is refused.
    naked = Client(HTTP_HOST=world.host(world.alpha), enforce_csrf_checks=True)
    assert naked.post(url, {"values": {}}, content_type="application/json").status_code == 403
    # A draft: errors next to the fields for malformed answers; the link stays usable.
    wrong = _epro_post(patient, url, {"values": {"sex": "1", "pregnant": "1"}, "draft": True})
    assert "pregnant" in _assert_error_shape(wrong, 400)["fields"]
    # Nested past Python's recursion limit (well under the size limit): 400, not a 500.
    deep = patient.post(url, b'{"values": ' + b"[" * 50000 + b"]" * 50000 + b"}", content_type="application/json",
                        HTTP_X_CSRFTOKEN=patient.cookies["csrftoken"].value)
    assert _assert_error_shape(deep, 400)["code"] == "invalid"
    draft = _epro_post(patient, url, {"values": {"sex": "2"}, "draft": True})
    assert draft.status_code == 200 and draft.json()["status"] == "draft"
    assert "pain" in draft.json()["hard_errors"]
    reopened = patient.get(url).content.decode()
    assert "Your earlier answers have been kept." in reopened and re.search(r'value="2"[^>]*checked', reopened)
    incomplete = _epro_post(patient, url, {"values": {"sex": "2"}, "draft": False})
    assert {"pregnant", "pain"} <= set(_assert_error_shape(incomplete, 400)["fields"])
    done = _epro_post(patient, url, {"values": {"sex": "2", "pregnant": "0", "pain": 4, "comment": "ok"},
                                     "draft": False})
    assert done.status_code == 200 and done.json()["status"] == "submitted"
    assert "Thank you" in patient.get(done.json()["redirect"]).content.decode()
    # Used up.
    again = patient.get(url)
    assert again.status_code == 410 and "already been submitted" in again.content.decode()
    assert _epro_client(web, world).post(url, {}, content_type="application/json").status_code in (403, 410)
    # The answers landed with source "epro".
    audit = coordinator.get(f"/api/v1/subjects/{pro['pro_subject']}/audit/?form=PROQ").json()["results"]
    assert {r["source"] for r in audit if r["action"] != "epro_link_issued"} == {"epro"}
    assert {"epro_submit", "entry_complete", "item_create"} <= {r["action"] for r in audit}
    pain = next(r for r in audit if r["item"] == "pain" and r["action"] == "item_create")
    assert pain["new"] == 4 and pain["user"] is None


def test_expired_tampered_and_withdrawn_links(pro, web, world, in_tenant):
    coordinator = pro["coordinator"]
    url = f"/epro/{_token(coordinator.post(pro['issue'], {'channel': 'email'}, format='json').json()['url'])}/"
    patient = _epro_client(web, world)
    assert patient.get(url).status_code == 200
    tampered = url[:-3] + ("A" if url[-3] != "A" else "B") + url[-2:]
    response = patient.get(tampered)
    assert response.status_code == 404 and "This link is not valid" in response.content.decode()
    assert patient.get("/epro/" + "x" * 300 + "/").status_code == 404
    # Expired.
    in_tenant(world.alpha)
    EproLink.objects.update(expires_at=timezone.now() - timedelta(minutes=1))
    connection.set_schema_to_public()
    expired = patient.get(url)
    assert expired.status_code == 410 and "expired" in expired.content.decode()
    in_tenant(world.alpha)
    EproLink.objects.update(expires_at=timezone.now() + timedelta(days=1))
    connection.set_schema_to_public()
    assert patient.get(url).status_code == 200
    # The subject withdraws: the link stops working.
    withdrawn = coordinator.post(f"/api/v1/subjects/{pro['pro_subject']}/status/", {
        "status": "withdrawn", "effective_on": TODAY.isoformat(), "reason": "moved away"}, format="json")
    assert withdrawn.status_code == 200, withdrawn.content
    gone = patient.get(url)
    assert gone.status_code == 410
    assert _epro_post(patient, "/epro/" + "y" * 43 + "/", {"values": {}}).status_code == 404


def test_unknown_tokens_are_throttled_per_client(pro, web, world):
    patient = _epro_client(web, world)
    for attempt in range(30):
        assert patient.get(f"/epro/guess{attempt:03d}/").status_code == 404
    assert patient.get("/epro/guess999/").status_code == 429


def test_the_staff_page_offers_the_link_for_patient_reported_forms(pro, web, world, email_of):
    page = _page(web, world, email_of("coordinator", "alpha"))
    html = page.get(f"/visits/{pro['pro_task']}/forms/{pro['pro_form']}/").content.decode()
    assert 'id="epro-send"' in html and f"/api/v1/tasks/{pro['pro_task']}/forms/{pro['pro_form']}/epro-link/" in html
    assert 'id="epro-send"' not in page.get(f"/visits/{pro['task']}/forms/{pro['form']}/").content.decode()


def test_the_page_gets_only_the_cross_form_data_its_logic_reads():
    from ecrf.views import _client_context

    definition = {"items": [
        {"code": "a", "type": "integer", "show_if": {">": [{"var": "LAB.hb"}, 10]}},
        {"code": "b", "type": "calculated", "calc": {"+": [{"var": "BASE.VITALS.weight"}, {"var": "a"}]}}]}
    context = {"_today": "2026-01-01", "LAB": {"hb": 12, "hiv": "positive"},
               "BASE": {"VITALS": {"weight": 70, "notes": "private"}, "LAB": {"hb": 9}}, "OTHER": {"x": 1}}
    assert _client_context(definition, context) == {"_today": "2026-01-01", "LAB": {"hb": 12},
                                                    "BASE": {"VITALS": {"weight": 70}}}
    dynamic = {"items": [{"code": "c", "type": "calculated", "calc": {"var": {"cat": ["LAB.", "hb"]}}}]}
    assert _client_context(dynamic, context) == context  # a computed path may read anything


def test_audit_viewer_per_subject_form_and_item(crf, web, world, email_of):
    from tests.studies.test_worklist_web import _login

    _put(crf["coordinator"], crf, GOOD, version=0, complete=True)
    _put(crf["coordinator"], crf, {**GOOD, "weight": "71.0", "notes": "<b>bold</b>"}, version=1,
         reason="chart re-read")
    page = web(world.alpha)
    page.cookies["django_language"] = "en"
    _login(page, email_of("monitor", "alpha"))
    url = f"/subjects/{crf['subject']}/audit/"
    html = page.get(url).content.decode()
    assert "Audit trail of S1-0001" in html and "chart re-read" in html and "Item changed" in html
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html  # values are shown as text
    weight = page.get(url + "?form=VITALS&item=weight").content.decode()
    assert weight.count("<tr>") == 3  # header, the change and the creation
    assert "70.5" in weight and "71.0" in weight
    assert page.get(url + "?before=abc&item=" + "x" * 300).status_code == 200
    assert page.get(url + "?before=²").status_code == 200  # a Unicode digit that int() refuses
    refused = page.get(url + "?item=a%00b")  # the trail cannot be searched for a NUL: said, not a 500
    assert refused.status_code == 400 and "Text may not contain NUL characters." in refused.content.decode()


def test_the_audit_pages_go_back_to_the_newest_keeping_the_filter(crf, web, world, email_of, monkeypatch):
    from lxml import html as lxml_html

    from ecrf import views
    from tests.studies.test_worklist_web import _login

    monkeypatch.setattr(views, "AUDIT_PAGE", 2)
    _put(crf["coordinator"], crf, GOOD, version=0, complete=True)
    for version, weight in ((1, "71.0"), (2, "72.0")):
        _put(crf["coordinator"], crf, {**GOOD, "weight": weight}, version=version, reason="chart re-read")
    page = web(world.alpha)
    page.cookies["django_language"] = "en"
    _login(page, email_of("monitor", "alpha"))
    url = f"/subjects/{crf['subject']}/audit/"
    first = lxml_html.fromstring(page.get(url + "?form=VITALS&item=weight").content)
    assert not first.xpath("//*[@id='audit-newest']")
    older = first.xpath("//*[@id='audit-older']/@href")[0]
    assert older.startswith("?form=VITALS&item=weight&before=")
    second = lxml_html.fromstring(page.get(url + older).content)
    assert second.xpath("//*[@id='audit-newest']/@href") == ["?form=VITALS&item=weight"]
    assert len(second.xpath("//table[@class='audit']/tbody/tr")) == 1  # the creation: three weight rows in all"
    viewer = web(world.alpha)
    _login(viewer, email_of("viewer", "alpha"))
    assert viewer.get(url).status_code == 403
    other = web(world.alpha)
    _login(other, email_of("coordinator", "alpha"))
    assert other.get("/subjects/999999/audit/").status_code == 404


def test_queries_page_reports_per_site_and_lists_them(crf, web, world, email_of, django_assert_max_num_queries):
    from tests.studies.test_worklist_web import _login

    _put(crf["coordinator"], crf, {**GOOD, "weight": "30", "dbp": 115, "sbp": 150}, version=0)  # two soft problems
    page = web(world.alpha)
    page.cookies["django_language"] = "en"
    _login(page, email_of("monitor", "alpha"))
    html = page.get("/queries/").content.decode()
    assert html.count('class="query-open"') == 2 and "Diastolic above 110: please confirm." in html
    assert "DBP_HIGH" in html and "S1-0001" in html
    # The item as the form names it, and a link straight to it on the form.
    assert "<td>Weight<br><span class=\"muted\">weight</span></td>" in html
    assert f'/visits/{crf["task"]}/forms/{crf["form"]}/#f-weight-item"' in html
    assert page.get("/queries/?status=closed").content.decode().count('class="query-open"') == 0
    assert page.get(f"/queries/?status=all&site={crf['site']}").content.decode().count("query-open") == 2
    assert page.get("/queries/?status=bogus&site=x&page=zz").status_code == 200
    assert page.get("/queries/?site=²").status_code == 200
    with django_assert_max_num_queries(12):  # not one query per row
        page.get("/queries/?status=all")
    beta = web(world.beta)
    _login(beta, email_of("monitor", "beta"))
    assert "query-open" not in beta.get("/queries/").content.decode()
    viewer = web(world.alpha)
    _login(viewer, email_of("viewer", "alpha"))
    assert viewer.get("/queries/").status_code == 403


def _audit_actions(in_tenant, world, after: int = 0) -> list[str]:  # type: ignore[no-untyped-def]
    """The tenant's audit actions after sequence number `after` (other tests, the browser
    tests' committed data among them, may have appended to the append-only trail)."""
    from ecrf.models_audit import AuditEvent

    in_tenant(world.alpha)
    actions = list(AuditEvent.objects.filter(seq__gt=after).order_by("seq").values_list("action", flat=True))
    connection.set_schema_to_public()
    return actions


def _audit_head(in_tenant, world) -> int:  # type: ignore[no-untyped-def]
    from django.db.models import Max

    from ecrf.models_audit import AuditEvent

    in_tenant(world.alpha)
    head = AuditEvent.objects.aggregate(head=Max("seq"))["head"] or 0
    connection.set_schema_to_public()
    return int(head)


def test_monitoring_from_the_page_queries_sdv_and_locks(crf, web, world, email_of, in_tenant):
    """Without JavaScript (plain form posts): a monitor raises a query on an item and
    verifies items, a data manager locks and unlocks; a refusal shows the page again with
    what was typed and why, next to the form used."""
    url = _entry_url(crf)
    audit_before = _audit_head(in_tenant, world)
    coordinator = _page(web, world, email_of("coordinator", "alpha"))
    assert "Raise a query" not in coordinator.get(url).content.decode()  # the site answers, it does not raise
    monitor = _page(web, world, email_of("monitor", "alpha"))
    before_entry = monitor.get(url).content.decode()
    assert "Raise a query" not in before_entry and "Mark verified" not in before_entry  # nothing entered yet
    refused = monitor.post(f"{url}queries/raise/", {"item": "weight", "text": "Source says 71?"})
    assert refused.status_code == 400 and "Nothing has been entered in this form yet." in refused.content.decode()
    assert _put(crf["coordinator"], crf, GOOD, version=0).status_code == 200

    page = monitor.get(url).content.decode()
    assert page.count("Raise a query") >= 10 and "Mark verified" in page and "Lock this form" not in page
    raised = monitor.post(f"{url}queries/raise/", {"item": "weight", "text": "Source says 71?"})
    assert raised.status_code == 302 and raised["Location"].endswith(f"{url}#f-weight-item")
    in_tenant(world.alpha)
    query = Query.objects.get()
    assert (query.item, query.origin, query.status) == ("weight", "manual", QueryStatus.OPEN)
    connection.set_schema_to_public()
    # Refused: an empty question, an unknown item: the page again, the typed text kept.
    empty = monitor.post(f"{url}queries/raise/", {"item": "height", "text": "   "})
    assert empty.status_code == 400 and "Write the message." in empty.content.decode()
    unknown = monitor.post(f"{url}queries/raise/", {"item": "nope", "text": "What is this?"})
    assert unknown.status_code == 400 and "No such item in this entry." in unknown.content.decode()
    in_tenant(world.alpha)
    assert Query.objects.count() == 1  # nothing saved by a refusal
    connection.set_schema_to_public()
    # The site cannot raise one, even by posting the form itself.
    assert coordinator.post(f"{url}queries/raise/", {"item": "weight", "text": "x"}).status_code == 403

    verified = monitor.post(f"{url}verify/", {"item": "weight"})
    assert verified.status_code == 302 and verified["Location"].endswith("#f-weight-item")
    in_tenant(world.alpha)
    entry = Entry.objects.get()
    assert set(entry.verified) == {"weight"}
    connection.set_schema_to_public()
    assert monitor.post(f"{url}verify/", {"all": "1"}).status_code == 302
    in_tenant(world.alpha)
    assert {"weight", "height", "sbp", "meds[0].med_name"} <= set(Entry.objects.get().verified)
    connection.set_schema_to_public()
    after_sdv = monitor.get(url)
    assert "Mark verified" not in after_sdv.content.decode()  # nothing left to verify
    # "last saved" is the data's save, not the verification that changed the row since.
    in_tenant(world.alpha)
    entry = Entry.objects.get()
    saved_at = AuditEvent.objects.filter(entry_id=entry.pk, action="item_create").order_by("-seq").first().at
    assert entry.updated > saved_at
    connection.set_schema_to_public()
    shown = lxml_html.fromstring(after_sdv.content).xpath("//*[@id='entry-saved']/time/@datetime")[0]
    assert dt.datetime.fromisoformat(shown) == saved_at
    assert coordinator.post(f"{url}verify/", {"all": "1"}).status_code == 403  # monitors only

    manager = _page(web, world, email_of("data_manager", "alpha"))
    assert monitor.post(f"{url}lock/", {"reason": ""}).status_code == 403
    assert "Lock this form" in manager.get(url).content.decode()
    assert manager.post(f"{url}lock/", {"reason": "Database lock"}).status_code == 302
    locked_page = coordinator.get(url).content.decode()
    assert "This record is locked" in locked_page and "Mark complete" not in locked_page
    no_reason = manager.post(f"{url}unlock/", {"reason": "  "})
    assert no_reason.status_code == 400 and "Give a reason for unlocking." in no_reason.content.decode()
    in_tenant(world.alpha)
    assert Entry.objects.get().locked  # still locked
    connection.set_schema_to_public()
    assert manager.post(f"{url}unlock/", {"reason": "Late lab result"}).status_code == 302
    in_tenant(world.alpha)
    assert not Entry.objects.get().locked
    connection.set_schema_to_public()
    actions = _audit_actions(in_tenant, world, after=audit_before)
    assert actions.count("query_open") == 1 and actions.count("sdv_set") >= 5
    assert actions[-2:] == ["lock", "unlock"]

    # Another tenant's user never reaches this entry's actions.
    beta = web(world.beta)
    _login(beta, email_of("data_manager", "beta"))
    for path in ("queries/raise/", "verify/", "lock/", "unlock/"):
        assert beta.post(f"{url}{path}", {"item": "weight", "text": "x", "reason": "x", "all": "1"}).status_code == 404


def test_a_refused_answer_keeps_the_typed_text_and_says_why_in_the_users_language(
        crf, web, world, email_of, in_tenant):
    _put(crf["coordinator"], crf, {**GOOD, "weight": "30"}, version=0)
    in_tenant(world.alpha)
    query = Query.objects.get()
    connection.set_schema_to_public()
    monitor = _page(web, world, email_of("monitor", "alpha"))
    assert monitor.post(f"{_entry_url(crf)}queries/{query.pk}/close/", {"text": "OK"}).status_code == 302
    site = _page(web, world, email_of("coordinator", "alpha"), language="zh-hans")
    late = site.post(f"{_entry_url(crf)}queries/{query.pk}/answer/", {"text": "我仔细核对过原始记录"})
    html = late.content.decode()
    assert late.status_code == 409
    assert "我仔细核对过原始记录</textarea>" in html  # kept in the answer box
    said = re.sub(r"<[^>]+>", "", html.split('role="alert"')[1].split("</p>")[0])
    assert "已关闭" in said and "answer" not in said  # no English word inside the Chinese sentence


def test_the_casebook_lock_is_shown_as_such(crf, web, world, email_of, api):
    assert _put(crf["coordinator"], crf, GOOD, version=0).status_code == 200
    manager = api(world.alpha, email_of("data_manager", "alpha"))
    assert manager.post(f"/api/v1/subjects/{crf['subject']}/casebook/lock/", {"reason": "x"},
                        format="json").status_code == 200
    page = _page(web, world, email_of("coordinator", "alpha")).get(_entry_url(crf)).content.decode()
    assert "Casebook locked" in page and "casebook is locked" in page
    assert "your role does not enter data" not in page and "Mark complete" not in page


def test_query_times_are_in_the_sites_zone_on_the_page_and_in_its_fragment(crf, web, world, email_of, in_tenant):
    from sites.models import Site

    in_tenant(world.alpha)
    Site.objects.update(time_zone="America/New_York")  # the tenant is on Asia/Shanghai
    connection.set_schema_to_public()
    _put(crf["coordinator"], crf, {**GOOD, "weight": "30"}, version=0)
    in_tenant(world.alpha)
    raised_at = timezone.localtime(Query.objects.get().messages.get().at,
                                   __import__("zoneinfo").ZoneInfo("America/New_York")).strftime("%Y-%m-%d %H:%M")
    connection.set_schema_to_public()
    page = _page(web, world, email_of("coordinator", "alpha"))
    assert raised_at in page.get(_entry_url(crf)).content.decode()
    assert raised_at in page.get(f"{_entry_url(crf)}queries/").content.decode()


def test_a_data_manager_locks_and_unlocks_the_casebook_from_its_page(crf, web, world, email_of, in_tenant):
    from ecrf.models import CasebookLock

    assert _put(crf["coordinator"], crf, GOOD, version=0).status_code == 200
    url = f"/subjects/{crf['subject']}/sign/"
    manager = _page(web, world, email_of("data_manager", "alpha"))
    assert "Lock the casebook" in manager.get(url).content.decode()
    coordinator = _page(web, world, email_of("coordinator", "alpha"))
    assert "Lock the casebook" not in coordinator.get(url).content.decode()
    assert coordinator.post(f"/subjects/{crf['subject']}/casebook/lock/").status_code == 302
    in_tenant(world.alpha)
    assert not CasebookLock.objects.exists()  # refused: data managers only (said on the page)
    connection.set_schema_to_public()
    locked = manager.post(f"/subjects/{crf['subject']}/casebook/lock/", {"reason": "Database lock"}, follow=True)
    assert "Casebook locked." in locked.content.decode() and "Unlock the casebook" in locked.content.decode()
    assert "casebook is locked" in coordinator.get(_entry_url(crf)).content.decode()
    no_reason = manager.post(f"/subjects/{crf['subject']}/casebook/unlock/", {"reason": ""}, follow=True)
    assert "Give a reason for unlocking." in no_reason.content.decode()
    in_tenant(world.alpha)
    assert CasebookLock.objects.count() == 1
    connection.set_schema_to_public()
    unlocked = manager.post(f"/subjects/{crf['subject']}/casebook/unlock/", {"reason": "Query answered late"},
                            follow=True)
    assert "Casebook unlocked." in unlocked.content.decode()
    in_tenant(world.alpha)
    assert not CasebookLock.objects.exists()
    connection.set_schema_to_public()
    beta = web(world.beta)
    _login(beta, email_of("data_manager", "beta"))
    assert beta.post(f"/subjects/{crf['subject']}/casebook/lock/").status_code == 404  # another tenant's subject


def test_the_epro_message_gives_the_expiry_on_the_sites_clock(pro, world, in_tenant):
    """The page and the coordinator show the site's time; so does the SMS or email (it
    used the organisation's zone, and no time of day)."""
    import zoneinfo

    from notifications.models import OutboxMessage
    from sites.models import Site

    in_tenant(world.alpha)
    Site.objects.filter(pk=pro["site"]).update(time_zone="America/Los_Angeles")  # the tenant's: Asia/Shanghai
    connection.set_schema_to_public()
    issued = pro["coordinator"].post(pro["issue"], {"channel": "sms", "ttl_hours": 30}, format="json")
    assert issued.status_code == 201, issued.content
    in_tenant(world.alpha)
    link = EproLink.objects.latest("pk")
    body = OutboxMessage.objects.get(key=f"epro:{link.pk}").body
    site_clock = timezone.localtime(link.expires_at, zoneinfo.ZoneInfo("America/Los_Angeles"))
    tenant_clock = timezone.localtime(link.expires_at, zoneinfo.ZoneInfo("Asia/Shanghai"))
    assert site_clock.strftime("%Y-%m-%d %H:%M") in body and tenant_clock.strftime("%Y-%m-%d %H:%M") not in body
