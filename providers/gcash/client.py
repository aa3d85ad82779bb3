"""GCash through PayMongo over httpx: Sources -> Payments -> Refunds, and PayMongo's signed webhooks.

The flow: `source_create` answers Pending with the checkout_url the customer opens; the customer authorizes
and PayMongo sends `source.chargeable`; `payment_create` from that source answers Succeeded (paid) or Declined
(failed), also told by `payment.paid` / `payment.failed`; `refund_create` answers Pending until PayMongo settles
the refund (`payment.refund.updated`). Amounts are integer centavos; PayMongo takes PHP only.

Every create carries the caller's deterministic `idempotency_key` as PayMongo's `Idempotency-Key`. An Unknown
create is resolved by calling the same method again with the same key and the same arguments: PayMongo replays
its first answer, so one object exists at most (and a request that never arrived is applied then). Never resolve
with a new key. Results follow providers.base: transport and HTTP errors never leave this module.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
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
SIGNATURE_HEADER = "Paymongo-Signature"
REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer", "others"})

Interpret = Callable[[dict[str, Any]], ProviderResult]


InvalidWebhookSignature = InvalidSignature  # raised by every signature check here


class PayMongoClient:
    def __init__(
        self,
        *,
        secret_key: str | None = None,
        webhook_secret: str | None = None,
        base_url: str | None = None,
        timeout_seconds: float | None = None,
    ) -> None:
        self.secret_key = secret_key if secret_key is not None else settings.PAYMONGO_SECRET_KEY
        self.webhook_secret = webhook_secret if webhook_secret is not None else settings.PAYMONGO_WEBHOOK_SECRET
        self.base_url = (base_url or api_base("paymongo")).rstrip("/")
        self.timeout_seconds = timeout_seconds if timeout_seconds is not None else settings.PROVIDER_TIMEOUT_SECONDS
        self.livemode = self.secret_key.startswith("sk_live_")

    # --- sources
    def source_create(
        self,
        *,
        amount_minor: int,
        currency: str,
        success_url: str,
        failed_url: str,
        idempotency_key: str,
        source_type: str = "gcash",
    ) -> ProviderResult:
        """A checkout for the customer: Pending(reference=src_..., status="pending"), raw has the checkout_url."""
        attributes = {
            "type": source_type,
            "amount": _checked_amount(amount_minor),
            "currency": currency,
            "redirect": {"success": success_url, "failed": failed_url},
        }
        return _unsupported(currency) or self._create("/v1/sources", attributes, idempotency_key, _source_result)

    def source_get(self, *, source_id: str) -> ProviderResult:
        return self._call("GET", f"/v1/sources/{quote(source_id, safe='')}", _source_result)

    # --- payments
    def payment_create(
        self, *, source_id: str, amount_minor: int, currency: str, idempotency_key: str, description: str = ""
    ) -> ProviderResult:
        """Collect a chargeable source's amount: Succeeded when paid, Declined when the wallet debit failed."""
        attributes: dict[str, Any] = {
            "amount": _checked_amount(amount_minor),
            "currency": currency,
            "source": {"id": source_id, "type": "source"},
        }
        if description:
            attributes["description"] = description
        return _unsupported(currency) or self._create("/v1/payments", attributes, idempotency_key, _payment_result)

    def payment_get(self, *, payment_id: str) -> ProviderResult:
        return self._call("GET", f"/v1/payments/{quote(payment_id, safe='')}", _payment_result)

    # --- refunds
    def refund_create(
        self,
        *,
        payment_id: str,
        amount_minor: int,
        currency: str,
        reason: str,
        idempotency_key: str,
        notes: str = "",
    ) -> ProviderResult:
        """A full or partial refund; Pending until PayMongo settles it."""
        if reason not in REFUND_REASONS:
            raise ValueError(f"reason must be one of {sorted(REFUND_REASONS)}, not {reason!r}")
        attributes: dict[str, Any] = {
            "amount": _checked_amount(amount_minor),
            "payment_id": payment_id,
            "reason": reason,
        }
        if notes:
            attributes["notes"] = notes
        return _unsupported(currency) or self._create("/v1/refunds", attributes, idempotency_key, _refund_result)

    def refund_get(self, *, refund_id: str) -> ProviderResult:
        return self._call("GET", f"/v1/refunds/{quote(refund_id, safe='')}", _refund_result)

    # --- webhooks
    def verify_webhook(self, payload: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
        """The event, once its `Paymongo-Signature` is ours and fresh; raises InvalidWebhookSignature."""
        fields = signature_fields(header_value(headers, SIGNATURE_HEADER), SIGNATURE_HEADER)
        timestamp = fresh_timestamp(fields.get("t", ""), SIGNATURE_HEADER)
        mode = "li" if self.livemode else "te"
        provided = fields.get(mode, "")
        if not provided:
            raise InvalidWebhookSignature(f"{SIGNATURE_HEADER} carries no {mode} signature")
        expected = hmac.new(self.webhook_secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
        if not hmac.compare_digest(expected.hexdigest(), provided):
            raise InvalidWebhookSignature(f"{SIGNATURE_HEADER} does not match the body")
        return signed_json_object(payload)

    # --- HTTP
    def _create(
        self, path: str, attributes: dict[str, Any], idempotency_key: str, interpret: Interpret
    ) -> ProviderResult:
        if not idempotency_key:
            raise ValueError("every PayMongo create needs the caller's deterministic idempotency_key")
        body = {"data": {"attributes": attributes}}
        return self._call("POST", path, interpret, body=body, headers={"Idempotency-Key": idempotency_key})

    def _call(
        self,
        method: str,
        path: str,
        interpret: Interpret,
        *,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> ProviderResult:
        try:
            with httpx.Client(base_url=self.base_url, auth=(self.secret_key, ""), timeout=self.timeout_seconds) as http:
                response = http.request(
                    method, path, json=body, headers={"Accept": "application/json", **(headers or {})}
                )
        except httpx.TransportError as error:
            return outcome_of_transport_error(error)
        return _outcome(response, interpret)


def _outcome(response: httpx.Response, interpret: Interpret) -> ProviderResult:
    body = response_body(response)
    if response.is_success:
        data = body.get("data") if isinstance(body, dict) else None
        if isinstance(data, dict):
            return interpret(data)
        return Unknown(reason=f"unreadable PayMongo answer ({response.status_code})", raw={"body": body})
    if response.is_client_error:
        return _declined(response.status_code, body)
    return outcome_of_server_error(response.status_code, body)


def _declined(status: int, body: Any) -> Declined:
    errors = body.get("errors") if isinstance(body, dict) else None
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    return Declined(
        reason=str(first.get("detail") or f"PayMongo answered {status}"),
        code=str(first.get("code") or f"http_{status}"),
        retryable=status in {409, 429},
        raw=body if isinstance(body, dict) else {"body": body},
    )


def _by_status(kind: str, *, pending: set[str], succeeded: set[str], declined: set[str]) -> Interpret:
    def interpret(data: dict[str, Any]) -> ProviderResult:
        attributes = data.get("attributes") if isinstance(data.get("attributes"), dict) else {}
        reference, status = str(data.get("id", "")), str(attributes.get("status", ""))
        if status in succeeded:
            return Succeeded(reference=reference, status=status, raw=data)
        if status in pending:
            return Pending(reference=reference, status=status, raw=data)
        if status in declined:
            reason = attributes.get("failed_message") or f"{kind} {reference} is {status}"
            return Declined(reason=str(reason), code=str(attributes.get("failed_code") or status), raw=data)
        return Unknown(reason=f"unexpected {kind} status {status!r}", raw=data)

    return interpret


_source_result = _by_status(
    "source", pending={"pending", "chargeable"}, succeeded={"paid"}, declined={"cancelled", "expired"}
)
_payment_result = _by_status("payment", pending={"pending"}, succeeded={"paid"}, declined={"failed"})
_refund_result = _by_status("refund", pending={"pending", "processing"}, succeeded={"succeeded"}, declined={"failed"})


def _unsupported(currency: str) -> Declined | None:
    if currency == CURRENCY:
        return None
    return Declined(reason=f"PayMongo takes {CURRENCY} only, not {currency}", code="currency_not_supported")


def _checked_amount(amount_minor: int) -> int:
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int):
        raise TypeError(f"amount_minor must be an integer number of centavos, not {amount_minor!r}")
    if amount_minor <= 0:
        raise ValueError(f"amount_minor must be positive, not {amount_minor}")
    return amount_minor
