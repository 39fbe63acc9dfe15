"""Writing many rows at once with COPY, for the bulk create."""

import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, models
from django.db.models.fields import AutoFieldMixin
from psycopg.types.json import Jsonb

# COPY's text format: these four characters are written as backslash escapes.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
NULL = "\\N"


def copy_text(value: Any) -> str:
    """`value`, as the ORM would send it to PostgreSQL, in COPY's text format.

    Only the types a column of ours gets; anything else is a TypeError (not a guess).
    """
    if value is None:
        return NULL
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int | float | uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Jsonb):
        text = (value.dumps or json.dumps)(value.obj)
        return escape(text if isinstance(text, str) else bytes(text).decode())
    raise TypeError(f"No COPY text for {type(value).__name__}")


def escape(text: str) -> str:
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        return text.translate(_COPY_ESCAPES)
    return text


class RowTemplate:
    """COPY rows of one model whose columns are the same in every row but a few (`varying`).

    The other columns get the value the ORM would write for `template` (`pre_save`, then
    `get_db_prep_save`: defaults, JSON), encoded once for the batch instead of once per row and
    column; each row gives only its `varying` columns, already in COPY text (`copy_text`,
    `escape`). Building model instances and preparing every field of every row was most of a
    1000-task bulk's Python time (docs/benchmarks.md). A column the model gains later is written
    with its default in every row, as `bulk_create` would. An auto-increment primary key is left
    to the database. Triggers fire as for an INSERT (statement-level ones with their transition
    table, once per COPY).
    """

    def __init__(self, template: models.Model, varying: Sequence[str]) -> None:
        connection = connections[DEFAULT_DB_ALIAS]
        meta = template._meta
        fields = [
            f
            for f in meta.concrete_fields
            if not (f.primary_key and isinstance(f, AutoFieldMixin))  # the database numbers these
        ]
        by_name = {f.name: f for f in fields}
        varying_fields = [by_name[name] for name in varying]
        fixed = [f for f in fields if f.name not in varying]
        for field in fixed:
            # A value that must differ per row cannot come from the template.
            if field.primary_key or getattr(field, "auto_now", False):
                raise ValueError(f"{meta.label}.{field.name} must be one of the varying columns")
            if getattr(field, "auto_now_add", False):
                raise ValueError(f"{meta.label}.{field.name} must be one of the varying columns")
        self.suffix = "".join(
            "\t" + copy_text(f.get_db_prep_save(f.pre_save(template, True), connection))
            for f in fixed
        )
        if not varying_fields:
            raise ValueError("RowTemplate needs at least one varying column")
        quote = connection.ops.quote_name
        columns = ", ".join(quote(str(f.column)) for f in [*varying_fields, *fixed])
        # Names from the model only.
        self.statement = f"COPY {quote(meta.db_table)} ({columns}) FROM STDIN"

    def copy(self, rows: Iterable[Sequence[str]]) -> None:
        """INSERT one row per item of `rows`: the varying columns' COPY text, in their order."""
        connection = connections[DEFAULT_DB_ALIAS]  # once: the proxy's lookups cost
        end = self.suffix + "\n"
        data = "".join(["\t".join(row) + end for row in rows])
        if not data:
            return
        # psycopg's errors as Django's (an IntegrityError for a unique key), as the ORM raises
        # them: the COPY runs on the raw cursor, past Django's wrapper.
        with (
            connection.wrap_database_errors,
            connection.cursor() as cursor,
            cursor.cursor.copy(self.statement) as copy,
        ):
            copy.write(data)
