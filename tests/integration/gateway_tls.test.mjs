// gateway_tls.test.mjs: capgate's HTTPS front over real TLS, with a CA and certificates made by
// scripts/gen-certs.sh (and, for the reload cases, leaf certificates this test issues from that
// CA): both front listeners at once, a client with the wrong CA refuses it, TLS 1.1 is refused by
// the server, ALPN picks http/1.1, SIGHUP serves a new certificate to new handshakes and keeps the
// old one when the new files do not load, HTTPS only ("listen": null), and --check-config.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { certs, startMock, tmpDir, waitFor } from './lib/harness.mjs';
import { APPS, gwCall, runCapgate, startGateway } from './lib/gateway.mjs';

let mock;
before(async () => { mock = await startMock({ tls: true }); });
after(async () => { await mock?.stop(); });

/** A new leaf certificate for 127.0.0.1/localhost signed by the test CA, written to dir. */
function issueLeaf(dir, name) {
  const c = certs();
  const key = path.join(dir, `${name}.key`);
  const csr = path.join(dir, `${name}.csr`);
  const pem = path.join(dir, `${name}.pem`);
  const ext = path.join(dir, `${name}.ext`);
  fs.writeFileSync(ext, 'basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n'
    + 'subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:csec.api.qcloud.com\n');
  execFileSync('openssl', ['req', '-newkey', 'rsa:2048', '-nodes', '-sha256', '-keyout', key, '-out', csr,
    '-subj', `/CN=${name}`], { stdio: 'pipe' });
  execFileSync('openssl', ['x509', '-req', '-in', csr, '-CA', c.ca, '-CAkey', path.join(c.dir, 'ca.key'),
    '-set_serial', String(crypto.randomInt(1, 2 ** 47)), '-days', '2', '-sha256', '-extfile', ext, '-out', pem],
  { stdio: 'pipe' });
  return { key, pem, serial: new crypto.X509Certificate(fs.readFileSync(pem)).serialNumber };
}

/** One TLS handshake with the front; resolves { cert (the peer's), alpn, protocol } or rejects. */
function handshake(port, opts = {}) {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', ca: certs().caPem, ...opts }, () => {
      const out = { cert: s.getPeerCertificate(), alpn: s.alpnProtocol, protocol: s.getProtocol() };
      s.end();
      resolve(out);
    });
    s.setTimeout(5000, () => s.destroy(new Error('handshake timed out')));
    s.on('error', reject);
  });
}

test('both listeners at once: a signed and a token call over HTTP and over HTTPS, verified against the test CA', async () => {
  const gw = await startGateway({ mock, tls: true });
  try {
    assert.ok(gw.port > 0 && gw.tlsPort > 0 && gw.port !== gw.tlsPort, `ports ${gw.port} ${gw.tlsPort}`);
    for (const https of [false, true]) {
      for (const app of [APPS.sig, APPS.token]) {
        for (const method of ['GET', 'POST']) {
          const r = await gwCall(gw, { app, method, https });
          assert.equal(r.json?.code, 0, `${https ? 'https' : 'http'} ${app.name} ${method}: ${r.body}`);
        }
      }
    }
    // A request signed for the other listener's host:port is refused: the Host is part of the
    // string to sign, whichever listener it came in on.
    const wrongHost = await gwCall({ ...gw, tlsHost: gw.host }, { https: true });
    assert.equal(wrongHost.json?.code, 4100, wrongHost.body);
  } finally {
    await gw.stop();
  }
});

test('a client that trusts another CA refuses the front; TLS 1.1 is refused by the server; ALPN says http/1.1', async () => {
  const gw = await startGateway({ mock, tls: true });
  try {
    const wrongCa = fs.readFileSync(path.join(certs().dir, 'wrong-ca.pem'));
    await assert.rejects(handshake(gw.tlsPort, { ca: wrongCa }), (e) => {
      assert.match(e.code ?? '', /UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED|UNABLE_TO_GET_ISSUER/, String(e));
      return true;
    });
    await assert.rejects(gwCall(gw, { https: true, ca: wrongCa }));

    // The client below can speak TLS 1.0-1.2 (security level 0 lets OpenSSL offer the old
    // versions); capped at 1.1 the server's alert ends it, capped at 1.2 it works, so the refusal
    // is the server's floor and not the client's.
    const old = { minVersion: 'TLSv1', ciphers: 'DEFAULT@SECLEVEL=0' };
    await assert.rejects(handshake(gw.tlsPort, { ...old, maxVersion: 'TLSv1.1' }), (e) => {
      assert.match(`${e.code} ${e.message}`, /ALERT_PROTOCOL_VERSION|alert protocol version/i, String(e));
      return true;
    });
    const ok12 = await handshake(gw.tlsPort, { ...old, maxVersion: 'TLSv1.2' });
    assert.equal(ok12.protocol, 'TLSv1.2');
    const ok13 = await handshake(gw.tlsPort);
    assert.equal(ok13.protocol, 'TLSv1.3');

    assert.equal((await handshake(gw.tlsPort, { ALPNProtocols: ['h2', 'http/1.1'] })).alpn, 'http/1.1');
    // Offered only h2: no ALPN answer rather than a failed handshake.
    assert.equal((await handshake(gw.tlsPort, { ALPNProtocols: ['h2'] })).alpn, false);
  } finally {
    await gw.stop();
  }
});

test('SIGHUP: new handshakes get the new certificate; a certificate that does not load refuses the reload and the old one stays', async () => {
  const dir = tmpDir('capgate-tls-reload-');
  const first = issueLeaf(dir, 'first');
  const cert = path.join(dir, 'server.pem');
  const key = path.join(dir, 'server.key');
  fs.copyFileSync(first.pem, cert);
  fs.copyFileSync(first.key, key);
  const gw = await startGateway({ mock, tls: true, config: { tls: { cert_file: cert, key_file: key } } });
  try {
    assert.equal((await handshake(gw.tlsPort)).cert.serialNumber, first.serial);
    const m0 = await gw.metrics();
    const ok0 = m0.get('capgate_config_reloads_total', { result: 'success' });
    const bad0 = m0.get('capgate_config_reloads_total', { result: 'failure' });

    const second = issueLeaf(dir, 'second');
    assert.notEqual(second.serial, first.serial);
    fs.copyFileSync(second.pem, cert);
    fs.copyFileSync(second.key, key);
    gw.reload();
    await waitFor(async () => (await gw.metrics()).get('capgate_config_reloads_total', { result: 'success' }) > ok0,
      { timeoutMs: 5000, intervalMs: 50, what: 'the reload to be applied' });
    assert.equal((await handshake(gw.tlsPort)).cert.serialNumber, second.serial, 'a new handshake sees the new certificate');
    assert.equal((await gwCall(gw, { https: true })).json?.code, 0);

    // A certificate that does not match the key: refused, logged, the second one stays.
    const third = issueLeaf(dir, 'third');
    fs.copyFileSync(third.pem, cert);
    gw.reload();
    await waitFor(async () => (await gw.metrics()).get('capgate_config_reloads_total', { result: 'failure' }) > bad0,
      { timeoutMs: 5000, intervalMs: 50, what: 'the reload to be refused' });
    assert.match(gw.proc.stderr, /reload refused: .*tls.*(mismatch|does not match)/i, gw.proc.stderr);
    assert.equal((await handshake(gw.tlsPort)).cert.serialNumber, second.serial, 'the old certificate stays');
    // Garbage in the certificate file: the same.
    fs.writeFileSync(cert, 'not a certificate\n');
    gw.reload();
    await waitFor(async () => (await gw.metrics()).get('capgate_config_reloads_total', { result: 'failure' }) > bad0 + 1,
      { timeoutMs: 5000, intervalMs: 50, what: 'the second reload to be refused' });
    assert.equal((await handshake(gw.tlsPort)).cert.serialNumber, second.serial, 'the old certificate stays');
    assert.equal((await gwCall(gw, { https: true, app: APPS.token })).json?.code, 0);
  } finally {
    await gw.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('HTTPS only ("listen": null) prints only the https line and serves', async () => {
  const gw = await startGateway({ mock, tls: true, config: { listen: null } });
  try {
    assert.equal(gw.base, null);
    assert.ok(!gw.proc.lines.some((l) => /^capgate listening on http:\/\//.test(l)), gw.proc.lines.join('\n'));
    assert.equal((await gwCall(gw, { https: true })).json?.code, 0);
  } finally {
    await gw.stop();
  }
});

test('--check-config prints tls_listen and tls, and refuses a certificate that does not load', async () => {
  const dir = tmpDir('capgate-tls-check-');
  const c = certs();
  const base = {
    upstream: { secret_id: 'AKIDx', secret_key_env: 'CAPGATE_SECRET_KEY' },
    tls_listen: '127.0.0.1:8443', tls: { cert_file: c.cert, key_file: c.key },
  };
  const good = path.join(dir, 'good.json');
  fs.writeFileSync(good, JSON.stringify(base));
  const r = await runCapgate(['--check-config', good]);
  assert.equal(r.code, 0, r.stderr);
  const dumped = JSON.parse(r.stdout);
  assert.equal(dumped.tls_listen, '127.0.0.1:8443');
  assert.deepEqual(dumped.tls, { cert_file: c.cert, key_file: c.key });

  const bad = path.join(dir, 'bad.json');
  fs.writeFileSync(bad, JSON.stringify({ ...base, tls: { cert_file: c.cert, key_file: path.join(c.dir, 'ca.key') } }));
  const r2 = await runCapgate(['--check-config', bad]);
  assert.equal(r2.code, 1, r2.stdout);
  assert.match(r2.stderr + r2.stdout, /tls: .*ca\.key/, r2.stderr);
  fs.rmSync(dir, { recursive: true, force: true });
});
