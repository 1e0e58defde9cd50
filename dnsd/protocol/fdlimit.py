"""The process's file-descriptor budget: raise the soft RLIMIT_NOFILE to the hard limit at start, count
the descriptors in use, and size the TCP connection cap so that DNS clients can never take the
descriptors the health feed, the admin API and state-file writes need."""
from __future__ import annotations

import os
from dataclasses import dataclass

try:
    import resource
except ImportError:  # not on POSIX: nothing to raise, nothing to count
    resource = None  # type: ignore[assignment]

_NR_OPEN = "/proc/sys/fs/nr_open"  # Linux: the most a soft limit may be when the hard one is unlimited
_NR_OPEN_FALLBACK = 1 << 20


@dataclass(frozen=True, slots=True)
class OpenFilesLimit:
    soft_before: int | None  # None: unknown (no resource module)
    soft: int | None
    hard: int | None
    error: str | None = None  # why the soft limit could not be raised


def _finite(limit: int) -> int | None:
    return None if resource is None or limit == resource.RLIM_INFINITY else limit


def raise_open_files_limit() -> OpenFilesLimit:
    """Set the soft RLIMIT_NOFILE to the hard limit (what an unprivileged process may do) and report
    both. An unlimited hard limit is capped at the kernel's nr_open."""
    if resource is None:
        return OpenFilesLimit(None, None, None, "no resource module on this platform")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open(_NR_OPEN) as handle:
                target = int(handle.read())
        except (OSError, ValueError):
            target = _NR_OPEN_FALLBACK
    if soft != resource.RLIM_INFINITY and soft >= target:
        return OpenFilesLimit(_finite(soft), _finite(soft), _finite(hard))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as err:
        return OpenFilesLimit(_finite(soft), _finite(soft), _finite(hard), str(err))
    return OpenFilesLimit(_finite(soft), target, _finite(hard))


def open_descriptors() -> int | None:
    """Descriptors this process has open now (Linux /proc, BSD/macOS /dev/fd), None when unknown."""
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            return max(0, len(os.listdir(directory)) - 1)  # listdir's own descriptor is in the listing
        except OSError:
            continue
    return None


@dataclass(frozen=True, slots=True)
class TcpBudget:
    limit: int  # the TCP connection cap to use
    reduced: bool  # lower than configured, because of the open-files limit
    reserve_kept: bool  # False: the limit is so low that even the reserve does not fit


def tcp_connection_budget(configured: int, soft_limit: int | None, in_use: int | None, reserve: int) -> TcpBudget:
    """The configured cap, or fewer when the open-files limit minus what is open now and the reserve
    for everything else cannot hold that many. With too low a limit for the reserve, half of what is
    left goes to TCP (as Knot does by default), never less than one connection."""
    if soft_limit is None:
        return TcpBudget(configured, False, True)
    free = soft_limit - (in_use or 0)
    available = free - reserve
    if available >= configured:
        return TcpBudget(configured, False, True)
    if available >= 1:
        return TcpBudget(available, True, True)
    return TcpBudget(min(configured, max(1, free // 2)), True, False)
