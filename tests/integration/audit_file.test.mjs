// audit_file.test.mjs: log rotation of audit.file (in-memory store, no redis section). After the
// file is moved away as logrotate's create mode does, SIGUSR1 or SIGHUP has the sink open the
// path again, with no request needed to wake it: the records written before stay in the moved
// file, the later ones go to the new file, none lost and none written twice. When the path
// cannot be opened the gateway keeps serving, keeps writing to the moved file and logs why.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startMock, tmpDir, waitFor } from './lib/harness.mjs';
import { startGateway, gwCall } from './lib/gateway.mjs';

let mock;
const cleanups = [];

before(async () => {
  mock = await startMock({ tls: true });
});
after(async () => {
  for (const c of cleanups.reverse()) await c();
  await mock?.stop();
});

/** A gateway whose audit.file is records.jsonl in a directory of its own. */
async function gateway() {
  const dir = tmpDir('capgate-audit-file-');
  const file = path.join(dir, 'records.jsonl');
  const gw = await startGateway({ mock, config: { audit: { file } } });
  cleanups.push(async () => {
    await gw.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { gw, file };
}

/** n calls, ten at a time (so both workers submit); their X-Request-Ids. */
async function send(gw, n) {
  const ids = [];
  while (ids.length < n) {
    const batch = [];
    for (let i = 0; i < Math.min(10, n - ids.length); i++) batch.push(gwCall(gw));
    for (const r of await Promise.all(batch)) {
      assert.equal(r.status, 200, r.body);
      assert.match(r.headers['x-request-id'] ?? '', /^[0-9a-f]{16}$/, 'X-Request-Id');
      ids.push(r.headers['x-request-id']);
    }
  }
  return ids;
}

/** The request_id of every record line of file, in file order; [] when there is no file. */
function fileIds(file) {
  let text;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if (e.code === 'ENOENT') return [];
    throw e;
  }
  return text.split('\n').filter((l) => l !== '').map((l) => {
    const id = JSON.parse(l).request_id;
    assert.match(id ?? '', /^[0-9a-f]{16}$/, `a record line without a request_id: ${l}`);
    return id;
  });
}

/** Waits until file holds n records (they are written asynchronously), then returns their ids. */
async function waitForRecords(file, n, what) {
  await waitFor(() => fileIds(file).length >= n, { what: `${n} records in ${what}`, timeoutMs: 10000 });
  return fileIds(file);
}

const sorted = (ids) => [...ids].sort();

function assertOnce(ids) {
  const seen = new Set();
  for (const id of ids) {
    assert.ok(!seen.has(id), `request ${id} has two records`);
    seen.add(id);
  }
}

async function rotation(signal) {
  const { gw, file } = await gateway();
  const first = await send(gw, 30);
  await waitForRecords(file, first.length, 'the file');
  fs.renameSync(file, `${file}.1`);
  gw.proc.signal(signal);
  await waitFor(() => fs.existsSync(file), { what: `${file} made again after ${signal}`, timeoutMs: 5000 });
  const later = await send(gw, 30);
  const newIds = await waitForRecords(file, later.length, 'the new file');
  const oldIds = fileIds(`${file}.1`);

  assert.deepEqual(sorted(oldIds), sorted(first), 'the moved file holds exactly the first requests');
  assert.deepEqual(sorted(newIds), sorted(later), 'the new file holds exactly the later requests');
  assertOnce([...oldIds, ...newIds]);
  assert.equal(oldIds.length + newIds.length, first.length + later.length);
  assert.ok(gw.proc.stderr.includes(`audit: reopened ${file}`), gw.proc.stderr);
}

test('SIGUSR1 after the file was moved: earlier records stay in the moved file, later ones go to a new one', async () => {
  await rotation('SIGUSR1');
});

test('SIGHUP (no config change) reopens the file too', async () => {
  await rotation('SIGHUP');
});

test('a path that cannot be opened: the gateway keeps serving and writing to the moved file, and logs it', async () => {
  const { gw, file } = await gateway();
  const first = await send(gw, 20);
  await waitForRecords(file, first.length, 'the file');
  assert.equal((await gw.metrics()).get('capgate_audit_file_errors_total'), 0);
  fs.renameSync(file, `${file}.1`);
  fs.mkdirSync(file);
  gw.proc.signal('SIGUSR1');
  await waitFor(() => gw.proc.stderr.includes(`audit: reopen ${file}: Is a directory`),
    { what: 'the reopen error in the log', timeoutMs: 5000 });
  assert.equal((await gw.metrics()).get('capgate_audit_file_errors_total'), 1);

  const later = await send(gw, 20);
  const oldIds = await waitForRecords(`${file}.1`, first.length + later.length, 'the moved file');
  assert.deepEqual(sorted(oldIds), sorted([...first, ...later]), 'every record in the moved file');
  assertOnce(oldIds);
  assert.deepEqual(fs.readdirSync(file), [], 'nothing written into the directory');

  // Once the path is free again, the next SIGUSR1 opens it.
  fs.rmdirSync(file);
  gw.proc.signal('SIGUSR1');
  await waitFor(() => fs.existsSync(file), { what: `${file} made after the second SIGUSR1`, timeoutMs: 5000 });
  const last = await send(gw, 10);
  const newIds = await waitForRecords(file, last.length, 'the new file');
  assert.deepEqual(sorted(newIds), sorted(last), 'the new file holds exactly the last requests');
  assert.equal(fileIds(`${file}.1`).length, first.length + later.length, 'the moved file got no more');
});
