// mock_badinput.test.mjs: capgate-mock answers malformed, oversized, slow and invalid requests
// in the API's JSON shape with a message naming the problem, and keeps serving afterwards.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMock, v2Call, SEED_PARAMS, MOCK_SECRET_ID, MOCK_SECRET_KEY } from './lib/harness.mjs';
import { runBadInputCases, v2Signer } from './lib/badinput.mjs';

let mock;
before(async () => {
  // A short body timeout so the half-sent body case is answered quickly.
  mock = await startMock({ args: ['--body-timeout-ms', '500', '--header-timeout-ms', '2000'] });
});
after(async () => {
  await mock?.stop();
});

test('bad input gets a JSON error naming the problem, and the mock keeps serving', async (t) => {
  await runBadInputCases(t, {
    port: mock.port,
    signed: v2Signer({ host: `127.0.0.1:${mock.port}`, secretId: MOCK_SECRET_ID, secretKey: MOCK_SECRET_KEY }),
    alive: async () => {
      const r = await v2Call(`${mock.url}/v2/index.php`, { params: SEED_PARAMS });
      assert.equal(r.json?.code, 0, `valid request after bad input: ${r.body}`);
    },
  });
});

test('the mock process is still running after the bad input', () => {
  assert.equal(mock.proc.child.exitCode, null, `exited; stderr:\n${mock.proc.stderr}`);
});
