"""Stripe through the official SDK, behind the provider boundary.

Every method returns a `providers.base` result and never raises an SDK error. Every call that moves money
takes the caller's deterministic idempotency key and sends it as Stripe's `Idempotency-Key`, so a retry, or
the sync that resolves an Unknown, gets Stripe's stored first answer instead of moving money twice.

How the SDK's errors map (max_network_retries=0: retries are the caller's decision, with the same key):
- 402 card errors, 400/404 invalid requests, 401/403 -> Declined;
- 400 idempotency_error (the key was used with other parameters) -> Declined(code="idempotency_error"): this
  call did nothing, but an earlier one with the key may have moved money, so never fall back on it;
- 429 -> Declined(retryable=True): refused before it ran, safe to send again with the same key;
- 409 (the same key still in flight), 5xx, unreadable answers -> Unknown;
- a connection that never opened -> Declined(code="not_sent", retryable=True); a timeout or a reset after
  sending -> Unknown. Our transport chains the httpx error, so the two are told apart by its type.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import httpx
import stripe
from django.conf import settings
from django.utils import timezone

from core.errors import ProviderUnavailable
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

if TYPE_CHECKING:
    from stripe.params import (
        BalanceTransactionListParams,
        PaymentIntentCancelParams,
        PaymentIntentCaptureParams,
        PaymentIntentCreateParams,
        RefundCreateParams,
        TransferCreateParams,
        TransferListParams,
        TransferReversalCreateParams,
    )

WEBHOOK_TOLERANCE_SECONDS = 300
# Stripe keeps idempotency keys for 24 hours; after that a "replay" would be a new request and could charge
# twice. Replays for a sync stop an hour earlier to leave room for clock skew and slow queues.
REPLAY_WINDOW = timedelta(hours=23)
PENDING_INTENT_STATUSES = frozenset(
    {"requires_payment_method", "requires_confirmation", "requires_action", "processing"}
)
CancellationReason = Literal["abandoned", "duplicate", "fraudulent", "requested_by_customer"]


class WebhookSignatureError(InvalidSignature):
    """The body is not an event Stripe signed with our secret within the tolerance; nothing may be applied."""


class HttpxTransport(stripe.HTTPClient):
    """The SDK's pluggable HTTP client over httpx, with our timeout and the httpx error kept as the cause."""

    name = "httpx"

    def __init__(self, *, timeout_seconds: float) -> None:
        super().__init__()
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_seconds))

    def request(
        self, method: str, url: str, headers: Mapping[str, str] | None, post_data: Any = None, *, _usage: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        try:
            response = self._client.request(method, url, headers=headers, content=post_data)
        except httpx.TransportError as error:
            raise stripe.APIConnectionError(f"{type(error).__name__}: {error}", should_retry=False) from error
        return response.content, response.status_code, response.headers

    def close(self) -> None:
        self._client.close()


class StripeProviderClient:
    """Stripe PaymentIntents (holds and captures), refunds and Connect transfers, as result values."""

    def __init__(
        self, *, api_key: str | None = None, base_url: str | None = None, timeout_seconds: float | None = None
    ) -> None:
        self._transport = HttpxTransport(timeout_seconds=timeout_seconds or settings.PROVIDER_TIMEOUT_SECONDS)
        self._stripe = stripe.StripeClient(
            api_key=api_key or settings.STRIPE_API_KEY,
            base_addresses={"api": base_url or api_base("stripe")},  # the SDK appends /v1/...
            max_network_retries=0,
            http_client=self._transport,
        )

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> StripeProviderClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- PaymentIntents
    def create_payment_intent(
        self,
        *,
        amount_minor: int,
        currency: str,
        payment_method: str,
        idempotency_key: str,
        capture: Literal["manual", "automatic"] = "manual",
        metadata: Mapping[str, str] | None = None,
        transfer_group: str = "",
    ) -> ProviderResult:
        """Authorize (manual capture: a hold) or charge at once; confirmed server-side with a card."""
        params: PaymentIntentCreateParams = {
            "amount": amount_minor,
            "currency": currency.lower(),
            "payment_method": payment_method,
            "payment_method_types": ["card"],
            "capture_method": capture,
            "confirm": True,
            "metadata": dict(metadata or {}),
        }
        if transfer_group:
            params["transfer_group"] = transfer_group
        options: stripe.RequestOptions = {"idempotency_key": idempotency_key}
        return self._call(lambda: self._stripe.v1.payment_intents.create(params, options), _intent_result)

    def sync_payment_intent(
        self,
        *,
        first_attempt_at: datetime,
        amount_minor: int,
        currency: str,
        payment_method: str,
        idempotency_key: str,
        capture: Literal["manual", "automatic"] = "manual",
        metadata: Mapping[str, str] | None = None,
        transfer_group: str = "",
    ) -> ProviderResult:
        """Resolve an Unknown create by replaying it unchanged: Stripe answers with what it did the first time.

        Past the idempotency window Stripe has forgotten the key and would create a second PaymentIntent,
        so this answers Unknown without calling; a person (or a search by metadata) must resolve it.
        """
        if timezone.now() - first_attempt_at > REPLAY_WINDOW:
            return Unknown(reason=f"idempotency key {idempotency_key} is past Stripe's 24 h window; resolve by hand")
        return self.create_payment_intent(
            amount_minor=amount_minor,
            currency=currency,
            payment_method=payment_method,
            idempotency_key=idempotency_key,
            capture=capture,
            metadata=metadata,
            transfer_group=transfer_group,
        )

    def capture(
        self, *, payment_intent_id: str, idempotency_key: str, amount_minor: int | None = None
    ) -> ProviderResult:
        """Capture a hold, in full or (amount_minor) in part; the rest is released."""
        params: PaymentIntentCaptureParams = {}
        if amount_minor is not None:
            params["amount_to_capture"] = amount_minor
        options: stripe.RequestOptions = {"idempotency_key": idempotency_key}
        return self._call(
            lambda: self._stripe.v1.payment_intents.capture(payment_intent_id, params, options), _intent_result
        )

    def cancel(
        self, *, payment_intent_id: str, idempotency_key: str, reason: CancellationReason | None = None
    ) -> ProviderResult:
        """Void a hold (or an unconfirmed intent)."""
        params: PaymentIntentCancelParams = {}
        if reason is not None:
            params["cancellation_reason"] = reason
        options: stripe.RequestOptions = {"idempotency_key": idempotency_key}
        return self._call(
            lambda: self._stripe.v1.payment_intents.cancel(payment_intent_id, params, options), _intent_result
        )

    def retrieve_payment_intent(self, *, payment_intent_id: str) -> ProviderResult:
        return self._call(lambda: self._stripe.v1.payment_intents.retrieve(payment_intent_id), _intent_result)

    # --- Refunds
    def refund(
        self,
        *,
        payment_intent_id: str,
        idempotency_key: str,
        amount_minor: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ProviderResult:
        """Refund a captured payment, in full or in part; Stripe refuses more than is left to refund."""
        params: RefundCreateParams = {"payment_intent": payment_intent_id, "metadata": dict(metadata or {})}
        if amount_minor is not None:
            params["amount"] = amount_minor
        options: stripe.RequestOptions = {"idempotency_key": idempotency_key}
        return self._call(lambda: self._stripe.v1.refunds.create(params, options), _refund_result)

    def retrieve_refund(self, *, refund_id: str) -> ProviderResult:
        return self._call(lambda: self._stripe.v1.refunds.retrieve(refund_id), _refund_result)

    # --- Connect transfers
    def create_transfer(
        self,
        *,
        amount_minor: int,
        currency: str,
        destination: str,
        idempotency_key: str,
        transfer_group: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> ProviderResult:
        """Move funds to a connected account (acct_...)."""
        params: TransferCreateParams = {
            "amount": amount_minor,
            "currency": currency.lower(),
            "destination": destination,
            "metadata": dict(metadata or {}),
        }
        if transfer_group:
            params["transfer_group"] = transfer_group
        options: stripe.RequestOptions = {"idempotency_key": idempotency_key}
        return self._call(lambda: self._stripe.v1.transfers.create(params, options), _transfer_result)

    def reverse_transfer(
        self, *, transfer_id: str, idempotency_key: str, amount_minor: int | None = None
    ) -> ProviderResult:
        """Take back all of a transfer, or part of it (amount_minor)."""
        params: TransferReversalCreateParams = {}
        if amount_minor is not None:
            params["amount"] = amount_minor
        options: stripe.RequestOptions = {"idempotency_key": idempotency_key}
        return self._call(
            lambda: self._stripe.v1.transfers.reversals.create(transfer_id, params, options), _reversal_result
        )

    def retrieve_transfer(self, *, transfer_id: str) -> ProviderResult:
        return self._call(lambda: self._stripe.v1.transfers.retrieve(transfer_id), _transfer_result)

    def transfers_in_group(self, *, transfer_group: str) -> list[ProviderResult] | Unknown:
        """The transfers Stripe has made under a transfer group (newest first), or Unknown if it cannot say.

        How to find out whether money already left when our idempotency key may have expired at Stripe
        (24 h): a transfer in the group means it did, whatever happened to our request.
        """
        params: TransferListParams = {"transfer_group": transfer_group, "limit": 100}
        try:
            listing = self._stripe.v1.transfers.list(params)
        except stripe.StripeError as error:
            outcome = outcome_of_stripe_error(error)
            return Unknown(reason=f"listing transfers of {transfer_group} failed: {outcome.reason}")
        return [_transfer_result(transfer.to_dict()) for transfer in listing.data]

    def retrieve_account(self, *, account_id: str) -> ProviderResult:
        """A connected account; `status` is its `transfers` capability (active, inactive, pending)."""
        return self._call(lambda: self._stripe.v1.accounts.retrieve(account_id), _account_result)

    # --- Balance transactions (reconciliation)
    def balance_transaction_pages(
        self, *, created_gte: int, created_lt: int, page_size: int = 100
    ) -> Iterator[list[BalanceMovement]]:
        """Every balance transaction created in [created_gte, created_lt) (unix seconds), one page at a time,
        newest first, so a caller never holds the day in memory.

        Each source is expanded (`expand[]=data.source`) to name the object that moved the money the way our
        ledger does: a charge by its PaymentIntent (`pi_...`), refunds, transfers and reversals by their own id.
        A read moves no money, so a failed page raises `ProviderUnavailable` (the caller starts over).
        """
        params: BalanceTransactionListParams = {
            "created": {"gte": created_gte, "lt": created_lt},
            "limit": min(max(page_size, 1), 100),
            "expand": ["data.source"],
        }
        while True:
            try:
                page = self._stripe.v1.balance_transactions.list(params)
            except stripe.StripeError as error:
                raise ProviderUnavailable(
                    f"listing Stripe balance transactions failed: {error}",
                    user_message="Stripe's balance report could not be read.",
                    action_required="Run the reconciliation for this day again later; nothing was changed.",
                    details={"provider": "stripe", "starting_after": params.get("starting_after")},
                ) from error
            rows = [_balance_movement(txn.to_dict()) for txn in page.data]
            if rows:
                yield rows
            if not page.has_more or not rows:
                return
            params["starting_after"] = rows[-1].transaction_id

    # --- plumbing
    def _call(
        self, send: Callable[[], stripe.StripeObject], to_result: Callable[[dict[str, Any]], ProviderResult]
    ) -> ProviderResult:
        try:
            answer = send()
        except stripe.StripeError as error:
            return outcome_of_stripe_error(error)
        return to_result(answer.to_dict())


_thread_clients = threading.local()


def stripe_client() -> StripeProviderClient:
    """This thread's client, kept open: building one (its TLS context) costs more than a call.

    Made again when the configuration (base URL, key, timeout) changes. Callers never close it.
    """
    config = (api_base("stripe"), settings.STRIPE_API_KEY, settings.PROVIDER_TIMEOUT_SECONDS)
    cached = getattr(_thread_clients, "stripe", None)
    if cached is None or cached[0] != config:
        if cached is not None:
            cached[1].close()
        cached = _thread_clients.stripe = (config, StripeProviderClient())
    return cached[1]


def outcome_of_stripe_error(error: stripe.StripeError) -> Declined | Unknown:
    body = error.json_body.get("error", {}) if isinstance(error.json_body, dict) else {}
    raw = body if isinstance(body, dict) else {}
    message = error.user_message or str(error)
    if isinstance(error, stripe.APIConnectionError):
        cause = error.__cause__
        if isinstance(cause, httpx.TransportError):
            return outcome_of_transport_error(cause)
        return Unknown(reason=f"connection to Stripe failed: {message}")
    if isinstance(error, stripe.CardError):
        return Declined(reason=message, code=raw.get("decline_code") or error.code or "card_error", raw=raw)
    if isinstance(error, stripe.IdempotencyError):
        return Declined(reason=message, code="idempotency_error", raw=raw)
    if isinstance(error, stripe.RateLimitError):
        return Declined(reason=message, code="rate_limit", retryable=True, raw=raw)
    if isinstance(error, stripe.InvalidRequestError):
        return Declined(reason=message, code=error.code or "invalid_request_error", raw=raw)
    if isinstance(error, stripe.AuthenticationError):
        return Declined(reason=message, code="authentication_error", raw=raw)
    if isinstance(error, stripe.PermissionError):
        return Declined(reason=message, code="permission_error", raw=raw)
    if error.http_status is not None and error.http_status >= 500:
        return outcome_of_server_error(error.http_status, raw)
    # 409 (the same key still in flight) and anything unreadable: the request may have been applied
    return Unknown(reason=f"Stripe answered {error.http_status}: {message}", raw=raw)


@dataclass(frozen=True)
class BalanceMovement:
    """One Stripe balance transaction, read for reconciliation; amounts signed, in minor units."""

    transaction_id: str  # txn_...
    reference: str  # what moved the money, as our ledger names it: pi_, re_, tr_, trr_ (else the source id)
    type: str
    amount_minor: int
    fee_minor: int
    net_minor: int
    currency: str  # upper case, as ours
    status: str
    created: int


def _balance_movement(txn: dict[str, Any]) -> BalanceMovement:
    source = txn.get("source")
    reference = source.get("id", "") if isinstance(source, dict) else str(source or "")
    if isinstance(source, dict) and source.get("object") == "charge" and source.get("payment_intent"):
        reference = str(source["payment_intent"])
    return BalanceMovement(
        transaction_id=txn["id"],
        reference=reference,
        type=txn["type"],
        amount_minor=int(txn["amount"]),
        fee_minor=int(txn["fee"]),
        net_minor=int(txn["net"]),
        currency=str(txn["currency"]).upper(),
        status=txn["status"],
        created=int(txn["created"]),
    )


def _intent_result(intent: dict[str, Any]) -> ProviderResult:
    if intent["status"] in PENDING_INTENT_STATUSES:
        return Pending(reference=intent["id"], status=intent["status"], raw=intent)
    return Succeeded(reference=intent["id"], status=intent["status"], raw=intent)


def _refund_result(refund: dict[str, Any]) -> ProviderResult:
    status = refund["status"]
    if status == "succeeded":
        return Succeeded(reference=refund["id"], status=status, raw=refund)
    if status in ("failed", "canceled"):
        reason = f"refund {refund['id']} {status}: {refund.get('failure_reason') or 'no reason given'}"
        return Declined(reason=reason, code=f"refund_{status}", raw=refund)
    return Pending(reference=refund["id"], status=status, raw=refund)


def _transfer_result(transfer: dict[str, Any]) -> ProviderResult:
    return Succeeded(reference=transfer["id"], status="reversed" if transfer["reversed"] else "paid", raw=transfer)


def _reversal_result(reversal: dict[str, Any]) -> ProviderResult:
    return Succeeded(reference=reversal["id"], status="reversed", raw=reversal)


def _account_result(account: dict[str, Any]) -> ProviderResult:
    transfers = (account.get("capabilities") or {}).get("transfers") or "inactive"
    return Succeeded(reference=account["id"], status=transfers, raw=account)


def verify_webhook(
    payload: bytes, signature_header: str, *, now: float | None = None, secret: str | None = None
) -> dict[str, Any]:
    """The event Stripe signed, or WebhookSignatureError.

    Checks `Stripe-Signature: t=...,v1=...` (any of several v1 values may match, as during secret rolling)
    against HMAC-SHA256 of "{t}.{raw body}", and rejects timestamps more than 300 s away in either direction:
    the SDK's helper accepts timestamps from the future, which would let a captured body be replayed later.
    """
    timestamp, signatures = _parse_signature_header(signature_header)
    key = (secret if secret is not None else settings.STRIPE_WEBHOOK_SECRET).encode()
    expected = hmac.new(key, f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, signature) for signature in signatures):
        raise WebhookSignatureError("no v1 signature matches the body and the webhook secret")
    skew = (time.time() if now is None else now) - timestamp
    if abs(skew) > WEBHOOK_TOLERANCE_SECONDS:
        direction = "old" if skew > 0 else "in the future"
        raise WebhookSignatureError(f"timestamp {timestamp} is {abs(int(skew))} s {direction} (tolerance 300 s)")
    try:
        event = json.loads(payload)
    except ValueError as error:
        raise WebhookSignatureError(f"signed body is not JSON: {error}") from error
    if not isinstance(event, dict) or not event.get("id") or not event.get("type"):
        raise WebhookSignatureError("signed body is not a Stripe event")
    return event


def _parse_signature_header(header: str) -> tuple[int, list[str]]:
    pairs = [item.strip().partition("=") for item in header.split(",")]
    timestamps = [value for name, _, value in pairs if name == "t"]
    signatures = [value for name, _, value in pairs if name == "v1" and value]
    if len(timestamps) != 1 or not timestamps[0].isdigit():
        raise WebhookSignatureError("Stripe-Signature has no single t=<unix time>")
    if not signatures:
        raise WebhookSignatureError("Stripe-Signature has no v1 signature")
    return int(timestamps[0]), signatures
