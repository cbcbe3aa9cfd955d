// gateway_upstream.test.mjs: capgate when upstream misbehaves. The mock's network faults surface
// as 6200 within timeout_ms, the circuit breaker opens after breaker_failures and closes after
// breaker_open_ms, an upstream certificate from the wrong CA is never trusted, and "http_errors"
// maps gateway errors to HTTP statuses only in "semantic" mode.
import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { startMock, certs, request, waitFor, SEED_PARAMS, MOCK_SECRET_ID } from './lib/harness.mjs';
import { startGateway, gwCall, journal, resetMock, addFault, assertApiReply, APPS } from './lib/gateway.mjs';
import { auditOf } from './lib/auditlog.mjs';

const TIMEOUT_MS = 1000;
// Scheduling slack on a loaded 2-core machine, on the gateway's own measure of a request (audit
// latency_us): its timer can fire late when its thread is descheduled. The client only bounds its
// wait (SLACK_MS + 5 s more), so a hang still fails.
const SLACK_MS = 1500;

let mock;
const gateways = [];
async function gateway(config) {
  const gw = await startGateway({ mock, config });
  gateways.push(gw);
  return gw;
}
let compat;
before(async () => {
  mock = await startMock({ tls: true });
  compat = await gateway({ upstream: { timeout_ms: TIMEOUT_MS, breaker_failures: 1000 } });
});
after(async () => {
  await Promise.all(gateways.map((g) => g.stop()));
  await mock?.stop();
});
beforeEach(async () => {
  await resetMock(mock);
});

async function clearFaults() {
  const r = await request(`${mock.url}/__admin/faults`, { method: 'DELETE' });
  assert.ok(r.status >= 200 && r.status < 300, `DELETE faults: ${r.status}`);
}

for (const network of ['stall', 'reset', 'close', 'malformed_json', 'http_500']) {
  test(`upstream fault "${network}" → 6200 within timeout_ms, then the gateway recovers`, async () => {
    await addFault(mock, { action: 'CaptchaIframeQuery', network });
    const r = await gwCall(compat, { timeoutMs: TIMEOUT_MS + SLACK_MS + 5000 });
    const j = assertApiReply(r, network);
    assert.equal(j.code, 6200, r.body);
    assert.equal(j.codeDesc, 'ServiceUnavailable', r.body);
    assert.equal(r.status, 200, 'compat mode answers 200');
    const [rec] = await auditOf(compat, [r]);
    const ms = rec.latency_us / 1000;
    assert.equal(rec.decision, 'upstream_error', JSON.stringify(rec));
    assert.ok(ms < TIMEOUT_MS + SLACK_MS, `the gateway answered after ${ms} ms by its own clock; timeout_ms is ${TIMEOUT_MS}`);
    assert.equal(j.url, undefined);
    if (network === 'stall') {
      // The call's timer starts after the request arrived, so by the gateway's clock a stalled
      // upstream is answered no sooner than timeout_ms (less a timer tick).
      assert.ok(ms >= TIMEOUT_MS - 100, `a stalled upstream answered 6200 after only ${ms} ms`);
      assert.match(j.message, /time(d)?[ -]?out/i, `the message says it timed out: ${r.body}`);
    } else {
      assert.doesNotMatch(j.message, /^No Error$/);
    }
    await clearFaults();
    const ok = await gwCall(compat, {});
    assert.equal(assertApiReply(ok, 'after').code, 0, `after removing the fault: ${ok.body}`);
  });
}

/**
 * Opens the breaker with breaker_failures failing calls (http_500), checks it answers 6200 at once
 * without reaching upstream (a stall fault would hold any forwarded call for the whole timeout),
 * that the breaker gauge says open, and that it closes after breaker_open_ms once the fault is gone.
 */
async function breakerScenario(workers) {
  const OPEN_MS = 1500;
  const FAILURES = 3;
  const gw = await gateway({ workers, upstream: { timeout_ms: 700, breaker_failures: FAILURES, breaker_open_ms: OPEN_MS } });
  const warm = await gwCall(gw, {});
  assert.equal(assertApiReply(warm).code, 0, warm.body);
  await resetMock(mock);

  await addFault(mock, { action: 'CaptchaIframeQuery', network: 'http_500' });
  let lastFailure;
  for (let i = 0; i < FAILURES; i++) {
    lastFailure = await gwCall(gw, {});
    assert.equal(assertApiReply(lastFailure, `failure ${i}`).code, 6200, lastFailure.body);
  }
  assert.equal((await journal(mock)).length, FAILURES, 'the failures reached upstream');

  await clearFaults();
  await addFault(mock, { action: 'CaptchaIframeQuery', network: 'stall' });
  const open = [];
  for (let i = 0; i < 4; i++) {
    const r = await gwCall(gw, { app: i % 2 ? APPS.token : APPS.sig, timeoutMs: 10000 });
    assert.equal(assertApiReply(r, `open ${i}`).code, 6200, r.body);
    open.push(r);
  }
  assert.equal((await journal(mock)).length, FAILURES, 'nothing reached upstream while the breaker was open');
  // "At once", by the gateway's own account: no upstream reply (upstream_status 0) and no wait for
  // the stalled mock, which would have held the request for the whole timeout_ms (700 ms) by the
  // gateway's clock.
  for (const [i, rec] of (await auditOf(gw, open)).entries()) {
    assert.ok(rec.upstream_status === 0 && rec.latency_us < 700000,
      `after ${FAILURES} consecutive failures (workers ${workers}) the breaker should answer at once; request ${i}: ${JSON.stringify(rec)}`);
  }
  // Each worker publishes its view of the process's breaker every 200 ms (GATEWAY_TICK_MS); a
  // worker that served none of the requests above shows the change at its next tick.
  let m;
  const allOpen = () => {
    const gauges = m.samples.filter((s) => s.name === 'capgate_upstream_breaker_state');
    const v2 = gauges.filter((s) => s.labels.api === 'v2');
    // the 3.0 upstream's breaker is its own: no 3.0 call failed
    return v2.length > 0 && v2.length * 2 === gauges.length && v2.every((s) => s.value === 1) &&
      gauges.every((s) => s.labels.api === 'v2' || s.value === 0);
  };
  await waitFor(async () => { m = await gw.metrics(); return allOpen(); },
    { what: 'capgate_upstream_breaker_state 1 for every worker', timeoutMs: 5000 })
    .catch(() => assert.fail(`breaker gauge while open:\n${m.text}`));

  await clearFaults();
  let firstOk;
  const deadline = Date.now() + OPEN_MS + 10000;
  while (Date.now() < deadline) {
    const r = await gwCall(gw, {});
    const j = assertApiReply(r, 'probe');
    if (j.code === 0) { firstOk = r; break; }
    assert.equal(j.code, 6200, r.body);
    await new Promise((res) => setTimeout(res, 100));
  }
  assert.ok(firstOk, 'the breaker never closed');
  // By the gateway's clock (audit ts = arrival): the breaker opened while the last failure was
  // answered, after it arrived, and let the first probe through no sooner than breaker_open_ms
  // later; the probe arrived a moment before that check (parse, auth: far below the 150 ms
  // allowed). A breaker closing at half its time, or not opening, fails.
  const [fail, ok] = await auditOf(gw, [lastFailure, firstOk]);
  const closedAfter = ok.tsMs - fail.tsMs;
  assert.ok(closedAfter >= OPEN_MS - 150, `closed ${closedAfter} ms after the last failure arrived; breaker_open_ms is ${OPEN_MS}`);
  for (let i = 0; i < 3; i++) {
    const r = await gwCall(gw, { app: i % 2 ? APPS.token : APPS.sig });
    assert.equal(assertApiReply(r, `closed ${i}`).code, 0, r.body);
  }
  const entries = await journal(mock);
  assert.ok(entries.slice(FAILURES).every((e) => e.code === 0 && e.secret_id === MOCK_SECRET_ID), JSON.stringify(entries.slice(FAILURES)));
  assert.ok(entries.length >= FAILURES + 4, 'after closing: the probes and three requests reached upstream');
}

test('breaker (workers 1): opens after breaker_failures, answers 6200 at once without reaching upstream, closes after breaker_open_ms', async () => {
  await breakerScenario(1);
});

// docs/configuration.md: "consecutive failures that open the circuit breaker" — failures of the
// instance, whichever worker forwarded them.
test('breaker (workers 2): breaker_failures consecutive failures of the instance open it', async () => {
  await breakerScenario(2);
});

test('an upstream certificate from an unrelated CA → 6200 naming certificate verification; nothing sent', async () => {
  const gw = await gateway({ upstream: { ca_file: path.join(certs().dir, 'wrong-ca.pem'), breaker_failures: 1000 } });
  for (const app of [APPS.sig, APPS.token]) {
    const r = await gwCall(gw, { app });
    const j = assertApiReply(r, 'wrong CA');
    assert.equal(j.code, 6200, r.body);
    assert.match(j.message, /certificate|verif/i, `the message names certificate verification: ${r.body}`);
  }
  assert.deepEqual(await journal(mock), [], 'no request reached the mock');
});

/** The same failing cases against a gateway; returns [[name, status, code], ...]. */
async function mappingCases(gw) {
  const out = [];
  const run = async (name, opts) => {
    const r = await gwCall(gw, { timeoutMs: 10000, ...opts });
    const j = assertApiReply(r, name);
    out.push([name, r.status, j.code]);
  };
  await run('ok', {});
  await run('invalid', { params: { ...SEED_PARAMS, clientType: '5' } });
  await run('auth', { secretKey: 'wrong' });
  await run('token', { app: APPS.token, token: 'wrong' });
  await run('denied', { app: APPS.limited, params: { ...SEED_PARAMS, businessId: '9' } });
  await addFault(mock, { action: 'CaptchaIframeQuery', network: 'http_500', times: 1 });
  await run('upstream', {});
  await clearFaults();
  await addFault(mock, { action: 'CaptchaIframeQuery', network: 'stall', times: 1 });
  await run('timeout', {});
  await clearFaults();
  return out;
}

test('"http_errors": "semantic" maps 4000→400, 4100→401, 4300→403, 6200→502, timeout→504', async () => {
  const gw = await gateway({ http_errors: 'semantic', upstream: { timeout_ms: 700, breaker_failures: 1000 } });
  assert.deepEqual(await mappingCases(gw), [
    ['ok', 200, 0],
    ['invalid', 400, 4000],
    ['auth', 401, 4100],
    ['token', 401, 4100],
    ['denied', 403, 4300],
    ['upstream', 502, 6200],
    ['timeout', 504, 6200],
  ]);
});

test('"http_errors": "compat" (the default) answers 200 for the same cases', async () => {
  assert.deepEqual(await mappingCases(compat), [
    ['ok', 200, 0],
    ['invalid', 200, 4000],
    ['auth', 200, 4100],
    ['token', 200, 4100],
    ['denied', 200, 4300],
    ['upstream', 200, 6200],
    ['timeout', 200, 6200],
  ]);
});
