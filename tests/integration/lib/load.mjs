// load.mjs: a small bounded load generator for the rate-limit tests. N concurrent keep-alive
// requests (http.Agent({keepAlive, maxSockets: N})) for a duration or a count, counting replies by
// API code. Every request carries its own timeout, so a hanging server ends the run, never the
// test process.
import http from 'node:http';
import { SEED_PARAMS } from './harness.mjs';
import { API_PATH } from './gateway.mjs';

/**
 * A request spec for a token app calling the gateway gw: GET /v2/index.php with the seed params
 * (plus params) and `Authorization: Bearer <token>`. Returns { url, method, headers }.
 */
export function tokenRequest(gw, app, params = {}) {
  const q = new URLSearchParams({ Action: 'CaptchaIframeQuery', ...SEED_PARAMS, ...params }).toString();
  return { url: `${gw.base}${API_PATH}?${q}`, method: 'GET', headers: { authorization: `Bearer ${app.token}` } };
}

/** One request on agent; resolves { status, headers, json, body, ms } or { error, ms }. */
function one(spec, agent, timeoutMs) {
  const t0 = process.hrtime.bigint();
  const ms = () => Number(process.hrtime.bigint() - t0) / 1e6;
  return new Promise((resolve) => {
    let done = false;
    const finish = (v) => { if (!done) { done = true; resolve({ ...v, ms: ms() }); } };
    const req = http.request(spec.url, { method: spec.method || 'GET', headers: spec.headers || {}, agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks).toString('utf8');
        let json;
        try { json = JSON.parse(body); } catch { json = undefined; }
        finish({ status: res.statusCode, headers: res.headers, json, body });
      });
      res.on('error', (e) => finish({ error: e.code || e.message }));
    });
    req.setTimeout(timeoutMs, () => req.destroy(Object.assign(new Error('timeout'), { code: 'TIMEOUT' })));
    req.on('error', (e) => finish({ error: e.code || e.message }));
    if (spec.body !== undefined) req.write(spec.body);
    req.end();
  });
}

/**
 * Drives load. opts:
 *  - spec: a request spec ({url, method, headers, body}) or a function (i) → spec
 *  - concurrency: requests in flight at once (and sockets; default 8)
 *  - durationMs and/or count: stop starting requests after this long / this many (at least one
 *    of them; both bound the run)
 *  - timeoutMs: per request (default 5000)
 *  - onReply(r, i): optional, called for every reply
 * Resolves { sent, replies, codes: {code: n}, statuses: {status: n}, errors: {what: n}, maxMs,
 * elapsedMs, admitted (code 0 count), samples: {code: first reply with that code} }.
 */
export async function runLoad({ spec, concurrency = 8, durationMs, count, timeoutMs = 5000, onReply } = {}) {
  if (durationMs === undefined && count === undefined) throw new Error('runLoad needs durationMs or count');
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  const out = { sent: 0, replies: 0, codes: {}, statuses: {}, errors: {}, maxMs: 0, elapsedMs: 0, admitted: 0, samples: {} };
  const t0 = Date.now();
  const deadline = durationMs !== undefined ? t0 + durationMs : Infinity;
  const more = () => Date.now() < deadline && (count === undefined || out.sent < count);
  const worker = async () => {
    while (more()) {
      const i = out.sent++;
      const r = await one(typeof spec === 'function' ? spec(i) : spec, agent, timeoutMs);
      out.maxMs = Math.max(out.maxMs, r.ms);
      if (r.error) {
        out.errors[r.error] = (out.errors[r.error] || 0) + 1;
        continue;
      }
      out.replies++;
      out.statuses[r.status] = (out.statuses[r.status] || 0) + 1;
      const code = r.json && typeof r.json.code === 'number' ? String(r.json.code) : 'non-json';
      out.codes[code] = (out.codes[code] || 0) + 1;
      if (!out.samples[code]) out.samples[code] = { status: r.status, headers: r.headers, body: r.body.slice(0, 500) };
      if (onReply) onReply(r, i);
    }
  };
  try {
    await Promise.all(Array.from({ length: concurrency }, worker));
  } finally {
    agent.destroy();
  }
  out.elapsedMs = Date.now() - t0;
  out.admitted = out.codes['0'] || 0;
  return out;
}

/** One-line summary of a runLoad result for assertion messages. */
export const summary = (r) => JSON.stringify({ sent: r.sent, replies: r.replies, codes: r.codes, statuses: r.statuses,
  errors: r.errors, maxMs: Math.round(r.maxMs), elapsedMs: r.elapsedMs });

/**
 * The verdicts (true: admitted) a token bucket of `burst` tokens refilled at `rate` per `periodS`
 * gives requests that reached it at timesUs (µs, ascending, the server's clock), starting full.
 * Written as a token count, not as limit.c's GCRA, so the tests compare the gateway with the rule
 * as the configuration documents it rather than with a copy of its own arithmetic.
 */
export function tokenBucketVerdicts(timesUs, { rate, periodS = 1, burst = rate }) {
  const perUs = rate / (periodS * 1e6);
  let tokens = burst;
  let last = timesUs.length ? timesUs[0] : 0;
  return timesUs.map((t) => {
    tokens = Math.min(burst, tokens + Math.max(0, t - last) * perUs);
    last = Math.max(last, t);
    // A hair of slack for the float sum: a token due at t is there at t.
    if (tokens < 1 - 1e-9) return false;
    tokens -= 1;
    return true;
  });
}

/** How many of those requests the bucket admits (tokenBucketVerdicts). */
export const tokenBucketAdmits = (timesUs, rule) => tokenBucketVerdicts(timesUs, rule).filter(Boolean).length;
