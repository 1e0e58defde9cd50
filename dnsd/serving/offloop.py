"""Heavy work beside a serving event loop without stalling it: generator work run in short slices on
the loop itself, the cyclic GC paused while a big structure is built, a short GIL switch interval
while a worker thread builds, and a replaced structure freed in slices, not in one deallocation."""
from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

# While a worker thread holds the GIL, the loop's thread waits up to the switch interval (5 ms by
# default) for it after every wake-up; 0.5 ms keeps that wait far below the answer-latency target.
SWITCH_INTERVAL = 0.0005
# Nice value of the building thread (relative to the process; per thread on Linux)
WORKER_NICE = 10
# Items freed per slice when a replaced table is released (a few ms of deallocation each)
RELEASE_SLICE = 500


@contextlib.contextmanager
def heavy_work() -> Iterator[None]:
    """Pause the cyclic GC (a full collection over a big heap holds the GIL for hundreds of ms) and
    shorten the switch interval while a worker thread builds; restore both after."""
    was_enabled = gc.isenabled()
    interval = sys.getswitchinterval()
    gc.disable()
    sys.setswitchinterval(min(interval, SWITCH_INTERVAL))
    try:
        yield
    finally:
        sys.setswitchinterval(interval)
        if was_enabled:
            gc.enable()


def keep_built() -> None:
    """Move every object alive now (the new serving tables) into the permanent GC generation, so no
    later collection walks them again. Only after a successful build: a failed one's objects
    (exception, traceback cycles) must stay collectable."""
    gc.freeze()


async def in_thread(function: Callable[..., T], *args) -> T:
    """function(*args) in a thread of its own at a lower CPU priority (Linux: nice is per thread), so
    the kernel runs the loop's thread first whenever it has a query; the thread ends with the call."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(result: T | None, error: BaseException | None) -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)
        except (OSError, AttributeError):
            pass  # not Linux or not permitted: same priority as the loop, still correct
        try:
            result = function(*args)
        except BaseException as err:  # handed to the awaiting coroutine, raised there
            loop.call_soon_threadsafe(deliver, None, err)
        else:
            loop.call_soon_threadsafe(deliver, result, None)

    threading.Thread(target=run, name="dnsd-build", daemon=True).start()
    return await future


async def run_sliced(steps: Iterator[object], slice_seconds: float = 0.002) -> None:
    """Run an iterator's steps on the event loop's thread, slice_seconds at a time, yielding to the
    loop between slices, so a long series of small steps (log events) never holds queries up."""
    clock = time.perf_counter
    done = False
    while not done:
        deadline = clock() + slice_seconds
        for _ in steps:
            if clock() >= deadline:
                break
        else:
            done = True
        await asyncio.sleep(0)


async def release(containers: list) -> None:
    """Empty dicts and lists the caller owns alone, RELEASE_SLICE items at a time, yielding to the loop
    between slices, so their contents are freed without one long stall."""
    for container in containers:
        if isinstance(container, dict):
            while container:
                for _ in range(min(RELEASE_SLICE, len(container))):
                    container.popitem()
                await asyncio.sleep(0)
        elif isinstance(container, list):
            while container:
                del container[-RELEASE_SLICE:]
                await asyncio.sleep(0)
