// check_config_paths.test.mjs: relative paths in the config are relative to the config file's
// directory, whatever directory capgate starts in; --check-config checks that the spool
// directory and the audit file can be written, so a config it passes starts and one it refuses
// does not start either.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startMock, waitFor, Proc, CAPGATE_BIN } from './lib/harness.mjs';
import { gatewayConfig, gatewayEnv, runCapgate, gwCall, APPS } from './lib/gateway.mjs';

let mock;
let elsewhere;
before(async () => {
  mock = await startMock({ tls: true });
  elsewhere = fs.mkdtempSync(path.join(os.tmpdir(), 'capgate-cwd-'));
});
after(async () => {
  await mock?.stop();
  fs.rmSync(elsewhere, { recursive: true, force: true });
});

// dir/conf/capgate.json with a relative spool and audit file.
function layout(audit) {
  const { dir, config } = gatewayConfig(mock, {});
  const confDir = path.join(dir, 'conf');
  fs.mkdirSync(path.join(confDir, 'logs'), { recursive: true });
  config.audit = { spool_dir: 'spool', ...audit };
  const file = path.join(confDir, 'capgate.json');
  fs.writeFileSync(file, JSON.stringify(config, null, 2));
  return { dir, confDir, file, config };
}

test('--check-config from another directory resolves a relative spool under the config, and it starts', async () => {
  // Without redis or audit.file the audit goes to <spool_dir>/audit.jsonl: the spool is used.
  const { dir, confDir, file } = layout({});
  const r = await runCapgate(['--check-config', file], { cwd: elsewhere });
  assert.equal(r.code, 0, `exit ${r.code}; stderr: ${r.stderr}`);
  const dumped = JSON.parse(r.stdout);
  assert.equal(dumped.audit.spool_dir, path.join(confDir, 'spool'));
  const withFile = layout({ file: 'logs/audit.jsonl' });
  const rf = await runCapgate(['--check-config', withFile.file], { cwd: elsewhere });
  assert.equal(rf.code, 0, `exit ${rf.code}; stderr: ${rf.stderr}`);
  assert.equal(JSON.parse(rf.stdout).audit.file, path.join(withFile.confDir, 'logs/audit.jsonl'));
  fs.rmSync(withFile.dir, { recursive: true, force: true });
  assert.ok(!fs.existsSync(path.join(elsewhere, 'spool')), '--check-config creates nothing in the working directory');

  // The same file starts from that directory, and writes where the check looked.
  const proc = new Proc(CAPGATE_BIN, ['--config', file], { env: gatewayEnv(), cwd: elsewhere });
  try {
    const line = await proc.waitLine(/^capgate listening on http:\/\//);
    const base = line.replace(/^capgate listening on /, '').trim().replace(/\/$/, '');
    const host = new URL(base).host;
    const reply = await gwCall({ base, host }, { app: APPS.token });
    assert.equal(reply.json?.code, 0, reply.body);
    const auditFile = path.join(confDir, 'spool/audit.jsonl');
    await waitFor(() => fs.existsSync(auditFile) && fs.readFileSync(auditFile, 'utf8').includes(reply.headers['x-request-id']),
      { timeoutMs: 5000, what: `the audit record in ${auditFile}` });
    assert.deepEqual(fs.readdirSync(elsewhere), [], 'nothing is written in the working directory');
  } finally {
    await proc.stop();
  }
  fs.rmSync(dir, { recursive: true, force: true });
});

test('an audit file that cannot be created fails --check-config and the start alike', async () => {
  const { dir, file } = layout({ file: 'no-such-dir/audit.jsonl' });
  const r = await runCapgate(['--check-config', file], { cwd: elsewhere });
  assert.equal(r.code, 1, `exit ${r.code}; stdout: ${r.stdout}`);
  assert.match(r.stderr, /audit\.file: cannot create .*no-such-dir\/audit\.jsonl/, r.stderr);
  const s = await runCapgate(['--config', file], { cwd: elsewhere, timeoutMs: 5000 });
  assert.equal(s.code, 1, `the start fails too: exit ${s.code}; stderr: ${s.stderr}`);
  assert.match(s.stderr, /audit/, s.stderr);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a read-only audit directory and spool parent fail --check-config (not as root)', { skip: process.getuid?.() === 0 ? 'root may write anywhere' : false }, async () => {
  const { dir, confDir, file } = layout({ file: 'logs/audit.jsonl' });
  fs.chmodSync(path.join(confDir, 'logs'), 0o500);
  const r = await runCapgate(['--check-config', file], { cwd: elsewhere });
  assert.equal(r.code, 1, `exit ${r.code}`);
  assert.match(r.stderr, /audit\.file: cannot create/, r.stderr);
  fs.chmodSync(path.join(confDir, 'logs'), 0o700);
  fs.chmodSync(confDir, 0o500);
  const s = await runCapgate(['--check-config', file], { cwd: elsewhere });
  assert.equal(s.code, 1, `exit ${s.code}`);
  assert.match(s.stderr, /audit\.spool_dir: .* is not writable/, s.stderr);
  fs.chmodSync(confDir, 0o700);
  fs.rmSync(dir, { recursive: true, force: true });
});
