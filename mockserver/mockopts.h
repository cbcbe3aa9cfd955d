/* mockopts.h: capgate-mock's settings from three sources, in rising precedence: the --config JSON
 * file (keys are the flag names, '-' or '_'), CAPGATE_MOCK_* environment variables, then the
 * command line. Pure functions: the caller reads the files and passes their contents. */
#ifndef CAPGATE_MOCKOPTS_H
#define CAPGATE_MOCKOPTS_H
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#define MOCKOPTS_DEFAULT_SECRET_ID "AKIDcapgateMockTestKey00000000000000"
#define MOCKOPTS_DEFAULT_SECRET_KEY "capgate-mock-secret"
/* The AppSecretKey of the mock's captcha app (API 3.0) when --captcha-app is not given. */
#define MOCKOPTS_DEFAULT_APP_SECRET_KEY "capgate-mock-app-secret"
/* Longest --public-url: returned URLs and widget origins are built in fixed buffers. */
#define MOCKOPTS_MAX_URL 512

struct mock_credential {
    char *secret_id;
    char *secret_key;
};

struct mock_opts {
    char *listen;     /* HOST:PORT, default 127.0.0.1:9000 */
    char *tls_listen; /* NULL: no TLS listener */
    char *tls_cert, *tls_key;
    struct mock_credential *creds;
    size_t ncreds, creds_cap;
    int creds_level; /* which source set the --credential list (0 none) */
    char *credentials_file;
    uint32_t timestamp_window; /* seconds, default 300 */
    char *public_url;          /* NULL: the HTTP listener's own address */
    int has_seed;
    uint64_t seed;
    int https_only;
    uint32_t quota;                              /* requests/s per SecretId, 0: unlimited */
    uint32_t header_timeout_ms, body_timeout_ms; /* default 10000 */
    uint32_t max_connections; /* open connections at once; 0 (default): from RLIMIT_NOFILE */
    uint32_t captcha_ttl_s;   /* lifetime of URLs and tickets, default 1200 */
    /* API 3.0 captcha apps, --captcha-app CAPTCHAAPPID:APPSECRETKEY (secret_id holds the
     * decimal CaptchaAppId). Empty: one app with the generated id and the default key. */
    struct mock_credential *apps;
    size_t napps, apps_cap;
    int apps_level;
    char *log_level; /* default "info" */
    char *config;    /* the --config path, if any */
    int show_help, show_version;
    json_t *faults;         /* "faults" of the config file (owned), or NULL */
    int default_credential; /* 1 when mockopts_finish added the documented test pair */
};

typedef const char *(*mockopts_getenv_fn)(const char *name);

void mockopts_init(struct mock_opts *o); /* the defaults */
void mockopts_cleanup(struct mock_opts *o);
/* The config file path: --config on the command line, else CAPGATE_MOCK_CONFIG, else NULL.
 * Borrowed from argv or the environment. */
const char *mockopts_config_path(int argc, char **argv, mockopts_getenv_fn get);
/* Applies a parsed config file (a JSON object). Unknown keys are errors naming the key. 0/-1. */
int mockopts_apply_json(struct mock_opts *o, const json_t *root, char *err, size_t errlen);
/* Applies CAPGATE_MOCK_<FLAG> variables (CAPGATE_MOCK_CREDENTIAL may list several pairs
 * separated by commas or spaces). 0/-1. */
int mockopts_apply_env(struct mock_opts *o, mockopts_getenv_fn get, char *err, size_t errlen);
/* Applies argv[1..argc). --name value and --name=value. 0/-1 with err naming the flag. */
int mockopts_apply_args(struct mock_opts *o, int argc, char **argv, char *err, size_t errlen);
/* Adds the ID:KEY lines of a credentials file's text (blank lines and # comments skipped);
 * source names the file in errors ("creds.txt:3: ..."). 0/-1. */
int mockopts_add_credentials_text(struct mock_opts *o, const char *text, const char *source,
                                  char *err, size_t errlen);
/* Checks the combination (TLS listener needs cert and key, addresses parse, ...) and adds the
 * documented test credential when none was given (default_credential = 1). 0/-1. */
int mockopts_finish(struct mock_opts *o, char *err, size_t errlen);
/* "host:port" or "[v6]:port" → host (without brackets) and port 0..65535. 0/-1. */
int mockopts_split_hostport(const char *s, char *host, size_t hostlen, int *port, char *err,
                            size_t errlen);
/* The --help text. */
const char *mockopts_usage(void);

#endif
