#!/usr/bin/env python3
"""Writes an OCI image archive that `ctr images import` takes, from uncompressed layer tars.

Usage: oci-image.py OUT.tar NAME CMD LAYER.tar [LAYER.tar ...]
  NAME  the image's name, stored as the io.containerd.image.name annotation (used verbatim)
  CMD   the image's command, a JSON list, e.g. '["/bin/sh"]'
Layers are stored uncompressed (application/vnd.oci.image.layer.v1.tar), bottom first.
"""
import hashlib
import io
import json
import os
import platform
import sys
import tarfile


def file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def blob_digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def main(argv):
    if len(argv) < 5:
        sys.exit(__doc__)
    out, name, cmd, layers = argv[1], argv[2], json.loads(argv[3]), argv[4:]
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    diff_ids = [file_digest(layer) for layer in layers]
    config = json.dumps({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": blob_digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d,
                    "size": os.path.getsize(layer)} for d, layer in zip(diff_ids, layers)],
    }).encode()
    index = json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": blob_digest(manifest), "size": len(manifest),
                       "annotations": {"io.containerd.image.name": name}}],
    }).encode()
    with tarfile.open(out, "w") as archive:
        def add_bytes(path, data):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
        add_bytes("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add_bytes("index.json", index)
        add_bytes("blobs/sha256/" + blob_digest(manifest)[7:], manifest)
        add_bytes("blobs/sha256/" + blob_digest(config)[7:], config)
        for digest, layer in zip(diff_ids, layers):
            archive.add(layer, arcname="blobs/sha256/" + digest[7:])


if __name__ == "__main__":
    main(sys.argv)
