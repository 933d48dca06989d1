"""Inserting many rows that differ in a few columns: the shared values travel once.

A placement pass creates tens to thousands of replicas at once that share all but their
name, uid and node (the same deployment, revision, template, requests, timestamps).
`QuerySet.bulk_create` sends every column of every row (on PostgreSQL, one array per
column, each value prepared and quoted in Python): at 10,000 replicas that was a third of
the worker's placement time, most of it the same template JSON over and over. Here the
varying columns go as arrays, the rest as one value each:

    INSERT INTO t (a, b, c) SELECT v.a, %s, %s FROM unnest(%s::text[]) AS v(a) RETURNING id

The statement depends only on the model and the arguments' names, so it is built once
per process (a field's database type costs more to work out than it seems: a foreign
key's builds a field each time).
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache

from django.db import connections, router
from django.db.models import Field, Model, UniqueConstraint


def insert_alike(
    objs: list[Model], varying: tuple[str, ...], *, skip_conflicts: tuple[str, str] | None = None
) -> list[Model]:
    """Insert unsaved instances of one model that are equal in every field but `varying`
    (field names); the shared values are taken from the first. Sets each instance's pk and
    marks it saved, as bulk_create does (model signals are not sent: neither does it).

    `skip_conflicts=(constraint, key)`: a row that would break that unique constraint is
    not inserted (ON CONFLICT ... DO NOTHING); `key` names a varying field (a text or
    number column, compared as the database returns it) unique among `objs`, by which the
    inserted rows are told apart. Returns the instances inserted: all of `objs` without
    `skip_conflicts`, else those not skipped (in their order)."""
    if not objs:
        return objs
    model = type(objs[0])
    db = router.db_for_write(model)
    connection = connections[db]
    conflicts = None if skip_conflicts is None else tuple(skip_conflicts)
    sql, fields, key = _statement(model, tuple(varying), conflicts, connection.alias)
    if key is not None:
        # Two rows of one statement with the same key would collide with each other (the
        # second silently skipped) and could not be told apart in what comes back.
        values = [getattr(obj, key.attname) for obj in objs]
        if len(set(values)) < len(values):
            repeated = sorted(str(value) for value, n in Counter(values).items() if n > 1)
            raise ValueError(
                f"insert_alike: {model.__name__}.{key.name} repeats among the rows: {repeated[:5]}"
            )
    first = objs[0]
    shared_params, array_params = [], []
    for field in fields:
        if field.name in varying:
            array_params.append(
                [field.get_db_prep_save(field.pre_save(obj, True), connection) for obj in objs]
            )
        else:
            value = field.pre_save(first, True)  # auto_now and friends: set once, shared
            for obj in objs[1:]:
                setattr(obj, field.attname, value)
            shared_params.append(field.get_db_prep_save(value, connection))
    with connection.cursor() as cursor:
        cursor.execute(sql, [*shared_params, *array_params])
        rows = cursor.fetchall()
    if key is None:
        inserted = objs
        pks = [row[0] for row in rows]
    else:
        found = {row[1]: row[0] for row in rows}  # key -> pk
        inserted = [obj for obj in objs if getattr(obj, key.attname) in found]
        pks = [found[getattr(obj, key.attname)] for obj in inserted]
    for obj, pk_value in zip(inserted, pks, strict=True):
        obj.pk = pk_value
        obj._state.adding = False
        obj._state.db = db
    return inserted


@lru_cache(maxsize=64)
def _statement(
    model: type[Model], varying: tuple[str, ...], skip_conflicts: tuple[str, str] | None, alias: str
) -> tuple[str, list[Field], Field | None]:
    """The INSERT for these arguments, the fields in parameter order, and the key field."""
    connection = connections[alias]
    meta = model._meta
    pk = meta.pk
    fields = [f for f in meta.concrete_fields if f is not pk]
    unknown = set(varying) - {f.name for f in fields}
    if unknown:
        raise ValueError(f"insert_alike: {model.__name__} has no field(s) {sorted(unknown)}")
    key = None
    conflict = ""
    if skip_conflicts is not None:
        constraint, key_name = skip_conflicts
        if key_name not in varying:
            raise ValueError(f"insert_alike: the key {key_name!r} must be one of the varying fields")
        found = next((c for c in meta.constraints if c.name == constraint), None)
        if found is None:
            raise ValueError(f"insert_alike: {model.__name__} has no constraint {constraint!r}")
        if not _plain_unique(found):
            raise ValueError(
                f"insert_alike: {constraint!r} is not a plain unique constraint on columns "
                "(ON CONFLICT needs one: no condition, expressions, include, opclasses or deferral)"
            )
        key = meta.get_field(key_name)
        conflict = f" ON CONFLICT ON CONSTRAINT {connection.ops.quote_name(constraint)} DO NOTHING"
    shared = [f for f in fields if f.name not in varying]
    moving = [f for f in fields if f.name in varying]
    alias_of = {field.name: f"v{i}" for i, field in enumerate(moving)}
    columns = [connection.ops.quote_name(field.column) for field in fields]
    selected = [alias_of.get(field.name) or f"%s::{field.db_type(connection)}" for field in fields]
    arrays = [f"%s::{field.db_type(connection)}[]" for field in moving]
    aliases = ", ".join(alias_of.values())
    returning = connection.ops.quote_name(pk.column)
    if key is not None:
        returning += f", {connection.ops.quote_name(key.column)}"
    sql = (
        f"INSERT INTO {connection.ops.quote_name(meta.db_table)} ({', '.join(columns)}) "  # noqa: S608
        f"SELECT {', '.join(selected)} FROM unnest({', '.join(arrays)}) WITH ORDINALITY AS v({aliases}, n) "
        f"ORDER BY n{conflict} RETURNING {returning}"
    )
    return sql, [*shared, *moving], key


def _plain_unique(constraint) -> bool:
    return (
        isinstance(constraint, UniqueConstraint)
        and bool(constraint.fields)
        and constraint.condition is None
        and not constraint.expressions
        and not constraint.include
        and not constraint.opclasses
        and constraint.deferrable is None
    )
