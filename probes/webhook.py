"""Status-change notifications: POST a JSON event per transition, retried with backoff, never blocking probing."""
from __future__ import annotations

import asyncio

import aiohttp
import structlog

from dnsd.model import Webhook

log = structlog.get_logger(__name__)


class Notifier:
    """A bounded queue drained by one task: a slow or dead receiver delays nothing else; when the queue
    is full the oldest event is dropped (and counted), so memory stays bounded."""

    def __init__(self, webhook: Webhook, session: aiohttp.ClientSession, queue_size: int = 1000):
        self.webhook = webhook
        self.session = session
        self.queue: asyncio.Queue[dict] = asyncio.Queue(queue_size)
        self.dropped = 0
        self.delivered = 0
        self.failed = 0

    def notify(self, event: dict) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
            log.warning("webhook_queue_full", dropped=self.dropped)
        self.queue.put_nowait(event)

    async def run(self) -> None:
        while True:
            event = await self.queue.get()
            await self.deliver(event)

    async def deliver(self, event: dict) -> bool:
        delay = self.webhook.backoff
        for attempt in range(self.webhook.retries + 1):
            try:
                async with asyncio.timeout(self.webhook.timeout):
                    async with self.session.post(self.webhook.url, json=event, allow_redirects=False) as response:
                        if 200 <= response.status < 300:
                            self.delivered += 1
                            return True
                        error = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as err:
                error = str(err) or type(err).__name__
            if attempt < self.webhook.retries:
                log.info("webhook_retry", url=self.webhook.url, attempt=attempt + 1, error=error, delay=delay)
                await asyncio.sleep(delay)
                delay *= 2
        self.failed += 1
        log.warning("webhook_failed", url=self.webhook.url, attempts=self.webhook.retries + 1, error=error,
                    notification=event.get("event"))
        return False
