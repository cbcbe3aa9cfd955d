// admin_token.test.mjs: the admin listener's bearer token (admin.token_file / token_env). Without
// the token everything but /healthz and /readyz answers 401 in JSON; with it /metrics,
// /admin/stats, /admin/audit and /admin/config answer, and /admin/config is the running config
// with every secret masked (the token too). A non-loopback admin_listen with no token does not
// start (nothing is bound: the config check refuses it first); with allow_unauthenticated it is
// accepted with a warning (checked with --check-config, so no non-loopback port is opened).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startMock } from './lib/harness.mjs';
import { startGateway, gatewayConfig, runCapgate, SECRETS } from './lib/gateway.mjs';

const TOKEN = `admin-token-${process.pid}-${Date.now()}`;
let mock;
let gw;
before(async () => {
  mock = await startMock({ tls: true });
  const { dir } = gatewayConfig(mock);
  const tokenFile = path.join(dir, 'admin_token');
  fs.writeFileSync(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
  gw = await startGateway({ mock, config: { admin: { token_file: tokenFile } } });
});
after(async () => {
  await gw?.stop();
  await mock?.stop();
});

const PROTECTED = ['/metrics', '/admin/stats', '/admin/audit', '/admin/config'];

test('without the token: 401 in JSON naming what is missing; the probes stay open', async () => {
  for (const p of PROTECTED) {
    const r = await gw.admin(p);
    assert.equal(r.status, 401, `${p}: ${r.status} ${r.body}`);
    assert.match(r.json?.error ?? '', /Authorization: Bearer/, `${p}: ${r.body}`);
    const wrong = await gw.admin(p, { headers: { authorization: `Bearer ${TOKEN}x` } });
    assert.equal(wrong.status, 401, `${p} with a wrong token: ${wrong.status}`);
    const prefix = await gw.admin(p, { headers: { authorization: `Bearer ${TOKEN.slice(0, -1)}` } });
    assert.equal(prefix.status, 401, `${p} with a prefix of the token: ${prefix.status}`);
    const basic = await gw.admin(p, { headers: { authorization: `Basic ${TOKEN}` } });
    assert.equal(basic.status, 401, `${p} with another scheme: ${basic.status}`);
  }
  const h = await gw.admin('/healthz');
  assert.equal(h.status, 200, h.body);
  const r = await gw.admin('/readyz');
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json?.status, 'ready');
});

test('with the token: every admin endpoint answers; /admin/config is the running config, masked', async () => {
  const auth = { authorization: `Bearer ${TOKEN}` };
  for (const p of PROTECTED) {
    const r = await gw.admin(p, { headers: auth });
    assert.equal(r.status, 200, `${p}: ${r.status} ${r.body}`);
  }
  const lower = await gw.admin('/metrics', { headers: { authorization: `bearer ${TOKEN}` } });
  assert.equal(lower.status, 200, 'the scheme is case-insensitive');
  const c = await gw.admin('/admin/config', { headers: auth });
  assert.ok(c.json, c.body);
  assert.equal(c.json.upstream.url, gw.config.upstream.url);
  assert.equal(c.json.admin.token, '***', JSON.stringify(c.json.admin));
  assert.ok(!c.body.includes(TOKEN), 'the admin token is not shown');
  for (const s of SECRETS) assert.ok(!c.body.includes(s), `a secret appears in /admin/config: ${s}`);
});

test('a non-loopback admin_listen without a token does not start; allow_unauthenticated is warned', async () => {
  const { dir, config } = gatewayConfig(mock, { admin_listen: '0.0.0.0:0' });
  const file = path.join(dir, 'open-admin.json');
  fs.writeFileSync(file, JSON.stringify(config, null, 2));
  const r = await runCapgate(['--config', file], { timeoutMs: 5000 });
  assert.equal(r.code, 1, `exit ${r.code}; stdout: ${r.stdout}; stderr: ${r.stderr}`);
  assert.match(r.stderr, /admin_listen: 0\.0\.0\.0 is not a loopback address and admin has no token/, r.stderr);
  assert.ok(!/listening/.test(r.stdout), `nothing was bound: ${r.stdout}`);

  fs.writeFileSync(file, JSON.stringify({ ...config, admin: { allow_unauthenticated: true } }, null, 2));
  const ok = await runCapgate(['--check-config', file]);
  assert.equal(ok.code, 0, `exit ${ok.code}; stderr: ${ok.stderr}`);
  assert.match(ok.stderr, /admin_listen 0\.0\.0\.0 is reachable from other hosts without a token/, ok.stderr);
  fs.rmSync(dir, { recursive: true, force: true });
});
