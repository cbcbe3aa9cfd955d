// idem_memory.test.mjs: Idempotency-Key replay (docs/design.md "Caches") on the embedded memory
// store: a repeat gets the identical body with Idempotent-Replayed: true and spends neither an
// upstream call nor a token, a concurrent duplicate waits for the first reply, different params
// under the same key are 4000, the ttl, per-app scoping, gateway errors not stored, bad header
// values. The suite is in lib/cache.mjs.
import { idemSuite } from './lib/cache.mjs';

idemSuite('memory');
