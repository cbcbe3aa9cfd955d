/* test_prometheus.c: per-worker counters summed over workers, and the Prometheus text they render. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "capgate/strbuf.h"
#include "config.h"
#include "prometheus.h"

static char *render(struct stats_worker **w, size_t n, const struct stats_process *p) {
    struct strbuf b;
    strbuf_init(&b);
    assert_int_equal(stats_render(&b, w, n, p), 0);
    return strbuf_detach(&b);
}

static void test_counts_summed_and_sorted(void **state) {
    struct stats_worker *w[2] = {stats_worker_new(0), stats_worker_new(1)};
    struct stats_process p = {.reloads_ok = 2, .reloads_failed = 1};
    stats_count_request(w[0], "shop-web", "CaptchaIframeQuery", "forwarded");
    stats_count_request(w[0], "shop-web", "CaptchaIframeQuery", "forwarded");
    stats_count_request(w[1], "shop-web", "CaptchaIframeQuery", "forwarded");
    stats_count_request(w[1], "-", "unknown", "unauthorized");
    stats_count_request(w[0], "batch", "CaptchaCheck", "denied");
    assert_int_equal(stats_requests(w[0], "shop-web", "CaptchaIframeQuery", "forwarded"), 2);
    assert_int_equal(stats_requests(w[1], "shop-web", "CaptchaCheck", "forwarded"), 0);
    stats_inflight_add(w[0], 3);
    stats_inflight_add(w[0], -1);
    stats_inflight_add(w[1], 1);
    stats_set_connections(w[0], 4);
    stats_set_connections(w[1], 5);

    char *text = render(w, 2, &p);
    const char *expect_requests =
        "# HELP capgate_requests_total Front requests by app, Action and decision.\n"
        "# TYPE capgate_requests_total counter\n"
        "capgate_requests_total{app=\"-\",action=\"unknown\",decision=\"unauthorized\"} 1\n"
        "capgate_requests_total{app=\"batch\",action=\"CaptchaCheck\",decision=\"denied\"} 1\n"
        "capgate_requests_total{app=\"shop-web\",action=\"CaptchaIframeQuery\",decision="
        "\"forwarded\"} 3\n";
    assert_memory_equal(text, expect_requests, strlen(expect_requests));
    assert_non_null(strstr(text, "\ncapgate_open_connections 9\n"));
    assert_non_null(strstr(text, "\ncapgate_inflight_requests 3\n"));
    assert_non_null(strstr(text, "capgate_config_reloads_total{result=\"success\"} 2\n"));
    assert_non_null(strstr(text, "capgate_config_reloads_total{result=\"failure\"} 1\n"));
    assert_non_null(strstr(text, "# TYPE capgate_config_reloads_total counter\n"));
    /* every line is a comment or "name{labels} value" */
    for (char *line = text; *line;) {
        char *nl = strchr(line, '\n');
        assert_non_null(nl);
        assert_true(line[0] == '#' || (strchr(line, ' ') && strchr(line, ' ') < nl));
        line = nl + 1;
    }
    free(text);
    stats_worker_free(w[0]);
    stats_worker_free(w[1]);
}

static void test_histogram_and_breaker(void **state) {
    struct stats_worker *w[2] = {stats_worker_new(0), stats_worker_new(1)};
    struct stats_process p = {0};
    struct upstream_stats a = {0}, b = {0};
    a.latency_buckets[0] = 1; /* <= 1 ms */
    a.latency_buckets[3] = 2; /* <= 10 ms */
    a.latency_sum_us = 12500;
    a.breaker = BREAKER_OPEN;
    a.open_connections = 2;
    b.latency_buckets[3] = 1;
    b.latency_buckets[UPSTREAM_LATENCY_BUCKETS - 1] = 1; /* +Inf */
    b.latency_sum_us = 7500000;
    b.breaker = BREAKER_HALF_OPEN;
    stats_set_upstream(w[0], &a);
    stats_set_upstream(w[1], &b);
    stats_set_upstream3_breaker(w[1], BREAKER_OPEN);

    char *text = render(w, 2, &p);
    assert_non_null(strstr(text, "# TYPE capgate_upstream_request_duration_seconds histogram\n"));
    assert_non_null(
        strstr(text, "capgate_upstream_request_duration_seconds_bucket{le=\"0.001\"} 1\n"));
    assert_non_null(
        strstr(text, "capgate_upstream_request_duration_seconds_bucket{le=\"0.0025\"} 1\n"));
    assert_non_null(
        strstr(text, "capgate_upstream_request_duration_seconds_bucket{le=\"0.01\"} 4\n"));
    assert_non_null(strstr(text, "capgate_upstream_request_duration_seconds_bucket{le=\"5\"} 4\n"));
    assert_non_null(
        strstr(text, "capgate_upstream_request_duration_seconds_bucket{le=\"+Inf\"} 5\n"));
    assert_non_null(strstr(text, "capgate_upstream_request_duration_seconds_sum 7.512500\n"));
    assert_non_null(strstr(text, "capgate_upstream_request_duration_seconds_count 5\n"));
    assert_non_null(strstr(text, "capgate_upstream_breaker_state{worker=\"0\",api=\"v2\"} 1\n"));
    assert_non_null(strstr(text, "capgate_upstream_breaker_state{worker=\"1\",api=\"v2\"} 2\n"));
    assert_non_null(strstr(text, "capgate_upstream_breaker_state{worker=\"0\",api=\"v3\"} 0\n"));
    assert_non_null(strstr(text, "capgate_upstream_breaker_state{worker=\"1\",api=\"v3\"} 1\n"));
    assert_non_null(strstr(text, "capgate_upstream_open_connections 2\n"));
    /* no requests yet: the family is declared with no series */
    assert_non_null(strstr(text, "# TYPE capgate_requests_total counter\n# HELP capgate_upstream"));
    free(text);
    stats_worker_free(w[0]);
    stats_worker_free(w[1]);
}

static void test_label_escaping_and_overflow(void **state) {
    struct stats_worker *w[1] = {stats_worker_new(0)};
    struct stats_process p = {0};
    char name[32];
    stats_count_request(w[0], "a\"b\\c\nd", "CaptchaCheck", "forwarded");
    for (int i = 0; i < STATS_MAX_SERIES + 100; i++) {
        snprintf(name, sizeof(name), "app%d", i);
        stats_count_request(w[0], name, "CaptchaCheck", "forwarded");
    }
    char *text = render(w, 1, &p);
    assert_non_null(strstr(text, "{app=\"a\\\"b\\\\c\\nd\",action=\"CaptchaCheck\""));
    /* triples beyond the table are counted under app "~" rather than lost */
    assert_non_null(strstr(
        text, "capgate_requests_total{app=\"~\",action=\"CaptchaCheck\",decision=\"forwarded\"}"));
    assert_true(stats_requests(w[0], "~", "CaptchaCheck", "forwarded") > 100);
    free(text);
    stats_worker_free(w[0]);
}

/* App and rule names as long as the config allows (64 bytes) are labels whole. */
#define NAME64 "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._"
static void test_longest_names_whole(void **state) {
    struct stats_worker *w[1] = {stats_worker_new(0)};
    struct stats_process p = {0};
    assert_int_equal(strlen(NAME64), CONFIG_NAME_MAX);
    stats_count_request(w[0], NAME64, "CaptchaCheck", "forwarded");
    stats_count_limit(w[0], NAME64, "limited");
    char *text = render(w, 1, &p);
    assert_non_null(strstr(text, "capgate_requests_total{app=\"" NAME64 "\",action="));
    assert_non_null(strstr(text, "capgate_limit_decisions_total{rule=\"" NAME64 "\",decision="));
    assert_int_equal(stats_requests(w[0], NAME64, "CaptchaCheck", "forwarded"), 1);
    free(text);
    stats_worker_free(w[0]);
}

static void test_limits_store_and_sinks(void **state) {
    struct stats_worker *w[2] = {stats_worker_new(0), stats_worker_new(1)};
    struct stats_process p = {0};

    /* Before any publish a worker's store counts as reachable; one down worker makes it down. */
    assert_int_equal(stats_store_connected(w, 2), 1);
    stats_set_store(w[0], 1, 10, 1, 1, 0);
    stats_set_store(w[1], 0, 5, 3, 0, 2);
    stats_set_store_fast_fails(w[0], 4);
    stats_set_store_fast_fails(w[1], 3);
    assert_int_equal(stats_store_connected(w, 2), 0);

    stats_count_limit(w[0], "login", "limited");
    stats_count_limit(w[1], "login", "limited");
    stats_count_limit(w[1], "login", "admitted");
    stats_count_limit(w[0], "shadowed", "shadow_limited");
    assert_int_equal(stats_limit_decisions(w[0], "login", "limited"), 1);
    assert_int_equal(stats_limit_decisions(w[0], "login", "admitted"), 0);
    /* the two tables are separate */
    assert_int_equal(stats_requests(w[0], "login", "", "limited"), 0);

    char *text = render(w, 2, &p);
    const char *expect_limits =
        "# TYPE capgate_limit_decisions_total counter\n"
        "capgate_limit_decisions_total{rule=\"login\",decision=\"admitted\"} 1\n"
        "capgate_limit_decisions_total{rule=\"login\",decision=\"limited\"} 2\n"
        "capgate_limit_decisions_total{rule=\"shadowed\",decision=\"shadow_limited\"} 1\n";
    assert_non_null(strstr(text, expect_limits));
    assert_non_null(strstr(text, "capgate_store_connected{worker=\"0\"} 1\n"
                                 "capgate_store_connected{worker=\"1\"} 0\n"));
    assert_non_null(strstr(text, "\ncapgate_store_commands_total 15\n"));
    assert_non_null(strstr(text, "\ncapgate_store_errors_total 4\n"));
    assert_non_null(strstr(text, "\ncapgate_store_reconnects_total 2\n"));
    /* one worker down (not connected, or marked down after a timeout): the process is down */
    assert_non_null(strstr(text, "\ncapgate_store_up 0\n"));
    assert_non_null(strstr(text, "\ncapgate_store_fast_failures_total 7\n"));
    /* the store serves rate limits, the pool and idempotency alike */
    assert_non_null(strstr(text, "# HELP capgate_store_connected Store (rate limits, pool, "
                                 "idempotency) reachable, per worker (1 yes, 0 no).\n"));
    assert_non_null(strstr(text, "# HELP capgate_store_commands_total Commands sent to the "
                                 "store: rate-limit checks, pool and idempotency commands.\n"));
    assert_non_null(strstr(text, "# HELP capgate_store_errors_total Store commands that failed "
                                 "(a rate-limit check is then answered per on_store_error).\n"));
    /* sinks absent: their families are left out */
    assert_null(strstr(text, "capgate_audit_queue_depth"));
    assert_null(strstr(text, "capgate_metrics_flushes_total"));
    /* no Redis store, no heartbeat: no live instance count */
    assert_null(strstr(text, "capgate_store_live_instances"));
    free(text);

    p.has_audit = 1;
    p.audit_queue_depth = 3;
    p.audit_spool_records = 4;
    p.audit_held_records = 6;
    p.audit_overflow_records = 7;
    p.audit_written = 10;
    p.audit_spooled = 5;
    p.audit_replayed = 1;
    p.audit_file_errors = 8;
    p.has_metrics = 1;
    p.metrics_flushes = 7;
    p.metrics_flush_errors = 2;
    p.has_heartbeat = 1;
    p.live_instances = 3;
    stats_count_audit_failure(w[1]);
    text = render(w, 2, &p);
    assert_non_null(strstr(text, "\ncapgate_audit_queue_depth 3\n"));
    assert_non_null(strstr(text, "\ncapgate_audit_spool_records 4\n"));
    assert_non_null(strstr(text, "\ncapgate_audit_held_records 6\n"));
    assert_non_null(strstr(text, "\ncapgate_audit_overflow_records 7\n"));
    assert_non_null(strstr(text, "capgate_audit_records_total{result=\"written\"} 10\n"
                                 "capgate_audit_records_total{result=\"spooled\"} 5\n"
                                 "capgate_audit_records_total{result=\"replayed\"} 1\n"
                                 "capgate_audit_records_total{result=\"overflowed\"} 0\n"));
    assert_non_null(strstr(text, "\ncapgate_audit_file_errors_total 8\n"));
    assert_non_null(strstr(text, "\ncapgate_audit_submit_failures_total 1\n"));
    assert_non_null(strstr(text, "\ncapgate_metrics_flushes_total 7\n"));
    assert_non_null(strstr(text, "\ncapgate_metrics_flush_errors_total 2\n"));
    assert_non_null(strstr(text, "# TYPE capgate_store_live_instances gauge\n"
                                 "capgate_store_live_instances 3\n"));
    free(text);
    stats_worker_free(w[0]);
    stats_worker_free(w[1]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counts_summed_and_sorted),
        cmocka_unit_test(test_histogram_and_breaker),
        cmocka_unit_test(test_label_escaping_and_overflow),
        cmocka_unit_test(test_limits_store_and_sinks),
        cmocka_unit_test(test_longest_names_whole),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
