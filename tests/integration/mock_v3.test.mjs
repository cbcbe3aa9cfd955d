// mock_v3.test.mjs: API 3.0 against capgate-mock. The official Node SDK (tencentcloud-sdk-nodejs,
// captcha v20190722), changed only in endpoint (the mock's HTTPS listener, its CA in an agent)
// and credentials: success, each CaptchaCode, expired timestamp, bad signature, unknown SecretId,
// missing parameter, unknown Action. The project's own TC3 client (lib/tc3.mjs) is compared with
// the SDK's Authorization, and sends what the SDK would not: malformed JSON, wrong types, an
// oversized body, a missing or garbled Authorization. Each answer is 3.0-shaped and the mock
// keeps serving. Faults, the journal and --seed cover 3.0 calls.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { createRequire } from 'node:module';
import { startMock, certs, request, MOCK_SECRET_ID, MOCK_SECRET_KEY } from './lib/harness.mjs';
import { tc3Sign, tc3Call, sdkError } from './lib/tc3.mjs';

const require = createRequire(import.meta.url);
const tencentcloud = require('tencentcloud-sdk-nodejs');
const Sign = require('tencentcloud-sdk-nodejs/tencentcloud/common/sign.js').default;

const APP_ID = 190012345;
const APP_KEY = 'app-secret-for-tests';
const APP2_ID = 190099999;
const APP2_KEY = 'second-app-key';
let mock;

before(async () => {
  // The apps through the environment here (a list, as CAPGATE_MOCK_CREDENTIAL); flags below.
  mock = await startMock({ tls: true, env: { CAPGATE_MOCK_CAPTCHA_APP: `${APP_ID}:${APP_KEY},${APP2_ID}:${APP2_KEY}` } });
});
after(async () => {
  await mock?.stop();
});

function client({ secretId = MOCK_SECRET_ID, secretKey = MOCK_SECRET_KEY } = {}) {
  const u = new URL(mock.httpsUrl);
  return new tencentcloud.captcha.v20190722.Client({
    credential: { secretId, secretKey },
    region: '',
    profile: {
      httpProfile: { endpoint: u.host, protocol: 'https://', agent: new https.Agent({ ca: certs().caPem }) },
    },
  });
}

async function solve(appid = APP_ID) {
  const s = await mock.admin('solve', { method: 'POST', json: { appid } });
  assert.ok(s.ticket && s.randstr, JSON.stringify(s));
  assert.equal(s.appid, appid);
  return s;
}

const req = (s, extra = {}) => ({
  CaptchaType: 9, Ticket: s.ticket, UserIp: '203.0.113.7', Randstr: s.randstr,
  CaptchaAppId: APP_ID, AppSecretKey: APP_KEY, ...extra,
});

async function journal(action) {
  const body = await mock.admin(`requests${action ? `?action=${action}` : ''}`);
  return body.requests;
}

test('SDK DescribeCaptchaResult: a solved ticket verifies once (1), then 9 ticket reused', async () => {
  const s = await solve();
  const before = Math.floor(Date.now() / 1000);
  const r = await client().DescribeCaptchaResult(req(s, { NeedGetCaptchaTime: 1 }));
  assert.equal(r.CaptchaCode, 1, JSON.stringify(r));
  assert.equal(r.CaptchaMsg, 'OK');
  assert.equal(r.EvilLevel, 0);
  assert.ok(Math.abs(r.GetCaptchaTime - before) <= 5, `GetCaptchaTime ${r.GetCaptchaTime}`);
  assert.ok(r.SubmitCaptchaTime >= r.GetCaptchaTime);
  assert.ok('EvilBitmap' in r && 'Score' in r && 'DeviceRiskCategory' in r);
  assert.match(r.RequestId, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  const again = await client().DescribeCaptchaResult(req(s));
  assert.equal(again.CaptchaCode, 9);
  assert.equal(again.CaptchaMsg, 'ticket reused');
  const seen = (await journal('DescribeCaptchaResult')).filter((e) => e.params.Ticket === s.ticket);
  assert.equal(seen.length, 2);
  assert.equal(seen[0].signature, 'ok');
  assert.equal(seen[0].secret_id, MOCK_SECRET_ID);
  assert.equal(seen[0].params.AppSecretKey, '***', 'the journal must not keep the AppSecretKey');
});

test('SDK DescribeCaptchaResult: GetCaptchaTime is 0 unless NeedGetCaptchaTime is 1', async () => {
  const r = await client().DescribeCaptchaResult(req(await solve()));
  assert.equal(r.CaptchaCode, 1);
  assert.equal(r.GetCaptchaTime, 0);
});

test('SDK DescribeCaptchaResult: each documented CaptchaCode', async () => {
  const c = client();
  let s = await solve();
  let r = await c.DescribeCaptchaResult(req(s, { Randstr: '@zzz' }));
  assert.deepEqual([r.CaptchaCode, r.CaptchaMsg], [7, 'captcha no match']);
  r = await c.DescribeCaptchaResult(req(s, { Ticket: 't03' + 'x'.repeat(64) }));
  assert.deepEqual([r.CaptchaCode, r.CaptchaMsg], [15, 'decrypt fail']);
  r = await c.DescribeCaptchaResult(req(s, { AppSecretKey: 'wrong' }));
  assert.deepEqual([r.CaptchaCode, r.CaptchaMsg], [100, 'appid-secretkey-ticket mismatch']);
  r = await c.DescribeCaptchaResult(req(s, { CaptchaAppId: APP_ID + 1 }));
  assert.equal(r.CaptchaCode, 100);
  // A ticket of another app, checked with this app's pair: 16 appid-ticket mismatch.
  const other = await solve(APP_ID + 7);
  r = await c.DescribeCaptchaResult(req(other));
  assert.deepEqual([r.CaptchaCode, r.CaptchaMsg], [16, 'appid-ticket mismatch']);
  // A configured app's pair, but the ticket is this app's: 16.
  r = await c.DescribeCaptchaResult(req(s, { CaptchaAppId: APP2_ID, AppSecretKey: APP2_KEY }));
  assert.equal(r.CaptchaCode, 16);
  // None of the failures spent the ticket.
  r = await c.DescribeCaptchaResult(req(s));
  assert.equal(r.CaptchaCode, 1);
});

test('several --captcha-app pairs: each app verifies its own tickets with its own key', async () => {
  const m = await startMock({ tls: true, args: ['--captcha-app', `${APP_ID}:${APP_KEY}`, '--captcha-app', `${APP2_ID}:${APP2_KEY}`] });
  try {
    const call = async (s, appid, key) => (await tc3Call(m.httpsUrl, { body: req(s, { CaptchaAppId: appid, AppSecretKey: key }),
      secretId: MOCK_SECRET_ID, secretKey: MOCK_SECRET_KEY, ca: certs().caPem })).json.Response;
    const s2 = await m.admin('solve', { method: 'POST', json: { appid: APP2_ID } });
    assert.equal((await call(s2, APP2_ID, APP_KEY)).CaptchaCode, 100, 'another app\'s key');
    assert.equal((await call(s2, APP_ID, APP_KEY)).CaptchaCode, 16, 'checked as the other app');
    assert.equal((await call(s2, APP2_ID, APP2_KEY)).CaptchaCode, 1);
    const s1 = await m.admin('solve', { method: 'POST', json: { appid: APP_ID } });
    assert.equal((await call(s1, APP_ID, APP_KEY)).CaptchaCode, 1);
  } finally {
    await m.stop();
  }
});

test('a malformed --captcha-app stops the mock with a message naming it', async () => {
  const { spawnSync } = await import('node:child_process');
  const { MOCK_BIN } = await import('./lib/harness.mjs');
  for (const bad of ['abc:key', '123:', '0:key', '12345']) {
    const r = spawnSync(MOCK_BIN, ['--listen', '127.0.0.1:0', '--captcha-app', bad], { encoding: 'utf8', timeout: 10000 });
    assert.notEqual(r.status, 0, bad);
    assert.match(r.stderr, /captcha-app.*CAPTCHAAPPID:APPSECRETKEY/, `${bad}: ${r.stderr}`);
  }
});

test('SDK DescribeCaptchaResult: 8 ticket expired after --captcha-ttl', async () => {
  const short = await startMock({ tls: true, args: ['--captcha-app', `${APP_ID}:${APP_KEY}`, '--captcha-ttl', '1'] });
  try {
    const s = await short.admin('solve', { method: 'POST', json: { appid: APP_ID } });
    await new Promise((r) => setTimeout(r, 1300));
    const u = new URL(short.httpsUrl);
    const c = new tencentcloud.captcha.v20190722.Client({
      credential: { secretId: MOCK_SECRET_ID, secretKey: MOCK_SECRET_KEY }, region: '',
      profile: { httpProfile: { endpoint: u.host, protocol: 'https://', agent: new https.Agent({ ca: certs().caPem }) } },
    });
    const r = await c.DescribeCaptchaResult(req(s));
    assert.deepEqual([r.CaptchaCode, r.CaptchaMsg], [8, 'ticket expired']);
  } finally {
    await short.stop();
  }
});

test('SDK DescribeCaptchaMiniResult: 1, then 25 for a reused ticket, 7 for another app', async () => {
  const c = client();
  const s = await solve();
  const mini = { CaptchaType: 9, Ticket: s.ticket, UserIp: '203.0.113.7', CaptchaAppId: APP_ID, AppSecretKey: APP_KEY };
  let r = await c.DescribeCaptchaMiniResult(mini);
  assert.equal(r.CaptchaCode, 1, JSON.stringify(r));
  assert.equal(r.EvilLevel, undefined, 'the mini response has CaptchaCode and CaptchaMsg only');
  r = await c.DescribeCaptchaMiniResult(mini);
  assert.equal(r.CaptchaCode, 25);
  const other = await solve(APP_ID + 3);
  r = await c.DescribeCaptchaMiniResult({ ...mini, Ticket: other.ticket });
  assert.equal(r.CaptchaCode, 7);
});

test('SDK: wrong SecretKey is AuthFailure.SignatureFailure; unknown SecretId AuthFailure.SecretIdNotFound', async () => {
  const s = await solve();
  let e = await sdkError(client({ secretKey: 'not-the-key' }).DescribeCaptchaResult(req(s)));
  assert.equal(e.code, 'AuthFailure.SignatureFailure');
  e = await sdkError(client({ secretId: 'AKIDnobody' }).DescribeCaptchaResult(req(s)));
  assert.equal(e.code, 'AuthFailure.SecretIdNotFound');
  assert.match(e.message, /AKIDnobody/);
  const bad = (await journal('DescribeCaptchaResult')).filter((x) => x.params['Error.Code'] === 'AuthFailure.SignatureFailure');
  assert.ok(bad.length >= 1);
  assert.equal(bad.at(-1).signature, 'bad');
  // The ticket is still good.
  assert.equal((await client().DescribeCaptchaResult(req(s))).CaptchaCode, 1);
});

test('SDK: missing parameter is MissingParameter, unknown Action InvalidAction', async () => {
  const s = await solve();
  const { UserIp, ...noIp } = req(s);
  let e = await sdkError(client().DescribeCaptchaResult(noIp));
  assert.equal(e.code, 'MissingParameter');
  assert.match(e.message, /UserIp/);
  e = await sdkError(client().request('DescribeCaptchaNothing', {}));
  assert.equal(e.code, 'InvalidAction');
});

test('expired X-TC-Timestamp is AuthFailure.SignatureExpire (the SDK signs its own time, so our client)', async () => {
  const s = await solve();
  const ts = Math.floor(Date.now() / 1000) - 3600;
  const r = await tc3Call(mock.httpsUrl, { body: req(s), secretId: MOCK_SECRET_ID, secretKey: MOCK_SECRET_KEY, timestamp: ts, ca: certs().caPem });
  assert.equal(r.json.Response.Error.Code, 'AuthFailure.SignatureExpire', r.body);
  assert.ok(r.json.Response.RequestId);
  const ok = await tc3Call(mock.httpsUrl, { body: req(s), secretId: MOCK_SECRET_ID, secretKey: MOCK_SECRET_KEY, ca: certs().caPem });
  assert.equal(ok.json.Response.CaptchaCode, 1, ok.body);
});

test('lib/tc3.mjs makes the SDK\'s Authorization for the same inputs', () => {
  for (const [service, host, timestamp, body] of [
    ['captcha', 'captcha.tencentcloudapi.com', 1700000000, { CaptchaType: 9, Ticket: 't', AppSecretKey: 'k' }],
    ['127', '127.0.0.1', 1704067199, {}],
    ['captcha', 'captcha.tencentcloudapi.com', 1704067200, { Ticket: 'é漢', n: 1 }],
  ]) {
    const sdk = Sign.sign3({ method: 'POST', url: `https://${host}/`, payload: body, timestamp, service,
      secretId: 'AKIDx', secretKey: 'sk', headers: { 'Content-Type': 'application/json' } });
    const ours = tc3Sign({ headers: { 'Content-Type': 'application/json', Host: host }, payload: JSON.stringify(body),
      secretId: 'AKIDx', secretKey: 'sk', service, timestamp });
    assert.equal(ours.authorization, sdk);
  }
});

test('our client signs with service captcha and Host with its port: accepted too', async () => {
  const s = await solve();
  const r = await tc3Call(mock.httpsUrl, { body: req(s), secretId: MOCK_SECRET_ID, secretKey: MOCK_SECRET_KEY, ca: certs().caPem });
  assert.equal(r.json.Response.CaptchaCode, 1, r.body);
  const bad = await tc3Call(mock.httpsUrl, { body: req(s), secretId: MOCK_SECRET_ID, secretKey: MOCK_SECRET_KEY,
    service: 'cvm', ca: certs().caPem });
  assert.equal(bad.json.Response.Error.Code, 'AuthFailure.SignatureFailure');
});

test('plain HTTP listener and a charset in Content-Type work; --https-only refuses HTTP', async () => {
  const call = (base, s, o = {}) => tc3Call(base, { body: req(s), secretId: MOCK_SECRET_ID, secretKey: MOCK_SECRET_KEY, ...o });
  let r = await call(mock.url, await solve());
  assert.equal(r.json.Response.CaptchaCode, 1, r.body);
  r = await call(mock.httpsUrl, await solve(), { ca: certs().caPem, contentType: 'application/json; charset=utf-8' });
  assert.equal(r.json.Response.CaptchaCode, 1, r.body);
  const strict = await startMock({ tls: true, args: ['--https-only', '--captcha-app', `${APP_ID}:${APP_KEY}`] });
  try {
    const s = await strict.admin('solve', { method: 'POST', json: { appid: APP_ID } });
    r = await call(strict.url, s);
    assert.equal(r.json?.Response?.Error?.Code, 'UnsupportedProtocol', r.body);
    r = await call(strict.httpsUrl, s, { ca: certs().caPem });
    assert.equal(r.json.Response.CaptchaCode, 1, r.body);
  } finally {
    await strict.stop();
  }
});

test('bad input: each a 3.0-shaped error naming the problem, and the mock keeps serving', async () => {
  const call = (o) => tc3Call(mock.httpsUrl, { secretId: MOCK_SECRET_ID, secretKey: MOCK_SECRET_KEY, ca: certs().caPem, ...o });
  const s = await solve();
  const cases = [
    ['malformed JSON', { body: '{"CaptchaType": 9,' }, 'InvalidParameter', /JSON/],
    ['JSON array body', { body: '[1,2]' }, 'InvalidParameter', /object/],
    ['CaptchaAppId as a string', { body: req(s, { CaptchaAppId: String(APP_ID) }) }, 'InvalidParameter', /CaptchaAppId/],
    ['Ticket as a number', { body: req(s, { Ticket: 5 }) }, 'InvalidParameter', /Ticket/],
    ['CaptchaType 1', { body: req(s, { CaptchaType: 1 }) }, 'InvalidParameterValue', /CaptchaType/],
    ['unknown field', { body: req(s, { Foo: 1 }) }, 'UnknownParameter', /Foo/],
    ['wrong Version', { version: '2017-03-12', body: req(s) }, 'NoSuchVersion', /2017-03-12/],
    ['missing Authorization', { body: req(s), mutate: (h) => delete h.Authorization }, 'AuthFailure.InvalidAuthorization', /missing/],
    ['garbled Authorization', { body: req(s), mutate: (h) => { h.Authorization = 'TC3-HMAC-SHA256 Credential=x'; } },
      'AuthFailure.InvalidAuthorization', /Credential/],
    ['other algorithm', { body: req(s), mutate: (h) => { h.Authorization = h.Authorization.replace('TC3-', 'TC4-'); } },
      'AuthFailure.InvalidAuthorization', /TC3-HMAC-SHA256/],
    ['missing X-TC-Action', { body: req(s), mutate: (h) => delete h['X-TC-Action'] }, 'MissingParameter', /X-TC-Action/],
    ['non-numeric timestamp', { body: req(s), mutate: (h) => { h['X-TC-Timestamp'] = 'soon'; } }, 'InvalidParameter', /X-TC-Timestamp/],
    ['text/plain body', { body: 'a=1', contentType: 'text/plain' }, 'InvalidParameter', /Content-Type/],
    // a form is a shape of its own (sdk_v3_shapes.test.mjs): its fields typed by the model
    ['form with an unknown field', { body: 'a=1', contentType: 'application/x-www-form-urlencoded' }, 'UnknownParameter', /a is not a parameter/],
    ['body changed after signing', { body: req(s), mutate: (h) => { h['Content-Type'] = 'application/json; charset=utf-8'; } },
      'AuthFailure.SignatureFailure', /Signature/],
  ];
  for (const [name, opts, code, msg] of cases) {
    const r = await call(opts);
    assert.equal(r.status, 200, name);
    assert.equal(r.json?.Response?.Error?.Code, code, `${name}: ${r.body}`);
    assert.match(r.json.Response.Error.Message, msg, name);
    assert.ok(r.json.Response.RequestId, name);
  }
  // Oversized body (over the 64 KiB request limit): RequestSizeLimitExceeded.
  const big = await call({ body: req(s, { MacAddress: 'm'.repeat(70000) }) });
  assert.equal(big.json?.Response?.Error?.Code, 'RequestSizeLimitExceeded', big.body.slice(0, 300));
  // Plain HTTP GET of / : a 3.0 shape (TC3 or v1 over GET) that names nothing: a 3.0 error too.
  const get = await request(`${mock.url}/`);
  assert.equal(get.json?.Response?.Error?.Code, 'MissingParameter', get.body);
  assert.match(get.json.Response.Error.Message, /X-TC-Action/);
  const put = await request(`${mock.url}/`, { method: 'PUT' });
  assert.equal(put.json?.Response?.Error?.Code, 'UnsupportedProtocol', put.body);
  // Still serving, and the ticket is unspent.
  const r = await client().DescribeCaptchaResult(req(s));
  assert.equal(r.CaptchaCode, 1);
});

test('faults match the 3.0 Action: a code fault is InternalError, a network fault resets', async () => {
  const s = await solve();
  await mock.admin('faults', { method: 'POST', json: { action: 'DescribeCaptchaResult', code: 6000, times: 1 } });
  const e = await sdkError(client().DescribeCaptchaResult(req(s)));
  assert.equal(e.code, 'InternalError');
  await mock.admin('faults', { method: 'POST', json: { action: 'DescribeCaptchaResult', network: 'reset', times: 1 } });
  await assert.rejects(client().DescribeCaptchaResult(req(s)));
  await mock.admin('faults', { method: 'POST', json: { action: 'DescribeCaptchaResult', delay_ms: 150, times: 1 } });
  const r = await client().DescribeCaptchaResult(req(s));
  assert.equal(r.CaptchaCode, 1);
  const faulted = (await journal('DescribeCaptchaResult')).filter((x) => x.params.Ticket === s.ticket && x.fault);
  assert.deepEqual(faulted.map((x) => x.fault), ['code 6000', 'reset', 'delay_ms 150']);
});

test('--seed makes tickets, randstr and RequestIds repeat', async () => {
  const runs = [];
  for (let i = 0; i < 2; i++) {
    const m = await startMock({ tls: true, args: ['--seed', '42', '--captcha-app', `${APP_ID}:${APP_KEY}`] });
    try {
      const s = await m.admin('solve', { method: 'POST', json: { appid: APP_ID } });
      const r = await tc3Call(m.httpsUrl, { body: req(s), secretId: MOCK_SECRET_ID, secretKey: MOCK_SECRET_KEY, ca: certs().caPem });
      assert.equal(r.json.Response.CaptchaCode, 1, r.body);
      runs.push([s.ticket, s.randstr, r.json.Response.RequestId]);
    } finally {
      await m.stop();
    }
  }
  assert.deepEqual(runs[0], runs[1]);
});

test('--quota limits 3.0 calls per second per SecretId too (RequestLimitExceeded)', async () => {
  const m = await startMock({ tls: true, args: ['--quota', '1', '--captcha-app', `${APP_ID}:${APP_KEY}`] });
  try {
    const s = await m.admin('solve', { method: 'POST', json: { appid: APP_ID } });
    const answers = [];
    const seconds = new Set();
    for (let i = 0; i < 6; i++) {
      const r = await tc3Call(m.httpsUrl, { body: req(s), secretId: MOCK_SECRET_ID, secretKey: MOCK_SECRET_KEY,
        ca: certs().caPem });
      seconds.add(r.headers.date);
      answers.push(r.json.Response);
    }
    const limited = answers.filter((r) => r.Error?.Code === 'RequestLimitExceeded');
    // at most one a second was let through, over the seconds the mock answered in (its Date)
    assert.ok(limited.length >= 1 && answers.length - limited.length <= seconds.size,
      `${seconds.size} second(s): ${JSON.stringify(answers)}`);
    for (const r of limited) assert.match(r.Error.Message, /quota of 1 requests\/s for SecretId/);
  } finally {
    await m.stop();
  }
});
