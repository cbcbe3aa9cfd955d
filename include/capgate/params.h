/* params.h: the ordered list of request parameters, and the decoders of the three forms a v2
 * request arrives in: a GET query, an x-www-form-urlencoded body, a multipart/form-data body.
 * Parsing is strict: each failure returns -1 with a message naming the parameter and the rule. */
#ifndef CAPGATE_PARAMS_H
#define CAPGATE_PARAMS_H
#include <stddef.h>

#define PARAMS_MAX_COUNT 64   /* more parameters than this is an error */
#define PARAMS_MAX_NAME 64    /* bytes, decoded */
#define PARAMS_MAX_VALUE 4096 /* bytes, decoded */

/* In the list's text, value follows its name's NUL: name_len + value_len + 2 bytes from name
 * are "name\0value\0" (so both can be copied at once). */
struct param {
    char *name;  /* decoded, NUL-terminated, valid UTF-8; in the list's text */
    char *value; /* decoded, NUL-terminated, valid UTF-8, may be ""; name + name_len + 1 */
    size_t name_len;
    size_t value_len;
};

struct params_text;

/* Names and values live in the list's text blocks (a few per list, not one allocation per
 * parameter): they stay valid until params_cleanup, also after params_remove or params_set
 * replaced them. */
struct params {
    struct param *items; /* in arrival order (or sorted after params_sort) */
    size_t count;
    size_t cap;
    struct params_text *text; /* newest first */
};

void params_init(struct params *p);
void params_cleanup(struct params *p);
/* Empties p for reuse: count 0, its item array and its newest text block kept when each is at
 * most 4 KB (a usual request's), the rest freed. Values borrowed from p are invalid after. A
 * reset list is still initialised: params_cleanup frees what it kept. */
void params_reset(struct params *p);
/* Appends a copy of name/value (no duplicate check). 0, or -1 on OOM. */
int params_add(struct params *p, const char *name, size_t name_len, const char *value,
               size_t value_len);
int params_adds(struct params *p, const char *name, const char *value); /* NUL-terminated */
/* Replaces the value of name, or appends it. 0/-1. */
int params_set(struct params *p, const char *name, const char *value);
/* Removes name if present; returns 1 if removed, 0 if absent. */
int params_remove(struct params *p, const char *name);
/* Borrowed value of name (valid until p changes), or NULL when absent. */
const char *params_get(const struct params *p, const char *name);
const struct param *params_find(const struct params *p, const char *name);
/* Sorts by name in byte order (memcmp, shorter first on a tie of the common prefix). */
void params_sort(struct params *p);
/* Sorts index[0..n) (borrowed entries of a list) by name as params_sort orders them; stable
 * up to PARAMS_MAX_COUNT entries (equal names keep their order). */
void params_sort_index(const struct param **index, size_t n);
/* Deep copy into dst (initialised by the call). 0/-1. */
int params_copy(struct params *dst, const struct params *src);
/* Deep copy of src into dst (initialised by the call) without the parameters named in names
 * (NULL-terminated, at most PARAMS_COPY_SKIP_MAX, borrowed for the call). Each name leaves out
 * the first parameter of that name still in the copy, as params_remove of each name in turn
 * after params_copy would (a name listed twice leaves out two). 0, or -1 on OOM or too many
 * names. */
#define PARAMS_COPY_SKIP_MAX 64
int params_copy_without(struct params *dst, const struct params *src, const char *const *names);
/* params_copy_without into dst, an initialised list that it empties first with params_reset,
 * reusing the storage that keeps (no allocation when it is large enough). On -1 dst is empty
 * and still initialised. */
int params_assign_without(struct params *dst, const struct params *src, const char *const *names);

/* Decodes an application/x-www-form-urlencoded string (also a GET query) and appends its
 * parameters: '+' is a space, %XX is decoded. Errors: malformed percent-encoding, an empty name,
 * a duplicated name (also against parameters already in p), a name or value over the limits,
 * more than PARAMS_MAX_COUNT, invalid UTF-8 after decoding. "a&&b=1" skips empty pairs;
 * "a" (no '=') is a=""; err gets the message ("malformed percent-encoding in parameter uid"). */
int params_parse_urlencoded(struct params *p, const char *buf, size_t len, char *err,
                            size_t errlen);
/* Decodes a multipart/form-data body (boundary from content_type, quoted or not). Each part's
 * Content-Disposition name= is the parameter name, its bytes the value (no '+' rule). Same errors
 * as above, plus a missing boundary, a part without a name, a body that does not end with the
 * closing boundary. */
int params_parse_multipart(struct params *p, const char *content_type, const char *body, size_t len,
                           char *err, size_t errlen);
/* Dispatch on content_type (parameters like charset ignored, case-insensitive type):
 * x-www-form-urlencoded or multipart/form-data; NULL or "" is treated as urlencoded; anything
 * else is an error naming the type. */
int params_parse_body(struct params *p, const char *content_type, const char *body, size_t len,
                      char *err, size_t errlen);

/* 1 when s[0..len) is well-formed UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
int params_utf8_valid(const char *s, size_t len);
/* Bytes of a bad name or value echoed in a message, and the room its quoted form needs (every
 * byte may become \xNN, plus quotes, "..." and the NUL). */
#define PARAMS_QUOTE_MAX 32
#define PARAMS_QUOTED_MAX (PARAMS_QUOTE_MAX * 4 + 8)
/* s[0..len) for an error message, into out: in double quotes, at most PARAMS_QUOTE_MAX bytes cut
 * on a character boundary then "...", quotes, backslashes and control bytes escaped, bytes of
 * invalid UTF-8 as \xNN; so a message never carries raw bytes from a request. out is always
 * NUL-terminated (empty when outlen < 8). */
void params_quote(char *out, size_t outlen, const char *s, size_t len);
/* Percent-encodes for a query or urlencoded body: A-Z a-z 0-9 - _ . ~ kept, everything else
 * %XX (uppercase hex, space as %20). Returns 0/-1 (OOM); appends to out. */
struct strbuf;
int params_encode_value(struct strbuf *out, const char *s, size_t len);
/* "name=value&..." of all parameters in their current order, encoded as above; caller frees. */
char *params_encode(const struct params *p);

#endif
