"""Webhook intake answers every bad request with a 400 in the one error body and processes nothing: forged or
huge bodies (a capped copy is kept for staff), deeply nested ones, and correctly signed bodies of the wrong
shape. A source whose requests keep being rejected is refused with 429 before anything is stored."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from django.conf import settings
from django.test import Client

from providers.models import WebhookEvent
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
