// upstream_tls_records.test.mjs: capgate's HTTPS upstream client (libevent's bufferevent_openssl
// with OpenSSL's read-ahead, proxy/upstream.c conn_*) against an origin written here, over real
// TLS with the test CA, where the test decides how the reply's bytes travel: in several TLS records
// that reach the gateway in one TCP segment (a coalescing relay between the two), byte by byte in
// many segments, in large bodies, many calls on one kept-alive connection, and an origin that
// closes (close_notify, or abruptly) while idle or mid-reply. Every reply must arrive complete and
// at once: a reply held in OpenSSL's buffer would end as the gateway's timeout (6200).
import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { certs, waitFor } from './lib/harness.mjs';
import { startGateway, gwCall, APPS } from './lib/gateway.mjs';

const TIMEOUT_MS = 2000;

/** The origin: a TLS server speaking just enough HTTP/1.1 for the gateway's GET, whose replies
 * are written by the current `plan` (sock, body, reqNo) function. Counts connections, requests
 * and the connections that resumed a TLS session. */
function startOrigin() {
  const c = certs();
  const o = {
    conns: 0, requests: 0, resumed: 0, sockets: new Set(),
    plan: (sock, body) => sock.write(head(body.length) + body),
  };
  o.server = tls.createServer({ key: fs.readFileSync(c.key), cert: fs.readFileSync(c.cert) }, (sock) => {
    o.conns++;
    if (sock.isSessionReused()) o.resumed++;
    sock.setNoDelay(true);
    o.sockets.add(sock);
    sock.on('close', () => o.sockets.delete(sock));
    sock.on('error', () => {});
    let buf = '';
    sock.on('data', (d) => {
      buf += d.toString('latin1');
      for (let end; (end = buf.indexOf('\r\n\r\n')) >= 0;) {
        const len = Number(/\r\ncontent-length:\s*(\d+)/i.exec(buf.slice(0, end))?.[1] ?? 0);
        if (buf.length < end + 4 + len) return;
        buf = buf.slice(end + 4 + len);
        o.requests++;
        o.plan(sock, o.body(o.requests), o.requests);
      }
    });
  });
  // A valid CaptchaIframeQuery reply, padded in its url to the size the test wants.
  o.size = 200;
  o.body = (n) => {
    const url = `https://ssl.captcha.qq.com/template/wireless_mb.html?sess=${n}&pad=`;
    const fixed = JSON.stringify({ code: 0, codeDesc: 'Success', message: '', url }).length;
    const pad = crypto.createHash('sha256').update(String(n)).digest('hex').repeat(1 + o.size / 64);
    return JSON.stringify({ code: 0, codeDesc: 'Success', message: '', url: url + pad.slice(0, Math.max(0, o.size - fixed)) });
  };
  return new Promise((resolve) => o.server.listen(0, '127.0.0.1', () => { o.port = o.server.address().port; resolve(o); }));
}

const head = (len, extra = '') => `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${len}${extra}\r\n\r\n`;
const nextTick = () => new Promise((r) => setImmediate(r));

/** Writes the reply in pieces, each its own TLS record (one socket.write each, a turn apart). */
async function inRecords(sock, text, pieces) {
  const step = Math.ceil(text.length / pieces);
  for (let i = 0; i < text.length; i += step) {
    sock.write(text.slice(i, i + step));
    await nextTick();
  }
}

/**
 * A TCP relay between the gateway and the origin. Gateway to origin: as it comes. Origin to gateway,
 * by mode: 'coalesce' gathers what the origin sends for a few milliseconds and writes it in one
 * write (several TLS records in one segment: what OpenSSL's read-ahead takes in one read());
 * 'dribble' writes it a few bytes at a time, a turn apart, with Nagle off (records and their
 * headers cut across segments).
 */
function startRelay(originPort) {
  const r = { mode: 'coalesce', sockets: new Set(), byOriginPeer: new Map() };
  // Resets the gateway's side of the connection the origin knows as coming from port.
  r.reset = (port) => r.byOriginPeer.get(port)?.resetAndDestroy();
  r.server = net.createServer((down) => {
    const up = net.connect(originPort, '127.0.0.1', () => r.byOriginPeer.set(up.localPort, down));
    down.setNoDelay(true);
    up.setNoDelay(true);
    for (const s of [up, down]) {
      r.sockets.add(s);
      s.on('close', () => { r.sockets.delete(s); up.destroy(); down.destroy(); });
      s.on('error', () => {});
    }
    down.on('data', (d) => up.write(d));
    let held = [];
    let timer = null;
    let queue = Promise.resolve();
    const flush = () => {
      const all = Buffer.concat(held);
      held = [];
      clearTimeout(timer);
      timer = null;
      if (all.length) queue = queue.then(() => down.write(all));
    };
    // the FIN goes after what is held (its segment may carry it)
    up.on('end', () => { flush(); queue = queue.then(() => down.end()); });
    up.on('data', (d) => {
      if (r.mode === 'dribble') {
        queue = queue.then(async () => {
          for (let i = 0; i < d.length;) {
            const n = 1 + (i % 7);
            down.write(d.subarray(i, i + n));
            i += n;
            await nextTick();
          }
        });
        return;
      }
      held.push(d);
      timer ??= setTimeout(flush, 5);
    });
  });
  return new Promise((resolve) => r.server.listen(0, '127.0.0.1', () => { r.port = r.server.address().port; resolve(r); }));
}

let origin;
let relay;
let gw;
before(async () => {
  origin = await startOrigin();
  relay = await startRelay(origin.port);
  // startGateway points upstream at `mock.tlsPort`: the relay in front of the origin. One worker,
  // so every call shares one pool and the connection counts are the pool's.
  gw = await startGateway({
    mock: { tlsPort: relay.port },
    config: { workers: 1, upstream: { method: 'GET', timeout_ms: TIMEOUT_MS, retries: 0, breaker_failures: 10000 } },
  });
});
after(async () => {
  await gw?.stop();
  for (const s of [...(relay?.sockets ?? [])]) s.destroy();
  for (const s of [...(origin?.sockets ?? [])]) s.destroy();
  relay?.server.close();
  origin?.server.close();
});
beforeEach(() => {
  relay.mode = 'coalesce';
  origin.size = 200;
  origin.plan = (sock, body) => sock.write(head(body.length) + body);
});

/** One call through the gateway (token app: no signature to race); asserts the reply is the
 * origin's reply number n, whole. */
async function callOk(what) {
  const before = origin.requests;
  const r = await gwCall(gw, { app: APPS.token, timeoutMs: TIMEOUT_MS + 5000 });
  assert.equal(r.status, 200, `${what}: HTTP ${r.status} ${r.body.slice(0, 300)}`);
  const j = JSON.parse(r.body);
  assert.equal(j.code, 0, `${what}: ${r.body.slice(0, 300)}`);
  assert.equal(origin.requests, before + 1, `${what}: the origin saw one request`);
  const want = JSON.parse(origin.body(before + 1));
  assert.equal(j.url, want.url, `${what}: the url arrived whole (${j.url?.length} of ${want.url.length} characters)`);
  return j;
}

/** After the origin closed the connection of an idle one: waits (bounded) until the gateway has
 * seen the close and dropped it from its pool, so the next call is not sent into the closing one
 * (a race retries: 0 would answer 6200 for). */
const settle = () => waitFor(async () => origin.sockets.size === 0
  && (await gw.metrics()).get('capgate_upstream_open_connections') === 0, { what: 'the gateway to drop the closed connection' });

test('a reply in several TLS records that reach the gateway in one segment, 60 calls on one kept-alive connection', async () => {
  const conns0 = origin.conns;
  origin.plan = (sock, body) => inRecords(sock, head(body.length) + body, 4);
  for (let i = 0; i < 60; i++) await callOk(`call ${i}`);
  assert.ok(origin.conns - conns0 <= 1, `the calls shared one connection (${origin.conns - conns0} new ones)`);
});

test('the header and the body in separate records, and records cut a few bytes at a time across segments', async () => {
  origin.plan = (sock, body) => inRecords(sock, head(body.length) + body, 2);
  await callOk('coalesced head + body');
  relay.mode = 'dribble';
  for (let i = 0; i < 8; i++) await callOk(`dribbled ${i}`);
  origin.plan = (sock, body) => inRecords(sock, head(body.length) + body, 9);
  for (let i = 0; i < 4; i++) await callOk(`dribbled, 9 records ${i}`);
});

test('large replies (up to 300 KB) in full records and in many small ones', async () => {
  for (const size of [16384 - 100, 16384, 16384 * 2 + 1, 100000, 300000]) {
    origin.size = size;
    origin.plan = (sock, body) => sock.write(head(body.length) + body);
    await callOk(`${size} bytes, one write`);
    origin.plan = (sock, body) => inRecords(sock, head(body.length) + body, 40);
    await callOk(`${size} bytes, 40 records coalesced`);
  }
  relay.mode = 'dribble';
  origin.size = 20000;
  await callOk('20000 bytes dribbled');
});

test('the origin closes an idle connection with close_notify, in the reply\'s segment or later; the next call resumes the TLS session', async () => {
  const resumed0 = origin.resumed;
  // close_notify (and FIN) right behind the reply, gathered into its segment by the relay
  origin.plan = (sock, body) => { sock.write(head(body.length) + body); sock.end(); };
  for (let i = 0; i < 3; i++) {
    await callOk(`reply then close_notify ${i}`);
    await settle();
  }
  origin.plan = (sock, body) => { sock.write(head(body.length) + body); setTimeout(() => sock.end(), 30); };
  for (let i = 0; i < 3; i++) {
    await callOk(`reply, close_notify 30 ms later ${i}`);
    await settle();
  }
  // Each of the 6 connections after the first resumed the session of the one before (the
  // origin's count; its tickets stay valid while it runs).
  assert.equal(origin.resumed - resumed0, 5, 'the connections after the first resumed the TLS session');
  // A reply with Connection: close: evhttp reconnects under the same connection object.
  const resumed1 = origin.resumed;
  origin.plan = (sock, body) => sock.write(head(body.length, '\r\nConnection: close') + body);
  for (let i = 0; i < 4; i++) await callOk(`Connection: close ${i}`);
  assert.equal(origin.resumed - resumed1, 4, 'evhttp\'s reconnects resumed the TLS session');
});

test('the relay drops an idle connection abruptly (RST), and the origin closes mid-reply: the next call succeeds, the cut one fails at once', async () => {
  origin.plan = (sock, body) => { sock.write(head(body.length) + body); setTimeout(() => relay.reset(sock.remotePort), 30); };
  for (let i = 0; i < 3; i++) {
    await callOk(`reply, then RST while idle ${i}`);
    await settle();
  }
  origin.plan = (sock, body) => { sock.write(head(body.length) + body.slice(0, 50)); setTimeout(() => sock.destroy(), 20); };
  const r = await gwCall(gw, { app: APPS.token, timeoutMs: TIMEOUT_MS + 5000 });
  const j = JSON.parse(r.body);
  assert.equal(j.code, 6200, r.body);
  assert.doesNotMatch(j.message, /time(d)?[ -]?out/i, `a cut reply is an error, not a timeout: ${r.body}`);
  origin.plan = (sock, body) => inRecords(sock, head(body.length) + body, 3);
  await settle();
  await callOk('after the cut reply');
});
