// meshgate dashboard: reads the admin API's live feed (server-sent events over fetch, so the token travels in
// the Authorization header and never in a URL), draws it, and kicks clients on request.
"use strict";

const TOKEN_KEY = "meshgate-admin-token";
const HISTORY = 300;
const history = [];
let controller = null;

const $ = (id) => document.getElementById(id);

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {}, { Authorization: "Bearer " + token() });
  return fetch(path, Object.assign({}, options, { headers }));
}

function setStatus(text, cls) {
  const s = $("status");
  s.textContent = text;
  s.className = "status " + (cls || "");
}

function showLogin(message) {
  if (controller) controller.abort();
  $("board").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  setStatus("locked", "down");
  $("token").focus();
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fill(tbody, items, draw) {
  const rows = document.createDocumentFragment();
  for (const item of items) {
    const tr = document.createElement("tr");
    draw(tr, item);
    rows.appendChild(tr);
  }
  tbody.replaceChildren(rows);
}

function number(n) {
  return Number(n).toLocaleString("en");
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

async function kick(client) {
  const path = "/api/clients/" + encodeURIComponent(client.client_id) + "?protocol=" + encodeURIComponent(client.protocol);
  const answer = await api(path, { method: "DELETE" });
  if (!answer.ok) {
    const body = await answer.json().catch(() => ({}));
    setStatus("kick failed: " + (body.error || answer.status), "down");
  }
}

function drawChart() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth * ratio;
  const height = canvas.clientHeight * ratio;
  if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, width, height);
  const max = Math.max(1, ...history.map((h) => Math.max(h.in, h.out)));
  // The newest point at the right edge; at least a minute across, so a young chart is not stretched.
  const step = width / (Math.max(history.length, 60) - 1);
  const left = width - (history.length - 1) * step;
  const line = (key, colour) => {
    ctx.beginPath();
    ctx.strokeStyle = colour;
    ctx.lineWidth = 2 * ratio;
    history.forEach((h, i) => {
      const x = left + i * step;
      const y = height - (h[key] / max) * (height - 8 * ratio) - 4 * ratio;
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  };
  line("in", "#2f6fde");
  line("out", "#1a7f37");
}

function render(o) {
  $("version").textContent = "v" + o.version + " · up " + Math.floor(o.uptime_secs / 60) + " min";
  const c = o.connections;
  $("conn-total").textContent = number(c.mqtt + c.amqp + c.ws);
  $("conn-split").textContent = "MQTT " + c.mqtt + " · AMQP " + c.amqp + " · WebSocket " + c.ws;
  $("in-rate").textContent = number(o.messages_in_per_second);
  $("out-rate").textContent = number(o.messages_out_per_second);
  $("in-total").textContent = number(o.messages_in_total) + " in all";
  $("out-total").textContent = number(o.messages_out_total) + " in all";
  const fillPct = Math.min(100, o.spool.fill * 100);
  $("spool-fill").textContent = fillPct.toFixed(1) + " %";
  $("spool-bar").style.width = fillPct + "%";
  $("spool-detail").textContent = bytes(o.spool.bytes) + " of " + bytes(o.spool.max_bytes) + " · " + o.spool.segments + " segments" + (o.spool.healthy ? "" : " · NOT WRITING");
  history.push({ in: o.messages_in_per_second, out: o.messages_out_per_second });
  while (history.length > HISTORY) history.shift();
  drawChart();
  fill($("uplinks").tBodies[0], o.uplinks, (tr, u) => {
    cell(tr, u.name);
    cell(tr, u.kind);
    cell(tr, u.state, "state-" + u.state);
    cell(tr, number(u.backlog_records));
    cell(tr, u.oldest_unconfirmed_secs.toFixed(1) + " s");
    cell(tr, number(u.confirmed_per_second));
    cell(tr, u.last_error ? u.last_error.message : "", "error-text");
  });
  $("clients-total").textContent = "(" + o.clients_total + ")";
  fill($("clients").tBodies[0], o.clients, (tr, cl) => {
    tr.dataset.client = cl.client_id;
    cell(tr, cl.client_id);
    cell(tr, cl.user || "anonymous");
    cell(tr, cl.protocol + " " + cl.version);
    cell(tr, cl.peer || "");
    cell(tr, number(cl.messages_in), "messages-in");
    cell(tr, number(cl.messages_out));
    cell(tr, number(cl.queued));
    const td = document.createElement("td");
    const button = document.createElement("button");
    button.className = "kick";
    button.type = "button";
    button.textContent = "Kick";
    button.addEventListener("click", () => kick(cl));
    td.appendChild(button);
    tr.appendChild(td);
  });
  const rejects = Object.entries(o.rejects).filter(([, n]) => n > 0);
  if (rejects.length === 0) rejects.push(["nothing refused", 0]);
  fill($("rejects").tBodies[0], rejects, (tr, [reason, n]) => { cell(tr, reason.replace(/_/g, " ")); cell(tr, number(n)); });
}

// Reads the server-sent events of `body` and hands each `overview` to render().
async function follow(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (event === "overview" && data.length) render(JSON.parse(data.join("\n")));
    }
  }
}

async function connect() {
  if (!token()) { showLogin(""); return; }
  controller = new AbortController();
  try {
    const answer = await api("/api/live", { signal: controller.signal });
    if (answer.status === 401 || answer.status === 403) {
      const body = await answer.json().catch(() => ({}));
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(body.error || "refused");
      return;
    }
    if (!answer.ok || !answer.body) throw new Error("HTTP " + answer.status);
    $("login").hidden = true;
    $("board").hidden = false;
    setStatus("live", "live");
    await follow(answer.body);
    setStatus("disconnected, retrying…", "down");
  } catch (e) {
    if (e.name === "AbortError") return;
    setStatus("disconnected, retrying…", "down");
  }
  setTimeout(connect, 2000);
}

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value);
  $("token").value = "";
  connect();
});
window.addEventListener("resize", drawChart);
connect();
