/* test_upaddr.c: the upstream's address list: rotation, holds after connect failures, the
 * choice when every address is held or tried, and a new lookup's answer keeping what is known. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "upaddr.h"

static void set(struct upaddr_list *l, const char *a, const char *b, const char *c) {
    const char *t[3] = {a, b, c};
    unsigned n = c ? 3 : b ? 2 : 1;
    upaddr_set(l, t, n);
}

static const char *pick(struct upaddr_list *l, uint64_t now, uint32_t tried) {
    int i = upaddr_pick(l, now, tried);
    return i < 0 ? NULL : l->a[i].text;
}

static void test_rotates_over_the_addresses(void **state) {
    struct upaddr_list l = {0};

    set(&l, "127.0.0.1", "::1", "10.0.0.1");
    assert_int_equal(l.n, 3);
    assert_string_equal(pick(&l, 0, 0), "127.0.0.1");
    assert_string_equal(pick(&l, 0, 0), "::1");
    assert_string_equal(pick(&l, 0, 0), "10.0.0.1");
    assert_string_equal(pick(&l, 0, 0), "127.0.0.1");
}

static void test_empty_list_has_nothing(void **state) {
    struct upaddr_list l = {0};

    assert_int_equal(upaddr_pick(&l, 0, 0), -1);
    assert_int_equal(upaddr_failed(&l, "127.0.0.1", 0), 0);
    assert_int_equal(upaddr_ok(&l, "127.0.0.1"), 0);
}

static void test_failed_address_is_skipped_until_its_hold_ends(void **state) {
    struct upaddr_list l = {0};

    set(&l, "::1", "127.0.0.1", NULL);
    assert_string_equal(pick(&l, 1000, 0), "::1");
    assert_int_equal(upaddr_failed(&l, "::1", 1000), UPADDR_HOLD_MIN_MS);
    for (int i = 0; i < 4; i++) assert_string_equal(pick(&l, 1500, 0), "127.0.0.1");
    /* the hold is over: ::1 gets its turn again */
    assert_string_equal(pick(&l, 1000 + UPADDR_HOLD_MIN_MS, 0), "::1");
}

static void test_tried_addresses_are_not_dialled_again(void **state) {
    struct upaddr_list l = {0};
    uint32_t tried = 0;
    int i;

    set(&l, "a1", "a2", "a3");
    for (int k = 0; k < 3; k++) {
        i = upaddr_pick(&l, 0, tried);
        assert_true(i >= 0);
        assert_false(tried & (1u << i));
        tried |= 1u << i;
    }
    assert_int_equal(upaddr_pick(&l, 0, tried), -1);
}

static void test_all_held_picks_the_one_that_recovers_first(void **state) {
    struct upaddr_list l = {0};

    set(&l, "a1", "a2", NULL);
    upaddr_failed(&l, "a1", 0);     /* held until 2000 */
    upaddr_failed(&l, "a2", 0);     /* held until 2000 */
    upaddr_failed(&l, "a2", 2500);  /* second failure in a row: held until 2500 + 4000 */
    upaddr_failed(&l, "a1", 10000); /* second failure: until 14000 */
    /* at 11000 both are held: a2's hold (6500) has ended, so it is simply up */
    assert_string_equal(pick(&l, 11000, 0), "a2");
    upaddr_failed(&l, "a2", 11000);                /* third: until 19000 */
    assert_string_equal(pick(&l, 12000, 0), "a1"); /* held until 14000, the sooner */
    /* and never one already tried by the attempt */
    assert_int_equal(upaddr_pick(&l, 12000, 1u << 0), 1);
}

static void test_hold_doubles_and_is_capped(void **state) {
    assert_int_equal(upaddr_hold_ms(1), UPADDR_HOLD_MIN_MS);
    assert_int_equal(upaddr_hold_ms(2), 2 * UPADDR_HOLD_MIN_MS);
    assert_int_equal(upaddr_hold_ms(3), 4 * UPADDR_HOLD_MIN_MS);
    assert_int_equal(upaddr_hold_ms(30), UPADDR_HOLD_MAX_MS);
    assert_int_equal(upaddr_hold_ms(1000), UPADDR_HOLD_MAX_MS);
}

static void test_concurrent_failures_count_once(void **state) {
    struct upaddr_list l = {0};

    set(&l, "a1", "a2", NULL);
    /* four connections dialling a1 together fail together: one failure, one hold */
    for (int i = 0; i < 4; i++) upaddr_failed(&l, "a1", 100 + (uint64_t)i);
    assert_int_equal(l.a[0].fails, 1);
    assert_int_equal(l.a[0].connect_failures, 4);
    assert_int_equal(l.a[0].held_until_ms, 100 + UPADDR_HOLD_MIN_MS);
}

static void test_success_clears_the_failures(void **state) {
    struct upaddr_list l = {0};

    set(&l, "a1", "a2", NULL);
    upaddr_failed(&l, "a1", 0);
    upaddr_failed(&l, "a1", 5000);
    assert_int_equal(l.a[0].fails, 2);
    assert_int_equal(upaddr_ok(&l, "a1"), 1); /* recovered */
    assert_int_equal(l.a[0].fails, 0);
    assert_int_equal(l.a[0].held_until_ms, 0);
    assert_int_equal(upaddr_ok(&l, "a1"), 0); /* nothing to recover from */
    /* the next failure starts the doubling again */
    assert_int_equal(upaddr_failed(&l, "a1", 9000), UPADDR_HOLD_MIN_MS);
}

static void test_new_answer_keeps_the_state_of_addresses_that_stay(void **state) {
    struct upaddr_list l = {0};

    set(&l, "a1", "a2", NULL);
    upaddr_failed(&l, "a2", 0);
    {
        const char *same[2] = {"a2", "a1"};
        assert_int_equal(upaddr_set(&l, same, 2), 0); /* the same set, another order */
    }
    set(&l, "a2", "a3", NULL);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.a[0].text, "a2");
    assert_int_equal(l.a[0].fails, 1); /* kept */
    assert_int_equal(l.a[1].fails, 0); /* new */
    assert_int_equal(upaddr_find(&l, "a1"), -1);
    /* a failure reported for an address no longer known is ignored */
    assert_int_equal(upaddr_failed(&l, "a1", 0), 0);
}

static void test_set_drops_duplicates_and_bad_texts(void **state) {
    struct upaddr_list l = {0};
    char many[UPADDR_MAX + 4][8];
    const char *t[UPADDR_MAX + 4];
    char longer[UPADDR_TEXT + 1];

    memset(longer, '1', sizeof(longer) - 1);
    longer[sizeof(longer) - 1] = '\0';
    {
        const char *dup[4] = {"a1", "a1", "", longer};
        assert_int_equal(upaddr_set(&l, dup, 4), 1);
        assert_int_equal(l.n, 1);
    }
    for (unsigned i = 0; i < UPADDR_MAX + 4; i++) {
        many[i][0] = 'b';
        many[i][1] = (char)('a' + i);
        many[i][2] = '\0';
        t[i] = many[i];
    }
    upaddr_set(&l, t, UPADDR_MAX + 4);
    assert_int_equal(l.n, UPADDR_MAX);
    assert_string_equal(l.a[UPADDR_MAX - 1].text, many[UPADDR_MAX - 1]);
    /* the rotation cursor stays inside a list that shrank */
    l.next = UPADDR_MAX - 1;
    set(&l, "c1", NULL, NULL);
    assert_string_equal(pick(&l, 0, 0), "c1");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rotates_over_the_addresses),
        cmocka_unit_test(test_empty_list_has_nothing),
        cmocka_unit_test(test_failed_address_is_skipped_until_its_hold_ends),
        cmocka_unit_test(test_tried_addresses_are_not_dialled_again),
        cmocka_unit_test(test_all_held_picks_the_one_that_recovers_first),
        cmocka_unit_test(test_hold_doubles_and_is_capped),
        cmocka_unit_test(test_concurrent_failures_count_once),
        cmocka_unit_test(test_success_clears_the_failures),
        cmocka_unit_test(test_new_answer_keeps_the_state_of_addresses_that_stay),
        cmocka_unit_test(test_set_drops_duplicates_and_bad_texts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
