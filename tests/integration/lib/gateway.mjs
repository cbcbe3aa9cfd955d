// gateway.mjs: starts capgate in front of a TLS capgate-mock for the gateway's integration tests:
// a JSON config in a temp dir (port 0 listeners, verified HTTPS upstream to the mock, the mock's
// credential through the environment, three test apps), readiness from the two stdout lines,
// signed calls as an app would make them, journal and /metrics readers. Every wait is bounded.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import {
  Proc, CAPGATE_BIN, MOCK_SECRET_ID, MOCK_SECRET_KEY, SEED_PARAMS, certs, nextNonce, request,
  sign, tmpDir, waitFor, withNofile,
} from './harness.mjs';

export const API_PATH = '/v2/index.php';

/** The test apps: their gateway-issued credentials, passed to capgate through the environment. */
export const APPS = Object.freeze({
  sig: Object.freeze({ name: 'sig-app', secretId: 'AKIDgwtestSigApp000000000000000000000', secretKey: 'gw-sig-app-secret-6b1f0c', env: 'GW_SIG_APP_KEY' }),
  token: Object.freeze({ name: 'token-app', token: 'gw-token-app-secret-9d3e7a41', env: 'GW_TOKEN_APP_TOKEN' }),
  limited: Object.freeze({ name: 'limited-app', secretId: 'AKIDgwtestLimitedApp00000000000000000', secretKey: 'gw-limited-app-secret-25ac', env: 'GW_LIMITED_APP_KEY' }),
  // Not in the base config; SIGHUP tests add it.
  extra: Object.freeze({ name: 'extra-app', token: 'gw-extra-app-secret-77e0b2', env: 'GW_EXTRA_APP_TOKEN' }),
});

/** Every secret the gateway is given; --check-config output must contain none of them. */
export const SECRETS = Object.freeze([MOCK_SECRET_KEY, APPS.sig.secretKey, APPS.token.token,
  APPS.limited.secretKey, APPS.extra.token]);

const isPlainObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

/** Deep merge: objects merge key by key, arrays and scalars replace, undefined deletes. */
export function deepMerge(base, over) {
  if (!isPlainObject(base) || !isPlainObject(over)) return over === undefined ? base : structuredClone(over);
  const out = structuredClone(base);
  for (const [k, v] of Object.entries(over)) {
    if (v === undefined) delete out[k];
    else out[k] = isPlainObject(v) && isPlainObject(out[k]) ? deepMerge(out[k], v) : structuredClone(v);
  }
  return out;
}

/** The base app list (signature app with no lists, token app, limited signature app). */
export function baseApps() {
  return [
    { name: APPS.sig.name, auth: 'signature', secret_id: APPS.sig.secretId, secret_key_env: APPS.sig.env },
    { name: APPS.token.name, auth: 'token', token_env: APPS.token.env, business_ids: '*' },
    { name: APPS.limited.name, auth: 'signature', secret_id: APPS.limited.secretId, secret_key_env: APPS.limited.env,
      actions: ['CaptchaIframeQuery'], business_ids: [1, 2] },
  ];
}

/** The config capgate gets for mock (deep-merged with config), and the directory it lives in. */
export function gatewayConfig(mock, config = {}, dir = tmpDir('capgate-gw-')) {
  const base = {
    listen: '127.0.0.1:0',
    admin_listen: '127.0.0.1:0',
    workers: 2,
    upstream: {
      url: `https://127.0.0.1:${mock.tlsPort}${API_PATH}`,
      sign_host: `127.0.0.1:${mock.tlsPort}`,
      secret_id_env: 'CAPGATE_SECRET_ID',
      secret_key_env: 'CAPGATE_SECRET_KEY',
      ca_file: certs().ca,
      verify_tls: true,
      connect_timeout_ms: 1000,
      timeout_ms: 1500,
      retries: 0,
    },
    audit: { spool_dir: path.join(dir, 'spool') },
    apps: baseApps(),
  };
  return { dir, config: deepMerge(base, config) };
}

/** The environment capgate needs for gatewayConfig(): the mock's credential and the apps' secrets. */
export function gatewayEnv(env = {}) {
  return {
    CAPGATE_SECRET_ID: MOCK_SECRET_ID,
    CAPGATE_SECRET_KEY: MOCK_SECRET_KEY,
    [APPS.sig.env]: APPS.sig.secretKey,
    [APPS.token.env]: APPS.token.token,
    [APPS.limited.env]: APPS.limited.secretKey,
    [APPS.extra.env]: APPS.extra.token,
    ...env,
  };
}

const running = new Set();
process.on('exit', () => {
  for (const p of running) {
    try { p.child.kill('SIGKILL'); } catch { /* already gone */ }
  }
});

/**
 * Starts capgate in front of mock (started with tls: true). config is deep-merged over the base
 * config; env over the base environment; nofile runs it under `ulimit -n nofile`. tls: true also
 * opens the HTTPS front on a port picked at run time with the test certificate (tls.cert_file/
 * key_file may be set in config instead).
 * Returns { proc, url (the /v2/index.php URL), base ('http://127.0.0.1:PORT'), host, port,
 * adminUrl, configPath, config, writeConfig(cfg), reload(), metrics(), stop() }, and with tls
 * { httpsBase ('https://127.0.0.1:PORT'), httpsUrl, tlsHost, tlsPort }. With "listen": null
 * (HTTPS only) base, url, host and port are null.
 */
export async function startGateway({ mock, config = {}, env = {}, args = [], tls = false, nofile, launcher = [] } = {}) {
  assert.ok(mock?.tlsPort, 'startGateway needs a mock started with tls: true');
  if (tls) {
    const c = certs();
    config = deepMerge({ tls_listen: '127.0.0.1:0', tls: { cert_file: c.cert, key_file: c.key } }, config);
  }
  const { dir, config: cfg } = gatewayConfig(mock, config);
  const plain = cfg.listen !== null;
  fs.mkdirSync(path.join(dir, 'spool'), { recursive: true });
  const configPath = path.join(dir, 'capgate.json');
  fs.writeFileSync(configPath, `${JSON.stringify(cfg, null, 2)}\n`);
  // launcher: a command capgate runs under, [bin, ...args] before capgate's path (which must exec it)
  const [bin, argv] = withNofile(nofile, CAPGATE_BIN, ['--config', configPath, ...args]);
  const proc = new Proc(...(launcher.length ? [launcher[0], [...launcher.slice(1), bin, ...argv]] : [bin, argv]),
    { env: gatewayEnv(env) });
  running.add(proc);
  proc.exited.then(() => running.delete(proc));
  let line = null;
  let tlsLine = null;
  let adminLine;
  try {
    if (plain) line = await proc.waitLine(/^capgate listening on http:\/\//);
    if (tls) tlsLine = await proc.waitLine(/^capgate listening on https:\/\//);
    adminLine = await proc.waitLine(/^capgate admin listening on http:\/\//);
  } catch (e) {
    await proc.stop();
    fs.rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  const base = line ? line.replace(/^capgate listening on /, '').trim().replace(/\/$/, '') : null;
  const adminUrl = adminLine.replace(/^capgate admin listening on /, '').trim().replace(/\/$/, '');
  const port = base ? Number(new URL(base).port) : null;
  const httpsBase = tlsLine ? tlsLine.replace(/^capgate listening on /, '').trim().replace(/\/$/, '') : null;
  const tlsPort = httpsBase ? Number(new URL(httpsBase).port) : null;
  const gw = {
    proc, base, url: base && `${base}${API_PATH}`, host: port && `127.0.0.1:${port}`, port, adminUrl, configPath, dir, config: cfg,
    httpsBase, httpsUrl: httpsBase && `${httpsBase}${API_PATH}`, tlsHost: tlsPort && `127.0.0.1:${tlsPort}`, tlsPort,
    /** Writes a new config file: an object is written as JSON as it is, a string verbatim. */
    writeConfig(newConfig) {
      const text = typeof newConfig === 'string' ? newConfig : `${JSON.stringify(newConfig, null, 2)}\n`;
      fs.writeFileSync(`${configPath}.tmp`, text);
      fs.renameSync(`${configPath}.tmp`, configPath);
    },
    reload() { proc.signal('SIGHUP'); },
    /** The admin listener's /metrics, parsed (see parseMetrics). */
    async metrics() {
      const r = await request(`${adminUrl}/metrics`, { timeoutMs: 3000 });
      assert.equal(r.status, 200, `/metrics answered ${r.status}: ${r.body.slice(0, 200)}`);
      return parseMetrics(r.body);
    },
    admin: (p, opts) => request(`${adminUrl}${p}`, { timeoutMs: 3000, ...opts }),
    async stop() {
      const r = await proc.stop();
      fs.rmSync(dir, { recursive: true, force: true });
      return r;
    },
  };
  return gw;
}

/** Runs capgate with args (e.g. --check-config FILE) to completion: { code, stdout, stderr }. */
export function runCapgate(args, { env = {}, timeoutMs = 10000, cwd } = {}) {
  return new Promise((resolve) => {
    execFile(CAPGATE_BIN, args, { env: { ...process.env, ...gatewayEnv(env) }, timeout: timeoutMs, encoding: 'utf8', cwd },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
        resolve({ code, signal: err?.signal ?? null, stdout, stderr });
      });
  });
}

/**
 * Prometheus text → { samples: [{ name, labels, value }], types: { name: type } }, with
 * get(name, labels) (sum of the samples of name whose labels include labels) and has(name).
 */
export function parseMetrics(text) {
  const samples = [];
  const types = {};
  for (const raw of text.split('\n')) {
    const l = raw.trim();
    if (!l) continue;
    if (l.startsWith('#')) {
      const m = /^# TYPE (\S+) (\S+)/.exec(l);
      if (m) types[m[1]] = m[2];
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(l);
    if (!m) continue;
    const labels = {};
    if (m[3]) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
      let lm;
      while ((lm = re.exec(m[3]))) labels[lm[1]] = lm[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    }
    samples.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return {
    text, samples, types,
    get(name, labels = {}) {
      return samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === String(v)))
        .reduce((a, s) => a + s.value, 0);
    },
    has: (name) => samples.some((s) => s.name === name),
  };
}

/**
 * A call an app makes to the gateway. opts: app (APPS.sig / APPS.limited: signed; APPS.token /
 * APPS.extra: bearer token, no public params), method, action, params (business params; default
 * the seed's), publicParams (override; undefined drops), signatureMethod, secretId, secretKey,
 * token, timestamp, nonce, headers, agent, timeoutMs; https: true calls the HTTPS front (signed
 * for its host:port), verified against ca (default: the test CA).
 * Returns { status, headers, body, json, params, ms }.
 */
export async function gwCall(gw, opts = {}) {
  const app = opts.app ?? APPS.sig;
  const base = opts.https ? gw.httpsBase : gw.base;
  const signHost = opts.https ? gw.tlsHost : gw.host;
  const ca = opts.https ? (opts.ca ?? certs().caPem) : undefined;
  const method = (opts.method || 'GET').toUpperCase();
  const headers = { ...(opts.headers || {}) };
  let params;
  const business = opts.params ?? { ...SEED_PARAMS };
  if (app.token !== undefined || opts.token !== undefined) {
    params = { Action: opts.action ?? 'CaptchaIframeQuery', ...business };
    headers.authorization ??= `Bearer ${opts.token ?? app.token}`;
  } else {
    params = {
      Action: opts.action ?? 'CaptchaIframeQuery',
      Region: 'gz',
      SecretId: opts.secretId ?? app.secretId,
      Timestamp: String(opts.timestamp ?? Math.floor(Date.now() / 1000)),
      Nonce: String(opts.nonce ?? nextNonce()),
      ...(opts.signatureMethod ? { SignatureMethod: opts.signatureMethod } : {}),
      ...business,
    };
  }
  for (const [k, v] of Object.entries(opts.publicParams || {})) {
    if (v === undefined) delete params[k];
    else params[k] = String(v);
  }
  if (params.SecretId !== undefined && opts.sign !== false) {
    params.Signature = sign(method, signHost, API_PATH, params, opts.secretKey ?? app.secretKey);
  }
  const encoded = new URLSearchParams(params).toString();
  const t0 = Date.now();
  let r;
  if (method === 'GET') {
    r = await request(`${base}${API_PATH}?${encoded}`, { method, headers, agent: opts.agent, timeoutMs: opts.timeoutMs, ca });
  } else {
    headers['content-type'] ??= 'application/x-www-form-urlencoded';
    r = await request(`${base}${API_PATH}`, { method, headers, body: encoded, agent: opts.agent, timeoutMs: opts.timeoutMs, ca });
  }
  return { ...r, params, ms: Date.now() - t0 };
}

/** The encoded, signed parameter string a signature app sends (for raw-socket cases). */
export function signedQuery(gw, method, params, app = APPS.sig) {
  const p = {
    Action: 'CaptchaIframeQuery', Region: 'gz', SecretId: app.secretId,
    Timestamp: String(Math.floor(Date.now() / 1000)), Nonce: String(nextNonce()), ...params,
  };
  for (const k of Object.keys(p)) if (p[k] === undefined) delete p[k];
  p.Signature = sign(method, gw.host, API_PATH, p, app.secretKey);
  return new URLSearchParams(p).toString();
}

/** The mock's journal, oldest first, whatever the envelope ({requests: [...]} or [...]). */
export async function journal(mock) {
  const body = await mock.admin('requests');
  const list = Array.isArray(body) ? body : body?.requests;
  assert.ok(Array.isArray(list), `journal is not a list: ${JSON.stringify(body).slice(0, 200)}`);
  return list;
}

/** A journal entry's signature verdict ("ok" / "bad"): field "signature" (docs/design.md
 * "capgate-mock"), "verdict" in older drafts. */
export const verdict = (e) => e.signature ?? e.verdict;

/** Resets the mock (journal, faults, nonces, URLs, tickets) and checks the journal is empty. */
export async function resetMock(mock) {
  await mock.admin('reset', { method: 'POST' });
  await waitFor(async () => (await journal(mock)).length === 0, { timeoutMs: 3000, what: 'empty journal after reset' });
}

/** Adds mock fault rules (one object or an array). */
export async function addFault(mock, rule) {
  const r = await request(`${mock.url}/__admin/faults`, { method: 'POST', json: rule });
  assert.ok(r.status >= 200 && r.status < 300, `POST /__admin/faults answered ${r.status}: ${r.body}`);
}

/** A keep-alive agent that counts the connections it opens. */
export class CountingAgent extends http.Agent {
  constructor(opts = {}) {
    super({ keepAlive: true, maxSockets: 1, ...opts });
    this.created = 0;
    this.socketErrors = [];
  }
  createConnection(...a) {
    this.created++;
    const s = super.createConnection(...a);
    s.on('error', (e) => this.socketErrors.push(e));
    return s;
  }
}

/** Asserts a reply is the API's JSON shape with X-Request-Id; returns the JSON. */
export function assertApiReply(r, what = '') {
  assert.ok(r.headers['x-request-id'], `${what} reply without X-Request-Id: ${JSON.stringify(r.headers)}`);
  assert.ok(r.json && typeof r.json === 'object', `${what} body is not JSON: ${String(r.body).slice(0, 300)}`);
  assert.equal(typeof r.json.code, 'number', `${what} code: ${r.body}`);
  assert.equal(typeof r.json.codeDesc, 'string', `${what} codeDesc: ${r.body}`);
  assert.equal(typeof r.json.message, 'string', `${what} message: ${r.body}`);
  return r.json;
}

/** A RateLimit or RateLimit-Policy header (IETF httpapi draft syntax) → [{name, q, w}] or
 *  [{name, r, t}]: one entry per quoted policy name with its numeric parameters. */
export function parseRateLimitHeader(h) {
  const out = [];
  const re = /"((?:[^"\\]|\\.)*)"((?:;[a-z]+=[^,;]+)*)/g;
  let m;
  while ((m = re.exec(h || ''))) {
    const p = { name: m[1] };
    for (const kv of m[2].split(';').slice(1)) {
      const [k, v] = kv.split('=');
      p[k.trim()] = Number(v);
    }
    out.push(p);
  }
  return out;
}
