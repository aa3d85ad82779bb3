"""The smoke run's checks after the lifecycle: every webhook the sandbox sent was taken and processed, and every
movement of money at the sandbox has exactly one ledger posting.

- Stripe: the daily reconciliation (`monitoring.reconciliation.reconciliation_run`) compares the sandbox's
  balance transactions of the day with the ledger's postings on the Stripe clearing account and our records;
  it raises an issue for a movement with no posting, two postings, or another amount. None may be open, and
  every balance transaction must be among the matched ones.
- PayPal: every payout item the sandbox paid names exactly one ledger transaction by its provider reference
  (the contract every poster keeps: `metadata["provider_reference"]`).

Import only after `django.setup()` (ops.stack_smoke does).
"""

from __future__ import annotations

import time
from datetime import date

import httpx

from ledger.models import Transaction
from monitoring.models import ReconciliationIssue
from monitoring.reconciliation import day_bounds, reconciliation_run, stripe_pages
from ops.stack import StackCheckFailed
from providers.base import Succeeded
from providers.models import WebhookEvent
from providers.paypal.client import PayPalClient

OPEN_EVENT_STATUSES = (WebhookEvent.Status.RECEIVED, WebhookEvent.Status.PROCESSING)
BAD_EVENT_STATUSES = (WebhookEvent.Status.FAILED, WebhookEvent.Status.REJECTED)


def webhooks_settled(sandbox_url: str, seconds: float) -> dict[str, int]:
    """Wait until the sandbox has nothing left to deliver and our workers processed every event; the events
    by status. Fails on a delivery the sandbox gave up on, and on an event that failed or was rejected."""
    deadline = time.monotonic() + seconds
    waited = httpx.post(f"{sandbox_url}/_control/webhooks/wait", json={"timeout": seconds}, timeout=seconds + 10)
    stats = waited.json()
    if waited.status_code != 200:
        raise StackCheckFailed(f"the sandbox still had {stats['pending']} webhook(s) to deliver after {seconds:.0f} s")
    if stats["failed"]:
        raise StackCheckFailed(f"the sandbox gave up on {stats['failed']} webhook delivery(ies): see var/stack-smoke/")
    while WebhookEvent.objects.filter(status__in=OPEN_EVENT_STATUSES).exists():
        if time.monotonic() > deadline:
            open_events = WebhookEvent.objects.filter(status__in=OPEN_EVENT_STATUSES).count()
            raise StackCheckFailed(
                f"{open_events} webhook event(s) not processed by the workers within {seconds:.0f} s"
            )
        time.sleep(0.5)
    bad = list(WebhookEvent.objects.filter(status__in=BAD_EVENT_STATUSES).values_list("provider", "event_type"))
    if bad:
        raise StackCheckFailed(f"webhook events failed or rejected: {bad} (/admin/providers/webhookevent/)")
    return {status: WebhookEvent.objects.filter(status=status).count() for status in WebhookEvent.Status.values}


def stripe_movements_posted_once(day: date) -> int:
    """The number of the sandbox's Stripe balance transactions of `day`, each matched to one ledger posting."""
    start, end = day_bounds(day)
    movements = sum(len(list(page)) for page in stripe_pages(start, end))
    run = reconciliation_run(day=day, provider="stripe", trigger="command")
    if run.issue_count:
        issues = list(ReconciliationIssue.objects.filter(last_seen_run=run).values_list("kind", "provider_reference"))
        raise StackCheckFailed(f"reconciliation of {day} found {run.issue_count} issue(s): {issues[:10]}")
    if run.matched_count != movements:
        raise StackCheckFailed(f"reconciliation of {day} matched {run.matched_count} of {movements} Stripe movements")
    return movements


def paypal_items_posted_once(provider_batch_ids: list[str]) -> int:
    """The number of payout items the sandbox paid, each named by exactly one ledger transaction."""
    paid = 0
    with PayPalClient() as paypal:
        for batch_id in provider_batch_ids:
            batch = paypal.get_batch(batch_id)
            if not isinstance(batch, Succeeded):
                raise StackCheckFailed(f"could not read PayPal batch {batch_id} at the sandbox: {batch!r}")
            for item in batch.raw.get("items", []):
                if item["transaction_status"] != "SUCCESS":
                    continue
                postings = Transaction.objects.filter(metadata__provider_reference=item["payout_item_id"]).count()
                if postings != 1:
                    raise StackCheckFailed(
                        f"PayPal item {item['payout_item_id']} has {postings} ledger postings, not 1"
                    )
                paid += 1
    return paid
