// nonce_redis.test.mjs: replay protection across capgate instances sharing one Redis
// (docs/design.md "Gateway": "Nonce replay as upstream"). Two instances behind one Host (as a load
// balancer passes it): a signed request to A, the same bytes to B → B answers 4500 and upstream saw
// one call; with and without limit rules (the claim rides in the limit EVALSHA, or is a lone SET
// NX); the same request raced to A and B → exactly one code 0; and INFO commandstats shows a
// forwarded request with limits still costs one limit EVALSHA, the claim adding one SET inside it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMock, startRedis, nextNonce, request, sign, waitFor, SEED_PARAMS } from './lib/harness.mjs';
import { startGateway, gwCall, journal, assertApiReply, APPS, API_PATH } from './lib/gateway.mjs';

const LB_HOST = 'capgate-lb.test'; // the Host every instance sees, and the one the app signs
const LIMITS = [
  { name: 'per-app', scope: 'app', rate: 1000, period_s: 1, burst: 1000 },
  { name: 'everyone', scope: 'global', rate: 1000, period_s: 1, burst: 1000 },
];

let mock;
let redis;
const pairs = {}; // mode → [A, B]
let uidSeq = 0;

/** A signed GET query string of app, with a fresh uid (to find its upstream calls) and Nonce. */
function signedQuery(params = {}) {
  const uid = `nonce-${process.pid}-${++uidSeq}`;
  const p = {
    Action: 'CaptchaIframeQuery', Region: 'gz', SecretId: APPS.sig.secretId,
    Timestamp: String(Math.floor(Date.now() / 1000)), Nonce: String(nextNonce()),
    ...SEED_PARAMS, uid, ...params,
  };
  p.Signature = sign('GET', LB_HOST, API_PATH, p, APPS.sig.secretKey);
  return { query: new URLSearchParams(p).toString(), uid, nonce: p.Nonce };
}

/** The same bytes to an instance, under the balancer's Host. */
async function send(gw, query) {
  const r = await request(`${gw.base}${API_PATH}?${query}`, { headers: { host: LB_HOST }, timeoutMs: 8000 });
  return { r, json: assertApiReply(r, gw.base) };
}

async function upstreamCalls(uid) {
  return (await journal(mock)).filter((e) => e.params?.uid === uid).length;
}

/** Calls per command from INFO commandstats (script-internal commands included, as Redis counts). */
function commandStats() {
  const out = {};
  for (const m of redis.cli('INFO', 'commandstats').matchAll(/cmdstat_(\w+):calls=(\d+)/g)) out[m[1]] = Number(m[2]);
  return out;
}
const delta = (a, b, cmd) => (b[cmd] || 0) - (a[cmd] || 0);

/** Waits (bounded) until Redis sees no EVALSHA, SET or XADD for 300 ms; the stats then. */
async function settled() {
  let last = commandStats();
  let quietSince = Date.now();
  await waitFor(async () => {
    await new Promise((r) => setTimeout(r, 50));
    const now = commandStats();
    if (['evalsha', 'set', 'xadd'].some((c) => delta(last, now, c) !== 0)) quietSince = Date.now();
    last = now;
    return Date.now() - quietSince >= 300;
  }, { timeoutMs: 10000, what: 'Redis quiet for 300 ms' });
  return last;
}

/** Runs fn between two quiet points (its requests' audit records written); the command delta.
 * The audit sink writes each batch with one SET of its batch key: every step here writes one
 * record, so one batch, and that SET is left out of the 'set' count. */
async function measure(records, fn) {
  const s0 = await settled();
  await fn();
  await waitFor(() => delta(s0, commandStats(), 'xadd') >= records,
    { timeoutMs: 5000, what: `${records} audit XADD` });
  const s1 = await settled();
  assert.equal(delta(s0, s1, 'xadd'), records, 'audit records of this step only');
  assert.equal(records, 1, 'one record per step: one audit batch');
  return (cmd) => delta(s0, s1, cmd) - (cmd === 'set' ? records : 0);
}

before(async () => {
  mock = await startMock({ tls: true });
  redis = await startRedis();
  for (const mode of ['no limits', 'limits']) {
    const config = {
      redis: { url: redis.url, key_prefix: `nr${process.pid}${mode === 'limits' ? 'l' : 'n'}:`, timeout_ms: 2000 },
      on_store_error: 'deny',
      upstream: { timeout_ms: 5000 },
      // no metrics flush while a step is measured: each flush adds a SET of its batch key
      metrics: { flush_ms: 600000 },
      ...(mode === 'limits' ? { limits: LIMITS } : {}),
    };
    pairs[mode] = [];
    for (const name of ['A', 'B']) {
      pairs[mode].push(await startGateway({ mock, config: { ...config, instance: `${mode}-${name}` } }));
    }
  }
});
after(async () => {
  for (const gws of Object.values(pairs)) for (const gw of gws) await gw.stop();
  await mock?.stop();
  await redis?.stop();
});

for (const mode of ['no limits', 'limits']) {
  test(`${mode}: a signed request to A, the same bytes to B: 4500, one upstream call`, async () => {
    const [a, b] = pairs[mode];
    const { query, uid, nonce } = signedQuery();
    const first = await send(a, query);
    assert.equal(first.json.code, 0, first.r.body);
    const replay = await send(b, query);
    assert.equal(replay.json.code, 4500, replay.r.body);
    assert.equal(replay.json.codeDesc, 'ReplayAttack');
    assert.equal(replay.json.message, `Nonce ${nonce} was already used by SecretId ${APPS.sig.secretId}`);
    assert.equal(replay.r.headers.ratelimit, undefined, 'a replay reports no rate limit: none was checked');
    // and on A itself, the in-process cache answers first
    const again = await send(a, query);
    assert.equal(again.json.code, 4500, again.r.body);
    assert.equal(await upstreamCalls(uid), 1, 'one upstream call');
    // the claim lives under <prefix>nonce:<SecretId>:<Nonce> for 2 * window + 1 s
    const ttl = Number(redis.cli('PTTL', `${a.config.redis.key_prefix}nonce:${APPS.sig.secretId}:${nonce}`));
    assert.ok(ttl > 600000 && ttl <= 601000, `nonce key PTTL ${ttl}`);
  });

  test(`${mode}: an invalid request replayed to B gets 4000 first; nothing reaches upstream`, async () => {
    const [a, b] = pairs[mode];
    const { query, uid } = signedQuery({ captchaType: 'nine' });
    for (const gw of [a, b]) {
      const { r, json } = await send(gw, query);
      assert.equal(json.code, 4000, r.body);
    }
    assert.equal(await upstreamCalls(uid), 0);
  });

  test(`${mode}: the same request raced to A and B: exactly one code 0`, async () => {
    const [a, b] = pairs[mode];
    for (let i = 0; i < 10; i++) {
      const { query, uid } = signedQuery();
      const replies = await Promise.all([send(a, query), send(b, query)]);
      const codes = replies.map((x) => x.json.code).sort((x, y) => x - y);
      assert.deepEqual(codes, [0, 4500], `round ${i}: ${replies.map((x) => x.r.body).join(' | ')}`);
      assert.equal(await upstreamCalls(uid), 1, `round ${i}: one upstream call`);
    }
  });
}

test('limits: a forwarded request costs one limit EVALSHA; the claim is one SET inside it', async (t) => {
  const [a] = pairs.limits;
  // a token request (no Nonce) and a signed one, each through the same two buckets (a GET and a
  // SET each inside the script); one audit record each (a plain XADD)
  const token = await measure(1, async () => {
    const r = await gwCall(a, { app: APPS.token, timeoutMs: 8000 });
    assert.equal(assertApiReply(r).code, 0, r.body);
  });
  const signed = await measure(1, async () => {
    const { r, json } = await send(a, signedQuery().query);
    assert.equal(json.code, 0, r.body);
  });
  t.diagnostic(`token: EVALSHA ${token('evalsha')} SET ${token('set')}; signed: EVALSHA ${signed('evalsha')} SET ${signed('set')}`);
  assert.equal(token('evalsha'), 1, 'token: the limit EVALSHA');
  assert.equal(signed('evalsha'), 1, 'signed: the same one EVALSHA, no other round trip');
  assert.equal(token('set'), 2, 'token: the two bucket SETs inside the script');
  assert.equal(signed('set'), 3, 'signed: one SET more, the Nonce claim inside the limit script');
  assert.equal(signed('get'), token('get'), 'the same bucket reads');
});

test('no limits: a signed request costs one SET NX for its Nonce, no limit EVALSHA', async (t) => {
  const [a] = pairs['no limits'];
  const signed = await measure(1, async () => {
    const { r, json } = await send(a, signedQuery().query);
    assert.equal(json.code, 0, r.body);
  });
  const token = await measure(1, async () => {
    const r = await gwCall(a, { app: APPS.token, timeoutMs: 8000 });
    assert.equal(assertApiReply(r).code, 0, r.body);
  });
  t.diagnostic(`signed: EVALSHA ${signed('evalsha')} SET ${signed('set')}; token: EVALSHA ${token('evalsha')} SET ${token('set')}`);
  assert.equal(signed('evalsha'), 0, 'no limit script without rules');
  assert.equal(token('evalsha'), 0);
  assert.equal(signed('set'), 1, 'the lone SET NX of the Nonce');
  assert.equal(token('set'), 0, 'a token request has no Nonce to claim');
});
