"""Reads of payouts for the admin, the API and the dashboard."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import Count, Sum

from payouts.models import PayoutItem


@dataclass(frozen=True)
class StatusProgress:
    """How many of a batch's items are in one status, and their amount in the batch currency."""

    status: str
    count: int
    amount_minor: int


def progress_by_batch(batch_ids: Iterable[int]) -> dict[int, list[StatusProgress]]:
    """Counts and amounts by item status for each batch, in the order of PayoutItem.Status; one query."""
    rows = (
        PayoutItem.objects.filter(batch_id__in=list(batch_ids))
        .order_by()
        .values("batch_id", "status")
        .annotate(count=Count("id"), amount_minor=Sum("amount_minor"))
    )
    order = {status: n for n, status in enumerate(PayoutItem.Status.values)}
    progress: dict[int, list[StatusProgress]] = defaultdict(list)
    for row in sorted(rows, key=lambda row: (row["batch_id"], order[row["status"]])):
        progress[row["batch_id"]].append(StatusProgress(row["status"], row["count"], row["amount_minor"]))
    return dict(progress)
