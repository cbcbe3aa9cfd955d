// metrics_redis.test.mjs: two capgate instances share one redis-server; after flush_ms the
// per-(businessId, sceneId, minute) hashes they both write add up, and /admin/stats on either
// instance reports exactly the requests sent, per decision and per code (docs/design.md "Metrics").
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMock, startRedis, waitFor, SEED_PARAMS } from './lib/harness.mjs';
import { startGateway, gwCall, APPS } from './lib/gateway.mjs';

const PREFIX = 'itm:';
let mock;
let redis;
const gws = [];
before(async () => {
  mock = await startMock({ tls: true });
  redis = await startRedis();
  // Generous Redis and upstream timeouts: this test counts requests, and on a loaded machine a
  // 100 ms Redis timeout (the default) or the 1.5 s upstream timeout of gatewayConfig can expire
  // for reasons that have nothing to do with counting (a flush whose reply came late is written
  // again, an upstream call is answered 6200). Each is tested where it is the subject.
  const config = {
    redis: { url: redis.url, key_prefix: PREFIX, timeout_ms: 5000 },
    upstream: { timeout_ms: 10000 },
    metrics: { flush_ms: 200, retention_s: 3600 },
  };
  gws.push(await startGateway({ mock, config }));
  gws.push(await startGateway({ mock, config }));
});
after(async () => {
  for (const gw of gws) await gw.stop();
  await redis?.stop();
  await mock?.stop();
});

const stats = async (gw, query = '') => gw.admin(`/admin/stats${query}`);

/** Sends what the test expects to count; returns the expected totals per field. */
async function sendTraffic() {
  const expect = {};
  const add = (field, n = 1) => { expect[field] = (expect[field] ?? 0) + n; };
  const record = (r) => {
    add('requests');
    add(`code:${r.json.code}`);
  };
  // forwarded, pair 1:2, spread over both instances
  for (let i = 0; i < 6; i++) {
    const r = await gwCall(gws[i % 2], { params: { ...SEED_PARAMS, businessId: '1', sceneId: '2' } });
    assert.equal(r.json?.code, 0, r.body);
    record(r);
    add('forwarded');
  }
  // forwarded by the token app, no ids: pair -:-
  for (let i = 0; i < 3; i++) {
    const r = await gwCall(gws[i % 2], { app: APPS.token });
    assert.equal(r.json?.code, 0, r.body);
    record(r);
    add('forwarded');
  }
  // denied: the limited app may not use businessId 9
  for (let i = 0; i < 2; i++) {
    const r = await gwCall(gws[1], { app: APPS.limited, params: { ...SEED_PARAMS, businessId: '9', sceneId: '2' } });
    assert.equal(r.json?.code, 4300, r.body);
    record(r);
    add('denied');
  }
  // unauthorized: a wrong signature
  for (let i = 0; i < 2; i++) {
    const r = await gwCall(gws[0], { secretKey: 'not-the-key' });
    assert.equal(r.json?.code, 4100, r.body);
    record(r);
    add('unauthorized');
  }
  // invalid: clientType 5
  const r = await gwCall(gws[0], { params: { ...SEED_PARAMS, clientType: '5', businessId: '1', sceneId: '2' } });
  assert.equal(r.json?.code, 4000, r.body);
  record(r);
  add('invalid');
  return expect;
}

test('/admin/stats on either instance sums what both instances counted, per decision and per code', async (t) => {
  const probe = await stats(gws[0]);
  assert.equal(probe.status, 200, `/admin/stats must be routed: ${probe.body}`);
  const from = Math.floor(Date.now() / 1000) - 60;
  const expect = await sendTraffic();
  const query = `?from=${from}&to=${Math.floor(Date.now() / 1000) + 120}`;
  // every flush_ms each instance writes its batches; wait for all of them, bounded
  let seen;
  const body = await waitFor(async () => {
    const s = await stats(gws[0], query);
    seen = s.json?.totals;
    return s.status === 200 && s.json.totals.requests === expect.requests ? s.json : null;
  }, { timeoutMs: 20000, what: `/admin/stats totals.requests == ${expect.requests}` }).catch(async (e) => {
    // Say what the servers saw: the totals, and whether a flush failed (and may have been
    // written twice) on either instance.
    const flush = [];
    for (const gw of gws) {
      const m = await gw.metrics();
      flush.push({ flushes: m.get('capgate_metrics_flushes_total'), errors: m.get('capgate_metrics_flush_errors_total') });
    }
    assert.fail(`${e.message}; last totals ${JSON.stringify(seen)}; expected ${JSON.stringify(expect)}; flushes ${JSON.stringify(flush)}`);
  });

  for (const [field, n] of Object.entries(expect)) assert.equal(body.totals[field], n, `totals.${field}`);
  for (const d of ['pool', 'replayed', 'limited', 'shadow_limited', 'upstream_error']) {
    assert.equal(body.totals[d], 0, `totals.${d}`);
  }
  const buckets = ['le_1ms', 'le_5ms', 'le_10ms', 'le_50ms', 'le_100ms', 'le_500ms', 'le_1s', 'le_5s', 'le_inf'];
  assert.equal(buckets.reduce((a, b) => a + body.totals[b], 0), expect.requests, 'the buckets sum to requests');
  assert.ok(body.totals.latency_us_sum > 0);

  const pair = body.groups.find((p) => p.businessId === 1 && p.sceneId === 2);
  assert.ok(pair, JSON.stringify(body.groups.map((p) => [p.businessId, p.sceneId])));
  assert.ok(pair.totals.forwarded === 6, `pair 1:2 forwarded ${pair.totals.forwarded}`);
  assert.equal(pair.totals['code:0'], 6);
  const none = body.groups.find((p) => p.businessId === '-' && p.sceneId === '-');
  assert.ok(none && none.totals.forwarded === 3, 'the token app without ids counts under -:-');
  const seriesSum = pair.series.reduce((a, e) => a + (e.requests ?? 0), 0);
  assert.equal(seriesSum, pair.totals.requests, 'series entries add up to the pair totals');

  // the other instance reads the same hashes
  const other = await stats(gws[1], query);
  assert.equal(other.status, 200);
  assert.deepEqual(other.json.totals, body.totals);

  // filters
  const only = await stats(gws[1], `${query}&businessId=1&sceneId=2`);
  assert.equal(only.status, 200);
  assert.equal(only.json.groups.length, 1);
  assert.equal(only.json.totals.forwarded, 6);

  // the keys as docs/design.md "Redis layout" names them, with a TTL within retention_s
  const members = redis.cli('SMEMBERS', `${PREFIX}m:index`).split('\n');
  assert.ok(members.includes('1:2') && members.includes('-:-'), members.join(','));
  const keys = redis.cli('KEYS', `${PREFIX}m:1:2:*`).split('\n').filter(Boolean);
  assert.ok(keys.length >= 1);
  const ttl = Number(redis.cli('TTL', keys[0]));
  assert.ok(ttl > 0 && ttl <= 3600, `TTL ${ttl}`);

  // the flush thread reports itself on /metrics
  const m = await gws[0].metrics();
  assert.ok(m.get('capgate_metrics_flushes_total') >= 1, 'capgate_metrics_flushes_total');
  assert.equal(m.get('capgate_metrics_flush_errors_total'), 0);
});

test('/admin/stats refuses a bad query with 400 naming the parameter', async (t) => {
  const probe = await stats(gws[0]);
  assert.equal(probe.status, 200, `/admin/stats must be routed: ${probe.body}`);
  for (const [q, name] of [['?step=90', 'step'], ['?businessId=x', 'businessId'], ['?from=10&to=5', 'from'],
    ['?colour=red', 'colour']]) {
    const r = await stats(gws[0], q);
    assert.equal(r.status, 400, `${q}: ${r.body}`);
    assert.match(r.json.error, new RegExp(name), q);
  }
});
