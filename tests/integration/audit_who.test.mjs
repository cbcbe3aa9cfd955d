// audit_who.test.mjs: who failed, in the audit. A signed request that is refused (bad
// signature, stale Timestamp, missing public parameter) but names a known app's SecretId is
// recorded with that app; an unknown SecretId is recorded in the field secret_id; the Signature is
// never recorded. Checked in the audit file, in /admin/audit and in the Redis stream.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startMock, startRedis, tmpDir, waitFor } from './lib/harness.mjs';
import { streamEntries } from './lib/auditstream.mjs';
import { startGateway, gwCall, APPS } from './lib/gateway.mjs';

let mock;
let redis;
before(async () => {
  mock = await startMock({ tls: true });
  redis = await startRedis();
});
after(async () => {
  await redis?.stop();
  await mock?.stop();
});

const UNKNOWN_ID = 'AKIDnotAnAppOfThisGateway0000000000000';

/** The refused calls, each with what its record must say; the Signatures sent. */
async function refusedCalls(gw) {
  const calls = [
    { what: 'bad signature', opts: { secretKey: 'not-the-key' }, code: 4100, app: APPS.sig.name, secretId: null },
    { what: 'stale Timestamp', opts: { timestamp: Math.floor(Date.now() / 1000) - 3600 }, code: 4500, app: APPS.sig.name, secretId: null },
    { what: 'no Nonce', opts: { publicParams: { Nonce: undefined } }, code: 4000, app: APPS.sig.name, secretId: null },
    { what: 'unknown SecretId', opts: { secretId: UNKNOWN_ID }, code: 4100, app: '', secretId: UNKNOWN_ID },
    { what: 'wrong token', opts: { app: APPS.token, token: 'not-a-token' }, code: 4100, app: '', secretId: null },
  ];
  const signatures = [];
  for (const c of calls) {
    const r = await gwCall(gw, c.opts);
    assert.equal(r.json?.code, c.code, `${c.what}: ${r.body}`);
    c.id = r.headers['x-request-id'];
    assert.match(c.id ?? '', /^[0-9a-f]{16}$/);
    if (r.params.Signature) signatures.push(r.params.Signature);
  }
  assert.ok(signatures.length >= 4);
  return { calls, signatures };
}

function checkRecord(c, rec, where) {
  assert.ok(rec, `${where}: no record of ${c.what} (${c.id})`);
  assert.equal(rec.app, c.app, `${where}: ${c.what}: ${JSON.stringify(rec)}`);
  assert.equal(rec.secret_id ?? null, c.secretId, `${where}: ${c.what}: ${JSON.stringify(rec)}`);
  assert.equal(Number(rec.code), c.code, `${where}: ${c.what}: ${JSON.stringify(rec)}`);
  assert.equal(rec.decision, c.code === 4000 ? 'invalid' : 'unauthorized', `${where}: ${JSON.stringify(rec)}`);
}

function fileRecords(file) {
  if (!fs.existsSync(file)) return [];
  return fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
}

async function adminRecords(gw, ids) {
  let recs;
  await waitFor(async () => {
    const r = await gw.admin('/admin/audit?limit=1000');
    recs = r.json?.records ?? [];
    return ids.every((id) => recs.some((x) => x.request_id === id)) && r;
  }, { timeoutMs: 5000, intervalMs: 50, what: '/admin/audit to hold the records' });
  const text = (await gw.admin('/admin/audit?limit=1000')).body;
  return { recs, text };
}

for (const store of ['memory', 'redis']) {
  test(`${store} store: refused requests are audited with the app their SecretId names, an unknown SecretId in secret_id, never a Signature`, async () => {
    const dir = tmpDir('capgate-audit-who-');
    const file = path.join(dir, 'audit.jsonl');
    const stream = `capgate:audit:who:${process.pid}`;
    const config = { audit: { file, stream } };
    if (store === 'redis') config.redis = { url: redis.url };
    const gw = await startGateway({ mock, config });
    try {
      const { calls, signatures } = await refusedCalls(gw);
      const ids = calls.map((c) => c.id);
      await waitFor(() => ids.every((id) => fileRecords(file).some((r) => r.request_id === id)),
        { timeoutMs: 5000, intervalMs: 50, what: 'the records in the audit file' });
      const inFile = fileRecords(file);
      for (const c of calls) checkRecord(c, inFile.find((r) => r.request_id === c.id), 'audit file');

      const { recs, text } = await adminRecords(gw, ids);
      for (const c of calls) checkRecord(c, recs.find((r) => r.request_id === c.id), '/admin/audit');

      const texts = { 'audit file': fs.readFileSync(file, 'utf8'), '/admin/audit': text };
      if (store === 'redis') {
        const raw = redis.cli('--no-raw', 'XRANGE', stream, '-', '+');
        const inStream = streamEntries(redis.port, stream).map((e) => e.rec);
        for (const c of calls) checkRecord(c, inStream.find((r) => r.request_id === c.id), 'redis stream');
        assert.ok(raw.includes(UNKNOWN_ID), 'the stream holds the unknown SecretId');
        texts['redis stream'] = raw;
      }
      for (const [where, t] of Object.entries(texts)) {
        for (const s of signatures) assert.ok(!t.includes(s), `${where} holds a Signature (${s})`);
        assert.ok(!/Signature/.test(t), `${where} names a Signature`);
        assert.ok(!t.includes(APPS.sig.secretKey) && !t.includes(APPS.token.token), `${where} holds a secret`);
      }
    } finally {
      await gw.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}
