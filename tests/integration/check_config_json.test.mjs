// check_config_json.test.mjs: `capgate --check-config FILE --format json` prints a config that
// loads again and dumps the same (issue 14, item 3). A secret from the environment or a file is
// written under the key it came from (secret_key_env: NAME, token_file: PATH); one written in the
// file as "***", its key path listed in "_masked", and the loader refuses "***" so it must be
// given again. Relative paths come out absolute, so the dump loads from any directory.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startMock, Proc, CAPGATE_BIN } from './lib/harness.mjs';
import { gatewayConfig, gatewayEnv, runCapgate, gwCall, APPS, SECRETS } from './lib/gateway.mjs';

const FILE_SECRET = 'check-json-file-secret-4e1a';
const ADMIN_TOKEN = 'check-json-admin-token-8c2f';
const REDIS_PASSWORD = 'check-json-redis-pw-19bd';
const ALL_SECRETS = [...SECRETS, FILE_SECRET, ADMIN_TOKEN, REDIS_PASSWORD];

let mock;
const dirs = [];
const newDir = (prefix) => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  dirs.push(d);
  return d;
};
before(async () => {
  mock = await startMock({ tls: true });
});
after(async () => {
  await mock?.stop();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

/** conf/capgate.json under a new directory, with files beside it and relative paths. */
function layout(over) {
  const { dir, config } = gatewayConfig(mock, {});
  dirs.push(dir);
  const confDir = path.join(dir, 'conf');
  fs.mkdirSync(path.join(confDir, 'secrets'), { recursive: true });
  fs.writeFileSync(path.join(confDir, 'secrets/app.key'), `${FILE_SECRET}\n`);
  fs.writeFileSync(path.join(confDir, 'secrets/admin.token'), `${ADMIN_TOKEN}\n`);
  fs.writeFileSync(path.join(confDir, 'secrets/redis.pw'), `${REDIS_PASSWORD}\n`);
  const cfg = { ...config, ...over(config) };
  const file = path.join(confDir, 'capgate.json');
  fs.writeFileSync(file, JSON.stringify(cfg, null, 2));
  return { confDir, file };
}

const assertNoSecret = (text, what) => {
  for (const s of ALL_SECRETS) assert.ok(!text.includes(s), `${what} holds the secret ${s.slice(0, 6)}...`);
};

test('secrets from the environment and files: the dump loads again, from anywhere, and dumps the same', async () => {
  const { confDir, file } = layout((c) => ({
    admin: { token_file: 'secrets/admin.token' },
    redis: { url: 'redis://127.0.0.1:1/0', password_file: 'secrets/redis.pw' },
    audit: { spool_dir: 'spool', file: 'audit.jsonl' },
    apps: [...c.apps, { name: 'file-app', auth: 'signature', secret_id: 'AKIDcheckJsonFileApp0000000000000000',
      secret_key_file: 'secrets/app.key' }],
  }));
  const cwd1 = newDir('capgate-cwd-');
  const r1 = await runCapgate(['--check-config', file, '--format', 'json'], { cwd: cwd1 });
  assert.equal(r1.code, 0, `exit ${r1.code}; stderr: ${r1.stderr}`);
  assertNoSecret(r1.stdout, 'the dump');
  const d1 = JSON.parse(r1.stdout);
  assert.deepEqual(d1._masked, [], 'nothing masked: every secret names its source');
  assert.equal(d1.upstream.secret_key_env, 'CAPGATE_SECRET_KEY');
  assert.equal(d1.upstream.secret_id_env, 'CAPGATE_SECRET_ID');
  assert.equal(d1.apps[0].secret_key_env, APPS.sig.env);
  assert.equal(d1.apps[1].token_env, APPS.token.env);
  assert.equal(d1.apps[3].secret_key_file, path.join(confDir, 'secrets/app.key'));
  assert.equal(d1.admin.token_file, path.join(confDir, 'secrets/admin.token'));
  assert.equal(d1.redis.password_file, path.join(confDir, 'secrets/redis.pw'));
  assert.equal(d1.redis.url, 'redis://127.0.0.1:1/0', 'no password in the url');
  assert.equal(d1.audit.spool_dir, path.join(confDir, 'spool'));
  assert.ok(path.isAbsolute(d1.audit.file) && path.isAbsolute(d1.upstream.ca_file), 'paths are absolute');
  for (const k of ['secret_key', 'token', 'password', 'pii_key']) {
    assert.ok(!r1.stdout.includes(`"${k}":`), `no masked "${k}" key: ${k} sources are named`);
  }

  // The dump, saved in another directory and checked from a third one: the same dump.
  const saved = path.join(newDir('capgate-dump-'), 'dump.json');
  fs.writeFileSync(saved, r1.stdout);
  const r2 = await runCapgate(['--check-config', saved, '--format', 'json'], { cwd: newDir('capgate-cwd-') });
  assert.equal(r2.code, 0, `the dump loads again: exit ${r2.code}; stderr: ${r2.stderr}`);
  assert.equal(r2.stdout, r1.stdout, 'dump -> load -> the same dump');
  // and the text format still reads it (--format text is the default)
  const r3 = await runCapgate(['--check-config', saved, '--format', 'text'], { cwd: cwd1 });
  const r4 = await runCapgate(['--check-config', saved], { cwd: cwd1 });
  assert.equal(r3.code, 0, r3.stderr);
  assert.equal(r3.stdout, r4.stdout, '--format text is the default');
});

test('the dump of a config without redis starts a gateway that answers', async () => {
  const { file } = layout(() => ({ audit: { spool_dir: 'spool' } }));
  const r = await runCapgate(['--check-config', file, '--format', 'json'], { cwd: newDir('capgate-cwd-') });
  assert.equal(r.code, 0, r.stderr);
  const saved = path.join(newDir('capgate-dump-'), 'dump.json');
  // port 0 listeners, so the dump starts beside other tests
  const d = JSON.parse(r.stdout);
  assert.equal(d.listen, '127.0.0.1:0');
  fs.writeFileSync(saved, r.stdout);
  const proc = new Proc(CAPGATE_BIN, ['--config', saved], { env: gatewayEnv(), cwd: newDir('capgate-cwd-') });
  try {
    const line = await proc.waitLine(/^capgate listening on http:\/\//);
    const base = line.replace(/^capgate listening on /, '').trim().replace(/\/$/, '');
    const reply = await gwCall({ base, host: new URL(base).host }, { app: APPS.token });
    assert.equal(reply.json?.code, 0, reply.body);
  } finally {
    await proc.stop();
  }
});

test('secrets written in the file: masked, listed in _masked, refused until given again', async () => {
  const { file } = layout((c) => ({
    redis: { url: `redis://:${REDIS_PASSWORD}@127.0.0.1:1/0` },
    apps: [
      { name: 'lit-sig', auth: 'signature', secret_id: 'AKIDcheckJsonLiteral00000000000000000', secret_key: FILE_SECRET },
      { name: 'lit-token', auth: 'token', token: ADMIN_TOKEN },
      c.apps[1],
    ],
  }));
  const r1 = await runCapgate(['--check-config', file, '--format', 'json']);
  assert.equal(r1.code, 0, `exit ${r1.code}; stderr: ${r1.stderr}`);
  assertNoSecret(r1.stdout, 'the dump');
  assertNoSecret(r1.stderr, 'the warnings');
  const d1 = JSON.parse(r1.stdout);
  assert.deepEqual(d1._masked, ['redis.url', 'apps[0].secret_key', 'apps[1].token']);
  assert.equal(d1.apps[0].secret_key, '***');
  assert.equal(d1.apps[1].token, '***');
  assert.equal(d1.redis.url, 'redis://:***@127.0.0.1:1/0');
  assert.equal(d1.apps[2].token_env, APPS.token.env, 'an env secret beside them keeps its source');

  // Loaded as it is, the first masked value is refused, by name.
  const saved = path.join(newDir('capgate-dump-'), 'dump.json');
  fs.writeFileSync(saved, r1.stdout);
  const r2 = await runCapgate(['--check-config', saved, '--format', 'json']);
  assert.equal(r2.code, 1, `a masked secret does not load: ${r2.stdout}`);
  assert.match(r2.stderr, /redis\.url: holds the password "\*\*\*", the mask --check-config prints/);
  // Without the _masked note too: "***" is never a secret.
  const bare = { ...d1, _masked: undefined, redis: { ...d1.redis, url: 'redis://127.0.0.1:1/0' } };
  fs.writeFileSync(saved, JSON.stringify(bare));
  const r3 = await runCapgate(['--check-config', saved]);
  assert.equal(r3.code, 1);
  assert.match(r3.stderr, /apps\[0\]\.secret_key: is "\*\*\*", the mask --check-config prints in place of a secret: give the secret itself, or use secret_key_file or secret_key_env/);

  // Given again (the note kept): it loads, and the dump is the first one.
  const again = structuredClone(d1);
  again.redis.url = `redis://:${REDIS_PASSWORD}@127.0.0.1:1/0`;
  again.apps[0].secret_key = FILE_SECRET;
  again.apps[1].token = ADMIN_TOKEN;
  fs.writeFileSync(saved, JSON.stringify(again, null, 2));
  const r4 = await runCapgate(['--check-config', saved, '--format', 'json']);
  assert.equal(r4.code, 0, r4.stderr);
  assert.equal(r4.stdout, r1.stdout, 'the secrets given again: the same dump');
});

test('--format: a bad value, or without --check-config, is a usage error; _masked must be a list', async () => {
  const { file } = layout(() => ({}));
  const bad = await runCapgate(['--check-config', file, '--format', 'yaml']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--format must be text or json; got yaml/);
  const alone = await runCapgate(['--config', file, '--format', 'json']);
  assert.equal(alone.code, 2);
  assert.match(alone.stderr, /--format goes with --check-config/);
  const cfg = JSON.parse(fs.readFileSync(file, 'utf8'));
  fs.writeFileSync(file, JSON.stringify({ _masked: 'apps', ...cfg }, null, 2));
  const r = await runCapgate(['--check-config', file]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /capgate\.json:2:\d+: _masked: must be an array of key paths/);
});
