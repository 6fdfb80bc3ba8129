#!/usr/bin/env bash
# Read path: sequential read throughput of a 64 MiB file (1 MiB eStargz
# chunks, so every read goes through the daemon, not passthrough) with its
# chunks already in the cache, through hologram's FUSE layer with metrics on
# and off, and the same file from containerd's overlayfs snapshotter, in one
# run. "page cache dropped" = posix_fadvise(DONTNEED) before every pass, so
# each pass reaches the filesystem (FUSE daemon, or ext4 for overlayfs);
# "page cache warm" = the kernel serves it.
source "$(dirname "$0")/lib.sh"
PASSES="${PASSES:-7}"
BASE="$(mktemp -d /var/tmp/hologram-readbench.XXXXXX)"
cleanup() { umount -l "$BASE"/*/mnt 2>/dev/null || true; KEEP=0; PIDS=("${REGISTRY_PIDS[@]}" "${PIDS[@]}"); WORK="$BASE"; stack_stop; }
trap cleanup EXIT
registry_start "$BASE/registry"
REGISTRY_PIDS=("${PIDS[@]}"); PIDS=()
python3 "$HERE/mkbigfile.py" "$BASE/oci" big 64
skopeo copy --quiet --dest-tls-verify=false "oci:$BASE/oci:big" "docker://$REG/bench/big:gzip"
"$BIN/hologram" convert --plain-http --chunk-size 1048576 "$REG/bench/big:gzip" "$REG/bench/big:esgz" >/dev/null 2>&1
export HOLOGRAM_CONFIG=$'[remote]\nplain_http = true\nbackground_fetch = false'

measure() { # name -> "cold warm"
  local name="$1"
  local w="$BASE/$name" sn img chain
  if [ "$name" = hologram-metrics-on ]; then METRICS_ADDRESS="127.0.0.1:$(free_port)"; else METRICS_ADDRESS=off; fi
  METRICS_ADDRESS="$METRICS_ADDRESS" stack_start "$w"
  if [ "$name" = overlayfs ]; then
    sn=overlayfs; img="$REG/bench/big:gzip"
    "${CTR[@]}" images pull --plain-http --snapshotter overlayfs "$img" >/dev/null
  else
    sn=hologram; img="$REG/bench/big:esgz"
    "$BIN/hologram" pull --address "$w/c.sock" -n "${NS:-hologram-demo}" --plain-http "$img" >/dev/null
  fi
  chain="$("${CTR[@]}" snapshots --snapshotter "$sn" ls | awk 'NR>1 && $NF=="Committed" {print $1; exit}')"
  "${CTR[@]}" snapshots --snapshotter "$sn" view bench-view "$chain" >/dev/null
  mkdir -p "$w/mnt"
  eval "$("${CTR[@]}" snapshots --snapshotter "$sn" mounts "$w/mnt" bench-view)"
  cat "$w/mnt/big.bin" >/dev/null   # fills the chunk cache (hologram)
  echo "$(python3 "$HERE/readbench.py" "$w/mnt/big.bin" "$PASSES" cold) $(python3 "$HERE/readbench.py" "$w/mnt/big.bin" "$PASSES" warm)"
  umount "$w/mnt"
  stack_stop
}

declare -A C W
for name in overlayfs hologram-metrics-off hologram-metrics-on; do
  read -r c wm < <(measure "$name")
  C[$name]="$c"; W[$name]="$wm"
done
echo
echo "sequential read of a 64 MiB file, median of $PASSES passes (MB/s)"
printf '%-22s %22s %18s\n' "" "page cache dropped" "page cache warm"
for name in overlayfs hologram-metrics-off hologram-metrics-on; do
  printf '%-22s %22s %18s\n' "$name" "${C[$name]}" "${W[$name]}"
done
python3 -c "
c=dict(o=${C[overlayfs]}, off=${C[hologram-metrics-off]}, on=${C[hologram-metrics-on]})
w=dict(o=${W[overlayfs]}, on=${W[hologram-metrics-on]})
print(f\"ratio hologram/overlayfs, page cache dropped: {c['on']/c['o']:.2f}; warm: {w['on']/w['o']:.2f}\")
print(f\"metrics overhead on the FUSE read path: {(1 - c['on']/c['off'])*100:+.1f}% throughput (on vs off)\")"
