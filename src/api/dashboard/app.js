// parkade dashboard: live cards from the websocket, SVG charts from the API.
"use strict";

const lots = new Map(); // lot_id -> {view, el, recent: [[ms, occ]], extra}
const $ = (sel, root = document) => root.querySelector(sel);
let lastOffset = null;
let historyServed = null; // from the snapshot: the features behind /history
let forecastServed = null; // from the snapshot: the predictor behind /timespan
let campusTz; // from the snapshot: the lots' time zone (IANA); the browser's until then
let staleAfterMs = null; // from the snapshot: a lot this long without an event is stale
let utcOffsets = null; // from the snapshot: [[from ms, offset s]] of the lots' zone

// Days and hours are the campus's, not the browser's: the wall-clock parts of instant
// `ms` in the lots' time zone.
const WEEKDAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
let wallFormat = null, wallTz = null;
// The lots' offset from UTC at `ms`, as the server's tz database says (null outside
// the span it sent).
function offsetAt(ms) {
  if (!utcOffsets || !utcOffsets.length || ms < utcOffsets[0][0]) return null;
  let off = utcOffsets[0][1];
  for (const [from, o] of utcOffsets) { if (from <= ms) off = o; else break; }
  return off;
}
function wall(ms) {
  const off = offsetAt(ms);
  if (off !== null) {
    const d = new Date(ms + off * 1000);
    return { y: d.getUTCFullYear(), mo: d.getUTCMonth() + 1, d: d.getUTCDate(), h: d.getUTCHours(), mi: d.getUTCMinutes(), wd: d.getUTCDay() };
  }
  // Outside what the server sent: the browser's tz database for the same zone.
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
const two = n => String(n).padStart(2, "0");
const hhmm = ms => { const w = wall(ms); return `${w.h}:${two(w.mi)}`; };
const dayLabel = ms => { const w = wall(ms); return `${MONTHS[w.mo - 1]} ${w.d}`; };
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
  legend.innerHTML = "<span><i></i>today</span><span class=lp><i class=p></i>usual for the weekday</span>"
    + "<span class=lf><i class=f></i>forecast</span><span class=lf><i class=b></i>likely range</span><span><i class=n></i>now</span>";
  const note = el("p", { class: "note" });
  const btn = el("button", { type: "button" }, "History: last 4 weeks");
  btn.addEventListener("click", () => {
    const l = lots.get(view.lot_id);
    l.showingHistory = !l.showingHistory;
    btn.textContent = l.showingHistory ? "Back to today" : "History: last 4 weeks";
    if (l.showingHistory) showHistory(view.lot_id); else { $(".legend", l.el).hidden = false; drawChart(view.lot_id); noteFor(l); }
  });
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
  if (!l.showingHistory) drawChart(id);
}

// A lot without an event for the configured time: its count may be a broken counter's.
function markStale(l) {
  const last = l.view.updated_at ? Date.parse(l.view.updated_at) : NaN;
  const stale = staleAfterMs !== null && Number.isFinite(last) && Date.now() - last > staleAfterMs;
  const was = l.stale;
  l.stale = stale;
  l.el.classList.toggle("is-stale", stale);
  if (was !== stale) { place(); summary(); }
  const p = $(".stale", l.el);
  p.hidden = !stale;
  if (stale) {
    const when = new Date(last).toLocaleString(undefined, { timeZone: campusTz, dateStyle: "medium", timeStyle: "short" });
    p.textContent = `Stale: no event since ${when}`;
  }
}

// The header's totals: live lots only (a stale lot's count may be a broken counter's).
function summary() {
  let cap = 0, occ = 0, live = 0, stale = 0;
  for (const l of lots.values()) {
    if (l.stale) { stale += 1; continue; }
    live += 1; cap += l.view.capacity; occ += Math.min(l.view.occupancy, l.view.capacity);
  }
  const s = $("#summary");
  s.innerHTML = "";
  s.append(el("span", {}, ""), el("span", {}, ""));
  s.children[0].innerHTML = `<b>${(cap - occ).toLocaleString()}</b> free spaces`;
  s.children[1].innerHTML = `<b>${live}</b> lots · ${(cap ? (100 * occ / cap) : 0).toFixed(0)}% full`;
  if (stale) s.append(el("span", { class: "stale-count" }, `${stale} stale ${stale === 1 ? "lot" : "lots"} left out (below)`));
  $("#empty").hidden = lots.size > 0;
  $("#tools").hidden = lots.size <= TOOLS_FROM;
}

// Search, sort and filter, once there are more lots than fit a screen.
const TOOLS_FROM = 12;
function place() {
  const q = ($("#search").value || "").trim().toLowerCase();
  const order = $("#sort").value;
  const onlyFree = $("#only-free").checked;
  const all = [...lots.values()];
  const free = l => l.view.capacity - l.view.occupancy;
  const share = l => l.view.capacity > 0 ? l.view.occupancy / l.view.capacity : 0;
  const by = {
    name: (a, b) => (a.view.name || a.view.lot_id).localeCompare(b.view.name || b.view.lot_id),
    free: (a, b) => free(b) - free(a),
    full: (a, b) => share(b) - share(a),
  }[order] || ((a, b) => a.view.lot_id.localeCompare(b.view.lot_id));
  all.sort(by);
  const grid = $("#lots"), staleGrid = $("#stale-lots");
  let shownStale = 0;
  for (const l of all) {
    const text = `${l.view.name || ""} ${l.view.lot_id}`.toLowerCase();
    l.el.hidden = (q && !text.includes(q)) || (onlyFree && free(l) <= 0);
    (l.stale ? staleGrid : grid).append(l.el);
    if (l.stale && !l.el.hidden) shownStale += 1;
  }
  $("#stale-section").hidden = shownStale === 0;
}

function upsert(view) {
  let l = lots.get(view.lot_id);
  if (!l) {
    l = { view, el: card(view), recent: [], extra: null };
    lots.set(view.lot_id, l);
    place();
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
  l.forecast = ts.ok ? { version: ts.body.model_version, method: ts.body.forecast_method } : null;
  if (!l.showingHistory) noteFor(l);
  if (!l.showingHistory) drawChart(id);
}

// The card's line under the chart; the model's version is in its tooltip only.
function noteFor(l) {
  const note = $(".note", l.el);
  const f = l.forecast;
  note.textContent = f
    ? (!f.version ? "No forecast yet."
      : f.method === "partial_profile" ? "Forecast from the lot's few days so far."
        : "Forecast for the next hours, with its likely range.")
    : !forecastServed ? "Forecasts are off on this service." : "";
  note.title = f && f.version ? `model ${f.version}${f.method ? ` (${f.method})` : ""}` : "";
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

// The chart's frame: plot area right of a y-axis in percent full, a time axis below.
const W = 300, H = 100, X0 = 30;
function frame(svg, cap) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const y = v => H - (Math.max(0, Math.min(cap, v)) / cap) * (H - 14) - 2;
  for (const [share, label] of [[0, "0%"], [0.5, "50%"], [1, "100%"]]) {
    const at = y(share * cap);
    svg.append(svgEl("line", { class: "grid", x1: X0, x2: W, y1: at, y2: at }));
    const t = svgEl("text", { x: X0 - 3, y: at + 3, "text-anchor": "end" }); t.textContent = label; svg.append(t);
  }
  const caption = svgEl("text", { class: "axis", x: 0, y: 6 }); caption.textContent = "% full"; svg.append(caption);
  svg.setAttribute("viewBox", `0 0 ${W} ${H + 12}`);
  return y;
}
function polyline(svg, pts, cls) {
  if (pts.length === 1) {
    svg.append(svgEl("circle", { class: cls, cx: pts[0][0].toFixed(1), cy: pts[0][1].toFixed(1), r: 2.5 }));
    return;
  }
  if (pts.length < 2) return;
  svg.append(svgEl("polyline", { class: cls, points: pts.map(([a, b]) => `${a.toFixed(1)},${b.toFixed(1)}`).join(" ") }));
}

function drawChart(id) {
  const l = lots.get(id);
  const svg = $("svg.chart", l.el);
  const cap = Math.max(1, l.view.capacity);
  const y = frame(svg, cap);
  // The campus day of now; for a lot whose newest reading is older (quiet since an
  // earlier day), that reading's day.
  const now = Date.now();
  const newest = l.recent.length ? l.recent[l.recent.length - 1][0] : now;
  let t0 = campusMidnight(now);
  if (newest < t0) t0 = campusMidnight(newest);
  const span = 864e5;
  const x = t => X0 + ((t - t0) / span) * (W - X0);
  for (const h of [6, 12, 18]) {
    const at = X0 + (h / 24) * (W - X0);
    svg.append(svgEl("line", { class: "grid", x1: at, x2: at, y1: 0, y2: H }));
    const t = svgEl("text", { x: at, y: H + 10, "text-anchor": "middle" }); t.textContent = `${h}:00`; svg.append(t);
  }
  let today = l.recent.filter(([t]) => t >= t0 && t < t0 + span);
  let forecast = [];
  if (l.extra && l.extra.series) {
    const hist = l.extra.series.filter(p => p.kind === "history").map(p => [Date.parse(p.time), p.occupancy]).filter(([t]) => t >= t0 && t < t0 + span);
    if (hist.length > today.length) today = hist;
    forecast = l.extra.series.filter(p => p.kind === "forecast").map(p => [Date.parse(p.time), p.occupancy, p.low, p.high]).filter(([t]) => t >= t0 && t < t0 + span);
  }
  // The forecast starts where today's line ends, so the two meet.
  const last = today.length ? today[today.length - 1] : null;
  if (last) {
    forecast = forecast.filter(([t]) => t > last[0]);
    if (forecast.length) forecast.unshift([last[0], last[1], last[1], last[1]]);
  }
  if (forecast.length > 1) {
    const upper = forecast.map(([t, , , hi]) => `${x(t).toFixed(1)},${y(hi).toFixed(1)}`);
    const lower = forecast.slice().reverse().map(([t, , lo]) => `${x(t).toFixed(1)},${y(lo).toFixed(1)}`);
    svg.append(svgEl("polygon", { class: "band", points: upper.concat(lower).join(" ") }));
    polyline(svg, forecast.map(([t, v]) => [x(t), y(v)]), "forecast");
  }
  polyline(svg, today.map(([t, v]) => [x(t), y(v)]), "today");
  // The usual profile on top, dashed, so today's line never hides it.
  if (l.extra && l.extra.profile) polyline(svg, l.extra.profile.map(([m, v]) => [X0 + (m / 1440) * (W - X0), y(v)]), "profile");
  if (now >= t0 && now < t0 + span) {
    const at = x(now);
    svg.append(svgEl("line", { class: "now", x1: at, x2: at, y1: 0, y2: H, "data-time": hhmm(now) }));
    // The label reads to the left of the line near the chart's right edge, so it is
    // never cut off there (a lot whose day is nearly over).
    const left = at > W - 60;
    const t = svgEl("text", { class: "now", x: left ? at - 2 : at + 2, y: 7, "text-anchor": left ? "end" : "start" });
    t.textContent = `now ${hhmm(now)}`; svg.append(t);
  }
  $(".legend", l.el).hidden = false;
}

// Four weeks of hourly means, with the dates of their Mondays and a legend of its own.
async function showHistory(id) {
  const l = lots.get(id);
  const from = new Date(Date.now() - 28 * 864e5).toISOString();
  const r = await getJSON(`/v1/lots/${encodeURIComponent(id)}/history?bucket=1h&from=${from}`);
  const note = $(".note", l.el);
  if (!l.showingHistory) return;
  if (!r.ok) { note.textContent = r.body.message || `history unavailable (${r.status})`; return; }
  const pts = r.body.points;
  if (!pts.length) { note.textContent = "No history in the last 4 weeks."; return; }
  const svg = $("svg.chart", l.el);
  const cap = Math.max(1, l.view.capacity);
  const y = frame(svg, cap);
  const t0 = Date.parse(pts[0].start), t1 = Math.max(t0 + 1, Date.parse(pts[pts.length - 1].start));
  const x = t => X0 + ((t - t0) / (t1 - t0)) * (W - X0);
  // A tick at each campus midnight starting a week (Monday).
  for (let t = campusMidnight(t0) + 864e5; t < t1; t += 864e5) {
    const m = campusMidnight(t + 3 * 36e5);
    if (wall(m + 36e5).wd !== 1) continue;
    const at = x(m);
    svg.append(svgEl("line", { class: "grid", x1: at, x2: at, y1: 0, y2: H }));
    const label = svgEl("text", { class: "date", x: at, y: H + 10, "text-anchor": "middle" }); label.textContent = dayLabel(m + 36e5); svg.append(label);
  }
  polyline(svg, pts.map(p => [x(Date.parse(p.start)), y(p.occupancy_mean)]), "history");
  $(".legend", l.el).hidden = true;
  note.textContent = `Hourly mean occupancy (% full), ${dayLabel(t0)} to ${dayLabel(t1)}; ticks on Mondays.`;
  note.title = "";
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
      if (Array.isArray(m.utc_offsets)) utcOffsets = m.utc_offsets.map(o => [Date.parse(o.from), o.utc_offset_secs]);
      if (m.timezone && m.timezone !== campusTz) {
        campusTz = m.timezone;
        $("#clock").textContent = `Days and hours in ${campusTz}, as the server tells them.`;
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

for (const id of ["#search", "#sort", "#only-free"]) $(id).addEventListener("input", place);
summary();
connect();
setInterval(() => { for (const id of lots.keys()) loadCharts(id); }, 60000);
setInterval(() => { for (const l of lots.values()) markStale(l); }, 15000);
