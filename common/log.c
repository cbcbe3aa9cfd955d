/* log.c: leveled stderr logging. One write(2) per line so lines from worker threads never mix. */
#include "capgate/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

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
