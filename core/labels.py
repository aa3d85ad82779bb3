"""Human labels for every state staff see, and what to do about the ones that need a person: one table, one place.

`status_label(row)` turns a row's status into words a finance person reads ("Waiting for approval", "Sent to
PayPal", "Unclaimed by recipient", "Outcome unknown, checking again at 14:05 UTC"); `state_help(row)` gives the
`user_message` and `action_required` of a state that needs a person (a failure, an unclaimed payout, an
outcome nobody could find out), with the reason the row recorded. The dashboard and the changelists
(`status_column`, `help_column` in a ModelAdmin's list_display) use nothing else.

Rows are looked up by their model's "app_label.modelname", so core stays independent of the apps (states
without a status field: "core.processinglock", "providers.health", "providers.breaker"). A label may
name the row's provider ({provider}) and, for open provider calls, when the sweeper looks again ({checking},
from the row's `next_sync_at`) or when a declined transfer is retried ({retry}, from `next_transfer_at`).
A status missing from the table is shown as itself, capitalised: nothing is ever hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.utils import timezone
from django.utils.dateformat import format as date_format
from django.utils.html import format_html

PROVIDER_NAMES = {"stripe": "Stripe", "paypal": "PayPal", "maya": "Maya", "gcash": "GCash"}

UNKNOWN = "Outcome unknown, {checking}"

LABELS: dict[str, dict[str, str]] = {
    "providers.payment": {
        "pending": "Sending to {provider}",
        "requires_action": "Waiting for the customer at {provider}",
        "succeeded": "Paid",
        "failed": "Not paid",
        "unknown": UNKNOWN,
    },
    "providers.paymentattempt": {
        "pending": "Sending to {provider}",
        "requires_action": "Waiting for the customer at {provider}",
        "succeeded": "Accepted by {provider}",
        "declined": "Declined by {provider}",
        "unknown": UNKNOWN,
    },
    "providers.refund": {
        "pending": "Sending the refund to {provider}",
        "waiting": "Accepted by {provider}, waiting for the refund",
        "succeeded": "Refunded",
        "failed": "Refund refused",
        "unknown": UNKNOWN,
    },
    "providers.moneymovement": {
        "pending": "Sending to {provider}, {checking}",
        "waiting": "Sent to {provider}, {checking}",
        "unknown": UNKNOWN,
        "succeeded": "Done",
        "declined": "Declined by {provider}",
    },
    "payouts.payoutbatch": {
        "prepared": "Waiting for approval",
        "approved": "Approved, ready to send",
        "submitting": "Sending to {provider}",
        "submitted": "Sent to {provider}",
        "completed": "Completed",
        "denied": "Refused by {provider}",
        "canceled": "Canceled",
    },
    "payouts.payoutitem": {
        "NEW": "Preparing",
        "PENDING": "Sent to {provider}",
        "UNCLAIMED": "Unclaimed by recipient",
        "ONHOLD": "On hold at {provider}",
        "SUCCESS": "Paid",
        "FAILED": "Failed",
        "RETURNED": "Returned to us",
        "BLOCKED": "Blocked by {provider}",
        "REFUNDED": "Refunded by the recipient",
        "REVERSED": "Reversed by {provider}",
        "DENIED": "Batch refused by {provider}",
        "CANCELED": "Canceled before sending",
    },
    "escrow.escrowdeal": {
        "created": "Placing the hold",
        "held": "Money held",
        "awaiting_approval": "Waiting for approval",
        "releasing": "Releasing to the seller",
        "released": "Released, paying the seller",
        "transferred": "Paid to the seller",
        "transfer_failed": "Transfer refused, {retry}",
        "refunding": "Refunding the buyer",
        "refunded": "Refunded to the buyer",
        "expired": "Card authorization lapsed",
        "failed": "Hold declined",
        "reversed": "Transfer reversed",
    },
    "escrow.purchase": {
        "authorizing": "Authorizing the card",
        "authorize_unknown": "Authorization outcome unknown, being checked",
        "declined": "Card declined",
        "reserved": "Card hold placed, waiting for delivery",
        "capturing": "Charging the card",
        "capture_unknown": "Charge outcome unknown, being checked",
        "captured": "Charged",
        "refunded": "Refunded",
        "voiding": "Releasing the card hold",
        "void_unknown": "Hold release outcome unknown, being checked",
        "voided": "Card hold released",
    },
    "core.processinglock": {"held": "Held", "stale": "Stale: past its expiry, not given back"},
    "providers.health": {"HEALTHY": "Healthy", "DEGRADED": "Degraded", "UNHEALTHY": "Down: calls refused"},
    "providers.breaker": {
        "closed": "Circuit closed: calls flow",
        "half_open": "Circuit half-open: trial calls",
        "open": "Circuit open: calls refused",
        "unknown": "Circuit state unknown",
    },
    "core.alert": {"open": "Open", "acknowledged": "Acknowledged", "resolved": "Resolved"},
    "monitoring.reconciliationissue": {"open": "Open", "resolved": "Resolved by staff", "fixed": "Gone on a rerun"},
}
LABELS["escrow.purchaserefund"] = LABELS["providers.refund"]  # the one refund status table

OPERATION_LABELS = {
    "payment.start": "Payment",
    "payment.charge": "Card charge",
    "payment.refund": "Payment refund",
    "payout.paypal_batch": "PayPal payout batch",
    "payout.stripe_transfer": "Payout transfer (Stripe)",
    "payout.cancel_unclaimed": "Cancel of an unclaimed payout",
    "escrow.hold": "Escrow hold",
    "escrow.capture": "Escrow capture",
    "escrow.void": "Escrow hold release",
    "escrow.refund": "Escrow refund",
    "escrow.transfer": "Escrow transfer to the seller",
    "purchase.authorize": "Purchase authorization",
    "purchase.capture": "Purchase charge",
    "purchase.void": "Purchase hold release",
    "purchase.refund": "Purchase refund",
}

RETRY_FAILED = "then run 'Retry the failed items' on the batch: the winner is paid in a new batch"
SYNC_UNKNOWN = "It is checked again on schedule; 'Sync now' on its money movement asks the provider at once."

# (model, status) -> (user_message, action_required); {reason} is what the row recorded, {provider} its provider.
HELP: dict[str, dict[str, tuple[str, str]]] = {
    "providers.payment": {
        "failed": ("The payment was not taken: {reason}", "Nothing was charged. The customer may pay again, "
                   "with another method if the card was declined."),
        "unknown": ("{provider} may or may not have taken this payment.", SYNC_UNKNOWN),
    },
    "providers.refund": {
        "failed": ("{provider} refused the refund: {reason}", "Nothing was refunded and the amount can be refunded "
                   "again. Check the reason, then refund again."),
        "unknown": ("{provider} may or may not have made this refund.", SYNC_UNKNOWN),
    },
    "providers.moneymovement": {
        "declined": ("{provider} did not do it: {reason}", "Nothing moved at {provider}; the deal, purchase, payout "
                     "or payment it belongs to shows what happens next."),
        "unknown": ("{provider} may or may not have moved this money: {reason}", SYNC_UNKNOWN),
        "escalated": ("Every scheduled check ran out without finding what {provider} did: {reason}", "Look it up "
                      "at {provider} by our key and settle it by hand; then use 'Sync now' on the money movement."),
    },
    "payouts.payoutbatch": {
        "denied": ("{provider} refused the whole batch: {reason}", "Nothing was paid and every reservation was "
                   "released. Fix the cause, then run 'Retry the failed items' on the batch."),
    },
    "payouts.payoutitem": {
        "FAILED": ("{provider} could not pay this winner: {reason}",
                   f"Check the recipient's details with the winner, {RETRY_FAILED}."),
        "BLOCKED": ("{provider} blocked this payout: {reason}",
                    f"Ask {{provider}} why it was blocked; once cleared, {RETRY_FAILED}."),
        "RETURNED": ("The payout came back unpaid: {reason}",
                     f"Confirm the recipient's address with the winner, {RETRY_FAILED}."),
        "DENIED": ("{provider} refused the batch this payout was in: {reason}", f"Fix the cause, {RETRY_FAILED}."),
        "CANCELED": ("The batch was canceled before it was sent: {reason}", f"If the winner is still owed, "
                     f"{RETRY_FAILED}."),
        "UNCLAIMED": ("The recipient has not claimed the money yet (no {provider} account for the address).",
                      "Remind the winner to claim it. After {unclaimed_days} days, cancel it ('Cancel the selected "
                      "unclaimed payouts') and the money comes back."),
        "REFUNDED": ("The winner was paid, then the money came back: {reason}", "Find out why at {provider} and "
                     "decide what the winner is owed; the ledger already reversed the payment."),
        "REVERSED": ("The winner was paid, then {provider} took the money back: {reason}", "Find out why at "
                     "{provider} and decide what the winner is owed; the ledger already reversed the payment."),
    },
    "escrow.escrowdeal": {
        "transfer_failed": ("Stripe refused the transfer to the seller: {reason}", "It is tried again by itself "
                            "({retry}); after the last attempt, fix the seller's connected account and use 'Retry "
                            "transfer now'."),
        "failed": ("The buyer's card hold was declined: {reason}", "No money moved. The buyer may open the deal again "
                   "with another card."),
        "expired": ("The card authorization lapsed before capture: {reason}", "No money moved. Ask the buyer to pay "
                    "again if the deal should go ahead."),
        "reversed": ("The transfer was taken back from the seller: {reason}", "The seller is owed the amount again; "
                     "find out why at Stripe before paying them."),
    },
    "escrow.purchase": {
        "declined": ("The card was declined: {reason}", "No money moved. The customer may try again with another "
                     "card."),
        "authorize_unknown": ("Stripe may or may not have authorized the card: {reason}", SYNC_UNKNOWN),
        "capture_unknown": ("Stripe may or may not have charged the card: {reason}", SYNC_UNKNOWN),
        "void_unknown": ("Stripe may or may not have released the card hold: {reason}", SYNC_UNKNOWN),
    },
}  # fmt: skip
HELP["escrow.purchaserefund"] = HELP["providers.refund"]

# Where a row's provider is when it has no `provider` field of its own.
PROVIDER_OF = {
    "payouts.payoutitem": ("batch", "provider"),
    "providers.refund": ("payment", "provider"),
    "escrow.purchaserefund": ("purchase", "provider"),
}
REASON_FIELDS = ("failure_reason", "error", "reason")
OPEN_MOVEMENT = ("pending", "waiting", "unknown")


@dataclass(frozen=True)
class StateHelp:
    user_message: str
    action_required: str

    def __str__(self) -> str:
        return f"{self.user_message} {self.action_required}"


def provider_name(code: str) -> str:
    return PROVIDER_NAMES.get(code, code.capitalize() if code else "the provider")


def operation_label(name: str) -> str:
    return OPERATION_LABELS.get(name, name.replace("_", " ").replace(".", ": "))


def model_key(row: Any) -> str:
    return row._meta.label_lower


def status_label(
    row: Any, *, status: str | None = None, provider: str | None = None, now: datetime | None = None
) -> str:
    """The row's state in words; `status` and `provider` override the row's (for rows the caller computed)."""
    return label_of(model_key(row), row.status if status is None else status, row=row, provider=provider, now=now)


def label_of(
    model: str, status: str, *, row: Any = None, provider: str | None = None, now: datetime | None = None
) -> str:
    """The label of `status` of `model` ("app_label.modelname"), for a row or a status read without one."""
    template = LABELS.get(model, {}).get(status)
    if template is None:
        return str(status).replace("_", " ").capitalize()
    return template.format_map(_values(row, model, provider, now))


def state_help(row: Any, *, status: str | None = None, provider: str | None = None) -> StateHelp | None:
    """What the state means for a person and what to do, for a state that needs one; None otherwise."""
    key = model_key(row)
    status = row.status if status is None else status
    found = HELP.get(key, {}).get(status)
    if key == "providers.moneymovement" and status in OPEN_MOVEMENT and getattr(row, "escalated_at", None):
        found = HELP[key]["escalated"]  # the sync schedule ran out: a person looks it up
    if found is None:
        return None
    values = _values(row, key, provider, None)
    user_message, action_required = (text.format_map(values) for text in found)
    return StateHelp(_sentence(user_message.removesuffix(": ")), action_required)


def when(moment: datetime, *, now: datetime | None = None) -> str:
    """A time staff read at a glance: "14:05 UTC" today, "3 Jan 14:05 UTC" on another day."""
    local, today = timezone.localtime(moment), timezone.localtime(now or timezone.now()).date()
    return date_format(local, "H:i T" if local.date() == today else "j M H:i T")


def _values(row: Any, key: str, provider: str | None, now: datetime | None) -> dict[str, str]:
    reason = next((str(getattr(row, name)) for name in REASON_FIELDS if getattr(row, name, "")), "")
    return {
        "provider": provider_name(provider if provider is not None else _provider(row, key)),
        "checking": _checking(row, now),
        "retry": _retry(row, now),
        "reason": reason,
        "unclaimed_days": str(getattr(settings, "PAYOUT_UNCLAIMED_CANCEL_AFTER_DAYS", 25)),
    }


def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else f"{text}."


def _provider(row: Any, key: str) -> str:
    if key in PROVIDER_OF:
        parent, field = PROVIDER_OF[key]
        return str(getattr(getattr(row, parent, None), field, "") or "")
    if key == "escrow.escrowdeal":
        return "stripe"
    return str(getattr(row, "provider", "") or "")


def _checking(row: Any, now: datetime | None) -> str:
    """When the protocol's sweeper looks at an open provider call again (its row's next_sync_at)."""
    next_sync = getattr(row, "next_sync_at", None)
    if next_sync is None:
        return "checks ran out, a person must look it up" if getattr(row, "escalated_at", None) else "being checked"
    if next_sync <= (now or timezone.now()):
        return "checking again now"
    return f"checking again at {when(next_sync, now=now)}"


def _retry(row: Any, now: datetime | None) -> str:
    retry_at = getattr(row, "next_transfer_at", None)
    if retry_at is None:
        return "no retry left, needs a person"
    return "retrying now" if retry_at <= (now or timezone.now()) else f"retrying at {when(retry_at, now=now)}"


# --- changelist columns: list_display = (..., status_column, help_column, ...) ----------------------


@admin.display(description="Status", ordering="status")
def status_column(row: Any) -> str:
    return status_label(row)


@admin.display(description="What to do")
def help_column(row: Any) -> str:
    found = state_help(row)
    if found is None:
        return ""
    return format_html('<span class="state-help" title="{}">{}</span> <strong>{}</strong>', row.status,
                       found.user_message, found.action_required)  # fmt: skip
