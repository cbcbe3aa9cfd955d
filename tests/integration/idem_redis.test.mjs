// idem_redis.test.mjs: Idempotency-Key replay (docs/design.md "Caches") shared through a real
// redis-server: the cases of idem_memory.test.mjs, and two capgate instances on one redis: a key
// used on one is replayed on the other, and duplicates sent at once to both make one upstream call.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SEED_PARAMS } from './lib/harness.mjs';
import { addFault, assertApiReply, gwCall, APPS } from './lib/gateway.mjs';
import { idemSuite, withGateways, cfg, idemKey, freshUid, callsFor, replayed } from './lib/cache.mjs';

const ctx = idemSuite('redis');

const call = (gw, key, opts = {}) => gwCall(gw, { timeoutMs: 8000, ...opts, headers: { 'idempotency-key': key } });

test('redis: the first request on instance A, the repeat on instance B: replayed', async () => {
  const config = cfg(ctx.storeConfig(), { upstream: { timeout_ms: 5000 } });
  await withGateways([{ mock: ctx.mock, config }, { mock: ctx.mock, config }], async ([a, b]) => {
    const key = idemKey('two');
    const uid = freshUid('two');
    const params = { ...SEED_PARAMS, uid };
    const first = await call(a, key, { params });
    assert.equal(assertApiReply(first, 'A').code, 0, first.body);
    assert.ok(!replayed(first));
    for (const app of [APPS.sig, APPS.sig]) {
      const again = await call(b, key, { params, app, method: 'POST' });
      assert.equal(again.body, first.body, `instance B replays A's reply: ${again.body}`);
      assert.ok(replayed(again), `Idempotent-Replayed on B: ${JSON.stringify(again.headers)}`);
    }
    assert.equal((await callsFor(ctx.mock, uid)).length, 1, 'one upstream call');
    // Different params under the key on B: 4000.
    const other = await call(b, key, { params: { ...params, captchaType: '2' } });
    assert.equal(assertApiReply(other).code, 4000, other.body);
    assert.match(other.json.message, /differ/i);

    // Duplicates sent at once, one to each instance, while upstream takes 500 ms: one upstream call.
    await addFault(ctx.mock, { action: 'CaptchaIframeQuery', delay_ms: 500 });
    const key2 = idemKey('two-concurrent');
    const uid2 = freshUid('two');
    const p2 = { ...SEED_PARAMS, uid: uid2 };
    const [ra, rb] = await Promise.all([call(a, key2, { params: p2 }), call(b, key2, { params: p2, method: 'POST' })]);
    assert.equal(assertApiReply(ra, 'A').code, 0, ra.body);
    assert.equal(assertApiReply(rb, 'B').code, 0, rb.body);
    assert.equal(ra.body, rb.body, 'both instances answer the same body');
    assert.equal((await callsFor(ctx.mock, uid2)).length, 1, 'one upstream call across the two instances');
    assert.equal([ra, rb].filter(replayed).length, 1, 'one of the two is the replay');
  });
});
