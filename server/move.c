/* Moving a connection to the worker its packets go to. A sender whose packets all go to
 * a receiver of another worker costs two threads per packet: read here, queued, a
 * wake-up, written there. Moved to that worker, one thread does both, and under load a
 * packet waits for one thread to be scheduled instead of two.
 *
 * Ownership passes in three steps, each on the thread that owns the connection then:
 *   1. the old worker takes it out of everything it keeps privately (epoll set, timer
 *      wheel, read backlog, its list of connections), at the end of a loop turn;
 *   2. under the key's map shard lock, which every other thread holds while it reaches a
 *      connection, it takes it off its ready list and sets c->w: a push from then on
 *      marks the connection ready on the new worker;
 *   3. the new worker adopts it from its move_in list at the start of its next turn.
 * Between 2 and 3 the new worker may find it on its ready list; c->moving makes it wait
 * for the adoption, which reads and writes whatever arrived meanwhile. */
#include <stdlib.h>
#include <sys/epoll.h>

#include "server/relay.h"

#define MOVE_AFTER 256      /* packets in a row to one other worker */
#define MOVE_EVERY_MS 5000  /* at most one move per connection per 5-6 s */
#define MOVE_JITTER_MS 1000 /* (so two ends of a pair do not keep trading places) */

/* The relay routed a packet of src to a receiver on dst_w (owner only). */
void conn_move_note(struct conn *src, struct worker *dst_w)
{
	struct worker *w = src->w;

	if (dst_w == w || !dst_w) {
		src->move_n = 0;
		return;
	}
	if (dst_w != src->move_to) {
		src->move_to = dst_w;
		src->move_n = 0;
	}
	if (++src->move_n < MOVE_AFTER || src->move_queued || w->loop_ms < src->move_ms)
		return;
	src->move_n = 0;
	src->move_queued = 1;
	src->move_next = w->move_out;
	w->move_out = src;
}

/* Only client connections in steady state, with nothing half done that is kept
 * by this worker: mesh links, watchers, rate-limit waits, held or paused senders (a
 * pause always names the worker it waits on: pause_w) and partial output stay where
 * they are (a later streak tries again). */
static int movable(const struct conn *c)
{
	return c->state == CS_RUNNING && c->registered && !c->is_mesh && !c->is_watcher &&
	       !c->outbound && !c->mesh && !c->bridge && !c->admitting && !c->rate_resume_ms &&
	       !c->held.c && !c->pause_w && !c->peer_shut && !c->out && !c->llen &&
	       !c->pong_pending && !c->tls_out && !(c->ws && ws_pending(c)) &&
	       !__atomic_load_n(&c->close_req, __ATOMIC_ACQUIRE);
}

/* Not onto a worker that already has many more connections than this one: a star of
 * senders around one receiver must not all pile onto one thread. */
static int balanced(const struct worker *from, const struct worker *to)
{
	int n = __atomic_load_n(&from->nconns, __ATOMIC_RELAXED);
	int m = __atomic_load_n(&to->nconns, __ATOMIC_RELAXED);

	return m <= n + 16 + n / 8;
}

struct switch_arg {
	struct conn *c;
	struct worker *to;
};

/* Step 2, under c's shard lock. */
static void switch_owner(void *owner, void *arg)
{
	struct switch_arg *a = arg;
	struct conn *c = a->c;
	struct worker *w = c->w;

	if (owner != c)
		return;
	pthread_mutex_lock(&w->ready_mu);
	worker_ready_unlink_locked(w, c);
	c->moving = 1;
	__atomic_store_n(&c->w, a->to, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&w->ready_mu);
}

static void move_one(struct worker *w, struct conn *c, struct worker *to)
{
	struct switch_arg a = { c, to };

	/* Step 1: nothing of this worker's keeps c. */
	epoll_ctl(w->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	worker_timer_del(c);
	worker_read_forget(c);
	worker_conn_unlink(w, c);
	/* Step 2. (Were c not in the map, no other thread could reach it: switch directly.) */
	client_map_each_of(relay.map, c->key, switch_owner, &a);
	if (!c->moving)
		switch_owner(c, &a);
	/* Step 3 is the new worker's. */
	pthread_mutex_lock(&to->ready_mu);
	c->move_next = to->move_in;
	__atomic_store_n(&to->move_in, c, __ATOMIC_RELAXED); /* (read unlocked as a hint) */
	pthread_mutex_unlock(&to->ready_mu);
	worker_wake(to);
}

void worker_moves_out(struct worker *w)
{
	struct conn *list = w->move_out;

	w->move_out = NULL;
	while (list) {
		struct conn *c = list;
		struct worker *to = c->move_to;
		list = c->move_next;
		c->move_queued = 0;
		if (__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE) || !movable(c) || !balanced(w, to))
			continue;
		move_one(w, c, to);
	}
}

void worker_moves_in(struct worker *w)
{
	struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET };

	pthread_mutex_lock(&w->ready_mu);
	struct conn *list = w->move_in;
	__atomic_store_n(&w->move_in, NULL, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&w->ready_mu);
	while (list) {
		struct conn *c = list;
		list = c->move_next;
		c->moving = 0;
		worker_conn_link(w, c);
		STAT_ADD(&w->stats, conn_moves, 1);
		c->move_ms = w->loop_ms + MOVE_EVERY_MS + random() % MOVE_JITTER_MS;
		ev.data.ptr = c;
		if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
			conn_close(c, "epoll_ctl failed after a move between workers");
			continue;
		}
		conn_rearm(c);
		/* What arrived while it moved: edge-triggered epoll may not report it again. */
		worker_read_later(c);
		worker_mark_ready(c);
	}
}
