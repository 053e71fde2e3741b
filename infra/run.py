"""`make run`: start (or reuse) PostgreSQL and Redis, migrate, seed the demo, and serve
the web app, a Celery worker and beat together. Ctrl-C stops everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from infra.services import ROOT, ensure_services

PORT = os.environ.get("PORT", "8000")


def main() -> int:
    services = ensure_services()
    env = {**os.environ, **services.env, "DJANGO_SETTINGS_MODULE": "config.settings.dev",
           "SITE_PORT": PORT, "PYTHONUNBUFFERED": "1"}
    for name in services.embedded:
        print(f"[run] embedded {name} started (data in .data/)")
    python = sys.executable

    def manage(*args: str) -> None:
        subprocess.run([python, "manage.py", *args], cwd=ROOT, env=env, check=True)

    manage("migrate_tenants", "--jobs", "2")
    manage("seed_demo")
    manage("seed_demo_study")
    beat_schedule = str(ROOT / ".data" / "celerybeat-schedule")
    procs = {
        "web": subprocess.Popen([python, "manage.py", "runserver", f"127.0.0.1:{PORT}", "--noreload"],
                                cwd=ROOT, env=env),
        "worker": subprocess.Popen([python, "-m", "celery", "-A", "config", "worker", "-l", "INFO",
                                    "--concurrency", "2", "-n", "run@%h"], cwd=ROOT, env=env),
        "beat": subprocess.Popen([python, "-m", "celery", "-A", "config", "beat", "-l", "INFO",
                                  "-s", beat_schedule], cwd=ROOT, env=env),
    }
    print(
        "\n[run] Suifang is up:\n"
        f"  public site / operator console  http://localhost:{PORT}/  (admin: /admin/)\n"
        f"  hospital tenant                 http://demo-hospital.localhost:{PORT}/\n"
        f"  device-company tenant           http://demo-device.localhost:{PORT}/\n"
        f"  API docs (per tenant)           http://demo-hospital.localhost:{PORT}/api/docs/\n"
        f"  health                          http://localhost:{PORT}/healthz  /readyz\n"
        "  Logins are listed above (e.g. coordinator@demo-hospital.test).\n"
        "  Ctrl-C stops everything.\n",
        flush=True,
    )
    stopping = False

    def stop(*_args: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    while not stopping:
        for name, proc in procs.items():
            if proc.poll() is not None:
                print(f"[run] {name} exited with {proc.returncode}; stopping.")
                exit_code = proc.returncode or 1
                stopping = True
        time.sleep(0.5)
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    services.close()
    print("[run] stopped.")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
