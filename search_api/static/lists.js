// Gallery photos as a list beside the map: thumbnail, place, similarity and distance; a click shows the
// photo's pin and its popup.
import { el, km, placeLabel } from "./words.js";

function facts(photo, away) {
  const parts = [];
  if (typeof photo.similarity === "number") parts.push(`similarity ${photo.similarity.toFixed(2)}`);
  if (photo.km !== null && photo.km !== undefined) parts.push(`${km(photo.km)} ${away}`);
  if (!parts.length && photo.source) parts.push(photo.source);
  return parts.join(" · ");
}

/** One list item per photo, in order; `pins` are their markers on `map`, in the same order. */
export function photoRows(photos, thumbnail, pins, map, away = "away") {
  return photos.map((photo, i) => {
    const image = el("img", { alt: "", class: "thumb" });
    thumbnail(photo).then((url) => url && (image.src = url));
    return el("li", {}, el("button", { type: "button", class: "neighbour", onclick: () => {
      map.setView(pins[i].getLatLng(), Math.max(map.getZoom(), 6), { animate: false });
      pins[i].openPopup();
    } }, image, el("span", { class: "who" },
      el("strong", {}, placeLabel(photo.place, photo.lat, photo.lon)),
      el("span", {}, facts(photo, away)))));
  });
}
