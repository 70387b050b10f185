// agentrl view: the page over the JSON API of agentrl/viewer/app.py.
// Everything shown came from an env or an agent: it is put in the page as text (textContent, attributes
// set with setAttribute), never parsed as HTML.
"use strict";

const state = { sources: [], source: null, episode: null, colorBy: "logprob", curves: null, shown: new Set() };
const DEFAULT_CURVES = ["rollout/success_rate", "rollout/mean_return", "eval/success_rate", "loss", "entropy", "lr"];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
function fmt(value, digits = 3) { return value === null || value === undefined ? "-" : Number(value).toFixed(digits); }
function say(message) { document.getElementById("status").textContent = message || ""; }

async function api(path) {
  const response = await fetch(path);
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.detail || `${response.status} ${response.statusText}`);
  }
  return response.json();
}

// ---------------------------------------------------------------- sources

async function loadSources() {
  state.sources = (await api("/api/sources")).sources;
  const list = clear(document.getElementById("sources"));
  for (const source of state.sources) {
    const badges = [];
    if (source.status) badges.push(el("span", { class: `badge ${source.status}`, text: source.status }));
    if (source.benchmark === false) badges.push(el("span", { class: "badge not-benchmark", text: "not the benchmark" }));
    const numbers = source.kind === "report"
      ? `report: ${source.env_id || "?"} ${source.split || ""}, ${source.episodes} episodes, success ${fmt(source.success_rate)}`
      : `${source.run_kind || "run"}: ${source.env_id || "?"}, ${source.episodes} episodes` +
        (source.demonstrations ? ` (+${source.demonstrations} demos)` : "") + `, success ${fmt(source.success_rate)}`;
    list.append(el("li", { "data-id": source.id, onclick: () => selectSource(source.id) },
      el("div", { class: "name" }, el("span", { class: "run-name", text: source.name }), ...badges),
      el("div", { class: "meta", text: numbers })));
  }
  for (const id of ["compare-a", "compare-b"]) {
    const select = clear(document.getElementById(id));
    for (const source of state.sources) select.append(el("option", { value: source.id, text: `${source.id}: ${source.name}` }));
  }
  if (state.sources.length > 1) document.getElementById("compare-b").selectedIndex = 1;
  if (state.sources.length) await selectSource(state.sources[0].id);
}

async function selectSource(id) {
  state.source = state.sources.find((s) => s.id === id);
  for (const li of document.querySelectorAll("#sources li")) li.classList.toggle("selected", li.dataset.id === id);
  document.getElementById("source-title").textContent = state.source.kind === "report"
    ? `${state.source.name}: ${state.source.agent || ""} on ${state.source.env_id || ""}` +
      (state.source.max_turns ? `, ${state.source.max_turns} turns at most` : "") +
      (state.source.benchmark === false ? " (NOT the benchmark data)" : "")
    : `${state.source.name} (${state.source.status || "status unknown"}${state.source.git_sha ? ", git " + state.source.git_sha.slice(0, 12) : ""})`;
  clear(document.getElementById("episode-detail"));
  document.getElementById("filter-type").value = ""; // task types differ from source to source
  await loadEpisodes();
  state.curves = null;
  if (!document.getElementById("panel-curves").classList.contains("hidden")) await loadCurves();
}

// ---------------------------------------------------------------- episodes

function filterQuery() {
  const params = new URLSearchParams();
  const won = document.getElementById("filter-won").value;
  const task = document.getElementById("filter-task").value.trim();
  const type = document.getElementById("filter-type").value;
  const min = document.getElementById("filter-min").value;
  const max = document.getElementById("filter-max").value;
  if (won) params.set("won", won);
  if (task) params.set("task", task);
  if (type) params.set("task_type", type);
  if (min !== "") params.set("min_turns", min);
  if (max !== "") params.set("max_turns", max);
  params.set("limit", "500");
  return params.toString();
}

async function loadEpisodes() {
  if (!state.source) return;
  const query = filterQuery();
  const data = await api(`/api/sources/${encodeURIComponent(state.source.id)}/episodes?${query}`);
  const typeSelect = document.getElementById("filter-type");
  const chosen = typeSelect.value;
  clear(typeSelect).append(el("option", { value: "", text: "any" }));
  for (const kind of data.task_types) typeSelect.append(el("option", { value: kind, text: kind }));
  typeSelect.value = data.task_types.includes(chosen) ? chosen : "";
  document.getElementById("episode-count").textContent =
    `${data.total} episodes` + (data.total > data.episodes.length ? ` (first ${data.episodes.length} shown)` : "");
  const body = clear(document.getElementById("episode-rows"));
  body.setAttribute("data-shown", `${state.source.id}?${query}`); // what the rows are (for people and tests alike)
  for (const ep of data.episodes) {
    body.append(el("tr", { "data-id": ep.id, onclick: (event) => showEpisode(ep.id, event.currentTarget) },
      el("td", { text: ep.id }), el("td", { text: ep.task_id }), el("td", { text: ep.task_type || "" }),
      el("td", { text: (ep.agent || "") + (ep.demonstration ? " (demo)" : "") }),
      el("td", { class: ep.won ? "won" : "lost", text: ep.error ? "error" : ep.won ? "won" : "lost" }),
      el("td", { text: fmt(ep.return) }), el("td", { text: ep.turns })));
  }
}

async function showEpisode(id, row) {
  for (const tr of document.querySelectorAll("#episode-rows tr")) tr.classList.toggle("selected", tr === row);
  const ep = await api(`/api/sources/${encodeURIComponent(state.source.id)}/episodes/${id}`);
  state.episode = ep;
  renderEpisode(document.getElementById("episode-detail"), ep, true);
}

function renderEpisode(target, ep, withTokens) {
  clear(target);
  target.setAttribute("data-episode", ep.id); // which episode is shown (for people and tests alike)
  const outcome = ep.error ? `failed: ${ep.error}` : ep.won ? "won" : "lost";
  target.append(el("h3", { text: `episode ${ep.id}: ${ep.task_id}` }),
    el("div", { class: "label", text: `${outcome}, return ${fmt(ep.return)}, ${ep.turns} turns` +
      (ep.task_type ? `, task type ${ep.task_type}` : "") + (ep.seed !== null && ep.seed !== undefined ? `, seed ${ep.seed}` : "") +
      (ep.agent ? `, agent ${ep.agent}` : "") }));
  if (ep.instruction) target.append(el("div", { class: "instruction", text: `instruction: ${ep.instruction}` }));
  ep.steps.forEach((step, turn) => {
    const box = el("div", { class: "turn", "data-turn": turn },
      el("div", { class: "label", text: `turn ${turn}` + (step.reward !== null && step.reward !== undefined ? `, reward ${fmt(step.reward, 2)}` : "") }));
    if (step.observation !== null && step.observation !== undefined) box.append(el("div", { class: "observation", text: step.observation }));
    box.append(el("div", { class: step.invalid_action ? "action invalid" : "action", text: `> ${step.action}` }));
    target.append(box);
  });
  if (withTokens) renderTokens(target, ep);
}

// ---------------------------------------------------------------- tokens

function tokenColor(token, tokens, maxEntropy) {
  if (!token.sampled) return null;
  if (state.colorBy === "logprob" && token.logprob !== null) {
    const p = Math.exp(token.logprob); // 0 red .. 1 green
    return `hsl(${Math.round(120 * p)}, 75%, 80%)`;
  }
  if (state.colorBy === "entropy" && token.entropy !== null) {
    const x = maxEntropy > 0 ? token.entropy / maxEntropy : 0; // 0 white .. max blue
    return `hsl(210, 90%, ${Math.round(97 - 35 * x)}%)`;
  }
  if (state.colorBy === "advantage" && tokens.advantage !== null) {
    const a = Math.max(-1, Math.min(1, tokens.advantage / 2));
    return a >= 0 ? `hsl(120, 70%, ${Math.round(96 - 30 * a)}%)` : `hsl(0, 80%, ${Math.round(96 + 30 * a)}%)`;
  }
  return null;
}

function renderTokens(target, ep) {
  const tokens = ep.tokens;
  if (!tokens) return;
  const select = el("select", { id: "color-by", onchange: (event) => { state.colorBy = event.target.value; renderTokens(target, ep); } });
  for (const [value, label, ok] of [["logprob", "log-prob", tokens.has_logprobs], ["entropy", "entropy", tokens.has_entropies],
    ["advantage", "advantage (GRPO, in its group)", tokens.advantage !== null], ["none", "none", true]]) {
    select.append(el("option", ok ? { value, text: label } : { value, text: `${label}: not recorded`, disabled: "disabled" }));
  }
  select.value = state.colorBy;
  const old = target.querySelector(".tokens");
  if (old) old.remove();
  const box = el("div", { class: "tokens" },
    el("div", { class: "tokens-head" }, el("strong", { text: "tokens" }), el("label", {}, "colour by ", select),
      el("span", { class: "legend", text: (tokens.decoded_with ? `decoded with ${tokens.decoded_with}` : "token ids (no tokenizer found)") +
        (tokens.advantage !== null ? `; advantage ${fmt(tokens.advantage)}` : "") + "; grey: prompt, boxed: sampled" })));
  let maxEntropy = 0;
  for (const t of tokens.transcripts) for (const tok of t.tokens) if (tok.entropy !== null && tok.entropy > maxEntropy) maxEntropy = tok.entropy;
  tokens.transcripts.forEach((transcript, index) => {
    const line = el("div", { class: "transcript", "data-transcript": index });
    for (const tok of transcript.tokens) {
      const span = el("span", { class: tok.sampled ? "token sampled" : "token prompt", text: tok.text,
        title: `id ${tok.id}, turn ${tok.turn}` + (tok.sampled ? `, log-prob ${fmt(tok.logprob)}, entropy ${fmt(tok.entropy)}` +
          (tok.trained ? "" : ", not trained") : "") });
      const color = tokenColor(tok, tokens, maxEntropy);
      if (color) span.style.backgroundColor = color;
      line.append(span);
    }
    box.append(line);
  });
  target.append(box);
}

// ---------------------------------------------------------------- curves

async function loadCurves() {
  if (!state.source) return;
  state.curves = await api(`/api/sources/${encodeURIComponent(state.source.id)}/curves`);
  const names = Object.keys(state.curves.metrics).sort();
  document.getElementById("curves-title").textContent = names.length
    ? `Learning curves of ${state.source.name} (from ${state.curves.from})` : `${state.source.name} has no learning curves`;
  if (!state.shown.size || ![...state.shown].some((n) => names.includes(n))) {
    state.shown = new Set(names.filter((n) => DEFAULT_CURVES.includes(n)));
    if (!state.shown.size) state.shown = new Set(names.slice(0, 4));
  }
  const picker = clear(document.getElementById("curve-picker"));
  for (const name of names) {
    const box = el("input", { type: "checkbox", value: name, onchange: (event) => {
      if (event.target.checked) state.shown.add(name); else state.shown.delete(name);
      drawCurves();
    } });
    box.checked = state.shown.has(name);
    picker.append(el("label", {}, box, ` ${name}`));
  }
  drawCurves();
}

function drawCurves() {
  const target = clear(document.getElementById("curves"));
  const ns = "http://www.w3.org/2000/svg";
  const svg = (tag, attrs) => { const node = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v)); return node; };
  for (const name of Object.keys(state.curves.metrics).sort()) {
    if (!state.shown.has(name)) continue;
    const points = state.curves.metrics[name];
    const W = 320, H = 170, L = 44, R = 8, T = 8, B = 22;
    const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
    const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
    const sx = (x) => L + (x1 === x0 ? (W - L - R) / 2 : ((x - x0) / (x1 - x0)) * (W - L - R));
    const sy = (y) => T + (y1 === y0 ? (H - T - B) / 2 : (1 - (y - y0) / (y1 - y0)) * (H - T - B));
    const chart = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, "data-metric": name });
    chart.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }), svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
    for (const [y, label] of [[y0, y0], [y1, y1]]) {
      const t = svg("text", { x: 2, y: sy(y) + 3 }); t.textContent = Number(label).toPrecision(3); chart.append(t);
    }
    for (const x of [x0, x1]) { const t = svg("text", { x: sx(x) - 6, y: H - 6 }); t.textContent = `${x}`; chart.append(t); }
    chart.append(svg("polyline", { class: "line", points: points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ") }));
    for (const p of points) chart.append(svg("circle", { class: "dot", cx: sx(p[0]).toFixed(1), cy: sy(p[1]).toFixed(1), r: 2 }));
    target.append(el("div", { class: "curve" }, el("h4", { text: `${name} (${points.length} points, step ${x0}..${x1})` }), chart));
  }
}

// ---------------------------------------------------------------- compare

async function loadCompare() {
  const a = document.getElementById("compare-a").value, b = document.getElementById("compare-b").value;
  if (!a || !b) return;
  const data = await api(`/api/compare?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}`);
  document.getElementById("compare-count").textContent =
    `${data.tasks.length} tasks in both` + (data.only_a || data.only_b ? ` (${data.only_a} only in A, ${data.only_b} only in B)` : "");
  const body = clear(document.getElementById("compare-rows"));
  clear(document.getElementById("side-a")); clear(document.getElementById("side-b"));
  for (const row of data.tasks) {
    body.append(el("tr", { "data-task": row.task_id, onclick: (event) => showSides(a, b, row, event.currentTarget) },
      el("td", { text: row.task_id }), el("td", { text: row.task_type || "" }),
      el("td", { text: fmt(row.a.success_rate) }), el("td", { text: fmt(row.a.mean_return) }),
      el("td", { text: fmt(row.b.success_rate) }), el("td", { text: fmt(row.b.mean_return) })));
  }
}

async function showSides(a, b, row, tr) {
  for (const other of document.querySelectorAll("#compare-rows tr")) other.classList.toggle("selected", other === tr);
  const [left, right] = await Promise.all([
    api(`/api/sources/${encodeURIComponent(a)}/episodes/${row.a.episodes[0]}`),
    api(`/api/sources/${encodeURIComponent(b)}/episodes/${row.b.episodes[0]}`),
  ]);
  renderEpisode(document.getElementById("side-a"), left, false);
  renderEpisode(document.getElementById("side-b"), right, false);
}

// ---------------------------------------------------------------- wiring

function showTab(name) {
  for (const tab of document.querySelectorAll("nav .tab")) tab.classList.toggle("active", tab.dataset.tab === name);
  for (const panel of ["episodes", "curves", "compare"]) document.getElementById(`panel-${panel}`).classList.toggle("hidden", panel !== name);
  if (name === "curves" && !state.curves) guarded(loadCurves)();
}

function guarded(fn) {
  return async (...args) => {
    try { say(""); await fn(...args); } catch (error) { say(`error: ${error.message}`); }
  };
}

document.getElementById("filters").addEventListener("submit", (event) => { event.preventDefault(); guarded(loadEpisodes)(); });
document.getElementById("compare-form").addEventListener("submit", (event) => { event.preventDefault(); guarded(loadCompare)(); });
for (const tab of document.querySelectorAll("nav .tab")) tab.addEventListener("click", () => showTab(tab.dataset.tab));
guarded(loadSources)().then(() => document.body.setAttribute("data-ready", "true"));
