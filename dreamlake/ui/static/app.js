// DreamLake page: sessions, one session (params, tracks, logs, files), compare.
// Plain JS, no build step. Every URL is relative so the page works mounted anywhere.
"use strict";

const POLL_MS = 1000;          // live refresh period while a view is open
const LOG_LEVELS = ["debug", "info", "warn", "error", "fatal"];
const MAX_CHARTS = 16;         // charts per track (fields beyond are listed, not drawn)
const TABLE_ROWS = 50;
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"];

const view = document.getElementById("view");
const dl = (window.dl = { charts: {}, compareChart: null, timers: [], gen: 0 });

// -- small helpers --------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}
function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") p.set(k, v);
  return p.toString();
}
async function api(path, params) {
  const res = await fetch(`api/${path}?${qs(params || {})}`);
  const body = await res.json();
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}
function fmtTime(iso) { return iso ? iso.replace("T", " ").replace(/\.\d+Z$/, "Z") : ""; }
function fmtVal(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(6).replace(/\.?0+$/, "");
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}
function badge(status) { return h("span", { class: `badge ${status}` }, status); }
function tags(list) { return (list || []).map((t) => h("span", { class: "tag" }, t)); }
function every(ms, fn) {
  const gen = dl.gen;
  const tick = async () => {
    if (gen !== dl.gen) return;
    const live = document.getElementById("live");
    try {
      await fn();
      live.className = ""; live.textContent = "● live";
    } catch (e) {
      console.warn(e);
      live.className = "off"; live.textContent = `● not updating: ${e.message}`;
    }
    if (gen === dl.gen) dl.timers.push(setTimeout(tick, ms));
  };
  dl.timers.push(setTimeout(tick, ms));
}
function leaveView() {
  dl.gen += 1;
  dl.timers.forEach(clearTimeout);
  dl.timers = [];
  Object.values(dl.charts).forEach((c) => c.destroy());
  dl.charts = {};
  if (dl.compareChart) { dl.compareChart.destroy(); dl.compareChart = null; }
}
function selected() { return JSON.parse(sessionStorage.getItem("dl.selected") || "[]"); }
function setSelected(list) {
  sessionStorage.setItem("dl.selected", JSON.stringify(list));
  document.getElementById("compare-link").textContent = `Compare (${list.length})`;
}

// -- routing ----------------------------------------------------------------------
async function route() {
  leaveView();
  const hash = location.hash.slice(1) || "/";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  view.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  try {
    if (path.startsWith("/s/")) await sessionView(decodeURIComponent(path.slice(3)), params);
    else if (path === "/compare") await compareView(params.get("p") ? params.get("p").split(",") : selected());
    else await sessionsView(params);
  } catch (e) {
    view.replaceChildren(h("p", { class: "error" }, `Error: ${e.message}`));
  }
}
window.addEventListener("hashchange", route);

// -- sessions list ----------------------------------------------------------------
async function sessionsView(params) {
  const filters = { workspace: params.get("workspace") || "", status: params.get("status") || "", tag: params.get("tag") || "", q: params.get("q") || "" };
  const body = h("tbody", { id: "sessions-body" });
  const choose = (name, values) => h("select", { name, onchange: apply },
    h("option", { value: "" }, `any ${name}`), values.map((v) => h("option", { value: v, selected: v === filters[name] }, v)));
  const first = await api("sessions", { ...filters, params: 1 });
  const form = h("div", { class: "filters" },
    choose("workspace", first.workspaces), choose("status", first.statuses), choose("tag", first.tags),
    h("input", { type: "search", name: "q", placeholder: "filter by name", value: filters.q, onchange: apply }),
    h("button", { id: "compare-btn", onclick: () => { location.hash = `#/compare?p=${selected().map(encodeURIComponent).join(",")}`; } }, "Compare selected"));
  function apply() {
    const p = {};
    form.querySelectorAll("select, input[type=search]").forEach((el) => { if (el.value) p[el.name] = el.value; });
    location.hash = `#/?${qs(p)}`;
  }
  const count = h("span", { class: "muted", id: "sessions-count" });
  view.replaceChildren(h("h1", {}, "Sessions ", count), form,
    h("table", { id: "sessions" }, h("thead", {}, h("tr", {}, ["", "session", "status", "tags", "created", "updated", "params"].map((c) => h("th", {}, c)))), body));
  const render = (data) => {
    count.textContent = `${data.sessions.length} of ${data.total}`;
    const chosen = new Set(selected());
    body.replaceChildren(...data.sessions.map((s) => h("tr", { "data-prefix": s.prefix },
      h("td", {}, h("input", { type: "checkbox", class: "pick", checked: chosen.has(s.prefix), onchange: (e) => {
        const now = new Set(selected());
        e.target.checked ? now.add(s.prefix) : now.delete(s.prefix);
        setSelected([...now]);
      } })),
      h("td", {}, h("a", { href: `#/s/${encodeURIComponent(s.prefix)}` }, s.prefix), s.description ? h("div", { class: "muted" }, s.description) : null),
      h("td", { class: "status" }, badge(s.status)),
      h("td", {}, tags(s.tags)),
      h("td", {}, fmtTime(s.createdAt)),
      h("td", {}, fmtTime(s.updatedAt)),
      h("td", { class: "params-cell" }, Object.entries(s.params || {}).map(([k, v]) => `${k}=${fmtVal(v)}`).join(", ")))));
    if (!data.sessions.length) body.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "no sessions match")));
  };
  render(first);
  every(POLL_MS * 2, async () => render(await api("sessions", { ...filters, params: 1 })));
}

// -- one session ------------------------------------------------------------------
function trackTree(tracks, current, prefix) {
  const root = {};
  for (const t of tracks) {
    let node = root;
    t.name.split("/").forEach((part, i, parts) => {
      node[part] = node[part] || { children: {} };
      if (i === parts.length - 1) node[part].track = t;
      node = node[part].children;
    });
  }
  const build = (node) => h("ul", {}, Object.entries(node).map(([name, n]) => h("li", {},
    n.track ? h("a", { href: `#/s/${encodeURIComponent(prefix)}?track=${encodeURIComponent(n.track.name)}`, class: n.track.name === current ? "selected" : "", "data-track": n.track.name },
      name, " ", h("span", { class: "count", "data-count": n.track.name }, n.track.totalDataPoints.toLocaleString())) : h("span", {}, name + "/"),
    Object.keys(n.children).length ? build(n.children) : null)));
  return h("div", { class: "tree" }, build(root));
}

async function sessionView(prefix, params) {
  // the track named in the URL is fetched alongside the session: one round trip less to the first chart
  const early = params.get("track") ? api("track", { prefix, track: params.get("track") }).catch(() => null) : null;
  const data = await api("session", { prefix });
  const s = data.session;
  const current = params.get("track") || (data.tracks[0] && data.tracks[0].name);
  const status = h("span", { id: "session-status" }, badge(s.status));
  const tabs = h("div", { class: "tabs toolbar" });
  const body = h("div", {});
  view.replaceChildren(
    h("h1", {}, s.prefix, " ", status),
    h("div", { class: "muted" }, s.description || "", " ", tags(s.tags), ` created ${fmtTime(s.createdAt)} · updated `, h("span", { id: "session-updated" }, fmtTime(s.updatedAt)), s.error ? h("div", { class: "error" }, s.error) : null),
    tabs, body);
  const panes = {
    tracks: () => tracksPane(prefix, data, current, early),
    params: () => paramsPane(data.params),
    logs: () => logsPane(prefix),
    files: () => filesPane(prefix),
  };
  let live = null;
  const show = async (name) => {
    tabs.querySelectorAll("button").forEach((b) => b.classList.toggle("on", b.dataset.tab === name));
    Object.values(dl.charts).forEach((c) => c.destroy());
    dl.charts = {};
    live = await panes[name]();
  };
  for (const name of Object.keys(panes)) tabs.append(h("button", { "data-tab": name, onclick: () => show(name) }, name));
  await show(params.get("tab") || "tracks");
  every(POLL_MS, async () => {
    const now = await api("session", { prefix });
    status.replaceChildren(badge(now.session.status));
    document.getElementById("session-updated").textContent = fmtTime(now.session.updatedAt);
    for (const t of now.tracks) {
      const el = view.querySelector(`[data-count="${CSS.escape(t.name)}"]`);
      if (el) el.textContent = t.totalDataPoints.toLocaleString();
    }
    if (live) await live(now);
  });
}

function paramsPane(params) {
  const rows = Object.entries(params).sort(([a], [b]) => a.localeCompare(b));
  const body = view.lastChild;
  body.replaceChildren(h("table", { id: "params" }, h("thead", {}, h("tr", {}, h("th", {}, "param"), h("th", {}, "value"))),
    h("tbody", {}, rows.map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", {}, fmtVal(v)))))));
  if (!rows.length) body.append(h("p", { class: "muted" }, "no params"));
  return null;
}

function makeChart(el, title, xIsTime, series, onZoom, onReset, onWheel) {
  const width = Math.max(300, el.clientWidth - 12);
  const opts = {
    width, height: 220, title,
    scales: { x: { time: xIsTime } },
    cursor: { drag: { x: true, y: false, setScale: false } },
    series: [{}, ...series.map((s, i) => ({ label: s, stroke: COLORS[i % COLORS.length], width: 1.25, spanGaps: true }))],
    hooks: {
      setSelect: [(u) => {
        if (u.select.width < 3) return;
        const lo = u.posToVal(u.select.left, "x"), hi = u.posToVal(u.select.left + u.select.width, "x");
        u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
        onZoom(lo, hi);
      }],
    },
  };
  const chart = new uPlot(opts, [[], ...series.map(() => [])], el);
  new ResizeObserver(() => {  // follow the box when the window (or grid) changes size
    const w = Math.max(300, el.clientWidth - 12);
    if (Math.abs(w - chart.width) > 2) chart.setSize({ width: w, height: chart.height });
  }).observe(el);
  chart.over.addEventListener("dblclick", () => onReset());
  if (onWheel) chart.over.addEventListener("wheel", (e) => {
    e.preventDefault();
    onWheel(chart.posToVal(e.offsetX, "x"), e.deltaY < 0 ? 0.5 : 2);
  }, { passive: false });
  return chart;
}

function indexRange(series, xlo, xhi) {
  // rows whose x falls in [xlo, xhi], widened to the neighbouring shown points
  const xs = series.xs, idx = series.index;
  let a = 0, b = xs.length - 1;
  while (a < xs.length && xs[a] < xlo) a++;
  while (b >= 0 && xs[b] > xhi) b--;
  a = Math.max(0, a - 1); b = Math.min(xs.length - 1, b + 1);
  if (b < a) return null;
  return [idx[a], idx[b] + 1];
}

async function tracksPane(prefix, data, current, early) {
  const body = view.lastChild;
  if (!current) { body.replaceChildren(h("p", { class: "muted" }, "no tracks yet")); return null; }
  const info = (early && (await early)) || (await api("track", { prefix, track: current }));
  const fields = info.fields.slice(0, MAX_CHARTS);
  const state = { x: "_ts", lo: null, hi: null, total: info.totalDataPoints, series: null, tableStart: null };
  const xSelect = h("select", { id: "x-axis", onchange: () => { state.x = xSelect.value; state.lo = state.hi = null; rebuild(); } },
    ["_ts", "index", ...info.fields].map((f) => h("option", { value: f }, f === "_ts" ? "time (_ts)" : f)));
  const zoomInfo = h("span", { class: "muted", id: "zoom-info" });
  const pan = (dir) => {
    if (state.lo === null) return;
    const width = state.hi - state.lo, shift = Math.max(1, Math.floor(width / 2)) * dir;
    state.lo = Math.max(0, Math.min(state.total - width, state.lo + shift)); state.hi = state.lo + width;
    refresh();
  };
  const chartsEl = h("div", { class: "charts", id: "charts" });
  const tableEl = h("div", { class: "panel" });
  body.replaceChildren(h("div", { class: "layout" },
    h("div", { class: "panel" }, h("b", {}, "Tracks"), trackTree(data.tracks, current, prefix)),
    h("div", {},
      h("div", { class: "toolbar" }, h("b", { id: "track-name" }, current), h("span", { class: "muted", id: "track-total" }, `${state.total.toLocaleString()} rows`),
        "x:", xSelect,
        h("button", { onclick: () => pan(-1), title: "pan left" }, "◀"), h("button", { onclick: () => pan(1), title: "pan right" }, "▶"),
        h("button", { id: "reset-zoom", onclick: () => { state.lo = state.hi = null; refresh(); } }, "reset zoom"), zoomInfo,
        h("span", { class: "muted" }, "drag or wheel to zoom, ◀ ▶ to pan, double-click to reset")),
      info.fields.length > MAX_CHARTS ? h("p", { class: "muted" }, `showing ${MAX_CHARTS} of ${info.fields.length} fields`) : null,
      fields.length ? chartsEl : h("p", { class: "muted" }, "no numeric fields: see the table"),
      tableEl)));

  let wheeling = false;
  async function wheelZoom(x, factor) {
    // zoom in index space around the shown point nearest the cursor: in (0.5) or out (2)
    const sr = state.series;
    if (wheeling || !sr || !sr.xs.length) return;
    let near = 0;
    sr.xs.forEach((v, i) => { if (Math.abs(v - x) < Math.abs(sr.xs[near] - x)) near = i; });
    const lo = state.lo === null ? 0 : state.lo, hi = state.hi === null ? state.total : state.hi;
    const width = Math.max(10, Math.round((hi - lo) * factor)), center = sr.index[near];
    const newLo = Math.max(0, Math.min(state.total - width, center - Math.round(width * (center - lo) / Math.max(1, hi - lo))));
    const newHi = Math.min(state.total, newLo + width);
    if (newLo <= 0 && newHi >= state.total) { state.lo = state.hi = null; } else { state.lo = newLo; state.hi = newHi; }
    wheeling = true;
    try { await refresh(); } finally { wheeling = false; }
  }

  function rebuild() {
    Object.values(dl.charts).forEach((c) => c.destroy());
    dl.charts = {};
    chartsEl.replaceChildren();
    for (const f of fields) {
      if (f === state.x) continue;
      const box = h("div", { class: "chart", "data-field": f });
      chartsEl.append(box);
      dl.charts[f] = makeChart(box, f, state.x === "_ts", [f],
        (xlo, xhi) => { const r = state.series && indexRange(state.series, xlo, xhi); if (r) { [state.lo, state.hi] = r; refresh(); } },
        () => { state.lo = state.hi = null; refresh(); },
        (x, factor) => wheelZoom(x, factor));
    }
    return refresh();
  }
  async function refresh() {
    const shown = fields.filter((f) => f !== state.x);
    if (!shown.length) return;
    const box = chartsEl.querySelector(".chart");  // one point per pixel of a chart
    const width = Math.max(300, (box && box.clientWidth) || 800);
    const s = await api("series", { prefix, track: current, fields: shown.join(","), x: state.x, lo: state.lo, hi: state.hi, points: Math.min(4000, Math.round(width)) });
    state.series = s;
    for (const f of shown) {
      const chart = dl.charts[f];
      if (!chart) continue;
      chart.setData([s.xs, s.columns[f]]);
      chart.root.parentElement.dataset.points = String(s.xs.length);
    }
    zoomInfo.textContent = state.lo === null ? "" : `rows ${s.lo.toLocaleString()}–${(s.hi - 1).toLocaleString()}${s.exact ? "" : ` (sampled every ~${Math.round(s.stride)} rows)`}`;
  }
  async function table(start) {
    const r = await api("rows", { prefix, track: current, start, limit: TABLE_ROWS });
    state.tableStart = start;
    const cols = [...new Set(r.rows.flatMap((row) => Object.keys(row.data)))];
    const first = r.start, last = r.start + r.rows.length;
    tableEl.replaceChildren(
      h("div", { class: "toolbar" }, h("b", {}, "Rows"), h("span", { class: "muted" }, `${first.toLocaleString()}–${Math.max(first, last - 1).toLocaleString()} of ${r.total.toLocaleString()}`),
        h("button", { onclick: () => table(0) }, "first"),
        h("button", { onclick: () => table(Math.max(0, first - TABLE_ROWS)) }, "prev"),
        h("button", { onclick: () => table(Math.min(Math.max(0, r.total - TABLE_ROWS), first + TABLE_ROWS)) }, "next"),
        h("button", { onclick: () => table(null) }, "newest")),
      h("div", { class: "scroll" }, h("table", { id: "rows" },
        h("thead", {}, h("tr", {}, h("th", {}, "index"), h("th", {}, "_ts"), cols.map((c) => h("th", {}, c)))),
        h("tbody", {}, r.rows.map((row) => h("tr", { "data-index": row.index }, h("td", { class: "num" }, row.index), h("td", {}, row.ts.toFixed(3)),
          cols.map((c) => h("td", { class: typeof row.data[c] === "number" ? "num" : "" }, fmtVal(row.data[c])))))))));
  }
  await rebuild();
  await table(null);
  return async (now) => {  // live: new rows redraw the unzoomed view and the newest rows
    const t = now.tracks.find((x) => x.name === current);
    if (!t || t.totalDataPoints === state.total) return;
    state.total = t.totalDataPoints;
    document.getElementById("track-total").textContent = `${state.total.toLocaleString()} rows`;
    if (state.lo === null) await refresh();
    if (state.tableStart === null) await table(null);
  };
}

async function logsPane(prefix) {
  const body = view.lastChild;
  const levels = new Set(LOG_LEVELS);
  const list = h("div", { class: "logs scroll", id: "logs" });
  const search = h("input", { type: "search", id: "log-search", placeholder: "search messages", onchange: load });
  const count = h("span", { class: "muted", id: "log-count" });
  let last = -1, first = null;
  const older = h("button", { id: "log-older", onclick: async () => {
    if (!first) return;
    const r = await api("logs", { ...query(), before: first, limit: 500 });
    list.prepend(...r.entries.map(line));
    if (r.entries.length) first = r.entries[0].index;
    older.disabled = !r.entries.length || first === 0;
    count.textContent = `${list.children.length} shown of ${r.total} entries`;
  } }, "older");
  body.replaceChildren(h("div", { class: "filters" },
    LOG_LEVELS.map((lvl) => h("label", {}, h("input", { type: "checkbox", class: "lvl", value: lvl, checked: true, onchange: (e) => { e.target.checked ? levels.add(lvl) : levels.delete(lvl); load(); } }), lvl)),
    search, older, count), list);
  const line = (e) => h("div", { class: `entry lvl-${e.level}`, "data-index": e.index },
    `${fmtTime(e.timestamp)} ${String(e.level || "").padEnd(5)} ${e.message}`, e.metadata ? `  ${JSON.stringify(e.metadata)}` : "");
  const query = () => ({ prefix, level: [...levels].join(","), q: search.value });
  async function load() {
    if (!levels.size) { list.replaceChildren(); count.textContent = "no level chosen"; return; }
    const r = await api("logs", { ...query(), limit: 500 });
    list.replaceChildren(...r.entries.map(line));
    last = r.total - 1;
    first = r.entries.length ? r.entries[0].index : null;
    older.disabled = !first;
    count.textContent = `${r.entries.length} shown of ${r.total} entries`;
    list.scrollTop = list.scrollHeight;
  }
  await load();
  return async (now) => {
    if (now.logCount - 1 <= last || !levels.size) return;
    const r = await api("logs", { ...query(), after: last, limit: 1000 });
    list.append(...r.entries.map(line));
    last = r.entries.length && r.entries.length === 1000 ? r.entries[r.entries.length - 1].index : r.total - 1;
    count.textContent = `${list.children.length} shown of ${r.total} entries`;
    list.scrollTop = list.scrollHeight;
  };
}

async function filesPane(prefix) {
  const body = view.lastChild;
  const r = await api("files", { prefix });
  body.replaceChildren(h("table", { id: "files" },
    h("thead", {}, h("tr", {}, ["file", "path", "size", "tags", "description", "created"].map((c) => h("th", {}, c)))),
    h("tbody", {}, r.files.map((f) => h("tr", {},
      h("td", {}, h("a", { href: `api/file?${qs({ prefix, id: f.id })}`, download: f.filename }, f.filename)),
      h("td", {}, f.path), h("td", { class: "num" }, (f.sizeBytes || 0).toLocaleString()), h("td", {}, tags(f.tags)),
      h("td", {}, f.description || ""), h("td", {}, fmtTime(f.createdAt)))))));
  if (!r.files.length) body.append(h("p", { class: "muted" }, "no files"));
  return null;
}

// -- compare ------------------------------------------------------------------------
async function compareView(prefixes) {
  if (prefixes.length < 1) {
    view.replaceChildren(h("h1", {}, "Compare"), h("p", { class: "muted" }, "Tick sessions in the list, then press “Compare selected”."));
    return;
  }
  const base = await api("compare", { prefixes: prefixes.join(",") });
  const onlyDiff = h("input", { type: "checkbox", id: "only-diff", onchange: () => paramsTable() });
  const paramsEl = h("div", {});
  const trackSel = h("select", { id: "cmp-track", onchange: () => loadTrack() }, base.commonTracks.map((t) => h("option", { value: t }, t)));
  const fieldSel = h("select", { id: "cmp-field", onchange: () => draw() });
  const xSel = h("select", { id: "cmp-x", onchange: () => draw() });
  const statsEl = h("div", {});
  const chartEl = h("div", { class: "chart", id: "compare-chart" });
  view.replaceChildren(h("h1", {}, `Compare ${prefixes.length} sessions`),
    h("h2", {}, "Params ", h("label", { class: "muted" }, onlyDiff, " only differences")), paramsEl,
    h("h2", {}, "Tracks"),
    base.commonTracks.length ? h("div", { class: "toolbar" }, "track", trackSel, "field", fieldSel, "x", xSel) : h("p", { class: "muted" }, "these sessions share no track"),
    statsEl, chartEl);
  function paramsTable() {
    const rows = base.params.filter((p) => !onlyDiff.checked || p.differs);
    paramsEl.replaceChildren(h("table", { id: "compare-params" },
      h("thead", {}, h("tr", {}, h("th", {}, "param"), base.sessions.map((s) => h("th", {}, h("a", { href: `#/s/${encodeURIComponent(s.prefix)}` }, s.prefix), " ", badge(s.status))))),
      h("tbody", {}, rows.map((p) => h("tr", { class: p.differs ? "differs" : "", "data-key": p.key }, h("td", {}, p.key), p.values.map((v) => h("td", {}, fmtVal(v))))))));
  }
  paramsTable();
  let fields = [];
  async function loadTrack() {
    const info = await api("track", { prefix: prefixes[0], track: trackSel.value });
    fields = info.fields;
    const keepField = fieldSel.value, keepX = xSel.value;
    fieldSel.replaceChildren(...fields.map((f) => h("option", { value: f, selected: f === keepField }, f)));
    xSel.replaceChildren(h("option", { value: "_ts" }, "time since start"), h("option", { value: "index" }, "row index"),
      ...fields.map((f) => h("option", { value: f, selected: f === keepX || (!keepX && f === "step") }, f)));
    await draw();
  }
  let drawn = 0; // the latest draw wins: an older one still waiting for the server must not replace it
  async function draw() {
    const track = trackSel.value, field = fieldSel.value, x = xSel.value;
    if (!track || !field) return;
    const mine = ++drawn;
    const st = await api("compare", { prefixes: prefixes.join(","), track, fields: fields.join(",") });
    if (mine !== drawn) return;
    statsEl.replaceChildren(h("table", { id: "compare-stats" },
      h("thead", {}, h("tr", {}, ["session", "field", "last", "min", "max", "rows"].map((c) => h("th", {}, c)))),
      h("tbody", {}, prefixes.flatMap((p) => {
        const s = st.stats[p];
        if (!s) return [h("tr", {}, h("td", {}, p), h("td", { colspan: 5, class: "muted" }, "no such track"))];
        return fields.map((f) => h("tr", { class: f === field ? "differs" : "", "data-prefix": p, "data-field": f }, h("td", {}, p), h("td", {}, f),
          ["last", "min", "max"].map((k) => h("td", { class: "num" }, fmtVal(s.fields[f][k]))),
          h("td", { class: "num" }, s.total.toLocaleString() + (s.exact ? "" : " (sampled)"))));
      }))));
    const got = await Promise.all(prefixes.map((p) => api("series", { prefix: p, track, fields: field, x, points: 1500 }).catch(() => null)));
    if (mine !== drawn) return;
    const tables = [], labels = [];
    got.forEach((s, i) => {
      if (!s || !s.xs.length) return;
      const xs = x === "_ts" ? s.xs.map((v) => v - s.xs[0]) : s.xs;
      // uPlot.join needs strictly ascending x: keep each x's last value
      const ux = [], uy = [];
      xs.map((v, j) => [v, s.columns[field][j]]).sort((a, b) => a[0] - b[0]).forEach(([v, y]) => {
        if (ux.length && ux[ux.length - 1] === v) uy[uy.length - 1] = y; else { ux.push(v); uy.push(y); }
      });
      tables.push([ux, uy]); labels.push(prefixes[i]);
    });
    if (dl.compareChart) dl.compareChart.destroy();
    chartEl.replaceChildren();
    if (!tables.length) { chartEl.append(h("p", { class: "muted" }, "no data")); return; }
    const joined = uPlot.join(tables);
    dl.compareChart = new uPlot({
      width: Math.max(400, chartEl.clientWidth - 12), height: 320, title: `${track} · ${field}`,
      scales: { x: { time: false } },
      series: [{ label: x === "_ts" ? "s" : x }, ...labels.map((l, i) => ({ label: l, stroke: COLORS[i % COLORS.length], width: 1.25, spanGaps: true }))],
    }, joined, chartEl);
    chartEl.dataset.series = String(labels.length);
  }
  if (base.commonTracks.length) await loadTrack();
}

setSelected(selected());
route();
