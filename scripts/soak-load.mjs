// soak-load.mjs: the steady load of scripts/soak.sh. Sends RATE requests a second to a capgate
// for DURATION seconds from several apps and businessIds, about 1 in 10 of them bad (a wrong
// signature, an unknown SecretId, a stale Timestamp, no Action, an unknown bearer token), never
// more than MAX_INFLIGHT at once (a request due while that many wait is counted as skipped, not
// queued). Every reply's X-Request-Id goes to IDS_FILE, one a line, so soak.sh can look for its
// audit record; the counts (per HTTP status and API code, transport errors, skipped) go to
// SUMMARY_FILE as JSON at the end.
// Env: SOAK_BASE (http://127.0.0.1:PORT), SOAK_DURATION_S, SOAK_RATE, SOAK_MAX_INFLIGHT,
// SOAK_APPS (JSON: [{secretId, secretKey} | {token}]), SOAK_IDS_FILE, SOAK_SUMMARY_FILE.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { SEED_PARAMS, nextNonce, sign } from '../tests/integration/lib/harness.mjs';

const API_PATH = '/v2/index.php';
const base = new URL(process.env.SOAK_BASE);
const host = base.host;
const durationMs = Number(process.env.SOAK_DURATION_S) * 1000;
const rate = Number(process.env.SOAK_RATE || 50);
const maxInflight = Number(process.env.SOAK_MAX_INFLIGHT || 64);
const apps = JSON.parse(process.env.SOAK_APPS);
const sigApps = apps.filter((a) => a.secretId);
const tokenApps = apps.filter((a) => a.token);
const ids = fs.createWriteStream(process.env.SOAK_IDS_FILE);
const agent = new http.Agent({ keepAlive: true, maxSockets: 32 });

const counts = { sent: 0, answered: 0, with_request_id: 0, transport_errors: 0, skipped: 0,
  by_status: {}, by_code: {}, by_kind: {}, errors: {} };
const bump = (o, k) => { o[k] = (o[k] || 0) + 1; };
const pick = (a) => a[crypto.randomInt(a.length)];

/** One request: [method, path+query, headers, body, kind]. */
function makeRequest() {
  const roll = crypto.randomInt(100);
  const method = crypto.randomInt(2) ? 'GET' : 'POST';
  const business = { ...SEED_PARAMS, businessId: String(1 + crypto.randomInt(5)),
    sceneId: String(1 + crypto.randomInt(3)) };
  let params;
  const headers = {};
  let kind = 'ok';
  if (roll < 12 && tokenApps.length) {
    params = { Action: 'CaptchaIframeQuery', ...business };
    headers.authorization = `Bearer ${roll < 11 ? pick(tokenApps).token : 'not-a-token'}`;
    if (roll >= 11) kind = 'bad_token';
  } else {
    const app = pick(sigApps);
    params = { Action: 'CaptchaIframeQuery', Region: 'gz', SecretId: app.secretId,
      Timestamp: String(Math.floor(Date.now() / 1000)), Nonce: String(nextNonce()), ...business };
    let key = app.secretKey;
    if (roll >= 90) {
      kind = ['bad_signature', 'unknown_secret_id', 'stale_timestamp', 'no_action'][roll % 4];
      if (kind === 'bad_signature') key = `${key}x`;
      if (kind === 'unknown_secret_id') params.SecretId = 'AKIDsoakUnknown000000000000000000000';
      if (kind === 'stale_timestamp') params.Timestamp = String(Math.floor(Date.now() / 1000) - 3600);
      if (kind === 'no_action') delete params.Action;
    }
    params.Signature = sign(method, host, API_PATH, params, key);
  }
  const encoded = new URLSearchParams(params).toString();
  if (method === 'GET') return [method, `${API_PATH}?${encoded}`, headers, undefined, kind];
  headers['content-type'] = 'application/x-www-form-urlencoded';
  return [method, API_PATH, headers, encoded, kind];
}

let inflight = 0;
function send() {
  if (inflight >= maxInflight) {
    counts.skipped++;
    return;
  }
  const [method, target, headers, body, kind] = makeRequest();
  counts.sent++;
  bump(counts.by_kind, kind);
  inflight++;
  const req = http.request({ host: base.hostname, port: base.port, method, path: target, headers, agent },
    (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        inflight--;
        counts.answered++;
        bump(counts.by_status, res.statusCode);
        let code = 'none';
        try { code = JSON.parse(Buffer.concat(chunks).toString('utf8')).code; } catch { /* not JSON */ }
        bump(counts.by_code, code);
        const id = res.headers['x-request-id'];
        if (id) {
          counts.with_request_id++;
          ids.write(`${id}\n`);
        }
      });
      res.on('error', () => {});
    });
  req.setTimeout(15000, () => req.destroy(new Error('timeout')));
  req.on('error', (e) => {
    inflight--;
    counts.transport_errors++;
    bump(counts.errors, e.code || e.message);
  });
  if (body !== undefined) req.write(body);
  req.end();
}

const t0 = Date.now();
let lastReport = t0;
const timer = setInterval(() => {
  const now = Date.now();
  const due = Math.floor(((Math.min(now, t0 + durationMs) - t0) / 1000) * rate);
  while (counts.sent + counts.skipped < due) send();
  if (now - lastReport >= 60000) {
    lastReport = now;
    console.log(`soak-load: ${Math.round((now - t0) / 1000)}s sent ${counts.sent} answered ` +
      `${counts.answered} errors ${counts.transport_errors} skipped ${counts.skipped} inflight ${inflight}`);
  }
  if (now >= t0 + durationMs) {
    clearInterval(timer);
    finish();
  }
}, 20);

async function finish() {
  const deadline = Date.now() + 20000;
  while (inflight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  counts.unfinished = inflight;
  agent.destroy();
  ids.end(() => {
    fs.writeFileSync(process.env.SOAK_SUMMARY_FILE, `${JSON.stringify(counts, null, 2)}\n`);
    console.log(`soak-load: done: ${JSON.stringify(counts)}`);
    process.exit(0);
  });
}
