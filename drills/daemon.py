"""The drill's second registry client: a real docker daemon (dockerd 20.10 and later) pulling through
its Engine API. Its only resolver is dnsd and it trusts the drill CA through /etc/docker/certs.d
(scripts/compose-drill starts it so, in a network namespace on the drill network: drills.engine).

Which replica served a pull: each replica holds a manifest of its own (drills.image: same layer and
config, an annotation naming the replica), so the digest the daemon reports names it. Every pull
removes the image afterwards, so the next one fetches manifest and blobs again, as skopeo's do.
"""
from __future__ import annotations

import time

from drills.dockerapi import Docker, DockerError
from drills.labconfig import GLOBAL_NAME, REPOSITORY, TAG
from drills.pulls import PULL_TIMEOUT, Pull, Puller


class DaemonClient(Puller):
    """`digests`: manifest digest -> replica, as the skopeo client pushed them (Client.digests)."""
    name = "dockerd"
    period = 0.5
    max_inflight = 1  # the daemon joins concurrent pulls of one name into one: keep them apart

    def __init__(self, socket_path: str, digests: dict[str, str]):
        super().__init__()
        self.socket_path = socket_path
        self.docker = Docker(socket_path, timeout=PULL_TIMEOUT)
        self.digests = digests

    def version(self) -> str:
        """The daemon's version (raises DockerError or OSError when it does not answer)."""
        return str(self.docker.request("GET", "/version").get("Version", "?"))

    def pull(self, host: str = GLOBAL_NAME, record: bool = True) -> Pull:
        item = self._recorded(host, record)
        reference = f"{host}/{REPOSITORY}:{TAG}"
        try:
            digest = self.docker.pull(reference, timeout=PULL_TIMEOUT)
            item.replica = self.digests.get(digest)
            item.ok = item.replica is not None
            if not item.ok:
                item.error = f"pulled a manifest no replica was given: {digest}"
        except (DockerError, OSError) as err:
            item.ok, item.error = False, str(err)[-300:]
        finally:
            item.ended = time.time()
            try:
                self.docker.remove_image(reference)
            except (DockerError, OSError):
                pass
        return item
