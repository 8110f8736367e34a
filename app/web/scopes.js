// What the page offers follows the API key's scopes (GET /keys/me): an element marked
// data-needs="SCOPE" is hidden when the key lacks that scope (style.css, by the body's
// lacks-SCOPE classes), and api() (app.js) does not send a request the key may not make:
// allows() decides by the service's own table of which scope each request needs, so a
// panel added later is covered without a line here. The API refuses such requests anyway
// (403); this only stops the page from offering and sending them.
"use strict";

window.hotdogScopes = (() => {
  const ALL = ["predict", "read", "train", "admin"];
  let held = new Set(ALL); // until the service says otherwise: everything, as without a key
  let rules = []; // [{methods, path: RegExp, scopes}], the first match decides

  // me: GET /keys/me's answer ({scopes, key_required, actor, rules}).
  function apply(me) {
    held = new Set(me.scopes);
    rules = (me.rules || []).map((r) => ({ methods: r.methods, scopes: r.scopes,
      path: new RegExp(`^(?:${r.path})$`) }));
    for (const scope of ALL) document.body.classList.toggle(`lacks-${scope}`, !held.has(scope));
    const shown = document.getElementById("key-scopes");
    shown.hidden = !me.key_required;
    shown.textContent = me.key_required ? `this key may: ${me.scopes.join(", ") || "nothing"}` : "";
  }

  // The scopes of which the key lacks all that ``method path`` needs ([]: it may make it).
  // ``path`` as api() takes it: relative to the page, e.g. "jobs?limit=200".
  function missing(method, path) {
    const p = `/${path.split("?")[0]}`;
    const rule = rules.find((r) => (!r.methods || r.methods.includes(method)) && r.path.test(p));
    if (!rule || !rule.scopes || !rule.scopes.length) return [];
    return rule.scopes.some((s) => held.has(s)) ? [] : rule.scopes;
  }

  return { apply, missing, can: (scope) => held.has(scope) };
})();
