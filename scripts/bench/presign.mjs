#!/usr/bin/env node
// presign.mjs: writes COUNT distinct signed v2 request targets ("/v2/index.php?...", one per
// line) for wrk's cycle.lua, so a benchmark never repeats a Nonce. Signing is the integration
// tests' (tests/integration/lib/harness.mjs).
// Usage: presign.mjs --host 127.0.0.1:PORT --count N --out FILE [--secret-id ID --secret-key KEY]
//        [--action CaptchaIframeQuery] [--signature-method HmacSHA256]
import fs from 'node:fs';
import crypto from 'node:crypto';
import { parseArgs } from 'node:util';
import { stringToSign, SEED_PARAMS, MOCK_SECRET_ID, MOCK_SECRET_KEY } from '../../tests/integration/lib/harness.mjs';

const { values: a } = parseArgs({
  options: {
    host: { type: 'string' },
    count: { type: 'string' },
    out: { type: 'string' },
    'secret-id': { type: 'string', default: MOCK_SECRET_ID },
    'secret-key': { type: 'string', default: MOCK_SECRET_KEY },
    action: { type: 'string', default: 'CaptchaIframeQuery' },
    'signature-method': { type: 'string', default: 'HmacSHA256' },
    path: { type: 'string', default: '/v2/index.php' },
  },
});
if (!a.host || !a.count || !a.out) {
  console.error('usage: presign.mjs --host HOST:PORT --count N --out FILE [--secret-id ID --secret-key KEY]');
  process.exit(2);
}
const count = Number(a.count);
if (!Number.isSafeInteger(count) || count <= 0) {
  console.error(`presign.mjs: --count must be a positive integer; got ${a.count}`);
  process.exit(2);
}

const timestamp = String(Math.floor(Date.now() / 1000));
let nonce = crypto.randomInt(1, 2 ** 40);
const base = {
  Action: a.action, Region: 'gz', SecretId: a['secret-id'], Timestamp: timestamp,
  SignatureMethod: a['signature-method'], ...SEED_PARAMS,
};
// Only Nonce differs between lines: the rest of the target and of the string to sign is made
// once, around a placeholder.
const fixed = new URLSearchParams(base).toString();
const [before, after] = stringToSign('GET', a.host, a.path, { ...base, Nonce: '\u0000' }).split('\u0000');
const algo = a['signature-method'] === 'HmacSHA256' ? 'sha256' : 'sha1';
const out = fs.openSync(a.out, 'w');
let chunk = '';
for (let i = 0; i < count; i++) {
  const n = String(nonce++);
  const signature = crypto.createHmac(algo, a['secret-key']).update(before + n + after).digest('base64');
  chunk += `${a.path}?${fixed}&Nonce=${n}&Signature=${encodeURIComponent(signature)}\n`;
  if (chunk.length > 1 << 20) {
    fs.writeSync(out, chunk);
    chunk = '';
  }
}
fs.writeSync(out, chunk);
fs.closeSync(out);
