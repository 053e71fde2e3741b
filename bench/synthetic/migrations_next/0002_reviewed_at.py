"""A small, realistic schema change for bench/migrate_tenants.py: a nullable column
and an index on it, on five of the 25 synthetic models. Only used with
BENCH_MIGRATIONS=next (config/settings/bench.py); bench/synthetic/migrations, which the
tests use, stays at 0001."""

from django.db import migrations, models

MODELS = ["thing00", "thing05", "thing10", "thing15", "thing20"]


class Migration(migrations.Migration):

    dependencies = [
        ("synthetic", "0001_initial"),
    ]

    operations = [
        op
        for name in MODELS
        for op in (
            migrations.AddField(
                model_name=name,
                name="reviewed_at",
                field=models.DateTimeField(null=True),
            ),
            migrations.AddIndex(
                model_name=name,
                index=models.Index(fields=["reviewed_at"], name=f"synth{name[-2:]}_reviewed_idx"),
            ),
        )
    ]
