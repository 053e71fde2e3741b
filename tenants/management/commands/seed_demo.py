"""Seed the demo: two tenants with one user per role, and a platform operator.
Idempotent: a second run changes nothing and prints the same logins."""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand

from tenants.models import Tenant, TenantMembership, User
from tenants.roles import Role
from tenants.services import member_add, tenant_create, tenant_url

DEMO_TENANTS = [
    {"slug": "demo-hospital", "name": "仁济示范医院 Renji Demo Hospital", "kind": "hospital",
     "language": "zh-hans", "time_zone": "Asia/Shanghai"},
    {"slug": "demo-device", "name": "Weikang Medical Devices", "kind": "device_company",
     "language": "en", "time_zone": "Europe/Berlin"},
]


def demo_email(role: str, slug: str) -> str:
    return f"{role.replace('_', '-')}@{slug}.test"


class Command(BaseCommand):
    help = "Create the demo tenants and users (development only)."

    def handle(self, *args: Any, **opts: Any) -> None:
        # A demo password for local use only; override with DEMO_PASSWORD.
        password = os.environ.get("DEMO_PASSWORD", "suifang-demo-2026")
        operator_email = "operator@suifang.test"
        if not User.objects.filter(email=operator_email).exists():
            User.objects.create_superuser(email=operator_email, password=password, full_name="Platform Operator")
        rows: list[tuple[str, str, str]] = []
        for spec in DEMO_TENANTS:
            tenant = Tenant.objects.filter(slug=spec["slug"]).first()
            if tenant is None:
                tenant = tenant_create(
                    name=spec["name"], slug=spec["slug"], kind=spec["kind"],
                    admin_email=demo_email(Role.TENANT_ADMIN, spec["slug"]), admin_password=password,
                    admin_full_name="Demo Sponsor", time_zone=spec["time_zone"],
                    default_language=spec["language"], status="active",
                )
            for role in Role.values:
                email = demo_email(role, spec["slug"])
                if not TenantMembership.objects.filter(tenant=tenant, user__email=email).exists():
                    member_add(tenant=tenant, email=email, role=role, password=password,
                               full_name=f"Demo {role.replace('_', ' ').title()}")
                rows.append((tenant_url(tenant.slug), role, email))
        # One person who works for both tenants, to show multi-tenant memberships.
        for spec in DEMO_TENANTS:
            tenant = Tenant.objects.get(slug=spec["slug"])
            if not TenantMembership.objects.filter(tenant=tenant, user__email="cra@cro.test").exists():
                member_add(tenant=tenant, email="cra@cro.test", role=Role.MONITOR, password=password,
                           full_name="Multi-tenant Monitor")
        self.stdout.write(f"Demo logins (password: {password})")
        for url, role, email in rows:
            self.stdout.write(f"  {url:<40} {role:<14} {email}")
        self.stdout.write(f"  {'(both tenants)':<40} {'monitor':<14} cra@cro.test")
        self.stdout.write(f"  operator console: {operator_email}")
