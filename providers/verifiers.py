"""Each provider's webhook check, in the shape the intake takes: raw body and headers in,
the event's id and type out, or InvalidSignature."""

from __future__ import annotations

import json
from collections.abc import Mapping

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


def verify_gcash(body: bytes, headers: Mapping[str, str]) -> VerifiedEvent:
    event = PayMongoClient().verify_webhook(body, headers)
    return VerifiedEvent(event_id=_text(event["data"]["id"]), event_type=_text(event["data"]["attributes"]["type"]))


def verify_maya(body: bytes, headers: Mapping[str, str]) -> VerifiedEvent:
    payment = MayaClient().verify_webhook(body, headers)
    # Maya's webhook is the payment itself: one event per payment and status.
    return VerifiedEvent(event_id=f"{_text(payment['id'])}:{_text(payment['status'])}", event_type=payment["status"])


def verify_paypal(body: bytes, headers: Mapping[str, str]) -> VerifiedEvent:
    with PayPalClient() as paypal:
        if not paypal.verify_webhook_signature(headers, body):
            raise InvalidSignature("PayPal did not confirm this event (or could not be asked; it will redeliver)")
    event = json.loads(body)
    return VerifiedEvent(event_id=_text(event["id"]), event_type=_text(event["event_type"]))


def verify_stripe(body: bytes, headers: Mapping[str, str]) -> VerifiedEvent:
    signature = next((value for name, value in headers.items() if name.lower() == "stripe-signature"), "")
    event = verify_stripe_signature(body, signature)
    return VerifiedEvent(event_id=_text(event["id"]), event_type=_text(event["type"]))


def register_verifiers() -> None:
    register_verifier("stripe", verify_stripe)
    register_verifier("gcash", verify_gcash)
    register_verifier("maya", verify_maya)
    register_verifier("paypal", verify_paypal)
