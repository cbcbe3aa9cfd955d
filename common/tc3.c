/* tc3.c: TC3-HMAC-SHA256 (API 3.0 signature v3); the rules are in tc3.h. */
#include "capgate/tc3.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "capgate/strbuf.h"

static const char hexd[] = "0123456789abcdef";

static void to_hex(const unsigned char *md, size_t n, char *out) {
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hexd[md[i] >> 4];
        out[2 * i + 1] = hexd[md[i] & 15];
    }
    out[2 * n] = '\0';
}

int tc3_date(uint64_t timestamp, char out[TC3_DATE_LEN + 1]) {
    time_t t = (time_t)timestamp;
    struct tm tm;
    if ((uint64_t)t != timestamp || !gmtime_r(&t, &tm)) return -1;
    if (tm.tm_year + 1900 > 9999) return -1;
    if (strftime(out, TC3_DATE_LEN + 1, "%Y-%m-%d", &tm) != TC3_DATE_LEN) return -1;
    return 0;
}

int tc3_sha256_hex(const void *data, size_t len, char out[TC3_HEX_LEN + 1]) {
    unsigned char md[32];
    unsigned int mdlen = 0;
    if (!EVP_Digest(data ? data : "", len, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
        return -1;
    to_hex(md, 32, out);
    return 0;
}

static int hmac256(const void *key, size_t klen, const char *msg, unsigned char out[32]) {
    unsigned int n = 0;
    /* HMAC() wants a non-NULL key even when it is empty. */
    if (!HMAC(EVP_sha256(), key ? key : "", (int)klen, (const unsigned char *)msg, strlen(msg), out,
              &n) ||
        n != 32)
        return -1;
    return 0;
}

/* ---- Authorization ---- */

static int take(const char **p, const char *prefix) {
    size_t n = strlen(prefix);
    if (strncmp(*p, prefix, n) != 0) return -1;
    *p += n;
    return 0;
}

/* Copies up to the first of stop (or the end) into out; -1 when empty or too long. */
static int field(const char **p, const char *stop, char *out, size_t cap) {
    size_t n = strcspn(*p, stop);
    if (n == 0 || n >= cap) return -1;
    memcpy(out, *p, n);
    out[n] = '\0';
    *p += n;
    return 0;
}

static void skip_sep(const char **p) {
    if (**p == ',') (*p)++;
    while (**p == ' ') (*p)++;
}

static int valid_date(const char *d) {
    if (strlen(d) != TC3_DATE_LEN || d[4] != '-' || d[7] != '-') return 0;
    for (int i = 0; i < TC3_DATE_LEN; i++)
        if (i != 4 && i != 7 && !isdigit((unsigned char)d[i])) return 0;
    return 1;
}

static int has_header(const char *list, const char *name) {
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        size_t k = strcspn(p, ";");
        if (k == n && strncmp(p, name, n) == 0) return 1;
        p += k;
        if (*p) p++;
    }
    return 0;
}

int tc3_parse_authorization(const char *value, struct tc3_auth *out, char *err, size_t errlen) {
    memset(out, 0, sizeof(*out));
    const char *p = value ? value : "";
    while (*p == ' ') p++;
    if (take(&p, TC3_ALGORITHM " ") != 0) {
        snprintf(err, errlen, "Authorization must start with \"" TC3_ALGORITHM " \"");
        return -1;
    }
    while (*p == ' ') p++;
    if (take(&p, "Credential=") != 0 ||
        field(&p, "/", out->secret_id, sizeof(out->secret_id)) != 0 || take(&p, "/") != 0 ||
        field(&p, "/", out->date, sizeof(out->date)) != 0 || take(&p, "/") != 0 ||
        field(&p, "/,", out->service, sizeof(out->service)) != 0 || take(&p, "/tc3_request") != 0) {
        snprintf(err, errlen,
                 "Authorization: Credential must be "
                 "SecretId/YYYY-MM-DD/service/tc3_request");
        return -1;
    }
    if (!valid_date(out->date)) {
        snprintf(err, errlen, "Authorization: the Credential date %s is not YYYY-MM-DD", out->date);
        return -1;
    }
    skip_sep(&p);
    if (take(&p, "SignedHeaders=") != 0 ||
        field(&p, ", ", out->signed_headers, sizeof(out->signed_headers)) != 0) {
        snprintf(err, errlen, "Authorization: SignedHeaders is missing or too long");
        return -1;
    }
    for (const char *s = out->signed_headers; *s; s++)
        if (!(islower((unsigned char)*s) || isdigit((unsigned char)*s) || *s == '-' || *s == ';') ||
            (*s == ';' && (s[1] == ';' || s[1] == '\0'))) {
            snprintf(err, errlen,
                     "Authorization: SignedHeaders must be lower-case header "
                     "names separated by ';'");
            return -1;
        }
    if (!has_header(out->signed_headers, "content-type") ||
        !has_header(out->signed_headers, "host")) {
        snprintf(err, errlen,
                 "Authorization: SignedHeaders must include content-type and "
                 "host");
        return -1;
    }
    skip_sep(&p);
    if (take(&p, "Signature=") != 0 || strlen(p) != TC3_HEX_LEN) {
        snprintf(err, errlen, "Authorization: Signature must be 64 hex digits at the end");
        return -1;
    }
    for (int i = 0; i < TC3_HEX_LEN; i++) {
        char c = p[i];
        if (!isxdigit((unsigned char)c)) {
            snprintf(err, errlen, "Authorization: Signature must be 64 hex digits");
            return -1;
        }
        out->signature[i] = (char)tolower((unsigned char)c);
    }
    return 0;
}

/* ---- canonical request ---- */

static int append_lower_trim(struct strbuf *b, const char *v) {
    while (*v == ' ' || *v == '\t') v++;
    size_t n = strlen(v);
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t')) n--;
    for (size_t i = 0; i < n; i++)
        if (strbuf_appendc(b, (char)tolower((unsigned char)v[i])) != 0) return -1;
    return 0;
}

char *tc3_canonical_request(const struct tc3_request *r, const char *signed_headers,
                            const char **missing) {
    char hash[TC3_HEX_LEN + 1];
    struct strbuf b;
    strbuf_init(&b);
    if (tc3_sha256_hex(r->payload, r->payload_len, hash) != 0) goto fail;
    if (strbuf_appendf(&b, "%s\n%s\n%s\n", r->method, r->uri && *r->uri ? r->uri : "/",
                       r->query ? r->query : "") != 0)
        goto fail;
    for (const char *p = signed_headers; *p;) {
        char name[TC3_MAX_SIGNED_HEADERS + 1];
        size_t k = strcspn(p, ";");
        if (k == 0 || k >= sizeof(name)) goto fail;
        memcpy(name, p, k);
        name[k] = '\0';
        const char *v = r->header(r->header_arg, name);
        if (!v) {
            if (missing) *missing = p;
            goto fail;
        }
        if (strbuf_appends(&b, name) != 0 || strbuf_appendc(&b, ':') != 0 ||
            append_lower_trim(&b, v) != 0 || strbuf_appendc(&b, '\n') != 0)
            goto fail;
        p += k;
        if (*p) p++;
    }
    if (strbuf_appendf(&b, "\n%s\n%s", signed_headers, hash) != 0) goto fail;
    return strbuf_detach(&b);
fail:
    strbuf_cleanup(&b);
    return NULL;
}

char *tc3_string_to_sign(uint64_t timestamp, const char *date, const char *service,
                         const char *canonical_request) {
    char hash[TC3_HEX_LEN + 1];
    if (tc3_sha256_hex(canonical_request, strlen(canonical_request), hash) != 0) return NULL;
    struct strbuf b;
    strbuf_init(&b);
    if (strbuf_appendf(&b, TC3_ALGORITHM "\n%llu\n%s/%s/tc3_request\n%s",
                       (unsigned long long)timestamp, date, service, hash) != 0) {
        strbuf_cleanup(&b);
        return NULL;
    }
    return strbuf_detach(&b);
}

int tc3_signature(const char *secret_key, const char *date, const char *service,
                  const char *string_to_sign, char out[TC3_HEX_LEN + 1]) {
    struct strbuf k;
    strbuf_init(&k);
    unsigned char kdate[32], kservice[32], ksigning[32], sig[32];
    int rc = -1;
    if (strbuf_appends(&k, "TC3") != 0 || strbuf_appends(&k, secret_key) != 0) goto out;
    if (hmac256(k.s, k.len, date, kdate) != 0 || hmac256(kdate, 32, service, kservice) != 0 ||
        hmac256(kservice, 32, "tc3_request", ksigning) != 0 ||
        hmac256(ksigning, 32, string_to_sign, sig) != 0)
        goto out;
    to_hex(sig, 32, out);
    rc = 0;
out:
    OPENSSL_cleanse(kdate, sizeof(kdate));
    OPENSSL_cleanse(kservice, sizeof(kservice));
    OPENSSL_cleanse(ksigning, sizeof(ksigning));
    if (k.s) OPENSSL_cleanse(k.s, k.len);
    strbuf_cleanup(&k);
    return rc;
}

/* Signature over r for the given scope; 0, -1 OOM, -2 missing header. */
static int sign_request(const struct tc3_request *r, const char *signed_headers,
                        const char *secret_key, const char *date, const char *service,
                        uint64_t timestamp, char out[TC3_HEX_LEN + 1], const char **missing) {
    const char *miss = NULL;
    char *creq = tc3_canonical_request(r, signed_headers, &miss);
    if (!creq) {
        if (missing) *missing = miss;
        return miss ? -2 : -1;
    }
    char *sts = tc3_string_to_sign(timestamp, date, service, creq);
    free(creq);
    if (!sts) return -1;
    int rc = tc3_signature(secret_key, date, service, sts, out);
    free(sts);
    return rc;
}

int tc3_authorization(const struct tc3_request *r, const char *secret_id, const char *secret_key,
                      const char *service, uint64_t timestamp, char *out, size_t outlen) {
    static const char sh[] = "content-type;host";
    char date[TC3_DATE_LEN + 1], sig[TC3_HEX_LEN + 1];
    if (tc3_date(timestamp, date) != 0 ||
        sign_request(r, sh, secret_key, date, service, timestamp, sig, NULL) != 0)
        return -1;
    int n = snprintf(out, outlen,
                     TC3_ALGORITHM " Credential=%s/%s/%s/tc3_request, "
                                   "SignedHeaders=%s, Signature=%s",
                     secret_id, date, service, sh, sig);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

int tc3_verify(const struct tc3_request *r, const struct tc3_auth *a, const char *secret_key,
               uint64_t timestamp, char *err, size_t errlen) {
    char date[TC3_DATE_LEN + 1], sig[TC3_HEX_LEN + 1];
    if (tc3_date(timestamp, date) != 0) {
        snprintf(err, errlen, "the timestamp %llu has no date", (unsigned long long)timestamp);
        return -1;
    }
    if (strcmp(date, a->date) != 0) {
        snprintf(err, errlen,
                 "the Credential date %s is not the UTC date of the timestamp "
                 "%llu (%s)",
                 a->date, (unsigned long long)timestamp, date);
        return -1;
    }
    const char *missing = NULL;
    int rc = sign_request(r, a->signed_headers, secret_key, a->date, a->service, timestamp, sig,
                          &missing);
    if (rc == -2) {
        snprintf(err, errlen, "signed header %.*s is not in the request",
                 (int)strcspn(missing, ";"), missing);
        return -2;
    }
    if (rc != 0) {
        snprintf(err, errlen, "out of memory");
        return -2;
    }
    if (CRYPTO_memcmp(sig, a->signature, TC3_HEX_LEN) != 0) {
        snprintf(err, errlen, "the Signature does not match the request");
        return -1;
    }
    return 0;
}

int tc3_timestamp_fresh(uint64_t timestamp, uint64_t now, uint64_t window) {
    uint64_t skew = timestamp > now ? timestamp - now : now - timestamp;
    return skew <= window;
}

void tc3_host_without_port(const char *host, char *out, size_t len) {
    snprintf(out, len, "%s", host ? host : "");
    char *close = strchr(out, ']');
    char *colon = strrchr(out, ':');
    if (out[0] == '[' && close) {
        if (close[1] == ':') close[1] = '\0';
    } else if (colon && colon == strchr(out, ':')) {
        *colon = '\0';
    }
}
