/* One worker per CPU: its own SO_REUSEPORT listener, epoll set, timer wheel and ready
 * list. Every connection accepted here lives and dies on this thread. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "metrics/httpd.h"
#include "server/frame.h"
#include "server/log.h"
#include "server/relay.h"

#define WHEEL_SLOTS 1024   /* power of two */
#define WHEEL_TICK_MS 100  /* resolution of every deadline */
#define ACCEPT_BUDGET 64
#define MORE_BUDGET (256 * 1024) /* backlog bytes read per loop turn */
#define SPIN_TURNS 32
#define BATCH_POOL_MAX 64
/* Graceful stop (a derpd extension): clients are told to reconnect in RESTART_IN_MS and
 * keep trying for RESTART_TRY_MS; queued output gets DRAIN_MS to go out. */
#define RESTART_IN_MS 1000
#define RESTART_TRY_MS 5000
#define DRAIN_MS 2000

__thread struct worker *current_worker;

/* epoll data: the listener and eventfd are told apart from conns by these tags. */
static char tag_listen, tag_event;

int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- timer wheel: each conn sits in the slot of its next deadline ---- */

static struct conn **wheel_slot(struct worker *w, int64_t at)
{
	return &w->wheel[(at / WHEEL_TICK_MS) & (WHEEL_SLOTS - 1)];
}

void worker_timer_del(struct conn *c)
{
	if (!c->timer_ms)
		return;
	if (c->tprev)
		c->tprev->tnext = c->tnext;
	else
		*wheel_slot(c->w, c->timer_ms) = c->tnext;
	if (c->tnext)
		c->tnext->tprev = c->tprev;
	c->tnext = c->tprev = NULL;
	c->timer_ms = 0;
}

void worker_timer_set(struct conn *c, int64_t at)
{
	worker_timer_del(c);
	if (at < c->w->wheel_ms)
		at = c->w->wheel_ms; /* its window is past: the next one processed */
	struct conn **slot = wheel_slot(c->w, at);
	c->timer_ms = at;
	c->tprev = NULL;
	c->tnext = *slot;
	if (*slot)
		(*slot)->tprev = c;
	*slot = c;
}

/* wheel_ms is the start of the first window not yet processed (a multiple of the tick).
 * A window is processed once it lies wholly in the past, so whatever it holds is due and
 * anything a handler re-arms lands in a later window. */
static void wheel_run(struct worker *w, int64_t now)
{
	if (now - w->wheel_ms > (int64_t)WHEEL_SLOTS * WHEEL_TICK_MS)
		w->wheel_ms = now - now % WHEEL_TICK_MS - (int64_t)WHEEL_SLOTS * WHEEL_TICK_MS;
	while (w->wheel_ms + WHEEL_TICK_MS <= now) {
		int64_t end = w->wheel_ms + WHEEL_TICK_MS;
		struct conn **slot = wheel_slot(w, w->wheel_ms);
		struct conn *due = NULL;
		/* Unlink what is due first: handlers re-arm timers. Later rotations stay. */
		for (struct conn *c = *slot, *next; c; c = next) {
			next = c->tnext;
			if (c->timer_ms < end) {
				worker_timer_del(c);
				c->tnext = due;
				due = c;
			}
		}
		w->wheel_ms = end;
		while (due) {
			struct conn *c = due;
			due = c->tnext;
			c->tnext = NULL;
			conn_on_timer(c, now);
		}
	}
}

/* ---- the worker's list of its connections ---- */

void worker_conn_link(struct worker *w, struct conn *c)
{
	c->prev = NULL;
	c->next = w->conns;
	if (w->conns)
		w->conns->prev = c;
	w->conns = c;
	__atomic_add_fetch(&w->nconns, 1, __ATOMIC_RELAXED);
}

void worker_conn_unlink(struct worker *w, struct conn *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		w->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->next = c->prev = NULL;
	__atomic_sub_fetch(&w->nconns, 1, __ATOMIC_RELAXED);
}

/* ---- rate-limit waits: few connections at a time, resumed on time ---- */

void worker_rate_wait(struct conn *c)
{
	c->rate_next = c->w->rate_waiting;
	c->w->rate_waiting = c;
}

void worker_rate_forget(struct conn *c)
{
	for (struct conn **pp = &c->w->rate_waiting; *pp; pp = &(*pp)->rate_next)
		if (*pp == c) {
			*pp = c->rate_next;
			break;
		}
	c->rate_resume_ms = 0;
}

/* Resume the waits that are due, and every wait computed under limits a reload has since
 * changed (it is recomputed under the new ones: a lifted limit frees it at once); return
 * ms until the next one (or WHEEL_TICK_MS, so a reload is seen within a tick). */
static int rate_resume(struct worker *w, int64_t now)
{
	int64_t next = now + WHEEL_TICK_MS;
	uint32_t gen = __atomic_load_n(&relay.rate_gen, __ATOMIC_ACQUIRE);

	for (struct conn **pp = &w->rate_waiting; *pp;) {
		struct conn *c = *pp;
		if (c->rate_resume_ms <= now || c->rate_gen != gen) {
			*pp = c->rate_next;
			c->rate_resume_ms = 0;
			worker_read_later(c); /* the tokens are there: parse and read again */
			continue;
		}
		if (c->rate_resume_ms < next)
			next = c->rate_resume_ms;
		pp = &c->rate_next;
	}
	return (int)(next - now);
}

/* ---- ready list: conns with output, possibly marked by other workers ---- */

struct worker *worker_mark_ready(struct conn *c)
{
	struct worker *w = c->w;
	int was_empty = 0;

	pthread_mutex_lock(&w->ready_mu);
	if (!c->on_ready) {
		c->on_ready = 1;
		was_empty = w->ready == NULL;
		c->ready_next = w->ready;
		__atomic_store_n(&w->ready, c, __ATOMIC_RELAXED); /* (read unlocked as a hint) */
	}
	pthread_mutex_unlock(&w->ready_mu);
	/* The owner drains its list at the end of every loop turn; only a sleeping other
	 * worker needs the eventfd. */
	return was_empty && w != current_worker ? w : NULL;
}

void worker_ready_unlink_locked(struct worker *w, struct conn *c)
{
	struct conn **pp = &w->ready;

	if (!c->on_ready)
		return;
	while (*pp && *pp != c)
		pp = &(*pp)->ready_next;
	if (*pp)
		__atomic_store_n(pp, c->ready_next, __ATOMIC_RELAXED);
	c->on_ready = 0;
}

void worker_wake(struct worker *w)
{
	uint64_t one = 1;

	if (write(w->evfd, &one, sizeof one) < 0 && errno != EAGAIN)
		log_error(LS_DERPD, "worker %d: eventfd write: %s", w->id, strerror(errno));
}

/* Take the ready list as an array: handling one connection may mark another of the same
 * list ready again, which relinks it; walking the links would then skip the rest. */
static int ready_take(struct worker *w)
{
	int n = 0;

	pthread_mutex_lock(&w->ready_mu);
	for (struct conn *c = w->ready; c; c = c->ready_next) {
		if (n == w->ndrain) {
			int cap = w->ndrain ? w->ndrain * 2 : 256;
			struct conn **a = realloc(w->drain, cap * sizeof *a);
			if (!a)
				break; /* the rest stays listed for the next turn */
			w->drain = a;
			w->ndrain = cap;
		}
		w->drain[n++] = c;
	}
	/* Unlink exactly the n taken; anything left (out of memory) stays for later. */
	struct conn *rest = n ? w->drain[n - 1]->ready_next : w->ready;
	for (int i = 0; i < n; i++)
		w->drain[i]->on_ready = 0;
	__atomic_store_n(&w->ready, rest, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&w->ready_mu);
	return n;
}

/* Write out what the ready list holds. Closed connections stay allocated until the end
 * of this loop turn. */
static void ready_drain(struct worker *w)
{
	if (!__atomic_load_n(&w->ready, __ATOMIC_RELAXED))
		return;
	for (int round = 0; round < 4; round++) {
		int n = ready_take(w);
		if (!n)
			return;
		for (int i = 0; i < n; i++) {
			struct conn *c = w->drain[i];
			if (c->moving)
				continue; /* not ours yet: adopted (and flushed) next turn */
			if (c->state != CS_CLOSED && __atomic_load_n(&c->close_req, __ATOMIC_ACQUIRE))
				conn_close(c, "closed by a mesh peer (ClosePeer)");
			if (c->state != CS_CLOSED)
				conn_flush(c);
		}
	}
}

/* Our receivers' queues were taken: senders of other workers paused on one of them may
 * go on (relay_deliver). */
void worker_turn_done(struct worker *w)
{
	__atomic_add_fetch(&w->turns, 1, __ATOMIC_SEQ_CST);
	if (__atomic_exchange_n(&w->waited_on, 0, __ATOMIC_SEQ_CST))
		for (int i = 0; i < relay.nworkers; i++)
			if (&relay.workers[i] != w)
				worker_wake(&relay.workers[i]);
}

void worker_link_taken(struct worker *w)
{
	__atomic_add_fetch(&w->link_turns, 1, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&w->link_waited, __ATOMIC_SEQ_CST) &&
	    __atomic_exchange_n(&w->link_waited, 0, __ATOMIC_SEQ_CST))
		for (int i = 0; i < relay.nworkers; i++)
			if (&relay.workers[i] != current_worker)
				worker_wake(&relay.workers[i]);
}

/* ---- read backlog: connections with more to read than one turn's share ---- */

void worker_read_later(struct conn *c)
{
	struct worker *w = c->w;

	if (c->on_more)
		return;
	if (!c->pause_w)
		w->more_waiting = 0; /* something to read now */
	c->on_more = 1;
	c->more_next = NULL;
	c->more_prev = w->more_tail;
	if (w->more_tail)
		w->more_tail->more_next = c;
	else
		w->more = c;
	w->more_tail = c;
}

void worker_read_forget(struct conn *c)
{
	struct worker *w = c->w;

	if (!c->on_more)
		return;
	c->on_more = 0;
	if (c->more_prev)
		c->more_prev->more_next = c->more_next;
	else
		w->more = c->more_next;
	if (c->more_next)
		c->more_next->more_prev = c->more_prev;
	else
		w->more_tail = c->more_prev;
}

/* Read the backlog oldest first, about MORE_BUDGET bytes a turn. Connections flooding
 * the server take turns here, while a loop turn stays short: epoll's events (logins,
 * senders with nothing queued) never wait behind a flood. */
static void more_run(struct worker *w)
{
	uint64_t start = w->rbytes;
	struct conn *last = w->more_tail;
	int ran = 0, all = 0;

	/* (a count too: a conn that reads nothing, e.g. one resuming from a pause, must not
	 * keep a turn going if `last` left the list meanwhile) */
	for (int i = 0; w->more && i < 1024 && w->rbytes - start < MORE_BUDGET; i++) {
		struct conn *c = w->more;
		all = c == last;
		if (c->pause_w && __atomic_load_n(c->pause_on, __ATOMIC_SEQ_CST) == c->pause_turn) {
			worker_read_forget(c); /* its receiver still full: to the back */
			worker_read_later(c);
		} else {
			c->pause_w = NULL;
			worker_read_forget(c);
			/* The packet it held goes first; then what it has not read yet. */
			if (!c->held.c || !relay_retry_held(c))
				conn_on_readable(c); /* puts it at the end of the list if need be */
			ready_drain(w);
			ran++;
		}
		if (all)
			break;
	}
	/* Nothing to do but wait for other workers' turns: they wake us (worker_turn_done). */
	w->more_waiting = all && !ran;
	w->spins = ran ? 0 : w->spins < SPIN_TURNS ? w->spins + 1 : SPIN_TURNS;
}

/* ---- output batches are pooled per worker ---- */

struct outbatch *worker_batch_get(struct worker *w)
{
	struct outbatch *b = w->batch_pool;

	if (b) {
		w->batch_pool = b->next;
		w->nbatch_pool--;
	} else if (!(b = malloc(sizeof *b))) {
		return NULL;
	}
	b->niov = b->iov_idx = b->npkt = b->nframes = 0;
	b->ctrl_len = 0;
	b->next = NULL;
	return b;
}

void worker_batch_put(struct worker *w, struct outbatch *b)
{
	if (w->nbatch_pool >= BATCH_POOL_MAX) {
		free(b);
		return;
	}
	b->next = w->batch_pool;
	w->batch_pool = b;
	w->nbatch_pool++;
}

/* ---- accept ---- */

static void listen_pause(struct worker *w, int pause)
{
	/* A shared (inherited) listener wakes one worker per connection, not all of them. */
	struct epoll_event ev = { .events = EPOLLIN | (w->listen_shared ? EPOLLEXCLUSIVE : 0),
				  .data.ptr = &tag_listen };

	if (pause == w->listen_paused)
		return;
	epoll_ctl(w->epfd, pause ? EPOLL_CTL_DEL : EPOLL_CTL_ADD, w->lfd, &ev);
	w->listen_paused = pause;
}

/* --accept-connection-limit/-burst: one token bucket across workers, TLS listener only, as
 * derper. A refused connection is closed and counted; unlike derper (whose accept loop
 * ends on it, taking the process down) derpd keeps accepting. */
static int accept_allowed(void)
{
	static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
	static double tokens = -1;
	static int64_t last;
	const struct config *cfg = relay.cfg;
	int64_t now = now_ms();
	int ok;

	if (isinf(cfg->accept_connection_limit) && cfg->accept_connection_limit > 0)
		return 1;
	pthread_mutex_lock(&mu);
	if (tokens < 0)
		tokens = (double)cfg->accept_connection_burst; /* starts full */
	tokens += (double)(now - last) / 1000.0 * cfg->accept_connection_limit;
	if (tokens > (double)cfg->accept_connection_burst)
		tokens = (double)cfg->accept_connection_burst;
	last = now;
	ok = tokens >= 1.0;
	if (ok)
		tokens -= 1.0;
	pthread_mutex_unlock(&mu);
	return ok;
}

/* An episode without descriptors ends after a second with none missing (while it lasts,
 * a descriptor freed now and then lets one accept through between failures). */
static void accept_episode_end(struct worker *w, int64_t now)
{
	if (!w->accept_fails || now - w->accept_fail_last < 1000)
		return;
	log_info(LS_DERPD, "worker %d: accepting again; for %.1f s, %ld accepts found no free "
		 "descriptor", w->id, (double)(w->accept_fail_last - w->accept_fail_ms) / 1000,
		 w->accept_fails);
	w->accept_fails = 0;
}

static void accept_some(struct worker *w)
{
	for (int i = 0; i < ACCEPT_BUDGET; i++) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof ss;
		int fd = accept4(w->lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
				/* Out of descriptors: stop accepting for a tick rather than spin; the
				 * established connections keep being served meanwhile. Said once per
				 * episode, not at every retry. */
				w->accept_fail_last = now_ms();
				if (w->accept_fails++ == 0) {
					w->accept_fail_ms = w->accept_fail_last;
					log_warn(LS_DERPD, "worker %d: accept: %s; pausing accepts until "
						 "descriptors free up", w->id, strerror(errno));
				}
				listen_pause(w, 1);
			}
			return;
		}
		if (relay.cfg->tls) {
			int ok = accept_allowed();
			httpd_tls_listener_count(ok);
			if (!ok) {
				close(fd);
				continue;
			}
		}
		if (!conn_new(w, fd, (struct sockaddr *)&ss))
			close(fd);
	}
}

/* stop == 1: begin draining. Returns 1 once this worker may exit. */
static int drain(struct worker *w, int64_t now)
{
	if (!w->drain_until) {
		uint8_t f[13];
		frame_restarting(f, RESTART_IN_MS, RESTART_TRY_MS);
		listen_pause(w, 1);
		w->drain_until = now + DRAIN_MS;
		for (struct conn *c = w->conns, *next; c; c = next) {
			next = c->next;
			if (c->state == CS_RUNNING && !c->outbound) {
				conn_queue_local(c, f, sizeof f);
				conn_flush(c);
			} else {
				conn_close(c, "server shutting down");
			}
		}
	}
	if (now >= w->drain_until)
		return 1;
	for (struct conn *c = w->conns; c; c = c->next)
		if (c->state == CS_RUNNING && !c->outbound && (c->out || c->llen || c->tls_olen))
			return 0; /* still writing */
	return 1;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct epoll_event evs[256];

	current_worker = w;
	w->loop_ms = now_ms();
	w->wheel_ms = w->loop_ms - w->loop_ms % WHEEL_TICK_MS;
	for (;;) {
		if (__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE) && drain(w, now_ms()))
			break;
		/* Left-over work on the ready list: poll without sleeping. */
		int wait = w->rate_waiting ? rate_resume(w, now_ms()) : WHEEL_TICK_MS;
		/* A backlog that only waits on other workers: poll a few turns before sleeping
		 * (the wake-up costs more than the wait, often). */
		if ((w->more && (!w->more_waiting || w->spins < SPIN_TURNS)) ||
		    __atomic_load_n(&w->ready, __ATOMIC_RELAXED) != NULL)
			wait = 0;
		else if (w->more && wait > 10)
			wait = 10; /* a safety net: the wake-up below is what we wait for */
		else if (w->drain_until && wait > 10)
			wait = 10;
		int n = epoll_wait(w->epfd, evs, 256, wait);
		/* One clock read per turn serves every packet's queue-time stamp. */
		w->loop_ms = now_ms();
		/* The watchdog pinger (main) reads it: a loop that stops turning stops the pings. */
		__atomic_store_n(&w->turn_ms, w->loop_ms, __ATOMIC_RELAXED);
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;
			if (p == &tag_listen) {
				accept_some(w);
			} else if (p == &tag_event) {
				uint64_t v;
				if (read(w->evfd, &v, sizeof v) < 0 && errno != EAGAIN)
					log_error(LS_DERPD, "worker %d: eventfd read: %s", w->id, strerror(errno));
			} else if ((uintptr_t)p & 1) {
				/* the HTTP-server end of a TLS connection's bridge */
				struct conn *c = (struct conn *)((uintptr_t)p & ~(uintptr_t)1);
				if (c->state == CS_BRIDGE)
					bridge_pump(c);
			} else {
				struct conn *c = p;
				uint32_t e = evs[i].events;
				if (e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
					c->peer_shut = 1;
				if (c->state != CS_CLOSED && (e & EPOLLOUT))
					conn_on_writable(c);
				/* One on the backlog is read in its turn there. */
				if (c->state != CS_CLOSED && !c->on_more &&
				    (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
					conn_on_readable(c);
			}
			/* Deliver what that read produced before reading more: receivers'
			 * queues are short (32), so writes must keep pace with reads. */
			ready_drain(w);
		}
		if (__atomic_load_n(&w->adopt, __ATOMIC_RELAXED))
			mesh_out_adopt_pending(w);
		if (__atomic_load_n(&w->move_in, __ATOMIC_RELAXED))
			worker_moves_in(w);
		if (__atomic_load_n(&w->admitted, __ATOMIC_RELAXED))
			handshake_admitted(w);
		if (__atomic_load_n(&w->dialed, __ATOMIC_RELAXED))
			connect_dialed(w);
		if (w->rate_waiting)
			rate_resume(w, now_ms());
		ready_drain(w);
		more_run(w);
		int64_t now = now_ms();
		if (now - w->wheel_ms >= WHEEL_TICK_MS) {
			wheel_run(w, now);
			accept_episode_end(w, now);
			if (!w->drain_until)
				listen_pause(w, 0);
		}
		ready_drain(w);
		if (w->move_out)
			worker_moves_out(w);
		while (w->grave) {
			struct conn *c = w->grave;
			w->grave = c->next;
			conn_free(c);
		}
		worker_turn_done(w);
	}
	/* Shutdown: once no worker moves connections any more (each stops at its stop
	 * flag, then waits here), take in what was moved here and close everything. */
	pthread_barrier_wait(&relay.stop_barrier);
	worker_moves_in(w);
	while (w->conns)
		conn_close(w->conns, "server shutting down");
	while (w->grave) {
		struct conn *c = w->grave;
		w->grave = c->next;
		conn_free(c);
	}
	while (w->batch_pool) {
		struct outbatch *b = w->batch_pool;
		w->batch_pool = b->next;
		free(b);
	}
	free(w->drain);
	chunk_cache_drain();
	return NULL;
}

int worker_start(struct worker *w, int lfd)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &tag_event };

	w->lfd = lfd;
	pthread_mutex_init(&w->ready_mu, NULL);
	w->epfd = epoll_create1(EPOLL_CLOEXEC);
	w->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	w->scratch = malloc(WORKER_SCRATCH);
	w->wheel = calloc(WHEEL_SLOTS, sizeof *w->wheel);
	if (w->epfd < 0 || w->evfd < 0 || !w->scratch || !w->wheel)
		return -1;
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->evfd, &ev) != 0)
		return -1;
	w->listen_paused = 1;
	listen_pause(w, 0);
	if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
		return -1;
	/* "derpd-w3" in top -H, perf and /proc/<pid>/task/<tid>/comm (tests find it). */
	char name[16];
	snprintf(name, sizeof name, "derpd-w%d", w->id);
	pthread_setname_np(w->thread, name);
	return 0;
}
