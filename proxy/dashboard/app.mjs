// app.mjs: the dashboard page. Every 3 s it reads /admin/stats (the chosen range and scope),
// /metrics, /readyz and /admin/audit, and draws what they say; the charts are SVG drawn here.
// Everything that came from the gateway is shown through textContent, never as HTML.
//
// The admin token: the page is served without it and holds no data. When the listener has a
// token (GET /dashboard/auth says so), the page asks for it, keeps it in sessionStorage (this tab
// only, gone when the tab closes) and sends it as "Authorization: Bearer" on every fetch. A
// link may carry it once as #token=... (a fragment never reaches a server or its logs); the page
// moves it to sessionStorage and takes it out of the address bar at once.
import {
  DECISIONS, LATENCY_BUCKETS, REFUSALS, aggregate, decumulate, fmtMs, fmtNum, fmtPct, fmtQuantile,
  fmtStep, fmtTime, groupsOf, latencyQuantiles, parsePrometheus, quantile, refused, stepFor, ticks, top,
} from './lib.mjs';

const TOKEN_KEY = 'capgate.adminToken';
const REFRESH_MS = 3000;
const AUDIT_ROWS = 50;
const SVGNS = 'http://www.w3.org/2000/svg';
const COLORS = {
  forwarded: '#2e9e5b', pool: '#17a2b8', replayed: '#4c6fd8', limited: '#f08c00',
  shadow_limited: '#f2c94c', invalid: '#9b59b6', unauthorized: '#e8557a', denied: '#a01c1c',
  upstream_error: '#7a6a58',
};
const BREAKER = ['closed', 'open', 'half-open'];

const $ = (id) => document.getElementById(id);

const state = {
  range: 3600, business: '', scene: '', app: '',
  topBy: { business: 'requests', scene: 'requests', app: 'requests' },
  paused: false, timer: null, gen: 0, refreshes: 0,
  known: { business: new Set(), scene: new Set(), app: new Set() },
  selected: null, // the audit record shown in detail
  lastStats: null, // {view, answer, at}: the last /admin/stats answer and the view it was for
  lastApps: null, // the last group=app answer
};

class Unauthorized extends Error {}

// ---- small DOM helpers -------------------------------------------------------------------------

function el(tag, props = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'text') e.textContent = v;
    else if (k === 'class') e.className = v;
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}

function svg(tag, attrs = {}, ...kids) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'text') e.textContent = v;
    else e.setAttribute(k, String(v));
  }
  for (const k of kids) if (k) e.append(k);
  return e;
}

function swatch(color) {
  const s = el('span', { class: 'swatch' });
  s.style.background = color;
  return s;
}

const fmtId = (v) => (v === null || v === undefined ? '-' : String(v));

// ---- the token and fetches ---------------------------------------------------------------------

const token = () => sessionStorage.getItem(TOKEN_KEY) || '';

async function api(path, { text = false } = {}) {
  const headers = {};
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const r = await fetch(path, { headers, cache: 'no-store' });
  if (r.status === 401) throw new Unauthorized(path);
  const body = await r.text();
  let json = null;
  if (!text) {
    try { json = JSON.parse(body); } catch { json = null; }
  }
  return { status: r.status, body, json };
}

async function checkAuth() {
  const r = await api('/dashboard/auth');
  const a = r.json || {};
  $('forget').hidden = !a.token_required;
  return !a.token_required || a.authorized;
}

function showLogin(message) {
  stopTimer();
  $('main').hidden = true;
  $('pause').hidden = true;
  $('forget').hidden = true;
  $('login').hidden = false;
  $('login-error').hidden = !message;
  $('login-error').textContent = message || '';
  $('updated').textContent = 'needs the admin token';
  document.body.dataset.view = 'login';
  $('token').focus();
}

async function start() {
  let ok;
  try {
    ok = await checkAuth();
  } catch (e) {
    $('updated').textContent = `cannot reach the admin listener: ${e.message}`;
    setTimeout(start, REFRESH_MS);
    return;
  }
  if (!ok) {
    showLogin(token() ? 'The admin listener refused this token.' : '');
    return;
  }
  $('login').hidden = true;
  $('main').hidden = false;
  $('pause').hidden = false;
  document.body.dataset.view = 'main';
  refreshNow();
}

// ---- view state in the address bar (#r=3600&b=1&s=2&a=app) ------------------------------------

function readHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  if (h.has('token')) {
    sessionStorage.setItem(TOKEN_KEY, h.get('token'));
    h.delete('token');
  }
  const r = Number(h.get('r'));
  if ([900, 3600, 21600, 86400].includes(r)) state.range = r;
  state.business = h.get('b') || '';
  state.scene = h.get('s') || '';
  state.app = h.get('a') || '';
  writeHash();
}

function writeHash() {
  const h = new URLSearchParams();
  h.set('r', String(state.range));
  if (state.business) h.set('b', state.business);
  if (state.scene) h.set('s', state.scene);
  if (state.app) h.set('a', state.app);
  history.replaceState(null, '', `${location.pathname}${location.search}#${h}`);
}

// ---- the refresh loop --------------------------------------------------------------------------

function stopTimer() {
  clearTimeout(state.timer);
  state.timer = null;
}

function refreshNow() {
  stopTimer();
  const gen = ++state.gen;
  refresh(gen).catch((e) => {
    if (gen !== state.gen) return;
    if (e instanceof Unauthorized) {
      showLogin('The admin listener refused the token (it may have changed).');
      return;
    }
    $('updated').textContent = `refresh failed: ${e.message}`;
  }).finally(() => {
    if (gen === state.gen && !state.paused && $('login').hidden) {
      state.timer = setTimeout(() => (document.hidden ? schedule() : refreshNow()), REFRESH_MS);
    }
  });
}

function schedule() {
  state.timer = setTimeout(() => (document.hidden ? schedule() : refreshNow()), REFRESH_MS);
}

/**
 * The /admin/stats query of the view. Counts are kept per (businessId, sceneId) and per app, not
 * per both, so a view is all traffic, a business and/or scene (grouped by scene: the top tables
 * come from the same answer), or one app. fill=none: the server leaves out empty steps and
 * aggregate() puts them back, so a 24 h answer stays small.
 */
function statsQuery() {
  const to = Math.floor(Date.now() / 1000);
  const step = stepFor(state.range);
  const q = new URLSearchParams({ from: String(to - state.range), to: String(to), step: String(step) });
  if (state.app) {
    q.set('app', state.app);
  } else {
    if (state.business) q.set('businessId', state.business);
    if (state.scene) q.set('sceneId', state.scene);
  }
  q.set('fill', 'none');
  return { url: `/admin/stats?${q}`, from: to - state.range, to, step };
}

/** Every app over the range in one step (group=app): the top apps table. */
function appsQuery(sq) {
  const q = new URLSearchParams({ from: String(sq.from), to: String(sq.to), step: String(state.range),
    group: 'app', fill: 'none' });
  return `/admin/stats?${q}`;
}

async function refresh(gen) {
  const sq = statsQuery();
  const appsUrl = appsQuery(sq);
  const [stats, appsR, metricsR, readyR, auditR] = await Promise.all([
    api(sq.url), api(appsUrl), api('/metrics', { text: true }), api('/readyz'), fetchAudit(sq.from),
  ]);
  if (gen !== state.gen) return;
  const metrics = metricsR.status === 200 ? parsePrometheus(metricsR.body) : null;
  const notes = [];
  // Stats that cannot be read at all leave the last answer of the same view on screen, dated,
  // rather than zeros. (While Redis is down the gateway answers from its own counts, "partial".)
  const view = `${state.range}|${state.business}|${state.scene}|${state.app}`;
  let answer = stats.status === 200 ? stats.json : null;
  if (answer) {
    state.lastStats = { view, answer, at: new Date() };
  } else if (state.lastStats?.view === view) {
    answer = state.lastStats.answer;
  }
  if (stats.status !== 200) {
    notes.push(`/admin/stats answered ${stats.status}: ${stats.json?.error || stats.body}`
      + (answer ? `; showing its answer of ${state.lastStats.at.toISOString().slice(11, 19)} UTC` : ''));
  }
  if (stats.json?.partial) {
    const since = Number(stats.json.since);
    notes.push(`partial answer: ${stats.json.reason || 'the store could not be read'}`
      + `${since ? ` (counted since ${new Date(since * 1000).toISOString().slice(0, 19).replace('T', ' ')} UTC)` : ''}`);
  }
  if (metricsR.status !== 200) notes.push(`/metrics answered ${metricsR.status}`);
  $('notice').hidden = notes.length === 0;
  $('notice').textContent = notes.join(' · ');

  const apps = appsR.status === 200 ? appsR.json : null;
  learn(answer, apps, metrics, auditR.json?.records);
  const agg = answer ? aggregate(answer) : { totals: {}, series: [] };

  $('totals-card').dataset.src = sq.url;
  renderTotals(agg.totals, `${scopeText()}, last ${rangeText()}`);
  renderRequests(agg.series, sq.step);
  renderLatency(agg.totals);
  renderRules(agg.totals, metrics);
  renderTop(answer);
  renderApps(apps, appsUrl);
  renderUpstream(metrics, agg, sq.step);
  renderPool(metrics);
  renderStore(readyR.json, metrics);
  renderAudit(auditR);
  renderStatus(readyR.json, metrics);
  state.refreshes++;
  document.body.dataset.refreshes = String(state.refreshes);
  $('updated').textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC · every ${REFRESH_MS / 1000} s`;
}

const rangeText = () => ({ 900: '15 min', 3600: '1 h', 21600: '6 h', 86400: '24 h' })[state.range];

function scopeText() {
  const parts = [];
  if (state.business) parts.push(`business ${state.business}`);
  if (state.scene) parts.push(`scene ${state.scene}`);
  if (state.app) parts.push(`app ${state.app}`);
  return parts.length ? parts.join(', ') : 'all traffic';
}

/** Business, scene and app values seen so far, for the scope selects. */
function learn(answer, apps, metrics, records) {
  for (const p of groupsOf(answer)) {
    if (p.businessId !== undefined) state.known.business.add(fmtId(p.businessId));
    if (p.sceneId !== undefined) state.known.scene.add(fmtId(p.sceneId));
  }
  for (const g of groupsOf(apps)) if (g.app !== undefined && g.app !== '-') state.known.app.add(String(g.app));
  for (const s of metrics?.all('capgate_requests_total') || []) {
    if (s.labels.app && s.labels.app !== '-') state.known.app.add(s.labels.app);
  }
  for (const r of records || []) if (r.app) state.known.app.add(r.app);
  fillSelect($('f-business'), state.known.business, state.business);
  fillSelect($('f-scene'), state.known.scene, state.scene);
  fillSelect($('f-app'), state.known.app, state.app);
}

function fillSelect(sel, values, current) {
  const want = [...values];
  if (current && !values.has(current)) want.push(current);
  want.sort((a, b) => (Number(a) - Number(b)) || a.localeCompare(b));
  const have = [...sel.options].slice(1).map((o) => o.value);
  if (have.join('\n') !== want.join('\n')) {
    sel.replaceChildren(el('option', { value: '', text: 'all' }),
      ...want.map((v) => el('option', { value: v, text: v === '-' ? '- (none)' : v })));
  }
  sel.value = current;
}

// ---- tooltip -----------------------------------------------------------------------------------

function initTooltip() {
  const tip = $('tip');
  const show = (ev) => {
    const t = ev.target.closest?.('[data-tip]');
    if (!t) {
      tip.hidden = true;
      return;
    }
    tip.textContent = t.getAttribute('data-tip');
    tip.hidden = false;
    const w = tip.offsetWidth;
    const h = tip.offsetHeight;
    tip.style.left = `${Math.max(4, Math.min(ev.clientX + 12, window.innerWidth - w - 4))}px`;
    tip.style.top = `${Math.max(4, ev.clientY - h - 12 < 0 ? ev.clientY + 16 : ev.clientY - h - 12)}px`;
  };
  document.addEventListener('pointermove', show);
  document.addEventListener('pointerdown', show);
  document.addEventListener('scroll', () => { tip.hidden = true; }, true);
}

// ---- charts ------------------------------------------------------------------------------------

const chartWidth = (box) => Math.max(260, Math.floor(box.clientWidth || 760));

/**
 * A stacked bar chart: cats [{label, values: {key: n}, tip}] left to right, keys stacked bottom
 * up in colors; yLabel and xLabel name the axes with their units. Every bar carries its exact
 * numbers as a tooltip (data-tip).
 */
function barChart(box, { cats, keys, colors, yLabel, xLabel, labelEvery = 1, empty = 'no data', fmtY = fmtNum }) {
  // Drawn at the box's own width, so text keeps its size on a phone and on a wide screen.
  const W = chartWidth(box); const H = 230; const L = 56; const R = 8; const T = 10; const B = 44;
  const s = svg('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img', 'aria-label': `${yLabel} by ${xLabel}` });
  const max = Math.max(0, ...cats.map((c) => keys.reduce((a, k) => a + (c.values[k] || 0), 0)));
  const yt = ticks(max || 1);
  const top = yt[yt.length - 1];
  const y = (v) => T + (H - T - B) * (1 - v / top);
  for (const v of yt) {
    s.append(svg('line', { class: v ? 'grid' : 'axis', x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    s.append(svg('text', { x: L - 6, y: y(v) + 4, 'text-anchor': 'end', text: fmtY(v) }));
  }
  s.append(svg('text', { x: 12, y: T + (H - T - B) / 2, transform: `rotate(-90 12 ${T + (H - T - B) / 2})`,
    'text-anchor': 'middle', text: yLabel }));
  s.append(svg('text', { x: L + (W - L - R) / 2, y: H - 4, 'text-anchor': 'middle', text: xLabel }));
  const n = Math.max(cats.length, 1);
  const bw = (W - L - R) / n;
  labelEvery = Math.max(labelEvery, Math.ceil(48 / bw)); // labels ~48 px apart at least
  cats.forEach((c, i) => {
    const x = L + i * bw;
    const g = svg('g', { 'data-tip': c.tip, 'data-i': i });
    // A transparent full-height hit area, so a column with small bars still shows its tooltip.
    g.append(svg('rect', { x, y: T, width: bw, height: H - T - B, fill: 'transparent' }));
    let acc = 0;
    for (const k of keys) {
      const v = c.values[k] || 0;
      if (!v) continue;
      g.append(svg('rect', { x: x + bw * 0.1, width: Math.max(bw * 0.8, 1), y: y(acc + v), height: y(acc) - y(acc + v),
        fill: colors[k] || '#888', 'data-key': k }));
      acc += v;
    }
    s.append(g);
    if (i % labelEvery === 0) {
      s.append(svg('text', { x: x + bw / 2, y: H - B + 14, 'text-anchor': 'middle', text: c.label }));
    }
  });
  if (!max) {
    s.append(svg('text', { class: 'empty', x: L + (W - L - R) / 2, y: T + (H - T - B) / 2, 'text-anchor': 'middle', text: empty }));
  }
  box.replaceChildren(s);
}

/** Horizontal stacked bars: rows [{label, values, tip}], for names too long for a column. */
function hbarChart(box, { rows, keys, colors, xLabel, empty = 'no data' }) {
  const W = chartWidth(box); const rowH = 24; const L = Math.min(170, W * 0.4); const R = 16; const T = 6; const B = 40;
  const H = T + B + Math.max(rows.length, 1) * rowH;
  const s = svg('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img', 'aria-label': xLabel });
  const max = Math.max(0, ...rows.map((r) => keys.reduce((a, k) => a + (r.values[k] || 0), 0)));
  const xt = ticks(max || 1);
  const top = xt[xt.length - 1];
  const x = (v) => L + (W - L - R) * (v / top);
  for (const v of xt) {
    s.append(svg('line', { class: v ? 'grid' : 'axis', x1: x(v), x2: x(v), y1: T, y2: H - B }));
    s.append(svg('text', { x: x(v), y: H - B + 14, 'text-anchor': 'middle', text: fmtNum(v) }));
  }
  s.append(svg('text', { x: L + (W - L - R) / 2, y: H - 4, 'text-anchor': 'middle', text: xLabel }));
  rows.forEach((r, i) => {
    const yy = T + i * rowH;
    const g = svg('g', { 'data-tip': r.tip, 'data-row': r.label });
    g.append(svg('rect', { x: 0, y: yy, width: W, height: rowH, fill: 'transparent' }));
    g.append(svg('text', { x: L - 6, y: yy + rowH / 2 + 4, 'text-anchor': 'end',
      text: r.label.length > 24 ? `${r.label.slice(0, 23)}…` : r.label }));
    let acc = 0;
    for (const k of keys) {
      const v = r.values[k] || 0;
      if (!v) continue;
      g.append(svg('rect', { x: x(acc), y: yy + 4, width: x(acc + v) - x(acc), height: rowH - 8, fill: colors[k], 'data-key': k }));
      acc += v;
    }
    s.append(g);
  });
  if (!rows.length) s.append(svg('text', { class: 'empty', x: L + (W - L - R) / 2, y: T + rowH / 2 + 4, 'text-anchor': 'middle', text: empty }));
  box.replaceChildren(s);
}

// ---- panels ------------------------------------------------------------------------------------

function renderTotals(t, what) {
  $('totals-what').textContent = what;
  const lat = t.requests && t.latency_us_sum !== undefined ? (Number(t.latency_us_sum) / t.requests) / 1000 : null;
  const tiles = [['requests', fmtNum(t.requests || 0), null]]
    .concat(DECISIONS.map((d) => [d, fmtNum(t[d] || 0), COLORS[d]]))
    .concat([['refused', fmtNum(refused(t)), null], ['mean latency', fmtMs(lat), null]]);
  $('totals').replaceChildren(...tiles.map(([k, v, c]) => {
    const tile = el('div', { class: 'tile', 'data-total': k },
      el('div', { class: 'v', text: v }),
      el('div', { class: 'k' }, c ? swatch(c) : null, k));
    if (k === 'refused') tile.setAttribute('data-tip', `refused = ${REFUSALS.join(' + ')}`);
    return tile;
  }));
}

function renderRequests(series, step, empty) {
  const cats = series.map((p) => {
    const lines = [`${fmtTime(p.ts, true)} UTC, ${fmtStep(step)}`, `requests: ${fmtNum(p.requests || 0)}`];
    for (const d of DECISIONS) if (p[d]) lines.push(`${d}: ${fmtNum(p[d])}`);
    return { label: fmtTime(p.ts), values: p, tip: lines.join('\n') };
  });
  barChart($('chart-requests'), {
    cats, keys: DECISIONS, colors: COLORS, yLabel: `requests per ${fmtStep(step)}`, xLabel: 'time (UTC)',
    labelEvery: Math.max(1, Math.ceil(cats.length / 8)), empty: empty || 'no requests in this range',
  });
  $('legend').replaceChildren(...DECISIONS.map((d) => el('span', {}, swatch(COLORS[d]), d)));
}

function renderLatency(t, empty) {
  const q = latencyQuantiles(t);
  $('quantiles').replaceChildren(...['p50', 'p95', 'p99'].map((k) => el('span', { 'data-q': k },
    `${k} `, el('b', { text: fmtQuantile(q[k]) }))),
  el('span', { class: 'muted', text: 'estimated: linear within a bucket' }));
  const total = LATENCY_BUCKETS.reduce((a, [f]) => a + Number(t[f] || 0), 0);
  let lo = 0;
  const cats = LATENCY_BUCKETS.map(([f, hi]) => {
    const v = Number(t[f] || 0);
    const range = hi === Infinity ? `> ${fmtMs(lo)}` : `${fmtMs(lo)} – ${fmtMs(hi)}`;
    const label = hi === Infinity ? `>${fmtMs(lo).replace(' ', '')}` : `≤${fmtMs(hi).replace(/\.0+ /, ' ').replace(' ', '')}`;
    lo = hi;
    return { label, values: { n: v }, tip: `${range}: ${fmtNum(v)} requests (${fmtPct(total ? v / total : null)})` };
  });
  barChart($('chart-latency'), {
    cats, keys: ['n'], colors: { n: '#4c6fd8' }, yLabel: 'requests', xLabel: 'latency bucket (upper bound)',
    empty: empty || 'no requests in this range',
  });
}

/**
 * Refusals per limit rule in the view's range and scope: the rule:<name> fields of /admin/stats
 * (limited and shadow_limited of that rule together). A rule's bar takes the colour of what this
 * instance's capgate_limit_decisions_total says it does (refuse, or shadow), and its tooltip
 * gives those counters too.
 */
function renderRules(totals, metrics) {
  const local = new Map();
  for (const s of metrics?.all('capgate_limit_decisions_total') || []) {
    const r = local.get(s.labels.rule) || { admitted: 0, limited: 0, shadow_limited: 0 };
    r[s.labels.decision] = s.value;
    local.set(s.labels.rule, r);
  }
  const rows = Object.entries(totals || {}).filter(([k, v]) => k.startsWith('rule:') && v > 0)
    .map(([k, v]) => [k.slice(5), Number(v)])
    .sort((x, y) => y[1] - x[1] || x[0].localeCompare(y[0]))
    .map(([rule, n]) => {
      const m = local.get(rule);
      const kind = m && m.shadow_limited > m.limited ? 'shadow_limited' : 'limited';
      return {
        label: rule || '(store error, deny)', values: { [kind]: n },
        tip: `rule ${rule || '(none: on_store_error deny)'}${kind === 'shadow_limited' ? ' (shadow: would have refused)' : ''}`
          + `\nin this range: ${fmtNum(n)}`
          + (m ? `\nthis instance since start: limited ${fmtNum(m.limited)}, shadow_limited ${fmtNum(m.shadow_limited)}, admitted ${fmtNum(m.admitted)}` : ''),
      };
    });
  hbarChart($('chart-rules'), {
    rows, keys: ['limited', 'shadow_limited'], colors: COLORS, xLabel: 'refusals in the range (requests)',
    empty: 'no limit rule refused in this range',
  });
}

/** One top table: rows of top() ordered by state.topBy[dim], a click on a row narrows the view. */
function topTable(dim, groups, { key, head, label = (k) => k, scope, empty }) {
  const by = state.topBy[dim];
  for (const b of document.querySelectorAll(`[data-top="${dim}"]`)) b.setAttribute('aria-pressed', String(b.dataset.by === by));
  const rows = empty ? [] : top(groups, key, by, 10);
  const max = Math.max(1, ...rows.map((r) => r[by]));
  const th = el('tr', {}, el('th', { text: head }), el('th', { class: 'n', text: 'requests' }),
    el('th', { class: 'n', text: 'refused' }), el('th', { text: '' }));
  const body = rows.map((r) => {
    const bar = el('i');
    bar.style.width = `${(100 * r[by]) / max}%`;
    const tr = el('tr', { 'data-key': r.key }, el('td', { text: label(r.key) }),
      el('td', { class: 'n', text: fmtNum(r.requests) }), el('td', { class: 'n', text: fmtNum(r.refused) }),
      el('td', { class: 'bar-cell' }, bar));
    const to = scope(r.key);
    if (to) {
      tr.title = 'show only this one';
      tr.addEventListener('click', () => setScope(to));
    }
    return tr;
  });
  if (!rows.length) {
    body.push(el('tr', {}, el('td', { colSpan: 4, class: 'muted', text: empty || `no ${by === 'refused' ? 'refusals' : 'requests'} in this range` })));
  }
  $(`top-${dim}`).replaceChildren(el('thead', {}, th), el('tbody', {}, ...body));
}

/** Top businesses and scenes from the groups of the view's answer (grouped by scene). */
function renderTop(answer) {
  const groups = groupsOf(answer);
  // An app's counts are not kept per business or scene.
  const empty = state.app ? 'not counted per app: choose "all" apps' : null;
  topTable('business', groups, {
    key: (g) => fmtId(g.businessId), head: 'businessId', empty,
    scope: (k) => ({ business: k, scene: '', app: '' }),
  });
  topTable('scene', groups, {
    key: (g) => `${fmtId(g.businessId)} / ${fmtId(g.sceneId)}`, head: 'businessId / sceneId', empty,
    scope: (k) => {
      const [b, sc] = k.split(' / ');
      return { business: b, scene: sc, app: '' };
    },
  });
}

/** Top apps over the range, all traffic (/admin/stats group=app). */
function renderApps(apps, url) {
  state.lastApps = apps;
  $('top-app').dataset.src = url || '';
  topTable('app', groupsOf(apps), {
    key: (g) => String(g.app), head: 'app', label: (k) => (k === '-' ? '- (no app known)' : k),
    scope: (k) => (k === '-' ? null : { app: k, business: '', scene: '' }),
  });
}

function renderUpstream(metrics, agg, step) {
  const t = agg.totals;
  const calls = Number(t.forwarded || 0) + Number(t.shadow_limited || 0) + Number(t.upstream_error || 0);
  const breakers = metrics?.all('capgate_upstream_breaker_state') || [];
  const worst = Math.max(-1, ...breakers.map((s) => s.value));
  const bk = metrics?.all('capgate_upstream_request_duration_seconds_bucket')
    .map((s) => ({ le: s.labels.le === '+Inf' ? Infinity : Number(s.labels.le), count: s.value })) || [];
  const { bounds, counts } = decumulate(bk);
  const ms = bounds.map((b) => b * 1000);
  const q = (p) => (counts.length ? quantile(ms, counts, p) : null);
  const n = metrics?.get('capgate_upstream_request_duration_seconds_count') || 0;
  const sum = metrics?.get('capgate_upstream_request_duration_seconds_sum') || 0;
  const items = [
    ['breaker', worst < 0 ? 'unknown' : BREAKER[worst] || String(worst),
      breakers.map((s) => `worker ${s.labels.worker}: ${BREAKER[s.value] || s.value}`).join('\n')],
    ['error rate', `${fmtPct(calls ? Number(t.upstream_error || 0) / calls : null)} (${fmtNum(t.upstream_error || 0)} of ${fmtNum(calls)})`,
      'upstream_error / (forwarded + shadow_limited + upstream_error), in the range and scope above'],
    ['latency p50 / p95 / p99', `${fmtQuantile(q(0.5))} / ${fmtQuantile(q(0.95))} / ${fmtQuantile(q(0.99))}`,
      'capgate_upstream_request_duration_seconds, this instance since start'],
    ['mean latency', n ? fmtMs((sum / n) * 1000) : '–', `${fmtNum(n)} calls, this instance since start`],
    ['open connections', fmtNum(metrics?.get('capgate_upstream_open_connections') ?? 0), null],
  ];
  $('upstream').replaceChildren(...kv(items));
  const up = $('upstream').querySelector('[data-k="breaker"]');
  if (up) up.className = worst === 0 ? 'ok' : worst > 0 ? 'error' : '';
  const cats = agg.series.map((p) => {
    const ok = Number(p.forwarded || 0) + Number(p.shadow_limited || 0);
    const err = Number(p.upstream_error || 0);
    return { label: fmtTime(p.ts), values: { ok, err },
      tip: `${fmtTime(p.ts, true)} UTC, ${fmtStep(step)}\nanswered: ${fmtNum(ok)}\nupstream_error: ${fmtNum(err)}\nerror rate: ${fmtPct(ok + err ? err / (ok + err) : null)}` };
  });
  barChart($('chart-upstream'), {
    cats, keys: ['ok', 'err'], colors: { ok: COLORS.forwarded, err: COLORS.upstream_error },
    yLabel: `calls per ${fmtStep(step)}`, xLabel: 'time (UTC)', labelEvery: Math.max(1, Math.ceil(cats.length / 6)),
    empty: 'no upstream calls in this range',
  });
}

function kv(items) {
  const out = [];
  for (const [k, v, tip] of items) {
    const dt = el('dt', { text: k });
    const dd = el('dd', { text: v, 'data-k': k });
    if (tip) dd.setAttribute('data-tip', tip);
    out.push(dt, dd);
  }
  return out;
}

function renderPool(metrics) {
  const depth = metrics?.all('capgate_pool_depth') || [];
  const hits = metrics?.get('capgate_pool_hits_total') || 0;
  const misses = metrics?.get('capgate_pool_misses_total') || 0;
  const head = el('tr', {}, el('th', { text: 'profile' }), el('th', { class: 'n', text: 'depth' }),
    el('th', { class: 'n', text: 'hits' }), el('th', { class: 'n', text: 'misses' }), el('th', { class: 'n', text: 'hit ratio' }));
  const rows = depth.map((s) => {
    const p = s.labels.profile;
    const h = metrics.get('capgate_pool_profile_hits_total', { profile: p });
    const m = metrics.get('capgate_pool_profile_misses_total', { profile: p });
    return el('tr', { 'data-profile': p }, el('td', { text: p }), el('td', { class: 'n', text: fmtNum(s.value) }),
      el('td', { class: 'n', text: fmtNum(h) }), el('td', { class: 'n', text: fmtNum(m) }),
      el('td', { class: 'n', text: fmtPct(h + m ? h / (h + m) : null) }));
  });
  rows.push(el('tr', { 'data-profile': '' }, el('td', { text: 'all profiles' }), el('td', { class: 'n', text: '' }),
    el('td', { class: 'n', text: fmtNum(hits) }), el('td', { class: 'n', text: fmtNum(misses) }),
    el('td', { class: 'n', text: fmtPct(hits + misses ? hits / (hits + misses) : null) })));
  if (!depth.length) rows.unshift(el('tr', {}, el('td', { colSpan: 5, class: 'muted', text: 'no pool profile configured' })));
  $('pool').replaceChildren(el('thead', {}, head), el('tbody', {}, ...rows));
}

function renderStore(ready, metrics) {
  const g = (n, l) => (metrics ? fmtNum(metrics.get(n, l)) : '–');
  const auditState = ready?.audit || 'unknown';
  const spool = metrics?.get('capgate_audit_spool_records') || 0;
  const items = [
    ['store', ready?.store || 'unknown', 'every worker\'s store connection (capgate_store_up)'],
    ['audit sink', auditState, 'connecting, live, spooling, replaying, memory or stopped'],
    ['spooling', auditState === 'spooling' || auditState === 'replaying' || spool > 0 ? 'yes' : 'no', null],
    ['spool records', fmtNum(spool), 'capgate_audit_spool_records: in the spool, not yet replayed'],
    ['audit queue', g('capgate_audit_queue_depth'), 'records waiting for the sink'],
    ['audit written / spooled / replayed', `${g('capgate_audit_records_total', { result: 'written' })} / ${g('capgate_audit_records_total', { result: 'spooled' })} / ${g('capgate_audit_records_total', { result: 'replayed' })}`, null],
    ['audit overflowed', g('capgate_audit_records_total', { result: 'overflowed' }), null],
    ['audit file errors', g('capgate_audit_file_errors_total'), null],
    ['store errors / timeouts', `${g('capgate_store_errors_total')} / ${g('capgate_store_timeouts_total')}`, null],
    ['store reconnects', g('capgate_store_reconnects_total'), null],
    ['store fast failures', g('capgate_store_fast_failures_total'), 'commands refused at once while the store was marked down'],
    ['metrics flush errors', g('capgate_metrics_flush_errors_total'), null],
  ];
  $('store').replaceChildren(...kv(items));
  const st = $('store').querySelector('[data-k="store"]');
  st.className = ready?.store === 'up' ? 'ok' : 'error';
}

function renderStatus(ready, metrics) {
  const pill = (text, cls, tip) => {
    const p = el('span', { class: `pill ${cls}`, text });
    if (tip) p.setAttribute('data-tip', tip);
    return p;
  };
  const breakers = metrics?.all('capgate_upstream_breaker_state') || [];
  const worst = Math.max(-1, ...breakers.map((s) => s.value));
  const audit = ready?.audit || 'unknown';
  $('status').replaceChildren(
    pill(ready?.status || 'unknown', ready?.status === 'ready' ? 'ok' : 'bad', '/readyz'),
    pill(`store ${ready?.store || '?'}`, ready?.store === 'up' ? 'ok' : 'bad'),
    pill(`audit ${audit}`, audit === 'live' || audit === 'memory' ? 'ok' : audit === 'spooling' || audit === 'replaying' ? 'warn' : 'bad'),
    pill(`breaker ${worst < 0 ? '?' : BREAKER[worst]}`, worst === 0 ? 'ok' : 'bad'),
  );
}

// ---- audit -------------------------------------------------------------------------------------

const AUDIT_COLUMNS = ['ts', 'app', 'api', 'action', 'businessId', 'sceneId', 'decision', 'rule', 'code', 'latency_us', 'client_ip'];

function auditFilters() {
  return {
    businessId: $('a-business').value.trim(), sceneId: $('a-scene').value.trim(),
    app: $('a-app').value.trim(), decision: $('a-decision').value, code: $('a-code').value.trim(),
  };
}

async function fetchAudit(since) {
  const f = auditFilters();
  const filterError = auditFilterError(f);
  if (filterError) return { filterError };
  const q = new URLSearchParams();
  for (const k of ['businessId', 'sceneId', 'app', 'decision', 'code']) if (f[k]) q.set(k, f[k]);
  q.set('since', String(since));
  q.set('limit', String(AUDIT_ROWS));
  const r = await api(`/admin/audit?${q}`);
  r.url = `/admin/audit?${q}`;
  return r;
}

/** The first audit filter that /admin/audit would refuse, named, or null. Checked here so a
 *  half-typed filter does not cost a 400 (and an error in the browser's console). */
function auditFilterError(f) {
  for (const k of ['businessId', 'sceneId']) {
    if (f[k] && !/^(\d{1,10}|-)$/.test(f[k])) return `${k} must be an unsigned number or - (none), not "${f[k]}"`;
  }
  if (f.code && !/^-?\d{1,10}$/.test(f.code)) return `code must be a number (an API code such as 4400), not "${f.code}"`;
  return null;
}

function renderAudit(r) {
  const note = $('audit-note');
  const table = $('audit');
  table.dataset.src = r.url || '';
  if (r.filterError) {
    note.textContent = r.filterError;
    note.className = 'error';
    table.replaceChildren();
    return;
  }
  if (r.status !== 200) {
    note.textContent = `/admin/audit answered ${r.status}: ${r.json?.error || r.body}`;
    note.className = 'error';
    table.replaceChildren();
    return;
  }
  const code = auditFilters().code;
  const records = (r.json?.records || []).slice(0, AUDIT_ROWS);
  note.className = 'muted';
  note.textContent = `${records.length} newest record(s) in the last ${rangeText()}`
    + (code ? ` with code ${code}` : '')
    + `${r.json?.partial ? ` · partial: ${r.json.reason || ''}` : ''} · click a row for all its fields`;
  const head = el('tr', {}, ...AUDIT_COLUMNS.map((c) => el('th', { class: c === 'latency_us' || c === 'code' ? 'n' : '', text: c === 'latency_us' ? 'latency' : c })));
  const rows = records.map((rec) => {
    const tr = el('tr', { 'data-request-id': rec.request_id || '', 'data-decision': rec.decision || '' },
      ...AUDIT_COLUMNS.map((c) => {
        let v = rec[c];
        if (c === 'latency_us') v = v === null || v === undefined ? '–' : fmtMs(v / 1000);
        else if (c === 'ts') v = String(v || '').replace('T', ' ').replace('Z', '');
        return el('td', { class: c === 'latency_us' || c === 'code' ? 'n' : '', text: v === null || v === undefined ? '' : String(v), 'data-col': c });
      }));
    if (state.selected && rec.request_id === state.selected.request_id) tr.classList.add('sel');
    tr.addEventListener('click', () => showDetail(rec));
    return tr;
  });
  if (!rows.length) rows.push(el('tr', {}, el('td', { colSpan: AUDIT_COLUMNS.length, class: 'muted', text: 'no record matches' })));
  table.replaceChildren(el('thead', {}, head), el('tbody', {}, ...rows));
}

function showDetail(rec) {
  state.selected = rec;
  $('detail').hidden = false;
  $('detail-id').textContent = rec.request_id || '';
  $('detail-fields').replaceChildren(...Object.entries(rec).flatMap(([k, v]) => [
    el('dt', { text: k }), el('dd', { text: v === null ? 'null' : typeof v === 'object' ? JSON.stringify(v) : String(v), 'data-field': k }),
  ]));
  for (const tr of $('audit').querySelectorAll('tbody tr')) {
    tr.classList.toggle('sel', tr.dataset.requestId === rec.request_id);
  }
  $('detail').scrollIntoView({ block: 'nearest' });
}

// ---- controls ----------------------------------------------------------------------------------

function setScope(s) {
  Object.assign(state, s);
  writeHash();
  syncControls();
  refreshNow();
}

function syncControls() {
  for (const b of document.querySelectorAll('[data-range]')) b.setAttribute('aria-pressed', String(Number(b.dataset.range) === state.range));
  $('f-business').value = state.business;
  $('f-scene').value = state.scene;
  $('f-app').value = state.app;
  $('scope').textContent = scopeText();
  $('pause').textContent = state.paused ? 'resume' : 'pause';
}

function init() {
  readHash();
  initTooltip();
  $('a-decision').append(...DECISIONS.map((d) => el('option', { value: d, text: d })));
  for (const b of document.querySelectorAll('[data-range]')) {
    b.addEventListener('click', () => setScope({ range: Number(b.dataset.range) }));
  }
  // Counts are kept per (businessId, sceneId) and per app, not per both: one excludes the other.
  $('f-business').addEventListener('change', (e) => setScope({ business: e.target.value, ...(e.target.value ? { app: '' } : {}) }));
  $('f-scene').addEventListener('change', (e) => setScope({ scene: e.target.value, ...(e.target.value ? { app: '' } : {}) }));
  $('f-app').addEventListener('change', (e) => setScope({ app: e.target.value, ...(e.target.value ? { business: '', scene: '' } : {}) }));
  for (const b of document.querySelectorAll('[data-top]')) {
    b.addEventListener('click', () => {
      state.topBy[b.dataset.top] = b.dataset.by;
      if (b.dataset.top === 'app') renderApps(state.lastApps, $('top-app').dataset.src);
      else if (state.lastStats) renderTop(state.lastStats.answer);
    });
  }
  let debounce = null;
  $('audit-filters').addEventListener('input', () => {
    clearTimeout(debounce);
    debounce = setTimeout(refreshNow, 300);
  });
  $('audit-filters').addEventListener('reset', () => setTimeout(refreshNow, 0));
  $('audit-filters').addEventListener('submit', (e) => {
    e.preventDefault();
    refreshNow();
  });
  $('detail-close').addEventListener('click', () => {
    state.selected = null;
    $('detail').hidden = true;
    for (const tr of $('audit').querySelectorAll('tr.sel')) tr.classList.remove('sel');
  });
  $('pause').addEventListener('click', () => {
    state.paused = !state.paused;
    syncControls();
    if (state.paused) stopTimer();
    else refreshNow();
  });
  $('forget').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    start();
  });
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('token').value.trim());
    $('token').value = '';
    start();
  });
  // The charts are drawn at their box's width: a new width (a phone turned) redraws them.
  let resized = null;
  let width = window.innerWidth;
  window.addEventListener('resize', () => {
    if (window.innerWidth === width) return;
    width = window.innerWidth;
    clearTimeout(resized);
    resized = setTimeout(() => { if ($('login').hidden && !state.paused) refreshNow(); }, 250);
  });
  syncControls();
  start();
}

init();
