"""Raw bulk writes for the hot paths: COPY on PostgreSQL, the ORM's bulk operations elsewhere.

The group-commit writer stores every station message through these (message log, meter values, transaction
events and their transactions' state); the apps above use them for their own hot paths. They know no OCPP: any
model, any columns.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, cast

from django.db import connection
from django.db.models import CharField, Field, JSONField, Model
from psycopg.types.json import Jsonb

from chargers import ocpp_j


def bulk_insert(model: type[Model], rows: Sequence[Model]) -> None:
    """Insert new rows (primary keys are not read back). On PostgreSQL through COPY, elsewhere bulk_create.

    bulk_create quotes every value in Python (psycopg's client-side binding of its UNNEST arrays): a third of the
    CSMS's CPU under load. COPY hands the rows to psycopg's C row writer; values are still prepared by each field
    (pre_save, get_db_prep_save), exactly as bulk_create prepares them, and errors are Django's (IntegrityError).
    """
    if not rows:
        return
    if connection.vendor != "postgresql":
        model._default_manager.bulk_create(rows)
        return
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    table = connection.ops.quote_name(model._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields if f.column)
    with (
        connection.cursor() as cursor,
        connection.wrap_database_errors,
        cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row([f.get_db_prep_save(f.pre_save(row, True), connection) for f in fields])


def insert_rows(model: type[Model], columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Insert plain rows, values in ``columns`` order (attribute names, e.g. ``station_id``), as the ORM would.

    The writer's hot path: on PostgreSQL a COPY of the tuples as they are (JSON columns wrapped as ``Jsonb``),
    with no model instance or per-field preparation; elsewhere models built from the rows and ``bulk_create``.
    Values must already be what the column stores (ints, strs, aware datetimes, JSON-able data or None).
    """
    if not rows:
        return
    if connection.vendor != "postgresql":
        model._default_manager.bulk_create([model(**dict(zip(columns, row, strict=True))) for row in rows])
        return
    sql, json_at = _copy_plan(model, tuple(columns))
    with connection.cursor() as cursor, connection.wrap_database_errors, cursor.cursor.copy(sql) as copy:
        if not json_at:
            for row in rows:
                copy.write_row(row)
            return
        for row in rows:
            values = list(row)
            for i in json_at:
                if values[i] is not None:  # None is SQL NULL, as the ORM stores it for a nullable JSONField
                    values[i] = Jsonb(values[i], dumps=ocpp_j.dumps_bytes)
            copy.write_row(values)


@functools.cache
def _copy_plan(model: type[Model], columns: tuple[str, ...]) -> tuple[str, tuple[int, ...]]:
    fields = [cast("Field[Any, Any]", model._meta.get_field(name)) for name in columns]  # concrete columns only
    quote = connection.ops.quote_name
    names = ", ".join(quote(cast(str, f.column)) for f in fields)
    json_at = tuple(i for i, f in enumerate(fields) if isinstance(f, JSONField))
    return f"COPY {quote(model._meta.db_table)} ({names}) FROM STDIN", json_at


def update_rows(model: type[Model], names: Sequence[str], objs: Sequence[Model]) -> None:
    """PostgreSQL: set ``names`` of every object in ``objs`` to its in-memory values in one UPDATE ... FROM unnest.

    The ORM's ``bulk_update`` builds a CASE per field and object (compile cost grows with the batch); here every
    column travels as one array parameter.
    """
    fields = [cast("Field[Any, Any]", model._meta.get_field(name)) for name in names]
    pk = model._meta.pk
    assert pk is not None
    quote = connection.ops.quote_name
    columns = [pk, *fields]
    # Text columns travel as text[]: the assignment to varchar(n) then refuses an over-long value (a cast to
    # varchar(n)[] would cut it short).
    arrays = ", ".join(f"%s::{'text' if isinstance(f, CharField) else f.db_type(connection)}[]" for f in columns)
    aliases = ", ".join(f"c{i}" for i in range(len(columns)))
    sets = ", ".join(f"{quote(cast(str, f.column))} = v.c{i}" for i, f in enumerate(columns) if i)
    sql = (
        f"UPDATE {quote(model._meta.db_table)} AS t SET {sets} FROM unnest({arrays}) AS v({aliases})"  # noqa: S608
        f" WHERE t.{quote(cast(str, pk.column))} = v.c0"
    )
    params = [[f.get_db_prep_save(getattr(obj, f.attname), connection) for obj in objs] for f in columns]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
