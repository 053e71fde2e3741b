"""Template helpers of the eCRF pages."""

from __future__ import annotations

import json
from typing import Any

from django import template
from django.urls import reverse
from django.utils.translation import get_language
from django.utils.translation import gettext as _

register = template.Library()

def _language() -> str:
    return "zh-hans" if (get_language() or "").lower().startswith("zh") else "en"


@register.filter
def tr(texts: Any) -> str:
    """A definition's {"en": ..., "zh-hans": ...} text in the current language."""
    if not isinstance(texts, dict):
        return ""
    return str(texts.get(_language()) or texts.get("en") or texts.get("zh-hans") or "")


@register.filter
def number(value: Any) -> str:
    """A stored number as typed: 70.5 -> "70.5", 100.0 -> "100", None -> ""."""
    if value is None or value == "":
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@register.filter
def to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@register.filter
def query_kind(kind: str) -> str:
    labels = {"raise": _("Raised"), "answer": _("Answered"), "close": _("Closed"), "reopen": _("Re-opened"),
              "comment": _("Comment")}
    return labels.get(kind, kind)


@register.simple_tag(takes_context=True)
def task_forms(context: template.Context, task: Any) -> list[dict[str, Any]]:
    """The forms of a visit with their entry-page URLs and titles (one set of reads per
    page for the published forms and schedules, however many tasks are listed)."""
    from ecrf.selectors import forms_for_task

    cache: dict[Any, Any] = context.render_context.get("ecrf_forms_cache") or {}
    context.render_context["ecrf_forms_cache"] = cache
    language = _language()
    shown = []
    for form, version in forms_for_task(task, cache=cache):
        titles = version.definition.get("title") or {}
        shown.append({"form": form, "title": titles.get(language) or titles.get("en") or form.code,
                      "url": reverse("ecrf-entry", kwargs={"task_id": task.pk, "form_id": form.pk})})
    return shown


@register.filter
def get_item(mapping: Any, key: Any) -> Any:
    """mapping[key] in a template (None when absent)."""
    return mapping.get(key) if isinstance(mapping, dict) else None


@register.simple_tag
def posted_state(posted: Any, *parts: Any) -> dict[str, Any]:
    """The refused submission of one of the page's forms (ecrf.views._page_action), by
    the form's key parts joined with "-": {"text", "errors"}, or {} when there is none."""
    if not isinstance(posted, dict):
        return {}
    found = posted.get("-".join(str(part) for part in parts))
    return found if isinstance(found, dict) else {}


@register.filter
def item_anchor(path: Any) -> str:
    """The id of an item's block on the entry page, for links to it: every item has one
    (a choice's inputs are f-<item>-<code>, a group has no input of its own)."""
    from ecrf.views import _dom_id

    return _dom_id(str(path)) + "-item"
