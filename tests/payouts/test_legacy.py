"""Legacy PayPal payouts: the tolerant sender_item_id parser, the CSV import and the reconcile."""

from __future__ import annotations

import csv
import random
from collections import Counter
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import InvalidRequest
from core.locks import lock_acquire
from core.models import AuditLog, ProcessingLock
from core.money import Money
from ledger.integrity import ledger_integrity_report
from ledger.models import Account, Balance, Entry, Transaction
from ledger.selectors import account_balance
from ledger.services import account_create
from payouts.legacy import MAX_ID, ParsedLegacyId, legacy_import, legacy_reconcile, parse_sender_item_id
from payouts.models import LegacyPayout, PayoutBatch, PayoutCycle, PayoutItem, WinnerSelection
from payouts.services import cycle_prepare, winnings_fund

F = LegacyPayout.IdFormat
R = LegacyPayout.ReviewStatus

# --- the parser -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("winner-12-34", ParsedLegacyId(F.WINNER, selection_id=12, user_id=34)),
        ("Winner_7_8", ParsedLegacyId(F.WINNER, selection_id=7, user_id=8)),
        ("12-34", ParsedLegacyId(F.SELECTION_DASH_USER, selection_id=12, user_id=34)),
        ("12_34", ParsedLegacyId(F.SELECTION_UNDERSCORE_USER, selection_id=12, user_id=34)),
        ("w12u34", ParsedLegacyId(F.W_U, selection_id=12, user_id=34)),
        ("W0012U0034", ParsedLegacyId(F.W_U, selection_id=12, user_id=34)),
        ("cycle-3-user-9", ParsedLegacyId(F.CYCLE_USER, cycle_id=3, user_id=9)),
        ("CYCLE_3_USER_9", ParsedLegacyId(F.CYCLE_USER, cycle_id=3, user_id=9)),
        ("42", ParsedLegacyId(F.USER, user_id=42)),
        ("  '42'\n", ParsedLegacyId(F.USER, user_id=42)),
        ("#42", ParsedLegacyId(F.USER, user_id=42)),
        (str(MAX_ID), ParsedLegacyId(F.USER, user_id=MAX_ID)),
    ],
)
def test_every_legacy_format_is_recognised(text, expected):
    assert parse_sender_item_id(text) == expected
    assert parse_sender_item_id(text).recognised


@pytest.mark.parametrize(
    ("text", "hints"),
    [
        ("prize for user 7 cycle 3", {"user_id": 7, "cycle_id": 3, "selection_id": None}),
        ("sel:5 uid=9", {"user_id": 9, "cycle_id": None, "selection_id": 5}),
        ("manual payout, see ticket", {"user_id": None, "cycle_id": None, "selection_id": None}),
        ("12-34-56", {"user_id": None, "cycle_id": None, "selection_id": None}),
        ("winner-12", {"user_id": None, "cycle_id": None, "selection_id": 12}),
        ("w12u", {"user_id": None, "cycle_id": None, "selection_id": None}),
        ("cycle-3-user-", {"user_id": None, "cycle_id": 3, "selection_id": None}),
        ("0-5", {"user_id": None, "cycle_id": None, "selection_id": None}),  # id 0 exists nowhere
        ("0", {"user_id": None, "cycle_id": None, "selection_id": None}),
        (str(MAX_ID + 1), {"user_id": None, "cycle_id": None, "selection_id": None}),  # beyond bigint
        ("9" * 5000, {"user_id": None, "cycle_id": None, "selection_id": None}),  # beyond int() digit limit
        ("١٢", {"user_id": None, "cycle_id": None, "selection_id": None}),  # non-ASCII digits are not ids
        ("w\u0131nner-1-2", {"user_id": None, "cycle_id": None, "selection_id": None}),  # dotless i
        ("user\x00 5", {"user_id": None, "cycle_id": None, "selection_id": None}),
    ],
)
def test_free_text_is_flagged_and_keeps_what_it_mentions(text, hints):
    parsed = parse_sender_item_id(text)
    assert parsed.format == F.FREE_TEXT and not parsed.recognised
    assert {"user_id": parsed.user_id, "cycle_id": parsed.cycle_id, "selection_id": parsed.selection_id} == hints
    assert parsed.note.startswith("free text")


@pytest.mark.parametrize("text", [None, "", "   ", "''", '"  "'])
def test_nothing_is_empty(text):
    assert parse_sender_item_id(text) == ParsedLegacyId(F.EMPTY, note="no sender_item_id")


def _assert_well_formed(parsed: ParsedLegacyId) -> None:
    assert parsed.format in F.values
    for value in (parsed.selection_id, parsed.user_id, parsed.cycle_id):
        assert value is None or 1 <= value <= MAX_ID
    if parsed.format in (F.WINNER, F.SELECTION_DASH_USER, F.SELECTION_UNDERSCORE_USER, F.W_U):
        assert (parsed.selection_id is not None, parsed.user_id is not None, parsed.cycle_id) == (True, True, None)
    if parsed.format == F.CYCLE_USER:
        assert (parsed.selection_id, parsed.user_id is not None, parsed.cycle_id is not None) == (None, True, True)
    if parsed.format == F.USER:
        assert (parsed.selection_id, parsed.user_id is not None, parsed.cycle_id) == (None, True, None)
    if not parsed.recognised:
        assert parsed.note


@settings(max_examples=500, database=None, deadline=None)
@given(st.text())
def test_the_parser_never_raises_on_any_text(text):
    _assert_well_formed(parse_sender_item_id(text))


@settings(max_examples=500, database=None, deadline=None)
@given(st.text(alphabet="winercyclusWU0123456789-_# '\"\n\t", max_size=40))
def test_the_parser_never_raises_on_near_misses(text):
    _assert_well_formed(parse_sender_item_id(text))


_ids = st.integers(min_value=1, max_value=MAX_ID)


@settings(max_examples=300, database=None, deadline=None)
@given(selection=_ids, user=_ids, cycle=_ids)
def test_every_format_round_trips_any_id(selection, user, cycle):
    assert parse_sender_item_id(f"winner-{selection}-{user}") == ParsedLegacyId(F.WINNER, selection, user)
    assert parse_sender_item_id(f"{selection}-{user}") == ParsedLegacyId(F.SELECTION_DASH_USER, selection, user)
    assert parse_sender_item_id(f"{selection}_{user}") == ParsedLegacyId(F.SELECTION_UNDERSCORE_USER, selection, user)
    assert parse_sender_item_id(f"w{selection}u{user}") == ParsedLegacyId(F.W_U, selection, user)
    assert parse_sender_item_id(f"cycle-{cycle}-user-{user}") == ParsedLegacyId(F.CYCLE_USER, None, user, cycle)
    assert parse_sender_item_id(str(user)) == ParsedLegacyId(F.USER, None, user)


# --- a generated legacy file ------------------------------------------------------------------

HEADER = ["Transaction ID", "Payout Item ID", "Sender Item ID", "Recipient", "Amount", "Currency", "Status", "Date"]
CURRENCIES = ("USD", "USD", "USD", "USD", "EUR", "EUR", "JPY")
BAD_AMOUNTS = [
    ("1,000.00", "USD"), ("abc", "USD"), ("10.001", "USD"), ("$5.00", "USD"), ("", "EUR"), ("-5.00", "USD"),
    ("0.00", "EUR"), ("1e3", "USD"), ("12.5.0", "USD"), ("10.5", "JPY"), ("\u0661\u0662.\u0660\u0660", "USD"),
    ("99999999999999999999999.00", "USD"), ("5.00", "usd"), ("5.00", "XXX"), ("5.00", ""),
]  # fmt: skip
FREE_TEXTS = [
    "Prize for user {user}", "manual payout march", "refund?", "user:{user} cycle {cycle}", "see ticket #{user}",
    "bonus\x00payout", "winner {user} (resent)", "PAYOUT", "ajuste manual ñ", "🎉 congrats",
]  # fmt: skip
NOT_PAID = ("FAILED", "RETURNED", "BLOCKED", "REFUNDED", "REVERSED", "DENIED", "CANCELED")
STILL_MOVING = ("PENDING", "UNCLAIMED", "ONHOLD")
EXACT = (F.WINNER, F.SELECTION_DASH_USER, F.SELECTION_UNDERSCORE_USER, F.W_U)


@dataclass
class World:
    cycles: list[PayoutCycle]
    pool: list[WinnerSelection]  # winners no batch has paid
    twins: list[tuple[WinnerSelection, WinnerSelection]]  # one user, two winnings of the same amount
    in_batch: list[WinnerSelection]  # paid by a completed batch of this system
    cycles_of_user: dict[int, set[int]]


@dataclass
class Row:
    expect: str  # link, duplicate, ambiguous, no_match, mismatch, conflict, bad_amount, free_text, ..
    sender_item_id: str
    format: str
    amount: str
    currency: str
    status: str = "SUCCESS"
    selection: WinnerSelection | None = None
    cells: list[str] = field(default_factory=list)


def _amounts(rng: random.Random, currency: str, count: int) -> list[int]:
    return rng.sample(range(500, 100_000) if currency != "JPY" else range(500, 20_000), count)


def build_world(rng: random.Random, user_model: Any, operator: Any) -> World:
    cycles = [PayoutCycle.objects.create(name=f"legacy cycle {n}") for n in range(4)]
    users = user_model.objects.bulk_create(user_model(username=f"legacy-winner-{n}") for n in range(380))
    selections, cycles_of_user = [], {}
    for user in users[:360]:
        chosen = rng.sample(cycles, 2)
        cycles_of_user[user.pk] = {c.pk for c in chosen}
        currency = rng.choice(CURRENCIES)
        for cycle, amount in zip(chosen, _amounts(rng, currency, 2), strict=True):  # distinct amounts per winner
            selections.append(_selection(cycle, user, amount, currency))
    for user in users[360:]:  # twins: one winner, the same amount in two cycles
        amount = _amounts(rng, "USD", 1)[0]
        selections += [_selection(cycles[0], user, amount, "USD"), _selection(cycles[1], user, amount, "USD")]
    selections = WinnerSelection.objects.bulk_create(selections)
    regular = selections[:720]
    in_batch = rng.sample([s for s in regular if s.cycle_id == cycles[0].pk], 10)
    _pay_in_a_completed_batch(cycles[0], in_batch, operator)
    pool = [s for s in regular if s not in in_batch]
    rng.shuffle(pool)
    twins = [(selections[720 + 2 * n], selections[721 + 2 * n]) for n in range(20)]
    return World(cycles, pool, twins, in_batch, cycles_of_user)


def _selection(cycle: PayoutCycle, user: Any, amount: int, currency: str) -> WinnerSelection:
    return WinnerSelection(
        cycle=cycle, user=user, amount_minor=amount, currency=currency, recipient_type="EMAIL",
        recipient=f"{user.username}@example.com",
    )  # fmt: skip


def _pay_in_a_completed_batch(cycle: PayoutCycle, selections: list[WinnerSelection], operator: Any) -> None:
    batch = PayoutBatch.objects.create(
        cycle=cycle, provider="paypal", sender_batch_id=f"cycle-{cycle.pk}-paid-earlier", checksum="0" * 64,
        status=PayoutBatch.Status.COMPLETED, currency="USD", total_minor=1, item_count=len(selections),
        prepared_by=operator,
    )  # fmt: skip
    for s in selections:
        PayoutItem.objects.create(
            batch=batch, selection=s, sender_item_id=f"winner-{s.pk}-{s.user_id}", amount_minor=s.amount_minor,
            currency=s.currency, recipient_type="EMAIL", receiver=s.recipient, status=PayoutItem.Status.SUCCESS,
        )  # fmt: skip


def _format_exact(fmt: str, s: WinnerSelection, user_id: int | None = None) -> str:
    user = user_id or s.user_id
    return {
        F.WINNER: f"winner-{s.pk}-{user}",
        F.SELECTION_DASH_USER: f"{s.pk}-{user}",
        F.SELECTION_UNDERSCORE_USER: f"{s.pk}_{user}",
        F.W_U: f"w{s.pk}u{user}",
    }[fmt]


def _exact_id(rng: random.Random, selection: WinnerSelection, user_id: int | None = None) -> tuple[str, str]:
    id_format = rng.choice(EXACT)
    return _format_exact(id_format, selection, user_id), id_format


def _paid(selection: WinnerSelection, extra_minor: int = 0) -> tuple[str, str]:
    return Money(selection.amount_minor + extra_minor, selection.currency).decimal_string(), selection.currency


def _any_id(rng: random.Random, s: WinnerSelection) -> tuple[str, str]:
    return rng.choice([_exact_id(rng, s), (f"cycle-{s.cycle_id}-user-{s.user_id}", F.CYCLE_USER)])


def _link_rows(rng: random.Random, world: World) -> list[Row]:
    rows = []
    for fmt, count in ((F.WINNER, 140), (F.SELECTION_DASH_USER, 90), (F.SELECTION_UNDERSCORE_USER, 80), (F.W_U, 65)):
        for _ in range(count):
            s = world.pool.pop()
            rows.append(Row("link", _format_exact(fmt, s), fmt, *_paid(s), selection=s))
    for _ in range(80):
        s = world.pool.pop()
        rows.append(Row("link", f"cycle-{s.cycle_id}-user-{s.user_id}", F.CYCLE_USER, *_paid(s), selection=s))
    for _ in range(50):
        s = world.pool.pop()
        rows.append(Row("link", f"{s.user_id}", F.USER, *_paid(s), selection=s))
    exact = [(row, s) for row in rows if row.format in EXACT and (s := row.selection) is not None]
    for a, b in world.twins[15:]:  # one twin paid by its exact id, so the bare user id can only mean the other
        rows.append(Row("link", *_exact_id(rng, a), *_paid(a), selection=a))
        rows.append(Row("link", f"{b.user_id}", F.USER, *_paid(b), selection=b))
    structured = [row for row in rows if row.format != F.USER]
    copies = [Row("duplicate", r.sender_item_id, r.format, r.amount, r.currency, selection=r.selection)
              for r in rng.sample(structured, 15)]  # fmt: skip
    # The same prize paid again under the bare user id: exact ids are matched first, whatever the file order.
    bare = [Row("bare_duplicate", f"{s.user_id}", F.USER, r.amount, r.currency) for r, s in rng.sample(exact, 10)]
    return rows + copies + bare


def _unmatched_rows(rng: random.Random, world: World) -> list[Row]:
    rows = [Row("ambiguous", f"{a.user_id}", F.USER, *_paid(a)) for a, _ in world.twins[:15]]
    top_selection = max(s.pk for s in world.pool + world.in_batch) + 10_000
    top_user = max(world.cycles_of_user) + 10_000
    for n in range(15):
        s = rng.choice(world.pool)
        rows.append(Row("no_match", f"winner-{top_selection + n}-{s.user_id}", F.WINNER, *_paid(s)))
        rows.append(Row("no_match", f"{top_user + n}", F.USER, "25.00", "USD"))
    for user_id in rng.sample(sorted(world.cycles_of_user), 10):
        cycle = next(c for c in world.cycles if c.pk not in world.cycles_of_user[user_id])
        rows.append(Row("no_match", f"cycle-{cycle.pk}-user-{user_id}", F.CYCLE_USER, "25.00", "USD"))
    for _ in range(10):
        s = world.pool.pop()
        other = rng.choice([o for o in world.pool if o.user_id != s.user_id])
        rows.append(Row("mismatch", *_exact_id(rng, s, user_id=other.user_id), *_paid(s)))
        s = world.pool.pop()
        rows.append(Row("mismatch", *_any_id(rng, s), *_paid(s, extra_minor=1)))
    rows += [Row("conflict", *_exact_id(rng, s), *_paid(s), selection=s) for s in world.in_batch]
    return rows


def _flagged_at_import_rows(rng: random.Random, world: World) -> list[Row]:
    rows = []
    for n in range(30):
        rows.append(Row("bad_amount", *_any_id(rng, world.pool.pop()), *BAD_AMOUNTS[n % len(BAD_AMOUNTS)]))
    for n in range(30):
        s = rng.choice(world.pool)
        text = FREE_TEXTS[n % len(FREE_TEXTS)].format(user=s.user_id, cycle=s.cycle_id)
        rows.append(Row("free_text", text, F.FREE_TEXT, *_paid(s)))
    rows += [Row("empty", rng.choice(["", "  "]), F.EMPTY, "10.00", "USD") for _ in range(5)]
    for n in range(40):
        s = world.pool.pop()
        rows.append(Row("not_paid", *_any_id(rng, s), *_paid(s), status=NOT_PAID[n % len(NOT_PAID)].lower()))
    for n in range(20):
        s = world.pool.pop()
        rows.append(Row("still_moving", *_any_id(rng, s), *_paid(s), status=STILL_MOVING[n % len(STILL_MOVING)]))
    return rows


def generate_rows(seed: int, world: World) -> list[Row]:
    rng = random.Random(seed)
    rows = _link_rows(rng, world) + _unmatched_rows(rng, world) + _flagged_at_import_rows(rng, world)
    rng.shuffle(rows)
    first_of: dict[int, Row] = {}
    for number, row in enumerate(rows, start=1):
        row.cells = [f"TXN{seed}{number:05d}", f"ITEM{number:05d}", row.sender_item_id, "someone@example.com",
                     row.amount, row.currency, row.status, "2023-03-01T10:00:00Z"]  # fmt: skip
        if row.expect in ("link", "duplicate"):  # of two payouts for one winner, the first in the file links
            assert row.selection is not None
            row.expect = "duplicate" if row.selection.pk in first_of else "link"
            first_of.setdefault(row.selection.pk, row)
    return rows


def write_csv(path: Path, rows: list[Row]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(row.cells for row in rows)
    return path


EXPECTED_REVIEW = {
    "link": R.LINKED,
    "duplicate": R.NEEDS_REVIEW,
    "bare_duplicate": R.NEEDS_REVIEW,
    "ambiguous": R.AMBIGUOUS,
    "no_match": R.NO_MATCH,
    "mismatch": R.NEEDS_REVIEW,
    "conflict": R.NEEDS_REVIEW,
    "bad_amount": R.NEEDS_REVIEW,
    "free_text": R.NEEDS_REVIEW,
    "empty": R.NEEDS_REVIEW,
    "not_paid": R.NOT_PAID,
    "still_moving": R.NEEDS_REVIEW,
}


@pytest.fixture
def operator(django_user_model):
    user = django_user_model.objects.create_user("legacy-operator", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename="prepare_payoutbatch"))
    return django_user_model.objects.get(pk=user.pk)


@pytest.fixture
def legacy_file(tmp_path, django_user_model, operator):
    world = build_world(random.Random(2024), django_user_model, operator)
    rows = generate_rows(7, world)
    return world, rows, write_csv(tmp_path / "paypal-payouts-2023.csv", rows)


def snapshot() -> dict[str, Any]:
    """Everything a reconcile could change, apart from its own audit rows."""
    return {
        "legacy": list(LegacyPayout.objects.order_by("pk").values()),
        "selections": list(WinnerSelection.objects.order_by("pk").values()),
        "items": list(PayoutItem.objects.order_by("pk").values()),
        "transactions": list(Transaction.objects.order_by("pk").values_list("pk", "idempotency_key")),
        "entries": Entry.objects.count(),
        "balances": list(Balance.objects.order_by("pk").values()),
        "accounts": list(Account.objects.order_by("code").values_list("code", flat=True)),
        "locks": ProcessingLock.objects.count(),
    }


def _count(rows: list[Row], *expects: str) -> int:
    return sum(row.expect in expects for row in rows)


def _linked_minor(rows: list[Row]) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for row in rows:
        if row.expect == "link" and row.selection is not None:
            totals[row.selection.currency] += row.selection.amount_minor
    return dict(totals)


@pytest.mark.slow
@pytest.mark.django_db
def test_the_import_keeps_every_row_and_flags_what_does_not_parse(legacy_file):
    _, rows, path = legacy_file
    out = StringIO()
    call_command("import_legacy_payouts", str(path), stdout=out)
    assert LegacyPayout.objects.count() == len(rows) == 750
    assert "750 row(s) read, 750 new, 0 already imported" in out.getvalue()
    stored = list(LegacyPayout.objects.order_by("row_number"))
    assert [legacy.row_number for legacy in stored] == list(range(1, 751))
    assert Counter(legacy.id_format for legacy in stored) == Counter(row.format for row in rows)
    at_import = Counter(
        R.PARSED if row.expect not in ("bad_amount", "free_text", "empty", "not_paid", "still_moving")
        else EXPECTED_REVIEW[row.expect]
        for row in rows
    )  # fmt: skip
    assert Counter(legacy.review_status for legacy in stored) == at_import
    assert at_import == {R.PARSED: 625, R.NEEDS_REVIEW: 85, R.NOT_PAID: 40}
    bad = [legacy for legacy in stored if rows[legacy.row_number - 1].expect == "bad_amount"]
    assert len(bad) == 30 and all(legacy.amount_minor is None for legacy in bad)
    assert all("bad amount" in legacy.review_note for legacy in bad)
    for legacy, row in zip(stored, rows, strict=True):  # the raw row is kept as read
        assert legacy.raw_row["Sender Item ID"] == row.sender_item_id.replace("\x00", "\ufffd")
        assert (legacy.raw_row["Amount"], legacy.paypal_transaction_id) == (row.amount, row.cells[0])
    audit = AuditLog.objects.get(action="payouts.legacy.import")
    assert (audit.actor_repr, audit.after["created"], audit.after["bad_amounts"]) == ("system", 750, 30)

    again = legacy_import(path)
    assert (again.created, again.already_imported, again.changed_since_import) == (0, 750, 0)
    assert LegacyPayout.objects.count() == 750 and AuditLog.objects.filter(action="payouts.legacy.import").count() == 1


@pytest.mark.slow
@pytest.mark.django_db
def test_reconcile_links_winners_once_posts_them_and_a_second_run_changes_nothing(legacy_file, operator):
    world, rows, path = legacy_file
    legacy_import(path)

    before = snapshot(), AuditLog.objects.count()
    dry = legacy_reconcile(execute=False)
    assert (snapshot(), AuditLog.objects.count()) == before  # a dry run writes nothing

    summary = legacy_reconcile(execute=True)
    expected = {
        "considered": 625, "linked": 515, "needs_review": 55, "ambiguous": 15, "no_match": 40, "conflicts": 10,
        "duplicates": 25, "mismatches": 20, "locked": 0, "already_reconciled": 0, "flagged_earlier": 85,
        "not_paid": 40,
    }  # fmt: skip
    assert {key: getattr(summary, key) for key in expected} == expected
    assert summary.linked == _count(rows, "link") and summary.ambiguous == _count(rows, "ambiguous")
    assert summary.no_match == _count(rows, "no_match")
    assert summary.needs_review == _count(rows, "duplicate", "bare_duplicate", "mismatch", "conflict")
    assert dict(summary.linked_minor_by_currency) == _linked_minor(rows)
    assert {key: getattr(dry, key) for key in expected} == expected  # the dry run said what happened
    assert dry.linked_minor_by_currency == summary.linked_minor_by_currency

    _assert_rows_decided_as_generated(rows)
    _assert_winners_marked_paid_once(rows, world)
    _assert_ledger_records_each_payout_once(rows)
    assert AuditLog.objects.filter(action="payouts.selection.paid_outside", actor=None).count() == 515
    run = AuditLog.objects.get(action="payouts.legacy.reconcile")
    assert (run.actor_repr, run.after["linked"], run.after["conflicts"]) == ("system", 515, 10)

    state, audits = snapshot(), AuditLog.objects.count()
    second = legacy_reconcile(execute=True)
    assert snapshot() == state  # same rows, winners, items and no new ledger transaction
    assert AuditLog.objects.count() == audits + 1  # only the run itself is audited
    assert (second.considered, second.linked, second.already_reconciled, second.flagged_earlier) == (0, 0, 515, 195)


def _assert_rows_decided_as_generated(rows: list[Row]) -> None:
    by_number = {legacy.row_number: legacy for legacy in LegacyPayout.objects.all()}
    for number, row in enumerate(rows, start=1):
        legacy = by_number[number]
        assert legacy.review_status == EXPECTED_REVIEW[row.expect], (row, legacy.review_note)
        if row.expect == "link":
            assert row.selection is not None and legacy.selection_id == row.selection.pk
            assert legacy.ledger_transaction_id is not None
        else:
            assert (legacy.selection_id, legacy.ledger_transaction_id) == (None, None)
        if row.expect == "conflict":
            assert legacy.review_note.startswith("conflict: also in batch cycle-")
        if row.expect == "duplicate":
            assert legacy.review_note.startswith("duplicate: selection ")
        if row.expect == "bare_duplicate":
            assert legacy.review_note.startswith(f"duplicate: user {row.sender_item_id}'s selection(s) ")


def _assert_winners_marked_paid_once(rows: list[Row], world: World) -> None:
    linked = {row.selection.pk for row in rows if row.expect == "link" and row.selection is not None}
    assert len(linked) == 515
    assert set(WinnerSelection.objects.filter(paid_outside=True).values_list("pk", flat=True)) == linked
    assert not linked & {s.pk for s in world.in_batch}  # paid by a batch: never recorded twice
    assert LegacyPayout.objects.filter(review_status=R.LINKED).values("selection").distinct().count() == 515


def _assert_ledger_records_each_payout_once(rows: list[Row]) -> None:
    postings = Transaction.objects.filter(kind="legacy_payout")
    assert postings.count() == 515
    keys = set(postings.values_list("idempotency_key", flat=True))
    linked_ids = LegacyPayout.objects.filter(review_status=R.LINKED).values_list("pk", flat=True)
    assert keys == {f"legacy-payout:{pk}" for pk in linked_ids}
    for currency, minor in _linked_minor(rows).items():
        clearing = account_balance(Account.objects.get(code=f"provider:paypal:clearing:{currency}"))
        expense = account_balance(Account.objects.get(code=f"platform:prize-expense:{currency}"))
        assert (clearing.posted.minor, expense.posted.minor) == (-minor, minor)
    assert ledger_integrity_report().findings == []


@pytest.mark.slow
@pytest.mark.django_db
def test_winners_paid_in_legacy_are_not_batched_again(legacy_file, operator):
    world, rows, path = legacy_file
    legacy_import(path)
    legacy_reconcile(execute=True)
    for currency in ("USD", "EUR", "JPY"):
        winnings_fund(amount=Money(10**12, currency), reference=f"legacy-test-{currency}")
    paid_in_legacy = {row.selection.pk for row in rows if row.expect == "link" and row.selection is not None}
    paid_by_batch = {s.pk for s in world.in_batch}
    held_total = 0
    for cycle in world.cycles:
        batches = cycle_prepare(cycle_id=cycle.pk, actor=operator)
        batched = set(PayoutItem.objects.filter(batch__in=batches).values_list("selection_id", flat=True))
        winners = set(cycle.selections.values_list("pk", flat=True))
        held = held_for_review(cycle)
        held_total += len(held)
        assert batched == winners - paid_in_legacy - paid_by_batch - held
        assert batched and not batched & paid_in_legacy
    assert held_total > 0  # successful legacy payouts still under review hold their winners back
    assert ledger_integrity_report().findings == []


@pytest.mark.slow
@pytest.mark.django_db
def test_the_commands_dry_run_then_execute(legacy_file):
    _, _, path = legacy_file
    call_command("import_legacy_payouts", str(path), stdout=StringIO())
    before = snapshot(), AuditLog.objects.count()
    out = StringIO()
    call_command("reconcile_legacy_payouts", "--dry-run", stdout=out)
    assert (snapshot(), AuditLog.objects.count()) == before
    text = out.getvalue()
    assert "Dry run, nothing written; would reconcile 625 legacy payout(s)" in text
    assert "Linked (winner marked paid, ledger posted): 515" in text
    assert "Needs review: 55 (conflicts 10, duplicates 25, amount or user mismatches 20)" in text
    assert text.count(": paid selection ") == 515 and text.count("conflict: also in batch") == 10

    out = StringIO()
    call_command("reconcile_legacy_payouts", "--execute", stdout=out)
    assert "Reconciled 625 legacy payout(s)" in out.getvalue()
    assert WinnerSelection.objects.filter(paid_outside=True).count() == 515
    out = StringIO()
    call_command("reconcile_legacy_payouts", "--execute", stdout=out)
    assert "Reconciled 0 legacy payout(s) waiting: none." in out.getvalue()
    assert "Already reconciled by earlier runs: 515; flagged earlier: 195; not paid by PayPal: 40" in out.getvalue()


@pytest.mark.django_db
@pytest.mark.parametrize("flags", [[], ["--dry-run", "--execute"]])
def test_reconcile_needs_exactly_one_mode(flags):
    with pytest.raises(CommandError):
        call_command("reconcile_legacy_payouts", *flags)


# --- small files ------------------------------------------------------------------------------


def _winner(django_user_model, cycle: PayoutCycle, name: str, amount: int, currency: str = "USD") -> WinnerSelection:
    user = django_user_model.objects.create_user(name)
    return WinnerSelection.objects.create(
        cycle=cycle, user=user, amount_minor=amount, currency=currency, recipient_type="EMAIL",
        recipient=f"{name}@example.com",
    )  # fmt: skip


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.django_db
def test_a_file_without_the_needed_columns_is_refused(tmp_path):
    path = _write(tmp_path / "wrong.csv", "id,total\n1,2\n")
    with pytest.raises(InvalidRequest) as error:
        legacy_import(path)
    assert error.value.details["missing"] == ["sender_item_id", "amount", "currency", "status"]
    with pytest.raises(CommandError, match="lacks column"):
        call_command("import_legacy_payouts", str(path))
    with pytest.raises(CommandError, match="cannot read"):
        call_command("import_legacy_payouts", str(tmp_path / "missing.csv"))
    assert not LegacyPayout.objects.exists()


@pytest.mark.django_db
def test_odd_rows_are_kept_not_dropped(tmp_path):
    text = (
        "\ufeffsender_item_id,amount,currency,status,transaction_id\n"
        "42,10.00,USD,SUCCESS,T1,surplus\n"  # an extra cell
        "43,5.00\n"  # cells missing
        "\n"  # a blank line keeps its number
        "bad\x00text,1.00,JPY,SUCCESS,T4\n"
        "w1u2,7,JPY,success,T5\n"
        f"{'x' * 140_000},1.00,USD,SUCCESS,T6\n"  # beyond the csv module's field limit
    )
    summary = legacy_import(_write(tmp_path / "odd.csv", text))
    assert (summary.rows_read, summary.created, summary.bad_amounts) == (5, 5, 3)
    rows = {legacy.row_number: legacy for legacy in LegacyPayout.objects.all()}
    assert sorted(rows) == [1, 2, 4, 5, 6]
    assert rows[1].raw_row["_extra_cells"] == ["surplus"] and rows[1].amount_minor == 1000
    assert (rows[2].review_status, rows[2].currency, rows[2].status) == (R.NEEDS_REVIEW, "", "")
    assert rows[4].sender_item_id == "bad\ufffdtext" and rows[4].id_format == F.FREE_TEXT
    assert "bad amount '1.00' 'JPY'" in rows[4].review_note
    assert (rows[5].amount_minor, rows[5].currency, rows[5].status) == (7, "JPY", "SUCCESS")
    assert (rows[5].id_format, rows[5].review_status) == (F.W_U, R.PARSED)
    assert rows[6].raw_row == {"_csv_error": "field larger than field limit (131072)"}
    assert rows[6].review_status == R.NEEDS_REVIEW and "unreadable CSV row" in rows[6].review_note


@pytest.mark.django_db
def test_a_changed_file_keeps_what_was_first_imported(tmp_path):
    path = _write(tmp_path / "p.csv", "sender_item_id,amount,currency,status\n42,10.00,USD,SUCCESS\n")
    legacy_import(path)
    _write(path, "sender_item_id,amount,currency,status\n42,99.00,USD,SUCCESS\n43,1.00,USD,SUCCESS\n")
    summary = legacy_import(path)
    assert (summary.created, summary.already_imported, summary.changed_since_import) == (1, 1, 1)
    assert list(LegacyPayout.objects.order_by("row_number").values_list("amount_minor", flat=True)) == [1000, 100]


@pytest.mark.django_db
def test_a_winner_in_an_unsent_batch_is_a_conflict_not_a_second_payment(tmp_path, django_user_model, operator):
    cycle = PayoutCycle.objects.create(name="c")
    winner = _winner(django_user_model, cycle, "ann", 2500)
    winnings_fund(amount=Money(10_000, "USD"), reference="conflict-test")
    (batch,) = cycle_prepare(cycle_id=cycle.pk, actor=operator)
    path = _write(tmp_path / "p.csv", f"sender_item_id,amount,currency,status\n{winner.user_id},25.00,USD,SUCCESS\n")
    legacy_import(path)
    summary = legacy_reconcile(execute=True)
    assert (summary.linked, summary.conflicts) == (0, 1)
    legacy = LegacyPayout.objects.get()
    assert (legacy.review_status, legacy.review_note) == (
        R.NEEDS_REVIEW, f"conflict: also in batch {batch.sender_batch_id} (item NEW)"
    )  # fmt: skip
    winner.refresh_from_db()
    assert not winner.paid_outside and not Transaction.objects.filter(kind="legacy_payout").exists()


@pytest.mark.django_db
def test_a_cycle_being_processed_is_left_for_the_next_run(tmp_path, django_user_model):
    cycle = PayoutCycle.objects.create(name="c")
    winner = _winner(django_user_model, cycle, "bob", 1500, "EUR")
    row = f"winner-{winner.pk}-{winner.user_id},15.00,EUR,SUCCESS"
    path = _write(tmp_path / "p.csv", f"sender_item_id,amount,currency,status\n{row}\n")
    legacy_import(path)
    lock = lock_acquire(key=f"payout-cycle:{cycle.pk}", holder="someone-preparing")
    assert legacy_reconcile(execute=True).locked == 1
    assert LegacyPayout.objects.get().review_status == R.PARSED
    lock.delete()
    summary = legacy_reconcile(execute=True)
    assert (summary.linked, dict(summary.linked_minor_by_currency)) == (1, {"EUR": 1500})
    winner.refresh_from_db()
    assert winner.paid_outside and LegacyPayout.objects.get().selection_id == winner.pk


@pytest.mark.django_db
def test_a_posting_the_ledger_refuses_records_nothing_and_the_row_waits(tmp_path, django_user_model):
    cycle = PayoutCycle.objects.create(name="c")
    winner = _winner(django_user_model, cycle, "cat", 900, "GBP")
    path = _write(tmp_path / "p.csv", f"sender_item_id,amount,currency,status\n{winner.user_id},9.00,GBP,SUCCESS\n")
    legacy_import(path)
    # the prize expense account exists but may not go negative, so the ledger refuses the debit
    account_create(code="platform:prize-expense:GBP", name="wrong", type="liability", currency="GBP")
    summary = legacy_reconcile(execute=True)
    assert (summary.linked, summary.failed) == (0, 1)
    winner.refresh_from_db()
    assert not winner.paid_outside and not Transaction.objects.exists() and not ProcessingLock.objects.exists()
    assert LegacyPayout.objects.get().review_status == R.PARSED  # tried again by the next run


def held_for_review(cycle) -> set[int]:
    """Winners a successful legacy payout under review may have paid: by selection, or by user in this cycle."""
    unresolved = LegacyPayout.objects.filter(
        status="SUCCESS", review_status__in=["parsed", "needs_review", "ambiguous"]
    ).values_list("parsed_selection_id", "parsed_user_id", "parsed_cycle_id")
    held = set()
    for selection in cycle.selections.all():
        for selection_id, user_id, cycle_id in unresolved:
            if selection_id == selection.pk or (
                selection_id is None and user_id == selection.user_id and cycle_id in (None, cycle.pk)
            ):
                held.add(selection.pk)
    return held
