"""Tenant provisioning benchmark: time per new tenant with 1, 100 and 1,000 tenants
already existing, for our way and, in the same run, for django-tenants' default and
clone modes.

    .venv/bin/python bench/tenant_provisioning.py             # levels 1,100,1000
    .venv/bin/python bench/tenant_provisioning.py --quick     # levels 1,100
    .venv/bin/python bench/tenant_provisioning.py --levels 1,300 --samples 9,3,3,3

It DROPS and recreates the database of config/settings/bench.py (suifang_bench).
It prints figures, never pass/fail; it only aborts if a created tenant is broken (its
admin cannot log in, or its schema is not at the current migration state).

What each method does, timed per tenant (the work is the same: a schema with every
tenant migration applied, the tenant row, its primary domain, a first admin whose
password is validated and hashed with the production Argon2 cost, and the membership):

- ours: tenants.services.tenant_create(..., admin_password=...). A spare schema is
  claimed from the pool, pre-filled before the timed batch: refilling is background
  work in production (a Celery task after each sign-up), its cost is printed apart.
- ours, pool empty: the same call with no spare left (the template SQL is replayed
  into the new schema inside the sign-up transaction): what a sign-up costs when
  sign-ups outrun the refill.
- django-tenants default: Tenant(...).save() with auto_create_schema=True
  (CREATE SCHEMA + migrate_schemas for that schema), then Domain, User, membership.
- django-tenants clone: the same with TENANT_BASE_SCHEMA + TENANT_CREATION_FAKES_MIGRATIONS
  (clone_schema() of a migrated base schema, then migrate_schemas --fake).

Methods are interleaved (ours, default, clone, ours, ...) so each sees the same catalog.
Nothing is deleted between levels: the catalog's growth is the point.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.common import PASSWORD, log

BASE_TEMPLATE = "bench_base_template"
METHODS = ("ours", "default", "clone", "ours_empty")
LABELS = {
    "ours": "ours (spare pool)",
    "default": "django-tenants default",
    "clone": "django-tenants clone",
    "ours_empty": "ours, pool empty",
}
CODES = {"ours": "ours", "default": "dflt", "clone": "clon", "ours_empty": "oure"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,100,1000",
                        help="existing-tenant levels, comma separated (default 1,100,1000)")
    parser.add_argument("--quick", action="store_true", help="levels 1,100")
    parser.add_argument("--samples", default="15,5,5,3",
                        help="new tenants timed per level: ours[,default[,clone[,ours with empty pool]]] "
                             "(default 15,5,5,3; one number = the same for all)")
    args = parser.parse_args(argv)
    levels = [1, 100] if args.quick else [int(x) for x in args.levels.split(",") if x.strip()]
    if not levels or min(levels) < 1 or levels != sorted(levels):
        parser.error("--levels must be increasing positive integers")
    samples = [int(x) for x in args.samples.split(",") if x.strip()]
    if len(samples) == 1:
        samples = samples * len(METHODS)
    samples += [samples[-1]] * (len(METHODS) - len(samples))
    if min(samples) < 0 or samples[0] < 1 or max(samples) > 100:
        parser.error("--samples: ours needs at least 1, each at most 100")
    args.levels_list = levels
    args.samples_map = dict(zip(METHODS, samples, strict=True))
    return args


# --- the methods ----------------------------------------------------------------------

def create_ours(slug: str) -> None:
    from tenants import services

    services.tenant_create(
        name=f"Bench {slug}", slug=slug, kind="hospital",
        admin_email=f"admin@{slug}.example.org", admin_password=PASSWORD,
    )


def _create_django_tenants(slug: str) -> None:
    """django-tenants builds the schema on save(); the rest is plain ORM."""
    from django.contrib.auth.password_validation import validate_password

    from tenants.models import Domain, Tenant, TenantMembership, User
    from tenants.roles import Role
    from tenants.services import tenant_domain, tenant_schema_name

    email = f"admin@{slug}.example.org"
    validate_password(PASSWORD, User(email=email))
    tenant = Tenant(schema_name=tenant_schema_name(slug), name=f"Bench {slug}", slug=slug,
                    kind="hospital")
    tenant.auto_create_schema = True  # our model turns it off at class level
    tenant.save(verbosity=0)
    Domain.objects.create(domain=tenant_domain(slug), tenant=tenant, is_primary=True)
    user = User.objects.create_user(email=email, password=PASSWORD)
    TenantMembership.objects.create(user=user, tenant=tenant, role=Role.TENANT_ADMIN)


def create_default(slug: str) -> None:
    _create_django_tenants(slug)


def create_clone(slug: str) -> None:
    # django_tenants.utils reads both settings at call time, so override_settings works.
    from django.test import override_settings

    with override_settings(TENANT_BASE_SCHEMA=BASE_TEMPLATE, TENANT_CREATION_FAKES_MIGRATIONS=True):
        _create_django_tenants(slug)


CREATORS: dict[str, Callable[[str], None]] = {
    "ours": create_ours, "default": create_default, "clone": create_clone,
    "ours_empty": create_ours,
}


# --- checks (untimed) -------------------------------------------------------------------

class Checker:
    def __init__(self) -> None:
        from tenants.schema_pool import expected_migrations

        self.expected = expected_migrations()
        self.tables = self._tables(BASE_TEMPLATE)

    @staticmethod
    def _tables(schema: str) -> int:
        from config.db import tenant_connection as connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", [schema])
            return int(cursor.fetchone()[0])

    def check(self, slug: str) -> None:
        """The admin can log in on the tenant's host, and the schema is complete."""
        from django.test import Client

        from config.db import tenant_connection as connection
        from tenants.deploy_migrate import schemas_behind
        from tenants.services import tenant_schema_name

        schema = tenant_schema_name(slug)
        try:
            response = Client(HTTP_HOST=f"{slug}.localhost").post(
                "/login/", {"email": f"admin@{slug}.example.org", "password": PASSWORD})
        finally:
            connection.set_schema_to_public()
        if response.status_code != 302:
            raise SystemExit(f"BROKEN: admin of {slug} cannot log in (HTTP {response.status_code})")
        behind = schemas_behind(schemas=[schema], expected=self.expected)
        if behind:
            raise SystemExit(f"BROKEN: {schema} lacks migrations {sorted(behind[schema])[:5]}")
        tables = self._tables(schema)
        if tables != self.tables:
            raise SystemExit(f"BROKEN: {schema} has {tables} tables, the base schema {self.tables}")


# --- the run ------------------------------------------------------------------------------

def build_base_template() -> float:
    from django.core.management import call_command

    from config.db import tenant_connection as connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE SCHEMA "{BASE_TEMPLATE}"')
    call_command("migrate_schemas", tenant=True, schema_name=BASE_TEMPLATE, interactive=False,
                 verbosity=0)
    connection.set_schema_to_public()
    return time.perf_counter() - started


def argon2_ms(repeats: int = 5) -> float:
    from django.contrib.auth.hashers import make_password

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        make_password(PASSWORD)
        times.append((time.perf_counter() - started) * 1000)
    return common.median(times)


def run_level(level: int, samples: dict[str, int], checker: Checker,
              results: dict[tuple[int, str], list[float]], hash_at: dict[int, float]) -> int:
    """Fill up to `level` tenants, then time the batch. Returns the tenants that existed."""
    from tenants import schema_pool
    from tenants.models import SpareSchema

    fill_seconds = common.fill_tenants(target=level, prefix="fill")
    existing = common.tenant_count()
    log(f"\n== level {level}: {existing} tenants exist (fill took {fill_seconds:.0f} s, untimed)")

    # Spares for the timed "ours" batch. Background work in production: not timed here.
    started = time.perf_counter()
    built = schema_pool.pool_refill(target_size=samples["ours"])
    refill_ms = (time.perf_counter() - started) * 1000 / max(built, 1)
    log(f"   pool pre-filled with {built} spares ({refill_ms:.0f} ms per spare, background work, untimed)")

    rounds = max(samples[m] for m in ("ours", "default", "clone"))
    for i in range(rounds):
        for method in ("ours", "default", "clone"):
            if i >= samples[method]:
                continue
            slug = f"{CODES[method]}-l{level}-{i:02d}"
            started = time.perf_counter()
            CREATORS[method](slug)
            elapsed = (time.perf_counter() - started) * 1000
            checker.check(slug)
            results.setdefault((level, method), []).append(elapsed)
            log(f"   {LABELS[method]:<24} {slug:<18} {elapsed:8.1f} ms")

    # The pool is now empty (nobody consumes the refill tasks): time the fallback.
    left = SpareSchema.objects.count()
    if left:
        log(f"   note: {left} spare(s) left, 'pool empty' samples would claim them; skipping those")
    else:
        for i in range(samples["ours_empty"]):
            slug = f"{CODES['ours_empty']}-l{level}-{i:02d}"
            started = time.perf_counter()
            create_ours(slug)
            elapsed = (time.perf_counter() - started) * 1000
            checker.check(slug)
            results.setdefault((level, "ours_empty"), []).append(elapsed)
            log(f"   {LABELS['ours_empty']:<24} {slug:<18} {elapsed:8.1f} ms")
    hash_at[level] = argon2_ms()
    log(f"   one Argon2 hash (production cost), median of 5: {hash_at[level]:.0f} ms")
    return existing


def report(levels: list[int], results: dict[tuple[int, str], list[float]],
           existing_at: dict[int, int], hash_at: dict[int, float]) -> None:
    rows = []
    for level in levels:
        ours_median = common.median(results.get((level, "ours"), []))
        for method in METHODS:
            values = results.get((level, method), [])
            if not values:
                continue
            med = common.median(values)
            rows.append([
                existing_at[level], LABELS[method], len(values), f"{med:.0f}",
                f"{common.p90(values):.0f}", common.ratio(med, ours_median),
            ])
    log("\nTime per new tenant (ms). 'existing' = tenants that existed before the level's batch.")
    log(common.table(["existing", "method", "n", "median ms", "p90 ms", "vs ours"], rows))

    first, last = levels[0], levels[-1]
    if first != last:
        growth_rows = []
        for method in METHODS:
            a = common.median(results.get((first, method), []))
            b = common.median(results.get((last, method), []))
            growth_rows.append([LABELS[method], f"{a:.0f}", f"{b:.0f}", common.ratio(b, a)])
        log(f"\nGrowth of the median from {existing_at[first]} to {existing_at[last]} existing tenants")
        log(common.table(["method", f"median @{existing_at[first]}", f"median @{existing_at[last]}",
                          "growth"], growth_rows))
    rows = []
    for level in levels:
        ours_median = common.median(results.get((level, "ours"), []))
        rows.append([existing_at[level], f"{hash_at[level]:.0f}", f"{ours_median - hash_at[level]:.0f}"])
    log("\nFor scale: every method above hashes one password with the production Argon2 cost.")
    log(common.table(["existing", "one Argon2 hash ms (median of 5)", "ours median minus one hash ms"], rows))


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    common.recreate_database()
    common.setup_django()
    common.migrate_shared()
    log("Tenant provisioning benchmark (bench/tenant_provisioning.py)")
    log(common.machine_info())
    log(f"levels {args.levels_list}; samples per level {args.samples_map}")

    from tenants import schema_pool

    started = time.perf_counter()
    schema_pool.pool_refill(target_size=0)  # captures the template once (untimed)
    log(f"one-off: template capture {time.perf_counter() - started:.1f} s (ours; once per migration state)")
    log(f"one-off: base schema for clone mode migrated in {build_base_template():.1f} s")
    checker = Checker()

    results: dict[tuple[int, str], list[float]] = {}
    existing_at: dict[int, int] = {}
    hash_at: dict[int, float] = {}
    total = time.perf_counter()
    try:
        for level in args.levels_list:
            existing_at[level] = run_level(level, args.samples_map, checker, results, hash_at)
    finally:
        purged = common.purge_bench_queue()
    report(args.levels_list, results, existing_at, hash_at)
    log(f"(run took {time.perf_counter() - total:.0f} s; {purged} queued pool-refill tasks purged)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
