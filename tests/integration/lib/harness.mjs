// harness.mjs: start real processes (capgate-mock, capgate, redis-server) on ports picked at run
// time, talk to them over real sockets, and clean up. Every wait is bounded.
import { spawn, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const SOURCE_DIR = process.env.CAPGATE_SOURCE_DIR || path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const BUILD_DIR = process.env.CAPGATE_BUILD_DIR || path.join(SOURCE_DIR, 'build');
export const MOCK_BIN = process.env.CAPGATE_MOCK_BIN || path.join(BUILD_DIR, 'capgate-mock');
export const CAPGATE_BIN = process.env.CAPGATE_BIN || path.join(BUILD_DIR, 'capgate');

// The mock's documented default credential (DESIGN.md section 3).
export const MOCK_SECRET_ID = 'AKIDcapgateMockTestKey00000000000000';
export const MOCK_SECRET_KEY = 'capgate-mock-secret';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls fn until it returns a truthy value; throws after timeoutMs. */
export async function waitFor(fn, { timeoutMs = 10000, intervalMs = 20, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let lastErr;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      lastErr = e;
    }
    await sleep(intervalMs);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? `: ${lastErr.message}` : ''}`);
}

/** A TCP port free right now on 127.0.0.1 (for programs that cannot bind port 0 themselves). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

export function tmpDir(prefix = 'capgate-test-') {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

let certsCache;
/** Test CA and server certificate from scripts/gen-certs.sh, made once per test process. */
export function certs() {
  if (certsCache) return certsCache;
  const dir = tmpDir('capgate-certs-');
  execFileSync(path.join(SOURCE_DIR, 'scripts/gen-certs.sh'), [dir], { stdio: 'pipe' });
  certsCache = {
    dir,
    ca: path.join(dir, 'ca.pem'),
    cert: path.join(dir, 'server.pem'),
    key: path.join(dir, 'server.key'),
    caPem: fs.readFileSync(path.join(dir, 'ca.pem')),
  };
  return certsCache;
}

/** A child process whose stdout lines can be awaited; stop() ends it (SIGTERM, then SIGKILL). */
class Proc {
  constructor(bin, args, opts = {}) {
    this.name = path.basename(bin);
    this.lines = [];
    this.stderr = '';
    this.waiters = [];
    this.child = spawn(bin, args, { env: { ...process.env, ...(opts.env || {}) }, stdio: ['ignore', 'pipe', 'pipe'] });
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) => resolve({ code, signal })));
    let buf = '';
    this.child.stdout.on('data', (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        this.lines.push(line);
        this.waiters = this.waiters.filter((w) => !w(line));
      }
    });
    this.child.stderr.on('data', (d) => {
      this.stderr += d;
      if (process.env.CAPGATE_TEST_VERBOSE) process.stderr.write(`[${this.name}] ${d}`);
    });
  }
  /** Resolves with the first stdout line matching re (already seen or future). */
  waitLine(re, timeoutMs = 10000) {
    const seen = this.lines.find((l) => re.test(l));
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`${this.name}: no line matching ${re} within ${timeoutMs} ms; stderr:\n${this.stderr}`)), timeoutMs);
      this.exited.then(({ code, signal }) => {
        clearTimeout(t);
        reject(new Error(`${this.name} exited (${code ?? signal}) before printing ${re}; stderr:\n${this.stderr}`));
      });
      this.waiters.push((line) => {
        if (!re.test(line)) return false;
        clearTimeout(t);
        resolve(line);
        return true;
      });
    });
  }
  signal(sig) {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(sig);
  }
  async stop(timeoutMs = 5000) {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return this.exited;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    const r = await this.exited;
    clearTimeout(t);
    return r;
  }
}
export { Proc };

const running = new Set();
process.on('exit', () => {
  for (const p of running) {
    try { p.child.kill('SIGKILL'); } catch { /* already gone */ }
  }
});
function track(p) {
  running.add(p);
  p.exited.then(() => running.delete(p));
  return p;
}

/**
 * Starts capgate-mock on port 0 (and a TLS listener with the test certificate when tls is true).
 * Returns { proc, url, httpsUrl, port, tlsPort, admin(path, opts), stop() }.
 */
export async function startMock({ args = [], env = {}, tls = false } = {}) {
  const a = ['--listen', '127.0.0.1:0', ...args];
  if (tls) {
    const c = certs();
    a.push('--tls-listen', '127.0.0.1:0', '--tls-cert', c.cert, '--tls-key', c.key);
  }
  const proc = track(new Proc(MOCK_BIN, a, { env }));
  const line = await proc.waitLine(/^capgate-mock listening on http:\/\//);
  const url = line.replace(/^capgate-mock listening on /, '').trim();
  const port = Number(new URL(url).port);
  let httpsUrl = null;
  let tlsPort = null;
  if (tls) {
    const l2 = await proc.waitLine(/^capgate-mock listening on https:\/\//);
    httpsUrl = l2.replace(/^capgate-mock listening on /, '').trim();
    tlsPort = Number(new URL(httpsUrl).port);
  }
  const mock = {
    proc, url, httpsUrl, port, tlsPort,
    /** JSON call of the admin API: admin('requests'), admin('faults', {method:'POST', json:{...}}). */
    async admin(p, { method = 'GET', json } = {}) {
      const r = await request(`${url}/__admin/${p}`, { method, json });
      return r.json ?? r.body;
    },
    stop: () => proc.stop(),
  };
  return mock;
}

/** Starts redis-server on a free port with no persistence. Returns { port, url, cli(...args), stop() }. */
export async function startRedis({ args = [] } = {}) {
  const port = await freePort();
  const dir = tmpDir('capgate-redis-');
  const proc = track(new Proc('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '',
    '--appendonly', 'no', '--dir', dir, ...args]));
  const cli = (...a) => execFileSync('redis-cli', ['-p', String(port), ...a], { encoding: 'utf8' }).trim();
  await waitFor(() => { try { return cli('PING') === 'PONG'; } catch { return false; } }, { what: 'redis PING' });
  return { proc, port, url: `redis://127.0.0.1:${port}/0`, cli, stop: () => proc.stop() };
}

/**
 * One HTTP(S) request. opts: method, headers, body (string|Buffer), json (object → body),
 * form (object → urlencoded body), ca (PEM), timeoutMs, agent.
 * Resolves { status, headers, body, json } (json when the body parses).
 */
export function request(url, opts = {}) {
  const u = new URL(url);
  const mod = u.protocol === 'https:' ? https : http;
  const headers = { ...(opts.headers || {}) };
  let body = opts.body;
  if (opts.json !== undefined) {
    body = JSON.stringify(opts.json);
    headers['content-type'] ??= 'application/json';
  } else if (opts.form !== undefined) {
    body = new URLSearchParams(opts.form).toString();
    headers['content-type'] ??= 'application/x-www-form-urlencoded';
  }
  return new Promise((resolve, reject) => {
    const req = mod.request(u, {
      method: opts.method || (body !== undefined ? 'POST' : 'GET'),
      headers, ca: opts.ca, agent: opts.agent ?? false, servername: opts.servername,
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try { json = JSON.parse(text); } catch { json = undefined; }
        resolve({ status: res.statusCode, headers: res.headers, body: text, json });
      });
      res.on('error', reject);
    });
    req.setTimeout(opts.timeoutMs ?? 10000, () => req.destroy(new Error(`request to ${url} timed out`)));
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

/** Sends raw bytes over TCP and collects everything until the peer closes or timeoutMs passes. */
export function rawRequest(port, data, { timeoutMs = 5000, host = '127.0.0.1', endAfterWrite = false } = {}) {
  return new Promise((resolve) => {
    const chunks = [];
    let done = false;
    const sock = net.connect(port, host);
    const finish = (how) => {
      if (done) return;
      done = true;
      clearTimeout(t);
      sock.destroy();
      resolve({ text: Buffer.concat(chunks).toString('utf8'), how });
    };
    const t = setTimeout(() => finish('timeout'), timeoutMs);
    sock.on('connect', () => {
      const parts = Array.isArray(data) ? data : [data];
      for (const p of parts) sock.write(p);
      if (endAfterWrite) sock.end();
    });
    sock.on('data', (c) => chunks.push(c));
    sock.on('end', () => finish('end'));
    sock.on('close', () => finish('close'));
    sock.on('error', (e) => finish(e.code || 'error'));
  });
}

/** Splits a raw HTTP/1.1 response text into { status, headers, body, json }. */
export function parseRawResponse(text) {
  const i = text.indexOf('\r\n\r\n');
  if (i < 0) return null;
  const [statusLine, ...hl] = text.slice(0, i).split('\r\n');
  const headers = {};
  for (const h of hl) {
    const k = h.indexOf(':');
    headers[h.slice(0, k).trim().toLowerCase()] = h.slice(k + 1).trim();
  }
  const body = text.slice(i + 4);
  let json;
  try { json = JSON.parse(body); } catch { json = undefined; }
  return { status: Number(statusLine.split(' ')[1]), headers, body, json };
}

// ---- API 2.0 signing, written from the protocol description (DESIGN.md section 2) ----

/** The string to sign: METHOD host path ? sorted params (no Signature), '_' → '.' past pos 0. */
export function stringToSign(method, host, pathname, params) {
  const keys = Object.keys(params).filter((k) => k !== 'Signature').sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  const q = keys.map((k) => `${k.length > 1 ? k[0] + k.slice(1).replace(/_/g, '.') : k}=${params[k]}`).join('&');
  return `${method.toUpperCase()}${host}${pathname}?${q}`;
}

export function sign(method, host, pathname, params, secretKey) {
  const algo = params.SignatureMethod === 'HmacSHA256' ? 'sha256' : 'sha1';
  return crypto.createHmac(algo, secretKey).update(stringToSign(method, host, pathname, params)).digest('base64');
}

let nonceCounter = crypto.randomInt(1, 1 << 30);
/** A fresh Nonce, unique within this test process. */
export const nextNonce = () => ++nonceCounter;

/**
 * A signed v2 call. opts: method ('GET'|'POST'), secretId, secretKey, action, params (business
 * params), publicParams (override/remove public ones: set a key to undefined to drop it),
 * signatureMethod, host (the Host to sign; default the URL's host), ca, headers, sign (false to
 * leave Signature out), signature (a literal Signature).
 * Returns { status, headers, body, json, params } where params is what was sent.
 */
export async function v2Call(url, opts = {}) {
  const u = new URL(url);
  const method = (opts.method || 'GET').toUpperCase();
  const params = {
    Action: opts.action ?? 'CaptchaIframeQuery',
    Region: 'gz',
    SecretId: opts.secretId ?? MOCK_SECRET_ID,
    Timestamp: String(opts.timestamp ?? Math.floor(Date.now() / 1000)),
    Nonce: String(opts.nonce ?? nextNonce()),
    ...(opts.signatureMethod ? { SignatureMethod: opts.signatureMethod } : {}),
    ...(opts.params ?? {}),
  };
  for (const [k, v] of Object.entries(opts.publicParams || {})) {
    if (v === undefined) delete params[k];
    else params[k] = String(v);
  }
  const host = opts.host ?? u.host;
  if (opts.signature !== undefined) params.Signature = opts.signature;
  else if (opts.sign !== false) params.Signature = sign(method, host, u.pathname, params, opts.secretKey ?? MOCK_SECRET_KEY);
  const encoded = new URLSearchParams(params).toString();
  const headers = { ...(opts.headers || {}) };
  let r;
  if (method === 'GET') {
    r = await request(`${u.origin}${u.pathname}?${encoded}`, { method, headers, ca: opts.ca });
  } else {
    headers['content-type'] ??= 'application/x-www-form-urlencoded';
    r = await request(`${u.origin}${u.pathname}`, { method, headers, body: encoded, ca: opts.ca });
  }
  return { ...r, params };
}

/** The seed request's business parameters (a valid CaptchaIframeQuery). */
export const SEED_PARAMS = Object.freeze({ captchaType: '1', disturbLevel: '1', isHttps: '0', clientType: '2', accountType: '0' });
/** A valid CaptchaQuery's business parameters (its doc page's required five; script 0: JSON). */
export const QUERY_PARAMS = Object.freeze({ registerTime: '1700000000', userIp: '127.0.0.1', captchaType: '1', script: '0', businessId: '1' });
