// The similar-photos view: a photo goes to POST /v1/similar, optionally only within a radius of a centre
// (clicked on the map or typed); the located photos come back as a list and as pins on the map.
import { $, call, failure, Pictures, preview, queryForm, say } from "./api.js";
import { photoRows } from "./lists.js";
import { drawCentre, showPhotos } from "./map.js";

export function createSimilar(view, layers) {
  const pictures = new Pictures();
  let photo = null;
  let circle = null;

  /** The centre and radius typed or clicked, or null when none is set (or not all three are). */
  function centre() {
    const [lat, lon, km] = ["similar-lat", "similar-lon", "similar-km"].map((id) => $(id).valueAsNumber);
    return [lat, lon, km].every(Number.isFinite) && km > 0 ? { lat, lon, km } : null;
  }

  function drawRegion() {
    layers.clearLayers();
    const chosen = centre();
    circle = chosen ? drawCentre(layers, chosen.lat, chosen.lon, chosen.km) : null;
  }

  async function search() {
    if (!photo) return;
    const form = queryForm(photo);
    const chosen = centre();
    if (chosen) {
      for (const [name, value] of [["lat", chosen.lat], ["lon", chosen.lon], ["radius_km", chosen.km]]) {
        form.append(name, String(value));
      }
    }
    say($("similar-status"), "Searching…", "busy");
    $("similar-search").disabled = true;
    try {
      show(await call("v1/similar", { method: "POST", form }), chosen);
      say($("similar-status"), "");
    } catch (error) {
      say($("similar-status"), failure(error), "error");
      if (error.status === 401) $("settings").open = true;
    } finally {
      $("similar-search").disabled = false;
    }
  }

  function show(answer, chosen) {
    pictures.clear();
    drawRegion();
    const found = answer.neighbours || [];
    const where = chosen ? ` within ${chosen.km.toLocaleString("en")} km of the centre` : "";
    $("similar-title").textContent = `${found.length ? `${found.length} similar photos` : "No similar photos"}${where}`;
    $("similar-title").hidden = false;
    const thumbnail = (photo) => pictures.of(photo);
    const pins = showPhotos(view, layers, found, thumbnail, "from the centre", circle);
    $("similar-results").replaceChildren(...photoRows(found, thumbnail, pins, view.map, "from the centre"));
    document.body.dataset.similar = "true";
  }

  function take(file) {
    if (!file) return;
    photo = file;
    preview($("similar-drop"), $("similar-preview"), file);
    $("similar-search").disabled = false;
    search();
  }

  function pick(latlng) {
    $("similar-lat").value = latlng.lat.toFixed(4);
    $("similar-lon").value = latlng.lng.toFixed(4);
    drawRegion();
  }

  $("similar-photo").addEventListener("change", () => take($("similar-photo").files[0]));
  $("similar-search").addEventListener("click", search);
  for (const id of ["similar-lat", "similar-lon", "similar-km"]) $(id).addEventListener("input", drawRegion);
  $("similar-clear").addEventListener("click", () => {
    $("similar-lat").value = $("similar-lon").value = "";
    drawRegion();
  });
  return { layers, take, pick };
}
