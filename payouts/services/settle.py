"""Settle: items move forward and the ledger moves with them, a page of items in one transaction.

Invariants kept:
- item statuses only move forward (PayoutItem.TRANSITIONS): an old or repeated status changes nothing, so
  webhooks and polling may arrive in any order and any number of times;
- a page of item updates (a page of the poller, a burst of item webhooks, a protocol hook) is one
  transaction: its items are locked at once, in id order, before anything changes, so a webhook and the
  poller that race on an item apply its status one after the other; items whose status does not move are
  skipped;
- the ledger moves with the items, in the same transaction (table below): the page's holds are locked at
  once and settled by one batched ledger call that keeps one ledger transaction per posted hold (each can
  be reversed on its own later); so does the batch's staff alert when an item ends unpaid or its money
  comes back (payouts.services.alerts).

Ledger postings (the item's hold was made at prepare: winnings payable -> provider clearing):

| the item moves to                                   | posting                                         |
|-----------------------------------------------------|-------------------------------------------------|
| SUCCESS                                             | the hold posted (metadata: provider, reference) |
| FAILED, BLOCKED, DENIED, CANCELED, RETURNED unpaid  | the hold voided: the reservation is released    |
| RETURNED, REFUNDED, REVERSED after SUCCESS          | the hold's posting reversed: the money is back  |
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, connections
from django.utils import timezone

from ledger.models import Hold
from ledger.services import HoldPosting, holds_settle_many, retry_on_conflict
from ledger.services import transaction_reverse as ledger_reverse
from payouts.models import PayoutBatch, PayoutItem
from payouts.services.alerts import TAKEN_BACK, UNPAID, item_alert

PAGE_ROWS = 1000  # item updates per statement (and per `IN (...)` list)
# What a page reads of its items; an alert reads the rest of an item that ends unpaid or is taken back.
LOCKED_FIELDS = ("batch_id", "sender_item_id", "status", "provider_item_id", "hold_id", "error")
ALERTED = (*UNPAID, *TAKEN_BACK)


@dataclass(frozen=True)
class ItemUpdate:
    """What the provider says of one item now."""

    item_pk: int
    status: str
    provider_item_id: str = ""
    error: str = ""


def item_apply_status(*, item_pk: int, status: str, provider_item_id: str = "", error: str = "") -> bool:
    """Move an item forward and keep the ledger in step; an old or repeated status changes nothing."""
    return items_apply_statuses(updates=[ItemUpdate(item_pk, status, provider_item_id, error)]) > 0


@dataclass
class _PageItem:
    """What a page reads of a locked item, and changes."""

    pk: int
    batch_id: int
    sender_item_id: str
    status: str
    provider_item_id: str
    hold_id: int | None
    error: str


@retry_on_conflict  # a deadlock or serialization failure retries the whole page
def items_apply_statuses(*, updates: Sequence[ItemUpdate]) -> int:
    """Apply a page of item updates in one transaction; returns how many items moved.

    An item named twice takes its last update. Items and their holds are locked at once; the moved items'
    holds are posted, voided or reversed in one ledger call; the items are updated set-based.
    """
    latest = {update.item_pk: update for update in updates}
    moved = [item for item in _locked_items(sorted(latest)) if _moves(item.status, latest[item.pk].status)]
    if not moved:
        return 0
    paid_before = {item.pk for item in moved if item.status == PayoutItem.Status.SUCCESS}
    for item in moved:
        update = latest[item.pk]
        item.status, item.error = update.status, update.error[:255]
        item.provider_item_id = update.provider_item_id or item.provider_item_id
    _items_record(moved)  # before the ledger call: the shared balance rows it locks are held for less time
    _ledger_follow(moved, paid_before)
    _alerts_raise([item.pk for item in moved if item.status in ALERTED])
    return len(moved)


def pages_apply(pages: Iterable[list[ItemUpdate]]) -> int:
    """Apply pages of item updates, each page in its own transaction; returns how many items moved.

    Inside a caller's transaction the pages are applied one after the other, in it. Otherwise up to
    `settle_appliers()` pages are applied at once, each thread on its own connection: the pages hold different
    items and every lock is taken in sorted order, so they never wait on each other in a cycle, and one page's
    Python work runs while another's statements run in PostgreSQL. The first error stops the rest and is raised.
    """
    appliers = settle_appliers()
    if connection.in_atomic_block or appliers < 2:
        return sum(items_apply_statuses(updates=page) for page in pages)
    work: queue.Queue[list[ItemUpdate] | None] = queue.Queue(maxsize=appliers)
    moved: list[int] = []
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=_applier, args=(work, moved, errors), name=f"settle-{n}") for n in range(appliers)
    ]
    for thread in threads:
        thread.start()
    try:
        for page in pages:
            if errors:
                break
            work.put(page)
    finally:
        for _ in threads:
            work.put(None)
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return sum(moved)


def settle_appliers() -> int:
    """Pages applied at once by `pages_apply` (settings.PAYOUT_SETTLE_APPLIERS, default 2)."""
    return int(getattr(settings, "PAYOUT_SETTLE_APPLIERS", 2))


def _applier(work: queue.Queue[list[ItemUpdate] | None], moved: list[int], errors: list[BaseException]) -> None:
    try:
        while (page := work.get()) is not None:
            if errors:
                continue  # drain: another page failed
            try:
                moved.append(items_apply_statuses(updates=page))
            except BaseException as error:  # raised in the caller's thread by pages_apply
                errors.append(error)
    finally:
        connections.close_all()  # this thread's own connection


def _alerts_raise(item_pks: list[int]) -> None:
    """One more occurrence on its batch's alert for each item that ended unpaid or was taken back."""
    for item in PayoutItem.objects.select_related("batch").filter(pk__in=item_pks).order_by("pk"):
        item_alert(item)


_LOCK_ITEMS_SQL = (
    "SELECT id, batch_id, sender_item_id, status, provider_item_id, hold_id, error FROM payouts_payoutitem"
    " WHERE id = ANY(%s::bigint[]) ORDER BY id FOR UPDATE"
)


def _locked_items(item_pks: list[int]) -> list[_PageItem]:
    """The items, locked in id order: one statement on PostgreSQL (the ids as one array), PAGE_ROWS ids a query
    elsewhere."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_LOCK_ITEMS_SQL, ["{" + ",".join(map(str, item_pks)) + "}"])
            return [_PageItem(*row) for row in cursor.fetchall()]
    items: list[_PageItem] = []
    for start in range(0, len(item_pks), PAGE_ROWS):
        locked = PayoutItem.objects.select_for_update().filter(pk__in=item_pks[start : start + PAGE_ROWS])
        items += (_PageItem(*row) for row in locked.order_by("pk").values_list("pk", *LOCKED_FIELDS))
    return items


def _moves(current: str, status: str) -> bool:
    return status != current and status in PayoutItem.TRANSITIONS.get(current, set())


def _ledger_follow(items: list[_PageItem], paid_before: set[int]) -> None:
    """The page's ledger in one call: posted holds for successes, voided ones for unpaid ends; money that came
    back after a success reverses that hold's posting (rare: one reversal each)."""
    providers = dict(PayoutBatch.objects.filter(pk__in={i.batch_id for i in items}).values_list("pk", "provider"))
    post = [
        HoldPosting(item.hold_id, {"provider": providers[item.batch_id], "provider_reference": item.provider_item_id})
        for item in items
        if item.hold_id is not None and item.status == PayoutItem.Status.SUCCESS
    ]
    void = [
        item.hold_id
        for item in items
        if item.hold_id is not None and item.pk not in paid_before and item.status in PayoutItem.UNPAID_FINAL
    ]
    if post or void:
        holds_settle_many(post=post, void=void)
    taken_back = [item for item in items if item.hold_id is not None and item.pk in paid_before]
    postings = dict(Hold.objects.filter(pk__in=[i.hold_id for i in taken_back]).values_list("pk", "posted_transaction"))
    for item in taken_back:
        if postings.get(item.hold_id) is not None:
            ledger_reverse(transaction_id=postings[item.hold_id], reason=f"{item.sender_item_id} {item.status}")


_RECORD_SQL = """
UPDATE payouts_payoutitem
   SET status = moved.status, provider_item_id = moved.provider_item_id, error = moved.error, updated_at = %s
  FROM jsonb_to_recordset(%s::jsonb) AS moved (id bigint, status text, provider_item_id text, error text)
 WHERE payouts_payoutitem.id = moved.id
"""
RECORDED_FIELDS = ("status", "provider_item_id", "error")


def _items_record(items: list[_PageItem]) -> None:
    """Set-based: one UPDATE for the page on PostgreSQL (statuses, provider ids and errors differ item by item);
    Django's bulk update elsewhere (the SQLite demo)."""
    now = timezone.now()
    if connection.vendor != "postgresql":
        rows = [
            PayoutItem(pk=i.pk, updated_at=now, **{name: getattr(i, name) for name in RECORDED_FIELDS}) for i in items
        ]
        PayoutItem.objects.bulk_update(rows, [*RECORDED_FIELDS, "updated_at"], batch_size=PAGE_ROWS)
        return
    moved = [{"id": item.pk, **{name: getattr(item, name) for name in RECORDED_FIELDS}} for item in items]
    with connection.cursor() as cursor:
        cursor.execute(_RECORD_SQL, [now, json.dumps(moved)])  # one JSON text: far cheaper to send than arrays
