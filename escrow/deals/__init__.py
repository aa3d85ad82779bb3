"""Escrow deals through Stripe Connect (separate charges and transfers). Every write to a deal is in this
package, one module per lifecycle step:

  create.py      open a deal and hold the buyer's money (escrow.hold)
  release.py     release: capture (escrow.capture), split, then the transfer; maker-checker approval
  transfers.py   the seller's transfer (escrow.transfer) and its retries after a known decline
  cancel.py      cancel before release: void (escrow.void) or refund (escrow.refund)
  timeouts.py    the timeout job and its per-run breaker; authorizations about to lapse
  recorders.py   what Stripe did (protocol hooks and webhooks): status moves and ledger postings
  postings.py    the ledger legs of each step (the postings table is there)
  operations.py  the five operations on the money-moving protocol: call, look-up, outcome hooks
  common.py      reading and locking a deal, refusals, keys, errors

Invariants kept:
- money moves at Stripe only through the protocol (providers.protocol, DESIGN.md section 5): the deal's
  status change and the step's intent (a MoneyMovement, key `escrow:{id}:<step>`) commit together before
  any call; the outcome is recorded once, by the operation's hook, with the movement locked. Unknown is
  sticky: the deal stays in its in-progress status (created, releasing, released, refunding) and the
  protocol's sweeper looks the object up on its one schedule, then raises its one staff alert; a refusal of
  a re-send never puts a deal back. Only a step KNOWN not done returns a deal to `held` (capture, void,
  refund) or `transfer_failed`; the next try is a new attempt under a new key (`escrow:{id}:<step>:<n>`);
- statuses move only along `EscrowDeal.TRANSITIONS`, each move one conditional update
  (`EscrowDeal.status_move`), so API, webhooks and jobs can race: one wins, the others get 409
  `InvalidStateTransition`, or 423 `ResourceLocked` while the winner holds the deal's processing lock
  (`escrow-deal:{id}`) around its step and first send;
- a deal is released or refunded, never both: both start from `held` (or `awaiting_approval`) and only
  one conditional update can leave it;
- every ledger posting is keyed by the deal (`escrow:{id}:<step>`), so a replayed outcome posts once;
- a spend-limit reservation `escrow:{id}` is taken in the same transaction as the deal row and given back
  only when no money moved (hold declined, authorization voided or lapsed).
Who may act: the buyer releases (or staff with escrow.release_escrowdeal); the seller cancels, i.e. refunds
the buyer (or staff with escrow.refund_escrowdeal): the buyer alone cannot take back promised money.
"""

from escrow.deals.cancel import deal_cancel
from escrow.deals.common import DealMakerCheckerViolation, deal_get, money_of
from escrow.deals.create import deal_create, hold_mode_for
from escrow.deals.operations import register_deal_operations
from escrow.deals.postings import ledger_accounts
from escrow.deals.recorders import (
    deal_authorization_lapsed,
    deal_capture_recorded,
    deal_hold_failed,
    deal_hold_succeeded,
    deal_refunded,
    deal_transfer_failed_after,
    deal_transfer_reversed,
    deal_transfer_succeeded,
    deal_voided,
    seller_account_updated,
    transfer_retry_delay,
)
from escrow.deals.release import deal_release, deal_release_approve
from escrow.deals.timeouts import TimeoutRun, deal_authorizations_flag_expiring, deal_timeout_apply, deal_timeouts_run
from escrow.deals.transfers import deal_transfer_retry, deal_transfers_retry_due

__all__ = [
    "DealMakerCheckerViolation",
    "TimeoutRun",
    "deal_authorization_lapsed",
    "deal_authorizations_flag_expiring",
    "deal_cancel",
    "deal_capture_recorded",
    "deal_create",
    "deal_get",
    "deal_hold_failed",
    "deal_hold_succeeded",
    "deal_refunded",
    "deal_release",
    "deal_release_approve",
    "deal_timeout_apply",
    "deal_timeouts_run",
    "deal_transfer_failed_after",
    "deal_transfer_retry",
    "deal_transfer_reversed",
    "deal_transfer_succeeded",
    "deal_transfers_retry_due",
    "deal_voided",
    "hold_mode_for",
    "ledger_accounts",
    "money_of",
    "register_deal_operations",
    "seller_account_updated",
    "transfer_retry_delay",
]
