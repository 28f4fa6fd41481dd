// parkade dashboard: live cards from the websocket, SVG charts from the API.
"use strict";

const lots = new Map(); // lot_id -> {view, el, recent: [[ms, occ]], extra}
const $ = (sel, root = document) => root.querySelector(sel);
let lastOffset = null;
let historyServed = null; // from the snapshot: the features behind /history
let forecastServed = null; // from the snapshot: the predictor behind /timespan
let campusTz; // from the snapshot: the lots' time zone (IANA); the browser's until then
let staleAfterMs = null; // from the snapshot: a lot this long without an event is stale

// Days and hours are the campus's, not the browser's: the wall-clock parts of instant
// `ms` in the lots' time zone.
const WEEKDAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
let wallFormat = null, wallTz = null;
function wall(ms) {
  if (!wallFormat || wallTz !== campusTz) {
    wallTz = campusTz;
    wallFormat = new Intl.DateTimeFormat("en-US", {
      timeZone: campusTz, hourCycle: "h23", weekday: "short",
      year: "numeric", month: "numeric", day: "numeric", hour: "numeric", minute: "numeric",
    });
  }
  const p = {};
  for (const { type, value } of wallFormat.formatToParts(new Date(ms))) p[type] = value;
  return { y: +p.year, mo: +p.month, d: +p.day, h: +p.hour % 24, mi: +p.minute, wd: WEEKDAYS.indexOf(p.weekday) };
}
// The instant the campus day of `ms` began: its local midnight (on a day the clocks
// change, off by the change).
function campusMidnight(ms) {
  const w = wall(ms);
  const offset = Date.UTC(w.y, w.mo - 1, w.d, w.h, w.mi) - Math.floor(ms / 60000) * 60000;
  return Date.UTC(w.y, w.mo - 1, w.d) - offset;
}

// Where reads need a token, open the page as /#access_token=TOKEN: the fragment never
// reaches the server or its logs; the token is kept for this tab only.
const token = (() => {
  const m = location.hash.match(/access_token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("parkade-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("parkade-token");
})();
// A token given to an open page (only the fragment changed): start again with it.
window.addEventListener("hashchange", () => {
  if (/access_token=/.test(location.hash)) location.reload();
});

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function svgEl(tag, attrs = {}) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function card(view) {
  const c = el("article", { class: "card", "data-lot": view.lot_id });
  c.append(el("h2", {}, view.name || view.lot_id), el("div", { class: "id" }, view.lot_id));
  const stale = el("p", { class: "stale", hidden: "" });
  const fig = el("div", { class: "figures" });
  fig.append(el("span", { class: "free" }), el("span", { class: "of" }));
  const bar = el("div", { class: "bar" });
  bar.append(el("span"));
  const chart = svgEl("svg", { class: "chart", viewBox: "0 0 300 110", preserveAspectRatio: "none", role: "img" });
  const legend = el("div", { class: "legend" });
  legend.innerHTML = "<span><i></i>today</span><span><i class=p></i>usual</span><span><i class=f></i>forecast</span>";
  const note = el("p", { class: "note" });
  const btn = el("button", { type: "button" }, "History: last 4 weeks");
  btn.addEventListener("click", () => showHistory(view.lot_id));
  c.append(stale, fig, bar, chart, legend, note, btn);
  return c;
}

function render(id) {
  const l = lots.get(id);
  const v = l.view;
  const free = Math.max(0, v.capacity - v.occupancy);
  const share = v.capacity > 0 ? v.occupancy / v.capacity : 0;
  const f = $(".free", l.el);
  f.textContent = free.toLocaleString();
  f.className = "free " + (share >= 0.95 ? "full" : share >= 0.8 ? "busy" : "ok");
  $(".of", l.el).textContent = `free of ${v.capacity.toLocaleString()} · ${v.occupancy.toLocaleString()} parked`;
  $(".bar span", l.el).style.width = `${Math.min(100, share * 100).toFixed(1)}%`;
  l.el.setAttribute("aria-label", `${v.name || id}: ${free} free of ${v.capacity}`);
  markStale(l);
  drawChart(id);
}

// A lot without an event for the configured time: its count may be a broken counter's.
function markStale(l) {
  const last = l.view.updated_at ? Date.parse(l.view.updated_at) : NaN;
  const stale = staleAfterMs !== null && Number.isFinite(last) && Date.now() - last > staleAfterMs;
  l.el.classList.toggle("is-stale", stale);
  const p = $(".stale", l.el);
  p.hidden = !stale;
  if (stale) {
    const when = new Date(last).toLocaleString(undefined, { timeZone: campusTz, dateStyle: "medium", timeStyle: "short" });
    p.textContent = `Stale: no event since ${when}`;
  }
}

function summary() {
  let cap = 0, occ = 0;
  for (const l of lots.values()) { cap += l.view.capacity; occ += l.view.occupancy; }
  const s = $("#summary");
  s.innerHTML = "";
  s.append(el("span", {}, ""), el("span", {}, ""));
  s.children[0].innerHTML = `<b>${(cap - occ).toLocaleString()}</b> free spaces`;
  s.children[1].innerHTML = `<b>${lots.size}</b> lots · ${(cap ? (100 * occ / cap) : 0).toFixed(0)}% full`;
  $("#empty").hidden = lots.size > 0;
}

function upsert(view) {
  let l = lots.get(view.lot_id);
  if (!l) {
    l = { view, el: card(view), recent: [], extra: null };
    lots.set(view.lot_id, l);
    const list = [...lots.keys()].sort();
    const grid = $("#lots");
    const before = list.indexOf(view.lot_id) + 1 < list.length ? lots.get(list[list.indexOf(view.lot_id) + 1]).el : null;
    grid.insertBefore(l.el, before && before.parentNode ? before : null);
    loadCharts(view.lot_id);
  } else {
    l.view = Object.assign({}, l.view, view);
  }
  render(view.lot_id);
}

function onChange(m) {
  lastOffset = m.offset;
  const l = lots.get(m.lot_id);
  if (!l) { upsert({ lot_id: m.lot_id, name: m.lot_id, capacity: m.capacity, occupancy: m.occupancy }); }
  else { l.view.occupancy = m.occupancy; l.view.capacity = m.capacity; }
  lots.get(m.lot_id).view.updated_at = m.occurred_at;
  const t = Date.parse(m.occurred_at);
  const rec = lots.get(m.lot_id).recent;
  const slot = Math.floor(t / 300000) * 300000;
  if (rec.length && rec[rec.length - 1][0] === slot) rec[rec.length - 1][1] = m.occupancy;
  else if (!rec.length || rec[rec.length - 1][0] < slot) rec.push([slot, m.occupancy]);
  render(m.lot_id);
  summary();
}

// Charts -------------------------------------------------------------------------

async function getJSON(url) {
  const r = await fetch(url, token ? { headers: { Authorization: `Bearer ${token}` } } : {});
  const body = await r.json().catch(() => ({}));
  return { ok: r.ok, status: r.status, body };
}

async function loadCharts(id) {
  const l = lots.get(id);
  const recent = await getJSON(`/v1/lots/${encodeURIComponent(id)}/recent`);
  if (recent.ok) l.recent = recent.body.points.map(p => [Date.parse(p.time), p.occupancy]);
  if (!historyServed) {
    for (const i of l.el.querySelectorAll(".legend span + span")) i.hidden = true;
    $(".note", l.el).textContent = "This service serves no history; the chart shows what it has seen.";
    $("button", l.el).hidden = true;
    drawChart(id);
    return;
  }
  const lot = encodeURIComponent(id);
  const from = new Date(Date.now() - 28 * 864e5).toISOString();
  const none = { ok: false, status: 503, body: {} };
  const [ts, hist] = await Promise.all([
    forecastServed ? getJSON(`/v1/lots/${lot}/timespan`) : Promise.resolve(none),
    getJSON(`/v1/lots/${lot}/history?bucket=15m&from=${from}`),
  ]);
  l.extra = {
    series: ts.ok ? ts.body.series : null,
    profile: hist.ok ? usualProfile(hist.body.points) : null,
  };
  $(".note", l.el).textContent = ts.ok
    ? (!ts.body.model_version ? "no forecast yet"
      : ts.body.forecast_method === "partial_profile"
        ? `forecast from the lot's few days so far (its partial profile), model ${ts.body.model_version}`
        : `forecast by model ${ts.body.model_version}`)
    : !forecastServed ? "Forecasts are off on this service ([forecast] enabled = false)." : "";
  drawChart(id);
}

// Mean occupancy by time of day over the same weekday as today.
function usualProfile(points) {
  const today = wall(Date.now()).wd;
  const sums = new Map();
  for (const p of points) {
    const w = wall(Date.parse(p.start));
    if (w.wd !== today) continue;
    const m = w.h * 60 + w.mi;
    const s = sums.get(m) || [0, 0];
    s[0] += p.occupancy_mean; s[1] += 1; sums.set(m, s);
  }
  return [...sums.entries()].sort((a, b) => a[0] - b[0]).map(([m, s]) => [m, s[0] / s[1]]);
}

function drawChart(id) {
  const l = lots.get(id);
  const svg = $("svg.chart", l.el);
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const cap = Math.max(1, l.view.capacity);
  const W = 300, H = 100;
  // The day of the newest reading (simulated days move fast in the demo).
  const newest = l.recent.length ? l.recent[l.recent.length - 1][0] : Date.now();
  const t0 = campusMidnight(newest), span = 864e5;
  const x = t => ((t - t0) / span) * W;
  const y = v => H - (Math.max(0, Math.min(cap, v)) / cap) * (H - 8) - 2;
  for (const h of [6, 12, 18]) {
    svg.append(svgEl("line", { class: "grid", x1: (h / 24) * W, x2: (h / 24) * W, y1: 0, y2: H }));
    const t = svgEl("text", { x: (h / 24) * W + 2, y: H + 9 }); t.textContent = `${h}:00`; svg.append(t);
  }
  const line = (pts, cls) => {
    if (pts.length === 1) {
      svg.append(svgEl("circle", { class: cls, cx: pts[0][0].toFixed(1), cy: pts[0][1].toFixed(1), r: 2.5 }));
      return;
    }
    if (pts.length < 2) return;
    svg.append(svgEl("polyline", { class: cls, points: pts.map(([a, b]) => `${a.toFixed(1)},${b.toFixed(1)}`).join(" ") }));
  };
  if (l.extra && l.extra.profile) line(l.extra.profile.map(([m, v]) => [(m / 1440) * W, y(v)]), "profile");
  let today = l.recent.filter(([t]) => t >= t0 && t < t0 + span).map(([t, v]) => [x(t), y(v)]);
  if (l.extra && l.extra.series) {
    const hist = l.extra.series.filter(p => p.kind === "history").map(p => [Date.parse(p.time), p.occupancy]).filter(([t]) => t >= t0 && t < t0 + span);
    if (hist.length > today.length) today = hist.map(([t, v]) => [x(t), y(v)]);
    const fc = l.extra.series.filter(p => p.kind === "forecast").map(p => [Date.parse(p.time), p.occupancy, p.low, p.high]).filter(([t]) => t < t0 + span);
    if (fc.length > 1) {
      const upper = fc.map(([t, , , hi]) => `${x(t).toFixed(1)},${y(hi).toFixed(1)}`);
      const lower = fc.slice().reverse().map(([t, , lo]) => `${x(t).toFixed(1)},${y(lo).toFixed(1)}`);
      svg.append(svgEl("polygon", { class: "band", points: upper.concat(lower).join(" ") }));
      line(fc.map(([t, v]) => [x(t), y(v)]), "forecast");
    }
  }
  line(today, "today");
  svg.setAttribute("viewBox", `0 0 ${W} ${H + 12}`);
}

async function showHistory(id) {
  const l = lots.get(id);
  const from = new Date(Date.now() - 28 * 864e5).toISOString();
  const r = await getJSON(`/v1/lots/${encodeURIComponent(id)}/history?bucket=1h&from=${from}`);
  const note = $(".note", l.el);
  if (!r.ok) { note.textContent = r.body.message || `history unavailable (${r.status})`; return; }
  const pts = r.body.points;
  if (!pts.length) { note.textContent = "No history in the last 4 weeks."; return; }
  const svg = $("svg.chart", l.el);
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const cap = Math.max(1, l.view.capacity);
  const t0 = Date.parse(pts[0].start), t1 = Date.parse(pts[pts.length - 1].start) || t0 + 1;
  const W = 300, H = 100;
  const poly = pts.map(p => `${(((Date.parse(p.start) - t0) / Math.max(1, t1 - t0)) * W).toFixed(1)},${(H - (p.occupancy_mean / cap) * (H - 8) - 2).toFixed(1)}`).join(" ");
  svg.append(svgEl("polyline", { class: "today", points: poly }));
  const day = t => new Date(t).toLocaleDateString(undefined, { timeZone: campusTz });
  note.textContent = `Hourly mean occupancy, ${day(t0)} to ${day(t1)}.`;
}

// Live -----------------------------------------------------------------------------

function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const params = new URLSearchParams();
  if (lastOffset !== null) params.set("from_offset", lastOffset);
  if (token) params.set("access_token", token); // a websocket cannot carry a header
  const query = params.toString() ? `?${params}` : "";
  const ws = new WebSocket(`${proto}://${location.host}/v1/ws${query}`);
  let opened = false;
  ws.onopen = () => { opened = true; $("#dot").classList.add("live"); $("#status").textContent = "live"; };
  ws.onmessage = ev => {
    const m = JSON.parse(ev.data);
    if (m.type === "snapshot") {
      lastOffset = m.offset;
      historyServed = m.history === true;
      forecastServed = m.forecast === true;
      if (Number.isFinite(m.stale_after_secs)) staleAfterMs = m.stale_after_secs * 1000;
      if (m.timezone && m.timezone !== campusTz) {
        campusTz = m.timezone;
        $("#clock").textContent = `Days and hours in ${campusTz}.`;
        for (const id of lots.keys()) drawChart(id);
      }
      for (const v of m.lots) upsert(v);
      summary();
    } else if (m.type === "change") {
      onChange(m);
    }
  };
  ws.onclose = () => {
    // Refused at once (say, the offset is gone after a reset): start from a snapshot.
    if (!opened) {
      lastOffset = null;
      // Reads may need a token: say how to give one.
      getJSON("/v1/lots").then(r => {
        if (r.status === 401 || r.status === 403) {
          $("#status").textContent = "this dashboard needs a read token: open /#access_token=TOKEN";
        }
      });
    }
    $("#dot").classList.remove("live");
    $("#status").textContent = "reconnecting…";
    setTimeout(connect, 1000);
  };
}

summary();
connect();
setInterval(() => { for (const id of lots.keys()) loadCharts(id); }, 60000);
setInterval(() => { for (const l of lots.values()) markStale(l); }, 15000);
