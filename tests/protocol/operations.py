"""Every money-moving operation of the protocol, one row each: the fault matrix runs each against every
fault sequence (tests.protocol.faults).

A row names the operation, the sandbox operation its send hits (the glob a fault is injected on), how to
start it through the domain's public services (`prepare`: everything before; `trigger`: the one call that
sends it), how to count its money movements at the sandbox, and what the ledger must show for it; and which
webhooks the provider sends about it (none: the webhook sequences cannot apply), and whether while in flight.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from providers.protocol.operations import operations_registered
from tests.protocol import rows_escrow as escrow
from tests.protocol import rows_payments as payments
from tests.protocol import rows_payouts as payouts
from tests.protocol.harness import PROVIDER_ROUNDS, Case, CountMovements, ExpectPostings, commits

Step = Callable[[Case], None]


@dataclass(frozen=True)
class OperationRow:
    operation: str
    provider: str  # ours: its breaker and key window
    sandbox_provider: str  # the sandbox module answering it (its faults, keys and webhooks)
    send_glob: str
    prepare: Step
    trigger: Step
    sandbox_movements: CountMovements
    ledger_expectation: ExpectPostings
    webhook_events: tuple[str, ...] = ()  # the provider's webhooks about this operation's object
    webhooks_in_flight: bool = True  # sent while the call is in flight (else only later, as it processes it)
    provider_rounds: int = 1  # sweeper rounds the provider needs to finish its own asynchronous work

    def start(self, case: Case, armed: Callable[[], AbstractContextManager[object]] = nullcontext) -> None:
        """Build the subject, then make the call that sends the operation with the faults armed."""
        with commits():
            self.prepare(case)
        with armed(), commits():
            self.trigger(case)

    def missing(self) -> str:
        """Why the row cannot run yet ('' when its operation is registered with the protocol)."""
        if self.operation in operations_registered():
            return ""
        return f"{self.operation} is not registered with the protocol (domain not ported yet)"

    def __str__(self) -> str:
        return self.operation


PI_CAPTURABLE = ("payment_intent.amount_capturable_updated",)
PI_SUCCEEDED = ("payment_intent.succeeded",)
PI_CANCELED = ("payment_intent.canceled",)
REFUNDED = ("charge.refunded", "refund.created")
TRANSFERRED = ("transfer.created",)
PAYPAL_BATCH = ("PAYMENT.PAYOUTSBATCH.PROCESSING", "PAYMENT.PAYOUTSBATCH.SUCCESS", "PAYMENT.PAYOUTS-ITEM.SUCCEEDED")

OPERATIONS: tuple[OperationRow, ...] = (
    # operation, ours, sandbox, send glob, prepare, trigger, sandbox movements, ledger, webhooks in flight
    OperationRow("escrow.hold", "stripe", "stripe", "stripe.payment_intents.create", escrow.prepare_deal,
                 escrow.trigger_hold, escrow.moved_hold, escrow.posted_hold, PI_CAPTURABLE),
    OperationRow("escrow.capture", "stripe", "stripe", "stripe.payment_intents.capture",
                 escrow.prepare_held_authorized, escrow.trigger_release, escrow.moved_capture, escrow.posted_capture,
                 PI_SUCCEEDED),
    OperationRow("escrow.void", "stripe", "stripe", "stripe.payment_intents.cancel", escrow.prepare_held_authorized,
                 escrow.trigger_cancel, escrow.moved_void, escrow.posted_void, PI_CANCELED),
    OperationRow("escrow.refund", "stripe", "stripe", "stripe.refunds.create", escrow.prepare_held_captured,
                 escrow.trigger_cancel, escrow.moved_refund, escrow.posted_refund, REFUNDED),
    OperationRow("escrow.transfer", "stripe", "stripe", "stripe.transfers.create", escrow.prepare_held_authorized,
                 escrow.trigger_release, escrow.moved_transfer, escrow.posted_transfer, TRANSFERRED),
    OperationRow("purchase.authorize", "stripe", "stripe", "stripe.payment_intents.create", escrow.prepare_purchase,
                 escrow.trigger_authorize, escrow.moved_authorize, escrow.posted_nothing, PI_CAPTURABLE),
    OperationRow("purchase.capture", "stripe", "stripe", "stripe.payment_intents.capture", escrow.prepare_authorized,
                 escrow.trigger_deliver, escrow.moved_purchase_capture, escrow.posted_purchase_capture,
                 PI_SUCCEEDED),
    OperationRow("purchase.void", "stripe", "stripe", "stripe.payment_intents.cancel", escrow.prepare_authorized,
                 escrow.trigger_fail, escrow.moved_purchase_void, escrow.posted_nothing, PI_CANCELED),
    OperationRow("purchase.refund", "stripe", "stripe", "stripe.refunds.create", escrow.prepare_captured,
                 escrow.trigger_purchase_refund, escrow.moved_purchase_refund, escrow.posted_purchase_refund,
                 REFUNDED),
    OperationRow("payout.paypal_batch", "paypal", "paypal", "paypal.payouts.create", payouts.prepare_paypal,
                 payouts.trigger_execute, payouts.moved_paypal, payouts.posted_paypal, PAYPAL_BATCH, False,
                 PROVIDER_ROUNDS),
    OperationRow("payout.stripe_transfer", "stripe", "stripe", "stripe.transfers.create", payouts.prepare_stripe,
                 payouts.trigger_execute, payouts.moved_stripe, payouts.posted_stripe, TRANSFERRED),
    OperationRow("payout.cancel_unclaimed", "paypal", "paypal", "paypal.payouts_item.cancel",
                 payouts.prepare_unclaimed, payouts.trigger_cancel_unclaimed, payouts.moved_cancel,
                 payouts.posted_cancel, ("PAYMENT.PAYOUTS-ITEM.CANCELED",)),
    OperationRow("payment.start", "stripe", "stripe", "stripe.payment_intents.create", payments.prepare_start,
                 payments.trigger_start, payments.moved_start, payments.posted_start, PI_SUCCEEDED),
    OperationRow("payment.charge", "gcash", "paymongo", "paymongo.payments.create", payments.prepare_charge,
                 payments.trigger_charge, payments.moved_charge, payments.posted_charge, ("payment.paid",)),
    OperationRow("payment.refund", "stripe", "stripe", "stripe.refunds.create", payments.prepare_refund,
                 payments.trigger_refund, payments.moved_refund, payments.posted_refund, REFUNDED),
)  # fmt: skip
