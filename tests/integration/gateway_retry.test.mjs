// gateway_retry.test.mjs: every upstream attempt is signed afresh. When the mock resets or closes
// a reused keep-alive connection the gateway retries, and the retry must carry a new Nonce (and
// Timestamp and Signature): the mock, like upstream, spends a Nonce once it has checked the
// signature, so a resent one would come back as 4500 ReplayAttack. What the mock received is read
// from its journal, not from what the gateway meant to send.
import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { startMock, request } from './lib/harness.mjs';
import { startGateway, gwCall, journal, resetMock, addFault, APPS, CountingAgent } from './lib/gateway.mjs';

let mock;
let gw;
before(async () => {
  mock = await startMock({ tls: true });
  // One worker, one upstream connection: every call after the first rides a reused connection,
  // the case the gateway retries.
  gw = await startGateway({
    mock,
    config: { workers: 1, upstream: { retries: 1, max_connections: 1, timeout_ms: 3000, breaker_failures: 1000 } },
  });
});
after(async () => {
  await gw?.stop();
  await mock?.stop();
});
beforeEach(async () => { await resetMock(mock); });

const nonceOf = (e) => e.params?.Nonce;

for (const network of ['reset', 'close']) {
  test(`a "${network}" of a reused upstream connection is retried with a fresh Nonce, Timestamp and Signature; the app gets code 0`, async () => {
    const warm = await gwCall(gw, { app: APPS.token });
    assert.equal(warm.json?.code, 0, warm.body);
    for (let round = 0; round < 3; round++) {
      await addFault(mock, { action: 'CaptchaIframeQuery', network, times: 1 });
      const before = (await journal(mock)).length;
      const r = await gwCall(gw, { app: round % 2 ? APPS.sig : APPS.token });
      assert.equal(r.json?.code, 0, `round ${round}: the app got ${r.body}`);
      const seen = (await journal(mock)).slice(before);
      assert.equal(seen.length, 2, `round ${round}: the mock saw the attempt and its retry: ${JSON.stringify(seen)}`);
      assert.match(seen[0].fault ?? '', new RegExp(network), JSON.stringify(seen[0]));
      assert.equal(seen[0].signature, 'ok');
      assert.equal(seen[1].code, 0, JSON.stringify(seen[1]));
      assert.equal(seen[1].signature, 'ok');
      assert.ok(nonceOf(seen[0]) && nonceOf(seen[1]), JSON.stringify(seen));
      assert.notEqual(nonceOf(seen[0]), nonceOf(seen[1]), `the retry reused Nonce ${nonceOf(seen[0])}`);
    }
  });
}

test('under random reset and close faults no app ever receives 4500, and no Nonce reaches the mock twice', async () => {
  await addFault(mock, [
    { action: 'CaptchaIframeQuery', network: 'reset', probability: 0.2 },
    { action: 'CaptchaIframeQuery', network: 'close', probability: 0.2 },
  ]);
  const codes = new Map();
  // Two clients on keep-alive connections, 40 calls each, signature and token apps.
  await Promise.all([APPS.sig, APPS.token].map(async (app) => {
    const agent = new CountingAgent();
    for (let i = 0; i < 40; i++) {
      const r = await gwCall(gw, { app, agent, method: i % 2 ? 'POST' : 'GET' });
      const code = r.json?.code;
      codes.set(code, (codes.get(code) ?? 0) + 1);
    }
    agent.destroy();
  }));
  assert.ok(!codes.has(4500), `an app received 4500: ${JSON.stringify([...codes])}`);
  // Only the gateway's own failures besides success: a reset of a fresh connection is not retried.
  for (const code of codes.keys()) assert.ok(code === 0 || code === 6200, `unexpected code ${code}: ${JSON.stringify([...codes])}`);
  const seen = await journal(mock);
  const faulted = seen.filter((e) => e.fault);
  assert.ok(faulted.length > 0, 'the faults fired');
  assert.ok(seen.every((e) => e.code !== 4500), `the mock answered 4500: ${JSON.stringify(seen.filter((e) => e.code === 4500))}`);
  const nonces = seen.map(nonceOf);
  assert.equal(new Set(nonces).size, nonces.length, 'every attempt carried its own Nonce');
  await request(`${mock.url}/__admin/faults`, { method: 'DELETE' });
});
