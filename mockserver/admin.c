/* admin.c: the mock's admin API under /__admin/ (JSON in and out, on every listener): health,
 * reset, the request journal, fault rules and solving a captcha without a browser. Errors use
 * the API's JSON shape with a fitting HTTP status. */
#include "mock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capgate/apierr.h"
#include "capgate/httpd.h"
#include "capgate/num.h"
#include "capgate/params.h"
#include "capgate/version.h"

static void method_not_allowed(struct httpd_req *req, const char *allowed) {
    httpd_add_header(req, "Allow", allowed);
    mock_reply_error(req, 405, APIERR_INVALID_PARAMETER, "method %s is not allowed on %s; use %s",
                     req->method, req->path, allowed);
}

/* The request body as JSON, or NULL after replying with the error. New reference. */
static json_t *body_json(struct httpd_req *req) {
    json_error_t jerr;
    json_t *v = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!v) {
        mock_reply_error(req, 400, APIERR_INVALID_PARAMETER,
                         "request body is not valid JSON: %s (line %d, column %d)", jerr.text,
                         jerr.line, jerr.column);
    }
    return v;
}

static void health(struct mock *m, struct httpd_req *req) {
    json_t *o = json_pack(
        "{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "status", "ok", "version",
        version_string(), "api_calls", (json_int_t)m->api_calls, "urls",
        (json_int_t)etable_count(m->urls), "tickets", (json_int_t)etable_count(m->tickets),
        "nonces", (json_int_t)etable_count(m->nonces), "journal",
        (json_int_t)journal_count(m->journal), "faults", (json_int_t)m->faults.count, "pending",
        (json_int_t)m->pending, "connections", (json_int_t)httpd_connections(m->httpd));
    mock_reply_json(req, 200, o);
}

static void requests_get(struct mock *m, struct httpd_req *req) {
    struct params q;
    char err[256];
    uint64_t limit = 0;
    params_init(&q);
    if (req->query &&
        params_parse_urlencoded(&q, req->query, strlen(req->query), err, sizeof(err)) != 0) {
        mock_reply_error(req, 400, APIERR_INVALID_PARAMETER, "%s", err);
        goto out;
    }
    for (size_t i = 0; i < q.count; i++) {
        const char *n = q.items[i].name;
        if (strcmp(n, "limit") != 0 && strcmp(n, "action") != 0) {
            mock_reply_error(req, 400, APIERR_INVALID_PARAMETER,
                             "unknown query parameter %s (known: limit, action)", n);
            goto out;
        }
    }
    const char *l = params_get(&q, "limit");
    if (l && num_parse_range(l, strlen(l), 1, JOURNAL_DEFAULT_CAPACITY, &limit) != 0) {
        mock_reply_error(req, 400, APIERR_INVALID_PARAMETER,
                         "limit must be an integer from 1 to %d", JOURNAL_DEFAULT_CAPACITY);
        goto out;
    }
    const char *action = params_get(&q, "action");
    mock_reply_json(req, 200,
                    journal_to_json(m->journal, (size_t)limit, action && *action ? action : NULL));
out:
    params_cleanup(&q);
}

static void faults_post(struct mock *m, struct httpd_req *req) {
    char err[512];
    json_t *v = body_json(req);
    if (!v) return;
    size_t before = m->faults.count;
    if (faults_add_json(&m->faults, v, err, sizeof(err)) != 0) {
        mock_reply_error(req, 400, APIERR_INVALID_PARAMETER, "%s", err);
    } else {
        mock_reply_json(req, 200,
                        json_pack("{s:I, s:o}", "added", (json_int_t)(m->faults.count - before),
                                  "faults", faults_to_json(&m->faults)));
    }
    json_decref(v);
}

/* The asig of {"url": "..."} (the URL CaptchaIframeQuery returned) or {"asig": "..."}, or
 * {"appid": N}: a new captcha of that CaptchaAppId (API 3.0's TCaptcha.js flow) is issued. */
static int solve_target(struct mock *m, const json_t *v, char *asig, size_t len, char *err,
                        size_t errlen) {
    if (!json_is_object(v)) goto bad;
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)v, key, val) {
        if (strcmp(key, "url") != 0 && strcmp(key, "asig") != 0 && strcmp(key, "appid") != 0) {
            snprintf(err, errlen, "%s is not a field of solve (known: url, asig, appid)", key);
            return -1;
        }
    }
    json_t *appid = json_object_get(v, "appid");
    if (appid) {
        if (!json_is_integer(appid) || json_integer_value(appid) <= 0) {
            snprintf(err, errlen, "appid must be a positive integer");
            return -1;
        }
        if (len <= MOCK_ASIG_LEN ||
            mock_issue_captcha(m, (uint64_t)json_integer_value(appid), asig) != 0) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        return 0;
    }
    const char *url = json_string_value(json_object_get(v, "url"));
    const char *a = json_string_value(json_object_get(v, "asig"));
    if (url) {
        const char *q = strchr(url, '?');
        const char *p = q ? q + 1 : NULL;
        a = NULL;
        while (p && *p) {
            if (strncmp(p, "asig=", 5) == 0) {
                a = p + 5;
                break;
            }
            p = strchr(p, '&');
            if (p) p++;
        }
        if (!a) {
            snprintf(err, errlen, "url has no asig parameter");
            return -1;
        }
        size_t n = strcspn(a, "&#");
        if (n == 0 || n >= len) goto bad;
        memcpy(asig, a, n);
        asig[n] = '\0';
        return 0;
    }
    if (a && *a && strlen(a) < len) {
        snprintf(asig, len, "%s", a);
        return 0;
    }
bad:
    snprintf(err, errlen,
             "solve takes {\"url\": \"<captcha URL>\"}, {\"asig\": \"...\"} or "
             "{\"appid\": N}");
    return -1;
}

static void solve(struct mock *m, struct httpd_req *req) {
    char asig[MOCK_ASIG_LEN + 1], ticket[MOCK_TICKET_LEN + 1], randstr[MOCK_RANDSTR_LEN + 1];
    char err[256];
    int status = 400;
    json_t *v = body_json(req);
    if (!v) return;
    if (solve_target(m, v, asig, sizeof(asig), err, sizeof(err)) != 0) {
        mock_reply_error(req, 400, APIERR_INVALID_PARAMETER, "%s", err);
    } else if (mock_solve(m, asig, ticket, randstr, &status, err, sizeof(err)) != 0) {
        mock_reply_error(req, status, status == 404 ? APIERR_NOT_FOUND : APIERR_OPERATION_FAILED,
                         "%s", err);
    } else {
        void *u = NULL;
        json_int_t appid = etable_find(m->urls, asig, strlen(asig), &u)
                               ? (json_int_t)((struct mock_url *)u)->appid
                               : 0;
        mock_reply_json(req, 200,
                        json_pack("{s:s, s:s, s:s, s:I}", "ticket", ticket, "randstr", randstr,
                                  "asig", asig, "appid", appid));
    }
    json_decref(v);
}

void admin_handle(struct mock *m, struct httpd_req *req) {
    const char *what = req->path + strlen(MOCK_ADMIN_PREFIX);
    const char *method = req->method;
    int get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
    int del = strcmp(method, "DELETE") == 0;
    if (strcmp(what, "health") == 0) {
        if (get)
            health(m, req);
        else
            method_not_allowed(req, "GET");
    } else if (strcmp(what, "reset") == 0) {
        if (!post) {
            method_not_allowed(req, "POST");
            return;
        }
        mock_reset(m);
        mock_reply_json(req, 200, json_pack("{s:s}", "status", "ok"));
    } else if (strcmp(what, "requests") == 0) {
        if (get) {
            requests_get(m, req);
        } else if (del) {
            size_t n = journal_count(m->journal);
            journal_clear(m->journal);
            mock_reply_json(req, 200, json_pack("{s:I}", "deleted", (json_int_t)n));
        } else {
            method_not_allowed(req, "GET, DELETE");
        }
    } else if (strcmp(what, "faults") == 0) {
        if (get) {
            mock_reply_json(req, 200, json_pack("{s:o}", "faults", faults_to_json(&m->faults)));
        } else if (post) {
            faults_post(m, req);
        } else if (del) {
            size_t n = m->faults.count;
            faults_clear(&m->faults);
            mock_reply_json(req, 200, json_pack("{s:I}", "deleted", (json_int_t)n));
        } else {
            method_not_allowed(req, "GET, POST, DELETE");
        }
    } else if (strcmp(what, "solve") == 0) {
        if (post)
            solve(m, req);
        else
            method_not_allowed(req, "POST");
    } else {
        mock_reply_error(req, 404, APIERR_NOT_FOUND,
                         "no admin resource %.200s (known: health, "
                         "reset, requests, faults, solve)",
                         req->path);
    }
}
