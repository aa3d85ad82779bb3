"""Stripe in the sandbox: the part of the v1 API our client uses, under `/stripe/v1/...`.

Kept as Stripe does it:
- secret-key auth (`Authorization: Bearer sk_...`), 401 otherwise;
- `Idempotency-Key` per API key: the first answer (errors included) is stored and replayed with
  `Idempotent-Replayed: true`; the same key with other parameters gets 400 `idempotency_error`; while the
  first request is still running, 409. Parameter validation errors are not stored (Stripe stores a result
  only once the endpoint began executing). Keys are forgotten after `idempotency_window_seconds` (24 h);
- test payment methods: `pm_card_visa` succeeds, `pm_card_chargeDeclined...` answer 402 `card_error`
  and leave the PaymentIntent in `requires_payment_method` with a failed charge;
- PaymentIntent statuses requires_payment_method / requires_confirmation -> requires_capture (manual) or
  succeeded (automatic); requires_capture -> succeeded (capture, full or partial) or canceled;
- refunds never exceed the captured amount, transfer reversals never exceed the transfer;
- connected accounts (`GET /v1/accounts/{id}`) are made and changed by `account_set(sandbox, id, transfers=...)`
  (or `POST /stripe/_simulate/accounts/{id}`), which sends `account.updated`; with `sandbox.activate_accounts`
  an unknown account asked for is made active first (as `manage.py sandbox` runs); a transfer to a known account
  whose `transfers` capability is not active gets 400 `insufficient_capabilities_for_transfer` (not stored);
- events (`evt_...`) POSTed to the URL configured for provider "stripe", signed
  `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "{t}.{body}">` with settings.STRIPE_WEBHOOK_SECRET;
- objects keep the metadata they were created with (a capture may add to a PaymentIntent's), and lists and
  search answer it: `GET /v1/payment_intents/search?query=metadata['key']:'value' AND ...` (metadata equality
  only, quotes ' or " with backslash escapes; anything else 400, not stored; newest first; `limit` 1..100,
  `page` from `next_page`), `GET /v1/refunds?payment_intent=|charge=` and `GET /v1/transfers?transfer_group=|
  destination=` (newest first, `limit` 1..100, `starting_after`). Like Stripe's, search is eventually
  consistent: a PaymentIntent becomes searchable `search_lag_seconds` after it was made (0 unless a test sets
  it; Stripe documents under a minute, up to an hour during outages). Lists are immediate.
- `Sandbox.forget_idempotency_keys("stripe")` forgets every stored key (the 24 h window passed); objects stay.

Simplifications: no minimum amounts per currency, no platform balance, no `expand` (but `data.source` on the
balance transactions list), and a charge's
`amount_refunded` counts refunds only (Stripe also counts the part a partial capture released).
Tests reach the state through `state_of(sandbox)`; `processing_delay_seconds` keeps a request (and its
idempotency key) in flight for a while, so a concurrent request with the same key can be exercised.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
import secrets
import string
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import parse_qsl

from django.conf import settings

from providers.sandbox.server import Handler, Sandbox, SandboxRequest, SandboxResponse

Obj = dict[str, Any]
API_VERSION = "2026-10-28.endive"  # when the request names none
IDEMPOTENCY_WINDOW_SECONDS = 24 * 3600
MAX_IDEMPOTENCY_KEY_LENGTH = 255
CANCELABLE = ("requires_payment_method", "requires_capture", "requires_confirmation", "requires_action", "processing")
PAYMENT_INTENT_PARAMS = (
    "amount",
    "currency",
    "capture_method",
    "confirm",
    "payment_method",
    "payment_method_types",
    "metadata",
    "transfer_group",
    "description",
)
_ID_ALPHABET = string.ascii_letters + string.digits
_SECRET_KEY = re.compile(r"^(sk|rk)_(test|live)_\w+$")


@dataclass(frozen=True)
class SandboxCard:
    brand: str
    last4: str
    code: str = ""  # set when the issuer refuses: card_declined, expired_card, ...
    decline_code: str = ""
    message: str = ""

    @property
    def declined(self) -> bool:
        return bool(self.code)


_DECLINED = "Your card was declined."
TEST_PAYMENT_METHODS: dict[str, SandboxCard] = {
    "pm_card_visa": SandboxCard("visa", "4242"),
    "pm_card_mastercard": SandboxCard("mastercard", "4444"),
    "pm_card_amex": SandboxCard("amex", "8431"),
    "pm_card_chargeDeclined": SandboxCard("visa", "0002", "card_declined", "generic_decline", _DECLINED),
    "pm_card_chargeDeclinedInsufficientFunds": SandboxCard(
        "visa", "9995", "card_declined", "insufficient_funds", "Your card has insufficient funds."
    ),
    "pm_card_chargeDeclinedFraudulent": SandboxCard("visa", "0019", "card_declined", "fraudulent", _DECLINED),
    "pm_card_chargeDeclinedExpiredCard": SandboxCard("visa", "0069", "expired_card", "", "Your card has expired."),
    "pm_card_chargeDeclinedProcessingError": SandboxCard(
        "visa",
        "0119",
        "processing_error",
        "",
        "An error occurred while processing your card. Try again in a little bit.",
    ),
}


@dataclass
class IdempotencyRecord:
    fingerprint: tuple[str, str, tuple[tuple[str, str], ...]]
    started_at: float
    response: SandboxResponse | None = None  # None while the first request is running


@dataclass
class StripeState:
    payment_intents: dict[str, Obj] = field(default_factory=dict)
    charges: dict[str, Obj] = field(default_factory=dict)
    refunds: dict[str, Obj] = field(default_factory=dict)
    transfers: dict[str, Obj] = field(default_factory=dict)
    reversals: dict[str, Obj] = field(default_factory=dict)
    accounts: dict[str, Obj] = field(default_factory=dict)  # connected accounts; unknown acct_ ids accept transfers
    payment_methods: dict[str, SandboxCard] = field(default_factory=dict)
    idempotency: dict[tuple[str, str], IdempotencyRecord] = field(default_factory=dict)
    events: list[Obj] = field(default_factory=list)  # every event, delivered or not
    balance_transactions: dict[str, Obj] = field(default_factory=dict)  # txn_...: every movement of money
    searchable_at: dict[str, float] = field(default_factory=dict)  # PaymentIntent id -> monotonic time
    processing_delay_seconds: float = 0.0
    idempotency_window_seconds: float = IDEMPOTENCY_WINDOW_SECONDS
    search_lag_seconds: float = 0.0

    def forget_idempotency_keys(self) -> None:
        self.idempotency.clear()

    def reset(self) -> None:
        for table in (self.payment_intents, self.charges, self.refunds, self.transfers, self.reversals):
            table.clear()
        self.accounts.clear()
        self.payment_methods.clear()
        self.idempotency.clear()
        self.events.clear()
        self.balance_transactions.clear()
        self.searchable_at.clear()
        self.processing_delay_seconds = 0.0
        self.idempotency_window_seconds = IDEMPOTENCY_WINDOW_SECONDS
        self.search_lag_seconds = 0.0


class Refusal(Exception):
    """An error answer shaped like Stripe's; `stored` says whether the idempotency layer keeps it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str = "",
        param: str = "",
        stored: bool = True,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status, self.stored = status, stored
        self.error: Obj = {"type": type_, "message": message}
        if code:
            self.error.update(code=code, doc_url=f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}")
        if param:
            self.error["param"] = param
        self.error.update(extra)

    def response(self) -> SandboxResponse:
        return SandboxResponse(self.status, {"error": copy.deepcopy(self.error)})


@dataclass
class Call:
    params: dict[str, str]
    object_id: str
    request_id: str
    idempotency_key: str
    api_version: str
    events: list[tuple[str, Obj]] = field(default_factory=list)

    def emit(self, event_type: str, obj: Obj) -> None:
        self.events.append((event_type, copy.deepcopy(obj)))


Action = Callable[[Call], Obj]


def install(sandbox: Sandbox) -> None:
    state = StripeState()
    sandbox.stripe = state  # type: ignore[attr-defined]
    sandbox.resetters.append(state.reset)
    sandbox.key_forgetters["stripe"] = state.forget_idempotency_keys
    api = StripeApi(sandbox, state)
    sandbox.stripe_api = api  # type: ignore[attr-defined]
    for method, pattern, operation, action in api.routes():
        sandbox.route(method, f"/stripe/v1/{pattern}", f"stripe.{operation}")(api.endpoint(action, method))
    sandbox.route("POST", "/stripe/_simulate/accounts/(?P<id>[^/]+)", "_control.stripe.accounts")(api.simulate_account)


def account_set(sandbox: Sandbox, account_id: str, *, transfers: str = "active") -> Obj:
    """Create or update a connected account (its `transfers` capability: active, inactive or pending) and
    send `account.updated`, as Stripe does when an account finishes (or loses) verification. Over HTTP:
    `POST /stripe/_simulate/accounts/{id}` with `{"transfers": "active"}`."""
    api: StripeApi = sandbox.stripe_api  # type: ignore[attr-defined]
    return api.account_set(account_id, transfers=transfers)


def state_of(sandbox: Sandbox) -> StripeState:
    state: StripeState = sandbox.stripe  # type: ignore[attr-defined]
    return state


def _webhook_headers(body: bytes) -> dict[str, str]:
    """One delivery attempt's headers: signed now, with the secret configured now (each retry anew)."""
    return {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        "Stripe-Signature": stripe_signature(body, settings.STRIPE_WEBHOOK_SECRET, _now()),
    }


def stripe_signature(body: bytes, secret: str, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def new_id(prefix: str) -> str:
    return f"{prefix}_{''.join(secrets.choice(_ID_ALPHABET) for _ in range(24))}"


def _now() -> int:
    return int(time.time())


# --- balance transactions: reconciliation reads them; tests place them on a given day
# Card pricing per currency (basis points, fixed minor units), as Stripe's standard pricing (and our fee rules).
CARD_FEES: dict[str, tuple[int, int]] = {"usd": (290, 30), "php": (350, 1_500)}
_BALANCE_TYPES = {  # type -> reporting_category
    "charge": "charge",
    "refund": "refund",
    "transfer": "transfer",
    "transfer_refund": "transfer_reversal",
    "adjustment": "other_adjustment",
}
_balance_seq = iter(range(1, 10**12))


def card_fee(currency: str, amount: int) -> int:
    bps, fixed = CARD_FEES.get(currency.lower(), (290, 0))
    return (amount * bps + 5_000) // 10_000 + fixed


def _balance_transaction(txn_id: str, type_: str, source: str, amount: int, fee: int, currency: str) -> Obj:
    created = _now()
    return {
        "id": txn_id,
        "object": "balance_transaction",
        "amount": amount,
        "available_on": created + (2 * 86_400 if type_ == "charge" else 0),
        "created": created,
        "currency": currency.lower(),
        "description": None,
        "exchange_rate": None,
        "fee": fee,
        "fee_details": [_stripe_fee(fee, currency)] if fee else [],
        "net": amount - fee,
        "reporting_category": _BALANCE_TYPES[type_],
        "source": source,
        "status": "pending" if type_ == "charge" else "available",
        "type": type_,
        "_seq": next(_balance_seq),  # ties on `created` keep insertion order; never sent
    }


def _stripe_fee(fee: int, currency: str) -> Obj:
    return {"amount": fee, "currency": currency.lower(), "description": "Stripe processing fees", "type": "stripe_fee"}


def _balance_matches(txn: Obj, params: dict[str, str]) -> bool:
    bounds = {"gte": int.__ge__, "gt": int.__gt__, "lte": int.__le__, "lt": int.__lt__}
    for op, holds in bounds.items():
        raw = params.get(f"created[{op}]")
        if raw is not None and not holds(txn["created"], _integer(params, f"created[{op}]", minimum=0)):
            return False
    return all(not params.get(name) or txn[name] == params[name] for name in ("type", "source"))


def _query(request: SandboxRequest) -> dict[str, str]:
    return {key: values[-1] for key, values in request.query.items()}


def balance_transaction_set_created(sandbox: Sandbox, txn_id: str, created: int) -> Obj:
    """Test hook: move a balance transaction to another time (e.g. onto the day being reconciled)."""
    state = state_of(sandbox)
    with sandbox.lock:
        state.balance_transactions[txn_id]["created"] = created
        return copy.deepcopy(state.balance_transactions[txn_id])


def balance_transaction_add(
    sandbox: Sandbox, *, type_: str, source: str, amount: int, currency: str, created: int, fee: int = 0
) -> Obj:
    """Test hook: a movement Stripe reports without a call of ours (e.g. a duplicate or an adjustment)."""
    txn = _balance_transaction(new_id("txn"), type_, source, amount, fee, currency)
    txn["created"] = created
    with sandbox.lock:
        state_of(sandbox).balance_transactions[txn["id"]] = txn
    return copy.deepcopy(txn)


# --- parameters (form fields; nested keys stay flat, e.g. `metadata[order]`)
def _allow(params: dict[str, str], names: Iterable[str]) -> None:
    allowed = set(names)
    for key in params:
        if key.split("[", 1)[0] not in allowed:
            raise Refusal(400, f"Received unknown parameter: {key}", code="parameter_unknown", param=key, stored=False)


def _integer(params: dict[str, str], name: str, *, default: int | None = None, minimum: int = 1) -> int:
    raw = params.get(name)
    if raw is None:
        if default is None:
            raise Refusal(400, f"Missing required param: {name}.", code="parameter_missing", param=name, stored=False)
        return default
    if not re.fullmatch(r"-?\d+", raw):
        raise Refusal(400, f"Invalid integer: {raw}", code="parameter_invalid_integer", param=name, stored=False)
    if int(raw) < minimum:
        message = f"This value must be greater than or equal to {minimum}."
        raise Refusal(400, message, code="parameter_invalid_integer", param=name, stored=False)
    return int(raw)


def _required(params: dict[str, str], name: str) -> str:
    value = params.get(name, "")
    if not value:
        raise Refusal(400, f"Missing required param: {name}.", code="parameter_missing", param=name, stored=False)
    return value


def _currency(params: dict[str, str]) -> str:
    currency = _required(params, "currency")
    if not re.fullmatch(r"[A-Za-z]{3}", currency):
        raise Refusal(
            400, f"Invalid currency: {currency}.", code="parameter_invalid_string", param="currency", stored=False
        )
    return currency.lower()


def _choice(params: dict[str, str], name: str, choices: Iterable[str], default: str | None) -> str | None:
    value = params.get(name, default)
    options = sorted(choices)
    if value is not None and value not in options:
        message = f"Invalid {name}: must be one of {', '.join(options)}"
        raise Refusal(400, message, code="parameter_invalid_string", param=name, stored=False)
    return value


def _boolean(params: dict[str, str], name: str) -> bool:
    value = params.get(name, "false")
    if value not in ("true", "false"):
        raise Refusal(400, f"Invalid boolean: {value}", code="parameter_invalid_boolean", param=name, stored=False)
    return value == "true"


def _metadata(params: dict[str, str]) -> dict[str, str]:
    found = (re.fullmatch(r"metadata\[(.+)\]", key) for key in params)
    return {match[1]: params[match[0]] for match in found if match and params[match[0]] != ""}


def _list(name: str, object_id: str, kind: str) -> Obj:
    return {"object": "list", "data": [], "has_more": False, "total_count": 0, "url": f"/v1/{kind}/{object_id}/{name}"}


def _limit(params: dict[str, str]) -> int:
    limit = _integer(params, "limit", default=10)
    if limit > 100:
        raise Refusal(400, "This value must be less than or equal to 100.", code="parameter_invalid_integer",
                      param="limit", stored=False)  # fmt: skip
    return limit


def _list_page(rows: list[Obj], params: dict[str, str], kind: str, url: str) -> Obj:
    """One page of a list endpoint: `rows` newest first, cut after `starting_after` and at `limit`."""
    limit = _limit(params)
    if params.get("starting_after"):
        ids = [row["id"] for row in rows]
        if params["starting_after"] not in ids:
            raise Refusal(404, f"No such {kind}: '{params['starting_after']}'", code="resource_missing",
                          param="starting_after", stored=False)  # fmt: skip
        rows = rows[ids.index(params["starting_after"]) + 1 :]
    return {"object": "list", "data": rows[:limit], "has_more": len(rows) > limit, "url": url}


# --- search: Stripe's query language, the part we use (metadata equality, AND)
_SEARCH_PAGE_PREFIX = "page_"
_SEARCH_CLAUSE = re.compile(
    r"""metadata\[(?P<kq>['"])(?P<key>(?:\\.|(?!(?P=kq))[^\\])*)(?P=kq)\]"""
    r""":(?P<vq>['"])(?P<value>(?:\\.|(?!(?P=vq))[^\\])*)(?P=vq)"""
)
_SEARCH_AND = re.compile(r"\s+AND\s+")


def parse_search_query(query: str) -> list[tuple[str, str]]:
    """`metadata['key']:'value' AND metadata["k2"]:"v2"` as [(key, value), ...]; anything else is refused
    with 400 (not stored), as Stripe refuses a query it cannot parse."""
    clauses, position, text = [], 0, query.strip()
    while True:
        match = _SEARCH_CLAUSE.match(text, position)
        if match is None or not match["key"]:
            raise _bad_query(query, position)
        clauses.append((_unescape(match["key"]), _unescape(match["value"])))
        position = match.end()
        if position == len(text):
            return clauses
        separator = _SEARCH_AND.match(text, position)
        if separator is None:
            raise _bad_query(query, position)
        position = separator.end()


def _unescape(quoted: str) -> str:
    return re.sub(r"\\(.)", r"\1", quoted)


def _bad_query(query: str, position: int) -> Refusal:
    message = (
        f"The query `{query}` could not be parsed at position {position}. This sandbox supports "
        "metadata['key']:'value' clauses joined by AND."
    )
    return Refusal(400, message, code="parameter_invalid_string", param="query", stored=False)


def _search_page(page: str | None) -> int:
    if page is None:
        return 0
    offset = page.removeprefix(_SEARCH_PAGE_PREFIX)
    if not page.startswith(_SEARCH_PAGE_PREFIX) or not offset.isdigit():
        raise Refusal(400, f"Invalid page: {page}", code="parameter_invalid_string", param="page", stored=False)
    return int(offset)


# --- object shapes (after shared/specs/stripe/fixtures3.json)
def _payment_intent(call: Call, amount: int, currency: str, capture_method: str, payment_method: str | None) -> Obj:
    intent_id = new_id("pi")
    params = call.params
    return {
        "id": intent_id,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": 0,
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": None,
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": capture_method,
        "client_secret": f"{intent_id}_secret_{secrets.token_hex(12)}",
        "confirmation_method": "automatic",
        "created": _now(),
        "currency": currency,
        "customer": None,
        "description": params.get("description"),
        "last_payment_error": None,
        "latest_charge": None,
        "livemode": False,
        "metadata": _metadata(params),
        "next_action": None,
        "on_behalf_of": None,
        "payment_method": payment_method,
        "payment_method_options": {},
        "payment_method_types": ["card"],
        "processing": None,
        "receipt_email": None,
        "review": None,
        "setup_future_usage": None,
        "shipping": None,
        "source": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "requires_confirmation" if payment_method else "requires_payment_method",
        "transfer_data": None,
        "transfer_group": params.get("transfer_group"),
    }


def _charge(intent: Obj, card: SandboxCard) -> Obj:
    charge_id = new_id("ch")
    return {
        "id": charge_id,
        "object": "charge",
        "amount": intent["amount"],
        "amount_captured": 0,
        "amount_refunded": 0,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": None,
        "billing_details": {"address": None, "email": None, "name": None, "phone": None},
        "captured": False,
        "created": _now(),
        "currency": intent["currency"],
        "customer": None,
        "description": intent["description"],
        "disputed": False,
        "failure_code": None,
        "failure_message": None,
        "livemode": False,
        "metadata": dict(intent["metadata"]),
        "outcome": _outcome(card),
        "paid": not card.declined,
        "payment_intent": intent["id"],
        "payment_method": intent["payment_method"],
        "payment_method_details": {
            "card": {"brand": card.brand, "last4": card.last4, "exp_month": 12, "exp_year": 2034, "funding": "credit"},
            "type": "card",
        },
        "refunded": False,
        "refunds": _list("refunds", charge_id, "charges"),
        "status": "failed" if card.declined else "succeeded",
        "transfer_group": intent["transfer_group"],
    }


def _outcome(card: SandboxCard) -> Obj:
    if not card.declined:
        return {"network_status": "approved_by_network", "reason": None, "risk_level": "normal", "type": "authorized"}
    reason = card.decline_code or card.code
    return {
        "network_status": "declined_by_network",
        "reason": reason,
        "risk_level": "normal",
        "type": "issuer_declined",
    }


def _refund(charge: Obj, amount: int, params: dict[str, str]) -> Obj:
    return {
        "id": new_id("re"),
        "object": "refund",
        "amount": amount,
        "balance_transaction": new_id("txn"),
        "charge": charge["id"],
        "created": _now(),
        "currency": charge["currency"],
        "destination_details": {"card": {"type": "refund"}, "type": "card"},
        "metadata": _metadata(params),
        "payment_intent": charge["payment_intent"],
        "reason": params.get("reason"),
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": "succeeded",
        "transfer_reversal": None,
    }


def _transfer(amount: int, currency: str, destination: str, params: dict[str, str]) -> Obj:
    transfer_id = new_id("tr")
    return {
        "id": transfer_id,
        "object": "transfer",
        "amount": amount,
        "amount_reversed": 0,
        "balance_transaction": new_id("txn"),
        "created": _now(),
        "currency": currency,
        "description": params.get("description"),
        "destination": destination,
        "destination_payment": new_id("py"),
        "livemode": False,
        "metadata": _metadata(params),
        "reversals": _list("reversals", transfer_id, "transfers"),
        "reversed": False,
        "source_transaction": None,
        "source_type": "card",
        "transfer_group": params.get("transfer_group"),
    }


def _reversal(transfer: Obj, amount: int, params: dict[str, str]) -> Obj:
    return {
        "id": new_id("trr"),
        "object": "transfer_reversal",
        "amount": amount,
        "balance_transaction": new_id("txn"),
        "created": _now(),
        "currency": transfer["currency"],
        "destination_payment_refund": new_id("pyr"),
        "metadata": _metadata(params),
        "source_refund": None,
        "transfer": transfer["id"],
    }


def _account(account_id: str) -> Obj:
    return {
        "id": account_id,
        "object": "account",
        "type": "express",
        "business_type": "individual",
        "capabilities": {"card_payments": "active", "transfers": "inactive"},
        "charges_enabled": False,
        "payouts_enabled": False,
        "country": "US",
        "default_currency": "usd",
        "details_submitted": True,
        "created": _now(),
        "metadata": {},
        "requirements": {"currently_due": [], "disabled_reason": None, "past_due": []},
    }


def _prepend(listing: Obj, obj: Obj) -> None:
    listing["data"].insert(0, copy.deepcopy(obj))
    listing["total_count"] = len(listing["data"])


class StripeApi:
    """The endpoints; each action runs under the sandbox lock and raises `Refusal` for an error answer."""

    def __init__(self, sandbox: Sandbox, state: StripeState) -> None:
        self.sandbox, self.state = sandbox, state

    def routes(self) -> list[tuple[str, str, str, Action]]:
        object_id = "(?P<id>[^/]+)"
        return [
            ("POST", "payment_intents", "payment_intents.create", self.create_payment_intent),
            ("GET", "payment_intents/search", "payment_intents.search", self.search_payment_intents),  # before {id}
            ("GET", f"payment_intents/{object_id}", "payment_intents.retrieve", self.retrieve_payment_intent),
            ("POST", f"payment_intents/{object_id}/capture", "payment_intents.capture", self.capture_payment_intent),
            ("POST", f"payment_intents/{object_id}/cancel", "payment_intents.cancel", self.cancel_payment_intent),
            ("POST", "refunds", "refunds.create", self.create_refund),
            ("GET", "refunds", "refunds.list", self.list_refunds),
            ("GET", f"refunds/{object_id}", "refunds.retrieve", self.retrieve_refund),
            ("GET", "balance_transactions", "balance_transactions.list", self.list_balance_transactions),
            ("POST", "transfers", "transfers.create", self.create_transfer),
            ("GET", "transfers", "transfers.list", self.list_transfers),
            ("GET", f"transfers/{object_id}", "transfers.retrieve", self.retrieve_transfer),
            ("POST", f"transfers/{object_id}/reversals", "transfers.reversals.create", self.create_transfer_reversal),
            ("GET", f"accounts/{object_id}", "accounts.retrieve", self.retrieve_account),
        ]

    # --- the HTTP layer: auth, idempotency, events
    def endpoint(self, action: Action, method: str) -> Handler:
        def handle(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
            api_key = _bearer_key(request)
            if api_key is None:
                return _unauthorized(request).response()
            call = Call(
                params=request.form() if method == "POST" else _query(request),
                object_id=match.groupdict().get("id") or "",
                request_id=new_id("req"),
                idempotency_key=request.header("idempotency-key") if method == "POST" else "",
                api_version=request.header("stripe-version") or API_VERSION,
            )
            if not call.idempotency_key:
                return self._execute(action, call)[0]
            return self._execute_once(api_key, request, action, call)

        return handle

    def _execute(self, action: Action, call: Call) -> tuple[SandboxResponse, bool]:
        time.sleep(self.state.processing_delay_seconds)
        try:
            with self.sandbox.lock:
                response, stored = SandboxResponse(200, copy.deepcopy(action(call))), True
        except Refusal as refusal:
            response, stored = refusal.response(), refusal.stored
        response.headers["Request-Id"] = call.request_id
        if call.idempotency_key:
            response.headers["Idempotency-Key"] = call.idempotency_key
        self._send_events(call)
        return response, stored

    def _execute_once(self, api_key: str, request: SandboxRequest, action: Action, call: Call) -> SandboxResponse:
        if len(call.idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH:
            message = f"Idempotency-Key must be no longer than {MAX_IDEMPOTENCY_KEY_LENGTH} characters."
            return Refusal(400, message, stored=False).response()
        fingerprint = (request.method, request.path, tuple(sorted(parse_qsl(request.body.decode(), True))))
        slot = (api_key, call.idempotency_key)
        record = IdempotencyRecord(fingerprint, time.monotonic())
        with self.sandbox.lock:
            earlier = self.state.idempotency.get(slot)
            if earlier and record.started_at - earlier.started_at > self.state.idempotency_window_seconds:
                earlier = None  # Stripe forgets keys after 24 hours
            if earlier is None:
                self.state.idempotency[slot] = record
        if earlier is not None:
            return _answer_again(earlier, fingerprint, call)
        try:
            response, stored = self._execute(action, call)
        except BaseException:
            self._forget(slot, record)
            raise
        if stored:
            record.response = response
        else:
            self._forget(slot, record)
        return response

    def _forget(self, slot: tuple[str, str], record: IdempotencyRecord) -> None:
        with self.sandbox.lock:
            if self.state.idempotency.get(slot) is record:
                del self.state.idempotency[slot]

    def _send_events(self, call: Call) -> None:
        for event_type, obj in call.events:
            event = {
                "id": new_id("evt"),
                "object": "event",
                "api_version": call.api_version,
                "created": _now(),
                "data": {"object": obj},
                "livemode": False,
                "pending_webhooks": 1,
                "request": {"id": call.request_id, "idempotency_key": call.idempotency_key or None},
                "type": event_type,
            }
            with self.sandbox.lock:
                self.state.events.append(event)
            self.sandbox.webhooks.send("stripe", json.dumps(event, indent=2).encode(), sign=_webhook_headers)

    # --- lookups
    def _find(self, table: dict[str, Obj], kind: str, object_id: str, param: str = "id") -> Obj:
        if object_id not in table:
            raise Refusal(404, f"No such {kind}: '{object_id}'", code="resource_missing", param=param)
        return table[object_id]

    def _card(self, payment_method: str) -> SandboxCard:
        card = TEST_PAYMENT_METHODS.get(payment_method) or self.state.payment_methods.get(payment_method)
        if card is None:
            message = f"No such PaymentMethod: '{payment_method}'"
            raise Refusal(400, message, code="resource_missing", param="payment_method", stored=False)
        return card

    # --- PaymentIntents
    def create_payment_intent(self, call: Call) -> Obj:
        params = call.params
        _allow(params, PAYMENT_INTENT_PARAMS)
        amount, currency = _integer(params, "amount"), _currency(params)
        capture = _choice(params, "capture_method", ("automatic", "automatic_async", "manual"), "automatic_async")
        confirm = _boolean(params, "confirm")
        card = self._card(params["payment_method"]) if params.get("payment_method") else None
        if confirm and card is None:
            message = "You cannot confirm this PaymentIntent because it's missing a payment method."
            raise Refusal(400, message, code="payment_intent_unexpected_state", stored=False)
        payment_method = None
        if card is not None:
            payment_method = new_id("pm")
            self.state.payment_methods[payment_method] = card
        intent = _payment_intent(call, amount, currency, str(capture), payment_method)
        self.state.payment_intents[intent["id"]] = intent
        self.state.searchable_at[intent["id"]] = time.monotonic() + self.state.search_lag_seconds
        if confirm and card is not None:
            self._confirm(intent, card, call)
        return intent

    def _confirm(self, intent: Obj, card: SandboxCard, call: Call) -> None:
        charge = _charge(intent, card)
        self.state.charges[charge["id"]] = charge
        intent["latest_charge"] = charge["id"]
        if card.declined:
            self._decline(intent, charge, card, call)
        if intent["capture_method"] == "manual":
            intent.update(status="requires_capture", amount_capturable=intent["amount"])
            call.emit("payment_intent.amount_capturable_updated", intent)
            return
        _capture_charge(charge, intent["amount"])
        self._add_balance_transaction(charge, "charge", charge["amount_captured"])
        intent.update(status="succeeded", amount_received=intent["amount"])
        call.emit("payment_intent.succeeded", intent)

    def _decline(self, intent: Obj, charge: Obj, card: SandboxCard, call: Call) -> NoReturn:
        charge.update(failure_code=card.code, failure_message=card.message)
        payment_method = {"id": intent["payment_method"], "object": "payment_method", "type": "card"}
        refusal = Refusal(402, card.message, type_="card_error", code=card.code, charge=charge["id"])
        if card.decline_code:
            refusal.error["decline_code"] = card.decline_code
        refusal.error["payment_method"] = payment_method
        intent.update(status="requires_payment_method", last_payment_error=copy.deepcopy(refusal.error))
        intent["payment_method"] = None
        call.emit("payment_intent.payment_failed", intent)
        refusal.error["payment_intent"] = copy.deepcopy(intent)
        raise refusal

    def retrieve_payment_intent(self, call: Call) -> Obj:
        return self._find(self.state.payment_intents, "payment_intent", call.object_id, "intent")

    def search_payment_intents(self, call: Call) -> Obj:
        """`GET /v1/payment_intents/search`: metadata equality clauses joined by AND, newest first, `limit`
        1..100, `page` (the `next_page` of the previous answer); only what is already searchable."""
        params = call.params
        _allow(params, ("query", "limit", "page"))
        clauses = parse_search_query(_required(params, "query"))
        limit = _limit(params)
        offset = _search_page(params.get("page"))
        now = time.monotonic()
        rows = [
            intent
            for intent in reversed(self.state.payment_intents.values())
            if self.state.searchable_at.get(intent["id"], 0.0) <= now
            and all(intent["metadata"].get(key) == value for key, value in clauses)
        ]
        has_more = len(rows) > offset + limit
        return {
            "object": "search_result",
            "data": rows[offset : offset + limit],
            "has_more": has_more,
            "url": "/v1/payment_intents/search",
            "next_page": _SEARCH_PAGE_PREFIX + str(offset + limit) if has_more else None,
        }

    def capture_payment_intent(self, call: Call) -> Obj:
        _allow(call.params, ("amount_to_capture", "metadata"))
        intent = self._find(self.state.payment_intents, "payment_intent", call.object_id, "intent")
        amount = _integer(call.params, "amount_to_capture", default=intent["amount_capturable"] or intent["amount"])
        if intent["status"] != "requires_capture":
            raise _unexpected_state(intent, "captured", ("requires_capture",))
        if amount > intent["amount_capturable"]:
            message = (
                f"The amount to capture ({amount}) must be less than or equal to the amount capturable "
                f"({intent['amount_capturable']})."
            )
            raise Refusal(400, message, code="amount_too_large", param="amount_to_capture")
        _capture_charge(self.state.charges[intent["latest_charge"]], amount)
        self._add_balance_transaction(self.state.charges[intent["latest_charge"]], "charge", amount)
        intent.update(status="succeeded", amount_received=amount, amount_capturable=0)
        intent["metadata"].update(_metadata(call.params))
        call.emit("payment_intent.succeeded", intent)
        return intent

    def cancel_payment_intent(self, call: Call) -> Obj:
        _allow(call.params, ("cancellation_reason",))
        reasons = ("abandoned", "duplicate", "fraudulent", "requested_by_customer")
        reason = _choice(call.params, "cancellation_reason", reasons, None)
        intent = self._find(self.state.payment_intents, "payment_intent", call.object_id, "intent")
        if intent["status"] not in CANCELABLE:
            raise _unexpected_state(intent, "canceled", CANCELABLE)
        intent.update(status="canceled", canceled_at=_now(), cancellation_reason=reason, amount_capturable=0)
        call.emit("payment_intent.canceled", intent)
        return intent

    # --- Refunds
    def create_refund(self, call: Call) -> Obj:
        params = call.params
        _allow(params, ("payment_intent", "charge", "amount", "reason", "metadata"))
        _choice(params, "reason", ("duplicate", "fraudulent", "requested_by_customer"), None)
        charge = self._refundable_charge(params)
        remaining = charge["amount_captured"] - charge["amount_refunded"]
        amount = _integer(params, "amount", default=remaining)
        if remaining == 0:
            raise Refusal(400, f"Charge {charge['id']} has already been refunded.", code="charge_already_refunded")
        if amount > remaining:
            message = f"Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining})"
            raise Refusal(400, message, code="amount_too_large", param="amount")
        refund = _refund(charge, amount, params)
        self.state.refunds[refund["id"]] = refund
        self._add_balance_transaction(refund, "refund", -amount)
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount_captured"]
        _prepend(charge["refunds"], refund)
        call.emit("charge.refunded", charge)
        call.emit("refund.created", refund)
        return refund

    def _refundable_charge(self, params: dict[str, str]) -> Obj:
        if params.get("charge"):
            charge = self._find(self.state.charges, "charge", params["charge"], "charge")
            if not charge["captured"]:
                raise Refusal(400, f"Charge {charge['id']} has not been captured.", code="charge_not_refundable")
            return charge
        if not params.get("payment_intent"):
            message = "One of the following params should be provided for this request: payment_intent or charge."
            raise Refusal(400, message, code="parameter_missing", stored=False)
        intent = self._find(self.state.payment_intents, "payment_intent", params["payment_intent"], "payment_intent")
        if intent["status"] != "succeeded":
            raise _unexpected_state(intent, "refunded", ("succeeded",))
        return self.state.charges[intent["latest_charge"]]

    def retrieve_refund(self, call: Call) -> Obj:
        return self._find(self.state.refunds, "refund", call.object_id)

    def list_refunds(self, call: Call) -> Obj:
        """`GET /v1/refunds`: newest first, filtered by `payment_intent` and `charge`, `limit` 1..100,
        `starting_after`."""
        params = call.params
        _allow(params, ("payment_intent", "charge", "limit", "starting_after"))
        rows = [
            refund
            for refund in reversed(self.state.refunds.values())
            if all(refund.get(name) == params[name] for name in ("payment_intent", "charge") if name in params)
        ]
        return _list_page(rows, params, "refund", "/v1/refunds")

    # --- Balance transactions (what reconciliation reads)
    def _add_balance_transaction(self, source: Obj, type_: str, amount: int) -> None:
        """Record a movement of money, as Stripe does for every capture, refund, transfer and reversal."""
        fee = card_fee(source["currency"], amount) if type_ == "charge" else 0
        txn = _balance_transaction(source["balance_transaction"], type_, source["id"], amount, fee, source["currency"])
        self.state.balance_transactions[txn["id"]] = txn

    def list_balance_transactions(self, call: Call) -> Obj:
        """`GET /v1/balance_transactions`: newest first, `created[gte|gt|lte|lt]`, `limit` 1..100 (10),
        `starting_after`, `type`, `source`, and `expand[]=data.source`."""
        params = call.params
        _allow(params, ("created", "limit", "starting_after", "type", "source", "expand"))
        limit = _limit(params)
        rows = [txn for txn in self.state.balance_transactions.values() if _balance_matches(txn, params)]
        rows.sort(key=lambda txn: (txn["created"], txn["_seq"]), reverse=True)
        if params.get("starting_after"):
            ids = [txn["id"] for txn in rows]
            if params["starting_after"] not in ids:
                raise Refusal(404, f"No such balance transaction: '{params['starting_after']}'",
                              code="resource_missing", param="starting_after", stored=False)  # fmt: skip
            rows = rows[ids.index(params["starting_after"]) + 1 :]
        expand = {value for key, value in params.items() if key.startswith("expand")}
        page = [self._balance_view(txn, "data.source" in expand) for txn in rows[:limit]]
        listing = {"object": "list", "data": page, "has_more": len(rows) > limit, "url": "/v1/balance_transactions"}
        return listing

    def _balance_view(self, txn: Obj, expand_source: bool) -> Obj:
        view = {key: value for key, value in txn.items() if not key.startswith("_")}
        if expand_source:
            tables = (self.state.charges, self.state.refunds, self.state.transfers, self.state.reversals)
            view["source"] = next((table[txn["source"]] for table in tables if txn["source"] in table), txn["source"])
        return view

    # --- Transfers and reversals
    def list_transfers(self, call: Call) -> Obj:
        """`GET /v1/transfers`: newest first, filtered by `transfer_group` and `destination`, `limit` 1..100,
        `starting_after`."""
        params = call.params
        _allow(params, ("transfer_group", "destination", "limit", "starting_after"))
        rows = [
            transfer
            for transfer in reversed(self.state.transfers.values())
            if all(transfer.get(name) == params[name] for name in ("transfer_group", "destination") if name in params)
        ]
        return _list_page(rows, params, "transfer", "/v1/transfers")

    def create_transfer(self, call: Call) -> Obj:
        params = call.params
        _allow(params, ("amount", "currency", "destination", "transfer_group", "metadata", "description"))
        amount, currency = _integer(params, "amount"), _currency(params)
        destination = _required(params, "destination")
        if not destination.startswith("acct_"):
            message = f"No such destination: '{destination}'"
            raise Refusal(400, message, code="resource_missing", param="destination", stored=False)
        account = self.state.accounts.get(destination)
        if account is not None and account["capabilities"]["transfers"] != "active":
            # Checked before the endpoint runs, so not stored: the same key succeeds once the account is fixed.
            message = (
                f"Your destination account needs to have at least one of the following capabilities enabled: "
                f"transfers, crypto_transfers, legacy_payments (account {destination})"
            )
            raise Refusal(
                400, message, code="insufficient_capabilities_for_transfer", param="destination", stored=False
            )
        transfer = _transfer(amount, currency, destination, params)
        self.state.transfers[transfer["id"]] = transfer
        self._add_balance_transaction(transfer, "transfer", -amount)
        call.emit("transfer.created", transfer)
        return transfer

    def retrieve_transfer(self, call: Call) -> Obj:
        return self._find(self.state.transfers, "transfer", call.object_id)

    def create_transfer_reversal(self, call: Call) -> Obj:
        _allow(call.params, ("amount", "metadata", "description"))
        transfer = self._find(self.state.transfers, "transfer", call.object_id)
        remaining = transfer["amount"] - transfer["amount_reversed"]
        amount = _integer(call.params, "amount", default=remaining)
        if remaining == 0:
            raise Refusal(400, f"Transfer {transfer['id']} has already been fully reversed.", code="amount_too_large")
        if amount > remaining:
            message = f"Reversal amount ({amount}) is greater than the amount left on the transfer ({remaining})"
            raise Refusal(400, message, code="amount_too_large", param="amount")
        reversal = _reversal(transfer, amount, call.params)
        self.state.reversals[reversal["id"]] = reversal
        self._add_balance_transaction(reversal, "transfer_refund", amount)
        transfer["amount_reversed"] += amount
        transfer["reversed"] = transfer["amount_reversed"] == transfer["amount"]
        _prepend(transfer["reversals"], reversal)
        call.emit("transfer.reversed", transfer)
        return reversal

    # --- Connected accounts (escrow sellers)
    def retrieve_account(self, call: Call) -> Obj:
        if self.sandbox.activate_accounts and call.object_id not in self.state.accounts:
            self.account_set(call.object_id, transfers="active")  # its owner finished onboarding
        return self._find(self.state.accounts, "account", call.object_id, "account")

    def account_set(self, account_id: str, *, transfers: str) -> Obj:
        if transfers not in ("active", "inactive", "pending"):
            raise ValueError(f"transfers capability must be active, inactive or pending, not {transfers!r}")
        call = Call(
            params={}, object_id=account_id, request_id=new_id("req"), idempotency_key="", api_version=API_VERSION
        )
        with self.sandbox.lock:
            account = self.state.accounts.setdefault(account_id, _account(account_id))
            account["capabilities"]["transfers"] = transfers
            account["charges_enabled"] = account["payouts_enabled"] = transfers == "active"
            account["requirements"]["disabled_reason"] = None if transfers == "active" else "requirements.past_due"
            call.emit("account.updated", account)
            snapshot = copy.deepcopy(account)
        self._send_events(call)
        return snapshot

    def simulate_account(self, request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
        try:
            account = self.account_set(match["id"], transfers=str(request.json().get("transfers", "active")))
        except ValueError as error:
            return SandboxResponse(400, {"error": {"message": str(error)}})
        return SandboxResponse(200, account)


def _capture_charge(charge: Obj, amount: int) -> None:
    charge.update(captured=True, amount_captured=amount, balance_transaction=new_id("txn"))


def _unexpected_state(intent: Obj, verb: str, allowed: Iterable[str]) -> Refusal:
    message = (
        f"This PaymentIntent could not be {verb} because it has a status of {intent['status']}. "
        f"Only a PaymentIntent with one of the following statuses may be {verb}: {', '.join(allowed)}."
    )
    return Refusal(400, message, code="payment_intent_unexpected_state", payment_intent=copy.deepcopy(intent))


def _answer_again(earlier: IdempotencyRecord, fingerprint: tuple[Any, ...], call: Call) -> SandboxResponse:
    if earlier.response is None:
        message = (
            "There is currently another in-progress request using this Idempotent Key (that probably means you "
            f"submitted twice, and the other request is still going through): {call.idempotency_key}. "
            "Please try again later."
        )
        return Refusal(409, message, type_="idempotency_error").response()
    if earlier.fingerprint != fingerprint:
        message = (
            "Keys for idempotent requests can only be used with the same parameters they were first used with. "
            f"Try using a key other than '{call.idempotency_key}' if you meant to execute a different request."
        )
        return Refusal(400, message, type_="idempotency_error").response()
    first = earlier.response
    replay_headers = {"Request-Id": call.request_id, "Original-Request": first.headers["Request-Id"]}
    return SandboxResponse(first.status, first.body, {**first.headers, **replay_headers, "Idempotent-Replayed": "true"})


def _bearer_key(request: SandboxRequest) -> str | None:
    scheme, _, key = request.header("authorization").partition(" ")
    if scheme.lower() != "bearer" or not _SECRET_KEY.match(key.strip()):
        return None
    return key.strip()


def _unauthorized(request: SandboxRequest) -> Refusal:
    if not request.header("authorization"):
        message = (
            "You did not provide an API key. You need to provide your API key in the Authorization header, "
            "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY')."
        )
    else:
        message = "Invalid API Key provided."
    return Refusal(401, message, stored=False)
