// gen_tc3_vectors.mjs: prints the TC3-HMAC-SHA256 vectors of tests/unit/test_tc3.c, computed by
// the official Node SDK's signer (tencentcloud-sdk-nodejs, tencentcloud/common/sign.js), so the
// C code is checked against an implementation it does not share code with.
// Run: node tests/unit/gen_tc3_vectors.mjs   (after npm ci in tests/integration)
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '../integration/package.json'));
const Sign = require('tencentcloud-sdk-nodejs/tencentcloud/common/sign.js').default;

const cases = [
  { secretId: 'AKIDexample', secretKey: 'secret-key', service: 'captcha', timestamp: 1700000000,
    host: 'captcha.tencentcloudapi.com', payload: { CaptchaType: 9, Ticket: 't03abc', UserIp: '1.2.3.4',
      Randstr: '@xyz', CaptchaAppId: 190000001, AppSecretKey: 'k' } },
  { secretId: 'AKIDcapgateMockTestKey00000000000000', secretKey: 'capgate-mock-secret', service: '127',
    timestamp: 1796562092, host: '127.0.0.1', payload: {} },
  // Midnight UTC: the date of the scope is the UTC day of the timestamp.
  { secretId: 'id', secretKey: '', service: 'captcha', timestamp: 1704067199,
    host: 'captcha.tencentcloudapi.com', payload: { Ticket: 'é' } },
];
for (const c of cases) {
  const auth = Sign.sign3({ method: 'POST', url: `https://${c.host}/`, payload: c.payload,
    timestamp: c.timestamp, service: c.service, secretId: c.secretId, secretKey: c.secretKey,
    headers: { 'Content-Type': 'application/json' } });
  console.log(JSON.stringify({ ...c, body: JSON.stringify(c.payload), authorization: auth }));
}
