"""The money-moving protocol of DESIGN.md section 5, written once. Every call that moves money at a
provider goes through here; a domain supplies only an `Operation` (providers.protocol.operations).

1. Intent first: `movement_record` adds the row (deterministic key, amount) in the caller's
   transaction, next to the domain's own state change, before any call. Its `next_sync_at` is the
   sweeper's safety net should the process die before an answer is recorded.
2. `movement_run` claims the row and sends it once, outside any transaction, through the provider's
   circuit breaker, availability tracking and retry policy (keyed calls only).
3. The outcome is recorded in a new transaction, with the row locked, exactly once: the domain's
   hook posts the ledger legs; `Pending` is `waiting`, never success.
4. Unknown is sticky: once a movement was sent and its outcome not recorded, only a success or an
   authoritative look-up resolves it. A refusal of a re-send proves nothing.
5. Every later claim (sweeper, staff, a webhook nudge) looks the object up before anything else. Only
   when the look-up says the provider has no such object is it sent (again, under the same key).
   Without a look-up, a keyed re-send is allowed only inside the provider's key window and only its
   positive answer counts; past the window nothing is sent.
6. `movements_sweep` (beat, every minute) finds every open movement of every operation whose
   `next_sync_at` has come: one schedule (SYNC_SCHEDULE), then one staff alert.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import structlog
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import connection, transaction
from django.utils import timezone

from core.alerts import alert_raise, alert_resolve
from core.errors import NotFound
from core.models import Alert
from core.money import Money
from core.permissions import require_permission
from core.services import audit_record
from ledger.services import retry_on_conflict
from monitoring.metrics import movement_outcome_counted
from providers.base import FOUND_FAILED, Absent, Declined, LookupResult, Pending, ProviderResult, Succeeded, Unknown
from providers.breaker import NOT_CALLED_CODES
from providers.models import MoneyMovement
from providers.protocol.operations import Operation, operation_get
from providers.protocol.pause import protocol_pause
from providers.retry import call_provider

log = structlog.get_logger(__name__)

Status = MoneyMovement.Status

# When the sweeper looks again at an open movement: 5 minutes, 1 hour, then daily; then a staff alert.
SYNC_SCHEDULE = (
    timedelta(minutes=5),
    timedelta(hours=1),
    timedelta(days=1),
    timedelta(days=1),
    timedelta(days=1),
)


def claim_seconds() -> float:
    """How long a worker owns a movement it is sending; also how old an unanswered intent gets before
    the sweeper takes it over. Above the longest call with its retries."""
    return float(getattr(settings, "PROTOCOL_CLAIM_SECONDS", 120))


def movement_key(base: str, attempt: int = 1) -> str:
    """The idempotency key of a domain step's n-th attempt: a new key only after a known decline."""
    return base if attempt <= 1 else f"{base}:{attempt}"


# --- 1. intent ---------------------------------------------------------------------------------


def movement_record(
    *, operation: str, subject_id: int, key: str, amount: Money | None = None, provider: str = ""
) -> MoneyMovement:
    """Record the intent (in the caller's transaction); the same key again returns the same movement.

    `provider` is needed only for operations whose provider varies (a customer payment's route)."""
    recipe = operation_get(operation)
    provider = provider or recipe.provider
    if not provider:
        raise ValueError(f"{operation} needs the provider of each movement")
    now = timezone.now()
    movement, created = MoneyMovement.objects.get_or_create(
        key=key,
        defaults={
            "operation": operation,
            "subject_id": subject_id,
            "provider": provider,
            "amount_minor": amount.minor if amount is not None else 0,
            "currency": amount.currency if amount is not None else "",
            "next_sync_at": now + timedelta(seconds=claim_seconds()),
        },
    )
    if not created and (movement.operation, movement.subject_id) != (operation, subject_id):
        raise ValueError(f"key {key} belongs to {movement.operation} of {movement.subject_id}")
    return movement


def movement_latest(*, operation: str, subject_id: int) -> MoneyMovement | None:
    return MoneyMovement.objects.filter(operation=operation, subject_id=subject_id).order_by("-id").first()


# --- 2. sending and looking up -----------------------------------------------------------------


def in_real_transaction() -> bool:
    """True inside an atomic block of ours (a test case's wrapping transaction does not count)."""
    return any(not getattr(block, "_from_testcase", False) for block in connection.atomic_blocks)


def movement_run(movement: MoneyMovement | int) -> MoneyMovement:
    """Send a recorded intent the first time; a no-op if another worker has claimed it already."""
    return _claim_and_go(_pk(movement), first=True, force=False)


def movement_sync(*, movement_id: int, force: bool = False) -> MoneyMovement:
    """Find out about an open movement when its time has come (or now, with `force`: staff)."""
    return _claim_and_go(movement_id, first=False, force=force)


def _pk(movement: MoneyMovement | int) -> int:
    return movement if isinstance(movement, int) else movement.pk


def _claim_and_go(pk: int, *, first: bool, force: bool) -> MoneyMovement:
    if in_real_transaction():
        raise RuntimeError("a provider call inside a transaction that may roll back after it succeeded")
    movement = _claim(pk, first=first, force=force)
    if movement is None:
        return MoneyMovement.objects.get(pk=pk)
    recipe = operation_get(movement.operation)
    protocol_pause("before_send", movement)
    result, authoritative = _ask(recipe, movement)
    protocol_pause("after_send", movement)
    follow_ups = _record(movement, recipe, result, authoritative=authoritative, claimed=True)
    protocol_pause("after_record", movement)
    run_follow_ups(follow_ups)
    return MoneyMovement.objects.get(pk=pk)


def _claim(pk: int, *, first: bool, force: bool) -> MoneyMovement | None:
    now = timezone.now()
    with transaction.atomic():
        movement = MoneyMovement.objects.select_for_update().filter(pk=pk).first()
        if movement is None or movement.status in MoneyMovement.FINAL:
            return None
        if movement.claimed_until is not None and movement.claimed_until > now:
            return None  # another worker is on it
        if first and movement.sends:
            return None  # sent (or being sent) already: the sweeper follows it up
        due = movement.next_sync_at is not None and movement.next_sync_at <= now
        if not first and not force and not due:
            return None
        movement.sends += 1
        movement.first_sent_at = movement.first_sent_at or now
        movement.claimed_until = now + timedelta(seconds=claim_seconds())
        movement.save(update_fields=["sends", "first_sent_at", "claimed_until", "updated_at"])
    return movement


def _ask(recipe: Operation, movement: MoneyMovement) -> tuple[ProviderResult, bool]:
    """The provider's answer, and whether a decline in it is authoritative."""
    if movement.sends == 1:  # the first claim ever: nothing was sent before
        return _send(recipe, movement), True
    found = _look_up(recipe, movement)
    if isinstance(found, Absent):
        if movement.status == Status.WAITING:
            return Unknown(reason=f"the provider accepted {movement.key} but no longer finds it"), False
        return _send(recipe, movement), True  # known never to have taken effect: this is the first send
    if found is not None:
        return found, True
    inside_window = timezone.now() - movement.first_sent_at < recipe.key_window(movement)  # type: ignore[operator]
    if inside_window and movement.status != Status.WAITING:
        return _send(recipe, movement), False  # a keyed replay: only its positive answer counts
    return Unknown(reason=f"{movement.key}: no look-up at {movement.provider} and outside its key window"), False


def _send(recipe: Operation, movement: MoneyMovement) -> ProviderResult:
    method = recipe.method or recipe.name
    return call_provider(
        movement.provider, method, lambda: recipe.send(movement), idempotent=recipe.retry_safe(movement)
    )


def _look_up(recipe: Operation, movement: MoneyMovement) -> LookupResult | None:
    """The operation's look-up, through the breaker and availability figures like any call."""
    answers: list[LookupResult | None] = []

    def ask() -> Any:
        answers.append(recipe.look_up(movement))
        # "no look-up for this movement" made no call: the breaker counts it as a harmless success
        return answers[-1] if answers[-1] is not None else Absent()

    method = f"{recipe.method or recipe.name}.look_up"
    outcome: Any = call_provider(movement.provider, method, ask, idempotent=True)
    if answers and answers[-1] is None:
        return None
    if isinstance(outcome, Declined) and outcome.code in NOT_CALLED_CODES:
        return Unknown(reason=f"not looked up: {outcome.reason}", asked=False)  # our circuit: nothing was asked
    if isinstance(outcome, Declined) and outcome.code != FOUND_FAILED:
        return Unknown(reason=f"the look-up was refused ({outcome.code}): {outcome.reason}")  # proves nothing
    return outcome


# --- 3. recording ------------------------------------------------------------------------------


def movement_resolve(*, movement: MoneyMovement | int, result: ProviderResult) -> MoneyMovement:
    """The provider told us (a verified webhook, or a domain's own authoritative read): record it once."""
    row = MoneyMovement.objects.get(pk=_pk(movement))
    run_follow_ups(_record(row, operation_get(row.operation), result, authoritative=True, claimed=False))
    return MoneyMovement.objects.get(pk=row.pk)


@retry_on_conflict  # the hooks post to the ledger in this one transaction: a deadlock retries all of it
def _record(
    movement: MoneyMovement, recipe: Operation, result: ProviderResult, *, authoritative: bool, claimed: bool
) -> list[MoneyMovement]:
    now = timezone.now()
    with transaction.atomic():
        row = MoneyMovement.objects.select_for_update().get(pk=movement.pk)
        release = {"claimed_until": None} if claimed else {}
        if row.status in MoneyMovement.FINAL:
            MoneyMovement.objects.filter(pk=row.pk).update(**release)
            return []
        if isinstance(result, Succeeded):
            return _finish(row, recipe, Status.SUCCEEDED, result, now, release)
        if isinstance(result, Declined) and authoritative:
            return _finish(row, recipe, Status.DECLINED, result, now, release)
        if isinstance(result, Pending):
            return _wait(row, recipe, result, now, release)
        _stay_open(row, recipe, _reason(result), now, release, asked=_asked(result))
        return []


def _asked(result: ProviderResult) -> bool:
    """Whether the provider was asked at all: not when our own open circuit refused the call."""
    if isinstance(result, Unknown):
        return result.asked
    return not (isinstance(result, Declined) and result.code in NOT_CALLED_CODES)


def _finish(
    row: MoneyMovement, recipe: Operation, target: str, result: Succeeded | Declined, now: Any, release: dict
) -> list[MoneyMovement]:
    fields: dict[str, Any] = {"next_sync_at": None, "resolved_at": now, "claimed_until": None}
    if isinstance(result, Succeeded):
        fields |= {"provider_reference": result.reference or row.provider_reference, "failure_reason": ""}
    else:
        fields["failure_reason"] = _reason(result)
    MoneyMovement.status_move(row.pk, target, sources=[row.status], **fields)
    for name, value in fields.items():
        setattr(row, name, value)
    row.status = target
    movement_outcome_counted(operation=row.operation, provider=row.provider, outcome=target)
    hook = recipe.on_succeeded if isinstance(result, Succeeded) else recipe.on_declined
    follow_ups = list(hook(row, result) or ())  # type: ignore[arg-type]
    if row.escalated_at is not None:  # found out at last (staff's "Sync now", a webhook): the cause is gone
        alert_resolve(key=escalation_key(row), reason=f"the movement {target}")
    log.info("movement.finished", operation=row.operation, key=row.key, status=target)
    return follow_ups


def _wait(row: MoneyMovement, recipe: Operation, result: Pending, now: Any, release: dict) -> list[MoneyMovement]:
    fields = {"provider_reference": result.reference or row.provider_reference, **release}
    fields |= _next_sync(row, recipe, f"waiting: {result.status or 'pending'}", now)
    if row.status == Status.WAITING:
        MoneyMovement.objects.filter(pk=row.pk).update(updated_at=now, **fields)
        return []
    MoneyMovement.status_move(row.pk, Status.WAITING, sources=[row.status], failure_reason="", **fields)
    row.provider_reference, row.status = fields["provider_reference"], Status.WAITING
    movement_outcome_counted(operation=row.operation, provider=row.provider, outcome=Status.WAITING)
    return list(recipe.on_waiting(row, result) or ())


def _stay_open(row: MoneyMovement, recipe: Operation, reason: str, now: Any, release: dict, *, asked: bool) -> None:
    """Unknown (or a refusal that proves nothing): nothing is recorded as done or not done."""
    fields = {"failure_reason": reason[:500], **release, **_next_sync(row, recipe, reason, now, asked=asked)}
    if row.status == Status.PENDING:
        MoneyMovement.status_move(row.pk, Status.UNKNOWN, sources=[Status.PENDING], was_unknown=True, **fields)
        recipe.on_unknown(row, reason)
        movement_outcome_counted(operation=row.operation, provider=row.provider, outcome=Status.UNKNOWN)
        log.warning("movement.unknown", operation=row.operation, key=row.key, reason=reason)
        return
    MoneyMovement.objects.filter(pk=row.pk).update(updated_at=now, **fields)


def _next_sync(row: MoneyMovement, recipe: Operation, reason: str, now: Any, *, asked: bool = True) -> dict[str, Any]:
    """The next look. One not made (our circuit is open: staff have its alert) spends no step of the schedule,
    so a provider outage does not use up every movement's looks and escalate each one."""
    if not asked:
        return {"next_sync_at": now + SYNC_SCHEDULE[0]}
    step = row.sync_attempts
    if step < len(SYNC_SCHEDULE):
        return {"sync_attempts": step + 1, "next_sync_at": now + SYNC_SCHEDULE[step]}
    movement_escalate(row, recipe, reason)
    return {"next_sync_at": None, "escalated_at": now}


def escalation_key(row: MoneyMovement) -> str:
    return f"movement:{row.key}"


def movement_escalate(row: MoneyMovement, recipe: Operation, reason: str) -> Alert:
    """The one escalation: a staff alert per movement, never a silent log line; resolved when it finishes."""
    amount = f" of {Money(row.amount_minor, row.currency)}" if row.currency else ""
    return alert_raise(
        key=escalation_key(row),
        title=f"{row.operation}{amount}: still {row.status} at {row.provider} after {row.sync_attempts} checks",
        detail=f"Money movement {row.pk} (key {row.key}, subject {row.subject_id}): {reason}",
        action_required=recipe.escalation_action(row),
        severity=Alert.Severity.CRITICAL,
    )


def _reason(result: ProviderResult | LookupResult) -> str:
    text = getattr(result, "reason", "") or getattr(result, "status", "")
    return f"{type(result).__name__.lower()}: {text}"[:500]


def run_follow_ups(movements: Iterable[MoneyMovement]) -> None:
    """Send the next steps a hook recorded, once their intent has committed."""
    for movement in movements:
        if in_real_transaction():
            transaction.on_commit(lambda pk=movement.pk: movement_run(pk))
        else:
            movement_run(movement.pk)


# --- 6. the sweeper ----------------------------------------------------------------------------


def _sync_failed(pk: int, error: Exception) -> None:
    """A sync that raised (a bug in a hook) still follows the schedule, so it ends in the staff alert."""
    now = timezone.now()
    with transaction.atomic():
        row = MoneyMovement.objects.select_for_update().get(pk=pk)
        if row.status in MoneyMovement.FINAL:
            return
        reason = f"error while syncing: {error!r}"[:500]
        fields = {
            "failure_reason": reason,
            "claimed_until": None,
            **_next_sync(row, operation_get(row.operation), reason, now),
        }
        MoneyMovement.objects.filter(pk=pk).update(updated_at=now, **fields)


def movement_sync_by_staff(*, movement_id: int, actor: AbstractBaseUser) -> MoneyMovement:
    """Staff ("Sync now" in the admin): look an open movement up now, whatever its schedule; audited."""
    require_permission(actor, "providers.sync_moneymovement")
    before = MoneyMovement.objects.filter(pk=movement_id).values("status", "sync_attempts").first()
    if before is None:
        raise NotFound(f"money movement {movement_id} does not exist", details={"movement": movement_id})
    movement = movement_sync(movement_id=movement_id, force=True)
    audit_record(actor=actor, action="providers.movement.sync", obj=movement, before=before,
                 after={"status": movement.status})  # fmt: skip
    return movement


def movements_due(*, now: Any = None) -> Any:
    now = now or timezone.now()
    return MoneyMovement.objects.filter(status__in=MoneyMovement.OPEN, next_sync_at__lte=now).order_by("next_sync_at")


def movements_sweep(*, limit: int = 200) -> int:
    """Every open movement of every operation whose time has come: looked up (and finished) once more.

    Returns how many were taken up, including any whose sync failed (those follow the schedule too)."""
    swept = 0
    for pk in list(movements_due().values_list("pk", flat=True)[:limit]):
        try:
            movement_sync(movement_id=pk)
        except Exception as error:  # one broken domain hook must not stop the sweep of every other movement
            log.exception("movement.sync_failed", movement=pk)
            _sync_failed(pk, error)
        swept += 1
    return swept
