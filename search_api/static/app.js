// The locate page: a photo dropped or picked goes to POST /v1/locate; the answer is shown on the map
// and beside it. The API key lives in this browser's local storage and goes out as a Bearer token.
import { createMap, showAnswer } from "./map.js";
import { coordinates, country, el, km, percent, placeLabel, probabilities, verdict } from "./words.js";

const KEY_STORAGE = "geoloc-key";
const $ = (id) => document.getElementById(id);
const view = createMap($("map"));
let photo = null;
let thumbnails = new Map();
let settingsOpenedForKey = false; // opened because no key was stored: closed again once an answer comes

const headers = () => {
  const key = $("key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
};

/** An object URL for a gallery photo (fetched once per answer, with the key), or null. */
function thumbnail(url) {
  if (!url) return Promise.resolve(null);
  if (!thumbnails.has(url)) {
    thumbnails.set(url, fetch(url, { headers: headers() })
      .then((response) => (response.ok ? response.blob() : null))
      .then((blob) => (blob ? URL.createObjectURL(blob) : null))
      .catch(() => null));
  }
  return thumbnails.get(url);
}

function status(text, tone = "") {
  $("status").textContent = text;
  $("status").className = `status ${tone}`;
}

function errorText(response, body) {
  const message = body && body.error ? body.error.message : response.statusText || "request failed";
  if (response.status === 401) return `${message}. Paste an API key under Settings.`;
  return `${message} (HTTP ${response.status})`;
}

async function locate() {
  if (!photo) return;
  const form = new FormData();
  form.append("photo", photo);
  form.append("k", $("k").value || "10");
  const collections = $("collections").value.trim();
  if (collections) form.append("collections", collections);
  status("Locating…", "busy");
  $("again").disabled = true;
  try {
    const response = await fetch("v1/locate", { method: "POST", body: form, headers: headers() });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      status(errorText(response, body), "error");
      if (response.status === 401) $("settings").open = true;
      return;
    }
    status("");
    show(body);
    if (settingsOpenedForKey) $("settings").open = settingsOpenedForKey = false;
  } catch (error) {
    status(`The server could not be reached: ${error.message}`, "error");
  } finally {
    $("again").disabled = false;
  }
}

function choose(file) {
  if (!file) return;
  photo = file;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop").classList.add("has-photo");
  locate();
}

function showVerdict(answer) {
  const words = verdict(answer);
  $("verdict").textContent = words ? words.text : "";
  $("verdict").className = `verdict ${words ? words.tone : ""}`;
  $("verdict").hidden = !words;
  return words;
}

function showFacts(answer) {
  const facts = answer.place ? [coordinates(answer.lat, answer.lon)] : [];
  if (typeof answer.uncertainty_km === "number") facts.push(`± ${km(answer.uncertainty_km)}`);
  if (answer.abstained) facts.push("best guess only");
  const neighbours = answer.neighbours || [];
  if (neighbours.length) facts.push(`${answer.cluster_size} of ${neighbours.length} similar photos agree`);
  $("facts").textContent = facts.join(" · ");
  $("probabilities").replaceChildren(...probabilities(answer).map(([radius, p]) => el("li", {},
    el("span", { class: "radius" }, `≤ ${radius.toLocaleString("en")} km`),
    el("span", { class: "bar" }, el("span", { style: `width: ${Math.round(p * 100)}%` })),
    el("span", { class: "share" }, percent(p)))));
}

function showCells(answer, polygons) {
  const cells = answer.candidates || [];
  $("cells-title").hidden = cells.length === 0;
  $("cells").replaceChildren(...cells.map((cell, i) => el("li", {}, el("button", {
    type: "button", class: "cell-row", disabled: !polygons[i],
    onclick: () => view.map.fitBounds(polygons[i].getBounds().pad(0.1), { animate: false }),
  }, el("span", { class: "share" }, percent(cell.probability)),
  el("span", {}, placeLabel(cell.place, cell.lat, cell.lon))))));
}

function showNeighbours(answer, pins) {
  const neighbours = answer.neighbours || [];
  $("neighbours-title").textContent = neighbours.length ? "Most similar photos" : "No similar photos found";
  $("neighbours").replaceChildren(...neighbours.map((n, i) => {
    const image = el("img", { alt: "", class: "thumb" });
    thumbnail(n.photo_url).then((url) => url && (image.src = url));
    const distance = n.km === null || n.km === undefined ? "" : ` · ${km(n.km)} away`;
    return el("li", {}, el("button", { type: "button", class: "neighbour", onclick: () => {
      view.map.setView(pins[i].getLatLng(), Math.max(view.map.getZoom(), 6), { animate: false });
      pins[i].openPopup();
    } }, image, el("span", { class: "who" },
      el("strong", {}, placeLabel(n.place, n.lat, n.lon)),
      el("span", {}, `similarity ${n.similarity.toFixed(2)}${distance}`))));
  }));
}

function show(answer) {
  for (const url of thumbnails.values()) url.then((u) => u && URL.revokeObjectURL(u));
  thumbnails = new Map();
  const words = showVerdict(answer);
  const where = placeLabel(answer.place, answer.lat, answer.lon);
  $("place").textContent = where;
  $("place").title = country(answer.place);
  showFacts(answer);
  const caption = words ? `${where}: ${words.text.toLowerCase()}` : where;
  const { pins, cells } = showAnswer(view, answer, thumbnail, caption);
  showCells(answer, cells);
  showNeighbours(answer, pins);
  $("answer").hidden = false;
  document.body.dataset.answered = "true";
}

function listen() {
  $("key").value = localStorage.getItem(KEY_STORAGE) || "";
  if (!$("key").value) $("settings").open = settingsOpenedForKey = true;
  $("key").addEventListener("input", () => localStorage.setItem(KEY_STORAGE, $("key").value.trim()));
  $("photo").addEventListener("change", () => choose($("photo").files[0]));
  $("again").addEventListener("click", locate);
  // a photo dropped anywhere on the page is taken, and never opened in place of the page
  const drop = $("drop");
  window.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  window.addEventListener("dragleave", (event) => event.relatedTarget || drop.classList.remove("over"));
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    choose(event.dataTransfer && event.dataTransfer.files[0]);
  });
}

listen();
