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

/* ---- reading an upstream reply ----
 * A strict one-pass reader for the replies the gateway forwards: it settles only text it is sure
 * json_loadb(text, len, 0) accepts, with the same values, and hands everything else (real
 * numbers, integers past 18 digits, \u escapes, escaped top-level keys, deep nesting, and every
 * error, so error messages stay jansson's business) to jansson. */

#define SCAN_MAX_DEPTH 32
#define SCAN_MAX_INT_DIGITS 18 /* always fits jansson's json_int_t (long long) */

struct scan_span {
    const unsigned char *p; /* the raw bytes between the quotes */
    size_t n;
    int escaped; /* holds a backslash escape */
};

struct scan {
    const unsigned char *p, *end;
    int depth;
};

/* The top-level members reply_scan reports; the last occurrence of a key wins, as in jansson. */
struct scan_captures {
    int code_is_int, desc_is_string, url_is_string;
    long long code;
    struct scan_span desc, url;
};

enum scan_kind { SCAN_OTHER, SCAN_STRING, SCAN_INT };

static void scan_ws(struct scan *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

/* Bytes a string scan must stop at: '"', '\\', control characters and every byte of a multi-byte
 * UTF-8 sequence; the rest (printable ASCII, most of a reply's url) are skipped in a tight loop. */
static const unsigned char string_stop[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x00 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x10 */
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x20 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x30 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x40 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, /* 0x50 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x60 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x70 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x80 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x90 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0xA0 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0xB0 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0xC0 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0xD0 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0xE0 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0xF0 */
};

/* At the opening quote: 1 and the raw span, or 0 (invalid, or a \u escape). */
static int scan_string(struct scan *s, struct scan_span *out) {
    const unsigned char *p = s->p + 1;
    int escaped = 0;
    while (p < s->end) {
        while (p < s->end && !string_stop[*p]) p++;
        if (p >= s->end) break;
        unsigned c = *p;
        if (c == '"') {
            out->p = s->p + 1;
            out->n = (size_t)(p - out->p);
            out->escaped = escaped;
            s->p = p + 1;
            return 1;
        }
        if (c < 0x20) return 0;
        if (c == '\\') {
            if (p + 1 >= s->end) return 0;
            switch (p[1]) {
            case '"':
            case '\\':
            case '/':
            case 'b':
            case 'f':
            case 'n':
            case 'r':
            case 't': break;
            default: return 0;
            }
            escaped = 1;
            p += 2;
            continue;
        }
        if (c >= 0x80) {
            size_t n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
            if ((size_t)(s->end - p) < n || !params_utf8_valid((const char *)p, n)) return 0;
            p += n;
            continue;
        }
        p++;
    }
    return 0;
}

/* An integer as jansson reads one (no leading zeros); 0 for a real or a long one. */
static int scan_int(struct scan *s, long long *out) {
    const unsigned char *p = s->p;
    long long v = 0;
    size_t digits = 0;
    int neg = 0;
    if (p < s->end && *p == '-') {
        neg = 1;
        p++;
    }
    if (p >= s->end || *p < '0' || *p > '9') return 0;
    if (*p == '0' && p + 1 < s->end && p[1] >= '0' && p[1] <= '9') return 0;
    while (p < s->end && *p >= '0' && *p <= '9') {
        if (++digits > SCAN_MAX_INT_DIGITS) return 0;
        v = v * 10 + (*p - '0');
        p++;
    }
    if (p < s->end && (*p == '.' || *p == 'e' || *p == 'E')) return 0;
    *out = neg ? -v : v;
    s->p = p;
    return 1;
}

static int scan_literal(struct scan *s, const char *word, size_t n) {
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0) return 0;
    s->p += n;
    return 1;
}

static int span_is(const struct scan_span *sp, const char *word) {
    size_t n = strlen(word);
    return sp->n == n && memcmp(sp->p, word, n) == 0;
}

static int scan_object(struct scan *s, struct scan_captures *cap);
static int scan_array(struct scan *s);

static int scan_value(struct scan *s, enum scan_kind *kind, struct scan_span *str, long long *num) {
    *kind = SCAN_OTHER;
    if (s->p >= s->end) return 0;
    switch (*s->p) {
    case '{': return scan_object(s, NULL);
    case '[': return scan_array(s);
    case '"': *kind = SCAN_STRING; return scan_string(s, str);
    case 't': return scan_literal(s, "true", 4);
    case 'f': return scan_literal(s, "false", 5);
    case 'n': return scan_literal(s, "null", 4);
    default: *kind = SCAN_INT; return scan_int(s, num);
    }
}

/* Records a top-level member; 0 for an escaped key (jansson compares it decoded). */
static int scan_capture(struct scan_captures *cap, const struct scan_span *key, enum scan_kind kind,
                        const struct scan_span *str, long long num) {
    if (key->escaped) return 0;
    if (span_is(key, "code")) {
        cap->code_is_int = kind == SCAN_INT;
        cap->code = num;
    } else if (span_is(key, "codeDesc")) {
        cap->desc_is_string = kind == SCAN_STRING;
        cap->desc = *str;
    } else if (span_is(key, "url")) {
        cap->url_is_string = kind == SCAN_STRING;
        cap->url = *str;
    }
    return 1;
}

/* At '{'; cap is set for the top-level object only. */
static int scan_object(struct scan *s, struct scan_captures *cap) {
    if (++s->depth > SCAN_MAX_DEPTH) return 0;
    s->p++;
    scan_ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        s->depth--;
        return 1;
    }
    for (;;) {
        struct scan_span key, str = {NULL, 0, 0};
        enum scan_kind kind;
        long long num = 0;
        if (s->p >= s->end || *s->p != '"' || !scan_string(s, &key)) return 0;
        scan_ws(s);
        if (s->p >= s->end || *s->p != ':') return 0;
        s->p++;
        scan_ws(s);
        if (!scan_value(s, &kind, &str, &num)) return 0;
        if (cap && !scan_capture(cap, &key, kind, &str, num)) return 0;
        scan_ws(s);
        if (s->p >= s->end) return 0;
        if (*s->p == '}') {
            s->p++;
            s->depth--;
            return 1;
        }
        if (*s->p != ',') return 0;
        s->p++;
        scan_ws(s);
    }
}

static int scan_array(struct scan *s) {
    if (++s->depth > SCAN_MAX_DEPTH) return 0;
    s->p++;
    scan_ws(s);
    if (s->p < s->end && *s->p == ']') {
        s->p++;
        s->depth--;
        return 1;
    }
    for (;;) {
        struct scan_span str = {NULL, 0, 0};
        enum scan_kind kind;
        long long num = 0;
        if (!scan_value(s, &kind, &str, &num)) return 0;
        scan_ws(s);
        if (s->p >= s->end) return 0;
        if (*s->p == ']') {
            s->p++;
            s->depth--;
            return 1;
        }
        if (*s->p != ',') return 0;
        s->p++;
        scan_ws(s);
    }
}

/* A span checked by scan_string (no \u) decoded into out (cap >= 1), cut to fit. */
static void span_decode(const struct scan_span *sp, char *out, size_t cap) {
    size_t o = 0;
    for (size_t i = 0; i < sp->n && o + 1 < cap; i++) {
        char c = (char)sp->p[i];
        if (c == '\\') {
            c = (char)sp->p[++i];
            switch (c) {
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            default: break; /* '"', '\\', '/' stand for themselves */
            }
        }
        out[o++] = c;
    }
    out[o] = '\0';
}

static int scan_jansson(const char *text, size_t len, struct reply_fields *f) {
    json_t *j = json_loadb(text, len, 0, NULL);
    if (!json_is_object(j)) {
        json_decref(j);
        return -1;
    }
    if (f) {
        json_t *code = json_object_get(j, "code");
        json_t *desc = json_object_get(j, "codeDesc");
        json_t *url = json_object_get(j, "url");
        if (json_is_integer(code)) {
            f->has_code = 1;
            f->code = json_integer_value(code);
        }
        if (json_is_string(desc)) {
            size_t n = strlen(json_string_value(desc));
            if (n >= sizeof f->code_desc) n = sizeof f->code_desc - 1;
            memcpy(f->code_desc, json_string_value(desc), n);
            f->code_desc[n] = '\0';
            f->has_code_desc = 1;
        }
        if (json_is_string(url)) f->url = strdup(json_string_value(url));
    }
    json_decref(j);
    return 0;
}

int reply_scan(const char *text, size_t len, struct reply_fields *f) {
    struct scan s = {(const unsigned char *)text, (const unsigned char *)text + len, 0};
    struct scan_captures cap;
    memset(&cap, 0, sizeof cap);
    if (f) memset(f, 0, sizeof *f);
    scan_ws(&s);
    if (s.p >= s.end || *s.p != '{' || !scan_object(&s, f ? &cap : NULL))
        return scan_jansson(text, len, f);
    scan_ws(&s);
    if (s.p != s.end) return scan_jansson(text, len, f);
    if (f) {
        f->has_code = cap.code_is_int;
        f->code = cap.code;
        f->has_code_desc = cap.desc_is_string;
        if (cap.desc_is_string) span_decode(&cap.desc, f->code_desc, sizeof f->code_desc);
        if (cap.url_is_string) {
            f->url = malloc(cap.url.n + 1);
            if (f->url) span_decode(&cap.url, f->url, cap.url.n + 1);
        }
    }
    return 0;
}

void reply_fields_cleanup(struct reply_fields *f) {
    free(f->url);
    f->url = NULL;
}
