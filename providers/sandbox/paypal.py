"""PayPal in the sandbox: OAuth2 client credentials, Payouts and webhook signature verification.

Routes live under `/paypal/...`, so `api_base("paypal")` plus PayPal's own paths reach them.
Semantics kept from PayPal (see providers/specs/paypal/ and DESIGN.md section 7):

- `POST /v1/oauth2/token` takes Basic auth with PAYPAL_CLIENT_ID/SECRET and issues a
  Bearer token valid for `expires_in` seconds; every other route answers 401 without one.
- `POST /v1/payments/payouts` validates the body against the official spec's
  `create_payout_request` schema (when `jsonschema` is installed and the spec file is
  found; the checks below apply either way), then: 1 to 15,000 items, one currency per
  batch, recipient types EMAIL/PHONE/PAYPAL_ID, amounts exact for the currency. A
  `sender_batch_id` used in the last 30 days is refused with 400 USER_BUSINESS_ERROR whose
  `links` point at the original batch. `PayPal-Request-Id` is accepted but not replayed:
  for Payouts, PayPal documents `sender_batch_id` as the idempotency key (and was seen not
  to enforce the request id on this endpoint, paypal/PayPal-Java-SDK#379).
  `Sandbox.forget_idempotency_keys("paypal")` forgets the sender_batch_ids used so far, as
  once the 30 days passed: a re-used one makes a NEW batch; the old batches stay.
- Items are processed asynchronously, one step per `sandbox.tick()`: a PENDING batch turns
  PROCESSING; on the next tick each item takes the statuses its receiver's rule plans
  (`PayPalSandbox.receiver_rules`, first substring match wins) one per tick, and the batch
  turns SUCCESS once no item is PENDING. A receiver containing "denied" makes the whole
  batch DENIED (items FAILED). Every change sends a PayPal-shaped webhook.
- Webhooks carry PAYPAL-TRANSMISSION-ID/-TIME/-SIG, PAYPAL-CERT-URL and PAYPAL-AUTH-ALGO.
  The signature covers `transmission_id|transmission_time|webhook_id|crc32(event)` like
  PayPal's; it is an HMAC with a key only this sandbox holds (PayPal uses RSA), so
  `POST /v1/notifications/verify-webhook-signature` answers SUCCESS only for events this
  sandbox sent, unchanged, for the webhook id it sent them to (settings.PAYPAL_WEBHOOK_ID).

Error bodies and the request checks are in providers/sandbox/paypal_checks.py.
Tests reach the state with `paypal_sandbox(sandbox)`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import string
import time
import uuid
import weakref
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings

from core.money import Money
from providers.sandbox.paypal_checks import (
    _VERIFY_FIELDS,
    _batch_problems,
    _detail,
    _error,
    _invalid,
    _not_found,
    _paging,
    spec_path,  # noqa: F401 - tests import it from here
)
from providers.sandbox.server import Sandbox, SandboxRequest, SandboxResponse

DUPLICATE_WINDOW = timedelta(days=30)
TOKEN_TTL_SECONDS = 32_400  # what PayPal issues
AUTH_ALGO = "SHA256withRSA"
PAYOUTS_SCOPE = "https://uri.paypal.com/services/payments/payouts"

DEFAULT_RECEIVER_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("unclaimed", ("UNCLAIMED",)),
    ("fail", ("FAILED",)),
    ("return", ("SUCCESS", "RETURNED")),
    ("onhold", ("ONHOLD",)),
    ("blocked", ("BLOCKED",)),
)
DEFAULT_STATUSES = ("SUCCESS",)
DENY_MARKER = "denied"

ITEM_EVENTS = {
    "SUCCESS": ("PAYMENT.PAYOUTS-ITEM.SUCCEEDED", "Payout item succeeded"),
    "UNCLAIMED": ("PAYMENT.PAYOUTS-ITEM.UNCLAIMED", "Payout item is unclaimed"),
    "FAILED": ("PAYMENT.PAYOUTS-ITEM.FAILED", "Payout item failed"),
    "RETURNED": ("PAYMENT.PAYOUTS-ITEM.RETURNED", "Payout item was returned"),
    "BLOCKED": ("PAYMENT.PAYOUTS-ITEM.BLOCKED", "Payout item was blocked"),
    "ONHOLD": ("PAYMENT.PAYOUTS-ITEM.HELD", "Payout item is on hold"),
    "REFUNDED": ("PAYMENT.PAYOUTS-ITEM.REFUNDED", "Payout item was refunded"),
}
BATCH_EVENTS = {
    "PROCESSING": ("PAYMENT.PAYOUTSBATCH.PROCESSING", "Payouts batch is being processed"),
    "SUCCESS": ("PAYMENT.PAYOUTSBATCH.SUCCESS", "Payouts batch completed successfully"),
    "DENIED": ("PAYMENT.PAYOUTSBATCH.DENIED", "Payouts batch was denied"),
}
ITEM_ERRORS = {  # the `errors` object PayPal attaches to items that did not pay out
    "UNCLAIMED": ("RECEIVER_UNREGISTERED", "Receiver is unregistered."),
    "FAILED": ("RECEIVER_ACCOUNT_LOCKED", "Receiver's account is locked or inactive."),
    "BLOCKED": ("REGULATORY_BLOCKED", "This transaction is blocked by regulatory requirements."),
}

_STATES: weakref.WeakKeyDictionary[Sandbox, PayPalSandbox] = weakref.WeakKeyDictionary()
_ID_ALPHABET = string.ascii_uppercase + string.digits


def paypal_sandbox(sandbox: Sandbox) -> PayPalSandbox:
    """The PayPal state installed on this sandbox (for tests and the demo)."""
    return _STATES[sandbox]


def install(sandbox: Sandbox) -> None:
    paypal = PayPalSandbox(sandbox)
    _STATES[sandbox] = paypal
    sandbox.resetters.append(paypal.reset)
    sandbox.key_forgetters["paypal"] = paypal.forget_idempotency_keys
    sandbox.tickers.append(paypal.tick)
    routes: list[tuple[str, str, str, Callable[[SandboxRequest, re.Match[str]], SandboxResponse]]] = [
        ("POST", "/paypal/v1/oauth2/token", "paypal.oauth2.token", paypal.issue_token),
        ("POST", "/paypal/v1/payments/payouts", "paypal.payouts.create", paypal.create_batch),
        ("GET", "/paypal/v1/payments/payouts/(?P<batch_id>[^/]+)", "paypal.payouts.get", paypal.show_batch),
        ("GET", "/paypal/v1/payments/payouts-item/(?P<item_id>[^/]+)", "paypal.payouts_item.get", paypal.show_item),
        (
            "POST",
            "/paypal/v1/payments/payouts-item/(?P<item_id>[^/]+)/cancel",
            "paypal.payouts_item.cancel",
            paypal.cancel_item,
        ),
        (
            "POST",
            "/paypal/v1/notifications/verify-webhook-signature",
            "paypal.webhooks.verify_signature",
            paypal.verify_signature,
        ),
    ]
    for method, pattern, operation, handler in routes:
        sandbox.route(method, pattern, operation)(handler)


# --- small helpers
def _new_id(length: int = 13) -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def _now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _canonical(event: Any) -> bytes:
    """One encoding of an event, so a signature survives the receiver re-serialising it."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# --- state
@dataclass
class PayoutItem:
    payout_item_id: str
    payout_batch_id: str
    sender_batch_id: str
    recipient_type: str
    receiver: str
    amount: Money
    sender_item_id: str
    note: str
    fee_minor: int
    planned: list[str]  # statuses still to come, one per tick
    status: str = "PENDING"
    transaction_id: str = ""
    time_processed: str = ""
    canceled: bool = False


@dataclass
class PayoutBatch:
    payout_batch_id: str
    sender_batch_header: dict[str, str]
    currency: str
    item_ids: list[str]
    created_at: datetime
    time_created: str
    deny: bool = False
    status: str = "PENDING"
    time_completed: str = ""


@dataclass
class PayPalSandbox:
    sandbox: Sandbox
    receiver_rules: list[tuple[str, tuple[str, ...]]] = field(default_factory=lambda: list(DEFAULT_RECEIVER_RULES))
    token_ttl_seconds: int = TOKEN_TTL_SECONDS
    fee_basis_points: int = 0  # item fee = amount * bp // 10000, in minor units
    credentials: tuple[str, str] | None = None  # (client id, secret) PayPal holds; None: PAYPAL_CLIENT_ID/SECRET
    tokens: dict[str, float] = field(default_factory=dict)  # access token -> monotonic expiry
    batches: dict[str, PayoutBatch] = field(default_factory=dict)
    items: dict[str, PayoutItem] = field(default_factory=dict)
    by_sender_batch_id: dict[str, str] = field(default_factory=dict)
    sent_events: list[dict[str, Any]] = field(default_factory=list)  # every event signed, delivered or not
    _signing_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def forget_idempotency_keys(self) -> None:
        with self.sandbox.lock:
            self.by_sender_batch_id.clear()

    def reset(self) -> None:
        with self.sandbox.lock:
            self.receiver_rules = list(DEFAULT_RECEIVER_RULES)
            self.token_ttl_seconds = TOKEN_TTL_SECONDS
            self.fee_basis_points = 0
            self.credentials = None
            for table in (self.tokens, self.batches, self.items, self.by_sender_batch_id):
                table.clear()
            self.sent_events.clear()

    @property
    def base(self) -> str:
        return f"{self.sandbox.url}/paypal"

    @property
    def cert_url(self) -> str:
        return f"{self.base}/v1/notifications/certs/CERT-360caa42-fca2a594-sandbox"

    # --- OAuth2
    def issue_token(self, request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
        if not self._client_credentials_valid(request.header("authorization")):
            return SandboxResponse(
                401, {"error": "invalid_client", "error_description": "Client Authentication failed"}
            )
        if request.form().get("grant_type") != "client_credentials":
            return SandboxResponse(
                400, {"error": "unsupported_grant_type", "error_description": "Grant Type is NULL or unsupported"}
            )
        token = f"A21AA{secrets.token_urlsafe(48)}"
        with self.sandbox.lock:
            self.tokens[token] = time.monotonic() + self.token_ttl_seconds
            expires_in = self.token_ttl_seconds
        body = {
            "scope": PAYOUTS_SCOPE,
            "access_token": token,
            "token_type": "Bearer",
            "app_id": "APP-80W284485P519543T",
            "expires_in": expires_in,
            "nonce": f"{_now_text()}{secrets.token_urlsafe(16)}",
        }
        return SandboxResponse(200, body)

    def _client_credentials_valid(self, authorization: str) -> bool:
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            client_id, _, secret = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        expected_id, expected_secret = self.credentials or (
            str(settings.PAYPAL_CLIENT_ID),
            str(settings.PAYPAL_CLIENT_SECRET),
        )
        id_ok = hmac.compare_digest(client_id.encode(), expected_id.encode())
        return id_ok & hmac.compare_digest(secret.encode(), expected_secret.encode())

    def _unauthorized(self, request: SandboxRequest) -> SandboxResponse | None:
        scheme, _, token = request.header("authorization").partition(" ")
        with self.sandbox.lock:
            expiry = self.tokens.get(token) if scheme.lower() == "bearer" else None
        if expiry is None or expiry <= time.monotonic():
            return SandboxResponse(
                401, {"error": "invalid_token", "error_description": "Access Token not found in cache"}
            )
        return None

    # --- create
    def create_batch(self, request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        try:
            body = request.json()
        except ValueError:
            return _error(400, "MALFORMED_REQUEST", "Incoming JSON request does not map to API request")
        problems = _batch_problems(body)
        if problems:
            return _invalid(problems)
        header = body["sender_batch_header"]
        with self.sandbox.lock:
            existing = self._batch_for_sender_batch_id(str(header.get("sender_batch_id", "")))
            if existing is not None:
                return self._duplicate(existing)
            batch = self._store_batch(body)
            return SandboxResponse(201, self._created(batch))

    def _batch_for_sender_batch_id(self, sender_batch_id: str) -> PayoutBatch | None:
        batch = self.batches.get(self.by_sender_batch_id.get(sender_batch_id, "")) if sender_batch_id else None
        if batch is None or datetime.now(UTC) - batch.created_at >= DUPLICATE_WINDOW:
            return None
        return batch

    def _duplicate(self, batch: PayoutBatch) -> SandboxResponse:
        sender_batch_id = batch.sender_batch_header["sender_batch_id"]
        detail = {
            "field": "SENDER_BATCH_ID",
            "value": sender_batch_id,
            "location": "body",
            "issue": "SENDER_BATCH_ID_ALREADY_USED",
            "description": f"Batch with sender_batch_id {sender_batch_id} already exists",
        }
        link = {"href": self._batch_href(batch.payout_batch_id), "rel": "self", "method": "GET"}
        return _error(400, "USER_BUSINESS_ERROR", "User business error.", details=[detail], links=[link])

    def _store_batch(self, body: dict[str, Any]) -> PayoutBatch:
        header = body["sender_batch_header"]
        kept_header = {
            key: str(header[key]) for key in ("sender_batch_id", "email_subject", "email_message") if key in header
        }
        batch_id = _new_id()
        sender_batch_id = kept_header.get("sender_batch_id", "")
        items = [self._new_item(raw, header, batch_id, sender_batch_id) for raw in body["items"]]
        batch = PayoutBatch(
            payout_batch_id=batch_id,
            sender_batch_header=kept_header,
            currency=items[0].amount.currency,
            item_ids=[item.payout_item_id for item in items],
            created_at=datetime.now(UTC),
            time_created=_now_text(),
            deny=any(DENY_MARKER in item.receiver.lower() for item in items),
        )
        self.batches[batch_id] = batch
        self.items.update((item.payout_item_id, item) for item in items)
        if sender_batch_id:
            self.by_sender_batch_id[sender_batch_id] = batch_id
        return batch

    def _new_item(self, raw: dict[str, Any], header: dict[str, Any], batch_id: str, sender_batch_id: str) -> PayoutItem:
        amount = Money.parse(raw["amount"]["value"], raw["amount"]["currency"])
        return PayoutItem(
            payout_item_id=_new_id(),
            payout_batch_id=batch_id,
            sender_batch_id=sender_batch_id,
            recipient_type=raw.get("recipient_type") or header["recipient_type"],
            receiver=raw["receiver"],
            amount=amount,
            sender_item_id=raw.get("sender_item_id", ""),
            note=raw.get("note", ""),
            fee_minor=amount.minor * self.fee_basis_points // 10_000,
            planned=list(self._planned_statuses(raw["receiver"])),
        )

    def _planned_statuses(self, receiver: str) -> tuple[str, ...]:
        lowered = receiver.lower()
        for marker, statuses in self.receiver_rules:
            if marker in lowered:
                return statuses
        return DEFAULT_STATUSES

    def _created(self, batch: PayoutBatch) -> dict[str, Any]:
        return {
            "batch_header": {
                "payout_batch_id": batch.payout_batch_id,
                "batch_status": batch.status,
                "sender_batch_header": batch.sender_batch_header,
            },
            "links": [{"href": self._batch_href(batch.payout_batch_id), "rel": "self", "method": "GET"}],
        }

    # --- reads
    def show_batch(self, request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        paging = _paging(request.query)
        if isinstance(paging, SandboxResponse):
            return paging
        page, page_size, total_required = paging
        with self.sandbox.lock:
            batch = self.batches.get(match["batch_id"])
            if batch is None:
                return _not_found()
            return SandboxResponse(200, self._batch_page(batch, page, page_size, total_required))

    def _batch_page(self, batch: PayoutBatch, page: int, page_size: int, total_required: bool) -> dict[str, Any]:
        items = [self.items[item_id] for item_id in batch.item_ids]
        total_pages = -(-len(items) // page_size)
        shown = items[(page - 1) * page_size : page * page_size]
        body: dict[str, Any] = {
            "batch_header": self._batch_header(batch, items),
            "items": [self._item_body(item, in_batch=True) for item in shown],
            "links": self._page_links(batch.payout_batch_id, page, page_size, total_pages),
        }
        if total_required:
            body |= {"total_items": len(items), "total_pages": total_pages}
        return body

    def _batch_header(self, batch: PayoutBatch, items: list[PayoutItem]) -> dict[str, Any]:
        amount = sum((item.amount for item in items), Money.zero(batch.currency))
        fees = Money(sum(item.fee_minor for item in items), batch.currency)
        header: dict[str, Any] = {
            "payout_batch_id": batch.payout_batch_id,
            "batch_status": batch.status,
            "time_created": batch.time_created,
            "sender_batch_header": batch.sender_batch_header,
            "funding_source": "BALANCE",
            "amount": {"currency": batch.currency, "value": amount.decimal_string()},
            "fees": {"currency": batch.currency, "value": fees.decimal_string()},
        }
        if batch.time_completed:
            header["time_completed"] = batch.time_completed
        return header

    def _page_links(self, batch_id: str, page: int, page_size: int, total_pages: int) -> list[dict[str, str]]:
        def link(rel: str, number: int) -> dict[str, str]:
            query = f"?page={number}&page_size={page_size}&total_required=true"
            return {"href": f"{self._batch_href(batch_id)}{query}", "rel": rel, "method": "GET"}

        links = [link("self", page)]
        if page < total_pages:
            links.append(link("next", page + 1))
        if page > 1:
            links.append(link("previous", page - 1))
        return links

    def show_item(self, request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        with self.sandbox.lock:
            item = self.items.get(match["item_id"])
            return _not_found() if item is None else SandboxResponse(200, self._item_body(item))

    def _item_body(self, item: PayoutItem, *, in_batch: bool = False) -> dict[str, Any]:
        currency = item.amount.currency
        body: dict[str, Any] = {
            "payout_item_id": item.payout_item_id,
            "transaction_status": item.status,
            "payout_item_fee": {"currency": currency, "value": Money(item.fee_minor, currency).decimal_string()},
            "payout_batch_id": item.payout_batch_id,
            "payout_item": {
                "recipient_type": item.recipient_type,
                "amount": {"currency": currency, "value": item.amount.decimal_string()},
                "note": item.note,
                "receiver": item.receiver,
                "sender_item_id": item.sender_item_id,
                "recipient_wallet": "PAYPAL",
            },
            "links": [{"href": self._item_href(item.payout_item_id), "rel": "item", "method": "GET"}],
        }
        if not in_batch:
            body["sender_batch_id"] = item.sender_batch_id
        if item.transaction_id:
            body["transaction_id"] = item.transaction_id
        if item.time_processed:
            body["time_processed"] = item.time_processed
        if item.status in ITEM_ERRORS:
            name, message = ITEM_ERRORS[item.status]
            body["errors"] = {"name": name, "message": message, "debug_id": secrets.token_hex(7), "details": []}
        return body

    def _batch_href(self, batch_id: str) -> str:
        return f"{self.base}/v1/payments/payouts/{batch_id}"

    def _item_href(self, item_id: str) -> str:
        return f"{self.base}/v1/payments/payouts-item/{item_id}"

    # --- cancel
    def cancel_item(self, request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        with self.sandbox.lock:
            item = self.items.get(match["item_id"])
            if item is None:
                return _not_found()
            if item.canceled:
                return _error(400, "ITEM_ALREADY_CANCELLED", "Requested item is already cancelled.")
            if item.status != "UNCLAIMED":
                return _error(400, "ITEM_INCORRECT_STATUS", "You can only cancel items that are in UNCLAIMED state.")
            item.canceled = True
            self._set_item_status(item, "RETURNED", event_type="PAYMENT.PAYOUTS-ITEM.CANCELED")
            return SandboxResponse(200, self._item_body(item))

    # --- asynchronous processing
    def tick(self) -> None:
        with self.sandbox.lock:
            for batch in list(self.batches.values()):
                self._advance(batch)

    def _advance(self, batch: PayoutBatch) -> None:
        if batch.status == "PENDING":
            self._start(batch)
            return
        if batch.status in ("PROCESSING", "SUCCESS"):
            for item_id in batch.item_ids:
                item = self.items[item_id]
                if item.planned and not item.canceled:
                    self._set_item_status(item, item.planned.pop(0))
        if batch.status == "PROCESSING" and all(self.items[i].status != "PENDING" for i in batch.item_ids):
            self._set_batch_status(batch, "SUCCESS")

    def _start(self, batch: PayoutBatch) -> None:
        if not batch.deny:
            self._set_batch_status(batch, "PROCESSING")
            return
        self._set_batch_status(batch, "DENIED")
        for item_id in batch.item_ids:
            self.items[item_id].planned.clear()
            self._set_item_status(self.items[item_id], "FAILED")

    def _set_batch_status(self, batch: PayoutBatch, status: str) -> None:
        batch.status = status
        if status in ("SUCCESS", "DENIED"):
            batch.time_completed = _now_text()
        items = [self.items[item_id] for item_id in batch.item_ids]
        resource = {
            "batch_header": self._batch_header(batch, items),
            "links": self._page_links(batch.payout_batch_id, 1, 1000, 1),
        }
        event_type, summary = BATCH_EVENTS[status]
        self._send_event(event_type, "payouts", summary, resource)

    def _set_item_status(self, item: PayoutItem, status: str, *, event_type: str = "") -> None:
        item.status = status
        item.time_processed = _now_text()
        if not item.transaction_id and status not in ("FAILED", "BLOCKED"):
            item.transaction_id = _new_id(17)
        default_type, summary = ITEM_EVENTS[status]
        self._send_event(event_type or default_type, "payouts_item", summary, self._item_body(item))

    # --- webhooks
    def _send_event(self, event_type: str, resource_type: str, summary: str, resource: dict[str, Any]) -> None:
        event_id = f"WH-{_new_id(17)}-{_new_id(17)}"
        event = {
            "id": event_id,
            "event_version": "1.0",
            "create_time": _now_text(),
            "resource_type": resource_type,
            "event_type": event_type,
            "summary": summary,
            "resource": resource,
            "links": [
                {"href": f"{self.base}/v1/notifications/webhooks-events/{event_id}", "rel": "self", "method": "GET"},
                {
                    "href": f"{self.base}/v1/notifications/webhooks-events/{event_id}/resend",
                    "rel": "resend",
                    "method": "POST",
                },
            ],
        }
        self.sent_events.append(event)
        sign = lambda body: self._transmission_headers(json.loads(body))  # noqa: E731 - a new transmission each attempt
        self.sandbox.webhooks.send("paypal", json.dumps(event).encode(), sign=sign)

    def _transmission_headers(self, event: dict[str, Any]) -> dict[str, str]:
        transmission_id, transmission_time = str(uuid.uuid4()), _now_text()
        signature = self._signature(transmission_id, transmission_time, str(settings.PAYPAL_WEBHOOK_ID), event)
        return {
            "Content-Type": "application/json",
            "PAYPAL-TRANSMISSION-ID": transmission_id,
            "PAYPAL-TRANSMISSION-TIME": transmission_time,
            "PAYPAL-TRANSMISSION-SIG": signature,
            "PAYPAL-CERT-URL": self.cert_url,
            "PAYPAL-AUTH-ALGO": AUTH_ALGO,
            "PAYPAL-AUTH-VERSION": "v2",
        }

    def _signature(self, transmission_id: str, transmission_time: str, webhook_id: str, event: Any) -> str:
        message = f"{transmission_id}|{transmission_time}|{webhook_id}|{zlib.crc32(_canonical(event))}"
        # Hex, not base64: the spec's transmission_sig pattern refuses a leading "+" or "/".
        return hmac.new(self._signing_key, message.encode(), hashlib.sha256).hexdigest()

    def verify_signature(self, request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        try:
            body = request.json()
        except ValueError:
            return _error(400, "MALFORMED_REQUEST", "Incoming JSON request does not map to API request")
        missing = [name for name in _VERIFY_FIELDS if not isinstance(body, dict) or not body.get(name)]
        if missing:
            return _invalid([_detail(name, "MISSING_REQUIRED_PARAMETER") for name in missing])
        expected = self._signature(
            str(body["transmission_id"]), str(body["transmission_time"]), str(body["webhook_id"]), body["webhook_event"]
        )
        genuine = (
            body["auth_algo"] == AUTH_ALGO
            and body["cert_url"] == self.cert_url
            and hmac.compare_digest(expected, str(body["transmission_sig"]))
        )
        return SandboxResponse(200, {"verification_status": "SUCCESS" if genuine else "FAILURE"})
