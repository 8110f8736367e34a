// The storage panel (GET /storage: the biggest datasets and jobs, with delete buttons) and
// each job's log under its row in the jobs list (GET /jobs/{id}/logs). Uses what app.js
// shares as window.hotdog; app.js tells when it has drawn the jobs ("hotdog:jobs").
"use strict";

(() => {
  const REFRESH_MS = 30000; // the storage table, while the page is visible
  const LOG_LINES = 200; // the last lines of a job's log shown under it
  const LOG_POLL_MS = 2000; // an open log of a queued or running job is re-read this often
  const $ = (id) => document.getElementById(id);
  const openLogs = new Map(); // job id -> {row, pre, timer}

  function size(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = n;
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
  }

  function holds(item) {
    const parts = Object.entries(item.by_category || {}).filter(([, b]) => b > 0)
      .map(([c, b]) => `${c} ${size(b)}`);
    return parts.join(", ");
  }

  // ---------------------------------------------------------------- the storage table

  async function refreshStorage() {
    const h = window.hotdog;
    let report;
    try {
      report = await h.api("GET", "storage?limit=20");
    } catch (err) {
      h.showError("storage-error", err);
      return;
    }
    h.showError("storage-error", null);
    const c = report.categories;
    $("storage-summary").textContent = `${size(report.used_bytes)} used in the data folder `
      + `(datasets ${size(c.datasets)}, checkpoints ${size(c.checkpoints)}, exports `
      + `${size(c.exports)}, logs ${size(c.logs)}, temporary ${size(c.temporary)}); `
      + `${size(report.free_bytes)} free of ${size(report.total_bytes)}.`;
    $("storage-body").replaceChildren(...report.biggest.map(itemRow));
    $("storage-table").hidden = report.biggest.length === 0;
  }

  function itemRow(item) {
    const h = window.hotdog;
    const label = item.kind === "dataset" ? item.name : `job ${h.short(item.id)}`;
    const actions = h.el("td", { class: "actions" });
    const button = (text, what, run) => {
      const b = h.el("button", { type: "button", class: "secondary", text,
        "aria-label": `${text.toLowerCase()}: ${what}`, "data-action": text.toLowerCase() });
      if (item.protected) {
        b.disabled = true;
        b.title = `cannot now: ${item.protected}`;
      }
      b.addEventListener("click", () => run(b));
      return b;
    };
    if (item.kind === "dataset") {
      actions.append(button("Delete", `dataset ${item.name}`,
        (b) => remove(b, `datasets/${encodeURIComponent(item.id)}`,
          `Delete dataset ${item.name} and its files? Jobs trained on it keep their history.`,
          `Dataset ${item.name} deleted.`)));
    } else {
      if (!item.files_removed) {
        actions.append(button("Free files", `job ${h.short(item.id)}`,
          (b) => remove(b, `jobs/${encodeURIComponent(item.id)}?files_only=true`,
            `Remove the model files of job ${h.short(item.id)}? It stays listed, with its log.`,
            `The files of job ${h.short(item.id)} were removed.`)));
      }
      actions.append(button("Delete", `job ${h.short(item.id)}`,
        (b) => remove(b, `jobs/${encodeURIComponent(item.id)}`,
          `Delete job ${h.short(item.id)} and its files? Its history stays readable.`,
          `Job ${h.short(item.id)} deleted.`)));
    }
    const name = h.el("td", {}, item.kind === "dataset" ? h.el("span", { text: label })
      : h.el("code", { title: item.id, text: label }));
    if (item.protected) {
      name.append(h.el("p", { class: "protected", text: `kept: ${item.protected}` }));
    }
    return h.el("tr", { "data-item": `${item.kind}:${item.id}` }, name,
      h.el("td", { text: item.kind === "job" ? item.name : "dataset" }),
      h.el("td", { class: "size", text: size(item.bytes) }),
      h.el("td", { text: holds(item) }), actions);
  }

  async function remove(button, path, question, done) {
    const h = window.hotdog;
    if (!window.confirm(question)) return;
    button.disabled = true;
    h.showError("storage-error", null);
    try {
      await h.api("DELETE", path);
      h.announce(done);
    } catch (err) {
      h.showError("storage-error", err);
    }
    await refreshStorage();
    await h.refreshDatasets();
    await h.refreshModels();
    await h.refreshJobs();
  }

  // ---------------------------------------------------------------- a job's log

  function addLogButtons(jobs) {
    const h = window.hotdog;
    const listed = new Set(jobs.map((j) => j.id));
    for (const job of jobs) {
      const tr = document.querySelector(`#jobs-body tr[data-job="${job.id}"]`);
      if (!tr) continue;
      const cell = tr.querySelector("td.actions");
      if (cell && !cell.querySelector(".logs-button")) {
        const b = h.el("button", { type: "button", class: "secondary logs-button", text: "Log",
          "aria-label": `show the log of job ${h.short(job.id)}`, "aria-expanded": "false" });
        b.addEventListener("click", () => toggleLog(job.id, tr, b));
        cell.append(b);
      }
      const open = openLogs.get(job.id);
      if (open) {
        const was = open.active;
        open.active = h.ACTIVE.has(job.status);
        if (was && !open.active) {  // it has ended: its last lines
          clearTimeout(open.timer);
          readLog(job.id, open);
        } else if (!was && open.active) {
          readLog(job.id, open);
        }
      }
    }
    for (const [id, open] of openLogs) {
      if (!listed.has(id)) closeLog(id, open);
    }
  }

  function closeLog(id, open) {
    clearTimeout(open.timer);
    open.row.remove();
    if (open.button) open.button.setAttribute("aria-expanded", "false");
    openLogs.delete(id);
  }

  function toggleLog(jobId, tr, button) {
    const h = window.hotdog;
    const open = openLogs.get(jobId);
    if (open) {
      closeLog(jobId, open);
      return;
    }
    const pre = h.el("pre", { class: "job-log", "aria-label": `log of job ${h.short(jobId)}`,
      tabindex: "0", text: "loading…" });
    const row = h.el("tr", { class: "logs-row", "data-logs-of": jobId },
      h.el("td", { colspan: String(tr.children.length) }, pre));
    tr.after(row);
    button.setAttribute("aria-expanded", "true");
    const entry = { row, pre, button, timer: null, active: true };
    openLogs.set(jobId, entry);
    readLog(jobId, entry);
  }

  async function readLog(jobId, entry) {
    const h = window.hotdog;
    try {
      const text = await h.api("GET", `jobs/${encodeURIComponent(jobId)}/logs?tail=${LOG_LINES}`,
        { text: true });
      const atEnd = entry.pre.scrollTop + entry.pre.clientHeight >= entry.pre.scrollHeight - 4;
      entry.pre.textContent = text || "(nothing logged yet)";
      if (atEnd) entry.pre.scrollTop = entry.pre.scrollHeight;
    } catch (err) {
      entry.pre.textContent = err.message;
    }
    if (openLogs.get(jobId) === entry && entry.active && !document.hidden) {
      entry.timer = setTimeout(() => readLog(jobId, entry), LOG_POLL_MS);
    }
  }

  // ---------------------------------------------------------------- start

  function start() {
    if (!window.hotdog) return; // app.js did not load
    $("storage-refresh").addEventListener("click", refreshStorage);
    document.addEventListener("hotdog:jobs", (ev) => addLogButtons(ev.detail));
    // Only for a key with the admin scope (the panel is hidden otherwise), once app.js knows
    // the key's scopes: a request the key may not make is never sent.
    const allowed = () => window.hotdogScopes.can("admin");
    document.addEventListener("hotdog:scopes", () => {
      if (allowed()) refreshStorage();
    });
    setInterval(() => {
      if (!document.hidden && allowed()) refreshStorage();
    }, REFRESH_MS);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
