/* test_idem.c: Idempotency-Key handling: the header rule, the per-app key (SHA-256 of the value),
 * the fingerprint (public params and order ignored, business params and Action counted), and the
 * async life over the memory store: the first request owns the key, a concurrent duplicate waits
 * and gets the stored reply, or owns the key once the first abandons it, or gives up after its
 * bound; another fingerprint is a mismatch; callbacks never inside the call. At shutdown
 * idem_waits_close ends the waits between two polls once, store_free the ones with a lookup
 * pending, and nothing ends a wait twice. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <event2/event.h>

#include "capgate/clock.h"
#include "capgate/log.h"
#include "capgate/params.h"
#include "config.h"
#include "idem.h"
#include "store.h"

static void test_header(void **state) {
    char err[256], v[IDEM_HEADER_MAX + 2];
    assert_int_equal(idem_header_check("order-42 retry #1", err, sizeof err), 0);
    memset(v, 'k', sizeof v);
    v[IDEM_HEADER_MAX] = 0;
    assert_int_equal(idem_header_check(v, err, sizeof err), 0);
    v[IDEM_HEADER_MAX] = 'k';
    v[IDEM_HEADER_MAX + 1] = 0;
    assert_int_equal(idem_header_check(v, err, sizeof err), -1);
    assert_non_null(strstr(err, "Idempotency-Key"));
    assert_int_equal(idem_header_check("", err, sizeof err), -1);
    assert_int_equal(idem_header_check("a\x01"
                                       "b",
                                       err, sizeof err),
                     -1);
    assert_non_null(strstr(err, "Idempotency-Key must be printable ASCII"));
    assert_int_equal(idem_header_check("caf\xc3\xa9", err, sizeof err), -1);
}

static void test_key(void **state) {
    char key[IDEM_KEY_MAX], tiny[16];
    assert_int_equal(idem_key("capgate:", "shop-web", "abc", key, sizeof key), 0);
    assert_string_equal(key, "capgate:idem:shop-web:"
                             "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_int_equal(idem_key("capgate:", "shop-web", "abc", tiny, sizeof tiny), -1);
}

static void fp_of(const char *q, char *out) {
    struct params p;
    char err[256];
    params_init(&p);
    assert_int_equal(params_parse_urlencoded(&p, q, strlen(q), err, sizeof err), 0);
    assert_int_equal(idem_fingerprint(&p, out), 0);
    assert_int_equal(strlen(out), STORE_IDEM_FP_LEN);
    params_cleanup(&p);
}

static void test_fingerprint(void **state) {
    char a[STORE_IDEM_FP_LEN + 1], b[STORE_IDEM_FP_LEN + 1];
    fp_of(
        "Action=CaptchaIframeQuery&SecretId=A&Timestamp=1&Nonce=2&Signature=s&uid=u&captchaType=9",
        a);
    /* re-signed and reordered: the same */
    fp_of("captchaType=9&uid=u&Action=CaptchaIframeQuery&SecretId=B&Timestamp=9&Nonce=7"
          "&Signature=t&Region=gz&SignatureMethod=HmacSHA256&RequestClient=X",
          b);
    assert_string_equal(a, b);
    fp_of("Action=CaptchaIframeQuery&uid=v&captchaType=9", b);
    assert_string_not_equal(a, b);
    fp_of("Action=CaptchaQuery&uid=u&captchaType=9", b);
    assert_string_not_equal(a, b);
    /* names and values cannot run into each other */
    fp_of("Action=X&ab=c", a);
    fp_of("Action=X&a=bc", b);
    assert_string_not_equal(a, b);
}

/* ---- the async life over the memory store ---- */

struct outcome {
    int fired, returned, inside;
    char err[128];
    enum store_idem_state state;
    char body[256];
    size_t len;
    uint64_t at_us;
};

static void on_begin(const char *err, enum store_idem_state state, const char *body, size_t len,
                     void *arg) {
    struct outcome *o = arg;
    o->fired++;
    if (!o->returned) o->inside = 1;
    snprintf(o->err, sizeof o->err, "%s", err ? err : "");
    o->state = state;
    o->len = len;
    if (body) memcpy(o->body, body, len < sizeof o->body ? len : sizeof o->body - 1);
    o->at_us = clock_mono_us();
}

struct fixture {
    struct event_base *base;
    struct store_shared *sh;
    struct store *store;
    struct idem_waits waits;
};

static void fixture_init(struct fixture *f) {
    struct config cfg;
    char err[256];
    memset(&cfg, 0, sizeof cfg);
    assert_non_null(f->base = event_base_new());
    assert_non_null(f->sh = store_shared_new(&cfg, err, sizeof err));
    assert_non_null(f->store = store_new(f->sh, f->base, err, sizeof err));
    idem_waits_init(&f->waits);
}

/* The gateway's order: the waits between polls, then the store (the rest), then the loop. */
static void fixture_cleanup(struct fixture *f) {
    idem_waits_close(&f->waits);
    store_free(f->store);
    assert_null(f->waits.head);
    store_shared_free(f->sh);
    event_base_free(f->base);
}

static void begin(struct fixture *f, const char *key, const char *fp, unsigned wait_ms,
                  struct outcome *o) {
    memset(o, 0, sizeof *o);
    assert_int_equal(idem_begin(f->store, f->base, &f->waits, key, fp, 2000, wait_ms, on_begin, o),
                     0);
    o->returned = 1;
    assert_int_equal(o->fired, 0);
}

static void wait_fired(struct fixture *f, struct outcome *o) {
    uint64_t t0 = clock_mono_us();
    struct timeval tick = {0, 5000};
    while (!o->fired && clock_mono_us() - t0 < 3000000) {
        event_base_loopexit(f->base, &tick);
        event_base_dispatch(f->base);
    }
    assert_int_equal(o->fired, 1);
    assert_int_equal(o->inside, 0);
}

static void run_ms(struct fixture *f, unsigned ms) {
    struct timeval tv = {0, ms * 1000};
    event_base_loopexit(f->base, &tv);
    event_base_dispatch(f->base);
}

static void test_life(void **state) {
    struct fixture f;
    struct outcome first, dup, other;
    char fa[STORE_IDEM_FP_LEN + 1], fb[STORE_IDEM_FP_LEN + 1];
    static const char reply[] = "{\"code\":0,\"codeDesc\":\"Success\",\"url\":\"https://x/1\"}";
    uint64_t t0;
    fixture_init(&f);
    fp_of("Action=CaptchaIframeQuery&captchaType=9", fa);
    fp_of("Action=CaptchaIframeQuery&captchaType=8", fb);

    begin(&f, "k1", fa, 1000, &first);
    wait_fired(&f, &first);
    assert_string_equal(first.err, "");
    assert_int_equal(first.state, STORE_IDEM_NEW);

    /* a duplicate waits while the first works, and gets its reply once stored */
    t0 = clock_mono_us();
    begin(&f, "k1", fa, 1000, &dup);
    begin(&f, "k1", fb, 1000, &other);
    run_ms(&f, 100);
    assert_int_equal(dup.fired, 0);
    assert_int_equal(other.fired, 1);
    assert_int_equal(other.state, STORE_IDEM_MISMATCH);
    idem_finish(f.store, "k1", fa, 1, reply, sizeof reply - 1, 5000);
    wait_fired(&f, &dup);
    assert_string_equal(dup.err, "");
    assert_int_equal(dup.state, STORE_IDEM_DONE);
    assert_int_equal(dup.len, sizeof reply - 1);
    assert_memory_equal(dup.body, reply, sizeof reply - 1);
    assert_true(dup.at_us - t0 >= 100000 && dup.at_us - t0 < 400000);

    /* a reply that must not be stored: the waiting duplicate takes the key over */
    begin(&f, "k2", fa, 1000, &first);
    wait_fired(&f, &first);
    assert_int_equal(first.state, STORE_IDEM_NEW);
    begin(&f, "k2", fa, 1000, &dup);
    run_ms(&f, 60);
    assert_int_equal(dup.fired, 0);
    idem_finish(f.store, "k2", fa, 0, "{\"code\":4400}", 13, 5000);
    wait_fired(&f, &dup);
    assert_int_equal(dup.state, STORE_IDEM_NEW);

    /* the wait is bounded */
    t0 = clock_mono_us();
    begin(&f, "k2", fa, 150, &other);
    wait_fired(&f, &other);
    assert_string_equal(other.err, IDEM_IN_PROGRESS_MESSAGE);
    assert_int_equal(other.state, STORE_IDEM_PENDING);
    assert_true(other.at_us - t0 >= 150000 && other.at_us - t0 < 500000);

    /* the store going away ends a waiting begin once, with its error */
    begin(&f, "k2", fa, 1000, &other);
    store_free(f.store);
    f.store = NULL;
    assert_int_equal(other.fired, 1);
    assert_string_equal(other.err, "store closed");
    fixture_cleanup(&f);
}

/* One turn of the loop without blocking: the memory store's pending answers are delivered (a
 * wait still held off is then between polls, its timer armed for IDEM_POLL_MS). */
static void run_pending(struct fixture *f) {
    assert_int_not_equal(event_base_loop(f->base, EVLOOP_NONBLOCK), -1);
}

static void test_close_between_polls(void **state) {
    struct fixture f;
    struct outcome first, done, dup, late;
    char fa[STORE_IDEM_FP_LEN + 1];
    static const char reply[] = "{\"code\":0}";
    fixture_init(&f);
    fp_of("Action=CaptchaIframeQuery&captchaType=9", fa);

    /* a wait that ended normally, with a stored reply */
    begin(&f, "k5", fa, 1000, &first);
    wait_fired(&f, &first);
    begin(&f, "k5", fa, 1000, &done);
    run_ms(&f, 30);
    idem_finish(f.store, "k5", fa, 1, reply, sizeof reply - 1, 5000);
    wait_fired(&f, &done);
    assert_int_equal(done.state, STORE_IDEM_DONE);

    /* an owner still at work, a duplicate polling it */
    begin(&f, "k6", fa, 1000, &first);
    wait_fired(&f, &first);
    assert_int_equal(first.state, STORE_IDEM_NEW);
    begin(&f, "k6", fa, 1000, &dup);
    run_ms(&f, 50);
    run_pending(&f);
    assert_int_equal(dup.fired, 0);
    /* another duplicate with its first lookup still pending: not the registry's to end */
    begin(&f, "k6", fa, 1000, &late);

    /* the drain deadline passed: the poller ends now, once, as on a store error */
    assert_int_equal(idem_waits_close(&f.waits), 1);
    assert_int_equal(dup.fired, 1);
    assert_int_equal(dup.inside, 0);
    assert_string_equal(dup.err, STORE_CLOSED_MESSAGE);
    assert_int_equal(dup.state, STORE_IDEM_NEW);
    assert_int_equal(late.fired, 0);
    assert_int_equal(first.fired, 1);
    assert_int_equal(done.fired, 1);
    assert_non_null(f.waits.head); /* late's lookup */

    /* a second close finds nothing armed; store_free ends late and nothing else */
    assert_int_equal(idem_waits_close(&f.waits), 0);
    store_free(f.store);
    f.store = NULL;
    assert_int_equal(late.fired, 1);
    assert_string_equal(late.err, STORE_CLOSED_MESSAGE);
    assert_int_equal(dup.fired, 1);
    assert_int_equal(first.fired, 1);
    assert_int_equal(done.fired, 1);
    assert_null(f.waits.head);
    fixture_cleanup(&f);
    assert_int_equal(dup.fired, 1);
    assert_int_equal(late.fired, 1);
}

/* After the close a lookup that still answers "pending" ends the wait instead of arming its
 * timer again (the loop is about to be freed). */
static void test_close_then_pending(void **state) {
    struct fixture f;
    struct outcome first, dup;
    char fa[STORE_IDEM_FP_LEN + 1];
    fixture_init(&f);
    fp_of("Action=CaptchaIframeQuery&captchaType=9", fa);
    begin(&f, "k7", fa, 1000, &first);
    wait_fired(&f, &first);
    begin(&f, "k7", fa, 1000, &dup);
    assert_int_equal(idem_waits_close(&f.waits), 0);
    run_pending(&f);
    assert_int_equal(dup.fired, 1);
    assert_string_equal(dup.err, STORE_CLOSED_MESSAGE);
    assert_int_equal(dup.state, STORE_IDEM_NEW);
    assert_null(f.waits.head);
    run_ms(&f, 3 * IDEM_POLL_MS);
    assert_int_equal(dup.fired, 1);
    fixture_cleanup(&f);
    assert_int_equal(dup.fired, 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header),
        cmocka_unit_test(test_key),
        cmocka_unit_test(test_fingerprint),
        cmocka_unit_test(test_life),
        cmocka_unit_test(test_close_between_polls),
        cmocka_unit_test(test_close_then_pending),
    };
    log_init("test_idem", LOG_LEVEL_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
