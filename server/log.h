/* One line per notable event on stderr, Go log style: "YYYY/MM/DD HH:MM:SS msg". */
#ifndef DERPD_LOG_H
#define DERPD_LOG_H

extern int log_verbose; /* --verbose: per-connection detail */

void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#define log_debug(...) do { if (log_verbose) log_info(__VA_ARGS__); } while (0)

#endif
