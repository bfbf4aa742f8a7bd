// The search page: plain DOM, no framework. Everything shown from the service is
// set as text (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const INCLUDE = ["labels", "words", "image", "name"];
const api = (path) => new URL(path, document.baseURI).toString();
let shownUrls = [];           // blob: URLs of the thumbnails on screen, freed on the next search

function headers(extra) {
  const token = $("token").value.trim();
  sessionStorage.setItem("hashgan-token", token);
  return Object.assign(token ? { Authorization: "Bearer " + token } : {}, extra || {});
}

function options() {
  const k = parseInt($("k").value, 10);
  const target = $("target").value;
  return { k: Number.isFinite(k) ? k : 12, target: target === "auto" ? null : target };
}

async function call(path, init) {
  let response;
  try {
    response = await fetch(api(path), init);
  } catch (e) {
    throw new Error("the service could not be reached (" + e.message + ")");
  }
  const type = response.headers.get("content-type") || "";
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    if (type.includes("json")) {
      const body = await response.json();
      message = response.status + ": " + (body.error || message);
    }
    throw new Error(message);
  }
  return type.includes("json") ? response.json() : response.blob();
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function search(query, describe, queryImage) {
  // query: a JSON body ({text}, {image_of}, {text_of}, maybe a target) or an upload (FormData)
  showError("");
  $("status").textContent = "searching…";
  const opts = options();
  let path, init;
  if (query instanceof FormData) {
    query.set("k", opts.k);
    if (opts.target) query.set("target", opts.target);
    query.set("include", INCLUDE.join(","));
    path = "v1/search/image";
    init = { method: "POST", headers: headers(), body: query };
  } else {
    const body = Object.assign({ k: opts.k, include: INCLUDE }, query);
    if (opts.target && !body.target) body.target = opts.target;
    path = "v1/search";
    init = { method: "POST", body: JSON.stringify(body),
             headers: headers({ "Content-Type": "application/json" }) };
  }
  try {
    const answer = await call(path, init);
    showQuery(queryImage);
    render(answer, describe);
  } catch (e) {
    $("status").textContent = "";
    showError(e.message);
  }
}

function showQuery(imageBlob) {
  const view = $("query-view");
  const img = $("query-image");
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  if (imageBlob) {
    img.src = URL.createObjectURL(imageBlob);
    view.hidden = false;
  } else {
    img.removeAttribute("src");
    view.hidden = true;
  }
}

function render(answer, describe) {
  shownUrls.forEach((u) => URL.revokeObjectURL(u));
  shownUrls = [];
  const list = $("results");
  list.replaceChildren();
  const what = answer.target === "image" ? "images" : "texts";
  let status = answer.results.length + " " + what + " for " + describe +
    " (" + answer.took_ms.toFixed(1) + " ms)";
  if (answer.unknown_words && answer.unknown_words.length) {
    status += "; not in the vocabulary: " + answer.unknown_words.join(", ");
  }
  $("status").textContent = status;
  for (const result of answer.results) list.append(card(result, answer.target));
}

function card(result, target) {
  const li = document.createElement("li");
  li.className = "result " + target;
  const button = document.createElement("button");
  button.type = "button";
  button.title = target === "image" ? "find texts for this image" : "find images for this text";
  const img = document.createElement("img");
  img.alt = result.name || "item " + result.id;
  img.width = 160;
  img.height = 160;
  button.append(img);
  const name = document.createElement("p");     // what a person calls it ("cat face"), if known
  name.className = "name";
  name.textContent = result.name || "";
  name.hidden = !result.name;
  const distance = document.createElement("span");
  distance.className = "distance";
  distance.textContent = "distance " + result.distance + " · id " + result.id;
  const labels = document.createElement("ul");
  labels.className = "labels";
  for (const name of result.labels || []) {
    const chip = document.createElement("li");
    chip.textContent = name;
    labels.append(chip);
  }
  const words = document.createElement("p");
  words.className = "words";
  words.textContent = (result.words || []).join(" ");
  li.append(button, name, distance, labels, words);
  const thumbnail = result.image ? loadImage(img, result.image) : Promise.resolve(null);
  button.addEventListener("click", async () => {
    if (target === "image") {
      search({ image_of: result.id, target: "text" }, "the image of item " + result.id,
             await thumbnail);
    } else {
      search({ text_of: result.id, target: "image" }, "the text of item " + result.id, null);
    }
  });
  return li;
}

async function loadImage(img, path) {
  // fetch, not <img src>: the request carries the token. -> the image (a Blob) or null
  try {
    const blob = await call(path + "?size=320", { headers: headers() });
    const url = URL.createObjectURL(blob);
    shownUrls.push(url);
    img.src = url;
    return blob;
  } catch (e) {
    img.alt = "no image: " + e.message;
    img.classList.add("missing");
    return null;
  }
}

function searchFile(file) {
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  search(form, "the image " + file.name, file);
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").value = sessionStorage.getItem("hashgan-token") || "";
  $("text-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text").value.trim();
    if (!text) {
      showError("type some words to search with");
      return;
    }
    search({ text: text }, "“" + text + "”", null);
  });
  $("file").addEventListener("change", () => searchFile($("file").files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    searchFile(event.dataTransfer.files[0]);
  });
});
