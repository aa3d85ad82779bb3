"""PayMongo in the sandbox: GCash (and GrabPay) through Sources, Payments and Refunds, API v1, JSON:API shapes.

Routes under `/paymongo`, operation names in brackets (counted, faults apply):

    POST /v1/sources        [paymongo.sources.create]    type gcash|grab_pay, amount in centavos (>= 2000),
                                                          currency PHP, redirect {success, failed}
                                                          -> status pending with redirect.checkout_url
    GET  /v1/sources/{id}   [paymongo.sources.retrieve]
    POST /v1/payments       [paymongo.payments.create]   amount, currency, source {id, type: "source"}: only from a
                                                          chargeable source and for its exact amount -> paid | failed
    GET  /v1/payments/{id}  [paymongo.payments.retrieve] attributes.refunds lists the payment's refunds
    POST /v1/refunds        [paymongo.refunds.create]    payment_id, amount (>= 100), reason, notes; partial refunds;
                                                          the refunds of a payment (except failed ones) never add up
                                                          to more than its amount -> status pending
    GET  /v1/refunds/{id}   [paymongo.refunds.retrieve]

Like PayMongo: HTTP Basic auth with the secret key as user name and an empty password; creates answer 200
(PayMongo never uses 201); errors are `{"errors": [{"code", "detail", "source": {"pointer", "attribute"}}]}`.
The error codes are PayMongo's where known (`parameter_invalid`, `parameter_required`, `parameter_below_minimum`,
`parameter_above_maximum`, `resource_not_found`, `resource_not_chargeable_state`); `api_key_invalid`,
`idempotency_key_mismatch` and `payment_not_refundable` are the sandbox's own names.

Idempotency: a POST carrying an `Idempotency-Key` header stores its first answer (any answer after
authentication, declines included) and replays it, status and body, for every later request with that key. The
same key with another path or body is refused with 400 `idempotency_key_mismatch` and changes nothing.
`Sandbox.forget_idempotency_keys("paymongo")` forgets every stored key (a later request with one is new);
sources, payments and refunds already made stay.

Customer side (control routes: neither counted nor faulted):

    GET  /paymongo/_simulate/sources/{id}             the checkout page: the source and the links below
    POST /paymongo/_simulate/sources/{id}/authorize   the customer authorizes: pending -> chargeable and a
                                                      `source.chargeable` webhook. Body {"payment": "failed",
                                                      "failed_code": ..., "failed_message": ...} makes the payment
                                                      later created from this source fail (`payment.failed`)
    POST /paymongo/_simulate/sources/{id}/expire      pending|chargeable -> expired (PayMongo sends no webhook)

`Sandbox.tick()` settles pending refunds: each becomes succeeded and sends `payment.refund.updated`.

Webhooks are PayMongo events, `{"data": {"id": "evt_...", "type": "event", "attributes": {"type",
"livemode": false, "data": <resource>, "previous_data": {}, "created_at", "updated_at"}}}`, sent to the URL
configured for provider "paymongo" with `Paymongo-Signature: t=<unix>,te=<hex>,li=` where the hex is
HMAC-SHA256 keyed with settings.PAYMONGO_WEBHOOK_SECRET over `"{t}.{raw body}"`; `li` stays empty because the
sandbox is test mode (livemode false).
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import hmac
import json
import re
import secrets
import string
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from providers.sandbox.server import Sandbox, SandboxRequest, SandboxResponse

PREFIX = "/paymongo"
PROVIDER = "paymongo"
MIN_PAYMENT_AMOUNT = 2_000  # centavos: PHP 20.00
MIN_REFUND_AMOUNT = 100
SOURCE_TYPES = frozenset({"gcash", "grab_pay"})
REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer", "others"})
# The GCash rate the platform is charged (our seeded fee rule: 3.5% + PHP 10), shown on payments as `fee`
FEE_BASIS_POINTS = 350
FEE_FIXED_MINOR = 1_000
_ID_ALPHABET = string.ascii_letters + string.digits

Resource = dict[str, Any]
Action = Callable[[dict[str, Any], "re.Match[str]"], Resource]

_STATES: weakref.WeakKeyDictionary[Sandbox, PayMongoSandbox] = weakref.WeakKeyDictionary()


class Refusal(Exception):
    """An answer in PayMongo's error shape; raised inside handlers, never past them."""

    def __init__(self, status: int, code: str, detail: str, attribute: str = "") -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.attribute = status, code, detail, attribute

    def response(self) -> SandboxResponse:
        error: dict[str, Any] = {"code": self.code, "detail": self.detail}
        if self.attribute:
            error["source"] = {"pointer": f"attributes.{self.attribute}", "attribute": self.attribute}
        return SandboxResponse(self.status, {"errors": [error]})


@dataclass
class _Replay:
    fingerprint: str
    response: SandboxResponse


@dataclass
class PayMongoSandbox:
    sandbox: Sandbox
    sources: dict[str, Resource] = field(default_factory=dict)
    payments: dict[str, Resource] = field(default_factory=dict)
    refunds: dict[str, Resource] = field(default_factory=dict)
    failing_sources: dict[str, dict[str, str]] = field(default_factory=dict)  # source id -> failure to apply
    replays: dict[str, _Replay] = field(default_factory=dict)

    def reset(self) -> None:
        for store in (self.sources, self.payments, self.refunds, self.failing_sources, self.replays):
            store.clear()

    def forget_idempotency_keys(self) -> None:
        self.replays.clear()

    # --- the API
    def source_create(self, attributes: dict[str, Any], match: re.Match[str]) -> Resource:
        amount = _amount(attributes, MIN_PAYMENT_AMOUNT)
        currency = _currency(attributes)
        source_type = attributes.get("type")
        if source_type not in SOURCE_TYPES:
            raise Refusal(400, "parameter_invalid", f"type must be one of {sorted(SOURCE_TYPES)}.", "type")
        redirect = _redirect(attributes.get("redirect"))
        source_id, now = _new_id("src"), int(time.time())
        redirect["checkout_url"] = f"{self.sandbox.url}{PREFIX}/_simulate/sources/{source_id}"
        self.sources[source_id] = _resource(
            source_id,
            "source",
            amount=amount,
            billing=attributes.get("billing"),
            currency=currency,
            description=attributes.get("description"),
            livemode=False,
            metadata=attributes.get("metadata"),
            redirect=redirect,
            statement_descriptor=attributes.get("statement_descriptor"),
            status="pending",
            type=source_type,
            created_at=now,
            updated_at=now,
        )
        return self.sources[source_id]

    def payment_create(self, attributes: dict[str, Any], match: re.Match[str]) -> Resource:
        amount = _amount(attributes, MIN_PAYMENT_AMOUNT)
        currency = _currency(attributes)
        source = self._chargeable_source(attributes.get("source"))
        if amount != source["attributes"]["amount"] or currency != source["attributes"]["currency"]:
            raise Refusal(400, "parameter_invalid", "amount and currency must match the source's.", "amount")
        failure = self.failing_sources.pop(source["id"], None)
        payment = self._new_payment(source, attributes, failure)
        _touch(source, status="cancelled" if failure else "paid")
        self.payments[payment["id"]] = payment
        self._emit("payment.failed" if failure else "payment.paid", self._payment_view(payment))
        return self._payment_view(payment)

    def refund_create(self, attributes: dict[str, Any], match: re.Match[str]) -> Resource:
        amount = _amount(attributes, MIN_REFUND_AMOUNT)
        reason = attributes.get("reason")
        if reason not in REFUND_REASONS:
            raise Refusal(400, "parameter_invalid", f"reason must be one of {sorted(REFUND_REASONS)}.", "reason")
        notes = attributes.get("notes")
        if notes is not None and (not isinstance(notes, str) or len(notes) > 255):
            raise Refusal(400, "parameter_invalid", "notes must be a string of at most 255 characters.", "notes")
        payment = self.payments.get(str(attributes.get("payment_id") or ""))
        if payment is None:
            raise Refusal(404, "resource_not_found", f"No such payment {attributes.get('payment_id')}.", "payment_id")
        self._check_refundable(payment, amount)
        refund_id, now = _new_id("ref"), int(time.time())
        self.refunds[refund_id] = _resource(
            refund_id,
            "refund",
            amount=amount,
            balance_transaction_id=_new_id("bal_txn"),
            currency=payment["attributes"]["currency"],
            livemode=False,
            metadata=attributes.get("metadata"),
            notes=notes,
            payment_id=payment["id"],
            payout_id=None,
            reason=reason,
            status="pending",
            available_at=now,
            created_at=now,
            refunded_at=None,
            updated_at=now,
        )
        return self.refunds[refund_id]

    def source_retrieve(self, attributes: dict[str, Any], match: re.Match[str]) -> Resource:
        return _found(self.sources, match["id"], "source")

    def payment_retrieve(self, attributes: dict[str, Any], match: re.Match[str]) -> Resource:
        return self._payment_view(_found(self.payments, match["id"], "payment"))

    def refund_retrieve(self, attributes: dict[str, Any], match: re.Match[str]) -> Resource:
        return _found(self.refunds, match["id"], "refund")

    # --- the customer and the passing of time
    def authorize(self, source_id: str, options: dict[str, Any]) -> Resource:
        source = _found(self.sources, source_id, "source")
        if source["attributes"]["status"] != "pending":
            raise Refusal(409, "resource_not_pending", f"Source {source_id} is {source['attributes']['status']}.")
        if options.get("payment") == "failed":
            self.failing_sources[source_id] = {
                "failed_code": str(options.get("failed_code") or "insufficient_funds"),
                "failed_message": str(options.get("failed_message") or "The GCash wallet has insufficient funds."),
            }
        _touch(source, status="chargeable")
        self._emit("source.chargeable", source)
        return source

    def expire(self, source_id: str) -> Resource:
        source = _found(self.sources, source_id, "source")
        if source["attributes"]["status"] not in {"pending", "chargeable"}:
            raise Refusal(409, "resource_not_pending", f"Source {source_id} is {source['attributes']['status']}.")
        _touch(source, status="expired")
        return source

    def tick(self) -> None:
        with self.sandbox.lock:
            for refund in self.refunds.values():
                if refund["attributes"]["status"] == "pending":
                    _touch(refund, status="succeeded", refunded_at=int(time.time()))
                    self._emit("payment.refund.updated", refund)

    # --- helpers
    def _chargeable_source(self, reference: Any) -> Resource:
        if not isinstance(reference, dict) or reference.get("type") != "source" or not reference.get("id"):
            raise Refusal(400, "parameter_required", "source must be {id, type: source}.", "source")
        source = self.sources.get(str(reference["id"]))
        if source is None:
            raise Refusal(404, "resource_not_found", f"No such source {reference['id']}.", "source.id")
        if source["attributes"]["status"] != "chargeable":
            status = source["attributes"]["status"]
            raise Refusal(400, "resource_not_chargeable_state", f"Source {source['id']} is {status}, not chargeable.")
        return source

    def _new_payment(self, source: Resource, attributes: dict[str, Any], failure: dict[str, str] | None) -> Resource:
        amount, now = source["attributes"]["amount"], int(time.time())
        fee = 0 if failure else (amount * FEE_BASIS_POINTS + 5_000) // 10_000 + FEE_FIXED_MINOR
        fields: dict[str, Any] = {
            "access_url": None,
            "amount": amount,
            "balance_transaction_id": None if failure else _new_id("bal_txn"),
            "billing": source["attributes"]["billing"],
            "currency": source["attributes"]["currency"],
            "description": attributes.get("description"),
            "disputed": False,
            "external_reference_number": None,
            "fee": fee,
            "foreign_fee": 0,
            "livemode": False,
            "net_amount": amount - fee,
            "origin": "api",
            "payment_intent_id": None,
            "payout": None,
            "source": {"id": source["id"], "type": source["attributes"]["type"]},
            "statement_descriptor": attributes.get("statement_descriptor"),
            "status": "failed" if failure else "paid",
            "tax_amount": None,
            "metadata": attributes.get("metadata"),
            "refunds": [],
            "taxes": [],
            "available_at": now,
            "created_at": now,
            "paid_at": None if failure else now,
            "updated_at": now,
        }
        return _resource(_new_id("pay"), "payment", **fields, **(failure or {}))

    def _check_refundable(self, payment: Resource, amount: int) -> None:
        if payment["attributes"]["status"] != "paid":
            raise Refusal(
                400, "payment_not_refundable", f"Payment {payment['id']} is {payment['attributes']['status']}."
            )
        refundable = payment["attributes"]["amount"] - self._refunded(payment["id"])
        if amount > refundable:
            raise Refusal(
                400, "parameter_above_maximum", f"amount cannot be more than the refundable {refundable}.", "amount"
            )

    def _refunded(self, payment_id: str) -> int:
        return sum(
            refund["attributes"]["amount"]
            for refund in self.refunds.values()
            if refund["attributes"]["payment_id"] == payment_id and refund["attributes"]["status"] != "failed"
        )

    def _payment_view(self, payment: Resource) -> Resource:
        view = copy.deepcopy(payment)
        view["attributes"]["refunds"] = [
            copy.deepcopy(refund)
            for refund in self.refunds.values()
            if refund["attributes"]["payment_id"] == payment["id"]
        ]
        return view

    def _emit(self, event_type: str, resource: Resource) -> None:
        now = int(time.time())
        event = _resource(
            _new_id("evt"),
            "event",
            type=event_type,
            livemode=False,
            data=copy.deepcopy(resource),
            previous_data={},
            created_at=now,
            updated_at=now,
        )
        self.sandbox.webhooks.send(PROVIDER, json.dumps({"data": event}).encode(), sign=_webhook_headers)

    # --- HTTP plumbing: auth, idempotency, error shape
    def endpoint(self, action: Action) -> Callable[[SandboxRequest, re.Match[str]], SandboxResponse]:
        def handle(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
            with self.sandbox.lock:
                try:
                    _authenticate(request)
                    attributes = _attributes(request) if request.method == "POST" else {}
                except Refusal as refusal:
                    return refusal.response()
                key = request.header("idempotency-key")
                if request.method != "POST" or not key:
                    return _answer(action, attributes, match)
                return self._idempotent(key, request, attributes, lambda: _answer(action, attributes, match))

        return handle

    def _idempotent(
        self, key: str, request: SandboxRequest, attributes: dict[str, Any], run: Callable[[], SandboxResponse]
    ) -> SandboxResponse:
        fingerprint = hashlib.sha256(f"{request.path} {json.dumps(attributes, sort_keys=True)}".encode()).hexdigest()
        stored = self.replays.get(key)
        if stored is None:
            stored = self.replays[key] = _Replay(fingerprint, run())
        elif stored.fingerprint != fingerprint:
            detail = f"Idempotency-Key {key} was used with a different request."
            return Refusal(400, "idempotency_key_mismatch", detail).response()
        return copy.deepcopy(stored.response)

    def control(self, run: Callable[[], Resource]) -> SandboxResponse:
        with self.sandbox.lock:
            try:
                return SandboxResponse(200, {"data": copy.deepcopy(run())})
            except Refusal as refusal:
                return refusal.response()


def install(sandbox: Sandbox) -> None:
    state = PayMongoSandbox(sandbox)
    _STATES[sandbox] = state
    sandbox.resetters.append(state.reset)
    sandbox.key_forgetters[PROVIDER] = state.forget_idempotency_keys
    sandbox.tickers.append(state.tick)
    api: list[tuple[str, str, str, Action]] = [
        ("POST", "/v1/sources", "sources.create", state.source_create),
        ("GET", "/v1/sources/(?P<id>[^/]+)", "sources.retrieve", state.source_retrieve),
        ("POST", "/v1/payments", "payments.create", state.payment_create),
        ("GET", "/v1/payments/(?P<id>[^/]+)", "payments.retrieve", state.payment_retrieve),
        ("POST", "/v1/refunds", "refunds.create", state.refund_create),
        ("GET", "/v1/refunds/(?P<id>[^/]+)", "refunds.retrieve", state.refund_retrieve),
    ]
    for method, path, operation, action in api:
        sandbox.route(method, PREFIX + path, f"{PROVIDER}.{operation}")(state.endpoint(action))
    _install_customer_routes(sandbox, state)


def _install_customer_routes(sandbox: Sandbox, state: PayMongoSandbox) -> None:
    source_path = f"{PREFIX}/_simulate/sources/(?P<id>[^/]+)"

    @sandbox.route("GET", source_path, "_control.paymongo.sources.checkout")
    def checkout(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
        response = state.control(lambda: _found(state.sources, match["id"], "source"))
        if response.status == 200:
            page = f"{sandbox.url}{PREFIX}/_simulate/sources/{match['id']}"
            response.body["links"] = {"authorize": f"{page}/authorize", "expire": f"{page}/expire"}
        return response

    @sandbox.route("POST", f"{source_path}/authorize", "_control.paymongo.sources.authorize")
    def authorize(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
        try:
            options = request.json()
        except ValueError:
            return Refusal(400, "parameter_format_invalid", "The request body is not JSON.").response()
        return state.control(lambda: state.authorize(match["id"], options if isinstance(options, dict) else {}))

    @sandbox.route("POST", f"{source_path}/expire", "_control.paymongo.sources.expire")
    def expire(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
        return state.control(lambda: state.expire(match["id"]))


def state_of(sandbox: Sandbox) -> PayMongoSandbox:
    """The PayMongo state of a sandbox, for tests and the demo to inspect."""
    return _STATES[sandbox]


def _webhook_headers(body: bytes) -> dict[str, str]:
    """One delivery attempt's headers: signed at the time of the attempt."""
    return {"Content-Type": "application/json", "Paymongo-Signature": sign(body, timestamp=int(time.time()))}


def sign(body: bytes, *, timestamp: int, secret: str | None = None) -> str:
    """The `Paymongo-Signature` header value for a test-mode event."""
    key = (secret if secret is not None else settings.PAYMONGO_WEBHOOK_SECRET).encode()
    digest = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},te={digest},li="


def _answer(action: Action, attributes: dict[str, Any], match: re.Match[str]) -> SandboxResponse:
    try:
        return SandboxResponse(200, {"data": copy.deepcopy(action(attributes, match))})
    except Refusal as refusal:
        return refusal.response()


def _authenticate(request: SandboxRequest) -> None:
    scheme, _, encoded = request.header("authorization").partition(" ")
    try:
        user = base64.b64decode(encoded, validate=True).decode().partition(":")[0] if scheme == "Basic" else ""
    except (binascii.Error, UnicodeDecodeError):
        user = ""
    if not user or not hmac.compare_digest(user, settings.PAYMONGO_SECRET_KEY):
        raise Refusal(401, "api_key_invalid", "The API key is missing or invalid; use your secret key.")


def _attributes(request: SandboxRequest) -> dict[str, Any]:
    try:
        payload = request.json()
    except ValueError as error:
        raise Refusal(400, "parameter_format_invalid", f"The request body is not JSON: {error}.") from error
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("attributes"), dict):
        raise Refusal(400, "parameter_required", "data.attributes is required.")
    return data["attributes"]


def _amount(attributes: dict[str, Any], minimum: int) -> int:
    amount = attributes.get("amount")
    if amount is None:
        raise Refusal(400, "parameter_required", "amount is required.", "amount")
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise Refusal(400, "parameter_invalid", "amount must be an integer in centavos.", "amount")
    if amount < minimum:
        raise Refusal(400, "parameter_below_minimum", f"amount cannot be less than {minimum}.", "amount")
    return amount


def _currency(attributes: dict[str, Any]) -> str:
    if attributes.get("currency") != "PHP":
        raise Refusal(400, "parameter_invalid", "currency must be PHP.", "currency")
    return "PHP"


def _redirect(redirect: Any) -> dict[str, str]:
    if not isinstance(redirect, dict):
        raise Refusal(400, "parameter_required", "redirect is required.", "redirect")
    for name in ("success", "failed"):
        if not isinstance(redirect.get(name), str) or not redirect[name]:
            raise Refusal(400, "parameter_required", f"redirect.{name} is required.", f"redirect.{name}")
    return {"success": redirect["success"], "failed": redirect["failed"]}


def _found(store: dict[str, Resource], resource_id: str, kind: str) -> Resource:
    if resource_id not in store:
        raise Refusal(404, "resource_not_found", f"No such {kind} with id {resource_id}.")
    return store[resource_id]


def _resource(resource_id: str, kind: str, **attributes: Any) -> Resource:
    return {"id": resource_id, "type": kind, "attributes": attributes}


def _touch(resource: Resource, **changes: Any) -> None:
    resource["attributes"].update(changes, updated_at=int(time.time()))


def _new_id(prefix: str) -> str:
    return f"{prefix}_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))
