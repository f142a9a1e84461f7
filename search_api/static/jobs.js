// Admin work that runs as jobs: photos uploaded in batches, and the progress bar fed by polling
// GET /v1/jobs/{id} until every job of the work has ended.
import { $, call } from "./api.js";

const POLL_MS = 400;
const PER_REQUEST = 50; // photos per upload request, well under the server's GEOLOC_MAX_BATCH_PHOTOS default
const ENDED = new Set(["succeeded", "failed", "cancelled"]);
const VERBS = { upload: "indexed", import: "indexed", prune: "examined", reembed: "re-embedded" };

const sum = (jobs, field) => jobs.reduce((total, job) => total + job[field], 0);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** What the jobs have done so far, in words. */
function describe(jobs) {
  const handled = sum(jobs, "done") + sum(jobs, "skipped") + sum(jobs, "failed");
  const parts = [`${sum(jobs, "done")} ${VERBS[jobs[0].kind] || "done"}`];
  if (jobs[0].kind === "prune") parts.push(`${sum(jobs, "removed")} removed`);
  const reasons = {};
  for (const job of jobs) {
    for (const [reason, n] of Object.entries(job.reasons)) reasons[reason] = (reasons[reason] || 0) + n;
  }
  const why = Object.entries(reasons).map(([reason, n]) => `${reason.replaceAll("_", " ")}: ${n}`).join(", ");
  if (sum(jobs, "skipped")) parts.push(`${sum(jobs, "skipped")} skipped${why ? ` (${why})` : ""}`);
  if (sum(jobs, "failed")) parts.push(`${sum(jobs, "failed")} failed`);
  const states = [...new Set(jobs.map((job) => job.state))].join(", ");
  const errors = jobs.map((job) => job.error).filter(Boolean);
  const error = errors.length ? ` · ${errors[0]}` : "";
  return `${handled} of ${sum(jobs, "total")} photos: ${parts.join(", ")} · ${states}${error}`;
}

/** Follow jobs on the progress bar until they have all ended; their final records. */
export async function follow(title, ids) {
  $("job").hidden = false;
  $("job-title").textContent = title;
  $("job").dataset.state = "running";
  $("job-status").textContent = "Starting…";
  const bar = $("job-progress");
  bar.value = 0;
  for (;;) {
    const jobs = await Promise.all(ids.map((id) => call(`v1/jobs/${encodeURIComponent(id)}`, { admin: true })));
    const total = sum(jobs, "total");
    const handled = sum(jobs, "done") + sum(jobs, "skipped") + sum(jobs, "failed");
    const ended = jobs.every((job) => ENDED.has(job.state));
    bar.value = ended ? 100 : total ? Math.floor((100 * handled) / total) : 0;
    $("job-status").textContent = describe(jobs);
    const succeeded = jobs.every((job) => job.state === "succeeded");
    $("job").dataset.state = ended ? (succeeded ? "succeeded" : "failed") : "running";
    if (ended) return jobs;
    await sleep(POLL_MS);
  }
}

/** Upload `files` into collection `name`, a request per PER_REQUEST photos; the jobs' ids. */
export async function upload(name, files) {
  const ids = [];
  for (let start = 0; start < files.length; start += PER_REQUEST) {
    const form = new FormData();
    for (const file of files.slice(start, start + PER_REQUEST)) form.append("photos", file);
    const accepted = await call(`v1/collections/${encodeURIComponent(name)}/images`,
      { method: "POST", form, admin: true });
    ids.push(accepted.job.id);
  }
  return ids;
}
