"""Small file helpers shared by dnsd and probes: atomic JSON writes for state that must survive restarts."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


def write_json_atomically(path: str | Path, data: object, durable: bool = True) -> None:
    """Write to a temporary file beside `path`, fsync, rename: readers see the old or the new, never half.
    durable=False skips the fsync: for files that need only outlive the process, not the machine."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
