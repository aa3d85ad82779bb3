"""Celery entry points for providers: thin and re-entrant."""

from celery import shared_task

from providers.webhooks import webhook_events_sweep, webhook_process


@shared_task(name="providers.process_webhook_event", acks_late=True)
def process_webhook_event_task(event_pk: int) -> str:
    return webhook_process(event_pk=event_pk).status


@shared_task(name="providers.sweep_webhook_events")
def sweep_webhook_events_task() -> int:
    return webhook_events_sweep()
