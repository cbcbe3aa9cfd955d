/* test_config.c: the gateway's config loader: the shipped configs load, defaults, every kind of
 * error with its key path and line:column, secrets from env and files, URL parsing, the masked
 * dump and the reload diff (both driven by the field tables: every key is covered), app lookups
 * and warnings. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "capgate/secmem.h"
#include "config.h"

#define UPSTREAM_OK "\"upstream\": {\"secret_id\": \"AKIDup\", \"secret_key_env\": \"T_UP_KEY\"}"

static int setup_env(void **state) {
    setenv("T_UP_KEY", "upstream-secret-key-value", 1);
    setenv("CAPGATE_SECRET_ID", "AKIDrealUpstreamId", 1);
    setenv("CAPGATE_SECRET_KEY", "real-upstream-key-9f8e7d", 1);
    setenv("SHOP_WEB_KEY", "shop-web-key-c0ffee", 1);
    setenv("BATCH_TOKEN", "batch-token-deadbeef", 1);
    setenv("CAPTCHA_APP_KEY", "captcha-app-key-5eed", 1);
    setenv("CAPGATE_CAPTCHA_APP_KEY", "dev-captcha-app-key", 1);
    setenv("CAPGATE_PII_KEY", "pii-key-12345678", 1);
    setenv("CAPGATE_DEMO_WEB_KEY", "demo-web-key-abcdef", 1);
    setenv("CAPGATE_BATCH_TOKEN", "dev-batch-token-0123", 1);
    return 0;
}

static struct config *load_ok(const char *text) {
    struct config *c = NULL;
    char err[512];
    int rc = config_load_string(text, "t.json", &c, err, sizeof err);
    if (rc != 0) fail_msg("unexpected error: %s", err);
    assert_non_null(c);
    return c;
}

static void expect_error(const char *text, const char *expected) {
    struct config *c = (struct config *)1;
    char err[512];
    assert_int_equal(config_load_string(text, "t.json", &c, err, sizeof err), -1);
    assert_null(c);
    if (strcmp(err, expected) != 0) fail_msg("got      %s\nexpected %s", err, expected);
}

/* Certificates from scripts/gen-certs.sh in a fresh directory; the path in dir. */
static void make_certs(char *dir, size_t len) {
    char cmd[600];
    snprintf(dir, len, "/tmp/capgate-test-config-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(cmd, sizeof cmd, "%s/scripts/gen-certs.sh %s/var/certs >/dev/null 2>&1",
             CAPGATE_SOURCE_DIR, dir);
    assert_int_equal(system(cmd), 0);
}

static void remove_dir(const char *dir) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* Loads a shipped config the way it is laid out in the checkout (config/NAME, with run.sh's
 * certificates in var/certs beside config/): a copy in a fresh directory holding new
 * certificates, loaded from another working directory ("/"), since its relative paths are
 * relative to the file's directory. */
static int load_shipped(const char *path, struct config **c, char *err, size_t errlen) {
    char dir[64], cwd[4096], cmd[1024], copy[256];
    make_certs(dir, sizeof dir);
    const char *base = strrchr(path, '/');
    snprintf(copy, sizeof copy, "%s/config/%s", dir, base ? base + 1 : path);
    snprintf(cmd, sizeof cmd, "mkdir -p %s/config && cp %s %s", dir, path, copy);
    assert_int_equal(system(cmd), 0);
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir("/"), 0);
    int rc = config_load(copy, c, err, errlen);
    assert_int_equal(chdir(cwd), 0);
    remove_dir(dir);
    return rc;
}

/* s ends with "/config/" suffix: a shipped config's relative path, under its directory. */
static void assert_under_config(const char *s, const char *suffix) {
    char want[256];
    snprintf(want, sizeof want, "/config/%s", suffix);
    size_t n = strlen(s), m = strlen(want);
    if (n < m || strcmp(s + n - m, want) != 0 || s[0] != '/')
        fail_msg("%s is not <config dir>%s", s, want);
}

static void test_example_loads(void **state) {
    struct config *c = NULL;
    char err[512];
    int rc = load_shipped(CAPGATE_SOURCE_DIR "/config/capgate.example.json", &c, err, sizeof err);
    if (rc != 0) fail_msg("%s", err);
    assert_int_equal(c->tls_listen_port, 8443);
    assert_under_config(c->tls.key_file, "../var/certs/server.key");
    assert_int_equal(c->n_trusted_proxies, 2);
    assert_string_equal(c->listen_host, "127.0.0.1");
    assert_int_equal(c->listen_port, 8080);
    assert_int_equal(c->admin_port, 8081);
    assert_int_equal(c->workers, 2);
    assert_string_equal(c->upstream.host, "csec.api.qcloud.com");
    assert_int_equal(c->upstream.port, 443);
    assert_true(c->upstream.tls);
    assert_string_equal(c->upstream.path, "/v2/index.php");
    assert_string_equal(c->upstream.secret_id, "AKIDrealUpstreamId");
    assert_string_equal(c->upstream.secret_key, "real-upstream-key-9f8e7d");
    assert_int_equal(c->upstream.signature_method, SIGN_HMAC_SHA256);
    assert_non_null(c->redis);
    assert_string_equal(c->redis->host, "127.0.0.1");
    assert_int_equal(c->redis->port, 6379);
    assert_int_equal(c->redis->db, 0);
    assert_null(c->redis->password);
    assert_int_equal(c->n_apps, 2);
    assert_string_equal(c->apps[0].secret_key, "shop-web-key-c0ffee");
    assert_int_equal(c->apps[0].actions,
                     (1u << V2_ACTION_CAPTCHA_IFRAME_QUERY) | (1u << V2_ACTION_CAPTCHA_CHECK));
    assert_false(c->apps[0].business_any);
    assert_int_equal(c->apps[0].n_business_ids, 2);
    assert_int_equal(c->apps[0].business_ids[1], 2);
    assert_int_equal(c->apps[1].auth, CONFIG_AUTH_TOKEN);
    assert_string_equal(c->apps[1].token, "batch-token-deadbeef");
    assert_true(c->apps[1].business_any);
    assert_int_equal(c->n_limits, 5);
    assert_int_equal(c->limits[0].business_id, 1);
    assert_int_equal(c->limits[0].scene_id, 2);
    assert_true(c->limits[0].burst == 100.0);
    assert_true(c->limits[1].business_any && c->limits[1].scene_any);
    assert_true(c->limits[1].burst == 20.0); /* default: rate */
    assert_int_equal(c->limits[2].scope, CONFIG_SCOPE_APP);
    assert_int_equal(c->limits[3].scope, CONFIG_SCOPE_GLOBAL);
    assert_string_equal(c->limits[4].app, "batch-job");
    assert_string_equal(c->audit.pii_key, "pii-key-12345678");
    assert_false(c->audit.pii_key_generated);
    assert_int_equal(c->pool.n_profiles, 1);
    assert_int_equal(c->pool.profiles[0].captcha_type, 9);
    assert_true(c->pool.profiles[0].has_business_id);
    assert_string_equal(c->instance, "gw-1");
    config_free(c);
}

static void test_dev_loads(void **state) {
    struct config *c = NULL;
    char err[512];
    int rc = load_shipped(CAPGATE_SOURCE_DIR "/config/dev.json", &c, err, sizeof err);
    if (rc != 0) fail_msg("%s", err);
    assert_string_equal(c->tls_listen_host, "127.0.0.1");
    assert_int_equal(c->tls_listen_port, 8443);
    assert_under_config(c->tls.cert_file, "../var/certs/server.pem");
    assert_int_equal(c->listen_port, 8080);
    assert_int_equal(c->admin_port, 8081);
    assert_int_equal(c->workers, 2);
    assert_string_equal(c->upstream.host, "127.0.0.1");
    assert_int_equal(c->upstream.port, 9443);
    assert_string_equal(c->upstream.sign_host, "127.0.0.1:9443");
    assert_under_config(c->upstream.ca_file, "../var/certs/ca.pem");
    assert_null(c->redis);
    assert_true(c->demo);
    assert_string_equal(c->upstream.v3_sign_host, "127.0.0.1:9443");
    assert_int_equal(c->n_captcha_apps, 1);
    assert_string_equal(c->captcha_apps[0].app_secret_key, "dev-captcha-app-key");
    assert_int_equal(c->n_apps, 2);
    assert_string_equal(c->apps[0].name, "demo-web");
    assert_string_equal(c->apps[0].secret_id, "AKIDcapgateDemoWeb0000000000000000000");
    assert_string_equal(c->apps[0].secret_key, "demo-web-key-abcdef");
    assert_string_equal(c->apps[1].name, "batch-job");
    assert_string_equal(c->apps[1].token, "dev-batch-token-0123");
    /* the /demo page calls CaptchaIframeQuery and CaptchaCheck as batch-job */
    assert_string_equal(c->demo_app, "batch-job");
    assert_true(c->apps[1].actions & (1u << V2_ACTION_CAPTCHA_IFRAME_QUERY));
    assert_true(c->apps[1].actions & (1u << V2_ACTION_CAPTCHA_CHECK));
    assert_true(c->apps[1].business_any);
    assert_true(c->n_limits >= 2);
    config_free(c);
}

static void test_defaults(void **state) {
    struct config *c = load_ok("{" UPSTREAM_OK "}");
    char host[256];
    assert_string_equal(c->path, "t.json");
    assert_string_equal(c->listen_host, "127.0.0.1");
    assert_int_equal(c->listen_port, 8080);
    assert_string_equal(c->admin_host, "127.0.0.1");
    assert_int_equal(c->admin_port, 8081);
    assert_int_equal(c->workers, 2);
    assert_false(c->http_errors_semantic);
    assert_string_equal(c->upstream.url, "https://csec.api.qcloud.com/v2/index.php");
    assert_string_equal(c->upstream.sign_host, "csec.api.qcloud.com");
    assert_string_equal(c->upstream.region, "gz");
    assert_int_equal(c->upstream.signature_method, SIGN_HMAC_SHA256);
    assert_true(c->upstream.post);
    assert_null(c->upstream.ca_file);
    assert_true(c->upstream.verify_tls);
    assert_int_equal(c->upstream.connect_timeout_ms, 1000);
    assert_int_equal(c->upstream.timeout_ms, 3000);
    assert_int_equal(c->upstream.retries, 1);
    assert_int_equal(c->upstream.max_connections, 64);
    assert_int_equal(c->upstream.breaker_failures, 5);
    assert_int_equal(c->upstream.breaker_open_ms, 5000);
    assert_null(c->redis);
    assert_int_equal(c->on_store_error, CONFIG_STORE_ERROR_LOCAL);
    assert_int_equal(c->timestamp_window_s, 300);
    assert_int_equal(c->n_apps, 0);
    assert_int_equal(c->n_limits, 0);
    assert_string_equal(c->audit.stream, "capgate:audit");
    assert_int_equal(c->audit.maxlen, 1000000);
    assert_string_equal(c->audit.spool_dir, "var/spool");
    assert_null(c->audit.file);
    assert_false(c->audit.pii_raw);
    assert_true(c->audit.pii_key_generated);
    assert_int_equal(c->audit.pii_key_len, 32);
    assert_int_equal(c->metrics.flush_ms, 1000);
    assert_int_equal(c->metrics.retention_s, 691200);
    assert_int_equal(c->pool.ttl_s, 60);
    assert_int_equal(c->pool.n_profiles, 0);
    assert_int_equal(c->idempotency_ttl_s, 300);
    assert_false(c->demo);
    assert_int_equal(c->http.max_uri, 8192);
    assert_int_equal(c->http.max_header_bytes, 16384);
    assert_int_equal(c->http.max_body, 65536);
    assert_int_equal(c->http.max_headers, 100);
    assert_int_equal(c->http.header_timeout_ms, 10000);
    assert_int_equal(c->http.body_timeout_ms, 10000);
    assert_int_equal(c->http.idle_timeout_ms, 60000);
    assert_string_equal(c->log_level, "info");
    assert_int_equal(gethostname(host, sizeof host), 0);
    host[sizeof host - 1] = '\0';
    char expect[300];
    snprintf(expect, sizeof expect, "%s:%ld", host, (long)getpid());
    assert_string_equal(c->instance, expect);
    config_free(c);
}

static void test_app_defaults(void **state) {
    struct config *c = load_ok("{" UPSTREAM_OK ", \"apps\": [{\"name\": \"a\", \"auth\": "
                               "\"token\", \"token\": \"tok-a\"}], \"limits\": [{\"name\": \"l\", "
                               "\"rate\": 0.5, \"mode\": \"shadow\"}]}");
    assert_int_equal(c->apps[0].actions, (1u << V2_ACTION_CAPTCHA_IFRAME_QUERY) |
                                             (1u << V2_ACTION_CAPTCHA_CHECK) |
                                             (1u << V2_ACTION_CAPTCHA_QUERY) |
                                             (1u << V3_ACTION_DESCRIBE_CAPTCHA_RESULT) |
                                             (1u << V3_ACTION_DESCRIBE_CAPTCHA_MINI_RESULT));
    assert_true(c->apps[0].captcha_any);
    assert_true(c->apps[0].business_any);
    assert_true(c->apps[0].secret_literal);
    assert_int_equal(c->limits[0].scope, CONFIG_SCOPE_PARAMS);
    assert_true(c->limits[0].business_any && c->limits[0].scene_any);
    assert_true(c->limits[0].period_s == 1.0);
    assert_true(c->limits[0].burst == 1.0); /* rate below 1: burst 1 */
    assert_true(c->limits[0].shadow);
    config_free(c);
}

struct error_case {
    const char *text;
    const char *expected;
};

static void test_errors(void **state) {
    static const struct error_case cases[] = {
        /* unknown key at the top level */
        {"{\n  \"workers\": 2,\n  \"colour\": 1\n}", "t.json:3:3: colour: unknown key"},
        /* unknown key nested in apps[1] */
        {"{" UPSTREAM_OK ",\n \"apps\": [\n  {\"name\": \"a\", \"auth\": \"token\", \"token_env\": "
         "\"BATCH_TOKEN\"},\n  {\"name\": \"b\",\n   \"auth\": \"token\", \"colour\": \"red\"}\n "
         "]\n}",
         "t.json:5:21: apps[1].colour: unknown key"},
        /* wrong type */
        {"{\"workers\": \"2\"}", "t.json:1:2: workers: must be an integer; got \"2\""},
        {"{" UPSTREAM_OK ", \"demo\": 1}", "t.json:1:69: demo: must be true or false; got 1"},
        /* out of bounds */
        {"{\"workers\": 65}", "t.json:1:2: workers: must be between 1 and 64; got 65"},
        {"{\"workers\": 0}", "t.json:1:2: workers: must be between 1 and 64; got 0"},
        {"{\n\"upstream\": {\"timeout_ms\": 600001}}",
         "t.json:2:14: upstream.timeout_ms: must be between 1 and 600000; got 600001"},
        {"{" UPSTREAM_OK ",\n\"limits\": [{\"name\": \"x\", \"rate\": 0}]}",
         "t.json:2:26: limits[0].rate: must be greater than 0; got 0"},
        {"{" UPSTREAM_OK ",\n\"limits\": [{\"name\": \"x\", \"rate\": 5, \"burst\": 0.5}]}",
         "t.json:2:37: limits[0].burst: must be at least 1; got 0.5"},
        {"{\"listen\": \"127.0.0.1:65536\"}",
         "t.json:1:2: listen: must be \"host:port\" with a port 0..65535; got \"127.0.0.1:65536\""},
        /* bad enum */
        {"{" UPSTREAM_OK ",\n\"apps\": [{\"name\": \"a\", \"auth\": \"basic\"}]}",
         "t.json:2:24: apps[0].auth: must be \"signature\" or \"token\"; got \"basic\""},
        {"{\"http_errors\": \"loud\"}",
         "t.json:1:2: http_errors: must be \"compat\" or \"semantic\"; got \"loud\""},
        {"{" UPSTREAM_OK ",\n\"apps\": [{\"name\": \"a\", \"auth\": \"token\", \"token\": \"t\", "
         "\"actions\": [\"CaptchaCheck\", \"Describe\"]}]}",
         "t.json:2:83: apps[0].actions[1]: must be \"CaptchaIframeQuery\", \"CaptchaCheck\", "
         "\"CaptchaQuery\", \"DescribeCaptchaResult\" or \"DescribeCaptchaMiniResult\"; got "
         "\"Describe\""},
        {"{" UPSTREAM_OK ",\n\"apps\": [{\"name\": \"a\", \"auth\": \"token\", \"token\": \"t\", "
         "\"business_ids\": [1, -2]}]}",
         "t.json:2:75: apps[0].business_ids[1]: must be a UInt (0..4294967295); got -2"},
        /* an admin listener other hosts can reach needs a token or an explicit opt-out */
        {"{" UPSTREAM_OK ",\n\"admin_listen\": \"0.0.0.0:9\"}",
         "t.json:2:1: admin_listen: 0.0.0.0 is not a loopback address and admin has no token: "
         "set admin.token_file (or admin.token_env), or \"admin\": {\"allow_unauthenticated\": "
         "true}"},
        /* its host echoed with control bytes as \xNN (found by fuzz_config) */
        {"{" UPSTREAM_OK ",\n\"admin_listen\": \"a\\tb:9\"}",
         "t.json:2:1: admin_listen: a\\x09b is not a loopback address and admin has no token: "
         "set admin.token_file (or admin.token_env), or \"admin\": {\"allow_unauthenticated\": "
         "true}"},
        {"{" UPSTREAM_OK ",\n\"admin_listen\": \"[::]:9\", \"admin\": {\"token\": \"x\"}}",
         "t.json:2:37: admin.token: unknown key"},
        /* missing environment variable */
        {"{\n  \"upstream\": {\n    \"secret_id\": \"x\",\n    \"secret_key_env\": "
         "\"T_NOT_SET_ANYWHERE\"\n  }\n}",
         "t.json:4:5: upstream.secret_key_env: environment variable T_NOT_SET_ANYWHERE is not set "
         "(a secret added after start goes in secret_key_file)"},
        /* missing required */
        {"{\"workers\": 1}", "t.json:1:1: missing required key \"upstream\""},
        {"{\"upstream\": {\"secret_id\": \"x\"}}",
         "t.json:1:2: upstream: missing required key \"secret_key_env\" (or secret_key_file)"},
        {"{" UPSTREAM_OK ",\n\"apps\": [{\"name\": \"a\", \"auth\": \"signature\", "
         "\"secret_key\": \"k\"}]}",
         "t.json:2:10: apps[0]: missing required key \"secret_id\""},
        /* duplicates */
        {"{" UPSTREAM_OK
         ",\n\"apps\": [{\"name\": \"a\", \"auth\": \"token\", \"token\": \"t1\"},\n"
         "{\"name\": \"a\", \"auth\": \"token\", \"token\": \"t2\"}]}",
         "t.json:3:2: apps[1].name: duplicate name \"a\" (also apps[0])"},
        {"{" UPSTREAM_OK
         ",\n\"apps\": [{\"name\": \"a\", \"auth\": \"token\", \"token\": \"t1\"},\n"
         "{\"name\": \"b\", \"auth\": \"token\", \"token\": \"t1\"}]}",
         "t.json:3:32: apps[1].token: the same token as apps[0] (\"a\")"},
        {"{" UPSTREAM_OK ",\n\"apps\": [{\"name\": \"a\", \"auth\": \"signature\", \"secret_id\": "
         "\"S\", \"secret_key\": \"k\"},\n{\"name\": \"b\", \"auth\": \"signature\", "
         "\"secret_id\": "
         "\"S\", \"secret_key\": \"k2\"}]}",
         "t.json:3:36: apps[1].secret_id: duplicate secret_id \"S\" (also apps[0])"},
        {"{" UPSTREAM_OK ",\n\"limits\": [{\"name\": \"l\", \"rate\": 1},\n {\"name\": \"l\", "
         "\"rate\": 2}]}",
         "t.json:3:3: limits[1].name: duplicate name \"l\" (also limits[0])"},
        {"{\"workers\": 1, \"workers\": 2}",
         "t.json:1:24: syntax error: duplicate object key near '\"workers\"'"},
        /* the echoed key's control bytes written \xNN (found by fuzz_config) */
        {"{\"a\x7f"
         "b\": 1, \"a\x7f"
         "b\": 2}",
         "t.json:1:16: syntax error: duplicate object key near '\"a\\x7Fb\"'"},
        /* bad redis url */
        {"{" UPSTREAM_OK ",\n\"redis\": {\"url\": \"http://127.0.0.1:6379\"}}",
         "t.json:2:11: redis.url: must be redis://[:password@]host[:port][/db]; got "
         "\"http://127.0.0.1:6379\""},
        {"{" UPSTREAM_OK ",\n\"redis\": {\"url\": \"redis://h:6379/x\"}}",
         "t.json:2:11: redis.url: must end in /db, a database number 0..65535; got "
         "\"redis://h:6379/x\""},
        {"{" UPSTREAM_OK ",\n\"redis\": {\"url\": \"redis://user:pw@h\"}}",
         "t.json:2:11: redis.url: must give the password as redis://:password@host (user names "
         "are not supported)"},
        {"{" UPSTREAM_OK ",\n\"redis\": {\"url\": \"redis://:hunter2@h:99999\"}}",
         "t.json:2:11: redis.url: must be redis://[:password@]host[:port][/db] with a port "
         "1..65535"},
        /* bad upstream url */
        {"{\"upstream\": {\"url\": \"ftp://x/\", \"secret_id\": \"i\", \"secret_key\": \"k\"}}",
         "t.json:1:15: upstream.url: must start with https:// or http://; got \"ftp://x/\""},
        /* upstream.resolver: nameserver addresses only, at least one */
        {"{\"upstream\": {\"resolver\": \"127.0.0.1 dns.example:53\", \"secret_id\": \"i\", "
         "\"secret_key\": \"k\"}}",
         "t.json:1:15: upstream.resolver: \"dns.example:53\" is not a nameserver address (ip, "
         "ip:port or [ipv6]:port)"},
        {"{\"upstream\": {\"resolver\": \" , \", \"secret_id\": \"i\", \"secret_key\": \"k\"}}",
         "t.json:1:15: upstream.resolver: names no nameserver (null: the system's resolver)"},
        {"{\"upstream\": {\"resolver\": \"[::1]:0\", \"secret_id\": \"i\", \"secret_key\": \"k\"}}",
         "t.json:1:15: upstream.resolver: \"[::1]:0\" is not a nameserver address (ip, ip:port or "
         "[ipv6]:port)"},
        /* syntax errors */
        {"{\n  \"workers\": 2,\n}", "t.json:3:1: syntax error: string or '}' expected"},
        {"[]", "t.json:1:1: must be an object; got an array"},
        /* scope-only keys */
        {"{" UPSTREAM_OK ",\n\"limits\": [{\"name\": \"l\", \"scope\": \"app\", \"businessId\": 1, "
         "\"rate\": 1}]}",
         "t.json:2:42: limits[0].businessId: only for rules without a scope (or \"scope\": "
         "\"params\")"},
        /* two ways to give one secret */
        {"{\"upstream\": {\"secret_id\": \"x\", \"secret_key\": \"a\", \"secret_key_env\": "
         "\"T_UP_KEY\"}}",
         "t.json:1:52: upstream.secret_key_env: only one of secret_key, secret_key_env and "
         "secret_key_file may be set"},
        /* front listeners, TLS and trusted proxies */
        {"{" UPSTREAM_OK ",\n\"listen\": null}",
         "t.json:2:1: listen: is null and tls_listen is not set: the front needs at least one "
         "listener"},
        {"{" UPSTREAM_OK ",\n\"tls_listen\": \"127.0.0.1:8443\"}",
         "t.json:2:1: tls_listen: needs \"tls\": {\"cert_file\": ..., \"key_file\": ...}"},
        {"{" UPSTREAM_OK ",\n\"tls\": {\"cert_file\": \"c.pem\", \"key_file\": \"k.pem\"}}",
         "t.json:2:1: tls: is set but tls_listen is not; set tls_listen to serve HTTPS"},
        {"{" UPSTREAM_OK ",\n\"tls_listen\": \"127.0.0.1:0\", \"tls\": {\"cert_file\": "
         "\"/nonexistent/c.pem\"}}",
         "t.json:2:30: tls: missing required key \"key_file\""},
        {"{" UPSTREAM_OK ",\n\"trusted_proxies\": \"10.0.0.0/8\"}",
         "t.json:2:1: trusted_proxies: must be a list of IPv4 or IPv6 CIDR blocks "
         "(\"10.0.0.0/8\", \"fd00::/8\"); got \"10.0.0.0/8\""},
        {"{" UPSTREAM_OK ",\n\"trusted_proxies\": [\"10.0.0.0/8\", \"10.0.0.1/8\"]}",
         "t.json:2:35: trusted_proxies[1]: 10.0.0.1/8 has bits set past its /8 prefix"},
        {"{" UPSTREAM_OK ",\n\"trusted_proxies\": [\"fd00::/129\"]}",
         "t.json:2:21: trusted_proxies[0]: the prefix length of fd00::/129 must be 0..128"},
        {"{" UPSTREAM_OK ",\n\"trusted_proxies\": [\"proxy.internal\"]}",
         "t.json:2:21: trusted_proxies[0]: must be an IPv4 or IPv6 address, optionally with "
         "/prefix; got proxy.internal"},
        {"{" UPSTREAM_OK ",\n\"trusted_proxies\": [8]}",
         "t.json:2:21: trusted_proxies[0]: must be a CIDR block as a string, e.g. "
         "\"10.0.0.0/8\"; got 8"},
        /* a key with an escape in it is still found */
        {"{\n \"w\\u006frkers\": 99}", "t.json:2:2: workers: must be between 1 and 64; got 99"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        print_message("case %zu\n", i);
        expect_error(cases[i].text, cases[i].expected);
    }
}

static void test_empty_env_var(void **state) {
    setenv("T_EMPTY_VAR", "", 1);
    expect_error("{\"upstream\": {\"secret_id\": \"x\", \"secret_key_env\": \"T_EMPTY_VAR\"}}",
                 "t.json:1:33: upstream.secret_key_env: environment variable T_EMPTY_VAR is empty");
    unsetenv("T_EMPTY_VAR");
}

static void test_load_missing_file(void **state) {
    struct config *c = NULL;
    char err[512];
    assert_int_equal(config_load("/nonexistent/capgate.json", &c, err, sizeof err), -1);
    assert_null(c);
    assert_string_equal(err, "/nonexistent/capgate.json: cannot read: No such file or directory");
}

static void test_secret_file(void **state) {
    char path[] = "/tmp/capgate-test-secret-XXXXXX";
    char text[512], err[512];
    struct config *c = NULL;
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "file-secret-value\n", 18), 18);
    close(fd);
    snprintf(text, sizeof text,
             "{\"upstream\": {\"secret_id\": \"x\", \"secret_key_file\": \"%s\"}}", path);
    c = load_ok(text);
    assert_string_equal(c->upstream.secret_key, "file-secret-value");
    assert_false(c->upstream.secret_literal);
    config_free(c);
    unlink(path);
    assert_int_equal(config_load_string(text, "t.json", &c, err, sizeof err), -1);
    assert_non_null(strstr(err, "t.json:1:33: upstream.secret_key_file: cannot read "));
    assert_non_null(strstr(err, "No such file or directory"));
}

static void test_redis_url(void **state) {
    struct config *c = load_ok("{" UPSTREAM_OK ", \"redis\": {\"url\": "
                               "\"redis://:p%40ss@redis.internal:6380/3\", \"timeout_ms\": 50}}");
    assert_non_null(c->redis);
    assert_string_equal(c->redis->host, "redis.internal");
    assert_int_equal(c->redis->port, 6380);
    assert_int_equal(c->redis->db, 3);
    assert_string_equal(c->redis->password, "p@ss");
    assert_int_equal(c->redis->timeout_ms, 50);
    assert_string_equal(c->redis->key_prefix, "capgate:");
    config_free(c);

    c = load_ok("{" UPSTREAM_OK ", \"redis\": {\"url\": \"redis://[::1]\", \"password_env\": "
                "\"T_UP_KEY\"}}");
    assert_string_equal(c->redis->host, "::1");
    assert_int_equal(c->redis->port, 6379);
    assert_int_equal(c->redis->db, 0);
    assert_string_equal(c->redis->password, "upstream-secret-key-value");
    config_free(c);

    c = load_ok("{" UPSTREAM_OK ", \"redis\": null}");
    assert_null(c->redis);
    config_free(c);
}

/* redis.sentinels and its companions: parsed, required together, named in each error. */
static void test_redis_sentinels(void **state) {
    static const struct error_case bad[] = {
        {"{" UPSTREAM_OK ", \"redis\": {\"sentinels\": [\"127.0.0.1:26379\"]}}",
         "redis: missing required key \"master_name\""},
        {"{" UPSTREAM_OK ", \"redis\": {\"url\": \"redis://h\", \"master_name\": \"m\"}}",
         "redis.master_name: needs \"sentinels\""},
        {"{" UPSTREAM_OK ", \"redis\": {\"sentinels\": [], \"master_name\": \"m\"}}",
         "redis.sentinels: must be a list of 1 to 16 \"host:port\" Sentinel addresses; got 0"},
        {"{" UPSTREAM_OK ", \"redis\": {\"sentinels\": [\"h:1\", \"h\"], \"master_name\": \"m\"}}",
         "redis.sentinels[1]: must be \"host:port\" with a port 1..65535; got \"h\""},
        {"{" UPSTREAM_OK ", \"redis\": {\"sentinels\": [\"h:0\"], \"master_name\": \"m\"}}",
         "redis.sentinels[0]: must be \"host:port\" with a port 1..65535; got \"h:0\""},
        {"{" UPSTREAM_OK ", \"redis\": {\"url\": \"redis://h\", \"sentinel_password\": \"x\"}}",
         "sentinel_username/sentinel_password need \"sentinels\""},
        {"{" UPSTREAM_OK ", \"redis\": {\"timeout_ms\": 5}}",
         "redis: missing required key \"url\" (or \"sentinels\" and \"master_name\")"},
        {"{" UPSTREAM_OK ", \"redis\": {\"sentinels\": [\"h:1\"], \"master_name\": \"m\", "
         "\"sentinel_password\": \"a\", \"sentinel_password_env\": \"T_UP_KEY\"}}",
         "only one of sentinel_password, sentinel_password_env and sentinel_password_file"},
    };
    char err[512];
    struct config *c;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        c = NULL;
        assert_int_equal(config_load_string(bad[i].text, "t.json", &c, err, sizeof err), -1);
        if (!strstr(err, bad[i].expected))
            fail_msg("case %zu: %s\nwanted: %s", i, err, bad[i].expected);
        assert_null(strstr(err, "upstream-secret-key-value"));
    }
    c = load_ok("{" UPSTREAM_OK ", \"redis\": {\"sentinels\": [\"10.0.0.1:26379\", "
                "\"[::1]:26380\", \"sentinel.local:26381\"], \"master_name\": \"cache\", "
                "\"sentinel_username\": \"capgate\", \"sentinel_password_env\": \"T_UP_KEY\"}}");
    assert_null(c->redis->url);
    assert_int_equal(c->redis->n_sentinels, 3);
    assert_string_equal(c->redis->sentinels[0].host, "10.0.0.1");
    assert_int_equal(c->redis->sentinels[0].port, 26379);
    assert_string_equal(c->redis->sentinels[1].host, "::1");
    assert_int_equal(c->redis->sentinels[1].port, 26380);
    assert_string_equal(c->redis->sentinels[2].host, "sentinel.local");
    assert_string_equal(c->redis->master_name, "cache");
    assert_string_equal(c->redis->sentinel_username, "capgate");
    assert_string_equal(c->redis->sentinel_password, "upstream-secret-key-value");
    assert_null(c->redis->password);
    {
        /* the dump masks the sentinel password and shows the addresses */
        char *dump = config_dump_masked(c);
        assert_non_null(dump);
        assert_null(strstr(dump, "upstream-secret-key-value"));
        assert_non_null(strstr(dump, "\"[::1]:26380\""));
        assert_non_null(strstr(dump, "\"sentinel_password\": \"***\""));
        free(dump);
    }
    config_free(c);
    /* with a url too: its password and db apply to the master */
    c = load_ok("{" UPSTREAM_OK ", \"redis\": {\"url\": \"redis://:pw@ignored/2\", "
                "\"sentinels\": [\"h:1\"], \"master_name\": \"m\"}}");
    assert_string_equal(c->redis->password, "pw");
    assert_int_equal(c->redis->db, 2);
    config_free(c);
}

static void test_upstream_url(void **state) {
    struct config *c = load_ok("{\"upstream\": {\"url\": \"http://mock.local:8000\", "
                               "\"secret_id\": \"i\", \"secret_key\": \"k\", \"method\": \"GET\", "
                               "\"signature_method\": \"HmacSHA1\"}}");
    assert_false(c->upstream.tls);
    assert_string_equal(c->upstream.host, "mock.local");
    assert_int_equal(c->upstream.port, 8000);
    assert_string_equal(c->upstream.path, "/");
    assert_string_equal(c->upstream.sign_host, "mock.local:8000");
    assert_false(c->upstream.post);
    assert_int_equal(c->upstream.signature_method, SIGN_HMAC_SHA1);
    assert_true(c->upstream.secret_literal);
    config_free(c);

    c = load_ok("{\"upstream\": {\"url\": \"https://[::1]/v2/index.php\", \"secret_id\": \"i\", "
                "\"secret_key\": \"k\"}, \"listen\": \"[::1]:0\"}");
    assert_string_equal(c->upstream.host, "::1");
    assert_int_equal(c->upstream.port, 443);
    assert_string_equal(c->upstream.sign_host, "[::1]");
    assert_string_equal(c->listen_host, "::1");
    assert_int_equal(c->listen_port, 0);
    config_free(c);
}

static const char *const masked_secrets[] = {
    "real-upstream-key-9f8e7d", "shop-web-key-c0ffee", "batch-token-deadbeef",
    "pii-key-12345678",         "redis-pass-778899",
};

static void test_dump_masked(void **state) {
    struct config *c = NULL;
    char err[512];
    char *dump;
    setenv("T_REDIS_PW", "redis-pass-778899", 1);
    int rc = load_shipped(CAPGATE_SOURCE_DIR "/config/capgate.example.json", &c, err, sizeof err);
    if (rc != 0) fail_msg("%s", err);
    /* A password in the url must be hidden too: load it separately below. */
    dump = config_dump_masked(c);
    assert_non_null(dump);
    for (size_t i = 0; i < sizeof masked_secrets / sizeof masked_secrets[0]; i++)
        assert_null(strstr(dump, masked_secrets[i]));
    assert_non_null(strstr(dump, "\"secret_key\": \"***\""));
    assert_non_null(strstr(dump, "\"token\": \"***\""));
    assert_non_null(strstr(dump, "\"pii_key\": \"***\""));
    assert_non_null(strstr(dump, "\"secret_id\": \"AKIDrealUpstreamId\""));
    assert_non_null(strstr(dump, "\"secret_id\": \"AKIDshopweb0000000000000000000000000\""));
    assert_non_null(strstr(dump, "\"listen\": \"127.0.0.1:8080\""));
    assert_non_null(strstr(dump, "\"name\": \"tencent-quota\""));
    assert_non_null(strstr(dump, "\"workers\": 2"));
    assert_non_null(strstr(dump, "\"max_body\": 65536"));
    free(dump);
    config_free(c);

    c = load_ok(
        "{\"upstream\": {\"secret_id\": \"i\", \"secret_key_env\": \"CAPGATE_SECRET_KEY\"}, "
        "\"redis\": {\"url\": \"redis://:redis-pass-778899@h/2\"}, \"audit\": "
        "{\"pii_key_env\": \"CAPGATE_PII_KEY\"}}");
    dump = config_dump_masked(c);
    assert_non_null(dump);
    for (size_t i = 0; i < sizeof masked_secrets / sizeof masked_secrets[0]; i++)
        assert_null(strstr(dump, masked_secrets[i]));
    assert_non_null(strstr(dump, "\"url\": \"redis://:***@h:6379/2\""));
    assert_non_null(strstr(dump, "\"password\": \"***\""));
    free(dump);
    config_free(c);
    unsetenv("T_REDIS_PW");
}

/* ---- the tables drive the dump and the reload diff ---------------------------------------- */

#define MAX_KEYS 256
#define CHANGED_SECRET_ENV "T_CHANGED_SECRET"

struct key_list {
    struct config_key k[MAX_KEYS];
    size_t n;
};

static void collect_key(const struct config_key *k, void *arg) {
    struct key_list *l = arg;
    assert_true(l->n < MAX_KEYS);
    l->k[l->n++] = *k;
}

static const char *last_segment(const char *path) {
    const char *dot = strrchr(path, '.');
    return dot ? dot + 1 : path;
}

/* Is the value at path ("apps[].token": in any element) in the JSON v? */
static int json_has_path(json_t *v, const char *path) {
    const char *dot = strchr(path, '.');
    size_t len = dot ? (size_t)(dot - path) : strlen(path);
    char seg[64];
    int list;
    json_t *child;
    assert_true(len < sizeof seg);
    memcpy(seg, path, len);
    seg[len] = '\0';
    list = len > 2 && strcmp(seg + len - 2, "[]") == 0;
    if (list) seg[len - 2] = '\0';
    if (!json_is_object(v) || !(child = json_object_get(v, seg))) return 0;
    if (!dot) return 1;
    if (!list) return json_has_path(child, dot + 1);
    for (size_t i = 0; i < json_array_size(child); i++)
        if (json_has_path(json_array_get(child, i), dot + 1)) return 1;
    return 0;
}

static json_t *example_json(void) {
    json_error_t jerr;
    json_t *root = json_load_file(CAPGATE_SOURCE_DIR "/config/capgate.example.json", 0, &jerr);
    if (!root) fail_msg("capgate.example.json: %s", jerr.text);
    return root;
}

/* One directory of fresh certificates for every load_json of this process: the example's
 * tls.cert_file and key_file are relative to it. */
static char json_certs_dir[64];

static void remove_json_certs(void) {
    char cmd[100];
    snprintf(cmd, sizeof cmd, "rm -rf %s", json_certs_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", json_certs_dir);
}

static struct config *load_json(json_t *root, char *err, size_t errlen) {
    struct config *c = NULL;
    char cwd[4096];
    char *text = json_dumps(root, 0);
    assert_non_null(text);
    if (!json_certs_dir[0]) {
        make_certs(json_certs_dir, sizeof json_certs_dir);
        atexit(remove_json_certs);
    }
    assert_non_null(getcwd(cwd, sizeof cwd));
    /* The example's paths are relative to its directory, config/, beside var/certs. */
    char config_dir[128];
    snprintf(config_dir, sizeof config_dir, "%s/config", json_certs_dir);
    if (mkdir(config_dir, 0700) != 0 && errno != EEXIST) fail_msg("mkdir %s", config_dir);
    assert_int_equal(chdir(config_dir), 0);
    if (config_load_string(text, "t.json", &c, err, errlen) != 0) c = NULL;
    assert_int_equal(chdir(cwd), 0);
    free(text);
    return c;
}

/* Every value the tables describe is in the dump of the example config (which sets every key,
 * so an absent one would be a field the dump forgets). */
static void test_dump_has_every_key(void **state) {
    struct key_list keys = {.n = 0};
    char err[512];
    json_t *root = example_json(), *dump;
    struct config *c = load_json(root, err, sizeof err);
    char *text;
    if (!c) fail_msg("%s", err);
    config_keys(collect_key, &keys);
    assert_true(keys.n > 50);
    text = config_dump_masked(c);
    assert_non_null(text);
    assert_non_null(dump = json_loads(text, 0, NULL));
    for (size_t i = 0; i < keys.n; i++)
        if (!json_has_path(dump, keys.k[i].path)) fail_msg("%s is not in the dump", keys.k[i].path);
    json_decref(dump);
    json_decref(root);
    free(text);
    config_free(c);
}

/* Where a key's value sits: its parent object in the file, and the same object in the dump
 * (the effective value when the file leaves the key out). */
struct target {
    json_t *src, *dump;
};

static void find_targets(json_t *src, json_t *dump, const char *path, struct target *t, size_t *n,
                         size_t cap) {
    const char *dot = strchr(path, '.');
    size_t len = dot ? (size_t)(dot - path) : strlen(path);
    char seg[64];
    int list;
    json_t *s, *d;
    if (!dot) {
        if (*n < cap) t[(*n)++] = (struct target){src, dump};
        return;
    }
    memcpy(seg, path, len);
    seg[len] = '\0';
    list = len > 2 && strcmp(seg + len - 2, "[]") == 0;
    if (list) seg[len - 2] = '\0';
    if (!(s = json_object_get(src, seg)) || !(d = json_object_get(dump, seg))) return;
    if (!list) {
        find_targets(s, d, dot + 1, t, n, cap);
        return;
    }
    for (size_t i = 0; i < json_array_size(s) && i < json_array_size(d); i++)
        find_targets(json_array_get(s, i), json_array_get(d, i), dot + 1, t, n, cap);
}

/* Values to try instead of cur: other enum names, the bounds, a step, a changed string or list.
 * Which of them load is for the loader to say. */
static size_t candidates(const struct config_key *k, json_t *cur, json_t **out, size_t cap) {
    size_t n = 0;
#define ADD(v) \
    do { \
        json_t *v_ = (v); \
        if (v_ && n < cap) \
            out[n++] = v_; \
        else \
            json_decref(v_); \
    } while (0)
    for (size_t i = 0; k->names && k->names[i]; i++) ADD(json_string(k->names[i]));
    if (json_is_integer(cur)) {
        json_int_t v = json_integer_value(cur);
        ADD(json_integer((json_int_t)k->min));
        if (k->max > 0) ADD(json_integer((json_int_t)k->max));
        ADD(json_integer(v + 1));
        ADD(json_integer(v - 1));
    } else if (json_is_real(cur)) {
        ADD(json_real(json_real_value(cur) * 2));
        ADD(json_real(json_real_value(cur) + 1));
    } else if (json_is_boolean(cur)) {
        ADD(json_boolean(!json_is_true(cur)));
    } else if (json_is_string(cur)) {
        char buf[512];
        const char *s = json_string_value(cur);
        size_t len = strlen(s), end = len;
        snprintf(buf, sizeof buf, "%sx", s);
        ADD(json_string(buf));
        /* the last number in it, plus one: a port, a database */
        while (end > 0 && !(s[end - 1] >= '0' && s[end - 1] <= '9')) end--;
        if (end > 0) {
            size_t start = end;
            while (start > 0 && s[start - 1] >= '0' && s[start - 1] <= '9') start--;
            snprintf(buf, sizeof buf, "%.*s%lu%s", (int)start, s, strtoul(s + start, NULL, 10) + 1,
                     s + end);
            ADD(json_string(buf));
        }
        ADD(json_pack("[i]", 7));
    } else if (json_is_array(cur)) {
        if (json_array_size(cur) > 1) {
            json_t *shorter = json_deep_copy(cur);
            if (shorter) json_array_remove(shorter, json_array_size(shorter) - 1);
            ADD(shorter);
        }
        ADD(json_pack("[i]", 7));
        ADD(json_string("*"));
    } else if (json_is_null(cur)) {
        ADD(json_string("x"));
    }
#undef ADD
    return n;
}

struct diff_seen {
    const struct config_key *k;
    size_t n;
    int outside; /* a reported path not under the key's top-level key */
    char first[256];
};

static void note_change(const char *path, const char *detail, int applied, void *arg) {
    struct diff_seen *d = arg;
    const char *top = d->k->top;
    size_t tl = strlen(top);
    if (!d->n++) snprintf(d->first, sizeof d->first, "%s %s", path, detail);
    if (strncmp(path, top, tl) != 0 || (path[tl] && path[tl] != '.' && path[tl] != '['))
        d->outside = 1;
    /* a secret's value never reaches the log */
    if (d->k->secret) assert_string_equal(detail, "changed");
    assert_null(strstr(detail, "shop-web-key"));
}

/* Loads root and compares with c0: 1 when the change was reported, under k's top-level key, as
 * applied by a reload exactly when the table says so (and nothing else was reported). */
static int try_change(const struct config_key *k, const struct config *c0, json_t *root) {
    struct diff_seen want, other;
    char err[512];
    struct config *c1 = load_json(root, err, sizeof err);
    if (!c1) return 0;
    memset(&want, 0, sizeof want);
    memset(&other, 0, sizeof other);
    want.k = other.k = k;
    config_diff(c0, c1, k->reload, note_change, &want);
    config_diff(c0, c1, !k->reload, note_change, &other);
    config_free(c1);
    if (!want.n && !other.n) return 0; /* the same value after all: try another */
    if (other.n)
        fail_msg("%s: a change was reported as %s: %s", k->path,
                 k->reload ? "needing a restart" : "applied by a reload", other.first);
    if (want.outside) fail_msg("%s: reported under another key: %s", k->path, want.first);
    return 1;
}

/* A change to a secret given as <key>, <key>_env or <key>_file: a new one from the environment. */
static int change_secret(const struct config_key *k, const struct config *c0, json_t *obj,
                         json_t *root) {
    const char *key = last_segment(k->path);
    char names[3][80];
    json_t *saved[3];
    int ok;
    snprintf(names[0], sizeof names[0], "%s", key);
    snprintf(names[1], sizeof names[1], "%s_env", key);
    snprintf(names[2], sizeof names[2], "%s_file", key);
    for (int i = 0; i < 3; i++) {
        saved[i] = json_incref(json_object_get(obj, names[i]));
        json_object_del(obj, names[i]);
    }
    json_object_set_new(obj, names[1], json_string(CHANGED_SECRET_ENV));
    /* set again each time: loading a secret from it takes it out of the environment */
    setenv(CHANGED_SECRET_ENV, "changed-secret-value-1", 1);
    ok = try_change(k, c0, root);
    json_object_del(obj, names[1]);
    for (int i = 0; i < 3; i++)
        if (saved[i]) json_object_set_new(obj, names[i], saved[i]);
    return ok;
}

/* Keys that cannot change alone: apps[].auth takes the other kind of credential with it. */
static int change_special(const struct config_key *k, const struct config *c0, json_t *root) {
    if (strcmp(k->path, "tls") == 0) {
        /* another valid pair of files: the test CA's own certificate and key */
        json_t *copy = json_deep_copy(root);
        int ok;
        assert_non_null(copy);
        json_object_set_new(copy, "tls",
                            json_pack("{s:s, s:s}", "cert_file", "../var/certs/ca.pem", "key_file",
                                      "../var/certs/ca.key"));
        ok = try_change(k, c0, copy);
        json_decref(copy);
        return ok;
    }
    if (strcmp(k->path, "limits[].app") == 0) {
        /* another app of apps[]: a name that is none would not load */
        json_t *copy = json_deep_copy(root), *rules, *r;
        size_t i;
        int ok = 0;
        assert_non_null(copy);
        rules = json_object_get(copy, "limits");
        json_array_foreach(rules, i, r) {
            if (json_object_get(r, "app")) {
                json_object_set_new(r, "app", json_string("shop-web"));
                ok = try_change(k, c0, copy);
                break;
            }
        }
        json_decref(copy);
        return ok;
    }
    if (strcmp(k->path, "upstream.resolver") == 0) {
        /* null in the example (the system's resolver): a nameserver of its own */
        json_t *copy = json_deep_copy(root);
        int ok;
        assert_non_null(copy);
        json_object_set_new(json_object_get(copy, "upstream"), "resolver",
                            json_string("127.0.0.1:5353 [::1]:53"));
        ok = try_change(k, c0, copy);
        json_decref(copy);
        return ok;
    }
    if (strcmp(k->path, "apps[].auth") == 0) {
        json_t *copy = json_deep_copy(root), *app;
        int ok;
        assert_non_null(copy);
        app = json_array_get(json_object_get(copy, "apps"), 1); /* batch-job, a token app */
        assert_string_equal(json_string_value(json_object_get(app, "auth")), "token");
        json_object_del(app, "token_env");
        json_object_set_new(app, "auth", json_string("signature"));
        json_object_set_new(app, "secret_id", json_string("AKIDbatchjob00000000000000000000000"));
        json_object_set_new(app, "secret_key_env", json_string("SHOP_WEB_KEY"));
        ok = try_change(k, c0, copy);
        json_decref(copy);
        return ok;
    }
    return 0;
}

/* For every value the tables describe: a valid change to it (made in the example config) is
 * reported by config_diff, as applied by SIGHUP when the table says F_RELOAD and as needing a
 * restart otherwise. A key added to a table is covered without touching this test. */
static void test_reload_diff_covers_every_key(void **state) {
    struct key_list keys = {.n = 0};
    char err[512];
    json_t *root = example_json(), *dump;
    struct config *c0 = load_json(root, err, sizeof err);
    char *text;
    if (!c0) fail_msg("%s", err);
    setenv(CHANGED_SECRET_ENV, "changed-secret-value-1", 1);
    text = config_dump_masked(c0);
    assert_non_null(text);
    assert_non_null(dump = json_loads(text, 0, NULL));
    free(text);
    config_keys(collect_key, &keys);
    for (size_t i = 0; i < keys.n; i++) {
        const struct config_key *k = &keys.k[i];
        const char *leaf = last_segment(k->path);
        struct target t[16];
        size_t nt = 0;
        int done = change_special(k, c0, root);
        find_targets(root, dump, k->path, t, &nt, 16);
        for (size_t j = 0; j < nt && !done; j++) {
            json_t *cur, *cand[16], *saved;
            size_t nc;
            if (k->env_file) {
                done = change_secret(k, c0, t[j].src, root);
                continue;
            }
            cur = json_object_get(t[j].src, leaf);
            if (!cur) cur = json_object_get(t[j].dump, leaf);
            if (!cur) continue;
            saved = json_incref(json_object_get(t[j].src, leaf));
            nc = candidates(k, cur, cand, 16);
            for (size_t m = 0; m < nc; m++) {
                if (!done) {
                    json_object_set(t[j].src, leaf, cand[m]);
                    done = try_change(k, c0, root);
                }
                json_decref(cand[m]);
            }
            if (saved)
                json_object_set_new(t[j].src, leaf, saved);
            else
                json_object_del(t[j].src, leaf);
        }
        if (!done)
            fail_msg("%s: no change to it loads and is reported by config_diff (a custom field "
                     "without dump/same hooks, or a key that needs a case in change_special)",
                     k->path);
    }
    unsetenv(CHANGED_SECRET_ENV);
    json_decref(dump);
    json_decref(root);
    config_free(c0);
}

struct change_log {
    char text[1024];
    size_t n;
};

static void log_change(const char *path, const char *detail, int applied, void *arg) {
    struct change_log *l = arg;
    size_t used = strlen(l->text);
    snprintf(l->text + used, sizeof l->text - used, "%s%s %s%s", l->n++ ? "; " : "", path, detail,
             applied ? "" : " (restart)");
}

/* What the reload log says for lists: apps and limits by name, the order of limits, profiles by
 * index; a secret never shows its value. */
static void test_reload_diff_lists(void **state) {
    char err[512];
    json_t *src = example_json(), *limits = json_object_get(src, "limits");
    json_t *apps = json_object_get(src, "apps");
    struct config *c0 = load_json(src, err, sizeof err), *c1;
    struct change_log l;
    if (!c0) fail_msg("%s", err);
    /* limits 0 and 1 swapped: the same rules, another order (the first that fires wins) */
    json_t *first = json_incref(json_array_get(limits, 0));
    json_array_remove(limits, 0);
    json_array_insert_new(limits, 1, first);
    /* an app renamed, one changed (its secret), a profile's size */
    json_object_set_new(json_array_get(apps, 0), "name", json_string("shop-app"));
    json_object_set_new(json_array_get(apps, 1), "token_env", json_string("SHOP_WEB_KEY"));
    json_object_set_new(
        json_array_get(json_object_get(json_object_get(src, "pool"), "profiles"), 0), "size",
        json_integer(11));
    json_object_set_new(src, "workers", json_integer(3));
    if (!(c1 = load_json(src, err, sizeof err))) fail_msg("%s", err);
    memset(&l, 0, sizeof l);
    assert_int_equal(config_diff(c0, c1, 1, log_change, &l), 5);
    assert_string_equal(l.text, "apps[shop-app] added; apps[batch-job] changed; "
                                "apps[shop-web] removed; limits reordered; "
                                "pool.profiles[0] changed");
    memset(&l, 0, sizeof l);
    assert_int_equal(config_diff(c0, c1, 0, log_change, &l), 1);
    assert_string_equal(l.text, "workers 2 -> 3 (restart)");
    memset(&l, 0, sizeof l);
    assert_int_equal(config_diff(c0, c0, 1, log_change, &l), 0);
    assert_int_equal(config_diff(c0, c0, 0, log_change, &l), 0);
    json_decref(src);
    config_free(c0);
    config_free(c1);
}

/* The dump is the config: with each masked secret given again the way the file gives it (its
 * <key>_env / <key>_file), the dump loads, compares equal in every key and dumps the same. */
static void unmask(json_t *dump, json_t *src) {
    const char *key;
    json_t *v;
    void *tmp;
    char alt[96];
    if (json_is_array(dump)) {
        for (size_t i = 0; i < json_array_size(dump); i++)
            unmask(json_array_get(dump, i), json_array_get(src, i));
        return;
    }
    if (!json_is_object(dump) || !json_is_object(src)) return;
    json_object_foreach_safe(dump, tmp, key, v) {
        static const char *const suffixes[] = {"_env", "_file"};
        unmask(v, json_object_get(src, key));
        if (json_object_get(src, key)) continue;
        for (int i = 0; i < 2; i++) {
            snprintf(alt, sizeof alt, "%s%s", key, suffixes[i]);
            if (!json_object_get(src, alt)) continue;
            json_object_del(dump, key);
            json_object_set(dump, alt, json_object_get(src, alt));
            break;
        }
    }
}

static void test_dump_loads_back(void **state) {
    struct diff_seen none;
    struct config_key any = {.top = ""};
    char err[512], *first, *second;
    json_t *src = example_json(), *dump;
    struct config *c0 = load_json(src, err, sizeof err), *c1;
    if (!c0) fail_msg("%s", err);
    first = config_dump_masked(c0);
    assert_non_null(first);
    assert_non_null(dump = json_loads(first, 0, NULL));
    unmask(dump, src);
    if (!(c1 = load_json(dump, err, sizeof err))) fail_msg("the dump does not load: %s", err);
    memset(&none, 0, sizeof none);
    none.k = &any;
    assert_int_equal(config_diff(c0, c1, 1, note_change, &none), 0);
    assert_int_equal(config_diff(c0, c1, 0, note_change, &none), 0);
    second = config_dump_masked(c1);
    assert_non_null(second);
    assert_string_equal(second, first);
    free(first);
    free(second);
    json_decref(dump);
    json_decref(src);
    config_free(c0);
    config_free(c1);
}

/* The README's table of what SIGHUP applies, as the tables say it. */
static void test_reload_keys_match_readme(void **state) {
    static const char *const applied[] = {"tls",
                                          "trusted_proxies",
                                          "http_errors",
                                          "on_store_error",
                                          "auth",
                                          "apps",
                                          "limits",
                                          "captcha_apps",
                                          "pool",
                                          "idempotency",
                                          "demo",
                                          "demo_app",
                                          "demo_tcaptcha_url",
                                          "demo_captcha_app_id",
                                          "log_level",
                                          "redis"};
    static const char *const restart[] = {"listen",  "tls_listen", "admin_listen", "admin",
                                          "workers", "upstream",   "audit",        "metrics",
                                          "http",    "instance",   "log_format"};
    struct key_list keys = {.n = 0};
    config_keys(collect_key, &keys);
    for (size_t i = 0; i < keys.n; i++) {
        int found = 0;
        /* under a key SIGHUP applies, one that still needs a restart (README says so) */
        if (strcmp(keys.k[i].path, "redis.key_prefix") == 0) {
            assert_false(keys.k[i].reload);
            continue;
        }
        for (size_t j = 0; j < sizeof applied / sizeof *applied; j++)
            if (strcmp(keys.k[i].top, applied[j]) == 0) found = 1, assert_true(keys.k[i].reload);
        for (size_t j = 0; j < sizeof restart / sizeof *restart; j++)
            if (strcmp(keys.k[i].top, restart[j]) == 0) found = 1, assert_false(keys.k[i].reload);
        if (!found)
            fail_msg("%s: a new top-level key; add it to the README's SIGHUP table and "
                     "here",
                     keys.k[i].top);
    }
}

static void test_lookups(void **state) {
    struct config *c =
        load_ok("{" UPSTREAM_OK ", \"apps\": ["
                "{\"name\": \"sig\", \"auth\": \"signature\", \"secret_id\": \"AKIDone\", "
                "\"secret_key\": \"k\"},"
                "{\"name\": \"tok1\", \"auth\": \"token\", \"token\": \"abcdef\"},"
                "{\"name\": \"tok2\", \"auth\": \"token\", \"token\": \"abcdeg\"},"
                "{\"name\": \"tok3\", \"auth\": \"token\", \"token\": \"abcdefgh\"}]}");
    const struct config_app *a;
    a = config_find_app_by_token(c, "abcdef", 6);
    assert_non_null(a);
    assert_string_equal(a->name, "tok1");
    a = config_find_app_by_token(c, "abcdegXX", 6); /* length given, not NUL */
    assert_non_null(a);
    assert_string_equal(a->name, "tok2");
    a = config_find_app_by_token(c, "abcdefgh", 8);
    assert_non_null(a);
    assert_string_equal(a->name, "tok3");
    assert_null(config_find_app_by_token(c, "abcdefg", 7));
    assert_null(config_find_app_by_token(c, "", 0));
    assert_null(config_find_app_by_token(c, "AKIDone", 7)); /* a secret id is no token */
    a = config_find_app_by_secret_id(c, "AKIDone");
    assert_non_null(a);
    assert_string_equal(a->name, "sig");
    assert_null(config_find_app_by_secret_id(c, "AKIDtwo"));
    assert_null(config_find_app_by_secret_id(c, NULL));
    config_free(c);
}

struct warn_log {
    char text[4096];
    int count;
};

static void collect(const char *msg, void *arg) {
    struct warn_log *w = arg;
    size_t used = strlen(w->text);
    snprintf(w->text + used, sizeof w->text - used, "%s\n", msg);
    w->count++;
}

static void test_warnings(void **state) {
    struct warn_log w = {{0}, 0};
    struct config *c = load_ok(
        "{\"upstream\": {\"secret_id\": \"i\", \"secret_key\": \"k\", \"verify_tls\": false},"
        " \"apps\": [{\"name\": \"t\", \"auth\": \"token\", \"token\": \"x\"}],"
        " \"on_store_error\": \"allow\", \"demo\": true}");
    config_warnings(c, collect, &w);
    assert_int_equal(w.count, 6);
    assert_non_null(strstr(w.text, "upstream.verify_tls is false"));
    assert_non_null(strstr(w.text, "upstream.secret_key is written in the config file"));
    assert_non_null(strstr(w.text, "apps[0] (\"t\"): the token is written in the config file"));
    assert_non_null(strstr(w.text, "per-process random key"));
    assert_non_null(strstr(w.text, "on_store_error is \"allow\""));
    assert_non_null(strstr(w.text, "demo is true"));
    config_free(c);

    memset(&w, 0, sizeof w);
    c = load_ok(
        "{" UPSTREAM_OK ", \"apps\": [{\"name\": \"t\", \"auth\": \"token\", "
        "\"token_env\": \"BATCH_TOKEN\"}], \"audit\": {\"pii_key_env\": \"CAPGATE_PII_KEY\"}}");
    config_warnings(c, collect, &w);
    assert_int_equal(w.count, 0);
    config_free(c);
}

#define DEMO_APPS \
    "\"apps\": [{\"name\": \"s\", \"auth\": \"signature\", \"secret_id\": " \
    "\"S\", \"secret_key\": \"k\"}, {\"name\": \"t1\", \"auth\": \"token\", \"token\": \"x\"}, " \
    "{\"name\": \"t2\", \"auth\": \"token\", \"token\": \"y\"}]"

static void test_demo_app(void **state) {
    struct config *c = load_ok("{" UPSTREAM_OK ", " DEMO_APPS ", \"demo\": true}");
    assert_string_equal(c->demo_app, "t1"); /* default: the first token app */
    config_free(c);
    c = load_ok("{" UPSTREAM_OK ", " DEMO_APPS ", \"demo\": true, \"demo_app\": \"t2\"}");
    assert_string_equal(c->demo_app, "t2");
    config_free(c);
    /* demo off: demo_app is not checked, and no default is picked */
    c = load_ok("{" UPSTREAM_OK ", \"demo_app\": \"nobody\"}");
    assert_false(c->demo);
    assert_string_equal(c->demo_app, "nobody");
    config_free(c);
    c = load_ok("{" UPSTREAM_OK ", " DEMO_APPS "}");
    assert_null(c->demo_app);
    config_free(c);

    expect_error("{" UPSTREAM_OK ", " DEMO_APPS ",\n\"demo\": true, \"demo_app\": \"t3\"}",
                 "t.json:2:15: demo_app: no app is named \"t3\"");
    expect_error("{" UPSTREAM_OK ", " DEMO_APPS ",\n\"demo\": true, \"demo_app\": \"s\"}",
                 "t.json:2:15: demo_app: app \"s\" authenticates by signature; the /demo page "
                 "needs a token app");
    expect_error("{" UPSTREAM_OK ",\n\"demo\": true}",
                 "t.json:2:1: demo: is true but no app has \"auth\": \"token\"; the /demo page "
                 "calls the front API as a token app");
    expect_error("{" UPSTREAM_OK ", \"demo_app\": 7}",
                 "t.json:1:69: demo_app: must be a non-empty string or null; got 7");
}

/* App and limit rule names are 1..64 bytes of [A-Za-z0-9._-] and key_prefix at most 64 bytes,
 * so every key, record field and label built from them fits whole. */
#define NAME64 "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._"
#define NAME_RULE "must be 1 to 64 bytes of A-Z, a-z, 0-9, '.', '_' and '-'; got "

static void test_name_bounds(void **state) {
    struct config *c;
    (void)state;
    assert_int_equal(strlen(NAME64), 64);
    c = load_ok("{" UPSTREAM_OK ",\n\"apps\": [{\"name\": \"" NAME64 "\", \"auth\": \"token\", "
                "\"token\": \"t\"}],\n\"limits\": [{\"name\": \"" NAME64 "\", \"rate\": 1}],\n"
                "\"redis\": {\"url\": \"redis://127.0.0.1\", \"key_prefix\": \"" NAME64 "\"}}");
    assert_string_equal(c->apps[0].name, NAME64);
    assert_string_equal(c->limits[0].name, NAME64);
    assert_string_equal(c->redis->key_prefix, NAME64);
    config_free(c);

    expect_error("{" UPSTREAM_OK ",\n\"apps\": [{\"name\": \"" NAME64 "-\", \"auth\": "
                 "\"token\", \"token\": \"t\"}]}",
                 "t.json:2:11: apps[0].name: " NAME_RULE "\"abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"
                 "KLMNOPQRSTUVWXYZ0123...");
    expect_error("{" UPSTREAM_OK ",\n\"apps\": [{\"name\": \"shop web\", \"auth\": \"token\", "
                 "\"token\": \"t\"}]}",
                 "t.json:2:11: apps[0].name: " NAME_RULE "\"shop web\"");
    expect_error("{" UPSTREAM_OK ",\n\"apps\": [{\"name\": \"\", \"auth\": \"token\", "
                 "\"token\": \"t\"}]}",
                 "t.json:2:11: apps[0].name: " NAME_RULE "\"\"");
    expect_error("{" UPSTREAM_OK ",\n\"limits\": [{\"name\": \"ok\", \"rate\": 1},\n"
                 "  {\"name\": \"a:b\", \"rate\": 1}]}",
                 "t.json:3:4: limits[1].name: " NAME_RULE "\"a:b\"");
    expect_error("{" UPSTREAM_OK ",\n\"limits\": [{\"name\": \"" NAME64 "x\", \"rate\": 1}]}",
                 "t.json:2:13: limits[0].name: " NAME_RULE "\"abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"
                 "KLMNOPQRSTUVWXYZ0123...");
    expect_error("{" UPSTREAM_OK ",\n\"redis\": {\"url\": \"redis://127.0.0.1\", "
                 "\"key_prefix\": \"" NAME64 ":\"}}",
                 "t.json:2:39: redis.key_prefix: must be at most 64 bytes; got 65");
}

/* Every app and global rule is a bucket of every request: at most 15 of them (with one params
 * rule, 16 buckets). */
static void test_scoped_limits_bound(void **state) {
    char text[4096];
    size_t used;
    struct config *c;
    (void)state;
    for (int n = 15; n <= 16; n++) {
        used = (size_t)snprintf(text, sizeof text,
                                "{" UPSTREAM_OK ",\n\"limits\": [\n"
                                "{\"name\": \"p\", \"rate\": 1}");
        for (int i = 0; i < n; i++)
            used += (size_t)snprintf(text + used, sizeof text - used,
                                     ",\n{\"name\": \"s%d\", \"scope\": \"%s\", \"rate\": 1}", i,
                                     i % 2 ? "app" : "global");
        snprintf(text + used, sizeof text - used, "]}");
        if (n == 15) {
            c = load_ok(text);
            assert_int_equal(c->n_limits, 16);
            config_free(c);
        } else {
            expect_error(text, "t.json:19:1: limits[16]: more than 15 rules with scope \"app\" or "
                               "\"global\"");
        }
    }
}

/* A rule may name an app: of apps[], never on a global rule; the bound on scoped rules counts
 * per app, since another app's own rules are not buckets of its requests. */
#define APP_TOKEN(n) "{\"name\": \"" n "\", \"auth\": \"token\", \"token\": \"t-" n "\"}"
static void test_limit_app(void **state) {
    char text[8192];
    size_t used;
    struct config *c;
    char *dump;
    (void)state;
    c = load_ok("{" UPSTREAM_OK ",\n\"apps\": [" APP_TOKEN(
        "partner-42") "],\n"
                      "\"limits\": [{\"name\": \"p42\", \"scope\": \"app\", \"app\": "
                      "\"partner-42\", "
                      "\"rate\": 5},\n{\"name\": \"p42-login\", \"app\": \"partner-42\", "
                      "\"businessId\": 1, \"rate\": 2}, {\"name\": \"all\", \"rate\": 9}]}");
    assert_string_equal(c->limits[0].app, "partner-42");
    assert_string_equal(c->limits[1].app, "partner-42");
    assert_null(c->limits[2].app);
    dump = config_dump_masked(c);
    assert_non_null(strstr(dump, "\"app\": \"partner-42\""));
    free(dump);
    config_free(c);
    expect_error("{" UPSTREAM_OK
                 ",\n\"apps\": [" APP_TOKEN("a") "],\n"
                                                 "\"limits\": [{\"name\": \"x\", \"scope\": "
                                                 "\"app\", \"app\": \"b\", \"rate\": 1}]}",
                 "t.json:3:42: limits[0].app: no app is named \"b\"");
    expect_error("{" UPSTREAM_OK ",\n\"apps\": [" APP_TOKEN(
                     "a") "],\n"
                          "\"limits\": [{\"name\": \"x\", \"scope\": \"global\", \"app\": \"a\", "
                          "\"rate\": 1}]}",
                 "t.json:3:45: limits[0].app: only for rules with scope \"app\" or \"params\" (a "
                 "global rule counts every app's requests together)");
    expect_error("{" UPSTREAM_OK ",\n\"apps\": [" APP_TOKEN(
                     "a") "],\n"
                          "\"limits\": [{\"name\": \"x\", \"app\": \"no space\", \"rate\": 1}]}",
                 "t.json:3:26: limits[0].app: must be 1 to 64 bytes of A-Z, a-z, 0-9, '.', '_' and "
                 "'-'; got \"no space\"");
    /* 14 unnamed scoped rules: one app may have one of its own, not two; other apps' own rules
     * do not count */
    for (int own = 1; own <= 2; own++) {
        used = (size_t)snprintf(text, sizeof text,
                                "{" UPSTREAM_OK ",\n\"apps\": [" APP_TOKEN("a") ", " APP_TOKEN(
                                    "b") "],\n\"limits\": [{\"name\": \"p\", \"rate\": 1}");
        for (int i = 0; i < 14; i++)
            used += (size_t)snprintf(text + used, sizeof text - used,
                                     ", {\"name\": \"s%d\", \"scope\": \"app\", \"rate\": 1}", i);
        for (int i = 0; i < own; i++)
            used += (size_t)snprintf(text + used, sizeof text - used,
                                     ", {\"name\": \"a%d\", \"scope\": \"app\", \"app\": \"a\", "
                                     "\"rate\": 1}, {\"name\": \"b%d\", \"scope\": \"app\", "
                                     "\"app\": \"b\", \"rate\": 1}",
                                     i, i);
        snprintf(text + used, sizeof text - used, "]}");
        if (own == 1) {
            c = load_ok(text);
            config_free(c);
        } else {
            expect_error(text,
                         "t.json:3:675: limits[15].app: app \"a\" falls under 16 rules with scope "
                         "\"app\" or \"global\"; the limit is 15");
        }
    }
}

/* Two profiles equal in every parameter (size aside) would share one pool list. */
#define PROFILE_A \
    "\"captchaType\": 9, \"disturbLevel\": 1, \"isHttps\": 1, \"clientType\": 2, " \
    "\"accountType\": 0"
static void test_duplicate_profiles(void **state) {
    struct config *c;
    (void)state;
    c = load_ok("{" UPSTREAM_OK ",\n\"pool\": {\"profiles\": [\n {" PROFILE_A
                ", \"businessId\": 1},"
                "\n {" PROFILE_A ", \"businessId\": 2},\n {" PROFILE_A "},\n {" PROFILE_A
                ", \"sceneId\": 1}]}}");
    assert_int_equal(c->pool.n_profiles, 4);
    config_free(c);
    expect_error("{" UPSTREAM_OK ",\n\"pool\": {\"profiles\": [\n {" PROFILE_A ", \"size\": 5},\n"
                 " {" PROFILE_A ", \"businessId\": 1},\n {\"size\": 7, " PROFILE_A "}]}}",
                 "t.json:5:2: pool.profiles[2]: the same profile as pool.profiles[0]");
}

/* The HTTPS front: both listeners, HTTPS only, and a certificate that does not load refused by
 * the loader (so by --check-config and by a reload) with OpenSSL's reason. */
static void test_tls_front(void **state) {
    char dir[64], text[2048], err[512];
    struct config *c = NULL;
    make_certs(dir, sizeof dir);
    snprintf(text, sizeof text,
             "{" UPSTREAM_OK ", \"tls_listen\": \"[::1]:8443\", \"tls\": "
             "{\"cert_file\": \"%s/var/certs/server.pem\", \"key_file\": "
             "\"%s/var/certs/server.key\"}}",
             dir, dir);
    c = load_ok(text);
    assert_string_equal(c->listen_host, "127.0.0.1");
    assert_string_equal(c->tls_listen_host, "::1");
    assert_int_equal(c->tls_listen_port, 8443);
    char *dump = config_dump_masked(c);
    assert_non_null(strstr(dump, "\"tls_listen\": \"[::1]:8443\""));
    assert_non_null(strstr(dump, "server.key"));
    free(dump);
    config_free(c);

    snprintf(text, sizeof text,
             "{" UPSTREAM_OK ", \"listen\": null, \"tls_listen\": "
             "\"127.0.0.1:0\", \"tls\": {\"cert_file\": \"%s/var/certs/server.pem\", "
             "\"key_file\": \"%s/var/certs/server.key\"}}",
             dir, dir);
    c = load_ok(text);
    assert_null(c->listen_host);
    dump = config_dump_masked(c);
    assert_non_null(strstr(dump, "\"listen\": null"));
    free(dump);
    config_free(c);

    /* the CA's key does not match the server certificate */
    snprintf(text, sizeof text,
             "{" UPSTREAM_OK ", \"tls_listen\": \"127.0.0.1:0\", \"tls\": "
             "{\"cert_file\": \"%s/var/certs/server.pem\", \"key_file\": "
             "\"%s/var/certs/ca.key\"}}",
             dir, dir);
    c = (struct config *)1;
    assert_int_equal(config_load_string(text, "t.json", &c, err, sizeof err), -1);
    assert_null(c);
    if (!strstr(err, "ca.key: ") || !strstr(err, "mismatch")) fail_msg("%s", err);
    snprintf(text, sizeof text,
             "{" UPSTREAM_OK ", \"tls_listen\": \"127.0.0.1:0\", \"tls\": "
             "{\"cert_file\": \"%s/var/certs/missing.pem\", \"key_file\": "
             "\"%s/var/certs/server.key\"}}",
             dir, dir);
    assert_int_equal(config_load_string(text, "t.json", &c, err, sizeof err), -1);
    assert_non_null(strstr(err, "tls: cannot open "));
    assert_non_null(strstr(err, "missing.pem"));
    remove_dir(dir);
}

static void collect_warning(const char *msg, void *arg) {
    char *seen = arg;
    strncat(seen, msg, 2047 - strlen(seen));
}

static void test_trusted_proxies(void **state) {
    struct config *c = load_ok("{" UPSTREAM_OK ", \"trusted_proxies\": [\"10.0.0.0/8\", "
                               "\"192.168.1.7\", \"fd00::/8\", \"0.0.0.0/0\"]}");
    struct net_addr a;
    assert_int_equal(c->n_trusted_proxies, 4);
    assert_int_equal(c->trusted_proxies[1].prefix, 32);
    assert_int_equal(net_parse_addr("10.200.3.4", 10, &a), 0);
    assert_true(net_cidr_match(&c->trusted_proxies[0], &a));
    assert_false(net_cidr_match(&c->trusted_proxies[1], &a));
    assert_false(net_cidr_match(&c->trusted_proxies[2], &a));
    assert_true(net_cidr_match(&c->trusted_proxies[3], &a));
    char *dump = config_dump_masked(c);
    assert_non_null(strstr(dump, "\"192.168.1.7/32\""));
    assert_non_null(strstr(dump, "\"fd00::/8\""));
    free(dump);
    config_free(c);
    c = load_ok("{" UPSTREAM_OK "}");
    assert_int_equal(c->n_trusted_proxies, 0);
    config_free(c);
    /* a /0 block is allowed, and warned about */
    c = load_ok("{" UPSTREAM_OK ", \"trusted_proxies\": [\"::/0\"]}");
    char seen[2048] = "";
    config_warnings(c, collect_warning, seen);
    assert_non_null(strstr(seen, "trusted_proxies[0] is a /0 block: every IPv6 client"));
    config_free(c);
}

/* http.max_connections: 0 by default (derived from RLIMIT_NOFILE at start), 1..1048576. */
static void test_http_max_connections(void **state) {
    struct config *c = load_ok("{" UPSTREAM_OK "}");
    assert_int_equal(c->http.max_connections, 0);
    config_free(c);
    c = load_ok("{" UPSTREAM_OK ", \"http\": {\"max_connections\": 500}}");
    assert_int_equal(c->http.max_connections, 500);
    char *dump = config_dump_masked(c);
    assert_non_null(dump);
    assert_non_null(strstr(dump, "\"max_connections\": 500"));
    free(dump);
    config_free(c);
    c = load_ok("{" UPSTREAM_OK ", \"http\": {\"max_connections\": 0}}");
    assert_int_equal(c->http.max_connections, 0); /* the derived default, as the dump shows it */
    config_free(c);
    expect_error("{" UPSTREAM_OK ", \"http\": {\"max_connections\": 1048577}}",
                 "t.json:1:78: http.max_connections: must be between 0 and 1048576; got 1048577");
}

static void count_warning(const char *msg, void *arg) {
    if (strstr(msg, "admin_listen")) ++*(int *)arg;
}

/* A loopback admin listener needs nothing; another one starts with a token (no warning) or with
 * allow_unauthenticated (warned). */
static void test_admin_token(void **state) {
    int warned = 0;
    struct config *c = load_ok("{" UPSTREAM_OK ", \"admin_listen\": \"[::1]:0\"}");
    assert_null(c->admin.token);
    config_free(c);
    setenv("T_ADMIN_TOKEN", "s3cret-admin", 1);
    c = load_ok("{" UPSTREAM_OK ", \"admin_listen\": \"0.0.0.0:0\", "
                "\"admin\": {\"token_env\": \"T_ADMIN_TOKEN\"}}");
    assert_string_equal(c->admin.token, "s3cret-admin");
    config_warnings(c, count_warning, &warned);
    assert_int_equal(warned, 0);
    char *dump = config_dump_masked(c);
    assert_non_null(dump);
    assert_null(strstr(dump, "s3cret-admin"));
    assert_non_null(strstr(dump, "\"token\": \"***\""));
    free(dump);
    config_free(c);
    unsetenv("T_ADMIN_TOKEN");
    c = load_ok("{" UPSTREAM_OK ", \"admin_listen\": \"0.0.0.0:0\", "
                "\"admin\": {\"allow_unauthenticated\": true}}");
    config_warnings(c, count_warning, &warned);
    assert_int_equal(warned, 1);
    config_free(c);
}

/* ---- secrets kept out of errors, the environment and dumps ---- */

/* err must hold none of the given strings, and no control byte. */
static void assert_err_clean(const char *err, const char *const *secrets) {
    for (const char *p = err; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) fail_msg("control byte in: %s", err);
    for (size_t i = 0; secrets[i]; i++)
        if (strstr(err, secrets[i])) fail_msg("the error shows \"%s\": %s", secrets[i], err);
}

static void test_errors_hide_secrets(void **state) {
    struct config *c = NULL;
    char err[512];
    /* A literal secret with a control character: jansson's "near '...'" would quote it. */
    const char *ctl = "{\n  \"upstream\": {\"secret_id\": \"AKIDup\",\n"
                      "    \"secret_key\": \"lit-secret-9f3c\x01tail\"}\n}";
    assert_int_equal(config_load_string(ctl, "t.json", &c, err, sizeof err), -1);
    assert_null(c);
    assert_err_clean(err, (const char *const[]){"lit-secret", "9f3c", "tail", NULL});
    assert_non_null(strstr(err, "t.json:3:"));
    assert_non_null(strstr(err, "syntax error: control character"));

    /* The same as an invalid token (a secret written without quotes). */
    const char *bare = "{\"upstream\": {\"secret_id\": \"AKIDup\", \"secret_key\": s3cretBare}}";
    assert_int_equal(config_load_string(bare, "t.json", &c, err, sizeof err), -1);
    assert_err_clean(err, (const char *const[]){"s3cretBare", "s3cret", NULL});

    /* A secret of the wrong type: named by its type, not echoed. */
    expect_error("{\"upstream\": {\"secret_id\": \"AKIDup\", \"secret_key\": 12345678901}}",
                 "t.json:1:38: upstream.secret_key: must be a non-empty string; got an integer "
                 "(not shown: a secret)");
    const char *types[] = {"[\"arr-secret-1\"]", "{\"k\": \"obj-secret-1\"}", "1.5e3", "true"};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++) {
        char text[256];
        snprintf(text, sizeof text,
                 "{" UPSTREAM_OK ", \"apps\": [{\"name\": \"a\", "
                 "\"auth\": \"token\", \"token\": %s}]}",
                 types[i]);
        assert_int_equal(config_load_string(text, "t.json", &c, err, sizeof err), -1);
        assert_err_clean(err,
                         (const char *const[]){"arr-secret", "obj-secret", "1.5", "1500", NULL});
        assert_non_null(strstr(err, "apps[0].token: must be a non-empty string; got "));
    }

    /* A redis url that is refused is not echoed when it holds a password. */
    const char *url = "{" UPSTREAM_OK ", \"redis\": {\"url\": \"redis://:pw-in-url-77@h:99999\"}}";
    assert_int_equal(config_load_string(url, "t.json", &c, err, sizeof err), -1);
    assert_err_clean(err, (const char *const[]){"pw-in-url-77", NULL});
    assert_non_null(strstr(err, "redis.url: must be redis://"));
    /* an upstream url with user:password@ too */
    const char *up = "{\"upstream\": {\"url\": \"https://user:up-pw-55@h/v2\", \"secret_id\": "
                     "\"AKIDup\", \"secret_key_env\": \"T_UP_KEY\"}}";
    assert_int_equal(config_load_string(up, "t.json", &c, err, sizeof err), -1);
    assert_err_clean(err, (const char *const[]){"up-pw-55", "user:", NULL});

    /* A DEL in a value shown back is escaped as JSON would escape a control character. */
    expect_error("{\"log_level\": \"de\x7f"
                 "bug\"}",
                 "t.json:1:2: log_level: must be \"debug\", \"info\", \"warn\" or \"error\"; "
                 "got \"de\\u007fbug\"");
    /* So is one in a variable's name (found by fuzz_config). */
    expect_error("{\"upstream\": {\"secret_id\": \"AKIDup\", \"secret_key_env\": \"T_\x7f\"}}",
                 "t.json:1:38: upstream.secret_key_env: environment variable T_\\x7F is not set "
                 "(a secret added after start goes in secret_key_file)");
    /* And in demo_app's name (found by fuzz_config). */
    {
        struct config *d = NULL;
        char e[512];
        assert_int_equal(config_load_string("{" UPSTREAM_OK ", \"demo\": true, \"demo_app\": "
                                            "\"no\x7f"
                                            "pe\"}",
                                            "t.json", &d, e, sizeof e),
                         -1);
        assert_non_null(strstr(e, "demo_app: no app is named \"no\\x7Fpe\""));
    }
    /* A control byte in an unknown key's name is shown as \xNN. */
    expect_error("{\"work\\u0001ers\": 2}", "t.json:1:2: work\\x01ers: unknown key");
}

/* A secret read from the environment leaves it (and its text there is wiped); a second load
 * naming the same variable (a SIGHUP reload) gets the value read first; a value set again is
 * read again. */
static void test_env_secret_removed(void **state) {
    const char *text = "{\"upstream\": {\"secret_id\": \"AKIDup\", "
                       "\"secret_key_env\": \"T_ENV_TAKEN\"}}";
    setenv("T_ENV_TAKEN", "env-secret-first-31", 1);
    char *in_env = getenv("T_ENV_TAKEN");
    struct config *c = load_ok(text);
    assert_string_equal(c->upstream.secret_key, "env-secret-first-31");
    assert_null(getenv("T_ENV_TAKEN"));
    for (size_t i = 0; i < strlen("env-secret-first-31"); i++) assert_int_equal(in_env[i], 0);
    for (char **e = environ; *e; e++) assert_null(strstr(*e, "env-secret-first"));
    config_free(c);

    c = load_ok(text); /* the reload */
    assert_string_equal(c->upstream.secret_key, "env-secret-first-31");
    config_free(c);

    setenv("T_ENV_TAKEN", "env-secret-second-32", 1);
    c = load_ok(text);
    assert_string_equal(c->upstream.secret_key, "env-secret-second-32");
    assert_null(getenv("T_ENV_TAKEN"));
    config_free(c);

    /* Two keys naming one variable both get it. */
    setenv("T_ENV_SHARED", "env-shared-33", 1);
    c = load_ok("{\"upstream\": {\"secret_id\": \"AKIDup\", \"secret_key_env\": \"T_ENV_SHARED\"},"
                " \"apps\": [{\"name\": \"a\", \"auth\": \"token\", \"token_env\": "
                "\"T_ENV_SHARED\"}]}");
    assert_string_equal(c->upstream.secret_key, "env-shared-33");
    assert_string_equal(c->apps[0].token, "env-shared-33");
    config_free(c);

    /* A variable never read and not set is an error that points at *_file. */
    expect_error("{\"upstream\": {\"secret_id\": \"AKIDup\", \"secret_key_env\": \"T_NEVER_SET\"}}",
                 "t.json:1:38: upstream.secret_key_env: environment variable T_NEVER_SET is not "
                 "set (a secret added after start goes in secret_key_file)");
}

/* Every secret of a loaded config sits in memory left out of core dumps. */
static void test_secrets_not_dumped(void **state) {
    setenv("T_REDIS_PW2", "redis-pass-dd", 1);
    struct config *c =
        load_ok("{\"upstream\": {\"secret_id\": \"AKIDup\", \"secret_key\": \"lit-up-key\"},"
                " \"redis\": {\"url\": \"redis://h\", \"password_env\": \"T_REDIS_PW2\"},"
                " \"apps\": [{\"name\": \"t\", \"auth\": \"token\", \"token\": \"lit-token\"},"
                "  {\"name\": \"s\", \"auth\": \"signature\", \"secret_id\": \"AKIDs\","
                "   \"secret_key_env\": \"T_UP_KEY\"}]}");
    assert_true(secmem_dontdump(c->upstream.secret_key));
    assert_true(secmem_dontdump(c->redis->password));
    assert_true(secmem_dontdump(c->apps[0].token));
    assert_true(secmem_dontdump(c->apps[1].secret_key));
    assert_true(secmem_dontdump(c->audit.pii_key)); /* the generated one */
    config_free(c);
    c = load_ok("{" UPSTREAM_OK ", \"redis\": {\"url\": \"redis://:pw%40url@h\"}}");
    assert_string_equal(c->redis->password, "pw@url");
    assert_true(secmem_dontdump(c->redis->password));
    config_free(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_example_loads),
        cmocka_unit_test(test_dev_loads),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_app_defaults),
        cmocka_unit_test(test_demo_app),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_errors_hide_secrets),
        cmocka_unit_test(test_env_secret_removed),
        cmocka_unit_test(test_secrets_not_dumped),
        cmocka_unit_test(test_name_bounds),
        cmocka_unit_test(test_duplicate_profiles),
        cmocka_unit_test(test_scoped_limits_bound),
        cmocka_unit_test(test_limit_app),
        cmocka_unit_test(test_empty_env_var),
        cmocka_unit_test(test_load_missing_file),
        cmocka_unit_test(test_secret_file),
        cmocka_unit_test(test_redis_url),
        cmocka_unit_test(test_redis_sentinels),
        cmocka_unit_test(test_upstream_url),
        cmocka_unit_test(test_dump_masked),
        cmocka_unit_test(test_dump_has_every_key),
        cmocka_unit_test(test_reload_diff_covers_every_key),
        cmocka_unit_test(test_reload_keys_match_readme),
        cmocka_unit_test(test_dump_loads_back),
        cmocka_unit_test(test_reload_diff_lists),
        cmocka_unit_test(test_lookups),
        cmocka_unit_test(test_warnings),
        cmocka_unit_test(test_tls_front),
        cmocka_unit_test(test_trusted_proxies),
        cmocka_unit_test(test_http_max_connections),
        cmocka_unit_test(test_admin_token),
    };
    return cmocka_run_group_tests(tests, setup_env, NULL);
}
