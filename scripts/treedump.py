#!/usr/bin/env python3
"""Dump a directory tree as JSON, for comparing two root filesystems.

Usage:
    python3 scripts/treedump.py ROOT [--no-content]

Prints one JSON object: {"paths": {PATH: ENTRY, ...}, "errors": [...]}.
PATH is relative to ROOT ("." for ROOT itself), entries are sorted. Every
ENTRY has, from lstat (symlinks are never followed):

    type    "dir" | "reg" | "symlink" | "char" | "block" | "fifo" | "socket"
    mode    permission bits incl. setuid/setgid/sticky (st_mode & 0o7777)
    uid, gid
    xattrs  {name: base64 value} from llistxattr/lgetxattr

and depending on the type:

    reg      size, nlink, mtime (integer seconds), sha256 of the content
             (unless --no-content), links: the other paths of the tree that
             are the same inode (same st_dev and st_ino), sorted
    symlink  target (readlink), size
    char/block  rdev as [major, minor]

Directory sizes, link counts and times are left out: they depend on the
filesystem, not on the image. Whatever cannot be read (a failing read(2),
an unreadable xattr) is recorded in "errors" as "PATH: what: strerror" and
the dump goes on, so that the caller sees every failure at once.
"""

import base64
import hashlib
import json
import os
import stat
import sys

TYPES = [
    (stat.S_ISDIR, "dir"),
    (stat.S_ISREG, "reg"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISCHR, "char"),
    (stat.S_ISBLK, "block"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISSOCK, "socket"),
]


def file_type(mode):
    for test, name in TYPES:
        if test(mode):
            return name
    return "unknown"


def sha256_file(path):
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        while True:
            block = os.read(fd, 1 << 20)
            if not block:
                break
            h.update(block)
    finally:
        os.close(fd)
    return "sha256:" + h.hexdigest()


def xattrs_of(path, errors, rel):
    out = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        errors.append(f"{rel}: listxattr: {e.strerror}")
        return out
    for name in sorted(names):
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as e:
            errors.append(f"{rel}: getxattr {name}: {e.strerror}")
            continue
        out[name] = base64.b64encode(value).decode("ascii")
    return out


def dump(root, content=True):
    paths = {}
    errors = []
    inodes = {}  # (dev, ino) -> [rel paths] for non-directories

    def visit(path, rel):
        try:
            st = os.lstat(path)
        except OSError as e:
            errors.append(f"{rel}: lstat: {e.strerror}")
            return
        kind = file_type(st.st_mode)
        entry = {
            "type": kind,
            "mode": st.st_mode & 0o7777,
            "uid": st.st_uid,
            "gid": st.st_gid,
            "xattrs": xattrs_of(path, errors, rel),
        }
        if kind == "reg":
            entry["size"] = st.st_size
            entry["nlink"] = st.st_nlink
            entry["mtime"] = int(st.st_mtime)
            if content:
                try:
                    entry["sha256"] = sha256_file(path)
                except OSError as e:
                    errors.append(f"{rel}: read: {e.strerror}")
        elif kind == "symlink":
            entry["size"] = st.st_size
            try:
                entry["target"] = os.readlink(path)
            except OSError as e:
                errors.append(f"{rel}: readlink: {e.strerror}")
        elif kind in ("char", "block"):
            entry["rdev"] = [os.major(st.st_rdev), os.minor(st.st_rdev)]
        if kind != "dir":
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
        paths[rel] = entry
        if kind == "dir":
            try:
                names = sorted(os.listdir(path))
            except OSError as e:
                errors.append(f"{rel}: listdir: {e.strerror}")
                return
            for name in names:
                child_rel = name if rel == "." else rel + "/" + name
                visit(os.path.join(path, name), child_rel)

    visit(root, ".")
    for group in inodes.values():
        for rel in group:
            if paths[rel]["type"] == "reg":
                paths[rel]["links"] = sorted(p for p in group if p != rel)
    return {"paths": dict(sorted(paths.items())), "errors": errors}


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        sys.stderr.write(__doc__)
        return 2
    content = "--no-content" not in argv[1:]
    json.dump(dump(argv[0], content), sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
