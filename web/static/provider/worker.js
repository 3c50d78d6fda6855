// The DAIG provider's Web Worker. Pages start it through embed.js, which sets `self.DAIG_BASE` (the URL of this
// folder) when the worker runs from a blob on another site; on the DAIG server itself the worker's own URL is used.
"use strict";
(function () {
  var base = self.DAIG_BASE || new URL(".", self.location.href).href;
  try {
    importScripts(base + "daig_provider.js");
  } catch (e) {
    self.postMessage({ type: "status", state: "error", message: "cannot load the provider: " + e });
    return;
  }
  wasm_bindgen({ module_or_path: base + "daig_provider_bg.wasm" })
    .then(function () { wasm_bindgen.start_worker(); })
    .catch(function (e) {
      self.postMessage({ type: "status", state: "error", message: "cannot start the provider: " + e });
    });
})();
