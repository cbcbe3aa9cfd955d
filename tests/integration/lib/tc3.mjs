// lib/tc3.mjs: the project's own TC3-HMAC-SHA256 client, written from Tencent's "签名方法 v3"
// page with node:crypto (not from an SDK), so it can be compared with the official SDK's
// Authorization and used to send requests the SDK would not (bad signatures, odd headers).
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { request } from './harness.mjs';

const sha256hex = (s) => crypto.createHash('sha256').update(s).digest('hex');
const hmac = (key, msg, enc) => crypto.createHmac('sha256', key).update(msg).digest(enc);

/** "YYYY-MM-DD", the UTC date of a Unix time in seconds. */
export function tc3Date(timestamp) {
  return new Date(timestamp * 1000).toISOString().slice(0, 10);
}

/**
 * Authorization for a request. headers: {content-type, host, ...}; signedHeaders lists the
 * lower-case names signed (default content-type;host). Returns { authorization, canonical,
 * stringToSign, signature }.
 */
export function tc3Sign({ method = 'POST', uri = '/', query = '', headers, payload = '', secretId,
  secretKey, service, timestamp, signedHeaders = ['content-type', 'host'] }) {
  const lower = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), String(v)]));
  const canonHeaders = signedHeaders.map((h) => `${h}:${lower[h].trim().toLowerCase()}\n`).join('');
  const canonical = [method, uri, query, canonHeaders, signedHeaders.join(';'), sha256hex(payload)].join('\n');
  const date = tc3Date(timestamp);
  const scope = `${date}/${service}/tc3_request`;
  const stringToSign = ['TC3-HMAC-SHA256', String(timestamp), scope, sha256hex(canonical)].join('\n');
  const kDate = hmac(`TC3${secretKey}`, date);
  const kService = hmac(kDate, service);
  const kSigning = hmac(kService, 'tc3_request');
  const signature = hmac(kSigning, stringToSign, 'hex');
  const authorization = `TC3-HMAC-SHA256 Credential=${secretId}/${scope}, ` +
    `SignedHeaders=${signedHeaders.join(';')}, Signature=${signature}`;
  return { authorization, canonical, stringToSign, signature };
}

/**
 * Sends one 3.0 call to baseUrl ("https://127.0.0.1:PORT") signed with tc3Sign.
 * opts: action, version, body (object or raw string), secretId, secretKey, timestamp,
 * service, ca, contentType, mutate(headers) to alter headers after signing.
 */
export async function tc3Call(baseUrl, { action = 'DescribeCaptchaResult', version = '2019-07-22',
  body = {}, secretId, secretKey, timestamp = Math.floor(Date.now() / 1000), service = 'captcha',
  ca, contentType = 'application/json', mutate } = {}) {
  const u = new URL(baseUrl);
  const payload = typeof body === 'string' ? body : JSON.stringify(body);
  const headers = {
    'Content-Type': contentType, Host: u.host, 'X-TC-Action': action, 'X-TC-Version': version,
    'X-TC-Timestamp': String(timestamp), 'X-TC-Region': 'ap-guangzhou',
  };
  headers.Authorization = tc3Sign({ headers, payload, secretId, secretKey, service, timestamp }).authorization;
  if (mutate) mutate(headers);
  const r = await request(`${baseUrl}/`, { method: 'POST', headers, body: payload, ca });
  return r;
}

/**
 * The error an official 3.0 SDK call rejects with (TencentCloudSDKHttpException: code, message,
 * requestId): a call that resolves fails the test, and so does an error without a RequestId.
 */
export async function sdkError(promise) {
  try {
    const r = await promise;
    assert.fail(`expected an error, got ${JSON.stringify(r)}`);
  } catch (e) {
    if (e.code === 'ERR_ASSERTION') throw e;
    assert.ok(e.requestId, `no RequestId in ${e}`);
    return e;
  }
}
