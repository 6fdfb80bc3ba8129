#!/usr/bin/env bash
# make docker-build: the daemon's container image from deploy/Containerfile,
# without a container engine: stage a root filesystem (the binaries, the
# shared libraries they load, CA certificates, a minimal /etc), apply the
# Containerfile with umoci (scripts/containerfile.py), then write an
# importable archive with skopeo.
#
#   HOLOGRAM_BIN_DIR  binaries to package (default build/, from `make build`)
#   IMAGE_OUT         output directory (default build/image)
#   IMAGE             image name (default localhost/hologram-snapshotter:dev)
#
# Outputs: $IMAGE_OUT/oci (OCI layout, tag = IMAGE's tag) and
# $IMAGE_OUT/hologram-snapshotter.tar (OCI archive named $IMAGE, for
# `ctr images import` / `skopeo copy oci-archive:...`).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOP="$(cd "$HERE/.." && pwd)"
BIN="${HOLOGRAM_BIN_DIR:-$TOP/build}"
OUT="${IMAGE_OUT:-$TOP/build/image}"
IMAGE="${IMAGE:-localhost/hologram-snapshotter:dev}"
TAG="${IMAGE##*:}"
BINS=(hologram-snapshotter hologram-fdstore hologram)
start=$SECONDS

for b in "${BINS[@]}"; do
  [ -x "$BIN/$b" ] || { echo "docker-build: $BIN/$b missing (make build)" >&2; exit 1; }
done
for t in umoci skopeo objcopy ldd python3; do
  command -v "$t" >/dev/null || { echo "docker-build: $t not found (make dev-setup)" >&2; exit 1; }
done

rm -rf "$OUT/context" "$OUT/oci" "$OUT/hologram-snapshotter.tar"
ROOTFS="$OUT/context/rootfs"
mkdir -p "$ROOTFS"/{usr/local/bin,etc/ssl/certs,etc/hologram-snapshotter,root,tmp,run,proc,sys,dev}
chmod 1777 "$ROOTFS/tmp"; chmod 0700 "$ROOTFS/root"

# The binaries, debug info stripped (symbols kept for backtraces).
for b in "${BINS[@]}"; do
  objcopy --strip-debug "$BIN/$b" "$ROOTFS/usr/local/bin/$b"
  chmod 0755 "$ROOTFS/usr/local/bin/$b"
done

# Every shared library the binaries load (and the dynamic loader), at the
# path ldd resolves, as a regular file.
libs="$(for b in "${BINS[@]}"; do ldd "$BIN/$b"; done \
  | awk '/=> \// {print $3} /^\t\/[^ ]+ \(/ {print $1}' | sort -u)"
for l in $libs; do
  mkdir -p "$ROOTFS$(dirname "$l")"
  cp -L "$l" "$ROOTFS$l"
done

# CA bundle (reqwest uses the native roots), users, name service.
cp -L /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' > "$ROOTFS/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$ROOTFS/etc/group"
printf 'hosts: files dns\n' > "$ROOTFS/etc/nsswitch.conf"

python3 "$HERE/containerfile.py" "$TOP/deploy/Containerfile" "$OUT/context" "$OUT/oci" "$TAG"
skopeo copy --quiet "oci:$OUT/oci:$TAG" "oci-archive:$OUT/hologram-snapshotter.tar:$IMAGE"

echo "docker-build: $IMAGE"
echo "  OCI layout:  $OUT/oci (tag $TAG)"
echo "  archive:     $OUT/hologram-snapshotter.tar ($(du -h "$OUT/hologram-snapshotter.tar" | cut -f1)); ctr images import $OUT/hologram-snapshotter.tar"
echo "  libraries:   $(echo $libs | tr ' ' '\n' | xargs -n1 basename | tr '\n' ' ')"
echo "  built in $((SECONDS - start)) s"
