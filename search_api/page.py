"""The page at `/`: try locate from a browser (kept in Python so every install ships it)."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>geoloc: where was this photo taken?</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font: 15px/1.45 system-ui, sans-serif; max-width: 56rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  fieldset { border: 1px solid #ccc; border-radius: 6px; padding: 1rem; }
  label { display: block; margin: .4rem 0; }
  input[type=text], input[type=password], input[type=number] { width: 22rem; max-width: 100%; }
  #preview { max-height: 14rem; margin-top: .5rem; }
  .error { color: #a00; }
  table { border-collapse: collapse; margin-top: 1rem; }
  td, th { padding: .25rem .6rem; border-bottom: 1px solid #eee; text-align: left; }
  img.thumb { height: 4rem; }
</style>
</head>
<body>
<h1>Where was this photo taken?</h1>
<p>Try <code>POST /v1/locate</code>. The API is documented at <a href="/docs">/docs</a>.</p>
<form id="form">
  <fieldset>
    <label>API key <input id="key" type="password" placeholder="gk_..." autocomplete="off"></label>
    <label>Photo <input id="photo" type="file" accept="image/*" required></label>
    <img id="preview" alt="">
    <label>Neighbours (k) <input id="k" type="number" min="1" max="100" value="10"></label>
    <label>Collections <input id="collections" type="text" placeholder="all you may search"></label>
    <button type="submit">Locate</button>
  </fieldset>
</form>
<div id="result"></div>
<script>
const $ = (id) => document.getElementById(id);
$("key").value = localStorage.getItem("geoloc-key") || "";
$("photo").addEventListener("change", () => {
  const file = $("photo").files[0];
  $("preview").src = file ? URL.createObjectURL(file) : "";
});
const text = (value) => { const span = document.createElement("span"); span.textContent = value; return span.innerHTML; };
async function thumbnails(key) {
  for (const img of document.querySelectorAll("img.thumb")) {
    const response = await fetch(img.dataset.src, { headers: key ? { Authorization: "Bearer " + key } : {} });
    if (response.ok) img.src = URL.createObjectURL(await response.blob());
  }
}
$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("key").value.trim();
  localStorage.setItem("geoloc-key", key);
  const body = new FormData();
  body.append("photo", $("photo").files[0]);
  body.append("k", $("k").value);
  if ($("collections").value.trim()) body.append("collections", $("collections").value.trim());
  $("result").textContent = "Locating...";
  const response = await fetch("/v1/locate", { method: "POST", body,
    headers: key ? { Authorization: "Bearer " + key } : {} });
  const data = await response.json();
  if (!response.ok) {
    $("result").innerHTML = `<p class="error">${text(data.error ? data.error.message : response.statusText)}</p>`;
    return;
  }
  const map = `https://www.openstreetmap.org/?mlat=${data.lat}&mlon=${data.lon}#map=12/${data.lat}/${data.lon}`;
  const rows = data.neighbours.map((n) => `<tr><td><img class="thumb" alt="" data-src="${text(n.photo_url)}"></td>
    <td>${n.similarity.toFixed(3)}</td><td>${n.lat.toFixed(4)}, ${n.lon.toFixed(4)}</td>
    <td>${n.km.toFixed(1)} km</td><td>${text(n.collection)}/${text(n.source)}</td></tr>`).join("");
  $("result").innerHTML = `<h2>${data.lat.toFixed(5)}, ${data.lon.toFixed(5)}</h2>
    <p><a href="${map}" target="_blank" rel="noopener">Open on the map</a> &middot; ${text(data.method)},
    cluster of ${data.cluster_size} of ${data.neighbours.length}
    ${data.confidence === null ? "" : "&middot; confidence " + data.confidence.toFixed(2)}</p>
    <table><tr><th></th><th>similarity</th><th>location</th><th>from answer</th><th>source</th></tr>${rows}</table>`;
  thumbnails(key);
});
</script>
</body>
</html>
"""
