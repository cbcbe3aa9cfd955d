/* log.h: leveled logging to stderr, one line per message, safe from any thread.
 * Format: 2026-11-28T17:43:42.123Z capgate[1234] INFO message */
#ifndef CAPGATE_LOG_H
#define CAPGATE_LOG_H

enum log_level { LOG_LEVEL_DEBUG, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR };

/* prog is borrowed and must outlive logging (a string literal). Before other threads log. */
void log_init(const char *prog, enum log_level min);
/* Changes the minimum level (a config reload); any thread, while others log. */
void log_set_level(enum log_level min);
/* "debug" "info" "warn" "error" → 0 and *out set; -1 for anything else. */
int log_level_parse(const char *name, enum log_level *out);
enum log_level log_get_level(void);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) do { if (log_get_level() <= LOG_LEVEL_DEBUG) log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...) log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)

#endif
