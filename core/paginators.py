"""Paging for admin changelists over tables of millions of rows: no page ever counts a whole big table.

Django's Paginator runs `SELECT COUNT(*)` over the filtered list on every page. PostgreSQL keeps no row count,
so over a million ledger entries, payout items or payments that is a full scan (hundreds of milliseconds) to
print one number under the table. `EstimatedCountPaginator` counts exactly while a list is small, stopping at
EXACT_COUNT_LIMIT rows, and past that takes the planner's estimate of the list's rows (from the table's
`reltuples` and the filter's statistics), which is what the page links need.

`LargeTableAdminMixin` gives a ModelAdmin this paginator with the other settings such a changelist needs.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib.admin import ShowFacets
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.utils.functional import cached_property

EXACT_COUNT_LIMIT = 10_000  # rows counted exactly; 100 pages of the admin's 100 rows


def planner_row_estimate(queryset: QuerySet[Any]) -> int | None:
    """PostgreSQL's estimate of the rows `queryset` returns (EXPLAIN, planning only); None elsewhere."""
    if connections[queryset.db].vendor != "postgresql":
        return None
    plan = json.loads(queryset.order_by().values("pk").explain(format="json"))
    return int(plan[0]["Plan"]["Plan Rows"])


def capped_count(queryset: QuerySet[Any], cap: int) -> int:
    """The rows of `queryset`, counted no further than cap + 1 (a LIMIT inside the count stops the scan)."""
    return queryset.order_by().values("pk")[: cap + 1].count()


class EstimatedCountPaginator(Paginator):
    """A Paginator whose count is exact up to `exact_count_limit` rows and the planner's estimate past it.

    `count_is_estimate` says which one a page shows. Every page is still read with LIMIT and OFFSET, so an
    estimate off the real count never shows wrong rows: too high, the last page links are empty; too low, the
    last rows are reached by sorting the other way.
    """

    exact_count_limit = EXACT_COUNT_LIMIT

    _estimated = False

    @cached_property
    def count(self) -> int:
        rows = self.object_list
        if not isinstance(rows, QuerySet):
            return super().count
        counted = capped_count(rows, self.exact_count_limit)
        if counted <= self.exact_count_limit:
            return counted
        estimate = planner_row_estimate(rows)
        if estimate is None:
            return rows.count()
        self._estimated = True
        return max(estimate, counted)

    @property
    def count_is_estimate(self) -> bool:
        """Whether `count` is the planner's estimate (counting first if nothing has yet)."""
        _ = self.count
        return self._estimated


class LargeTableAdminMixin:
    """For the ModelAdmin of a table of millions of rows (put before the ModelAdmin base): no page counts it whole.

    Pair it with list filters and an ordering that have indexes, and search fields that match exactly.
    """

    paginator = EstimatedCountPaginator
    show_full_result_count = False  # the admin's second count, of the unfiltered table
    show_facets = ShowFacets.NEVER  # facet counts would count the whole table once per filter value
