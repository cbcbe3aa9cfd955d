/* audit_record.c: the audit record: building it from the pipeline's record, its JSON and its
 * stream-entry fields, and reading both back (audit.h). Part of the audit module (audit.c). */
/* SHA256_Init and friends: deprecated in OpenSSL 3, kept (url_digest). */
#define OPENSSL_SUPPRESS_DEPRECATED
#include "audit_internal.h"

#include <openssl/sha.h>

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
    F_STR("api", api),
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

void audit_copy_str(char *dst, size_t size, const char *src) {
    copy_utf8(dst, size, src ? src : "", src ? strlen(src) : 0);
}

void audit_hex_encode(const unsigned char *in, size_t n, char *out) {
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
        audit_copy_str(dst, AUDIT_PII_MAX, value);
        return 0;
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned md_len = 0;
    const char *key = cfg->pii_key ? cfg->pii_key : "";
    if (!HMAC(EVP_sha256(), key, (int)(cfg->pii_key ? cfg->pii_key_len : 0),
              (const unsigned char *)value, strlen(value), md, &md_len) ||
        md_len < 16)
        return -1;
    audit_hex_encode(md, 16, dst);
    return 0;
}

/* The url digest: SHA-256 on a context on the stack. SHA256_Init and friends are deprecated in
 * OpenSSL 3 but allocate nothing, where an EVP digest allocated its provider context for every
 * record (the same choice as sign.c's HMAC states). md = SHA-256(data); 0/-1. */
static int url_digest(const char *data, size_t len, unsigned char md[SHA256_DIGEST_LENGTH]) {
    SHA256_CTX c;
    return SHA256_Init(&c) && SHA256_Update(&c, data, len) && SHA256_Final(md, &c) ? 0 : -1;
}

/* The per-user fields of the record, in this order. */
static const struct {
    const char *name;
    size_t len;
} pii_names[] = {
    {"uid", 3}, {"userIp", 6}, {"imei", 4}, {"macAddress", 10}, {"associateAccount", 16},
};
#define N_PII (sizeof(pii_names) / sizeof(pii_names[0]))

/* values[k] = the first value of pii_names[k] in p (as params_get), in one pass over p. */
static void pii_values(const struct params *p, const char *values[N_PII]) {
    size_t found = 0;
    for (size_t i = 0; i < p->count && found < N_PII; i++) {
        const struct param *it = &p->items[i];
        for (size_t k = 0; k < N_PII; k++) {
            if (values[k] || it->name_len != pii_names[k].len ||
                memcmp(it->name, pii_names[k].name, it->name_len) != 0)
                continue;
            values[k] = it->value;
            found++;
            break;
        }
    }
}

int audit_record_init(struct audit_record *r, const struct pipeline_record *pr,
                      const struct params *request_params, const char *reply_url,
                      const struct config_audit *cfg, const char *instance) {
    memset(r, 0, sizeof(*r));
    r->ts_us = pr->ts_us;
    audit_copy_str(r->request_id, sizeof(r->request_id), pr->request_id);
    audit_copy_str(r->instance, sizeof(r->instance), instance);
    audit_copy_str(r->app, sizeof(r->app), pr->app);
    audit_copy_str(r->secret_id, sizeof(r->secret_id), pr->secret_id);
    audit_copy_str(r->client_ip, sizeof(r->client_ip), pr->client_ip);
    audit_copy_str(r->action, sizeof(r->action), pr->action);
    audit_copy_str(r->api, sizeof(r->api), pr->api3 ? "v3" : "v2");
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
    audit_copy_str(r->decision, sizeof(r->decision), pipeline_decision_name(pr->decision));
    audit_copy_str(r->rule, sizeof(r->rule), pr->rule);
    /* A reply with no API code (CaptchaQuery script=1's JavaScript) has none in the record. */
    r->has_code = !pr->no_code;
    r->code = r->has_code ? pr->code : 0;
    audit_copy_str(r->code_desc, sizeof(r->code_desc), pr->code_desc);
    r->upstream_status = pr->upstream_status;
    r->http_status = pr->http_status;
    r->latency_us = pr->latency_us;
    r->upstream_latency_us = pr->upstream_latency_us;
    if (request_params) {
        const char *pii[N_PII] = {NULL};
        pii_values(request_params, pii);
        if (pii_field(r->uid, pii[0], cfg) != 0 || pii_field(r->user_ip, pii[1], cfg) != 0 ||
            pii_field(r->imei, pii[2], cfg) != 0 || pii_field(r->mac_address, pii[3], cfg) != 0 ||
            pii_field(r->associate_account, pii[4], cfg) != 0)
            return -1;
    }
    if (reply_url && *reply_url) {
        unsigned char md[SHA256_DIGEST_LENGTH];
        if (url_digest(reply_url, strlen(reply_url), md) != 0) return -1;
        audit_hex_encode(md, 8, r->url_sha256);
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

json_t *audit_record_to_object(const struct audit_record *r) {
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

/* The compact JSON object of r, byte for byte what json_dumps(audit_record_to_object(r),
 * JSON_COMPACT | JSON_PRESERVE_ORDER) gives, written straight from the fixed-size record (the
 * sink writes one per record to audit.file or the spool). With uncertain, ,"uncertain":true
 * ends it, as a spool line has it. -1 when a string is not valid UTF-8 (jansson refuses it too)
 * or on OOM. */
int audit_record_strbuf(const struct audit_record *r, int uncertain, struct strbuf *out) {
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
    return audit_record_strbuf(r, 0, out);
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

int audit_record_from_entry(struct audit_record *r, size_t n, const char *const *names,
                            const char *const *values, const size_t *value_lens) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(names[i], AUDIT_STREAM_FIELD) == 0)
            return audit_record_from_json(values[i], value_lens[i], r);
    return audit_record_from_fields(r, n, names, values, value_lens);
}

int audit_record_from_object(json_t *o, struct audit_record *r) {
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
    if (o && json_is_object(o)) rc = audit_record_from_object(o, r);
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
