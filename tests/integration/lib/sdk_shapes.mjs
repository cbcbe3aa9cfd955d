// sdk_shapes.mjs: test clients that send a v2 request the way each official Tencent v2 SDK does:
// Python (qcloudapi-sdk-python 2.0.15), PHP (qcloudapi-sdk-php 2.0.9), Java (qcloudapi-sdk-java
// 2.0.7) and Node (npm qcloudapi-sdk 0.2.1, the real package). Written from the facts in
// docs/sdk-shapes.md (which names each SDK's source file); no SDK code is copied. The Node shape
// is the installed package itself, sending through its own `request` call.
//
// shapeCall(shape, baseUrl, opts) sends one call and resolves { status, headers, body, json,
// sent: { method, path, headers, params, body } }; `sent.params` is what went on the wire
// (Signature included), in wire order, so a test can compare it with the mock's journal.
import crypto from 'node:crypto';
import https from 'node:https';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const QcloudApi = require('qcloudapi-sdk');

export const SHAPES = Object.freeze(['python', 'php', 'java', 'node']);

/**
 * Each SDK's defaults: method, the Region configured when the app sets none (Python then leaves
 * Region out; Node, with none configured, sends it empty), the Nonce range it draws from, its
 * RequestClient, and whether it checks the server certificate.
 */
export const SHAPE_FACTS = Object.freeze({
  python: Object.freeze({ method: 'GET', region: undefined, nonceMin: 1n, nonceMax: (1n << 63n) - 1n,
    requestClient: 'SDK_PYTHON_2.0.15', verifiesTls: true }),
  php: Object.freeze({ method: 'GET', region: '', nonceMin: 1n, nonceMax: 65535n,
    requestClient: 'SDK_PHP_2.0.9', verifiesTls: false }),
  java: Object.freeze({ method: 'GET', region: '', nonceMin: 0n, nonceMax: 2147483646n,
    requestClient: 'SDK_JAVA_2.0.7', verifiesTls: true }),
  node: Object.freeze({ method: 'POST', region: undefined, nonceMin: 0n, nonceMax: 65535n,
    requestClient: 'SDK_NODEJS_0.2.1', verifiesTls: false }),
});

// Every Nonce drawn in this process. The mock and the gateway refuse a (SecretId, Nonce) pair
// seen before; the PHP and Node ranges (65536 values) would collide now and then over a run, so
// a draw that repeats is drawn again. The values still come from the SDK's own range.
const usedNonces = new Set();

/** A Nonce from [min, max] (BigInt bounds) not drawn before in this process, as a string. */
export function drawNonce(min, max) {
  const span = max - min + 1n;
  for (;;) {
    const r = BigInt(`0x${crypto.randomBytes(8).toString('hex')}`) % span;
    const s = String(min + r);
    if (!usedNonces.has(s)) {
      usedNonces.add(s);
      return s;
    }
  }
}

/** Marks a Nonce as used (for explicit ones), so no later draw repeats it. */
export function markNonce(n) {
  usedNonces.add(String(n));
}

// Percent-encoding of the three languages' form encoders, on UTF-8 bytes; space is '+' in all:
// Python urllib.parse.quote_plus keeps A-Za-z0-9 and "_.-~", PHP urlencode (http_build_query)
// keeps A-Za-z0-9 and "-_.", Java URLEncoder keeps A-Za-z0-9 and ".-*_".
function formEncoder(keep) {
  return (value) => {
    let out = '';
    for (const b of Buffer.from(String(value), 'utf8')) {
      const c = String.fromCharCode(b);
      if (b === 0x20) out += '+';
      else if (b < 0x80 && keep.test(c)) out += c;
      else out += `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
    }
    return out;
  };
}
const pyQuotePlus = formEncoder(/[A-Za-z0-9_.~-]/);
const phpUrlencode = formEncoder(/[A-Za-z0-9_.-]/);
const javaUrlEncode = formEncoder(/[A-Za-z0-9.*_-]/);

const encodePairs = (entries, enc, encodeKey = true) => entries
  .map(([k, v]) => `${encodeKey ? enc(k) : k}=${enc(v)}`).join('&');

const hmac = (method, key, text) => crypto.createHmac(method === 'HmacSHA256' ? 'sha256' : 'sha1', key)
  .update(Buffer.from(text, 'utf8')).digest('base64');

const byCodeUnit = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

/** Python's flattening of nested params: lists as name.0, name.1, dicts as name.key. */
function flattenPython(prefix, v, out) {
  if (Array.isArray(v)) {
    v.forEach((item, i) => flattenPython(prefix ? `${prefix}.${i}` : String(i), item, out));
  } else if (v !== null && typeof v === 'object') {
    for (const [k, item] of Object.entries(v)) flattenPython(prefix ? `${prefix}.${k}` : k, item, out);
  } else {
    out.push([prefix, v]);
  }
  return out;
}

function flatOnly(shape, params) {
  const out = [];
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && typeof v === 'object') {
      throw new Error(`${shape} shape: ${k} is nested; the ${shape} v2 SDK has no flattening (pass ${k}.0 etc.)`);
    }
    out.push([k, v]);
  }
  return out;
}

/** Sets name in an ordered [[k, v]] list: replaces in place, or appends. */
function put(list, name, value) {
  const i = list.findIndex(([k]) => k === name);
  if (i >= 0) list[i] = [name, value];
  else list.push([name, value]);
}
const has = (list, name) => list.some(([k]) => k === name);

function target(baseUrl, shape) {
  const u = new URL(baseUrl);
  if (u.protocol !== 'https:') throw new Error(`${shape} shape speaks HTTPS only; got ${baseUrl}`);
  return { u, host: u.host, path: u.pathname === '/' ? '/v2/index.php' : u.pathname };
}

function nonceFor(shape, opts) {
  if (opts.nonce !== undefined) {
    markNonce(opts.nonce);
    return String(opts.nonce);
  }
  const f = SHAPE_FACTS[shape];
  return drawNonce(f.nonceMin, f.nonceMax);
}

// ---- Python: QcloudApi/modules/base.py, QcloudApi/common/sign.py, QcloudApi/common/request.py ----

function buildPython(baseUrl, opts) {
  const { u, host, path } = target(baseUrl, 'python');
  const method = (opts.method ?? SHAPE_FACTS.python.method).toUpperCase();
  const signMethod = opts.signatureMethod ?? 'HmacSHA1';
  const list = flattenPython(null, opts.params ?? {}, []);
  const action = opts.action ?? 'CaptchaIframeQuery';
  put(list, 'Action', action[0].toUpperCase() + action.slice(1));
  put(list, 'RequestClient', SHAPE_FACTS.python.requestClient);
  const region = 'region' in opts ? opts.region : SHAPE_FACTS.python.region;
  if (!has(list, 'Region') && region !== undefined && region !== '') put(list, 'Region', region);
  if (!has(list, 'Token') && opts.token) put(list, 'Token', opts.token);
  if (!has(list, 'SecretId')) put(list, 'SecretId', opts.secretId);
  if (!has(list, 'Nonce')) put(list, 'Nonce', nonceFor('python', opts));
  if (!has(list, 'Timestamp')) put(list, 'Timestamp', String(opts.timestamp ?? Math.floor(Date.now() / 1000)));
  if (!has(list, 'SignatureMethod')) put(list, 'SignatureMethod', signMethod);
  // Every '_' of a name becomes '.', then the rewritten names are sorted; on POST a value that
  // starts with '@' stays out of the string to sign (it is still sent).
  const signed = new Map();
  for (const [k, v] of list) {
    if (method === 'POST' && String(v).startsWith('@')) continue;
    signed.set(k.replace(/_/g, '.'), String(v));
  }
  const text = `${method}${host}${path}?${[...signed.keys()].sort(byCodeUnit).map((k) => `${k}=${signed.get(k)}`).join('&')}`;
  put(list, 'Signature', hmac(list.find(([k]) => k === 'SignatureMethod')[1], opts.secretKey, text));
  const data = encodePairs(list, pyQuotePlus);
  // http.client: Host (no port when 443) and Accept-Encoding first, then Content-Length (POST),
  // then the SDK's own header; no User-Agent.
  if (method === 'GET') {
    return { u, method, path: `${path}?${data}`, headers: [['Host', host], ['Accept-Encoding', 'identity']],
      body: undefined, params: list };
  }
  return { u, method, path, body: Buffer.from(data),
    headers: [['Host', host], ['Accept-Encoding', 'identity'], ['Content-Length', String(Buffer.byteLength(data))],
      ['Content-Type', 'application/x-www-form-urlencoded']],
    params: list };
}

// ---- PHP: src/QcloudApi/Module/Base.php, src/QcloudApi/Common/Request.php, Common/Sign.php ----

function buildPhp(baseUrl, opts) {
  const { u, host, path } = target(baseUrl, 'php');
  const method = (opts.method ?? SHAPE_FACTS.php.method).toUpperCase();
  const list = flatOnly('php', opts.params ?? {});
  if (opts.signatureMethod) put(list, 'SignatureMethod', opts.signatureMethod);
  const action = opts.action ?? 'CaptchaIframeQuery';
  put(list, 'Action', action[0].toUpperCase() + action.slice(1));
  // Region is always sent: the configured DefaultRegion, '' when none was set.
  if (!has(list, 'Region')) put(list, 'Region', 'region' in opts ? (opts.region ?? '') : SHAPE_FACTS.php.region);
  if (!has(list, 'SecretId')) put(list, 'SecretId', opts.secretId);
  if (!has(list, 'Nonce')) put(list, 'Nonce', nonceFor('php', opts));
  if (!has(list, 'Timestamp')) put(list, 'Timestamp', String(opts.timestamp ?? Math.floor(Date.now() / 1000)));
  put(list, 'RequestClient', SHAPE_FACTS.php.requestClient);
  const sm = list.find(([k]) => k === 'SignatureMethod');
  const signMethod = sm && sm[1] === 'HmacSHA256' ? 'HmacSHA256' : 'HmacSHA1';
  // ksort by the names as sent; POST skips '@' values; '_' → '.' unless the name starts with '_'
  // (strpos returns 0 there, which PHP reads as false).
  const parts = [...list].sort(([a], [b]) => byCodeUnit(a, b))
    .filter(([, v]) => !(method === 'POST' && String(v).startsWith('@')))
    .map(([k, v]) => `${k.indexOf('_') > 0 ? k.replace(/_/g, '.') : k}=${v}`);
  const text = `${method}${host}${path}${parts.length ? `?${parts.join('&')}` : ''}`;
  put(list, 'Signature', hmac(signMethod, opts.secretKey, text));
  const data = encodePairs(list, phpUrlencode);
  // libcurl: Host (no port when 443), Accept: */*, then Content-Length and Content-Type on POST;
  // no User-Agent. The SDK turns certificate checks off (CURLOPT_SSL_VERIFYPEER false).
  if (method === 'GET') {
    return { u, method, path: `${path}?${data}`, headers: [['Host', host], ['Accept', '*/*']], body: undefined,
      params: list };
  }
  return { u, method, path, body: Buffer.from(data),
    headers: [['Host', host], ['Accept', '*/*'], ['Content-Length', String(Buffer.byteLength(data))],
      ['Content-Type', 'application/x-www-form-urlencoded']],
    params: list };
}

// ---- Java: com/qcloud/Module/Base.java, com/qcloud/Common/Request.java, Common/Sign.java ----

function buildJava(baseUrl, opts) {
  const { u, host, path } = target(baseUrl, 'java');
  const method = (opts.method ?? SHAPE_FACTS.java.method).toUpperCase();
  // A TreeMap: every list below is in name order.
  const map = new Map(flatOnly('java', opts.params ?? {}));
  if (opts.signatureMethod) map.set('SignatureMethod', opts.signatureMethod);
  const action = opts.action ?? 'CaptchaIframeQuery';
  map.set('Action', action[0].toUpperCase() + action.slice(1));
  if (!map.has('Region')) map.set('Region', 'region' in opts ? (opts.region ?? '') : SHAPE_FACTS.java.region);
  if (!map.has('SecretId')) map.set('SecretId', opts.secretId);
  if (!map.has('Nonce')) map.set('Nonce', nonceFor('java', opts));
  if (!map.has('Timestamp')) map.set('Timestamp', String(opts.timestamp ?? Math.floor(Date.now() / 1000)));
  map.set('RequestClient', SHAPE_FACTS.java.requestClient);
  map.delete('Signature');
  const sorted = () => [...map.entries()].map(([k, v]) => [k, String(v)]).sort(([a], [b]) => byCodeUnit(a, b));
  // POST skips non-empty values starting with '@'; every '_' of a name becomes '.'.
  const parts = sorted().filter(([, v]) => !(method === 'POST' && v.startsWith('@')))
    .map(([k, v]) => `${k.replace(/_/g, '.')}=${v}`);
  const text = `${method}${host}${path}${parts.length ? `?${parts.join('&')}` : ''}`;
  const signMethod = map.get('SignatureMethod') === 'HmacSHA256' ? 'HmacSHA256' : 'HmacSHA1';
  map.set('Signature', hmac(signMethod, opts.secretKey, text));
  const list = sorted();
  // The SDK sets accept, connection and user-agent; HttpURLConnection drops its "connection"
  // (a restricted header) and sends its own after Host, as a JDK 17 was seen to do.
  const common = [['accept', '*/*'], ['user-agent', 'Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1;SV1)']];
  if (method === 'GET') {
    // Names as they are, values through URLEncoder.
    const q = encodePairs(list, javaUrlEncode, false);
    return { u, method, path: `${path}?${q}`, headers: [...common, ['Host', host], ['Connection', 'keep-alive']],
      body: undefined, params: list };
  }
  // multipart/form-data, every value raw: each part is CRLF "--" boundary CRLF, one
  // Content-Disposition line, an empty line and the value; the body so starts with a CRLF and
  // ends with CRLF "--" boundary "--" CRLF. The boundary is 27 dashes and the first 15 hex
  // digits of the MD5 of the current time in milliseconds.
  const boundary = `${'-'.repeat(27)}${crypto.createHash('md5').update(String(Date.now())).digest('hex').slice(0, 15)}`;
  let body = '';
  for (const [k, v] of list) body += `\r\n--${boundary}\r\nContent-Disposition: form-data; name="${k}"\r\n\r\n${v}`;
  body += `\r\n--${boundary}--\r\n`;
  const buf = Buffer.from(body, 'utf8');
  return { u, method, path, body: buf,
    headers: [...common, ['Content-Type', `multipart/form-data; boundary=${boundary}`], ['Host', host],
      ['Connection', 'keep-alive'], ['Content-Length', String(buf.length)]],
    params: list };
}

/** Sends a built request over HTTPS; verify: check the server certificate against ca. */
function send(req, { ca, verify, timeoutMs = 10000 }) {
  const headers = {};
  for (const [k, v] of req.headers) headers[k] = v;
  return new Promise((resolve, reject) => {
    const r = https.request({
      host: req.u.hostname, port: req.u.port || 443, method: req.method, path: req.path, headers,
      agent: false, ca, rejectUnauthorized: verify, servername: sniName(req.u.hostname),
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve(reply(res, Buffer.concat(chunks).toString('utf8'))));
      res.on('error', reject);
    });
    // Node would add "Connection: close" (agent false); Python and PHP send no Connection header.
    if (!req.headers.some(([k]) => k.toLowerCase() === 'connection')) r.removeHeader('Connection');
    r.setTimeout(timeoutMs, () => r.destroy(new Error(`request to ${req.u.host} timed out`)));
    r.on('error', reject);
    r.end(req.body);
  });
}
// SNI carries host names only (RFC 6066 section 3), never an IP literal.
const sniName = (hostname) => (/^[\d.]+$|:/.test(hostname) ? undefined : hostname);

function reply(res, text) {
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.statusCode, headers: res.headers, body: text, json };
}

// ---- Node: the real qcloudapi-sdk package (index.js) ----

/**
 * The Node SDK itself: defaults as an app sets them (serviceType 'csec', host and protocol from
 * baseUrl; method POST, HmacSHA1, Region unset unless given). Its `request` call sends; an
 * https module handed to the request library through `httpModules` records what went out and the
 * status and headers that came back (the SDK's callback only gets the body).
 */
function callNode(baseUrl, opts) {
  const { u, path } = target(baseUrl, 'node');
  const defaults = {
    SecretId: opts.secretId, SecretKey: opts.secretKey, serviceType: 'csec', protocol: 'https', host: u.host, path,
  };
  if (opts.method) defaults.method = opts.method;
  if (opts.signatureMethod === 'HmacSHA256') defaults.signatureMethod = 'sha256';
  if ('region' in opts && opts.region !== undefined) defaults.Region = opts.region;
  const api = new QcloudApi(defaults);
  // The SDK draws round(random() * 65535); data may set Nonce, so one from the same range that
  // this process has not used is passed (see drawNonce).
  const data = { Action: opts.action ?? 'CaptchaIframeQuery', Nonce: Number(nonceFor('node', opts)), ...(opts.params ?? {}) };
  const sent = {};
  const got = {};
  const recorder = {
    ...https,
    Agent: https.Agent,
    globalAgent: https.globalAgent,
    request(o, ...rest) {
      const r = https.request(o, ...rest);
      sent.method = o.method;
      sent.path = o.path;
      sent.headers = Object.entries(o.headers ?? {});
      const chunks = [];
      const write = r.write.bind(r);
      const end = r.end.bind(r);
      r.write = (c, ...a) => { if (c) chunks.push(Buffer.from(c)); return write(c, ...a); };
      r.end = (c, ...a) => {
        if (c && typeof c !== 'function') chunks.push(Buffer.from(c));
        sent.body = Buffer.concat(chunks);
        return end(c, ...a);
      };
      r.on('response', (res) => { got.status = res.statusCode; got.headers = res.headers; });
      return r;
    },
  };
  const extra = { timeout: opts.timeoutMs ?? 10000, httpModules: { 'https:': recorder } };
  if (opts.ca) extra.ca = opts.ca;
  return new Promise((resolve, reject) => {
    api.request(data, api.defaults, (err, body) => {
      if (err) { reject(err); return; }
      const text = typeof body === 'string' ? body : JSON.stringify(body);
      const json = body !== null && typeof body === 'object' ? body : undefined;
      const wire = sent.method === 'GET' ? sent.path.slice(sent.path.indexOf('?') + 1) : sent.body.toString('utf8');
      resolve({ status: got.status, headers: got.headers, body: text, json,
        sent: { ...sent, params: [...new URLSearchParams(wire).entries()] } });
    }, extra);
  });
}

/**
 * One call shaped as `shape` ('python' | 'php' | 'java' | 'node') sends it, to baseUrl
 * ('https://HOST:PORT/v2/index.php'; the path defaults to /v2/index.php). opts: secretId,
 * secretKey, action, params (business params; nested objects and arrays only for python and
 * node, which flatten them), method (default: the SDK's), region (absent: the SDK's default;
 * undefined: unset), token (python), signatureMethod ('HmacSHA1' | 'HmacSHA256'), nonce,
 * timestamp, ca (PEM: the python and java shapes verify the server certificate against it, as
 * those SDKs verify; php and node do not verify, as those SDKs do not), timeoutMs.
 */
export async function shapeCall(shape, baseUrl, opts = {}) {
  if (!opts.secretId || !opts.secretKey) throw new Error('shapeCall needs secretId and secretKey');
  if (shape === 'node') return callNode(baseUrl, opts);
  const build = { python: buildPython, php: buildPhp, java: buildJava }[shape];
  if (!build) throw new Error(`unknown shape ${shape}; one of ${SHAPES.join(', ')}`);
  const req = build(baseUrl, opts);
  const r = await send(req, { ca: opts.ca, verify: SHAPE_FACTS[shape].verifiesTls, timeoutMs: opts.timeoutMs });
  return { ...r, sent: { method: req.method, path: req.path, headers: req.headers, params: req.params, body: req.body } };
}

/** The params a shape sent, without Signature, as an object (the mock's journal keeps no Signature). */
export function sentWithoutSignature(r) {
  return Object.fromEntries(r.sent.params.filter(([k]) => k !== 'Signature').map(([k, v]) => [k, String(v)]));
}
