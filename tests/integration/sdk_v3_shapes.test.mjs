// sdk_v3_shapes.test.mjs: every request shape the official Node SDK (tencentcloud-sdk-nodejs,
// captcha v20190722) sends for API 3.0, against capgate-mock directly and through the gateway:
// profile.signMethod TC3-HMAC-SHA256 with httpProfile.reqMethod POST (JSON) and GET, TC3 POST
// multipart (client.request(..., { multipart: true })), and the v1 signature (HmacSHA1,
// HmacSHA256) over GET and POST (a form). Each gets a CaptchaCode; then the refusals: a wrong key
// (AuthFailure.SignatureFailure), an old timestamp (AuthFailure.SignatureExpire), a replayed v1
// Nonce, a missing field (MissingParameter), a CaptchaType that is not a number
// (InvalidParameterValue), a Token (AuthFailure.TokenFailure). The gateway forwards every shape
// as POST JSON signed TC3 (the mock's journal shows it) and audits them alike. Hand-built
// requests only for what the SDK cannot send (a malformed query, a tampered query, PUT).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { createRequire } from 'node:module';
import { certs, request, sign, startMock, startRedis, waitFor, MOCK_SECRET_ID, MOCK_SECRET_KEY } from './lib/harness.mjs';
import { APPS, baseApps, startGateway } from './lib/gateway.mjs';
import { tc3Sign, sdkError } from './lib/tc3.mjs';

const require = createRequire(import.meta.url);
const tencentcloud = require('tencentcloud-sdk-nodejs');

const APP_ID = 190012345; // the gateway holds its AppSecretKey
const APP_KEY = 'gw-held-app-secret-key-31d9';

let mock;
let gw;

before(async () => {
  mock = await startMock({ tls: true, env: { CAPGATE_MOCK_CAPTCHA_APP: `${APP_ID}:${APP_KEY}` } });
  gw = await startGateway({
    mock,
    tls: true,
    env: { GW_CAPTCHA_APP_KEY: APP_KEY },
    config: {
      upstream: { v3_url: `https://127.0.0.1:${mock.tlsPort}/` },
      captcha_apps: [{ captcha_app_id: APP_ID, app_secret_key_env: 'GW_CAPTCHA_APP_KEY' }],
      apps: baseApps(),
    },
  });
});
after(async () => {
  await gw?.stop();
  await mock?.stop();
});

// The targets: the mock with its own credential, and the gateway with an app's gateway-issued one
// (the gateway injects the AppSecretKey).
const targets = {
  mock: () => ({ host: new URL(mock.httpsUrl).host, secretId: MOCK_SECRET_ID, secretKey: MOCK_SECRET_KEY,
    base: mock.httpsUrl.replace(/\/$/, ''), appKey: { AppSecretKey: APP_KEY } }),
  gateway: () => ({ host: gw.tlsHost, secretId: APPS.sig.secretId, secretKey: APPS.sig.secretKey,
    base: gw.httpsBase, appKey: {} }),
};

// The shapes the SDK sends: [signMethod, reqMethod, multipart].
const SHAPES = [
  ['TC3-HMAC-SHA256', 'POST', false],
  ['TC3-HMAC-SHA256', 'GET', false],
  ['TC3-HMAC-SHA256', 'POST', true],
  ['HmacSHA1', 'GET', false],
  ['HmacSHA1', 'POST', false],
  ['HmacSHA256', 'GET', false],
  ['HmacSHA256', 'POST', false],
];
const shapeName = ([m, r, mp]) => `${m} ${r}${mp ? ' multipart' : ''}`;

function client(t, signMethod, reqMethod, cred = {}, language = undefined) {
  return new tencentcloud.captcha.v20190722.Client({
    credential: { secretId: t.secretId, secretKey: t.secretKey, ...cred },
    region: '',
    profile: {
      signMethod,
      language,
      httpProfile: { reqMethod, endpoint: t.host, protocol: 'https://', agent: new https.Agent({ ca: certs().caPem }) },
    },
  });
}

// v1's Nonce is Math.round(Math.random() * 65535) in the SDK: each call here gets its own (a
// random collision would be refused as a replay), or a chosen one to replay.
let nextNonce = 1000 + Math.floor(Math.random() * 20000);
async function withNonce(nonce, fn) {
  const real = Math.random;
  Math.random = () => nonce / 65535;
  try {
    return await fn();
  } finally {
    Math.random = real;
  }
}

// The SDK's clock moved by offsetS (Date.now for v1's Timestamp, new Date() for TC3's).
async function atOffset(offsetS, fn) {
  const RealDate = Date;
  const realNow = RealDate.now.bind(RealDate);
  class Shifted extends RealDate {
    constructor(...a) {
      if (a.length) super(...a);
      else super(realNow() + offsetS * 1000);
    }
    static now() { return realNow() + offsetS * 1000; }
  }
  globalThis.Date = Shifted;
  try {
    return await fn();
  } finally {
    globalThis.Date = RealDate;
  }
}

/** One SDK call of a shape. multipart: the SDK hashes only string (and Buffer) parts of the body
 * it sends (common/sign.js sign3), so its fields go as strings there. */
function sdkCall(t, shape, body, { cred, nonce, action = 'DescribeCaptchaResult', language } = {}) {
  const [signMethod, reqMethod, multipart] = shape;
  const c = client(t, signMethod, reqMethod, cred, language);
  const send = () => (multipart
    ? c.request(action, Object.fromEntries(Object.entries(body).map(([k, v]) => [k, String(v)])), { multipart: true })
    : c.request(action, body));
  return withNonce(nonce ?? nextNonce++, send);
}

async function solve() {
  const s = await mock.admin('solve', { method: 'POST', json: { appid: APP_ID } });
  assert.ok(s.ticket && s.randstr, JSON.stringify(s));
  return s;
}

const fields = (t, s, extra = {}) => ({ CaptchaType: 9, Ticket: s.ticket, UserIp: '203.0.113.9', Randstr: s.randstr,
  CaptchaAppId: APP_ID, ...t.appKey, ...extra });

for (const [name, target] of Object.entries(targets)) {
  test(`${name}: every SDK shape verifies a ticket (CaptchaCode 1, then 9 reused)`, async () => {
    for (const shape of SHAPES) {
      const t = target();
      const s = await solve();
      const r = await sdkCall(t, shape, fields(t, s, { NeedGetCaptchaTime: 1 }));
      assert.equal(r.CaptchaCode, 1, `${shapeName(shape)}: ${JSON.stringify(r)}`);
      assert.equal(r.CaptchaMsg, 'OK');
      assert.ok(r.GetCaptchaTime > 0, `${shapeName(shape)}: NeedGetCaptchaTime "1" typed as 1`);
      const again = await sdkCall(t, shape, fields(t, s));
      assert.equal(again.CaptchaCode, 9, `${shapeName(shape)}: ${JSON.stringify(again)}`);
      // the Mini action too (its own field model)
      const s2 = await solve();
      const mini = await sdkCall(t, shape, { CaptchaType: 9, Ticket: s2.ticket, UserIp: '203.0.113.9',
        CaptchaAppId: APP_ID, ...t.appKey }, { action: 'DescribeCaptchaMiniResult' });
      assert.equal(mini.CaptchaCode, 1, `${shapeName(shape)} mini: ${JSON.stringify(mini)}`);
    }
  });

  test(`${name}: a client with profile.language (X-TC-Language, or v1's Language) is answered in every shape`, async () => {
    for (const shape of SHAPES) {
      const t = target();
      const s = await solve();
      const r = await sdkCall(t, shape, fields(t, s), { language: 'en-US' });
      assert.equal(r.CaptchaCode, 1, `${shapeName(shape)}: ${JSON.stringify(r)}`);
    }
  });

  test(`${name}: a wrong SecretKey is AuthFailure.SignatureFailure in every shape`, async () => {
    for (const shape of SHAPES) {
      const t = target();
      const s = await solve();
      const e = await sdkError(sdkCall(t, shape, fields(t, s), { cred: { secretKey: 'not-the-key' } }));
      assert.equal(e.code, 'AuthFailure.SignatureFailure', `${shapeName(shape)}: ${e.message}`);
    }
  });

  test(`${name}: a timestamp an hour old is AuthFailure.SignatureExpire in every shape`, async () => {
    for (const shape of SHAPES) {
      const t = target();
      const s = await solve();
      const e = await sdkError(atOffset(-3600, () => sdkCall(t, shape, fields(t, s))));
      assert.equal(e.code, 'AuthFailure.SignatureExpire', `${shapeName(shape)}: ${e.message}`);
      // the server's own skew, in seconds, is named
      const skew = Number(e.message.match(/is (\d+) s from the server time/)?.[1]);
      assert.ok(skew >= 3590 && skew <= 3610, e.message);
    }
  });

  test(`${name}: a replayed v1 Nonce is refused (AuthFailure.SignatureExpire), a new one passes`, async () => {
    for (const method of ['HmacSHA1', 'HmacSHA256']) {
      for (const reqMethod of ['GET', 'POST']) {
        const t = target();
        const nonce = nextNonce++;
        const s = await solve();
        const r = await sdkCall(t, [method, reqMethod, false], fields(t, s), { nonce });
        assert.equal(r.CaptchaCode, 1, JSON.stringify(r));
        const s2 = await solve();
        const e = await sdkError(sdkCall(t, [method, reqMethod, false], fields(t, s2), { nonce }));
        assert.equal(e.code, 'AuthFailure.SignatureExpire', e.message);
        assert.match(e.message, new RegExp(`Nonce ${nonce} was already used`));
        const ok = await sdkCall(t, [method, reqMethod, false], fields(t, s2));
        assert.equal(ok.CaptchaCode, 1, JSON.stringify(ok));
      }
    }
  });

  test(`${name}: a missing field is MissingParameter, a CaptchaType that is no number InvalidParameterValue`, async () => {
    for (const shape of SHAPES) {
      const t = target();
      const s = await solve();
      const body = fields(t, s);
      delete body.Ticket;
      const e = await sdkError(sdkCall(t, shape, body));
      assert.equal(e.code, 'MissingParameter', `${shapeName(shape)}: ${e.message}`);
      assert.match(e.message, /Ticket/);
      if (shape[1] === 'POST' && !shape[2] && shape[0].startsWith('TC3')) {
        // JSON: a string where an Integer goes is the wrong type (the JSON path's rule)
        const j = await sdkError(sdkCall(t, shape, fields(t, s, { CaptchaType: 'abc' })));
        assert.equal(j.code, 'InvalidParameter', j.message);
        continue;
      }
      const v = await sdkError(sdkCall(t, shape, fields(t, s, { CaptchaType: 'abc' })));
      assert.equal(v.code, 'InvalidParameterValue', `${shapeName(shape)}: ${v.message}`);
      assert.match(v.message, /CaptchaType must be an Integer; got "abc"/);
      // "9" in a query or form is the Integer 9; 8 is a value the service refuses
      const eight = await sdkError(sdkCall(t, shape, fields(t, s, { CaptchaType: 8 })));
      assert.equal(eight.code, 'InvalidParameterValue', eight.message);
      assert.match(eight.message, /CaptchaType must be 9/);
      const unknown = await sdkError(sdkCall(t, shape, fields(t, s, { Color: 'red' })));
      assert.equal(unknown.code, 'UnknownParameter', unknown.message);
    }
  });

  test(`${name}: a Token (temporary credential) on a permanent key is AuthFailure.TokenFailure`, async () => {
    for (const shape of SHAPES) {
      const t = target();
      const s = await solve();
      const e = await sdkError(sdkCall(t, shape, fields(t, s), { cred: { token: 'temporary-token-1' } }));
      assert.equal(e.code, 'AuthFailure.TokenFailure', `${shapeName(shape)}: ${e.message}`);
      // the ticket was not spent
      const r = await sdkCall(t, shape, fields(t, s));
      assert.equal(r.CaptchaCode, 1, `${shapeName(shape)}: ${JSON.stringify(r)}`);
    }
  });

  test(`${name}: multipart with Integer fields as numbers: the SDK's own hash leaves them out (sign.js), so its signature cannot match`, async () => {
    const t = target();
    const s = await solve();
    const c = client(t, 'TC3-HMAC-SHA256', 'POST');
    const e = await sdkError(withNonce(1, () => c.request('DescribeCaptchaResult', fields(t, s), { multipart: true })));
    assert.equal(e.code, 'AuthFailure.SignatureFailure', e.message);
  });

  test(`${name}: hand-built shapes the SDK does not send: each answered in the 3.0 error shape`, async () => {
    const t = target();
    const ts = Math.floor(Date.now() / 1000);
    const get = async (query, { tamper, method = 'GET', contentType = 'application/x-www-form-urlencoded' } = {}) => {
      const headers = { 'Content-Type': contentType, Host: t.host, 'X-TC-Action': 'DescribeCaptchaResult',
        'X-TC-Version': '2019-07-22', 'X-TC-Timestamp': String(ts) };
      headers.Authorization = tc3Sign({ method: 'GET', query, headers, payload: '', secretId: t.secretId,
        secretKey: t.secretKey, service: '127', timestamp: ts }).authorization;
      const r = await request(`${t.base}/?${tamper ?? query}`, { method, headers, ca: certs().caPem });
      assert.equal(r.status, 200, r.body);
      assert.ok(r.json?.Response?.RequestId, r.body);
      return r.json.Response;
    };
    const s = await solve();
    const q = new URLSearchParams({ CaptchaType: '9', Ticket: s.ticket, UserIp: '1.2.3.4', Randstr: s.randstr,
      CaptchaAppId: String(APP_ID), ...t.appKey }).toString();
    let r = await get('CaptchaType=9&Ticket=%zz');
    assert.equal(r.Error?.Code, 'InvalidParameter', JSON.stringify(r));
    assert.match(r.Error.Message, /percent/);
    r = await get(q, { tamper: q.replace('UserIp=1.2.3.4', 'UserIp=1.2.3.5') });
    assert.equal(r.Error?.Code, 'AuthFailure.SignatureFailure', JSON.stringify(r));
    r = await get(q, { method: 'PUT' });
    assert.equal(r.Error?.Code, 'UnsupportedProtocol', JSON.stringify(r));
    r = await get(`${q}&CaptchaType=9`);
    assert.equal(r.Error?.Code, 'InvalidParameter', JSON.stringify(r));
    assert.match(r.Error.Message, /CaptchaType/);
    // the same query, signed as sent: verified (CaptchaCode 1)
    r = await get(q);
    assert.equal(r.CaptchaCode, 1, JSON.stringify(r));
    // multipart without a boundary, a form with a bad escape: InvalidParameter naming it
    const mp = await request(`${t.base}/`, { method: 'POST', body: 'x', ca: certs().caPem,
      headers: { Host: t.host, 'Content-Type': 'multipart/form-data' } });
    assert.equal(mp.json?.Response?.Error?.Code, 'InvalidParameter', mp.body);
    assert.match(mp.json.Response.Error.Message, /boundary/);
    const fm = await request(`${t.base}/`, { method: 'POST', body: 'Ticket=%G1', ca: certs().caPem,
      headers: { Host: t.host, 'Content-Type': 'application/x-www-form-urlencoded' } });
    assert.equal(fm.json?.Response?.Error?.Code, 'InvalidParameter', fm.body);
    assert.match(fm.json.Response.Error.Message, /Ticket/);
    // v1 without its Nonce: MissingParameter
    const form = new URLSearchParams({ Action: 'DescribeCaptchaResult', Version: '2019-07-22', SecretId: t.secretId,
      Timestamp: String(ts), Signature: 'x', CaptchaType: '9' }).toString();
    const v1 = await request(`${t.base}/?${form}`, { ca: certs().caPem, headers: { Host: t.host } });
    assert.equal(v1.json?.Response?.Error?.Code, 'MissingParameter', v1.body);
    assert.match(v1.json.Response.Error.Message, /Nonce/);
  });

  test(`${name}: X-TC-Content-SHA256: UNSIGNED-PAYLOAD (the Python, Java and Go SDKs' unsignedPayload) signs that string, not the body`, async () => {
    const t = target();
    const s = await solve();
    const ts = Math.floor(Date.now() / 1000);
    const body = JSON.stringify(fields(t, s));
    const send = (signedPayload, extra = {}) => {
      const headers = { 'Content-Type': 'application/json', Host: t.host, 'X-TC-Action': 'DescribeCaptchaResult',
        'X-TC-Version': '2019-07-22', 'X-TC-Timestamp': String(ts), ...extra };
      headers.Authorization = tc3Sign({ headers, payload: signedPayload, secretId: t.secretId,
        secretKey: t.secretKey, service: '127', timestamp: ts }).authorization;
      return request(`${t.base}/`, { method: 'POST', headers, body, ca: certs().caPem });
    };
    // signed over "UNSIGNED-PAYLOAD" without saying so: the body's hash was expected
    let r = await send('UNSIGNED-PAYLOAD');
    assert.equal(r.json?.Response?.Error?.Code, 'AuthFailure.SignatureFailure', r.body);
    // said so, but signed over the body: refused too
    r = await send(body, { 'X-TC-Content-SHA256': 'UNSIGNED-PAYLOAD' });
    assert.equal(r.json?.Response?.Error?.Code, 'AuthFailure.SignatureFailure', r.body);
    // said and signed so: verified, and the call is answered (CaptchaCode 1)
    r = await send('UNSIGNED-PAYLOAD', { 'X-TC-Content-SHA256': 'UNSIGNED-PAYLOAD' });
    assert.equal(r.json?.Response?.CaptchaCode, 1, r.body);
  });
}

test('mock: a delayed v1 call (fault rule on its Action) is answered and journalled under that Action', async () => {
  const t = targets.mock();
  const s = await solve();
  await mock.admin('faults', { method: 'POST', json: { action: 'DescribeCaptchaResult', delay_ms: 100, times: 1 } });
  const r = await sdkCall(t, ['HmacSHA1', 'GET', false], fields(t, s, { Imei: `delayed-${process.pid}` }));
  assert.equal(r.CaptchaCode, 1, JSON.stringify(r));
  const seen = (await mock.admin('requests?action=DescribeCaptchaResult')).requests
    .filter((e) => e.params.Imei === `delayed-${process.pid}`);
  assert.equal(seen.length, 1, JSON.stringify(seen));
  assert.equal(seen[0].fault, 'delay_ms 100');
  assert.equal(seen[0].params.Action, 'DescribeCaptchaResult');
  assert.equal(seen[0].method, 'GET');
});

test('gateway: a v1 form of 8 KB (fields longer than the parameter list keeps between requests) verifies', async () => {
  const t = targets.gateway();
  for (let i = 0; i < 2; i++) {
    const s = await solve();
    const r = await sdkCall(t, ['HmacSHA256', 'POST', false], fields(t, s, { MacAddress: 'm'.repeat(4000), Imei: 'i'.repeat(4000) }));
    assert.equal(r.CaptchaCode, 1, JSON.stringify(r));
  }
});

test('gateway: every shape is forwarded as POST JSON signed TC3, and audited with the same fields', async () => {
  const t = targets.gateway();
  const biz = { json: 601, 'TC3-HMAC-SHA256 GET': 602, 'HmacSHA1 GET': 603, 'HmacSHA256 POST': 604,
    'TC3-HMAC-SHA256 POST multipart': 605 };
  const shapes = { json: SHAPES[0], 'TC3-HMAC-SHA256 GET': SHAPES[1], 'HmacSHA1 GET': SHAPES[3],
    'HmacSHA256 POST': SHAPES[6], 'TC3-HMAC-SHA256 POST multipart': SHAPES[2] };
  const before = (await mock.admin('requests?action=DescribeCaptchaResult')).requests.length;
  for (const [k, shape] of Object.entries(shapes)) {
    const s = await solve();
    const r = await sdkCall(t, shape, fields(t, s, { BusinessId: biz[k], SceneId: 3, Imei: 'imei-1' }));
    assert.equal(r.CaptchaCode, 1, `${k}: ${JSON.stringify(r)}`);
  }
  const seen = (await mock.admin('requests?action=DescribeCaptchaResult')).requests.slice(before);
  assert.equal(seen.length, 5, JSON.stringify(seen));
  for (const e of seen) {
    assert.equal(e.method, 'POST', JSON.stringify(e));
    assert.equal(e.params.AppSecretKey, '***', 'the gateway injected the AppSecretKey');
    assert.equal(e.params.SecretId, MOCK_SECRET_ID, 're-signed with the real credential');
  }
  const recs = {};
  for (const [k, b] of Object.entries(biz)) {
    recs[k] = (await waitFor(async () => {
      const r = await gw.admin(`/admin/audit?businessId=${b}&limit=10`);
      return r.json?.records?.length ? r.json.records : null;
    }, { timeoutMs: 10000, intervalMs: 50, what: `the audit record of businessId ${b}` }))[0];
  }
  const varying = new Set(['ts', 'request_id', 'requestId', 'latency_ms', 'latency_us', 'upstream_ms', 'upstream_us',
    'businessId', 'ticket', 'seq']);
  const strip = (x) => Object.fromEntries(Object.entries(x).filter(([k]) => !varying.has(k) && !/ms$|us$|^time/i.test(k)));
  const json = strip(recs.json);
  if (process.env.SHOW_AUDIT) console.error(JSON.stringify(recs, null, 1));
  assert.equal(json.api, 'v3');
  assert.equal(json.decision, 'forwarded');
  assert.equal(json.captchaType, 9);
  assert.equal(json.sceneId, 3);
  for (const [k, x] of Object.entries(recs)) {
    assert.deepEqual(Object.keys(x).sort(), Object.keys(recs.json).sort(), `${k}: the same fields`);
    assert.deepEqual(strip(x), json, `${k}: the same values`);
  }
});

test('gateway with Redis: a v1 request to instance A, the same bytes to B: refused by the shared Nonce claim', async () => {
  const redis = await startRedis();
  const gws = [];
  try {
    const config = {
      redis: { url: redis.url, key_prefix: `v3s${process.pid}:`, timeout_ms: 2000 },
      upstream: { v3_url: `https://127.0.0.1:${mock.tlsPort}/` },
      captcha_apps: [{ captcha_app_id: APP_ID, app_secret_key_env: 'GW_CAPTCHA_APP_KEY' }],
      apps: baseApps(),
    };
    for (const name of ['A', 'B']) {
      gws.push(await startGateway({ mock, env: { GW_CAPTCHA_APP_KEY: APP_KEY }, config: { ...config, instance: name } }));
    }
    // what a balancer passes: one Host, the one the app signed (the SDK cannot send to B under
    // A's Host, so this request is built by hand: v1's string to sign is v2's, lib/harness.mjs)
    const host = 'capgate-lb.test';
    const s = await solve();
    const nonce = String(nextNonce++);
    const p = { Action: 'DescribeCaptchaResult', Version: '2019-07-22', SecretId: APPS.sig.secretId,
      Timestamp: String(Math.floor(Date.now() / 1000)), Nonce: nonce, SignatureMethod: 'HmacSHA256',
      CaptchaType: '9', Ticket: s.ticket, UserIp: '203.0.113.9', Randstr: s.randstr, CaptchaAppId: String(APP_ID) };
    p.Signature = sign('GET', host, '/', p, APPS.sig.secretKey);
    const query = new URLSearchParams(p).toString();
    const send = (gw) => request(`${gw.base}/?${query}`, { headers: { host }, timeoutMs: 8000 });
    const first = await send(gws[0]);
    assert.equal(first.json?.Response?.CaptchaCode, 1, first.body);
    const replay = await send(gws[1]);
    assert.equal(replay.json?.Response?.Error?.Code, 'AuthFailure.SignatureExpire', replay.body);
    assert.equal(replay.json.Response.Error.Message, `Nonce ${nonce} was already used by SecretId ${APPS.sig.secretId}`);
    const key = `${config.redis.key_prefix}nonce:${APPS.sig.secretId}:${nonce}`;
    assert.ok(Number(redis.cli('PTTL', key)) > 0, `the claim ${key} is in Redis`);
  } finally {
    for (const gw of gws) await gw.stop();
    await redis.stop();
  }
});
