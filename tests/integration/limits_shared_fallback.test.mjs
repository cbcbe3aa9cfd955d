// limits_shared_fallback.test.mjs: the local fallback shares the rate (issue 13, item 3). Two
// gateway instances share a real redis-server and a global rule. Each publishes a heartbeat in
// the ZSET <prefix>instances; then Redis is stopped (SIGSTOP) and both are loaded far above the
// rule. With on_store_error "local" each enforces rate ÷ 2 (burst ÷ 2), so the cluster admits
// about the rule's rate, not twice it. The admitted count comes from the replies; the window from
// the server's side (the audit records' arrival times, both gateways).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startMock, startRedis, waitFor, tmpDir } from './lib/harness.mjs';
import { startGateway, APPS } from './lib/gateway.mjs';
import { runLoad, tokenRequest, summary } from './lib/load.mjs';

const RATE = 50;
const BURST = 10;
const RULE = { name: 'everyone', scope: 'global', rate: RATE, period_s: 1, burst: BURST };
const LOAD_MS = 4000;
const CONCURRENCY = 8;

let mock;
before(async () => {
  mock = await startMock({ tls: true });
});
after(async () => {
  await mock?.stop();
});

function auditRecords(file) {
  return fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => {
    const j = JSON.parse(l);
    return { id: j.request_id, arrivalMs: Date.parse(j.ts), code: j.code };
  });
}

test('on_store_error local with two instances: each enforces the global rule at rate / 2', async (t) => {
  const redis = await startRedis();
  const prefix = `lsf${process.pid}:`;
  const dir = tmpDir('capgate-shared-');
  const gws = [];
  let stopped = false;
  try {
    for (let i = 0; i < 2; i++) {
      gws.push(await startGateway({
        mock,
        config: {
          instance: `shared-${i}`,
          redis: { url: redis.url, key_prefix: prefix, timeout_ms: 100 },
          on_store_error: 'local',
          limits: [RULE],
          audit: { file: path.join(dir, `audit-${i}.jsonl`) },
        },
      }));
    }
    // Both heartbeats are in Redis and each gateway has seen the other.
    await waitFor(() => redis.cli('ZCARD', `${prefix}instances`) === '2',
      { what: `two members in ${prefix}instances`, timeoutMs: 10000, intervalMs: 100 });
    for (const gw of gws) {
      await waitFor(() => gw.proc.stderr.includes('2 live instance(s) share the limits'),
        { what: 'the gateway saw two live instances', timeoutMs: 10000, intervalMs: 100 });
    }
    assert.deepEqual(redis.cli('ZRANGE', `${prefix}instances`, '0', '-1').split('\n').sort(), ['shared-0', 'shared-1']);

    redis.proc.signal('SIGSTOP');
    stopped = true;
    const answered = [new Map(), new Map()];
    const runs = await Promise.all(gws.map((gw, i) => runLoad({
      spec: tokenRequest(gw, APPS.token, { businessId: String(i + 1) }),
      concurrency: CONCURRENCY,
      durationMs: LOAD_MS,
      onReply: (r) => answered[i].set(r.headers['x-request-id'], r.json?.code),
    })));
    // /metrics shows the count each gateway divides by, kept through the outage
    for (const gw of gws) assert.equal((await gw.metrics()).get('capgate_store_live_instances'), 2);
    redis.proc.signal('SIGCONT');
    stopped = false;
    const detail = runs.map((r, i) => `instance ${i}: ${summary(r)}`).join('\n');
    for (const [i, r] of runs.entries()) {
      assert.deepEqual(r.errors, {}, `instance ${i}: every request answered\n${detail}`);
      assert.equal(r.admitted + (r.codes['4400'] || 0), r.replies, `instance ${i}: only 0 and 4400\n${detail}`);
    }
    // The server's window: the arrival times of every answered request, both gateways.
    const recs = [];
    for (let i = 0; i < 2; i++) {
      const file = path.join(dir, `audit-${i}.jsonl`);
      let mine = [];
      await waitFor(() => {
        try { mine = auditRecords(file).filter((x) => answered[i].has(x.id)); } catch { return false; }
        return mine.length === answered[i].size;
      }, { what: `instance ${i}: a record per reply in its audit file`, timeoutMs: 10000, intervalMs: 100 });
      recs.push(...mine);
    }
    const admitted = recs.filter((x) => x.code === 0);
    const ts = recs.map((x) => x.arrivalMs);
    const spanS = (Math.max(...ts) - Math.min(...ts)) / 1000;
    const limit = BURST + RATE * spanS;
    t.diagnostic(`admitted ${admitted.length} of ${recs.length} over ${spanS.toFixed(2)} s (server side); ` +
      `the rule allows ${limit.toFixed(1)}; per instance ${runs.map((r) => r.admitted).join(' + ')}`);
    assert.ok(recs.length >= 3 * limit, `offered load ${recs.length} >= 3x the limit ${limit.toFixed(1)}\n${detail}`);
    // Each instance alone would admit the whole rate: 2x. Shared, the cluster stays near 1x.
    assert.ok(admitted.length <= 1.2 * limit, `admitted ${admitted.length} <= 1.2 x (burst + rate x ${spanS.toFixed(2)} s) = ${(1.2 * limit).toFixed(1)}\n${detail}`);
    assert.ok(admitted.length >= 0.5 * RATE * spanS, `the rule still admits about its rate: ${admitted.length}\n${detail}`);
    for (const [i, r] of runs.entries()) {
      assert.ok(r.admitted <= 0.6 * limit, `instance ${i} admitted its share (${r.admitted} <= 0.6 x ${limit.toFixed(1)})\n${detail}`);
    }
    // Per second after the first (the burst): within 1.2x the rate, the arrival bins of the server.
    const t0 = Math.min(...ts);
    const bins = new Map();
    for (const x of admitted) {
      const b = Math.floor((x.arrivalMs - t0) / 1000);
      bins.set(b, (bins.get(b) || 0) + 1);
    }
    const full = Math.floor(spanS);
    for (let b = 1; b < full; b++) {
      const n = bins.get(b) || 0;
      assert.ok(n <= 1.2 * RATE + 2, `second ${b}: admitted ${n} <= 1.2 x ${RATE} (+2 for the bin edges)`);
    }

    // Heartbeats go on once Redis answers again; a stopped instance leaves the set.
    await gws[1].stop();
    gws.pop();
    await waitFor(() => redis.cli('ZRANGE', `${prefix}instances`, '0', '-1') === 'shared-0',
      { what: 'the stopped instance leaves the set within the heartbeat ttl', timeoutMs: 15000, intervalMs: 200 });
  } finally {
    if (stopped) redis.proc.signal('SIGCONT');
    for (const gw of gws) await gw.stop();
    await redis.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
