"""The command lines as a newcomer meets them: relative paths in a config (beside the config, whatever
the working directory), --version, check-config --config, output piped into a closed pipe, explain's
assumption, a refused reload, and the operator commands' start-up (no server modules loaded)."""
from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from dnsd.config import load_config, parse_config_text
from tests import harness
from tests.dnstest import EXAMPLE, ROOT, example_dict

BIN = Path(sys.executable).parent
PROGRAMS = {  # program -> how to run it without relying on the venv's entry-point scripts
    "dnsd": [sys.executable, "-m", "dnsd"],
    "probes": [sys.executable, "-m", "probes"],
    "geotm-backend": [sys.executable, "-c", "import sys; from standin.cli import main; sys.exit(main())"],
    "geotm": [sys.executable, "-m", "drills"],
}
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


def run(program: str, *args: str, cwd: Path | str = ROOT, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*PROGRAMS[program], *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env=ENV, **kwargs)


# -- relative paths resolve beside the config ---------------------------------------------------------

def _with_files(data: dict) -> dict:
    data["probes"] = {"state_file": "state/probes.json", "token_file": "secrets/probes-token",
                      "registry_credentials": "auth.json", "tls": {"cert_file": "tls/p.crt", "key_file": "/abs/p.key"},
                      "webhook": {"url": "http://127.0.0.1:9/hook", "secret_file": "../shared/hook-secret"}}
    data["health"] = {"feeds": [{"url": "https://127.0.0.1:8053/v1/health", "ca_file": "ca.pem",
                                 "token_file": "./secrets/feed-token"}], "state_file": "state/health.json"}
    data["admin"] = {"listen": "off", "token_file": "secrets/admin-token", "state_file": "state/overrides.json"}
    data["registries"]["contoso"]["replicas"]["eastus"]["probe"]["checks"][0]["ca_file"] = "ca.pem"
    return data


PATH_CASES = [
    # id, where the value ends up, value in the config, expected path with CONF = the config's folder
    ("probes.state_file", lambda c: c.probes.state_file, "CONF/state/probes.json"),
    ("probes.token_file", lambda c: c.probes.token_file, "CONF/secrets/probes-token"),
    ("probes.registry_credentials", lambda c: c.probes.registry_credentials, "CONF/auth.json"),
    ("probes.tls.cert_file", lambda c: c.probes.tls_cert_file, "CONF/tls/p.crt"),
    ("probes.tls.key_file-absolute-unchanged", lambda c: c.probes.tls_key_file, "/abs/p.key"),
    ("probes.webhook.secret_file-dotdot", lambda c: c.probes.webhook.secret_file, "PARENT/shared/hook-secret"),
    ("health.feeds.ca_file", lambda c: c.health.access_for("https://127.0.0.1:8053/v1/health").ca_file, "CONF/ca.pem"),
    ("health.feeds.token_file-dot", lambda c: c.health.access_for("https://127.0.0.1:8053/v1/health").token_file,
     "CONF/secrets/feed-token"),
    ("health.state_file", lambda c: c.health.state_file, "CONF/state/health.json"),
    ("admin.token_file", lambda c: c.admin.token_file, "CONF/secrets/admin-token"),
    ("admin.state_file", lambda c: c.admin.state_file, "CONF/state/overrides.json"),
    ("probe check ca_file", lambda c: c.registries[0].replicas[0].probe.checks[0].ca_file, "CONF/ca.pem"),
]


@pytest.mark.parametrize("get,expected", [case[1:] for case in PATH_CASES], ids=[case[0] for case in PATH_CASES])
def test_relative_paths_in_a_config_are_relative_to_its_folder(tmp_path, monkeypatch, get, expected):
    conf = tmp_path / "etc" / "geotm"
    conf.mkdir(parents=True)
    path = conf / "geotm.yaml"
    path.write_text(yaml.safe_dump(_with_files(example_dict()), sort_keys=False))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(os.path.relpath(path))  # a relative path to the config works too
    assert get(config) == expected.replace("CONF", str(conf)).replace("PARENT", str(conf.parent))


def test_config_text_without_a_folder_keeps_paths_as_written():
    config = parse_config_text(yaml.safe_dump(_with_files(example_dict())), "<test>")
    assert (config.admin.token_file, config.probes.webhook.secret_file) == ("secrets/admin-token", "../shared/hook-secret")


def test_an_empty_state_file_name_is_a_config_problem(tmp_path):
    data = example_dict()
    data["admin"]["state_file"] = ""
    path = tmp_path / "geotm.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = run("dnsd", "check-config", str(path))
    assert result.returncode == 1 and "expected a file name, got an empty string" in result.stderr


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A real dnsd started from a folder that is not the config's, the config naming its admin token
    and state file relatively: the token is found and state lands beside the config."""
    base = tmp_path_factory.mktemp("served")
    conf, cwd = base / "etc", base / "elsewhere"
    (conf / "secrets").mkdir(parents=True)
    cwd.mkdir()
    (conf / "secrets" / "admin-token").write_text("relative-token\n")
    data = example_dict()
    admin_port = harness.free_port()
    data["probes"] = {}
    data["health"] = {}
    data["admin"] = {"listen": f"127.0.0.1:{admin_port}", "token_file": "secrets/admin-token",
                     "state_file": "state/overrides.json"}
    (conf / "state").mkdir()
    path = conf / "geotm.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    port = harness.free_port()
    process = harness.ServiceProcess(
        [*PROGRAMS["dnsd"], "serve", "--config", str(path), "--listen", f"127.0.0.1:{port}"],
        ready=lambda: harness.udp_answers("127.0.0.1", port), name="dnsd", env={"PYTHONPATH": ENV["PYTHONPATH"]},
        cwd=cwd)
    with process:
        yield {"path": path, "conf": conf, "cwd": cwd, "data": data, "admin_port": admin_port, "process": process}


def test_dnsd_serve_from_another_folder_finds_its_token_and_writes_state_beside_the_config(served):
    request = urllib.request.Request(f"http://127.0.0.1:{served['admin_port']}/v1/status",
                                     headers={"Authorization": "Bearer relative-token"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    elsewhere = served["cwd"].parent / "third"
    elsewhere.mkdir(exist_ok=True)
    drained = run("dnsd", "drain", "contoso", "westeurope", "--reason", "test", "--config", str(served["path"]),
                  cwd=elsewhere)
    assert drained.returncode == 0, drained.stderr
    run("dnsd", "undrain", "contoso", "westeurope", "--config", str(served["path"]), cwd=elsewhere)
    assert (served["conf"] / "state" / "overrides.json").exists()
    assert list(served["cwd"].iterdir()) == [] and list(elsewhere.iterdir()) == []


def test_a_refused_reload_prints_each_problem_once_without_the_raw_answer(served):
    path, data = served["path"], served["data"]
    good = path.read_text()
    broken = dict(data, registries={**data["registries"], "contoso": {**data["registries"]["contoso"],
                                                                      "routing": "fastest"}})
    broken["zone"] = {**data["zone"], "records": [*data["zone"]["records"], {"name": "x", "type": "MX", "value": "10"}]}
    path.write_text(yaml.safe_dump(broken, sort_keys=False))
    try:
        refused = run("dnsd", "reload", "--config", str(path))
    finally:
        path.write_text(good)
    lines = refused.stderr.splitlines()
    assert refused.returncode == 1
    assert lines[0].startswith("dnsd reload: refused (HTTP 422): 2 problems; still serving version ")
    assert "{" not in lines[0] and "[" not in refused.stderr.split("\n", 1)[0]
    assert [line.startswith(f"  {path}:") for line in lines[1:]] == [True, True]
    assert sum("routing: expected one of" in line for line in lines) == 1


# -- the operator commands start fast: no server modules ----------------------------------------------

HEAVY = ("aiohttp", "prometheus_client", "uvloop", "dnslib", "structlog", "dnsd.serving.service", "dnsd.protocol.server",
         "dnsd.protocol.listening", "dnsd.protocol.udp", "dnsd.protocol.tcp", "dnsd.serving.runtime", "dnsd.ops.admin",
         "dnsd.protocol.wire", "dnsd.answers.encode", "dnsd.config.rdatatext")


@pytest.mark.parametrize("args", [
    ("status",), ("drain", "contoso", "eastus", "--reason", "import test"), ("undrain", "contoso", "eastus"),
    ("audit", "--limit", "1"), ("reload",), ("--version",),
], ids=lambda args: args[0])
def test_operator_commands_load_no_server_modules(served, args):
    argv = [*args, "--config", str(served["path"])] if args[0] != "--version" else list(args)
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "dnsd", *argv], capture_output=True,
                            text=True, timeout=60, cwd=ROOT, env=ENV)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "dnsd.cli" in imported
    assert sorted(m for m in imported if m.split(".")[0] in HEAVY or m in HEAVY) == []


# -- --version, check-config --config, explain ---------------------------------------------------------

@pytest.mark.parametrize("program", list(PROGRAMS))
def test_version_on_every_command(program):
    result = run(program, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{program} {metadata.version('geotm')}\n"


@pytest.mark.parametrize("args,code,out", [
    (("EXAMPLE",), 0, "EXAMPLE: OK: zone azurecr.test"),
    (("--config", "EXAMPLE"), 0, "EXAMPLE: OK: zone azurecr.test"),
    (("EXAMPLE", "--config", "EXAMPLE"), 0, "EXAMPLE: OK: zone azurecr.test"),
    (("EXAMPLE", "--config", "other.yaml"), 2, "two different configs given"),
    ((), 2, "which config?"),
], ids=["positional", "option", "both-same", "both-different", "none"])
def test_check_config_takes_the_config_either_way(args, code, out):
    result = run("dnsd", "check-config", *(str(EXAMPLE) if a == "EXAMPLE" else a for a in args))
    assert result.returncode == code
    assert out.replace("EXAMPLE", str(EXAMPLE)) in result.stdout + result.stderr


def test_explain_without_live_says_what_it_assumes():
    result = run("dnsd", "explain", "contoso.azurecr.test", "--config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == ("from the config alone: assumes every replica online and no overrides "
                                             "(--live asks the running dnsd for its health and overrides)")


# -- output into a closed pipe (`| head`) ---------------------------------------------------------------

@pytest.mark.parametrize("buffering", ["buffered", "unbuffered"])
@pytest.mark.parametrize("program,args", [
    ("dnsd", ("--version",)),
    ("dnsd", ("check-config", str(EXAMPLE))),
    ("dnsd", ("explain", "contoso.azurecr.test", "--config", str(EXAMPLE))),
    ("probes", ("budget", "--config", str(EXAMPLE))),
    ("geotm-backend", ("--version",)),
    ("geotm", ("--version",)),
], ids=lambda v: v if isinstance(v, str) else "-".join(a for a in v if not a.startswith("/"))[:30])
def test_output_into_a_closed_pipe_ends_quietly(program, args, buffering):
    env = {key: value for key, value in ENV.items() if key != "PYTHONUNBUFFERED"}
    if buffering == "unbuffered":
        env["PYTHONUNBUFFERED"] = "1"
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write, like `| head` after it has read enough
    try:
        result = subprocess.run([*PROGRAMS[program], *args], stdout=write_end, stderr=subprocess.PIPE, text=True,
                                timeout=60, cwd=ROOT, env=env)
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == 141  # as a shell reports a process ended by SIGPIPE
