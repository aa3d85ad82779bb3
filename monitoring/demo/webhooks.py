"""The sandbox's webhooks during the demo's seeding, delivered to our own `POST /webhooks/<provider>/`.

The demo seeds before `runserver` starts, so nobody would listen. `WebhookReceiver` serves the real Django app
(signature checks, WebhookEvent rows, processing by the eager Celery task) on a free local port and points the
sandbox's deliveries for PayPal, Maya and PayMongo (GCash) at it. It answers one request at a time: the sandbox
delivers one at a time anyway, and SQLite takes one writer.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

from django.core.handlers.wsgi import WSGIHandler
from django.core.servers.basehttp import WSGIRequestHandler, WSGIServer

from providers.sandbox.server import Sandbox

# The sandbox's name for a provider -> the provider of our webhook endpoint.
ENDPOINTS = {"paypal": "paypal", "maya": "maya", "paymongo": "gcash"}


class _QuietRequestHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return  # the demo prints what the events did, not an access log


class WebhookReceiver:
    """`with WebhookReceiver(sandbox) as webhooks: ...; webhooks.settle()` delivers what the sandbox sent."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> WebhookReceiver:
        server = WSGIServer(("127.0.0.1", 0), _QuietRequestHandler, allow_reuse_address=False)
        server.set_app(WSGIHandler())
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="demo-webhooks", daemon=True
        )
        self._thread.start()
        host, port = server.server_address[:2]
        for sandbox_name, provider in ENDPOINTS.items():
            self.sandbox.webhooks.configure(sandbox_name, url=f"http://{host}:{port}/webhooks/{provider}/")
        return self

    def settle(self) -> None:
        """Wait until every event the sandbox sent so far was delivered and processed (and those it led to)."""
        self.sandbox.webhooks.wait_idle(timeout=30)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.settle()
        for sandbox_name in ENDPOINTS:
            self.sandbox.webhooks.configure(sandbox_name)  # no URL: nobody listens any more
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
