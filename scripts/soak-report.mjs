// soak-report.mjs: the summary of scripts/soak.sh. Reads the samples CSV and the counts soak.sh
// passes in the environment, prints a table of samples over time, the flatness of RSS and
// descriptors after the warm-up, the audit and load counts, and one line per check; exits 1 if a
// check failed.
// Flat means: the median of the last tenth of the samples after the warm-up is at most 10% + 4 MB
// above the median of the first tenth (RSS), and the largest descriptor count of the last tenth
// at most 8 above that of the first tenth (descriptors vary with the connections open at the
// moment of the sample: the load keeps up to 32, capgate up to 16 upstream).
import fs from 'node:fs';

const env = process.env;
const num = (k) => Number(env[k] ?? 0);
const lines = fs.readFileSync(env.SOAK_CSV, 'utf8').trim().split('\n');
const header = lines[0].split(',');
const rows = lines.slice(1).map((l) => {
  const f = l.split(',');
  const o = {};
  header.forEach((h, i) => { o[h] = h === 'event' ? (f[i] ?? '') : Number(f[i]); });
  return o;
});
const load = fs.existsSync(env.SOAK_LOAD_JSON) ? JSON.parse(fs.readFileSync(env.SOAK_LOAD_JSON, 'utf8')) : {};
const warmup = num('SOAK_WARMUP_S');
const mb = (kb) => (kb / 1024).toFixed(1);
const checks = [];
const check = (ok, what) => checks.push(`${ok ? 'PASS' : 'FAIL'}  ${what}`);

console.log(`\n== soak: ${env.SOAK_MINUTES} minutes, ${rows.length} samples, warm-up ${warmup} s ==\n`);

// The curve: about 16 rows spread over the run (every row that saw a fault is in the CSV).
const step = Math.max(1, Math.round(rows.length / 16));
console.log('| t (s) | capgate RSS (MB) | capgate fds | mock RSS (MB) | mock fds | requests | store errors | upstream errors | spooled | events in the interval |');
console.log('|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|');
rows.forEach((r, i) => {
  if (i % step !== 0 && i !== rows.length - 1) return;
  console.log(`| ${r.t_s} | ${mb(r.gw_rss_kb)} | ${r.gw_fds} | ${mb(r.mock_rss_kb)} | ${r.mock_fds} | ` +
    `${r.gw_requests} | ${r.gw_store_errors} | ${r.gw_upstream_errors} | ${r.gw_audit_spool} | ${r.event} |`);
});

const after = rows.filter((r) => r.t_s >= warmup);
const median = (a) => { const s = [...a].sort((x, y) => x - y); return s.length ? s[Math.floor(s.length / 2)] : 0; };
const slopePerHour = (xs, ys) => {
  const n = xs.length;
  if (n < 2) return 0;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let sxy = 0;
  let sxx = 0;
  for (let i = 0; i < n; i++) { sxy += (xs[i] - mx) * (ys[i] - my); sxx += (xs[i] - mx) ** 2; }
  return sxx ? (sxy / sxx) * 3600 : 0;
};
console.log('\nafter the warm-up (first tenth vs last tenth of the samples; least-squares slope):');
if (after.length < 10) {
  check(false, `at least 10 samples after the warm-up (have ${after.length})`);
} else {
  const w = Math.max(3, Math.floor(after.length / 10));
  const first = after.slice(0, w);
  const last = after.slice(-w);
  for (const [who, name] of [['gw', 'capgate'], ['mock', 'capgate-mock']]) {
    const rssA = median(first.map((r) => r[`${who}_rss_kb`]));
    const rssB = median(last.map((r) => r[`${who}_rss_kb`]));
    const rssMax = Math.max(...after.map((r) => r[`${who}_rss_kb`]));
    const slope = slopePerHour(after.map((r) => r.t_s), after.map((r) => r[`${who}_rss_kb`]));
    const fdA = Math.max(...first.map((r) => r[`${who}_fds`]));
    const fdB = Math.max(...last.map((r) => r[`${who}_fds`]));
    const fdMax = Math.max(...after.map((r) => r[`${who}_fds`]));
    console.log(`  ${name}: RSS ${mb(rssA)} -> ${mb(rssB)} MB (max ${mb(rssMax)}, slope ` +
      `${mb(slope)} MB/h); fds ${fdA} -> ${fdB} (max ${fdMax})`);
    check(rssB <= rssA * 1.1 + 4096, `${name} RSS flat after the warm-up (${mb(rssA)} -> ${mb(rssB)} MB)`);
    check(fdB <= fdA + 8, `${name} descriptors flat after the warm-up (${fdA} -> ${fdB})`);
  }
}

const answered = num('SOAK_ANSWERED_IDS');
const missing = num('SOAK_MISSING');
const dups = num('SOAK_STREAM_RECORDS') - num('SOAK_STREAM_IDS');
console.log(`\nload: sent ${load.sent}, answered ${load.answered} (${load.with_request_id} with ` +
  `X-Request-Id), transport errors ${load.transport_errors} ${JSON.stringify(load.errors ?? {})}, ` +
  `skipped (too many in flight) ${load.skipped}, unfinished ${load.unfinished}`);
console.log(`  kinds ${JSON.stringify(load.by_kind ?? {})}`);
console.log(`  codes ${JSON.stringify(load.by_code ?? {})}  statuses ${JSON.stringify(load.by_status ?? {})}`);
console.log(`audit: ${answered} answered request ids, ${num('SOAK_STREAM_RECORDS')} stream records ` +
  `(${num('SOAK_STREAM_IDS')} distinct ids, ${dups} duplicates), ${missing} answered without a record`);
const events = fs.existsSync(env.SOAK_EVENTS) ? fs.readFileSync(env.SOAK_EVENTS, 'utf8').trim().split('\n').filter(Boolean) : [];
const byEvent = {};
for (const e of events) { const k = e.split(' ')[1]; byEvent[k] = (byEvent[k] || 0) + 1; }
console.log(`faults: ${JSON.stringify(byEvent)}`);
console.log(`exit: capgate ${env.SOAK_GW_RC}, capgate-mock ${env.SOAK_MOCK_RC}; sanitizer lines: ` +
  `capgate ${env.SOAK_GW_SAN}, capgate-mock ${env.SOAK_MOCK_SAN}\n`);

check(answered > 0 && answered === load.with_request_id, `every answer's id read back (${answered})`);
check(missing === 0, `every answered request has its audit record in the stream (${missing} missing)`);
check(num('SOAK_DRAINED') >= 2, 'the audit spool and queue drained after the load');
check(load.transport_errors === 0 && load.unfinished === 0,
  `every request answered (${load.transport_errors} transport errors, ${load.unfinished} unfinished)`);
check(env.SOAK_GW_RC === '0' && env.SOAK_GW_SAN === '0', 'capgate exited 0 on SIGTERM, no sanitizer report');
check(env.SOAK_MOCK_RC === '0' && env.SOAK_MOCK_SAN === '0', 'capgate-mock exited 0 on SIGTERM, no sanitizer report');
for (const c of checks) console.log(c);
const failed = checks.filter((c) => c.startsWith('FAIL')).length;
console.log(failed ? `\nsoak: FAIL (${failed} of ${checks.length} checks)` : `\nsoak: PASS (${checks.length} checks)`);
process.exit(failed ? 1 : 0);
