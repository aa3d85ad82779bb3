"""Spend limits: every applicable cap counts an outflow, or none does; concurrent outflows never pass a cap."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection, transaction
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.models import AuditLog
from core.money import Money
from core.roles import roles_sync
from escrow import limits
from escrow.limits import SpendLimitExceeded, spend_release, spend_reserve, spend_usage
from escrow.models import SpendCounter, SpendLimit, SpendReservation

pytestmark = pytest.mark.django_db

PHP = "PHP"


def php(minor: int) -> Money:
    return Money(minor, PHP)


def limit(window: str = "day", *, scope: str = "user", user: User | None = None, amount=None, count=None):
    return SpendLimit.objects.create(
        scope=scope, user=user, currency=PHP, window=window, max_amount_minor=amount, max_count=count
    )


@pytest.fixture
def alice() -> User:
    return User.objects.create_user("alice")


@pytest.fixture
def bob() -> User:
    return User.objects.create_user("bob")


def used(spend_limit: SpendLimit, user: User | None = None) -> tuple[int, int]:
    counter = SpendCounter.objects.filter(limit=spend_limit, subject_id=user.pk if user else 0).first()
    return (counter.amount_minor, counter.count) if counter else (0, 0)


def test_an_outflow_within_the_caps_is_counted_against_each(alice):
    daily = limit("day", amount=10_000)
    hourly = limit("hour", count=3)
    everyone = limit("month", scope="global", amount=1_000_000)
    spend_reserve(user=alice, amount=php(2_500), reference="purchase:1")
    assert used(daily, alice) == (2_500, 1)
    assert used(hourly, alice) == (2_500, 1)
    assert used(everyone) == (2_500, 1)


def test_going_over_the_amount_cap_is_refused_with_when_it_resets_and_counts_nothing(alice):
    daily = limit("day", amount=10_000)
    everyone = limit("day", scope="global", amount=1_000_000)
    spend_reserve(user=alice, amount=php(9_000), reference="purchase:1")
    with pytest.raises(SpendLimitExceeded) as refused:
        spend_reserve(user=alice, amount=php(1_001), reference="purchase:2")
    error = refused.value
    assert error.http_status == 429
    assert "daily limit (₱10.00 left)" in error.user_message
    assert "resets" in error.action_required
    assert error.details["remaining_minor"] == 1_000
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert error.details["resets_at"] == (today + timedelta(days=1)).isoformat()
    assert 0 < error.retry_after_seconds <= 86_400 + 1
    assert used(daily, alice) == (9_000, 1)
    assert used(everyone) == (9_000, 1)  # the global counter raised before the refusal was rolled back
    assert not SpendReservation.objects.filter(reference="purchase:2").exists()
    spend_reserve(user=alice, amount=php(1_000), reference="purchase:3")  # exactly up to the cap
    assert used(daily, alice) == (10_000, 2)


def test_the_count_cap_refuses_the_next_outflow(alice):
    limit("hour", count=2)
    spend_reserve(user=alice, amount=php(1), reference="a")
    spend_reserve(user=alice, amount=php(1), reference="b")
    with pytest.raises(SpendLimitExceeded) as refused:
        spend_reserve(user=alice, amount=php(1), reference="c")
    assert refused.value.details["remaining_count"] == 0
    assert "0 payments left" in refused.value.user_message


def test_a_global_limit_counts_every_user_and_does_not_reveal_their_spending(alice, bob):
    limit("day", scope="global", amount=5_000)
    spend_reserve(user=alice, amount=php(3_000), reference="a")
    with pytest.raises(SpendLimitExceeded) as refused:
        spend_reserve(user=bob, amount=php(2_001), reference="b")
    assert "platform" in refused.value.user_message
    assert "3,000" not in refused.value.user_message and "₱" not in refused.value.user_message


def test_a_user_override_replaces_the_default_of_the_same_window(alice, bob):
    limit("day", amount=1_000)
    vip = limit("day", user=alice, amount=50_000)
    spend_reserve(user=alice, amount=php(20_000), reference="a")
    assert used(vip, alice) == (20_000, 1)
    with pytest.raises(SpendLimitExceeded):
        spend_reserve(user=bob, amount=php(1_001), reference="b")


def test_other_currencies_and_inactive_limits_do_not_count(alice):
    SpendLimit.objects.create(scope="user", currency="USD", window="day", max_amount_minor=1)
    SpendLimit.objects.create(scope="user", currency=PHP, window="day", max_amount_minor=1, active=False)
    spend_reserve(user=alice, amount=php(1_000_000), reference="a")
    assert SpendCounter.objects.count() == 0


def test_the_same_reference_counts_once_and_a_release_gives_back_once(alice):
    daily = limit("day", amount=10_000)
    spend_reserve(user=alice, amount=php(4_000), reference="escrow:7")
    spend_reserve(user=alice, amount=php(4_000), reference="escrow:7")
    assert used(daily, alice) == (4_000, 1)
    assert spend_release(reference="escrow:7") is True
    assert spend_release(reference="escrow:7") is False
    assert spend_release(reference="never-reserved") is False
    assert used(daily, alice) == (0, 0)


def test_a_new_window_starts_from_zero(alice, monkeypatch):
    hourly = limit("hour", amount=1_000)
    spend_reserve(user=alice, amount=php(1_000), reference="a")
    later = datetime.now(UTC) + timedelta(hours=1)
    monkeypatch.setattr(limits.timezone, "now", lambda: later)
    spend_reserve(user=alice, amount=php(1_000), reference="b")
    assert sorted(SpendCounter.objects.filter(limit=hourly).values_list("amount_minor", flat=True)) == [1_000, 1_000]
    assert [usage.used.minor for usage in spend_usage(user=alice, currency=PHP)] == [1_000]


@pytest.mark.parametrize(
    ("window", "at", "start", "end"),
    [
        ("hour", datetime(2026, 11, 22, 5, 59, 59, tzinfo=UTC), datetime(2026, 11, 22, 5), datetime(2026, 11, 22, 6)),
        ("day", datetime(2026, 12, 31, 23, 0, tzinfo=UTC), datetime(2026, 12, 31), datetime(2027, 1, 1)),
        ("month", datetime(2026, 1, 31, 12, tzinfo=UTC), datetime(2026, 1, 1), datetime(2026, 2, 1)),
        ("month", datetime(2026, 12, 15, tzinfo=UTC), datetime(2026, 12, 1), datetime(2027, 1, 1)),
    ],
)
def test_windows_are_utc_calendar_periods(window, at, start, end):
    bounds = SpendLimit(window=window).window_bounds(at)
    assert bounds == (start.replace(tzinfo=UTC), end.replace(tzinfo=UTC))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.sampled_from(["reserve", "release"]), st.integers(0, 6), st.integers(1, 4_000))))
def test_counters_always_equal_the_unreleased_reservations_and_stay_within_the_cap(alice, steps):
    with transaction.atomic():
        daily = limit("day", amount=10_000, count=5)
        model: dict[int, int] = {}
        released: set[int] = set()
        for action, ref, amount in steps:
            if action == "reserve":
                try:
                    spend_reserve(user=alice, amount=php(amount), reference=f"r{ref}")
                except SpendLimitExceeded:
                    continue
                model.setdefault(ref, amount)
            elif spend_release(reference=f"r{ref}"):
                released.add(ref)
            live = {key: value for key, value in model.items() if key not in released}
            assert used(daily, alice) == (sum(live.values()), len(live))
            assert sum(live.values()) <= 10_000 and len(live) <= 5
        transaction.set_rollback(True)


def test_the_admin_edits_limits_with_an_audit_row_and_refuses_a_second_active_default():
    roles_sync()
    staff = User.objects.create_user("approver", is_staff=True)
    staff.groups.set(Group.objects.filter(name="Finance approver"))
    client = Client()
    client.force_login(staff)
    form = {"scope": "user", "currency": PHP, "window": "day", "max_amount_minor": "500000", "active": "on"}
    assert client.post("/admin/escrow/spendlimit/add/", form).status_code == 302
    assert AuditLog.objects.filter(action="escrow.spendlimit.add").count() == 1
    again = client.post("/admin/escrow/spendlimit/add/", form)
    assert again.status_code == 200 and "An active limit for this scope" in again.content.decode()
    assert client.get("/admin/escrow/spendlimit/").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_concurrent_outflows_never_pass_a_cap_together():
    if connection.vendor != "postgresql":
        pytest.skip("needs real row locks")
    users = [User.objects.create_user(f"buyer{n}") for n in range(20)]
    everyone = limit("day", scope="global", amount=10_000)
    refused: list[str] = []
    barrier = threading.Barrier(len(users))

    def buy(user: User) -> None:
        barrier.wait()
        try:
            spend_reserve(user=user, amount=php(1_000), reference=f"buy:{user.pk}")
        except SpendLimitExceeded:
            refused.append(user.username)
        finally:
            connection.close()

    threads = [threading.Thread(target=buy, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(refused) == 10
    assert used(everyone) == (10_000, 10)
    assert SpendReservation.objects.count() == 10


def test_the_api_shows_a_user_their_own_usage_and_not_the_platforms(alice, bob):
    from rest_framework.test import APIClient

    limit("day", amount=10_000)
    limit("hour", scope="global", amount=1_000_000)
    spend_reserve(user=alice, amount=php(2_500), reference="a")
    spend_reserve(user=bob, amount=php(7_000), reference="b")
    client = APIClient()
    client.force_authenticate(alice)
    rows = client.get("/api/v1/spend-limits/?currency=PHP").json()
    own = next(row for row in rows if row["scope"] == "user")
    platform = next(row for row in rows if row["scope"] == "global")
    assert (own["used_amount_minor"], own["used_count"], own["max_amount_minor"]) == (2_500, 1, 10_000)
    assert platform["used_amount_minor"] is None and platform["used_count"] is None
    bad = client.get("/api/v1/spend-limits/?currency=XXX")
    assert bad.status_code == 400 and bad.json()["error"]["action_required"]
    assert APIClient().get("/api/v1/spend-limits/?currency=PHP").status_code in (401, 403)


def test_customer_payments_count_and_a_failed_one_gives_its_amount_back(alice, sandbox, default_payment_config):
    from providers.models import Payment
    from providers.payments import payment_initiate
    from providers.routing import Choice

    daily = SpendLimit.objects.create(scope="user", currency="USD", window="day", max_amount_minor=30_000)
    card = Choice("stripe", "card")
    paid = payment_initiate(
        user=alice, amount=Money(20_000, "USD"), client_key="k1", explicit=card, payment_method_token="pm_card_visa"
    )
    declined = payment_initiate(
        user=alice, amount=Money(5_000, "USD"), client_key="k2", explicit=card,
        payment_method_token="pm_card_chargeDeclined",
    )  # fmt: skip
    assert (paid.status, declined.status) == (Payment.Status.SUCCEEDED, Payment.Status.FAILED)
    assert used(daily, alice) == (20_000, 1)  # the declined one was given back
    with pytest.raises(SpendLimitExceeded):
        payment_initiate(
            user=alice, amount=Money(10_001, "USD"), client_key="k3", explicit=card,
            payment_method_token="pm_card_visa",
        )  # fmt: skip
    assert not Payment.objects.filter(client_key="k3").exists()  # refused before any provider call
    assert sandbox.calls["stripe.payment_intents.create"] == 2
