"""One refund component, shared by the payment orchestrator and purchases.

A refund is reserved on the locked parent (a payment, a purchase) before any provider call: the parent's
`reserved` total (succeeded plus in-flight refunds) is raised in the same transaction that creates the
refund row and records its money movement, so concurrent refunds can never exceed what was taken. The
outcome is recorded once, from the movement's hooks: a known decline gives the reservation back; a
success adds to the parent's succeeded total (where the parent keeps one). Unknown outcomes keep the
reservation: the money may have left; so does a refund the provider accepted and will settle later
(`waiting`: never success).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import models, transaction
from django.db.models import F
from django.utils import timezone

from core.errors import IdempotencyMismatch, InvalidRequest, NotFound
from core.money import Money
from providers.models import MoneyMovement
from providers.protocol.engine import movement_record


@dataclass(frozen=True)
class RefundBook:
    """How one kind of parent keeps its refunds (field names on the parent and refund models)."""

    parent_model: type[models.Model]
    refund_model: Any  # a model with StatusMachine: pending, waiting, unknown, succeeded, failed
    parent_field: str  # the refund's foreign key to its parent: "payment", "purchase"
    refundable_field: str  # what was taken: "amount_minor", "captured_minor"
    reserved_field: str  # succeeded plus in-flight refunds
    refunded_field: str | None  # succeeded refunds, where the parent keeps the total
    operation: str  # the protocol operation that sends a refund: "payment.refund", "purchase.refund"
    key: Callable[[Any], str]  # the refund's idempotency key, from the refund row
    provider_of: Callable[[Any], str] | None = None  # the parent's provider, where it varies (payments)

    OPEN = ("pending", "waiting", "unknown")  # "waiting": accepted by the provider, outcome to come


def refund_reserve(
    book: RefundBook,
    *,
    parent_pk: int,
    amount: Money | None,
    client_key: str,
    check_parent: Callable[[Any], None],
    fields: dict[str, Any] | None = None,
) -> tuple[Any, MoneyMovement | None]:
    """Reserve a refund (all that is left when `amount` is None) once per (parent, client key).

    Returns the refund and its new movement, or the existing refund and None for a repeated key.
    `check_parent(parent)` raises when the parent cannot be refunded now.
    """
    with transaction.atomic():
        parent = book.parent_model._default_manager.select_for_update().filter(pk=parent_pk).first()
        if parent is None:
            raise NotFound(f"{book.parent_field} {parent_pk} does not exist", details={book.parent_field: parent_pk})
        existing = book.refund_model._default_manager.filter(**{book.parent_field: parent, "client_key": client_key})
        refund = existing.first()
        if refund is not None:
            if amount is not None and (refund.amount_minor, parent.currency) != (amount.minor, amount.currency):
                raise IdempotencyMismatch(f"refund key {client_key!r} was used for another amount")
            return refund, None
        check_parent(parent)
        wanted = _refundable(book, parent, amount)
        book.parent_model._default_manager.filter(pk=parent.pk).update(
            **{book.reserved_field: F(book.reserved_field) + wanted, "updated_at": timezone.now()}
        )
        refund = book.refund_model._default_manager.create(
            **{book.parent_field: parent, "client_key": client_key, "amount_minor": wanted, **(fields or {})}
        )
        movement = movement_record(
            operation=book.operation,
            subject_id=refund.pk,
            key=book.key(refund),
            amount=Money(wanted, parent.currency),
            provider=book.provider_of(parent) if book.provider_of else "",
        )
    return refund, movement


def _refundable(book: RefundBook, parent: Any, amount: Money | None) -> int:
    remaining = getattr(parent, book.refundable_field) - getattr(parent, book.reserved_field)
    wanted = remaining if amount is None else amount.minor
    if (amount is not None and amount.currency != parent.currency) or not 0 < wanted <= remaining:
        currency = amount.currency if amount is not None else parent.currency
        raise InvalidRequest(
            f"refund of {wanted} {currency} exceeds the {remaining} {parent.currency} left to refund",
            user_message=f"The refund is more than what is left to refund on this {book.parent_field}.",
            action_required=f"Refund at most {Money(max(remaining, 0), parent.currency)}.",
            details={book.parent_field: parent.pk, "refundable_minor": max(remaining, 0), "currency": parent.currency},
        )
    return wanted


def refund_mark_unknown(book: RefundBook, *, refund_pk: int, reason: str) -> bool:
    """The outcome is not known: the reservation stays (the money may have left)."""
    return book.refund_model.status_move(refund_pk, "unknown", sources=["pending"], failure_reason=reason[:255])


def refund_mark_waiting(book: RefundBook, *, refund_pk: int, provider_reference: str) -> bool:
    """The provider accepted the refund and will answer later: never success; the reservation stays."""
    return book.refund_model.status_move(refund_pk, "waiting", provider_reference=provider_reference)


def refund_mark_declined(book: RefundBook, *, refund_pk: int, reason: str) -> bool:
    """Known not refunded: the row fails and its reservation goes back to the parent, once."""
    refund = book.refund_model._default_manager.get(pk=refund_pk)
    moved = book.refund_model.status_move(refund_pk, "failed", failure_reason=reason[:255])
    if moved:
        book.parent_model._default_manager.filter(pk=getattr(refund, f"{book.parent_field}_id")).update(
            **{book.reserved_field: F(book.reserved_field) - refund.amount_minor, "updated_at": timezone.now()}
        )
    return moved


def refund_mark_succeeded(book: RefundBook, *, refund_pk: int, provider_reference: str) -> bool:
    """The provider refunded it: the row succeeds, and the parent's succeeded total grows, once."""
    refund = book.refund_model._default_manager.get(pk=refund_pk)
    moved = book.refund_model.status_move(
        refund_pk, "succeeded", provider_reference=provider_reference, failure_reason=""
    )
    if moved and book.refunded_field:
        book.parent_model._default_manager.filter(pk=getattr(refund, f"{book.parent_field}_id")).update(
            **{book.refunded_field: F(book.refunded_field) + refund.amount_minor, "updated_at": timezone.now()}
        )
    return moved
