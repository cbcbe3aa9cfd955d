/* fuzz_sign.c: string-to-sign, signing and verification (common/sign.c). Input: a flags byte,
 * the key up to the first '\n', then an urlencoded parameter list. Invariants: the string to
 * sign equals one built here from the rule in sign.h (sorted by name as sent, byte order,
 * Signature left out, '_' past position 0 written '.', with POST a value starting with '@' left
 * out), whatever the order of the list; the
 * signature equals OpenSSL's one-shot HMAC of that string, base64; a signed list verifies with
 * its key and not with another key or a changed parameter. */
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "capgate/params.h"
#include "capgate/sign.h"
#include "fuzz.h"

static int name_cmp(const struct param *a, const struct param *b) {
    size_t n = a->name_len < b->name_len ? a->name_len : b->name_len;
    int c = memcmp(a->name, b->name, n);
    if (c != 0) return c;
    return (a->name_len > b->name_len) - (a->name_len < b->name_len);
}

/* The rule of sign.h, written plainly: selection sort of pointers, then one pass. */
static char *expected_string(const char *method, const char *host, const char *path,
                             const struct params *p, size_t *outlen) {
    const struct param *idx[PARAMS_MAX_COUNT + 1];
    size_t n = 0, cap = strlen(method) + strlen(host) + strlen(path) + 2;
    int post = strcmp(method, "POST") == 0;
    for (size_t i = 0; i < p->count; i++) {
        const struct param *it = &p->items[i];
        if (it->name_len == 9 && memcmp(it->name, "Signature", 9) == 0) continue;
        if (post && it->value_len > 0 && it->value[0] == '@') continue; /* the '@' rule */
        idx[n++] = it;
        cap += it->name_len + it->value_len + 2;
    }
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++)
            if (name_cmp(idx[j], idx[i]) < 0) {
                const struct param *t = idx[i];
                idx[i] = idx[j];
                idx[j] = t;
            }
    char *out = malloc(cap), *w = out;
    FUZZ_CHECK(out);
    w += snprintf(w, cap, "%s%s%s?", method, host, path);
    for (size_t i = 0; i < n; i++) {
        if (i) *w++ = '&';
        for (size_t k = 0; k < idx[i]->name_len; k++)
            *w++ = (k > 0 && idx[i]->name[k] == '_') ? '.' : idx[i]->name[k];
        *w++ = '=';
        memcpy(w, idx[i]->value, idx[i]->value_len);
        w += idx[i]->value_len;
    }
    *w = '\0';
    *outlen = (size_t)(w - out);
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *const methods[] = {"GET", "POST"};
    static const char *const hosts[] = {"csec.api.qcloud.com", "127.0.0.1:8080"};
    static const char *const paths[] = {"/v2/index.php", "/"};
    struct params p, rev;
    char err[256], sig[SIGN_B64_MAX], want[SIGN_B64_MAX];
    if (size < 2) return 0;
    unsigned flags = data[0];
    const char *rest = (const char *)data + 1;
    size_t rest_len = size - 1;
    const char *nl = memchr(rest, '\n', rest_len);
    if (!nl || nl == rest) return 0;
    char *key = strndup(rest, (size_t)(nl - rest));
    FUZZ_CHECK(key);
    size_t key_len = strlen(key);
    const char *method = methods[flags & 1], *host = hosts[(flags >> 1) & 1],
               *path = paths[(flags >> 2) & 1];
    params_init(&p);
    params_init(&rev);
    if (key_len == 0 || params_parse_urlencoded(&p, nl + 1, rest_len - (size_t)(nl + 1 - rest), err,
                                                sizeof err) != 0)
        goto out;

    size_t elen;
    char *exp = expected_string(method, host, path, &p, &elen);
    char *got = sign_string_to_sign(method, host, path, &p);
    FUZZ_CHECK(got);
    FUZZ_CHECK(strlen(got) == elen && memcmp(got, exp, elen) == 0);

    /* the same list in reverse order gives the same string */
    for (size_t i = p.count; i-- > 0;)
        FUZZ_CHECK(params_add(&rev, p.items[i].name, p.items[i].name_len, p.items[i].value,
                              p.items[i].value_len) == 0);
    char *got_rev = sign_string_to_sign(method, host, path, &rev);
    FUZZ_CHECK(got_rev && strcmp(got_rev, got) == 0);

    /* sign_compute against OpenSSL's one-shot HMAC */
    enum sign_method m = (flags & 8) ? SIGN_HMAC_SHA256 : SIGN_HMAC_SHA1;
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned mac_len = 0;
    FUZZ_CHECK(HMAC(m == SIGN_HMAC_SHA256 ? EVP_sha256() : EVP_sha1(), key, (int)key_len,
                    (const unsigned char *)exp, elen, mac, &mac_len));
    FUZZ_CHECK(EVP_EncodeBlock((unsigned char *)want, mac, (int)mac_len) > 0);
    FUZZ_CHECK(sign_compute(m, key, key_len, exp, elen, sig) == 0);
    FUZZ_CHECK(strcmp(sig, want) == 0);

    /* sign then verify; another key or a changed list fails */
    if (params_set(&p, "SignatureMethod", m == SIGN_HMAC_SHA256 ? "HmacSHA256" : "HmacSHA1") == 0) {
        FUZZ_CHECK(sign_params(&p, method, host, path, key) == 0);
        FUZZ_CHECK(sign_verify(&p, method, host, path, key) == 0);
        key[0] ^= 1;
        FUZZ_CHECK(sign_verify(&p, method, host, path, key) == -1);
        key[0] ^= 1;
        /* a value the list does not hold already, so the list really changes */
        const char *extra = params_get(&p, "zzFuzzExtra");
        if (params_set(&p, "zzFuzzExtra", extra && strcmp(extra, "1") == 0 ? "2" : "1") == 0)
            FUZZ_CHECK(sign_verify(&p, method, host, path, key) == -1);
    }
    free(got_rev);
    free(got);
    free(exp);
out:
    params_cleanup(&rev);
    params_cleanup(&p);
    free(key);
    return 0;
}
