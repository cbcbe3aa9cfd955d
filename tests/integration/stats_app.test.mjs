// stats_app.test.mjs: per-app limit rules ("app" on a rule) and per-app metrics, on both stores;
// /admin/stats app=, group=, fill=; and the partial answers of /admin/stats and /admin/audit while
// Redis is stopped (SIGSTOP) or gone, which must hold exactly what this process counted.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { startMock, startRedis, waitFor, SEED_PARAMS, CAPGATE_BIN } from './lib/harness.mjs';
import { startGateway, gwCall, APPS } from './lib/gateway.mjs';

const LIMITS = [
  // the token app's own rate, beside the per-app rule every app has
  { name: 'token-own', scope: 'app', app: APPS.token.name, rate: 3, period_s: 3600, burst: 3 },
  // a params rule for one app only: the limited app gets 1 request for businessId 2
  { name: 'limited-b2', app: APPS.limited.name, businessId: 2, rate: 1, period_s: 3600, burst: 1 },
  { name: 'per-app', scope: 'app', rate: 1000, period_s: 1 },
];

let mock;
before(async () => { mock = await startMock({ tls: true }); });
after(async () => { await mock?.stop(); });

const stats = async (gw, q) => {
  const r = await gw.admin(`/admin/stats${q}`);
  assert.equal(r.status, 200, `/admin/stats${q}: ${r.body}`);
  return r.json;
};

/** Traffic with a known outcome per app; returns what each app should count. */
async function sendTraffic(gwA, gwB) {
  const want = {
    [APPS.token.name]: { requests: 0, forwarded: 0, limited: 0 },
    [APPS.sig.name]: { requests: 0, forwarded: 0, limited: 0 },
    [APPS.limited.name]: { requests: 0, forwarded: 0, limited: 0 },
  };
  const count = (app, r, decision) => {
    want[app].requests++;
    want[app][decision]++;
  };
  // token app, no ids: 3 admitted by token-own, then refused by it
  for (let i = 0; i < 5; i++) {
    const r = await gwCall(gwA, { app: APPS.token });
    if (i < 3) {
      assert.equal(r.json?.code, 0, r.body);
      count(APPS.token.name, r, 'forwarded');
    } else {
      assert.equal(r.json?.code, 4400, r.body);
      assert.match(r.json.message, /token-own/);
      count(APPS.token.name, r, 'limited');
    }
  }
  // the signature app is not under token-own nor limited-b2
  for (let i = 0; i < 4; i++) {
    const r = await gwCall(gwB, { params: { ...SEED_PARAMS, businessId: '2', sceneId: '7' } });
    assert.equal(r.json?.code, 0, r.body);
    count(APPS.sig.name, r, 'forwarded');
  }
  // the limited app: businessId 2 once, then refused by its own params rule; businessId 1 free
  for (let i = 0; i < 3; i++) {
    const r = await gwCall(gwA, { app: APPS.limited, params: { ...SEED_PARAMS, businessId: '2', sceneId: '7' } });
    if (i === 0) {
      assert.equal(r.json?.code, 0, r.body);
      count(APPS.limited.name, r, 'forwarded');
    } else {
      assert.equal(r.json?.code, 4400, r.body);
      assert.match(r.json.message, /limited-b2/);
      count(APPS.limited.name, r, 'limited');
    }
  }
  const r = await gwCall(gwB, { app: APPS.limited, params: { ...SEED_PARAMS, businessId: '1', sceneId: '3' } });
  assert.equal(r.json?.code, 0, r.body);
  count(APPS.limited.name, r, 'forwarded');
  return want;
}

for (const mode of ['memory', 'redis']) {
  describe(`per-app rules and stats, ${mode} store`, () => {
    let redis;
    let gwA;
    let gwB;
    let want;
    let from;
    const total = () => Object.values(want).reduce((a, w) => a + w.requests, 0);
    before(async () => {
      const config = {
        limits: LIMITS,
        metrics: { flush_ms: 200, retention_s: 3600 },
        upstream: { timeout_ms: 10000 },
      };
      if (mode === 'redis') {
        redis = await startRedis();
        config.redis = { url: redis.url, key_prefix: 'isa:', timeout_ms: 300 };
      }
      gwA = await startGateway({ mock, config });
      // the memory store is per process: one gateway serves both roles
      gwB = mode === 'redis' ? await startGateway({ mock, config }) : gwA;
      from = Math.floor(Date.now() / 1000) - 60;
      want = await sendTraffic(gwA, gwB);
      const q = `?from=${from}&to=${Math.floor(Date.now() / 1000) + 120}`;
      await waitFor(async () => (await stats(gwA, q)).totals.requests === total(),
        { timeoutMs: 15000, what: `/admin/stats totals.requests == ${total()}` });
    });
    after(async () => {
      await gwA?.stop();
      if (gwB !== gwA) await gwB?.stop();
      await redis?.stop();
    });
    const range = () => `from=${from}&to=${Math.floor(Date.now() / 1000) + 120}`;

    test('group=app: one group per app with exactly its counts, and the same totals as by pair', async () => {
      const byApp = await stats(gwA, `?${range()}&group=app`);
      const byPair = await stats(gwA, `?${range()}`);
      assert.equal(byApp.group, 'app');
      assert.equal(byApp.partial, false);
      for (const [app, w] of Object.entries(want)) {
        const g = byApp.groups.find((x) => x.app === app);
        assert.ok(g, `group of ${app} in ${JSON.stringify(byApp.groups.map((x) => x.app))}`);
        for (const [k, v] of Object.entries(w)) assert.equal(g.totals[k], v, `${app} ${k}`);
      }
      assert.deepEqual(byApp.totals, byPair.totals, 'either dimension sums to the same totals');
      assert.equal(byApp.totals.requests, total());
    });

    test('app= selects one app; limit refusals of its own rule are counted', async () => {
      const one = await stats(gwB, `?${range()}&app=${APPS.token.name}`);
      assert.equal(one.groups.length, 1);
      assert.equal(one.totals.requests, 5);
      assert.equal(one.totals.limited, 2);
      assert.equal(one.totals['code:4400'], 2);
      assert.equal(one.totals['rule:token-own'], 2, 'refusals per rule');
      assert.equal(one.totals['rule:limited-b2'], undefined, 'another app\'s rule is not in it');
      const limitedApp = await stats(gwB, `?${range()}&app=${APPS.limited.name}`);
      assert.equal(limitedApp.totals['rule:limited-b2'], 2);
      const m = await gwA.metrics();
      assert.equal(m.get('capgate_limit_decisions_total', { rule: 'token-own', decision: 'limited' }), 2);
      assert.equal(m.get('capgate_limit_decisions_total', { rule: 'limited-b2', decision: 'limited' }), 2);
      const none = await stats(gwB, `?${range()}&app=nobody`);
      assert.equal(none.groups.length, 0);
      assert.equal(none.totals.requests, 0);
    });

    test('group=business and group=none; fill=none leaves out empty steps, fill=zero keeps every step', async () => {
      const biz = await stats(gwA, `?${range()}&group=business`);
      const b2 = biz.groups.find((g) => g.businessId === 2);
      assert.ok(b2 && !('sceneId' in b2), JSON.stringify(biz.groups));
      assert.equal(b2.totals.requests, 4 + 3);
      const none = await stats(gwA, `?${range()}&group=none&fill=none`);
      assert.deepEqual(none.groups, []);
      assert.equal(none.totals.requests, total());
      assert.ok(none.series.length >= 1 && none.series.length <= 3, JSON.stringify(none.series));
      assert.ok(none.series.every((e) => e.requests > 0));
      assert.equal(none.series.reduce((a, e) => a + e.requests, 0), total());
      const zero = await stats(gwA, `?${range()}&group=none`);
      assert.equal(zero.fill, 'zero');
      assert.equal(zero.series.length, Math.ceil((zero.to - zero.from) / zero.step));
      // every entry has the same keys (the fields non-zero in the totals), zeros included
      const keys = JSON.stringify(Object.keys(zero.series[0]));
      assert.ok(zero.series.every((e) => JSON.stringify(Object.keys(e)) === keys), keys);
      assert.equal(zero.series.reduce((a, e) => a + e.requests, 0), total());
    });

    test('bad or conflicting parameters are 400 naming them', async () => {
      for (const [q, name] of [['group=week', 'group'], ['fill=some', 'fill'], ['app=a%20b', 'app'],
        ['app=x&businessId=1', 'app'], ['group=app&sceneId=1', 'group=app'], ['app=x&app=y', 'app'],
        ['group=app&group=none', 'group'], ['colour=red', 'colour']]) {
        const r = await gwA.admin(`/admin/stats?${q}`);
        assert.equal(r.status, 400, `${q}: ${r.body}`);
        assert.match(r.json.error, new RegExp(name), q);
      }
    });

    if (mode === 'redis') {
      test('Redis stopped (SIGSTOP) or gone: partial answers with this process\'s own numbers', async () => {
        const q = `?${range()}&group=app`;
        const ownA = await stats(gwA, q); // whole, for comparison: both instances
        assert.equal(ownA.partial, false);
        const audits = (await gwA.admin('/admin/audit?limit=1000')).json;
        assert.equal(audits.partial, false);
        redis.proc.signal('SIGSTOP');
        try {
          // gwA served the token app and three of the limited app's requests; gwB the rest
          const a = await stats(gwA, q);
          assert.equal(a.partial, true, JSON.stringify(a).slice(0, 300));
          assert.match(a.reason, /redis/);
          assert.ok(a.since > 0 && a.since <= from + 60, `since ${a.since}`);
          assert.equal(a.totals.requests, 5 + 3);
          assert.equal(a.groups.find((g) => g.app === APPS.token.name)?.totals.limited, 2);
          assert.equal(a.groups.find((g) => g.app === APPS.sig.name), undefined);
          const b = await stats(gwB, q);
          assert.equal(b.partial, true);
          assert.equal(b.totals.requests, 4 + 1);
          // a request during the outage is counted by its process (limits: on_store_error local)
          const r = await gwCall(gwB, { params: { ...SEED_PARAMS, businessId: '5', sceneId: '5' } });
          assert.equal(r.json?.code, 0, r.body);
          await waitFor(async () => (await stats(gwB, q)).totals.requests === 6,
            { timeoutMs: 10000, what: 'the outage request in gwB\'s partial answer' });
          // the audit answers from the process's ring, the outage request included
          const au = await gwB.admin('/admin/audit?limit=1000');
          assert.equal(au.status, 200, au.body);
          assert.equal(au.json.partial, true);
          assert.match(au.json.reason, /redis/);
          const rid = r.headers['x-request-id'];
          await waitFor(async () => (await gwB.admin('/admin/audit?limit=1000')).json.records
            .some((x) => x.request_id === rid), { timeoutMs: 10000, what: 'the outage request in the ring' });
          const ring = (await gwB.admin('/admin/audit?limit=1000')).json.records;
          assert.equal(ring.length, 6, 'gwB\'s own records only');
          assert.ok(ring.every((x) => x.instance === ring[0].instance));
          const filtered = (await gwA.admin(`/admin/audit?app=${APPS.token.name}&decision=limited`)).json;
          assert.equal(filtered.partial, true);
          assert.equal(filtered.records.length, 2);
          // the command line says so, and shows this process's numbers
          const out = await new Promise((resolve) => execFile(CAPGATE_BIN,
            ['stats', '--group', 'app', '--admin', gwA.adminUrl], { encoding: 'utf8', timeout: 20000 },
            (err, stdout, stderr) => resolve({ code: err ? err.code : 0, stdout, stderr })));
          assert.equal(out.code, 0, out.stderr);
          assert.match(out.stderr, /partial answer: redis cannot be read/);
          assert.match(out.stdout, /PARTIAL/);
          assert.match(out.stdout, /^TOTAL +8 /m);
        } finally {
          redis.proc.signal('SIGCONT');
        }
        // back: whole answers again
        await waitFor(async () => (await stats(gwA, q)).partial === false, { timeoutMs: 10000, what: 'a whole answer after SIGCONT' });
        // Redis gone for good: still partial answers, not 503
        await redis.stop();
        const gone = await stats(gwA, q);
        assert.equal(gone.partial, true);
        assert.match(gone.reason, /redis/);
        assert.equal(gone.totals.requests, 5 + 3);
        const au = await gwA.admin('/admin/audit');
        assert.equal(au.status, 200);
        assert.equal(au.json.partial, true);
        assert.equal(au.json.records.length, 8);
      });
    }
  });
}
