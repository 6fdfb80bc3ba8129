#!/usr/bin/env python3
"""Build the small source layer used for the eStargz fixtures.

Usage: python3 mklayer.py OUT_LAYOUT_DIR

Writes `allkinds.tar` (the uncompressed layer) next to an OCI image layout in
OUT_LAYOUT_DIR holding one image (tag `src`) whose only layer is that tar,
gzip-compressed. `gen-fixtures.sh` converts that image with `ctr-remote` and
copies the resulting eStargz blobs into this directory.

The layer has every tar entry type eStargz knows (dir, reg, symlink, hardlink,
char, block, fifo), xattrs (user.* and a binary security.capability), a long
name, a non-ASCII name, setuid/sticky modes, a root "./" entry, implied
directories, an OCI whiteout and an opaque marker, an empty file, and a
~70 KB file that spans several chunks at a 16 KiB chunk size. Everything is
deterministic (fixed mtimes, numeric owners, gzip mtime 0).
"""

import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

MTIME = 1700000000


def info(name, typ, mode, uid=0, gid=0, size=0):
    ti = tarfile.TarInfo(name)
    ti.type = typ
    ti.mode = mode
    ti.uid = uid
    ti.gid = gid
    ti.uname = ""
    ti.gname = ""
    ti.mtime = MTIME
    ti.size = size
    return ti


def big_content():
    # Part text (compressible), part LCG noise (not), 70000 bytes in total:
    # four full 16 KiB chunks plus a partial one.
    out = bytearray()
    i = 0
    while len(out) < 40000:
        out += b"line %06d of the big file, padding padding padding\n" % i
        i += 1
    x = 12345
    while len(out) < 70000:
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        out.append((x >> 16) & 0xFF)
    return bytes(out[:70000])


def build_tar():
    buf = io.BytesIO()
    tf = tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT)

    def add(ti, data=None, pax=None):
        if pax:
            ti.pax_headers = pax
        if data is not None:
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        else:
            tf.addfile(ti)

    add(info("./", tarfile.DIRTYPE, 0o755))
    add(info("etc/", tarfile.DIRTYPE, 0o755))
    add(info("etc/hostname", tarfile.REGTYPE, 0o644), b"fixture\n")
    add(info("etc/empty", tarfile.REGTYPE, 0o600))
    add(info("bin/", tarfile.DIRTYPE, 0o755))
    # v2 file capability: cap_net_bind_service (bit 10) permitted + effective.
    cap = bytes([0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00] + [0] * 12)
    add(
        info("bin/tool", tarfile.REGTYPE, 0o755),
        b"#!/bin/sh\necho tool\n",
        pax={"SCHILY.xattr.security.capability": cap.decode("ascii")},
    )
    add(info("bin/suid", tarfile.REGTYPE, 0o4755), b"setuid\n")
    add(info("tmp/", tarfile.DIRTYPE, 0o1777))
    add(
        info("data/", tarfile.DIRTYPE, 0o750, 1000, 1000),
        pax={"SCHILY.xattr.user.comment": "hello xattr"},
    )
    add(info("data/big.bin", tarfile.REGTYPE, 0o644, 1000, 1000), big_content())
    ti = info("data/link-to-big", tarfile.SYMTYPE, 0o777)
    ti.linkname = "big.bin"
    add(ti)
    ti = info("data/hard.bin", tarfile.LNKTYPE, 0o644, 1000, 1000)
    ti.linkname = "data/big.bin"
    add(ti)
    add(info("data/\u00fcn\u00efc\u00f6d\u00e9.txt", tarfile.REGTYPE, 0o644), "caf\u00e9\n".encode())
    add(info("dev/", tarfile.DIRTYPE, 0o755))
    ti = info("dev/null", tarfile.CHRTYPE, 0o666)
    ti.devmajor, ti.devminor = 1, 3
    add(ti)
    ti = info("dev/sda", tarfile.BLKTYPE, 0o660, 0, 6)
    ti.devmajor, ti.devminor = 8, 0
    add(ti)
    add(info("dev/fifo", tarfile.FIFOTYPE, 0o600))
    add(info("old/", tarfile.DIRTYPE, 0o755))
    add(info("old/.wh.removed", tarfile.REGTYPE, 0o644))
    add(info("opq/", tarfile.DIRTYPE, 0o755))
    add(info("opq/.wh..wh..opq", tarfile.REGTYPE, 0o644))
    add(info("opq/new.txt", tarfile.REGTYPE, 0o644), b"new\n")
    add(info("implied/a/b/file.txt", tarfile.REGTYPE, 0o644), b"implied parents\n")
    add(info("long/" + "x" * 120 + ".txt", tarfile.REGTYPE, 0o644), b"long name\n")
    tf.close()
    return buf.getvalue()


def write_blob(layout, data):
    d = hashlib.sha256(data).hexdigest()
    path = os.path.join(layout, "blobs", "sha256", d)
    with open(path, "wb") as f:
        f.write(data)
    return "sha256:" + d


def main():
    out = sys.argv[1]
    os.makedirs(os.path.join(out, "blobs", "sha256"), exist_ok=True)
    raw = build_tar()
    with open(os.path.join(out, "allkinds.tar"), "wb") as f:
        f.write(raw)
    gz = gzip.compress(raw, mtime=0)
    layer = write_blob(out, gz)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
            "config": {},
        },
        sort_keys=True,
    ).encode()
    cfg = write_blob(out, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": len(config)},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": len(gz)}
            ],
        },
        sort_keys=True,
    ).encode()
    man = write_blob(out, manifest)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": man,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "src"},
            }
        ],
    }
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    print(json.dumps({"manifest": man, "layer": layer, "layer_size": len(gz)}))


if __name__ == "__main__":
    main()
