"""The ledger admin: formatted balances, entries inline, and the reverse action with its permission."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.messages import constants as message_levels
from django.test import Client
from django.urls import reverse

from core.errors import AlreadyReversed
from core.models import AuditLog
from core.money import Money
from ledger.models import Account, Transaction
from ledger.selectors import account_balance
from ledger.services import account_create, credit, debit, hold_create, transaction_post, transaction_reverse

pytestmark = pytest.mark.django_db

VIEW_PERMISSIONS = ("view_account", "view_transaction", "view_entry", "view_hold")
CHANGELIST = reverse("admin:ledger_transaction_changelist")


def php(minor: int) -> Money:
    return Money(minor, "PHP")


def staff_user(username: str, *codenames: str) -> User:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="ledger", codename__in=codenames))
    return user


@pytest.fixture
def clearing() -> Account:
    return account_create(
        code="platform:clearing:PHP", name="Clearing", type="asset", currency="PHP", allow_negative=True
    )


@pytest.fixture
def wallet() -> Account:
    return account_create(
        code="wallet:alice:PHP", name="Alice wallet", type="liability", currency="PHP", owner_type="user", owner_id="7"
    )


@pytest.fixture
def funding(clearing: Account, wallet: Account) -> Transaction:
    return transaction_post(
        idempotency_key="fund:7",
        kind="funding",
        description="Top-up",
        legs=[debit(clearing.code, php(123_450)), credit(wallet.code, php(123_450))],
    )


@pytest.fixture
def viewer_client() -> Client:
    client = Client()
    client.force_login(staff_user("viewer", *VIEW_PERMISSIONS))
    return client


@pytest.fixture
def operator() -> User:
    return staff_user("operator", *VIEW_PERMISSIONS, "reverse_transaction")


@pytest.fixture
def operator_client(operator: User) -> Client:
    client = Client()
    client.force_login(operator)
    return client


def row_cells(html: str, code: str) -> list[str]:
    """The text of each cell in the changelist row whose first column is `code`."""
    rows = [row for row in re.split(r"<tr\b", html) if f">{code}</a>" in row]
    assert len(rows) == 1, f"expected one row for {code}"
    cells = re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", rows[0], re.S)
    cells = [re.sub(r'<img[^>]*alt="([^"]*)"[^>]*>', r"\1", cell) for cell in cells]  # boolean icons
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in cells]


def messages_of(response) -> list[tuple[int, str]]:
    return [(message.level, str(message)) for message in response.context["messages"]]


def reverse_action(client: Client, *ids: int, reason: str | None = None):
    """Submit the changelist action; with `reason`, also confirm on the intermediate page."""
    data: dict[str, object] = {"action": "reverse_selected", "_selected_action": [str(pk) for pk in ids]}
    if reason is None:
        data["index"] = "0"
    else:
        data.update(post="yes", reason=reason)
    return client.post(CHANGELIST, data, follow=reason is not None)


# --- accounts -------------------------------------------------------------------


def test_account_changelist_shows_balances_formatted_with_currency(viewer_client, clearing, wallet, funding):
    hold_create(
        idempotency_key="hold:out",
        debit_account_code=wallet.code,
        credit_account_code=clearing.code,
        amount=php(20_000),
        kind="payout",
    )
    hold_create(
        idempotency_key="hold:in",
        debit_account_code=clearing.code,
        credit_account_code=wallet.code,
        amount=php(5_000),
        kind="top-up",
    )

    response = viewer_client.get(reverse("admin:ledger_account_changelist"))

    assert response.status_code == 200
    html = response.content.decode()
    # code, name, type, currency, allow_negative, owner, posted, pending out, pending in, available
    assert row_cells(html, wallet.code)[1:] == [
        "Alice wallet",
        "Liability",
        "PHP",
        "False",
        "user:7",
        "₱1,234.50",
        "₱200.00",
        "₱50.00",
        "₱1,034.50",
    ]
    # The clearing account's balances are summed over all its shards.
    assert row_cells(html, clearing.code)[1:] == [
        "Clearing",
        "Asset",
        "PHP",
        "True",
        "-",
        "₱1,234.50",
        "₱200.00",
        "₱50.00",
        "₱1,034.50",
    ]


def test_account_changelist_filters_and_searches(viewer_client, clearing, wallet):
    url = reverse("admin:ledger_account_changelist")

    by_flag = viewer_client.get(url, {"allow_negative__exact": "1"})
    by_owner = viewer_client.get(url, {"q": "7"})

    assert [a.code for a in by_flag.context["cl"].result_list] == [clearing.code]
    assert [a.code for a in by_owner.context["cl"].result_list] == [wallet.code]


def test_account_detail_shows_balances(viewer_client, wallet, funding):
    response = viewer_client.get(reverse("admin:ledger_account_change", args=[wallet.pk]))

    assert response.status_code == 200
    html = response.content.decode()
    assert html.count("₱1,234.50") == 2  # posted and available
    assert "Save" not in html  # read-only


# --- transactions ---------------------------------------------------------------


def test_transaction_change_page_shows_entries_inline(viewer_client, clearing, wallet, funding):
    response = viewer_client.get(reverse("admin:ledger_transaction_change", args=[funding.pk]))

    assert response.status_code == 200
    inline = response.context["inline_admin_formsets"][0]
    assert [form.original.account.code for form in inline] == [clearing.code, wallet.code]
    html = response.content.decode()
    entries = html[html.index("entries-group") :]
    assert str(clearing) in entries and str(wallet) in entries
    # each row's label, its debit or credit column, and the shard balance after it
    assert "debit ₱1,234.50" in entries and "credit ₱1,234.50" in entries
    assert entries.count("₱1,234.50") == 6
    assert "Top-up" in html


def test_transaction_changelist_lists_and_filters_reversals(viewer_client, funding, operator):
    reversal = transaction_reverse(transaction_id=funding.pk, reason="test", actor=operator)

    everything = viewer_client.get(CHANGELIST)
    reversed_only = viewer_client.get(CHANGELIST, {"reversed": "yes"})
    reversals_only = viewer_client.get(CHANGELIST, {"is_reversal": "yes"})

    assert [t.pk for t in everything.context["cl"].result_list] == [reversal.pk, funding.pk]
    assert [t.pk for t in reversed_only.context["cl"].result_list] == [funding.pk]
    assert [t.pk for t in reversals_only.context["cl"].result_list] == [reversal.pk]
    assert f'href="{reverse("admin:ledger_transaction_change", args=[funding.pk])}">#{funding.pk}</a>' in (
        everything.content.decode()
    )


def test_transaction_search_by_idempotency_key(viewer_client, funding):
    assert [t.pk for t in viewer_client.get(CHANGELIST, {"q": "fund:7"}).context["cl"].result_list] == [funding.pk]
    assert list(viewer_client.get(CHANGELIST, {"q": "fund:8"}).context["cl"].result_list) == []


# --- the reverse action ---------------------------------------------------------


def test_reverse_action_asks_for_a_reason_before_reversing(operator_client, funding):
    response = reverse_action(operator_client, funding.pk)

    assert response.status_code == 200
    assert 'name="reason"' in response.content.decode()
    assert not Transaction.objects.filter(reverses=funding).exists()


def test_reverse_action_refuses_a_blank_reason(operator_client, funding):
    response = reverse_action(operator_client, funding.pk, reason="  ")

    assert response.status_code == 200
    assert "This field is required." in response.content.decode()
    assert not Transaction.objects.filter(reverses=funding).exists()


def test_reverse_action_reverses_audits_and_reports(operator_client, operator, wallet, funding):
    response = reverse_action(operator_client, funding.pk, reason="duplicate top-up")

    reversal = Transaction.objects.get(reverses=funding)
    assert reversal.description == f"Reversal of #{funding.pk}: duplicate top-up"
    assert account_balance(wallet).posted == php(0)
    audit = AuditLog.objects.get(action="ledger.transaction.reverse")
    assert (audit.actor, audit.object_id, audit.after) == (
        operator,
        str(funding.pk),
        {"reversal_id": reversal.pk, "reason": "duplicate top-up"},
    )
    assert response.redirect_chain[-1][0].endswith(CHANGELIST)
    [(level, text)] = messages_of(response)
    assert level == message_levels.SUCCESS
    link = f'<a href="{reverse("admin:ledger_transaction_change", args=[reversal.pk])}">#{reversal.pk}</a>'
    assert text == f"Transaction #{funding.pk} reversed by {link}."
    assert link in response.content.decode()  # rendered as a link, not escaped


def test_reverse_action_reports_user_message_per_transaction(operator_client, operator, funding):
    first = transaction_reverse(transaction_id=funding.pk, reason="first", actor=operator)

    response = reverse_action(operator_client, funding.pk, first.pk, reason="again")

    assert Transaction.objects.filter(reverses__isnull=False).count() == 1
    assert AuditLog.objects.filter(action="ledger.transaction.reverse").count() == 1
    assert messages_of(response) == [
        (
            message_levels.ERROR,
            f"Transaction #{funding.pk}: {AlreadyReversed.default_user_message} "
            f"{AlreadyReversed.default_action_required}",
        ),
        (
            message_levels.ERROR,
            f"Transaction #{first.pk}: A reversal cannot be reversed. "
            "Post a new transaction if the money must move again.",
        ),
    ]


def test_reverse_action_not_offered_without_permission(viewer_client, funding):
    changelist = viewer_client.get(CHANGELIST)
    attempt = reverse_action(viewer_client, funding.pk, reason="sneaky")

    assert changelist.status_code == 200
    assert "reverse_selected" not in changelist.content.decode()
    assert attempt.status_code == 200
    assert not Transaction.objects.filter(reverses=funding).exists()
    assert not AuditLog.objects.filter(action="ledger.transaction.reverse").exists()


def test_reverse_action_offered_with_permission(operator_client, funding):
    response = operator_client.get(CHANGELIST)

    choices = [name for name, _ in response.context["action_form"].fields["action"].choices]
    assert choices == ["", "reverse_selected"]


# --- holds ----------------------------------------------------------------------


def test_hold_changelist_filters_by_status_and_formats_amounts(viewer_client, clearing, wallet, funding):
    hold_create(
        idempotency_key="hold:a",
        debit_account_code=wallet.code,
        credit_account_code=clearing.code,
        amount=php(20_000),
        kind="payout",
    )
    url = reverse("admin:ledger_hold_changelist")

    pending = viewer_client.get(url, {"status__exact": "pending"})
    voided = viewer_client.get(url, {"status__exact": "voided"})

    assert [h.idempotency_key for h in pending.context["cl"].result_list] == ["hold:a"]
    assert "₱200.00" in pending.content.decode()
    assert list(voided.context["cl"].result_list) == []
