import pytest

from tests.analytics.seed import History, history_seed


@pytest.fixture
def history(db) -> History:
    return history_seed()
