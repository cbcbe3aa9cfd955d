/* apierr.c: the one table of v2 error codes, codeDesc strings and default messages, so both
 * programs answer the same error the same way. */
#include "capgate/apierr.h"

#include <stddef.h>

struct apierr_entry {
    int code;
    const char *desc;
    const char *message;
};

/* Sorted by code; the CAM failures share one codeDesc because Tencent attests none for them. */
static const struct apierr_entry apierr_table[] = {
    {0, "Success", "No Error"},
    {4000, "InvalidParameter", "invalid parameter"},
    {4100, "AuthFailure", "authentication failed"},
    {4101, "UnauthorizedOperation", "CAM: the sub-account is not authorized to call this API"},
    {4102, "UnauthorizedOperation", "CAM: the sub-account is not authorized to access this resource"},
    {4103, "UnauthorizedOperation", "CAM: this API does not accept sub-account calls"},
    {4104, "UnauthorizedOperation", "CAM: the temporary credential Token is invalid"},
    {4105, "UnauthorizedOperation", "CAM: the temporary credential Token has expired"},
    {4106, "UnauthorizedOperation", "CAM: the MFA check failed"},
    {4110, "UnauthorizedOperation", "CAM: authorization failed for another reason"},
    {4300, "AccessDenied", "access denied"},
    {4400, "LimitExceeded", "request quota exceeded"},
    {4500, "ReplayAttack", "replayed request: repeated Nonce or Timestamp outside the window"},
    {4600, "HttpsRequired", "the API only accepts HTTPS requests"},
    {5000, "ResourceNotFound", "resource not found"},
    {5100, "OperationFailed", "operation failed"},
    {6000, "InternalError", "internal server error"},
    {6100, "VersionNotSupported", "API version not supported"},
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

int apierr_known(int code) { return apierr_lookup(code) != NULL; }
