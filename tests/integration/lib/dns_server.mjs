// dns_server.mjs: a tiny authoritative DNS server on 127.0.0.1 (UDP, a port picked at run time)
// for the gateway's upstream.resolver in tests: A and AAAA answers from a table the test changes
// while it runs, and a log of the questions asked. Only what evdns sends is handled: one
// question per query, class IN; a name not in the table gets NXDOMAIN, a type it lacks an empty
// answer (NOERROR, NODATA).
import dgram from 'node:dgram';
import net from 'node:net';

const TYPE_A = 1;
const TYPE_AAAA = 28;

function readName(buf, off) {
  const labels = [];
  for (;;) {
    const len = buf[off];
    if (len === undefined) throw new Error('truncated name');
    if (len === 0) return { name: labels.join('.'), end: off + 1 };
    if (len >= 0xc0) throw new Error('compressed name in a question');
    labels.push(buf.toString('latin1', off + 1, off + 1 + len));
    off += 1 + len;
  }
}

function ipv6Bytes(text) {
  const [head, tail] = text.includes('::') ? text.split('::') : [text, null];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === null ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  const b = Buffer.alloc(16);
  groups.forEach((g, i) => b.writeUInt16BE(parseInt(g, 16), i * 2));
  return b;
}

function rdata(type, addr) {
  if (type === TYPE_A) return Buffer.from(addr.split('.').map(Number));
  return ipv6Bytes(addr);
}

/**
 * Starts the server. records: { 'name': { A: ['127.0.0.1'], AAAA: ['::1'] } } (names matched
 * without regard to case; evdns randomises the case of the names it asks). Returns
 * { port, address ('127.0.0.1:PORT', for upstream.resolver), set(name, {A, AAAA}), remove(name), queries
 * (array of { name, type: 'A'|'AAAA'|number }), count(name), stop() }.
 */
export async function startDnsServer(records = {}, { ttl = 1 } = {}) {
  const table = new Map(Object.entries(records).map(([k, v]) => [k.toLowerCase(), v]));
  const queries = [];
  const sock = dgram.createSocket('udp4');
  sock.on('message', (msg, rinfo) => {
    let q;
    try {
      if (msg.length < 12) return;
      const qd = msg.readUInt16BE(4);
      if (qd !== 1) return;
      const { name, end } = readName(msg, 12);
      const type = msg.readUInt16BE(end);
      q = { id: msg.readUInt16BE(0), rd: msg[2] & 1, name, type, question: msg.subarray(12, end + 4) };
    } catch {
      return;
    }
    const typeName = q.type === TYPE_A ? 'A' : q.type === TYPE_AAAA ? 'AAAA' : q.type;
    queries.push({ name: q.name.toLowerCase(), type: typeName });
    const entry = table.get(q.name.toLowerCase());
    const addrs = entry && (q.type === TYPE_A || q.type === TYPE_AAAA) ? entry[typeName] ?? [] : [];
    const header = Buffer.alloc(12);
    header.writeUInt16BE(q.id, 0);
    header[2] = 0x84 | q.rd; // QR, AA, RD as asked
    header[3] = entry ? 0 : 3; // NXDOMAIN for an unknown name
    header.writeUInt16BE(1, 4);
    header.writeUInt16BE(addrs.length, 6);
    const answers = addrs.map((a) => {
      const data = rdata(q.type, a);
      const rr = Buffer.alloc(12);
      rr.writeUInt16BE(0xc00c, 0); // the question's name
      rr.writeUInt16BE(q.type, 2);
      rr.writeUInt16BE(1, 4); // IN
      rr.writeUInt32BE(ttl, 6);
      rr.writeUInt16BE(data.length, 10);
      return Buffer.concat([rr, data]);
    });
    sock.send(Buffer.concat([header, q.question, ...answers]), rinfo.port, rinfo.address);
  });
  await new Promise((resolve, reject) => {
    sock.once('error', reject);
    sock.bind(0, '127.0.0.1', resolve);
  });
  const { port } = sock.address();
  return {
    port,
    address: `127.0.0.1:${port}`,
    queries,
    set(name, value) {
      for (const a of [...(value.A ?? []), ...(value.AAAA ?? [])]) {
        if (!net.isIP(a)) throw new Error(`not an address: ${a}`);
      }
      table.set(name.toLowerCase(), value);
    },
    /** The name is no longer known (NXDOMAIN). */
    remove(name) {
      table.delete(name.toLowerCase());
    },
    count(name) {
      return queries.filter((x) => x.name === name.toLowerCase()).length;
    },
    stop: () => new Promise((resolve) => sock.close(() => resolve())),
  };
}
