"""Inserting many rows that differ in a few columns: the shared values travel once.

A placement pass creates tens to thousands of replicas at once that share all but their
name, uid and node (the same deployment, revision, template, requests, timestamps).
`QuerySet.bulk_create` sends every column of every row (on PostgreSQL, one array per
column, each value prepared and quoted in Python): at 10,000 replicas that was a third of
the worker's placement time, most of it the same template JSON over and over. Here the
varying columns go as arrays, the rest as one value each:

    INSERT INTO t (a, b, c) SELECT v.a, %s, %s FROM unnest(%s::text[]) AS v(a) RETURNING id
"""

from __future__ import annotations

from django.db import connections, router
from django.db.models import Model


def insert_alike(objs: list[Model], varying: tuple[str, ...]) -> list[Model]:
    """Insert unsaved instances of one model that are equal in every field but `varying`
    (field names); the shared values are taken from the first. Sets each instance's pk and
    marks it saved, as bulk_create does (model signals are not sent: neither does it).
    Returns `objs`."""
    if not objs:
        return objs
    model = type(objs[0])
    meta = model._meta
    db = router.db_for_write(model)
    connection = connections[db]
    pk = meta.pk
    fields = [f for f in meta.concrete_fields if f is not pk]
    unknown = set(varying) - {f.name for f in fields}
    if unknown:
        raise ValueError(f"insert_alike: {model.__name__} has no field(s) {sorted(unknown)}")
    first = objs[0]
    columns, selected, shared_params, arrays, array_params = [], [], [], [], []
    for field in fields:
        columns.append(connection.ops.quote_name(field.column))
        if field.name in varying:
            values = [field.get_db_prep_save(field.pre_save(obj, True), connection) for obj in objs]
            alias = f"v{len(arrays)}"
            arrays.append(f"%s::{field.db_type(connection)}[]")
            array_params.append(values)
            selected.append(alias)
        else:
            value = field.pre_save(first, True)  # auto_now and friends: set once, shared
            for obj in objs[1:]:
                setattr(obj, field.attname, value)
            shared_params.append(field.get_db_prep_save(value, connection))
            selected.append(f"%s::{field.db_type(connection)}")
    aliases = ", ".join(f"v{i}" for i in range(len(arrays)))
    sql = (
        f"INSERT INTO {connection.ops.quote_name(meta.db_table)} ({', '.join(columns)}) "  # noqa: S608
        f"SELECT {', '.join(selected)} FROM unnest({', '.join(arrays)}) WITH ORDINALITY AS v({aliases}, n) "
        f"ORDER BY n RETURNING {connection.ops.quote_name(pk.column)}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*shared_params, *array_params])
        ids = [row[0] for row in cursor.fetchall()]
    for obj, pk_value in zip(objs, ids, strict=True):
        obj.pk = pk_value
        obj._state.adding = False
        obj._state.db = db
    return objs
