"""Stripe through the official SDK, behind the provider boundary.

Every method returns a `providers.base` result and never raises an SDK error. Every call that moves money
takes the caller's deterministic idempotency key and sends it as Stripe's `Idempotency-Key`, so a retry, or
the sync that resolves an Unknown, gets Stripe's stored first answer instead of moving money twice.

How the SDK's errors map (max_network_retries=0: retries are the caller's decision, with the same key):
- 402 card errors, 400/404 invalid requests, 401/403 -> Declined;
- 400 idempotency_error (the key was used with other parameters) -> Unknown: this call did nothing, but an
  earlier one under the key may have moved money, so it proves nothing either way;
- 429 -> Declined(retryable=True): refused before it ran, safe to send again with the same key;
- 409 (the same key still in flight), 5xx, unreadable answers -> Unknown;
- a connection that never opened -> Declined(code="not_sent", retryable=True); a timeout or a reset after
  sending -> Unknown. Our transport chains the httpx error, so the two are told apart by its type.

Keys expire at Stripe after 24 h, so every create that takes a key also writes it into the object's metadata
(`metadata["idempotency_key"]`), and `find_payment_intent`, `find_refund` and `find_transfer` look the object up
by it without sending anything: the object, `Absent()` (authoritative: Stripe has none), or Unknown when Stripe
cannot answer (any error). PaymentIntents are found through Search, which Stripe documents as eventually
consistent (searchable within a minute, up to an hour behind during outages): an empty search is authoritative
only for an attempt older than that, which `first_attempt_at` enforces. Refunds and transfers are found
through list endpoints, which are immediate.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import httpx
import stripe
import structlog
from django.conf import settings
from django.utils import timezone

from core.errors import ProviderUnavailable
from providers.base import (
    Absent,
    Declined,
    InvalidSignature,
    LookupResult,
    Pending,
    ProviderResult,
    Succeeded,
    Unknown,
    found_failed,
    outcome_of_server_error,
    outcome_of_transport_error,
)
from providers.config import api_base
from providers.webhook_signatures import unix_time_text

if TYPE_CHECKING:
    from stripe.params import (
        BalanceTransactionListParams,
        PaymentIntentCancelParams,
        PaymentIntentCaptureParams,
        PaymentIntentCreateParams,
        PaymentIntentSearchParams,
        RefundCreateParams,
        RefundListParams,
        TransferCreateParams,
        TransferListParams,
        TransferReversalCreateParams,
    )

log = structlog.get_logger(__name__)

WEBHOOK_TOLERANCE_SECONDS = 300
IDEMPOTENCY_METADATA_KEY = "idempotency_key"  # where every keyed create leaves our key, to be found by it
# Stripe Search lags writes: "under a minute", "up to an hour behind during outages" (the SDK's docstring).
SEARCH_FRESHNESS = timedelta(hours=1)
MAX_LOOKUP_PAGES = 20  # 100 objects a page; more than that under one key or group is not ours to guess about
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
            "metadata": _keyed_metadata(metadata, idempotency_key),
        }
        if transfer_group:
            params["transfer_group"] = transfer_group
        options: stripe.RequestOptions = {"idempotency_key": idempotency_key}
        return self._call(lambda: self._stripe.v1.payment_intents.create(params, options), intent_result)

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
            lambda: self._stripe.v1.payment_intents.capture(payment_intent_id, params, options), intent_result
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
            lambda: self._stripe.v1.payment_intents.cancel(payment_intent_id, params, options), intent_result
        )

    def retrieve_payment_intent(self, *, payment_intent_id: str) -> ProviderResult:
        return self._call(lambda: self._stripe.v1.payment_intents.retrieve(payment_intent_id), intent_result)

    def find_payment_intent(self, *, idempotency_key: str, first_attempt_at: datetime | None = None) -> LookupResult:
        """The PaymentIntent created with our key (the oldest, should there be several), found by Search on
        `metadata['idempotency_key']`; `Absent()` when there is none; Unknown when Stripe cannot answer.

        Search is eventually consistent, so with `first_attempt_at` less than SEARCH_FRESHNESS ago an empty
        answer is Unknown, not Absent: the intent may exist and not be searchable yet. Without it the caller
        vouches that the attempt is older than that.
        """
        params: PaymentIntentSearchParams = {
            "query": f"metadata['{IDEMPOTENCY_METADATA_KEY}']:'{_search_quoted(idempotency_key)}'",
            "limit": 100,
        }
        found: list[dict[str, Any]] = []
        try:
            for _ in range(MAX_LOOKUP_PAGES):
                page = self._stripe.v1.payment_intents.search(params)
                found.extend(intent.to_dict() for intent in page.data)
                if not page.has_more or not page.next_page:
                    break
                params["page"] = page.next_page
            else:
                return Unknown(reason=f"searching PaymentIntents for key {idempotency_key}: too many matches")
        except stripe.StripeError as error:
            return Unknown(reason=f"searching PaymentIntents for key {idempotency_key} failed: {_why(error)}")
        matches = [intent for intent in found if _carries_key(intent, idempotency_key)]
        if not matches:
            if first_attempt_at is not None and timezone.now() - first_attempt_at < SEARCH_FRESHNESS:
                reason = f"no PaymentIntent for key {idempotency_key} yet; Stripe Search may lag"
                return Unknown(reason=reason, answered=True)
            return Absent(reason=f"no PaymentIntent carries idempotency key {idempotency_key}")
        return intent_result(_oldest(matches, "PaymentIntent", idempotency_key))

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
        params: RefundCreateParams = {
            "payment_intent": payment_intent_id,
            "metadata": _keyed_metadata(metadata, idempotency_key),
        }
        if amount_minor is not None:
            params["amount"] = amount_minor
        options: stripe.RequestOptions = {"idempotency_key": idempotency_key}
        return self._call(lambda: self._stripe.v1.refunds.create(params, options), refund_result)

    def retrieve_refund(self, *, refund_id: str) -> ProviderResult:
        return self._call(lambda: self._stripe.v1.refunds.retrieve(refund_id), refund_result)

    def find_refund(self, *, payment_intent_id: str, idempotency_key: str) -> LookupResult:
        """The refund of this PaymentIntent created with our key, from the refunds list (immediate, unlike
        Search); `Absent()` when there is none; Unknown when Stripe cannot answer."""
        params: RefundListParams = {"payment_intent": payment_intent_id, "limit": 100}
        refunds = self._list_all(lambda: self._stripe.v1.refunds.list(params), params)
        if isinstance(refunds, Unknown):
            return Unknown(reason=f"listing refunds of {payment_intent_id} failed: {refunds.reason}")
        matches = [refund for refund in refunds if _carries_key(refund, idempotency_key)]
        if not matches:
            return Absent(reason=f"no refund of {payment_intent_id} carries idempotency key {idempotency_key}")
        return refund_result(_oldest(matches, "refund", idempotency_key))

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
            "metadata": _keyed_metadata(metadata, idempotency_key),
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

    def find_transfer(self, *, transfer_group: str, idempotency_key: str) -> LookupResult:
        """The transfer of this group created with our key, from the transfers list (immediate); `Absent()`
        when there is none; Unknown when Stripe cannot answer."""
        params: TransferListParams = {"transfer_group": transfer_group, "limit": 100}
        transfers = self._list_all(lambda: self._stripe.v1.transfers.list(params), params)
        if isinstance(transfers, Unknown):
            return Unknown(reason=f"listing transfers of {transfer_group} failed: {transfers.reason}")
        matches = [transfer for transfer in transfers if _carries_key(transfer, idempotency_key)]
        if not matches:
            return Absent(reason=f"no transfer in {transfer_group} carries idempotency key {idempotency_key}")
        return _transfer_result(_oldest(matches, "transfer", idempotency_key))

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
    def _list_all(self, list_page: Callable[[], stripe.ListObject[Any]], params: Any) -> list[dict[str, Any]] | Unknown:
        """Every object of a list endpoint, newest first, following `starting_after` (set on `params`, which
        `list_page` sends); Unknown on any error or past MAX_LOOKUP_PAGES pages."""
        rows: list[dict[str, Any]] = []
        try:
            for _ in range(MAX_LOOKUP_PAGES):
                page = list_page()
                rows.extend(obj.to_dict() for obj in page.data)
                if not page.has_more or not page.data:
                    return rows
                params["starting_after"] = rows[-1]["id"]
        except stripe.StripeError as error:
            return Unknown(reason=_why(error))
        return Unknown(reason=f"more than {MAX_LOOKUP_PAGES} pages")

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
        return Unknown(reason=f"Stripe refused the idempotency key (an earlier request used it): {message}", raw=raw)
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


def _keyed_metadata(metadata: Mapping[str, str] | None, idempotency_key: str) -> dict[str, str]:
    return {**dict(metadata or {}), IDEMPOTENCY_METADATA_KEY: idempotency_key}


def _carries_key(obj: dict[str, Any], idempotency_key: str) -> bool:
    return (obj.get("metadata") or {}).get(IDEMPOTENCY_METADATA_KEY) == idempotency_key


def _search_quoted(value: str) -> str:
    """A value inside single quotes in Stripe's search query language: backslash escapes."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _oldest(matches: Iterable[dict[str, Any]], kind: str, idempotency_key: str) -> dict[str, Any]:
    """The first object made under a key, from `matches` newest first (as Stripe lists and searches); more
    than one means money may have moved twice: say so loudly."""
    oldest_first = list(matches)[::-1]
    ordered = sorted(oldest_first, key=lambda obj: int(obj.get("created") or 0))  # stable within a second
    if len(ordered) > 1:
        log.error(
            "stripe.lookup.several_objects_for_one_key",
            kind=kind,
            idempotency_key=idempotency_key,
            ids=[obj["id"] for obj in ordered],
        )
    return ordered[0]


def _why(error: stripe.StripeError) -> str:
    return f"{type(error).__name__} ({error.http_status}): {error.user_message or error}"


def intent_result(intent: dict[str, Any]) -> ProviderResult:
    if intent["status"] in PENDING_INTENT_STATUSES:
        return Pending(reference=intent["id"], status=intent["status"], raw=intent)
    return Succeeded(reference=intent["id"], status=intent["status"], raw=intent)


def refund_result(refund: dict[str, Any]) -> ProviderResult:
    status = refund["status"]
    if status == "succeeded":
        return Succeeded(reference=refund["id"], status=status, raw=refund)
    if status in ("failed", "canceled"):  # the refund exists and failed: known not refunded, however it was read
        reason = f"refund {refund['id']} {status}: {refund.get('failure_reason') or 'no reason given'}"
        return found_failed(reason, refund)
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
    if len(timestamps) != 1 or not unix_time_text(timestamps[0]):
        raise WebhookSignatureError("Stripe-Signature has no single t=<unix time>")
    if not signatures:
        raise WebhookSignatureError("Stripe-Signature has no v1 signature")
    return int(timestamps[0]), signatures
