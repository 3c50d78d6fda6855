/*! DAIG embed script: lets a site's visitors lend their GPU to a DAIG training project, with consent.
 *
 *   <script src="https://SERVER/embed.js" data-project="ID" data-site-key="KEY" async></script>
 *
 * Options (data- attributes): project, site-key, throttle (share of time spent computing, 0.05 to 1, default 0.5),
 * run-when-hidden ("true": keep computing in a hidden tab), target (a CSS selector: show the widget inside that
 * element instead of the corner), software ("true": accept a software GPU adapter; for tests).
 *
 * Nothing computes before the visitor clicks "Contribute"; the choice is remembered for this site (localStorage)
 * until the visitor stops. The only global name is `DAIG`. Styles live in a shadow root (a constructed style
 * sheet, which Content-Security-Policy style-src does not govern). Needs, under a CSP: script-src SERVER
 * 'wasm-unsafe-eval'; worker-src blob:; connect-src SERVER (and its ws:/wss: URL).
 */
(function () {
  "use strict";
  if (window.DAIG && window.DAIG.Provider) {
    if (document.currentScript) window.DAIG.mount(document.currentScript);
    return;
  }
  var script = document.currentScript;
  // The DAIG server: where this script came from.
  var SERVER = script && script.src ? script.src.replace(/\/embed\.js(\?.*)?$/, "") : location.origin;
  var instances = [];

  /**
   * This browser's provider key for SERVER (64 hex digits), created once and kept in localStorage, so that the
   * server remembers the visitor's standing and credit across visits. Null where storage is unavailable
   * (private windows may refuse it): the provider then starts as new each time.
   */
  function providerKey() {
    var name = "daig-provider-key:" + SERVER;
    try {
      var key = localStorage.getItem(name);
      if (key && /^[0-9a-f]{64}$/.test(key)) return key;
      var bytes = new Uint8Array(32);
      crypto.getRandomValues(bytes);
      key = "";
      for (var i = 0; i < bytes.length; i++) key += (bytes[i] < 16 ? "0" : "") + bytes[i].toString(16);
      localStorage.setItem(name, key);
      return key;
    } catch (e) {
      return null;
    }
  }

  function consentKey(project, siteKey) {
    return "daig-consent:" + SERVER + ":" + (project || "") + ":" + (siteKey || "");
  }

  /** One provider: a Web Worker running the DAIG wasm, driven by consent, visibility and battery. */
  function Provider(options) {
    this.options = options || {};
    this.status = { state: "idle" };
    this.worker = null;
    this.userPaused = false;
    this.autoPaused = {};
    this.listeners = [];
    instances.push(this);
  }

  Provider.prototype.onStatus = function (listener) {
    this.listeners.push(listener);
  };

  Provider.prototype._emit = function (status) {
    this.status = status;
    for (var i = 0; i < this.listeners.length; i++) {
      try { this.listeners[i](status); } catch (e) { /* a listener's error is its own */ }
    }
  };

  Provider.prototype._createWorker = function () {
    var base = SERVER + "/provider/";
    if (new URL(base, location.href).origin === location.origin) {
      return new Worker(base + "worker.js");
    }
    // Workers must come from the page's origin: a blob that loads the DAIG script (needs worker-src blob:).
    var source = "self.DAIG_BASE=" + JSON.stringify(base) + ";importScripts(" + JSON.stringify(base + "worker.js") + ");";
    var url = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
    var worker = new Worker(url);
    setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
    return worker;
  };

  /** Starts computing (call it from the visitor's click). */
  Provider.prototype.start = function () {
    if (this.worker) return;
    var self = this;
    var o = this.options;
    this._emit({ state: "starting" });
    try {
      this.worker = this._createWorker();
    } catch (e) {
      this._emit({ state: "error", message: "cannot start a worker: " + e });
      return;
    }
    this.worker.onerror = function (e) {
      self._emit({ state: "error", message: "the provider failed: " + (e.message || e) });
    };
    this.worker.onmessage = function (event) {
      var m = event.data || {};
      if (m.type === "ready") {
        self.worker.postMessage({
          type: "start", server: SERVER, project: o.project ? Number(o.project) : null, siteKey: o.siteKey || null,
          providerKey: providerKey(),
          throttle: o.throttle || 0.5, software: !!o.software, cacheBytes: o.cacheBytes || 134217728
        });
        self._applyPause();
      } else if (m.type === "status") {
        self._emit(m);
      }
    };
    this._watch();
  };

  Provider.prototype._applyPause = function () {
    if (!this.worker) return;
    var auto = false;
    for (var k in this.autoPaused) if (this.autoPaused[k]) auto = true;
    var paused = this.userPaused || auto;
    if (paused !== this._paused) {
      this._paused = paused;
      this.worker.postMessage({ type: paused ? "pause" : "resume" });
    }
  };

  Provider.prototype.pause = function () { this.userPaused = true; this._applyPause(); };
  Provider.prototype.resume = function () { this.userPaused = false; this._applyPause(); };
  Provider.prototype.setThrottle = function (share) {
    this.options.throttle = share;
    if (this.worker) this.worker.postMessage({ type: "throttle", value: share });
  };
  Provider.prototype.setRunWhenHidden = function (on) {
    this.options.runWhenHidden = on;
    this.autoPaused.hidden = !on && document.visibilityState === "hidden";
    this._applyPause();
  };

  /** Stops computing: the server gets its leases back at once. */
  Provider.prototype.stop = function () {
    var worker = this.worker;
    this.worker = null;
    this._paused = undefined;
    if (worker) {
      worker.postMessage({ type: "stop" });
      setTimeout(function () { worker.terminate(); }, 2000);
    }
    this._emit({ state: "stopped" });
  };

  // Pause while the tab is hidden (unless asked not to) and while the battery discharges (where the browser says).
  Provider.prototype._watch = function () {
    var self = this;
    if (this._watching) return;
    this._watching = true;
    document.addEventListener("visibilitychange", function () {
      self.autoPaused.hidden = !self.options.runWhenHidden && document.visibilityState === "hidden";
      self._applyPause();
    });
    this.autoPaused.hidden = !this.options.runWhenHidden && document.visibilityState === "hidden";
    if (navigator.getBattery) {
      navigator.getBattery().then(function (battery) {
        var check = function () {
          self.autoPaused.battery = !battery.charging;
          self._applyPause();
        };
        battery.addEventListener("chargingchange", check);
        check();
      }, function () {});
    }
  };

  var CSS = [
    ":host{all:initial}",
    ".card{font:14px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1b1f24;background:#fff;",
    "border:1px solid #d0d7de;border-radius:10px;box-shadow:0 4px 16px rgba(0,0,0,.12);padding:12px 14px;max-width:320px}",
    ".corner{position:fixed;right:16px;bottom:16px;z-index:2147483000}",
    "h2{font-size:15px;margin:0 0 6px}p{margin:0 0 8px}",
    "button{font:inherit;border-radius:6px;border:1px solid #8c959f;background:#f6f8fa;color:inherit;padding:4px 10px;cursor:pointer;margin-right:6px}",
    "button.primary{background:#1f6feb;border-color:#1f6feb;color:#fff}",
    "button:focus-visible,input:focus-visible{outline:2px solid #1f6feb;outline-offset:2px}",
    "dl{display:grid;grid-template-columns:auto auto;gap:2px 10px;margin:6px 0}dt{color:#57606a}dd{margin:0;text-align:right}",
    "label{display:block;margin:6px 0}.small{font-size:12px;color:#57606a}.error{color:#cf222e}",
    "@media (prefers-color-scheme:dark){.card{background:#161b22;color:#e6edf3;border-color:#30363d}",
    "button{background:#21262d;border-color:#30363d}dt,.small{color:#8b949e}}"
  ].join("");

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    for (var k in attrs || {}) {
      if (k === "text") node.textContent = attrs[k];
      else node.setAttribute(k, attrs[k]);
    }
    (children || []).forEach(function (c) { node.appendChild(c); });
    return node;
  }

  /** The consent widget for a <script data-project data-site-key> tag. */
  function mount(tag) {
    var d = tag.dataset || {};
    if (tag.__daigMounted || !(d.project || d.siteKey)) return null;
    tag.__daigMounted = true;
    var options = {
      project: d.project || null, siteKey: d.siteKey || null,
      throttle: Math.min(1, Math.max(0.05, parseFloat(d.throttle) || 0.5)),
      runWhenHidden: d.runWhenHidden === "true", software: d.software === "true"
    };
    var host = el("div", { "data-daig-widget": "" });
    var target = d.target && document.querySelector(d.target);
    (target || document.body).appendChild(host);
    var root = host.attachShadow({ mode: "open" });
    if (root.adoptedStyleSheets !== undefined && window.CSSStyleSheet) {
      var sheet = new CSSStyleSheet();
      sheet.replaceSync(CSS);
      root.adoptedStyleSheets = [sheet];
    } else {
      root.appendChild(el("style", { text: CSS }));
    }
    var card = el("section", { "class": "card" + (target ? "" : " corner"), role: "region", "aria-label": "DAIG contribution" });
    root.appendChild(card);
    var provider = new Provider(options);
    var key = consentKey(options.project, options.siteKey);
    var title = "Help train a machine-learning model";

    function consented() { try { return localStorage.getItem(key) === "granted"; } catch (e) { return false; } }
    function remember(on) { try { if (on) localStorage.setItem(key, "granted"); else localStorage.removeItem(key); } catch (e) {} }

    function renderAsk(message) {
      card.textContent = "";
      card.appendChild(el("h2", { text: title }));
      card.appendChild(el("p", { text: "This site invites you to lend your device's GPU, in this tab only, to train a model " +
        "on DAIG. Nothing runs until you agree; you can pause or stop at any time." }));
      if (message) card.appendChild(el("p", { "class": "error", role: "alert", "data-daig": "message", text: message }));
      var yes = el("button", { "class": "primary", type: "button", "data-daig": "contribute", text: "Contribute" });
      var no = el("button", { type: "button", "data-daig": "dismiss", text: "Not now" });
      yes.addEventListener("click", function () { remember(true); provider.start(); renderRunning(); });
      no.addEventListener("click", function () { host.remove(); });
      card.appendChild(yes);
      card.appendChild(no);
    }

    function renderRefused(message) {
      card.textContent = "";
      card.appendChild(el("h2", { text: "DAIG" }));
      card.appendChild(el("p", { "class": "error", role: "alert", "data-daig": "message", text: message }));
    }

    var fields = {};
    function renderRunning() {
      card.textContent = "";
      card.appendChild(el("h2", { text: title }));
      var state = el("p", { "aria-live": "polite", "data-daig": "state", text: "Starting…" });
      card.appendChild(state);
      fields.state = state;
      var dl = el("dl");
      [["backend", "Computing on"], ["batches", "Batches done"], ["rate", "Samples/s"], ["applied", "Contributions applied"],
       ["credit", "Credit (samples)"]].forEach(function (f) {
        dl.appendChild(el("dt", { text: f[1] }));
        var dd = el("dd", { "data-daig": f[0], text: "–" });
        dl.appendChild(dd);
        fields[f[0]] = dd;
      });
      card.appendChild(dl);
      var slider = el("input", { type: "range", min: "10", max: "100", step: "10", value: String(Math.round(options.throttle * 100)),
        "aria-label": "Share of time spent computing", "data-daig": "throttle" });
      var share = el("span", { text: Math.round(options.throttle * 100) + "%" });
      slider.addEventListener("input", function () {
        share.textContent = slider.value + "%";
        provider.setThrottle(Number(slider.value) / 100);
      });
      card.appendChild(el("label", {}, [document.createTextNode("Compute "), share, document.createTextNode(" of the time "), slider]));
      var pause = el("button", { type: "button", "data-daig": "pause", text: "Pause" });
      pause.addEventListener("click", function () {
        if (provider.userPaused) { provider.resume(); pause.textContent = "Pause"; } else { provider.pause(); pause.textContent = "Resume"; }
      });
      var stop = el("button", { type: "button", "data-daig": "stop", text: "Stop" });
      stop.addEventListener("click", function () { remember(false); provider.stop(); renderAsk(); });
      card.appendChild(pause);
      card.appendChild(stop);
      card.appendChild(el("p", { "class": "small", text: "Pauses while this tab is hidden or your battery discharges." }));
    }

    provider.onStatus(function (s) {
      if (!fields.state || !card.contains(fields.state)) return;
      var words = { starting: "Starting…", connecting: "Connecting…", waiting: "Waiting for work…", training: "Training",
        paused: "Paused", stopped: "Stopped", error: "Error" };
      fields.state.textContent = (words[s.state] || s.state) + (s.state === "error" && s.message ? ": " + s.message : "");
      if (s.backend) fields.backend.textContent = (s.backend === "webgpu" ? "WebGPU " : "CPU ") + (s.adapter || "");
      if (s.batches !== undefined) {
        fields.batches.textContent = String(s.batches);
        fields.rate.textContent = s.samplesPerSec ? s.samplesPerSec.toFixed(0) : "–";
        fields.applied.textContent = String(s.applied);
        fields.credit.textContent = String(s.credit);
      }
    });

    var start = function () { if (consented()) { provider.start(); renderRunning(); } else { renderAsk(); } };
    if (options.project) {
      var url = SERVER + "/api/public/projects/" + encodeURIComponent(options.project) +
        (options.siteKey ? "?site_key=" + encodeURIComponent(options.siteKey) : "");
      fetch(url, { credentials: "omit" }).then(function (r) {
        if (!r.ok) throw new Error(String(r.status));
        return r.json();
      }).then(function (p) {
        title = "Help train “" + p.name + "”";
        if (p.state === "finished" || p.state === "cancelled") renderRefused("This project is " + p.state + ".");
        else start();
      }, function (e) {
        renderRefused(e && e.message === "404"
          ? "This project is not open for contributions yet."
          : "This project does not accept contributions from this site.");
      });
    } else {
      start();
    }
    return provider;
  }

  window.DAIG = { Provider: Provider, mount: mount, instances: instances, server: SERVER, version: 1 };
  if (script) {
    if (document.body) mount(script);
    else document.addEventListener("DOMContentLoaded", function () { mount(script); });
  }
})();
