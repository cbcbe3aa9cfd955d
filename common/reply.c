/* reply.c: builds the JSON replies of both programs in the v2 shape, with code, codeDesc and
 * message first so a reader of a log or a capture sees the verdict before the payload. */
#include "capgate/reply.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capgate/apierr.h"
#include "capgate/params.h"

/* A copy of s with each byte that is not part of a valid UTF-8 sequence written as '?'; callers
 * format messages into fixed buffers, and a cut there can split a character. */
static char *utf8_repair(const char *s, size_t len) {
    char *out = malloc(len + 1);
    if (!out) return NULL;
    size_t i = 0, o = 0;
    while (i < len) {
        unsigned char c = (unsigned char)s[i];
        size_t n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        if (n <= len - i && params_utf8_valid(s + i, n)) {
            memcpy(out + o, s + i, n);
            o += n;
            i += n;
        } else {
            out[o++] = '?';
            i++;
        }
    }
    out[o] = '\0';
    return out;
}

json_t *reply_new(int code, const char *message) {
    json_t *obj = NULL;
    char *repaired = NULL;
    const char *desc = apierr_desc(code);
    if (!desc) desc = "InternalError";
    if (!message) message = apierr_message(code);
    if (!message) message = "internal server error";

    size_t len = strlen(message);
    if (!params_utf8_valid(message, len)) {
        repaired = utf8_repair(message, len);
        if (!repaired) goto fail;
        message = repaired;
    }
    obj = json_object();
    if (!obj) goto fail;
    if (json_object_set_new(obj, "code", json_integer(code)) != 0) goto fail;
    if (json_object_set_new(obj, "codeDesc", json_string(desc)) != 0) goto fail;
    if (json_object_set_new(obj, "message", json_string(message)) != 0) goto fail;
    free(repaired);
    return obj;
fail:
    json_decref(obj);
    free(repaired);
    return NULL;
}

char *reply_dump(const json_t *obj) {
    if (!obj) return NULL;
    return json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
}

char *reply_error(int code, const char *fmt, ...) {
    json_t *obj = NULL;
    char *msg = NULL, *text = NULL;
    va_list ap;

    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) goto out;
    msg = malloc((size_t)n + 1);
    if (!msg) goto out;
    va_start(ap, fmt);
    vsnprintf(msg, (size_t)n + 1, fmt, ap);
    va_end(ap);

    obj = reply_new(code, msg);
    if (!obj) goto out;
    text = reply_dump(obj);
out:
    json_decref(obj);
    free(msg);
    return text;
}
