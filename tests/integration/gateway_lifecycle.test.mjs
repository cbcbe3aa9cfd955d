// gateway_lifecycle.test.mjs: capgate's process life. --check-config validates and prints the
// config with secrets masked; SIGHUP reloads apps without dropping keep-alive connections and
// refuses a bad file; SIGTERM drains a request in flight and exits 0; the admin listener answers
// /healthz, /readyz and /metrics with counters that follow the requests sent.
import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { startMock, request, waitFor, SEED_PARAMS, CAPGATE_BIN } from './lib/harness.mjs';
import {
  startGateway, gatewayConfig, runCapgate, gwCall, resetMock, addFault, assertApiReply, baseApps,
  CountingAgent, APPS, SECRETS,
} from './lib/gateway.mjs';

let mock;
const gateways = [];
async function gateway(opts = {}) {
  const gw = await startGateway({ mock, ...opts });
  gateways.push(gw);
  return gw;
}
before(async () => {
  mock = await startMock({ tls: true });
});
after(async () => {
  await Promise.all(gateways.map((g) => g.stop()));
  await mock?.stop();
});
beforeEach(async () => {
  await resetMock(mock);
});

test('--check-config: a good config exits 0 and prints it with every secret masked', async () => {
  const { dir, config } = gatewayConfig(mock, {
    // A literal secret too (allowed for local dev): it must be masked like the others.
    apps: [...baseApps(), { name: APPS.extra.name, auth: 'token', token: APPS.extra.token }],
  });
  const file = path.join(dir, 'good.json');
  fs.writeFileSync(file, JSON.stringify(config, null, 2));
  const r = await runCapgate(['--check-config', file]);
  fs.rmSync(dir, { recursive: true, force: true });
  assert.equal(r.code, 0, `exit ${r.code}; stderr: ${r.stderr}`);
  const out = r.stdout + r.stderr;
  for (const s of SECRETS) assert.ok(!out.includes(s), `a secret appears in the output: ${s}`);
  assert.ok(r.stdout.includes(APPS.sig.secretId), 'the effective config is printed (secret ids are not secret)');
  assert.ok(r.stdout.includes('***'), 'masked secrets are shown as ***');
  assert.ok(r.stdout.includes(APPS.token.name) && r.stdout.includes(APPS.extra.name), 'the apps are printed');
});

test('--check-config: an unknown key exits 1 naming the key with line:column', async () => {
  const { dir, config } = gatewayConfig(mock);
  const text = JSON.stringify({ ...config, upstream: { ...config.upstream, bogus_timeout: 5 } }, null, 2);
  const line = text.split('\n').findIndex((l) => l.includes('"bogus_timeout"')) + 1;
  assert.ok(line > 1);
  const file = path.join(dir, 'bad.json');
  fs.writeFileSync(file, text);
  const r = await runCapgate(['--check-config', file]);
  assert.equal(r.code, 1, `exit ${r.code}; stdout: ${r.stdout}; stderr: ${r.stderr}`);
  const out = r.stdout + r.stderr;
  assert.match(out, /bogus_timeout/, out);
  assert.match(out, new RegExp(`:${line}:\\d+`), `the message gives line ${line} and a column: ${out}`);
  for (const s of SECRETS) assert.ok(!out.includes(s), `a secret appears in the output: ${s}`);

  const syntax = path.join(dir, 'syntax.json');
  fs.writeFileSync(syntax, '{\n  "listen": "127.0.0.1:0",\n  "workers": 2,,\n}\n');
  const r2 = await runCapgate(['--check-config', syntax]);
  fs.rmSync(dir, { recursive: true, force: true });
  assert.equal(r2.code, 1, `exit ${r2.code} for a JSON syntax error`);
  assert.match(r2.stdout + r2.stderr, /:3:\d+/, r2.stdout + r2.stderr);
});

test('--help says what SIGHUP applies and what needs a restart', async () => {
  const r = await runCapgate(['--help']);
  assert.equal(r.code, 0, r.stderr);
  const text = r.stdout.replace(/\s+/g, ' ');
  assert.match(text, /SIGHUP reloads the same file and applies apps, limits, captcha_apps, auth, on_store_error, http_errors, pool, idempotency, trusted_proxies, demo, demo_app, demo_tcaptcha_url, demo_captcha_app_id, log_level and the redis connection settings \(Redis connections made again\), and loads the tls certificate and key again/, r.stdout);
  assert.match(text, /listen, tls_listen, admin_listen, admin, workers, upstream, http, redis\.key_prefix \(and adding or removing redis\), audit, instance, metrics and log_format need a restart/, r.stdout);
});

test('SIGHUP applies a new app and changed business_ids without dropping a keep-alive connection; a bad file is refused', async () => {
  const gw = await gateway();
  const agent = new CountingAgent();
  try {
    let sent = 0;
    const call = (opts) => { sent++; return gwCall(gw, { agent, ...opts }); };
    const extraBefore = await call({ app: APPS.extra });
    assert.equal(assertApiReply(extraBefore).code, 4100, `extra-app is not configured yet: ${extraBefore.body}`);
    const b3before = await call({ app: APPS.limited, params: { ...SEED_PARAMS, businessId: '3' } });
    assert.equal(assertApiReply(b3before).code, 4300, b3before.body);
    const b1before = await call({ app: APPS.limited, params: { ...SEED_PARAMS, businessId: '1' } });
    assert.equal(assertApiReply(b1before).code, 0, b1before.body);
    assert.equal(agent.created, 1, 'one keep-alive connection so far');

    const apps = baseApps().map((a) => (a.name === APPS.limited.name ? { ...a, business_ids: [3] } : a));
    apps.push({ name: APPS.extra.name, auth: 'token', token_env: APPS.extra.env });
    gw.writeConfig({ ...gw.config, apps });
    gw.reload();
    await waitFor(async () => (await call({ app: APPS.extra })).json?.code === 0,
      { timeoutMs: 5000, intervalMs: 50, what: 'the new app to be accepted after SIGHUP' });
    const b3after = await call({ app: APPS.limited, params: { ...SEED_PARAMS, businessId: '3' } });
    assert.equal(assertApiReply(b3after).code, 0, b3after.body);
    const b1after = await call({ app: APPS.limited, params: { ...SEED_PARAMS, businessId: '1' } });
    assert.equal(assertApiReply(b1after).code, 4300, b1after.body);
    assert.equal(agent.created, 1, 'the keep-alive connection survived the reload');
    assert.deepEqual(agent.socketErrors, []);

    // A bad file: refused, the running config keeps serving.
    gw.writeConfig(JSON.stringify({ ...gw.config, apps: [], no_such_key: true }, null, 2));
    gw.reload();
    await waitFor(() => /refus/i.test(gw.proc.stderr), { timeoutMs: 5000, what: 'stderr saying the reload was refused' });
    assert.match(gw.proc.stderr, /no_such_key/, 'stderr names what was wrong');
    assert.equal(gw.proc.child.exitCode, null, 'still running');
    const still = await call({ app: APPS.extra });
    assert.equal(assertApiReply(still).code, 0, `the previous config still serves: ${still.body}`);
    const b3still = await call({ app: APPS.limited, params: { ...SEED_PARAMS, businessId: '3' } });
    assert.equal(assertApiReply(b3still).code, 0, b3still.body);
    assert.equal(agent.created, 1, 'the keep-alive connection survived the refused reload');
    assert.deepEqual(agent.socketErrors, []);
    // Counters survive reloads: every request sent on this gateway is counted.
    let m;
    await waitFor(async () => { m = await gw.metrics(); return m.get('capgate_requests_total') >= sent; },
      { timeoutMs: 4000, intervalMs: 100, what: `capgate_requests_total to reach ${sent}` }).catch(() => {});
    assert.equal(m.get('capgate_requests_total'), sent, `counters kept across reloads\n${m.text}`);
  } finally {
    agent.destroy();
  }
});

test('SIGHUP: the log names every key that changed (pool, idempotency, demo, log_level; workers and upstream not applied) and applies log_level', async () => {
  const gw = await gateway();
  const applied = () => (gw.proc.stderr.match(/reload: config \S+ applied/g) || []).length;
  const reload = async (config) => {
    const before = applied();
    gw.writeConfig(config);
    gw.reload();
    await waitFor(() => applied() > before, { timeoutMs: 5000, intervalMs: 20, what: 'the reload to be applied' });
  };
  assert.doesNotMatch(gw.proc.stderr, / DEBUG /, 'log_level info at start');

  const changed = {
    ...gw.config, pool: { ttl_s: 30 }, idempotency: { ttl_s: 60 }, demo: true, log_level: 'debug',
    workers: gw.config.workers + 1, upstream: { ...gw.config.upstream, timeout_ms: 4321 },
  };
  let from = gw.proc.stderr.length;
  await reload(changed);
  const log = gw.proc.stderr.slice(from);
  assert.match(log, /reload: pool\.ttl_s 60 -> 30\n/, log);
  assert.match(log, /reload: idempotency\.ttl_s 300 -> 60/, log);
  assert.match(log, /reload: demo false -> true\n/, log);
  assert.match(log, /reload: demo_app null -> token-app\n/, log);
  assert.match(log, /reload: log_level info -> debug/, log);
  // restart-only keys: logged, not applied (two workers still run: both lines below)
  assert.match(log, new RegExp(`reload: workers ${gw.config.workers} -> ${gw.config.workers + 1}; not applied, it needs a restart`), log);
  assert.match(log, /reload: upstream\.timeout_ms \d+ -> 4321; not applied, it needs a restart/, log);
  assert.doesNotMatch(log, /no change/, log);
  // applied: each worker says at debug level that it took the new config
  await waitFor(() => (gw.proc.stderr.slice(from).match(/ DEBUG worker \d+: new config in use/g) || []).length >= 2,
    { timeoutMs: 5000, what: `both workers' debug lines after log_level debug; stderr:\n${gw.proc.stderr}` });

  from = gw.proc.stderr.length;
  await reload(changed);
  assert.match(gw.proc.stderr.slice(from),
    /reload: no change to tls, trusted_proxies, http_errors, redis, on_store_error, auth, apps, limits, captcha_apps, pool, idempotency, demo, demo_app, demo_tcaptcha_url, demo_captcha_app_id or log_level/);

  // warn hides the info line closing that reload; the next reload (back to info) shows its own
  from = gw.proc.stderr.length;
  const beforeWarn = applied();
  gw.writeConfig({ ...changed, log_level: 'warn' });
  gw.reload();
  await waitFor(() => gw.proc.stderr.slice(from).includes('reload: log_level debug -> warn'),
    { timeoutMs: 5000, what: 'the log_level change to be logged' });
  await reload({ ...changed, log_level: 'info' });
  assert.equal(applied(), beforeWarn + 1, `only the reload back to info says "applied"; stderr:\n${gw.proc.stderr.slice(from)}`);
  assert.doesNotMatch(gw.proc.stderr.slice(from), / DEBUG /);
});

test('SIGTERM drains a request in flight: full reply, /readyz 503 meanwhile, exit 0', async () => {
  const gw = await gateway({ config: { upstream: { timeout_ms: 10000 } } });
  const ready = await gw.admin('/readyz');
  assert.equal(ready.status, 200, `readyz before: ${ready.status}`);
  // Long enough that the poll below sees the call held even on a loaded machine.
  await addFault(mock, { action: 'CaptchaIframeQuery', delay_ms: 2000 });
  const inflight = gwCall(gw, { app: APPS.token, timeoutMs: 10000 });
  // Wait until the mock holds the call (its delayed calls not yet ended), not for a nominal
  // 100 ms: on a loaded machine the request may not even have reached the gateway by then.
  await waitFor(async () => (await request(`${mock.url}/__admin/health`)).json?.pending >= 1,
    { timeoutMs: 5000, what: 'the call pending at the mock' });
  gw.proc.signal('SIGTERM');
  let readyz;
  try {
    await new Promise((r) => setTimeout(r, 100));
    readyz = await gw.admin('/readyz', { timeoutMs: 1000 });
  } catch (e) {
    readyz = { error: e };
  }
  const r = await inflight;
  assert.equal(assertApiReply(r, 'in flight').code, 0, r.body);
  assert.match(r.json.url, /asig=/);
  if (!readyz.error) assert.equal(readyz.status, 503, `/readyz while draining: ${readyz.status} ${readyz.body}`);
  let timer;
  const exit = await Promise.race([gw.proc.exited, new Promise((res) => { timer = setTimeout(() => res('timeout'), 8000); })]);
  clearTimeout(timer);
  assert.notEqual(exit, 'timeout', 'capgate did not exit within 8 s of SIGTERM');
  // The drain waited for the request in flight: it was at the mock when SIGTERM came, and its
  // full code-0 reply (above) could only come from a gateway still serving it.
  assert.deepEqual(exit, { code: 0, signal: null }, `exit status; stderr: ${gw.proc.stderr}`);
});

test('capgate_requests_total: refusals before validation (4100, 4500) carry the Action sent and the app the SecretId names; an unknown one is "unknown"', async () => {
  const gw = await gateway();
  assert.equal((await gwCall(gw, { app: APPS.sig, action: 'CaptchaCheck', secretKey: 'wrong' })).json?.code, 4100);
  const nonce = 424242;
  assert.equal((await gwCall(gw, { app: APPS.sig, nonce })).json?.code, 0);
  assert.equal((await gwCall(gw, { app: APPS.sig, nonce })).json?.code, 4500);
  assert.equal((await gwCall(gw, { app: APPS.token, action: 'Describe', token: 'not-a-token' })).json?.code, 4100);
  const want = [
    // who failed: a refused signed request counts under the app its SecretId names
    [{ app: APPS.sig.name, action: 'CaptchaCheck', decision: 'unauthorized' }, 1],
    [{ app: APPS.sig.name, action: 'CaptchaIframeQuery', decision: 'unauthorized' }, 1],
    [{ app: '-', action: 'unknown', decision: 'unauthorized' }, 1],
    [{ app: APPS.sig.name, action: 'CaptchaIframeQuery', decision: 'forwarded' }, 1],
  ];
  let m;
  try {
    await waitFor(async () => {
      m = await gw.metrics();
      return m.get('capgate_requests_total') >= 4;
    }, { timeoutMs: 4000, intervalMs: 100, what: 'capgate_requests_total to count the requests' });
  } catch (e) {
    assert.fail(`${e.message}\n${m?.text ?? ''}`);
  }
  for (const [labels, n] of want) {
    assert.equal(m.get('capgate_requests_total', labels), n, `capgate_requests_total${JSON.stringify(labels)}\n${m.text}`);
  }
});

test('/healthz, /readyz, /metrics: capgate_requests_total by app/action/decision, a histogram, the breaker gauge', async () => {
  const gw = await gateway();
  const health = await gw.admin('/healthz');
  assert.equal(health.status, 200, health.body);
  const ready = await gw.admin('/readyz');
  assert.equal(ready.status, 200, ready.body);

  for (let i = 0; i < 3; i++) assert.equal((await gwCall(gw, { app: APPS.token })).json?.code, 0);
  for (let i = 0; i < 2; i++) assert.equal((await gwCall(gw, { app: APPS.sig, params: { ...SEED_PARAMS, clientType: '5' } })).json?.code, 4000);
  assert.equal((await gwCall(gw, { app: APPS.limited, params: { ...SEED_PARAMS, businessId: '7' } })).json?.code, 4300);
  assert.equal((await gwCall(gw, { app: APPS.sig, secretKey: 'wrong' })).json?.code, 4100);

  const want = [
    [{ app: APPS.token.name, action: 'CaptchaIframeQuery', decision: 'forwarded' }, 3],
    [{ app: APPS.sig.name, action: 'CaptchaIframeQuery', decision: 'invalid' }, 2],
    [{ app: APPS.limited.name, action: 'CaptchaIframeQuery', decision: 'denied' }, 1],
    [{ decision: 'unauthorized' }, 1],
  ];
  let m;
  try {
    await waitFor(async () => {
      m = await gw.metrics();
      return want.every(([labels, n]) => m.get('capgate_requests_total', labels) >= n);
    }, { timeoutMs: 4000, intervalMs: 100, what: 'capgate_requests_total to count the requests' });
  } catch (e) {
    assert.fail(`${e.message}\n${m?.text ?? ''}`);
  }
  for (const [labels, n] of want) {
    assert.equal(m.get('capgate_requests_total', labels), n, `capgate_requests_total${JSON.stringify(labels)}\n${m.text}`);
  }
  assert.equal(m.get('capgate_requests_total'), 7, `7 requests in all\n${m.text}`);
  const hist = Object.entries(m.types).filter(([, t]) => t === 'histogram').map(([n]) => n);
  assert.ok(hist.length > 0, `no histogram in /metrics\n${m.text}`);
  const h = hist[0];
  assert.ok(m.samples.some((s) => s.name === `${h}_bucket` && s.labels.le === '+Inf'), `${h}_bucket{le="+Inf"} missing`);
  assert.ok(m.has(`${h}_count`) && m.has(`${h}_sum`), `${h}_count/_sum missing`);
  assert.ok(m.get(`${h}_count`) >= 3, `${h}_count counts the requests\n${m.text}`);
  const breaker = m.samples.filter((s) => /breaker/.test(s.name));
  assert.ok(breaker.length > 0, `no breaker gauge in /metrics\n${m.text}`);
  assert.ok(breaker.some((s) => m.types[s.name] === 'gauge'), `the breaker metric is a gauge\n${m.text}`);
});

test('the start-up log names the malloc the binary runs on (jemalloc when it is linked in); threads have names', async (t) => {
  const gw = await gateway();
  const pid = gw.proc.child.pid;
  const comms = () => fs.readdirSync(`/proc/${pid}/task`)
    .map((tid) => fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim()).sort();
  // the default config: two workers, the audit sink and the metrics flush beside the main thread
  await waitFor(() => ['capgate-w0', 'capgate-w1', 'capgate-audit', 'capgate-metrics'].every((n) => comms().includes(n)),
    { timeoutMs: 5000, what: 'named threads' }).catch((e) => { throw new Error(`${e.message}: ${comms().join(', ')}`); });
  await waitFor(() => / malloc$/m.test(gw.proc.stderr), { timeoutMs: 5000, what: 'the start-up line' });
  const line = gw.proc.stderr.split('\n').find((l) => / malloc$/.test(l));
  const linked = execFileSync('ldd', [CAPGATE_BIN], { encoding: 'utf8' });
  if (/libjemalloc/.test(linked)) assert.match(line, /, jemalloc \d+\.\d+\.\d+ malloc$/, line);
  else assert.match(line, /, libc malloc$/, line);
  t.diagnostic(line);
});
