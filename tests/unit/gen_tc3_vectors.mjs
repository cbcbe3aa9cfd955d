// gen_tc3_vectors.mjs: prints the TC3-HMAC-SHA256 vectors of tests/unit/test_tc3.c, computed by
// the official Node SDK's signer (tencentcloud-sdk-nodejs, tencentcloud/common/sign.js), so the
// C code is checked against an implementation it does not share code with.
// Run: node tests/unit/gen_tc3_vectors.mjs   (after npm ci in tests/integration)
// With --check (ctest integration/tc3_vectors) it fails unless test_tc3.c holds each signature.
import fs from 'node:fs';
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
const check = process.argv.includes('--check');
// Only the vector table counts (the parser tests reuse a signature as sample text).
const testSource = check
  ? (fs.readFileSync(path.join(here, 'test_tc3.c'), 'utf8').match(/static const struct vec vecs\[\] = \{[\s\S]*?\n\};/) ?? [''])[0]
  : '';
let missing = 0;
for (const c of cases) {
  const auth = Sign.sign3({ method: 'POST', url: `https://${c.host}/`, payload: c.payload,
    timestamp: c.timestamp, service: c.service, secretId: c.secretId, secretKey: c.secretKey,
    headers: { 'Content-Type': 'application/json' } });
  if (!check) {
    console.log(JSON.stringify({ ...c, body: JSON.stringify(c.payload), authorization: auth }));
    continue;
  }
  const sig = auth.slice(auth.indexOf('Signature=') + 10);
  if (!testSource.includes(`Signature=${sig}`)) {
    console.error(`test_tc3.c lacks the SDK's signature for ${JSON.stringify(c)}: ${auth}`);
    missing++;
  }
}
if (check) {
  if (missing) process.exit(1);
  console.log(`test_tc3.c holds the SDK's ${cases.length} signatures`);
}
