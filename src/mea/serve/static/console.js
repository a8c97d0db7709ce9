// The mea operator console: polls the service's state and draws it; every text from the server goes
// in through textContent (never as HTML), and every action carries the session's CSRF token.
"use strict";

const csrf = document.querySelector('meta[name="csrf"]').content;
const REFRESH_MS = 2000;
const COLUMNS = ["Client", "State", "Images used / quota", "Requests/min", "OOD rate", "PRADA W", "Refused",
  "Evidence", "Last seen", "Actions"];
let selected = null;
let charts = {};
let threshold = null;
// Revokes asked for once and awaiting their confirming click: kept across the table's refreshes
// (which rebuild every row every REFRESH_MS), forgotten after ARMED_MS.
const armedRevokes = new Set();
const ARMED_MS = 10000;

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

function ago(seconds) {
  if (seconds == null) return "never";
  const delta = Math.max(0, Date.now() / 1000 - seconds);
  if (delta < 60) return `${Math.round(delta)} s ago`;
  if (delta < 3600) return `${Math.round(delta / 60)} min ago`;
  return `${Math.round(delta / 3600)} h ago`;
}

const percent = (x) => (x == null ? "–" : `${(100 * x).toFixed(1)}%`);
const number = (x) => (x == null ? "–" : Number(x).toLocaleString("en"));

async function act(id, action, body) {
  const response = await fetch(`/console/api/clients/${encodeURIComponent(id)}/${action}`, {
    method: "POST",
    credentials: "same-origin",
    headers: { "X-CSRF-Token": csrf, "Content-Type": "application/json" },
    body: JSON.stringify(body || {}),
  });
  const answer = await response.json();
  setStatus(response.ok ? `${id}: ${answer.detail}` : `${id}: ${answer.error}`);
  await refresh();
}

function setStatus(text) {
  document.getElementById("status").textContent = text;
}

function actions(client) {
  const box = el("div", { class: "actions" });
  if (!client.revoked) {
    if (client.level === "refused") {
      box.append(el("button", { type: "button", text: "Lift suspension", "data-action": "lift",
        onclick: (event) => { event.stopPropagation(); act(client.id, "lift"); } }));
    } else {
      box.append(el("button", { type: "button", text: "Suspend", "data-action": "suspend",
        onclick: (event) => { event.stopPropagation(); act(client.id, "suspend"); } }));
    }
    const revoke = el("button", { type: "button", class: "danger", text: "Revoke", "data-action": "revoke" });
    const arm = () => { revoke.dataset.armed = "1"; revoke.textContent = "Confirm revoke"; };
    if (armedRevokes.has(client.id)) arm();
    revoke.onclick = (event) => {
      event.stopPropagation();
      if (armedRevokes.has(client.id)) {
        armedRevokes.delete(client.id);
        act(client.id, "revoke");
      } else {
        armedRevokes.add(client.id);
        arm();
        setTimeout(() => armedRevokes.delete(client.id), ARMED_MS);
      }
    };
    box.append(revoke);
    const quota = el("input", { type: "number", min: "0", step: "1", placeholder: "quota",
      "aria-label": `new quota for ${client.name}`, "data-field": "quota" });
    quota.onclick = (event) => event.stopPropagation();
    box.append(quota, el("button", { type: "button", text: "Set quota", "data-action": "quota",
      onclick: (event) => {
        event.stopPropagation();
        act(client.id, "quota", { quota: quota.value === "" ? null : Number(quota.value) });
      } }));
  }
  return box;
}

function row(client) {
  const state = client.revoked ? "revoked" : client.level;
  const used = client.quota == null ? `${number(client.used)} / unlimited`
    : `${number(client.used)} / ${number(client.quota)}`;
  const bar = el("div", { class: "bar" }, [el("span")]);
  if (client.quota) bar.firstChild.style.width = `${Math.min(100, (100 * client.used) / client.quota)}%`;
  const w = client.statistic == null ? "–" : client.statistic.toFixed(3);
  const cells = [
    [el("span", { class: "name", text: client.name }), el("span", { class: "id", text: ` ${client.id}` })],
    [el("span", { class: `badge ${state}`, text: state }),
      el("span", { class: "since", text: client.since ? `since ${ago(client.since)}` : "" })],
    [el("span", { text: used }), bar],
    [el("span", { text: client.requests_per_min.toFixed(1) })],
    [el("span", { text: percent(client.ood_rate) })],
    [el("span", { text: threshold == null ? w : `${w} (flag < ${threshold})` })],
    [el("span", { text: number(client.refusals) })],
    client.evidence > 0
      ? [el("span", { text: `${number(client.evidence)} ` }),
        el("a", { href: "/console/api/evidence", text: "export", title: `for: mea verify --evidence FILE --client ${client.id}`,
          onclick: (event) => event.stopPropagation() })]
      : [el("span", { text: "0" })],
    [el("span", { text: ago(client.last_seen) })],
    [actions(client)],
  ];
  const tr = el("tr", { "data-client": client.id, "data-level": state });
  if (client.id === selected) tr.classList.add("selected");
  cells.forEach((children, i) => tr.append(el("td", { "data-label": COLUMNS[i], class: i === 1 ? "state" : "" }, children)));
  tr.onclick = () => select(client);
  return tr;
}

function card(label, value) {
  return el("div", { class: "card" }, [el("div", { class: "label", text: label }), el("div", { class: "value", text: value })]);
}

function render(data) {
  threshold = data.prada.threshold;
  const t = data.totals;
  const latency = data.latency_ms;
  document.getElementById("totals").replaceChildren(
    card("Answered requests", number(t.answered_requests)),
    card("Images answered", number(t.images)),
    card("Images flagged OOD", number(t.flagged_images)),
    card("Refused requests", number(t.refused_requests)),
    card("Clients (refused)", `${t.clients} (${t.refused_clients})`),
    card("Latency p50 / p99", latency.p50 == null ? "–" : `${latency.p50} / ${latency.p99} ms`),
  );
  document.querySelector("#clients tbody").replaceChildren(...data.clients.map(row));
  setStatus(`updated ${new Date(data.time * 1000).toLocaleTimeString("en-GB")}`);
  if (selected) {
    const client = data.clients.find((c) => c.id === selected);
    if (client) document.getElementById("detail-title").textContent = `${client.name} (${client.id})`;
  }
}

function chart(id, label, values, times, extra) {
  const target = document.getElementById(id);
  const width = Math.max(200, target.clientWidth || 300);
  const data = [times, values];
  if (charts[id]) {
    charts[id].setData(data);
    if (charts[id].width !== width) charts[id].setSize({ width, height: 160 });
    return;
  }
  charts[id] = new uPlot({
    width, height: 160, legend: { show: false },
    series: [{}, { label, stroke: "#3056d3", width: 2, spanGaps: false, points: { show: true, size: 5 } }],
    axes: [{}, { size: 50 }],
    scales: extra || {},
  }, data, target);
}

async function drawSeries(id) {
  const response = await fetch(`/console/api/clients/${encodeURIComponent(id)}/series`, { credentials: "same-origin" });
  if (!response.ok) return;
  const s = await response.json();
  document.getElementById("detail").hidden = false;
  chart("chart-images", "images/min", s.images, s.minutes);
  chart("chart-ood", "OOD rate", s.ood_rate, s.minutes, { y: { range: [0, 1] } });
  chart("chart-w", "W", s.statistic, s.minutes, { y: { range: [0.5, 1] } });
}

function select(client) {
  selected = client.id;
  document.getElementById("detail-title").textContent = `${client.name} (${client.id})`;
  document.querySelectorAll("#clients tbody tr").forEach((tr) => tr.classList.toggle("selected", tr.dataset.client === selected));
  drawSeries(selected);
}

async function refresh() {
  try {
    const response = await fetch("/console/api/overview", { credentials: "same-origin" });
    if (response.status === 401) { window.location.assign("/console"); return; }
    render(await response.json());
    if (selected) await drawSeries(selected);
  } catch (error) {
    setStatus(`cannot reach the service (${error.message}); retrying`);
  }
}

document.getElementById("logout").onclick = async () => {
  await fetch("/console/logout", { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf } });
  window.location.assign("/console");
};
window.addEventListener("resize", () => { for (const c of Object.values(charts)) c.setSize({ width: c.root.parentNode.clientWidth, height: 160 }); });
refresh();
setInterval(refresh, REFRESH_MS);
