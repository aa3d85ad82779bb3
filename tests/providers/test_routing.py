import uuid

import pytest

from core.money import Money
from providers.base import Unknown
from providers.breaker import breaker_for, shared_redis
from providers.models import CustomerDefaultMethod, PaymentMethod, RoutingDecision
from providers.routing import (
    LOWEST_FEE,
    Choice,
    NoPaymentMethod,
    NoRouteAvailable,
    route_payment,
    routing_decision_record,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("default_payment_config")]
GCASH, MAYA = Choice("gcash", "gcash"), Choice("maya", "maya_wallet")
CARD = Choice("stripe", "card")


@pytest.fixture(autouse=True)
def _own_breaker_state(settings):
    prefix = settings.PROVIDER_STATE_KEY_PREFIX = f"test:routing:{uuid.uuid4().hex}"
    yield
    client = shared_redis()
    if client is not None:
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)


def order(route) -> list[Choice]:
    return [Choice(c.provider, c.method) for c in route.candidates]


def open_circuit(provider: str) -> None:
    breaker = breaker_for(provider)
    while not breaker.state().is_open:
        breaker.record(Unknown(reason="timeout"))


def test_priority_order_with_fees():
    route = route_payment(amount=Money(100_000, "PHP"))
    assert route.source == "priority"
    assert order(route) == [GCASH, MAYA, CARD]
    assert [c.fee_minor for c in route.candidates] == [3_500 + 1_000, 2_500 + 1_500, 3_500 + 1_500]


def test_lowest_fee_strategy():
    assert order(route_payment(amount=Money(100_000, "PHP"), strategy=LOWEST_FEE)) == [MAYA, GCASH, CARD]


def test_preference_then_customer_default_lead(django_user_model):
    user = django_user_model.objects.create_user("buyer")
    CustomerDefaultMethod.objects.create(user=user, provider="maya", method="maya_wallet")
    assert order(route_payment(amount=Money(100_000, "PHP"), user=user))[0] == MAYA
    route = route_payment(amount=Money(100_000, "PHP"), user=user, preferred=CARD)
    assert (route.source, order(route)) == ("preference", [CARD, GCASH, MAYA])


def test_explicit_choice_is_the_only_candidate():
    route = route_payment(amount=Money(100_000, "PHP"), explicit=MAYA)
    assert (route.source, order(route)) == ("explicit", [MAYA])
    wrong_currency = route_payment(amount=Money(1_000, "USD"), explicit=GCASH)
    assert wrong_currency.candidates == []
    assert wrong_currency.skipped[0].reason == "does not take USD"


def test_limits_disabled_methods_and_open_circuits_are_skipped_with_reasons():
    PaymentMethod.objects.filter(provider="maya").update(enabled=False)
    open_circuit("gcash")
    route = route_payment(amount=Money(10_000_001, "PHP"))  # above PHP 100,000
    reasons = {skip.provider: skip.reason for skip in route.skipped}
    assert reasons["maya"] == "method disabled"
    assert reasons["gcash"] == "amount outside 1..10000000 PHP"
    assert "stripe" not in reasons
    assert order(route) == [CARD]
    small = route_payment(amount=Money(5_000, "PHP"))
    assert order(small) == [CARD]
    assert {skip.provider: skip.reason for skip in small.skipped}["gcash"] == "circuit open"


def test_every_decision_is_recorded_and_no_route_is_an_error():
    route = route_payment(amount=Money(100_000, "PHP"))
    decision = routing_decision_record(route=route, amount=Money(100_000, "PHP"), user=None, reference="pay_1")
    assert decision.candidates[0] == {
        "provider": "gcash",
        "method": "gcash",
        "fee_minor": 4_500,
        "platform_fee_minor": 0,
    }
    nothing = route_payment(amount=Money(100, "EUR"))
    with pytest.raises(NoPaymentMethod) as error:  # nothing we offer takes EUR: trying again will not help
        routing_decision_record(route=nothing, amount=Money(100, "EUR"), user=None)
    assert (error.value.http_status, error.value.retryable) == (400, False)
    assert RoutingDecision.objects.count() == 2


def test_no_route_is_a_503_only_while_a_usable_method_is_down():
    PaymentMethod.objects.filter(provider="maya").update(enabled=False)
    open_circuit("gcash")
    open_circuit("stripe")
    down = route_payment(amount=Money(5_000, "PHP"))
    with pytest.raises(NoRouteAvailable) as error:
        routing_decision_record(route=down, amount=Money(5_000, "PHP"), user=None)
    assert (error.value.http_status, error.value.retryable) == (503, True)
    too_big = route_payment(amount=Money(10**12, "PHP"))  # over every method's maximum, and the others are down
    with pytest.raises(NoRouteAvailable):
        routing_decision_record(route=too_big, amount=Money(10**12, "PHP"), user=None)
