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

/* What the gateway reads from an upstream reply: whether it is one JSON object, and that
 * object's top-level "code", "codeDesc" and "url" (the last occurrence of a repeated key). */
#define REPLY_CODE_DESC_MAX 64
struct reply_fields {
    int has_code; /* "code" is present and an integer */
    long long code;
    int has_code_desc;                   /* "codeDesc" is present and a string */
    char code_desc[REPLY_CODE_DESC_MAX]; /* its decoded value, cut to fit */
    char *url;                           /* "url" decoded when it is a string, else NULL;
                                            * freed by reply_fields_cleanup */
};
/* 0 when text[0..len) is one JSON object, exactly as json_loadb(text, len, 0) would accept it,
 * with f (NULL allowed) filled; -1 otherwise (f then holds nothing to free). Common replies are
 * read in one pass without building a tree; anything unusual (a real number, a long integer,
 * a \u escape, deep nesting, an error) is decided by jansson. */
int reply_scan(const char *text, size_t len, struct reply_fields *f);
void reply_fields_cleanup(struct reply_fields *f);

#endif
