"""Follow-up metrics benchmark: server time of studies.metrics.followup_metrics() (the
metrics dashboard query) at 10k / 100k / 1M tasks, next to a naive Python loop over the
tasks computing the same overall follow-up rate (10k and 100k only), and the time to
generate all tasks through the planning path (plan_occurrences + bulk_create).

    .venv/bin/python bench/followup_metrics.py                  # 10k, 100k, 1M tasks
    .venv/bin/python bench/followup_metrics.py --levels 10000,100000

It DROPS and recreates its own database, --db (default
postgresql://postgres@127.0.0.1:5432/suifang_bench2, or METRICS_BENCH_DATABASE_URL),
then creates one tenant with 10 sites and one study whose schedule has 10 events, so
N tasks = N/10 subjects. Each level starts from empty tables (TRUNCATE) and:

1. bulk-creates the subjects (enrolment dates spread over the last two years, 5% lost to
   follow-up) - untimed setup;
2. "generate all tasks" (timed): for every subject plan_occurrences() of the published
   schedule, a FollowUpTask per occurrence with task_status_on(today), bulk_create in
   batches of 10,000 - the work of studies.services' planning path, without the per-subject
   reads of the replan (there is nothing to replan in a new study);
3. untimed: makes the history realistic with two UPDATEs (about 80% of closed windows
   completed, some late, the rest missed; 2% cancelled) and ANALYZE;
4. times followup_metrics() for the sponsor (all sites) and for a coordinator of 2 of the
   10 sites: one warm-up call, then the median of 5; and the naive loop, median of 5.
Prints figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/suifang_bench2"
BATCH = 10_000
SITES = 10
EVENTS = [("D7", 7, 3), ("D30", 30, 7), ("D60", 60, 7), ("D90", 90, 14), ("D120", 120, 14), ("D180", 180, 14),
          ("D270", 270, 14), ("D360", 360, 30), ("D540", 540, 30), ("D720", 720, 30)]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="10000,100000,1000000", help="task counts, comma separated")
    parser.add_argument("--naive-max", type=int, default=100_000, help="run the naive loop up to this many tasks")
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
    user = User.objects.get(email="admin@metrics.example.org")
    for site in sites[:2]:
        SiteStaff.objects.create(site=site, user=user, role="coordinator")
    return {"tenant": tenant, "sites": sites, "study": study, "version": version,
            "sponsor": SimpleNamespace(role="tenant_admin", user_id=user.pk),
            "coordinator": SimpleNamespace(role="coordinator", user_id=user.pk)}


def reset_tables() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE studies_contactattempt, studies_followuptask, studies_subject "
                       "RESTART IDENTITY CASCADE")


def create_subjects(world: dict[str, Any], count: int, today: date) -> None:
    from studies.models import Subject, SubjectStatus

    batch = []
    for i in range(count):
        enrolled = today - timedelta(days=i % 730)
        batch.append(Subject(study=world["study"], site=world["sites"][i % SITES], subject_code=f"B-{i:07d}",
                             status=SubjectStatus.LOST if i % 20 == 0 else SubjectStatus.ENROLLED,
                             consent_date=enrolled, enrolment_date=enrolled))
        if len(batch) == BATCH:
            Subject.objects.bulk_create(batch)
            batch = []
    if batch:
        Subject.objects.bulk_create(batch)


def generate_tasks(world: dict[str, Any], today: date) -> int:
    """The planning path for every subject: plan_occurrences + bulk_create (timed)."""
    from studies.models import FollowUpTask, Subject
    from studies.schedule import event_spec_from_dict, plan_occurrences
    from studies.services import task_status_on

    version = world["version"]
    specs = [event_spec_from_dict(raw) for raw in version.events]
    modes = {raw["code"]: raw.get("mode", "any") for raw in version.events}
    made = 0
    batch: list[FollowUpTask] = []
    subjects = Subject.objects.filter(study=world["study"]).values_list("pk", "enrolment_date", "index_date")
    for subject_id, enrolment_date, index_date in subjects.iterator(chunk_size=BATCH):
        for occ in plan_occurrences(events=specs, enrolment_date=enrolment_date, index_date=index_date):
            batch.append(FollowUpTask(
                subject_id=subject_id, schedule_version=version, event_code=occ.event_code, sequence=occ.sequence,
                mode=modes.get(occ.event_code, "any"), target_date=occ.target, window_open=occ.window_open,
                window_close=occ.window_close, provisional=occ.provisional,
                status=task_status_on(window_open=occ.window_open, target=occ.target,
                                      window_close=occ.window_close, today=today)))
        if len(batch) >= BATCH:
            FollowUpTask.objects.bulk_create(batch)
            made += len(batch)
            batch = []
    if batch:
        FollowUpTask.objects.bulk_create(batch)
        made += len(batch)
    return made


def make_history() -> None:
    """Untimed: most closed windows completed (some late), the rest stay missed; 2% cancelled."""
    from django.db import connection

    with connection.cursor() as cursor:
        # (id * prime) % 100 spreads the choice over events: ids run subject by subject.
        cursor.execute("""UPDATE studies_followuptask SET status = 'completed',
                          completed_on = CASE WHEN (id * 7919) % 100 < 8 THEN window_close + 3 ELSE target_date END
                          WHERE status = 'missed' AND (id * 7919) % 100 < 80""")
        cursor.execute("UPDATE studies_followuptask SET status = 'cancelled' "
                       "WHERE (id * 104729) % 50 = 0 AND status <> 'completed'")
        cursor.execute("ANALYZE studies_subject")
        cursor.execute("ANALYZE studies_followuptask")


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


def timed(func: Any, runs: int = 5) -> tuple[float, Any]:
    from bench.common import median

    result = None
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        result = func()
        samples.append(time.perf_counter() - started)
    return median(samples), result


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    os.environ["BENCH_DATABASE_URL"] = args.db
    from bench import common
    from bench.common import log

    common.recreate_database()
    common.setup_django()
    from django.utils import timezone

    from studies.metrics import followup_metrics

    world = setup_world()
    today = timezone.localdate()
    log(common.machine_info())
    rows = []
    for level in args.levels_list:
        reset_tables()
        subjects = max(1, level // len(EVENTS))
        started = time.perf_counter()
        create_subjects(world, subjects, today)
        subjects_s = time.perf_counter() - started
        started = time.perf_counter()
        tasks = generate_tasks(world, today)
        generate_s = time.perf_counter() - started
        make_history()
        log(f"{tasks:,} tasks for {subjects:,} subjects: subjects {subjects_s:.1f} s, tasks {generate_s:.1f} s")

        followup_metrics(membership=world["sponsor"], today=today)  # warm-up
        sponsor_s, result = timed(lambda: followup_metrics(membership=world["sponsor"], today=today))
        followup_metrics(membership=world["coordinator"], today=today)
        coordinator_s, _ = timed(lambda: followup_metrics(membership=world["coordinator"], today=today))
        naive = "-"
        if tasks <= args.naive_max:
            naive_s, naive_rate = timed(lambda: naive_follow_up_rate(today))
            if naive_rate != result["overall"]["follow_up_rate"]:
                raise SystemExit(f"rates differ: naive {naive_rate} vs metrics {result['overall']['follow_up_rate']}")
            naive = f"{naive_s * 1000:,.0f} ms ({common.ratio(naive_s, sponsor_s)})"
        log(f"  follow-up rate {result['overall']['follow_up_rate']}, due {result['overall']['due']:,}")
        rows.append([f"{tasks:,}", f"{subjects:,}", f"{generate_s:.2f} s", f"{sponsor_s * 1000:.0f} ms",
                     f"{coordinator_s * 1000:.0f} ms", naive])
    log("")
    log(common.table(["tasks", "subjects", "generate all tasks", "followup_metrics (sponsor, all sites)",
                      "followup_metrics (coordinator, 2 of 10 sites)", "naive Python loop (x metrics)"], rows))


if __name__ == "__main__":
    main(sys.argv[1:])
