from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants import schema_pool
from tenants.deploy_migrate import migrate_tenants
from tenants.services import public_tenant_ensure


class Command(BaseCommand):
    help = (
        "Deploy-time migrate: public first, then only the tenant schemas that are behind "
        "(found with one query), replaying recorded SQL where safe, in parallel. "
        "Then refreshes the spare-schema pool."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--jobs", type=int, default=4, help="parallel workers (default 4)")
        parser.add_argument("--no-replay", action="store_true",
                            help="run Django's migrate in every behind schema")
        parser.add_argument("--skip-pool", action="store_true", help="do not refill the spare pool")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["jobs"] < 1:
            raise CommandError("--jobs must be at least 1.")
        report = migrate_tenants(jobs=opts["jobs"], replay=not opts["no_replay"])
        public_tenant_ensure()
        self.stdout.write(
            f"tenants={report.tenants_total} behind={report.behind} replayed={report.replayed} "
            f"migrated={report.migrated} failed={len(report.failed)} "
            f"check={report.seconds_check:.2f}s total={report.seconds_total:.2f}s"
        )
        if not opts["skip_pool"]:
            created = schema_pool.pool_refill()
            self.stdout.write(f"spare schemas created: {created}")
        if report.failed:
            for name, error in sorted(report.failed.items()):
                self.stderr.write(f"{name}: {error}")
            raise CommandError(f"{len(report.failed)} schema(s) failed to migrate.")
