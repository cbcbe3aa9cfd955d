/* test_mockopts.c: capgate-mock's options: defaults, precedence (flags > env > config file),
 * strict config keys, '-' and '_' in keys, repeatable credentials, credentials file text,
 * errors that name the option, the default test credential. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "mockopts.h"

static const char *const *fake_env;
static const char *fake_getenv(const char *name) {
    for (const char *const *e = fake_env; e && *e; e += 2)
        if (strcmp(e[0], name) == 0) return e[1];
    return NULL;
}

static json_t *js(const char *text) {
    json_error_t e;
    json_t *v = json_loads(text, 0, &e);
    assert_non_null(v);
    return v;
}

static void test_defaults(void **state) {
    struct mock_opts o;
    char err[256];
    mockopts_init(&o);
    assert_string_equal(o.listen, "127.0.0.1:9000");
    assert_int_equal(o.timestamp_window, 300);
    assert_int_equal(o.header_timeout_ms, 10000);
    assert_int_equal(o.body_timeout_ms, 10000);
    assert_int_equal(o.max_connections, 0);
    assert_int_equal(o.quota, 0);
    assert_int_equal(o.has_seed, 0);
    assert_int_equal(mockopts_finish(&o, err, sizeof(err)), 0);
    assert_int_equal(o.default_credential, 1);
    assert_int_equal(o.ncreds, 1);
    assert_string_equal(o.creds[0].secret_id, MOCKOPTS_DEFAULT_SECRET_ID);
    assert_string_equal(o.creds[0].secret_key, MOCKOPTS_DEFAULT_SECRET_KEY);
    mockopts_cleanup(&o);
}

static void test_precedence(void **state) {
    struct mock_opts o;
    char err[256];
    mockopts_init(&o);
    json_t *cfg = js("{\"quota\": 5, \"timestamp_window\": 60, \"seed\": 9, \"https-only\": true,"
                     " \"credential\": [\"A:1\", \"B:2\"], \"faults\": [{\"code\": 6000}]}");
    assert_int_equal(mockopts_apply_json(&o, cfg, err, sizeof(err)), 0);
    json_decref(cfg);
    static const char *const env[] = {
        "CAPGATE_MOCK_QUOTA", "7", "CAPGATE_MOCK_TIMESTAMP_WINDOW", "90", "CAPGATE_MOCK_CREDENTIAL",
        "C:3, D:4",           NULL};
    fake_env = env;
    assert_int_equal(mockopts_apply_env(&o, fake_getenv, err, sizeof(err)), 0);
    char *argv[] = {"capgate-mock", "--quota=11", "--credential", "E:5", "--listen",
                    "127.0.0.1:0",  NULL};
    assert_int_equal(mockopts_apply_args(&o, 6, argv, err, sizeof(err)), 0);
    assert_int_equal(mockopts_finish(&o, err, sizeof(err)), 0);
    assert_int_equal(o.quota, 11);            /* flag beats env and config */
    assert_int_equal(o.timestamp_window, 90); /* env beats config */
    assert_int_equal(o.has_seed, 1);          /* config alone */
    assert_int_equal(o.seed, 9);
    assert_int_equal(o.https_only, 1);
    assert_int_equal(o.ncreds, 1); /* the flag's list replaces lower ones */
    assert_string_equal(o.creds[0].secret_id, "E");
    assert_string_equal(o.creds[0].secret_key, "5");
    assert_int_equal(o.default_credential, 0);
    assert_true(json_is_array(o.faults));
    assert_string_equal(o.listen, "127.0.0.1:0");
    mockopts_cleanup(&o);
}

static void test_env_credentials_replace_config(void **state) {
    struct mock_opts o;
    char err[256];
    mockopts_init(&o);
    json_t *cfg = js("{\"credential\": \"A:1\"}");
    assert_int_equal(mockopts_apply_json(&o, cfg, err, sizeof(err)), 0);
    json_decref(cfg);
    static const char *const env[] = {"CAPGATE_MOCK_CREDENTIAL", "C:3 D:key:with:colons", NULL};
    fake_env = env;
    assert_int_equal(mockopts_apply_env(&o, fake_getenv, err, sizeof(err)), 0);
    assert_int_equal(o.ncreds, 2);
    assert_string_equal(o.creds[1].secret_id, "D");
    assert_string_equal(o.creds[1].secret_key, "key:with:colons");
    mockopts_cleanup(&o);
}

/* --captcha-app: a list like --credential (config array, env list, flags replace); ids are
 * numeric and unique. */
static void test_captcha_apps(void **state) {
    struct mock_opts o;
    char err[256];
    mockopts_init(&o);
    json_t *cfg = js("{\"captcha_app\": [\"190000001:k1\", \"190000002:k:2\"]}");
    assert_int_equal(mockopts_apply_json(&o, cfg, err, sizeof(err)), 0);
    json_decref(cfg);
    assert_int_equal(o.napps, 2);
    assert_string_equal(o.apps[1].secret_id, "190000002");
    assert_string_equal(o.apps[1].secret_key, "k:2");
    static const char *const env[] = {"CAPGATE_MOCK_CAPTCHA_APP", "7:a, 8:b 9:c", NULL};
    fake_env = env;
    assert_int_equal(mockopts_apply_env(&o, fake_getenv, err, sizeof(err)), 0);
    assert_int_equal(o.napps, 3);
    char *argv[] = {"m", "--captcha-app", "5:x", NULL};
    assert_int_equal(mockopts_apply_args(&o, 3, argv, err, sizeof(err)), 0);
    assert_int_equal(o.napps, 1);
    assert_string_equal(o.apps[0].secret_key, "x");
    assert_int_equal(mockopts_finish(&o, err, sizeof(err)), 0);
    mockopts_cleanup(&o);

    static const char *const bad[] = {"abc:k", "12:", ":k", "0:k", "1234567890123456789:k"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        mockopts_init(&o);
        char *a[] = {"m", "--captcha-app", (char *)bad[i], NULL};
        assert_int_equal(mockopts_apply_args(&o, 3, a, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "CAPTCHAAPPID:APPSECRETKEY"));
        mockopts_cleanup(&o);
    }
    mockopts_init(&o);
    char *dup[] = {"m", "--captcha-app", "7:a", "--captcha-app", "007:b", NULL};
    assert_int_equal(mockopts_apply_args(&o, 5, dup, err, sizeof(err)), 0);
    assert_int_equal(mockopts_finish(&o, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "twice"));
    mockopts_cleanup(&o);
}

static void expect_config_error(const char *text, const char *needle) {
    struct mock_opts o;
    char err[256] = "";
    mockopts_init(&o);
    json_t *cfg = js(text);
    assert_int_equal(mockopts_apply_json(&o, cfg, err, sizeof(err)), -1);
    if (!strstr(err, needle)) fail_msg("error \"%s\" does not mention \"%s\"", err, needle);
    json_decref(cfg);
    mockopts_cleanup(&o);
}

static void test_config_strict(void **state) {
    expect_config_error("{\"listne\": \"127.0.0.1:1\"}", "listne");
    expect_config_error("{\"quota\": \"many\"}", "quota");
    expect_config_error("{\"quota\": -1}", "quota");
    expect_config_error("{\"https_only\": 3}", "https_only");
    expect_config_error("{\"help\": true}", "help");
    expect_config_error("{\"log_level\": \"loud\"}", "log_level");
    expect_config_error("{\"faults\": 3}", "faults");
    expect_config_error("[1]", "object");
}

static void expect_args_error(int argc, char **argv, const char *needle) {
    struct mock_opts o;
    char err[256] = "";
    mockopts_init(&o);
    assert_int_equal(mockopts_apply_args(&o, argc, argv, err, sizeof(err)), -1);
    if (!strstr(err, needle)) fail_msg("error \"%s\" does not mention \"%s\"", err, needle);
    mockopts_cleanup(&o);
}

static void test_args_errors(void **state) {
    char *a1[] = {"m", "--bogus", NULL};
    expect_args_error(2, a1, "--bogus");
    char *a2[] = {"m", "--quota", NULL};
    expect_args_error(2, a2, "needs a value");
    char *a3[] = {"m", "--timestamp-window", "0", NULL};
    expect_args_error(3, a3, "--timestamp-window");
    char *a4[] = {"m", "--credential", "nocolon", NULL};
    expect_args_error(3, a4, "SECRETID:SECRETKEY");
    char *a5[] = {"m", "--seed", "-1", NULL};
    expect_args_error(3, a5, "--seed");
    char *a6[] = {"m", "stray", NULL};
    expect_args_error(2, a6, "stray");
    char *a7[] = {"m", "--max-connections", "2000000", NULL};
    expect_args_error(3, a7, "--max-connections");
}

static void test_max_connections(void **state) {
    struct mock_opts o;
    char err[256];
    char *a1[] = {"m", "--max-connections", "500", NULL};
    mockopts_init(&o);
    assert_int_equal(mockopts_apply_args(&o, 3, a1, err, sizeof(err)), 0);
    assert_int_equal(o.max_connections, 500);
    mockopts_cleanup(&o);
    json_t *cfg = js("{\"max_connections\": 40}");
    mockopts_init(&o);
    assert_int_equal(mockopts_apply_json(&o, cfg, err, sizeof(err)), 0);
    assert_int_equal(o.max_connections, 40);
    json_decref(cfg);
    mockopts_cleanup(&o);
}

static void test_finish_checks(void **state) {
    struct mock_opts o;
    char err[256];
    char *a1[] = {"m", "--tls-listen", "127.0.0.1:0", NULL};
    mockopts_init(&o);
    assert_int_equal(mockopts_apply_args(&o, 3, a1, err, sizeof(err)), 0);
    assert_int_equal(mockopts_finish(&o, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "--tls-cert"));
    mockopts_cleanup(&o);

    char *a2[] = {"m", "--listen", "localhost", NULL};
    mockopts_init(&o);
    assert_int_equal(mockopts_apply_args(&o, 3, a2, err, sizeof(err)), 0);
    assert_int_equal(mockopts_finish(&o, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "HOST:PORT"));
    mockopts_cleanup(&o);

    char *a3[] = {"m", "--public-url", "http://mock.test:8080/", "--https-only", NULL};
    mockopts_init(&o);
    assert_int_equal(mockopts_apply_args(&o, 4, a3, err, sizeof(err)), 0);
    assert_int_equal(mockopts_finish(&o, err, sizeof(err)), 0);
    assert_string_equal(o.public_url, "http://mock.test:8080");
    assert_int_equal(o.https_only, 1);
    mockopts_cleanup(&o);
}

static void test_credentials_text(void **state) {
    struct mock_opts o;
    char err[256];
    mockopts_init(&o);
    assert_int_equal(mockopts_add_credentials_text(&o, "# test keys\n\n  AKID1:k1  \nAKID2:k2",
                                                   "creds.txt", err, sizeof(err)),
                     0);
    assert_int_equal(o.ncreds, 2);
    assert_string_equal(o.creds[0].secret_key, "k1");
    assert_int_equal(
        mockopts_add_credentials_text(&o, "ok:1\nbroken\n", "creds.txt", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "creds.txt:2"));
    mockopts_cleanup(&o);
}

static void test_split_hostport(void **state) {
    char host[64], err[128];
    int port;
    assert_int_equal(
        mockopts_split_hostport("127.0.0.1:0", host, sizeof(host), &port, err, sizeof(err)), 0);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 0);
    assert_int_equal(
        mockopts_split_hostport("[::1]:9000", host, sizeof(host), &port, err, sizeof(err)), 0);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 9000);
    assert_int_equal(
        mockopts_split_hostport("h:70000", host, sizeof(host), &port, err, sizeof(err)), -1);
    assert_int_equal(mockopts_split_hostport(":80", host, sizeof(host), &port, err, sizeof(err)),
                     -1);
}

static void test_config_path(void **state) {
    char *argv[] = {"m", "--quota", "1", "--config", "/x.json", NULL};
    static const char *const env[] = {"CAPGATE_MOCK_CONFIG", "/env.json", NULL};
    fake_env = env;
    assert_string_equal(mockopts_config_path(5, argv, fake_getenv), "/x.json");
    assert_string_equal(mockopts_config_path(3, argv, fake_getenv), "/env.json");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_env_credentials_replace_config),
        cmocka_unit_test(test_captcha_apps),
        cmocka_unit_test(test_config_strict),
        cmocka_unit_test(test_args_errors),
        cmocka_unit_test(test_max_connections),
        cmocka_unit_test(test_finish_checks),
        cmocka_unit_test(test_credentials_text),
        cmocka_unit_test(test_split_hostport),
        cmocka_unit_test(test_config_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
