/* fuzz_reply.c: the reply scanner (common/reply.c) against jansson. reply_scan must accept
 * exactly what json_loadb(text, len, 0) accepts as an object, and its fields must be jansson's
 * reading of the same text (the last of a repeated key, as jansson keeps it). */
#include <string.h>

#include <jansson.h>

#include "capgate/reply.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct reply_fields f;
    json_error_t jerr;
    int rc = reply_scan((const char *)data, size, &f);
    json_t *root = json_loadb((const char *)data, size, 0, &jerr);
    int want = root && json_is_object(root);
    FUZZ_CHECK((rc == 0) == want);
    if (rc == 0) {
        json_t *code = json_object_get(root, "code");
        json_t *desc = json_object_get(root, "codeDesc");
        json_t *url = json_object_get(root, "url");
        FUZZ_CHECK(f.has_code == json_is_integer(code));
        if (f.has_code) FUZZ_CHECK(f.code == json_integer_value(code));
        FUZZ_CHECK(f.has_code_desc == json_is_string(desc));
        if (f.has_code_desc) {
            /* cut to fit, never longer than jansson's value */
            size_t n = strlen(f.code_desc);
            FUZZ_CHECK(n < REPLY_CODE_DESC_MAX);
            FUZZ_CHECK(n <= json_string_length(desc));
            FUZZ_CHECK(memcmp(f.code_desc, json_string_value(desc), n) == 0);
            if (json_string_length(desc) < REPLY_CODE_DESC_MAX - 8 &&
                strlen(json_string_value(desc)) == json_string_length(desc))
                FUZZ_CHECK(n == json_string_length(desc));
        }
        FUZZ_CHECK((f.url != NULL) == json_is_string(url));
        if (f.url && strlen(json_string_value(url)) == json_string_length(url))
            FUZZ_CHECK(strcmp(f.url, json_string_value(url)) == 0);
        reply_fields_cleanup(&f);
    }
    json_decref(root);
    return 0;
}
