"""Tail latency at a moderate fixed load: each selected server (geotm, knot, gdnsd, ...) started as
bench/run starts it, then short dnsperf runs at a fixed rate (default 20,000 qps) with every answer's
latency, printing p50, p99 and p99.9 per server (medians over the runs). For before/after
comparisons of the tail; see bench/README.md "Tail latency"."""
from __future__ import annotations

import argparse
import http.server
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # bench's modules, and dnsd when it is not installed

import benchlib as bl  # noqa: E402
import dnsperfout  # noqa: E402
import peers  # noqa: E402
from measure import measure_latency  # noqa: E402
from verify import verify  # noqa: E402

from dnsd.common.children import stop_all  # noqa: E402
from dnsd.routing.health import FEED_FORMAT  # noqa: E402

FEED_ROW = "geotm+feed"


def serve_health_feed(m: bl.ZoneModel) -> http.server.ThreadingHTTPServer:
    """A probes stand-in on a free loopback port: every replica online, answered as probes answers
    (an ETag; 304 when dnsd already has that document), so dnsd polls each second and saves its state
    file every 5 s, as in production. Runs in a thread of this process."""
    endpoints = [{"registry": reg.name, "replica": rep.name, "status": "online", "reason": "bench",
                  "since": time.time()} for reg in m.registries for rep in reg.replicas]
    body = json.dumps({"format": FEED_FORMAT, "instance": "bench", "generation": 1,
                       "generated_at": time.time(), "endpoints": endpoints}).encode()
    etag = '"bench-1"'

    class Feed(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as aiohttp's session would get from probes

        def do_GET(self):
            if self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("ETag", etag)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Feed)
    threading.Thread(target=server.serve_forever, name="health-feed", daemon=True).start()
    return server


def with_health_feed(config_file: Path, feed_url: str, tmp: Path) -> None:
    """geotm's bench config plus the health feed production has: polled each second, its state file
    (written atomically with fsync) kept in `tmp`."""
    doc = yaml.safe_load(config_file.read_text())
    doc["health"] = {"feeds": [feed_url], "poll_interval": "1s", "ttl": "15s",
                     "state_file": str(tmp / "dnsd-health.json")}
    config_file.write_text(yaml.safe_dump(doc, sort_keys=False))


def tail_table(results: dict) -> str:
    """One line per server: the medians of the runs' p50, p99 and p99.9 (ms) and the server's CPU."""
    head = ("server", "rate", "runs", "p50_ms", "p99_ms", "p999_ms", "srv_cpu")
    body = [head]
    for name, lat in results.items():
        runs = [r for r in lat["runs"] if r.get("p99_ms") is not None]

        def med(key, fmt="{:.3f}"):
            vals = [r[key] for r in runs if r.get(key) is not None]
            return fmt.format(dnsperfout.median(vals)) if vals else "-"
        body.append((name, str(lat["rate"]), str(len(runs)), med("p50_ms"), med("p99_ms"), med("p999_ms"),
                     med("server_cpu_cores", "{:.2f}")))
    return dnsperfout.aligned(body, rule=False)


def older_dnsd(argv: list[str], src: Path) -> list[str]:
    """A geotm server's argv (taskset -c CORE DNSD serve ...) running the dnsd package found in `src`."""
    if not (src / "dnsd" / "cli.py").exists():
        raise SystemExit(f"--dnsd-src {src}: no dnsd/cli.py there")
    start = f"import sys; sys.path.insert(0, {str(src.resolve())!r}); from dnsd.cli import main; sys.exit(main())"
    return [*argv[:3], sys.executable, "-c", start, *argv[4:]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/tail.py", description=__doc__)
    ap.add_argument("--only", default=f"geotm,{FEED_ROW},knot",
                    help=f"comma-separated servers (default geotm,{FEED_ROW},knot; {FEED_ROW}: geotm polling a "
                         "health feed each second, as in production)")
    ap.add_argument("--rate", type=int, default=20000, help="fixed load in qps (default 20000)")
    ap.add_argument("--seconds", type=float, default=3, help="length of each measured run (default 3)")
    ap.add_argument("--runs", type=int, default=5, help="runs per server; the table shows medians (default 5)")
    ap.add_argument("--config", default=str(ROOT / "config" / "example.yaml"), help="geotm config to mirror")
    ap.add_argument("--json", default=str(HERE / "results" / "tail.json"), help="raw results file")
    ap.add_argument("--dnsd-src", default="",
                    help="run the geotm rows from the dnsd package in this folder (e.g. `git archive OLD dnsd | "
                         "tar -x -C DIR`), with this repo's Python and libraries: the 'before' of a before/after")
    args = ap.parse_args(argv)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    servers = [s for s in peers.all_servers() if s.name in wanted]
    if FEED_ROW in wanted:
        servers.insert(1 if servers and servers[0].name == "geotm" else 0,
                       peers.Server(FEED_ROW, "geotm dnsd polling a health feed", "eastus", "dnsd", is_geotm=True))
    m = bl.load_model(args.config)
    feed = serve_health_feed(m) if FEED_ROW in wanted else None
    tmp = Path(tempfile.mkdtemp(prefix="geotm-tail-"))
    results: dict = {}
    try:
        qfile = tmp / "queries.txt"
        qfile.write_text("\n".join(bl.query_lines(m)) + "\n")
        for s in servers:
            if not s.is_geotm and not peers.have(s.binary):
                bl.log(f"{s.name}: {s.binary} not installed, skipped")
                continue
            peers.prepare(s, m, tmp, Path(args.config))
            if feed is not None and s.name == FEED_ROW:
                with_health_feed(tmp / s.name / "geotm.yaml", f"http://127.0.0.1:{feed.server_port}/v1/health",
                                 tmp / s.name)
            if s.is_geotm and args.dnsd_src:
                s.argv = older_dnsd(s.argv, Path(args.dnsd_src))
            child = peers.start(s, tmp / f"{s.name}.log", tmp / s.name)
            try:
                peers.wait_answering(s, m)
                good, notes = verify(m, s.port, s.fixed, s.is_geotm)
                if not good:
                    bl.log(f"{s.name}: wrong answers, not measured: {notes}")
                    continue
                res: dict = {}
                measure_latency(s, qfile, args.seconds, args.runs, args.rate, res, [], tmp)
                results[s.name] = res["latency"]
            finally:
                child.stop()
    except KeyboardInterrupt:
        bl.log("interrupted: stopping everything")
        return 130
    finally:
        stop_all(grace=3.0)
        if feed is not None:
            feed.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"tail latency at a fixed {args.rate} qps: {args.runs} x {args.seconds:g} s per server (medians), "
          f"server on core {peers.SERVER_CORE}, dnsperf -T 1 -v on core 1")
    print(tail_table(results))
    print(f"\nraw results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
