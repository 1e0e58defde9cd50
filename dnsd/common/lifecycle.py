"""How every geotm service process lives: the event loop it runs on (`run`), the signals that stop it
(`StopSignals`), the aiohttp listeners it serves (`serve_http`) and the background tasks it keeps
(`TaskSet`). Shared by dnsd, probes and geotm-backend; nothing DNS-specific."""
from __future__ import annotations

import asyncio
import signal
import ssl
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from aiohttp import web

from dnsd.common.hostport import format_host_port

try:
    import uvloop
except ImportError:  # an optional dependency (not on Windows)
    uvloop = None


def run(main: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to completion on uvloop when it is installed, else on the stock loop."""
    if uvloop is None:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


class StopSignals:
    """SIGTERM/SIGINT handlers installed at once (a signal during start-up is not lost), awaited later.
    Every geotm service's main task: `stop = StopSignals()`, start things, `await stop.wait()`."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._received: asyncio.Future[int] = self._loop.create_future()
        for sig in self.SIGNALS:
            self._loop.add_signal_handler(sig, self._set, sig)

    def _set(self, sig: int) -> None:
        if not self._received.done():
            self._received.set_result(sig)

    async def wait(self) -> int:
        return await self._received

    def close(self) -> None:
        for sig in self.SIGNALS:
            self._loop.remove_signal_handler(sig)


class TaskSet:
    """The background tasks a service started: each kept until it finishes (asyncio holds only a weak
    reference, so a task nobody keeps may be collected mid-run), all cancelled and awaited at shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, task: object) -> bool:
        return task in self._tasks

    async def close(self) -> None:
        """Cancel every task still running and wait until each has finished."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def serve_http(app: web.Application, listen: Iterable[tuple[str, int]], what: str,
                     ssl_for: Callable[[tuple[str, int]], ssl.SSLContext | None] = lambda _where: None,
                     reuse_address: bool | None = None, **runner_options: Any) -> web.AppRunner:
    """Serve `app` on every address of `listen`, all or none: on failure the runner is cleaned up and
    the OSError names the address and `what` listens there. Stop it with `await runner.cleanup()`;
    `runner.addresses` are the bound addresses (port 0 picks one)."""
    runner = web.AppRunner(app, access_log=None, **runner_options)
    await runner.setup()
    try:
        for host, port in listen:
            site = web.TCPSite(runner, host, port, ssl_context=ssl_for((host, port)),
                               reuse_address=reuse_address)
            try:
                await site.start()
            except OSError as err:
                raise OSError(err.errno, f"cannot listen on {format_host_port(host, port)} ({what}): "
                                         f"{err.strerror or err}") from None
    except BaseException:
        await runner.cleanup()
        raise
    return runner
