// mock.test.mjs: capgate-mock's functional behaviour over HTTP and HTTPS: each Action, each error
// code it emits, replay and Timestamp checks, single-use URLs, ticket checks, every fault type,
// the admin API (reset, journal, faults, solve), --seed determinism, multipart POST, the CLI.
import { test, describe, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import {
  MOCK_BIN, MOCK_SECRET_ID, MOCK_SECRET_KEY, SEED_PARAMS, QUERY_PARAMS, certs, nextNonce, rawRequest, request,
  sign, sleep, startMock, tmpDir, v2Call, waitFor,
} from './lib/harness.mjs';

const API = '/v2/index.php';
const CHECK_PARAMS = (ticket) => ({ ticket, captchaType: '1', userIp: '127.0.0.1' });

/** A signed GET request line for raw sockets (faults that cut the connection). */
function signedGetBytes(port, action = 'CaptchaIframeQuery', params = SEED_PARAMS) {
  const host = `127.0.0.1:${port}`;
  const p = {
    Action: action, Region: 'gz', SecretId: MOCK_SECRET_ID,
    Timestamp: String(Math.floor(Date.now() / 1000)), Nonce: String(nextNonce()), ...params,
  };
  p.Signature = sign('GET', host, API, p, MOCK_SECRET_KEY);
  return `GET ${API}?${new URLSearchParams(p)} HTTP/1.1\r\nHost: ${host}\r\n\r\n`;
}

/** Runs the mock binary to completion (for CLI checks). */
function runMock(args, { env = {}, timeoutMs = 5000 } = {}) {
  return new Promise((resolve) => {
    const child = spawn(MOCK_BIN, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('exit', (code, signal) => { clearTimeout(t); resolve({ code, signal, stdout, stderr }); });
  });
}

const iframeQuery = (base, opts = {}) => v2Call(`${base}${API}`, { params: SEED_PARAMS, ...opts });

describe('capgate-mock', () => {
  let mock;
  let ca;
  before(async () => {
    ca = certs().caPem;
    mock = await startMock({ tls: true });
  });
  after(async () => {
    const r = await mock.stop();
    assert.equal(r.code, 0, `mock exited with ${r.code ?? r.signal}; stderr:\n${mock.proc.stderr}`);
  });
  beforeEach(async () => {
    const r = await mock.admin('reset', { method: 'POST' });
    assert.equal(r.status, 'ok');
  });

  describe('Actions', () => {
    for (const [scheme, method] of [['http', 'GET'], ['http', 'POST'], ['https', 'GET'], ['https', 'POST']]) {
      test(`CaptchaIframeQuery succeeds (${scheme} ${method})`, async () => {
        const base = scheme === 'https' ? mock.httpsUrl : mock.url;
        const r = await iframeQuery(base, { method, ca });
        assert.equal(r.status, 200);
        assert.equal(r.json.code, 0, r.body);
        assert.equal(r.json.codeDesc, 'Success');
        assert.equal(r.json.message, 'No Error');
        const u = new URL(r.json.url);
        assert.equal(u.origin, mock.url);
        assert.equal(u.pathname, '/template/TCapIframeApi.js');
        assert.match(u.searchParams.get('appid'), /^\d+$/);
        assert.equal(u.searchParams.get('clientype'), '2');
        assert.equal(u.searchParams.get('lang'), '2052');
        assert.match(u.searchParams.get('asig'), /^[A-Za-z0-9_-]{60,70}$/);
      });
    }

    test('HmacSHA256 signatures are accepted', async () => {
      const r = await iframeQuery(mock.url, { signatureMethod: 'HmacSHA256' });
      assert.equal(r.json.code, 0, r.body);
    });

    test('the host signed is the Host header as sent', async () => {
      const headers = { host: 'csec.api.qcloud.com' };
      const ok = await iframeQuery(mock.url, { host: 'csec.api.qcloud.com', headers });
      assert.equal(ok.json.code, 0, ok.body);
      const bad = await iframeQuery(mock.url, { host: 'csec.api.qcloud.com' });
      assert.equal(bad.json.code, 4100, bad.body);
    });

    test('a captcha URL serves the widget exactly once', async () => {
      const r = await iframeQuery(mock.url);
      const asig = new URL(r.json.url).searchParams.get('asig');
      const first = await request(r.json.url);
      assert.equal(first.status, 200);
      assert.match(first.headers['content-type'], /^application\/javascript/);
      assert.match(first.body, /window\.capInit = function/);
      assert.match(first.body, /capgate-mock-solve/);
      assert.ok(first.body.includes(JSON.stringify(asig)), 'the script carries its asig');
      assert.ok(first.body.includes(JSON.stringify(mock.url)), 'the script calls back the mock origin');
      const second = await request(r.json.url);
      assert.equal(second.status, 404);
      assert.match(second.headers['content-type'], /^application\/javascript/);
      assert.match(second.body, /already used/);
      assert.match(second.body, /console\.error/);
      const unknown = await request(`${mock.url}/template/TCapIframeApi.js?asig=nosuchasig`);
      assert.equal(unknown.status, 404);
      assert.match(unknown.body, /unknown or expired/);
    });

    test('the widget fetched over HTTPS calls back over HTTPS', async () => {
      const r = await iframeQuery(mock.httpsUrl, { ca });
      const u = new URL(r.json.url);
      const w = await request(`${mock.httpsUrl}${u.pathname}${u.search}`, { ca });
      assert.equal(w.status, 200);
      assert.ok(w.body.includes(JSON.stringify(mock.httpsUrl)), w.body.slice(0, 400));
    });

    test('the widget solve endpoint issues a ticket once, with CORS', async () => {
      const r = await iframeQuery(mock.url);
      const asig = new URL(r.json.url).searchParams.get('asig');
      await request(r.json.url);
      const s = await request(`${mock.url}/__widget/solve?asig=${asig}`);
      assert.equal(s.status, 200);
      assert.equal(s.headers['access-control-allow-origin'], '*');
      assert.match(s.json.ticket, /^t03[A-Za-z0-9_-]+$/);
      assert.match(s.json.randstr, /^@[A-Za-z0-9_-]{3}$/);
      const again = await request(`${mock.url}/__widget/solve?asig=${asig}`);
      assert.equal(again.status, 409);
      assert.match(again.json.message, /already solved/);
      const pre = await request(`${mock.url}/__widget/solve?asig=${asig}`, { method: 'OPTIONS' });
      assert.equal(pre.status, 204);
      assert.equal(pre.headers['access-control-allow-origin'], '*');
    });

    test('CaptchaCheck passes a solved ticket twice, then refuses it', async () => {
      const r = await iframeQuery(mock.url);
      const s = await mock.admin('solve', { method: 'POST', json: { url: r.json.url } });
      assert.match(s.ticket, /^t03/);
      for (let i = 0; i < 2; i++) {
        const c = await v2Call(`${mock.httpsUrl}${API}`, { action: 'CaptchaCheck', params: CHECK_PARAMS(s.ticket), ca });
        assert.equal(c.json.code, 0, c.body);
        assert.equal(c.json.evilLevel, 0);
      }
      const third = await v2Call(`${mock.url}${API}`, { action: 'CaptchaCheck', params: CHECK_PARAMS(s.ticket) });
      assert.equal(third.json.code, 5100);
      assert.equal(third.json.codeDesc, 'OperationFailed');
      assert.match(third.json.message, /ticket already checked twice/);
      const unknown = await v2Call(`${mock.url}${API}`, { action: 'CaptchaCheck', params: CHECK_PARAMS('t03nosuchticket') });
      assert.equal(unknown.json.code, 5100);
      assert.match(unknown.json.message, /unknown ticket/);
    });

    test('admin solve works once per URL, fetched or not', async () => {
      const r = await iframeQuery(mock.url);
      const first = await request(`${mock.url}/__admin/solve`, { json: { url: r.json.url } });
      assert.equal(first.status, 200);
      assert.match(first.json.ticket, /^t03/);
      const again = await request(`${mock.url}/__admin/solve`, { json: { url: r.json.url } });
      assert.equal(again.status, 409);
      assert.equal(again.json.code, 5100);
      const unknown = await request(`${mock.url}/__admin/solve`, { json: { url: `${mock.url}/template/TCapIframeApi.js?asig=zzz` } });
      assert.equal(unknown.status, 404);
      const bad = await request(`${mock.url}/__admin/solve`, { json: { link: 'x' } });
      assert.equal(bad.status, 400);
      assert.match(bad.json.message, /link/);
      const notJson = await request(`${mock.url}/__admin/solve`, { body: '{nope', headers: { 'content-type': 'application/json' } });
      assert.equal(notJson.status, 400);
      assert.match(notJson.json.message, /not valid JSON/);
    });

    test('CaptchaQuery answers the script as JSON or raw JavaScript', async () => {
      const j = await iframeQuery(mock.url, { action: 'CaptchaQuery', params: QUERY_PARAMS });
      assert.equal(j.json.code, 0, j.body);
      assert.match(j.json.script, /window\.capInit = function/);
      const raw = await iframeQuery(mock.url, { action: 'CaptchaQuery', params: { ...QUERY_PARAMS, script: '1' } });
      assert.equal(raw.status, 200);
      assert.match(raw.headers['content-type'], /^application\/javascript/);
      assert.match(raw.body, /window\.capGetTicket = function/);
      // The script's asig can be solved like a URL's.
      const asig = /var ASIG = "([^"]+)"/.exec(raw.body)[1];
      const s = await mock.admin('solve', { method: 'POST', json: { asig } });
      assert.match(s.ticket, /^t03/);
    });

    test('a multipart/form-data POST is accepted', async () => {
      const u = new URL(`${mock.url}${API}`);
      const p = {
        Action: 'CaptchaIframeQuery', Region: 'gz', SecretId: MOCK_SECRET_ID,
        Timestamp: String(Math.floor(Date.now() / 1000)), Nonce: String(nextNonce()), ...SEED_PARAMS,
      };
      p.Signature = sign('POST', u.host, API, p, MOCK_SECRET_KEY);
      const boundary = '----capgateMockBoundary7MA4YWxk';
      const body = Object.entries(p).map(([k, v]) =>
        `--${boundary}\r\nContent-Disposition: form-data; name="${k}"\r\n\r\n${v}\r\n`).join('') + `--${boundary}--\r\n`;
      const r = await request(u.href, { method: 'POST', body, headers: { 'content-type': `multipart/form-data; boundary=${boundary}` } });
      assert.equal(r.status, 200);
      assert.equal(r.json.code, 0, r.body);
      assert.match(r.json.url, /asig=/);
    });
  });

  describe('error codes', () => {
    test('4000: a missing public parameter, a missing Action parameter; 6100: an unknown Action', async () => {
      const noNonce = await iframeQuery(mock.url, { publicParams: { Nonce: undefined } });
      assert.equal(noNonce.status, 200);
      assert.equal(noNonce.json.code, 4000);
      assert.equal(noNonce.json.codeDesc, 'InvalidParameter');
      assert.match(noNonce.json.message, /Nonce/);
      const { clientType, ...rest } = SEED_PARAMS;
      const noClient = await iframeQuery(mock.url, { params: rest });
      assert.equal(noClient.json.code, 4000);
      assert.match(noClient.json.message, /clientType/);
      const badClient = await iframeQuery(mock.url, { params: { ...SEED_PARAMS, clientType: '5' } });
      assert.equal(badClient.json.code, 4000);
      assert.match(badClient.json.message, /clientType/);
      // An Action that is not supported: 6100, the error code page's "interface not supported".
      const unknown = await iframeQuery(mock.url, { action: 'CaptchaSolveForMe' });
      assert.equal(unknown.json.code, 6100, unknown.body);
      assert.equal(unknown.json.codeDesc, 'VersionNotSupported');
      assert.match(unknown.json.message, /CaptchaSolveForMe/);
      assert.equal(clientType, '2');
    });

    test('4000: wrong method, malformed percent-encoding, duplicated parameter, framing error', async () => {
      const put = await request(`${mock.url}${API}`, { method: 'PUT', body: 'a=1' });
      assert.equal(put.status, 200);
      assert.equal(put.json.code, 4000);
      assert.equal(put.json.message, 'method PUT is not allowed; use GET or POST');
      const pct = await request(`${mock.url}${API}?Action=%ZZ`);
      assert.equal(pct.json.code, 4000);
      assert.match(pct.json.message, /percent/);
      const dup = await request(`${mock.url}${API}?Nonce=1&Nonce=2`);
      assert.equal(dup.json.code, 4000);
      assert.match(dup.json.message, /Nonce/);
      const huge = await request(`${mock.url}${API}?x=${'a'.repeat(9000)}`);
      assert.equal(huge.status, 200);
      assert.equal(huge.json.code, 4000);
    });

    test('4100: an unknown SecretId and a wrong key', async () => {
      const unknown = await iframeQuery(mock.url, { secretId: 'AKIDnobody' });
      assert.equal(unknown.json.code, 4100);
      assert.equal(unknown.json.codeDesc, 'AuthFailure');
      assert.match(unknown.json.message, /AKIDnobody/);
      const wrongKey = await iframeQuery(mock.url, { secretKey: 'not-the-key' });
      assert.equal(wrongKey.json.code, 4100);
      assert.match(wrongKey.json.message, /[Ss]ignature/);
    });

    test('4500: a replayed Nonce and a Timestamp outside the window', async () => {
      const nonce = nextNonce();
      const first = await iframeQuery(mock.url, { nonce });
      assert.equal(first.json.code, 0, first.body);
      const replay = await iframeQuery(mock.url, { nonce });
      assert.equal(replay.json.code, 4500);
      assert.equal(replay.json.codeDesc, 'ReplayAttack');
      assert.match(replay.json.message, /Nonce .*already used/);
      const old = await iframeQuery(mock.url, { timestamp: Math.floor(Date.now() / 1000) - 1000 });
      assert.equal(old.json.code, 4500);
      assert.match(old.json.message, /Timestamp .*outside the window/);
      assert.match(old.json.message, /skew -(99\d|100\d) s/);
      const future = await iframeQuery(mock.url, { timestamp: Math.floor(Date.now() / 1000) + 400 });
      assert.equal(future.json.code, 4500);
    });

    test('a badly signed request does not burn its Nonce', async () => {
      const nonce = nextNonce();
      const forged = await iframeQuery(mock.url, { nonce, secretKey: 'guess' });
      assert.equal(forged.json.code, 4100);
      const real = await iframeQuery(mock.url, { nonce });
      assert.equal(real.json.code, 0, real.body);
    });

    test('5000: an unknown path', async () => {
      const r = await request(`${mock.url}/v3/index.php`);
      assert.equal(r.status, 200);
      assert.equal(r.json.code, 5000);
      assert.equal(r.json.codeDesc, 'ResourceNotFound');
      assert.match(r.json.message, /\/v3\/index\.php/);
    });
  });

  describe('faults', () => {
    const addFault = (rule) => request(`${mock.url}/__admin/faults`, { json: rule });

    test('code: the call gets that error code with its codeDesc', async () => {
      const a = await addFault({ action: 'CaptchaIframeQuery', code: 6000 });
      assert.equal(a.status, 200);
      assert.equal(a.json.added, 1);
      const r = await iframeQuery(mock.httpsUrl, { ca });
      assert.equal(r.status, 200);
      assert.equal(r.json.code, 6000);
      assert.equal(r.json.codeDesc, 'InternalError');
      // Another Action is not matched; an invalid call still gets its validation error first.
      const check = await v2Call(`${mock.url}${API}`, { action: 'CaptchaCheck', params: CHECK_PARAMS('t03x') });
      assert.equal(check.json.code, 5100);
      const invalid = await iframeQuery(mock.url, { params: { captchaType: '1' } });
      assert.equal(invalid.json.code, 4000);
    });

    test('secret_id filter', async () => {
      await addFault({ secret_id: 'AKIDsomeoneelse', code: 6200 });
      const r = await iframeQuery(mock.url);
      assert.equal(r.json.code, 0, r.body);
    });

    test('delay_ms delays the answer', async () => {
      await addFault({ delay_ms: 300 });
      const t0 = Date.now();
      const r = await iframeQuery(mock.url);
      assert.ok(Date.now() - t0 >= 290, `answered after ${Date.now() - t0} ms`);
      assert.equal(r.json.code, 0, r.body);
    });

    test('delay_ms with a code', async () => {
      await addFault({ delay_ms: 200, code: 6200 });
      const t0 = Date.now();
      const r = await iframeQuery(mock.url);
      assert.ok(Date.now() - t0 >= 190);
      assert.equal(r.json.code, 6200);
      assert.equal(r.json.codeDesc, 'ServiceUnavailable');
    });

    test('network reset: the client sees ECONNRESET', async () => {
      await addFault({ network: 'reset' });
      const r = await rawRequest(mock.port, signedGetBytes(mock.port));
      assert.equal(r.how, 'ECONNRESET', JSON.stringify(r));
      assert.equal(r.text, '');
    });

    test('network close: the socket closes without a reply', async () => {
      await addFault({ network: 'close' });
      const r = await rawRequest(mock.port, signedGetBytes(mock.port));
      assert.ok(r.how === 'end' || r.how === 'close', JSON.stringify(r));
      assert.equal(r.text, '');
    });

    test('network stall: no reply; the call is freed when the client leaves', async () => {
      await addFault({ network: 'stall' });
      await assert.rejects(iframeQuery(mock.url, { timeoutMs: 400 }).then(() => null),
        /timed out/);
      const r = await rawRequest(mock.port, signedGetBytes(mock.port), { timeoutMs: 400 });
      assert.equal(r.how, 'timeout');
      assert.equal(r.text, '');
      await waitFor(async () => (await mock.admin('health')).pending === 0, { what: 'stalled calls freed' });
    });

    test('network malformed_json: HTTP 200 with a body that is not JSON', async () => {
      await addFault({ network: 'malformed_json' });
      const r = await iframeQuery(mock.url);
      assert.equal(r.status, 200);
      assert.equal(r.json, undefined);
      assert.ok(r.body.length > 0);
      assert.throws(() => JSON.parse(r.body));
    });

    test('network http_500: HTTP 500 with a body', async () => {
      await addFault({ network: 'http_500' });
      const r = await iframeQuery(mock.url);
      assert.equal(r.status, 500);
      assert.ok(r.body.length > 0);
    });

    test('probability 0 never fires', async () => {
      await addFault({ code: 6000, probability: 0 });
      for (let i = 0; i < 10; i++) {
        const r = await iframeQuery(mock.url);
        assert.equal(r.json.code, 0, r.body);
      }
    });

    test('times 2 fires twice, then the rule is gone', async () => {
      await addFault({ code: 6100, times: 2 });
      const codes = [];
      for (let i = 0; i < 4; i++) codes.push((await iframeQuery(mock.url)).json.code);
      assert.deepEqual(codes, [6100, 6100, 0, 0]);
      const f = await mock.admin('faults');
      assert.deepEqual(f.faults, []);
    });

    test('rules match in order; GET, DELETE', async () => {
      const a = await addFault([{ action: 'CaptchaIframeQuery', code: 6000 }, { code: 6200 }]);
      assert.equal(a.json.added, 2);
      assert.equal((await iframeQuery(mock.url)).json.code, 6000);
      const f = await mock.admin('faults');
      assert.equal(f.faults.length, 2);
      assert.equal(f.faults[0].fired, 1);
      assert.equal(f.faults[1].code, 6200);
      const d = await mock.admin('faults', { method: 'DELETE' });
      assert.equal(d.deleted, 2);
      assert.equal((await iframeQuery(mock.url)).json.code, 0);
    });

    test('bad rules are refused with 4000 naming the field', async () => {
      for (const [rule, field] of [
        [{ netwrok: 'reset' }, 'netwrok'],
        [{ network: 'explode' }, 'network'],
        [{ code: 6000, probability: 2 }, 'probability'],
        [[{ code: 6000 }, { code: 6000, times: 0 }], 'faults[1].times'],
        [{ code: 1 }, 'code'],
      ]) {
        const r = await addFault(rule);
        assert.equal(r.status, 400, JSON.stringify(rule));
        assert.equal(r.json.code, 4000);
        assert.ok(r.json.message.includes(field), `${r.json.message} names ${field}`);
      }
      assert.deepEqual((await mock.admin('faults')).faults, []);
    });
  });

  describe('admin', () => {
    test('health', async () => {
      const h = await mock.admin('health');
      assert.equal(h.status, 'ok');
      for (const k of ['urls', 'tickets', 'nonces', 'journal', 'faults', 'pending']) assert.equal(typeof h[k], 'number', k);
    });

    test('reset forgets nonces, URLs, tickets, the journal and faults', async () => {
      const nonce = nextNonce();
      const r = await iframeQuery(mock.url, { nonce });
      await addFaultDirect(mock, { action: 'CaptchaCheck', code: 6000 });
      let h = await mock.admin('health');
      assert.equal(h.urls, 1);
      assert.equal(h.faults, 1);
      assert.ok(h.journal >= 1);
      await mock.admin('reset', { method: 'POST' });
      h = await mock.admin('health');
      assert.deepEqual([h.urls, h.tickets, h.nonces, h.journal, h.faults], [0, 0, 0, 0, 0]);
      assert.equal((await request(r.json.url)).status, 404);
      assert.equal((await iframeQuery(mock.url, { nonce })).json.code, 0);
    });

    test('the journal records calls, verdicts and outcomes, never the Signature', async () => {
      await iframeQuery(mock.url);
      await iframeQuery(mock.url, { secretKey: 'wrong' });
      await iframeQuery(mock.url, { publicParams: { Timestamp: undefined } });
      await addFaultDirect(mock, { network: 'malformed_json', times: 1 });
      await iframeQuery(mock.url);
      await v2Call(`${mock.url}${API}`, { action: 'CaptchaCheck', params: CHECK_PARAMS('t03none') });
      const j = await mock.admin('requests');
      assert.equal(j.count, 5);
      const rq = j.requests;
      assert.deepEqual(rq.map((e) => e.signature), ['ok', 'bad', 'unchecked', 'ok', 'ok']);
      assert.deepEqual(rq.map((e) => e.code), [0, 4100, 4000, null, 5100]);
      assert.equal(rq[3].fault, 'malformed_json');
      assert.equal(rq[0].fault, null);
      for (const e of rq) {
        assert.equal(e.params.Signature, undefined);
        assert.ok(!JSON.stringify(e).includes('Signature'));
        assert.equal(e.secret_id, MOCK_SECRET_ID);
        assert.ok(['GET', 'POST'].includes(e.method));
        assert.ok(e.time_us > 0);
      }
      assert.equal(rq[4].action, 'CaptchaCheck');
      assert.equal(rq[4].params.ticket, 't03none');
      assert.ok(rq[0].seq < rq[1].seq, 'oldest first');
      const filtered = await mock.admin('requests?action=CaptchaCheck');
      assert.equal(filtered.count, 1);
      const limited = await mock.admin('requests?limit=2');
      assert.deepEqual(limited.requests.map((e) => e.code), [null, 5100]);
      const bad = await request(`${mock.url}/__admin/requests?limit=abc`);
      assert.equal(bad.status, 400);
      const d = await mock.admin('requests', { method: 'DELETE' });
      assert.equal(d.deleted, 5);
      assert.equal((await mock.admin('requests')).count, 0);
    });

    test('the admin API answers on the TLS listener too; unknown admin paths are JSON errors', async () => {
      const h = await request(`${mock.httpsUrl}/__admin/health`, { ca });
      assert.equal(h.json.status, 'ok');
      const nf = await request(`${mock.url}/__admin/nothing`);
      assert.equal(nf.status, 404);
      assert.equal(nf.json.code, 5000);
      const wrong = await request(`${mock.url}/__admin/reset`);
      assert.equal(wrong.status, 405);
    });
  });
});

async function addFaultDirect(mock, rule) {
  const r = await request(`${mock.url}/__admin/faults`, { json: rule });
  assert.equal(r.status, 200, r.body);
}

describe('capgate-mock flags', () => {
  test('4600: --https-only refuses plain HTTP API calls', async () => {
    const m = await startMock({ tls: true, args: ['--https-only'] });
    try {
      const plain = await iframeQuery(m.url);
      assert.equal(plain.status, 200);
      assert.equal(plain.json.code, 4600);
      assert.equal(plain.json.codeDesc, 'HttpsRequired');
      const tls = await iframeQuery(m.httpsUrl, { ca: certs().caPem });
      assert.equal(tls.json.code, 0, tls.body);
    } finally {
      await m.stop();
    }
  });

  test('4400: --quota limits requests per second per SecretId', async () => {
    const m = await startMock({ args: ['--quota', '2', '--credential', 'AKIDone:k1', '--credential', 'AKIDtwo:k2'] });
    try {
      const codes = [];
      for (let i = 0; i < 6; i++) codes.push((await iframeQuery(m.url, { secretId: 'AKIDone', secretKey: 'k1' })).json.code);
      assert.ok(codes.includes(4400), codes.join());
      assert.ok(codes.filter((c) => c === 0).length <= 4, codes.join());
      const r = await iframeQuery(m.url, { secretId: 'AKIDone', secretKey: 'k1' });
      if (r.json.code === 4400) assert.equal(r.json.codeDesc, 'LimitExceeded');
      // The default test pair is not accepted once credentials are given.
      assert.equal((await iframeQuery(m.url)).json.code, 4100);
    } finally {
      await m.stop();
    }
  });

  test('--seed makes asig, appid and tickets reproducible', async () => {
    const run = async (seed) => {
      const m = await startMock({ args: ['--seed', String(seed)] });
      try {
        const urls = [];
        for (let i = 0; i < 3; i++) urls.push(new URL((await iframeQuery(m.url)).json.url));
        const s = await m.admin('solve', { method: 'POST', json: { url: urls[0].href } });
        return { asigs: urls.map((u) => u.searchParams.get('asig')), appid: urls[0].searchParams.get('appid'), ticket: s.ticket, randstr: s.randstr };
      } finally {
        await m.stop();
      }
    };
    const a = await run(42);
    const b = await run(42);
    const c = await run(43);
    assert.deepEqual(a, b);
    assert.equal(new Set(a.asigs).size, 3);
    assert.notDeepEqual(a.asigs, c.asigs);
  });

  test('--timestamp-window, --public-url, --captcha-ttl, env and config file', async () => {
    const dir = tmpDir('capgate-mock-cfg-');
    const cfg = path.join(dir, 'mock.json');
    fs.writeFileSync(cfg, JSON.stringify({
      timestamp_window: 1000, 'public-url': 'http://captcha.example.test:8000',
      faults: [{ action: 'CaptchaQuery', code: 6100 }],
    }));
    const creds = path.join(dir, 'creds.txt');
    fs.writeFileSync(creds, '# test keys\nAKIDfile:filekey\n');
    const m = await startMock({
      args: ['--config', cfg, '--captcha-ttl', '1', '--credentials-file', creds],
      env: { CAPGATE_MOCK_TIMESTAMP_WINDOW: '30' },
    });
    try {
      const auth = { secretId: 'AKIDfile', secretKey: 'filekey' };
      const old = await iframeQuery(m.url, { ...auth, timestamp: Math.floor(Date.now() / 1000) - 100 });
      assert.equal(old.json.code, 4500, 'env (30 s) overrides the config file (1000 s)');
      const r = await iframeQuery(m.url, auth);
      assert.equal(r.json.code, 0, r.body);
      assert.ok(r.json.url.startsWith('http://captcha.example.test:8000/template/TCapIframeApi.js?'), r.json.url);
      assert.equal((await iframeQuery(m.url, { ...auth, action: 'CaptchaQuery', params: QUERY_PARAMS })).json.code, 6100);
      const s = await m.admin('solve', { method: 'POST', json: { url: r.json.url } });
      await sleep(1100);
      const late = await v2Call(`${m.url}${API}`, { ...auth, action: 'CaptchaCheck', params: CHECK_PARAMS(s.ticket) });
      assert.equal(late.json.code, 5100);
      assert.match(late.json.message, /ticket expired/);
    } finally {
      await m.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('bad flags exit 2 with a clear message; --version and --help exit 0', async () => {
    const bad = await runMock(['--bogus']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /unknown option --bogus/);
    const badNum = await runMock(['--quota', 'lots']);
    assert.equal(badNum.code, 2);
    assert.match(badNum.stderr, /--quota/);
    const badEnv = await runMock([], { env: { CAPGATE_MOCK_TIMESTAMP_WINDOW: 'x' } });
    assert.equal(badEnv.code, 2);
    assert.match(badEnv.stderr, /CAPGATE_MOCK_TIMESTAMP_WINDOW/);
    const dir = tmpDir('capgate-mock-cfg-');
    const cfg = path.join(dir, 'bad.json');
    fs.writeFileSync(cfg, JSON.stringify({ listen: '127.0.0.1:0', quotas: 5 }));
    const badCfg = await runMock(['--config', cfg]);
    assert.equal(badCfg.code, 2);
    assert.match(badCfg.stderr, /quotas/);
    fs.rmSync(dir, { recursive: true, force: true });
    const v = await runMock(['--version']);
    assert.equal(v.code, 0);
    assert.match(v.stdout, /^capgate-mock \d/);
    const h = await runMock(['--help']);
    assert.equal(h.code, 0);
    assert.match(h.stdout, /--timestamp-window/);
  });

  test('without a credential the documented test pair is used and announced', async () => {
    const m = await startMock();
    try {
      await waitFor(() => /AKIDcapgateMockTestKey00000000000000/.test(m.proc.stderr), { what: 'the default credential notice' });
      assert.equal((await iframeQuery(m.url)).json.code, 0);
    } finally {
      const r = await m.stop();
      assert.equal(r.code, 0);
    }
  });

  test('SIGINT exits cleanly while a call is stalled', async () => {
    const m = await startMock();
    await m.admin('faults', { method: 'POST', json: { network: 'stall' } });
    const pending = rawRequest(m.port, signedGetBytes(m.port), { timeoutMs: 3000 });
    await waitFor(async () => (await m.admin('health')).pending === 1, { what: 'a stalled call' });
    m.proc.signal('SIGINT');
    const r = await m.proc.exited;
    assert.equal(r.code, 0);
    const p = await pending;
    assert.notEqual(p.how, 'timeout');
  });
});
