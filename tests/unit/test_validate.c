/* test_validate.c: the v2 validator: public parameters, Action names, each Action's rules, with a
 * table of bad inputs that asserts each exact message, and the fields a valid request yields. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "capgate/params.h"
#include "capgate/validate.h"

static void parse_into(struct params *p, const char *query) {
    char err[256];
    params_init(p);
    if (params_parse_urlencoded(p, query, strlen(query), err, sizeof err) != 0)
        fail_msg("test input %s: %s", query, err);
}

static void test_action_names(void **state) {
    assert_int_equal(validate_action_parse("CaptchaIframeQuery"), V2_ACTION_CAPTCHA_IFRAME_QUERY);
    assert_int_equal(validate_action_parse("CaptchaCheck"), V2_ACTION_CAPTCHA_CHECK);
    assert_int_equal(validate_action_parse("CaptchaQuery"), V2_ACTION_CAPTCHA_QUERY);
    assert_int_equal(validate_action_parse("captchaiframequery"), V2_ACTION_UNKNOWN);
    assert_int_equal(validate_action_parse("CaptchaIframeCheck"), V2_ACTION_UNKNOWN);
    assert_int_equal(validate_action_parse(""), V2_ACTION_UNKNOWN);
    assert_int_equal(validate_action_parse(NULL), V2_ACTION_UNKNOWN);
    assert_int_equal(validate_action_parse("unknown"), V2_ACTION_UNKNOWN);
    for (int a = 1; a < V3_ACTION_FIRST; a++)
        assert_int_equal(validate_action_parse(validate_action_name((enum v2_action)a)), a);
    /* 3.0 names are not v2 Actions, and v2 names not 3.0 ones */
    for (int a = V3_ACTION_FIRST; a < V2_ACTION_COUNT; a++) {
        assert_int_equal(validate_action3_parse(validate_action_name((enum v2_action)a)), a);
        assert_int_equal(validate_action_parse(validate_action_name((enum v2_action)a)),
                         V2_ACTION_UNKNOWN);
    }
    assert_int_equal(validate_action3_parse("CaptchaCheck"), V2_ACTION_UNKNOWN);
    assert_string_equal(validate_action_name(V3_ACTION_DESCRIBE_CAPTCHA_RESULT),
                        "DescribeCaptchaResult");
    assert_string_equal(validate_action_name(V2_ACTION_UNKNOWN), "unknown");
    assert_string_equal(validate_action_name(V2_ACTION_COUNT), "unknown");
}

static const char public_ok[] = "Action=CaptchaCheck&SecretId=AKIDx&Timestamp=1700000000"
                                "&Nonce=18446744073709551615&Signature=abc%3D";

static void test_public_ok(void **state) {
    struct params p;
    struct v2_public pub;
    char err[256];
    parse_into(&p, public_ok);
    assert_int_equal(validate_public(&p, &pub, err, sizeof err), 0);
    assert_string_equal(pub.action, "CaptchaCheck");
    assert_string_equal(pub.secret_id, "AKIDx");
    assert_string_equal(pub.signature, "abc=");
    assert_null(pub.region);
    assert_true(pub.timestamp == 1700000000u);
    assert_true(pub.nonce == UINT64_MAX);
    assert_int_equal(pub.method, SIGN_HMAC_SHA1);
    params_set(&p, "SignatureMethod", "HmacSHA256");
    params_set(&p, "Region", "gz");
    assert_int_equal(validate_public(&p, &pub, err, sizeof err), 0);
    assert_int_equal(pub.method, SIGN_HMAC_SHA256);
    assert_string_equal(pub.region, "gz");
    params_cleanup(&p);
}

struct public_case {
    const char *name;  /* parameter to change */
    const char *value; /* NULL removes it */
    const char *message;
};

static void test_public_errors(void **state) {
    static const struct public_case cases[] = {
        {"Action", NULL, "missing required parameter Action"},
        {"Action", "", "Action must not be empty"},
        {"SecretId", NULL, "missing required parameter SecretId"},
        {"Timestamp", NULL, "missing required parameter Timestamp"},
        {"Nonce", NULL, "missing required parameter Nonce"},
        {"Signature", NULL, "missing required parameter Signature"},
        {"Signature", "", "Signature must not be empty"},
        {"Timestamp", "abc", "Timestamp must be an unsigned integer; got \"abc\""},
        {"Timestamp", "", "Timestamp must be an unsigned integer; got \"\""},
        {"Nonce", "-1", "Nonce must be an unsigned integer; got \"-1\""},
        {"Nonce", "18446744073709551616",
         "Nonce must be an unsigned integer; got \"18446744073709551616\""},
        {"Nonce", "1 ", "Nonce must be an unsigned integer; got \"1 \""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct params p;
        struct v2_public pub;
        char err[256] = "";
        parse_into(&p, public_ok);
        if (cases[i].value)
            params_set(&p, cases[i].name, cases[i].value);
        else
            params_remove(&p, cases[i].name);
        assert_int_equal(validate_public(&p, &pub, err, sizeof err), -1);
        assert_string_equal(err, cases[i].message);
        params_cleanup(&p);
    }
}

static const char iframe_ok[] = "captchaType=9&disturbLevel=2&isHttps=0&clientType=1&accountType=2"
                                "&appId=wx1&uid=u1&businessId=42&sceneId=7&registerTime=1690000000"
                                "&userIp=203.0.113.9&xForwardedFor=a&macAddress=m&imei=i"
                                "&associateAccount=x%40y&RequestClient=SDK";

static void test_iframe_ok(void **state) {
    struct params p;
    struct v2_fields f;
    char err[256];
    parse_into(&p, iframe_ok);
    assert_int_equal(validate_request(V2_ACTION_CAPTCHA_IFRAME_QUERY, &p, &f, err, sizeof err), 0);
    assert_int_equal(f.action, V2_ACTION_CAPTCHA_IFRAME_QUERY);
    assert_int_equal(f.captcha_type, 9);
    assert_int_equal(f.disturb_level, 2);
    assert_int_equal(f.is_https, 0);
    assert_int_equal(f.client_type, 1);
    assert_int_equal(f.account_type, 2);
    assert_int_equal(f.business_id, 42);
    assert_int_equal(f.scene_id, 7);
    assert_int_equal(f.register_time, 1690000000u);
    assert_true(f.has_captcha_type && f.has_disturb_level && f.has_is_https && f.has_client_type &&
                f.has_account_type && f.has_business_id && f.has_scene_id && f.has_register_time);
    assert_false(f.has_script);
    assert_string_equal(f.app_id, "wx1");
    assert_string_equal(f.uid, "u1");
    assert_string_equal(f.user_ip, "203.0.113.9");
    assert_string_equal(f.x_forwarded_for, "a");
    assert_string_equal(f.mac_address, "m");
    assert_string_equal(f.imei, "i");
    assert_string_equal(f.associate_account, "x@y");
    assert_null(f.ticket);
    params_cleanup(&p);

    /* The minimum: only the five required UInts. */
    parse_into(&p, "captchaType=0&disturbLevel=0&isHttps=1&clientType=4&accountType=0");
    assert_int_equal(validate_request(V2_ACTION_CAPTCHA_IFRAME_QUERY, &p, &f, err, sizeof err), 0);
    assert_false(f.has_business_id || f.has_scene_id || f.has_register_time);
    assert_null(f.app_id);
    assert_null(f.user_ip);
    assert_int_equal(f.is_https, 1);
    params_cleanup(&p);

    /* Upper bound and leading zeros; IPv6; every allowed enum value. */
    static const char *const more[] = {
        "captchaType=4294967295&disturbLevel=007&isHttps=1&clientType=2&accountType=4",
        "captchaType=1&disturbLevel=1&isHttps=1&clientType=2&accountType=6&userIp=2001:db8::1",
        "captchaType=1&disturbLevel=1&isHttps=1&clientType=2&accountType=7&userIp=::ffff:1.2.3.4",
        "captchaType=1&disturbLevel=1&isHttps=1&clientType=2&accountType=1&appId=x",
    };
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++) {
        parse_into(&p, more[i]);
        if (validate_request(V2_ACTION_CAPTCHA_IFRAME_QUERY, &p, &f, err, sizeof err) != 0)
            fail_msg("%s: %s", more[i], err);
        params_cleanup(&p);
    }
}

#define QUERY_MIN "registerTime=1700000000&userIp=1.2.3.4&captchaType=1&script=1&businessId=1"

/* CaptchaQuery as its doc page (拉取验证码JavaScript2.md) lists it. */
static void test_query_rules(void **state) {
    struct params p;
    struct v2_fields f;
    char err[256];
    parse_into(&p, QUERY_MIN);
    assert_int_equal(validate_request(V2_ACTION_CAPTCHA_QUERY, &p, &f, err, sizeof err), 0);
    assert_int_equal(f.action, V2_ACTION_CAPTCHA_QUERY);
    assert_true(f.has_script && f.has_register_time && f.has_business_id && f.has_captcha_type);
    assert_int_equal(f.script, 1);
    assert_int_equal(f.register_time, 1700000000u);
    assert_string_equal(f.user_ip, "1.2.3.4");
    /* No disturbLevel, isHttps, clientType, accountType needed, none read. */
    assert_false(f.has_disturb_level || f.has_is_https || f.has_client_type || f.has_account_type ||
                 f.has_scene_id);
    /* CaptchaIframeQuery's rules do not apply: its parameters are unchecked extras here. */
    assert_int_equal(params_adds(&p, "clientType", "9"), 0);
    assert_int_equal(params_adds(&p, "isHttps", "x"), 0);
    assert_int_equal(params_adds(&p, "disturbLevel", "-1"), 0);
    assert_int_equal(validate_request(V2_ACTION_CAPTCHA_QUERY, &p, &f, err, sizeof err), 0);
    assert_false(f.has_client_type);
    /* ...and CaptchaIframeQuery does not read script. */
    params_cleanup(&p);
    parse_into(&p, "captchaType=1&disturbLevel=1&isHttps=1&clientType=2&accountType=0&script=1");
    assert_int_equal(validate_request(V2_ACTION_CAPTCHA_IFRAME_QUERY, &p, &f, err, sizeof err), 0);
    assert_false(f.has_script);
    assert_int_equal(validate_request(V2_ACTION_CAPTCHA_QUERY, &p, &f, err, sizeof err), -1);
    assert_string_equal(err, "missing required parameter registerTime");
    params_cleanup(&p);
    /* script 0, the optional ones, a callBack. */
    parse_into(&p, "registerTime=0&userIp=h&captchaType=9&script=0&businessId=4294967295"
                   "&accountType=1&appId=wx&sceneId=3&uid=u&callBack=onErr");
    assert_int_equal(validate_request(V2_ACTION_CAPTCHA_QUERY, &p, &f, err, sizeof err), 0);
    assert_int_equal(f.script, 0);
    assert_true(f.has_account_type && f.account_type == 1 && f.has_scene_id);
    assert_int_equal(f.business_id, 4294967295u);
    params_cleanup(&p);
}

/* userIp is a String on every doc page: any printable ASCII up to VALIDATE_USER_IP_MAX. */
static void test_user_ip_string(void **state) {
    static const char *const ok[] = {
        "1.2.3.4",
        "1.2.3",
        "localhost",
        "1.2.3.4:80",
        "2001:db8::1",
        "fe80::1%eth0",
        "203.0.113.9, 10.0.0.1",
        " ",
        "~",
        "1234567890123456789012345678901234567890123456789012345678901234", /* 64 */
    };
    struct params p;
    struct v2_fields f;
    char err[256];
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        for (int a = 0; a < 3; a++) {
            static const char *const base[] = {"captchaType=1&disturbLevel=1&isHttps=1"
                                               "&clientType=2&accountType=0",
                                               "ticket=t&captchaType=1", QUERY_MIN};
            static const enum v2_action act[] = {V2_ACTION_CAPTCHA_IFRAME_QUERY,
                                                 V2_ACTION_CAPTCHA_CHECK, V2_ACTION_CAPTCHA_QUERY};
            parse_into(&p, base[a]);
            assert_int_equal(params_set(&p, "userIp", ok[i]), 0);
            if (validate_request(act[a], &p, &f, err, sizeof err) != 0)
                fail_msg("userIp \"%s\" refused for action %d: %s", ok[i], a, err);
            assert_string_equal(f.user_ip, ok[i]);
            params_cleanup(&p);
        }
    }
    assert_int_equal(VALIDATE_USER_IP_MAX, 64);
}

static void test_check_ok(void **state) {
    struct params p;
    struct v2_fields f;
    char err[256];
    parse_into(&p, "ticket=t02abc_def&captchaType=1&userIp=198.51.100.4&businessId=3&uid=u"
                   "&appId=a&imei=9");
    assert_int_equal(validate_request(V2_ACTION_CAPTCHA_CHECK, &p, &f, err, sizeof err), 0);
    assert_string_equal(f.ticket, "t02abc_def");
    assert_int_equal(f.captcha_type, 1);
    assert_string_equal(f.user_ip, "198.51.100.4");
    assert_true(f.has_business_id);
    assert_int_equal(f.business_id, 3);
    assert_false(f.has_scene_id);
    assert_false(f.has_client_type);
    assert_string_equal(f.uid, "u");
    assert_string_equal(f.app_id, "a");
    assert_string_equal(f.imei, "9");
    params_cleanup(&p);
}

struct request_case {
    enum v2_action action;
    const char *base;
    const char *name;  /* parameter to change; NULL: base as is */
    const char *value; /* NULL removes it */
    const char *message;
};

#define IFQ V2_ACTION_CAPTCHA_IFRAME_QUERY
#define CHK V2_ACTION_CAPTCHA_CHECK
#define CQ V2_ACTION_CAPTCHA_QUERY
#define IFRAME_MIN "captchaType=1&disturbLevel=1&isHttps=1&clientType=2&accountType=0"
#define CHECK_MIN "ticket=t&captchaType=1&userIp=1.2.3.4"
#define UINT_RULE "must be an unsigned integer (0..4294967295); got "

static void test_request_errors(void **state) {
    static const struct request_case cases[] = {
        /* Non-numeric, overflow, negative, signs, spaces, empty. */
        {IFQ, IFRAME_MIN, "captchaType", "abc", "captchaType " UINT_RULE "\"abc\""},
        {IFQ, IFRAME_MIN, "captchaType", "4294967296", "captchaType " UINT_RULE "\"4294967296\""},
        {IFQ, IFRAME_MIN, "captchaType", "-1", "captchaType " UINT_RULE "\"-1\""},
        {IFQ, IFRAME_MIN, "captchaType", "+1", "captchaType " UINT_RULE "\"+1\""},
        {IFQ, IFRAME_MIN, "disturbLevel", " 1", "disturbLevel " UINT_RULE "\" 1\""},
        {IFQ, IFRAME_MIN, "disturbLevel", "1.5", "disturbLevel " UINT_RULE "\"1.5\""},
        {IFQ, IFRAME_MIN, "captchaType", "", "captchaType " UINT_RULE "\"\""},
        {IFQ, IFRAME_MIN, "businessId", "x1", "businessId " UINT_RULE "\"x1\""},
        {IFQ, IFRAME_MIN, "sceneId", "99999999999", "sceneId " UINT_RULE "\"99999999999\""},
        {IFQ, IFRAME_MIN, "registerTime", "-5", "registerTime " UINT_RULE "\"-5\""},
        /* Long and odd values are cut and escaped. */
        {IFQ, IFRAME_MIN, "captchaType", "1234567890123456789012345678901234567890",
         "captchaType " UINT_RULE "\"12345678901234567890123456789012...\""},
        {IFQ, IFRAME_MIN, "captchaType", "a\"b\\c\n",
         "captchaType " UINT_RULE "\"a\\\"b\\\\c\\x0a\""},
        {IFQ, IFRAME_MIN, "captchaType",
         "\xE5\xBC\xA0\xE5\xBC\xA0\xE5\xBC\xA0\xE5\xBC\xA0\xE5\xBC"
         "\xA0\xE5\xBC\xA0\xE5\xBC\xA0\xE5\xBC\xA0\xE5\xBC\xA0\xE5"
         "\xBC\xA0\xE5\xBC\xA0",
         "captchaType " UINT_RULE "\"\xE5\xBC\xA0\xE5\xBC\xA0\xE5\xBC\xA0\xE5\xBC\xA0\xE5\xBC\xA0"
         "\xE5\xBC\xA0\xE5\xBC\xA0\xE5\xBC\xA0\xE5\xBC\xA0\xE5\xBC\xA0...\""},
        /* Missing required. */
        {IFQ, IFRAME_MIN, "captchaType", NULL, "missing required parameter captchaType"},
        {IFQ, IFRAME_MIN, "disturbLevel", NULL, "missing required parameter disturbLevel"},
        {IFQ, IFRAME_MIN, "isHttps", NULL, "missing required parameter isHttps"},
        {IFQ, IFRAME_MIN, "clientType", NULL, "missing required parameter clientType"},
        {IFQ, IFRAME_MIN, "accountType", NULL, "missing required parameter accountType"},
        /* Each enum out of range. */
        {IFQ, IFRAME_MIN, "isHttps", "2", "isHttps must be one of 0, 1; got 2"},
        {IFQ, IFRAME_MIN, "clientType", "5", "clientType must be one of 1, 2, 3, 4; got 5"},
        {IFQ, IFRAME_MIN, "clientType", "0", "clientType must be one of 1, 2, 3, 4; got 0"},
        {IFQ, IFRAME_MIN, "accountType", "3", "accountType must be one of 0, 1, 2, 4, 6, 7; got 3"},
        {IFQ, IFRAME_MIN, "accountType", "5", "accountType must be one of 0, 1, 2, 4, 6, 7; got 5"},
        {IFQ, IFRAME_MIN, "accountType", "8", "accountType must be one of 0, 1, 2, 4, 6, 7; got 8"},
        {CQ, QUERY_MIN, "script", "2", "script must be one of 0, 1; got 2"},
        {CQ, QUERY_MIN, "script", "", "script " UINT_RULE "\"\""},
        {CQ, QUERY_MIN, "accountType", "3", "accountType must be one of 0, 1, 2, 4, 6, 7; got 3"},
        {CQ, QUERY_MIN, "accountType", "2", "appId is required when accountType is 1 or 2"},
        /* CaptchaQuery's required parameters. */
        {CQ, QUERY_MIN, "registerTime", NULL, "missing required parameter registerTime"},
        {CQ, QUERY_MIN, "userIp", NULL, "missing required parameter userIp"},
        {CQ, QUERY_MIN, "captchaType", NULL, "missing required parameter captchaType"},
        {CQ, QUERY_MIN, "script", NULL, "missing required parameter script"},
        {CQ, QUERY_MIN, "businessId", NULL, "missing required parameter businessId"},
        {CQ, QUERY_MIN, "registerTime", "x", "registerTime " UINT_RULE "\"x\""},
        {CQ, QUERY_MIN, "businessId", "-1", "businessId " UINT_RULE "\"-1\""},
        /* appId with accountType 1 or 2. */
        {IFQ, IFRAME_MIN, "accountType", "1", "appId is required when accountType is 1 or 2"},
        {IFQ, IFRAME_MIN "&appId=", "accountType", "2",
         "appId is required when accountType is 1 or 2"},
        /* Bad userIp: empty, too long, not printable ASCII. */
        {IFQ, IFRAME_MIN, "userIp", "",
         "userIp must be 1 to 64 printable ASCII characters; got \"\""},
        {CHK, CHECK_MIN, "userIp", "",
         "userIp must be 1 to 64 printable ASCII characters; got \"\""},
        {CQ, QUERY_MIN, "userIp", "",
         "userIp must be 1 to 64 printable ASCII characters; got \"\""},
        {CHK, CHECK_MIN, "userIp",
         "12345678901234567890123456789012345678901234567890123456789012345", /* 65 */
         "userIp must be 1 to 64 printable ASCII characters; got "
         "\"12345678901234567890123456789012...\""},
        {CHK, CHECK_MIN, "userIp", "1.2.3.4\n",
         "userIp must be 1 to 64 printable ASCII characters; got \"1.2.3.4\\x0a\""},
        {IFQ, IFRAME_MIN, "userIp", "a\tb",
         "userIp must be 1 to 64 printable ASCII characters; got \"a\\x09b\""},
        {CQ, QUERY_MIN, "userIp", "\x7f",
         "userIp must be 1 to 64 printable ASCII characters; got "
         "\"\\x7f\""},
        {CHK, CHECK_MIN, "userIp", "\xE5\xBC\xA0",
         "userIp must be 1 to 64 printable ASCII characters; got \"\xE5\xBC\xA0\""},
        /* CaptchaCheck's required parameters. */
        {CHK, CHECK_MIN, "ticket", NULL, "missing required parameter ticket"},
        {CHK, CHECK_MIN, "ticket", "", "ticket must not be empty"},
        {CHK, CHECK_MIN, "captchaType", NULL, "missing required parameter captchaType"},
        {CHK, CHECK_MIN, "captchaType", "x", "captchaType " UINT_RULE "\"x\""},
        {CHK, CHECK_MIN, "userIp", NULL, "missing required parameter userIp"},
        {CHK, CHECK_MIN, "businessId", "-1", "businessId " UINT_RULE "\"-1\""},
        /* Unknown Action. */
        {V2_ACTION_UNKNOWN, "Action=CaptchaIframeCheck", NULL, NULL,
         "Action must be one of CaptchaIframeQuery, CaptchaCheck, CaptchaQuery; "
         "got \"CaptchaIframeCheck\""},
        {V2_ACTION_UNKNOWN, "x=1", NULL, NULL, "missing required parameter Action"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct params p;
        struct v2_fields f;
        char err[256] = "";
        parse_into(&p, cases[i].base);
        if (cases[i].name) {
            if (cases[i].value)
                assert_int_equal(params_set(&p, cases[i].name, cases[i].value), 0);
            else
                assert_int_equal(params_remove(&p, cases[i].name), 1);
        }
        if (validate_request(cases[i].action, &p, &f, err, sizeof err) != -1)
            fail_msg("case %zu (%s=%s) was accepted", i, cases[i].name ? cases[i].name : "-",
                     cases[i].value ? cases[i].value : "(removed)");
        assert_string_equal(err, cases[i].message);
        params_cleanup(&p);
    }
}

static void test_small_err_buffer(void **state) {
    struct params p;
    struct v2_fields f;
    char err[8];
    parse_into(&p, IFRAME_MIN);
    params_set(&p, "clientType", "5");
    assert_int_equal(validate_request(IFQ, &p, &f, err, sizeof err), -1);
    assert_string_equal(err, "clientT"); /* cut, still terminated */
    params_cleanup(&p);
}

static void test_user_fields(void **state) {
    static const char *const want[] = {"uid",  "userIp",           "xForwardedFor", "macAddress",
                                       "imei", "associateAccount", "appId",         "registerTime"};
    size_t n = 0;
    while (validate_user_fields[n]) n++;
    assert_int_equal(n, sizeof want / sizeof want[0]);
    for (size_t i = 0; i < n; i++) assert_string_equal(validate_user_fields[i], want[i]);
}

/* A Timestamp passes from now - window to now + window, so a request stays replayable for twice
 * the window: its Nonce must be remembered that long (the mock once kept it for one window). */
/* Names are looked up in a table slot picked by first byte, last byte and length: a look-alike
 * in the same slot is not taken for the real name, and the first of two equal names wins (as
 * params_find has it). */
static void test_known_name_lookup(void **state) {
    static const char *const real[] = {
        "Action",
        "SecretId",
        "Timestamp",
        "Nonce",
        "Signature",
        "Region",
        "SignatureMethod",
        "appId",
        "uid",
        "xForwardedFor",
        "macAddress",
        "imei",
        "associateAccount",
        "captchaType",
        "disturbLevel",
        "isHttps",
        "clientType",
        "accountType",
        "businessId",
        "sceneId",
        "registerTime",
        "userIp",
        "script",
        "ticket",
    };
    struct params p;
    struct v2_public pub;
    struct v2_fields f;
    char err[256];
    params_init(&p);
    for (size_t i = 0; i < sizeof real / sizeof real[0]; i++) {
        char fake[32];
        size_t len = strlen(real[i]);
        memcpy(fake, real[i], len + 1);
        for (size_t k = 1; k + 1 < len; k++) fake[k] = 'x';
        if (len == 3) fake[1] = 'q'; /* "uid" -> "uqd" */
        assert_int_equal(params_adds(&p, fake, "1"), 0);
    }
    assert_int_equal(validate_public(&p, &pub, err, sizeof err), -1);
    assert_string_equal(err, "missing required parameter Action");
    assert_int_equal(validate_request(V2_ACTION_CAPTCHA_IFRAME_QUERY, &p, &f, err, sizeof err), -1);
    assert_string_equal(err, "missing required parameter captchaType");
    assert_null(f.uid);
    assert_null(f.app_id);
    assert_null(f.imei);
    assert_int_equal(validate_request(V2_ACTION_CAPTCHA_CHECK, &p, &f, err, sizeof err), -1);
    assert_string_equal(err, "missing required parameter ticket");

    /* The real names after the look-alikes, then a second uid and Action. */
    assert_int_equal(params_adds(&p, "Action", "CaptchaQuery"), 0);
    assert_int_equal(params_adds(&p, "SecretId", "AKIDx"), 0);
    assert_int_equal(params_adds(&p, "Timestamp", "1700000000"), 0);
    assert_int_equal(params_adds(&p, "Nonce", "7"), 0);
    assert_int_equal(params_adds(&p, "Signature", "sig"), 0);
    assert_int_equal(params_adds(&p, "Region", "gz"), 0);
    assert_int_equal(params_adds(&p, "SignatureMethod", "HmacSHA256"), 0);
    assert_int_equal(params_adds(&p, "uid", "first"), 0);
    assert_int_equal(params_adds(&p, "uid", "second"), 0);
    assert_int_equal(params_adds(&p, "Action", "CaptchaCheck"), 0);
    assert_int_equal(validate_public(&p, &pub, err, sizeof err), 0);
    assert_string_equal(pub.action, "CaptchaQuery");
    assert_string_equal(pub.secret_id, "AKIDx");
    assert_true(pub.timestamp == 1700000000u && pub.nonce == 7);
    assert_string_equal(pub.signature, "sig");
    assert_string_equal(pub.region, "gz");
    assert_int_equal(pub.method, SIGN_HMAC_SHA256);
    static const char *const fields[][2] = {
        {"appId", "app"},
        {"xForwardedFor", "1.2.3.4"},
        {"macAddress", "mac"},
        {"imei", "im"},
        {"associateAccount", "acc"},
        {"captchaType", "9"},
        {"disturbLevel", "2"},
        {"isHttps", "1"},
        {"clientType", "4"},
        {"accountType", "7"},
        {"businessId", "11"},
        {"sceneId", "12"},
        {"registerTime", "13"},
        {"userIp", "::1"},
        {"script", "1"},
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        assert_int_equal(params_adds(&p, fields[i][0], fields[i][1]), 0);
    assert_int_equal(validate_request(V2_ACTION_CAPTCHA_QUERY, &p, &f, err, sizeof err), 0);
    assert_string_equal(f.uid, "first");
    assert_string_equal(f.app_id, "app");
    assert_string_equal(f.x_forwarded_for, "1.2.3.4");
    assert_string_equal(f.mac_address, "mac");
    assert_string_equal(f.imei, "im");
    assert_string_equal(f.associate_account, "acc");
    assert_string_equal(f.user_ip, "::1");
    assert_true(f.captcha_type == 9 && f.account_type == 7 && f.business_id == 11 &&
                f.scene_id == 12 && f.register_time == 13 && f.script == 1);
    assert_true(f.has_business_id && f.has_scene_id && f.has_register_time && f.has_script);
    assert_int_equal(validate_request(V2_ACTION_CAPTCHA_IFRAME_QUERY, &p, &f, err, sizeof err), 0);
    assert_true(f.captcha_type == 9 && f.disturb_level == 2 && f.is_https == 1 &&
                f.client_type == 4 && f.account_type == 7);
    assert_int_equal(validate_request(V2_ACTION_CAPTCHA_CHECK, &p, &f, err, sizeof err), -1);
    assert_string_equal(err, "missing required parameter ticket");
    assert_int_equal(params_adds(&p, "ticket", "t"), 0);
    assert_int_equal(validate_request(V2_ACTION_CAPTCHA_CHECK, &p, &f, err, sizeof err), 0);
    assert_string_equal(f.ticket, "t");
    params_cleanup(&p);
}

/* The reply code for a refused request: 6100 for an Action that was sent but is not one of the
 * three (the error code page's "interface not supported"), 4000 for everything else. */
static void test_error_code(void **state) {
    struct params p;
    parse_into(&p, "Action=CaptchaSolveForMe");
    assert_int_equal(validate_error_code(V2_ACTION_UNKNOWN, &p), 6100);
    assert_int_equal(validate_error_code(V2_ACTION_CAPTCHA_CHECK, &p), 4000);
    params_cleanup(&p);
    parse_into(&p, "Action=");
    assert_int_equal(validate_error_code(V2_ACTION_UNKNOWN, &p), 4000);
    params_cleanup(&p);
    parse_into(&p, "x=1");
    assert_int_equal(validate_error_code(V2_ACTION_UNKNOWN, &p), 4000);
    assert_int_equal(validate_error_code(V2_ACTION_CAPTCHA_QUERY, &p), 4000);
    params_cleanup(&p);
}

static void test_nonce_ttl(void **state) {
    (void)state;
    assert_true(validate_nonce_ttl_s(300) == 601);
    assert_true(validate_nonce_ttl_s(0) == 1);
    assert_true(validate_nonce_ttl_s(UINT64_MAX) == UINT64_MAX);
    assert_true(validate_nonce_ttl_s(UINT64_MAX / 2) == UINT64_MAX);
    /* Made at T - window, replayed just before T + window: still remembered. */
    uint64_t window = 300, first_use = 1000, ts = first_use + window;
    uint64_t last_accepted = ts + window;
    assert_true(first_use + validate_nonce_ttl_s(window) > last_accepted);
}

/* The one list of public parameters: Tencent's 公共参数 besides Action, SignatureMethod and
 * Token; not Action, not the SDK's RequestClient, not a business or per-user field. */
static void test_public_params(void **state) {
    static const char *const yes[] = {"SecretId", "Signature",       "Timestamp", "Nonce",
                                      "Region",   "SignatureMethod", "Token"};
    static const char *const no[] = {"Action",      V2_REQUEST_CLIENT, "secretid", "SecretId ",
                                     "captchaType", "businessId",      "ticket",   ""};
    size_t n = 0;
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++) assert_true(validate_is_public(yes[i]));
    for (size_t i = 0; i < sizeof no / sizeof *no; i++) assert_false(validate_is_public(no[i]));
    for (size_t i = 0; validate_user_fields[i]; i++)
        assert_false(validate_is_public(validate_user_fields[i]));
    while (validate_public_params[n]) n++;
    assert_int_equal(n, sizeof yes / sizeof *yes);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_action_names),      cmocka_unit_test(test_public_ok),
        cmocka_unit_test(test_public_errors),     cmocka_unit_test(test_iframe_ok),
        cmocka_unit_test(test_query_rules),       cmocka_unit_test(test_check_ok),
        cmocka_unit_test(test_user_ip_string),    cmocka_unit_test(test_error_code),
        cmocka_unit_test(test_request_errors),    cmocka_unit_test(test_small_err_buffer),
        cmocka_unit_test(test_user_fields),       cmocka_unit_test(test_nonce_ttl),
        cmocka_unit_test(test_known_name_lookup), cmocka_unit_test(test_public_params),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
