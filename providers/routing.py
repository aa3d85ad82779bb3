"""Which provider a customer payment goes to, and why.

Order: an explicit choice (only that method); else the request's preference,
then the customer's default, then every other enabled method by priority (or
by lowest total fee). A method is skipped when it does not take the currency,
the amount is outside its limits, it is disabled or has no fee rule, or its
provider's circuit is open and not yet due for a trial call. The orchestrator
tries candidates in order and falls back only when a provider is known not to
have taken the money.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from django.contrib.auth.base_user import AbstractBaseUser

from core.errors import AppError
from core.money import Money
from providers.breaker import breaker_for
from providers.fees import FeeQuote, fee_quote
from providers.models import CustomerDefaultMethod, PaymentMethod, RoutingDecision

PRIORITY, LOWEST_FEE = "priority", "lowest_fee"


class NoRouteAvailable(AppError):
    code = "no_payment_route"
    http_status = 503
    retryable = True
    default_user_message = "No payment method can take this payment right now."
    default_action_required = "Try another method or a smaller amount, or try again in a few minutes."


class NoPaymentMethod(AppError):
    """Nothing we offer takes this currency and amount: trying again will not help (unlike NoRouteAvailable)."""

    code = "no_payment_method"
    http_status = 400
    default_user_message = "No payment method takes this currency and amount."
    default_action_required = "Pay in another currency or amount; details list the methods and why each was skipped."


CIRCUIT_OPEN, NO_FEE_RULE, METHOD_DISABLED = "circuit open", "no fee rule in force", "method disabled"
PASSING_SKIPS = {CIRCUIT_OPEN, NO_FEE_RULE, METHOD_DISABLED}  # on our side, not the payment's: may pass soon


@dataclass(frozen=True)
class Choice:
    provider: str
    method: str


@dataclass(frozen=True)
class Candidate:
    provider: str
    method: str
    fee_minor: int
    platform_fee_minor: int


@dataclass(frozen=True)
class Skip:
    provider: str
    method: str
    reason: str


@dataclass
class Route:
    source: str
    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)


def _skip_reason(method: PaymentMethod, amount: Money) -> str:
    if not method.enabled:
        return METHOD_DISABLED
    if not method.min_minor <= amount.minor <= method.max_minor:
        return f"amount outside {method.min_minor}..{method.max_minor} {method.currency}"
    if breaker_for(method.provider).is_refusing():
        return CIRCUIT_OPEN
    return ""


def _quote(method: PaymentMethod, amount: Money) -> FeeQuote | None:
    try:
        return fee_quote(provider=method.provider, method=method.method, amount=amount)
    except AppError:
        return None


def _first_choice(
    explicit: Choice | None, preferred: Choice | None, default: Choice | None
) -> tuple[str, Choice | None]:
    for source, choice in (("explicit", explicit), ("preference", preferred), ("default", default)):
        if choice is not None:
            return source, choice
    return "", None


def route_payment(
    *,
    amount: Money,
    explicit: Choice | None = None,
    preferred: Choice | None = None,
    user: AbstractBaseUser | None = None,
    strategy: str = PRIORITY,
) -> Route:
    default = _customer_default(user)
    source, first = _first_choice(explicit, preferred, default)
    methods = list(PaymentMethod.objects.filter(currency=amount.currency).order_by("priority", "provider", "method"))
    if explicit is not None:
        methods = [m for m in methods if Choice(m.provider, m.method) == explicit]
    route = Route(source=source or strategy)
    usable: list[tuple[PaymentMethod, FeeQuote]] = []
    for method in methods:
        reason = _skip_reason(method, amount)
        quote = None if reason else _quote(method, amount)
        if quote is None:
            route.skipped.append(Skip(method.provider, method.method, reason or NO_FEE_RULE))
            continue
        usable.append((method, quote))
    if strategy == LOWEST_FEE:
        usable.sort(key=lambda pair: (pair[1].total_fee.minor, pair[0].priority))
    usable.sort(key=lambda pair: Choice(pair[0].provider, pair[0].method) != first)  # stable: first choice leads
    route.candidates = [Candidate(m.provider, m.method, q.provider_fee.minor, q.platform_fee.minor) for m, q in usable]
    if explicit is not None and not methods:
        route.skipped.append(Skip(explicit.provider, explicit.method, f"does not take {amount.currency}"))
    return route


def _customer_default(user: AbstractBaseUser | None) -> Choice | None:
    if user is None or user.pk is None:
        return None
    default = CustomerDefaultMethod.objects.filter(user=user).first()
    return Choice(default.provider, default.method) if default else None


def routing_decision_record(
    *, route: Route, amount: Money, user: AbstractBaseUser | None, reference: str = ""
) -> RoutingDecision:
    decision = RoutingDecision.objects.create(
        user=user if user is not None and user.pk else None,
        amount_minor=amount.minor,
        currency=amount.currency,
        source=route.source,
        candidates=[asdict(candidate) for candidate in route.candidates],
        skipped=[asdict(skip) for skip in route.skipped],
        reference=reference,
    )
    if not route.candidates:
        details = {"routing_decision_id": decision.pk, "skipped": decision.skipped}
        message = f"no usable payment method for {amount.minor} {amount.currency}"
        if any(skip.reason in PASSING_SKIPS for skip in route.skipped):
            raise NoRouteAvailable(message, details=details)
        raise NoPaymentMethod(message, details=details)
    return decision
