/* apierr.c: the one table of v2 error codes, codeDesc strings and default messages, so both
 * programs answer the same error the same way. */
#include "capgate/apierr.h"

#include <stddef.h>

struct apierr_entry {
    int code;
    const char *desc;
    const char *message;
};

/* Sorted by code. Every code of the public error code page (tencentyun/qcloud-documents
 * api/安全服务/天御业务安全防护/错误码.md), with its meaning as the default message. That page
 * describes each code in Chinese and gives no codeDesc strings: the codeDesc names are Tencent
 * Cloud's usual English ones where the API uses them (Success, InvalidParameter, AuthFailure,
 * ...), and ours for the CAM failures (one shared name) and the purchase codes 5200-5500, which
 * no captcha call returns. */
static const struct apierr_entry apierr_table[] = {
    {0, "Success", "No Error"},
    {4000, "InvalidParameter", "invalid parameter"},
    {4100, "AuthFailure", "authentication failed"},
    {4101, "UnauthorizedOperation", "CAM: the sub-account is not authorized to call this API"},
    {4102, "UnauthorizedOperation",
     "CAM: the sub-account is not authorized to access this resource"},
    {4103, "UnauthorizedOperation",
     "CAM: the sub-account is not authorized to access the resource this API operates on"},
    {4104, "UnauthorizedOperation", "CAM: the key used for the request does not exist"},
    {4105, "UnauthorizedOperation", "CAM: the token is invalid"},
    {4106, "UnauthorizedOperation", "CAM: the MFA check failed"},
    {4110, "UnauthorizedOperation", "CAM: authorization failed for another reason"},
    {4300, "AccessDenied", "access denied"},
    {4400, "LimitExceeded", "request quota exceeded"},
    {4500, "ReplayAttack", "replayed request: repeated Nonce or Timestamp outside the window"},
    {4600, "HttpsRequired", "the API only accepts HTTPS requests"},
    {5000, "ResourceNotFound", "resource not found"},
    {5100, "OperationFailed", "operation failed"},
    {5200, "PurchaseFailed", "resource purchase failed"},
    {5300, "InsufficientBalance", "insufficient account balance"},
    {5400, "PartialSuccess", "the batch operation partly succeeded"},
    {5500, "QualificationRejected",
     "purchase failed: the account's qualification was not approved"},
    {6000, "InternalError", "internal server error"},
    {6100, "VersionNotSupported",
     "this version does not support this interface (check the Action and the API host)"},
    {6200, "ServiceUnavailable", "API temporarily unavailable"},
};

static const struct apierr_entry *apierr_lookup(int code) {
    size_t lo = 0, hi = sizeof apierr_table / sizeof apierr_table[0];
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (apierr_table[mid].code == code) return &apierr_table[mid];
        if (apierr_table[mid].code < code)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const char *apierr_desc(int code) {
    const struct apierr_entry *e = apierr_lookup(code);
    return e ? e->desc : NULL;
}

const char *apierr_message(int code) {
    const struct apierr_entry *e = apierr_lookup(code);
    return e ? e->message : NULL;
}

int apierr_known(int code) {
    return apierr_lookup(code) != NULL;
}
