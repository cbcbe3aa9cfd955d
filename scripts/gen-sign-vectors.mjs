#!/usr/bin/env node
// gen-sign-vectors.mjs: writes tests/data/v2-signature-vectors.json, the v2 signature vectors
// test_sign checks common/sign.c against, by calling Tencent's official Node SDK (npm
// qcloudapi-sdk, installed by `npm ci` in tests/integration). The SDK signs; this script only
// fixes the inputs (Timestamp and Nonce are passed as data, which the SDK lets override its
// clock and random Nonce, so the output is reproducible) and records what the SDK produced.
// Usage: node scripts/gen-sign-vectors.mjs [--check] [--out FILE]
//   (no option)  rewrite the committed file
//   --check      regenerate in memory and exit 1 if the committed file differs
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values: a } = parseArgs({
  options: {
    check: { type: 'boolean', default: false },
    out: { type: 'string', default: path.join(root, 'tests/data/v2-signature-vectors.json') },
  },
});

// Resolve the SDK from the integration tests' node_modules wherever this script is run from.
const require = createRequire(path.join(root, 'tests/integration/package.json'));
let QcloudApi, sdkVersion;
try {
  QcloudApi = require('qcloudapi-sdk');
  sdkVersion = require('qcloudapi-sdk/package.json').version;
} catch (e) {
  console.error(`gen-sign-vectors: qcloudapi-sdk not found (run npm ci in tests/integration): ${e.message}`);
  process.exit(2);
}

const SECRET_ID = 'AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE';
const SECRET_KEY = 'Gu5t9xGARNpq86cd98joQYCN3EXAMPLE';

// The inputs. `data` is what an app passes to the SDK's request(); its key order is the order of
// encoded_params after the SDK's own public parameters (Region, SecretId, Timestamp, Nonce,
// RequestClient), and SignatureMethod is appended by the SDK for sha256.
const INPUTS = [
  {
    name: 'get-sha1-minimal', method: 'GET', host: 'csec.api.qcloud.com', sig: 'sha1', region: 'gz',
    data: { Timestamp: 1700000000, Nonce: 32768, Action: 'CaptchaIframeQuery', captchaType: 1,
            disturbLevel: 1, isHttps: 1, clientType: 2, accountType: 0 },
  },
  {
    name: 'post-sha256-all-params', method: 'POST', host: 'csec.api.qcloud.com', sig: 'sha256',
    region: 'sh',
    data: { Timestamp: 1700000123, Nonce: 16384, Action: 'CaptchaIframeQuery', captchaType: 9,
            disturbLevel: 2, isHttps: 0, clientType: 1, accountType: 2,
            appId: 'wx1234567890abcdef', uid: 'oUpF8uMuAJO_M2pxb1Q9zNjWeS6o', businessId: 42,
            sceneId: 7, registerTime: 1690000000, userIp: '203.0.113.9',
            xForwardedFor: '203.0.113.9, 10.0.0.1', macAddress: '00:1A:2B:3C:4D:5E',
            imei: '356938035643809', associateAccount: 'user@example.com' },
  },
  {
    name: 'get-sha1-utf8-and-reserved-chars', method: 'GET', host: 'csec.api.qcloud.com',
    sig: 'sha1', region: 'gz',
    data: { Timestamp: 1700000456, Nonce: 49151, Action: 'CaptchaIframeQuery', captchaType: 1,
            disturbLevel: 3, isHttps: 1, clientType: 4, accountType: 7,
            uid: '张三 & co=1+2/3?', associateAccount: 'a b%20c' },
  },
  {
    name: 'post-sha1-loopback-host-with-port', method: 'POST', host: '127.0.0.1:9443',
    sig: 'sha1', region: 'gz',
    data: { Timestamp: 1700000789, Nonce: 6554, Action: 'CaptchaIframeQuery', captchaType: 1,
            disturbLevel: 1, isHttps: 1, clientType: 2, accountType: 4, businessId: 1 },
  },
  {
    // Not a real Action: the vector is about the '_' rule in a key (extra_field), which the
    // signature covers whatever the Action is.
    name: 'get-sha256-underscore-key', method: 'GET', host: 'csec.api.qcloud.com', sig: 'sha256',
    region: 'gz',
    data: { Timestamp: 1700001000, Nonce: 58982, Action: 'CaptchaIframeCheck', captchaType: 1,
            ticket: 't02abc_def', userIp: '198.51.100.4', businessId: 3, extra_field: 'x' },
  },
];

const NOTES = [
  'encoded_params is exactly what the client sends: the query string (GET) or the x-www-form-urlencoded body (POST), Signature included.',
  'String to sign: METHOD + host + path + "?" + every parameter except Signature, sorted by key as sent (byte order, before the "_" rewrite below), joined as key=value with "&", values NOT url-encoded (raw, decoded UTF-8).',
  'In the string to sign, a "_" in a key (not at position 0) is written as "."; the key is sent unchanged.',
  'Signature = base64(HMAC(secret_key, string_to_sign)) with SHA1 for HmacSHA1 (the default when SignatureMethod is absent) or SHA256 for HmacSHA256.',
  'host is what the client signed: the Host it addressed, with the port when it used one.',
];

function vector(input) {
  const opts = {
    SecretId: SECRET_ID, SecretKey: SECRET_KEY, Region: input.region, serviceType: 'csec',
    host: input.host, path: '/v2/index.php', method: input.method, signatureMethod: input.sig,
  };
  const api = new QcloudApi(opts);
  const encoded = api.generateQueryString(input.data, api.defaults);
  const signature = new URLSearchParams(encoded).get('Signature');
  if (!signature) throw new Error(`${input.name}: the SDK produced no Signature`);
  return {
    name: input.name,
    method: input.method,
    host: input.host,
    path: opts.path,
    secret_id: SECRET_ID,
    secret_key: SECRET_KEY,
    signature_method: input.sig === 'sha256' ? 'HmacSHA256' : 'HmacSHA1',
    encoded_params: encoded,
    expected_signature: signature,
  };
}

const doc = {
  source: `official Node.js SDK for API 2.0, npm qcloudapi-sdk ${sdkVersion} (generateQueryString)`,
  notes: NOTES,
  vectors: INPUTS.map(vector),
};
const text = JSON.stringify(doc, null, 2) + '\n';

if (a.check) {
  let committed;
  try {
    committed = fs.readFileSync(a.out, 'utf8');
  } catch (e) {
    console.error(`gen-sign-vectors: cannot read ${a.out}: ${e.message}`);
    process.exit(1);
  }
  if (committed !== text) {
    const want = text.split('\n'), got = committed.split('\n');
    const i = want.findIndex((line, k) => line !== got[k]);
    console.error(`gen-sign-vectors: ${a.out} differs from what the SDK produces, first at line ${i + 1}:`);
    console.error(`  committed: ${got[i]}`);
    console.error(`  SDK:       ${want[i]}`);
    process.exit(1);
  }
  console.log(`gen-sign-vectors: ${a.out} matches qcloudapi-sdk ${sdkVersion} (${doc.vectors.length} vectors)`);
} else {
  fs.mkdirSync(path.dirname(a.out), { recursive: true });
  fs.writeFileSync(a.out, text);
  console.log(`gen-sign-vectors: wrote ${a.out} (${doc.vectors.length} vectors)`);
}
