"""Purchases of services: authorize, capture on delivery, void or refund automatically. One module per step:

- `create`: the catalogue, buying (the purchase, its spend reservation and the authorization's intent), and
  the authorization's outcome;
- `outcomes`: delivery, cancel and timeout, deciding the outcome once and recording the money step it calls for;
- `capture_void`: the capture and the void, their outcomes and the capture's ledger posting;
- `refunds`: refunds through the shared refund component, their outcomes and ledger posting;
- `reconciliation`: staff's sync, money still owed back, `reconcile_refunds`;
- `webhooks`: Stripe events, recorded without calling Stripe;
- `operations`: the four protocol operations (providers.protocol) and their look-ups.

Invariants:
- intent first (DESIGN.md section 5): every Stripe call is a money movement of the one protocol, recorded with
  a key derived from our rows (`purchase:{id}:authorize`, `purchase:{id}:capture`, `purchase:{id}:void`,
  `purchase:{id}:refund:{refund id}`) in the same transaction as the domain change that calls for it, and sent
  after commit; a new key (`...:2`) only for a new attempt after a KNOWN decline;
- `outcome` (delivered, failed, cancelled, timed out) is decided once on the locked row; `status` only moves
  along `Purchase.TRANSITIONS`, with `Purchase.status_move`, so delivery, cancel, the timeout sweeper, the
  protocol's sweeper and webhooks race with exactly one winner;
- unknown is sticky: `*_unknown` statuses mirror a movement whose outcome is unknown; only a success or an
  authoritative look-up resolves it, on the protocol's one schedule (`movements_sweep`), then a staff alert;
- a purchase whose outcome is failed, cancelled or timed out ends with its money given back: the void or the
  refund of the rest is recorded with the decision (or with the outcome that makes it possible);
  `reconcile_refunds` finds any that were left owing (e.g. rows from before this protocol);
- succeeded plus in-flight refunds never exceed what was captured (the refund component reserves on the
  locked purchase); a declined refund gives its reservation back; a pending refund is `waiting`;
- spend limits: the authorized amount is counted in the block that creates the row, and released when the
  authorization is declined or the hold voided.

Ledger postings (nothing is posted until money moves; a void moves none):
- capture, key `purchase:{id}:capture:settle`: debit `provider:stripe:clearing:{cur}`,
  credit `platform:revenue:services:{cur}`; and Stripe's processing fee by our fee rules (Stripe keeps
  it; it is not returned on a refund): debit `platform:provider-fees:stripe:{cur}`, credit clearing;
  metadata provider_reference = the PaymentIntent id;
- refund, key `purchase:{id}:refund:{refund id}:settle`: debit `platform:revenue:services:{cur}`,
  credit `provider:stripe:clearing:{cur}`, metadata provider_reference = the refund id (`re_...`).
"""

from escrow.purchases.common import DELIVER_PERMISSION, REFUND_PERMISSION, SYNC_PERMISSION
from escrow.purchases.create import purchase_create, purchase_request_hash, service_price
from escrow.purchases.operations import register_purchase_operations
from escrow.purchases.outcomes import (
    purchase_cancel,
    purchase_report_delivery,
    purchase_time_out,
    purchases_time_out_due,
)
from escrow.purchases.reconciliation import (
    OwedPurchase,
    RefundsReconciliation,
    money_owed_back,
    purchase_sync,
    purchases_owing_money_back,
    refunds_reconcile,
)
from escrow.purchases.refunds import PURCHASE_REFUNDS, purchase_refund
from escrow.purchases.webhooks import purchase_stripe_event, register_purchase_handlers

__all__ = [
    "DELIVER_PERMISSION",
    "PURCHASE_REFUNDS",
    "REFUND_PERMISSION",
    "SYNC_PERMISSION",
    "OwedPurchase",
    "RefundsReconciliation",
    "money_owed_back",
    "purchase_cancel",
    "purchase_create",
    "purchase_refund",
    "purchase_report_delivery",
    "purchase_request_hash",
    "purchase_stripe_event",
    "purchase_sync",
    "purchase_time_out",
    "purchases_owing_money_back",
    "purchases_time_out_due",
    "refunds_reconcile",
    "register_purchase_handlers",
    "register_purchase_operations",
    "service_price",
]
