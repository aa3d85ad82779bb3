"""Celery entry points for providers: thin and re-entrant."""

from celery import shared_task

from providers.protocol import movement_sync, movements_sweep
from providers.webhooks import webhook_events_process, webhook_events_sweep, webhook_process


@shared_task(name="providers.process_webhook_event", acks_late=True)
def process_webhook_event_task(event_pk: int) -> str:
    return webhook_process(event_pk=event_pk).status


@shared_task(name="providers.process_webhook_events", acks_late=True)
def process_webhook_events_task(event_pks: list[int]) -> int:
    """A burst of stored events in one message (providers.webhook_publisher), each claimed and processed once."""
    return webhook_events_process(event_pks=event_pks)


@shared_task(name="providers.sweep_webhook_events")
def sweep_webhook_events_task() -> int:
    return webhook_events_sweep()


@shared_task(name="providers.sweep_money_movements")
def sweep_money_movements_task() -> int:
    """Every open money movement of every operation whose next look is due (DESIGN.md section 5, step 6)."""
    return movements_sweep()


@shared_task(name="providers.sync_money_movement", acks_late=True)
def sync_money_movement_task(movement_pk: int) -> str:
    """A nudge (a webhook arrived for a movement): look it up now if nobody is on it."""
    return movement_sync(movement_id=movement_pk, force=True).status
