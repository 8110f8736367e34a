// What the page offers follows the API key's scopes (GET /keys/me): a panel or button
// marked data-needs="SCOPE" is hidden when the key lacks that scope (style.css, by the
// body's lacks-SCOPE classes), and app.js asks can(SCOPE) before loading what the panel
// shows. The API refuses what a key cannot do anyway (403); this only stops offering it.
"use strict";

window.hotdogScopes = (() => {
  const ALL = ["predict", "read", "train", "admin"];
  let held = new Set(ALL); // until the service says otherwise: everything, as without a key

  // me: GET /keys/me's answer ({scopes, key_required, actor}).
  function apply(me) {
    held = new Set(me.scopes);
    for (const scope of ALL) document.body.classList.toggle(`lacks-${scope}`, !held.has(scope));
    const shown = document.getElementById("key-scopes");
    shown.hidden = !me.key_required;
    shown.textContent = me.key_required ? `this key may: ${me.scopes.join(", ") || "nothing"}` : "";
  }

  return { apply, can: (scope) => held.has(scope) };
})();
