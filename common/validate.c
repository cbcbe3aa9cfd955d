/* validate.c: the one validator of v2 requests (public parameters, Action, each Action's own
 * parameters), shared by the gateway and the mock so both reject the same input with the same
 * message. Messages name the parameter and the rule and quote bad values cut and escaped, since
 * they are echoed to clients and logs. */
#include "capgate/validate.h"

#include <stdio.h>
#include <string.h>

#include "capgate/apierr.h"
#include "capgate/num.h"
#include "capgate/params.h"

const char *const validate_user_fields[] = {
    "uid",          "userIp", "xForwardedFor", "macAddress", "imei", "associateAccount", "appId",
    "registerTime", NULL,
};

/* Tencent's 公共参数 besides Action (Region, Timestamp, Nonce, SecretId, Signature:
 * qcloud-documents, 天御业务安全防护/调用方式/公共参数.md), SignatureMethod as the SDKs send it
 * (qcloudapi-sdk-python QcloudApi/modules/base.py, the npm qcloudapi-sdk's index.js), and
 * Token, a temporary credential's, which the gateway never forwards. */
const char *const validate_public_params[] = {
    "SecretId", "Signature", "Timestamp", "Nonce", "Region", "SignatureMethod", "Token", NULL,
};

int validate_is_public(const char *name) {
    for (size_t i = 0; validate_public_params[i]; i++)
        if (strcmp(name, validate_public_params[i]) == 0) return 1;
    return 0;
}

static const char *const action_names[V2_ACTION_COUNT] = {
    [V2_ACTION_UNKNOWN] = "unknown",
    [V2_ACTION_CAPTCHA_IFRAME_QUERY] = "CaptchaIframeQuery",
    [V2_ACTION_CAPTCHA_CHECK] = "CaptchaCheck",
    [V2_ACTION_CAPTCHA_QUERY] = "CaptchaQuery",
    [V3_ACTION_DESCRIBE_CAPTCHA_RESULT] = "DescribeCaptchaResult",
    [V3_ACTION_DESCRIBE_CAPTCHA_MINI_RESULT] = "DescribeCaptchaMiniResult",
};

static enum v2_action action_in(const char *name, int from, int to) {
    if (!name) return V2_ACTION_UNKNOWN;
    for (int a = from; a < to; a++)
        if (strcmp(name, action_names[a]) == 0) return (enum v2_action)a;
    return V2_ACTION_UNKNOWN;
}

enum v2_action validate_action_parse(const char *name) {
    return action_in(name, V2_ACTION_UNKNOWN + 1, V3_ACTION_FIRST);
}

enum v2_action validate_action3_parse(const char *name) {
    return action_in(name, V3_ACTION_FIRST, V2_ACTION_COUNT);
}

/* captcha_models.d.ts: DescribeCaptchaResultRequest, DescribeCaptchaMiniResultRequest. */
static const struct api3_field result_fields[] = {{"CaptchaType", API3_INT, 1},
                                                  {"Ticket", API3_STR, 1},
                                                  {"UserIp", API3_STR, 1},
                                                  {"Randstr", API3_STR, 1},
                                                  {"CaptchaAppId", API3_INT, 1},
                                                  {"AppSecretKey", API3_STR, 1},
                                                  {"BusinessId", API3_INT, 0},
                                                  {"SceneId", API3_INT, 0},
                                                  {"MacAddress", API3_STR, 0},
                                                  {"Imei", API3_STR, 0},
                                                  {"NeedGetCaptchaTime", API3_INT, 0},
                                                  {NULL, API3_INT, 0}};
static const struct api3_field mini_fields[] = {
    {"CaptchaType", API3_INT, 1},  {"Ticket", API3_STR, 1},
    {"UserIp", API3_STR, 1},       {"CaptchaAppId", API3_INT, 1},
    {"AppSecretKey", API3_STR, 1}, {"BusinessId", API3_INT, 0},
    {"SceneId", API3_INT, 0},      {"MacAddress", API3_STR, 0},
    {"Imei", API3_STR, 0},         {NULL, API3_INT, 0}};

const struct api3_field *validate_api3_fields(int mini) {
    return mini ? mini_fields : result_fields;
}

const char *validate_action_name(enum v2_action a) {
    if ((int)a <= V2_ACTION_UNKNOWN || a >= V2_ACTION_COUNT) return action_names[0];
    return action_names[a];
}

/* The parameter names the validator reads. Each call collects them in one pass over the list
 * (a slot of a 64-entry table picked by first byte, last byte and length, then one memcmp)
 * instead of a linear search with memcmp per name; a name's first occurrence wins, as with
 * params_find. */
enum known_name {
    KN_ACTION,
    KN_SECRET_ID,
    KN_TIMESTAMP,
    KN_NONCE,
    KN_SIGNATURE,
    KN_REGION,
    KN_SIGNATURE_METHOD,
    KN_APP_ID,
    KN_UID,
    KN_X_FORWARDED_FOR,
    KN_MAC_ADDRESS,
    KN_IMEI,
    KN_ASSOCIATE_ACCOUNT,
    KN_CAPTCHA_TYPE,
    KN_DISTURB_LEVEL,
    KN_IS_HTTPS,
    KN_CLIENT_TYPE,
    KN_ACCOUNT_TYPE,
    KN_BUSINESS_ID,
    KN_SCENE_ID,
    KN_REGISTER_TIME,
    KN_USER_IP,
    KN_SCRIPT,
    KN_TICKET,
    KN_COUNT
};

static const struct {
    const char *name;
    size_t len;
} known_names[KN_COUNT] = {
#define KN(id, s) [id] = {s, sizeof(s) - 1}
    KN(KN_ACTION, "Action"),
    KN(KN_SECRET_ID, "SecretId"),
    KN(KN_TIMESTAMP, "Timestamp"),
    KN(KN_NONCE, "Nonce"),
    KN(KN_SIGNATURE, "Signature"),
    KN(KN_REGION, "Region"),
    KN(KN_SIGNATURE_METHOD, "SignatureMethod"),
    KN(KN_APP_ID, "appId"),
    KN(KN_UID, "uid"),
    KN(KN_X_FORWARDED_FOR, "xForwardedFor"),
    KN(KN_MAC_ADDRESS, "macAddress"),
    KN(KN_IMEI, "imei"),
    KN(KN_ASSOCIATE_ACCOUNT, "associateAccount"),
    KN(KN_CAPTCHA_TYPE, "captchaType"),
    KN(KN_DISTURB_LEVEL, "disturbLevel"),
    KN(KN_IS_HTTPS, "isHttps"),
    KN(KN_CLIENT_TYPE, "clientType"),
    KN(KN_ACCOUNT_TYPE, "accountType"),
    KN(KN_BUSINESS_ID, "businessId"),
    KN(KN_SCENE_ID, "sceneId"),
    KN(KN_REGISTER_TIME, "registerTime"),
    KN(KN_USER_IP, "userIp"),
    KN(KN_SCRIPT, "script"),
    KN(KN_TICKET, "ticket"),
#undef KN
};

/* Distinct for the names above: two of them in one slot would be an initializer overriding
 * another, which -Woverride-init (in -Wextra) reports. */
#define KNOWN_SLOT(first, last, len) (((unsigned)(first)*7 + (unsigned)(last) + (len)*2) & 63)

/* enum known_name + 1; 0 is no name */
static const unsigned char known_slots[64] = {
#define KS(first, last, len, id) [KNOWN_SLOT(first, last, len)] = (id) + 1
    KS('A', 'n', 6, KN_ACTION),
    KS('S', 'd', 8, KN_SECRET_ID),
    KS('T', 'p', 9, KN_TIMESTAMP),
    KS('N', 'e', 5, KN_NONCE),
    KS('S', 'e', 9, KN_SIGNATURE),
    KS('R', 'n', 6, KN_REGION),
    KS('S', 'd', 15, KN_SIGNATURE_METHOD),
    KS('a', 'd', 5, KN_APP_ID),
    KS('u', 'd', 3, KN_UID),
    KS('x', 'r', 13, KN_X_FORWARDED_FOR),
    KS('m', 's', 10, KN_MAC_ADDRESS),
    KS('i', 'i', 4, KN_IMEI),
    KS('a', 't', 16, KN_ASSOCIATE_ACCOUNT),
    KS('c', 'e', 11, KN_CAPTCHA_TYPE),
    KS('d', 'l', 12, KN_DISTURB_LEVEL),
    KS('i', 's', 7, KN_IS_HTTPS),
    KS('c', 'e', 10, KN_CLIENT_TYPE),
    KS('a', 'e', 11, KN_ACCOUNT_TYPE),
    KS('b', 'd', 10, KN_BUSINESS_ID),
    KS('s', 'd', 7, KN_SCENE_ID),
    KS('r', 'e', 12, KN_REGISTER_TIME),
    KS('u', 'p', 6, KN_USER_IP),
    KS('s', 't', 6, KN_SCRIPT),
    KS('t', 't', 6, KN_TICKET),
#undef KS
};

/* The known parameters of one list, borrowed from it (NULL when absent). */
struct known_params {
    const struct param *by_name[KN_COUNT];
};

static void known_collect(const struct params *p, struct known_params *k) {
    memset(k, 0, sizeof *k);
    for (size_t i = 0; i < p->count; i++) {
        const struct param *it = &p->items[i];
        size_t len = it->name_len;
        if (len == 0) continue;
        unsigned slot = known_slots[KNOWN_SLOT((unsigned char)it->name[0],
                                               (unsigned char)it->name[len - 1], len)];
        if (slot == 0) continue;
        enum known_name id = (enum known_name)(slot - 1);
        if (known_names[id].len == len && memcmp(it->name, known_names[id].name, len) == 0 &&
            !k->by_name[id])
            k->by_name[id] = it;
    }
}

static const struct param *known_find(const struct known_params *k, enum known_name id) {
    return k->by_name[id];
}

static const char *known_get(const struct known_params *k, enum known_name id) {
    return k->by_name[id] ? k->by_name[id]->value : NULL;
}

static void err_missing(char *err, size_t errlen, const char *name) {
    snprintf(err, errlen, "missing required parameter %s", name);
}

/* A required string: present and non-empty. Sets *out (borrowed). */
static int need_string(const struct known_params *k, enum known_name id, const char **out,
                       char *err, size_t errlen) {
    const char *name = known_names[id].name;
    const struct param *it = known_find(k, id);
    if (!it) {
        err_missing(err, errlen, name);
        return -1;
    }
    if (it->value_len == 0) {
        snprintf(err, errlen, "%s must not be empty", name);
        return -1;
    }
    *out = it->value;
    return 0;
}

/* A UInt (0..4294967295). required: absent is an error; otherwise absent leaves *has 0. */
static int get_uint(const struct known_params *k, enum known_name id, int required, uint32_t *out,
                    int *has, char *err, size_t errlen) {
    const char *name = known_names[id].name;
    const struct param *it = known_find(k, id);
    *has = 0;
    if (!it) {
        if (!required) return 0;
        err_missing(err, errlen, name);
        return -1;
    }
    if (num_parse_u32(it->value, it->value_len, out) != 0) {
        char q[PARAMS_QUOTED_MAX];
        params_quote(q, sizeof q, it->value, it->value_len);
        snprintf(err, errlen, "%s must be an unsigned integer (0..4294967295); got %s", name, q);
        return -1;
    }
    *has = 1;
    return 0;
}

/* A UInt that must be one of allowed[0..n); shown is the list as the message writes it. */
static int check_enum(const char *name, uint32_t v, const uint32_t *allowed, size_t n,
                      const char *shown, char *err, size_t errlen) {
    for (size_t i = 0; i < n; i++)
        if (allowed[i] == v) return 0;
    snprintf(err, errlen, "%s must be one of %s; got %u", name, shown, (unsigned)v);
    return -1;
}

/* userIp: typed String by every Action's doc page, so any printable ASCII text (space to '~') of
 * 1 to VALIDATE_USER_IP_MAX bytes, not only an address: upstream documents no format, and an
 * app may send what its own proxy chain gave it. */
static int check_user_ip(const struct known_params *k, int required, const char **out, char *err,
                         size_t errlen) {
    const struct param *it = known_find(k, KN_USER_IP);
    if (!it) {
        if (!required) return 0;
        err_missing(err, errlen, "userIp");
        return -1;
    }
    int printable = it->value_len > 0 && it->value_len <= VALIDATE_USER_IP_MAX;
    for (size_t i = 0; printable && i < it->value_len; i++)
        if ((unsigned char)it->value[i] < 0x20 || (unsigned char)it->value[i] > 0x7e) printable = 0;
    if (!printable) {
        char q[PARAMS_QUOTED_MAX];
        params_quote(q, sizeof q, it->value, it->value_len);
        snprintf(err, errlen, "userIp must be 1 to %d printable ASCII characters; got %s",
                 VALIDATE_USER_IP_MAX, q);
        return -1;
    }
    *out = it->value;
    return 0;
}

uint64_t validate_nonce_ttl_s(uint64_t window_s) {
    return window_s >= (UINT64_MAX - 1) / 2 ? UINT64_MAX : 2 * window_s + 1;
}

int validate_public(const struct params *p, struct v2_public *out, char *err, size_t errlen) {
    static const enum known_name numbers[] = {KN_TIMESTAMP, KN_NONCE};
    struct known_params k;
    uint64_t values[2];
    memset(out, 0, sizeof *out);
    known_collect(p, &k);
    if (need_string(&k, KN_ACTION, &out->action, err, errlen) != 0) return -1;
    if (need_string(&k, KN_SECRET_ID, &out->secret_id, err, errlen) != 0) return -1;
    for (size_t i = 0; i < 2; i++) {
        const char *name = known_names[numbers[i]].name;
        const struct param *it = known_find(&k, numbers[i]);
        if (!it) {
            err_missing(err, errlen, name);
            return -1;
        }
        if (num_parse_u64(it->value, it->value_len, &values[i]) != 0) {
            char q[PARAMS_QUOTED_MAX];
            params_quote(q, sizeof q, it->value, it->value_len);
            snprintf(err, errlen, "%s must be an unsigned integer; got %s", name, q);
            return -1;
        }
    }
    if (need_string(&k, KN_SIGNATURE, &out->signature, err, errlen) != 0) return -1;
    out->timestamp = values[0];
    out->nonce = values[1];
    out->region = known_get(&k, KN_REGION);
    out->method = sign_method_parse(known_get(&k, KN_SIGNATURE_METHOD));
    return 0;
}

/* The optional strings every Action accepts (borrowed, NULL when absent). */
static void user_strings(const struct known_params *k, struct v2_fields *out) {
    out->app_id = known_get(k, KN_APP_ID);
    out->uid = known_get(k, KN_UID);
    out->x_forwarded_for = known_get(k, KN_X_FORWARDED_FOR);
    out->mac_address = known_get(k, KN_MAC_ADDRESS);
    out->imei = known_get(k, KN_IMEI);
    out->associate_account = known_get(k, KN_ASSOCIATE_ACCOUNT);
}

/* Optional UInts every Action accepts. */
static int common_uints(const struct known_params *k, struct v2_fields *out, char *err,
                        size_t errlen) {
    int has;
    if (get_uint(k, KN_BUSINESS_ID, 0, &out->business_id, &has, err, errlen) != 0) return -1;
    out->has_business_id = has ? 1u : 0u;
    if (get_uint(k, KN_SCENE_ID, 0, &out->scene_id, &has, err, errlen) != 0) return -1;
    out->has_scene_id = has ? 1u : 0u;
    if (get_uint(k, KN_REGISTER_TIME, 0, &out->register_time, &has, err, errlen) != 0) return -1;
    out->has_register_time = has ? 1u : 0u;
    return 0;
}

static const uint32_t account_types[] = {0, 1, 2, 4, 6, 7};

/* accountType against the documented list, and appId when it names a QQ or WeChat account. */
static int check_account(const struct known_params *k, int required, struct v2_fields *out,
                         char *err, size_t errlen) {
    int has;
    if (get_uint(k, KN_ACCOUNT_TYPE, required, &out->account_type, &has, err, errlen) != 0)
        return -1;
    if (!has) return 0;
    if (check_enum("accountType", out->account_type, account_types, 6, "0, 1, 2, 4, 6, 7", err,
                   errlen) != 0)
        return -1;
    out->has_account_type = 1;
    if (out->account_type == 1 || out->account_type == 2) {
        const char *app_id = known_get(k, KN_APP_ID);
        if (!app_id || !*app_id) {
            snprintf(err, errlen, "appId is required when accountType is 1 or 2");
            return -1;
        }
    }
    return 0;
}

static int validate_iframe_query(const struct known_params *k, struct v2_fields *out, char *err,
                                 size_t errlen) {
    static const uint32_t is_https[] = {0, 1};
    /* 3 is APP in older versions of the doc page, 4 in newer ones: both are accepted. */
    static const uint32_t client_types[] = {1, 2, 3, 4};
    int has;

    if (get_uint(k, KN_CAPTCHA_TYPE, 1, &out->captcha_type, &has, err, errlen) != 0) return -1;
    out->has_captcha_type = 1;
    if (get_uint(k, KN_DISTURB_LEVEL, 1, &out->disturb_level, &has, err, errlen) != 0) return -1;
    out->has_disturb_level = 1;
    if (get_uint(k, KN_IS_HTTPS, 1, &out->is_https, &has, err, errlen) != 0 ||
        check_enum("isHttps", out->is_https, is_https, 2, "0, 1", err, errlen) != 0)
        return -1;
    out->has_is_https = 1;
    if (get_uint(k, KN_CLIENT_TYPE, 1, &out->client_type, &has, err, errlen) != 0 ||
        check_enum("clientType", out->client_type, client_types, 4, "1, 2, 3, 4", err, errlen) != 0)
        return -1;
    out->has_client_type = 1;
    if (check_account(k, 1, out, err, errlen) != 0) return -1;
    if (common_uints(k, out, err, errlen) != 0) return -1;
    return check_user_ip(k, 0, &out->user_ip, err, errlen);
}

/* CaptchaQuery as its doc page has it: required registerTime, userIp, captchaType, script,
 * businessId; optional accountType (with its appId rule), sceneId, callBack and the user
 * strings. It has no disturbLevel, isHttps or clientType: sent anyway, they are extra parameters
 * like any other (accepted, not checked). */
static int validate_query(const struct known_params *k, struct v2_fields *out, char *err,
                          size_t errlen) {
    static const uint32_t scripts[] = {0, 1};
    int has;

    if (get_uint(k, KN_REGISTER_TIME, 1, &out->register_time, &has, err, errlen) != 0) return -1;
    if (check_user_ip(k, 1, &out->user_ip, err, errlen) != 0) return -1;
    if (get_uint(k, KN_CAPTCHA_TYPE, 1, &out->captcha_type, &has, err, errlen) != 0) return -1;
    out->has_captcha_type = 1;
    if (get_uint(k, KN_SCRIPT, 1, &out->script, &has, err, errlen) != 0 ||
        check_enum("script", out->script, scripts, 2, "0, 1", err, errlen) != 0)
        return -1;
    out->has_script = 1;
    if (get_uint(k, KN_BUSINESS_ID, 1, &out->business_id, &has, err, errlen) != 0) return -1;
    if (check_account(k, 0, out, err, errlen) != 0) return -1;
    /* businessId and registerTime again: present, so common_uints only sets their flags. */
    return common_uints(k, out, err, errlen);
}

static int validate_check(const struct known_params *k, struct v2_fields *out, char *err,
                          size_t errlen) {
    int has;
    if (need_string(k, KN_TICKET, &out->ticket, err, errlen) != 0) return -1;
    if (get_uint(k, KN_CAPTCHA_TYPE, 1, &out->captcha_type, &has, err, errlen) != 0) return -1;
    out->has_captcha_type = 1;
    if (check_user_ip(k, 1, &out->user_ip, err, errlen) != 0) return -1;
    return common_uints(k, out, err, errlen);
}

int validate_request(enum v2_action action, const struct params *p, struct v2_fields *out,
                     char *err, size_t errlen) {
    struct known_params k;
    memset(out, 0, sizeof *out);
    out->action = action;
    known_collect(p, &k);
    user_strings(&k, out);
    switch (action) {
    case V2_ACTION_CAPTCHA_IFRAME_QUERY: return validate_iframe_query(&k, out, err, errlen);
    case V2_ACTION_CAPTCHA_QUERY: return validate_query(&k, out, err, errlen);
    case V2_ACTION_CAPTCHA_CHECK: return validate_check(&k, out, err, errlen);
    default: break;
    }
    const struct param *it = known_find(&k, KN_ACTION);
    if (!it) {
        err_missing(err, errlen, "Action");
    } else {
        char q[PARAMS_QUOTED_MAX];
        params_quote(q, sizeof q, it->value, it->value_len);
        snprintf(err, errlen,
                 "Action must be one of CaptchaIframeQuery, CaptchaCheck, CaptchaQuery; got %s", q);
    }
    return -1;
}

int validate_error_code(enum v2_action action, const struct params *p) {
    if (action != V2_ACTION_UNKNOWN) return APIERR_INVALID_PARAMETER;
    const char *name = params_get(p, "Action");
    return name && *name ? APIERR_VERSION : APIERR_INVALID_PARAMETER;
}
