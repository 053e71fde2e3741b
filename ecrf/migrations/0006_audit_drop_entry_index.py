"""Drop the audit trail's (entry_id, at, seq) index.

Every read of the trail names the subject (ecrf.audit_selectors.audit_for_subject; an
entry's history is the subject's rows filtered by entry), and the (subject_id, at, seq)
index serves it: a subject's rows are few next to the table. The entry index only cost
writes: one more index entry for each of the ~20 rows a form save appends
(bench/form_save.py, docs/BENCHMARKS.md).

Schema-relative, like 0001 (replayed into spare schemas by tenants/schema_pool.py).
"""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("ecrf", "0005_audit_append_per_row_cost"),
    ]

    operations = [
        migrations.RunSQL(
            sql="DROP INDEX IF EXISTS ecrf_auditevent_entry_at;",
            reverse_sql="CREATE INDEX IF NOT EXISTS ecrf_auditevent_entry_at ON ecrf_auditevent (entry_id, at, seq);",
        ),
    ]
