"""The staff analytics API and the selectors behind it: who may read, bounded parameters, and the figures of
tests/analytics/seed.py as the dashboard's charts get them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from rest_framework.test import APIClient

from analytics import selectors
from analytics.services import rollup_days
from core.roles import roles_sync
from tests.analytics.seed import History

User = get_user_model()
ENDPOINTS = ("volume", "success-rate", "failure-reasons", "refund-rate", "time-to-final", "statuses")


@pytest.fixture
def rolled_up(history: History) -> History:
    rollup_days(first=history.day - timedelta(days=1), last=history.day + timedelta(days=1))
    return history


@pytest.fixture
def viewer(db) -> APIClient:
    roles_sync()  # a transactional test elsewhere may have flushed the groups
    user = User.objects.create_user("analytics-viewer", is_staff=True)
    user.groups.add(Group.objects.get(name="Finance viewer"))
    client = APIClient()
    client.force_authenticate(user=User.objects.get(pk=user.pk))
    return client


def _client(user: object | None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user=user)
    return client


def _index(labels: list[str], history: History, offset: int = 0) -> int:
    return labels.index(str(history.day + timedelta(days=offset)))


def test_volume_and_success_rate_per_provider_and_day(rolled_up: History, viewer: APIClient) -> None:
    body = viewer.get("/api/v1/analytics/volume/", {"kind": "payment", "days": 14}).json()
    assert body == selectors.volume_by_provider_day("payment", 14)
    assert len(body["labels"]) == 14 and body["labels"][-1] == str(rolled_up.day + timedelta(days=1))
    assert [(line["provider"], line["currency"]) for line in body["series"]] == [
        ("gcash", "PHP"), ("maya", "PHP"), ("stripe", "PHP"), ("stripe", "USD"),
    ]  # fmt: skip
    usd = body["series"][3]
    d = _index(body["labels"], rolled_up)
    assert usd["count"][d - 1 : d + 2] == [1, 3, 1]  # p10; p1, p2, p3; p9
    assert usd["amount_minor"][d - 1 : d + 2] == [7_000, 17_500, 1_000]
    assert usd["succeeded_count"][d - 1 : d + 2] == [0, 2, 1]
    assert usd["succeeded_amount_minor"][d - 1 : d + 2] == [0, 15_000, 1_000]
    assert sum(usd["count"]) == 5 and body["as_of"].endswith("Z")

    rates = viewer.get("/api/v1/analytics/success-rate/", {"kind": "payment"}).json()
    assert rates == selectors.success_rate_by_provider_day("payment")
    by_provider = {line["provider"]: line for line in rates["series"]}
    assert by_provider["stripe"]["rate_bps"][d - 1 : d + 2] == [0, 7_500, 10_000]  # 3 of 4 on D (USD and PHP)
    assert by_provider["stripe"]["rate_bps"][0] is None  # nothing that day
    assert by_provider["maya"]["rate_bps"][d] == 0  # one failed, one pending (not counted)
    assert by_provider["gcash"]["rate_bps"][d] == 5_000


def test_failure_reasons_refund_rate_time_to_final_and_statuses(rolled_up: History, viewer: APIClient) -> None:
    reasons = viewer.get("/api/v1/analytics/failure-reasons/", {"kind": "payment"}).json()
    assert (reasons["labels"], reasons["totals"]) == (["card_declined", "failed"], [3, 1])
    assert reasons["series"] == [
        {"provider": "gcash", "data": [0, 1]},
        {"provider": "maya", "data": [1, 0]},
        {"provider": "stripe", "data": [2, 0]},
    ]
    top = viewer.get("/api/v1/analytics/failure-reasons/", {"kind": "payment", "top": 1}).json()
    assert top["labels"] == ["card_declined"] and [line["provider"] for line in top["series"]] == ["maya", "stripe"]

    refunds = viewer.get("/api/v1/analytics/refund-rate/", {"days": 7}).json()
    d = _index(refunds["labels"], rolled_up)
    usd = next(line for line in refunds["series"] if (line["provider"], line["currency"]) == ("stripe", "USD"))
    assert (usd["paid_minor"][d], usd["refunded_minor"][d], usd["rate_bps"][d]) == (15_000, 2_000, 1_333)
    assert usd["rate_bps"][d - 1] is None  # p10 failed: nothing paid that day
    purchases = viewer.get("/api/v1/analytics/refund-rate/", {"kind": "purchase", "days": 7}).json()
    assert purchases["series"][1]["rate_bps"][d] == 5_000  # stripe USD: 10,000 refunded of 20,000 captured

    timing = viewer.get("/api/v1/analytics/time-to-final/", {"kind": "escrow", "days": 3}).json()
    assert timing["series"] == [{"provider": "stripe", "final_count": [0, 3, 0], "average_seconds": [None, 1001, None]}]

    breakdown = viewer.get("/api/v1/analytics/statuses/", {"kind": "payout", "days": 2}).json()
    assert breakdown["rows"] == [
        {"provider": "paypal", "currency": "USD", "status": status, "count": 1, "amount_minor": amount}
        for status, amount in (("FAILED", 500), ("RETURNED", 3_000), ("SUCCESS", 1_000), ("UNCLAIMED", 2_000))
    ] + [{"provider": "stripe", "currency": "JPY", "status": "SUCCESS", "count": 1, "amount_minor": 4_000}]
    assert (breakdown["since"], breakdown["until"]) == (str(rolled_up.day), str(rolled_up.day + timedelta(days=1)))


def test_before_any_rollup_every_chart_is_empty_but_well_formed(db, viewer: APIClient) -> None:
    for endpoint in ENDPOINTS:
        response = viewer.get(f"/api/v1/analytics/{endpoint}/", {"days": 1})
        assert response.status_code == 200, endpoint
        assert response.json()["as_of"] is None


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_anonymous_is_401_and_customers_and_staff_without_the_permission_are_403(db, endpoint: str) -> None:
    url = f"/api/v1/analytics/{endpoint}/"
    anonymous = _client(None).get(url)
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "not_authenticated"
    customer = User.objects.create_user("customer")
    staff_without = User.objects.create_user("staff-without", is_staff=True)
    not_staff_with = User.objects.create_user("not-staff-with")  # the permission alone is not enough
    not_staff_with.user_permissions.add(Permission.objects.get(codename="view_dailystatussummary"))
    for user in (customer, staff_without, User.objects.get(pk=not_staff_with.pk)):
        response = _client(user).get(url)
        assert response.status_code == 403, user
        assert response.json()["error"]["details"] == {"permission": "analytics.view_dailystatussummary"}


@pytest.mark.parametrize(
    ("endpoint", "query", "field"),
    [
        ("volume", {"days": 0}, "days"),
        ("volume", {"days": 367}, "days"),
        ("success-rate", {"days": "ten"}, "days"),
        ("success-rate", {"days": "9" * 400}, "days"),
        ("success-rate", {"days": "7.0"}, "days"),
        ("volume", {"days": "+7"}, "days"),
        ("time-to-final", {"kind": "everything"}, "kind"),
        ("statuses", {"kind": ""}, "kind"),
        ("refund-rate", {"days": ""}, "days"),
        ("failure-reasons", {"top": 0}, "top"),
        ("failure-reasons", {"top": 51}, "top"),
        ("refund-rate", {"kind": "escrow"}, "kind"),
    ],
)
def test_bad_parameters_are_a_400_in_the_one_error_body(viewer: APIClient, endpoint: str, query: dict, field: str):
    response = viewer.get(f"/api/v1/analytics/{endpoint}/", query)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and field in error["details"]["fields"]


def test_selectors_refuse_what_the_api_would_never_pass() -> None:
    with pytest.raises(ValueError, match="days"):
        selectors.volume_by_provider_day("payment", days=367)
    with pytest.raises(ValueError, match="kind"):
        selectors.success_rate_by_provider_day("nothing")
    with pytest.raises(ValueError, match="refund rates"):
        selectors.refund_rate_by_provider_day(kind="escrow")
