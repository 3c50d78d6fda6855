// Browser end-to-end scenarios of the DAIG provider, driven with playwright-core in headless Chromium. Run by
// tests/tests/browser_provider.rs, which starts the server and checks its records; this script drives the pages
// and prints one JSON line with what it saw.
//
//   node provider.mjs '{"scenario": "...", "server": "http://127.0.0.1:PORT", "project": 1, ...}'
//
// Scenarios: "contribute" (the contribute page; `webgpu` true or false), "embed" (a page on another origin, served
// here, embeds the script under a strict CSP; `allowed` says whether the project lists that origin), "close-tab"
// (close the contribute page while it holds leases). Screenshots go to `artifacts`.
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const args = JSON.parse(process.argv[2]);
const require = createRequire(path.join(process.env.DAIG_NODE_MODULES, "noop.js"));
const { chromium } = require("playwright-core");

const CHROMIUM = process.env.DAIG_CHROMIUM || "/usr/lib/chromium/chromium";
const LIMIT = args.timeoutMs || 240000;

async function browser(webgpu) {
  const flags = ["--no-sandbox", "--no-first-run", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-quic", "--disable-dev-shm-usage"];
  if (webgpu) flags.push("--enable-unsafe-webgpu");
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: flags });
}

function collect(page, log) {
  page.on("console", (m) => log.push(`console.${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => log.push(`pageerror: ${e}`));
}

async function contribute() {
  const b = await browser(args.webgpu);
  const log = [];
  try {
    const page = await b.newPage();
    collect(page, log);
    await page.goto(`${args.server}/contribute?software=1`);
    // The project is listed; nothing runs before the click.
    const button = page.locator(`button[data-project="${args.project}"]`);
    await button.waitFor({ timeout: 30000 });
    const before = await page.evaluate(() => (window.DAIG.instances || []).length);
    await page.screenshot({ path: path.join(args.artifacts, `contribute-list-${args.webgpu ? "webgpu" : "cpu"}.png`), fullPage: true });
    const clicked = Date.now();
    await button.click();
    // Time from consent to the first applied contribution (reported, never asserted: machines differ).
    await page.waitForFunction(() => Number(document.getElementById("f-applied").textContent) >= 1, null, { timeout: LIMIT, polling: 20 });
    const firstContributionMs = Date.now() - clicked;
    await page.waitForFunction((n) => Number(document.getElementById("f-applied").textContent) >= n, args.applied || 3, { timeout: LIMIT });
    const figures = await page.evaluate(() => ({
      backend: document.getElementById("f-backend").textContent,
      applied: Number(document.getElementById("f-applied").textContent),
      credit: Number(document.getElementById("f-credit").textContent),
      batches: Number(document.getElementById("f-batches").textContent),
      provider: window.daigProvider.status.provider,
      remembered: localStorage.getItem("daig-contribute-choice"),
    }));
    await page.screenshot({ path: path.join(args.artifacts, `contribute-${args.webgpu ? "webgpu" : "cpu"}.png`), fullPage: true });
    // Pause: the server gets the leases back; resume continues.
    await page.click("#pause");
    await page.waitForFunction(() => document.getElementById("state").dataset.state === "paused", null, { timeout: 30000 });
    const pausedAt = Number(await page.textContent("#f-applied"));
    await page.click("#pause");
    await page.waitForFunction((n) => Number(document.getElementById("f-applied").textContent) > n, pausedAt, { timeout: LIMIT });
    // A hidden tab pauses by itself and resumes when visible again (unless "keep computing while hidden").
    const setVisibility = (state) => page.evaluate((state) => {
      Object.defineProperty(document, "visibilityState", { value: state, configurable: true });
      document.dispatchEvent(new Event("visibilitychange"));
    }, state);
    await setVisibility("hidden");
    await page.waitForFunction(() => document.getElementById("state").dataset.state === "paused", null, { timeout: 30000 });
    const hiddenState = await page.evaluate(() => document.getElementById("state").dataset.state);
    const hiddenAt = Number(await page.textContent("#f-applied"));
    await setVisibility("visible");
    await page.waitForFunction((n) => Number(document.getElementById("f-applied").textContent) > n, hiddenAt, { timeout: LIMIT });
    // Shards are kept in Cache Storage, keyed by hash, for the next visit.
    const cachedShards = await page.evaluate(async () => (await (await caches.open("daig-shards-v1")).keys()).length);
    await page.click("#stop");
    return { ok: true, before, figures, firstContributionMs, cachedShards, hiddenState, log };
  } finally {
    await b.close();
  }
}

const EMBED_CSP = (server) =>
  `default-src 'none'; script-src ${server} 'wasm-unsafe-eval'; worker-src blob:; connect-src ${server} ${server.replace("http", "ws")}; img-src data:`;

function servePage(port, server, body) {
  return new Promise((resolve) => {
    const s = http.createServer((req, res) => {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8", "content-security-policy": EMBED_CSP(server) });
      res.end(body);
    });
    s.listen(port, "127.0.0.1", () => resolve(s));
  });
}

async function embed() {
  const page_html = `<!doctype html><html><head><meta charset="utf-8"><title>A blog</title></head><body>
<h1>A blog that embeds DAIG</h1><p>Some article text.</p>
<script src="${args.server}/embed.js" data-project="${args.project}" data-site-key="${args.siteKey}" data-software="true" async></script>
</body></html>`;
  const site = await servePage(args.sitePort, args.server, page_html);
  const b = await browser(true);
  const log = [];
  try {
    const page = await b.newPage();
    collect(page, log);
    await page.goto(`http://localhost:${args.sitePort}/`);
    const widget = page.locator("[data-daig-widget]");
    if (!args.allowed) {
      const message = widget.locator('[data-daig="message"]');
      await message.waitFor({ timeout: 30000 });
      const text = await message.textContent();
      // The socket refuses this origin too, whatever the page's own script tries.
      const refusal = await page.evaluate(({ project, siteKey }) => new Promise((resolve) => {
        const p = new window.DAIG.Provider({ project, siteKey, software: true });
        p.onStatus((s) => { if (s.state === "error" || s.state === "stopped") resolve(s); });
        p.start();
      }), { project: args.project, siteKey: args.siteKey });
      await page.screenshot({ path: path.join(args.artifacts, "embed-refused.png") });
      return { ok: true, text, refusal, log };
    }
    const consent = widget.locator('[data-daig="contribute"]');
    await consent.waitFor({ timeout: 30000 });
    const globals = await page.evaluate(() => Object.keys(window).filter((k) => k.toUpperCase().startsWith("DAIG")));
    const beforeClick = await page.evaluate(() => window.DAIG.instances.map((p) => p.status.state));
    await page.screenshot({ path: path.join(args.artifacts, "embed-consent.png") });
    await consent.click();
    await page.waitForFunction((n) => {
      const root = document.querySelector("[data-daig-widget]").shadowRoot;
      return Number(root.querySelector('[data-daig="applied"]').textContent) >= n;
    }, args.applied || 2, { timeout: LIMIT });
    const figures = await page.evaluate(() => {
      const root = document.querySelector("[data-daig-widget]").shadowRoot;
      const get = (k) => root.querySelector(`[data-daig="${k}"]`).textContent;
      return { backend: get("backend"), applied: Number(get("applied")), credit: Number(get("credit")),
        provider: window.DAIG.instances[0].status.provider };
    });
    await page.screenshot({ path: path.join(args.artifacts, "embed-widget.png") });
    // The choice is remembered on this site: a reload starts without asking.
    await page.reload();
    await page.waitForFunction(() => {
      const host = document.querySelector("[data-daig-widget]");
      return host && host.shadowRoot.querySelector('[data-daig="state"]');
    }, null, { timeout: 30000 });
    return { ok: true, globals, beforeClick, figures, log };
  } finally {
    await b.close();
    site.close();
  }
}

async function closeTab() {
  const b = await browser(true);
  const log = [];
  try {
    const page = await b.newPage();
    collect(page, log);
    await page.goto(`${args.server}/contribute?software=1&project=${args.project}`);
    await page.click(`button[data-project="${args.project}"]`);
    // Keep computing while hidden: closing the tab then drops the socket without a goodbye.
    await page.check("#hidden-run");
    await page.waitForFunction(() => window.daigProvider && window.daigProvider.status.batches >= 1, null, { timeout: LIMIT });
    const provider = await page.evaluate(() => window.daigProvider.status.provider);
    await page.close();
    return { ok: true, provider, log };
  } finally {
    await b.close();
  }
}

const scenarios = { contribute, embed, "close-tab": closeTab };
const timer = setTimeout(() => { console.log(JSON.stringify({ ok: false, error: "timed out" })); process.exit(2); }, LIMIT + 60000);
try {
  const result = await scenarios[args.scenario]();
  console.log(JSON.stringify(result));
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e && e.stack || e) }));
  process.exitCode = 1;
}
clearTimeout(timer);
