from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from tenants import schema_pool


class Command(BaseCommand):
    help = "Drop stale spare schemas and top the pool up now (beat also does this every minute)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--size", type=int, default=None)

    def handle(self, *args: Any, **opts: Any) -> None:
        created = schema_pool.pool_refill(target_size=opts["size"])
        self.stdout.write(f"spare schemas created: {created}")
