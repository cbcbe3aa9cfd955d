/* log.c: leveled stderr logging. One write(2) per line so lines from worker threads never mix. */
#include "capgate/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "capgate/clock.h"

static const char *log_prog = "capgate";
/* Read on every message by every thread and changed by a reload: one atomic int, relaxed, as
 * nothing else is ordered by it. */
static atomic_int log_min = LOG_LEVEL_INFO;
static atomic_int log_json = 0;    /* "log_format": "json" */
static atomic_int log_journal = 0; /* stderr is the journal: no timestamp, a <N> priority */
static const char *const level_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
static const char *const level_json[] = {"debug", "info", "warn", "error"};
/* syslog priorities (sd-daemon(3) prefixes): debug 7, info 6, warning 4, err 3. */
static const char *const level_prio[] = {"<7>", "<6>", "<4>", "<3>"};

/* systemd sets JOURNAL_STREAM for a service whose stderr is the journal, and INVOCATION_ID for
 * every service it runs (systemd.exec(5)); the journal stamps each line itself, so ours would be
 * a second timestamp. */
static int under_journal(void) {
    const char *js = getenv("JOURNAL_STREAM"), *inv = getenv("INVOCATION_ID");
    return (js && *js) || (inv && *inv);
}

void log_init(const char *prog, enum log_level min) {
    if (prog) log_prog = prog;
    atomic_store_explicit(&log_journal, under_journal(), memory_order_relaxed);
    log_set_level(min);
}

void log_set_level(enum log_level min) {
    atomic_store_explicit(&log_min, (int)min, memory_order_relaxed);
}

void log_set_json(int json) {
    atomic_store_explicit(&log_json, json != 0, memory_order_relaxed);
}

int log_is_json(void) {
    return atomic_load_explicit(&log_json, memory_order_relaxed);
}

int log_level_parse(const char *name, enum log_level *out) {
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; name && i < 4; i++) {
        if (strcasecmp(name, names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

enum log_level log_get_level(void) {
    return (enum log_level)atomic_load_explicit(&log_min, memory_order_relaxed);
}

/* Appends s to b[*n..cap) as the inside of a JSON string; stops short when full. */
static void json_escape_into(char *b, size_t cap, size_t *n, const char *s) {
    static const char hex[] = "0123456789abcdef";
    for (const unsigned char *p = (const unsigned char *)s; *p && *n + 7 < cap; p++) {
        if (*p == '"' || *p == '\\') {
            b[(*n)++] = '\\';
            b[(*n)++] = (char)*p;
        } else if (*p < 0x20) {
            b[(*n)++] = '\\';
            b[(*n)++] = 'u';
            b[(*n)++] = '0';
            b[(*n)++] = '0';
            b[(*n)++] = hex[*p >> 4];
            b[(*n)++] = hex[*p & 15];
        } else {
            b[(*n)++] = (char)*p;
        }
    }
}

/* One line: text in the text format; in JSON {"ts","level","prog","pid","msg": text} plus the
 * members of fields (a JSON object's text, or NULL). Under the journal no "ts" and no time.
 * Into line[LOG_LINE_MAX], '\n' included; its length, 0 on error. */
static size_t log_format(enum log_level level, const char *text, const char *fields,
                         char line[LOG_LINE_MAX]) {
    const size_t cap = LOG_LINE_MAX;
    size_t n = 0;
    int journal = atomic_load_explicit(&log_journal, memory_order_relaxed);
    int json = atomic_load_explicit(&log_json, memory_order_relaxed);
    char ts_text[80] = "";
    if (!journal) {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        snprintf(ts_text, sizeof ts_text, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
    }
    int m;
    if (json) {
        m = snprintf(line, cap,
                     "%s{%s%s%s\"level\":\"%s\",\"prog\":\"%s\",\"pid\":%d,"
                     "\"msg\":\"",
                     journal ? level_prio[level] : "", journal ? "" : "\"ts\":\"", ts_text,
                     journal ? "" : "\",", level_json[level], log_prog, (int)getpid());
        if (m < 0) return 0;
        n = (size_t)m;
        json_escape_into(line, cap - 4, &n, text);
        line[n++] = '"';
        if (fields && fields[0] == '{' && fields[1] && fields[1] != '}') {
            size_t flen = strlen(fields + 1); /* members and the closing brace */
            if (n + 1 + flen < cap - 2) {
                line[n++] = ',';
                memcpy(line + n, fields + 1, flen);
                n += flen;
            } else {
                line[n++] = '}';
            }
        } else {
            line[n++] = '}';
        }
    } else {
        if (journal)
            m = snprintf(line, cap, "%s%s ", level_prio[level], level_names[level]);
        else
            m = snprintf(line, cap, "%s %s[%d] %s ", ts_text, log_prog, (int)getpid(),
                         level_names[level]);
        if (m < 0) return 0;
        n = (size_t)m;
        size_t tlen = strlen(text);
        if (tlen > cap - 2 - n) tlen = cap - 2 - n;
        memcpy(line + n, text, tlen);
        n += tlen;
    }
    if (n > cap - 1) n = cap - 1;
    line[n++] = '\n';
    return n;
}

static void log_write(enum log_level level, const char *text, const char *fields) {
    char line[LOG_LINE_MAX];
    size_t n = log_format(level, text, fields, line);
    if (n == 0) return;
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w;
}

size_t log_line(enum log_level level, const char *text, const char *fields,
                char out[LOG_LINE_MAX]) {
    if ((int)level < atomic_load_explicit(&log_min, memory_order_relaxed)) return 0;
    return log_format(level, text, fields, out);
}

void log_msg(enum log_level level, const char *fmt, ...) {
    if ((int)level < atomic_load_explicit(&log_min, memory_order_relaxed)) return;
    char text[2048];
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (m < 0) return;
    log_write(level, text, NULL);
}

void log_fields(enum log_level level, const char *text, const char *fields) {
    if ((int)level < atomic_load_explicit(&log_min, memory_order_relaxed)) return;
    log_write(level, text, fields);
}

/* ---- rate-limited warnings ------------------------------------------------------------------ */

void log_limiter_init(struct log_limiter *l, unsigned interval_s, unsigned quiet_ms) {
    memset(l, 0, sizeof *l);
    pthread_mutex_init(&l->lock, NULL);
    l->interval_s = interval_s;
    l->quiet_ms = quiet_ms;
    atomic_init(&l->active, 0);
}

void log_limiter_destroy(struct log_limiter *l) {
    pthread_mutex_destroy(&l->lock);
}

/* The text with every run of digits replaced by one '#': what makes two warnings "the same". */
static void limiter_key(const char *text, char *key, size_t keylen) {
    size_t k = 0;
    for (const char *p = text; *p && k + 1 < keylen; p++) {
        if (*p >= '0' && *p <= '9') {
            if (k == 0 || key[k - 1] != '#') key[k++] = '#';
        } else {
            key[k++] = *p;
        }
    }
    key[k] = '\0';
}

/* b - a, or 0 when a is later: callers read the clock before taking the lock, so a thread can
 * arrive with a time older than the one another thread just recorded. */
static uint64_t since(uint64_t a, uint64_t b) {
    return b > a ? b - a : 0;
}

int log_limited_v(struct log_limiter *l, uint64_t now_us, int ok, enum log_level level,
                  const char *fmt, va_list ap) {
    char text[1024];
    char key[sizeof l->key];
    int logged = 0;
    if (ok && !atomic_load_explicit(&l->active, memory_order_relaxed)) return 0;
    vsnprintf(text, sizeof text, fmt, ap);
    pthread_mutex_lock(&l->lock);
    uint64_t interval_us = (uint64_t)l->interval_s * 1000000u;
    if (ok) {
        /* A success while failures still come (one accept got a descriptor another just freed)
         * is no recovery yet: the episode goes on. */
        if (atomic_load_explicit(&l->active, memory_order_relaxed) &&
            since(l->last_seen_us, now_us) >= (uint64_t)l->quiet_ms * 1000u) {
            log_msg(level, "%s (the warning occurred %llu times over %llu s)", text,
                    (unsigned long long)l->total,
                    (unsigned long long)(since(l->since_us, l->last_seen_us) / 1000000u));
            atomic_store_explicit(&l->active, 0, memory_order_relaxed);
            l->key[0] = '\0';
            logged = 1;
        }
        pthread_mutex_unlock(&l->lock);
        return logged;
    }
    limiter_key(text, key, sizeof key);
    if (!atomic_load_explicit(&l->active, memory_order_relaxed)) {
        atomic_store_explicit(&l->active, 1, memory_order_relaxed);
        l->since_us = now_us;
        l->total = 0;
        l->repeats = 0;
        log_msg(level, "%s", text);
        logged = 1;
    } else if (strcmp(key, l->key) != 0) {
        if (l->repeats)
            log_msg(level, "%s (the previous warning repeated %llu more times)", text,
                    (unsigned long long)l->repeats);
        else
            log_msg(level, "%s", text);
        l->repeats = 0;
        logged = 1;
    } else if (since(l->last_line_us, now_us) >= interval_us) {
        log_msg(level, "%s (repeated %llu times in the last %llu s)", text,
                (unsigned long long)(l->repeats + 1),
                (unsigned long long)(since(l->last_line_us, now_us) / 1000000u));
        l->repeats = 0;
        logged = 1;
    } else {
        l->repeats++;
    }
    if (logged) {
        memcpy(l->key, key, sizeof l->key);
        l->last_line_us = now_us;
    }
    l->total++;
    if (now_us > l->last_seen_us) l->last_seen_us = now_us;
    pthread_mutex_unlock(&l->lock);
    return logged;
}

void log_limited(struct log_limiter *l, enum log_level level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_limited_v(l, clock_mono_us(), 0, level, fmt, ap);
    va_end(ap);
}

void log_limited_ok(struct log_limiter *l, enum log_level level, const char *fmt, ...) {
    if (!atomic_load_explicit(&l->active, memory_order_relaxed)) return;
    va_list ap;
    va_start(ap, fmt);
    log_limited_v(l, clock_mono_us(), 1, level, fmt, ap);
    va_end(ap);
}
