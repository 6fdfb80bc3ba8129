#!/usr/bin/env bash
# make demo: a private registry, containerd and hologram-snapshotter; push a
# small 3-layer image, pull and run it with --snapshotter hologram, show what
# the snapshotter holds, clean up. Needs root and `make dev-setup` + `make build`.
source "$(dirname "$0")/lib.sh"
WORKDIR="$(mktemp -d /tmp/hologram-demo.XXXXXX)"
trap stack_stop EXIT
stack_start "$WORKDIR"
echo "== registry $REG, containerd and hologram-snapshotter under $WORK"

python3 "$HERE/mkimage.py" "$WORK/oci" demo >/dev/null
skopeo copy --quiet --dest-tls-verify=false "oci:$WORK/oci:demo" "docker://$REG/demo/layers:1"
IMG="$REG/demo/layers:1"
echo "== pushed $IMG"

echo "== ctr pull --snapshotter hologram $IMG"
"${CTR[@]}" images pull --plain-http --snapshotter hologram "$IMG" | tail -n 3
echo "== ctr run --snapshotter hologram: the container says:"
"${CTR[@]}" run --rm --snapshotter hologram "$IMG" demo-1
"${CTR[@]}" run --rm --snapshotter hologram "$IMG" demo-2 /bin/sh -c \
  'echo "kernel $(uname -r); /data has: $(ls /data | tr "\n" " ")"'
echo "== snapshots held by hologram"
"${CTR[@]}" snapshots --snapshotter hologram ls
"${CTR[@]}" snapshots --snapshotter hologram usage
echo "== fetched from the registry (whole layers: lazy pulling is not implemented yet)"
curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$REG/v2/demo/layers/manifests/1" |
  python3 -c 'import json,sys; m=json.load(sys.stdin); L=m["layers"]; print(len(L), "layers,", sum(l["size"] for l in L), "bytes compressed, all downloaded and unpacked by containerd")'
"${CTR[@]}" images rm --sync "$IMG" >/dev/null
echo "== done; cleaning up"
