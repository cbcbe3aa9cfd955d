/* test_nonce.c: the shared replay cache: first use, replay, expiry, per-SecretId keys, the memory
 * bound, and many threads racing on the same and on distinct nonces. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
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
    for (uint64_t i = 0; i < 10000; i++)
        assert_int_equal(nonce_cache_insert(c, "AKID", i, 0, 600), 0);
    assert_true(nonce_cache_count(c) <= 64);
    assert_true(nonce_cache_evictions(c) >= 10000 - 64);
    /* the newest entries are the ones kept */
    assert_int_equal(nonce_cache_seen(c, "AKID", 9999, 1), 1);
    nonce_cache_free(c);
}

/* Evicted entries are reused for later inserts: SecretIds of every length up to the limit, mixed
 * so that a short id's entry comes back for a long one, keep their own bytes (ASan would see an
 * entry written past its room), and only the newest entries of a full cache are seen. */
static void test_reused_entries_keep_ids_apart(void **state) {
    static const size_t lens[] = {1, 39, 40, 41, 100, NONCE_MAX_SECRET_ID, 7, 36};
    const size_t n_lens = sizeof(lens) / sizeof(lens[0]);
    char ids[8][NONCE_MAX_SECRET_ID + 1];
    /* 5 entries against 8 ids taken with stride 3: the entry evicted for an insert (and reused
     * by it) always held an id of another length */
    struct nonce_cache *c = nonce_cache_new(5, 1);
    (void)state;
    assert_non_null(c);
    for (size_t k = 0; k < n_lens; k++) {
        memset(ids[k], (int)('a' + k), lens[k]);
        ids[k][lens[k]] = '\0';
    }
    for (uint64_t i = 0; i < 2000; i++) {
        const char *id = ids[(i * 3) % n_lens];
        assert_int_equal(nonce_cache_insert(c, id, i, 0, 600), 0);
        assert_int_equal(nonce_cache_seen(c, id, i, 1), 1);
        assert_true(nonce_cache_count(c) <= 5);
        if (i >= 5) {
            /* evicted: the entry is gone even though its memory lives on in a new key */
            assert_int_equal(nonce_cache_seen(c, ids[((i - 5) * 3) % n_lens], i - 5, 1), 0);
        }
        /* an id one byte shorter or longer is another key */
        assert_int_equal(nonce_cache_seen(c, id + 1, i, 1), 0);
    }
    for (uint64_t i = 1995; i < 2000; i++)
        assert_int_equal(nonce_cache_seen(c, ids[(i * 3) % n_lens], i, 1), 1);
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

/* A plain model of the cache's contract for one stripe: insertion order is expiry order, an
 * insert prunes up to 4 expired entries from the oldest end, replaces an expired entry of the
 * same key, and evicts the oldest entries while the stripe is full. */
#define MODEL_MAX 48
struct model_entry {
    const char *id;
    uint64_t nonce, expires_s;
};
struct model {
    struct model_entry e[MODEL_MAX + 1];
    size_t n;
    uint64_t evictions;
};

static void model_drop(struct model *m, size_t i) {
    for (size_t k = i + 1; k < m->n; k++) m->e[k - 1] = m->e[k];
    m->n--;
}

static size_t model_find(const struct model *m, const char *id, uint64_t nonce) {
    for (size_t i = 0; i < m->n; i++)
        if (m->e[i].nonce == nonce && strcmp(m->e[i].id, id) == 0) return i;
    return SIZE_MAX;
}

static int model_insert(struct model *m, const char *id, uint64_t nonce, uint64_t now,
                        uint64_t ttl) {
    for (int k = 0; k < 4 && m->n && m->e[0].expires_s <= now; k++) model_drop(m, 0);
    size_t i = model_find(m, id, nonce);
    if (i != SIZE_MAX) {
        if (m->e[i].expires_s > now) return 1;
        model_drop(m, i);
    }
    while (m->n >= MODEL_MAX) {
        if (m->e[0].expires_s > now) m->evictions++;
        model_drop(m, 0);
    }
    m->e[m->n++] = (struct model_entry){id, nonce, now + ttl};
    return 0;
}

/* Random inserts and checks on one stripe against the model: few keys, so the same key comes
 * back live, expired and evicted; the table wraps, grows and moves probe runs back on every
 * removal (from the oldest end, from the middle for an expired key, by eviction). */
static void test_matches_model(void **state) {
    static const char *const ids[] = {"AKIDa", "AKIDb", "AKIDaa", "",
                                      "AKIDaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};
    for (unsigned round = 0; round < 20; round++) {
        struct nonce_cache *c = nonce_cache_new(MODEL_MAX, 1);
        static struct model m;
        unsigned seed = 1000 + round;
        uint64_t now = 100;
        memset(&m, 0, sizeof m);
        assert_non_null(c);
        for (int op = 0; op < 20000; op++) {
            seed = seed * 1103515245u + 12345u;
            const char *id = ids[(seed >> 8) % 5];
            uint64_t nonce = (seed >> 12) % (round < 10 ? 40 : 400);
            if ((seed >> 24) % 8 == 0) now += (seed >> 27) % 3;
            if ((seed >> 20) % 3 == 0) {
                size_t i = model_find(&m, id, nonce);
                int want = i != SIZE_MAX && m.e[i].expires_s > now;
                assert_int_equal(nonce_cache_seen(c, id, nonce, now), want);
            } else {
                assert_int_equal(nonce_cache_insert(c, id, nonce, now, 7),
                                 model_insert(&m, id, nonce, now, 7));
            }
            if (op % 97 == 0) {
                assert_int_equal(nonce_cache_count(c), m.n);
                assert_int_equal(nonce_cache_evictions(c), m.evictions);
            }
        }
        /* everything the model holds is found, and nothing else of the key space */
        for (size_t k = 0; k < 5; k++)
            for (uint64_t n = 0; n < 400; n++) {
                size_t i = model_find(&m, ids[k], n);
                int want = i != SIZE_MAX && m.e[i].expires_s > now;
                assert_int_equal(nonce_cache_seen(c, ids[k], n, now), want);
            }
        nonce_cache_free(c);
    }
}

/* Many keys differing only in the nonce or in one byte of the SecretId, in one stripe whose
 * table grows from its smallest size: all are told apart. */
static void test_many_similar_keys(void **state) {
    struct nonce_cache *c = nonce_cache_new(100000, 1);
    char id[] = "AKIDcapgateBench00000000000000000000";
    for (uint64_t n = 0; n < 3000; n++) {
        id[4 + n % 30] = (char)('a' + n % 26);
        assert_int_equal(nonce_cache_insert(c, id, n / 7, 0, 600), 0);
        assert_int_equal(nonce_cache_insert(c, id, n / 7, 0, 600), 1);
    }
    assert_int_equal(nonce_cache_count(c), 3000);
    memcpy(id, "AKIDcapgateBench00000000000000000000", sizeof id);
    for (uint64_t n = 0; n < 3000; n++) {
        id[4 + n % 30] = (char)('a' + n % 26);
        assert_int_equal(nonce_cache_seen(c, id, n / 7, 1), 1);
        assert_int_equal(nonce_cache_seen(c, id, n / 7 + 100000, 1), 0);
    }
    /* a length is part of the key: "AKID" and "AKID\0..." style prefixes differ */
    assert_int_equal(nonce_cache_insert(c, "AKIDcapgate", 5, 0, 600), 0);
    assert_int_equal(nonce_cache_seen(c, "AKIDcapgat", 5, 1), 0);
    assert_int_equal(nonce_cache_seen(c, "AKIDcapgatee", 5, 1), 0);
    assert_int_equal(nonce_cache_seen(c, "AKIDcapgate", 5, 1), 1);
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
        if (nonce_cache_insert(a->r->c, own, n, 1, 600) == 0)
            atomic_fetch_add(&a->r->distinct_ok, 1);
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
        cmocka_unit_test(test_reused_entries_keep_ids_apart),
        cmocka_unit_test(test_matches_model),
        cmocka_unit_test(test_many_similar_keys),
        cmocka_unit_test(test_threads_race),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
