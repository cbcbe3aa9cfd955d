/* log.c: leveled stderr logging. One write(2) per line so lines from worker threads never mix. */
#include "capgate/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "capgate/clock.h"

static const char *log_prog = "capgate";
/* Read on every message by every thread and changed by a reload: one atomic int, relaxed, as
 * nothing else is ordered by it. */
static atomic_int log_min = LOG_LEVEL_INFO;
static const char *const level_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

void log_init(const char *prog, enum log_level min) {
    if (prog) log_prog = prog;
    log_set_level(min);
}

void log_set_level(enum log_level min) {
    atomic_store_explicit(&log_min, (int)min, memory_order_relaxed);
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

void log_msg(enum log_level level, const char *fmt, ...) {
    if ((int)level < atomic_load_explicit(&log_min, memory_order_relaxed)) return;
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s[%d] %s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, log_prog, (int)getpid(),
                     level_names[level]);
    if (n < 0) return;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2) len = sizeof line - 2;
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

/* ---- rate-limited warnings ------------------------------------------------------------------ */

void log_limiter_init(struct log_limiter *l, unsigned interval_s, unsigned quiet_ms) {
    memset(l, 0, sizeof *l);
    pthread_mutex_init(&l->lock, NULL);
    l->interval_s = interval_s;
    l->quiet_ms = quiet_ms;
    atomic_init(&l->active, 0);
}

void log_limiter_destroy(struct log_limiter *l) { pthread_mutex_destroy(&l->lock); }

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
static uint64_t since(uint64_t a, uint64_t b) { return b > a ? b - a : 0; }

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
