// demo_v3_browser.test.mjs: the /demo page's API 3.0 flow in headless chromium: "API 3.0:
// TCaptcha.js" → the page loads TCaptcha.js from the mock (demo_tcaptcha_url) → new
// TencentCaptcha(CaptchaAppId, ...).show() → click → {ret: 0, ticket, randstr} →
// DescribeCaptchaResult through the gateway's front as the demo token app, which adds the
// AppSecretKey it holds (captcha_apps) and re-signs TC3 for the mock → "DescribeCaptchaResult
// passed: CaptchaCode 1". The mock's journal shows the 3.0 call signed with the gateway's
// credential and carrying an AppSecretKey the page never saw; closing the widget gives ret 2.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { HAVE_CHROMIUM, SKIP_REASON, STEP_MS, launchBrowser } from './lib/browser.mjs';
import { startMock, request, waitFor, MOCK_SECRET_ID } from './lib/harness.mjs';
import { startGateway, journal, resetMock, APPS } from './lib/gateway.mjs';

const APP_ID = 190066666;
const APP_KEY = 'demo-v3-app-secret-key-77';
let mock;
let gw;
let browser;

before(async () => {
  mock = await startMock({ tls: true, args: ['--captcha-app', `${APP_ID}:${APP_KEY}`] });
  gw = await startGateway({
    mock,
    env: { DEMO_V3_APP_KEY: APP_KEY },
    config: {
      demo: true,
      demo_app: APPS.token.name,
      demo_tcaptcha_url: `${mock.url}/TCaptcha.js`,
      upstream: { v3_url: `https://127.0.0.1:${mock.tlsPort}/` },
      captcha_apps: [{ captcha_app_id: APP_ID, app_secret_key_env: 'DEMO_V3_APP_KEY' }],
    },
  });
  if (!HAVE_CHROMIUM) return;
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await gw?.stop();
  await mock?.stop();
});

async function runFlow(page, button) {
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  const res = await page.goto(`${gw.adminUrl}/demo`, { waitUntil: 'load', timeout: STEP_MS });
  assert.equal(res.status(), 200);
  await page.click('#start3');
  await page.click(button, { timeout: STEP_MS });
  await page.waitForFunction(() => {
    const code = document.getElementById('result').getAttribute('data-code');
    return code !== null && code !== '';
  }, null, { timeout: STEP_MS });
  const result = await page.$eval('#result', (e) => ({ code: e.getAttribute('data-code'), text: e.textContent }));
  const replies = await page.$$eval('#log .entry[data-kind="reply"] pre', (es) => es.map((e) => e.textContent));
  const widget = await page.$$eval('#log .entry[data-kind="widget"] pre', (es) => es.map((e) => JSON.parse(e.textContent)));
  assert.deepEqual(errors, [], 'page script errors');
  return { result, replies, widget, html: await page.content() };
}

test('the 3.0 flow in chromium: TCaptcha.js → solve → DescribeCaptchaResult through the gateway: CaptchaCode 1', async (t) => {
  if (!HAVE_CHROMIUM) return t.skip(SKIP_REASON);
  await resetMock(mock);
  const page = await browser.newPage();
  try {
    const { result, replies, widget, html } = await runFlow(page, '#capgate-mock-solve');
    assert.equal(result.code, '0', `${result.text}; ${replies.join('\n')}`);
    assert.equal(result.text, 'DescribeCaptchaResult passed: CaptchaCode 1');
    assert.equal(widget.length, 1);
    assert.equal(widget[0].ret, 0);
    assert.equal(widget[0].appid, String(APP_ID));
    // config3, then the front's 3.0 reply relayed as it came
    assert.equal(replies.length, 2, replies.join('\n'));
    const cfg = JSON.parse(replies[0]);
    assert.deepEqual(cfg, { tcaptchaUrl: `${mock.url}/TCaptcha.js`, captchaAppId: APP_ID });
    const reply = JSON.parse(replies[1]);
    assert.equal(reply.Response.CaptchaCode, 1, replies[1]);
    assert.equal(reply.Response.CaptchaMsg, 'OK');
    assert.ok(!html.includes(APP_KEY), 'the AppSecretKey never reaches the browser');
    assert.ok(!html.includes(APPS.token.token), 'nor the demo app token');

    // the mock saw DescribeCaptchaResult with the widget's ticket, signed with the gateway's
    // credential, with an AppSecretKey (the gateway's: the mock answered 1, not 100)
    const entries = await waitFor(async () => {
      const j = await journal(mock);
      return j.some((e) => e.action === 'DescribeCaptchaResult') ? j : null;
    }, { timeoutMs: 5000, what: 'DescribeCaptchaResult in the mock journal' });
    const e = entries.find((x) => x.action === 'DescribeCaptchaResult');
    assert.equal(e.secret_id, MOCK_SECRET_ID, JSON.stringify(e));
    assert.equal(e.signature, 'ok', JSON.stringify(e));
    assert.equal(e.params.Ticket, widget[0].ticket);
    assert.equal(e.params.Randstr, widget[0].randstr);
    assert.equal(e.params.AppSecretKey, '***');
    assert.equal(e.params.UserIp, '127.0.0.1');

    // audited as a 3.0 call of the demo app
    const rec = await waitFor(async () => {
      const r = await gw.admin('/admin/audit?limit=100');
      return (r.json?.records ?? []).find((x) => x.api === 'v3' && x.action === 'DescribeCaptchaResult');
    }, { timeoutMs: 5000, intervalMs: 50, what: 'the 3.0 audit record' });
    assert.equal(rec.app, APPS.token.name);
    assert.equal(rec.decision, 'forwarded');
  } finally {
    await page.close();
  }
});

test('the 3.0 flow: closing the widget ends with ret 2, no DescribeCaptchaResult call', async (t) => {
  if (!HAVE_CHROMIUM) return t.skip(SKIP_REASON);
  await resetMock(mock);
  const page = await browser.newPage();
  try {
    const { result, widget } = await runFlow(page, '#capgate-mock-close');
    assert.equal(result.code, 'closed', result.text);
    assert.match(result.text, /ret 2/);
    assert.equal(widget[0].ret, 2);
    const j = await journal(mock);
    assert.ok(!j.some((x) => x.action === 'DescribeCaptchaResult'), JSON.stringify(j));
  } finally {
    await page.close();
  }
});

test('/demo/api/check3 bad input: 400 JSON errors', async () => {
  const post = (body) => request(`${gw.adminUrl}/demo/api/check3`, {
    method: 'POST', body, headers: { 'content-type': 'application/json' }, timeoutMs: 5000,
  });
  for (const [body, re] of [['{"ticket":', /not a JSON object/], ['{"ticket":"t"}', /randstr must be a string/],
    ['{"ticket":5,"randstr":"r"}', /ticket must be a string/]]) {
    const r = await post(body);
    assert.equal(r.status, 400, r.body);
    assert.match(r.json?.error ?? '', re, r.body);
  }
  // a ticket the mock never issued: the mock's CaptchaCode 15, relayed
  const r = await post('{"ticket":"t03never","randstr":"@abc"}');
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json?.Response?.CaptchaCode, 15, r.body);
});
