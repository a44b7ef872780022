// dsanet operator console. Plain JavaScript, no build step, no external assets.
// Reads /api/v1 (docs/api.md), follows the live feed (/api/v1/stream, Server-Sent Events) and redraws
// each camera's score timeline with its thresholds. Every text from the server goes in as textContent.
"use strict";

const API = "/api/v1";
const WINDOW_SECONDS = 120;   // span of a camera's timeline
const cams = new Map();       // name -> {el, snap, points: [{time, score}]}
const events = new Map();     // id -> payload
let nextCursor = null;
let drawPending = false;

const $ = (sel, root = document) => root.querySelector(sel);

async function api(path, opts = {}) {
  const res = await fetch(API + path, {headers: {"Content-Type": "application/json"}, ...opts});
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (!res.ok) {
    const err = new Error((body && body.error) || res.statusText);
    err.problems = (body && body.problems) || [err.message];
    throw err;
  }
  return body;
}

function fmt(v, digits = 2) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); }
function timeText(iso) { return iso ? new Date(iso).toLocaleTimeString() : ""; }

// ------------------------------------------------------------------------------------------ cameras
function cameraCard(name) {
  let c = cams.get(name);
  if (c) return c;
  const el = $("#camera-template").content.firstElementChild.cloneNode(true);
  el.dataset.camera = name;
  $(".cam-name", el).textContent = name;
  $(".cam-name", el).title = name;
  c = {el, snap: null, points: []};
  cams.set(name, c);
  $("#cameras").appendChild(el);
  $(".remove", el).addEventListener("click", async () => {
    if (!confirm(`Remove camera ${name}?`)) return;
    await change(c, () => api(`/cameras/${encodeURIComponent(name)}`, {method: "DELETE"}));
    dropCamera(name);
  });
  $(".toggle", el).addEventListener("click", () => change(c, () => api(`/cameras/${encodeURIComponent(name)}`,
    {method: "PATCH", body: JSON.stringify({enabled: !(c.snap && c.snap.enabled)})})));
  for (const input of [$(".on", el), $(".off", el)]) input.addEventListener("input", () => { input.dataset.dirty = "1"; });
  $(".save-thresholds", el).addEventListener("click", async () => {
    const body = {on_threshold: Number($(".on", el).value), off_threshold: Number($(".off", el).value)};
    if (await change(c, () => api(`/cameras/${encodeURIComponent(name)}`, {method: "PATCH", body: JSON.stringify(body)}))) {
      for (const input of [$(".on", el), $(".off", el)]) delete input.dataset.dirty;
    }
  });
  api(`/cameras/${encodeURIComponent(name)}/scores`).then(r => {
    c.points = r.scores.map(s => ({time: s.time, score: s.score})).concat(c.points);
    c.points.sort((a, b) => a.time - b.time);
    scheduleDraw();
  }).catch(() => {});
  refreshFilter();
  return c;
}

async function change(c, fn) {
  $(".cam-error", c.el).textContent = "";
  try {
    const r = await fn();
    if (r && r.note) showPersist(r.note);
    if (r && r.camera && r.camera.state) updateCamera(r.camera);
    return true;
  } catch (e) {
    $(".cam-error", c.el).textContent = e.problems.join("; ");
    return false;
  }
}

function dropCamera(name) {
  const c = cams.get(name);
  if (c) { c.el.remove(); cams.delete(name); }
  refreshFilter();
  $("#camera-count").textContent = `${cams.size} camera(s)`;
}

function updateCamera(s) {
  const c = cameraCard(s.name);
  c.snap = s;
  const el = c.el;
  const state = $(".state", el);
  state.textContent = s.state.replace("_", " ");
  state.className = "badge state " + s.state;
  el.classList.toggle("event-open", !!s.event_open);
  el.classList.toggle("disabled", !s.enabled);
  $(".fps", el).textContent = `${fmt(s.fps, 1)} fps`;
  $(".lag", el).textContent = s.lag_seconds === null ? "" : `lag ${fmt(s.lag_seconds, 2)} s`;
  $(".toggle", el).textContent = s.enabled ? "disable" : "enable";
  for (const [cls, key] of [[".on", "on_threshold"], [".off", "off_threshold"]]) {
    const input = $(cls, el);  // an edit the operator has not saved yet is never overwritten
    if (document.activeElement !== input && !input.dataset.dirty) input.value = s[key];
  }
  if (s.score !== null && !c.points.length) $(".score-value", el).textContent = fmt(s.score, 3);
  if (s.category) $(".category", el).textContent = s.category;
  scheduleDraw();
}

async function refreshCameras() {
  try {
    const r = await api("/cameras");
    const seen = new Set();
    for (const s of r.cameras) { updateCamera(s); seen.add(s.name); }
    for (const name of [...cams.keys()]) if (!seen.has(name)) dropCamera(name);
    $("#camera-count").textContent = `${r.cameras.length} camera(s)`;
  } catch (e) { /* the feed badge already says we are offline */ }
}

function onScore(s) {
  const c = cams.get(s.camera);
  if (!c) return;
  c.points.push({time: s.time, score: s.score});
  const horizon = s.time - WINDOW_SECONDS * 1.5;
  while (c.points.length && c.points[0].time < horizon) c.points.shift();
  $(".score-value", c.el).textContent = fmt(s.score, 3);
  $(".category", c.el).textContent = s.category ? `${s.category} ${fmt(s.category_score, 2)}` : "";
  scheduleDraw();
}

function scheduleDraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => { drawPending = false; for (const c of cams.values()) drawTimeline(c); });
}

function sizeCanvas(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 300, h = canvas.clientHeight || Number(canvas.getAttribute("height"));
  if (canvas.width !== Math.round(w * ratio)) { canvas.width = Math.round(w * ratio); canvas.height = Math.round(h * ratio); }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  return {ctx, w, h};
}

// Draws score points over [t0, t1] with the on/off thresholds; shared by timelines and event curves.
function drawCurve(canvas, points, t0, t1, on, off, span) {
  const {ctx, w, h} = sizeCanvas(canvas);
  const pad = {l: 26, r: 6, t: 6, b: 16};
  const x = t => pad.l + (w - pad.l - pad.r) * (t - t0) / Math.max(1e-6, t1 - t0);
  const y = v => pad.t + (h - pad.t - pad.b) * (1 - v);
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = "#f9fafb"; ctx.fillRect(pad.l, pad.t, w - pad.l - pad.r, h - pad.t - pad.b);
  if (span) {
    ctx.fillStyle = "rgba(220,38,38,.10)";
    ctx.fillRect(x(span[0]), pad.t, Math.max(2, x(span[1]) - x(span[0])), h - pad.t - pad.b);
  }
  ctx.font = "10px system-ui, sans-serif"; ctx.fillStyle = "#667085";
  for (const v of [0, 0.5, 1]) ctx.fillText(v.toFixed(1), 2, y(v) + 3);
  if (span) {  // an event's curve: clock times at both ends
    const clock = t => new Date(t * 1000).toLocaleTimeString();
    ctx.fillText(clock(t0), pad.l, h - 3);
    ctx.fillText(clock(t1), w - pad.r - ctx.measureText(clock(t1)).width, h - 3);
  } else {
    ctx.fillText(`-${Math.round(t1 - t0)} s`, pad.l, h - 3);
    ctx.fillText("now", w - pad.r - 20, h - 3);
  }
  const same = on !== null && on !== undefined && Math.abs(on - off) < 0.08;  // one label for both
  for (const [v, color, label, dy] of [[on, "#dc2626", same ? "on/off" : "on", -3], [off, "#d97706", "off", 10]]) {
    if (v === null || v === undefined || (same && label === "off")) continue;
    ctx.strokeStyle = color; ctx.setLineDash([5, 4]); ctx.lineWidth = 1;
    ctx.beginPath(); ctx.moveTo(pad.l, y(v)); ctx.lineTo(w - pad.r, y(v)); ctx.stroke();
    ctx.fillStyle = color;
    ctx.fillText(`${label} ${Number(v).toFixed(2)}`, w - pad.r - (same ? 62 : 44), Math.min(h - pad.b - 2, Math.max(pad.t + 8, y(v) + dy)));
  }
  ctx.setLineDash([]);
  const pts = points.filter(p => p.time >= t0 - 1 && p.time <= t1 + 1);
  if (!pts.length) return;
  ctx.strokeStyle = "#2563eb"; ctx.lineWidth = 1.6; ctx.beginPath();
  pts.forEach((p, i) => (i ? ctx.lineTo(x(p.time), y(p.score)) : ctx.moveTo(x(p.time), y(p.score))));
  ctx.stroke();
  const last = pts[pts.length - 1];
  ctx.fillStyle = last.score >= on ? "#dc2626" : "#2563eb";
  ctx.beginPath(); ctx.arc(x(last.time), y(last.score), 3, 0, 2 * Math.PI); ctx.fill();
}

function drawTimeline(c) {
  const canvas = $(".timeline", c.el);
  const latest = c.points.length ? c.points[c.points.length - 1].time : Date.now() / 1000;
  const t1 = Math.max(Date.now() / 1000 - 30, latest);
  // a camera that started a moment ago fills its chart; the span grows up to WINDOW_SECONDS
  const first = c.points.length ? c.points[0].time : t1;
  const span = Math.min(WINDOW_SECONDS, Math.max(30, t1 - first + 2));
  const s = c.snap || {};
  drawCurve(canvas, c.points, t1 - span, t1, s.on_threshold, s.off_threshold);
}

function refreshFilter() {
  const sel = $("#event-filter");
  const cur = sel.value;
  const names = [...cams.keys()].sort();
  sel.replaceChildren(new Option("all cameras", ""), ...names.map(n => new Option(n, n)));
  sel.value = names.includes(cur) ? cur : "";
}

// ------------------------------------------------------------------------------------------- events
function eventItem(ev) {
  let li = document.querySelector(`.event-item[data-id="${CSS.escape(ev.id)}"]`);
  if (!li) {
    li = document.createElement("li");
    li.className = "event-item";
    li.tabIndex = 0;
    li.dataset.id = ev.id;
    li.addEventListener("click", () => openEvent(li.dataset.id));
    li.addEventListener("keydown", e => { if (e.key === "Enter") openEvent(li.dataset.id); });
  }
  li.dataset.camera = ev.camera;
  li.classList.toggle("open", ev.type !== "end");
  let thumb;
  if (ev.snapshot_url) {
    thumb = document.createElement("img");
    thumb.className = "thumb"; thumb.loading = "lazy"; thumb.alt = `snapshot of ${ev.camera}`;
    thumb.src = ev.snapshot_url;
  } else {
    thumb = document.createElement("div");
    thumb.className = "thumb none";
    thumb.textContent = ev.type === "end" ? "no snapshot" : "live";
  }
  const body = document.createElement("div");
  const title = document.createElement("div");
  title.className = "ev-title";
  title.textContent = `${ev.category} (${fmt(ev.category_score, 2)})`;
  const meta = document.createElement("div");
  meta.className = "ev-meta";
  const dur = ev.end_time ? `${((new Date(ev.end_time) - new Date(ev.start_time)) / 1000).toFixed(1)} s` : "open";
  meta.textContent = `${ev.camera} · ${timeText(ev.start_time)} · ${dur} · peak ${fmt(ev.peak_score, 2)}`;
  body.append(title, meta);
  li.replaceChildren(thumb, body);
  return li;
}

function showEvent(ev, prepend) {
  const prev = events.get(ev.id);
  if (prev && prev.seq > ev.seq) return;
  events.set(ev.id, ev);
  const li = eventItem(ev);
  const filter = $("#event-filter").value;
  li.hidden = !!filter && ev.camera !== filter;
  if (!li.parentNode) {
    if (prepend) $("#events").prepend(li); else $("#events").append(li);
  }
}

async function loadEvents(more) {
  const params = new URLSearchParams({limit: "30"});
  const filter = $("#event-filter").value;
  if (filter) params.set("camera", filter);
  if (more && nextCursor !== null) params.set("cursor", nextCursor);
  const r = await api(`/events?${params}`);
  if (!more) { $("#events").replaceChildren(); events.clear(); }
  for (const ev of r.events) showEvent(ev, false);
  nextCursor = r.next_cursor;
  $("#more-events").hidden = nextCursor === null;
}

async function openEvent(id) {
  const ev = await api(`/events/${encodeURIComponent(id)}`);
  const dlg = $("#event-dialog");
  $("#dlg-title").textContent = `${ev.category} (${fmt(ev.category_score, 2)}) on ${ev.camera}`;
  const dur = ev.end_time ? `${((new Date(ev.end_time) - new Date(ev.start_time)) / 1000).toFixed(1)} s` : "still open";
  $("#dlg-meta").textContent = `${new Date(ev.start_time).toLocaleString()} · ${dur} · peak score ${fmt(ev.peak_score, 2)}` +
    (ev.reason ? ` · ended: ${ev.reason.replaceAll("_", " ")}` : "");
  const video = $("#clip");
  if (ev.clip_url) {
    video.hidden = false; $("#no-clip").hidden = true;
    video.src = ev.clip_url;
  } else {
    video.hidden = true; video.removeAttribute("src"); $("#no-clip").hidden = false;
  }
  markedId = ev.id; $("#fb-result").textContent = "";
  dlg.showModal();
  const cam = cams.get(ev.camera);
  const s = (cam && cam.snap) || {};
  const pts = ev.curve || [];
  const start = new Date(ev.start_time) / 1000;
  const end = ev.end_time ? new Date(ev.end_time) / 1000 : (pts.length ? pts[pts.length - 1].time : start);
  const t0 = pts.length ? Math.min(pts[0].time, start) : start - 10;
  const t1 = pts.length ? Math.max(pts[pts.length - 1].time, end) : end + 5;
  drawCurve($("#curve"), pts, t0, t1, s.on_threshold, s.off_threshold, [start, end]);
  if (ev.clip_url) video.play().catch(() => {});
}

// Feedback marks (docs/feedback.md): stored with the event's embeddings for `dsanet finetune`; last mark wins.
let markedId = null;
async function mark(kind) {
  const body = {mark: kind};
  const cat = $("#fb-category").value;
  if (kind === "confirmed" && cat) body.category = cat;
  try {
    const r = await api(`/events/${encodeURIComponent(markedId)}/feedback`, {method: "POST", body: JSON.stringify(body)});
    $("#fb-result").textContent = (r.state === "waiting" ? `stored when the event ends as ${r.label}` : `stored as ${r.label}`) +
      (r.replaced ? ` (replaces ${r.replaced.label})` : "");
  } catch (e) { $("#fb-result").textContent = e.message; }
}
$("#fb-confirm").addEventListener("click", () => mark("confirmed"));
$("#fb-false").addEventListener("click", () => mark("false_alarm"));

$("#event-dialog").addEventListener("close", () => $("#clip").pause());
$("#event-filter").addEventListener("change", () => loadEvents(false));
$("#more-events").addEventListener("click", () => loadEvents(true));

// ------------------------------------------------------------------------------------------- form
$("#camera-form").addEventListener("submit", async e => {
  e.preventDefault();
  const f = e.target;
  const body = {name: f.name.value.trim(), url: f.url.value.trim(), transport: f.transport.value};
  if (f.loop.checked) body.loop = true;
  const ev = {};
  if (f.on_threshold.value !== "") ev.on_threshold = Number(f.on_threshold.value);
  if (f.off_threshold.value !== "") ev.off_threshold = Number(f.off_threshold.value);
  if (Object.keys(ev).length) body.events = ev;
  const errs = $("#form-errors");
  errs.replaceChildren();
  try {
    const r = await api("/cameras", {method: "POST", body: JSON.stringify(body)});
    if (r.note) showPersist(r.note);
    f.reset();
    await refreshCameras();
  } catch (err) {
    for (const p of err.problems) { const li = document.createElement("li"); li.textContent = p; errs.append(li); }
  }
});

function showPersist(note) {
  const b = $("#persist");
  b.textContent = note;
  b.hidden = !note;
}

// ------------------------------------------------------------------------------------------- feed
function connect() {
  const conn = $("#conn");
  const es = new EventSource(API + "/stream");
  es.onopen = () => { conn.textContent = "live"; conn.className = "badge badge-on"; };
  es.onerror = () => { conn.textContent = "reconnecting"; conn.className = "badge badge-off"; };
  es.addEventListener("score", m => onScore(JSON.parse(m.data)));
  es.addEventListener("event", m => {
    const ev = JSON.parse(m.data);
    showEvent(ev, true);
    const c = cams.get(ev.camera);
    if (c) c.el.classList.toggle("event-open", ev.type !== "end");
  });
  es.addEventListener("cameras", m => { for (const s of JSON.parse(m.data).cameras) updateCamera(s); });
}

async function start() {
  try {
    const st = await api("/status");
    const m = st.model || {};
    $("#model").textContent = [m.name && `model ${m.name}`, st.version && `v${st.version}`,
      st.config_file && `config ${st.config_file}`].filter(Boolean).join(" · ");
    showPersist(st.persist_note);
    for (const c of st.categories || []) $("#fb-category").append(new Option(c, c));
  } catch (e) { /* shown by the feed badge */ }
  await refreshCameras();
  await loadEvents(false).catch(() => {});
  connect();
  setInterval(refreshCameras, 2000);
  setInterval(scheduleDraw, 1000);
  window.addEventListener("resize", scheduleDraw);
}

start();
