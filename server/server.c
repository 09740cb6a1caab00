/* The relay as a whole: listeners and workers, packet routing between connections, and
 * the read-only views other modules use (stats, client list, consistency check). */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/config.h"
#include "server/frame.h"
#include "server/hll.h"
#include "server/key.h"
#include "server/listenfds.h"
#include "server/log.h"
#include "server/relay.h"
#include "server/sentto.h"
#include "server/server.h"

#define MAP_SHARDS 256
#define NOTHERE_BURST 3.0
#define HOLD_MAX_MS 100 /* a receiver's worker that has not taken its queue by then won't */

struct relay relay = { .rate_mu = PTHREAD_MUTEX_INITIALIZER };

const char *const stats_drop_reason_name[DROP_NREASONS] = {
	"unknown_dest", "unknown_dest_on_fwd", "gone_disconnected", "queue_head",
	"queue_tail", "write_error", "dup_client",
};
const char *const stats_kind_name[KIND_N] = { "disco", "other" };
const char *const stats_rtt_label[RTT_N] = {
	"10ms", "20ms", "50ms", "100ms", "150ms", "250ms", "500ms", "inf", "non-tcp", "error",
};

/* ---- routing ---- */

struct deliver_arg {
	const struct pkt *p;
	int disco;
	struct worker *wake;
	uint64_t dst_id;
	struct worker *dst_w;
	struct conn *flush; /* a receiver of this worker whose queue just filled */
	struct worker *busy; /* a receiver of this other worker filled up but is draining */
	int hold;           /* the sender can keep a packet that finds such a queue full */
};

/* Runs under the destination key's shard lock. */
static void deliver(void *owner, void *arg)
{
	struct conn *dst = owner;
	struct deliver_arg *a = arg;
	int draining = dst->w != current_worker && !__atomic_load_n(&dst->stall_ms,
								       __ATOMIC_RELAXED);

	a->dst_id = dst->id;
	a->dst_w = dst->w;
	/* Full, but its worker takes the whole queue on its next turn (the pushes that
	 * filled it marked it ready): the packet waits with its sender, not dropped. */
	if (a->hold && draining && sendq_full(&dst->q, a->disco)) {
		a->busy = dst->w;
		a->hold = 2;
		return;
	}
	chunk_ref(a->p->c);
	int n = sendq_push_pkt(&dst->q, a->p, a->disco, &current_worker->stats);
	a->wake = worker_mark_ready(dst);
	if (n >= relay.queue_depth) {
		if (dst->w == current_worker)
			a->flush = dst;
		else if (draining)
			a->busy = dst->w;
	}
}

enum cm_lookup relay_deliver(struct conn *src, const uint8_t dst[32], const struct pkt *p,
			     int disco, uint64_t *dst_id, struct worker **dst_w, int *held)
{
	struct deliver_arg a = { p, disco, NULL, 0, NULL, NULL, NULL, held != NULL };
	enum cm_lookup r = client_map_with_active(relay.map, dst, deliver, &a);

	if (held)
		*held = r == CM_FOUND && a.hold == 2;
	if (a.wake)
		worker_wake(a.wake);
	*dst_id = a.dst_id;
	if (dst_w)
		*dst_w = a.dst_w;
	/* A full queue on our own worker: write it out now rather than drop the next
	 * packet. Safe outside the shard lock: only this thread could free dst. The
	 * sender's own connection is left alone (it is in the middle of parsing). */
	if (a.flush && a.flush != src)
		conn_flush(a.flush);
	/* A receiver on the other worker is full only because that worker has not had its
	 * turn yet (its socket is not stalled): let the sender pause until it has, instead
	 * of overrunning the queue. A receiver that is really slow costs only itself. That
	 * worker wakes us once it has taken the queue (worker_turn_done). */
	if (a.busy) {
		src->paused = 1;
		src->pause_w = a.busy;
		src->pause_on = &a.busy->turns;
		src->pause_turn = __atomic_load_n(&a.busy->turns, __ATOMIC_SEQ_CST);
		__atomic_store_n(&a.busy->waited_on, 1, __ATOMIC_SEQ_CST);
	}
	return r;
}

int relay_retry_held(struct conn *src)
{
	struct pkt p = src->held;
	uint8_t dst[32];

	memcpy(dst, src->held_dst, 32);
	src->held.c = NULL;
	relay_route(src, dst, &p, src->held_disco);
	chunk_put(p.c); /* the hold's reference; a queue or a new hold took its own */
	if (!src->held.c) {
		src->held_ms = 0;
		return 0;
	}
	src->paused = 0; /* not parsing: back on the backlog directly */
	worker_read_later(src);
	return 1;
}

/* PeerGone(NotHere) to the sender: a token bucket of 1/s, burst 3 (PROTOCOL.md §7.3). */
void relay_not_here(struct conn *c, const uint8_t dst[32])
{
	int64_t now = now_ms();
	uint8_t f[38];

	c->nothere_tokens += (double)(now - c->nothere_ms) / 1000.0;
	if (c->nothere_tokens > NOTHERE_BURST)
		c->nothere_tokens = NOTHERE_BURST;
	c->nothere_ms = now;
	if (c->nothere_tokens < 1.0)
		return;
	c->nothere_tokens -= 1.0;
	conn_queue_local(c, f, (uint32_t)frame_peer_gone(f, dst, PEER_GONE_NOT_HERE));
	STAT_ADD(&current_worker->stats, peer_gone_not_here_frames, 1);
	worker_mark_ready(c);
}

/* src keeps p (and pauses): it found its receiver's queue, or the mesh link's, full. */
static void route_hold(struct conn *src, const uint8_t dst[32], const struct pkt *p, int disco)
{
	chunk_ref(p->c);
	src->held = *p;
	memmove(src->held_dst, dst, 32);
	src->held_disco = (uint8_t)disco;
}

void relay_route(struct conn *src, const uint8_t dst[32], struct pkt *p, int disco)
{
	struct derp_stats *st = &current_worker->stats;
	uint64_t dst_id;
	struct worker *dst_w = NULL;
	int held = 0;
	/* How long this packet has been held already: a hold ends with a drop after that. */
	int64_t held_for = src->held_ms ? current_worker->loop_ms - src->held_ms : 0;

	p->enq_ms = (uint32_t)current_worker->loop_ms;
	switch (relay_deliver(src, dst, p, disco, &dst_id, &dst_w,
			      held_for < HOLD_MAX_MS ? &held : NULL)) {
	case CM_FOUND:
		conn_move_note(src, dst_w);
		if (held)
			route_hold(src, dst, p, disco);
		sentto_note(&src->sent, dst, dst_id);
		break;
	case CM_DUP_FIGHT:
		sendq_count_drop(st, DROP_DUP_CLIENT, p);
		break;
	case CM_UNKNOWN:
		switch (mesh_forward_out(src, dst, p, disco)) {
		case MESH_FWD_HELD:
			route_hold(src, dst, p, disco);
			break;
		case MESH_FWD_SENT:
			break;
		case MESH_FWD_NONE:
			sendq_count_drop(st, DROP_UNKNOWN_DEST, p);
			if (disco)
				relay_not_here(src, dst);
			break;
		}
		break;
	}
	if (!src->held.c)
		src->held_ms = 0; /* delivered or dropped: the next packet's hold starts afresh */
	else if (!src->held_ms)
		src->held_ms = current_worker->loop_ms;
}

struct gone_arg {
	const uint8_t *key;
	uint64_t want_id;
	struct worker *wake;
};

static void push_gone(void *owner, void *arg)
{
	struct conn *dst = owner;
	struct gone_arg *a = arg;
	uint8_t f[38];

	/* Only the connection that was handed packets hears of it (upstream's connNum check). */
	if (dst->id != a->want_id)
		return;
	sendq_push_ctrl(&dst->q, f, (uint8_t)frame_peer_gone(f, a->key, PEER_GONE_DISCONNECTED));
	STAT_ADD(&current_worker->stats, peer_gone_disconnected_frames, 1);
	a->wake = worker_mark_ready(dst);
}

static void gone_to(void *arg, const uint8_t dst[32], uint64_t id)
{
	struct gone_arg a = { arg, id, NULL };

	client_map_with_active(relay.map, dst, push_gone, &a);
	if (a.wake)
		worker_wake(a.wake);
}

void relay_send_gone(const uint8_t key[32], const struct sentto *set)
{
	sentto_foreach(set, gone_to, (void *)key);
}

/* ---- listeners ---- */

/* What accepted connections inherit from their listener. */
static void listen_tune(const struct config *cfg, int fd)
{
	if (cfg->tcp_user_timeout_ms > 0) {
		unsigned ms = (unsigned)cfg->tcp_user_timeout_ms;
		setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof ms);
	}
}

/* A listening socket on host:port (host "" = all interfaces: one dual-stack IPv6 socket,
 * as Go does, or IPv4 only on a host without IPv6). */
static int listen_socket(const struct config *cfg, int port, int reuseport, char *err,
			 size_t errlen)
{
	const char *host = cfg->listen_host[0] ? cfg->listen_host : "::";
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
	struct addrinfo *res = NULL;
	char portstr[8];
	int fd = -1, one = 1, zero = 0;

	snprintf(portstr, sizeof portstr, "%d", port);
	for (int attempt = 0; attempt < 2 && fd < 0; attempt++) {
		if (attempt == 1) {
			if (cfg->listen_host[0] || errno != EAFNOSUPPORT)
				break;
			host = "0.0.0.0"; /* no IPv6 on this host */
		}
		int gai = getaddrinfo(host, portstr, &hints, &res);
		if (gai != 0) {
			snprintf(err, errlen, "-a %s: %s", cfg->addr, gai_strerror(gai));
			return -1;
		}
		fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			int e = errno;
			freeaddrinfo(res);
			res = NULL;
			errno = e;
		}
	}
	if (fd < 0)
		goto fail;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (reuseport)
		setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
	if (res->ai_family == AF_INET6 && !cfg->listen_host[0])
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
	listen_tune(cfg, fd);
	if (bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 4096) != 0)
		goto fail;
	freeaddrinfo(res);
	return fd;
fail:
	snprintf(err, errlen, "listen on %s: %s", cfg->addr, strerror(errno));
	if (fd >= 0)
		close(fd);
	if (res)
		freeaddrinfo(res);
	return -1;
}

static int bound_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;

	if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0)
		return -1;
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

static long rss_bytes(void)
{
	long pages = 0, rss = 0;
	FILE *f = fopen("/proc/self/statm", "r");

	if (f) {
		if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
			rss = 0;
		fclose(f);
	}
	return rss * sysconf(_SC_PAGESIZE);
}

static int queue_depth_from_env(char *err, size_t errlen)
{
	const char *v = getenv("TS_DEBUG_DERP_PER_CLIENT_SEND_QUEUE_DEPTH");
	char *end;

	if (!v || !*v)
		return 32;
	long d = strtol(v, &end, 10);
	if (*end || d < 1 || d > 32767) {
		snprintf(err, errlen, "TS_DEBUG_DERP_PER_CLIENT_SEND_QUEUE_DEPTH=%s: want 1..32767", v);
		return -1;
	}
	return (int)d;
}

int server_start(const struct config *cfg, const uint8_t priv[32], char *err, size_t errlen)
{
	relay.cfg = cfg;
	memcpy(relay.priv, priv, 32);
	key_public(relay.pub, priv);
	relay.start_ms = now_ms();
	relay.memstats_sys0 = (double)rss_bytes();
	if ((relay.queue_depth = queue_depth_from_env(err, errlen)) < 0)
		return -1;
	relay.rtt_stats = !config_env_bool("TS_DERP_DISABLE_RTT_STATS");
	relay.map = client_map_new(MAP_SHARDS, CM_LAST_WRITER_ACTIVE);
	relay.fwd = fwd_new(MAP_SHARDS / 4);
	mesh_serve_init();
	relay.nworkers = cfg->workers > 0 ? cfg->workers : 1;
	relay.workers = aligned_alloc(64, sizeof(struct worker) * relay.nworkers);
	if (!relay.map || !relay.fwd || !relay.workers) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	memset(relay.workers, 0, sizeof(struct worker) * relay.nworkers);
	pthread_barrier_init(&relay.stop_barrier, NULL, (unsigned)relay.nworkers);
	int port = cfg->listen_port;
	/* From derpd.socket: one socket every worker accepts from (EPOLLEXCLUSIVE wakes one
	 * of them per connection), held by systemd while derpd restarts. */
	int inherited = port ? listenfds_take(SOCK_STREAM, port, "-a") : -1;
	if (inherited >= 0)
		listen_tune(cfg, inherited);
	else if (port) {
		/* SO_REUSEPORT would let a second derpd (same user) share the port and split the
		 * traffic; a probe without it fails like derper does if the port is taken. */
		int probe = listen_socket(cfg, port, 0, err, errlen);
		if (probe < 0)
			return -1;
		close(probe);
	}
	for (int i = 0; i < relay.nworkers; i++) {
		struct worker *w = &relay.workers[i];
		int lfd = inherited >= 0 ? fcntl(inherited, F_DUPFD_CLOEXEC, 0)
					 : listen_socket(cfg, port, 1, err, errlen);
		if (lfd < 0) {
			if (inherited >= 0)
				snprintf(err, errlen, "dup: %s", strerror(errno));
			return -1;
		}
		w->listen_shared = inherited >= 0;
		port = bound_port(lfd); /* port 0: every worker joins the first one's port */
		w->id = i;
		w->turn_ms = now_ms(); /* before its thread runs: fresh until its first turn */
		if (worker_start(w, lfd) != 0) {
			snprintf(err, errlen, "starting worker %d: %s", i, strerror(errno));
			return -1;
		}
	}
	if (inherited >= 0)
		close(inherited); /* each worker holds a duplicate */
	relay.port = port;
	__atomic_store_n(&relay.started, 1, __ATOMIC_RELEASE);
	char kh[KEY_HEX_LEN + 1];
	key_to_hex(kh, relay.pub);
	log_info(LS_DERPD, "server key %s; %d workers, send queues %d+%d", kh, relay.nworkers,
		 relay.queue_depth, relay.queue_depth);
	if (cfg->listen_host[0] && strchr(cfg->listen_host, ':'))
		log_info(LS_DERPD, "serving on [%s]:%d", cfg->listen_host, port);
	else
		log_info(LS_DERPD, "serving on %s:%d", cfg->listen_host, port);
	return 0;
}

int server_port(void)
{
	return relay.port;
}

int server_worker_turns(int64_t *turn_ms, int max)
{
	int n = relay.nworkers < max ? relay.nworkers : max;

	for (int i = 0; i < n; i++)
		turn_ms[i] = __atomic_load_n(&relay.workers[i].turn_ms, __ATOMIC_RELAXED);
	return relay.nworkers;
}

void server_stop(void)
{
	for (int i = 0; i < relay.nworkers; i++) {
		__atomic_store_n(&relay.workers[i].stop, 1, __ATOMIC_RELEASE);
		worker_wake(&relay.workers[i]);
	}
	/* Every worker has exited before any eventfd closes: one still closing its
	 * connections wakes the others (PeerGone) through theirs. */
	for (int i = 0; i < relay.nworkers; i++)
		pthread_join(relay.workers[i].thread, NULL);
	/* CONNECT dials still running drop their sockets from now on; those that finished
	 * after their worker's last turn are freed here (their connections are gone). */
	connect_stop();
	for (int i = 0; i < relay.nworkers; i++) {
		struct worker *w = &relay.workers[i];
		connect_worker_free(w);
		close(w->lfd);
		close(w->epfd);
		close(w->evfd);
		free(w->scratch);
		free(w->wheel);
	}
}

void server_free(void)
{
	if (!relay.workers)
		return;
	__atomic_store_n(&relay.started, 0, __ATOMIC_RELEASE);
	for (int i = 0; i < relay.nworkers; i++)
		pthread_mutex_destroy(&relay.workers[i].ready_mu);
	free(relay.workers);
	relay.workers = NULL;
	pthread_barrier_destroy(&relay.stop_barrier);
	client_map_free(relay.map);
	relay.map = NULL;
	fwd_free(relay.fwd);
	relay.fwd = NULL;
	mesh_serve_free();
}

void server_set_rate_config(const struct rate_config *rc)
{
	pthread_mutex_lock(&relay.rate_mu);
	relay.rate = *rc;
	pthread_mutex_unlock(&relay.rate_mu);
	/* Each connection notices the new generation at its next frame. */
	__atomic_add_fetch(&relay.rate_gen, 1, __ATOMIC_RELEASE);
}

/* ---- views for other modules ---- */

const uint8_t *server_public_key(void)
{
	return relay.pub;
}

void server_stats_sum(struct derp_stats_snapshot *snap)
{
	/* Every field is a 64-bit word; gauge deltas sum correctly in two's complement. */
	uint64_t *sum = (uint64_t *)&snap->sum;
	size_t nw = sizeof(struct derp_stats) / sizeof(uint64_t);
	struct cm_gauges g;
	struct fwd_counters fc;

	memset(snap, 0, sizeof *snap);
	/* Not started (or stopped): all zero. The HTTP side starts first and its status
	 * sampler may ask while server_start is still making the workers. */
	if (!__atomic_load_n(&relay.started, __ATOMIC_ACQUIRE))
		return;
	for (int i = 0; i < relay.nworkers; i++) {
		const uint64_t *w = (const uint64_t *)&relay.workers[i].stats;
		for (size_t j = 0; j < nw; j++)
			sum[j] += __atomic_load_n(&w[j], __ATOMIC_RELAXED);
	}
	client_map_gauges(relay.map, &g);
	fwd_counters(relay.fwd, &fc);
	snap->clients_local = g.keys;
	/* The forwarder table holds every local key too (as a marker), so it is the region. */
	snap->clients_remote = fc.keys > g.keys ? fc.keys - g.keys : 0;
	snap->sum.multiforwarder_created = fc.multi_created;
	snap->sum.multiforwarder_deleted = fc.multi_deleted;
	snap->sum.packet_forwarder_delete_other_value = fc.delete_other_value;
	snap->current_dup_client_keys = g.dup_keys;
	snap->current_dup_client_conns = g.dup_conns;
	snap->sum.total_dup_client_conns = g.total_dup;
	if (snap->sum.queue_count)
		snap->average_queue_duration_ms =
			(double)snap->sum.queue_ns_sum / (double)snap->sum.queue_count / 1e6;
	snap->memstats_sys0 = relay.memstats_sys0;
	snap->rate_config = relay.cfg->rate_config && relay.cfg->rate_config[0];
	pthread_mutex_lock(&relay.rate_mu);
	snap->rate_bytes_per_sec = relay.rate.bytes_per_sec;
	snap->rate_burst_bytes = relay.rate.burst;
	pthread_mutex_unlock(&relay.rate_mu);
}

struct foreach_arg {
	void (*cb)(void *arg, const struct server_client_info *ci);
	void *arg;
	int64_t members;
};

static void foreach_member(void *arg, struct cm_member *m)
{
	struct foreach_arg *a = arg;
	const struct conn *c = m->owner;
	struct server_client_info ci;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ci.peer;

	a->members++;
	if (!a->cb)
		return;
	memset(&ci, 0, sizeof ci);
	memcpy(ci.key, c->key, 32);
	in6->sin6_family = AF_INET6;
	memcpy(&in6->sin6_addr, c->ip16, 16);
	in6->sin6_port = htons(c->port);
	ci.is_mesh_peer = c->is_mesh;
	ci.is_prober = c->is_prober;
	ci.preferred = __atomic_load_n(&c->preferred, __ATOMIC_RELAXED);
	const uint8_t *hll = __atomic_load_n(&c->hll, __ATOMIC_ACQUIRE);
	ci.unique_senders = hll ? hll_estimate(hll) : 0;
	a->cb(a->arg, &ci);
}

void server_clients_foreach(void (*cb)(void *arg, const struct server_client_info *ci),
			    void *arg)
{
	struct foreach_arg a = { cb, arg, 0 };

	if (relay.map)
		client_map_foreach(relay.map, foreach_member, &a);
}

int server_consistency_check(char *buf, size_t len)
{
	struct derp_stats_snapshot s;
	struct foreach_arg a = { NULL, NULL, 0 };
	size_t off = 0;

	buf[0] = '\0';
	if (!relay.map)
		return 0;
	server_stats_sum(&s);
	client_map_foreach(relay.map, foreach_member, &a);
	/* Connections register and leave concurrently; a busy server may show a transient
	 * difference, as upstream's check can. */
	if (a.members != s.sum.current_connections)
		off += (size_t)snprintf(buf + off, len - off,
					"expvar connections = %lld != clients map says of %lld",
					(long long)s.sum.current_connections, (long long)a.members);
	return off ? -1 : 0;
}
