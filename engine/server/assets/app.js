// The rackcast dashboard: a client of the operator API (same origin,
// session cookie) and its event stream. Everything shown comes from the
// API; text from targets (names, errors, logs) is only ever set as text,
// never parsed as markup.
"use strict";

const EVENT_KINDS = [
  "agent.refused", "agent.registered", "agent.reset", "cast.ended", "cast.forming",
  "cast.started", "environment.put", "image.added", "job.cancelled", "job.finished",
  "job.retried", "job.submitted", "run.done", "target.added", "target.bmc",
  "target.vars",
  "target.power", "target.power-action", "target.state", "target.wrong-env",
  "task.failed", "task.finished", "task.progress", "task.rejoin", "task.resumed",
  "task.retry", "task.started",
];

let me = null; // {name, role, csrf, last_event}
let stream = null;
let refreshTimer = null;
let stateFilter = "";

// ------------------------------------------------------------ helpers

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick") e.addEventListener("click", v);
    else if (k === "onchange") e.addEventListener("change", v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

async function api(method, path, body) {
  const opts = { method, credentials: "same-origin", headers: {} };
  if (method !== "GET") opts.headers["X-Rackcast-CSRF"] = me ? me.csrf : "";
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  if (r.status === 401) { showLogin(); throw new Error("not logged in"); }
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) throw new Error((data && data.error) || r.statusText);
  return data;
}

function bytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

function rate(bps) { return bps ? (bps / 1e6).toFixed(1) + " MB/s" : ""; }

function duration(s) {
  if (!isFinite(s) || s < 0) return "";
  s = Math.round(s);
  return s >= 3600 ? `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`
    : s >= 60 ? `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s` : `${s}s`;
}

function age(ms) {
  if (!ms) return "never";
  return duration((Date.now() - ms) / 1000) + " ago";
}

function bar(p, status) {
  const pct = status === "done" ? 100
    : p && p.total ? Math.min(100, Math.floor(100 * p.done / p.total)) : 0;
  const fill = el("span");
  fill.style.width = pct + "%";
  return el("div", { class: "bar", "data-pct": pct }, fill, el("em", {}, pct + "%"));
}

function eta(p) {
  if (!p || !p.rate || !p.total || p.done >= p.total) return "";
  return duration((p.total - p.done) / p.rate);
}

function table(headers, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map(h => el("th", {}, h)))),
    el("tbody", {}, rows));
}

function admin() { return me && me.role === "admin"; }

function action(label, method, path, id) {
  return el("button", {
    id,
    onclick: async (ev) => {
      ev.target.disabled = true;
      try { await api(method, path); } catch (e) { alert(label + ": " + e.message); }
      refresh();
    },
  }, label);
}

// ------------------------------------------------------------ pages

async function targetsPage() {
  const targets = await api("GET", "/api/v1/targets");
  const states = [...new Set(targets.map(t => t.state))].sort();
  const select = el("select", { id: "state-filter", onchange: (e) => { stateFilter = e.target.value; refresh(); } },
    el("option", { value: "" }, "every state"),
    states.map(s => {
      const o = el("option", { value: s }, s);
      if (s === stateFilter) o.selected = true;
      return o;
    }));
  const shown = targets.filter(t => !stateFilter || t.state === stateFilter)
    .sort((a, b) => a.mac.localeCompare(b.mac));
  const rows = shown.map(t => el("tr", { "data-mac": t.mac },
    el("td", { class: "mono" }, t.mac),
    el("td", {}, t.name),
    el("td", { class: "state-" + t.state, title: t.error || "" }, t.state + (t.error ? " — " + t.error : "")),
    el("td", {}, t.environment),
    el("td", {}, t.progress ? [bar(t.progress), " ", rate(t.progress.rate)] : ""),
    el("td", {}, t.power || (t.bmc ? "?" : "")),
    el("td", {}, age(t.last_seen)),
    el("td", {}, admin() && t.state === "failed"
      ? action("Release", "POST", `/api/v1/targets/${encodeURIComponent(t.mac)}/release`) : "")));
  return [
    el("div", { class: "toolbar" }, el("h1", {}, `Targets (${shown.length})`), select),
    table(["MAC", "Name", "State", "Environment", "Progress", "Power", "Last seen", ""], rows),
  ];
}

function done(j) { return j.targets.filter(t => t.status === "done").length; }

async function jobsPage() {
  const jobs = (await api("GET", "/api/v1/jobs")).sort((a, b) => b.id - a.id);
  const rows = jobs.map(j => el("tr", { "data-job": j.id },
    el("td", {}, el("a", { href: "#job/" + j.id }, "#" + j.id)),
    el("td", {}, j.name),
    el("td", { class: "status-" + j.status }, j.status),
    el("td", {}, `${done(j)}/${j.targets.length}`),
    el("td", {}, age(j.created))));
  return [el("h1", {}, "Jobs"), table(["Job", "Name", "Status", "Done", "Submitted"], rows)];
}

async function jobPage(id) {
  const j = await api("GET", "/api/v1/jobs/" + id);
  const kinds = (j.spec.task || []).map(t => t.kind);
  const rows = j.targets.map(r => el("tr", { "data-mac": r.mac },
    el("td", { class: "mono" }, r.mac),
    el("td", { class: "status-" + r.status }, r.status),
    el("td", {}, `${Math.min(r.task + 1, kinds.length)}/${kinds.length} ${kinds[Math.min(r.task, kinds.length - 1)] || ""}`
      + (r.attempt > 1 ? ` (attempt ${r.attempt})` : "")),
    el("td", {}, bar(r.progress, r.status)),
    el("td", {}, r.progress ? rate(r.progress.rate) : ""),
    el("td", {}, eta(r.progress)),
    el("td", { class: "error" }, r.error || ""),
    el("td", {}, el("a", { href: `/api/v1/jobs/${j.id}/log?mac=${encodeURIComponent(r.mac)}`, target: "_blank" }, "log"),
      " ", admin() && r.status === "failed"
        ? action("Release", "POST", `/api/v1/targets/${encodeURIComponent(r.mac)}/release`) : "")));
  const buttons = admin() ? [
    j.status === "failed" ? action("Retry failed", "POST", `/api/v1/jobs/${j.id}/retry`, "retry") : "",
    j.status === "running" ? action("Cancel", "POST", `/api/v1/jobs/${j.id}/cancel`, "cancel") : "",
  ] : [];
  return [
    el("div", { class: "toolbar" },
      el("h1", {}, `Job #${j.id} ${j.name}: `, el("span", { id: "job-status", class: "status-" + j.status }, j.status)),
      buttons),
    el("p", { id: "job-origin" }, `Created ${age(j.created)}` + (j.spec.origin ? `, from ${j.spec.origin}` : "")),
    table(["MAC", "Status", "Task", "Progress", "Rate", "ETA", "Error", ""], rows),
  ];
}

async function sessionsPage() {
  const sessions = (await api("GET", "/api/v1/sessions")).sort((a, b) => b.id - a.id);
  const rows = sessions.map(s => {
    const l = s.live || {};
    return el("tr", {},
      el("td", {}, s.id), el("td", {}, el("a", { href: "#job/" + s.job }, "#" + s.job)),
      el("td", {}, s.image), el("td", {}, s.phase),
      el("td", {}, `${l.joined ?? 0}/${s.members.length}`), el("td", {}, `${s.done.length}`),
      el("td", {}, rate(l.rate)), el("td", {}, l.loss !== undefined ? (100 * l.loss).toFixed(1) + "%" : ""),
      el("td", {}, l.repair_overhead !== undefined ? (100 * l.repair_overhead).toFixed(1) + "%" : ""),
      el("td", {}, l.stragglers ?? ""));
  });
  return [el("h1", {}, "Cast sessions"),
    table(["Session", "Job", "Image", "Phase", "Joined", "Done", "Rate", "Loss", "Repair", "Stragglers"], rows)];
}

async function imagesPage() {
  const images = await api("GET", "/api/v1/images");
  const rows = images.map(i => el("tr", {},
    el("td", {}, i.name), el("td", {}, bytes(i.source_size)), el("td", {}, bytes(i.stored_size)),
    el("td", { class: "mono", title: i.root }, i.root.slice(0, 16) + "…"),
    el("td", {}, i.signed ? "signed" : "unsigned")));
  return [el("h1", {}, "Images"), table(["Name", "Size", "Stored", "Root", "Signature"], rows)];
}

async function auditPage() {
  const entries = (await api("GET", "/api/v1/audit")).reverse();
  const rows = entries.map(e => el("tr", {},
    el("td", {}, new Date(e.at).toISOString().replace(".000", "")), el("td", {}, e.token),
    el("td", {}, e.origin), el("td", {}, e.action), el("td", { class: "mono" }, e.path),
    el("td", {}, e.status)));
  return [el("h1", {}, "Audit"), table(["Time", "Token", "Origin", "Action", "Path", "Status"], rows)];
}

// ------------------------------------------------------------ shell

async function render() {
  const hash = location.hash.replace(/^#/, "") || "targets";
  const [page, arg] = hash.split("/");
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.getAttribute("href") === "#" + (page === "job" ? "jobs" : page));
  }
  const pages = { targets: targetsPage, jobs: jobsPage, job: () => jobPage(arg),
    sessions: sessionsPage, images: imagesPage, audit: auditPage };
  const make = pages[page] || targetsPage;
  try {
    const content = await make();
    document.getElementById("page").replaceChildren(...content);
  } catch (e) {
    if (me) document.getElementById("page").replaceChildren(el("p", { class: "error" }, e.message));
  }
}

// At most one refresh in flight per 400 ms, however many events arrive.
function refresh() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(async () => { await render(); refreshTimer = null; }, 400);
}

function listen() {
  if (stream) stream.close();
  stream = new EventSource(`/api/v1/events?since=${me.last_event}`);
  const live = document.getElementById("live");
  stream.onopen = () => { live.textContent = "live"; };
  stream.onerror = () => { live.textContent = "reconnecting"; };
  for (const k of EVENT_KINDS) {
    stream.addEventListener(k, (ev) => {
      if (ev.lastEventId) me.last_event = Number(ev.lastEventId);
      refresh();
    });
  }
}

function showLogin() {
  me = null;
  if (stream) { stream.close(); stream = null; }
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  document.getElementById("page").replaceChildren();
  document.getElementById("login").hidden = false;
}

function loggedIn(who) {
  me = who;
  document.getElementById("login").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  document.getElementById("who").textContent = `${who.name} (${who.role})`;
  listen();
  render();
}

document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("login").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const token = document.getElementById("token").value;
    const r = await fetch("/ui/login", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token }),
    });
    const data = await r.json().catch(() => ({}));
    document.getElementById("token").value = "";
    if (!r.ok) { document.getElementById("login-error").textContent = data.error || r.statusText; return; }
    document.getElementById("login-error").textContent = "";
    loggedIn(data);
  });
  document.getElementById("logout").addEventListener("click", async () => {
    await api("POST", "/ui/logout").catch(() => {});
    showLogin();
  });
  window.addEventListener("hashchange", render);
  const r = await fetch("/ui/session", { credentials: "same-origin" });
  if (r.ok) loggedIn(await r.json()); else showLogin();
});
