/* record.h: what happened to one front request, as the pipeline fills it in and the sinks
 * (audit.h, minute_stats.h) read it: the decision and its names, and the record itself. A module of
 * its own so the sinks depend on the record, not on the pipeline that produces it. */
#ifndef CAPGATE_RECORD_H
#define CAPGATE_RECORD_H
#include <stdint.h>
#include "capgate/validate.h"
#include "config.h" /* CONFIG_NAME_MAX */

/* What happened to a request (the audit record's "decision"). */
enum pipeline_decision {
    PIPELINE_FORWARDED,
    PIPELINE_POOL,
    PIPELINE_REPLAYED,
    PIPELINE_LIMITED,
    PIPELINE_SHADOW_LIMITED,
    PIPELINE_INVALID,
    PIPELINE_UNAUTHORIZED,
    PIPELINE_DENIED,
    PIPELINE_UPSTREAM_ERROR,
    PIPELINE_DECISION_COUNT
};
/* "forwarded", "pool", ... (the audit records' and /admin/stats' names); "unknown" out of
 * range. */
const char *pipeline_decision_name(enum pipeline_decision d);

/* Everything an audit record needs, filled in as the request advances; self-contained (no
 * pointers into the request), so an audit sink may copy it and keep it. */
struct pipeline_record {
    uint64_t ts_us;                /* wall clock when the request arrived */
    char request_id[17];           /* 16 hex digits, also the X-Request-Id header */
    char app[CONFIG_NAME_MAX + 1]; /* app name whole (config.h bounds it), "" before
                                    * authentication; a refused signed request whose SecretId is
                                    * an app's has that app */
    char secret_id[129];           /* a refused request's SecretId that no app has (cut at 128
                                    * bytes), "" otherwise; the Signature is never kept */
    char client_ip[64];
    char action[64]; /* the Action as sent (cut at 63 bytes), "" when absent */
    enum v2_action action_id;
    int has_business_id, has_scene_id, has_captcha_type, has_client_type, has_account_type;
    uint32_t business_id, scene_id, captcha_type, client_type, account_type;
    enum pipeline_decision decision;
    char rule[CONFIG_NAME_MAX + 1]; /* the limit rule that decided (whole), "" when none */
    int code;                       /* the API code answered (upstream's, for a pass-through) */
    int no_code;                    /* 1: the reply carries no API code (CaptchaQuery script=1's
                                    * JavaScript passed through): code is not recorded */
    char code_desc[48];             /* v2: codeDesc; 3.0: the Error.Code ("Success" without one) */
    int api3;                       /* 1: an API 3.0 call (POST / with X-TC-Action), 0: v2 */
    int http_status;                /* the HTTP status answered (0: client gone, no reply) */
    int upstream_status;            /* upstream's HTTP status, 0 when not called or no reply */
    uint64_t latency_us;            /* arrival to reply */
    uint64_t upstream_latency_us;   /* 0 when upstream was not called */
};

#endif
