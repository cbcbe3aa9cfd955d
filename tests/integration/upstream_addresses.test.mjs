// upstream_addresses.test.mjs: the gateway's upstream client uses every address of the upstream
// host, not only the first. A tiny DNS server of the test's own (lib/dns_server.mjs, pointed at by
// upstream.resolver) answers for the upstream's name. An address that refuses or never answers is
// skipped within the same attempt (the call still succeeds and the breaker stays closed), is
// logged and counted in capgate_upstream_connect_failures_total; TLS still checks the configured
// name whatever address is dialled; a changed DNS answer is followed (upstream.resolve_interval_ms,
// and at once after connect failures); a name that does not resolve fails fast with 6200.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startMock, waitFor, sleep } from './lib/harness.mjs';
import {
  startGateway, gwCall, assertApiReply, journal, verdict, resetMock, runCapgate, gatewayConfig, gatewayEnv, API_PATH,
} from './lib/gateway.mjs';
import { startDnsServer } from './lib/dns_server.mjs';

let mock;
let dns;
const gateways = [];
const stoppers = [];

before(async () => {
  mock = await startMock({ tls: true }); // 127.0.0.1 only
  dns = await startDnsServer();
});
after(async () => {
  await Promise.all(gateways.map((g) => g.stop()));
  for (const s of stoppers) await s();
  await dns?.stop();
  await mock?.stop();
});

/** A gateway whose upstream is scheme://name:port, looked up through the test's DNS server. */
async function gateway(name, { tls = false, upstream = {}, workers = 1 } = {}) {
  const port = tls ? mock.tlsPort : mock.port;
  const gw = await startGateway({
    mock,
    config: {
      workers,
      upstream: {
        url: `${tls ? 'https' : 'http'}://${name}:${port}${API_PATH}`,
        sign_host: `${name}:${port}`,
        resolver: dns.address,
        v3_url: `https://127.0.0.1:${mock.tlsPort}/`, // not called here: no lookups of its own
        retries: 0, // a fallback to another address happens within the one attempt
        breaker_failures: 2,
        connect_timeout_ms: 500,
        timeout_ms: 3000,
        ...upstream,
      },
    },
  });
  gateways.push(gw);
  return gw;
}

/** Waits for a line of the gateway's log (stderr) matching re. */
async function logged(gw, re, timeoutMs = 10000) {
  await waitFor(() => re.test(gw.proc.stderr), { timeoutMs, what: `a log line matching ${re}` })
    .catch((e) => { throw new Error(`${e.message}; log:\n${gw.proc.stderr}`); });
}

/** Sends n calls, `parallel` at a time; returns the parsed replies. */
async function calls(gw, n, parallel = 8) {
  const out = [];
  for (let i = 0; i < n; i += parallel) {
    const batch = await Promise.all(Array.from({ length: Math.min(parallel, n - i) }, () => gwCall(gw, {})));
    out.push(...batch.map((r) => assertApiReply(r, 'call')));
  }
  return out;
}

function assertAllOk(replies, what) {
  const bad = replies.filter((j) => j.code !== 0);
  assert.equal(bad.length, 0, `${what}: ${bad.length} of ${replies.length} failed, e.g. ${JSON.stringify(bad[0])}`);
}

const metric = (m, name, labels) => m.get(name, labels);

/**
 * A TCP forwarder listening on host:port that passes connections to 127.0.0.1:port (the mock):
 * a second address of the same service. stop() closes the listener and every connection (the
 * address then refuses). Counts the connections it accepted.
 */
async function forwarder(host, port) {
  const socks = new Set();
  let accepted = 0;
  let bytes = 0;
  const server = net.createServer((c) => {
    accepted++;
    c.on('data', (d) => { bytes += d.length; });
    const u = net.connect(port, '127.0.0.1');
    socks.add(c).add(u);
    c.pipe(u).pipe(c);
    const done = () => { c.destroy(); u.destroy(); socks.delete(c); socks.delete(u); };
    c.on('error', done).on('close', done);
    u.on('error', done).on('close', done);
  });
  await new Promise((resolve, reject) => server.once('error', reject).listen(port, host, resolve));
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    for (const s of socks) s.destroy();
    await new Promise((resolve) => server.close(() => resolve()));
  };
  stoppers.push(stop);
  return { stop, get accepted() { return accepted; }, get bytes() { return bytes; } };
}

for (const tls of [false, true]) {
  test(`${tls ? 'https' : 'http'}://localhost → ::1 (refused) and 127.0.0.1: every call succeeds, the fallback is logged and counted`, async () => {
    dns.set('localhost', { A: ['127.0.0.1'], AAAA: ['::1'] });
    // over TLS the certificate names localhost: checked whatever address is dialled
    const gw = await gateway('localhost', { tls, upstream: { max_connections: 16 } });
    // parallel calls open several connections, which rotate over both addresses
    assertAllOk(await calls(gw, 40, 10), 'calls to localhost');
    await logged(gw, /localhost resolves to 127\.0\.0\.1, ::1/);
    assert.match(gw.proc.stderr, /address ::1 failed: [^\n]*next address/);
    const m = await gw.metrics();
    assert.ok(metric(m, 'capgate_upstream_connect_failures_total', { api: 'v2' }) >= 1, 'a connect failure counted');
    assert.equal(metric(m, 'capgate_upstream_addresses', { api: 'v2' }), 2);
    assert.equal(metric(m, 'capgate_upstream_breaker_state', { api: 'v2' }), 0, 'the breaker stays closed');
  });
}

test('system resolver: /etc/hosts lists ::1 first for localhost, the upstream listens on 127.0.0.1 only', async (t) => {
  // capgate in a mount namespace of its own whose /etc/hosts says "::1 localhost" first (evdns
  // reads it; the machine's file is untouched); skipped where unshare -m is not allowed
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'capgate-hosts-'));
  const hosts = path.join(dir, 'hosts');
  fs.writeFileSync(hosts, '::1 localhost\n127.0.0.1 localhost\n');
  stoppers.push(async () => fs.rmSync(dir, { recursive: true, force: true }));
  const mount = `mount --bind ${hosts} /etc/hosts`;
  if (spawnSync('unshare', ['-m', 'sh', '-c', mount], { stdio: 'ignore' }).status !== 0) {
    return t.skip('unshare -m / mount --bind not permitted here');
  }
  const gw = await startGateway({
    mock,
    launcher: ['unshare', '-m', 'sh', '-c', `${mount} && exec "$0" "$@"`],
    config: {
      workers: 1,
      upstream: {
        url: `http://localhost:${mock.port}${API_PATH}`,
        sign_host: `localhost:${mock.port}`,
        v3_url: `https://127.0.0.1:${mock.tlsPort}/`,
        retries: 0,
        breaker_failures: 2,
      },
    },
  });
  gateways.push(gw);
  assertAllOk(await calls(gw, 10, 1), 'calls to localhost');
  await logged(gw, /localhost resolves to ::1, 127\.0\.0\.1/);
  assert.match(gw.proc.stderr, /address ::1 failed: connection refused/);
  const m = await gw.metrics();
  assert.equal(metric(m, 'capgate_upstream_breaker_state', { api: 'v2' }), 0, 'the breaker stays closed');
});

test('first address refuses (A 127.0.0.2, 127.0.0.1): a lone call still succeeds', async () => {
  dns.set('two.test', { A: ['127.0.0.2', '127.0.0.1'] });
  const gw = await gateway('two.test');
  // one at a time: each new connection starts at the next address in turn
  assertAllOk(await calls(gw, 6, 1), 'calls to two.test');
  await logged(gw, /two\.test resolves to 127\.0\.0\.2, 127\.0\.0\.1/);
  assert.match(gw.proc.stderr, /address 127\.0\.0\.2 failed: connection refused/);
});

test('https://csec.api.qcloud.com via 127.0.0.2 (refused) and 127.0.0.1: TLS checks the name, Host is the name', async () => {
  dns.set('csec.api.qcloud.com', { A: ['127.0.0.2', '127.0.0.1'] });
  await resetMock(mock);
  const gw = await gateway('csec.api.qcloud.com', { tls: true });
  assertAllOk(await calls(gw, 12, 4), 'calls over TLS');
  // the mock checks each signature against the Host header it got: signed for the name, sent as it
  const entries = await journal(mock);
  assert.ok(entries.length >= 12);
  for (const e of entries.slice(-12)) assert.equal(verdict(e), 'ok', JSON.stringify(e));
});

test('https with a name the certificate does not hold: refused although the address is the mock', async () => {
  dns.set('wrong.test', { A: ['127.0.0.1'] });
  const gw = await gateway('wrong.test', { tls: true, upstream: { breaker_failures: 1000 } });
  const [j] = await calls(gw, 1, 1);
  assert.equal(j.code, 6200, JSON.stringify(j));
  assert.match(j.message, /certificate/i);
});

test('one of two addresses stops answering mid-run: calls keep succeeding, the breaker stays closed', async () => {
  const fwd = await forwarder('127.0.0.2', mock.port);
  dns.set('pair.test', { A: ['127.0.0.2', '127.0.0.1'] });
  // retries 1: a keep-alive connection the stop closed may be picked before its close is seen
  const gw = await gateway('pair.test', { upstream: { max_connections: 8, retries: 1 } });
  assertAllOk(await calls(gw, 24, 6), 'before the stop');
  assert.ok(fwd.accepted > 0, 'some connections went through the second address');
  await fwd.stop();
  assertAllOk(await calls(gw, 48, 6), 'after 127.0.0.2 stopped');
  const m = await gw.metrics();
  assert.equal(metric(m, 'capgate_upstream_breaker_state', { api: 'v2' }), 0, 'the breaker stays closed');
  assert.ok(metric(m, 'capgate_upstream_connect_failures_total', { api: 'v2' }) >= 1);
});

/**
 * A listener on 127.0.0.3 at the mock's port that never accepts: its backlog of 0 fills with one
 * connection of its own, and later connects are never answered (the SYN is dropped), as from a
 * host gone dark. Needs python3 (node accepts every connection); false when it could not start.
 */
async function blackHole(port) {
  const py = 'import socket,time\n' +
    `s=socket.socket();s.bind(("127.0.0.3",${port}));s.listen(0)\n` +
    `c=socket.socket();c.connect(("127.0.0.3",${port}))\n` +
    'print("ready",flush=True)\ntime.sleep(120)\n';
  const child = spawn('python3', ['-c', py], { stdio: ['ignore', 'pipe', 'ignore'] });
  stoppers.push(async () => { child.kill(); });
  return new Promise((resolve) => {
    child.on('error', () => resolve(false));
    child.on('exit', () => resolve(false));
    child.stdout.once('data', () => resolve(true));
  });
}

test('an address that never answers (connect timeout): the attempt goes on with the next one', async (t) => {
  if (!(await blackHole(mock.port))) return t.skip('no black hole (python3 missing, or the port is taken on 127.0.0.3)');
  dns.set('dark.test', { A: ['127.0.0.3', '127.0.0.1'] });
  const gw = await gateway('dark.test', { upstream: { connect_timeout_ms: 300 } });
  assertAllOk(await calls(gw, 6, 1), 'calls to dark.test');
  assert.match(gw.proc.stderr, /address 127\.0\.0\.3 failed: upstream connect to dark\.test:\d+ timed out/);
  const m = await gw.metrics();
  assert.equal(metric(m, 'capgate_upstream_breaker_state', { api: 'v2' }), 0, 'the breaker stays closed');
});

test('the DNS answer changes: the gateway follows it, keep-alive connections to the old address too', async () => {
  const fwd = await forwarder('127.0.0.4', mock.port);
  dns.set('moving.test', { A: ['127.0.0.4'] });
  const gw = await gateway('moving.test', { upstream: { resolve_interval_ms: 1000 } });
  assertAllOk(await calls(gw, 4, 2), 'via 127.0.0.4');
  assert.ok(fwd.accepted > 0 && fwd.bytes > 0, 'the calls went to 127.0.0.4');
  dns.set('moving.test', { A: ['127.0.0.1'] });
  await logged(gw, /moving\.test now resolves to 127\.0\.0\.1 \(was 127\.0\.0\.4\)/, 8000);
  // 127.0.0.4 still answers, but is no longer the name's: its idle keep-alive connections are
  // closed, and no request goes there
  const before = fwd.bytes;
  assertAllOk(await calls(gw, 8, 2), 'after the move');
  assert.equal(fwd.bytes, before, 'no request went to the old address');
  // the periodic lookups go on while calls come (A and AAAA each time)
  const asked = dns.count('moving.test');
  assertAllOk(await calls(gw, 2, 1), 'more calls');
  await waitFor(() => dns.count('moving.test') > asked, { timeoutMs: 5000, what: 'another lookup' });
});

test('the name stops resolving: the addresses known stay in use', async () => {
  dns.set('gone.test', { A: ['127.0.0.1'] });
  const gw = await gateway('gone.test', { upstream: { resolve_interval_ms: 1000 } });
  assertAllOk(await calls(gw, 2, 1), 'while the name resolves');
  dns.remove('gone.test');
  // calls keep coming, so the lookups go on, and fail
  await waitFor(async () => {
    assertAllOk(await calls(gw, 1, 1), 'while the name does not resolve');
    return /could not resolve upstream host gone\.test[^\n]*keeping the 1 address\(es\) known/.test(gw.proc.stderr);
  }, { timeoutMs: 10000, intervalMs: 200, what: 'a failed lookup' });
  assertAllOk(await calls(gw, 4, 2), 'after the failed lookup');
  const m = await gw.metrics();
  assert.equal(metric(m, 'capgate_upstream_addresses', { api: 'v2' }), 1);
});

test('a name that does not resolve: 6200 naming the lookup, then calls succeed once it does', async () => {
  const gw = await gateway('late.test', { upstream: { breaker_failures: 1000 } });
  // the first call starts the first lookup (an upstream never called is never looked up)
  assert.equal(dns.count('late.test'), 0);
  const [j] = await calls(gw, 1, 1);
  assert.equal(j.code, 6200, JSON.stringify(j));
  assert.match(j.message, /could not resolve upstream host late\.test/);
  await logged(gw, /could not resolve upstream host late\.test/);
  const m = await gw.metrics();
  assert.ok(metric(m, 'capgate_upstream_dns_failures_total', { api: 'v2' }) >= 1);
  dns.set('late.test', { A: ['127.0.0.1'] });
  // within a second of the failed lookup a call fails at once; after it, a call looks the name up
  let last;
  await waitFor(async () => {
    [last] = await calls(gw, 1, 1);
    return last.code === 0;
  }, { timeoutMs: 10000, intervalMs: 200, what: 'a call that succeeds' });
  await logged(gw, /late\.test resolves to 127\.0\.0\.1/);
  assertAllOk(await calls(gw, 4, 2), 'after the name appeared');
});

test('an upstream not called is not looked up; one left idle is not looked up every interval', async () => {
  dns.set('idle.test', { A: ['127.0.0.1'] });
  const gw = await gateway('idle.test', { upstream: { resolve_interval_ms: 1000 } });
  await sleep(1500);
  assert.equal(dns.count('idle.test'), 0, 'no lookup before the first call');
  assertAllOk(await calls(gw, 2, 1), 'calls to idle.test');
  const asked = dns.count('idle.test');
  assert.ok(asked >= 1);
  // one more interval looks up once more (calls came since the last lookup started); then none
  await sleep(3500);
  const later = dns.count('idle.test');
  await sleep(2500);
  assert.equal(dns.count('idle.test'), later, 'no lookups while idle');
  // the next call starts one, without waiting for it
  assertAllOk(await calls(gw, 1, 1), 'after the idle time');
  await waitFor(() => dns.count('idle.test') > later, { timeoutMs: 5000, what: 'a lookup after the idle time' });
});

test('upstream.resolver that is not an address is refused by --check-config', async () => {
  const { dir, config } = gatewayConfig(mock, { upstream: { resolver: 'dns.example:53' } });
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, 'capgate.json');
  fs.writeFileSync(file, JSON.stringify(config));
  const r = await runCapgate(['--check-config', file], { env: gatewayEnv() });
  assert.notEqual(r.code, 0);
  assert.match(r.stderr + r.stdout, /upstream\.resolver[^\n]*not a nameserver address/);
  fs.rmSync(dir, { recursive: true, force: true });
});
