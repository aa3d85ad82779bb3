"""A task for the logging tests only: it logs one event (with some personal data to redact) and says which
request id it ran under. Registered when imported: by the test module, and by the test's worker (`-I`)."""

from __future__ import annotations

import structlog
from celery import shared_task

from core.context import bound_request_id

log = structlog.get_logger(__name__)


@shared_task(name="tests.ops.log_request_id")
def log_request_id_task(marker: str) -> str | None:
    log.info("ops_test.task_ran", marker=marker, customer_email="jane.doe@example.com")
    return bound_request_id()
