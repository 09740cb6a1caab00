/* derpd's log: one line per event on stderr, with a level and a subsystem prefix.
 *
 *   2026-12-07T20:31:02.123Z INFO tls: certificate reloaded from /etc/derpd/x.crt
 *   <6>tls: certificate reloaded from /etc/derpd/x.crt    (stderr is journald's stream)
 *
 * Levels are syslog's priorities, so under journald the number is the <N> prefix it
 * reads. Debug lines (--verbose; DERP_DEBUG_LOGS for the derp subsystem only) cost one
 * branch when off: log_debug tests a mask before any argument is evaluated. Each line is
 * one write(2), so lines from the worker threads never interleave. */
#ifndef DERPD_LOG_H
#define DERPD_LOG_H
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

struct sockaddr;

enum log_level { LOG_L_ERROR = 3, LOG_L_WARN = 4, LOG_L_INFO = 6, LOG_L_DEBUG = 7 };

/* Subsystems; each prints as its own prefix ("derp: ...") in every line it logs. */
enum log_sub {
	LS_DERPD,     /* "derpd": the process: start-up, workers, signals, shutdown */
	LS_CONFIG,    /* "config": flags, key file, --rate-config */
	LS_DERP,      /* "derp": DERP connections: logins, closes, refusals */
	LS_TLS,       /* "tls": handshakes on the relay listener */
	LS_CERT,      /* "cert": certificates: manual files, reloads */
	LS_ACME,      /* "acme": the ACME client */
	LS_HTTP,      /* "http": libmicrohttpd, the port-80 and metrics listeners */
	LS_DNS,       /* "bootstrap-dns" */
	LS_MESH,      /* "mesh": the mesh key and the links to region peers */
	LS_STUN,      /* "stun" */
	LS_ADMISSION, /* "admission": -verify-clients, -verify-client-url */
	LS_SYSTEMD,   /* "systemd": NOTIFY_SOCKET, the watchdog */
	LS_N
};
extern const char *const log_sub_name[LS_N];

/* Bit (1 << sub) set: that subsystem's debug lines are written. */
extern unsigned log_debug_mask;
#define log_debug_on(sub) (log_debug_mask & (1u << (sub)))

void log_msg(enum log_level lv, enum log_sub sub, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void log_vmsg(enum log_level lv, enum log_sub sub, const char *fmt, va_list ap);

#define log_error(sub, ...) log_msg(LOG_L_ERROR, sub, __VA_ARGS__)
#define log_warn(sub, ...) log_msg(LOG_L_WARN, sub, __VA_ARGS__)
#define log_info(sub, ...) log_msg(LOG_L_INFO, sub, __VA_ARGS__)
#define log_debug(sub, ...)                                         \
	do {                                                        \
		if (log_debug_on(sub))                              \
			log_msg(LOG_L_DEBUG, sub, __VA_ARGS__);     \
	} while (0)

/* At start-up, before any thread: debug on for every subsystem with verbose, for derp
 * with DERP_DEBUG_LOGS (derper's knob); journald's format if JOURNAL_STREAM names fd 2. */
void log_init(int verbose);

/* ---- the pieces, for tests ---- */

/* JOURNAL_STREAM's value ("<dev>:<inode>", decimal) names fd's file (systemd.exec(5)):
 * only then is fd connected to journald rather than redirected by the service. */
int log_journal_match(const char *journal_stream, int fd);
/* Format one line into out (cap >= 64), newline-terminated, truncated to fit; journal:
 * "<N>" and no timestamp; else the UTC time of unix_ms and the level's name. Newlines in
 * the message become spaces: one event, one line. Returns the length. */
size_t log_format(char *out, size_t cap, int journal, int64_t unix_ms, enum log_level lv,
		  enum log_sub sub, const char *fmt, va_list ap);
/* Use journald's format or not, and write lines to fd (tests; default 2). */
void log_set_output(int fd, int journal);

/* "192.0.2.7:51234" or "[2001:db8::1]:443" (IPv4-mapped IPv6 as IPv4); "?" if unknown.
 * out >= LOG_ADDR_LEN. */
#define LOG_ADDR_LEN 56
void log_addr(char *out, const struct sockaddr *sa);

#endif
