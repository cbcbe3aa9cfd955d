// auditstream.mjs: the audit records of a Redis stream, decoded as an outside consumer would
// (README "Audit"): an entry's field "json" holds the record's JSON object; an entry written by
// an earlier version holds the record as flat field/value pairs instead (numbers as decimal
// text, absent values left out), still read by /admin/audit.
import { execFileSync } from 'node:child_process';

/**
 * The entries of `stream` from `start` (an XRANGE start: '-', an id, or '(' + id) on, oldest
 * first, as [{ id, rec, format, text }] with format 'json' (text: the field's value as stored)
 * or 'fields' (text undefined). Reads XRANGE with redis-cli
 * --raw: one line per id, field and value (a record's JSON is one line: compact, control
 * characters escaped).
 */
export function streamEntries(port, stream, start = '-') {
  const out = execFileSync('redis-cli', ['-p', String(port), '--raw', 'XRANGE', stream, start, '+'],
    { encoding: 'utf8', maxBuffer: 1 << 30 });
  const lines = out.split('\n');
  if (lines.at(-1) === '') lines.pop();
  const entries = [];
  let i = 0;
  while (i < lines.length) {
    const id = lines[i++];
    if (!/^\d+-\d+$/.test(id)) throw new Error(`XRANGE ${stream}: expected an entry id, got ${JSON.stringify(id)}`);
    if (lines[i] === 'json') {
      entries.push({ id, rec: JSON.parse(lines[i + 1]), format: 'json', text: lines[i + 1] });
      i += 2;
      continue;
    }
    const rec = {};
    while (i + 1 < lines.length && !/^\d+-\d+$/.test(lines[i])) {
      rec[lines[i]] = lines[i + 1];
      i += 2;
    }
    entries.push({ id, rec, format: 'fields' });
  }
  return entries;
}
