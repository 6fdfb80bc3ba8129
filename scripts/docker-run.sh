#!/usr/bin/env bash
# make docker-run: the daemon's image (make docker-build) run under a private
# containerd the way deploy/daemonset.yaml runs it under the kubelet —
# privileged, host network, the host's /dev/fuse, the snapshotter root
# bind-mounted at the same path with shared propagation (rootfs propagation
# rshared, as CRI sets for Bidirectional mounts), the socket directory, the
# config directory read-only — and that same containerd using the
# containerized daemon as its `hologram` proxy snapshotter for a real lazy
# pull and run of a test image from a private registry. Everything it starts
# is stopped by PID, everything mounted under its work dir unmounted.
#
#   IMAGE_ARCHIVE  default build/image/hologram-snapshotter.tar
#   IMAGE          default localhost/hologram-snapshotter:dev
#   HOLOGRAM_BIN_DIR  where the host-side `hologram` CLI is (default build/)
#   KEEP=1         keep the work dir (logs) after the run
# Needs root, `make dev-setup`, `make docker-build`.
source "$(dirname "$0")/lib.sh"
ARCHIVE="${IMAGE_ARCHIVE:-$TOP/build/image/hologram-snapshotter.tar}"
IMAGE="${IMAGE:-localhost/hologram-snapshotter:dev}"
HOLOGRAM="$BIN/hologram"
CID=hologram-snapshotter
NS=hologram-docker-run
start=$SECONDS
[ "$(id -u)" = 0 ] || { echo "docker-run needs root (containerd, mounts)" >&2; exit 1; }
[ -f "$ARCHIVE" ] || { echo "docker-run: $ARCHIVE missing (make docker-build)" >&2; exit 1; }
[ -x "$HOLOGRAM" ] || { echo "docker-run: $HOLOGRAM missing (make build)" >&2; exit 1; }

WORK="$(mktemp -d /tmp/hologram-docker-run.XXXXXX)"
HROOT="$WORK/root"        # the DaemonSet's /var/lib/containerd/io.containerd.snapshotter.v1.hologram
SOCKDIR="$WORK/run"       # its /run/hologram-snapshotter
CFGDIR="$WORK/config"     # its ConfigMap, at /etc/hologram-snapshotter
ETCC="$WORK/etc-containerd"  # its /etc/containerd (hosts.toml)
mkdir -p "$HROOT" "$SOCKDIR" "$CFGDIR" "$ETCC/certs.d"
BOUND=0

# "?" when ctr itself fails (containerd slow under load): never "gone".
task_status() {
  local out
  out=$("${CTR[@]}" tasks ls 2>/dev/null) || { echo "?"; return; }
  awk -v id="$CID" '$1 == id {print $3}' <<<"$out"
}
task_gone() { local s; s=$(task_status); [ -z "$s" ] || [ "$s" = STOPPED ]; }

cleanup() {
  local rc=$?
  set +e
  if [ -n "${CTR+x}" ]; then
    if [ -n "$(task_status)" ]; then
      local t0=$SECONDS
      "${CTR[@]}" tasks kill -s SIGTERM "$CID" >/dev/null 2>&1
      if wait_for 30 "the daemon's container to stop" task_gone; then
        echo "   the daemon's container stopped on SIGTERM in $((SECONDS - t0)) s; its log says:"
        # the shim may still be copying the last lines into the log file
        if wait_for 10 "the daemon's shutdown log line" grep -q 'shutting down' "$WORK/daemon.log"; then
          grep -m1 'shutting down' "$WORK/daemon.log" | cut -c1-160
        else
          echo "   (its last lines:)"; tail -n 8 "$WORK/daemon.log" | cut -c1-200
        fi
      else
        "${CTR[@]}" tasks kill -s SIGKILL "$CID" >/dev/null 2>&1
        wait_for 10 "the daemon's container to die" task_gone
      fi
      "${CTR[@]}" tasks delete "$CID" >/dev/null 2>&1
    fi
    "${CTR[@]}" containers delete "$CID" >/dev/null 2>&1
    # a test container a failure left behind
    for t in $("${CTR[@]}" tasks ls -q 2>/dev/null); do
      "${CTR[@]}" tasks kill -s SIGKILL "$t" >/dev/null 2>&1
      wait_for 10 "task $t to die" sh -c "! ${CTR[*]} tasks ls | grep -q '^$t .*RUNNING'"
      "${CTR[@]}" tasks delete -f "$t" >/dev/null 2>&1
    done
    for c in $("${CTR[@]}" containers ls -q 2>/dev/null); do "${CTR[@]}" containers delete "$c" >/dev/null 2>&1; done
    # shims of this containerd that outlived their tasks (by PID)
    for p in $(pgrep -f "containerd-shim.*-address $WORK/c.sock" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
  fi
  if [ $rc -ne 0 ]; then
    echo "== docker-run FAILED (rc $rc); the daemon's log (container stdout/stderr):" >&2
    tail -n 40 "$WORK/daemon.log" >&2 2>/dev/null
    echo "== containerd log:" >&2; tail -n 20 "$WORK/containerd.log" >&2 2>/dev/null
  fi
  stack_stop   # containerd, registry by PID; unmounts everything under WORK (the FUSE mounts, the rshared bind) and removes it
  return $rc
}
trap cleanup EXIT
trap 'exit 143' TERM INT   # a timeout's SIGTERM still runs cleanup

# The snapshotter root: a mount point of its own with shared propagation, so
# the FUSE mounts the daemon makes inside its container show on the host
# (kubelet requires the same of a Bidirectional hostPath).
mount --bind "$HROOT" "$HROOT"
mount --make-rshared "$HROOT"

registry_start "$WORK/registry"
containerd_start "$SOCKDIR/hologram.sock"   # the socket appears when the container serves it
echo "== registry $REG; containerd under $WORK"

echo "== ctr images import $ARCHIVE"
"${CTR[@]}" images import "$ARCHIVE" >/dev/null
"${CTR[@]}" images ls -q | grep -qx "$IMAGE" || { echo "docker-run: $IMAGE not in the archive" >&2; exit 1; }

METRICS_PORT="$(free_port)"
cat > "$CFGDIR/config.toml" <<TOML
# deploy/configmap.yaml with this run's paths
root_path = "$HROOT"
address = "$SOCKDIR/hologram.sock"
log_level = "info"
metrics_address = "127.0.0.1:$METRICS_PORT"

[remote]
hosts_dir = "$ETCC/certs.d"
plain_http = true          # the private registry speaks plain HTTP on 127.0.0.1
background_fetch = false   # so the bytes fetched are what the container read
TOML

echo "== ctr run $IMAGE (privileged, host network, the DaemonSet's host mounts)"
"${CTR[@]}" run -d --privileged --net-host --rootfs-propagation rshared \
  --log-uri "file://$WORK/daemon.log" \
  --mount "type=bind,src=/dev/fuse,dst=/dev/fuse,options=rbind:rw" \
  --mount "type=bind,src=$HROOT,dst=$HROOT,options=rbind:rshared:rw" \
  --mount "type=bind,src=$SOCKDIR,dst=$SOCKDIR,options=rbind:rw" \
  --mount "type=bind,src=$CFGDIR,dst=/etc/hologram-snapshotter,options=rbind:ro" \
  --mount "type=bind,src=$ETCC,dst=$ETCC,options=rbind:ro" \
  "$IMAGE" "$CID" >/dev/null
served() { [ -S "$SOCKDIR/hologram.sock" ] && curl -fsS "http://127.0.0.1:$METRICS_PORT/healthz"; }
wait_for 60 "the containerized daemon to serve its socket and /healthz" served
echo "   the daemon runs in the container: pid $("${CTR[@]}" tasks ls | awk -v id="$CID" '$1 == id {print $2}') (host view), /healthz ok"

# 3 small layers + a 4th holding /data/big.bin, 16 MiB nobody reads in full
python3 "$HERE/mkimage.py" "$WORK/oci" demo --big-file 16 >/dev/null
skopeo copy --quiet --dest-tls-verify=false "oci:$WORK/oci:demo" "docker://$REG/demo/layers:1"
"$HOLOGRAM" convert --plain-http "$REG/demo/layers:1" "$REG/demo/layers:esgz" >/dev/null 2>&1
IMG="$REG/demo/layers:esgz"
echo "== pushed $IMG (4 eStargz layers, one with a 16 MiB file)"
before="$(registry_bytes)"

echo "== hologram pull: remote-snapshot pull through containerd -> the containerized daemon"
"$HOLOGRAM" pull --address "$WORK/c.sock" -n "$NS" --plain-http "$IMG"

echo "== the layers are FUSE mounts the container made, seen on the host:"
fuse="$(awk -v w="$HROOT/" 'index($5, w) == 1 { for (i = 7; i < NF; i++) if ($i == "-") { if ($(i+1) == "fuse" || $(i+1) == "fuse.hologram") print "   " $5 "  <-  " $(i+2); break } }' /proc/self/mountinfo)"
[ -n "$fuse" ] || { echo "docker-run: no FUSE mount under $HROOT on the host (propagation?)" >&2; exit 1; }
echo "$fuse"
echo "   host-visible lazy layers: $(printf '%s\n' "$fuse" | wc -l)"

echo "== ctr run --snapshotter hologram: the container says:"
"${CTR[@]}" run --rm --snapshotter hologram "$IMG" docker-run-1 /bin/sh -c \
  'echo "hello from a lazily pulled image"; echo "/data has: $(ls /data | tr "\n" " ")"; echo "/replaced: $(cat /replaced)";
   echo "/data/big.bin: $(ls -l /data/big.bin | awk "{print \$5}") bytes; read its first $(head -c 65536 /data/big.bin | wc -c)"'

echo "== what was fetched (hologram status, from the container's /metrics):"
"$HOLOGRAM" status --metrics "http://127.0.0.1:$METRICS_PORT/metrics" | sed -n '1,20p'
echo "   registry bytes served since the push: $(( $(registry_bytes) - before )) of an image of $(du -bc "$WORK"/oci/blobs/sha256/* | tail -1 | cut -f1) bytes (before conversion)"
"${CTR[@]}" images rm --sync "$IMG" >/dev/null
echo "== docker-run OK in $((SECONDS - start)) s; stopping the container, containerd, the registry"
