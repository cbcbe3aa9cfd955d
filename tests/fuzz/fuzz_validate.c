/* fuzz_validate.c: the validator (common/validate.c) over an urlencoded parameter list.
 * Invariants: an accepted request's fields are the parameters' own values (each UInt read back
 * with a plain decimal parser, each string borrowed from the list), enums keep their documented
 * sets (validate.h), required fields are present, userIp is 1..VALIDATE_USER_IP_MAX printable
 * bytes; a refused one has a message without control bytes. */
#include <string.h>

#include "capgate/params.h"
#include "capgate/validate.h"
#include "fuzz.h"

/* 1 and *out when s is decimal digits only, within 0..4294967295. */
static int plain_uint(const char *s, uint32_t *out) {
    uint64_t v = 0;
    size_t n = strlen(s);
    if (n == 0) return 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        v = v * 10 + (uint64_t)(s[i] - '0');
        if (v > UINT32_MAX) return 0;
    }
    *out = (uint32_t)v;
    return 1;
}

static void check_uint(const struct params *p, const char *name, unsigned has, uint32_t v) {
    const char *s = params_get(p, name);
    uint32_t want;
    FUZZ_CHECK(has == (s != NULL));
    if (has) {
        FUZZ_CHECK(plain_uint(s, &want));
        FUZZ_CHECK(want == v);
    }
}

static void check_str(const struct params *p, const char *name, const char *v) {
    const char *s = params_get(p, name);
    if (v) FUZZ_CHECK(s == v);
}

static int in_set(uint32_t v, const uint32_t *set, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (set[i] == v) return 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct params p;
    struct v2_public pub;
    struct v2_fields f;
    char err[512];
    params_init(&p);
    if (params_parse_urlencoded(&p, (const char *)data, size, err, sizeof err) != 0) goto out;

    err[0] = '\0';
    if (validate_public(&p, &pub, err, sizeof err) == 0) {
        FUZZ_CHECK(pub.action && pub.action[0] && pub.secret_id && pub.secret_id[0]);
        FUZZ_CHECK(pub.signature && pub.signature[0]);
        FUZZ_CHECK(pub.action == params_get(&p, "Action"));
    } else {
        FUZZ_CHECK(err[0] && fuzz_no_ctl(err, strlen(err)));
    }

    for (int a = 0; a <= V2_ACTION_COUNT; a++) {
        err[0] = '\0';
        if (validate_request((enum v2_action)a, &p, &f, err, sizeof err) != 0) {
            FUZZ_CHECK(err[0] && fuzz_no_ctl(err, strlen(err)));
            continue;
        }
        FUZZ_CHECK(a != V2_ACTION_UNKNOWN && a != V2_ACTION_COUNT);
        FUZZ_CHECK(f.action == (enum v2_action)a);
        check_uint(&p, "captchaType", f.has_captcha_type, f.captcha_type);
        check_uint(&p, "businessId", f.has_business_id, f.business_id);
        check_uint(&p, "sceneId", f.has_scene_id, f.scene_id);
        check_uint(&p, "registerTime", f.has_register_time, f.register_time);
        check_str(&p, "uid", f.uid);
        check_str(&p, "appId", f.app_id);
        check_str(&p, "userIp", f.user_ip);
        FUZZ_CHECK(f.has_captcha_type);
        if (f.user_ip) {
            size_t n = strlen(f.user_ip);
            FUZZ_CHECK(n >= 1 && n <= VALIDATE_USER_IP_MAX);
            for (size_t c = 0; c < n; c++) FUZZ_CHECK(f.user_ip[c] >= 0x20 && f.user_ip[c] < 0x7f);
        }
        if (f.has_account_type) {
            static const uint32_t accounts[] = {0, 1, 2, 4, 6, 7};
            check_uint(&p, "accountType", f.has_account_type, f.account_type);
            FUZZ_CHECK(in_set(f.account_type, accounts, 6));
            if (f.account_type == 1 || f.account_type == 2) FUZZ_CHECK(f.app_id && f.app_id[0]);
        }
        if (a == V2_ACTION_CAPTCHA_CHECK) {
            FUZZ_CHECK(f.ticket && f.ticket[0] && f.ticket == params_get(&p, "ticket"));
            FUZZ_CHECK(f.user_ip);
        } else if (a == V2_ACTION_CAPTCHA_QUERY) {
            /* registerTime, userIp, captchaType, script (0|1), businessId are required */
            FUZZ_CHECK(f.has_register_time && f.user_ip && f.has_script && f.has_business_id);
            check_uint(&p, "script", f.has_script, f.script);
            FUZZ_CHECK(f.script <= 1);
        } else {
            static const uint32_t clients[] = {1, 2, 3, 4};
            FUZZ_CHECK(f.has_disturb_level && f.has_is_https && f.has_client_type &&
                       f.has_account_type);
            check_uint(&p, "disturbLevel", f.has_disturb_level, f.disturb_level);
            check_uint(&p, "isHttps", f.has_is_https, f.is_https);
            check_uint(&p, "clientType", f.has_client_type, f.client_type);
            FUZZ_CHECK(f.is_https <= 1);
            FUZZ_CHECK(in_set(f.client_type, clients, 4));
        }
    }
out:
    params_cleanup(&p);
    return 0;
}
