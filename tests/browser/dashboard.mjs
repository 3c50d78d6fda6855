// The dashboard in headless Chromium, driven by Playwright, against a real server with a native provider
// (started by tests/tests/dashboard.rs, which passes everything through the environment):
//
//   DAIG_URL            the server, serving the built dashboard at /
//   DAIG_MNIST          the folder with images.npy and labels.npy
//   DAIG_ARTIFACTS      where screenshots, the downloaded model and results.json go
//   DAIG_NODE_MODULES   the node_modules folder holding playwright-core
//   DAIG_CHROMIUM       the Chromium binary (default /usr/lib/chromium/chromium)
//
// Each step names what it checks; the first failure ends the run with exit code 1 and a screenshot
// `failure.png`. On success it writes results.json for the Rust test to check the downloaded model.

import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) {
    console.error(`dashboard.mjs: the environment variable ${name} is required`);
    process.exit(2);
  }
  return value;
};

const base = env('DAIG_URL');
const mnist = env('DAIG_MNIST');
const artifacts = env('DAIG_ARTIFACTS');
const nodeModules = env('DAIG_NODE_MODULES');
const chromiumPath = env('DAIG_CHROMIUM', '/usr/lib/chromium/chromium');
fs.mkdirSync(artifacts, { recursive: true });

let chromium;
try {
  chromium = createRequire(path.join(nodeModules, 'noop.js'))('playwright-core').chromium;
} catch (e) {
  console.error(`dashboard.mjs: cannot load playwright-core from ${nodeModules} (set DAIG_NODE_MODULES): ${e.message}`);
  process.exit(2);
}

const STEP_TIMEOUT_MS = 30_000;
const TRAIN_TIMEOUT_MS = 300_000;
const user = { name: 'ada', email: 'ada@example.org', password: 'correct horse battery' };
const results = { username: user.name, password: user.password, steps: [] };

const browser = await chromium.launch({
  executablePath: chromiumPath,
  headless: true,
  args: ['--no-sandbox', '--no-first-run', '--disable-background-networking', '--disable-component-update',
         '--disable-sync', '--disable-quic'],
});
const pageErrors = [];
let current;

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(artifacts, `${name}.png`), fullPage: true });
}

async function step(name, body) {
  const started = Date.now();
  process.stderr.write(`step: ${name}\n`);
  await body();
  results.steps.push({ name, ms: Date.now() - started });
}

async function newPage(options = {}) {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 }, ...options });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  page.on('pageerror', (e) => pageErrors.push(`${page.url()}: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') process.stderr.write(`console: ${m.text()}\n`); });
  current = page;
  return page;
}

async function text(page, selector) {
  return (await page.locator(selector).innerText()).trim();
}

try {
  const page = await newPage();

  await step('a visitor is told what DAIG is, and the first Tab reaches the skip link', async () => {
    await page.goto(`${base}/`);
    await page.locator('#landing').waitFor();
    for (const href of ['/contribute', '/sites', '/signup', '/login']) {
      check(await page.locator(`#landing a[href="${href}"]`).count() === 1, `the landing page has no link to ${href}`);
    }
    check(/GPU/.test(await text(page, '#landing')), 'the landing page does not say what DAIG is');
    await page.keyboard.press('Tab');
    const focused = await page.evaluate(() => document.activeElement?.textContent);
    check(focused === 'Skip to content', `the first Tab focused ${JSON.stringify(focused)}, not the skip link`);
    await shot(page, 'landing');
    // A page that needs an account leads to the log-in form, and back after it.
    await page.goto(`${base}/tokens`);
    await page.waitForURL(/\/login\?next=/);
    await page.locator('h1', { hasText: 'Log in' }).waitFor();
    await shot(page, 'login');
  });

  await step('sign up', async () => {
    await page.getByRole('link', { name: 'Sign up' }).first().click();
    await page.locator('h1', { hasText: 'Sign up' }).waitFor();
    await page.getByLabel('Username').fill(user.name);
    await page.getByLabel('E-mail').fill(user.email);
    await page.getByLabel('Password', { exact: true }).fill(user.password);
    await page.getByRole('button', { name: 'Sign up' }).click();
    await page.locator('h1', { hasText: 'Projects' }).waitFor();
    check((await text(page, '#nav-links .who')) === user.name, 'the navigation names the user');
    await page.getByText('No projects yet').waitFor();
    await shot(page, 'projects-empty');
  });

  await step('an invalid model shows the error at its layer', async () => {
    await page.getByRole('link', { name: 'New project' }).first().click();
    await page.locator('h1', { hasText: 'New project' }).waitFor();
    await page.getByLabel('Project name').fill('mnist');
    await page.locator('#layer-1-units').fill('0');
    // Submitted from the keyboard: focus lands on the error summary, in view.
    await page.getByLabel('Project name').press('Enter');
    await page.locator('#layer-1-errors li').first().waitFor();
    const focus = await page.evaluate(() => {
      const a = document.activeElement;
      const box = a.getBoundingClientRect();
      return { id: a.id, inView: box.top >= 0 && box.bottom <= window.innerHeight };
    });
    check(focus.id === 'project-alert' && focus.inView, `after the failed submit focus is on ${JSON.stringify(focus)}`);
    const error = await text(page, '#layer-1-errors');
    check(error.includes('units must be at least 1'), `layer 1 shows ${JSON.stringify(error)}`);
    check((await page.locator('#layer-0-errors li').count()) === 0, 'layer 0 shows no error');
    check(await page.locator('#layer-1.invalid').count() === 1, 'layer 1 is marked invalid');
    check((await text(page, '#project-alert')).includes('not created'), 'the form says the project was not created');
    await shot(page, 'new-project-invalid-model');
  });

  let projectId;
  await step('create the MNIST MLP project with the MNIST data, uploaded with progress bars', async () => {
    await page.locator('#layer-1-units').fill('10');
    // Four epochs in batches of 16: long enough for the page to show training move, short on one CPU.
    await page.getByLabel('Epochs', { exact: true }).fill('4');
    await page.getByLabel('Batch size', { exact: true }).fill('16');
    await page.getByLabel('Learning rate', { exact: true }).fill('0.003');
    await page.getByText('Advanced settings').click();
    await page.getByLabel('Samples per shard').fill('1000');
    await page.locator('#ds-features').setInputFiles(path.join(mnist, 'images.npy'));
    await page.locator('#ds-labels').setInputFiles(path.join(mnist, 'labels.npy'));
    await shot(page, 'new-project');
    await page.getByRole('button', { name: 'Create project' }).click();
    await page.locator('#ds-features-bar').waitFor({ state: 'attached' });
    await page.waitForURL(/\/projects\/\d+$/, { timeout: 120_000 });
    projectId = Number(new URL(page.url()).pathname.split('/').pop());
    results.project_id = projectId;
    await page.locator('#project[data-state="draft"]').waitFor();
    const dataset = await text(page, '#dataset-summary');
    check(dataset.includes('7,200 training') && dataset.includes('800 validation'), `the dataset summary reads ${JSON.stringify(dataset)}`);
    await shot(page, 'project-draft');
  });

  await step("a draft's page stays Live while its idle stream is renewed", async () => {
    // The server ends an idle draft's stream every few seconds and the browser reopens it within one: the page
    // must not flicker to "Reconnecting…" each time.
    await page.evaluate(() => {
      window.liveTexts = [];
      const live = document.getElementById('live');
      new MutationObserver(() => window.liveTexts.push(live.textContent)).observe(live, { childList: true, characterData: true, subtree: true });
    });
    await page.waitForTimeout(13_000);
    const texts = await page.evaluate(() => window.liveTexts);
    check(!texts.some((t) => t.includes('Reconnecting')), `the live indicator read ${JSON.stringify(texts)}`);
    check((await text(page, '#live')) === 'Live', 'the draft is not shown as live');
  });

  await step('start it and watch the chart advance live, without reloading', async () => {
    // Every change the page makes to itself is recorded, so that training that ends quickly is still seen moving.
    await page.evaluate(() => {
      window.__noReload = true;
      window.__snapshots = [];
      const take = () => {
        const project = document.querySelector('#project');
        const snapshot = {
          state: project?.dataset.state,
          version: Number(project?.dataset.version ?? 0),
          points: Number(document.querySelector('#loss-chart path.s2')?.dataset.points ?? 0),
          providers: document.querySelector('#providers-table tbody')?.textContent ?? '',
          throughput: document.querySelector('#throughput')?.textContent ?? '',
          progress: document.querySelector('#progress-text')?.textContent ?? '',
        };
        const last = window.__snapshots[window.__snapshots.length - 1];
        if (JSON.stringify(last) !== JSON.stringify(snapshot)) window.__snapshots.push(snapshot);
      };
      new MutationObserver(take).observe(document.querySelector('#project'),
        { subtree: true, childList: true, attributes: true, characterData: true });
    });
    await page.getByRole('button', { name: 'Start training' }).click();
    await page.locator('#project[data-state="running"]').waitFor();
    await page.getByRole('button', { name: 'Pause' }).waitFor();
    await shot(page, 'project-running');
    await page.locator('#project[data-state="finished"]').waitFor({ timeout: TRAIN_TIMEOUT_MS });
    check(await page.evaluate(() => window.__noReload === true), 'the page was reloaded');
    const snapshots = await page.evaluate(() => window.__snapshots);
    const running = snapshots.filter((s) => s.state === 'running');
    const versions = [...new Set(running.map((s) => s.version))];
    const points = [...new Set(snapshots.map((s) => s.points))];
    results.versions_seen = versions;
    results.chart_points_seen = points;
    check(versions.length >= 3, `the version moved live while running: ${JSON.stringify(versions)}`);
    check(points.length >= 3 && points.every((p, i) => i === 0 || p > points[i - 1]),
      `the loss chart advanced point by point: ${JSON.stringify(points)}`);
    check(running.some((s) => /cpu/i.test(s.providers)), "the provider's backend was shown while it trained");
    check(running.some((s) => /samples\/s/.test(s.throughput)), 'the throughput was shown');
    check(running.some((s) => /left|estimating/.test(s.progress)), 'the progress said the time left');
  });

  await step('the model trains to the end and downloads', async () => {
    const accuracy = await page.locator('#accuracy-chart svg desc').textContent();
    check(/accuracy 0\.[5-9]/.test(accuracy), `the accuracy chart reads ${JSON.stringify(accuracy)}`);
    await page.locator('a.checkpoint').first().waitFor();
    await page.waitForFunction(() => /samples in \d/.test(document.querySelector('#credits')?.textContent ?? ''));
    await shot(page, 'project-finished');
    const [download] = await Promise.all([page.waitForEvent('download'), page.locator('#download-model').click()]);
    const file = path.join(artifacts, 'downloaded-model.safetensors');
    await download.saveAs(file);
    results.model_path = file;
    results.model_filename = download.suggestedFilename();
    // The summary says what it achieved, and the metrics download as CSV, every point of the chart.
    const summary = await text(page, '#summary');
    check(/^Finished: validation accuracy \d+\.\d\d%, validation loss \d\.\d{4}, after [\d,]+ samples in /.test(summary),
      `the summary reads ${JSON.stringify(summary)}`);
    const [metrics] = await Promise.all([page.waitForEvent('download'), page.locator('#download-metrics').click()]);
    const csvFile = path.join(artifacts, 'metrics.csv');
    await metrics.saveAs(csvFile);
    const rows = fs.readFileSync(csvFile, 'utf8').trim().split('\n');
    check(rows[0] === 'version,epoch,samples,train_loss,val_loss,val_accuracy,at_unix', `the CSV starts ${JSON.stringify(rows[0])}`);
    const points = Number(await page.locator('#loss-chart path.s2').getAttribute('data-points'));
    check(rows.length - 1 >= points && points > 0, `${rows.length - 1} CSV rows for ${points} chart points`);
    check(metrics.suggestedFilename() === `project-${projectId}-metrics.csv`, `the CSV is named ${metrics.suggestedFilename()}`);
  });

  await step('API tokens: create one, see it once, revoke it', async () => {
    await page.getByRole('link', { name: 'API tokens' }).click();
    await page.locator('h1', { hasText: 'API tokens' }).waitFor();
    await page.getByLabel('Name', { exact: true }).fill('laptop');
    await page.getByRole('button', { name: 'Create token' }).click();
    const token = await page.locator('#created-token').inputValue();
    check(token.startsWith('daig_'), `the new token is shown: ${JSON.stringify(token)}`);
    results.token = token;
    await page.getByRole('row', { name: /laptop/ }).waitFor();
    await shot(page, 'tokens');
    await page.getByRole('button', { name: 'Revoke token laptop' }).click();
    await page.getByText('No live tokens.').waitFor();
  });

  await step('the projects list shows the finished project', async () => {
    await page.getByRole('link', { name: 'Projects', exact: true }).click();
    await page.locator('#projects-table').waitFor();
    const row = await text(page, '#projects-table tbody');
    check(row.includes('mnist') && row.includes('finished'), `the list reads ${JSON.stringify(row)}`);
    await shot(page, 'projects');
  });

  await step('phone-sized and dark: the project page fits the screen', async () => {
    const phone = await newPage({ viewport: { width: 390, height: 844 }, colorScheme: 'dark', storageState: await page.context().storageState() });
    await phone.goto(`${base}/projects/${projectId}`);
    await phone.locator('#project[data-state="finished"]').waitFor();
    const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 1, `the page is ${overflow}px wider than the phone`);
    const background = await phone.evaluate(() => getComputedStyle(document.body).backgroundColor);
    check(background === 'rgb(13, 17, 23)', `the dark theme's background is ${background}`);
    await shot(phone, 'project-finished-phone-dark');
    await phone.context().close();
    current = page;
  });

  await step("log out; another user's project is not found", async () => {
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.locator('h1', { hasText: 'Log in' }).waitFor();
    await page.getByRole('link', { name: 'Sign up' }).first().click();
    await page.getByLabel('Username').fill('bob');
    await page.getByLabel('E-mail').fill('bob@example.org');
    await page.getByLabel('Password', { exact: true }).fill('another good password');
    await page.getByRole('button', { name: 'Sign up' }).click();
    await page.locator('h1', { hasText: 'Projects' }).waitFor();
    await page.goto(`${base}/projects/${projectId}`);
    await page.locator('#project-alert p').waitFor();
    const alert = await text(page, '#project-alert');
    check(alert.includes('No such project') && alert.includes('another account'), `the alert reads ${JSON.stringify(alert)}`);
    check((await text(page, 'h1')) === 'Project not found', 'the heading says the project was not found');
    await shot(page, 'other-users-project');
  });

  await step('a wrong password and a wrong session are refused with the right message', async () => {
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.locator('h1', { hasText: 'Log in' }).waitFor();
    await page.getByLabel('Username or e-mail').fill(user.name);
    await page.getByLabel('Password', { exact: true }).fill('not the password');
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.locator('#login-alert p').waitFor();
    const alert = await text(page, '#login-alert');
    check(/wrong login or password/i.test(alert), `the log-in alert reads ${JSON.stringify(alert)}`);
    await shot(page, 'login-wrong-password');
    const url = new URL(base);
    await page.context().addCookies([{ name: 'daig_session', value: 'daig_not_a_session', domain: url.hostname, path: '/' }]);
    await page.goto(`${base}/projects/${projectId}`);
    await page.waitForURL(/\/login\?next=%2Fprojects%2F\d+/);
    // The right password then leads back to the page asked for.
    await page.getByLabel('Username or e-mail').fill(user.name);
    await page.getByLabel('Password', { exact: true }).fill(user.password);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.locator('#project[data-state="finished"]').waitFor();
  });

  await step("the site owners' page names this server, and a phone sees its snippets whole", async () => {
    const phone = await newPage({ viewport: { width: 375, height: 812 } });
    await phone.goto(`${base}/sites`);
    const snippet = (await phone.locator('main pre code').first().innerText()).trim();
    check(snippet.includes(`<script src="${base}/embed.js"`), `the snippet reads ${JSON.stringify(snippet)}`);
    const all = await text(phone, 'main');
    check(!all.includes('SERVER'), 'the page still says SERVER');
    check(all.includes(`connect-src ${base} ${base.replace(/^http/, 'ws')};`), 'the CSP directives do not name this server');
    const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 1, `the page is ${overflow}px wider than the phone`);
    const clipped = await phone.evaluate(() => [...document.querySelectorAll('pre')].filter((p) => p.scrollWidth > p.clientWidth + 1).length);
    check(clipped === 0, `${clipped} snippet(s) scroll sideways on a phone`);
    await shot(phone, 'sites-phone');
    await phone.context().close();
    current = page;
  });

  await step('a running project with no provider says it waits, and where providers come from', async () => {
    // A site-key project (the idle native provider does not join it), made through the API as the page's user.
    const id = await page.evaluate(async () => {
      const csrf = decodeURIComponent((document.cookie.match(/(?:^|; )daig_csrf=([^;]*)/) || [])[1] || '');
      const send = (method, url, body, type) => fetch(url, { method, body, headers: { 'content-type': type, 'x-csrf-token': csrf } });
      const npy = (descr, shape, data) => {
        let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${shape.join(', ')},), }`;
        header += ' '.repeat(63 - ((10 + header.length) % 64)) + '\n';
        const head = new Uint8Array([0x93, ...new TextEncoder().encode('NUMPY'), 1, 0, header.length & 255, header.length >> 8, ...new TextEncoder().encode(header)]);
        const out = new Uint8Array(head.length + data.byteLength);
        out.set(head);
        out.set(new Uint8Array(data.buffer), head.length);
        return out;
      };
      const model = { input_shape: [4], layers: [{ type: 'dense', units: 3 }], loss: 'cross_entropy' };
      const settings = { access: 'site_key', samples_per_shard: 10, validation_fraction: 0.25 };
      const created = await (await send('POST', '/api/projects', JSON.stringify({ name: 'waiting', model, settings }), 'application/json')).json();
      const features = npy('<f4', [40, 4], Float32Array.from({ length: 160 }, (_, i) => i / 10));
      const labels = npy('<i8', [40], BigInt64Array.from({ length: 40 }, (_, i) => BigInt(i % 3)));
      await send('PUT', `/api/projects/${created.id}/dataset/features?format=npy`, features, 'application/octet-stream');
      await send('PUT', `/api/projects/${created.id}/dataset/labels?format=npy`, labels, 'application/octet-stream');
      const started = await send('POST', `/api/projects/${created.id}/start`, null, 'application/json');
      if (!started.ok) throw new Error(`start answered ${started.status}: ${await started.text()}`);
      return created.id;
    });
    await page.goto(`${base}/projects/${id}`);
    await page.locator('#project[data-state="running"]').waitFor();
    await page.locator('#waiting').waitFor();
    const waiting = await text(page, '#waiting');
    check(/Waiting for providers/.test(waiting) && waiting.includes('site key'), `the waiting panel reads ${JSON.stringify(waiting)}`);
    check(waiting.includes(`daig-provider --server ${base} --project ${id}`), `no native command in ${JSON.stringify(waiting)}`);
    const progress = await text(page, '#progress-text');
    check(/waiting for providers/.test(progress) && !/estimating/.test(progress), `the progress reads ${JSON.stringify(progress)}`);
    await shot(page, 'project-waiting');
  });

  check(pageErrors.length === 0, `uncaught errors in the pages: ${pageErrors.join('; ')}`);
  fs.writeFileSync(path.join(artifacts, 'results.json'), JSON.stringify(results, null, 2));
  await browser.close();
  process.stderr.write('dashboard.mjs: every step passed\n');
} catch (e) {
  process.stderr.write(`dashboard.mjs: FAILED: ${e.stack ?? e}\n`);
  if (pageErrors.length) process.stderr.write(`uncaught errors in the pages: ${pageErrors.join('; ')}\n`);
  try { if (current) await shot(current, 'failure'); } catch {}
  fs.writeFileSync(path.join(artifacts, 'results.json'), JSON.stringify({ ...results, error: String(e.stack ?? e) }, null, 2));
  await browser.close();
  process.exit(1);
}
