"""GCash through PayMongo: the real client over real HTTP against the sandbox, webhooks included."""

import hashlib
import hmac
import json
import re
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from providers.base import Declined, Pending, Succeeded, Unknown
from providers.gcash.client import InvalidWebhookSignature, PayMongoClient
from providers.sandbox import paymongo as sandbox_paymongo
from providers.sandbox.server import Fault, Sandbox, SandboxRequest, SandboxResponse

RECEIVED: list[tuple[bytes, dict[str, str]]] = []
RECEIVER = "/test/paymongo-webhooks"
WEBHOOK_SECRET = "whsk_test_gcash_suite"


def install_receiver(sandbox: Sandbox) -> None:
    if any(route.operation == "test.paymongo.webhook" for route in sandbox.routes):
        return

    @sandbox.route("POST", RECEIVER, "test.paymongo.webhook")
    def receive(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
        RECEIVED.append((request.body, request.headers))
        return SandboxResponse(200, {})


@pytest.fixture
def box(sandbox: Sandbox, settings) -> Sandbox:
    settings.PAYMONGO_WEBHOOK_SECRET = WEBHOOK_SECRET
    install_receiver(sandbox)
    RECEIVED.clear()
    sandbox.webhooks.configure("paymongo", url=f"{sandbox.url}{RECEIVER}")
    return sandbox


@pytest.fixture
def client(box: Sandbox) -> PayMongoClient:
    return PayMongoClient()


@pytest.fixture
def state(box: Sandbox) -> sandbox_paymongo.PayMongoSandbox:
    return sandbox_paymongo.state_of(box)


def events(box: Sandbox) -> list[dict]:
    box.webhooks.wait_idle()
    return [json.loads(body)["data"] for body, _ in RECEIVED]


def create_source(client: PayMongoClient, key: str = "gcash-source-1", amount_minor: int = 10_000) -> Pending:
    result = client.source_create(
        amount_minor=amount_minor,
        currency="PHP",
        success_url="https://shop.example/paid",
        failed_url="https://shop.example/failed",
        idempotency_key=key,
    )
    assert isinstance(result, Pending), result
    return result


def authorize(box: Sandbox, source_id: str, **options: str) -> httpx.Response:
    return httpx.post(f"{box.url}/paymongo/_simulate/sources/{source_id}/authorize", json=options)


def paid_payment(box: Sandbox, client: PayMongoClient, amount_minor: int = 10_000) -> Succeeded:
    source = create_source(client, amount_minor=amount_minor)
    assert authorize(box, source.reference).status_code == 200
    payment = client.payment_create(
        source_id=source.reference, amount_minor=amount_minor, currency="PHP", idempotency_key="gcash-payment-1"
    )
    assert isinstance(payment, Succeeded), payment
    return payment


def signed(body: bytes, timestamp: int, secret: str = WEBHOOK_SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Paymongo-Signature": f"t={timestamp},te={digest},li="}


# --- the happy path, told by webhooks


def test_a_gcash_payment_goes_source_chargeable_paid_through_signed_webhooks(box, client):
    source = create_source(client)
    assert source.status == "pending"
    assert source.reference.startswith("src_")
    assert source.raw["attributes"]["amount"] == 10_000
    assert source.raw["attributes"]["redirect"]["checkout_url"].endswith(
        f"/paymongo/_simulate/sources/{source.reference}"
    )

    assert authorize(box, source.reference).status_code == 200
    [chargeable] = events(box)
    body, headers = RECEIVED[0]
    event = client.verify_webhook(body, headers)
    assert event["data"]["attributes"]["type"] == "source.chargeable"
    assert chargeable["attributes"]["data"]["id"] == source.reference
    assert chargeable["attributes"]["data"]["attributes"]["status"] == "chargeable"
    now_chargeable = client.source_get(source_id=source.reference)
    assert isinstance(now_chargeable, Pending)
    assert (now_chargeable.reference, now_chargeable.status) == (source.reference, "chargeable")

    payment = client.payment_create(
        source_id=chargeable["attributes"]["data"]["id"],
        amount_minor=10_000,
        currency="PHP",
        idempotency_key="gcash-payment-1",
    )
    assert isinstance(payment, Succeeded) and payment.status == "paid"
    assert payment.reference.startswith("pay_")
    assert (payment.raw["attributes"]["amount"], payment.raw["attributes"]["fee"]) == (10_000, 350 + 1_000)
    assert payment.raw["attributes"]["net_amount"] == 10_000 - 1_350
    paid = events(box)[1]
    assert paid["attributes"]["type"] == "payment.paid"
    assert paid["attributes"]["data"]["id"] == payment.reference
    assert client.verify_webhook(*RECEIVED[1])["data"]["id"] == paid["id"]

    assert isinstance(client.payment_get(payment_id=payment.reference), Succeeded)
    assert client.source_get(source_id=source.reference).status == "paid"
    assert box.calls["paymongo.sources.create"] == 1
    assert box.calls["paymongo.payments.create"] == 1


def test_a_failed_wallet_debit_is_declined_and_sends_payment_failed(box, client):
    source = create_source(client)
    authorize(box, source.reference, payment="failed", failed_code="insufficient_funds")
    result = client.payment_create(
        source_id=source.reference, amount_minor=10_000, currency="PHP", idempotency_key="gcash-payment-1"
    )
    assert isinstance(result, Declined)
    assert result.code == "insufficient_funds"
    assert [event["attributes"]["type"] for event in events(box)] == ["source.chargeable", "payment.failed"]
    [payment_id] = list(sandbox_paymongo.state_of(box).payments)
    assert client.payment_get(payment_id=payment_id).code == "insufficient_funds"
    assert client.source_get(source_id=source.reference).code == "cancelled"


# --- declines: known not done, nothing created


def test_a_payment_from_a_source_the_customer_has_not_authorized_is_declined(box, client, state):
    source = create_source(client)
    result = client.payment_create(
        source_id=source.reference, amount_minor=10_000, currency="PHP", idempotency_key="gcash-payment-1"
    )
    assert isinstance(result, Declined) and result.code == "resource_not_chargeable_state"
    assert state.payments == {}


def test_a_payment_for_another_amount_than_the_source_is_declined(box, client, state):
    source = create_source(client)
    authorize(box, source.reference)
    result = client.payment_create(
        source_id=source.reference, amount_minor=9_999, currency="PHP", idempotency_key="gcash-payment-1"
    )
    assert isinstance(result, Declined) and result.code == "parameter_invalid"
    assert state.payments == {}


def test_an_expired_source_is_declined_and_cannot_be_charged(box, client, state):
    source = create_source(client)
    assert httpx.post(f"{box.url}/paymongo/_simulate/sources/{source.reference}/expire").status_code == 200
    assert client.source_get(source_id=source.reference).code == "expired"
    assert authorize(box, source.reference).status_code == 409
    assert events(box) == []


def test_an_amount_below_the_minimum_is_declined_with_payMongos_code(box, client, state):
    result = client.source_create(
        amount_minor=1_999, currency="PHP", success_url="https://s", failed_url="https://f", idempotency_key="k"
    )
    assert isinstance(result, Declined)
    assert (result.code, result.retryable) == ("parameter_below_minimum", False)
    assert "2000" in result.reason
    assert state.sources == {}


def test_a_currency_other_than_php_is_declined_without_a_call(box, client):
    result = client.source_create(
        amount_minor=10_000, currency="USD", success_url="https://s", failed_url="https://f", idempotency_key="k"
    )
    assert isinstance(result, Declined) and result.code == "currency_not_supported"
    assert box.calls["paymongo.sources.create"] == 0


def test_a_wrong_secret_key_is_declined(box, state):
    result = PayMongoClient(secret_key="sk_test_wrong").source_create(
        amount_minor=10_000, currency="PHP", success_url="https://s", failed_url="https://f", idempotency_key="k"
    )
    assert isinstance(result, Declined) and result.code == "api_key_invalid"
    assert state.sources == {}


def test_an_unknown_object_is_declined_as_not_found(box, client):
    assert client.payment_get(payment_id="pay_nothere").code == "resource_not_found"
    assert client.refund_get(refund_id="ref_nothere").code == "resource_not_found"


def test_floats_and_missing_keys_are_bugs_not_results(box, client):
    not_an_int: Any = 100.0
    with pytest.raises(TypeError):
        client.source_create(
            amount_minor=not_an_int, currency="PHP", success_url="s", failed_url="f", idempotency_key="k"
        )
    with pytest.raises(ValueError, match="idempotency_key"):
        client.source_create(amount_minor=10_000, currency="PHP", success_url="s", failed_url="f", idempotency_key="")
    assert box.calls["paymongo.sources.create"] == 0


# --- refunds


def test_partial_refunds_add_up_to_the_paid_amount_and_no_further(box, client, state):
    payment = paid_payment(box, client)
    first = client.refund_create(
        payment_id=payment.reference,
        amount_minor=4_000,
        currency="PHP",
        reason="requested_by_customer",
        idempotency_key="refund-1",
    )
    assert isinstance(first, Pending) and first.status == "pending"
    too_much = client.refund_create(
        payment_id=payment.reference, amount_minor=6_001, currency="PHP", reason="others", idempotency_key="refund-2"
    )
    assert isinstance(too_much, Declined) and too_much.code == "parameter_above_maximum"
    rest = client.refund_create(
        payment_id=payment.reference, amount_minor=6_000, currency="PHP", reason="others", idempotency_key="refund-3"
    )
    assert isinstance(rest, Pending)
    one_more = client.refund_create(
        payment_id=payment.reference, amount_minor=100, currency="PHP", reason="others", idempotency_key="refund-4"
    )
    assert isinstance(one_more, Declined) and one_more.code == "parameter_above_maximum"
    assert sorted(refund["attributes"]["amount"] for refund in state.refunds.values()) == [4_000, 6_000]

    box.tick()
    settled = client.refund_get(refund_id=first.reference)
    assert isinstance(settled, Succeeded)
    assert (settled.reference, settled.status, settled.raw["attributes"]["amount"]) == (
        first.reference,
        "succeeded",
        4_000,
    )
    refund_events = [event for event in events(box) if event["attributes"]["type"] == "payment.refund.updated"]
    assert sorted(event["attributes"]["data"]["attributes"]["amount"] for event in refund_events) == [4_000, 6_000]
    refunds = client.payment_get(payment_id=payment.reference).raw["attributes"]["refunds"]
    assert sum(refund["attributes"]["amount"] for refund in refunds) == 10_000


def test_a_refund_of_an_unknown_payment_is_declined(box, client, state):
    result = client.refund_create(
        payment_id="pay_nothere", amount_minor=100, currency="PHP", reason="others", idempotency_key="refund-1"
    )
    assert isinstance(result, Declined) and result.code == "resource_not_found"
    assert state.refunds == {}


# --- idempotency: one object however often we ask


def test_the_same_idempotency_key_replays_the_first_source(box, client, state):
    first = create_source(client, key="order-7-source")
    again = create_source(client, key="order-7-source")
    assert again.reference == first.reference
    assert again.raw == first.raw
    assert len(state.sources) == 1
    assert box.calls["paymongo.sources.create"] == 2


def test_the_same_key_with_other_parameters_is_refused_and_creates_nothing(box, client, state):
    create_source(client, key="order-7-source")
    result = client.source_create(
        amount_minor=20_000, currency="PHP", success_url="https://shop.example/paid",
        failed_url="https://shop.example/failed", idempotency_key="order-7-source",
    )  # fmt: skip
    assert isinstance(result, Declined) and result.code == "idempotency_key_mismatch"
    assert len(state.sources) == 1


def test_a_replayed_refund_is_refunded_once(box, client, state):
    payment = paid_payment(box, client)
    arguments = {
        "payment_id": payment.reference,
        "amount_minor": 7_000,
        "currency": "PHP",
        "reason": "duplicate",
        "idempotency_key": "refund-1",
    }
    first, second = client.refund_create(**arguments), client.refund_create(**arguments)
    assert isinstance(first, Pending) and isinstance(second, Pending)
    assert second.reference == first.reference
    assert [refund["attributes"]["amount"] for refund in state.refunds.values()] == [7_000]


def test_a_replayed_decline_stays_declined(box, client, state):
    source = create_source(client)
    arguments = {"source_id": source.reference, "amount_minor": 10_000, "currency": "PHP", "idempotency_key": "p-1"}
    assert client.payment_create(**arguments).code == "resource_not_chargeable_state"
    authorize(box, source.reference)
    assert client.payment_create(**arguments).code == "resource_not_chargeable_state"  # the first answer, replayed
    assert state.payments == {}


# --- faults: unknown is unknown, and the replay resolves it


def test_a_503_is_unknown_and_the_retry_with_the_same_key_creates_one_payment(box, client, state):
    source = create_source(client)
    authorize(box, source.reference)
    box.add_fault(Fault(operation="paymongo.payments.create", kind="error", status=503))
    arguments = {"source_id": source.reference, "amount_minor": 10_000, "currency": "PHP", "idempotency_key": "p-1"}
    assert isinstance(client.payment_create(**arguments), Unknown)
    assert state.payments == {}
    retried = client.payment_create(**arguments)
    assert isinstance(retried, Succeeded)
    assert list(state.payments) == [retried.reference]


def unknown_then_resolved(box: Sandbox, operation: str, store: dict, create: Callable[[], Any]) -> None:
    """Applied at the provider, timed out for us: Unknown; the replay with the same key finds that one object."""
    before = set(store)
    box.add_fault(Fault(operation=operation, kind="applied_then_timeout"))
    outcome = create()
    assert isinstance(outcome, Unknown) and "Timeout" in outcome.reason
    created = set(store) - before
    assert len(created) == 1  # PayMongo did it; we could not tell
    resolved = create()
    assert isinstance(resolved, Succeeded | Pending)
    assert {resolved.reference} == created
    assert set(store) - before == created


def test_a_source_create_that_timed_out_after_applying_resolves_to_one_source(box, client, state):
    def create() -> Any:
        return client.source_create(
            amount_minor=10_000, currency="PHP", success_url="https://s", failed_url="https://f", idempotency_key="x-1"
        )

    unknown_then_resolved(box, "paymongo.sources.create", state.sources, create)


def test_a_payment_create_that_timed_out_after_applying_resolves_to_one_payment(box, client, state):
    source = create_source(client)
    authorize(box, source.reference)

    def create() -> Any:
        return client.payment_create(
            source_id=source.reference, amount_minor=10_000, currency="PHP", idempotency_key="x-1"
        )

    unknown_then_resolved(box, "paymongo.payments.create", state.payments, create)
    assert [event["attributes"]["type"] for event in events(box)] == ["source.chargeable", "payment.paid"]


def test_a_refund_create_that_timed_out_after_applying_resolves_to_one_refund(box, client, state):
    payment = paid_payment(box, client)

    def create() -> Any:
        return client.refund_create(
            payment_id=payment.reference, amount_minor=2_500, currency="PHP", reason="others", idempotency_key="x-1"
        )

    unknown_then_resolved(box, "paymongo.refunds.create", state.refunds, create)
    assert [refund["attributes"]["amount"] for refund in state.refunds.values()] == [2_500]


def test_a_reset_connection_after_sending_is_unknown(box, client, state):
    box.add_fault(Fault(operation="paymongo.sources.create", kind="reset"))
    result = client.source_create(
        amount_minor=10_000, currency="PHP", success_url="https://s", failed_url="https://f", idempotency_key="k"
    )
    assert isinstance(result, Unknown)
    assert state.sources == {}


def test_a_provider_that_cannot_be_reached_is_declined_as_not_sent(box):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = PayMongoClient(base_url=f"http://127.0.0.1:{port}").source_create(
        amount_minor=10_000, currency="PHP", success_url="https://s", failed_url="https://f", idempotency_key="k"
    )
    assert isinstance(result, Declined)
    assert (result.code, result.retryable) == ("not_sent", True)


# --- webhook signatures


def delivered_event(box: Sandbox, client: PayMongoClient) -> tuple[bytes, dict[str, str]]:
    source = create_source(client)
    authorize(box, source.reference)
    events(box)
    return RECEIVED[0]


def test_a_genuine_webhook_is_accepted(box, client):
    body, headers = delivered_event(box, client)
    assert headers["paymongo-signature"].endswith(",li=")
    assert client.verify_webhook(body, headers) == json.loads(body)


def test_a_tampered_body_is_rejected(box, client):
    body, headers = delivered_event(box, client)
    tampered = body.replace(b'"amount": 10000', b'"amount": 99999')
    assert tampered != body
    with pytest.raises(InvalidWebhookSignature, match="does not match"):
        client.verify_webhook(tampered, headers)


def test_a_webhook_signed_with_another_secret_is_rejected(box, client):
    body, headers = delivered_event(box, client)
    with pytest.raises(InvalidWebhookSignature, match="does not match"):
        PayMongoClient(webhook_secret="whsk_someone_else").verify_webhook(body, headers)


@pytest.mark.parametrize("offset", [-301, 301, -3600])
def test_stale_and_future_timestamps_are_rejected_even_when_correctly_signed(box, client, offset):
    body = b'{"data": {"id": "evt_1", "type": "event", "attributes": {"type": "payment.paid"}}}'
    with pytest.raises(InvalidWebhookSignature, match="300 s"):
        client.verify_webhook(body, signed(body, int(time.time()) + offset))


@pytest.mark.parametrize("offset", [-290, 0, 290])
def test_timestamps_within_the_tolerance_are_accepted(box, client, offset):
    body = b'{"data": {"id": "evt_1", "type": "event", "attributes": {"type": "payment.paid"}}}'
    assert client.verify_webhook(body, signed(body, int(time.time()) + offset))["data"]["id"] == "evt_1"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Paymongo-Signature": "garbage"}, {"Paymongo-Signature": "t=abc,te=00,li="}, {"Other": "t=1,te=00"}],
)
def test_absent_or_malformed_signatures_are_rejected(box, client, headers):
    with pytest.raises(InvalidWebhookSignature):
        client.verify_webhook(b"{}", headers)


def test_a_test_mode_signature_only_in_li_is_rejected(box, client):
    body = b'{"data": {}}'
    now = int(time.time())
    digest = signed(body, now)["Paymongo-Signature"].split("te=")[1].split(",")[0]
    with pytest.raises(InvalidWebhookSignature, match="no te signature"):
        client.verify_webhook(body, {"Paymongo-Signature": f"t={now},te=,li={digest}"})
