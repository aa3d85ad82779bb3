"""Maya in the sandbox: Maya Checkout, the Payments API (retrieve, voids, refunds) and Maya's webhooks.

Routes under `/maya`, operation names in brackets (counted, faults apply):

    POST /checkout/v1/checkouts                   [maya.checkouts.create]    public key
        totalAmount {value, currency PHP}, requestReferenceNumber, redirectUrl {success, failure, cancel},
        items, buyer, metadata -> 200 {checkoutId, redirectUrl}; the payment id is the checkoutId.
        A second checkout with a requestReferenceNumber already used answers the first checkout again
        (our idempotency reference; nothing new is created) until `Sandbox.forget_idempotency_keys("maya")`:
        then the checkouts made so far no longer dedupe (they stay, also in payment-rrns) and the number
        makes a new checkout.
    GET  /payments/v1/payments/{id}               [maya.payments.retrieve]           secret key
    GET  /payments/v1/payment-rrns/{rrn}          [maya.payments.retrieve_by_rrn]    secret key; a list
    POST /payments/v1/payments/{id}/voids         [maya.payments.void]               secret key
        {reason, requestReferenceNumber}: only a PAYMENT_SUCCESS payment on its own day (before settlement),
        always the full amount -> void {id, payment, status SUCCESS, ...}; the payment becomes VOIDED.
    POST /payments/v1/payments/{id}/refunds       [maya.payments.refund]             secret key
        {totalAmount {amount, currency}, reason, requestReferenceNumber}: only from the day after (once
        settled); partial; refunds never add up to more than the payment -> refund {status SUCCESS}; the
        payment becomes REFUNDED once fully refunded.
    GET  /payments/v1/payments/{id}/refunds       [maya.payments.refunds.list]       secret key

Amounts are decimal major units (`1500.50`), sent as JSON numbers or numeric strings and answered as strings
with two decimals; the sandbox reads them as decimals, never floats, and refuses more than two decimals. Auth is
HTTP Basic with the key as user name and an empty password. Errors are Maya-shaped, `{"code", "message",
"parameters": [{"field", "description"}]}`: `2553` for missing or invalid parameters is Maya's; the others
(`UNAUTHORIZED`, `NOT_FOUND`, `VOID_NOT_ALLOWED`, `REFUND_NOT_ALLOWED`, `REFUND_AMOUNT_EXCEEDED`) are the
sandbox's names. Voids and refunds are synchronous and final, as Maya documents, and send no webhook. They are
not deduplicated by requestReferenceNumber (Maya documents no such guarantee): a client resolves an unknown
void by retrieving the payment and an unknown refund by listing the payment's refunds, never by retrying.

The customer and the calendar (control routes: neither counted nor faulted):

    GET  /maya/v2/checkout?id={id}                          the redirectUrl: the payment and the links below
    POST /maya/_simulate/payments/{id}/succeed|fail|expire|cancel
        a PENDING_TOKEN payment becomes PAYMENT_SUCCESS | PAYMENT_FAILED | PAYMENT_EXPIRED |
        PAYMENT_CANCELLED and the webhook of that name is sent
    POST /maya/_simulate/payments/{id}/settle               the payment's day is over: no void, refunds allowed

`Sandbox.tick()` ends the day for every successful payment (as `settle`).

Webhooks: Maya POSTs the payment object itself (id, status, amount, requestReferenceNumber, ...) to the URL
configured for provider "maya"; the event is the `status` field, so `(id, status)` identifies an event. Maya's
own signature (Webhook Signature v1) is RSA-SHA256 with a public key Maya publishes, in the headers
`X-Maya-Webhook-Signature: nonce=...,v1=...` and a timestamp. The sandbox keeps those headers and that shape but
signs with HMAC-SHA256 and the shared secret settings.MAYA_WEBHOOK_SECRET:

    X-Maya-Webhook-Timestamp: <unix seconds>
    X-Maya-Webhook-Signature: nonce=<32 hex>,v1=<hex HMAC-SHA256(secret, "{timestamp}.{nonce}.{raw body}")>

A receiver recomputes v1 over the raw body, compares in constant time and refuses a timestamp more than 300 s
away from its clock, either way.
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
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings

from providers.sandbox.server import Sandbox, SandboxRequest, SandboxResponse

PREFIX = "/maya"
PROVIDER = "maya"
PENDING_TOKEN = "PENDING_TOKEN"  # noqa: S105 (a payment status, not a secret)
SUCCESS = "PAYMENT_SUCCESS"
VOIDED = "VOIDED"
REFUNDED = "REFUNDED"
OUTCOMES = {"succeed": SUCCESS, "fail": "PAYMENT_FAILED", "expire": "PAYMENT_EXPIRED", "cancel": "PAYMENT_CANCELLED"}
_AMOUNT = re.compile(r"^\d+(\.\d{1,2})?$")

_STATES: weakref.WeakKeyDictionary[Sandbox, MayaSandbox] = weakref.WeakKeyDictionary()


class Refusal(Exception):
    """An answer in Maya's error shape; raised inside handlers, never past them."""

    def __init__(self, status: int, code: str, message: str, parameter: str = "") -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.parameter = status, code, message, parameter

    def response(self) -> SandboxResponse:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.parameter:
            body["parameters"] = [{"field": self.parameter, "description": self.message}]
        return SandboxResponse(self.status, body)


def _invalid(parameter: str, description: str) -> Refusal:
    return Refusal(400, "2553", f"Missing/invalid parameters: {description}", parameter)


@dataclass
class Payment:
    id: str
    request_reference_number: str
    amount_minor: int
    currency: str
    description: str
    redirect_url: dict[str, str]
    metadata: Any
    status: str = PENDING_TOKEN
    settled: bool = False
    created_at: str = field(default_factory=lambda: _now())
    updated_at: str = field(default_factory=lambda: _now())
    receipt_number: str = ""
    approval_code: str = ""
    voids: list[dict[str, Any]] = field(default_factory=list)
    refunds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def refunded_minor(self) -> int:
        return sum(refund["amount_minor"] for refund in self.refunds)

    def view(self) -> dict[str, Any]:
        paid = self.status in {SUCCESS, REFUNDED, VOIDED}
        view: dict[str, Any] = {
            "id": self.id,
            "isPaid": self.status in {SUCCESS, REFUNDED},
            "status": self.status,
            "amount": _major(self.amount_minor),
            "currency": self.currency,
            "canVoid": self.status == SUCCESS and not self.settled and not self.refunds,
            "canRefund": self.status == SUCCESS and self.settled,
            "canCapture": False,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "description": self.description,
            "requestReferenceNumber": self.request_reference_number,
            "metadata": self.metadata,
        }
        if paid:
            view["fundSource"] = {"type": "card", "description": "**** **** **** 2346", "details": {"last4": "2346"}}
            view["receiptNumber"], view["approvalCode"] = self.receipt_number, self.approval_code
        return view

    def touch(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self, name, value)
        self.updated_at = _now()


@dataclass
class MayaSandbox:
    sandbox: Sandbox
    payments: dict[str, Payment] = field(default_factory=dict)
    undeduped: set[str] = field(default_factory=set)  # payments whose requestReferenceNumber was forgotten

    def reset(self) -> None:
        self.payments.clear()
        self.undeduped.clear()

    def forget_idempotency_keys(self) -> None:
        self.undeduped.update(self.payments)

    # --- the API
    def checkout_create(self, request: SandboxRequest, match: re.Match[str]) -> Any:
        body = _body(request)
        reference = body.get("requestReferenceNumber")
        if not isinstance(reference, str) or not reference.strip():
            raise _invalid("requestReferenceNumber", "requestReferenceNumber is required.")
        existing = [payment for payment in self._by_reference(reference) if payment.id not in self.undeduped]
        if existing:
            return self._checkout_answer(existing[0])
        amount_minor, currency = _total_amount(body.get("totalAmount"), "totalAmount", "value")
        redirect = body.get("redirectUrl") or {}
        if not isinstance(redirect, dict):
            raise _invalid("redirectUrl", "redirectUrl must be an object.")
        payment = Payment(
            id=str(uuid.uuid4()),
            request_reference_number=reference,
            amount_minor=amount_minor,
            currency=currency,
            description=str(body.get("description") or f"Charge for {reference}"),
            redirect_url={name: str(redirect.get(name, "")) for name in ("success", "failure", "cancel")},
            metadata=body.get("metadata"),
        )
        self.payments[payment.id] = payment
        return self._checkout_answer(payment)

    def payment_retrieve(self, request: SandboxRequest, match: re.Match[str]) -> Any:
        return self._payment(match["id"]).view()

    def payment_retrieve_by_rrn(self, request: SandboxRequest, match: re.Match[str]) -> Any:
        return [payment.view() for payment in self._by_reference(match["rrn"])]

    def payment_void(self, request: SandboxRequest, match: re.Match[str]) -> Any:
        body = _body(request)
        payment = self._payment(match["id"])
        reason = _reason(body)
        if payment.status != SUCCESS or payment.settled or payment.refunds:
            why = "settled; refund it instead" if payment.settled else payment.status
            raise Refusal(400, "VOID_NOT_ALLOWED", f"Payment {payment.id} cannot be voided: {why}.")
        void = {
            "id": str(uuid.uuid4()),
            "payment": payment.id,
            "status": "SUCCESS",
            "reason": reason,
            "requestReferenceNumber": str(body.get("requestReferenceNumber") or ""),
            "totalAmount": {"amount": _major(payment.amount_minor), "currency": payment.currency},
            "voidAt": _now(),
            "createdAt": _now(),
            "updatedAt": _now(),
        }
        payment.voids.append(void)
        payment.touch(status=VOIDED)
        return void

    def payment_refund(self, request: SandboxRequest, match: re.Match[str]) -> Any:
        body = _body(request)
        payment = self._payment(match["id"])
        amount_minor, currency = _total_amount(body.get("totalAmount"), "totalAmount", "amount")
        reason = _reason(body)
        self._check_refundable(payment, amount_minor, currency)
        refund = {
            "id": str(uuid.uuid4()),
            "payment": payment.id,
            "status": "SUCCESS",
            "reason": reason,
            "requestReferenceNumber": str(body.get("requestReferenceNumber") or ""),
            "totalAmount": {"amount": _major(amount_minor), "currency": currency},
            "refundAt": _now(),
            "createdAt": _now(),
            "updatedAt": _now(),
        }
        payment.refunds.append({**refund, "amount_minor": amount_minor})
        if payment.refunded_minor == payment.amount_minor:
            payment.touch(status=REFUNDED)
        return refund

    def payment_refunds_list(self, request: SandboxRequest, match: re.Match[str]) -> Any:
        return [_public(refund) for refund in self._payment(match["id"]).refunds]

    # --- the customer and the calendar
    def complete(self, payment_id: str, action: str) -> dict[str, Any]:
        payment = self._payment(payment_id)
        if payment.status != PENDING_TOKEN:
            raise Refusal(409, "NOT_PENDING", f"Payment {payment_id} is {payment.status}.")
        payment.touch(status=OUTCOMES[action])
        if payment.status == SUCCESS:
            payment.touch(receipt_number=secrets.token_hex(6), approval_code=f"{secrets.randbelow(10**8):08d}")
        self._emit(payment)
        return payment.view()

    def settle(self, payment_id: str) -> dict[str, Any]:
        payment = self._payment(payment_id)
        payment.touch(settled=True)
        return payment.view()

    def tick(self) -> None:
        with self.sandbox.lock:
            for payment in self.payments.values():
                if payment.status == SUCCESS and not payment.settled:
                    payment.touch(settled=True)

    # --- helpers
    def _payment(self, payment_id: str) -> Payment:
        if payment_id not in self.payments:
            raise Refusal(404, "NOT_FOUND", f"Payment {payment_id} does not exist.")
        return self.payments[payment_id]

    def _by_reference(self, reference: str) -> list[Payment]:
        return [payment for payment in self.payments.values() if payment.request_reference_number == reference]

    def _checkout_answer(self, payment: Payment) -> dict[str, str]:
        return {"checkoutId": payment.id, "redirectUrl": f"{self.sandbox.url}{PREFIX}/v2/checkout?id={payment.id}"}

    def _check_refundable(self, payment: Payment, amount_minor: int, currency: str) -> None:
        if payment.status != SUCCESS or not payment.settled:
            why = "it can only be voided on the day it was made" if payment.status == SUCCESS else payment.status
            raise Refusal(400, "REFUND_NOT_ALLOWED", f"Payment {payment.id} cannot be refunded: {why}.")
        if currency != payment.currency:
            raise _invalid("totalAmount.currency", f"currency must be {payment.currency}.")
        refundable = payment.amount_minor - payment.refunded_minor
        if amount_minor > refundable:
            message = f"Refund of {_major(amount_minor)} exceeds the refundable {_major(refundable)}."
            raise Refusal(400, "REFUND_AMOUNT_EXCEEDED", message, "totalAmount.amount")

    def _emit(self, payment: Payment) -> None:
        self.sandbox.webhooks.send(PROVIDER, json.dumps(payment.view()).encode(), sign=_webhook_headers)

    # --- HTTP plumbing
    def endpoint(
        self, action: Callable[[SandboxRequest, re.Match[str]], Any], key_setting: str
    ) -> Callable[[SandboxRequest, re.Match[str]], SandboxResponse]:
        def handle(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
            with self.sandbox.lock:
                try:
                    _authenticate(request, getattr(settings, key_setting))
                    return SandboxResponse(200, copy.deepcopy(action(request, match)))
                except Refusal as refusal:
                    return refusal.response()

        return handle

    def control(self, run: Callable[[], dict[str, Any]]) -> SandboxResponse:
        with self.sandbox.lock:
            try:
                return SandboxResponse(200, copy.deepcopy(run()))
            except Refusal as refusal:
                return refusal.response()


def install(sandbox: Sandbox) -> None:
    state = MayaSandbox(sandbox)
    _STATES[sandbox] = state
    sandbox.resetters.append(state.reset)
    sandbox.key_forgetters[PROVIDER] = state.forget_idempotency_keys
    sandbox.tickers.append(state.tick)
    payment, by_rrn = "/payments/v1/payments/(?P<id>[^/]+)", "/payments/v1/payment-rrns/(?P<rrn>[^/]+)"
    api: list[tuple[str, str, str, Callable[[SandboxRequest, re.Match[str]], Any], str]] = [
        ("POST", "/checkout/v1/checkouts", "checkouts.create", state.checkout_create, "MAYA_PUBLIC_KEY"),
        ("GET", payment, "payments.retrieve", state.payment_retrieve, "MAYA_SECRET_KEY"),
        ("GET", by_rrn, "payments.retrieve_by_rrn", state.payment_retrieve_by_rrn, "MAYA_SECRET_KEY"),
        ("POST", f"{payment}/voids", "payments.void", state.payment_void, "MAYA_SECRET_KEY"),
        ("POST", f"{payment}/refunds", "payments.refund", state.payment_refund, "MAYA_SECRET_KEY"),
        ("GET", f"{payment}/refunds", "payments.refunds.list", state.payment_refunds_list, "MAYA_SECRET_KEY"),
    ]
    for method, path, operation, action, key_setting in api:
        sandbox.route(method, PREFIX + path, f"{PROVIDER}.{operation}")(state.endpoint(action, key_setting))
    _install_customer_routes(sandbox, state)


def _install_customer_routes(sandbox: Sandbox, state: MayaSandbox) -> None:
    @sandbox.route("GET", f"{PREFIX}/v2/checkout", "_control.maya.checkout")
    def checkout(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
        payment_id = (request.query.get("id") or [""])[-1]
        response = state.control(lambda: state._payment(payment_id).view())
        if response.status == 200:
            page = f"{sandbox.url}{PREFIX}/_simulate/payments/{payment_id}"
            response.body["links"] = {action: f"{page}/{action}" for action in [*OUTCOMES, "settle"]}
        return response

    actions = "|".join(OUTCOMES)

    @sandbox.route("POST", f"{PREFIX}/_simulate/payments/(?P<id>[^/]+)/(?P<action>{actions})", "_control.maya.pay")
    def complete(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
        return state.control(lambda: state.complete(match["id"], match["action"]))

    @sandbox.route("POST", f"{PREFIX}/_simulate/payments/(?P<id>[^/]+)/settle", "_control.maya.settle")
    def settle(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
        return state.control(lambda: state.settle(match["id"]))


def state_of(sandbox: Sandbox) -> MayaSandbox:
    """The Maya state of a sandbox, for tests and the demo to inspect."""
    return _STATES[sandbox]


def _webhook_headers(body: bytes) -> dict[str, str]:
    """One delivery attempt's headers: a new timestamp, nonce and signature each time."""
    return {"Content-Type": "application/json", **signature_headers(body, timestamp=int(time.time()))}


def signature_headers(body: bytes, *, timestamp: int, secret: str | None = None, nonce: str = "") -> dict[str, str]:
    """The headers the sandbox signs a Maya webhook with (see the module docstring)."""
    key = (secret if secret is not None else settings.MAYA_WEBHOOK_SECRET).encode()
    nonce = nonce or secrets.token_hex(16)
    digest = hmac.new(key, f"{timestamp}.{nonce}.".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Maya-Webhook-Timestamp": str(timestamp), "X-Maya-Webhook-Signature": f"nonce={nonce},v1={digest}"}


def _authenticate(request: SandboxRequest, key: str) -> None:
    scheme, _, encoded = request.header("authorization").partition(" ")
    try:
        user = base64.b64decode(encoded, validate=True).decode().partition(":")[0] if scheme == "Basic" else ""
    except (binascii.Error, UnicodeDecodeError):
        user = ""
    if not user or not hmac.compare_digest(user, key):
        raise Refusal(401, "UNAUTHORIZED", "Missing or invalid API key for this endpoint.")


def _body(request: SandboxRequest) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"{}", parse_float=Decimal)
    except ValueError as error:
        raise _invalid("body", f"the body is not JSON ({error}).") from error
    if not isinstance(body, dict):
        raise _invalid("body", "the body must be a JSON object.")
    return body


def _total_amount(total: Any, name: str, amount_field: str) -> tuple[int, str]:
    if not isinstance(total, dict):
        raise _invalid(name, f"{name} is required.")
    currency = total.get("currency")
    if currency != "PHP":
        raise _invalid(f"{name}.currency", "currency must be PHP.")
    return _minor(total.get(amount_field), f"{name}.{amount_field}"), currency


def _minor(value: Any, name: str) -> int:
    """Decimal major units to centavos: an int, a JSON decimal or a numeric string with at most two decimals."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise _invalid(name, f"{name} must be a number.")
    try:
        amount = Decimal(value) if _AMOUNT.match(str(value)) else None
    except InvalidOperation:
        amount = None
    if amount is None or amount <= 0:
        raise _invalid(name, f"{name} must be a positive amount with at most two decimals.")
    return int(amount * 100)


def _major(amount_minor: int) -> str:
    return f"{amount_minor // 100}.{amount_minor % 100:02d}"


def _reason(body: dict[str, Any]) -> str:
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise _invalid("reason", "reason is required.")
    return reason


def _public(refund: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in refund.items() if name != "amount_minor"}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
