/* params.c: the ordered parameter list and the strict decoders of a v2 request's three forms
 * (GET query, urlencoded body, multipart body). This runs for every request the gateway serves,
 * so names and values are appended to the list's text blocks (one allocation for a usual
 * request's parameters, not one each), the urlencoded decoder writes straight into them in one
 * pass, and duplicates are found by sorting a small index instead of comparing every pair. A
 * failed parse leaves the list as it was (the text it appended stays allocated until
 * params_cleanup). */
#include "capgate/params.h"

#include <endian.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "capgate/strbuf.h"

#define PARAMS_INITIAL_CAP 16
#define PARAMS_COPY_ROOM 8 /* items a copy has room for beyond its source's */
/* params_reset keeps an item array and a text block of at most this many bytes (a usual
 * request's); larger ones are freed, so a list kept for reuse holds no more than twice this. */
#define PARAMS_KEEP_BYTES 4096
/* A text block's usual size: a forwarded request's names and values fit one, and the block
 * stays within malloc's thread cache (a larger request would consolidate its fast bins). */
#define PARAMS_TEXT_BYTES (1000 - sizeof(struct params_text))

struct params_text {
    struct params_text *next;
    size_t len, cap;
    char bytes[];
};

void params_init(struct params *p) {
    p->items = NULL;
    p->count = 0;
    p->cap = 0;
    p->text = NULL;
}

void params_cleanup(struct params *p) {
    while (p->text) {
        struct params_text *t = p->text;
        p->text = t->next;
        free(t);
    }
    free(p->items);
    params_init(p);
}

void params_reset(struct params *p) {
    struct params_text *keep = p->text;
    if (keep) {
        while (keep->next) {
            struct params_text *t = keep->next;
            keep->next = t->next;
            free(t);
        }
        if (keep->cap > PARAMS_KEEP_BYTES) {
            free(keep);
            keep = NULL;
        } else {
            keep->len = 0;
        }
    }
    if (p->items && p->cap > PARAMS_KEEP_BYTES / sizeof *p->items) {
        free(p->items);
        p->items = NULL;
        p->cap = 0;
    }
    p->text = keep;
    p->count = 0;
}

/* A new empty block of cap bytes, now p's newest. NULL on OOM. */
static struct params_text *text_block_new(struct params *p, size_t cap) {
    struct params_text *t;
    if (cap > SIZE_MAX - sizeof(*t)) return NULL;
    if (!(t = malloc(sizeof(*t) + cap))) return NULL;
    t->len = 0;
    t->cap = cap;
    t->next = p->text;
    p->text = t;
    return t;
}

/* n bytes of p's text: from the newest block, or a new block of at least min_cap bytes. */
static char *text_take(struct params *p, size_t n, size_t min_cap) {
    struct params_text *t = p->text;
    if ((!t || t->cap - t->len < n) && !(t = text_block_new(p, n > min_cap ? n : min_cap)))
        return NULL;
    char *s = t->bytes + t->len;
    t->len += n;
    return s;
}

/* The free end of p's newest block when it has need bytes, else of a new block of need or
 * want bytes, whichever is more. Nothing is claimed: text_take(p, n, 0) with n <= need claims
 * the first n bytes. NULL on OOM. */
static char *text_room(struct params *p, size_t need, size_t want) {
    struct params_text *t = p->text;
    if ((!t || t->cap - t->len < need) && !(t = text_block_new(p, need > want ? need : want)))
        return NULL;
    return t->bytes + t->len;
}

/* name and value share n = name_len + value_len + 2 bytes of p's text; value follows name. */
static int param_fill(struct params *p, struct param *it, const char *name, size_t name_len,
                      const char *value, size_t value_len) {
    if (name_len > SIZE_MAX / 4 || value_len > SIZE_MAX / 4) return -1;
    char *block = text_take(p, name_len + value_len + 2, PARAMS_TEXT_BYTES);
    if (!block) return -1;
    if (name_len) memcpy(block, name, name_len);
    block[name_len] = '\0';
    if (value_len) memcpy(block + name_len + 1, value, value_len);
    block[name_len + 1 + value_len] = '\0';
    it->name = block;
    it->name_len = name_len;
    it->value = block + name_len + 1;
    it->value_len = value_len;
    return 0;
}

/* Room for one more item. 0/-1. */
static int items_reserve(struct params *p) {
    if (p->count < p->cap) return 0;
    size_t cap = p->cap ? p->cap * 2 : PARAMS_INITIAL_CAP;
    if (cap > SIZE_MAX / sizeof *p->items) return -1;
    struct param *items = realloc(p->items, cap * sizeof *items);
    if (!items) return -1;
    p->items = items;
    p->cap = cap;
    return 0;
}

int params_add(struct params *p, const char *name, size_t name_len, const char *value,
               size_t value_len) {
    if (items_reserve(p) != 0) return -1;
    if (param_fill(p, &p->items[p->count], name, name_len, value, value_len) != 0) return -1;
    p->count++;
    return 0;
}

int params_adds(struct params *p, const char *name, const char *value) {
    return params_add(p, name, strlen(name), value, strlen(value));
}

static size_t params_index(const struct params *p, const char *name, size_t name_len) {
    for (size_t i = 0; i < p->count; i++) {
        const struct param *it = &p->items[i];
        /* Names are NUL-terminated, so name[0] is readable even when empty. */
        if (it->name_len == name_len && it->name[0] == name[0] &&
            memcmp(it->name, name, name_len) == 0)
            return i;
    }
    return SIZE_MAX;
}

int params_set(struct params *p, const char *name, const char *value) {
    size_t name_len = strlen(name);
    size_t i = params_index(p, name, name_len);
    if (i == SIZE_MAX) return params_add(p, name, name_len, value, strlen(value));
    struct param fresh;
    if (param_fill(p, &fresh, name, name_len, value, strlen(value)) != 0) return -1;
    p->items[i] = fresh;
    return 0;
}

int params_remove(struct params *p, const char *name) {
    size_t i = params_index(p, name, strlen(name));
    if (i == SIZE_MAX) return 0;
    memmove(&p->items[i], &p->items[i + 1], (p->count - i - 1) * sizeof *p->items);
    p->count--;
    return 1;
}

const struct param *params_find(const struct params *p, const char *name) {
    size_t i = params_index(p, name, strlen(name));
    return i == SIZE_MAX ? NULL : &p->items[i];
}

const char *params_get(const struct params *p, const char *name) {
    const struct param *it = params_find(p, name);
    return it ? it->value : NULL;
}

static int param_name_cmp(const struct param *a, const struct param *b) {
    size_t n = a->name_len < b->name_len ? a->name_len : b->name_len;
    int c = memcmp(a->name, b->name, n);
    if (c != 0) return c;
    return (a->name_len > b->name_len) - (a->name_len < b->name_len);
}

static int param_cmp_qsort(const void *a, const void *b) {
    return param_name_cmp(a, b);
}

static int param_ptr_cmp_qsort(const void *a, const void *b) {
    return param_name_cmp(*(const struct param *const *)a, *(const struct param *const *)b);
}

/* A name's first 8 bytes as a big-endian number, zero-padded: when two prefixes differ they
 * order the names as param_name_cmp does (a padded position is below every byte, as a shorter
 * name is below a longer one), so only names sharing their first 8 bytes need memcmp. */
static uint64_t name_prefix(const struct param *it) {
    const char *s = it->name;
    size_t len = it->name_len;
    if (len >= 8) {
        uint64_t k;
        memcpy(&k, s, 8);
        return be64toh(k);
    }
    if (len >= 4) { /* two loads that overlap when len < 8; the shared bytes are equal */
        uint32_t head, tail;
        memcpy(&head, s, 4);
        memcpy(&tail, s + len - 4, 4);
        return (uint64_t)be32toh(head) << 32 | (uint64_t)be32toh(tail) << (64 - 8 * len);
    }
    uint64_t k = 0;
    for (size_t i = 0; i < len; i++) k |= (uint64_t)(unsigned char)s[i] << (56 - 8 * i);
    return k;
}

/* Insertion sort on cached prefixes: a request has a dozen parameters, where qsort's set-up and
 * indirect calls cost more than the sorting. */
void params_sort_index(const struct param **index, size_t n) {
    uint64_t key[PARAMS_MAX_COUNT];
    if (n > PARAMS_MAX_COUNT) {
        qsort(index, n, sizeof *index, param_ptr_cmp_qsort);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const struct param *it = index[i];
        uint64_t k = name_prefix(it);
        size_t j = i;
        while (j > 0 &&
               (key[j - 1] > k || (key[j - 1] == k && param_name_cmp(index[j - 1], it) > 0))) {
            index[j] = index[j - 1];
            key[j] = key[j - 1];
            j--;
        }
        index[j] = it;
        key[j] = k;
    }
}

void params_sort(struct params *p) {
    if (p->count > 1) qsort(p->items, p->count, sizeof *p->items, param_cmp_qsort);
}

int params_copy(struct params *dst, const struct params *src) {
    static const char *const none[] = {NULL};
    return params_copy_without(dst, src, none);
}

/* A bit for a name's first byte and length: a parameter whose bit no name to leave out has is
 * copied without comparing names (most of a request's). */
static uint64_t name_bit(const char *name, size_t len) {
    return (uint64_t)1 << (((unsigned char)name[0] + len) & 63);
}

/* The copy's text is one block with room for src's strings and a few more (callers add their
 * own parameters to a copy). The names to leave out are a few (the pipeline's seven): each
 * parameter whose name_bit they have is compared with those still pending. */
int params_copy_without(struct params *dst, const struct params *src, const char *const *names) {
    params_init(dst);
    int rc = params_assign_without(dst, src, names);
    if (rc != 0) params_cleanup(dst);
    return rc;
}

int params_assign_without(struct params *dst, const struct params *src, const char *const *names) {
    size_t skip_len[PARAMS_COPY_SKIP_MAX];
    size_t n_skip = 0;
    uint64_t skip_bits = 0;
    params_reset(dst);
    for (; names[n_skip]; n_skip++) {
        if (n_skip == PARAMS_COPY_SKIP_MAX) return -1;
        skip_len[n_skip] = strlen(names[n_skip]);
        skip_bits |= name_bit(names[n_skip], skip_len[n_skip]);
    }
    /* bit k: names[k] has not left out a parameter yet */
    _Static_assert(PARAMS_COPY_SKIP_MAX <= 64, "a bit per name");
    uint64_t pending = n_skip == 64 ? UINT64_MAX : ((uint64_t)1 << n_skip) - 1;
    if (src->count == 0) return 0;
    /* room for the parameters callers add to a copy (upstream_params: six) */
    size_t cap = src->count + PARAMS_COPY_ROOM;
    if (dst->cap < cap) {
        struct param *items = malloc(cap * sizeof *items);
        if (!items) return -1;
        free(dst->items);
        dst->items = items;
        dst->cap = cap;
    }
    size_t text = 0;
    for (size_t i = 0; i < src->count; i++)
        text += src->items[i].name_len + src->items[i].value_len + 2;
    if (!text_room(dst, text, text + PARAMS_TEXT_BYTES / 2)) return -1;
    /* The newest block has room for all of them (text_take cannot fail here), and
     * "name\0value\0" is one run of the source, so each parameter is one memcpy. */
    for (size_t i = 0; i < src->count; i++) {
        const struct param *it = &src->items[i];
        size_t k = 0;
        if (pending && (skip_bits & name_bit(it->name, it->name_len))) {
            while (k < n_skip &&
                   !((pending >> k & 1) && skip_len[k] == it->name_len &&
                     names[k][0] == it->name[0] && memcmp(names[k], it->name, it->name_len) == 0))
                k++;
            if (k < n_skip) {
                pending &= ~((uint64_t)1 << k);
                continue;
            }
        }
        struct param *to = &dst->items[dst->count++];
        size_t n = it->name_len + it->value_len + 2;
        to->name = text_take(dst, n, 0);
        memcpy(to->name, it->name, n);
        to->name_len = it->name_len;
        to->value = to->name + it->name_len + 1;
        to->value_len = it->value_len;
    }
    return 0;
}

int params_utf8_valid(const char *str, size_t len) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
        if (c >= 0xC2 && c <= 0xDF) {
            n = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 3;
            if (c == 0xE0) lo = 0xA0; /* overlong */
            if (c == 0xED) hi = 0x9F; /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 4;
            if (c == 0xF0) lo = 0x90; /* overlong */
            if (c == 0xF4) hi = 0x8F; /* above U+10FFFF */
        } else {
            return 0;
        }
        if (len - i < n) return 0;
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (size_t k = 2; k < n; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF) return 0;
        i += n;
    }
    return 1;
}

/* A name made only of these is echoed bare in messages ("parameter uid"); anything else is
 * quoted and escaped, so a message never carries raw bytes from a request. */
static int name_is_plain(const char *s, size_t len) {
    if (len == 0 || len > PARAMS_MAX_NAME) return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return 0;
    }
    return 1;
}

/* Cut on a character boundary so a valid value stays valid; invalid UTF-8 is shown as \xNN. */
void params_quote(char *out, size_t outlen, const char *s, size_t len) {
    size_t cut = len;
    if (cut > PARAMS_QUOTE_MAX) {
        cut = PARAMS_QUOTE_MAX;
        while (cut > 0 && ((unsigned char)s[cut] & 0xC0) == 0x80) cut--;
    }
    int utf8 = params_utf8_valid(s, cut);
    size_t o = 0;
    if (outlen < 8) {
        if (outlen) out[0] = '\0';
        return;
    }
    out[o++] = '"';
    for (size_t i = 0; i < cut && o + 6 < outlen; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20 || c == 0x7f || (c >= 0x80 && !utf8)) {
            o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    if (cut < len && o + 5 < outlen) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o++] = '"';
    out[o] = '\0';
}

/* How a parameter is named in an error message. */
static void name_for_message(char *out, size_t outlen, const char *name, size_t len) {
    if (name_is_plain(name, len))
        snprintf(out, outlen, "%.*s", (int)len, name);
    else
        params_quote(out, outlen, name, len);
}

static void set_err(char *err, size_t errlen, const char *fmt, const char *name, size_t len) {
    char shown[PARAMS_QUOTED_MAX];
    if (!err || errlen == 0) return;
    name_for_message(shown, sizeof shown, name, len);
    snprintf(err, errlen, fmt, shown);
}

static int hexval(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* The urlencoded decoder's byte classes. FORM_PLAIN bytes (most of a request) are copied as
 * they are; FORM_WIDE ones (NUL, 0x80-0xFF) too, but they mark the field for the UTF-8 and NUL
 * checks, which a field of plain ASCII skips. */
enum { FORM_PLAIN, FORM_WIDE, FORM_PLUS, FORM_PCT, FORM_EQ, FORM_AMP };

/* Which fields of a decoded pair may hold a NUL or a byte over 0x7F and so need the UTF-8 and
 * NUL checks (a field of plain ASCII is valid UTF-8 text as it is). */
#define PAIR_NAME_WIDE 1u
#define PAIR_VALUE_WIDE 2u

static const unsigned char form_class[256] = {
    1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* NUL */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 5, 0, 0, 0, 0, 2,
    0, 0, 0, 0,                                     /* % & + */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, /* = */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x80-0xFF */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};

/* Decodes one field of a pair, from *at up to end, the first '&' and (when stop_eq) the first
 * '=', into dst (room for max bytes); *at is left on the byte that ended it. Returns the decoded
 * length, -1 on malformed percent-encoding, -2 when the result would pass max (whichever comes
 * first); mark is added to *wide when the result has a NUL or a byte over 0x7F. */
static inline long form_field(const unsigned char **at, const unsigned char *end, int stop_eq,
                              char *dst, size_t max, unsigned *wide, unsigned mark) {
    const unsigned char *s = *at;
    char *d = dst, *limit = dst + max;
    while (s < end) {
        /* A run of plain bytes, bounded by the input and the room so it needs no other test. */
        const unsigned char *stop = end - s < limit - d ? end : s + (limit - d);
        /* Eight at a time while all eight are plain (SecretId, Signature, most names). */
        while (stop - s >= 8 && (form_class[s[0]] | form_class[s[1]] | form_class[s[2]] |
                                 form_class[s[3]] | form_class[s[4]] | form_class[s[5]] |
                                 form_class[s[6]] | form_class[s[7]]) == FORM_PLAIN) {
            memcpy(d, s, 8);
            d += 8;
            s += 8;
        }
        while (s < stop && form_class[*s] == FORM_PLAIN) *d++ = (char)*s++;
        if (s == end) break;
        unsigned char c = *s;
        unsigned k = form_class[c];
        if (k == FORM_AMP || (k == FORM_EQ && stop_eq)) break;
        if (k == FORM_PCT) {
            if (end - s < 3) return -1;
            int hi = hexval(s[1]);
            int lo = hexval(s[2]);
            if (hi < 0 || lo < 0) return -1;
            c = (unsigned char)(hi << 4 | lo);
            s += 2;
            if (c == 0 || c >= 0x80) *wide |= mark;
        } else if (k == FORM_PLUS) {
            c = ' ';
        } else if (k == FORM_WIDE) {
            *wide |= mark;
        }
        if (d == limit) return -2;
        *d++ = (char)c;
        s++;
    }
    *at = s;
    return (long)(d - dst);
}

/* Shared checks of a decoded name/value pair. */
static int check_pair(const char *name, size_t name_len, const char *value, size_t value_len,
                      unsigned wide, char *err, size_t errlen) {
    if (name_len == 0) {
        snprintf(err, errlen, "empty parameter name");
        return -1;
    }
    if (name_len > PARAMS_MAX_NAME) {
        set_err(err, errlen, "parameter name %s is longer than 64 bytes", name, name_len);
        return -1;
    }
    if ((wide & PAIR_NAME_WIDE) &&
        (!params_utf8_valid(name, name_len) || memchr(name, '\0', name_len))) {
        set_err(err, errlen, "parameter name %s is not valid UTF-8 text", name, name_len);
        return -1;
    }
    if (value_len > PARAMS_MAX_VALUE) {
        set_err(err, errlen, "parameter %s is longer than 4096 bytes", name, name_len);
        return -1;
    }
    /* A NUL byte would make the value read differently by C string users and by the signer. */
    if ((wide & PAIR_VALUE_WIDE) &&
        (!params_utf8_valid(value, value_len) || memchr(value, '\0', value_len))) {
        set_err(err, errlen, "parameter %s is not valid UTF-8 text", name, name_len);
        return -1;
    }
    return 0;
}

/* After a parse appended items from index first on, checks the count and duplicates. */
static int check_list(const struct params *p, size_t first, char *err, size_t errlen) {
    const struct param *index[PARAMS_MAX_COUNT];
    if (p->count == first) return 0;
    if (p->count > PARAMS_MAX_COUNT) {
        snprintf(err, errlen, "more than %d parameters", PARAMS_MAX_COUNT);
        return -1;
    }
    for (size_t i = 0; i < p->count; i++) index[i] = &p->items[i];
    params_sort_index(index, p->count);
    /* The first duplicate in byte order is the one named. */
    for (size_t i = 1; i < p->count; i++) {
        const struct param *a = index[i - 1], *b = index[i];
        if (a->name_len == b->name_len && memcmp(a->name, b->name, a->name_len) == 0) {
            set_err(err, errlen, "duplicated parameter %s", index[i]->name, index[i]->name_len);
            return -1;
        }
    }
    return 0;
}

static void truncate_to(struct params *p, size_t count) {
    if (p->count > count) p->count = count;
}

/* Appends one decoded pair with its checks; a full list is an error here so a flood of tiny
 * pairs stops early instead of allocating. */
static int append_checked(struct params *p, const char *name, size_t name_len, const char *value,
                          size_t value_len, char *err, size_t errlen) {
    if (check_pair(name, name_len, value, value_len, PAIR_NAME_WIDE | PAIR_VALUE_WIDE, err,
                   errlen) != 0)
        return -1;
    if (p->count >= PARAMS_MAX_COUNT) {
        snprintf(err, errlen, "more than %d parameters", PARAMS_MAX_COUNT);
        return -1;
    }
    if (params_add(p, name, name_len, value, value_len) != 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

/* A pair's decoded bytes at most: one over each limit (so "too long" is told apart from
 * "exactly at the limit") and the two NULs. */
#define FORM_PAIR_MAX (PARAMS_MAX_NAME + 1 + PARAMS_MAX_VALUE + 1 + 2)
/* A text block started for a urlencoded input holds all of its rest when that is below this:
 * the rest decodes to at most its own length plus one byte per pair (a pair's two NULs against
 * its '&'), and the pairs decoded before the last one of a parse are at most PARAMS_MAX_COUNT,
 * so rest + 2 + PARAMS_MAX_COUNT bytes leave the room each later pair needs. */
#define FORM_TEXT_MAX 16384

/* The raw name of the pair at pair: up to its first '=' or '&'. */
static size_t form_raw_name_len(const unsigned char *pair, const unsigned char *end) {
    const unsigned char *s = pair;
    while (s < end && *s != '=' && *s != '&') s++;
    return (size_t)(s - pair);
}

/* Each pair is decoded straight into the free end of p's text, which is claimed once the pair
 * passed its checks; the decoded bytes are at most the raw ones, so the room is known before the
 * '&' is found. */
int params_parse_urlencoded(struct params *p, const char *buf, size_t len, char *err,
                            size_t errlen) {
    /* Where a pair is decoded when p's text has no room for it (OOM): it is still checked, so
     * "out of memory" is reported only for a pair that passed, as params_add reports it. */
    char spill[FORM_PAIR_MAX];
    const unsigned char *at = (const unsigned char *)buf, *end = at + len;
    size_t first = p->count;
    int rc = -1;

    if (err && errlen) err[0] = '\0';
    while (at < end) {
        if (*at == '&') { /* an empty pair */
            at++;
            continue;
        }
        const unsigned char *pair = at;
        size_t rest = (size_t)(end - at);
        size_t cut = rest < FORM_TEXT_MAX ? rest : FORM_TEXT_MAX;
        size_t need = (rest < FORM_PAIR_MAX - 2 ? rest : FORM_PAIR_MAX - 2) + 2;
        char *name = text_room(p, need, cut + 2 + PARAMS_MAX_COUNT);
        if (!name) name = spill;
        unsigned wide = 0;

        long n = form_field(&at, end, 1, name, PARAMS_MAX_NAME + 1, &wide, PAIR_NAME_WIDE);
        if (n == -1) {
            set_err(err, errlen, "malformed percent-encoding in parameter name %s",
                    (const char *)pair, form_raw_name_len(pair, end));
            goto out;
        }
        if (n == -2) {
            set_err(err, errlen, "parameter name %s is longer than 64 bytes", (const char *)pair,
                    form_raw_name_len(pair, end));
            goto out;
        }
        size_t name_len = (size_t)n;
        char *value = name + name_len + 1;
        long v = 0;
        if (at < end && *at == '=') {
            at++;
            v = form_field(&at, end, 0, value, PARAMS_MAX_VALUE + 1, &wide, PAIR_VALUE_WIDE);
        }
        if (v == -1) {
            set_err(err, errlen, "malformed percent-encoding in parameter %s", name, name_len);
            goto out;
        }
        if (v == -2) v = PARAMS_MAX_VALUE + 1; /* over the limit: check_pair names it */
        size_t value_len = (size_t)v;
        if (check_pair(name, name_len, value, value_len, wide, err, errlen) != 0) goto out;
        if (p->count >= PARAMS_MAX_COUNT) {
            snprintf(err, errlen, "more than %d parameters", PARAMS_MAX_COUNT);
            goto out;
        }
        if (name == spill || items_reserve(p) != 0) {
            snprintf(err, errlen, "out of memory");
            goto out;
        }
        name[name_len] = '\0';
        value[value_len] = '\0';
        text_take(p, name_len + value_len + 2, 0); /* the room found above */
        struct param *it = &p->items[p->count++];
        it->name = name;
        it->name_len = name_len;
        it->value = value;
        it->value_len = value_len;
        if (at < end) at++; /* the '&' */
    }
    if (check_list(p, first, err, errlen) != 0) goto out;
    rc = 0;
out:
    if (rc != 0) truncate_to(p, first);
    return rc;
}

/* Case-insensitive prefix test on a bounded buffer. */
static int starts_with_ci(const char *s, size_t len, const char *prefix) {
    size_t n = strlen(prefix);
    return len >= n && strncasecmp(s, prefix, n) == 0;
}

static const char *skip_ws(const char *s, const char *end) {
    while (s < end && (*s == ' ' || *s == '\t')) s++;
    return s;
}

/* Finds parameter key (case-insensitive) in a header value's "; key=value" list and copies its
 * value (quoted or token) into out. Returns the length, or -1 when absent or malformed. */
static long header_param(const char *s, size_t len, const char *key, char *out, size_t outlen) {
    const char *end = s + len;
    size_t key_len = strlen(key);
    const char *cur = memchr(s, ';', len);
    while (cur && cur < end) {
        cur = skip_ws(cur + 1, end);
        const char *eq = cur;
        while (eq < end && *eq != '=' && *eq != ';') eq++;
        const char *kend = eq;
        while (kend > cur && (kend[-1] == ' ' || kend[-1] == '\t')) kend--;
        int match = (size_t)(kend - cur) == key_len && strncasecmp(cur, key, key_len) == 0;
        if (eq >= end || *eq == ';') {
            cur = eq;
            continue;
        }
        const char *v = skip_ws(eq + 1, end);
        size_t o = 0;
        if (v < end && *v == '"') {
            v++;
            while (v < end && *v != '"') {
                if (*v == '\\' && v + 1 < end) v++;
                if (match) {
                    if (o + 1 >= outlen) return -1;
                    out[o++] = *v;
                }
                v++;
            }
            if (v >= end) return -1; /* unterminated quote */
            v++;
        } else {
            while (v < end && *v != ';' && *v != ' ' && *v != '\t') {
                if (match) {
                    if (o + 1 >= outlen) return -1;
                    out[o++] = *v;
                }
                v++;
            }
        }
        if (match) {
            out[o] = '\0';
            return (long)o;
        }
        cur = memchr(v, ';', (size_t)(end - v));
    }
    return -1;
}

#define MULTIPART_BOUNDARY_MAX 70 /* RFC 2046 */

/* Parses one part's header block [h, hend); sets the name. */
static int multipart_part_headers(const char *h, const char *hend, char *name, size_t namecap,
                                  size_t *name_len, char *err, size_t errlen) {
    int have_name = 0;
    while (h < hend) {
        const char *eol = memmem(h, (size_t)(hend - h), "\r\n", 2);
        const char *lend = eol ? eol : hend;
        size_t line_len = (size_t)(lend - h);
        if (starts_with_ci(h, line_len, "content-disposition:")) {
            const char *v = skip_ws(h + 20, lend);
            if (!starts_with_ci(v, (size_t)(lend - v), "form-data")) {
                snprintf(err, errlen, "multipart part is not form-data");
                return -1;
            }
            long n = header_param(v, (size_t)(lend - v), "name", name, namecap);
            if (n < 0) {
                snprintf(err, errlen, "multipart part without a valid name");
                return -1;
            }
            *name_len = (size_t)n;
            have_name = 1;
        }
        h = eol ? eol + 2 : hend;
    }
    if (!have_name) {
        snprintf(err, errlen, "multipart part without a name");
        return -1;
    }
    return 0;
}

int params_parse_multipart(struct params *p, const char *content_type, const char *body, size_t len,
                           char *err, size_t errlen) {
    char boundary[MULTIPART_BOUNDARY_MAX + 1];
    /* "\r\n--" + boundary: every delimiter after the first is searched with its CRLF. */
    char delim[MULTIPART_BOUNDARY_MAX + 5];
    char name[PARAMS_MAX_NAME + 2];
    size_t first = p->count;
    const char *end = body + len;
    int rc = -1;

    if (err && errlen) err[0] = '\0';
    long blen = content_type ? header_param(content_type, strlen(content_type), "boundary",
                                            boundary, sizeof boundary)
                             : -1;
    if (blen <= 0) {
        snprintf(err, errlen, "multipart/form-data without a valid boundary");
        goto out;
    }
    memcpy(delim, "\r\n--", 4);
    memcpy(delim + 4, boundary, (size_t)blen);
    size_t dlen = (size_t)blen + 4;

    /* The first delimiter may open the body (no CRLF before it) or follow a preamble; the Java
     * SDK starts its body with a CRLF. */
    const char *cur;
    if (len >= dlen - 2 && memcmp(body, delim + 2, dlen - 2) == 0) {
        cur = body + dlen - 2;
    } else {
        const char *d = memmem(body, len, delim, dlen);
        if (!d) {
            snprintf(err, errlen, "multipart body without its boundary");
            goto out;
        }
        cur = d + dlen;
    }

    for (;;) {
        /* cur is just past a delimiter: "--" closes, otherwise padding then CRLF opens a part. */
        if (end - cur >= 2 && cur[0] == '-' && cur[1] == '-') {
            cur += 2;
            if (end - cur >= 2 && cur[0] == '\r' && cur[1] == '\n') cur += 2;
            if (cur != end) {
                snprintf(err, errlen, "multipart body has data after the closing boundary");
                goto out;
            }
            break;
        }
        cur = skip_ws(cur, end);
        if (end - cur < 2 || cur[0] != '\r' || cur[1] != '\n') {
            snprintf(err, errlen, "multipart body does not end with the closing boundary");
            goto out;
        }
        cur += 2;
        const char *hend = (end - cur >= 2 && cur[0] == '\r' && cur[1] == '\n')
                               ? cur /* no headers at all */
                               : memmem(cur, (size_t)(end - cur), "\r\n\r\n", 4);
        if (!hend) {
            snprintf(err, errlen, "multipart part headers are not terminated");
            goto out;
        }
        size_t name_len = 0;
        if (multipart_part_headers(cur, hend, name, sizeof name, &name_len, err, errlen) != 0)
            goto out;
        const char *value = hend + (hend == cur ? 2 : 4);
        const char *next = memmem(value, (size_t)(end - value), delim, dlen);
        if (!next) {
            snprintf(err, errlen, "multipart body does not end with the closing boundary");
            goto out;
        }
        if (append_checked(p, name, name_len, value, (size_t)(next - value), err, errlen) != 0)
            goto out;
        cur = next + dlen;
    }
    if (check_list(p, first, err, errlen) != 0) goto out;
    rc = 0;
out:
    if (rc != 0) truncate_to(p, first);
    return rc;
}

int params_parse_body(struct params *p, const char *content_type, const char *body, size_t len,
                      char *err, size_t errlen) {
    const char *ct = content_type ? content_type : "";
    const char *ct_end = ct + strlen(ct);
    const char *semi = memchr(ct, ';', (size_t)(ct_end - ct));
    const char *type = skip_ws(ct, ct_end);
    const char *type_end = semi ? semi : ct_end;
    while (type_end > type && (type_end[-1] == ' ' || type_end[-1] == '\t')) type_end--;
    size_t type_len = (size_t)(type_end - type);

    if (type_len == 0 ||
        (type_len == 33 && strncasecmp(type, "application/x-www-form-urlencoded", 33) == 0))
        return params_parse_urlencoded(p, body, len, err, errlen);
    if (type_len == 19 && strncasecmp(type, "multipart/form-data", 19) == 0)
        return params_parse_multipart(p, content_type, body, len, err, errlen);
    char shown[PARAMS_QUOTED_MAX];
    params_quote(shown, sizeof shown, type, type_len);
    snprintf(err, errlen, "unsupported Content-Type %s", shown);
    return -1;
}

/* 1 for the bytes written as %XX; 0 for the unreserved ones, kept as they are: A-Z a-z 0-9
 * - _ . ~ (RFC 3986). */
static const unsigned char url_escaped[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1,
    1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0,
    1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};

static size_t encoded_len(const char *s, size_t len) {
    const unsigned char *u = (const unsigned char *)s;
    size_t escaped = 0;
    for (size_t i = 0; i < len; i++) escaped += url_escaped[u[i]];
    return len + 2 * escaped;
}

/* Writes the encoding of s at w (encoded_len bytes, at most 3 * len); returns the end. Names and
 * most values are all unreserved, so runs of kept bytes are copied whole. */
static char *encode_into(char *w, const char *s, size_t len) {
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *u = (const unsigned char *)s, *end = u + len;
    while (u < end) {
        const unsigned char *run = u;
        while (u < end && !url_escaped[*u]) u++;
        if (u > run) {
            memcpy(w, run, (size_t)(u - run));
            w += u - run;
        }
        if (u == end) break;
        w[0] = '%';
        w[1] = hex[*u >> 4];
        w[2] = hex[*u & 15];
        w += 3;
        u++;
    }
    return w;
}

int params_encode_value(struct strbuf *out, const char *s, size_t len) {
    char chunk[255];
    for (size_t i = 0; i < len;) {
        size_t n = len - i < sizeof chunk / 3 ? len - i : sizeof chunk / 3;
        char *end = encode_into(chunk, s + i, n);
        if (strbuf_append(out, chunk, (size_t)(end - chunk)) != 0) return -1;
        i += n;
    }
    return 0;
}

/* Measured, then written into one allocation of the exact size: this runs for every forwarded
 * request, and an exact size stays in malloc's small bins (a worst-case 3x size would not, and
 * glibc consolidates its fast bins on every large request). The measuring pass remembers which
 * of the first 64 names and values need no escaping (all names and most values), and those are
 * copied whole instead of scanned again. */
char *params_encode(const struct params *p) {
    uint64_t plain_name = 0, plain_value = 0; /* bit i: item i is written as it is */
    size_t total = 1;
    for (size_t i = 0; i < p->count; i++) {
        const struct param *it = &p->items[i];
        size_t name = encoded_len(it->name, it->name_len);
        size_t value = encoded_len(it->value, it->value_len);
        if (i < 64) {
            plain_name |= (uint64_t)(name == it->name_len) << i;
            plain_value |= (uint64_t)(value == it->value_len) << i;
        }
        total += (i > 0) + name + 1 + value;
    }
    char *out = malloc(total);
    if (!out) return NULL;
    char *w = out;
    for (size_t i = 0; i < p->count; i++) {
        const struct param *it = &p->items[i];
        if (i > 0) *w++ = '&';
        if (i < 64 && (plain_name >> i & 1)) {
            memcpy(w, it->name, it->name_len);
            w += it->name_len;
        } else {
            w = encode_into(w, it->name, it->name_len);
        }
        *w++ = '=';
        if (i < 64 && (plain_value >> i & 1)) {
            memcpy(w, it->value, it->value_len);
            w += it->value_len;
        } else {
            w = encode_into(w, it->value, it->value_len);
        }
    }
    *w = '\0';
    return out;
}
