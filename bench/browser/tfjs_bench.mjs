// Training speed of the DAIG browser engine beside TensorFlow.js, in one headless Chromium run: the MNIST MLP
// (784-64-10, ReLU, softmax cross-entropy, plain SGD) on the same MNIST samples at batch 64, on WebGPU and on the
// CPU (DAIG's reference trainer in wasm; TensorFlow.js's WASM and plain-JS CPU backends). Each engine trains a warm-up
// call, then `rounds` calls of `steps` SGD steps with one read-back per call (what a provider does per lease).
//
//   node bench/browser/tfjs_bench.mjs MNIST_DIR WEB_DIST NODE_MODULES [--webgpu-only|--quick]
//
// `cargo xtask bench browser` builds the pages, installs the npm packages and runs this.
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const [mnistDir, webDist, nodeModules] = process.argv.slice(2);
const quick = process.argv.includes("--quick");
const require = createRequire(path.join(nodeModules, "noop.js"));
const { chromium } = require("playwright-core");

function readNpy(file) {
  const buf = fs.readFileSync(file);
  const headerLen = buf.readUInt16LE(8);
  const header = buf.subarray(10, 10 + headerLen).toString("latin1");
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  return { descr, shape, data: buf.subarray(10 + headerLen) };
}

const images = readNpy(path.join(mnistDir, "images.npy"));
const labels = readNpy(path.join(mnistDir, "labels.npy"));
const n = Math.min(images.shape[0], 4096);
const x = new Float32Array(n * 784);
for (let i = 0; i < n * 784; i++) x[i] = images.data[i] / 255;
const y = new Float32Array(n);
const width = labels.descr.endsWith("8") ? 8 : labels.descr.endsWith("4") ? 4 : 1;
for (let i = 0; i < n; i++) y[i] = width === 8 ? Number(labels.data.readBigInt64LE(i * 8)) : width === 4 ? labels.data.readInt32LE(i * 4) : labels.data[i];

const PAGE = `<!doctype html><meta charset="utf-8"><title>DAIG vs TensorFlow.js</title>
<script src="/tfjs/tfjs/dist/tf.min.js"></script>
<script src="/tfjs/tfjs-backend-webgpu/dist/tf-backend-webgpu.min.js"></script>
<script src="/tfjs/tfjs-backend-wasm/dist/tf-backend-wasm.min.js"></script>
<script src="/daig/daig_provider.js"></script><body>bench</body>`;

const types = { ".js": "text/javascript", ".wasm": "application/wasm", ".html": "text/html" };
const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://x");
  let file = null;
  if (url.pathname === "/") { res.writeHead(200, { "content-type": "text/html" }); return res.end(PAGE); }
  if (url.pathname === "/data/x.bin") { res.writeHead(200); return res.end(Buffer.from(x.buffer)); }
  if (url.pathname === "/data/y.bin") { res.writeHead(200); return res.end(Buffer.from(y.buffer)); }
  if (url.pathname.startsWith("/tfjs/")) file = path.join(nodeModules, "@tensorflow", url.pathname.slice(6));
  if (url.pathname.startsWith("/daig/")) file = path.join(webDist, "provider", url.pathname.slice(6));
  if (!file || !fs.existsSync(file)) { res.writeHead(404); return res.end(); }
  res.writeHead(200, { "content-type": types[path.extname(file)] || "application/octet-stream" });
  fs.createReadStream(file).pipe(res);
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const base = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: process.env.DAIG_CHROMIUM || "/usr/lib/chromium/chromium", headless: true,
  args: ["--no-sandbox", "--enable-unsafe-webgpu", "--disable-dev-shm-usage", "--no-first-run"],
});
const page = await browser.newPage();
page.on("console", (m) => { if (m.type() === "error") console.error("page:", m.text()); });
await page.goto(base + "/");
const config = { batch: 64, steps: 8, rounds: quick ? 2 : 6 };

const results = await page.evaluate(async (config) => {
  const MODEL = JSON.stringify({ input_shape: [784], layers: [{ type: "dense", units: 64, activation: "relu" },
    { type: "dense", units: 10 }], loss: "cross_entropy" });
  const x = new Float32Array(await (await fetch("/data/x.bin")).arrayBuffer());
  const y = new Float32Array(await (await fetch("/data/y.bin")).arrayBuffer());
  const n = y.length;
  await wasm_bindgen({ module_or_path: "/daig/daig_provider_bg.wasm" });
  const out = [];
  for (const gpu of [true, false]) {
    try {
      const [rate, backend] = await wasm_bindgen.benchmark_engine(MODEL, x, y, config.batch, config.steps, config.rounds, gpu);
      out.push({ engine: "DAIG", backend: gpu ? "webgpu" : "cpu", detail: backend, samples_per_sec: rate });
    } catch (e) { out.push({ engine: "DAIG", backend: gpu ? "webgpu" : "cpu", error: String(e) }); }
  }
  tf.wasm.setWasmPaths("/tfjs/tfjs-backend-wasm/dist/");
  for (const backend of ["webgpu", "wasm", "cpu"]) {
    try {
      if (!(await tf.setBackend(backend))) throw new Error("backend unavailable");
      await tf.ready();
      const model = tf.sequential({ layers: [tf.layers.dense({ inputShape: [784], units: 64, activation: "relu" }),
        tf.layers.dense({ units: 10 })] });
      const optimizer = tf.train.sgd(0.01);
      const xs = tf.tensor2d(x, [n, 784]);
      const ys = tf.oneHot(tf.tensor1d(y, "int32"), 10).toFloat();
      const perCall = config.batch * config.steps;
      let offset = 0;
      const call = async () => {
        for (let s = 0; s < config.steps; s++) {
          const start = (offset + s * config.batch) % (n - config.batch);
          tf.tidy(() => {
            const xb = xs.slice([start, 0], [config.batch, 784]);
            const yb = ys.slice([start, 0], [config.batch, 10]);
            optimizer.minimize(() => tf.losses.softmaxCrossEntropy(yb, model.apply(xb)));
          });
        }
        offset += perCall;
        // Read the weights back once per call, as a provider reads its delta.
        await model.layers[0].getWeights()[0].data();
      };
      await call();
      const t0 = performance.now();
      for (let r = 0; r < config.rounds; r++) await call();
      const seconds = (performance.now() - t0) / 1000;
      out.push({ engine: "TensorFlow.js", backend, samples_per_sec: (config.rounds * perCall) / seconds });
      xs.dispose(); ys.dispose(); model.dispose();
    } catch (e) { out.push({ engine: "TensorFlow.js", backend, error: String(e) }); }
  }
  return { out, ua: navigator.userAgent };
}, config);
await browser.close();
server.close();

const rate = (engine, backend) => results.out.find((r) => r.engine === engine && r.backend === backend)?.samples_per_sec;
console.log(`Chromium ${results.ua.match(/Chrome\/([\d.]+)/)?.[1] ?? "?"}, MNIST MLP 784-64-10, batch ${config.batch}, ` +
  `${config.steps} steps per call, ${config.rounds} calls after a warm-up; samples/s (higher is better)`);
console.log("| engine | backend | samples/s | detail |\n|---|---|---:|---|");
for (const r of results.out) {
  console.log(`| ${r.engine} | ${r.backend} | ${r.samples_per_sec ? r.samples_per_sec.toFixed(0) : "–"} | ${r.detail || r.error || ""} |`);
}
for (const [daig, tfjs] of [["webgpu", "webgpu"], ["cpu", "wasm"], ["cpu", "cpu"]]) {
  const a = rate("DAIG", daig), b = rate("TensorFlow.js", tfjs);
  if (a && b) console.log(`DAIG ${daig} / TensorFlow.js ${tfjs}: ${(a / b).toFixed(2)}x`);
}
