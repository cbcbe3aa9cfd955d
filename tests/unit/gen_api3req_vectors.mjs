// gen_api3req_vectors.mjs: prints the vectors of tests/unit/test_api3req.c, computed by the
// official Node SDK itself (tencentcloud-sdk-nodejs), so the C code is checked against an
// implementation it shares no code with:
//   - API 3.0's v1 signature (profile.signMethod HmacSHA1 / HmacSHA256): AbstractClient
//     .formatSignString builds the string to sign, Sign.sign the signature; querystring.stringify
//     is what HttpConnection.doRequest sends;
//   - TC3 over GET (the query signed, the hash of "") and over multipart (Sign.sign3's own hash of
//     the parts, which the C side computes over the body form-data sends).
// Run: node tests/unit/gen_api3req_vectors.mjs   (after npm ci in tests/integration)
// With --check (ctest integration/api3req_vectors) it fails unless test_api3req.c holds each.
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import querystring from 'node:querystring';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '../integration/package.json'));
const tencentcloud = require('tencentcloud-sdk-nodejs');
const Sign = require('tencentcloud-sdk-nodejs/tencentcloud/common/sign.js').default;

const cases = [
  { signMethod: 'HmacSHA1', reqMethod: 'GET', endpoint: 'captcha.tencentcloudapi.com', secretKey: 'secret-key',
    params: { CaptchaType: 9, Ticket: 't03abc', UserIp: '1.2.3.4', Randstr: '@xyz', CaptchaAppId: 190000001,
      AppSecretKey: 'k', Action: 'DescribeCaptchaResult', Nonce: 4242, Timestamp: 1700000000,
      Version: '2019-07-22', SecretId: 'AKIDexample', RequestClient: 'SDK_NODEJS_4.1.313' } },
  // the endpoint with its port, as the SDK signs it; values that need percent-encoding
  { signMethod: 'HmacSHA256', reqMethod: 'POST', endpoint: '127.0.0.1:8443', secretKey: 'capgate-mock-secret',
    params: { CaptchaType: 9, Ticket: 'a+b/c=d&e é', UserIp: '::1', Randstr: 'r', CaptchaAppId: 7,
      AppSecretKey: 'x y', Action: 'DescribeCaptchaResult', Nonce: 65535, Timestamp: 1796562092,
      Version: '2019-07-22', SecretId: 'AKIDcapgateMockTestKey00000000000000', Region: 'ap-guangzhou' } },
  { signMethod: 'HmacSHA256', reqMethod: 'GET', endpoint: 'gw.example', secretKey: '',
    params: { CaptchaType: 9, Ticket: 't', UserIp: '10.0.0.1', CaptchaAppId: 1, AppSecretKey: 'k',
      Action: 'DescribeCaptchaMiniResult', Nonce: 0, Timestamp: 1704067199, Version: '2019-07-22',
      SecretId: 'id', Language: 'en-US', Token: 'tok' } },
];

const check = process.argv.includes('--check');
const testSource = check ? fs.readFileSync(path.join(here, 'test_api3req.c'), 'utf8') : '';
let missing = 0;
for (const c of cases) {
  const client = new tencentcloud.captcha.v20190722.Client({
    credential: { secretId: c.params.SecretId, secretKey: c.secretKey },
    profile: { signMethod: c.signMethod, httpProfile: { reqMethod: c.reqMethod, endpoint: c.endpoint } },
  });
  const params = { ...c.params, SignatureMethod: c.signMethod };
  const stringToSign = client.formatSignString(params);
  params.Signature = Sign.sign(c.secretKey, stringToSign, c.signMethod);
  const sent = querystring.stringify(params);
  if (!check) {
    console.log(JSON.stringify({ method: c.reqMethod, host: c.endpoint, key: c.secretKey, sent, stringToSign }));
    continue;
  }
  const sig = encodeURIComponent(params.Signature);
  if (!testSource.includes(`Signature=${sig}`)) {
    console.error(`test_api3req.c lacks the SDK's signature for ${JSON.stringify(c)}: ${sig}`);
    missing++;
  }
}

// TC3 over GET and multipart.
const tc3 = [
  { method: 'GET', query: 'CaptchaType=9&Ticket=t%2B1&UserIp=1.2.3.4&CaptchaAppId=7&AppSecretKey=k',
    contentType: 'application/x-www-form-urlencoded' },
  { method: 'POST', multipart: true, boundary: '--------------------------123456789012345678901234',
    payload: { CaptchaType: '9', Ticket: 't', UserIp: '1.2.3.4', CaptchaAppId: '7', AppSecretKey: 'k' } },
];
for (const c of tc3) {
  const url = `https://127.0.0.1:8443/${c.query ? `?${c.query}` : ''}`;
  const auth = Sign.sign3({ method: c.method, url, payload: c.payload ?? '', timestamp: 1796562092, service: '127',
    secretId: 'AKIDcapgateMockTestKey00000000000000', secretKey: 'capgate-mock-secret', multipart: c.multipart,
    boundary: c.boundary, headers: { 'Content-Type': c.contentType } });
  if (!check) {
    console.log(JSON.stringify({ ...c, authorization: auth }));
    continue;
  }
  const sig = auth.slice(auth.indexOf('Signature=') + 10);
  if (!testSource.includes(sig)) {
    console.error(`test_api3req.c lacks the SDK's TC3 signature for ${JSON.stringify(c)}: ${auth}`);
    missing++;
  }
}
if (check) {
  if (missing) process.exit(1);
  console.log(`test_api3req.c holds the SDK's ${cases.length} v1 and ${tc3.length} TC3 signatures`);
}
