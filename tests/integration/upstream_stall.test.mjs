// upstream_stall.test.mjs: a gateway whose own process stalls (SIGSTOP, as a VM pause, a swap
// storm or a debugger would) past upstream.timeout_ms while the upstream's replies arrive in its
// sockets. When it runs again, a reply already received counts: libevent runs the expired
// deadline timers in the same loop turn as the reads, and evhttp parses a read reply in a
// deferred callback queued behind them, so without a grace turn every call in flight failed
// "upstream timed out" (6200), the breaker opened on them, and the gateway refused everything
// that followed for breaker_open_ms, though the upstream had answered each call in time. A
// reply that did not arrive still times out.
import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { startMock, sleep, waitFor } from './lib/harness.mjs';
import { startGateway, gwCall, resetMock, addFault, APPS } from './lib/gateway.mjs';

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
