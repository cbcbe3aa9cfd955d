/* sign.c: API 2.0 request signing and verification. The string to sign is built in one
 * allocation from a sorted index of the parameters, so the caller's list keeps its order and a
 * verification costs one HMAC. Each thread keeps keyed HMAC contexts for its last few keys, so a
 * signature costs the hashing alone, not a digest lookup and key set-up per call. */
#include "capgate/sign.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "capgate/params.h"

#define SIGN_INDEX_STACK 64 /* a parsed request never has more (PARAMS_MAX_COUNT) */

enum sign_method sign_method_parse(const char *value) {
    if (value && strcmp(value, "HmacSHA256") == 0) return SIGN_HMAC_SHA256;
    return SIGN_HMAC_SHA1;
}

const char *sign_method_name(enum sign_method m) {
    return m == SIGN_HMAC_SHA256 ? "HmacSHA256" : "HmacSHA1";
}

static int is_signature(const struct param *it) {
    return it->name_len == 9 && memcmp(it->name, "Signature", 9) == 0;
}

static int is_signature_method(const struct param *it) {
    return it->name_len == 15 && memcmp(it->name, "SignatureMethod", 15) == 0;
}

/* The '@' rule. Every official v2 SDK leaves out of the string to sign a parameter whose value
 * starts with '@' (an old file-upload convention) when the method is POST, and still sends it:
 * QcloudApi/qcloudapi-sdk-python QcloudApi/common/sign.py (Sign.make), qcloudapi-sdk-php
 * src/QcloudApi/Common/Sign.php (_buildParamStr), qcloudapi-sdk-java
 * src/main/java/com/qcloud/Common/Sign.java (buildParamStr), CFETeam/qcloudapi-sdk index.js
 * (generateQueryString; there not when the request carries a Version, its API 3.0 branch). With
 * GET all four sign every parameter. */
int sign_skips_at(const char *http_method) {
    return http_method && strcmp(http_method, "POST") == 0;
}

static int value_is_at(const struct param *it) {
    return it->value_len > 0 && it->value[0] == '@';
}

/* How the SDKs write names into the string to sign. They agree but for a name with a '_':
 * - NAMES_SENT: sorted as sent, then each '_' past the first byte becomes '.': PHP
 *   (Sign.php _buildParamStr: ksort, then strpos($key, '_') is falsy for a leading '_'), Node
 *   (index.js generateQueryString) and the docs (接口鉴权.md: sort in 2.1, '_' to '.' in 2.2).
 *   Both programs sign this way.
 * - NAMES_ALL: sorted as sent, every '_' becomes '.': Java (Sign.java buildParamStr, a TreeMap
 *   of the names as sent) and the Python SDK before 2.0.15.
 * - NAMES_ALL_SORTED: every '_' becomes '.', then the new names are sorted: Python 2.0.15
 *   (common/sign.py Sign.make builds a dict of replaced names and sorts it), so `user_x` signs as
 *   `user.x`, before `userIp`, where the others put it after. */
enum name_form { NAMES_SENT, NAMES_ALL, NAMES_ALL_SORTED };

/* What string_to_sign saw besides the string: the '@' values it left out, and where names hold
 * a '_' (the forms differ only then). */
struct sign_seen {
    size_t skipped;
    int underscore_first; /* some name starts with '_' */
    int underscore;       /* some name has a '_' anywhere */
};

/* Byte order of the names once every '_' is '.'. */
static int rewritten_cmp(const struct param *a, const struct param *b) {
    size_t n = a->name_len < b->name_len ? a->name_len : b->name_len;
    for (size_t i = 0; i < n; i++) {
        unsigned char x = (unsigned char)a->name[i], y = (unsigned char)b->name[i];
        if (x == '_') x = '.';
        if (y == '_') y = '.';
        if (x != y) return x < y ? -1 : 1;
    }
    return a->name_len < b->name_len ? -1 : a->name_len > b->name_len;
}

/* Insertion sort by rewritten_cmp: only a verification that failed its first forms and has a
 * name with '_' comes here, with at most a parsed request's count of parameters. */
static void sort_rewritten(const struct param **index, size_t n) {
    for (size_t i = 1; i < n; i++) {
        const struct param *it = index[i];
        size_t j = i;
        for (; j > 0 && rewritten_cmp(index[j - 1], it) > 0; j--) index[j] = index[j - 1];
        index[j] = it;
    }
}

/* The string to sign and its length (values may hold any byte when added by hand). skip_at: the
 * parameters whose value starts with '@' are left out. names: see enum name_form. seen, when not
 * NULL, is filled. method, when not NULL, gets the value of the first SignatureMethod (NULL when
 * absent), found on the way. */
static char *string_to_sign(const char *http_method, const char *host, const char *path,
                            const struct params *p, int skip_at, enum name_form names,
                            struct sign_seen *seen, size_t *len_out, const char **method) {
    const struct param *stack_index[SIGN_INDEX_STACK];
    const struct param **index = stack_index;
    const char *method_value = NULL;
    char *out = NULL;
    size_t n = 0;
    struct sign_seen saw = {0};

    if (p->count > SIGN_INDEX_STACK) {
        index = malloc(p->count * sizeof *index);
        if (!index) goto out;
    }
    size_t method_len = strlen(http_method), host_len = strlen(host), path_len = strlen(path);
    size_t total = method_len + host_len + path_len + 1;
    for (size_t i = 0; i < p->count; i++) {
        const struct param *it = &p->items[i];
        if (is_signature(it)) continue;
        if (!method_value && is_signature_method(it)) method_value = it->value;
        if (skip_at && value_is_at(it)) {
            saw.skipped++;
            continue;
        }
        const char *u = memchr(it->name, '_', it->name_len);
        if (u) {
            saw.underscore = 1;
            if (u == it->name) saw.underscore_first = 1;
        }
        index[n++] = it;
        total += it->name_len + it->value_len + 2; /* '=' and '&' */
    }
    if (names == NAMES_ALL_SORTED && saw.underscore)
        sort_rewritten(index, n);
    else
        params_sort_index(index, n); /* by the name as sent: the rewrite below comes after */
    size_t first = names == NAMES_SENT ? 1 : 0;

    out = malloc(total + 1);
    if (!out) goto out;
    char *w = out;
    memcpy(w, http_method, method_len);
    w += method_len;
    memcpy(w, host, host_len);
    w += host_len;
    memcpy(w, path, path_len);
    w += path_len;
    *w++ = '?';
    for (size_t i = 0; i < n; i++) {
        const struct param *it = index[i];
        if (i > 0) *w++ = '&';
        /* "name\0value" is one run of the list's text; the NUL becomes the '='. */
        memcpy(w, it->name, it->name_len + 1 + it->value_len);
        for (size_t k = first; k < it->name_len; k++)
            if (w[k] == '_') w[k] = '.';
        w[it->name_len] = '=';
        w += it->name_len + 1 + it->value_len;
    }
    *w = '\0';
    *len_out = (size_t)(w - out);
    if (method) *method = method_value;
    if (seen) *seen = saw;
out:
    if (index != stack_index) free(index);
    return out;
}

char *sign_string_to_sign(const char *http_method, const char *host, const char *path,
                          const struct params *p) {
    size_t len;
    return string_to_sign(http_method, host, path, p, sign_skips_at(http_method), NAMES_SENT, NULL,
                          &len, NULL);
}

/* ---- keyed HMAC contexts, per thread ----
 * A slot holds an EVP_MAC_CTX already keyed for (method, key); EVP_MAC_init with no key rewinds
 * it to the state after the key, so a call is update + final. A key longer than the slot's copy
 * is not cached. Slots are reused least recently used first; a thread's slots are freed (keys
 * cleansed) when it exits. */
#define SIGN_SLOTS 8
#define SIGN_SLOT_KEY_MAX 128

struct sign_slot {
    EVP_MAC_CTX *ctx;
    enum sign_method method;
    size_t key_len;
    unsigned long last_use;
    unsigned char key[SIGN_SLOT_KEY_MAX];
};

struct sign_cache {
    struct sign_slot slot[SIGN_SLOTS];
    unsigned long clock;
    int registered; /* the thread-exit destructor knows this cache */
};

static pthread_once_t sign_once = PTHREAD_ONCE_INIT;
static pthread_key_t sign_exit_key;
static EVP_MAC *sign_hmac; /* fetched once; lives as long as the process */
static int sign_ready;
static _Thread_local struct sign_cache sign_cache;

static void slot_clear(struct sign_slot *sl) {
    EVP_MAC_CTX_free(sl->ctx);
    OPENSSL_cleanse(sl->key, sizeof sl->key);
    memset(sl, 0, sizeof *sl);
}

static void sign_cache_exit(void *arg) {
    struct sign_cache *c = arg;
    for (size_t i = 0; i < SIGN_SLOTS; i++) slot_clear(&c->slot[i]);
    c->registered = 0;
}

static void sign_init_once(void) {
    sign_hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (sign_hmac && pthread_key_create(&sign_exit_key, sign_cache_exit) == 0) sign_ready = 1;
}

/* A context keyed for (m, key), rewound and ready for data; NULL when none can be had (the
 * caller then uses one-shot HMAC). */
static EVP_MAC_CTX *cached_mac(enum sign_method m, const char *key, size_t key_len) {
    struct sign_cache *c = &sign_cache;
    struct sign_slot *sl = NULL;

    if (key_len > SIGN_SLOT_KEY_MAX || pthread_once(&sign_once, sign_init_once) != 0 || !sign_ready)
        return NULL;
    if (!c->registered) {
        if (pthread_setspecific(sign_exit_key, c) != 0) return NULL;
        c->registered = 1;
    }
    for (size_t i = 0; i < SIGN_SLOTS; i++) {
        struct sign_slot *it = &c->slot[i];
        if (it->ctx && it->method == m && it->key_len == key_len &&
            CRYPTO_memcmp(it->key, key, key_len) == 0) {
            sl = it;
            break;
        }
    }
    if (sl) {
        if (!EVP_MAC_init(sl->ctx, NULL, 0, NULL)) {
            slot_clear(sl);
            return NULL;
        }
    } else {
        static char sha256[] = "SHA256", sha1[] = "SHA1"; /* OSSL_PARAM wants char * */
        OSSL_PARAM params[2];
        sl = &c->slot[0];
        for (size_t i = 1; i < SIGN_SLOTS && sl->ctx; i++)
            if (!c->slot[i].ctx || c->slot[i].last_use < sl->last_use) sl = &c->slot[i];
        slot_clear(sl);
        params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
                                                     m == SIGN_HMAC_SHA256 ? sha256 : sha1, 0);
        params[1] = OSSL_PARAM_construct_end();
        sl->ctx = EVP_MAC_CTX_new(sign_hmac);
        /* EVP_MAC_init wants a non-NULL key even when it is empty. */
        if (!sl->ctx ||
            !EVP_MAC_init(sl->ctx, (const unsigned char *)(key_len ? key : ""), key_len, params)) {
            slot_clear(sl);
            return NULL;
        }
        sl->method = m;
        sl->key_len = key_len;
        if (key_len) memcpy(sl->key, key, key_len);
    }
    sl->last_use = ++c->clock;
    return sl->ctx;
}

int sign_compute(enum sign_method m, const char *key, size_t key_len, const char *data,
                 size_t data_len, char out[SIGN_B64_MAX]) {
    unsigned char md[EVP_MAX_MD_SIZE];
    size_t md_len = 0;
    EVP_MAC_CTX *ctx = cached_mac(m, key ? key : "", key ? key_len : 0);

    out[0] = '\0';
    if (ctx) {
        if (!EVP_MAC_update(ctx, (const unsigned char *)data, data_len) ||
            !EVP_MAC_final(ctx, md, &md_len, sizeof md))
            return -1;
    } else {
        unsigned int n = 0;
        const EVP_MD *evp = m == SIGN_HMAC_SHA256 ? EVP_sha256() : EVP_sha1();
        /* HMAC() wants a non-NULL key even when it is empty. */
        if (!HMAC(evp, key ? key : "", (int)key_len, (const unsigned char *)data, data_len, md, &n))
            return -1;
        md_len = n;
    }
    if (EVP_EncodeBlock((unsigned char *)out, md, (int)md_len) <= 0) return -1;
    return 0;
}

/* Computes p's signature for the request into out, the '@' values left out when skip_at and the
 * names written as `names` says. seen (when not NULL) gets what string_to_sign saw. */
static int sign_for(const struct params *p, const char *http_method, const char *host,
                    const char *path, const char *key, int skip_at, enum name_form names,
                    struct sign_seen *seen, char out[SIGN_B64_MAX]) {
    size_t len;
    const char *method;
    char *text = string_to_sign(http_method, host, path, p, skip_at, names, seen, &len, &method);
    if (!text) return -1;
    enum sign_method m = sign_method_parse(method);
    int rc = sign_compute(m, key, strlen(key), text, len, out);
    free(text);
    return rc;
}

int sign_params(struct params *p, const char *http_method, const char *host, const char *path,
                const char *key) {
    char sig[SIGN_B64_MAX];
    if (sign_for(p, http_method, host, path, key, sign_skips_at(http_method), NAMES_SENT, NULL,
                 sig) != 0)
        return -1;
    return params_set(p, "Signature", sig);
}

/* 0 when got equals want, in constant time. The length of a valid signature is public (28 or
 * 44), so checking it first leaks nothing. */
static int sig_equal(const struct param *got, const char *want) {
    if (got->value_len != strlen(want)) return -1;
    return CRYPTO_memcmp(got->value, want, got->value_len) == 0 ? 0 : -1;
}

/* 0 when p's Signature is what key makes in this form. */
static int verify_form(const struct params *p, const struct param *got, const char *http_method,
                       const char *host, const char *path, const char *key, int skip_at,
                       enum name_form names, struct sign_seen *seen) {
    char want[SIGN_B64_MAX];
    if (sign_for(p, http_method, host, path, key, skip_at, names, seen, want) != 0) return -1;
    return sig_equal(got, want);
}

int sign_verify(const struct params *p, const char *http_method, const char *host, const char *path,
                const char *key) {
    struct sign_seen seen;
    const struct param *got = params_find(p, "Signature");
    int skip_at = sign_skips_at(http_method);
    if (!got || got->value_len == 0) return -1;
    if (verify_form(p, got, http_method, host, path, key, skip_at, NAMES_SENT, &seen) == 0)
        return 0;
    /* A POST whose '@' values were left out is also accepted when they were signed: the Node
     * SDK signs them when the request carries a Version (index.js, its API 3.0 branch), and a
     * signature over every parameter covers strictly more than the SDKs' rule asks, so this
     * admits no request the key holder did not sign. GET gets one form only: no SDK leaves
     * anything out of a GET, and trying the shorter form there would accept signatures no SDK
     * makes and leave the '@' values of a GET unauthenticated. */
    if (skip_at && seen.skipped > 0 &&
        verify_form(p, got, http_method, host, path, key, 0, NAMES_SENT, NULL) == 0)
        return 0;
    /* The other SDKs' names (enum name_form): the same parameters and values in another order or
     * spelling, so each covers exactly what the first form covers. Tried only when a name has a
     * '_', the one case where the forms differ. */
    if (seen.underscore_first &&
        verify_form(p, got, http_method, host, path, key, skip_at, NAMES_ALL, NULL) == 0)
        return 0;
    if (seen.underscore &&
        verify_form(p, got, http_method, host, path, key, skip_at, NAMES_ALL_SORTED, NULL) == 0)
        return 0;
    return -1;
}
