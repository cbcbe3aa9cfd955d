/* validate.h: the one validator of v2 requests, used by both programs: public parameters, the
 * Action, and each Action's own parameters. Messages name the parameter and the rule, e.g.
 * "clientType must be one of 1, 2, 3, 4; got 5". Pure functions, no I/O. */
#ifndef CAPGATE_VALIDATE_H
#define CAPGATE_VALIDATE_H
#include <stddef.h>
#include <stdint.h>
#include "capgate/sign.h"

struct params;

enum v2_action {
    V2_ACTION_UNKNOWN = 0,
    V2_ACTION_CAPTCHA_IFRAME_QUERY,
    V2_ACTION_CAPTCHA_CHECK,
    V2_ACTION_CAPTCHA_QUERY,
    /* The API 3.0 Actions the gateway fronts (captcha 2019-07-22): in the same enum so apps'
     * "actions", the stats labels and the audit name them like the v2 ones. */
    V3_ACTION_DESCRIBE_CAPTCHA_RESULT,
    V3_ACTION_DESCRIBE_CAPTCHA_MINI_RESULT,
    V2_ACTION_COUNT
};
#define V3_ACTION_FIRST V3_ACTION_DESCRIBE_CAPTCHA_RESULT

/* Exact, case-sensitive match of a v2 Action; V2_ACTION_UNKNOWN for NULL or anything else (a 3.0
 * name too: v2 has no such interface). */
enum v2_action validate_action_parse(const char *name);
/* The same for the 3.0 Actions (DescribeCaptchaResult, DescribeCaptchaMiniResult). */
enum v2_action validate_action3_parse(const char *name);

/* The request fields of the two 3.0 Actions, as the SDK models them (tencentcloud-sdk-nodejs
 * captcha_models.d.ts: DescribeCaptchaResultRequest, DescribeCaptchaMiniResultRequest), the list
 * ending in a NULL name. Integer fields are API3_INT, String fields API3_STR. */
enum api3_ftype { API3_INT, API3_STR };
struct api3_field {
    const char *name;
    enum api3_ftype type;
    int required;
};
const struct api3_field *validate_api3_fields(int mini);
/* "CaptchaIframeQuery", ..., "DescribeCaptchaResult", ..., "unknown" */
const char *validate_action_name(enum v2_action a);

/* The public parameters of a signed request. Strings are borrowed from the params. */
struct v2_public {
    const char *action;
    const char *secret_id;
    const char *signature;
    const char *region; /* NULL when absent */
    uint64_t timestamp; /* Unix seconds */
    uint64_t nonce;     /* 0..2^64-1 accepted */
    enum sign_method method;
};

/* Checks that Action, SecretId, Timestamp, Nonce and Signature are present and non-empty, and
 * that Timestamp and Nonce are unsigned decimal 64-bit numbers. 0, or -1 with err set
 * ("missing required parameter Nonce", "Timestamp must be an unsigned integer; got \"abc\""). */
int validate_public(const struct params *p, struct v2_public *out, char *err, size_t errlen);
/* How long a spent Nonce must be remembered so no replay passes the Timestamp window: a
 * Timestamp is accepted from now - window to now + window, so a request is replayable for 2 *
 * window seconds after it was made. 2 * window_s + 1, saturating. */
uint64_t validate_nonce_ttl_s(uint64_t window_s);

/* Names of the per-user fields (the PII the gateway hashes and the pool refuses). NULL-ended. */
extern const char *const validate_user_fields[];

/* The public parameters of a request besides Action: who signed it and how (SecretId,
 * Signature, Timestamp, Nonce, Region, SignatureMethod; Token, a temporary credential's), the
 * parameters the gateway replaces with its own when it calls upstream. NULL-ended. */
extern const char *const validate_public_params[];
/* The SDK's own marker ("RequestClient": "SDK_NODEJS_0.2.1"): not public, not business either;
 * forwarded as is, left out of idempotency fingerprints and allowed on pooled requests. */
#define V2_REQUEST_CLIENT "RequestClient"
/* 1 when name is one of validate_public_params. */
int validate_is_public(const char *name);

/* The business fields of a request after validation. Strings are borrowed from the params;
 * has_* is 1 when the parameter was present. */
struct v2_fields {
    enum v2_action action;
    uint32_t captcha_type, disturb_level, is_https, client_type, account_type;
    uint32_t business_id, scene_id, register_time, script;
    unsigned has_captcha_type : 1, has_disturb_level : 1, has_is_https : 1, has_client_type : 1,
        has_account_type : 1, has_business_id : 1, has_scene_id : 1, has_register_time : 1,
        has_script : 1;
    const char *app_id, *uid, *user_ip, *x_forwarded_for, *mac_address, *imei, *associate_account,
        *ticket;
};

/* The longest userIp accepted. The doc pages type it String and give no length; 64 bytes hold
 * any IPv6 text form with a zone (INET6_ADDRSTRLEN is 46) with room to spare, and are what the
 * audit keeps of a raw per-user field, so an accepted value is never recorded cut. */
#define VALIDATE_USER_IP_MAX 64

/* Validates the parameters of action (public parameters are ignored; unknown extra parameters
 * are accepted, as upstream does). Rules, from the doc pages in tencentyun/qcloud-documents
 * api/安全服务/天御业务安全防护/ (see README "Protocol rules and their sources"):
 *  CaptchaIframeQuery: required UInt captchaType, disturbLevel, isHttps (0|1), clientType
 *    (1|2|3|4: older pages list 3 as APP, newer 4), accountType (0|1|2|4|6|7); appId required
 *    when accountType is 1 or 2; optional UInt businessId, sceneId, registerTime; optional
 *    strings uid, userIp, xForwardedFor, macAddress, imei, associateAccount.
 *  CaptchaQuery: required UInt registerTime, captchaType, script (0|1), businessId and String
 *    userIp; optional accountType (as above, with its appId rule), sceneId and the user
 *    strings. No disturbLevel, isHttps or clientType (sent anyway, they are unchecked extras).
 *  CaptchaCheck: required ticket, captchaType (UInt), userIp; optional UInt businessId,
 *    sceneId; optional strings uid, appId and the other user fields.
 * UInt = decimal digits only, 0..4294967295. userIp = 1 to VALIDATE_USER_IP_MAX printable ASCII
 * characters. A present but empty required value is an error.
 * Returns 0, or -1 with err set; validate_error_code gives the reply's code. */
int validate_request(enum v2_action action, const struct params *p, struct v2_fields *out,
                     char *err, size_t errlen);
/* The API code for a request validate_request refused: 6100 (VersionNotSupported) when an
 * Action was sent but is not one of the three (the error code page: "this version does not
 * support this interface"), else 4000 (InvalidParameter). */
int validate_error_code(enum v2_action action, const struct params *p);

#endif
