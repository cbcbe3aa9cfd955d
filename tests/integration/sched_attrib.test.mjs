// sched_attrib.test.mjs: scripts/bench/sched-attrib.mjs (the bench's scheduler attribution of
// slow requests) on a generator trace and a `perf script` record written here, whose answer is
// known: 297 fast requests while every core idles, and 3 slow ones during which another process
// holds CPU 0 for 3 ms while capgate's worker, woken at the same moment, waits for it, then runs
// 3 ms.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import { SOURCE_DIR, tmpDir } from './lib/harness.mjs';

const SCRIPT = path.join(SOURCE_DIR, 'scripts/bench/sched-attrib.mjs');
const T0_S = 1000; // the trace's t0, in CLOCK_MONOTONIC seconds

/** perf script's time field for t us after t0 */
const ts = (us) => {
  const ns = BigInt(T0_S) * 1000000000n + BigInt(Math.round(us * 1000));
  return `${ns / 1000000000n}.${String(ns % 1000000000n).padStart(9, '0')}`;
};
const sw = (cpu, us, [pc, pp, ptid], state, [nc, ntid]) =>
  `${pc.padStart(16)} ${pp}/${ptid} [00${cpu}] ${ts(us)}: sched:sched_switch: prev_comm=${pc} ` +
  `prev_pid=${ptid} prev_prio=120 prev_state=${state} ==> next_comm=${nc} next_pid=${ntid} next_prio=120`;
const wake = (cpu, us, [cc, cp, ctid], [wc, wtid]) =>
  `${cc.padStart(16)} ${cp}/${ctid} [00${cpu}] ${ts(us)}: sched:sched_wakeup: comm=${wc} pid=${wtid} ` +
  `prio=120 target_cpu=00${cpu}`;

function run(args) {
  return new Promise((resolve) => {
    execFile(process.execPath, [SCRIPT, ...args], { encoding: 'utf8' },
      (err, stdout, stderr) => resolve({ code: err ? err.code : 0, stdout, stderr }));
  });
}

/** the row named title of the markdown table: its cells after the title */
function row(out, title) {
  const line = out.split('\n').find((l) => l.startsWith(`| ${title} |`));
  assert.ok(line, `no row "${title}" in:\n${out}`);
  return line.split('|').slice(2, -1).map((c) => c.trim());
}

test('slow requests: the worker waited 2.9 ms behind another process, then ran; the idle core is counted', async () => {
  const dir = tmpDir('capgate-sched-');
  const trace = [`# t0 ${BigInt(T0_S) * 1000000000n} ns CLOCK_MONOTONIC; due sent done (us from t0) connection first`];
  for (let i = 0; i < 297; i++) trace.push(`${i * 1000} ${i * 1000 + 10} ${i * 1000 + 100} 1 0`);
  for (const due of [400000, 400100, 400200]) trace.push(`${due} ${due + 10} ${due + 5000} 2 0`);
  fs.writeFileSync(path.join(dir, 'trace'), `${trace.join('\n')}\n`);

  const worker = ['capgate-w0', 10, 11];
  const mock = ['capgate-mock', 20, 21];
  const stress = ['stress', 99, 99];
  const idle0 = ['swapper/0', 0, 0];
  const idle1 = ['swapper/1', 0, 0];
  const sched = [
    sw(0, -10, worker, 'S', ['swapper/0', 0]),
    sw(1, -10, mock, 'S', ['swapper/1', 0]),
    sw(0, 400000, idle0, 'R', ['stress', 99]),
    wake(0, 400000, stress, ['capgate-w0', 11]),
    sw(0, 403000, stress, 'S', ['capgate-w0', 11]),
    sw(0, 406000, worker, 'S', ['swapper/0', 0]),
    sw(1, 500000, idle1, 'R', ['capgate-mock', 21]),
  ];
  fs.writeFileSync(path.join(dir, 'sched'), `${sched.join('\n')}\n`);

  const r = await run(['--trace', path.join(dir, 'trace'), '--sched', path.join(dir, 'sched'),
    '--pids', 'capgate=10,mock=20']);
  fs.rmSync(dir, { recursive: true, force: true });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /300 requests inside the record/);
  // columns: p40-p60, slowest 1% (the 3 slow ones), slowest 0.1% (the slowest one)
  assert.deepEqual(row(r.stdout, 'latency (due -> done)'), ['100 us', '5.00 ms', '5.00 ms']);
  assert.deepEqual(row(r.stdout, "generator's send lag (due -> sent)"), ['10 us', '10 us', '10 us']);
  // windows 400000-405000, 400100-405100, 400200-405200: waits 3000, 2900, 2800 us
  assert.deepEqual(row(r.stdout, 'capgate workers runnable, waiting for a CPU').slice(1, 2), ['2.90 ms']);
  assert.deepEqual(row(r.stdout, 'capgate workers running').slice(1, 2), ['2.10 ms']);
  assert.deepEqual(row(r.stdout, 'other processes running').slice(1, 2), ['2.90 ms']);
  assert.deepEqual(row(r.stdout, 'CPU 1 idle (no thread on it)'), ['100 us', '5.00 ms', '5.00 ms']);
  assert.deepEqual(row(r.stdout, 'CPU 0 idle (no thread on it)'), ['100 us', '0 us', '0 us']);
  // the worker's CPU was busy (stress), not idle, while it waited: a queue, not a wake-up
  const wakeRows = r.stdout.split('\n').filter((l) => l.includes('of which its CPU was idle'));
  assert.equal(wakeRows.length, 1, r.stdout);
  assert.deepEqual(wakeRows[0].split('|').slice(2, -1).map((c) => c.trim()), ['0 us', '0 us', '0 us']);
  // the mock never ran in the record
  assert.ok(!/mock running/.test(r.stdout), r.stdout);
});

test('a wait on an idle core is the vCPU waking up; bad input is refused with a reason', async () => {
  const dir = tmpDir('capgate-sched-');
  const trace = [`# t0 ${BigInt(T0_S) * 1000000000n} ns CLOCK_MONOTONIC; due sent done (us from t0) connection first`];
  for (let i = 0; i < 200; i++) trace.push(`${i * 1000} ${i * 1000} ${i * 1000 + 800} 1 0`);
  fs.writeFileSync(path.join(dir, 'trace'), `${trace.join('\n')}\n`);
  const worker = ['capgate-w0', 10, 11];
  const idle0 = ['swapper/0', 0, 0];
  // each request: the worker is woken at due + 100 on idle CPU 0, runs from due + 600 to due + 700
  const sched = [sw(0, -10, worker, 'S', ['swapper/0', 0])];
  for (let i = 0; i < 200; i++) {
    sched.push(wake(0, i * 1000 + 100, idle0, ['capgate-w0', 11]));
    sched.push(sw(0, i * 1000 + 600, idle0, 'R', ['capgate-w0', 11]));
    sched.push(sw(0, i * 1000 + 700, worker, 'S', ['swapper/0', 0]));
  }
  fs.writeFileSync(path.join(dir, 'sched'), `${sched.join('\n')}\n`);
  const args = ['--trace', path.join(dir, 'trace'), '--sched', path.join(dir, 'sched'), '--pids', 'capgate=10'];
  const r = await run(args);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(row(r.stdout, 'capgate workers runnable, waiting for a CPU'), ['500 us', '500 us', '500 us']);
  const wakeRow = r.stdout.split('\n').find((l) => l.includes('of which its CPU was idle'));
  assert.deepEqual(wakeRow.split('|').slice(2, -1).map((c) => c.trim()), ['500 us', '500 us', '500 us']);

  const noPids = await run(args.slice(0, 4));
  assert.equal(noPids.code, 2);
  assert.match(noPids.stderr, /usage: sched-attrib\.mjs/);
  fs.writeFileSync(path.join(dir, 'bad-trace'), '0 1 2 1 0\n');
  const noHeader = await run(['--trace', path.join(dir, 'bad-trace'), ...args.slice(2)]);
  assert.equal(noHeader.code, 1);
  assert.match(noHeader.stderr, /no "# t0 \.\.\. CLOCK_MONOTONIC" header/);
  fs.writeFileSync(path.join(dir, 'empty-sched'), 'nothing here\n');
  const noSched = await run([...args.slice(0, 2), '--sched', path.join(dir, 'empty-sched'), ...args.slice(4)]);
  assert.equal(noSched.code, 1);
  assert.match(noSched.stderr, /no sched_switch or sched_wakeup lines/);
  fs.rmSync(dir, { recursive: true, force: true });
});
