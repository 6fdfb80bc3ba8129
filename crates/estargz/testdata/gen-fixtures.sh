#!/usr/bin/env bash
# Regenerate the ctr-remote eStargz fixtures in this directory.
#
# Needs: containerd, ctr-remote (Debian package stargz-snapshotter), python3,
# root. Starts a private containerd in a temp dir (own root/state/socket),
# imports the image built by mklayer.py, converts it twice with ctr-remote:
#
#   ctrremote-chunked.esgz   --estargz --oci --estargz-chunk-size 16384
#                            (no prioritized files -> .no.prefetch.landmark)
#   ctrremote-prefetch.esgz  --estargz --oci --estargz-record-in REC
#                            (prioritized files -> .prefetch.landmark)
#
# and writes fixtures.json with each blob's digest, size, TOC digest and
# uncompressed-size annotations and diff_id, as ctr-remote recorded them.
# allkinds.tar.gz is the source layer (gzip of mklayer.py's tar).
# The containerd it starts is stopped by PID on exit.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d /tmp/esgz-fx.XXXXXX)"
ctd_pid=""
cleanup() {
    if [ -n "$ctd_pid" ]; then
        kill "$ctd_pid" 2>/dev/null || true
        wait "$ctd_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

python3 "$here/mklayer.py" "$work/layout" >/dev/null
gzip -9 -n -c "$work/layout/allkinds.tar" >"$here/allkinds.tar.gz"
rm "$work/layout/allkinds.tar"
tar -C "$work/layout" -cf "$work/image.tar" oci-layout index.json blobs

cat >"$work/config.toml" <<EOF
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/c.sock"
[ttrpc]
  address = "$work/c.sock.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$work/opt"
EOF
containerd --config "$work/config.toml" >"$work/containerd.log" 2>&1 &
ctd_pid=$!
for _ in $(seq 1 100); do
    [ -S "$work/c.sock" ] && break
    sleep 0.1
done

ctr() { ctr-remote --address "$work/c.sock" -n fixtures "$@"; }
ctr images import --base-name fx/src --digests=false "$work/image.tar" >/dev/null

printf '{"path":"etc/hostname"}\n{"path":"data/big.bin"}\n{"path":"bin/tool"}\n' >"$work/record.json"
ctr images convert --estargz --oci --estargz-chunk-size 16384 fx/src:src fx/chunked:1 >/dev/null
ctr images convert --estargz --oci --estargz-record-in "$work/record.json" fx/src:src fx/prefetch:1 >/dev/null

python3 - "$here" "$work" <<'EOF'
import json, os, subprocess, sys
here, work = sys.argv[1], sys.argv[2]
store = os.path.join(work, "root/io.containerd.content.v1.content/blobs/sha256")
def blob(d):
    with open(os.path.join(store, d.split(":", 1)[1]), "rb") as f:
        return f.read()
out = {}
for ref, name in (("fx/chunked:1", "ctrremote-chunked.esgz"), ("fx/prefetch:1", "ctrremote-prefetch.esgz")):
    ls = subprocess.run(["ctr-remote", "--address", os.path.join(work, "c.sock"), "-n", "fixtures",
                         "images", "ls"], check=True, capture_output=True, text=True).stdout
    target = [l.split()[2] for l in ls.splitlines() if l.startswith(ref + " ")][0]
    manifest = json.loads(blob(target))
    config = json.loads(blob(manifest["config"]["digest"]))
    layer = manifest["layers"][0]
    with open(os.path.join(here, name), "wb") as f:
        f.write(blob(layer["digest"]))
    out[name] = {
        "digest": layer["digest"],
        "size": layer["size"],
        "annotations": layer.get("annotations", {}),
        "diff_id": config["rootfs"]["diff_ids"][0],
    }
with open(os.path.join(here, "fixtures.json"), "w") as f:
    json.dump(out, f, indent=2, sort_keys=True)
    f.write("\n")
EOF
ls -l "$here"
