"""Writing many rows at once with COPY, for the bulk create."""

from collections.abc import Sequence

from django.db import DEFAULT_DB_ALIAS, connections, models
from django.db.models.fields import AutoFieldMixin


def copy_insert(objs: Sequence[models.Model]) -> None:
    """INSERT `objs` (all of one model) with one COPY, as `bulk_create` would, minus its return.

    Each field's value is what the ORM would write (`pre_save`, then `get_db_prep_save`: defaults,
    `auto_now`, JSON). `bulk_create` sends 1000 rows as one INSERT ... UNNEST with one array per
    column, which psycopg adapts element by element in Python: most of a 1000-task bulk's INSERT
    time (docs/benchmarks.md). COPY's rows are encoded by psycopg's C code. An auto-increment
    primary key is left to the database and not read back (no caller needs it). Triggers fire
    as for an INSERT (statement-level ones with their transition table, once per COPY).
    """
    if not objs:
        return
    connection = connections[DEFAULT_DB_ALIAS]  # once: the proxy's lookups cost a fifth of this
    meta = objs[0]._meta
    fields = [
        f
        for f in meta.concrete_fields
        if not (f.primary_key and isinstance(f, AutoFieldMixin))  # the database numbers these
    ]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(str(f.column)) for f in fields)
    statement = f"COPY {quote(meta.db_table)} ({columns}) FROM STDIN"  # names from the model only
    prepared = [(f.pre_save, f.get_db_prep_save) for f in fields]
    with connection.cursor() as cursor, cursor.cursor.copy(statement) as copy:
        for obj in objs:
            copy.write_row([prep(pre_save(obj, True), connection) for pre_save, prep in prepared])
    for obj in objs:
        obj._state.adding = False
        obj._state.db = connection.alias
