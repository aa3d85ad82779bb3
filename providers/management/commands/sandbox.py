"""`manage.py sandbox`: the provider sandbox as its own process, for the real stack and manual testing.

    manage.py sandbox --host 127.0.0.1 --port 8765 --webhook-base-url http://127.0.0.1:8000

serves Stripe, PayPal, PayMongo (GCash) and Maya on one port (default: the port of SANDBOX_URL, which the
web and worker processes use to reach it) and delivers each provider's webhooks to
`<base>/webhooks/<provider>/` (default base: SANDBOX_WEBHOOK_BASE_URL; `--webhook-url paymongo=URL` sets
one provider's URL). Deliveries are retried with backoff (providers/sandbox/webhooks.py; Stripe's and PayPal's
after any answer but 2xx, as theirs are) and signed at each attempt with the webhook secrets of these settings
(STRIPE_WEBHOOK_SECRET, PAYMONGO_WEBHOOK_SECRET, MAYA_WEBHOOK_SECRET, PAYPAL_WEBHOOK_ID), so the web
process must have the same ones. Connected accounts are created active when first asked for unless
`--no-activate-accounts`; `POST /stripe/_simulate/accounts/{id}` changes one. The control API (faults,
call counts, webhook settings and delivery counts, health) is under `/_control/`: see
providers/sandbox/server.py. SIGTERM or SIGINT stops it: attempts in flight finish, nothing new starts.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from providers.sandbox.server import Sandbox
from providers.sandbox.webhooks import RetryPolicy

# The sandbox's name for a provider -> the provider of our endpoint, POST /webhooks/<provider>/.
ENDPOINTS = {"stripe": "stripe", "paypal": "paypal", "paymongo": "gcash", "maya": "maya"}
# Stripe and PayPal deliver again after any answer but 2xx (our PayPal endpoint answers 400 when it could not
# ask PayPal to verify an event, counting on that); the others only after 5xx, 408, 429 or no answer.
RETRY_EVERY_NON_2XX = frozenset({"stripe", "paypal"})


def _port_of(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


class Command(BaseCommand):
    help = "Run the provider sandbox standalone, delivering webhooks to the web process."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=urlsplit(settings.SANDBOX_URL).hostname or "127.0.0.1")
        parser.add_argument(
            "--port", type=int, default=_port_of(settings.SANDBOX_URL), help="Default: the port of SANDBOX_URL."
        )
        parser.add_argument(
            "--webhook-base-url",
            default=settings.SANDBOX_WEBHOOK_BASE_URL,
            help="Deliver each provider's webhooks to <base>/webhooks/<provider>/ (SANDBOX_WEBHOOK_BASE_URL).",
        )
        parser.add_argument(
            "--webhook-url",
            action="append",
            default=[],
            metavar="PROVIDER=URL",
            help=f"One provider's webhook URL ({', '.join(ENDPOINTS)}); may be repeated.",
        )
        parser.add_argument(
            "--activate-accounts",
            action="store_true",
            default=settings.SANDBOX_ACTIVATE_ACCOUNTS,
            help="Create unknown connected accounts active when first asked for (the default).",
        )
        parser.add_argument("--no-activate-accounts", action="store_false", dest="activate_accounts")
        parser.add_argument("--webhook-workers", type=int, default=settings.SANDBOX_WEBHOOK_WORKERS)
        parser.add_argument("--retry-base-seconds", type=float, default=settings.SANDBOX_WEBHOOK_RETRY_BASE_SECONDS)
        parser.add_argument("--retry-cap-seconds", type=float, default=settings.SANDBOX_WEBHOOK_RETRY_CAP_SECONDS)
        parser.add_argument("--max-attempts", type=int, default=settings.SANDBOX_WEBHOOK_MAX_ATTEMPTS)
        parser.add_argument("--max-age-seconds", type=float, default=settings.SANDBOX_WEBHOOK_MAX_AGE_SECONDS)

    def handle(self, *args: Any, **options: Any) -> None:
        urls = self._webhook_urls(options["webhook_base_url"], options["webhook_url"])
        if options["webhook_workers"] < 1 or options["max_attempts"] < 1 or options["retry_base_seconds"] <= 0:
            raise CommandError("--webhook-workers and --max-attempts must be at least 1, --retry-base-seconds above 0")
        sandbox = Sandbox()
        sandbox.activate_accounts = options["activate_accounts"]
        sandbox.webhooks.workers = options["webhook_workers"]
        sandbox.webhooks.policy = RetryPolicy(
            base_seconds=options["retry_base_seconds"],
            cap_seconds=options["retry_cap_seconds"],
            max_attempts=options["max_attempts"],
            max_age_seconds=options["max_age_seconds"],
            jitter=settings.SANDBOX_WEBHOOK_RETRY_JITTER,
            timeout_seconds=settings.SANDBOX_WEBHOOK_TIMEOUT_SECONDS,
        )
        for provider, url in urls.items():
            sandbox.webhooks.configure(provider, url=url, retry_4xx=provider in RETRY_EVERY_NON_2XX)
        stopping = threading.Event()

        def stop(signum: int, frame: FrameType | None) -> None:
            stopping.set()

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            url = sandbox.start(options["host"], options["port"])
        except OSError as error:
            raise CommandError(f"cannot listen on {options['host']}:{options['port']}: {error}") from error
        try:
            self.stdout.write(f"Sandbox listening on {url}", ending="\n")
            for provider in ENDPOINTS:
                self.stdout.write(f"  {provider} webhooks -> {urls.get(provider) or 'nowhere (not configured)'}")
            activation = "on" if sandbox.activate_accounts else "off"
            self.stdout.write(f"  connected accounts activated when first asked for: {activation}")
            self.stdout.flush()
            while not stopping.wait(0.5):
                pass
            self.stdout.write("Sandbox stopping", ending="\n")
        finally:
            sandbox.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.stdout.write(f"Sandbox stopped; webhook deliveries: {self._summary(sandbox)}")

    def _webhook_urls(self, base: str, overrides: list[str]) -> dict[str, str]:
        urls = {name: f"{base.rstrip('/')}/webhooks/{ours}/" for name, ours in ENDPOINTS.items()} if base else {}
        for override in overrides:
            provider, sep, url = override.partition("=")
            if not sep or provider not in ENDPOINTS or not url.startswith(("http://", "https://")):
                raise CommandError(f"--webhook-url wants PROVIDER=http(s)://..., PROVIDER one of {list(ENDPOINTS)}")
            urls[provider] = url
        return urls

    @staticmethod
    def _summary(sandbox: Sandbox) -> str:
        stats = sandbox.webhooks.stats()
        return ", ".join(f"{name} {stats[name]}" for name in ("sent", "delivered", "retried", "failed", "pending"))
