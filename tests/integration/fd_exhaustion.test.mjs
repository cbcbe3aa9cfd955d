// fd_exhaustion.test.mjs: issue 12's descriptor exhaustion, for capgate and capgate-mock, each run
// under `ulimit -n 64` with a hundred idle connections opened at it. Two ways to run out: past
// max_connections (the default derived from the limit: new connections are accepted and closed
// at once), and past the descriptor limit itself (max_connections set above it: accept() fails
// with EMFILE and the listener pauses). Either way the CPU the process used over the episode,
// read from /proc/PID/stat, stays far below a spinning core; it logs fewer than 100 lines; a
// connection opened before is still answered; and once the idle connections close, new ones are
// served without a restart.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { startMock, sleep, waitFor } from './lib/harness.mjs';
import { startGateway, signedQuery, API_PATH } from './lib/gateway.mjs';
import { seedWith } from './lib/badinput.mjs';

const NOFILE = 64;
const IDLE = 100;
const EPISODE_MS = 2000;
const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

/** CPU seconds (user + system) the process has used so far. */
function cpuSeconds(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

/** A keep-alive connection sending one request at a time: send(bytes) → the raw reply text. */
async function keepAlive(port) {
  const sock = net.connect(port, '127.0.0.1');
  await new Promise((resolve, reject) => { sock.once('connect', resolve); sock.once('error', reject); });
  let buf = Buffer.alloc(0);
  let waiter = null;
  const check = () => {
    if (!waiter) return;
    const i = buf.indexOf('\r\n\r\n');
    if (i < 0) return;
    const m = /\r\ncontent-length: *(\d+)/i.exec(buf.subarray(0, i).toString());
    const total = i + 4 + (m ? Number(m[1]) : 0);
    if (buf.length < total) return;
    const text = buf.subarray(0, total).toString();
    buf = buf.subarray(total);
    const w = waiter;
    waiter = null;
    w.resolve(text);
  };
  sock.on('data', (d) => { buf = Buffer.concat([buf, d]); check(); });
  const fail = (why) => { if (waiter) { const w = waiter; waiter = null; w.reject(new Error(why)); } };
  sock.on('close', () => fail('the connection closed before a reply'));
  sock.on('error', (e) => fail(e.code || e.message));
  return {
    send(bytes, timeoutMs = 5000) {
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => fail(`no reply within ${timeoutMs} ms`), timeoutMs);
        waiter = {
          resolve: (v) => { clearTimeout(t); resolve(v); },
          reject: (e) => { clearTimeout(t); reject(e); },
        };
        sock.write(bytes);
      });
    },
    close: () => sock.destroy(),
  };
}

/** Opens n connections that send nothing; resolves when each is connected (or refused). */
async function idleConnections(port, n) {
  const socks = [];
  await Promise.all(Array.from({ length: n }, () => new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('error', () => resolve());
    s.on('close', () => resolve());
    s.once('connect', () => resolve());
    socks.push(s);
  })));
  return socks;
}

/** One request on a new connection: the raw reply text, or '' when none came. */
function freshRequest(port, bytes, timeoutMs = 1500) {
  return new Promise((resolve) => {
    const chunks = [];
    const s = net.connect(port, '127.0.0.1');
    const t = setTimeout(() => { s.destroy(); resolve(Buffer.concat(chunks).toString()); }, timeoutMs);
    s.on('connect', () => s.write(bytes));
    s.on('data', (d) => chunks.push(d));
    s.on('close', () => { clearTimeout(t); resolve(Buffer.concat(chunks).toString()); });
    s.on('error', () => {});
  });
}

const statusOf = (text) => Number(/^HTTP\/1\.1 (\d{3}) /.exec(text)?.[1] ?? 0);
const bodyJson = (text) => {
  try { return JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4)); } catch { return undefined; }
};

/**
 * The episode against one running program. p: { pid, port, stderr() → its stderr so far,
 * request() → bytes of one keep-alive request, check(replyText) → asserts it is a good reply,
 * warning (regex of the line the episode must log once) }.
 */
async function episode(p) {
  const old = await keepAlive(p.port);
  p.check(await old.send(p.request()), 'the request before the episode');
  const cpu0 = cpuSeconds(p.pid);
  const t0 = Date.now();
  const idle = await idleConnections(p.port, IDLE);
  await sleep(EPISODE_MS);
  const cpu = cpuSeconds(p.pid) - cpu0;
  const wall = (Date.now() - t0) / 1000;
  // A spinning core would be about 1 CPU second per second; idle accepting costs next to nothing.
  assert.ok(cpu < 0.25 * wall, `used ${cpu.toFixed(2)} s of CPU in ${wall.toFixed(2)} s`);
  const lines = p.stderr().split('\n').filter(Boolean);
  assert.ok(lines.length < 100, `${lines.length} log lines; the first ones:\n${lines.slice(0, 10).join('\n')}`);
  const warnings = lines.filter((l) => p.warning.test(l));
  assert.equal(warnings.length, 1, `want one ${p.warning} line:\n${lines.join('\n')}`);
  // The connection from before is still served.
  p.check(await old.send(p.request()), 'the old connection during the episode');
  // The idle ones go; new connections are served again, without a restart.
  for (const s of idle) s.destroy();
  await waitFor(async () => statusOf(await freshRequest(p.port, p.request())) === 200,
    { timeoutMs: 10000, what: 'a new connection served after the idle ones closed' });
  p.check(await freshRequest(p.port, p.request()), 'a new connection after the episode');
  old.close();
  return lines;
}

for (const mode of ['max_connections', 'EMFILE']) {
  test(`capgate-mock under ulimit -n ${NOFILE}, ${IDLE} idle connections, ${mode}`, async () => {
    const args = ['--header-timeout-ms', '60000'];
    if (mode === 'EMFILE') args.push('--max-connections', '100000');
    const mock = await startMock({ nofile: NOFILE, args });
    try {
      await episode({
        pid: mock.proc.child.pid,
        port: mock.port,
        stderr: () => mock.proc.stderr,
        request: () => `GET /__admin/health HTTP/1.1\r\nHost: 127.0.0.1:${mock.port}\r\n\r\n`,
        check(text, what) {
          assert.equal(statusOf(text), 200, `${what}: ${text.slice(0, 300)}`);
          assert.equal(typeof bodyJson(text), 'object', `${what}: ${text.slice(0, 300)}`);
        },
        warning: mode === 'EMFILE' ? /accept failed: Too many open files/ : /the limit \(max_connections\)/,
      });
    } finally {
      await mock.stop();
    }
  });

  test(`capgate under ulimit -n ${NOFILE}, ${IDLE} idle connections, ${mode}`, async () => {
    const mock = await startMock({ tls: true });
    const http = { header_timeout_ms: 60000, idle_timeout_ms: 60000 };
    if (mode === 'EMFILE') http.max_connections = 100000;
    const gw = await startGateway({ mock, nofile: NOFILE, config: { http, upstream: { timeout_ms: 3000 } } });
    try {
      const lines = await episode({
        pid: gw.proc.child.pid,
        port: gw.port,
        stderr: () => gw.proc.stderr,
        request: () => `GET ${API_PATH}?${signedQuery(gw, 'GET', seedWith({}))} HTTP/1.1\r\nHost: ${gw.host}\r\n\r\n`,
        check(text, what) {
          // Answered, by upstream: the old connection's worker reuses its warm upstream
          // connection, and the reserve leaves descriptors for new ones.
          assert.equal(statusOf(text), 200, `${what}: ${text.slice(0, 300)}`);
          assert.equal(bodyJson(text)?.code, 0, `${what}: ${text.slice(0, 300)}`);
        },
        warning: mode === 'EMFILE' ? /accept failed: Too many open files/ : /the limit \(max_connections\)/,
      });
      if (mode === 'max_connections') {
        assert.ok(lines.some((l) => /http: max_connections \d+ \(RLIMIT_NOFILE 64, /.test(l)),
          `the derived limit is logged:\n${lines.join('\n')}`);
      }
    } finally {
      await gw.stop();
      await mock.stop();
    }
  });
}
