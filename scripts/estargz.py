#!/usr/bin/env python3
"""Hand-made eStargz layers for the lazy-pulling e2e tests, and a TOC reader.

Usage:
    python3 scripts/estargz.py toc BLOB
        Prints {"toc_offset": N, "blob_size": N, "toc": <stargz.index.json>}
        for an eStargz blob file (footer parsed, TOC member gunzipped).

    python3 scripts/estargz.py toc --region FILE
        The same for a file holding only the TOC gzip member (what the
        daemon keeps in <root>/cache/tocs/); toc_offset and blob_size are null.

    python3 scripts/estargz.py hostile OUT_LAYOUT_DIR TAG --variant VARIANT [--busybox PATH]
        Writes a 2-layer OCI image layout, both layers eStargz written by this
        script (independently of the converters under test), with the
        TOC-digest and uncompressed-size annotations a lazy snapshotter reads:

        layer 1  valid: /bin/busybox + applets, /etc/passwd, /tmp
        layer 2  VARIANT "escape": /good.txt and a file named "../etc/evil"
                 (in the tar and in the TOC) — a TOC no lazy snapshotter
                 may serve;
                 VARIANT "bad-digest": /good.txt and /bad.txt whose TOC
                 chunkDigest is the digest of other bytes — a valid TOC
                 whose chunk cannot verify;
                 VARIANT "plain": /good.txt only (with --secret TEXT also
                 /secret.txt).

        Options that make an image hostile in other ways:
          --passwd TEXT          /etc/passwd of layer 1 (tells images apart)
          --good TEXT            /good.txt of layer 2
          --layers 1             only layer 1
          --claim-diff-id I=D    the config claims diff ID D for layer I
                                 (chain IDs follow the claim)
          --annotate I:KEY=VAL   sets an annotation of layer I's descriptor
                                 (repeatable; overrides the TOC digest too)
          --extra-entries N      N more (empty directory) entries in layer
                                 2's TOC (a huge index from a tiny blob)

        Prints a JSON summary: manifest_digest, layers, toc_digests, diff_ids,
        chain_ids, and "files": path -> content.

Layout written per layer (as the eStargz spec and the reference writer do):
every regular file's payload starts a new gzip member (its tar header ends
the previous member); the TOC member holds the stargz.index.json tar entry
and the two zero blocks that end the tar; the 51-byte footer follows. All
entries have mtime 0 and numeric owners; gzip mtime 0, so the output is
reproducible.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

FOOTER_SIZE = 51
TOC_NAME = "stargz.index.json"
TOC_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
APPLETS = ["sh", "cat", "ls", "echo", "test", "stat", "sleep", "true"]


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def gz(data):
    return gzip.compress(data, compresslevel=9, mtime=0)


def footer(toc_offset):
    f = bytearray([0x1F, 0x8B, 0x08, 0x04, 0, 0, 0, 0, 0, 0xFF])
    f += (26).to_bytes(2, "little") + b"SG" + (22).to_bytes(2, "little")
    f += ("%016x" % toc_offset).encode() + b"STARGZ"
    f += bytes([0x01, 0x00, 0x00, 0xFF, 0xFF]) + bytes(8)
    assert len(f) == FOOTER_SIZE
    return bytes(f)


def tarinfo(name, typ, mode, size=0, linkname=""):
    ti = tarfile.TarInfo(name)
    ti.type = typ
    ti.mode = mode
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mtime = 0
    ti.size = size
    ti.linkname = linkname
    return ti


class EstargzWriter:
    """Collects entries; `finish` returns (blob, diff_id, toc_digest, size)."""

    def __init__(self):
        self.blob = bytearray()
        self.member = bytearray()  # uncompressed bytes of the open member
        self.raw = bytearray()  # the whole uncompressed tar stream
        self.entries = []

    def _close_member(self):
        if self.member:
            self.blob += gz(bytes(self.member))
            self.raw += self.member
            self.member = bytearray()

    def _header(self, ti):
        self.member += ti.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8",
                                errors="surrogateescape")

    def dir(self, name, mode=0o755):
        self._header(tarinfo(name, tarfile.DIRTYPE, mode))
        self.entries.append({"name": name, "type": "dir", "mode": mode})

    def symlink(self, name, target):
        self._header(tarinfo(name, tarfile.SYMTYPE, 0o777, linkname=target))
        self.entries.append({"name": name, "type": "symlink", "linkName": target,
                             "mode": 0o777})

    def file(self, name, data, mode=0o644, chunk_digest=None):
        self._header(tarinfo(name, tarfile.REGTYPE, mode, size=len(data)))
        entry = {"name": name, "type": "reg", "mode": mode, "size": len(data)}
        if data:
            self._close_member()
            entry["offset"] = len(self.blob)
            entry["digest"] = sha256(data)
            entry["chunkDigest"] = chunk_digest or sha256(data)
            pad = (-len(data)) % 512
            self.member += data + bytes(pad)
        self.entries.append(entry)

    def finish(self):
        self._close_member()
        toc_offset = len(self.blob)
        toc_json = json.dumps({"version": 1, "entries": self.entries},
                              separators=(",", ":")).encode()
        toc_tar = tarinfo(TOC_NAME, tarfile.REGTYPE, 0o644, size=len(toc_json)).tobuf(
            format=tarfile.PAX_FORMAT)
        toc_tar += toc_json + bytes((-len(toc_json)) % 512) + bytes(1024)
        self.blob += gz(toc_tar) + footer(toc_offset)
        self.raw += toc_tar
        raw = bytes(self.raw)
        return {
            "blob": bytes(self.blob),
            "diff_id": sha256(raw),
            "toc_digest": sha256(toc_json),
            "uncompressed_size": len(raw),
        }


def base_layer(busybox, passwd=b"root:x:0:0:root:/root:/bin/sh\n"):
    w = EstargzWriter()
    w.dir("bin/")
    w.file("bin/busybox", busybox, mode=0o755)
    for a in sorted(APPLETS):
        w.symlink("bin/" + a, "busybox")
    w.dir("etc/")
    w.file("etc/passwd", passwd)
    w.dir("tmp/", mode=0o1777)
    return w.finish()


GOOD = b"good file of the hostile layer\n"
BAD = b"this file's TOC chunkDigest is wrong\n"
EVIL = b"escaped the layer root\n"


def hostile_layer(variant, good=GOOD, secret=None, extra_entries=0):
    w = EstargzWriter()
    w.file("good.txt", good)
    files = {"good.txt": good.decode()}
    for i in range(extra_entries):
        # Minimal TOC entries (no tar entry): only the index grows.
        w.entries.append({"name": "x%d/" % i, "type": "dir"})
    if variant == "plain":
        if secret is not None:
            w.file("secret.txt", secret)
            files["secret.txt"] = secret.decode()
    elif variant == "escape":
        w.file("../etc/evil", EVIL)
        files["../etc/evil"] = EVIL.decode()
    elif variant == "bad-digest":
        w.file("bad.txt", BAD, chunk_digest=sha256(b"not the content of bad.txt"))
        files["bad.txt"] = BAD.decode()
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    return w.finish(), files


def write_blob(layout, data):
    digest = sha256(data)
    with open(os.path.join(layout, "blobs", "sha256", digest[7:]), "wb") as f:
        f.write(data)
    return digest


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def cmd_hostile(args):
    with open(args.busybox, "rb") as f:
        busybox = f.read()
    os.makedirs(os.path.join(args.out, "blobs", "sha256"), exist_ok=True)
    passwd = (args.passwd.encode() if args.passwd is not None
              else b"root:x:0:0:root:/root:/bin/sh\n")
    layers = [base_layer(busybox, passwd)]
    files = {"etc/passwd": passwd.decode()}
    if args.layers == 2:
        hostile, top_files = hostile_layer(
            args.variant,
            good=args.good.encode() if args.good is not None else GOOD,
            secret=args.secret.encode() if args.secret is not None else None,
            extra_entries=args.extra_entries)
        layers.append(hostile)
        files.update(top_files)
    descs = []
    for layer in layers:
        digest = write_blob(args.out, layer["blob"])
        descs.append({
            "mediaType": MT_LAYER_GZIP,
            "digest": digest,
            "size": len(layer["blob"]),
            "annotations": {
                TOC_ANNOTATION: layer["toc_digest"],
                SIZE_ANNOTATION: str(layer["uncompressed_size"]),
            },
        })
    for a in args.annotate:
        where, kv = a.split(":", 1)
        key, value = kv.split("=", 1)
        descs[int(where)]["annotations"][key] = value
    diff_ids = [layer["diff_id"] for layer in layers]
    real_diff_ids = list(diff_ids)
    for c in args.claim_diff_id:
        i, d = c.split("=", 1)
        diff_ids[int(i)] = d
    chain_ids = []
    for d in diff_ids:
        chain_ids.append(d if not chain_ids else sha256(f"{chain_ids[-1]} {d}".encode()))
    config = {
        "created": "2024-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh", "-c", "echo hostile"],
                   "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_bytes = canonical(config)
    config_digest = write_blob(args.out, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": descs,
    }
    manifest_bytes = canonical(manifest)
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
        f.write(canonical(index))
    with open(os.path.join(args.out, "oci-layout"), "wb") as f:
        f.write(canonical({"imageLayoutVersion": "1.0.0"}))
    json.dump({
        "manifest_digest": manifest_digest,
        "layers": [d["digest"] for d in descs],
        "toc_digests": [layer["toc_digest"] for layer in layers],
        "diff_ids": diff_ids,
        "real_diff_ids": real_diff_ids,
        "chain_ids": chain_ids,
        "files": files,
    }, sys.stdout, indent=2)
    sys.stdout.write("\n")


def toc_of_member(member):
    tar_bytes = gzip.decompress(member)
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tf:
        m = tf.getmember(TOC_NAME)
        return json.loads(tf.extractfile(m).read())


def read_toc(blob):
    if len(blob) < FOOTER_SIZE:
        raise SystemExit("blob too small for an eStargz footer")
    f = blob[-FOOTER_SIZE:]
    if f[:2] != b"\x1f\x8b" or f[32:38] != b"STARGZ":
        raise SystemExit("no eStargz footer")
    toc_offset = int(f[16:32], 16)
    return toc_offset, toc_of_member(blob[toc_offset:len(blob) - FOOTER_SIZE])


def cmd_toc(args):
    with open(args.blob, "rb") as f:
        data = f.read()
    if args.region:
        out = {"toc_offset": None, "blob_size": None, "toc": toc_of_member(data)}
    else:
        toc_offset, toc = read_toc(data)
        out = {"toc_offset": toc_offset, "blob_size": len(data), "toc": toc}
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("toc", help="print the TOC of an eStargz blob")
    t.add_argument("blob")
    t.add_argument("--region", action="store_true",
                   help="the file holds only the TOC gzip member")
    h = sub.add_parser("hostile", help="write a hostile eStargz image layout")
    h.add_argument("out")
    h.add_argument("tag")
    h.add_argument("--variant", default="plain", choices=["escape", "bad-digest", "plain"])
    h.add_argument("--busybox", default="/bin/busybox")
    h.add_argument("--passwd")
    h.add_argument("--good")
    h.add_argument("--secret")
    h.add_argument("--layers", type=int, default=2, choices=[1, 2])
    h.add_argument("--claim-diff-id", action="append", default=[])
    h.add_argument("--annotate", action="append", default=[])
    h.add_argument("--extra-entries", type=int, default=0)
    args = ap.parse_args(argv)
    if args.cmd == "toc":
        cmd_toc(args)
    else:
        cmd_hostile(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
