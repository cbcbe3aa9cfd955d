// protocol_v2.test.mjs: the API 2.0 rules taken from Tencent's official SDKs and doc pages (README
// "Protocol rules and their sources"), against capgate-mock and through capgate:
// - the '@' rule: with POST a value starting with '@' is left out of the string to sign and still
//   sent (CaptchaCheck by POST with the randstr the mock issued, through the real Node SDK);
// - CaptchaQuery as its doc page has it, script=1 answered with JavaScript, passed through by the
//   gateway, audited with no code and counted as a breaker success;
// - validation: clientType 3, userIp a String, isHttps=1 an https URL, an unknown Action 6100,
//   the purchase codes of the error table.
import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import {
  startMock, certs, request, sleep, nextNonce, stringToSign, SEED_PARAMS, QUERY_PARAMS, MOCK_SECRET_ID,
  MOCK_SECRET_KEY,
} from './lib/harness.mjs';
import { sdkCall } from './lib/sdk.mjs';
import {
  startGateway, gwCall, journal, resetMock, addFault, assertApiReply, APPS, API_PATH,
} from './lib/gateway.mjs';
import { auditRecords } from './lib/cache.mjs';

let mock;
let gw;      // upstream.method POST (the default)
let gwGet;   // upstream.method GET
before(async () => {
  mock = await startMock({ tls: true });
  gw = await startGateway({ mock });
  gwGet = await startGateway({ mock, config: { upstream: { method: 'GET' } } });
});
after(async () => {
  await gw?.stop();
  await gwGet?.stop();
  await mock?.stop();
});
beforeEach(async () => {
  await resetMock(mock);
});

/**
 * A request signed by the SDKs' rule, written here from it: with skipAt (default: POST) the
 * values starting with '@' are left out of the string to sign; they are sent all the same.
 */
async function sendSigned(base, { method = 'POST', host, params, secretKey, skipAt = method === 'POST' }) {
  const u = new URL(`${base}${API_PATH}`);
  const signed = Object.fromEntries(Object.entries(params).filter(([, v]) => !(skipAt && String(v).startsWith('@'))));
  const algo = params.SignatureMethod === 'HmacSHA256' ? 'sha256' : 'sha1';
  const all = {
    ...params,
    Signature: crypto.createHmac(algo, secretKey).update(stringToSign(method, host ?? u.host, u.pathname, signed)).digest('base64'),
  };
  const encoded = new URLSearchParams(all).toString();
  if (method === 'GET') return request(`${u.origin}${u.pathname}?${encoded}`);
  return request(`${u.origin}${u.pathname}`, {
    method, body: encoded, headers: { 'content-type': 'application/x-www-form-urlencoded' },
  });
}

const publicParams = (secretId, action = 'CaptchaIframeQuery') => ({
  Action: action, Region: 'gz', SecretId: secretId, Timestamp: String(Math.floor(Date.now() / 1000)),
  Nonce: String(nextNonce()),
});

/** A captcha the mock issued and solved: { ticket, randstr }. */
async function solvedCaptcha() {
  const q = await sdkCall(mock.url, { params: { ...SEED_PARAMS } });
  assert.equal(q.code, 0, JSON.stringify(q));
  const solved = await mock.admin('solve', { method: 'POST', json: { url: q.url } });
  assert.equal(typeof solved.ticket, 'string', JSON.stringify(solved));
  assert.match(solved.randstr, /^@/, 'the mock issues randstr starting with "@"');
  return solved;
}

const checkParams = (s) => ({ ticket: s.ticket, randstr: s.randstr, captchaType: '1', userIp: '127.0.0.1' });

// ---- the '@' rule ----

for (const signatureMethod of ['sha1', 'sha256']) {
  test(`Node SDK: CaptchaCheck by POST with the mock's randstr passes at the mock (${signatureMethod})`, async () => {
    const s = await solvedCaptcha();
    const r = await sdkCall(mock.url, { method: 'POST', signatureMethod, action: 'CaptchaCheck', params: checkParams(s) });
    assert.equal(r.code, 0, JSON.stringify(r));
    const e = (await journal(mock)).filter((x) => x.action === 'CaptchaCheck');
    assert.equal(e.length, 1);
    assert.equal(e[0].signature, 'ok');
    assert.equal(e[0].params.randstr, s.randstr, 'the "@" value was sent');
  });
}

for (const [name, gateway] of [['upstream POST', () => gw], ['upstream GET', () => gwGet]]) {
  test(`Node SDK: CaptchaCheck by POST with the mock's randstr passes through the gateway (${name})`, async () => {
    const s = await solvedCaptcha();
    const r = await sdkCall(gateway().base, {
      method: 'POST', action: 'CaptchaCheck', secretId: APPS.sig.secretId, secretKey: APPS.sig.secretKey,
      params: checkParams(s),
    });
    assert.equal(r.code, 0, JSON.stringify(r));
    // The gateway signed its own upstream call by the same rule and forwarded the value.
    const e = (await journal(mock)).filter((x) => x.action === 'CaptchaCheck');
    assert.equal(e.length, 1, JSON.stringify(e));
    assert.equal(e[0].signature, 'ok');
    assert.equal(e[0].method, name === 'upstream GET' ? 'GET' : 'POST');
    assert.equal(e[0].secret_id, MOCK_SECRET_ID);
    assert.equal(e[0].params.randstr, s.randstr);
  });
}

test('GET signs "@" values: a GET that leaves one out is refused (4100) by the mock and the gateway', async () => {
  const extra = { note: '@not-a-file' };
  const mockParams = () => ({ ...publicParams(MOCK_SECRET_ID), ...SEED_PARAMS, ...extra });
  const short = await sendSigned(mock.url, { method: 'GET', params: mockParams(), secretKey: MOCK_SECRET_KEY, skipAt: true });
  assert.equal(short.json?.code, 4100, short.body);
  const full = await sendSigned(mock.url, { method: 'GET', params: mockParams(), secretKey: MOCK_SECRET_KEY });
  assert.equal(full.json?.code, 0, full.body);

  const gwParams = () => ({ ...publicParams(APPS.sig.secretId), ...SEED_PARAMS, ...extra });
  const gShort = await sendSigned(gw.base, { method: 'GET', params: gwParams(), secretKey: APPS.sig.secretKey, skipAt: true });
  assert.equal(gShort.json?.code, 4100, gShort.body);
  const gFull = await sendSigned(gw.base, { method: 'GET', params: gwParams(), secretKey: APPS.sig.secretKey });
  assert.equal(gFull.json?.code, 0, gFull.body);
  const e = (await journal(mock)).filter((x) => x.params?.note === '@not-a-file');
  assert.deepEqual(e.map((x) => [x.signature, x.code]), [['bad', 4100], ['ok', 0], ['ok', 0]], JSON.stringify(e));
});

test('POST: the SDKs\' form (no "@" values) and a signature over every parameter are both accepted', async () => {
  for (const skipAt of [true, false]) {
    const r = await sendSigned(mock.url, {
      params: { ...publicParams(MOCK_SECRET_ID), ...SEED_PARAMS, note: '@x' }, secretKey: MOCK_SECRET_KEY, skipAt,
    });
    assert.equal(r.json?.code, 0, `skipAt ${skipAt}: ${r.body}`);
    const g = await sendSigned(gw.base, {
      params: { ...publicParams(APPS.sig.secretId), ...SEED_PARAMS, note: '@x' }, secretKey: APPS.sig.secretKey, skipAt,
    });
    assert.equal(g.json?.code, 0, `gateway, skipAt ${skipAt}: ${g.body}`);
  }
  // A wrong key is still a wrong key in either form.
  const bad = await sendSigned(mock.url, {
    params: { ...publicParams(MOCK_SECRET_ID), ...SEED_PARAMS, note: '@x' }, secretKey: 'wrong',
  });
  assert.equal(bad.json?.code, 4100, bad.body);
});

// ---- CaptchaQuery ----

test('CaptchaQuery with its documented parameters: script 0 is JSON, script 1 JavaScript (mock)', async () => {
  const j = await sdkCall(mock.url, { action: 'CaptchaQuery', params: { ...QUERY_PARAMS } });
  assert.equal(j.code, 0, JSON.stringify(j));
  assert.match(j.script, /capInit/);
  const raw = await sendSigned(mock.url, {
    params: { ...publicParams(MOCK_SECRET_ID, 'CaptchaQuery'), ...QUERY_PARAMS, script: '1' }, secretKey: MOCK_SECRET_KEY,
  });
  assert.equal(raw.status, 200);
  assert.match(raw.headers['content-type'], /^application\/javascript/);
  assert.match(raw.body, /capGetTicket/);
  assert.equal(raw.json, undefined, 'not JSON');
  for (const p of ['registerTime', 'userIp', 'captchaType', 'script', 'businessId']) {
    const { [p]: _, ...rest } = QUERY_PARAMS;
    const r = await sdkCall(mock.url, { action: 'CaptchaQuery', params: rest });
    assert.equal(r.code, 4000, `${p}: ${JSON.stringify(r)}`);
    assert.match(r.message, new RegExp(p));
  }
});

test('gateway: CaptchaQuery script=1 JavaScript passes through, audited with no code', async () => {
  const uid = `script-${process.pid}-${nextNonce()}`;
  const r = await gwCall(gw, { method: 'POST', action: 'CaptchaQuery', params: { ...QUERY_PARAMS, script: '1', uid } });
  assert.equal(r.status, 200);
  assert.match(r.headers['content-type'], /^application\/javascript/);
  assert.match(r.body, /capGetTicket/);
  assert.ok(r.headers['x-request-id']);
  const e = (await journal(mock)).filter((x) => x.action === 'CaptchaQuery');
  assert.equal(e.length, 1);
  assert.equal(e[0].code, 0);
  let rec;
  for (let i = 0; i < 50 && !rec; i++) {
    rec = (await auditRecords(gw)).find((x) => x.request_id === r.headers['x-request-id']);
    if (!rec) await sleep(100);
  }
  assert.ok(rec, 'audit record of the script call');
  assert.equal(rec.decision, 'forwarded');
  assert.equal(rec.code, null, JSON.stringify(rec));
  assert.equal(rec.codeDesc, '');
  assert.equal(rec.upstream_status, 200);
  // script=0 is JSON as before
  const j = await gwCall(gw, { action: 'CaptchaQuery', params: { ...QUERY_PARAMS } });
  assert.equal(assertApiReply(j).code, 0, j.body);
  assert.match(j.json.script, /capInit/);
});

test('gateway: five CaptchaQuery script=1 calls leave the breaker closed', async () => {
  const g = await startGateway({ mock, config: { workers: 1, upstream: { breaker_failures: 5 } } });
  try {
    for (let i = 0; i < 6; i++) {
      const r = await gwCall(g, { app: APPS.token, action: 'CaptchaQuery', params: { ...QUERY_PARAMS, script: '1' } });
      assert.match(r.headers['content-type'], /^application\/javascript/, `call ${i}: ${r.body.slice(0, 200)}`);
    }
    // The worker publishes the breaker state every 200 ms; an open breaker stays open 5 s.
    await sleep(600);
    const m = await g.metrics();
    const gauges = m.samples.filter((s) => s.name === 'capgate_upstream_breaker_state');
    assert.ok(gauges.length > 0, m.text);
    assert.ok(gauges.every((s) => s.value === 0), `breaker state: ${JSON.stringify(gauges)}`);
    const after = await gwCall(g, { app: APPS.token });
    assert.equal(assertApiReply(after).code, 0, after.body);
    assert.equal((await journal(mock)).length, 7, 'every call reached the mock');
  } finally {
    await g.stop();
  }
});

test('gateway: other non-JSON replies keep their treatment (6200)', async () => {
  await addFault(mock, { action: 'CaptchaQuery', network: 'malformed_json' });
  const j = await gwCall(gw, { app: APPS.token, action: 'CaptchaQuery', params: { ...QUERY_PARAMS } });
  assert.equal(assertApiReply(j, 'script=0').code, 6200, j.body);
  const i = await gwCall(gw, { app: APPS.token, params: { ...SEED_PARAMS } });
  assert.equal(assertApiReply(i, 'CaptchaIframeQuery').code, 0, i.body);
  await resetMock(mock);
  await addFault(mock, { action: 'CaptchaQuery', network: 'http_500' });
  const s = await gwCall(gw, { app: APPS.token, action: 'CaptchaQuery', params: { ...QUERY_PARAMS, script: '1' } });
  assert.equal(assertApiReply(s, 'script=1 HTTP 500').code, 6200, s.body);
});

// ---- validation ----

test('clientType 3 and a userIp that is not an address are accepted; userIp past 64 bytes is not', async () => {
  const mockOk = await sdkCall(mock.url, { params: { ...SEED_PARAMS, clientType: '3', userIp: 'client.example, via lb' } });
  assert.equal(mockOk.code, 0, JSON.stringify(mockOk));
  assert.match(mockOk.url, /clientype=3/);
  const gwOk = await gwCall(gw, { params: { ...SEED_PARAMS, clientType: '3', userIp: 'unknown' } });
  assert.equal(assertApiReply(gwOk).code, 0, gwOk.body);
  const long = 'x'.repeat(65);
  const mockBad = await sdkCall(mock.url, { params: { ...SEED_PARAMS, userIp: long } });
  assert.equal(mockBad.code, 4000);
  assert.match(mockBad.message, /userIp/);
  const before = (await journal(mock)).length;
  const gwBad = await gwCall(gw, { params: { ...SEED_PARAMS, userIp: long } });
  assert.equal(assertApiReply(gwBad).code, 4000);
  assert.match(gwBad.json.message, /userIp must be 1 to 64 printable ASCII characters/);
  assert.equal((await journal(mock)).length, before, 'refused by the gateway itself');
  // CaptchaCheck takes a String userIp too (a made-up ticket: 5100, not 4000)
  const check = await sdkCall(mock.url, { action: 'CaptchaCheck', params: { ticket: 't03nope', captchaType: '1', userIp: 'a b' } });
  assert.equal(check.code, 5100, JSON.stringify(check));
});

test('isHttps=1 gives an https:// URL on the TLS listener, isHttps=0 an http:// one', async () => {
  const ca = certs().caPem;
  const s = await sdkCall(mock.url, { params: { ...SEED_PARAMS, isHttps: '1' } });
  assert.equal(s.code, 0, JSON.stringify(s));
  assert.equal(new URL(s.url).origin, mock.httpsUrl);
  const page = await request(s.url, { ca });
  assert.equal(page.status, 200);
  assert.match(page.body, /capInit/);
  const p = await sdkCall(mock.url, { params: { ...SEED_PARAMS, isHttps: '0' } });
  assert.equal(new URL(p.url).origin, mock.url);
  const viaGw = await gwCall(gw, { params: { ...SEED_PARAMS, isHttps: '1' } });
  assert.ok(viaGw.json.url.startsWith('https://'), viaGw.body);
});

test('an Action that is not supported gets 6100 VersionNotSupported (mock and gateway)', async () => {
  const m = await sdkCall(mock.url, { action: 'DescribeInstances', params: { ...SEED_PARAMS } });
  assert.equal(m.code, 6100, JSON.stringify(m));
  assert.equal(m.codeDesc, 'VersionNotSupported');
  assert.match(m.message, /DescribeInstances/);
  await resetMock(mock);
  const g = await gwCall(gw, { action: 'DescribeInstances' });
  assert.equal(assertApiReply(g).code, 6100, g.body);
  assert.equal(g.json.codeDesc, 'VersionNotSupported');
  assert.equal((await journal(mock)).length, 0, 'nothing reached the mock');
  // A missing Action stays 4000.
  const none = await gwCall(gw, { app: APPS.token, publicParams: { Action: undefined } });
  assert.equal(assertApiReply(none).code, 4000, none.body);
});

test('the error table holds the purchase codes: a 5300 fault is answered with its codeDesc', async () => {
  await addFault(mock, { action: 'CaptchaIframeQuery', code: 5300 });
  const r = await sdkCall(mock.url, { params: { ...SEED_PARAMS } });
  assert.equal(r.code, 5300, JSON.stringify(r));
  assert.equal(r.codeDesc, 'InsufficientBalance');
  const g = await gwCall(gw, { app: APPS.token });
  assert.equal(assertApiReply(g).code, 5300, g.body);
});
