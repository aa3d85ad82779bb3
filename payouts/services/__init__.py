"""Paying a cycle's winners: every write, by lifecycle step.

- prepare.py: identifiers, funding, batching the unpaid winners and reserving their money (ledger holds);
- funding.py: staff funding a cycle's prize pool, once per request, audited;
- approve.py: maker-checker;
- execute.py: the intent (`submitting` plus the money movements) and the one send through the protocol;
- operations.py: the protocol recipes (payout.paypal_batch, payout.stripe_transfer, payout.cancel_unclaimed);
- settle.py: items move forward with the ledger, a page of item updates in one transaction;
- track.py: sent batches are followed until every item is final;
- retry.py: retry batches for the known unpaid, and cancelling unclaimed items (staff and the beat job).

Each module's docstring states the invariants it keeps and the ledger postings it makes.
"""

from payouts.services.approve import MakerCheckerViolation, batch_approve
from payouts.services.execute import batch_execute, cycle_disburse
from payouts.services.funding import PrizePoolFunding, cycle_funding_key_prefix, prize_pool_fund
from payouts.services.operations import register_payout_operations, transfer_key
from payouts.services.prepare import (
    batch_checksum,
    batch_get,
    cycle_prepare,
    prize_expense,
    provider_clearing,
    selection_problems,
    sender_batch_id,
    sender_item_id,
    winner_selections_import,
    winnings_fund,
    winnings_payable,
)
from payouts.services.retry import batch_retry_failed, item_cancel_unclaimed, items_cancel_unclaimed_due
from payouts.services.settle import ItemUpdate, item_apply_status, items_apply_statuses
from payouts.services.track import (
    batch_movements_sync,
    batch_progress,
    batch_sync,
    batches_followed,
    batches_sync_due,
)

__all__ = [
    "ItemUpdate",
    "MakerCheckerViolation",
    "PrizePoolFunding",
    "batch_approve",
    "batch_checksum",
    "batch_execute",
    "batch_get",
    "batch_movements_sync",
    "batch_progress",
    "batch_retry_failed",
    "batch_sync",
    "batches_followed",
    "batches_sync_due",
    "cycle_disburse",
    "cycle_funding_key_prefix",
    "cycle_prepare",
    "item_apply_status",
    "item_cancel_unclaimed",
    "items_apply_statuses",
    "items_cancel_unclaimed_due",
    "prize_expense",
    "prize_pool_fund",
    "provider_clearing",
    "register_payout_operations",
    "selection_problems",
    "sender_batch_id",
    "sender_item_id",
    "transfer_key",
    "winner_selections_import",
    "winnings_fund",
    "winnings_payable",
]
