// The page's Data panel: a dataset's report (GET /datasets/{id}/report), its leakage and
// duplicate groups as thumbnails (GET /datasets/{id}/images/{image_id}), a job's label
// review as a grid (GET /jobs/{id}/label-review), and a new version with the chosen changes
// (POST /datasets/{id}/relabel). It uses app.js's requests and helpers (window.hotdog).
"use strict";

(() => {
  const h = window.hotdog;
  const { api, el, $, showError, state, short } = h;
  const POLL_MS = 1000;
  const THUMB = 96;
  const ISSUE_TEXT = {
    tiny: "tiny", aspect_ratio: "very long or tall", uniform: "nearly one colour",
    dark: "dark", blurry: "blurry", grayscale: "grey in a colour set",
  };

  const data = {
    datasetId: "", // the dataset the panel shows
    report: null,
    changes: new Map(), // image id -> class | "drop" (of data.datasetId)
    pollTimer: null,
    reviewTimer: null,
    thumbs: new Map(), // "dataset/image" -> object URL
  };

  // Thumbnails need the API key header when one is set: fetched, then shown as blobs.
  async function thumbnail(datasetId, imageId) {
    const k = `${datasetId}/${imageId}`;
    if (data.thumbs.has(k)) return data.thumbs.get(k);
    const key = sessionStorage.getItem(h.KEY_STORE);
    const r = await fetch(`datasets/${datasetId}/images/${imageId}?size=${THUMB * 2}`,
      { headers: key ? { "X-API-Key": key } : {} });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const url = URL.createObjectURL(await r.blob());
    data.thumbs.set(k, url);
    return url;
  }

  function imageTile(img, extra) {
    const pic = el("img", { alt: img.path, width: THUMB, height: THUMB, loading: "lazy",
      "data-image-id": img.image_id });
    thumbnail(data.datasetId, img.image_id).then((url) => { pic.src = url; })
      .catch(() => { pic.alt = `${img.path} (no thumbnail)`; });
    return el("figure", { class: "tile" }, pic,
      el("figcaption", {}, el("span", { class: "path", text: img.path }),
        el("span", { class: "hint", text: ` #${img.image_id} · ${img.split}/${img.label}` }),
        extra || null));
  }

  function dropToggle(img) {
    const button = el("button", { type: "button", class: "secondary small",
      "data-drop": img.image_id });
    const paint = () => {
      const dropped = data.changes.get(img.image_id) === "drop";
      button.textContent = dropped ? "keep" : "drop";
      button.setAttribute("aria-pressed", dropped ? "true" : "false");
    };
    button.addEventListener("click", () => {
      if (data.changes.get(img.image_id) === "drop") data.changes.delete(img.image_id);
      else data.changes.set(img.image_id, "drop");
      paint();
      renderChanges();
    });
    paint();
    return button;
  }

  function groupBox(g) {
    const how = g.kind === "exact" ? "same pixels" : `near duplicates (${g.max_distance} bits)`;
    return el("div", { class: `group${g.label_conflict ? " conflict" : ""}` },
      el("p", { class: "group-title", text: `${g.scope}: ${how}`
        + (g.label_conflict ? ` · different classes: ${g.labels.join(", ")}` : "") }),
      el("div", { class: "tiles" }, ...g.images.map((i) => imageTile(i, dropToggle(i)))));
  }

  function summaryBox(datasetId, report) {
    const s = report.summary;
    const lines = [
      `${s.images} images; leakage: ${s.leaked_images} val/test image(s) also in another `
        + `split (${s.leakage_groups} group(s)); the same photo under two classes: `
        + `${s.label_conflicts}.`,
      "Imbalance (largest class / smallest): " + Object.entries(s.imbalance)
        .map(([split, r]) => `${split} ${r === null ? "a class is empty" : `${r}×`}`).join(", "),
    ];
    const issues = Object.entries(s.issues).filter(([, n]) => n)
      .map(([k, n]) => `${ISSUE_TEXT[k] || k} ${n}`);
    lines.push(`Image issues: ${issues.length ? issues.join(", ") : "none"}.`);
    if (report.near_duplicates_skipped) {
      lines.push("Near duplicates were not searched (more images than REPORT_NEAR_MAX_IMAGES).");
    }
    return el("div", { class: "report-summary", "data-dataset": datasetId },
      ...lines.map((t) => el("p", { text: t })));
  }

  function render() {
    const report = data.report;
    const summary = $("data-summary");
    const leakage = $("data-leakage");
    const dups = $("data-duplicates");
    const issues = $("data-issues");
    leakage.replaceChildren();
    dups.replaceChildren();
    issues.replaceChildren();
    if (!report) return;
    summary.replaceChildren(summaryBox(data.datasetId, report));
    const leaks = report.groups.filter((g) => g.scope === "leakage");
    const within = report.groups.filter((g) => g.scope !== "leakage");
    leakage.append(...(leaks.length ? leaks.map(groupBox)
      : [el("p", { class: "hint", text: "No photo is in two splits." })]));
    dups.append(...(within.length ? within.map(groupBox)
      : [el("p", { class: "hint", text: "No duplicates within a split." })]));
    if (report.image_issues.length) {
      issues.append(el("div", { class: "tiles" }, ...report.image_issues.map((i) =>
        imageTile(i, el("span", { class: "issue",
          text: ` ${i.issues.map((k) => ISSUE_TEXT[k] || k).join(", ")}` })))));
    }
  }

  async function loadReport() {
    clearTimeout(data.pollTimer);
    const id = data.datasetId;
    if (!id) {
      data.report = null;
      $("data-summary").replaceChildren(el("p", { class: "hint", text: "No dataset chosen." }));
      render();
      return;
    }
    try {
      const out = await api("GET", `datasets/${id}/report`);
      if (id !== data.datasetId) return; // another dataset was chosen meanwhile
      showError("data-error", null);
      if (out.status === "pending" || out.status === "running") {
        data.report = null;
        $("data-summary").replaceChildren(el("p", { class: "hint",
          text: `The report is ${out.status}…` }));
        render();
        data.pollTimer = setTimeout(loadReport, POLL_MS);
        return;
      }
      if (out.status === "failed") {
        data.report = null;
        $("data-summary").replaceChildren(el("p", { class: "error",
          text: `The report failed: ${out.error}` }));
        render();
        return;
      }
      data.report = out.report;
      render();
    } catch (err) {
      showError("data-error", err);
    }
  }

  function chooseDataset(id) {
    if (id === data.datasetId) return;
    data.datasetId = id;
    data.changes.clear();
    $("data-review-grid").replaceChildren();
    $("data-review-status").textContent = "";
    renderChanges();
    fillJobs();
    loadReport();
  }

  function fillDatasets() {
    const select = $("data-dataset");
    const chosen = select.value || data.datasetId;
    select.replaceChildren();
    const list = [...state.datasets.values()];
    if (!list.length) select.append(el("option", { value: "", text: "no datasets yet" }));
    for (const d of list) {
      const parent = d.parent_id ? ` · relabelled from ${short(d.parent_id)}` : "";
      select.append(el("option", { value: d.id, text: `${d.name} (${short(d.id)})${parent}` }));
    }
    if (chosen && state.datasets.has(chosen)) select.value = chosen;
    chooseDataset(select.value);
  }

  function fillJobs() {
    const select = $("data-review-job");
    const chosen = select.value;
    select.replaceChildren();
    const jobs = state.jobs.filter((j) => j.dataset_id === data.datasetId
      && (j.kind || "train") === "train" && j.status === "succeeded");
    if (!jobs.length) select.append(el("option", { value: "", text: "no trained model of this dataset" }));
    for (const j of jobs) select.append(el("option", { value: j.id, text: `job ${short(j.id)}` }));
    if (chosen && jobs.some((j) => j.id === chosen)) select.value = chosen;
    $("data-review-load").disabled = !jobs.length;
  }

  // ---------------------------------------------------------------- label review

  function reviewTile(issue) {
    const given = el("span", { class: "given", text: issue.label });
    const suggested = el("span", { class: "suggested", text: issue.suggested });
    const buttons = [
      ["keep", null], ["relabel", issue.suggested], ["drop", "drop"],
    ].map(([label, value]) => {
      const b = el("button", { type: "button", class: "secondary small", text: label,
        "data-action": label });
      b.addEventListener("click", () => {
        if (value === null) data.changes.delete(issue.image_id);
        else data.changes.set(issue.image_id, value);
        paint();
        renderChanges();
      });
      return b;
    });
    const paint = () => {
      const now = data.changes.get(issue.image_id);
      const action = now === undefined ? "keep" : now === "drop" ? "drop" : "relabel";
      for (const b of buttons) b.setAttribute("aria-pressed", String(b.dataset.action === action));
    };
    paint();
    const conf = issue.confidence === null || issue.confidence === undefined ? ""
      : ` (${(100 * issue.confidence).toFixed(0)} %)`;
    const tile = imageTile(issue, el("span", { class: "review" }, " ", given, " → ", suggested,
      conf));
    tile.append(el("div", { class: "buttons" }, ...buttons));
    tile.dataset.rank = issue.rank;
    return tile;
  }

  async function loadReview() {
    const jobId = $("data-review-job").value;
    const grid = $("data-review-grid");
    const status = $("data-review-status");
    clearTimeout(data.reviewTimer);
    $("data-review-start").hidden = true;
    if (!jobId) return;
    try {
      const review = await api("GET", `jobs/${jobId}/label-review`);
      showError("data-error", null);
      if (review.status !== "succeeded") {
        status.textContent = `The label review of job ${short(jobId)} is ${review.status}.`;
        grid.replaceChildren();
        if (review.status === "queued" || review.status === "running") {
          data.reviewTimer = setTimeout(loadReview, POLL_MS * 2);
        }
        return;
      }
      status.textContent = `${review.issues.length} likely mislabelled image(s), most likely `
        + `first (embeddings of ${review.backbone}); ${review.outliers.length} outlier(s).`;
      grid.replaceChildren(...review.issues.slice().sort((a, b) => a.rank - b.rank)
        .map(reviewTile));
    } catch (err) {
      grid.replaceChildren();
      if (err.status === 404) {  // no review of this job yet: offer one
        status.textContent = `Job ${short(jobId)} has no label review yet.`;
        $("data-review-start").hidden = false;
        return;
      }
      status.textContent = "";
      showError("data-error", err);
    }
  }

  // A review job of the chosen training job (POST /jobs/{id}/review), then its result.
  async function startReview() {
    const jobId = $("data-review-job").value;
    if (!jobId) return;
    try {
      const job = await api("POST", `jobs/${jobId}/review`, { json: {} });
      showError("data-error", null);
      $("data-review-start").hidden = true;
      $("data-review-status").textContent = `Label review job ${short(job.id)} ${job.status}…`;
      data.reviewTimer = setTimeout(loadReview, POLL_MS * 2);
    } catch (err) {
      showError("data-error", err);
    }
  }

  // ---------------------------------------------------------------- the new version

  function renderChanges() {
    const n = data.changes.size;
    const button = $("data-relabel");
    button.disabled = !n || !data.datasetId;
    button.textContent = n ? `Make a new version with ${n} change${n === 1 ? "" : "s"}`
      : "Make a new version (choose changes first)";
  }

  async function relabel() {
    const id = data.datasetId;
    if (!id || !data.changes.size) return;
    const changes = Object.fromEntries([...data.changes].map(([k, v]) => [String(k), v]));
    $("data-relabel").disabled = true;
    try {
      const ds = await api("POST", `datasets/${id}/relabel`, { json: { changes } });
      showError("data-error", null);
      $("data-relabel-result").replaceChildren(el("p", {}, "New version ",
        el("strong", { text: ds.name }), ` (id ${ds.id}) with ${Object.keys(ds.changes).length} `
          + "change(s); the old one is unchanged. Train on it from the job form."));
      h.announce(`new dataset version ${short(ds.id)} stored`);
      await h.refreshDatasets();
      $("data-dataset").value = ds.id;
      chooseDataset(ds.id);
    } catch (err) {
      showError("data-error", err);
      renderChanges();
    }
  }

  function start() {
    $("data-dataset").addEventListener("change", (ev) => chooseDataset(ev.target.value));
    $("data-review-load").addEventListener("click", loadReview);
    $("data-review-start").addEventListener("click", startReview);
    $("data-relabel").addEventListener("click", relabel);
    document.addEventListener("hotdog:datasets", fillDatasets);
    document.addEventListener("hotdog:jobs", fillJobs);
    renderChanges();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
