// cli.test.mjs: capgate stats | audit | top | health against a running gateway with an admin
// token: the tables (aligned columns, the numbers /admin/stats and /admin/audit hold), --json,
// the token from --token-file and CAPGATE_ADMIN_TOKEN, the exit statuses, and audit --follow
// (spawned, fed new traffic, its new lines read, then killed).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { startMock, waitFor, tmpDir, SEED_PARAMS, CAPGATE_BIN } from './lib/harness.mjs';
import { startGateway, gwCall, APPS } from './lib/gateway.mjs';

const TOKEN = 'cli-test-admin-token-5c1e9a';
let mock;
let gw;
let dir;
let tokenFile;
const sent = []; // request ids, in the order sent

/** Runs `capgate args...` to the end: { code, stdout, stderr }. */
function cli(args, { env = {}, timeoutMs = 20000 } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(CAPGATE_BIN, args, { env: { ...process.env, CAPGATE_ADMIN_URL: '', CAPGATE_ADMIN_TOKEN: '', ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    const t = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`capgate ${args.join(' ')}: no exit within ${timeoutMs} ms`)); }, timeoutMs);
    child.on('exit', (code) => { clearTimeout(t); resolve({ code, stdout, stderr }); });
  });
}
const withAdmin = (args) => [...args, '--admin', gw.adminUrl, '--token-file', tokenFile];

/** A table's lines split in cells (two or more blanks apart), with each cell's end column. */
function parseTable(lines) {
  return lines.map((l) => {
    const cells = [];
    const re = /\S+(?: \S+)*/g;
    let m;
    while ((m = re.exec(l))) cells.push({ text: m[0], start: m.index, end: m.index + m[0].length });
    return cells;
  });
}

before(async () => {
  mock = await startMock({ tls: true });
  dir = tmpDir('capgate-cli-');
  tokenFile = path.join(dir, 'admin_token');
  fs.writeFileSync(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
  gw = await startGateway({ mock, config: { admin: { token_file: tokenFile }, metrics: { flush_ms: 200 } } });
  for (let i = 0; i < 3; i++) {
    const r = await gwCall(gw, { app: APPS.token });
    assert.equal(r.json?.code, 0, r.body);
    sent.push(r.headers['x-request-id']);
  }
  for (let i = 0; i < 2; i++) {
    const r = await gwCall(gw, { params: { ...SEED_PARAMS, businessId: '1', sceneId: '2' } });
    assert.equal(r.json?.code, 0, r.body);
    sent.push(r.headers['x-request-id']);
  }
  const auth = { headers: { authorization: `Bearer ${TOKEN}` } };
  await waitFor(async () => (await gw.admin('/admin/stats', auth)).json?.totals?.requests === 5,
    { timeoutMs: 10000, what: '5 requests in /admin/stats' });
  await waitFor(async () => (await gw.admin('/admin/audit', auth)).json?.records?.length === 5,
    { timeoutMs: 10000, what: '5 records in /admin/audit' });
});
after(async () => {
  await gw?.stop();
  await mock?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test('capgate stats: an aligned table per app with the counts of /admin/stats, and --json', async () => {
  const r = await cli(withAdmin(['stats', '--group', 'app', '--since', '1h']));
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trimEnd().split('\n');
  assert.match(lines[0], /step 60 s, by app/);
  const rows = parseTable(lines.slice(1));
  const head = rows[0];
  assert.deepEqual(head.slice(0, 3).map((c) => c.text), ['APP', 'REQUESTS', 'FORWARDED']);
  const col = (name) => head.findIndex((c) => c.text === name);
  const byApp = Object.fromEntries(rows.slice(1).map((cells) => [cells[0].text, cells]));
  assert.equal(byApp[APPS.token.name][col('REQUESTS')].text, '3');
  assert.equal(byApp[APPS.sig.name][col('REQUESTS')].text, '2');
  assert.equal(byApp.TOTAL[col('REQUESTS')].text, '5');
  assert.equal(byApp.TOTAL[col('FORWARDED')].text, '5');
  // every row has every column, numbers right-aligned under their heading
  for (const cells of rows.slice(1)) {
    assert.equal(cells.length, head.length, JSON.stringify(cells));
    for (let c = 1; c < head.length; c++) assert.equal(cells[c].end, head[c].end, `column ${head[c].text}`);
  }

  const j = await cli(withAdmin(['stats', '--json', '--app', APPS.token.name, '--step', '5m']));
  assert.equal(j.code, 0, j.stderr);
  const body = JSON.parse(j.stdout);
  assert.equal(body.step, 300);
  assert.equal(body.group, 'app');
  assert.equal(body.totals.requests, 3);
  assert.equal(body.partial, false);

  // a day without --step: the step grows to keep within the API's 1440 steps
  const day = await cli(withAdmin(['stats', '--json', '--since', '24h']));
  assert.equal(day.code, 0, day.stderr);
  assert.equal(JSON.parse(day.stdout).step, 120);
  assert.equal(JSON.parse(day.stdout).totals.requests, 5);

  // by pair (the default), with the series table
  const s = await cli(withAdmin(['stats', '--business', '1', '--series']));
  assert.equal(s.code, 0, s.stderr);
  assert.match(s.stdout, /^BUSINESS +SCENE +REQUESTS/m);
  assert.match(s.stdout, /^1 +2 +2 +2 /m);
  assert.match(s.stdout, /^TIME +REQUESTS/m);
});

test('the token: --token-file or CAPGATE_ADMIN_TOKEN; the URL from CAPGATE_ADMIN_URL; exit statuses', async () => {
  const env = { CAPGATE_ADMIN_URL: gw.adminUrl, CAPGATE_ADMIN_TOKEN: TOKEN };
  const ok = await cli(['stats', '--json'], { env });
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(JSON.parse(ok.stdout).totals.requests, 5);
  const no = await cli(['stats', '--admin', gw.adminUrl]);
  assert.equal(no.code, 1);
  assert.match(no.stderr, /HTTP 401/);
  const bad = await cli(['stats', '--frobnicate']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /unknown option --frobnicate/);
  const since = await cli(['stats', '--since', '1y']);
  assert.equal(since.code, 2);
  assert.match(since.stderr, /--since/);
  const step = await cli(withAdmin(['stats', '--step', '90s']));
  assert.equal(step.code, 2);
  // the server's 400 is shown
  const conflict = await cli(withAdmin(['stats', '--app', 'x', '--business', '1']));
  assert.equal(conflict.code, 1);
  assert.match(conflict.stderr, /HTTP 400: app cannot be combined with businessId/);
  // nobody listening
  const down = await cli(['health', '--admin', 'http://127.0.0.1:1']);
  assert.equal(down.code, 1);
  assert.match(down.stderr, /127\.0\.0\.1:1/);
});

test('capgate health: the readiness, store and audit, as a table and as JSON', async () => {
  const r = await cli(withAdmin(['health']));
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^status +ready$/m);
  assert.match(r.stdout, /^store +up$/m);
  assert.match(r.stdout, /^breaker +closed$/m);
  const j = await cli(withAdmin(['health', '--json']));
  assert.equal(j.code, 0, j.stderr);
  const h = JSON.parse(j.stdout);
  assert.equal(h.status, 'ready');
  assert.equal(h.live, true);
  assert.equal(h.audit, 'memory');
  assert.equal(h.breaker, 'closed');
});

test('capgate audit: the newest records oldest first, filtered; --json one record per line', async () => {
  const r = await cli(withAdmin(['audit', '--app', APPS.token.name]));
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trimEnd().split('\n');
  assert.match(lines[0], /^TIME +REQUEST_ID +APP +ACTION +BUSINESS +SCENE +DECISION/);
  assert.equal(lines.length, 1 + 3);
  const ids = lines.slice(1).map((l) => l.split(/ +/)[1]);
  assert.deepEqual(ids, sent.slice(0, 3));
  const j = await cli(withAdmin(['audit', '--json', '--limit', '4']));
  assert.equal(j.code, 0, j.stderr);
  const recs = j.stdout.trimEnd().split('\n').map((l) => JSON.parse(l));
  // the 4 newest the stream holds (two workers: its order may differ from arrival by a record),
  // printed by time
  assert.equal(recs.length, 4);
  assert.ok(recs.every((x) => sent.includes(x.request_id)), JSON.stringify(recs.map((x) => x.request_id)));
  assert.deepEqual(recs.map((x) => x.ts), recs.map((x) => x.ts).sort());
  assert.equal(recs[3].request_id, sent[4]);
  assert.equal(recs[3].businessId, 1);
  const bad = await cli(withAdmin(['audit', '--decision', 'maybe']));
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /decision must be one of/);
  // --code: the server filters by the reply's API code (every request so far got 0)
  const zero = await cli(withAdmin(['audit', '--json', '--code', '0']));
  assert.equal(zero.code, 0, zero.stderr);
  const zeros = zero.stdout.trimEnd().split('\n').map((l) => JSON.parse(l));
  assert.equal(zeros.length, sent.length);
  assert.ok(zeros.every((x) => x.code === 0 && sent.includes(x.request_id)), zero.stdout);
  const none = await cli(withAdmin(['audit', '--json', '--code', '4100']));
  assert.equal(none.code, 0, none.stderr);
  assert.equal(none.stdout, '');
  const badCode = await cli(withAdmin(['audit', '--code', '44x']));
  assert.equal(badCode.code, 1);
  assert.match(badCode.stderr, /HTTP 400: code must be an integer API code/);
});

test('capgate audit --follow prints new records as they arrive, each once', async () => {
  const child = spawn(CAPGATE_BIN, withAdmin(['audit', '--follow', '--json', '--interval', '1s']),
    { env: { ...process.env, CAPGATE_ADMIN_URL: '', CAPGATE_ADMIN_TOKEN: '' } });
  const lines = [];
  let buf = '';
  let stderr = '';
  child.stdout.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      lines.push(JSON.parse(buf.slice(0, i)));
      buf = buf.slice(i + 1);
    }
  });
  child.stderr.on('data', (d) => { stderr += d; });
  try {
    await waitFor(() => lines.length >= 5, { timeoutMs: 10000, what: `the 5 records so far (stderr ${stderr})` });
    const fresh = [];
    for (let i = 0; i < 3; i++) {
      const r = await gwCall(gw, { app: APPS.token, params: { ...SEED_PARAMS, businessId: '9' } });
      assert.equal(r.json?.code, 0, r.body);
      fresh.push(r.headers['x-request-id']);
    }
    await waitFor(() => lines.length >= 8, { timeoutMs: 15000, what: `3 new lines (stderr ${stderr})` });
    await new Promise((res) => setTimeout(res, 1500)); // one more poll: nothing again
    const ids = lines.map((x) => x.request_id);
    assert.deepEqual(ids, [...sent, ...fresh]);
    assert.ok(lines.slice(5).every((x) => x.businessId === 9));
  } finally {
    child.kill('SIGTERM');
  }
});

test('capgate top: per-business and per-app tables, snapshots when stdout is not a terminal', async () => {
  const once = await cli(withAdmin(['top', '--once']));
  assert.equal(once.code, 0, once.stderr);
  assert.doesNotMatch(once.stdout, /\x1b\[/, 'no terminal escapes into a pipe');
  assert.match(once.stdout, /^capgate top - .* - store up, audit memory - \d+ requests/m);
  assert.match(once.stdout, /^BUSINESS +REQ\/S +REQUESTS/m);
  assert.match(once.stdout, /^APP +REQ\/S +REQUESTS/m);
  assert.match(once.stdout, new RegExp(`^${APPS.token.name} +- +[1-9]`, 'm'));
  const two = await cli(withAdmin(['top', '-n', '2', '--interval', '1s', '--json']));
  assert.equal(two.code, 0, two.stderr);
  const snaps = two.stdout.trimEnd().split('\n').map((l) => JSON.parse(l));
  assert.equal(snaps.length, 2);
  const app = snaps[1].apps.find((a) => a.app === APPS.token.name);
  assert.ok(app && app.totals.requests >= 3, JSON.stringify(snaps[1].apps));
  assert.equal(typeof app.rate, 'number', 'the second snapshot has a rate');
  assert.ok(snaps[0].businesses.some((b) => b.businessId === '1'));
});

test('capgate top on a terminal redraws in place', async (t) => {
  // a pseudo-terminal from util-linux script(1); skipped where it is missing
  const probe = await new Promise((resolve) => {
    const c = spawn('script', ['--version']);
    c.on('error', () => resolve(false));
    c.on('exit', (code) => resolve(code === 0));
  });
  if (!probe) {
    t.skip('script(1) is not installed');
    return;
  }
  const cmd = [CAPGATE_BIN, ...withAdmin(['top', '-n', '2', '--interval', '1s'])]
    .map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(' ');
  const out = await new Promise((resolve, reject) => {
    const c = spawn('script', ['-qec', cmd, '/dev/null'], { env: { ...process.env, CAPGATE_ADMIN_URL: '', CAPGATE_ADMIN_TOKEN: '' } });
    let s = '';
    c.stdout.on('data', (d) => { s += d; });
    const timer = setTimeout(() => { c.kill('SIGKILL'); reject(new Error('top on a pty did not end')); }, 20000);
    c.on('exit', (code) => { clearTimeout(timer); resolve({ code, s }); });
  });
  assert.equal(out.code, 0, out.s);
  // home + clear before each of the two frames
  assert.equal(out.s.split('\x1b[H\x1b[2J').length - 1, 2, JSON.stringify(out.s.slice(0, 200)));
  assert.match(out.s, /BUSINESS +REQ\/S/);
});
