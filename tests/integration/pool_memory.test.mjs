// pool_memory.test.mjs: the prefetch pool (docs/design.md "Caches") on the embedded memory store:
// hits served with urls the refiller got and no upstream call, distinct urls under concurrent load
// (two workers), no url served after ttl_s, per-user fields and inexact matches bypass the pool,
// an empty pool falls through upstream, refill spends global-limit tokens only, hits audited
// (decision pool) and counted (/metrics, /admin/stats). The suite is in lib/cache.mjs.
import { poolSuite } from './lib/cache.mjs';

poolSuite('memory');
