/* Logging to stderr with levels. One process-wide threshold, set once by
 * the daemon at start (and on reload); everything else only reads it.
 * Format: "2026-11-25T09:03:19.123Z LEVEL message". */
#ifndef MQB_LOG_H
#define MQB_LOG_H

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_NOTICE, LOG_WARN, LOG_ERROR };

void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Parse "debug", "info", "notice", "warn"/"warning", "error". 0 or -1. */
int log_level_parse(const char *name, enum log_level *out);

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
void log_msg(enum log_level level, const char *fmt, ...);

#define log_debug(...) \
    do { \
        if (log_get_level() <= LOG_DEBUG) \
            log_msg(LOG_DEBUG, __VA_ARGS__); \
    } while (0)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_NOTICE, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
