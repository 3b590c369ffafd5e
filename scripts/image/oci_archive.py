#!/usr/bin/env python3
"""Writes a single-layer OCI image archive from a list of files, without a container daemon.

    oci_archive.py --name REF --out ARCHIVE --files LIST --config CONFIG.json

LIST has one "SOURCE<TAB>PATH-IN-IMAGE" per line (a directory path ending in "/" with no source
makes an empty directory, world-writable when it is /tmp). CONFIG is the OCI image config's
`config` object (User, Entrypoint, Env, ...). The archive is an OCI image layout in a tar, with
`index.json` naming the image, as `ctr images import`, `kind load image-archive`, `k3s ctr images
import`, skopeo and podman read it. Reproducible: fixed timestamps and owners, sorted entries.
Prints the image's size (compressed layer and uncompressed) as JSON on stdout.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import tarfile

EPOCH = 0  # every timestamp in the image: the same inputs give the same digests


def layer_tar(entries):
    """An uncompressed tar of the layer: parents first, files with their mode, owned by root."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = set()
        for _, dest in entries:
            parts = dest.strip("/").split("/")
            for i in range(1, len(parts)):
                dirs.add("/".join(parts[:i]))
            if dest.endswith("/"):
                dirs.add(dest.strip("/"))
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            info.mtime = EPOCH
            tar.addfile(info)
        for source, dest in sorted((e for e in entries if not e[1].endswith("/")), key=lambda e: e[1]):
            info = tarfile.TarInfo(dest.strip("/"))
            info.mtime = EPOCH
            stat = os.stat(source)  # follows links: the image holds the file itself
            info.mode = 0o755 if stat.st_mode & 0o111 else 0o644
            info.size = stat.st_size
            with open(source, "rb") as f:
                tar.addfile(info, f)
    return buffer.getvalue()


def blob(tar, data):
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    info.mtime = EPOCH
    tar.addfile(info, io.BytesIO(data))
    return {"digest": f"sha256:{digest}", "size": len(data)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="image reference, e.g. ghcr.io/x/y:1.0")
    parser.add_argument("--out", required=True)
    parser.add_argument("--files", required=True)
    parser.add_argument("--config", required=True)
    args = parser.parse_args()

    entries = []
    with open(args.files) as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                source, dest = line.split("\t")
                entries.append((source, dest))
    with open(args.config) as f:
        config = json.load(f)

    layer = layer_tar(entries)
    compressed = gzip.compress(layer, compresslevel=6, mtime=EPOCH)
    image_config = {
        "created": "1970-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "scripts/images"}],
    }
    tmp = args.out + ".tmp"
    with tarfile.open(tmp, "w") as tar:
        layer_desc = blob(tar, compressed)
        config_desc = blob(tar, json.dumps(image_config, sort_keys=True).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer_desc}],
        }
        manifest_desc = blob(tar, json.dumps(manifest, sort_keys=True).encode())
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest_desc,
                "annotations": {
                    "io.containerd.image.name": args.name,
                    "org.opencontainers.image.ref.name": args.name.rsplit(":", 1)[-1],
                },
            }],
        }
        for name, data in [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                           ("index.json", json.dumps(index, sort_keys=True).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = EPOCH
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, args.out)
    print(json.dumps({"image": args.name, "layer_bytes": len(layer), "compressed_bytes": len(compressed),
                      "digest": manifest_desc["digest"]}))


if __name__ == "__main__":
    main()
