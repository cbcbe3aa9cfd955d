// trusted_proxies.test.mjs: X-Forwarded-For and X-Real-IP decide the audit's client_ip only when
// the peer is in trusted_proxies. The listed proxy connects from 127.0.0.1; the spoofing client
// from 127.0.0.2 (another loopback address), so both talk to one gateway at once. A SIGHUP that
// drops 127.0.0.1 from the list makes its headers count for nothing too.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { startMock, tmpDir, waitFor } from './lib/harness.mjs';
import { startGateway, gwCall, APPS } from './lib/gateway.mjs';

let mock;
let gw;
let dir;
let file;
before(async () => {
  mock = await startMock({ tls: true });
  dir = tmpDir('capgate-realip-');
  file = path.join(dir, 'audit.jsonl');
  gw = await startGateway({ mock, config: { trusted_proxies: ['127.0.0.1/32', 'fd00::/8'], audit: { file } } });
});
after(async () => {
  await gw?.stop();
  await mock?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

/** The audit record of the reply r (by X-Request-Id), once the sink wrote it. */
async function recordOf(r) {
  const id = r.headers['x-request-id'];
  assert.match(id ?? '', /^[0-9a-f]{16}$/, r.body);
  let rec;
  await waitFor(() => {
    if (!fs.existsSync(file)) return false;
    rec = fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l))
      .find((x) => x.request_id === id);
    return rec;
  }, { timeoutMs: 5000, intervalMs: 30, what: `the audit record of ${id}` });
  return rec;
}

const fromProxy = (headers, extra = {}) => gwCall(gw, { app: APPS.token, headers, ...extra });
const spoofer = () => new http.Agent({ localAddress: '127.0.0.2' });

test('a listed proxy: X-Forwarded-For (rightmost untrusted hop) and X-Real-IP name the client', async () => {
  let r = await fromProxy({ 'X-Forwarded-For': '198.51.100.7' });
  assert.equal(r.json?.code, 0, r.body);
  assert.equal((await recordOf(r)).client_ip, '198.51.100.7');

  // The client wrote the left part itself; the proxies appended the rest.
  r = await fromProxy({ 'X-Forwarded-For': '6.6.6.6, 198.51.100.8, 127.0.0.1' });
  assert.equal((await recordOf(r)).client_ip, '198.51.100.8');

  r = await fromProxy({ 'X-Real-IP': '2001:db8::5' });
  assert.equal((await recordOf(r)).client_ip, '2001:db8::5');

  // Not an address: the proxy itself is what is known.
  r = await fromProxy({ 'X-Forwarded-For': 'unknown' });
  assert.equal((await recordOf(r)).client_ip, '127.0.0.1');
  assert.equal(r.json?.code, 0, r.body);
});

test('a spoofing client: its X-Forwarded-For and X-Real-IP are ignored', async () => {
  const agent = spoofer();
  try {
    let r = await fromProxy({ 'X-Forwarded-For': '198.51.100.66' }, { agent });
    assert.equal(r.json?.code, 0, r.body);
    assert.equal((await recordOf(r)).client_ip, '127.0.0.2');
    r = await fromProxy({ 'X-Real-IP': '198.51.100.67', 'X-Forwarded-For': '127.0.0.1' }, { agent });
    assert.equal((await recordOf(r)).client_ip, '127.0.0.2');
  } finally {
    agent.destroy();
  }
});

test('SIGHUP applies trusted_proxies: once 127.0.0.1 is not listed its headers are ignored too', async () => {
  const before = (gw.proc.stderr.match(/reload: config \S+ applied/g) || []).length;
  gw.writeConfig({ ...gw.config, trusted_proxies: ['10.0.0.0/8'] });
  gw.reload();
  await waitFor(() => (gw.proc.stderr.match(/reload: config \S+ applied/g) || []).length > before,
    { timeoutMs: 5000, intervalMs: 30, what: 'the reload' });
  assert.match(gw.proc.stderr, /reload: trusted_proxies \["127.0.0.1\/32","fd00::\/8"\] -> \["10.0.0.0\/8"\]/);
  const r = await fromProxy({ 'X-Forwarded-For': '198.51.100.9' });
  assert.equal((await recordOf(r)).client_ip, '127.0.0.1');

  // A bad block is a config error naming it; the running list stays.
  gw.writeConfig({ ...gw.config, trusted_proxies: ['10.0.0.1/8'] });
  gw.reload();
  await waitFor(() => /reload refused: .*trusted_proxies\[0\]: 10\.0\.0\.1\/8 has bits set past its \/8 prefix/.test(gw.proc.stderr),
    { timeoutMs: 5000, intervalMs: 30, what: 'the refused reload' });
  const r2 = await fromProxy({ 'X-Forwarded-For': '198.51.100.10' });
  assert.equal((await recordOf(r2)).client_ip, '127.0.0.1');
});
