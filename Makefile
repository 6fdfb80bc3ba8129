# hologram-snapshotter — every target here really runs; see README.md.
SHELL := /bin/bash
CARGO ?= cargo
BUILD := build
BINS := hologram-snapshotter hologram-fdstore hologram
PREFIX ?= /usr/local
APT_PKGS := containerd runc fuse3 docker-registry skopeo umoci busybox-static iproute2 curl python3 \
  python3-prometheus-client ca-certificates stargz-snapshotter debootstrap stress-ng git \
  apache2-utils python3-jsonschema python3-yaml chromium chromium-driver binutils procps \
  g++
# Another apt (unattended upgrades, a parallel job) may hold the dpkg lock:
# wait for it instead of failing.
APT_GET := apt-get -o DPkg::Lock::Timeout=600
# The Rust toolchain is not a Debian package here (bookworm's rustc is too old):
# it comes from rustup; this is the oldest the workspace builds with.
RUST_MIN := $(shell sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)

PHONY_EXTRA := validate-deploy docker-build docker-run
.PHONY: $(PHONY_EXTRA)
.PHONY: all build build-all install check-toolchain dev-setup check-fresh soak fuzz fuzz-smoke test test-unit test-integration test-coverage fmt lint vet security demo bench bench-setup bench-lazy bench-quick clean

all: build

## build: release binaries into build/
build:
	$(CARGO) build --release --locked --bins
	@mkdir -p $(BUILD)
	@for b in $(BINS); do cp target/release/$$b $(BUILD)/; done
	@echo "built: $(addprefix $(BUILD)/,$(BINS))"

## build-all: every target whose standard library this toolchain has installed
## (here only x86_64-unknown-linux-gnu; rustup cannot download more offline)
build-all:
	@for t in $$(rustup target list --installed 2>/dev/null || rustc -vV | sed -n 's/^host: //p'); do \
	  echo "== $$t"; \
	  $(CARGO) build --release --locked --bins --target $$t || exit 1; \
	  mkdir -p $(BUILD)/$$t; for b in $(BINS); do cp target/$$t/release/$$b $(BUILD)/$$t/; done; \
	done

## install: binaries, systemd unit, default config, containerd snippet
install: build
	install -D -m 0755 $(BUILD)/hologram-snapshotter $(DESTDIR)$(PREFIX)/bin/hologram-snapshotter
	install -D -m 0755 $(BUILD)/hologram-fdstore $(DESTDIR)$(PREFIX)/bin/hologram-fdstore
	install -D -m 0755 $(BUILD)/hologram $(DESTDIR)$(PREFIX)/bin/hologram
	install -D -m 0644 packaging/hologram-snapshotter.service $(DESTDIR)/etc/systemd/system/hologram-snapshotter.service
	@if [ -e $(DESTDIR)/etc/hologram-snapshotter/config.toml ]; then \
	  echo "keeping existing /etc/hologram-snapshotter/config.toml"; \
	else install -D -m 0644 packaging/config.toml $(DESTDIR)/etc/hologram-snapshotter/config.toml; fi
	install -D -m 0644 packaging/containerd-snippet.toml $(DESTDIR)/etc/hologram-snapshotter/containerd-snippet.toml
	@echo "Add /etc/hologram-snapshotter/containerd-snippet.toml to /etc/containerd/config.toml, then:"
	@echo "  systemctl daemon-reload && systemctl enable --now hologram-snapshotter && systemctl restart containerd"

## check-toolchain: cargo present and at least rust-version (fails early, says how to fix)
check-toolchain:
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust >= $(RUST_MIN) with rustup (Debian 12's rustc is too old), then open a new shell"; exit 1; }
	@have=$$($(CARGO) --version | awk '{print $$2}'); \
	if [ "$$(printf '%s\n%s\n' "$(RUST_MIN)" "$$have" | sort -V | head -1)" != "$(RUST_MIN)" ]; then \
	  echo "cargo $$have is too old: this workspace needs Rust >= $(RUST_MIN) (rustup update stable)"; exit 1; \
	fi

## dev-setup: the Debian packages the tests and the demo use (idempotent)
dev-setup: check-toolchain
	@missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  $(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq $$missing; \
	else echo "dev-setup: all packages present"; fi
	@# the python3 first on PATH may not be Debian's (pyenv): give it the parser the tests use
	@python3 -c 'import prometheus_client' 2>/dev/null || python3 -m pip install -q prometheus-client

## test: everything: unit, gRPC-level and end-to-end (real containerd, runc,
## registry), then a short run of every fuzz target
test: dev-setup test-unit validate-deploy test-integration fuzz-smoke

## validate-deploy: deploy/ manifests against strict schemas, TOML files parse
validate-deploy:
	@# Debian's python3: dev-setup installs its jsonschema and yaml (a pyenv python3
	@# first on PATH may lack them)
	/usr/bin/python3 scripts/validate-deploy.py deploy

test-unit:
	$(CARGO) test --locked --workspace --exclude hologram-e2e

## fuzz: each fuzz target for FUZZ_SECONDS (cargo fuzz, nightly; see fuzz/README.md)
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := labels toc_region index_json oci_documents ctp96_frames
fuzz:
	@rustup toolchain list 2>/dev/null | grep -q '^nightly' || { echo "make fuzz needs a nightly toolchain (rustup toolchain install nightly)"; exit 1; }
	@command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	@for t in $(FUZZ_TARGETS); do \
	  echo "== fuzz $$t ($(FUZZ_SECONDS) s)"; \
	  mkdir -p target/fuzz-corpus/$$t; \
	  (cd fuzz && $(CARGO) +nightly fuzz run $$t ../target/fuzz-corpus/$$t corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -print_final_stats=1) || exit 1; \
	done

## fuzz-smoke: 20 s of each fuzz target when a nightly toolchain is present
## (the corpus is replayed on stable by the crates' tests either way)
fuzz-smoke:
	@if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then \
	  $(MAKE) --no-print-directory fuzz FUZZ_SECONDS=20; \
	else echo "fuzz-smoke: no nightly toolchain; the corpus replays ran in test-unit"; fi

## soak: `make test` N times (default 5) in a row with 2 CPU hogs running
## (stress-ng), stopping at the first failure; flakes show up here
SOAK_RUNS ?= 5
soak: dev-setup
	scripts/soak.sh $(SOAK_RUNS)

## check-fresh: the README's two commands in a clean Debian 12 root made with
## debootstrap (only the Rust toolchain is copied in): proves `make demo` and
## `make test` install everything they need. Slow (fresh apt, build, tests).
check-fresh: dev-setup
	scripts/check-fresh.sh

## test-integration: real containerd + runc + docker-registry + the daemon (needs root)
test-integration: dev-setup
	@[ "$$(id -u)" = 0 ] || { echo "test-integration needs root (containerd, mounts)"; exit 1; }
	$(CARGO) build --locked --bins
	HOLOGRAM_SNAPSHOTTER_BIN=$(CURDIR)/target/debug/hologram-snapshotter \
	  $(CARGO) test --locked -p hologram-e2e -- --test-threads=1

## test-coverage: line coverage of the unit and gRPC-level tests with
## cargo-tarpaulin (built from crates.io on first use); the end-to-end suite
## runs the daemon under containerd, where ptrace-based coverage does not reach
test-coverage: dev-setup
	@command -v cargo-tarpaulin >/dev/null || $(CARGO) install --locked cargo-tarpaulin
	$(CARGO) tarpaulin --workspace --exclude hologram-e2e --exclude hologram-bench \
	  --exclude-files 'target/*' --out Stdout --skip-clean --target-dir target/tarpaulin -- --test-threads=1

fmt:
	$(CARGO) fmt --all

## lint: clippy on everything, warnings are errors
lint:
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

## vet: formatting, type checks of every target, documentation builds without warnings
vet:
	$(CARGO) fmt --all -- --check
	$(CARGO) check --locked --workspace --all-targets
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --locked --workspace --no-deps

## security: offline dependency and unsafe audit (see docs/SECURITY.md)
security:
	@command -v cargo-deny >/dev/null || $(CARGO) install --locked cargo-deny
	$(CARGO) deny check licenses bans sources
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings -D clippy::undocumented_unsafe_blocks
	scripts/unsafe-audit.sh

## docker-build: the daemon's image from deploy/Containerfile with umoci (no
## container engine, no base image): build/image/oci (OCI layout, tag dev) and
## build/image/hologram-snapshotter.tar (OCI archive, localhost/hologram-snapshotter:dev)
docker-build: dev-setup build
	@for t in umoci skopeo objcopy; do command -v $$t >/dev/null || { echo "docker-build: $$t missing: run make dev-setup"; exit 1; }; done
	scripts/docker-build.sh

## docker-run: that image under a private containerd as the DaemonSet runs it
## (privileged, host network, /dev/fuse, rshared root, socket dir, config),
## serving that containerd a lazy pull and run from a private registry (root)
docker-run: dev-setup docker-build
	@[ "$$(id -u)" = 0 ] || { echo "docker-run needs root (containerd, mounts)"; exit 1; }
	scripts/docker-run.sh

## demo: registry + containerd + snapshotter, pull and run a 3-layer image
demo: dev-setup build
	scripts/demo.sh

## bench: everything `make bench-lazy` does, plus Prepare+Commit latency,
## the loopback cold start, the FUSE read path (hologram vs containerd's
## overlayfs, each measured in the same run) and the criterion
## micro-benchmarks (see docs/BENCHMARKS.md)
BENCH_PKGS := golang-go python3-pip fonts-dejavu-core iproute2
bench-setup: dev-setup
	@missing=$$(for p in $(BENCH_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then $(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq $$missing; fi

bench: bench-setup build
	cargo build --release --locked -p hologram-bench
	scripts/bench-snapshots.sh
	scripts/bench-coldstart.sh
	scripts/bench-read.sh
	cargo bench --locked -p hologram-bench --bench micro
	scripts/bench_lazy.py $(BENCH_ARGS)

## bench-lazy: cold start / warm re-run of python, big and gcc over a shaped
## link (tbf 200 Mbit/s + 10 ms delay line), overlayfs vs hologram (background
## fetch on/off, recorded and learned profiles); tables and PNG charts into docs/bench/
bench-lazy: bench-setup build
	cargo build --release --locked -p hologram-bench
	scripts/bench_lazy.py $(BENCH_ARGS)

## bench-quick: the python workload once, overlayfs vs hologram (< 15 min)
bench-quick: bench-setup build
	cargo build --release --locked -p hologram-bench
	scripts/bench_lazy.py --quick

clean:
	$(CARGO) clean
	rm -rf $(BUILD)
