// The node's page: polls /api/v1/node every second and renders it.
//
// Everything shown comes from images (references, annotations, reasons
// that quote them) or from the daemon's log, and is attacker input: it is
// only ever put on the page as text nodes (textContent) or attribute
// values set with setAttribute. Nothing here parses HTML (no innerHTML,
// insertAdjacentHTML, document.write or eval), and the page's
// Content-Security-Policy allows no inline script.
"use strict";

(function () {
  const API = "/api/v1/node";
  const PERIOD_MS = 1000;
  const SVG_NS = "http://www.w3.org/2000/svg";

  function $(id) {
    return document.getElementById(id);
  }

  // el("td", {class: "x", "data-mode": "lazy"}, "text", otherNode, ...)
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) e.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function setText(id, text) {
    const e = $(id);
    if (e) e.textContent = text;
  }

  function bytes(n) {
    if (typeof n !== "number" || !isFinite(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let u = 0;
    let v = Math.max(0, n);
    while (v >= 1024 && u + 1 < units.length) {
      v /= 1024;
      u++;
    }
    return u === 0 ? v.toFixed(0) + " B" : v.toFixed(1) + " " + units[u];
  }

  function duration(s) {
    s = Math.max(0, Math.floor(s || 0));
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d > 0) return d + "d " + h + "h";
    if (h > 0) return h + "h " + m + "m";
    if (m > 0) return m + "m " + (s % 60) + "s";
    return s + "s";
  }

  function clock(unix) {
    const t = new Date(unix * 1000);
    return t.toLocaleTimeString();
  }

  function shortDigest(d) {
    if (typeof d !== "string") return "";
    const m = /^sha256:([0-9a-f]{12})/.exec(d);
    return m ? "sha256:" + m[1] + "…" : d;
  }

  function sum(obj) {
    return Object.values(obj || {}).reduce((a, b) => a + (Number(b) || 0), 0);
  }

  function listOf(obj) {
    const parts = Object.entries(obj || {}).map(([k, v]) => k + " " + v);
    return parts.length ? parts.join(", ") : "none";
  }

  // ----------------------------------------------------------- summary --

  function renderSummary(s) {
    setText("version", "v" + (s.daemon_version || "?"));
    setText("s-mounted", String(s.mounted_layers));
    const t = s.transfer || {};
    const fetched = sum(t.fetched_bytes);
    const bySource = Object.entries(t.fetched_bytes || {})
      .filter(([, v]) => v > 0)
      .map(([k, v]) => k + " " + bytes(v));
    setText("s-fetched", bytes(fetched) + (bySource.length ? " (" + bySource.join(", ") + ")" : ""));
    setText("s-read", bytes(t.read_bytes));
    const c = s.cache || {};
    setText("s-cache", bytes(c.bytes) + " of " + bytes(c.limit_bytes));
    const bar = $("s-cache-bar");
    bar.max = Math.max(1, c.limit_bytes || 0);
    bar.value = Math.min(bar.max, c.bytes || 0);
    setText("s-hits", c.hit_ratio === null || c.hit_ratio === undefined
      ? "– (no lookups)"
      : (100 * c.hit_ratio).toFixed(1) + "% of " + (c.hits + c.misses));
    setText("s-background", bytes(t.prefetch_bytes) + " prefetched, " + bytes(t.background_bytes) +
      " in background, " + (t.background_pending_chunks || 0) + " chunks to go");
    const k = s.checks || {};
    setText("s-verify", String(k.chunk_verification_failures || 0));
    $("s-verify").dataset.bad = (k.chunk_verification_failures || 0) > 0 ? "1" : "0";
    setText("s-checks", (k.layers_verified || 0) + " verified, " + (k.layers_bad || 0) + " bad");
    setText("s-fallbacks", listOf(k.fallbacks));
    setText("s-trust", s.trust ? s.trust.mode + " mode, " + s.trust.trusted_keys + " trusted key(s)" : "off");
    setText("s-uptime", duration(s.uptime_seconds) + " / " + bytes(s.resident_bytes));
  }

  // ------------------------------------------------------------- chart --

  function renderChart(samples) {
    const svg = $("chart");
    const W = 600, H = 140, PAD = 4;
    const pts = (samples || []).slice(-300);
    let max = 1;
    for (const p of pts) max = Math.max(max, p.fetched_per_sec || 0, p.read_per_sec || 0);
    const n = Math.max(2, pts.length);
    const x = (i) => (PAD + (i * (W - 2 * PAD)) / (n - 1)).toFixed(1);
    const y = (v) => (H - PAD - ((v || 0) / max) * (H - 2 * PAD)).toFixed(1);
    const line = (key, cls) => {
      const pl = document.createElementNS(SVG_NS, "polyline");
      pl.setAttribute("class", cls);
      pl.setAttribute("points", pts.map((p, i) => x(i) + "," + y(p[key])).join(" "));
      return pl;
    };
    const grid = [];
    for (const f of [0.25, 0.5, 0.75]) {
      const g = document.createElementNS(SVG_NS, "line");
      g.setAttribute("class", "grid");
      g.setAttribute("x1", "0");
      g.setAttribute("x2", String(W));
      g.setAttribute("y1", y(max * f));
      g.setAttribute("y2", y(max * f));
      grid.push(g);
    }
    svg.replaceChildren(...grid, line("fetched_per_sec", "fetched"), line("read_per_sec", "read"));
    const span = pts.length > 1 ? Math.round(pts[pts.length - 1].t - pts[0].t) : 0;
    setText("chart-max", "· peak " + bytes(max) + "/s · last " + duration(span));
  }

  // ------------------------------------------------------------ images --

  function trustBadge(v) {
    if (!v) return el("span", { class: "badge", "data-decision": "none" }, "not checked");
    const box = el("div", { class: "trust", "data-decision": v.decision });
    box.append(el("span", { class: "badge", "data-decision": v.decision }, v.decision),
      el("span", { class: "muted" }, " " + v.mode + " mode"));
    const dl = el("dl", { class: "kv" });
    dl.append(el("dt", {}, "UOR-ID"), el("dd", { class: "mono" }, v.uor_id || "–"));
    dl.append(el("dt", {}, "witness key"), el("dd", { class: "mono" }, v.key_id || "none"));
    if (v.reason) dl.append(el("dt", {}, "reason"), el("dd", { class: "reason" }, v.reason));
    box.append(dl);
    return box;
  }

  function layerRow(l, i) {
    const fetched = (l.demand_bytes || 0) + (l.prefetch_bytes || 0) + (l.background_bytes || 0);
    const tr = el("tr", { "data-digest": l.digest, "data-mode": l.mode, "data-fetched": fetched });
    tr.append(el("td", { class: "num" }, String(i + 1)));
    tr.append(el("td", { class: "mono", title: l.digest }, shortDigest(l.digest)));
    tr.append(el("td", {}, el("span", { class: "badge mode", "data-mode": l.mode }, l.mode)));
    const f = el("td", { class: "fetched" });
    // Lazy, or present on a lazily mounted snapshot (`source` set).
    const live = l.mode === "lazy" || !!l.source;
    if (live) {
      f.append(el("span", { class: "fetched-bytes" }, bytes(fetched)), " of " + bytes(l.size));
      f.append(el("progress", { max: Math.max(1, l.size), value: Math.min(fetched, Math.max(1, l.size)) }));
    } else {
      f.append(l.size ? bytes(l.size) : "–");
    }
    tr.append(f);
    const work = [];
    if (live) {
      work.push("on demand " + bytes(l.demand_bytes), "prefetch " + bytes(l.prefetch_bytes),
        "background " + bytes(l.background_bytes), (l.pending_chunks || 0) + " chunks to go");
    }
    tr.append(el("td", { class: "small" }, work.join(" · ")));
    tr.append(el("td", {}, live ? bytes(l.served_bytes) : "–"));
    const check = el("td", {});
    if (l.check) check.append(el("span", { class: "badge check", "data-check": l.check }, l.check));
    if (l.verification_failures) check.append(el("span", { class: "bad" }, " " + l.verification_failures + " bad chunk(s)"));
    if (l.check_reason) check.append(el("div", { class: "reason" }, l.check_reason));
    tr.append(check);
    const notes = el("td", { class: "notes" });
    if (l.fallback) {
      notes.append(el("div", { class: "fallback" },
        el("span", { class: "badge", "data-mode": "unpacked" }, l.fallback.category), " ",
        el("span", { class: "reason" }, l.fallback.reason)));
    }
    if (l.source) notes.append(el("div", { class: "muted small" }, "via " + l.source));
    const ann = Object.entries(l.annotations || {});
    if (ann.length) {
      const ul = el("ul", { class: "annotations small" });
      for (const [k, v] of ann) ul.append(el("li", {}, el("span", { class: "mono" }, k), " = ", el("span", { class: "ann-value" }, v)));
      notes.append(ul);
    }
    tr.append(notes);
    return tr;
  }

  function imageCard(img) {
    const card = el("article", { class: "image", "data-decision": img.trust ? img.trust.decision : "none" });
    const head = el("div", { class: "image-head" });
    head.append(el("h3", { class: "reference" }, img.reference));
    if (img.manifest_digest) head.append(el("div", { class: "mono muted small" }, "manifest " + img.manifest_digest));
    card.append(head, trustBadge(img.trust));
    const layers = img.layers || [];
    const counts = {};
    for (const l of layers) counts[l.mode] = (counts[l.mode] || 0) + 1;
    card.append(el("p", { class: "muted small" }, layers.length + " layer(s): " +
      (Object.entries(counts).map(([k, v]) => v + " " + k).join(", ") || "none")));
    if (layers.length) {
      const table = el("table", { class: "layers" });
      table.append(el("thead", {}, el("tr", {},
        el("th", {}, "#"), el("th", {}, "layer"), el("th", {}, "state"), el("th", {}, "fetched / size"),
        el("th", {}, "prefetch · background"), el("th", {}, "read"), el("th", {}, "check"), el("th", {}, "notes"))));
      const body = el("tbody", {});
      layers.forEach((l, i) => body.append(layerRow(l, i)));
      table.append(body);
      card.append(table);
    }
    return card;
  }

  function renderImages(images) {
    $("no-images").hidden = (images || []).length > 0;
    $("images").replaceChildren(...(images || []).map(imageCard));
  }

  // ------------------------------------------------------------ CTP-96 --

  function renderCtp96(c) {
    $("ctp96-section").hidden = !c;
    if (!c) return;
    const dl = $("ctp96");
    const rows = [
      ["mode", c.mode || "–"],
      ["endpoint", c.endpoint || "–"],
      ["session", c.session_id || "none open"],
      ["lease", c.lease_id ? c.lease_id + " (" + duration(c.lease_seconds) + ")" : "none"],
      ["energy hints", Object.entries(c.hints || {}).map(([k, v]) => k + " " + v).join(", ") || "none yet"],
      ["operations", Object.entries(c.operations || {}).filter(([, v]) => v > 0).map(([k, v]) => k + " " + v).join(", ") || "none yet"],
    ];
    dl.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { class: "mono" }, v)]));
  }

  // ---------------------------------------------------------- warnings --

  function renderWarnings(ws) {
    ws = (ws || []).slice().reverse();
    $("no-warnings").hidden = ws.length > 0;
    $("warnings").replaceChildren(...ws.map((w) => el("li", { "data-level": w.level },
      el("span", { class: "muted" }, clock(w.at) + " "),
      el("span", { class: "badge", "data-level": w.level }, w.level), " ",
      el("span", { class: "muted small" }, w.target + " "),
      el("span", { class: "warning-text" }, w.text))));
  }

  // -------------------------------------------------------------- loop --

  let timer = null;

  async function tick() {
    try {
      const r = await fetch(API, { cache: "no-store", headers: { Accept: "application/json" } });
      if (!r.ok) throw new Error("HTTP " + r.status);
      const s = await r.json();
      renderSummary(s);
      renderChart(s.throughput);
      renderImages(s.images);
      renderCtp96(s.ctp96);
      renderWarnings(s.warnings);
      const c = $("conn");
      c.dataset.state = "live";
      c.textContent = "live · " + clock(s.generated_at);
      document.body.dataset.updated = String(s.generated_at);
    } catch (e) {
      const c = $("conn");
      c.dataset.state = "down";
      c.textContent = "cannot reach the daemon (" + e.message + ")";
    } finally {
      timer = setTimeout(tick, PERIOD_MS);
    }
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && timer === null) tick();
  });
  tick();
})();
