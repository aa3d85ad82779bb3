from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.money import CURRENCY_EXPONENTS, Money, MoneyError


def test_money_refuses_floats_bools_and_unknown_currencies():
    for bad in (12.5, 1.0, True, "100", Decimal("1")):
        with pytest.raises(MoneyError):
            Money(bad, "USD")
    for bad in ("usd", "XXX1", "ZZZ", 840):
        with pytest.raises(MoneyError):
            Money(100, bad)


def test_money_arithmetic_refuses_mixed_currencies():
    usd, php = Money(100, "USD"), Money(100, "PHP")
    assert usd + Money(50, "USD") == Money(150, "USD")
    assert usd - Money(150, "USD") == Money(-50, "USD")
    assert -usd == Money(-100, "USD")
    assert usd * 3 == Money(300, "USD")
    with pytest.raises(MoneyError):
        usd + php
    with pytest.raises(MoneyError):
        assert usd < php
    with pytest.raises(MoneyError):
        usd * 1.5
    with pytest.raises(TypeError):
        usd + 5


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("12.34", "USD", 1234),
        ("12.3", "USD", 1230),
        ("12", "USD", 1200),
        ("-0.01", "USD", -1),
        ("1500", "JPY", 1500),
        ("1.234", "BHD", 1234),
        ("0.0001", "CLF", 1),
        (" 7.50 ", "PHP", 750),
    ],
)
def test_parse_uses_the_currency_exponent(text, currency, minor):
    assert Money.parse(text, currency) == Money(minor, currency)


@pytest.mark.parametrize(
    ("text", "currency"),
    [
        ("12.345", "USD"),  # excess precision is refused, not rounded
        ("1.5", "JPY"),
        ("1,234.50", "USD"),
        ("1e3", "USD"),
        ("", "USD"),
        ("12.", "USD"),
        (".5", "USD"),
        ("NaN", "USD"),
        ("--1", "USD"),
        ("\u0661\u0662.\u0660\u0660", "USD"),  # Arabic-Indic digits for 12.00
        ("1" * 4_400, "USD"),  # absurdly long: refused as money, not a crash
    ],
)
def test_parse_refuses_anything_not_exact(text, currency):
    with pytest.raises(MoneyError):
        Money.parse(text, currency)


def test_from_decimal_is_exact_and_refuses_excess_precision():
    assert Money.from_decimal(Decimal("10.10"), "USD") == Money(1010, "USD")
    with pytest.raises(MoneyError):
        Money.from_decimal(Decimal("10.101"), "USD")
    with pytest.raises(MoneyError):
        Money.from_decimal(Decimal("Infinity"), "USD")
    with pytest.raises(MoneyError):
        Money.from_decimal(10.1, "USD")


def test_format_for_people():
    assert Money(123450, "PHP").format() == "₱1,234.50"
    assert Money(-5, "USD").format() == "-$0.05"
    assert Money(1500, "JPY").format() == "¥1,500"
    assert Money(1234567, "BHD").format() == "1,234.567 BHD"
    assert Money(1234567, "BHD").decimal_string() == "1234.567"


@given(
    minor=st.integers(min_value=-(10**15), max_value=10**15),
    currency=st.sampled_from(sorted(CURRENCY_EXPONENTS)),
)
def test_decimal_string_round_trips(minor, currency):
    money = Money(minor, currency)
    assert Money.parse(money.decimal_string(), currency) == money


@pytest.mark.parametrize(
    ("currency", "largest"), [("USD", 9_999_999_900), ("JPY", 99_999_999), ("BHD", 99_999_999_000)]
)
def test_every_currency_has_a_largest_amount_in_its_own_minor_units(currency, largest):
    from core.money import amount_max_minor, amount_max_minor_any, money_in_bounds

    assert amount_max_minor(currency) == largest
    assert money_in_bounds(largest, currency) == Money(largest, currency)
    for outside in (largest + 1, 0, -1, 2**63):
        with pytest.raises(MoneyError):
            money_in_bounds(outside, currency)
    assert amount_max_minor_any() < 2**63  # no accepted amount can approach a balance row's 64-bit limit


def test_the_largest_amount_follows_the_setting(settings):
    from core.money import amount_max_minor

    settings.MONEY_MAX_MAJOR_UNITS = 1_000
    assert amount_max_minor("USD") == 100_000
