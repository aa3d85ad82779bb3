"""CSV export from the changelists finance uses: what the changelist selects (filters, search), amounts as
integer minor units beside their currency, for staff holding the model's view permission, and audited."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from core.models import AuditLog
from core.services import audit_record
from monitoring.models import ReconciliationIssue, ReconciliationRun
from tests.analytics.seed import History

User = get_user_model()


def _issues(history: History) -> dict[str, int]:
    run = ReconciliationRun.objects.create(
        date=history.day, provider="stripe", trigger=ReconciliationRun.Trigger.COMMAND, started_at=timezone.now()
    )
    common = {"run": run, "last_seen_run": run, "date": history.day, "provider": "stripe", "currency": "USD"}
    open_issue = ReconciliationIssue.objects.create(
        kind="amount_mismatch", provider_reference="txn_1", ledger_amount_minor=-500, provider_amount_minor=-450,
        **common,
    )  # fmt: skip
    ReconciliationIssue.objects.create(
        kind="duplicate", provider_reference="txn_2", status="resolved", resolved_at=timezone.now(), **common
    )
    return {"open": open_issue.pk}


def _audit(history: History) -> dict[str, int]:
    formula = '=HYPERLINK("http://x")'  # text a customer controls (a name, a user agent) reaches the audit log
    wanted = AuditLog.objects.create(actor_repr="system", request_id="seed", action="seed.one", object_repr=formula)
    audit_record(actor=None, action="seed.two")
    return {"one": wanted.pk}


# changelist, the model's view permission, query, the rows expected (by id), checks on one row
CASES: list[tuple[str, str, Callable[[History], dict[str, str]], Callable[[History], set[int]], dict[str, str]]] = [
    (
        "providers/payment",
        "providers.view_payment",
        lambda h: {"status__exact": "failed"},
        lambda h: {h.payments[name].pk for name in ("p3", "p5", "p8", "p10")},
        {"reference": "pay_p3_", "amount_minor": "2500", "currency": "USD", "amount": "25.00", "status": "failed"},
    ),
    (
        "providers/payment",
        "providers.view_payment",
        lambda h: {"q": h.payments["p4"].reference},  # the changelist's search
        lambda h: {h.payments["p4"].pk},
        {
            "reference": "pay_p4_",
            "amount_minor": "100000",
            "currency": "PHP",
            "amount": "1000.00",
            "refunded_minor": "25000",
        },
    ),
    (
        "providers/refund",
        "providers.view_refund",
        lambda h: {"status__exact": "failed"},
        lambda h: {h.refunds["r2"].pk},
        {"amount_minor": "10000", "currency": "USD", "provider": "stripe", "failure_reason": "charge_already_refunded"},
    ),
    (
        "payouts/payoutitem",
        "payouts.view_payoutitem",
        lambda h: {"status__exact": "SUCCESS"},
        lambda h: {h.items["i1"].pk, h.items["i5"].pk},
        {"sender_item_id": "i5", "amount_minor": "4000", "currency": "JPY", "amount": "4000", "provider": "stripe"},
    ),
    (
        "escrow/escrowdeal",
        "escrow.view_escrowdeal",
        lambda h: {"currency__exact": "USD"},
        lambda h: {h.deals[name].pk for name in ("d1", "d2", "d3")},
        {"status": "transferred", "amount_minor": "20000", "commission_minor": "1600", "commission": "16.00"},
    ),
    (
        "escrow/purchase",
        "escrow.view_purchase",
        lambda h: {"status__exact": "refunded"},
        lambda h: {h.purchases["pu2"].pk},
        {"amount_minor": "10000", "currency": "USD", "refunded_minor": "10000", "amount": "100.00"},
    ),
    (
        "escrow/purchaserefund",
        "escrow.view_purchaserefund",
        lambda h: {},
        lambda h: {h.purchase_refunds["pr1"].pk},
        {"amount_minor": "10000", "currency": "USD", "status": "succeeded"},
    ),
    (
        "monitoring/reconciliationissue",
        "monitoring.view_reconciliationissue",
        lambda h: {"status__exact": "open"},
        lambda h: {h.issues["open"]},
        {"ledger_amount_minor": "-500", "provider_amount_minor": "-450", "currency": "USD", "provider_fee_minor": ""},
    ),
    (
        "core/auditlog",
        "core.view_auditlog",
        lambda h: {"action__exact": "seed.one"},
        lambda h: {h.audit["one"]},
        {"object_repr": '\'=HYPERLINK("http://x")', "actor_repr": "system"},  # no formula reaches a spreadsheet
    ),
]


@pytest.fixture
def seeded(history: History) -> History:
    history.issues = _issues(history)  # type: ignore[attr-defined]
    history.audit = _audit(history)  # type: ignore[attr-defined]
    return history


def _client(*permissions: str, staff: bool = True) -> Client:
    user = User.objects.create_user(f"exporter-{len(permissions)}-{staff}", is_staff=staff)
    for label in permissions:
        app_label, codename = label.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    client = Client()
    client.force_login(user)
    return client


def _rows(content: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(content.decode("utf-8"))))


@pytest.mark.parametrize(
    ("changelist", "permission", "query", "expected", "sample"),
    CASES,
    ids=[f"{case[0].split('/')[1]}-{index}" for index, case in enumerate(CASES)],
)
def test_staff_with_the_view_permission_export_what_the_changelist_selects(
    seeded: History, changelist, permission, query, expected, sample
) -> None:
    client = _client(permission)
    page = client.get(f"/admin/{changelist}/", query(seeded))
    assert page.status_code == 200 and b"export_link" in page.content  # the Export button is offered

    response = client.get(f"/admin/{changelist}/export/", query(seeded))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv") and "attachment" in response["Content-Disposition"]
    rows = _rows(response.content)
    assert {int(row["id"]) for row in rows} == expected(seeded)
    wanted = {name: value for name, value in sample.items() if name not in ("reference", "sender_item_id")}
    matching = [row for row in rows if wanted.items() <= row.items()]
    assert matching, (sample, rows)
    for name in ("reference", "sender_item_id"):  # generated values: the seed name is their prefix
        if name in sample:
            assert any(row[name].startswith(sample[name]) for row in matching)

    exported = AuditLog.objects.get(action="admin.export_csv")
    assert exported.after["rows"] == len(rows) and exported.after["model"] == changelist.replace("/", ".")


@pytest.mark.parametrize("changelist", sorted({case[0] for case in CASES}))
def test_without_the_view_permission_the_export_is_refused(seeded: History, changelist: str) -> None:
    other = "core.view_processinglock"  # staff, but for another model
    assert _client(other).get(f"/admin/{changelist}/export/").status_code == 403
    not_staff = _client(next(case[1] for case in CASES if case[0] == changelist), staff=False)
    refused = not_staff.get(f"/admin/{changelist}/export/")
    assert refused.status_code == 302 and "/admin/login/" in refused["Location"]
    assert not AuditLog.objects.filter(action="admin.export_csv").exists()


def test_an_unfiltered_export_has_every_row_and_no_import_is_offered(seeded: History) -> None:
    client = _client("providers.view_payment")
    rows = _rows(client.get("/admin/providers/payment/export/").content)
    assert len(rows) == len(seeded.payments)
    with pytest.raises(NoReverseMatch):
        reverse("admin:providers_payment_import")
    created = seeded.at.replace(microsecond=0) - timedelta(days=1)
    assert any(row["created_at"].startswith(created.strftime("%Y-%m-%d")) for row in rows)  # p10, the day before


def test_a_selection_too_large_for_one_file_is_refused_with_a_message(seeded: History, settings) -> None:
    settings.ADMIN_EXPORT_MAX_ROWS = 3
    client = _client("providers.view_payment")
    refused = client.get("/admin/providers/payment/export/", {"status__exact": "failed"})  # 4 rows
    assert refused.status_code == 302 and refused["Location"] == "/admin/providers/payment/?status__exact=failed"
    assert ["narrow the filters" in str(message) for message in get_messages(refused.wsgi_request)] == [True]
    assert not AuditLog.objects.filter(action="admin.export_csv").exists()
    allowed = client.get("/admin/providers/payment/export/", {"status__exact": "succeeded", "currency__exact": "USD"})
    assert allowed.status_code == 200 and len(_rows(allowed.content)) == 3  # p1, p2, p9: at the limit is fine
