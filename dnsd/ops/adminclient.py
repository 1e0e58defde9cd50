"""Talk to a running dnsd's admin API, finding its address and token through the config file."""
from __future__ import annotations

import getpass
import json
import socket
import urllib.error
import urllib.request

from dnsd.ops.admintoken import load_token
from dnsd.model import AdminSettings


class AdminClientError(Exception):
    pass


class AdminClient:
    def __init__(self, settings: AdminSettings, actor: str | None = None, timeout: float = 10.0):
        if settings.listen is None:
            raise AdminClientError("admin.listen is off in the config: there is no admin API to talk to")
        host, port = settings.listen
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        self.base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        try:
            self.token = load_token(settings)
        except (OSError, ValueError) as err:
            raise AdminClientError(f"cannot read the admin token: {err}") from None
        self.actor = actor or f"{getpass.getuser()}@{socket.gethostname()}"
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        headers = {"X-Geotm-Actor": self.actor, "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as err:
            try:
                return err.code, json.loads(err.read() or b"{}")
            except ValueError:
                return err.code, {"error": f"HTTP {err.code}"}
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise AdminClientError(f"cannot reach dnsd's admin API at {self.base}: {reason}") from None
