// redis_sentinel.test.mjs: capgate with redis.sentinels (README "Redis Sentinel"; the client side
// follows https://redis.io/docs/reference/sentinel-clients/). A master, a replica and three
// Sentinels run on ports picked at run time (lib/sentinel.mjs).
//  - SIGHUP moves the gateway from a standalone Redis (redis.url) to the Sentinel group: the new
//    limit keys land on the master the sentinels name, none on the old server.
//  - The master is killed (SIGKILL) under load: every request is answered (on_store_error
//    "local") while the failover runs, and afterwards the limits are kept on the promoted replica:
//    its keys exist there and a rule refuses at exactly its burst.
//  - SENTINEL FAILOVER under load (the old master lives on as a replica): every worker moves.
//  - The master killed under load with audit.min_replicas 1: once a new replica of the promoted
//    master lets WAIT 1 succeed and the spool drains, every answered request has exactly one
//    record in the new master's stream.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMock, startRedis, waitFor, sleep } from './lib/harness.mjs';
import { startGateway, gwCall, APPS } from './lib/gateway.mjs';
import { runLoad, tokenRequest, summary } from './lib/load.mjs';
import { startSentinelGroup, MASTER_NAME } from './lib/sentinel.mjs';
import { streamEntries } from './lib/auditstream.mjs';

// A bucket of 5 that refills one token an hour: within a test, exactly 5 admitted per bucket.
const RULE = { name: 'sent', businessId: '*', sceneId: '*', rate: 5, period_s: 3600, burst: 5 };
const PARAMS = { captchaType: '1', disturbLevel: '1', isHttps: '1', clientType: '2', accountType: '0' };

let mock;
let group;
before(async () => {
  mock = await startMock({ tls: true });
  group = await startSentinelGroup();
});
after(async () => {
  await group?.stop();
  await mock?.stop();
});

const keyOf = (prefix, bid) => `${prefix}rl:${RULE.name}:${bid}:1`;
const exists = (server, key) => {
  try { return server.cli('EXISTS', key) === '1'; } catch { return false; }
};
const call = (gw, bid) => gwCall(gw, { app: APPS.token, params: { ...PARAMS, businessId: String(bid), sceneId: '1' } });

/** Sends one request for bid until its bucket shows up on server (the store is through). */
async function untilKeyOn(gw, server, prefix, bid, what) {
  await waitFor(async () => {
    await call(gw, bid);
    return exists(server, keyOf(prefix, bid));
  }, { timeoutMs: 20000, intervalMs: 200, what });
}

/**
 * burst + 3 requests one after another on a fresh bucket: exactly burst admitted, the rest 4400.
 * First every worker's store is connected (capgate_store_connected, as the gateway reports it),
 * so no request of the burst is decided by a worker's local fallback.
 */
async function exactBurst(gw, bid) {
  const codes = [];
  await waitFor(async () => (await gw.metrics()).get('capgate_store_connected') === gw.config.workers,
    { timeoutMs: 20000, intervalMs: 100, what: 'every worker\'s store connected' });
  for (let i = 0; i < RULE.burst + 3; i++) {
    const r = await call(gw, bid);
    codes.push(r.json?.code);
  }
  assert.deepEqual(codes, [...Array(RULE.burst).fill(0), 4400, 4400, 4400], `bucket ${bid}: ${codes}`);
}

/**
 * Load on gw until stop() (8 in flight, one bucket per request index mostly, so the rule rarely
 * refuses); stop() resolves the summed runLoad results (or the error that ended it).
 */
function loadUntil(gw, onReply) {
  let stop = false;
  const done = (async () => {
    const acc = { sent: 0, replies: 0, codes: {}, statuses: {}, errors: {}, maxMs: 0, elapsedMs: 0, admitted: 0, samples: {} };
    let i = 0;
    while (!stop) {
      const base = i;
      const part = await runLoad({
        spec: (k) => tokenRequest(gw, APPS.token, { businessId: String(1000 + ((base + k) % 5000)), sceneId: '1' }),
        concurrency: 8,
        durationMs: 500,
        onReply,
      });
      i += part.sent;
      for (const f of ['sent', 'replies', 'admitted', 'elapsedMs']) acc[f] += part[f];
      acc.maxMs = Math.max(acc.maxMs, part.maxMs);
      for (const f of ['codes', 'statuses', 'errors'])
        for (const [k, v] of Object.entries(part[f])) acc[f][k] = (acc[f][k] || 0) + v;
      for (const [k, v] of Object.entries(part.samples)) acc.samples[k] ??= v;
    }
    return acc;
  })().catch((e) => e);
  return { stop: () => { stop = true; return done; } };
}

/** Every request of r answered, with 0 or 4400 only. */
function answeredThroughout(r) {
  assert.ok(!(r instanceof Error), String(r));
  assert.deepEqual(r.errors, {}, `every request answered: ${summary(r)}`);
  assert.equal(r.admitted + (r.codes['4400'] || 0), r.replies, `only 0 and 4400: ${summary(r)}; ${JSON.stringify(r.samples)}`);
  assert.ok(r.replies > 0, summary(r));
}

test('SIGHUP: from a standalone redis.url to redis.sentinels', async (t) => {
  const solo = await startRedis();
  const prefix = `sh${process.pid}:`;
  let gw;
  try {
    gw = await startGateway({
      mock,
      config: { redis: { url: solo.url, key_prefix: prefix, timeout_ms: 200 }, on_store_error: 'local', limits: [RULE] },
    });
    await untilKeyOn(gw, solo, prefix, 11, 'a bucket on the standalone Redis');
    const cfg = structuredClone(gw.config);
    // the sentinels by name: looked up on the workers' loops (evdns, /etc/hosts)
    const byName = group.sentinels.map((x) => `localhost:${x.port}`);
    cfg.redis = { sentinels: byName, master_name: MASTER_NAME, key_prefix: prefix, timeout_ms: 200 };
    gw.writeConfig(cfg);
    gw.reload();
    await waitFor(() => /reload: config .* applied/.test(gw.proc.stderr), { what: 'reload applied' });
    assert.doesNotMatch(gw.proc.stderr, /reload: redis[^\n]*needs a restart/, 'the redis section is applied by SIGHUP');
    const masterPort = group.masterPortNow();
    const master = masterPort === group.master.port ? group.master : group.replica;
    await untilKeyOn(gw, master, prefix, 12, 'a bucket on the master the sentinels name');
    assert.equal(exists(solo, keyOf(prefix, 12)), false, 'nothing new on the old server');
    await exactBurst(gw, 13);
    assert.ok(exists(master, keyOf(prefix, 13)), 'the rule is kept on the sentinels\' master');
    t.diagnostic(`after the reload the store writes to port ${masterPort}`);
    // a SIGHUP that leaves the redis section as it is (a log rotation) reconnects nothing
    const reconnects = () => (gw.proc.stderr.match(/redis: new connection settings/g) || []).length;
    const applied = () => (gw.proc.stderr.match(/reload: config .* applied/g) || []).length;
    const [r0, a0] = [reconnects(), applied()];
    assert.equal(r0, 1, gw.proc.stderr);
    gw.reload();
    await waitFor(() => applied() === a0 + 1, { what: 'the second reload applied' });
    assert.equal(reconnects(), r0, 'the same settings: no reconnect');
  } finally {
    await gw?.stop();
    await solo.stop();
  }
});

test('the master killed under load: answered throughout, limits on the promoted replica', async (t) => {
  const prefix = `fo${process.pid}:`;
  const oldPort = group.masterPortNow();
  assert.equal(oldPort, group.master.port, 'the group starts with its first master');
  const gw = await startGateway({
    mock,
    config: {
      redis: { sentinels: group.addrs, master_name: MASTER_NAME, key_prefix: prefix, timeout_ms: 100 },
      on_store_error: 'local',
      limits: [RULE],
    },
  });
  try {
    await untilKeyOn(gw, group.master, prefix, 21, 'a bucket on the first master');
    // Load across the failover, a fresh bucket for most requests: replies are 0, or 4400 once a
    // bucket is reused.
    const load = loadUntil(gw);
    group.master.proc.signal('SIGKILL');
    const { signal } = await group.master.proc.exited;
    assert.equal(signal, 'SIGKILL');
    await waitFor(() => group.masterPortNow() === group.replica.port,
      { timeoutMs: 30000, intervalMs: 100, what: 'the sentinels promote the replica' });
    await waitFor(() => /role:master/.test(group.replica.cli('INFO', 'replication')), { what: 'the replica is master' });
    // the store is back, through the new master
    await untilKeyOn(gw, group.replica, prefix, 22, 'a bucket on the promoted replica');
    const r = await load.stop();
    t.diagnostic(`across the failover: ${r instanceof Error ? r.message : summary(r)}`);
    answeredThroughout(r);
    // after it: the rule holds on the new master, at exactly its burst
    const xlen = () => Number(group.replica.cli('XLEN', 'capgate:audit'));
    const before = xlen();
    await exactBurst(gw, 23);
    // and the audit sink writes there too (it reconnected after the switch)
    await waitFor(() => xlen() >= before + RULE.burst + 3, { timeoutMs: 15000, intervalMs: 100, what: 'audit records on the new master' });
    assert.ok(exists(group.replica, keyOf(prefix, 23)), 'the bucket lives on the promoted replica');
    assert.match(gw.proc.stderr, new RegExp(`switched master ${MASTER_NAME} to 127\\.0\\.0\\.1:${group.replica.port}`),
      'the +switch-master event was heard');
  } finally {
    await gw.stop();
  }
});

// A failover the sentinels are asked for: the old master stays up and becomes a replica, so a
// worker that kept its connection would get -READONLY on every write and the limits would never
// reach the new master. +switch-master and -READONLY both send the workers to the sentinels again.
// The group here requires a password everywhere: the master's comes from redis.url, the
// sentinels' from sentinel_password_env.
test('SENTINEL FAILOVER under load: every worker moves to the new master while the old one lives', async (t) => {
  const password = `pw-${process.pid}-sentinel`;
  const g = await startSentinelGroup({ password });
  const prefix = `gf${process.pid}:`;
  let gw;
  try {
    gw = await startGateway({
      mock,
      config: {
        redis: {
          url: `redis://:${password}@ignored/0`, sentinels: g.addrs, master_name: MASTER_NAME,
          sentinel_password_env: 'T_SENTINEL_PW', key_prefix: prefix, timeout_ms: 100,
        },
        on_store_error: 'local',
        limits: [RULE],
      },
      env: { T_SENTINEL_PW: password },
    });
    await untilKeyOn(gw, g.master, prefix, 31, 'a bucket on the first master');
    const load = loadUntil(gw);
    assert.equal(g.sentinels[0].cli('SENTINEL', 'FAILOVER', MASTER_NAME), 'OK');
    await waitFor(() => g.masterPortNow() === g.replica.port,
      { timeoutMs: 30000, intervalMs: 100, what: 'the sentinels promote the replica' });
    await waitFor(() => /role:master/.test(g.replica.cli('INFO', 'replication')), { what: 'the replica is master' });
    await untilKeyOn(gw, g.replica, prefix, 32, 'a bucket on the promoted replica');
    const r = await load.stop();
    t.diagnostic(`across the failover: ${r instanceof Error ? r.message : summary(r)}`);
    answeredThroughout(r);
    assert.ok(g.master.proc.child.exitCode === null, 'the old master still runs');
    const xlen = () => Number(g.replica.cli('XLEN', 'capgate:audit'));
    const before = xlen();
    await exactBurst(gw, 33);
    await waitFor(() => xlen() >= before + RULE.burst + 3, { timeoutMs: 15000, intervalMs: 100, what: 'audit records on the new master' });
    assert.doesNotMatch(gw.proc.stderr, new RegExp(password), 'the password is in no log line');
    assert.ok(exists(g.replica, keyOf(prefix, 33)), 'the bucket lives on the new master');
    assert.match(gw.proc.stderr, new RegExp(`switched master ${MASTER_NAME} to 127\\.0\\.0\\.1:${g.replica.port}`));
  } finally {
    await gw?.stop();
    await g.stop();
  }
});

// audit.min_replicas 1 across a failover (issue 13, "no audit record is lost"): a batch counts as
// written only once WAIT 1 confirms a replica has it, so what the killed master took but never
// passed on stays spooled. After the promotion the new master has no replica, so WAIT 1 fails and
// every record stays spooled; a new replica of the new master lets the spool drain. Then every
// request the client got a reply for has exactly one record in the new master's stream.
test('the master killed under load with audit.min_replicas 1: every answered request has exactly one record on the new master', async (t) => {
  const g = await startSentinelGroup();
  const prefix = `fa${process.pid}:`;
  const stream = `${prefix}audit`;
  let gw;
  let fresh;
  try {
    gw = await startGateway({
      mock,
      config: {
        redis: { sentinels: g.addrs, master_name: MASTER_NAME, key_prefix: prefix, timeout_ms: 100 },
        on_store_error: 'local',
        audit: { stream, min_replicas: 1 },
        limits: [RULE],
      },
    });
    await untilKeyOn(gw, g.master, prefix, 41, 'a bucket on the first master');
    const ids = [];
    const load = loadUntil(gw, (r) => { if (r.headers['x-request-id']) ids.push(r.headers['x-request-id']); });
    await sleep(1000);
    const beforeKill = ids.length;
    g.master.proc.signal('SIGKILL');
    await g.master.proc.exited;
    await waitFor(() => g.masterPortNow() === g.replica.port,
      { timeoutMs: 30000, intervalMs: 100, what: 'the sentinels promote the replica' });
    await waitFor(() => /role:master/.test(g.replica.cli('INFO', 'replication')), { what: 'the replica is master' });
    await untilKeyOn(gw, g.replica, prefix, 42, 'a bucket on the promoted replica');
    await sleep(500); // load on the new master too
    const r = await load.stop();
    t.diagnostic(`across the failover: ${r instanceof Error ? r.message : summary(r)}`);
    answeredThroughout(r);
    assert.ok(beforeKill > 0, 'replies before the kill');
    const spooled = async () => (await gw.metrics()).get('capgate_audit_spool_records');
    // alone, the new master cannot confirm WAIT 1: records are held
    await waitFor(async () => (await spooled()) > 0,
      { what: 'records spooled while the new master has no replica', timeoutMs: 10000, intervalMs: 100 });
    t.diagnostic(`new master without a replica: ${await spooled()} records spooled`);

    fresh = await startRedis({ args: ['--replicaof', '127.0.0.1', String(g.replica.port)] });
    await waitFor(() => /master_link_status:up/.test(fresh.cli('INFO', 'replication')),
      { what: 'a new replica in sync with the new master', timeoutMs: 15000, intervalMs: 100 });
    await waitFor(async () => (await spooled()) === 0,
      { what: 'the spool drained once the new master has a replica', timeoutMs: 30000, intervalMs: 200 });
    const counts = new Map();
    for (const e of streamEntries(g.replica.port, stream)) {
      const id = e.rec.request_id;
      counts.set(id, (counts.get(id) || 0) + 1);
    }
    t.diagnostic(`${ids.length} answered (${beforeKill} before the kill); ${[...counts.values()].reduce((a, b) => a + b, 0)} entries on the new master`);
    const lost = ids.filter((id) => !counts.has(id));
    const doubled = ids.filter((id) => (counts.get(id) || 0) > 1);
    assert.deepEqual(lost, [], `no answered request without its record (${lost.length} of ${ids.length})`);
    assert.deepEqual(doubled, [], `no record twice (${doubled.length} of ${ids.length})`);
    // nor any other (the probes of untilKeyOn, whose ids were not kept)
    assert.deepEqual([...counts].filter(([, n]) => n !== 1), [], 'every entry of the stream is one request');
  } finally {
    await gw?.stop();
    await fresh?.stop();
    await g.stop();
  }
});
