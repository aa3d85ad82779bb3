"""The payouts admin: the CSV import of winners, progress formatted with its currency, and actions that call
the services with the signed-in user and report their outcome, or the error's user_message, as messages."""

from __future__ import annotations

import re
import uuid

import pytest
from django.contrib.auth.models import Group, User
from django.contrib.messages import constants as message_levels
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from core.models import AuditLog
from core.money import Money
from core.roles import roles_sync
from ledger.models import Account
from ledger.selectors import account_balance
from payouts.models import PayoutBatch, PayoutCycle, PayoutItem, WinnerSelection
from payouts.services import batch_execute, batch_sync, cycle_prepare, winnings_fund
from tests.staff import client_for

pytestmark = pytest.mark.django_db

IMPORT_URL = reverse("admin:payouts_winnerselection_import")
NO_PERMISSION = (
    "You do not have permission to do this. Ask an administrator for the permission '{}' or a finance role with it."
)


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.PROVIDER_STATE_KEY_PREFIX = f"test:payouts-admin:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1


def member(username: str, *roles: str) -> User:
    roles_sync()
    user = User.objects.create_user(username, is_staff=True)
    user.groups.set(Group.objects.filter(name__in=roles))
    return User.objects.get(pk=user.pk)


@pytest.fixture
def operator() -> User:
    return member("operator", "Finance operator")


@pytest.fixture
def approver() -> User:
    return member("approver", "Finance approver")


@pytest.fixture
def viewer() -> User:
    return member("viewer", "Finance viewer")


@pytest.fixture
def cycle() -> PayoutCycle:
    cycle = PayoutCycle.objects.create(name="November")
    receivers = ["paid@example.com", "unclaimed@example.com", "fail@example.com", "return@example.com"]
    for n, receiver in enumerate(receivers):
        WinnerSelection.objects.create(
            cycle=cycle, user=User.objects.create_user(f"winner-{n}"), amount_minor=10_000 * (n + 1), currency="USD",
            recipient_type="EMAIL", recipient=receiver,
        )  # fmt: skip
    winnings_fund(amount=Money(1_000_000, "USD"), reference="pool-1")
    return cycle


def messages_of(response) -> list[tuple[int, str]]:
    return [(message.level, str(message)) for message in response.context["messages"]]


def run_action(client: Client, model: str, action: str, *ids: int, confirm: bool = False):
    """Submit a changelist action; with confirm, as if from its confirmation page."""
    data: dict[str, object] = {"action": action, "_selected_action": [str(pk) for pk in ids], "index": "0"}
    if confirm:
        data["post"] = "yes"
    return client.post(reverse(f"admin:payouts_{model}_changelist"), data, follow=True)


def available(code: str) -> int:
    return account_balance(Account.objects.get(code=code)).available.minor


def settled(sandbox, batch: PayoutBatch, operator: User) -> PayoutBatch:
    """Sent, and every item final at PayPal: paid, unclaimed, failed, returned."""
    batch = batch_execute(batch_id=batch.pk, actor=operator)
    for _ in range(3):
        sandbox.tick()
    return batch_sync(batch_id=batch.pk)


def row_cells(html: str, first_cell: str) -> list[str]:
    rows = [row for row in re.split(r"<tr\b", html) if f">{first_cell}</a>" in row]
    assert len(rows) == 1, f"expected one row for {first_cell}"
    cells = re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", rows[0], re.S)
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in cells]


# --- CSV import -------------------------------------------------------------------------------


def upload(client: Client, cycle: PayoutCycle, text: str):
    csv_file = SimpleUploadedFile("winners.csv", text.encode(), content_type="text/csv")
    return client.post(IMPORT_URL, {"cycle": cycle.pk, "file": csv_file}, follow=True)


def test_csv_import_creates_every_winner_in_exact_minor_units(operator):
    cycle = PayoutCycle.objects.create(name="December")
    alice, _bob, carol = (User.objects.create_user(name) for name in ("alice", "bob", "carol"))
    text = (
        "user_id,username,amount,currency,recipient_type,recipient\n"
        f"{alice.pk},,12.34,USD,EMAIL,alice@example.com\n"
        ",bob,1000,JPY,PHONE,+639171234567\n"
        f"{carol.pk},carol,1.5,BHD,PAYPAL_ID,ABCDEFGHJKLMN\n"
    )

    response = upload(client_for(operator), cycle, text)

    assert messages_of(response) == [(message_levels.SUCCESS, f"{cycle}: imported 3 winner(s).")]
    assert response.redirect_chain[-1][0].endswith(f"?cycle__id__exact={cycle.pk}")
    rows = cycle.selections.order_by("pk").values_list(
        "user__username", "amount_minor", "currency", "recipient_type", "recipient"
    )
    assert list(rows) == [
        ("alice", 1234, "USD", "EMAIL", "alice@example.com"),
        ("bob", 1000, "JPY", "PHONE", "+639171234567"),
        ("carol", 1500, "BHD", "PAYPAL_ID", "ABCDEFGHJKLMN"),
    ]
    audit = AuditLog.objects.get(action="payouts.selections.import")
    assert (audit.actor, audit.object_id, audit.after) == (
        operator,
        str(cycle.pk),
        {"count": 3, "total_minor": {"USD": 1234, "JPY": 1000, "BHD": 1500}},
    )
    html = response.content.decode()
    assert "$12.34" in html and "¥1,000" in html and "1.500 BHD" in html


def test_csv_import_is_all_or_nothing_and_lists_every_problem_by_line(operator, cycle):
    names = ("alice", "bob", "carol", "erin", "frank", "gina", "hank", "ivan")
    users = {name: User.objects.create_user(name).pk for name in names}
    already = cycle.selections.first()
    text = (
        "user_id,username,amount,currency,recipient_type,recipient\n"
        f"{users['alice']},,12.34,USD,EMAIL,alice@example.com\n"  # 2: fine on its own
        f"{users['bob']},,12.345,USD,EMAIL,bob@example.com\n"
        ",nobody,5.00,USD,EMAIL,nobody@example.com\n"
        f"{users['alice']},,1.00,USD,EMAIL,alice2@example.com\n"
        f"{users['carol']},,5.00,usd,EMAIL,carol@example.com\n"
        f"{already.user_id},,5.00,USD,EMAIL,again@example.com\n"
        f'{users["erin"]},,"1,000.00",USD,EMAIL,erin@example.com\n'
        f"{users['frank']},,5.00,USD,EMAIL,not-an-email\n"
        f"{users['gina']},,0,USD,EMAIL,gina@example.com\n"
        f"{users['hank']},,5.00,USD,SWIFT,hank@example.com\n"
        f"{users['ivan']},,5.00,USD\n"
        "12x,,5.00,USD,EMAIL,x@example.com\n"
    )

    response = upload(client_for(operator), cycle, text)

    assert response.status_code == 200
    assert list(response.context["form"].non_field_errors()) == [
        "line 3: '12.345' has more than 2 decimal places for USD",
        "line 4: no user named 'nobody'",
        f"line 5: user {users['alice']} is already on line 2",
        "line 6: currency must be an upper-case ISO 4217 code, got 'usd'",
        f"line 7: user {already.user_id} is already a winner of this cycle",
        "line 8: '1,000.00' is not a plain decimal amount like 1234.50",
        "line 9: EMAIL recipient 'not-an-email' is not valid",
        "line 10: amount '0' must be more than zero",
        "line 11: recipient_type 'SWIFT' is not one of EMAIL, PHONE, PAYPAL_ID, STRIPE_ACCOUNT",
        "line 12: expected 6 fields, found 4",
        "line 13: user_id '12x' is not a whole number",
        "Nothing was imported; correct these lines and upload again.",
    ]
    assert not WinnerSelection.objects.filter(user_id__in=users.values()).exists()  # not even line 2
    assert cycle.selections.count() == 4  # the fixture's winners only
    assert not AuditLog.objects.filter(action="payouts.selections.import").exists()


def test_csv_import_refuses_a_file_without_the_columns(operator, cycle):
    response = upload(client_for(operator), cycle, "user,amount,currency\n1,5.00,USD\n")

    assert list(response.context["form"].non_field_errors()) == [
        "line 1: missing column 'recipient_type'",
        "line 1: missing column 'recipient'",
        "line 1: missing column 'user_id' or 'username'",
        "line 1: unknown column 'user'",
        "Nothing was imported; correct these lines and upload again.",
    ]
    assert cycle.selections.count() == 4


def test_csv_import_needs_the_add_permission(viewer, operator, cycle):
    assert client_for(viewer).get(IMPORT_URL).status_code == 403
    add = client_for(operator).get(reverse("admin:payouts_winnerselection_add"))
    assert add.status_code == 302 and add["Location"] == IMPORT_URL
    page = client_for(operator).get(IMPORT_URL, {"cycle": cycle.pk})
    assert page.status_code == 200 and page.context["form"]["cycle"].value() == str(cycle.pk)


# --- progress and read-only pages --------------------------------------------------------------


def test_batch_changelist_shows_progress_by_status_with_currency(sandbox, viewer, operator, cycle):
    (batch,) = cycle_prepare(cycle_id=cycle.pk, actor=operator)
    settled(sandbox, batch, operator)

    response = client_for(viewer).get(reverse("admin:payouts_payoutbatch_changelist"))

    # checkbox, sender_batch_id, cycle, provider, status, provider call, total, item count, progress, ...
    progress = "Unclaimed by recipient 1 · $200.00, Paid 1 · $100.00, Failed 1 · $300.00, Returned to us 1 · $400.00"
    assert row_cells(response.content.decode(), batch.sender_batch_id)[4:9] == [
        "Completed",
        "Done",  # the batch create's money movement (core.labels)
        "$1,000.00",
        "4",
        progress,
    ]
    detail = client_for(viewer).get(reverse("admin:payouts_payoutcycle_change", args=[cycle.pk])).content.decode()
    assert progress in detail
    assert "4 winners, $1,000.00" in detail
    cycles = client_for(viewer).get(reverse("admin:payouts_payoutcycle_changelist")).content.decode()
    # checkbox, id, name, created by, created at, winners, batches
    assert row_cells(cycles, str(cycle.pk))[5:] == ["4", "1 completed"]
    batch_page = client_for(viewer).get(reverse("admin:payouts_payoutbatch_change", args=[batch.pk])).content
    assert f'?batch__id__exact={batch.pk}">4 item(s)</a>'.encode() in batch_page


def test_a_cycle_is_created_by_name_with_its_creator_and_an_audit_row():
    admin_user = User.objects.create_superuser("root")
    client = client_for(admin_user)

    assert client.get(reverse("admin:payouts_payoutcycle_add")).status_code == 200
    client.post(reverse("admin:payouts_payoutcycle_add"), {"name": "January"})

    cycle = PayoutCycle.objects.get(name="January")
    assert cycle.created_by == admin_user
    audit = AuditLog.objects.get(action="payouts.payoutcycle.add")
    assert (audit.actor, audit.object_id, audit.after) == (admin_user, str(cycle.pk), {"name": "January"})


def test_items_filter_by_status_batch_and_recipient_type_and_stay_read_only(sandbox, viewer, operator, cycle):
    (batch,) = cycle_prepare(cycle_id=cycle.pk, actor=operator)
    settled(sandbox, batch, operator)
    other_cycle = PayoutCycle.objects.create(name="December")
    WinnerSelection.objects.create(
        cycle=other_cycle, user=User.objects.create_user("phone"), amount_minor=500, currency="USD",
        recipient_type="PHONE", recipient="+639171234567",
    )  # fmt: skip
    (other,) = cycle_prepare(cycle_id=other_cycle.pk, actor=operator)
    client, url = client_for(viewer), reverse("admin:payouts_payoutitem_changelist")

    def receivers(**query: object) -> list[str]:
        return sorted(item.receiver for item in client.get(url, query).context["cl"].result_list)

    assert receivers(status__exact="UNCLAIMED") == ["unclaimed@example.com"]
    assert receivers(status__exact="NEW") == ["+639171234567"]
    assert len(receivers(batch__id__exact=batch.pk)) == 4
    assert receivers(batch__id__exact=other.pk) == ["+639171234567"]
    assert receivers(recipient_type__exact="PHONE") == ["+639171234567"]
    item = batch.items.get(receiver="fail@example.com")
    page = client.get(reverse("admin:payouts_payoutitem_change", args=[item.pk])).content.decode()
    assert "$300.00" in page and 'name="status"' not in page and 'name="amount_minor"' not in page


# --- actions ----------------------------------------------------------------------------------


def test_prepare_action_prepares_and_reports_the_batch(sandbox, operator, cycle):
    response = run_action(client_for(operator), "payoutcycle", "prepare", cycle.pk)

    batch = PayoutBatch.objects.get(cycle=cycle)
    assert (batch.status, batch.total_minor, batch.prepared_by) == ("approved", 100_000, operator)
    assert available("payouts:winnings-payable:USD") == 1_000_000 - 100_000
    assert messages_of(response) == [
        (message_levels.SUCCESS, f"{cycle}: 1 batch(es): {batch.sender_batch_id} approved, $1,000.00.")
    ]


def test_prepare_action_without_permission_reports_the_user_message(sandbox, viewer, cycle):
    response = run_action(client_for(viewer), "payoutcycle", "prepare", cycle.pk)

    assert messages_of(response) == [
        (message_levels.ERROR, f"{cycle}: " + NO_PERMISSION.format("payouts.prepare_payoutbatch"))
    ]
    assert not PayoutBatch.objects.exists()


def test_approve_action_confirms_then_approves(sandbox, operator, approver, cycle, settings):
    settings.PAYOUT_APPROVAL_THRESHOLD_MINOR = 50_000
    (batch,) = cycle_prepare(cycle_id=cycle.pk, actor=operator)
    client = client_for(approver)

    page = run_action(client, "payoutbatch", "approve", batch.pk)
    assert f"{batch.sender_batch_id}: prepared, 4 item(s), $1,000.00" in page.content.decode()
    batch.refresh_from_db()
    assert batch.status == "prepared"

    response = run_action(client, "payoutbatch", "approve", batch.pk, confirm=True)
    batch.refresh_from_db()
    assert (batch.status, batch.approved_by) == ("approved", approver)
    assert messages_of(response) == [(message_levels.SUCCESS, f"{batch.sender_batch_id} approved ($1,000.00).")]


def test_approve_action_reports_missing_permission_and_maker_checker(sandbox, operator, cycle, settings):
    settings.PAYOUT_APPROVAL_THRESHOLD_MINOR = 50_000
    both = member("both", "Finance operator", "Finance approver")
    (batch,) = cycle_prepare(cycle_id=cycle.pk, actor=both)

    no_permission = run_action(client_for(operator), "payoutbatch", "approve", batch.pk, confirm=True)
    own_batch = run_action(client_for(both), "payoutbatch", "approve", batch.pk, confirm=True)

    label = batch.sender_batch_id
    assert messages_of(no_permission) == [
        (message_levels.ERROR, f"{label}: " + NO_PERMISSION.format("payouts.approve_payoutbatch"))
    ]
    assert messages_of(own_batch) == [
        (
            message_levels.ERROR,
            f"{label}: The person who prepared this batch cannot also approve it. "
            "Ask another finance approver to approve the batch.",
        )
    ]
    batch.refresh_from_db()
    assert batch.status == "prepared"


def test_execute_action_confirms_then_sends_once(sandbox, operator, cycle):
    (batch,) = cycle_prepare(cycle_id=cycle.pk, actor=operator)
    client = client_for(operator)

    page = run_action(client, "payoutbatch", "execute", batch.pk)
    assert 'name="post" value="yes"' in page.content.decode()
    assert sandbox.calls["paypal.payouts.create"] == 0

    response = run_action(client, "payoutbatch", "execute", batch.pk, confirm=True)
    batch.refresh_from_db()
    assert batch.status == "submitted"
    assert sandbox.calls["paypal.payouts.create"] == 1
    assert messages_of(response) == [(message_levels.SUCCESS, f"{batch.sender_batch_id} sent: submitted.")]


def test_execute_action_without_permission_reports_the_user_message(sandbox, operator, approver, cycle):
    (batch,) = cycle_prepare(cycle_id=cycle.pk, actor=operator)

    response = run_action(client_for(approver), "payoutbatch", "execute", batch.pk, confirm=True)

    assert messages_of(response) == [
        (message_levels.ERROR, f"{batch.sender_batch_id}: " + NO_PERMISSION.format("payouts.execute_payoutbatch"))
    ]
    batch.refresh_from_db()
    assert batch.status == "approved"
    assert sandbox.calls["paypal.payouts.create"] == 0


def test_execute_action_reports_the_state_error(sandbox, operator, cycle):
    (batch,) = cycle_prepare(cycle_id=cycle.pk, actor=operator)
    batch_execute(batch_id=batch.pk, actor=operator)

    response = run_action(client_for(operator), "payoutbatch", "execute", batch.pk, confirm=True)

    assert messages_of(response) == [
        (
            message_levels.ERROR,
            f"{batch.sender_batch_id}: This batch is submitted; it can only be sent once it is approved. "
            "Approve it first, or reload it: it may already have been sent.",
        )
    ]
    assert sandbox.calls["paypal.payouts.create"] == 1


def test_sync_now_action_updates_items_and_reports_progress(sandbox, operator, viewer, cycle):
    (batch,) = cycle_prepare(cycle_id=cycle.pk, actor=operator)
    batch_execute(batch_id=batch.pk, actor=operator)
    for _ in range(3):
        sandbox.tick()

    refused = run_action(client_for(viewer), "payoutbatch", "sync_now", batch.pk)
    assert set(batch.items.values_list("status", flat=True)) == {"PENDING"}
    response = run_action(client_for(operator), "payoutbatch", "sync_now", batch.pk)

    label = batch.sender_batch_id
    assert messages_of(refused) == [
        (message_levels.ERROR, f"{label}: " + NO_PERMISSION.format("payouts.execute_payoutbatch"))
    ]
    assert messages_of(response) == [
        (
            message_levels.SUCCESS,
            f"{label}: completed; Unclaimed by recipient 1 · $200.00, Paid 1 · $100.00, Failed 1 · $300.00, "
            "Returned to us 1 · $400.00.",
        )
    ]


def test_retry_failed_action_prepares_a_retry_for_the_unpaid(sandbox, operator, viewer, cycle):
    (batch,) = cycle_prepare(cycle_id=cycle.pk, actor=operator)
    settled(sandbox, batch, operator)

    refused = run_action(client_for(viewer), "payoutbatch", "retry_failed", batch.pk)
    assert PayoutBatch.objects.count() == 1
    response = run_action(client_for(operator), "payoutbatch", "retry_failed", batch.pk)

    retry = PayoutBatch.objects.get(retry_of=batch)
    assert sorted(retry.items.values_list("receiver", flat=True)) == ["fail@example.com", "return@example.com"]
    assert messages_of(refused) == [
        (message_levels.ERROR, f"{batch.sender_batch_id}: " + NO_PERMISSION.format("payouts.prepare_payoutbatch"))
    ]
    assert messages_of(response) == [
        (
            message_levels.SUCCESS,
            f"{batch.sender_batch_id}: retry batch {retry.sender_batch_id} approved, $700.00.",
        )
    ]


def test_cancel_unclaimed_action_returns_the_money(sandbox, operator, approver, cycle, settings):
    settings.PAYOUT_UNCLAIMED_CANCEL_AFTER_DAYS = 0
    (batch,) = cycle_prepare(cycle_id=cycle.pk, actor=operator)
    settled(sandbox, batch, operator)
    item = batch.items.get(status=PayoutItem.Status.UNCLAIMED)
    held = available("payouts:winnings-payable:USD")

    page = run_action(client_for(operator), "payoutitem", "cancel_unclaimed", item.pk)
    assert f"{item.sender_item_id} to unclaimed@example.com: UNCLAIMED, $200.00" in page.content.decode()
    refused = run_action(client_for(approver), "payoutitem", "cancel_unclaimed", item.pk, confirm=True)
    item.refresh_from_db()
    assert item.status == "UNCLAIMED"
    response = run_action(client_for(operator), "payoutitem", "cancel_unclaimed", item.pk, confirm=True)

    item.refresh_from_db()
    assert item.status == "RETURNED"
    assert available("payouts:winnings-payable:USD") == held + 20_000  # the hold is released
    assert messages_of(refused) == [
        (message_levels.ERROR, f"{item.sender_item_id}: " + NO_PERMISSION.format("payouts.execute_payoutbatch"))
    ]
    assert messages_of(response) == [(message_levels.SUCCESS, f"{item.sender_item_id}: RETURNED.")]
