// gateway_secrets.test.mjs: secrets kept out of errors, the environment and core dumps.
// --check-config refuses a literal secret with a control character, or a secret of the wrong
// type, without echoing it; a running capgate has removed the secrets it read from its
// environment (/proc/PID/environ), runs with RLIMIT_CORE 0 unless --allow-core-dump, and a SIGHUP
// reload re-uses the value of an unchanged *_env while a new, unset one is refused with a
// pointer to *_file.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startMock, waitFor, Proc, MOCK_SECRET_KEY, CAPGATE_BIN } from './lib/harness.mjs';
import {
  gatewayConfig, gatewayEnv, runCapgate, gwCall, APPS, SECRETS,
} from './lib/gateway.mjs';

let mock;
const procs = [];
before(async () => {
  mock = await startMock({ tls: true });
});
after(async () => {
  await Promise.all(procs.map((p) => p.stop()));
  await mock?.stop();
});

function writeConfig(config) {
  const { dir, config: cfg } = gatewayConfig(mock, config);
  fs.mkdirSync(path.join(dir, 'spool'), { recursive: true });
  const file = path.join(dir, 'capgate.json');
  fs.writeFileSync(file, `${JSON.stringify(cfg, null, 2)}\n`);
  return { dir, file, cfg };
}

test('--check-config: a literal secret with a control character is refused, not echoed', async () => {
  const secret = 'literal-secret-4f1d';
  const { dir, file } = writeConfig();
  // JSON.stringify would escape the control character; written raw it is a JSON syntax error
  // that jansson reports "near" the string.
  const text = fs.readFileSync(file, 'utf8').replace(
    /"secret_key_env": "CAPGATE_SECRET_KEY"/, `"secret_key": "${secret}\u0001tail-9c"`);
  assert.ok(text.includes(secret));
  fs.writeFileSync(file, text);
  const line = text.split('\n').findIndex((l) => l.includes(secret)) + 1;
  const r = await runCapgate(['--check-config', file]);
  fs.rmSync(dir, { recursive: true, force: true });
  assert.equal(r.code, 1, `exit ${r.code}; stderr: ${r.stderr}`);
  const out = r.stdout + r.stderr;
  assert.match(out, new RegExp(`:${line}:\\d+: syntax error`), out);
  for (const s of [secret, 'literal-secret', 'tail-9c', '\u0001']) {
    assert.ok(!out.includes(s), `the output shows ${JSON.stringify(s)}: ${out}`);
  }
});

test('--check-config: a secret of the wrong type is named by its type, not echoed', async () => {
  for (const [value, shown] of [[12345678901, '12345678901'], [['arr-secret-77'], 'arr-secret-77'],
    [{ k: 'obj-secret-78' }, 'obj-secret-78']]) {
    const { dir, file } = writeConfig({
      apps: [{ name: APPS.extra.name, auth: 'token', token: value }],
    });
    const r = await runCapgate(['--check-config', file]);
    fs.rmSync(dir, { recursive: true, force: true });
    assert.equal(r.code, 1, `exit ${r.code}; stderr: ${r.stderr}`);
    const out = r.stdout + r.stderr;
    assert.match(out, /apps\[0\]\.token: must be a non-empty string; got /, out);
    assert.ok(!out.includes(shown), `the output shows ${shown}: ${out}`);
    for (const s of SECRETS) assert.ok(!out.includes(s), `a secret appears in the output: ${s}`);
  }
});

/** capgate --config file [extra] under sh with a soft RLIMIT_CORE of 4096 blocks. */
async function startUnderCoreLimit(file, extra = [], env = {}) {
  const proc = new Proc('/bin/sh', ['-c', 'ulimit -S -c 4096 && exec "$0" "$@"', CAPGATE_BIN,
    '--config', file, ...extra], { env: gatewayEnv(env) });
  procs.push(proc);
  const line = await proc.waitLine(/^capgate listening on http:\/\//);
  const base = line.replace(/^capgate listening on /, '').trim().replace(/\/$/, '');
  const port = Number(new URL(base).port);
  return { proc, base, host: `127.0.0.1:${port}`, pid: proc.child.pid };
}

function coreSoftLimit(pid) {
  const l = fs.readFileSync(`/proc/${pid}/limits`, 'utf8').split('\n')
    .find((x) => x.startsWith('Max core file size'));
  return l.trim().split(/\s{2,}/)[1];
}

test('running: secrets gone from the environment, no core dumps, reload re-uses *_env', async () => {
  const { dir, file, cfg } = writeConfig();
  const gw = await startUnderCoreLimit(file, [], { CAPGATE_TEST_MARKER: 'still-here' });
  assert.equal(coreSoftLimit(gw.pid), '0', 'RLIMIT_CORE is 0 by default');
  const environ = fs.readFileSync(`/proc/${gw.pid}/environ`, 'latin1');
  assert.ok(environ.includes('CAPGATE_TEST_MARKER=still-here'), 'other variables stay');
  // Read at start: the upstream key and the three apps' secrets. The extra app's variable is
  // not named by the config, so it stays for a later reload.
  for (const s of [MOCK_SECRET_KEY, APPS.sig.secretKey, APPS.token.token, APPS.limited.secretKey]) {
    assert.ok(!environ.includes(s), `a secret is still in /proc/PID/environ: ${s}`);
  }
  assert.ok(environ.includes(`${APPS.extra.env}=`), 'an unread variable stays');

  const call = async () => {
    const r = await gwCall(gw);
    assert.equal(r.status, 200, r.body);
    assert.equal(JSON.parse(r.body).code, 0, r.body);
  };
  await call();

  // The same file again: every *_env was read before and is gone from the environment now.
  const applied = () => (gw.proc.stderr.match(/reload: config \S+ applied/g) || []).length;
  gw.proc.signal('SIGHUP');
  await waitFor(() => applied() === 1, { what: 'the first reload applied' });
  await call();
  await call();

  // A new app whose variable was never in the environment: refused, pointing at token_file.
  fs.writeFileSync(file, `${JSON.stringify({
    ...cfg, apps: [...cfg.apps, { name: 'late-app', auth: 'token', token_env: 'GW_LATE_TOKEN' }],
  }, null, 2)}\n`);
  gw.proc.signal('SIGHUP');
  const refused = /reload refused: .*GW_LATE_TOKEN is not set \(a secret added after start goes in token_file\)/;
  await waitFor(() => refused.test(gw.proc.stderr), { what: 'the reload refused' });
  await call();
  assert.equal(applied(), 1);
  await gw.proc.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('--allow-core-dump keeps the inherited core limit', async () => {
  const { dir, file } = writeConfig();
  // An ASan build sets RLIMIT_CORE to 0 itself unless told not to (its disable_coredump option);
  // other builds ignore ASAN_OPTIONS.
  const asan = [process.env.ASAN_OPTIONS, 'disable_coredump=0'].filter(Boolean).join(':');
  const gw = await startUnderCoreLimit(file, ['--allow-core-dump'], { ASAN_OPTIONS: asan });
  // ulimit -c 4096 counts 512-byte blocks; /proc/PID/limits shows bytes
  assert.equal(coreSoftLimit(gw.pid), String(4096 * 512), 'the limit it was started with');
  await waitFor(() => /--allow-core-dump: the process stays dumpable/.test(gw.proc.stderr),
    { what: 'the warning about --allow-core-dump' });
  await gw.proc.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});
