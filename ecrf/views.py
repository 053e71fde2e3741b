"""Web pages of the eCRF (thin: selectors and services -> templates).

- ``/visits/<task>/forms/<form>/``: data entry. The items are rendered on the server from
  the form version's definition (readable without JavaScript, read-only then);
  static/js/ecrf-entry.js adds live branching and calculations (window.SuifangLogic, the
  same JSON Logic as the server), the local draft, and saving through the JSON API
  (PUT /api/v1/tasks/<task>/forms/<form>/entry/ with If-Match).
- ``/subjects/<id>/sign/``: an investigator signs the casebook (21 CFR 11.50, 11.200).
- ``/epro/<token>/``: a patient answers a patient-reported form with no login.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

import structlog
from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from config.db import whole_number_param
from config.errors import DomainError, ValidationFailed
from config.web import request_member
from ecrf import epro, selectors, services
from ecrf.audit_selectors import audit_for_subject, entry_data_saved_at
from ecrf.definition import VALUELESS_TYPES, iter_items
from ecrf.models import CasebookLock, Entry, EntryStatus, Query, Signature, SignatureMeaning
from ecrf.validation import entry_evaluate
from studies import selectors as study_selectors
from studies.services import site_today

log = structlog.get_logger(__name__)

# Site roles answer queries; monitors and data managers close and re-open them.
QUERY_ACTIONS = ("answer", "close", "reopen")
MISSING_LABELS = {"NA": gettext_lazy("Not applicable (NA)"), "UNK": gettext_lazy("Unknown (UNK)"),
                  "ASKU": gettext_lazy("Asked but unknown (ASKU)"), "NASK": gettext_lazy("Not asked (NASK)")}
# ePRO: lookups of unknown tokens per client address before it must wait.
EPRO_MISS_LIMIT = 30
EPRO_MISS_WINDOW = 15 * 60
MAX_EPRO_BODY = 512 * 1024
# Signing: wrong passwords per signer before a pause.


def _language() -> str:
    return "zh-hans" if (translation.get_language() or "").lower().startswith("zh") else "en"


def _text(texts: Any, language: str) -> str:
    if not isinstance(texts, dict):
        return ""
    return str(texts.get(language) or texts.get("en") or texts.get("zh-hans") or "")


def _dom_id(path: str) -> str:
    return "f-" + re.sub(r"[^A-Za-z0-9_-]", "-", path)


_ITEM_PATH = re.compile(r"^(\w+)(?:\[(\d+)\]\.(\w+))?$")


def _item_label(definition: dict[str, Any], path: str, language: str) -> str:
    """An item path as its form labels it: "weight" -> "Weight", "meds[0].dose" ->
    "Medications #1 · Dose"; the path itself when the definition does not know it."""
    found = _ITEM_PATH.match(path or "")
    if not found:
        return path
    code, row, child = found.groups()
    item = next((i for i in iter_items(definition.get("items") or []) if i.get("code") == code), None)
    if item is None:
        return path
    label = _text(item.get("label"), language) or code
    if child is None:
        return label
    sub = next((c for c in item.get("items") or [] if c.get("code") == child), None)
    return f"{label} #{int(row) + 1} · {(_text(sub.get('label'), language) if sub else '') or child}"


def form_title(version: Any, language: str | None = None) -> str:
    return _text(version.definition.get("title"), language or _language()) or version.form.code


# --- rendering a definition -----------------------------------------------------------------------

class _Renderer:
    """Turns a form definition and its stored data into plain dicts for the item
    templates (ecrf/templates/ecrf/items/<type>.html), so the templates stay dumb."""

    def __init__(self, *, definition: dict[str, Any], values: dict[str, Any], missing: dict[str, str],
                 verified: dict[str, Any], queries: dict[str, list[Query]], errors: dict[str, list[str]],
                 visible: set[str] | None, language: str, readonly: bool) -> None:
        self.definition = definition
        self.code_lists = definition.get("code_lists") or {}
        self.values, self.missing, self.verified = values, missing, verified
        self.queries, self.errors, self.visible = queries, errors, visible
        self.language, self.readonly = language, readonly

    def items(self) -> list[dict[str, Any]]:
        return [self._item(item, item["code"], self.values.get(item["code"])) for item in
                self.definition.get("items") or []]

    def _choices(self, item: dict[str, Any]) -> list[dict[str, str]]:
        return [{"value": entry["value"], "label": _text(entry.get("labels"), self.language) or entry["value"]}
                for entry in self.code_lists.get(item.get("code_list", ""), [])]

    def _item(self, item: dict[str, Any], path: str, value: Any, *, in_row: bool = False) -> dict[str, Any]:
        kind = item["type"]
        spec: dict[str, Any] = {
            "code": item["code"], "type": kind, "path": path, "id": _dom_id(path),
            "template": f"ecrf/items/{kind}.html", "label": _text(item.get("label"), self.language),
            "help": _text(item.get("help"), self.language), "required": item.get("required", "no"),
            "unit": item.get("unit") or "", "value": value, "missing": self.missing.get(path, ""),
            "missing_codes": [(code, MISSING_LABELS[code]) for code in item.get("missing_codes") or []],
            "hidden": self.visible is not None and not in_row and path not in self.visible
            and item.get("show_if") is not None,
            "errors": self.errors.get(path, []), "verified": path in self.verified,
            "queries": self.queries.get(path, []), "readonly": self.readonly or bool(item.get("readonly")),
            "in_row": in_row,
        }
        # Several inputs (radios, checkboxes, date parts, rows) share one legend.
        spec["fieldset"] = (kind in ("yes_no", "multiple_choice", "file", "group")
                            or (kind == "single_choice" and item.get("widget") != "dropdown")
                            or (kind == "date" and bool(item.get("partial"))))
        if kind in ("single_choice", "multiple_choice"):
            spec["choices"] = self._choices(item)
            spec["widget"] = item.get("widget") or ("checkbox" if kind == "multiple_choice" else "radio")
            spec["selected"] = [str(v) for v in (value if isinstance(value, list) else [value])
                                if v is not None]
        elif kind == "yes_no":
            spec["choices"] = [{"value": "1", "label": _("Yes")}, {"value": "0", "label": _("No")}]
            spec["selected"] = [] if value is None else [str(value)]
        elif kind == "scale":
            scale = item.get("scale") or {}
            spec["scale"] = {"min": scale.get("min", 0), "max": scale.get("max", 10), "step": scale.get("step", 1),
                             "min_label": _text(scale.get("min_label"), self.language),
                             "max_label": _text(scale.get("max_label"), self.language)}
        elif kind == "date" and item.get("partial"):
            text = str(value or "")
            spec["partial"] = True
            spec["parts"] = {"year": text[0:4], "month": text[5:7], "day": text[8:10]}
            spec["months"] = [f"{m:02d}" for m in range(1, 13)]
        elif kind in ("text", "long_text"):
            spec["max_length"] = item.get("max_length")
            spec["format"] = item.get("format") or ""
        elif kind == "decimal":
            spec["precision"] = item.get("precision")
        elif kind == "file":
            spec["file"] = value if isinstance(value, dict) else None
        elif kind == "group":
            children = item.get("items") or []
            rows = value if isinstance(value, list) else []
            spec["max_rows"] = item.get("max_rows", 50)
            spec["columns"] = [{"label": _text(c.get("label"), self.language), "required": c.get("required", "no"),
                                "unit": c.get("unit") or "", "type": c["type"], "help": _text(c.get("help"),
                                                                                                self.language)}
                               for c in children if c["type"] not in VALUELESS_TYPES]
            cells = [c for c in children if c["type"] not in VALUELESS_TYPES]
            spec["rows"] = [{"index": index, "cells": [
                self._item(child, f"{path}[{index}].{child['code']}", (row or {}).get(child["code"]), in_row=True)
                for child in cells]} for index, row in enumerate(rows)]
            spec["blank_row"] = {"index": "__row__", "cells": [
                self._item(child, f"{path}[__row__].{child['code']}", child.get("default"), in_row=True)
                for child in cells]}
            spec["can_add"] = len(rows) < spec["max_rows"]
        return spec


def _stored_evaluation(*, definition: dict[str, Any], entry: Entry | None, context: dict[str, Any],
                       language: str) -> tuple[set[str], dict[str, list[str]]]:
    """What the server thinks of the stored data now: the visible items and the hard
    problems still open (shown next to the items on the page)."""
    calculated = {item["code"] for item in iter_items(definition.get("items") or [])
                  if item.get("type") == "calculated"}
    values: dict[str, Any] = {}
    for code, value in (entry.values if entry else {}).items():
        if code in calculated:
            continue
        if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
            value = [{k: v for k, v in row.items() if k not in calculated} for row in value]
        values[code] = value
    evaluation = entry_evaluate(definition=definition, values=values, missing=entry.missing if entry else {},
                                context=context, language=language)
    if evaluation.malformed:  # data stored under an older rule; show every item
        return {item["code"] for item in definition.get("items") or []}, {}
    return evaluation.visible, (evaluation.hard if entry is not None else {})


def _client_context(definition: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """The part of the cross-form context the form's logic reads ("FORM.item",
    "EVENT.FORM.item", "_today"): the page gets only that, not the whole casebook (an
    ePRO link must not carry the patient's other clinical data). A variable whose path is
    computed at run time needs everything."""
    from ecrf.logic import LogicError, logic_variables

    paths: set[str] = set()
    dynamic = False

    def walk(node: Any) -> None:
        nonlocal dynamic
        if isinstance(node, list):
            for child in node:
                walk(child)
        elif isinstance(node, dict):
            for op, args in node.items():
                if op == "var":
                    first = args[0] if isinstance(args, list) and args else args
                    if not isinstance(first, str | int | type(None)) or isinstance(first, bool):
                        dynamic = True
                walk(args)

    for item in iter_items(definition.get("items") or []):
        for expr in [item.get("show_if"), item.get("calc"), *[c.get("rule") for c in item.get("checks") or []]]:
            if expr is None:
                continue
            walk(expr)
            try:
                paths |= logic_variables(expr)
            except LogicError:
                dynamic = True
    if dynamic:
        return context
    shown: dict[str, Any] = {"_today": context.get("_today")}
    for path in paths:
        parts = path.split(".")
        if not parts[0][:1].isupper():
            continue  # this form's own items (or "_today")
        source: Any = context
        target = shown
        for depth, part in enumerate(parts):
            if not isinstance(source, dict) or part not in source:
                break
            if depth == len(parts) - 1 or not isinstance(source[part], dict):
                target[part] = source[part]
                break
            target = target.setdefault(part, {})
            source = source[part]
    return shown


def _defaults(definition: dict[str, Any]) -> dict[str, Any]:
    return {item["code"]: item["default"] for item in definition.get("items") or []
            if item.get("default") is not None and item["type"] not in VALUELESS_TYPES | {"calculated"}}


def _queries_by_item(entry: Entry | None) -> dict[str, list[Query]]:
    """Every query of the entry by item, closed ones too (shown folded, with their
    closing note and the way to re-open them)."""
    if entry is None:
        return {}
    by_item: dict[str, list[Query]] = {}
    for query in (Query.objects.filter(entry=entry).prefetch_related("messages__author").order_by("created", "pk")):
        by_item.setdefault(query.item, []).append(query)
    return by_item


# --- data entry -------------------------------------------------------------------------------------

def _entry_target(request: HttpRequest, task_id: int, form_id: int) -> tuple[Any, Any, Any, Entry | None, Any]:
    """(membership, task, form, entry or None, the form version shown), or 403/404."""
    membership = request_member(request)
    if membership.role in selectors.NO_ENTRY_READ_ROLES:
        raise PermissionDenied
    target = selectors.entry_target_get(membership=membership, task_id=task_id, form_id=form_id)
    if target is None or target.form is None or target.version is None:
        raise Http404
    task, form, version = target.task, target.form, target.version
    entry = selectors.entry_for(task_id=task.pk, form_id=form.pk) if target.entry_id else None
    return membership, task, form, entry, version


def _js_messages() -> dict[str, str]:
    """The texts ecrf-entry.js shows, translated here (one catalog for the whole page)."""
    return {
        "saving": _("Saving…"), "saved": _("Saved."), "completed": _("Saved and marked complete."),
        "queries_raised": _("Queries raised: %(n)s. They are shown next to the items."),
        "queries_closed": _("Queries resolved by the change: %(n)s."),
        "hard_left": _("Saved as a partial entry. Fix the items marked before completing the form."),
        "invalid": _("Nothing was saved: correct the items marked."),
        "conflict": _("Someone else saved this form after you opened it. Nothing was saved; what you typed is "
                      "still here and kept on this device."),
        "conflict_items": _("Changed by someone else:"),
        "reload": _("Reload the form (your unsaved changes are restored)"),
        "reason_needed": _("Give a reason for the change before saving."),
        "restored": _("Restored unsaved changes from this device."),
        "restored_older": _("They were typed on an older version of this form; someone else has saved since. "
                            "Check the items before saving."),
        "discard": _("Discard them"), "discarded": _("Unsaved changes discarded."),
        "network": _("The server could not be reached. Nothing was saved; your changes are kept on this device."),
        "error": _("The form could not be saved (%(status)s)."),
        "locked": _("This record is locked."),
        "remove_row": _("Remove row"), "row": _("Row"),
        "max_rows": _("At most %(n)s rows."),
        "epro_created": _("Link created and sent. It works until %(until)s:"),
        "submitted": _("Thank you. Your answers have been sent."),
        "draft_saved": _("Saved. You can come back to this link later to finish."),
        "not_answered": _("not answered"),
        "answer_sent": _("Answer sent."), "query_closed": _("Query closed."),
        "query_reopened": _("Query re-opened."),
        # File items (the texts of the template and of the script are the same messages).
        "file_choose": _("Choose a file…"), "file_replace": _("Replace the file…"),
        "file_byte": _("%(n)s byte"), "file_bytes": _("%(n)s bytes"),
        "file_uploading": _("Uploading “%(name)s”…"),
        "file_uploaded": _("“%(name)s” is uploaded. Save the form to keep it in this entry."),
        "file_cancelled": _("Upload cancelled."),
        "file_removed": _("File removed. Save the form to apply the change."),
        "file_too_large": _("This file is %(size)s; at most %(max)s is accepted here. Nothing was uploaded."),
        "file_too_large_here": _("The file is too large: at most %(max)s is accepted here."),
        "file_forbidden": _("The file was not accepted: you may not upload files to this form, or you have been "
                            "signed out. Reload the page (what you typed is kept on this device)."),
        "file_not_found": _("The file was not accepted: this visit or form is no longer available to you. Reload "
                            "the page."),
        "file_network": _("The file could not be uploaded: the server could not be reached. Choose it again to "
                          "retry."),
        "file_error": _("The file could not be uploaded (%(status)s)."),
        "file_wait": _("Waiting for the file upload to finish before saving…"),
        "file_failed": _("A file could not be uploaded, so nothing was saved. See the item marked, then save "
                         "again."),
    }


def _entry_page_context(request: HttpRequest, *, membership: Any, task: Any, form: Any, entry: Entry | None,
                        version: Any, posted: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """`posted`: a page action that was refused, by form key ("raise-<item path>",
    "q-<query id>-<action>", "verify-<item path>", "verify", "lock"): {"text": what was
    typed, "errors": [...]}, shown again in that form instead of being lost."""
    language = _language()
    subject = task.subject
    definition = version.definition
    today = site_today(subject.site)
    context = selectors.entry_context(subject=subject, task=task, form_code=form.code, today=today)
    visible, hard = _stored_evaluation(definition=definition, entry=entry, context=context, language=language)
    casebook_locked = CasebookLock.objects.filter(subject_id=subject.pk).exists()
    # Not entry.updated: a verification or a lock changes the row, not its data.
    data_saved_at = entry_data_saved_at(subject_id=subject.pk, entry_id=entry.pk) if entry else None
    can_edit = (membership.role in selectors.ENTRY_ROLES and not (entry is not None and entry.locked)
                and not casebook_locked)
    values = entry.values if entry else _defaults(definition)
    renderer = _Renderer(definition=definition, values=values, missing=entry.missing if entry else {},
                         verified=entry.verified if entry else {}, queries=_queries_by_item(entry), errors=hard,
                         visible=visible, language=language, readonly=not can_edit)
    items = renderer.items()
    labels = {}
    for item in iter_items(definition.get("items") or []):
        labels[item["code"]] = _text(item.get("label"), language) or item["code"]
    # File items: what the upload input offers (media types and their usual extensions:
    # some systems know no media type for .dcm) and the hint next to it. The server
    # checks again, by content (ecrf/files.py).
    file_kinds: dict[str, tuple[str, str]] = {
        "application/pdf": ("PDF", ".pdf"), "image/png": ("PNG", ".png"), "image/jpeg": ("JPEG", ".jpg,.jpeg"),
        "image/gif": ("GIF", ".gif"), "image/webp": ("WebP", ".webp"), "image/tiff": ("TIFF", ".tif,.tiff"),
        "application/dicom": ("DICOM", ".dcm"), "text/plain": (_("plain text"), ".txt"), "text/csv": ("CSV", ".csv"),
    }
    file_specs: dict[str, dict[str, Any]] = {}
    for item in iter_items(definition.get("items") or []):
        if item.get("type") != "file":
            continue
        file_spec = item.get("file") or {}
        types = [t for t in file_spec.get("types") or [] if isinstance(t, str)]
        file_specs[item["code"]] = {
            "accept": ",".join(types + [file_kinds[t][1] for t in types if t in file_kinds]),
            "types": ", ".join(file_kinds[t][0] if t in file_kinds else t for t in types),
            "max_bytes": int(file_spec.get("max_bytes") or 10 * 1024 * 1024),
        }
    patient_reported = bool(definition.get("patient_reported"))
    api_entry = reverse("api-entry", kwargs={"task_id": task.pk, "form_id": form.pk})
    config = {
        "mode": "entry", "definition": definition, "context": _client_context(definition, context), "labels": labels,
        "version": entry.version if entry else 0, "status": entry.status if entry else "not_started",
        "reason_required": bool(entry and entry.first_completed_at), "can_edit": can_edit,
        "task": task.pk, "form": form.pk, "entry": entry.pk if entry else None,
        "save_url": api_entry,
        "queries_url": reverse("ecrf-entry-queries", kwargs={"task_id": task.pk, "form_id": form.pk}),
        "epro_url": reverse("api-epro-link", kwargs={"task_id": task.pk, "form_id": form.pk})
        if patient_reported else None,
        "files_url": reverse("api-entry-files", kwargs={"task_id": task.pk, "form_id": form.pk})
        if can_edit and file_specs else None,
        "file_url": reverse("api-entry-file", kwargs={"file_id": "__id__"}),
        "messages": _js_messages(),
        "status_labels": {"not_started": _("Not started"), **dict(EntryStatus.choices)},
    }
    forms_here = selectors.forms_for_task(task)
    return {
        "task": task, "subject": subject, "form": form, "version": version, "entry": entry, "items": items,
        "title": form_title(version, language), "config": config, "can_edit": can_edit,
        "site_tz": subject.site.time_zone, "site_today": today,
        "other_forms": [(f, form_title(v, language)) for f, v in forms_here if f.pk != form.pk],
        "patient_reported": patient_reported, "can_issue_link": patient_reported and can_edit,
        "can_answer": membership.role in services.QUERY_ANSWERING_ROLES,
        "can_close": membership.role in services.QUERY_RAISING_ROLES,
        # Monitoring from the page: queries on items, source data verification, locks.
        "can_raise": entry is not None and membership.role in services.QUERY_RAISING_ROLES,
        "can_verify": entry is not None and membership.role == "monitor",
        "can_lock": entry is not None and membership.role in services.LOCKING_ROLES,
        "casebook_locked": casebook_locked, "posted": posted or {}, "data_saved_at": data_saved_at,
        "channel_choices": [("email", _("Email")), ("sms", _("SMS"))],
        "hard_count": len(hard), "file_specs": file_specs,
    }


@login_required
@require_GET
def entry_view(request: HttpRequest, task_id: int, form_id: int) -> HttpResponse:
    """One form of one visit."""
    membership, task, form, entry, version = _entry_target(request, task_id, form_id)
    return render(request, "ecrf/entry.html", _entry_page_context(
        request, membership=membership, task=task, form=form, entry=entry, version=version))


@login_required
@require_GET
def entry_queries_view(request: HttpRequest, task_id: int, form_id: int) -> HttpResponse:
    """The queries of the entry, by item (a fragment the page swaps in after a save)."""
    membership, task, form, entry, _version = _entry_target(request, task_id, form_id)
    by_item = _queries_by_item(entry)
    return render(request, "ecrf/_queries_fragment.html", {
        "by_item": sorted(by_item.items()), "can_answer": membership.role in services.QUERY_ANSWERING_ROLES,
        "can_close": membership.role in services.QUERY_RAISING_ROLES, "task": task, "form": form,
        "site_tz": task.subject.site.time_zone})  # the zone of the page it goes into (entry.html)


def _wants_json(request: HttpRequest) -> bool:
    return request.headers.get("X-Requested-With") == "fetch" or "application/json" in request.headers.get(
        "Accept", "")


def _error_json(exc: DomainError) -> JsonResponse:
    return JsonResponse({"error": {"code": exc.code, "message": str(exc.message), "fields": exc.fields}},
                        status=exc.status_code)


def _refusal_messages(exc: DomainError) -> list[str]:
    """What a refused action says: its field messages, else its message."""
    return [m for ms in exc.fields.values() for m in ms] or [str(exc.message)]


def _web_actor(request: HttpRequest, membership: Any) -> services.Actor:
    return services.Actor(user_id=int(request.user.pk or 0), label=str(getattr(request.user, "email", "")),
                          role=membership.role, source="web", display_name=membership.display_name or "")


def _page_action(request: HttpRequest, target: tuple[Any, Any, Any, Entry | None, Any], *, key: str, anchor: str,
                 done: str, act: Any) -> HttpResponse:
    """Run a monitoring action posted from the entry page (`act(actor)`). The page's
    script gets JSON; a plain form post (no JavaScript) is redirected back to the item
    on success, and on a refusal gets the page again with what was typed and the reason
    next to the form that was used (never a redirect that loses the text)."""
    membership, task, form, entry, version = target
    try:
        act(_web_actor(request, membership))
    except DomainError as exc:
        if _wants_json(request):
            return _error_json(exc)
        errors = _refusal_messages(exc)
        typed = request.POST.get("text", request.POST.get("reason", ""))[:services.MAX_QUERY_TEXT]
        refreshed = selectors.entry_for(task_id=task.pk, form_id=form.pk) if entry is not None else None
        return render(request, "ecrf/entry.html", _entry_page_context(
            request, membership=membership, task=task, form=form, entry=refreshed, version=version,
            posted={key: {"text": typed, "errors": errors}}), status=exc.status_code)
    if _wants_json(request):
        return JsonResponse({"ok": True})
    messages.success(request, done)
    return redirect(reverse("ecrf-entry", kwargs={"task_id": task.pk, "form_id": form.pk}) + anchor)


@login_required
@require_POST
def query_act_view(request: HttpRequest, task_id: int, form_id: int, query_id: int, action: str) -> HttpResponse:
    """Answer (site), close or re-open (monitor, data manager) a query from the page. A
    form post (works without JavaScript) or, from the page's script, JSON back."""
    target = _entry_target(request, task_id, form_id)
    membership, task, form, entry, _version = target
    query = (selectors.queries_visible(membership=membership).filter(pk=query_id, entry__task_id=task.pk,
                                                                     entry__form_id=form.pk).first()
             if entry is not None else None)
    if query is None or action not in QUERY_ACTIONS:
        raise Http404
    return _page_action(
        request, target, key=f"q-{query.pk}-{action}", anchor=f"#{_dom_id(query.item)}-item", done=_("Query updated."),
        act=lambda actor: services.query_act(query=query, action=action, text=request.POST.get("text", ""),
                                             actor=actor))


def _existing_entry(entry: Entry | None) -> Entry:
    if entry is None:
        raise ValidationFailed({"item": [_("Nothing has been entered in this form yet.")]})
    return entry


@login_required
@require_POST
def query_raise_view(request: HttpRequest, task_id: int, form_id: int) -> HttpResponse:
    """A monitor or data manager raises a query on one item (POST item, text)."""
    target = _entry_target(request, task_id, form_id)
    item = request.POST.get("item", "")[:200]
    return _page_action(
        request, target, key=f"raise-{item}", anchor=f"#{_dom_id(item)}-item", done=_("Query raised."),
        act=lambda actor: services.query_raise(entry=_existing_entry(target[3]), item=item,
                                               text=request.POST.get("text", ""), actor=actor))


@login_required
@require_POST
def entry_verify_view(request: HttpRequest, task_id: int, form_id: int) -> HttpResponse:
    """A monitor marks one item (POST item) or every item with data (POST all=1) as
    verified against the source."""
    target = _entry_target(request, task_id, form_id)
    item = request.POST.get("item", "")[:200]
    every = request.POST.get("all") == "1"
    return _page_action(
        request, target, key="verify" if every else f"verify-{item}", anchor="" if every else f"#{_dom_id(item)}-item",
        done=_("Marked as verified against the source."),
        act=lambda actor: services.entry_verify(entry=_existing_entry(target[3]), items=None if every else [item],
                                                actor=actor))


@login_required
@require_POST
def entry_lock_view(request: HttpRequest, task_id: int, form_id: int, action: str) -> HttpResponse:
    """A data manager locks the form's entry, or unlocks it with a reason."""
    target = _entry_target(request, task_id, form_id)
    if action not in ("lock", "unlock"):
        raise Http404
    return _page_action(
        request, target, key="lock", anchor="", done=_("Locked.") if action == "lock" else _("Unlocked."),
        act=lambda actor: services.entry_lock_set(entry=_existing_entry(target[3]), locked_state=action == "lock",
                                                  reason=request.POST.get("reason", ""), actor=actor))


# --- casebook signature ------------------------------------------------------------------------------

class SignForm(forms.Form):
    meaning = forms.ChoiceField(label=gettext_lazy("Meaning of your signature"), choices=SignatureMeaning.choices,
                                widget=forms.RadioSelect)
    password = forms.CharField(label=gettext_lazy("Your password (to confirm it is you)"), strip=False,
                               max_length=200, widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}))


def _casebook_rows(subject: Any, language: str) -> list[dict[str, Any]]:
    """Every form of every visit of the subject (listed by the schedule, or entered),
    with the entry's status."""
    entries = {(e.task_id, e.form_id): e for e in Entry.objects.filter(subject_id=subject.pk)
               .select_related("form_version", "form")}
    rows: list[dict[str, Any]] = []
    cache_: dict[Any, Any] = {}
    seen: set[tuple[int, int]] = set()
    for task in subject.tasks.select_related("subject").order_by("target_date", "event_code", "sequence"):
        listed = selectors.forms_for_task(task, cache=cache_)
        pairs = [(f, v) for f, v in listed] + [
            (e.form, e.form_version) for (t, _f), e in entries.items() if t == task.pk
            and e.form_id not in {f.pk for f, _v in listed}]
        for form, version in pairs:
            entry = entries.get((task.pk, form.pk))
            if task.status == "cancelled" and entry is None:
                continue
            seen.add((task.pk, form.pk))
            rows.append({"task": task, "form": form, "title": form_title(entry.form_version if entry else version,
                                                                          language),
                         "entry": entry, "status": entry.get_status_display() if entry else _("Not started"),
                         "complete": entry is not None and entry.status == EntryStatus.COMPLETE})
    return rows


def _signer_name(request: HttpRequest, membership: Any) -> str:
    return membership.display_name or str(getattr(request.user, "email", ""))


@login_required
@require_http_methods(["GET", "POST"])
def casebook_sign_view(request: HttpRequest, subject_id: int) -> HttpResponse:
    membership = request_member(request)
    if membership.role in selectors.NO_ENTRY_READ_ROLES:
        raise PermissionDenied
    subject = study_selectors.subject_get(membership=membership, subject_id=subject_id)
    if subject is None:
        raise Http404
    may_sign = membership.role == "investigator"
    form = SignForm(request.POST or None) if may_sign else None
    status = 200
    if request.method == "POST":
        if form is None:
            raise PermissionDenied
        if form.is_valid():
            try:
                signature = services.casebook_sign(subject=subject, user=request.user,
                                                   actor=_web_actor(request, membership),
                                                   signer_name=_signer_name(request, membership),
                                                   password=form.cleaned_data["password"],
                                                   meaning=form.cleaned_data["meaning"])
            except DomainError as exc:
                for name, field_messages in exc.fields.items():
                    for message in field_messages:
                        form.add_error(name if name in form.fields else None, message)
                if not exc.fields:
                    form.add_error(None, str(exc.message))
            else:
                messages.success(request, _("Casebook of %(subject)s signed by %(name)s on %(at)s.") % {
                    "subject": subject.subject_code, "name": signature.signer_name,
                    "at": timezone.localtime(signature.signed_at).strftime("%Y-%m-%d %H:%M")})
                return redirect("ecrf-sign", subject_id=subject.pk)
        status = 400
    language = _language()
    rows = _casebook_rows(subject, language)
    return render(request, "ecrf/sign.html", {
        "subject": subject, "rows": rows, "form": form, "may_sign": may_sign,
        "can_lock": membership.role in services.LOCKING_ROLES,
        "casebook_lock": CasebookLock.objects.filter(subject_id=subject.pk).select_related("locked_by").first(),
        "all_complete": any(r["entry"] for r in rows) and all(r["complete"] for r in rows if r["entry"]),
        "signatures": Signature.objects.filter(subject_id=subject.pk).order_by("-signed_at"),
        "signer_name": _signer_name(request, membership), "now": timezone.localtime(),
        "tenant_tz": timezone.get_current_timezone_name(), "meanings": SignatureMeaning.choices,
    }, status=status)


@login_required
@require_POST
def casebook_lock_view(request: HttpRequest, subject_id: int, action: str) -> HttpResponse:
    """A data manager freezes a subject's whole casebook, or unfreezes it with a reason
    (from the casebook page)."""
    membership = request_member(request)
    if membership.role in selectors.NO_ENTRY_READ_ROLES:
        raise PermissionDenied
    subject = study_selectors.subject_get(membership=membership, subject_id=subject_id)
    if subject is None or action not in ("lock", "unlock"):
        raise Http404
    try:
        services.casebook_lock_set(subject=subject, locked_state=action == "lock",
                                   reason=request.POST.get("reason", ""), actor=_web_actor(request, membership))
    except DomainError as exc:
        messages.error(request, " ".join(_refusal_messages(exc)))
    else:
        messages.success(request, _("Casebook locked.") if action == "lock" else _("Casebook unlocked."))
    return redirect(reverse("ecrf-sign", kwargs={"subject_id": subject.pk}) + "#casebook-lock")


# --- ePRO ---------------------------------------------------------------------------------------------

def _client_key(request: HttpRequest) -> str:
    """The client's address as the API's throttles see it (X-Forwarded-For trusted for
    exactly NUM_PROXIES hops), so clients behind the ingress are not one client."""
    from rest_framework.throttling import BaseThrottle

    return "epro-miss:" + str(BaseThrottle().get_ident(request))[:64]  # type: ignore[arg-type]


def _epro_refused(request: HttpRequest, exc: DomainError, *, as_json: bool) -> HttpResponse:
    """404 (no such link) or 410 (gone), the same for every reason a token fails except
    the message of a real link; unknown tokens count against the client's address."""
    if exc.status_code == 404:
        cache.add(_client_key(request), 0, EPRO_MISS_WINDOW)
        with contextlib.suppress(ValueError):  # expired between add and incr
            cache.incr(_client_key(request))
    if as_json:
        return _error_json(exc)
    return render(request, "ecrf/epro_gone.html", {"message": str(exc.message), "status": exc.status_code},
                  status=exc.status_code)


def _epro_throttled(request: HttpRequest) -> bool:
    return int(cache.get(_client_key(request)) or 0) >= EPRO_MISS_LIMIT


@require_http_methods(["GET", "POST"])
def epro_view(request: HttpRequest, token: str) -> HttpResponse:
    """The patient's questionnaire. GET: the form in the patient's language. POST (JSON
    from the page's script, CSRF-protected): {"values", "missing", "draft"}."""
    as_json = request.method == "POST"
    if _epro_throttled(request):
        response = render(request, "ecrf/epro_gone.html", {
            "message": _("Too many attempts. Please wait a few minutes and try again."), "status": 429}, status=429)
        response["Retry-After"] = str(EPRO_MISS_WINDOW)
        return response
    try:
        link = epro.epro_link_resolve(token=token)
    except DomainError as exc:
        return _epro_refused(request, exc, as_json=as_json)
    subject = link.subject
    language = subject.language if subject.language in ("zh-hans", "en") else "zh-hans"
    with translation.override(language):
        today = site_today(subject.site)
        context = selectors.entry_context(subject=subject, task=link.task, form_code=link.form.code, today=today)
        if request.method == "POST":
            return _epro_post(request, token=token, context=context, language=language)
        entry = selectors.entry_for(task_id=link.task_id, form_id=link.form_id)
        version = entry.form_version if entry else services.form_current_version(form=link.form)
        if version is None:
            raise Http404
        definition = version.definition
        visible, _hard = _stored_evaluation(definition=definition, entry=entry, context=context, language=language)
        renderer = _Renderer(definition=definition, values=entry.values if entry else _defaults(definition),
                             missing=entry.missing if entry else {}, verified={}, queries={}, errors={},
                             visible=visible, language=language, readonly=False)
        config = {
            "mode": "epro", "definition": definition, "context": _client_context(definition, context),
            "can_edit": True,
            "labels": {i["code"]: _text(i.get("label"), language) or i["code"]
                       for i in iter_items(definition.get("items") or [])},
            "version": entry.version if entry else 0, "status": entry.status if entry else "not_started",
            "reason_required": False, "task": link.task_id, "form": link.form_id, "entry": None,
            "save_url": request.path, "thanks_url": reverse("ecrf-epro-thanks") + f"?lang={language}",
            "messages": _js_messages(),
        }
        response = render(request, "ecrf/epro.html", {
            "items": renderer.items(), "title": form_title(version, language), "config": config,
            "language": language, "expires_at": link.expires_at, "site_tz": subject.site.time_zone,
            "draft_saved": entry is not None,
        })
    response["Cache-Control"] = "no-store"
    response["Referrer-Policy"] = "no-referrer"  # the token is in the address
    return response


def _epro_post(request: HttpRequest, *, token: str, context: dict[str, Any], language: str) -> HttpResponse:
    if len(request.body) > MAX_EPRO_BODY:
        return JsonResponse({"error": {"code": "payload_too_large", "message": _("The answers are too large."),
                                       "fields": {}}}, status=413)
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: "[[[[…" nested too deep
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("values"), dict) or not isinstance(
            body.get("missing", {}), dict) or not isinstance(body.get("draft", False), bool):
        return JsonResponse({"error": {"code": "invalid", "message": _("Send the answers as JSON."),
                                       "fields": {}}}, status=400)
    draft = body.get("draft", False)
    try:
        result = epro.epro_submit(token=token, values=body["values"], missing=body.get("missing") or {},
                                  draft=draft, context=context, language=language)
    except DomainError as exc:
        return _epro_refused(request, exc, as_json=True) if exc.status_code in (404, 410) else _error_json(exc)
    log.info("epro.saved", task_id=result.entry.task_id, draft=draft)
    return JsonResponse({"status": "draft" if draft else "submitted", "hard_errors": result.hard,
                         "version": result.entry.version,
                         "redirect": None if draft else reverse("ecrf-epro-thanks") + f"?lang={language}"})


@require_GET
def epro_thanks_view(request: HttpRequest) -> HttpResponse:
    language = request.GET.get("lang")
    with translation.override(language if language in ("zh-hans", "en") else translation.get_language()):
        return render(request, "ecrf/epro_thanks.html", {})


AUDIT_PAGE = 50


@login_required
def audit_view(request: HttpRequest, subject_id: int) -> HttpResponse:
    """A subject's audit trail, newest first, filtered by form and item, paged by
    sequence (older entries behind a link): who, when in the tenant's time zone, what,
    old and new value, reason and source."""
    membership = request_member(request)
    if membership.role in selectors.NO_ENTRY_READ_ROLES:
        raise PermissionDenied
    subject = study_selectors.subject_get(membership=membership, subject_id=subject_id)
    if subject is None:
        raise Http404
    form_code = (request.GET.get("form") or "").strip()[:30] or None
    item = (request.GET.get("item") or "").strip()[:200] or None
    before_raw = request.GET.get("before") or ""
    before = whole_number_param(before_raw)
    problems: dict[str, list[str]] = {}
    try:
        rows = audit_for_subject(subject_id=subject.pk, form_code=form_code, item=item, limit=AUDIT_PAGE,
                                 before_seq=before)
    except ValidationFailed as exc:  # a filter the trail cannot be searched by (a NUL character)
        rows, problems = [], exc.fields
    forms = sorted(Entry.objects.filter(subject_id=subject.pk).values_list("form__code", flat=True).distinct())
    older = rows[-1].seq if len(rows) == AUDIT_PAGE else None
    return render(request, "ecrf/audit.html", {
        "subject": subject, "rows": rows, "forms": forms, "form_code": form_code or "", "item": item or "",
        "older": older, "before": before, "filtered": bool(form_code or item or before),
        "filter_errors": [message for messages in problems.values() for message in messages],
    }, status=400 if problems else 200)


QUERY_PAGE = 25


@login_required
def queries_view(request: HttpRequest) -> HttpResponse:
    """Queries at my sites: the per-site report with ageing, then the list (open first,
    oldest first), filterable by status and site, paged, each linked to its form."""
    from django.core.paginator import Paginator

    membership = request_member(request)
    if membership.role in selectors.NO_ENTRY_READ_ROLES:
        raise PermissionDenied
    status_filter = request.GET.get("status") or "open"
    if status_filter not in ("open", "answered", "closed", "all"):
        status_filter = "open"
    queries = selectors.queries_visible(membership=membership).prefetch_related("messages")
    if status_filter != "all":
        queries = queries.filter(status=status_filter)
    site_raw = request.GET.get("site") or ""
    if (site_id := whole_number_param(site_raw)) is not None:
        queries = queries.filter(site_id=site_id)
    page = Paginator(queries.order_by("created", "pk"), QUERY_PAGE).get_page(request.GET.get("page"))
    language = _language()
    for query in page:  # the item as the form names it (published versions are cached per process)
        version = selectors.form_version_cached(version_id=query.entry.form_version_id)
        query.item_label = _item_label(  # type: ignore[attr-defined]
            version.definition if version else {}, query.item, language)
    query_string = request.GET.copy()
    query_string.pop("page", None)
    return render(request, "ecrf/queries.html", {
        "report": selectors.query_report(membership=membership), "page": page, "status": status_filter,
        "site": site_raw, "query": query_string.urlencode(), "now": timezone.now(),
    })
