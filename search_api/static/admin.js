// The admin view, for an admin key typed here (kept in this tab's session storage): the collections with
// their photo counts, a new collection, photos uploaded with a live progress bar, a collection embedded
// again or deleted (after a confirmation), and a region pruned after a preview (prune.js).
import { $, call, confirmed, failure, keys, say } from "./api.js";
import { follow, upload } from "./jobs.js";
import { createPrune } from "./prune.js";
import { el } from "./words.js";

const path = (name) => `v1/collections/${encodeURIComponent(name)}`;

export function createAdmin(view, layers) {
  const status = (text, tone) => say($("admin-status"), text, tone);
  let busy = false;

  /** Run one piece of admin work at a time, its failure said in the view. */
  async function work(action) {
    if (busy) return;
    busy = true;
    status("");
    try {
      await action();
    } catch (error) {
      status(failure(error), "error");
    } finally {
      busy = false;
    }
  }

  async function refresh() {
    if (!keys.admin()) {
      status("Type an admin key to manage the collections.");
      return;
    }
    const { collections } = await call("v1/collections", { admin: true });
    $("collection-rows").replaceChildren(...collections.map((c) => el("tr", { "data-name": c.name },
      el("th", { scope: "row", title: c.description || null }, c.name),
      el("td", { class: "count" }, c.photos.toLocaleString("en")),
      el("td", { class: "row-actions" },
        el("button", { type: "button", "aria-label": `Re-embed ${c.name}`, onclick: () => reembed(c.name) },
          "Re-embed"),
        el("button", { type: "button", class: "danger", "aria-label": `Delete ${c.name}`, onclick: () => remove(c) },
          "Delete")))));
    for (const select of document.querySelectorAll(".collection-choice")) {
      const chosen = select.value;
      select.replaceChildren(...collections.map((c) => el("option", { value: c.name }, c.name)));
      if (collections.some((c) => c.name === chosen)) select.value = chosen;
    }
    if (!collections.length) status("No collections yet: create one below.");
    document.body.dataset.collections = String(collections.length);
  }

  const remove = (collection) => work(async () => {
    const photos = `${collection.photos.toLocaleString("en")} photo${collection.photos === 1 ? "" : "s"}`;
    if (!await confirmed(`Delete collection “${collection.name}” and its ${photos}? This cannot be undone.`,
      "Delete")) return;
    const { deleted } = await call(path(collection.name), { method: "DELETE", admin: true });
    status(`Deleted “${collection.name}”: ${deleted} photos removed.`);
    await refresh();
  });

  const reembed = (name) => work(async () => {
    const accepted = await call(`${path(name)}/reembed`, { method: "POST", admin: true });
    await follow(`Re-embedding “${name}”`, [accepted.job.id]);
    await refresh();
  });

  $("create").addEventListener("submit", (event) => {
    event.preventDefault();
    work(async () => {
      const name = $("create-name").value.trim();
      await call("v1/collections", { method: "POST", json: { name }, admin: true });
      $("create-name").value = "";
      await refresh();
      $("upload-collection").value = name;
    });
  });

  $("upload").addEventListener("submit", (event) => {
    event.preventDefault();
    work(async () => {
      const name = $("upload-collection").value;
      const files = [...$("upload-photos").files];
      if (!name || !files.length) return;
      const ids = await upload(name, files);
      $("upload-photos").value = "";
      await follow(`Adding ${files.length} photo${files.length === 1 ? "" : "s"} to “${name}”`, ids);
      await refresh();
    });
  });

  $("admin-key").value = keys.admin();
  $("admin-key").addEventListener("input", () => keys.keepAdmin($("admin-key").value));
  $("admin-key").addEventListener("change", () => work(refresh));
  const prune = createPrune(view, layers, work, refresh);
  return { layers, pick: prune.pick, opened: () => work(refresh) };
}
