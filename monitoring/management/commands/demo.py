"""`manage.py demo`: migrate, seed, run the money lifecycles, then serve the admin (or smoke-check it).

Runs on whatever DATABASE_URL says; `make demo` points it at a SQLite file with
no Redis. Seeding is idempotent; each run adds one more lifecycle with its own
references, so re-running shows new activity without double-posting the seed.
The payout cycle and the e-wallet payments live in monitoring.demo; the analytics
rollup runs last, so the dashboard's charts have figures at once.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.test import Client
from django.utils import timezone

from analytics.models import DailyStatusSummary, Kind
from analytics.services import rollup_recent
from core.errors import AppError
from core.money import Money
from core.roles import roles_sync
from escrow.deals import deal_cancel, deal_create, deal_release
from escrow.models import CommissionTier, PurchasableService, SellerAccount, ServicePrice, SpendLimit
from escrow.purchases import purchase_create, purchase_report_delivery
from ledger.integrity import ledger_integrity_report
from ledger.models import Account
from ledger.selectors import account_balance
from ledger.services import (
    account_create,
    credit,
    debit,
    hold_create,
    hold_post,
    hold_void,
    transaction_post,
    transaction_reverse,
)
from monitoring.demo.payouts import PayoutDemo, run_payout_cycle
from monitoring.demo.wallets import run_wallet_payments
from monitoring.demo.webhooks import WebhookReceiver
from monitoring.reconciliation import reconciliation_run
from providers.accounts import account_code, chart_accounts
from providers.models import Payment, WebhookEvent
from providers.payments import payment_initiate, refund_request
from providers.routing import Choice
from providers.sandbox import stripe as stripe_sandbox
from providers.sandbox.server import Sandbox

ADMIN_USERNAME = "finance-admin"
# The wallet top-ups come in through a provider (its clearing account); the examples earn service revenue.
TOP_UP_PROVIDER = {"USD": "stripe", "PHP": "maya"}
CUSTOMERS = [("alice", "USD", 50_000), ("bob", "USD", 0), ("carmen", "PHP", 2_500_000)]


def wallet_code(username: str, currency: str) -> str:
    return f"user:{username}:wallet:{currency}"


class Command(BaseCommand):
    help = "Seed demo data, run a full money lifecycle and serve the admin (or --smoke check it and exit)."

    def add_arguments(self, parser: CommandParser) -> None:
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--serve", action="store_true", help="Serve the admin on 127.0.0.1:8000 afterwards.")
        mode.add_argument("--smoke", action="store_true", help="Check the admin and API answer, then exit.")
        parser.add_argument("--addrport", default="127.0.0.1:8000")

    def handle(self, *args: Any, **options: Any) -> None:
        # Celery runs tasks eagerly here and logs each run (and the in-memory broker's missing host): the demo
        # prints what they did instead.
        logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
        logging.getLogger("kombu.connection").setLevel(logging.ERROR)
        call_command("migrate", interactive=False, verbosity=0)
        password = self.ensure_admin()
        self.seed()
        started_at = timezone.now()
        run_id = started_at.strftime("%Y%m%d%H%M%S%f")
        self.run_lifecycle(run_id=run_id)
        self.start_sandbox()
        self.run_payments(run_id=run_id)
        self.run_escrow(run_id=run_id)
        self.run_purchases(run_id=run_id)
        self.run_payouts_and_wallets(run_id=run_id, started_at=started_at)
        self.run_reconciliation()
        self.run_analytics()
        self.print_balances()
        self.check_ledger()
        self.print_created()
        if options["smoke"]:
            self.smoke_check(password)
            self.stdout.write(self.style.SUCCESS("demo smoke run passed"))
            return
        self.print_credentials(password, options["addrport"])
        if options["serve"]:
            call_command("runserver", options["addrport"], use_reloader=False, insecure_serving=True)

    def ensure_admin(self) -> str:
        user_model = get_user_model()
        user, _ = user_model.objects.get_or_create(username=ADMIN_USERNAME, defaults={"email": "finance@example.com"})
        password = secrets.token_urlsafe(12)
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        return password

    def seed(self) -> None:
        for currency, provider in TOP_UP_PROVIDER.items():
            chart_accounts(currency, "clearing", "fees", "service_revenue", provider=provider)
        for username, currency, opening_minor in CUSTOMERS:
            user, _ = get_user_model().objects.get_or_create(username=username)
            code = wallet_code(username, currency)
            account_create(
                code=code,
                name=f"{username}'s wallet",
                type=Account.Type.LIABILITY,
                currency=currency,
                owner_type="user",
                owner_id=str(user.pk),
            )
            if opening_minor:
                clearing = account_code("clearing", currency, TOP_UP_PROVIDER[currency])
                money = Money(opening_minor, currency)
                transaction_post(
                    idempotency_key=f"demo:seed:topup:{username}",
                    kind="top_up",
                    legs=[debit(clearing, money), credit(code, money)],
                    description=f"Card top-up by {username}",
                )
        self.stdout.write("seeded platform accounts and customer wallets")

    def run_lifecycle(self, run_id: str) -> None:
        alice, bob = wallet_code("alice", "USD"), wallet_code("bob", "USD")
        carmen = wallet_code("carmen", "PHP")
        usd = lambda minor: Money(minor, "USD")  # noqa: E731
        step = self.stdout.write

        deal = hold_create(
            idempotency_key=f"demo:{run_id}:escrow",
            debit_account_code=alice,
            credit_account_code=bob,
            amount=usd(12_000),
            kind="wallet_hold",
            description="Alice reserves wallet money for an order from Bob",
        )
        step(f"held {usd(12_000)} of alice's wallet for bob (hold #{deal.pk})")
        capture = hold_post(hold_id=deal.pk, amount=usd(10_000))
        step(f"captured {usd(10_000)} of it, released the rest (transaction #{capture.pk})")
        commission = transaction_post(
            idempotency_key=f"demo:{run_id}:commission",
            kind="commission",
            legs=[debit(bob, usd(800)), credit(account_code("service_revenue", "USD"), usd(800))],
            description="8% seller commission",
        )
        step(f"charged bob {usd(800)} commission (transaction #{commission.pk})")

        cancelled = hold_create(
            idempotency_key=f"demo:{run_id}:cancelled",
            debit_account_code=alice,
            credit_account_code=bob,
            amount=usd(3_000),
            kind="wallet_hold",
            description="An order Alice cancelled",
        )
        hold_void(hold_id=cancelled.pk)
        step(f"voided a {usd(3_000)} hold (hold #{cancelled.pk})")

        fee = transaction_post(
            idempotency_key=f"demo:{run_id}:verification",
            kind="service_fee",
            legs=[
                debit(carmen, Money(15_000, "PHP")),
                credit(account_code("service_revenue", "PHP"), Money(15_000, "PHP")),
            ],
            description="Phone verification, later failed",
        )
        refund = transaction_reverse(transaction_id=fee.pk, reason="verification failed: refunded automatically")
        step(f"charged carmen {Money(15_000, 'PHP')} and refunded it (reversal #{refund.pk})")

        try:
            transaction_post(
                idempotency_key=f"demo:{run_id}:overdraft",
                kind="transfer",
                legs=[debit(bob, usd(10**9)), credit(alice, usd(10**9))],
            )
        except AppError as error:
            step(f"refused as expected: {error.user_message} {error.action_required}")

    def start_sandbox(self) -> None:
        self.sandbox = Sandbox()
        settings.SANDBOX_URL = self.sandbox.start()
        settings.PROVIDER_MODE = "sandbox"
        self.stdout.write(f"provider sandbox listening on {settings.SANDBOX_URL}")

    def run_payments(self, run_id: str) -> None:
        """A card payment through the provider sandbox (real HTTP, the real Stripe SDK), then a refund."""
        admin = get_user_model().objects.get(username=ADMIN_USERNAME)
        buyer = get_user_model().objects.get(username="alice")
        payment = payment_initiate(
            user=buyer,
            amount=Money(25_000, "USD"),
            client_key=f"demo:{run_id}:card",
            explicit=Choice("stripe", "card"),
            payment_method_token="pm_card_visa",  # noqa: S106 - the sandbox's test card, not a secret
        )
        self.stdout.write(f"card payment {payment.reference}: {payment.status} via {payment.provider}")
        refund = refund_request(
            reference=payment.reference, amount=Money(5_000, "USD"), client_key=f"demo:{run_id}:refund", actor=admin
        )
        self.stdout.write(f"refunded {Money(refund.amount_minor, 'USD')}: {refund.status}")
        if payment.status != "succeeded" or refund.status != "succeeded":
            raise CommandError("the sandbox payment lifecycle did not complete")

    def run_escrow(self, run_id: str) -> None:
        """An escrow deal released to a seller minus commission, and one the seller cancels (refunded)."""
        buyer = get_user_model().objects.get(username="alice")
        seller_user, _ = get_user_model().objects.get_or_create(username="dana")
        account_id = "acct_demoSellerDana"
        stripe_sandbox.account_set(self.sandbox, account_id, transfers="active")
        seller, _ = SellerAccount.objects.get_or_create(
            user=seller_user,
            defaults={"stripe_account_id": account_id, "commission_tier": CommissionTier.objects.get(name="growth")},
        )
        deadline = timezone.now() + timedelta(days=3)
        terms = {"deadline": deadline, "timeout_policy": "refund", "payment_method": "pm_card_visa"}
        deal = deal_create(
            buyer=buyer,
            seller_account=account_id,
            amount=Money(12_000, "USD"),
            client_key=f"demo:{run_id}:deal",
            **terms,
        )
        deal = deal_release(deal_id=deal.pk, actor=buyer)
        commission = Money(deal.commission_minor, "USD")
        self.stdout.write(f"escrow deal #{deal.pk}: {deal.status}, dana paid {Money(deal.seller_net_minor, 'USD')} "
                          f"after {commission} commission ({deal.commission_bps / 100:g}%)")  # fmt: skip
        cancelled = deal_create(
            buyer=buyer,
            seller_account=account_id,
            amount=Money(3_000, "USD"),
            client_key=f"demo:{run_id}:deal2",
            **terms,
        )
        cancelled = deal_cancel(deal_id=cancelled.pk, actor=seller.user, reason="out of stock")
        self.stdout.write(f"escrow deal #{cancelled.pk}: cancelled by the seller, {cancelled.status}")
        if (deal.status, cancelled.status) != ("transferred", "refunded"):
            raise CommandError("the escrow lifecycle did not complete")

    def run_purchases(self, run_id: str) -> None:
        """A phone verification delivered (captured), one that failed (voided), and a spend limit refusing one."""
        buyer = get_user_model().objects.get(username="alice")
        service, _ = PurchasableService.objects.get_or_create(
            code="phone-verification",
            defaults={"name": "Phone verification", "delivery_timeout": timedelta(minutes=15)},
        )
        ServicePrice.objects.get_or_create(service=service, currency="USD", defaults={"amount_minor": 150})
        delivery, _ = get_user_model().objects.get_or_create(username="verification-service")
        roles_sync()
        delivery.groups.add(Group.objects.get(name="Service delivery"))
        delivery = get_user_model().objects.get(pk=delivery.pk)
        outcomes = []
        for n, outcome in enumerate(("delivered", "failed")):
            purchase = purchase_create(
                buyer=buyer, service_code=service.code, currency="USD", payment_method="pm_card_visa",
                client_key=f"demo:{run_id}:purchase{n}",
            )  # fmt: skip
            purchase = purchase_report_delivery(purchase_id=purchase.pk, actor=delivery, outcome=outcome)
            outcomes.append(purchase.status)
            self.stdout.write(f"purchase #{purchase.pk} ({service.name}) {outcome}: {purchase.status}")
        if outcomes != ["captured", "voided"]:
            raise CommandError("the purchase lifecycle did not complete")
        SpendLimit.objects.get_or_create(
            scope=SpendLimit.Scope.USER, user=None, currency="USD", window=SpendLimit.Window.DAY, active=True,
            defaults={"max_amount_minor": 500_000, "description": "Demo: USD 5,000 per user per day"},
        )  # fmt: skip
        try:
            deal_create(
                buyer=buyer, seller_account="acct_demoSellerDana", amount=Money(900_000, "USD"),
                deadline=timezone.now() + timedelta(days=3), timeout_policy="refund", payment_method="pm_card_visa",
                client_key=f"demo:{run_id}:too-much",
            )  # fmt: skip
        except AppError as error:
            self.stdout.write(f"refused as expected: {error.user_message} {error.action_required}")

    def run_payouts_and_wallets(self, run_id: str, started_at: datetime) -> None:
        """A PayPal payout cycle and Maya/GCash payments, settled by the sandbox's webhooks (monitoring.demo)."""
        say = self.stdout.write
        with WebhookReceiver(self.sandbox) as webhooks:
            self.payout: PayoutDemo = run_payout_cycle(run_id=run_id, sandbox=self.sandbox, webhooks=webhooks, say=say)
            self.wallet_payments: list[Payment] = run_wallet_payments(
                run_id=run_id, buyer_username="carmen", sandbox=self.sandbox, webhooks=webhooks, say=say
            )
        events = WebhookEvent.objects.filter(created_at__gte=started_at)
        counts = {status: events.filter(status=status).count() for status in WebhookEvent.Status.values}
        self.webhook_counts = ", ".join(f"{count} {status}" for status, count in counts.items() if count) or "none"
        say(f"sandbox webhooks: {self.webhook_counts}")
        settled = (WebhookEvent.Status.PROCESSED, WebhookEvent.Status.IGNORED)
        if any(count for status, count in counts.items() if status not in settled):
            raise CommandError(
                f"sandbox webhooks not all processed ({self.webhook_counts}): /admin/providers/webhookevent/"
            )

    def run_analytics(self) -> None:
        """Roll today and yesterday up into the summary tables the dashboard's charts read."""
        result = rollup_recent(days=2)
        rolled = DailyStatusSummary.objects.filter(day__range=(result.first, result.last))
        kinds = set(rolled.values_list("kind", flat=True))
        self.stdout.write(
            f"analytics rollup {result.first}..{result.last}: {result.status_rows} summary rows, "
            f"{result.reason_rows} failure-reason rows; kinds: {', '.join(sorted(kinds))}"
        )
        missing = {Kind.PAYMENT, Kind.PAYMENT_ATTEMPT, Kind.PAYOUT, Kind.PAYOUT_BATCH} - kinds
        if missing:
            raise CommandError(f"the analytics rollup has no figures for {sorted(missing)}")

    def run_reconciliation(self) -> None:
        """Today's Stripe movements: our ledger vs the sandbox's balance transactions vs our records."""
        run = reconciliation_run(day=timezone.now().date(), provider="stripe", trigger="command")
        self.stdout.write(
            f"reconciliation of {run.date} (stripe): {run.status}, {run.matched_count} matched, "
            f"{run.issue_count} issue(s)" + (" (earlier demo runs used another sandbox)" if run.issue_count else "")
        )

    def print_balances(self) -> None:
        self.stdout.write("\nbalances:")
        for account in Account.objects.order_by("code"):
            balance = account_balance(account)
            self.stdout.write(f"  {account.code:<34} {balance.posted.format():>16}  available {balance.available}")

    def check_ledger(self) -> None:
        report = ledger_integrity_report()
        if report.findings:
            for finding in report.findings:
                self.stderr.write(f"  {finding}")
            raise CommandError(f"ledger check found {len(report.findings)} problem(s)")
        self.stdout.write(self.style.SUCCESS("ledger check: balanced, no drift"))

    def print_created(self) -> None:
        """What this run added, and where to find it in the admin."""
        batch, write = self.payout.batch, self.stdout.write
        total = Money(batch.total_minor, batch.currency)
        write("\nthis run created (sign in to the admin to look):")
        write(f"  payout batch #{batch.pk} {batch.sender_batch_id} (PayPal {batch.provider_batch_id}): {batch.status}")
        write(f"    {total} in {batch.item_count} items; {self.payout.approval}")
        for receiver, status in self.payout.items.items():
            write(f"    {receiver:<28} {status}")
        write(f"    /admin/payouts/payoutbatch/{batch.pk}/change/")
        write(f"    /admin/payouts/payoutitem/?batch__id__exact={batch.pk}")
        write("  e-wallet payments, PHP (/admin/providers/payment/):")
        for payment in self.wallet_payments:
            amount = Money(payment.amount_minor, payment.currency).format()
            tried = " then ".join(payment.attempts.order_by("pk").values_list("provider", flat=True))
            write(f"    #{payment.pk} {payment.reference} {amount:>10} {payment.status:<9} (tried {tried})")
        write(f"  sandbox webhooks received: {self.webhook_counts}  /admin/providers/webhookevent/")
        write("  alerts for the returned payout: /admin/core/alert/")

    def smoke_check(self, password: str) -> None:
        client = Client()
        # Through the sign-in form, as staff do (lockout and audit see it like any other sign-in).
        signed_in = client.post("/admin/login/?next=/admin/", {"username": ADMIN_USERNAME, "password": password})
        if signed_in.status_code != 302:
            raise CommandError("could not sign in to the admin with the demo credentials")
        for url in (
            "/admin/",
            "/admin/ledger/account/",
            "/admin/ledger/transaction/",
            "/admin/escrow/escrowdeal/",
            "/admin/escrow/purchase/",
            "/admin/escrow/spendlimit/",
            "/admin/monitoring/reconciliationrun/",
            "/admin/monitoring/reconciliationissue/",
            "/admin/core/alert/",
            "/admin/payouts/payoutcycle/",
            "/admin/payouts/payoutbatch/",
            f"/admin/payouts/payoutbatch/{self.payout.batch.pk}/change/",
            "/admin/payouts/payoutitem/",
            "/admin/providers/payment/",
            f"/admin/providers/payment/{self.wallet_payments[-1].pk}/change/",
            "/admin/providers/webhookevent/",
            "/api/schema/",
        ):
            status = client.get(url).status_code
            if status != 200:
                raise CommandError(f"GET {url} answered {status}")
            self.stdout.write(f"GET {url} -> {status}")

    def print_credentials(self, password: str, addrport: str) -> None:
        self.stdout.write(
            self.style.SUCCESS(
                f"\nAdmin: http://{addrport}/admin/\n  username: {ADMIN_USERNAME}\n  password: {password}\n"
                f"API docs: http://{addrport}/api/docs/"
            )
        )
