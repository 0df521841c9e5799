// The coins search page: browse random items, search by an image (dropped, pasted or chosen) or
// by a clicked result, with filter controls built from the index's fields and classes.
// Plain JS, no build step; the API is /docs. Text from the index goes in via textContent only.
"use strict";

const $ = (id) => document.getElementById(id);
const BROWSE = 12; // random items shown before any search
let queryFine = null; // the query's fine label when known: results with the same one are marked
let last = null; // the last query, re-run when the filter changes: {kind: "image", file} | {kind: "id", id}
let filterControls = []; // [{key, read: () => condition | null}]

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function getJson(url, options) {
  const r = await fetch(url, options);
  const body = await r.json();
  if (!r.ok) throw new Error(`${r.status}: ${body.message}`);
  return body;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  node.append(...children);
  return node;
}

// ---- filter controls, from /v1/index `fields` and `classes` --------------------------------

function classControl(key, names) {
  if (names.length > 300) return textControl(key); // a select of thousands helps nobody
  const select = el("select", { id: `filter-${key}` }, el("option", { value: "", textContent: "any" }));
  for (const name of names) select.append(el("option", { value: name, textContent: name }));
  return { key, input: select, read: () => (select.value === "" ? null : { key, match: { value: select.value } }) };
}

function textControl(key) {
  const input = el("input", { id: `filter-${key}`, type: "text", placeholder: "any (a, b: one of)" });
  const read = () => {
    const values = input.value.split(",").map((v) => v.trim()).filter((v) => v !== "");
    if (values.length === 0) return null;
    return { key, match: values.length === 1 ? { value: values[0] } : { any: values } };
  };
  return { key, input, read };
}

function boolControl(key) {
  const select = el("select", { id: `filter-${key}` });
  for (const v of ["any", "true", "false"]) select.append(el("option", { value: v, textContent: v }));
  return { key, input: select, read: () => (select.value === "any" ? null : { key, match: { value: select.value === "true" } }) };
}

function rangeControl(key, type) {
  const kind = type === "timestamp" ? "date" : "number";
  const low = el("input", { id: `filter-${key}-gte`, type: kind, placeholder: "from", step: "any" });
  const high = el("input", { id: `filter-${key}-lte`, type: kind, placeholder: "to", step: "any" });
  const value = (input) => (kind === "number" ? Number(input.value) : input.value);
  const read = () => {
    const range = {};
    if (low.value !== "") range.gte = value(low);
    if (high.value !== "") range.lte = type === "timestamp" ? `${high.value}T23:59:59.999999Z` : value(high);
    return Object.keys(range).length ? { key, range } : null;
  };
  return { key, input: el("span", { className: "range" }, low, high), read };
}

function buildFilters(info) {
  const classes = info.classes || {};
  const controls = [];
  const coarse = classes.coarse || info.coarse_classes;
  if (coarse && coarse.length) controls.push(classControl("coarse", coarse));
  if (classes.fine && classes.fine.length) controls.push(classControl("fine", classes.fine));
  for (const [name, type] of Object.entries(info.fields || {})) {
    if (type === "bool") controls.push(boolControl(name));
    else if (type === "string") controls.push(textControl(name));
    else controls.push(rangeControl(name, type));
  }
  const box = $("filter-controls");
  box.replaceChildren();
  for (const c of controls) {
    box.append(el("label", { textContent: `${c.key} ` }, c.input));
    c.input.addEventListener("change", filterChanged);
  }
  $("filters").hidden = controls.length === 0;
  filterControls = controls;
}

function currentFilter() {
  const must = filterControls.map((c) => c.read()).filter((c) => c !== null);
  return must.length ? { must } : null;
}

function filterChanged() {
  const f = currentFilter();
  $("filter-json").textContent = f ? JSON.stringify(f) : "none";
  if (last) rerun();
}

function clearFilter() {
  for (const input of $("filter-controls").querySelectorAll("input, select")) {
    input.value = input.tagName === "SELECT" ? input.options[0].value : "";
  }
  filterChanged();
}

// ---- results ------------------------------------------------------------------------------

function fieldList(meta) {
  const list = el("ul", { className: "fields" });
  for (const [name, value] of Object.entries((meta && meta.extra) || {})) {
    list.append(el("li", { textContent: `${name}: ${value}` }));
  }
  return list;
}

function card(id, meta, head) {
  const fine = meta ? meta.fine : null;
  const li = el("li", { className: "result" });
  li.dataset.id = id;
  if (queryFine !== null && fine !== null && fine === queryFine) li.classList.add("match");
  const img = el("img", { src: `/v1/items/${id}/image`, alt: `item ${id}`, title: "search with this item" });
  img.addEventListener("click", () => searchById(id, fine));
  const coarse = meta && meta.coarse !== null ? meta.coarse : "–";
  li.append(img, head, el("div", { className: "labels", textContent: `id ${id} · ${coarse} · ${fine ?? "–"}` }), fieldList(meta));
  return li;
}

function render(result) {
  const cards = result.neighbors.map((n) =>
    card(n.id, n.metadata, el("div", { className: "head" },
      el("span", { className: "rank", textContent: `#${n.rank + 1}` }),
      el("span", { className: "score", textContent: n.score.toFixed(3) }))));
  $("results").replaceChildren(...cards);
  showGate(result);
  setStatus(cards.length ? `${cards.length} results` : "no results: nothing matches the filter");
}

function showGate(result) {
  const info = $("gate-info");
  const guess = result.coarse && result.coarse[0];
  info.hidden = !guess;
  info.className = result.gate && result.gate.applied ? "applied" : "";
  if (!guess) return;
  const predicted = `predicted coarse ${guess.label} (p ${guess.probability.toFixed(3)})`;
  info.textContent = result.gate ? `${predicted}: ${result.gate.message}` : predicted;
}

async function browse() {
  last = null;
  queryFine = null;
  $("gate-info").hidden = true;
  $("query").replaceChildren(el("span", { textContent: "Drop or paste an image here" }));
  try {
    const body = await getJson(`/v1/items/random?n=${BROWSE}`);
    $("results").replaceChildren(...body.items.map((it) => card(it.id, it, el("div", { className: "head", textContent: "random" }))));
    setStatus(`${body.items.length} random items of ${body.total}: click one to search with it`);
  } catch (e) {
    setStatus(e.message, true);
  }
}

// ---- queries ------------------------------------------------------------------------------

function rerun() {
  if (last.kind === "image") searchByImage(last.file);
  else searchById(last.id, queryFine);
}

async function searchByImage(file) {
  if (!file) return;
  last = { kind: "image", file };
  const fine = $("query-fine").value.trim();
  queryFine = fine === "" ? null : fine;
  $("query").replaceChildren(el("img", { src: URL.createObjectURL(file), alt: "query image" }));
  const form = new FormData();
  form.append("images", file);
  form.append("k", $("k").value);
  form.append("gate", $("gate").value);
  const f = currentFilter();
  if (f) form.append("filter", JSON.stringify(f));
  setStatus("searching…");
  try {
    render((await getJson("/v1/search/image", { method: "POST", body: form })).results[0]);
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function searchById(id, fine) {
  last = { kind: "id", id };
  queryFine = fine;
  $("query").replaceChildren(el("img", { src: `/v1/items/${id}/image`, alt: `item ${id}` }));
  const body = { ids: [id], k: Number($("k").value) };
  const f = currentFilter();
  if (f) body.filter = f;
  setStatus("searching…");
  try {
    const headers = { "Content-Type": "application/json" };
    render((await getJson("/v1/search", { method: "POST", headers, body: JSON.stringify(body) })).results[0]);
  } catch (e) {
    setStatus(e.message, true);
  }
}

function imageOf(items) {
  for (const item of items || []) {
    const file = item.kind === "file" ? item.getAsFile() : item;
    if (file && file.type && file.type.startsWith("image/")) return file;
  }
  return null;
}

function wire() {
  $("query-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if ($("image").files[0]) searchByImage($("image").files[0]);
    else if (last) rerun();
  });
  $("image").addEventListener("change", () => searchByImage($("image").files[0]));
  $("browse").addEventListener("click", browse);
  for (const id of ["k", "gate"]) $(id).addEventListener("change", () => last && rerun());
  $("clear-filter").addEventListener("click", clearFilter);
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    searchByImage(imageOf(e.dataTransfer.files));
  });
  document.addEventListener("paste", (e) => {
    const file = imageOf(e.clipboardData && e.clipboardData.items);
    if (file) { e.preventDefault(); searchByImage(file); }
  });
}

async function start() {
  wire();
  try {
    const info = await getJson("/v1/index");
    $("index-info").textContent = `${info.ntotal} items, dimension ${info.dim}`;
    if (info.report_url) { $("report-link").href = info.report_url; $("report-link").hidden = false; }
    if (!info.coarse_classes) $("gate").disabled = true;
    buildFilters(info);
  } catch (e) {
    $("index-info").textContent = `index not ready: ${e.message}`;
    return;
  }
  await browse();
}

start();
