"""The bank invariant of the chaos tests finds what it is there to find: money the provider moved that we never
recorded, a second card authorization for one deal, a movement nobody will look at again."""

from __future__ import annotations

import uuid

import httpx
import pytest
from django.conf import settings

from providers.models import MoneyMovement
from tests.chaos.invariants import assert_bank_invariant, bank_report
from tests.escrow.factories_deals import UserFactory, held_deal, seller

pytestmark = [pytest.mark.django_db, pytest.mark.chaos]


def _stripe(path: str, form: dict[str, object], key: str) -> dict:
    headers = {"Authorization": f"Bearer {settings.STRIPE_API_KEY}", "Idempotency-Key": key}
    answer = httpx.post(f"{settings.SANDBOX_URL}/stripe/v1{path}", data=form, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_clean_bank_passes_and_counts_what_moved(sandbox, default_payment_config):
    deal = held_deal(UserFactory(), seller(sandbox))
    report = assert_bank_invariant(settled=True)
    assert report.moved == 1 and (report.lost, report.doubled) == (0, 0)
    assert MoneyMovement.objects.get().subject_id == deal.pk


def test_money_moved_at_the_provider_without_our_record_is_lost(sandbox, default_payment_config):
    held_deal(UserFactory(), seller(sandbox))
    form = {"amount": 700, "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}
    charge = _stripe("/payment_intents", form, uuid.uuid4().hex)
    report = bank_report(settled=True)
    assert report.lost >= 1 and any(charge["id"] in problem for problem in report.problems), report.problems


def test_a_second_authorization_for_one_deal_is_doubled(sandbox, default_payment_config):
    deal = held_deal(UserFactory(), seller(sandbox))
    form = {"amount": deal.amount_minor, "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true",
            "capture_method": "manual", "metadata[escrow_deal]": deal.pk}  # fmt: skip
    _stripe("/payment_intents", form, f"escrow:{deal.pk}:hold:new-key")
    report = bank_report(settled=True)
    assert report.doubled == 1, report.problems


def test_an_open_movement_without_a_next_look_is_lost(sandbox, default_payment_config):
    deal = held_deal(UserFactory(), seller(sandbox))
    MoneyMovement.objects.filter(subject_id=deal.pk).update(status=MoneyMovement.Status.UNKNOWN, next_sync_at=None)
    report = bank_report(settled=False)
    assert report.lost == 1 and "without a next look" in report.problems[0], report.problems
