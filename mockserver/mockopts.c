/* mockopts.c: one table of options drives the config file, the environment and the command line,
 * so a flag, its variable and its config key can never drift apart. */
#include "mockopts.h"

#include <ctype.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "capgate/log.h"
#include "capgate/net.h"
#include "capgate/num.h"

enum opt_kind {
    OPT_STR,
    OPT_U32,
    OPT_BOOL,
    OPT_SEED,
    OPT_CRED,
    OPT_APP,
    OPT_LOGLEVEL,
    OPT_CLI_ONLY
};

enum opt_level { LEVEL_CONFIG = 1, LEVEL_ENV = 2, LEVEL_ARGS = 3 };

struct opt_def {
    const char *name; /* flag name without "--" */
    enum opt_kind kind;
    size_t offset;
    uint32_t min, max; /* OPT_U32 bounds */
};

#define OFF(f) offsetof(struct mock_opts, f)
static const struct opt_def opt_defs[] = {
    {"listen", OPT_STR, OFF(listen), 0, 0},
    {"tls-listen", OPT_STR, OFF(tls_listen), 0, 0},
    {"tls-cert", OPT_STR, OFF(tls_cert), 0, 0},
    {"tls-key", OPT_STR, OFF(tls_key), 0, 0},
    {"credential", OPT_CRED, 0, 0, 0},
    {"credentials-file", OPT_STR, OFF(credentials_file), 0, 0},
    {"captcha-app", OPT_APP, 0, 0, 0},
    {"timestamp-window", OPT_U32, OFF(timestamp_window), 1, 86400},
    {"public-url", OPT_STR, OFF(public_url), 0, 0},
    {"seed", OPT_SEED, 0, 0, 0},
    {"https-only", OPT_BOOL, OFF(https_only), 0, 0},
    {"quota", OPT_U32, OFF(quota), 0, 100000000},
    {"header-timeout-ms", OPT_U32, OFF(header_timeout_ms), 1, 3600000},
    {"body-timeout-ms", OPT_U32, OFF(body_timeout_ms), 1, 3600000},
    {"max-connections", OPT_U32, OFF(max_connections), 0, 1048576},
    {"captcha-ttl", OPT_U32, OFF(captcha_ttl_s), 1, 86400},
    {"log-level", OPT_LOGLEVEL, OFF(log_level), 0, 0},
    {"config", OPT_CLI_ONLY, OFF(config), 0, 0},
    {"help", OPT_CLI_ONLY, OFF(show_help), 0, 0},
    {"version", OPT_CLI_ONLY, OFF(show_version), 0, 0},
};
#define OPT_COUNT (sizeof(opt_defs) / sizeof(opt_defs[0]))

void mockopts_init(struct mock_opts *o) {
    memset(o, 0, sizeof(*o));
    o->listen = strdup("127.0.0.1:9000");
    o->timestamp_window = 300;
    o->header_timeout_ms = 10000;
    o->body_timeout_ms = 10000;
    o->captcha_ttl_s = 1200;
    o->log_level = strdup("info");
}

static void apps_clear(struct mock_opts *o) {
    for (size_t i = 0; i < o->napps; i++) {
        free(o->apps[i].secret_id);
        free(o->apps[i].secret_key);
    }
    o->napps = 0;
}

static void creds_clear(struct mock_opts *o) {
    for (size_t i = 0; i < o->ncreds; i++) {
        free(o->creds[i].secret_id);
        free(o->creds[i].secret_key);
    }
    o->ncreds = 0;
}

void mockopts_cleanup(struct mock_opts *o) {
    free(o->listen);
    free(o->tls_listen);
    free(o->tls_cert);
    free(o->tls_key);
    creds_clear(o);
    free(o->creds);
    free(o->credentials_file);
    free(o->public_url);
    free(o->log_level);
    apps_clear(o);
    free(o->apps);
    free(o->config);
    json_decref(o->faults);
    memset(o, 0, sizeof(*o));
}

/* Compares a flag name with a key where '_' stands for '-' (config keys may use either). */
static int name_eq(const char *flag, const char *key, size_t key_len) {
    size_t i = 0;
    for (; i < key_len && flag[i]; i++) {
        char c = key[i] == '_' ? '-' : key[i];
        if (c != flag[i]) return 0;
    }
    return i == key_len && flag[i] == '\0';
}

static const struct opt_def *find_opt(const char *key, size_t key_len) {
    for (size_t i = 0; i < OPT_COUNT; i++)
        if (name_eq(opt_defs[i].name, key, key_len)) return &opt_defs[i];
    return NULL;
}

/* Appends ID:KEY to a list (credentials, or captcha apps when app is 1). */
static int add_pair(struct mock_credential **list, size_t *n, size_t *capp, int app,
                    const char *pair, size_t len, const char *label, char *err, size_t errlen) {
    const char *colon = memchr(pair, ':', len);
    if (app) {
        size_t digits = 0;
        while (digits < len && isdigit((unsigned char)pair[digits])) digits++;
        if (!colon || digits == 0 || digits > 18 || pair + digits != colon ||
            colon + 1 == pair + len || strtoull(pair, NULL, 10) == 0) {
            snprintf(err, errlen,
                     "%s: a captcha app must be CAPTCHAAPPID:APPSECRETKEY with a "
                     "non-zero numeric id of at most 18 digits and a non-empty key",
                     label);
            return -1;
        }
    }
    if (!colon || colon == pair || colon + 1 == pair + len) {
        snprintf(err, errlen,
                 "%s: a credential must be SECRETID:SECRETKEY with both parts "
                 "non-empty",
                 label);
        return -1;
    }
    for (const char *c = pair; c < colon; c++) {
        if (isspace((unsigned char)*c)) {
            snprintf(err, errlen, "%s: a SecretId must not contain spaces", label);
            return -1;
        }
    }
    if (*n == *capp) {
        size_t cap = *capp ? *capp * 2 : 4;
        struct mock_credential *grown = realloc(*list, cap * sizeof(*grown));
        if (!grown) goto oom;
        *list = grown;
        *capp = cap;
    }
    char *id = strndup(pair, (size_t)(colon - pair));
    char *key = strndup(colon + 1, (size_t)(pair + len - colon - 1));
    if (!id || !key) {
        free(id);
        free(key);
        goto oom;
    }
    (*list)[*n].secret_id = id;
    (*list)[*n].secret_key = key;
    (*n)++;
    return 0;
oom:
    snprintf(err, errlen, "out of memory");
    return -1;
}

static int add_credential(struct mock_opts *o, const char *pair, size_t len, const char *label,
                          char *err, size_t errlen) {
    return add_pair(&o->creds, &o->ncreds, &o->creds_cap, 0, pair, len, label, err, errlen);
}

static int add_app(struct mock_opts *o, const char *pair, size_t len, const char *label, char *err,
                   size_t errlen) {
    return add_pair(&o->apps, &o->napps, &o->apps_cap, 1, pair, len, label, err, errlen);
}

static int parse_bool(const char *v, int *out) {
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0) return *out = 1, 0;
        if (strcasecmp(v, no[i]) == 0) return *out = 0, 0;
    }
    return -1;
}

/* Sets one option from text. label is how the user wrote it ("--quota", "CAPGATE_MOCK_QUOTA",
 * "config key quota"). */
static int set_opt(struct mock_opts *o, const struct opt_def *d, const char *value, int level,
                   const char *label, char *err, size_t errlen) {
    void *field = (char *)o + d->offset;
    switch (d->kind) {
    case OPT_STR:
    case OPT_LOGLEVEL:
    case OPT_CLI_ONLY: {
        if (d->kind == OPT_LOGLEVEL) {
            enum log_level lv;
            if (log_level_parse(value, &lv) != 0) {
                snprintf(err, errlen, "%s must be one of debug, info, warn, error; got \"%s\"",
                         label, value);
                return -1;
            }
        }
        if (value[0] == '\0') {
            snprintf(err, errlen, "%s must not be empty", label);
            return -1;
        }
        char *copy = strdup(value);
        if (!copy) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        free(*(char **)field);
        *(char **)field = copy;
        return 0;
    }
    case OPT_U32: {
        uint64_t v;
        if (num_parse_range(value, strlen(value), d->min, d->max, &v) != 0) {
            snprintf(err, errlen, "%s must be an integer from %u to %u; got \"%s\"", label, d->min,
                     d->max, value);
            return -1;
        }
        *(uint32_t *)field = (uint32_t)v;
        return 0;
    }
    case OPT_BOOL:
        if (parse_bool(value, (int *)field) != 0) {
            snprintf(err, errlen, "%s must be true or false; got \"%s\"", label, value);
            return -1;
        }
        return 0;
    case OPT_SEED:
        if (num_parse_u64(value, strlen(value), &o->seed) != 0) {
            snprintf(err, errlen, "%s must be an unsigned 64-bit integer; got \"%s\"", label,
                     value);
            return -1;
        }
        o->has_seed = 1;
        return 0;
    case OPT_CRED:
        /* A higher-precedence source replaces the whole list; within one source they add up. */
        if (o->creds_level != level) {
            creds_clear(o);
            o->creds_level = level;
        }
        return add_credential(o, value, strlen(value), label, err, errlen);
    case OPT_APP:
        if (o->apps_level != level) {
            apps_clear(o);
            o->apps_level = level;
        }
        return add_app(o, value, strlen(value), label, err, errlen);
    }
    return -1;
}

const char *mockopts_config_path(int argc, char **argv, mockopts_getenv_fn get) {
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            path = argv[++i];
        else if (strncmp(argv[i], "--config=", 9) == 0)
            path = argv[i] + 9;
    }
    if (!path && get) {
        const char *e = get("CAPGATE_MOCK_CONFIG");
        if (e && *e) path = e;
    }
    return path;
}

int mockopts_apply_json(struct mock_opts *o, const json_t *root, char *err, size_t errlen) {
    if (!json_is_object(root)) {
        snprintf(err, errlen, "config: the top level must be a JSON object");
        return -1;
    }
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)root, key, v) {
        char label[96];
        snprintf(label, sizeof(label), "config key \"%s\"", key);
        if (strcmp(key, "faults") == 0) {
            if (!json_is_array(v) && !json_is_object(v)) {
                snprintf(err, errlen, "%s must be a fault rule or an array of them", label);
                return -1;
            }
            json_decref(o->faults);
            o->faults = json_incref(v);
            continue;
        }
        const struct opt_def *d = find_opt(key, strlen(key));
        if (!d || d->kind == OPT_CLI_ONLY) {
            snprintf(err, errlen, "config: unknown key \"%s\"", key);
            return -1;
        }
        if ((d->kind == OPT_CRED || d->kind == OPT_APP) && json_is_array(v)) {
            size_t i;
            json_t *item;
            json_array_foreach(v, i, item) {
                if (!json_is_string(item)) {
                    snprintf(err, errlen, "%s must hold strings %s", label,
                             d->kind == OPT_APP ? "CAPTCHAAPPID:APPSECRETKEY"
                                                : "SECRETID:SECRETKEY");
                    return -1;
                }
                if (set_opt(o, d, json_string_value(item), LEVEL_CONFIG, label, err, errlen))
                    return -1;
            }
            continue;
        }
        char text[32];
        const char *value;
        if (json_is_string(v)) {
            value = json_string_value(v);
        } else if (json_is_integer(v) && json_integer_value(v) >= 0 &&
                   (d->kind == OPT_U32 || d->kind == OPT_SEED)) {
            snprintf(text, sizeof(text), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
            value = text;
        } else if (json_is_boolean(v) && d->kind == OPT_BOOL) {
            value = json_is_true(v) ? "true" : "false";
        } else if (json_is_null(v)) {
            continue; /* null keeps the default */
        } else {
            snprintf(err, errlen, "%s has the wrong type", label);
            return -1;
        }
        if (set_opt(o, d, value, LEVEL_CONFIG, label, err, errlen) != 0) return -1;
    }
    return 0;
}

int mockopts_apply_env(struct mock_opts *o, mockopts_getenv_fn get, char *err, size_t errlen) {
    for (size_t i = 0; i < OPT_COUNT; i++) {
        const struct opt_def *d = &opt_defs[i];
        if (d->kind == OPT_CLI_ONLY) continue; /* CAPGATE_MOCK_CONFIG: see config_path */
        char var[64] = "CAPGATE_MOCK_";
        size_t n = strlen(var);
        for (const char *c = d->name; *c && n + 1 < sizeof(var); c++)
            var[n++] = *c == '-' ? '_' : (char)toupper((unsigned char)*c);
        var[n] = '\0';
        const char *value = get(var);
        if (!value) continue;
        if (d->kind == OPT_CRED || d->kind == OPT_APP) {
            /* Several pairs in one variable, separated by commas or whitespace. */
            const char *p = value;
            while (*p) {
                size_t skip = strspn(p, ", \t\n");
                p += skip;
                size_t len = strcspn(p, ", \t\n");
                if (len == 0) break;
                int *lvl = d->kind == OPT_APP ? &o->apps_level : &o->creds_level;
                if (*lvl != LEVEL_ENV) {
                    if (d->kind == OPT_APP)
                        apps_clear(o);
                    else
                        creds_clear(o);
                    *lvl = LEVEL_ENV;
                }
                if ((d->kind == OPT_APP ? add_app : add_credential)(o, p, len, var, err, errlen) !=
                    0)
                    return -1;
                p += len;
            }
            continue;
        }
        if (set_opt(o, d, value, LEVEL_ENV, var, err, errlen) != 0) return -1;
    }
    return 0;
}

int mockopts_apply_args(struct mock_opts *o, int argc, char **argv, char *err, size_t errlen) {
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
            snprintf(err, errlen,
                     "unexpected argument \"%s\" (options start with --; see "
                     "--help)",
                     arg);
            return -1;
        }
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
        const struct opt_def *d = NULL;
        for (size_t k = 0; k < OPT_COUNT; k++)
            if (strlen(opt_defs[k].name) == name_len &&
                memcmp(opt_defs[k].name, name, name_len) == 0)
                d = &opt_defs[k];
        if (!d) {
            snprintf(err, errlen, "unknown option --%.*s (see --help)", (int)name_len, name);
            return -1;
        }
        char label[64];
        snprintf(label, sizeof(label), "--%s", d->name);
        const char *value = eq ? eq + 1 : NULL;
        if (d->kind == OPT_BOOL || strcmp(d->name, "help") == 0 ||
            strcmp(d->name, "version") == 0) {
            if (strcmp(d->name, "help") == 0 || strcmp(d->name, "version") == 0) {
                if (value) {
                    snprintf(err, errlen, "%s takes no value", label);
                    return -1;
                }
                *(int *)((char *)o + d->offset) = 1;
                continue;
            }
            if (!value) value = "true";
        } else if (!value) {
            if (i + 1 >= argc) {
                snprintf(err, errlen, "%s needs a value", label);
                return -1;
            }
            value = argv[++i];
        }
        if (set_opt(o, d, value, LEVEL_ARGS, label, err, errlen) != 0) return -1;
    }
    return 0;
}

int mockopts_add_credentials_text(struct mock_opts *o, const char *text, const char *source,
                                  char *err, size_t errlen) {
    unsigned line = 0;
    const char *p = text;
    while (*p) {
        line++;
        size_t len = strcspn(p, "\n");
        const char *s = p, *e = p + len;
        p = *e ? e + 1 : e;
        while (s < e && isspace((unsigned char)*s)) s++;
        while (e > s && isspace((unsigned char)e[-1])) e--;
        if (s == e || *s == '#') continue;
        char label[256];
        snprintf(label, sizeof(label), "%s:%u", source, line);
        if (add_credential(o, s, (size_t)(e - s), label, err, errlen) != 0) return -1;
    }
    return 0;
}

int mockopts_split_hostport(const char *s, char *host, size_t hostlen, int *port, char *err,
                            size_t errlen) {
    if (net_split_host_port(s, host, hostlen, port, 1) == 0) return 0;
    snprintf(err, errlen, "\"%s\" is not HOST:PORT (port 0..65535; [v6]:PORT for IPv6)", s);
    return -1;
}

int mockopts_finish(struct mock_opts *o, char *err, size_t errlen) {
    char host[256];
    int port;
    if (mockopts_split_hostport(o->listen, host, sizeof(host), &port, err, errlen) != 0) return -1;
    if (o->tls_listen) {
        if (mockopts_split_hostport(o->tls_listen, host, sizeof(host), &port, err, errlen) != 0)
            return -1;
        if (!o->tls_cert || !o->tls_key) {
            snprintf(err, errlen, "--tls-listen needs --tls-cert and --tls-key");
            return -1;
        }
    } else if (o->tls_cert || o->tls_key) {
        snprintf(err, errlen, "--tls-cert and --tls-key need --tls-listen");
        return -1;
    }
    if (o->public_url) {
        size_t n = strlen(o->public_url);
        if ((strncmp(o->public_url, "http://", 7) != 0 &&
             strncmp(o->public_url, "https://", 8) != 0) ||
            strpbrk(o->public_url, "\"'<> \t\r\n\\?#") || n > MOCKOPTS_MAX_URL) {
            snprintf(err, errlen,
                     "--public-url must be an http:// or https:// base URL "
                     "without query, at most %d bytes; got \"%s\"",
                     MOCKOPTS_MAX_URL, o->public_url);
            return -1;
        }
        while (n > 0 && o->public_url[n - 1] == '/') o->public_url[--n] = '\0';
    }
    for (size_t i = 0; i < o->napps; i++) {
        for (size_t j = 0; j < i; j++) {
            if (strtoull(o->apps[i].secret_id, NULL, 10) ==
                strtoull(o->apps[j].secret_id, NULL, 10)) {
                snprintf(err, errlen, "CaptchaAppId %s is given twice", o->apps[i].secret_id);
                return -1;
            }
        }
    }
    if (o->ncreds == 0) {
        if (add_credential(o, MOCKOPTS_DEFAULT_SECRET_ID ":" MOCKOPTS_DEFAULT_SECRET_KEY,
                           strlen(MOCKOPTS_DEFAULT_SECRET_ID ":" MOCKOPTS_DEFAULT_SECRET_KEY),
                           "default", err, errlen) != 0)
            return -1;
        o->default_credential = 1;
    }
    for (size_t i = 0; i < o->ncreds; i++) {
        for (size_t j = 0; j < i; j++) {
            if (strcmp(o->creds[i].secret_id, o->creds[j].secret_id) == 0) {
                snprintf(err, errlen, "SecretId %s is given twice", o->creds[i].secret_id);
                return -1;
            }
        }
    }
    return 0;
}

const char *mockopts_usage(void) {
    return "Usage: capgate-mock [options]\n"
           "An offline emulator of Tencent Cloud's captcha API 2.0 (csec.api.qcloud.com)\n"
           "and API 3.0 (captcha.tencentcloudapi.com: POST / with TC3-HMAC-SHA256).\n"
           "\n"
           "  --listen HOST:PORT          HTTP listener (default 127.0.0.1:9000; port 0 picks "
           "one)\n"
           "  --tls-listen HOST:PORT      HTTPS listener, with --tls-cert FILE --tls-key FILE\n"
           "  --credential ID:KEY         an accepted SecretId/SecretKey (repeatable)\n"
           "  --credentials-file FILE     ID:KEY per line, # comments\n"
           "  --timestamp-window SECONDS  accepted clock skew and Nonce memory (default 300)\n"
           "  --public-url URL            base of returned captcha URLs (default: the HTTP "
           "listener)\n"
           "  --captcha-app ID:KEY        an API 3.0 CaptchaAppId:AppSecretKey (repeatable;\n"
           "                              the first is the app of v2 URLs; default: the\n"
           "                              generated app id with " MOCKOPTS_DEFAULT_APP_SECRET_KEY
           ")\n"
           "  --seed N                    deterministic asig, tickets, randstr, appid\n"
           "  --https-only                API calls over plain HTTP get code 4600\n"
           "  --quota N                   requests/s per SecretId, then code 4400 (0: no limit)\n"
           "  --captcha-ttl SECONDS       lifetime of captcha URLs and tickets (default 1200)\n"
           "  --header-timeout-ms MS      time allowed for request headers (default 10000)\n"
           "  --body-timeout-ms MS        time allowed for a request body (default 10000)\n"
           "  --max-connections N         open connections at once, more are closed at once\n"
           "                              (default 0: RLIMIT_NOFILE minus 32)\n"
           "  --log-level LEVEL           debug, info, warn, error (default info)\n"
           "  --config FILE               JSON file with the same keys (and \"faults\": [...])\n"
           "  --version, --help\n"
           "\n"
           "Every option can also be set as CAPGATE_MOCK_<OPTION> (e.g. CAPGATE_MOCK_QUOTA=10).\n"
           "Flags override the environment, which overrides the config file.\n"
           "Without a credential the test pair " MOCKOPTS_DEFAULT_SECRET_ID
           " / " MOCKOPTS_DEFAULT_SECRET_KEY " is accepted.\n"
           "Admin API: /__admin/health, reset, requests, faults, solve (see the README).\n";
}
