"""Prepare: batch a cycle's unpaid winners and reserve their money. Also the winners' import and funding.

Invariants kept:
- prepare is all-or-nothing: every selection is validated first; batches, items and the ledger holds
  reserving their money commit together;
- `sender_batch_id = cycle-{cycle}-{checksum[:16]}`, the checksum being the SHA-256 of the batch's canonical
  item list: the same content always gets the same id (prepare is idempotent), other content a new one;
- a winner a legacy PayPal payout may already have paid is held back until a person reviews it;
- a cycle is prepared under its processing lock;
- a batch's holds are made first, in one write, each keyed `payout:{sender_batch_id}:{sender_item_id}:hold`,
  then its items are inserted with their hold in one statement: no per-item round trip.

Ledger postings made here (minor units, one currency per posting):

| when                     | debit                                | credit                                 |
|--------------------------|--------------------------------------|----------------------------------------|
| winnings_fund            | platform:prize-expense:{cur}         | payouts:winnings-payable:{cur}         |
| prepare (a hold per item)| payouts:winnings-payable:{cur}       | provider:{provider}:clearing:{cur}     |
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import structlog
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from core.errors import Conflict, InvalidRequest, NotFound
from core.locks import processing_lock
from core.money import Money, MoneyError, validate_currency
from core.permissions import require_permission
from core.services import audit_record
from ledger.models import Transaction
from ledger.services import (
    HoldRequest,
    credit,
    debit,
    holds_create_many,
    transaction_post,
)
from payouts.models import LegacyPayout, PayoutBatch, PayoutCycle, PayoutItem, RecipientType, WinnerSelection
from providers.accounts import chart_accounts
from providers.paypal.client import MAX_BATCH_ITEMS

log = structlog.get_logger(__name__)

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


def batch_get(batch_id: int, *, lock: bool = False) -> PayoutBatch:
    batches = PayoutBatch.objects.select_for_update() if lock else PayoutBatch.objects.all()
    batch = batches.filter(pk=batch_id).first()
    if batch is None:
        raise NotFound(f"payout batch {batch_id} does not exist", details={"batch_id": batch_id})
    return batch


# --- ledger accounts ----------------------------------------------------------------------


def winnings_payable(currency: str) -> str:
    return chart_accounts(currency, "winnings_payable")["winnings_payable"]


def provider_clearing(provider: str, currency: str) -> str:
    return chart_accounts(currency, "clearing", provider=provider)["clearing"]


def prize_expense(currency: str) -> str:
    return chart_accounts(currency, "prize_expense")["prize_expense"]


def winnings_fund_key(reference: str) -> str:
    return f"winnings-fund:{reference}"


def winnings_fund(*, amount: Money, reference: str) -> Transaction:
    """Set money aside for winners: prize expense now, owed to winners until paid (once per reference)."""
    expense = prize_expense(amount.currency)
    return transaction_post(
        idempotency_key=winnings_fund_key(reference),
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
    longest = WinnerSelection._meta.get_field("recipient").max_length or 0
    if len(selection.recipient or "") > longest:
        found.append(f"{selection.recipient_type} recipient is longer than {longest} characters")
    elif pattern is None or not pattern.match(selection.recipient or ""):
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


def unpaid_selections(selections: QuerySet[WinnerSelection]) -> list[WinnerSelection]:
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
        unpaid = unpaid_selections(cycle.selections.all())
        held = _legacy_under_review(unpaid)  # never risk paying twice: these wait for a person
        if held:
            log.warning("payouts.winners_held_for_legacy_review", cycle=cycle_id, held=held)
            audit_record(actor=actor, action="payouts.cycle.held_for_review", obj=cycle, after={"held": held})
        return batches_prepare(cycle, [s for s in unpaid if s.pk not in held], actor, retry_of=None)


def batches_prepare(
    cycle: PayoutCycle, selections: list[WinnerSelection], actor: AbstractBaseUser, retry_of: PayoutBatch | None
) -> list[PayoutBatch]:
    """The batches for these winners (the caller holds the cycle's processing lock)."""
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
    payable, clearing = winnings_payable(currency), provider_clearing(provider, currency)
    item_ids = [sender_item_id(s) for s in selections]
    holds = holds_create_many(
        requests=[
            HoldRequest(
                idempotency_key=hold_key(batch_id, item_id),
                debit_account_code=payable,
                credit_account_code=clearing,
                amount=Money(s.amount_minor, currency),
                kind="payout",
                description=f"{item_id} in {batch_id}",
            )
            for item_id, s in zip(item_ids, selections, strict=True)
        ]
    )
    _items_insert(batch, selections, item_ids, [hold.pk for hold in holds])
    return batch


def hold_key(sender_batch_id: str, sender_item_id: str) -> str:
    """The ledger hold that reserves an item's money (made before the item, which is inserted with it)."""
    return f"payout:{sender_batch_id}:{sender_item_id}:hold"


_ITEMS_INSERT_SQL = """
INSERT INTO payouts_payoutitem (created_at, updated_at, batch_id, currency, status, provider_item_id, error,
                                selection_id, sender_item_id, amount_minor, recipient_type, receiver, hold_id)
SELECT %s, %s, %s, %s, %s, '', '', s.*
  FROM jsonb_to_recordset(%s::jsonb) AS s (selection_id bigint, sender_item_id text, amount_minor bigint,
                                           recipient_type text, receiver text, hold_id bigint)
"""


def _items_insert(
    batch: PayoutBatch, selections: list[WinnerSelection], item_ids: list[str], hold_ids: list[int]
) -> None:
    """Insert the batch's items, NEW, each with its hold: one statement on PostgreSQL (the rows as one JSON text,
    far cheaper to send than arrays of strings); Django's bulk insert elsewhere (the SQLite demo)."""
    rows = zip(selections, item_ids, hold_ids, strict=True)
    if connection.vendor != "postgresql":
        PayoutItem.objects.bulk_create(
            PayoutItem(batch=batch, selection=s, sender_item_id=item_id, amount_minor=s.amount_minor,
                       currency=s.currency, recipient_type=s.recipient_type, receiver=s.recipient, hold_id=hold_id)
            for s, item_id, hold_id in rows
        )  # fmt: skip
        return
    items = [
        {"selection_id": s.pk, "sender_item_id": item_id, "amount_minor": s.amount_minor,
         "recipient_type": s.recipient_type, "receiver": s.recipient, "hold_id": hold_id}
        for s, item_id, hold_id in rows
    ]  # fmt: skip
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            _ITEMS_INSERT_SQL, [now, now, batch.pk, batch.currency, PayoutItem.Status.NEW, json.dumps(items)]
        )


# --- winners ---------------------------------------------------------------------------------


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
