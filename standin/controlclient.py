"""Talk to a running geotm-backend's control API: list its replicas, find a replica by name, switch its mode; every failure is one ControlError that says what went wrong."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from dnsd.common.hostport import format_host_port

CONTROL_TIMEOUT = 5.0


class ControlError(Exception):
    pass


class ControlClient:
    def __init__(self, control: tuple[str, int], timeout: float = CONTROL_TIMEOUT):
        self.base = f"http://{format_host_port(*control)}"
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One request to the control API (never through a proxy) -> its JSON."""
        url = self.base + path
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=self.timeout) as response:
                return json.loads(response.read(1 << 20) or b"null")
        except urllib.error.HTTPError as err:
            try:
                message = json.loads(err.read(1 << 16)).get("error") or err.reason
            except (ValueError, AttributeError):
                message = err.reason
            raise ControlError(f"{method} {url}: HTTP {err.code}: {message}") from None
        except urllib.error.URLError as err:
            reason = getattr(err.reason, "strerror", None) or err.reason
            raise ControlError(f"cannot reach the control listener at {url}: {reason} "
                               "(is `geotm-backend serve` running? see --control)") from None
        except (OSError, ValueError) as err:
            raise ControlError(f"{method} {url}: {err}") from None

    def replicas(self) -> list[dict[str, Any]]:
        """Every replica's state, as `status --json` prints it."""
        return self.call("GET", "/replicas")["replicas"]

    def matching(self, replica: str, registry: str | None = None) -> list[dict[str, Any]]:
        """The replicas named `replica` (in every registry that has one, or only `registry`'s)."""
        replicas = self.replicas()
        found = [r for r in replicas if r["replica"] == replica and (registry is None or r["registry"] == registry)]
        if not found:
            known = ", ".join(f"{r['registry']}/{r['replica']}" for r in replicas) or "none"
            where = f" in registry {registry!r}" if registry else ""
            raise ControlError(f"no replica {replica!r}{where}; served: {known}")
        return found

    def set_mode(self, registry: str, replica: str, mode: str, delay: float | None = None,
                 reason: str | None = None) -> dict[str, Any]:
        """-> the replica's new state."""
        body: dict[str, Any] = {"mode": mode}
        if delay is not None:
            body["delay"] = delay
        if reason:
            body["reason"] = reason
        return self.call("POST", f"/replicas/{registry}/{replica}/mode", body)
