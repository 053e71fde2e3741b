"""ecrf_audit_append, cheaper per row (bench/form_save.py: 20 audit rows per save).

- The rows are parsed in one jsonb_populate_recordset call, before the lock is taken
  (jsonb_populate_record per element looked the row type up for every row, under the lock).
- The row hash is computed by the expression of ecrf_audit_row_hash written out, instead
  of calling that SQL function per row. ecrf_audit_row_hash stays, unchanged: the chain
  check recomputes every stored hash with it, so the two can never drift apart unnoticed
  (tests/ecrf/test_audit.py verifies chains appended by this function).

Schema-relative, like 0001 (replayed into spare schemas by tenants/schema_pool.py).
"""

from django.db import migrations

FORWARD = r"""
CREATE OR REPLACE FUNCTION ecrf_audit_append(p_rows jsonb)
RETURNS TABLE (id bigint, seq bigint, at timestamptz, hash bytea)
LANGUAGE plpgsql AS $fn$
-- Appends every element of p_rows (a JSON array of objects keyed by column name) with
-- one multi-row INSERT and one head update, under a per-schema advisory lock that is held
-- until the caller's transaction ends: call it as the last write before commit.
DECLARE
    v_seq  bigint;
    v_hash bytea;
    v_last timestamptz;
    v_at   timestamptz;
    v_row  ecrf_auditevent;
    v_in   ecrf_auditevent[];
    v_rows ecrf_auditevent[] := '{}';
BEGIN
    IF p_rows IS NULL OR jsonb_typeof(p_rows) <> 'array' OR jsonb_array_length(p_rows) = 0 THEN
        RAISE EXCEPTION 'ecrf_audit_append expects a non-empty JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Parsed before the lock (less time holding it), in one call: jsonb_populate_record
    -- per element looked the row type up again for every row. A function scan returns
    -- the rows in the array's order.
    v_in := ARRAY(SELECT r FROM jsonb_populate_recordset(NULL::ecrf_auditevent, p_rows) AS r);
    PERFORM pg_advisory_xact_lock(ecrf_audit_lock_key());
    SELECT h.last_seq, h.last_hash, h.last_at INTO v_seq, v_hash, v_last
      FROM ecrf_auditchainhead h WHERE h.id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the audit chain head row is missing' USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    -- Taken after the lock, and never before the previous append: `at` follows `seq`.
    v_at := greatest(clock_timestamp(), v_last);
    FOREACH v_row IN ARRAY v_in LOOP
        v_seq := v_seq + 1;
        v_row.id := nextval('ecrf_auditevent_id_seq');
        v_row.seq := v_seq;
        v_row.at := v_at;
        v_row.detail := coalesce(v_row.detail, '{}'::jsonb);
        v_row.prev_hash := v_hash;
        -- ecrf_audit_row_hash(v_row), written out: a call of that SQL function from here is
        -- planned again on every row (about 50 us each), this expression once per session.
        -- Both must stay identical: the chain check (ecrf.audit.audit_chain_verify) recomputes
        -- every stored hash with the function.
        v_row.hash := sha256(v_row.prev_hash || convert_to(jsonb_build_array(
            'v1', v_row.seq, (extract(epoch FROM v_row.at) * 1000000)::bigint,
            v_row.action, v_row.source, v_row.user_id, v_row.user_email, v_row.user_name,
            v_row.subject_id, v_row.entry_id, v_row.event_code, v_row.form_code, v_row.form_version, v_row.item,
            CASE WHEN v_row.old_value IS NULL THEN NULL ELSE jsonb_build_array(v_row.old_value) END,
            CASE WHEN v_row.new_value IS NULL THEN NULL ELSE jsonb_build_array(v_row.new_value) END,
            v_row.reason, v_row.detail
        )::text, 'UTF8'));
        v_hash := v_row.hash;
        v_rows := v_rows || v_row;
    END LOOP;
    INSERT INTO ecrf_auditevent SELECT * FROM unnest(v_rows);
    PERFORM set_config('suifang.audit_append', 'on', true);
    UPDATE ecrf_auditchainhead h
       SET last_seq = v_seq, last_hash = v_hash, last_at = v_at, updated_at = v_at
     WHERE h.id = 1;
    PERFORM set_config('suifang.audit_append', 'off', true);
    RETURN QUERY SELECT u.id, u.seq, u.at, u.hash FROM unnest(v_rows) AS u;
END
$fn$;
"""

BACKWARD = r"""
CREATE OR REPLACE FUNCTION ecrf_audit_append(p_rows jsonb)
RETURNS TABLE (id bigint, seq bigint, at timestamptz, hash bytea)
LANGUAGE plpgsql AS $fn$
-- Appends every element of p_rows (a JSON array of objects keyed by column name) with
-- one multi-row INSERT and one head update, under a per-schema advisory lock that is held
-- until the caller's transaction ends: call it as the last write before commit.
DECLARE
    v_seq  bigint;
    v_hash bytea;
    v_last timestamptz;
    v_at   timestamptz;
    v_row  ecrf_auditevent;
    v_rows ecrf_auditevent[] := '{}';
    v_elem jsonb;
BEGIN
    IF p_rows IS NULL OR jsonb_typeof(p_rows) <> 'array' OR jsonb_array_length(p_rows) = 0 THEN
        RAISE EXCEPTION 'ecrf_audit_append expects a non-empty JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock(ecrf_audit_lock_key());
    SELECT h.last_seq, h.last_hash, h.last_at INTO v_seq, v_hash, v_last
      FROM ecrf_auditchainhead h WHERE h.id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the audit chain head row is missing' USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    -- Taken after the lock, and never before the previous append: `at` follows `seq`.
    v_at := greatest(clock_timestamp(), v_last);
    FOR v_elem IN SELECT e FROM jsonb_array_elements(p_rows) WITH ORDINALITY AS t(e, n) ORDER BY n LOOP
        v_row := jsonb_populate_record(NULL::ecrf_auditevent, v_elem);
        v_seq := v_seq + 1;
        v_row.id := nextval('ecrf_auditevent_id_seq');
        v_row.seq := v_seq;
        v_row.at := v_at;
        v_row.detail := coalesce(v_row.detail, '{}'::jsonb);
        v_row.prev_hash := v_hash;
        v_row.hash := ecrf_audit_row_hash(v_row);
        v_hash := v_row.hash;
        v_rows := v_rows || v_row;
    END LOOP;
    INSERT INTO ecrf_auditevent SELECT * FROM unnest(v_rows);
    PERFORM set_config('suifang.audit_append', 'on', true);
    UPDATE ecrf_auditchainhead h
       SET last_seq = v_seq, last_hash = v_hash, last_at = v_at, updated_at = v_at
     WHERE h.id = 1;
    PERFORM set_config('suifang.audit_append', 'off', true);
    RETURN QUERY SELECT u.id, u.seq, u.at, u.hash FROM unnest(v_rows) AS u;
END
$fn$;
"""


class Migration(migrations.Migration):

    dependencies = [
        ("ecrf", "0004_entry_drop_redundant_indexes"),
    ]

    operations = [
        migrations.RunSQL(sql=FORWARD, reverse_sql=BACKWARD),
    ]
