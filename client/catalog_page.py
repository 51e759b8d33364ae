"""The catalog page of `asen app --store`: static HTML and one script that uses the JSON API
(client/catalog_api.py). The script builds every element with textContent, never HTML."""

from __future__ import annotations

PAGE_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>asen catalog</title>
<link rel="icon" href="data:,">
<style>
body{font-family:sans-serif;margin:1.5em;background:#fafafa;color:#222}
form{display:flex;gap:1em;align-items:end;flex-wrap:wrap;background:#fff;padding:1em;
border:1px solid #ddd}
fieldset{border:1px solid #ddd;display:flex;gap:.6em;flex-wrap:wrap}
label{display:flex;flex-direction:column;font-size:.85em;gap:.2em}
.error{color:#b00020;font-weight:bold;margin:1em 0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:.8em}
.hit{background:#fff;border:1px solid #ddd;padding:.4em;font-size:.8em}
.hit img{width:100%;aspect-ratio:1;object-fit:contain;background:#eee}
.weight{width:4em}
</style></head><body>
<h1>asen catalog: items like this one</h1>
<form id="query">
<label>photo <input type="file" id="image" accept="image/*"></label>
<fieldset id="attributes"><legend>attributes and weights</legend></fieldset>
<fieldset id="filters"><legend>filter</legend></fieldset>
<label>k <input type="number" id="k" min="1" max="100" value="10"></label>
<button type="submit" id="search">search</button>
</form>
<p class="error" id="error" hidden></p>
<h2 id="title"></h2>
<div class="grid" id="results"></div>
<p><button id="prev" disabled>previous</button> <button id="next" disabled>next</button></p>
<script src="/catalog.js"></script>
</body></html>
"""

PAGE_JS = r"""
"use strict";
const $ = (id) => document.getElementById(id);
let info = null, last = null;

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = text;
  return node;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function setup(health) {
  info = health;
  health.attributes.forEach((name, i) => {
    const box = el("label");
    const check = el("input", {type: "checkbox", class: "attr", "data-name": name});
    if (i === 0) check.checked = true;
    box.append(check, document.createTextNode(name));
    box.append(el("input", {type: "number", class: "weight", "data-name": name,
                            value: "1", min: "0.01", step: "0.01"}));
    $("attributes").append(box);
  });
  for (const [name, type] of Object.entries(health.fields)) {
    if (name === "image") continue;
    if (type === "string" || type === "large_string") {
      const box = el("label", {}, name + " (any of, comma-separated)");
      box.append(el("input", {type: "text", class: "f-in", "data-name": name, id: "f-" + name}));
      $("filters").append(box);
    } else if (type === "bool") {
      const box = el("label", {}, name);
      const pick = el("select", {class: "f-bool", "data-name": name, id: "f-" + name});
      for (const v of ["", "true", "false"]) pick.append(el("option", {value: v}, v || "any"));
      box.append(pick);
      $("filters").append(box);
    } else {
      for (const [op, word] of [["gte", "min"], ["lte", "max"]]) {
        const box = el("label", {}, name + " " + word);
        box.append(el("input", {type: "number", step: "any", class: "f-range",
                                "data-name": name, "data-op": op, id: `f-${name}-${word}`}));
        $("filters").append(box);
      }
    }
  }
}

function buildFilter() {
  const parts = [];
  for (const input of document.querySelectorAll(".f-in")) {
    const values = input.value.split(",").map((v) => v.trim()).filter((v) => v);
    if (values.length) parts.push({[input.dataset.name]: {in: values}});
  }
  for (const pick of document.querySelectorAll(".f-bool")) {
    if (pick.value) parts.push({[pick.dataset.name]: pick.value === "true"});
  }
  for (const input of document.querySelectorAll(".f-range")) {
    if (input.value !== "") {
      let value = Number(input.value);
      if (info.fields[input.dataset.name].startsWith("int")) value = Math.round(value);
      parts.push({[input.dataset.name]: {[input.dataset.op]: value}});
    }
  }
  return parts.length ? {and: parts} : null;
}

function buildQuery(offset) {
  const attributes = {};
  for (const check of document.querySelectorAll(".attr")) {
    if (!check.checked) continue;
    const weight = document.querySelector(`.weight[data-name="${CSS.escape(check.dataset.name)}"]`);
    attributes[check.dataset.name] = Number(weight.value);
  }
  const fields = Object.keys(info.fields);
  return {attributes, filter: buildFilter(), k: Number($("k").value), offset, fields};
}

async function run(kind, offset, item) {
  const query = buildQuery(offset);
  let body, headers = {};
  if (kind === "item") {
    body = JSON.stringify({...query, item});
    headers["content-type"] = "application/json";
  } else {
    const file = $("image").files[0];
    if (!file) { showError("choose a photo, or click 'more like this' on a result"); return; }
    body = new FormData();
    body.append("image", file);
    body.append("query", JSON.stringify(query));
  }
  const response = await fetch("/api/search", {method: "POST", body, headers});
  const data = await response.json();
  if (!response.ok) { showError(data.error || response.statusText); return; }
  showError("");
  last = {kind, offset, item, k: query.k};
  render(data, kind === "item" ? "more like " + item : "like the photo");
}

function render(data, what) {
  const grid = $("results");
  grid.replaceChildren();
  const to = data.offset + data.hits.length;
  $("title").textContent = `${what}: results ${data.offset + 1} to ${to}`;
  data.hits.forEach((hit, i) => {
    const card = el("div", {class: "hit", "data-id": String(hit.id)});
    if ("image" in info.fields) {
      card.append(el("img", {src: "/api/items/" + encodeURIComponent(hit.id) + "/image",
                             alt: String(hit.id)}));
    }
    card.append(el("div", {class: "rank"}, `#${data.offset + i + 1} ${hit.id}`));
    card.append(el("div", {class: "score"}, "score " + hit.score.toFixed(4)));
    for (const [name, score] of Object.entries(hit.scores)) {
      card.append(el("div", {class: "attr-score"}, `${name} ${score.toFixed(4)}`));
    }
    for (const [name, value] of Object.entries(hit.fields)) {
      card.append(el("div", {class: "field", "data-field": name}, `${name}: ${value}`));
    }
    const more = el("button", {class: "more", type: "button"}, "more like this");
    more.addEventListener("click", () => run("item", 0, hit.id));
    card.append(more);
    grid.append(card);
  });
  $("prev").disabled = data.offset === 0;
  $("next").disabled = data.hits.length < data.k || data.offset + data.k > 900;
}

$("query").addEventListener("submit", (event) => { event.preventDefault(); run("photo", 0); });
$("prev").addEventListener("click", () => {
  run(last.kind, Math.max(0, last.offset - last.k), last.item);
});
$("next").addEventListener("click", () => run(last.kind, last.offset + last.k, last.item));
fetch("/api/health").then((r) => r.json()).then(setup).catch((e) => showError(String(e)));
"""
