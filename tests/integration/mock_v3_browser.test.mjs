// mock_v3_browser.test.mjs: the API 3.0 front end in a real browser (Debian's chromium, headless,
// through playwright-core): a page on another origin loads TCaptcha.js from the mock,
// new TencentCaptcha(appId, callback, {bizState}).show() → click → {ret: 0, ticket, randstr,
// appid, bizState} → the official SDK's DescribeCaptchaResult gives CaptchaCode 1; closing gives
// {ret: 2}.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import https from 'node:https';
import { createRequire } from 'node:module';
import { HAVE_CHROMIUM, SKIP_REASON, STEP_MS, launchBrowser } from './lib/browser.mjs';
import { startMock, certs, MOCK_SECRET_ID, MOCK_SECRET_KEY } from './lib/harness.mjs';

const require = createRequire(import.meta.url);
const tencentcloud = require('tencentcloud-sdk-nodejs');

const APP_ID = 190055555;
const APP_KEY = 'browser-app-key';
let mock;
let browser;
let pageServer;
let pageUrl;
const pages = new Map();

before(async () => {
  if (!HAVE_CHROMIUM) return;
  mock = await startMock({ tls: true, args: ['--captcha-app', `${APP_ID}:${APP_KEY}`] });
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

async function openPage(name) {
  pages.set(`/${name}.html`, `<!doctype html>
<html><head><meta charset="utf-8"><title>${name}</title>
<script src="${mock.url}/TCaptcha.js"></script></head>
<body>
<script>
window.capResult = new Promise(function (resolve) {
  window.lastCaptcha = new TencentCaptcha('${APP_ID}', resolve, { bizState: 'state-42' });
  window.lastCaptcha.show();
});
</script></body></html>`);
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${pageUrl}/${name}.html`, { waitUntil: 'load', timeout: STEP_MS });
  assert.deepEqual(errors, [], 'page script errors');
  return page;
}

const resultWithin = (page) => page.evaluate((ms) => Promise.race([
  window.capResult,
  new Promise((_, reject) => setTimeout(() => reject(new Error(`no callback within ${ms} ms`)), ms)),
]), STEP_MS);

test('TCaptcha.js solve: {ret: 0, ticket, randstr, appid}; DescribeCaptchaResult gives 1', async (t) => {
  if (!HAVE_CHROMIUM) return t.skip(SKIP_REASON);
  const page = await openPage('solve');
  await page.click('#capgate-mock-solve', { timeout: STEP_MS });
  const res = await resultWithin(page);
  assert.equal(await page.evaluate(() => document.getElementById('capgate-mock-tcaptcha')), null,
    'the widget is removed after solving');
  assert.deepEqual(await page.evaluate(() => window.lastCaptcha.getTicket()),
    { appid: String(APP_ID), ticket: res.ticket });
  await page.close();
  assert.equal(res.ret, 0, JSON.stringify(res));
  assert.equal(res.appid, String(APP_ID));
  assert.equal(res.bizState, 'state-42');
  assert.match(res.ticket, /^t03/);
  assert.match(res.randstr, /^@/);
  const u = new URL(mock.httpsUrl);
  const client = new tencentcloud.captcha.v20190722.Client({
    credential: { secretId: MOCK_SECRET_ID, secretKey: MOCK_SECRET_KEY }, region: '',
    profile: { httpProfile: { endpoint: u.host, protocol: 'https://', agent: new https.Agent({ ca: certs().caPem }) } },
  });
  const r = await client.DescribeCaptchaResult({ CaptchaType: 9, Ticket: res.ticket, Randstr: res.randstr,
    UserIp: '127.0.0.1', CaptchaAppId: Number(res.appid), AppSecretKey: APP_KEY });
  assert.equal(r.CaptchaCode, 1, JSON.stringify(r));
});

test('TCaptcha.js close: {ret: 2, ticket: null}', async (t) => {
  if (!HAVE_CHROMIUM) return t.skip(SKIP_REASON);
  const page = await openPage('close');
  await page.click('#capgate-mock-close', { timeout: STEP_MS });
  const res = await resultWithin(page);
  await page.close();
  assert.equal(res.ret, 2, JSON.stringify(res));
  assert.equal(res.ticket, null);
  assert.equal(res.appid, String(APP_ID));
});
