"""What the money-moving protocol needs from the sandbox and the Stripe client, over real HTTP: refusals of any
shape injected as faults, providers forgetting idempotency keys (their window passed), and authoritative
lookups by our key (`find_payment_intent`, `find_refund`, `find_transfer`) that answer the object, Absent or
Unknown."""

from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from providers.base import Absent, Declined, Pending, ProviderResult, Succeeded, Unknown
from providers.gcash.client import PayMongoClient
from providers.maya.client import MayaClient
from providers.paypal import PayoutItemRequest, PayPalClient
from providers.sandbox import maya as sandbox_maya
from providers.sandbox import paymongo as sandbox_paymongo
from providers.sandbox.paypal import paypal_sandbox
from providers.sandbox.server import Fault, Sandbox
from providers.sandbox.stripe import StripeState, state_of
from providers.stripe import StripeProviderClient


@pytest.fixture
def state(sandbox: Sandbox) -> StripeState:
    return state_of(sandbox)


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[StripeProviderClient]:
    with StripeProviderClient() as stripe_client:
        yield stripe_client


@pytest.fixture
def stripe_http(sandbox: Sandbox, settings) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {settings.STRIPE_API_KEY}"}
    with httpx.Client(base_url=f"{sandbox.url}/stripe/v1", headers=headers, timeout=2.0) as http:
        yield http


def hold(client: StripeProviderClient, key: str = "hold-1", **options) -> ProviderResult:
    return client.create_payment_intent(
        amount_minor=10_000, currency="usd", payment_method="pm_card_visa", idempotency_key=key, **options
    )


def charged(client: StripeProviderClient, key: str = "charge-1") -> str:
    result = hold(client, key, capture="automatic")
    assert isinstance(result, Succeeded) and result.status == "succeeded", result
    return result.reference


def transfer(client: StripeProviderClient, key: str, group: str = "deal-1", amount_minor: int = 700) -> ProviderResult:
    return client.create_transfer(
        amount_minor=amount_minor, currency="usd", destination="acct_seller", transfer_group=group, idempotency_key=key
    )


def add_fault(sandbox: Sandbox, **fault) -> httpx.Response:
    return httpx.post(f"{sandbox.url}/_control/faults", json=fault)


def forget_keys(sandbox: Sandbox, payload: dict) -> httpx.Response:
    return httpx.post(f"{sandbox.url}/_control/forget_keys", json=payload)


# --- faults answering exactly what a test asks for
def test_an_error_fault_answers_its_body_and_headers_without_applying(sandbox, state, stripe_http):
    refusal = {"error": {"type": "invalid_request_error", "code": "resource_missing", "message": "No such thing"}}
    added = add_fault(
        sandbox,
        operation="stripe.payment_intents.create",
        kind="error",
        status=404,
        body=refusal,
        headers={"Request-Id": "req_injected", "X-Why": "test"},
    )
    assert added.status_code == 201

    form = {"amount": "100", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}
    injected = stripe_http.post("/payment_intents", data=form)
    normal = stripe_http.post("/payment_intents", data=form)

    assert injected.status_code == 404 and injected.json() == refusal
    assert (injected.headers["Request-Id"], injected.headers["X-Why"]) == ("req_injected", "test")
    assert normal.status_code == 200 and normal.json()["id"] in state.payment_intents
    assert len(state.payment_intents) == 1  # the injected answer applied nothing
    assert sandbox.calls == {"stripe.payment_intents.create": 2}


def test_an_error_fault_without_body_keeps_the_generic_answer(sandbox, stripe_http):
    sandbox.add_fault(Fault(operation="stripe.refunds.retrieve", kind="error", status=502))

    answer = stripe_http.get("/refunds/re_123")

    assert answer.status_code == 502
    assert answer.json() == {"error": {"message": "injected fault", "type": "api_error"}}


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected_code", "retryable"),
    [
        (
            402,
            {"error": {"type": "card_error", "code": "card_declined", "decline_code": "do_not_honor", "message": "x"}},
            None,
            "do_not_honor",
            False,
        ),
        (
            429,
            {"error": {"type": "invalid_request_error", "code": "rate_limit", "message": "Too many requests"}},
            {"Retry-After": "1"},
            "rate_limit",
            True,
        ),
        (
            400,
            {"error": {"type": "invalid_request_error", "code": "charge_already_refunded", "message": "x"}},
            None,
            "charge_already_refunded",
            False,
        ),
    ],
)
def test_the_client_reads_an_injected_refusal_like_stripe_s_own(
    client, sandbox, state, status, body, headers, expected_code, retryable
):
    fault = Fault(operation="stripe.payment_intents.create", kind="error", status=status, body=body, headers=headers)
    sandbox.add_fault(fault)

    result = hold(client)

    assert isinstance(result, Declined) and (result.code, result.retryable) == (expected_code, retryable)
    assert state.payment_intents == {}


def test_an_injected_idempotency_error_reads_as_unknown(client, sandbox, state):
    body = {"error": {"type": "idempotency_error", "message": "Keys for idempotent requests..."}}
    sandbox.add_fault(Fault(operation="stripe.payment_intents.create", kind="error", status=400, body=body))

    result = hold(client)

    assert isinstance(result, Unknown)  # an earlier request under the key may have moved money
    assert state.payment_intents == {}


def test_body_and_headers_belong_to_error_faults_only(sandbox):
    refused = add_fault(sandbox, operation="stripe.*", kind="timeout", body={"error": {}})
    not_an_object = add_fault(sandbox, operation="stripe.*", kind="error", body=["no"])

    assert refused.status_code == 400 and "error" in refused.json()["error"]
    assert not_an_object.status_code == 400
    with pytest.raises(ValueError):
        sandbox.add_fault(Fault(operation="stripe.*", kind="latency", headers={"Retry-After": "1"}))
    assert sandbox.faults == []


# --- forgetting idempotency keys: the provider's window passed
def test_after_stripe_forgets_its_keys_the_same_key_makes_a_second_intent(client, sandbox, state):
    first, replayed = hold(client), hold(client)
    assert replayed.reference == first.reference and len(state.payment_intents) == 1

    answer = forget_keys(sandbox, {"provider": "stripe"})
    second = hold(client)

    assert answer.status_code == 200 and answer.json() == {"forgotten": ["stripe"]}
    assert isinstance(second, Succeeded) and second.reference != first.reference
    assert set(state.payment_intents) == {first.reference, second.reference}  # the first one stays
    assert hold(client).reference == second.reference  # the key is remembered again from now on


def test_forgetting_another_provider_s_keys_leaves_stripe_s(client, sandbox, state):
    first = hold(client)

    assert sandbox.forget_idempotency_keys("paypal") == ["paypal"]

    assert hold(client).reference == first.reference and len(state.payment_intents) == 1


def test_forgetting_every_provider_and_refusing_an_unknown_one(sandbox):
    everyone = forget_keys(sandbox, {})
    star = forget_keys(sandbox, {"provider": "*"})
    unknown = forget_keys(sandbox, {"provider": "venmo"})

    assert everyone.json() == star.json() == {"forgotten": ["maya", "paymongo", "paypal", "stripe"]}
    assert unknown.status_code == 400 and "venmo" in unknown.json()["error"]


def test_after_paypal_forgets_a_reused_sender_batch_id_makes_a_new_batch(sandbox):
    items = [PayoutItemRequest(receiver="seller@example.com", amount_minor=1_000, currency="USD", sender_item_id="i1")]
    state = paypal_sandbox(sandbox)
    with PayPalClient() as paypal:
        paypal.forget_token()
        first = paypal.create_batch(sender_batch_id="payout-7", items=items)
        again = paypal.create_batch(sender_batch_id="payout-7", items=items)
        forget_keys(sandbox, {"provider": "paypal"})
        after = paypal.create_batch(sender_batch_id="payout-7", items=items)

    assert isinstance(first, Pending) and isinstance(again, Pending) and isinstance(after, Pending)
    assert again.reference == first.reference  # within the window: the duplicate points at the first batch
    assert after.reference != first.reference
    assert set(state.batches) == {first.reference, after.reference}
    assert sandbox.calls["paypal.payouts.create"] == 3


def test_after_paymongo_forgets_an_idempotency_key_makes_a_new_source(sandbox):
    def source(client: PayMongoClient):
        return client.source_create(
            amount_minor=10_000,
            currency="PHP",
            success_url="https://shop.example/paid",
            failed_url="https://shop.example/failed",
            idempotency_key="gcash-1",
        )

    client = PayMongoClient()
    first, replayed = source(client), source(client)
    sandbox.forget_idempotency_keys("paymongo")
    after = source(client)

    assert isinstance(first, Pending) and replayed.reference == first.reference
    assert isinstance(after, Pending) and after.reference != first.reference
    assert set(sandbox_paymongo.state_of(sandbox).sources) == {first.reference, after.reference}


def test_after_maya_forgets_a_request_reference_number_makes_a_new_checkout(sandbox, settings):
    def checkout(client: MayaClient):
        return client.checkout_create(
            amount_minor=150_050,
            currency="PHP",
            request_reference_number="order-42",
            success_url="https://shop.example/paid",
            failure_url="https://shop.example/failed",
            cancel_url="https://shop.example/cancelled",
        )

    client = MayaClient()
    first, replayed = checkout(client), checkout(client)
    sandbox.forget_idempotency_keys("maya")
    after, again = checkout(client), checkout(client)

    assert isinstance(first, Pending) and replayed.reference == first.reference
    assert isinstance(after, Pending) and after.reference != first.reference and again.reference == after.reference
    assert set(sandbox_maya.state_of(sandbox).payments) == {first.reference, after.reference}
    by_rrn = httpx.get(f"{sandbox.url}/maya/payments/v1/payment-rrns/order-42", auth=(settings.MAYA_SECRET_KEY, ""))
    assert sorted(payment["id"] for payment in by_rrn.json()) == sorted([first.reference, after.reference])


# --- the Stripe API the lookups use
def test_search_finds_intents_by_metadata_newest_first_with_their_metadata(client, sandbox, stripe_http):
    older = hold(client, "k-1", metadata={"order": "o-1", "shop": "a"}).reference
    newer = hold(client, "k-2", metadata={"order": "o-2", "shop": "a"}).reference
    hold(client, "k-3", metadata={"order": "o-3", "shop": "b"})

    both = stripe_http.get("/payment_intents/search", params={"query": "metadata['shop']:'a'"}).json()
    one = stripe_http.get(
        "/payment_intents/search", params={"query": "metadata['shop']:'a' AND metadata[\"order\"]:\"o-1\""}
    ).json()
    none = stripe_http.get("/payment_intents/search", params={"query": "metadata['shop']:'z'"}).json()

    assert [intent["id"] for intent in both["data"]] == [newer, older]
    assert both["data"][1]["metadata"] == {"order": "o-1", "shop": "a", "idempotency_key": "k-1"}
    assert (both["object"], both["has_more"], both["next_page"], both["url"]) == (
        "search_result",
        False,
        None,
        "/v1/payment_intents/search",
    )
    assert [intent["id"] for intent in one["data"]] == [older]
    assert none["data"] == []
    assert sandbox.calls["stripe.payment_intents.search"] == 3


def test_search_pages_by_limit_and_next_page(client, stripe_http):
    ids = [hold(client, f"k-{n}", metadata={"batch": "b"}).reference for n in range(3)]

    first = stripe_http.get("/payment_intents/search", params={"query": "metadata['batch']:'b'", "limit": 2}).json()
    rest = stripe_http.get(
        "/payment_intents/search", params={"query": "metadata['batch']:'b'", "limit": 2, "page": first["next_page"]}
    ).json()

    assert [intent["id"] for intent in first["data"]] == ids[:0:-1] and first["has_more"] is True
    assert [intent["id"] for intent in rest["data"]] == ids[:1] and rest["has_more"] is False


@pytest.mark.parametrize(
    "params",
    [
        {"query": "status:'succeeded'"},
        {"query": "metadata['a']:'b' OR metadata['c']:'d'"},
        {"query": "metadata['a']:'b' AND"},
        {"query": "metadata['a']:'b"},
        {},
        {"query": "metadata['a']:'b'", "limit": "101"},
        {"query": "metadata['a']:'b'", "limit": "0"},
    ],
)
def test_search_refuses_what_it_cannot_parse(stripe_http, params):
    answer = stripe_http.get("/payment_intents/search", params=params)

    assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error"


def test_a_refused_search_is_not_stored_under_an_idempotency_key(stripe_http, state):
    answer = stripe_http.get(
        "/payment_intents/search", params={"query": "nonsense"}, headers={"Idempotency-Key": "search-1"}
    )

    assert answer.status_code == 400 and state.idempotency == {}


def test_refunds_list_by_payment_intent_newest_first_with_metadata(client, sandbox, stripe_http):
    intent_id = charged(client)
    other_intent = charged(client, "charge-2")
    first = client.refund(payment_intent_id=intent_id, amount_minor=100, idempotency_key="r-1", metadata={"n": "1"})
    second = client.refund(payment_intent_id=intent_id, amount_minor=200, idempotency_key="r-2")
    client.refund(payment_intent_id=other_intent, amount_minor=300, idempotency_key="r-3")

    listing = stripe_http.get("/refunds", params={"payment_intent": intent_id}).json()
    limited = stripe_http.get("/refunds", params={"payment_intent": intent_id, "limit": 1}).json()
    after = stripe_http.get("/refunds", params={"payment_intent": intent_id, "starting_after": second.reference})

    assert [refund["id"] for refund in listing["data"]] == [second.reference, first.reference]
    assert listing["data"][1]["metadata"] == {"n": "1", "idempotency_key": "r-1"}
    assert (listing["object"], listing["has_more"], listing["url"]) == ("list", False, "/v1/refunds")
    assert [refund["id"] for refund in limited["data"]] == [second.reference] and limited["has_more"] is True
    assert [refund["id"] for refund in after.json()["data"]] == [first.reference]
    assert sandbox.calls["stripe.refunds.list"] == 3


def test_transfers_list_carries_metadata(client, stripe_http):
    made = client.create_transfer(
        amount_minor=500,
        currency="usd",
        destination="acct_seller",
        transfer_group="deal-9",
        metadata={"escrow": "e-9"},
        idempotency_key="t-9",
    )

    listing = stripe_http.get("/transfers", params={"transfer_group": "deal-9"}).json()

    assert [row["id"] for row in listing["data"]] == [made.reference]
    assert listing["data"][0]["metadata"] == {"escrow": "e-9", "idempotency_key": "t-9"}


# --- find_payment_intent
def test_find_payment_intent_answers_the_intent_made_under_the_key(client, sandbox, state):
    made = hold(client, "hold-1")
    hold(client, "hold-10")  # a key that merely starts the same is someone else's

    found = client.find_payment_intent(idempotency_key="hold-1")

    assert isinstance(found, Succeeded) and (found.reference, found.status) == (made.reference, "requires_capture")
    assert found.raw["metadata"]["idempotency_key"] == "hold-1"
    assert sandbox.calls["stripe.payment_intents.search"] == 1
    assert sandbox.calls["stripe.payment_intents.create"] == 2  # the lookup sent nothing


def test_find_payment_intent_after_an_applied_then_timed_out_create(client, sandbox, state):
    sandbox.add_fault(Fault(operation="stripe.payment_intents.create", kind="applied_then_timeout"))

    lost = hold(client, "hold-lost")
    found = client.find_payment_intent(idempotency_key="hold-lost")

    assert isinstance(lost, Unknown)
    assert isinstance(found, Succeeded) and found.reference == next(iter(state.payment_intents))
    assert len(state.payment_intents) == 1


def test_find_payment_intent_is_absent_when_the_create_never_applied(client, sandbox, state):
    sandbox.add_fault(Fault(operation="stripe.payment_intents.create", kind="error", status=503))

    lost = hold(client, "hold-1")
    found = client.find_payment_intent(idempotency_key="hold-1")

    assert isinstance(lost, Unknown) and state.payment_intents == {}
    assert isinstance(found, Absent)


def test_find_payment_intent_is_unknown_when_search_fails(client, sandbox):
    hold(client, "hold-1")
    sandbox.add_fault(Fault(operation="stripe.payment_intents.search", kind="error", status=503))

    found = client.find_payment_intent(idempotency_key="hold-1")

    assert isinstance(found, Unknown) and "503" in found.reason


def test_find_payment_intent_answers_the_oldest_when_a_forgotten_key_made_two(client, sandbox, state):
    first = hold(client, "hold-1")
    sandbox.forget_idempotency_keys("stripe")
    second = hold(client, "hold-1")

    found = client.find_payment_intent(idempotency_key="hold-1")

    assert first.reference != second.reference
    assert isinstance(found, Succeeded) and found.reference == first.reference


def test_find_payment_intent_quotes_keys_with_quotes(client):
    made = hold(client, "it's-1\\x")

    found = client.find_payment_intent(idempotency_key="it's-1\\x")

    assert isinstance(found, Succeeded) and found.reference == made.reference


def test_a_recent_attempt_not_yet_searchable_is_unknown_not_absent(client, state):
    state.search_lag_seconds = 60  # Stripe Search lags writes
    made = hold(client, "hold-1")
    started = timezone.now()

    recent = client.find_payment_intent(idempotency_key="hold-1", first_attempt_at=started)
    unvouched = client.find_payment_intent(idempotency_key="hold-1")
    old = client.find_payment_intent(idempotency_key="hold-1", first_attempt_at=started - timedelta(hours=2))

    assert isinstance(made, Succeeded) and len(state.payment_intents) == 1
    assert isinstance(recent, Unknown) and "lag" in recent.reason
    assert isinstance(unvouched, Absent) and isinstance(old, Absent)  # the caller vouched for the age


# --- find_refund
def test_find_refund_answers_the_refund_made_under_the_key(client, sandbox):
    intent_id = charged(client)
    client.refund(payment_intent_id=intent_id, amount_minor=100, idempotency_key="refund-other")
    made = client.refund(payment_intent_id=intent_id, amount_minor=300, idempotency_key="refund-1")

    found = client.find_refund(payment_intent_id=intent_id, idempotency_key="refund-1")

    assert isinstance(found, Succeeded) and (found.reference, found.raw["amount"]) == (made.reference, 300)
    assert sandbox.calls["stripe.refunds.list"] == 1 and sandbox.calls["stripe.refunds.create"] == 2


def test_find_refund_after_an_applied_then_timed_out_refund(client, sandbox, state):
    intent_id = charged(client)
    sandbox.add_fault(Fault(operation="stripe.refunds.create", kind="applied_then_timeout"))

    lost = client.refund(payment_intent_id=intent_id, amount_minor=700, idempotency_key="refund-1")
    found = client.find_refund(payment_intent_id=intent_id, idempotency_key="refund-1")

    assert isinstance(lost, Unknown)
    assert isinstance(found, Succeeded) and found.reference == next(iter(state.refunds))
    assert found.raw["amount"] == 700 and len(state.refunds) == 1


def test_find_refund_is_absent_when_nothing_was_refunded(client, sandbox, state):
    intent_id = charged(client)
    client.refund(payment_intent_id=intent_id, amount_minor=100, idempotency_key="refund-other")
    sandbox.add_fault(Fault(operation="stripe.refunds.create", kind="timeout"))

    lost = client.refund(payment_intent_id=intent_id, amount_minor=700, idempotency_key="refund-1")
    found = client.find_refund(payment_intent_id=intent_id, idempotency_key="refund-1")

    assert isinstance(lost, Unknown) and len(state.refunds) == 1
    assert isinstance(found, Absent)


def test_find_refund_is_unknown_when_the_list_fails(client, sandbox):
    intent_id = charged(client)
    client.refund(payment_intent_id=intent_id, amount_minor=100, idempotency_key="refund-1")
    sandbox.add_fault(Fault(operation="stripe.refunds.list", kind="error", status=503))

    found = client.find_refund(payment_intent_id=intent_id, idempotency_key="refund-1")

    assert isinstance(found, Unknown) and "503" in found.reason


def test_find_refund_follows_pages(client, sandbox, monkeypatch):
    monkeypatch.setattr("providers.stripe.client.MAX_LOOKUP_PAGES", 5)
    intent_id = charged(client)
    made = client.refund(payment_intent_id=intent_id, amount_minor=10, idempotency_key="refund-0")
    for n in range(1, 101):
        client.refund(payment_intent_id=intent_id, amount_minor=10, idempotency_key=f"refund-{n}")

    found = client.find_refund(payment_intent_id=intent_id, idempotency_key="refund-0")

    assert isinstance(found, Succeeded) and found.reference == made.reference
    assert sandbox.calls["stripe.refunds.list"] == 2


# --- find_transfer
def test_find_transfer_answers_the_transfer_made_under_the_key(client, sandbox):
    transfer(client, "t-other")
    transfer(client, "t-2", group="deal-2")
    made = transfer(client, "t-1", amount_minor=900)

    found = client.find_transfer(transfer_group="deal-1", idempotency_key="t-1")
    elsewhere = client.find_transfer(transfer_group="deal-2", idempotency_key="t-1")

    assert isinstance(found, Succeeded) and (found.reference, found.raw["amount"]) == (made.reference, 900)
    assert found.raw["transfer_group"] == "deal-1"
    assert isinstance(elsewhere, Absent)  # the key, but not in that group
    assert sandbox.calls["stripe.transfers.list"] == 2 and sandbox.calls["stripe.transfers.create"] == 3


def test_find_transfer_after_an_applied_then_timed_out_transfer(client, sandbox, state):
    sandbox.add_fault(Fault(operation="stripe.transfers.create", kind="applied_then_timeout"))

    lost = transfer(client, "t-1")
    found = client.find_transfer(transfer_group="deal-1", idempotency_key="t-1")

    assert isinstance(lost, Unknown)
    assert isinstance(found, Succeeded) and found.reference == next(iter(state.transfers))
    assert len(state.transfers) == 1


def test_find_transfer_is_absent_when_nothing_was_transferred(client, sandbox, state):
    transfer(client, "t-other")
    sandbox.add_fault(Fault(operation="stripe.transfers.create", kind="reset"))

    lost = transfer(client, "t-1")
    found = client.find_transfer(transfer_group="deal-1", idempotency_key="t-1")
    empty_group = client.find_transfer(transfer_group="deal-none", idempotency_key="t-1")

    assert isinstance(lost, Unknown) and len(state.transfers) == 1
    assert isinstance(found, Absent) and isinstance(empty_group, Absent)


def test_find_transfer_is_unknown_when_the_list_fails(client, sandbox):
    transfer(client, "t-1")
    sandbox.add_fault(Fault(operation="stripe.transfers.list", kind="error", status=503))

    found = client.find_transfer(transfer_group="deal-1", idempotency_key="t-1")

    assert isinstance(found, Unknown) and "503" in found.reason


def test_transfers_in_group_is_unchanged(client):
    made = transfer(client, "t-1")

    listed = client.transfers_in_group(transfer_group="deal-1")

    assert isinstance(listed, list) and [result.reference for result in listed] == [made.reference]
