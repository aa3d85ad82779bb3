"""Paying a cycle's winners: prepare, approve, execute, track, retry. Every write is here.

Invariants kept (see also payouts/models.py):
- prepare is all-or-nothing: every selection is validated first; batches,
  items and the ledger holds reserving their money commit together;
- `sender_batch_id = cycle-{cycle}-{checksum[:16]}`, the checksum being the
  SHA-256 of the batch's canonical item list: the same content always gets
  the same id (prepare is idempotent), other content a new one;
- execute records its intent (`submitting`, committed) before the one
  provider call, keyed by `sender_batch_id` (PayPal) or per-item keys
  (Stripe); an unknown outcome is resolved by a sync with the same id,
  never by sending under a new one;
- item statuses only move forward; SUCCESS posts the item's hold, an unpaid
  end voids it, money taken back after success is reversed in the ledger;
- a cycle is prepared or retried under its processing lock; maker-checker
  applies above PAYOUT_APPROVAL_THRESHOLD_MINOR.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import structlog
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from core.errors import AppError, Conflict, InvalidRequest, InvalidStateTransition, NotFound, PermissionDenied
from core.locks import processing_lock
from core.money import Money, MoneyError, validate_currency
from core.permissions import require_permission
from core.services import audit_record
from ledger.models import Hold
from ledger.services import (
    HoldRequest,
    account_create,
    credit,
    debit,
    hold_post,
    hold_void,
    holds_create_many,
    platform_accounts,
    transaction_post,
)
from ledger.services import transaction_reverse as ledger_reverse
from payouts.models import LegacyPayout, PayoutBatch, PayoutCycle, PayoutItem, RecipientType, WinnerSelection
from providers.accounts import provider_accounts
from providers.base import Declined, Pending, ProviderResult, Succeeded, Unknown
from providers.paypal.client import MAX_BATCH_ITEMS, PayoutItemRequest, PayPalClient
from providers.stripe.client import StripeProviderClient

log = structlog.get_logger(__name__)

SYNC_SCHEDULE = (timedelta(minutes=5), timedelta(hours=1), timedelta(days=1))
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE = re.compile(r"^\+?[0-9]{7,15}$")
_PAYPAL_ID = re.compile(r"^[A-Z0-9]{13}$")
_STRIPE_ACCOUNT = re.compile(r"^acct_[A-Za-z0-9]+$")
_RECIPIENT_FORMATS = {
    RecipientType.EMAIL: _EMAIL,
    RecipientType.PHONE: _PHONE,
    RecipientType.PAYPAL_ID: _PAYPAL_ID,
    RecipientType.STRIPE_ACCOUNT: _STRIPE_ACCOUNT,
}


class MakerCheckerViolation(PermissionDenied):
    code = "maker_checker"
    default_user_message = "The person who prepared this batch cannot also approve it."
    default_action_required = "Ask another finance approver to approve the batch."


# --- identifiers ----------------------------------------------------------------------


def sender_item_id(selection: WinnerSelection) -> str:
    return f"winner-{selection.pk}-{selection.user_id}"


def batch_checksum(selections: Sequence[WinnerSelection], retry_of: int | None = None) -> str:
    """SHA-256 of the canonical item list (sorted; minor units, currency, recipient)."""
    items = sorted([sender_item_id(s), s.amount_minor, s.currency, s.recipient_type, s.recipient] for s in selections)
    canonical = json.dumps({"items": items, "retry_of": retry_of}, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def sender_batch_id(cycle_id: int, checksum: str) -> str:
    return f"cycle-{cycle_id}-{checksum[:16]}"


# --- ledger accounts ----------------------------------------------------------------------


def winnings_payable(currency: str) -> str:
    code = f"payouts:winnings-payable:{currency}"
    account_create(code=code, name=f"Winnings payable ({currency})", type="liability", currency=currency)
    return code


def provider_clearing(provider: str, currency: str) -> str:
    clearing = {"clearing": provider_accounts(provider, currency)["clearing"]}
    return platform_accounts(currency=currency, accounts=clearing)["clearing"]


def winnings_fund(*, amount: Money, reference: str) -> None:
    """Set money aside for winners: prize expense now, owed to winners until paid."""
    expense = f"platform:prize-expense:{amount.currency}"
    account_create(code=expense, name=f"Prize expense ({amount.currency})", type="expense", currency=amount.currency,
                   allow_negative=True)  # fmt: skip
    transaction_post(
        idempotency_key=f"winnings-fund:{reference}",
        kind="winnings_fund",
        legs=[debit(expense, amount), credit(winnings_payable(amount.currency), amount)],
        description=f"Prize pool {reference}",
    )


# --- prepare ------------------------------------------------------------------------------


def selection_problems(selection: WinnerSelection) -> list[str]:
    found = []
    try:
        validate_currency(selection.currency)
    except MoneyError as error:
        found.append(str(error))
    pattern = _RECIPIENT_FORMATS.get(selection.recipient_type)
    if pattern is None or not pattern.match(selection.recipient or ""):
        found.append(f"{selection.recipient_type} recipient {selection.recipient!r} is not valid")
    if selection.amount_minor <= 0:
        found.append("amount must be positive")
    return found


def _legacy_under_review(selections: list[WinnerSelection]) -> dict[int, str]:
    """Winners a legacy PayPal payout may already have paid, still waiting for a person to review."""
    unresolved = LegacyPayout.objects.filter(
        status="SUCCESS",
        review_status__in=[
            LegacyPayout.ReviewStatus.PARSED,
            LegacyPayout.ReviewStatus.NEEDS_REVIEW,
            LegacyPayout.ReviewStatus.AMBIGUOUS,
        ],
    ).values_list("pk", "parsed_selection_id", "parsed_user_id", "parsed_cycle_id")
    by_selection, by_user = {}, {}
    for legacy_id, selection_id, user_id, cycle_id in unresolved:
        if selection_id is not None:
            by_selection[selection_id] = legacy_id
        elif user_id is not None:
            by_user[user_id, cycle_id] = legacy_id
    found = {}
    for s in selections:
        legacy_id = by_selection.get(s.pk) or by_user.get((s.user_id, s.cycle_id)) or by_user.get((s.user_id, None))
        if legacy_id is not None:
            found[s.pk] = f"legacy payout {legacy_id} may have paid this winner: review it first"
    return found


def _validate(selections: list[WinnerSelection]) -> None:
    problems = {f"selection {s.pk} (user {s.user_id})": p for s in selections if (p := selection_problems(s))}
    if problems:
        raise InvalidRequest(
            f"{len(problems)} winner selection(s) are not valid",
            user_message=f"{len(problems)} winner(s) cannot be paid as entered; nothing was prepared.",
            action_required="Correct the listed winners (amount, currency, recipient) and prepare again.",
            details={"problems": problems},
        )


def _unpaid(selections: QuerySet[WinnerSelection]) -> list[WinnerSelection]:
    """Winners not paid and not being paid, in one query. Items in batches not yet sent count as
    unpaid, so preparing the same winners again gives the same checksum, hence the same batch."""
    being_paid = PayoutItem.objects.filter(selection=OuterRef("pk"), status__in=PayoutItem.LIVE).exclude(
        batch__status__in=(PayoutBatch.Status.PREPARED, PayoutBatch.Status.APPROVED)
    )
    return list(selections.filter(paid_outside=False).exclude(Exists(being_paid)).order_by("pk"))


def _provider_of(selection: WinnerSelection) -> str:
    return "stripe" if selection.recipient_type == RecipientType.STRIPE_ACCOUNT else "paypal"


def _plan_batches(
    cycle_id: int, selections: list[WinnerSelection], retry_of: int | None
) -> list[tuple[str, str, list[WinnerSelection], str]]:
    """(provider, currency, selections, checksum) per batch: one per provider and currency, split at 15,000."""
    groups: dict[tuple[str, str], list[WinnerSelection]] = defaultdict(list)
    for selection in sorted(selections, key=lambda s: s.pk):
        groups[_provider_of(selection), selection.currency].append(selection)
    plans = []
    for (provider, currency), members in sorted(groups.items()):
        for start in range(0, len(members), MAX_BATCH_ITEMS):
            chunk = members[start : start + MAX_BATCH_ITEMS]
            plans.append((provider, currency, chunk, batch_checksum(chunk, retry_of)))
    return plans


def cycle_prepare(*, cycle_id: int, actor: AbstractBaseUser) -> list[PayoutBatch]:
    """Batch every unpaid winner of a cycle and reserve their money; same content returns the same batches."""
    require_permission(actor, "payouts.prepare_payoutbatch")
    with processing_lock(key=f"payout-cycle:{cycle_id}", holder=actor.get_username(), reason="preparing payouts"):
        cycle = PayoutCycle.objects.filter(pk=cycle_id).first()
        if cycle is None:
            raise NotFound(f"payout cycle {cycle_id} does not exist", details={"cycle_id": cycle_id})
        unpaid = _unpaid(cycle.selections.all())
        held = _legacy_under_review(unpaid)  # never risk paying twice: these wait for a person
        if held:
            log.warning("payouts.winners_held_for_legacy_review", cycle=cycle_id, held=held)
            audit_record(actor=actor, action="payouts.cycle.held_for_review", obj=cycle, after={"held": held})
        return _prepare(cycle, [s for s in unpaid if s.pk not in held], actor, retry_of=None)


def _prepare(
    cycle: PayoutCycle, selections: list[WinnerSelection], actor: AbstractBaseUser, retry_of: PayoutBatch | None
) -> list[PayoutBatch]:
    _validate(selections)
    plans = _plan_batches(cycle.pk, selections, retry_of.pk if retry_of else None)
    wanted_ids = [sender_batch_id(cycle.pk, checksum) for *_, checksum in plans]
    existing = {b.sender_batch_id: b for b in cycle.batches.filter(sender_batch_id__in=wanted_ids)}
    others = cycle.batches.filter(status__in=PayoutBatch.ACTIVE).exclude(sender_batch_id__in=wanted_ids)
    if not plans and retry_of is None and cycle.batches.filter(status__in=PayoutBatch.ACTIVE).exists():
        return list(cycle.batches.filter(status__in=PayoutBatch.ACTIVE))  # already sent: nothing new to prepare
    if not plans or (retry_of is None and others.exists()):
        _refuse_other_active(cycle, plans, others.first())
    with transaction.atomic():
        batches = [
            existing.get(batch_id) or _create_batch(cycle, plan, batch_id, actor, retry_of)
            for plan, batch_id in zip(plans, wanted_ids, strict=True)
        ]
        audit_record(actor=actor, action="payouts.cycle.prepare", obj=cycle, after={"batches": wanted_ids})
    return batches


def _refuse_other_active(cycle: PayoutCycle, plans: list, other: PayoutBatch | None) -> None:
    if other is not None:
        raise Conflict(
            f"cycle {cycle.pk} has active batch {other.sender_batch_id} with other content",
            user_message=f"This cycle already has an active batch ({other.sender_batch_id}) for other winners.",
            action_required="Finish or cancel that batch first; winners changed since it was prepared.",
            details={"active_batch": other.sender_batch_id, "status": other.status},
        )
    raise InvalidRequest(
        f"cycle {cycle.pk} has no unpaid winners",
        user_message="Every winner of this cycle is already paid or being paid.",
        action_required="Nothing to do; check the cycle's batches for their progress.",
    )


def _create_batch(
    cycle: PayoutCycle,
    plan: tuple[str, str, list[WinnerSelection], str],
    batch_id: str,
    actor: AbstractBaseUser,
    retry_of: PayoutBatch | None,
) -> PayoutBatch:
    provider, currency, selections, checksum = plan
    total = sum(s.amount_minor for s in selections)
    needs_approval = total > settings.PAYOUT_APPROVAL_THRESHOLD_MINOR
    batch = PayoutBatch.objects.create(
        cycle=cycle, provider=provider, sender_batch_id=batch_id, checksum=checksum, currency=currency,
        total_minor=total, item_count=len(selections), prepared_by=actor, retry_of=retry_of,
        status=PayoutBatch.Status.PREPARED if needs_approval else PayoutBatch.Status.APPROVED,
    )  # fmt: skip
    items = PayoutItem.objects.bulk_create(
        PayoutItem(
            batch=batch,
            selection=s,
            sender_item_id=sender_item_id(s),
            amount_minor=s.amount_minor,
            currency=s.currency,
            recipient_type=s.recipient_type,
            receiver=s.recipient,
        )
        for s in selections
    )
    payable, clearing = winnings_payable(currency), provider_clearing(provider, currency)
    holds = holds_create_many(
        requests=[
            HoldRequest(
                idempotency_key=f"payout-item:{item.pk}:hold",
                debit_account_code=payable,
                credit_account_code=clearing,
                amount=Money(item.amount_minor, currency),
                kind="payout",
                description=f"{item.sender_item_id} in {batch_id}",
            )
            for item in items
        ]
    )
    for item, hold in zip(items, holds, strict=True):
        item.hold_id = hold.pk
    PayoutItem.objects.bulk_update(items, ["hold_id"], batch_size=2000)
    return batch


def _get_batch(batch_id: int, *, lock: bool = False) -> PayoutBatch:
    batches = PayoutBatch.objects.select_for_update() if lock else PayoutBatch.objects.all()
    batch = batches.filter(pk=batch_id).first()
    if batch is None:
        raise NotFound(f"payout batch {batch_id} does not exist", details={"batch_id": batch_id})
    return batch


# --- approve -----------------------------------------------------------------------------


@transaction.atomic
def batch_approve(*, batch_id: int, approver: AbstractBaseUser) -> PayoutBatch:
    require_permission(approver, "payouts.approve_payoutbatch")
    batch = _get_batch(batch_id, lock=True)
    if approver.pk == batch.prepared_by_id:
        raise MakerCheckerViolation(f"{approver.get_username()} prepared {batch.sender_batch_id}")
    if batch.status != PayoutBatch.Status.PREPARED:
        raise InvalidStateTransition(
            f"batch {batch.sender_batch_id} is {batch.status}",
            user_message=f"This batch is {batch.status} and needs no approval.",
            action_required="Reload the batch to see its current state.",
        )
    batch.status, batch.approved_by = PayoutBatch.Status.APPROVED, approver
    batch.save(update_fields=["status", "approved_by", "updated_at"])
    audit_record(actor=approver, action="payouts.batch.approve", obj=batch)
    return batch


# --- execute and track --------------------------------------------------------------------


def _move_batch(batch: PayoutBatch, target: str, **fields: object) -> bool:
    sources = [s for s, targets in PayoutBatch.TRANSITIONS.items() if target in targets]
    return bool(PayoutBatch.objects.filter(pk=batch.pk, status__in=sources).update(status=target, **fields))


def batch_execute(*, batch_id: int, actor: AbstractBaseUser) -> PayoutBatch:
    """Send an approved batch to its provider, once (DESIGN.md section 5)."""
    require_permission(actor, "payouts.execute_payoutbatch")
    batch = _get_batch(batch_id)
    with processing_lock(key=f"payout-cycle:{batch.cycle_id}", holder=actor.get_username(), reason="executing"):
        if not _move_batch(batch, PayoutBatch.Status.SUBMITTING):  # the committed intent
            batch.refresh_from_db()
            raise InvalidStateTransition(
                f"batch {batch.sender_batch_id} is {batch.status}",
                user_message=f"This batch is {batch.status}; it can only be sent once it is approved.",
                action_required="Approve it first, or reload it: it may already have been sent.",
                details={"status": batch.status},
            )
        audit_record(actor=actor, action="payouts.batch.execute", obj=batch)
        _submit(batch)
    batch.refresh_from_db()
    return batch


def _submit(batch: PayoutBatch) -> None:
    if batch.provider == PayoutBatch.Provider.STRIPE:
        _submit_transfers(batch)
        return
    items = list(batch.items.order_by("id"))
    with PayPalClient() as paypal:
        result = paypal.create_batch(
            sender_batch_id=batch.sender_batch_id,
            items=[
                PayoutItemRequest(
                    receiver=i.receiver,
                    amount_minor=i.amount_minor,
                    currency=i.currency,
                    sender_item_id=i.sender_item_id,
                    recipient_type=i.recipient_type,
                )
                for i in items
            ],
        )
    record_submission(batch, result)


def record_submission(batch: PayoutBatch, result: ProviderResult) -> None:
    if isinstance(result, Pending | Succeeded):
        with transaction.atomic():
            _move_batch(batch, PayoutBatch.Status.SUBMITTED, provider_batch_id=result.reference, next_sync_at=None)
            batch.items.filter(status__in=[PayoutItem.Status.NEW, PayoutItem.Status.UNKNOWN]).update(
                status=PayoutItem.Status.PENDING
            )
    elif isinstance(result, Unknown):
        _move_batch(batch, PayoutBatch.Status.UNKNOWN, next_sync_at=timezone.now() + SYNC_SCHEDULE[0])
        batch.items.filter(status=PayoutItem.Status.NEW).update(status=PayoutItem.Status.UNKNOWN)
        log.warning("payouts.batch_unknown", batch=batch.sender_batch_id, reason=result.reason)
    else:
        with transaction.atomic():
            _move_batch(batch, PayoutBatch.Status.DENIED, failure_reason=result.reason[:255])
            for item in batch.items.all():
                item_apply_status(item_pk=item.pk, status=PayoutItem.Status.DENIED, error=result.reason)


def _submit_transfers(batch: PayoutBatch) -> None:
    """Stripe Connect: one keyed transfer per item; the batch is the transfer group."""
    client = StripeProviderClient()
    try:
        for item in batch.items.filter(status__in=[PayoutItem.Status.NEW, PayoutItem.Status.UNKNOWN]):
            result = client.create_transfer(
                amount_minor=item.amount_minor,
                currency=item.currency,
                destination=item.receiver,
                idempotency_key=f"payout-item:{item.pk}:transfer",
                transfer_group=batch.sender_batch_id,
            )
            _record_transfer(item, result)
    finally:
        client.close()
    _move_batch(batch, PayoutBatch.Status.SUBMITTED)
    _complete_if_final(batch)


def _record_transfer(item: PayoutItem, result: ProviderResult) -> None:
    if isinstance(result, Succeeded | Pending):
        item_apply_status(item_pk=item.pk, status=PayoutItem.Status.SUCCESS, provider_item_id=result.reference)
    elif isinstance(result, Declined):
        item_apply_status(item_pk=item.pk, status=PayoutItem.Status.FAILED, error=result.reason)
    else:
        PayoutItem.objects.filter(pk=item.pk, status=PayoutItem.Status.NEW).update(status=PayoutItem.Status.UNKNOWN)


def item_apply_status(*, item_pk: int, status: str, provider_item_id: str = "", error: str = "") -> bool:
    """Move an item forward and keep the ledger in step; an old or repeated status changes nothing."""
    with transaction.atomic():
        item = PayoutItem.objects.select_for_update().get(pk=item_pk)
        if status == item.status or status not in PayoutItem.TRANSITIONS.get(item.status, set()):
            return False
        was_paid = item.status == PayoutItem.Status.SUCCESS
        item.status, item.error = status, error[:255]
        item.provider_item_id = provider_item_id or item.provider_item_id
        item.save(update_fields=["status", "error", "provider_item_id", "updated_at"])
        _ledger_follow(item, was_paid)
    return True


def _ledger_follow(item: PayoutItem, was_paid: bool) -> None:
    if item.hold_id is None:
        return
    if item.status == PayoutItem.Status.SUCCESS:
        provider = {"provider": item.batch.provider, "provider_reference": item.provider_item_id}
        hold_post(hold_id=item.hold_id, metadata=provider)
    elif was_paid:  # returned, refunded or reversed after success: the money came back
        posted = Hold.objects.get(pk=item.hold_id).posted_transaction_id
        if posted is not None:
            ledger_reverse(transaction_id=posted, reason=f"{item.sender_item_id} {item.status}")
    elif item.status in PayoutItem.UNPAID_FINAL:
        hold_void(hold_id=item.hold_id)


def batch_sync(*, batch_id: int) -> PayoutBatch:
    """Ask the provider: resolve an unknown submission by its sender_batch_id, or refresh item statuses."""
    batch = _get_batch(batch_id)
    if batch.status == PayoutBatch.Status.UNKNOWN:
        _resolve_unknown(batch)
    elif batch.status == PayoutBatch.Status.SUBMITTED and batch.provider == PayoutBatch.Provider.PAYPAL:
        _refresh_items(batch)
    elif batch.status == PayoutBatch.Status.SUBMITTED:
        _submit_transfers(batch)  # keyed transfers: a replay answers with the first outcome
    batch.refresh_from_db()
    return batch


def _resolve_unknown(batch: PayoutBatch) -> None:
    if batch.provider == PayoutBatch.Provider.STRIPE:
        _submit_transfers(batch)
        return
    _submit(batch)  # the same sender_batch_id: PayPal accepts it once, or names the batch it has
    batch.refresh_from_db()
    if batch.status == PayoutBatch.Status.UNKNOWN:
        attempts = batch.sync_attempts + 1
        later = timezone.now() + SYNC_SCHEDULE[attempts] if attempts < len(SYNC_SCHEDULE) else None
        PayoutBatch.objects.filter(pk=batch.pk).update(sync_attempts=attempts, next_sync_at=later)
        if later is None:
            log.error("payouts.batch_unknown_needs_a_human", batch=batch.sender_batch_id)


def _refresh_items(batch: PayoutBatch) -> None:
    by_sender_item = {i.sender_item_id: i.pk for i in batch.items.all()}
    page = 1
    with PayPalClient() as paypal:
        while True:
            result = paypal.get_batch(batch.provider_batch_id, page=page, page_size=1000)
            if not isinstance(result, Succeeded):
                return
            entries = result.raw.get("items", [])
            for entry in entries:
                item_pk = by_sender_item.get(entry.get("payout_item", {}).get("sender_item_id", ""))
                if item_pk is not None:
                    item_apply_status(
                        item_pk=item_pk, status=entry["transaction_status"], provider_item_id=entry["payout_item_id"]
                    )
            if len(entries) < 1000:
                break
            page += 1
    _complete_if_final(batch)


def _complete_if_final(batch: PayoutBatch) -> None:
    waiting = (PayoutItem.Status.NEW, PayoutItem.Status.UNKNOWN, PayoutItem.Status.PENDING, PayoutItem.Status.ONHOLD)
    if not batch.items.filter(status__in=waiting).exists():
        _move_batch(batch, PayoutBatch.Status.COMPLETED)


def batches_sync_due() -> int:
    """Beat job: unknown submissions on schedule, and every batch still being paid."""
    now = timezone.now()
    due = PayoutBatch.objects.filter(
        status=PayoutBatch.Status.UNKNOWN, next_sync_at__lte=now
    ) | PayoutBatch.objects.filter(status=PayoutBatch.Status.SUBMITTED)
    synced = 0
    for batch_id in due.values_list("pk", flat=True)[:100]:
        try:
            batch_sync(batch_id=batch_id)
            synced += 1
        except AppError as error:
            log.error("payouts.sync_failed", batch_id=batch_id, error=error.message)
    return synced


# --- retry and cancel ----------------------------------------------------------------------


def batch_retry_failed(*, batch_id: int, actor: AbstractBaseUser) -> list[PayoutBatch]:
    """A new batch (its own deterministic id) for the winners this batch did not pay and nobody has since."""
    require_permission(actor, "payouts.prepare_payoutbatch")
    batch = _get_batch(batch_id)
    with processing_lock(key=f"payout-cycle:{batch.cycle_id}", holder=actor.get_username(), reason="retrying"):
        failed = WinnerSelection.objects.filter(items__batch=batch, items__status__in=PayoutItem.UNPAID_FINAL)
        selections = _unpaid(WinnerSelection.objects.filter(pk__in=failed.values("pk")))
        if not selections:
            raise InvalidRequest(
                f"batch {batch.sender_batch_id} has no unpaid items left to retry",
                user_message="Every winner of this batch is paid or already being paid again.",
                action_required="Nothing to retry.",
            )
        return _prepare(batch.cycle, selections, actor, retry_of=batch)


def item_cancel_unclaimed(*, item_id: int, actor: AbstractBaseUser) -> PayoutItem:
    """Staff: take back an unclaimed PayPal payout after the waiting period."""
    require_permission(actor, "payouts.execute_payoutbatch")
    item = PayoutItem.objects.filter(pk=item_id).first()
    if item is None:
        raise NotFound(f"payout item {item_id} does not exist", details={"item_id": item_id})
    waited = timezone.now() - item.updated_at
    if item.status != PayoutItem.Status.UNCLAIMED or waited < timedelta(
        days=settings.PAYOUT_UNCLAIMED_CANCEL_AFTER_DAYS
    ):
        raise InvalidStateTransition(
            f"item {item.sender_item_id} is {item.status}, unclaimed for {waited.days} day(s)",
            user_message="Only payouts left unclaimed for the waiting period can be cancelled.",
            action_required=f"Wait until it has been unclaimed for {settings.PAYOUT_UNCLAIMED_CANCEL_AFTER_DAYS} days.",
        )
    with PayPalClient() as paypal:
        result = paypal.cancel_item(item.provider_item_id)
    if isinstance(result, Succeeded):
        item_apply_status(item_pk=item.pk, status=PayoutItem.Status.RETURNED)
        audit_record(actor=actor, action="payouts.item.cancel_unclaimed", obj=item)
    elif isinstance(result, Declined):
        raise Conflict(f"PayPal refused to cancel {item.sender_item_id}: {result.reason}")
    item.refresh_from_db()
    return item


def cycle_disburse(*, cycle_id: int, actor: AbstractBaseUser) -> list[PayoutBatch]:
    """Prepare the cycle, then send every batch that needs no further approval."""
    batches = cycle_prepare(cycle_id=cycle_id, actor=actor)
    return [
        batch_execute(batch_id=batch.pk, actor=actor) if batch.status == PayoutBatch.Status.APPROVED else batch
        for batch in batches
    ]


@transaction.atomic
def winner_selections_import(*, cycle_id: int, rows: Sequence[Any], actor: AbstractBaseUser) -> int:
    """Add winners to a cycle from checked rows (see payouts.admin's CSV import): all rows or none."""
    require_permission(actor, "payouts.add_winnerselection")
    cycle = PayoutCycle.objects.select_for_update().get(pk=cycle_id)
    try:
        with transaction.atomic():
            WinnerSelection.objects.bulk_create(
                WinnerSelection(
                    cycle=cycle, user_id=row.user_id, amount_minor=row.amount.minor, currency=row.amount.currency,
                    recipient_type=row.recipient_type, recipient=row.recipient,
                )
                for row in rows
            )  # fmt: skip
    except IntegrityError as error:
        raise Conflict(
            f"importing winners into cycle {cycle_id} hit {error}",
            user_message="Some of these winners were added to the cycle while the file was being imported.",
            action_required="Upload the file again to see which lines are now duplicates.",
        ) from error
    totals: dict[str, int] = defaultdict(int)
    for row in rows:
        totals[row.amount.currency] += row.amount.minor
    after = {"count": len(rows), "total_minor": dict(totals)}
    audit_record(actor=actor, action="payouts.selections.import", obj=cycle, after=after)
    return len(rows)
