// The world map: country outlines served by this server (no network needed), OpenStreetMap tiles added
// only when the browser reaches them, and what a view draws on top: an answer (cells, uncertainty, answer,
// photo pins), or photos around a chosen centre.
import { el, km, percent, placeLabel } from "./words.js";

const TILES = "https://tile.openstreetmap.org/{z}/{x}/{y}.png";
const PROBE = "https://tile.openstreetmap.org/0/0/0.png";
const ATTRIBUTION = '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors';
const ANSWER = "#d62839";
const CELL = "#5b3cc4";
const CENTRE = "#1c6e8c";

export function createMap(element) {
  const map = L.map(element, { worldCopyJump: true, minZoom: 1, zoomSnap: 0.5 }).setView([25, 10], 2);
  map.attributionControl.setPrefix(false);
  const outlines = L.geoJSON(null, {
    interactive: false,
    style: { color: "#8a9aa8", weight: 0.7, fillColor: "#f4f1ea", fillOpacity: 1 },
  }).addTo(map);
  fetch("basemap/countries.geojson")
    .then((response) => (response.ok ? response.json() : null))
    .then((data) => data && outlines.addData(data))
    .catch(() => {});
  whenReachable(PROBE, () => {
    L.tileLayer(TILES, { maxZoom: 19, attribution: ATTRIBUTION }).addTo(map);
    outlines.setStyle({ fillOpacity: 0, opacity: 0.25 });
    element.classList.add("online");
  });
  legend().addTo(map);
  map.createPane("answer").style.zIndex = 650; // above the photo pins, below popups
  return { map, layers: L.layerGroup().addTo(map) };
}

/** Call `then` once an image loads from `url`; say nothing when it cannot (offline, blocked). */
function whenReachable(url, then) {
  const probe = new Image();
  probe.referrerPolicy = "no-referrer";
  probe.onload = then;
  probe.src = url;
}

function legend() {
  const control = L.control({ position: "bottomleft" });
  control.onAdd = () => el("div", { class: "legend" },
    el("span", {}, el("i", { class: "key-answer" }), "answer"),
    el("span", {}, el("i", { class: "key-circle" }), "likely within"),
    el("span", {}, el("i", { class: "key-cell" }), "candidate cells"),
    el("span", {}, el("i", { class: "key-pin" }), "similar photos"));
  return control;
}

/** Longitudes of a polygon kept within 180 degrees of its first corner, so a cell across the
 *  antimeridian is drawn as the small cell it is, not as a band around the world. */
function unwrapped(corners) {
  const first = corners[0][1];
  return corners.map(([lat, lon]) => [lat, lon + 360 * Math.round((first - lon) / 360)]);
}

/** One polygon per candidate that has corners (null for one that has none), shaded by probability. */
function drawCells(layers, candidates) {
  const top = Math.max(...candidates.map((c) => c.probability), 1e-9);
  return candidates.map((cell) => {
    if (!Array.isArray(cell.corners) || cell.corners.length < 3) return null;
    const share = cell.probability / top;
    return L.polygon(unwrapped(cell.corners), {
      color: CELL, weight: 1.5, opacity: 0.3 + 0.5 * share, fillColor: CELL, fillOpacity: 0.04 + 0.22 * share,
      className: "cell",
    }).bindTooltip(`${percent(cell.probability)} · ${placeLabel(cell.place, cell.lat, cell.lon)}`, { sticky: true })
      .addTo(layers);
  });
}

/** A pin showing a gallery photo, with a popup of it; `thumbnail(photo)` gives its picture's URL (a promise),
 *  `away` says what its distance is from. */
export function photoPin(neighbour, thumbnail, away = "from the answer") {
  const image = el("img", { alt: "", class: "pin-photo" });
  const icon = L.divIcon({ className: "pin", html: el("div", { class: "pin-frame" }, image),
    iconSize: [46, 46], iconAnchor: [23, 53], popupAnchor: [0, -50], tooltipAnchor: [16, -30] });
  const popupImage = el("img", { alt: "", class: "popup-photo" });
  thumbnail(neighbour).then((url) => {
    if (url) image.src = popupImage.src = url;
  });
  const label = placeLabel(neighbour.place, neighbour.lat, neighbour.lon);
  const similarity = typeof neighbour.similarity === "number" ? `similarity ${neighbour.similarity.toFixed(2)}` : "";
  const distance = neighbour.km === null || neighbour.km === undefined ? "" : ` · ${km(neighbour.km)} ${away}`;
  const popup = el("div", { class: "popup" }, popupImage, el("strong", {}, label),
    similarity || distance ? el("span", {}, similarity, distance) : null, el("span", {}, neighbour.source || ""));
  return L.marker([neighbour.lat, neighbour.lon], { icon, riseOnHover: true, title: label })
    .bindPopup(popup, { maxWidth: 260, minWidth: 200 });
}

/** The chosen centre and its radius, drawn on `layers`; returns the circle. */
export function drawCentre(layers, lat, lon, radiusKm) {
  L.circleMarker([lat, lon], { radius: 6, color: "#fff", weight: 2, fillColor: CENTRE, fillOpacity: 1,
    className: "centre-marker", interactive: false }).addTo(layers);
  return L.circle([lat, lon], { radius: radiusKm * 1000, color: CENTRE, weight: 2, dashArray: "6 5",
    fillColor: CENTRE, fillOpacity: 0.06, interactive: false, className: "centre-circle" }).addTo(layers);
}

/** Pins for `photos` (and the centre's circle, if any) on `layers`, the view fitted to them all. */
export function showPhotos(view, layers, photos, thumbnail, away, circle = null) {
  const pins = photos.map((photo) => photoPin(photo, thumbnail, away).addTo(layers));
  const bounds = circle ? circle.getBounds() : L.latLngBounds([]);
  pins.forEach((pin) => bounds.extend(pin.getLatLng()));
  if (bounds.isValid()) view.map.fitBounds(bounds.pad(0.15), { maxZoom: fittest(view.map), animate: false });
  return pins;
}

/** With country outlines only, closer than a country's scale would show nothing but one colour. */
const fittest = (map) => (map.getContainer().classList.contains("online") ? 12 : 5);

/** Draw `answer` and fit the view to it; returns the neighbours' markers and the candidates' polygons,
 *  each in the answer's order. */
export function showAnswer(view, answer, thumbnail, caption) {
  const { map, layers } = view;
  layers.clearLayers();
  const bounds = L.latLngBounds([[answer.lat, answer.lon]]);
  const cells = drawCells(layers, answer.candidates || []);
  if (typeof answer.uncertainty_km === "number" && answer.uncertainty_km > 0) {
    const circle = L.circle([answer.lat, answer.lon], { radius: answer.uncertainty_km * 1000, color: ANSWER,
      weight: 2, dashArray: "6 5", fillColor: ANSWER, fillOpacity: 0.08, interactive: false }).addTo(layers);
    if (answer.uncertainty_km <= 3000) bounds.extend(circle.getBounds());
  }
  const pins = (answer.neighbours || []).map((n) => photoPin(n, thumbnail).addTo(layers));
  pins.forEach((pin) => bounds.extend(pin.getLatLng()));
  L.circleMarker([answer.lat, answer.lon], { radius: 9, color: "#fff", weight: 3, fillColor: ANSWER,
    fillOpacity: 1, className: "answer-marker", pane: "answer" })
    .bindTooltip(caption, { direction: "top", offset: [0, -8] }).addTo(layers);
  map.fitBounds(bounds.pad(0.15), { maxZoom: fittest(map), animate: false });
  return { pins, cells };
}
