"""A tiny OCI image written as an OCI image layout, built here so a drill never downloads anything.

Layout (OCI image-layout spec 1.0): `oci-layout`, `index.json`, `blobs/sha256/<hex>`. The image
has one gzip layer (a couple of small files), a config whose `rootfs.diff_ids` is the sha256 of
the uncompressed tar, and a manifest pointing at both. Everything is deterministic (fixed mtimes,
owners and gzip header), so the same input gives the same digests on every run.

The drill pushes every replica the same layer and config (geo-replicated content), and a manifest
that differs only by an annotation naming the replica: a pulled manifest says which replica served
the pull, while a client whose DNS answer changes between the manifest and the blobs still gets
identical blobs, as it would from real replicas.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
REPLICA_LABEL = "io.geotm.drill.replica"
EPOCH = 1_700_000_000  # fixed mtime: same content, same digest


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True, slots=True)
class BuiltImage:
    layout: Path
    tag: str
    manifest: Descriptor
    config: Descriptor
    layer: Descriptor
    diff_id: str


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def layer_tar(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar of `files` (path -> content), directories implied, fixed metadata."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories = sorted({str(Path(p).parent) for p in files if str(Path(p).parent) != "."})
        for directory in directories:
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
            tar.addfile(info)
        for path in sorted(files):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(files[path]), 0o644, EPOCH
            tar.addfile(info, io.BytesIO(files[path]))
    return buffer.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def build_layout(layout: Path, tag: str = "1", labels: dict[str, str] | None = None,
                 files: dict[str, bytes] | None = None, annotations: dict[str, str] | None = None) -> BuiltImage:
    """Write an OCI image layout with one image tagged `tag` into directory `layout` (created)."""
    files = files if files is not None else {
        "etc/geotm-drill/hello.txt": b"hello from a geotm failover drill\n",
        "etc/geotm-drill/README": b"A tiny image built by `geotm drill`; it has no executable.\n",
    }
    tar = layer_tar(files)
    layer_blob = gzip_bytes(tar)
    diff_id = sha256_digest(tar)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": {"Labels": dict(sorted((labels or {}).items())), "Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "geotm drill (drills/image.py)"}],
    }
    config_blob = canonical_json(config)
    layer = Descriptor(LAYER_TYPE, sha256_digest(layer_blob), len(layer_blob))
    config_desc = Descriptor(CONFIG_TYPE, sha256_digest(config_blob), len(config_blob))
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "config": config_desc.to_json(),
                "layers": [layer.to_json()]}
    if annotations:
        manifest["annotations"] = dict(sorted(annotations.items()))
    manifest_blob = canonical_json(manifest)
    manifest_desc = Descriptor(MANIFEST_TYPE, sha256_digest(manifest_blob), len(manifest_blob))
    index = {"schemaVersion": 2, "mediaType": INDEX_TYPE,
             "manifests": [{**manifest_desc.to_json(), "annotations": {REF_NAME: tag}}]}

    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    for blob in (layer_blob, config_blob, manifest_blob):
        (blobs / hashlib.sha256(blob).hexdigest()).write_bytes(blob)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_bytes(canonical_json(index))
    return BuiltImage(layout, tag, manifest_desc, config_desc, layer, diff_id)


class LayoutError(ValueError):
    pass


def read_blob(layout: Path, digest: str, size: int | None = None) -> bytes:
    """A blob of the layout, checked against its digest (and size when given)."""
    algorithm, _, hexdigest = digest.partition(":")
    if algorithm != "sha256" or len(hexdigest) != 64:
        raise LayoutError(f"unsupported digest {digest!r}")
    try:
        data = (layout / "blobs" / "sha256" / hexdigest).read_bytes()
    except OSError as err:
        raise LayoutError(f"blob {digest} missing: {err}") from None
    if sha256_digest(data) != digest:
        raise LayoutError(f"blob {digest} does not match its digest")
    if size is not None and len(data) != size:
        raise LayoutError(f"blob {digest} is {len(data)} bytes, descriptor says {size}")
    return data


def image_config(layout: Path, tag: str | None = None) -> dict:
    """The config JSON of the layout's image, after verifying it all (see inspect_layout)."""
    return inspect_layout(layout, tag)[1]


def inspect_layout(layout: Path, tag: str | None = None) -> tuple[dict, dict]:
    """Verify the layout's image (every digest, size and diff_id); return (manifest, config).
    With `tag` None, the layout must hold exactly one image (what `skopeo copy` to a fresh layout
    writes)."""
    try:
        index = json.loads((layout / "index.json").read_text())
    except (OSError, ValueError) as err:
        raise LayoutError(f"index.json unreadable: {err}") from None
    entries = index.get("manifests") or []
    if tag is not None:
        entries = [m for m in entries if (m.get("annotations") or {}).get(REF_NAME) == tag]
    if len(entries) != 1:
        raise LayoutError(f"expected one image{f' tagged {tag!r}' if tag else ''}, found {len(entries)}")
    manifest = json.loads(read_blob(layout, entries[0]["digest"], entries[0].get("size")))
    config_desc = manifest["config"]
    config = json.loads(read_blob(layout, config_desc["digest"], config_desc.get("size")))
    layers = manifest.get("layers") or []
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    if len(layers) != len(diff_ids):
        raise LayoutError(f"{len(layers)} layers but {len(diff_ids)} diff_ids")
    for layer, diff_id in zip(layers, diff_ids):
        blob = read_blob(layout, layer["digest"], layer.get("size"))
        tar = gzip.decompress(blob) if layer["mediaType"].endswith("+gzip") or blob[:2] == b"\x1f\x8b" else blob
        if sha256_digest(tar) != diff_id:
            raise LayoutError(f"layer {layer['digest']} does not match diff_id {diff_id}")
    return manifest, config


def replica_of(manifest: dict) -> str | None:
    """Which replica served a pulled manifest: the drill pushes each replica its own annotation."""
    return (manifest.get("annotations") or {}).get(REPLICA_LABEL)
