// The model-registry dashboard: GET /models (polled every second and after each event)
// and GET /events (server-sent events) drive the page; admin buttons call the admin API.
"use strict";

const COLORS = ["#2f7d4f", "#3366aa", "#a0522d", "#6d5bd0", "#2a8f8f", "#9c3d6e", "#5f7d1f", "#b0641a"];
const MAX_EVENTS = 200;
const rows = new Map();   // model name -> {tr, cells}
let snapshot = null;
let lastEventId = null;
let refreshTimer = null;

function $(id) { return document.getElementById(id); }

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(n < 10 ? 2 : 1)) + " " + units[i];
}

function seconds(s) {
  if (s === null || s === undefined) return "-";
  if (s < 1) return Math.round(s * 1000) + " ms";
  if (s < 60) return s.toFixed(1) + " s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(Math.round(s % 60)).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
}

function ago(iso) {
  if (!iso) return "never";
  const s = (Date.now() - Date.parse(iso)) / 1000;
  return s < 1 ? "just now" : seconds(s) + " ago";
}

function colorOf(name) {
  // by position in the (sorted) model list: neighbours in the bar get different colours
  const index = snapshot ? snapshot.models.findIndex((m) => m.name === name) : 0;
  return COLORS[Math.max(0, index) % COLORS.length];
}

// Where a model runs, as `model-registry ls` shows it: "cpu", "cuda:0", "auto->cpu" where the
// entry's device resolved to another, the entry's own before the first load.
function deviceText(configured, resolved) {
  if (!resolved || !configured) return resolved || configured || "-";
  if (resolved === configured || resolved.startsWith(configured + ":")) return resolved;
  return `${configured}->${resolved}`;
}

function setText(el, text) { if (el.textContent !== text) el.textContent = text; }

function showMessage(text, isError) {
  const box = $("message");
  box.hidden = false;
  box.textContent = text;
  box.className = isError ? "error" : "";
}

// ------------------------------------------------------------------ rendering

function render(data) {
  snapshot = data;
  renderMemory(data);
  renderRows(data.models);
  const cfg = $("config-error");
  cfg.hidden = !data.config_error;
  if (data.config_error) {
    cfg.textContent = "models.yaml was refused: " + data.config_error.message;
  }
}

// What a model holds on `device`: its device_bytes there; a server without them: held_bytes
// (all on the host), else the size of what is in memory.
function bytesOn(m, device) {
  if (m.device_bytes) return m.device_bytes[device] || 0;
  if (device !== "cpu") return 0;
  if (m.held_bytes !== undefined) return m.held_bytes;
  const holding = ["loading", "loaded", "unloading", "offloading", "offloaded"];
  return holding.includes(m.state) ? (m.size_bytes || 0) : 0;
}

// One bar: a segment per model holding bytes on `device`, sized against `budget`.
function renderBar(bar, models, device, budget) {
  const held = models.filter((m) => bytesOn(m, device) > 0);
  const seen = new Set();
  for (const m of held) {
    const nbytes = bytesOn(m, device);
    seen.add(m.name);
    let seg = bar.querySelector(`[data-model="${CSS.escape(m.name)}"]`);
    if (!seg) {
      seg = document.createElement("div");
      seg.className = "seg";
      seg.dataset.model = m.name;
      bar.appendChild(seg);
    }
    seg.style.background = colorOf(m.name);
    const reserved = m.state === "loading";
    seg.classList.toggle("loading", reserved);
    seg.dataset.state = m.state;
    seg.dataset.bytes = String(nbytes);
    seg.style.width = (100 * nbytes / budget).toFixed(3) + "%";
    seg.title = `${m.name}: ${bytes(nbytes)} ${reserved ? "reserved (loading)" : m.state}`;
  }
  for (const seg of Array.from(bar.children)) {
    if (!seen.has(seg.dataset.model)) seg.remove();
  }
  return held;
}

// A bar per GPU (GET /models' `devices`), under the host's.
function renderDeviceBars(data) {
  const box = $("device-bars");
  const gpus = (data.devices || []).filter((d) => d.device !== "cpu");
  const seen = new Set();
  for (const d of gpus) {
    seen.add(d.device);
    let row = box.querySelector(`[data-device="${CSS.escape(d.device)}"]`);
    if (!row) {
      row = document.createElement("div");
      row.className = "device-row";
      row.dataset.device = d.device;
      const head = document.createElement("div");
      head.className = "memory-head";
      const name = document.createElement("h3");
      name.textContent = d.device;
      const text = document.createElement("span");
      text.className = "device-text";
      head.append(name, text);
      const bar = document.createElement("div");
      bar.className = "memory-bar";
      bar.setAttribute("role", "img");
      bar.setAttribute("aria-label", `memory budget of ${d.device}`);
      row.append(head, bar);
      box.appendChild(row);
    }
    const models = renderBar(row.querySelector(".memory-bar"), data.models, d.device, d.budget_bytes);
    const text = row.querySelector(".device-text");
    setText(text,
      `used ${bytes(d.used_bytes)} (reserved ${bytes(d.reserved_bytes)}) of ${bytes(d.budget_bytes)}` +
      `, ${models.length} model(s)`);
    text.dataset.used = String(d.used_bytes);
  }
  for (const row of Array.from(box.children)) {
    if (!seen.has(row.dataset.device)) row.remove();
  }
}

function renderMemory(data) {
  const budget = data.budget_bytes;
  const held = renderBar($("memory-bar"), data.models, "cpu", budget);
  renderDeviceBars(data);
  const used = data.used_bytes, reserved = data.reserved_bytes || 0;
  setText($("memory-text"),
    `loaded ${bytes(used - reserved)} + reserved ${bytes(reserved)} of ${bytes(budget)}` +
    ` (free ${bytes(Math.max(0, budget - used))}, peak ${bytes(data.peak_used_bytes)})`);
  $("memory-text").dataset.used = String(used);
  const legend = $("memory-legend");
  legend.replaceChildren(...held.map((m) => {
    const span = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = colorOf(m.name);
    span.append(swatch, `${m.name} ${bytes(bytesOn(m, "cpu"))}${m.state === "loading" ? " (reserved)" : ""}`);
    return span;
  }));
}

const COLUMNS = ["name", "state", "device", "size", "in_flight", "queued", "served", "last_used",
                 "load_seconds", "ttl_left", "error", "actions"];

function makeRow(name) {
  const tr = document.createElement("tr");
  tr.dataset.model = name;
  const cells = {};
  for (const col of COLUMNS) {
    const td = document.createElement("td");
    td.className = "c-" + col;
    if (["size", "in_flight", "queued", "served", "load_seconds", "ttl_left"].includes(col)) {
      td.classList.add("num");
    }
    tr.appendChild(td);
    cells[col] = td;
  }
  cells.name.textContent = name;
  const state = document.createElement("span");
  state.className = "state";
  cells.state.appendChild(state);
  cells.stateBadge = state;
  for (const action of ["load", "unload"]) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = action;
    button.dataset.action = action;
    button.addEventListener("click", () => modelAction(name, action));
    cells.actions.appendChild(button);
  }
  return {tr, cells};
}

function renderRows(models) {
  const body = $("model-rows");
  const filter = $("filter").value.trim().toLowerCase();
  const seen = new Set();
  let previous = null;
  for (const m of models) {
    seen.add(m.name);
    let row = rows.get(m.name);
    if (!row) { row = makeRow(m.name); rows.set(m.name, row); }
    const c = row.cells;
    setText(c.stateBadge, m.state);
    c.stateBadge.dataset.state = m.state;
    row.tr.dataset.state = m.state;
    setText(c.device, deviceText(m.device, m.device_resolved));
    c.device.title = `models.yaml: ${m.device || "-"}; ` +
      (m.device_resolved ? `last load ran on ${m.device_resolved}` : "not loaded yet");
    row.tr.dataset.device = m.device_resolved || "";
    setText(c.size, bytes(m.size_bytes) + (m.size_measured || m.size_bytes === null ? "" : " (est.)"));
    setText(c.in_flight, String(m.in_flight));
    setText(c.queued, String(m.queued));
    setText(c.served, String(m.served));
    setText(c.last_used, ago(m.last_used));
    setText(c.load_seconds, seconds(m.load_seconds));
    setText(c.ttl_left, m.ttl_left_seconds === null || m.ttl_left_seconds === undefined ? "-" : seconds(m.ttl_left_seconds));
    setText(c.error, m.error || "");
    c.error.title = m.error || "";
    row.tr.hidden = filter !== "" && !m.name.toLowerCase().includes(filter);
    // keep the table in the server's (sorted) order without rebuilding it
    const expected = previous ? previous.nextSibling : body.firstChild;
    if (expected !== row.tr) body.insertBefore(row.tr, expected);
    previous = row.tr;
  }
  for (const [name, row] of rows) {
    if (!seen.has(name)) { row.tr.remove(); rows.delete(name); }
  }
  setText($("model-count"), `(${models.length})`);
}

function addEvent(ev) {
  const list = $("events");
  const li = document.createElement("li");
  li.dataset.type = ev.type;
  if (ev.model) li.dataset.model = ev.model;
  const when = document.createElement("time");
  when.textContent = new Date(ev.time * 1000).toLocaleTimeString();
  const kind = document.createElement("b");
  kind.dataset.type = ev.type;
  kind.textContent = ev.type.replace("_", " ");
  li.append(when, kind, " " + describe(ev));
  list.prepend(li);
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

function describe(ev) {
  const m = ev.model || "";
  switch (ev.type) {
    case "loading": return m;
    case "loaded": return `${m} (${bytes(ev.bytes)}) in ${seconds(ev.seconds)}`;
    case "evicted":
    case "unloaded": return `${m}: ${ev.reason}, freed ${bytes(ev.freed_bytes)}`;
    case "failed": return `${m}: ${ev.error}`;
    case "config_applied": {
      const parts = ["added", "removed", "replaced", "updated"]
        .filter((k) => ev[k] && ev[k].length).map((k) => `${k} ${ev[k].join(", ")}`);
      return parts.join("; ") || "no model changed";
    }
    case "config_refused": return (ev.problems || []).join("; ");
    case "gap": return `missed ${ev.missed} event(s); the table is re-read`;
    default: return m;
  }
}

// ------------------------------------------------------------------ data

async function refresh() {
  try {
    const response = await fetch("/models", {cache: "no-store"});
    if (response.ok) render(await response.json());
  } catch (err) {
    $("connection").dataset.state = "offline";
    setText($("connection"), "offline");
  }
}

function refreshSoon() {
  if (refreshTimer !== null) return;
  refreshTimer = setTimeout(() => { refreshTimer = null; refresh(); }, 50);
}

function connect(after) {
  const url = after === null ? "/events" : `/events?after=${after}`;
  const source = new EventSource(url);
  const status = $("connection");
  source.onopen = () => { status.dataset.state = "live"; setText(status, "live"); };
  source.onerror = () => { status.dataset.state = "offline"; setText(status, "reconnecting"); };
  const types = ["loading", "loaded", "evicted", "unloaded", "failed", "config_applied",
                 "config_refused", "gap"];
  for (const type of types) {
    source.addEventListener(type, (message) => {
      const ev = JSON.parse(message.data);
      lastEventId = ev.id;
      addEvent(ev);
      refreshSoon();
    });
  }
}

// ------------------------------------------------------------------ admin

function token(forceAsk) {
  let value = sessionStorage.getItem("model-registry-token");
  if (!value || forceAsk) {
    value = window.prompt("Admin token (MODEL_REGISTRY_ADMIN_TOKEN)");
    if (value) sessionStorage.setItem("model-registry-token", value);
  }
  return value;
}

async function admin(path, what) {
  for (const retry of [false, true]) {
    const value = token(retry);
    if (!value) { showMessage(`${what}: cancelled (no token)`, true); return; }
    showMessage(`${what}...`, false);
    let response;
    try {
      response = await fetch(path, {method: "POST", headers: {Authorization: `Bearer ${value}`}});
    } catch (err) {
      showMessage(`${what}: the server is unreachable`, true);
      return;
    }
    const body = await response.json().catch(() => ({}));
    if (response.status === 401 && !retry) { sessionStorage.removeItem("model-registry-token"); continue; }
    if (!response.ok) {
      showMessage(`${what}: ${body.error ? body.error.message : response.statusText}`, true);
    } else if (body.state) {
      showMessage(`${what}: ${body.name} is ${body.state}` +
        (body.state === "loaded" && body.load_seconds !== null ? ` (loaded in ${seconds(body.load_seconds)})` : ""), false);
    } else {
      showMessage(`${what}: ${describe({type: "config_applied", ...body})}`, false);
    }
    refresh();
    return;
  }
}

function modelAction(name, action) {
  admin(`/models/${encodeURIComponent(name)}/${action}`, `${action} ${name}`);
}

$("reload").addEventListener("click", () => admin("/admin/reload", "reload models.yaml"));
$("filter").addEventListener("input", () => { if (snapshot) renderRows(snapshot.models); });

(async function start() {
  await refresh();
  // replay the last events for the timeline, then follow the stream
  const last = snapshot && Number.isInteger(snapshot.last_event_id) ? snapshot.last_event_id : 0;
  connect(Math.max(0, last - 50));
  setInterval(refresh, 1000);
})();
