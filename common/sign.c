/* sign.c: API 2.0 request signing and verification. The string to sign is built in one
 * allocation from a sorted index of the parameters, so the caller's list keeps its order and a
 * verification costs one HMAC. Each thread keeps keyed HMAC contexts for its last few keys, so a
 * signature costs the hashing alone, not a digest lookup and key set-up per call. */
#include "capgate/sign.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* SHA*_Init and friends: deprecated in OpenSSL 3, kept; see struct sign_key. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "capgate/params.h"
#include "capgate/secmem.h"

#define SIGN_INDEX_STACK 64 /* a parsed request never has more (PARAMS_MAX_COUNT) */
/* The string to sign of a usual request fits this on the stack; a longer one is malloc'd. */
#define SIGN_TEXT_STACK 2048

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
 * absent), found on the way. The string is written to buf when it fits in cap bytes (a usual
 * request's does: no allocation per signature), else to a malloc'd copy the caller frees
 * (returned != buf). */
static char *string_to_sign(const char *http_method, const char *host, const char *path,
                            const struct params *p, int skip_at, enum name_form names,
                            struct sign_seen *seen, size_t *len_out, const char **method, char *buf,
                            size_t cap) {
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

    out = total < cap ? buf : malloc(total + 1);
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
                          &len, NULL, NULL, 0);
}

/* ---- HMAC from precomputed states ----
 * HMAC(K, m) = H((K' ^ opad) || H((K' ^ ipad) || m)), K' the key padded to the block (hashed
 * first when longer). The two key blocks are the same for every message, so a key's hash
 * states after them are computed once (sign_key_new, at config load) and a signature costs a
 * copy of each state and the message's blocks: two compressions fewer than HMAC from the key,
 * and no OpenSSL provider dispatch or allocation. The states are as secret as the key (they
 * sign for it), so a sign_key lives in secmem. OpenSSL 3 marks the SHA*_Init family
 * deprecated but keeps it; it is the only API that exposes a hash state as a plain struct to
 * copy (an EVP_MD_CTX copy allocates). */
struct sign_key {
    SHA_CTX sha1_inner, sha1_outer;
    SHA256_CTX sha256_inner, sha256_outer;
};

#define SIGN_BLOCK 64 /* SHA-1 and SHA-256 alike */

static int key_states(struct sign_key *k, const char *key, size_t key_len) {
    unsigned char block[SIGN_BLOCK], pad[SIGN_BLOCK];
    int ok = 1;
    for (int sha256 = 0; sha256 < 2 && ok; sha256++) {
        memset(block, 0, sizeof block);
        if (key_len > SIGN_BLOCK) {
            if (sha256)
                ok = SHA256((const unsigned char *)key, key_len, block) != NULL;
            else
                ok = SHA1((const unsigned char *)key, key_len, block) != NULL;
        } else if (key_len) {
            memcpy(block, key, key_len);
        }
        for (int outer = 0; outer < 2 && ok; outer++) {
            for (size_t i = 0; i < SIGN_BLOCK; i++)
                pad[i] = (unsigned char)(block[i] ^ (outer ? 0x5c : 0x36));
            if (sha256) {
                SHA256_CTX *c = outer ? &k->sha256_outer : &k->sha256_inner;
                ok = SHA256_Init(c) && SHA256_Update(c, pad, SIGN_BLOCK);
            } else {
                SHA_CTX *c = outer ? &k->sha1_outer : &k->sha1_inner;
                ok = SHA1_Init(c) && SHA1_Update(c, pad, SIGN_BLOCK);
            }
        }
    }
    OPENSSL_cleanse(block, sizeof block);
    OPENSSL_cleanse(pad, sizeof pad);
    return ok ? 0 : -1;
}

struct sign_key *sign_key_new(const char *key, size_t key_len) {
    struct sign_key *k = secmem_alloc(sizeof *k);
    if (!k) return NULL;
    if (key_states(k, key ? key : "", key ? key_len : 0) != 0) {
        secmem_free(k);
        return NULL;
    }
    return k;
}

void sign_key_free(struct sign_key *k) {
    secmem_free(k); /* wipes the states */
}

/* The raw HMAC of data under k into md; its length. */
static size_t key_mac(const struct sign_key *k, enum sign_method m, const char *data,
                      size_t data_len, unsigned char md[EVP_MAX_MD_SIZE]) {
    size_t n = 0;
    if (m == SIGN_HMAC_SHA256) {
        SHA256_CTX c = k->sha256_inner;
        if (SHA256_Update(&c, data, data_len) && SHA256_Final(md, &c)) {
            c = k->sha256_outer;
            if (SHA256_Update(&c, md, SHA256_DIGEST_LENGTH) && SHA256_Final(md, &c))
                n = SHA256_DIGEST_LENGTH;
        }
        OPENSSL_cleanse(&c, sizeof c);
    } else {
        SHA_CTX c = k->sha1_inner;
        if (SHA1_Update(&c, data, data_len) && SHA1_Final(md, &c)) {
            c = k->sha1_outer;
            if (SHA1_Update(&c, md, SHA_DIGEST_LENGTH) && SHA1_Final(md, &c)) n = SHA_DIGEST_LENGTH;
        }
        OPENSSL_cleanse(&c, sizeof c);
    }
    return n;
}

int sign_compute_key(const struct sign_key *k, enum sign_method m, const char *data,
                     size_t data_len, char out[SIGN_B64_MAX]) {
    unsigned char md[EVP_MAX_MD_SIZE];
    size_t md_len = key_mac(k, m, data, data_len, md);
    out[0] = '\0';
    if (!md_len || EVP_EncodeBlock((unsigned char *)out, md, (int)md_len) <= 0) return -1;
    return 0;
}

/* ---- keys given as strings: their states, per thread ----
 * For callers that hold a key string (the mock, tests): each thread keeps the states of its last
 * few keys. A key longer than the slot's copy is not cached. Slots are reused least recently used
 * first; a thread's slots are wiped when it exits. */
#define SIGN_SLOTS 8
#define SIGN_SLOT_KEY_MAX 128

struct sign_slot {
    int used;
    size_t key_len;
    unsigned long last_use;
    unsigned char key[SIGN_SLOT_KEY_MAX];
    struct sign_key states;
};

struct sign_cache {
    struct sign_slot slot[SIGN_SLOTS];
    unsigned long clock;
    int registered; /* the thread-exit destructor knows this cache */
};

static pthread_once_t sign_once = PTHREAD_ONCE_INIT;
static pthread_key_t sign_exit_key;
static int sign_ready;
static _Thread_local struct sign_cache sign_cache;

static void sign_cache_exit(void *arg) {
    struct sign_cache *c = arg;
    OPENSSL_cleanse(c->slot, sizeof c->slot);
    c->registered = 0;
}

static void sign_init_once(void) {
    if (pthread_key_create(&sign_exit_key, sign_cache_exit) == 0) sign_ready = 1;
}

/* The states of key from this thread's cache, computed on a miss; NULL when it cannot be cached
 * (the caller then computes them on its stack). */
static const struct sign_key *cached_key(const char *key, size_t key_len) {
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
        if (it->used && it->key_len == key_len && CRYPTO_memcmp(it->key, key, key_len) == 0) {
            sl = it;
            break;
        }
    }
    if (!sl) {
        sl = &c->slot[0];
        for (size_t i = 1; i < SIGN_SLOTS && sl->used; i++)
            if (!c->slot[i].used || c->slot[i].last_use < sl->last_use) sl = &c->slot[i];
        OPENSSL_cleanse(sl, sizeof *sl);
        if (key_states(&sl->states, key, key_len) != 0) {
            OPENSSL_cleanse(sl, sizeof *sl);
            return NULL;
        }
        sl->used = 1;
        sl->key_len = key_len;
        if (key_len) memcpy(sl->key, key, key_len);
    }
    sl->last_use = ++c->clock;
    return &sl->states;
}

int sign_compute(enum sign_method m, const char *key, size_t key_len, const char *data,
                 size_t data_len, char out[SIGN_B64_MAX]) {
    if (!key) key = "", key_len = 0;
    const struct sign_key *k = cached_key(key, key_len);
    if (k) return sign_compute_key(k, m, data, data_len, out);
    struct sign_key local;
    int rc = key_states(&local, key, key_len) == 0
                 ? sign_compute_key(&local, m, data, data_len, out)
                 : (out[0] = '\0', -1);
    OPENSSL_cleanse(&local, sizeof local);
    return rc;
}

/* Computes p's signature for the request into out, the '@' values left out when skip_at and the
 * names written as `names` says. seen (when not NULL) gets what string_to_sign saw. */
static int sign_for(const struct params *p, const char *http_method, const char *host,
                    const char *path, const struct sign_key *k, int skip_at, enum name_form names,
                    struct sign_seen *seen, char out[SIGN_B64_MAX]) {
    size_t len;
    const char *method;
    char buf[SIGN_TEXT_STACK];
    char *text = string_to_sign(http_method, host, path, p, skip_at, names, seen, &len, &method,
                                buf, sizeof buf);
    if (!text) return -1;
    enum sign_method m = sign_method_parse(method);
    int rc = sign_compute_key(k, m, text, len, out);
    if (text != buf) free(text);
    return rc;
}

int sign_params_key(struct params *p, const char *http_method, const char *host, const char *path,
                    const struct sign_key *k) {
    char sig[SIGN_B64_MAX];
    if (sign_for(p, http_method, host, path, k, sign_skips_at(http_method), NAMES_SENT, NULL,
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
                       const char *host, const char *path, const struct sign_key *k, int skip_at,
                       enum name_form names, struct sign_seen *seen) {
    char want[SIGN_B64_MAX];
    if (sign_for(p, http_method, host, path, k, skip_at, names, seen, want) != 0) return -1;
    return sig_equal(got, want);
}

int sign_verify_key(const struct params *p, const char *http_method, const char *host,
                    const char *path, const struct sign_key *key) {
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

/* The string-key forms: the key's states from the thread's cache, or made on the stack. */
#define WITH_KEY(key, k, call) \
    do { \
        size_t key_len_ = strlen(key); \
        const struct sign_key *k = cached_key(key, key_len_); \
        if (k) return (call); \
        struct sign_key local_; \
        if (key_states(&local_, key, key_len_) != 0) return -1; \
        k = &local_; \
        int rc_ = (call); \
        OPENSSL_cleanse(&local_, sizeof local_); \
        return rc_; \
    } while (0)

int sign_params(struct params *p, const char *http_method, const char *host, const char *path,
                const char *key) {
    WITH_KEY(key, k, sign_params_key(p, http_method, host, path, k));
}

int sign_verify(const struct params *p, const char *http_method, const char *host, const char *path,
                const char *key) {
    WITH_KEY(key, k, sign_verify_key(p, http_method, host, path, k));
}
