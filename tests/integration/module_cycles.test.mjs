// module_cycles.test.mjs: no two modules of a program depend on each other, directly or through
// others. A module is a .c file with its .h (proxy/pool.c + proxy/pool.h); it depends on another
// when its .c or .h includes the other's header, or when its object file uses a symbol the
// other's object file defines (nm on the static libraries the build made). Four modules are kept
// in several files: the gateway's store (store.c picks a backend, the backends store_memory.c
// and store_redis.c use store.c's helpers), its audit trail (audit.c and audit_*.c, sharing
// audit_internal.h), its metrics (minute_stats.c and metrics_*.c, sharing metrics_internal.h)
// and the mock's API (mock.c hands /__admin/ to admin_handle, declared in mock.h and written in
// admin.c). The mock's symbols are not checked: mock.c and widget.c call each other.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { SOURCE_DIR, BUILD_DIR } from './lib/harness.mjs';

const GROUPS = {
  proxy: {
    store_memory: 'store',
    store_redis: 'store',
    store_lua: 'store',
    store_backend: 'store',
    audit_internal: 'audit',
    audit_record: 'audit',
    audit_queue: 'audit',
    audit_spool: 'audit',
    audit_sink: 'audit',
    audit_query: 'audit',
    metrics_internal: 'minute_stats',
    metrics_batch: 'minute_stats',
    metrics_flush: 'minute_stats',
    metrics_query: 'minute_stats',
  },
  mockserver: { admin: 'mock' },
  common: {},
};
let groups = {};
const moduleOf = (file) => {
  const base = path.basename(file).replace(/\.(c|h)(\.o)?$/, '');
  return groups[base] || base;
};

/** Edges from #include "x.h" between the files of dir (headers of the core excluded: the core
 * is below every program). */
function includeEdges(dir) {
  const edges = new Map();
  for (const f of fs.readdirSync(dir).filter((n) => /\.(c|h)$/.test(n))) {
    const from = moduleOf(f);
    const text = fs.readFileSync(path.join(dir, f), 'utf8');
    for (const m of text.matchAll(/^\s*#\s*include\s+"([^"/]+)\.h"/gm)) {
      const to = moduleOf(m[1] + '.h');
      if (to === from || !fs.existsSync(path.join(dir, m[1] + '.h'))) continue;
      if (!edges.has(from)) edges.set(from, new Set());
      edges.get(from).add(to);
    }
  }
  return edges;
}

/** Edges from undefined symbols of one member of lib resolved by another member. */
function symbolEdges(lib) {
  const out = execFileSync('nm', ['-A', lib], { encoding: 'utf8', maxBuffer: 64 << 20 });
  const defs = new Map();
  const undef = [];
  for (const line of out.split('\n')) {
    const m = line.match(/^[^:]+:([^:]+\.o):\s*(?:[0-9a-f]+)?\s+([A-Za-z])\s+(\S+)$/);
    if (!m) continue;
    const [, obj, type, sym] = m;
    if (type === 'U') undef.push([moduleOf(obj), sym]);
    else if (/[TDBR]/.test(type)) defs.set(sym, moduleOf(obj));
  }
  const edges = new Map();
  for (const [from, sym] of undef) {
    const to = defs.get(sym);
    if (!to || to === from) continue;
    if (!edges.has(from)) edges.set(from, new Set());
    edges.get(from).add(to);
  }
  return edges;
}

/** A cycle as a list of modules (first repeated at the end), or null. */
function findCycle(edges) {
  const state = new Map(); // 1: on the path, 2: done
  const stack = [];
  const visit = (v) => {
    state.set(v, 1);
    stack.push(v);
    for (const w of edges.get(v) || []) {
      if (state.get(w) === 1) return [...stack.slice(stack.indexOf(w)), w];
      if (!state.has(w)) {
        const c = visit(w);
        if (c) return c;
      }
    }
    stack.pop();
    state.set(v, 2);
    return null;
  };
  for (const v of edges.keys()) {
    if (state.has(v)) continue;
    const c = visit(v);
    if (c) return c;
  }
  return null;
}

test('findCycle finds a cycle through three modules and none in a chain', () => {
  const e = (o) => new Map(Object.entries(o).map(([k, v]) => [k, new Set(v)]));
  assert.deepEqual(findCycle(e({ a: ['b'], b: ['c'], c: ['a'] })), ['a', 'b', 'c', 'a']);
  assert.equal(findCycle(e({ a: ['b'], b: ['c'], c: [] })), null);
});

for (const [dir, lib] of [['proxy', 'libcapgate_proxy.a'], ['mockserver', 'libcapgate_mocklib.a'],
                          ['common', 'libcapgate_core.a']]) {
  test(`${dir}: no include cycle between modules`, () => {
    groups = GROUPS[dir];
    const edges = includeEdges(path.join(SOURCE_DIR, dir));
    if (dir === 'proxy') assert.ok(edges.get('pipeline')?.has('pool'), 'the graph was read');
    const c = findCycle(edges);
    assert.equal(c, null, `include cycle: ${c?.join(' -> ')}`);
  });
  if (dir !== 'mockserver') test(`${dir}: no symbol cycle between modules (${lib})`, () => {
    groups = GROUPS[dir];
    const edges = symbolEdges(path.join(BUILD_DIR, lib));
    if (dir === 'proxy') assert.ok(edges.get('pipeline')?.has('pool'), 'the graph was read');
    const c = findCycle(edges);
    assert.equal(c, null, `symbol cycle: ${c?.join(' -> ')}`);
  });
}
