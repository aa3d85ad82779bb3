"""Webhook intake answers every bad request with a 400 in the one error body and processes nothing: forged or
huge bodies (a capped copy is kept for staff), deeply nested ones, and correctly signed bodies of the wrong
shape. A source whose requests keep being rejected is refused with 429 before anything is stored."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from escrow.models import EscrowDeal, Purchase
from ledger.models import Transaction
from payouts.models import PayoutBatch, PayoutItem
from providers.models import MoneyMovement, Payment, Refund, WebhookEvent
from providers.sandbox.paypal import paypal_sandbox
from providers.sandbox.stripe import stripe_signature
from providers.webhooks import REJECTED_BODY_CHARS

URL = "/webhooks/stripe/"


def client() -> Client:
    """A client from its own address, so rate-limit windows of other tests do not count."""
    return Client(REMOTE_ADDR=f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}")


def signed_post(http: Client, body: bytes):
    signature = stripe_signature(body, settings.STRIPE_WEBHOOK_SECRET, int(time.time()))
    return http.post(URL, body, content_type="application/json", HTTP_STRIPE_SIGNATURE=signature)


def assert_refused(answer, *codes: str) -> dict:
    assert answer.status_code == 400, answer.content
    error = answer.json()["error"]
    assert error["code"] in codes and error["user_message"] and error["action_required"]
    return error


SIGNED_WRONG_SHAPES = {
    "no_id": {"type": "payment_intent.succeeded"},
    "list": [1, 2, 3],
    "id_not_text": {"id": {"nested": True}, "type": "x", "data": {}},
    "id_too_long": {"id": "evt_" + "x" * 300, "type": "payment_intent.succeeded"},
    "type_too_long": {"id": "evt_1", "type": "t" * 300},
}


@pytest.mark.django_db
@pytest.mark.parametrize("shape", SIGNED_WRONG_SHAPES.values(), ids=SIGNED_WRONG_SHAPES.keys())
def test_a_signed_body_of_the_wrong_shape_is_a_400_and_nothing_is_processed(shape):
    answer = signed_post(client(), json.dumps(shape).encode())
    assert_refused(answer, "malformed_webhook", "invalid_signature")  # Stripe's own parser may refuse it first
    assert not WebhookEvent.objects.filter(signature_valid=True).exists()
    assert WebhookEvent.objects.get().status == WebhookEvent.Status.REJECTED


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [b"{" + b'"a":' * 0 + b"[" * 100_000, b'{"id": "evt_big", "pad": "' + b"x" * 2_000_000 + b'"}', b"\x00\xff\xfe"],
    ids=["deeply-nested", "two-megabytes", "not-utf8"],
)
def test_a_forged_body_is_a_400_and_only_a_capped_copy_is_kept(body):
    answer = client().post(URL, body, content_type="application/json", HTTP_STRIPE_SIGNATURE="t=1,v1=forged")
    assert_refused(answer, "invalid_signature")
    (kept,) = WebhookEvent.objects.all()
    assert kept.status == WebhookEvent.Status.REJECTED and not kept.signature_valid
    assert len(kept.body) <= REJECTED_BODY_CHARS + 40 and "\x00" not in kept.body


@pytest.mark.django_db
def test_a_source_whose_requests_keep_being_rejected_is_refused_before_anything_is_stored(settings):
    settings.WEBHOOK_REJECTED_RATE = "3/m"
    http = client()
    answers = [
        http.post(URL, b"{}", content_type="application/json", HTTP_STRIPE_SIGNATURE="t=1,v1=forged").status_code
        for _ in range(5)
    ]
    assert answers[:4] == [400, 400, 400, 400] and answers[4] == 429
    assert WebhookEvent.objects.count() == 4  # the refused request stored nothing
    assert client().post(URL, b"{}", content_type="application/json").status_code == 400  # other sources unaffected


# --- every provider: bodies over the limit, nested, overlong, at the ends of the calendar, out-of-bounds amounts


def _hmac(secret: str, signed: bytes) -> str:
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def _stripe_headers(body: bytes, sandbox: Any, timestamp: str) -> dict[str, str]:
    signature = _hmac(settings.STRIPE_WEBHOOK_SECRET, f"{timestamp}.".encode() + body)
    return {"Stripe-Signature": f"t={timestamp},v1={signature}"}


def _gcash_headers(body: bytes, sandbox: Any, timestamp: str) -> dict[str, str]:
    signature = _hmac(settings.PAYMONGO_WEBHOOK_SECRET, f"{timestamp}.".encode() + body)
    return {"Paymongo-Signature": f"t={timestamp},te={signature},li="}


def _maya_headers(body: bytes, sandbox: Any, timestamp: str) -> dict[str, str]:
    signature = _hmac(settings.MAYA_WEBHOOK_SECRET, f"{timestamp}.nonce.".encode() + body)
    return {"X-Maya-Webhook-Timestamp": timestamp, "X-Maya-Webhook-Signature": f"nonce=nonce,v1={signature}"}


def _paypal_headers(body: bytes, sandbox: Any, timestamp: str) -> dict[str, str]:
    """Transmission headers the sandbox's PayPal confirms when we ask it (PayPal's own check; no timestamp)."""
    try:
        event = json.loads(body)
    except RecursionError:
        event = {}
    return paypal_sandbox(sandbox)._transmission_headers(event if isinstance(event, dict) else {})


@dataclass(frozen=True)
class WebhookProvider:
    name: str
    sign: Callable[[bytes, Any, str], dict[str, str]]  # body, sandbox, the signed timestamp -> headers
    event: Callable[[str, Any], dict[str, Any]]  # event id, an amount -> an event of this provider's shape
    units: str  # how its bodies carry amounts: "minor" (integers) or "major" (decimal text)
    good_amount: Any

    def post(self, sandbox: Any, body: bytes, timestamp: str | None = None) -> Any:
        headers = self.sign(body, sandbox, str(int(time.time())) if timestamp is None else timestamp)
        return client().post(f"/webhooks/{self.name}/", body, content_type="application/json", headers=headers)


PROVIDERS = [
    WebhookProvider(
        "stripe", _stripe_headers, lambda event_id, amount: {
            "id": event_id, "type": "transfer.reversed", "created": int(time.time()), "data": {"object": {
                "id": "tr_1", "object": "transfer", "currency": "usd", "amount": amount, "amount_reversed": amount,
                "amount_details": {"tip": {}}, "application_fee_amount": None,
                "reversals": {"data": [{"id": "trr_1", "amount": amount, "currency": "usd"}]},
            }},
        }, "minor", 1_000,
    ),
    WebhookProvider(
        "gcash", _gcash_headers, lambda event_id, amount: {"data": {"id": event_id, "attributes": {
            "type": "payment.paid", "data": {"id": "pay_1", "attributes": {
                "amount": amount, "currency": "PHP", "status": "paid", "source": {"id": "src_1"},
            }},
        }}}, "minor", 10_000,
    ),
    WebhookProvider(
        "maya", _maya_headers, lambda event_id, amount: {
            "id": event_id, "status": "PAYMENT_SUCCESS", "amount": amount, "currency": "PHP",
            "requestReferenceNumber": "ref-1", "totalAmount": {"amount": amount, "currency": "PHP"},
        }, "major", "100.50",
    ),
    WebhookProvider(
        "paypal", _paypal_headers, lambda event_id, amount: {
            "id": event_id, "event_type": "PAYMENT.PAYOUTS-ITEM.SUCCEEDED", "resource": {
                "payout_item_id": "ITEM1", "sender_batch_id": "batch-1", "transaction_status": "SUCCESS",
                "payout_item": {"sender_item_id": "item-1", "amount": {"currency": "USD", "value": amount}},
                "payout_item_fee": {"currency": "USD", "value": "0.00"},
            },
        }, "major", "12.34",
    ),
]  # fmt: skip
BAD_AMOUNTS = {
    "minor": {"10**30": 10**30, "2**63": 2**63, "negative": -1, "text": "15000", "float": 150.0, "boolean": True},
    "major": {"30-digits": "9" * 30, "10**30": 10**30, "negative": "-1.00", "too-precise": "1.001", "exponent": "1e30",
              "boolean": True},
}  # fmt: skip
ROWS = (Payment, Refund, EscrowDeal, Purchase, PayoutBatch, PayoutItem, MoneyMovement, Transaction)


def money_rows() -> tuple[int, ...]:
    return tuple(table.objects.count() for table in ROWS)


def assert_nothing_verified() -> None:
    assert not WebhookEvent.objects.filter(signature_valid=True).exists()


@pytest.mark.django_db
@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda provider: provider.name)
def test_every_provider_refuses_bad_bodies_with_a_4xx_and_processes_nothing(sandbox, provider):
    before = money_rows()
    good = provider.event(f"evt_{uuid.uuid4().hex}", provider.good_amount)
    assert provider.post(sandbox, json.dumps(good).encode()).status_code == 200  # the signing is right
    WebhookEvent.objects.all().delete()

    huge = json.dumps({**good, "pad": "x" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE}).encode()
    too_large = provider.post(sandbox, huge)
    assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "request_too_large"
    assert too_large.json()["error"]["user_message"] and too_large.json()["error"]["action_required"]
    assert not WebhookEvent.objects.exists()  # refused before it was read: nothing kept
    for nested in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        assert_refused(provider.post(sandbox, nested), "malformed_webhook", "invalid_signature")
    overlong = provider.event("e" * 300, provider.good_amount)
    assert_refused(provider.post(sandbox, json.dumps(overlong).encode()), "malformed_webhook")
    nul = {**provider.event(f"evt_{uuid.uuid4().hex}", provider.good_amount), "description": "paid\x00"}
    assert_refused(provider.post(sandbox, json.dumps(nul).encode()), "malformed_webhook")  # PostgreSQL refuses NUL
    for name, amount in BAD_AMOUNTS[provider.units].items():
        event = provider.event(f"evt_{uuid.uuid4().hex}", amount)
        error = assert_refused(provider.post(sandbox, json.dumps(event).encode()), "malformed_webhook")
        assert "Nothing was recorded" in error["action_required"], name
    for bad in (
        f"/webhooks/{provider.name}%00/",
        f"/webhooks/{provider.name}/?x=%00",
        f"/webhooks/{provider.name}/?%1B",
    ):
        answer = client().post(bad, json.dumps(good).encode(), content_type="application/json")
        assert_refused(answer, "invalid_request")

    assert_nothing_verified()
    assert money_rows() == before


@pytest.mark.django_db
@pytest.mark.parametrize("provider", [p for p in PROVIDERS if p.name != "paypal"], ids=lambda provider: provider.name)
@pytest.mark.parametrize("timestamp", ["9" * 400, "99999999999999", "0", "-1", "\uff11\uff17" + "\uff10" * 8, ""])
def test_a_signed_time_at_the_ends_of_the_calendar_is_a_400(sandbox, provider, timestamp):
    body = json.dumps(provider.event(f"evt_{uuid.uuid4().hex}", provider.good_amount)).encode()
    assert_refused(provider.post(sandbox, body, timestamp), "invalid_signature")
    assert_nothing_verified()


@pytest.mark.django_db
@pytest.mark.parametrize("created", [10**20, -1, "1700000000", 1.7e9, None])
def test_a_stripe_event_created_at_no_time_is_a_400(created):
    event = {"id": f"evt_{uuid.uuid4().hex}", "type": "account.updated", "created": created,
             "data": {"object": {"id": "acct_1"}}}  # fmt: skip
    assert_refused(signed_post(client(), json.dumps(event).encode()), "malformed_webhook")
    assert_nothing_verified()
