"""A minimal Docker Engine API client over the unix socket (stdlib only), for the compose drill:
the client container breaks replicas the way the local drill does (pause = freeze, kill, exec chmod
/ dd in the registry container, stop/start probes) and follows dnsd's and probes' logs; it pulls
through a second engine, the docker daemon as a registry client (drills.daemon); scripts/compose-drill
finds the stack's containers and their health with it.

Only the calls the drill needs; every call has a timeout. Mounting /var/run/docker.sock gives the
client container control of the Docker engine: that is why the compose `client` service is opt-in
(profile `drill`) and meant for a throwaway machine.
"""
from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable

API = "/v1.41"
SOCKET = "/var/run/docker.sock"


class DockerError(RuntimeError):
    """A call the engine refused: `status` its HTTP status, `message` what it said (or this text)."""

    def __init__(self, text: str, status: int | None = None, message: str | None = None):
        super().__init__(text)
        self.status = status
        self.message = message or text


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("docker", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def demux(buffer: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Split Docker's multiplexed stream (8-byte header: stream, 0, 0, 0, big-endian length) into
    (stream, payload) frames; returns the frames and the unconsumed rest."""
    frames = []
    while len(buffer) >= 8:
        stream, length = buffer[0], struct.unpack(">I", buffer[4:8])[0]
        if len(buffer) < 8 + length:
            break
        frames.append((stream, buffer[8:8 + length]))
        buffer = buffer[8 + length:]
    return frames, buffer


class Docker:
    def __init__(self, path: str = SOCKET, timeout: float = 30.0):
        self.path = path
        self.timeout = timeout

    def request(self, method: str, url: str, body: dict | None = None, timeout: float | None = None,
                stream: bool = False):
        """The decoded JSON answer (bytes when it is not JSON); `stream`: always the raw bytes (the
        engine sends progress as JSON lines under a JSON content type)."""
        conn = _UnixConnection(self.path, timeout or self.timeout)
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, API + url, body=payload, headers=headers)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        if response.status >= 400:
            try:
                message = str(json.loads(data).get("message"))
            except (ValueError, AttributeError):
                message = data[:200].decode(errors="replace")
            raise DockerError(f"{method} {url}: HTTP {response.status} {message[:300]}", response.status, message)
        return json.loads(data) if not stream and data and \
            response.getheader("Content-Type", "").startswith("application/json") \
            else data

    # -- containers of this compose project -----------------------------------------------

    def inspect(self, container: str) -> dict:
        return self.request("GET", f"/containers/{urllib.parse.quote(container)}/json")

    def service_container(self, project: str, service: str) -> str:
        filters = json.dumps({"label": [f"com.docker.compose.project={project}",
                                        f"com.docker.compose.service={service}"]})
        found = self.request("GET", "/containers/json?all=1&filters=" + urllib.parse.quote(filters))
        if not found:
            raise DockerError(f"no container for service {service!r} of compose project {project!r}")
        return found[0]["Id"]

    def pause(self, cid: str) -> None:
        self.request("POST", f"/containers/{cid}/pause")

    def unpause(self, cid: str) -> None:
        self.request("POST", f"/containers/{cid}/unpause")

    def kill(self, cid: str) -> None:
        self.request("POST", f"/containers/{cid}/kill?signal=KILL")

    def start(self, cid: str) -> None:
        self.request("POST", f"/containers/{cid}/start")

    def stop(self, cid: str, grace: int = 5) -> None:
        self.request("POST", f"/containers/{cid}/stop?t={grace}", timeout=grace + 15)

    def state(self, cid: str) -> dict:
        return self.inspect(cid).get("State", {})

    def exec(self, cid: str, argv: list[str], user: str = "root", timeout: float = 30.0) -> tuple[int, str]:
        created = self.request("POST", f"/containers/{cid}/exec",
                               {"Cmd": argv, "User": user, "AttachStdout": True, "AttachStderr": True})
        raw = self.request("POST", f"/exec/{created['Id']}/start", {"Detach": False, "Tty": False}, timeout=timeout)
        frames, _ = demux(raw if isinstance(raw, bytes) else b"")
        output = b"".join(payload for _, payload in frames).decode(errors="replace")
        code = self.request("GET", f"/exec/{created['Id']}/json").get("ExitCode")
        return (code if isinstance(code, int) else -1), output

    def health(self, cid: str) -> str:
        """The container's health-check status (healthy, unhealthy, starting), or its state without one."""
        state = self.state(cid)
        return (state.get("Health") or {}).get("Status") or state.get("Status", "?")

    # -- images ------------------------------------------------------------------------------

    def pull(self, reference: str, timeout: float) -> str:
        """`docker pull REFERENCE` (name:tag); returns the manifest digest the engine reports. The engine
        answers 200 and streams progress even when the pull fails later: errors come in the stream."""
        name, _, tag = reference.rpartition(":")
        query = urllib.parse.urlencode({"fromImage": name, "tag": tag})
        try:
            raw = self.request("POST", f"/images/create?{query}", timeout=timeout, stream=True)
        except DockerError as err:  # refused before the stream began (unknown manifest, no route)
            raise DockerError(err.message, err.status) from None
        digest = ""
        for line in raw.splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if item.get("error"):
                raise DockerError(str(item["error"]))
            status = str(item.get("status", ""))
            if status.startswith("Digest: "):
                digest = status.removeprefix("Digest: ").strip()
        if not digest:
            raise DockerError(f"pull of {reference}: the engine reported no digest")
        return digest

    def remove_image(self, reference: str) -> None:
        """`docker rmi -f REFERENCE`; gone already is fine."""
        try:
            self.request("DELETE", f"/images/{urllib.parse.quote(reference, safe='/:')}?force=1")
        except DockerError as err:
            if err.status != 404:
                raise

    def follow_logs(self, cid: str, on_line: Callable[[str, float], None], stop: threading.Event) -> None:
        """Feed every new log line of the container to on_line until `stop` (reconnects, bounded by
        `stop`; a quiet stream is reopened every 5 s)."""
        since = int(time.time())
        while not stop.is_set():
            try:
                conn = _UnixConnection(self.path, 5.0)
                conn.request("GET", f"{API}/containers/{cid}/logs?follow=1&stdout=1&stderr=1&since={since}")
                response = conn.getresponse()
                buffer = b""
                partial = {1: b"", 2: b""}
                while not stop.is_set():
                    try:
                        chunk = response.read1(65536)
                    except (TimeoutError, socket.timeout):
                        break  # quiet for 5 s: reconnect (a stream cut mid-chunk is not resumable)
                    if not chunk:
                        break
                    frames, buffer = demux(buffer + chunk)
                    for stream, payload in frames:
                        text = partial.get(stream, b"") + payload
                        *lines, partial[stream] = text.split(b"\n")
                        for line in lines:
                            on_line(line.decode(errors="replace") + "\n", time.time())
                conn.close()
            except (OSError, http.client.HTTPException):
                pass
            since = int(time.time())
            stop.wait(1.0)

