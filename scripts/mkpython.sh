#!/bin/bash
# Builds (once) the "python" scenario image — Debian bookworm minbase +
# python3, one gzip layer, ~68 MB compressed / ~167 MB uncompressed — and
# caches it outside the repository.
#
# Usage: scripts/mkpython.sh [CACHE_ROOT]
#   CACHE_ROOT defaults to $HOLOGRAM_E2E_CACHE, else /var/cache/hologram-e2e.
#   The scenario scripts are taken from $HOLOGRAM_SCENARIOS_DIR, else
#   ../shared/scenarios beside the checkout, else /work/shared/scenarios
#   (python.sh + lib.sh; that folder may be read-only).
#
# The image lands in CACHE_ROOT/python-<hash>/oci-python (OCI layout, tag
# "python"), <hash> being a hash of python.sh and lib.sh, so a changed recipe
# builds a new image and an unchanged one is never rebuilt. The last line on
# stdout is the layout reference, "DIR/oci-python:python". The first build
# runs debootstrap through this machine's apt mirror and takes minutes;
# concurrent callers serialise on a lock file.
set -euo pipefail

# shared/ lies beside the checkout (here, and in CI's fresh clone).
REPO_SHARED="$(cd "$(dirname "$0")/../.." && pwd)/shared/scenarios"
if [ -z "${HOLOGRAM_SCENARIOS_DIR:-}" ] && [ -d "$REPO_SHARED" ]; then
  SCEN="$REPO_SHARED"
else
  SCEN="${HOLOGRAM_SCENARIOS_DIR:-/work/shared/scenarios}"
fi
CACHE="${1:-${HOLOGRAM_E2E_CACHE:-/var/cache/hologram-e2e}}"

for f in python.sh lib.sh; do
  [ -f "$SCEN/$f" ] || { echo "mkpython: $SCEN/$f not found (set HOLOGRAM_SCENARIOS_DIR)" >&2; exit 2; }
done
hash=$(cat "$SCEN/python.sh" "$SCEN/lib.sh" | sha256sum | cut -c1-16)
out="$CACHE/python-$hash"
ref="$out/oci-python:python"
mkdir -p "$CACHE"

exec 9>"$CACHE/.python.lock"
flock 9

if [ -f "$out/.done" ]; then
  echo "mkpython: cached image $ref" >&2
  echo "$ref"
  exit 0
fi

echo "mkpython: building $ref (debootstrap + umoci; first build takes minutes)" >&2
rm -rf "$out"
mkdir -p "$out"
# python.sh prints its progress on stdout; keep our stdout for the result.
bash "$SCEN/python.sh" "$out" >&2
[ -f "$out/oci-python/index.json" ] || { echo "mkpython: $SCEN/python.sh produced no OCI layout" >&2; exit 1; }
# The unpacked rootfs only serves python.sh's own idempotence; .done does that here.
rm -rf "$out/rootfs-python"
touch "$out/.done"
echo "mkpython: built $ref" >&2
echo "$ref"
