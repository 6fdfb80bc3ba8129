#!/usr/bin/env bash
# make bench: Prepare+Commit latency of hologram vs containerd's overlayfs
# snapshotter, through the same private containerd, in one run.
source "$(dirname "$0")/lib.sh"
WORKDIR="$(mktemp -d /var/tmp/hologram-bench.XXXXXX)"
trap stack_stop EXIT
LOG_LEVEL=warn stack_start "$WORKDIR"
BENCH="${BENCH_BIN:-$TOP/target/release/snapshot-bench}"
[ -x "$BENCH" ] || (cd "$TOP" && cargo build --release --locked -p hologram-bench)
"$BENCH" --address "$WORK/c.sock" --snapshotter overlayfs hologram \
  --iterations "${ITER:-100}" --rounds "${ROUNDS:-5}"
