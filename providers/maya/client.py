"""Maya over httpx: Maya Checkout, the Payments API (retrieve, void, refund) and Maya's signed webhooks.

The flow: `checkout_create` answers Pending(reference=checkoutId) with the redirectUrl the customer opens; Maya
then sends PAYMENT_SUCCESS, PAYMENT_FAILED, PAYMENT_EXPIRED or PAYMENT_CANCELLED, which are the source of truth.
On the payment's own day it can be voided (full amount only); from the next day it can be refunded, partially,
up to its amount. Voids and refunds are synchronous and final.

Money is integer centavos here and decimal pesos on the wire, written as exact JSON numbers (never floats).
Our deterministic `request_reference_number` goes with every mutating call, and resolves Unknown outcomes:

- checkout: `payment_find(request_reference_number=...)` (Maya's lookup by RRN); retrying `checkout_create`
  with the same reference is also safe, the sandbox answering the first checkout again;
- void: `payment_get` (the payment is VOIDED or not);
- refund: `refund_find(payment_id=..., request_reference_number=...)`. Never retry a refund or a void to learn
  its outcome: Maya documents no deduplication for them.

Results follow providers.base: transport and HTTP errors never leave this module.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx
from django.conf import settings

from providers.base import (
    Declined,
    InvalidSignature,
    Pending,
    ProviderResult,
    Succeeded,
    Unknown,
    outcome_of_server_error,
    outcome_of_transport_error,
)
from providers.config import api_base
from providers.webhook_signatures import (
    fresh_timestamp,
    header_value,
    response_body,
    signature_fields,
    signed_json_object,
)

CURRENCY = "PHP"
SIGNATURE_HEADER = "X-Maya-Webhook-Signature"
TIMESTAMP_HEADER = "X-Maya-Webhook-Timestamp"
SUCCEEDED = frozenset({"PAYMENT_SUCCESS", "VOIDED", "REFUNDED"})
DECLINED = frozenset({"PAYMENT_FAILED", "PAYMENT_EXPIRED", "PAYMENT_CANCELLED", "AUTH_FAILED"})
_DECIMAL_MARK = "\x00maya-decimal:"
_MARKED_DECIMAL = re.compile(r'"\\u0000maya-decimal:(\d+\.\d{2})"')

Interpret = Callable[[Any], ProviderResult]


InvalidWebhookSignature = InvalidSignature  # raised by every signature check here


class MayaClient:
    def __init__(
        self,
        *,
        public_key: str | None = None,
        secret_key: str | None = None,
        webhook_secret: str | None = None,
        base_url: str | None = None,
        timeout_seconds: float | None = None,
    ) -> None:
        self.public_key = public_key if public_key is not None else settings.MAYA_PUBLIC_KEY
        self.secret_key = secret_key if secret_key is not None else settings.MAYA_SECRET_KEY
        self.webhook_secret = webhook_secret if webhook_secret is not None else settings.MAYA_WEBHOOK_SECRET
        self.base_url = (base_url or api_base("maya")).rstrip("/")
        self.timeout_seconds = timeout_seconds if timeout_seconds is not None else settings.PROVIDER_TIMEOUT_SECONDS

    # --- checkout
    def checkout_create(
        self,
        *,
        amount_minor: int,
        currency: str,
        request_reference_number: str,
        success_url: str,
        failure_url: str,
        cancel_url: str,
        item_name: str = "",
    ) -> ProviderResult:
        """Pending(reference=checkoutId, status="PENDING_TOKEN"); raw has the redirectUrl for the customer."""
        amount = _pesos(amount_minor)
        body = {
            "totalAmount": {"value": amount, "currency": currency},
            "requestReferenceNumber": _required(request_reference_number),
            "redirectUrl": {"success": success_url, "failure": failure_url, "cancel": cancel_url},
            "items": [
                {
                    "name": item_name or request_reference_number,
                    "code": request_reference_number,
                    "quantity": 1,
                    "amount": {"value": amount},
                    "totalAmount": {"value": amount},
                }
            ],
        }
        if currency != CURRENCY:
            return _unsupported(currency)
        return self._call("POST", "/checkout/v1/checkouts", _checkout_result, key=self.public_key, body=body)

    # --- payments
    def payment_get(self, *, payment_id: str) -> ProviderResult:
        return self._call("GET", f"/payments/v1/payments/{quote(payment_id, safe='')}", _payment_result)

    def payment_find(self, *, request_reference_number: str) -> ProviderResult:
        """The payment made under our reference; Declined(code="not_found") when Maya has none."""
        path = f"/payments/v1/payment-rrns/{quote(_required(request_reference_number), safe='')}"
        return self._call("GET", path, _found_payment_result)

    def payment_void(self, *, payment_id: str, reason: str, request_reference_number: str) -> ProviderResult:
        """The whole payment, on its own day only."""
        body = {"reason": _required(reason), "requestReferenceNumber": _required(request_reference_number)}
        return self._call("POST", f"{_payment_path(payment_id)}/voids", _settlement_result, body=body)

    def payment_refund(
        self, *, payment_id: str, amount_minor: int, currency: str, reason: str, request_reference_number: str
    ) -> ProviderResult:
        """A full or partial refund, from the day after the payment."""
        body = {
            "totalAmount": {"amount": _pesos(amount_minor), "currency": currency},
            "reason": _required(reason),
            "requestReferenceNumber": _required(request_reference_number),
        }
        if currency != CURRENCY:
            return _unsupported(currency)
        return self._call("POST", f"{_payment_path(payment_id)}/refunds", _settlement_result, body=body)

    def refund_find(self, *, payment_id: str, request_reference_number: str) -> ProviderResult:
        """The refund made under our reference; Declined(code="not_found") when the payment has none."""
        reference = _required(request_reference_number)
        return self._call("GET", f"{_payment_path(payment_id)}/refunds", _found_refund_result(reference))

    # --- webhooks
    def verify_webhook(self, payload: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
        """The payment Maya sent, once its signature is ours and fresh; raises InvalidWebhookSignature."""
        timestamp = fresh_timestamp(header_value(headers, TIMESTAMP_HEADER), TIMESTAMP_HEADER)
        fields = signature_fields(header_value(headers, SIGNATURE_HEADER), SIGNATURE_HEADER)
        nonce, provided = fields.get("nonce", ""), fields.get("v1", "")
        if not nonce or not provided:
            raise InvalidWebhookSignature(f"{SIGNATURE_HEADER} needs both nonce and v1")
        signed = f"{timestamp}.{nonce}.".encode() + payload
        expected = hmac.new(self.webhook_secret.encode(), signed, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, provided):
            raise InvalidWebhookSignature(f"{SIGNATURE_HEADER} does not match the body")
        return signed_json_object(payload)

    # --- HTTP
    def _call(
        self,
        method: str,
        path: str,
        interpret: Interpret,
        *,
        key: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> ProviderResult:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        auth = (key if key is not None else self.secret_key, "")
        try:
            with httpx.Client(base_url=self.base_url, auth=auth, timeout=self.timeout_seconds) as http:
                content = _encode(body) if body is not None else None
                response = http.request(method, path, content=content, headers=headers)
        except httpx.TransportError as error:
            return outcome_of_transport_error(error)
        return _outcome(response, interpret)


def _outcome(response: httpx.Response, interpret: Interpret) -> ProviderResult:
    body = response_body(response)
    if response.is_success:
        return interpret(body)
    if response.is_client_error:
        return _declined(response.status_code, body)
    return outcome_of_server_error(response.status_code, body)


def _declined(status: int, body: Any) -> Declined:
    fields = body if isinstance(body, dict) else {}
    return Declined(
        reason=str(fields.get("message") or fields.get("error") or f"Maya answered {status}"),
        code=str(fields.get("code") or f"http_{status}"),
        retryable=status in {409, 429},
        raw=fields or {"body": body},
    )


def _checkout_result(body: Any) -> ProviderResult:
    if not isinstance(body, dict) or not body.get("checkoutId"):
        return Unknown(reason="Maya answered a checkout without a checkoutId", raw={"body": body})
    return Pending(reference=str(body["checkoutId"]), status="PENDING_TOKEN", raw=body)


def _payment_result(body: Any) -> ProviderResult:
    if not isinstance(body, dict) or not body.get("id"):
        return Unknown(reason="Maya answered a payment without an id", raw={"body": body})
    reference, status = str(body["id"]), str(body.get("status", ""))
    if status in SUCCEEDED:
        return Succeeded(reference=reference, status=status, raw=body)
    if status in DECLINED:
        return Declined(reason=f"payment {reference} is {status}", code=status, raw=body)
    return Pending(reference=reference, status=status, raw=body)


def _found_payment_result(body: Any) -> ProviderResult:
    if not isinstance(body, list):
        return Unknown(reason="Maya answered a lookup by reference without a list", raw={"body": body})
    if not body:
        return Declined(reason="Maya has no payment with this requestReferenceNumber", code="not_found")
    paid = [payment for payment in body if isinstance(payment, dict) and payment.get("status") in SUCCEEDED]
    return _payment_result((paid or body)[-1])


def _settlement_result(body: Any) -> ProviderResult:
    """A void or a refund: SUCCESS or FAILED, final as answered."""
    if not isinstance(body, dict) or not body.get("id"):
        return Unknown(reason="Maya answered a void or refund without an id", raw={"body": body})
    reference, status = str(body["id"]), str(body.get("status", ""))
    if status == "SUCCESS":
        return Succeeded(reference=reference, status=status, raw=body)
    if status == "FAILED":
        return Declined(reason=str(body.get("reason") or f"{reference} failed"), code=status, raw=body)
    return Pending(reference=reference, status=status, raw=body)


def _found_refund_result(reference: str) -> Interpret:
    def interpret(body: Any) -> ProviderResult:
        if not isinstance(body, list):
            return Unknown(reason="Maya answered a refund list without a list", raw={"body": body})
        mine = [
            refund for refund in body if isinstance(refund, dict) and refund.get("requestReferenceNumber") == reference
        ]
        if not mine:
            return Declined(reason=f"the payment has no refund with reference {reference}", code="not_found")
        return _settlement_result(mine[-1])

    return interpret


def _pesos(amount_minor: int) -> Decimal:
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int):
        raise TypeError(f"amount_minor must be an integer number of centavos, not {amount_minor!r}")
    if amount_minor <= 0:
        raise ValueError(f"amount_minor must be positive, not {amount_minor}")
    return Decimal(amount_minor).scaleb(-2)


def _encode(body: dict[str, Any]) -> bytes:
    """JSON with Decimal amounts written as exact numbers: the json module has no Decimal and floats would round."""
    text = json.dumps(body, default=_mark_decimal)
    return _MARKED_DECIMAL.sub(r"\1", text).encode()


def _mark_decimal(value: object) -> str:
    if isinstance(value, Decimal):
        return f"{_DECIMAL_MARK}{value:.2f}"
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _required(text: str) -> str:
    if not text or not text.strip():
        raise ValueError("a reason and our deterministic request_reference_number are required")
    return text


def _unsupported(currency: str) -> Declined:
    return Declined(reason=f"Maya takes {CURRENCY} only, not {currency}", code="currency_not_supported")


def _payment_path(payment_id: str) -> str:
    return f"/payments/v1/payments/{quote(payment_id, safe='')}"
