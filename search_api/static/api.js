// What every view shares: the two keys (the search key in this browser's local storage, the admin key in
// this tab's session storage), requests that carry the right one as a Bearer token, errors a person can
// act on, and gallery photos fetched with the key.
const SEARCH_KEY = "geoloc-key";
const ADMIN_KEY = "geoloc-admin-key";

export const $ = (id) => document.getElementById(id);

export const keys = {
  search: () => localStorage.getItem(SEARCH_KEY) || "",
  admin: () => sessionStorage.getItem(ADMIN_KEY) || "",
  keepSearch: (value) => localStorage.setItem(SEARCH_KEY, value.trim()),
  keepAdmin: (value) => sessionStorage.setItem(ADMIN_KEY, value.trim()),
};

export function headers(admin = false) {
  const key = admin ? keys.admin() : keys.search();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** An API refusal, its message written for the person at the page. */
export class Refused extends Error {
  constructor(response, body, admin) {
    const message = body && body.error ? body.error.message : response.statusText || "request failed";
    const where = admin ? "Type an admin key above." : "Paste an API key under Settings.";
    super(response.status === 401 ? `${message}. ${where}` : `${message} (HTTP ${response.status})`);
    this.status = response.status;
  }
}

/** The JSON answer of `path`, or a thrown Refused; `json` is sent as the body, `form` as multipart. */
export async function call(path, { method = "GET", json, form, admin = false } = {}) {
  const sent = { method, headers: headers(admin) };
  if (json !== undefined) {
    sent.headers["Content-Type"] = "application/json";
    sent.body = JSON.stringify(json);
  } else if (form) {
    sent.body = form;
  }
  const response = await fetch(path, sent);
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Refused(response, body, admin);
  return body;
}

/** The multipart form of a query: the photo, K and the collections typed in the settings. */
export function queryForm(photo) {
  const form = new FormData();
  form.append("photo", photo);
  form.append("k", $("k").value || "10");
  const collections = $("collections").value.trim();
  if (collections) form.append("collections", collections);
  return form;
}

/** Words for any failure of `call`, including a server that cannot be reached. */
export function failure(error) {
  if (error instanceof Refused) return error.message;
  return error instanceof TypeError ? `The server could not be reached: ${error.message}` : error.message;
}

export function say(element, text, tone = "") {
  element.textContent = text;
  element.className = `status ${tone}`;
}

/** Gallery photos as object URLs, each fetched once with the key; `clear` lets them all go. */
export class Pictures {
  constructor(admin = false) {
    this.admin = admin;
    this.urls = new Map();
  }

  get(url) {
    if (!url) return Promise.resolve(null);
    if (!this.urls.has(url)) {
      this.urls.set(url, fetch(url, { headers: headers(this.admin) })
        .then((response) => (response.ok ? response.blob() : null))
        .then((blob) => (blob ? URL.createObjectURL(blob) : null))
        .catch(() => null));
    }
    return this.urls.get(url);
  }

  /** A gallery photo's picture: its small thumbnail where the server offers one, else the photo itself. */
  async of(photo) {
    return (photo.thumbnail && await this.get(photo.thumbnail)) || this.get(photo.photo_url);
  }

  clear() {
    for (const url of this.urls.values()) url.then((u) => u && URL.revokeObjectURL(u));
    this.urls = new Map();
  }
}

/** Show a photo file in a drop zone (its preview image) and hand it on. */
export function preview(zone, image, file) {
  if (image.src) URL.revokeObjectURL(image.src);
  image.src = URL.createObjectURL(file);
  image.hidden = false;
  zone.classList.add("has-photo");
}

/** Ask in the page's dialog; resolves true only when the person confirms with the `ok` button. */
export function confirmed(text, ok) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = ok;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}
