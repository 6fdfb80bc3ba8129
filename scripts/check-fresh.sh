#!/usr/bin/env bash
# The README's two commands on a fresh Debian 12 machine, for real: a clean
# bookworm root made with debootstrap, the README's stated prerequisites
# installed in it (make, git, a C compiler; the Rust toolchain from rustup is
# bind-mounted read-only from this machine), a `git clone` of this
# repository's HEAD, then `make demo` and `make test` inside, as root. Every
# other package must come from `make dev-setup`; a hidden prerequisite (like
# protoc once was) fails here.
#
# Runs in private mount and PID namespaces: every mount made inside (proc,
# FUSE, overlay, containerd's) and every process started inside is gone when
# it ends. The root is removed afterwards unless KEEP=1.
#
#   scripts/check-fresh.sh            # both commands
#   ONLY=demo scripts/check-fresh.sh  # or ONLY=test
#   ONLY=fuzz-smoke scripts/check-fresh.sh  # dev-setup + one make target
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOP="$(cd "$HERE/.." && pwd)"
[ "$(id -u)" = 0 ] || { echo "check-fresh needs root (debootstrap, chroot, mounts)" >&2; exit 1; }

RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}"
CARGO_BIN="$(dirname "$(command -v cargo)")"
[ -d "$RUSTUP_HOME/toolchains" ] || { echo "no rustup toolchains under $RUSTUP_HOME" >&2; exit 1; }

# Debian mirror: whatever this machine's apt uses (never written down here).
mirror() {
  local m=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    m=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
    m=$(awk '$1=="deb"{for(i=2;i<=NF;i++) if($i ~ /^http/){print $i; exit}}' /etc/apt/sources.list)
  fi
  [ -n "$m" ] || { echo "cannot determine the Debian mirror from apt's config" >&2; return 1; }
  echo "$m"
}

WORK="$(mktemp -d /var/tmp/hologram-fresh.XXXXXX)"
ROOT="$WORK/root"
LOG="$WORK/check-fresh.log"
cleanup() {
  local rc=$?
  if [ "${KEEP:-0}" = 1 ]; then
    echo "kept $WORK"
  else
    # the namespaces are gone, so nothing is mounted below ROOT any more
    if grep -q " $ROOT" /proc/self/mountinfo; then
      echo "mounts left below $ROOT; not removing it" >&2
    else
      rm -rf "$WORK"
    fi
  fi
  exit $rc
}
trap cleanup EXIT

t0=$SECONDS
echo "== debootstrap bookworm (minbase) into $ROOT"
debootstrap --variant=minbase bookworm "$ROOT" "$(mirror)" >"$WORK/debootstrap.log" 2>&1 ||
  { tail -20 "$WORK/debootstrap.log"; exit 1; }
echo "   $((SECONDS - t0)) s"

echo "== the repository (HEAD) and ../shared beside it"
mkdir -p "$ROOT/work"
# The commit is fixed before cloning: a commit made meanwhile is not in
# the clone.
REV="$(git -C "$TOP" rev-parse HEAD)"
git clone -q "$TOP" "$ROOT/work/main"
git -C "$ROOT/work/main" checkout -q "$REV"
echo "   at $REV"
if [ -d "$TOP/../shared" ]; then
  cp -a "$TOP/../shared" "$ROOT/work/shared"
  chmod -R a-w "$ROOT/work/shared"
fi
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# The network's own trust anchors (a site CA that HTTPS egress goes through,
# as on this machine) belong to the machine, not to the project: carry over
# what the administrator installed locally.
mkdir -p "$ROOT/usr/local/share/ca-certificates"
cp -a /usr/local/share/ca-certificates/. "$ROOT/usr/local/share/ca-certificates/" 2>/dev/null || true
mkdir -p "$ROOT/root/.rustup" "$ROOT/root/.cargo/bin"
cp -a "$CARGO_BIN/." "$ROOT/root/.cargo/bin/"

which="${ONLY:-both}"
inner=$(cat <<'INNER'
set -euo pipefail
export HOME=/root RUSTUP_HOME=/root/.rustup CARGO_HOME=/root/.cargo
export PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
echo "== the README's prerequisites: make, git, a C compiler, Rust (rustup)"
apt-get update -qq
apt-get install -y -qq make git gcc libc6-dev ca-certificates >/dev/null
update-ca-certificates >/dev/null
cargo --version
cd /work/main
t=$SECONDS
case "$WHICH" in both|demo|test) ;; *)
  # ONLY=TARGET: dev-setup, then that one make target (a quicker check).
  echo "== make dev-setup $WHICH"
  make dev-setup "$WHICH"
  echo "== make $WHICH: ok in $((SECONDS - t)) s"
  exit 0 ;;
esac
if [ "$WHICH" != test ]; then
  echo "== make demo"
  make demo
  echo "== make demo: ok in $((SECONDS - t)) s"
fi
t=$SECONDS
if [ "$WHICH" != demo ]; then
  echo "== make test"
  make test
  echo "== make test: ok in $((SECONDS - t)) s"
fi
INNER
)

echo "== inside (private mount + PID namespaces); log: $LOG"
set +e
unshare --mount --pid --fork --propagation private bash -euo pipefail -c '
  R="$1"
  # The new root becomes "/" of this mount namespace (pivot_root), as on a
  # real machine: runc needs "/" to be a mount it can make a slave.
  mount --bind "$R" "$R"
  mount -t proc proc "$R/proc"
  mount --rbind /sys "$R/sys"
  mount --rbind /dev "$R/dev"
  mount -t tmpfs tmpfs "$R/run"
  mount --bind -o ro "$2" "$R/root/.rustup"
  cd "$R"
  mkdir -p .old-root
  pivot_root . .old-root
  umount -l /.old-root
  rmdir /.old-root
  exec env WHICH="$3" bash -c "$4"
' _ "$ROOT" "$RUSTUP_HOME" "$which" "$inner" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
set -e
echo "== check-fresh: exit $rc after $((SECONDS - t0)) s"
exit "$rc"
