"""Staff actions on reconciliation issues: assign, resolve with a note, reopen.

Each needs `monitoring.resolve_reconciliationissue`, locks the issue row, moves its status only along
`ReconciliationIssue.TRANSITIONS` (else `InvalidStateTransition`) and writes an audit record. A resolved issue
stays resolved when a rerun finds it again; a reopened one is open until resolved again or a rerun no longer
finds it (then `fixed`). Resolving the last open issue of a provider's day resolves that day's staff alert.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from core.alerts import alert_resolve
from core.errors import InvalidRequest, InvalidStateTransition, NotFound
from core.permissions import require_permission
from core.services import audit_record
from monitoring.models import ReconciliationIssue
from monitoring.reconciliation.running import issues_alert_key

RESOLVE_PERMISSION = "monitoring.resolve_reconciliationissue"


def _locked_issue(issue_id: int) -> ReconciliationIssue:
    issue = ReconciliationIssue.objects.select_for_update().filter(pk=issue_id).first()
    if issue is None:
        raise NotFound(f"reconciliation issue {issue_id} does not exist", details={"issue": issue_id})
    return issue


def _move(issue: ReconciliationIssue, target: str) -> None:
    if target not in ReconciliationIssue.TRANSITIONS[ReconciliationIssue.Status(issue.status)]:
        raise InvalidStateTransition(
            f"issue {issue.pk} is {issue.status}, cannot become {target}",
            user_message=f"This issue is already {issue.get_status_display().lower()}.",
            action_required="Reload the issue list to see its current state.",
            details={"issue": issue.pk, "status": issue.status},
        )
    issue.status = target


@transaction.atomic
def issue_assign(*, issue_id: int, actor: AbstractBaseUser, assignee_id: int | None) -> ReconciliationIssue:
    """Give an issue to a staff user (or to nobody, `assignee_id=None`)."""
    require_permission(actor, RESOLVE_PERMISSION)
    issue = _locked_issue(issue_id)
    assignee = None
    if assignee_id is not None:
        assignee = get_user_model().objects.filter(pk=assignee_id, is_active=True, is_staff=True).first()
        if assignee is None:
            raise InvalidRequest(
                f"user {assignee_id} is not an active staff user",
                user_message="An issue can only be assigned to an active staff user.",
                action_required="Choose another person from the staff list.",
                details={"assignee": assignee_id},
            )
    before = {"assignee": issue.assignee_id}
    issue.assignee = assignee
    issue.save(update_fields=["assignee", "updated_at"])
    audit_record(actor=actor, action="monitoring.reconciliation_issue.assign", obj=issue, before=before,
                 after={"assignee": assignee_id})  # fmt: skip
    return issue


@transaction.atomic
def issue_resolve(*, issue_id: int, actor: AbstractBaseUser, note: str) -> ReconciliationIssue:
    """Close an open issue with a note saying what was found or done."""
    require_permission(actor, RESOLVE_PERMISSION)
    if not note.strip():
        raise InvalidRequest(
            "a resolution needs a note",
            user_message="Say what was found or done before resolving the issue.",
            action_required="Write a resolution note and submit again.",
        )
    issue = _locked_issue(issue_id)
    before = {"status": issue.status}
    _move(issue, ReconciliationIssue.Status.RESOLVED)
    issue.resolution_note, issue.resolved_by, issue.resolved_at = note.strip(), actor, timezone.now()
    issue.save(update_fields=["status", "resolution_note", "resolved_by", "resolved_at", "updated_at"])
    audit_record(actor=actor, action="monitoring.reconciliation_issue.resolve", obj=issue, before=before,
                 after={"status": issue.status, "note": issue.resolution_note})  # fmt: skip
    day_issues = ReconciliationIssue.objects.filter(provider=issue.provider, date=issue.date)
    if not day_issues.filter(status=ReconciliationIssue.Status.OPEN).exists():
        reason = f"{actor.get_username()} resolved the last open issue"
        alert_resolve(key=issues_alert_key(issue.provider, issue.date), reason=reason)
    return issue


@transaction.atomic
def issue_reopen(*, issue_id: int, actor: AbstractBaseUser, note: str = "") -> ReconciliationIssue:
    """Open a resolved (or rerun-fixed) issue again."""
    require_permission(actor, RESOLVE_PERMISSION)
    issue = _locked_issue(issue_id)
    before = {"status": issue.status, "note": issue.resolution_note}
    _move(issue, ReconciliationIssue.Status.OPEN)
    issue.resolved_by, issue.resolved_at = None, None
    issue.save(update_fields=["status", "resolved_by", "resolved_at", "updated_at"])
    audit_record(actor=actor, action="monitoring.reconciliation_issue.reopen", obj=issue, before=before,
                 after={"status": issue.status, "note": note.strip()})  # fmt: skip
    return issue
