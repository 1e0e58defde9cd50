"""Shared parts of the attack reproductions (bench/attacks/): the example config's names, loopback-only
guards, bounded budgets (count and time), plain UDP/TCP exchanges with dnspython, a dnsd child process
(optionally under a lowered open-files limit), a fake probes feed, DNS-over-TCP clients from chosen
127.x.y.z sources, and summaries. Everything stays on this machine and is bounded."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import resource
import socket
import statistics
import struct
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dnsd import names  # noqa: E402  (needs ROOT on sys.path when dnsd is not installed)
from dnsd.common.children import Child, free_port  # noqa: E402
from dnsd.config import load_config, read_document  # noqa: E402
from tests import harness  # noqa: E402

FakeFeed = harness.FakeFeed  # the probes stand-in that fd_exhaustion.py serves to dnsd


EXAMPLE = ROOT / "config" / "example.yaml"
_EXAMPLE_CONFIG = load_config(EXAMPLE)
ZONE = _EXAMPLE_CONFIG.zone.name  # what the attacks ask for by default: the example's names
REGISTRY = _EXAMPLE_CONFIG.registries[0].name
REPLICAS = tuple(replica.name for replica in _EXAMPLE_CONFIG.registries[0].replicas)
GLOBAL_NAME = names.global_name(REGISTRY, ZONE)
MAX_CONNECTIONS = 20_000  # hard bounds: these scripts never go past them, whatever the flags say
MAX_DURATION = 600.0


def loopback(text: str) -> str:
    """argparse type: an IPv4/IPv6 address on loopback, or an error (these scripts never leave the host)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None
    if not address.is_loopback:
        raise argparse.ArgumentTypeError(f"{text} is not a loopback address: attack scripts only target this machine")
    return text


def bounded(maximum: float, kind=int):
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not 0 < value <= maximum:
            raise argparse.ArgumentTypeError(f"must be between 0 and {maximum:g}, got {value}")
        return value
    convert.__name__ = kind.__name__
    return convert


def source_address(index: int, per_source: int, first: int = 2) -> str:
    """127.A.B.C for client `index`, `per_source` clients per address, starting at 127.<first>.0.1."""
    n = index // per_source
    return f"127.{first + n // 62500}.{(n // 250) % 250}.{1 + n % 250}"


def raise_own_open_files_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


# --- dnsd ----------------------------------------------------------------------------------------


class Dnsd:
    """`python -m dnsd serve` on a free loopback port, its log in a temp file, stopped by its PID."""

    def __init__(self, config: dict, nofile: int | None = None, workdir: str | None = None):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="geotm-attack-"))
        self.port, self.admin_port = free_port(), free_port()
        self.token = "attack-token"
        (self.workdir / "token").write_text(self.token + "\n")
        config = dict(config)
        config["admin"] = {**config.get("admin", {}), "token_file": str(self.workdir / "token"),
                           "state_file": str(self.workdir / "overrides.json")}
        config.setdefault("health", {})
        config["health"] = {**config["health"], "state_file": str(self.workdir / "health.json")}
        self.config_path = self.workdir / "geotm.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.nofile = nofile
        self.log_path = self.workdir / "dnsd.log"
        self.proc = Child([sys.executable, "-m", "dnsd", "serve", "--config", str(self.config_path),
                           "--listen", f"127.0.0.1:{self.port}", "--admin-listen", f"127.0.0.1:{self.admin_port}",
                           "--log-format", "json"], self.log_path, name="dnsd", cwd=ROOT,
                          extra_env={"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}, preexec_fn=self._limit)

    def _limit(self) -> None:
        if self.nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def __enter__(self) -> Dnsd:
        """Started and answering the global name; ChildFailed (a RuntimeError with the log tail) else."""
        self.proc.start().wait_ready(lambda: self.global_address() is not None, 15, interval=0.1)
        return self

    def __exit__(self, *exc) -> None:
        self.proc.stop(grace=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str) -> list[dict]:
        found = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("event") == name:
                    found.append(entry)
        return found

    def global_address(self, name: str = GLOBAL_NAME) -> str | None:
        try:
            reply = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=self.port, timeout=1)
        except Exception:
            return None
        return reply.answer[-1][0].address if reply.answer else None

    def admin_answers(self) -> bool:
        request = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}/v1/status",
                                         headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def metrics(self) -> dict[str, float]:
        values = {}
        with contextlib.suppress(OSError):
            request = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}/metrics",  # TCP figures need the token
                                             headers={"Authorization": f"Bearer {self.token}"})
            with urllib.request.urlopen(request, timeout=2) as response:
                for line in response.read().decode().splitlines():
                    if line.startswith("geotm_tcp_") or line.startswith("geotm_health_"):
                        name, _, value = line.rpartition(" ")
                        with contextlib.suppress(ValueError):
                            values[name] = float(value)
        return values


def example_config(**server) -> dict:
    data = read_document(EXAMPLE)
    data["server"] = {**data.get("server", {}), **server}
    return data


# --- a fake probes feed ----------------------------------------------------------------------------


# --- DNS over TCP clients ----------------------------------------------------------------------------


def framed_query(qid: int, name: str = GLOBAL_NAME) -> bytes:
    query = dns.message.make_query(name, "A")
    query.id = qid & 0xFFFF
    wire = query.to_wire()
    return struct.pack("!H", len(wire)) + wire


async def ask_framed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, qid: int, timeout: float) -> bool:
    writer.write(framed_query(qid))
    async with asyncio.timeout(timeout):
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        return dns.message.from_wire(await reader.readexactly(length)).id == qid & 0xFFFF


class Holders:
    """N connections from chosen sources, each asking one query every `interval` seconds and
    reconnecting (after `reconnect` s) when the server closes it, until `stop` is set."""

    def __init__(self, port: int, sources: list[str], interval: float, reconnect: float = 0.2):
        self.port, self.sources, self.interval, self.reconnect = port, sources, interval, reconnect
        self.open = 0  # connections whose last query was answered and that are still open
        self.peak = 0
        self.opened = 0
        self.closed_by_server = 0
        self.stop = asyncio.Event()

    async def _one(self, index: int, source: str) -> None:
        while not self.stop.is_set():
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port, local_addr=(source, 0)), 2)
            except (OSError, TimeoutError):
                await self._pause(self.reconnect)
                continue
            self.opened += 1
            counted = False
            try:
                while not self.stop.is_set():
                    if not await ask_framed(reader, writer, index, 2):
                        break
                    if not counted:
                        counted, self.open = True, self.open + 1
                        self.peak = max(self.peak, self.open)
                    await self._pause(self.interval)
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                self.closed_by_server += 1
            finally:
                if counted:
                    self.open -= 1
                writer.close()
            await self._pause(self.reconnect)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._one(i, s)) for i, s in enumerate(self.sources)]
        await self.stop.wait()
        await asyncio.gather(*tasks, return_exceptions=True)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def describe_latencies(values: list[float]) -> str:
    if not values:
        return "none answered"
    return (f"p50 {statistics.median(values) * 1000:.1f} ms, p99 {percentile(values, 99) * 1000:.1f} ms, "
            f"max {max(values) * 1000:.1f} ms")


# --- running-dnsd attacks (target given by --server/--port) -------------------------------------


class Budget:
    """Stops the attack after `max_queries` queries or `seconds` seconds, whichever comes first."""

    def __init__(self, max_queries: int, seconds: float):
        self.max_queries = max_queries
        self.deadline = time.monotonic() + seconds
        self.sent = 0

    def take(self) -> bool:
        if self.sent >= self.max_queries or time.monotonic() >= self.deadline:
            return False
        self.sent += 1
        return True


def parser(description: str, max_queries: int, seconds: float = 60.0) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--server", default="127.0.0.1", help="dnsd address (loopback only)")
    p.add_argument("--port", type=int, default=5353)
    p.add_argument("--max-queries", type=int, default=max_queries, help="stop after this many queries")
    p.add_argument("--seconds", type=float, default=seconds, help="stop after this long")
    return p


def loopback_target(args: argparse.Namespace) -> tuple[str, int]:
    """Refuse any target but loopback: these scripts are load and abuse generators."""
    try:
        address = ipaddress.ip_address(args.server)
    except ValueError:
        sys.exit(f"--server must be an IP address, not {args.server!r}")
    if not address.is_loopback:
        sys.exit(f"refusing to attack {address}: only loopback targets (127.0.0.0/8, ::1)")
    return str(address), args.port


def ask(target: tuple[str, int], query: dns.message.Message, tcp: bool = False, source: str | None = None,
        timeout: float = 2.0) -> dns.message.Message | None:
    """One exchange; None on a timeout (the server may drop what it refuses to answer)."""
    try:
        if tcp:
            return dns.query.tcp(query, target[0], port=target[1], timeout=timeout, source=source)
        return dns.query.udp(query, target[0], port=target[1], timeout=timeout, source=source)
    except (dns.exception.Timeout, OSError, EOFError):
        return None


def udp_exchange_raw(target: tuple[str, int], wire: bytes, timeout: float = 2.0) -> bytes | None:
    """Send raw bytes over UDP and return the raw reply (for malformed or hand-built queries)."""
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(wire, target)
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def tcp_exchange_raw(target: tuple[str, int], wire: bytes, timeout: float = 2.0) -> bytes | None:
    with socket.create_connection(target, timeout=timeout) as sock:
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        head = sock.recv(2)
        if len(head) < 2:
            return None
        size = struct.unpack("!H", head)[0]
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                return None
            data += chunk
        return data
