"""What PayPal, Maya and GCash (PayMongo) hold at the sandbox that moves money, read only, for the bank invariant.

When the sandbox at settings.SANDBOX_URL runs in this process (the stateful test, tests/chaos/test_invariants.py)
its whole state is read. When it is another process (ops.stack) the sandbox lists nothing for these providers, so
the objects our records lead to are read over the providers' own GET routes: the PayPal batches we know of (each
with all its items), the Maya payments under each of our request reference numbers (with their refunds), the GCash
payments we know of (with their refunds). An object no record of ours leads to is seen in-process only.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx
from django.conf import settings

from payouts.models import PayoutBatch
from providers.models import MoneyMovement, Payment, PaymentAttempt
from providers.paypal.client import PayPalClient
from providers.sandbox import maya, paymongo, paypal

PAYPAL_PAID = frozenset({"SUCCESS"})
PAYPAL_PAID_THEN_BACK = frozenset({"RETURNED", "REFUNDED", "REVERSED"})
MAYA_PAID = frozenset({maya.SUCCESS, maya.REFUNDED})
# our succeeded movements that must name one object each at the provider (a GCash payment.start is a source)
OPERATIONS = {
    "paypal": frozenset({"payout.paypal_batch"}),
    "maya": frozenset({"payment.start", "payment.refund"}),
    "gcash": frozenset({"payment.charge", "payment.refund"}),
}


@dataclass(frozen=True)
class Moved:
    """One object that moved money at a provider."""

    reference: str  # the provider's id
    kind: str  # what it is, to name it in a problem
    posted: bool  # the ledger posts it once (a posting that came back is reversed)
    net: bool = True  # the money is still moved (False: paid, then it came back)
    operation: str = ""  # the succeeded movement of ours that must name it once ("": none)


def _local(module: Any) -> Any | None:
    """The provider's state when the sandbox at SANDBOX_URL is in this process."""
    for sandbox in list(module._STATES.keys()):
        if sandbox.url and sandbox.url == settings.SANDBOX_URL:
            return module._STATES[sandbox]
    return None


def _get(path: str, key: str) -> Any:
    answer = httpx.get(f"{settings.SANDBOX_URL}{path}", auth=(key, ""), timeout=10)
    answer.raise_for_status()
    return answer.json()


# --- PayPal: batches (our payout.paypal_batch movements) and their items (the ledger posts a paid one) --------


def paypal_objects() -> list[Moved]:
    state = _local(paypal)
    if state is not None:
        with state.sandbox.lock:
            batches = list(state.batches)
            items = [(item.payout_item_id, item.status) for item in state.items.values()]
    else:
        batches, items = _paypal_over_http()
    moved = [Moved(batch, "paypal batch", posted=False, operation="payout.paypal_batch") for batch in batches]
    for item_id, status in items:
        if status in PAYPAL_PAID | PAYPAL_PAID_THEN_BACK:
            moved.append(Moved(item_id, f"paypal item {status}", posted=True, net=status in PAYPAL_PAID))
    return moved


def _paypal_over_http() -> tuple[list[str], list[tuple[str, str]]]:
    known = set(PayoutBatch.objects.filter(provider="paypal").exclude(provider_batch_id="").values_list(
        "provider_batch_id", flat=True))  # fmt: skip
    known |= set(_succeeded_references("paypal", "payout.paypal_batch"))
    batches, items = [], []
    with PayPalClient() as client:
        for batch_id in sorted(known):
            found = client.get_batch(batch_id)
            if found.raw.get("batch_header"):
                batches.append(batch_id)
                items += [(item["payout_item_id"], item["transaction_status"]) for item in found.raw["items"]]
    return batches, items


# --- Maya: paid payments (payment.start) and their refunds (payment.refund) -----------------------------------


def maya_objects() -> list[Moved]:
    state = _local(maya)
    if state is not None:
        with state.sandbox.lock:
            found = [(payment.view(), copy.deepcopy(payment.refunds)) for payment in state.payments.values()]
    else:
        found = _maya_over_http()
    moved = []
    for payment, refunds in found:
        if payment["status"] in MAYA_PAID:
            moved.append(Moved(payment["id"], "maya payment", posted=True, operation="payment.start"))
        moved += [_refund(refund["id"], "maya refund") for refund in refunds if refund["status"] == "SUCCESS"]
    return moved


def _maya_over_http() -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    key = settings.MAYA_SECRET_KEY
    rrns = PaymentAttempt.objects.filter(provider="maya").values_list("idempotency_key", flat=True)
    payments = [payment for rrn in rrns for payment in _get(f"/maya/payments/v1/payment-rrns/{rrn}", key)]
    return [(payment, _get(f"/maya/payments/v1/payments/{payment['id']}/refunds", key)) for payment in payments]


# --- GCash (PayMongo): paid payments (payment.charge) and refunds not failed (payment.refund) ----------------


def gcash_objects() -> list[Moved]:
    state = _local(paymongo)
    if state is not None:
        with state.sandbox.lock:
            payments = copy.deepcopy(list(state.payments.values()))
            refunds = copy.deepcopy(list(state.refunds.values()))
    else:
        payments = _gcash_over_http()
        refunds = [refund for payment in payments for refund in payment["attributes"]["refunds"]]
    moved = [
        Moved(payment["id"], "gcash payment", posted=True, operation="payment.charge")
        for payment in payments
        if payment["attributes"]["status"] == "paid"
    ]
    return moved + [_refund(r["id"], "gcash refund") for r in refunds if r["attributes"]["status"] != "failed"]


def _gcash_over_http() -> list[dict[str, Any]]:
    known = set(Payment.objects.filter(provider="gcash").exclude(provider_reference="").values_list(
        "provider_reference", flat=True))  # fmt: skip
    known |= set(_succeeded_references("gcash", "payment.charge"))
    payments = []
    for payment_id in sorted(ref for ref in known if ref.startswith("pay_")):  # a source id until charged
        answer = httpx.get(f"{settings.SANDBOX_URL}/paymongo/v1/payments/{payment_id}",
                           auth=(settings.PAYMONGO_SECRET_KEY, ""), timeout=10)  # fmt: skip
        if answer.status_code == 200:
            payments.append(answer.json()["data"])
    return payments


# --- shared ---------------------------------------------------------------------------------------------------


def _refund(reference: str, kind: str) -> Moved:
    return Moved(reference, kind, posted=True, operation="payment.refund")


def _succeeded_references(provider: str, *operations: str) -> Iterable[str]:
    return MoneyMovement.objects.filter(
        provider=provider, operation__in=operations, status=MoneyMovement.Status.SUCCEEDED
    ).values_list("provider_reference", flat=True)


PROVIDER_OBJECTS = {"paypal": paypal_objects, "maya": maya_objects, "gcash": gcash_objects}
