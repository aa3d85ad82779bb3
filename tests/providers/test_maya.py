"""Maya: the real client over real HTTP against the sandbox, webhooks included."""

import hashlib
import hmac
import json
import re
import socket
import time
from typing import Any

import httpx
import pytest

from providers.base import Declined, Pending, Succeeded, Unknown
from providers.maya.client import InvalidWebhookSignature, MayaClient
from providers.sandbox import maya as sandbox_maya
from providers.sandbox.server import Fault, Sandbox, SandboxRequest, SandboxResponse

RECEIVED: list[tuple[bytes, dict[str, str]]] = []
RECEIVER = "/test/maya-webhooks"
WEBHOOK_SECRET = "maya-webhook-test-suite"


def install_receiver(sandbox: Sandbox) -> None:
    if any(route.operation == "test.maya.webhook" for route in sandbox.routes):
        return

    @sandbox.route("POST", RECEIVER, "test.maya.webhook")
    def receive(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
        RECEIVED.append((request.body, request.headers))
        return SandboxResponse(200, {})


@pytest.fixture
def box(sandbox: Sandbox, settings) -> Sandbox:
    settings.MAYA_WEBHOOK_SECRET = WEBHOOK_SECRET
    install_receiver(sandbox)
    RECEIVED.clear()
    sandbox.webhooks.configure("maya", url=f"{sandbox.url}{RECEIVER}")
    return sandbox


@pytest.fixture
def client(box: Sandbox) -> MayaClient:
    return MayaClient()


@pytest.fixture
def state(box: Sandbox) -> sandbox_maya.MayaSandbox:
    return sandbox_maya.state_of(box)


def checkout(client: MayaClient, reference: str = "order-42", amount_minor: int = 150_050) -> Any:
    return client.checkout_create(
        amount_minor=amount_minor,
        currency="PHP",
        request_reference_number=reference,
        success_url="https://shop.example/paid",
        failure_url="https://shop.example/failed",
        cancel_url="https://shop.example/cancelled",
    )


def customer(box: Sandbox, payment_id: str, action: str) -> httpx.Response:
    return httpx.post(f"{box.url}/maya/_simulate/payments/{payment_id}/{action}")


def paid(box: Sandbox, client: MayaClient, amount_minor: int = 150_050) -> str:
    created = checkout(client, amount_minor=amount_minor)
    assert isinstance(created, Pending), created
    assert customer(box, created.reference, "succeed").status_code == 200
    return created.reference


def webhooks(box: Sandbox) -> list[dict]:
    box.webhooks.wait_idle()
    return [json.loads(body) for body, _ in RECEIVED]


def signed(body: bytes, timestamp: int, secret: str = WEBHOOK_SECRET, nonce: str = "ab" * 16) -> dict[str, str]:
    digest = hmac.new(secret.encode(), f"{timestamp}.{nonce}.".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Maya-Webhook-Timestamp": str(timestamp), "X-Maya-Webhook-Signature": f"nonce={nonce},v1={digest}"}


# --- checkout, told by webhooks


def test_a_checkout_is_pending_until_maya_says_payment_success(box, client, state):
    created = checkout(client)
    assert isinstance(created, Pending) and created.status == "PENDING_TOKEN"
    assert created.raw["redirectUrl"] == f"{box.url}/maya/v2/checkout?id={created.reference}"
    assert state.payments[created.reference].amount_minor == 150_050  # 1500.50 sent as an exact number
    assert client.payment_get(payment_id=created.reference).status == "PENDING_TOKEN"
    assert isinstance(client.payment_get(payment_id=created.reference), Pending)

    assert customer(box, created.reference, "succeed").status_code == 200
    [event] = webhooks(box)
    verified = client.verify_webhook(*RECEIVED[0])
    assert verified == event
    assert (event["id"], event["status"], event["amount"], event["currency"]) == (
        created.reference,
        "PAYMENT_SUCCESS",
        "1500.50",
        "PHP",
    )
    assert (event["requestReferenceNumber"], event["isPaid"], event["canVoid"]) == ("order-42", True, True)
    result = client.payment_get(payment_id=created.reference)
    assert isinstance(result, Succeeded) and result.status == "PAYMENT_SUCCESS"
    assert box.calls["maya.checkouts.create"] == 1


@pytest.mark.parametrize(
    ("action", "status"),
    [("fail", "PAYMENT_FAILED"), ("expire", "PAYMENT_EXPIRED"), ("cancel", "PAYMENT_CANCELLED")],
)
def test_a_checkout_that_does_not_complete_is_declined_and_told_by_its_webhook(box, client, action, status):
    created = checkout(client)
    assert customer(box, created.reference, action).status_code == 200
    [event] = webhooks(box)
    assert (event["id"], event["status"], event["isPaid"]) == (created.reference, status, False)
    assert client.verify_webhook(*RECEIVED[0])["status"] == status
    result = client.payment_get(payment_id=created.reference)
    assert isinstance(result, Declined) and result.code == status
    assert customer(box, created.reference, "succeed").status_code == 409  # final


def test_a_second_checkout_with_the_same_reference_answers_the_first(box, client, state):
    first, second = checkout(client), checkout(client)
    assert isinstance(second, Pending)
    assert second.reference == first.reference
    assert second.raw == first.raw
    assert list(state.payments) == [first.reference]
    assert box.calls["maya.checkouts.create"] == 2
    other = checkout(client, reference="order-43")
    assert other.reference != first.reference
    assert len(state.payments) == 2


# --- declines


def test_an_amount_with_more_than_two_decimals_or_not_positive_is_declined(box, client, state, settings):
    response = httpx.post(
        f"{box.url}/maya/checkout/v1/checkouts",
        auth=(settings.MAYA_PUBLIC_KEY, ""),
        content=b'{"totalAmount": {"value": 10.005, "currency": "PHP"}, "requestReferenceNumber": "r-1"}',
    )
    assert (response.status_code, response.json()["code"]) == (400, "2553")
    with pytest.raises(ValueError, match="positive"):
        checkout(client, amount_minor=0)
    assert state.payments == {}


def test_keys_are_checked_per_endpoint(box, client, state, settings):
    wrong_public = MayaClient(public_key="pk-wrong")
    result = checkout(wrong_public)
    assert isinstance(result, Declined) and result.code == "UNAUTHORIZED"
    assert state.payments == {}
    created = checkout(client)
    public_as_secret = MayaClient(secret_key=settings.MAYA_PUBLIC_KEY)
    assert public_as_secret.payment_get(payment_id=created.reference).code == "UNAUTHORIZED"


def test_a_currency_other_than_php_is_declined_without_a_call(box, client):
    result = client.checkout_create(
        amount_minor=1_000,
        currency="USD",
        request_reference_number="r-1",
        success_url="s",
        failure_url="f",
        cancel_url="c",
    )
    assert isinstance(result, Declined) and result.code == "currency_not_supported"
    assert box.calls["maya.checkouts.create"] == 0


def test_an_unknown_payment_is_declined_as_not_found(box, client):
    assert client.payment_get(payment_id="no-such-payment").code == "NOT_FOUND"
    assert client.payment_find(request_reference_number="no-such-order") == Declined(
        reason="Maya has no payment with this requestReferenceNumber", code="not_found"
    )


# --- void on the day, refunds from the next day


def test_a_payment_is_voided_whole_on_its_day(box, client, state):
    payment_id = paid(box, client)
    voided = client.payment_void(payment_id=payment_id, reason="customer changed mind", request_reference_number="v-1")
    assert isinstance(voided, Succeeded) and voided.status == "SUCCESS"
    assert voided.raw["payment"] == payment_id
    assert voided.raw["totalAmount"] == {"amount": "1500.50", "currency": "PHP"}
    assert client.payment_get(payment_id=payment_id).status == "VOIDED"
    again = client.payment_void(payment_id=payment_id, reason="again", request_reference_number="v-1")
    assert isinstance(again, Declined) and again.code == "VOID_NOT_ALLOWED"
    assert len(state.payments[payment_id].voids) == 1
    refund = client.payment_refund(
        payment_id=payment_id, amount_minor=100, currency="PHP", reason="x", request_reference_number="r-1"
    )
    assert isinstance(refund, Declined) and refund.code == "REFUND_NOT_ALLOWED"


def test_a_payment_cannot_be_voided_after_its_day_nor_before_it_is_paid(box, client):
    pending = checkout(client, reference="order-pending")
    assert client.payment_void(payment_id=pending.reference, reason="x", request_reference_number="v-0").code == (
        "VOID_NOT_ALLOWED"
    )
    payment_id = paid(box, client)
    box.tick()  # the day is over
    late = client.payment_void(payment_id=payment_id, reason="late", request_reference_number="v-1")
    assert isinstance(late, Declined) and late.code == "VOID_NOT_ALLOWED"
    assert client.payment_get(payment_id=payment_id).status == "PAYMENT_SUCCESS"


def test_a_payment_cannot_be_refunded_on_its_day(box, client, state):
    payment_id = paid(box, client)
    result = client.payment_refund(
        payment_id=payment_id, amount_minor=100, currency="PHP", reason="x", request_reference_number="r-1"
    )
    assert isinstance(result, Declined) and result.code == "REFUND_NOT_ALLOWED"
    assert state.payments[payment_id].refunds == []


def test_partial_refunds_add_up_to_the_captured_amount_and_no_further(box, client, state):
    payment_id = paid(box, client)
    assert customer(box, payment_id, "settle").status_code == 200

    def refund(amount_minor: int, reference: str) -> Any:
        return client.payment_refund(
            payment_id=payment_id,
            amount_minor=amount_minor,
            currency="PHP",
            reason="returned goods",
            request_reference_number=reference,
        )

    first = refund(50_025, "r-1")
    assert isinstance(first, Succeeded) and first.raw["totalAmount"] == {"amount": "500.25", "currency": "PHP"}
    too_much = refund(100_026, "r-2")
    assert isinstance(too_much, Declined) and too_much.code == "REFUND_AMOUNT_EXCEEDED"
    rest = refund(100_025, "r-3")
    assert isinstance(rest, Succeeded)
    nothing_left = refund(1, "r-4")
    assert isinstance(nothing_left, Declined) and nothing_left.code == "REFUND_NOT_ALLOWED"  # fully refunded

    assert state.payments[payment_id].refunded_minor == 150_050
    assert client.payment_get(payment_id=payment_id).status == "REFUNDED"
    found = client.refund_find(payment_id=payment_id, request_reference_number="r-3")
    assert isinstance(found, Succeeded) and found.reference == rest.reference
    assert client.refund_find(payment_id=payment_id, request_reference_number="r-2").code == "not_found"
    assert [event["status"] for event in webhooks(box)] == ["PAYMENT_SUCCESS"]  # refunds send no webhook


# --- faults and their resolution by our reference


def test_a_checkout_applied_then_timed_out_is_unknown_and_found_by_its_reference(box, client, state):
    box.add_fault(Fault(operation="maya.checkouts.create", kind="applied_then_timeout"))
    outcome = checkout(client)
    assert isinstance(outcome, Unknown) and "Timeout" in outcome.reason
    [payment_id] = list(state.payments)  # Maya made it; we could not tell

    found = client.payment_find(request_reference_number="order-42")
    assert isinstance(found, Pending)
    assert (found.reference, found.status) == (payment_id, "PENDING_TOKEN")
    retried = checkout(client)
    assert retried.reference == payment_id
    assert list(state.payments) == [payment_id]
    customer(box, payment_id, "succeed")
    assert client.payment_find(request_reference_number="order-42").status == "PAYMENT_SUCCESS"


def test_a_refund_applied_then_timed_out_is_unknown_and_found_by_its_reference(box, client, state):
    payment_id = paid(box, client)
    box.tick()
    box.add_fault(Fault(operation="maya.payments.refund", kind="applied_then_timeout"))
    outcome = client.payment_refund(
        payment_id=payment_id, amount_minor=10_000, currency="PHP", reason="x", request_reference_number="refund-9"
    )
    assert isinstance(outcome, Unknown)
    [refund] = state.payments[payment_id].refunds
    found = client.refund_find(payment_id=payment_id, request_reference_number="refund-9")
    assert isinstance(found, Succeeded) and found.reference == refund["id"]
    assert state.payments[payment_id].refunded_minor == 10_000


def test_a_void_applied_then_timed_out_is_unknown_and_the_payment_tells(box, client):
    payment_id = paid(box, client)
    box.add_fault(Fault(operation="maya.payments.void", kind="applied_then_timeout"))
    outcome = client.payment_void(payment_id=payment_id, reason="x", request_reference_number="v-1")
    assert isinstance(outcome, Unknown)
    assert client.payment_get(payment_id=payment_id).status == "VOIDED"


def test_a_503_is_unknown_and_nothing_was_made(box, client, state):
    box.add_fault(Fault(operation="maya.checkouts.create", kind="error", status=503))
    outcome = checkout(client)
    assert isinstance(outcome, Unknown) and outcome.reason == "provider answered 503"
    assert state.payments == {}
    assert client.payment_find(request_reference_number="order-42").code == "not_found"


def test_a_timeout_without_applying_is_unknown_too(box, client, state):
    box.add_fault(Fault(operation="maya.checkouts.create", kind="timeout"))
    assert isinstance(checkout(client), Unknown)
    assert state.payments == {}


def test_a_provider_that_cannot_be_reached_is_declined_as_not_sent(box):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = checkout(MayaClient(base_url=f"http://127.0.0.1:{port}"))
    assert isinstance(result, Declined)
    assert (result.code, result.retryable) == ("not_sent", True)


# --- webhook signatures


def delivered(box: Sandbox, client: MayaClient) -> tuple[bytes, dict[str, str]]:
    paid(box, client)
    webhooks(box)
    return RECEIVED[0]


def test_a_genuine_webhook_is_accepted(box, client):
    body, headers = delivered(box, client)
    assert re.fullmatch(r"nonce=[0-9a-f]{32},v1=[0-9a-f]{64}", headers["x-maya-webhook-signature"])
    assert client.verify_webhook(body, headers)["status"] == "PAYMENT_SUCCESS"


def test_a_tampered_body_is_rejected(box, client):
    body, headers = delivered(box, client)
    tampered = body.replace(b'"amount": "1500.50"', b'"amount": "9500.50"')
    assert tampered != body
    with pytest.raises(InvalidWebhookSignature, match="does not match"):
        client.verify_webhook(tampered, headers)


def test_a_replaced_nonce_is_rejected(box, client):
    body, headers = delivered(box, client)
    signature = re.sub("nonce=[0-9a-f]+", "nonce=" + "0" * 32, headers["x-maya-webhook-signature"])
    assert signature != headers["x-maya-webhook-signature"]
    forged = {**headers, "x-maya-webhook-signature": signature}
    with pytest.raises(InvalidWebhookSignature, match="does not match"):
        client.verify_webhook(body, forged)


def test_a_webhook_signed_with_another_secret_is_rejected(box, client):
    body, headers = delivered(box, client)
    with pytest.raises(InvalidWebhookSignature, match="does not match"):
        MayaClient(webhook_secret="someone-else").verify_webhook(body, headers)


@pytest.mark.parametrize("offset", [-301, 301, -86_400])
def test_stale_and_future_timestamps_are_rejected_even_when_correctly_signed(box, client, offset):
    body = b'{"id": "p-1", "status": "PAYMENT_SUCCESS"}'
    with pytest.raises(InvalidWebhookSignature, match="300 s"):
        client.verify_webhook(body, signed(body, int(time.time()) + offset))


@pytest.mark.parametrize("offset", [-290, 0, 290])
def test_timestamps_within_the_tolerance_are_accepted(box, client, offset):
    body = b'{"id": "p-1", "status": "PAYMENT_SUCCESS"}'
    assert client.verify_webhook(body, signed(body, int(time.time()) + offset)) == {
        "id": "p-1",
        "status": "PAYMENT_SUCCESS",
    }


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Maya-Webhook-Signature": "nonce=ab,v1=cd"},
        {"X-Maya-Webhook-Timestamp": "1700000000x", "X-Maya-Webhook-Signature": "nonce=ab,v1=cd"},
        {"X-Maya-Webhook-Timestamp": str(int(time.time())), "X-Maya-Webhook-Signature": "v1=cd"},
        {"X-Maya-Webhook-Timestamp": str(int(time.time())), "X-Maya-Webhook-Signature": "junk"},
    ],
)
def test_absent_or_malformed_signatures_are_rejected(box, client, headers):
    with pytest.raises(InvalidWebhookSignature):
        client.verify_webhook(b"{}", headers)
