// limits_accuracy.test.mjs: one global rule shared through one Redis by three capgate processes
// (docs/design.md "Rate limits": one EVALSHA per batch of requests, timed by Redis TIME). All three
// are driven concurrently at well over the rule's rate for 10 s. The expectation comes from what
// Redis saw, not from the client's 10 s: MONITOR gives the server time of every EVALSHA of the
// rule and which requests of its batch went through the rule's bucket, a token bucket of the
// configured rate and burst is run over those times, and the total admitted (code 0 replies) must
// match it within 1%.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMock, startRedis, sleep } from './lib/harness.mjs';
import { startGateway, gwCall, assertApiReply, APPS } from './lib/gateway.mjs';
import { runLoad, tokenRequest, summary, tokenBucketAdmits } from './lib/load.mjs';
import { monitorRedis } from './lib/redismonitor.mjs';

const RATE = Number(process.env.CAPGATE_TEST_LIMIT_RATE || 200); // per second
// A small burst, not 1: with burst 1 a bucket cannot bank the time between the moment a token is
// due and the next request that reaches Redis, so scheduling jitter on a busy machine shows up as a
// shortfall of GCRA itself (observed: 1932 of 2001 at 16k requests/s), not of shared counting.
// Ten tokens (50 ms at 200/s) absorb that jitter; rate × 10 s + burst is then the exact ideal.
const BURST = Number(process.env.CAPGATE_TEST_LIMIT_BURST || 10);
const SECONDS = 10;
const INSTANCES = 3;
const CONCURRENCY = 4; // per instance: far above the rate (refusals are cheap)

/**
 * How many requests of one limit EVALSHA (a MONITOR line; store_lua.h has the layout) go through
 * the bucket `key`: KEYS are the batch's entries then its Nonce keys, ARGV holds m, the number of
 * requests, 4 values per entry, then per request its bucket count, its entry numbers and a Nonce
 * PX.
 */
function requestsThrough(line, key) {
  const args = [...line.matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((x) => x[1]);
  const numkeys = Number(args[2]);
  const keys = args.slice(3, 3 + numkeys);
  const argv = args.slice(3 + numkeys);
  const m = Number(argv[0]);
  const nreq = Number(argv[1]);
  const entries = new Set();
  for (let j = 0; j < m; j++) if (keys[j] === key) entries.add(j + 1);
  let a = 2 + 4 * m;
  let n = 0;
  for (let q = 0; q < nreq; q++) {
    const nb = Number(argv[a]);
    if (argv.slice(a + 1, a + 1 + nb).some((j) => entries.has(Number(j)))) n++;
    a += nb + 2;
  }
  assert.equal(a, argv.length, `a limit EVALSHA of the expected layout: ${line}`);
  return n;
}

/** cmdstat_evalsha calls from INFO commandstats (0 when none yet). */
function evalshaCalls() {
  const m = /cmdstat_evalsha:calls=(\d+)/.exec(redis.cli('INFO', 'commandstats'));
  return m ? Number(m[1]) : 0;
}

let mock;
let redis;
const gws = [];
const prefix = `lacc${process.pid}:`;

before(async () => {
  mock = await startMock({ tls: true });
  redis = await startRedis();
  for (let i = 0; i < INSTANCES; i++) {
    gws.push(await startGateway({
      mock,
      config: {
        instance: `acc-${i}`,
        // a generous timeout and "deny": a store problem shows up as 6200, never as local buckets
        redis: { url: redis.url, key_prefix: prefix, timeout_ms: 2000 },
        on_store_error: 'deny',
        limits: [{ name: 'shared', scope: 'global', rate: RATE, period_s: 1, burst: BURST }],
      },
    }));
  }
});
after(async () => {
  for (const gw of gws) await gw.stop();
  await mock?.stop();
  await redis?.stop();
});

test(`three instances, one Redis, one global rule (${RATE}/s, burst ${BURST}): admitted within 1% of a token bucket over the times Redis saw`, async (t) => {
  // Every instance is connected and admits through Redis (sequential calls, a few ms apart, so each
  // finds a token: one per 1/RATE s).
  for (const [i, gw] of gws.entries()) {
    await sleep(Math.ceil(2000 / RATE));
    const r = await gwCall(gw, { app: APPS.token, timeoutMs: 5000 });
    assert.equal(assertApiReply(r, `instance ${i} warm-up`).code, 0, `instance ${i} warm-up: ${r.body}`);
  }
  // The bucket's key expires within its tolerance (5 ms here), so look at Redis's command counts.
  const warm = evalshaCalls();
  assert.ok(warm >= INSTANCES, `the limit went through Redis (EVALSHA calls: ${warm})`);
  await sleep(Math.ceil((1000 * BURST) / RATE) + 50); // the bucket is full again

  const key = `${prefix}rl:shared:global`;
  const monitor = await monitorRedis(redis.port, { match: /"evalsha"/i });
  const runs = await Promise.all(gws.map((gw, i) => runLoad({
    spec: tokenRequest(gw, APPS.token, { businessId: String(i + 1), sceneId: '1' }),
    concurrency: CONCURRENCY,
    durationMs: SECONDS * 1000,
    timeoutMs: 5000,
  })));
  const total = runs.reduce((a, r) => a + r.admitted, 0);
  const replies = runs.reduce((a, r) => a + r.replies, 0);
  const detail = runs.map((r, i) => `instance ${i}: ${summary(r)}`).join('\n');
  for (const [i, r] of runs.entries()) {
    assert.deepEqual(r.errors, {}, `instance ${i}: transport errors\n${detail}`);
    assert.equal(r.admitted + (r.codes['4400'] || 0), r.replies, `instance ${i}: only 0 and 4400 replies\n${detail}\nsamples ${JSON.stringify(r.samples)}`);
  }
  // The test means something only if the rule had to refuse much of what reached it: at least as
  // many refusals as admissions. (Not "3 × rate × 10 s offered": a busy machine may offer less
  // and the expectation below follows whatever arrived.)
  assert.ok(replies - total >= total, `offered load ${replies} is at least twice the ${total} admitted (lower CAPGATE_TEST_LIMIT_RATE if the machine cannot)\n${detail}`);
  const evalsha = evalshaCalls() - warm;
  assert.ok(evalsha >= 1 && evalsha <= replies, `at most one EVALSHA per request: ${evalsha} EVALSHA for ${replies} replies`);
  // every request of a batch arrives at its EVALSHA's time (the script reads TIME once)
  const times = [];
  for (const e of (await monitor.stop(redis.cli)).filter((x) => x.line.includes(`"${key}"`))) {
    for (let k = requestsThrough(e.line, key); k > 0; k--) times.push(e.us);
  }
  assert.equal(times.length, replies, `MONITOR saw each reply's request in a limit EVALSHA of ${key}: ${times.length} for ${replies}`);
  const spanS = (times[times.length - 1] - times[0]) / 1e6;
  let gapMs = 0;
  for (let k = 1; k < times.length; k++) gapMs = Math.max(gapMs, (times[k] - times[k - 1]) / 1000);
  // The ideal for the arrivals Redis saw. It is rate × span + burst only when requests reached Redis
  // without pause; on a loaded machine the load generator or a gateway stalls for longer than the
  // burst lasts (BURST / RATE = 50 ms), and a full bucket banks nothing more while nobody asks.
  const expected = tokenBucketAdmits(times, { rate: RATE, periodS: 1, burst: BURST });
  t.diagnostic(`admitted ${total} of ${replies} replies; EVALSHA ${evalsha} (batches); Redis saw them over ${spanS.toFixed(3)} s ` +
    `(longest gap ${gapMs.toFixed(1)} ms); a token bucket over those times admits ${expected}; ` +
    `rate × span + burst = ${(RATE * spanS + BURST).toFixed(1)}`);
  // 1%, about 20 tokens. The MONITOR time of a command trails the TIME its script read by the
  // script's run time, or by a scheduling slice if Redis was preempted in between, so a request
  // that arrived just as its token fell due may be counted on the other side of it; each such case
  // moves the two counts apart by one token and later arrivals pull them together again (both
  // buckets refill at the same rate), so they differ by a few tokens, not by a share of the total.
  // A real bug is far outside: a rule admitting twice the rate (or per instance: 3x) gives about
  // +100%, one admitting half the rate -50%, a bucket per instance instead of one shared +200%.
  // (The burst alone, 10 tokens, is below this resolution; limits_rules counts it exactly.)
  const tol = Math.max(5, Math.ceil(0.01 * expected));
  assert.ok(Math.abs(total - expected) <= tol,
    `admitted ${total} across ${INSTANCES} instances, a token bucket over Redis's times admits ${expected} ± ${tol} (1%)\n${detail}`);
  // Independent of the simulation: a token bucket never admits more than burst + rate × span.
  assert.ok(total <= BURST + RATE * spanS + 1 + tol, `admitted ${total} <= burst + rate × ${spanS.toFixed(3)} s`);
});
