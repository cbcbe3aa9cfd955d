/* api3req.c: API 3.0 request shapes other than POST JSON (api3req.h). */
#include "capgate/api3req.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "capgate/num.h"
#include "capgate/params.h"
#include "capgate/tc3.h"

int api3req_fail(const char **code, const char *c, char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    *code = c;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* The request's headers with its Host without the port. */
struct no_port {
    tc3_header_fn header;
    void *arg;
    char host[300];
};

static const char *host_without_port(void *arg, const char *lname) {
    struct no_port *np = arg;
    return strcmp(lname, "host") == 0 ? np->host : np->header(np->arg, lname);
}

int api3req_tc3_verify(enum api3_shape s, const char *query, const void *body, size_t body_len,
                       tc3_header_fn header, void *arg, const struct tc3_auth *a,
                       const char *secret_key, uint64_t timestamp, char *err, size_t errlen) {
    struct tc3_request r = {"POST", "/", "", body, body_len, header, arg};
    const char *content_sha = header(arg, "x-tc-content-sha256");
    if (s != API3_SHAPE_JSON) r.query = query ? query : "";
    if (s == API3_SHAPE_QUERY) {
        r.method = "GET";
        r.payload = "";
        r.payload_len = 0;
    }
    if (content_sha && strcmp(content_sha, API3REQ_UNSIGNED_PAYLOAD) == 0) {
        r.payload = API3REQ_UNSIGNED_PAYLOAD;
        r.payload_len = sizeof(API3REQ_UNSIGNED_PAYLOAD) - 1;
    }
    int rc = tc3_verify(&r, a, secret_key, timestamp, err, errlen);
    if (rc != -1) return rc;
    struct no_port np = {header, arg, ""};
    tc3_host_without_port(header(arg, "host"), np.host, sizeof(np.host));
    r.header = host_without_port;
    r.header_arg = &np;
    char err2[256];
    return tc3_verify(&r, a, secret_key, timestamp, err2, sizeof(err2)) == 0 ? 0 : rc;
}

/* 1 when ct is type, alone or followed by ';' and parameters. */
static int type_is(const char *ct, const char *type) {
    size_t n = strlen(type);
    return strncasecmp(ct, type, n) == 0 && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

int api3req_shape(const char *method, const char *content_type, enum api3_shape *out,
                  const char **code, char *err, size_t errlen) {
    const char *ct = content_type ? content_type : "";
    if (strcmp(method, "GET") == 0) {
        *out = API3_SHAPE_QUERY;
        return 0;
    }
    if (strcmp(method, "POST") != 0)
        return api3req_fail(code, "UnsupportedProtocol", err, errlen,
                            "method %.32s is not supported; API 3.0 calls are POST or GET /",
                            method);
    if (type_is(ct, "application/json"))
        *out = API3_SHAPE_JSON;
    else if (type_is(ct, "application/x-www-form-urlencoded"))
        *out = API3_SHAPE_FORM;
    else if (type_is(ct, "multipart/form-data"))
        *out = API3_SHAPE_MULTIPART;
    else
        return api3req_fail(code, "InvalidParameter", err, errlen,
                            "Content-Type %.100s is not supported; use application/json, "
                            "application/x-www-form-urlencoded or multipart/form-data",
                            *ct ? ct : "(none)");
    return 0;
}

int api3req_params(enum api3_shape s, const char *query, const char *content_type, const void *body,
                   size_t len, struct params *p, char *err, size_t errlen) {
    switch (s) {
    case API3_SHAPE_QUERY:
        return query ? params_parse_urlencoded(p, query, strlen(query), err, errlen) : 0;
    case API3_SHAPE_FORM: return params_parse_urlencoded(p, body, len, err, errlen);
    case API3_SHAPE_MULTIPART:
        return params_parse_multipart(p, content_type, body, len, err, errlen);
    default: snprintf(err, errlen, "a JSON body has no parameter list"); return -1;
    }
}

int api3req_is_v1(const struct params *p) {
    return params_find(p, "Signature") != NULL;
}

static const char *const common_names[] = {
    "Action",    "Version",         "Region", "Timestamp", "Nonce",         "SecretId",
    "Signature", "SignatureMethod", "Token",  "Language",  "RequestClient", NULL,
};

int api3req_is_common(const char *name) {
    for (const char *const *n = common_names; *n; n++)
        if (strcmp(*n, name) == 0) return 1;
    return 0;
}

int api3req_v1_public(const struct params *p, struct api3_v1 *out, const char **code, char *err,
                      size_t errlen) {
    static const char *const need[] = {"Action",    "Version", "SecretId",
                                       "Timestamp", "Nonce",   "Signature"};
    const char *v[6];
    for (size_t i = 0; i < 6; i++) {
        v[i] = params_get(p, need[i]);
        if (!v[i] || !*v[i])
            return api3req_fail(code, "MissingParameter", err, errlen,
                                "the parameter %s is missing", need[i]);
    }
    memset(out, 0, sizeof(*out));
    out->action = v[0];
    out->version = v[1];
    out->secret_id = v[2];
    out->signature = v[5];
    if (num_parse_u64z(v[3], &out->timestamp) != 0)
        return api3req_fail(code, "InvalidParameter", err, errlen,
                            "Timestamp %.40s is not a Unix time in seconds", v[3]);
    if (num_parse_u64z(v[4], &out->nonce) != 0)
        return api3req_fail(code, "InvalidParameter", err, errlen,
                            "Nonce %.40s is not an unsigned integer", v[4]);
    out->token = params_get(p, "Token");
    out->method = sign_method_parse(params_get(p, "SignatureMethod"));
    return 0;
}

int api3req_v1_verify(const struct params *p, const char *method, const char *host,
                      const struct sign_key *k, const char *key) {
    char bare[300];
    host = host ? host : "";
    if ((k ? sign_verify_key(p, method, host, "/", k) : sign_verify(p, method, host, "/", key)) ==
        0)
        return 0;
    tc3_host_without_port(host, bare, sizeof(bare));
    if (strcmp(bare, host) == 0) return -1;
    return k ? sign_verify_key(p, method, bare, "/", k) : sign_verify(p, method, bare, "/", key);
}

json_t *api3req_body(const struct params *p, int v1, const struct api3_field *fields,
                     const char *action, const char **code, char *err, size_t errlen) {
    json_t *o = json_object();
    if (!o) {
        api3req_fail(code, "InternalError", err, errlen, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < p->count; i++) {
        const struct param *it = &p->items[i];
        if (v1 && api3req_is_common(it->name)) continue;
        const struct api3_field *k = fields;
        while (k->name && strcmp(k->name, it->name) != 0) k++;
        if (!k->name) {
            api3req_fail(code, "UnknownParameter", err, errlen, "%.64s is not a parameter of %s",
                         it->name, action);
            goto bad;
        }
        json_t *v;
        if (k->type == API3_INT) {
            /* an Integer as text: what a JSON integer would be, so the validator's range check
             * and messages apply; anything else cannot be one */
            const char *s = it->value;
            size_t n = it->value_len, neg = n && s[0] == '-';
            uint64_t u;
            if (n - neg == 0 || n - neg > 19 || num_parse_u64(s + neg, n - neg, &u) != 0 ||
                u > (uint64_t)INT64_MAX) {
                api3req_fail(code, "InvalidParameterValue", err, errlen,
                             "%s must be an Integer; got \"%.40s\"", it->name, s);
                goto bad;
            }
            v = json_integer(neg ? -(json_int_t)u : (json_int_t)u);
        } else {
            v = json_stringn(it->value, it->value_len);
        }
        if (!v || json_object_set_new(o, it->name, v) != 0) {
            api3req_fail(code, "InternalError", err, errlen, "out of memory");
            goto bad;
        }
    }
    return o;
bad:
    json_decref(o);
    return NULL;
}
