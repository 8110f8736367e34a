// The Classify panel's explanations: with "Show where the model looked" ticked, each photo's
// card shows the Grad-CAM overlay (the photo, the heatmap, the white centre-crop box the
// model sees), how much of the evidence lies inside that box, and a toggle to the
// prediction on the whole photo (crop=full). app.js calls prepare() and show().
"use strict";

(() => {
  const page = () => window.hotdogPage; // api, el, pct from app.js

  function overlaySrc(e) {
    return `data:image/png;base64,${e.overlay_png}`;
  }

  function note(e) {
    const coverage = e.crop_coverage === null ? "no evidence"
      : `${page().pct(e.crop_coverage)} of the evidence inside the crop box`;
    return `heatmap of ${e.class}: ${coverage}`;
  }

  function show(card, p, file, model) {
    const e = p.explanation;
    if (!e) return;
    const { el, api, pct } = page();
    const thumb = card.card.querySelector(".thumb");
    const overlay = el("img", { class: "thumb overlay", alt: `where the model looked in ${p.filename}: ${note(e)}` });
    overlay.src = overlaySrc(e);
    thumb.replaceWith(overlay);
    const text = el("p", { class: "explain-note", text: note(e) });
    const warning = el("p", { class: "explain-warning", role: "status", text: e.warning || "" });
    warning.hidden = !e.warning;
    const full = el("p", { class: "explain-full", "aria-live": "polite" });
    full.hidden = true;
    const button = el("button", { type: "button", class: "secondary explain-toggle", "aria-pressed": "false",
      text: "See the whole photo's prediction" });
    const views = { center: { e, line: "" }, full: null };
    let showing = "center";

    function render(which) {
      const v = views[which];
      overlay.src = overlaySrc(v.e);
      overlay.alt = `where the model looked in ${p.filename}: ${note(v.e)}`;
      text.textContent = note(v.e);
      warning.textContent = v.e.warning || "";
      warning.hidden = !v.e.warning;
      full.textContent = v.line;
      full.hidden = which !== "full";
      button.setAttribute("aria-pressed", String(which === "full"));
      button.textContent = which === "full" ? "Back to the centre crop" : "See the whole photo's prediction";
      showing = which;
    }

    button.addEventListener("click", async () => {
      if (showing === "full") return render("center");
      if (!views.full) {
        button.disabled = true;
        const form = new FormData();
        form.append("file", file, file.name);
        form.append("crop", "full");
        form.append("explain", "true");
        if (model) form.append("model", model);
        try {
          const res = await api("POST", "predict", { form });
          const q = res.predictions[0];
          views.full = { e: q.explanation, label: q.label,
            line: `whole photo: ${q.label} (${pct(q.probabilities[q.label])})` };
        } catch (err) {
          full.hidden = false;
          full.textContent = `the whole photo could not be classified: ${err.message}`;
          return;
        } finally {
          button.disabled = false;
        }
      }
      render("full");
    });
    card.body.append(text, warning, full, button);
  }

  window.hotdogExplain = {
    prepare(form) {
      const box = document.getElementById("explain-toggle");
      if (box && box.checked) form.append("explain", "true");
    },
    show,
  };
})();
