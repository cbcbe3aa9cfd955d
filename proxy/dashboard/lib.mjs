// lib.mjs: the dashboard's pure functions (no DOM), shared by the page (app.mjs) and its unit
// test (tests/integration/dashboard_lib.test.mjs): the Prometheus text parser, the quantile
// estimate from histogram buckets, /admin/stats aggregation, axis ticks and number formats.

/** The decisions of a request, in the order the charts stack them (README "Audit"). */
export const DECISIONS = Object.freeze(['forwarded', 'pool', 'replayed', 'limited', 'shadow_limited',
  'invalid', 'unauthorized', 'denied', 'upstream_error']);

/** Decisions that refuse a request: the gateway answered it with an error of its own. */
export const REFUSALS = Object.freeze(['limited', 'invalid', 'unauthorized', 'denied']);

/** The latency fields of /admin/stats and their upper bounds in milliseconds. They are not
 *  cumulative: each counts the latencies above the previous bound. */
export const LATENCY_BUCKETS = Object.freeze([
  ['le_1ms', 1], ['le_5ms', 5], ['le_10ms', 10], ['le_50ms', 50], ['le_100ms', 100],
  ['le_500ms', 500], ['le_1s', 1000], ['le_5s', 5000], ['le_inf', Infinity],
]);

// ---- Prometheus text format 0.0.4 ------------------------------------------------------------

function unescapeLabel(s) {
  return s.replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
}

function parseValue(s) {
  if (s === '+Inf' || s === 'Inf') return Infinity;
  if (s === '-Inf') return -Infinity;
  if (s === 'NaN') return NaN;
  const v = Number(s);
  if (s === '' || Number.isNaN(v)) throw new Error(`not a sample value: ${s}`);
  return v;
}

/** The label set of a sample, `a="x",b="y"` (the text between the braces) → {a: 'x', b: 'y'}. */
function parseLabels(text, lineNo) {
  const labels = {};
  let i = 0;
  while (i < text.length) {
    while (text[i] === ' ' || text[i] === ',') i++;
    if (i >= text.length) break;
    const m = /^([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"/.exec(text.slice(i));
    if (!m) throw new Error(`line ${lineNo}: bad label at "${text.slice(i, i + 20)}"`);
    i += m[0].length;
    let v = '';
    for (;;) {
      if (i >= text.length) throw new Error(`line ${lineNo}: unterminated label value`);
      const c = text[i++];
      if (c === '"') break;
      if (c === '\\') v += text[i - 1] + text[i++];
      else v += c;
    }
    labels[m[1]] = unescapeLabel(v);
  }
  return labels;
}

/**
 * Prometheus text → { samples: [{name, labels, value}], types: {family: type}, help: {...} },
 * with get(name, match) (the sum of the samples of name whose labels include match), all(name,
 * match) (those samples) and has(name). A malformed sample line throws, naming the line.
 */
export function parsePrometheus(text) {
  const samples = [];
  const types = {};
  const help = {};
  const lines = String(text).split('\n');
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n].trim();
    if (!line) continue;
    if (line[0] === '#') {
      const m = /^#\s+(TYPE|HELP)\s+(\S+)\s*(.*)$/.exec(line);
      if (m && m[1] === 'TYPE') types[m[2]] = m[3];
      else if (m) help[m[2]] = m[3];
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$/.exec(line);
    if (!m) throw new Error(`line ${n + 1}: not a sample: ${line.slice(0, 80)}`);
    samples.push({ name: m[1], labels: m[2] ? parseLabels(m[2], n + 1) : {}, value: parseValue(m[3]) });
  }
  const matches = (s, name, match) => s.name === name
    && Object.entries(match).every(([k, v]) => s.labels[k] === String(v));
  return {
    samples, types, help,
    all: (name, match = {}) => samples.filter((s) => matches(s, name, match)),
    get: (name, match = {}) => samples.filter((s) => matches(s, name, match)).reduce((a, s) => a + s.value, 0),
    has: (name) => samples.some((s) => s.name === name),
  };
}

// ---- quantiles from histogram buckets --------------------------------------------------------

/**
 * The q-quantile (0 < q < 1) of a histogram given as per-bucket counts (not cumulative) and the
 * buckets' upper bounds (ascending; the first bucket starts at 0, the last may be Infinity).
 * Linear interpolation inside the bucket holding the rank q·total, as Prometheus's
 * histogram_quantile does. Returns { value, bucket, above } or null when the histogram is empty;
 * above: the rank fell in the unbounded last bucket, so value is only its lower bound.
 */
export function quantile(bounds, counts, q) {
  if (!(q > 0 && q < 1)) throw new RangeError(`quantile ${q} is not in (0, 1)`);
  if (bounds.length !== counts.length) throw new RangeError('bounds and counts differ in length');
  const total = counts.reduce((a, c) => a + c, 0);
  if (!(total > 0)) return null;
  const rank = q * total;
  let below = 0;
  for (let i = 0; i < counts.length; i++) {
    const lo = i === 0 ? 0 : bounds[i - 1];
    const hi = bounds[i];
    if (counts[i] > 0 && below + counts[i] >= rank) {
      if (hi === Infinity) return { value: lo, bucket: i, above: true };
      return { value: lo + ((hi - lo) * (rank - below)) / counts[i], bucket: i, above: false };
    }
    below += counts[i];
  }
  // Only reached through rounding: the rank is the last count.
  const last = counts.length - 1;
  return { value: bounds[last] === Infinity ? bounds[last - 1] : bounds[last], bucket: last, above: bounds[last] === Infinity };
}

/** Cumulative Prometheus buckets [{le, count}] (le a number, Infinity for +Inf) → {bounds, counts}
 *  per bucket, sorted by bound. A count below its predecessor (a counter reset mid-scrape) is 0. */
export function decumulate(buckets) {
  const sorted = [...buckets].sort((a, b) => a.le - b.le);
  const bounds = sorted.map((b) => b.le);
  let prev = 0;
  const counts = sorted.map((b) => {
    const c = Math.max(0, b.count - prev);
    prev = Math.max(prev, b.count);
    return c;
  });
  return { bounds, counts };
}

/** p50, p95, p99 of a stats totals object's le_* fields, in ms (each null when empty). */
export function latencyQuantiles(totals) {
  const bounds = LATENCY_BUCKETS.map(([, b]) => b);
  const counts = LATENCY_BUCKETS.map(([f]) => Number(totals?.[f] ?? 0));
  return { p50: quantile(bounds, counts, 0.5), p95: quantile(bounds, counts, 0.95), p99: quantile(bounds, counts, 0.99) };
}

// ---- /admin/stats ----------------------------------------------------------------------------

/** The step (seconds) of a range (seconds), keeping a chart to at most ~100 bars. */
export function stepFor(rangeS) {
  for (const s of [60, 300, 600, 900, 1800, 3600]) if (rangeS / s <= 100) return s;
  return 3600;
}

const addInto = (into, from) => {
  for (const [k, v] of Object.entries(from || {})) {
    if (k === 'ts' || typeof v !== 'number') continue;
    into[k] = (into[k] || 0) + v;
  }
  return into;
};

/** refused = the sum of the REFUSALS decisions of a totals-like object. */
export const refused = (t) => REFUSALS.reduce((a, d) => a + Number(t?.[d] || 0), 0);

/** The groups of an /admin/stats answer ("groups"; "pairs" in answers before group=). */
export const groupsOf = (answer) => answer?.groups ?? answer?.pairs ?? [];

/**
 * An /admin/stats answer → { totals, series: [{ts, ...fields}] }. Series are aligned on every
 * step of [from, to) whether or not the answer lists a step (a `fill=none` answer leaves empty
 * steps out). The answer's own "totals" and "series" are used when it has them, so the numbers
 * are what the server counted; otherwise its groups are summed.
 */
export function aggregate(answer) {
  const pairs = Array.isArray(answer?.series) ? [{ series: answer.series }] : groupsOf(answer);
  const byTs = new Map();
  const from = Number(answer?.from);
  const step = Number(answer?.step) || 60;
  const to = Number(answer?.to);
  if (Number.isFinite(from) && Number.isFinite(to)) {
    for (let ts = from; ts < to; ts += step) byTs.set(ts, { ts });
  }
  const totals = {};
  for (const p of pairs) {
    addInto(totals, p.totals);
    for (const s of p.series || []) {
      if (!byTs.has(s.ts)) byTs.set(s.ts, { ts: s.ts });
      addInto(byTs.get(s.ts), s);
    }
  }
  const series = [...byTs.values()].sort((a, b) => a.ts - b.ts);
  return { totals: answer?.totals ? { ...answer.totals } : totals, series };
}

/**
 * The top rows of the pairs grouped by key(pair) → label: [{key, requests, refused}], sorted by
 * `by` ('requests' or 'refused', ties by the other, then by key), at most n.
 */
export function top(pairs, key, by = 'requests', n = 10) {
  const rows = new Map();
  for (const p of pairs || []) {
    const k = key(p);
    const r = rows.get(k) || { key: k, requests: 0, refused: 0 };
    r.requests += Number(p.totals?.requests || 0);
    r.refused += refused(p.totals);
    rows.set(k, r);
  }
  const other = by === 'requests' ? 'refused' : 'requests';
  return [...rows.values()].filter((r) => r[by] > 0)
    .sort((a, b) => b[by] - a[by] || b[other] - a[other] || String(a.key).localeCompare(String(b.key)))
    .slice(0, n);
}

// ---- axes and formats ------------------------------------------------------------------------

/** Round tick values from 0 to at least max: [0, t, 2t, ...] with t = 1, 2 or 5 × 10^k. */
export function ticks(max, want = 4) {
  if (!(max > 0)) return [0, 1];
  const raw = max / want;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const t = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const step = Math.max(t, Number.isInteger(max) ? 1 : 0);
  const out = [];
  for (let v = 0; v < max + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  if (out[out.length - 1] < max) out.push(+(out[out.length - 1] + step).toPrecision(12));
  return out;
}

/** 1234567 → "1,234,567"; non-integers with up to 2 decimals. */
export function fmtNum(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  const n = Number(v);
  return n.toLocaleString('en-US', { maximumFractionDigits: Number.isInteger(n) ? 0 : 2 });
}

/** Milliseconds → "0.42 ms", "12.3 ms", "1.25 s". */
export function fmtMs(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '–';
  if (ms >= 1000) return `${(ms / 1000).toPrecision(3)} s`;
  if (ms >= 10) return `${ms.toFixed(1)} ms`;
  return `${ms.toFixed(2)} ms`;
}

/** A quantile() result → text: "3.20 ms", "> 5.00 s", or "–". */
export function fmtQuantile(r) {
  if (!r) return '–';
  return r.above ? `> ${fmtMs(r.value)}` : fmtMs(r.value);
}

/** A ratio → "12.5 %" (or "–" when undefined). */
export function fmtPct(r) {
  if (r === null || r === undefined || !Number.isFinite(r)) return '–';
  return `${(r * 100).toFixed(r === 0 || r === 1 ? 0 : 1)} %`;
}

/** Unix seconds → "HH:MM" UTC (with the date when withDate). */
export function fmtTime(ts, withDate = false) {
  const iso = new Date(ts * 1000).toISOString();
  return withDate ? `${iso.slice(0, 10)} ${iso.slice(11, 16)}` : iso.slice(11, 16);
}

/** A step in seconds → "1 min", "5 min", "1 h". */
export function fmtStep(s) {
  return s % 3600 === 0 ? `${s / 3600} h` : `${s / 60} min`;
}
