"""PayPal Payouts over HTTPS with httpx; every call returns a `providers.base` result.

Money moves only through `create_batch`, keyed by our `sender_batch_id` (also sent as
`PayPal-Request-Id`). PayPal refuses a `sender_batch_id` used in the last 30 days, which is
what makes a retry with the same id safe. Results:

- 201 -> `Pending(payout_batch_id)`: accepted, items are paid asynchronously.
- the id was already used -> that earlier batch exists, so this is the same create again:
  `Pending(original payout_batch_id, its status)`, read from the link PayPal puts in the
  refusal; `Unknown` when PayPal does not name it. Never `Declined`: money may have moved.
  So resolving an `Unknown` create is simply `create_batch` again with the SAME id and items
  (PayPal has no lookup by `sender_batch_id`); `sender_batch_id` must be derived from the
  batch's content, as payouts does, so one id always means one batch.
- any other 4xx, a refused token, or a connection that never opened -> `Declined`.
- 5xx, timeouts and resets after the request was sent -> `Unknown`.

Reads (`get_batch`, `get_item`) and `cancel_item` return `Succeeded(id, status=<PayPal status>)`
when PayPal answered, with the body in `raw`.

The OAuth2 token lives in the Django cache (shared by every process) until shortly before
it expires; a 401 drops it and the call is repeated once with a fresh token (a 401 means
PayPal did not process the request, so repeating it is safe).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
import structlog
from django.conf import settings
from django.core.cache import cache

from core.money import Money, MoneyError
from providers.base import (
    Declined,
    Pending,
    ProviderResult,
    Succeeded,
    Unknown,
    outcome_of_server_error,
    outcome_of_transport_error,
)
from providers.config import api_base

log = structlog.get_logger(__name__)

MAX_BATCH_ITEMS = 15_000
RECIPIENT_TYPES = frozenset({"EMAIL", "PHONE", "PAYPAL_ID"})
DEFAULT_EMAIL_SUBJECT = "You have a payout!"
_BATCH_HREF = re.compile(r"/v1/payments/payouts/(?P<batch_id>[^/?#]+)(?:[?#]|$)")
_TRANSMISSION_HEADERS = {
    "auth_algo": "paypal-auth-algo",
    "cert_url": "paypal-cert-url",
    "transmission_id": "paypal-transmission-id",
    "transmission_sig": "paypal-transmission-sig",
    "transmission_time": "paypal-transmission-time",
}


@dataclass(frozen=True)
class PayoutItemRequest:
    """One payout as we hold it: integer minor units; PayPal's decimal string is derived exactly."""

    receiver: str
    amount_minor: int
    currency: str
    sender_item_id: str
    recipient_type: str = "EMAIL"
    note: str = ""

    def __post_init__(self) -> None:
        if Money(self.amount_minor, self.currency).minor <= 0:  # Money refuses floats and unknown currencies
            raise MoneyError(f"a payout must be positive, got {self.amount_minor} {self.currency}")
        if self.recipient_type not in RECIPIENT_TYPES:
            raise ValueError(f"recipient_type must be one of {sorted(RECIPIENT_TYPES)}, got {self.recipient_type!r}")

    def as_paypal(self) -> dict[str, Any]:
        value = Money(self.amount_minor, self.currency).decimal_string()
        item: dict[str, Any] = {
            "recipient_type": self.recipient_type,
            "amount": {"value": value, "currency": self.currency},
            "receiver": self.receiver,
            "sender_item_id": self.sender_item_id,
        }
        if self.note:
            item["note"] = self.note
        return item


def token_cache_seconds(expires_in: int) -> int:
    """How long to keep a token: up to 5 minutes (a tenth of short lifetimes) before PayPal's expiry."""
    return expires_in - max(1, min(300, expires_in // 10))


def linked_batch_id(error: dict[str, Any]) -> str | None:
    """The original batch's id from a duplicate-`sender_batch_id` refusal, when PayPal linked it."""
    for link in _links(error):
        match = _BATCH_HREF.search(str(link.get("href", "")))
        if match:
            return match["batch_id"]
    return None


def _links(error: dict[str, Any]) -> list[dict[str, Any]]:
    """HATEOAS links of an error, top level first, then those inside its details."""
    found = list(error.get("links") or [])
    for detail in error.get("details") or []:
        if isinstance(detail, dict):
            found += detail.get("links") or detail.get("link") or []
    return [link for link in found if isinstance(link, dict)]


def _is_duplicate_batch(body: Any) -> bool:
    if not isinstance(body, dict) or body.get("name") != "USER_BUSINESS_ERROR":
        return False
    details = [detail for detail in body.get("details") or [] if isinstance(detail, dict)]
    return any(str(detail.get("field", "")).upper().endswith("SENDER_BATCH_ID") for detail in details)


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _declined(response: httpx.Response, body: Any) -> Declined:
    status = response.status_code
    if status == 401:
        return Declined(reason="PayPal refused our access token", code="authentication_failed", raw=_as_dict(body))
    name = str(body.get("name", "")) if isinstance(body, dict) else ""
    message = str(body.get("message", "")) if isinstance(body, dict) else ""
    return Declined(
        reason=f"PayPal answered {status} {name}: {message}".strip(),
        code=name.lower() or f"http_{status}",
        retryable=status == 429,
        raw=_as_dict(body),
    )


def _as_dict(body: Any) -> dict[str, Any]:
    return body if isinstance(body, dict) else {"body": body}


class PayPalClient:
    """One connection pool to PayPal (or the sandbox); close it, or use it as a context manager."""

    def __init__(self) -> None:
        self.base_url = api_base("paypal")
        self.http = httpx.Client(
            base_url=self.base_url,
            timeout=settings.PROVIDER_TIMEOUT_SECONDS,
            headers={"Accept": "application/json"},
        )
        digest = hashlib.sha256(f"{self.base_url}|{settings.PAYPAL_CLIENT_ID}".encode()).hexdigest()[:24]
        self._token_key = f"providers:paypal:access_token:{digest}"

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> PayPalClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # --- OAuth2
    def forget_token(self) -> None:
        cache.delete(self._token_key)

    def _token(self) -> str | Declined:
        cached = cache.get(self._token_key)
        if isinstance(cached, str):
            return cached
        try:
            response = self.http.post(
                "/v1/oauth2/token",
                data={"grant_type": "client_credentials"},
                auth=(str(settings.PAYPAL_CLIENT_ID), str(settings.PAYPAL_CLIENT_SECRET)),
            )
        except httpx.TransportError as error:
            return Declined(reason=f"PayPal token request failed: {error!r}", code="not_sent", retryable=True)
        body = _body(response)
        if response.status_code != 200 or not isinstance(body, dict) or "access_token" not in body:
            retryable = response.status_code >= 500 or response.status_code == 429
            code = "authentication_failed" if response.status_code == 401 else "not_sent"
            return Declined(reason=f"PayPal issued no token ({response.status_code})", code=code, retryable=retryable)
        token, timeout = str(body["access_token"]), token_cache_seconds(int(body.get("expires_in", 0)))
        if timeout > 0:
            cache.set(self._token_key, token, timeout=timeout)
        return token

    def _drop_token(self, token: str) -> None:
        if cache.get(self._token_key) == token:  # another process may already hold a fresh one
            cache.delete(self._token_key)

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response | Declined | Unknown:
        """One request with a Bearer token; after a 401, once more with a fresh token."""
        sent = self._send_once(method, path, body=body, params=params, headers=headers)
        if isinstance(sent, httpx.Response) and sent.status_code == 401:
            sent = self._send_once(method, path, body=body, params=params, headers=headers)
        return sent

    def _send_once(
        self, method: str, path: str, *, body: Any, params: Mapping[str, Any] | None, headers: Mapping[str, str] | None
    ) -> httpx.Response | Declined | Unknown:
        token = self._token()
        if isinstance(token, Declined):
            return token
        try:
            response = self.http.request(
                method, path, json=body, params=params, headers={**(headers or {}), "Authorization": f"Bearer {token}"}
            )
        except httpx.TransportError as error:
            return outcome_of_transport_error(error)
        if response.status_code == 401:
            self._drop_token(token)
        return response

    @staticmethod
    def _answer(sent: httpx.Response | Declined | Unknown) -> dict[str, Any] | Declined | Unknown:
        """The body of a 200 answer, or the result that stands for any other answer."""
        if not isinstance(sent, httpx.Response):
            return sent
        body = _body(sent)
        if sent.status_code >= 500:
            return outcome_of_server_error(sent.status_code, body)
        if sent.status_code != 200 or not isinstance(body, dict):
            return _declined(sent, body)
        return body

    def _item_result(self, sent: httpx.Response | Declined | Unknown) -> ProviderResult:
        body = self._answer(sent)
        if not isinstance(body, dict):
            return body
        return Succeeded(reference=str(body["payout_item_id"]), status=str(body["transaction_status"]), raw=body)

    # --- payouts
    def create_batch(
        self,
        *,
        sender_batch_id: str,
        items: Sequence[PayoutItemRequest],
        email_subject: str = DEFAULT_EMAIL_SUBJECT,
        email_message: str = "",
    ) -> ProviderResult:
        """Submit a batch under our deterministic `sender_batch_id`; see the module docstring for results."""
        problem = _batch_problem(sender_batch_id, items)
        if problem:
            return Declined(reason=problem, code="invalid_request")
        header = {"sender_batch_id": sender_batch_id, "email_subject": email_subject}
        if email_message:
            header["email_message"] = email_message
        payload = {"sender_batch_header": header, "items": [item.as_paypal() for item in items]}
        sent = self._send("POST", "/v1/payments/payouts", body=payload, headers={"PayPal-Request-Id": sender_batch_id})
        return self._created(sent, sender_batch_id)

    def _created(self, sent: httpx.Response | Declined | Unknown, sender_batch_id: str) -> ProviderResult:
        if not isinstance(sent, httpx.Response):
            if isinstance(sent, Unknown):
                log.warning("paypal.create_batch.unknown", sender_batch_id=sender_batch_id, reason=sent.reason)
            return sent
        body = _body(sent)
        if sent.status_code >= 500:
            return outcome_of_server_error(sent.status_code, body)
        if sent.status_code == 201 and isinstance(body, dict) and isinstance(body.get("batch_header"), dict):
            batch_header = body["batch_header"]
            return Pending(
                reference=str(batch_header["payout_batch_id"]), status=str(batch_header["batch_status"]), raw=body
            )
        if _is_duplicate_batch(body):
            return self._existing_batch(sender_batch_id, _as_dict(body))
        return _declined(sent, body)

    def _existing_batch(self, sender_batch_id: str, refusal: dict[str, Any]) -> Pending | Unknown:
        """A refused re-submission: the batch PayPal already has under this `sender_batch_id`."""
        batch_id = linked_batch_id(refusal)
        if batch_id is None:
            reason = f"a batch with sender_batch_id {sender_batch_id} exists; PayPal did not name it"
            return Unknown(reason=reason, raw=refusal)
        found = self.get_batch(batch_id, page=1, page_size=1)
        if isinstance(found, Succeeded):
            return Pending(reference=batch_id, status=found.status, raw=found.raw)
        return Pending(reference=batch_id, raw=refusal)

    def get_batch(self, payout_batch_id: str, page: int = 1, page_size: int = 1000) -> ProviderResult:
        """The batch header (status, amounts) and one page of its items."""
        params = {"page": page, "page_size": page_size, "total_required": "true"}
        body = self._answer(self._send("GET", f"/v1/payments/payouts/{quote(payout_batch_id, safe='')}", params=params))
        if not isinstance(body, dict):
            return body
        header = body["batch_header"]
        return Succeeded(reference=str(header["payout_batch_id"]), status=str(header["batch_status"]), raw=body)

    def get_item(self, payout_item_id: str) -> ProviderResult:
        return self._item_result(self._send("GET", f"/v1/payments/payouts-item/{quote(payout_item_id, safe='')}"))

    def cancel_item(self, payout_item_id: str) -> ProviderResult:
        """Cancel an UNCLAIMED item; PayPal returns the money to us (`status="RETURNED"`)."""
        path = f"/v1/payments/payouts-item/{quote(payout_item_id, safe='')}/cancel"
        return self._item_result(self._send("POST", path))

    # --- webhooks
    def verify_webhook_signature(self, headers: Mapping[str, str], body: bytes) -> bool:
        """True only when PayPal confirms it sent this body to our webhook (settings.PAYPAL_WEBHOOK_ID).

        False also when PayPal could not be asked: the webhook endpoint then answers 400
        and PayPal delivers the event again later.
        """
        payload = _verification_request(headers, body)
        if payload is None:
            return False
        sent = self._send("POST", "/v1/notifications/verify-webhook-signature", body=payload)
        if not isinstance(sent, httpx.Response) or sent.status_code != 200:
            log.warning("paypal.webhook.verification_unavailable", outcome=repr(sent))
            return False
        answer = _body(sent)
        return isinstance(answer, dict) and answer.get("verification_status") == "SUCCESS"


def _verification_request(headers: Mapping[str, str], body: bytes) -> dict[str, Any] | None:
    lowered = {name.lower(): value for name, value in headers.items()}
    fields = {field: lowered.get(header, "") for field, header in _TRANSMISSION_HEADERS.items()}
    if not all(fields.values()):
        return None
    try:
        event = json.loads(body)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    return {**fields, "webhook_id": str(settings.PAYPAL_WEBHOOK_ID), "webhook_event": event}


def _batch_problem(sender_batch_id: str, items: Sequence[PayoutItemRequest]) -> str:
    if not 1 <= len(sender_batch_id) <= 256:
        return "sender_batch_id must have 1 to 256 characters"
    if not 1 <= len(items) <= MAX_BATCH_ITEMS:
        return f"a PayPal batch holds 1 to {MAX_BATCH_ITEMS} items, got {len(items)}"
    if len({item.currency for item in items}) > 1:
        return "all items in a PayPal batch must have the same currency"
    return ""
