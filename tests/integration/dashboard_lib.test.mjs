// dashboard_lib.test.mjs: the dashboard's pure functions (proxy/dashboard/lib.mjs, the module the
// page itself imports): the Prometheus text parser, the quantile estimate from buckets, the
// aggregation of /admin/stats answers and the top tables. Expected values are worked out by hand
// in the comments.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { SOURCE_DIR } from './lib/harness.mjs';

const lib = await import(pathToFileURL(path.join(SOURCE_DIR, 'proxy/dashboard/lib.mjs')).href);
const { parsePrometheus, quantile, decumulate, latencyQuantiles, aggregate, top, ticks, stepFor, refused } = lib;

test('parsePrometheus: samples, labels with escapes, types, sums over matching labels', () => {
  const m = parsePrometheus([
    '# HELP capgate_requests_total Front requests.',
    '# TYPE capgate_requests_total counter',
    'capgate_requests_total{app="a",action="CaptchaCheck",decision="forwarded"} 3',
    'capgate_requests_total{app="a",action="CaptchaIframeQuery",decision="limited"} 2',
    'capgate_requests_total{app="b \\"q\\" \\\\ x\\ny",action="CaptchaCheck",decision="forwarded"} 5',
    'capgate_store_up 1',
    'h_bucket{le="+Inf"} 7 1700000000000',
    '',
  ].join('\n'));
  assert.equal(m.types.capgate_requests_total, 'counter');
  assert.equal(m.samples.length, 5);
  assert.equal(m.get('capgate_requests_total'), 10);
  assert.equal(m.get('capgate_requests_total', { app: 'a' }), 5);
  assert.equal(m.get('capgate_requests_total', { decision: 'forwarded' }), 8);
  assert.equal(m.all('capgate_requests_total', { app: 'b "q" \\ x\ny' }).length, 1, 'escapes \\" \\\\ \\n');
  assert.equal(m.get('capgate_store_up'), 1);
  assert.equal(m.all('h_bucket')[0].labels.le, '+Inf');
  assert.equal(m.get('h_bucket'), 7, 'a timestamp after the value is not the value');
  assert.equal(m.has('nope'), false);
  assert.throws(() => parsePrometheus('capgate_x{a="1"'), /line 1/);
  assert.throws(() => parsePrometheus('ok 1\ncapgate_x{a=1} 2'), /line 2: bad label/);
  assert.throws(() => parsePrometheus('capgate_x abc'), /not a sample value/);
});

test('quantile: linear interpolation inside the bucket holding the rank', () => {
  const bounds = [1, 5, 10, Infinity];
  // 10 samples: 4 in (0,1], 4 in (1,5], 2 in (5,10].
  // p50: rank 5 → bucket (1,5], 1 of its 4 → 1 + 4 × 1/4 = 2.
  assert.deepEqual(quantile(bounds, [4, 4, 2, 0], 0.5), { value: 2, bucket: 1, above: false });
  // p95: rank 9.5 → bucket (5,10], 1.5 of its 2 → 5 + 5 × 0.75 = 8.75.
  assert.equal(quantile(bounds, [4, 4, 2, 0], 0.95).value, 8.75);
  // p25: rank 2.5 in the first bucket, which starts at 0 → 2.5 / 4 = 0.625.
  assert.equal(quantile(bounds, [4, 4, 2, 0], 0.25).value, 0.625);
  // empty buckets before the rank are skipped: all 3 in (5,10]; p50 rank 1.5 → 5 + 5 × 0.5.
  assert.equal(quantile(bounds, [0, 0, 3, 0], 0.5).value, 7.5);
  // the rank in the unbounded bucket: only its lower bound is known.
  assert.deepEqual(quantile(bounds, [1, 0, 0, 9], 0.99), { value: 10, bucket: 3, above: true });
  assert.equal(quantile(bounds, [0, 0, 0, 0], 0.5), null, 'empty histogram');
  assert.throws(() => quantile(bounds, [1, 1, 1, 1], 1), RangeError);
  assert.throws(() => quantile(bounds, [1, 1], 0.5), RangeError);
});

test('decumulate: Prometheus cumulative buckets to per-bucket counts, in bound order', () => {
  const { bounds, counts } = decumulate([
    { le: Infinity, count: 12 }, { le: 0.001, count: 10 }, { le: 0.005, count: 11 }, { le: 0.01, count: 12 },
  ]);
  assert.deepEqual(bounds, [0.001, 0.005, 0.01, Infinity]);
  assert.deepEqual(counts, [10, 1, 1, 0]);
  // p50 of those: rank 6 of the 10 in (0, 1 ms] → 0.6 ms.
  assert.ok(Math.abs(quantile(bounds.map((b) => b * 1000), counts, 0.5).value - 0.6) < 1e-9);
});

test('latencyQuantiles: the le_* fields of /admin/stats (not cumulative, ms bounds)', () => {
  // 100 requests: 50 ≤ 1 ms, 40 in (1,5], 9 in (5,10], 1 in (10,50].
  const q = latencyQuantiles({ le_1ms: 50, le_5ms: 40, le_10ms: 9, le_50ms: 1 });
  assert.equal(q.p50.value, 1); // rank 50 is the last of the first bucket
  assert.equal(q.p95.value, 5 + (5 * 5) / 9); // rank 95: 5 of the 9 in (5,10]
  assert.equal(q.p99.value, 10); // rank 99: the last of (5,10]
  assert.equal(latencyQuantiles({}).p50, null);
  assert.equal(latencyQuantiles({ le_inf: 2 }).p99.above, true);
});

test('aggregate: pairs summed per step, empty steps filled, the answer\'s totals kept', () => {
  const answer = {
    from: 600, to: 840, step: 60,
    pairs: [
      { businessId: 1, sceneId: 1, totals: { requests: 3, forwarded: 3 }, series: [{ ts: 600, requests: 1, forwarded: 1 }, { ts: 720, requests: 2, forwarded: 2 }] },
      { businessId: 2, sceneId: '-', totals: { requests: 2, limited: 2 }, series: [{ ts: 720, requests: 2, limited: 2 }] },
    ],
    totals: { requests: 5, forwarded: 3, limited: 2 },
  };
  const a = aggregate(answer);
  assert.deepEqual(a.series.map((s) => s.ts), [600, 660, 720, 780]);
  assert.deepEqual(a.series[2], { ts: 720, requests: 4, forwarded: 2, limited: 2 });
  assert.deepEqual(a.series[1], { ts: 660 });
  assert.deepEqual(a.totals, answer.totals);
  assert.deepEqual(aggregate({ ...answer, totals: undefined }).totals, { requests: 5, forwarded: 3, limited: 2 });
  // The grouped shape (group=, fill=none): the answer's own series, its empty steps put back.
  const grouped = {
    from: 600, to: 840, step: 60, group: 'app', fill: 'none',
    groups: [{ app: 'a', totals: { requests: 9 }, series: [{ ts: 600, requests: 9 }] }],
    totals: { requests: 4, forwarded: 4 },
    series: [{ ts: 660, requests: 1, forwarded: 1 }, { ts: 780, requests: 3, forwarded: 3 }],
  };
  const g = aggregate(grouped);
  assert.deepEqual(g.series, [{ ts: 600 }, { ts: 660, requests: 1, forwarded: 1 }, { ts: 720 },
    { ts: 780, requests: 3, forwarded: 3 }], 'the top-level series, not the groups\'');
  assert.deepEqual(g.totals, grouped.totals);
  assert.deepEqual(lib.groupsOf(grouped), grouped.groups);
  assert.deepEqual(lib.groupsOf(answer), answer.pairs);
  assert.deepEqual(lib.groupsOf(null), []);
});

test('top and refused: grouped, ordered by requests or refusals, ties by the other then by key', () => {
  const pairs = [
    { businessId: 1, sceneId: 1, totals: { requests: 10, forwarded: 10 } },
    { businessId: 1, sceneId: 2, totals: { requests: 2, limited: 1, invalid: 1 } },
    { businessId: 2, sceneId: 1, totals: { requests: 5, unauthorized: 2, denied: 1, shadow_limited: 2 } },
    { businessId: '-', sceneId: '-', totals: { requests: 0 } },
  ];
  assert.equal(refused(pairs[2].totals), 3, 'shadow_limited is not a refusal');
  const byBiz = top(pairs, (p) => String(p.businessId), 'requests');
  assert.deepEqual(byBiz, [{ key: '1', requests: 12, refused: 2 }, { key: '2', requests: 5, refused: 3 }]);
  assert.deepEqual(top(pairs, (p) => String(p.businessId), 'refused').map((r) => r.key), ['2', '1']);
  assert.deepEqual(top(pairs, (p) => `${p.businessId}/${p.sceneId}`, 'refused', 1), [{ key: '2/1', requests: 5, refused: 3 }]);
});

test('ticks and stepFor', () => {
  assert.deepEqual(ticks(14), [0, 5, 10, 15]);
  assert.deepEqual(ticks(3), [0, 1, 2, 3]);
  assert.deepEqual(ticks(0), [0, 1]);
  assert.deepEqual(ticks(0.9), [0, 0.5, 1]); // 0.9 / 4 = 0.225 → a step of 0.5
  assert.equal(stepFor(900), 60);
  assert.equal(stepFor(3600), 60);
  assert.equal(stepFor(21600), 300);
  assert.equal(stepFor(86400), 900);
});
