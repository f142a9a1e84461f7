// Explain an answer: POST /v1/explain scores a grid of the photo's regions by how much each drives the
// answer, and the grid is laid over the photo's preview as a heat map (a canvas), with its legend.
import { $, call, failure, say } from "./api.js";

// the legend's ramp (app.css .ramp) uses the same stops: cool for little, hot for much
const STOPS = [[0, [49, 54, 149]], [0.5, [254, 224, 144]], [1, [215, 48, 39]]];
const TARGETS = { retrieval: "what the similar-photo search looks at", cell: "what the cell classifier looks at" };

function colour(value) {
  const v = Math.min(1, Math.max(0, Number(value) || 0));
  const upper = STOPS.findIndex(([at]) => at >= v);
  if (upper <= 0) return STOPS[0][1];
  const [[a, from], [b, to]] = [STOPS[upper - 1], STOPS[upper]];
  const t = (v - a) / (b - a);
  return from.map((c, i) => Math.round(c + (to[i] - c) * t));
}

/** The grid as an image of one pixel per region, then scaled smoothly over the photo's preview. */
function draw(canvas, image, grid) {
  const { rows, cols, importance } = grid;
  const small = document.createElement("canvas");
  small.width = cols;
  small.height = rows;
  const pixels = small.getContext("2d").createImageData(cols, rows);
  importance.forEach((row, r) => row.forEach((value, c) => {
    const v = Math.min(1, Math.max(0, Number(value) || 0));
    pixels.data.set([...colour(v), Math.round(255 * (0.12 + 0.6 * v))], 4 * (r * cols + c));
  }));
  small.getContext("2d").putImageData(pixels, 0, 0);
  const scale = window.devicePixelRatio || 1;
  Object.assign(canvas.style, { left: `${image.offsetLeft}px`, top: `${image.offsetTop}px`,
    width: `${image.offsetWidth}px`, height: `${image.offsetHeight}px` });
  canvas.width = Math.max(1, Math.round(image.offsetWidth * scale));
  canvas.height = Math.max(1, Math.round(image.offsetHeight * scale));
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = true;
  context.imageSmoothingQuality = "high";
  context.drawImage(small, 0, 0, canvas.width, canvas.height);
  canvas.hidden = false;
}

function checked(grid) {
  const { rows, cols, importance } = grid || {};
  const fits = Array.isArray(importance) && importance.length === rows
    && importance.every((row) => Array.isArray(row) && row.length === cols);
  if (!fits || !rows || !cols) throw new Error("the server's explanation is not a grid of rows × cols values");
  return grid;
}

export function createExplain() {
  const button = $("explain");
  let photo = null;
  let grid = null; // the explanation of `photo`, once asked for

  function hide() {
    $("heat").hidden = $("heat-legend").hidden = true;
    button.textContent = "Explain";
    button.setAttribute("aria-pressed", "false");
  }

  function showGrid() {
    draw($("heat"), $("preview"), grid);
    const flat = grid.importance.every((row) => row.every((value) => !(Number(value) > 0)));
    $("heat-target").textContent = flat ? "none (covering any part leaves the answer as it is)"
      : TARGETS[grid.target] || grid.target || "";
    $("heat-legend").hidden = false;
    button.textContent = "Hide explanation";
    button.setAttribute("aria-pressed", "true");
    document.body.dataset.explained = "true";
  }

  async function explain() {
    if (!$("heat").hidden) return hide();
    if (grid) return showGrid();
    const form = new FormData();
    form.append("photo", photo);
    const asked = photo;
    say($("status"), "Explaining…", "busy");
    button.disabled = true;
    try {
      const answer = checked(await call("v1/explain", { method: "POST", form }));
      if (asked !== photo) return;
      grid = answer;
      say($("status"), "");
      showGrid();
    } catch (error) {
      const missing = error.status === 404 || error.status === 405;
      say($("status"), missing ? "This server cannot explain answers (it has no POST /v1/explain)." : failure(error),
        "error");
    } finally {
      button.disabled = !photo;
    }
  }

  button.addEventListener("click", explain);
  $("preview").addEventListener("load", () => grid && !$("heat").hidden && showGrid());
  window.addEventListener("resize", () => grid && !$("heat").hidden && showGrid());
  return {
    take(file) {
      photo = file;
      grid = null;
      hide();
      button.disabled = false;
    },
  };
}
