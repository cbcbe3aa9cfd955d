// badinput.mjs: a table of malformed, oversized, slow and invalid requests sent over raw sockets,
// shared by the tests of capgate-mock and capgate. Each case must get an HTTP response in the
// API's JSON shape ({code != 0, codeDesc, message}) whose message names what was wrong, and the
// server must answer a valid signed request right after.
import assert from 'node:assert/strict';
import { rawRequest, parseRawResponse, sign, nextNonce, SEED_PARAMS } from './harness.mjs';

const API_PATH = '/v2/index.php';

/** Raw HTTP/1.1 request bytes. headers: array of [name, value]; body string or undefined. */
export function rawHttp(method, target, host, { headers = [], body } = {}) {
  const lines = [`${method} ${target} HTTP/1.1`, `Host: ${host}`, 'Connection: close'];
  for (const [k, v] of headers) lines.push(`${k}: ${v}`);
  if (body !== undefined) {
    lines.push('Content-Type: application/x-www-form-urlencoded', `Content-Length: ${Buffer.byteLength(body)}`);
  }
  return `${lines.join('\r\n')}\r\n\r\n${body ?? ''}`;
}

/**
 * The cases. Each: name; expect (regexes the reply's message must all match); send(ctx) → the
 * bytes to write (string, or an array of chunks); optional timeoutMs for the whole exchange.
 * ctx: { host ('127.0.0.1:PORT'), signed(method, params) → an encoded, validly signed
 * parameter string for method ('GET' | 'POST' | 'PUT') with the seed's params merged with
 * params (a key set to undefined is dropped) }.
 */
export const BAD_INPUT_CASES = [
  {
    name: 'malformed percent-encoding',
    expect: [/percent/i, /uid/],
    send: ({ host, signed }) => rawHttp('GET', `${API_PATH}?${signed('GET', {})}&uid=%zz`, host),
  },
  {
    name: '100 KiB body',
    expect: [/body/i, /limit|large|exceed|65536|64 KiB/i],
    send: ({ host, signed }) => rawHttp('POST', API_PATH, host, {
      body: `${signed('POST', {})}&pad=${'a'.repeat(100 * 1024)}`,
    }),
  },
  {
    name: '20 KiB URI',
    expect: [/URI|request.target/i, /limit|long/i],
    send: ({ host, signed }) => rawHttp('GET', `${API_PATH}?${signed('GET', {})}&pad=${'a'.repeat(20 * 1024)}`, host),
  },
  {
    name: 'header flood (2000 headers)',
    expect: [/header/i, /limit|many/i],
    send: ({ host, signed }) => rawHttp('GET', `${API_PATH}?${signed('GET', {})}`, host, {
      headers: Array.from({ length: 2000 }, (_, i) => [`X-Flood-${i}`, 'v']),
    }),
  },
  {
    name: 'body that stops halfway (Content-Length 1000, 500 sent)',
    expect: [/body/i, /not complete|timed? ?out|after \d+ ?ms/i],
    timeoutMs: 8000,
    send: ({ host }) => {
      const head = [`POST ${API_PATH} HTTP/1.1`, `Host: ${host}`, 'Connection: close',
        'Content-Type: application/x-www-form-urlencoded', 'Content-Length: 1000'].join('\r\n');
      return `${head}\r\n\r\nAction=CaptchaIframeQuery&pad=${'a'.repeat(500 - 'Action=CaptchaIframeQuery&pad='.length)}`;
    },
  },
  {
    name: 'non-numeric UInt',
    expect: [/captchaType/, /integer|digit|number/i],
    send: ({ host, signed }) => rawHttp('GET', `${API_PATH}?${signed('GET', { captchaType: 'abc' })}`, host),
  },
  {
    name: 'UInt out of range (4294967296)',
    expect: [/businessId/, /4294967295|range/i],
    send: ({ host, signed }) => rawHttp('GET', `${API_PATH}?${signed('GET', { businessId: '4294967296' })}`, host),
  },
  {
    name: 'negative number',
    expect: [/sceneId/, /unsigned|negative|integer/i],
    send: ({ host, signed }) => rawHttp('GET', `${API_PATH}?${signed('GET', { sceneId: '-1' })}`, host),
  },
  {
    name: 'unknown Action',
    expect: [/Action/, /NoSuchAction/],
    send: ({ host, signed }) => rawHttp('GET', `${API_PATH}?${signed('GET', { Action: 'NoSuchAction' })}`, host),
  },
  {
    name: 'PUT',
    expect: [/method/i, /PUT/],
    send: ({ host, signed }) => rawHttp('PUT', `${API_PATH}?${signed('PUT', {})}`, host),
  },
  // Framing per RFC 9112 (3.2 Host, 6.1 Transfer-Encoding, 6.3 Content-Length, 7.1.1 chunks).
  {
    name: 'HTTP/1.1 without Host',
    expect: [/Host/],
    send: ({ signed }) => `GET ${API_PATH}?${signed('GET', {})} HTTP/1.1\r\nConnection: close\r\n\r\n`,
  },
  {
    name: 'two Host headers',
    expect: [/more than one Host/],
    send: ({ host, signed }) => rawHttp('GET', `${API_PATH}?${signed('GET', {})}`, host, {
      headers: [['Host', host]],
    }),
  },
  {
    name: 'two equal Content-Length headers',
    expect: [/more than one Content-Length/],
    send: ({ host, signed }) => {
      const body = signed('POST', {});
      return rawHttp('POST', API_PATH, host, { body, headers: [['Content-Length', Buffer.byteLength(body)]] });
    },
  },
  {
    name: 'Transfer-Encoding on HTTP/1.0',
    expect: [/Transfer-Encoding/, /HTTP\/1\.0/],
    send: ({ host, signed }) => {
      const body = signed('POST', {});
      return [`POST ${API_PATH} HTTP/1.0`, `Host: ${host}`, 'Transfer-Encoding: chunked',
        'Content-Type: application/x-www-form-urlencoded', '', `${body.length.toString(16)}`,
        body, '0', '', ''].join('\r\n');
    },
  },
  {
    name: 'chunk-size line with a NUL (5\\0garbage)',
    expect: [/chunk-size/],
    send: ({ host, signed }) => {
      const body = signed('POST', {});
      return [`POST ${API_PATH} HTTP/1.1`, `Host: ${host}`, 'Connection: close',
        'Transfer-Encoding: chunked', 'Content-Type: application/x-www-form-urlencoded', '',
        `${body.length.toString(16)}\0garbage`, body, '0', '', ''].join('\r\n');
    },
  },
  {
    name: 'chunk extension with a bare CR (3;\\rGET ...)',
    expect: [/chunk-size/],
    send: ({ host, signed }) => {
      const body = signed('POST', {});
      return [`POST ${API_PATH} HTTP/1.1`, `Host: ${host}`, 'Connection: close',
        'Transfer-Encoding: chunked', 'Content-Type: application/x-www-form-urlencoded', '',
        `${body.length.toString(16)};\rGET ${API_PATH}?${signed('GET', {})} HTTP/1.1`,
        `Host: ${host}`, '', body, '0', '', ''].join('\r\n');
    },
  },
];

/**
 * Registers one subtest per case on t (a node:test context). target: { port, signed(method,
 * params) (see BAD_INPUT_CASES), alive() → resolves when a valid signed request succeeded }.
 */
export async function runBadInputCases(t, target, cases = BAD_INPUT_CASES) {
  const ctx = { host: `127.0.0.1:${target.port}`, signed: target.signed };
  for (const c of cases) {
    await t.test(c.name, async () => {
      const { text, how } = await rawRequest(target.port, c.send(ctx), { timeoutMs: c.timeoutMs ?? 5000 });
      const res = parseRawResponse(text);
      assert.ok(res, `no HTTP response (${how}); got ${JSON.stringify(text.slice(0, 200))}`);
      assert.ok(res.status >= 200 && res.status < 600, `status ${res.status}`);
      assert.ok(res.json && typeof res.json === 'object', `body is not JSON: ${res.body.slice(0, 200)}`);
      assert.equal(typeof res.json.code, 'number', `code: ${res.body}`);
      assert.notEqual(res.json.code, 0, `accepted: ${res.body}`);
      assert.equal(typeof res.json.codeDesc, 'string', `codeDesc: ${res.body}`);
      assert.equal(typeof res.json.message, 'string', `message: ${res.body}`);
      for (const re of c.expect) assert.match(res.json.message, re, `message should say what was wrong: ${res.body}`);
      await target.alive();
    });
  }
}

/** The seed's params merged with overrides (a key set to undefined is dropped). */
export function seedWith(overrides) {
  const p = { ...SEED_PARAMS };
  for (const [k, v] of Object.entries(overrides)) {
    if (v === undefined) delete p[k];
    else p[k] = String(v);
  }
  return p;
}

/**
 * A `signed(method, overrides)` for BAD_INPUT_CASES: v2 public params for secretId, the seed's
 * business params with overrides (Action included), signed with secretKey for host and path.
 */
export function v2Signer({ host, secretId, secretKey, path = API_PATH, signatureMethod }) {
  return (method, overrides) => {
    const { Action = 'CaptchaIframeQuery', ...rest } = overrides;
    const params = {
      Action, Region: 'gz', SecretId: secretId,
      Timestamp: String(Math.floor(Date.now() / 1000)), Nonce: String(nextNonce()),
      ...(signatureMethod ? { SignatureMethod: signatureMethod } : {}),
      ...seedWith(rest),
    };
    params.Signature = sign(method, host, path, params, secretKey);
    return new URLSearchParams(params).toString();
  };
}
