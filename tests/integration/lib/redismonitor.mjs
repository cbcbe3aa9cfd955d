// redismonitor.mjs: which commands a redis-server ran and when, by the server's own clock. Tests
// whose expectations depend on time (rate limits) read the times Redis saw from MONITOR instead of
// trusting the durations the client meant to send: on a loaded machine the two differ by much more
// than the tolerance of a rate test.
import net from 'node:net';

/**
 * Opens a MONITOR connection to 127.0.0.1:port and collects every command line whose text matches
 * `match` (a RegExp; default: every line). Resolves once Redis has confirmed MONITOR, with
 * { stop(cli) }: stop runs `cli('ECHO', marker)` (the harness's redis-cli wrapper), waits (bounded)
 * until the marker comes through, so every command Redis ran before it has been read, closes the
 * connection and resolves the entries in server order: { us (Unix µs, the server's clock), line }.
 *
 * The time is what redis-server stamped on the MONITOR line; Redis 7 writes that line when the
 * command returns, so it trails the TIME a script read at its start by the script's run time (tens
 * of µs, more if the server was descheduled in between).
 */
export function monitorRedis(port, { match = /./, timeoutMs = 5000 } = {}) {
  return new Promise((resolve, reject) => {
    const entries = [];
    let buf = '';
    let confirmed = false;
    let marker = null;
    let onMarker = null;
    const sock = net.connect(port, '127.0.0.1');
    const t = setTimeout(() => { sock.destroy(); reject(new Error('MONITOR not confirmed in time')); }, timeoutMs);
    sock.on('error', (e) => { clearTimeout(t); reject(e); });
    sock.on('connect', () => sock.write('MONITOR\r\n'));
    sock.on('data', (d) => {
      buf += d.toString('latin1');
      let i;
      while ((i = buf.indexOf('\r\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (!confirmed) {
          if (line !== '+OK') { sock.destroy(); reject(new Error(`MONITOR answered ${line}`)); return; }
          confirmed = true;
          clearTimeout(t);
          resolve({ stop });
          continue;
        }
        if (marker !== null && line.includes(marker)) { onMarker?.(); continue; }
        if (!match.test(line)) continue;
        // "+1700000000.123456 [0 127.0.0.1:50000] "EVALSHA" ...": seconds and µs, both integers.
        const m = /^\+(\d+)\.(\d{6}) /.exec(line);
        if (!m) continue;
        entries.push({ us: Number(m[1]) * 1e6 + Number(m[2]), line: line.slice(1) });
      }
    });

    function stop(cli) {
      marker = `monitor-end-${process.pid}-${Date.now()}`;
      return new Promise((res, rej) => {
        const bound = setTimeout(() => { sock.destroy(); rej(new Error('MONITOR end marker not seen in time')); }, timeoutMs);
        onMarker = () => { clearTimeout(bound); sock.destroy(); res(entries); };
        cli('ECHO', marker);
      });
    }
  });
}
