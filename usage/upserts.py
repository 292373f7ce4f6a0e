"""Upserts declared as data: one row, its conflict columns, what is added or replaced.

The same declaration renders as a plain `INSERT ... VALUES ... ON CONFLICT` statement (any
database) or as the body of a data-modifying CTE reading `FROM ev` (PostgreSQL), which is
how `usage.recording` writes a turn in one statement there and step by step elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from django.db import connection
from django.db.models import Model


@dataclass(frozen=True)
class Upsert:
    """One row a statement writes.

    `values` maps each column (a model field's attname) to the name of a parameter, or to
    an int written as it is. When a row with the same `conflict` columns exists, the
    `add` columns are increased by the new values and the `replace` columns overwritten;
    with neither, the new row is dropped (ON CONFLICT DO NOTHING). `only_if_greater` names
    a column the existing row keeps unless the new value is greater (then nothing is
    written at all). `when` names a boolean parameter: the row is written only when it is
    true.
    """

    name: str
    model: type[Model]
    conflict: tuple[str, ...]
    values: Mapping[str, str | int]
    add: tuple[str, ...] = ()
    replace: tuple[str, ...] = ()
    only_if_greater: str | None = None
    when: str | None = None

    def _column(self, attname: str) -> str:
        columns = {f.attname: f.column for f in self.model._meta.concrete_fields}
        return connection.ops.quote_name(columns[attname])

    def sql(self, *, from_event: bool = False, cast: Callable[[str], str] = str) -> str:
        """`INSERT ... VALUES`, or with `from_event` `INSERT ... SELECT ... FROM ev` (a CTE
        body). `cast` wraps each parameter placeholder (PostgreSQL names its type)."""
        table = connection.ops.quote_name(self.model._meta.db_table)
        columns = ", ".join(self._column(name) for name in self.values)
        values = ", ".join(
            str(value) if isinstance(value, int) else cast(f"%({value})s")
            for value in self.values.values()
        )
        if from_event:
            source = f"SELECT {values} FROM ev"  # noqa: S608 - names from models
            if self.when:
                source += f" WHERE {cast(f'%({self.when})s')}"
        else:
            source = f"VALUES ({values})"
        conflict = ", ".join(self._column(name) for name in self.conflict)
        changes = [
            *(f"{self._column(c)} = t.{self._column(c)} + excluded.{self._column(c)}"
              for c in self.add),
            *(f"{self._column(c)} = excluded.{self._column(c)}" for c in self.replace),
        ]  # fmt: skip
        action = f"DO UPDATE SET {', '.join(changes)}" if changes else "DO NOTHING"
        if changes and self.only_if_greater:
            column = self._column(self.only_if_greater)
            action += f" WHERE t.{column} < excluded.{column}"
        return f"INSERT INTO {table} AS t ({columns}) {source} ON CONFLICT ({conflict}) {action}"


def upsert(
    model: type[Model],
    *,
    conflict: dict[str, object],
    add: dict[str, int] | None = None,
    replace: dict[str, object] | None = None,
    insert_only: dict[str, object] | None = None,
) -> int:
    """One row of `model`, written with an `Upsert` in one statement: created with every
    value given, or, when the `conflict` row exists, `add` added and `replace` overwritten
    (with neither, left as it is). Race-free on every database; returns the row count."""
    values = {**conflict, **(insert_only or {}), **(add or {}), **(replace or {})}
    fields = {f.attname: f for f in model._meta.concrete_fields}
    for name, model_field in fields.items():  # a new row gets the model's defaults
        if name not in values and model_field.has_default():
            values[name] = model_field.get_default()
    declared = Upsert(
        "row",
        model,
        conflict=tuple(conflict),
        values={name: name for name in values},
        add=tuple(add or ()),
        replace=tuple(replace or ()),
    )
    prepared = {
        name: fields[name].get_db_prep_save(value, connection) for name, value in values.items()
    }
    with connection.cursor() as cursor:
        cursor.execute(declared.sql(), prepared)
        return int(cursor.rowcount)
