// auditlog.mjs: the gateway's own account of requests, read back by X-Request-Id from
// /admin/audit. Its ts (arrival, wall clock, ms), latency_us (arrival to reply) and
// upstream_latency_us (0 when upstream was not called) are what the server measured, so tests
// about timing assert on them rather than on how long the client waited, which on a loaded
// machine includes time the client itself spent descheduled.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { waitFor } from './harness.mjs';

/**
 * Waits (bounded) until the audit records of every reply in `replies` (objects with the
 * x-request-id header, as gwCall returns them) are readable on gw's /admin/audit, and returns them
 * in the order of `replies`, each with `tsMs` (ts as Unix ms) added.
 */
export async function auditOf(gw, replies, { timeoutMs = 10000 } = {}) {
  const ids = replies.map((r) => {
    const id = r.headers?.['x-request-id'];
    assert.ok(id, `a reply without X-Request-Id: ${r.body}`);
    return id;
  });
  let found = new Map();
  try {
    await waitFor(async () => {
      const r = await gw.admin('/admin/audit?limit=1000');
      if (r.status !== 200 || !Array.isArray(r.json?.records)) return false;
      found = new Map(r.json.records.map((rec) => [rec.request_id, rec]));
      return ids.every((id) => found.has(id));
    }, { timeoutMs, intervalMs: 50, what: `${ids.length} audit records` });
  } catch (e) {
    throw new Error(`${e.message}: missing ${ids.filter((id) => !found.has(id)).join(', ')}`);
  }
  return ids.map((id) => {
    const rec = found.get(id);
    return { ...rec, tsMs: Date.parse(rec.ts) };
  });
}

/**
 * The audit records a gateway has written to JSONL files in dir (its spool segments while Redis
 * is unreachable, or audit.jsonl), each with `tsMs` added, oldest file first; a line still being
 * written is skipped. `filter(rec)` picks records. Waits (bounded) until at least `count` match.
 */
export async function spooledAudit(dir, { filter = () => true, count = 0, timeoutMs = 10000 } = {}) {
  let recs = [];
  const read = () => {
    const files = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.endsWith('.jsonl')).sort() : [];
    recs = [];
    for (const f of files) {
      for (const line of fs.readFileSync(path.join(dir, f), 'utf8').split('\n')) {
        let rec;
        try { rec = JSON.parse(line); } catch { continue; }
        if (filter(rec)) recs.push({ ...rec, tsMs: Date.parse(rec.ts) });
      }
    }
    return recs.length >= count;
  };
  await waitFor(read, { timeoutMs, intervalMs: 100, what: `${count} audit records in ${dir}` })
    .catch((e) => { throw new Error(`${e.message} (have ${recs.length})`); });
  return recs;
}
