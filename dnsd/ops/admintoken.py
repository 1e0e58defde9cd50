"""The admin API's bearer token: where it is read from (token_file, else the environment), for the
server (dnsd.ops.admin) and its client (dnsd.ops.adminclient) alike; no HTTP here."""
from __future__ import annotations

import os
from pathlib import Path

from dnsd.model import AdminSettings


class UnusableToken:
    """A token is configured but cannot be read: DNS keeps serving, every non-public call is refused."""

    def __init__(self, why: str):
        self.why = why


def load_token(settings: AdminSettings) -> str | None:
    """The bearer token: from token_file if set (must exist), else the environment variable, else None."""
    if settings.token_file:
        token = Path(settings.token_file).read_text().strip()
        if not token:
            raise ValueError(f"admin token file {settings.token_file} is empty")
        return token
    if settings.token_env:
        token = os.environ.get(settings.token_env, "").strip()
        return token or None
    return None
