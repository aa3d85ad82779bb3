"""The five money-moving operations of an escrow deal, on the one protocol (providers.protocol). Subject: the
EscrowDeal id. Each says how to call Stripe with the movement's key, how to look the object up without
moving money, and what each outcome records (escrow.deals.recorders, which post the ledger legs).

  operation        call (key: escrow:{id}:<step>[:n])  look-up (authoritative, sends nothing)
  escrow.hold      create PaymentIntent (confirm)      find_payment_intent by our key (Search on metadata)
  escrow.capture   capture the PaymentIntent           retrieve it: succeeded = done, requires_capture =
                                                       Absent (never captured), canceled = found failed
  escrow.void      cancel the PaymentIntent            retrieve it: canceled = done, requires_capture =
                                                       Absent, succeeded = found failed (it was captured)
  escrow.refund    refund the PaymentIntent            find_refund by PaymentIntent and our key
  escrow.transfer  Connect transfer (transfer_group)   find_transfer by transfer_group and our key

Every operation has a look-up, so a re-send never depends on Stripe still remembering the key: after a send
whose outcome is unknown (or a worker that died), the protocol looks the object up first. It sends again
(the same request, the same key) only when the look-up says Stripe has no such object; when the look-up
cannot answer, nothing is sent and the sweeper looks again on its schedule. So past Stripe's 24 h key window
a re-send is only ever made for an object Stripe says does not exist. The hold's look-up uses Search, which
lags: for the first hour after the first send an empty search is an unknown, not an absence.
"""

from __future__ import annotations

from escrow.deals.cancel import refund_intent_record
from escrow.deals.common import CAPTURE, HOLD, REFUND, TRANSFER, VOID, Status, deal_get
from escrow.deals.recorders import (
    deal_capture_recorded,
    deal_hold_failed,
    deal_hold_succeeded,
    deal_hold_waiting,
    deal_outcome_unknown,
    deal_refund_waiting,
    deal_refunded,
    deal_step_declined,
    deal_transfer_declined,
    deal_transfer_succeeded,
    deal_voided,
)
from escrow.deals.release import release_split
from escrow.models import EscrowDeal
from providers.base import Declined, LookupResult, Pending, ProviderResult, Succeeded
from providers.models import MoneyMovement
from providers.protocol import FollowUps, Operation, operation_register
from providers.stripe.client import stripe_client
from providers.stripe.intents import CAPTURE as CAPTURE_STEP
from providers.stripe.intents import VOID as VOID_STEP
from providers.stripe.intents import IntentStep, as_hold, find_hold, intent_status, step_answer, step_state

OUR_CANCELLATION = "abandoned"  # what our void sends; Stripe's own lapse says "automatic"


class DealOperation(Operation):
    provider = "stripe"

    @staticmethod
    def deal(movement: MoneyMovement) -> EscrowDeal:
        return deal_get(deal_id=movement.subject_id)

    def on_unknown(self, movement: MoneyMovement, reason: str) -> None:
        deal_outcome_unknown(deal_id=movement.subject_id, reason=reason)

    def escalation_action(self, movement: MoneyMovement) -> str:
        return (
            f"Find escrow deal {movement.subject_id}'s objects in Stripe (transfer group escrow-"
            f"{movement.subject_id}, metadata idempotency_key {movement.key}), settle them by hand, then use "
            "'Sync now' on the money movement."
        )


# --- hold ------------------------------------------------------------------------------------------------


class DealHold(DealOperation):
    name = method = HOLD

    def send(self, movement: MoneyMovement) -> ProviderResult:
        deal = self.deal(movement)
        capture = "manual" if deal.hold_mode == EscrowDeal.HoldMode.AUTHORIZATION else "automatic"
        result = stripe_client().create_payment_intent(
            amount_minor=deal.amount_minor, currency=deal.currency, payment_method=deal.payment_method,
            idempotency_key=movement.key, capture=capture, metadata={"escrow_deal": str(deal.pk)},
            transfer_group=deal.transfer_group,
        )  # fmt: skip
        return as_hold(result)  # type: ignore[return-value]

    def look_up(self, movement: MoneyMovement) -> LookupResult:
        return find_hold(idempotency_key=movement.key, first_attempt_at=movement.first_sent_at)

    def on_succeeded(self, movement: MoneyMovement, result: Succeeded) -> FollowUps:
        captured = result.status == "succeeded"
        deal_hold_succeeded(deal_id=movement.subject_id, payment_intent_id=result.reference, captured=captured)
        return None

    def on_declined(self, movement: MoneyMovement, result: Declined) -> FollowUps:
        deal_hold_failed(deal_id=movement.subject_id, reason=result.reason)
        return None

    def on_waiting(self, movement: MoneyMovement, result: Pending) -> FollowUps:
        deal_hold_waiting(deal_id=movement.subject_id, payment_intent_id=result.reference)
        return None


class _IntentOperation(DealOperation):
    """Capture or void: a refusal of the call is checked against the PaymentIntent's state, which says
    whether it was done (by us or anyone) or can no longer be (providers.stripe.intents)."""

    step: IntentStep

    def call(self, deal: EscrowDeal, key: str) -> ProviderResult:
        raise NotImplementedError

    def read(self, deal: EscrowDeal) -> ProviderResult:
        return stripe_client().retrieve_payment_intent(payment_intent_id=deal.payment_intent_id)

    def send(self, movement: MoneyMovement) -> ProviderResult:
        deal = self.deal(movement)
        return step_answer(self.call(deal, movement.key), self.step, lambda: self.read(deal))

    def look_up(self, movement: MoneyMovement) -> LookupResult:
        return step_state(self.read(self.deal(movement)), self.step)


class DealCapture(_IntentOperation):
    name = method = CAPTURE
    step = CAPTURE_STEP  # canceled: the authorization is gone, nothing can be captured

    def call(self, deal: EscrowDeal, key: str) -> ProviderResult:
        return stripe_client().capture(payment_intent_id=deal.payment_intent_id, idempotency_key=key)

    def on_succeeded(self, movement: MoneyMovement, result: Succeeded) -> FollowUps:
        """Captured: posted; a deal still releasing is split and its transfer's intent recorded (sent next)."""
        deal_capture_recorded(deal_id=movement.subject_id, payment_intent_id=result.reference)
        deal = deal_get(deal_id=movement.subject_id, lock=True)
        if deal.status != Status.RELEASING:
            return None
        transfer = release_split(deal)
        return [transfer] if transfer is not None else None

    def on_declined(self, movement: MoneyMovement, result: Declined) -> FollowUps:
        if intent_status(result) == "canceled":  # the authorization lapsed (or was voided) at Stripe
            deal_voided(deal_id=movement.subject_id, target=Status.EXPIRED)
        else:
            deal_step_declined(deal_id=movement.subject_id, source=Status.RELEASING, step="capture", result=result)
        return None


class DealVoid(_IntentOperation):
    name = method = VOID
    step = VOID_STEP  # succeeded: the money was captured, nothing can be voided

    def call(self, deal: EscrowDeal, key: str) -> ProviderResult:
        return stripe_client().cancel(payment_intent_id=deal.payment_intent_id, idempotency_key=key,
                                      reason=OUR_CANCELLATION)  # fmt: skip

    def on_succeeded(self, movement: MoneyMovement, result: Succeeded) -> FollowUps:
        ours = result.raw.get("cancellation_reason") in (OUR_CANCELLATION, None)
        deal_voided(deal_id=movement.subject_id, target=Status.REFUNDED if ours else Status.EXPIRED)
        return None

    def on_declined(self, movement: MoneyMovement, result: Declined) -> FollowUps:
        if intent_status(result) != "succeeded":
            deal_step_declined(deal_id=movement.subject_id, source=Status.REFUNDING, step="void", result=result)
            return None
        # captured after all (by hand at Stripe, say): record the capture, and refund it instead
        deal = deal_get(deal_id=movement.subject_id, lock=True)
        deal_capture_recorded(deal_id=deal.pk, payment_intent_id=deal.payment_intent_id)
        if deal.status != Status.REFUNDING:
            return None
        return [refund_intent_record(deal)]


# --- refund and transfer: found by our key ---------------------------------------------------------------------


class DealRefund(DealOperation):
    name = method = REFUND

    def send(self, movement: MoneyMovement) -> ProviderResult:
        deal = self.deal(movement)
        return stripe_client().refund(
            payment_intent_id=deal.payment_intent_id, idempotency_key=movement.key,
            amount_minor=movement.amount_minor, metadata={"escrow_deal": str(deal.pk)},
        )  # fmt: skip

    def look_up(self, movement: MoneyMovement) -> LookupResult:
        deal = self.deal(movement)
        # a refund found failed or canceled is `found_failed`: known not refunded
        return stripe_client().find_refund(payment_intent_id=deal.payment_intent_id, idempotency_key=movement.key)

    def on_succeeded(self, movement: MoneyMovement, result: Succeeded) -> FollowUps:
        deal_refunded(deal_id=movement.subject_id, refund_id=result.reference)
        return None

    def on_declined(self, movement: MoneyMovement, result: Declined) -> FollowUps:
        deal_step_declined(deal_id=movement.subject_id, source=Status.REFUNDING, step="refund", result=result)
        return None

    def on_waiting(self, movement: MoneyMovement, result: Pending) -> FollowUps:
        deal_refund_waiting(deal_id=movement.subject_id, refund_id=result.reference)
        return None


class DealTransfer(DealOperation):
    name = method = TRANSFER

    def send(self, movement: MoneyMovement) -> ProviderResult:
        deal = self.deal(movement)
        return stripe_client().create_transfer(
            amount_minor=movement.amount_minor, currency=deal.currency,
            destination=deal.seller_account.stripe_account_id, idempotency_key=movement.key,
            transfer_group=deal.transfer_group, metadata={"escrow_deal": str(deal.pk)},
        )  # fmt: skip

    def look_up(self, movement: MoneyMovement) -> LookupResult:
        deal = self.deal(movement)
        return stripe_client().find_transfer(transfer_group=deal.transfer_group, idempotency_key=movement.key)

    def on_succeeded(self, movement: MoneyMovement, result: Succeeded) -> FollowUps:
        deal_transfer_succeeded(deal_id=movement.subject_id, transfer_id=result.reference)
        return None

    def on_declined(self, movement: MoneyMovement, result: Declined) -> FollowUps:
        deal_transfer_declined(deal_id=movement.subject_id, result=result)
        return None


OPERATIONS: tuple[type[DealOperation], ...] = (DealHold, DealCapture, DealVoid, DealRefund, DealTransfer)


def register_deal_operations() -> None:
    """From EscrowConfig.ready: the protocol finds these by name on every movement row."""
    for operation in OPERATIONS:
        operation_register(operation())
