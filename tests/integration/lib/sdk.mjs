// sdk.mjs: calls through Tencent's official Node SDK (npm qcloudapi-sdk 0.2.1), pointed at a
// capgate-mock or capgate on a loopback port instead of csec.api.qcloud.com.
import { createRequire } from 'node:module';
import { MOCK_SECRET_ID, MOCK_SECRET_KEY, nextNonce } from './harness.mjs';

const require = createRequire(import.meta.url);
const QcloudApi = require('qcloudapi-sdk');

/**
 * One SDK call. baseUrl: 'http://127.0.0.1:PORT' or 'https://127.0.0.1:PORT'. opts: action,
 * params (business params), method ('GET'|'POST'), signatureMethod ('sha1'|'sha256'),
 * secretId, secretKey, region, nonce, ca (PEM; over https the certificate is verified against it),
 * timeoutMs. Resolves with the parsed JSON reply.
 *
 * The SDK picks Nonce as round(random() * 65535), which collides often enough across a test
 * run to trip replay checks; the SDK lets data override public params, so a unique Nonce is
 * passed the same way an app would. The SDK also turns TLS verification off by default
 * (strictSSL: false); its `extra` argument goes to the request library, which is how a test CA
 * is passed and verification turned back on.
 */
export function sdkCall(baseUrl, opts = {}) {
  const u = new URL(baseUrl);
  const api = new QcloudApi({
    SecretId: opts.secretId ?? MOCK_SECRET_ID,
    SecretKey: opts.secretKey ?? MOCK_SECRET_KEY,
    Region: opts.region ?? 'gz',
    serviceType: 'csec',
    protocol: u.protocol.replace(/:$/, ''),
    host: u.host,
    path: opts.path ?? '/v2/index.php',
    method: opts.method ?? 'POST',
    signatureMethod: opts.signatureMethod ?? 'sha1',
  });
  const data = { Action: opts.action ?? 'CaptchaIframeQuery', Nonce: opts.nonce ?? nextNonce(), ...(opts.params ?? {}) };
  const extra = { timeout: opts.timeoutMs ?? 10000 };
  if (u.protocol === 'https:') {
    extra.strictSSL = true;
    if (opts.ca) extra.ca = opts.ca;
  }
  return new Promise((resolve, reject) => {
    // The SDK's own defaults object as opts: extra is only read in the four-argument form.
    api.request(data, api.defaults, (err, body) => {
      if (err) reject(err);
      else resolve(body);
    }, extra);
  });
}
