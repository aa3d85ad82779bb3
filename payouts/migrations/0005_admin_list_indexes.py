"""Indexes for the admin's list of payout items at millions of rows.

- status, id: a status filter in the list's own order (oldest first), however rare the status;
- updated_at: the list sorted by last change;
- sender_item_id and UPPER(receiver): search by our item id (exact) and by the receiver (any case), which the
  admin's search ORs with provider_item_id (already indexed).
And for the status dashboard's "failures to retry" (monitoring.dashboard.payout_failures):
- batch_id, id over the unpaid items only: each batch's unpaid items, first ones first, without reading the
  batch's paid ones; with selection_id and amount_minor in the index, their count and sum (less those paid
  again) read no table rows. Its condition is PayoutItem.UNPAID_FINAL; a query names the same statuses to use it.
Built CONCURRENTLY, so payouts go on while they build.
"""

from django.db import migrations

from core.migrations_util import RunSQLOnPostgres

INDEXES = {
    "payouts_item_status_id": "payouts_payoutitem (status, id)",
    "payouts_item_updated_at": "payouts_payoutitem (updated_at)",
    "payouts_item_sender_item_id": "payouts_payoutitem (sender_item_id)",
    "payouts_item_receiver_upper": "payouts_payoutitem (UPPER(receiver))",
    "payouts_item_unpaid_by_batch": "payouts_payoutitem (batch_id, id) INCLUDE (selection_id, amount_minor)"
    " WHERE status IN ('FAILED', 'RETURNED', 'BLOCKED', 'DENIED', 'CANCELED')",
}


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY runs outside a transaction
    dependencies = [("payouts", "0004_payoutcycle_fund_permission")]
    operations = [
        RunSQLOnPostgres(
            [f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {target}" for name, target in INDEXES.items()],
            [f"DROP INDEX CONCURRENTLY IF EXISTS {name}" for name in INDEXES],
        )
    ]
