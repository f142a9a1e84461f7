// How an answer reads: place names, distances, probabilities and the confidence in words.
// Every field beyond lat/lon may be missing (older servers, answers without a model bundle).

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

export const coordinates = (lat, lon) => `${lat.toFixed(4)}, ${lon.toFixed(4)}`;

export function placeLabel(place, lat, lon) {
  if (place) {
    const label = place.label || [place.name, place.region, place.country].filter(Boolean).join(", ");
    if (label) return label;
  }
  return coordinates(lat, lon);
}

export function country(place) {
  return place && (place.country || place.country_code) || "";
}

export function km(value) {
  if (value === null || value === undefined) return "";
  if (value < 1) return `${Math.round(value * 1000)} m`;
  return value < 100 ? `${value.toFixed(1)} km` : `${Math.round(value).toLocaleString("en")} km`;
}

export const percent = (p) => (p >= 0.995 ? "99%+" : p < 0.005 ? "<1%" : `${Math.round(p * 100)}%`);

const RADII = ["1", "25", "200", "750", "2500"];
const LEVELS = [
  { within: 25, text: "Likely within 25 km", tone: "city" },
  { within: 200, text: "Likely within 200 km", tone: "region" },
  { within: 2500, text: "Only the continent is likely", tone: "continent" },
];
const NOT_CONFIDENT = { text: "Not confident", tone: "none" };
const SAME_PHOTO = { text: "This very photo is in the archive", tone: "city" };

/** The confidence in words: that the archive holds the very photo, else the smallest distance the answer
 *  likely lies within, from the calibrated probabilities when the server sends them, else from
 *  uncertainty_km, else from the 25 km confidence. */
export function verdict(answer) {
  if (answer.same_photo) return SAME_PHOTO;
  if (answer.abstained) return NOT_CONFIDENT;
  let within = null;
  const p = answer.probabilities;
  if (p && RADII.some((r) => typeof p[r] === "number")) {
    const sure = RADII.find((r) => p[r] >= 0.5);
    within = sure === undefined ? Infinity : Number(sure);
  } else if (typeof answer.uncertainty_km === "number") {
    within = answer.uncertainty_km;
  } else if (answer.uncertainty_km === null && "uncertainty_km" in answer) {
    within = Infinity;
  } else if (typeof answer.confidence === "number") {
    within = answer.confidence >= 0.5 ? 25 : Infinity;
  }
  if (within === null) return null;
  return LEVELS.find((level) => within <= level.within) || NOT_CONFIDENT;
}

/** [[radius in km, probability], ...] for the radii the answer has, smallest first. */
export function probabilities(answer) {
  const p = answer.probabilities || {};
  return RADII.filter((r) => typeof p[r] === "number").map((r) => [Number(r), p[r]]);
}
