"""The failure modes a stand-in replica can be switched into: their names and defaults, a replica's fault state, what each mode does to a request (the middleware), and the check of a requested change.

Modes (per replica):
  healthy    everything works
  unhealthy  every endpoint answers 503 (/debug/health: {"storagedriver_filesystem": reason}); Harbor's
             /api/v2.0/health answers 200 with every component unhealthy, as Harbor itself does
  readonly   reads and health endpoints fine, but writes (blob upload PATCH/PUT, monolithic POST,
             manifest PUT) answer 507: a full disk that leaves /debug/health green
  slow       every response delayed by `delay` seconds (default 30); a mode change releases them at once
  garbage    every response is 200 with random non-JSON bytes (Content-Type application/json)
  refuse     the replica's listeners are closed (connections refused); any other mode re-binds them
"""
from __future__ import annotations

import asyncio
import os
from typing import Any

from aiohttp import web

from standin.responses import harbor_health, json_response, oci_error

MODES = ("healthy", "unhealthy", "readonly", "slow", "garbage", "refuse")
DEFAULT_DELAY = 30.0
MAX_DELAY = 3600.0
DEFAULT_REASON = "simulated failure (geotm-backend)"
READONLY_REASON = "no space left on device"


class Faults:
    """One replica's mode, with the delay (slow) and reason (unhealthy, readonly) that go with it."""

    def __init__(self) -> None:
        self.mode = "healthy"
        self.delay = DEFAULT_DELAY
        self.reason = DEFAULT_REASON
        self.wake = asyncio.Event()  # set (and replaced) on every mode change: releases slow replies

    def switch(self, mode: str, delay: float | None = None, reason: str | None = None) -> None:
        """Take on `mode` (one of MODES, checked by the caller); missing delay and reason get defaults."""
        self.mode = mode
        self.delay = DEFAULT_DELAY if delay is None else float(delay)
        default = READONLY_REASON if mode == "readonly" else DEFAULT_REASON
        self.reason = reason or default
        self.release_waiters()

    def release_waiters(self) -> None:
        self.wake.set()
        self.wake = asyncio.Event()

    def describe(self) -> dict[str, Any]:
        """mode, and the delay and reason only where the mode uses them."""
        return {"mode": self.mode, "delay": self.delay if self.mode == "slow" else None,
                "reason": self.reason if self.mode in ("unhealthy", "readonly") else None}


def fault_middleware(faults: Faults):
    """The aiohttp middleware that makes a replica's requests suffer its current mode (readonly is
    the registry handlers' business: only writes fail)."""
    @web.middleware
    async def apply_faults(request: web.Request, handler):
        if faults.mode == "slow":
            wake = faults.wake
            try:
                async with asyncio.timeout(faults.delay):
                    await wake.wait()
            except TimeoutError:
                pass
        mode = faults.mode
        if mode == "garbage":
            return web.Response(body=os.urandom(512) + b"\xff\xfe not json", content_type="application/json")
        if mode == "unhealthy":
            if request.path == "/debug/health":
                return json_response({"storagedriver_filesystem": faults.reason}, 503)
            if request.path == "/api/v2.0/health":
                return json_response(harbor_health(False, faults.reason))
            return oci_error(503, "UNAVAILABLE", faults.reason)
        return await handler(request)

    return apply_faults


def mode_request_problem(body: Any) -> str | None:
    """What is wrong with a control API body like {"mode": "slow", "delay": 5, "reason": "..."}, or None."""
    if not isinstance(body, dict):
        return "expected a JSON object like {\"mode\": \"unhealthy\"}"
    unknown = set(body) - {"mode", "delay", "reason"}
    if unknown:
        return f"unknown field(s): {', '.join(sorted(unknown))}; allowed: mode, delay, reason"
    if body.get("mode") not in MODES:
        return f"mode must be one of {', '.join(MODES)}, got {body.get('mode')!r}"
    delay = body.get("delay")
    if delay is not None and (isinstance(delay, bool) or not isinstance(delay, (int, float))
                              or not 0 <= delay <= MAX_DELAY):
        return f"delay must be a number of seconds from 0 to {MAX_DELAY:g}, got {delay!r}"
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 200):
        return "reason must be a string of at most 200 characters"
    return None
