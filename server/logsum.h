/* Summaries of events too frequent for one line each (failed TLS handshakes, refused
 * logins): each is counted by reason, and one line per interval says how many, of which
 * reasons, and the last one's peer and detail:
 *
 *   tls: 37 failed TLS handshakes in the last 60s (eof 30, not_tls 5,
 *        protocol_version 2); last from 192.0.2.7:51234: unexpected EOF
 *
 * The first event after a quiet interval is reported at once, the rest at most once per
 * interval (DERPD_LOG_SUMMARY_INTERVAL, default 60s). Totals are kept too, for metrics. */
#ifndef DERPD_LOGSUM_H
#define DERPD_LOGSUM_H
#include <pthread.h>
#include <stdint.h>

#include "server/log.h"

#define LOG_TALLY_MAX_REASONS 12

struct log_tally {
	/* set by the definition */
	enum log_sub sub;
	const char *what;             /* "failed TLS handshake": "s" is added for many */
	const char *const *reason;    /* label per reason (metric label values too) */
	int nreasons;
	/* state */
	uint64_t total[LOG_TALLY_MAX_REASONS];   /* atomic, never reset */
	pthread_mutex_t mu;
	uint32_t window[LOG_TALLY_MAX_REASONS];  /* under mu: since the last line */
	int64_t first_ms;                        /* under mu: first of the window */
	int64_t printed_ms;                      /* under mu: the last line (monotonic) */
	char last[200];                          /* under mu: "<peer>: <detail>" */
	uint8_t registered;                      /* under the registry's lock */
	struct log_tally *next;
};

#define LOG_TALLY_INIT(sub_, what_, reasons_, n_)                                       \
	{ .sub = (sub_), .what = (what_), .reason = (reasons_), .nreasons = (n_),       \
	  .mu = PTHREAD_MUTEX_INITIALIZER }

/* Count one event: reason index, peer ("ip:port ..."; may be NULL), detail (may be NULL).
 * Cheap enough for every failure: a mutex and no formatting beyond the two strings. */
void log_tally_add(struct log_tally *t, int reason, const char *peer, const char *detail);
/* Totals by reason (atomic reads), for metrics; out has t->nreasons entries. */
void log_tally_totals(struct log_tally *t, uint64_t *out);

/* The thread that writes the summaries. interval_ms <= 0: DERPD_LOG_SUMMARY_INTERVAL
 * or 60 s. Returns 0, or -1 with err (a bad variable). */
int log_summary_start(int64_t interval_ms, char *err, size_t errlen);
/* Write what is pending and stop the thread. */
void log_summary_stop(void);

/* Format t's pending line into out and empty the window (under t->mu held by caller);
 * 0 if nothing is pending. For tests. */
size_t log_tally_line_locked(struct log_tally *t, int64_t now, char *out, size_t cap);

#endif
