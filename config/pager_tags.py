"""`{% load pager %}`: links between the pages of one list on a page that holds several,
each paged by its own query parameter (`templates/_pager.html`)."""

from __future__ import annotations

from typing import Any

from django import template
from django.http import QueryDict

register = template.Library()


@register.simple_tag(takes_context=True)
def page_link(context: Any, param: str, number: int, anchor: str = "") -> str:
    """"?<this request's query, `param` set to `number`>#anchor": paging one list keeps the
    other lists' pages and any filter (Django's {% querystring %} takes literal keys only)."""
    request = context.get("request")
    query = request.GET.copy() if request is not None else QueryDict(mutable=True)
    query[param] = str(number)
    return f"?{query.urlencode()}" + (f"#{anchor}" if anchor else "")
