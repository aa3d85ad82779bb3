"""Celery entry points for providers: thin and re-entrant."""

from celery import shared_task

from providers.payments import payments_sync_due, refunds_sync_unknown
from providers.webhooks import webhook_events_sweep, webhook_process


@shared_task(name="providers.process_webhook_event", acks_late=True)
def process_webhook_event_task(event_pk: int) -> str:
    return webhook_process(event_pk=event_pk).status


@shared_task(name="providers.sweep_webhook_events")
def sweep_webhook_events_task() -> int:
    return webhook_events_sweep()


@shared_task(name="providers.sync_unknown_payments")
def sync_unknown_payments_task() -> int:
    """Resolve payments and refunds whose outcome at the provider is unknown, on schedule."""
    return payments_sync_due() + refunds_sync_unknown()
