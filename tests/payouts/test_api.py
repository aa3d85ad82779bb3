"""The payouts API: staff disburse, prepare, approve, execute and retry over HTTP (rate limited, idempotent,
errors in the one error body); client users list only their own payouts."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import django_ratelimit.core
import pytest
from django.contrib.auth.models import Group, User
from django.urls import reverse
from rest_framework.test import APIClient

from core.locks import lock_acquire
from core.money import Money
from core.roles import roles_sync
from payouts.models import PayoutBatch, PayoutCycle, WinnerSelection
from payouts.services import batch_execute, batch_sync, cycle_prepare, sender_batch_id, winnings_fund

pytestmark = [pytest.mark.django_db]


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.PROVIDER_STATE_KEY_PREFIX = f"test:payouts-api:{uuid.uuid4().hex}"
    settings.PROVIDER_RETRY_ATTEMPTS = 1
    settings.RATELIMIT_CACHE_PREFIX = f"test:rl:{uuid.uuid4().hex}:"  # Redis outlives the test database


class Clock:
    """The time django-ratelimit sees, so its one-minute windows are exact in tests."""

    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(django_ratelimit.core, "time", SimpleNamespace(time=clock.time))
    return clock


def member(username: str, *roles: str, is_staff: bool = True) -> User:
    roles_sync()
    user = User.objects.create_user(username, is_staff=is_staff)
    user.groups.set(Group.objects.filter(name__in=roles))
    return User.objects.get(pk=user.pk)


def client_for(user: User | None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


def post(client: APIClient, name: str, pk: int, key: str | None = None):
    url = reverse(f"payouts-api:{name}", args=[pk])
    return client.post(url, format="json", HTTP_IDEMPOTENCY_KEY=key or uuid.uuid4().hex)


@pytest.fixture
def operator() -> User:
    return member("operator", "Finance operator")


@pytest.fixture
def approver() -> User:
    return member("approver", "Finance approver")


@pytest.fixture
def winners() -> list[User]:
    return [User.objects.create_user(f"winner-{n}") for n in range(4)]


@pytest.fixture
def cycle(winners: list[User]) -> PayoutCycle:
    cycle = PayoutCycle.objects.create(name="November")
    receivers = ["paid@example.com", "unclaimed@example.com", "fail@example.com", "return@example.com"]
    for n, (user, receiver) in enumerate(zip(winners, receivers, strict=True)):
        WinnerSelection.objects.create(
            cycle=cycle, user=user, amount_minor=10_000 * (n + 1), currency="USD", recipient_type="EMAIL",
            recipient=receiver,
        )  # fmt: skip
    winnings_fund(amount=Money(1_000_000, "USD"), reference="pool-1")
    return cycle


def error_of(response) -> dict:
    assert set(response.json()) == {"error"}
    return response.json()["error"]


# --- disburse -----------------------------------------------------------------------------------


def test_disburse_returns_the_sent_batch_with_its_progress(sandbox, clock, operator, cycle):
    response = post(client_for(operator), "cycle-disburse", cycle.pk)

    assert response.status_code == 200, response.json()
    batch = PayoutBatch.objects.get(cycle=cycle)
    body = response.json()
    assert body["cycle"] == cycle.pk
    [sent] = body["batches"]
    assert {k: sent[k] for k in ("id", "sender_batch_id", "provider", "status", "currency")} == {
        "id": batch.pk,
        "sender_batch_id": sender_batch_id(cycle.pk, batch.checksum),
        "provider": "paypal",
        "status": "submitted",
        "currency": "USD",
    }
    assert (sent["total_minor"], sent["item_count"], sent["prepared_by"]) == (100_000, 4, operator.pk)
    assert sent["provider_batch_id"] == batch.provider_batch_id != ""
    assert sent["progress"] == [{"status": "PENDING", "count": 4, "amount_minor": 100_000}]
    assert sandbox.calls["paypal.payouts.create"] == 1


def test_a_second_disburse_within_a_minute_is_rate_limited_with_retry_after(sandbox, clock, operator, cycle):
    client = client_for(operator)
    assert post(client, "cycle-disburse", cycle.pk, key="first").status_code == 200

    replay = post(client, "cycle-disburse", cycle.pk, key="first")  # a replay is not a new disburse
    limited = post(client, "cycle-disburse", cycle.pk, key="second")

    assert (replay.status_code, replay["Idempotent-Replayed"]) == (200, "true")
    assert limited.status_code == 429
    error = error_of(limited)
    wait = int(limited["Retry-After"])
    assert 1 <= wait <= 60
    assert (error["code"], error["retryable"], error["details"]) == (
        "rate_limited",
        True,
        {"cycle_id": cycle.pk, "retry_after_seconds": wait},
    )
    assert error["user_message"] == "You asked to disburse this cycle less than a minute ago."
    assert error["action_required"] == f"Check the cycle's batches first; if still needed, try again in {wait} s."

    clock.now += wait - 1
    assert post(client, "cycle-disburse", cycle.pk, key="third").status_code == 429  # still inside the minute
    clock.now += 1
    again = post(client, "cycle-disburse", cycle.pk, key="second")  # the refused key was not kept
    assert again.status_code == 200 and "Idempotent-Replayed" not in again
    assert [b["status"] for b in again.json()["batches"]] == ["submitted"]  # the same batch, not sent again
    assert sandbox.calls["paypal.payouts.create"] == 1


def test_the_disburse_limit_is_per_staff_user_and_per_cycle(sandbox, clock, operator, cycle, winners):
    colleague = member("colleague", "Finance operator")
    other_cycle = PayoutCycle.objects.create(name="December")
    WinnerSelection.objects.create(
        cycle=other_cycle, user=winners[0], amount_minor=500, currency="USD", recipient_type="EMAIL",
        recipient="paid@example.com",
    )  # fmt: skip

    assert post(client_for(operator), "cycle-disburse", cycle.pk).status_code == 200
    assert post(client_for(colleague), "cycle-disburse", cycle.pk).status_code == 200
    assert post(client_for(operator), "cycle-disburse", other_cycle.pk).status_code == 200
    assert post(client_for(operator), "cycle-disburse", cycle.pk).status_code == 429


def test_disburse_of_a_locked_cycle_is_423_with_the_holder(sandbox, clock, operator, cycle):
    lock = lock_acquire(key=f"payout-cycle:{cycle.pk}", holder="alice", reason="preparing payouts")

    response = post(client_for(operator), "cycle-disburse", cycle.pk)

    assert response.status_code == 423
    error = error_of(response)
    assert (error["code"], error["retryable"]) == ("resource_locked", True)
    assert error["user_message"] == "alice is already processing this (preparing payouts)."
    assert error["action_required"] == f"Wait until {lock.expires_at:%H:%M} UTC, or ask alice to finish or release it."
    assert error["details"]["holder"] == "alice"
    assert not PayoutBatch.objects.exists()


def test_disburse_needs_staff_and_the_services_permission(sandbox, clock, cycle, winners):
    viewer = member("viewer", "Finance viewer")

    anonymous = post(client_for(None), "cycle-disburse", cycle.pk)
    customer = post(client_for(winners[0]), "cycle-disburse", cycle.pk)
    not_allowed = post(client_for(viewer), "cycle-disburse", cycle.pk)

    assert (anonymous.status_code, customer.status_code, not_allowed.status_code) == (401, 403, 403)
    error = error_of(not_allowed)
    assert (error["code"], error["details"]) == ("permission_denied", {"permission": "payouts.prepare_payoutbatch"})
    assert error["action_required"] == (
        "Ask an administrator for the permission 'payouts.prepare_payoutbatch' or a finance role with it."
    )
    assert not PayoutBatch.objects.exists()


def test_post_without_idempotency_key_is_refused(sandbox, clock, operator, cycle):
    response = client_for(operator).post(reverse("payouts-api:cycle-disburse", args=[cycle.pk]), format="json")

    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_request"
    assert not PayoutBatch.objects.exists()


# --- prepare, approve, execute, retry, status ----------------------------------------------------


def test_prepare_approve_execute_with_maker_checker(sandbox, operator, approver, cycle, settings):
    settings.PAYOUT_APPROVAL_THRESHOLD_MINOR = 50_000
    both = member("both", "Finance operator", "Finance approver")

    prepared = post(client_for(both), "cycle-prepare", cycle.pk)
    [batch] = prepared.json()["batches"]
    own = post(client_for(both), "batch-approve", batch["id"])
    early = post(client_for(operator), "batch-execute", batch["id"])
    approved = post(client_for(approver), "batch-approve", batch["id"])
    executed = post(client_for(operator), "batch-execute", batch["id"])

    assert (prepared.status_code, batch["status"], batch["total_minor"]) == (200, "prepared", 100_000)
    assert batch["progress"] == [{"status": "NEW", "count": 4, "amount_minor": 100_000}]
    assert own.status_code == 403
    assert (error_of(own)["code"], error_of(own)["user_message"]) == (
        "maker_checker",
        "The person who prepared this batch cannot also approve it.",
    )
    assert early.status_code == 409
    assert error_of(early)["user_message"] == "This batch is prepared; it can only be sent once it is approved."
    assert (approved.status_code, approved.json()["status"], approved.json()["approved_by"]) == (
        200,
        "approved",
        approver.pk,
    )
    assert (executed.status_code, executed.json()["status"]) == (200, "submitted")
    assert sandbox.calls["paypal.payouts.create"] == 1


def test_approving_an_approved_batch_is_409_with_what_to_do(sandbox, operator, approver, cycle):
    (batch,) = cycle_prepare(cycle_id=cycle.pk, actor=operator)  # below the threshold: approved already

    response = post(client_for(approver), "batch-approve", batch.pk)

    assert response.status_code == 409
    error = error_of(response)
    assert (error["code"], error["user_message"], error["action_required"]) == (
        "invalid_state",
        "This batch is approved and needs no approval.",
        "Reload the batch to see its current state.",
    )


def test_batch_status_shows_progress_and_retry_failed_prepares_the_unpaid(sandbox, operator, cycle):
    (batch,) = cycle_prepare(cycle_id=cycle.pk, actor=operator)
    batch_execute(batch_id=batch.pk, actor=operator)
    for _ in range(3):
        sandbox.tick()
    batch_sync(batch_id=batch.pk)
    client = client_for(operator)

    status = client.get(reverse("payouts-api:batch-detail", args=[batch.pk]))
    retried = post(client, "batch-retry-failed", batch.pk)

    assert (status.status_code, status.json()["status"]) == (200, "completed")
    assert status.json()["progress"] == [
        {"status": "UNCLAIMED", "count": 1, "amount_minor": 20_000},
        {"status": "SUCCESS", "count": 1, "amount_minor": 10_000},
        {"status": "FAILED", "count": 1, "amount_minor": 30_000},
        {"status": "RETURNED", "count": 1, "amount_minor": 40_000},
    ]
    assert retried.status_code == 200
    [retry] = retried.json()["batches"]
    assert (retry["retry_of"], retry["status"], retry["total_minor"], retry["item_count"]) == (
        batch.pk,
        "approved",
        70_000,
        2,
    )
    assert retry["progress"] == [{"status": "NEW", "count": 2, "amount_minor": 70_000}]


def test_unknown_batch_is_404(operator):
    client = client_for(operator)

    status = client.get(reverse("payouts-api:batch-detail", args=[999_999]))
    approve = post(client, "batch-approve", 999_999)

    assert (status.status_code, approve.status_code) == (404, 404)
    assert error_of(approve)["details"] == {"batch_id": 999_999}


def test_reading_a_batch_needs_the_view_permission(sandbox, operator, cycle):
    batch = post(client_for(operator), "cycle-prepare", cycle.pk).json()["batches"][0]
    bare_staff = User.objects.create_user("bare-staff", is_staff=True)

    refused = client_for(bare_staff).get(reverse("payouts-api:batch-detail", args=[batch["id"]]))

    assert refused.status_code == 403
    assert error_of(refused)["details"] == {"permission": "payouts.view_payoutbatch"}
    assert client_for(operator).get(reverse("payouts-api:batch-detail", args=[batch["id"]])).status_code == 200


# --- my payouts ----------------------------------------------------------------------------------


def test_my_payouts_lists_only_the_callers_items(sandbox, operator, cycle, winners):
    (batch,) = cycle_prepare(cycle_id=cycle.pk, actor=operator)
    batch_execute(batch_id=batch.pk, actor=operator)
    url = reverse("payouts-api:my-payouts")

    mine = client_for(winners[1]).get(url)
    nobody = client_for(User.objects.create_user("not-a-winner")).get(url)
    anonymous = client_for(None).get(url)

    assert mine.status_code == 200
    item = batch.items.get(selection__user=winners[1])
    [row] = mine.json()["results"]
    assert {k: v for k, v in row.items() if k not in ("created_at", "updated_at")} == {
        "id": item.pk,
        "cycle": cycle.pk,
        "cycle_name": "November",
        "amount_minor": 20_000,
        "currency": "USD",
        "status": "PENDING",
        "recipient_type": "EMAIL",
        "recipient": "unclaimed@example.com",
    }
    assert (mine.json()["count"], nobody.json()["count"], nobody.json()["results"]) == (1, 0, [])
    assert anonymous.status_code == 401
