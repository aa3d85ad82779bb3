"""The provider sandbox: one stateful HTTP server speaking the subset of each
provider's API that our clients use, over real HTTP.

Tests start it in-process on a free port (`Sandbox().start()`); the demo runs
it the same way. Each provider module registers its routes and keeps its own
state behind the sandbox's lock. Around every route the sandbox counts calls
(per operation name, e.g. `stripe.payment_intents.create`) and applies
injected faults. Tests and the demo steer it through a small control API
under `/_control/` (or the same methods in Python):

    POST   /_control/faults     {"operation": "stripe.*", "kind": "...", "times": 1, ...}
    DELETE /_control/faults
    GET    /_control/calls      -> {"operation": count}
    GET    /_control/health     -> {"status": "ok", "providers": [...], "webhooks": {"pending": n, "idle": bool}}
    POST   /_control/webhooks   {"provider": "stripe", "url": "...", "drop": 0, "duplicate": 0, ...}
    GET    /_control/webhooks   -> delivery counts (sent, dropped, attempts, retried, delivered, failed),
                                   pending, in_flight, idle, per provider, and each provider's settings
    POST   /_control/webhooks/wait {"timeout": 10}  -> 200 and the counts once nothing is pending, else 504
    GET    /_control/webhooks/deliveries?provider=stripe&limit=50 -> the latest finished deliveries, attempts
    POST   /_control/tick       advance asynchronous work (e.g. payout items)
    POST   /_control/forget_keys {"provider": "stripe"}   ("*" or no provider: all)
    POST   /stripe/_simulate/accounts/{acct_id} {"transfers": "active"}   create or change a connected account
                                   (active, inactive or pending) and send `account.updated`

The provider names of `/_control/webhooks` are the sandbox's: stripe, paypal, paymongo (GCash), maya. The
options of a provider's webhooks are in providers/sandbox/webhooks.py (faults, and `retry_4xx`,
`retry_base_ms`, `retry_cap_ms`, `max_attempts`, `max_age_seconds`). With `activate_accounts` on (as
`manage.py sandbox` starts it), a connected account the sandbox has not seen is created active when first
asked for (`GET /v1/accounts/{id}`), as once its owner finished Stripe's onboarding.

Fault kinds: `latency` (delay, then answer), `error` (answer `status`, default
503, without applying), `timeout` (hang without applying), `reset` (close
without answering, without applying), `applied_then_timeout` (apply, then
hang: the provider moved the money but the caller saw a timeout).

An `error` fault may carry the exact answer: `body` (a JSON object) and
`headers`, e.g. `{"operation": "stripe.refunds.create", "kind": "error",
"status": 400, "body": {"error": {"type": "invalid_request_error", "code":
"charge_already_refunded", "message": "..."}}}`, or a 429 with
`"headers": {"Retry-After": "2"}`, so tests can make a provider refuse in
any of its own ways. Without `body` the answer is a generic `api_error`.

`forget_idempotency_keys(provider)` makes a provider forget the idempotency
keys it has seen, as when its window (Stripe 24 h, PayPal 30 days) has
passed: a request re-sent with an old key is then new to the provider.
Objects already created stay. Each provider module registers what it
forgets in `Sandbox.key_forgetters`, by provider name.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import structlog
from django.conf import settings

from providers.sandbox.webhooks import WebhookDispatcher

log = structlog.get_logger(__name__)


def hang_seconds() -> float:
    """How long a hanging answer keeps the caller waiting: past the clients' timeout."""
    return max(3.0, settings.PROVIDER_TIMEOUT_SECONDS + 1.0)


@dataclass
class SandboxRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"{}")

    def form(self) -> dict[str, str]:
        """Form fields (Stripe style); nested keys stay flat, e.g. `metadata[order]`."""
        return {key: values[-1] for key, values in parse_qs(self.body.decode(), keep_blank_values=True).items()}

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


@dataclass
class SandboxResponse:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        if self.body is None:
            return b""
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


Handler = Callable[[SandboxRequest, "re.Match[str]"], SandboxResponse]


@dataclass
class Fault:
    operation: str  # glob over operation names, e.g. "paypal.*"
    kind: str
    times: int | None = 1  # None: every matching call
    latency_ms: int = 0
    status: int = 503
    body: dict[str, Any] | None = None  # kind "error": answer exactly this JSON body
    headers: dict[str, str] | None = None  # kind "error": and these headers

    KINDS = frozenset({"latency", "error", "timeout", "reset", "applied_then_timeout"})

    def check(self) -> None:
        if self.kind not in Fault.KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {sorted(Fault.KINDS)}")
        if self.kind != "error" and (self.body is not None or self.headers is not None):
            raise ValueError(f"body and headers apply to kind 'error' only, not {self.kind!r}")
        if self.body is not None and not isinstance(self.body, dict):
            raise ValueError("fault body must be a JSON object")
        if self.headers is not None and not (
            isinstance(self.headers, dict)
            and all(isinstance(name, str) and isinstance(value, str) for name, value in self.headers.items())
        ):
            raise ValueError("fault headers must map names to string values")

    def answer(self) -> SandboxResponse:
        """What an `error` fault answers instead of the provider."""
        body = {"error": {"message": "injected fault", "type": "api_error"}} if self.body is None else self.body
        return SandboxResponse(self.status, copy.deepcopy(body), dict(self.headers or {}))


@dataclass
class _Route:
    method: str
    pattern: re.Pattern[str]
    operation: str
    handler: Handler


class _Hang(Exception):  # control flow inside the server, never raised to callers
    """Answer nothing: keep the caller waiting, then drop the connection."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class Sandbox:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.calls: Counter[str] = Counter()
        self.faults: list[Fault] = []
        self.routes: list[_Route] = []
        self.tickers: list[Callable[[], None]] = []  # advance asynchronous work
        self.resetters: list[Callable[[], None]] = []  # forget provider state
        self.key_forgetters: dict[str, Callable[[], None]] = {}  # provider -> forget its idempotency keys
        self.webhooks = WebhookDispatcher()
        self.activate_accounts = False  # unknown connected accounts are created active when first asked for
        self._server: ThreadingHTTPServer | None = None
        self.url = ""
        self._register_control_routes()
        self._register_providers()

    # --- wiring
    def route(self, method: str, pattern: str, operation: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.routes.append(_Route(method, re.compile(f"^{pattern}$"), operation, handler))
            return handler

        return register

    def _register_providers(self) -> None:
        from providers.sandbox.registry import provider_modules

        for module in provider_modules():
            module.install(self)

    # --- running
    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._server = ThreadingHTTPServer((host, port), _make_handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="sandbox", daemon=True).start()
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self.webhooks.start()
        return self.url

    def stop(self) -> None:
        self.webhooks.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --- faults and counting
    def add_fault(self, fault: Fault) -> None:
        fault.check()
        with self.lock:
            self.faults.append(fault)

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def _take_fault(self, operation: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fnmatch.fnmatchcase(operation, fault.operation):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self.faults.remove(fault)
                    return fault
        return None

    def reset(self) -> None:
        """Forget calls, faults, webhook settings and every provider's state."""
        with self.lock:
            self.calls.clear()
            self.faults.clear()
            for resetter in self.resetters:
                resetter()
        self.webhooks.reset()

    def forget_idempotency_keys(self, provider: str | None = None) -> list[str]:
        """Make `provider` (None or "*": every provider) forget the idempotency keys it has seen, as once its
        window has passed; the objects it created stay. Returns the providers that forgot."""
        names = sorted(self.key_forgetters) if provider in (None, "*") else [str(provider)]
        unknown = [name for name in names if name not in self.key_forgetters]
        if unknown:
            raise ValueError(f"no idempotency keys to forget for {unknown[0]!r}; one of {sorted(self.key_forgetters)}")
        with self.lock:
            for name in names:
                self.key_forgetters[name]()
        return names

    def tick(self) -> None:
        """Advance asynchronous work, e.g. payout items moving out of PENDING."""
        for ticker in self.tickers:
            ticker()

    # --- dispatch
    def dispatch(self, request: SandboxRequest) -> SandboxResponse:
        path = unquote(request.path)  # path parameters arrive percent-encoded, as real servers decode them
        for route in self.routes:
            match = route.pattern.match(path)
            if match and route.method == request.method:
                return self._run(route, request, match)
        return SandboxResponse(404, {"error": {"message": f"no sandbox route for {request.method} {request.path}"}})

    def _run(self, route: _Route, request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
        if not route.operation.startswith("_control"):
            with self.lock:
                self.calls[route.operation] += 1
        fault = None if route.operation.startswith("_control") else self._take_fault(route.operation)
        if fault is None:
            return route.handler(request, match)
        if fault.kind == "latency":
            time.sleep(fault.latency_ms / 1000)
            return route.handler(request, match)
        if fault.kind == "error":
            return fault.answer()
        if fault.kind == "timeout":
            raise _Hang(hang_seconds())
        if fault.kind == "reset":
            raise _Hang(0)
        route.handler(request, match)  # applied_then_timeout
        raise _Hang(hang_seconds())

    # --- control API
    def _register_control_routes(self) -> None:
        @self.route("POST", "/_control/faults", "_control.faults.add")
        def add_fault(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
            try:
                self.add_fault(Fault(**request.json()))
            except (TypeError, ValueError) as error:
                return SandboxResponse(400, {"error": str(error)})
            return SandboxResponse(201, {"faults": len(self.faults)})

        @self.route("DELETE", "/_control/faults", "_control.faults.clear")
        def clear_faults(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
            self.clear_faults()
            return SandboxResponse(200, {"faults": 0})

        @self.route("GET", "/_control/calls", "_control.calls")
        def calls(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
            with self.lock:
                return SandboxResponse(200, dict(self.calls))

        @self.route("POST", "/_control/webhooks", "_control.webhooks")
        def configure_webhooks(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
            try:
                options = request.json()
                self.webhooks.configure(str(options.pop("provider")), **options)
            except (AttributeError, KeyError, TypeError, ValueError) as error:
                return SandboxResponse(400, {"error": f"webhook settings: {error!r}"})
            return SandboxResponse(200, {"ok": True})

        @self.route("GET", "/_control/webhooks", "_control.webhooks.stats")
        def webhook_stats(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
            return SandboxResponse(200, self.webhooks.stats())

        @self.route("POST", "/_control/webhooks/wait", "_control.webhooks.wait")
        def webhooks_wait(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
            try:
                timeout = min(float(request.json().get("timeout", 10)), 300.0)
            except (AttributeError, TypeError, ValueError) as error:
                return SandboxResponse(400, {"error": f"timeout: {error!r}"})
            idle = self.webhooks.wait_idle(timeout)
            return SandboxResponse(200 if idle else 504, self.webhooks.stats())

        @self.route("GET", "/_control/webhooks/deliveries", "_control.webhooks.deliveries")
        def webhook_deliveries(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
            provider = (request.query.get("provider") or [""])[0]
            try:
                limit = int((request.query.get("limit") or ["50"])[0] or 50)
            except ValueError:
                return SandboxResponse(400, {"error": "limit must be a whole number"})
            found = [d.summary() for d in list(self.webhooks.delivered) if not provider or d.provider == provider]
            return SandboxResponse(200, {"deliveries": found[-limit:] if limit > 0 else []})

        @self.route("GET", "/_control/health", "_control.health")
        def health(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
            stats = self.webhooks.stats()
            providers = sorted({route.operation.split(".")[0] for route in self.routes} - {"_control"})
            webhooks = {"pending": stats["pending"], "idle": stats["idle"], "failed": stats["failed"]}
            return SandboxResponse(200, {"status": "ok", "url": self.url, "providers": providers, "webhooks": webhooks})

        @self.route("POST", "/_control/forget_keys", "_control.forget_keys")
        def forget_keys(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
            try:
                provider = request.json().get("provider")
                return SandboxResponse(200, {"forgotten": self.forget_idempotency_keys(provider)})
            except (AttributeError, ValueError) as error:
                return SandboxResponse(400, {"error": str(error)})

        @self.route("POST", "/_control/tick", "_control.tick")
        def tick(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
            self.tick()
            return SandboxResponse(200, {"ok": True})


def _make_handler(sandbox: Sandbox) -> type[BaseHTTPRequestHandler]:
    class SandboxHTTPHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in separate writes; kept-alive clients wait on ACKs

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            request = SandboxRequest(
                method=self.command,
                path=parts.path,
                query=parse_qs(parts.query),
                headers={name.lower(): value for name, value in self.headers.items()},
                body=self.rfile.read(length) if length else b"",
            )
            try:
                response = sandbox.dispatch(request)
            except _Hang as hang:
                time.sleep(hang.seconds)
                self.close_connection = True
                return
            except Exception as error:  # a sandbox bug: say so, never look like a lost connection
                log.exception("sandbox.handler_failed", path=request.path)
                response = SandboxResponse(500, {"error": {"message": f"sandbox bug: {error!r}", "type": "api_error"}})
            try:
                self._answer(response)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the caller gave up waiting, as callers do

        def _answer(self, response: SandboxResponse) -> None:
            body = response.encoded()
            headers = {"Content-Type": "application/json", **response.headers, "Content-Length": str(len(body))}
            self.send_response(response.status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = do_PATCH = _serve

    return SandboxHTTPHandler
