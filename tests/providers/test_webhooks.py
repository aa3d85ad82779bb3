"""Webhook intake mechanics, with a test provider whose verifier is a plain HMAC."""

import hashlib
import hmac
import json
import threading
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from core.errors import InvalidRequest, PermissionDenied
from core.models import AuditLog
from providers.models import WebhookEvent
from providers.webhooks import (
    InvalidSignature,
    VerifiedEvent,
    register_handler,
    register_verifier,
    webhook_events_sweep,
    webhook_reprocess,
)

SECRET = b"test-secret"
APPLIED: Counter = Counter()
APPLIED_LOCK = threading.Lock()


def verify(body: bytes, headers: Mapping[str, str]) -> VerifiedEvent:
    expected = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, headers.get("X-Test-Signature", "")):
        raise InvalidSignature("signature does not match")
    payload = json.loads(body)
    return VerifiedEvent(payload["id"], payload["type"])


def apply_payment(event: WebhookEvent, payload: dict) -> None:
    if payload.get("fail"):
        raise InvalidRequest("handler refused the event")
    with APPLIED_LOCK:
        APPLIED[event.event_id] += 1


@pytest.fixture(autouse=True)
def _test_provider():
    register_verifier("testpay", verify)
    register_handler("testpay", "payment.paid", apply_payment)
    APPLIED.clear()


def signed(payload: dict, secret: bytes = SECRET) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    return body, {"X-Test-Signature": hmac.new(secret, body, hashlib.sha256).hexdigest()}


@pytest.fixture
def post(client, django_capture_on_commit_callbacks):
    """POST a signed event and run what would run on commit (the processing task)."""

    def send(payload: dict, secret: bytes = SECRET):
        body, headers = signed(payload, secret)
        with django_capture_on_commit_callbacks(execute=True):
            return client.post("/webhooks/testpay/", data=body, content_type="application/json", headers=headers)

    return send


@pytest.mark.django_db
def test_valid_event_is_stored_processed_once_and_duplicates_are_no_ops(post):
    event = {"id": "evt_1", "type": "payment.paid"}
    first, second = post(event), post(event)
    assert (first.status_code, first.json()["duplicate"]) == (200, False)
    assert (second.status_code, second.json()["duplicate"]) == (200, True)
    stored = WebhookEvent.objects.get()
    assert (stored.status, stored.attempts, stored.signature_valid) == (WebhookEvent.Status.PROCESSED, 1, True)
    assert json.loads(stored.body) == event
    assert APPLIED == {"evt_1": 1}


@pytest.mark.django_db
def test_bad_signature_is_refused_and_cannot_block_the_real_event(post):
    forged = post({"id": "evt_2", "type": "payment.paid"}, secret=b"wrong")
    assert forged.status_code == 400
    assert forged.json()["error"]["code"] == "invalid_signature"
    assert APPLIED == {}
    rejected = WebhookEvent.objects.get()
    assert (rejected.status, rejected.signature_valid, rejected.event_id) == ("rejected", False, "evt_2")

    real = post({"id": "evt_2", "type": "payment.paid"})
    assert (real.status_code, real.json()["duplicate"]) == (200, False)
    assert APPLIED == {"evt_2": 1}


@pytest.mark.django_db
def test_unknown_provider_and_wrong_method(client):
    assert client.post("/webhooks/nobody/", data=b"{}", content_type="application/json").status_code == 404
    assert client.get("/webhooks/testpay/").status_code == 405


@pytest.mark.django_db
def test_unhandled_event_types_are_ignored(post):
    post({"id": "evt_3", "type": "payment.refunded"})
    assert WebhookEvent.objects.get().status == WebhookEvent.Status.IGNORED


@pytest.mark.django_db
def test_failed_event_can_be_reprocessed_by_staff_with_permission(post, django_user_model):
    post({"id": "evt_4", "type": "payment.paid", "fail": True})
    event = WebhookEvent.objects.get()
    assert event.status == WebhookEvent.Status.FAILED
    assert "handler refused" in event.error

    staff = django_user_model.objects.create_user("ops", is_staff=True)
    with pytest.raises(PermissionDenied):
        webhook_reprocess(event_pk=event.pk, actor=staff)
    staff.user_permissions.add(Permission.objects.get(codename="reprocess_webhookevent"))
    staff = django_user_model.objects.get(pk=staff.pk)
    event.body = json.dumps({"id": "evt_4", "type": "payment.paid"})  # the handler's cause was fixed
    event.save(update_fields=["body"])
    assert webhook_reprocess(event_pk=event.pk, actor=staff).status == WebhookEvent.Status.PROCESSED
    assert APPLIED == {"evt_4": 1}
    assert AuditLog.objects.filter(action="providers.webhook.reprocess", object_id=str(event.pk)).exists()


@pytest.mark.django_db
def test_sweeper_requeues_events_whose_task_was_lost(post):
    post({"id": "evt_5", "type": "payment.paid"})
    WebhookEvent.objects.update(status=WebhookEvent.Status.RECEIVED, updated_at=timezone.now() - timedelta(minutes=2))
    APPLIED.clear()
    assert webhook_events_sweep() == 1
    assert WebhookEvent.objects.get().status == WebhookEvent.Status.PROCESSED
    assert APPLIED == {"evt_5": 1}


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_copies_apply_once(live_server):
    body, headers = signed({"id": "evt_many", "type": "payment.paid"})
    url = f"{live_server.url}/webhooks/testpay/"

    def deliver(_: int) -> int:
        return httpx.post(url, content=body, headers=headers, timeout=30).status_code

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(deliver, range(50)))
    assert statuses == [200] * 50
    assert WebhookEvent.objects.filter(event_id="evt_many").count() == 1
    assert APPLIED == {"evt_many": 1}


@pytest.mark.django_db
def test_sweeper_retries_failed_events_a_bounded_number_of_times(post):
    post({"id": "evt_6", "type": "payment.paid", "fail": True})
    event = WebhookEvent.objects.get()
    WebhookEvent.objects.update(updated_at=timezone.now() - timedelta(minutes=6))
    assert webhook_events_sweep() == 1
    event.refresh_from_db()
    assert (event.status, event.attempts) == (WebhookEvent.Status.FAILED, 2)
    WebhookEvent.objects.update(attempts=5, updated_at=timezone.now() - timedelta(minutes=6))
    assert webhook_events_sweep() == 0  # out of attempts: waits for staff
