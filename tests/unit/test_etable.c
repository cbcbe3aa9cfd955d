/* test_etable.c: the expiring table: put/find/remove, replacement, expiry in insertion order,
 * eviction of the oldest at the cap, growth past the initial buckets, owned values freed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "etable.h"

static int freed;
static void count_free(void *v) {
    freed++;
    free(v);
}

static void put_int(struct etable *t, const char *key, int v, uint64_t expire) {
    int *p = malloc(sizeof(*p));
    *p = v;
    assert_int_equal(etable_put(t, key, strlen(key), p, expire), 0);
}

static int get_int(struct etable *t, const char *key) {
    void *v = NULL;
    if (!etable_find(t, key, strlen(key), &v)) return -1;
    return *(int *)v;
}

static void test_put_find_replace_remove(void **state) {
    freed = 0;
    struct etable *t = etable_new(10, count_free);
    put_int(t, "a", 1, 100);
    put_int(t, "b", 2, 100);
    assert_int_equal(get_int(t, "a"), 1);
    assert_int_equal(get_int(t, "c"), -1);
    put_int(t, "a", 3, 100);
    assert_int_equal(get_int(t, "a"), 3);
    assert_int_equal(freed, 1);
    assert_int_equal(etable_count(t), 2);
    assert_int_equal(etable_remove(t, "b", 1), 1);
    assert_int_equal(etable_remove(t, "b", 1), 0);
    assert_int_equal(etable_count(t), 1);
    etable_free(t);
    assert_int_equal(freed, 3);
    etable_free(NULL);
}

static void test_expire_oldest_first(void **state) {
    struct etable *t = etable_new(10, free);
    put_int(t, "a", 1, 100);
    put_int(t, "b", 2, 200);
    put_int(t, "c", 3, 300);
    assert_int_equal(etable_expire(t, 99), 0);
    assert_int_equal(etable_expire(t, 200), 2);
    assert_int_equal(get_int(t, "a"), -1);
    assert_int_equal(get_int(t, "b"), -1);
    assert_int_equal(get_int(t, "c"), 3);
    etable_clear(t);
    assert_int_equal(etable_count(t), 0);
    etable_free(t);
}

static void test_cap_evicts_oldest(void **state) {
    struct etable *t = etable_new(3, NULL);
    static int dummy;
    const char *keys[] = {"k1", "k2", "k3", "k4"};
    for (int i = 0; i < 4; i++) assert_int_equal(etable_put(t, keys[i], 2, &dummy, 1000), 0);
    assert_int_equal(etable_count(t), 3);
    assert_int_equal(etable_evicted(t), 1);
    assert_int_equal(etable_find(t, "k1", 2, NULL), 0);
    assert_int_equal(etable_find(t, "k4", 2, NULL), 1);
    etable_free(t);
}

static void test_many_keys(void **state) {
    struct etable *t = etable_new(100000, free);
    char key[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof(key), "key-%d", i);
        put_int(t, key, i, (uint64_t)i);
    }
    for (int i = 0; i < 5000; i += 97) {
        snprintf(key, sizeof(key), "key-%d", i);
        assert_int_equal(get_int(t, key), i);
    }
    assert_int_equal(etable_expire(t, 2499), 2500);
    snprintf(key, sizeof(key), "key-%d", 2499);
    assert_int_equal(get_int(t, key), -1);
    snprintf(key, sizeof(key), "key-%d", 2500);
    assert_int_equal(get_int(t, key), 2500);
    etable_free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_find_replace_remove),
        cmocka_unit_test(test_expire_oldest_first),
        cmocka_unit_test(test_cap_evicts_oldest),
        cmocka_unit_test(test_many_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
