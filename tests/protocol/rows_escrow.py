"""Escrow deals and purchases for the matrix (all at Stripe): escrow.hold / capture / void / refund /
transfer, purchase.authorize / capture / void / refund. Each operation is driven through the domain's
public services: `prepare_*` builds the deal or purchase, `trigger_*` makes the call that sends it,
`moved_*` counts its money movements at the sandbox, `posted_*` says what the ledger must show."""

from __future__ import annotations

import uuid
from datetime import timedelta

from core.money import Money
from escrow.models import EscrowDeal, Purchase, PurchaseRefund
from providers.models import MoneyMovement
from providers.sandbox import stripe as stripe_sandbox
from tests.escrow.factories_deals import UserFactory, seller
from tests.escrow.factories_purchases import buyer_create, deliverer_create, finance_create, service_create
from tests.protocol.harness import Case, Posting

AMOUNT = 10_000
PURCHASE_REFUND = 4_000
USD = "USD"
CLEARING = f"provider:stripe:clearing:{USD}"
FEES = f"platform:provider-fees:stripe:{USD}"


def _state(case: Case) -> stripe_sandbox.StripeState:
    return stripe_sandbox.state_of(case.sandbox)


def _intents(case: Case, metadata_key: str, subject_id: int) -> list[dict]:
    return [pi for pi in _state(case).payment_intents.values() if pi["metadata"].get(metadata_key) == str(subject_id)]


def _captures(case: Case, intent: dict) -> int:
    """Money taken from the card: the charge's balance transactions at Stripe."""
    charge = intent.get("latest_charge")
    return sum(1 for txn in _state(case).balance_transactions.values() if txn["source"] == charge and charge)


def _fee_of(case: Case, intent: dict) -> int:
    charge = intent["latest_charge"]
    return sum(txn["fee"] for txn in _state(case).balance_transactions.values() if txn["source"] == charge)


def _cancels(case: Case, intent_id: str) -> int:
    return sum(
        1
        for event in _state(case).events
        if event["type"] == "payment_intent.canceled" and event["data"]["object"]["id"] == intent_id
    )


def _refunds(case: Case, intent_id: str) -> list[dict]:
    return [r for r in _state(case).refunds.values() if r["payment_intent"] == intent_id and r["status"] == "succeeded"]


# --- escrow deals ------------------------------------------------------------------------------------------


def _deal_create(case: Case, *, captured: bool) -> None:
    from django.utils import timezone

    from escrow.deals import deal_create

    case.data.setdefault("buyer", UserFactory())
    case.data.setdefault("seller", seller(case.sandbox, rate_bps=800))
    deadline = timezone.now() + (timedelta(days=10) if captured else timedelta(days=2))
    kwargs = dict(
        buyer=case.data["buyer"],
        seller_account=case.data["seller"].stripe_account_id,
        amount=Money(AMOUNT, USD),
        deadline=deadline,
        timeout_policy=EscrowDeal.TimeoutPolicy.REFUND,
        payment_method="pm_card_visa",
        client_key=uuid.uuid4().hex,
    )
    case.call(lambda: deal_create(**kwargs))


def _deal(case: Case) -> EscrowDeal:
    deal = case.data.get("deal") or EscrowDeal.objects.order_by("-id").first()
    assert deal is not None, f"no deal was made ({case.errors!r})"
    return EscrowDeal.objects.get(pk=deal.pk)


def _held_deal(case: Case, *, captured: bool) -> None:
    _deal_create(case, captured=captured)
    case.data["deal"] = deal = _deal(case)
    assert deal.status == EscrowDeal.Status.HELD, (deal.status, case.errors)
    case.errors.clear()


def _deal_of(movement: MoneyMovement) -> EscrowDeal:
    return EscrowDeal.objects.get(pk=movement.subject_id)


def prepare_deal(case: Case) -> None:
    case.data["buyer"], case.data["seller"] = UserFactory(), seller(case.sandbox, rate_bps=800)


def trigger_hold(case: Case) -> None:
    _deal_create(case, captured=False)


def prepare_held_authorized(case: Case) -> None:
    _held_deal(case, captured=False)


def prepare_held_captured(case: Case) -> None:
    _held_deal(case, captured=True)


def trigger_release(case: Case) -> None:
    from escrow.deals import deal_release

    case.call(lambda: deal_release(deal_id=_deal(case).pk, actor=case.data["buyer"]))


def trigger_cancel(case: Case) -> None:
    from escrow.deals import deal_cancel

    case.call(lambda: deal_cancel(deal_id=_deal(case).pk, actor=case.data["seller"].user, reason="test"))


def moved_hold(case: Case, movement: MoneyMovement) -> int:
    return sum(1 for pi in _intents(case, "escrow_deal", movement.subject_id) if pi["status"] == "requires_capture")


def posted_hold(case: Case, movement: MoneyMovement) -> list[Posting]:
    deal = _deal_of(movement)
    (intent,) = _intents(case, "escrow_deal", deal.pk)
    amount = intent["amount_capturable"]
    accounts = {f"escrow:authorized:{USD}": amount, f"escrow:buyer-funds-held:{USD}": -amount}
    return [Posting(key_prefix=f"escrow:{deal.pk}:authorize", accounts=accounts)]


def moved_capture(case: Case, movement: MoneyMovement) -> int:
    return sum(_captures(case, pi) for pi in _intents(case, "escrow_deal", movement.subject_id))


def posted_capture(case: Case, movement: MoneyMovement) -> list[Posting]:
    (intent,) = _intents(case, "escrow_deal", movement.subject_id)
    amount, fee = intent["amount_received"], _fee_of(case, intent)
    accounts = {CLEARING: amount - fee, f"escrow:authorized:{USD}": -amount, FEES: fee}
    return [Posting(reference=intent["id"], accounts=accounts)]


def moved_void(case: Case, movement: MoneyMovement) -> int:
    return sum(_cancels(case, pi["id"]) for pi in _intents(case, "escrow_deal", movement.subject_id))


def posted_void(case: Case, movement: MoneyMovement) -> list[Posting]:
    (intent,) = _intents(case, "escrow_deal", movement.subject_id)
    amount = intent["amount"]
    accounts = {f"escrow:buyer-funds-held:{USD}": amount, f"escrow:authorized:{USD}": -amount}
    return [Posting(key_prefix=f"escrow:{movement.subject_id}:void", accounts=accounts)]


def moved_refund(case: Case, movement: MoneyMovement) -> int:
    return sum(len(_refunds(case, pi["id"])) for pi in _intents(case, "escrow_deal", movement.subject_id))


def posted_refund(case: Case, movement: MoneyMovement) -> list[Posting]:
    (intent,) = _intents(case, "escrow_deal", movement.subject_id)
    (refund,) = _refunds(case, intent["id"])
    accounts = {f"escrow:buyer-funds-held:{USD}": refund["amount"], CLEARING: -refund["amount"]}
    return [Posting(reference=refund["id"], accounts=accounts)]


def _transfers(case: Case, deal: EscrowDeal) -> list[dict]:
    group = deal.transfer_group or f"escrow-{deal.pk}"
    return [t for t in _state(case).transfers.values() if t["transfer_group"] == group]


def moved_transfer(case: Case, movement: MoneyMovement) -> int:
    return len(_transfers(case, _deal_of(movement)))


def posted_transfer(case: Case, movement: MoneyMovement) -> list[Posting]:
    (transfer,) = _transfers(case, _deal_of(movement))
    accounts = {f"escrow:seller-payable:{USD}": transfer["amount"], CLEARING: -transfer["amount"]}
    return [Posting(reference=transfer["id"], accounts=accounts)]


# --- purchases ---------------------------------------------------------------------------------------------


def prepare_purchase(case: Case) -> None:
    service_create(code=f"svc-{uuid.uuid4().hex[:8]}", prices={USD: AMOUNT})
    case.data["service"] = service_code = _latest_service_code()
    case.data["buyer"] = buyer_create()
    case.data["deliverer"] = deliverer_create()
    case.data["finance"] = finance_create()
    assert service_code


def _latest_service_code() -> str:
    from escrow.models import PurchasableService

    return PurchasableService.objects.order_by("-id").values_list("code", flat=True)[0]


def trigger_authorize(case: Case) -> None:
    from escrow.purchases import purchase_create

    kwargs = dict(
        buyer=case.data["buyer"],
        service_code=case.data["service"],
        currency=USD,
        payment_method="pm_card_visa",
        client_key=uuid.uuid4().hex,
    )
    case.call(lambda: purchase_create(**kwargs))


def _purchase(case: Case) -> Purchase:
    purchase = Purchase.objects.order_by("-id").first()
    assert purchase is not None, f"no purchase was made ({case.errors!r})"
    return purchase


def prepare_authorized(case: Case) -> None:
    prepare_purchase(case)
    trigger_authorize(case)
    purchase = _purchase(case)
    assert purchase.status == Purchase.Status.RESERVED, (purchase.status, case.errors)


def _report(case: Case, outcome: str) -> None:
    from escrow.purchases import purchase_report_delivery

    purchase_id, deliverer = _purchase(case).pk, case.data["deliverer"]
    case.call(lambda: purchase_report_delivery(purchase_id=purchase_id, actor=deliverer, outcome=outcome))


def trigger_deliver(case: Case) -> None:
    _report(case, Purchase.Outcome.DELIVERED)


def trigger_fail(case: Case) -> None:
    _report(case, Purchase.Outcome.FAILED)


def prepare_captured(case: Case) -> None:
    prepare_authorized(case)
    trigger_deliver(case)
    purchase = _purchase(case)
    assert purchase.status == Purchase.Status.CAPTURED, (purchase.status, case.errors)


def trigger_purchase_refund(case: Case) -> None:
    from escrow.purchases import purchase_refund

    kwargs = dict(
        purchase_id=_purchase(case).pk,
        amount=Money(PURCHASE_REFUND, USD),
        actor=case.data["finance"],
        client_key=uuid.uuid4().hex,
    )
    case.call(lambda: purchase_refund(**kwargs))


def _purchase_intents(case: Case, purchase_pk: int) -> list[dict]:
    return _intents(case, "purchase", purchase_pk)


def moved_authorize(case: Case, movement: MoneyMovement) -> int:
    return sum(1 for pi in _purchase_intents(case, movement.subject_id) if pi["status"] == "requires_capture")


def posted_nothing(case: Case, movement: MoneyMovement) -> list[Posting]:
    """An authorization or its void moves no money: nothing is posted for the purchase."""
    return [Posting(key_prefix=f"purchase:{movement.subject_id}:", accounts={})]


def moved_purchase_capture(case: Case, movement: MoneyMovement) -> int:
    return sum(_captures(case, pi) for pi in _purchase_intents(case, movement.subject_id))


def posted_purchase_capture(case: Case, movement: MoneyMovement) -> list[Posting]:
    (intent,) = _purchase_intents(case, movement.subject_id)
    amount, fee = intent["amount_received"], _fee_of(case, intent)
    accounts = {CLEARING: amount - fee, f"platform:revenue:services:{USD}": -amount, FEES: fee}
    return [Posting(reference=intent["id"], accounts=accounts)]


def moved_purchase_void(case: Case, movement: MoneyMovement) -> int:
    return sum(_cancels(case, pi["id"]) for pi in _purchase_intents(case, movement.subject_id))


def _refund_intent(case: Case, movement: MoneyMovement) -> dict:
    refund = PurchaseRefund.objects.get(pk=movement.subject_id)
    (intent,) = _purchase_intents(case, refund.purchase_id)
    return intent


def moved_purchase_refund(case: Case, movement: MoneyMovement) -> int:
    return len(_refunds(case, _refund_intent(case, movement)["id"]))


def posted_purchase_refund(case: Case, movement: MoneyMovement) -> list[Posting]:
    (refund,) = _refunds(case, _refund_intent(case, movement)["id"])
    accounts = {f"platform:revenue:services:{USD}": refund["amount"], CLEARING: -refund["amount"]}
    return [Posting(reference=refund["id"], accounts=accounts)]
