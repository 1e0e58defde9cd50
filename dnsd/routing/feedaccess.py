"""How dnsd reaches one probes feed: the TLS trust (CA file, always verified) and the bearer token, both
read from files and re-read when the files change."""
from __future__ import annotations

import os
import ssl

from dnsd.model import FeedAccess
from dnsd.common.secretfile import SecretFile, SecretUnreadable


class FeedAccessError(ValueError):
    """The CA file or the token file cannot be used: the poll fails with this reason."""


class FeedTrust:
    def __init__(self, access: FeedAccess):
        self.ca_file = access.ca_file
        self.token = SecretFile(access.token_file, "health feed token file") if access.token_file else None
        self._context: ssl.SSLContext | None = None
        self._stamp: tuple[int, int, int] | None = None

    def ssl(self) -> ssl.SSLContext | bool:
        """True (aiohttp's verified default with the system CAs) or a verifying context for ca_file."""
        if not self.ca_file:
            return True
        try:
            st = os.stat(self.ca_file)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                self._context = ssl.create_default_context(cafile=self.ca_file)
                self._stamp = stamp
        except (OSError, ssl.SSLError) as err:
            self._stamp = None
            raise FeedAccessError(f"cannot load ca_file {self.ca_file}: {getattr(err, 'strerror', None) or err}") from None
        assert self._context is not None
        return self._context

    def headers(self) -> dict[str, str]:
        if self.token is None:
            return {}
        try:
            return {"Authorization": f"Bearer {self.token.value()}"}
        except SecretUnreadable as err:
            raise FeedAccessError(str(err)) from None
