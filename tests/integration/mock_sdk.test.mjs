// mock_sdk.test.mjs: Tencent's official Node SDK (qcloudapi-sdk) against capgate-mock over http
// and https (verified against the test CA): GET and POST, HmacSHA1 and HmacSHA256, accepted with
// the right SecretKey and rejected (4100) with a wrong one; the journal records each verdict.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startMock, certs, nextNonce, SEED_PARAMS, MOCK_SECRET_ID } from './lib/harness.mjs';
import { sdkCall } from './lib/sdk.mjs';

let mock;
before(async () => {
  mock = await startMock({ tls: true });
});
after(async () => {
  await mock?.stop();
});

/** The journal's entries, oldest first, whatever the envelope ({requests: [...]} or [...]). */
async function journal() {
  const body = await mock.admin('requests');
  const list = Array.isArray(body) ? body : body?.requests;
  assert.ok(Array.isArray(list), `journal is not a list: ${JSON.stringify(body).slice(0, 200)}`);
  return list;
}

function findByNonce(entries, nonce) {
  return entries.filter((e) => String(e.params?.Nonce) === String(nonce));
}

const combos = [];
for (const scheme of ['http', 'https']) {
  for (const method of ['GET', 'POST']) {
    for (const signatureMethod of ['sha1', 'sha256']) combos.push({ scheme, method, signatureMethod });
  }
}

for (const { scheme, method, signatureMethod } of combos) {
  const name = `${scheme} ${method} ${signatureMethod === 'sha256' ? 'HmacSHA256' : 'HmacSHA1'}`;
  const base = () => (scheme === 'https' ? mock.httpsUrl : mock.url);
  const ca = () => (scheme === 'https' ? certs().caPem : undefined);

  test(`SDK ${name}: accepted, code 0 and a captcha url`, async () => {
    const nonce = nextNonce();
    const r = await sdkCall(base(), { method, signatureMethod, nonce, ca: ca(), params: { ...SEED_PARAMS } });
    assert.equal(r.code, 0, JSON.stringify(r));
    assert.equal(r.codeDesc, 'Success');
    assert.match(r.url, /^https?:\/\/[^/]+\/.*TCapIframeApi\.js\?.*asig=/);
    const seen = findByNonce(await journal(), nonce);
    assert.equal(seen.length, 1, 'one journal entry for the call');
    assert.equal(seen[0].method, method);
    assert.equal(seen[0].action, 'CaptchaIframeQuery');
    assert.equal(seen[0].secret_id, MOCK_SECRET_ID);
    assert.equal(seen[0].signature, 'ok');
    assert.equal(seen[0].code, 0);
    assert.equal(seen[0].params.Signature, undefined, 'journal must not keep the Signature');
    assert.equal(seen[0].params.SignatureMethod, signatureMethod === 'sha256' ? 'HmacSHA256' : undefined);
  });

  test(`SDK ${name}: wrong SecretKey rejected with 4100`, async () => {
    const nonce = nextNonce();
    const r = await sdkCall(base(), {
      method, signatureMethod, nonce, ca: ca(), secretKey: 'not-the-secret', params: { ...SEED_PARAMS },
    });
    assert.equal(r.code, 4100, JSON.stringify(r));
    assert.equal(r.codeDesc, 'AuthFailure');
    assert.equal(typeof r.message, 'string');
    assert.equal(r.url, undefined);
    const seen = findByNonce(await journal(), nonce);
    assert.equal(seen.length, 1, 'one journal entry for the call');
    assert.equal(seen[0].signature, 'bad');
    assert.equal(seen[0].code, 4100);
  });
}

test('SDK over https refuses a server certificate from an unrelated CA', async () => {
  const wrongCa = fs.readFileSync(path.join(certs().dir, 'wrong-ca.pem'));
  await assert.rejects(
    sdkCall(mock.httpsUrl, { ca: wrongCa, params: { ...SEED_PARAMS } }),
    (err) => /certificate|self.signed|issuer/i.test(`${err.code} ${err.message}`),
  );
});

test('SDK CaptchaCheck with a solved ticket passes, a made-up ticket fails with 5100', async () => {
  const q = await sdkCall(mock.url, { params: { ...SEED_PARAMS } });
  assert.equal(q.code, 0, JSON.stringify(q));
  const solved = await mock.admin('solve', { method: 'POST', json: { url: q.url } });
  assert.equal(typeof solved.ticket, 'string', JSON.stringify(solved));
  // GET: on POST the SDK leaves values starting with '@' (its file-upload convention) out of
  // the string to sign but still sends them, and a randstr starts with '@'.
  const check = (ticket) => sdkCall(mock.url, {
    method: 'GET', action: 'CaptchaCheck',
    params: { ticket, randstr: solved.randstr, captchaType: '1', userIp: '127.0.0.1' },
  });
  const ok = await check(solved.ticket);
  assert.equal(ok.code, 0, JSON.stringify(ok));
  const bad = await check(`${solved.ticket}x`);
  assert.equal(bad.code, 5100, JSON.stringify(bad));
});
