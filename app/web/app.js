// The hotdog web page: plain JavaScript, no build step, no external resources.
// It talks to the same HTTP API as every other client (relative URLs, so it also works
// behind a reverse proxy that serves the app under a prefix).
"use strict";

(() => {
  const KEY_STORE = "hotdog.apiKey";
  const POLL_ACTIVE_MS = 1000; // while a job is queued or running
  const POLL_IDLE_MS = 10000; // otherwise (jobs started elsewhere still show up)
  const MAX_CHART_JOBS = 2;
  const COLORS = ["#d9480f", "#1971c2", "#2b8a3e", "#862e9c"];
  const ACTIVE = new Set(["queued", "running"]);
  const FIELD_LABELS = {
    dataset_id: "dataset", init: "start from", epochs: "epochs", lr: "learning rate",
    batch_size: "batch size", image_size: "image size", head_lr_mult: "head lr multiplier",
    weight_decay: "weight decay", momentum: "momentum", seed: "seed", file: "file",
    name: "name", model: "model", queue_anyway: "queue anyway",
  };
  const STATUS_TEXT = {
    400: "bad request", 401: "API key needed", 403: "forbidden", 404: "not found",
    405: "method not allowed", 409: "not possible now", 413: "too large",
    422: "not accepted", 429: "too many jobs", 500: "server error", 503: "unavailable",
  };

  const $ = (id) => document.getElementById(id);
  const state = {
    jobs: [], // newest first, as GET /jobs returns them
    datasets: new Map(), // id -> dataset
    models: [], // GET /models, the active one first
    chartJobs: [], // ids drawn on the charts, oldest tick first
    metrics: new Map(), // job id -> {rows, epoch, status}
    rows: new Map(), // job id -> table row elements
    firstLoad: true,
    pollTimer: null,
    keyDeclined: false, // the person closed the key prompt: don't ask again until they click
    jobFormLoaded: false, // the job form's ranges and defaults came from /openapi.json
    workers: [], // GET /workers
  };

  // ---------------------------------------------------------------- errors in words

  class ApiError extends Error {
    constructor(message, status, body) {
      super(message);
      this.status = status;
      this.body = body || {}; // the API's answer: detail, and e.g. kind and comparison
    }
  }

  function describeItem(item) {
    if (item === null || typeof item !== "object") return String(item);
    const loc = Array.isArray(item.loc)
      ? item.loc.filter((p) => !["body", "query", "path", "header"].includes(p))
      : [];
    const msg = item.msg || JSON.stringify(item);
    if (!loc.length) return msg;
    const field = loc.map(String).join(".");
    const label = FIELD_LABELS[field];
    return `${label && label !== field ? `${label} (${field})` : field}: ${msg}`;
  }

  // The API's {"detail": ...}: a sentence, or FastAPI's list of invalid fields.
  function describeDetail(detail) {
    if (detail === undefined || detail === null || detail === "") return "";
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) return detail.map(describeItem).join("; ");
    if (typeof detail === "object" && detail.msg) return describeItem(detail);
    return JSON.stringify(detail);
  }

  function errorFromResponse(status, statusText, text, retryAfter) {
    let detail = "";
    let body = {};
    try {
      body = JSON.parse(text);
      detail = describeDetail(body.detail);
    } catch (_) {
      detail = "";
    }
    const what = STATUS_TEXT[status] || statusText || "error";
    let message = detail
      ? `${detail} (HTTP ${status}, ${what})`
      : `the service answered HTTP ${status} (${what}) without saying why`;
    if (retryAfter) message += `; try again in ${retryAfter} s`;
    return new ApiError(message, status, body && typeof body === "object" ? body : {});
  }

  function showError(id, err) {
    const el = $(id);
    if (!err) {
      el.hidden = true;
      el.textContent = "";
      return;
    }
    el.textContent = err instanceof ApiError ? err.message : `Unexpected problem: ${err}`;
    el.hidden = false;
  }

  // GET `path`: its answer, with the error box `errorId` cleared; on failure the box shows
  // why and the answer is undefined.
  async function fetchShown(path, errorId) {
    try {
      const out = await api("GET", path);
      showError(errorId, null);
      return out;
    } catch (err) {
      showError(errorId, err);
      return undefined;
    }
  }

  function announce(text) {
    $("status").textContent = text;
  }

  // ---------------------------------------------------------------- the API key

  let keyPrompt = null; // one prompt at a time; every request that got a 401 waits on it
  const NEEDS_KEY = () => new ApiError("this service needs an API key: use the “API key…” "
    + "button at the top of the page to enter it", 401);

  function askForKey(reason) {
    if (keyPrompt) return keyPrompt;
    const dialog = $("key-dialog");
    const input = $("key-input");
    $("key-forget").hidden = !sessionStorage.getItem(KEY_STORE);
    showError("key-error", reason ? new ApiError(reason, 401) : null);
    input.value = "";
    keyPrompt = new Promise((resolve, reject) => {
      const done = (ok) => {
        dialog.removeEventListener("close", onClose);
        $("key-form").removeEventListener("submit", onSubmit);
        $("key-cancel").removeEventListener("click", onCancel);
        $("key-forget").removeEventListener("click", onForget);
        if (dialog.open) dialog.close();
        keyPrompt = null;
        state.keyDeclined = !ok;
        $("key-button").hidden = false;
        if (ok) resolve();
        else reject(NEEDS_KEY());
      };
      const onSubmit = (ev) => {
        ev.preventDefault();
        const key = input.value.trim();
        if (!key) return;
        if (!/^[\x20-\x7e]+$/.test(key)) {
          showError("key-error", new ApiError("an API key is printable ASCII characters only", 0));
          return;
        }
        sessionStorage.setItem(KEY_STORE, key);
        done(true);
      };
      const onCancel = () => done(false);
      const onClose = () => done(false); // Escape
      const onForget = () => {
        sessionStorage.removeItem(KEY_STORE);
        done(false);
      };
      dialog.addEventListener("close", onClose);
      $("key-form").addEventListener("submit", onSubmit);
      $("key-cancel").addEventListener("click", onCancel);
      $("key-forget").addEventListener("click", onForget);
    });
    dialog.showModal();
    input.focus();
    return keyPrompt;
  }

  // ---------------------------------------------------------------- requests

  function send(method, path, body, headers, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open(method, path);
      try {
        for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
      } catch (err) {
        reject(new ApiError(`cannot send this request: ${err.message}`, 0));
        return;
      }
      if (onProgress && xhr.upload) {
        xhr.upload.addEventListener("progress", (ev) => {
          if (ev.lengthComputable) onProgress(ev.loaded / ev.total);
        });
      }
      xhr.addEventListener("load", () => resolve(xhr));
      xhr.addEventListener("error", () => reject(new ApiError(
        "cannot reach the hotdog service: is it running, and is this page's address right?", 0)));
      xhr.addEventListener("abort", () => reject(new ApiError("the request was aborted", 0)));
      xhr.send(body === undefined ? null : body);
    });
  }

  // One API call: JSON in (``json``) or multipart (``form``), JSON out. A 401 asks for the
  // key once and retries; every other error becomes an ApiError with the API's words.
  async function api(method, path, { json, form, onProgress, text } = {}) {
    const lacking = window.hotdogScopes.missing(method, path);
    if (lacking.length) {
      throw new ApiError(`this API key lacks the ${lacking.map((s) => `'${s}'`).join(" or ")} `
        + `scope, which ${method} /${path.split("?")[0]} needs`, 403);
    }
    for (let attempt = 0; attempt < 20; attempt++) {
      const key = sessionStorage.getItem(KEY_STORE);
      const headers = { Accept: "application/json" };
      if (key) headers["X-API-Key"] = key;
      let body;
      if (json !== undefined) {
        headers["Content-Type"] = "application/json";
        body = JSON.stringify(json);
      } else if (form) {
        body = form;
      }
      const xhr = await send(method, path, body, headers, onProgress);
      if (xhr.status === 401) {
        if (sessionStorage.getItem(KEY_STORE) !== key) continue; // a new key came meanwhile
        if (state.keyDeclined) throw NEEDS_KEY();
        await askForKey(key ? "The service refused that key; check it and enter it again." : "");
        continue;
      }
      if (xhr.status < 200 || xhr.status >= 300) {
        throw errorFromResponse(xhr.status, xhr.statusText, xhr.responseText,
          xhr.getResponseHeader("Retry-After"));
      }
      if (text) return xhr.responseText; // a plain-text answer (a job's log)
      if (xhr.status === 204 || !xhr.responseText) return null;
      try {
        return JSON.parse(xhr.responseText);
      } catch (_) {
        throw new ApiError(`the service answered HTTP ${xhr.status} with something that is not `
          + "JSON (is a proxy in the way?)", xhr.status);
      }
    }
    throw new ApiError("the API key was refused too many times", 401);
  }

  // ---------------------------------------------------------------- the key's scopes

  // What this key may do (scopes.js hides the rest); before anything else is loaded.
  async function refreshScopes() {
    try {
      window.hotdogScopes.apply(await api("GET", "keys/me"));
    } catch (_) {
      // no key given: the page stays as it was, and each panel says what the API answered
    }
    // The panels in their own files (storage.js) load once they know what the key may do.
    document.dispatchEvent(new CustomEvent("hotdog:scopes"));
  }

  // ---------------------------------------------------------------- small helpers

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  function svgEl(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const short = (id) => (id || "").slice(0, 8);
  const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)} %`);
  const num = (x) => (x === null || x === undefined ? "–" : Number(x).toPrecision(3));

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${s % 60} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  function datasetName(id) {
    const ds = state.datasets.get(id);
    return ds ? ds.name : `${short(id)} (deleted)`;
  }

  function initText(init) {
    if (init === "imagenet") return "ImageNet";
    if (init === "scratch") return "scratch";
    if (init && init.startsWith("job:")) return `job ${short(init.slice(4))}`;
    return init || "?";
  }

  function jobTitle(job) {
    if (job.kind === "evaluate") return `job ${short(job.id)} (evaluates job ${short(job.model_id)})`;
    if (job.kind === "review") return `job ${short(job.id)} (reviews the labels of job ${short(job.model_id)})`;
    return `job ${short(job.id)} (${initText(job.params.init)})`;
  }

  // ---------------------------------------------------------------- classify photos

  function predictionCard(file) {
    const img = el("img", { alt: `the photo ${file.name}`, class: "thumb" });
    img.src = URL.createObjectURL(file);
    img.addEventListener("error", () => {
      img.replaceWith(el("div", { class: "thumb no-preview", text: "no preview" }));
    });
    const body = el("div", { class: "prediction-body" },
      el("p", { class: "filename", text: file.name }),
      el("p", { class: "verdict pending", text: "classifying…" }));
    return { card: el("article", { class: "prediction" }, img, body), img, body };
  }

  function fillPrediction(body, p) {
    body.querySelector(".verdict").remove();
    body.append(el("p", { class: "verdict" }, el("span", { class: "verdict-label", text: p.label })));
    const list = el("ul", { class: "bars", "aria-label": `class probabilities of ${p.filename}` });
    const entries = Object.entries(p.probabilities).sort((a, b) => b[1] - a[1]);
    for (const [cls, prob] of entries) {
      const fill = el("span", { class: "bar-fill" });
      fill.style.width = `${Math.max(0, Math.min(1, prob)) * 100}%`;
      list.append(el("li", { class: cls === p.label ? "bar top" : "bar", "data-class": cls },
        el("span", { class: "bar-name", text: cls }),
        el("span", { class: "bar-track", "aria-hidden": "true" }, fill),
        el("span", { class: "bar-value", text: pct(prob) })));
    }
    body.append(list);
  }

  async function classify(files) {
    files = Array.from(files || []);
    if (!files.length) return;
    showError("predict-error", null);
    const out = $("predict-result");
    out.replaceChildren();
    const cards = files.map(predictionCard);
    for (const c of cards) out.append(c.card);
    const form = new FormData();
    for (const f of files) form.append("file", f, f.name);
    const model = $("model-select").value;
    if (model) form.append("model", model);
    const explain = window.hotdogExplain; // explain.js: heatmaps and the whole-photo toggle
    if (explain) explain.prepare(form);
    try {
      const res = await api("POST", "predict", { form });
      res.predictions.forEach((p, i) => fillPrediction(cards[i].body, p));
      if (explain) res.predictions.forEach((p, i) => explain.show(cards[i], p, files[i], model));
      out.append(el("p", { class: "hint", text: `model: job ${short(res.model)}` }));
    } catch (err) {
      for (const c of cards) {
        const v = c.body.querySelector(".verdict");
        v.textContent = "not classified";
        v.classList.replace("pending", "failed");
      }
      showError("predict-error", err);
    }
  }

  function setUpDrop() {
    const drop = $("drop");
    const input = $("photo-input");
    input.addEventListener("change", () => {
      classify(input.files);
      input.value = ""; // the same photo again is a new choice
    });
    for (const ev of ["dragenter", "dragover"]) {
      drop.addEventListener(ev, (e) => {
        e.preventDefault();
        drop.classList.add("over");
      });
    }
    for (const ev of ["dragleave", "dragend"]) {
      drop.addEventListener(ev, () => drop.classList.remove("over"));
    }
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      classify(e.dataTransfer.files);
    });
    // A photo dropped anywhere else on the page would replace the page: don't.
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
  }

  // ---------------------------------------------------------------- datasets

  async function refreshDatasets() {
    try {
      const list = await api("GET", "datasets?limit=1000");
      state.datasets = new Map(list.map((d) => [d.id, d]));
      const select = $("job-dataset");
      const chosen = select.value;
      select.replaceChildren();
      if (!list.length) select.append(el("option", { value: "", text: "no datasets yet: upload one" }));
      for (const d of list) {
        const n = Object.values(d.counts).reduce(
          (a, split) => a + Object.values(split).reduce((x, y) => x + y, 0), 0);
        select.append(el("option", { value: d.id,
          text: `${d.name} · ${d.classes.join(", ")} · ${n} images` }));
      }
      if (chosen && state.datasets.has(chosen)) select.value = chosen;
      showError("job-error", null);
      document.dispatchEvent(new CustomEvent("hotdog:datasets")); // (data.js listens)
    } catch (err) {
      showError("job-error", err);
    }
  }

  function datasetReport(ds) {
    const table = el("table", { class: "counts" },
      el("caption", { text: "Images per class" }),
      el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "class" }),
        ...Object.keys(ds.counts).map((s) => el("th", { scope: "col", text: s })))));
    const tbody = el("tbody");
    for (const cls of ds.classes) {
      tbody.append(el("tr", {}, el("th", { scope: "row", text: cls }),
        ...Object.keys(ds.counts).map((s) => el("td", { text: String(ds.counts[s][cls] ?? 0) }))));
    }
    table.append(tbody);
    const box = el("div", { class: "dataset-report" },
      el("p", {}, "Stored ", el("strong", { text: ds.name }),
        ` (id ${ds.id}): ${ds.classes.length} classes, `,
        el("span", { class: "classes", text: ds.classes.join(", ") })),
      table);
    if (ds.warnings.length) {
      box.append(el("p", { class: "warn-title", text: "Warnings:" }),
        el("ul", { class: "warnings" }, ...ds.warnings.map((w) => el("li", { text: w }))));
    }
    return box;
  }

  async function uploadDataset(ev) {
    ev.preventDefault();
    const file = $("dataset-file").files[0];
    if (!file) return;
    showError("dataset-error", null);
    $("dataset-result").replaceChildren();
    const form = new FormData();
    form.append("file", file, file.name);
    const name = $("dataset-name").value.trim();
    if (name) form.append("name", name);
    const bar = $("dataset-progress");
    const button = $("dataset-submit");
    bar.value = 0;
    bar.hidden = false;
    button.disabled = true;
    button.textContent = "Uploading…";
    try {
      const ds = await api("POST", "datasets", {
        form,
        onProgress: (f) => {
          bar.value = f;
          if (f >= 1) button.textContent = "Checking the images…";
        },
      });
      $("dataset-result").append(datasetReport(ds));
      announce(`Dataset ${ds.name} uploaded.`);
      await refreshDatasets();
      $("job-dataset").value = ds.id;
    } catch (err) {
      showError("dataset-error", err);
    } finally {
      bar.hidden = true;
      button.disabled = false;
      button.textContent = "Upload";
    }
  }

  // ---------------------------------------------------------------- models

  async function refreshModels() {
    try {
      state.models = await api("GET", "models");
    } catch (err) {
      showError("predict-error", err);
      return;
    }
    const select = $("model-select");
    const chosen = select.value;
    select.replaceChildren(el("option", { value: "", text: state.models.length
      ? "the active model" : "the active model (none trained yet)" }));
    for (const m of state.models) {
      const acc = m.accuracy === null ? "" : `, test accuracy ${pct(m.accuracy)}`;
      select.append(el("option", { value: m.id,
        text: `job ${short(m.id)}: ${m.classes.join(" / ")}${acc}${m.active ? " (active)" : ""}` }));
    }
    if (chosen && state.models.some((m) => m.id === chosen)) select.value = chosen;
    document.dispatchEvent(new CustomEvent("hotdog:models", { detail: state.models }));

    const init = $("job-init");
    const initChosen = init.value;
    for (const opt of Array.from(init.options)) if (opt.value.startsWith("job:")) opt.remove();
    for (const m of state.models) {
      init.append(el("option", { value: `job:${m.id}`,
        text: `job ${short(m.id)}'s model (${datasetName(m.dataset_id)})` }));
    }
    if (Array.from(init.options).some((o) => o.value === initChosen)) init.value = initChosen;
    await refreshHistory();
  }

  // Activation goes through the service's promotion gate: a refusal (409) shows both
  // scores and asks before activating anyway (force).
  const GATE_REFUSALS = new Set(["promotion_refused", "against_required", "evaluation_missing"]);
  const METRIC_NAMES = { macro_f1: "macro F1", accuracy: "accuracy" };
  const score = (x) => (x === null || x === undefined ? "not evaluated" : Number(x).toFixed(3));

  async function activate(jobId, force = false) {
    showError("jobs-error", null);
    const query = force ? "?force=true" : "";
    try {
      await api("POST", `models/${encodeURIComponent(jobId)}/activate${query}`);
    } catch (err) {
      if (!force && err.status === 409 && GATE_REFUSALS.has(err.body.kind)) {
        if (await confirmForce(jobId, err)) await activate(jobId, true);
        else announce(`Job ${short(jobId)}'s model was not activated.`);
      } else {
        showError("jobs-error", err);
      }
      return;
    }
    announce(`Job ${short(jobId)}'s model is now the active model${force ? " (forced)" : ""}.`);
    await refreshModels();
    renderJobs();
  }

  // The gate's refusal in words and figures; resolves true to activate anyway.
  function confirmForce(jobId, err) {
    const dialog = $("promote-dialog");
    const c = err.body.comparison;
    $("promote-reason").textContent = describeDetail(err.body.detail);
    const rows = $("promote-scores");
    rows.replaceChildren();
    $("promote-table").hidden = !c || !c.dataset_id; // no common test split: no scores
    if (c) {
      $("promote-metric").textContent = `${METRIC_NAMES[c.metric] || c.metric}`
        + (c.dataset_id ? ` on the test split of ${datasetName(c.dataset_id)}` : "");
      for (const [who, id, value] of [["this model", c.candidate_id, c.candidate],
        ["the active model", c.active_id, c.active]]) {
        rows.append(el("tr", { "data-model": id }, el("th", { scope: "row", text: `${who} (job ${short(id)})` }),
          el("td", { class: "score", text: score(value) })));
      }
    }
    $("promote-title").textContent = `Activate job ${short(jobId)}'s model anyway?`;
    return new Promise((resolve) => {
      const done = (yes) => {
        $("promote-force").removeEventListener("click", onForce);
        $("promote-keep").removeEventListener("click", onKeep);
        dialog.removeEventListener("close", onKeep);
        if (dialog.open) dialog.close();
        resolve(yes);
      };
      const onForce = () => done(true);
      const onKeep = () => done(false);
      $("promote-force").addEventListener("click", onForce);
      $("promote-keep").addEventListener("click", onKeep);
      dialog.addEventListener("close", onKeep); // Escape
      dialog.showModal();
      $("promote-keep").focus();
    });
  }

  function historyItem(a) {
    const when = new Date(a.created_at).toLocaleString();
    const what = a.action === "rollback"
      ? `rolled back to job ${short(a.model_id)}`
      : `job ${short(a.model_id)} activated`;
    const replaced = a.previous_id ? ` (replacing job ${short(a.previous_id)})` : "";
    const scores = a.metric && (a.model_score !== null || a.previous_score !== null)
      ? `, ${METRIC_NAMES[a.metric] || a.metric} ${score(a.model_score)} vs ${score(a.previous_score)}`
      : "";
    return el("li", { "data-activation": String(a.id), class: a.forced ? "forced" : null },
      el("span", { class: "when", text: when }), ` ${what}${replaced}${scores}`,
      a.forced ? el("span", { class: "badge forced-mark", text: "forced" }) : null,
      el("span", { class: "hint", text: ` by ${a.actor}` }));
  }

  async function refreshHistory() {
    const list = await fetchShown("models/history?limit=8", "history-error");
    if (list === undefined) return;
    $("history-list").replaceChildren(...list.map(historyItem));
    $("history-empty").hidden = list.length > 0;
    $("rollback-button").hidden = !list.some((a) => a.previous_id);
  }

  async function rollback() {
    showError("history-error", null);
    try {
      const a = await api("POST", "models/rollback");
      announce(`Rolled back: job ${short(a.model_id)}'s model is the active model again.`);
      await refreshModels();
      renderJobs();
    } catch (err) {
      showError("history-error", err);
    }
  }

  // ---------------------------------------------------------------- jobs

  // The job form from the API's schema of POST /jobs (TrainConfig's parameters): each
  // number field's range, step, default and help, so they are written in one place only.
  // Fields whose default depends on ``init`` show both (``x-default-by-init``).
  async function loadJobForm() {
    if (state.jobFormLoaded) return;
    let schema;
    try {
      schema = await api("GET", "openapi.json");
    } catch (_) {
      return; // the form still works without the hints: the service checks every value
    }
    const fields = ((schema.components || {}).schemas || {}).JobCreate;
    for (const [name, spec] of Object.entries((fields && fields.properties) || {})) {
      const input = $(`job-${name}`);
      if (!input || input.type !== "number") continue;
      const range = (spec.anyOf || [spec]).find((s) => s.type === "integer" || s.type === "number")
        || spec;
      const min = range.minimum ?? range.exclusiveMinimum;
      const max = range.maximum ?? range.exclusiveMaximum;
      if (min !== undefined) input.min = String(min);
      if (max !== undefined) input.max = String(max);
      input.step = range.type === "integer" ? "1" : "any";
      if (spec.description) input.title = spec.description;
      const byInit = spec["x-default-by-init"];
      if (byInit) {
        input.placeholder = `${byInit.imagenet} (scratch: ${byInit.scratch})`;
      } else if (spec.default !== undefined && spec.default !== null) {
        // The first fields show their default as a value; those under "More settings" as a
        // placeholder (empty: the default).
        if (input.closest("details")) input.placeholder = String(spec.default);
        else if (input.value === "") input.value = String(spec.default);
      }
    }
    state.jobFormLoaded = true;
  }

  async function submitJob(ev) {
    ev.preventDefault();
    showError("job-error", null);
    const body = { dataset_id: $("job-dataset").value, init: $("job-init").value };
    if (!body.dataset_id) {
      showError("job-error", new ApiError("choose a dataset first (upload one above)", 0));
      return;
    }
    for (const input of $("job-form").querySelectorAll("input[type=number]")) {
      const raw = input.value.trim();
      if (raw !== "") body[input.name] = Number(raw);
    }
    if ($("job-queue_anyway").checked) body.queue_anyway = true;
    if ($("job-review_labels").checked) body.review_labels = true;
    const button = $("job-submit");
    button.disabled = true;
    try {
      const job = await api("POST", "jobs", { json: body });
      announce(`Job ${short(job.id)} is ${job.status}.`);
      tickChart(job.id, true);
      await refreshJobs();
      schedulePoll();
    } catch (err) {
      showError("job-error", err);
    } finally {
      button.disabled = false;
    }
  }

  async function cancel(jobId) {
    showError("jobs-error", null);
    try {
      const job = await api("POST", `jobs/${encodeURIComponent(jobId)}/cancel`);
      announce(job.status === "cancelled" ? `Job ${short(jobId)} is cancelled.`
        : `Job ${short(jobId)} stops at its next batch.`);
      await refreshJobs();
      schedulePoll();
    } catch (err) {
      showError("jobs-error", err);
    }
  }

  function progressText(job) {
    const p = job.progress;
    if (job.status === "queued") {
      const tries = job.attempt > 0 ? `, attempt ${job.attempt + 1} of ${job.max_attempts}` : "";
      if (job.waiting_for) return `waiting for ${job.waiting_for}${tries}`;
      return p.epoch ? `waiting to resume after epoch ${p.epoch} of ${p.epochs}${tries}`
        : `waiting for a worker${tries}`;
    }
    if (job.kind === "evaluate") {
      return job.status === "running" ? `evaluating on the test split, ${pct(p.fraction)}`
        : job.status === "succeeded" ? "evaluated" : job.status;
    }
    if (job.kind === "predict") {
      return job.status === "running" ? `classifying photos, ${pct(p.fraction)}`
        : job.status === "succeeded" ? `classified ${job.params.photos} photos` : job.status;
    }
    if (job.kind === "review") {
      return job.status === "running" ? `reviewing the training labels, ${pct(p.fraction)}`
        : job.status === "succeeded" ? "labels reviewed" : job.status;
    }
    let text = `epoch ${p.epoch} of ${p.epochs}`;
    if (job.status === "running" && p.eta_seconds !== null && p.eta_seconds !== undefined) {
      text += `, about ${duration(p.eta_seconds)} left`;
    }
    return text;
  }

  function makeRow(job) {
    const tick = el("input", { type: "checkbox", class: "chart-tick",
      "aria-label": `draw job ${short(job.id)} on the charts` });
    tick.addEventListener("change", () => tickChart(job.id, tick.checked));
    const cancelButton = el("button", { type: "button", class: "secondary cancel",
      text: "Cancel", "aria-label": `cancel job ${short(job.id)}`, "data-needs": "train" });
    cancelButton.addEventListener("click", () => cancel(job.id));
    const activateButton = el("button", { type: "button", class: "secondary activate",
      text: "Activate", "aria-label": `make job ${short(job.id)}'s model the active model`,
      "data-needs": "admin" });
    activateButton.addEventListener("click", () => activate(job.id));
    const r = {
      tr: el("tr", { "data-job": job.id }),
      tick,
      id: el("td", {}, el("code", { title: job.id, text: short(job.id) })),
      dataset: el("td"),
      init: el("td"),
      status: el("td", { class: "status-cell" }),
      progressBar: el("progress", { max: "1", value: "0",
        "aria-label": `progress of job ${short(job.id)}` }),
      progressText: el("span", { class: "progress-text" }),
      acc: el("td", { class: "acc" }),
      cancelButton,
      activateButton,
      activeMark: el("span", { class: "badge active-model", text: "active model" }),
    };
    r.tr.append(el("td", {}, tick), r.id, r.dataset, r.init, r.status,
      el("td", { class: "progress-cell" }, r.progressBar, r.progressText), r.acc,
      el("td", { class: "actions" }, cancelButton, activateButton, r.activeMark));
    return r;
  }

  function updateRow(r, job) {
    const active = state.models.length && state.models[0].active && state.models[0].id === job.id;
    r.tr.dataset.status = job.status;
    r.tick.checked = state.chartJobs.includes(job.id);
    r.dataset.textContent = job.dataset_id ? datasetName(job.dataset_id) : "uploaded photos";
    const lr = job.params.lr === undefined ? "" : `, lr ${job.params.lr}`;
    const size = job.params.image_size ? `, ${job.params.image_size} px` : "";
    r.init.textContent = job.kind === "evaluate" ? `evaluates job ${short(job.model_id)}`
      : job.kind === "predict" ? `classifies with job ${short(job.model_id)}`
      : job.kind === "review" ? `reviews the labels of job ${short(job.model_id)}`
      : `${initText(job.params.init)}${lr}${size}`;
    const badge = el("span", { class: `badge status-${job.status}`, text: job.status });
    const parts = [badge];
    if (job.cancel_requested && ACTIVE.has(job.status)) {
      parts.push(el("span", { class: "hint", text: " cancelling…" }));
    }
    if (job.error) parts.push(el("p", { class: "job-error", text: job.error }));
    r.status.replaceChildren(...parts);
    r.progressBar.value = job.progress.fraction || 0;
    r.progressText.textContent = progressText(job);
    // The kept model's figures: the epoch chosen on the validation split (or the last
    // one), never the best test accuracy (no model has that once another epoch is kept).
    const kept = job.best_metrics;
    r.acc.textContent = kept ? pct(kept.test_acc) : "–";
    if (kept) {
      const val = kept.val_acc === null || kept.val_acc === undefined ? ""
        : `, validation ${pct(kept.val_acc)}`;
      r.acc.append(el("span", { class: "hint", text: ` (epoch ${kept.epoch}${val})` }));
    }
    if (job.note) r.acc.append(el("p", { class: "hint", text: job.note }));
    r.cancelButton.hidden = !ACTIVE.has(job.status) || job.cancel_requested;
    r.activateButton.hidden = job.status !== "succeeded" || job.kind !== "train" || active;
    r.activeMark.hidden = !active;
  }

  function renderJobs() {
    const body = $("jobs-body");
    const seen = new Set();
    let previous = null;
    for (const job of state.jobs) {
      seen.add(job.id);
      let r = state.rows.get(job.id);
      if (!r) {
        r = makeRow(job);
        state.rows.set(job.id, r);
      }
      updateRow(r, job);
      // Keep the order of the list without re-creating rows (focus stays where it was).
      const want = previous ? previous.nextSibling : body.firstChild;
      if (want !== r.tr) body.insertBefore(r.tr, want);
      previous = r.tr;
      // A row storage.js shows under a job (its log) stays with it.
      const under = r.tr.nextSibling;
      if (under && under.dataset && under.dataset.logsOf === job.id) previous = under;
    }
    for (const [id, r] of state.rows) {
      if (!seen.has(id)) {
        r.tr.remove();
        state.rows.delete(id);
      }
    }
    $("jobs-table").hidden = !state.jobs.length;
    $("jobs-empty").hidden = state.jobs.length > 0;
    document.dispatchEvent(new CustomEvent("hotdog:jobs", { detail: state.jobs }));
  }

  async function refreshJobs() {
    const jobs = await fetchShown("jobs?limit=200", "jobs-error");
    if (jobs === undefined) return;
    const before = new Map(state.jobs.map((j) => [j.id, j.status]));
    state.jobs = jobs;
    const succeeded = jobs.some((j) => j.status === "succeeded" && before.get(j.id) !== "succeeded"
      && before.size);
    const unknownDataset = jobs.some((j) => j.dataset_id && !state.datasets.has(j.dataset_id));
    if (unknownDataset) await refreshDatasets();
    if (succeeded) await refreshModels();
    if (state.firstLoad) {
      state.firstLoad = false;
      if (!state.chartJobs.length && jobs.length) {
        state.chartJobs = [(jobs.find((j) => ACTIVE.has(j.status)) || jobs[0]).id];
      }
    }
    state.chartJobs = state.chartJobs.filter((id) => jobs.some((j) => j.id === id));
    renderJobs();  // which tells the other panels ("hotdog:jobs", the jobs as its detail)
    await refreshWorkers();
    await refreshCurves();
  }

  // ---------------------------------------------------------------- workers

  function workerText(w) {
    const kind = w.kind === "gpu" ? `${w.gpus} GPU${w.gpus === 1 ? "" : "s"}` : "CPU only";
    const weights = w.has_imagenet ? "has the ImageNet weights" : "no ImageNet weights";
    return `${w.name}: ${kind}, queues ${w.queues.join(", ")}, ${weights}, version ${w.version}`;
  }

  // The live workers, and whether "Start from: ImageNet weights" can run anywhere.
  async function refreshWorkers() {
    const workers = await fetchShown("workers", "workers-error");
    if (workers === undefined) return;
    state.workers = workers;
    const live = state.workers.filter((w) => w.alive);
    $("workers-list").replaceChildren(...live.map((w) =>
      el("li", { "data-worker": w.name, text: workerText(w) })));
    $("workers-empty").hidden = live.length > 0;
    const gone = state.workers.length - live.length;
    $("workers-gone").hidden = gone === 0;
    $("workers-gone").textContent = `${gone} stopped or unseen worker${gone === 1 ? "" : "s"}`
      + " not shown.";
    const imagenet = $("job-init").querySelector("option[value=imagenet]");
    const usable = live.some((w) => w.has_imagenet);
    imagenet.disabled = !usable;
    imagenet.textContent = usable ? "ImageNet weights (fine-tune)"
      : "ImageNet weights (unavailable: no running worker has them)";
    if (!usable && $("job-init").value === "imagenet") $("job-init").value = "scratch";
  }

  function schedulePoll() {
    clearTimeout(state.pollTimer);
    const busy = state.jobs.some((j) => ACTIVE.has(j.status));
    state.pollTimer = setTimeout(async () => {
      try {
        await refreshJobs();
      } finally {
        schedulePoll();
      }
    }, busy && !document.hidden ? POLL_ACTIVE_MS : POLL_IDLE_MS);
  }

  // ---------------------------------------------------------------- curves

  function tickChart(jobId, on) {
    state.chartJobs = state.chartJobs.filter((id) => id !== jobId);
    if (on) {
      state.chartJobs.push(jobId);
      while (state.chartJobs.length > MAX_CHART_JOBS) state.chartJobs.shift();
    }
    for (const [id, r] of state.rows) r.tick.checked = state.chartJobs.includes(id);
    refreshCurves();
  }

  // Fetches the per-epoch rows of the charted jobs that have new epochs, then redraws.
  async function refreshCurves() {
    const jobs = state.chartJobs.map((id) => state.jobs.find((j) => j.id === id)).filter(Boolean);
    const stale = jobs.filter((j) => {
      const m = state.metrics.get(j.id);
      return !m || m.rows.length !== j.progress.epoch || m.status !== j.status;
    });
    try {
      await Promise.all(stale.map(async (j) => {
        const rows = await api("GET", `jobs/${encodeURIComponent(j.id)}/metrics`);
        state.metrics.set(j.id, { rows, status: j.status });
      }));
      showError("curves-error", null);
    } catch (err) {
      showError("curves-error", err);
    }
    drawCurves();
  }

  function niceStep(range, ticks) {
    const raw = range / Math.max(1, ticks);
    const mag = 10 ** Math.floor(Math.log10(raw));
    const norm = raw / mag;
    return (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10) * mag;
  }

  // y scales: norm maps a value to 0..1 (clamped), ticks are the gridlines' values.
  const compact = new Intl.NumberFormat("en", { maximumSignificantDigits: 3 });

  function linearScale(max) {
    const step = niceStep(max, 5);
    const ticks = [];
    for (let i = 0; i * step <= max + 1e-9; i++) ticks.push(i * step);
    return { norm: (v) => Math.max(0, Math.min(v / max, 1)), ticks, log: false };
  }

  function logScale(min, max) {
    const lo = Math.floor(Math.log10(min));
    let hi = Math.ceil(Math.log10(max));
    if (hi === lo) hi += 1;
    const step = Math.ceil((hi - lo) / 6);
    const ticks = [];
    for (let k = lo; k <= hi; k += step) ticks.push(10 ** k);
    return {
      norm: (v) => Math.max(0, Math.min((Math.log10(Math.max(v, 10 ** lo)) - lo) / (hi - lo), 1)),
      ticks,
      log: true,
      tickFormat: (v) => {
        const k = Math.round(Math.log10(v));
        return k >= -3 && k <= 4 ? compact.format(v) : `1e${k}`;
      },
    };
  }

  // One SVG chart: x = epoch (0..xMax), y on ``scale``; a solid line per job for test and a
  // dashed one for train, a dot per finished epoch.
  function drawChart(svg, { series, xMax, scale, yLabel, format }) {
    const W = 560;
    const H = 300;
    const m = { l: 56, r: 14, t: 12, b: 42 };
    const w = W - m.l - m.r;
    const h = H - m.t - m.b;
    const x = (e) => m.l + (e / xMax) * w;
    const y = (v) => m.t + h - scale.norm(v) * h;
    svg.replaceChildren();
    const desc = series.filter((s) => s.points.length).map((s) => {
      const last = s.points[s.points.length - 1];
      return `${s.name} ${s.kind}: ${s.points.length} epochs, last ${format(last[1])}`;
    });
    svg.append(svgEl("desc", {}, desc.length ? desc.join("; ") : "no epochs finished yet"));

    for (const v of scale.ticks) {
      svg.append(svgEl("line", { x1: m.l, x2: W - m.r, y1: y(v), y2: y(v), class: "grid" }));
      svg.append(svgEl("text", { x: m.l - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" },
        (scale.tickFormat || format)(v)));
    }
    const xstep = Math.max(1, Math.ceil(niceStep(xMax, 10)));
    for (let e = 0; e <= xMax; e += xstep) {
      svg.append(svgEl("line", { x1: x(e), x2: x(e), y1: m.t + h, y2: m.t + h + 4, class: "axis" }));
      svg.append(svgEl("text", { x: x(e), y: m.t + h + 17, class: "tick", "text-anchor": "middle" },
        String(e)));
    }
    svg.append(svgEl("line", { x1: m.l, x2: W - m.r, y1: m.t + h, y2: m.t + h, class: "axis" }));
    svg.append(svgEl("line", { x1: m.l, x2: m.l, y1: m.t, y2: m.t + h, class: "axis" }));
    svg.append(svgEl("text", { x: m.l + w / 2, y: H - 6, class: "label", "text-anchor": "middle" },
      "epoch"));
    svg.append(svgEl("text", { x: 14, y: m.t + h / 2, class: "label", "text-anchor": "middle",
      transform: `rotate(-90 14 ${m.t + h / 2})` }, scale.log ? `${yLabel} (log scale)` : yLabel));

    let any = false;
    for (const s of series) {
      if (!s.points.length) continue;
      any = true;
      const g = svgEl("g", { class: `series ${s.kind}`, "data-job": s.job, "data-kind": s.kind });
      g.append(svgEl("polyline", {
        points: s.points.map(([e, v]) => `${x(e).toFixed(1)},${y(v).toFixed(1)}`).join(" "),
        fill: "none", stroke: s.color, "stroke-width": 2,
        "stroke-dasharray": s.kind === "train" ? "6 4" : "none",
      }));
      for (const [e, v] of s.points) {
        const dot = svgEl("circle", { cx: x(e).toFixed(1), cy: y(v).toFixed(1), r: 3.5,
          fill: s.kind === "train" ? "#fff" : s.color, stroke: s.color, "stroke-width": 1.5,
          class: "point", "data-epoch": e });
        dot.append(svgEl("title", {}, `${s.name}, epoch ${e}, ${s.kind} ${yLabel}: ${format(v)}`));
        g.append(dot);
      }
      svg.append(g);
    }
    if (!any) {
      svg.append(svgEl("text", { x: m.l + w / 2, y: m.t + h / 2, class: "empty",
        "text-anchor": "middle" }, series.length ? "no epoch finished yet" : "no job chosen"));
    }
  }

  function drawCurves() {
    const jobs = state.chartJobs.map((id) => state.jobs.find((j) => j.id === id)).filter(Boolean);
    const lossSeries = [];
    const accSeries = [];
    let xMax = 1;
    let lossMax = 0;
    let lossMin = Infinity;
    jobs.forEach((job, i) => {
      const color = COLORS[i % COLORS.length];
      const rows = (state.metrics.get(job.id) || { rows: [] }).rows;
      xMax = Math.max(xMax, job.progress.epochs || 1, rows.length);
      const name = jobTitle(job);
      for (const kind of ["train", "test"]) {
        const finite = ([, v]) => Number.isFinite(v);
        const loss = rows.map((r) => [r.epoch, r[`${kind}_loss`]]).filter(finite);
        const acc = rows.map((r) => [r.epoch, r[`${kind}_acc`]]).filter(finite);
        for (const [, v] of loss) {
          lossMax = Math.max(lossMax, v);
          if (v > 0) lossMin = Math.min(lossMin, v);
        }
        lossSeries.push({ job: job.id, kind, color, name, points: loss });
        accSeries.push({ job: job.id, kind, color, name, points: acc });
      }
    });
    // A loss that spans orders of magnitude (a diverging start) gets a log scale, so the
    // rest of the curve is not flattened against the axis.
    let lossScale = linearScale(1);
    if (lossMax > 0) {
      const step = niceStep(lossMax, 5);
      lossScale = lossMin > 0 && lossMax / lossMin >= 100 ? logScale(lossMin, lossMax)
        : linearScale(Math.ceil((lossMax * 1.05) / step) * step);
    }
    drawChart($("chart-loss"), { series: lossSeries, xMax, scale: lossScale, yLabel: "loss",
      format: (v) => compact.format(v) });
    drawChart($("chart-acc"), { series: accSeries, xMax, scale: linearScale(1),
      yLabel: "accuracy", format: (v) => `${Math.round(v * 100)} %` });

    const legend = $("chart-legend");
    legend.replaceChildren();
    jobs.forEach((job, i) => {
      const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
      swatch.style.background = COLORS[i % COLORS.length];
      legend.append(el("span", { class: "legend-item" }, swatch,
        `${jobTitle(job)} on ${datasetName(job.dataset_id)}: ${job.status}`));
    });
    if (jobs.length) {
      legend.append(el("span", { class: "legend-item hint",
        text: "solid line and filled dots: test split; dashed line: train split" }));
    }
    $("curves-hint").hidden = jobs.length > 0;

    const tables = $("metrics-tables");
    tables.replaceChildren();
    for (const job of jobs) {
      const rows = (state.metrics.get(job.id) || { rows: [] }).rows;
      const t = el("table", { class: "metrics", "data-job": job.id },
        el("caption", { text: jobTitle(job) }),
        el("thead", {}, el("tr", {}, ...["epoch", "train loss", "train acc", "val loss",
          "val acc", "test loss", "test acc", "images/s", "seconds"].map(
          (c) => el("th", { scope: "col", text: c })))));
      const tb = el("tbody");
      const optional = (v, f) => (v === null || v === undefined ? "–" : f(v));
      for (const r of rows) {
        const kept = job.best_metrics && job.best_metrics.epoch === r.epoch;
        tb.append(el("tr", kept ? { class: "kept", title: "the kept model's epoch" } : {},
          el("th", { scope: "row", text: String(r.epoch) + (kept ? " ★" : "") }),
          ...[num(r.train_loss), pct(r.train_acc), optional(r.val_loss, num),
            optional(r.val_acc, pct), num(r.test_loss), pct(r.test_acc),
            r.images_per_s.toFixed(1), r.seconds.toFixed(1)].map((v) => el("td", { text: v }))));
      }
      t.append(tb);
      tables.append(t);
    }
  }

  // ---------------------------------------------------------------- start

  function start() {
    setUpDrop();
    $("dataset-form").addEventListener("submit", uploadDataset);
    $("job-form").addEventListener("submit", submitJob);
    $("rollback-button").addEventListener("click", rollback);
    $("key-button").hidden = !sessionStorage.getItem(KEY_STORE);
    $("key-button").addEventListener("click", () => {
      state.keyDeclined = false;
      askForKey("").then(loadPanels).catch(() => {});
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) refreshJobs().finally(schedulePoll);
    });
    drawCurves();
    loadPanels();
  }

  // Everything the page shows, in the order each needs the one before (the key's scopes
  // first, the job form's ranges before the datasets it lists), then the polling.
  async function loadPanels() {
    await refreshScopes();
    await loadJobForm();
    await refreshDatasets();
    await refreshModels();
    await refreshJobs();
    schedulePoll();
  }

  // What the page's other panels (data.js, batch.js, storage.js) use: requests, helpers,
  // the shared state.
  window.hotdog = { api, ApiError, el, $, showError, announce, state, short, pct, refreshDatasets,
    refreshJobs, refreshModels, ACTIVE, KEY_STORE };
  window.hotdogPage = { api, el, pct }; // for the panels in their own files (explain.js)

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
