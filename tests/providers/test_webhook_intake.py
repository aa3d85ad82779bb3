"""The intake's load path: an accepted request never touches the rate limit's cache, a source seen over its rate of
rejected requests is refused before its body is verified again, and a burst of events in one message is each
applied once."""

import hashlib
import hmac
import json
import uuid
from collections import Counter
from collections.abc import Mapping

import pytest

import providers.views
from providers.models import WebhookEvent
from providers.webhooks import (
    InvalidSignature,
    VerifiedEvent,
    register_handler,
    register_verifier,
    webhook_events_process,
    webhook_receive,
)

SECRET = b"intake-secret"
VERIFIED: Counter = Counter()
APPLIED: Counter = Counter()
URL = "/webhooks/intakepay/"


def verify(body: bytes, headers: Mapping[str, str]) -> VerifiedEvent:
    VERIFIED["calls"] += 1
    expected = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, headers.get("X-Test-Signature", "")):
        raise InvalidSignature("signature does not match")
    payload = json.loads(body)
    return VerifiedEvent(payload["id"], payload["type"])


def apply(event: WebhookEvent, payload: dict) -> None:
    if payload.get("crash"):
        raise RuntimeError("a handler bug")
    APPLIED[event.event_id] += 1


@pytest.fixture(autouse=True)
def _intake_provider(settings):
    register_verifier("intakepay", verify)
    register_handler("intakepay", "payment.paid", apply)
    settings.RATELIMIT_CACHE_PREFIX = f"test:intake-rl:{uuid.uuid4().hex}:"  # Redis outlives the test database
    VERIFIED.clear()
    APPLIED.clear()
    providers.views._suspected_until.clear()
    yield
    providers.views._suspected_until.clear()


def body_and_signature(event_id: str, **extra: object) -> tuple[bytes, str]:
    body = json.dumps({"id": event_id, "type": "payment.paid", **extra}).encode()
    return body, hmac.new(SECRET, body, hashlib.sha256).hexdigest()


@pytest.mark.django_db
def test_an_accepted_request_never_touches_the_rate_limit(client, monkeypatch):
    looked_up = []
    monkeypatch.setattr(providers.views, "get_usage", lambda *args, **kwargs: looked_up.append(kwargs))
    body, signature = body_and_signature("evt_accepted")
    for _ in range(2):  # stored, then a duplicate
        answer = client.post(URL, body, content_type="application/json", HTTP_X_TEST_SIGNATURE=signature)
        assert answer.status_code == 200
    assert looked_up == []
    assert WebhookEvent.objects.filter(event_id="evt_accepted", signature_valid=True).count() == 1


@pytest.mark.django_db
def test_a_source_seen_over_its_rate_is_refused_before_its_body_is_verified(client, settings):
    settings.WEBHOOK_REJECTED_RATE = "2/m"
    forged = [
        client.post(URL, b'{"id": "x"}', content_type="application/json", HTTP_X_TEST_SIGNATURE="forged").status_code
        for _ in range(5)
    ]
    assert forged == [400, 400, 400, 429, 429]
    assert VERIFIED["calls"] == 4  # the fifth was refused before the verifier ran
    assert WebhookEvent.objects.filter(signature_valid=False).count() == 3  # refused requests stored nothing
    body, signature = body_and_signature("evt_after")
    answer = client.post(URL, body, content_type="application/json", HTTP_X_TEST_SIGNATURE=signature)
    assert answer.status_code == 429 and answer["Retry-After"]  # the whole source, while over its rate
    other = client.post(URL, body, content_type="application/json", HTTP_X_TEST_SIGNATURE=signature,
                        REMOTE_ADDR="10.0.0.9")  # fmt: skip
    assert other.status_code == 200


@pytest.mark.django_db
def test_a_burst_in_one_message_applies_each_event_once_past_a_crashing_one():
    pks = []
    for event_id, extra in (("evt_a", {}), ("evt_crash", {"crash": True}), ("evt_b", {})):
        body, signature = body_and_signature(event_id, **extra)
        event, stored = webhook_receive(provider="intakepay", body=body, headers={"X-Test-Signature": signature})
        assert stored
        pks.append(event.pk)
    assert webhook_events_process(event_pks=pks + pks) == 5  # all but the crash; the repeats claim nothing
    assert APPLIED == Counter({"evt_a": 1, "evt_b": 1})
    statuses = dict(WebhookEvent.objects.filter(pk__in=pks).values_list("event_id", "status"))
    assert statuses == {"evt_a": "processed", "evt_crash": "processing", "evt_b": "processed"}  # the sweeper's
