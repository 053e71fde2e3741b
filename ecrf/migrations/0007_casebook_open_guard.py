"""ecrf_casebook_open(subject, changed): the check a form save runs after its audit
append, in the same transaction (ecrf.services._casebook_guard).

Locking and signing a casebook append to the audit trail in their own transaction, and
the append holds the tenant's audit lock until commit. So once a save's append has the
lock, every lock or signature that came before it has committed, and a statement run
then sees it: the save fails (SQLSTATE SF409) instead of writing into a casebook locked,
or signed, after the save read that it was not.

Schema-relative, like 0001 (replayed into spare schemas by tenants/schema_pool.py).
"""

from django.db import migrations

FORWARD = r"""
CREATE OR REPLACE FUNCTION ecrf_casebook_open(p_subject bigint, p_changed boolean)
RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    IF EXISTS (SELECT 1 FROM ecrf_casebooklock c WHERE c.subject_id = p_subject)
       OR (p_changed AND EXISTS (SELECT 1 FROM ecrf_signature g
                                 WHERE g.subject_id = p_subject AND g.invalidated_at IS NULL)) THEN
        RAISE EXCEPTION 'the casebook of subject % was locked or signed during this save', p_subject
            USING ERRCODE = 'SF409';
    END IF;
    RETURN true;
END
$fn$;
"""

BACKWARD = "DROP FUNCTION IF EXISTS ecrf_casebook_open(bigint, boolean);"


class Migration(migrations.Migration):

    dependencies = [
        ("ecrf", "0006_audit_drop_entry_index"),
    ]

    operations = [
        migrations.RunSQL(sql=FORWARD, reverse_sql=BACKWARD),
    ]
