"""The default connection, typed loosely: django-tenants adds schema methods
(set_schema, set_schema_to_public, schema_name) that django-stubs cannot know about."""

from typing import Any

from django.db import connection as _connection

tenant_connection: Any = _connection



def instance_from_row(model: Any, columns: tuple[str, ...] | list[str], values: list[Any] | tuple[Any, ...]) -> Any:
    """A model instance from a hand-written query's row (columns are attnames), with the
    field converters the ORM would apply (psycopg2 hands JSON over as text under Django).
    Fields not given are deferred: reading one later costs a query instead of failing."""
    converted = []
    for name, value in zip(columns, values, strict=True):
        from_db_value = getattr(model._meta.get_field(name), "from_db_value", None)  # get_field knows attnames
        converted.append(from_db_value(value, None, _connection) if from_db_value and value is not None else value)
    return model.from_db(_connection.alias, list(columns), converted)


def row_insert(instance: Any, *, conflict_target: tuple[str, ...] = ()) -> int | None:
    """INSERT the instance (every concrete field, prepared as Model.save would) and set
    its pk; with `conflict_target` (column names of a unique constraint), a row that
    already exists is left alone and None is returned instead of raising. For hot paths
    where the ORM's statement building costs more than the statement."""
    meta = instance._meta
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    values = [f.get_db_prep_save(f.pre_save(instance, True), _connection) for f in fields]
    quote = _connection.ops.quote_name
    sql = (f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "  # noqa: S608
           f"VALUES ({', '.join(['%s'] * len(fields))})")
    if conflict_target:
        sql += f" ON CONFLICT ({', '.join(quote(c) for c in conflict_target)}) DO NOTHING"
    with _connection.cursor() as cursor:
        cursor.execute(sql + f" RETURNING {quote(meta.pk.column)}", values)
        row = cursor.fetchone()
    if row is None:
        return None
    instance.pk = row[0]
    instance._state.adding, instance._state.db = False, _connection.alias
    return int(row[0])


def row_update(instance: Any, *, fields: tuple[str, ...] | list[str]) -> None:
    """UPDATE the named fields (and any auto_now field) of an existing row by pk."""
    meta = instance._meta
    chosen = [meta.get_field(name) for name in fields]
    chosen += [f for f in meta.concrete_fields if getattr(f, "auto_now", False) and f not in chosen]
    values = [f.get_db_prep_save(f.pre_save(instance, False), _connection) for f in chosen]
    quote = _connection.ops.quote_name
    sql = (f"UPDATE {quote(meta.db_table)} SET {', '.join(quote(f.column) + ' = %s' for f in chosen)} "  # noqa: S608
           f"WHERE {quote(meta.pk.column)} = %s")
    with _connection.cursor() as cursor:
        cursor.execute(sql, [*values, instance.pk])
