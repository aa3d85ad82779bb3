"""The dashboard's failures to retry at scale: every batch shown gets its sample of items, whatever the size of
the batches before it."""

from __future__ import annotations

import pytest

from monitoring import dashboard
from tests.dashboard import seed

pytestmark = pytest.mark.django_db


def test_each_batch_shows_its_own_first_items_however_many_an_older_batch_has():
    crowded = seed.batch_with_items(*["FAILED"] * (dashboard.ROWS + 1), status="completed")
    newer = seed.batch_with_items("SUCCESS", "RETURNED", "FAILED", status="completed")

    found = dashboard.payout_failures(can=lambda permission: True, items_per_batch=1)

    shown = [(f.batch.pk, f.count, len(f.items)) for f in found]
    assert shown == [(newer.pk, 2, 1), (crowded.pk, dashboard.ROWS + 1, 1)]
    assert found[0].items[0].item == newer.items.filter(status="RETURNED").get()  # its first unpaid item
    assert found[1].items[0].item == crowded.items.order_by("pk").first()
