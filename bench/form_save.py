"""Form-save benchmark (issue 4): throughput and latency of saving an eCRF form over HTTP,
next to a bare DRF endpoint on the same stack, in the same run.

    .venv/bin/python bench/form_save.py                      # 8 clients, 20 s each
    .venv/bin/python bench/form_save.py --clients 1,8,16 --seconds 30 --workers 4
    .venv/bin/python bench/form_save.py --breakdown 200 --reuse  # one request's SQL, serially
    .venv/bin/python bench/form_save.py --breakdown 500 --reuse --profile /tmp/save.prof  # + cProfile of the saves

It DROPS and recreates its scratch database (BENCH_DATABASE_URL, default
postgresql://postgres@127.0.0.1:5432/suifang_bench), creates one tenant with an active
site, a study whose D7 visit collects a 17-item form (every field type but file: a
calculation, branching, ranges, hard and soft edit checks, a repeating group), and one
subject per save to come. Then it starts gunicorn (config.wsgi, bench settings, `--workers`
sync workers) on a free port and drives it with N client threads in a separate process,
each on its own keep-alive connection with an API token:

- baseline: PUT /api/v1/bench/echo/ with the same JSON body: DRF with the same
  middleware, tenant routing, token authentication and JSON parsing, and nothing else;
- form save: PUT /api/v1/tasks/<task>/forms/<form>/entry/ with complete=true, a new
  entry each time: validation, branching and calculation, 17 item-level audit rows on the
  hash chain, the visit marked done (which re-plans the subject's schedule).

Each phase: 3 s warm-up (not counted), then --seconds measured; --rounds pairs of phases
(echo, save, echo, save, ...) per level, because this VM's speed drifts over a minute.
Prints each round's ratio, then over all rounds: requests/s, p50, p95 and p99 latency,
errors, and the save/echo throughput ratio. Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, db_url, log, machine_info, ratio, recreate_database, setup_django, table

SLUG = "benchsave"
PASSWORD = "Bench-save-password-2026!"
VALUES = {"visit_date": None, "sex": "2", "pregnant": "0", "weight": "70.5", "height": 170, "pain": 3,
          "symptoms": ["a", "b"], "diag_date": "2024-05", "dose_time": "08:30", "seen_at": "2026-01-02T09:15",
          "notes": "No complaints.", "email": "p@example.org", "sbp": 120, "dbp": 80,
          "meds": [{"med_name": "Aspirin", "med_dose": 100}, {"med_name": "Metoprolol", "med_dose": 47.5}]}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="8", help="concurrent clients, comma separated")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=4, help="gunicorn worker processes")
    parser.add_argument("--worker-class", default="sync", choices=["sync", "gthread"],
                        help="gunicorn worker class (production runs gthread: infra/gunicorn.conf.py)")
    parser.add_argument("--threads", type=int, default=4, help="threads per process (gthread)")
    parser.add_argument("--subjects", type=int, default=0, help="subjects to enrol (default: enough)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="echo/save phase pairs per level, alternating (this VM's speed drifts by 10-15%% "
                             "over a minute; alternating keeps both sides under the same conditions)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the scratch database of an earlier run (its unsaved visits; a new API token) "
                             "instead of dropping and filling it again; for trying changes, not for recorded figures")
    parser.add_argument("--breakdown", type=int, default=0, metavar="N",
                        help="instead of the load: N saves and N echoes one after another, in this process "
                             "(Django's test client, no gunicorn), with the wall time of each SQL statement")
    parser.add_argument("--profile", metavar="FILE", default="",
                        help="with --breakdown: cProfile the saves (not the echoes) into FILE, print the top")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)  # the load process
    return parser.parse_args(argv)


# --- setup (untimed) -------------------------------------------------------------------------

def event(code: str, days: int, *, before: int = 7, after: int = 7) -> dict[str, object]:
    return {"code": code, "name_en": code, "name_zh": code, "anchor": "enrolment", "anchor_event": None,
            "offset": {"amount": days, "unit": "day"}, "window_before": before, "window_after": after,
            "mode": "clinic", "forms": [], "repeat_every": None, "repeat_until": None}


def setup(subject_count: int) -> dict[str, Any]:
    recreate_database()
    setup_django()
    from django.core.management import call_command
    from django.utils import timezone

    from config.db import tenant_connection as connection

    call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)
    from ecrf import services as ecrf_services
    from ecrf.samples import VITALS
    from sites import services as site_services
    from studies import services as study_services
    from tenants import services as tenant_services

    tenant = tenant_services.tenant_create(name="Bench save", slug=SLUG, kind="hospital",
                                           admin_email=f"admin@{SLUG}.example.org", admin_password=PASSWORD)
    membership = tenant_services.member_add(tenant=tenant, email=f"coordinator@{SLUG}.example.org",
                                            role="coordinator", password=PASSWORD)
    _token, raw_token = tenant_services.token_issue(user=membership.user, tenant=tenant, label="bench")
    connection.set_tenant(tenant)
    from django.core.files.uploadedfile import SimpleUploadedFile

    site = site_services.site_create(code="B1", name="Bench", institution="Bench hospital", country_region="CN",
                                     principal_investigator="Dr Bench", target_enrolment=subject_count,
                                     time_zone="Asia/Shanghai")
    day = timezone.localdate()
    site = site_services.site_update_checklist(site=site, ethics_approval_date=day, contract_signed=day,
                                               staff_trained=day, ethics_document=SimpleUploadedFile(
                                                   "e.pdf", b"%PDF", "application/pdf"))
    site = site_services.site_activate(site=site)
    site_services.site_staff_assign(site=site, tenant=tenant, user=membership.user, role="coordinator",
                                    is_primary=True)
    study = study_services.study_create(code="SAVE", title="Save bench", study_type="registry",
                                        target_enrolment=subject_count)
    version = study_services.schedule_draft_save(study=study, events=[
        {**event("D7", 7, before=7, after=7), "forms": ["VITALS"]}, event("D30", 30), event("D90", 90)])
    study_services.schedule_publish(version=version)
    study = study_services.study_activate(study=study)
    actor = ecrf_services.Actor(user_id=membership.user_id, label="bench", role="data_manager")
    form_version = ecrf_services.form_draft_save(study=study, definition=VITALS, actor=actor)
    ecrf_services.form_publish(version=form_version, actor=actor)
    tasks = []
    started = time.perf_counter()
    for n in range(subject_count):
        subject = study_services.subject_enrol(study=study, site=site, consent_date=day)
        tasks.append(subject.tasks.get(event_code="D7").pk)
        if n and n % 1000 == 0:
            log(f"  ... {n}/{subject_count} subjects ({time.perf_counter() - started:.0f} s)")
    from tenants.services import tenant_domain

    # As autovacuum would have by now: the planner needs row counts of the new tables, and
    # an autovacuum of the setup's rows must not run in the middle of the measured phases.
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    return {"host": tenant_domain(SLUG), "token": raw_token, "form": form_version.form_id, "tasks": tasks,
            "visit_date": day.isoformat()}


def reuse(subject_count: int) -> dict[str, Any] | None:
    """The earlier run's tenant with a new token, and its D7 visits without an entry yet;
    None when there is no such database or too few visits are left."""
    import psycopg2

    try:
        with psycopg2.connect(db_url()) as probe, probe.cursor() as cursor:
            cursor.execute("SELECT to_regclass('public.tenants_tenant') IS NOT NULL")
            filled = cursor.fetchone()[0]
        probe.close()
    except psycopg2.OperationalError:
        return None
    if not filled:
        return None
    setup_django()
    from config.db import tenant_connection as connection
    from ecrf.models import Entry, FormDefinition
    from studies.models import FollowUpTask
    from tenants import services as tenant_services
    from tenants.models import Tenant, TenantMembership

    tenant = Tenant.objects.filter(slug=SLUG).first()
    if tenant is None:
        from django.db import connections

        connections.close_all()  # setup() drops this database next
        return None
    membership = TenantMembership.objects.get(tenant=tenant, role="coordinator")
    _token, raw_token = tenant_services.token_issue(user=membership.user, tenant=tenant, label="bench reuse")
    connection.set_tenant(tenant)
    from django.db.models import Exists, OuterRef
    from django.utils import timezone

    tasks = list(FollowUpTask.objects.filter(event_code="D7").exclude(Exists(Entry.objects.filter(task=OuterRef("pk"))))
                 .order_by("pk").values_list("pk", flat=True)[:subject_count])
    if len(tasks) < subject_count:
        from sites.models import Site
        from studies import services as study_services
        from studies.models import Study

        missing = subject_count - len(tasks)
        log(f"reuse: {len(tasks)} unsaved visits left, enrolling {missing} more subjects")
        study, site, day = Study.objects.get(code="SAVE"), Site.objects.get(code="B1"), timezone.localdate()
        for _n in range(missing):
            subject = study_services.subject_enrol(study=study, site=site, consent_date=day)
            tasks.append(subject.tasks.get(event_code="D7").pk)
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
    from tenants.services import tenant_domain

    log(f"reuse: {len(tasks)} unsaved visits in the earlier run's database")
    return {"host": tenant_domain(SLUG), "token": raw_token, "form": FormDefinition.objects.get().pk, "tasks": tasks,
            "visit_date": timezone.localdate().isoformat()}


# --- the load (a separate process, so the server's figures are not the client's GIL) -----------

def run_clients(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in the --client process: N threads, each with its own connection."""
    import http.client
    import threading

    clients, seconds, warmup = int(spec["clients"]), float(spec["seconds"]), float(spec["warmup"])
    kind, port, host, token = spec["kind"], int(spec["port"]), str(spec["host"]), str(spec["token"])
    tasks: list[int] = list(spec.get("tasks") or [])
    values = dict(VALUES, visit_date=spec["visit_date"])
    body_echo = json.dumps({"values": values, "version": 0, "complete": True}).encode()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start_at = time.perf_counter() + 0.2
    measure_from, stop_at = start_at + warmup, start_at + warmup + seconds

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Host": host, "Authorization": f"Token {token}", "Content-Type": "application/json"}
        mine = tasks[index::clients]
        position = 0
        while time.perf_counter() < start_at:
            time.sleep(0.001)
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                break
            if kind == "echo":
                path, body = "/api/v1/bench/echo/", body_echo
            else:
                if position >= len(mine):
                    break
                path = f"/api/v1/tasks/{mine[position]}/forms/{spec['form']}/entry/"
                body = body_echo
                position += 1
            began = time.perf_counter()
            try:
                conn.request("PUT", path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                ok = False
            ended = time.perf_counter()
            if began >= measure_from and ended <= stop_at:
                if ok:
                    latencies[index].append(ended - began)
                else:
                    errors[index] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    flat = sorted(x for per in latencies for x in per)
    return {"count": len(flat), "errors": sum(errors), "seconds": seconds, "latencies": flat,
            "exhausted": kind == "save" and len(tasks) and all(
                len(tasks[i::clients]) <= len(latencies[i]) + errors[i] for i in range(clients))}


def percentile(ordered: Any, fraction: float) -> float:
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_gunicorn(workers: int, worker_class: str = "sync", threads: int = 1) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    # Production's gunicorn settings (infra/gunicorn.conf.py: preload, the collector
    # frozen after start-up), with this run's bind address and worker model. Worker
    # recycling is off: a fresh worker's first requests refill its caches, noise here.
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.bench", "BENCH_DATABASE_URL": db_url(),
           "BENCH_ECHO_ENDPOINT": "1", "GUNICORN_MAX_REQUESTS": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", str(ROOT / "infra" / "gunicorn.conf.py"), "config.wsgi",
         "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
         "--worker-class", worker_class, "--threads", str(threads if worker_class == "gthread" else 1),
         "--keep-alive", "5", "--log-level", "warning", "--timeout", "60"],
        cwd=ROOT, env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("gunicorn did not start")


def measure(kind: str, clients: int, seconds: float, port: int, setup_data: dict[str, Any]) -> dict[str, Any]:
    spec = {"kind": kind, "clients": clients, "seconds": seconds, "warmup": 3.0, "port": port,
            **{k: setup_data[k] for k in ("host", "token", "form", "visit_date")}}
    if kind == "save":
        spec["tasks"] = setup_data.pop("remaining_tasks_" + str(clients), None) or []
    done = subprocess.run([sys.executable, __file__, "--client"], input=json.dumps(spec).encode(),
                          capture_output=True, cwd=ROOT, check=True)
    return json.loads(done.stdout)


def breakdown(data: dict[str, Any], count: int, profile: str = "") -> None:
    """Where one request's time goes, serially: per kind, the mean wall time of a request
    and of each SQL statement (by its first 60 characters) per request."""
    import collections

    from django.db import connection
    from django.test import Client

    client = Client()
    headers = {"HTTP_HOST": data["host"], "HTTP_AUTHORIZATION": f"Token {data['token']}"}
    body = json.dumps({"values": dict(VALUES, visit_date=data["visit_date"]), "version": 0, "complete": True})
    tasks = iter(data["tasks"])

    def request(kind: str) -> None:
        path = "/api/v1/bench/echo/" if kind == "echo" else f"/api/v1/tasks/{next(tasks)}/forms/{data['form']}/entry/"
        response = client.put(path, body, content_type="application/json", **headers)
        if response.status_code != 200:
            raise SystemExit(f"{kind}: {response.status_code} {response.content[:300]!r}")

    for kind in ("echo", "save"):
        for _warm in range(20):  # caches, prepared statements
            request(kind)
        spent: dict[str, float] = collections.defaultdict(float)

        def timed(execute: Any, sql: str, params: Any, many: bool, context: Any,
                  spent: dict[str, float] = spent) -> Any:
            started = time.perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                spent[sql[:60]] += time.perf_counter() - started

        profiler = cProfile.Profile() if profile and kind == "save" else None
        began = time.perf_counter()
        with connection.execute_wrapper(timed):
            if profiler:
                profiler.enable()
            for _n in range(count):
                request(kind)
            if profiler:
                profiler.disable()
        total = (time.perf_counter() - began) / count * 1000
        log(f"{kind}: {total:.2f} ms per request, of which SQL {sum(spent.values()) / count * 1000:.2f} ms:")
        for sql, seconds in sorted(spent.items(), key=lambda pair: -pair[1]):
            log(f"  {seconds / count * 1000:6.3f} ms  {sql}")
        if profiler:
            profiler.dump_stats(profile)
            pstats.Stats(profile).sort_stats("tottime").print_stats(30)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.breakdown:
        os.environ["BENCH_ECHO_ENDPOINT"] = "1"  # before settings load: the echo route
        data = reuse(args.breakdown + 20) if args.reuse else None
        if data is None:
            log(f"setup: {args.breakdown + 20} subjects in a fresh database ...")
            data = setup(args.breakdown + 20)
        log(machine_info())
        breakdown(data, args.breakdown, args.profile)
        return
    if args.client:
        spec = json.loads(sys.stdin.read())
        print(json.dumps(run_clients(spec)))
        return
    levels = [int(x) for x in args.clients.split(",") if x.strip()]
    # A generous bound on what one phase can save: 400 saves/s (measured: at most ~290).
    per_phase = int(400 * (args.seconds + 3.5))
    subject_count = args.subjects or per_phase * len(levels) * args.rounds
    data = reuse(subject_count) if args.reuse else None
    if data is None:
        log(f"setup: {subject_count} subjects in a fresh database ...")
        data = setup(subject_count)
    log(machine_info())
    tasks: list[int] = list(data["tasks"])
    proc, port = start_gunicorn(args.workers, args.worker_class, args.threads)
    rows, phase = [], 0
    try:
        for clients in levels:
            echo_count = save_count = 0
            echo_latencies: list[float] = []
            save_latencies: list[float] = []
            errors = [0, 0]
            exhausted = False
            for round_number in range(1, args.rounds + 1):
                data["remaining_tasks_" + str(clients)] = tasks[phase * per_phase:(phase + 1) * per_phase]
                phase += 1
                echo = measure("echo", clients, args.seconds, port, data)
                save = measure("save", clients, args.seconds, port, data)
                log(f"  {clients} clients, round {round_number}: echo {echo['count'] / echo['seconds']:.0f}/s, "
                    f"save {save['count'] / save['seconds']:.0f}/s, "
                    f"{ratio(save['count'] / save['seconds'], echo['count'] / echo['seconds'])}")
                echo_count, save_count = echo_count + echo["count"], save_count + save["count"]
                echo_latencies += echo["latencies"]
                save_latencies += save["latencies"]
                errors[0] += echo["errors"]
                errors[1] += save["errors"]
                exhausted = exhausted or bool(save["exhausted"])
            echo_latencies.sort()
            save_latencies.sort()
            echo_rps = echo_count / (args.seconds * args.rounds)
            save_rps = save_count / (args.seconds * args.rounds)
            rows.append([
                clients, f"{echo_rps:.0f}", f"{percentile(echo_latencies, 0.95) * 1000:.1f}",
                f"{save_rps:.0f}", f"{percentile(save_latencies, 0.5) * 1000:.1f}",
                f"{percentile(save_latencies, 0.95) * 1000:.1f}", f"{percentile(save_latencies, 0.99) * 1000:.1f}",
                f"{errors[0]}/{errors[1]}" + (" (ran out of subjects)" if exhausted else ""),
                ratio(save_rps, echo_rps)])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    kind = f"{args.worker_class} workers" + (f" x {args.threads} threads" if args.worker_class == "gthread" else "")
    log(f"gunicorn {args.workers} {kind}; {args.rounds} rounds of {args.seconds:.0f} s echo then "
        f"{args.seconds:.0f} s save per level, each after 3 s warm-up; figures over all rounds")
    log(table(["clients", "echo req/s", "echo p95 ms", "save req/s", "save p50 ms", "save p95 ms", "save p99 ms",
               "errors echo/save", "save/echo throughput"], rows))


if __name__ == "__main__":
    main(sys.argv[1:])
