"""Each provider's webhook check, in the shape the intake takes: raw body and headers in,
the event's id and type out, or InvalidSignature. A signed body holding what the database cannot keep (an amount
out of core.money's bounds, NUL in a text, a time that is no time) raises ValueError: the intake answers 400 and
processes nothing."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal

from core.api import EARLIEST_DATETIME, LATEST_DATETIME
from core.money import money_in_bounds, money_parse_in_bounds
from providers.base import InvalidSignature
from providers.gcash.client import PayMongoClient
from providers.maya.client import MayaClient
from providers.paypal.client import PayPalClient
from providers.stripe.client import verify_webhook as verify_stripe_signature
from providers.webhooks import VerifiedEvent, register_verifier


def _text(value: object) -> str:
    """An event's id or type as the provider sends it: text, never an object turned into text."""
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def values_in_bounds(payload: Any, *, units: Literal["minor", "major"]) -> None:
    """What handlers read from a signed body is what the database can keep: no text holds NUL (PostgreSQL refuses
    it), and every amount is held to the one rule for amounts from outside (core.money), zero allowed (providers
    report `amount_refunded: 0` and the like). An amount is the `amount`, `amount_*` or `value` of an object that
    names its `currency`: integer minor units (Stripe, PayMongo) or a decimal in major units (PayPal, Maya).
    Raises ValueError (MoneyError is one)."""
    pending = [payload]
    while pending:  # no recursion: a body nested deep is no RecursionError here
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
        if isinstance(node, str) and "\x00" in node:
            raise ValueError("a text in the body holds NUL")
        if not isinstance(node, dict):
            continue
        currency = node.get("currency")
        currency = currency.upper() if isinstance(currency, str) else currency
        for name, value in node.items():
            pending += [name, value] if isinstance(value, dict | list | str) else [name]
            if "currency" in node and _names_an_amount(name) and not isinstance(value, dict | list | None):
                _amount_in_bounds(value, currency, units)


def _names_an_amount(name: str) -> bool:
    return name in ("amount", "value") or name.startswith("amount_")


def _amount_in_bounds(value: object, currency: object, units: Literal["minor", "major"]) -> None:
    if units == "minor":
        money_in_bounds(value, currency, allow_zero=True)
    elif isinstance(value, str):
        money_parse_in_bounds(value, str(currency), allow_zero=True)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        money_parse_in_bounds(format(Decimal(str(value)), "f"), str(currency), allow_zero=True)
    else:
        raise TypeError(f"an amount must be a number or a decimal string, got {type(value).__name__}")


def verify_gcash(body: bytes, headers: Mapping[str, str]) -> VerifiedEvent:
    event = PayMongoClient().verify_webhook(body, headers)
    values_in_bounds(event, units="minor")
    return VerifiedEvent(event_id=_text(event["data"]["id"]), event_type=_text(event["data"]["attributes"]["type"]))


def verify_maya(body: bytes, headers: Mapping[str, str]) -> VerifiedEvent:
    payment = MayaClient().verify_webhook(body, headers)
    values_in_bounds(payment, units="major")
    # Maya's webhook is the payment itself: one event per payment and status.
    return VerifiedEvent(event_id=f"{_text(payment['id'])}:{_text(payment['status'])}", event_type=payment["status"])


def verify_paypal(body: bytes, headers: Mapping[str, str]) -> VerifiedEvent:
    with PayPalClient() as paypal:
        if not paypal.verify_webhook_signature(headers, body):
            raise InvalidSignature("PayPal did not confirm this event (or could not be asked; it will redeliver)")
    event = json.loads(body)
    values_in_bounds(event, units="major")
    return VerifiedEvent(event_id=_text(event["id"]), event_type=_text(event["event_type"]))


def verify_stripe(body: bytes, headers: Mapping[str, str]) -> VerifiedEvent:
    signature = next((value for name, value in headers.items() if name.lower() == "stripe-signature"), "")
    event = verify_stripe_signature(body, signature)
    values_in_bounds(event, units="minor")
    created = event.get("created")  # read as a date (account.updated): one the API would take too
    if type(created) is not int or not EARLIEST_DATETIME.timestamp() <= created < LATEST_DATETIME.timestamp():
        raise ValueError(f"the event's created time {str(created)[:40]!r} is not a Unix time from 1970 to 8999")
    return VerifiedEvent(event_id=_text(event["id"]), event_type=_text(event["type"]))


def register_verifiers() -> None:
    register_verifier("stripe", verify_stripe)
    register_verifier("gcash", verify_gcash)
    register_verifier("maya", verify_maya)
    register_verifier("paypal", verify_paypal)
