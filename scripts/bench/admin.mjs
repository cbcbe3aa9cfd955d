#!/usr/bin/env node
// admin.mjs: the benchmark's calls to capgate-mock's admin API.
//   admin.mjs reset BASE_URL        POST /__admin/reset (forgets nonces, so a pre-signed file
//                                   can be replayed in the next run)
//   admin.mjs check BASE_URL        the journal's most recent entries all answered code 0;
//                                   prints how many requests the journal counted
//   admin.mjs fault BASE_URL JSON   POST /__admin/faults with the rule (or array of rules) JSON
//                                   (reset drops every rule)
import http from 'node:http';

const [cmd, base] = process.argv.slice(2);

function call(method, path, body) {
  return new Promise((resolve, reject) => {
    const headers = body === undefined ? {} : { 'content-type': 'application/json' };
    const req = http.request(`${base}${path}`, { method, agent: false, headers }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        if (res.statusCode !== 200) reject(new Error(`${method} ${path}: HTTP ${res.statusCode}: ${text.slice(0, 200)}`));
        else resolve(text ? JSON.parse(text) : {});
      });
    });
    req.setTimeout(10000, () => req.destroy(new Error(`${method} ${path}: timed out`)));
    req.on('error', reject);
    req.end(body);
  });
}

try {
  if (cmd === 'reset') {
    await call('POST', '/__admin/reset');
  } else if (cmd === 'check') {
    const j = await call('GET', '/__admin/requests?limit=200');
    const bad = (j.requests || []).filter((e) => e.code !== 0);
    if (!j.requests?.length) throw new Error('the journal is empty: no request reached the mock');
    if (bad.length) throw new Error(`${bad.length} of the last ${j.requests.length} requests failed, e.g. ${JSON.stringify(bad[0])}`);
    console.log(j.total);
  } else if (cmd === 'fault') {
    const rule = process.argv[4];
    JSON.parse(rule);
    await call('POST', '/__admin/faults', rule);
  } else {
    console.error('usage: admin.mjs reset|check BASE_URL | fault BASE_URL JSON');
    process.exit(2);
  }
} catch (e) {
  console.error(`admin.mjs: ${e.message}`);
  process.exit(1);
}
