"""What every step of an escrow deal shares: reading and locking a deal, refusals, the keys of its money
movements, and the errors a caller gets when Stripe refused a step (known not done).

Keys: every step of a deal has one base key, `escrow:{id}:{step}`; attempt n > 1 of a step (only after the
attempt before it was KNOWN declined) is `escrow:{id}:{step}:{n}` (providers.protocol.movement_key).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser

from core.errors import (
    AppError,
    Conflict,
    InvalidRequest,
    InvalidStateTransition,
    NotFound,
    PermissionDenied,
    ProviderUnavailable,
)
from core.locks import processing_lock
from core.money import Money, MoneyError, money_in_bounds
from escrow.models import EscrowDeal
from providers.base import Declined
from providers.models import MoneyMovement
from providers.protocol import movement_key, movement_latest

Status = EscrowDeal.Status
PROVIDER = "stripe"

# The protocol's operations for a deal (subject: the EscrowDeal id); registered by escrow.deals.operations.
HOLD, CAPTURE, VOID, REFUND, TRANSFER = (
    "escrow.hold",
    "escrow.capture",
    "escrow.void",
    "escrow.refund",
    "escrow.transfer",
)


class DealMakerCheckerViolation(PermissionDenied):
    code = "maker_checker"
    default_user_message = "The person who asked for this release (or a party to the deal) cannot approve it."
    default_action_required = "Ask another finance approver to approve the release."


def deal_get(*, deal_id: int, lock: bool = False) -> EscrowDeal:
    """The deal (with its seller account); `lock` takes the deal's row lock (only the deal's row)."""
    deals = EscrowDeal.objects.select_for_update(of=("self",)) if lock else EscrowDeal.objects.all()
    deal = deals.select_related("seller_account").filter(pk=deal_id).first()
    if deal is None:
        raise NotFound(f"escrow deal {deal_id} does not exist", details={"deal_id": deal_id})
    return deal


def refused(deal_pk: int, action: str) -> InvalidStateTransition:
    status = EscrowDeal.objects.filter(pk=deal_pk).values_list("status", flat=True).first()
    return InvalidStateTransition(
        f"escrow deal {deal_pk} is {status}; cannot {action}",
        user_message=f"This deal is {str(status).replace('_', ' ')}, so it cannot be {action}d now.",
        action_required="Reload the deal to see its current state; someone or something else acted on it first.",
        details={"deal_id": deal_pk, "status": status},
    )


@contextmanager
def deal_lock(deal_pk: int, holder: str, reason: str) -> Iterator[None]:
    """The deal's processing lock around a step and its first send: a concurrent actor gets 423."""
    with processing_lock(key=f"escrow-deal:{deal_pk}", holder=holder, reason=reason):
        yield


def holder(actor: AbstractBaseUser | None, job: str) -> str:
    return actor.get_username() if actor is not None else job


def is_party(actor: AbstractBaseUser, deal: EscrowDeal) -> bool:
    return actor.pk in (deal.buyer_id, deal.seller_account.user_id)


def snapshot(deal: EscrowDeal) -> dict[str, Any]:
    return {
        "amount_minor": deal.amount_minor,
        "currency": deal.currency,
        "commission_bps": deal.commission_bps,
        "commission_minor": deal.commission_minor,
        "seller_account": deal.seller_account.stripe_account_id,
        "hold_mode": deal.hold_mode,
        "deadline": deal.deadline.isoformat(),
        "timeout_policy": deal.timeout_policy,
    }


def next_attempt_key(deal_pk: int, operation: str) -> tuple[int, str]:
    """(attempt, key) of the next attempt of a step; called with the deal locked, by the one winner of its
    status move. A new attempt only follows a KNOWN decline: an open (or done) attempt is never replaced."""
    latest = movement_latest(operation=operation, subject_id=deal_pk)
    if latest is not None and latest.status != MoneyMovement.Status.DECLINED:
        raise Conflict(
            f"escrow deal {deal_pk}: {operation} {latest.key} is {latest.status}; no new attempt",
            user_message="Stripe's answer to the last attempt of this step is not known yet.",
            action_required="Wait for the money movement to be resolved (or use 'Sync now' on it).",
            details={"deal_id": deal_pk, "movement": latest.pk, "status": latest.status},
        )
    attempt = MoneyMovement.objects.filter(operation=operation, subject_id=deal_pk).count() + 1
    return attempt, movement_key(f"escrow:{deal_pk}:{operation.removeprefix('escrow.')}", attempt)


def declined_reason(step: str, result: Declined) -> str:
    """The deal's failure reason for a step Stripe refused (or that was never sent: `retryable`)."""
    verdict = "not sent (Stripe unavailable)" if result.retryable else "declined"
    return f"{step} {verdict}: {result.reason}"[:500]


def declined_error(deal: EscrowDeal, step: str, refused_to: str, retry: str) -> AppError:
    """What the caller is told when a step was known not done and the deal is held again."""
    unavailable = deal.failure_reason.startswith(f"{step} not sent")
    error_type = ProviderUnavailable if unavailable else Conflict
    return error_type(
        f"escrow deal {deal.pk}: {deal.failure_reason}",
        user_message=f"Stripe refused to {refused_to}; nothing moved and the deal is held again.",
        action_required=f"{retry}; if it keeps failing, check the payment in Stripe.",
        details={"deal_id": deal.pk, "status": deal.status},
    )


def invalid(message: str, field_name: str, action: str) -> InvalidRequest:
    return InvalidRequest(message, user_message=message, action_required=action, details={"field": field_name})


def money_of(*, amount_minor: object, currency: object) -> Money:
    """Money from API input, or InvalidRequest saying what is wrong."""
    try:
        return money_in_bounds(amount_minor, currency)
    except MoneyError as error:
        raise InvalidRequest(
            str(error),
            user_message=f"The amount is not valid: {error}.",
            action_required="Send the amount as integer minor units with an ISO 4217 currency such as USD.",
            details={"amount_minor": str(amount_minor), "currency": str(currency)},
        ) from error
