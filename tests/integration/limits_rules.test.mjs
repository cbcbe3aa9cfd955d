// limits_rules.test.mjs: rate-limit rules (docs/design.md "Rate limits") against a real
// redis-server and against the embedded memory store: every rule shape (exact, "*" on businessId
// and sceneId, absent params as "-", first match in file order, scope app, scope global), burst
// then refill with the 4400 reply's headers, atomicity across buckets (a refusal takes no token
// from the other buckets), shadow mode and counters kept across SIGHUP. Rules use long periods (1
// token per 60 s) wherever refill is not the point, so every count below is exact whatever the
// machine's speed.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMock, startRedis, waitFor, sleep, SEED_PARAMS } from './lib/harness.mjs';
import { startGateway, gwCall, baseApps, assertApiReply, APPS, parseRateLimitHeader } from './lib/gateway.mjs';
import { auditOf } from './lib/auditlog.mjs';
import { tokenBucketVerdicts } from './lib/load.mjs';

let mock;
let redis;
before(async () => {
  mock = await startMock({ tls: true });
  redis = await startRedis();
});
after(async () => {
  await mock?.stop();
  await redis?.stop();
});

const SLOW = { rate: 1, period_s: 60 }; // no refill within a test
let prefixSeq = 0;

/** Apps: the base ones plus a second token app (for per-app and global buckets). */
const appsWithExtra = () => [...baseApps(), { name: APPS.extra.name, auth: 'token', token_env: APPS.extra.env, business_ids: '*' }];

/** Config for a store: redis with a fresh key prefix (generous timeout so no test falls back to local buckets), or none. */
function storeConfig(store) {
  if (store !== 'redis') return { prefix: null, config: {} };
  const prefix = `lr${process.pid}t${++prefixSeq}:`;
  return { prefix, config: { redis: { url: redis.url, key_prefix: prefix, timeout_ms: 3000 }, on_store_error: 'deny' } };
}

/** Starts a gateway with limits on store, runs fn({gw, prefix}), stops it even on failure. */
async function withGateway(store, { limits, apps = appsWithExtra(), config = {} }, fn) {
  const sc = storeConfig(store);
  const gw = await startGateway({ mock, config: { ...sc.config, ...config, apps, limits } });
  try {
    await fn({ gw, prefix: sc.prefix });
  } finally {
    await gw.stop();
  }
}

/** Params for a call: the seed plus businessId/sceneId when given (null/undefined: absent). */
function params(bid, sid) {
  const p = { ...SEED_PARAMS };
  if (bid !== undefined && bid !== null) p.businessId = String(bid);
  if (sid !== undefined && sid !== null) p.sceneId = String(sid);
  return p;
}

/** n sequential token-app calls; returns their replies. */
async function calls(gw, n, { app = APPS.token, bid, sid } = {}) {
  const out = [];
  for (let i = 0; i < n; i++) {
    const r = await gwCall(gw, { app, params: params(bid, sid), timeoutMs: 5000 });
    assertApiReply(r, `call ${i + 1} (${app.name} ${bid ?? '-'}:${sid ?? '-'})`);
    out.push(r);
  }
  return out;
}
const codesOf = (rs) => rs.map((r) => r.json.code);
const bodies = (rs) => rs.map((r) => r.body.slice(0, 200)).join('\n');

async function expectCodes(gw, n, opts, expected, what) {
  const rs = await calls(gw, n, opts);
  assert.deepEqual(codesOf(rs), expected, `${what}: codes ${JSON.stringify(codesOf(rs))}, want ${JSON.stringify(expected)}\n${bodies(rs)}`);
  return rs;
}

/** Asserts r is a limited reply from rule (code 4400 LimitExceeded, headers naming the rule). */
function assertLimited(r, rule, { status = 200, q, w } = {}) {
  assert.equal(r.json.code, 4400, `want 4400: ${r.body}`);
  assert.equal(r.json.codeDesc, 'LimitExceeded', r.body);
  assert.equal(r.status, status, `HTTP status of a limited reply: ${r.status}`);
  const ra = r.headers['retry-after'];
  assert.match(String(ra), /^\d+$/, `Retry-After is whole seconds: ${ra}`);
  assert.ok(Number(ra) >= 1, `Retry-After >= 1: ${ra}`);
  const rl = parseRateLimitHeader(r.headers.ratelimit);
  assert.equal(rl.length, 1, `RateLimit names one bucket: ${r.headers.ratelimit}`);
  assert.equal(rl[0].name, rule, `RateLimit names the refusing rule ${rule}: ${r.headers.ratelimit}`);
  assert.equal(rl[0].r, 0, `RateLimit r=0 when refused: ${r.headers.ratelimit}`);
  assert.ok(Number.isInteger(rl[0].t) && rl[0].t >= 0, `RateLimit t: ${r.headers.ratelimit}`);
  const pol = parseRateLimitHeader(r.headers['ratelimit-policy']);
  const mine = pol.find((p) => p.name === rule);
  assert.ok(mine, `RateLimit-Policy names ${rule}: ${r.headers['ratelimit-policy']}`);
  if (q !== undefined) assert.equal(mine.q, q, `RateLimit-Policy q: ${r.headers['ratelimit-policy']}`);
  if (w !== undefined) assert.equal(mine.w, w, `RateLimit-Policy w: ${r.headers['ratelimit-policy']}`);
  return { pol, rl: rl[0] };
}

/** The rate-limit keys under prefix in redis, sorted. */
function rlKeys(prefix) {
  const out = redis.cli('--scan', '--pattern', `${prefix}rl:*`);
  return out ? out.split('\n').map((s) => s.trim()).filter(Boolean).sort() : [];
}

/** A key's type, value and PTTL (string: GET; hash: HGETALL). */
function keyState(key) {
  const type = redis.cli('TYPE', key);
  let value = null;
  if (type === 'string') value = redis.cli('GET', key);
  else if (type === 'hash') value = redis.cli('HGETALL', key);
  else if (type !== 'none') value = `<${type}>`;
  return { type, value, pttl: Number(redis.cli('PTTL', key)) };
}

async function reloadAndWait(gw, newConfig) {
  const before = (await gw.metrics()).get('capgate_config_reloads_total', { result: 'success' });
  gw.writeConfig(newConfig);
  gw.reload();
  await waitFor(async () => (await gw.metrics()).get('capgate_config_reloads_total', { result: 'success' }) > before,
    { timeoutMs: 5000, intervalMs: 50, what: 'capgate_config_reloads_total{result="success"} to grow after SIGHUP' });
}

for (const store of ['redis', 'memory']) {
  describe(`${store} store`, () => {
    test('exact (businessId, sceneId): only that pair is limited', async () => {
      await withGateway(store, { limits: [{ name: 'exact', businessId: 1, sceneId: 2, ...SLOW, burst: 2 }] }, async ({ gw, prefix }) => {
        const rs = await expectCodes(gw, 3, { bid: 1, sid: 2 }, [0, 0, 4400], '1:2');
        assertLimited(rs[2], 'exact', { q: 2, w: 60 });
        await expectCodes(gw, 3, { bid: 1, sid: 3 }, [0, 0, 0], '1:3 (no rule)');
        await expectCodes(gw, 3, { bid: 2, sid: 2 }, [0, 0, 0], '2:2 (no rule)');
        await expectCodes(gw, 3, {}, [0, 0, 0], 'absent (no rule)');
        if (prefix) assert.deepEqual(rlKeys(prefix), [`${prefix}rl:exact:1:2`]);
      });
    });

    test('"*" businessId: each distinct businessId gets its own bucket', async () => {
      await withGateway(store, { limits: [{ name: 'anybiz', businessId: '*', sceneId: 5, ...SLOW, burst: 2 }] }, async ({ gw, prefix }) => {
        const a = await expectCodes(gw, 3, { bid: 10, sid: 5 }, [0, 0, 4400], '10:5');
        assertLimited(a[2], 'anybiz', { q: 2, w: 60 });
        await expectCodes(gw, 3, { bid: 11, sid: 5 }, [0, 0, 4400], '11:5 (its own bucket)');
        await expectCodes(gw, 3, { bid: 10, sid: 6 }, [0, 0, 0], '10:6 (sceneId not matched)');
        await expectCodes(gw, 3, { sid: 5 }, [0, 0, 4400], 'absent businessId, sceneId 5 (bucket -)');
        if (prefix) {
          assert.deepEqual(rlKeys(prefix), [`${prefix}rl:anybiz:-:5`, `${prefix}rl:anybiz:10:5`, `${prefix}rl:anybiz:11:5`].sort());
        }
      });
    });

    test('"*" sceneId: each distinct sceneId gets its own bucket', async () => {
      await withGateway(store, { limits: [{ name: 'anyscene', businessId: 7, sceneId: '*', ...SLOW, burst: 2 }] }, async ({ gw, prefix }) => {
        const a = await expectCodes(gw, 3, { bid: 7, sid: 1 }, [0, 0, 4400], '7:1');
        assertLimited(a[2], 'anyscene', { q: 2, w: 60 });
        await expectCodes(gw, 3, { bid: 7, sid: 2 }, [0, 0, 4400], '7:2 (its own bucket)');
        await expectCodes(gw, 3, { bid: 7 }, [0, 0, 4400], '7:absent (bucket -)');
        await expectCodes(gw, 3, { bid: 8, sid: 1 }, [0, 0, 0], '8:1 (businessId not matched)');
        if (prefix) {
          assert.deepEqual(rlKeys(prefix), [`${prefix}rl:anyscene:7:1`, `${prefix}rl:anyscene:7:2`, `${prefix}rl:anyscene:7:-`].sort());
        }
      });
    });

    test('absent businessId/sceneId bucket as "-" under "*" rules', async () => {
      await withGateway(store, { limits: [{ name: 'any', ...SLOW, burst: 2 }] }, async ({ gw, prefix }) => {
        const a = await expectCodes(gw, 3, {}, [0, 0, 4400], 'both absent');
        assertLimited(a[2], 'any', { q: 2, w: 60 });
        await expectCodes(gw, 3, { bid: 3 }, [0, 0, 4400], '3:-');
        await expectCodes(gw, 3, { sid: 4 }, [0, 0, 4400], '-:4');
        await expectCodes(gw, 3, { bid: 3, sid: 4 }, [0, 0, 4400], '3:4');
        if (prefix) {
          assert.deepEqual(rlKeys(prefix), ['-:-', '3:-', '-:4', '3:4'].map((s) => `${prefix}rl:any:${s}`).sort());
        }
      });
    });

    test('first matching params rule in file order wins; a later matching rule does not apply', async () => {
      const limits = [
        { name: 'first', businessId: 1, sceneId: 1, ...SLOW, burst: 3 },
        { name: 'second', businessId: '*', sceneId: '*', ...SLOW, burst: 1 },
      ];
      await withGateway(store, { limits }, async ({ gw, prefix }) => {
        const a = await expectCodes(gw, 4, { bid: 1, sid: 1 }, [0, 0, 0, 4400], '1:1 (rule first, burst 3; second would allow 1)');
        const { pol } = assertLimited(a[3], 'first', { q: 3, w: 60 });
        assert.ok(!pol.some((p) => p.name === 'second'), `second is not among the policies: ${a[3].headers['ratelimit-policy']}`);
        const b = await expectCodes(gw, 2, { bid: 1, sid: 2 }, [0, 4400], '1:2 (rule second)');
        assertLimited(b[1], 'second', { q: 1, w: 60 });
        if (prefix) assert.deepEqual(rlKeys(prefix), [`${prefix}rl:first:1:1`, `${prefix}rl:second:1:2`].sort());
      });
    });

    test('scope app: each app has its own allowance', async () => {
      await withGateway(store, { limits: [{ name: 'perapp', scope: 'app', ...SLOW, burst: 2 }] }, async ({ gw, prefix }) => {
        const a = await expectCodes(gw, 3, { app: APPS.token }, [0, 0, 4400], 'token-app');
        assertLimited(a[2], 'perapp', { q: 2, w: 60 });
        await expectCodes(gw, 3, { app: APPS.extra, bid: 4, sid: 4 }, [0, 0, 4400], 'extra-app (its own bucket, any params)');
        await expectCodes(gw, 1, { app: APPS.token, bid: 9, sid: 9 }, [4400], 'token-app with other params: same bucket');
        if (prefix) {
          assert.deepEqual(rlKeys(prefix), [`${prefix}rl:perapp:app:${APPS.token.name}`, `${prefix}rl:perapp:app:${APPS.extra.name}`].sort());
        }
      });
    });

    test('scope global: one bucket shared by all apps and params', async () => {
      await withGateway(store, { limits: [{ name: 'all', scope: 'global', ...SLOW, burst: 3 }] }, async ({ gw, prefix }) => {
        await expectCodes(gw, 2, { app: APPS.token, bid: 1, sid: 1 }, [0, 0], 'token-app');
        const b = await expectCodes(gw, 2, { app: APPS.extra, bid: 2, sid: 2 }, [0, 4400], 'extra-app shares the bucket');
        assertLimited(b[1], 'all', { q: 3, w: 60 });
        await expectCodes(gw, 1, { app: APPS.token }, [4400], 'token-app again');
        if (prefix) assert.deepEqual(rlKeys(prefix), [`${prefix}rl:all:global`]);
      });
    });

    // redis in compat mode (HTTP 200), memory in semantic mode (HTTP 429).
    const semantic = store === 'memory';
    test(`burst then refill; the 4400 reply has Retry-After, RateLimit-Policy, RateLimit (${semantic ? 'semantic: 429' : 'compat: 200'})`, async () => {
      const limits = [{ name: 'refill', businessId: 9, sceneId: 9, rate: 1, period_s: 2, burst: 3 }];
      await withGateway(store, { limits, config: { http_errors: semantic ? 'semantic' : 'compat' } }, async ({ gw }) => {
        // A burst of 3 at once, then, one emission interval (2 s) later, exactly one more token.
        // What "at once" and "later" were is read from the gateway's audit records (arrival
        // times), and the codes must be what a bucket of that rule gives at those times: on a
        // loaded machine the client's four calls may spread or its sleep stretch.
        const a = await calls(gw, 4, { bid: 9, sid: 9 });
        await sleep(2200);
        const b = await calls(gw, 2, { bid: 9, sid: 9 });
        const all = [...a, ...b];
        const times = (await auditOf(gw, all)).map((rec) => rec.tsMs * 1000);
        const want = tokenBucketVerdicts(times, { rate: 1, periodS: 2, burst: 3 }).map((ok) => (ok ? 0 : 4400));
        const at = times.map((t) => `${((t - times[0]) / 1000).toFixed(0)} ms`).join(', ');
        assert.deepEqual(codesOf(all), want, `codes ${JSON.stringify(codesOf(all))} for arrivals at ${at}; a bucket of 3 refilled every 2 s gives ${JSON.stringify(want)}\n${bodies(all)}`);
        const refused = all.filter((r) => r.json.code === 4400);
        assert.ok(refused.length >= 1, `something was refused: arrivals at ${at}`);
        const { rl } = assertLimited(refused[0], 'refill', { status: semantic ? 429 : 200, q: 3, w: 2 });
        assert.ok(rl.t >= 1, `RateLimit t (seconds until full) >= 1: ${refused[0].headers.ratelimit}`);
        assert.ok(Number(refused[0].headers['retry-after']) <= 2, `Retry-After within one emission interval (2 s): ${refused[0].headers['retry-after']}`);
        for (const r of refused.slice(1)) assertLimited(r, 'refill', { status: semantic ? 429 : 200, q: 3, w: 2 });
      });
    });

    test('atomicity: a refusal by the global bucket takes no token from the params bucket', async () => {
      const P = { name: 'params5', businessId: '*', sceneId: '*', ...SLOW, burst: 5 };
      const G = { name: 'global3', scope: 'global', ...SLOW, burst: 3 };
      await withGateway(store, { limits: [P, G] }, async ({ gw, prefix }) => {
        await expectCodes(gw, 3, { bid: 1, sid: 1 }, [0, 0, 0], 'within both buckets');
        const pKey = prefix && `${prefix}rl:params5:1:1`;
        const gKey = prefix && `${prefix}rl:global3:global`;
        const before = prefix && { p: keyState(pKey), g: keyState(gKey) };
        if (prefix) {
          assert.notEqual(before.p.type, 'none', `params bucket key ${pKey} exists; keys: ${rlKeys(prefix)}`);
          assert.notEqual(before.g.type, 'none', `global bucket key ${gKey} exists; keys: ${rlKeys(prefix)}`);
        }
        const refused = await expectCodes(gw, 4, { bid: 1, sid: 1 }, [4400, 4400, 4400, 4400], 'global exhausted');
        const { pol } = assertLimited(refused[0], 'global3', { q: 3, w: 60 });
        assert.ok(pol.some((p) => p.name === 'params5' && p.q === 5), `both policies listed: ${refused[0].headers['ratelimit-policy']}`);
        if (prefix) {
          const after = { p: keyState(pKey), g: keyState(gKey) };
          assert.equal(after.p.value, before.p.value, `params bucket ${pKey} unchanged by refusals`);
          assert.equal(after.g.value, before.g.value, `global bucket ${gKey} unchanged by refusals`);
          // A token taken would push the TAT (and its expiry) forward; the TTL may only have run down.
          if (before.p.pttl > 0) assert.ok(after.p.pttl <= before.p.pttl + 50, `params PTTL did not move forward: ${before.p.pttl} → ${after.p.pttl}`);
        }
        // Remove the global rule: the params bucket still holds its 2 tokens, no fewer.
        await reloadAndWait(gw, { ...gw.config, limits: [P] });
        const b = await expectCodes(gw, 3, { bid: 1, sid: 1 }, [0, 0, 4400], 'params bucket after the global rule is gone');
        assertLimited(b[2], 'params5', { q: 5, w: 60 });
      });
    });

    test('shadow rule never refuses; /metrics counts its shadow decisions', async () => {
      const limits = [{ name: 'shadowed', businessId: '*', sceneId: '*', ...SLOW, burst: 2, mode: 'shadow' }];
      await withGateway(store, { limits }, async ({ gw }) => {
        await expectCodes(gw, 6, { bid: 5, sid: 5 }, [0, 0, 0, 0, 0, 0], 'shadow never refuses');
        const shadowCount = (m) => {
          const viaDecisions = m.samples.filter((s) => s.name === 'capgate_limit_decisions_total' && s.labels.rule === 'shadowed'
            && /shadow/.test(s.labels.decision || '')).reduce((a, s) => a + s.value, 0);
          const viaRequests = m.get('capgate_requests_total', { decision: 'shadow_limited' });
          return { viaDecisions, viaRequests, hasDecisions: m.has('capgate_limit_decisions_total') };
        };
        let last;
        try {
          await waitFor(async () => {
            last = shadowCount(await gw.metrics());
            return last.viaDecisions === 4 || last.viaRequests === 4;
          }, { timeoutMs: 4000, intervalMs: 100, what: 'shadow decisions in /metrics' });
        } catch (e) {
          const m = await gw.metrics();
          const lines = m.text.split('\n').filter((l) => /limit|shadow/.test(l)).join('\n');
          assert.fail(`/metrics has no count of 4 shadow decisions (6 requests, burst 2): ${JSON.stringify(last)}\n${lines}`);
        }
        if (last.hasDecisions) assert.equal(last.viaDecisions, 4, `capgate_limit_decisions_total{rule="shadowed",decision=~shadow}: ${JSON.stringify(last)}`);
      });
    });

    test('SIGHUP with an unrelated change keeps counters: an exhausted bucket stays exhausted', async () => {
      const keep = { name: 'keep', businessId: '*', sceneId: '*', ...SLOW, burst: 2 };
      await withGateway(store, { limits: [keep], apps: baseApps() }, async ({ gw }) => {
        await expectCodes(gw, 3, {}, [0, 0, 4400], 'exhaust -:-');
        const extraBefore = await gwCall(gw, { app: APPS.extra, params: params(50) });
        assert.equal(assertApiReply(extraBefore, 'extra-app before reload').code, 4100, 'extra-app unknown before the reload');
        await reloadAndWait(gw, {
          ...gw.config,
          apps: appsWithExtra(),
          limits: [keep, { name: 'unrelated', businessId: 99, sceneId: 99, ...SLOW, burst: 1 }],
        });
        await expectCodes(gw, 1, { app: APPS.extra, bid: 50 }, [0], 'the reload applied (extra-app, fresh bucket 50:-)');
        const a = await expectCodes(gw, 2, {}, [4400, 4400], '-:- still exhausted after SIGHUP');
        assertLimited(a[0], 'keep', { q: 2, w: 60 });
      });
    });
  });
}
