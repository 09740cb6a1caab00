/* The HTTP daemons' connection accounting (see internal.h). libmicrohttpd 0.9.75 (Debian
 * 12) leaks its cleanup mutex when a connection given to MHD_add_connection meets its
 * MHD_OPTION_CONNECTION_LIMIT (fixed upstream in 1.0.0): its thread then blocks for good,
 * closed sockets sit in CLOSE_WAIT and MHD_stop_daemon never returns. So derpd admits
 * connections itself, below a libmicrohttpd limit it never reaches, and makes room by
 * closing the longest-idle keep-alive connection. Its idle timeout is reset by every
 * byte, so a reaper thread also enforces derper's ReadTimeout as a whole-request limit. */
#include "metrics/internal.h"

#include "server/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

enum hc_state { HC_REQUEST, HC_RESPONDING, HC_IDLE };

struct hconn {
	struct conntab *t;
	int fd;
	enum hc_state state;
	int closing;         /* shut down by eviction or the read limit, close pending */
	int64_t deadline_ms; /* 0: none (libmicrohttpd's idle timeout alone) */
	struct hconn *prev, *next;   /* every connection of the table */
	struct hconn *iprev, *inext; /* idle keep-alive ones, longest idle first */
};

struct conntab {
	pthread_mutex_t mu;
	unsigned limit;
	int64_t read_ms;
	int external;          /* connections come from MHD_add_connection */
	unsigned live;         /* between NOTIFY_STARTED and NOTIFY_CLOSED */
	unsigned pending;      /* reserved, not yet started by libmicrohttpd's thread */
	unsigned closing;      /* live ones shut down, their close not yet seen */
	int64_t last_reserve_ms;
	struct hconn *all, *idle_head, *idle_tail;
	uint64_t refused, evicted, read_timeouts;
};

#define MAX_TABLES 4
#define REAP_EVERY_MS 100
/* libmicrohttpd's thread starts a reserved connection within milliseconds; a reservation
 * older than this was dropped without a notification (an allocation failed inside it). */
#define PENDING_STALE_MS 5000

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t reg_cv = PTHREAD_COND_INITIALIZER;
static struct conntab *tables[MAX_TABLES];
static pthread_t reaper;
static int reaper_on, reaper_stop;

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct conntab *conntab_new(unsigned limit, int64_t read_ms, int external)
{
	struct conntab *t = calloc(1, sizeof *t);
	if (t == NULL)
		return NULL;
	pthread_mutex_init(&t->mu, NULL);
	t->limit = limit;
	t->read_ms = read_ms;
	t->external = external;
	pthread_mutex_lock(&reg_mu);
	for (int i = 0; i < MAX_TABLES; i++)
		if (tables[i] == NULL) {
			tables[i] = t;
			pthread_mutex_unlock(&reg_mu);
			return t;
		}
	pthread_mutex_unlock(&reg_mu);
	pthread_mutex_destroy(&t->mu);
	free(t);
	return NULL;
}

unsigned conntab_mhd_limit(const struct conntab *t)
{
	return 2 * t->limit + 16; /* admitted (limit) + ones being closed (< limit) */
}

static void idle_unlink(struct conntab *t, struct hconn *h)
{
	if (h->state != HC_IDLE)
		return;
	if (h->iprev)
		h->iprev->inext = h->inext;
	else
		t->idle_head = h->inext;
	if (h->inext)
		h->inext->iprev = h->iprev;
	else
		t->idle_tail = h->iprev;
	h->iprev = h->inext = NULL;
}

/* Shut the socket down: libmicrohttpd's thread sees EOF and closes the connection. The fd
 * is still libmicrohttpd's (NOTIFY_CLOSED, which unlinks h under t->mu, comes first). */
static void hconn_cut(struct conntab *t, struct hconn *h)
{
	idle_unlink(t, h);
	h->state = HC_RESPONDING;
	h->deadline_ms = 0;
	h->closing = 1;
	t->closing++;
	if (shutdown(h->fd, SHUT_RDWR) != 0)
		log_debug(LS_HTTP, "shutdown: %s", strerror(errno));
}

/* Room for one more (t->mu held): under the limit, or the longest-idle keep-alive
 * connection gives its place up (an HTTP client retries a request that meets a closing
 * keep-alive connection; a request in progress is never cut for room). */
static int admit(struct conntab *t)
{
	if (t->live + t->pending >= conntab_mhd_limit(t) - 16)
		return 0;
	if (t->live + t->pending - t->closing < t->limit)
		return 1;
	if (t->idle_head == NULL)
		return 0;
	hconn_cut(t, t->idle_head);
	t->evicted++;
	return 1;
}

int conntab_reserve(struct conntab *t)
{
	pthread_mutex_lock(&t->mu);
	int ok = admit(t);
	if (ok) {
		t->pending++;
		t->last_reserve_ms = now_ms();
	} else {
		t->refused++;
	}
	pthread_mutex_unlock(&t->mu);
	return ok;
}

void conntab_unreserve(struct conntab *t, int refused)
{
	pthread_mutex_lock(&t->mu);
	if (t->pending > 0)
		t->pending--;
	if (refused)
		t->refused++;
	pthread_mutex_unlock(&t->mu);
}

enum MHD_Result conntab_accept_policy(void *cls, const struct sockaddr *addr, socklen_t len)
{
	(void)addr;
	(void)len;
	struct conntab *t = cls;
	pthread_mutex_lock(&t->mu);
	int ok = admit(t);
	if (!ok)
		t->refused++;
	pthread_mutex_unlock(&t->mu);
	return ok ? MHD_YES : MHD_NO;
}

void conntab_notify(void *cls, struct MHD_Connection *c, void **socket_context,
		    enum MHD_ConnectionNotificationCode code)
{
	struct conntab *t = cls;
	struct hconn *h = *socket_context;
	if (code == MHD_CONNECTION_NOTIFY_STARTED) {
		const union MHD_ConnectionInfo *ci =
			MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
		h = calloc(1, sizeof *h);
		pthread_mutex_lock(&t->mu);
		if (t->external && t->pending > 0)
			t->pending--;
		t->live++;
		if (h != NULL && ci != NULL) {
			/* the first request's head is (about to be) there: its read limit runs */
			h->t = t;
			h->fd = ci->connect_fd;
			h->state = HC_REQUEST;
			h->deadline_ms = now_ms() + t->read_ms;
			h->next = t->all;
			if (t->all)
				t->all->prev = h;
			t->all = h;
		} else {
			free(h);
			h = NULL; /* counted, but neither evicted nor timed: only its idle timeout */
		}
		pthread_mutex_unlock(&t->mu);
		*socket_context = h;
		return;
	}
	pthread_mutex_lock(&t->mu);
	t->live--;
	if (h != NULL) {
		idle_unlink(t, h);
		if (h->closing)
			t->closing--;
		if (h->prev)
			h->prev->next = h->next;
		else
			t->all = h->next;
		if (h->next)
			h->next->prev = h->prev;
	}
	pthread_mutex_unlock(&t->mu);
	free(h);
	*socket_context = NULL;
}

static struct hconn *hconn_of(struct MHD_Connection *c)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	return ci ? ci->socket_context : NULL;
}

void conntab_request_begin(struct MHD_Connection *c)
{
	struct hconn *h = hconn_of(c);
	if (h == NULL)
		return;
	pthread_mutex_lock(&h->t->mu);
	if (h->state == HC_IDLE && !h->closing) {
		idle_unlink(h->t, h);
		h->state = HC_REQUEST;
		h->deadline_ms = now_ms() + h->t->read_ms;
	}
	pthread_mutex_unlock(&h->t->mu);
}

void conntab_request_read(struct MHD_Connection *c)
{
	struct hconn *h = hconn_of(c);
	if (h == NULL)
		return;
	pthread_mutex_lock(&h->t->mu);
	if (!h->closing) {
		idle_unlink(h->t, h);
		h->state = HC_RESPONDING;
		h->deadline_ms = 0;
	}
	pthread_mutex_unlock(&h->t->mu);
}

void conntab_request_end(struct MHD_Connection *c)
{
	struct hconn *h = hconn_of(c);
	if (h == NULL)
		return;
	struct conntab *t = h->t;
	pthread_mutex_lock(&t->mu);
	if (!h->closing && h->state != HC_IDLE) {
		/* Go: IdleTimeout (= ReadTimeout) for the next request's first byte, then
		 * ReadTimeout for the request; libmicrohttpd's idle timeout covers silence */
		h->state = HC_IDLE;
		h->deadline_ms = now_ms() + 2 * t->read_ms;
		h->iprev = t->idle_tail;
		h->inext = NULL;
		if (t->idle_tail)
			t->idle_tail->inext = h;
		else
			t->idle_head = h;
		t->idle_tail = h;
	}
	pthread_mutex_unlock(&t->mu);
}

static void table_reap(struct conntab *t, int64_t now)
{
	pthread_mutex_lock(&t->mu);
	if (t->pending > 0 && now - t->last_reserve_ms > PENDING_STALE_MS)
		t->pending = 0;
	for (struct hconn *h = t->all; h; h = h->next)
		if (!h->closing && h->deadline_ms != 0 && now >= h->deadline_ms) {
			hconn_cut(t, h);
			t->read_timeouts++;
		}
	pthread_mutex_unlock(&t->mu);
}

static void *reaper_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&reg_mu);
	while (!reaper_stop) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += REAP_EVERY_MS * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&reg_cv, &reg_mu, &ts);
		int64_t now = now_ms();
		for (int i = 0; i < MAX_TABLES && !reaper_stop; i++)
			if (tables[i])
				table_reap(tables[i], now);
	}
	pthread_mutex_unlock(&reg_mu);
	return NULL;
}

int conntab_start(void)
{
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_destroy(&reg_cv);
	pthread_cond_init(&reg_cv, &ca);
	pthread_condattr_destroy(&ca);
	reaper_stop = 0;
	if (pthread_create(&reaper, NULL, reaper_main, NULL) != 0)
		return -1;
	reaper_on = 1;
	return 0;
}

void conntab_stop(void)
{
	if (!reaper_on)
		return;
	pthread_mutex_lock(&reg_mu);
	reaper_stop = 1;
	pthread_cond_signal(&reg_cv);
	pthread_mutex_unlock(&reg_mu);
	pthread_join(reaper, NULL);
	reaper_on = 0;
}

/* Counters survive their table: a scrape after a daemon stopped still sums them. */
static struct conntab_counters gone;

void conntab_free(struct conntab *t)
{
	if (t == NULL)
		return;
	pthread_mutex_lock(&reg_mu);
	for (int i = 0; i < MAX_TABLES; i++)
		if (tables[i] == t)
			tables[i] = NULL;
	gone.refused += t->refused;
	gone.evicted += t->evicted;
	gone.read_timeouts += t->read_timeouts;
	pthread_mutex_unlock(&reg_mu);
	for (struct hconn *h = t->all, *n; h; h = n) { /* none once libmicrohttpd stopped */
		n = h->next;
		free(h);
	}
	pthread_mutex_destroy(&t->mu);
	free(t);
}

void conntab_counters_get(struct conntab_counters *c)
{
	pthread_mutex_lock(&reg_mu);
	*c = gone;
	c->open = 0;
	for (int i = 0; i < MAX_TABLES; i++) {
		struct conntab *t = tables[i];
		if (t == NULL)
			continue;
		pthread_mutex_lock(&t->mu);
		c->refused += t->refused;
		c->evicted += t->evicted;
		c->read_timeouts += t->read_timeouts;
		c->open += t->live;
		pthread_mutex_unlock(&t->mu);
	}
	pthread_mutex_unlock(&reg_mu);
}
