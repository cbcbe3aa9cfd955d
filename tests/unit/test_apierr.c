/* test_apierr.c: the error table: every documented code, its codeDesc and message, and lookups
 * of codes that are not in it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "capgate/apierr.h"

static void test_documented_codes(void **state) {
    static const struct {
        int code;
        const char *desc;
    } want[] = {
        {0, "Success"},
        {APIERR_INVALID_PARAMETER, "InvalidParameter"},
        {APIERR_AUTH_FAILURE, "AuthFailure"},
        {APIERR_ACCESS_DENIED, "AccessDenied"},
        {APIERR_LIMIT_EXCEEDED, "LimitExceeded"},
        {APIERR_REPLAY, "ReplayAttack"},
        {APIERR_HTTPS_REQUIRED, "HttpsRequired"},
        {APIERR_NOT_FOUND, "ResourceNotFound"},
        {APIERR_OPERATION_FAILED, "OperationFailed"},
        {APIERR_INTERNAL, "InternalError"},
        {APIERR_VERSION, "VersionNotSupported"},
        {APIERR_UNAVAILABLE, "ServiceUnavailable"},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        assert_true(apierr_known(want[i].code));
        assert_string_equal(apierr_desc(want[i].code), want[i].desc);
        const char *msg = apierr_message(want[i].code);
        assert_non_null(msg);
        assert_true(strlen(msg) > 0);
    }
    assert_string_equal(apierr_message(0), "No Error");
}

static void test_cam_codes(void **state) {
    static const int cam[] = {4101, 4102, 4103, 4104, 4105, 4106, 4110};
    for (size_t i = 0; i < sizeof cam / sizeof cam[0]; i++) {
        assert_true(apierr_known(cam[i]));
        assert_string_equal(apierr_desc(cam[i]), "UnauthorizedOperation");
        assert_non_null(strstr(apierr_message(cam[i]), "CAM"));
        /* Each names its own failure: no two CAM messages are the same. */
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(apierr_message(cam[i]), apierr_message(cam[j]));
    }
}

/* Every code of the docs' public error code page (tencentyun/qcloud-documents
 * api/安全服务/天御业务安全防护/错误码.md), written out here from that page: the table must hold
 * each one, and nothing between them. */
static void test_docs_page_codes(void **state) {
    static const int page[] = {4000, 4100, 4101, 4102, 4103, 4104, 4105, 4106, 4110, 4300, 4400,
                               4500, 4600, 5000, 5100, 5200, 5300, 5400, 5500, 6000, 6100, 6200};
    size_t n = sizeof page / sizeof page[0];
    for (size_t i = 0; i < n; i++) {
        assert_true(apierr_known(page[i]));
        assert_non_null(apierr_desc(page[i]));
        assert_true(strlen(apierr_message(page[i])) > 0);
    }
    for (int code = 1; code < 7000; code++) {
        int listed = 0;
        for (size_t i = 0; i < n; i++) listed |= page[i] == code;
        assert_int_equal(apierr_known(code), listed);
    }
    assert_string_equal(apierr_desc(5200), "PurchaseFailed");
    assert_string_equal(apierr_desc(5300), "InsufficientBalance");
    assert_string_equal(apierr_desc(5400), "PartialSuccess");
    assert_string_equal(apierr_desc(5500), "QualificationRejected");
    /* The page's meanings: 4104 a key that does not exist, 4105 a token error, 6100 an
     * interface this version does not support (what an unknown Action gets). */
    assert_non_null(strstr(apierr_message(4104), "does not exist"));
    assert_non_null(strstr(apierr_message(4105), "token"));
    assert_non_null(strstr(apierr_message(6100), "interface"));
}

static void test_unknown_codes(void **state) {
    static const int unknown[] = {-1,   1,    200,  3999, 4001, 4107, 4109,
                                  4111, 4200, 5201, 5600, 6101, 6300, 99999};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        assert_false(apierr_known(unknown[i]));
        assert_null(apierr_desc(unknown[i]));
        assert_null(apierr_message(unknown[i]));
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_documented_codes),
        cmocka_unit_test(test_cam_codes),
        cmocka_unit_test(test_docs_page_codes),
        cmocka_unit_test(test_unknown_codes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
