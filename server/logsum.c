#include "server/logsum.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/config.h"

/* Tallies register themselves on their first event; the list only grows and a node's
 * next never changes once linked, so the writer walks it without the lock. */
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t reg_cv;
static struct log_tally *tallies;
static int64_t interval = 60000;
static int running, stopping, kick;
static pthread_t writer;

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void log_tally_add(struct log_tally *t, int reason, const char *peer, const char *detail)
{
	char line[600];
	size_t n = 0;
	int first = 1;

	if (reason < 0 || reason >= t->nreasons)
		reason = t->nreasons - 1; /* the last reason is "other" by convention */
	__atomic_add_fetch(&t->total[reason], 1, __ATOMIC_RELAXED);
	if (!__atomic_load_n(&t->registered, __ATOMIC_ACQUIRE)) {
		pthread_mutex_lock(&reg_mu);
		if (!t->registered) {
			t->next = tallies;
			tallies = t;
			__atomic_store_n(&t->registered, 1, __ATOMIC_RELEASE);
		}
		pthread_mutex_unlock(&reg_mu);
	}
	int64_t now = mono_ms();
	pthread_mutex_lock(&t->mu);
	for (int i = 0; i < t->nreasons; i++)
		if (t->window[i])
			first = 0;
	if (first)
		t->first_ms = now;
	t->window[reason]++;
	snprintf(t->last, sizeof t->last, "%s%s%s", peer ? peer : "?", detail ? ": " : "",
		 detail ? detail : "");
	/* The first after a quiet interval is written at once, by this thread: the log says
	 * it before the client learns of it. */
	if (first && (!t->printed_ms || now - t->printed_ms >= interval))
		n = log_tally_line_locked(t, now, line, sizeof line);
	pthread_mutex_unlock(&t->mu);
	if (n) {
		log_info(t->sub, "%s", line);
	} else if (first) {
		/* A window began: the writer learns when its line is due. */
		pthread_mutex_lock(&reg_mu);
		kick = 1;
		pthread_cond_signal(&reg_cv);
		pthread_mutex_unlock(&reg_mu);
	}
}

void log_tally_totals(struct log_tally *t, uint64_t *out)
{
	for (int i = 0; i < t->nreasons; i++)
		out[i] = __atomic_load_n(&t->total[i], __ATOMIC_RELAXED);
}

size_t log_tally_line_locked(struct log_tally *t, int64_t now, char *out, size_t cap)
{
	uint64_t n = 0;
	int order[LOG_TALLY_MAX_REASONS], k = 0;
	size_t len;

	for (int i = 0; i < t->nreasons; i++) {
		n += t->window[i];
		if (t->window[i])
			order[k++] = i;
	}
	if (!n)
		return 0;
	/* Most frequent first (a stable insertion sort: ties keep the reasons' order). */
	for (int i = 1; i < k; i++)
		for (int j = i; j > 0 && t->window[order[j]] > t->window[order[j - 1]]; j--) {
			int x = order[j];
			order[j] = order[j - 1];
			order[j - 1] = x;
		}
	if (n == 1 && now == t->first_ms) {
		len = (size_t)snprintf(out, cap, "%s (%s) from %s; more are summarised every %llds",
				       t->what, t->reason[order[0]], t->last,
				       (long long)((interval + 999) / 1000));
	} else {
		int64_t secs = (now - t->first_ms + 999) / 1000;
		len = (size_t)snprintf(out, cap, "%llu %s%s in the last %llds (",
				       (unsigned long long)n, t->what, n == 1 ? "" : "s",
				       (long long)(secs < 1 ? 1 : secs));
		for (int i = 0; i < k && len < cap; i++)
			len += (size_t)snprintf(out + len, cap - len, "%s%s %u", i ? ", " : "",
						t->reason[order[i]], t->window[order[i]]);
		if (len < cap)
			len += (size_t)snprintf(out + len, cap - len, "); last from %s", t->last);
	}
	memset(t->window, 0, sizeof t->window);
	t->printed_ms = now;
	return len < cap ? len : cap - 1;
}

/* Write the lines that are due (all pending ones if all); returns when the next is due
 * (monotonic ms), or 0 if none is pending. */
static int64_t write_due(int all)
{
	int64_t next = 0, now = mono_ms();
	char line[600];

	pthread_mutex_lock(&reg_mu);
	struct log_tally *t = tallies;
	pthread_mutex_unlock(&reg_mu);
	for (; t; t = t->next) {
		size_t n = 0;
		pthread_mutex_lock(&t->mu);
		int64_t due = t->printed_ms ? t->printed_ms + interval : 0;
		if (all || now >= due)
			n = log_tally_line_locked(t, now, line, sizeof line);
		else
			for (int i = 0; i < t->nreasons; i++)
				if (t->window[i] && (!next || due < next))
					next = due;
		pthread_mutex_unlock(&t->mu);
		if (n)
			log_info(t->sub, "%s", line);
	}
	return next;
}

static void *writer_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&reg_mu);
	while (!stopping) {
		kick = 0;
		pthread_mutex_unlock(&reg_mu);
		int64_t next = write_due(0);
		pthread_mutex_lock(&reg_mu);
		if (next) {
			struct timespec ts = { next / 1000, (long)(next % 1000) * 1000000 };
			while (!kick && !stopping &&
			       pthread_cond_timedwait(&reg_cv, &reg_mu, &ts) != ETIMEDOUT)
				;
		} else {
			while (!kick && !stopping)
				pthread_cond_wait(&reg_cv, &reg_mu);
		}
	}
	pthread_mutex_unlock(&reg_mu);
	return NULL;
}

int log_summary_start(int64_t interval_ms, char *err, size_t errlen)
{
	const char *v = getenv("DERPD_LOG_SUMMARY_INTERVAL");
	pthread_condattr_t ca;

	if (interval_ms <= 0 && v && *v) {
		interval_ms = config_parse_duration_ms(v);
		if (interval_ms <= 0) {
			snprintf(err, errlen,
				 "DERPD_LOG_SUMMARY_INTERVAL=%s: want a duration > 0 (60s)", v);
			return -1;
		}
	}
	interval = interval_ms > 0 ? interval_ms : 60000;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&reg_cv, &ca);
	pthread_condattr_destroy(&ca);
	stopping = 0;
	if (pthread_create(&writer, NULL, writer_main, NULL) != 0) {
		snprintf(err, errlen, "cannot start the log summary thread: %s", strerror(errno));
		return -1;
	}
	running = 1;
	return 0;
}

void log_summary_stop(void)
{
	if (!running)
		return;
	pthread_mutex_lock(&reg_mu);
	stopping = 1;
	pthread_cond_signal(&reg_cv);
	pthread_mutex_unlock(&reg_mu);
	pthread_join(writer, NULL);
	running = 0;
	write_due(1);
}
