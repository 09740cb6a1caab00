/* Connection life: accept -> HTTP head -> upgrade -> handshake -> running -> close.
 * Each stage has a deadline, kept in the worker's timer wheel. */
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "server/admission.h"
#include "server/frame.h"
#include "server/key.h"
#include "server/log.h"
#include "server/relay.h"
#include "server/sentto.h"
#include "server/server.h"

#define TLS_HANDSHAKE_TIMEOUT_MS 10000
#define HANDSHAKE_TIMEOUT_MS 10000  /* PROTOCOL.md §6: ServerKey write, ClientInfo read */
#define KEEPALIVE_JITTER_MS 5000
#define RTT_INTERVAL_MS 10000       /* upstream's statsInterval */

static void addr_to_ip16(struct conn *c, const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		memset(c->ip16, 0, 10);
		c->ip16[10] = c->ip16[11] = 0xff;
		memcpy(c->ip16 + 12, &in->sin_addr, 4);
		c->port = ntohs(in->sin_port);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		memcpy(c->ip16, &in6->sin6_addr, 16);
		c->port = ntohs(in6->sin6_port);
	}
}

static void set_tcp_options(int fd)
{
	const struct config *cfg = relay.cfg;
	int one = 1;

	/* Go sets TCP_NODELAY on every connection; DERP frames are latency sensitive. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (cfg->tcp_keepalive_ms > 0) {
		int secs = (int)(cfg->tcp_keepalive_ms / 1000);
		if (secs < 1)
			secs = 1;
		setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &secs, sizeof secs);
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &secs, sizeof secs);
	}
}

static struct conn *conn_setup(struct worker *w, int fd, const struct sockaddr *sa,
			       int server_tls, struct WOLFSSL *client_ssl);

struct conn *conn_new(struct worker *w, int fd, const struct sockaddr *sa)
{
	return conn_setup(w, fd, sa, relay.cfg->tls, NULL);
}

/* Our own connection to a mesh peer: no server-side TLS, maybe a client session. */
struct conn *conn_new_outbound(struct worker *w, int fd, const struct sockaddr *sa,
			       struct WOLFSSL *ssl)
{
	return conn_setup(w, fd, sa, 0, ssl);
}

static struct conn *conn_setup(struct worker *w, int fd, const struct sockaddr *sa,
			       int server_tls, struct WOLFSSL *client_ssl)
{
	struct conn *c = calloc(1, sizeof *c);
	struct epoll_event ev;

	if (!c)
		return NULL;
	c->w = w;
	c->fd = fd;
	c->state = CS_HTTP;
	c->id = __atomic_add_fetch(&relay.next_conn_id, 1, __ATOMIC_RELAXED);
	c->member.key = c->key;
	c->member.owner = c;
	c->created_ms = now_ms();
	c->nothere_tokens = 3;
	c->nothere_ms = c->created_ms;
	addr_to_ip16(c, sa);
	sendq_init(&c->q);
	set_tcp_options(fd);
	/* Edge-triggered, registered once: no epoll_ctl per write stall. */
	ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
	ev.data.ptr = c;
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
		sendq_close(&c->q, &w->stats);
		free(c);
		return NULL;
	}
	worker_conn_link(w, c);
	c->deadline_ms = c->created_ms + HTTP_HEAD_TIMEOUT_MS;
	if (client_ssl) {
		c->ssl = client_ssl;
		tls_conn_attach(c);
		c->tls_done = 1;
		c->outbound = 1; /* before anything could count it as a server-side TLS request */
	} else if (server_tls) {
		if (tls_conn_start(c) != 0) {
			conn_close(c, "TLS: out of memory");
			return c;
		}
		c->deadline_ms = c->created_ms + TLS_HANDSHAKE_TIMEOUT_MS;
	}
	worker_timer_set(c, c->deadline_ms);
	return c;
}

void conn_queue_local(struct conn *c, const uint8_t *bytes, uint32_t len)
{
	if (c->llen + len > c->lcap) {
		uint32_t cap = c->lcap ? c->lcap : 256;
		while (cap < c->llen + len)
			cap *= 2;
		uint8_t *b = realloc(c->lbuf, cap);
		if (!b) {
			conn_close(c, "out of memory");
			return;
		}
		c->lbuf = b;
		c->lcap = cap;
	}
	memcpy(c->lbuf + c->llen, bytes, len);
	c->llen += len;
}

/* derp_tcp_rtt bucket for the kernel's smoothed RTT of fd, or -1 if unreadable; the RTT
 * itself in *us (for derpd_tcp_rtt_seconds). */
static int rtt_sample(int fd, uint32_t *us)
{
	static const uint32_t bound_us[] = { 10000, 20000, 50000, 100000, 150000, 250000, 500000 };
	struct tcp_info ti;
	socklen_t len = sizeof ti;

	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0)
		return -1;
	*us = ti.tcpi_rtt;
	for (int i = 0; i < (int)(sizeof bound_us / sizeof *bound_us); i++)
		if (ti.tcpi_rtt <= bound_us[i])
			return RTT_10MS + i;
	return RTT_INF;
}

/* Upstream: 2 s (--tcp-write-timeout) for clients, 30 s for mesh peers, 5 s for our
 * own forwarding writes to a mesh peer; 0 = no timeout. */
static int64_t write_timeout_ms(const struct conn *c)
{
	return c->outbound  ? MESH_WRITE_TIMEOUT_MS
	       : c->is_mesh ? 30000
			    : relay.cfg->tcp_write_timeout_ms;
}

/* Arm c's timer for the next moment anything is due for it. */
void conn_rearm(struct conn *c)
{
	int64_t at = c->deadline_ms;

	if (c->state == CS_RUNNING && !c->outbound && (!at || c->keepalive_ms < at))
		at = c->keepalive_ms;
	if (c->rtt_ms && (!at || c->rtt_ms < at))
		at = c->rtt_ms;
	if (c->stall_ms && write_timeout_ms(c) > 0) {
		int64_t t = c->stall_ms + write_timeout_ms(c);
		if (!at || t < at)
			at = t;
	}
	if (at)
		worker_timer_set(c, at);
}

/* derper gives each connection a KeepAlive period of the interval plus a jitter of up to
 * 5 s, fixed for the connection. The jitter comes from the client's (random) key rather
 * than stored; a short --keepalive-interval gets a twelfth of it at most, as 5 s is of 60. */
static int64_t keepalive_period(const struct conn *c)
{
	int64_t iv = relay.cfg->keepalive_ms;
	int64_t j = iv / 12 < KEEPALIVE_JITTER_MS ? iv / 12 : KEEPALIVE_JITTER_MS;
	uint32_t h = (uint32_t)c->key[0] << 24 | (uint32_t)c->key[1] << 16 |
		     (uint32_t)c->key[2] << 8 | c->key[3];

	return iv + (j > 0 ? (int64_t)(h % (uint32_t)j) : 0);
}

void conn_on_timer(struct conn *c, int64_t now)
{
	if (c->deadline_ms && now >= c->deadline_ms) {
		if (c->state == CS_DIAL) {
			connect_on_timer(c);
			return;
		}
		if (c->ssl && !c->tls_done)
			tls_handshake_failed(c, TLS_FAIL_TIMEOUT, "not done in time");
		conn_close(c, c->ssl && !c->tls_done ? "timeout in the TLS handshake"
			      : c->state == CS_HTTP ? "timeout reading HTTP request"
						    : "timeout waiting for client info");
		return;
	}
	if (c->stall_ms && write_timeout_ms(c) > 0 && now - c->stall_ms >= write_timeout_ms(c)) {
		STAT_ADD(&c->w->stats, sclient_write_timeouts, 1);
		conn_close(c, "write timeout");
		return;
	}
	if (c->rtt_ms && now >= c->rtt_ms) {
		uint32_t us;
		int b = rtt_sample(c->fd, &us);
		if (b >= 0) {
			STAT_ADD(&c->w->stats, tcp_rtt[b], 1);
			STAT_OBSERVE(&c->w->stats, rtt, stats_rtt_le_us, STATS_RTT_BUCKETS, us);
		}
		c->rtt_ms = now + RTT_INTERVAL_MS;
	}
	if (c->state == CS_RUNNING && !c->outbound && now >= c->keepalive_ms) {
		uint8_t ka[5];
		conn_queue_local(c, ka, (uint32_t)frame_keep_alive(ka));
		c->keepalive_ms = now + keepalive_period(c);
		sendq_trim(&c->q);
		if (conn_flush(c) < 0)
			return;
	}
	conn_rearm(c);
}

/* Called once the client is admitted: start the keepalive clock (with jitter) and,
 * as upstream does, check once that RTT can be read before sampling it every 10 s. */
void conn_start_running(struct conn *c)
{
	int64_t now = now_ms();

	c->state = CS_RUNNING;
	c->deadline_ms = 0;
	c->keepalive_ms = now + keepalive_period(c);
	if (c->ws) {
		STAT_ADD(&c->w->stats, tcp_rtt[RTT_NON_TCP], 1); /* as upstream for WebSocket */
	} else if (relay.rtt_stats) {
		uint32_t us;
		if (rtt_sample(c->fd, &us) < 0) {
			STAT_ADD(&c->w->stats, tcp_rtt[RTT_ERROR], 1);
		} else {
			/* upstream only checks this one; derpd's histogram keeps it (an RTT at
			 * login, so a short-lived client is seen too) */
			STAT_OBSERVE(&c->w->stats, rtt, stats_rtt_le_us, STATS_RTT_BUCKETS, us);
			c->rtt_ms = now + RTT_INTERVAL_MS;
		}
	}
	conn_rearm(c);
}

/* stall_ms is also read by other workers (as a hint in relay_deliver): atomic stores. */
void conn_set_stalled(struct conn *c, int stalled)
{
	if (stalled && !c->stall_ms) {
		__atomic_store_n(&c->stall_ms, now_ms(), __ATOMIC_RELAXED);
		conn_rearm(c);
	} else if (!stalled && c->stall_ms) {
		__atomic_store_n(&c->stall_ms, 0, __ATOMIC_RELAXED);
	}
}

static void ready_unlink(struct conn *c)
{
	struct worker *w = c->w;

	pthread_mutex_lock(&w->ready_mu);
	worker_ready_unlink_locked(w, c);
	pthread_mutex_unlock(&w->ready_mu);
}

/* Tear c down; keep_fd: leave the socket open (it was handed to the HTTP server). */
static void conn_teardown(struct conn *c, const char *why, int keep_fd)
{
	struct worker *w = c->w;
	struct derp_stats *st = &w->stats;

	if (c->state == CS_CLOSED)
		return;
	if (c->registered) {
		char name[CONN_NAME_LEN];
		log_debug(LS_DERP, "%s: closing: %s", conn_name(c, name), why);
		/* After this no other thread can find c, so nobody pushes to it any more. */
		mesh_on_unregister(c, client_map_unregister(relay.map, &c->member));
		STAT_ADD(st, current_connections, -1);
		if (c->preferred)
			STAT_ADD(st, current_home_connections, -1);
		if (c->not_ideal)
			STAT_ADD(st, current_notideal_connections, -1);
		c->registered = 0;
	} else {
		char name[CONN_NAME_LEN];
		log_debug(LS_DERP, "%s: closing before login: %s", conn_name(c, name), why);
	}
	c->state = CS_CLOSED;
	if (c->rate_resume_ms)
		worker_rate_forget(c);
	if (c->outbound)
		mesh_out_closed(c, why); /* before the fd goes: no forwarder may point at a dead conn */
	worker_timer_del(c);
	ready_unlink(c);
	worker_read_forget(c);
	tls_conn_end(c);
	bridge_end(c);
	connect_forget(c);
	if (keep_fd)
		epoll_ctl(w->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	else
		close(c->fd); /* also removes it from the epoll set */
	c->fd = -1;
	sendq_close(&c->q, st);
	if (c->out) {
		for (int i = 0; i < c->out->npkt; i++) {
			sendq_count_drop(st, DROP_GONE_DISCONNECTED, &c->out->pkt[i]);
			chunk_put(c->out->pkt[i].c);
		}
		worker_batch_put(w, c->out);
		c->out = NULL;
	}
	if (c->rchunk) {
		chunk_put(c->rchunk);
		c->rchunk = NULL;
	}
	if (c->held.c) { /* a packet it sent that found the receiver's queue full */
		sendq_count_drop(st, DROP_QUEUE_TAIL, &c->held);
		chunk_put(c->held.c);
		c->held.c = NULL;
	}
	/* Move from the live list to the grave; freed once this loop turn is over, or when
	 * its pending admission answer arrives (the answer still points at it). */
	worker_conn_unlink(w, c);
	if (c->admitting) {
		c->admitting = 2;
		admission_gone(&c->admit_gone); /* its check is not sent, or is cut off */
		return;
	}
	c->next = w->grave;
	w->grave = c;
}

void conn_close(struct conn *c, const char *why)
{
	conn_teardown(c, why, 0);
}

int conn_detach(struct conn *c, struct sockaddr_storage *peer, socklen_t *peerlen)
{
	int fd = c->fd;

	conn_peer(c, peer, peerlen);
	conn_teardown(c, "handed to the HTTP server", 1);
	return fd;
}

/* The client's real address in its natural family (debug access checks it). */
void conn_peer(const struct conn *c, struct sockaddr_storage *peer, socklen_t *peerlen)
{
	memset(peer, 0, sizeof *peer);
	if (memcmp(c->ip16, "\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0) {
		struct sockaddr_in *in = (struct sockaddr_in *)peer;
		in->sin_family = AF_INET;
		memcpy(&in->sin_addr, c->ip16 + 12, 4);
		in->sin_port = htons(c->port);
		*peerlen = sizeof *in;
	} else {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)peer;
		in6->sin6_family = AF_INET6;
		memcpy(&in6->sin6_addr, c->ip16, 16);
		in6->sin6_port = htons(c->port);
		*peerlen = sizeof *in6;
	}
}

const char *conn_name(const struct conn *c, char out[CONN_NAME_LEN])
{
	struct sockaddr_storage peer;
	socklen_t plen;
	char ks[8];

	conn_peer(c, &peer, &plen);
	log_addr(out, (struct sockaddr *)&peer);
	key_short(ks, c->key);
	if (ks[0]) {
		size_t n = strlen(out);
		snprintf(out + n, CONN_NAME_LEN - n, " %s", ks);
	}
	return out;
}

void conn_free(struct conn *c)
{
	sentto_free(c->sent);
	free(c->hll);
	ws_free(c);
	free(c->lbuf);
	free(c);
}
