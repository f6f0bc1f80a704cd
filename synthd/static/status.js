// The synthd status page: polls /api/status and draws it. No library, no network beyond
// the daemon. Data is only ever put into the page as text (record samples are user data).
"use strict";

const REFRESH_MS = 3000;
const WINDOW_S = 900;
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}

function fmt(n) {
  if (n === null || n === undefined) return "–";
  if (typeof n !== "number") return String(n);
  return Number.isInteger(n) ? n.toLocaleString("en") : n.toLocaleString("en", { maximumFractionDigits: 2 });
}

// A cell whose exact value is in data-v, so that a test can compare it with /metrics.
function num(key, value, text) {
  return el("td", { "data-k": key, "data-v": value === null ? "" : String(value) }, text ?? fmt(value));
}

function duration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return h ? `${h}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`;
}

function jobRow(j) {
  const pct = j.progress === null ? null : Math.round(j.progress * 1000) / 10;
  const fill = el("span", {});
  fill.style.width = `${pct || 0}%`; // CSSOM, not a style attribute: the page's CSP allows it
  const bar = el("span", { class: "bar", title: pct === null ? "" : `${pct}%` }, fill);
  const reasons = Object.entries(j.rejects).map(([r, n]) =>
    el("div", { "data-k": `job.${j.job}.rejects.${r}`, "data-v": String(n) }, `${r}: ${fmt(n)}`));
  const rejected = num(`job.${j.job}.rejected`, j.rejected);
  rejected.append(el("div", { class: "reasons" }, ...reasons));
  return el("tr", {},
    el("td", {}, j.job),
    el("td", { class: "text" }, `${j.model ?? "?"} @ ${j.provider ?? "?"}`),
    el("td", {}, bar, " ", pct === null ? "–" : `${pct}%`),
    num(`job.${j.job}.items_done`, j.items_done),
    num(`job.${j.job}.backlog`, j.backlog),
    num(`job.${j.job}.items_per_s`, j.items_per_s),
    num(`job.${j.job}.eta_s`, j.eta_s, duration(j.eta_s)),
    num(`job.${j.job}.records`, j.records),
    rejected,
    num(`job.${j.job}.dead`, j.dead),
    num(`job.${j.job}.prompt_tokens`, j.tokens.prompt),
    num(`job.${j.job}.completion_tokens`, j.tokens.completion),
    num(`job.${j.job}.cost_usd`, j.cost_usd, j.cost_usd === null ? "no price" : `$${j.cost_usd.toFixed(4)}`));
}

// The chart's columns, as points; each interval's age is counted from the newest sample.
function points(c) {
  return c.ago_s.map((ago, i) => ({
    ago_s: ago + (c.age_s || 0),
    requests_per_min: c.requests_per_min[i],
    tokens_per_min: c.tokens_per_min[i],
    rate_limited: c.rate_limited[i],
  }));
}

function chart(title, points, key, budget) {
  const w = 420, h = 110, pad = 4;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const peak = Math.max(1, ...points.map((p) => p[key]));
  // A budget far above the use would flatten the line: then the use sets the scale.
  const budgetShown = budget && budget <= 4 * peak;
  const top = (budgetShown ? Math.max(peak, budget) : peak) * 1.15;
  const x = (ago) => pad + (w - 2 * pad) * (1 - Math.min(ago, WINDOW_S) / WINDOW_S);
  const y = (v) => h - pad - (h - 2 * pad) * (v / top);
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", points.map((p) => `${x(p.ago_s).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#3b82c4");
  line.setAttribute("stroke-width", "1.5");
  svg.append(line);
  for (const [text, anchor, at] of [["-15 min", "start", pad + 2], ["now", "end", w - pad - 2]]) {
    const t = document.createElementNS(SVG, "text");
    t.setAttribute("x", at);
    t.setAttribute("y", h - pad - 4);
    t.setAttribute("text-anchor", anchor);
    t.textContent = text;
    svg.append(t);
  }
  if (budgetShown) {
    const b = document.createElementNS(SVG, "line");
    for (const [k, v] of [["x1", pad], ["x2", w - pad], ["y1", y(budget)], ["y2", y(budget)]]) b.setAttribute(k, v);
    b.setAttribute("stroke", "#c0392b");
    b.setAttribute("stroke-dasharray", "4 3");
    svg.append(b);
  }
  for (const p of points.filter((q) => q.rate_limited > 0)) {
    const mark = document.createElementNS(SVG, "circle");
    mark.setAttribute("cx", x(p.ago_s));
    mark.setAttribute("cy", h - pad - 2);
    mark.setAttribute("r", 2.5);
    mark.setAttribute("fill", "#e67e22");
    svg.append(mark);
  }
  const label = document.createElementNS(SVG, "text");
  label.setAttribute("x", pad + 2);
  label.setAttribute("y", 12);
  const last = points.length ? points[points.length - 1][key] : 0;
  const share = budget
    ? ` (${((100 * last) / budget).toFixed(budgetShown ? 0 : 2)}% of ${fmt(budget)}${budgetShown ? "" : ", off scale"})`
    : "";
  label.textContent = `${title}: ${fmt(last)}${share}`;
  svg.append(label);
  return el("div", {}, svg);
}

function providerBox(p) {
  const row = (label, key, value, text) =>
    [el("dt", {}, label), el("dd", { "data-k": `provider.${p.provider}.${key}`, "data-v": String(value) }, text ?? fmt(value))];
  const state = p.up ? "closed" : "open";
  const dl = el("dl", {},
    ...row("circuit", "up", p.up ? 1 : 0, p.up ? "closed (up)" : "OPEN (down)"),
    ...row("in flight", "in_flight", p.in_flight),
    ...row("queued", "queued", p.queued),
    ...row("429s", "rate_limited", p.rate_limited),
    ...row("outages", "outages", p.outages),
    ...row("budget rpm", "rpm", p.budget ? p.budget.rpm : ""),
    ...row("budget tpm", "tpm", p.budget ? p.budget.tpm : ""));
  return el("div", { class: `provider ${state}` },
    el("div", {}, el("strong", {}, p.provider), dl),
    chart("requests/min", points(p.chart), "requests_per_min", p.budget && p.budget.rpm),
    chart("tokens/min", points(p.chart), "tokens_per_min", p.budget && p.budget.tpm));
}

function sample(s) {
  const li = el("li", {});
  if (s.reason) li.append(el("span", { class: "reason" }, s.reason), " ");
  li.append(s.text, " ", el("span", { class: "src" }, `${s.job} · ${s.file}:${s.line}`));
  return li;
}

function draw(doc) {
  document.getElementById("version").textContent = `v${doc.version}`;
  const h = doc.health;
  const health = document.getElementById("health");
  health.textContent = h.status !== "ok" ? `failing: ${h.failure}` : h.ready ? "ok, ready" : "ok, not ready";
  health.className = "pill " + (h.status !== "ok" ? "bad" : h.ready ? "ok" : "warn");
  health.dataset.k = "health";
  health.dataset.v = h.status;
  document.getElementById("uptime").textContent = `up ${duration(h.uptime_s)}`;
  const blocked = document.getElementById("blocked");
  blocked.hidden = !h.output_blocked;
  blocked.textContent = h.output_blocked ? `Output blocked: ${h.output_blocked}` : "";
  document.querySelector("#jobs tbody").replaceChildren(...doc.jobs.map(jobRow));
  document.getElementById("providers").replaceChildren(...doc.providers.map(providerBox));
  for (const kind of ["accepted", "rejected", "dead"]) {
    const items = doc.recent[kind].map(sample);
    document.getElementById(kind).replaceChildren(...(items.length ? items : [el("li", { class: "muted" }, "none yet")]));
  }
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString("en-GB")}`;
  document.body.dataset.loaded = "1";
}

async function poll() {
  try {
    const resp = await fetch("/api/status", { cache: "no-store", credentials: "same-origin" });
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    draw(await resp.json());
  } catch (e) {
    const health = document.getElementById("health");
    health.textContent = `not answering (${e.message})`;
    health.className = "pill bad";
  }
  setTimeout(poll, REFRESH_MS);
}

poll();
