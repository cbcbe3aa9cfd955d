/* faults.c: fault rules. Validation is strict because a typo in a test's fault ("netwrok") would
 * otherwise silently inject nothing and let a test pass for the wrong reason. */
#include "faults.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capgate/apierr.h"

static const char *const network_names[] = {
    NULL, "reset", "close", "stall", "malformed_json", "http_500",
};
#define NETWORK_COUNT (sizeof(network_names) / sizeof(network_names[0]))

const char *faults_network_name(enum fault_network n) {
    return (size_t)n < NETWORK_COUNT ? network_names[n] : NULL;
}

void faults_init(struct faults *f) {
    f->rules = NULL;
    f->count = 0;
    f->cap = 0;
}

static void rule_cleanup(struct fault_rule *r) {
    free(r->action);
    free(r->secret_id);
    r->action = NULL;
    r->secret_id = NULL;
}

void faults_clear(struct faults *f) {
    for (size_t i = 0; i < f->count; i++) rule_cleanup(&f->rules[i]);
    f->count = 0;
}

void faults_cleanup(struct faults *f) {
    faults_clear(f);
    free(f->rules);
    faults_init(f);
}

/* Optional string-or-null field; *out gets a copy or NULL. */
static int parse_match(const json_t *v, const char *field, const char *where, char **out, char *err,
                       size_t errlen) {
    *out = NULL;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_string(v) || json_string_length(v) == 0) {
        snprintf(err, errlen, "%s%s must be a non-empty string or null", where, field);
        return -1;
    }
    *out = strdup(json_string_value(v));
    if (!*out) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

static int parse_rule(const json_t *o, const char *where, struct fault_rule *r, char *err,
                      size_t errlen) {
    memset(r, 0, sizeof(*r));
    r->probability = 1.0;
    r->times = -1;
    if (!json_is_object(o)) {
        snprintf(err, errlen, "%sa fault rule must be a JSON object", where);
        return -1;
    }
    static const char *const known[] = {"action",  "secret_id",   "code", "delay_ms",
                                        "network", "probability", "times"};
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)o, key, v) {
        size_t i;
        for (i = 0; i < sizeof(known) / sizeof(known[0]); i++)
            if (strcmp(key, known[i]) == 0) break;
        if (i == sizeof(known) / sizeof(known[0])) {
            snprintf(err, errlen,
                     "%s%s is not a fault rule field (known: action, secret_id, "
                     "code, delay_ms, network, probability, times)",
                     where, key);
            return -1;
        }
    }
    if (parse_match(json_object_get(o, "action"), "action", where, &r->action, err, errlen) ||
        parse_match(json_object_get(o, "secret_id"), "secret_id", where, &r->secret_id, err,
                    errlen))
        goto fail;

    v = json_object_get(o, "code");
    if (v && !json_is_null(v)) {
        json_int_t c = json_is_integer(v) ? json_integer_value(v) : -1;
        if (c <= 0 || c > 99999 || !apierr_known((int)c)) {
            snprintf(err, errlen,
                     "%scode must be a known API error code (4000, 4100, 4300, "
                     "4400, 4500, 4600, 5000, 5100, 6000, 6100, 6200, ...)",
                     where);
            goto fail;
        }
        r->code = (int)c;
    }
    v = json_object_get(o, "delay_ms");
    if (v && !json_is_null(v)) {
        json_int_t d = json_is_integer(v) ? json_integer_value(v) : -1;
        if (d < 0 || d > (json_int_t)FAULTS_MAX_DELAY_MS) {
            snprintf(err, errlen, "%sdelay_ms must be an integer from 0 to %u", where,
                     FAULTS_MAX_DELAY_MS);
            goto fail;
        }
        r->delay_ms = (uint32_t)d;
    }
    v = json_object_get(o, "network");
    if (v && !json_is_null(v)) {
        size_t i = 1;
        if (json_is_string(v))
            for (; i < NETWORK_COUNT; i++)
                if (strcmp(json_string_value(v), network_names[i]) == 0) break;
        if (!json_is_string(v) || i == NETWORK_COUNT) {
            snprintf(err, errlen,
                     "%snetwork must be one of reset, close, stall, "
                     "malformed_json, http_500, or null",
                     where);
            goto fail;
        }
        r->network = (enum fault_network)i;
    }
    v = json_object_get(o, "probability");
    if (v && !json_is_null(v)) {
        double p = json_is_number(v) ? json_number_value(v) : -1.0;
        if (!(p >= 0.0 && p <= 1.0)) {
            snprintf(err, errlen, "%sprobability must be a number from 0 to 1", where);
            goto fail;
        }
        r->probability = p;
    }
    v = json_object_get(o, "times");
    if (v && !json_is_null(v)) {
        json_int_t t = json_is_integer(v) ? json_integer_value(v) : 0;
        if (t < 1) {
            snprintf(err, errlen, "%stimes must be a positive integer or null", where);
            goto fail;
        }
        r->times = (int64_t)t;
    }
    if (r->code && r->network != FAULT_NET_NONE) {
        snprintf(err, errlen,
                 "%scode and network exclude each other: a network fault gives "
                 "no JSON answer",
                 where);
        goto fail;
    }
    if (!r->code && !r->delay_ms && r->network == FAULT_NET_NONE) {
        snprintf(err, errlen, "%sa fault rule needs an effect: code, delay_ms or network", where);
        goto fail;
    }
    return 0;
fail:
    rule_cleanup(r);
    return -1;
}

int faults_add_json(struct faults *f, const json_t *v, char *err, size_t errlen) {
    int rc = -1;
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    struct fault_rule *parsed = calloc(n ? n : 1, sizeof(*parsed));
    size_t done = 0;
    if (!parsed) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    if (json_is_array(v) && n == 0) {
        snprintf(err, errlen, "faults must not be an empty array");
        goto out;
    }
    if (f->count + n > FAULTS_MAX_RULES) {
        snprintf(err, errlen, "too many fault rules: at most %d", FAULTS_MAX_RULES);
        goto out;
    }
    for (; done < n; done++) {
        char where[32] = "";
        const json_t *o = v;
        if (json_is_array(v)) {
            snprintf(where, sizeof(where), "faults[%zu].", done);
            o = json_array_get(v, done);
        }
        if (parse_rule(o, where, &parsed[done], err, errlen) != 0) goto out;
    }
    if (f->count + n > f->cap) {
        size_t cap = f->cap ? f->cap : 8;
        while (cap < f->count + n) cap *= 2;
        struct fault_rule *nr = realloc(f->rules, cap * sizeof(*nr));
        if (!nr) {
            snprintf(err, errlen, "out of memory");
            goto out;
        }
        f->rules = nr;
        f->cap = cap;
    }
    memcpy(f->rules + f->count, parsed, n * sizeof(*parsed));
    f->count += n;
    done = 0; /* ownership moved */
    rc = 0;
out:
    for (size_t i = 0; i < done; i++) rule_cleanup(&parsed[i]);
    free(parsed);
    return rc;
}

int faults_match(struct faults *f, const char *action, const char *secret_id, faults_draw_fn draw,
                 void *draw_arg, struct fault_effect *out) {
    for (size_t i = 0; i < f->count; i++) {
        struct fault_rule *r = &f->rules[i];
        if (r->action && (!action || strcmp(r->action, action) != 0)) continue;
        if (r->secret_id && (!secret_id || strcmp(r->secret_id, secret_id) != 0)) continue;
        if (r->probability <= 0.0) continue;
        if (r->probability < 1.0 && !(draw(draw_arg) < r->probability)) continue;
        out->code = r->code;
        out->delay_ms = r->delay_ms;
        out->network = r->network;
        r->fired++;
        if (r->times > 0 && --r->times == 0) {
            rule_cleanup(r);
            memmove(r, r + 1, (f->count - i - 1) * sizeof(*r));
            f->count--;
        }
        return 1;
    }
    return 0;
}

static json_t *str_or_null(const char *s) {
    return s ? json_string(s) : json_null();
}

json_t *faults_to_json(const struct faults *f) {
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < f->count; i++) {
        const struct fault_rule *r = &f->rules[i];
        const char *net = faults_network_name(r->network);
        json_t *o = json_pack(
            "{s:o, s:o, s:o, s:I, s:o, s:f, s:o, s:I}", "action", str_or_null(r->action),
            "secret_id", str_or_null(r->secret_id), "code",
            r->code ? json_integer(r->code) : json_null(), "delay_ms", (json_int_t)r->delay_ms,
            "network", str_or_null(net), "probability", r->probability, "times",
            r->times >= 0 ? json_integer(r->times) : json_null(), "fired", (json_int_t)r->fired);
        if (!o || json_array_append_new(arr, o) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

void faults_describe(const struct fault_effect *e, char *buf, size_t len) {
    const char *net = faults_network_name(e->network);
    char delay[32] = "", what[32] = "";
    if (e->delay_ms) snprintf(delay, sizeof(delay), "delay_ms %u", e->delay_ms);
    if (e->code)
        snprintf(what, sizeof(what), "code %d", e->code);
    else if (net)
        snprintf(what, sizeof(what), "%s", net);
    snprintf(buf, len, "%s%s%s", delay, delay[0] && what[0] ? ", " : "", what);
}
