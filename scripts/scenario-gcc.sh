#!/bin/bash
# Scenario "gcc" (compile-heavy): Debian bookworm minbase + gcc + libc6-dev,
# one gzip layer, built with ../shared/scenarios/lib.sh like python and big.
# Workload (given by the bench): compile hello.c with gcc -O2 and run it.
# Usage: scenario-gcc.sh OUTDIR -> OUTDIR/rootfs-gcc (cache), OUTDIR/oci-gcc (tag "gcc")
SHARED="$(cd "$(dirname "$0")/../../shared/scenarios" && pwd)"
source "$SHARED/lib.sh"
OUT="${1:?usage: $0 OUTDIR}"; mkdir -p "$OUT"; OUT="$(cd "$OUT" && pwd)"
need_tools
debootstrap_rootfs "$OUT/rootfs-gcc" gcc,libc6-dev
if ! umoci stat --image "$OUT/oci-gcc:gcc" >/dev/null 2>&1; then
  rootfs_to_oci "$OUT/rootfs-gcc" "$OUT/oci-gcc" gcc
  set_cmd "$OUT/oci-gcc" gcc gcc --version
fi
echo "gcc image: $OUT/oci-gcc:gcc"
