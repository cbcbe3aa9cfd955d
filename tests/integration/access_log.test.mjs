// access_log.test.mjs: one access line per request at info, in the text format (key=value) and
// in JSON ("log_format": "json"), for a forwarded, a limited and an invalid request. Each line
// is found by the request's X-Request-Id and compared with what the gateway answered: app,
// action, businessId, sceneId, decision, rule, code, HTTP status, client IP; the upstream
// latency is there exactly when upstream was called. A JSON-format gateway writes every line as
// JSON. Under systemd (INVOCATION_ID set) no timestamp is written and the journal priority
// prefix is.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMock, waitFor, SEED_PARAMS } from './lib/harness.mjs';
import { startGateway, gwCall, APPS } from './lib/gateway.mjs';

let mock;
const gateways = [];
before(async () => {
  mock = await startMock({ tls: true });
});
after(async () => {
  await Promise.all(gateways.map((g) => g.stop()));
  await mock?.stop();
});

const LIMIT = { name: 'one-only', businessId: 4, sceneId: 5, rate: 1, period_s: 60, burst: 1 };
async function gateway(config, env) {
  const gw = await startGateway({ mock, config: { limits: [LIMIT], ...config }, env });
  gateways.push(gw);
  return gw;
}

// The three requests: forwarded, limited (the second under a burst of 1), invalid.
async function threeRequests(gw) {
  const biz = { ...SEED_PARAMS, businessId: '4', sceneId: '5' };
  const fwd = await gwCall(gw, { app: APPS.token, params: biz });
  assert.equal(fwd.json?.code, 0, fwd.body);
  const lim = await gwCall(gw, { app: APPS.token, params: biz });
  assert.notEqual(lim.json?.code, 0, `the second request is limited: ${lim.body}`);
  const bad = await gwCall(gw, { app: APPS.token, params: { ...SEED_PARAMS, captchaType: 'x' } });
  assert.notEqual(bad.json?.code, 0, bad.body);
  return [fwd, lim, bad].map((r) => ({ id: r.headers['x-request-id'], code: r.json.code, status: r.status }));
}

async function lineOf(gw, id) {
  let line;
  await waitFor(() => (line = gw.proc.stderr.split('\n').find((l) => l.includes(id) && /access/.test(l))),
    { timeoutMs: 5000, what: `the access line of request ${id}` });
  return line;
}

function kv(line) {
  const m = line.match(/ access (.*)$/);
  assert.ok(m, `not a text access line: ${line}`);
  return Object.fromEntries(m[1].split(' ').map((p) => p.split('=')).map(([k, ...v]) => [k, v.join('=')]));
}

test('text format: forwarded, limited and invalid requests each get one access line', async () => {
  const gw = await gateway({ log_format: 'text' });
  const [fwd, lim, bad] = await threeRequests(gw);
  for (const r of [fwd, lim, bad]) {
    const n = gw.proc.stderr.split('\n').filter((l) => l.includes(`request_id=${r.id}`)).length;
    assert.ok(n <= 1, `request ${r.id} has ${n} access lines`);
  }
  const f = kv(await lineOf(gw, fwd.id));
  assert.match(await lineOf(gw, fwd.id), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z capgate\[\d+\] INFO access /);
  assert.deepEqual([f.app, f.action, f.businessId, f.sceneId, f.decision, f.rule, f.code, f.http, f.client_ip],
    [APPS.token.name, 'CaptchaIframeQuery', '4', '5', 'forwarded', '-', String(fwd.code), String(fwd.status), '127.0.0.1']);
  assert.match(f.latency_ms, /^\d+\.\d{3}$/);
  assert.match(f.upstream_ms, /^\d+\.\d{3}$/, 'a forwarded request has an upstream latency');
  assert.ok(Number(f.upstream_ms) <= Number(f.latency_ms), `upstream ${f.upstream_ms} <= total ${f.latency_ms}`);

  const l = kv(await lineOf(gw, lim.id));
  assert.deepEqual([l.decision, l.rule, l.code, l.upstream_ms, l.businessId, l.sceneId],
    ['limited', LIMIT.name, String(lim.code), '-', '4', '5']);

  const b = kv(await lineOf(gw, bad.id));
  assert.deepEqual([b.decision, b.rule, b.code, b.upstream_ms, b.app],
    ['invalid', '-', String(bad.code), '-', APPS.token.name]);
});

test('json format: the same facts as JSON members; every log line is JSON', async () => {
  const gw = await gateway({ log_format: 'json' });
  const [fwd, lim, bad] = await threeRequests(gw);
  const f = JSON.parse(await lineOf(gw, fwd.id));
  assert.equal(f.level, 'info');
  assert.equal(f.msg, 'access');
  assert.match(f.ts, /^\d{4}-\d\d-\d\dT/);
  assert.deepEqual([f.request_id, f.app, f.action, f.businessId, f.sceneId, f.decision, f.rule, f.code, f.http, f.client_ip],
    [fwd.id, APPS.token.name, 'CaptchaIframeQuery', 4, 5, 'forwarded', null, fwd.code, fwd.status, '127.0.0.1']);
  assert.equal(typeof f.latency_ms, 'number');
  assert.equal(typeof f.upstream_ms, 'number');
  const l = JSON.parse(await lineOf(gw, lim.id));
  assert.deepEqual([l.decision, l.rule, l.code, l.upstream_ms], ['limited', LIMIT.name, lim.code, null]);
  const b = JSON.parse(await lineOf(gw, bad.id));
  assert.deepEqual([b.decision, b.code, b.upstream_ms], ['invalid', bad.code, null]);
  const lines = gw.proc.stderr.split('\n').filter((x) => x.trim());
  for (const x of lines) assert.doesNotThrow(() => JSON.parse(x), `not JSON: ${x}`);
});

test('under systemd (INVOCATION_ID): no timestamp of our own, the journal priority prefix', async () => {
  const gw = await gateway({ log_format: 'text' }, { INVOCATION_ID: '0123456789abcdef0123456789abcdef' });
  const [fwd] = await threeRequests(gw);
  const line = await lineOf(gw, fwd.id);
  assert.match(line, /^<6>INFO access request_id=/, line);
  assert.ok(!/\d{4}-\d\d-\d\dT\d\d:\d\d/.test(line), `no timestamp: ${line}`);
});
