# Shared helpers for demo.sh and bench-snapshots.sh: a private registry,
# containerd and hologram-snapshotter under one work directory, each started
# here and stopped here by PID. Source it; do not run it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOP="$(cd "$HERE/.." && pwd)"
BIN="${HOLOGRAM_BIN_DIR:-$TOP/build}"
PIDS=()

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_for() { # seconds description command...
  local secs="$1" what="$2"; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $end ]; then echo "timed out waiting for $what" >&2; return 1; fi
    sleep 0.1
  done
}

# registry_start DIR: docker-registry on 127.0.0.1:free port, storage and a
# JSON access log (bytes served per request) under DIR. Sets REG.
registry_start() {
  local dir="$1" port; port="$(free_port)"
  mkdir -p "$dir"
  REG="127.0.0.1:$port"
  cat > "$dir/registry.yml" <<YML
version: 0.1
log: {level: warn, accesslog: {disabled: false}}
storage: {filesystem: {rootdirectory: $dir/storage}, delete: {enabled: true}}
http: {addr: $REG}
YML
  docker-registry serve "$dir/registry.yml" >"$dir/registry.log" 2>&1 &
  PIDS+=($!)
  REG_LOG="$dir/registry.log"
  wait_for 20 "registry" curl -fsS "http://$REG/v2/"
}

# registry_bytes: bytes the registry has written in responses so far.
registry_bytes() {
  # the access log is Apache combined format: "METHOD URI PROTO" STATUS BYTES
  python3 -c '
import re, sys
pat = re.compile(r"\" (\d{3}) (\d+) \"")
print(sum(int(m.group(2)) for line in open(sys.argv[1], errors="replace") for m in [pat.search(line)] if m))' "$REG_LOG"
}

# stack_start WORKDIR: a registry (unless REG is already set), the daemon,
# containerd. Sets REG, CTR (a ctr command line), WORK.
stack_start() {
  WORK="$1"; mkdir -p "$WORK"
  [ -n "${REG:-}" ] || registry_start "$WORK/registry"

  # The daemon's config: HOLOGRAM_CONFIG (TOML text) or empty.
  printf '%s\n' "${HOLOGRAM_CONFIG:-}" > "$WORK/hologram.toml"
  "$BIN/hologram-snapshotter" --root "$WORK/hologram" --address "$WORK/h.sock" \
    --config "$WORK/hologram.toml" --log-level "${LOG_LEVEL:-info}" \
    --metrics-address "${METRICS_ADDRESS:-off}" >"$WORK/hologram.log" 2>&1 &
  PIDS+=($!)
  wait_for 20 "hologram-snapshotter" test -S "$WORK/h.sock"

  containerd_start "$WORK/h.sock"
}

# containerd_start SNAPSHOTTER_SOCKET: a private containerd under $WORK
# (socket $WORK/c.sock, CRI off) with [proxy_plugins.hologram] pointing at
# SNAPSHOTTER_SOCKET (which need not exist yet). Sets CTR.
containerd_start() {
  cat > "$WORK/containerd.toml" <<TOML
version = 2
root = "$WORK/containerd/root"
state = "$WORK/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$WORK/c.sock"
[proxy_plugins.hologram]
  type = "snapshot"
  address = "$1"
TOML
  containerd --config "$WORK/containerd.toml" >"$WORK/containerd.log" 2>&1 &
  PIDS+=($!)
  CTR=(ctr --address "$WORK/c.sock" --namespace "${NS:-hologram-demo}")
  wait_for 30 "containerd" "${CTR[@]}" version
}

# stack_stop: stop what stack_start started (containerd, daemon, registry),
# unmount anything left under WORK, remove WORK unless KEEP=1.
stack_stop() {
  local i pid
  for ((i=${#PIDS[@]}-1; i>=0; i--)); do
    pid="${PIDS[$i]}"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
  # The daemon's fd holder (it keeps mounts across daemon restarts; here the
  # stack goes away for good): started by the daemon, stopped here by pid.
  if [ -n "${WORK:-}" ] && [ -f "$WORK/hologram/fdstore.pid" ]; then
    pid="$(cat "$WORK/hologram/fdstore.pid")"
    if grep -q hologram-fdstore "/proc/$pid/cmdline" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
      for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    fi
  fi
  if [ -n "${WORK:-}" ] && [ -d "$WORK" ]; then
    awk -v w="$WORK/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
      umount -l "$m" 2>/dev/null || true
    done
    [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
  fi
}
