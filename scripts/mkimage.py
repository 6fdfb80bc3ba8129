#!/usr/bin/env python3
"""Build the deterministic 3-layer OCI test image used by the e2e tests and `make demo`.

Usage:
    python3 scripts/mkimage.py OUT_LAYOUT_DIR TAG [--busybox PATH] [--xattrs]

Writes an OCI image layout (oci-layout, index.json, blobs/sha256/...) into
OUT_LAYOUT_DIR (created if missing; an existing index.json is replaced) and
tags the manifest as TAG (annotation org.opencontainers.image.ref.name).
Push it with e.g.
    skopeo copy --dest-tls-verify=false oci:OUT_LAYOUT_DIR:TAG docker://127.0.0.1:5000/e2e/layers:1

On success a JSON summary is printed on stdout: manifest digest, config
digest, layer digests, diff_ids and chain_ids (the names containerd gives
the committed snapshots).

Only the Python standard library and a statically linked busybox
(Debian package busybox-static, /bin/busybox) are needed.

Layers (all entries have mtime 0, sorted, numeric owners, gzip mtime 0, so
the output is byte-for-byte reproducible):

  1. /bin/busybox + applet symlinks, /etc/passwd, /etc/group, /tmp (1777),
     /data/keep.txt, /data/gone.txt, /data/secret.txt (0640, 1000:1000),
     /opaque/old1.txt, /opaque/sub/old2.txt, /replaced/inner.txt
  2. whiteout data/.wh.gone.txt, opaque marker opaque/.wh..wh..opq plus
     opaque/new.txt, data/layer2.txt, symlink data/link-to-keep -> keep.txt,
     hardlink data/hard.txt -> data/layer2.txt
  3. regular file /replaced ("now a file") replacing the directory of layer 1,
     modified /data/keep.txt

With --pause only layer 1 is written and the command is `/bin/sleep
2147483647` (a pod sandbox image for the CRI tests). With --big-file MIB a
last layer holds /data/big.bin, MIB MiB of deterministic incompressible bytes
(its sha256 is listed under "files"), and /bin/sha256sum.

With --xattrs a 4th layer is added (layers 1-3 stay byte-identical):

  4. /data/rand-1.bin, /data/rand-2.bin, /data/rand-3.bin (64 KiB each of
     deterministic incompressible bytes, in this tar order), /bin/sha256sum
     (busybox applet), /xattr (directory with user.hologram=dir) and
     /xattr/cap-file (0755, user.hologram=test and a v2 security.capability
     granting cap_net_bind_service), xattrs written as PAX SCHILY.xattr.*
     records. The summary then also lists "files": path -> sha256 of the
     content for the files of layer 4.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

APPLETS = [
    "sh", "ls", "cat", "echo", "test", "[", "stat", "id", "wc", "find",
    "sleep", "readlink", "sort", "tr", "head", "tail", "true", "false",
    "mkdir", "rm", "touch", "env", "grep", "ln", "uname", "xargs", "cut",
]

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

# Expected file contents, shared with the Rust tests through the summary.
KEEP_V1 = b"keep v1\n"
KEEP_V3 = b"keep v3 (layer 3)\n"
GONE = b"this file is deleted by a whiteout in layer 2\n"
SECRET = b"mode 0640 owned by 1000:1000\n"
LAYER2 = b"added in layer 2\n"
NEW = b"new in layer 2 (opaque dir)\n"
NOW_A_FILE = b"now a file\n"


def _set_xattrs(ti, xattrs):
    """Extended attributes as PAX SCHILY.xattr.NAME records (binary values
    survive: tarfile writes them back with surrogateescape)."""
    for key, value in sorted((xattrs or {}).items()):
        ti.pax_headers["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")


class Layer:
    """Collects tar entries and renders them deterministically."""

    def __init__(self):
        self.entries = []  # (name, TarInfo, data-or-None)

    def _info(self, name, typ, mode, uid=0, gid=0):
        ti = tarfile.TarInfo(name)
        ti.type = typ
        ti.mode = mode
        ti.uid = uid
        ti.gid = gid
        ti.uname = ""
        ti.gname = ""
        ti.mtime = 0
        return ti

    def dir(self, name, mode=0o755, uid=0, gid=0, xattrs=None):
        ti = self._info(name, tarfile.DIRTYPE, mode, uid, gid)
        _set_xattrs(ti, xattrs)
        self.entries.append((name, ti, None))

    def file(self, name, data, mode=0o644, uid=0, gid=0, xattrs=None):
        ti = self._info(name, tarfile.REGTYPE, mode, uid, gid)
        ti.size = len(data)
        _set_xattrs(ti, xattrs)
        self.entries.append((name, ti, data))

    def symlink(self, name, target):
        ti = self._info(name, tarfile.SYMTYPE, 0o777)
        ti.linkname = target
        self.entries.append((name, ti, None))

    def hardlink(self, name, target):
        ti = self._info(name, tarfile.LNKTYPE, 0o644)
        ti.linkname = target
        self.entries.append((name, ti, None))

    def render(self):
        """Returns (uncompressed tar bytes, gzip bytes)."""
        raw = io.BytesIO()
        # Keep insertion order: callers add parents before children and
        # whiteouts before siblings (OCI image spec recommendation), and a
        # hardlink after its target.
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for _name, ti, data in self.entries:
                tf.addfile(ti, io.BytesIO(data) if data is not None else None)
        tar_bytes = raw.getvalue()
        gz = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=gz, mtime=0, compresslevel=6) as g:
            g.write(tar_bytes)
        return tar_bytes, gz.getvalue()


# struct vfs_cap_data, revision 2 (linux/capability.h): magic_etc =
# VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE, then {permitted, inheritable}
# x 2 as little-endian u32; permitted[0] = 1 << CAP_NET_BIND_SERVICE (10).
CAP_NET_BIND_SERVICE_V2 = (
    (0x02000000 | 0x1).to_bytes(4, "little")
    + (1 << 10).to_bytes(4, "little") + bytes(4)
    + bytes(8)
)
RAND_SIZE = 64 * 1024
CAP_FILE = b"#!/bin/sh\necho cap-file\n"


def pseudo_random(seed, size):
    """Deterministic incompressible bytes (SHA-256 in counter mode)."""
    out = bytearray()
    n = 0
    while len(out) < size:
        out += hashlib.sha256(seed + n.to_bytes(8, "big")).digest()
        n += 1
    return bytes(out[:size])


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build_layers(busybox):
    l1 = Layer()
    l1.dir("bin")
    l1.file("bin/busybox", busybox, mode=0o755)
    for applet in sorted(APPLETS):
        l1.symlink("bin/" + applet, "busybox")
    l1.dir("data")
    l1.file("data/gone.txt", GONE)
    l1.file("data/keep.txt", KEEP_V1)
    l1.file("data/secret.txt", SECRET, mode=0o640, uid=1000, gid=1000)
    l1.dir("etc")
    l1.file("etc/group", b"root:x:0:\n")
    l1.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    l1.dir("opaque")
    l1.file("opaque/old1.txt", b"old1 from layer 1\n")
    l1.dir("opaque/sub")
    l1.file("opaque/sub/old2.txt", b"old2 from layer 1\n")
    l1.dir("replaced")
    l1.file("replaced/inner.txt", b"inner file of a directory replaced in layer 3\n")
    l1.dir("root", mode=0o700)
    l1.dir("tmp", mode=0o1777)

    l2 = Layer()
    l2.dir("data")
    l2.file("data/.wh.gone.txt", b"", mode=0o600)
    l2.file("data/layer2.txt", LAYER2)
    l2.hardlink("data/hard.txt", "data/layer2.txt")
    l2.symlink("data/link-to-keep", "keep.txt")
    l2.dir("opaque")
    l2.file("opaque/.wh..wh..opq", b"", mode=0o600)
    l2.file("opaque/new.txt", NEW)

    # OCI image spec, "Changeset over existing files": unless both the entry
    # and the existing path are directories, the implementation removes the
    # existing path and recreates it from the entry. So a plain file entry
    # is the spec's way to replace the lower directory /replaced; no
    # whiteout is needed (and docker/buildkit emit none for this case).
    l3 = Layer()
    l3.dir("data")
    l3.file("data/keep.txt", KEEP_V3)
    l3.file("replaced", NOW_A_FILE)
    return [l1, l2, l3]


def build_xattr_layer():
    """Layer 4 of the --xattrs variant, and path -> sha256 of its files."""
    rand = {
        "data/rand-%d.bin" % i: pseudo_random(b"hologram-e2e rand-%d" % i, RAND_SIZE)
        for i in (1, 2, 3)
    }
    l4 = Layer()
    l4.dir("bin")
    l4.symlink("bin/sha256sum", "busybox")
    l4.dir("data")
    for name in sorted(rand):
        l4.file(name, rand[name])
    l4.dir("xattr", xattrs={"user.hologram": b"dir"})
    l4.file("xattr/cap-file", CAP_FILE, mode=0o755,
            xattrs={"user.hologram": b"test", "security.capability": CAP_NET_BIND_SERVICE_V2})
    files = {name: sha256(data) for name, data in rand.items()}
    files["xattr/cap-file"] = sha256(CAP_FILE)
    return l4, files


def write_blob(layout, data):
    digest = sha256(data)
    path = os.path.join(layout, "blobs", "sha256", digest.split(":", 1)[1])
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return digest


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def main(argv):
    ap = argparse.ArgumentParser(description="Build the hologram e2e OCI test image.")
    ap.add_argument("out", help="OCI layout directory to write")
    ap.add_argument("tag", help="tag (org.opencontainers.image.ref.name) of the manifest")
    ap.add_argument("--busybox", default="/bin/busybox",
                    help="statically linked busybox binary (default /bin/busybox)")
    ap.add_argument("--xattrs", action="store_true",
                    help="add a 4th layer with xattrs (user.*, security.capability) "
                         "and incompressible files")
    ap.add_argument("--big-file", type=int, default=0, metavar="MIB",
                    help="add a last layer with /data/big.bin, MIB MiB of incompressible "
                         "bytes (listed in the summary's \"files\")")
    ap.add_argument("--pause", action="store_true",
                    help="a pause image for CRI pod sandboxes: layer 1 only, and "
                         "/bin/sleep as its command")
    args = ap.parse_args(argv)

    try:
        with open(args.busybox, "rb") as f:
            busybox = f.read()
    except OSError as e:
        sys.exit(f"mkimage: cannot read busybox at {args.busybox}: {e} "
                 "(apt-get install busybox-static)")

    os.makedirs(os.path.join(args.out, "blobs", "sha256"), exist_ok=True)

    layers = build_layers(busybox)
    files = None
    if args.pause:
        layers = layers[:1]
    if args.xattrs:
        l4, files = build_xattr_layer()
        layers.append(l4)
    if args.big_file > 0:
        big = pseudo_random(b"hologram-e2e big", args.big_file << 20)
        lb = Layer()
        lb.dir("data")
        lb.file("data/big.bin", big)
        lb.dir("bin")
        lb.symlink("bin/sha256sum", "busybox")
        layers.append(lb)
        files = dict(files or {})
        files["data/big.bin"] = sha256(big)

    layer_descs, diff_ids = [], []
    for layer in layers:
        tar_bytes, gz_bytes = layer.render()
        diff_ids.append(sha256(tar_bytes))
        digest = write_blob(args.out, gz_bytes)
        layer_descs.append({"mediaType": MT_LAYER_GZIP, "digest": digest, "size": len(gz_bytes)})

    chain_ids = []
    for d in diff_ids:
        if not chain_ids:
            chain_ids.append(d)
        else:
            chain_ids.append(sha256(f"{chain_ids[-1]} {d}".encode()))

    config = {
        "created": "2024-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "Cmd": (["/bin/sleep", "2147483647"] if args.pause
                    else ["/bin/sh", "-c", "echo hello-from-hologram"]),
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": "2024-01-01T00:00:00Z", "created_by": "mkimage.py layer %d" % (i + 1)}
            for i in range(len(diff_ids))
        ],
    }
    config_bytes = canonical_json(config)
    config_digest = write_blob(args.out, config_bytes)

    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": layer_descs,
    }
    manifest_bytes = canonical_json(manifest)
    manifest_digest = write_blob(args.out, manifest_bytes)

    index = {
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [{
            "mediaType": MT_MANIFEST,
            "digest": manifest_digest,
            "size": len(manifest_bytes),
            "annotations": {"org.opencontainers.image.ref.name": args.tag},
            "platform": {"architecture": "amd64", "os": "linux"},
        }],
    }
    with open(os.path.join(args.out, "index.json"), "wb") as f:
        f.write(canonical_json(index))
    with open(os.path.join(args.out, "oci-layout"), "wb") as f:
        f.write(canonical_json({"imageLayoutVersion": "1.0.0"}))

    summary = {
        "manifest_digest": manifest_digest,
        "config_digest": config_digest,
        "layers": [d["digest"] for d in layer_descs],
        "diff_ids": diff_ids,
        "chain_ids": chain_ids,
    }
    if files is not None:
        summary["files"] = files
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
