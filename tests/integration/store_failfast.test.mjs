// store_failfast.test.mjs: fail fast while Redis hangs (issue 13, item 2). A real redis-server is
// stopped (SIGSTOP) under load: the requests already waiting on it when it stopped wait out
// redis.timeout_ms, the store is then marked down, and every later request goes straight to
// on_store_error: the latencies come from the server's own audit records (latency_us less
// upstream_latency_us: the time the gateway itself took, the store's wait included). After
// SIGCONT the store comes back by itself (capgate_store_up, /readyz) and limits apply in Redis
// again (the bucket key is written there).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startMock, startRedis, waitFor, sleep, tmpDir } from './lib/harness.mjs';
import { startGateway, gwCall, APPS } from './lib/gateway.mjs';
import { runLoad, tokenRequest, summary } from './lib/load.mjs';

const TIMEOUT_MS = 300;  // redis.timeout_ms: long enough that waiting it out stands apart
const CONCURRENCY = 8;
const STOP_MS = 2000;
// libevent sets a timer from the loop's cached time, taken when the loop turn began: a command
// queued late in a busy turn times out up to that turn's length before timeout_ms after the
// request's arrival, which the audit record takes from the clock. Waiting "the timeout" is
// therefore >= TIMEOUT_MS - TURN_MS of the server's own latency.
const TURN_MS = 25;
const GLOBAL = { name: 'all', scope: 'global', rate: 100000, period_s: 1 };
const TIGHT = { name: 'tight', businessId: 9, sceneId: '*', rate: 1, period_s: 60, burst: 2 };

let mock;
before(async () => {
  mock = await startMock({ tls: true });
});
after(async () => {
  await mock?.stop();
});

const quantile = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(q * s.length))] : NaN;
};

/** The audit file's records: [{ id, arrivalMs, latencyMs, code }], latencyMs without the
 * upstream call (a loaded machine can slow the mock; the store's wait is the gateway's own). */
function auditRecords(file) {
  return fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => {
    const j = JSON.parse(l);
    return { id: j.request_id, arrivalMs: Date.parse(j.ts), latencyMs: (j.latency_us - (j.upstream_latency_us || 0)) / 1000, code: j.code, decision: j.decision };
  });
}

test('while Redis hangs, requests do not wait redis.timeout_ms once it has timed out; it comes back by itself', async (t) => {
  const redis = await startRedis();
  const prefix = `ff${process.pid}:`;
  const dir = tmpDir('capgate-failfast-');
  const auditFile = path.join(dir, 'audit.jsonl');
  let gw;
  let stopped = false;
  try {
    gw = await startGateway({
      mock,
      config: {
        redis: { url: redis.url, key_prefix: prefix, timeout_ms: TIMEOUT_MS },
        on_store_error: 'local',
        limits: [GLOBAL, TIGHT],
        audit: { file: auditFile },
      },
    });
    const ids = new Set();
    const load = runLoad({
      spec: tokenRequest(gw, APPS.token, { businessId: '1' }),
      concurrency: CONCURRENCY,
      durationMs: 1000 + STOP_MS + 1500,
      onReply: (r) => ids.add(r.headers['x-request-id']),
    });
    await sleep(1000);
    const before = await gw.metrics();
    assert.equal(before.get('capgate_store_up'), 1, 'the store is up before the stop');
    redis.proc.signal('SIGSTOP');
    stopped = true;
    await sleep(STOP_MS);
    const during = await gw.metrics();
    const ready = JSON.parse((await gw.admin('/readyz')).body);
    redis.proc.signal('SIGCONT');
    stopped = false;
    const r = await load;
    t.diagnostic(`load: ${summary(r)}`);
    assert.deepEqual(r.errors, {}, `every request answered: ${summary(r)}`);
    assert.deepEqual(Object.keys(r.codes), ['0'], `on_store_error local admits under the global rule: ${summary(r)}`);
    assert.equal(during.get('capgate_store_up'), 0, 'capgate_store_up is 0 while Redis hangs');
    assert.equal(ready.store, 'down', `/readyz reports the store down: ${JSON.stringify(ready)}`);
    const fast = during.get('capgate_store_fast_failures_total');
    assert.ok(fast > 0, `requests were refused by the store at once while it was down (${fast})`);

    // The server's numbers: every answered request's audit record, its arrival and latency.
    let recs;
    await waitFor(() => {
      try { recs = auditRecords(auditFile); } catch { return false; }
      const have = new Set(recs.map((x) => x.id));
      return [...ids].every((id) => have.has(id));
    }, { what: 'every answered request in the audit file', timeoutMs: 10000, intervalMs: 100 });
    const slow = recs.filter((x) => x.latencyMs >= TIMEOUT_MS - TURN_MS);
    assert.ok(slow.length > 0, 'the requests waiting on Redis when it stopped timed out');
    // After the first timeout every worker with a command in flight has timed out within one
    // more timeout_ms (the load keeps each worker busy): from then on, until Redis is back,
    // nothing waits for it.
    const firstTimeoutAt = Math.min(...slow.map((x) => x.arrivalMs + x.latencyMs));
    const lastSlowArrival = Math.max(...slow.map((x) => x.arrivalMs));
    const settled = firstTimeoutAt + TIMEOUT_MS;
    const downEnd = firstTimeoutAt + STOP_MS - 2 * TIMEOUT_MS; // well before SIGCONT
    const whileDown = recs.filter((x) => x.arrivalMs >= settled && x.arrivalMs < downEnd);
    const lat = whileDown.map((x) => x.latencyMs);
    t.diagnostic(`timed out: ${slow.length} requests (the last of them arrived ${Math.round(firstTimeoutAt - lastSlowArrival)} ms ` +
      `before the first timeout fired); while marked down: ${whileDown.length} requests, latency without upstream p50 ${quantile(lat, 0.5)?.toFixed(2)} ms, ` +
      `p99 ${quantile(lat, 0.99)?.toFixed(2)} ms, max ${Math.max(...lat).toFixed(2)} ms (timeout_ms ${TIMEOUT_MS})`);
    assert.ok(whileDown.length >= 50, `the load went on while Redis hung (${whileDown.length} requests)`);
    assert.ok(slow.length <= 2 * CONCURRENCY, `only the requests in flight at the stop waited the timeout: ${slow.length} <= ${2 * CONCURRENCY}`);
    const waited = whileDown.filter((x) => x.latencyMs >= TIMEOUT_MS - TURN_MS);
    assert.deepEqual(waited, [], 'no request waited redis.timeout_ms while the store was known down');

    // Back by itself: the probe (or the reconnect) finds Redis answering again.
    await waitFor(async () => (await gw.metrics()).get('capgate_store_up') === 1,
      { what: 'capgate_store_up back to 1 after SIGCONT', timeoutMs: 10000, intervalMs: 100 });
    assert.equal(JSON.parse((await gw.admin('/readyz')).body).store, 'up');
    // Limits apply in Redis again: the tight rule's bucket is written there, and it limits.
    const key = `${prefix}rl:tight:9:-`;
    redis.cli('DEL', key);
    const codes = [];
    for (let i = 0; i < 4; i++) {
      const x = await gwCall(gw, { app: APPS.token, params: { captchaType: '1', disturbLevel: '1', isHttps: '0', clientType: '2', accountType: '0', businessId: '9' } });
      codes.push(x.json?.code);
    }
    assert.deepEqual(codes, [0, 0, 4400, 4400], 'the tight rule admits its burst of 2, then limits');
    assert.notEqual(redis.cli('TYPE', key), 'none', `the bucket ${key} is in Redis`);
  } finally {
    if (stopped) redis.proc.signal('SIGCONT');
    await gw?.stop();
    await redis.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
