"""`python -m ops.stack_smoke` (`make stack-smoke`): the real stack, started from nothing, moves money over HTTP.

1. A fresh PostgreSQL database (backoffice_stack_smoke, dropped and created) and Redis database 7 (flushed);
   override with STACK_SMOKE_DATABASE_URL and STACK_SMOKE_REDIS_URL.
2. `ops.stack.Stack` on spare ports: migrate, collectstatic, the sandbox, gunicorn, two named workers, beat
   (logs in var/stack-smoke/).
3. Seeds people with API tokens, a seller, a service and a funded payout cycle (ops.smoke_seed).
4. Over the API, with the tokens: a card payment refunded in part; an escrow deal released to the seller; a
   purchase delivered, then failed and refunded; worker1 killed with SIGKILL and started again; a payout cycle
   prepared by an operator, approved by a second person (maker-checker), sent to PayPal and settled by the
   sandbox's webhooks through the workers.
5. `manage.py ledger_check`, then every sandbox movement has exactly one ledger posting (ops.smoke_checks).
6. Stops every process it started, prints a summary, exits 0; on any failure a message and exit 1.
Every wait is bounded; the whole run takes well under 5 minutes (TOTAL_SECONDS).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import httpx

from ops.stack import ROOT, Stack, StackCheckFailed, database_create

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/backoffice_stack_smoke"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/7"
TOTAL_SECONDS = 270.0  # the whole run, stack start and stop included
STEP_SECONDS = 60.0  # one wait for a state over the API or for webhooks
SANDBOX_TICKS = 2  # PayPal works through a batch: PROCESSING, then the items' outcomes
# Our endpoint may be busy for a moment: the sandbox retries within seconds here, not hours.
STACK_ENV = {"SANDBOX_WEBHOOK_RETRY_BASE_SECONDS": "0.5", "SANDBOX_WEBHOOK_RETRY_CAP_SECONDS": "5"}
T = TypeVar("T")


class Api:
    """The JSON API as one client app or staff member sees it: their token, an Idempotency-Key per POST."""

    def __init__(self, base_url: str, token: str) -> None:
        self.client = httpx.Client(base_url=base_url, headers={"Authorization": f"Token {token}"}, timeout=60)

    def get(self, path: str) -> dict[str, Any]:
        return self._checked("GET", path, self.client.get(path))

    def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.client.post(path, json=body or {}, headers={"Idempotency-Key": str(uuid.uuid4())})
        return self._checked("POST", path, response)

    def _checked(self, method: str, path: str, response: httpx.Response) -> dict[str, Any]:
        if response.status_code not in (200, 201):
            raise StackCheckFailed(f"{method} {path} answered {response.status_code}: {response.text[:600]}")
        body: dict[str, Any] = response.json()
        return body


def wait_for(what: str, check: Callable[[], T | None], seconds: float = STEP_SECONDS) -> T:
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise StackCheckFailed(f"{what}: not within {seconds:.0f} s")
        time.sleep(0.5)


def has_status(api: Api, path: str, wanted: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        body = api.get(path)
        return body if body["status"] == wanted else None

    return check


class Lifecycle:
    def __init__(self, stack: Stack, seeded: Any, say: Callable[[str], None]) -> None:
        self.stack, self.seeded, self.say = stack, seeded, say
        self.api = {role: Api(stack.web_url, key) for role, key in seeded.tokens.items()}
        self.provider_batch_ids: list[str] = []

    def payment_refunded(self) -> None:
        buyer, approver = self.api["buyer"], self.api["approver"]
        card = {"provider": "stripe", "method": "card", "payment_method_token": "pm_card_visa"}
        payment = buyer.post("/api/v1/payments/", {"amount_minor": 25_000, "currency": "USD", **card})
        reference = payment["reference"]
        wait_for(f"payment {reference} succeeded", has_status(buyer, f"/api/v1/payments/{reference}/", "succeeded"))
        refund = approver.post(f"/api/v1/payments/{reference}/refunds/", {"amount_minor": 5_000})
        self._expect("refund", refund["status"], "succeeded")
        after = buyer.get(f"/api/v1/payments/{reference}/")
        self._expect("refunded amount", after["refunded_minor"], 5_000)
        self.say(f"payment {reference}: USD 250.00 succeeded, USD 50.00 refunded by the approver")

    def escrow_released(self) -> None:
        buyer = self.api["buyer"]
        deadline = (time.time() + timedelta(days=3).total_seconds()) // 1
        deal = buyer.post("/api/v1/escrow/deals/", {
            "seller_account": self.seeded.seller_account, "amount_minor": 12_000, "currency": "USD",
            "deadline": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(deadline)), "timeout_policy": "refund",
            "payment_method": "pm_card_visa",
        })  # fmt: skip
        path = f"/api/v1/escrow/deals/{deal['id']}/"
        wait_for(f"escrow deal {deal['id']} held", has_status(buyer, path, "held"))
        buyer.post(f"{path}release/")
        done = wait_for(f"escrow deal {deal['id']} transferred", has_status(buyer, path, "transferred"))
        self.say(f"escrow deal #{deal['id']}: released, seller paid {done['seller_net_minor']} cents "
                 f"after {done['commission_minor']} commission")  # fmt: skip

    def purchase_failed_and_refunded(self) -> None:
        buyer, delivery = self.api["buyer"], self.api["delivery"]
        purchase = buyer.post("/api/v1/purchases/", {"service": self.seeded.service, "currency": "USD",
                                                     "payment_method": "pm_card_visa"})  # fmt: skip
        path = f"/api/v1/purchases/{purchase['id']}/"
        wait_for(f"purchase {purchase['id']} reserved", has_status(buyer, path, "reserved"))
        delivery.post(f"{path}delivery/", {"outcome": "delivered"})
        wait_for(f"purchase {purchase['id']} captured", has_status(buyer, path, "captured"))
        delivery.post(f"{path}delivery/", {"outcome": "failed", "detail": "the code never arrived"})
        done = wait_for(f"purchase {purchase['id']} refunded", has_status(buyer, path, "refunded"))
        self.say(f"purchase #{purchase['id']}: captured {done['captured_minor']}, failed, "
                 f"refunded {done['refunded_minor']} cents")  # fmt: skip

    def worker_killed_and_restarted(self) -> None:
        old = self.stack.processes["worker1"].pid
        self.stack.kill("worker1")
        started = time.monotonic()
        new = self.stack.start("worker1").pid
        self.say(f"worker1 (pid {old}) killed with SIGKILL; restarted as pid {new}, answering pings after "
                 f"{time.monotonic() - started:.1f} s")  # fmt: skip

    def payouts_settled(self) -> None:
        operator, approver = self.api["operator"], self.api["approver"]
        cycle = self.seeded.cycle_id
        (batch,) = operator.post(f"/api/v1/payouts/cycles/{cycle}/prepare/")["batches"]
        self._expect("batch after prepare (maker-checker)", batch["status"], "prepared")
        path = f"/api/v1/payouts/batches/{batch['id']}/"
        approved = approver.post(f"{path}approve/")
        self._expect("approver", approved["approved_by"] != approved["prepared_by"], True)
        sent = operator.post(f"{path}execute/")
        self.provider_batch_ids.append(sent["provider_batch_id"])
        self.say(f"payout batch #{batch['id']}: prepared by the operator, approved by the approver, "
                 f"sent as {sent['provider_batch_id']}")  # fmt: skip
        from ops.smoke_checks import webhooks_settled

        for _ in range(SANDBOX_TICKS):
            httpx.post(f"{self.stack.sandbox_url}/_control/tick", timeout=30).raise_for_status()
            webhooks_settled(self.stack.sandbox_url, STEP_SECONDS)
        done = wait_for(f"payout batch {batch['id']} completed", has_status(operator, path, "completed"))
        paid = {row["status"]: row["count"] for row in done["progress"]}
        self._expect("items paid", paid, {"SUCCESS": 3})
        self.say(f"payout batch #{batch['id']}: completed by the sandbox's webhooks, items {paid}")

    def _expect(self, what: str, found: object, wanted: object) -> None:
        if found != wanted:
            raise StackCheckFailed(f"{what}: {found!r}, expected {wanted!r}")


def _fresh_stores(database_url: str, redis_url: str) -> None:
    import redis

    database_create(database_url, drop=True)
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    client.flushdb()
    client.close()


def _django(stack: Stack) -> None:
    """This process reads the same database and sandbox as the stack (seeding and checks)."""
    import django

    os.environ.update(stack.env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()


def _run(stack: Stack, say: Callable[[str], None]) -> list[str]:
    from django.utils import timezone

    from ops.smoke_checks import paypal_items_posted_once, stripe_movements_posted_once, webhooks_settled
    from ops.smoke_seed import seed

    first_day = timezone.now().date()
    seeded = seed(run_id=timezone.now().strftime("%Y%m%d%H%M%S"))
    say("seeded: buyer, seller, service delivery, finance operator and approver (API tokens), a payout cycle")
    life = Lifecycle(stack, seeded, say)
    life.payment_refunded()
    life.escrow_released()
    webhooks_settled(stack.sandbox_url, STEP_SECONDS)
    life.worker_killed_and_restarted()
    life.purchase_failed_and_refunded()
    life.payouts_settled()
    events = webhooks_settled(stack.sandbox_url, STEP_SECONDS)
    stack.manage("ledger_check", timeout=STEP_SECONDS)
    say("manage.py ledger_check: balanced, no drift")
    days = sorted({first_day, timezone.now().date()})  # a run across midnight compares both days
    stripe = sum(stripe_movements_posted_once(day) for day in days)
    paypal = paypal_items_posted_once(life.provider_batch_ids)
    return [
        f"webhook events: {', '.join(f'{n} {status}' for status, n in events.items() if n)}",
        f"Stripe movements at the sandbox: {stripe}, each with exactly one ledger posting (reconciliation clean)",
        f"PayPal items paid at the sandbox: {paypal}, each with exactly one ledger posting",
    ]


def main() -> int:
    started = time.monotonic()
    database_url = os.environ.get("STACK_SMOKE_DATABASE_URL") or DEFAULT_DATABASE_URL
    redis_url = os.environ.get("STACK_SMOKE_REDIS_URL") or DEFAULT_REDIS_URL
    say = lambda line: print(f"[{time.monotonic() - started:6.1f}s] {line}", flush=True)  # noqa: E731
    stack = Stack(database_url, redis_url, workers=2, env=STACK_ENV, log_dir=ROOT / "var" / "stack-smoke")
    try:
        _fresh_stores(database_url, redis_url)
        _django(stack)
        with stack:
            say(f"stack up: web {stack.web_url}, sandbox {stack.sandbox_url}, "
                + ", ".join(f"{name} pid {p.pid}" for name, p in stack.processes.items()))  # fmt: skip
            summary = _run(stack, say)
        say("stack stopped")
    except Exception as error:  # every failure ends the run with a message and exit 1, the stack stopped
        print(f"\nstack smoke FAILED after {time.monotonic() - started:.0f} s: {type(error).__name__}: {error}\n"
              f"process logs: {stack.log_dir}/", file=sys.stderr)  # fmt: skip
        return 1
    elapsed = time.monotonic() - started
    print("\nstack smoke passed in {:.0f} s:\n  {}".format(elapsed, "\n  ".join(summary)))
    if elapsed > TOTAL_SECONDS:
        print(f"stack smoke took {elapsed:.0f} s, over its budget of {TOTAL_SECONDS:.0f} s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
