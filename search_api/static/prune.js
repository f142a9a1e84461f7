// Prune a region of a collection: a dry run first (POST .../prune with dry_run) shows how many photos
// would go, with a sample in a list and on the map; only a confirmation then removes them, by a job.
import { $, call, confirmed, Pictures } from "./api.js";
import { follow } from "./jobs.js";
import { photoRows } from "./lists.js";
import { drawCentre, showPhotos } from "./map.js";

const FIELDS = ["prune-lat", "prune-lon", "prune-km"];

export function createPrune(view, layers, work, refresh) {
  const pictures = new Pictures(true);
  let asked = null; // the collection and request the preview shown answers

  function region() {
    const [lat, lon, km] = FIELDS.map((id) => $(id).valueAsNumber);
    return [lat, lon, km].every(Number.isFinite) && km > 0 ? { lat, lon, km } : null;
  }

  /** The region on the map; any preview shown goes, as it no longer answers what the form says. */
  function redraw() {
    layers.clearLayers();
    $("prune-preview").hidden = true;
    asked = null;
    const chosen = region();
    return chosen ? drawCentre(layers, chosen.lat, chosen.lon, chosen.km) : null;
  }

  const preview = () => work(async () => {
    const name = $("prune-collection").value;
    const radius = region();
    if (!name || !radius) return;
    const circle = redraw();
    const answer = await call(`v1/collections/${encodeURIComponent(name)}/prune`,
      { method: "POST", json: { radius, dry_run: true }, admin: true });
    pictures.clear();
    const thumbnail = (photo) => pictures.of(photo);
    const pins = showPhotos(view, layers, answer.sample, thumbnail, "", circle);
    $("prune-sample").replaceChildren(...photoRows(answer.sample, thumbnail, pins, view.map));
    const shown = answer.sample.length < answer.would_remove ? ` (${answer.sample.length} shown)` : "";
    $("prune-summary").textContent = answer.would_remove
      ? `Would remove ${answer.would_remove} photo${answer.would_remove === 1 ? "" : "s"} from “${name}”${shown}. `
        + "Nothing has been removed yet."
      : `No photo of “${name}” lies within ${radius.km} km of that centre: nothing to remove.`;
    $("prune-confirm").hidden = !answer.would_remove;
    $("prune-preview").hidden = false;
    asked = { name, radius, count: answer.would_remove };
  });

  const prune = () => work(async () => {
    if (!asked) return;
    const { name, radius, count } = asked;
    if (!await confirmed(`Remove the ${count} photo${count === 1 ? "" : "s"} of “${name}” within ${radius.km} km `
      + "of the centre? This cannot be undone.", "Remove")) return;
    const accepted = await call(`v1/collections/${encodeURIComponent(name)}/prune`,
      { method: "POST", json: { radius }, admin: true });
    redraw();
    await follow(`Pruning “${name}”`, [accepted.job.id]);
    await refresh();
  });

  $("prune").addEventListener("submit", (event) => {
    event.preventDefault();
    preview();
  });
  $("prune-confirm").addEventListener("click", prune);
  for (const id of [...FIELDS, "prune-collection"]) $(id).addEventListener("input", redraw);

  function pick(latlng) {
    $("prune-lat").value = latlng.lat.toFixed(4);
    $("prune-lon").value = latlng.lng.toFixed(4);
    redraw();
  }
  return { pick };
}
