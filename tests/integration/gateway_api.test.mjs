// gateway_api.test.mjs: capgate's front API in front of a TLS capgate-mock. Apps call with the
// official Node SDK (their own credentials) or a bearer token and get the mock's reply, re-signed
// with the one real credential; authentication, replay, authorization and parameter validation
// are refused by the gateway itself (nothing reaches the mock); replies pass through unchanged.
import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { startMock, certs, request, nextNonce, sign, SEED_PARAMS, MOCK_SECRET_ID, MOCK_SECRET_KEY } from './lib/harness.mjs';
import { sdkCall } from './lib/sdk.mjs';
import { startGateway, gwCall, journal, verdict, resetMock, addFault, assertApiReply, APPS } from './lib/gateway.mjs';

let mock;
let gw;
before(async () => {
  mock = await startMock({ tls: true });
  gw = await startGateway({ mock });
});
after(async () => {
  await gw?.stop();
  await mock?.stop();
});
beforeEach(async () => {
  await resetMock(mock);
});

const uniqueUid = (tag) => `${tag}-${process.pid}-${nextNonce()}`;

/** GET of a captcha URL the mock handed out (on the mock's http or https listener). */
const fetchUrl = (url) => request(url, { ca: certs().caPem, timeoutMs: 5000 });

for (const method of ['GET', 'POST']) {
  for (const signatureMethod of ['sha1', 'sha256']) {
    const name = `${method} ${signatureMethod === 'sha256' ? 'HmacSHA256' : 'HmacSHA1'}`;
    test(`official SDK ${name} with the app's credentials gets the mock's reply, re-signed upstream`, async () => {
      const uid = uniqueUid('sdk');
      const nonce = nextNonce();
      const r = await sdkCall(gw.base, {
        method, signatureMethod, nonce, secretId: APPS.sig.secretId, secretKey: APPS.sig.secretKey,
        params: { ...SEED_PARAMS, uid },
      });
      assert.equal(r.code, 0, JSON.stringify(r));
      assert.equal(r.codeDesc, 'Success');
      assert.match(r.url, /TCapIframeApi\.js\?.*asig=/, JSON.stringify(r));
      const page = await fetchUrl(r.url);
      assert.equal(page.status, 200, `GET of the captcha url: ${page.status} ${page.body.slice(0, 200)}`);
      assert.ok(page.body.length > 0, 'the widget script is not empty');

      const entries = (await journal(mock)).filter((e) => e.params?.uid === uid);
      assert.equal(entries.length, 1, `one upstream call for the request: ${JSON.stringify(entries)}`);
      const e = entries[0];
      assert.equal(e.secret_id, MOCK_SECRET_ID, 'signed with the real credential');
      assert.notEqual(e.secret_id, APPS.sig.secretId);
      assert.equal(e.params.SecretId, MOCK_SECRET_ID);
      assert.equal(verdict(e), 'ok', JSON.stringify(e));
      assert.equal(e.code, 0);
      assert.equal(e.action, 'CaptchaIframeQuery');
      // The gateway's own public params, not the app's.
      assert.notEqual(e.params.Nonce, String(nonce), 'the app Nonce is not forwarded');
      assert.equal(e.params.SignatureMethod, 'HmacSHA256', 'upstream.signature_method defaults to HmacSHA256');
      assert.equal(e.params.Region, 'gz');
      assert.ok(Math.abs(Number(e.params.Timestamp) - Date.now() / 1000) < 60, `Timestamp ${e.params.Timestamp}`);
      for (const [k, v] of Object.entries(SEED_PARAMS)) assert.equal(e.params[k], v, `business param ${k} forwarded`);
      const all = JSON.stringify(await journal(mock));
      assert.ok(!all.includes(APPS.sig.secretId), 'the app SecretId never reaches upstream');
    });
  }
}

test('token auth: Bearer token with no public params (GET and POST); a wrong token is 4100', async () => {
  for (const method of ['GET', 'POST']) {
    const uid = uniqueUid('token');
    const r = await gwCall(gw, { app: APPS.token, method, params: { ...SEED_PARAMS, uid } });
    const j = assertApiReply(r, `token ${method}`);
    assert.equal(j.code, 0, r.body);
    assert.match(j.url, /asig=/);
    const entries = (await journal(mock)).filter((e) => e.params?.uid === uid);
    assert.equal(entries.length, 1, `token ${method}: one upstream call`);
    assert.equal(entries[0].secret_id, MOCK_SECRET_ID);
    assert.equal(verdict(entries[0]), 'ok', JSON.stringify(entries[0]));
  }
  const before = (await journal(mock)).length;
  const bad = await gwCall(gw, { app: APPS.token, token: `${APPS.token.token}x` });
  assert.equal(assertApiReply(bad, 'wrong token').code, 4100, bad.body);
  const none = await gwCall(gw, { app: APPS.token, headers: { authorization: 'Bearer ' } });
  assert.equal(assertApiReply(none, 'empty token').code, 4100, none.body);
  assert.equal((await journal(mock)).length, before, 'refused requests never reach upstream');
});

test('wrong app key → 4100, stale Timestamp → 4500, unknown SecretId → 4100; nothing reaches upstream', async () => {
  const wrongKey = await gwCall(gw, { secretKey: 'not-the-key' });
  assert.equal(assertApiReply(wrongKey, 'wrong key').code, 4100, wrongKey.body);
  assert.equal(wrongKey.json.codeDesc, 'AuthFailure');

  const stale = await gwCall(gw, { timestamp: Math.floor(Date.now() / 1000) - 3600 });
  assert.equal(assertApiReply(stale, 'stale').code, 4500, stale.body);
  assert.match(stale.json.message, /timestamp/i, 'the message says the Timestamp is the problem');

  const future = await gwCall(gw, { timestamp: Math.floor(Date.now() / 1000) + 3600 });
  assert.equal(assertApiReply(future, 'future').code, 4500, future.body);

  const unknown = await gwCall(gw, { secretId: 'AKIDnoSuchAppAtThisGateway0000000000', secretKey: APPS.sig.secretKey });
  assert.equal(assertApiReply(unknown, 'unknown SecretId').code, 4100, unknown.body);

  // The mock's own credential is not an app credential at the gateway.
  const upstreamCred = await gwCall(gw, { secretId: MOCK_SECRET_ID, secretKey: MOCK_SECRET_KEY });
  assert.equal(assertApiReply(upstreamCred, 'upstream credential').code, 4100, upstreamCred.body);

  assert.deepEqual(await journal(mock), [], 'nothing reached upstream');
});

test('a replayed Nonce is refused with 4500 whichever worker gets it', async () => {
  for (let i = 0; i < 4; i++) {
    const nonce = nextNonce();
    const ts = Math.floor(Date.now() / 1000);
    const first = await gwCall(gw, { nonce, timestamp: ts, method: i % 2 ? 'POST' : 'GET' });
    assert.equal(assertApiReply(first, 'first').code, 0, first.body);
    for (let k = 0; k < 2; k++) {
      const again = await gwCall(gw, { nonce, timestamp: ts, method: (i + k) % 2 ? 'GET' : 'POST' });
      assert.equal(assertApiReply(again, 'replay').code, 4500, `replay ${i}.${k}: ${again.body}`);
      assert.match(again.json.message, /nonce|replay/i);
    }
  }
  assert.equal((await journal(mock)).length, 4, 'only the first of each Nonce reached upstream');
});

test('authorization: forbidden businessId, missing businessId with a list, forbidden Action → 4300', async () => {
  const allowed = await gwCall(gw, { app: APPS.limited, params: { ...SEED_PARAMS, businessId: '2' } });
  assert.equal(assertApiReply(allowed, 'allowed').code, 0, allowed.body);
  const n = (await journal(mock)).length;
  assert.equal(n, 1);

  const cases = [
    ['forbidden businessId', { app: APPS.limited, params: { ...SEED_PARAMS, businessId: '3' } }, /businessId/],
    ['missing businessId', { app: APPS.limited, params: { ...SEED_PARAMS } }, /businessId/],
    ['forbidden Action', {
      app: APPS.limited, action: 'CaptchaCheck',
      params: { ticket: 't', captchaType: '1', userIp: '127.0.0.1', businessId: '1' },
    }, /CaptchaCheck|Action/],
  ];
  for (const [name, opts, re] of cases) {
    const r = await gwCall(gw, opts);
    const j = assertApiReply(r, name);
    assert.equal(j.code, 4300, `${name}: ${r.body}`);
    assert.equal(j.codeDesc, 'AccessDenied', `${name}: ${r.body}`);
    assert.match(j.message, re, `${name}: the message says what was denied: ${r.body}`);
  }
  assert.equal((await journal(mock)).length, n, 'denied requests never reach upstream');
});

/** The seed table's invalid parameters (DESIGN.md section 2), each with the name its error must carry. */
function invalidCases() {
  const cases = [];
  for (const p of ['captchaType', 'disturbLevel', 'isHttps', 'clientType', 'accountType']) {
    const without = { ...SEED_PARAMS };
    delete without[p];
    cases.push([`${p} missing`, p, without]);
    for (const v of ['abc', '4294967296', '-1', '1 ', '1x', '']) {
      cases.push([`${p}=${JSON.stringify(v)}`, p, { ...SEED_PARAMS, [p]: v }]);
    }
  }
  cases.push(['isHttps=2', 'isHttps', { ...SEED_PARAMS, isHttps: '2' }]);
  cases.push(['clientType=5', 'clientType', { ...SEED_PARAMS, clientType: '5' }]);
  cases.push(['accountType=3', 'accountType', { ...SEED_PARAMS, accountType: '3' }]);
  cases.push(['appId missing with accountType 1', 'appId', { ...SEED_PARAMS, accountType: '1' }]);
  cases.push(['appId missing with accountType 2', 'appId', { ...SEED_PARAMS, accountType: '2' }]);
  cases.push(['registerTime non-numeric', 'registerTime', { ...SEED_PARAMS, registerTime: 'yesterday' }]);
  cases.push(['businessId non-numeric', 'businessId', { ...SEED_PARAMS, businessId: 'shop' }]);
  cases.push(['sceneId out of range', 'sceneId', { ...SEED_PARAMS, sceneId: '4294967296' }]);
  return cases.map(([name, param, params]) => ({ name, param, params, action: 'CaptchaIframeQuery' })).concat([
    { name: 'CaptchaCheck without ticket', param: 'ticket', action: 'CaptchaCheck', params: { captchaType: '1', userIp: '127.0.0.1' } },
    { name: 'CaptchaCheck without userIp', param: 'userIp', action: 'CaptchaCheck', params: { ticket: 'abc', captchaType: '1' } },
    { name: 'CaptchaCheck without captchaType', param: 'captchaType', action: 'CaptchaCheck', params: { ticket: 'abc', userIp: '127.0.0.1' } },
  ]);
}

test('every invalid parameter of the seed table → 4000 naming it, and nothing reaches upstream', async () => {
  const failures = [];
  for (const c of invalidCases()) {
    for (const method of ['GET', 'POST']) {
      const r = await gwCall(gw, { method, action: c.action, params: c.params });
      const j = assertApiReply(r, c.name);
      if (j.code !== 4000 || j.codeDesc !== 'InvalidParameter' || !j.message.includes(c.param)) {
        failures.push(`${c.name} (${method}): ${r.body}`);
      }
    }
  }
  // The valid appId case passes, so the appId rule is not a blanket refusal.
  const ok = await gwCall(gw, { params: { ...SEED_PARAMS, accountType: '1', appId: 'wx1234' } });
  assert.equal(assertApiReply(ok).code, 0, ok.body);
  assert.deepEqual(failures, [], 'each case must answer 4000 InvalidParameter naming the parameter');
  const entries = await journal(mock);
  assert.equal(entries.length, 1, `only the valid request reached upstream: ${JSON.stringify(entries.slice(0, 3))}`);
});

test('every reply carries X-Request-Id, distinct per request', async () => {
  const replies = [
    await gwCall(gw, {}),
    await gwCall(gw, { secretKey: 'wrong' }),
    await gwCall(gw, { params: { ...SEED_PARAMS, clientType: '5' } }),
    await gwCall(gw, { app: APPS.token, method: 'POST' }),
    await request(`${gw.base}/v2/index.php`),
    await request(`${gw.base}/no/such/path`),
  ];
  const ids = replies.map((r, i) => {
    assert.ok(r.headers['x-request-id'], `reply ${i} (${r.status} ${r.body.slice(0, 100)}) has no X-Request-Id`);
    return r.headers['x-request-id'];
  });
  assert.equal(new Set(ids).size, ids.length, `ids repeat: ${ids}`);
});

/** The body with the one per-call value (the captcha url) replaced, for byte comparison. */
const withoutUrl = (r) => r.body.split(JSON.stringify(r.json.url).slice(1, -1)).join('<URL>');

test('upstream replies pass through byte-for-byte (success and upstream errors)', async () => {
  // Success: same bytes as the mock answers directly, apart from the single-use url.
  const directRaw = await request(`${mock.httpsUrl}/v2/index.php?${new URLSearchParams(signedDirect())}`, { ca: certs().caPem });
  assert.equal(directRaw.json?.code, 0, directRaw.body);
  const viaGw = await gwCall(gw, { method: 'POST' });
  assert.equal(assertApiReply(viaGw).code, 0, viaGw.body);
  assert.deepEqual(Object.keys(viaGw.json), Object.keys(directRaw.json), 'same fields in the same order');
  assert.equal(withoutUrl(viaGw), withoutUrl(directRaw), 'same bytes apart from the url');

  // An error the mock answers (an injected code) reaches the app unchanged.
  await addFault(mock, { action: 'CaptchaIframeQuery', code: 5000, times: 2 });
  const directErr = await request(`${mock.httpsUrl}/v2/index.php?${new URLSearchParams(signedDirect())}`, { ca: certs().caPem });
  assert.equal(directErr.json?.code, 5000, directErr.body);
  const gwErr = await gwCall(gw, {});
  assertApiReply(gwErr);
  assert.equal(gwErr.body, directErr.body, 'an upstream error passes through byte-for-byte');
  const last = (await journal(mock)).at(-1);
  assert.equal(last.code, 5000);
  assert.equal(last.secret_id, MOCK_SECRET_ID);
});

/** Params of a signed CaptchaIframeQuery straight to the mock's TLS listener. */
function signedDirect() {
  const p = {
    Action: 'CaptchaIframeQuery', Region: 'gz', SecretId: MOCK_SECRET_ID,
    Timestamp: String(Math.floor(Date.now() / 1000)), Nonce: String(nextNonce()), ...SEED_PARAMS,
  };
  p.Signature = sign('GET', `127.0.0.1:${mock.tlsPort}`, '/v2/index.php', p, MOCK_SECRET_KEY);
  return p;
}

test('CaptchaCheck through the gateway: a solved ticket passes twice, then fails with 5100', async () => {
  const q = await gwCall(gw, { app: APPS.token });
  assert.equal(assertApiReply(q).code, 0, q.body);
  const solved = await mock.admin('solve', { method: 'POST', json: { url: q.json.url } });
  assert.equal(typeof solved?.ticket, 'string', JSON.stringify(solved));
  const check = (app) => gwCall(gw, {
    app, method: 'POST', action: 'CaptchaCheck',
    params: { ticket: solved.ticket, ...(solved.randstr ? { randstr: solved.randstr } : {}), captchaType: '1', userIp: '127.0.0.1' },
  });
  const first = await check(APPS.sig);
  assert.equal(assertApiReply(first).code, 0, first.body);
  const second = await check(APPS.token);
  assert.equal(assertApiReply(second).code, 0, second.body);
  const third = await check(APPS.sig);
  assert.equal(assertApiReply(third).code, 5100, third.body);
  const checks = (await journal(mock)).filter((e) => e.action === 'CaptchaCheck');
  assert.deepEqual(checks.map((e) => [e.secret_id, e.code]), [[MOCK_SECRET_ID, 0], [MOCK_SECRET_ID, 0], [MOCK_SECRET_ID, 5100]]);
});
