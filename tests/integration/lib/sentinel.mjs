// sentinel.mjs: a Redis master, its replica and three Sentinels, all started by the test on
// ports picked at run time (`redis-server --sentinel`, the same program as redis-sentinel), with
// short timings so a failover takes a few seconds: down-after-milliseconds 1000, failover-timeout
// 5000 (https://redis.io/docs/management/sentinel/, "Configuring Sentinel").
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { startRedis, freePort, tmpDir, waitFor, Proc } from './harness.mjs';

export const MASTER_NAME = 'mymaster';

function cli(port, password, ...a) {
  const auth = password ? ['--no-auth-warning', '-a', password] : [];
  return execFileSync('redis-cli', ['-p', String(port), ...auth, ...a], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
}

/** The address the sentinel on port says the master has, as "host:port", or null. */
export function sentinelMaster(port, password) {
  try {
    const out = cli(port, password, 'SENTINEL', 'get-master-addr-by-name', MASTER_NAME).split('\n');
    return out.length === 2 ? `${out[0]}:${out[1]}` : null;
  } catch {
    return null;
  }
}

/**
 * Starts the group. opts: downAfterMs (1000), failoverTimeoutMs (5000), password (the master, the
 * replica and the sentinels all require it: requirepass, masterauth, sentinel auth-pass and
 * sentinel-pass; the cli helpers send it).
 * Returns { master, replica (startRedis objects), sentinels: [{ port, proc, cli }],
 * addrs: ["127.0.0.1:port", ...], masterPortNow(), stop() }.
 */
export async function startSentinelGroup({ downAfterMs = 1000, failoverTimeoutMs = 5000, password } = {}) {
  const master = await startRedis();
  const replica = await startRedis();
  for (const r of [master, replica]) {
    if (password) {
      r.cli('CONFIG', 'SET', 'masterauth', password);
      r.cli('CONFIG', 'SET', 'requirepass', password);
      r.cli = (...a) => cli(r.port, password, ...a);
    }
  }
  replica.cli('REPLICAOF', '127.0.0.1', String(master.port));
  const sentinels = [];
  const stopAll = async () => {
    for (const s of sentinels) await s.proc.stop();
    await replica.stop();
    await master.stop();
  };
  try {
    await waitFor(() => /master_link_status:up/.test(replica.cli('INFO', 'replication')), { what: 'replica in sync' });
    for (let i = 0; i < 3; i++) {
      const port = await freePort();
      const dir = tmpDir('capgate-sentinel-');
      const conf = path.join(dir, 'sentinel.conf');
      fs.writeFileSync(conf, [
        `port ${port}`,
        'bind 127.0.0.1',
        `dir ${dir}`,
        `sentinel monitor ${MASTER_NAME} 127.0.0.1 ${master.port} 2`,
        `sentinel down-after-milliseconds ${MASTER_NAME} ${downAfterMs}`,
        `sentinel failover-timeout ${MASTER_NAME} ${failoverTimeoutMs}`,
        `sentinel parallel-syncs ${MASTER_NAME} 1`,
        ...(password ? [`requirepass ${password}`, `sentinel auth-pass ${MASTER_NAME} ${password}`, `sentinel sentinel-pass ${password}`] : []),
        '',
      ].join('\n'));
      const proc = new Proc('redis-server', [conf, '--sentinel']);
      sentinels.push({ port, proc, cli: (...a) => cli(port, password, ...a) });
    }
    // Each sentinel knows the master, its replica and the two other sentinels (hello messages
    // every 2 s): only then can a failover get its quorum and majority.
    for (const s of sentinels) {
      await waitFor(() => {
        try {
          const reps = s.cli('SENTINEL', 'replicas', MASTER_NAME);
          const others = s.cli('SENTINEL', 'sentinels', MASTER_NAME);
          return reps.includes(String(replica.port)) && others.split('\n').filter((l) => l === 'name').length === 2;
        } catch { return false; }
      }, { timeoutMs: 20000, intervalMs: 200, what: `sentinel ${s.port} sees the group` });
    }
  } catch (e) {
    await stopAll();
    throw e;
  }
  return {
    master,
    replica,
    sentinels,
    addrs: sentinels.map((s) => `127.0.0.1:${s.port}`),
    /** The master's port as the first sentinel that answers says, or null. */
    masterPortNow() {
      for (const s of sentinels) {
        const a = sentinelMaster(s.port, password);
        if (a) return Number(a.split(':')[1]);
      }
      return null;
    },
    stop: stopAll,
  };
}
