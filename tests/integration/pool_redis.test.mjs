// pool_redis.test.mjs: the prefetch pool (docs/design.md "Caches") shared through a real
// redis-server: the same cases as pool_memory.test.mjs, and two capgate instances popping one pool
// under concurrent load never hand out a url twice. The suite is in lib/cache.mjs.
import { poolSuite } from './lib/cache.mjs';

poolSuite('redis');
