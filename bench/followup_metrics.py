"""Follow-up engine benchmark (issue 3) at 10k / 100k / 1M follow-up tasks. Every figure
is printed next to a baseline measured in the same run, on the same data; the baselines
are the code as it was before this work (bench/followup_legacy.py) or, for the metrics, a
naive Python loop.

    .venv/bin/python bench/followup_metrics.py                  # 10k, 100k, 1M tasks
    .venv/bin/python bench/followup_metrics.py --levels 10000,100000
    .venv/bin/python bench/followup_metrics.py --levels 1000000 --legacy-generate-max 0   # skip the slow baseline

It DROPS and recreates its own database, --db (default
postgresql://postgres@127.0.0.1:5432/suifang_bench2, or METRICS_BENCH_DATABASE_URL),
then creates one tenant with 10 sites (a primary coordinator and an investigator each;
the first coordinator also works at a second site), one study whose schedule has 10
events, so N tasks = N/10 subjects, and the study's three reminder rules. Each level
starts from empty tables (TRUNCATE) and:

1. bulk-creates the subjects (enrolment dates spread over the last two years, 5% lost to
   follow-up, each with an encrypted email and phone) - untimed setup;
2. "generate all tasks", three ways, each from an empty task table (timed):
   - legacy: plan_occurrences per subject, FollowUpTask instances, bulk_create in batches
     of 10,000 (the old path);
   - instances + COPY: the same instances written by studies.bulk.tasks_insert (what
     studies.services._apply now does for plans of 1,000 tasks or more);
   - studies.bulk.tasks_generate: one plan per distinct enrolment date, rows as text, COPY;
   the task's assignee is its site's primary coordinator, as enrolment does;
3. untimed: makes the history realistic with two UPDATEs (about 80% of closed windows
   completed, some late, the rest missed, all of them for one subject in 50; 2%
   cancelled) and ANALYZE;
4. followup_metrics() for the sponsor right after those UPDATEs, then VACUUM (what
   autovacuum does after such a change; it lets PostgreSQL answer from the index
   alone) and again for the sponsor and for the coordinator of 2 of the 10 sites:
   one warm-up call, then the median of 5; the metrics' task aggregate alone against
   the old one (joined to subjects); the naive loop (up to --naive-max tasks); then
   the consecutive-missed-visits rule, one query against the old loop (up to
   --legacy-missed-max tasks), each in a transaction rolled back afterwards;
5. the worklist of one coordinator (all of one site's tasks are theirs): count + first
   page of 50 (what the API returns) for all buckets, for "overdue", and page 10; median
   of 5 after a warm-up, new selector against the old selector under the old index;
6. the reminder scan (studies.reminders.reminders_scan) twice: the first writes every
   due reminder, the second finds them written; the old scan first, in a transaction
   rolled back afterwards, then the new one; both must write the same number.
Prints figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import date, timedelta
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/suifang_bench2"
BATCH = 10_000
SITES = 10
PAGE = 50
EVENTS = [("D7", 7, 3), ("D30", 30, 7), ("D60", 60, 7), ("D90", 90, 14), ("D120", 120, 14), ("D180", 180, 14),
          ("D270", 270, 14), ("D360", 360, 30), ("D540", 540, 30), ("D720", 720, 30)]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="10000,100000,1000000", help="task counts, comma separated")
    parser.add_argument("--naive-max", type=int, default=100_000, help="run the naive loop up to this many tasks")
    parser.add_argument("--legacy-generate-max", type=int, default=1_000_000,
                        help="run the legacy generation (and instances + COPY) up to this many tasks")
    parser.add_argument("--legacy-missed-max", type=int, default=100_000,
                        help="run the old missed-visits rule (one query per subject) up to this many tasks")
    parser.add_argument("--db", default=os.environ.get("METRICS_BENCH_DATABASE_URL", DEFAULT_DB))
    args = parser.parse_args(argv)
    args.levels_list = [int(x) for x in args.levels.split(",") if x.strip()]
    return args


def _event(code: str, days: int, window: int) -> dict[str, Any]:
    return {"code": code, "name_en": code, "name_zh": code, "anchor": "enrolment", "anchor_event": None,
            "offset": {"amount": days, "unit": "day"}, "window_before": window, "window_after": window,
            "mode": "phone", "forms": [], "repeat_every": None, "repeat_until": None}


def setup_world() -> dict[str, Any]:
    from django.db import connection
    from django.utils import timezone

    from bench import common
    from notifications.models import ReminderKind, ReminderRule
    from sites.models import Site, SiteStaff
    from studies.models import ScheduleStatus, ScheduleVersion, Study, StudyStatus
    from tenants import schema_pool, services
    from tenants.models import User

    common.migrate_shared()
    schema_pool.pool_refill(target_size=1)
    tenant = services.tenant_create(name="Metrics bench", slug="metrics", kind="hospital",
                                    admin_email="admin@metrics.example.org", admin_password=None)
    connection.set_tenant(tenant)  # type: ignore[attr-defined]
    sites = [Site.objects.create(code=f"S{i:02d}", name=f"Site {i}", institution="Hospital", country_region="CN",
                                 principal_investigator="Dr Bench", target_enrolment=10_000,
                                 time_zone="Asia/Shanghai", status="active") for i in range(SITES)]
    study = Study.objects.create(code="BENCH", title="Metrics bench", study_type="registry",
                                 status=StudyStatus.ACTIVE, target_enrolment=120_000)
    version = ScheduleVersion.objects.create(study=study, number=1, status=ScheduleStatus.PUBLISHED,
                                             events=[_event(*e) for e in EVENTS], published_at=timezone.now())
    coordinators = []
    for i, site in enumerate(sites):
        coordinator = User.objects.create_user(email=f"coordinator{i}@metrics.example.org")
        investigator = User.objects.create_user(email=f"investigator{i}@metrics.example.org")
        SiteStaff.objects.create(site=site, user=coordinator, role="coordinator", is_primary=True)
        SiteStaff.objects.create(site=site, user=investigator, role="investigator")
        coordinators.append(coordinator)
    # The first coordinator also works at the second site: their metrics cover 2 of 10 sites.
    SiteStaff.objects.create(site=sites[1], user=coordinators[0], role="coordinator")
    # The worklist *page* is measured through Django's whole stack as this coordinator.
    from tenants.models import TenantMembership

    TenantMembership.objects.create(user=coordinators[0], tenant=tenant, role="coordinator")
    ReminderRule.objects.create(study=study, kind=ReminderKind.PATIENT_BEFORE_WINDOW, days=3, channel="email")
    ReminderRule.objects.create(study=study, kind=ReminderKind.COORDINATOR_OVERDUE)
    ReminderRule.objects.create(study=study, kind=ReminderKind.INVESTIGATOR_OVERDUE, days=7)
    sponsor = User.objects.get(email="admin@metrics.example.org")
    return {"tenant": tenant, "sites": sites, "study": study, "version": version,
            "assignee_by_site": {site.pk: coordinators[i].pk for i, site in enumerate(sites)},
            "sponsor": lambda: SimpleNamespace(role="tenant_admin", user_id=sponsor.pk),
            # A fresh membership per call: the visible sites are read once per request.
            "coordinator": lambda: SimpleNamespace(role="coordinator", user_id=coordinators[0].pk),
            "coordinator_id": coordinators[0].pk, "coordinator_user": coordinators[0],
            "host": services.tenant_domain(tenant.slug)}


def truncate(*tables: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")


def create_subjects(world: dict[str, Any], count: int, today: date) -> None:
    from studies.models import Subject, SubjectStatus

    batch = []
    for i in range(count):
        enrolled = today - timedelta(days=i % 730)
        batch.append(Subject(study=world["study"], site=world["sites"][i % SITES], subject_code=f"B-{i:07d}",
                             status=SubjectStatus.LOST if i % 20 == 0 else SubjectStatus.ENROLLED,
                             consent_date=enrolled, enrolment_date=enrolled,
                             email=f"patient{i}@example.org", phone=f"138{i:08d}"))
        if len(batch) == BATCH:
            Subject.objects.bulk_create(batch)
            batch = []
    if batch:
        Subject.objects.bulk_create(batch)


def instances_copy_generate(world: dict[str, Any], today: date) -> int:
    """The planning path with instances, written as studies.services._apply writes large plans."""
    from studies.bulk import tasks_insert
    from studies.models import FollowUpTask, Subject
    from studies.schedule import event_spec_from_dict, plan_occurrences
    from studies.services import task_status_on

    version, study_id, assignees = world["version"], world["study"].pk, world["assignee_by_site"]
    specs = [event_spec_from_dict(raw) for raw in version.events]
    modes = {raw["code"]: raw.get("mode", "any") for raw in version.events}
    made = 0
    batch: list[FollowUpTask] = []
    subjects = Subject.objects.filter(study_id=study_id).values_list("pk", "site_id", "enrolment_date", "index_date")
    for subject_id, site_id, enrolment_date, index_date in subjects.iterator(chunk_size=BATCH):
        for occ in plan_occurrences(events=specs, enrolment_date=enrolment_date, index_date=index_date):
            batch.append(FollowUpTask(
                subject_id=subject_id, study_id=study_id, site_id=site_id, schedule_version=version,
                event_code=occ.event_code, sequence=occ.sequence, mode=modes.get(occ.event_code, "any"),
                target_date=occ.target, window_open=occ.window_open, window_close=occ.window_close,
                provisional=occ.provisional, assignee_id=assignees.get(site_id),
                status=task_status_on(window_open=occ.window_open, target=occ.target,
                                      window_close=occ.window_close, today=today)))
        if len(batch) >= 50_000:
            made += tasks_insert(batch)
            batch = []
    return made + (tasks_insert(batch) if batch else 0)


def new_generate(world: dict[str, Any], today: date) -> int:
    from studies.bulk import tasks_generate
    from studies.models import Subject

    subjects = (Subject.objects.filter(study=world["study"])
                .values_list("pk", "study_id", "site_id", "enrolment_date", "index_date"))
    return tasks_generate(version=world["version"], subjects=subjects.iterator(chunk_size=BATCH), today=today,
                          assignee_by_site=world["assignee_by_site"])


def make_history() -> None:
    """Untimed: most closed windows completed (some late), the rest stay missed; 2% cancelled.
    One subject in 50 never comes back: all their closed visits stay missed."""
    from django.db import connection

    with connection.cursor() as cursor:
        # (id * prime) % 100 spreads the choice over events: ids run subject by subject.
        cursor.execute("""UPDATE studies_followuptask SET status = 'completed',
                          completed_on = CASE WHEN (id * 7919) % 100 < 8 THEN window_close + 3 ELSE target_date END
                          WHERE status = 'missed' AND (id * 7919) % 100 < 80 AND subject_id % 50 <> 7""")
        cursor.execute("UPDATE studies_followuptask SET status = 'cancelled' "
                       "WHERE (id * 104729) % 50 = 0 AND status <> 'completed'")
        cursor.execute("ANALYZE studies_subject")
        cursor.execute("ANALYZE studies_followuptask")


def vacuum() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM (ANALYZE) studies_followuptask")
        cursor.execute("VACUUM (ANALYZE) studies_subject")


def naive_follow_up_rate(today: date) -> float | None:
    """The baseline: every task loaded into Python and counted in a loop."""
    from studies.models import FollowUpTask

    due = completed = 0
    for task in FollowUpTask.objects.all():
        if task.status == "cancelled":
            continue
        if task.window_close < today or task.status == "completed":
            due += 1
            if task.status == "completed":
                completed += 1
    return round(completed / due, 4) if due else None


def timed(func: Callable[[], Any], runs: int = 5, warm_up: bool = False) -> tuple[float, Any]:
    from bench.common import median

    if warm_up:
        func()
    result = None
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        result = func()
        samples.append(time.perf_counter() - started)
    return median(samples), result


def once(func: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = func()
    return time.perf_counter() - started, result


def worklist_page(queryset: Any, page: int = 1) -> tuple[int, list[int]]:
    """What the API does for one page: the count, then the page's rows (joined)."""
    count = queryset.count()
    rows = list(queryset[(page - 1) * PAGE: page * PAGE])
    return count, [task.pk for task in rows]


def worklist_page_of(selector: Callable[..., Any], world: dict[str, Any], bucket: str | None,
                     page: int, **options: Any) -> tuple[int, list[int]]:
    return worklist_page(selector(membership=world["coordinator"](), user_id=world["coordinator_id"], bucket=bucket,
                                  **options), page)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def run_level(world: dict[str, Any], level: int, args: argparse.Namespace, today: date) -> dict[str, list[Any]]:
    from django.db import transaction
    from django.utils import timezone

    from bench import common, followup_legacy
    from bench.common import log
    from studies import metrics, selectors, services
    from studies.reminders import reminders_scan

    truncate("notifications_outboxmessage", "studies_contactattempt", "studies_followuptask", "studies_subject")
    subjects = max(1, level // len(EVENTS))
    started = time.perf_counter()
    create_subjects(world, subjects, today)
    log(f"{subjects:,} subjects in {time.perf_counter() - started:.1f} s (untimed setup)")
    out: dict[str, list[Any]] = {}

    # 2. Generation.
    legacy_s = copy_s = None
    if level <= args.legacy_generate_max:
        legacy_s, made = once(lambda: followup_legacy.legacy_generate(
            version=world["version"], study_id=world["study"].pk, today=today,
            assignee_by_site=world["assignee_by_site"]))
        log(f"  legacy generate: {made:,} tasks in {legacy_s:.2f} s")
        truncate("studies_followuptask")
        copy_s, made = once(lambda: instances_copy_generate(world, today))
        log(f"  instances + COPY: {made:,} tasks in {copy_s:.2f} s")
        truncate("studies_followuptask")
    new_s, tasks = once(lambda: new_generate(world, today))
    log(f"  tasks_generate: {tasks:,} tasks in {new_s:.2f} s")
    out["generate"] = [f"{tasks:,}", f"{new_s:.2f} s",
                       f"{copy_s:.2f} s ({common.ratio(copy_s, new_s)})" if copy_s else "-",
                       f"{legacy_s:.2f} s ({common.ratio(legacy_s, new_s)})" if legacy_s else "-"]

    # 3-4. Metrics.
    make_history()
    sponsor_metrics = lambda: metrics.followup_metrics(membership=world["sponsor"](), today=today)  # noqa: E731
    before_vacuum_s, _ = timed(sponsor_metrics, warm_up=True)
    vacuum()
    sponsor_s, result = timed(sponsor_metrics, warm_up=True)
    coordinator_s, _ = timed(lambda: metrics.followup_metrics(membership=world["coordinator"](), today=today),
                             warm_up=True)
    new_counts_s, new_rows = timed(
        lambda: metrics._task_counts(metrics.FollowUpTask.objects.all(), today), warm_up=True)
    old_counts_s, old_rows = timed(lambda: followup_legacy.legacy_task_counts(today=today), warm_up=True)
    if sorted(sorted(r.items()) for r in new_rows) != sorted(sorted(r.items()) for r in old_rows):
        raise SystemExit("the new and the old task aggregates differ")
    naive = "-"
    if tasks <= args.naive_max:
        naive_s, naive_rate = timed(lambda: naive_follow_up_rate(today))
        if naive_rate != result["overall"]["follow_up_rate"]:
            raise SystemExit(f"rates differ: naive {naive_rate} vs metrics {result['overall']['follow_up_rate']}")
        naive = f"{ms(naive_s)} ({common.ratio(naive_s, sponsor_s)})"
    log(f"  follow-up rate {result['overall']['follow_up_rate']}, due {result['overall']['due']:,}")
    out["metrics"] = [f"{tasks:,}", ms(sponsor_s), ms(before_vacuum_s), ms(coordinator_s), naive,
                      ms(new_counts_s), f"{ms(old_counts_s)} ({common.ratio(old_counts_s, new_counts_s)})"]

    # 4b. The consecutive-missed-visits rule, each in a transaction rolled back afterwards.
    with transaction.atomic():
        missed_s, missed_lost = once(services._apply_missed_rule)
        transaction.set_rollback(True)
    old_missed = "-"
    if tasks <= args.legacy_missed_max:
        with transaction.atomic():
            old_missed_s, old_lost = once(followup_legacy.legacy_apply_missed_rule)
            transaction.set_rollback(True)
        if old_lost != missed_lost:
            raise SystemExit(f"missed rule: new marked {missed_lost} lost, old {old_lost}")
        old_missed = f"{old_missed_s:.2f} s ({common.ratio(old_missed_s, missed_s)})"
    out["missed"] = [f"{tasks:,}", f"{missed_lost:,}", f"{missed_s:.2f} s", old_missed]

    # 5. Worklist.
    user_id = world["coordinator_id"]
    matching = selectors.worklist(membership=world["coordinator"](), user_id=user_id,
                                  upcoming_days=selectors.MAX_UPCOMING_DAYS).count()
    last_page = max(1, -(-matching // PAGE))
    cases: list[tuple[str, str | None, int]] = [("all buckets, page 1", None, 1), ("overdue, page 1", "overdue", 1),
                                                (f"all buckets, last page ({last_page})", None, last_page)]
    out["worklist"] = []
    # Against the old selector, the new one shows every upcoming visit as the old did;
    # the default 90-day horizon is timed on its own below.
    everything = {"upcoming_days": selectors.MAX_UPCOMING_DAYS}
    for label, bucket, page in cases:
        new_s, new_page = timed(partial(worklist_page_of, selectors.worklist, world, bucket, page, **everything),
                                warm_up=True)
        with followup_legacy.old_worklist_index():
            old_s, old_page = timed(partial(worklist_page_of, followup_legacy.legacy_worklist, world, bucket, page),
                                    warm_up=True)
        if new_page != old_page:
            raise SystemExit(f"worklist {label}: the new and the old selector differ")
        out["worklist"].append([f"{tasks:,}", label, f"{new_page[0]:,}", ms(new_s),
                                f"{ms(old_s)} ({common.ratio(old_s, new_s)})"])
    in_horizon = selectors.worklist(membership=world["coordinator"](), user_id=user_id).count()
    last_in_horizon = max(1, -(-in_horizon // PAGE))
    for label, page in (("90-day horizon, page 1", 1), (f"90-day horizon, last page ({last_in_horizon})",
                                                          last_in_horizon)):
        new_s, new_page = timed(partial(worklist_page_of, selectors.worklist, world, None, page), warm_up=True)
        out["worklist"].append([f"{tasks:,}", label, f"{new_page[0]:,}", ms(new_s), "- (no horizon before)"])

    # 5b. The worklist page itself (HTML, 25 rows): middleware, tenant routing, session,
    # the selector, identifying data per row and the template, as the coordinator gets it.
    from django.test import Client

    client = Client(HTTP_HOST=world["host"])
    client.force_login(world["coordinator_user"])
    from tenants.auth import SESSION_TENANT_KEY

    session = client.session  # a session is bound to its tenant at login; force_login skips that
    session[SESSION_TENANT_KEY] = world["tenant"].schema_name
    session.save()
    html_last = max(1, -(-in_horizon // 25))
    out["page"] = []
    for label, query in (("page 1", ""), (f"last page ({html_last})", f"?page={html_last}")):
        def get(query: str = query) -> int:
            response = client.get(f"/worklist/{query}")
            if response.status_code != 200:
                raise SystemExit(f"worklist page {query}: HTTP {response.status_code}")
            return len(response.content)

        page_s, _size = timed(get, warm_up=True)
        number = 1 if not query else last_in_horizon
        query_s, _rows = timed(partial(worklist_page_of, selectors.worklist, world, None, number), warm_up=True)
        out["page"].append([f"{tasks:,}", label, ms(page_s), f"{ms(query_s)} ({common.ratio(query_s, page_s)})"])
    from django.db import connection as page_connection

    page_connection.set_tenant(world["tenant"])  # type: ignore[attr-defined]

    # 6. Reminder scan.
    now = timezone.now()
    with transaction.atomic():
        old_first_s, old_written = once(lambda: followup_legacy.legacy_reminders_scan(now=now))
        old_second_s, _ = once(lambda: followup_legacy.legacy_reminders_scan(now=now))
        transaction.set_rollback(True)
    first_s, written = once(lambda: reminders_scan(now=now))
    second_s, again = once(lambda: reminders_scan(now=now))
    if written != old_written or again:
        raise SystemExit(f"reminder scans differ: new {written} (+{again}), old {old_written}")
    out["scan"] = [f"{tasks:,}", f"{written:,}", f"{first_s:.2f} s",
                   f"{old_first_s:.2f} s ({common.ratio(old_first_s, first_s)})", f"{second_s:.2f} s",
                   f"{old_second_s:.2f} s ({common.ratio(old_second_s, second_s)})"]
    log(f"  reminders: {written:,} written; first scan {first_s:.2f} s (old {old_first_s:.2f} s), "
        f"second {second_s:.2f} s (old {old_second_s:.2f} s)")
    return out


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    os.environ["BENCH_DATABASE_URL"] = args.db
    from bench import common
    from bench.common import log

    common.recreate_database()
    common.setup_django()
    from django.utils import timezone

    world = setup_world()
    today = timezone.localdate()
    log(common.machine_info())
    tables: dict[str, list[list[Any]]] = {"generate": [], "metrics": [], "missed": [], "worklist": [], "page": [],
                                          "scan": []}
    for level in args.levels_list:
        for key, rows in run_level(world, level, args, today).items():
            tables[key].extend(rows if key in ("worklist", "page") else [rows])
    log("")
    log("Generate all tasks (seconds; ratio = that path / tasks_generate)")
    log(common.table(["tasks", "tasks_generate (COPY)", "instances + COPY (_apply)", "legacy bulk_create"],
                     tables["generate"]))
    log("")
    log("followup_metrics (median of 5 after a warm-up; ratio = baseline / new)")
    log(common.table(["tasks", "sponsor, all sites", "sponsor, before VACUUM", "coordinator, 2 of 10 sites",
                      "naive Python loop (x sponsor)", "task aggregate", "old task aggregate (join)"],
                     tables["metrics"]))
    log("")
    log("Consecutive-missed-visits rule (studies.services._apply_missed_rule; study threshold 3), one run each")
    log(common.table(["tasks", "subjects marked lost", "one query", "old: a query per subject"], tables["missed"]))
    log("")
    log(f"Worklist of one coordinator: count + one page of {PAGE} (median of 5 after a warm-up)")
    log(common.table(["tasks", "query", "matching tasks", "worklist", "old worklist, old index"],
                     tables["worklist"]))
    log("Worklist page (GET /worklist/, HTML, 25 rows, the coordinator logged in; median of 5 after a warm-up), "
        "next to its query alone")
    log(common.table(["tasks", "page", "server time", "query alone (share)"], tables["page"]))
    log("")
    log("Reminder scan (3 rules: patient 3 days before the window, coordinator overdue, investigators 7 days "
        "overdue); one run each")
    log(common.table(["tasks", "reminders written", "first scan", "old first scan", "second scan",
                      "old second scan"], tables["scan"]))


if __name__ == "__main__":
    main(sys.argv[1:])
