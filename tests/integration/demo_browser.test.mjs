// demo_browser.test.mjs: the admin listener's /demo page ("demo": true) driven in headless
// chromium: Get captcha → CaptchaIframeQuery through capgate → the mock's widget → click →
// CaptchaCheck through capgate → "CaptchaCheck passed: code 0". Then the mock's journal shows both
// Actions signed with the gateway's upstream credential, and /metrics counts them for the demo
// app. Also the page's bad input (400), a relayed error reply, a failed front call (502), and
// demo off (404).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { HAVE_CHROMIUM, SKIP_REASON, STEP_MS, launchBrowser } from './lib/browser.mjs';
import { startMock, request, waitFor, MOCK_SECRET_ID } from './lib/harness.mjs';
import { startGateway, journal, verdict, resetMock, addFault, gwCall, APPS } from './lib/gateway.mjs';


// The token app of the base config is the demo app (demo_app given explicitly).
const DEMO_APP = APPS.token;

let mock;
let gw;
let browser;

before(async () => {
  mock = await startMock({ tls: true });
  gw = await startGateway({ mock, config: { demo: true, demo_app: DEMO_APP.name } });
  if (!HAVE_CHROMIUM) return;
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await gw?.stop();
  await mock?.stop();
});

const postJson = (p, body, headers = {}) => request(`${gw.adminUrl}${p}`, {
  method: 'POST', body, headers: { 'content-type': 'application/json', ...headers }, timeoutMs: 5000,
});

test('the page through the full pipeline in chromium: CaptchaCheck passed: code 0', async (t) => {
  if (!HAVE_CHROMIUM) return t.skip(SKIP_REASON);
  await resetMock(mock);
  const before = await gw.metrics();
  const page = await browser.newPage();
  const errors = [];
  const requested = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('request', (r) => requested.push(r.url()));
  try {
    const res = await page.goto(`${gw.adminUrl}/demo`, { waitUntil: 'load', timeout: STEP_MS });
    assert.equal(res.status(), 200);
    assert.match(res.headers()['content-type'], /^text\/html/);
    assert.deepEqual(requested.filter((u) => !u.endsWith('/favicon.ico')), [`${gw.adminUrl}/demo`],
      'the page loads no other resource');

    await page.click('text=Get captcha');
    await page.click('#capgate-mock-solve', { timeout: STEP_MS });
    await page.waitForFunction(() => {
      const code = document.getElementById('result').getAttribute('data-code');
      return code !== null && code !== '';
    }, null, { timeout: STEP_MS });
    const result = await page.$eval('#result', (e) => ({ code: e.getAttribute('data-code'), text: e.textContent }));
    const log = await page.$$eval('#log .entry[data-kind="reply"] pre', (es) => es.map((e) => e.textContent));
    const labels = await page.$$eval('#log .entry .label', (es) => es.map((e) => e.textContent));
    const widget = JSON.parse(await page.$eval('#log .entry[data-kind="widget"] pre', (e) => e.textContent));
    const html = await page.content();
    assert.deepEqual(errors, [], 'page script errors');
    assert.equal(result.code, '0', `final line: ${result.text}; log: ${labels.join(' | ')} ${log.join('\n')}`);
    assert.equal(result.text, 'CaptchaCheck passed: code 0');

    // The log shows the two front replies in order, as JSON.
    assert.equal(log.length, 2, `replies in the log: ${labels.join(' | ')}`);
    const [iframe, check] = log.map((s) => JSON.parse(s));
    assert.equal(iframe.code, 0, log[0]);
    assert.equal(iframe.codeDesc, 'Success');
    assert.match(iframe.url, /^http:\/\/127\.0\.0\.1:\d+\/.*TCapIframeApi\.js\?/);
    assert.equal(check.code, 0, log[1]);
    assert.equal(widget.ret, 0, JSON.stringify(widget));
    assert.match(labels[0], /\/demo\/api\/iframe/);
    assert.match(labels[labels.length - 1], /\/demo\/api\/check/);
    assert.ok(!html.includes(DEMO_APP.token), 'the demo app token never reaches the browser');

    // The mock saw both Actions, signed with the gateway's own upstream credential.
    const entries = await waitFor(async () => {
      const j = await journal(mock);
      return j.some((e) => e.action === 'CaptchaCheck') ? j : null;
    }, { timeoutMs: 5000, what: 'CaptchaCheck in the mock journal' });
    assert.deepEqual(entries.map((e) => e.action), ['CaptchaIframeQuery', 'CaptchaCheck'], JSON.stringify(entries));
    for (const e of entries) {
      assert.equal(verdict(e), 'ok', JSON.stringify(e));
      assert.equal(e.secret_id, MOCK_SECRET_ID, JSON.stringify(e));
      assert.equal(e.code, 0, JSON.stringify(e));
    }
    const [iframeParams, checkParams] = entries.map((e) => e.params);
    assert.deepEqual([iframeParams.captchaType, iframeParams.disturbLevel, iframeParams.isHttps, iframeParams.clientType,
      iframeParams.accountType], ['9', '1', '0', '2', '0'], JSON.stringify(iframeParams));
    assert.equal(checkParams.captchaType, '9', JSON.stringify(checkParams));
    assert.equal(checkParams.userIp, '127.0.0.1', JSON.stringify(checkParams));
    assert.equal(checkParams.ticket, widget.ticket, 'CaptchaCheck carried the widget\'s ticket');

    // /metrics counts both calls for the demo app.
    const after = await gw.metrics();
    for (const action of ['CaptchaIframeQuery', 'CaptchaCheck']) {
      const labelsOf = { app: DEMO_APP.name, action, decision: 'forwarded' };
      assert.equal(after.get('capgate_requests_total', labelsOf) - before.get('capgate_requests_total', labelsOf), 1,
        `${action} forwarded for ${DEMO_APP.name}`);
    }
  } finally {
    await page.close();
  }
});

test('the page\'s bad input is a 400 JSON error; other methods 405', async () => {
  const cases = [
    ['not JSON', '{"ticket":', /not a JSON object/],
    ['a JSON array', '["t"]', /not a JSON object/],
    ['no ticket', '{}', /ticket is missing/],
    ['an empty ticket', '{"ticket": ""}', /ticket must be a non-empty string/],
    ['a number ticket', '{"ticket": 5}', /ticket must be a non-empty string/],
    ['a body too large', JSON.stringify({ ticket: 'x'.repeat(5000) }), /request body is \d+ bytes; the limit is 4096/],
    ['a ticket too long', JSON.stringify({ ticket: 't'.repeat(2100) }), /ticket is 2100 bytes; the limit is 2048/],
  ];
  for (const [what, body, re] of cases) {
    const r = await postJson('/demo/api/check', body);
    assert.equal(r.status, 400, `${what}: ${r.status} ${r.body}`);
    assert.match(r.headers['content-type'], /^application\/json/, what);
    assert.match(r.json?.error ?? '', re, `${what}: ${r.body}`);
  }
  const plain = await request(`${gw.adminUrl}/demo/api/check`, {
    method: 'POST', body: '{"ticket":"t"}', headers: { 'content-type': 'text/plain' }, timeoutMs: 5000,
  });
  assert.equal(plain.status, 400, plain.body);
  assert.match(plain.json?.error ?? '', /Content-Type must be application\/json/);
  const iframeBad = await postJson('/demo/api/iframe', 'nope');
  assert.equal(iframeBad.status, 400, iframeBad.body);

  const get = await request(`${gw.adminUrl}/demo/api/check`, { timeoutMs: 5000 });
  assert.equal(get.status, 405, get.body);
  assert.equal(get.headers.allow, 'POST');
  assert.match(get.json?.error ?? '', /method not allowed/);
});

test('a relayed front reply: a bad ticket is CaptchaCheck code 5100, HTTP 200', async () => {
  const r = await postJson('/demo/api/check', JSON.stringify({ ticket: 'not-a-ticket-of-the-mock' }));
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json?.code, 5100, r.body);
  assert.equal(typeof r.json?.codeDesc, 'string');
});

test('demo false: /demo and its calls are 404 like any unknown admin path', async () => {
  const off = await startGateway({ mock, config: { demo: false } });
  try {
    for (const [method, p] of [['GET', '/demo'], ['POST', '/demo/api/iframe'], ['POST', '/demo/api/check']]) {
      const r = await request(`${off.adminUrl}${p}`, {
        method, ...(method === 'POST' ? { body: '{}', headers: { 'content-type': 'application/json' } } : {}), timeoutMs: 5000,
      });
      assert.equal(r.status, 404, `${method} ${p}: ${r.body}`);
      assert.match(r.headers['content-type'], /^application\/json/);
      assert.ok(r.json?.error, r.body);
    }
  } finally {
    await off.stop();
  }
});

test('a browser that leaves mid-call gets no reply, and the admin listener keeps serving', async () => {
  await resetMock(mock);
  // Below the gateway's upstream timeout_ms (1500 ms): a call it gave up on would never reach the
  // journal (the mock records a delayed call when it answers).
  await addFault(mock, { action: 'CaptchaIframeQuery', delay_ms: 1000, times: 1 });
  // The browser leaves once the mock holds the call (its pending count), not after a nominal
  // 200 ms: on a loaded machine the call may not have reached the mock by then.
  await new Promise((resolve, reject) => {
    const req = http.request(`${gw.adminUrl}/demo/api/iframe`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, agent: false,
    });
    req.on('error', (e) => (e.code === 'ECONNRESET' ? resolve() : reject(e)));
    req.on('response', () => reject(new Error('a reply came before the browser left')));
    req.end('{}');
    waitFor(async () => (await request(`${mock.url}/__admin/health`)).json?.pending >= 1,
      { timeoutMs: 5000, what: 'the demo call pending at the mock' })
      .then(() => { req.destroy(); resolve(); }, reject);
  });
  // The abandoned call completes upstream; its reply is dropped.
  await waitFor(async () => (await journal(mock)).some((e) => e.action === 'CaptchaIframeQuery' && e.fault),
    { timeoutMs: 10000, what: 'the delayed call in the journal' });
  await waitFor(async () => (await gw.metrics()).get('capgate_inflight_requests') === 0,
    { timeoutMs: 10000, what: 'the abandoned front call finished' });
  const r = await postJson('/demo/api/iframe', '{}');
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json?.code, 0, r.body);
  assert.equal(gw.proc.child.exitCode, null, gw.proc.stderr);
});

test('a failed front call is a 502 naming the problem (front listener closed by a drain)', async () => {
  // A gateway of its own. A slow upstream call keeps it draining after SIGTERM: the front
  // listener is closed at once, the admin listener still answers until the drain ends.
  await resetMock(mock);
  // The delay is the window in which the admin listener must still answer: generous, so the
  // steps below fit in it on a loaded machine.
  await addFault(mock, { action: 'CaptchaIframeQuery', delay_ms: 3000, times: 1 });
  const g2 = await startGateway({ mock, config: { demo: true, upstream: { timeout_ms: 8000 } } });
  try {
    const slow = gwCall(g2, { app: APPS.token, timeoutMs: 12000 });
    await waitFor(async () => (await request(`${mock.url}/__admin/health`)).json?.pending >= 1,
      { timeoutMs: 5000, what: 'the slow call pending at the mock' });
    g2.proc.signal('SIGTERM');
    await waitFor(() => frontRefuses(g2.port), { timeoutMs: 2000, what: 'front listener closed' });
    const r = await request(`${g2.adminUrl}/demo/api/iframe`, {
      method: 'POST', body: '{}', headers: { 'content-type': 'application/json' }, timeoutMs: 5000,
    });
    assert.equal(r.status, 502, r.body);
    assert.match(r.headers['content-type'], /^application\/json/);
    assert.match(r.json?.error ?? '', /^CaptchaIframeQuery: the front listener at 127\.0\.0\.1:\d+ could not be reached/, r.body);
    assert.equal((await slow).json?.code, 0, 'the in-flight call still got its reply');
    const { code } = await g2.proc.exited;
    assert.equal(code, 0, g2.proc.stderr);
  } finally {
    await g2.stop();
  }
});

/** Resolves true when a TCP connect to 127.0.0.1:port is refused. */
function frontRefuses(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('connect', () => { s.destroy(); resolve(false); });
    s.on('error', (e) => resolve(e.code === 'ECONNREFUSED'));
  });
}
