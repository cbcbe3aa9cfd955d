// loadgen.test.mjs: capgate-loadgen (tools/loadgen.c, the bench's constant-rate generator) against
// capgate-mock: every pre-signed target goes out once and its reply is read and checked, a reply
// without "code":0 counts as bad, a server that is not there counts as failed, and --idle keeps
// its connections open. Counts only: no timing is asserted.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import {
  BUILD_DIR, MOCK_SECRET_ID, MOCK_SECRET_KEY, SEED_PARAMS, freePort, nextNonce, sign, startMock,
  tmpDir, waitFor,
} from './lib/harness.mjs';

const LOADGEN_BIN = process.env.CAPGATE_LOADGEN_BIN || path.join(BUILD_DIR, 'capgate-loadgen');
const API = '/v2/index.php';
let mock;
let dir;

before(async () => {
  mock = await startMock();
  dir = tmpDir('capgate-loadgen-');
});
after(async () => {
  await mock?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** n distinct signed CaptchaIframeQuery targets for the mock (a bad Signature when bad). */
function targets(n, { bad = false } = {}) {
  const host = `127.0.0.1:${mock.port}`;
  const out = [];
  for (let i = 0; i < n; i++) {
    const p = {
      Action: 'CaptchaIframeQuery', Region: 'gz', SecretId: MOCK_SECRET_ID,
      Timestamp: String(Math.floor(Date.now() / 1000)), Nonce: String(nextNonce()), ...SEED_PARAMS,
    };
    p.Signature = bad ? 'AAAA' : sign('GET', host, API, p, MOCK_SECRET_KEY);
    out.push(`${API}?${new URLSearchParams(p)}`);
  }
  return out;
}

function run(args, { timeoutMs = 20000, until } = {}) {
  return new Promise((resolve) => {
    const child = spawn(LOADGEN_BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => {
      stdout += d;
      if (until && until.test(stdout)) child.kill('SIGTERM');
    });
    child.stderr.on('data', (d) => { stderr += d; });
    const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('exit', (code, signal) => { clearTimeout(t); resolve({ code, signal, stdout, stderr }); });
  });
}

function counts(stdout) {
  const m = stdout.match(/(\d+) scheduled, (\d+) replied, (\d+) good, (\d+) failed, (\d+) bad/);
  assert.ok(m, stdout);
  const [scheduled, replied, good, failed, bad] = m.slice(1).map(Number);
  return { scheduled, replied, good, failed, bad };
}

test('rate mode sends each target once and reads every reply', async () => {
  const file = path.join(dir, 'good.txt');
  fs.writeFileSync(file, `${targets(250).join('\n')}\n`);
  await mock.admin('reset', { method: 'POST' });
  const r = await run(['--host', `127.0.0.1:${mock.port}`, '--file', file, '--rate', '100',
    '--duration', '2', '--warmup', '0', '--connections', '4', '--trace', path.join(dir, 'trace.txt')]);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.deepEqual(counts(r.stdout), { scheduled: 200, replied: 200, good: 200, failed: 0, bad: 0 });
  assert.match(r.stdout, /^latency_us p50 \d+ p90 \d+ p99 \d+ p99\.9 \d+ max \d+$/m);
  assert.match(r.stdout, /^generator send_lag_us p50 \d+ .* cpu_us_per_request [\d.]+$/m);
  // the mock saw each request once: 200 distinct Nonces, all answered with code 0
  const j = await mock.admin('requests?limit=500');
  assert.equal(j.requests.length, 200);
  assert.ok(j.requests.every((e) => e.code === 0));
  assert.equal(new Set(j.requests.map((e) => e.params.Nonce)).size, 200);
  // the trace: a header, then one line per measured request, sent after due and done after sent
  const lines = fs.readFileSync(path.join(dir, 'trace.txt'), 'utf8').trim().split('\n');
  assert.match(lines[0], /^# t0 \d+ ns CLOCK_MONOTONIC/);
  assert.equal(lines.length, 201);
  for (const l of lines.slice(1)) {
    const [due, sent, done] = l.split(' ').map(Number);
    assert.ok(due <= sent && sent <= done, l);
  }
});

test('rate mode: a reply without "code":0 is bad, and the exit status says so', async () => {
  const file = path.join(dir, 'bad.txt');
  fs.writeFileSync(file, `${targets(50, { bad: true }).join('\n')}\n`);
  await mock.admin('reset', { method: 'POST' });
  const r = await run(['--host', `127.0.0.1:${mock.port}`, '--file', file, '--rate', '20', '--duration', '1']);
  assert.equal(r.code, 1);
  assert.deepEqual(counts(r.stdout), { scheduled: 20, replied: 20, good: 0, failed: 0, bad: 20 });
});

test('rate mode: no server counts every request as failed', async () => {
  const port = await freePort();
  const r = await run(['--host', `127.0.0.1:${port}`, '--path', `${API}?Action=DescribeCaptchaResult`,
    '--rate', '10', '--duration', '1', '--connections', '2']);
  assert.equal(r.code, 1);
  const c = counts(r.stdout);
  assert.equal(c.scheduled, 10);
  assert.equal(c.failed, 10);
  assert.equal(c.good, 0);
  assert.match(r.stdout, /first error: connect failed/);
});

test('idle mode holds its connections open after one request each', async () => {
  const file = path.join(dir, 'idle.txt');
  fs.writeFileSync(file, `${targets(20).join('\n')}\n`);
  await mock.admin('reset', { method: 'POST' });
  const r = await run(['--host', `127.0.0.1:${mock.port}`, '--file', file, '--idle', '20', '--hold', '30'],
    { until: /idle connections open/ });
  assert.match(r.stdout, /capgate-loadgen: 20 idle connections open \(20 good, 0 failed, 0 bad replies\)/);
  await waitFor(async () => (await mock.admin('requests?limit=100')).requests.length === 20,
    { what: 'the mock journal to hold the 20 requests' });
});
