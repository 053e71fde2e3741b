"""Every named route of the tenant and public URL configurations resolves back to itself:
no route is shadowed by one listed before it (config/urls_tenant.py orders the API first
and data entry first inside it, for speed; a reordering must never change which view
answers a path)."""

from __future__ import annotations

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RoutePattern

SAMPLES = {"int": "7", "str": "abc", "slug": "abc-1", "uuid": "3f2b8c1e-0000-4000-8000-000000000000",
           "path": "a/b"}
_CONVERTER = re.compile(r"<(?:(\w+):)?\w+>")


def _concrete(route: str) -> str:
    return _CONVERTER.sub(lambda match: SAMPLES[match.group(1) or "str"], route)


def _named_routes(patterns, prefix: str = ""):
    for entry in patterns:
        if not isinstance(entry.pattern, RoutePattern):
            continue  # regex routes (none of ours are named ones we serve by regex)
        route = prefix + str(entry.pattern._route)
        if isinstance(entry, URLResolver):
            yield from _named_routes(entry.url_patterns, route)
        elif isinstance(entry, URLPattern) and entry.name:
            yield entry.name, route


@pytest.mark.parametrize("urlconf", ["config.urls_tenant", "config.urls_public"])
def test_every_named_route_resolves_to_itself(urlconf):
    resolver = get_resolver(urlconf)
    routes = list(_named_routes(resolver.url_patterns))
    assert len(routes) > 20
    shadowed = []
    for name, route in routes:
        match = resolver.resolve("/" + _concrete(route))
        if match.url_name != name:
            shadowed.append(f"/{route} is answered by {match.url_name!r}, not {name!r}")
    assert shadowed == []
