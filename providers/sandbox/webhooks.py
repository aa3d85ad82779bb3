"""Webhook delivery from the sandbox, with the faults real providers show.

Provider modules sign an event exactly as their provider does and hand it to
`WebhookDispatcher.send`; a background thread POSTs it to the URL configured
for that provider. Per provider, the next `drop` events are lost, the next
`duplicate` events are sent twice, each is delayed by `delay_ms`, and with
`reorder=N` every N events go out in reverse order.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class WebhookSettings:
    url: str = ""
    drop: int = 0
    duplicate: int = 0
    delay_ms: int = 0
    reorder: int = 0


@dataclass
class Delivery:
    provider: str
    body: bytes
    headers: dict[str, str]
    status: int | None = None  # None: dropped or not answered


@dataclass
class WebhookDispatcher:
    settings: dict[str, WebhookSettings] = field(default_factory=dict)
    delivered: list[Delivery] = field(default_factory=list)
    _queue: queue.Queue[Delivery | None] = field(default_factory=queue.Queue)
    _held: dict[str, list[Delivery]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def configure(self, provider: str, **options: object) -> None:
        with self._lock:
            self.settings[provider] = WebhookSettings(**options)  # type: ignore[arg-type]

    def reset(self) -> None:
        self.wait_idle()
        with self._lock:
            self.settings.clear()
            self.delivered.clear()
            self._held.clear()

    def send(self, provider: str, body: bytes, headers: dict[str, str]) -> None:
        with self._lock:
            config = self.settings.get(provider)
            if config is None or not config.url:
                return  # nobody listens
            if config.drop > 0:
                config.drop -= 1
                self.delivered.append(Delivery(provider, body, headers))
                return
            copies = 2 if config.duplicate > 0 else 1
            config.duplicate = max(0, config.duplicate - 1)
            if config.reorder:
                held = self._held.setdefault(provider, [])
                held.extend(Delivery(provider, body, headers) for _ in range(copies))
                if len(held) < config.reorder:
                    return
                batch, self._held[provider] = list(reversed(held)), []
            else:
                batch = [Delivery(provider, body, headers) for _ in range(copies)]
        for delivery in batch:
            self._queue.put(delivery)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sandbox-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Block until every queued delivery was attempted (for tests)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while (delivery := self._queue.get()) is not None:
                try:
                    self._deliver(client, delivery)
                finally:
                    self._queue.task_done()
            self._queue.task_done()

    def _deliver(self, client: httpx.Client, delivery: Delivery) -> None:
        with self._lock:
            config = self.settings.get(delivery.provider)
        if config is None:
            return  # reset while queued: nobody listens any more
        time.sleep(config.delay_ms / 1000)
        try:
            response = client.post(config.url, content=delivery.body, headers=delivery.headers)
            delivery.status = response.status_code
        except httpx.HTTPError:
            delivery.status = None
        with self._lock:
            self.delivered.append(delivery)
