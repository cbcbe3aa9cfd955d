// gateway_v3.test.mjs: capgate's API 3.0 front (POST / with X-TC-* headers, TC3-HMAC-SHA256) in
// front of capgate-mock's 3.0 emulation. The official Node SDK (tencentcloud-sdk-nodejs, captcha
// v20190722), changed only in endpoint (the gateway's HTTPS front, the test CA in an agent) and
// credentials (an app's gateway-issued SecretId/SecretKey): forwarded (CaptchaCode from the
// mock), AppSecretKey injected by the gateway (the app sends none), limited under the same
// business as v2 traffic (RequestLimitExceeded, with the RateLimit headers), audited with api v3
// and the 3.0 fields, counted in the same metrics hashes as v2. The project's own TC3 client
// (lib/tc3.mjs) sends what the SDK would not: bad input of every kind, each answered with a
// 3.0-shaped error naming what was wrong, the gateway serving on; a bearer token app; replay.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { createRequire } from 'node:module';
import { certs, startMock, waitFor } from './lib/harness.mjs';
import { APPS, baseApps, gwCall, startGateway } from './lib/gateway.mjs';
import { tc3Call, sdkError } from './lib/tc3.mjs';
import { SEED_PARAMS } from './lib/harness.mjs';

const require = createRequire(import.meta.url);
const tencentcloud = require('tencentcloud-sdk-nodejs');

const APP_ID = 190012345; // its AppSecretKey is the gateway's (captcha_apps)
const APP_KEY = 'gw-held-app-secret-key-31d9';
const OTHER_ID = 190077777; // the gateway holds no key for it: apps send their own
const OTHER_KEY = 'other-app-secret-key-5c2e';
const BIZ = 77;
const SCENE = 5;

let mock;
let gw;

before(async () => {
  mock = await startMock({ tls: true, env: { CAPGATE_MOCK_CAPTCHA_APP: `${APP_ID}:${APP_KEY},${OTHER_ID}:${OTHER_KEY}` } });
  gw = await startGateway({
    mock,
    tls: true,
    env: { GW_CAPTCHA_APP_KEY: APP_KEY },
    config: {
      upstream: { v3_url: `https://127.0.0.1:${mock.tlsPort}/` },
      captcha_apps: [{ captcha_app_id: APP_ID, app_secret_key_env: 'GW_CAPTCHA_APP_KEY' }],
      apps: [
        ...baseApps(),
        { name: 'v3-only', auth: 'token', token: 'gw-v3-only-token-0e1f', actions: ['DescribeCaptchaMiniResult'],
          captcha_app_ids: [OTHER_ID] },
      ],
      // one business, whichever generation: 3 per minute for businessId 77
      limits: [{ name: 'biz77', businessId: BIZ, sceneId: '*', rate: 3, period_s: 60, burst: 3 }],
      metrics: { flush_ms: 100 },
    },
  });
});
after(async () => {
  await gw?.stop();
  await mock?.stop();
});

/** The SDK's captcha client pointed at the gateway's HTTPS front as app (default: APPS.sig). */
function sdk(app = APPS.sig) {
  return new tencentcloud.captcha.v20190722.Client({
    credential: { secretId: app.secretId, secretKey: app.secretKey },
    region: '',
    profile: { httpProfile: { endpoint: gw.tlsHost, protocol: 'https://', agent: new https.Agent({ ca: certs().caPem }) } },
  });
}

async function solve(appid = APP_ID) {
  const s = await mock.admin('solve', { method: 'POST', json: { appid } });
  assert.ok(s.ticket && s.randstr, JSON.stringify(s));
  return s;
}

const fields = (s, extra = {}) => ({ CaptchaType: 9, Ticket: s.ticket, UserIp: '203.0.113.9', Randstr: s.randstr,
  CaptchaAppId: APP_ID, ...extra });

/** A 3.0 call with the project's TC3 client to the HTTPS front, signed as app. */
const call3 = (opts = {}) => tc3Call(gw.httpsBase, {
  secretId: APPS.sig.secretId, secretKey: APPS.sig.secretKey, ca: certs().caPem, service: '127', ...opts,
});

/** The 3.0 error of a reply: HTTP 200, {"Response": {"Error": {Code, Message}, RequestId}}. */
function error3(r, code, messageRe) {
  assert.equal(r.status, 200, `${r.status} ${r.body}`);
  const e = r.json?.Response?.Error;
  assert.ok(e, `not a 3.0 error: ${r.body}`);
  assert.equal(e.Code, code, r.body);
  if (messageRe) assert.match(e.Message, messageRe, r.body);
  assert.match(r.json.Response.RequestId, /^[0-9a-f]{16}$/, r.body);
  assert.equal(r.headers['x-request-id'], r.json.Response.RequestId);
}

async function auditRecords(pred, what) {
  return waitFor(async () => {
    const r = await gw.admin('/admin/audit?limit=1000');
    const recs = (r.json?.records ?? []).filter(pred);
    return recs.length ? recs : null;
  }, { timeoutMs: 10000, intervalMs: 50, what });
}

test('SDK through the HTTPS front: forwarded with the gateway\'s AppSecretKey (the app sends none), CaptchaCode from the mock', async () => {
  const s = await solve();
  const r = await sdk().DescribeCaptchaResult(fields(s, { NeedGetCaptchaTime: 1 }));
  assert.equal(r.CaptchaCode, 1, JSON.stringify(r));
  assert.equal(r.CaptchaMsg, 'OK');
  assert.ok(r.RequestId);
  // the same ticket again: the mock's 9, passed through
  const again = await sdk().DescribeCaptchaResult(fields(s));
  assert.equal(again.CaptchaCode, 9, JSON.stringify(again));
  // the mock saw an AppSecretKey (journalled as ***) re-signed with the real credential
  const j = await mock.admin('requests?action=DescribeCaptchaResult');
  const mine = j.requests.filter((e) => e.params?.Ticket === s.ticket);
  assert.equal(mine.length, 2, JSON.stringify(j.requests.slice(-3)));
  for (const e of mine) {
    assert.equal(e.params.AppSecretKey, '***');
    assert.equal(e.secret_id, 'AKIDcapgateMockTestKey00000000000000');
    assert.equal(e.signature, 'ok');
  }
  // an app that sends the key of a CaptchaAppId the gateway holds none for is forwarded as is
  const o = await solve(OTHER_ID);
  const other = await sdk().DescribeCaptchaMiniResult({ CaptchaType: 9, Ticket: o.ticket, UserIp: '203.0.113.9',
    CaptchaAppId: OTHER_ID, AppSecretKey: OTHER_KEY });
  assert.equal(other.CaptchaCode, 1, JSON.stringify(other));
  // ... and without one it is a MissingParameter of the gateway's
  const e = await sdkError(sdk().DescribeCaptchaMiniResult({ CaptchaType: 9, Ticket: o.ticket, UserIp: '203.0.113.9',
    CaptchaAppId: OTHER_ID }));
  assert.equal(e.code, 'MissingParameter');
  assert.match(e.message, /AppSecretKey/);
  // the running config shows the key masked
  const dump = await gw.admin('/admin/config');
  assert.equal(dump.status, 200);
  assert.ok(!dump.body.includes(APP_KEY), 'the AppSecretKey is not in /admin/config');
  assert.equal(dump.json?.captcha_apps?.[0]?.app_secret_key, '***', dump.body.slice(0, 200));
  assert.equal(dump.json?.captcha_apps?.[0]?.captcha_app_id, APP_ID);
});

test('a bearer token app calls 3.0 too; actions and captcha_app_ids authorize 3.0 calls', async () => {
  const s = await solve();
  const r = await call3({ body: fields(s), mutate: (h) => { h.Authorization = `Bearer ${APPS.token.token}`; } });
  assert.equal(r.json?.Response?.CaptchaCode, 1, r.body);
  // v3-only may call DescribeCaptchaMiniResult for OTHER_ID only
  const o = await solve(OTHER_ID);
  const bearer = (h) => { h.Authorization = 'Bearer gw-v3-only-token-0e1f'; };
  const denied = await call3({ action: 'DescribeCaptchaResult', body: fields(o, { CaptchaAppId: OTHER_ID, AppSecretKey: OTHER_KEY }), mutate: bearer });
  error3(denied, 'UnauthorizedOperation', /may not call Action DescribeCaptchaResult/);
  const wrongApp = await call3({ action: 'DescribeCaptchaMiniResult', body: { CaptchaType: 9, Ticket: s.ticket, UserIp: '1.2.3.4', CaptchaAppId: APP_ID },
    mutate: bearer });
  error3(wrongApp, 'UnauthorizedOperation', new RegExp(`may not use CaptchaAppId ${APP_ID}`));
  const ok = await call3({ action: 'DescribeCaptchaMiniResult', body: { CaptchaType: 9, Ticket: o.ticket, UserIp: '1.2.3.4',
    CaptchaAppId: OTHER_ID, AppSecretKey: OTHER_KEY }, mutate: bearer });
  assert.equal(ok.json?.Response?.CaptchaCode, 1, ok.body);
  // the limited app (v2 actions only, businessIds 1, 2) is refused
  const lim = await call3({ secretId: APPS.limited.secretId, secretKey: APPS.limited.secretKey, body: fields(s, { BusinessId: 1 }) });
  error3(lim, 'UnauthorizedOperation', /may not call Action DescribeCaptchaResult/);
});

test('one business across generations: v2 and 3.0 calls share the limit, are counted in the same metrics hashes, audited with api v2/v3', async () => {
  const from = Math.floor(Date.now() / 1000) - 60;
  // two v2 calls for businessId 77 ...
  for (let i = 0; i < 2; i++) {
    const r = await gwCall(gw, { params: { ...SEED_PARAMS, businessId: String(BIZ), sceneId: String(SCENE) } });
    assert.equal(r.json?.code, 0, r.body);
  }
  // ... leave one token of three for 3.0
  const s = await solve();
  const ok = await sdk().DescribeCaptchaResult(fields(s, { BusinessId: BIZ, SceneId: SCENE, Imei: 'imei-1' }));
  assert.equal(ok.CaptchaCode, 1, JSON.stringify(ok));
  const s2 = await solve();
  const e = await sdkError(sdk().DescribeCaptchaResult(fields(s2, { BusinessId: BIZ, SceneId: SCENE })));
  assert.equal(e.code, 'RequestLimitExceeded', String(e));
  assert.match(e.message, /rate limit biz77 exceeded; retry in \d+ s/);
  // the same refusal seen with its headers
  const r = await call3({ body: fields(s2, { BusinessId: BIZ, SceneId: SCENE }) });
  error3(r, 'RequestLimitExceeded', /biz77/);
  assert.match(r.headers['ratelimit-policy'] ?? '', /"biz77";q=3;w=60/, JSON.stringify(r.headers));
  assert.match(r.headers.ratelimit ?? '', /"biz77";r=0;t=\d+/, JSON.stringify(r.headers));
  assert.match(r.headers['retry-after'] ?? '', /^\d+$/);
  // and a v2 call of the business is refused as well now
  const v2 = await gwCall(gw, { params: { ...SEED_PARAMS, businessId: String(BIZ), sceneId: String(SCENE) } });
  assert.equal(v2.json?.code, 4400, v2.body);

  // metrics: one pair 77:5, all 6 requests, 3 forwarded (2 v2 + 1 v3), 3 limited (2 v3 + 1 v2)
  const query = `?from=${from}&to=${Math.floor(Date.now() / 1000) + 120}&businessId=${BIZ}&sceneId=${SCENE}`;
  const stats = await waitFor(async () => {
    const st = await gw.admin(`/admin/stats${query}`);
    return st.status === 200 && st.json?.totals?.requests === 6 ? st.json : null;
  }, { timeoutMs: 10000, intervalMs: 100, what: '/admin/stats to count 6 requests for 77:5' });
  assert.equal(stats.groups.length, 1);
  assert.equal(stats.totals.forwarded, 3, JSON.stringify(stats.totals));
  assert.equal(stats.totals.limited, 3, JSON.stringify(stats.totals));
  assert.equal(stats.totals['code:0'], 3, JSON.stringify(stats.totals));
  assert.equal(stats.totals['code:4400'], 3, JSON.stringify(stats.totals));

  // audit: the 3.0 records carry api v3 and the 3.0 fields, the v2 ones api v2 (all six: the
  // audit writes them in batches, so the first ones can be readable before the last)
  const recs = await waitFor(async () => {
    const r = await gw.admin(`/admin/audit?businessId=${BIZ}&limit=1000`);
    const all = r.json?.records ?? [];
    return all.length >= 6 ? all : null;
  }, { timeoutMs: 10000, intervalMs: 50, what: 'the 6 audit records of businessId 77' });
  const v3 = recs.filter((x) => x.api === 'v3');
  const v2recs = recs.filter((x) => x.api === 'v2');
  assert.equal(v3.length, 3, JSON.stringify(recs));
  assert.equal(v2recs.length, 3, JSON.stringify(recs));
  const fwd = v3.find((x) => x.decision === 'forwarded');
  assert.ok(fwd, JSON.stringify(v3));
  assert.equal(fwd.action, 'DescribeCaptchaResult');
  assert.equal(fwd.app, APPS.sig.name);
  assert.equal(fwd.sceneId, SCENE);
  assert.equal(fwd.captchaType, 9);
  assert.equal(fwd.code, 0);
  assert.equal(fwd.codeDesc, 'Success');
  assert.equal(fwd.upstream_status, 200);
  assert.match(fwd.userIp ?? '', /^[0-9a-f]{32}$/, 'UserIp kept as a hash');
  assert.match(fwd.imei ?? '', /^[0-9a-f]{32}$/, 'Imei kept as a hash');
  const limited = v3.filter((x) => x.decision === 'limited');
  assert.equal(limited.length, 2);
  for (const x of limited) {
    assert.equal(x.codeDesc, 'RequestLimitExceeded');
    assert.equal(x.rule, 'biz77');
  }
  for (const x of v2recs) assert.equal(x.action, 'CaptchaIframeQuery');
  const text = JSON.stringify(recs);
  assert.ok(!text.includes(APP_KEY), 'no AppSecretKey in the audit');
});

test('idempotent replay works for 3.0: the stored reply, byte for byte', async () => {
  const s = await solve();
  const key = `v3-idem-${Date.now()}`;
  const body = fields(s);
  const first = await call3({ body, mutate: (h) => { h['Idempotency-Key'] = key; } });
  assert.equal(first.json?.Response?.CaptchaCode, 1, first.body);
  const second = await call3({ body, mutate: (h) => { h['Idempotency-Key'] = key; } });
  assert.equal(second.headers['idempotent-replayed'], 'true');
  assert.equal(second.body, first.body, 'forwarded again it would have been 9 ticket reused');
  // another body under the same key is refused
  const other = await call3({ body: { ...body, UserIp: '198.51.100.1' }, mutate: (h) => { h['Idempotency-Key'] = key; } });
  error3(other, 'InvalidParameter', /Idempotency-Key/);
});

test('bad 3.0 input: each answered with a 3.0-shaped error naming what was wrong, and the gateway keeps serving', async () => {
  const s = await solve();
  const good = fields(s);
  const now = Math.floor(Date.now() / 1000);
  const cases = [
    ['malformed JSON', { body: '{"CaptchaType": 9,' }, 'InvalidParameter', /not JSON/],
    ['a JSON array', { body: '[1,2]' }, 'InvalidParameter', /JSON object/],
    ['CaptchaAppId as a string', { body: { ...good, CaptchaAppId: String(APP_ID) } }, 'InvalidParameter', /CaptchaAppId must be an Integer/],
    ['Ticket as a number', { body: { ...good, Ticket: 5 } }, 'InvalidParameter', /Ticket must be a String/],
    ['BusinessId negative', { body: { ...good, BusinessId: -1 } }, 'InvalidParameterValue', /BusinessId/],
    ['CaptchaType 1', { body: { ...good, CaptchaType: 1 } }, 'InvalidParameterValue', /CaptchaType must be 9/],
    ['an unknown field', { body: { ...good, Foo: 'x' } }, 'UnknownParameter', /Foo is not a parameter of DescribeCaptchaResult/],
    ['no Ticket', { body: { ...good, Ticket: undefined } }, 'MissingParameter', /Ticket/],
    ['an unknown Action', { action: 'DescribeCaptchaData' }, 'InvalidAction', /DescribeCaptchaData/],
    ['another Version', { version: '2017-03-12' }, 'NoSuchVersion', /2017-03-12/],
    ['a text/plain body', { contentType: 'text/plain' }, 'InvalidParameter', /Content-Type/],
    // a form, multipart and GET are shapes of their own (sdk_v3_shapes.test.mjs): JSON text sent as a
    // form is a parameter whose name is the whole text
    ['JSON text as a form', { contentType: 'application/x-www-form-urlencoded' }, 'InvalidParameter', /parameter name/],
    ['no Authorization', { mutate: (h) => { delete h.Authorization; } }, 'AuthFailure.InvalidAuthorization', /Authorization header is missing/],
    ['a garbled Authorization', { mutate: (h) => { h.Authorization = 'TC3-HMAC-SHA256 Credential=xyz'; } }, 'AuthFailure.InvalidAuthorization', null],
    ['a wrong bearer token', { mutate: (h) => { h.Authorization = 'Bearer nope'; } }, 'AuthFailure.InvalidAuthorization', /bearer token/],
    ['an unknown SecretId', { secretId: 'AKIDnobodyHasThis000000000000000000' }, 'AuthFailure.SecretIdNotFound', /AKIDnobodyHasThis/],
    ['a bad signature', { secretKey: 'not-the-key' }, 'AuthFailure.SignatureFailure', null],
    ['a body changed after signing', { mutate: (h) => { h['X-TC-Action'] = 'DescribeCaptchaResult'; }, body: good, tamper: true }, 'AuthFailure.SignatureFailure', null],
    ['an expired timestamp', { timestamp: now - 3600 }, 'AuthFailure.SignatureExpire', /X-TC-Timestamp/],
    ['X-TC-Timestamp not digits', { mutate: (h) => { h['X-TC-Timestamp'] = 'yesterday'; } }, 'InvalidParameter', /X-TC-Timestamp/],
    ['no X-TC-Version', { mutate: (h) => { delete h['X-TC-Version']; } }, 'MissingParameter', /X-TC-Version/],
  ];
  for (const [name, opts, code, re] of cases) {
    const { tamper, ...o } = opts;
    let r;
    if (tamper) {
      // signed for one body, sent with another: the hashed payload differs
      const { request } = await import('./lib/harness.mjs');
      const { tc3Sign } = await import('./lib/tc3.mjs');
      const u = new URL(gw.httpsBase);
      const ts = Math.floor(Date.now() / 1000);
      const headers = { 'Content-Type': 'application/json', Host: u.host, 'X-TC-Action': 'DescribeCaptchaResult',
        'X-TC-Version': '2019-07-22', 'X-TC-Timestamp': String(ts) };
      headers.Authorization = tc3Sign({ headers, payload: JSON.stringify(good), secretId: APPS.sig.secretId,
        secretKey: APPS.sig.secretKey, service: '127', timestamp: ts }).authorization;
      r = await request(`${gw.httpsBase}/`, { method: 'POST', headers, body: JSON.stringify({ ...good, UserIp: '9.9.9.9' }), ca: certs().caPem });
    } else {
      r = await call3({ body: good, ...o });
    }
    try {
      error3(r, code, re);
    } catch (e) {
      e.message = `${name}: ${e.message}`;
      throw e;
    }
  }
  // an oversized body (http.max_body 64 KiB): 413, still in 3.0's shape
  const big = await call3({ body: { ...good, Imei: 'x'.repeat(70000) } });
  assert.equal(big.status, 413, big.body);
  assert.equal(big.json?.Response?.Error?.Code, 'RequestSizeLimitExceeded', big.body);
  assert.match(big.json.Response.Error.Message, /65536/);
  // still serving, on both fronts
  const ok = await call3({ body: good });
  assert.equal(ok.json?.Response?.CaptchaCode, 1, ok.body);
  const plain = await tc3Call(gw.base, { secretId: APPS.sig.secretId, secretKey: APPS.sig.secretKey, service: '127', body: good });
  assert.equal(plain.json?.Response?.CaptchaCode, 9, plain.body);
  // the refusals were audited as v3
  const recs = await auditRecords((x) => x.api === 'v3' && x.codeDesc === 'AuthFailure.SecretIdNotFound', 'the unknown SecretId record');
  assert.equal(recs[0].secret_id, 'AKIDnobodyHasThis000000000000000000');
  assert.equal(recs[0].decision, 'unauthorized');
});

test('a reset of a reused upstream connection is retried, built and signed again; the app gets the mock\'s CaptchaCode; 3.0 errors stay 200 with http_errors semantic', async () => {
  // One worker, one upstream connection: every call after the first rides a reused connection.
  const gw1 = await startGateway({
    mock,
    env: { GW_CAPTCHA_APP_KEY: APP_KEY },
    config: {
      workers: 1,
      http_errors: 'semantic',
      upstream: { v3_url: `https://127.0.0.1:${mock.tlsPort}/`, retries: 1, max_connections: 1, timeout_ms: 3000,
        breaker_failures: 1000 },
      captcha_apps: [{ captcha_app_id: APP_ID, app_secret_key_env: 'GW_CAPTCHA_APP_KEY' }],
    },
  });
  try {
    const call = (s) => tc3Call(gw1.base, { secretId: APPS.sig.secretId, secretKey: APPS.sig.secretKey, service: '127',
      body: fields(s) });
    const warm = await call(await solve());
    assert.equal(warm.json?.Response?.CaptchaCode, 1, warm.body);
    for (const network of ['reset', 'close']) {
      const s = await solve();
      await mock.admin('faults', { method: 'POST', json: { action: 'DescribeCaptchaResult', network, times: 1 } });
      const r = await call(s);
      assert.equal(r.json?.Response?.CaptchaCode, 1, `${network}: ${r.body}`);
      const seen = (await mock.admin('requests?action=DescribeCaptchaResult')).requests.filter((e) => e.params?.Ticket === s.ticket);
      assert.equal(seen.length, 2, `${network}: the attempt and its retry: ${JSON.stringify(seen)}`);
      assert.match(seen[0].fault ?? '', new RegExp(network), JSON.stringify(seen[0]));
      for (const e of seen) {
        assert.equal(e.signature, 'ok', JSON.stringify(e));
        assert.equal(e.params.AppSecretKey, '***', 'the retry carries the injected key too');
      }
    }
    // http_errors "semantic" is v2's: a 3.0 error stays HTTP 200, as the 3.0 SDKs read it
    const bad = await tc3Call(gw1.base, { secretId: APPS.sig.secretId, secretKey: 'wrong', service: '127', body: {} });
    error3(bad, 'AuthFailure.SignatureFailure');
    const v2bad = await gwCall(gw1, { secretKey: 'wrong' });
    assert.equal(v2bad.status, 401, v2bad.body);
  } finally {
    await gw1.stop();
  }
});

test('the 3.0 upstream has its own breaker, exported as capgate_upstream_breaker_state{api="v3"}: open after its failures while v2 calls still go through', async () => {
  const gw1 = await startGateway({
    mock,
    env: { GW_CAPTCHA_APP_KEY: APP_KEY },
    config: {
      workers: 1,
      upstream: { v3_url: `https://127.0.0.1:${mock.tlsPort}/`, retries: 0, breaker_failures: 2, breaker_open_ms: 60000 },
      captcha_apps: [{ captcha_app_id: APP_ID, app_secret_key_env: 'GW_CAPTCHA_APP_KEY' }],
    },
  });
  const breakers = async () => {
    const m = await gw1.metrics();
    return Object.fromEntries(m.samples.filter((x) => x.name === 'capgate_upstream_breaker_state')
      .map((x) => [x.labels.api, x.value]));
  };
  try {
    const call = (s) => tc3Call(gw1.base, { secretId: APPS.sig.secretId, secretKey: APPS.sig.secretKey, service: '127',
      body: fields(s) });
    assert.deepEqual(await breakers(), { v2: 0, v3: 0 });
    await mock.admin('faults', { method: 'POST', json: { action: 'DescribeCaptchaResult', network: 'reset', times: 2 } });
    for (let i = 0; i < 2; i++) {
      const r = await call(await solve());
      assert.ok(r.json?.Response?.Error, `failure ${i + 1} answered as a 3.0 error: ${r.body}`);
    }
    // the worker publishes its view every 200 ms
    await waitFor(async () => (await breakers()).v3 === 1, { timeoutMs: 5000, what: 'the v3 breaker open in /metrics' });
    assert.equal((await breakers()).v2, 0, 'the v2 breaker saw no failure');
    const before = (await mock.admin('requests?action=DescribeCaptchaResult')).requests.length;
    const open = await call(await solve());
    assert.ok(open.json?.Response?.Error, `refused by the open breaker: ${open.body}`);
    assert.equal((await mock.admin('requests?action=DescribeCaptchaResult')).requests.length, before,
      'an open breaker does not call the upstream');
    const v2 = await gwCall(gw1, { app: APPS.token });
    assert.equal(v2.json?.code, 0, `v2 calls are not behind the 3.0 breaker: ${v2.body}`);
  } finally {
    await gw1.stop();
  }
});

test('captcha_apps from a file: SIGHUP applies a rotated AppSecretKey; "inject": "always" replaces the app\'s key', async () => {
  const { default: fs } = await import('node:fs');
  const { default: path } = await import('node:path');
  const { tmpDir } = await import('./lib/harness.mjs');
  const dir = tmpDir('capgate-v3-key-');
  const keyFile = path.join(dir, 'app.key');
  fs.writeFileSync(keyFile, `${APP_KEY}\n`);
  const cfg = (inject) => ({
    upstream: { v3_url: `https://127.0.0.1:${mock.tlsPort}/` },
    captcha_apps: [{ captcha_app_id: APP_ID, app_secret_key_file: keyFile, inject }],
  });
  const gw2 = await startGateway({ mock, config: cfg('always') });
  try {
    const call = async (extra = {}) => {
      const r = await tc3Call(gw2.base, { secretId: APPS.sig.secretId, secretKey: APPS.sig.secretKey, service: '127',
        body: fields(await solve(), extra) });
      return r.json?.Response?.CaptchaCode ?? r.body;
    };
    // always: the app's wrong key is replaced by the gateway's
    assert.equal(await call({ AppSecretKey: 'the-app-guessed-wrong' }), 1);
    // a rotated key file, applied by SIGHUP: the mock no longer accepts what the gateway injects
    fs.writeFileSync(keyFile, 'rotated-key-the-mock-does-not-know\n');
    const m0 = (await gw2.metrics()).get('capgate_config_reloads_total', { result: 'success' });
    gw2.reload();
    await waitFor(async () => (await gw2.metrics()).get('capgate_config_reloads_total', { result: 'success' }) > m0,
      { timeoutMs: 10000, intervalMs: 50, what: 'the reload' });
    assert.match(gw2.proc.stderr, /reload: captcha_apps\[0\] changed|reload: captcha_apps/, gw2.proc.stderr.slice(-2000));
    assert.equal(await call(), 100, 'the rotated key is the one injected');
    // "missing": the app's own (right) key is forwarded as is
    const c = JSON.parse(fs.readFileSync(gw2.configPath, 'utf8'));
    c.captcha_apps[0].inject = 'missing';
    gw2.writeConfig(c);
    gw2.reload();
    await waitFor(async () => (await gw2.metrics()).get('capgate_config_reloads_total', { result: 'success' }) > m0 + 1,
      { timeoutMs: 10000, intervalMs: 50, what: 'the second reload' });
    assert.equal(await call({ AppSecretKey: APP_KEY }), 1);
    assert.equal(await call(), 100);
  } finally {
    await gw2.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
