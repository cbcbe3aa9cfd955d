// contrib_files.test.mjs: contrib/grafana/capgate.json is a valid dashboard and
// contrib/prometheus/alerts.yml valid alerting rules, and every metric either one names is a
// family (or a histogram series of one) in the /metrics of a running gateway after traffic (with
// Redis, a limit rule and a pool profile, so every family is there).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { startMock, startRedis, waitFor, SOURCE_DIR, SEED_PARAMS } from './lib/harness.mjs';
import { startGateway, gwCall, APPS } from './lib/gateway.mjs';
import { poolConfig } from './lib/cache.mjs';

const GRAFANA = path.join(SOURCE_DIR, 'contrib/grafana/capgate.json');
const ALERTS = path.join(SOURCE_DIR, 'contrib/prometheus/alerts.yml');

let mock;
let redis;
let gw;
let metrics;
before(async () => {
  mock = await startMock({ tls: true });
  redis = await startRedis();
  gw = await startGateway({
    mock,
    config: {
      redis: { url: redis.url, key_prefix: 'icf:', timeout_ms: 2000 },
      limits: [{ name: 'tight', scope: 'app', app: APPS.token.name, rate: 1, period_s: 3600, burst: 1 }],
      ...poolConfig({ size: 2 }),
    },
  });
  for (let i = 0; i < 3; i++) await gwCall(gw, { app: APPS.token });
  await gwCall(gw, { params: { ...SEED_PARAMS, businessId: '1' } });
  await waitFor(async () => (await gw.metrics()).get('capgate_requests_total') >= 4,
    { timeoutMs: 10000, what: 'the requests in /metrics' });
  metrics = await gw.metrics();
});
after(async () => {
  await gw?.stop();
  await redis?.stop();
  await mock?.stop();
});

/** The capgate_* names in text (PromQL), without duplicates. */
const metricNames = (text) => [...new Set(text.match(/\bcapgate_[a-z0-9_]+/g) ?? [])];

/** A name /metrics has: a sample name, or a family of its # TYPE lines. */
function exists(name) {
  return metrics.has(name) || name in metrics.types;
}

test('the Grafana dashboard is valid JSON whose every query names metrics /metrics has', () => {
  const dash = JSON.parse(fs.readFileSync(GRAFANA, 'utf8'));
  assert.equal(typeof dash.title, 'string');
  assert.ok(Array.isArray(dash.panels) && dash.panels.length >= 10);
  const ids = new Set();
  const names = new Set();
  const families = new Set();
  for (const p of dash.panels) {
    assert.ok(!ids.has(p.id), `panel id ${p.id} used twice`);
    ids.add(p.id);
    assert.ok(p.gridPos && p.gridPos.w > 0 && p.gridPos.w <= 24, `panel ${p.title}: gridPos`);
    if (p.type === 'row') continue;
    assert.ok(p.targets?.length >= 1, `panel ${p.title} has queries`);
    for (const t of p.targets) {
      assert.equal(typeof t.expr, 'string');
      for (const n of metricNames(t.expr)) names.add(n);
    }
  }
  for (const v of dash.templating.list) if (v.definition) for (const n of metricNames(v.definition)) names.add(n);
  for (const n of names) {
    assert.ok(exists(n), `${n} (named in capgate.json) is not in /metrics`);
    families.add(n.replace(/_(bucket|sum|count)$/, (m) => (metrics.types[n.slice(0, -m.length)] === 'histogram' ? '' : m)));
  }
  // the dashboard covers every family the gateway exports
  for (const fam of Object.keys(metrics.types)) assert.ok(families.has(fam), `family ${fam} has no panel`);
});

test('the alert rules parse, have what Prometheus needs, and name only metrics /metrics has', () => {
  const doc = YAML.parse(fs.readFileSync(ALERTS, 'utf8'));
  assert.ok(Array.isArray(doc.groups) && doc.groups.length >= 1);
  const alerts = new Map();
  for (const g of doc.groups) {
    assert.equal(typeof g.name, 'string');
    for (const r of g.rules) {
      assert.equal(typeof r.alert, 'string', JSON.stringify(r));
      assert.ok(!alerts.has(r.alert), `${r.alert} twice`);
      assert.equal(typeof r.expr, 'string', r.alert);
      assert.ok(r.labels?.severity, `${r.alert}: labels.severity`);
      assert.ok(r.annotations?.summary, `${r.alert}: annotations.summary`);
      if (r.for !== undefined) assert.match(r.for, /^\d+[smh]$/, `${r.alert}: for`);
      // balanced brackets: a cheap check that the expression was not cut
      for (const [o, c] of [['(', ')'], ['{', '}'], ['[', ']']]) {
        assert.equal(r.expr.split(o).length, r.expr.split(c).length, `${r.alert}: ${o}${c} in ${r.expr}`);
      }
      const names = metricNames(r.expr);
      assert.ok(names.length >= 1, `${r.alert} names a metric`);
      for (const n of names) assert.ok(exists(n), `${n} (alert ${r.alert}) is not in /metrics`);
      alerts.set(r.alert, r.expr);
    }
  }
  // the conditions the operators asked for, each on its metric
  const want = {
    CapgateUpstreamBreakerOpen: 'capgate_upstream_breaker_state',
    CapgateStoreDown: 'capgate_store_up',
    CapgateInstancesUndercounted: 'capgate_store_live_instances',
    CapgateAuditSpooling: 'capgate_audit_spool_records',
    CapgateAuditSpoolGrowing: 'capgate_audit_spool_records',
    CapgateLimitRefusalsSpiking: 'capgate_limit_decisions_total',
    CapgateUpstreamErrorRate: 'capgate_requests_total',
    CapgateAuditQueueDepth: 'capgate_audit_queue_depth',
  };
  for (const [a, m] of Object.entries(want)) {
    assert.ok(alerts.has(a), `alert ${a}`);
    assert.ok(alerts.get(a).includes(m), `${a} uses ${m}`);
  }
  // label values the rules match on are ones the gateway uses
  assert.ok(metrics.samples.some((s) => s.name === 'capgate_limit_decisions_total' && s.labels.decision === 'limited'));
  assert.ok(metrics.samples.some((s) => s.name === 'capgate_audit_records_total' && s.labels.result === 'overflowed'));
});
