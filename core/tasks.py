from celery import shared_task

from core.services import idempotency_keys_purge


@shared_task(name="core.purge_idempotency_keys")
def purge_idempotency_keys_task() -> int:
    return idempotency_keys_purge()
