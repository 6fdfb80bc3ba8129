#!/usr/bin/env python3
"""Build an OCI image layout from a Containerfile with umoci: no daemon, no
registry, no base image.

    containerfile.py CONTAINERFILE CONTEXT_DIR LAYOUT_DIR TAG

Only what a `FROM scratch` image needs is understood, and anything else is
an error (so the Containerfile cannot say more than this build does):

    FROM scratch
    COPY [--chown=0:0] SRC... DEST      (paths inside CONTEXT_DIR; a trailing
                                         slash on a directory copies its contents)
    ENV KEY=VALUE [KEY=VALUE...]
    LABEL KEY=VALUE [KEY=VALUE...]
    WORKDIR /path
    ENTRYPOINT ["exec", "form"]
    CMD ["exec", "form"]
    STOPSIGNAL SIGNAL

Comments, blank lines and backslash line continuations as in Dockerfiles.
Each COPY becomes one layer (`umoci insert`), every other instruction a
config change (`umoci config`). The same file builds with docker/podman/
buildah from CONTEXT_DIR.
"""
import json
import os
import shlex
import subprocess
import sys
import tempfile


def die(msg):
    print(f"containerfile.py: {msg}", file=sys.stderr)
    sys.exit(1)


def instructions(path):
    """(line number, keyword, rest) for each instruction."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    out, buf, start = [], "", 0
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if not buf:
            start = n
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        kw, _, rest = buf.partition(" ")
        out.append((start, kw.upper(), rest.strip()))
        buf = ""
    if buf:
        die(f"{path}: unterminated continuation at line {start}")
    return out


def exec_form(rest, where):
    try:
        v = json.loads(rest)
    except json.JSONDecodeError:
        die(f"{where}: only the JSON exec form is supported: {rest}")
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v) or not v:
        die(f"{where}: expected a non-empty JSON list of strings: {rest}")
    return v


def pairs(rest, where):
    out = []
    for tok in shlex.split(rest):
        k, eq, v = tok.partition("=")
        if not eq or not k:
            die(f"{where}: expected KEY=VALUE, got {tok!r}")
        out.append((k, v))
    return out


def umoci(*args):
    cmd = ["umoci", *args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        die(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")


def main():
    if len(sys.argv) != 5:
        die("usage: containerfile.py CONTAINERFILE CONTEXT_DIR LAYOUT_DIR TAG")
    cfile, context, layout, tag = sys.argv[1:]
    context = os.path.realpath(context)
    image = f"{layout}:{tag}"
    steps = instructions(cfile)
    if not steps or steps[0][1] != "FROM" or steps[0][2] != "scratch":
        die(f"{cfile}: must start with FROM scratch (no base images here)")
    if not os.path.isdir(os.path.join(layout, "blobs")):
        umoci("init", "--layout", layout)
    umoci("new", "--image", image)
    for n, kw, rest in steps[1:]:
        where = f"{cfile}:{n}"
        hist = ["--history.created_by", f"{kw} {rest}"]
        if kw == "FROM":
            die(f"{where}: one stage only")
        elif kw == "COPY":
            toks = shlex.split(rest)
            toks = [t for t in toks if t not in ("--chown=0:0", "--chown=root:root")]
            if any(t.startswith("--") for t in toks) or len(toks) < 2:
                die(f"{where}: COPY [--chown=0:0] SRC... DEST only: {rest}")
            *srcs, dest = toks
            for src in srcs:
                real = os.path.realpath(os.path.join(context, src))
                if real != context and not real.startswith(context + os.sep):
                    die(f"{where}: {src} is outside the context {context}")
                if not os.path.exists(real):
                    die(f"{where}: {src} not found in {context}")
                if os.path.isdir(real) and src.endswith("/"):
                    # contents of the directory into dest (Dockerfile semantics)
                    umoci("insert", "--image", image, *hist, real, dest)
                elif os.path.isdir(real):
                    umoci("insert", "--image", image, *hist, real,
                          os.path.join(dest, os.path.basename(real)))
                else:
                    target = os.path.join(dest, os.path.basename(real)) if dest.endswith("/") else dest
                    umoci("insert", "--image", image, *hist, real, target)
        elif kw == "ENV":
            args = []
            for k, v in pairs(rest, where):
                args += ["--config.env", f"{k}={v}"]
            umoci("config", "--image", image, *hist, *args)
        elif kw == "LABEL":
            args = []
            for k, v in pairs(rest, where):
                args += ["--config.label", f"{k}={v}"]
            umoci("config", "--image", image, *hist, *args)
        elif kw == "WORKDIR":
            umoci("config", "--image", image, *hist, "--config.workingdir", rest)
        elif kw == "STOPSIGNAL":
            umoci("config", "--image", image, *hist, "--config.stopsignal", rest)
        elif kw in ("ENTRYPOINT", "CMD"):
            flag = "--config.entrypoint" if kw == "ENTRYPOINT" else "--config.cmd"
            args = ["--clear", "config.entrypoint" if kw == "ENTRYPOINT" else "config.cmd"]
            for a in exec_form(rest, where):
                args += [flag, a]
            umoci("config", "--image", image, *hist, *args)
        else:
            die(f"{where}: {kw} is not supported by this builder (FROM scratch images only)")
    umoci("gc", "--layout", layout)


if __name__ == "__main__":
    main()
