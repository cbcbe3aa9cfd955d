// mock_browser.test.mjs: the whole captcha flow in a real browser (Debian's chromium, headless,
// through playwright-core): CaptchaIframeQuery → a page loads the returned widget script →
// capInit → click → {ret: 0, ticket} → CaptchaCheck passes; the close link yields {ret: 1}.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { HAVE_CHROMIUM, SKIP_REASON, STEP_MS, launchBrowser } from './lib/browser.mjs';
import { startMock, v2Call, SEED_PARAMS } from './lib/harness.mjs';


let mock;
let browser;
let pageServer;
let pageUrl;
const pages = new Map(); // path → html

before(async () => {
  if (!HAVE_CHROMIUM) return;
  mock = await startMock();
  // The page that embeds the widget comes from another origin, as on a real site.
  pageServer = http.createServer((req, res) => {
    const html = pages.get(req.url);
    res.writeHead(html ? 200 : 404, { 'content-type': 'text/html; charset=utf-8' });
    res.end(html ?? 'not found');
  });
  await new Promise((resolve) => pageServer.listen(0, '127.0.0.1', resolve));
  pageUrl = `http://127.0.0.1:${pageServer.address().port}`;
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await new Promise((resolve) => (pageServer ? pageServer.close(resolve) : resolve()));
  await mock?.stop();
});

/** A fresh single-use captcha URL from the mock. */
async function captchaUrl() {
  const r = await v2Call(`${mock.url}/v2/index.php`, { params: { ...SEED_PARAMS, isHttps: '0' } });
  assert.equal(r.json?.code, 0, r.body);
  assert.match(r.json.url, /^http:\/\/127\.0\.0\.1:\d+\//, 'captcha URL points at the mock');
  return r.json.url;
}

/** Serves a page that loads url and calls capInit; returns a loaded playwright Page. */
async function openWidgetPage(name, url) {
  pages.set(`/${name}.html`, `<!doctype html>
<html><head><meta charset="utf-8"><title>${name}</title>
<script src="${url.replace(/&/g, '&amp;').replace(/"/g, '&quot;')}"></script></head>
<body><div id="captcha"></div>
<script>
window.capResult = new Promise(function (resolve) {
  capInit(document.getElementById('captcha'), { callback: resolve });
});
</script></body></html>`);
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${pageUrl}/${name}.html`, { waitUntil: 'load', timeout: STEP_MS });
  assert.deepEqual(errors, [], 'page script errors');
  assert.equal(await page.evaluate(() => typeof window.capInit), 'function', 'widget script defines capInit');
  return page;
}

const resultWithin = (page) => page.evaluate((ms) => Promise.race([
  window.capResult,
  new Promise((_, reject) => setTimeout(() => reject(new Error(`no callback within ${ms} ms`)), ms)),
]), STEP_MS);

test('widget solve: callback gets {ret: 0, ticket}, CaptchaCheck passes it', async (t) => {
  if (!HAVE_CHROMIUM) return t.skip(SKIP_REASON);
  const page = await openWidgetPage('solve', await captchaUrl());
  await page.click('#capgate-mock-solve', { timeout: STEP_MS });
  const res = await resultWithin(page);
  await page.close();
  assert.equal(res.ret, 0, JSON.stringify(res));
  assert.equal(typeof res.ticket, 'string');
  assert.ok(res.ticket.length > 0);
  const check = await v2Call(`${mock.url}/v2/index.php`, {
    action: 'CaptchaCheck', params: { ticket: res.ticket, randstr: res.randstr ?? '', captchaType: '1', userIp: '127.0.0.1' },
  });
  assert.equal(check.json?.code, 0, check.body);
});

test('widget close: callback gets {ret: 1}', async (t) => {
  if (!HAVE_CHROMIUM) return t.skip(SKIP_REASON);
  const page = await openWidgetPage('close', await captchaUrl());
  await page.click('#capgate-mock-close', { timeout: STEP_MS });
  const res = await resultWithin(page);
  await page.close();
  assert.equal(res.ret, 1, JSON.stringify(res));
  assert.equal(res.ticket, undefined);
});
