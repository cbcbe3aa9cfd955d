/* reply.c: builds the JSON replies of both programs in the v2 shape, with code, codeDesc and
 * message first so a reader of a log or a capture sees the verdict before the payload. */
#include "capgate/reply.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "capgate/apierr.h"

json_t *reply_new(int code, const char *message) {
    json_t *obj = NULL;
    const char *desc = apierr_desc(code);
    if (!desc) desc = "InternalError";
    if (!message) message = apierr_message(code);
    if (!message) message = "internal server error";

    obj = json_object();
    if (!obj) goto fail;
    /* json_string rejects invalid UTF-8, so a message that is not UTF-8 makes this return NULL
     * rather than produce broken JSON. */
    if (json_object_set_new(obj, "code", json_integer(code)) != 0) goto fail;
    if (json_object_set_new(obj, "codeDesc", json_string(desc)) != 0) goto fail;
    if (json_object_set_new(obj, "message", json_string(message)) != 0) goto fail;
    return obj;
fail:
    json_decref(obj);
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
    /* A message that is not UTF-8 (a raw byte echoed from a request) still gets an answer: the
     * table's message instead of nothing. */
    if (!obj) obj = reply_new(code, NULL);
    if (!obj) goto out;
    text = reply_dump(obj);
out:
    json_decref(obj);
    free(msg);
    return text;
}
