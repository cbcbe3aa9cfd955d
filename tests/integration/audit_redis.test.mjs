// audit_redis.test.mjs: the audit trail of a gateway with a redis section. One record per request
// whatever the decision; a Redis outage under load loses nothing and duplicates nothing (records
// spool and replay); a capgate restart over a non-empty spool delivers the spooled records once
// Redis is back. Redis runs with --appendonly yes --appendfsync always so its stream survives a
// kill, on a fixed port so the gateway can reconnect to the restarted server.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { startMock, freePort, tmpDir, waitFor, Proc, SEED_PARAMS } from './lib/harness.mjs';
import { streamEntries } from './lib/auditstream.mjs';
import { startGateway, gwCall, APPS } from './lib/gateway.mjs';

const STREAM = 'capgate:audit';
let mock;
const cleanups = [];

before(async () => {
  mock = await startMock({ tls: true });
});
after(async () => {
  for (const c of cleanups.reverse()) await c();
  await mock?.stop();
});

/** A redis-server on a fixed port and directory that can be killed and started again. */
async function persistentRedis() {
  const port = await freePort();
  const dir = tmpDir('capgate-audit-redis-');
  const r = {
    port, dir, proc: null,
    url: `redis://127.0.0.1:${port}/0`,
    cli: (...a) => execFileSync('redis-cli', ['-p', String(port), ...a], { encoding: 'utf8' }).trim(),
    async start() {
      r.proc = new Proc('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '',
        '--appendonly', 'yes', '--appendfsync', 'always', '--dir', dir]);
      await waitFor(() => { try { return r.cli('PING') === 'PONG'; } catch { return false; } },
        { what: 'redis PING', timeoutMs: 10000 });
    },
    async kill() {
      r.proc.signal('SIGKILL');
      await r.proc.exited;
    },
  };
  await r.start();
  cleanups.push(async () => { await r.proc?.stop(); fs.rmSync(dir, { recursive: true, force: true }); });
  return r;
}

/** The stream's records as { request_id: [decision, ...] } (a list, to see duplicates). */
function streamRecords(redis) {
  const byId = {};
  for (const { rec, format } of streamEntries(redis.port, STREAM)) {
    assert.equal(format, 'json', `every entry is one "json" field: ${JSON.stringify(rec)}`);
    (byId[rec.request_id] ??= []).push(rec.decision);
  }
  return byId;
}

async function gateway(redis, extra = {}) {
  const gw = await startGateway({
    mock,
    config: {
      redis: { url: redis.url, timeout_ms: 200 },
      limits: [{ name: 'tight', businessId: 5, sceneId: 5, rate: 1, period_s: 60, burst: 1 }],
      ...extra,
    },
  });
  cleanups.push(() => gw.stop());
  return gw;
}

/** One request of each decision the gateway makes without upstream faults. */
async function requestsOfEveryDecision(gw) {
  const calls = [
    ['forwarded', gwCall(gw)],
    ['invalid', gwCall(gw, { params: { ...SEED_PARAMS, clientType: '5' } })],
    ['unauthorized', gwCall(gw, { secretKey: 'not-the-key' })],
    ['denied', gwCall(gw, { app: APPS.limited, params: { ...SEED_PARAMS, businessId: '9' } })],
  ];
  const out = [];
  for (const [decision, p] of calls) {
    const r = await p;
    out.push({ decision, id: r.headers['x-request-id'] });
  }
  const first = await gwCall(gw, { params: { ...SEED_PARAMS, businessId: '5', sceneId: '5' } });
  const second = await gwCall(gw, { params: { ...SEED_PARAMS, businessId: '5', sceneId: '5' } });
  out.push({ decision: 'forwarded', id: first.headers['x-request-id'] });
  out.push({ decision: 'limited', id: second.headers['x-request-id'] });
  for (const o of out) assert.match(o.id ?? '', /^[0-9a-f]{16}$/, `X-Request-Id of a ${o.decision} reply`);
  return out;
}

async function waitForIds(redis, ids, what) {
  let recs;
  await waitFor(() => {
    try { recs = streamRecords(redis); } catch { return false; }
    return ids.every((id) => recs[id]);
  }, { what, timeoutMs: 20000, intervalMs: 100 });
  for (const id of ids) assert.equal(recs[id].length, 1, `request ${id} has ${recs[id].length} records`);
  return recs;
}

test('one record per request, whatever the decision', async () => {
  const redis = await persistentRedis();
  const gw = await gateway(redis);
  const sent = await requestsOfEveryDecision(gw);
  const recs = await waitForIds(redis, sent.map((s) => s.id), 'every record in the stream');
  for (const s of sent) assert.deepEqual(recs[s.id], [s.decision], `decision of ${s.id}`);
  assert.equal(Number(redis.cli('XLEN', STREAM)), sent.length);
  // nothing secret in the stream
  const dump = redis.cli('XRANGE', STREAM, '-', '+');
  for (const secret of [APPS.sig.secretKey, APPS.limited.secretKey, 'Signature', 'asig=']) {
    assert.ok(!dump.includes(secret), `the stream holds ${secret}`);
  }
});

test('a stream entry is one field, the audit.file line; /admin/audit reads it and an entry of the earlier flat format alike', async () => {
  const redis = await persistentRedis();
  const file = path.join(redis.dir, 'audit.jsonl');
  const gw = await gateway(redis, { audit: { file } });
  const r = await gwCall(gw, { params: { ...SEED_PARAMS, uid: 'user-7' } });
  const id = r.headers['x-request-id'];
  await waitForIds(redis, [id], 'the record in the stream');
  const [entry] = streamEntries(redis.port, STREAM);
  const line = fs.readFileSync(file, 'utf8').split('\n').find((l) => l.includes(id));
  assert.equal(entry.format, 'json');
  assert.equal(entry.text, line, 'the entry\'s json field is the audit.file line, byte for byte');
  // the same record as an earlier version wrote it: flat fields, absent values left out
  const old = { ...entry.rec, request_id: 'feedfacefeedface' };
  const flat = Object.entries(old).filter(([, v]) => v !== null).flatMap(([k, v]) => [k, String(v)]);
  redis.cli('XADD', STREAM, '*', ...flat);
  const q = await gw.admin('/admin/audit?limit=10');
  assert.equal(q.status, 200, q.body);
  assert.deepEqual(q.json.records, [old, entry.rec], 'newest first, both read whole');
  assert.deepEqual(q.json.records[1], JSON.parse(line), '/admin/audit gives the audit.file record');
});

test('a Redis outage under load: every request has exactly one record afterwards', async () => {
  const redis = await persistentRedis();
  const gw = await gateway(redis);
  const ids = [];
  const send = async (n) => {
    const batch = [];
    for (let i = 0; i < n; i++) batch.push(gwCall(gw, { params: { ...SEED_PARAMS, uid: `u${i}` } }));
    for (const r of await Promise.all(batch)) ids.push(r.headers['x-request-id']);
  };
  for (let i = 0; i < 5; i++) await send(20);
  await redis.kill();
  for (let i = 0; i < 5; i++) await send(20);
  await redis.start();
  for (let i = 0; i < 5; i++) await send(20);
  assert.equal(ids.length, 300);
  assert.ok(ids.every((id) => /^[0-9a-f]{16}$/.test(id ?? '')));
  await waitForIds(redis, ids, 'all 300 records after the outage');
  assert.equal(Number(redis.cli('XLEN', STREAM)), 300);
});

test('a capgate restart over a non-empty spool: the records arrive', async () => {
  const redis = await persistentRedis();
  const spool = tmpDir('capgate-audit-spool-');
  cleanups.push(() => fs.rmSync(spool, { recursive: true, force: true }));
  const gw1 = await gateway(redis, { audit: { spool_dir: spool } });
  await redis.kill();
  const ids = [];
  for (let i = 0; i < 30; i++) ids.push((await gwCall(gw1)).headers['x-request-id']);
  const r = await gw1.proc.stop();
  assert.equal(r.code, 0);
  const segments = fs.readdirSync(spool).filter((f) => f.endsWith('.jsonl'));
  assert.ok(segments.length > 0, 'the stopped gateway left a spool');
  const lines = segments.map((f) => fs.readFileSync(path.join(spool, f), 'utf8')).join('');
  for (const id of ids) assert.ok(lines.includes(`"request_id":"${id}"`), `${id} in the spool`);

  await redis.start();
  await gateway(redis, { audit: { spool_dir: spool } });
  await waitForIds(redis, ids, 'the spooled records after the restart');
  await waitFor(() => fs.readdirSync(spool).filter((f) => f.endsWith('.jsonl')).length === 0,
    { what: 'the spool emptied', timeoutMs: 10000 });
});

// The sink waits for Redis as long as the redis.timeout_ms of the settings its connection was made
// with: a SIGHUP that raises it applies to the audit trail too (it kept the start-up value
// before). Redis is stopped for STALL_MS around one request with each setting: 200 ms gives up
// (the batch spools, one failure line), 3000 ms waits the stall out (no failure line).
test('redis.timeout_ms changed by SIGHUP applies to the audit sink\'s waits', async () => {
  const STALL_MS = 800;
  const SINK_FAILURE = /audit: redis: .*; spooling, next attempt/g;
  const failures = (gw) => (gw.proc.stderr.match(SINK_FAILURE) ?? []).length;
  const redis = await persistentRedis();
  const gw = await gateway(redis);
  /** One request while Redis is stopped for STALL_MS; resolves once its record is in the stream. */
  const stalledRequest = async () => {
    redis.proc.signal('SIGSTOP');
    let id;
    try {
      id = (await gwCall(gw)).headers['x-request-id'];
      await new Promise((r) => setTimeout(r, STALL_MS));
    } finally {
      redis.proc.signal('SIGCONT');
    }
    await waitForIds(redis, [id], `the record of ${id}`);
  };
  await waitForIds(redis, [(await gwCall(gw)).headers['x-request-id']], 'the first record');
  assert.equal(failures(gw), 0, gw.proc.stderr);

  await stalledRequest();
  assert.ok(failures(gw) >= 1, `with timeout_ms 200 the sink gave up during the stall:\n${gw.proc.stderr}`);

  const before = failures(gw);
  const reconnects = (gw.proc.stderr.match(/audit: connected to redis/g) ?? []).length;
  gw.writeConfig({ ...gw.config, redis: { ...gw.config.redis, timeout_ms: 3000 } });
  gw.reload();
  await waitFor(() => /reload: redis\.timeout_ms 200 -> 3000/.test(gw.proc.stderr),
    { what: 'the reload of redis.timeout_ms', timeoutMs: 5000 });
  await waitFor(() => (gw.proc.stderr.match(/audit: connected to redis/g) ?? []).length > reconnects,
    { what: 'the sink connected with the new settings', timeoutMs: 10000 });
  await stalledRequest();
  assert.equal(failures(gw), before, `with timeout_ms 3000 the sink waited the stall out:\n${gw.proc.stderr}`);
});
