"""Money: an integer amount in minor units and an ISO 4217 currency.

Floats are refused everywhere. Decimal strings are parsed only at the edges
(admin forms, CSV import) and excess precision is an error, never rounded away.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

# ISO 4217 active codes whose minor-unit exponent is not 2.
_EXPONENT_NOT_TWO = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0,
    "PYG": 0, "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0,
    "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
    "CLF": 4, "UYW": 4,
}  # fmt: skip

# ISO 4217 active codes with a two-digit minor unit.
_EXPONENT_TWO = """
AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD
BTN BWP BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP
ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR
JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU
MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR
RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS
TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED VES WST XCD XCG YER ZAR ZMW ZWG
""".split()

CURRENCY_EXPONENTS: dict[str, int] = {code: 2 for code in _EXPONENT_TWO} | _EXPONENT_NOT_TWO

_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "PHP": "₱", "INR": "₹", "KRW": "₩"}
# ASCII digits only (\d would accept e.g. Arabic-Indic digits); at most 30 of them before the point.
_DECIMAL_STRING = re.compile(r"^(?P<sign>-?)(?P<whole>[0-9]{1,30})(?:\.(?P<frac>[0-9]+))?$")


class MoneyError(ValueError):
    """An amount or currency that cannot be represented exactly."""


def currency_exponent(currency: str) -> int:
    try:
        return CURRENCY_EXPONENTS[currency]
    except KeyError:
        raise MoneyError(f"unknown currency {currency!r}: use an ISO 4217 code such as USD") from None


def validate_currency(currency: object) -> str:
    if not isinstance(currency, str) or currency != currency.upper():
        raise MoneyError(f"currency must be an upper-case ISO 4217 code, got {currency!r}")
    currency_exponent(currency)
    return currency


# No provider takes more than 8 digits of major units, and no amount may come near a balance row's 64-bit limit.
DEFAULT_MAX_MAJOR_UNITS = 99_999_999
LARGEST_EXPONENT = max(CURRENCY_EXPONENTS.values())


def max_major_units() -> int:
    from django.conf import settings  # core.money is also used without Django configured (scripts, benches)

    return int(getattr(settings, "MONEY_MAX_MAJOR_UNITS", DEFAULT_MAX_MAJOR_UNITS))


def amount_max_minor(currency: str) -> int:
    """The largest amount one movement may carry in `currency`, in minor units (configured in major units)."""
    return max_major_units() * 10 ** currency_exponent(currency)


def amount_max_minor_any() -> int:
    """The largest amount in any currency: the outer bound an input field checks before it knows the currency."""
    return max_major_units() * 10**LARGEST_EXPONENT


def money_in_bounds(minor: object, currency: object, *, allow_zero: bool = False) -> Money:
    """An amount from outside (API, admin, CSV, webhook): integer minor units above zero (or zero, where zero
    means something: a fee with no fixed part, a cap that blocks) and at most the configured maximum of its
    currency, with an upper-case ISO 4217 currency; MoneyError says what is wrong."""
    amount = Money(validate_minor(minor), validate_currency(currency))
    if amount.minor < 0 or (amount.minor == 0 and not allow_zero):
        raise MoneyError(f"the amount must be {'zero or more' if allow_zero else 'more than zero'}, got {amount.minor}")
    top = amount_max_minor(amount.currency)
    if amount.minor > top:
        raise MoneyError(f"the amount is more than the maximum of {Money(top, amount.currency)}")
    return amount


def money_parse_in_bounds(text: str, currency: str, *, allow_zero: bool = False) -> Money:
    """A decimal string in major units ("1234.50", from an admin form, a CSV file or a provider's body), parsed
    exactly (Money.parse) and held to the same bounds as every other amount (money_in_bounds)."""
    amount = Money.parse(text, currency)
    return money_in_bounds(amount.minor, amount.currency, allow_zero=allow_zero)


def validate_minor(minor: object) -> int:
    # bool is an int subclass; True is not an amount.
    if type(minor) is not int:
        raise MoneyError(f"amount must be an integer number of minor units, got {type(minor).__name__} {minor!r}")
    return minor


@dataclass(frozen=True, slots=True)
class Money:
    minor: int
    currency: str

    def __post_init__(self) -> None:
        validate_minor(self.minor)
        validate_currency(self.currency)

    # --- construction at the edges
    @classmethod
    def parse(cls, text: str, currency: str) -> Money:
        """Parse a plain decimal string such as "1234.50"; no separators, no rounding."""
        exponent = currency_exponent(validate_currency(currency))
        if not isinstance(text, str):
            raise MoneyError(f"expected a decimal string, got {type(text).__name__}")
        match = _DECIMAL_STRING.match(text.strip())
        if not match:
            raise MoneyError(f"{text!r} is not a plain decimal amount like 1234.50")
        frac = match["frac"] or ""
        if len(frac) > exponent:
            raise MoneyError(f"{text!r} has more than {exponent} decimal places for {currency}")
        minor = int(match["whole"]) * 10**exponent + int(frac.ljust(exponent, "0") or "0")
        return cls(-minor if match["sign"] else minor, currency)

    @classmethod
    def from_decimal(cls, amount: Decimal, currency: str) -> Money:
        if not isinstance(amount, Decimal):
            raise MoneyError(f"expected a Decimal, got {type(amount).__name__}")
        if not amount.is_finite():
            raise MoneyError(f"{amount} is not a finite amount")
        return cls.parse(format(amount, "f"), currency)

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(0, currency)

    # --- arithmetic that refuses mixed currencies
    def _same_currency(self, other: object) -> Money:
        if not isinstance(other, Money):
            raise TypeError(f"cannot combine Money with {type(other).__name__}")
        if other.currency != self.currency:
            raise MoneyError(f"cannot combine {self.currency} with {other.currency}")
        return other

    def __add__(self, other: Money) -> Money:
        return Money(self.minor + self._same_currency(other).minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        return Money(self.minor - self._same_currency(other).minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.minor, self.currency)

    def __mul__(self, factor: int) -> Money:
        return Money(self.minor * validate_minor(factor), self.currency)

    __rmul__ = __mul__

    def __lt__(self, other: Money) -> bool:
        return self.minor < self._same_currency(other).minor

    def __le__(self, other: Money) -> bool:
        return self.minor <= self._same_currency(other).minor

    def __gt__(self, other: Money) -> bool:
        return self.minor > self._same_currency(other).minor

    def __ge__(self, other: Money) -> bool:
        return self.minor >= self._same_currency(other).minor

    def __bool__(self) -> bool:
        return self.minor != 0

    # --- presentation
    @property
    def exponent(self) -> int:
        return currency_exponent(self.currency)

    def as_decimal(self) -> Decimal:
        return Decimal(self.minor).scaleb(-self.exponent)

    def decimal_string(self) -> str:
        """Exact plain string with the currency's decimal places, e.g. "-1234.50"."""
        return format(self.as_decimal(), f".{self.exponent}f")

    def format(self) -> str:
        """Human display with grouping, e.g. "₱1,234.50" or "1,234.500 BHD"."""
        body = format(abs(self.as_decimal()), f",.{self.exponent}f")
        sign = "-" if self.minor < 0 else ""
        symbol = _SYMBOLS.get(self.currency)
        return f"{sign}{symbol}{body}" if symbol else f"{sign}{body} {self.currency}"

    def __str__(self) -> str:
        return self.format()
