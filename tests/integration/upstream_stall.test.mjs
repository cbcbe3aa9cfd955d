// upstream_stall.test.mjs: a gateway whose own process stalls (SIGSTOP, as a VM pause, a swap
// storm or a debugger would) past upstream.timeout_ms, or redis.timeout_ms, while the upstream's
// or Redis's replies arrive in its sockets. When it runs again, a reply already received counts: libevent runs the expired
// deadline timers in the same loop turn as the reads, and evhttp parses a read reply in a
// deferred callback queued behind them, so without a grace turn every call in flight failed
// "upstream timed out" (6200), the breaker opened on them, and the gateway refused everything
// that followed for breaker_open_ms, though the upstream had answered each call in time. A
// reply that did not arrive still times out. The same for the rate-limit store: Redis's replies
// to the limit checks, there when the gateway runs again, are read rather than timed out (which
// marked the store down and, with on_store_error "deny", refused the requests).
import { test, before, after, beforeEach } from 'node:test';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import assert from 'node:assert/strict';
import { startMock, startRedis, sleep, waitFor } from './lib/harness.mjs';
import { startGateway, gwCall, resetMock, addFault, APPS } from './lib/gateway.mjs';

const execFileAsync = promisify(execFile);
const TIMEOUT_MS = 400;
const CALLS = 8;

let mock;
const gateways = {};
before(async () => {
  mock = await startMock({ tls: true });
  const config = { workers: 1, upstream: { timeout_ms: TIMEOUT_MS, retries: 0, breaker_failures: 3 } };
  gateways.https = await startGateway({ mock, config });
  gateways.http = await startGateway({
    mock,
    config: { ...config, upstream: { ...config.upstream, url: `http://127.0.0.1:${mock.port}/v2/index.php`,
      sign_host: `127.0.0.1:${mock.port}` } },
  });
});
after(async () => {
  await Promise.all(Object.values(gateways).map((g) => g.stop()));
  await mock?.stop();
});
beforeEach(async () => {
  await resetMock(mock);
});

/** CALLS concurrent calls through gw, each delayed delayMs by the mock; gw is stopped once they
 *  are all held by the mock and continued stopMs later. The replies, in order. */
async function stalledCalls(gw, delayMs, stopMs) {
  await addFault(mock, { action: 'CaptchaIframeQuery', delay_ms: delayMs, times: CALLS });
  const calls = [];
  for (let i = 0; i < CALLS; i++) calls.push(gwCall(gw, { app: APPS.token }));
  // every call is with the mock, held by its delay
  await waitFor(async () => (await mock.admin('health')).pending === CALLS,
    { timeoutMs: 5000, intervalMs: 5, what: `${CALLS} calls held by the mock` });
  gw.proc.signal('SIGSTOP');
  await sleep(stopMs);
  gw.proc.signal('SIGCONT');
  return Promise.all(calls);
}

for (const kind of ['https', 'http']) {
  test(`${kind} upstream: replies that arrived while the gateway was stopped past its timeout are answered, not timed out`, async () => {
    // the mock answers each call 300 ms after it came; the gateway is stopped for 1,000 ms from
    // the moment all are held, so every reply arrives while it is stopped
    const replies = await stalledCalls(gateways[kind], 300, 1000);
    for (const r of replies) assert.equal(r.json?.code, 0, `a reply the upstream sent in time: ${r.body}`);
    const after = await gwCall(gateways[kind], { app: APPS.token });
    assert.equal(after.json?.code, 0, `the breaker stayed closed: ${after.body}`);
  });

  test(`${kind} upstream: a reply that never came still times out after the stall`, async () => {
    // the mock holds each call 5 s: nothing arrives while the gateway is stopped
    const replies = await stalledCalls(gateways[kind], 5000, 1000);
    for (const r of replies) {
      assert.equal(r.json?.code, 6200, `timed out: ${r.body}`);
      assert.match(r.json?.message ?? '', /timed out/, r.body);
    }
  });
}

test('redis store: limit checks that Redis answered while the gateway was stopped past redis.timeout_ms are read, not timed out', async () => {
  const redis = await startRedis({ args: ['--enable-debug-command', 'yes'] });
  const gw = await startGateway({
    mock,
    config: {
      workers: 1,
      redis: { url: redis.url, key_prefix: 'stall:', timeout_ms: 300 },
      on_store_error: 'deny',
      limits: [{ name: 'all', scope: 'global', rate: 100000, period_s: 1 }],
    },
  });
  try {
    const warm = await gwCall(gw, { app: APPS.token });
    assert.equal(warm.json?.code, 0, warm.body);
    // Redis sleeps 400 ms: the limit checks of the calls wait for it; the gateway is stopped
    // before it wakes and continued at 1,100 ms, long past redis.timeout_ms
    const sleeper = execFileAsync('redis-cli', ['-p', String(redis.port), 'DEBUG', 'SLEEP', '0.4']);
    await sleep(50);
    const calls = [];
    for (let i = 0; i < CALLS; i++) calls.push(gwCall(gw, { app: APPS.token }));
    await sleep(100);
    gw.proc.signal('SIGSTOP');
    await sleep(1000);
    gw.proc.signal('SIGCONT');
    await sleeper;
    const replies = await Promise.all(calls);
    for (const r of replies) assert.equal(r.json?.code, 0, `a limit check Redis answered in time: ${r.body}`);
    const m = await gw.metrics();
    assert.equal(m.get('capgate_store_up'), 1, 'the store was not marked down');
  } finally {
    await gw.stop();
    await redis.stop();
  }
});
