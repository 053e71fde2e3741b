"""The same 0001 as bench/synthetic/migrations (imported, not copied), so that
BENCH_MIGRATIONS=next only adds 0002."""

import importlib

Migration = importlib.import_module("bench.synthetic.migrations.0001_initial").Migration
