// rtcts live margin dashboard: reads /v1/admin/dashboard every few seconds with the
// admin key kept in this tab's sessionStorage, and draws small SVG plots (no library).
"use strict";

(() => {
  const REFRESH_MS = 3000;
  const KEY_NAME = "rtcts.adminKey";
  const DATA_URL = "v1/admin/dashboard";
  const LIVE_POINTS = 200; // live figures kept per model in the page (not in the document)
  const ACTIONS = [
    ["allow", "allowed", "#2e7d32"],
    ["reroute", "rerouted", "#1565c0"],
    ["surcharge", "surcharged", "#ef6c00"],
    ["accept_below_floor", "below floor", "#6a1b9a"],
    ["throttle", "throttled", "#c62828"],
  ];
  const W = 400, H = 150, PAD = { l: 46, r: 8, t: 8, b: 18 };

  const $ = (id) => document.getElementById(id);
  const live = new Map(); // model -> [{t, warm, starting, target, queued, running}]
  const billingLive = []; // [{t, outbox, age}]
  let timer = null;

  // ------------------------------------------------------------------ formatting

  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
  const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");
  const money = (s) => "$" + Number(s).toFixed(Number(s) >= 100 ? 2 : 4);
  const dollars = (v) => "$" + (v === 0 ? "0" : Math.abs(v) < 0.01 ? v.toPrecision(2) : v.toFixed(2));
  const ago = (s) => (s < 90 ? Math.round(s) + " s" : s < 5400 ? Math.round(s / 60) + " min"
    : (s / 3600).toFixed(1) + " h");
  const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });

  function ticks(lo, hi, n) {
    const span = hi - lo || 1;
    const raw = span / n;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= n) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-12; v += step) out.push(+v.toFixed(10));
    return out;
  }

  // ------------------------------------------------------------------ plots

  // series: [{name, color, points: [[x, y|null]], dash, area}]; hlines: [{y, label, color}]
  function lineChart(series, o) {
    const xs = series.flatMap((s) => s.points.map((p) => p[0]));
    const ys = series.flatMap((s) => s.points.map((p) => p[1])).filter((y) => y !== null);
    (o.hlines || []).forEach((h) => ys.push(h.y));
    const x0 = o.xMin ?? Math.min(...xs), x1 = o.xMax ?? Math.max(...xs);
    let y0 = o.yMin ?? Math.min(0, ...ys), y1 = o.yMax ?? Math.max(...ys, y0);
    if (o.clamp) { y0 = Math.max(y0, o.clamp[0]); y1 = Math.min(y1, o.clamp[1]); }
    if (y1 <= y0) y1 = y0 + (o.emptySpan || 1); // nothing yet: a sensible empty scale
    const X = (x) => PAD.l + ((x - x0) / ((x1 - x0) || 1)) * (W - PAD.l - PAD.r);
    const Y = (y) => H - PAD.b - ((Math.min(Math.max(y, y0), y1) - y0) / (y1 - y0))
      * (H - PAD.t - PAD.b);
    let g = "";
    for (const v of ticks(y0, y1, 4).filter((t) => !o.integer || Number.isInteger(t))) {
      g += `<line class="axis" x1="${PAD.l}" x2="${W - PAD.r}" y1="${Y(v)}" y2="${Y(v)}"/>`;
      g += `<text x="${PAD.l - 4}" y="${Y(v) + 3}" text-anchor="end">${esc(o.yFormat(v))}</text>`;
    }
    g += `<text x="${PAD.l}" y="${H - 4}">${esc(clock(x0))}</text>`;
    g += `<text x="${W - PAD.r}" y="${H - 4}" text-anchor="end">${esc(clock(x1))}</text>`;
    (o.hlines || []).forEach((h, i) => {
      // Labels alternate right and left, so that close floors stay readable.
      const right = i % 2 === 0;
      g += `<line class="floor" stroke="${h.color}" x1="${PAD.l}" x2="${W - PAD.r}" `
        + `y1="${Y(h.y)}" y2="${Y(h.y)}"/>`;
      g += `<text x="${right ? W - PAD.r - 2 : PAD.l + 4}" y="${Y(h.y) - 3}" `
        + `text-anchor="${right ? "end" : "start"}">${esc(h.label)}</text>`;
    });
    for (const s of series) {
      let d = "", pen = false;
      for (const [x, y] of s.points) {
        if (y === null || y === undefined) { pen = false; continue; }
        d += `${pen ? "L" : "M"}${X(x).toFixed(1)},${Y(y).toFixed(1)}`;
        pen = true;
      }
      if (d) {
        g += `<path class="mark" d="${d}" fill="none" stroke="${s.color}" stroke-width="1.8"`
          + `${s.dash ? ' stroke-dasharray="5 3"' : ""}/>`;
      }
    }
    return svg(g, o.label) + legend(series);
  }

  // buckets: [{t, values: {name: n}}], stacks: [[name, label, color]]
  function barChart(buckets, stacks, o) {
    const totals = buckets.map((b) => stacks.reduce((a, [k]) => a + (b.values[k] || 0), 0));
    const top = Math.max(1, ...totals);
    const step = (W - PAD.l - PAD.r) / Math.max(1, buckets.length);
    const Y = (v) => H - PAD.b - (v / top) * (H - PAD.t - PAD.b);
    let g = "";
    for (const v of ticks(0, top, 4).filter(Number.isInteger)) {
      g += `<line class="axis" x1="${PAD.l}" x2="${W - PAD.r}" y1="${Y(v)}" y2="${Y(v)}"/>`;
      g += `<text x="${PAD.l - 4}" y="${Y(v) + 3}" text-anchor="end">${v}</text>`;
    }
    if (buckets.length) {
      g += `<text x="${PAD.l}" y="${H - 4}">${esc(clock(buckets[0].t))}</text>`;
      g += `<text x="${W - PAD.r}" y="${H - 4}" text-anchor="end">`
        + `${esc(clock(buckets[buckets.length - 1].t))}</text>`;
    }
    buckets.forEach((b, i) => {
      let base = 0;
      for (const [k, , color] of stacks) {
        const v = b.values[k] || 0;
        if (!v) continue;
        const x = PAD.l + i * step + 0.5, y = Y(base + v), h = Y(base) - Y(base + v);
        g += `<rect class="mark" x="${x.toFixed(1)}" y="${y.toFixed(1)}" `
          + `width="${Math.max(1, step - 1).toFixed(1)}" height="${h.toFixed(1)}" fill="${color}"/>`;
        base += v;
      }
    });
    return svg(g, o.label) + legend(stacks.map(([, name, color]) => ({ name, color })));
  }

  const svg = (g, label) => `<svg class="chart" viewBox="0 0 ${W} ${H}" role="img" `
    + `aria-label="${esc(label)}" preserveAspectRatio="none">${g}</svg>`;
  // Swatches are SVG (fill attributes): the page's CSP allows no inline style.
  const legend = (items) => `<div class="legend">${items.map((s) =>
    `<span><svg class="swatch" viewBox="0 0 10 10" width="10" height="10">`
    + `<rect width="10" height="10" rx="2" fill="${s.color}"/></svg>${esc(s.name)}</span>`,
  ).join("")}</div>`;

  // ------------------------------------------------------------------ sections

  function card(parent, id) {
    let el = document.getElementById(id);
    if (!el) {
      el = document.createElement("div");
      el.id = id;
      el.className = "card";
      parent.appendChild(el);
    }
    return el;
  }

  function drawModel(doc, m) {
    const points = live.get(m.model) || [];
    points.push({ t: doc.generated_at, ...m.replicas, queued: m.queued, running: m.running });
    while (points.length > LIVE_POINTS) points.shift();
    live.set(m.model, points);

    const floors = Object.entries(m.margin_floors);
    const lowest = floors.length ? Math.min(...floors.map(([, f]) => f)) : null;
    const margin = m.realized.margin;
    const cls = margin === null || lowest === null ? "" : margin < lowest ? "below" : "above";
    const byFloor = new Map();
    for (const [plan, f] of floors) byFloor.set(f, [...(byFloor.get(f) || []), plan]);
    const hlines = [...byFloor].map(([f, plans]) => ({
      y: f, label: `floor ${pct(f)} (${plans.join(", ")})`, color: "#c62828",
    }));
    const xMin = doc.generated_at - doc.window_s, xMax = doc.generated_at;
    const mid = doc.bucket_s / 2;
    const marginChart = lineChart(
      [{ name: "realized margin, last minute", color: "#1d2330",
        points: m.history.map((b) => [b.t + mid, b.margin_1m]) }],
      { label: `${m.model} realized margin`, yFormat: pct, hlines, clamp: [-1, 1],
        yMax: 1, xMin, xMax },
    );
    const liveChart = lineChart(
      [
        { name: "queue", color: "#c62828", points: points.map((p) => [p.t, p.queued]) },
        { name: "batch", color: "#1565c0", points: points.map((p) => [p.t, p.running]) },
        { name: "warm replicas", color: "#2e7d32", points: points.map((p) => [p.t, p.warm]) },
        { name: "target", color: "#2e7d32", dash: true,
          points: points.map((p) => [p.t, p.target]) },
      ],
      { label: `${m.model} queue, batch and replicas`, yFormat: String, integer: true,
        xMin: points[0].t, xMax: Math.max(points[0].t + doc.bucket_s, doc.generated_at) },
    );
    const cost = m.cost_usd_per_1m_tokens;
    card($("models"), "model-" + m.model).innerHTML = `
      <h3>${esc(m.model)}<span class="thin">${cost === null ? "" : money(cost) + " / 1M tokens"}
      </span></h3>
      <div class="stats">
        <span>replicas <b>${m.replicas.warm}</b> warm · <b>${m.replicas.starting}</b> starting
          · target <b>${m.replicas.target ?? "–"}</b></span>
        <span>queue <b>${m.queued}</b> · batch <b>${m.running}</b></span>
        <span>realized margin <b class="${cls}">${pct(margin)}</b>
          (${money(m.realized.revenue_usd)} against ${money(m.realized.replica_cost_usd)})</span>
      </div>
      ${marginChart}${liveChart}`;
  }

  function drawPlan(doc, p) {
    const chips = ACTIONS.map(([k, name]) => `<span>${name} <b>${p.decisions[k]}</b></span>`);
    const bars = barChart(
      p.history.map((b) => ({ t: b.t, values: b.decisions })),
      ACTIONS,
      { label: `${p.plan} decisions per ${doc.bucket_s} s` },
    );
    const money_ = lineChart(
      [
        { name: "revenue", color: "#2e7d32",
          points: p.history.map((b) => [b.t + doc.bucket_s / 2, Number(b.revenue_usd)]) },
        { name: "SLA credits", color: "#c62828",
          points: p.history.map((b) => [b.t + doc.bucket_s / 2, Number(b.sla_credits_usd)]) },
      ],
      { label: `${p.plan} revenue and credits`, yFormat: dollars, emptySpan: 0.01,
        xMin: doc.generated_at - doc.window_s, xMax: doc.generated_at },
    );
    card($("plans"), "plan-" + p.plan).innerHTML = `
      <h3>${esc(p.plan)}<span class="thin">floor ${pct(p.margin_floor)}</span></h3>
      <div class="stats">${chips.join("")}</div>
      <div class="stats"><span>revenue <b>${money(p.revenue_usd)}</b></span>
        <span>SLA credits <b>${money(p.sla_credits_usd)}</b></span>
        <span>billed requests <b>${p.requests_billed}</b></span></div>
      ${bars}${money_}`;
  }

  function drawBilling(doc) {
    const b = doc.billing;
    const el = card($("billing"), "billing-card");
    if (!b) {
      el.innerHTML = `<p class="note">Billing is not configured (no Redis): meters stay in memory.</p>`;
      return;
    }
    billingLive.push({ t: doc.generated_at, outbox: b.outbox, age: b.oldest_unsynced_age_s || 0 });
    while (billingLive.length > LIVE_POINTS) billingLive.shift();
    const rec = b.last_reconcile;
    const recText = rec ? `${ago(doc.generated_at - rec.at)} ago` : "never";
    const recClass = rec ? (rec.ok ? "above" : "below") : "";
    const tiles = [
      ["oldest unsynced window", b.oldest_unsynced_age_s === null ? "none"
        : ago(b.oldest_unsynced_age_s), ""],
      ["dead letters", b.dead_letters, b.dead_letters ? "below" : ""],
      ["outbox", b.outbox, ""],
      ["open windows", b.open_windows, ""],
      ["last reconcile", recText, recClass],
      ["reconcile result", rec ? (rec.ok ? "no drift" : `${rec.drifted} drifted`) : "–", recClass],
    ];
    el.innerHTML = `<div class="tiles">${tiles.map(([k, v, c]) =>
      `<div class="tile"><div class="v ${c}">${esc(v)}</div><div class="k">${k}</div></div>`
    ).join("")}</div>${lineChart(
      [
        { name: "outbox (windows)", color: "#1565c0", points: billingLive.map((p) => [p.t, p.outbox]) },
        { name: "oldest unsynced (s)", color: "#ef6c00", points: billingLive.map((p) => [p.t, p.age]) },
      ],
      { label: "billing lag", yFormat: String, integer: true,
        xMin: billingLive[0].t, xMax: Math.max(billingLive[0].t + doc.bucket_s, doc.generated_at) },
    )}`;
  }

  function render(doc) {
    const scope = doc.scope === "all_ingress_replicas" ? "all ingress replicas"
      : "this ingress replica only (no Redis)";
    $("models-note").textContent = `realized margin over ${doc.window_s / 60} min against the floors`;
    $("plans-note").textContent = `last ${doc.window_s / 60} min, ${scope}`;
    doc.models.forEach((m) => drawModel(doc, m));
    doc.plans.forEach((p) => drawPlan(doc, p));
    drawBilling(doc);
    const unread = doc.unread.length ? ` · not read: ${doc.unread.join(", ")}` : "";
    status(`policy ${doc.policy_version} · updated ${clock(doc.generated_at)}${unread}`,
      doc.unread.length > 0);
  }

  // ------------------------------------------------------------------ key and polling

  function status(text, bad) {
    $("status").textContent = text;
    $("status").classList.toggle("bad", !!bad);
  }

  function showLogin(message) {
    clearTimeout(timer);
    $("board").hidden = true;
    $("forget").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    status("signed out");
    $("key").focus();
  }

  async function poll() {
    clearTimeout(timer);
    const key = sessionStorage.getItem(KEY_NAME);
    if (!key) return showLogin();
    let response;
    try {
      response = await fetch(DATA_URL, {
        headers: { Authorization: "Bearer " + key }, cache: "no-store", credentials: "omit",
      });
    } catch (err) {
      status("rtcts unreachable, retrying", true);
      timer = setTimeout(poll, REFRESH_MS);
      return;
    }
    if (response.status === 401 || response.status === 403) {
      sessionStorage.removeItem(KEY_NAME);
      return showLogin(response.status === 403 ? "That is a tenant's key: an admin key is needed."
        : "Unknown key.");
    }
    if (response.ok) {
      $("login").hidden = true;
      $("board").hidden = false;
      $("forget").hidden = false;
      render(await response.json());
    } else {
      status(`rtcts answered ${response.status}, retrying`, true);
    }
    timer = setTimeout(poll, REFRESH_MS);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("key").value.trim();
      $("key").value = "";
      if (!key) return;
      sessionStorage.setItem(KEY_NAME, key);
      poll();
    });
    $("forget").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_NAME);
      showLogin();
    });
    poll();
  });
})();
