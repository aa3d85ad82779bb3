"""Admin list filters for tables of millions of rows.

Django's AllValuesFieldListFilter offers the values a column holds with `SELECT DISTINCT column`, a scan of the
whole table on every changelist page. `IndexedValuesFilter` finds the same values by walking an index whose
first column is that one, one probe per distinct value (a "loose index scan"), so a column of a few providers,
currencies or kinds costs a few index lookups however many rows hold them.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db import connections, models, router

MAX_VALUES = 200  # a filter offering more values than this is no use as a list of links


def indexed_distinct_values(model: type[models.Model], field_name: str, *, using: str, limit: int) -> list[Any]:
    """The distinct non-null values of a column, smallest first, read from an index that starts with it."""
    connection = connections[using]
    quote = connection.ops.quote_name
    table, column = quote(model._meta.db_table), quote(model._meta.get_field(field_name).column)
    statement = f"""
        WITH RECURSIVE found(value) AS (
            (SELECT {column} FROM {table} WHERE {column} IS NOT NULL ORDER BY {column} LIMIT 1)
            UNION ALL
            SELECT (SELECT {column} FROM {table} WHERE {column} > found.value ORDER BY {column} LIMIT 1)
              FROM found WHERE found.value IS NOT NULL
        )
        SELECT value FROM found WHERE value IS NOT NULL LIMIT %s
    """  # names quoted from the model's own metadata
    with connection.cursor() as cursor:
        cursor.execute(statement, [limit])
        return [row[0] for row in cursor.fetchall()]


class IndexedValuesFilter(admin.AllValuesFieldListFilter):
    """AllValuesFieldListFilter for a column of the changelist's own table that has an index starting with it.

    On PostgreSQL the values come from `indexed_distinct_values`; elsewhere Django's DISTINCT query stays.
    The values are those of the whole table, not narrowed by the admin's queryset.
    """

    def __init__(self, field: Any, request: Any, params: Any, model: Any, model_admin: Any, field_path: str) -> None:
        super().__init__(field, request, params, model, model_admin, field_path)
        using = router.db_for_read(model)
        if field_path == field.name and connections[using].vendor == "postgresql":
            self.lookup_choices = indexed_distinct_values(model, field.name, using=using, limit=MAX_VALUES)
