// The page: three views over one map. Locate (here): a photo dropped or picked goes to POST /v1/locate and
// the answer is shown on the map and beside it. Similar photos (similar.js) and Admin (admin.js) have
// their own files; the search key lives in this browser's local storage (api.js).
import { $, call, failure, keys, Pictures, preview, queryForm, say } from "./api.js";
import { createAdmin } from "./admin.js";
import { createExplain } from "./explain.js";
import { photoRows } from "./lists.js";
import { createMap, showAnswer } from "./map.js";
import { createSimilar } from "./similar.js";
import { coordinates, country, el, km, percent, placeLabel, probabilities, verdict } from "./words.js";

const view = createMap($("map"));
const pictures = new Pictures();
const explain = createExplain();
let photo = null;
let settingsOpenedForKey = false; // opened because no key was stored: closed again once an answer comes

async function locate() {
  if (!photo) return;
  const form = queryForm(photo);
  say($("status"), "Locating…", "busy");
  $("again").disabled = true;
  try {
    const answer = await call("v1/locate", { method: "POST", form });
    say($("status"), "");
    show(answer);
    if (settingsOpenedForKey) $("settings").open = settingsOpenedForKey = false;
  } catch (error) {
    say($("status"), failure(error), "error");
    if (error.status === 401) $("settings").open = true;
  } finally {
    $("again").disabled = false;
  }
}

function choose(file) {
  if (!file) return;
  photo = file;
  preview($("drop"), $("preview"), file);
  explain.take(file);
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
  const same = answer.same_photo;
  if (same) facts.unshift(`${same.collection}: ${same.source}`);
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

function show(answer) {
  pictures.clear();
  const words = showVerdict(answer);
  const where = placeLabel(answer.place, answer.lat, answer.lon);
  $("place").textContent = where;
  $("place").title = country(answer.place);
  showFacts(answer);
  const caption = words ? `${where}: ${words.text.toLowerCase()}` : where;
  const { pins, cells } = showAnswer(view, answer, (photo) => pictures.of(photo), caption);
  showCells(answer, cells);
  const neighbours = answer.neighbours || [];
  $("neighbours-title").textContent = neighbours.length ? "Most similar photos" : "No similar photos found";
  $("neighbours").replaceChildren(...photoRows(neighbours, (photo) => pictures.of(photo), pins, view.map));
  $("answer").hidden = false;
  document.body.dataset.answered = "true";
}

const views = {
  locate: { layers: view.layers, take: choose },
  similar: createSimilar(view, L.layerGroup()),
  admin: createAdmin(view, L.layerGroup()),
};
let current = "locate";

/** Show one view: its panel, its layers on the map and its tab marked as chosen. */
function showView(name) {
  current = name;
  document.body.dataset.view = name;
  for (const [id, each] of Object.entries(views)) {
    const chosen = id === name;
    $(id).hidden = !chosen;
    $(`tab-${id}`).setAttribute("aria-selected", String(chosen));
    $(`tab-${id}`).tabIndex = chosen ? 0 : -1;
    if (chosen) each.layers.addTo(view.map);
    else each.layers.remove();
  }
  if (views[name].opened) views[name].opened();
}

function listenToTabs() {
  const names = Object.keys(views);
  for (const name of names) {
    const tab = $(`tab-${name}`);
    tab.addEventListener("click", () => showView(name));
    tab.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      const next = names[(names.indexOf(name) + step + names.length) % names.length];
      showView(next);
      $(`tab-${next}`).focus();
    });
  }
  view.map.on("click", (event) => views[current].pick && views[current].pick(event.latlng.wrap()));
}

function listen() {
  $("key").value = keys.search();
  if (!$("key").value) $("settings").open = settingsOpenedForKey = true;
  $("key").addEventListener("input", () => keys.keepSearch($("key").value));
  $("photo").addEventListener("change", () => choose($("photo").files[0]));
  $("again").addEventListener("click", locate);
  listenToTabs();
  // a photo dropped anywhere on the page goes to the view shown, and is never opened in place of the page
  const zone = () => document.querySelector(`#${current} .drop`);
  window.addEventListener("dragover", (event) => { event.preventDefault(); zone()?.classList.add("over"); });
  window.addEventListener("dragleave", (event) => event.relatedTarget || zone()?.classList.remove("over"));
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    zone()?.classList.remove("over");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file && views[current].take) views[current].take(file);
  });
}

listen();
