// sched-attrib.mjs: where the time of slow requests went, from the scheduler's point of view.
//
//   node sched-attrib.mjs --trace FILE --sched FILE --pids capgate=PID,mock=PID[,redis=PID]
//                         [--label TEXT]
//
// --trace is capgate-loadgen's --trace (t0 in CLOCK_MONOTONIC ns, then due/sent/done of every
// measured request in us from t0). --sched is `perf script -F comm,pid,tid,cpu,time,event,trace
// --ns` of `perf record -k CLOCK_MONOTONIC -a -e sched:sched_switch -e sched:sched_wakeup`
// taken over the same run, so both share one clock. --pids names the processes the bench
// started: capgate's threads go by their names (capgate-w0 is a worker; thread.h), anyone
// else's capgate is "other processes".
//
// From the switches and wake-ups it rebuilds, for every thread, when it ran (and on which CPU)
// and when it was runnable but waiting for a CPU. Then, for requests grouped by latency (around
// the median, the slowest 1%, the slowest 0.1%), it sums over each request's window (due ->
// done) what every group of threads did: the generator's own lag before it sent, the time each
// role ran, the time each role waited runnable, and what ran on the cores meanwhile. A tail that
// is capgate's own work shows as worker run time; one that is the machine's shows as waits with
// other threads running, or as idle cores (the host took the vCPU, or the packet sat in softirq).
// Times are means per request of the group, in us.
import fs from 'node:fs';

function arg(name, def) {
  const i = process.argv.indexOf(name);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}
const traceFile = arg('--trace');
const schedFile = arg('--sched');
const label = arg('--label', '');
const pids = new Map();
for (const kv of (arg('--pids', '') || '').split(',')) {
  const [k, v] = kv.split('=');
  if (k && /^\d+$/.test(v || '')) pids.set(v, k);
}
if (!traceFile || !schedFile || !pids.size) {
  console.error('usage: sched-attrib.mjs --trace FILE --sched FILE --pids capgate=PID,mock=PID[,redis=PID] [--label TEXT]');
  process.exit(2);
}

// ---- the requests ----
const traceLines = fs.readFileSync(traceFile, 'utf8').split('\n');
const head = /^# t0 (\d+) ns CLOCK_MONOTONIC/.exec(traceLines[0] || '');
if (!head) {
  console.error(`${traceFile}: no "# t0 ... CLOCK_MONOTONIC" header (capgate-loadgen --trace)`);
  process.exit(1);
}
const t0us = Number(BigInt(head[1]) / 1000n);
const reqs = [];
for (const l of traceLines.slice(1)) {
  const f = l.split(' ');
  if (f.length < 3) continue;
  reqs.push({ due: t0us + Number(f[0]), sent: t0us + Number(f[1]), done: t0us + Number(f[2]) });
}
if (!reqs.length) {
  console.error(`${traceFile}: no requests`);
  process.exit(1);
}

// ---- the scheduler ----
const ROLES = ['capgate workers', 'capgate main thread', 'capgate audit sink', 'capgate metrics flush',
  'capgate other threads', 'mock', 'generator', 'redis-server', 'other processes', 'idle CPU 0',
  'idle CPU 1'];
const CAPGATE_THREADS = { capgate: 'capgate main thread', 'capgate-audit': 'capgate audit sink',
  'capgate-metrics': 'capgate metrics flush' };
const tgidOf = new Map(); // tid -> pid, from the events' headers (the thread on the CPU)
// role of a thread: by its process (--pids), then by its name
function role(tid, comm, cpu) {
  if (tid === '0') return `idle CPU ${cpu}`;
  const who = pids.get(tgidOf.get(tid));
  if (who === 'capgate') {
    if (/^capgate-w\d+$/.test(comm)) return 'capgate workers';
    return CAPGATE_THREADS[comm] || 'capgate other threads';
  }
  if (who === 'mock') return 'mock';
  if (who === 'redis') return 'redis-server';
  if (comm === 'capgate-loadgen') return 'generator';
  return 'other processes';
}

const runList = []; // [start, end, tid, comm]
const waitList = [];
const cur = new Map(); // cpu -> { tid, comm, since }
const state = new Map(); // tid -> { comm, runnableSince }
const re = /^\s*(.+?)\s+(\d+)\/(\d+)\s+\[(\d+)\]\s+(\d+)\.(\d+):\s+sched:(sched_switch|sched_wakeup):\s+(.*)$/;
let first = Infinity;
let last = 0;
const text = fs.readFileSync(schedFile, 'utf8');
let start = 0;
while (start < text.length) {
  let end = text.indexOf('\n', start);
  if (end < 0) end = text.length;
  const line = text.slice(start, end);
  start = end + 1;
  const m = re.exec(line);
  if (!m) continue;
  const cpu = Number(m[4]);
  tgidOf.set(m[3], m[2]);
  const t = Number(m[5]) * 1e6 + Number(m[6].padEnd(9, '0')) / 1000; // us
  first = Math.min(first, t);
  last = Math.max(last, t);
  if (m[7] === 'sched_wakeup') {
    const w = /comm=(.*) pid=(\d+) prio=/.exec(m[8]);
    if (!w) continue;
    const tid = w[2];
    const s = state.get(tid) || { comm: w[1] };
    if (s.runnableSince === undefined) s.runnableSince = t;
    s.comm = w[1];
    state.set(tid, s);
    continue;
  }
  const w = /prev_comm=(.*) prev_pid=(\d+) prev_prio=\d+ prev_state=(\S+) ==> next_comm=(.*) next_pid=(\d+) next_prio=/.exec(m[8]);
  if (!w) continue;
  const [, prevComm, prevTid, prevState, nextComm, nextTid] = w;
  const c = cur.get(cpu);
  if (c && c.tid === prevTid) runList.push([c.since, t, prevTid, prevComm, cpu]);
  // the previous thread is runnable again at once if it was preempted
  const ps = state.get(prevTid) || { comm: prevComm };
  ps.comm = prevComm;
  ps.runnableSince = prevState.startsWith('R') && prevTid !== '0' ? t : undefined;
  state.set(prevTid, ps);
  const ns = state.get(nextTid) || { comm: nextComm };
  if (ns.runnableSince !== undefined && nextTid !== '0')
    waitList.push([ns.runnableSince, t, nextTid, nextComm, cpu]);
  ns.runnableSince = undefined;
  ns.comm = nextComm;
  state.set(nextTid, ns);
  cur.set(cpu, { tid: nextTid, since: t });
}
if (!Number.isFinite(first)) {
  console.error(`${schedFile}: no sched_switch or sched_wakeup lines`);
  process.exit(1);
}
const runs = new Map(ROLES.map((r) => [r, []]));
const waits = new Map(ROLES.map((r) => [r, []]));
for (const iv of runList) runs.get(role(iv[2], iv[3], iv[4]))?.push(iv);
for (const iv of waitList) waits.get(role(iv[2], iv[3], iv[4]))?.push(iv);

// A role's intervals sorted by start, with the longest one's length: the intervals that can
// reach a time t start at or after t - maxLen. A role's intervals may overlap each other (several
// threads or CPUs): they add up, as CPU time does.
for (const list of [...runs.values(), ...waits.values()]) {
  list.sort((x, y) => x[0] - y[0]);
  list.maxLen = list.reduce((m, iv) => Math.max(m, iv[1] - iv[0]), 0);
}

// The sum of f(x, y, interval) over the parts [x, y] of list's intervals inside [a, b].
function sumInside(list, a, b, f) {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (list[mid][0] < a - list.maxLen) lo = mid + 1;
    else hi = mid;
  }
  let s = 0;
  for (let i = lo; i < list.length && list[i][0] < b; i++) {
    const x = Math.max(a, list[i][0]);
    const y = Math.min(b, list[i][1]);
    if (y > x) s += f(x, y, list[i]);
  }
  return s;
}
const overlap = (list, a, b) => sumInside(list, a, b, (x, y) => y - x);
// The part of a role's waits inside [a, b] during which the CPU it then ran on was still idle:
// woken, but the halted vCPU had not come back yet (the wake-up latency of the VM), not a queue.
const waitOnIdle = (list, a, b) =>
  sumInside(list, a, b, (x, y, iv) => (runs.has(`idle CPU ${iv[4]}`) ? overlap(runs.get(`idle CPU ${iv[4]}`), x, y) : 0));

// ---- the groups ----
const covered = reqs.filter((r) => r.due >= first && r.done <= last);
if (covered.length < 100) {
  console.error(`only ${covered.length} requests fall inside the scheduler record`);
  process.exit(1);
}
covered.sort((x, y) => (x.done - x.due) - (y.done - y.due));
const n = covered.length;
const pick = (lo, hi) => covered.slice(Math.floor(n * lo), Math.max(Math.floor(n * lo) + 1, Math.floor(n * hi)));
const groups = [
  ['p40-p60', pick(0.4, 0.6)],
  ['slowest 1%', pick(0.99, 1)],
  ['slowest 0.1%', pick(0.999, 1)],
];

function attribute(list) {
  const sum = { latency: 0, lag: 0 };
  for (const r of ROLES) {
    sum[`run ${r}`] = 0;
    sum[`wait ${r}`] = 0;
  }
  for (const q of list) {
    sum.latency += q.done - q.due;
    sum.lag += q.sent - q.due;
    for (const r of ROLES) {
      sum[`run ${r}`] += overlap(runs.get(r), q.due, q.done);
      if (r.startsWith('idle')) continue;
      sum[`wait ${r}`] += overlap(waits.get(r), q.due, q.done);
      sum[`wake ${r}`] = (sum[`wake ${r}`] || 0) + waitOnIdle(waits.get(r), q.due, q.done);
    }
  }
  for (const k of Object.keys(sum)) sum[k] /= list.length;
  return sum;
}

const rows = groups.map(([name, list]) => [name, list.length, attribute(list)]);
const fmt = (v) => (v >= 1000 ? `${(v / 1000).toFixed(2)} ms` : `${v.toFixed(0)} us`);
console.log(`### Scheduler attribution${label ? `: ${label}` : ''}`);
console.log('');
console.log(`${n} requests inside the record; means per request over its window (due -> done), ` +
  'summed over both cores (two cores can add up to twice the window)');
console.log('');
console.log(`| | ${rows.map(([name, k]) => `${name} (${k})`).join(' | ')} |`);
console.log(`|---|${rows.map(() => '---:').join('|')}|`);
const line = (title, key) => console.log(`| ${title} | ${rows.map(([, , s]) => fmt(s[key])).join(' | ')} |`);
line('latency (due -> done)', 'latency');
line("generator's send lag (due -> sent)", 'lag');
for (const r of ROLES) {
  if (rows.some(([, , s]) => s[`run ${r}`] >= 0.5))
    line(r.startsWith('idle') ? `${r.slice(5)} idle (no thread on it)` : `${r} running`, `run ${r}`);
}
for (const r of ROLES) {
  if (r.startsWith('idle') || !rows.some(([, , s]) => s[`wait ${r}`] >= 0.5)) continue;
  line(`${r} runnable, waiting for a CPU`, `wait ${r}`);
  line('&nbsp;&nbsp;of which its CPU was idle (the vCPU waking up)', `wake ${r}`);
}
