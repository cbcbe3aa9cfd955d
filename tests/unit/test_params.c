/* test_params.c: the parameter list and its decoders: urlencoded (query and body), multipart as
 * the Java SDK sends it, strict errors with exact messages, limits, UTF-8, encoding. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "capgate/params.h"
#include "capgate/strbuf.h"

static int parse_q(struct params *p, const char *q, char *err, size_t errlen) {
    return params_parse_urlencoded(p, q, strlen(q), err, errlen);
}

static void test_list_basics(void **state) {
    struct params p;
    params_init(&p);
    assert_int_equal(params_adds(&p, "b", "2"), 0);
    assert_int_equal(params_adds(&p, "a", "1"), 0);
    assert_string_equal(params_get(&p, "a"), "1");
    assert_null(params_get(&p, "c"));
    assert_int_equal(params_set(&p, "a", "one"), 0);
    assert_string_equal(params_get(&p, "a"), "one");
    assert_int_equal(params_find(&p, "a")->value_len, 3);
    assert_int_equal(p.count, 2);
    assert_int_equal(params_set(&p, "c", ""), 0);
    assert_int_equal(p.count, 3);
    assert_string_equal(params_get(&p, "c"), "");
    assert_int_equal(params_remove(&p, "b"), 1);
    assert_int_equal(params_remove(&p, "b"), 0);
    assert_int_equal(p.count, 2);
    /* Order kept after remove: a, c. */
    assert_string_equal(p.items[0].name, "a");
    assert_string_equal(p.items[1].name, "c");
    params_cleanup(&p);
    assert_int_equal(p.count, 0);
    params_cleanup(&p); /* twice is harmless */
}

static void test_many_adds_grow(void **state) {
    struct params p;
    char name[16];
    params_init(&p);
    for (int i = 0; i < 200; i++) {
        snprintf(name, sizeof name, "k%d", i);
        assert_int_equal(params_adds(&p, name, name), 0);
    }
    assert_int_equal(p.count, 200);
    assert_string_equal(params_get(&p, "k137"), "k137");
    params_cleanup(&p);
}

static void test_sort_byte_order(void **state) {
    struct params p;
    params_init(&p);
    params_adds(&p, "ab", "3");
    params_adds(&p, "a_b", "4");
    params_adds(&p, "a", "2");
    params_adds(&p, "B", "1");
    params_adds(&p, "a.c", "5");
    params_sort(&p);
    /* 'B' (0x42) < 'a'; "a" before "a.c" (shorter first); '.' (0x2e) < '_' (0x5f) < 'b'. */
    const char *want[] = {"B", "a", "a.c", "a_b", "ab"};
    for (size_t i = 0; i < 5; i++) assert_string_equal(p.items[i].name, want[i]);
    params_cleanup(&p);
}

static void test_copy(void **state) {
    struct params p, q;
    params_init(&p);
    params_adds(&p, "x", "1");
    params_adds(&p, "y", "");
    assert_int_equal(params_copy(&q, &p), 0);
    params_set(&p, "x", "changed");
    assert_string_equal(params_get(&q, "x"), "1");
    assert_string_equal(params_get(&q, "y"), "");
    assert_int_equal(q.count, 2);
    params_cleanup(&p);
    params_cleanup(&q);
    params_init(&p);
    assert_int_equal(params_copy(&q, &p), 0);
    assert_int_equal(q.count, 0);
    params_cleanup(&q);
}

/* Names and values span several text blocks (one value larger than a block) and stay intact,
 * in the list, in its copy and after adds, sets and removes on either. */
static void test_text_blocks(void **state) {
    struct params p, q;
    char name[16], value[PARAMS_MAX_VALUE + 1];
    params_init(&p);
    for (int i = 0; i < 40; i++) {
        size_t n = i == 20 ? 3000 : 40 + (size_t)i;
        memset(value, 'a' + i % 26, n);
        value[n] = '\0';
        snprintf(name, sizeof name, "k%d", i);
        assert_int_equal(params_adds(&p, name, value), 0);
    }
    assert_int_equal(params_copy(&q, &p), 0);
    assert_int_equal(params_adds(&q, "extra", "x"), 0);
    assert_int_equal(params_set(&q, "k3", "three"), 0);
    assert_int_equal(params_remove(&p, "k5"), 1);
    for (int i = 0; i < 40; i++) {
        size_t n = i == 20 ? 3000 : 40 + (size_t)i;
        memset(value, 'a' + i % 26, n);
        value[n] = '\0';
        snprintf(name, sizeof name, "k%d", i);
        if (i != 5) assert_string_equal(params_get(&p, name), value);
        if (i != 3) assert_string_equal(params_get(&q, name), value);
        assert_int_equal(params_find(&q, name)->name_len, strlen(name));
    }
    assert_string_equal(params_get(&q, "k3"), "three");
    assert_string_equal(params_get(&q, "extra"), "x");
    assert_int_equal(q.count, 41);
    params_cleanup(&p);
    params_cleanup(&q);
}

/* params_copy_without is params_copy then params_remove of each name in turn: the pipeline's
 * case, names absent, a name twice (in the list and in names), empty lists, random lists. */
static void assert_same_lists(const struct params *a, const struct params *b) {
    assert_int_equal(b->count, a->count);
    for (size_t i = 0; i < a->count; i++) {
        assert_int_equal(b->items[i].name_len, a->items[i].name_len);
        assert_int_equal(b->items[i].value_len, a->items[i].value_len);
        assert_memory_equal(b->items[i].name, a->items[i].name, a->items[i].name_len + 1);
        assert_memory_equal(b->items[i].value, a->items[i].value, a->items[i].value_len + 1);
        assert_ptr_equal(b->items[i].value, b->items[i].name + b->items[i].name_len + 1);
    }
}

static void assert_copy_without(const struct params *src, const char *const *names) {
    struct params want, got;
    assert_int_equal(params_copy(&want, src), 0);
    for (size_t i = 0; names[i]; i++) params_remove(&want, names[i]);
    assert_int_equal(params_copy_without(&got, src, names), 0);
    assert_same_lists(&want, &got);
    /* The copy is independent of src and takes more parameters. */
    assert_int_equal(params_adds(&want, "added", "1"), 0);
    assert_int_equal(params_adds(&got, "added", "1"), 0);
    assert_same_lists(&want, &got);
    params_cleanup(&want);
    params_cleanup(&got);
}

static void test_copy_without(void **state) {
    static const char *const public_params[] = {
        "SecretId", "Signature", "Timestamp", "Nonce", "Region", "SignatureMethod", "Token", NULL,
    };
    static const char *const none[] = {NULL};
    static const char *const twice[] = {"a", "b", "a", "", NULL};
    struct params p, q;
    char err[256];

    params_init(&p);
    assert_copy_without(&p, public_params);
    assert_int_equal(params_copy_without(&q, &p, public_params), 0);
    assert_int_equal(q.count, 0);
    params_cleanup(&q);

    assert_int_equal(parse_q(&p,
                             "Action=CaptchaIframeQuery&Region=gz&SecretId=AKIDx&Timestamp=1"
                             "&SignatureMethod=HmacSHA256&captchaType=1&Nonce=9&Signature=s"
                             "&Tokens=t&Nonc=1",
                             err, sizeof err),
                     0);
    assert_int_equal(params_copy_without(&q, &p, public_params), 0);
    assert_int_equal(q.count, 4);
    assert_string_equal(q.items[0].name, "Action");
    assert_string_equal(q.items[1].name, "captchaType");
    assert_string_equal(q.items[2].name, "Tokens");
    assert_string_equal(q.items[3].name, "Nonc");
    assert_string_equal(q.items[3].value, "1");
    params_cleanup(&p); /* q holds its own text */
    assert_string_equal(params_get(&q, "Action"), "CaptchaIframeQuery");
    params_cleanup(&q);

    /* Only the first of a name goes, as with params_remove; "" is a name like any other. */
    params_init(&p);
    params_adds(&p, "a", "1");
    params_adds(&p, "b", "2");
    params_adds(&p, "a", "3");
    params_adds(&p, "a", "4");
    params_adds(&p, "", "5");
    params_adds(&p, "c", "6");
    assert_copy_without(&p, twice);
    assert_copy_without(&p, public_params);
    assert_copy_without(&p, none);
    assert_int_equal(params_copy_without(&q, &p, twice), 0);
    assert_int_equal(q.count, 2);
    assert_string_equal(params_get(&q, "a"), "4");
    assert_string_equal(params_get(&q, "c"), "6");
    params_cleanup(&q);
    params_cleanup(&p);

    /* At most PARAMS_COPY_SKIP_MAX names. */
    const char *many[PARAMS_COPY_SKIP_MAX + 2];
    for (size_t i = 0; i <= PARAMS_COPY_SKIP_MAX; i++) many[i] = "x";
    many[PARAMS_COPY_SKIP_MAX + 1] = NULL;
    params_init(&p);
    for (int i = 0; i < 70; i++) params_adds(&p, i % 3 ? "x" : "y", "v");
    assert_int_equal(params_copy_without(&q, &p, many), -1);
    assert_int_equal(q.count, 0);
    params_cleanup(&q);
    many[PARAMS_COPY_SKIP_MAX] = NULL;
    assert_copy_without(&p, many);
    params_cleanup(&p);

    /* Random lists and names over a small set of names, duplicates included. */
    static const char *const pool[] = {"a", "b", "ab", "ba", "Nonce", "Nonc", "", "Token"};
    unsigned seed = 77;
    for (int round = 0; round < 3000; round++) {
        const char *names[10];
        params_init(&p);
        seed = seed * 1103515245u + 12345u;
        size_t n = (seed >> 16) % 20;
        for (size_t i = 0; i < n; i++) {
            seed = seed * 1103515245u + 12345u;
            char value[24];
            snprintf(value, sizeof value, "%zu", i);
            assert_int_equal(params_adds(&p, pool[(seed >> 16) % 8], value), 0);
        }
        seed = seed * 1103515245u + 12345u;
        size_t k = (seed >> 16) % 10;
        for (size_t i = 0; i < k; i++) {
            seed = seed * 1103515245u + 12345u;
            names[i] = pool[(seed >> 16) % 8];
        }
        names[k] = NULL;
        assert_copy_without(&p, names);
        params_cleanup(&p);
    }
}

static void test_urlencoded_decoding(void **state) {
    struct params p;
    char err[256];
    params_init(&p);
    assert_int_equal(parse_q(&p, "a=1&&b=x+y%20z&c&d=&e=%E5%BC%A0%2b%2B&f=a=b", err, sizeof err),
                     0);
    assert_int_equal(p.count, 6);
    assert_string_equal(params_get(&p, "a"), "1");
    assert_string_equal(params_get(&p, "b"), "x y z");
    assert_string_equal(params_get(&p, "c"), "");
    assert_string_equal(params_get(&p, "d"), "");
    assert_string_equal(params_get(&p, "e"), "\xE5\xBC\xA0++");
    assert_string_equal(params_get(&p, "f"), "a=b"); /* split at the first '=' only */
    assert_string_equal(p.items[0].name, "a");       /* arrival order */
    assert_string_equal(p.items[5].name, "f");
    params_cleanup(&p);

    params_init(&p);
    assert_int_equal(parse_q(&p, "", err, sizeof err), 0);
    assert_int_equal(parse_q(&p, "&&&", err, sizeof err), 0);
    assert_int_equal(p.count, 0);
    assert_int_equal(parse_q(&p, "my+name=v", err, sizeof err), 0);
    assert_string_equal(params_get(&p, "my name"), "v");
    params_cleanup(&p);
}

static void test_urlencoded_not_nul_terminated(void **state) {
    struct params p;
    char err[256];
    const char buf[] = {'a', '=', '1', '&', 'b', '=', '2'};
    params_init(&p);
    assert_int_equal(params_parse_urlencoded(&p, buf, 5, err, sizeof err), 0);
    assert_int_equal(p.count, 2);
    assert_string_equal(params_get(&p, "b"), "");
    params_cleanup(&p);
}

struct bad_case {
    const char *input;
    const char *message;
};

static void test_urlencoded_errors(void **state) {
    static const struct bad_case cases[] = {
        {"uid=%4", "malformed percent-encoding in parameter uid"},
        {"uid=%zz", "malformed percent-encoding in parameter uid"},
        {"uid=ab%", "malformed percent-encoding in parameter uid"},
        {"uid=%g1", "malformed percent-encoding in parameter uid"},
        {"a=1&u%4=1", "malformed percent-encoding in parameter name \"u%4\""},
        {"=1", "empty parameter name"},
        {"a=1&a=2", "duplicated parameter a"},
        {"b=1&a=1&c=1&a=", "duplicated parameter a"},
        {"a=%00", "parameter a is not valid UTF-8 text"},
        {"uid=%C3%28", "parameter uid is not valid UTF-8 text"},
        {"uid=%ED%A0%80", "parameter uid is not valid UTF-8 text"},
        {"uid=%C0%AF", "parameter uid is not valid UTF-8 text"},
        {"%FF=1", "parameter name \"\\xff\" is not valid UTF-8 text"},
        {"a%22b=%FF", "parameter \"a\\\"b\" is not valid UTF-8 text"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct params p;
        char err[256] = "";
        params_init(&p);
        assert_int_equal(parse_q(&p, cases[i].input, err, sizeof err), -1);
        assert_string_equal(err, cases[i].message);
        assert_int_equal(p.count, 0); /* nothing kept from a failed parse */
        params_cleanup(&p);
    }
}

static void test_urlencoded_duplicate_against_existing(void **state) {
    struct params p;
    char err[256];
    params_init(&p);
    assert_int_equal(parse_q(&p, "Action=A&Nonce=1", err, sizeof err), 0);
    assert_int_equal(parse_q(&p, "x=1&Nonce=2", err, sizeof err), -1);
    assert_string_equal(err, "duplicated parameter Nonce");
    /* The failed call left the earlier parameters alone. */
    assert_int_equal(p.count, 2);
    assert_string_equal(params_get(&p, "Nonce"), "1");
    assert_null(params_get(&p, "x"));
    params_cleanup(&p);
}

static void test_urlencoded_limits(void **state) {
    struct params p;
    struct strbuf q;
    char err[256];

    /* Name: 64 bytes pass, 65 fail. */
    char name[80];
    memset(name, 'n', 65);
    name[64] = '\0';
    params_init(&p);
    strbuf_init(&q);
    strbuf_appendf(&q, "%s=1", name);
    assert_int_equal(parse_q(&p, q.s, err, sizeof err), 0);
    params_cleanup(&p);
    strbuf_reset(&q);
    name[64] = 'n';
    name[65] = '\0';
    strbuf_appendf(&q, "%s=1", name);
    assert_int_equal(parse_q(&p, q.s, err, sizeof err), -1);
    assert_string_equal(err, "parameter name \"nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn...\" is longer "
                             "than 64 bytes");

    /* Value: 4096 decoded bytes pass (even when sent as 3x as many encoded), 4097 fail. */
    strbuf_reset(&q);
    strbuf_appends(&q, "v=");
    for (int i = 0; i < 4096; i++) strbuf_appends(&q, "%41");
    assert_int_equal(parse_q(&p, q.s, err, sizeof err), 0);
    assert_int_equal(params_find(&p, "v")->value_len, 4096);
    params_cleanup(&p);
    strbuf_appends(&q, "A");
    assert_int_equal(parse_q(&p, q.s, err, sizeof err), -1);
    assert_string_equal(err, "parameter v is longer than 4096 bytes");
    assert_int_equal(p.count, 0);

    /* Count: 64 pass, 65 fail. */
    strbuf_reset(&q);
    for (int i = 0; i < 64; i++) strbuf_appendf(&q, "%sp%d=1", i ? "&" : "", i);
    assert_int_equal(parse_q(&p, q.s, err, sizeof err), 0);
    assert_int_equal(p.count, 64);
    params_cleanup(&p);
    strbuf_appends(&q, "&p64=1");
    assert_int_equal(parse_q(&p, q.s, err, sizeof err), -1);
    assert_string_equal(err, "more than 64 parameters");
    assert_int_equal(p.count, 0);
    params_cleanup(&p);
    strbuf_cleanup(&q);
}

/* ---- expectations for the urlencoded parser at its limits and on random input ---- */

/* What a name looks like in a message: as is when it is plain (1..64 bytes of [A-Za-z0-9_.-]),
 * else quoted and escaped (params_quote). */
static void shown_name(char *out, size_t cap, const char *name, size_t len) {
    int plain = len > 0 && len <= PARAMS_MAX_NAME;
    for (size_t i = 0; plain && i < len; i++) {
        char c = name[i];
        plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '_' || c == '.' || c == '-';
    }
    if (plain)
        snprintf(out, cap, "%.*s", (int)len, name);
    else
        params_quote(out, cap, name, len);
}

/* Parses buf into a list that holds existing (parsed first) and checks the outcome: message NULL
 * for success with want_count parameters in all (existing ones included), else -1, that
 * message, and the list as it was. */
static void expect_parse(const char *buf, size_t len, const char *existing, const char *message,
                         size_t want_count) {
    struct params p;
    char err[256] = "";
    size_t before = 0;
    params_init(&p);
    if (existing) {
        assert_int_equal(parse_q(&p, existing, err, sizeof err), 0);
        before = p.count;
    }
    int rc = params_parse_urlencoded(&p, buf, len, err, sizeof err);
    if (message) {
        if (rc != -1 || strcmp(err, message) != 0)
            fail_msg("%.40s... (%zu bytes): rc %d, \"%s\"; want \"%s\"", buf, len, rc, err,
                     message);
        assert_int_equal(p.count, before);
    } else {
        if (rc != 0) fail_msg("%.40s... (%zu bytes): \"%s\"", buf, len, err);
        assert_int_equal(p.count, want_count);
    }
    params_cleanup(&p);
}

/* The limits at their edges, where a malformed escape and "too long" compete. A name is decoded
 * into room for 65 bytes: a malformed escape met before that room is full is reported as such
 * (the name as sent); a name of exactly 65 decoded bytes is named decoded, a longer one as
 * sent. A value has room for 4097: an escape error inside it wins, then "longer", then UTF-8. */
static void test_urlencoded_limit_edges(void **state) {
    enum { OK, MALFORMED, LONG_DECODED, LONG_SENT };
    static const char *const name_tails[] = {"=1", "%", "%4", "%41=1", "%G1=1", "&n=1"};
    static const struct {
        size_t n;    /* "%41" and n - 1 'n': a name of n decoded bytes, then the tail */
        int want[6]; /* per tail */
        size_t count[6];
    } names[] = {
        {63, {OK, MALFORMED, MALFORMED, OK, MALFORMED, OK}, {1, 0, 0, 1, 0, 2}},
        {64, {OK, MALFORMED, MALFORMED, LONG_DECODED, MALFORMED, OK}, {1, 0, 0, 0, 0, 2}},
        {65, {LONG_DECODED, MALFORMED, MALFORMED, LONG_SENT, MALFORMED, LONG_DECODED}, {0}},
        {66, {LONG_SENT, LONG_SENT, LONG_SENT, LONG_SENT, LONG_SENT, LONG_SENT}, {0}},
    };
    struct strbuf q;
    char nbuf[80], decoded[80], shown[PARAMS_QUOTED_MAX], msg[256];
    strbuf_init(&q);
    memset(nbuf, 'n', sizeof nbuf);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        size_t n = names[i].n;
        decoded[0] = 'A';
        memset(decoded + 1, 'n', n - 1);
        for (int t = 0; t < 6; t++) {
            const char *tail = name_tails[t];
            size_t sent_len;
            strbuf_reset(&q);
            strbuf_appends(&q, "%41");
            strbuf_append(&q, nbuf, n - 1);
            strbuf_appends(&q, tail);
            /* the name as sent: up to its '=' or '&' */
            sent_len = strcspn(q.s, "=&");
            switch (names[i].want[t]) {
            case OK: expect_parse(q.s, q.len, NULL, NULL, names[i].count[t]); break;
            case MALFORMED:
                shown_name(shown, sizeof shown, q.s, sent_len);
                snprintf(msg, sizeof msg, "malformed percent-encoding in parameter name %s", shown);
                expect_parse(q.s, q.len, NULL, msg, 0);
                break;
            case LONG_DECODED:
                shown_name(shown, sizeof shown, decoded, 65);
                snprintf(msg, sizeof msg, "parameter name %s is longer than 64 bytes", shown);
                expect_parse(q.s, q.len, NULL, msg, 0);
                break;
            case LONG_SENT:
                shown_name(shown, sizeof shown, q.s, sent_len);
                snprintf(msg, sizeof msg, "parameter name %s is longer than 64 bytes", shown);
                expect_parse(q.s, q.len, NULL, msg, 0);
                break;
            }
        }
    }

    static const char *const value_tails[] = {"", "%", "%4", "%41", "%FF", "&b=1"};
    static const struct {
        size_t n; /* "v=%41" and n - 1 more bytes ('a' and '+'): n decoded, then the tail */
        const char *want[6];
        size_t count[6];
    } values[] = {
        {4095,
         {NULL, "malformed percent-encoding in parameter v",
          "malformed percent-encoding in parameter v", NULL, "parameter v is not valid UTF-8 text",
          NULL},
         {1, 0, 0, 1, 0, 2}},
        {4096,
         {NULL, "malformed percent-encoding in parameter v",
          "malformed percent-encoding in parameter v", "parameter v is longer than 4096 bytes",
          "parameter v is longer than 4096 bytes", NULL},
         {1, 0, 0, 0, 0, 2}},
        {4097,
         {"parameter v is longer than 4096 bytes", "malformed percent-encoding in parameter v",
          "malformed percent-encoding in parameter v", "parameter v is longer than 4096 bytes",
          "parameter v is longer than 4096 bytes", "parameter v is longer than 4096 bytes"},
         {0}},
    };
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        for (int t = 0; t < 6; t++) {
            strbuf_reset(&q);
            strbuf_appends(&q, "v=%41");
            for (size_t k = 1; k < values[i].n; k++) strbuf_appends(&q, k % 3 ? "a" : "+");
            strbuf_appends(&q, value_tails[t]);
            expect_parse(q.s, q.len, NULL, values[i].want[t], values[i].count[t]);
            /* into a list that has parameters already: kept on failure, added to on success */
            expect_parse(q.s, q.len, "x=1&y=2", values[i].want[t], 2 + values[i].count[t]);
        }
    }
    /* 1024 four-byte characters are at the limit; one more byte is over it. */
    strbuf_reset(&q);
    strbuf_appends(&q, "v=");
    for (int i = 0; i < 1024; i++) strbuf_appends(&q, i % 2 ? "%F0%9F%98%80" : "\xF0\x9F\x98\x80");
    expect_parse(q.s, q.len, NULL, NULL, 1);
    strbuf_appends(&q, "%F0");
    expect_parse(q.s, q.len, NULL, "parameter v is longer than 4096 bytes", 0);
    strbuf_cleanup(&q);
}

/* x-www-form-urlencoded decoding by its definition ('+' is a space, %XX a byte), for checking
 * what the parser kept; -1 on a malformed escape. */
static long form_decode(const char *s, size_t len, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%') {
            unsigned v = 0;
            if (len - i < 3) return -1;
            for (int k = 1; k <= 2; k++) {
                char c = s[i + (size_t)k];
                v <<= 4;
                if (c >= '0' && c <= '9')
                    v |= (unsigned)(c - '0');
                else if (c >= 'a' && c <= 'f')
                    v |= (unsigned)(c - 'a' + 10);
                else if (c >= 'A' && c <= 'F')
                    v |= (unsigned)(c - 'A' + 10);
                else
                    return -1;
            }
            out[o++] = (char)v;
            i += 2;
        } else {
            out[o++] = s[i] == '+' ? ' ' : s[i];
        }
    }
    return (long)o;
}

static const char *const error_prefixes[] = {
    "malformed percent-encoding in parameter ",
    "empty parameter name",
    "parameter name ",
    "parameter ",
    "duplicated parameter ",
    "more than 64 parameters",
};

/* What must hold of any parse of q: on success, the list is q's non-empty pairs decoded, in
 * order, each within the limits, valid UTF-8 without NUL, names distinct, and it survives
 * params_encode and a second parse unchanged; on failure, nothing is added and the message is
 * one of the parser's. A shorter error buffer gets the same message cut, and no buffer the same
 * result. Parsing into a list that holds existing pairs adds the same ones, or fails as above,
 * or (only) on a name the list already has or on the count. */
static void check_parse(const char *q, size_t len, const char *existing) {
    struct params p, again, pre;
    char err[256], short_err[24];
    char *nbuf = malloc(len + 1), *vbuf = malloc(len + 1);
    int rc;
    assert_non_null(nbuf);
    assert_non_null(vbuf);
    params_init(&p);
    rc = params_parse_urlencoded(&p, q, len, err, sizeof err);
    assert_true(rc == 0 || rc == -1);
    if (rc == 0) {
        size_t k = 0, pos = 0;
        while (pos < len) { /* q's pairs, one by one, against the list */
            const char *pair = q + pos, *amp = memchr(pair, '&', len - pos), *eq;
            size_t plen = amp ? (size_t)(amp - pair) : len - pos, nlen;
            long dn, dv;
            pos += plen + 1;
            if (!plen) continue;
            eq = memchr(pair, '=', plen);
            nlen = eq ? (size_t)(eq - pair) : plen;
            dn = form_decode(pair, nlen, nbuf);
            dv = eq ? form_decode(eq + 1, plen - nlen - 1, vbuf) : 0;
            assert_true(dn > 0 && dv >= 0);
            assert_true(k < p.count);
            assert_int_equal(p.items[k].name_len, (size_t)dn);
            assert_memory_equal(p.items[k].name, nbuf, (size_t)dn);
            assert_int_equal(p.items[k].value_len, (size_t)dv);
            if (dv) assert_memory_equal(p.items[k].value, vbuf, (size_t)dv);
            k++;
        }
        assert_int_equal(k, p.count);
        assert_true(p.count <= PARAMS_MAX_COUNT);
        for (size_t i = 0; i < p.count; i++) {
            const struct param *it = &p.items[i];
            assert_true(it->name_len >= 1 && it->name_len <= PARAMS_MAX_NAME);
            assert_true(it->value_len <= PARAMS_MAX_VALUE);
            assert_true(params_utf8_valid(it->name, it->name_len));
            assert_true(params_utf8_valid(it->value, it->value_len));
            assert_null(memchr(it->name, '\0', it->name_len));
            assert_null(memchr(it->value, '\0', it->value_len));
            assert_int_equal(it->name[it->name_len], '\0');
            assert_int_equal(it->value[it->value_len], '\0');
            for (size_t j = 0; j < i; j++)
                assert_false(p.items[j].name_len == it->name_len &&
                             memcmp(p.items[j].name, it->name, it->name_len) == 0);
        }
        char *enc = params_encode(&p);
        assert_non_null(enc);
        params_init(&again);
        assert_int_equal(parse_q(&again, enc, err, sizeof err), 0);
        assert_int_equal(again.count, p.count);
        for (size_t i = 0; i < p.count; i++) {
            assert_int_equal(again.items[i].name_len, p.items[i].name_len);
            assert_int_equal(again.items[i].value_len, p.items[i].value_len);
            assert_memory_equal(again.items[i].name, p.items[i].name, p.items[i].name_len);
            assert_memory_equal(again.items[i].value, p.items[i].value, p.items[i].value_len);
        }
        params_cleanup(&again);
        free(enc);
    } else {
        int known = 0;
        assert_int_equal(p.count, 0);
        for (size_t i = 0; i < sizeof error_prefixes / sizeof *error_prefixes; i++)
            known |= strncmp(err, error_prefixes[i], strlen(error_prefixes[i])) == 0;
        if (!known) fail_msg("unknown message \"%s\"", err);
    }
    /* the error buffer changes nothing but the message's length */
    params_init(&again);
    memset(short_err, 'x', sizeof short_err);
    assert_int_equal(params_parse_urlencoded(&again, q, len, short_err, sizeof short_err), rc);
    assert_int_equal(again.count, p.count);
    if (rc)
        assert_true(strncmp(short_err, err, sizeof short_err - 1) == 0 &&
                    strlen(short_err) ==
                        (strlen(err) < sizeof short_err - 1 ? strlen(err) : sizeof short_err - 1));
    else
        assert_string_equal(short_err, "");
    params_cleanup(&again);
    params_init(&again);
    assert_int_equal(params_parse_urlencoded(&again, q, len, NULL, 0), rc);
    assert_int_equal(again.count, p.count);
    params_cleanup(&again);

    if (existing) {
        char err2[256];
        int clash = 0, rc2;
        params_init(&pre);
        assert_int_equal(parse_q(&pre, existing, err2, sizeof err2), 0);
        size_t before = pre.count;
        for (size_t i = 0; rc == 0 && i < p.count; i++)
            clash |= params_get(&pre, p.items[i].name) != NULL;
        rc2 = params_parse_urlencoded(&pre, q, len, err2, sizeof err2);
        if (rc == 0 && !clash && before + p.count <= PARAMS_MAX_COUNT) {
            assert_int_equal(rc2, 0);
            assert_int_equal(pre.count, before + p.count);
            for (size_t i = 0; i < p.count; i++)
                assert_string_equal(pre.items[before + i].name, p.items[i].name);
        } else {
            assert_int_equal(rc2, -1);
            assert_int_equal(pre.count, before);
            if (rc == -1 && strncmp(err, "duplicated", 10) != 0 &&
                strncmp(err, "more than", 9) != 0)
                assert_string_equal(err2, err);
            else
                assert_true(strncmp(err2, "duplicated parameter ", 21) == 0 ||
                            strcmp(err2, "more than 64 parameters") == 0);
        }
        params_cleanup(&pre);
    }
    params_cleanup(&p);
    free(nbuf);
    free(vbuf);
}

/* Random inputs: bytes from a small alphabet of tricky ones, then tokens (escapes of every kind,
 * long runs near the limits), into empty and non-empty lists; check_parse says what must hold. */
static void test_urlencoded_random(void **state) {
    static const char bytes[] = "aA=&%+0F\xff\xe5\xbc\xa0\x80 .g";
    static const char *const tokens[] = {
        "a",
        "b",
        "n",
        "=",
        "&",
        "&&",
        "+",
        "%",
        "%4",
        "%41",
        "%61",
        "%G1",
        "%00",
        "%2B",
        "%26",
        "%3D",
        "%C3%A9",
        "%C3%28",
        "%C0%AF",
        "%E5%BC%A0",
        "%ED%A0%80",
        "%F0%9F%98%80",
        "%F4%90%80%80",
        "%80",
        "\xff",
        "\xE5\xBC\xA0",
        "\xF0\x9F\x98\x80",
        "Nonce",
        "SecretId",
        "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn", /* 63 */
    };
    static const char *const existing[] = {NULL, "a=1", "Nonce=5&b=&n=x"};
    unsigned seed = 2024, accepted = 0, refused = 0;
    struct strbuf q;
    strbuf_init(&q);
    for (int round = 0; round < 6000; round++) {
        strbuf_reset(&q);
        if (round % 2 == 0) {
            size_t len = (size_t)(round / 2 % 48);
            for (size_t i = 0; i < len; i++) {
                seed = seed * 1103515245u + 12345u;
                char c = bytes[(seed >> 16) % (sizeof bytes)]; /* the last is the NUL */
                strbuf_append(&q, &c, 1);
            }
        } else {
            size_t n = (size_t)(round / 2 % 24);
            for (size_t i = 0; i < n; i++) {
                seed = seed * 1103515245u + 12345u;
                strbuf_appends(&q, tokens[(seed >> 16) % (sizeof tokens / sizeof tokens[0])]);
            }
            if (round % 7 == 1) { /* a value near its limit */
                strbuf_appends(&q, "&v=");
                for (size_t i = 0; i < 4090 + (seed >> 8) % 12; i++) strbuf_appends(&q, "x");
                strbuf_appends(&q, tokens[(seed >> 20) % (sizeof tokens / sizeof tokens[0])]);
            }
        }
        seed = seed * 1103515245u + 12345u;
        check_parse(q.len ? q.s : "", q.len, existing[(seed >> 16) % 3]);
        struct params p;
        params_init(&p);
        if (params_parse_urlencoded(&p, q.len ? q.s : "", q.len, NULL, 0) == 0)
            accepted++;
        else
            refused++;
        params_cleanup(&p);
    }
    /* both outcomes were exercised, many times (469 and 5531 with this seed) */
    if (accepted < 200 || refused < 200) fail_msg("accepted %u, refused %u", accepted, refused);
    /* Many pairs: the 64-parameter limit and a text block that fills up. */
    for (int round = 0; round < 200; round++) {
        strbuf_reset(&q);
        size_t pairs = 50 + (size_t)round % 20;
        for (size_t i = 0; i < pairs; i++) {
            seed = seed * 1103515245u + 12345u;
            strbuf_appendf(&q, "%sk%zu=", i ? "&" : "", i);
            for (size_t k = 0; k < (seed >> 16) % 200; k++) strbuf_appends(&q, k % 5 ? "y" : "%7A");
        }
        check_parse(q.s, q.len, round % 3 ? NULL : "a=1");
        expect_parse(q.s, q.len, NULL, pairs > 64 ? "more than 64 parameters" : NULL, pairs);
    }
    strbuf_cleanup(&q);
}

/* Edge inputs, each with its exact outcome. */
static void test_urlencoded_edges(void **state) {
    static const struct {
        const char *input;
        size_t len;          /* 0: strlen */
        const char *message; /* NULL: accepted */
    } cases[] = {
        {"a=%", 0, "malformed percent-encoding in parameter a"},
        {"a=1%", 0, "malformed percent-encoding in parameter a"},
        {"a=%4", 0, "malformed percent-encoding in parameter a"},
        {"%", 0, "malformed percent-encoding in parameter name \"%\""},
        {"a%=1", 0, "malformed percent-encoding in parameter name \"a%\""},
        {"a=%G1", 0, "malformed percent-encoding in parameter a"},
        {"a=%1G", 0, "malformed percent-encoding in parameter a"},
        {"%G1=1", 0, "malformed percent-encoding in parameter name \"%G1\""},
        {"a%G1&b=1", 0, "malformed percent-encoding in parameter name \"a%G1\""},
        {"=%G1", 0, "malformed percent-encoding in parameter \"\""},
        {"%G1=%", 0, "malformed percent-encoding in parameter name \"%G1\""},
        {"a=1&=b", 0, "empty parameter name"},
        {"a=&=b", 0, "empty parameter name"},
        {"=", 0, "empty parameter name"},
        {"a=%00", 0, "parameter a is not valid UTF-8 text"},
        {"%00=1", 0, "parameter name \"\\x00\" is not valid UTF-8 text"},
        {"a%00b=1", 0, "parameter name \"a\\x00b\" is not valid UTF-8 text"},
        {"a=x\0y", 5, "parameter a is not valid UTF-8 text"},
        {"a\0=1", 4, "parameter name \"a\\x00\" is not valid UTF-8 text"},
        {"a=%C0%80", 0, "parameter a is not valid UTF-8 text"},       /* overlong NUL */
        {"a=%E0%80%AF", 0, "parameter a is not valid UTF-8 text"},    /* overlong */
        {"a=%F0%80%80%AF", 0, "parameter a is not valid UTF-8 text"}, /* overlong */
        {"a=%C3%28", 0, "parameter a is not valid UTF-8 text"},       /* bad continuation */
        {"a=%E5%BC%28", 0, "parameter a is not valid UTF-8 text"},
        {"a=%F0%9F%98", 0, "parameter a is not valid UTF-8 text"}, /* truncated */
        {"a=%80", 0, "parameter a is not valid UTF-8 text"},       /* lone continuation */
        {"a=\x80", 0, "parameter a is not valid UTF-8 text"},
        {"a=%F4%90%80%80", 0, "parameter a is not valid UTF-8 text"}, /* above U+10FFFF */
        {"a=%F5%80%80%80", 0, "parameter a is not valid UTF-8 text"},
        {"a=%ED%A0%80", 0, "parameter a is not valid UTF-8 text"}, /* surrogate */
        {"a=%FF&b=%00", 0, "parameter a is not valid UTF-8 text"},
        {"a=1&b=2&a=3", 0, "duplicated parameter a"},
        {"a=1&a", 0, "duplicated parameter a"},
        {"a+b=1&a%20b=2", 0, "duplicated parameter \"a b\""}, /* a space is quoted */
        {"a=1&%61=2", 0, "duplicated parameter a"},
        {"\xE5\xBC\xA0=1&%E5%BC%A0=2", 0, "duplicated parameter \"\xE5\xBC\xA0\""},
        {"a=1", 0, NULL},
        {"a=+", 0, NULL},
        {"+=+", 0, NULL},
        {"a=&b=", 0, NULL},
        {"a&b", 0, NULL},
        {"&a=1&", 0, NULL},
        {"a==", 0, NULL},
        {"a=%F0%9F%98%80", 0, NULL},     /* 4 bytes: U+1F600 */
        {"a=%F4%8F%BF%BF", 0, NULL},     /* U+10FFFF */
        {"a=\xF0\x9F\x98\x80", 0, NULL}, /* the same, raw */
        {"%F0%9F%98%80=\xE5\xBC\xA0", 0, NULL},
        {"a=%26%3D%25%2B", 0, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct params p;
        char err[256] = "";
        size_t len = cases[i].len ? cases[i].len : strlen(cases[i].input);
        params_init(&p);
        int rc = params_parse_urlencoded(&p, cases[i].input, len, err, sizeof err);
        if (cases[i].message) {
            if (rc != -1 || strcmp(err, cases[i].message) != 0)
                fail_msg("case %zu: rc %d, \"%s\"", i, rc, err);
            assert_int_equal(p.count, 0);
        } else {
            if (rc != 0) fail_msg("case %zu: \"%s\"", i, err);
        }
        params_cleanup(&p);
        check_parse(cases[i].input, len, "a=1");
    }

    /* The decoded values of the accepted ones. */
    struct params p;
    char err[256];
    params_init(&p);
    assert_int_equal(parse_q(&p, "a=+&+=%2B+&c=&d&e=x==y&f=%F0%9F%98%80", err, sizeof err), 0);
    assert_int_equal(p.count, 6);
    assert_string_equal(params_get(&p, "a"), " ");
    assert_string_equal(params_get(&p, " "), "+ ");
    assert_string_equal(params_get(&p, "c"), "");
    assert_string_equal(params_get(&p, "d"), "");
    assert_string_equal(params_get(&p, "e"), "x==y");
    assert_string_equal(params_get(&p, "f"), "\xF0\x9F\x98\x80");
    params_cleanup(&p);
}

/* What the Java SDK sends: a CRLF before the first delimiter, no Content-Type per part. */
static const char java_body[] = "\r\n--------------------------3a4f1b2c5d6e7f8\r\n"
                                "Content-Disposition: form-data; name=\"Action\"\r\n\r\n"
                                "CaptchaIframeQuery"
                                "\r\n--------------------------3a4f1b2c5d6e7f8\r\n"
                                "Content-Disposition: form-data; name=\"uid\"\r\n\r\n"
                                "a+b%20c\r\nline2"
                                "\r\n--------------------------3a4f1b2c5d6e7f8\r\n"
                                "content-disposition: form-data; name=\"empty\"\r\n"
                                "Content-Type: text/plain; charset=UTF-8\r\n\r\n"
                                "\r\n--------------------------3a4f1b2c5d6e7f8--\r\n";

static void test_multipart_java(void **state) {
    struct params p;
    char err[256];
    params_init(&p);
    assert_int_equal(params_parse_multipart(&p,
                                            "multipart/form-data; boundary=------------------------"
                                            "3a4f1b2c5d6e7f8",
                                            java_body, sizeof java_body - 1, err, sizeof err),
                     0);
    assert_int_equal(p.count, 3);
    assert_string_equal(params_get(&p, "Action"), "CaptchaIframeQuery");
    /* Bytes as sent: no '+' rule, no percent-decoding, inner CRLF kept. */
    assert_string_equal(params_get(&p, "uid"), "a+b%20c\r\nline2");
    assert_string_equal(params_get(&p, "empty"), "");
    params_cleanup(&p);
}

static void test_multipart_quoted_boundary_and_dispatch(void **state) {
    static const char body[] = "--xyz\r\n"
                               "Content-Disposition: form-data; filename=\"f\"; name=\"a\"\r\n"
                               "\r\n1\r\n"
                               "--xyz\r\n"
                               "Content-Disposition: form-data; name=b\r\n"
                               "\r\n2\r\n"
                               "--xyz--";
    struct params p;
    char err[256];
    params_init(&p);
    assert_int_equal(params_parse_body(&p, "Multipart/Form-Data; charset=utf-8; boundary=\"xyz\"",
                                       body, sizeof body - 1, err, sizeof err),
                     0);
    assert_int_equal(p.count, 2);
    assert_string_equal(params_get(&p, "a"), "1");
    assert_string_equal(params_get(&p, "b"), "2");
    params_cleanup(&p);
}

static void test_multipart_preamble_and_padding(void **state) {
    /* A preamble before the first delimiter is ignored; spaces after a delimiter are padding. */
    static const char body[] = "this is a preamble\r\n--b  \r\n"
                               "Content-Disposition: form-data; name=\"a\"\r\n\r\n"
                               "x--b\n--b-"
                               "\r\n--b--";
    struct params p;
    char err[256];
    params_init(&p);
    assert_int_equal(params_parse_multipart(&p, "multipart/form-data;boundary=b", body,
                                            sizeof body - 1, err, sizeof err),
                     0);
    assert_int_equal(p.count, 1);
    /* A boundary-like text without its CRLF is part of the value. */
    assert_string_equal(params_get(&p, "a"), "x--b\n--b-");
    params_cleanup(&p);
}

static void test_multipart_errors(void **state) {
    static const struct {
        const char *content_type;
        const char *body;
        const char *message;
    } cases[] = {
        {"multipart/form-data", "--x\r\n\r\n", "multipart/form-data without a valid boundary"},
        {"multipart/form-data; boundary=", "--x--", "multipart/form-data without a valid boundary"},
        {"multipart/form-data; boundary=b", "nothing here", "multipart body without its boundary"},
        {"multipart/form-data; boundary=b",
         "--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n",
         "multipart body does not end with the closing boundary"},
        {"multipart/form-data; boundary=b",
         "--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--b",
         "multipart body does not end with the closing boundary"},
        {"multipart/form-data; boundary=b", "--b\r\nContent-Type: text/plain\r\n\r\n1\r\n--b--",
         "multipart part without a name"},
        {"multipart/form-data; boundary=b",
         "--b\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\n1\r\n--b--",
         "multipart part is not form-data"},
        {"multipart/form-data; boundary=b",
         "--b\r\nContent-Disposition: form-data; name=\"a\r\n\r\n1\r\n--b--",
         "multipart part without a valid name"},
        {"multipart/form-data; boundary=b",
         "--b\r\nContent-Disposition: form-data; name=\"a\"\r\n1\r\n--b--",
         "multipart part headers are not terminated"},
        {"multipart/form-data; boundary=b",
         "--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n"
         "--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n2\r\n--b--",
         "duplicated parameter a"},
        {"multipart/form-data; boundary=b",
         "--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n\xff\r\n--b--",
         "parameter a is not valid UTF-8 text"},
        {"multipart/form-data; boundary=b",
         "--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--b--junk",
         "multipart body has data after the closing boundary"},
        {"multipart/form-data; boundary=b",
         "--b\r\nContent-Disposition: form-data; name=\"\"\r\n\r\n1\r\n--b--",
         "empty parameter name"},
        {"text/plain", "a=1", "unsupported Content-Type \"text/plain\""},
        {"application/json; charset=utf-8", "{}", "unsupported Content-Type \"application/json\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct params p;
        char err[256] = "";
        params_init(&p);
        assert_int_equal(params_parse_body(&p, cases[i].content_type, cases[i].body,
                                           strlen(cases[i].body), err, sizeof err),
                         -1);
        assert_string_equal(err, cases[i].message);
        assert_int_equal(p.count, 0);
        params_cleanup(&p);
    }
}

static void test_body_dispatch_urlencoded(void **state) {
    static const char *const types[] = {NULL, "", "application/x-www-form-urlencoded",
                                        "Application/X-WWW-Form-URLEncoded ; charset=UTF-8"};
    for (size_t i = 0; i < 4; i++) {
        struct params p;
        char err[256];
        params_init(&p);
        assert_int_equal(params_parse_body(&p, types[i], "a=1+2", 5, err, sizeof err), 0);
        assert_string_equal(params_get(&p, "a"), "1 2");
        params_cleanup(&p);
    }
}

static void test_utf8(void **state) {
    assert_true(params_utf8_valid("", 0));
    assert_true(params_utf8_valid("plain", 5));
    assert_true(params_utf8_valid("\xE5\xBC\xA0\xE4\xB8\x89", 6));
    assert_true(params_utf8_valid("\xF0\x9F\x98\x80", 4));  /* U+1F600 */
    assert_true(params_utf8_valid("\xF4\x8F\xBF\xBF", 4));  /* U+10FFFF */
    assert_true(params_utf8_valid("\xED\x9F\xBF", 3));      /* U+D7FF */
    assert_false(params_utf8_valid("\xF4\x90\x80\x80", 4)); /* above U+10FFFF */
    assert_false(params_utf8_valid("\xED\xA0\x80", 3));     /* surrogate */
    assert_false(params_utf8_valid("\xC0\x80", 2));         /* overlong NUL */
    assert_false(params_utf8_valid("\xE0\x80\xAF", 3));     /* overlong */
    assert_false(params_utf8_valid("\xF0\x80\x80\xAF", 4)); /* overlong */
    assert_false(params_utf8_valid("\xE5\xBC", 2));         /* truncated */
    assert_false(params_utf8_valid("\x80", 1));             /* lone continuation */
    assert_false(params_utf8_valid("\xF5\x80\x80\x80", 4));
    assert_false(params_utf8_valid("\xE5\x41\xA0", 3));
}

static void test_encode(void **state) {
    struct params p;
    char err[256];
    params_init(&p);
    params_adds(&p, "a b", "x y+z/~-_.");
    params_adds(&p, "u", "\xE5\xBC\xA0&=%");
    params_adds(&p, "e", "");
    char *s = params_encode(&p);
    assert_string_equal(s, "a%20b=x%20y%2Bz%2F~-_.&u=%E5%BC%A0%26%3D%25&e=");
    /* Round trip: what we encode, we decode to the same list. */
    struct params q;
    params_init(&q);
    assert_int_equal(parse_q(&q, s, err, sizeof err), 0);
    assert_int_equal(q.count, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_string_equal(q.items[i].name, p.items[i].name);
        assert_string_equal(q.items[i].value, p.items[i].value);
    }
    free(s);
    params_cleanup(&q);
    params_cleanup(&p);

    params_init(&p);
    s = params_encode(&p);
    assert_string_equal(s, "");
    free(s);

    /* A value longer than the encoder's chunk: params_encode and params_encode_value agree. */
    char value[300];
    for (size_t i = 0; i < sizeof value - 1; i++) value[i] = "a /%~\xE5"[i % 6];
    value[sizeof value - 1] = '\0';
    params_init(&p);
    params_adds(&p, "v", value);
    s = params_encode(&p);
    struct strbuf b;
    strbuf_init(&b);
    assert_int_equal(strbuf_appends(&b, "v="), 0);
    assert_int_equal(params_encode_value(&b, value, strlen(value)), 0);
    assert_string_equal(s, b.s);
    assert_int_equal(strlen(s), 2 + 49 * 14 + 11); /* 49 whole patterns, then "a /%~" */
    strbuf_cleanup(&b);
    free(s);
    params_cleanup(&p);
}

/* The encoder as it was first written (a bit per unreserved byte, one byte at a time): the
 * table-driven one must match it byte for byte. */
static void reference_encode(struct strbuf *b, const unsigned char *s, size_t len) {
    static const uint64_t unreserved_bits[2] = {0x03FF600000000000u, 0x47FFFFFE87FFFFFEu};
    for (size_t i = 0; i < len; i++) {
        unsigned char c = s[i];
        char tmp[4];
        if (c < 128 && ((unreserved_bits[c >> 6] >> (c & 63)) & 1)) {
            tmp[0] = (char)c;
            assert_int_equal(strbuf_append(b, tmp, 1), 0);
        } else {
            snprintf(tmp, sizeof tmp, "%%%02X", c);
            assert_int_equal(strbuf_append(b, tmp, 3), 0);
        }
    }
}

static void test_encode_every_byte(void **state) {
    unsigned char all[256];
    for (size_t c = 0; c < 256; c++) all[c] = (unsigned char)c;
    /* Each byte alone, between kept bytes, and all 256 in one value (runs of every length). */
    for (size_t c = 0; c < 256; c++) {
        unsigned char v[3] = {'a', (unsigned char)c, 'z'};
        for (size_t off = 0; off < 3; off++) {
            struct strbuf got, want;
            strbuf_init(&got);
            strbuf_init(&want);
            assert_int_equal(params_encode_value(&got, (const char *)v + off, 3 - off), 0);
            reference_encode(&want, v + off, 3 - off);
            assert_int_equal(got.len, want.len);
            assert_memory_equal(got.s, want.s, want.len);
            strbuf_cleanup(&got);
            strbuf_cleanup(&want);
        }
    }
    struct params p;
    struct strbuf want;
    params_init(&p);
    strbuf_init(&want);
    assert_int_equal(params_add(&p, "all", 3, (const char *)all, sizeof all), 0);
    assert_int_equal(params_add(&p, (const char *)all + 1, 255, "~x y", 4), 0);
    assert_int_equal(strbuf_appends(&want, "all="), 0);
    reference_encode(&want, all, sizeof all);
    assert_int_equal(strbuf_appends(&want, "&"), 0);
    reference_encode(&want, all + 1, 255);
    assert_int_equal(strbuf_appends(&want, "=~x%20y"), 0);
    char *s = params_encode(&p);
    assert_non_null(s);
    assert_string_equal(s, want.s);
    free(s);
    /* Random mixes of kept and escaped bytes. */
    unsigned seed = 7;
    for (int round = 0; round < 2000; round++) {
        unsigned char buf[64];
        size_t len = (size_t)(round % 64);
        for (size_t i = 0; i < len; i++) {
            seed = seed * 1103515245u + 12345u;
            buf[i] = (seed >> 16) & 1 ? "aZ09-_.~"[(seed >> 8) & 7] : (unsigned char)(seed >> 20);
        }
        struct strbuf got;
        strbuf_init(&got);
        strbuf_reset(&want);
        assert_int_equal(params_encode_value(&got, (const char *)buf, len), 0);
        reference_encode(&want, buf, len);
        assert_int_equal(got.len, want.len);
        if (want.len) assert_memory_equal(got.s, want.s, want.len);
        strbuf_cleanup(&got);
    }
    strbuf_cleanup(&want);
    params_cleanup(&p);
}

static int reference_name_cmp(const struct param *a, const struct param *b) {
    size_t n = a->name_len < b->name_len ? a->name_len : b->name_len;
    int c = memcmp(a->name, b->name, n);
    if (c != 0) return c;
    return (a->name_len > b->name_len) - (a->name_len < b->name_len);
}

/* The prefix-keyed sort orders like memcmp-then-shorter-first and keeps equal names in order:
 * names around the 4- and 8-byte prefix sizes, with NUL and high bytes, and duplicates. */
static void test_sort_index(void **state) {
    static const char alphabet[] = {'a', 'b', '_', '\0', '\xff', 'S'};
    unsigned seed = 99;
    for (int round = 0; round < 3000; round++) {
        struct params p;
        const struct param *index[PARAMS_MAX_COUNT];
        size_t n = (size_t)(round % PARAMS_MAX_COUNT) + 1;
        params_init(&p);
        for (size_t i = 0; i < n; i++) {
            char name[12];
            seed = seed * 1103515245u + 12345u;
            size_t len = (seed >> 16) % sizeof name;
            for (size_t k = 0; k < len; k++) {
                seed = seed * 1103515245u + 12345u;
                /* mostly a shared prefix, so ties past 8 bytes happen */
                name[k] = k < 6 && (seed >> 12) % 4 ? "Signat"[k] : alphabet[(seed >> 16) % 6];
            }
            char value[24];
            snprintf(value, sizeof value, "%zu", i);
            assert_int_equal(params_add(&p, name, len, value, strlen(value)), 0);
        }
        for (size_t i = 0; i < n; i++) index[i] = &p.items[i];
        params_sort_index(index, n);
        for (size_t i = 1; i < n; i++) {
            int c = reference_name_cmp(index[i - 1], index[i]);
            assert_true(c < 0 || (c == 0 && index[i - 1] < index[i]));
        }
        params_cleanup(&p);
    }
}

/* Garbage never crashes: random bytes in every decoder either parse or fail cleanly. */
static void test_fuzz_no_crash(void **state) {
    static const char alphabet[] = "ab=&%+0F\r\n-\"; \xff\xe5name";
    unsigned seed = 12345;
    char buf[256];
    for (int round = 0; round < 20000; round++) {
        size_t len = (size_t)(round % 200);
        for (size_t i = 0; i < len; i++) {
            seed = seed * 1103515245u + 12345u;
            buf[i] = alphabet[(seed >> 16) % (sizeof alphabet - 1)];
        }
        struct params p;
        char err[256];
        params_init(&p);
        int rc = params_parse_urlencoded(&p, buf, len, err, sizeof err);
        if (rc == 0)
            for (size_t i = 0; i < p.count; i++)
                assert_true(params_utf8_valid(p.items[i].value, p.items[i].value_len));
        else
            assert_true(strlen(err) > 0);
        params_cleanup(&p);
        rc = params_parse_multipart(&p, "multipart/form-data; boundary=a", buf, len, err,
                                    sizeof err);
        if (rc != 0) assert_int_equal(p.count, 0);
        params_cleanup(&p);
    }
}

/* The one quoting helper both the parser and the validators use for messages. */
static void test_quote(void **state) {
    char out[PARAMS_QUOTED_MAX];
    (void)state;
    params_quote(out, sizeof out, "a\"b\\c\n", 6);
    assert_string_equal(out, "\"a\\\"b\\\\c\\x0a\"");
    params_quote(out, sizeof out, "\xff", 1);
    assert_string_equal(out, "\"\\xff\"");
    /* 11 three-byte characters: the cut at 32 bytes falls inside the 11th, so 10 are shown. */
    const char *zh = "\xE5\xBC\xA0\xE5\xBC\xA0\xE5\xBC\xA0\xE5\xBC\xA0\xE5\xBC\xA0\xE5\xBC\xA0"
                     "\xE5\xBC\xA0\xE5\xBC\xA0\xE5\xBC\xA0\xE5\xBC\xA0\xE5\xBC\xA0";
    params_quote(out, sizeof out, zh, strlen(zh));
    assert_int_equal(strlen(out), 1 + 30 + 3 + 1);
    assert_memory_equal(out + 1, zh, 30);
    /* Every byte escaped still fits the documented room. */
    char worst[64];
    memset(worst, 0x01, sizeof worst);
    params_quote(out, sizeof out, worst, sizeof worst);
    assert_int_equal(strlen(out), 1 + 32 * 4 + 3 + 1);
    params_quote(out, 7, "abc", 3);
    assert_string_equal(out, "");
}

/* params_reset empties a list and keeps its storage for reuse, within its limit; a list parsed
 * into after a reset holds only the new parameters. */
static void test_reset_reuses_storage_within_limits(void **state) {
    struct params p;
    char err[256];
    static const char q1[] = "Action=CaptchaIframeQuery&uid=abc&userIp=1.2.3.4&captchaType=1";
    static const char q2[] = "Action=DescribeCaptchaResult&Ticket=t";
    params_init(&p);
    assert_int_equal(params_parse_urlencoded(&p, q1, strlen(q1), err, sizeof err), 0);
    struct param *items = p.items;
    struct params_text *text = p.text;
    params_reset(&p);
    assert_int_equal(p.count, 0);
    assert_ptr_equal(p.items, items); /* kept */
    assert_ptr_equal(p.text, text);
    assert_null(params_get(&p, "Action"));
    assert_int_equal(params_parse_urlencoded(&p, q2, strlen(q2), err, sizeof err), 0);
    assert_ptr_equal(p.items, items); /* reused, no new allocation */
    assert_ptr_equal(p.text, text);
    assert_int_equal(p.count, 2);
    assert_string_equal(params_get(&p, "Action"), "DescribeCaptchaResult");
    assert_string_equal(params_get(&p, "Ticket"), "t");
    assert_null(params_get(&p, "uid")); /* nothing of the list before */
    assert_string_equal(p.items[0].name, "Action");
    /* a duplicate check sees only the new list */
    params_reset(&p);
    assert_int_equal(params_parse_urlencoded(&p, q1, strlen(q1), err, sizeof err), 0);
    assert_int_equal(p.count, 4);
    /* over the limit: a 5000-byte value's block and a 200-item array are freed, not kept */
    params_reset(&p);
    static char big[5000];
    memset(big, 'x', sizeof big);
    assert_int_equal(params_add(&p, "big", 3, big, sizeof big), 0);
    params_reset(&p);
    assert_null(p.text);
    for (int i = 0; i < 200; i++) {
        char name[16];
        snprintf(name, sizeof name, "n%d", i);
        assert_int_equal(params_adds(&p, name, "v"), 0);
    }
    assert_true(p.cap >= 200);
    params_reset(&p);
    assert_null(p.items);
    assert_int_equal(p.cap, 0);
    assert_int_equal(p.count, 0);
    assert_non_null(p.text); /* the names' block is small: kept */
    /* still a valid list */
    assert_int_equal(params_adds(&p, "a", "1"), 0);
    assert_string_equal(params_get(&p, "a"), "1");
    params_cleanup(&p);
    assert_null(p.text);
    assert_null(p.items);
}

/* params_assign_without fills a kept list in place: the same storage, only src's parameters
 * left in, nothing of the list's previous content. */
static void test_assign_without_reuses_a_kept_list(void **state) {
    static const char *const skip[] = {"Signature", "Nonce", NULL};
    struct params src, dst;
    params_init(&src);
    params_init(&dst);
    assert_int_equal(params_adds(&src, "Action", "A"), 0);
    assert_int_equal(params_adds(&src, "Nonce", "1"), 0);
    assert_int_equal(params_adds(&src, "Signature", "s"), 0);
    assert_int_equal(params_adds(&src, "uid", "u"), 0);
    assert_int_equal(params_assign_without(&dst, &src, skip), 0);
    assert_int_equal(dst.count, 2);
    assert_int_equal(params_adds(&dst, "Extra", "e"), 0);
    struct param *items = dst.items;
    struct params_text *text = dst.text;
    params_reset(&dst);
    assert_int_equal(params_assign_without(&dst, &src, skip), 0);
    assert_ptr_equal(dst.items, items);
    assert_ptr_equal(dst.text, text);
    assert_int_equal(dst.count, 2);
    assert_string_equal(dst.items[0].name, "Action");
    assert_string_equal(dst.items[1].name, "uid");
    assert_null(params_get(&dst, "Extra"));
    assert_null(params_get(&dst, "Nonce"));
    /* without a reset: emptied first all the same */
    assert_int_equal(params_assign_without(&dst, &src, skip), 0);
    assert_int_equal(dst.count, 2);
    params_cleanup(&dst);
    params_cleanup(&src);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_list_basics),
        cmocka_unit_test(test_many_adds_grow),
        cmocka_unit_test(test_text_blocks),
        cmocka_unit_test(test_sort_byte_order),
        cmocka_unit_test(test_copy),
        cmocka_unit_test(test_copy_without),
        cmocka_unit_test(test_urlencoded_decoding),
        cmocka_unit_test(test_urlencoded_not_nul_terminated),
        cmocka_unit_test(test_urlencoded_errors),
        cmocka_unit_test(test_urlencoded_duplicate_against_existing),
        cmocka_unit_test(test_urlencoded_limits),
        cmocka_unit_test(test_urlencoded_edges),
        cmocka_unit_test(test_urlencoded_limit_edges),
        cmocka_unit_test(test_urlencoded_random),
        cmocka_unit_test(test_multipart_java),
        cmocka_unit_test(test_multipart_quoted_boundary_and_dispatch),
        cmocka_unit_test(test_multipart_preamble_and_padding),
        cmocka_unit_test(test_multipart_errors),
        cmocka_unit_test(test_body_dispatch_urlencoded),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_encode),
        cmocka_unit_test(test_encode_every_byte),
        cmocka_unit_test(test_sort_index),
        cmocka_unit_test(test_fuzz_no_crash),
        cmocka_unit_test(test_quote),
        cmocka_unit_test(test_reset_reuses_storage_within_limits),
        cmocka_unit_test(test_assign_without_reuses_a_kept_list),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
