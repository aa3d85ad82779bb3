"""Objects of the Stripe sandbox as Stripe shapes them: balance transactions (with the card fees), and
PaymentIntents, charges, refunds, transfers, reversals and connected accounts."""

from __future__ import annotations

import copy
import secrets

from providers.sandbox.server import Sandbox
from providers.sandbox.stripe_params import _integer, _metadata
from providers.sandbox.stripe_state import Call, Obj, SandboxCard, _now, new_id, state_of

# --- balance transactions: reconciliation reads them; tests place them on a given day
# Card pricing per currency (basis points, fixed minor units), as Stripe's standard pricing (and our fee rules).
CARD_FEES: dict[str, tuple[int, int]] = {"usd": (290, 30), "php": (350, 1_500)}
_BALANCE_TYPES = {  # type -> reporting_category
    "charge": "charge",
    "refund": "refund",
    "transfer": "transfer",
    "transfer_refund": "transfer_reversal",
    "adjustment": "other_adjustment",
}
_balance_seq = iter(range(1, 10**12))


def card_fee(currency: str, amount: int) -> int:
    bps, fixed = CARD_FEES.get(currency.lower(), (290, 0))
    return (amount * bps + 5_000) // 10_000 + fixed


def _balance_transaction(txn_id: str, type_: str, source: str, amount: int, fee: int, currency: str) -> Obj:
    created = _now()
    return {
        "id": txn_id,
        "object": "balance_transaction",
        "amount": amount,
        "available_on": created + (2 * 86_400 if type_ == "charge" else 0),
        "created": created,
        "currency": currency.lower(),
        "description": None,
        "exchange_rate": None,
        "fee": fee,
        "fee_details": [_stripe_fee(fee, currency)] if fee else [],
        "net": amount - fee,
        "reporting_category": _BALANCE_TYPES[type_],
        "source": source,
        "status": "pending" if type_ == "charge" else "available",
        "type": type_,
        "_seq": next(_balance_seq),  # ties on `created` keep insertion order; never sent
    }


def _stripe_fee(fee: int, currency: str) -> Obj:
    return {"amount": fee, "currency": currency.lower(), "description": "Stripe processing fees", "type": "stripe_fee"}


def _balance_matches(txn: Obj, params: dict[str, str]) -> bool:
    bounds = {"gte": int.__ge__, "gt": int.__gt__, "lte": int.__le__, "lt": int.__lt__}
    for op, holds in bounds.items():
        raw = params.get(f"created[{op}]")
        if raw is not None and not holds(txn["created"], _integer(params, f"created[{op}]", minimum=0)):
            return False
    return all(not params.get(name) or txn[name] == params[name] for name in ("type", "source"))


def balance_transaction_set_created(sandbox: Sandbox, txn_id: str, created: int) -> Obj:
    """Test hook: move a balance transaction to another time (e.g. onto the day being reconciled)."""
    state = state_of(sandbox)
    with sandbox.lock:
        state.balance_transactions[txn_id]["created"] = created
        return copy.deepcopy(state.balance_transactions[txn_id])


def balance_transaction_add(
    sandbox: Sandbox, *, type_: str, source: str, amount: int, currency: str, created: int, fee: int = 0
) -> Obj:
    """Test hook: a movement Stripe reports without a call of ours (e.g. a duplicate or an adjustment)."""
    txn = _balance_transaction(new_id("txn"), type_, source, amount, fee, currency)
    txn["created"] = created
    with sandbox.lock:
        state_of(sandbox).balance_transactions[txn["id"]] = txn
    return copy.deepcopy(txn)


# --- object shapes (after shared/specs/stripe/fixtures3.json)
def _payment_intent(call: Call, amount: int, currency: str, capture_method: str, payment_method: str | None) -> Obj:
    intent_id = new_id("pi")
    params = call.params
    return {
        "id": intent_id,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": 0,
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": None,
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": capture_method,
        "client_secret": f"{intent_id}_secret_{secrets.token_hex(12)}",
        "confirmation_method": "automatic",
        "created": _now(),
        "currency": currency,
        "customer": None,
        "description": params.get("description"),
        "last_payment_error": None,
        "latest_charge": None,
        "livemode": False,
        "metadata": _metadata(params),
        "next_action": None,
        "on_behalf_of": None,
        "payment_method": payment_method,
        "payment_method_options": {},
        "payment_method_types": ["card"],
        "processing": None,
        "receipt_email": None,
        "review": None,
        "setup_future_usage": None,
        "shipping": None,
        "source": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "requires_confirmation" if payment_method else "requires_payment_method",
        "transfer_data": None,
        "transfer_group": params.get("transfer_group"),
    }


def _charge(intent: Obj, card: SandboxCard) -> Obj:
    charge_id = new_id("ch")
    return {
        "id": charge_id,
        "object": "charge",
        "amount": intent["amount"],
        "amount_captured": 0,
        "amount_refunded": 0,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": None,
        "billing_details": {"address": None, "email": None, "name": None, "phone": None},
        "captured": False,
        "created": _now(),
        "currency": intent["currency"],
        "customer": None,
        "description": intent["description"],
        "disputed": False,
        "failure_code": None,
        "failure_message": None,
        "livemode": False,
        "metadata": dict(intent["metadata"]),
        "outcome": _outcome(card),
        "paid": not card.declined,
        "payment_intent": intent["id"],
        "payment_method": intent["payment_method"],
        "payment_method_details": {
            "card": {"brand": card.brand, "last4": card.last4, "exp_month": 12, "exp_year": 2034, "funding": "credit"},
            "type": "card",
        },
        "refunded": False,
        "refunds": _list("refunds", charge_id, "charges"),
        "status": "failed" if card.declined else "succeeded",
        "transfer_group": intent["transfer_group"],
    }


def _outcome(card: SandboxCard) -> Obj:
    if not card.declined:
        return {"network_status": "approved_by_network", "reason": None, "risk_level": "normal", "type": "authorized"}
    reason = card.decline_code or card.code
    return {
        "network_status": "declined_by_network",
        "reason": reason,
        "risk_level": "normal",
        "type": "issuer_declined",
    }


def _refund(charge: Obj, amount: int, params: dict[str, str]) -> Obj:
    return {
        "id": new_id("re"),
        "object": "refund",
        "amount": amount,
        "balance_transaction": new_id("txn"),
        "charge": charge["id"],
        "created": _now(),
        "currency": charge["currency"],
        "destination_details": {"card": {"type": "refund"}, "type": "card"},
        "metadata": _metadata(params),
        "payment_intent": charge["payment_intent"],
        "reason": params.get("reason"),
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": "succeeded",
        "transfer_reversal": None,
    }


def _transfer(amount: int, currency: str, destination: str, params: dict[str, str]) -> Obj:
    transfer_id = new_id("tr")
    return {
        "id": transfer_id,
        "object": "transfer",
        "amount": amount,
        "amount_reversed": 0,
        "balance_transaction": new_id("txn"),
        "created": _now(),
        "currency": currency,
        "description": params.get("description"),
        "destination": destination,
        "destination_payment": new_id("py"),
        "livemode": False,
        "metadata": _metadata(params),
        "reversals": _list("reversals", transfer_id, "transfers"),
        "reversed": False,
        "source_transaction": None,
        "source_type": "card",
        "transfer_group": params.get("transfer_group"),
    }


def _reversal(transfer: Obj, amount: int, params: dict[str, str]) -> Obj:
    return {
        "id": new_id("trr"),
        "object": "transfer_reversal",
        "amount": amount,
        "balance_transaction": new_id("txn"),
        "created": _now(),
        "currency": transfer["currency"],
        "destination_payment_refund": new_id("pyr"),
        "metadata": _metadata(params),
        "source_refund": None,
        "transfer": transfer["id"],
    }


def _account(account_id: str) -> Obj:
    return {
        "id": account_id,
        "object": "account",
        "type": "express",
        "business_type": "individual",
        "capabilities": {"card_payments": "active", "transfers": "inactive"},
        "charges_enabled": False,
        "payouts_enabled": False,
        "country": "US",
        "default_currency": "usd",
        "details_submitted": True,
        "created": _now(),
        "metadata": {},
        "requirements": {"currently_due": [], "disabled_reason": None, "past_due": []},
    }


def _list(name: str, object_id: str, kind: str) -> Obj:
    return {"object": "list", "data": [], "has_more": False, "total_count": 0, "url": f"/v1/{kind}/{object_id}/{name}"}


def _prepend(listing: Obj, obj: Obj) -> None:
    listing["data"].insert(0, copy.deepcopy(obj))
    listing["total_count"] = len(listing["data"])
