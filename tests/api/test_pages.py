"""List endpoints page with bounds: a bad or huge `limit` / `offset` is a 400 in the one error body, never a 500."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.escrow.factories_deals import UserFactory

URL = "/api/v1/purchases/"


@pytest.fixture
def client() -> APIClient:
    client = APIClient()
    client.force_authenticate(UserFactory())
    return client


@pytest.mark.django_db
@pytest.mark.parametrize(
    "query",
    ["limit=1000000000000000000000000000000", "offset=1000000000000000000000000000000", "offset=null", "limit=",
     "offset=-1", "limit=1.5", "limit=%EF%BC%91"],
)  # fmt: skip
def test_a_bad_page_parameter_is_a_400_with_the_error_body(client, query):
    answer = client.get(f"{URL}?{query}")
    assert answer.status_code == 400, answer.content
    error = answer.json()["error"]
    assert error["code"] == "invalid_request" and error["user_message"] and error["action_required"]


@pytest.mark.django_db
def test_a_large_limit_is_capped_and_a_plain_page_answers(client):
    answer = client.get(f"{URL}?limit=100000&offset=0")
    assert answer.status_code == 200 and answer.json()["results"] == []
    assert client.get(URL).status_code == 200
