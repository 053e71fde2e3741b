"""`make test`: run pytest against DATABASE_URL/REDIS_URL when set, otherwise against
embedded PostgreSQL and Redis started here (and stopped afterwards)."""

from __future__ import annotations

import os
import subprocess
import sys

from infra.services import ROOT, ensure_services


def main(argv: list[str]) -> int:
    services = ensure_services(data_dir=ROOT / ".data" / "test", database="suifang_test_base")
    for name in services.embedded:
        print(f"[test] using embedded {name}")
    env = {**os.environ, **services.env, "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    try:
        return subprocess.run([sys.executable, "-m", "pytest", *argv], cwd=ROOT, env=env).returncode
    finally:
        services.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
