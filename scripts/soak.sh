#!/usr/bin/env bash
# `make test` N times in a row while stress-ng keeps 2 CPU hogs busy (as on a
# shared CI machine), stopping at the first failure. Each run's output goes to
# its own log; the summary gives the wall time of each run.
#
#   scripts/soak.sh [N]     (make soak SOAK_RUNS=N)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOP="$(cd "$HERE/.." && pwd)"
N="${1:-5}"
LOGS="${SOAK_LOGS:-$TOP/target/soak}"
mkdir -p "$LOGS"
command -v stress-ng >/dev/null || { echo "stress-ng missing: make dev-setup" >&2; exit 1; }

stress-ng --cpu 2 --timeout 0 --quiet &
HOG=$!
trap 'kill "$HOG" 2>/dev/null; wait "$HOG" 2>/dev/null || true' EXIT

cd "$TOP"
for i in $(seq 1 "$N"); do
  t=$SECONDS
  log="$LOGS/run-$i.log"
  if make test >"$log" 2>&1; then
    echo "soak run $i/$N: passed in $((SECONDS - t)) s ($(grep -h '^test result' "$log" | awk '{p+=$4} END {print p}') tests)"
  else
    echo "soak run $i/$N: FAILED after $((SECONDS - t)) s; log: $log"
    grep -E '^(test .* FAILED|failures:|---- )' "$log" | head -20
    exit 1
  fi
done
echo "soak: $N runs in a row passed under load"
