"""Who may do what: every API endpoint and every admin action that moves money, for every kind of principal.

One table per way in (API_ROWS, ADMIN_ROWS), one row per endpoint or action, one expected outcome per
principal (PRINCIPALS, in that order); every cell is its own test, named like `payment-detail-GET-customer_b`
or `admin-escrowdeal-release-viewer`. A row's objects, all customer A's, are built once, through the services
and test factories the app's own tests use, in a transaction that lives as long as the row's cells and is then
rolled back; each cell runs in a savepoint inside it. A cell whose request must move money builds its own
objects (it changes them, and the provider sandbox is not rolled back); every other cell shares the row's.

The rules the table spells out (DESIGN.md sections 8 and 9):
- anonymous API calls are 401; another customer's object is 404, never 403, so ids cannot be probed; 403 is
  for a permission the caller lacks on an endpoint or an object they may see (the permission is named);
  staff without the view permission are treated like any other user (404 for what is not theirs);
- in the admin, anonymous and non-staff users go to the login page, staff without the model's view
  permission get 403, an action guarded by its permission is not offered, and a service refusing is
  reported as an error message;
- a refused cell answers in the one error body and changes nothing: no row added, no status or balance
  moved, no MoneyMovement recorded, no provider called;
- an allowed cell that moves money really does: its effect is checked, not only its status.
Maker-checker (the one who asked may not approve) has its own tests at the end.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from django.apps import apps
from django.conf import settings as django_settings
from django.contrib import admin
from django.contrib.auth.models import Group, User
from django.contrib.messages import constants as message_levels
from django.contrib.messages import get_messages
from django.db import connection, transaction
from django.db.models import Model, QuerySet
from django.test import Client, override_settings
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from django.utils import timezone
from rest_framework.test import APIClient

from core.locks import lock_acquire
from core.models import AuditLog, ProcessingLock
from core.money import Money
from core.roles import roles_sync
from escrow.deals import deal_release
from escrow.models import (
    EscrowDeal,
    PurchasableService,
    Purchase,
    PurchaseRefund,
    SpendCounter,
    SpendLimit,
    SpendReservation,
)
from escrow.purchases import purchase_create, purchase_report_delivery
from ledger.models import Account, Balance, Hold, Transaction
from ledger.services import forget_account_facts
from payouts.models import PayoutBatch, PayoutCycle, PayoutItem, WinnerSelection
from payouts.services import batch_execute, batch_sync, cycle_prepare, winnings_fund
from providers.breaker import shared_redis
from providers.models import CustomerDefaultMethod, MoneyMovement, Payment, Refund, WebhookEvent
from providers.payments import payment_initiate
from providers.paypal.client import PayPalClient
from providers.routing import Choice
from providers.sandbox import stripe as stripe_sandbox
from providers.sandbox.server import Fault, Sandbox
from tests.escrow.factories_deals import UserFactory, held_deal, seller
from tests.escrow.factories_purchases import deliverer_create, service_create
from tests.ledger.factories import AccountFactory, fund, hot_account

pytestmark = pytest.mark.django_db

PRINCIPALS = ("anonymous", "customer_a", "customer_b", "viewer", "operator", "approver", "staff_no_perms", "superuser")
ROLE_OF = {"viewer": "Finance viewer", "operator": "Finance operator", "approver": "Finance approver"}
STAFF = frozenset({"viewer", "operator", "approver", "staff_no_perms", "superuser"})
FINANCE = frozenset({"viewer", "operator", "approver", "superuser"})  # staff who may view every object

# Admin outcomes (a number is an HTTP status).
LOGIN = "login"  # sent to the admin login page
HIDDEN = "hidden"  # the action is not offered: the changelist is shown again, nothing runs
REFUSED = "refused"  # offered, but the service refused it: an error message, nothing moved
DONE = "done"  # the action ran: a success (or warning) message and its effect

ERROR_CODES = {400: "invalid_signature", 401: "not_authenticated", 403: "permission_denied", 404: "not_found"}
ERROR_FIELDS = {"code", "message", "user_message", "action_required", "retryable", "details"}


def _isolate(settings: Any) -> str:
    """Provider state (breakers, availability) and rate limits of their own: Redis outlives the test database."""
    prefix = settings.PROVIDER_STATE_KEY_PREFIX = f"test:authz:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1
    settings.RATELIMIT_CACHE_PREFIX = f"test:authz-rl:{uuid.uuid4().hex}:"
    return prefix


def _forget_provider_state(prefix: str) -> None:
    client = shared_redis()
    for key in client.scan_iter(f"{prefix}:*") if client else []:
        client.delete(key)


@pytest.fixture(autouse=True)
def _isolated(settings):
    prefix = _isolate(settings)
    yield
    _forget_provider_state(prefix)


class RowSettings:
    """`settings.NAME = value` as the `settings` fixture does it, for as long as a row's shared objects live."""

    def __init__(self) -> None:
        object.__setattr__(self, "_overrides", [])

    def __setattr__(self, name: str, value: Any) -> None:
        override = override_settings(**{name: value})
        override.enable()
        self._overrides.append(override)

    def __getattr__(self, name: str) -> Any:
        return getattr(django_settings, name)

    def restore(self) -> None:
        for override in reversed(self._overrides):
            override.disable()


# --- the principals and what they act on ----------------------------------------------------------------------


def _group(name: str) -> Group:
    group = Group.objects.filter(name=name).first()
    if group is None:  # a transactional test's flush emptied the table; migrate's roles_sync made them
        roles_sync()
        group = Group.objects.get(name=name)
    return group


@dataclass
class World:
    """The principals, made when first needed, the sandbox their requests end up at, and the settings."""

    sandbox: Sandbox
    settings: Any  # the `settings` fixture, or a RowSettings
    users: dict[str, User | None] = field(default_factory=dict)

    def user(self, principal: str) -> User | None:
        if principal not in self.users:
            self.users[principal] = _principal(principal)
        return self.users[principal]

    @property
    def a(self) -> User:
        user = self.user("customer_a")
        assert user is not None
        return user

    @property
    def maker(self) -> User:
        """A finance operator who is none of the principals: prepares batches that others approve."""
        user = self.user("maker")
        assert user is not None
        return user


def _principal(principal: str) -> User | None:
    if principal == "anonymous":
        return None
    username = f"{principal}-{uuid.uuid4().hex[:8]}"
    if principal == "superuser":
        return User.objects.create_superuser(username)
    user = UserFactory(username=username, is_staff=principal not in ("customer_a", "customer_b"))
    role = "Finance operator" if principal == "maker" else ROLE_OF.get(principal)
    if role:
        user.groups.add(_group(role))
    return User.objects.get(pk=user.pk)  # a fresh permission cache


@pytest.fixture(scope="module")
def _paypal(_sandbox_server: Sandbox) -> Iterator[PayPalClient]:
    with override_settings(PROVIDER_MODE="sandbox", SANDBOX_URL=_sandbox_server.url):
        paypal = PayPalClient()
    yield paypal
    paypal.close()


def _use_sandbox(settings: Any, server: Sandbox, paypal: PayPalClient) -> None:
    settings.PROVIDER_MODE = "sandbox"
    settings.SANDBOX_URL = server.url
    settings.PROVIDER_TIMEOUT_SECONDS = 1.0
    server.reset()
    paypal.forget_token()  # the sandbox forgot the tokens it issued; so does the shared cache


@pytest.fixture
def sandbox(_sandbox_server: Sandbox, _paypal: PayPalClient, settings) -> Iterator[Sandbox]:
    """tests/providers/conftest.py's `sandbox`, with one PayPal client to forget its token with: a new client
    for each of the matrix's cells would load the CA bundle each time (30 ms or more, in every cell)."""
    _use_sandbox(settings, _sandbox_server, _paypal)
    yield _sandbox_server
    _sandbox_server.reset()


@pytest.fixture
def world(sandbox, settings) -> World:
    """A world of its own, for the tests below the tables."""
    return World(sandbox, settings)


# --- what a refused request must leave as it was ------------------------------------------------------------

WATCHED: list[tuple[str, Callable[[], QuerySet[Any]], tuple[str, ...]]] = [
    ("money movements", MoneyMovement.objects.all, ("pk", "status")),
    ("ledger transactions", Transaction.objects.all, ("pk",)),
    ("ledger balances", Balance.objects.all, ("pk", "posted_minor", "pending_out_minor", "pending_in_minor")),
    ("ledger holds", Hold.objects.all, ("pk", "status", "posted_minor")),
    ("payments", Payment.objects.all, ("pk", "status", "refunded_minor")),
    ("payment refunds", Refund.objects.all, ("pk", "status")),
    ("payout batches", PayoutBatch.objects.all, ("pk", "status", "approved_by")),
    ("payout items", PayoutItem.objects.all, ("pk", "status")),
    ("escrow deals", EscrowDeal.objects.all, ("pk", "status", "release_requested_by", "approved_by")),
    ("purchases", Purchase.objects.all, ("pk", "status", "outcome", "refunded_minor")),
    ("purchase refunds", PurchaseRefund.objects.all, ("pk", "status")),
    ("spend counters", SpendCounter.objects.all, ("pk", "amount_minor", "count")),
    ("spend reservations", SpendReservation.objects.all, ("pk", "released_at")),
    ("verified webhook events", WebhookEvent.objects.filter(signature_valid=True).all, ("pk", "status", "attempts")),
    ("processing locks", ProcessingLock.objects.all, ("pk",)),
    ("default methods", CustomerDefaultMethod.objects.all, ("pk", "user", "provider", "method")),
    ("audit log", AuditLog.objects.all, ("pk",)),
]


def money_state(world: World) -> dict[str, object]:
    """Each watched table's row count and a digest of its rows, in one round trip; and the provider calls made."""
    parts, params = [], []
    for _label, query, fields in WATCHED:
        sql, sql_params = query().values_list(*fields).order_by().query.sql_with_params()
        digest = "md5(coalesce(string_agg(q::text, '|' ORDER BY q::text), ''))"
        parts.append(f"(SELECT count(*) || ' rows ' || {digest} FROM ({sql}) q)")
        params.extend(sql_params)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(parts)}", params)
        fingerprints = cursor.fetchone()
    state: dict[str, object] = dict(zip([label for label, *_ in WATCHED], fingerprints, strict=True))
    state["provider calls"] = sum(world.sandbox.calls.values())
    return state


def changed(before: dict[str, object], after: dict[str, object]) -> list[str]:
    return [label for label in before if before[label] != after[label]]


# --- the objects each row acts on, all customer A's -------------------------------------------------------------


@dataclass
class Target:
    """An API request: its path and body, and for an allowed one what it must have done."""

    path: str
    body: Any = None
    query: dict[str, str] | None = None
    done: Callable[[User], bool] | None = None  # given the acting user
    sees: Callable[[Any], bool] | None = None  # on the answer's JSON: does it show customer A's object?
    raw: bool = False  # a webhook: the body as sent, with no API client around it


def _wallet_of_a(world: World) -> tuple[str, Transaction]:
    """Customer A's ledger account, and a new transaction that funded it."""
    a = world.a
    code = f"user:{a.pk}:wallet:USD"
    wallet = Account.objects.filter(code=code).first() or AccountFactory(
        code=code, owner_type="user", owner_id=str(a.pk)
    )
    source = Account.objects.filter(code="test:authz-source:USD").first() or hot_account("test:authz-source")
    key = f"authz:fund:{uuid.uuid4().hex}"
    fund(wallet, 10_000, source=source, key=key)
    return code, Transaction.objects.get(idempotency_key=key)


def _results_have(key: str, value: object) -> Callable[[Any], bool]:
    return lambda body: any(row[key] == value for row in body["results"])


def _payment_of_a(world: World) -> Payment:
    return payment_initiate(
        user=world.a, amount=Money(10_000, "USD"), client_key=uuid.uuid4().hex, explicit=Choice("stripe", "card"),
        payment_method_token="pm_card_visa",
    )  # fmt: skip


def _deal_of_a(world: World, *, transfers: str = "active") -> EscrowDeal:
    """Customer A's USD 100 held in escrow for a seller (a connected account at the sandbox)."""
    return held_deal(world.a, seller(world.sandbox, transfers=transfers))


def _deal_awaiting_approval(world: World) -> EscrowDeal:
    world.settings.ESCROW_APPROVAL_THRESHOLD_MINOR = 5_000
    deal = deal_release(deal_id=_deal_of_a(world).pk, actor=world.a)
    assert deal.status == EscrowDeal.Status.AWAITING_APPROVAL
    return deal


def _deal_transfer_failed(world: World) -> EscrowDeal:
    """Released by A while the seller could not take transfers; the seller has since fixed the account."""
    deal = _deal_of_a(world, transfers="inactive")
    deal = deal_release(deal_id=deal.pk, actor=world.a)
    assert deal.status == EscrowDeal.Status.TRANSFER_FAILED
    stripe_sandbox.account_set(world.sandbox, deal.seller_account.stripe_account_id, transfers="active")
    return deal


def _deal_status(deal: EscrowDeal) -> str:
    return EscrowDeal.objects.get(pk=deal.pk).status


def _catalogue() -> None:
    if not PurchasableService.objects.filter(code="phone-verification").exists():
        service_create()


def _purchase_of_a(world: World, *, stage: str = "reserved") -> Purchase:
    """Customer A's purchase of the catalogue's phone verification: reserved, captured, or capture_unknown."""
    _catalogue()
    purchase = purchase_create(
        buyer=world.a, service_code="phone-verification", currency="USD", payment_method="pm_card_visa",
        client_key=uuid.uuid4().hex,
    )  # fmt: skip
    if stage == "capture_unknown":
        world.sandbox.add_fault(Fault(operation="stripe.payment_intents.capture", kind="error", status=502))
    if stage in ("captured", "capture_unknown"):
        purchase = purchase_report_delivery(purchase_id=purchase.pk, actor=deliverer_create(), outcome="delivered")
    assert purchase.status == stage
    return purchase


def _purchase(purchase: Purchase) -> Purchase:
    return Purchase.objects.get(pk=purchase.pk)


def _cycle_with_a(world: World) -> PayoutCycle:
    """A funded cycle of four winners, customer A among them; the sandbox pays, leaves unclaimed, fails and
    returns them in that order once the batch is sent."""
    cycle = PayoutCycle.objects.create(name=f"authz {uuid.uuid4().hex[:6]}")
    winners = [world.a, UserFactory(), UserFactory(), UserFactory()]
    receivers = ["paid@example.com", "unclaimed@example.com", "fail@example.com", "return@example.com"]
    for n, (user, receiver) in enumerate(zip(winners, receivers, strict=True)):
        WinnerSelection.objects.create(
            cycle=cycle, user=user, amount_minor=10_000 * (n + 1), currency="USD", recipient_type="EMAIL",
            recipient=receiver,
        )  # fmt: skip
    winnings_fund(amount=Money(1_000_000, "USD"), reference=f"authz-pool-{cycle.pk}")
    return cycle


BATCH_STAGES = ("prepared", "approved", "ticked", "settled")


def _batch(world: World, stage: str) -> PayoutBatch:
    """The cycle's one batch, prepared by the maker: waiting for approval, approved, sent and answered by
    PayPal but not synced yet (ticked), or synced with every item final (settled)."""
    assert stage in BATCH_STAGES
    cycle = _cycle_with_a(world)
    if stage == "prepared":
        world.settings.PAYOUT_APPROVAL_THRESHOLD_MINOR = 50_000
    (batch,) = cycle_prepare(cycle_id=cycle.pk, actor=world.maker)
    if stage in ("ticked", "settled"):
        batch = batch_execute(batch_id=batch.pk, actor=world.maker)
        for _ in range(3):
            world.sandbox.tick()
    if stage == "settled":
        batch = batch_sync(batch_id=batch.pk)
    assert batch.status == {"prepared": "prepared", "approved": "approved", "settled": "completed"}.get(
        stage, "submitted"
    )
    return batch


def _batch_status(batch: PayoutBatch) -> str:
    return PayoutBatch.objects.get(pk=batch.pk).status


# --- API rows ---------------------------------------------------------------------------------------------------

CARD_PAYMENT = {"amount_minor": 10_000, "currency": "USD", "provider": "stripe", "method": "card",
                "payment_method_token": "pm_card_visa"}  # fmt: skip
PURCHASE = {
    "service": "phone-verification",
    "currency": "USD",
    "amount_minor": 10_000,
    "payment_method": "pm_card_visa",
}


def t_accounts(world: World) -> Target:
    code, _ = _wallet_of_a(world)
    return Target("/api/v1/ledger/accounts/", sees=_results_have("code", code))


def t_account(world: World) -> Target:
    code, _ = _wallet_of_a(world)
    return Target(f"/api/v1/ledger/accounts/{code}/")


def t_statement(world: World) -> Target:
    code, _ = _wallet_of_a(world)
    return Target(f"/api/v1/ledger/accounts/{code}/statement/")


def t_reverse(world: World) -> Target:
    _, funding = _wallet_of_a(world)
    return Target(
        f"/api/v1/ledger/transactions/{funding.pk}/reverse/",
        {"reason": "authz matrix"},
        done=lambda _user: Transaction.objects.filter(reverses=funding).exists(),
    )


def t_payment_create(world: World) -> Target:
    return Target("/api/v1/payments/", CARD_PAYMENT, done=lambda user: Payment.objects.filter(user=user).exists())


def t_methods(world: World) -> Target:
    return Target("/api/v1/payments/methods/", query={"amount_minor": "100000", "currency": "PHP"})


def _default_of_a(world: World) -> None:
    CustomerDefaultMethod.objects.update_or_create(user=world.a, defaults={"provider": "gcash", "method": "gcash"})


def t_default_get(world: World) -> Target:
    _default_of_a(world)
    return Target(
        "/api/v1/payments/default-method/", sees=lambda body: body == {"provider": "gcash", "method": "gcash"}
    )


def t_default_put(world: World) -> Target:
    _default_of_a(world)
    a = world.a

    def done(user: User) -> bool:
        mine = CustomerDefaultMethod.objects.get(user=user)
        a_default = CustomerDefaultMethod.objects.get(user=a)
        return (mine.provider, mine.method) == ("maya", "maya_wallet") and (
            user == a or (a_default.provider, a_default.method) == ("gcash", "gcash")  # A's own left alone
        )

    return Target("/api/v1/payments/default-method/", {"provider": "maya", "method": "maya_wallet"}, done=done)


def t_payment(world: World) -> Target:
    payment = _payment_of_a(world)
    return Target(f"/api/v1/payments/{payment.reference}/", sees=lambda body: body["reference"] == payment.reference)


def t_payment_sync(world: World) -> Target:
    payment = _payment_of_a(world)
    return Target(f"/api/v1/payments/{payment.reference}/", query={"sync": "true"})


def t_payment_refund(world: World) -> Target:
    payment = _payment_of_a(world)
    return Target(
        f"/api/v1/payments/{payment.reference}/refunds/",
        {"amount_minor": 2_500},
        done=lambda _user: Payment.objects.get(pk=payment.pk).refunded_minor == 2_500,
    )


def t_disburse(world: World) -> Target:
    cycle = _cycle_with_a(world)
    return Target(
        f"/api/v1/payouts/cycles/{cycle.pk}/disburse/",
        done=lambda _user: PayoutBatch.objects.get(cycle=cycle).status == PayoutBatch.Status.SUBMITTED,
    )


def t_prepare(world: World) -> Target:
    cycle = _cycle_with_a(world)
    return Target(
        f"/api/v1/payouts/cycles/{cycle.pk}/prepare/",
        done=lambda user: PayoutBatch.objects.get(cycle=cycle).prepared_by == user,
    )


def t_batch(world: World) -> Target:
    batch = _batch(world, "approved")
    return Target(f"/api/v1/payouts/batches/{batch.pk}/")


def t_batch_approve(world: World) -> Target:
    batch = _batch(world, "prepared")
    return Target(f"/api/v1/payouts/batches/{batch.pk}/approve/", done=lambda _u: _batch_status(batch) == "approved")


def t_batch_execute(world: World) -> Target:
    batch = _batch(world, "approved")
    return Target(f"/api/v1/payouts/batches/{batch.pk}/execute/", done=lambda _u: _batch_status(batch) == "submitted")


def t_batch_retry(world: World) -> Target:
    batch = _batch(world, "settled")
    return Target(
        f"/api/v1/payouts/batches/{batch.pk}/retry-failed/",
        done=lambda _user: PayoutBatch.objects.filter(retry_of=batch).exists(),
    )


def t_my_payouts(world: World) -> Target:
    batch = _batch(world, "approved")
    item = batch.items.get(selection__user=world.a)
    return Target("/api/v1/payouts/my-payouts/", sees=_results_have("id", item.pk))


def t_deals(world: World) -> Target:
    deal = _deal_of_a(world)
    return Target("/api/v1/escrow/deals/", sees=_results_have("id", deal.pk))


def t_deal_create(world: World) -> Target:
    account = seller(world.sandbox)
    deadline = (timezone.now() + timedelta(days=3)).isoformat()
    body = {"seller_account": account.stripe_account_id, "amount_minor": 15_000, "currency": "USD",
            "deadline": deadline, "timeout_policy": "refund", "payment_method": "pm_card_visa"}  # fmt: skip
    return Target("/api/v1/escrow/deals/", body, done=lambda user: EscrowDeal.objects.get(buyer=user).status == "held")


def t_deal(world: World) -> Target:
    deal = _deal_of_a(world)
    return Target(f"/api/v1/escrow/deals/{deal.pk}/", sees=lambda body: body["id"] == deal.pk)


def t_deal_release(world: World) -> Target:
    deal = _deal_of_a(world)
    return Target(f"/api/v1/escrow/deals/{deal.pk}/release/", done=lambda _u: _deal_status(deal) == "transferred")


def t_deal_cancel(world: World) -> Target:
    deal = _deal_of_a(world)
    return Target(f"/api/v1/escrow/deals/{deal.pk}/cancel/", {"reason": "authz"},
                  done=lambda _u: _deal_status(deal) == "refunded")  # fmt: skip


def t_deal_approve(world: World) -> Target:
    deal = _deal_awaiting_approval(world)
    return Target(f"/api/v1/escrow/deals/{deal.pk}/approve/", done=lambda _u: _deal_status(deal) == "transferred")


def t_purchases(world: World) -> Target:
    purchase = _purchase_of_a(world)
    return Target("/api/v1/purchases/", sees=_results_have("id", purchase.pk))


def t_services(world: World) -> Target:
    _catalogue()
    return Target("/api/v1/purchases/services/", sees=_results_have("code", "phone-verification"))


def t_purchase_create(world: World) -> Target:
    _catalogue()
    return Target(
        "/api/v1/purchases/", PURCHASE, done=lambda user: Purchase.objects.get(buyer=user).status == "reserved"
    )


def t_purchase(world: World) -> Target:
    purchase = _purchase_of_a(world)
    return Target(f"/api/v1/purchases/{purchase.pk}/", sees=lambda body: body["id"] == purchase.pk)


def t_purchase_cancel(world: World) -> Target:
    purchase = _purchase_of_a(world)
    return Target(f"/api/v1/purchases/{purchase.pk}/cancel/", done=lambda _u: _purchase(purchase).status == "voided")


def t_purchase_delivery(world: World) -> Target:
    purchase = _purchase_of_a(world)
    return Target(f"/api/v1/purchases/{purchase.pk}/delivery/", {"outcome": "delivered"},
                  done=lambda _u: _purchase(purchase).status == "captured")  # fmt: skip


def t_purchase_refund(world: World) -> Target:
    purchase = _purchase_of_a(world, stage="captured")
    return Target(f"/api/v1/purchases/{purchase.pk}/refunds/", {"amount_minor": 2_500},
                  done=lambda _u: _purchase(purchase).refunded_minor == 2_500)  # fmt: skip


def t_spend_limits(world: World) -> Target:
    SpendLimit.objects.create(scope="user", currency="USD", window="day", max_amount_minor=1_000_000)
    _purchase_of_a(world)  # counts against A's own limit
    return Target(
        "/api/v1/spend-limits/", query={"currency": "USD"}, sees=lambda body: body[0]["used_amount_minor"] == 10_000
    )


def t_health(world: World) -> Target:
    return Target("/api/health/payments", sees=lambda body: "providers" in body)  # per-provider details


def t_health_check(path: str) -> Callable[[World], Target]:
    return lambda world: Target(path, sees=lambda body: "reasons" in body)  # reasons and details for staff


def t_metrics(world: World) -> Target:
    return Target("/metrics")  # by address or token, not by principal: tests/ops/test_metrics.py


def t_analytics(name: str) -> Callable[[World], Target]:
    def build(world: World) -> Target:
        _payment_of_a(world)  # something to count
        return Target(f"/api/v1/analytics/{name}/")

    return build


def t_schema(world: World) -> Target:
    return Target("/api/schema/")


def t_docs(world: World) -> Target:
    return Target("/api/docs/")


def t_webhook(provider: str) -> Callable[[World], Target]:
    """An unsigned event claiming that a payment of customer A went through: refused whoever sends it."""

    def build(world: World) -> Target:
        claimed = {"id": f"pi_{uuid.uuid4().hex[:24]}", "status": "succeeded", "metadata": {"user": world.a.pk}}
        event = {"id": f"evt_{uuid.uuid4().hex}", "type": "payment_intent.succeeded",
                 "event_type": "PAYMENT.CAPTURE.COMPLETED", "data": {"object": claimed}}  # fmt: skip
        return Target(f"/webhooks/{provider}/", json.dumps(event).encode(), raw=True)

    return build


@dataclass(frozen=True)
class ApiRow:
    url: str  # the URL's name (resolved from the request's path, so a row cannot test the wrong endpoint)
    method: str
    build: Callable[[World], Target]
    expect: tuple[int, ...]  # one per principal, in PRINCIPALS order
    seen_by: frozenset[str] | None = None  # reads: who sees customer A's object (Target.sees is true)
    permission: str = ""  # what a 403 from the service names
    variant: str = ""  # a second row for the same URL and method

    def __post_init__(self) -> None:
        assert len(self.expect) == len(PRINCIPALS), self.url

    @property
    def name(self) -> str:
        return "-".join(filter(None, (self.url.rsplit(":", 1)[-1], self.variant)))


A_AND_FINANCE = frozenset({"customer_a"} | FINANCE)
ANALYTICS = ("volume", "success-rate", "failure-reasons", "refund-rate", "time-to-final", "statuses")
ALL = (200,) * len(PRINCIPALS)

# Customer A owns every object. 404 for another's object; 403 where the caller may see it (or the endpoint is
# for staff only, checked before any lookup, so it answers the same for every id) but lacks the permission.
API_ROWS = [
    #                                                                anon  A    B  view oper appr staff super
    ApiRow("ledger-api:account-list", "GET", t_accounts,             (401, 200, 200, 200, 200, 200, 200, 200),
           A_AND_FINANCE),
    ApiRow("ledger-api:account-detail", "GET", t_account,            (401, 200, 404, 200, 200, 200, 404, 200)),
    ApiRow("ledger-api:account-statement", "GET", t_statement,       (401, 200, 404, 200, 200, 200, 404, 200)),
    ApiRow("ledger-api:transaction-reverse", "POST", t_reverse,      (401, 403, 403, 403, 403, 201, 403, 201),
           permission="ledger.reverse_transaction"),
    ApiRow("payment-create", "POST", t_payment_create,               (401, 201, 201, 201, 201, 201, 201, 201)),
    ApiRow("payment-methods", "GET", t_methods,                      (401, 200, 200, 200, 200, 200, 200, 200)),
    # each user has only their own default: A's is never shown to, nor changed by, anyone else
    ApiRow("payment-default-method", "GET", t_default_get,           (401, 200, 404, 404, 404, 404, 404, 404),
           frozenset({"customer_a"})),
    ApiRow("payment-default-method", "PUT", t_default_put,           (401, 200, 200, 200, 200, 200, 200, 200)),
    ApiRow("payment-detail", "GET", t_payment,                       (401, 200, 404, 200, 200, 200, 404, 200),
           A_AND_FINANCE),
    ApiRow("payment-detail", "GET", t_payment_sync,                  (401, 200, 404, 200, 200, 200, 404, 200),
           variant="sync"),
    # staff who can read the payment but lack providers.add_refund are told so (403)
    ApiRow("payment-refunds", "POST", t_payment_refund,              (401, 403, 404, 403, 403, 201, 404, 201),
           permission="providers.add_refund"),
    # payouts staff endpoints: IsAdminUser first (403 for customers, whatever the id), then the service
    ApiRow("payouts-api:cycle-disburse", "POST", t_disburse,         (401, 403, 403, 403, 200, 403, 403, 200),
           permission="payouts.prepare_payoutbatch"),
    ApiRow("payouts-api:cycle-prepare", "POST", t_prepare,           (401, 403, 403, 403, 200, 403, 403, 200),
           permission="payouts.prepare_payoutbatch"),
    ApiRow("payouts-api:batch-detail", "GET", t_batch,               (401, 403, 403, 200, 200, 200, 403, 200),
           permission="payouts.view_payoutbatch"),
    ApiRow("payouts-api:batch-approve", "POST", t_batch_approve,     (401, 403, 403, 403, 403, 200, 403, 200),
           permission="payouts.approve_payoutbatch"),
    ApiRow("payouts-api:batch-execute", "POST", t_batch_execute,     (401, 403, 403, 403, 200, 403, 403, 200),
           permission="payouts.execute_payoutbatch"),
    ApiRow("payouts-api:batch-retry-failed", "POST", t_batch_retry,  (401, 403, 403, 403, 200, 403, 403, 200),
           permission="payouts.prepare_payoutbatch"),
    ApiRow("payouts-api:my-payouts", "GET", t_my_payouts,            (401, 200, 200, 200, 200, 200, 200, 200),
           frozenset({"customer_a"})),
    ApiRow("escrow-deals-api:deal-list", "GET", t_deals,             (401, 200, 200, 200, 200, 200, 200, 200),
           A_AND_FINANCE),
    ApiRow("escrow-deals-api:deal-list", "POST", t_deal_create,      (401, 201, 201, 201, 201, 201, 201, 201)),
    ApiRow("escrow-deals-api:deal-detail", "GET", t_deal,            (401, 200, 404, 200, 200, 200, 404, 200),
           A_AND_FINANCE),
    # the buyer releases; the seller (or finance) cancels; an approver approves a large release
    ApiRow("escrow-deals-api:deal-release", "POST", t_deal_release,  (401, 200, 404, 403, 200, 403, 404, 200),
           permission="escrow.release_escrowdeal"),
    ApiRow("escrow-deals-api:deal-cancel", "POST", t_deal_cancel,    (401, 403, 404, 403, 200, 403, 404, 200),
           permission="escrow.refund_escrowdeal"),
    ApiRow("escrow-deals-api:deal-approve", "POST", t_deal_approve,  (401, 403, 404, 403, 403, 200, 404, 200),
           permission="escrow.approve_escrowdeal"),
    # the list is the caller's own purchases only, for staff too
    ApiRow("purchases-api:purchase-list", "GET", t_purchases,        (401, 200, 200, 200, 200, 200, 200, 200),
           frozenset({"customer_a"})),
    ApiRow("purchases-api:purchase-list", "POST", t_purchase_create, (401, 201, 201, 201, 201, 201, 201, 201)),
    # the catalogue is no one's: every signed-in user sees it
    ApiRow("purchases-api:service-list", "GET", t_services,          (401, 200, 200, 200, 200, 200, 200, 200),
           frozenset(PRINCIPALS) - {"anonymous"}),
    ApiRow("purchases-api:purchase-detail", "GET", t_purchase,       (401, 200, 404, 200, 200, 200, 404, 200),
           A_AND_FINANCE),
    # staff other than the buyer need escrow.refund_purchase to cancel: those who can see it are told so (403)
    ApiRow("purchases-api:purchase-cancel", "POST", t_purchase_cancel, (401, 200, 404, 403, 403, 200, 404, 200),
           permission="escrow.refund_purchase"),
    # the service back end's permission is checked before the purchase is looked up: 403 for every id
    ApiRow("purchases-api:purchase-delivery", "POST", t_purchase_delivery,
                                                                     (401, 403, 403, 403, 403, 403, 403, 200),
           permission="escrow.deliver_purchase"),
    ApiRow("purchases-api:purchase-refunds", "POST", t_purchase_refund, (401, 403, 404, 403, 403, 201, 404, 201),
           permission="escrow.refund_purchase"),
    # each user sees their own usage only
    ApiRow("spend-limits-api:mine", "GET", t_spend_limits,           (401, 200, 200, 200, 200, 200, 200, 200),
           frozenset({"customer_a"})),
    # the dashboard's figures: finance staff only, checked before anything is read
    *(ApiRow(f"analytics-api:{name}", "GET", t_analytics(name),    (401, 403, 403, 200, 200, 200, 403, 200),
             permission="analytics.view_dailystatussummary")
      for name in ANALYTICS if apps.is_installed("analytics")),
    # status for everyone; per-provider details for staff
    ApiRow("health-payments", "GET", t_health, ALL, STAFF),
    ApiRow("health", "GET", t_health_check("/api/health"), ALL, STAFF),
    *(ApiRow(f"health-{check}", "GET", t_health_check(f"/api/health/{check}"), ALL, STAFF)
      for check in ("database", "redis", "celery")),
    ApiRow("metrics", "GET", t_metrics, ALL),  # the test client's loopback address is allowed
    ApiRow("api-schema", "GET", t_schema, ALL),
    ApiRow("api-docs", "GET", t_docs, ALL),
    # webhooks: no principal at all; an unsigned event is refused whoever sends it
    *(ApiRow("webhook", "POST", t_webhook(provider), (400,) * len(PRINCIPALS), variant=provider)
      for provider in ("stripe", "paypal", "maya", "gcash")),
]  # fmt: skip


def api_client(user: User | None, *, session: bool = False) -> APIClient:
    client = APIClient()
    if user is not None and session:
        client.force_login(user)
    elif user is not None:
        client.force_authenticate(user)
    return client


def send(client: APIClient, method: str, target: Target) -> Any:
    if target.raw:
        return client.post(target.path, target.body, content_type="application/json")
    if method == "GET":
        return client.get(target.path, target.query or {})
    if method == "PUT":
        return client.put(target.path, target.body, format="json")
    return client.post(target.path, target.body or {}, format="json", HTTP_IDEMPOTENCY_KEY=uuid.uuid4().hex)


def assert_error_body(response: Any, status: int, permission: str) -> None:
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == ERROR_FIELDS, error
    assert error["code"] == ERROR_CODES[status], error
    assert error["user_message"] and error["action_required"] and error["retryable"] is False, error
    if status == 403 and "permission" in error["details"]:
        assert error["details"]["permission"] == permission, error


# --- one row's objects, shared by its cells -----------------------------------------------------------------


@dataclass
class Shared:
    row: Any  # an ApiRow or AdminRow
    users: dict[str, User | None]  # customer A and whoever else the build made
    built: Any  # the row's Target or Selection


@pytest.fixture(scope="module")
def shared_row(request, django_db_setup, django_db_blocker, _sandbox_server, _paypal) -> Iterator[Shared]:
    """The row's objects, built once in a transaction that is rolled back after the row's last cell."""
    row = request.param
    outer = transaction.atomic()
    outer._from_testcase = True  # as TestCase.setUpTestData's is: a test's wrapping transaction, never committed
    with django_db_blocker.unblock(), outer:
        row_settings = RowSettings()
        prefix = _isolate(row_settings)
        try:
            _use_sandbox(row_settings, _sandbox_server, _paypal)
            forget_account_facts()
            world = World(_sandbox_server, row_settings)
            built = row.build(world)
            yield Shared(row, dict(world.users), built)
        finally:
            transaction.set_rollback(True)
            row_settings.restore()
            forget_account_facts()
            _forget_provider_state(prefix)


def cell_world(shared: Shared, sandbox: Sandbox, settings: Any) -> World:
    return World(sandbox, settings, dict(shared.users))


# The row's parametrization is the inner one, so ids read row first: payment-detail-GET-customer_b.
@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize("shared_row", API_ROWS, ids=[f"{row.name}-{row.method}" for row in API_ROWS], indirect=True)
def test_api(shared_row: Shared, principal: str, sandbox: Sandbox, settings) -> None:
    row: ApiRow = shared_row.row
    world = cell_world(shared_row, sandbox, settings)
    expected = row.expect[PRINCIPALS.index(principal)]
    moves_money = expected < 400 and row.method != "GET"
    target = row.build(world) if moves_money else shared_row.built
    user = world.user(principal)
    client = api_client(user, session=target.raw)
    before = money_state(world)

    response = send(client, row.method, target)

    assert resolve(target.path).view_name == row.url
    assert response.status_code == expected, response.content[:1000]
    after = money_state(world)
    if expected >= 400:
        assert_error_body(response, expected, row.permission)
        assert changed(before, after) == []
        return
    if moves_money:
        assert changed(before, after), "an allowed request that moves money moved nothing"
    else:
        assert changed(before, after) == []
    if target.done is not None:
        assert target.done(user), "the allowed request did not do what it should"
    if row.seen_by is not None:
        assert target.sees is not None
        assert target.sees(response.json()) == (principal in row.seen_by)


# --- admin rows -------------------------------------------------------------------------------------------------


@dataclass
class Selection:
    """The objects an admin action is asked to act on, the confirmation page's fields, and its effect."""

    ids: list[int]
    done: Callable[[], bool]
    form: dict[str, str] = field(default_factory=dict)


def s_prepare(world: World) -> Selection:
    cycle = _cycle_with_a(world)
    return Selection([cycle.pk], lambda: PayoutBatch.objects.filter(cycle=cycle).exists())


def s_fund_pool(world: World) -> Selection:
    cycle, key = _cycle_with_a(world), uuid.uuid4().hex
    funded = Transaction.objects.filter(idempotency_key=f"winnings-fund:cycle-{cycle.pk}:{key}")
    return Selection([cycle.pk], funded.exists, {"amount": "100.00", "currency": "USD", "funding_key": key})


def s_batch(stage: str, done_status: str) -> Callable[[World], Selection]:
    def build(world: World) -> Selection:
        batch = _batch(world, stage)
        return Selection([batch.pk], lambda: _batch_status(batch) == done_status)

    return build


def s_retry_failed(world: World) -> Selection:
    batch = _batch(world, "settled")
    return Selection([batch.pk], lambda: PayoutBatch.objects.filter(retry_of=batch).exists())


def s_sync_batch(world: World) -> Selection:
    batch = _batch(world, "ticked")
    return Selection([batch.pk], lambda: not batch.items.filter(status=PayoutItem.Status.PENDING).exists())


def s_cancel_unclaimed(world: World) -> Selection:
    world.settings.PAYOUT_UNCLAIMED_CANCEL_AFTER_DAYS = 0
    item = _batch(world, "settled").items.get(status=PayoutItem.Status.UNCLAIMED)
    return Selection([item.pk], lambda: PayoutItem.objects.get(pk=item.pk).status == PayoutItem.Status.RETURNED)


def s_deal(build_deal: Callable[[World], EscrowDeal], done_status: str) -> Callable[[World], Selection]:
    def build(world: World) -> Selection:
        deal = build_deal(world)
        return Selection([deal.pk], lambda: _deal_status(deal) == done_status)

    return build


def s_purchase_cancel(world: World) -> Selection:
    purchase = _purchase_of_a(world, stage="captured")
    return Selection([purchase.pk], lambda: _purchase(purchase).refunded_minor == purchase.captured_minor)


def s_purchase_refund_part(world: World) -> Selection:
    purchase = _purchase_of_a(world, stage="captured")
    form = {"amount": "25.00", "reason": "authz", "refund_key": uuid.uuid4().hex}
    return Selection([purchase.pk], lambda: _purchase(purchase).refunded_minor == 2_500, form)


def s_purchase_sync(world: World) -> Selection:
    purchase = _purchase_of_a(world, stage="capture_unknown")
    return Selection([purchase.pk], lambda: _purchase(purchase).status == "captured")


def s_reverse(world: World) -> Selection:
    _, funding = _wallet_of_a(world)
    return Selection([funding.pk], lambda: Transaction.objects.filter(reverses=funding).exists(), {"reason": "authz"})


def s_reprocess(world: World) -> Selection:
    event = WebhookEvent.objects.create(
        provider="stripe", event_id=f"evt_{uuid.uuid4().hex}", event_type="authz.unhandled", signature_valid=True,
        body=json.dumps({"id": "evt", "type": "authz.unhandled"}), status=WebhookEvent.Status.FAILED, attempts=5,
    )  # fmt: skip
    return Selection([event.pk], lambda: WebhookEvent.objects.get(pk=event.pk).status != WebhookEvent.Status.FAILED)


def s_movement_sync(world: World) -> Selection:
    purchase = _purchase_of_a(world, stage="capture_unknown")
    movement = MoneyMovement.objects.get(key=f"purchase:{purchase.pk}:capture", status=MoneyMovement.Status.UNKNOWN)
    return Selection([movement.pk], lambda: MoneyMovement.objects.get(pk=movement.pk).status in MoneyMovement.FINAL)


def s_lock(world: World) -> Selection:
    lock = lock_acquire(key=f"escrow-deal:{_deal_of_a(world).pk}", holder="worker-7", reason="releasing escrow")
    return Selection([lock.pk], lambda: not ProcessingLock.objects.filter(pk=lock.pk).exists())


@dataclass(frozen=True)
class AdminRow:
    model: type[Model]
    action: str
    build: Callable[[World], Selection]
    expect: tuple[object, ...]  # one per principal, in PRINCIPALS order
    says: str  # in the error message of every REFUSED cell
    confirm: bool = True  # posted as its confirmation page posts it (post=yes); else as the changelist does

    def __post_init__(self) -> None:
        assert len(self.expect) == len(PRINCIPALS), self.action

    @property
    def name(self) -> str:
        return f"admin-{self.model._meta.model_name}-{self.action}"


L, R, H = LOGIN, REFUSED, HIDDEN

# Customers are not staff: the admin sends them to its login page like anonymous visitors.
ADMIN_ROWS = [
    #                                                           anon A  B  view oper appr staff super
    AdminRow(PayoutCycle, "prepare", s_prepare,                  (L, L, L, R, DONE, R, 403, DONE),
             "payouts.prepare_payoutbatch", confirm=False),
    AdminRow(PayoutCycle, "fund_prize_pool", s_fund_pool,        (L, L, L, R, R, DONE, 403, DONE),
             "payouts.fund_payoutcycle"),
    AdminRow(PayoutBatch, "approve", s_batch("prepared", "approved"), (L, L, L, R, R, DONE, 403, DONE),
             "payouts.approve_payoutbatch"),
    AdminRow(PayoutBatch, "execute", s_batch("approved", "submitted"), (L, L, L, R, DONE, R, 403, DONE),
             "payouts.execute_payoutbatch"),
    AdminRow(PayoutBatch, "retry_failed", s_retry_failed,        (L, L, L, R, DONE, R, 403, DONE),
             "payouts.prepare_payoutbatch", confirm=False),
    AdminRow(PayoutBatch, "sync_now", s_sync_batch,              (L, L, L, R, DONE, R, 403, DONE),
             "payouts.execute_payoutbatch", confirm=False),
    AdminRow(PayoutItem, "cancel_unclaimed", s_cancel_unclaimed, (L, L, L, R, DONE, R, 403, DONE),
             "payouts.execute_payoutbatch"),
    AdminRow(EscrowDeal, "release", s_deal(_deal_of_a, "transferred"), (L, L, L, R, DONE, R, 403, DONE),
             "escrow.release_escrowdeal"),
    AdminRow(EscrowDeal, "approve_release", s_deal(_deal_awaiting_approval, "transferred"),
             (L, L, L, R, R, DONE, 403, DONE), "escrow.approve_escrowdeal"),
    AdminRow(EscrowDeal, "refund", s_deal(_deal_of_a, "refunded"), (L, L, L, R, DONE, R, 403, DONE),
             "escrow.refund_escrowdeal"),
    AdminRow(EscrowDeal, "retry_transfer", s_deal(_deal_transfer_failed, "transferred"),
             (L, L, L, R, DONE, R, 403, DONE), "escrow.retry_transfer_escrowdeal"),
    AdminRow(Purchase, "cancel_and_refund", s_purchase_cancel,   (L, L, L, R, R, DONE, 403, DONE),
             "escrow.refund_purchase"),
    AdminRow(Purchase, "refund_part", s_purchase_refund_part,    (L, L, L, R, R, DONE, 403, DONE),
             "escrow.refund_purchase"),
    AdminRow(Purchase, "sync_unknown", s_purchase_sync,          (L, L, L, R, DONE, R, 403, DONE),
             "escrow.sync_purchase", confirm=False),
    AdminRow(Transaction, "reverse_selected", s_reverse,         (L, L, L, H, H, DONE, 403, DONE),
             "ledger.reverse_transaction"),
    AdminRow(WebhookEvent, "reprocess", s_reprocess,             (L, L, L, H, DONE, H, 403, DONE),
             "providers.reprocess_webhookevent", confirm=False),
    # every finance role sees money movements; the operator asks the provider now
    AdminRow(MoneyMovement, "sync_now", s_movement_sync,         (L, L, L, H, DONE, H, 403, DONE),
             "providers.sync_moneymovement", confirm=False),
    AdminRow(ProcessingLock, "release", s_lock,                  (L, L, L, H, DONE, H, 403, DONE),
             "core.release_processinglock", confirm=False),
]  # fmt: skip


def changelist(model: type[Model]) -> str:
    return f"/admin/{model._meta.app_label}/{model._meta.model_name}/"


def run_action(client: Client, row: AdminRow, selection: Selection) -> Any:
    """Post the action as the admin's own pages do: the confirmation page's form (post=yes), or the changelist's."""
    data: dict[str, object] = {"action": row.action, "_selected_action": [str(pk) for pk in selection.ids]}
    data.update({"post": "yes", **selection.form} if row.confirm else {"index": "0"})
    return client.post(changelist(row.model), data)


def messages_by_level(response: Any) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for message in get_messages(response.wsgi_request):
        found.setdefault(message.level, []).append(str(message))
    return found


@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize("shared_row", ADMIN_ROWS, ids=[row.name for row in ADMIN_ROWS], indirect=True)
def test_admin_action(shared_row: Shared, principal: str, sandbox: Sandbox, settings) -> None:
    row: AdminRow = shared_row.row
    world = cell_world(shared_row, sandbox, settings)
    expected = row.expect[PRINCIPALS.index(principal)]
    selection = row.build(world) if expected == DONE else shared_row.built
    user = world.user(principal)
    client = Client()
    if user is not None:
        client.force_login(user)
    before = money_state(world)

    response = run_action(client, row, selection)

    after = money_state(world)
    if expected == DONE:
        assert response.status_code == 302, response.content[:1000]
        said = messages_by_level(response)
        assert said.keys() & {message_levels.SUCCESS, message_levels.WARNING} and message_levels.ERROR not in said, said
        assert changed(before, after), "the action ran but nothing moved"
        assert selection.done(), said
        return
    assert changed(before, after) == []
    if expected == LOGIN:
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    elif expected == HIDDEN:
        assert response.status_code == 200  # the changelist again: its only action is not offered
        assert row.action not in admin.site.get_model_admin(row.model).get_actions(response.wsgi_request)
    elif expected == REFUSED:
        assert response.status_code == 302, response.content[:1000]
        said = messages_by_level(response)
        assert set(said) == {message_levels.ERROR}, said
        assert all(row.says in text for text in said[message_levels.ERROR]), said
    else:
        assert response.status_code == expected


def _url_names(patterns: list[Any], namespace: str = "") -> set[str]:
    """The names of every URL outside the admin (the admin's money actions are ADMIN_ROWS)."""
    names: set[str] = set()
    for pattern in patterns:
        if str(pattern.pattern).startswith("admin/"):
            continue
        if isinstance(pattern, URLResolver):
            names |= _url_names(
                pattern.url_patterns, f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            )
        elif isinstance(pattern, URLPattern) and pattern.name:
            names.add(f"{namespace}{pattern.name}")
    return names


def test_the_table_covers_every_api_endpoint() -> None:
    """A new endpoint must get a row here."""
    assert _url_names(get_resolver().url_patterns) == {row.url for row in API_ROWS}


def test_the_table_covers_every_admin_action_that_moves_money() -> None:
    """A new money action on these admins must get a row here."""
    rows = {(row.model, row.action) for row in ADMIN_ROWS}
    for model in {row.model for row in ADMIN_ROWS}:
        declared = set(admin.site.get_model_admin(model).actions or ())
        assert declared <= {action for m, action in rows if m is model}, model


# --- maker-checker ----------------------------------------------------------------------------------------------


def _maker_who_also_approves(world: World) -> User:
    """The maker (a finance operator) given the approver role too: may release and approve, prepare and approve."""
    maker = world.maker
    maker.groups.add(_group("Finance approver"))
    world.users["maker"] = maker = User.objects.get(pk=maker.pk)  # a fresh permission cache
    return maker


def test_the_preparer_of_a_payout_batch_cannot_approve_it(world: World) -> None:
    both = _maker_who_also_approves(world)
    batch = _batch(world, "prepared")  # prepared by that same user
    before = money_state(world)

    by_api = send(api_client(both), "POST", Target(f"/api/v1/payouts/batches/{batch.pk}/approve/"))
    client = Client()
    client.force_login(both)
    approve_row = next(row for row in ADMIN_ROWS if (row.model, row.action) == (PayoutBatch, "approve"))
    by_admin = run_action(client, approve_row, Selection([batch.pk], lambda: False))

    assert by_api.status_code == 403 and by_api.json()["error"]["code"] == "maker_checker"
    assert messages_by_level(by_admin) == {
        message_levels.ERROR: [
            f"{batch.sender_batch_id}: The person who prepared this batch cannot also approve it. "
            "Ask another finance approver to approve the batch."
        ]
    }
    assert changed(before, money_state(world)) == []
    approver = world.user("approver")
    approved = send(api_client(approver), "POST", Target(f"/api/v1/payouts/batches/{batch.pk}/approve/"))
    assert (approved.status_code, approved.json()["approved_by"]) == (200, approver.pk)


def test_the_one_who_asked_for_an_escrow_release_cannot_approve_it(world: World) -> None:
    world.settings.ESCROW_APPROVAL_THRESHOLD_MINOR = 5_000
    both = _maker_who_also_approves(world)
    deal = _deal_of_a(world)
    asked = send(api_client(both), "POST", Target(f"/api/v1/escrow/deals/{deal.pk}/release/"))
    assert (asked.status_code, asked.json()["status"]) == (200, "awaiting_approval")
    before = money_state(world)

    by_api = send(api_client(both), "POST", Target(f"/api/v1/escrow/deals/{deal.pk}/approve/"))
    client = Client()
    client.force_login(both)
    approve_row = next(row for row in ADMIN_ROWS if row.action == "approve_release")
    by_admin = run_action(client, approve_row, Selection([deal.pk], lambda: False))

    assert by_api.status_code == 403 and by_api.json()["error"]["code"] == "maker_checker"
    assert messages_by_level(by_admin) == {
        message_levels.ERROR: [
            f"Deal {deal.pk}: The person who asked for this release (or a party to the deal) cannot approve it. "
            "Ask another finance approver to approve the release."
        ]
    }
    assert changed(before, money_state(world)) == []
    approved = send(api_client(world.user("approver")), "POST", Target(f"/api/v1/escrow/deals/{deal.pk}/approve/"))
    assert (approved.status_code, approved.json()["status"]) == (200, "transferred")


def test_the_buyer_holding_the_approver_role_cannot_approve_their_own_deal(world: World) -> None:
    world.settings.ESCROW_APPROVAL_THRESHOLD_MINOR = 5_000
    buyer = world.a
    buyer.is_staff = True
    buyer.save(update_fields=["is_staff"])
    buyer.groups.add(_group("Finance approver"))
    deal = deal_release(deal_id=_deal_of_a(world).pk, actor=buyer)
    before = money_state(world)

    refused = send(
        api_client(User.objects.get(pk=buyer.pk)), "POST", Target(f"/api/v1/escrow/deals/{deal.pk}/approve/")
    )

    assert refused.status_code == 403 and refused.json()["error"]["code"] == "maker_checker"
    assert changed(before, money_state(world)) == []
