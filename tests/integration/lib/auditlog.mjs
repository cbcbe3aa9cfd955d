// auditlog.mjs: the gateway's own account of requests, read back by X-Request-Id from
// /admin/audit. Its ts (arrival, wall clock, ms), latency_us (arrival to reply) and
// upstream_latency_us (0 when upstream was not called) are what the server measured, so tests
// about timing assert on them rather than on how long the client waited, which on a loaded
// machine includes time the client itself spent descheduled.
import assert from 'node:assert/strict';
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
