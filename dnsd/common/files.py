"""Small file helpers shared by dnsd and probes: atomic writes for state that must survive restarts
(the text built by the caller's thread, the write and fsync possibly in another)."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


def json_text(data: object) -> str:
    """The text write_json_atomically writes for `data`."""
    return json.dumps(data, indent=1, sort_keys=True)


def write_json_atomically(path: str | Path, data: object) -> None:
    """Write to a temporary file beside `path`, fsync, rename: readers see the old or the new, never half."""
    write_text_atomically(path, json_text(data))


def write_text_atomically(path: str | Path, text: str) -> None:
    """write_json_atomically for text already built (no Python objects touched: safe in a thread,
    where the fsync, milliseconds on a disk, holds no event loop up)."""
    write_bytes_atomically(path, text.encode())


def write_bytes_atomically(path: str | Path, data: bytes, durable: bool = True) -> None:
    """The atomic write for bytes; durable=False skips the fsync, for a file that must outlive the
    process that wrote it but not the machine (cheap enough to write every second)."""
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
