"""infra/gunicorn.conf.py: the production server settings load in a real gunicorn, the
collector is frozen after start-up, and the access log never carries a query string."""

from __future__ import annotations

import gc
import os
import runpy
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

CONF = Path(__file__).resolve().parent.parent / "infra" / "gunicorn.conf.py"


@pytest.fixture
def conf() -> dict:
    return runpy.run_path(str(CONF))


@pytest.fixture
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()  # the test process keeps collecting everything, as before


def test_worker_start_freezes_what_is_loaded(conf, unfrozen):
    assert gc.get_freeze_count() == 0
    conf["post_worker_init"](SimpleNamespace(nr=0))
    assert gc.get_freeze_count() > 10_000  # pytest, Django and the app are loaded here


def test_freezes_again_once_after_the_first_requests(conf, unfrozen):
    after = conf["GC_FREEZE_AFTER_REQUESTS"]
    worker = SimpleNamespace(nr=after - 1)
    conf["post_request"](worker, None, {}, None)
    assert gc.get_freeze_count() == 0  # not yet
    worker.nr = after
    conf["post_request"](worker, None, {}, None)
    frozen = gc.get_freeze_count()
    assert frozen > 0
    worker.nr = after + 1
    garbage_and_more = [[index] for index in range(1000)]
    conf["post_request"](worker, None, {}, None)
    # Only once: a second freeze would have taken the 1,001 objects just made (frozen
    # objects can still be freed, so the count may drop, never jump).
    assert gc.get_freeze_count() <= frozen
    assert garbage_and_more



def test_the_second_freeze_is_not_missed_when_the_count_jumps_past_it(conf, unfrozen):
    """gthread counts a request when it starts: with others in flight, the request that
    ends first may already see a count above the threshold."""
    worker = SimpleNamespace(nr=conf["GC_FREEZE_AFTER_REQUESTS"] + 3)
    conf["post_request"](worker, None, {}, None)
    frozen = gc.get_freeze_count()
    assert frozen > 0
    keep = [[index] for index in range(1000)]
    worker.nr += 1
    conf["post_request"](worker, None, {}, None)
    assert gc.get_freeze_count() <= frozen and keep  # once per worker (the 1,001 new objects stay out)


def test_access_log_has_the_path_only(conf):
    line = conf["access_log_format"]
    assert "%(U)s" in line
    for leaks in ("%(q)s", "%(r)s", "%(f)s", "%(a)s"):
        assert leaks not in line


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_real_gunicorn_serves_with_these_settings(tmp_path):
    """Every hook runs in a real arbiter and worker (preload, when_ready in the master,
    post_worker_init and post_request in the worker): a failing hook would kill the
    worker or be logged as an exception."""
    port = _free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test", "PORT": str(port),
           "WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "2", "GUNICORN_GC_FREEZE_AFTER": "2",
           "GUNICORN_WORKER_TMP_DIR": str(tmp_path), "HOME": str(tmp_path)}
    log_file = tmp_path / "gunicorn.log"
    with log_file.open("wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "gunicorn", "--config", str(CONF), "config.wsgi"],
                                  cwd=CONF.parent.parent, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            statuses = []
            deadline = time.monotonic() + 60
            while len(statuses) < 4 and time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
                        statuses.append(response.status)
                except OSError:
                    time.sleep(0.3)
            assert statuses == [200, 200, 200, 200]
            assert server.poll() is None
        finally:
            server.terminate()
            server.wait(timeout=30)
    output = log_file.read_text(errors="replace")
    assert "Exception in" not in output, output
    assert "Traceback" not in output, output


def test_the_wsgi_module_loads_every_view_before_the_fork():
    """With preload_app the master imports config.wsgi: the URL confs and their views must
    be loaded then, not by each worker's first request."""
    probe = ("import sys, config.wsgi; "
             "print(all(m in sys.modules for m in ('ecrf.api.views', 'ecrf.views', 'exports.views', "
             "'config.urls_tenant', 'config.urls_public')))")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120,
                          cwd=CONF.parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True"
