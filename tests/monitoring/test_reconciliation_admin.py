"""The reconciliation admin: run a day from the form, work issues through actions that call the services."""

import uuid

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from core.models import AuditLog
from core.money import Money
from ledger.services import account_create, credit, debit, transaction_post
from monitoring.models import ReconciliationIssue, ReconciliationRun

CHANGELIST = "admin:monitoring_reconciliationissue_changelist"


def staff(django_user_model, *codenames: str):
    user = django_user_model.objects.create_user(f"staff-{uuid.uuid4().hex[:6]}", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return django_user_model.objects.get(pk=user.pk)


def ghost_posting(reference: str, amount_minor: int) -> None:
    """A clearing posting the sandbox never saw: one missing-at-provider issue."""
    account_create(code="provider:stripe:clearing:USD", name="clearing", type="asset", currency="USD",
                   allow_negative=True)  # fmt: skip
    account_create(code="platform:customer-payments:USD", name="owed", type="liability", currency="USD",
                   allow_negative=True)  # fmt: skip
    transaction_post(
        idempotency_key=f"seed:{reference}", kind="customer_payment",
        legs=[debit("provider:stripe:clearing:USD", Money(amount_minor, "USD")),
              credit("platform:customer-payments:USD", Money(amount_minor, "USD"))],
        metadata={"provider": "stripe", "provider_reference": reference},
    )  # fmt: skip


@pytest.fixture
def operator(django_user_model):
    return staff(django_user_model, "view_reconciliationrun", "view_reconciliationissue", "run_reconciliation",
                 "resolve_reconciliationissue")  # fmt: skip


@pytest.mark.django_db
def test_staff_run_a_day_then_assign_and_resolve_issues_in_the_admin(client, sandbox, operator):
    ghost_posting("pi_adminGhost", 2_500)
    client.force_login(operator)
    day = timezone.now().date().isoformat()
    page = client.get(reverse("admin:monitoring_reconciliationrun_add"))
    assert page.status_code == 200 and b"Run reconciliation for a day" in page.content

    answer = client.post(reverse("admin:monitoring_reconciliationrun_add"), {"date": day, "provider": "stripe"})
    assert answer.status_code == 302
    run = ReconciliationRun.objects.get()
    issue = ReconciliationIssue.objects.get()
    assert (issue.kind, issue.provider_reference, issue.ledger_amount_minor) == ("missing_at_provider",
                                                                                 "pi_adminGhost", 2_500)  # fmt: skip
    assert client.get(reverse(CHANGELIST), {"last_seen_run__id__exact": run.pk, "assigned": "none"}).status_code == 200
    assert client.get(reverse("admin:monitoring_reconciliationrun_change", args=[run.pk])).status_code == 200

    client.post(reverse(CHANGELIST), {"action": "assign_to_me", ACTION_CHECKBOX_NAME: [issue.pk]})
    issue.refresh_from_db()
    assert issue.assignee_id == operator.pk
    mine = client.get(reverse(CHANGELIST), {"assigned": "me"})
    assert b"pi_adminGhost" in mine.content

    form = client.post(reverse(CHANGELIST), {"action": "resolve", ACTION_CHECKBOX_NAME: [issue.pk]})
    assert form.status_code == 200 and b"Resolve issues" in form.content  # the intermediate page asks for a note
    empty = client.post(reverse(CHANGELIST), {"action": "resolve", ACTION_CHECKBOX_NAME: [issue.pk], "post": "yes",
                                              "note": ""})  # fmt: skip
    assert empty.status_code == 200  # a note is required: asked again
    issue.refresh_from_db()
    assert issue.status == "open"
    client.post(reverse(CHANGELIST), {"action": "resolve", ACTION_CHECKBOX_NAME: [issue.pk], "post": "yes",
                                      "note": "Posted by a test script; reversed."})  # fmt: skip
    issue.refresh_from_db()
    assert (issue.status, issue.resolution_note, issue.resolved_by_id) == ("resolved",
                                                                           "Posted by a test script; reversed.",
                                                                           operator.pk)  # fmt: skip
    assert set(AuditLog.objects.filter(actor=operator).values_list("action", flat=True)) == {
        "monitoring.reconciliation.run", "monitoring.reconciliation_issue.assign",
        "monitoring.reconciliation_issue.resolve",
    }  # fmt: skip


@pytest.mark.django_db
def test_a_viewer_sees_issues_but_cannot_run_or_resolve(client, sandbox, django_user_model):
    ghost_posting("pi_viewerGhost", 100)
    viewer = staff(django_user_model, "view_reconciliationrun", "view_reconciliationissue")
    client.force_login(viewer)
    assert client.get(reverse("admin:monitoring_reconciliationrun_add")).status_code == 403
    page = client.get(reverse(CHANGELIST))
    assert page.status_code == 200 and b"Resolve with a note" not in page.content
