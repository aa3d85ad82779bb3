"""Daily reconciliation: the ledger vs the provider's report vs our own records, for one provider and one day.

The modules, by what they do (each states its part of the rules):
- `sources`: the provider's report of the day (`PROVIDER_SOURCES`) and our records that say money moved
  (`RECORD_SOURCES`; how to add a source);
- `staging`: streaming the provider report and our records into staging tables, with flat memory;
- `matching`: the ledger side, the one SQL comparison of the three sides, which issue kind each reference
  gets, and how a rerun refreshes, reopens and closes issues;
- `running`: `reconciliation_run` for one provider's day (used by the admin, the nightly task and the
  `reconcile_daily` command), its lock, failure handling and alert;
- `issues`: staff actions on issues (assign, resolve, reopen).

Import from `monitoring.reconciliation`: every name other modules use is re-exported here.
"""

from monitoring.reconciliation.issues import RESOLVE_PERMISSION, issue_assign, issue_reopen, issue_resolve
from monitoring.reconciliation.matching import COMPARE_SQL, ISSUE_BATCH, Kind
from monitoring.reconciliation.running import RUN_PERMISSION, reconciliation_run
from monitoring.reconciliation.sources import (
    ESCROW_TRANSFERRED,
    PAID_ITEM_STATUSES,
    PROVIDER_SOURCES,
    PURCHASE_CAPTURED,
    RECORD_SOURCES,
    ProviderPages,
    ProviderSource,
    Record,
    RecordSource,
    day_bounds,
    escrow_deal_records,
    payment_records,
    payout_transfer_records,
    purchase_records,
    purchase_refund_records,
    refund_records,
    stripe_pages,
)

__all__ = [
    "COMPARE_SQL",
    "ESCROW_TRANSFERRED",
    "ISSUE_BATCH",
    "PAID_ITEM_STATUSES",
    "PROVIDER_SOURCES",
    "PURCHASE_CAPTURED",
    "RECORD_SOURCES",
    "RESOLVE_PERMISSION",
    "RUN_PERMISSION",
    "Kind",
    "ProviderPages",
    "ProviderSource",
    "Record",
    "RecordSource",
    "day_bounds",
    "escrow_deal_records",
    "issue_assign",
    "issue_reopen",
    "issue_resolve",
    "payment_records",
    "payout_transfer_records",
    "purchase_records",
    "purchase_refund_records",
    "reconciliation_run",
    "refund_records",
    "stripe_pages",
]
