// cache.mjs: helpers for the prefetch pool and Idempotency-Key tests (docs/design.md "Caches"): the
// pool profile used throughout, readiness on capgate_pool_depth, the mock's CaptchaIframeQuery
// journal, "did the mock issue this url" through /__admin/solve, audit and stats counts on the
// admin listener; and the two suites the test files run on a store: poolSuite (pool_memory,
// pool_redis) and idemSuite (idem_memory, idem_redis). Every wait is bounded.
import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { MOCK_SECRET_ID, SEED_PARAMS, parseRawResponse, rawRequest, request, sleep, startMock, startRedis, waitFor } from './harness.mjs';
import {
  APPS, addFault, assertApiReply, deepMerge, gwCall, journal, resetMock, startGateway, parseRateLimitHeader,
} from './gateway.mjs';

/** The profile every pool test keeps ready, as config (integers) ... */
export const PROFILE = Object.freeze({
  captchaType: 9, disturbLevel: 1, isHttps: 1, clientType: 2, accountType: 0, businessId: 7, sceneId: 8,
});
/** ... and as the business params of a request that matches it exactly. */
export const PROFILE_PARAMS = Object.freeze(Object.fromEntries(Object.entries(PROFILE).map(([k, v]) => [k, String(v)])));

/** The eight per-user fields, each with a valid value: any of them keeps a request out of the pool. */
export const PER_USER_FIELDS = Object.freeze({
  uid: 'pool-user-1',
  userIp: '10.1.2.3',
  xForwardedFor: '10.4.5.6',
  macAddress: '00:11:22:33:44:55',
  imei: '356938035643809',
  associateAccount: 'assoc-account-1',
  appId: '1400000001',
  registerTime: '1700000000',
});

/** pool config for profiles (default: PROFILE with size). */
export const poolConfig = ({ size = 4, ttl_s = 60, profiles } = {}) => ({
  pool: { ttl_s, profiles: profiles ?? [{ ...PROFILE, size }] },
});

/** capgate_pool_depth summed over every profile (or labels). */
export async function poolDepth(gw, labels = {}) {
  return (await gw.metrics()).get('capgate_pool_depth', labels);
}

/** Waits until capgate_pool_depth reaches n (bounded); returns the metrics then. A gateway whose
 * /metrics has no capgate_pool_depth at all after 3 s fails at once. */
export async function waitDepth(gw, n, { timeoutMs = 10000, what } = {}) {
  const t0 = Date.now();
  let last = 'absent';
  for (;;) {
    const m = await gw.metrics();
    if (m.has('capgate_pool_depth')) {
      last = m.get('capgate_pool_depth');
      if (last >= n) return m;
    } else if (Date.now() - t0 > 3000) {
      throw new Error('capgate_pool_depth is not on /metrics (no prefetch pool in this capgate?)');
    }
    if (Date.now() - t0 > timeoutMs) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what ?? `capgate_pool_depth >= ${n}`} (last: ${last})`);
    }
    await sleep(50);
  }
}

/** The mock's CaptchaIframeQuery entries (optionally only those answered with code). */
export async function iframeCalls(mock, { code } = {}) {
  return (await journal(mock)).filter((e) => e.action === 'CaptchaIframeQuery' && (code === undefined || e.code === code));
}

/** POST /__admin/solve for url: 200 with a ticket when the mock issued url and nobody solved it yet. */
export async function solve(mock, url) {
  return request(`${mock.url}/__admin/solve`, { json: { url }, timeoutMs: 5000 });
}

/** GET /admin/audit?... on the admin listener; returns the records (all of them up to limit 1000). */
export async function auditRecords(gw, query = '') {
  const r = await gw.admin(`/admin/audit?limit=1000${query ? `&${query}` : ''}`);
  assert.equal(r.status, 200, `/admin/audit answered ${r.status}: ${r.body.slice(0, 300)}`);
  assert.ok(Array.isArray(r.json?.records), `/admin/audit body: ${r.body.slice(0, 300)}`);
  return r.json.records;
}

/** Waits until GET /admin/audit?decision=... holds exactly n records (bounded); returns them. */
export async function waitAudit(gw, decision, n, { timeoutMs = 8000 } = {}) {
  let last = [];
  try {
    await waitFor(async () => {
      last = await auditRecords(gw, `decision=${decision}`);
      return last.length >= n;
    }, { timeoutMs, intervalMs: 100, what: `${n} audit records with decision ${decision}` });
  } catch (e) {
    throw new Error(`${e.message} (have ${last.length})`);
  }
  return last;
}

/** Waits until /admin/stats totals[field] reaches n (bounded); returns the totals. */
export async function waitStats(gw, field, n, { timeoutMs = 8000 } = {}) {
  let last;
  try {
    return await waitFor(async () => {
      const r = await gw.admin('/admin/stats');
      assert.equal(r.status, 200, `/admin/stats answered ${r.status}: ${r.body.slice(0, 300)}`);
      last = r.json.totals;
      return last && last[field] >= n ? last : null;
    }, { timeoutMs, intervalMs: 100, what: `/admin/stats totals.${field} >= ${n}` });
  } catch (e) {
    throw new Error(`${e.message} (last totals: ${JSON.stringify(last)})`);
  }
}

/** Starts the gateways in order, runs fn(gws), stops every one of them even on failure. */
export async function withGateways(specs, fn) {
  const gws = [];
  try {
    for (const s of specs) gws.push(await startGateway(s));
    return await fn(gws);
  } finally {
    for (const gw of gws) await gw.stop().catch(() => {});
  }
}

/** Runs fns (async functions returning promises) with at most n running at once; results in order. */
export async function parallel(n, fns) {
  const out = new Array(fns.length);
  let next = 0;
  const worker = async () => {
    while (next < fns.length) {
      const i = next++;
      out[i] = await fns[i]();
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, fns.length) }, worker));
  return out;
}

/** The value of an Idempotency-Key header that is unique to this test run. */
let keySeq = 0;
export const idemKey = (tag = 'k') => `${tag}-${process.pid}-${Date.now()}-${++keySeq}`;

// ---- the prefetch pool suite, run by pool_memory.test.mjs and pool_redis.test.mjs ----

/** Deep-merges config fragments left to right. */
export const cfg = (...parts) => parts.reduce((a, b) => deepMerge(a, b), {});

/** Sum of a metric over several gateways. */
export async function metricSum(gws, name, labels = {}) {
  let n = 0;
  for (const gw of gws) n += (await gw.metrics()).get(name, labels);
  return n;
}

const FAULT_6000 = Object.freeze({ action: 'CaptchaIframeQuery', code: 6000 });

/**
 * Defines the prefetch-pool tests against store ('memory': the embedded store, one instance;
 * 'redis': a redis-server started here, and two instances sharing it for the concurrency test).
 */
export function poolSuite(store) {
  let mock;
  let redis;
  let seq = 0;
  before(async () => {
    mock = await startMock({ tls: true });
    if (store === 'redis') redis = await startRedis();
  });
  after(async () => {
    await mock?.stop();
    await redis?.stop();
  });
  beforeEach(async () => {
    await resetMock(mock);
  });

  /** The store part of a config: a fresh key prefix (and audit stream) per call with redis. */
  const storeConfig = () => {
    if (store !== 'redis') return {};
    const prefix = `pt${process.pid}x${++seq}:`;
    return { redis: { url: redis.url, key_prefix: prefix, timeout_ms: 3000 }, audit: { stream: `${prefix}audit` } };
  };
  const call = (gw, opts = {}) => gwCall(gw, { timeoutMs: 8000, ...opts, params: opts.params ?? { ...PROFILE_PARAMS } });

  test(`${store}: hits are served from the pool with urls the refiller got; no upstream call for a hit`, async () => {
    const size = 4;
    await withGateways([{ mock, config: cfg(storeConfig(), poolConfig({ size })) }], async ([gw]) => {
      await waitDepth(gw, size);
      // From now on upstream refuses every CaptchaIframeQuery: a reply with code 0 can only come from the pool.
      await addFault(mock, FAULT_6000);
      const filled = await iframeCalls(mock, { code: 0 });
      assert.ok(filled.length >= size, `the refiller made at least ${size} successful calls: ${filled.length}`);
      for (const e of filled) {
        assert.equal(e.secret_id, MOCK_SECRET_ID, 'refill is signed with the real credential');
        for (const [k, v] of Object.entries(PROFILE_PARAMS)) assert.equal(e.params?.[k], v, `refill param ${k}: ${JSON.stringify(e.params)}`);
        for (const f of Object.keys(PER_USER_FIELDS)) assert.equal(e.params?.[f], undefined, `refill sends no ${f}`);
      }
      const urls = [];
      for (let i = 0; i < size; i++) {
        const r = await call(gw, { app: i % 2 ? APPS.token : APPS.sig, method: i % 3 ? 'GET' : 'POST' });
        const j = assertApiReply(r, `matching request ${i + 1}`);
        assert.equal(j.code, 0, `matching request ${i + 1} is served from the full pool: ${r.body}`);
        assert.equal(j.codeDesc, 'Success');
        assert.match(j.url, /TCapIframeApi\.js\?.*asig=/, r.body);
        urls.push(j.url);
      }
      assert.equal(new Set(urls).size, urls.length, `every url handed out is distinct: ${urls.join(' ')}`);
      assert.equal((await iframeCalls(mock, { code: 0 })).length, filled.length,
        'no successful CaptchaIframeQuery reached the mock for the hits');
      for (const url of urls) {
        const s = await solve(mock, url);
        assert.equal(s.status, 200, `the mock issued ${url} to the refiller and nobody used it: ${s.status} ${s.body}`);
      }
      assert.equal((await gw.metrics()).get('capgate_pool_hits_total'), size, 'capgate_pool_hits_total');

      // Once every url the refiller got is handed out (refill now fails), a matching request goes
      // upstream and gets upstream's reply: the fault's 6000.
      let extra = 0;
      let r;
      for (;;) {
        const before = (await iframeCalls(mock)).length;
        r = await call(gw);
        assertApiReply(r, 'request after the pool ran out');
        if (r.json.code !== 0) {
          assert.ok((await iframeCalls(mock)).length > before, 'the request reached the mock');
          break;
        }
        extra++;
        urls.push(r.json.url);
        assert.ok(size + extra <= filled.length, `no more hits than urls the refiller got (${filled.length}): ${r.body}`);
      }
      assert.equal(r.json.code, 6000, `an empty pool falls through to upstream (the fault's reply): ${r.body}`);
      assert.equal(new Set(urls).size, urls.length, 'every url handed out is distinct');
    });
  });

  test(`${store}: every url handed out is distinct under concurrent load${store === 'redis' ? ' (two instances, one redis)' : ''}`, async () => {
    const size = 8;
    const instances = store === 'redis' ? 2 : 1;
    const config = cfg(storeConfig(), poolConfig({ size }), { workers: 2 });
    await withGateways(Array.from({ length: instances }, () => ({ mock, config })), async (gws) => {
      for (const gw of gws) await waitDepth(gw, size);
      const perInstance = instances === 2 ? 30 : 48;
      const replies = await Promise.all(gws.map((gw, gi) => parallel(8, Array.from({ length: perInstance },
        (_, i) => () => call(gw, { app: (i + gi) % 2 ? APPS.token : APPS.sig, method: i % 2 ? 'POST' : 'GET' })))));
      const all = replies.flat();
      const urls = [];
      for (const r of all) {
        const j = assertApiReply(r, 'concurrent request');
        assert.equal(j.code, 0, `every request is served (pool or upstream): ${r.body}`);
        urls.push(j.url);
      }
      const seen = new Map();
      const dups = [];
      for (const u of urls) {
        if (seen.has(u)) dups.push(u);
        seen.set(u, true);
      }
      assert.deepEqual(dups, [], `no url handed out twice (${urls.length} replies)`);
      const hits = await metricSum(gws, 'capgate_pool_hits_total');
      assert.ok(hits >= size, `the full pool served at least ${size} of the requests: ${hits} hits`);
      assert.ok(hits <= urls.length, `hits ${hits} <= requests ${urls.length}`);
      const issued = (await iframeCalls(mock, { code: 0 })).length;
      assert.ok(issued >= urls.length, `the mock issued every url handed out (${issued} successful calls, ${urls.length} urls)`);
      for (const u of urls) {
        const s = await solve(mock, u);
        assert.equal(s.status, 200, `${u} is a url the mock issued and nobody solved: ${s.status} ${s.body}`);
      }
    });
  });

  test(`${store}: an entry older than ttl_s is never served; the request goes upstream; expired discards are counted`, async () => {
    const ttl = 2;
    await withGateways([{ mock, config: cfg(storeConfig(), poolConfig({ size: 3, ttl_s: ttl })) }], async ([gw]) => {
      await waitDepth(gw, 3);
      const fullAt = Date.now();
      await addFault(mock, FAULT_6000); // refill cannot replace the entries that age out
      const m0 = await gw.metrics();
      assert.ok(m0.has('capgate_pool_discarded_expired_total'), 'capgate_pool_discarded_expired_total on /metrics');
      const discarded0 = m0.get('capgate_pool_discarded_expired_total');
      const hits0 = m0.get('capgate_pool_hits_total');
      await sleep(Math.max(0, fullAt + ttl * 1000 + 1000 - Date.now()));
      const before = (await iframeCalls(mock)).length;
      const r = await call(gw);
      const j = assertApiReply(r, 'matching request after the ttl');
      assert.notEqual(j.code, 0, `an expired url is never served: ${r.body}`);
      assert.equal(j.code, 6000, `the request went upstream and got the fault's reply: ${r.body}`);
      assert.ok((await iframeCalls(mock)).length > before, 'the request reached the mock (journal)');
      await waitFor(async () => (await gw.metrics()).get('capgate_pool_discarded_expired_total') > discarded0,
        { timeoutMs: 5000, intervalMs: 100, what: 'capgate_pool_discarded_expired_total to rise' });
      assert.equal((await gw.metrics()).get('capgate_pool_hits_total'), hits0, 'no hit after the ttl');
    });
  });

  test(`${store}: a request with any per-user field, or not matching a profile exactly, bypasses the pool`, async () => {
    await withGateways([{ mock, config: cfg(storeConfig(), poolConfig({ size: 2 })) }], async ([gw]) => {
      await waitDepth(gw, 2);
      const hits0 = (await gw.metrics()).get('capgate_pool_hits_total');
      for (const [field, value] of Object.entries(PER_USER_FIELDS)) {
        const r = await call(gw, { params: { ...PROFILE_PARAMS, [field]: value } });
        assert.equal(assertApiReply(r, field).code, 0, `${field}: ${r.body}`);
        const seen = (await iframeCalls(mock)).filter((e) => e.params?.[field] === value);
        assert.equal(seen.length, 1, `the request with ${field} reached the mock once: ${JSON.stringify(seen)}`);
        assert.equal((await gw.metrics()).get('capgate_pool_hits_total'), hits0, `a request with ${field} is not a pool hit`);
      }
      // Not an exact match: no sceneId; another captchaType.
      const { sceneId, ...noScene } = PROFILE_PARAMS;
      assert.equal(sceneId, '8');
      for (const [what, params, probe] of [
        ['no sceneId', noScene, (e) => e.params?.captchaType === '9' && e.params?.sceneId === undefined],
        ['captchaType 8', { ...PROFILE_PARAMS, captchaType: '8' }, (e) => e.params?.captchaType === '8'],
      ]) {
        const r = await call(gw, { params });
        assert.equal(assertApiReply(r, what).code, 0, `${what}: ${r.body}`);
        assert.equal((await iframeCalls(mock)).filter(probe).length, 1, `${what}: the request reached the mock`);
      }
      assert.equal((await gw.metrics()).get('capgate_pool_hits_total'), hits0, 'none of them was a pool hit');
      // The pool was there all along: an exact match is a hit.
      const r = await call(gw);
      assert.equal(assertApiReply(r).code, 0, r.body);
      assert.equal((await gw.metrics()).get('capgate_pool_hits_total'), hits0 + 1, 'an exact match is a hit');
    });
  });

  test(`${store}: an empty pool falls through to a normal upstream call (code 0 from upstream)`, async () => {
    const size = 2;
    const config = cfg(storeConfig(), poolConfig({ size }), { upstream: { timeout_ms: 5000 } });
    await withGateways([{ mock, config }], async ([gw]) => {
      await waitDepth(gw, size);
      // Every CaptchaIframeQuery now takes a second: refill cannot keep up with the requests below.
      await addFault(mock, { action: 'CaptchaIframeQuery', delay_ms: 1000 });
      const m0 = await gw.metrics();
      const hits0 = m0.get('capgate_pool_hits_total');
      const misses0 = m0.get('capgate_pool_misses_total');
      const drained = [];
      for (let i = 0; i < size; i++) drained.push(await call(gw));
      for (const r of drained) assert.equal(assertApiReply(r, 'drain').code, 0, r.body);
      assert.equal((await gw.metrics()).get('capgate_pool_hits_total'), hits0 + size, 'the pool served the first requests');
      const r = await call(gw);
      const j = assertApiReply(r, 'request on the empty pool');
      assert.equal(j.code, 0, `an empty pool never errors: ${r.body}`);
      assert.match(j.url, /asig=/);
      assert.ok(!drained.some((d) => d.json.url === j.url), 'a fresh url');
      assert.ok(r.ms >= 500, `the reply waited for the (delayed) upstream call: ${r.ms} ms`);
      const m1 = await gw.metrics();
      assert.equal(m1.get('capgate_pool_hits_total'), hits0 + size, 'the request on the empty pool is not a hit');
      assert.ok(m1.get('capgate_pool_misses_total') > misses0, 'capgate_pool_misses_total rises');
      const s = await solve(mock, j.url);
      assert.equal(s.status, 200, `the mock issued ${j.url}: ${s.body}`);
    });
  });

  test(`${store}: refill spends tokens from the global limit only`, async () => {
    const size = 4;
    const limits = [
      { name: 'scene', businessId: PROFILE.businessId, sceneId: PROFILE.sceneId, rate: 1, period_s: 600, burst: 3 },
      { name: 'global', scope: 'global', rate: 1, period_s: 600, burst: 40 },
    ];
    await withGateways([{ mock, config: cfg(storeConfig(), poolConfig({ size }), { limits }) }], async ([gw]) => {
      await waitDepth(gw, size, { what: `capgate_pool_depth >= ${size} (a refill charged to the 'scene' rule, burst 3, would never get there)` });
      const refills = (await iframeCalls(mock)).length;
      assert.ok(refills >= size, `refill calls: ${refills}`);
      // Only the global rule applies to businessId 99; a uid keeps it out of the pool.
      const probe = await call(gw, { params: { ...PROFILE_PARAMS, businessId: '99', uid: 'probe' } });
      assert.equal(assertApiReply(probe, 'probe').code, 0, probe.body);
      const rl = parseRateLimitHeader(probe.headers.ratelimit);
      assert.equal(rl.length, 1, `RateLimit: ${probe.headers.ratelimit}`);
      assert.equal(rl[0].name, 'global', `RateLimit names the global bucket: ${probe.headers.ratelimit}`);
      // 40 - refills (refill) - 1 (this request); one more allowed for rounding up of a partial token.
      assert.ok(rl[0].r >= 40 - refills - 1 && rl[0].r <= 40 - refills,
        `the global bucket shows the ${refills} refill calls spent: ${probe.headers.ratelimit}`);
      // The scene rule still admits its full burst of 3 (pool hits or not), then refuses.
      const rs = [];
      for (let i = 0; i < 4; i++) rs.push(await call(gw));
      const codes = rs.map((r) => assertApiReply(r, 'scene').code);
      assert.deepEqual(codes, [0, 0, 0, 4400], `the scene rule admits its whole burst, then refuses: ${rs.map((r) => r.body).join('\n')}`);
      const refused = parseRateLimitHeader(rs[3].headers.ratelimit);
      assert.equal(refused[0]?.name, 'scene', `the 4400 names the scene rule: ${rs[3].headers.ratelimit}`);
      assert.ok((await gw.metrics()).get('capgate_pool_hits_total') >= 1, 'the admitted requests were served from the pool');
    });
  });

  test(`${store}: pool hits are audited (decision pool) and counted (/metrics, /admin/stats)`, async () => {
    const size = 3;
    const config = cfg(storeConfig(), poolConfig({ size }), { metrics: { flush_ms: 100 } });
    await withGateways([{ mock, config }], async ([gw]) => {
      await waitDepth(gw, size);
      await addFault(mock, FAULT_6000); // replies with code 0 below are hits, and refill adds nothing
      const urls = [];
      for (let i = 0; i < size; i++) {
        const r = await call(gw, { app: i % 2 ? APPS.token : APPS.sig });
        assert.equal(assertApiReply(r).code, 0, r.body);
        urls.push(r.json.url);
      }
      // one forwarded request (a uid keeps it out of the pool) and one denied one
      const fwd = await call(gw, { params: { ...PROFILE_PARAMS, uid: 'audit-user' } });
      assert.equal(assertApiReply(fwd).code, 6000, fwd.body);
      const denied = await call(gw, { app: APPS.limited });
      assert.equal(assertApiReply(denied).code, 4300, `businessId 7 is not allowed for limited-app: ${denied.body}`);

      const m = await gw.metrics();
      assert.equal(m.get('capgate_pool_hits_total'), size, 'capgate_pool_hits_total');
      assert.equal(m.get('capgate_requests_total', { decision: 'pool' }), size, 'capgate_requests_total{decision="pool"}');
      assert.ok(m.has('capgate_pool_depth'), 'capgate_pool_depth');
      assert.ok(m.has('capgate_pool_misses_total'), 'capgate_pool_misses_total');

      const recs = await waitAudit(gw, 'pool', size);
      await sleep(200);
      const again = await auditRecords(gw, 'decision=pool');
      assert.equal(again.length, size, `audit records with decision pool equal the hits: ${JSON.stringify(again)}`);
      for (const rec of recs) {
        assert.equal(rec.decision, 'pool');
        assert.equal(Number(rec.code), 0, JSON.stringify(rec));
        assert.equal(String(rec.businessId), '7', JSON.stringify(rec));
        assert.equal(String(rec.sceneId), '8', JSON.stringify(rec));
        assert.equal(rec.action, 'CaptchaIframeQuery');
        assert.ok([APPS.sig.name, APPS.token.name].includes(rec.app), JSON.stringify(rec));
        const text = JSON.stringify(rec);
        for (const u of urls) assert.ok(!text.includes(u), 'the url is never stored in the audit');
      }
      assert.deepEqual(recs.map((x) => x.app).sort(), [APPS.sig.name, APPS.sig.name, APPS.token.name].sort());
      const byApp = await auditRecords(gw, `decision=pool&app=${APPS.token.name}`);
      assert.equal(byApp.length, 1, 'decision and app filters combine');

      const totals = await waitStats(gw, 'pool', size);
      assert.equal(totals.pool, size, `/admin/stats totals.pool: ${JSON.stringify(totals)}`);
      const after = await waitStats(gw, 'requests', size + 2);
      assert.equal(after.pool, size);
      assert.equal(after.denied, 1, JSON.stringify(after));
    });
  });
}

// ---- the Idempotency-Key suite, run by idem_memory.test.mjs and idem_redis.test.mjs ----

/** A fresh uid: a request's business params that the journal can be searched by. */
let uidSeq = 0;
export const freshUid = (tag = 'idem') => `${tag}-${process.pid}-${++uidSeq}`;
export const replayed = (r) => String(r.headers['idempotent-replayed'] ?? '').toLowerCase() === 'true';
/** The mock's entries whose uid is uid. */
export async function callsFor(mock, uid) {
  return (await journal(mock)).filter((e) => e.params?.uid === uid);
}

/**
 * Defines the Idempotency-Key tests against store ('memory' or 'redis'); returns a context
 * ({ mock, redis, storeConfig }) whose fields are set once before() ran, for extra tests.
 */
export function idemSuite(store) {
  const ctx = { mock: null, redis: null, storeConfig: null };
  let seq = 0;
  before(async () => {
    ctx.mock = await startMock({ tls: true });
    if (store === 'redis') ctx.redis = await startRedis();
  });
  after(async () => {
    await ctx.mock?.stop();
    await ctx.redis?.stop();
  });
  beforeEach(async () => {
    await resetMock(ctx.mock);
  });
  ctx.storeConfig = () => {
    if (store !== 'redis') return {};
    const prefix = `it${process.pid}x${++seq}:`;
    return { redis: { url: ctx.redis.url, key_prefix: prefix, timeout_ms: 3000 }, audit: { stream: `${prefix}audit` } };
  };
  const one = (config) => [{ mock: ctx.mock, config: cfg(ctx.storeConfig(), config) }];
  const call = (gw, key, opts = {}) => gwCall(gw, {
    timeoutMs: 8000, ...opts, headers: { ...(key === undefined ? {} : { 'idempotency-key': key }), ...(opts.headers || {}) },
  });

  test(`${store}: a repeat gets the identical body with Idempotent-Replayed: true, no upstream call, no token spent`, async () => {
    const limits = [{ name: 'per-app', scope: 'app', rate: 1, period_s: 600, burst: 2 }];
    await withGateways(one({ limits, metrics: { flush_ms: 100 } }), async ([gw]) => {
      const key = idemKey('replay');
      const uid = freshUid();
      const params = { ...SEED_PARAMS, uid };
      const first = await call(gw, key, { params });
      assert.equal(assertApiReply(first, 'first').code, 0, first.body);
      assert.ok(!replayed(first), `the first reply is not a replay: ${JSON.stringify(first.headers)}`);
      for (let i = 0; i < 5; i++) {
        const again = await call(gw, key, { params, method: i % 2 ? 'POST' : 'GET' });
        assert.equal(again.status, first.status);
        assert.equal(again.body, first.body, `repeat ${i + 1}: the identical body`);
        assert.ok(replayed(again), `repeat ${i + 1}: Idempotent-Replayed: true; headers ${JSON.stringify(again.headers)}`);
      }
      assert.equal((await callsFor(ctx.mock, uid)).length, 1, 'one upstream call for six requests');
      // The app's bucket (burst 2) spent one token on the first request: one more is admitted.
      const second = await call(gw, undefined, { params: { ...SEED_PARAMS, uid: freshUid() } });
      assert.equal(assertApiReply(second, 'second token').code, 0, `the 5 replays spent no token: ${second.body}`);
      const third = await call(gw, undefined, { params: { ...SEED_PARAMS, uid: freshUid() } });
      assert.equal(assertApiReply(third, 'third').code, 4400, `burst 2 is now spent: ${third.body}`);
      // A replay needs no token, even with the bucket empty.
      const late = await call(gw, key, { params });
      assert.equal(late.body, first.body, `a replay with the bucket empty: ${late.body}`);
      assert.ok(replayed(late));
      assert.equal((await callsFor(ctx.mock, uid)).length, 1);

      const recs = await waitAudit(gw, 'replayed', 6);
      assert.equal(recs.length, 6, 'every replay is audited as replayed');
      for (const rec of recs) assert.equal(rec.app, APPS.sig.name, JSON.stringify(rec));
      const m = await gw.metrics();
      assert.equal(m.get('capgate_requests_total', { decision: 'replayed' }), 6, 'capgate_requests_total{decision="replayed"}');
      const totals = await waitStats(gw, 'replayed', 6);
      assert.equal(totals.replayed, 6, JSON.stringify(totals));
    });
  });

  test(`${store}: a concurrent duplicate waits for the first request's reply (one upstream call)`, async () => {
    await withGateways(one({ upstream: { timeout_ms: 5000 } }), async ([gw]) => {
      await addFault(ctx.mock, { action: 'CaptchaIframeQuery', delay_ms: 500 });
      const key = idemKey('concurrent');
      const uid = freshUid();
      const params = { ...SEED_PARAMS, uid };
      const [a, b] = await Promise.all([call(gw, key, { params }), call(gw, key, { params, app: APPS.sig, method: 'POST' })]);
      assert.equal(assertApiReply(a, 'a').code, 0, a.body);
      assert.equal(assertApiReply(b, 'b').code, 0, b.body);
      assert.equal(a.body, b.body, 'both get the same body');
      assert.equal((await callsFor(ctx.mock, uid)).length, 1, 'the mock saw one call');
      assert.equal([a, b].filter(replayed).length, 1, `exactly one of the two is the replay: ${JSON.stringify([a.headers, b.headers])}`);
    });
  });

  test(`${store}: the same key with different params is refused with 4000 saying so`, async () => {
    await withGateways(one({}), async ([gw]) => {
      const key = idemKey('mismatch');
      const uid = freshUid();
      const params = { ...SEED_PARAMS, uid };
      const first = await call(gw, key, { params });
      assert.equal(assertApiReply(first).code, 0, first.body);
      for (const other of [{ ...params, captchaType: '2' }, { ...params, uid: `${uid}-other` }, { ...params, businessId: '1' }]) {
        const r = await call(gw, key, { params: other });
        const j = assertApiReply(r, 'mismatch');
        assert.equal(j.code, 4000, `same key, different params: ${r.body}`);
        assert.equal(j.codeDesc, 'InvalidParameter');
        assert.match(j.message, /differ/i, `the message says the params differ: ${j.message}`);
        assert.ok(!replayed(r), 'not a replay');
      }
      assert.equal((await callsFor(ctx.mock, uid)).length, 1, 'the mismatches never reached upstream');
      assert.equal((await callsFor(ctx.mock, `${uid}-other`)).length, 0);
      const again = await call(gw, key, { params });
      assert.equal(again.body, first.body, 'the stored reply is still there');
      assert.ok(replayed(again));
    });
  });

  test(`${store}: after ttl_s the same key makes a new upstream call`, async () => {
    await withGateways(one({ idempotency: { ttl_s: 1 } }), async ([gw]) => {
      const key = idemKey('expiry');
      const uid = freshUid();
      const params = { ...SEED_PARAMS, uid };
      const first = await call(gw, key, { params });
      assert.equal(assertApiReply(first).code, 0, first.body);
      const t0 = Date.now();
      const soon = await call(gw, key, { params });
      if (Date.now() - t0 < 800) {
        assert.ok(replayed(soon), 'a repeat within the ttl is replayed');
        assert.equal(soon.body, first.body);
      }
      await sleep(1500);
      const later = await call(gw, key, { params });
      assert.equal(assertApiReply(later).code, 0, later.body);
      assert.ok(!replayed(later), `past the ttl: not a replay: ${JSON.stringify(later.headers)}`);
      assert.notEqual(later.json.url, first.json.url, 'a new url');
      assert.equal((await callsFor(ctx.mock, uid)).length, 2, 'a new upstream call');
    });
  });

  test(`${store}: keys are scoped per app: two apps with the same key both reach upstream`, async () => {
    await withGateways(one({}), async ([gw]) => {
      const key = idemKey('scope');
      const uid = freshUid();
      const params = { ...SEED_PARAMS, uid };
      const bySig = await call(gw, key, { params, app: APPS.sig });
      const byToken = await call(gw, key, { params, app: APPS.token });
      for (const r of [bySig, byToken]) {
        assert.equal(assertApiReply(r).code, 0, r.body);
        assert.ok(!replayed(r), `another app's key is not a repeat: ${JSON.stringify(r.headers)}`);
      }
      assert.notEqual(bySig.json.url, byToken.json.url);
      assert.equal((await callsFor(ctx.mock, uid)).length, 2, 'both reached upstream');
      const sigAgain = await call(gw, key, { params, app: APPS.sig });
      const tokenAgain = await call(gw, key, { params, app: APPS.token });
      assert.equal(sigAgain.body, bySig.body, 'each app replays its own reply');
      assert.equal(tokenAgain.body, byToken.body, 'each app replays its own reply');
      assert.ok(replayed(sigAgain) && replayed(tokenAgain));
      assert.equal((await callsFor(ctx.mock, uid)).length, 2);
    });
  });

  test(`${store}: gateway errors (4100, 4300, 4400) are not stored: the fixed request with the same key proceeds`, async () => {
    const limits = [{ name: 'tight', businessId: 5, sceneId: 5, rate: 1, period_s: 600, burst: 1 }];
    await withGateways(one({ limits }), async ([gw]) => {
      // 4300: limited-app may use businessIds 1 and 2 only.
      const k1 = idemKey('e4300');
      const uid1 = freshUid();
      const denied = await call(gw, k1, { app: APPS.limited, params: { ...SEED_PARAMS, uid: uid1, businessId: '9' } });
      assert.equal(assertApiReply(denied).code, 4300, denied.body);
      const fixed = await call(gw, k1, { app: APPS.limited, params: { ...SEED_PARAMS, uid: uid1, businessId: '1' } });
      assert.equal(assertApiReply(fixed).code, 0, `the 4300 was not stored: ${fixed.body}`);
      assert.ok(!replayed(fixed));
      assert.equal((await callsFor(ctx.mock, uid1)).length, 1);
      const rep = await call(gw, k1, { app: APPS.limited, params: { ...SEED_PARAMS, uid: uid1, businessId: '1' } });
      assert.equal(rep.body, fixed.body, 'the successful reply is the one stored');
      assert.ok(replayed(rep));

      // 4100: a wrong signature.
      const k2 = idemKey('e4100');
      const uid2 = freshUid();
      const bad = await call(gw, k2, { secretKey: 'not-the-key', params: { ...SEED_PARAMS, uid: uid2 } });
      assert.equal(assertApiReply(bad).code, 4100, bad.body);
      const good = await call(gw, k2, { params: { ...SEED_PARAMS, uid: uid2 } });
      assert.equal(assertApiReply(good).code, 0, `the 4100 was not stored: ${good.body}`);
      assert.ok(!replayed(good));

      // 4400: the 5:5 bucket holds one token.
      const spend = await call(gw, undefined, { params: { ...SEED_PARAMS, uid: freshUid(), businessId: '5', sceneId: '5' } });
      assert.equal(assertApiReply(spend).code, 0, spend.body);
      const k3 = idemKey('e4400');
      const uid3 = freshUid();
      const limited = await call(gw, k3, { params: { ...SEED_PARAMS, uid: uid3, businessId: '5', sceneId: '5' } });
      assert.equal(assertApiReply(limited).code, 4400, limited.body);
      const moved = await call(gw, k3, { params: { ...SEED_PARAMS, uid: uid3, businessId: '6', sceneId: '5' } });
      assert.equal(assertApiReply(moved).code, 0, `the 4400 was not stored: ${moved.body}`);
      assert.ok(!replayed(moved));
      assert.equal((await callsFor(ctx.mock, uid3)).length, 1);
    });
  });

  test(`${store}: a bad Idempotency-Key (129 chars, non-printable) is 4000 naming the header`, async () => {
    await withGateways(one({}), async ([gw]) => {
      const uid = freshUid();
      const params = { ...SEED_PARAMS, uid };
      for (const [what, key] of [['129 characters', 'k'.repeat(129)], ['a tab inside', 'ab\tcd'],
        ['a non-ASCII byte', 'ab\u00e9cd']]) {
        for (const app of [APPS.sig, APPS.token]) {
          const r = await call(gw, key, { params, app });
          const j = assertApiReply(r, what);
          assert.equal(j.code, 4000, `${what} (${app.name}): ${r.body}`);
          assert.match(j.message, /Idempotency-Key/, `${what}: the message names the header: ${j.message}`);
        }
      }
      // Control bytes node's client refuses to send: over a raw socket (token app, GET).
      for (const [what, bytes] of [['a 0x01 byte', [0x61, 0x01, 0x62]], ['a DEL byte', [0x61, 0x7f, 0x62]]]) {
        const q = new URLSearchParams({ Action: 'CaptchaIframeQuery', ...params }).toString();
        const head = Buffer.from(`GET /v2/index.php?${q} HTTP/1.1\r\nHost: ${gw.host}\r\n`
          + `Authorization: Bearer ${APPS.token.token}\r\nConnection: close\r\nIdempotency-Key: `, 'latin1');
        const raw = await rawRequest(gw.port, Buffer.concat([head, Buffer.from(bytes), Buffer.from('\r\n\r\n')]));
        const r = parseRawResponse(raw.text);
        assert.ok(r, `${what}: an HTTP reply (${raw.how}): ${raw.text.slice(0, 200)}`);
        const j = assertApiReply(r, what);
        assert.equal(j.code, 4000, `${what}: ${r.body}`);
        assert.match(j.message, /Idempotency-Key/, `${what}: the message names the header: ${j.message}`);
      }
      assert.equal((await callsFor(ctx.mock, uid)).length, 0, 'nothing reached upstream');
      const max = await call(gw, 'k'.repeat(128), { params });
      assert.equal(assertApiReply(max, '128 characters').code, 0, `128 printable characters are a key: ${max.body}`);
      const printable = await call(gw, '!~az09-_.:/=+', { params: { ...params, uid: `${uid}-p` } });
      assert.equal(assertApiReply(printable, 'printable').code, 0, printable.body);
    });
  });

  return ctx;
}
