#!/usr/bin/env bash
# Cold start, hologram vs containerd's overlayfs, same registry, same run:
# pull + run to first output of the "python" scenario image (Debian bookworm
# + python3, ~68 MB gzip / ~167 MB), and the bytes the registry served by
# the time the output appeared. Each sample uses a fresh containerd and a
# fresh hologram-snapshotter (empty caches); modes are interleaved.
# Env: RUNS (3), REG_DIR (a registry storage to reuse).
source "$(dirname "$0")/lib.sh"
RUNS="${RUNS:-3}"
BASE="$(mktemp -d /var/tmp/hologram-coldstart.XXXXXX)"
cleanup() { KEEP=0; PIDS=("${REGISTRY_PIDS[@]}" "${PIDS[@]}"); WORK="$BASE"; stack_stop; }
trap cleanup EXIT

LAYOUT="$("$HERE/mkpython.sh" | tail -n 1)"
registry_start "$BASE/registry"
REGISTRY_PIDS=("${PIDS[@]}"); PIDS=()
skopeo copy --quiet --dest-tls-verify=false "oci:$LAYOUT" "docker://$REG/bench/python:gzip"
"$BIN/hologram" convert --plain-http "$REG/bench/python:gzip" "$REG/bench/python:esgz" 2>/dev/null >/dev/null
CMD=(python3 -c 'print("hello")')
export HOLOGRAM_CONFIG=$'[remote]\nplain_http = true'

one() { # mode run -> prints "seconds bytes"
  local mode="$1" run="$2"
  local w="$BASE/run-$mode-$run" t0 t1 b0 b1 out
  stack_start "$w"
  b0="$(registry_bytes)"; t0="$(date +%s.%N)"
  if [ "$mode" = overlayfs ]; then
    "${CTR[@]}" images pull --plain-http --snapshotter overlayfs "$REG/bench/python:gzip" >/dev/null
    out="$("${CTR[@]}" run --rm --snapshotter overlayfs "$REG/bench/python:gzip" "c$run" "${CMD[@]}")"
  else
    "$BIN/hologram" pull --address "$w/c.sock" -n "${NS:-hologram-demo}" --plain-http "$REG/bench/python:esgz" >/dev/null
    out="$("${CTR[@]}" run --rm --snapshotter hologram "$REG/bench/python:esgz" "c$run" "${CMD[@]}")"
  fi
  t1="$(date +%s.%N)"; b1="$(registry_bytes)"
  [ "$out" = hello ] || { echo "unexpected output from $mode: $out" >&2; exit 1; }
  "${CTR[@]}" images rm --sync "$REG/bench/python:gzip" "$REG/bench/python:esgz" >/dev/null 2>&1 || true
  stack_stop
  python3 -c "print(f'{$t1 - $t0:.3f} {$b1 - $b0}')"
}

declare -A T B
for r in $(seq "$RUNS"); do
  for mode in overlayfs hologram; do
    read -r t b < <(one "$mode" "$r")
    T[$mode]+="$t "; B[$mode]+="$b "
    echo "run $r $mode: ${t}s, $b bytes from the registry"
  done
done
python3 - "${T[overlayfs]}" "${B[overlayfs]}" "${T[hologram]}" "${B[hologram]}" <<'PY'
import statistics, sys
to, bo, th, bh = ([float(x) for x in a.split()] for a in sys.argv[1:5])
mo, mh = statistics.median(to), statistics.median(th)
bmo, bmh = statistics.median(bo), statistics.median(bh)
print("\ncold start, pull + run to first output (median of %d, loopback registry)" % len(to))
print(f"{'snapshotter':<12} {'seconds':>8} {'MB from registry':>17}")
print(f"{'overlayfs':<12} {mo:>8.2f} {bmo/1e6:>17.1f}")
print(f"{'hologram':<12} {mh:>8.2f} {bmh/1e6:>17.1f}")
print(f"ratio hologram/overlayfs: time {mh/mo:.2f}, bytes {bmh/bmo:.3f}")
PY
