// The Batch panel: upload a zip of photos as a batch prediction job (POST /predictions),
// follow its progress (photos done of the total), cancel it, preview its first rows and
// download the CSV. It uses the page's API helper (app.js: window.hotdog).
"use strict";

(() => {
  const POLL_MS = 1000;
  const PREVIEW_ROWS = 10;
  const KEY_STORE = "hotdog.apiKey"; // app.js keeps the API key there
  const $ = (id) => document.getElementById(id);
  const state = { job: null, timer: null };

  function el(tag, attrs = {}, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const short = (id) => (id || "").slice(0, 8);

  // The models to choose from: app.js announces them each time it loads them.
  function fillModels(models) {
    const select = $("batch-model");
    const chosen = select.value;
    select.replaceChildren(el("option", { value: "" }, "the active model"));
    for (const m of models) {
      select.append(el("option", { value: m.id },
        `job ${short(m.id)}: ${m.classes.join(" / ")}${m.active ? " (active)" : ""}`));
    }
    if (chosen && models.some((m) => m.id === chosen)) select.value = chosen;
  }

  async function submit(ev) {
    ev.preventDefault();
    const { api, showError, announce } = window.hotdog;
    const file = $("batch-file").files[0];
    if (!file) return;
    showError("batch-error", null);
    const form = new FormData();
    form.append("file", file, file.name);
    if ($("batch-model").value) form.append("model", $("batch-model").value);
    if ($("batch-coverage").checked) form.append("coverage", "true");
    const bar = $("batch-upload");
    const button = $("batch-submit");
    bar.value = 0;
    bar.hidden = false;
    button.disabled = true;
    button.textContent = "Uploading…";
    try {
      const job = await api("POST", "predictions", {
        form,
        onProgress: (f) => {
          bar.value = f;
          if (f >= 1) button.textContent = "Unpacking…";
        },
      });
      announce(`Batch job ${short(job.id)} started: ${job.photos} photos.`);
      show(job);
    } catch (err) {
      showError("batch-error", err);
    } finally {
      bar.hidden = true;
      button.disabled = false;
      button.textContent = "Classify them";
    }
  }

  function show(job) {
    state.job = job;
    $("batch-job").hidden = false;
    $("batch-job").dataset.job = job.id;
    $("batch-job").dataset.status = job.status;
    const badge = $("batch-status");
    badge.className = `badge status-${job.status}`;
    badge.textContent = job.status;
    $("batch-progress").value = job.fraction || 0;
    let text = `job ${short(job.id)}: ${job.done} of ${job.photos} photos`;
    if (job.ignored) text += ` (${job.ignored} other files ignored)`;
    if (job.waiting_for) text += `; waiting for ${job.waiting_for}`;
    if (job.error) text += `: ${job.error}`;
    $("batch-count").textContent = text;
    const active = job.status === "queued" || job.status === "running";
    $("batch-cancel").hidden = !active || job.cancel_requested;
    const done = job.status === "succeeded";
    $("batch-download").hidden = !done;
    $("batch-download").href = `predictions/${job.id}/results?format=csv`;
    $("batch-download").setAttribute("download", `predictions-${short(job.id)}.csv`);
    const s = job.summary;
    $("batch-summary").textContent = s ? `${s.predicted} classified (`
      + Object.entries(s.labels).map(([k, v]) => `${k} ${v}`).join(", ")
      + `), ${s.failed} did not decode; ${s.seconds} s on the worker` : "";
    clearTimeout(state.timer);
    if (active) state.timer = setTimeout(poll, POLL_MS);
    else if (done) preview(job);
    else $("batch-preview").replaceChildren();
  }

  async function poll() {
    const { api, showError } = window.hotdog;
    if (!state.job) return;
    try {
      show(await api("GET", `predictions/${state.job.id}`));
    } catch (err) {
      showError("batch-error", err);
      state.timer = setTimeout(poll, POLL_MS * 5);
    }
  }

  async function cancel() {
    const { api, showError } = window.hotdog;
    try {
      show(await api("POST", `predictions/${state.job.id}/cancel`));
    } catch (err) {
      showError("batch-error", err);
    }
  }

  // The first rows, as a table: filename, label, each class's probability, or the error.
  async function preview(job) {
    const { showError } = window.hotdog;
    let text;
    try {
      text = await fetchText(`predictions/${job.id}/results?format=jsonl&limit=${PREVIEW_ROWS}`);
    } catch (err) {
      showError("batch-error", err);
      return;
    }
    const rows = text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
    const table = $("batch-preview");
    const classes = rows.find((r) => r.probabilities);
    const names = classes ? Object.keys(classes.probabilities) : [];
    const head = el("tr");
    const extra = job.coverage ? ["in the crop"] : [];
    for (const h of ["photo", "label", ...names.map((c) => `p(${c})`), ...extra]) {
      head.append(el("th", { scope: "col" }, h));
    }
    const body = el("tbody");
    for (const r of rows) {
      const tr = el("tr", { "data-file": r.filename });
      tr.append(el("td", {}, r.filename));
      if (r.error) {
        tr.append(el("td", { class: "job-error", colspan: String(1 + names.length + extra.length) },
          r.error));
      } else {
        tr.append(el("td", { class: "label" }, r.label));
        for (const c of names) tr.append(el("td", {}, r.probabilities[c].toFixed(3)));
        // The share of the evidence for the label that the centre crop keeps.
        if (job.coverage) {
          const c = r.crop_coverage;
          tr.append(el("td", { class: "coverage" }, c == null ? "–" : `${Math.round(c * 100)}%`));
        }
      }
      body.append(tr);
    }
    const thead = el("thead");
    thead.append(head);
    const caption = el("caption", {}, job.photos > rows.length
      ? `The first ${rows.length} of ${job.photos} photos` : "Every photo");
    table.replaceChildren(caption, thead, body);
  }

  // A GET with the API key (when the page has one), as text; errors in the API's words.
  async function fetchText(path) {
    const { ApiError } = window.hotdog;
    const key = sessionStorage.getItem(KEY_STORE);
    const r = await fetch(path, { headers: key ? { "X-API-Key": key } : {} });
    const text = await r.text();
    if (!r.ok) {
      let detail = text;
      try {
        detail = JSON.parse(text).detail;
      } catch (_) { /* not JSON */ }
      throw new ApiError(`${detail} (HTTP ${r.status})`, r.status);
    }
    return text;
  }

  // With an API key the link cannot carry it: fetch the CSV with the key, save it from memory.
  async function download(ev) {
    if (!sessionStorage.getItem(KEY_STORE)) return; // the link itself downloads it
    ev.preventDefault();
    const { showError } = window.hotdog;
    const link = ev.currentTarget;
    try {
      const csv = await fetchText(link.href);
      const url = URL.createObjectURL(new Blob([csv], { type: "text/csv" }));
      const a = el("a", { href: url, download: link.getAttribute("download") });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) {
      showError("batch-error", err);
    }
  }

  function start() {
    $("batch-form").addEventListener("submit", submit);
    $("batch-cancel").addEventListener("click", cancel);
    $("batch-download").addEventListener("click", download);
    document.addEventListener("hotdog:models", (ev) => fillModels(ev.detail));
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
