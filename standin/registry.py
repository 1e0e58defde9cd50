"""A stand-in replica's registry: its content in memory (Storage: blobs, manifests, open uploads, bounded) and the distribution API over it (/v2 blob uploads, blobs, manifests); writes answer 507 while the replica is readonly.

Blobs and manifests survive mode changes (refuse included): the storage belongs to the replica, not
to its listeners.
"""
from __future__ import annotations

import hashlib
import re
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from standin.faults import Faults
from standin.responses import API_VERSION, oci_error

MAX_REQUEST = 32 * 1024 * 1024  # largest request body a replica accepts
MAX_STORED = 256 * 1024 * 1024  # total blob + manifest bytes per replica; beyond: 507
MAX_UPLOADS = 1024  # open uploads per replica; the oldest is dropped beyond

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPO_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


@dataclass(slots=True)
class Storage:
    """A replica's registry content: blobs per (repo, digest), manifests per (repo, tag or digest)."""

    blobs: dict[tuple[str, str], bytes] = field(default_factory=dict)
    manifests: dict[tuple[str, str], tuple[bytes, str, str]] = field(default_factory=dict)  # body, type, digest
    uploads: OrderedDict[str, tuple[str, bytearray]] = field(default_factory=OrderedDict)
    stored: int = 0

    def room_for(self, size: int) -> bool:
        return self.stored + size <= MAX_STORED

    def put_blob(self, repo: str, digest: str, data: bytes) -> None:
        old = self.blobs.pop((repo, digest), None)
        self.stored += len(data) - (len(old) if old is not None else 0)
        self.blobs[(repo, digest)] = data

    def delete_blob(self, repo: str, digest: str) -> bool:
        old = self.blobs.pop((repo, digest), None)
        if old is not None:
            self.stored -= len(old)
        return old is not None

    def new_upload(self, repo: str) -> str:
        while len(self.uploads) >= MAX_UPLOADS:
            self.uploads.popitem(last=False)
        upload_id = uuid.uuid4().hex
        self.uploads[upload_id] = (repo, bytearray())
        return upload_id


def _full(faults: Faults) -> web.Response:
    return oci_error(507, "UNKNOWN", f"filesystem: {faults.reason}")


def _digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _upload_location(name: str, upload_id: str) -> str:
    return f"/v2/{name}/blobs/uploads/{upload_id}"


async def _upload_start(storage: Storage, faults: Faults, request: web.Request, name: str) -> web.Response:
    if request.method != "POST":
        return oci_error(405, "UNSUPPORTED", "method not allowed")
    digest = request.query.get("digest")
    if digest is not None:  # monolithic upload in one POST
        data = await request.read()
        return _finish_blob(storage, faults, name, digest, data)
    upload_id = storage.new_upload(name)
    return web.Response(status=202, headers={**API_VERSION, "Location": _upload_location(name, upload_id),
                                             "Range": "0-0", "Docker-Upload-UUID": upload_id,
                                             "Content-Length": "0"})


def _finish_blob(storage: Storage, faults: Faults, name: str, digest: str, data: bytes) -> web.Response:
    if faults.mode == "readonly":
        return _full(faults)
    if not DIGEST.fullmatch(digest):
        return oci_error(400, "DIGEST_INVALID", "only sha256:<64 hex> digests are supported", {"digest": digest})
    if _digest_of(data) != digest:
        return oci_error(400, "DIGEST_INVALID", "provided digest did not match uploaded content",
                         {"digest": digest, "actual": _digest_of(data)})
    if not storage.room_for(len(data)):
        return oci_error(507, "UNKNOWN", "filesystem: storage full")
    storage.put_blob(name, digest, data)
    return web.Response(status=201, headers={**API_VERSION, "Location": f"/v2/{name}/blobs/{digest}",
                                             "Docker-Content-Digest": digest, "Content-Length": "0"})


async def _upload(storage: Storage, faults: Faults, request: web.Request, name: str, id: str) -> web.Response:
    upload = storage.uploads.get(id)
    if upload is None or upload[0] != name:
        return oci_error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry")
    buffer = upload[1]
    if request.method == "DELETE":
        del storage.uploads[id]
        return web.Response(status=204, headers=dict(API_VERSION))
    if request.method == "GET":
        return web.Response(status=204, headers={**API_VERSION, "Location": _upload_location(name, id),
                                                 "Range": f"0-{max(len(buffer) - 1, 0)}", "Docker-Upload-UUID": id})
    if request.method not in ("PATCH", "PUT"):
        return oci_error(405, "UNSUPPORTED", "method not allowed")
    if faults.mode == "readonly":
        return _full(faults)
    chunk = await request.read()
    if len(buffer) + len(chunk) > MAX_REQUEST:
        return oci_error(413, "SIZE_INVALID", "upload too large for the stand-in")
    buffer += chunk
    if request.method == "PATCH":
        return web.Response(status=202, headers={**API_VERSION, "Location": _upload_location(name, id),
                                                 "Range": f"0-{max(len(buffer) - 1, 0)}", "Docker-Upload-UUID": id})
    digest = request.query.get("digest")
    if digest is None:
        return oci_error(400, "DIGEST_INVALID", "digest parameter missing")
    response = _finish_blob(storage, faults, name, digest, bytes(buffer))
    if response.status == 201:
        storage.uploads.pop(id, None)
    return response


async def _blob(storage: Storage, faults: Faults, request: web.Request, name: str, digest: str) -> web.Response:
    if request.method in ("GET", "HEAD"):
        data = storage.blobs.get((name, digest))
        if data is None:
            return oci_error(404, "BLOB_UNKNOWN", "blob unknown to registry", {"digest": digest})
        return web.Response(body=data, content_type="application/octet-stream",
                            headers={**API_VERSION, "Docker-Content-Digest": digest})
    if request.method == "DELETE":
        if faults.mode == "readonly":
            return _full(faults)
        if not storage.delete_blob(name, digest):
            return oci_error(404, "BLOB_UNKNOWN", "blob unknown to registry", {"digest": digest})
        return web.Response(status=202, headers={**API_VERSION, "Content-Length": "0"})
    return oci_error(405, "UNSUPPORTED", "method not allowed")


async def _manifest(storage: Storage, faults: Faults, request: web.Request, name: str, ref: str) -> web.Response:
    if not (DIGEST.fullmatch(ref) or TAG.fullmatch(ref)):
        return oci_error(400, "MANIFEST_INVALID", "invalid tag or digest", {"reference": ref})
    if request.method in ("GET", "HEAD"):
        stored = storage.manifests.get((name, ref))
        if stored is None:
            return oci_error(404, "MANIFEST_UNKNOWN", "manifest unknown", {"reference": ref})
        body, content_type, digest = stored
        return web.Response(body=body, headers={**API_VERSION, "Content-Type": content_type,
                                                "Docker-Content-Digest": digest})
    if request.method == "PUT":
        if faults.mode == "readonly":
            return _full(faults)
        body = await request.read()
        digest = _digest_of(body)
        if ref.startswith("sha256:") and ref != digest:
            return oci_error(400, "DIGEST_INVALID", "manifest digest did not match", {"digest": ref})
        if not storage.room_for(len(body)):
            return oci_error(507, "UNKNOWN", "filesystem: storage full")
        content_type = request.headers.get("Content-Type") or "application/vnd.oci.image.manifest.v1+json"
        for key in {(name, ref), (name, digest)}:
            old = storage.manifests.get(key)
            storage.stored += len(body) - (len(old[0]) if old else 0)
            storage.manifests[key] = (body, content_type, digest)
        return web.Response(status=201, headers={**API_VERSION, "Location": f"/v2/{name}/manifests/{digest}",
                                                 "Docker-Content-Digest": digest, "Content-Length": "0"})
    if request.method == "DELETE":
        if faults.mode == "readonly":
            return _full(faults)
        stored = storage.manifests.get((name, ref))
        if stored is None:
            return oci_error(404, "MANIFEST_UNKNOWN", "manifest unknown", {"reference": ref})
        digest = stored[2]
        for key in [k for k, v in storage.manifests.items() if k[0] == name and v[2] == digest]:
            storage.stored -= len(storage.manifests.pop(key)[0])
        return web.Response(status=202, headers={**API_VERSION, "Content-Length": "0"})
    return oci_error(405, "UNSUPPORTED", "method not allowed")


Handler = Callable[..., Awaitable[web.Response]]  # (storage, faults, request, **the route's groups)
_ROUTES: tuple[tuple[re.Pattern[str], Handler], ...] = (  # order matters: uploads before blobs
    (re.compile(r"(?P<name>.+)/blobs/uploads/?"), _upload_start),
    (re.compile(r"(?P<name>.+)/blobs/uploads/(?P<id>[^/]+)"), _upload),
    (re.compile(r"(?P<name>.+)/blobs/(?P<digest>[^/]+)"), _blob),
    (re.compile(r"(?P<name>.+)/manifests/(?P<ref>[^/]+)"), _manifest),
)


def route(tail: str) -> tuple[Handler, dict[str, Any]] | None:
    """The handler for /v2/<tail> and its arguments from the path (name first of all), or None."""
    for pattern, handler in _ROUTES:
        match = pattern.fullmatch(tail)
        if match:
            return handler, match.groupdict()
    return None
