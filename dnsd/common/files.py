"""Small file helpers shared by dnsd and probes: atomic JSON writes for state that must survive restarts."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


def write_json_atomically(path: str | Path, data: object) -> None:
    """Write to a temporary file beside `path`, fsync, rename: readers see the old or the new, never half."""
    write_bytes_atomically(path, json.dumps(data, indent=1, sort_keys=True).encode())


def write_bytes_atomically(path: str | Path, data: bytes, durable: bool = True) -> None:
    """write_json_atomically for bytes; durable=False skips the fsync, for a file that must outlive
    the process that wrote it but not the machine (cheap enough to write every second)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
