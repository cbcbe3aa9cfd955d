/* test_nonce.c: the shared replay cache: first use, replay, expiry, per-SecretId keys, the memory
 * bound, and many threads racing on the same and on distinct nonces. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <cmocka.h>

#include "nonce.h"

static void test_first_use_then_replay(void **state) {
    struct nonce_cache *c = nonce_cache_new(1000, 8);
    assert_non_null(c);
    assert_int_equal(nonce_cache_seen(c, "AKIDa", 42, 100), 0);
    assert_int_equal(nonce_cache_insert(c, "AKIDa", 42, 100, 600), 0);
    assert_int_equal(nonce_cache_seen(c, "AKIDa", 42, 101), 1);
    assert_int_equal(nonce_cache_insert(c, "AKIDa", 42, 101, 600), 1);
    /* the same Nonce from another SecretId is a different key */
    assert_int_equal(nonce_cache_seen(c, "AKIDb", 42, 101), 0);
    assert_int_equal(nonce_cache_insert(c, "AKIDb", 42, 101, 600), 0);
    /* 64-bit nonces */
    assert_int_equal(nonce_cache_insert(c, "AKIDa", UINT64_MAX, 101, 600), 0);
    assert_int_equal(nonce_cache_seen(c, "AKIDa", UINT64_MAX, 102), 1);
    assert_int_equal(nonce_cache_seen(c, "AKIDa", UINT64_MAX - 1, 102), 0);
    assert_int_equal(nonce_cache_count(c), 3);
    nonce_cache_free(c);
}

static void test_expiry(void **state) {
    struct nonce_cache *c = nonce_cache_new(1000, 4);
    assert_int_equal(nonce_cache_insert(c, "AKIDa", 1, 100, 10), 0);
    assert_int_equal(nonce_cache_seen(c, "AKIDa", 1, 109), 1);
    assert_int_equal(nonce_cache_seen(c, "AKIDa", 1, 110), 0);
    /* an expired entry may be used again, and lives for a new ttl */
    assert_int_equal(nonce_cache_insert(c, "AKIDa", 1, 110, 10), 0);
    assert_int_equal(nonce_cache_seen(c, "AKIDa", 1, 119), 1);
    nonce_cache_free(c);
}

static void test_prunes_incrementally(void **state) {
    struct nonce_cache *c = nonce_cache_new(100000, 1);
    for (uint64_t i = 0; i < 1000; i++) assert_int_equal(nonce_cache_insert(c, "AKID", i, 0, 5), 0);
    assert_int_equal(nonce_cache_count(c), 1000);
    /* once expired, every insert removes a few old entries from the head */
    for (uint64_t i = 0; i < 400; i++)
        assert_int_equal(nonce_cache_insert(c, "AKID", 10000 + i, 10, 5), 0);
    assert_true(nonce_cache_count(c) < 1000);
    assert_int_equal(nonce_cache_evictions(c), 0);
    nonce_cache_free(c);
}

static void test_bounded(void **state) {
    struct nonce_cache *c = nonce_cache_new(64, 4);
    for (uint64_t i = 0; i < 10000; i++) assert_int_equal(nonce_cache_insert(c, "AKID", i, 0, 600), 0);
    assert_true(nonce_cache_count(c) <= 64);
    assert_true(nonce_cache_evictions(c) >= 10000 - 64);
    /* the newest entries are the ones kept */
    assert_int_equal(nonce_cache_seen(c, "AKID", 9999, 1), 1);
    nonce_cache_free(c);
}

static void test_long_secret_id(void **state) {
    char id[NONCE_MAX_SECRET_ID + 2];
    for (size_t i = 0; i < sizeof(id) - 1; i++) id[i] = 'x';
    id[sizeof(id) - 1] = '\0';
    struct nonce_cache *c = nonce_cache_new(16, 2);
    assert_int_equal(nonce_cache_insert(c, id, 1, 0, 10), -1);
    assert_int_equal(nonce_cache_seen(c, id, 1, 0), 0);
    nonce_cache_free(c);
}

#define RACE_THREADS 8
#define RACE_NONCES 2000

struct race {
    struct nonce_cache *c;
    atomic_int winners[RACE_NONCES];
    atomic_int distinct_ok;
    int id;
};

struct race_arg {
    struct race *r;
    int id;
};

static void *race_thread(void *p) {
    struct race_arg *a = p;
    char own[32];
    snprintf(own, sizeof(own), "AKIDthread%d", a->id);
    for (uint64_t n = 0; n < RACE_NONCES; n++) {
        /* every thread tries the same shared nonce: exactly one may win it */
        int rc = nonce_cache_insert(a->r->c, "AKIDshared", n, 1, 600);
        if (rc == 0) atomic_fetch_add(&a->r->winners[n], 1);
        /* and its own, which must always be first use */
        if (nonce_cache_insert(a->r->c, own, n, 1, 600) == 0) atomic_fetch_add(&a->r->distinct_ok, 1);
        (void)nonce_cache_seen(a->r->c, own, n, 2);
    }
    return NULL;
}

static void test_threads_race(void **state) {
    static struct race r;
    pthread_t t[RACE_THREADS];
    struct race_arg args[RACE_THREADS];
    r.c = nonce_cache_new(1 << 20, 64);
    assert_non_null(r.c);
    for (int i = 0; i < RACE_NONCES; i++) atomic_init(&r.winners[i], 0);
    atomic_init(&r.distinct_ok, 0);
    for (int i = 0; i < RACE_THREADS; i++) {
        args[i].r = &r;
        args[i].id = i;
        assert_int_equal(pthread_create(&t[i], NULL, race_thread, &args[i]), 0);
    }
    for (int i = 0; i < RACE_THREADS; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < RACE_NONCES; i++) assert_int_equal(atomic_load(&r.winners[i]), 1);
    assert_int_equal(atomic_load(&r.distinct_ok), RACE_THREADS * RACE_NONCES);
    assert_int_equal(nonce_cache_count(r.c), (size_t)(RACE_THREADS + 1) * RACE_NONCES);
    nonce_cache_free(r.c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_first_use_then_replay),
        cmocka_unit_test(test_expiry),
        cmocka_unit_test(test_prunes_incrementally),
        cmocka_unit_test(test_bounded),
        cmocka_unit_test(test_long_secret_id),
        cmocka_unit_test(test_threads_race),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
