from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from config.errors import DomainError
from tenants.models import Language, TenantKind, TenantStatus
from tenants.services import tenant_create, tenant_url


class Command(BaseCommand):
    help = (
        "Create a ready tenant (schema, domain, first tenant admin). The admin's password is "
        "read from the environment variable named by --admin-password-env; without it the "
        "admin is emailed an invitation to set one."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True)
        parser.add_argument("--slug", required=True)
        parser.add_argument("--kind", required=True, choices=TenantKind.values)
        parser.add_argument("--admin-email", required=True)
        parser.add_argument("--admin-name", default="")
        parser.add_argument("--admin-password-env", default="",
                            help="name of an env variable holding the admin's password")
        parser.add_argument("--time-zone", default="Asia/Shanghai")
        parser.add_argument("--language", default=Language.ZH_HANS, choices=Language.values)
        parser.add_argument("--status", default=TenantStatus.TRIAL, choices=TenantStatus.values)

    def handle(self, *args: Any, **opts: Any) -> None:
        password = None
        if opts["admin_password_env"]:
            password = os.environ.get(opts["admin_password_env"])
            if not password:
                raise CommandError(f"{opts['admin_password_env']} is not set or empty.")
        try:
            tenant = tenant_create(
                name=opts["name"], slug=opts["slug"], kind=opts["kind"],
                admin_email=opts["admin_email"], admin_password=password,
                admin_full_name=opts["admin_name"], time_zone=opts["time_zone"],
                default_language=opts["language"], status=opts["status"],
            )
        except DomainError as exc:
            lines = [str(exc.message)] + [f"  {field}: {'; '.join(msgs)}" for field, msgs in exc.fields.items()]
            raise CommandError("\n".join(lines)) from exc
        self.stdout.write(self.style.SUCCESS(f"Created {tenant.name} at {tenant_url(tenant.slug)}"))
