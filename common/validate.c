/* validate.c: the one validator of v2 requests (public parameters, Action, each Action's own
 * parameters), shared by the gateway and the mock so both reject the same input with the same
 * message. Messages name the parameter and the rule and quote bad values cut and escaped, since
 * they are echoed to clients and logs. */
#include "capgate/validate.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "capgate/net.h"
#include "capgate/num.h"
#include "capgate/params.h"


const char *const validate_user_fields[] = {
    "uid", "userIp", "xForwardedFor", "macAddress", "imei", "associateAccount", "appId",
    "registerTime", NULL,
};

static const char *const action_names[V2_ACTION_COUNT] = {
    [V2_ACTION_UNKNOWN] = "unknown",
    [V2_ACTION_CAPTCHA_IFRAME_QUERY] = "CaptchaIframeQuery",
    [V2_ACTION_CAPTCHA_CHECK] = "CaptchaCheck",
    [V2_ACTION_CAPTCHA_QUERY] = "CaptchaQuery",
};

enum v2_action validate_action_parse(const char *name) {
    if (!name) return V2_ACTION_UNKNOWN;
    for (int a = V2_ACTION_UNKNOWN + 1; a < V2_ACTION_COUNT; a++)
        if (strcmp(name, action_names[a]) == 0) return (enum v2_action)a;
    return V2_ACTION_UNKNOWN;
}

const char *validate_action_name(enum v2_action a) {
    if ((int)a <= V2_ACTION_UNKNOWN || a >= V2_ACTION_COUNT) return action_names[0];
    return action_names[a];
}

static void err_missing(char *err, size_t errlen, const char *name) {
    snprintf(err, errlen, "missing required parameter %s", name);
}

/* A required string: present and non-empty. Sets *out (borrowed). */
static int need_string(const struct params *p, const char *name, const char **out, char *err,
                       size_t errlen) {
    const struct param *it = params_find(p, name);
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
static int get_uint(const struct params *p, const char *name, int required, uint32_t *out,
                    int *has, char *err, size_t errlen) {
    const struct param *it = params_find(p, name);
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

/* userIp: an IPv4 or IPv6 address in its usual text form (no port, no zone). */
static int check_ip(const struct params *p, int required, const char **out, char *err,
                    size_t errlen) {
    const struct param *it = params_find(p, "userIp");
    if (!it) {
        if (!required) return 0;
        err_missing(err, errlen, "userIp");
        return -1;
    }
    /* Values hold no NUL (params rejects them), so the string is the whole value. */
    if (it->value_len == 0 || it->value_len >= INET6_ADDRSTRLEN ||
        !net_is_ip_literal(it->value)) {
        char q[PARAMS_QUOTED_MAX];
        params_quote(q, sizeof q, it->value, it->value_len);
        snprintf(err, errlen, "userIp must be an IPv4 or IPv6 address; got %s", q);
        return -1;
    }
    *out = it->value;
    return 0;
}

uint64_t validate_nonce_ttl_s(uint64_t window_s) {
    return window_s >= (UINT64_MAX - 1) / 2 ? UINT64_MAX : 2 * window_s + 1;
}

int validate_public(const struct params *p, struct v2_public *out, char *err, size_t errlen) {
    static const char *const numbers[] = {"Timestamp", "Nonce"};
    uint64_t values[2];
    memset(out, 0, sizeof *out);
    if (need_string(p, "Action", &out->action, err, errlen) != 0) return -1;
    if (need_string(p, "SecretId", &out->secret_id, err, errlen) != 0) return -1;
    for (size_t i = 0; i < 2; i++) {
        const struct param *it = params_find(p, numbers[i]);
        if (!it) {
            err_missing(err, errlen, numbers[i]);
            return -1;
        }
        if (num_parse_u64(it->value, it->value_len, &values[i]) != 0) {
            char q[PARAMS_QUOTED_MAX];
            params_quote(q, sizeof q, it->value, it->value_len);
            snprintf(err, errlen, "%s must be an unsigned integer; got %s", numbers[i], q);
            return -1;
        }
    }
    if (need_string(p, "Signature", &out->signature, err, errlen) != 0) return -1;
    out->timestamp = values[0];
    out->nonce = values[1];
    out->region = params_get(p, "Region");
    out->method = sign_method_parse(params_get(p, "SignatureMethod"));
    return 0;
}

/* The optional strings every Action accepts (borrowed, NULL when absent). */
static void user_strings(const struct params *p, struct v2_fields *out) {
    out->app_id = params_get(p, "appId");
    out->uid = params_get(p, "uid");
    out->x_forwarded_for = params_get(p, "xForwardedFor");
    out->mac_address = params_get(p, "macAddress");
    out->imei = params_get(p, "imei");
    out->associate_account = params_get(p, "associateAccount");
}

/* Optional UInts every Action accepts. */
static int common_uints(const struct params *p, struct v2_fields *out, char *err, size_t errlen) {
    int has;
    if (get_uint(p, "businessId", 0, &out->business_id, &has, err, errlen) != 0) return -1;
    out->has_business_id = has ? 1u : 0u;
    if (get_uint(p, "sceneId", 0, &out->scene_id, &has, err, errlen) != 0) return -1;
    out->has_scene_id = has ? 1u : 0u;
    if (get_uint(p, "registerTime", 0, &out->register_time, &has, err, errlen) != 0) return -1;
    out->has_register_time = has ? 1u : 0u;
    return 0;
}

static int validate_iframe_query(const struct params *p, struct v2_fields *out, int is_query,
                                 char *err, size_t errlen) {
    static const uint32_t is_https[] = {0, 1};
    static const uint32_t client_types[] = {1, 2, 4};
    static const uint32_t account_types[] = {0, 1, 2, 4, 6, 7};
    static const uint32_t scripts[] = {0, 1};
    int has;

    if (get_uint(p, "captchaType", 1, &out->captcha_type, &has, err, errlen) != 0) return -1;
    out->has_captcha_type = 1;
    if (get_uint(p, "disturbLevel", 1, &out->disturb_level, &has, err, errlen) != 0) return -1;
    out->has_disturb_level = 1;
    if (get_uint(p, "isHttps", 1, &out->is_https, &has, err, errlen) != 0 ||
        check_enum("isHttps", out->is_https, is_https, 2, "0, 1", err, errlen) != 0)
        return -1;
    out->has_is_https = 1;
    if (get_uint(p, "clientType", 1, &out->client_type, &has, err, errlen) != 0 ||
        check_enum("clientType", out->client_type, client_types, 3, "1, 2, 4", err, errlen) != 0)
        return -1;
    out->has_client_type = 1;
    if (get_uint(p, "accountType", 1, &out->account_type, &has, err, errlen) != 0 ||
        check_enum("accountType", out->account_type, account_types, 6, "0, 1, 2, 4, 6, 7", err,
                   errlen) != 0)
        return -1;
    out->has_account_type = 1;
    if (out->account_type == 1 || out->account_type == 2) {
        const char *app_id = params_get(p, "appId");
        if (!app_id || !*app_id) {
            snprintf(err, errlen, "appId is required when accountType is 1 or 2");
            return -1;
        }
    }
    if (common_uints(p, out, err, errlen) != 0) return -1;
    if (check_ip(p, 0, &out->user_ip, err, errlen) != 0) return -1;
    if (is_query) {
        if (get_uint(p, "script", 0, &out->script, &has, err, errlen) != 0) return -1;
        if (has && check_enum("script", out->script, scripts, 2, "0, 1", err, errlen) != 0)
            return -1;
        out->has_script = has ? 1u : 0u;
    }
    return 0;
}

static int validate_check(const struct params *p, struct v2_fields *out, char *err,
                          size_t errlen) {
    int has;
    if (need_string(p, "ticket", &out->ticket, err, errlen) != 0) return -1;
    if (get_uint(p, "captchaType", 1, &out->captcha_type, &has, err, errlen) != 0) return -1;
    out->has_captcha_type = 1;
    if (check_ip(p, 1, &out->user_ip, err, errlen) != 0) return -1;
    return common_uints(p, out, err, errlen);
}

int validate_request(enum v2_action action, const struct params *p, struct v2_fields *out,
                     char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    out->action = action;
    user_strings(p, out);
    switch (action) {
    case V2_ACTION_CAPTCHA_IFRAME_QUERY:
        return validate_iframe_query(p, out, 0, err, errlen);
    case V2_ACTION_CAPTCHA_QUERY:
        return validate_iframe_query(p, out, 1, err, errlen);
    case V2_ACTION_CAPTCHA_CHECK:
        return validate_check(p, out, err, errlen);
    default:
        break;
    }
    const struct param *it = params_find(p, "Action");
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
