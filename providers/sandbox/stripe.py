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

This module holds the endpoints (`StripeApi`) and the entry points; the state and values, the parameters and
search, and the object shapes are in `stripe_state`, `stripe_params` and `stripe_objects`.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, NoReturn
from urllib.parse import parse_qsl

from django.conf import settings

from providers.sandbox.server import Handler, Sandbox, SandboxRequest, SandboxResponse
from providers.sandbox.stripe_objects import (
    CARD_FEES,  # noqa: F401  (tests change the fees through this module)
    _account,
    _balance_matches,
    _balance_transaction,
    _charge,
    _payment_intent,
    _prepend,
    _refund,
    _reversal,
    _transfer,
    balance_transaction_add,  # noqa: F401  (a test hook)
    balance_transaction_set_created,  # noqa: F401  (a test hook)
    card_fee,
)
from providers.sandbox.stripe_params import (
    _SEARCH_PAGE_PREFIX,
    _allow,
    _boolean,
    _choice,
    _currency,
    _integer,
    _limit,
    _list_page,
    _metadata,
    _query,
    _required,
    _search_page,
    parse_search_query,
)
from providers.sandbox.stripe_state import (
    TEST_PAYMENT_METHODS,
    Call,
    IdempotencyRecord,
    Obj,
    Refusal,
    SandboxCard,
    StripeState,
    _now,
    new_id,
    state_of,  # noqa: F401  (tests reach the state through this module)
)

API_VERSION = "2026-10-28.endive"  # when the request names none
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
_SECRET_KEY = re.compile(r"^(sk|rk)_(test|live)_\w+$")

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
