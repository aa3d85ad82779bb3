from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import NotFound
from core.money import Money
from providers.fees import fee_quote, percent_of
from providers.models import FeeRule


def test_percent_of_rounds_half_up_in_integers():
    assert percent_of(10_000, 250) == 250
    assert percent_of(1, 5_000) == 1  # 0.5 rounds up
    assert percent_of(1, 4_999) == 0
    assert percent_of(123_456_789_012, 350) == 4_320_987_615  # exact, no float drift
    with pytest.raises(ValueError):
        percent_of(-1, 250)


@given(amount=st.integers(min_value=0, max_value=10**15), bps=st.integers(min_value=0, max_value=10_000))
def test_percent_of_is_within_half_a_minor_unit(amount, bps):
    exact_times_10000 = amount * bps
    assert abs(percent_of(amount, bps) * 10_000 - exact_times_10000) <= 5_000


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("provider", "method", "amount", "fee"),
    [
        ("maya", "maya_wallet", Money(100_000, "PHP"), Money(2_500 + 1_500, "PHP")),  # PHP 1,000: 2.5% + PHP 15
        ("gcash", "gcash", Money(100_000, "PHP"), Money(3_500 + 1_000, "PHP")),  # 3.5% + PHP 10
        ("gcash", "gcash", Money(333, "PHP"), Money(12 + 1_000, "PHP")),  # 11.655 rounds to 12
        ("stripe", "card", Money(1_000, "USD"), Money(29 + 30, "USD")),
    ],
)
def test_default_fee_rules(provider, method, amount, fee, default_payment_config):
    quote = fee_quote(provider=provider, method=method, amount=amount)
    assert quote.provider_fee == fee
    assert quote.platform_fee == Money(0, amount.currency)
    assert quote.total_fee == fee


@pytest.mark.django_db
def test_the_rule_in_force_at_a_moment_applies(default_payment_config):
    FeeRule.objects.create(
        provider="maya", method="maya_wallet", currency="PHP", percent_bps=200, fixed_minor=1_000,
        platform_percent_bps=100, platform_fixed_minor=500, effective_from=datetime(2026, 7, 1, tzinfo=UTC),
    )  # fmt: skip
    before = fee_quote(
        provider="maya", method="maya_wallet", amount=Money(100_000, "PHP"), at=datetime(2026, 6, 30, tzinfo=UTC)
    )
    after = fee_quote(
        provider="maya", method="maya_wallet", amount=Money(100_000, "PHP"), at=datetime(2026, 7, 2, tzinfo=UTC)
    )
    assert before.provider_fee == Money(4_000, "PHP")
    assert (after.provider_fee, after.platform_fee) == (Money(3_000, "PHP"), Money(1_500, "PHP"))
    with pytest.raises(NotFound):
        fee_quote(provider="maya", method="maya_wallet", amount=Money(100, "PHP"), at=datetime(2025, 1, 1, tzinfo=UTC))
    with pytest.raises(NotFound):
        fee_quote(provider="maya", method="maya_wallet", amount=Money(100, "USD"))


@pytest.mark.django_db
def test_fee_rule_changes_in_the_admin_are_audited_and_past_rules_are_frozen(admin_client, default_payment_config):
    from core.models import AuditLog

    response = admin_client.post(
        "/admin/providers/feerule/add/",
        {
            "provider": "gcash", "method": "gcash", "currency": "PHP", "percent_bps": "300", "fixed_minor": "1000",
            "platform_percent_bps": "0", "platform_fixed_minor": "0",
            "effective_from_0": "2030-01-01", "effective_from_1": "00:00:00",
        },
    )  # fmt: skip
    assert response.status_code == 302
    rule = FeeRule.objects.get(percent_bps=300)
    audit = AuditLog.objects.get(action="providers.feerule.add")
    assert (audit.object_id, audit.after["percent_bps"]) == (str(rule.pk), "300")

    past = FeeRule.objects.get(provider="gcash", percent_bps=350)
    page = admin_client.get(f"/admin/providers/feerule/{past.pk}/change/")
    assert 'name="percent_bps"' not in page.content.decode()  # read-only once in force
