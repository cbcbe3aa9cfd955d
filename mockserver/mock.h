/* mock.h: capgate-mock's server: the state shared by the API (mock.c), the widget endpoints
 * (widget.c) and the admin API (admin.c), and the entry points main.c uses. One event loop,
 * one thread: nothing here takes a lock. */
#ifndef CAPGATE_MOCK_H
#define CAPGATE_MOCK_H
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include <openssl/ssl.h>

#include "etable.h"
#include "faults.h"
#include "journal.h"
#include "mockopts.h"
#include "mockrng.h"

struct event_base;
struct httpd;
struct httpd_req;

#define MOCK_API_PATH "/v2/index.php"
#define MOCK_WIDGET_PATH "/template/TCapIframeApi.js"
#define MOCK_SOLVE_PATH "/__widget/solve"
#define MOCK_ADMIN_PREFIX "/__admin/"
#define MOCK_ASIG_LEN 64
#define MOCK_TICKET_LEN 67   /* "t03" + 64 */
#define MOCK_RANDSTR_LEN 4   /* "@" + 3 */
#define MOCK_TICKET_CHECKS 2 /* a ticket passes this many checks */
#define MOCK_MAX_URLS 100000
#define MOCK_MAX_TICKETS 100000
#define MOCK_MAX_NONCES 1000000

/* One issued captcha URL (key: its asig). */
struct mock_url {
    uint64_t created_us; /* clock_mono_us */
    uint32_t client_type;
    uint64_t appid;          /* the CaptchaAppId the captcha belongs to */
    uint64_t created_wall_s; /* Unix time, for API 3.0's GetCaptchaTime */
    unsigned fetched : 1;    /* the widget script was served */
    unsigned solved : 1;     /* a ticket was issued */
};

/* One issued ticket (key: the ticket). */
struct mock_ticket {
    uint64_t solved_us;                /* clock_mono_us */
    unsigned checks;                   /* successful CaptchaCheck calls so far */
    uint64_t appid;                    /* of its captcha */
    uint64_t get_wall_s, solve_wall_s; /* Unix times: captcha issued, solved */
    char randstr[MOCK_RANDSTR_LEN + 1];
    unsigned v3_checks; /* API 3.0 verifications so far (a ticket verifies once) */
};

struct mock_quota {
    uint64_t second; /* the Unix second being counted */
    uint32_t count;
};

struct mock {
    struct event_base *base;      /* borrowed */
    const struct mock_opts *opts; /* borrowed, outlives the mock */
    struct httpd *httpd;
    struct tls_server *tls;
    char http_base[300];      /* "http://127.0.0.1:PORT" as listening */
    char https_base[300];     /* "" without a TLS listener */
    const char *url_base;     /* --public-url, else http_base */
    struct mockrng rng;       /* asig, ticket, randstr, appid */
    struct mockrng rid_rng;   /* API 3.0 RequestIds, apart for the same reason */
    struct mockrng fault_rng; /* probability draws, apart so faults do not shift asigs */
    char appid[24];           /* the app of v2 URLs: the first --captcha-app, else generated */
    uint64_t app_id;          /* the same as a number */
    uint64_t ttl_us;          /* lifetime of URLs and tickets */
    struct etable *nonces;  /* "<credential index>:<nonce>", "v3:<...>:<nonce>" (mock_nonce_used) */
    struct etable *urls;    /* asig -> struct mock_url */
    struct etable *tickets; /* ticket -> struct mock_ticket */
    struct faults faults;
    struct journal *journal;
    struct mock_quota *quota; /* one per credential */
    uint64_t api_calls;       /* since start or reset */
    size_t pending;           /* delayed or stalled calls not yet ended */
};

/* Creates the mock on base and opens its listeners (printing nothing). NULL with err set. */
struct mock *mock_new(struct event_base *base, const struct mock_opts *opts, char *err,
                      size_t errlen);
/* Closes every listener and connection (stalled calls get their cancel callbacks) and frees
 * all state. Accepts NULL. */
void mock_free(struct mock *m);
/* Forgets nonces, URLs, tickets, the journal, faults and quota counters. */
void mock_reset(struct mock *m);

/* Nonces of credential cred, in a namespace of their own per API (space: "" for v2, "v3" for
 * API 3.0's v1 signatures). mock_nonce_used: 1 when nonce was spent within twice the window.
 * mock_nonce_spend: spends it (only a correctly signed request does, so a forger cannot burn
 * nonces), remembered as long as its Timestamp could still pass the window. */
int mock_nonce_used(struct mock *m, const char *space, int cred, uint64_t nonce);
void mock_nonce_spend(struct mock *m, const char *space, int cred, uint64_t nonce);
/* The per-credential quota (--quota requests/s): 0 and counted, or -1 past it. */
int mock_quota_take(struct mock *m, int cred, uint64_t now_s);

/* The AppSecretKey of a CaptchaAppId (--captcha-app; without any, the generated app id has
 * MOCKOPTS_DEFAULT_APP_SECRET_KEY), or NULL for an unknown app. */
const char *mock_app_secret(const struct mock *m, uint64_t appid);

/* Issues a captcha (as a URL would) for appid, for the TCaptcha.js flow and admin solve.
 * 0 with asig filled; -1 on OOM. */
int mock_issue_captcha(struct mock *m, uint64_t appid, char asig[MOCK_ASIG_LEN + 1]);

/* Marks the URL of asig solved and issues its ticket. 0 with ticket (MOCK_TICKET_LEN + 1) and
 * randstr (MOCK_RANDSTR_LEN + 1) filled; -1 with *status (404 unknown or expired, 409 already
 * solved) and err. */
int mock_solve(struct mock *m, const char *asig, char *ticket, char *randstr, int *status,
               char *err, size_t errlen);
/* The origin the widget script calls back: --public-url, else the scheme of the listener and the
 * Host the client used, else the listener's own address. Writes into out. */
void mock_origin_for(const struct mock *m, const struct httpd_req *req, char *out, size_t len);

/* Replies: obj is taken (decref'd). */
void mock_reply_json(struct httpd_req *req, int status, json_t *obj);
/* A JSON error in the API shape ({"code","codeDesc","message"}) with the given HTTP status. */
void mock_reply_error(struct httpd_req *req, int status, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* widget.c: the test widget script for asig, calling back origin; appended to out. 0/-1. */
struct strbuf;
int widget_script(struct strbuf *out, const char *origin, const char *asig);
/* GET /template/TCapIframeApi.js?...&asig=... and GET|OPTIONS /__widget/solve?asig=... */
void widget_handle_fetch(struct mock *m, struct httpd_req *req);
void widget_handle_solve(struct mock *m, struct httpd_req *req);

/* api3.c: API 3.0 (captcha.tencentcloudapi.com, POST / with TC3-HMAC-SHA256). */
#define MOCK_API3_PATH "/"
#define MOCK_API3_VERSION "2019-07-22"
struct api3_call {
    json_t *body;       /* the parsed JSON body (owned) */
    const char *action; /* X-TC-Action, borrowed from the request, or action_buf (v1) */
    char action_buf[72];
    char secret_id[130];
    int cred; /* index into opts->creds, -1 before it is known */
    enum journal_verdict verdict;
    const char *code; /* the 3.0 error code, NULL while all is well */
    char msg[512];
};
/* Runs the checks in order (protocol, headers, Authorization, SecretId, Timestamp,
 * signature, quota, JSON body, Action and Version). 0, or -1 with code and msg set. */
int api3_check(struct mock *m, struct httpd_req *req, struct api3_call *c);
/* Runs c's Action: a new Response object (without RequestId), or NULL with code/msg set. */
json_t *api3_run(struct mock *m, struct api3_call *c);
/* The reply {"Response": {...resp, "RequestId"}} (resp taken; NULL: an Error from code/msg). */
void api3_reply(struct mock *m, struct httpd_req *req, json_t *resp, const char *code,
                const char *msg);
/* The body's top-level scalars as params for the journal (AppSecretKey masked). */
struct params;
void api3_journal_params(const struct api3_call *c, struct params *out);

/* tcaptcha.c: GET /TCaptcha.js (the API 3.0 front-end script, emulated) and
 * GET /__widget/tcaptcha.js?appid=N (a captcha of that CaptchaAppId: the widget's script). */
#define MOCK_TCAPTCHA_PATH "/TCaptcha.js"
#define MOCK_TCAPTCHA_WIDGET_PATH "/__widget/tcaptcha.js"
void tcaptcha_handle_script(struct mock *m, struct httpd_req *req);
void tcaptcha_handle_widget(struct mock *m, struct httpd_req *req);

/* admin.c: everything under /__admin/. */
void admin_handle(struct mock *m, struct httpd_req *req);

#endif
