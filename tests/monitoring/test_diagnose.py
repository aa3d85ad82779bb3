"""`manage.py diagnose`: exit 0 when nothing needs a person, 1 naming each check that does, 2 without a database."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.utils import timezone

from core.alerts import alert_raise
from core.models import Alert, ProcessingLock
from escrow.models import EscrowDeal
from monitoring.models import ReconciliationIssue, ReconciliationRun
from providers.base import Unknown
from providers.breaker import breaker_for
from providers.models import MoneyMovement
from tests.escrow.factories_deals import UserFactory, seller

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _isolated(settings):
    settings.PROVIDER_STATE_KEY_PREFIX = f"test:diagnose:{uuid.uuid4().hex}"  # every circuit closed
    settings.ALERT_UNKNOWN_AFTER_MINUTES = 60
    settings.PROVIDER_BREAKERS = {"paypal": {"failure_threshold": 1}}


def diagnose(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command("diagnose", *args, stdout=out)
    except SystemExit as exit_:
        return int(exit_.code or 0), out.getvalue()
    return 0, out.getvalue()


def diagnose_json() -> tuple[int, dict]:
    code, text = diagnose("--json")
    return code, json.loads(text)


def ago(**kwargs: float):
    return timezone.now() - timedelta(**kwargs)


def movement(**fields) -> MoneyMovement:
    defaults = {"operation": "payout.paypal_batch", "subject_id": 1, "key": uuid.uuid4().hex, "provider": "paypal"}
    return MoneyMovement.objects.create(**(defaults | fields))


def test_a_healthy_back_office_exits_0():
    movement(status=MoneyMovement.Status.WAITING, next_sync_at=timezone.now() + timedelta(minutes=5))
    code, text = diagnose()
    assert code == 0 and "Nothing needs a person." in text
    assert "1 waiting" in text

    code, document = diagnose_json()
    assert code == document["exit_code"] == 0 and document["needs_a_person"] == []
    names = [check["name"] for check in document["checks"]]
    assert names == [
        "database", "redis", "circuits", "alerts", "movements", "payout batches", "locks", "reconciliation", "escrow",
    ]  # fmt: skip


def test_what_only_deserves_a_look_still_exits_0():
    alert_raise(key="escrow:authorizations:expiring", title="2 authorizations will lapse soon")  # a warning
    critical = alert_raise(key="circuit:stripe", title="Stripe failing", severity=Alert.Severity.CRITICAL)
    Alert.objects.filter(pk=critical.pk).update(status=Alert.Status.ACKNOWLEDGED)  # someone is on it
    movement(status=MoneyMovement.Status.UNKNOWN, first_sent_at=ago(minutes=5), next_sync_at=ago(minutes=1))
    code, document = diagnose_json()
    alerts = next(check for check in document["checks"] if check["name"] == "alerts")
    assert code == 0 and alerts["status"] == "warn"
    assert alerts["details"]["counts"] == {"open_warning": 1, "acknowledged_critical": 1}


def open_critical_alert() -> None:
    alert_raise(key="movement:k1", title="still unknown", severity=Alert.Severity.CRITICAL)


def unknown_past_threshold() -> None:
    movement(status=MoneyMovement.Status.UNKNOWN, first_sent_at=ago(hours=2), next_sync_at=timezone.now())


def overdue_sync() -> None:
    movement(status=MoneyMovement.Status.PENDING, next_sync_at=ago(hours=1))  # the sweeper is not running


def escalated_movement() -> None:
    movement(status=MoneyMovement.Status.WAITING, next_sync_at=None, escalated_at=ago(days=1), first_sent_at=ago())


def stale_lock() -> None:
    ProcessingLock.objects.create(
        key="payout-cycle:3", holder="alice", acquired_at=ago(hours=1), expires_at=ago(minutes=1)
    )


def open_circuit() -> None:
    breaker_for("paypal").record(Unknown(reason="timed out"))  # one failure opens it (see _isolated)


def open_reconciliation_issue() -> None:
    day = timezone.now().date() - timedelta(days=1)
    run = ReconciliationRun.objects.create(date=day, provider="stripe", trigger="command", started_at=ago())
    ReconciliationIssue.objects.create(run=run, last_seen_run=run, date=day, kind="missing_in_ledger",
                                       provider="stripe", provider_reference="pi_1", currency="USD")  # fmt: skip


def deal_past_deadline() -> None:
    EscrowDeal.objects.create(
        buyer=UserFactory(), seller_account=seller(None), amount_minor=1_000, currency="USD", commission_bps=800,
        commission_minor=80, deadline=ago(hours=2), timeout_policy="refund", hold_mode="authorization",
        status=EscrowDeal.Status.HELD, client_key=uuid.uuid4().hex, payment_method="pm_card_visa",
    )  # fmt: skip


STUCK: dict[str, tuple[str, Callable[[], None]]] = {
    "open critical alert": ("alerts", open_critical_alert),
    "unknown past threshold": ("movements", unknown_past_threshold),
    "overdue sync": ("movements", overdue_sync),
    "escalated movement": ("movements", escalated_movement),
    "stale lock": ("locks", stale_lock),
    "open circuit": ("circuits", open_circuit),
    "open reconciliation issue": ("reconciliation", open_reconciliation_issue),
    "deal past deadline": ("escrow", deal_past_deadline),
}


@pytest.mark.parametrize(("check", "make_stuck"), STUCK.values(), ids=STUCK.keys())
def test_something_that_needs_a_person_exits_1_and_names_its_check(check, make_stuck):
    make_stuck()
    code, document = diagnose_json()
    assert code == document["exit_code"] == 1
    assert document["needs_a_person"] == [check]

    code, text = diagnose()
    assert code == 1 and f"Needs a person: {check}." in text


def test_an_unreachable_database_exits_2():
    environment = os.environ | {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": "postgres://postgres@127.0.0.1:1/nowhere",  # nothing listens on port 1
        "REDIS_URL": "",
    }
    manage = Path(django_settings.BASE_DIR) / "manage.py"
    finished = subprocess.run(  # noqa: S603 - our own interpreter and manage.py
        [sys.executable, str(manage), "diagnose", "--json"], env=environment, capture_output=True, timeout=60,
        text=True, check=False,
    )  # fmt: skip
    assert finished.returncode == 2, finished.stderr
    document = json.loads(finished.stdout)
    assert document["needs_a_person"] == ["database"] and document["exit_code"] == 2
