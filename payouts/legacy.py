"""Legacy PayPal payouts: import them from CSV, then reconcile them with winner selections.

Invariants kept here:
- every CSV row is stored once, keyed by (source file name, row number): re-importing a file adds
  nothing, and a row that cannot be parsed is kept and flagged for review, never dropped;
- only a SUCCESS payout counts as paid, and only with a strictly parsed, positive amount;
- a winner is marked `paid_outside` only for a SUCCESS payout of exactly its amount and currency, only
  if it has no live payout item, and in the same database transaction that posts the payout to the
  ledger (`legacy-payout:{id}`: Dr prize expense, Cr PayPal clearing) and links the row: never two
  payments recorded for one winner (a partial unique index also allows one linked row per selection);
- linking runs under the cycle's processing lock, the one `cycle_prepare` takes, so no batch can take
  the winner meanwhile;
- reconcile decides only rows still `parsed`, so a second run changes nothing; a dry run only reads.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from django.db import transaction
from django.db.models import Count, Exists, OuterRef, QuerySet

from core.errors import AppError, InvalidRequest, ResourceLocked
from core.locks import processing_lock
from core.money import Money, money_parse_in_bounds, validate_currency
from core.services import audit_record
from ledger.models import Transaction
from ledger.services import credit, debit, transaction_post
from payouts.models import LegacyPayout, PayoutBatch, PayoutItem, WinnerSelection
from payouts.services import prize_expense, provider_clearing

log = structlog.get_logger(__name__)

IdFormat = LegacyPayout.IdFormat
Review = LegacyPayout.ReviewStatus

MAX_ID = 2**63 - 1  # PostgreSQL bigint
PAID_STATUS = "SUCCESS"
NOT_PAID_STATUSES = frozenset({"FAILED", "RETURNED", "BLOCKED", "REFUNDED", "REVERSED", "DENIED", "CANCELED"})
LEGACY_HOLDER = "legacy-reconcile"

# --- parsing sender_item_id ---------------------------------------------------------------

_FLAGS = re.IGNORECASE | re.ASCII
_ID = r"[0-9]+"
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (IdFormat.WINNER, re.compile(rf"winner[-_](?P<selection>{_ID})[-_](?P<user>{_ID})", _FLAGS)),
    (IdFormat.CYCLE_USER, re.compile(rf"cycle[-_](?P<cycle>{_ID})[-_]user[-_](?P<user>{_ID})", _FLAGS)),
    (IdFormat.W_U, re.compile(rf"w(?P<selection>{_ID})u(?P<user>{_ID})", _FLAGS)),
    (IdFormat.SELECTION_DASH_USER, re.compile(rf"(?P<selection>{_ID})-(?P<user>{_ID})", _FLAGS)),
    (IdFormat.SELECTION_UNDERSCORE_USER, re.compile(rf"(?P<selection>{_ID})_(?P<user>{_ID})", _FLAGS)),
    (IdFormat.USER, re.compile(rf"#?(?P<user>{_ID})", _FLAGS)),
)
_HINTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("selection", re.compile(rf"\b(?:selection|sel|winner)\s*[#:=_-]?\s*({_ID})\b", _FLAGS)),
    ("cycle", re.compile(rf"\bcycle\s*[#:=_-]?\s*({_ID})\b", _FLAGS)),
    ("user", re.compile(rf"\b(?:user|uid)\s*[#:=_-]?\s*({_ID})\b", _FLAGS)),
)


@dataclass(frozen=True)
class ParsedLegacyId:
    """What a legacy sender_item_id says. Free text keeps any ids it mentions as hints, for a reviewer."""

    format: str
    selection_id: int | None = None
    user_id: int | None = None
    cycle_id: int | None = None
    note: str = ""

    @property
    def recognised(self) -> bool:
        return self.format not in (IdFormat.FREE_TEXT, IdFormat.EMPTY)


def _to_id(digits: str) -> int | None:
    """A database id, or None when zero or beyond bigint (checked before int(): no huge conversions)."""
    digits = digits.lstrip("0")
    if not digits or len(digits) > len(str(MAX_ID)) or int(digits) > MAX_ID:
        return None
    return int(digits)


def _free_text(text: str, reason: str = "not a known format") -> ParsedLegacyId:
    hints = {}
    for name, pattern in _HINTS:
        match = pattern.search(text)
        if match and (value := _to_id(match[1])) is not None:
            hints[name] = value
    found = ", ".join(f"{name} {value}" for name, value in hints.items()) or "no ids"
    return ParsedLegacyId(
        IdFormat.FREE_TEXT,
        selection_id=hints.get("selection"),
        user_id=hints.get("user"),
        cycle_id=hints.get("cycle"),
        note=f"free text ({reason}); mentions {found}: match by hand",
    )


def parse_sender_item_id(text: str | None) -> ParsedLegacyId:
    """Recognise every sender_item_id format used before this system; never raises."""
    cleaned = (text or "").strip().strip("\"'").strip()
    if not cleaned:
        return ParsedLegacyId(IdFormat.EMPTY, note="no sender_item_id")
    for id_format, pattern in _PATTERNS:
        match = pattern.fullmatch(cleaned)
        if match is None:
            continue
        ids = {f"{name}_id": _to_id(digits) for name, digits in match.groupdict().items()}
        if None in ids.values():
            return _free_text(cleaned, reason=f"looks like {id_format} but an id is 0 or too large")
        return ParsedLegacyId(id_format, **ids)
    return _free_text(cleaned)


# --- import ---------------------------------------------------------------------------------

_COLUMN_ALIASES = {
    "sender_item_id": ("sender_item_id", "senderitemid", "item_reference"),
    "amount": ("amount", "payout_amount", "gross", "value"),
    "currency": ("currency", "currency_code", "payout_currency"),
    "status": ("status", "transaction_status", "payout_status"),
    "paypal_transaction_id": ("paypal_transaction_id", "transaction_id", "txn_id"),
    "paypal_item_id": ("paypal_item_id", "payout_item_id", "item_id"),
}
_REQUIRED = ("sender_item_id", "amount", "currency", "status")


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready: counters become plain dicts with plain string keys (dataclasses.asdict mangles Counters)."""
    return {
        key: {str(k): v for k, v in value.items()} if isinstance(value, dict) else value
        for key, value in values.items()
    }


@dataclass
class ImportSummary:
    source_file: str
    rows_read: int = 0
    created: int = 0
    already_imported: int = 0
    changed_since_import: int = 0  # same file and row with other content: the first import is kept
    bad_amounts: int = 0
    by_format: Counter[str] = field(default_factory=Counter)
    by_review_status: Counter[str] = field(default_factory=Counter)
    by_paypal_status: Counter[str] = field(default_factory=Counter)
    paid_minor_by_currency: Counter[str] = field(default_factory=Counter)

    def count(self, legacy: LegacyPayout, bad_amount: bool) -> None:
        self.created += 1
        self.bad_amounts += bad_amount
        self.by_format[legacy.id_format] += 1
        self.by_review_status[legacy.review_status] += 1
        self.by_paypal_status[legacy.status] += 1
        if legacy.status == PAID_STATUS and legacy.amount_minor is not None:
            self.paid_minor_by_currency[legacy.currency] += legacy.amount_minor

    def as_dict(self) -> dict[str, Any]:
        return _plain(vars(self))


def _header_key(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def _columns(header: list[str]) -> dict[str, str]:
    """Our field -> the file's column name; refuses a file missing a required column."""
    by_key = {_header_key(name): name for name in reversed(header)}
    columns = {
        ours: next((by_key[alias] for alias in aliases if alias in by_key), "")
        for ours, aliases in _COLUMN_ALIASES.items()
    }
    missing = [name for name in _REQUIRED if not columns[name]]
    if missing:
        raise InvalidRequest(
            f"legacy payout file lacks column(s) {', '.join(missing)}; header is {header!r}",
            user_message="This file does not look like a PayPal payouts export.",
            action_required=f"Export with the columns {', '.join(_REQUIRED)} (and transaction ids if available).",
            details={"missing": missing, "header": header},
        )
    return columns


def _clean_cell(value: str) -> str:
    return value.replace("\x00", "\ufffd")  # PostgreSQL text cannot hold NUL


def _unique_header(header: list[str]) -> list[str]:
    seen: Counter[str] = Counter()
    names = []
    for name in (_clean_cell(cell).strip() or f"column_{n}" for n, cell in enumerate(header, start=1)):
        seen[name] += 1
        names.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return names


def _raw_row(header: list[str], cells: list[str]) -> dict[str, Any]:
    cells = [_clean_cell(cell) for cell in cells]
    raw: dict[str, Any] = dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=False))
    if len(cells) > len(header):
        raw["_extra_cells"] = cells[len(header) :]
    return raw


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """(header, [(row number, raw row)]): row 1 is the first after the header; blank lines keep their number."""
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        reader = csv.reader(handle)
        header = _unique_header(next(reader, []))
        rows: list[tuple[int, dict[str, Any]]] = []
        number = 0
        while True:
            number += 1
            try:
                cells = next(reader)
            except StopIteration:
                return header, rows
            except csv.Error as error:  # keep the row as evidence; the reader goes on with the next line
                rows.append((number, {"_csv_error": str(error)}))
                continue
            if any(cell.strip() for cell in cells):
                rows.append((number, _raw_row(header, cells)))


def _parse_amount(amount: str, currency: str) -> tuple[Money | None, str]:
    """Strictly: a plain ASCII decimal with the currency's places, positive and at most the currency's maximum
    (core.money's one rule for amounts from outside)."""
    if not amount.isascii():
        return None, f"bad amount {amount!r} {currency!r}: not a positive plain decimal"
    try:
        return money_parse_in_bounds(amount, currency.strip()), ""
    except ValueError as error:  # MoneyError, or a number too long to convert
        return None, f"bad amount {amount!r} {currency!r}: {error}"


def _valid_currency(currency: str) -> str:
    try:
        return validate_currency(currency.strip())
    except ValueError:
        return ""


def _import_review(parsed: ParsedLegacyId, status: str, amount_problem: str) -> tuple[str, str]:
    problems = [problem for problem in (parsed.note if not parsed.recognised else "", amount_problem) if problem]
    if status in NOT_PAID_STATUSES:
        return Review.NOT_PAID, "; ".join([f"PayPal status {status}: not paid", *problems])
    if status != PAID_STATUS:
        problems.insert(0, f"PayPal status {status or 'missing'}: money may still move; check PayPal first")
    return (Review.NEEDS_REVIEW, "; ".join(problems)) if problems else (Review.PARSED, "")


def _legacy_from_row(source: str, number: int, raw: dict[str, Any], columns: dict[str, str]) -> LegacyPayout:
    def cell(name: str) -> str:
        value = raw.get(columns[name], "") if columns[name] else ""
        return value if isinstance(value, str) else ""

    parsed = parse_sender_item_id(cell("sender_item_id"))
    status = cell("status").strip().upper()[:32]
    money, amount_problem = _parse_amount(cell("amount"), cell("currency"))
    if "_csv_error" in raw:
        amount_problem = f"unreadable CSV row: {raw['_csv_error']}"
    review_status, note = _import_review(parsed, status, amount_problem)
    return LegacyPayout(
        source_file=source, row_number=number, raw_row=raw, sender_item_id=cell("sender_item_id"),
        id_format=parsed.format, parsed_selection_id=parsed.selection_id, parsed_user_id=parsed.user_id,
        parsed_cycle_id=parsed.cycle_id, paypal_transaction_id=cell("paypal_transaction_id").strip()[:255],
        paypal_item_id=cell("paypal_item_id").strip()[:255], amount_minor=money.minor if money else None,
        currency=money.currency if money else _valid_currency(cell("currency")), status=status,
        review_status=review_status, review_note=note,
    )  # fmt: skip


def legacy_import(path: str | Path) -> ImportSummary:
    """Store every row of a PayPal payouts CSV once; rows already imported from this file are left alone."""
    path = Path(path)
    header, rows = _read_rows(path)
    columns = _columns(header)
    summary = ImportSummary(source_file=path.name, rows_read=len(rows))
    with transaction.atomic():
        existing = dict(LegacyPayout.objects.filter(source_file=path.name).values_list("row_number", "raw_row"))
        new = []
        for number, raw in rows:
            if number in existing:
                summary.already_imported += 1
                summary.changed_since_import += existing[number] != raw
                continue
            legacy = _legacy_from_row(path.name, number, raw, columns)
            summary.count(legacy, bad_amount=legacy.amount_minor is None)
            new.append(legacy)
        LegacyPayout.objects.bulk_create(new, batch_size=1000, ignore_conflicts=True)
        if new:
            audit_record(actor=None, action="payouts.legacy.import", after=summary.as_dict())
    return summary


# --- reconcile --------------------------------------------------------------------------------

LINK, NO_MATCH, AMBIGUOUS = "link", "no_match", "ambiguous"
CONFLICT, DUPLICATE, MISMATCH, UNRECOGNISED = "conflict", "duplicate", "mismatch", "unrecognised"
LOCKED, FAILED, TAKEN = "locked", "failed", "taken"  # nothing recorded: left as it was
_REVIEW_OF = {
    LINK: Review.LINKED,
    NO_MATCH: Review.NO_MATCH,
    AMBIGUOUS: Review.AMBIGUOUS,
    CONFLICT: Review.NEEDS_REVIEW,
    DUPLICATE: Review.NEEDS_REVIEW,
    MISMATCH: Review.NEEDS_REVIEW,
    UNRECOGNISED: Review.NEEDS_REVIEW,
}
# Exact selection ids claim their winners before cycle+user rows, and those before bare user ids guess.
_RULE_ORDER = {
    IdFormat.WINNER: 0,
    IdFormat.SELECTION_DASH_USER: 0,
    IdFormat.SELECTION_UNDERSCORE_USER: 0,
    IdFormat.W_U: 0,
    IdFormat.CYCLE_USER: 1,
    IdFormat.USER: 2,
}


@dataclass(frozen=True)
class Decision:
    outcome: str
    note: str = ""
    selection: WinnerSelection | None = None


@dataclass
class ReconcileSummary:
    executed: bool
    considered: int = 0
    linked: int = 0
    needs_review: int = 0
    ambiguous: int = 0
    no_match: int = 0
    conflicts: int = 0
    duplicates: int = 0
    mismatches: int = 0
    locked: int = 0  # a cycle was being processed: left for the next run
    failed: int = 0  # the ledger refused the posting: left for the next run
    already_reconciled: int = 0  # linked by an earlier run
    flagged_earlier: int = 0  # needs review, ambiguous or no match since import or an earlier run
    not_paid: int = 0
    by_format: Counter[str] = field(default_factory=Counter)
    linked_minor_by_currency: Counter[str] = field(default_factory=Counter)
    actions: list[str] = field(default_factory=list)

    def count(self, legacy: LegacyPayout, decision: Decision) -> None:
        self.considered += 1
        self.by_format[legacy.id_format] += 1
        review = _REVIEW_OF.get(decision.outcome)
        self.linked += review == Review.LINKED
        self.needs_review += review == Review.NEEDS_REVIEW
        self.ambiguous += review == Review.AMBIGUOUS
        self.no_match += review == Review.NO_MATCH
        self.conflicts += decision.outcome == CONFLICT
        self.duplicates += decision.outcome == DUPLICATE
        self.mismatches += decision.outcome == MISMATCH
        self.locked += decision.outcome == LOCKED
        self.failed += decision.outcome == FAILED
        if decision.outcome == LINK and legacy.amount_minor is not None:
            self.linked_minor_by_currency[legacy.currency] += legacy.amount_minor
        self.actions.append(f"{legacy.source_file}:{legacy.row_number} {legacy.sender_item_id!r}: {decision.note}")

    def as_dict(self) -> dict[str, Any]:
        return _plain({key: value for key, value in vars(self).items() if key != "actions"})


def _unpaid_selections() -> QuerySet[WinnerSelection]:
    """Neither paid outside nor paid or being paid by a sent batch (as `cycle_prepare` counts them)."""
    unsent = (PayoutBatch.Status.PREPARED, PayoutBatch.Status.APPROVED)
    being_paid = PayoutItem.objects.filter(selection=OuterRef("pk"), status__in=PayoutItem.LIVE).exclude(
        batch__status__in=unsent
    )
    return WinnerSelection.objects.filter(paid_outside=False).exclude(Exists(being_paid))


def _money(minor: int | None, currency: str) -> str:
    return f"{Money(minor, currency).decimal_string()} {currency}" if minor is not None and currency else "?"


def _by_selection_id(legacy: LegacyPayout) -> WinnerSelection | Decision:
    selection = WinnerSelection.objects.filter(pk=legacy.parsed_selection_id).first()
    if selection is None:
        return Decision(NO_MATCH, f"selection {legacy.parsed_selection_id} does not exist")
    if selection.user_id != legacy.parsed_user_id:
        note = f"selection {selection.pk} belongs to user {selection.user_id}, not user {legacy.parsed_user_id}"
        return Decision(MISMATCH, note)
    return selection


def _by_cycle_user(legacy: LegacyPayout) -> WinnerSelection | Decision:
    selection = WinnerSelection.objects.filter(cycle_id=legacy.parsed_cycle_id, user_id=legacy.parsed_user_id).first()
    if selection is None:
        return Decision(NO_MATCH, f"user {legacy.parsed_user_id} has no selection in cycle {legacy.parsed_cycle_id}")
    return selection


def _by_user_amount(legacy: LegacyPayout, claimed: dict[int, int]) -> WinnerSelection | Decision:
    same = WinnerSelection.objects.filter(
        user_id=legacy.parsed_user_id, amount_minor=legacy.amount_minor, currency=legacy.currency
    ).order_by("pk")
    matches = list(_unpaid_selections().filter(pk__in=same).exclude(pk__in=claimed))
    if len(matches) == 1:
        return matches[0]
    user, paid = legacy.parsed_user_id, _money(legacy.amount_minor, legacy.currency)
    if matches:
        ids = ", ".join(str(s.pk) for s in matches)
        return Decision(AMBIGUOUS, f"ambiguous: user {user}'s unpaid selections {ids} are all {paid}")
    taken = ", ".join(str(pk) for pk in same.values_list("pk", flat=True))
    if taken:  # the user's winnings of this amount are all paid: most likely the same prize paid twice
        return Decision(
            DUPLICATE, f"duplicate: user {user}'s selection(s) {taken} of {paid} are already paid or being paid"
        )
    return Decision(NO_MATCH, f"user {user} has no selection of {paid}")


def _find_selection(legacy: LegacyPayout, claimed: dict[int, int]) -> WinnerSelection | Decision:
    if legacy.amount_minor is None or not legacy.currency or legacy.status != PAID_STATUS:
        return Decision(UNRECOGNISED, "no paid amount to match")
    if _RULE_ORDER.get(legacy.id_format) == 0:
        return _by_selection_id(legacy)
    if legacy.id_format == IdFormat.CYCLE_USER:
        return _by_cycle_user(legacy)
    if legacy.id_format == IdFormat.USER:
        return _by_user_amount(legacy, claimed)
    return Decision(UNRECOGNISED, "sender_item_id not recognised: match by hand")


def _check_selection(legacy: LegacyPayout, selection: WinnerSelection, claimed: dict[int, int]) -> Decision:
    """May this payout be recorded as the payment of this winner? Read-only."""
    if selection.pk in claimed or selection.paid_outside:
        linked = selection.legacy_payouts.filter(review_status=Review.LINKED).values_list("pk", flat=True).first()
        earlier = claimed.get(selection.pk) or linked
        by = f"by legacy payout {earlier}" if earlier else "marked by hand"
        return Decision(DUPLICATE, f"duplicate: selection {selection.pk} is already paid outside, {by}")
    if (legacy.amount_minor, legacy.currency) != (selection.amount_minor, selection.currency):
        paid, owed = _money(legacy.amount_minor, legacy.currency), _money(selection.amount_minor, selection.currency)
        return Decision(MISMATCH, f"paid {paid} but selection {selection.pk} is {owed}")
    item = selection.items.filter(status__in=PayoutItem.LIVE).select_related("batch").first()
    if item is not None:
        return Decision(CONFLICT, f"conflict: also in batch {item.batch.sender_batch_id} (item {item.status})")
    paid = _money(legacy.amount_minor, legacy.currency)
    return Decision(LINK, f"paid selection {selection.pk} (user {selection.user_id}) {paid}", selection)


def _decide(legacy: LegacyPayout, claimed: dict[int, int]) -> Decision:
    found = _find_selection(legacy, claimed)
    return found if isinstance(found, Decision) else _check_selection(legacy, found, claimed)


def _ledger_post(legacy: LegacyPayout, selection: WinnerSelection) -> Transaction:
    assert legacy.amount_minor is not None
    money = Money(legacy.amount_minor, legacy.currency)
    description = f"Legacy PayPal payout {legacy.sender_item_id[:120]!r} ({legacy.source_file}:{legacy.row_number})"
    return transaction_post(
        idempotency_key=f"legacy-payout:{legacy.pk}",
        kind="legacy_payout",
        legs=[debit(prize_expense(money.currency), money), credit(provider_clearing("paypal", money.currency), money)],
        description=description[:255],
        metadata={
            "legacy_payout_id": legacy.pk,
            "selection_id": selection.pk,
            "paypal_transaction_id": legacy.paypal_transaction_id,
            "paypal_item_id": legacy.paypal_item_id,
        },
    )


def _flag(legacy_id: int, decision: Decision) -> Decision:
    updated = LegacyPayout.objects.filter(pk=legacy_id, review_status=Review.PARSED).update(
        review_status=_REVIEW_OF[decision.outcome], review_note=decision.note
    )
    return decision if updated else Decision(TAKEN, "decided meanwhile by another run")


def _link(legacy_id: int, selection: WinnerSelection, claimed: dict[int, int]) -> Decision:
    """Lock, check again, then post, mark paid and link together; the cycle lock keeps batches out."""
    with (
        processing_lock(key=f"payout-cycle:{selection.cycle_id}", holder=LEGACY_HOLDER, reason="legacy payouts"),
        transaction.atomic(),
    ):
        legacy = LegacyPayout.objects.select_for_update().get(pk=legacy_id)
        if legacy.review_status != Review.PARSED:
            return Decision(TAKEN, "decided meanwhile by another run")
        selection = WinnerSelection.objects.select_for_update().get(pk=selection.pk)
        decision = _check_selection(legacy, selection, claimed)
        if decision.outcome != LINK:
            return _flag(legacy.pk, decision)
        txn = _ledger_post(legacy, selection)
        selection.paid_outside = True
        selection.save(update_fields=["paid_outside", "updated_at"])
        legacy.review_status, legacy.review_note, legacy.selection = Review.LINKED, decision.note, selection
        legacy.ledger_transaction_id = txn.pk
        legacy.save(update_fields=["review_status", "review_note", "selection", "ledger_transaction_id", "updated_at"])
        audit_record(
            actor=None, action="payouts.selection.paid_outside", obj=selection, before={"paid_outside": False},
            after={"paid_outside": True, "legacy_payout_id": legacy.pk, "ledger_transaction_id": txn.pk},
        )  # fmt: skip
    return decision


def _record(legacy: LegacyPayout, decision: Decision, claimed: dict[int, int]) -> Decision:
    if decision.outcome != LINK:
        return _flag(legacy.pk, decision)
    assert decision.selection is not None
    try:
        return _link(legacy.pk, decision.selection, claimed)
    except ResourceLocked as error:
        return Decision(LOCKED, f"left for the next run: {error.message}")
    except AppError as error:  # one payout the ledger refuses must not stop the others; it stays parsed
        log.error("payouts.legacy_link_failed", legacy_payout_id=legacy.pk, code=error.code, error=error.message)
        return Decision(FAILED, f"left for the next run: {error.code}: {error.message}")


def _candidates() -> Iterator[LegacyPayout]:
    rows = LegacyPayout.objects.filter(review_status=Review.PARSED).order_by("pk")
    yield from sorted(rows, key=lambda legacy: (_RULE_ORDER.get(legacy.id_format, 3), legacy.pk))


def _start_summary(execute: bool) -> ReconcileSummary:
    counts = dict(LegacyPayout.objects.order_by().values_list("review_status").annotate(n=Count("pk")))
    flagged = sum(counts.get(status, 0) for status in (Review.NEEDS_REVIEW, Review.AMBIGUOUS, Review.NO_MATCH))
    return ReconcileSummary(
        executed=execute,
        already_reconciled=counts.get(Review.LINKED, 0),
        flagged_earlier=flagged,
        not_paid=counts.get(Review.NOT_PAID, 0),
    )


def legacy_reconcile(*, execute: bool) -> ReconcileSummary:
    """Link imported payouts to winners and record them as paid; with execute=False, only say what it would do."""
    summary = _start_summary(execute)
    claimed: dict[int, int] = {}  # selection id -> the legacy payout linked to it in this run
    for legacy in _candidates():
        decision = _decide(legacy, claimed)
        if execute:
            decision = _record(legacy, decision, claimed)
        if decision.outcome == LINK and decision.selection is not None:
            claimed[decision.selection.pk] = legacy.pk
        summary.count(legacy, decision)
    if execute:
        audit_record(actor=None, action="payouts.legacy.reconcile", after=summary.as_dict())
    return summary
