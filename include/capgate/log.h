/* log.h: leveled logging to stderr, one line per message, safe from any thread.
 * Format: 2026-11-28T17:43:42.123Z capgate[1234] INFO message
 * Under systemd (JOURNAL_STREAM or INVOCATION_ID set at log_init): <6>INFO message, as the
 * journal records the time, program and pid itself and reads the <N> priority (sd-daemon(3)).
 * JSON (log_set_json): {"ts":"...","level":"info","prog":"capgate","pid":1234,"msg":"message"}
 * (no "ts" under the journal). */
#ifndef CAPGATE_LOG_H
#define CAPGATE_LOG_H
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

enum log_level { LOG_LEVEL_DEBUG, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR };

/* prog is borrowed and must outlive logging (a string literal). Before other threads log. */
void log_init(const char *prog, enum log_level min);
/* Changes the minimum level (a config reload); any thread, while others log. */
void log_set_level(enum log_level min);
/* "debug" "info" "warn" "error" → 0 and *out set; -1 for anything else. */
int log_level_parse(const char *name, enum log_level *out);
enum log_level log_get_level(void);
/* "log_format": "json" (1) or "text" (0); any thread. */
void log_set_json(int json);
int log_is_json(void);
/* A line with structured fields: in the text format text alone; in JSON the usual members and
 * then those of fields (the text of a JSON object, e.g. from json_dumps; NULL: none). */
void log_fields(enum log_level level, const char *text, const char *fields);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The longest line, its '\n' included; longer texts are cut. */
#define LOG_LINE_MAX 4096
/* The line log_fields would write, '\n' included, into out, for a thread that writes many lines
 * at once (the audit thread's access lines); its length, 0 below the minimum level. */
size_t log_line(enum log_level level, const char *text, const char *fields, char out[LOG_LINE_MAX]);

/* A warning that can repeat without end (accept failing while descriptors are exhausted, a
 * metrics flush failing every second while Redis is down, reconnect attempts). The first
 * occurrence and every change of its text are logged; repeats of the same text are counted and
 * logged as one "(repeated N times in the last S s)" line per interval; log_limited_ok() ends
 * the episode with one line. Texts are compared with runs of digits ignored, so "retrying in
 * 212 ms" and "retrying in 187 ms" are one warning. One static limiter per call site, shared
 * by every thread (a mutex; log_limited_ok costs one atomic load when nothing is wrong). */
struct log_limiter {
    pthread_mutex_t lock;
    unsigned interval_s; /* between "repeated" summaries */
    unsigned quiet_ms;   /* log_limited_ok ends the episode only this long after the last
                             * occurrence: a success between failures is no recovery */
    atomic_int active;   /* an episode is on */
    char key[192];       /* the last text logged, digit runs collapsed */
    uint64_t repeats;    /* occurrences not logged since the last line */
    uint64_t total;      /* occurrences in this episode */
    uint64_t since_us, last_line_us, last_seen_us; /* monotonic */
};
#define LOG_LIMITER_INIT(interval_s, quiet_ms) \
    { PTHREAD_MUTEX_INITIALIZER, (interval_s), (quiet_ms), 0, "", 0, 0, 0, 0, 0 }
void log_limiter_init(struct log_limiter *l, unsigned interval_s, unsigned quiet_ms);
void log_limiter_destroy(struct log_limiter *l);
/* One occurrence of the warning. */
void log_limited(struct log_limiter *l, enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The condition is over: logs fmt with the episode's count, once, if an episode was on. */
void log_limited_ok(struct log_limiter *l, enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Both with the clock given (tests): ok 0 for log_limited, 1 for log_limited_ok. Returns 1
 * when a line was written (or would have been, below the minimum level). */
int log_limited_v(struct log_limiter *l, uint64_t now_us, int ok, enum log_level level,
                  const char *fmt, va_list ap) __attribute__((format(printf, 5, 0)));

#define log_debug(...) \
    do { \
        if (log_get_level() <= LOG_LEVEL_DEBUG) log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__); \
    } while (0)
#define log_info(...) log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)

#endif
