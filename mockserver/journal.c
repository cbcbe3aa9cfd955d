/* journal.c: a ring of fixed slots. Each entry's strings live in one allocation
 * (method, action, secret_id, fault, then name/value pairs, all NUL-terminated), so recording a
 * request costs one malloc and one copy. */
#include "journal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "capgate/params.h"

struct journal_entry {
    uint64_t seq;
    uint64_t time_us;
    int code;
    enum journal_verdict verdict;
    unsigned has_action : 1, has_secret_id : 1, has_fault : 1;
    size_t nparams;
    char *buf; /* method\0action\0secret_id\0fault\0(name\0value\0)* */
};

struct journal {
    struct journal_entry *slots;
    size_t capacity;
    size_t head; /* index of the oldest entry */
    size_t count;
    uint64_t total;
};

struct journal *journal_new(size_t capacity) {
    if (capacity == 0) return NULL;
    struct journal *j = calloc(1, sizeof(*j));
    if (!j) return NULL;
    j->slots = calloc(capacity, sizeof(*j->slots));
    if (!j->slots) {
        free(j);
        return NULL;
    }
    j->capacity = capacity;
    return j;
}

void journal_clear(struct journal *j) {
    for (size_t i = 0; i < j->count; i++) {
        struct journal_entry *e = &j->slots[(j->head + i) % j->capacity];
        free(e->buf);
        e->buf = NULL;
    }
    j->head = 0;
    j->count = 0;
    j->total = 0;
}

void journal_free(struct journal *j) {
    if (!j) return;
    journal_clear(j);
    free(j->slots);
    free(j);
}

size_t journal_count(const struct journal *j) {
    return j->count;
}
uint64_t journal_total(const struct journal *j) {
    return j->total;
}

const char *journal_verdict_name(enum journal_verdict v) {
    switch (v) {
    case JOURNAL_SIG_OK: return "ok";
    case JOURNAL_SIG_BAD: return "bad";
    default: return "unchecked";
    }
}

static int is_signature(const struct param *p) {
    return p->name_len == 9 && memcmp(p->name, "Signature", 9) == 0;
}

static char *put(char *dst, const char *s, size_t n) {
    memcpy(dst, s, n);
    dst[n] = '\0';
    return dst + n + 1;
}

int journal_add(struct journal *j, uint64_t time_us, const char *method, const char *action,
                const char *secret_id, enum journal_verdict verdict, int code, const char *fault,
                const struct params *params) {
    if (!method) method = "";
    size_t ml = strlen(method), al = action ? strlen(action) : 0;
    size_t sl = secret_id ? strlen(secret_id) : 0, fl = fault ? strlen(fault) : 0;
    size_t size = ml + al + sl + fl + 4, nparams = 0;
    for (size_t i = 0; params && i < params->count; i++) {
        if (is_signature(&params->items[i])) continue;
        size += params->items[i].name_len + params->items[i].value_len + 2;
        nparams++;
    }
    char *buf = malloc(size);
    if (!buf) return -1;
    char *w = put(buf, method, ml);
    w = put(w, action ? action : "", al);
    w = put(w, secret_id ? secret_id : "", sl);
    w = put(w, fault ? fault : "", fl);
    for (size_t i = 0; params && i < params->count; i++) {
        const struct param *p = &params->items[i];
        if (is_signature(p)) continue;
        w = put(w, p->name, p->name_len);
        w = put(w, p->value, p->value_len);
    }

    struct journal_entry *e;
    if (j->count == j->capacity) {
        e = &j->slots[j->head];
        free(e->buf);
        j->head = (j->head + 1) % j->capacity;
    } else {
        e = &j->slots[(j->head + j->count) % j->capacity];
        j->count++;
    }
    e->seq = ++j->total;
    e->time_us = time_us;
    e->code = code;
    e->verdict = verdict;
    e->has_action = action != NULL;
    e->has_secret_id = secret_id != NULL;
    e->has_fault = fault != NULL;
    e->nparams = nparams;
    e->buf = buf;
    return 0;
}

static json_t *str_or_null(int has, const char *s) {
    return has ? json_string(s) : json_null();
}

static json_t *entry_json(const struct journal_entry *e) {
    const char *method = e->buf;
    const char *action = method + strlen(method) + 1;
    const char *secret_id = action + strlen(action) + 1;
    const char *fault = secret_id + strlen(secret_id) + 1;
    const char *r = fault + strlen(fault) + 1;

    char when[40];
    time_t secs = (time_t)(e->time_us / 1000000u);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + n, sizeof(when) - n, ".%03uZ", (unsigned)(e->time_us / 1000u % 1000u));

    json_t *ps = json_object();
    json_t *o = json_object();
    if (!ps || !o) goto fail;
    for (size_t i = 0; i < e->nparams; i++) {
        const char *name = r;
        const char *value = name + strlen(name) + 1;
        r = value + strlen(value) + 1;
        /* Values were checked as UTF-8 by the parser; json_string refuses anything else. */
        json_t *v = json_string(value);
        if (json_object_set_new(ps, name, v ? v : json_null()) != 0) goto fail;
    }
    json_object_set_new(o, "seq", json_integer((json_int_t)e->seq));
    json_object_set_new(o, "time", json_string(when));
    json_object_set_new(o, "time_us", json_integer((json_int_t)e->time_us));
    json_object_set_new(o, "method", json_string(method));
    json_object_set_new(o, "action", str_or_null(e->has_action, action));
    json_object_set_new(o, "secret_id", str_or_null(e->has_secret_id, secret_id));
    json_object_set_new(o, "signature", json_string(journal_verdict_name(e->verdict)));
    json_object_set_new(o, "code", e->code >= 0 ? json_integer(e->code) : json_null());
    json_object_set_new(o, "fault", str_or_null(e->has_fault, fault));
    json_object_set_new(o, "params", ps);
    return o;
fail:
    json_decref(ps);
    json_decref(o);
    return NULL;
}

static int entry_matches(const struct journal_entry *e, const char *action) {
    if (!action) return 1;
    if (!e->has_action) return 0;
    const char *a = e->buf + strlen(e->buf) + 1;
    return strcmp(a, action) == 0;
}

json_t *journal_to_json(const struct journal *j, size_t limit, const char *action) {
    json_t *out = json_object();
    json_t *arr = json_array();
    if (!out || !arr) goto fail;
    /* Walk back from the newest to find where the limit starts, then emit oldest first. */
    size_t start = 0, matched = 0;
    for (size_t i = j->count; i > 0; i--) {
        const struct journal_entry *e = &j->slots[(j->head + i - 1) % j->capacity];
        if (!entry_matches(e, action)) continue;
        matched++;
        start = i - 1;
        if (limit > 0 && matched == limit) break;
    }
    for (size_t i = start; matched > 0 && i < j->count; i++) {
        const struct journal_entry *e = &j->slots[(j->head + i) % j->capacity];
        if (!entry_matches(e, action)) continue;
        json_t *ej = entry_json(e);
        if (!ej || json_array_append_new(arr, ej) != 0) goto fail;
    }
    json_object_set_new(out, "total", json_integer((json_int_t)j->total));
    json_object_set_new(out, "count", json_integer((json_int_t)json_array_size(arr)));
    json_object_set_new(out, "requests", arr);
    return out;
fail:
    json_decref(arr);
    json_decref(out);
    return NULL;
}
