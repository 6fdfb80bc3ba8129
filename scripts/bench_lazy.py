#!/usr/bin/env python3
"""Cold start and warm re-runs of real workloads, lazily pulled over a shaped
link, side by side with containerd's overlayfs snapshotter in the same run.

The link: ../shared/scenarios/netreg.sh (a registry in a network namespace
behind tbf 200 Mbit/s and a 10 ms delay line each way). The workloads:
python (print), big (import numpy), gcc (compile and run hello.c), built
locally (../shared/scenarios/{python,big}.sh, scripts/scenario-gcc.sh).

Each sample starts from nothing: a fresh containerd and a fresh daemon with
empty caches. Modes are interleaved run by run. Measured: wall time from
the start of the pull to the workload's first output line, bytes received
over the link until then (and until the stack stops), the daemon's range
requests (its /metrics), peak RSS and CPU of the daemon, and a warm re-run
(a second container of the same image on the same node).

Usage: bench_lazy.py [--quick] [--runs N] [--workloads a,b] [--modes a,b]
                     [--out docs/bench]
Writes OUT/results.json (every sample), OUT/results.md (the table) and,
through `bench-plot`, OUT/*.png. Progress goes to stderr as it runs.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCEN = os.path.join(os.path.dirname(TOP), "shared", "scenarios")
BIN = os.environ.get("HOLOGRAM_BIN_DIR", os.path.join(TOP, "build"))
REG = os.environ.get("BENCH_REGISTRY", "10.213.0.2:5000")
IMAGES = os.environ.get("BENCH_IMAGES", "/var/tmp/holo-images")
HOST_IF = os.environ.get("HOST_IF", "holo-h")
NS = "bench"
# The CTP-96 server runs inside netreg.sh's namespace, in front of the same
# registry, behind its own delay line: the same link as the registry's.
NETNS = os.environ.get("NETREG_NS", "holoreg")
# BENCH_RERECORD=1: convert --record the profiled images again.
RERECORD = os.environ.get("BENCH_RERECORD") == "1"
DELAYPROXY = os.environ.get("DELAYPROXY", "/var/tmp/holo-scenarios-bin/delayproxy")
CTP96_LISTEN = os.environ.get("BENCH_CTP96", "10.213.0.2:7000")

HELLO_C = r'#include <stdio.h>\nint main(void){puts("hello from gcc");return 0;}\n'
WORKLOADS = {
    "python": {"repo": "holo/python", "expect": r"^hello$", "cmd": None},
    "big": {"repo": "holo/big", "expect": r"^\d+\.\d+", "cmd": None},
    "gcc": {
        "repo": "holo/gcc",
        "expect": r"^hello from gcc$",
        "cmd": ["/bin/sh", "-c",
                "printf '" + HELLO_C + "' > /tmp/h.c && gcc -O2 -o /tmp/h /tmp/h.c && /tmp/h"],
    },
}
MODES = {
    # name: (snapshotter, image tag, daemon environment)
    "overlayfs": ("overlayfs", "gzip", {}),
    "hologram": ("hologram", "esgz", {}),
    "hologram-nobg": ("hologram", "esgz", {"HOLOGRAM_BACKGROUND_FETCH": "0"}),
    "hologram-profiled": ("hologram", "esgz-rec", {}),
    # The plain image, with the profiles a first run learned (on a node of
    # its own, then given to this one through [profiles] shared_dirs).
    "hologram-learned": ("hologram", "esgz", {}),
    "hologram-ctp96": ("hologram", "esgz", {"HOLOGRAM_NET": "ctp96",
                                          "HOLOGRAM_CTP96_ENDPOINT": f"http://{CTP96_LISTEN}"}),
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, **kw):
    kw.setdefault("check", True)
    return subprocess.run(cmd, **kw)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(what, secs, check):
    end = time.monotonic() + secs
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            pass
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def rx_bytes():
    with open(f"/sys/class/net/{HOST_IF}/statistics/rx_bytes") as f:
        return int(f.read())


def layer_bytes(ref):
    """Sum of the compressed layer sizes of `ref` (repo:tag) in the registry."""
    repo, tag = ref.rsplit(":", 1)
    req = urllib.request.Request(
        f"http://{REG}/v2/{repo}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json,"
                           "application/vnd.docker.distribution.manifest.v2+json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return sum(l["size"] for l in json.load(r)["layers"])


def manifest_exists(ref):
    repo, tag = ref.rsplit(":", 1)
    req = urllib.request.Request(
        f"http://{REG}/v2/{repo}/manifests/{tag}", method="HEAD",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json,"
                           "application/vnd.docker.distribution.manifest.v2+json"})
    try:
        with urllib.request.urlopen(req, timeout=10):
            return True
    except Exception:  # noqa: BLE001
        return False


def ensure_link():
    try:
        urllib.request.urlopen(f"http://{REG}/v2/", timeout=3)
    except Exception:  # noqa: BLE001
        log("== starting the shaped registry link (netreg.sh start)")
        run([os.path.join(SCEN, "netreg.sh"), "start"])


def ensure_images(workloads, modes):
    for w in workloads:
        repo = WORKLOADS[w]["repo"]
        if not manifest_exists(f"{repo}:gzip"):
            log(f"== building and pushing the {w} image (first time: minutes)")
            if w == "gcc":
                run([os.path.join(TOP, "scripts", "scenario-gcc.sh"), IMAGES])
                run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                     f"oci:{IMAGES}/oci-gcc:gcc", f"docker://{REG}/{repo}:gzip"])
            else:
                run([os.path.join(SCEN, "publish.sh"), IMAGES, w])
        if not manifest_exists(f"{repo}:esgz"):
            log(f"== hologram convert {repo}:gzip -> :esgz")
            run([os.path.join(BIN, "hologram"), "convert", "--plain-http",
                 f"{REG}/{repo}:gzip", f"{REG}/{repo}:esgz"], stdout=subprocess.DEVNULL)
        if "hologram-profiled" in modes and (RERECORD or not manifest_exists(f"{repo}:esgz-rec")):
            log(f"== hologram convert --record {repo}:gzip -> :esgz-rec")
            cmd = WORKLOADS[w]["cmd"]
            # `--record=`: the image's own command (a bare `--record` would
            # take SOURCE as the command).
            # convert runs the command with /bin/sh -c itself.
            if cmd and cmd[:2] == ["/bin/sh", "-c"]:
                cmd = cmd[2:]
            rec = ["--record=" + (" ".join(cmd) if cmd else "")]
            run([os.path.join(BIN, "hologram"), "convert", "--plain-http", *rec,
                 f"{REG}/{repo}:gzip", f"{REG}/{repo}:esgz-rec"], stdout=subprocess.DEVNULL)


class Ctp96Server:
    """`hologram ctp96 serve --upstream` the shaped registry, inside its
    network namespace, reached through a delay line like the registry's.
    Its blob cache persists across samples, as a cluster's server would."""

    def __init__(self):
        self.work = tempfile.mkdtemp(prefix="hologram-bench-ctp96.", dir="/var/tmp")
        reg_inner = "127.0.0.1:5001"  # netreg.sh: the registry behind its delay line
        host, port = CTP96_LISTEN.rsplit(":", 1)
        inner = f"127.0.0.1:{int(port) + 1}"
        self.procs = [
            subprocess.Popen(
                ["ip", "netns", "exec", NETNS, os.path.join(BIN, "hologram"), "ctp96", "serve",
                 "--listen", inner, "--upstream", f"http://{reg_inner}", "--cache", f"{self.work}/cache"],
                stdout=subprocess.DEVNULL, stderr=open(f"{self.work}/ctp96.log", "w")),
            subprocess.Popen(
                ["ip", "netns", "exec", NETNS, DELAYPROXY, "-listen", CTP96_LISTEN, "-target", inner,
                 "-delay", os.environ.get("DELAY", "10ms")],
                stdout=subprocess.DEVNULL, stderr=open(f"{self.work}/delayproxy.log", "w")),
        ]

        def up():
            with socket.create_connection((host, int(port)), timeout=2):
                return True
        wait_for("the CTP-96 server", 30, up)

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        shutil.rmtree(self.work, ignore_errors=True)


class Stack:
    """A fresh containerd + hologram-snapshotter under a temp directory."""

    def __init__(self, env, extra=""):
        self.work = tempfile.mkdtemp(prefix="hologram-bench.", dir="/var/tmp")
        self.procs = []
        self.metrics = f"127.0.0.1:{free_port()}"
        conf = os.path.join(self.work, "hologram.toml")
        with open(conf, "w") as f:
            f.write("[remote]\nplain_http = true\n" + extra)
        denv = dict(os.environ, **env)
        self.daemon = subprocess.Popen(
            [os.path.join(BIN, "hologram-snapshotter"), "--root", f"{self.work}/hologram",
             "--address", f"{self.work}/h.sock", "--config", conf,
             "--metrics-address", self.metrics],
            stdout=subprocess.DEVNULL, stderr=open(f"{self.work}/hologram.log", "w"), env=denv)
        self.procs.append(self.daemon)
        wait_for("hologram-snapshotter", 30, lambda: os.path.exists(f"{self.work}/h.sock"))
        with open(f"{self.work}/containerd.toml", "w") as f:
            f.write(f"""version = 2
root = "{self.work}/containerd/root"
state = "{self.work}/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{self.work}/c.sock"
[proxy_plugins.hologram]
  type = "snapshot"
  address = "{self.work}/h.sock"
""")
        self.containerd = subprocess.Popen(
            ["containerd", "--config", f"{self.work}/containerd.toml"],
            stdout=subprocess.DEVNULL, stderr=open(f"{self.work}/containerd.log", "w"))
        self.procs.append(self.containerd)
        self.ctr = ["ctr", "--address", f"{self.work}/c.sock", "--namespace", NS]
        wait_for("containerd", 30, lambda: run(self.ctr + ["version"], capture_output=True).returncode == 0)

    def daemon_stats(self):
        pid = self.daemon.pid
        with open(f"/proc/{pid}/status") as f:
            hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks
        return hwm * 1024, cpu

    def _metric_sum(self, prefix):
        try:
            text = urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=5).read().decode()
        except Exception:  # noqa: BLE001
            return None
        return int(sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(prefix)))

    def fetches(self):
        return self._metric_sum("hologram_remote_fetches_total{")

    def ctp96_round_trips(self):
        """Batched `fetch` calls over CTP-96 (each one round trip)."""
        try:
            text = urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=5).read().decode()
        except Exception:  # noqa: BLE001
            return None
        return int(sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                       if l.startswith("hologram_ctp96_operations_total{") and 'op="fetch"' in l))

    def fuse_requests(self):
        """FUSE requests the daemon answered so far (every op)."""
        return self._metric_sum("hologram_fuse_operations_total{")

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        pidf = f"{self.work}/hologram/fdstore.pid"
        if os.path.exists(pidf):
            pid = int(open(pidf).read().strip())
            try:
                if b"hologram-fdstore" in open(f"/proc/{pid}/cmdline", "rb").read():
                    os.kill(pid, signal.SIGKILL)
                    wait_for("the fd holder", 10, lambda: not os.path.exists(f"/proc/{pid}"))
            except OSError:
                pass
        mounts = [l.split()[4] for l in open("/proc/self/mountinfo") if l.split()[4].startswith(self.work + "/")]
        for m in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", m], check=False)
        shutil.rmtree(self.work, ignore_errors=True)


def first_line(cmd, expect, timeout=600):
    """Runs cmd; returns (seconds to the first stdout line, that line)."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    t = time.monotonic() - t0
    rest, err = p.communicate(timeout=timeout)
    if p.returncode != 0 or not re.search(expect, line):
        raise SystemExit(f"unexpected output from {' '.join(cmd)}: {line!r} {rest!r} {err!r}")
    return t, line


LEARNED = {}


def learn(workload):
    """Runs the workload once on a node of its own (a fresh stack) and keeps
    the prefetch profiles the daemon learned; returns their directory."""
    if workload in LEARNED:
        return LEARNED[workload]
    w = WORKLOADS[workload]
    ref = f"{REG}/{w['repo']}:esgz"
    keep = tempfile.mkdtemp(prefix=f"hologram-bench-profiles.{workload}.", dir="/var/tmp")
    st = Stack({})
    try:
        run([os.path.join(BIN, "hologram"), "pull", "--address", f"{st.work}/c.sock", "-n", NS,
             "--snapshotter-socket", f"{st.work}/h.sock", "--plain-http", ref],
            stdout=subprocess.DEVNULL)
        first_line(st.ctr + ["run", "--rm", "--snapshotter", "hologram", ref, "learn"] + (w["cmd"] or []),
                   w["expect"])
        # A stopping daemon stores what its layers learned.
        st.daemon.send_signal(signal.SIGTERM)
        st.daemon.wait(30)
        src = f"{st.work}/hologram/profiles"
        for name in os.listdir(src):
            if name.endswith(".json"):
                shutil.copy(os.path.join(src, name), keep)
    finally:
        st.stop()
    log(f"learned {len(os.listdir(keep))} profiles for {workload} in {keep}")
    LEARNED[workload] = keep
    return keep


def sample(workload, mode, run_no, extra=""):
    snap, tag, env = MODES[mode]
    w = WORKLOADS[workload]
    ref = f"{REG}/{w['repo']}:{tag}"
    if mode == "hologram-learned":
        extra += f"\n[profiles]\nshared_dirs = [{json.dumps(learn(workload))}]\n"
    st = Stack(env, extra)
    try:
        b0, t0 = rx_bytes(), time.monotonic()
        if snap == "overlayfs":
            run(st.ctr + ["images", "pull", "--plain-http", "--snapshotter", "overlayfs", ref],
                stdout=subprocess.DEVNULL)
        else:
            run([os.path.join(BIN, "hologram"), "pull", "--address", f"{st.work}/c.sock", "-n", NS,
                 "--snapshotter-socket", f"{st.work}/h.sock", "--plain-http", ref],
                stdout=subprocess.DEVNULL)
        t_pull = time.monotonic() - t0
        cmd = st.ctr + ["run", "--rm", "--snapshotter", snap, ref, f"cold{run_no}"] + (w["cmd"] or [])
        t_run, _ = first_line(cmd, w["expect"])
        cold = t_pull + t_run  # wall time from the pull's start to the first output
        bytes_first = rx_bytes() - b0
        fetches = st.fetches() if snap == "hologram" else None
        if "HOLOGRAM_NET" in env:
            fetches = st.ctp96_round_trips()
        before = st.fuse_requests() if snap == "hologram" else None
        cmd = st.ctr + ["run", "--rm", "--snapshotter", snap, ref, f"warm{run_no}"] + (w["cmd"] or [])
        warm, _ = first_line(cmd, w["expect"])
        warm_fuse = (st.fuse_requests() - before) if before is not None else None
        rss, cpu = st.daemon_stats()
        bytes_total = rx_bytes() - b0
        # Then until every layer's whole-layer check is done (background
        # fetch on): all the bytes a lazily pulled image ever costs.
        bytes_checked = None
        if snap == "hologram" and env.get("HOLOGRAM_BACKGROUND_FETCH") != "0":
            def checked():
                layers = st._metric_sum("hologram_mounted_layers ")
                done = st._metric_sum('hologram_layer_checks_total{result="verified"}')
                return layers is not None and done is not None and done >= layers > 0
            try:
                wait_for("the layer checks", 600, checked)
                bytes_checked = rx_bytes() - b0
            except SystemExit as e:
                log(f"{e}: no checked-bytes figure for this run")
        return {"workload": workload, "mode": mode, "run": run_no, "cold_s": cold, "pull_s": t_pull,
                "layer_bytes": layer_bytes(f"{w['repo']}:{tag}"),
                "bytes_first": bytes_first, "bytes_total": bytes_total, "bytes_checked": bytes_checked,
                "fetches": fetches,
                "warm_s": warm, "warm_fuse_requests": warm_fuse, "daemon_peak_rss": rss, "daemon_cpu_s": cpu}
    finally:
        st.stop()


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def table(samples, workloads, modes):
    out = ["| workload | mode | cold to first output, s (median, min–max) | × overlayfs | MB before output | MB total | until checked, × layers | range requests (CTP-96: batched fetches) | warm re-run, s | warm × overlayfs | FUSE requests in the warm run | daemon peak RSS, MiB | daemon CPU, s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for w in workloads:
        base = [s for s in samples if s["workload"] == w and s["mode"] == "overlayfs"]
        bc, bw = median([s["cold_s"] for s in base]), median([s["warm_s"] for s in base])
        for m in modes:
            ss = [s for s in samples if s["workload"] == w and s["mode"] == m]
            if not ss:
                continue
            c = [s["cold_s"] for s in ss]
            mc, mw = median(c), median([s["warm_s"] for s in ss])
            hologram = MODES[m][0] == "hologram"
            f = median([s["fetches"] for s in ss]) if hologram else None
            wf = median([s.get("warm_fuse_requests") for s in ss]) if hologram else None
            ratios = [s["bytes_checked"] / s["layer_bytes"] for s in ss
                      if s.get("bytes_checked") and s.get("layer_bytes")]
            out.append("| {} | {} | {:.2f} ({:.2f}–{:.2f}) | {} | {:.1f} | {:.1f} | {} | {} | {:.3f} | {} | {} | {} | {} |".format(
                w, m, mc, min(c), max(c),
                f"{mc / bc:.2f}" if bc else "—",
                median([s["bytes_first"] for s in ss]) / 1e6,
                median([s["bytes_total"] for s in ss]) / 1e6,
                f"{median(ratios):.3f}" if ratios else "—",
                f"{f:.0f}" if f is not None else "—",
                mw, f"{mw / bw:.2f}" if bw else "—",
                f"{wf:.0f}" if wf is not None else "—",
                f"{median([s['daemon_peak_rss'] for s in ss]) / 2**20:.0f}" if hologram else "—",
                f"{median([s['daemon_cpu_s'] for s in ss]):.2f}" if hologram else "—"))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="python only, 1 run, overlayfs vs hologram (< 15 min)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workloads", default="python,big,gcc")
    ap.add_argument("--modes", default="overlayfs,hologram,hologram-nobg,hologram-profiled,hologram-learned,hologram-ctp96")
    ap.add_argument("--out", default=os.path.join(TOP, "docs", "bench"))
    ap.add_argument("--remote-config", default="",
                    help="extra [remote] keys for the daemon, e.g. 'readaround_kib = 64' (experiments)")
    a = ap.parse_args()
    workloads = a.workloads.split(",")
    modes = a.modes.split(",")
    if a.quick:
        workloads, modes, a.runs = ["python"], ["overlayfs", "hologram"], 1
    for w in workloads:
        if w not in WORKLOADS:
            raise SystemExit(f"unknown workload {w}")
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"unknown mode {m}")
    os.makedirs(a.out, exist_ok=True)
    ensure_link()
    ensure_images(workloads, modes)
    samples = []
    total = a.runs * len(workloads) * len(modes)
    started = time.monotonic()
    ctp96 = Ctp96Server() if "hologram-ctp96" in modes else None
    try:
        for r in range(1, a.runs + 1):
            for w in workloads:
                for m in modes:
                    s = sample(w, m, r, a.remote_config.replace("\\n", "\n") + "\n")
                    samples.append(s)
                    log(f"[{len(samples)}/{total}, {time.monotonic() - started:.0f} s] {w} {m} run {r}: "
                        f"cold {s['cold_s']:.2f} s, {s['bytes_first'] / 1e6:.1f} MB before output "
                        f"({s['bytes_total'] / 1e6:.1f} MB total), warm {s['warm_s']:.3f} s")
    finally:
        if ctp96:
            ctp96.stop()
        for d in LEARNED.values():
            shutil.rmtree(d, ignore_errors=True)
    machine = f"{platform.node()}: {os.cpu_count()} CPUs, Linux {platform.release()}"
    doc = {"machine": machine, "link": "tbf 200 Mbit/s + 10 ms delay line each way (netreg.sh)",
           "command": " ".join(["scripts/bench_lazy.py"] + sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "samples": samples}
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(doc, f, indent=1)
    md = table(samples, workloads, modes)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(f"{doc['date']}, {machine}; link: {doc['link']}; `{doc['command']}`; "
                f"median of {a.runs}\n\n{md}\n")
    print(md)
    # docs/BENCHMARKS.md shows the latest full run (between its markers).
    bench_md = os.path.join(TOP, "docs", "BENCHMARKS.md")
    if os.path.abspath(a.out) == os.path.join(TOP, "docs", "bench") and os.path.exists(bench_md):
        text = open(bench_md).read()
        start, end = "<!-- results -->", "<!-- /results -->"
        if start in text and end in text:
            head, rest = text.split(start, 1)
            _, tail = rest.split(end, 1)
            body = open(os.path.join(a.out, "results.md")).read()
            with open(bench_md, "w") as f:
                f.write(f"{head}{start}\n{body}{end}{tail}")
            log(f"updated {bench_md}")
    plot = os.path.join(TOP, "target", "release", "bench-plot")
    if os.path.exists(plot):
        run([plot, os.path.join(a.out, "results.json"), a.out])
    else:
        log(f"no {plot}: charts skipped (cargo build --release -p hologram-bench)")


if __name__ == "__main__":
    main()
