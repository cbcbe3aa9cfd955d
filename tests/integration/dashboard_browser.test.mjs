// dashboard_browser.test.mjs: the admin listener's /dashboard in headless chromium, with the admin
// token on. Known traffic first (several businesses, scenes and apps; every decision; refusals of
// a limit rule; pool hits), then: without the token the page shows a prompt and no data; with it
// the totals shown for all traffic, a business, a scene and an app equal /admin/stats for the
// query the page made, and the top tables its groups (group=app for the apps); the chart's
// tooltips hold the same numbers; the filters and the range change what is shown; the audit
// table shows the newest records, its filters narrow it and a row opens its detail; limit rules,
// pool, upstream and store panels show /metrics; the console stays free of errors. All of it on
// both stores (memory, and a redis-server of its own); with Redis stopped the page shows the
// store down, the audit spooling and /admin/stats' partial answer. A screenshot of each main view
// is saved under <build>/test-artifacts/dashboard/ (the path is printed).
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { HAVE_CHROMIUM, SKIP_REASON, STEP_MS, launchBrowser } from './lib/browser.mjs';
import { BUILD_DIR, startMock, startRedis, request, tmpDir, waitFor } from './lib/harness.mjs';
import { startGateway, gwCall, addFault, parseMetrics, APPS } from './lib/gateway.mjs';
import { PROFILE, PROFILE_PARAMS } from './lib/cache.mjs';

const TOKEN = `dash-token-${process.pid}-${Date.now()}`;
const AUTH = { authorization: `Bearer ${TOKEN}` };
const ARTIFACTS = path.join(BUILD_DIR, 'test-artifacts', 'dashboard');
const DECISIONS = ['forwarded', 'pool', 'replayed', 'limited', 'shadow_limited', 'invalid', 'unauthorized',
  'denied', 'upstream_error'];
const REFUSALS = ['limited', 'invalid', 'unauthorized', 'denied'];
const SEED = { captchaType: '1', disturbLevel: '1', isHttps: '0', clientType: '2', accountType: '0' };
const biz = (b, s) => ({ ...SEED, businessId: String(b), sceneId: String(s) });

// What the traffic below must come to, by decision (checked against /admin/stats first).
const EXPECTED = { requests: 18, forwarded: 8, pool: 2, limited: 3, shadow_limited: 1, invalid: 1, unauthorized: 1,
  denied: 1, upstream_error: 1, replayed: 0 };

let mock;
let gw;
let browser;
let tokenDir;

const admin = (p, headers = AUTH) => request(`${gw.adminUrl}${p}`, { headers, timeoutMs: 5000 });
const metrics = async () => {
  const r = await admin('/metrics');
  assert.equal(r.status, 200, r.body);
  return parseMetrics(r.body);
};

/** A new page that records console errors, page errors and the URLs it requested. */
async function openPage({ width = 1280, height = 900 } = {}) {
  const page = await browser.newPage();
  await page.setViewportSize({ width, height });
  const errors = [];
  const requested = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('request', (r) => requested.push(r.url()));
  return { page, errors, requested };
}

const refreshes = (page) => page.evaluate(() => Number(document.body.dataset.refreshes || 0));

/** Runs action, then waits for a refresh that started after it (and for cond, when given). */
async function afterRefresh(page, action, cond) {
  const n = await refreshes(page);
  await action();
  await page.waitForFunction((m) => Number(document.body.dataset.refreshes || 0) > m, n, { timeout: STEP_MS });
  if (cond) await page.waitForFunction(cond, null, { timeout: STEP_MS });
}

/** The totals tiles: {requests, forwarded, ..., refused} as numbers. */
async function tiles(page) {
  const t = await page.$$eval('[data-total]', (es) => es.map((e) => [e.getAttribute('data-total'), e.querySelector('.v').textContent]));
  return Object.fromEntries(t.filter(([k]) => k !== 'mean latency').map(([k, v]) => [k, Number(v.replace(/,/g, ''))]));
}

/** Asserts the tiles equal the /admin/stats answer for the very query the page made. */
async function assertTilesEqualStats(page, what) {
  const src = await page.$eval('#totals-card', (e) => e.dataset.src);
  assert.match(src, /^\/admin\/stats\?/, what);
  const r = await admin(src);
  assert.equal(r.status, 200, `${what}: ${src}: ${r.body}`);
  const shown = await tiles(page);
  for (const k of ['requests', ...DECISIONS]) assert.equal(shown[k], r.json.totals[k], `${what}: ${k} shown vs ${src}`);
  assert.equal(shown.refused, REFUSALS.reduce((a, d) => a + r.json.totals[d], 0), `${what}: refused`);
  return { src, stats: r.json, shown };
}

/** The exact numbers of the requests chart's tooltips, summed over its columns. */
async function chartSums(page) {
  const tips = await page.$$eval('#chart-requests g[data-tip]', (es) => es.map((e) => e.getAttribute('data-tip')));
  const sum = {};
  for (const tip of tips) {
    for (const line of tip.split('\n').slice(1)) {
      const [k, v] = line.split(': ');
      sum[k] = (sum[k] || 0) + Number(v.replace(/,/g, ''));
    }
  }
  return sum;
}

/** A full-page screenshot (from the top, so the sticky header is where it belongs), or of one
 *  element. */
const shotAs = async (page, name, selector) => {
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.mouse.move(0, 0);
  if (selector) {
    await page.locator(selector).screenshot({ path: file });
  } else {
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: file, fullPage: true });
  }
  console.log(`# screenshot: ${file}`);
};

/** The suite against one store ('memory': the embedded store; 'redis': a redis-server of its own).
 *  The page does not depend on the store, so the tests of the page alone (HTTP, the token
 *  prompt, a phone, no token) run once, with memory. */
function suite(store) {
  describe(`${store} store`, () => {
    let redis;
    before(async () => {
      mock = await startMock({ tls: true });
      if (store === 'redis') redis = await startRedis();
      tokenDir = tmpDir('capgate-dash-');
      const tokenFile = path.join(tokenDir, 'admin_token');
      fs.writeFileSync(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
      gw = await startGateway({
        mock,
        config: {
          admin: { token_file: tokenFile },
          metrics: { flush_ms: 100 },
          limits: [
            { name: 'b2-burst', businessId: 2, sceneId: '*', rate: 2, period_s: 3600, burst: 2 },
            { name: 'b3-shadow', businessId: 3, sceneId: '*', rate: 1, period_s: 3600, burst: 1, mode: 'shadow' },
          ],
          pool: { ttl_s: 60, profiles: [{ ...PROFILE, size: 3 }] },
          ...(redis ? { redis: { url: redis.url, key_prefix: `dash${process.pid}:`, timeout_ms: 5000 } } : {}),
        },
      });
      // The pool full before any traffic, so the refiller makes no call while the fault below waits.
      await waitFor(async () => (await metrics()).get('capgate_pool_depth') >= 3, { timeoutMs: 10000, what: 'pool depth 3' });

      const ok = async (opts, what) => {
        const r = await gwCall(gw, { timeoutMs: 5000, ...opts });
        assert.equal(r.status, 200, `${what}: ${r.status} ${r.body}`);
        return r;
      };
      for (let i = 0; i < 3; i++) await ok({ params: biz(1, 1) }, 'b1 s1');
      for (let i = 0; i < 2; i++) await ok({ params: biz(1, 2) }, 'b1 s2');
      for (let i = 0; i < 5; i++) await gwCall(gw, { app: APPS.limited, params: biz(2, 7) });
      for (let i = 0; i < 2; i++) await ok({ app: APPS.token, params: biz(3, 4) }, 'b3 s4');
      await gwCall(gw, { app: APPS.limited, params: biz(5, 1) }); // 4300: business 5 is not the app's
      await gwCall(gw, { params: biz(1, 1), secretKey: 'not-the-key' }); // 4100
      await gwCall(gw, { params: biz(1, 1), publicParams: { Nonce: undefined } }); // 4000
      await addFault(mock, { action: 'CaptchaIframeQuery', network: 'http_500', times: 1 });
      await gwCall(gw, { params: biz(9, 9) }); // 6200 upstream_error
      for (let i = 0; i < 2; i++) await ok({ app: APPS.token, params: { ...PROFILE_PARAMS } }, 'pool hit');

      // Every request flushed into the per-minute counters.
      const stats = await waitFor(async () => {
        const r = await admin('/admin/stats');
        return r.json?.totals?.requests >= EXPECTED.requests ? r.json : null;
      }, { timeoutMs: 10000, what: `${EXPECTED.requests} requests in /admin/stats` });
      for (const [k, v] of Object.entries(EXPECTED)) assert.equal(stats.totals[k], v, `${k} in ${JSON.stringify(stats.totals)}`);
      // and the audit has all of them
      await waitFor(async () => (await admin('/admin/audit?limit=1000')).json?.records?.length >= EXPECTED.requests,
        { timeoutMs: 10000, what: 'every record in /admin/audit' });
    });

    after(async () => {
      await gw?.stop();
      await mock?.stop();
      await redis?.stop();
      if (tokenDir) fs.rmSync(tokenDir, { recursive: true, force: true });
    });

    const once = store === 'memory' ? test : () => {}; // the page-only tests: memory only
    /** A screenshot of a main view, named for the store after the first. */
    const shot = (page, name, selector) => shotAs(page, store === 'memory' ? name : `${store}-${name}`, selector);

    once('HTTP: the page is served without the token under a strict CSP; its data is not', async () => {
      const r = await admin('/dashboard', {});
      assert.equal(r.status, 200, r.body);
      assert.match(r.headers['content-type'], /^text\/html/);
      const csp = r.headers['content-security-policy'] || '';
      assert.match(csp, /default-src 'self'/, csp);
      assert.match(csp, /script-src 'self'(;|$)/, csp);
      assert.match(csp, /frame-ancestors 'none'/, csp);
      assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|\*/, csp);
      assert.equal(r.headers['x-content-type-options'], 'nosniff');
      assert.doesNotMatch(r.body, /<script(?![^>]*\bsrc=)/, 'no inline script');
      assert.doesNotMatch(r.body, /\sstyle=|\son[a-z]+=/, 'no inline style or handler');
      assert.doesNotMatch(r.body, /https?:\/\//, 'no external resource');
      for (const [p, type] of [['/dashboard/', /^text\/html/], ['/dashboard/app.mjs', /^text\/javascript/],
        ['/dashboard/lib.mjs', /^text\/javascript/], ['/dashboard/app.css', /^text\/css/]]) {
        const f = await admin(p, {});
        assert.equal(f.status, 200, `${p}: ${f.body}`);
        assert.match(f.headers['content-type'], type, p);
        assert.match(f.headers['content-security-policy'] || '', /default-src 'self'/, p);
        assert.doesNotMatch(f.body, /\beval\(|new Function|https?:\/\/(?!www\.w3\.org\/2000\/svg)/, `${p}: no eval, no external URL`);
      }
      const head = await request(`${gw.adminUrl}/dashboard`, { method: 'HEAD', timeoutMs: 5000 });
      assert.equal(head.status, 200);
      const post = await request(`${gw.adminUrl}/dashboard`, { method: 'POST', body: '', timeoutMs: 5000 });
      assert.equal(post.status, 405, post.body);
      assert.match(post.json?.error ?? '', /method not allowed/);
      const none = await admin('/dashboard/nope.js', {});
      assert.equal(none.status, 404, none.body);
      assert.match(none.json?.error ?? '', /not found/);
      assert.deepEqual((await admin('/dashboard/auth', {})).json, { token_required: true, authorized: false });
      assert.deepEqual((await admin('/dashboard/auth', { authorization: `Bearer ${TOKEN}x` })).json,
        { token_required: true, authorized: false });
      assert.deepEqual((await admin('/dashboard/auth')).json, { token_required: true, authorized: true });
      assert.equal((await admin('/admin/stats', {})).status, 401, 'the data still needs the token');
    });

    once('without the token: a prompt and no data; a wrong token is refused; the right one opens it', async (t) => {
      if (!HAVE_CHROMIUM) return t.skip(SKIP_REASON);
      const { page, requested, errors } = await openPage();
      try {
        await page.goto(`${gw.adminUrl}/dashboard`, { waitUntil: 'load' });
        await page.waitForSelector('#login:not([hidden])');
        assert.equal(await page.isVisible('#main'), false, 'no dashboard before the token');
        const text = await page.evaluate(() => document.body.innerText);
        assert.doesNotMatch(text, /sig-app|limited-app|b2-burst|forwarded/, 'no data on the prompt');
        assert.ok(!requested.some((u) => /\/admin\/|\/metrics/.test(u)), `no data fetched: ${requested.join(' ')}`);
        await shot(page, 'login');

        await page.fill('#token', `${TOKEN}-wrong`);
        await page.click('#login-form button[type=submit]');
        await page.waitForFunction(() => !document.getElementById('login-error').hidden);
        assert.match(await page.textContent('#login-error'), /refused/);
        assert.equal(await page.isVisible('#main'), false);

        await page.fill('#token', TOKEN);
        await page.click('#login-form button[type=submit]');
        await page.waitForFunction(() => Number(document.body.dataset.refreshes || 0) >= 1);
        assert.equal(await page.isVisible('#login'), false);
        assert.equal((await tiles(page)).requests, EXPECTED.requests);
        assert.equal(await page.evaluate(() => sessionStorage.getItem('capgate.adminToken')), TOKEN);

        // Forgetting the token brings the prompt back.
        await page.click('#forget');
        await page.waitForSelector('#login:not([hidden])');
        assert.equal(await page.evaluate(() => sessionStorage.getItem('capgate.adminToken')), null);
        assert.deepEqual(errors, [], 'console errors (a refused token is told without a 401)');
      } finally {
        await page.close();
      }
    });

    test('all traffic: totals, chart, top tables, panels equal the admin endpoints; no console error', async (t) => {
      if (!HAVE_CHROMIUM) return t.skip(SKIP_REASON);
      const { page, errors, requested } = await openPage();
      try {
        // The token once in the fragment: moved to sessionStorage and out of the address bar.
        await page.goto(`${gw.adminUrl}/dashboard#token=${encodeURIComponent(TOKEN)}`, { waitUntil: 'load' });
        await page.waitForFunction(() => Number(document.body.dataset.refreshes || 0) >= 1);
        assert.doesNotMatch(page.url(), /token/, 'the token left the address bar');
        const { stats } = await assertTilesEqualStats(page, 'all traffic');
        assert.equal(stats.totals.requests, EXPECTED.requests);

        // The chart's tooltips: per column exact numbers, summing to the totals.
        const sums = await chartSums(page);
        assert.equal(sums.requests, stats.totals.requests, JSON.stringify(sums));
        for (const d of DECISIONS) assert.equal(sums[d] || 0, stats.totals[d], `chart ${d}`);
        const col = await page.$('#chart-requests g[data-tip] rect[data-key="forwarded"]');
        assert.ok(col, 'a forwarded bar');
        await col.hover();
        await page.waitForSelector('#tip:not([hidden])');
        assert.match(await page.textContent('#tip'), /requests: \d+[\s\S]*forwarded: \d+/);
        assert.match(await page.textContent('#chart-requests'), /requests per 1 min/, 'the y axis names its unit');
        assert.match(await page.textContent('#chart-requests'), /time \(UTC\)/);

        // Top businesses and scenes: the pairs of /admin/stats grouped here, independently.
        const byBiz = {};
        for (const p of stats.groups) {
          const k = String(p.businessId);
          byBiz[k] ??= { requests: 0, refused: 0 };
          byBiz[k].requests += p.totals.requests;
          byBiz[k].refused += REFUSALS.reduce((a, d) => a + p.totals[d], 0);
        }
        const rows = await page.$$eval('#top-business tbody tr[data-key]', (es) => es.map((e) => [...e.children].slice(0, 3).map((c) => c.textContent)));
        assert.ok(rows.length >= 4, JSON.stringify(rows));
        for (const [k, req, ref] of rows) assert.deepEqual({ requests: Number(req), refused: Number(ref) }, byBiz[k], `business ${k}`);
        const reqOrder = rows.map((r) => Number(r[1]));
        assert.deepEqual(reqOrder, [...reqOrder].sort((a, b) => b - a), 'ordered by requests');
        await page.click('[data-top="business"][data-by="refused"]');
        const refusedRows = await page.$$eval('#top-business tbody tr[data-key]', (es) => es.map((e) => e.dataset.key));
        assert.equal(refusedRows[0], '2', 'business 2 has the most refusals (3 limited)');
        const scenes = await page.$$eval('#top-scene tbody tr[data-key]', (es) => es.map((e) => e.dataset.key));
        assert.ok(scenes.includes('2 / 7') && scenes.includes('1 / 1'), scenes.join(','));

        // Top apps: the groups of /admin/stats group=app over the range.
        const appsSrc = await page.$eval('#top-app', (e) => e.dataset.src);
        assert.match(appsSrc, /[?&]group=app(&|$)/);
        const byApp = Object.fromEntries((await admin(appsSrc)).json.groups.map((g) => [g.app, g.totals]));
        const apps = await page.$$eval('#top-app tbody tr[data-key]', (es) => es.map((e) => [e.dataset.key, ...[...e.children].slice(1, 3).map((c) => c.textContent)]));
        assert.ok(apps.length >= 3, JSON.stringify(apps));
        for (const [app, req, ref] of apps) {
          assert.equal(Number(req), byApp[app].requests, `app ${app} requests`);
          assert.equal(Number(ref), REFUSALS.reduce((a, d) => a + byApp[app][d], 0), `app ${app} refused`);
        }
        assert.deepEqual(apps.find((a) => a[0] === APPS.limited.name).slice(1), ['6', '4']);
        assert.equal(apps.reduce((a, r) => a + Number(r[1]), 0), stats.totals.requests, 'every request under one app');

        // Latency: p50/p95/p99 inside the bucket where the cumulative count crosses the rank.
        const bounds = [['le_1ms', 1], ['le_5ms', 5], ['le_10ms', 10], ['le_50ms', 50], ['le_100ms', 100],
          ['le_500ms', 500], ['le_1s', 1000], ['le_5s', 5000], ['le_inf', Infinity]];
        for (const [q, p] of [['p50', 0.5], ['p95', 0.95], ['p99', 0.99]]) {
          const text = await page.textContent(`[data-q="${q}"] b`);
          const m = /^(>\s)?([\d.]+) (ms|s)$/.exec(text);
          assert.ok(m, `${q}: ${text}`);
          const ms = Number(m[2]) * (m[3] === 's' ? 1000 : 1);
          let acc = 0; let lo = 0;
          for (const [f, hi] of bounds) {
            acc += stats.totals[f];
            if (acc >= p * stats.totals.requests) {
              assert.ok(ms >= lo * 0.99 && ms <= (hi === Infinity ? lo : hi) * 1.01, `${q} ${text} within (${lo}, ${hi}] ms`);
              break;
            }
            lo = hi;
          }
        }

        // Limit refusals per rule: the rule:<name> fields of /admin/stats, with this instance's
        // capgate_limit_decisions_total in the tooltip.
        const m = await metrics();
        assert.equal(stats.totals['rule:b2-burst'], 3);
        assert.equal(stats.totals['rule:b3-shadow'], 1);
        const ruleTip = await page.getAttribute('#chart-rules g[data-row="b2-burst"]', 'data-tip');
        assert.match(ruleTip, new RegExp(`in this range: ${stats.totals['rule:b2-burst']}\\n`));
        assert.match(ruleTip, new RegExp(`limited ${m.get('capgate_limit_decisions_total', { rule: 'b2-burst', decision: 'limited' })},`));
        assert.ok(await page.$('#chart-rules g[data-row="b2-burst"] rect[data-key="limited"]'), 'an enforcing rule');
        const shadowTip = await page.getAttribute('#chart-rules g[data-row="b3-shadow"]', 'data-tip');
        assert.match(shadowTip, /in this range: 1\n.*shadow_limited 1,/);
        assert.ok(await page.$('#chart-rules g[data-row="b3-shadow"] rect[data-key="shadow_limited"]'), 'a shadow rule');

        // Pool: depth and hits per profile, as /metrics says.
        const prof = await page.$$eval('#pool tbody tr[data-profile]', (es) => es.map((e) => [e.dataset.profile, ...[...e.children].slice(1).map((c) => c.textContent)]));
        const [id, depth, hits, misses, ratio] = prof.find((r) => r[0] !== '');
        assert.equal(Number(hits), m.get('capgate_pool_profile_hits_total', { profile: id }));
        assert.equal(Number(hits), 2, 'the two pool hits');
        assert.equal(Number(misses), m.get('capgate_pool_profile_misses_total', { profile: id }));
        assert.ok(Number(depth) >= 0 && Number(depth) <= 3, depth);
        assert.match(ratio, /%$/);

        // Upstream and store.
        assert.equal(await page.textContent('#upstream [data-k="breaker"]'), 'closed');
        const calls = stats.totals.forwarded + stats.totals.shadow_limited + stats.totals.upstream_error;
        assert.match(await page.textContent('#upstream [data-k="error rate"]'), new RegExp(`\\(${stats.totals.upstream_error} of ${calls}\\)`));
        assert.equal(await page.textContent('#store [data-k="store"]'), 'up');
        assert.equal(await page.textContent('#store [data-k="audit sink"]'), (await admin('/readyz', {})).json.audit);
        assert.equal(await page.textContent('#store [data-k="spooling"]'), 'no');

        // The audit table: the newest records, newest first.
        const audit = (await admin('/admin/audit?limit=50')).json.records;
        const ids = await page.$$eval('#audit tbody tr[data-request-id]', (es) => es.map((e) => e.dataset.requestId));
        assert.equal(ids.length, EXPECTED.requests);
        assert.deepEqual(ids, audit.map((r) => r.request_id));

        await shot(page, 'overview');
        assert.ok(requested.every((u) => u.startsWith(`${gw.adminUrl}/`)), `only the admin listener: ${requested.filter((u) => !u.startsWith(gw.adminUrl))}`);
        assert.deepEqual(errors, [], 'console errors');
      } finally {
        await page.close();
      }
    });

    test('filters: a business, a scene, an app and the range change what is shown, and equal the source', async (t) => {
      if (!HAVE_CHROMIUM) return t.skip(SKIP_REASON);
      const { page, errors } = await openPage();
      try {
        await page.goto(`${gw.adminUrl}/dashboard#token=${encodeURIComponent(TOKEN)}`, { waitUntil: 'load' });
        await page.waitForFunction(() => Number(document.body.dataset.refreshes || 0) >= 1);
        const all = await tiles(page);

        await afterRefresh(page, () => page.selectOption('#f-business', '2'));
        const b2 = await assertTilesEqualStats(page, 'business 2');
        assert.match(b2.src, /[?&]businessId=2(&|$)/);
        assert.deepEqual([b2.shown.requests, b2.shown.forwarded, b2.shown.limited], [5, 2, 3]);
        assert.notEqual(b2.shown.requests, all.requests, 'the filter changed the totals');
        assert.equal((await chartSums(page)).limited, 3, 'the chart follows the filter');
        assert.deepEqual(await page.$$eval('#chart-rules g[data-row]', (es) => es.map((e) => e.dataset.row)), ['b2-burst'],
          'the rules that refused business 2');
        assert.match(await page.textContent('#totals-what'), /business 2/);
        assert.match(page.url(), /#.*b=2/, 'the view is in the address bar');
        await shot(page, 'business');

        await afterRefresh(page, () => page.selectOption('#f-scene', '7'));
        const s7 = await assertTilesEqualStats(page, 'business 2 scene 7');
        assert.match(s7.src, /sceneId=7/);
        await afterRefresh(page, () => page.selectOption('#f-business', '1'));
        const b1s7 = await assertTilesEqualStats(page, 'business 1 scene 7');
        assert.equal(b1s7.shown.requests, 0, 'no traffic for business 1 scene 7');
        await afterRefresh(page, () => page.selectOption('#f-scene', ''));
        await assertTilesEqualStats(page, 'business 1');
        // The signed requests refused before their parameters were read count without a business.
        await afterRefresh(page, () => page.selectOption('#f-business', '-'));
        const none = await assertTilesEqualStats(page, 'no business');
        assert.match(none.src, /businessId=-/);
        assert.deepEqual([none.shown.unauthorized, none.shown.invalid], [1, 1]);

        // Clicking a row of the top scenes narrows to it.
        await afterRefresh(page, () => page.selectOption('#f-business', ''));
        await afterRefresh(page, () => page.click('#top-scene tbody tr[data-key="3 / 4"]'));
        const s34 = await assertTilesEqualStats(page, 'business 3 scene 4 (from the top table)');
        assert.deepEqual([s34.shown.forwarded, s34.shown.shadow_limited], [1, 1]);
        await afterRefresh(page, () => page.selectOption('#f-business', ''));
        await afterRefresh(page, () => page.selectOption('#f-scene', ''));

        // One app: /admin/stats app=; a business and an app exclude each other (counts are kept
        // per pair and per app, not per both).
        await afterRefresh(page, () => page.selectOption('#f-business', '2'));
        await afterRefresh(page, () => page.selectOption('#f-app', APPS.limited.name));
        const a = await assertTilesEqualStats(page, 'app limited-app');
        assert.match(a.src, /[?&]app=limited-app(&|$)/);
        assert.doesNotMatch(a.src, /businessId|sceneId/);
        assert.equal(await page.inputValue('#f-business'), '', 'the business filter was cleared');
        assert.deepEqual([a.shown.requests, a.shown.forwarded, a.shown.limited, a.shown.denied], [6, 2, 3, 1], 'limited-app');
        assert.equal((await chartSums(page)).limited, 3, 'the chart follows the app');
        assert.match(await page.textContent('#top-business'), /not counted per app/);
        assert.match(page.url(), /#.*a=limited-app/);
        await shot(page, 'app');
        // The app of a top-apps row, by a click.
        await afterRefresh(page, () => page.click(`#top-app tbody tr[data-key="${APPS.token.name}"]`));
        const tok = await assertTilesEqualStats(page, 'app token-app (from the top table)');
        assert.deepEqual([tok.shown.forwarded, tok.shown.shadow_limited, tok.shown.pool], [1, 1, 2]);
        assert.deepEqual(await page.$$eval('#chart-rules g[data-row]', (es) => es.map((e) => e.dataset.row)), ['b3-shadow'],
          'the rules that refused token-app');
        await afterRefresh(page, () => page.selectOption('#f-app', ''));

        // The range: 15 min is 1-minute steps over 900 s, 24 h 15-minute steps; the totals stay.
        await afterRefresh(page, () => page.click('[data-range="900"]'));
        const r15 = await assertTilesEqualStats(page, '15 min');
        const q15 = new URLSearchParams(r15.src.split('?')[1]);
        assert.equal(Number(q15.get('to')) - Number(q15.get('from')), 900);
        assert.equal(q15.get('step'), '60');
        await afterRefresh(page, () => page.click('[data-range="86400"]'));
        const r24 = await assertTilesEqualStats(page, '24 h');
        const q24 = new URLSearchParams(r24.src.split('?')[1]);
        assert.equal(Number(q24.get('to')) - Number(q24.get('from')), 86400);
        assert.equal(q24.get('step'), '900');
        assert.match(await page.textContent('#chart-requests'), /requests per 15 min/);
        assert.equal(r24.shown.requests, EXPECTED.requests);
        assert.deepEqual(errors, [], 'console errors');
      } finally {
        await page.close();
      }
    });

    test('audit: newest first, filters narrow it (server and code), a row opens its detail', async (t) => {
      if (!HAVE_CHROMIUM) return t.skip(SKIP_REASON);
      const { page, errors } = await openPage();
      try {
        await page.goto(`${gw.adminUrl}/dashboard#token=${encodeURIComponent(TOKEN)}`, { waitUntil: 'load' });
        await page.waitForFunction(() => Number(document.body.dataset.refreshes || 0) >= 1);
        const rowsOf = () => page.$$eval('#audit tbody tr[data-request-id]', (es) => es.map((e) => ({
          id: e.dataset.requestId, ...Object.fromEntries([...e.children].map((c) => [c.dataset.col, c.textContent])),
        })));

        // A newer record appears at the top on a refresh by itself.
        await gwCall(gw, { params: biz(4, 4) });
        const newest = await waitFor(async () => {
          const r = (await admin('/admin/audit?limit=1')).json?.records?.[0];
          return r?.businessId === 4 ? r : null;
        }, { what: 'the new record in /admin/audit' });
        await page.waitForFunction((id) => document.querySelector('#audit tbody tr')?.dataset.requestId === id,
          newest.request_id, { timeout: STEP_MS });

        await afterRefresh(page, () => page.selectOption('#a-decision', 'limited'));
        let rows = await rowsOf();
        const limited = (await admin('/admin/audit?decision=limited')).json.records;
        assert.deepEqual(rows.map((r) => r.id), limited.map((r) => r.request_id));
        assert.equal(rows.length, 3);
        assert.ok(rows.every((r) => r.decision === 'limited' && r.rule === 'b2-burst' && r.code === '4400'), JSON.stringify(rows));

        await afterRefresh(page, async () => {
          await page.selectOption('#a-decision', '');
          await page.fill('#a-code', '4300');
        }, () => document.querySelectorAll('#audit tbody tr[data-request-id]').length === 1);
        rows = await rowsOf();
        assert.deepEqual(rows.map((r) => [r.code, r.decision, r.businessId]), [['4300', 'denied', '5']]);

        await afterRefresh(page, async () => {
          await page.fill('#a-code', '');
          await page.fill('#a-app', APPS.token.name);
          await page.fill('#a-business', '3');
        }, () => document.querySelectorAll('#audit tbody tr[data-request-id]').length === 2);
        rows = await rowsOf();
        assert.ok(rows.every((r) => r.app === APPS.token.name && r.businessId === '3'), JSON.stringify(rows));

        // A bad filter: a message naming it, and no query.
        await afterRefresh(page, () => page.fill('#a-business', 'x'), () => /businessId/.test(document.getElementById('audit-note').textContent));
        assert.match(await page.textContent('#audit-note'), /businessId must be an unsigned number/);
        assert.equal(await page.$$eval('#audit tbody tr', (es) => es.length), 0);

        // Detail of one record: every field.
        await afterRefresh(page, async () => {
          await page.fill('#a-business', '');
          await page.fill('#a-app', '');
        }, () => document.querySelectorAll('#audit tbody tr[data-request-id]').length > 10);
        await page.click(`#audit tbody tr[data-request-id="${newest.request_id}"]`);
        await page.waitForSelector('#detail:not([hidden])');
        const fields = await page.$$eval('#detail-fields dd', (es) => Object.fromEntries(es.map((e) => [e.dataset.field, e.textContent])));
        for (const [k, v] of Object.entries(newest)) assert.equal(fields[k], v === null ? 'null' : String(v), `detail ${k}`);
        // It stays open across a refresh.
        await afterRefresh(page, () => page.evaluate(() => document.getElementById('pause').click()).then(() =>
          page.evaluate(() => document.getElementById('pause').click())));
        assert.equal(await page.isVisible('#detail'), true);
        assert.equal(await page.getAttribute('#audit tr.sel', 'data-request-id'), newest.request_id);
        await shot(page, 'audit', '#audit-card');
        assert.deepEqual(errors, [], 'console errors');
      } finally {
        await page.close();
      }
    });

    if (store === 'redis') {
      test('Redis down: store down and audit spooling shown; the last stats stay on screen, dated', async (t) => {
        if (!HAVE_CHROMIUM) return t.skip(SKIP_REASON);
        const { page, errors } = await openPage();
        try {
          await page.goto(`${gw.adminUrl}/dashboard#token=${encodeURIComponent(TOKEN)}`, { waitUntil: 'load' });
          await page.waitForFunction(() => Number(document.body.dataset.refreshes || 0) >= 1);
          assert.equal(await page.textContent('#store [data-k="store"]'), 'up');
          const shown = await tiles(page);
          await redis.stop();
          redis = null;
          await gwCall(gw, { params: biz(1, 1), timeoutMs: 8000 }); // its audit record is spooled
          await page.waitForFunction(() => document.querySelector('#store [data-k="store"]')?.textContent === 'down'
            && document.querySelector('#store [data-k="spooling"]')?.textContent === 'yes', null, { timeout: STEP_MS * 2 });
          const pills = await page.textContent('#status');
          assert.match(pills, /store down/);
          assert.match(pills, /audit (spooling|connecting)/);
          const spool = Number((await page.textContent('#store [data-k="spool records"]')).replace(/,/g, ''));
          assert.ok(spool >= 1, `spool records ${spool}`);
          const notice = await page.textContent('#notice');
          if (/answered 503/.test(notice)) {
            // A gateway whose /admin/stats answers 503 in an outage: the last answer stays, dated.
            assert.match(notice, /showing its answer of \d\d:\d\d:\d\d UTC/);
            assert.deepEqual(await tiles(page), shown);
          } else {
            // A gateway that answers from its own counts: "partial", and the page shows them.
            assert.match(notice, /partial answer: \S.*\(counted since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)/, notice);
            // Every request was this process's: the one sent in the outage too, once flushed.
            await page.waitForFunction((n) => document.querySelector('[data-total="requests"] .v')?.textContent === String(n),
              shown.requests + 1, { timeout: STEP_MS });
            const { stats } = await assertTilesEqualStats(page, 'partial');
            assert.equal(stats.partial, true);
          }
          await shot(page, 'outage');
          // The browser logs each 503 of the outage; nothing else may be logged.
          assert.deepEqual(errors.filter((e) => !/status of 503/.test(e)), [], 'console errors');
        } finally {
          await page.close();
        }
      });
    }

    once('a phone-sized screen: one column, nothing wider than the screen', async (t) => {
      if (!HAVE_CHROMIUM) return t.skip(SKIP_REASON);
      const { page, errors } = await openPage({ width: 390, height: 844 });
      try {
        await page.goto(`${gw.adminUrl}/dashboard#token=${encodeURIComponent(TOKEN)}`, { waitUntil: 'load' });
        await page.waitForFunction(() => Number(document.body.dataset.refreshes || 0) >= 1);
        const { scroll, inner } = await page.evaluate(() => ({ scroll: document.documentElement.scrollWidth, inner: window.innerWidth }));
        assert.ok(scroll <= inner, `page ${scroll} px wide on a ${inner} px screen`);
        const widths = await page.$$eval('.chart svg', (es) => es.map((e) => e.getBoundingClientRect().right));
        assert.ok(widths.every((w) => w <= inner), `charts fit: ${widths}`);
        const lefts = await page.$$eval('main > .card', (es) => new Set(es.map((e) => Math.round(e.getBoundingClientRect().left))).size);
        assert.equal(lefts, 1, 'one column of cards');
        await assertTilesEqualStats(page, 'phone');
        await shot(page, 'phone');
        assert.deepEqual(errors, [], 'console errors');
      } finally {
        await page.close();
      }
    });

    once('without an admin token configured the page opens on its data at once', async (t) => {
      if (!HAVE_CHROMIUM) return t.skip(SKIP_REASON);
      const open = await startGateway({ mock, config: { metrics: { flush_ms: 100 } } });
      const { page, errors } = await openPage();
      try {
        await gwCall(open, { params: biz(1, 1) });
        await page.goto(`${open.adminUrl}/dashboard`, { waitUntil: 'load' });
        await page.waitForFunction(() => Number(document.body.dataset.refreshes || 0) >= 1);
        assert.equal(await page.isVisible('#login'), false);
        assert.equal(await page.isVisible('#forget'), false, 'no token to forget');
        await page.waitForFunction(() => document.querySelector('[data-total="requests"] .v').textContent === '1', null, { timeout: STEP_MS });
        // the query of the refresh that showed it (an earlier refresh's window may end before the
        // request's minute when a minute starts in between)
        const src = await page.$eval('#totals-card', (e) => e.dataset.src);
        const r = await request(`${open.adminUrl}${src}`, { timeoutMs: 5000 });
        assert.equal(r.json?.totals?.requests, 1, r.body);
        assert.deepEqual(errors, [], 'console errors');
      } finally {
        await page.close();
        await open.stop();
      }
    });

  });
}

before(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  console.log(`# screenshots: ${ARTIFACTS}`);
  if (HAVE_CHROMIUM) browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

suite('memory');
suite('redis');
