"""Status-change notifications: POST a JSON event per transition, signed, retried with backoff, never
blocking probing.

Signature: with `webhook.secret_file`, every POST carries `X-Geotm-Signature: sha256=<hex>`, the
HMAC-SHA256 of the exact body bytes keyed with the file's content (stripped of surrounding
whitespace). A receiver recomputes it over the raw body before parsing it and compares in constant
time (`verify_signature` below is the reference); the body's `at` (Unix time of the change) lets it
refuse old replays.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

import aiohttp
import structlog

from dnsd.model import Webhook
from dnsd.common.secretfile import SecretFile, SecretUnreadable

log = structlog.get_logger(__name__)


SIGNATURE_HEADER = "X-Geotm-Signature"


def sign(secret: str, body: bytes) -> str:
    """The X-Geotm-Signature value for this body: "sha256=" + hex HMAC-SHA256(secret, body)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiver does: recompute over the raw body, compare in constant time."""
    return header is not None and hmac.compare_digest(sign(secret, body).encode(), header.strip().encode())


class Notifier:
    """A bounded queue drained by one task: a slow or dead receiver delays nothing else; when the queue
    is full the oldest event is dropped (and counted), so memory stays bounded."""

    def __init__(self, webhook: Webhook, session: aiohttp.ClientSession, queue_size: int = 1000,
                 secret: SecretFile | None = None):
        self.webhook = webhook
        self.secret = secret
        self.session = session
        self.queue: asyncio.Queue[dict] = asyncio.Queue(queue_size)
        self.dropped = 0
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
        body = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
        for attempt in range(self.webhook.retries + 1):
            try:
                headers = {"Content-Type": "application/json"}
                if self.secret is not None:  # re-read per attempt: a rotated secret applies at once
                    headers[SIGNATURE_HEADER] = sign(self.secret.value(), body)
                async with asyncio.timeout(self.webhook.timeout):
                    async with self.session.post(self.webhook.url, data=body, headers=headers,
                                                 allow_redirects=False) as response:
                        if 200 <= response.status < 300:
                            return True
                        error = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError, OSError, SecretUnreadable) as err:
                error = str(err) or type(err).__name__
            if attempt < self.webhook.retries:
                log.info("webhook_retry", url=self.webhook.url, attempt=attempt + 1, error=error, delay=delay)
                await asyncio.sleep(delay)
                delay *= 2
        self.failed += 1
        log.warning("webhook_failed", url=self.webhook.url, attempts=self.webhook.retries + 1, error=error,
                    notification=event.get("event"))
        return False
