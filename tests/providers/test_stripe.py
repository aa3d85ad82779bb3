"""The Stripe client over real HTTP against the sandbox: results, idempotency, faults and signed webhooks."""

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from providers.base import Declined, Pending, ProviderResult, Succeeded, Unknown
from providers.sandbox.server import Fault, Sandbox, SandboxRequest, SandboxResponse
from providers.sandbox.stripe import StripeState, state_of
from providers.stripe import StripeProviderClient, WebhookSignatureError, verify_webhook

RECEIVED: list[tuple[bytes, str]] = []
SIGNATURE = re.compile(r"^t=(\d+),v1=([0-9a-f]{64})$")


@pytest.fixture
def state(sandbox: Sandbox) -> StripeState:
    return state_of(sandbox)


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[StripeProviderClient]:
    with StripeProviderClient() as stripe_client:
        yield stripe_client


def hold(client: StripeProviderClient, key: str = "hold-1", amount_minor: int = 10_000, **options) -> ProviderResult:
    options.setdefault("payment_method", "pm_card_visa")
    return client.create_payment_intent(amount_minor=amount_minor, currency="usd", idempotency_key=key, **options)


def charge(client: StripeProviderClient, key: str = "charge-1", amount_minor: int = 10_000) -> Succeeded:
    result = hold(client, key, amount_minor, capture="automatic")
    assert isinstance(result, Succeeded)
    return result


def only(values: dict) -> dict:
    assert len(values) == 1, values
    return next(iter(values.values()))


# --- PaymentIntents
def test_a_hold_authorizes_without_capturing(client, sandbox, state, settings):
    result = hold(client, metadata={"order": "o-1"}, transfer_group="group-1")

    assert isinstance(result, Succeeded) and result.status == "requires_capture"
    intent = only(state.payment_intents)
    assert result.reference == intent["id"] and intent["id"].startswith("pi_")
    assert (intent["amount"], intent["amount_capturable"], intent["amount_received"]) == (10_000, 10_000, 0)
    assert (intent["capture_method"], intent["metadata"], intent["transfer_group"]) == (
        "manual",
        {"order": "o-1", "idempotency_key": "hold-1"},  # our key rides along, to find the intent by it
        "group-1",
    )
    assert state.charges[intent["latest_charge"]]["captured"] is False
    assert sandbox.calls == {"stripe.payment_intents.create": 1}  # reached /stripe/v1/payment_intents
    assert (settings.STRIPE_API_KEY, "hold-1") in state.idempotency  # our key went out as Idempotency-Key


def test_automatic_capture_charges_at_once(client, state):
    result = charge(client)

    assert result.status == "succeeded"
    intent = state.payment_intents[result.reference]
    assert (intent["amount_received"], intent["amount_capturable"]) == (10_000, 0)
    assert state.charges[intent["latest_charge"]]["amount_captured"] == 10_000


def test_a_partial_capture_takes_that_amount_and_only_once(client, state):
    intent_id = hold(client).reference

    captured = client.capture(payment_intent_id=intent_id, amount_minor=6_000, idempotency_key="capture-1")
    again = client.capture(payment_intent_id=intent_id, amount_minor=4_000, idempotency_key="capture-2")

    assert isinstance(captured, Succeeded) and captured.status == "succeeded"
    assert state.payment_intents[intent_id]["amount_received"] == 6_000
    assert state.charges[state.payment_intents[intent_id]["latest_charge"]]["amount_captured"] == 6_000
    assert isinstance(again, Declined) and again.code == "payment_intent_unexpected_state"


def test_a_full_capture_without_amount_takes_the_whole_hold(client, state):
    intent_id = hold(client, amount_minor=2_500).reference

    result = client.capture(payment_intent_id=intent_id, idempotency_key="capture-1")

    assert isinstance(result, Succeeded) and result.raw["amount_received"] == 2_500


def test_capturing_more_than_the_hold_is_declined(client, state):
    intent_id = hold(client).reference

    result = client.capture(payment_intent_id=intent_id, amount_minor=10_001, idempotency_key="capture-1")

    assert isinstance(result, Declined) and result.code == "amount_too_large"
    assert state.payment_intents[intent_id]["status"] == "requires_capture"


def test_cancel_voids_a_hold_and_nothing_can_be_captured_after(client, state):
    intent_id = hold(client).reference

    canceled = client.cancel(payment_intent_id=intent_id, reason="requested_by_customer", idempotency_key="void-1")
    capture = client.capture(payment_intent_id=intent_id, idempotency_key="capture-1")

    assert isinstance(canceled, Succeeded) and canceled.status == "canceled"
    assert state.payment_intents[intent_id]["cancellation_reason"] == "requested_by_customer"
    assert state.payment_intents[intent_id]["amount_capturable"] == 0
    assert isinstance(capture, Declined) and capture.code == "payment_intent_unexpected_state"


def test_a_captured_payment_cannot_be_canceled(client):
    result = client.cancel(payment_intent_id=charge(client).reference, idempotency_key="void-1")

    assert isinstance(result, Declined) and result.code == "payment_intent_unexpected_state"


@pytest.mark.parametrize(
    ("payment_method", "code"),
    [
        ("pm_card_chargeDeclined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card"),
    ],
)
def test_declined_cards_are_declined_and_leave_the_intent_waiting_for_a_payment_method(
    client, state, payment_method, code
):
    result = hold(client, payment_method=payment_method)

    assert isinstance(result, Declined) and result.code == code and not result.retryable
    intent = only(state.payment_intents)
    assert intent["status"] == "requires_payment_method" and intent["last_payment_error"]["type"] == "card_error"
    assert state.charges[intent["latest_charge"]]["status"] == "failed"
    retrieved = client.retrieve_payment_intent(payment_intent_id=intent["id"])
    assert isinstance(retrieved, Pending) and retrieved.status == "requires_payment_method"


def test_an_unknown_payment_method_is_declined(client, state):
    result = hold(client, payment_method="pm_card_nonsense")

    assert isinstance(result, Declined) and result.code == "resource_missing"
    assert state.payment_intents == {}


def test_retrieve_answers_the_current_state_or_declined_when_missing(client):
    intent_id = hold(client).reference

    found = client.retrieve_payment_intent(payment_intent_id=intent_id)
    missing = client.retrieve_payment_intent(payment_intent_id="pi_missing")

    assert isinstance(found, Succeeded) and (found.reference, found.status) == (intent_id, "requires_capture")
    assert isinstance(missing, Declined) and missing.code == "resource_missing"


# --- Refunds
def test_partial_refunds_add_up_to_the_captured_amount_and_no_further(client, state):
    intent_id = charge(client).reference

    first = client.refund(payment_intent_id=intent_id, amount_minor=4_000, idempotency_key="refund-1")
    too_much = client.refund(payment_intent_id=intent_id, amount_minor=6_001, idempotency_key="refund-2")
    rest = client.refund(payment_intent_id=intent_id, amount_minor=6_000, idempotency_key="refund-3")
    more = client.refund(payment_intent_id=intent_id, amount_minor=1, idempotency_key="refund-4")

    assert isinstance(first, Succeeded) and first.reference.startswith("re_") and first.raw["amount"] == 4_000
    assert isinstance(too_much, Declined) and too_much.code == "amount_too_large"
    assert isinstance(rest, Succeeded) and rest.raw["amount"] == 6_000
    assert isinstance(more, Declined) and more.code == "charge_already_refunded"
    refunded = state.charges[state.payment_intents[intent_id]["latest_charge"]]
    assert (refunded["amount_refunded"], refunded["refunded"]) == (10_000, True)
    assert sorted(refund["amount"] for refund in state.refunds.values()) == [4_000, 6_000]


def test_refunds_are_capped_by_a_partial_capture(client, state):
    intent_id = hold(client).reference
    client.capture(payment_intent_id=intent_id, amount_minor=6_000, idempotency_key="capture-1")

    above = client.refund(payment_intent_id=intent_id, idempotency_key="refund-1", amount_minor=6_001)
    whole = client.refund(payment_intent_id=intent_id, idempotency_key="refund-2")

    assert isinstance(above, Declined) and above.code == "amount_too_large"
    assert isinstance(whole, Succeeded) and whole.raw["amount"] == 6_000


def test_a_hold_cannot_be_refunded(client, state):
    result = client.refund(payment_intent_id=hold(client).reference, idempotency_key="refund-1")

    assert isinstance(result, Declined) and result.code == "payment_intent_unexpected_state"
    assert state.refunds == {}


def test_retrieve_refund(client):
    refund_id = client.refund(payment_intent_id=charge(client).reference, amount_minor=300, idempotency_key="r-1")
    result = client.retrieve_refund(refund_id=refund_id.reference)

    assert isinstance(result, Succeeded) and (result.status, result.raw["amount"]) == ("succeeded", 300)


# --- Connect transfers
def test_transfers_carry_their_group_and_reverse_in_parts(client, state):
    created = client.create_transfer(
        amount_minor=1_000,
        currency="USD",
        destination="acct_seller1",
        transfer_group="group-1",
        metadata={"escrow": "e-1"},
        idempotency_key="transfer-1",
    )
    transfer_id = created.reference
    part = client.reverse_transfer(transfer_id=transfer_id, amount_minor=300, idempotency_key="reversal-1")
    above = client.reverse_transfer(transfer_id=transfer_id, amount_minor=701, idempotency_key="reversal-2")
    rest = client.reverse_transfer(transfer_id=transfer_id, idempotency_key="reversal-3")
    again = client.reverse_transfer(transfer_id=transfer_id, idempotency_key="reversal-4")

    assert isinstance(created, Succeeded) and transfer_id.startswith("tr_") and created.status == "paid"
    transfer = state.transfers[transfer_id]
    assert (transfer["currency"], transfer["destination"], transfer["transfer_group"]) == (
        "usd",
        "acct_seller1",
        "group-1",
    )
    assert transfer["metadata"] == {"escrow": "e-1", "idempotency_key": "transfer-1"}
    assert isinstance(part, Succeeded) and part.reference.startswith("trr_") and part.raw["amount"] == 300
    assert isinstance(above, Declined) and above.code == "amount_too_large"
    assert isinstance(rest, Succeeded) and rest.raw["amount"] == 700
    assert isinstance(again, Declined) and again.code == "amount_too_large"
    retrieved = client.retrieve_transfer(transfer_id=transfer_id)
    assert isinstance(retrieved, Succeeded) and retrieved.status == "reversed"
    assert (retrieved.raw["amount_reversed"], retrieved.raw["reversals"]["total_count"]) == (1_000, 2)


def test_a_transfer_to_something_not_an_account_is_declined(client, state):
    result = client.create_transfer(
        amount_minor=1_000, currency="usd", destination="seller1", idempotency_key="transfer-1"
    )

    assert isinstance(result, Declined) and result.code == "resource_missing"
    assert state.transfers == {}


# --- idempotency
def test_the_same_key_replays_the_first_answer(client, sandbox, state):
    first, second = hold(client), hold(client)

    assert isinstance(second, Succeeded) and second.reference == first.reference
    assert len(state.payment_intents) == 1
    assert sandbox.calls == {"stripe.payment_intents.create": 2}


def test_a_decline_is_replayed_too(client, sandbox, state):
    first = hold(client, payment_method="pm_card_chargeDeclined")
    second = hold(client, payment_method="pm_card_chargeDeclined")

    assert isinstance(second, Declined) and second == first
    assert len(state.payment_intents) == 1 and len(state.charges) == 1
    assert sandbox.calls == {"stripe.payment_intents.create": 2}


def test_the_same_key_with_other_parameters_is_refused(client, state):
    hold(client, amount_minor=10_000)

    result = hold(client, amount_minor=9_000)

    assert isinstance(result, Unknown) and "idempotency key" in result.reason  # an earlier request used the key
    assert [intent["amount"] for intent in state.payment_intents.values()] == [10_000]


def test_replayed_capture_and_refund_move_money_once(client, state):
    intent_id = hold(client).reference
    captures = [client.capture(payment_intent_id=intent_id, amount_minor=8_000, idempotency_key="c-1") for _ in "ab"]
    refunds = [client.refund(payment_intent_id=intent_id, amount_minor=500, idempotency_key="r-1") for _ in "ab"]

    assert all(isinstance(result, Succeeded) for result in captures + refunds)
    assert refunds[0].reference == refunds[1].reference and len(state.refunds) == 1
    paid = state.charges[state.payment_intents[intent_id]["latest_charge"]]
    assert (paid["amount_captured"], paid["amount_refunded"]) == (8_000, 500)


def test_a_key_still_in_flight_answers_409_and_the_second_caller_sees_unknown(client, settings, state):
    state.processing_delay_seconds = 0.5
    first: list[ProviderResult] = []

    def first_caller() -> None:
        with StripeProviderClient() as other_client:
            first.append(hold(other_client))

    thread = threading.Thread(target=first_caller)
    thread.start()
    wait_for(lambda: (settings.STRIPE_API_KEY, "hold-1") in state.idempotency)

    concurrent = hold(client)
    thread.join()

    assert isinstance(concurrent, Unknown) and "409" in concurrent.reason
    assert isinstance(first[0], Succeeded) and len(state.payment_intents) == 1
    assert hold(client).reference == first[0].reference


def test_the_sandbox_forgets_keys_after_the_window_like_stripe(client, state):
    state.idempotency_window_seconds = 0
    first, second = hold(client), hold(client)

    assert first.reference != second.reference and len(state.payment_intents) == 2


def test_sync_refuses_to_replay_past_the_window(client, sandbox):
    result = client.sync_payment_intent(
        first_attempt_at=timezone.now() - timedelta(hours=24),
        amount_minor=10_000,
        currency="usd",
        payment_method="pm_card_visa",
        idempotency_key="hold-1",
    )

    assert isinstance(result, Unknown) and "24 h" in result.reason
    assert sandbox.calls == {}


# --- authentication
def test_a_wrong_api_key_is_declined_and_nothing_happens(sandbox, state):
    with StripeProviderClient(api_key="pk_test_publishable") as publishable:
        result = hold(publishable)

    assert isinstance(result, Declined) and result.code == "authentication_error"
    assert state.payment_intents == {} and state.idempotency == {}
    bare = httpx.post(f"{sandbox.url}/stripe/v1/payment_intents", data={"amount": "100", "currency": "usd"})
    assert bare.status_code == 401 and "API key" in bare.json()["error"]["message"]


# --- faults
@pytest.mark.parametrize(("kind", "status"), [("error", 503), ("error", 500), ("reset", 0), ("timeout", 0)])
def test_faults_before_applying_are_unknown_and_a_retry_with_the_key_applies_once(client, sandbox, state, kind, status):
    sandbox.add_fault(Fault(operation="stripe.payment_intents.create", kind=kind, status=status or 503))

    failed = hold(client)
    assert isinstance(failed, Unknown)
    assert state.payment_intents == {}

    retried = hold(client)
    assert isinstance(retried, Succeeded) and len(state.payment_intents) == 1


def test_a_rate_limit_is_declined_and_retryable(client, sandbox, state):
    sandbox.add_fault(Fault(operation="stripe.transfers.create", kind="error", status=429))

    result = client.create_transfer(amount_minor=100, currency="usd", destination="acct_1", idempotency_key="t-1")

    assert isinstance(result, Declined) and result.retryable and result.code == "rate_limit"


def test_applied_then_timed_out_create_resolves_by_replay_to_exactly_one_intent(client, sandbox, state):
    sandbox.add_fault(Fault(operation="stripe.payment_intents.create", kind="applied_then_timeout"))
    started = timezone.now()

    lost = hold(client)
    assert isinstance(lost, Unknown) and "ReadTimeout" in lost.reason
    assert len(state.payment_intents) == 1

    resolved = client.sync_payment_intent(
        first_attempt_at=started,
        amount_minor=10_000,
        currency="usd",
        payment_method="pm_card_visa",
        idempotency_key="hold-1",
    )
    assert isinstance(resolved, Succeeded) and resolved.status == "requires_capture"
    assert resolved.reference == only(state.payment_intents)["id"]
    assert sandbox.calls == {"stripe.payment_intents.create": 2}


@pytest.mark.parametrize("operation", ["capture", "refund", "transfer", "reversal"])
def test_applied_then_timed_out_money_moves_resolve_by_replay_without_moving_twice(client, sandbox, state, operation):
    intent_id = charge(client).reference if operation == "refund" else hold(client).reference
    transfer_id = client.create_transfer(
        amount_minor=500, currency="usd", destination="acct_1", idempotency_key="t-0"
    ).reference
    send: dict[str, Callable[[], ProviderResult]] = {
        "capture": lambda: client.capture(payment_intent_id=intent_id, amount_minor=700, idempotency_key="k"),
        "refund": lambda: client.refund(payment_intent_id=intent_id, amount_minor=700, idempotency_key="k"),
        "transfer": lambda: client.create_transfer(
            amount_minor=700, currency="usd", destination="acct_1", idempotency_key="k"
        ),
        "reversal": lambda: client.reverse_transfer(transfer_id=transfer_id, amount_minor=200, idempotency_key="k"),
    }
    sandbox.add_fault(Fault(operation="stripe.*", kind="applied_then_timeout"))

    assert isinstance(send[operation](), Unknown)
    resolved = send[operation]()

    assert isinstance(resolved, Succeeded)
    paid = state.charges[state.payment_intents[intent_id]["latest_charge"]]
    moved = {
        "capture": paid["amount_captured"],
        "refund": paid["amount_refunded"],
        "transfer": sum(transfer["amount"] for transfer in state.transfers.values()) - 500,
        "reversal": state.transfers[transfer_id]["amount_reversed"],
    }
    assert moved[operation] == {"reversal": 200}.get(operation, 700)


def test_a_server_error_on_retrieve_is_unknown(client, sandbox):
    intent_id = hold(client).reference
    sandbox.add_fault(Fault(operation="stripe.payment_intents.retrieve", kind="error", status=502))

    result = client.retrieve_payment_intent(payment_intent_id=intent_id)

    assert isinstance(result, Unknown) and "502" in result.reason


def test_a_connection_that_never_opened_is_declined_not_sent(sandbox):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with StripeProviderClient(base_url=f"http://127.0.0.1:{closed_port}/stripe") as offline:
        result = hold(offline)

    assert isinstance(result, Declined) and result.code == "not_sent" and result.retryable
    assert sandbox.calls == {}


# --- webhooks
def install_receiver(sandbox: Sandbox) -> None:
    if any(route.operation == "test.stripe_webhooks" for route in sandbox.routes):
        return

    @sandbox.route("POST", "/_test/stripe/webhooks", "test.stripe_webhooks")
    def receive(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
        RECEIVED.append((request.body, request.header("stripe-signature")))
        return SandboxResponse(200, {})


@pytest.fixture
def received(sandbox: Sandbox) -> Callable[[], list[tuple[bytes, str]]]:
    install_receiver(sandbox)
    RECEIVED.clear()
    sandbox.webhooks.configure("stripe", url=f"{sandbox.url}/_test/stripe/webhooks")

    def delivered() -> list[tuple[bytes, str]]:
        sandbox.webhooks.wait_idle()
        return list(RECEIVED)

    return delivered


def event_types(deliveries: list[tuple[bytes, str]]) -> list[str]:
    return [verify_webhook(body, signature)["type"] for body, signature in deliveries]


def test_events_are_signed_like_stripe_and_verify(client, received):
    intent_id = hold(client).reference
    client.capture(payment_intent_id=intent_id, idempotency_key="capture-1")

    deliveries = received()

    assert all(SIGNATURE.match(signature) for _, signature in deliveries)
    # Delivered in parallel, as Stripe does: in no promised order.
    events = sorted((verify_webhook(body, signature) for body, signature in deliveries), key=lambda e: e["type"])
    assert [event["type"] for event in events] == [
        "payment_intent.amount_capturable_updated",
        "payment_intent.succeeded",
    ]
    assert [event["data"]["object"]["status"] for event in events] == ["requires_capture", "succeeded"]
    assert all(event["id"].startswith("evt_") and event["livemode"] is False for event in events)
    assert events[1]["data"]["object"]["id"] == intent_id and events[1]["request"]["idempotency_key"] == "capture-1"


def test_each_operation_sends_its_events(client, received):
    hold(client, key="declined", payment_method="pm_card_chargeDeclined")
    client.cancel(payment_intent_id=hold(client).reference, idempotency_key="void-1")
    client.refund(payment_intent_id=charge(client).reference, amount_minor=100, idempotency_key="refund-1")
    transfer_id = client.create_transfer(
        amount_minor=100, currency="usd", destination="acct_1", idempotency_key="t-1"
    ).reference
    client.reverse_transfer(transfer_id=transfer_id, idempotency_key="reversal-1")

    assert sorted(event_types(received())) == sorted(  # delivered in parallel: in no promised order
        [
            "payment_intent.payment_failed",
            "payment_intent.amount_capturable_updated",
            "payment_intent.canceled",
            "payment_intent.succeeded",
            "charge.refunded",
            "refund.created",
            "transfer.created",
            "transfer.reversed",
        ]
    )


def test_a_replay_sends_no_second_event(client, received):
    hold(client)
    hold(client)

    assert event_types(received()) == ["payment_intent.amount_capturable_updated"]


def test_verify_webhook_rejects_a_tampered_body_a_wrong_secret_and_stale_or_future_timestamps(
    client, received, settings
):
    hold(client, amount_minor=1_000)
    [(body, signature)] = received()
    signed_at = int(SIGNATURE.match(signature)[1])

    assert verify_webhook(body, signature, now=signed_at + 300)["data"]["object"]["amount"] == 1_000
    assert verify_webhook(body, signature, now=signed_at - 300)["type"] == "payment_intent.amount_capturable_updated"
    with pytest.raises(WebhookSignatureError, match="signature"):
        verify_webhook(body.replace(b'"amount": 1000', b'"amount": 9000'), signature)
    with pytest.raises(WebhookSignatureError, match="old"):
        verify_webhook(body, signature, now=signed_at + 301)
    with pytest.raises(WebhookSignatureError, match="future"):
        verify_webhook(body, signature, now=signed_at - 301)
    with pytest.raises(WebhookSignatureError, match="t="):
        verify_webhook(body, "v1=" + signature.split("v1=")[1])
    settings.STRIPE_WEBHOOK_SECRET = "whsec_someone_else"
    with pytest.raises(WebhookSignatureError, match="signature"):
        verify_webhook(body, signature)


def test_the_sandbox_signs_with_the_secret_configured_at_send_time(client, received, settings):
    settings.STRIPE_WEBHOOK_SECRET = "whsec_rotated"
    hold(client)
    [(body, signature)] = received()

    assert verify_webhook(body, signature)["type"] == "payment_intent.amount_capturable_updated"
    with pytest.raises(WebhookSignatureError):
        verify_webhook(body, signature, secret="whsec_sandbox")


def wait_for(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)
