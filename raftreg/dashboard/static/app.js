// raftreg's dashboard: reads /ui/api/* (see raftreg/dashboard/routes.py) and re-reads the open
// tab after every change the /ui/api/events watch reports, and every REFRESH_MS (lease TTLs and
// raft state move without key changes). Data is only ever put into the page as text.
"use strict";

const REFRESH_MS = 5000;
const RETRY_MS = 1000;
const TOKEN_KEY = "raftreg-token";

let tab = "services";
let token = sessionStorage.getItem(TOKEN_KEY) || "";
let pending = null;
let historyOf = null;

function headers() {
  return token ? { Authorization: "Bearer " + token } : {};
}

class NeedsToken extends Error {}

async function api(path) {
  const r = await fetch("/ui/api/" + path, { headers: headers() });
  if (r.status === 401) throw new NeedsToken("a token is needed");
  const doc = await r.json();
  if (!r.ok) throw new Error(doc.error || r.statusText);
  return doc;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", c));
  return tr;
}

function fill(sectionId, rows) {
  const body = document.querySelector("#" + sectionId + " tbody");
  body.replaceChildren(...rows);
}

function age(seconds) {
  if (seconds < 60) return Math.max(0, Math.floor(seconds)) + "s";
  if (seconds < 3600) return Math.floor(seconds / 60) + "m";
  if (seconds < 86400) return Math.floor(seconds / 3600) + "h";
  return Math.floor(seconds / 86400) + "d";
}

async function showServices() {
  const doc = await api("services");
  const now = Date.now() / 1000;
  const services = new Set(doc.instances.map((i) => i.service));
  document.getElementById("services-meta").textContent =
    `${doc.instances.length} instance(s) of ${services.size} service(s) at revision ${doc.revision}`;
  fill("services", doc.instances.map((i) => {
    const ttl = i.ttl === null ? "no lease" : i.ttl < 0 ? "expired" : `${i.ttl}s of ${i.granted_ttl}s`;
    const since = i.registered_at > 0
      ? `${new Date(i.registered_at * 1000).toLocaleString()} (${age(now - i.registered_at)} ago)`
      : `revision ${i.create_revision}`;
    const tr = row([i.service, i.id, i.addr, i.weight, i.zone, i.version, ttl, since]);
    tr.dataset.key = i.service + "/" + i.id;
    return tr;
  }));
  const bad = document.getElementById("malformed");
  bad.replaceChildren(...doc.malformed.map((m) =>
    el("p", `malformed registration ${m.key}: ${m.reason}`, "bad")));
}

async function showCluster() {
  const doc = await api("cluster");
  fill("cluster", doc.members.map((m) => {
    const role = m.is_learner ? "learner" : m.is_leader ? "leader" : m.healthy ? "follower" : "-";
    const health = el("td", m.healthy ? "healthy" : "unhealthy: " + m.error,
      m.healthy ? "ok" : "bad");
    const tr = row([m.name, m.id, (m.client_urls || []).join(", "), el("td", role,
      role === "leader" ? "leader" : ""), m.raft_term ?? "-", m.raft_index ?? "-",
      m.revision ?? "-", health]);
    tr.dataset.member = m.name;
    return tr;
  }));
}

async function showKeys() {
  const prefix = document.getElementById("prefix").value;
  const doc = await api("keys?limit=200&prefix=" + encodeURIComponent(prefix));
  document.getElementById("keys-meta").textContent =
    `${doc.count} key(s)${doc.more ? ", first " + doc.kvs.length + " shown" : ""} at revision ${doc.revision}`;
  fill("keys", doc.kvs.map((kv) => {
    const value = el("td", kv.value + (kv.truncated ? " …" : ""), "value");
    const tr = row([kv.key, value, kv.create_revision, kv.mod_revision, kv.version,
      kv.lease ? kv.lease.toString(16) : ""]);
    tr.dataset.key = kv.key;
    return tr;
  }));
}

function table(headings, rows) {
  const t = document.createElement("table");
  const head = document.createElement("thead");
  head.appendChild(row(headings.map((h) => el("th", h))));
  const body = document.createElement("tbody");
  body.replaceChildren(...rows);
  t.append(head, body);
  return t;
}

async function showConfig() {
  const doc = await api("config");
  const list = document.getElementById("config-list");
  list.replaceChildren(...doc.services.flatMap((s) => {
    const h = el("h2", s.service);
    const button = el("button", "History");
    button.addEventListener("click", () => { historyOf = s.service; refresh(); });
    h.appendChild(button);
    const rows = s.settings.map((x) => {
      const tr = row([x.name, el("td", x.value, "value"), x.mod_revision, x.version]);
      tr.dataset.setting = s.service + "/" + x.name;
      return tr;
    });
    return [h, s.error ? el("p", s.error, "bad") : table(["Setting", "Value", "Modified", "Version"], rows)];
  }));
  if (!doc.services.length) list.replaceChildren(el("p", "No configuration under /config/.", "meta"));
  const out = document.getElementById("history");
  if (!historyOf) { out.replaceChildren(); return; }
  const hist = await api("history?service=" + encodeURIComponent(historyOf));
  const rows = hist.versions.map((v) => row([v.revision,
    el("td", Object.entries(v.puts).map(([n, x]) => `${n} = ${x}`).join("\n"), "value"),
    v.deletes.join(", ")]));
  out.replaceChildren(el("h2", `History of ${hist.service}` +
    (hist.compacted ? ` (compacted before revision ${hist.oldest_revision})` : "")),
    table(["Revision", "Set", "Deleted"], rows));
}

const SHOW = { services: showServices, cluster: showCluster, keys: showKeys, config: showConfig };

async function refresh() {
  const error = document.getElementById("error");
  try {
    await SHOW[tab]();
    error.hidden = true;
    document.getElementById("login").hidden = true;
  } catch (e) {
    if (e instanceof NeedsToken) {
      document.getElementById("login").hidden = false;
    } else {
      error.textContent = String(e.message || e);
      error.hidden = false;
    }
  }
}

function soon() {
  if (pending === null) pending = setTimeout(() => { pending = null; refresh(); }, 100);
}

async function follow() {
  const live = document.getElementById("live");
  for (;;) {
    try {
      const r = await fetch("/ui/api/events", { headers: headers() });
      if (!r.ok) throw new Error("events: " + r.status);
      live.className = "on";
      live.textContent = "live";
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        const lines = buffer.split("\n");
        buffer = lines.pop();
        if (lines.some((l) => l.startsWith("data:"))) soon();
      }
    } catch (e) {
      // fall through: reconnect
    }
    live.className = "off";
    live.textContent = "reconnecting";
    await new Promise((done) => setTimeout(done, RETRY_MS));
    soon();  // changes made while disconnected
  }
}

function select(name) {
  tab = name;
  for (const b of document.querySelectorAll("nav button")) {
    b.classList.toggle("active", b.dataset.tab === name);
  }
  for (const s of document.querySelectorAll("main section")) s.hidden = s.id !== name;
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("nav button")) {
    b.addEventListener("click", () => select(b.dataset.tab));
  }
  document.getElementById("keys-form").addEventListener("submit", (e) => {
    e.preventDefault();
    refresh();
  });
  document.getElementById("login").addEventListener("submit", (e) => {
    e.preventDefault();
    token = document.getElementById("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    refresh();
  });
  const wanted = location.hash.slice(1);
  select(SHOW[wanted] ? wanted : "services");
  setInterval(refresh, REFRESH_MS);
  follow();
});
