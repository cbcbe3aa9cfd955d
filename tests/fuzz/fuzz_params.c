/* fuzz_params.c: the query, urlencoded and multipart decoders (common/params.c). The first byte
 * picks the decoder; for multipart the input's first line is the Content-Type. Invariants: a
 * decoded list keeps every documented limit (count, lengths, UTF-8, no duplicate name, no empty
 * name); it survives params_encode then params_parse_urlencoded unchanged (a round trip); an
 * error has a message and carries no control byte from the input. */
#include <string.h>

#include "capgate/params.h"
#include "fuzz.h"

static void check_list(const struct params *p) {
    FUZZ_CHECK(p->count <= PARAMS_MAX_COUNT);
    for (size_t i = 0; i < p->count; i++) {
        const struct param *a = &p->items[i];
        FUZZ_CHECK(a->name_len > 0 && a->name_len <= PARAMS_MAX_NAME);
        FUZZ_CHECK(a->value_len <= PARAMS_MAX_VALUE);
        FUZZ_CHECK(a->name[a->name_len] == '\0' && a->value[a->value_len] == '\0');
        FUZZ_CHECK(a->value == a->name + a->name_len + 1);
        FUZZ_CHECK(params_utf8_valid(a->name, a->name_len));
        FUZZ_CHECK(params_utf8_valid(a->value, a->value_len));
        for (size_t j = 0; j < i; j++)
            FUZZ_CHECK(!(p->items[j].name_len == a->name_len &&
                         memcmp(p->items[j].name, a->name, a->name_len) == 0));
        if (strlen(a->name) == a->name_len) FUZZ_CHECK(params_find(p, a->name) == a);
    }
}

static void check_round_trip(const struct params *p) {
    char *enc = params_encode(p);
    struct params back;
    char err[256];
    FUZZ_CHECK(enc);
    params_init(&back);
    FUZZ_CHECK(params_parse_urlencoded(&back, enc, strlen(enc), err, sizeof err) == 0);
    FUZZ_CHECK(back.count == p->count);
    for (size_t i = 0; i < p->count; i++) {
        FUZZ_CHECK(back.items[i].name_len == p->items[i].name_len);
        FUZZ_CHECK(back.items[i].value_len == p->items[i].value_len);
        FUZZ_CHECK(memcmp(back.items[i].name, p->items[i].name, p->items[i].name_len) == 0);
        FUZZ_CHECK(memcmp(back.items[i].value, p->items[i].value, p->items[i].value_len) == 0);
    }
    /* A copy is the same list; sorting keeps every parameter. */
    struct params copy;
    FUZZ_CHECK(params_copy(&copy, p) == 0);
    params_sort(&copy);
    FUZZ_CHECK(copy.count == p->count);
    for (size_t i = 1; i < copy.count; i++) {
        const struct param *a = &copy.items[i - 1], *b = &copy.items[i];
        size_t n = a->name_len < b->name_len ? a->name_len : b->name_len;
        int c = memcmp(a->name, b->name, n);
        FUZZ_CHECK(c < 0 || (c == 0 && a->name_len < b->name_len));
    }
    params_cleanup(&copy);
    params_cleanup(&back);
    free(enc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct params p;
    char err[512];
    int rc;
    if (size < 1) return 0;
    const char *s = (const char *)data + 1;
    size_t len = size - 1;
    err[0] = '\0';
    params_init(&p);
    switch (data[0] % 4) {
    case 0: /* a GET query, or an urlencoded body */
        rc = params_parse_urlencoded(&p, s, len, err, sizeof err);
        break;
    case 1: /* a second decode adds to a list that holds parameters already */
        FUZZ_CHECK(params_adds(&p, "Action", "CaptchaCheck") == 0);
        rc = params_parse_urlencoded(&p, s, len, err, sizeof err);
        break;
    default: { /* "<content type>\n<body>" */
        const char *nl = memchr(s, '\n', len);
        if (!nl) {
            params_cleanup(&p);
            return 0;
        }
        char *ct = strndup(s, (size_t)(nl - s));
        FUZZ_CHECK(ct);
        /* the body gets a NUL after it, as httpd gives it */
        size_t blen = len - (size_t)(nl - s) - 1;
        char *body = malloc(blen + 1);
        FUZZ_CHECK(body);
        memcpy(body, nl + 1, blen);
        body[blen] = '\0';
        if (data[0] % 4 == 2)
            rc = params_parse_multipart(&p, ct, body, blen, err, sizeof err);
        else
            rc = params_parse_body(&p, ct, body, blen, err, sizeof err);
        free(body);
        free(ct);
        break;
    }
    }
    if (rc == 0) {
        check_list(&p);
        check_round_trip(&p);
    } else {
        FUZZ_CHECK(rc == -1);
        FUZZ_CHECK(err[0] != '\0');
        FUZZ_CHECK(fuzz_no_ctl(err, strlen(err)));
        FUZZ_CHECK(params_utf8_valid(err, strlen(err)));
    }
    params_cleanup(&p);
    return 0;
}
