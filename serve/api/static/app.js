// The coins search page: upload an image (or click a result) and show the top-k gallery items.
"use strict";

const $ = (id) => document.getElementById(id);
let queryFine = null; // the query's fine label when known: results with the same one are marked

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function loadIndexInfo() {
  try {
    const r = await fetch("/v1/index");
    const info = await r.json();
    if (!r.ok) throw new Error(info.message);
    $("index-info").textContent = `${info.ntotal} items, dimension ${info.dim}`;
    if (info.report_url) { $("report-link").href = info.report_url; $("report-link").hidden = false; }
    if (!info.coarse_classes) $("gate").disabled = true;
  } catch (e) {
    $("index-info").textContent = `index not ready: ${e.message}`;
  }
}

function label(meta, key) {
  return meta && meta[key] !== null && meta[key] !== undefined ? meta[key] : "–";
}

function render(result) {
  const list = $("results");
  list.replaceChildren();
  for (const n of result.neighbors) {
    const li = document.createElement("li");
    li.className = "result";
    const fine = n.metadata ? n.metadata.fine : null;
    if (queryFine !== null && fine !== null && fine === queryFine) li.classList.add("match");
    const img = document.createElement("img");
    img.src = `/v1/items/${n.id}/image`;
    img.alt = `item ${n.id}`;
    img.title = "search with this item";
    img.addEventListener("click", () => searchById(n.id, fine));
    const text = document.createElement("div");
    text.innerHTML = `<span class="score">${n.score.toFixed(3)}</span> #${n.rank + 1}<br>` +
      `id ${n.id} · coarse ${label(n.metadata, "coarse")} · fine ${label(n.metadata, "fine")}`;
    li.append(img, text);
    list.append(li);
  }
  const guess = result.coarse && result.coarse[0];
  const gated = result.gated_to ? `, searched coarse ${result.gated_to.join(", ")}` : "";
  const predicted = guess ? `, predicted coarse ${guess.name ?? guess.label} ` +
    `(${(100 * guess.probability).toFixed(0)}%)` : "";
  setStatus(`${result.neighbors.length} results${predicted}${gated}`);
}

async function post(url, options) {
  const r = await fetch(url, options);
  const body = await r.json();
  if (!r.ok) throw new Error(`${r.status}: ${body.message}`);
  return body;
}

async function searchByImage(event) {
  event.preventDefault();
  const file = $("image").files[0];
  if (!file) return;
  const fine = $("query-fine").value;
  queryFine = fine.trim() === "" ? null : fine.trim();
  const preview = document.createElement("img");
  preview.src = URL.createObjectURL(file);
  $("query").replaceChildren(preview);
  const form = new FormData();
  form.append("images", file);
  form.append("k", $("k").value);
  form.append("gate", $("gate").value);
  setStatus("searching…");
  try {
    const body = await post("/v1/search/image", { method: "POST", body: form });
    render(body.results[0]);
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function searchById(id, fine) {
  queryFine = fine;
  const preview = document.createElement("img");
  preview.src = `/v1/items/${id}/image`;
  $("query").replaceChildren(preview);
  setStatus("searching…");
  try {
    const body = await post("/v1/search", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ids: [id], k: Number($("k").value) }),
    });
    render(body.results[0]);
  } catch (e) {
    setStatus(e.message, true);
  }
}

$("query-form").addEventListener("submit", searchByImage);
loadIndexInfo();
