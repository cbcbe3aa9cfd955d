/* audit.c: the audit trail. Records are built on the worker threads and cross to one sink
 * thread over per-worker single-producer/single-consumer rings (an overflow list behind each, so
 * nothing is dropped and a worker never waits). The sink writes them to Redis with pipelined
 * XADDs, spools them to append-only JSONL segments while Redis is unreachable and replays the
 * spool, oldest first and idempotently, when it comes back; without Redis it keeps a bounded
 * memory stream. Queries run on short-lived threads and answer on the caller's event base. */
#include "audit.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <sys/socket.h>

#include "capgate/clock.h"
#include "capgate/log.h"
#include "capgate/num.h"
#include "capgate/params.h"
#include "capgate/strbuf.h"
#include "capgate/thread.h"
#include "config.h"
#include "record.h"
#include "redis_fence.h"
#include "resp.h"

/* ======================================================================================== */
/* Records                                                                                  */
/* ======================================================================================== */

enum field_kind {
    FK_TS,     /* uint64_t Unix us, written as ISO-8601 UTC with milliseconds */
    FK_STR,    /* char[], always present */
    FK_OPTSTR, /* char[], "" = absent (null in JSON, left out of the stream) */
    FK_U32OPT, /* uint32_t with an int has_ flag */
    FK_INT,    /* int */
    FK_INTOPT, /* int with an int has_ flag (absent: null in JSON, left out of the stream) */
    FK_U64     /* uint64_t */
};

struct field_desc {
    const char *name;
    enum field_kind kind;
    size_t off;
    size_t size;
    size_t has_off;
};

#define REC_SIZE(m) sizeof(((struct audit_record *)0)->m)
#define F_TS(n, m) \
    { n, FK_TS, offsetof(struct audit_record, m), 0, 0 }
#define F_STR(n, m) \
    { n, FK_STR, offsetof(struct audit_record, m), REC_SIZE(m), 0 }
#define F_OPT(n, m) \
    { n, FK_OPTSTR, offsetof(struct audit_record, m), REC_SIZE(m), 0 }
#define F_U32(n, m, h) \
    { n, FK_U32OPT, offsetof(struct audit_record, m), 0, offsetof(struct audit_record, h) }
#define F_INT(n, m) \
    { n, FK_INT, offsetof(struct audit_record, m), 0, 0 }
#define F_INTOPT(n, m, h) \
    { n, FK_INTOPT, offsetof(struct audit_record, m), 0, offsetof(struct audit_record, h) }
#define F_U64(n, m) \
    { n, FK_U64, offsetof(struct audit_record, m), 0, 0 }

/* docs/design.md "Audit" order. */
static const struct field_desc record_fields[] = {
    F_TS("ts", ts_us),
    F_STR("request_id", request_id),
    F_STR("instance", instance),
    F_STR("app", app),
    F_OPT("secret_id", secret_id),
    F_STR("client_ip", client_ip),
    F_STR("action", action),
    F_U32("businessId", business_id, has_business_id),
    F_U32("sceneId", scene_id, has_scene_id),
    F_U32("captchaType", captcha_type, has_captcha_type),
    F_U32("clientType", client_type, has_client_type),
    F_U32("accountType", account_type, has_account_type),
    F_STR("decision", decision),
    F_OPT("rule", rule),
    F_INTOPT("code", code, has_code),
    F_STR("codeDesc", code_desc),
    F_INT("upstream_status", upstream_status),
    F_U64("latency_us", latency_us),
    F_U64("upstream_latency_us", upstream_latency_us),
    F_OPT("uid", uid),
    F_OPT("userIp", user_ip),
    F_OPT("imei", imei),
    F_OPT("macAddress", mac_address),
    F_OPT("associateAccount", associate_account),
    F_OPT("url_sha256", url_sha256),
};
#define N_RECORD_FIELDS (sizeof(record_fields) / sizeof(record_fields[0]))
_Static_assert(N_RECORD_FIELDS <= AUDIT_FIELDS_MAX, "AUDIT_FIELDS_MAX too small");

/* Copies at most size-1 bytes of src, cut back to a UTF-8 boundary so the copy stays valid. */
static void copy_utf8(char *dst, size_t size, const char *src, size_t len) {
    if (len > size - 1) len = size - 1;
    while (len > 0 && !params_utf8_valid(src, len)) len--;
    memcpy(dst, src, len);
    dst[len] = '\0';
}

static void copy_str(char *dst, size_t size, const char *src) {
    copy_utf8(dst, size, src ? src : "", src ? strlen(src) : 0);
}

static void hex_encode(const unsigned char *in, size_t n, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

/* A per-user field: absent/empty stays "", raw mode copies, hash mode keeps 32 hex digits of
 * HMAC-SHA256(pii_key, value). */
static int pii_field(char dst[AUDIT_PII_MAX], const char *value, const struct config_audit *cfg) {
    dst[0] = '\0';
    if (!value || !*value) return 0;
    if (cfg->pii_raw) {
        copy_str(dst, AUDIT_PII_MAX, value);
        return 0;
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned md_len = 0;
    const char *key = cfg->pii_key ? cfg->pii_key : "";
    if (!HMAC(EVP_sha256(), key, (int)(cfg->pii_key ? cfg->pii_key_len : 0),
              (const unsigned char *)value, strlen(value), md, &md_len) ||
        md_len < 16)
        return -1;
    hex_encode(md, 16, dst);
    return 0;
}

/* The url digest: SHA-256 fetched once per process and one digest context per thread, rewound
 * for each record, instead of SHA256()'s fetch, context set-up and free on every call (about
 * two thirds of a record's cost). A thread's context is freed when it exits. */
static pthread_once_t url_md_once = PTHREAD_ONCE_INIT;
static pthread_key_t url_md_exit_key;
static EVP_MD *url_md; /* fetched once; lives as long as the process */
static int url_md_ready;
static _Thread_local EVP_MD_CTX *url_md_ctx;

static void url_md_exit(void *arg) {
    EVP_MD_CTX_free(arg);
    url_md_ctx = NULL;
}

static void url_md_init_once(void) {
    url_md = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (url_md && pthread_key_create(&url_md_exit_key, url_md_exit) == 0) url_md_ready = 1;
}

/* md = SHA-256(data); 0/-1. */
static int url_digest(const char *data, size_t len, unsigned char md[SHA256_DIGEST_LENGTH]) {
    if (pthread_once(&url_md_once, url_md_init_once) == 0 && url_md_ready) {
        if (!url_md_ctx) {
            EVP_MD_CTX *ctx = EVP_MD_CTX_new();
            if (ctx && pthread_setspecific(url_md_exit_key, ctx) == 0)
                url_md_ctx = ctx;
            else
                EVP_MD_CTX_free(ctx);
        }
        if (url_md_ctx && EVP_DigestInit_ex2(url_md_ctx, url_md, NULL) &&
            EVP_DigestUpdate(url_md_ctx, data, len) && EVP_DigestFinal_ex(url_md_ctx, md, NULL))
            return 0;
    }
    return SHA256((const unsigned char *)data, len, md) ? 0 : -1;
}

int audit_record_init(struct audit_record *r, const struct pipeline_record *pr,
                      const struct params *request_params, const char *reply_url,
                      const struct config_audit *cfg, const char *instance) {
    memset(r, 0, sizeof(*r));
    r->ts_us = pr->ts_us;
    copy_str(r->request_id, sizeof(r->request_id), pr->request_id);
    copy_str(r->instance, sizeof(r->instance), instance);
    copy_str(r->app, sizeof(r->app), pr->app);
    copy_str(r->secret_id, sizeof(r->secret_id), pr->secret_id);
    copy_str(r->client_ip, sizeof(r->client_ip), pr->client_ip);
    copy_str(r->action, sizeof(r->action), pr->action);
    r->has_business_id = pr->has_business_id != 0;
    r->business_id = r->has_business_id ? pr->business_id : 0;
    r->has_scene_id = pr->has_scene_id != 0;
    r->scene_id = r->has_scene_id ? pr->scene_id : 0;
    r->has_captcha_type = pr->has_captcha_type != 0;
    r->captcha_type = r->has_captcha_type ? pr->captcha_type : 0;
    r->has_client_type = pr->has_client_type != 0;
    r->client_type = r->has_client_type ? pr->client_type : 0;
    r->has_account_type = pr->has_account_type != 0;
    r->account_type = r->has_account_type ? pr->account_type : 0;
    copy_str(r->decision, sizeof(r->decision), pipeline_decision_name(pr->decision));
    copy_str(r->rule, sizeof(r->rule), pr->rule);
    /* A reply with no API code (CaptchaQuery script=1's JavaScript) has none in the record. */
    r->has_code = !pr->no_code;
    r->code = r->has_code ? pr->code : 0;
    copy_str(r->code_desc, sizeof(r->code_desc), pr->code_desc);
    r->upstream_status = pr->upstream_status;
    r->http_status = pr->http_status;
    r->latency_us = pr->latency_us;
    r->upstream_latency_us = pr->upstream_latency_us;
    if (request_params) {
        if (pii_field(r->uid, params_get(request_params, "uid"), cfg) != 0 ||
            pii_field(r->user_ip, params_get(request_params, "userIp"), cfg) != 0 ||
            pii_field(r->imei, params_get(request_params, "imei"), cfg) != 0 ||
            pii_field(r->mac_address, params_get(request_params, "macAddress"), cfg) != 0 ||
            pii_field(r->associate_account, params_get(request_params, "associateAccount"), cfg) !=
                0)
            return -1;
    }
    if (reply_url && *reply_url) {
        unsigned char md[SHA256_DIGEST_LENGTH];
        if (url_digest(reply_url, strlen(reply_url), md) != 0) return -1;
        hex_encode(md, 8, r->url_sha256);
    }
    return 0;
}

/* Writes n decimal digits of v, zero-padded, at out. */
static void put_digits(char *out, unsigned v, unsigned n) {
    while (n-- > 0) {
        out[n] = (char)('0' + v % 10);
        v /= 10;
    }
}

/* ISO-8601 UTC with milliseconds, 24 bytes and a NUL. The civil date comes from the day number
 * by arithmetic (Hinnant's civil_from_days) rather than gmtime_r, which takes glibc's time zone
 * lock for every record the sink writes. */
static void format_ts(uint64_t ts_us, char out[32]) {
    uint64_t s = ts_us / 1000000;
    uint64_t days = s / 86400, sod = s % 86400;
    uint64_t z = days + 719468;
    uint64_t era = z / 146097, doe = z % 146097;
    uint64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    uint64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    uint64_t mp = (5 * doy + 2) / 153;
    unsigned day = (unsigned)(doy - (153 * mp + 2) / 5 + 1);
    unsigned month = (unsigned)(mp < 10 ? mp + 3 : mp - 9);
    uint64_t year = yoe + era * 400 + (month <= 2);
    put_digits(out, (unsigned)(year % 10000), 4);
    out[4] = '-';
    put_digits(out + 5, month, 2);
    out[7] = '-';
    put_digits(out + 8, day, 2);
    out[10] = 'T';
    put_digits(out + 11, (unsigned)(sod / 3600), 2);
    out[13] = ':';
    put_digits(out + 14, (unsigned)(sod / 60 % 60), 2);
    out[16] = ':';
    put_digits(out + 17, (unsigned)(sod % 60), 2);
    out[19] = '.';
    put_digits(out + 20, (unsigned)(ts_us / 1000 % 1000), 3);
    out[23] = 'Z';
    out[24] = '\0';
}

/* "YYYY-MM-DDTHH:MM:SS.mmmZ" → Unix us (ms precision). 0/-1. */
static int parse_ts(const char *s, size_t len, uint64_t *out) {
    static const struct {
        size_t at, n;
    } parts[] = {{0, 4}, {5, 2}, {8, 2}, {11, 2}, {14, 2}, {17, 2}, {20, 3}};
    uint32_t v[7];
    if (len != 24 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' ||
        s[19] != '.' || s[23] != 'Z')
        return -1;
    for (size_t i = 0; i < 7; i++)
        if (num_parse_u32(s + parts[i].at, parts[i].n, &v[i]) != 0) return -1;
    if (v[1] < 1 || v[1] > 12 || v[2] < 1 || v[2] > 31 || v[3] > 23 || v[4] > 59 || v[5] > 60)
        return -1;
    struct tm tm = {.tm_year = (int)v[0] - 1900,
                    .tm_mon = (int)v[1] - 1,
                    .tm_mday = (int)v[2],
                    .tm_hour = (int)v[3],
                    .tm_min = (int)v[4],
                    .tm_sec = (int)v[5]};
    time_t t = timegm(&tm);
    if (t < 0) return -1;
    *out = (uint64_t)t * 1000000 + (uint64_t)v[6] * 1000;
    return 0;
}

static json_t *record_to_object(const struct audit_record *r) {
    json_t *o = json_object();
    if (!o) return NULL;
    for (size_t i = 0; i < N_RECORD_FIELDS; i++) {
        const struct field_desc *f = &record_fields[i];
        const char *p = (const char *)r + f->off;
        json_t *v = NULL;
        char ts[32];
        switch (f->kind) {
        case FK_TS:
            format_ts(*(const uint64_t *)(const void *)p, ts);
            v = json_string(ts);
            break;
        case FK_STR: v = json_string(p); break;
        case FK_OPTSTR: v = *p ? json_string(p) : json_null(); break;
        case FK_U32OPT:
            v = *(const int *)(const void *)((const char *)r + f->has_off)
                    ? json_integer(*(const uint32_t *)(const void *)p)
                    : json_null();
            break;
        case FK_INT: v = json_integer(*(const int *)(const void *)p); break;
        case FK_INTOPT:
            v = *(const int *)(const void *)((const char *)r + f->has_off)
                    ? json_integer(*(const int *)(const void *)p)
                    : json_null();
            break;
        case FK_U64: v = json_integer((json_int_t) * (const uint64_t *)(const void *)p); break;
        }
        /* json_string refuses invalid UTF-8; every string was copied with copy_utf8. */
        if (!v || json_object_set_new(o, f->name, v) != 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

/* ---- the JSON writer ---- */

/* The longest JSON text of a record: every string byte escaped to at most 6 bytes (strings are
 * at most sizeof the record together), plus names, punctuation and numbers. */
#define RECORD_JSON_MAX (sizeof(struct audit_record) * 6 + 2048)

static char *put_str(char *o, const char *s, size_t len) {
    memcpy(o, s, len);
    return o + len;
}

/* A JSON string as jansson dumps it without JSON_ENSURE_ASCII or JSON_ESCAPE_SLASH: quote,
 * backslash and the control characters escaped (the short forms where JSON has them, else
 * \u00XX in upper-case hex), everything else, UTF-8 included, as it is. NULL when s is not
 * valid UTF-8 (checked in the same pass, one sequence at a time). */
static char *put_json_string(char *o, const char *s, size_t len) {
    static const char hex[] = "0123456789ABCDEF";
    *o++ = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            *o++ = (char)c;
            continue;
        }
        if (c >= 0x80) {
            size_t n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
            if (n > len - i || !params_utf8_valid(s + i, n)) return NULL;
            o = put_str(o, s + i, n);
            i += n - 1;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\b': *o++ = 'b'; break;
        case '\f': *o++ = 'f'; break;
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        default:
            o = put_str(o, "u00", 3);
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
    }
    *o++ = '"';
    return o;
}

/* The compact JSON object of r, byte for byte what json_dumps(record_to_object(r),
 * JSON_COMPACT | JSON_PRESERVE_ORDER) gives, written straight from the fixed-size record (the
 * sink writes one per record to audit.file or the spool). With uncertain, ,"uncertain":true
 * ends it, as a spool line has it. -1 when a string is not valid UTF-8 (jansson refuses it too)
 * or on OOM. */
static int record_json(const struct audit_record *r, int uncertain, struct strbuf *out) {
    char buf[RECORD_JSON_MAX], *o = buf;
    *o++ = '{';
    for (size_t i = 0; i < N_RECORD_FIELDS; i++) {
        const struct field_desc *f = &record_fields[i];
        const char *p = (const char *)r + f->off;
        size_t len;
        if (i > 0) *o++ = ',';
        *o++ = '"';
        o = put_str(o, f->name, strlen(f->name));
        *o++ = '"';
        *o++ = ':';
        switch (f->kind) {
        case FK_TS:
            format_ts(*(const uint64_t *)(const void *)p, o + 1);
            *o = '"';
            o[25] = '"';
            o += 26;
            break;
        case FK_STR:
        case FK_OPTSTR:
            len = strnlen(p, f->size);
            if (len == f->size) return -1;
            if (f->kind == FK_OPTSTR && len == 0)
                o = put_str(o, "null", 4);
            else if ((o = put_json_string(o, p, len)) == NULL)
                return -1;
            break;
        case FK_U32OPT:
            if (*(const int *)(const void *)((const char *)r + f->has_off))
                o = num_put_u64(o, *(const uint32_t *)(const void *)p);
            else
                o = put_str(o, "null", 4);
            break;
        case FK_INT: o = num_put_i64(o, *(const int *)(const void *)p); break;
        case FK_INTOPT:
            if (*(const int *)(const void *)((const char *)r + f->has_off))
                o = num_put_i64(o, *(const int *)(const void *)p);
            else
                o = put_str(o, "null", 4);
            break;
        case FK_U64: /* as jansson's json_int_t: past INT64_MAX it reads negative */
            o = num_put_i64(o, (int64_t) * (const uint64_t *)(const void *)p);
            break;
        }
    }
    if (uncertain) o = put_str(o, ",\"uncertain\":true", 17);
    *o++ = '}';
    return strbuf_append(out, buf, (size_t)(o - buf));
}

int audit_record_json(const struct audit_record *r, struct strbuf *out) {
    return record_json(r, 0, out);
}

/* Sets one field of r from its text form (the stream's, or a JSON value printed). 0/-1. */
static int set_field(struct audit_record *r, const struct field_desc *f, const char *s,
                     size_t len) {
    char *p = (char *)r + f->off;
    uint64_t u;
    switch (f->kind) {
    case FK_TS: return parse_ts(s, len, (uint64_t *)(void *)p);
    case FK_STR:
    case FK_OPTSTR: copy_utf8(p, f->size, s, len); return 0;
    case FK_U32OPT:
        if (num_parse_u32(s, len, (uint32_t *)(void *)p) != 0) return -1;
        *(int *)(void *)((char *)r + f->has_off) = 1;
        return 0;
    case FK_INT:
    case FK_INTOPT: {
        int neg = len > 0 && s[0] == '-';
        if (num_parse_range(s + neg, len - (size_t)neg, 0, 2147483647u, &u) != 0) return -1;
        *(int *)(void *)p = neg ? -(int)u : (int)u;
        if (f->kind == FK_INTOPT) *(int *)(void *)((char *)r + f->has_off) = 1;
        return 0;
    }
    case FK_U64: return num_parse_u64(s, len, (uint64_t *)(void *)p);
    }
    return -1;
}

static const struct field_desc *find_field(const char *name) {
    for (size_t i = 0; i < N_RECORD_FIELDS; i++)
        if (strcmp(record_fields[i].name, name) == 0) return &record_fields[i];
    return NULL;
}

int audit_record_from_fields(struct audit_record *r, size_t n, const char *const *names,
                             const char *const *values, const size_t *value_lens) {
    memset(r, 0, sizeof(*r));
    for (size_t i = 0; i < n; i++) {
        const struct field_desc *f = find_field(names[i]);
        if (f && set_field(r, f, values[i], value_lens[i]) != 0) return -1;
    }
    return 0;
}

static int record_from_object(json_t *o, struct audit_record *r) {
    const char *key;
    json_t *v;
    memset(r, 0, sizeof(*r));
    json_object_foreach(o, key, v) {
        const struct field_desc *f = find_field(key);
        char num[32];
        if (!f || json_is_null(v)) continue;
        if (json_is_string(v)) {
            if (f->kind != FK_TS && f->kind != FK_STR && f->kind != FK_OPTSTR) return -1;
            if (set_field(r, f, json_string_value(v), json_string_length(v)) != 0) return -1;
        } else if (json_is_integer(v)) {
            if (f->kind != FK_U32OPT && f->kind != FK_INT && f->kind != FK_INTOPT &&
                f->kind != FK_U64)
                return -1;
            int len = snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(v));
            if (set_field(r, f, num, (size_t)len) != 0) return -1;
        } else {
            return -1;
        }
    }
    return 0;
}

int audit_record_from_json(const char *text, size_t len, struct audit_record *r) {
    json_t *o = json_loadb(text, len, 0, NULL);
    int rc = -1;
    if (o && json_is_object(o)) rc = record_from_object(o, r);
    json_decref(o);
    return rc;
}

/* NUL-terminates a number written at num, ending at end; its length. */
static int put_num_z(char *num, char *end) {
    *end = '\0';
    return (int)(end - num);
}

void audit_record_fields(const struct audit_record *r, struct audit_fields *f) {
    f->count = 0;
    for (size_t i = 0; i < N_RECORD_FIELDS; i++) {
        const struct field_desc *d = &record_fields[i];
        const char *p = (const char *)r + d->off;
        char *num = f->num[f->count];
        const char *value = num;
        int len = 0;
        switch (d->kind) {
        case FK_TS:
            format_ts(*(const uint64_t *)(const void *)p, num);
            len = (int)strlen(num);
            break;
        case FK_STR:
            value = p;
            len = (int)strlen(p);
            break;
        case FK_OPTSTR:
            if (!*p) continue;
            value = p;
            len = (int)strlen(p);
            break;
        case FK_U32OPT:
            if (!*(const int *)(const void *)((const char *)r + d->has_off)) continue;
            len = put_num_z(num, num_put_u64(num, *(const uint32_t *)(const void *)p));
            break;
        case FK_INT: len = put_num_z(num, num_put_i64(num, *(const int *)(const void *)p)); break;
        case FK_INTOPT:
            if (!*(const int *)(const void *)((const char *)r + d->has_off)) continue;
            len = put_num_z(num, num_put_i64(num, *(const int *)(const void *)p));
            break;
        case FK_U64:
            len = put_num_z(num, num_put_u64(num, *(const uint64_t *)(const void *)p));
            break;
        }
        f->name[f->count] = d->name;
        f->value[f->count] = value;
        f->value_len[f->count] = (size_t)len;
        f->count++;
    }
}

/* ======================================================================================== */
/* Per-worker queues: an SPSC ring of node pointers, and a lock-free overflow stack behind it  */
/* ======================================================================================== */

struct audit_node {
    struct audit_node *next;
    int uncertain;  /* spool only: its live XADD was sent but never answered */
    char batch[48]; /* uncertain: "<run>:<seq>" of its live batch, "" when unknown */
    struct audit_record rec;
};

/* Producer: the worker (tail, overflow push). Consumer: the sink (head, overflow take).
 * While the overflow stack is non-empty the producer pushes there too, and the consumer takes it
 * only once the ring is empty, so a worker's records keep their order. */
struct audit_queue {
    _Alignas(64) atomic_size_t tail;
    atomic_uint_fast64_t submitted;
    atomic_uint_fast64_t overflowed;
    _Alignas(64) atomic_size_t head;
    atomic_uint_fast64_t taken;
    atomic_uint_fast64_t overflow_taken; /* of taken, those that came from the overflow */
    _Alignas(64) _Atomic(struct audit_node *) overflow; /* newest first */
    _Alignas(64) struct audit_node *pending; /* consumer only: taken overflow, oldest first */
    struct audit_node *slots[AUDIT_RING_SIZE];
};
_Static_assert((AUDIT_RING_SIZE & (AUDIT_RING_SIZE - 1)) == 0, "ring size: a power of two");

static void queue_push(struct audit_queue *q, struct audit_node *n) {
    if (atomic_load_explicit(&q->overflow, memory_order_acquire) == NULL) {
        size_t t = atomic_load_explicit(&q->tail, memory_order_relaxed);
        size_t h = atomic_load_explicit(&q->head, memory_order_acquire);
        if (t - h < AUDIT_RING_SIZE) {
            q->slots[t & (AUDIT_RING_SIZE - 1)] = n;
            atomic_store_explicit(&q->tail, t + 1, memory_order_release);
            atomic_fetch_add_explicit(&q->submitted, 1, memory_order_relaxed);
            return;
        }
    }
    atomic_fetch_add_explicit(&q->overflowed, 1, memory_order_relaxed);
    struct audit_node *old = atomic_load_explicit(&q->overflow, memory_order_relaxed);
    do {
        n->next = old;
    } while (!atomic_compare_exchange_weak_explicit(&q->overflow, &old, n, memory_order_release,
                                                    memory_order_relaxed));
    atomic_fetch_add_explicit(&q->submitted, 1, memory_order_relaxed);
}

/* The next record of this worker, oldest first, or NULL. Consumer only. */
static struct audit_node *queue_pop(struct audit_queue *q) {
    struct audit_node *n = q->pending;
    if (n) {
        q->pending = n->next;
        n->next = NULL;
        atomic_fetch_add_explicit(&q->overflow_taken, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&q->taken, 1, memory_order_relaxed);
        return n;
    }
    size_t h = atomic_load_explicit(&q->head, memory_order_relaxed);
    size_t t = atomic_load_explicit(&q->tail, memory_order_acquire);
    if (h != t) {
        n = q->slots[h & (AUDIT_RING_SIZE - 1)];
        atomic_store_explicit(&q->head, h + 1, memory_order_release);
        goto taken;
    }
    struct audit_node *stack = atomic_exchange_explicit(&q->overflow, NULL, memory_order_acquire);
    if (!stack) return NULL;
    while (stack) { /* reverse: oldest first */
        struct audit_node *next = stack->next;
        stack->next = q->pending;
        q->pending = stack;
        stack = next;
    }
    n = q->pending;
    q->pending = n->next;
    n->next = NULL;
    atomic_fetch_add_explicit(&q->overflow_taken, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&q->taken, 1, memory_order_relaxed);
    return n;
taken:
    n->next = NULL;
    atomic_fetch_add_explicit(&q->taken, 1, memory_order_relaxed);
    return n;
}

/* ======================================================================================== */
/* The sink                                                                                 */
/* ======================================================================================== */

enum audit_state {
    AUDIT_CONNECTING, /* Redis mode, before the first connection attempt */
    AUDIT_LIVE,       /* records go straight to the stream */
    AUDIT_SPOOLING,   /* Redis down or erroring: records go to the spool; reconnect w/ backoff */
    AUDIT_REPLAYING,  /* Redis back: the spool is replayed; new records still go to the spool */
    AUDIT_MEMORY,     /* no Redis: the memory stream */
    AUDIT_STOPPED
};
static const char *const audit_state_names[] = {"connecting", "live",   "spooling",
                                                "replaying",  "memory", "stopped"};

#define SINK_BATCH 512 /* records per pipelined write */
#define SINK_IDLE_MAX_US \
    100000                       /* an idle sink sleeps until a submit wakes it, a deadline
                                   * (fsync, reconnect) or at most this long */
#define SINK_GATHER_US 5000      /* after a submit woke it, the sink lets a batch gather */
#define SINK_HELD_RETRY_US 20000 /* retry of records the spool refused */
#define SYNC_EVERY_US 100000     /* fsync the spool and the file at least this often ... */
#define SYNC_EVERY_RECORDS 512   /* ... or after this many records */
#define SEGMENT_MAX_BYTES (8u << 20)
#define REPLAY_CHUNK \
    256 /* the bound of one replay step: records, each one O(1)
                                   * script (SET NX + XADD), plus a GET per run of uncertain ones */
#define REPLAY_TIMEOUT_MIN_MS \
    1000 /* a replay step's replies wait max(this, redis.timeout_ms):
                                    * background work, not to be torn down (and restarted) by a
                                    * Redis that is slow for a moment */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define CURSOR_NAME "replay.cursor"
#define TRIM_MIN_US 10000000 /* at most one malloc_trim per this long (sink_trim) */

/* Replays one spooled record: adds it to the stream only the first time its request_id is
 * seen. KEYS: stream, seen key. ARGV: ttl, maxlen, field, value, ... */
static const char replay_script[] =
    "if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then "
    "redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3)) "
    "return 1 end return 0";

/* An append-only file fsynced in batches (a spool segment or audit.file). */
struct sync_file {
    int fd;
    unsigned unsynced;
    uint64_t synced_us;
};

struct audit {
    const struct config *cfg;
    unsigned n_workers;
    struct audit_queue **queues;
    pthread_t thread;
    int thread_started;
    atomic_int stopping;
    atomic_int state;
    /* The sink sleeps in poll() on wake_fd (an eventfd) with sleeping set; the first submit
     * that finds it set clears it and writes wake_fd, so a busy sink costs the workers no
     * syscall and an idle one does not spin. */
    int wake_fd;
    atomic_int sleeping;
    atomic_int reopen; /* audit_reopen asked; the sink clears it when it reopens */

    atomic_uint_fast64_t written, spooled, replayed, redis_errors, file_errors, spool_depth;
    size_t held_n;                     /* the length of held plus the records out for a retry
                                     * (sink thread only) */
    atomic_uint_fast64_t held_records; /* held_n as of the last finished attempt, for
                                         * audit_get_stats: a retry in progress does not make
                                         * it drop to 0 and back */

    /* sink thread only */
    redisContext *redis;
    char script_sha[41];
    unsigned backoff_ms;
    uint64_t next_connect_us;
    struct audit_node *held; /* records to retry first (the spool could not take them) */
    int holding;             /* held was non-empty at the last look (logged once) */
    char maxlen[24];
    char safe_instance[48];
    unsigned segment_seq;
    struct sync_file segment; /* the spool segment being appended to; fd -1 when none */
    char segment_name[128];
    uint64_t segment_bytes, segment_records;
    FILE *replay_fp; /* the segment being replayed */
    char replay_name[128];
    uint64_t replay_off;
    /* Live batches are numbered per process (run_id, batch_seq); each one's MULTI/EXEC also sets
     * batch_key to its number, so whether an unanswered batch landed is one GET at replay. */
    char run_id[17];
    char batch_key[320];       /* <prefix>audit:batch:<run_id> */
    uint64_t batch_seq;        /* the last live batch sent */
    struct redis_fence client; /* the connection's CLIENT ID and address; id -1 unknown */
    struct redis_fence fence;  /* a lost connection that carried an unanswered batch,
                                     * killed at the next connect before replay; id -1 none */
    struct sync_file file;     /* audit.file; fd -1 when not configured */
    struct strbuf file_text;   /* the lines of one batch for audit.file, kept between them */
    struct strbuf resp;        /* the command being queued, formatted (argv_send) */
    struct strbuf access;      /* one batch's access lines for stderr, kept between them */
    int lock_fd;               /* flock on <spool_dir>/.lock: one process per spool */
    char file_path[4096];      /* audit.file, or <spool_dir>/audit.jsonl without redis */

    int backlog;         /* sink: a backlog (replay, held records, full batches) since the
                          * last sink_trim */
    uint64_t trimmed_us; /* sink: the last sink_trim */

    /* memory stream: record k (0-based, in write order) is mem[k % mem_cap] */
    pthread_mutex_t mem_lock;
    struct audit_record *mem;
    size_t mem_cap, mem_alloc;
    uint64_t mem_total;

    /* running queries */
    pthread_mutex_t query_lock;
    pthread_cond_t query_cond;
    unsigned queries;
};

static void set_state(struct audit *a, enum audit_state s) {
    enum audit_state old = (enum audit_state)atomic_load(&a->state);
    if (old == s) return;
    atomic_store(&a->state, (int)s);
    log_info("audit: sink %s -> %s", audit_state_names[old], audit_state_names[s]);
}

const char *audit_state_name(struct audit *a) {
    return audit_state_names[atomic_load(&a->state)];
}

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void sync_file_sync(struct audit *a, struct sync_file *f, int force) {
    if (f->fd < 0 || f->unsynced == 0) return;
    uint64_t now = clock_mono_us();
    if (!force && f->unsynced < SYNC_EVERY_RECORDS && now - f->synced_us < SYNC_EVERY_US) return;
    if (fsync(f->fd) != 0) {
        atomic_fetch_add(&a->file_errors, 1);
        log_error("audit: fsync: %s", strerror(errno));
    }
    f->unsynced = 0;
    f->synced_us = now;
}

/* audit.file, at start and at each audit_reopen. O_APPEND: after a copytruncate rotation the
 * writes go on at the new end, not at the old offset behind a hole of zeros. */
static int file_open(const char *path) {
    return open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
}

static void fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

static int mkdir_p(const char *path) {
    char buf[4096];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof(buf)) return -1;
    memcpy(buf, path, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char c = buf[i];
            buf[i] = '\0';
            if (mkdir(buf, 0700) != 0 && errno != EEXIST) return -1;
            buf[i] = c;
        }
    }
    return 0;
}

/* ---- Redis ---- */

static redisReply *redis_cmd(redisContext *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    return r;
}

/* A synchronous connection with AUTH and SELECT as configured. NULL with err. */
static redisContext *redis_open(const struct config_redis *rc, char *err, size_t errlen) {
    struct timeval tv = {(time_t)(rc->timeout_ms / 1000),
                         (suseconds_t)(rc->timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(rc->host, rc->port, tv);
    redisReply *r = NULL;
    if (!c || c->err) {
        snprintf(err, errlen, "connect %s:%d: %s", rc->host, rc->port, c ? c->errstr : "OOM");
        goto fail;
    }
    if (redisSetTimeout(c, tv) != REDIS_OK) {
        snprintf(err, errlen, "set timeout: %s", c->errstr);
        goto fail;
    }
    if (rc->password) {
        r = redis_cmd(c, "AUTH %s", rc->password);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "AUTH: %s", r ? r->str : c->errstr);
            goto fail;
        }
        freeReplyObject(r);
        r = NULL;
    }
    r = redis_cmd(c, "SELECT %u", rc->db);
    if (!r || r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "SELECT %u: %s", rc->db, r ? r->str : c->errstr);
        goto fail;
    }
    freeReplyObject(r);
    return c;
fail:
    if (r) freeReplyObject(r);
    if (c) redisFree(c);
    return NULL;
}

static void sink_disconnect(struct audit *a) {
    if (a->redis) {
        redisFree(a->redis);
        a->redis = NULL;
    }
    a->script_sha[0] = '\0';
    a->client.id = -1;
    a->client.addr[0] = '\0';
}

/* The connection's CLIENT ID and address, so a batch left unanswered on it can be fenced after
 * a reconnect (redis_fence.h). */
static void learn_client(struct audit *a) {
    redis_fence_learn(a->redis, &a->client);
}

/* Settles a live batch whose EXEC went unanswered (redis_fence.h): after it the GET of the batch
 * key at replay is final. */
static int fence_lost_batch(struct audit *a) {
    return redis_fence_kill(a->redis, &a->fence, "audit");
}

static int load_script(struct audit *a) {
    redisReply *r = redis_cmd(a->redis, "SCRIPT LOAD %s", replay_script);
    int rc = -1;
    if (r && r->type == REDIS_REPLY_STRING && r->len == 40) {
        memcpy(a->script_sha, r->str, 41);
        rc = 0;
    } else {
        log_warn("audit: SCRIPT LOAD: %s", r ? r->str : a->redis->errstr);
    }
    if (r) freeReplyObject(r);
    return rc;
}

/* One warning when reconnect attempts start failing (and when the error changes), a summary a
 * minute while Redis stays down, one line when it is back. */
static struct log_limiter sink_warning = LOG_LIMITER_INIT(60, 0);

/* Spooling (or connecting): an error moves to spooling and schedules the next attempt. */
static void sink_failed(struct audit *a, const char *what) {
    atomic_fetch_add(&a->redis_errors, 1);
    log_limited(&sink_warning, LOG_LEVEL_WARN, "audit: redis: %s; spooling, next attempt in %u ms",
                what, a->backoff_ms);
    sink_disconnect(a);
    if (a->replay_fp) {
        fclose(a->replay_fp);
        a->replay_fp = NULL;
    }
    a->next_connect_us = clock_mono_us() + (uint64_t)a->backoff_ms * 1000;
    a->backoff_ms = a->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : a->backoff_ms * 2;
    set_state(a, AUDIT_SPOOLING);
}

/* ---- spool ---- */

static int is_segment_name(const char *name) {
    size_t n = strlen(name);
    return name[0] != '.' && n > 6 && strcmp(name + n - 6, ".jsonl") == 0;
}

static int segment_filter(const struct dirent *d) {
    return is_segment_name(d->d_name);
}

/* Segment names in order (they start with a zero-padded wall clock). Caller frees with
 * free_names. -1 when the directory cannot be read. */
static int list_segments(const char *dir, struct dirent ***names) {
    return scandir(dir, names, segment_filter, alphasort);
}

static void free_names(struct dirent **names, int n) {
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
}

static int spool_path(const struct audit *a, const char *name, char *out, size_t outlen) {
    int n = snprintf(out, outlen, "%s/%s", a->cfg->audit.spool_dir, name);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

static void spool_close_segment(struct audit *a) {
    if (a->segment.fd < 0) return;
    a->segment.unsynced = a->segment.unsynced ? a->segment.unsynced : 1;
    sync_file_sync(a, &a->segment, 1);
    close(a->segment.fd);
    a->segment.fd = -1;
    a->segment_name[0] = '\0';
    a->segment_bytes = a->segment_records = 0;
}

static int spool_open_segment(struct audit *a) {
    char path[4096];
    snprintf(a->segment_name, sizeof(a->segment_name), "%017llu-%06u-%s.jsonl",
             (unsigned long long)clock_wall_us(), a->segment_seq++ % 1000000, a->safe_instance);
    if (spool_path(a, a->segment_name, path, sizeof(path)) != 0) goto fail;
    a->segment.fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (a->segment.fd < 0) goto fail;
    fsync_dir(a->cfg->audit.spool_dir);
    a->segment.unsynced = 0;
    a->segment.synced_us = clock_mono_us();
    a->segment_bytes = a->segment_records = 0;
    return 0;
fail:
    log_error("audit: cannot create spool segment in %s: %s", a->cfg->audit.spool_dir,
              strerror(errno));
    a->segment_name[0] = '\0';
    return -1;
}

/* One spool line: the record's JSON, plus "uncertain": true when its live write may have
 * landed, and then "batch": "<run>:<seq>", the live batch it was in. */
static int spool_line(const struct audit_node *n, struct strbuf *out) {
    if (record_json(&n->rec, n->uncertain, out) != 0) return -1;
    if (n->uncertain && n->batch[0]) {
        out->len--; /* the closing brace */
        if (strbuf_appendf(out, ",\"batch\":\"%s\"}", n->batch) != 0) return -1;
    }
    return strbuf_appendc(out, '\n');
}

/* Appends nodes to the spool. 0, or -1 (nothing counted; the caller keeps the records). */
static int spool_append(struct audit *a, struct audit_node **nodes, size_t n) {
    struct strbuf b;
    int rc = -1;
    strbuf_init(&b);
    for (size_t i = 0; i < n; i++)
        if (spool_line(nodes[i], &b) != 0) goto out;
    if (a->segment.fd >= 0 && a->segment_bytes >= SEGMENT_MAX_BYTES) spool_close_segment(a);
    if (a->segment.fd < 0 && spool_open_segment(a) != 0) goto out;
    if (write_all(a->segment.fd, b.s, b.len) != 0) {
        log_error("audit: spool write %s: %s", a->segment_name, strerror(errno));
        /* a partial line would be skipped at replay; start a fresh segment next time */
        spool_close_segment(a);
        goto out;
    }
    a->segment_bytes += b.len;
    a->segment_records += n;
    a->segment.unsynced += (unsigned)n;
    atomic_fetch_add(&a->spooled, n);
    atomic_fetch_add(&a->spool_depth, n);
    sync_file_sync(a, &a->segment, 0);
    rc = 0;
out:
    if (rc != 0) atomic_fetch_add(&a->file_errors, 1);
    strbuf_cleanup(&b);
    return rc;
}

static void cursor_write(struct audit *a, const char *segment, uint64_t off) {
    char path[4096], tmp[4096], line[256];
    if (spool_path(a, CURSOR_NAME, path, sizeof(path)) != 0 ||
        spool_path(a, CURSOR_NAME ".tmp", tmp, sizeof(tmp)) != 0)
        return;
    int len = snprintf(line, sizeof(line), "%s %llu\n", segment, (unsigned long long)off);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || write_all(fd, line, (size_t)len) != 0 || fsync(fd) != 0 ||
        rename(tmp, path) != 0) {
        atomic_fetch_add(&a->file_errors, 1);
        log_error("audit: cannot write the replay cursor: %s", strerror(errno));
    }
    if (fd >= 0) close(fd);
}

/* The offset the cursor file holds for segment, or 0. */
static uint64_t cursor_read(struct audit *a, const char *segment) {
    char path[4096], line[256];
    uint64_t off = 0;
    if (spool_path(a, CURSOR_NAME, path, sizeof(path)) != 0) return 0;
    FILE *f = fopen(path, "re");
    if (!f) return 0;
    if (fgets(line, sizeof(line), f)) {
        char *sp = strchr(line, ' ');
        char *nl = strchr(line, '\n');
        if (sp && nl && (size_t)(sp - line) == strlen(segment) &&
            memcmp(line, segment, strlen(segment)) == 0 &&
            num_parse_u64(sp + 1, (size_t)(nl - sp - 1), &off) != 0)
            off = 0;
    }
    fclose(f);
    return off;
}

/* Lines after the cursor in every segment: the spool depth left by an earlier run. */
static uint64_t spool_count(struct audit *a) {
    struct dirent **names;
    int n = list_segments(a->cfg->audit.spool_dir, &names);
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        char path[4096];
        if (spool_path(a, names[i]->d_name, path, sizeof(path)) != 0) continue;
        FILE *f = fopen(path, "re");
        if (!f) continue;
        uint64_t off = cursor_read(a, names[i]->d_name);
        if (off && fseeko(f, (off_t)off, SEEK_SET) != 0) off = 0;
        int c;
        while ((c = getc(f)) != EOF) total += c == '\n';
        fclose(f);
    }
    if (n > 0) free_names(names, n);
    return total;
}

/* ---- live writes ---- */

struct argv_buf {
    int argc;
    const char *argv[8 + 2 * AUDIT_FIELDS_MAX];
    size_t len[8 + 2 * AUDIT_FIELDS_MAX];
};

static void argv_add(struct argv_buf *b, const char *s, size_t len) {
    b->argv[b->argc] = s;
    b->len[b->argc] = len;
    b->argc++;
}

static void argv_adds(struct argv_buf *b, const char *s) {
    argv_add(b, s, strlen(s));
}

static void argv_fields(struct argv_buf *b, const struct audit_fields *f) {
    for (size_t i = 0; i < f->count; i++) {
        argv_adds(b, f->name[i]);
        argv_add(b, f->value[i], f->value_len[i]);
    }
}

/* Queues b's command on the sink's connection, formatted here (resp.h) rather than by hiredis.
 * 0, or -1 (out of memory, or hiredis refused it). */
static int argv_send(struct audit *a, const struct argv_buf *b) {
    strbuf_reset(&a->resp);
    if (resp_append_command(&a->resp, b->argc, b->argv, b->len) != 0) return -1;
    return redisAppendFormattedCommand(a->redis, a->resp.s, a->resp.len) == REDIS_OK ? 0 : -1;
}

/* Keeps nodes (in order) ahead of the held records, to be retried first. */
static void hold(struct audit *a, struct audit_node **nodes, size_t n) {
    a->held_n += n;
    for (size_t i = n; i-- > 0;) {
        nodes[i]->next = a->held;
        a->held = nodes[i];
    }
}

/* Spools nodes and frees them, or holds them when the spool refuses them. */
static void spool_or_hold(struct audit *a, struct audit_node **nodes, size_t n) {
    if (spool_append(a, nodes, n) == 0) {
        for (size_t i = 0; i < n; i++) free(nodes[i]);
    } else {
        hold(a, nodes, n);
    }
}

/* One live batch: MULTI, an XADD per record, SET <batch_key> <seq> (unless unfenced), EXEC, all
 * pipelined. The transaction makes the batch land whole or not at all, and its number in the
 * batch key tells a later replay which of the two happened without reading the stream. Records
 * whose XADD ran are freed; an error reply or a lost connection moves the sink to spooling and
 * leaves the rest, in order, at the front of nodes (marked uncertain with the batch number when
 * no EXEC answer came): their count is returned. The retries are gathered in place, without
 * allocating, because this is the path that runs when things already go wrong. unfenced: the
 * last resort at stop, which writes ahead of an unreplayed spool and so must not move the batch
 * key past the batches in it. */
static size_t live_write(struct audit *a, struct audit_node **nodes, size_t n, int unfenced) {
    struct audit_fields f;
    struct argv_buf b;
    size_t sent = 0, i, n_retry = 0; /* nodes[0 .. n_retry) are kept; n_retry <= i throughout */
    char why[160] = "", seq[24], ttl[24], batch[48];
    redisReply *r = NULL, *exec = NULL;
    int queued = 0;
    a->batch_seq++;
    snprintf(seq, sizeof(seq), "%llu", (unsigned long long)a->batch_seq);
    snprintf(ttl, sizeof(ttl), "%d", AUDIT_SEEN_TTL_S);
    snprintf(batch, sizeof(batch), "%s:%s", a->run_id, seq);
    b.argc = 0;
    argv_adds(&b, "MULTI");
    if (argv_send(a, &b) != 0) goto unsent;
    for (i = 0; i < n; i++) {
        b.argc = 0;
        audit_record_fields(&nodes[i]->rec, &f);
        argv_adds(&b, "XADD");
        argv_adds(&b, a->cfg->audit.stream);
        argv_adds(&b, "MAXLEN");
        argv_adds(&b, "~");
        argv_adds(&b, a->maxlen);
        argv_adds(&b, "*");
        argv_fields(&b, &f);
        if (argv_send(a, &b) != 0) break;
        sent++;
    }
    b.argc = 0;
    if (unfenced) {
        argv_adds(&b, "EXEC");
    } else {
        argv_adds(&b, "SET");
        argv_adds(&b, a->batch_key);
        argv_adds(&b, seq);
        argv_adds(&b, "EX");
        argv_adds(&b, ttl);
    }
    if (sent < n || argv_send(a, &b) != 0) {
        /* nothing went out yet (hiredis only buffers): end the transaction unsent */
        snprintf(why, sizeof(why), "XADD: cannot queue the command");
        goto unsent;
    }
    b.argc = 0;
    argv_adds(&b, "EXEC");
    if (!unfenced && argv_send(a, &b) != 0) {
        snprintf(why, sizeof(why), "XADD: cannot queue the command");
        goto unsent;
    }
    /* MULTI, n XADDs, SET (fenced): each answered +OK/+QUEUED or an error that aborts EXEC */
    for (i = 0; i < n + (unfenced ? 1 : 2); i++) {
        if (redisGetReply(a->redis, (void **)&r) != REDIS_OK || !r) goto lost;
        if (r->type == REDIS_REPLY_ERROR && !why[0])
            snprintf(why, sizeof(why), "XADD (queued): %s", r->str);
        freeReplyObject(r);
        r = NULL;
        queued++;
    }
    if (redisGetReply(a->redis, (void **)&exec) != REDIS_OK || !exec) goto lost;
    if (exec->type != REDIS_REPLY_ARRAY || exec->elements < n) {
        /* EXECABORT (a command refused while queued: OOM, a wrong argument): nothing ran */
        if (!why[0])
            snprintf(why, sizeof(why), "EXEC: %s",
                     exec->type == REDIS_REPLY_ERROR ? exec->str : "unexpected reply");
        atomic_fetch_add(&a->redis_errors, 1);
        freeReplyObject(exec);
        sink_failed(a, why);
        return n;
    }
    for (i = 0; i < n; i++) {
        if (exec->element[i]->type == REDIS_REPLY_ERROR) { /* ran and failed: not written */
            if (!why[0]) snprintf(why, sizeof(why), "XADD: %s", exec->element[i]->str);
            atomic_fetch_add(&a->redis_errors, 1);
            nodes[n_retry++] = nodes[i];
        } else {
            atomic_fetch_add(&a->written, 1);
            free(nodes[i]);
        }
    }
    freeReplyObject(exec);
    if (n_retry > 0) sink_failed(a, why);
    return n_retry;
lost:
    /* no EXEC answer: the batch ran whole or not at all, and only Redis knows which */
    snprintf(why, sizeof(why), "XADD: %s%s", a->redis->errstr, queued ? " (waiting for EXEC)" : "");
    for (i = 0; i < n; i++) {
        nodes[i]->uncertain = 1;
        if (!unfenced) snprintf(nodes[i]->batch, sizeof(nodes[i]->batch), "%s", batch);
    }
    if (!unfenced && a->client.id >= 0) a->fence = a->client;
    sink_failed(a, why);
    return n;
unsent:
    if (!why[0]) snprintf(why, sizeof(why), "MULTI: cannot queue the command");
    /* the output buffer may hold part of the batch: dropping the connection discards it */
    sink_failed(a, why);
    return n;
}

/* ---- replay ---- */

/* What the batch keys said during one replay chunk: run id → the last batch of that run that
 * landed (0: none, or its key expired). */
#define BATCH_RUNS_MAX 8
struct batch_runs {
    size_t n;
    char run[BATCH_RUNS_MAX][17];
    uint64_t landed[BATCH_RUNS_MAX];
};

/* Whether the live batch tag ("<run>:<seq>") ran: its run's batch key holds its number or a
 * later one (a run's batches are sent in order, and the next one only after an unanswered one
 * was settled). One GET per run and chunk; the cost never depends on the stream. 1 landed,
 * 0 not, -1 when Redis did not answer, -2 for a malformed tag (then the record is replayed: a
 * possible duplicate, never a loss). */
static int batch_landed(struct audit *a, struct batch_runs *runs, const char *tag) {
    const char *colon = strchr(tag, ':');
    uint64_t seq, landed = 0;
    size_t k, rl = colon ? (size_t)(colon - tag) : 0;
    if (!colon || rl == 0 || rl > 16 || num_parse_u64(colon + 1, strlen(colon + 1), &seq) != 0)
        return -2;
    for (k = 0; k < runs->n; k++)
        if (strlen(runs->run[k]) == rl && memcmp(runs->run[k], tag, rl) == 0)
            return runs->landed[k] >= seq;
    redisReply *r = redis_cmd(a->redis, "GET %saudit:batch:%b", a->cfg->redis->key_prefix, tag, rl);
    if (!r) return -1;
    if (r->type == REDIS_REPLY_STRING && num_parse_u64(r->str, r->len, &landed) != 0) landed = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        log_warn("audit: GET of a batch key: %s", r->str);
        freeReplyObject(r);
        return -1;
    }
    freeReplyObject(r);
    if (runs->n < BATCH_RUNS_MAX) {
        memcpy(runs->run[runs->n], tag, rl);
        runs->run[runs->n][rl] = '\0';
        runs->landed[runs->n++] = landed;
    }
    return landed >= seq;
}

/* Finishes the replay: the spool is empty, records go live again. */
static void replay_done(struct audit *a) {
    char path[4096];
    if (spool_path(a, CURSOR_NAME, path, sizeof(path)) == 0) unlink(path);
    set_state(a, AUDIT_LIVE);
}

/* Opens the oldest segment not being appended to. 1 opened, 0 the spool is replayed, -1 on
 * error (already handled). */
static int replay_open(struct audit *a) {
    struct dirent **names;
    int n = list_segments(a->cfg->audit.spool_dir, &names);
    int rc = 0;
    if (n < 0) {
        atomic_fetch_add(&a->file_errors, 1);
        log_error("audit: cannot list %s: %s", a->cfg->audit.spool_dir, strerror(errno));
        return -1;
    }
    for (int i = 0; i < n && rc == 0; i++) {
        char path[4096];
        if (strcmp(names[i]->d_name, a->segment_name) == 0) continue;
        if (spool_path(a, names[i]->d_name, path, sizeof(path)) != 0) continue;
        a->replay_fp = fopen(path, "re");
        if (!a->replay_fp) {
            log_error("audit: cannot open %s: %s", path, strerror(errno));
            continue;
        }
        copy_str(a->replay_name, sizeof(a->replay_name), names[i]->d_name);
        a->replay_off = cursor_read(a, a->replay_name);
        if (a->replay_off && fseeko(a->replay_fp, (off_t)a->replay_off, SEEK_SET) != 0)
            a->replay_off = 0;
        log_info("audit: replaying %s from byte %llu", a->replay_name,
                 (unsigned long long)a->replay_off);
        rc = 1;
    }
    free_names(names, n);
    if (rc == 0 && a->segment.fd >= 0) {
        if (a->segment_records == 0) { /* nothing new arrived: drop the empty segment */
            char path[4096];
            if (spool_path(a, a->segment_name, path, sizeof(path)) == 0) unlink(path);
            close(a->segment.fd);
            a->segment.fd = -1;
            a->segment_name[0] = '\0';
        } else { /* replay it next; new records start another one */
            spool_close_segment(a);
            return replay_open(a);
        }
    }
    return rc;
}

/* The sink connection's read timeout: redis.timeout_ms, or the replay's own. */
static void sink_timeout(struct audit *a, int replay) {
    unsigned ms = a->cfg->redis->timeout_ms;
    if (replay && ms < REPLAY_TIMEOUT_MIN_MS) ms = REPLAY_TIMEOUT_MIN_MS;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    if (a->redis) (void)redisSetTimeout(a->redis, tv);
}

static void replay_chunk(struct audit *a);

/* Replays up to REPLAY_CHUNK records of the current segment, then persists the cursor; its
 * replies are waited for with the replay's own timeout. */
static void replay_step(struct audit *a) {
    sink_timeout(a, 1);
    replay_chunk(a);
    sink_timeout(a, 0);
}

static void replay_chunk(struct audit *a) {
    if (!a->replay_fp) {
        int rc = replay_open(a);
        if (rc == 0) replay_done(a);
        if (rc != 1) return;
    }
    struct audit_node *chunk[REPLAY_CHUNK];
    int skip[REPLAY_CHUNK];
    size_t n = 0, lines = 0, bad = 0;
    uint64_t off = a->replay_off;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while (n < REPLAY_CHUNK && (len = getline(&line, &cap, a->replay_fp)) > 0) {
        if (line[len - 1] != '\n') /* a torn last line, from a crash mid-write */
            break;
        off += (uint64_t)len;
        lines++;
        struct audit_node *node = calloc(1, sizeof(*node));
        json_t *o = json_loadb(line, (size_t)len - 1, 0, NULL);
        if (!node || !o || record_from_object(o, &node->rec) != 0 || !node->rec.request_id[0]) {
            log_warn("audit: skipping a malformed spool line in %s at byte %llu", a->replay_name,
                     (unsigned long long)(off - (uint64_t)len));
            free(node);
            json_decref(o);
            bad++;
            continue;
        }
        node->uncertain = json_is_true(json_object_get(o, "uncertain"));
        if (node->uncertain && json_is_string(json_object_get(o, "batch")))
            copy_str(node->batch, sizeof(node->batch),
                     json_string_value(json_object_get(o, "batch")));
        json_decref(o);
        chunk[n++] = node;
    }
    free(line);
    if (lines == 0) { /* the segment is done */
        char path[4096];
        fclose(a->replay_fp);
        a->replay_fp = NULL;
        if (spool_path(a, a->replay_name, path, sizeof(path)) == 0 && unlink(path) != 0)
            log_error("audit: cannot remove %s: %s", path, strerror(errno));
        fsync_dir(a->cfg->audit.spool_dir);
        log_info("audit: replayed %s", a->replay_name);
        a->replay_name[0] = '\0';
        return;
    }
    char seen_prefix[256], maxlen_ttl[24];
    snprintf(seen_prefix, sizeof(seen_prefix), "%saudit:seen:", a->cfg->redis->key_prefix);
    snprintf(maxlen_ttl, sizeof(maxlen_ttl), "%d", AUDIT_SEEN_TTL_S);
    char(*seen_keys)[300] = calloc(n ? n : 1, sizeof(*seen_keys));
    const char *why = NULL;
    char errbuf[160] = "";
    size_t sent = 0, i, n_landed = 0;
    struct batch_runs runs = {0};
    if (!seen_keys) {
        why = "out of memory";
        goto out;
    }
    /* first the batch checks (synchronous GETs), before any EVALSHA is queued behind them */
    for (i = 0; i < n; i++) {
        skip[i] = 0;
        if (chunk[i]->uncertain && chunk[i]->batch[0]) {
            int landed = batch_landed(a, &runs, chunk[i]->batch);
            if (landed == -1) {
                why = "GET of a batch key failed";
                goto out;
            }
            skip[i] = landed == 1;
            n_landed += skip[i];
        }
    }
    if (n_landed)
        log_info("audit: %zu uncertain records are in the stream already (their batch landed); "
                 "not replayed",
                 n_landed);
    for (i = 0; i < n; i++) {
        if (skip[i]) continue;
        struct audit_fields f;
        struct argv_buf b = {0};
        audit_record_fields(&chunk[i]->rec, &f);
        snprintf(seen_keys[i], sizeof(seen_keys[i]), "%s%s", seen_prefix, chunk[i]->rec.request_id);
        argv_adds(&b, "EVALSHA");
        argv_adds(&b, a->script_sha);
        argv_adds(&b, "2");
        argv_adds(&b, a->cfg->audit.stream);
        argv_adds(&b, seen_keys[i]);
        argv_adds(&b, maxlen_ttl);
        argv_adds(&b, a->maxlen);
        argv_fields(&b, &f);
        if (argv_send(a, &b) != 0) {
            why = "cannot queue EVALSHA";
            goto out;
        }
        sent++;
    }
    int noscript = 0;
    for (i = 0; i < sent; i++) {
        redisReply *r = NULL;
        if (redisGetReply(a->redis, (void **)&r) != REDIS_OK || !r) {
            snprintf(errbuf, sizeof(errbuf), "EVALSHA: %s", a->redis->errstr);
            why = errbuf;
            goto out;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            if (strncmp(r->str, "NOSCRIPT", 8) == 0)
                noscript = 1;
            else if (!why) {
                snprintf(errbuf, sizeof(errbuf), "EVALSHA: %s", r->str);
                why = errbuf;
            }
        }
        freeReplyObject(r);
    }
    if (why) goto out;
    if (noscript) { /* Redis lost its scripts (restart, SCRIPT FLUSH): load and redo */
        if (load_script(a) != 0) why = "SCRIPT LOAD failed";
        goto rewind;
    }
    a->replay_off = off;
    cursor_write(a, a->replay_name, off);
    atomic_fetch_add(&a->replayed, n);
    {
        uint64_t depth = atomic_load(&a->spool_depth), done = n + bad;
        atomic_store(&a->spool_depth, depth > done ? depth - done : 0);
    }
    goto out_free;
rewind:
    if (fseeko(a->replay_fp, (off_t)a->replay_off, SEEK_SET) != 0) {
        fclose(a->replay_fp);
        a->replay_fp = NULL;
    }
out:
    if (why) sink_failed(a, why); /* the chunk is replayed again from the cursor */
out_free:
    free(seen_keys);
    for (i = 0; i < n; i++) free(chunk[i]);
}

/* ---- connection ---- */

static void try_connect(struct audit *a) {
    char err[256];
    a->redis = redis_open(a->cfg->redis, err, sizeof(err));
    if (!a->redis) {
        sink_failed(a, err);
        return;
    }
    if (load_script(a) != 0) {
        sink_failed(a, "SCRIPT LOAD failed");
        return;
    }
    if (fence_lost_batch(a) != 0) {
        sink_failed(a, "CLIENT KILL of the lost connection: no answer");
        return;
    }
    learn_client(a);
    a->backoff_ms = BACKOFF_MIN_MS;
    struct dirent **names;
    int n = list_segments(a->cfg->audit.spool_dir, &names);
    if (n > 0) free_names(names, n);
    log_limited_ok(&sink_warning, LOG_LEVEL_INFO, "audit: redis is back");
    log_info("audit: connected to redis %s:%d", a->cfg->redis->host, a->cfg->redis->port);
    set_state(a, n > 0 || a->segment.fd >= 0 ? AUDIT_REPLAYING : AUDIT_LIVE);
}

/* ---- the memory stream ---- */

static void memory_push(struct audit *a, const struct audit_record *r) {
    pthread_mutex_lock(&a->mem_lock);
    if (a->mem_total < a->mem_cap && a->mem_total == a->mem_alloc) {
        size_t grow = a->mem_alloc ? a->mem_alloc * 2 : 1024;
        if (grow > a->mem_cap) grow = a->mem_cap;
        struct audit_record *m = realloc(a->mem, grow * sizeof(*m));
        if (!m) { /* keep what we have as a smaller ring */
            a->mem_cap = a->mem_alloc ? a->mem_alloc : 0;
        } else {
            a->mem = m;
            a->mem_alloc = grow;
        }
    }
    if (a->mem_cap > 0) {
        a->mem[a->mem_total % a->mem_cap] = *r;
        a->mem_total++;
    }
    pthread_mutex_unlock(&a->mem_lock);
}

/* ---- the loop ---- */

/* A value as sent, fit for a key=value text line: anything but printable ASCII other than
 * space, '"' and '\\' becomes '_', so a client can neither split the line nor fake a field. */
static const char *access_text(const char *v, char *buf, size_t len) {
    size_t i = 0;
    if (!v[0]) return "-";
    for (; v[i] && i + 1 < len; i++)
        buf[i] = v[i] > ' ' && v[i] < 0x7f && v[i] != '"' && v[i] != '\\' ? v[i] : '_';
    buf[i] = '\0';
    return buf;
}

/* r's access line (README "Install and operate") into line, as log.c frames it; its length, 0
 * when none. Text: key=value with "-" for what does not apply; JSON (log_format): the same as
 * members, null for what does not apply, latencies in milliseconds. */
static size_t access_line(const struct audit_record *r, char line[LOG_LINE_MAX]) {
    double ms = (double)r->latency_us / 1000.0, up_ms = (double)r->upstream_latency_us / 1000.0;
    if (log_is_json()) {
        json_t *o = json_pack("{s:s, s:s?, s:s?, s:s?, s:s, s:s?, s:i, s:f, s:s?}", "request_id",
                              r->request_id, "app", r->app[0] ? r->app : NULL, "action",
                              r->action[0] ? r->action : NULL, "client_ip",
                              r->client_ip[0] ? r->client_ip : NULL, "decision", r->decision,
                              "rule", r->rule[0] ? r->rule : NULL, "http", r->http_status,
                              "latency_ms", ms, "type", "access");
        if (!o) return 0;
        json_object_set_new(o, "businessId",
                            r->has_business_id ? json_integer(r->business_id) : json_null());
        json_object_set_new(o, "sceneId",
                            r->has_scene_id ? json_integer(r->scene_id) : json_null());
        json_object_set_new(o, "code", r->has_code ? json_integer(r->code) : json_null());
        json_object_set_new(o, "upstream_ms",
                            r->upstream_latency_us ? json_real(up_ms) : json_null());
        json_object_set_new(o, "upstream_status",
                            r->upstream_status ? json_integer(r->upstream_status) : json_null());
        char *fields = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(o);
        if (!fields) return 0;
        size_t n = log_line(LOG_LEVEL_INFO, "access", fields, line);
        free(fields);
        return n;
    }
    char text[2048], action[64], ip[64];
    char biz[16] = "-", scene[16] = "-", code[16] = "-", up[32] = "-";
    if (r->has_business_id) snprintf(biz, sizeof biz, "%u", (unsigned)r->business_id);
    if (r->has_scene_id) snprintf(scene, sizeof scene, "%u", (unsigned)r->scene_id);
    if (r->has_code) snprintf(code, sizeof code, "%d", r->code);
    if (r->upstream_latency_us) snprintf(up, sizeof up, "%.3f", up_ms);
    if (snprintf(text, sizeof text,
                 "access request_id=%s app=%s action=%s businessId=%s "
                 "sceneId=%s decision=%s rule=%s code=%s http=%d latency_ms=%.3f upstream_ms=%s "
                 "client_ip=%s",
                 r->request_id, r->app[0] ? r->app : "-",
                 access_text(r->action, action, sizeof action), biz, scene, r->decision,
                 r->rule[0] ? r->rule : "-", code, r->http_status, ms, up,
                 access_text(r->client_ip, ip, sizeof ip)) < 0)
        return 0;
    return log_line(LOG_LEVEL_INFO, text, NULL, line);
}

/* Writes what b holds to stderr and empties it. Failing, stderr is nowhere to say so. */
static void access_flush(struct strbuf *b) {
    if (b->len > 0) (void)write_all(STDERR_FILENO, b->s, b->len);
    strbuf_reset(b);
}

/* The access lines of records just taken from the worker queues (each record once: held ones
 * being retried had theirs) go to stderr from here, so the workers never write the log per
 * request and a slow stderr (a journal falling behind) delays only this thread. One write per
 * batch, or per PIPE_BUF bytes of whole lines when a batch is longer: a pipe keeps a write of
 * at most PIPE_BUF bytes whole, so another thread's log line never lands inside one of these
 * (pipe(7)); a longer one may be split while the reader lags. */
static void access_log(struct audit *a, struct audit_node **batch, size_t n) {
    _Static_assert(LOG_LINE_MAX <= PIPE_BUF, "an access line fits one atomic write");
    if (n == 0 || log_get_level() > LOG_LEVEL_INFO) return;
    struct strbuf *b = &a->access;
    char line[LOG_LINE_MAX];
    strbuf_reset(b);
    for (size_t i = 0; i < n; i++) {
        size_t len = access_line(&batch[i]->rec, line);
        if (b->len + len > PIPE_BUF) access_flush(b);
        if (len > 0 && strbuf_append(b, line, len) != 0) break; /* no memory: what fits goes out */
    }
    access_flush(b);
}

/* Held records first (alone, so they are not written twice to audit.file, nor their access
 * lines twice), else up to max from the workers, round-robin, each worker's in order. */
static size_t collect(struct audit *a, struct audit_node **batch, size_t max, int *retried) {
    size_t n = 0;
    *retried = a->held != NULL;
    while (n < max && a->held) {
        batch[n] = a->held;
        a->held = a->held->next;
        batch[n++]->next = NULL;
    }
    a->held_n -= n;
    if (*retried) return n;
    int progress = 1;
    while (n < max && progress) {
        progress = 0;
        for (unsigned w = 0; w < a->n_workers && n < max; w++) {
            struct audit_node *node = queue_pop(a->queues[w]);
            if (node) {
                batch[n++] = node;
                progress = 1;
            }
        }
    }
    access_log(a, batch, n);
    return n;
}

/* One write() per batch; the buffer is kept for the next batch (at most SINK_BATCH lines). */
static void file_append(struct audit *a, struct audit_node **batch, size_t n) {
    struct strbuf *b = &a->file_text;
    strbuf_reset(b);
    for (size_t i = 0; i < n; i++) {
        if (audit_record_json(&batch[i]->rec, b) != 0 || strbuf_appendc(b, '\n') != 0) {
            atomic_fetch_add(&a->file_errors, 1);
            return;
        }
    }
    if (write_all(a->file.fd, b->s, b->len) != 0) {
        atomic_fetch_add(&a->file_errors, 1);
        log_error("audit: write %s: %s", a->file_path, strerror(errno));
        return;
    }
    a->file.unsynced += (unsigned)n;
    sync_file_sync(a, &a->file, 0);
}

/* Between two batches, so each batch goes whole to one file: what the old file got is fsynced
 * there and the next batch goes to the file now at file_path. When that does not open, the old
 * file keeps receiving records: better the rotated file than none. */
static void file_reopen(struct audit *a) {
    if (!atomic_exchange(&a->reopen, 0) || a->file.fd < 0) return;
    if (a->file.unsynced == 0)
        a->file.unsynced = 1; /* a write that failed midway may have left bytes behind */
    sync_file_sync(a, &a->file, 1);
    int fd = file_open(a->file_path);
    if (fd < 0) {
        atomic_fetch_add(&a->file_errors, 1);
        log_error("audit: reopen %s: %s; still writing to the file open before", a->file_path,
                  strerror(errno));
        return;
    }
    close(a->file.fd);
    a->file.fd = fd;
    a->file.unsynced = 0;
    a->file.synced_us = clock_mono_us();
    log_info("audit: reopened %s", a->file_path);
}

/* Held records going live again (the spool refused them, so they were never replayed) may be
 * uncertain ones whose batch landed meanwhile: those are freed, as replay would skip them. The
 * rest stay in order at the front of nodes; their count. Without an answer from Redis, all stay
 * (and the next attempt fails the same way). */
static size_t drop_landed(struct audit *a, struct audit_node **nodes, size_t n) {
    struct batch_runs runs = {0};
    size_t i, kept = 0, dropped = 0;
    for (i = 0; i < n; i++) {
        if (nodes[i]->uncertain && nodes[i]->batch[0] &&
            batch_landed(a, &runs, nodes[i]->batch) == 1) {
            free(nodes[i]);
            dropped++;
            continue;
        }
        nodes[kept++] = nodes[i];
    }
    if (dropped) {
        atomic_fetch_add(&a->written, dropped);
        log_info("audit: %zu held uncertain records are in the stream already (their batch "
                 "landed); not written again",
                 dropped);
    }
    return kept;
}

static void handle_batch(struct audit *a, struct audit_node **batch, size_t n, int retried) {
    size_t i;
    if (a->file.fd >= 0 && !retried) file_append(a, batch, n);
    switch ((enum audit_state)atomic_load(&a->state)) {
    case AUDIT_MEMORY:
        for (i = 0; i < n; i++) {
            memory_push(a, &batch[i]->rec);
            free(batch[i]);
        }
        atomic_fetch_add(&a->written, n);
        return;
    case AUDIT_LIVE:
        if (retried && (n = drop_landed(a, batch, n)) == 0) return;
        n = live_write(a, batch, n, 0);
        if (n > 0) spool_or_hold(a, batch, n);
        return;
    default: spool_or_hold(a, batch, n); return;
    }
}

#define REPLAY_STEPS 4  /* replay chunks per loop turn, so replay outpaces arrivals */
#define STOP_RETRIES 50 /* turns a stopping sink retries records the spool refused */

#define UNSAVED_PREFIX "capgate audit record (unsaved): "

/* Writes n's record to stderr as one JSON line after UNSAVED_PREFIX: the log is the last durable
 * place for a record neither Redis nor the spool took. */
static void print_unsaved(const struct audit_node *n) {
    struct strbuf b;
    strbuf_init(&b);
    if (audit_record_json(&n->rec, &b) == 0)
        fprintf(stderr, UNSAVED_PREFIX "%s\n", b.s);
    else /* no memory for the JSON: what identifies the record, by hand */
        fprintf(stderr,
                UNSAVED_PREFIX "{\"ts_us\":%llu,\"request_id\":\"%s\",\"app\":\"%s\","
                               "\"decision\":\"%s\",\"code\":%d}\n",
                (unsigned long long)n->rec.ts_us, n->rec.request_id, n->rec.app, n->rec.decision,
                n->rec.code);
    strbuf_cleanup(&b);
}

/* A stopping sink whose spool keeps refusing records (Redis down and the disk full or the
 * directory gone). The held records and everything still in the worker queues (which a sink
 * holding records does not drain) get one more attempt at Redis, then at the spool, and what
 * neither takes is printed to stderr, one line each, and counted: no record is freed unseen.
 * Written to Redis here, records may land ahead of older ones still in the spool. */
static void sink_last_resort(struct audit *a) {
    struct audit_node *batch[SINK_BATCH], *rest = a->held, **tail = &rest;
    size_t n, total = 0, unsaved = 0;
    int retried;
    a->held = NULL;
    a->held_n = 0;
    atomic_store(&a->held_records, 0);
    while (*tail) tail = &(*tail)->next;
    while ((n = collect(a, batch, SINK_BATCH, &retried)) > 0) { /* the queues, in order */
        if (a->file.fd >= 0) file_append(a, batch, n);
        for (size_t i = 0; i < n; i++) {
            *tail = batch[i];
            tail = &batch[i]->next;
        }
    }
    if (!a->redis && a->cfg->redis) {
        char err[256];
        a->redis = redis_open(a->cfg->redis, err, sizeof(err));
        if (!a->redis) log_warn("audit: last attempt at redis: %s", err);
    }
    while (rest) {
        for (n = 0; n < SINK_BATCH && rest; n++) {
            batch[n] = rest;
            rest = rest->next;
            batch[n]->next = NULL;
        }
        total += n;
        if (a->redis)
            n = live_write(a, batch, n, 1); /* on failure it disconnects: later batches skip it */
        if (n > 0 && spool_append(a, batch, n) == 0) {
            for (size_t i = 0; i < n; i++) free(batch[i]);
            n = 0;
        }
        for (size_t i = 0; i < n; i++) {
            print_unsaved(batch[i]);
            free(batch[i]);
        }
        unsaved += n;
    }
    if (unsaved)
        log_error("audit: stopping: %zu of %zu remaining records could be written neither to "
                  "redis nor to the spool; each is on stderr as a \"" UNSAVED_PREFIX "\" line",
                  unsaved, total);
    else
        log_warn("audit: stopping: the last %zu records were written at the last attempt", total);
}

/* Whether every worker queue looks empty to the sink (consumer side). */
static int queues_empty(struct audit *a) {
    for (unsigned w = 0; w < a->n_workers; w++) {
        struct audit_queue *q = a->queues[w];
        if (q->pending || atomic_load(&q->head) != atomic_load(&q->tail) ||
            atomic_load(&q->overflow) != NULL)
            return 0;
    }
    return 1;
}

static void sink_wake(struct audit *a) {
    uint64_t one = 1;
    /* nonblocking; EAGAIN only when the counter is full, and then the sink is awake anyway */
    (void)!write(a->wake_fd, &one, sizeof(one));
}

/* After publishing work for the sink (a record, a reopen): wakes it if it sleeps. The fence pairs
 * with sink_wait's: either the sink sees the work before it sleeps, or this sees sleeping set. */
static void sink_nudge(struct audit *a) {
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&a->sleeping, memory_order_relaxed) &&
        atomic_exchange(&a->sleeping, 0))
        sink_wake(a);
}

static uint64_t sync_deadline(const struct sync_file *f, uint64_t deadline) {
    if (f->fd >= 0 && f->unsynced > 0 && f->synced_us + SYNC_EVERY_US < deadline)
        return f->synced_us + SYNC_EVERY_US;
    return deadline;
}

static void sink_gather(struct audit *a) {
    if (!atomic_load(&a->stopping)) {
        struct timespec ts = {0, SINK_GATHER_US * 1000L};
        nanosleep(&ts, NULL);
    }
}

/* The last batch was not full. With records waiting, sleeps SINK_GATHER_US so those arriving
 * meanwhile go out in one batch; with none, until a submit or audit_free wakes the sink (then
 * it gathers too) or until its next deadline (a batched fsync, a reconnect), at most
 * SINK_IDLE_MAX_US. A loaded sink so wakes about 1 / SINK_GATHER_US times a second instead of
 * once a record, an idle one only for its deadlines, and a record waits about SINK_GATHER_US. */
static void sink_wait(struct audit *a) {
    uint64_t now = clock_mono_us(), deadline = now + SINK_IDLE_MAX_US;
    deadline = sync_deadline(&a->file, sync_deadline(&a->segment, deadline));
    if (atomic_load(&a->state) == AUDIT_SPOOLING && a->next_connect_us < deadline)
        deadline = a->next_connect_us > now ? a->next_connect_us : now;
    atomic_store(&a->sleeping, 1);
    atomic_thread_fence(memory_order_seq_cst); /* pairs with sink_nudge's fence */
    if (!queues_empty(a) || atomic_load(&a->stopping) || atomic_load(&a->reopen) ||
        deadline <= now) {
        /* a submit that cleared sleeping first also wrote wake_fd: the next poll takes it */
        atomic_store(&a->sleeping, 0);
        if (deadline > now) sink_gather(a);
        return;
    }
    struct pollfd p = {.fd = a->wake_fd, .events = POLLIN};
    int woken = poll(&p, 1, (int)((deadline - now + 999) / 1000)) > 0;
    atomic_store(&a->sleeping, 0);
    if (!woken) return;
    uint64_t count;
    (void)!read(a->wake_fd, &count, sizeof(count));
    sink_gather(a);
}

/* Once a backlog has drained, gives its memory back to the system. The records of a backlog
 * (worker queues that grew while the sink could not write, held records, a replay's parsed
 * lines) are freed when written, but glibc returns free memory only from the top of a heap: the
 * free chunks among those still in use stay in the process, in the workers' arenas (where
 * audit_submit allocated) and the sink's. RSS then keeps the backlog's peak for good (issue 12:
 * 40 -> 125 MB after a stuck replay; the replay of that time parsed XREVRANGE replies of 20,000
 * entries, a few hundred thousand small allocations per step). malloc_trim(0) releases the free
 * pages of every arena. It walks them under their locks, so it runs only after a backlog, when
 * the sink is idle again, and at most once per TRIM_MIN_US. */
static void sink_trim(struct audit *a, size_t n) {
    if (n >= SINK_BATCH || a->held || atomic_load(&a->state) == AUDIT_REPLAYING) {
        a->backlog = 1;
        return;
    }
    uint64_t now = clock_mono_us();
    if (!a->backlog || now - a->trimmed_us < TRIM_MIN_US) return;
    a->backlog = 0;
    a->trimmed_us = now;
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

static void *sink_main(void *arg) {
    struct audit *a = arg;
    struct audit_node *batch[SINK_BATCH];
    unsigned stop_retries = 0;
    if (a->cfg->redis) try_connect(a);
    for (;;) {
        int stopping = atomic_load(&a->stopping), retried;
        file_reopen(a);
        size_t n = collect(a, batch, SINK_BATCH, &retried);
        if (n > 0) handle_batch(a, batch, n, retried);
        atomic_store(&a->held_records, a->held_n);
        if (!a->holding != !a->held) {
            a->holding = a->held != NULL;
            if (a->holding)
                log_error("audit: the spool refuses records: %llu held in memory and retried; "
                          "the worker queues wait meanwhile and grow (capgate_audit_held_records, "
                          "capgate_audit_overflow_records)",
                          (unsigned long long)atomic_load(&a->held_records));
            else
                log_info("audit: the held records are written; the worker queues drain again");
        }
        enum audit_state s = (enum audit_state)atomic_load(&a->state);
        if (s == AUDIT_SPOOLING && !stopping && clock_mono_us() >= a->next_connect_us)
            try_connect(a);
        for (int i = 0; i < REPLAY_STEPS && !stopping && atomic_load(&a->state) == AUDIT_REPLAYING;
             i++)
            replay_step(a);
        sync_file_sync(a, &a->segment, 0);
        sync_file_sync(a, &a->file, 0);
        sink_trim(a, n);
        if (stopping && n == 0 && !a->held)
            break; /* the workers stopped submitting before audit_free: all is written */
        if (stopping && a->held && ++stop_retries > STOP_RETRIES) break;
        if (a->held && atomic_load(&a->state) != AUDIT_REPLAYING) {
            struct timespec ts = {0, SINK_HELD_RETRY_US * 1000L};
            nanosleep(&ts, NULL);
        } else if (n < SINK_BATCH && atomic_load(&a->state) != AUDIT_REPLAYING) {
            sink_wait(a);
        }
    }
    if (a->held) sink_last_resort(a);
    spool_close_segment(a);
    if (a->replay_fp) {
        fclose(a->replay_fp);
        a->replay_fp = NULL;
    }
    if (a->file.fd >= 0 && a->file.unsynced == 0) a->file.unsynced = 1;
    sync_file_sync(a, &a->file, 1);
    sink_disconnect(a);
    set_state(a, AUDIT_STOPPED);
    return NULL;
}

/* ---- lifecycle ---- */

struct audit *audit_new(const struct config *cfg, unsigned n_workers, char *err, size_t errlen) {
    struct audit *a = calloc(1, sizeof(*a));
    if (!a) {
        snprintf(err, errlen, "audit: out of memory");
        return NULL;
    }
    a->cfg = cfg;
    a->n_workers = n_workers;
    a->segment.fd = -1;
    a->file.fd = -1;
    a->lock_fd = -1;
    a->wake_fd = -1;
    strbuf_init(&a->file_text);
    strbuf_init(&a->access);
    strbuf_init(&a->resp);
    a->backoff_ms = BACKOFF_MIN_MS;
    a->client.id = -1;
    a->fence.id = -1;
    pthread_mutex_init(&a->mem_lock, NULL);
    pthread_mutex_init(&a->query_lock, NULL);
    pthread_cond_init(&a->query_cond, NULL);
    snprintf(a->maxlen, sizeof(a->maxlen), "%lu", cfg->audit.maxlen);
    {
        const char *inst = cfg->instance ? cfg->instance : "capgate";
        size_t i;
        for (i = 0; inst[i] && i < sizeof(a->safe_instance) - 1; i++) {
            char c = inst[i];
            int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                     c == '-' || c == '_';
            a->safe_instance[i] = ok ? c : '_';
        }
        a->safe_instance[i] = '\0';
    }
    a->queues = calloc(n_workers ? n_workers : 1, sizeof(*a->queues));
    if (!a->queues) {
        snprintf(err, errlen, "audit: out of memory");
        goto fail;
    }
    for (unsigned w = 0; w < n_workers; w++) {
        a->queues[w] = aligned_alloc(64, (sizeof(struct audit_queue) + 63) / 64 * 64);
        if (!a->queues[w]) {
            snprintf(err, errlen, "audit: out of memory");
            goto fail;
        }
        memset(a->queues[w], 0, sizeof(struct audit_queue));
        atomic_init(&a->queues[w]->overflow, NULL);
    }
    if (cfg->redis) {
        if (!cfg->audit.spool_dir || mkdir_p(cfg->audit.spool_dir) != 0) {
            snprintf(err, errlen, "audit.spool_dir: cannot create %s: %s",
                     cfg->audit.spool_dir ? cfg->audit.spool_dir : "(none)", strerror(errno));
            goto fail;
        }
        char lock[4096];
        if (spool_path(a, ".lock", lock, sizeof(lock)) != 0 ||
            (a->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) < 0) {
            snprintf(err, errlen, "audit.spool_dir: cannot open %s/.lock: %s", cfg->audit.spool_dir,
                     strerror(errno));
            goto fail;
        }
        if (flock(a->lock_fd, LOCK_EX | LOCK_NB) != 0) {
            /* two processes replaying and appending to one spool would delete each other's
             * segments */
            snprintf(err, errlen, "audit.spool_dir: %s is in use by another capgate process",
                     cfg->audit.spool_dir);
            goto fail;
        }
        unsigned char rnd[8];
        if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
            snprintf(err, errlen, "audit: RAND_bytes failed");
            goto fail;
        }
        hex_encode(rnd, sizeof(rnd), a->run_id);
        snprintf(a->batch_key, sizeof(a->batch_key), "%saudit:batch:%s", cfg->redis->key_prefix,
                 a->run_id);
        atomic_store(&a->spool_depth, spool_count(a));
        if (atomic_load(&a->spool_depth) > 0)
            log_info("audit: %llu spooled records from an earlier run wait for redis",
                     (unsigned long long)atomic_load(&a->spool_depth));
        atomic_store(&a->state, AUDIT_CONNECTING);
    } else {
        a->mem_cap = cfg->audit.maxlen < AUDIT_MEMORY_MAX ? cfg->audit.maxlen : AUDIT_MEMORY_MAX;
        atomic_store(&a->state, AUDIT_MEMORY);
    }
    if (cfg->audit.file) {
        snprintf(a->file_path, sizeof(a->file_path), "%s", cfg->audit.file);
    } else if (!cfg->redis && cfg->audit.spool_dir) {
        /* Without Redis the memory stream ends with the process: records must still survive a
         * restart, so they also go to a JSONL file in the spool directory (the config always
         * names one; only a struct built by hand can leave it out). */
        if (mkdir_p(cfg->audit.spool_dir) != 0 ||
            spool_path(a, "audit.jsonl", a->file_path, sizeof(a->file_path)) != 0) {
            snprintf(err, errlen, "audit.spool_dir: cannot create %s: %s", cfg->audit.spool_dir,
                     strerror(errno));
            goto fail;
        }
    }
    if (a->file_path[0]) {
        a->file.fd = file_open(a->file_path);
        if (a->file.fd < 0) {
            snprintf(err, errlen, "%s: cannot open %s: %s",
                     cfg->audit.file ? "audit.file" : "audit.spool_dir", a->file_path,
                     strerror(errno));
            goto fail;
        }
        a->file.synced_us = clock_mono_us();
    }
    a->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (a->wake_fd < 0) {
        snprintf(err, errlen, "audit: eventfd: %s", strerror(errno));
        goto fail;
    }
    if (thread_start(&a->thread, NULL, sink_main, a) != 0) {
        snprintf(err, errlen, "audit: cannot start the sink thread");
        goto fail;
    }
    a->thread_started = 1;
    return a;
fail:
    audit_free(a);
    return NULL;
}

int audit_submit(struct audit *a, unsigned worker, const struct audit_record *r) {
    if (!a || worker >= a->n_workers) return -1;
    struct audit_node *n = malloc(sizeof(*n));
    if (!n) return -1;
    n->next = NULL;
    n->uncertain = 0;
    n->rec = *r;
    queue_push(a->queues[worker], n);
    sink_nudge(a);
    return 0;
}

void audit_reopen(struct audit *a) {
    if (!a) return;
    atomic_store(&a->reopen, 1);
    sink_nudge(a);
}

void audit_free(struct audit *a) {
    if (!a) return;
    if (a->thread_started) {
        atomic_store(&a->stopping, 1);
        sink_wake(a);
        pthread_join(a->thread, NULL);
    }
    pthread_mutex_lock(&a->query_lock);
    while (a->queries > 0) pthread_cond_wait(&a->query_cond, &a->query_lock);
    pthread_mutex_unlock(&a->query_lock);
    for (unsigned w = 0; a->queues && w < a->n_workers; w++) {
        struct audit_queue *q = a->queues[w];
        if (!q) continue;
        struct audit_node *n;
        size_t unsaved = 0;
        /* The sink drains every queue before it ends (its last resort included), so records
         * are left here only when they were submitted after audit_free began, against the
         * contract; they still go to stderr rather than nowhere. */
        while ((n = queue_pop(q)) != NULL) {
            print_unsaved(n);
            free(n);
            unsaved++;
        }
        if (unsaved)
            log_error("audit: %zu records of worker %u arrived after the sink stopped; each is "
                      "on stderr as a \"" UNSAVED_PREFIX "\" line",
                      unsaved, w);
        free(q);
    }
    free(a->queues);
    if (a->file.fd >= 0) close(a->file.fd);
    if (a->segment.fd >= 0) close(a->segment.fd);
    if (a->lock_fd >= 0) close(a->lock_fd);
    if (a->wake_fd >= 0) close(a->wake_fd);
    strbuf_cleanup(&a->file_text);
    strbuf_cleanup(&a->access);
    strbuf_cleanup(&a->resp);
    if (a->replay_fp) fclose(a->replay_fp);
    sink_disconnect(a);
    free(a->mem);
    pthread_mutex_destroy(&a->mem_lock);
    pthread_mutex_destroy(&a->query_lock);
    pthread_cond_destroy(&a->query_cond);
    free(a);
}

void audit_get_stats(struct audit *a, struct audit_stats *out) {
    memset(out, 0, sizeof(*out));
    for (unsigned w = 0; w < a->n_workers; w++) {
        struct audit_queue *q = a->queues[w];
        uint64_t s = atomic_load_explicit(&q->submitted, memory_order_relaxed);
        uint64_t t = atomic_load_explicit(&q->taken, memory_order_relaxed);
        out->queue_depth += s > t ? s - t : 0;
        uint64_t o = atomic_load_explicit(&q->overflowed, memory_order_relaxed);
        uint64_t ot = atomic_load_explicit(&q->overflow_taken, memory_order_relaxed);
        out->overflowed += o;
        out->overflow_records += o > ot ? o - ot : 0;
    }
    out->spool_depth = atomic_load(&a->spool_depth);
    out->written = atomic_load(&a->written);
    out->spooled = atomic_load(&a->spooled);
    out->replayed = atomic_load(&a->replayed);
    out->redis_errors = atomic_load(&a->redis_errors);
    out->file_errors = atomic_load(&a->file_errors);
    out->held_records = atomic_load(&a->held_records);
}

/* ======================================================================================== */
/* Read side                                                                                */
/* ======================================================================================== */

int audit_query_parse(const char *query_string, struct audit_query *q, char *err, size_t errlen) {
    struct params p;
    int rc = -1;
    params_init(&p);
    memset(q, 0, sizeof(*q));
    q->limit = AUDIT_QUERY_LIMIT_DEFAULT;
    if (query_string && *query_string &&
        params_parse_urlencoded(&p, query_string, strlen(query_string), err, errlen) != 0)
        goto out;
    for (size_t i = 0; i < p.count; i++) {
        const char *name = p.items[i].name, *v = p.items[i].value;
        size_t len = p.items[i].value_len;
        uint64_t u;
        if (strcmp(name, "businessId") == 0 || strcmp(name, "sceneId") == 0) {
            int biz = name[0] == 'b';
            if (num_parse_u32(v, len, biz ? &q->business_id : &q->scene_id) != 0) {
                snprintf(err, errlen, "%s must be an integer 0..4294967295; got \"%.64s\"", name,
                         v);
                goto out;
            }
            *(biz ? &q->has_business_id : &q->has_scene_id) = 1;
        } else if (strcmp(name, "app") == 0) {
            if (len >= sizeof(q->app)) {
                snprintf(err, errlen, "app must be at most %zu bytes", sizeof(q->app) - 1);
                goto out;
            }
            memcpy(q->app, v, len + 1);
        } else if (strcmp(name, "decision") == 0) {
            int found = 0;
            for (int d = 0; d < PIPELINE_DECISION_COUNT; d++)
                found |= strcmp(v, pipeline_decision_name((enum pipeline_decision)d)) == 0;
            if (!found) {
                snprintf(err, errlen,
                         "decision must be one of forwarded, pool, replayed, "
                         "limited, shadow_limited, invalid, unauthorized, denied, "
                         "upstream_error; got \"%.64s\"",
                         v);
                goto out;
            }
            memcpy(q->decision, v, len + 1);
        } else if (strcmp(name, "since") == 0) {
            if (num_parse_range(v, len, 0, UINT64_MAX / 1000, &u) != 0) {
                snprintf(err, errlen, "since must be Unix seconds or milliseconds; got \"%.64s\"",
                         v);
                goto out;
            }
            q->since_ms = u >= 100000000000ull ? u : u * 1000;
        } else if (strcmp(name, "limit") == 0) {
            if (num_parse_range(v, len, 1, AUDIT_QUERY_LIMIT_MAX, &u) != 0) {
                snprintf(err, errlen, "limit must be 1..%d; got \"%.64s\"", AUDIT_QUERY_LIMIT_MAX,
                         v);
                goto out;
            }
            q->limit = (unsigned)u;
        } else {
            snprintf(err, errlen,
                     "unknown parameter %.64s (businessId, sceneId, app, decision, "
                     "since, limit)",
                     name);
            goto out;
        }
    }
    rc = 0;
out:
    params_cleanup(&p);
    return rc;
}

static int query_match(const struct audit_query *q, const struct audit_record *r) {
    if (q->has_business_id && (!r->has_business_id || r->business_id != q->business_id)) return 0;
    if (q->has_scene_id && (!r->has_scene_id || r->scene_id != q->scene_id)) return 0;
    if (q->app[0] && strcmp(q->app, r->app) != 0) return 0;
    if (q->decision[0] && strcmp(q->decision, r->decision) != 0) return 0;
    if (q->since_ms && r->ts_us / 1000 < q->since_ms) return 0;
    return 1;
}

struct query_job {
    struct audit *a;
    struct audit_query q;
    struct event_base *base;
    void (*done)(const char *json, int http_status, void *arg);
    void *arg;
    char *json;
    int status;
};

static int query_add(json_t *records, const struct audit_record *r) {
    json_t *o = record_to_object(r);
    return o ? json_array_append_new(records, o) : -1;
}

/* Newest first over the Redis stream, in chunks. 0, or -1 with err. */
static int query_redis(struct query_job *j, json_t *records, uint64_t *scanned, char *err,
                       size_t errlen) {
    const struct config *cfg = j->a->cfg;
    redisContext *c = redis_open(cfg->redis, err, errlen);
    char end[64] = "+", start[32] = "-";
    int rc = -1;
    if (!c) return -1;
    if (j->q.since_ms) snprintf(start, sizeof(start), "%llu", (unsigned long long)j->q.since_ms);
    while (*scanned < AUDIT_QUERY_SCAN_MAX && json_array_size(records) < j->q.limit) {
        redisReply *r =
            redis_cmd(c, "XREVRANGE %s %s %s COUNT %d", cfg->audit.stream, end, start, 1000);
        if (!r || r->type != REDIS_REPLY_ARRAY) {
            snprintf(err, errlen, "XREVRANGE: %s", r && r->str ? r->str : c->errstr);
            if (r) freeReplyObject(r);
            goto out;
        }
        size_t n = r->elements;
        for (size_t i = 0; i < n && json_array_size(records) < j->q.limit; i++) {
            redisReply *e = r->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
                e->element[0]->type != REDIS_REPLY_STRING ||
                e->element[1]->type != REDIS_REPLY_ARRAY)
                continue;
            (*scanned)++;
            snprintf(end, sizeof(end), "(%s", e->element[0]->str);
            redisReply *kv = e->element[1];
            const char *names[AUDIT_FIELDS_MAX + 8], *values[AUDIT_FIELDS_MAX + 8];
            size_t lens[AUDIT_FIELDS_MAX + 8], m = 0;
            for (size_t k = 0; k + 1 < kv->elements && m < AUDIT_FIELDS_MAX + 8; k += 2) {
                if (kv->element[k]->type != REDIS_REPLY_STRING ||
                    kv->element[k + 1]->type != REDIS_REPLY_STRING)
                    continue;
                names[m] = kv->element[k]->str;
                values[m] = kv->element[k + 1]->str;
                lens[m] = kv->element[k + 1]->len;
                m++;
            }
            struct audit_record rec;
            if (audit_record_from_fields(&rec, m, names, values, lens) == 0 &&
                query_match(&j->q, &rec) && query_add(records, &rec) != 0) {
                freeReplyObject(r);
                snprintf(err, errlen, "out of memory");
                goto out;
            }
        }
        freeReplyObject(r);
        if (n < 1000) break;
    }
    rc = 0;
out:
    redisFree(c);
    return rc;
}

static void query_memory(struct query_job *j, json_t *records, uint64_t *scanned) {
    struct audit *a = j->a;
    pthread_mutex_lock(&a->mem_lock);
    uint64_t kept = a->mem_total < a->mem_cap ? a->mem_total : a->mem_cap;
    for (uint64_t i = 0; i < kept && json_array_size(records) < j->q.limit; i++) {
        const struct audit_record *r = &a->mem[(a->mem_total - 1 - i) % a->mem_cap];
        (*scanned)++;
        if (query_match(&j->q, r) && query_add(records, r) != 0) break;
    }
    pthread_mutex_unlock(&a->mem_lock);
}

static void query_deliver(evutil_socket_t fd, short what, void *arg) {
    struct query_job *j = arg;
    j->done(j->json ? j->json : "{\"error\":\"out of memory\"}", j->json ? j->status : 500, j->arg);
    free(j->json);
    free(j);
}

static void *query_main(void *arg) {
    struct query_job *j = arg;
    struct audit *a = j->a;
    json_t *records = json_array(), *o = NULL;
    uint64_t scanned = 0;
    char err[256] = "";
    if (!records) goto out;
    if (a->cfg->redis) {
        if (query_redis(j, records, &scanned, err, sizeof(err)) != 0) {
            o = json_pack("{s:s}", "error", err);
            j->status = 503;
        }
    } else {
        query_memory(j, records, &scanned);
    }
    if (!o) {
        o = json_pack("{s:O,s:I}", "records", records, "scanned", (json_int_t)scanned);
        j->status = 200;
    }
    if (o) j->json = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
out:
    json_decref(records);
    json_decref(o);
    const struct timeval now = {0, 0};
    if (event_base_once(j->base, -1, EV_TIMEOUT, query_deliver, j, &now) != 0) {
        log_error("audit: cannot deliver a query result to the event loop");
        free(j->json);
        free(j);
    }
    pthread_mutex_lock(&a->query_lock);
    a->queries--;
    pthread_cond_broadcast(&a->query_cond);
    pthread_mutex_unlock(&a->query_lock);
    return NULL;
}

void audit_query(struct audit *a, const struct audit_query *q, struct event_base *base,
                 void (*done)(const char *json, int http_status, void *arg), void *arg) {
    struct query_job *j = calloc(1, sizeof(*j));
    pthread_t t;
    pthread_attr_t attr;
    if (!j) {
        done("{\"error\":\"out of memory\"}", 500, arg);
        return;
    }
    j->a = a;
    j->q = *q;
    j->base = base;
    j->done = done;
    j->arg = arg;
    pthread_mutex_lock(&a->query_lock);
    a->queries++;
    pthread_mutex_unlock(&a->query_lock);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = thread_start(&t, &attr, query_main, j);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        pthread_mutex_lock(&a->query_lock);
        a->queries--;
        pthread_cond_broadcast(&a->query_cond);
        pthread_mutex_unlock(&a->query_lock);
        j->json = strdup("{\"error\":\"cannot start the query thread\"}");
        j->status = 503;
        const struct timeval now = {0, 0};
        if (event_base_once(base, -1, EV_TIMEOUT, query_deliver, j, &now) != 0) {
            free(j->json);
            free(j);
            done("{\"error\":\"cannot start the query thread\"}", 503, arg);
        }
    }
}
