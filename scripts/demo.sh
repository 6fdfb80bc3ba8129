#!/usr/bin/env bash
# make demo: a private registry, containerd and hologram-snapshotter; push a
# small 3-layer image, convert it to eStargz with `hologram convert`, pull it
# lazily with `hologram pull` (layers mounted through FUSE, nothing unpacked),
# run it with --snapshotter hologram, show what was fetched, clean up.
# Needs root and `make dev-setup` + `make build`.
source "$(dirname "$0")/lib.sh"
WORKDIR="$(mktemp -d /tmp/hologram-demo.XXXXXX)"
trap stack_stop EXIT
METRICS_PORT="$(free_port)"
export HOLOGRAM_CONFIG=$'[remote]\nplain_http = true   # the demo registry speaks plain HTTP on 127.0.0.1\nbackground_fetch = false'
METRICS_ADDRESS="127.0.0.1:$METRICS_PORT" stack_start "$WORKDIR"
HOLOGRAM="$BIN/hologram"
echo "== registry $REG; containerd, hologram-snapshotter (metrics on 127.0.0.1:$METRICS_PORT) under $WORK"

python3 "$HERE/mkimage.py" "$WORK/oci" demo >/dev/null
skopeo copy --quiet --dest-tls-verify=false "oci:$WORK/oci:demo" "docker://$REG/demo/layers:1"
echo "== pushed $REG/demo/layers:1 (3 gzip layers)"

echo "== hologram convert: rewrite it as eStargz"
"$HOLOGRAM" convert --plain-http "$REG/demo/layers:1" "$REG/demo/layers:esgz" 2>/dev/null
IMG="$REG/demo/layers:esgz"

echo "== hologram pull: remote-snapshot pull through containerd"
"$HOLOGRAM" pull --address "$WORK/c.sock" -n "${NS:-hologram-demo}" --plain-http "$IMG"
echo "== the layers are FUSE mounts, not unpacked directories:"
awk -v w="$WORK/hologram/" 'index($5, w) == 1 { for (i = 7; i < NF; i++) if ($i == "-") { if ($(i+1) == "fuse") print "   " $5 "  <-  " $(i+2); break } }' /proc/self/mountinfo

echo "== ctr run --snapshotter hologram: the container says:"
"${CTR[@]}" run --rm --snapshotter hologram "$IMG" demo-1
"${CTR[@]}" run --rm --snapshotter hologram "$IMG" demo-2 /bin/sh -c \
  'echo "/data has: $(ls /data | tr "\n" " ")"; echo "/replaced: $(cat /replaced)"'

echo "== what was fetched (hologram status, from /metrics):"
"$HOLOGRAM" status --metrics "http://127.0.0.1:$METRICS_PORT/metrics" | sed -n '1,20p'
echo "== a raw scrape, a few lines:"
curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" | grep -E '^hologram_(mounted_layers|fetched_bytes_total|chunk_verification_failures_total|remote_fallbacks_total\{reason="no_labels"\})' || true
"${CTR[@]}" images rm --sync "$IMG" >/dev/null
echo "== done; cleaning up"
