"""The eCRF audit trail (issue 4, docs/adr/0007-audit-trail.md).

Django cannot create a partitioned table, so the database side is plain SQL and the
models are `managed = False` (Django keeps their state, never their DDL). Everything
here is schema-relative (no schema name is written anywhere): the tenant template
recorder (tenants/schema_pool.py) replays these statements into spare schemas, which are
later renamed. Statements that must run at replay time are DO blocks, because the
recorder skips statements starting with SELECT.

The SQL lives in this file, frozen with the migration; bench/audit_trail.py builds its
scratch tables from these same constants.
"""

from django.db import migrations, models

# --- the partitioned, append-only, hash-chained table ------------------------------------

CREATE_TABLE = r"""
CREATE SEQUENCE ecrf_auditevent_id_seq AS bigint;

CREATE TABLE ecrf_auditevent (
    id           bigint      NOT NULL DEFAULT nextval('ecrf_auditevent_id_seq'),
    seq          bigint      NOT NULL,
    at           timestamptz NOT NULL,
    user_id      bigint      NULL,
    subject_id   bigint      NULL,
    entry_id     bigint      NULL,
    form_version integer     NULL,
    action       varchar(40) NOT NULL,
    source       varchar(10) NOT NULL,
    user_email   text        NOT NULL DEFAULT '',
    user_name    text        NOT NULL DEFAULT '',
    event_code   text        NOT NULL DEFAULT '',
    form_code    text        NOT NULL DEFAULT '',
    item         text        NOT NULL DEFAULT '',
    reason       text        NOT NULL DEFAULT '',
    old_value    jsonb       NULL,
    new_value    jsonb       NULL,
    detail       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    prev_hash    bytea       NOT NULL,
    hash         bytea       NOT NULL,
    CONSTRAINT ecrf_auditevent_pkey PRIMARY KEY (id, at),
    CONSTRAINT ecrf_auditevent_seq_positive CHECK (seq > 0),
    CONSTRAINT ecrf_auditevent_hash_sha256 CHECK (octet_length(hash) = 32 AND octet_length(prev_hash) = 32)
) PARTITION BY RANGE (at);

ALTER SEQUENCE ecrf_auditevent_id_seq OWNED BY ecrf_auditevent.id;

CREATE TABLE ecrf_auditevent_default PARTITION OF ecrf_auditevent DEFAULT;
"""

# Defined on the parent, so every partition (present and future) gets its own copy.
# `seq` is the last key column of the two lookup indexes so that keyset pagination
# (`seq < before_seq`) is decided inside the index, without heap visits.
CREATE_INDEXES = r"""
CREATE INDEX ecrf_auditevent_subject_at ON ecrf_auditevent (subject_id, at, seq);
CREATE INDEX ecrf_auditevent_entry_at ON ecrf_auditevent (entry_id, at, seq);
CREATE INDEX ecrf_auditevent_seq ON ecrf_auditevent (seq);
"""

CREATE_HEAD = r"""
CREATE TABLE ecrf_auditchainhead (
    id         smallint    NOT NULL DEFAULT 1 PRIMARY KEY,
    last_seq   bigint      NOT NULL DEFAULT 0,
    last_hash  bytea       NOT NULL DEFAULT decode(repeat('00', 32), 'hex'),
    last_at    timestamptz NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ecrf_auditchainhead_single_row CHECK (id = 1),
    CONSTRAINT ecrf_auditchainhead_hash_sha256 CHECK (octet_length(last_hash) = 32)
);

INSERT INTO ecrf_auditchainhead (id) VALUES (1);
"""

# --- functions ---------------------------------------------------------------------------
# Unqualified names resolve through the caller's search_path (tenant schema first), and
# each tenant schema has its own copy of every function.

FUNCTIONS = r"""
CREATE FUNCTION ecrf_audit_row_hash(r ecrf_auditevent) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    -- The canonical serialisation, format v1: a JSON array of the content fields in a
    -- fixed order, rendered by PostgreSQL's jsonb output (deterministic: keys of objects
    -- sorted, fixed separators). A json value is wrapped in a one-element array so that
    -- "no value" (SQL NULL) and a JSON null never hash alike. `at` is in microseconds
    -- since the epoch (exact). `id` is not content: it is the physical row identity.
    SELECT sha256(r.prev_hash || convert_to(jsonb_build_array(
        'v1', r.seq, (extract(epoch FROM r.at) * 1000000)::bigint,
        r.action, r.source, r.user_id, r.user_email, r.user_name,
        r.subject_id, r.entry_id, r.event_code, r.form_code, r.form_version, r.item,
        CASE WHEN r.old_value IS NULL THEN NULL ELSE jsonb_build_array(r.old_value) END,
        CASE WHEN r.new_value IS NULL THEN NULL ELSE jsonb_build_array(r.new_value) END,
        r.reason, r.detail
    )::text, 'UTF8'))
$fn$;

CREATE FUNCTION ecrf_audit_lock_key() RETURNS bigint
LANGUAGE sql STABLE AS $fn$
    -- One advisory key per audit table, so per tenant schema: 'AUDT' << 32 | table oid.
    SELECT (1096107092::bigint << 32) | 'ecrf_auditevent'::regclass::oid::bigint
$fn$;

CREATE FUNCTION ecrf_audit_reject() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation',
              HINT = 'Audit rows can only be added, through ecrf_audit_append().';
END
$fn$;

CREATE FUNCTION ecrf_audit_head_guard() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP = 'UPDATE'
       AND current_setting('suifang.audit_append', true) = 'on'
       AND NEW.id = OLD.id AND NEW.last_seq >= OLD.last_seq THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the audit chain head is only moved forward by ecrf_audit_append(): % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$fn$;

CREATE FUNCTION ecrf_audit_append(p_rows jsonb)
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

CREATE FUNCTION ecrf_audit_partitions_ensure(p_months_ahead integer DEFAULT 3, p_from timestamptz DEFAULT now())
RETURNS SETOF text
LANGUAGE plpgsql AS $fn$
-- Creates the monthly partitions (UTC months) from p_from's month to p_months_ahead
-- months later that do not exist yet, and returns their names. A month for which the
-- DEFAULT partition already holds rows is skipped with a warning (those rows cannot be
-- moved: the table is append-only); it keeps working, in the default partition.
DECLARE
    v_schema text;
    v_month  date;
    v_name   text;
    v_start  timestamptz;
    v_end    timestamptz;
    v_busy   boolean;
BEGIN
    SELECT n.nspname INTO v_schema
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = 'ecrf_auditevent'::regclass;
    -- Creating a partition locks the parent: give up rather than queue behind a long reader.
    PERFORM set_config('lock_timeout', '5s', true);
    FOR i IN 0 .. greatest(p_months_ahead, 0) LOOP
        v_month := (date_trunc('month', p_from AT TIME ZONE 'UTC') + make_interval(months => i))::date;
        v_name := 'ecrf_auditevent_p' || to_char(v_month, 'YYYY_MM');
        CONTINUE WHEN to_regclass(format('%I.%I', v_schema, v_name)) IS NOT NULL;
        v_start := v_month::timestamp AT TIME ZONE 'UTC';
        v_end := (v_month + interval '1 month')::timestamp AT TIME ZONE 'UTC';
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.ecrf_auditevent_default WHERE at >= $1 AND at < $2)', v_schema)
           INTO v_busy USING v_start, v_end;
        IF v_busy THEN
            RAISE WARNING 'audit partition % not created: the default partition holds rows of that month', v_name;
            CONTINUE;
        END IF;
        EXECUTE format('CREATE TABLE %I.%I PARTITION OF %I.ecrf_auditevent FOR VALUES FROM (%L) TO (%L)',
                       v_schema, v_name, v_schema, v_start, v_end);
        -- Statement triggers are not inherited: TRUNCATE of the partition itself is refused here.
        EXECUTE format('CREATE TRIGGER ecrf_auditevent_no_truncate BEFORE TRUNCATE ON %I.%I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION %I.ecrf_audit_reject()', v_schema, v_name, v_schema);
        RETURN NEXT v_name;
    END LOOP;
END
$fn$;
"""

TRIGGERS = r"""
CREATE TRIGGER ecrf_auditevent_append_only BEFORE UPDATE OR DELETE ON ecrf_auditevent
    FOR EACH ROW EXECUTE FUNCTION ecrf_audit_reject();
CREATE TRIGGER ecrf_auditevent_no_truncate BEFORE TRUNCATE ON ecrf_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION ecrf_audit_reject();
CREATE TRIGGER ecrf_auditevent_no_truncate BEFORE TRUNCATE ON ecrf_auditevent_default
    FOR EACH STATEMENT EXECUTE FUNCTION ecrf_audit_reject();
CREATE TRIGGER ecrf_auditchainhead_guard BEFORE UPDATE OR DELETE ON ecrf_auditchainhead
    FOR EACH ROW EXECUTE FUNCTION ecrf_audit_head_guard();
CREATE TRIGGER ecrf_auditchainhead_no_truncate BEFORE TRUNCATE ON ecrf_auditchainhead
    FOR EACH STATEMENT EXECUTE FUNCTION ecrf_audit_head_guard();
"""

# A DO block, not SELECT: the template recorder replays it, so each schema built from the
# template gets the partitions of the month it is built in.
ENSURE_PARTITIONS = r"""
DO $do$ BEGIN PERFORM ecrf_audit_partitions_ensure(3); END $do$;
"""

FORWARD = [CREATE_TABLE, CREATE_INDEXES, CREATE_HEAD, FUNCTIONS, TRIGGERS, ENSURE_PARTITIONS]

BACKWARD = r"""
DROP TABLE IF EXISTS ecrf_auditevent CASCADE;
DROP TABLE IF EXISTS ecrf_auditchainhead CASCADE;
DROP FUNCTION IF EXISTS ecrf_audit_append(jsonb);
DROP FUNCTION IF EXISTS ecrf_audit_partitions_ensure(integer, timestamptz);
DROP FUNCTION IF EXISTS ecrf_audit_lock_key();
DROP FUNCTION IF EXISTS ecrf_audit_reject() CASCADE;
DROP FUNCTION IF EXISTS ecrf_audit_head_guard() CASCADE;
"""


class Migration(migrations.Migration):
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(sql=FORWARD, reverse_sql=BACKWARD),
            ],
            state_operations=[
                migrations.CreateModel(
                    name="AuditEvent",
                    fields=[
                        ("id", models.BigIntegerField(primary_key=True, serialize=False)),
                        ("seq", models.BigIntegerField()),
                        ("at", models.DateTimeField()),
                        ("action", models.CharField(max_length=40)),
                        ("source", models.CharField(max_length=10)),
                        ("user_id", models.BigIntegerField(null=True)),
                        ("user_email", models.TextField(default="")),
                        ("user_name", models.TextField(default="")),
                        ("subject_id", models.BigIntegerField(null=True)),
                        ("entry_id", models.BigIntegerField(null=True)),
                        ("event_code", models.TextField(default="")),
                        ("form_code", models.TextField(default="")),
                        ("form_version", models.IntegerField(null=True)),
                        ("item", models.TextField(default="")),
                        ("old_value", models.JSONField(null=True)),
                        ("new_value", models.JSONField(null=True)),
                        ("reason", models.TextField(default="")),
                        ("detail", models.JSONField(default=dict)),
                        ("prev_hash", models.BinaryField()),
                        ("hash", models.BinaryField()),
                    ],
                    options={"db_table": "ecrf_auditevent", "managed": False},
                ),
                migrations.CreateModel(
                    name="AuditChainHead",
                    fields=[
                        ("id", models.SmallIntegerField(primary_key=True, serialize=False)),
                        ("last_seq", models.BigIntegerField()),
                        ("last_hash", models.BinaryField()),
                        ("last_at", models.DateTimeField(null=True)),
                        ("updated_at", models.DateTimeField()),
                    ],
                    options={"db_table": "ecrf_auditchainhead", "managed": False},
                ),
            ],
        ),
    ]
