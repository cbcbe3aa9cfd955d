/* test_log.c: the rate-limited warnings of log.c, with stderr captured in a temporary file: the
 * first occurrence and each change of text are logged, repeats become one summary per interval,
 * digit runs do not make a new warning, log_limited_ok ends an episode once and only after the
 * quiet time, and threads hammering one limiter write one line. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "capgate/log.h"

/* ---- stderr capture ---- */

struct capture {
    FILE *file;
    int saved;
};

static void capture_start(struct capture *c) {
    fflush(stderr);
    c->file = tmpfile();
    assert_non_null(c->file);
    c->saved = dup(STDERR_FILENO);
    assert_true(c->saved >= 0);
    assert_true(dup2(fileno(c->file), STDERR_FILENO) >= 0);
}

/* Everything written since capture_start (or the last take), as a NUL-terminated heap string. */
static char *capture_take(struct capture *c) {
    long end = lseek(fileno(c->file), 0, SEEK_CUR);
    assert_true(end >= 0);
    char *s = calloc(1, (size_t)end + 1);
    assert_non_null(s);
    assert_int_equal(pread(fileno(c->file), s, (size_t)end, 0), end);
    assert_int_equal(ftruncate(fileno(c->file), 0), 0);
    assert_int_equal(lseek(fileno(c->file), 0, SEEK_SET), 0);
    return s;
}

static void capture_stop(struct capture *c) {
    dup2(c->saved, STDERR_FILENO);
    close(c->saved);
    fclose(c->file);
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static int say(struct log_limiter *l, uint64_t now_us, int ok, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int say(struct log_limiter *l, uint64_t now_us, int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int r = log_limited_v(l, now_us, ok, ok ? LOG_LEVEL_INFO : LOG_LEVEL_WARN, fmt, ap);
    va_end(ap);
    return r;
}

#define S(x) ((uint64_t)(x)*1000000u)

/* ---- tests ---- */

static void test_repeats_become_summaries(void **state) {
    struct capture cap;
    struct log_limiter l;
    log_init("test", LOG_LEVEL_DEBUG);
    log_limiter_init(&l, 60, 1000);
    capture_start(&cap);
    uint64_t t0 = S(1000);
    assert_int_equal(say(&l, t0, 0, "redis: connection refused; retrying in %d ms", 212), 1);
    /* A flush a second for 59 s: counted, not logged; the retry delay's digits do not count. */
    for (int i = 1; i < 60; i++)
        assert_int_equal(
            say(&l, t0 + S(i) - 1, 0, "redis: connection refused; retrying in %d ms", 100 + i), 0);
    assert_int_equal(say(&l, t0 + S(60), 0, "redis: connection refused; retrying in 1 ms"), 1);
    char *out = capture_take(&cap);
    assert_int_equal(count_lines(out), 2);
    assert_non_null(strstr(out, " WARN redis: connection refused; retrying in 212 ms\n"));
    assert_non_null(strstr(out, "retrying in 1 ms (repeated 60 times in the last 60 s)\n"));
    free(out);

    /* A different warning is a change of state: logged at once, with the count it ends. */
    for (int i = 1; i <= 5; i++) say(&l, t0 + S(60 + i), 0, "redis: connection refused");
    assert_int_equal(say(&l, t0 + S(66), 0, "redis: NOAUTH Authentication required"), 1);
    out = capture_take(&cap);
    assert_int_equal(count_lines(out), 2);
    assert_non_null(strstr(out, "redis: connection refused\n"));
    assert_non_null(strstr(out, "NOAUTH Authentication required (the previous warning repeated "
                                "4 more times)\n"));
    free(out);
    capture_stop(&cap);
    log_limiter_destroy(&l);
}

static void test_ok_ends_the_episode_once(void **state) {
    struct capture cap;
    struct log_limiter l;
    log_init("test", LOG_LEVEL_DEBUG);
    log_limiter_init(&l, 60, 1000);
    capture_start(&cap);
    /* Nothing to end yet. */
    assert_int_equal(say(&l, S(10), 1, "accepting again"), 0);
    for (int i = 0; i < 1000; i++) say(&l, S(10) + (uint64_t)i * 1000, 0, "accept failed: EMFILE");
    uint64_t last = S(10) + 999 * 1000;
    /* A success half a second after a failure is no recovery: the episode goes on. */
    assert_int_equal(say(&l, last + 500000, 1, "accepting again"), 0);
    assert_int_equal(say(&l, last + 1000000, 1, "accepting again"), 1);
    assert_int_equal(say(&l, last + 2000000, 1, "accepting again"), 0);
    char *out = capture_take(&cap);
    assert_int_equal(count_lines(out), 2);
    assert_non_null(strstr(out, " WARN accept failed: EMFILE\n"));
    assert_non_null(strstr(out, " INFO accepting again (the warning occurred 1000 times over "
                                "0 s)\n"));
    free(out);
    /* The next failure starts a new episode, logged. */
    assert_int_equal(say(&l, last + S(5), 0, "accept failed: EMFILE"), 1);
    out = capture_take(&cap);
    assert_int_equal(count_lines(out), 1);
    free(out);
    capture_stop(&cap);
    log_limiter_destroy(&l);
}

static void test_below_the_level_still_counts(void **state) {
    struct capture cap;
    struct log_limiter l = LOG_LIMITER_INIT(60, 0);
    log_init("test", LOG_LEVEL_ERROR);
    capture_start(&cap);
    assert_int_equal(say(&l, S(1), 0, "warned"), 1);
    assert_int_equal(say(&l, S(2), 0, "warned"), 0);
    char *out = capture_take(&cap);
    assert_string_equal(out, "");
    free(out);
    capture_stop(&cap);
    log_init("test", LOG_LEVEL_INFO);
}

static struct log_limiter shared = LOG_LIMITER_INIT(3600, 0);

/* Threads read the clock before the limiter's lock, so a call can carry a time older than the
 * last one recorded: that is no time passed, not 584,000 years. */
static void test_time_from_before_the_last_line(void **state) {
    struct log_limiter l;
    struct capture cap;
    log_init("test", LOG_LEVEL_INFO);
    log_limiter_init(&l, 60, 0);
    capture_start(&cap);
    say(&l, S(100), 0, "accept failed: %s", "Too many open files");
    say(&l, S(100) - 5, 0, "accept failed: %s", "Too many open files");
    say(&l, S(100) - 1, 1, "accepting again");
    char *out = capture_take(&cap);
    assert_int_equal(count_lines(out), 2);
    assert_non_null(strstr(out, "accepting again (the warning occurred 2 times over 0 s)"));
    free(out);
    capture_stop(&cap);
    log_limiter_destroy(&l);
}

static void *hammer(void *arg) {
    for (int i = 0; i < 20000; i++)
        log_limited(&shared, LOG_LEVEL_WARN, "metrics: flush failed, %d keys kept: timeout", i);
    return arg;
}

static void test_threads_share_one_limiter(void **state) {
    struct capture cap;
    pthread_t th[4];
    log_init("test", LOG_LEVEL_INFO);
    capture_start(&cap);
    for (int i = 0; i < 4; i++) assert_int_equal(pthread_create(&th[i], NULL, hammer, NULL), 0);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    log_limited_ok(&shared, LOG_LEVEL_INFO, "metrics: flushing again");
    char *out = capture_take(&cap);
    assert_int_equal(count_lines(out), 2);
    assert_non_null(strstr(out, "metrics: flushing again (the warning occurred 80000 times"));
    free(out);
    capture_stop(&cap);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_repeats_become_summaries),
        cmocka_unit_test(test_ok_ends_the_episode_once),
        cmocka_unit_test(test_below_the_level_still_counts),
        cmocka_unit_test(test_time_from_before_the_last_line),
        cmocka_unit_test(test_threads_share_one_limiter),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
