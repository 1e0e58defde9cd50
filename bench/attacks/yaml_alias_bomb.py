"""Attack: reload a running dnsd with a YAML alias bomb ("billion laughs": `width` aliases per level,
`levels` levels, width**levels nodes once expanded) while it answers a paced query stream.

Starts its own dnsd on a free loopback port (admin API on another, token in a temp dir), then for each
attempt writes the bomb into the config file and asks for a reload, alternately by SIGHUP and by the
admin API. Reports how long each refusal took, dnsd's peak RSS before and after, and the answers lost
or late meanwhile. Bounded: `--attempts` reloads, each waited for at most `--timeout` s; the load is
`--rate` queries/s only while the attack runs.

    .venv/bin/python bench/attacks/yaml_alias_bomb.py                 # 9^7 bomb, 4 attempts
    .venv/bin/python bench/attacks/yaml_alias_bomb.py --levels 8 --json

Exit status 0 when every reload was refused within --max-refusal-s, nothing was lost, and the peak RSS
grew by less than --max-rss-growth-mib; 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import string
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BENCH))

from rebuild import EXAMPLE, LiveDnsd, PacedLoad, query_wires, summarize  # noqa: E402  (puts ROOT on sys.path)

from dnsd.common.children import free_port  # noqa: E402
from dnsd.config import read_document  # noqa: E402

TOKEN = "attack-admin-token"


def bomb(levels: int, width: int) -> str:
    """`levels` anchored lists, each holding `width` aliases of the one before: width**levels leaves."""
    names = string.ascii_lowercase
    lines = ["notes:"]
    lines.append(f"  {names[0]}: &{names[0]} [{', '.join(['lol'] * width)}]")
    for level in range(1, levels):
        here, below = names[level], names[level - 1]
        lines.append(f"  {here}: &{here} [{', '.join([f'*{below}'] * width)}]")
    return "\n".join(lines) + "\n"


def good_config(workdir: Path) -> str:
    data = read_document(EXAMPLE)
    data["health"] = {}
    token = workdir / "admin-token"
    token.write_text(TOKEN + "\n")
    data["admin"] = {**data["admin"], "token_file": str(token), "state_file": str(workdir / "overrides.json")}
    data["probes"]["state_file"] = str(workdir / "probes-state.json")
    return yaml.safe_dump(data, sort_keys=False)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def admin_reload(port: int, timeout: float) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/reload", data=b"{}", method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        return json.loads(err.read())


def attack(levels: int, width: int, attempts: int, rate: float, timeout: float) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="geotm-attack-bomb-"))
    path = workdir / "geotm.yaml"
    good = good_config(workdir)
    path.write_text(good)
    admin_port = free_port()
    server = LiveDnsd(path, workdir, ("--admin-listen", f"127.0.0.1:{admin_port}"))
    rounds = []
    try:
        server.wait_ready(30)
        rss_before = peak_rss_mib(server.process.pid)
        load = PacedLoad(server.port, query_wires(1, server.zone), rate).start()
        time.sleep(0.5)
        attack_start = time.perf_counter()
        for attempt in range(attempts):
            path.write_text(good + bomb(levels, width))
            how = "sighup" if attempt % 2 == 0 else "admin-api"
            started = time.perf_counter()
            if how == "sighup":
                server.process.send_signal(signal.SIGHUP)
                seen = server.wait_for_event(("config_reload_failed", "config_reloaded"), timeout)
                refused = seen == "config_reload_failed"
                problem = ""
            else:
                body = admin_reload(admin_port, timeout)
                refused, problem = not body.get("ok"), (body.get("problems") or [""])[0]
                server.wait_for_event(("config_reload_failed", "config_reloaded"), timeout)  # past its log line
            rounds.append({"via": how, "refused": refused, "seconds": round(time.perf_counter() - started, 3),
                           "problem": problem})
            time.sleep(0.3)
        attack_end = time.perf_counter()
        records = load.finish()
        rss_after = peak_rss_mib(server.process.pid)
    finally:
        server.stop()
    during = summarize(records, [(attack_start, attack_end)])
    log = server.log()
    shutil.rmtree(workdir, ignore_errors=True)
    return {"bomb_nodes": width ** levels, "attempts": rounds, "rss_before_mib": round(rss_before, 1),
            "rss_after_mib": round(rss_after, 1), "queries": during,
            "refusals_logged": log.count('"event": "config_reload_failed"')}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=int, default=7)
    parser.add_argument("--width", type=int, default=9)
    parser.add_argument("--attempts", type=int, default=4)
    parser.add_argument("--rate", type=float, default=500.0, help="queries per second during the attack")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each reload's verdict")
    parser.add_argument("--max-refusal-s", type=float, default=1.0)
    parser.add_argument("--max-rss-growth-mib", type=float, default=20.0)
    parser.add_argument("--json", action="store_true", help="print the raw result as JSON")
    args = parser.parse_args()
    result = attack(args.levels, args.width, args.attempts, args.rate, args.timeout)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"alias bomb of {result['bomb_nodes']:,} nodes, {len(result['attempts'])} reloads:")
        for item in result["attempts"]:
            print(f"  {item['via']:>9}: {'refused' if item['refused'] else 'ACCEPTED'} after {item['seconds']:.3f} s"
                  + (f"  ({item['problem'][:140]}...)" if item["problem"] else ""))
        q = result["queries"]
        print(f"dnsd peak RSS {result['rss_before_mib']} -> {result['rss_after_mib']} MiB; queries during the attack: "
              f"{q['answered']}/{q['queries']} answered, p50 {q['p50_ms']:.2f} ms, p99 {q['p99_ms']:.2f} ms, "
              f"max {q['max_ms']:.1f} ms")
    ok = (all(item["refused"] and item["seconds"] <= args.max_refusal_s for item in result["attempts"])
          and result["queries"]["lost"] == 0
          and result["rss_after_mib"] - result["rss_before_mib"] < args.max_rss_growth_mib)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
