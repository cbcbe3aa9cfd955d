/* config.h: the gateway's configuration (docs/design.md "Gateway"). A strict JSON file is loaded
 * into a plain struct: defaults, bounds and enums checked, secrets resolved from the environment or
 * from files, every error naming the key path with line and column. The struct is read-only once
 * loaded; handlers never touch JSON. docs/configuration.md documents every key. */
#ifndef CAPGATE_CONFIG_H
#define CAPGATE_CONFIG_H
#include <stddef.h>
#include <stdint.h>
#include "capgate/net.h"
#include "capgate/sign.h"
#include "capgate/validate.h"

/* App names and limit rule names are 1..CONFIG_NAME_MAX bytes of [A-Za-z0-9._-], and
 * redis.key_prefix is 1..CONFIG_KEY_PREFIX_MAX bytes, so every Redis key, audit field and metrics
 * label built from them fits its buffer whole (limit.h, pipeline.h). */
#define CONFIG_NAME_MAX 64
#define CONFIG_KEY_PREFIX_MAX 64
/* Rules with scope app or global that one request can fall under (with one params rule): every
 * global rule, every scope app rule without "app", and the scope app rules naming its app. */
#define CONFIG_SCOPED_LIMITS_MAX 15

/* One app allowed to call the gateway. */
struct config_app {
    char *name;
    enum config_app_auth { CONFIG_AUTH_SIGNATURE, CONFIG_AUTH_TOKEN } auth;
    char *secret_id;           /* signature apps; NULL for token apps */
    char *secret_key;          /* signature apps, resolved secret; NULL for token apps */
    struct sign_key *sign_key; /* secret_key's HMAC states (capgate/sign.h); NULL for tokens */
    char *token;               /* token apps, resolved secret; NULL for signature apps */
    unsigned actions;          /* bitmask of 1u << enum v2_action (include/capgate/validate.h); all
                            * supported Actions when the key is absent */
    int business_any;          /* "business_ids": "*" or key absent */
    uint32_t *business_ids;
    size_t n_business_ids;
    /* API 3.0: the CaptchaAppIds the app may verify tickets of ("captcha_app_ids": "*" or key
     * absent: any) */
    int captcha_any;
    uint32_t *captcha_app_ids;
    size_t n_captcha_app_ids;
    int secret_literal; /* the secret was written literally in the file (warned about) */
};

/* The one real Tencent credential and where to send requests. */
struct config_upstream {
    char *url;
    int tls;         /* url scheme is https */
    char *host;      /* parsed from url */
    int port;        /* parsed from url; 443 for https, 80 for http when absent */
    char *path;      /* parsed from url; "/" when absent */
    char *sign_host; /* host used in the string to sign; default host[:port] */
    char *secret_id;
    char *secret_key;
    struct sign_key *sign_key; /* secret_key's HMAC states (capgate/sign.h), made at load */
    char *region;
    enum sign_method signature_method;
    int post;      /* method POST (default) or GET */
    char *ca_file; /* NULL: the system trust store */
    int verify_tls;
    unsigned connect_timeout_ms, timeout_ms, retries, max_connections;
    unsigned breaker_failures; /* consecutive failures that open the breaker; default 5 */
    unsigned breaker_open_ms;  /* how long it stays open; default 5000 */
    int secret_literal;        /* secret_key written literally in the file (warned about) */
    /* Host name lookups: NULL for the system's resolver, else "ip[:port]" nameservers; the name
     * is looked up again every resolve_interval_ms (default 30000). */
    char *resolver;
    unsigned resolve_interval_ms;
    /* API 3.0 (captcha 2019-07-22): where the gateway forwards its 3.0 calls, re-signed TC3 with
     * the same credential; TLS settings (ca_file, verify_tls) and timeouts as above. */
    char *v3_url; /* default https://captcha.tencentcloudapi.com/ */
    int v3_tls;
    char *v3_host;
    int v3_port;
    char *v3_path;
    char *v3_sign_host; /* host[:port] of v3_url (port only when not the scheme's default) */
};

/* An API 3.0 CaptchaAppId whose AppSecretKey the gateway holds and injects, so apps never hold
 * it (key "captcha_apps"). */
struct config_captcha_app {
    uint32_t captcha_app_id;
    int has_captcha_app_id;
    char *app_secret_key; /* resolved secret (secmem) */
    int inject_always;    /* "inject": "always" (replace the app's); default "missing" */
    int secret_literal;
};

/* A Sentinel's address (redis.sentinels[]). */
struct config_redis_sentinel {
    char *host;
    int port;
};

/* Redis: shared store for limits, nonces, pool, idempotency, audit stream and metrics. With
 * sentinels, the master is asked of them (proxy/redis_conn.h) and url, if given, only brings the
 * password and the db. */
struct config_redis {
    char *url; /* redis://[:password@]host[:port][/db]; NULL with sentinels and no url */
    char *host;
    int port;       /* default 6379 */
    unsigned db;    /* default 0 */
    char *password; /* from password_env, or from the url; NULL when none */
    unsigned timeout_ms;
    char *key_prefix; /* default "capgate:" */
    struct config_redis_sentinel *sentinels;
    size_t n_sentinels; /* 0: connect to host:port */
    char *master_name;  /* required with sentinels */
    char *sentinel_username;
    char *sentinel_password; /* secmem; NULL: no AUTH to the sentinels */
    int sentinel_password_literal;
};

enum config_store_error {
    CONFIG_STORE_ERROR_LOCAL,
    CONFIG_STORE_ERROR_ALLOW,
    CONFIG_STORE_ERROR_DENY
};

/* One rate-limit rule (docs/design.md "Rate limits"). */
struct config_limit {
    char *name;
    enum config_limit_scope { CONFIG_SCOPE_PARAMS, CONFIG_SCOPE_APP, CONFIG_SCOPE_GLOBAL } scope;
    int business_any, scene_any; /* "*": a bucket per distinct value (absent is "-") */
    uint32_t business_id, scene_id;
    double rate;     /* tokens per period_s, > 0 */
    double period_s; /* > 0 */
    double burst;    /* >= 1; default rate */
    int shadow;      /* "mode": "shadow": counts but never blocks */
    char *app;       /* "app": the rule applies only to this app's requests (scope params or
                      * app; an app of apps[]); NULL: every app */
};

struct config_audit {
    char *stream;          /* Redis stream key; default "capgate:audit" */
    unsigned long maxlen;  /* XADD MAXLEN ~; default 1000000 */
    char *spool_dir;       /* default "var/spool" */
    char *file;            /* NULL: no JSONL file sink */
    int pii_raw;           /* "pii": "raw"; default "hash" */
    char *pii_key;         /* HMAC key for PII hashes */
    size_t pii_key_len;    /* bytes in pii_key (a generated key may hold NUL bytes) */
    int pii_key_generated; /* 1: pii_key_env absent, 32 random bytes for this process */
    int commit_durable;    /* "commit": "durable": the reply waits for the record to be stored */
    unsigned min_replicas; /* a live batch counts as written once WAIT confirms this many */
};

struct config_metrics {
    unsigned flush_ms;         /* default 1000 */
    unsigned long retention_s; /* default 691200 (8 days) */
};

/* A parameter profile the prefetch pool keeps URLs ready for (docs/design.md "Caches"). */
struct config_pool_profile {
    uint32_t captcha_type, disturb_level, is_https, client_type, account_type;
    int has_business_id, has_scene_id;
    uint32_t business_id, scene_id;
    unsigned size; /* URLs kept ready */
};

struct config_pool {
    unsigned ttl_s; /* default 60 */
    struct config_pool_profile *profiles;
    size_t n_profiles;
};

/* Front HTTP limits (key "http"). */
struct config_http {
    size_t max_uri, max_header_bytes, max_body;                   /* defaults 8192, 16384, 65536 */
    unsigned max_headers;                                         /* default 100 */
    unsigned header_timeout_ms, body_timeout_ms, idle_timeout_ms; /* 10000, 10000, 60000 */
    size_t max_connections; /* front connections of the process; 0: from RLIMIT_NOFILE */
};

/* The HTTPS front's certificate (key "tls"). */
struct config_tls {
    char *cert_file; /* PEM chain, leaf first */
    char *key_file;  /* PEM private key */
};

/* The admin listener's access (key "admin"). */
struct config_admin {
    char *token;               /* bearer token for everything but /healthz and /readyz; NULL: none
                                * (token_env or token_file) */
    int allow_unauthenticated; /* a non-loopback admin_listen without a token starts (warned) */
};

struct config {
    char *path;            /* the file's path, or the name given to config_load_string */
    char *listen_host;     /* NULL ("listen": null): no plain HTTP front listener */
    int listen_port;       /* 0 = pick a free port */
    char *tls_listen_host; /* NULL (default): no HTTPS front listener */
    int tls_listen_port;
    struct config_tls tls; /* both set exactly when tls_listen is; the files were loaded once by
                            * config_load, so a bad certificate fails the load */
    struct net_cidr *trusted_proxies; /* peers whose X-Forwarded-For / X-Real-IP are believed */
    size_t n_trusted_proxies;
    char *admin_host;
    int admin_port;
    struct config_admin admin;
    unsigned workers;         /* 1..64 */
    int http_errors_semantic; /* "http_errors": "semantic"; default "compat" */
    struct config_upstream upstream;
    struct config_redis *redis; /* NULL: the embedded memory store */
    enum config_store_error on_store_error;
    unsigned timestamp_window_s; /* key auth.timestamp_window_s; default 300 */
    struct config_app *apps;
    size_t n_apps;
    struct config_limit *limits;
    size_t n_limits;
    struct config_captcha_app *captcha_apps;
    size_t n_captcha_apps;
    struct config_audit audit;
    struct config_metrics metrics;
    struct config_pool pool;
    unsigned idempotency_ttl_s; /* key idempotency.ttl_s; default 300 */
    int demo;
    char *demo_app; /* the token app the admin listener's /demo page calls as; when demo is
                            * true, always the name of a token app (default: the first one) */
    /* /demo's API 3.0 flow: where the page loads TCaptcha.js, and the CaptchaAppId it shows
     * (default: captcha_apps[0]'s, whose AppSecretKey the gateway injects) */
    char *demo_tcaptcha_url;
    uint32_t demo_captcha_app_id;
    int has_demo_captcha_app_id;
    struct config_http http;
    char *instance;  /* default hostname:pid */
    char *log_level; /* "debug" "info" "warn" "error"; default "info" */
    int log_json;    /* "log_format": "json" (1) or "text" (0, default); needs a restart */
    /* where each secret came from, for config_dump_json (parse order) */
    struct config_secret_src *secret_src;
    size_t n_secret_src;
};

/* A secret (or secret id) group as the file gave it: path is its key path with the group's name
 * ("apps[1].secret_key", "audit.pii_key"), key the key it was given under ("secret_key_file"),
 * ref the environment variable's name or the file's resolved path (NULL: the value was written
 * in the file). */
struct config_secret_src {
    char *path;
    char *key;
    char *ref;
};

/* Loads and checks the file at path. 0 and *out set (caller frees with config_free), or -1 with
 * err naming the file, line, column and key path:
 *   "config.json:12:7: apps[1].auth: must be \"signature\" or \"token\"; got \"basic\"" */
int config_load(const char *path, struct config **out, char *err, size_t errlen);
/* Same from text in memory; name stands for the file name in messages and in c->path. */
int config_load_string(const char *json_text, const char *name, struct config **out, char *err,
                       size_t errlen);
/* Frees c and everything it owns (secrets are wiped first). NULL is accepted. */
void config_free(struct config *c);

/* The effective config as pretty JSON, written from the same tables that parse it: the keys of
 * the file (with their defaults), a secret group under its name (upstream "secret_key", apps'
 * "secret_key"/"token", redis "password", audit "pii_key") as "***", or null when unset; the
 * redis url with its password masked; secret ids are not secret and are shown. Caller frees with
 * free(); NULL on OOM. */
char *config_dump_masked(const struct config *c);

/* The effective config as pretty JSON that config_load accepts again and that dumps the same
 * (--check-config --format json): as config_dump_masked, but a secret group is written under
 * the key it came from, "<group>_env": NAME or "<group>_file": PATH (resolved), and a secret
 * written in the file as "<group>": "***", its key path listed in the top-level "_masked" (as is
 * "redis.url" when the url holds the password). The loader refuses "***" as a secret, so a
 * masked one has to be given again; it accepts "_masked" and ignores it. Absent secrets (a
 * generated PII key) are left out. Caller frees with free(); NULL on OOM. */
char *config_dump_json(const struct config *c);

/* ---- reload ---- */

/* One difference between two configs: path names the key ("idempotency.ttl_s", "upstream",
 * "apps[shop-web]", "pool.profiles[0]"), detail what happened ("300 -> 60", "added", "removed",
 * "changed": a secret's value and a list element's fields are never shown); applied: a SIGHUP
 * reload applies it (0: it needs a restart). */
typedef void (*config_change_fn)(const char *path, const char *detail, int applied, void *arg);
/* Calls fn for each difference from a to b under the top-level keys a reload applies (applied
 * 1) or under those it does not (applied 0), in table order. Returns how many there were. */
size_t config_diff(const struct config *a, const struct config *b, int applied, config_change_fn fn,
                   void *arg);

/* One value of the config, as the tables describe it (for tests and the reload log). */
struct config_key {
    char path[160];           /* "workers", "upstream.timeout_ms", "apps[].actions",
                               * "redis.password" (a secret group by its name) */
    const char *top;          /* the top-level key it is under ("apps") */
    int reload;               /* a SIGHUP reload applies it */
    int secret;               /* shown as "***" */
    int env_file;             /* also given as <key>_env or <key>_file (one of the three) */
    const char *const *names; /* enum values, NULL-ended; NULL when not an enum */
    double min, max;          /* numbers: the bounds (max 0: none); strings: max bytes */
};
/* Calls fn for every value of the config, depth first in table order. */
void config_keys(void (*fn)(const struct config_key *k, void *arg), void *arg);

/* Borrowed pointers into c, valid until config_free(c); NULL when no app matches. */
const struct config_app *config_find_app_by_secret_id(const struct config *c,
                                                      const char *secret_id);
/* The captcha_apps entry of a CaptchaAppId, or NULL. */
const struct config_captcha_app *config_find_captcha_app(const struct config *c, uint32_t id);
/* Compares in constant time against every token app (CRYPTO_memcmp after a length check). */
const struct config_app *config_find_app_by_token(const struct config *c, const char *token,
                                                  size_t len);

/* Calls warn once per risky setting (verify_tls false, a literal secret, a generated PII key,
 * raw PII, demo mode, ...). msg is valid only during the call. */
void config_warnings(const struct config *c, void (*warn)(const char *msg, void *arg), void *arg);

#endif
