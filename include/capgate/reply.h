/* reply.h: the JSON reply shape both programs answer with:
 * {"code": N, "codeDesc": "...", "message": "...", ...Action fields}. */
#ifndef CAPGATE_REPLY_H
#define CAPGATE_REPLY_H
#include <jansson.h>

/* The reply for when building one failed for lack of memory: a literal, so it needs none. */
#define REPLY_OOM_JSON \
    "{\"code\":6000,\"codeDesc\":\"InternalError\",\"message\":\"out of memory\"}"

/* New reference {"code","codeDesc","message"}; message NULL uses the table's default.
 * An unknown code gets codeDesc "InternalError". */
json_t *reply_new(int code, const char *message);
/* Compact JSON text of obj (keys in insertion order); caller frees with free(). */
char *reply_dump(const json_t *obj);
/* Compact error reply text with a printf-style message; caller frees with free(). */
char *reply_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
