// limits_store_error.test.mjs: on_store_error (DESIGN.md 4.1, 5) with Redis killed mid-run. capgate
// starts with a real redis-server and enforces a rule through it; then redis-server is killed
// (SIGKILL) and load continues: "local" keeps enforcing the rule with in-process buckets (admitted ≈
// burst + rate × time, loose bound), "allow" admits everything, "deny" refuses everything with 6200
// "rate-limit store unavailable"; no request hangs (each answered within redis.timeout_ms plus
// upstream slack). "deny" also checks that limits work again once Redis is back on its port.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { startMock, startRedis, waitFor, tmpDir, Proc } from './lib/harness.mjs';
import { startGateway, gwCall, journal, resetMock, assertApiReply, APPS } from './lib/gateway.mjs';
import { runLoad, tokenRequest, summary } from './lib/load.mjs';

const REDIS_TIMEOUT_MS = 100;
const UPSTREAM_TIMEOUT_MS = 1500; // gatewayConfig's upstream.timeout_ms
// No hanging: a reply within the Redis timeout plus the upstream's, plus slack for a noisy machine.
const MAX_REPLY_MS = REDIS_TIMEOUT_MS + UPSTREAM_TIMEOUT_MS + 1000;
// Enough in flight that the offered load stays far above the rule even if each request waits out
// the Redis timeout while it is down.
const OUTAGE_CONCURRENCY = 16;
const RULE = { name: 'outage', businessId: '*', sceneId: '*', rate: 10, period_s: 1, burst: 5 };

let mock;
before(async () => {
  mock = await startMock({ tls: true });
});
after(async () => {
  await mock?.stop();
});

/** Starts redis + capgate (on_store_error mode), runs fn, cleans up whatever happens. */
async function withOutageSetup(mode, fn) {
  const redis = await startRedis();
  const prefix = `lse${process.pid}${mode}:`;
  let gw;
  const extra = [];
  try {
    gw = await startGateway({
      mock,
      config: {
        redis: { url: redis.url, key_prefix: prefix, timeout_ms: REDIS_TIMEOUT_MS },
        on_store_error: mode,
        limits: [RULE],
      },
    });
    await fn({ redis, gw, prefix, extra });
  } finally {
    await gw?.stop();
    await redis.stop();
    for (const p of extra) await p.stop();
  }
}

/** Through Redis first: the rule limits a burst and its key exists in Redis. */
async function enforcedThroughRedis(gw, redis, prefix) {
  const r = await runLoad({ spec: tokenRequest(gw, APPS.token, { businessId: '1', sceneId: '1' }), concurrency: 4, count: 40 });
  assert.deepEqual(r.errors, {}, summary(r));
  const bound = RULE.burst + RULE.rate * (r.elapsedMs / 1000) + 1;
  assert.ok(r.admitted >= RULE.burst && r.admitted <= bound, `with Redis up, admitted ${r.admitted} within [${RULE.burst}, ${bound.toFixed(1)}]: ${summary(r)}`);
  assert.equal(r.admitted + (r.codes['4400'] || 0), r.replies, `only 0 and 4400 with Redis up: ${summary(r)}`);
  const t = redis.cli('TYPE', `${prefix}rl:outage:1:1`);
  assert.notEqual(t, 'none', `the bucket lives in Redis (${prefix}rl:outage:1:1)`);
}

async function killRedis(redis) {
  redis.proc.signal('SIGKILL');
  const { signal } = await redis.proc.exited;
  assert.equal(signal, 'SIGKILL');
}

test('on_store_error local: with Redis killed, in-process buckets keep enforcing the rule', async (t) => {
  await withOutageSetup('local', async ({ gw, redis, prefix }) => {
    await enforcedThroughRedis(gw, redis, prefix);
    await killRedis(redis);
    const r = await runLoad({ spec: tokenRequest(gw, APPS.token, { businessId: '2', sceneId: '2' }), concurrency: OUTAGE_CONCURRENCY, durationMs: 3000 });
    t.diagnostic(`during the outage: ${summary(r)}`);
    assert.deepEqual(r.errors, {}, `every request answered: ${summary(r)}`);
    assert.ok(r.maxMs <= MAX_REPLY_MS, `slowest reply ${Math.round(r.maxMs)} ms <= ${MAX_REPLY_MS} ms: ${summary(r)}`);
    assert.equal(r.admitted + (r.codes['4400'] || 0), r.replies, `only 0 (admitted) and 4400 (limited) during the outage: ${summary(r)}; samples ${JSON.stringify(r.samples)}`);
    const secs = r.elapsedMs / 1000;
    const expected = RULE.burst + RULE.rate * secs;
    // Loose: the rule still limits (far below the offered load) and roughly at its rate.
    assert.ok(r.replies >= 3 * expected, `offered load ${r.replies} >= 3x the limit ${expected.toFixed(1)}: ${summary(r)}`);
    assert.ok(r.admitted <= expected + 3, `admitted ${r.admitted} <= burst + rate × ${secs.toFixed(2)} s + 3 = ${(expected + 3).toFixed(1)}: ${summary(r)}`);
    assert.ok(r.admitted >= RULE.burst + RULE.rate * secs * 0.5, `admitted ${r.admitted} >= burst + half the rate × time: ${summary(r)}`);
    const lim = r.samples['4400'];
    assert.ok(lim, 'some requests were limited');
    assert.match(lim.body, /LimitExceeded/, lim.body);
  });
});

test('on_store_error allow: with Redis killed, every request is admitted', async (t) => {
  await withOutageSetup('allow', async ({ gw, redis, prefix }) => {
    await enforcedThroughRedis(gw, redis, prefix);
    await killRedis(redis);
    const r = await runLoad({ spec: tokenRequest(gw, APPS.token, { businessId: '1', sceneId: '1' }), concurrency: OUTAGE_CONCURRENCY, durationMs: 2000 });
    t.diagnostic(`during the outage: ${summary(r)}`);
    assert.deepEqual(r.errors, {}, `every request answered: ${summary(r)}`);
    assert.ok(r.maxMs <= MAX_REPLY_MS, `slowest reply ${Math.round(r.maxMs)} ms <= ${MAX_REPLY_MS} ms: ${summary(r)}`);
    assert.equal(r.admitted, r.replies, `all admitted: ${summary(r)}; samples ${JSON.stringify(r.samples)}`);
    const limit = RULE.burst + RULE.rate * (r.elapsedMs / 1000);
    assert.ok(r.admitted > 2 * limit, `more admitted (${r.admitted}) than the rule would allow (${limit.toFixed(1)}): the limit is not applied: ${summary(r)}`);
  });
});

test('on_store_error deny: with Redis killed, every request is refused with 6200; limits work again when Redis returns', async (t) => {
  await withOutageSetup('deny', async ({ gw, redis, prefix, extra }) => {
    await enforcedThroughRedis(gw, redis, prefix);
    await killRedis(redis);
    await resetMock(mock);
    const r = await runLoad({ spec: tokenRequest(gw, APPS.token, { businessId: '3', sceneId: '3' }), concurrency: OUTAGE_CONCURRENCY, durationMs: 2000 });
    t.diagnostic(`during the outage: ${summary(r)}`);
    assert.deepEqual(r.errors, {}, `every request answered: ${summary(r)}`);
    assert.ok(r.maxMs <= MAX_REPLY_MS, `slowest reply ${Math.round(r.maxMs)} ms <= ${MAX_REPLY_MS} ms: ${summary(r)}`);
    assert.ok(r.replies >= 20, `enough requests: ${summary(r)}`);
    assert.deepEqual(Object.keys(r.codes), ['6200'], `every reply is 6200: ${summary(r)}; samples ${JSON.stringify(r.samples)}`);
    const one = await gwCall(gw, { app: APPS.token, params: { captchaType: '1', disturbLevel: '1', isHttps: '1', clientType: '2', accountType: '0', businessId: '3' } });
    const j = assertApiReply(one, 'deny during outage');
    assert.equal(j.code, 6200, one.body);
    assert.equal(j.codeDesc, 'ServiceUnavailable', one.body);
    assert.match(j.message, /rate-limit store unavailable/, `a clear message: ${one.body}`);
    assert.equal(one.status, 200, 'compat mode: HTTP 200');
    assert.equal((await journal(mock)).length, 0, 'nothing reached upstream while denying');

    // Redis back on the same port: the gateway reconnects and enforces through it again.
    const dir = tmpDir('capgate-redis-');
    const again = new Proc('redis-server', ['--port', String(redis.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir]);
    extra.push(again);
    await waitFor(() => {
      try { return execFileSync('redis-cli', ['-p', String(redis.port), 'PING'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim() === 'PONG'; } catch { return false; }
    }, { timeoutMs: 5000, what: 'redis back' });
    let last;
    await waitFor(async () => {
      last = await gwCall(gw, { app: APPS.token, params: { captchaType: '1', disturbLevel: '1', isHttps: '1', clientType: '2', accountType: '0', businessId: '4' } });
      return last.json?.code === 0;
    }, { timeoutMs: 10000, intervalMs: 200, what: 'an admitted request after Redis returned' }).catch((e) => {
      assert.fail(`${e.message}; last reply: ${last?.body}`);
    });
    // No log flood over the outage (issue 12): the store's reconnects, the metrics flushes and
    // the audit sink's attempts each warn when the failure starts or its error changes, not on
    // every attempt of every worker (without it: about ten store lines and five audit lines).
    const lines = gw.proc.stderr.split('\n');
    const count = (re) => lines.filter((l) => re.test(l)).length;
    t.diagnostic(`outage warnings: store ${count(/retrying in/)}, metrics ${count(/metrics: flush failed/)}, audit ${count(/spooling, next attempt/)}`);
    assert.ok(count(/retrying in/) <= 4, gw.proc.stderr);
    assert.ok(count(/metrics: flush failed/) <= 2, gw.proc.stderr);
    assert.ok(count(/spooling, next attempt/) <= 3, gw.proc.stderr);
    assert.equal(count(/redis 127\.0\.0\.1:\d+: connected again/), 1, gw.proc.stderr);
    const keyType = execFileSync('redis-cli', ['-p', String(redis.port), 'TYPE', `${prefix}rl:outage:4:-`], { encoding: 'utf8' }).trim();
    assert.notEqual(keyType, 'none', 'the bucket is in the restarted Redis');
  });
});
