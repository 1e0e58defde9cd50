"""The many-source row of bench/run: our own load generator (manysrc.c, built here with gcc) sending the
main mix from 1,000 loopback source addresses, one socket and one source address per message
(IP_PKTINFO), batched with sendmmsg/recvmmsg; the query file it reads, and one measured run with the
server's and the generator's CPU. dnsperf binds one source address, so it cannot make this row."""
from __future__ import annotations

import ipaddress
import shlex
import shutil
import subprocess
from pathlib import Path

import benchlib as bl
from measure import LOAD_CORE, OUTSTANDING, WARMUP_S, measured_run, run_dnsperf
from peers import Server

from dnsd.records import name_labels, type_number

SOURCE = Path(__file__).resolve().parent / "manysrc.c"
# 127.0.1.1 upwards: in none of the example config's client networks (geotm's default region, eastus,
# the same answers as for 127.0.0.1) and outside its corp-vnet view (127.0.0.64/26)
FIRST_SOURCE = "127.0.1.1"
SOURCES = 1000
VARIANT = "src1k"


def build(tmp: Path) -> Path | None:
    """gcc -O2 manysrc.c into tmp; None (and a log line) when there is no gcc or it fails."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        bl.log("many-source row skipped: no gcc")
        return None
    binary = tmp / "manysrc"
    r = subprocess.run([gcc, "-O2", "-Wall", "-o", str(binary), str(SOURCE)], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        bl.log(f"many-source row skipped: gcc failed:\n{r.stderr[-2000:]}")
        return None
    return binary


def query_message(line: str) -> bytes:
    """A query line ("NAME TYPE") as a DNS message: ID 0 (manysrc sets it), no flags (RD clear, as
    a resolver asks an authoritative server), one question, class IN, no EDNS (as the main row)."""
    name, qtype = line.split()
    qname = b"".join(bytes([len(label)]) + label for label in name_labels(name)) + b"\0"
    return (bytes(4) + (1).to_bytes(2, "big") + bytes(6) + qname + type_number(qtype).to_bytes(2, "big")
            + (1).to_bytes(2, "big"))


def write_query_file(lines: list[str], path: Path) -> None:
    """manysrc's query file: each message after its 2-byte big-endian length."""
    with open(path, "wb") as out:
        for line in lines:
            msg = query_message(line)
            out.write(len(msg).to_bytes(2, "big") + msg)


def sources(count: int = SOURCES, first: str = FIRST_SOURCE) -> list[str]:
    start = ipaddress.ip_address(first)
    return [str(start + i) for i in range(count)]


def manysrc_argv(binary: Path, port: int, qfile: Path, seconds: float) -> list[str]:
    return ["taskset", "-c", LOAD_CORE, str(binary), "127.0.0.1", str(port), str(qfile), FIRST_SOURCE,
            str(SOURCES), f"{seconds:g}", str(OUTSTANDING)]


def measure_many_sources(s: Server, binary: Path, qfile: Path, seconds: float, runs: int, result: dict,
                         commands: list[str]) -> None:
    """`runs` full-speed runs from SOURCES addresses, each after a warm-up, into result's variants."""
    vres = result["variants"].setdefault(VARIANT, {"runs": []})
    for i in range(runs):
        run_dnsperf(manysrc_argv(binary, s.port, qfile, WARMUP_S), WARMUP_S + 30)
        argv = manysrc_argv(binary, s.port, qfile, seconds)
        if i == 0:
            commands.append(shlex.join(argv) + f"    # {SOURCES} source addresses; a {WARMUP_S} s warm-up first")
        parsed = measured_run(s, argv, seconds + 30, "manysrc")
        vres["runs"].append(parsed)
        bl.log(f"{s.name} {SOURCES} sources run {i + 1}/{runs}: {parsed.get('qps', 'FAILED')} qps, "
               f"lost {parsed.get('queries_lost', '-')}")
