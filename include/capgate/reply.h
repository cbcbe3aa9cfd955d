/* reply.h: the JSON reply shape both programs answer with:
 * {"code": N, "codeDesc": "...", "message": "...", ...Action fields}. */
#ifndef CAPGATE_REPLY_H
#define CAPGATE_REPLY_H
#include <jansson.h>

/* New reference {"code","codeDesc","message"}; message NULL uses the table's default.
 * An unknown code gets codeDesc "InternalError". */
json_t *reply_new(int code, const char *message);
/* Compact JSON text of obj (keys in insertion order); caller frees with free(). */
char *reply_dump(const json_t *obj);
/* Compact error reply text with a printf-style message; caller frees with free(). */
char *reply_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
