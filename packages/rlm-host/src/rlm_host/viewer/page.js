// The rlm trajectory viewer. It reads the run (built by rlm_host.viewer.tree) from the JSON
// script element and draws it. Every piece of model, guest or user text goes into the page
// through textContent, never innerHTML: the text is whatever a model wrote, and it must stay text.
"use strict";

const RUN = JSON.parse(document.getElementById("rlm-data").textContent);
const RLMS = new Map(RUN.rlms.map((r) => [r.id, r]));
const SVG_NS = "http://www.w3.org/2000/svg";

// ---- small DOM builders -------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

// ---- formatting ---------------------------------------------------------------------------

function secs(s) {
  if (s === null || s === undefined) return "…";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  return `${m} m ${String(Math.round(s - m * 60)).padStart(2, "0")} s`;
}

function count(n) {
  if (n === null || n === undefined) return "?";
  return n >= 10000 ? `${(n / 1000).toFixed(1)}k` : String(n);
}

function tokens(usage) {
  if (!usage) return null;
  const total = usage.prompt_tokens + usage.completion_tokens;
  const estimate = usage.reported ? "" : " (est.)";
  const reasoning = usage.reasoning_tokens ? `, ${count(usage.reasoning_tokens)} reasoning` : "";
  return `${count(total)} tok${estimate}${reasoning}`;
}

const STATUS_CLASS = { final: "final", error: "error", running: "running" };
function statusClass(status) {
  return STATUS_CLASS[status] || "budget";
}

// ---- syntax highlighting ------------------------------------------------------------------
// A tokenizer per language: one regex of alternatives, each named group a token class. It is
// small on purpose (comments, strings, numbers, keywords, calls): enough to read model code at
// a glance; the text itself is never altered, only wrapped in spans.

const PY_KEYWORDS = "False None True and as assert async await break class continue def del elif else except finally for from global if import in is lambda nonlocal not or pass raise return try while with yield match case";
const PY_BUILTINS = "print len range str int float list dict set tuple enumerate zip sorted min max sum open isinstance any all map filter repr type abs round";
const HOST_CALLS = "rlm_query rlm_query_batched llm_query llm_query_batched Final prompt";
const SH_KEYWORDS = "if then else elif fi for while until do done case esac in function return export local";

const LEXERS = {
  python: new RegExp([
    String.raw`(?<com>#[^\n]*)`,
    String.raw`(?<str>[rRbBuUfF]{0,2}(?:"""[\s\S]*?(?:"""|$)|'''[\s\S]*?(?:'''|$)|"(?:\\.|[^"\\\n])*"?|'(?:\\.|[^'\\\n])*'?))`,
    String.raw`(?<num>\b(?:0[xXoObB][\da-fA-F_]+|\d[\d_]*\.?[\d_]*(?:[eE][+-]?\d+)?)\b)`,
    String.raw`(?<word>[A-Za-z_][A-Za-z0-9_]*)`,
  ].join("|"), "g"),
  bash: new RegExp([
    String.raw`(?<com>(?:^|(?<=\s))#[^\n]*)`,
    String.raw`(?<str>"(?:\\.|[^"\\])*"?|'[^']*'?)`,
    String.raw`(?<var>\$(?:\{[^}\n]*\}?|[A-Za-z_][A-Za-z0-9_]*|[0-9@#?$!*-]))`,
    String.raw`(?<num>\b\d+\b)`,
    String.raw`(?<word>[A-Za-z_][A-Za-z0-9_-]*)`,
  ].join("|"), "g"),
};
const WORDS = {
  python: { kw: new Set(PY_KEYWORDS.split(" ")), bi: new Set(PY_BUILTINS.split(" ")) },
  bash: { kw: new Set(SH_KEYWORDS.split(" ")), bi: new Set() },
};
const HOST = new Set(HOST_CALLS.split(" "));

function highlight(code, language) {
  const lexer = LEXERS[language] || LEXERS.python;
  const words = WORDS[language] || WORDS.python;
  const out = el("pre", { class: "code" });
  const code_ = el("code", { class: `language-${language}` });
  out.append(code_);
  let last = 0;
  lexer.lastIndex = 0;
  for (const match of code.matchAll(lexer)) {
    if (match.index > last) code_.append(code.slice(last, match.index));
    const text = match[0];
    const groups = match.groups;
    let cls = null;
    if (groups.com !== undefined) cls = "tok-com";
    else if (groups.str !== undefined) cls = "tok-str";
    else if (groups.var !== undefined) cls = "tok-var";
    else if (groups.num !== undefined) cls = "tok-num";
    else if (HOST.has(text)) cls = "tok-host";
    else if (words.kw.has(text)) cls = "tok-kw";
    else if (words.bi.has(text)) cls = "tok-bi";
    else if (code[match.index + text.length] === "(") cls = "tok-fn";
    code_.append(cls ? el("span", { class: cls }, text) : text);
    last = match.index + text.length;
  }
  if (last < code.length) code_.append(code.slice(last));
  return out;
}

function textBlock(text, cls) {
  return el("pre", { class: cls || "text" }, text);
}

// The observation is a line of prose, then the output's metadata as JSON (what the model saw):
// drawn as one line per stream (size, truncation) with its prefix, and the other keys as they
// are. Anything unexpected is shown raw rather than guessed at.
function observationView(text, failed) {
  const cut = text.indexOf("\n");
  let data = null;
  try { data = cut < 0 ? null : JSON.parse(text.slice(cut + 1)); } catch (_) { data = null; }
  if (data === null || typeof data !== "object" || Array.isArray(data)) return textBlock(text, failed ? "err" : "text");
  const box = el("div", { class: `obs${failed ? " failed" : ""}` });
  for (const [key, value] of Object.entries(data)) {
    if (value && typeof value === "object" && "chars" in value && "prefix" in value) {
      const facts = `${count(value.chars)} chars, ${count(value.lines)} lines${value.truncated ? ", truncated" : ""}`;
      box.append(el("div", { class: "obs-key" }, el("b", {}, key), ` ${facts}`));
      if (value.prefix !== "") box.append(textBlock(value.prefix, key === "stderr" ? "err" : "text"));
    } else {
      const shown = typeof value === "string" ? value : JSON.stringify(value, null, 1);
      box.append(el("div", { class: "obs-key" }, el("b", {}, key), " ", el("span", { class: "obs-val" }, shown)));
    }
  }
  return box;
}

// ---- header, problems ---------------------------------------------------------------------

function chip(label, value) {
  return el("span", { class: "chip" }, `${label} `, el("b", {}, value));
}

function drawSummary() {
  const root = RUN.rlms[0];
  const steps = RUN.rlms.reduce((n, r) => n + r.steps.length, 0);
  const modelSec = RUN.rlms.reduce((n, r) => n + r.model_seconds, 0);
  const blockSec = RUN.rlms.reduce((n, r) => n + r.block_seconds, 0);
  const usage = RUN.usage || RUN.rlms.reduce((u, r) => ({
    prompt_tokens: u.prompt_tokens + r.usage.prompt_tokens,
    completion_tokens: u.completion_tokens + r.usage.completion_tokens,
    calls: u.calls + r.usage.calls, reported: u.reported || r.usage.reported,
  }), { prompt_tokens: 0, completion_tokens: 0, calls: 0, reported: false });
  const stop = RUN.stop_reason || (root ? root.status : "empty");
  const started = RUN.started_at ? new Date(RUN.started_at * 1000).toLocaleString() : "?";
  document.title = `rlm run ${RUN.run_id || ""} (${stop})`;
  document.getElementById("summary").append(
    el("h1", {}, `rlm run ${RUN.run_id || "(no run_start)"} `,
      el("span", { class: `badge ${statusClass(stop)}` }, RUN.complete ? stop : `${stop}, incomplete`)),
    el("div", { class: "chips" },
      chip("model", RUN.model || "?"), chip("api", RUN.api || "?"),
      chip("wall time", secs(RUN.duration)), chip("model calls", count(usage.calls)),
      chip("tokens", tokens(usage) || "?"), chip("RLMs", count(RUN.rlms.length)), chip("steps", count(steps)),
      chip("model time (summed)", secs(modelSec)), chip("block time (summed)", secs(blockSec)),
      chip("prompt", `${count(RUN.prompt_chars)} chars`), chip("started", started)),
    el("div", { class: "source" }, RUN.source, RUN.url ? ` · ${RUN.url}` : ""),
  );
  const models = Object.entries(RUN.usage_by_model || {});
  if (models.length > 1) {
    document.getElementById("summary").append(el("div", { class: "chips", id: "usage-by-model" },
      ...models.sort().map(([name, u]) => chip(name, `${count(u.calls)} calls · ${tokens(u)}`))));
  }
  if (RUN.problems.length) {
    const banner = document.getElementById("problems");
    banner.hidden = false;
    banner.append(el("b", {}, "This trajectory is partial or damaged; what it holds is shown."),
      el("ul", {}, RUN.problems.map((p) => el("li", {}, p))));
  }
}

// ---- timeline (gantt) ---------------------------------------------------------------------

function drawTimeline() {
  const legend = document.getElementById("timeline-legend");
  legend.replaceChildren(
    ...[["model call", "var(--model)"], ["block execution", "var(--block)"], ["child lifetime", "var(--child)"],
      ["Final", "var(--final)"], ["error / stop", "var(--error)"]]
      .map(([name, color]) => el("span", { class: "legend" }, el("span", { class: "swatch", style: `background:${color}` }), name)));
  const box = document.getElementById("timeline");
  const total = Math.max(RUN.duration || 0, 1e-3);
  const labelW = 150;
  const width = Math.max(box.clientWidth || 900, 500);
  const plotW = width - labelW - 12;
  const rowH = 16;
  const top = 18;
  const height = top + RUN.rlms.length * rowH + 4;
  const x = (t) => labelW + (Math.min(Math.max(t, 0), total) / total) * plotW;
  const chart = svg("svg", { width, height, role: "img", "aria-label": "timeline of model calls and blocks" });
  const ticks = 8;
  for (let i = 0; i <= ticks; i++) {
    const t = (total * i) / ticks;
    chart.append(svg("line", { x1: x(t), x2: x(t), y1: top - 4, y2: height, stroke: "#e5e7eb" }),
      svg("text", { x: x(t), y: 10, class: "axis", "text-anchor": i === 0 ? "start" : i === ticks ? "end" : "middle" }, secs(t)));
  }
  RUN.rlms.forEach((rlm, row) => {
    const y = top + row * rowH;
    const label = svg("text", { x: 4 + rlm.depth * 10, y: y + 11, class: "row-label", onclick: () => reveal(rlm.id) },
      `${rlm.id}${rlm.kind === "leaf" ? " (leaf)" : ""}`);
    label.append(svg("title", {}, `${rlm.id}: model ${secs(rlm.model_seconds)}, blocks ${secs(rlm.block_seconds)}`));
    chart.append(label);
    const end = rlm.end !== null ? rlm.end : total;
    if (rlm.start !== null) {
      chart.append(svg("rect", { x: x(rlm.start), y: y + 7, width: Math.max(x(end) - x(rlm.start), 1), height: 2, fill: "var(--child)" }));
    }
    for (const step of rlm.steps) {
      bar(chart, x, y, step.model_start, step.model_end, total, "var(--model)", `${rlm.id} step ${step.step}: model call ${secs(step.model_duration)}${step.model_error ? ` (failed: ${step.model_error})` : ""}`);
      bar(chart, x, y, step.block_start, step.block_end, total, "var(--block)", `${rlm.id} step ${step.step}: ${step.language || "block"} ${secs(step.block_duration)}`);
      if (step.final !== null) chart.append(marker(x(step.block_end ?? end), y, "var(--final)", `${rlm.id}: Final`));
    }
    for (const notice of rlm.notices) chart.append(marker(x(notice.at), y, "var(--error)", `${rlm.id}: ${notice.title}: ${notice.detail}`));
  });
  box.replaceChildren(chart);
}

function bar(chart, x, y, start, end, total, color, title) {
  if (start === null || start === undefined) return;
  const stop = end === null || end === undefined ? total : end;
  const rect = svg("rect", { x: x(start), y: y + 2, width: Math.max(x(stop) - x(start), 1.5), height: 12, rx: 2, fill: color,
    opacity: end === null || end === undefined ? 0.45 : 1 });
  rect.append(svg("title", {}, title));
  chart.append(rect);
}

function marker(cx, y, color, title) {
  const dot = svg("circle", { cx, cy: y + 8, r: 4, fill: color, stroke: "#fff", "stroke-width": 1 });
  dot.append(svg("title", {}, title));
  return dot;
}

// ---- the tree of calls --------------------------------------------------------------------

function rlmCard(rlm) {
  const status = statusClass(rlm.status);
  const duration = rlm.start !== null && rlm.end !== null ? rlm.end - rlm.start : null;
  const head = el("div", { class: "rlm-head" },
    el("span", { class: "rlm-id" }, rlm.id),
    el("span", { class: "badge" }, rlm.kind === "root" ? "root" : `${rlm.kind} · ${rlm.method || "?"}`),
    el("span", { class: `badge ${status}` }, rlm.status),
    el("span", { class: "meta" }, `depth ${rlm.depth}`),
    rlm.kind === "leaf" ? null : el("span", { class: "meta" }, `${rlm.steps.length} step${rlm.steps.length === 1 ? "" : "s"}`),
    el("span", { class: "meta" }, `at ${secs(rlm.start)} · took ${duration === null ? "…" : secs(duration)}`),
    el("span", { class: "meta" }, rlm.kind === "leaf" ? `model ${secs(rlm.model_seconds)}` : `model ${secs(rlm.model_seconds)} · blocks ${secs(rlm.block_seconds)}`),
    el("span", { class: "meta" }, tokens(rlm.usage)),
    rlm.model && rlm.model !== RUN.model ? el("span", { class: "meta", dataset: { model: rlm.model } }, `model ${rlm.model}`) : null,
    rlm.prompt_chars !== null ? el("span", { class: "meta" }, `prompt ${count(rlm.prompt_chars)} chars`) : null,
    rlm.answer_chars !== null ? el("span", { class: "meta" }, `answer ${count(rlm.answer_chars)} chars`) : null);
  const body = el("div", { class: "rlm-body" });
  for (const notice of rlm.notices) {
    body.append(el("div", { class: `notice ${notice.kind}`, dataset: { notice: notice.kind } },
      el("b", {}, `${{ budget: "budget stop", context: "context" }[notice.kind] || "error"}: ${notice.title}`), ` at ${secs(notice.at)}\n`, notice.detail));
  }
  for (const step of rlm.steps) body.append(stepView(rlm, step));
  if (rlm.final !== null && rlm.kind !== "leaf") {
    body.append(el("div", { class: "part-label" }, "Final"), textBlock(rlm.final, "final"));
  }
  return el("section", {
    class: `rlm status-${status}`, id: `rlm-${rlm.id}`,
    dataset: { rlm: rlm.id, depth: String(rlm.depth) },
  }, head, body);
}

function stepView(rlm, step) {
  const problems = [];
  if (step.model_error) problems.push("model failed");
  if (step.error) problems.push("raised");
  if (step.returncode) problems.push(`exit ${step.returncode}`);
  const summary = el("summary", {},
    el("span", { class: "step-no" }, `step ${step.step}`),
    el("span", { class: "meta" }, `model ${secs(step.model_duration)}${step.attempts > 1 ? ` (${step.attempts} attempts)` : ""}`),
    step.code !== null ? el("span", { class: "meta" }, `${step.language} ${secs(step.block_duration)}`) : null,
    step.usage ? el("span", { class: "meta" }, tokens(step.usage)) : null,
    step.request_chars !== null ? el("span", { class: "meta" }, `shown ${count(step.request_chars)} chars`) : null,
    step.batches.length ? el("span", { class: "meta" }, `${step.batches.flat().length} child call(s)`) : null,
    problems.length ? el("span", { class: "badge error" }, problems.join(", ")) : null,
    step.final !== null ? el("span", { class: "badge final" }, "Final") : null);
  const body = el("div", { class: "step-body" });
  if (step.reasoning) {
    // Collapsed: a reasoning is often longer than everything else of the step.
    body.append(el("details", { class: "reasoning" },
      el("summary", {}, `reasoning (${count(step.reasoning.length)} chars)`), textBlock(step.reasoning)));
  }
  if (rlm.kind === "leaf") {
    body.append(el("div", { class: "part-label" }, "reply"));
    body.append(step.reply !== null ? textBlock(step.reply) : textBlock("(no reply yet)"));
  } else if (step.code !== null) {
    if (step.reply !== null) {
      body.append(el("details", { class: "reply" }, el("summary", {}, "full model reply"), textBlock(step.reply)));
    }
    body.append(el("div", { class: "part-label" }, `block · ${step.language}`), highlight(step.code, step.language));
  } else if (step.reply !== null) {
    body.append(el("div", { class: "part-label" }, "model reply (no block: the model was asked again)"), textBlock(step.reply));
  }
  if (step.model_error) body.append(el("div", { class: "part-label" }, "model call failed"), textBlock(step.model_error, "err"));
  step.batches.forEach((batch) => {
    body.append(el("div", { class: "batch-label" }, batch.length > 1 ? `${batch.length} children, concurrently` : "child"));
    body.append(el("div", { class: "batch" }, batch.map((id) => rlmCard(RLMS.get(id)))));
  });
  if (step.observation !== null) {
    const label = step.error ? `observation · error ${step.error}` : `observation${step.returncode !== null ? ` · returncode ${step.returncode}` : ""}`;
    body.append(el("div", { class: "part-label" }, label), observationView(step.observation, Boolean(step.error)));
  }
  if (step.final !== null && rlm.kind !== "leaf") body.append(el("div", { class: "part-label" }, "Final set"));
  return el("details", { class: "step", open: true, dataset: { rlm: rlm.id, step: String(step.step) } }, summary, body);
}

function drawOutline() {
  const nav = document.getElementById("outline");
  nav.append(...RUN.rlms.map((rlm) => el("a", {
    href: `#rlm-${rlm.id}`, dataset: { rlm: rlm.id }, style: `padding-left:${8 + rlm.depth * 12}px`,
    onclick: (event) => { event.preventDefault(); reveal(rlm.id); },
  }, `${rlm.status === "final" ? "✓" : rlm.status === "running" ? "…" : "✗"} ${rlm.id} `,
  el("span", { class: "meta" }, rlm.kind === "leaf" ? "leaf" : `${rlm.steps.length} st`))));
}

function reveal(id) {
  const card = document.getElementById(`rlm-${id}`);
  if (!card) return;
  for (let node = card.parentElement; node; node = node.parentElement) if (node.tagName === "DETAILS") node.open = true;
  card.scrollIntoView({ behavior: "smooth", block: "start" });
  card.classList.remove("flash");
  void card.offsetWidth; // restart the animation
  card.classList.add("flash");
}

// ---- search and filters -------------------------------------------------------------------

function stepText(step) {
  return [step.reply, step.reasoning, step.code, step.observation, step.final, step.error, step.model_error]
    .filter((t) => t !== null).join("\n").toLowerCase();
}
const STEP_TEXT = new Map();
for (const rlm of RUN.rlms) for (const step of rlm.steps) STEP_TEXT.set(`${rlm.id}/${step.step}`, stepText(step));

function stepHasProblem(step) {
  return Boolean(step.model_error || step.error || step.returncode);
}

function applyFilters() {
  const query = document.getElementById("search").value.trim().toLowerCase();
  const depthValue = document.getElementById("depth").value;
  const maxDepth = depthValue === "" ? Infinity : Number(depthValue);
  const onlyProblems = document.getElementById("only-problems").checked;
  const filtering = query !== "" || onlyProblems;
  const visible = new Map();
  let shownSteps = 0;
  let allSteps = 0;
  // Children first (reverse tree order), so that a step stays when one of its children does.
  for (const rlm of [...RUN.rlms].reverse()) {
    const card = document.getElementById(`rlm-${rlm.id}`);
    const selfMatch = (query === "" || rlm.id === query || rlm.notices.some((n) => `${n.title} ${n.detail}`.toLowerCase().includes(query)))
      && (!onlyProblems || rlm.notices.length > 0);
    let anyStep = false;
    for (const step of rlm.steps) {
      allSteps++;
      const node = card.querySelector(`:scope > .rlm-body > .step[data-step="${step.step}"]`);
      const textOk = query === "" || STEP_TEXT.get(`${rlm.id}/${step.step}`).includes(query);
      const own = textOk && (!onlyProblems || stepHasProblem(step));
      const viaChild = step.batches.flat().some((id) => visible.get(id));
      const show = !filtering || own || viaChild || (selfMatch && query !== "");
      node.classList.toggle("hidden", !show);
      if (show) { anyStep = true; if (own) shownSteps++; }
      if (filtering && show) node.open = true;
    }
    const show = rlm.depth <= maxDepth && (!filtering || selfMatch || anyStep || (rlm.kind === "root"));
    visible.set(rlm.id, show && (!filtering || selfMatch || anyStep));
    card.classList.toggle("hidden", !show);
    const link = document.querySelector(`#outline a[data-rlm="${CSS.escape(rlm.id)}"]`);
    if (link) link.classList.toggle("hidden", !visible.get(rlm.id));
  }
  document.getElementById("match-count").textContent = filtering
    ? `${shownSteps} of ${allSteps} steps match`
    : `${allSteps} steps in ${RUN.rlms.length} calls`;
}

function setupToolbar() {
  const depths = [...new Set(RUN.rlms.map((r) => r.depth))].sort((a, b) => a - b);
  const select = document.getElementById("depth");
  for (const d of depths) select.append(el("option", { value: String(d) }, `≤ ${d}`));
  for (const id of ["search", "depth", "only-problems"]) document.getElementById(id).addEventListener("input", applyFilters);
  const setAll = (open) => () => document.querySelectorAll("details.step").forEach((d) => { d.open = open; });
  document.getElementById("expand").addEventListener("click", setAll(true));
  document.getElementById("collapse").addEventListener("click", setAll(false));
}

// ---- start --------------------------------------------------------------------------------

drawSummary();
drawTimeline();
drawOutline();
const tree = document.getElementById("tree");
for (const rlm of RUN.rlms) if (rlm.parent === null || !RLMS.has(rlm.parent)) tree.append(rlmCard(rlm));
setupToolbar();
applyFilters();
let resizeTimer = 0;
window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(drawTimeline, 150); });
document.body.dataset.ready = "true";
