"""Secrets kept in files (bearer tokens, webhook keys): read, re-read when the file changes, compared in
constant time. Used by dnsd's health feed and admin API (and its CLI client), and by probes (its API
token, the webhook secret)."""
from __future__ import annotations

import hmac
import os
from pathlib import Path


class SecretUnreadable(ValueError):
    """The file is missing, unreadable or empty: the message says which and where."""


class SecretFile:
    """One secret file. `value()` re-reads it only when its (inode, mtime, size) changed, so a rotated
    token is picked up without a restart and without reading the file on every request."""

    def __init__(self, path: str, what: str):
        self.path = path
        self.what = what
        self._stamp: tuple[int, int, int] | None = None
        self._value = ""

    def value(self) -> str:
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                text = Path(self.path).read_text(encoding="utf-8").strip()
                if not text:
                    raise SecretUnreadable(f"{self.what} {self.path} is empty")
                self._value, self._stamp = text, stamp
        except OSError as err:
            self._stamp = None
            raise SecretUnreadable(f"cannot read {self.what} {self.path}: {err.strerror or err}") from None
        except UnicodeDecodeError:
            self._stamp = None
            raise SecretUnreadable(f"{self.what} {self.path} is not UTF-8 text") from None
        return self._value


def bearer_matches(header: str | None, token: str) -> bool:
    """`Authorization: Bearer <token>` with exactly this token; compared in constant time."""
    if not header or not header[:7].lower() == "bearer ":
        return False
    return hmac.compare_digest(header[7:].strip().encode(), token.encode())
