/* derpd-bench: DERP relay load generator and benchmark (issue 3).
 *
 * Relay runs: N sender->receiver pairs (or a ring of N clients), fixed payload size,
 * offered rate per sender (paced) or unlimited, warm-up then a measured window. Every
 * packet carries its send time, sender id and sequence number in its first 16 payload
 * bytes. Reports delivered packets/s, payload Gbit/s, loss, latency percentiles, and the
 * server's CPU seconds and peak RSS from /proc/PID.
 *
 * The server is a derpd the bench starts (--derpd), one already running (-s, --pid), or,
 * as the reference, nginx's stream proxy forwarding the same byte stream from each sender
 * to a receiver socket of the bench (--nginx, or --raw for any running TCP relay).
 *
 * Idle runs (--idle N|max): log in N clients that then stay silent, from several loopback
 * source addresses and, past this process's fd limit, from several processes; report
 * the time to log them all in and the server's RSS per connection.
 *
 * Client threads: one epoll loop each (--threads), non-blocking sockets after the
 * blocking login, 64 KiB writes, 256 KiB reads. Output: a human table, then one JSON
 * line. See man/derpd-bench.1. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include "mesh/derp_client.h"
#include "server/frame.h"
#include "server/key.h"
#include "tools/bench_sys.h"
#include "tools/bench_servers.h"

#ifndef DERPD_VERSION
#define DERPD_VERSION "dev"
#endif
#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define PFX         (FRAME_HEADER_LEN + DERP_KEY_LEN) /* header + key: 37 */
#define STAMP_LEN   16                                /* send ns 8, sender id 4, seq 4 */
#define HEAD_LEN    (PFX + STAMP_LEN)                 /* what a receiver looks at: 53 */
#define BATCH_BYTES 65536
#define RBUF_LEN    (256 * 1024)
#define HIST_N      (59 * 64) /* log-linear latency histogram, 64 steps per octave */
#define MAX_EV      512
#define WRITE_BUDGET (512 * 1024) /* bytes a thread writes between two looks at epoll */

/* ---- options ------------------------------------------------------------------- */

static struct {
	const char *server, *derpd, *nginx, *raw, *label;
	const char *derpd_args[32];
	int n_derpd_args;
	int pid, upstream_port, relay_workers;
	int pairs, ring, size, threads, login_threads, procs, src_addrs, quiet, progress, tls;
	long idle;
	int idle_max;
	double rate, duration, warmup, settle, drain, pace_us, wait_quiet;
} o = {
	.pairs = 10, .size = 1200, .duration = 3, .warmup = 1, .settle = 1, .drain = 3,
	.pace_us = 100, .src_addrs = 8, .login_threads = 8, .progress = -1,
};

/* ---- small helpers ------------------------------------------------------------- */

static int show_progress(void)
{
	return !o.quiet && (o.progress > 0 || (o.progress < 0 && isatty(2)));
}

__attribute__((format(printf, 1, 2)))
static void progress(const char *fmt, ...)
{
	char line[160];
	va_list ap;

	if (!show_progress())
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\r%-79.79s", line);
	fflush(stderr);
}

static void progress_end(void)
{
	if (show_progress())
		fprintf(stderr, "\r%79s\r", "");
}

/* Before a run: how busy the machine is without us; with --wait-quiet, wait (up to that
 * many seconds) until it is under 25 % of one CPU. */
static double g_busy_before, g_waited;

static void wait_quiet(double max_s)
{
	int64_t t0 = now_ns();

	g_busy_before = busy_sample(300);
	while (g_busy_before > 25 && (double)(now_ns() - t0) / 1e9 < max_s) {
		progress("waiting for a quiet machine: %.0f %% busy", g_busy_before);
		g_busy_before = busy_sample(500);
	}
	g_waited = (double)(now_ns() - t0) / 1e9;
}

/* ---- connecting and logging in ----------------------------------------------------- */

/* Blocking TCP connect; loopback targets get source address 127.0.0.(2 + idx % N), so
 * tens of thousands of connections never run out of ephemeral ports. */
static int connect_from(const struct sockaddr_in *dst, long idx, char *err, size_t el)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	if (fd < 0) {
		snprintf(err, el, "socket: %s", strerror(errno));
		return -1;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (o.src_addrs > 0 && (ntohl(dst->sin_addr.s_addr) >> 24) == 127) {
		struct sockaddr_in src = { .sin_family = AF_INET };
		src.sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)(idx % o.src_addrs));
		setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
		if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
			snprintf(err, el, "bind 127.0.0.%ld: %s", 2 + idx % o.src_addrs,
				 strerror(errno));
			close(fd);
			return -1;
		}
	}
	struct timeval tv = { 15, 0 };
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	if (connect(fd, (const struct sockaddr *)dst, sizeof *dst) < 0) {
		snprintf(err, el, "connect: %s", strerror(errno));
		close(fd);
		return -1;
	}
	tv.tv_sec = 0;
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	return fd;
}

/* Connect and log in (HTTP upgrade, ServerKey, ClientInfo, ServerInfo) with the project's
 * client; keep only the socket (non-blocking) and the public key. */
static int derp_login(const struct target *t, long idx, uint8_t pub[32], WOLFSSL **ssl,
		      char *err, size_t el)
{
	int fd = connect_from(&t->addr, idx, err, el);
	if (fd < 0)
		return -1;
	struct derp_client_opts op = { .timeout_ms = 15000, .tls = o.tls, .tls_insecure = 1 };
	struct derp_client *c = derp_client_open_fd(fd, t->hostport, &op);
	if (!c || derp_client_send_info(c) != 0 || derp_client_finish(c) != 0) {
		snprintf(err, el, "login: %s", derp_client_error());
		derp_client_close(c);
		return -1;
	}
	if (pub)
		memcpy(pub, derp_client_public_key(c), 32);
	/* The server sends nothing after ServerInfo before our traffic: no bytes to carry. */
	uint8_t extra[64];
	size_t nextra = 0;
	WOLFSSL *s = NULL;
	int keep = o.tls ? derp_client_detach_tls(c, &s, extra, sizeof extra, &nextra)
			 : derp_client_detach(c, extra, sizeof extra, &nextra);
	if (keep < 0 || nextra) {
		snprintf(err, el, "%s", keep < 0 ? "cannot take the socket from the client"
						 : "unexpected bytes after ServerInfo");
		if (keep < 0)
			derp_client_close(c);
		else
			close(keep);
		if (s)
			wolfSSL_free(s);
		return -1;
	}
	if (ssl)
		*ssl = s;
	else if (s)
		wolfSSL_free(s); /* idle: the connection stays, our session state need not */
	return keep;
}

struct login_job {
	const struct target *t;
	long first, end, step;  /* indices first, first+step, ... < end */
	int *fds;               /* indexed by idx - base */
	long base;
	uint8_t (*pubs)[32];    /* NULL = not kept */
	WOLFSSL **ssls;         /* TLS sessions, NULL = not kept */
	long *ok, *fail;        /* shared counters (atomic) */
	char err[160];
};

static void *login_thread(void *arg)
{
	struct login_job *j = arg;
	char err[160];

	for (long i = j->first; i < j->end; i += j->step) {
		err[0] = 0;
		int fd = derp_login(j->t, i, j->pubs ? j->pubs[i - j->base] : NULL,
				    j->ssls ? &j->ssls[i - j->base] : NULL, err, sizeof err);
		j->fds[i - j->base] = fd;
		__atomic_fetch_add(fd >= 0 ? j->ok : j->fail, 1, __ATOMIC_RELAXED);
		if (err[0] && !j->err[0])
			snprintf(j->err, sizeof j->err, "%s", err);
	}
	return NULL;
}

/* Log in clients [base, end) with nthreads threads; returns failures. */
static long login_all(const struct target *t, long base, long end, int nthreads, int *fds,
		      uint8_t (*pubs)[32], WOLFSSL **ssls, long *ok, long *fail, char *err,
		      size_t el, int show)
{
	if (nthreads > end - base)
		nthreads = (int)(end - base > 0 ? end - base : 1);
	struct login_job *j = calloc((size_t)nthreads, sizeof *j);
	pthread_t *th = calloc((size_t)nthreads, sizeof *th);
	int64_t t0 = now_ns();

	if (!j || !th)
		die("out of memory");
	for (int i = 0; i < nthreads; i++) {
		j[i] = (struct login_job){ t, base + i, end, nthreads, fds, base, pubs, ssls, ok,
					   fail, "" };
		if (pthread_create(&th[i], NULL, login_thread, &j[i]) != 0)
			die("pthread_create: %s", strerror(errno));
	}
	while (show && __atomic_load_n(ok, __ATOMIC_RELAXED) +
			       __atomic_load_n(fail, __ATOMIC_RELAXED) < end - base) {
		usleep(50000);
		progress("logging in: %ld of %ld, %.1f s", __atomic_load_n(ok, __ATOMIC_RELAXED),
			 end - base, (double)(now_ns() - t0) / 1e9);
	}
	for (int i = 0; i < nthreads; i++) {
		pthread_join(th[i], NULL);
		if (j[i].err[0] && !err[0])
			snprintf(err, el, "%s", j[i].err);
	}
	free(j);
	free(th);
	return __atomic_load_n(fail, __ATOMIC_RELAXED);
}

/* ---- relay runs: client threads ------------------------------------------------------ */

enum { R_SEND = 1, R_RECV = 2 };

struct conn {
	int fd;
	WOLFSSL *ssl;      /* DERP over TLS: the session the client library handed over */
	uint8_t role, writable, in_wq, in_rq, dead, hlen;
	uint32_t id;       /* sender id stamped into our packets */
	uint32_t expect;   /* sender id of the packets we should receive */
	uint32_t gidx;     /* rank among all senders (pacing phase) */
	uint32_t seq;
	uint8_t *wbuf;     /* g_batch frames, header and destination key filled in */
	uint32_t woff, wlen, wframes;
	int64_t wstamp;
	uint64_t due;      /* rate mode: frames owed */
	uint64_t skip;     /* receive: bytes of the current frame still to pass over */
	uint8_t hb[HEAD_LEN];
};

struct stats {
	uint64_t tx, tx_win, rx, rx_win, rx_win_bytes, rx_of_win, other, wrong, closed;
};

struct thr {
	pthread_t th;
	int idx, ep, n, nsnd;
	struct conn **c, **snd;
	struct conn **rq, **wq;
	int rqh, rqn, wqh, wqn;
	uint64_t slot;
	int sched_done;
	uint8_t *rbuf;
	uint64_t *hist;
	struct stats st __attribute__((aligned(64)));
	char pad[64];
};

static int64_t g_tgo, g_t0, g_t1, g_pace_ns;
static int g_stop, g_nsend;
static uint32_t g_frame, g_batch;
static uint8_t g_rxtype;
static double g_rate, g_period;

static inline unsigned hist_idx(uint64_t v)
{
	if (v < 64)
		return (unsigned)v;
	unsigned e = 63u - (unsigned)__builtin_clzll(v);
	return (e - 5) * 64 + (unsigned)((v >> (e - 6)) & 63);
}

static double hist_val(unsigned i) /* middle of bucket i, ns */
{
	if (i < 64)
		return i;
	int e = (int)(i / 64) + 5;
	double step = ldexp(1, e - 6);
	return (double)(64 + i % 64) * step + step / 2;
}

static double hist_pct(const uint64_t *h, uint64_t total, double p)
{
	uint64_t want = (uint64_t)ceil(p * (double)total), acc = 0;

	if (!total)
		return 0;
	for (unsigned i = 0; i < HIST_N; i++) {
		acc += h[i];
		if (acc >= want && acc)
			return hist_val(i);
	}
	return hist_val(HIST_N - 1);
}

static void rq_push(struct thr *t, struct conn *c)
{
	if (c->in_rq || c->dead)
		return;
	c->in_rq = 1;
	t->rq[(t->rqh + t->rqn++) % t->n] = c;
}

static void wq_push(struct thr *t, struct conn *c)
{
	if (c->in_wq || c->dead)
		return;
	c->in_wq = 1;
	t->wq[(t->wqh + t->wqn++) % t->n] = c;
}

static void conn_dead(struct thr *t, struct conn *c)
{
	if (c->dead)
		return;
	c->dead = 1;
	epoll_ctl(t->ep, EPOLL_CTL_DEL, c->fd, NULL);
	add(&t->st.closed, 1);
}

static void on_frame(struct thr *t, struct conn *c, const uint8_t *h, uint32_t flen,
		     int64_t now)
{
	int64_t ts;
	uint32_t id;

	if (h[0] != g_rxtype || flen < DERP_KEY_LEN + STAMP_LEN) {
		add(&t->st.other, 1);
		return;
	}
	memcpy(&ts, h + PFX, 8);
	memcpy(&id, h + PFX + 8, 4);
	if (id != c->expect) {
		add(&t->st.wrong, 1);
		return;
	}
	add(&t->st.rx, 1);
	if (ts >= g_t0 && ts < g_t1)
		add(&t->st.rx_of_win, 1);
	if (now >= g_t0 && now < g_t1) {
		add(&t->st.rx_win, 1);
		add(&t->st.rx_win_bytes, flen - DERP_KEY_LEN);
		t->hist[hist_idx(now > ts ? (uint64_t)(now - ts) : 0)]++;
	}
}

/* Stream parser: only the first HEAD_LEN bytes of a frame are looked at (copied aside
 * when a read splits them); the rest is skipped where it lies. */
static void parse(struct thr *t, struct conn *c, const uint8_t *b, size_t n, int64_t now)
{
	for (;;) {
		if (c->skip) {
			if (!n)
				return;
			size_t k = c->skip < n ? (size_t)c->skip : n;
			c->skip -= k;
			b += k;
			n -= k;
			continue;
		}
		if (!c->hlen && n >= HEAD_LEN) {
			uint32_t flen = frame_get_be32(b + 1);
			uint64_t tot = FRAME_HEADER_LEN + (uint64_t)flen;
			on_frame(t, c, b, flen, now);
			if (tot <= n) {
				b += tot;
				n -= (size_t)tot;
			} else {
				c->skip = tot - n;
				n = 0;
			}
			continue;
		}
		size_t need = FRAME_HEADER_LEN;
		if (c->hlen >= FRAME_HEADER_LEN) {
			uint64_t tot = FRAME_HEADER_LEN + (uint64_t)frame_get_be32(c->hb + 1);
			need = tot < HEAD_LEN ? (size_t)tot : HEAD_LEN;
		}
		if (c->hlen < need) {
			if (!n)
				return;
			size_t k = need - c->hlen < n ? need - c->hlen : n;
			memcpy(c->hb + c->hlen, b, k);
			c->hlen = (uint8_t)(c->hlen + k);
			b += k;
			n -= k;
			continue;
		}
		uint32_t flen = frame_get_be32(c->hb + 1);
		on_frame(t, c, c->hb, flen, now);
		c->skip = FRAME_HEADER_LEN + (uint64_t)flen - c->hlen;
		c->hlen = 0;
	}
}

/* Receive time of a read: the kernel's software timestamp of the last segment in it
 * (SO_TIMESTAMPNS, realtime clock, converted), so time this thread spent busy elsewhere
 * before reading is not charged to the server; the read time if there is none. */
static int64_t g_rt_off; /* CLOCK_REALTIME - CLOCK_MONOTONIC */

static int64_t rx_time(struct msghdr *mh, int64_t now)
{
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm))
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
			struct timespec ts;
			memcpy(&ts, CMSG_DATA(cm), sizeof ts);
			int64_t k = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec - g_rt_off;
			if (k <= now && now - k < 1000000000)
				return k;
		}
	return now;
}

/* TLS: wolfSSL hands out a record at a time and may hold decrypted bytes the socket no
 * longer shows, so read until it wants the socket (or a turn's budget is spent). */
static int conn_read_tls(struct thr *t, struct conn *c)
{
	for (size_t got = 0; got < RBUF_LEN;) {
		int r = wolfSSL_read(c->ssl, t->rbuf, RBUF_LEN);
		if (r > 0) {
			parse(t, c, t->rbuf, (size_t)r, now_ns());
			got += (size_t)r;
			continue;
		}
		int e = wolfSSL_get_error(c->ssl, r);
		if (e != WOLFSSL_ERROR_WANT_READ && e != WOLFSSL_ERROR_WANT_WRITE)
			conn_dead(t, c);
		return 0;
	}
	return 1;
}

/* 1 = more may be waiting. */
static int conn_read(struct thr *t, struct conn *c)
{
	if (c->ssl)
		return conn_read_tls(t, c);
	union {
		char buf[CMSG_SPACE(sizeof(struct timespec)) * 2];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { t->rbuf, RBUF_LEN };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
			     .msg_controllen = sizeof ctl.buf };
	ssize_t r = recvmsg(c->fd, &mh, MSG_DONTWAIT);

	if (r > 0) {
		parse(t, c, t->rbuf, (size_t)r, rx_time(&mh, now_ns()));
		return r == RBUF_LEN; /* a short read emptied the socket; epoll tells us again */
	}
	if (r < 0 && errno == EINTR)
		return 1;
	if (r == 0 || errno != EAGAIN)
		conn_dead(t, c);
	return 0;
}

static int has_work(const struct conn *c, int64_t now)
{
	return (c->role & R_SEND) && !c->dead &&
	       (c->woff < c->wlen || (g_rate > 0 ? c->due > 0 : now < g_t1));
}

/* Write (the rest of) a batch; a new batch is stamped with the time it is handed to the
 * kernel. 1 = wrote it all and has more to send. */
static int conn_write(struct thr *t, struct conn *c)
{
	int64_t now = now_ns();

	if (c->woff == c->wlen) {
		uint32_t k = g_batch;
		if (c->dead || (g_rate <= 0 && now >= g_t1))
			return 0;
		if (g_rate > 0) {
			if (!c->due)
				return 0;
			if (c->due < k)
				k = (uint32_t)c->due;
			c->due -= k;
		}
		for (uint32_t i = 0; i < k; i++, c->seq++) {
			uint8_t *p = c->wbuf + (size_t)i * g_frame + PFX;
			memcpy(p, &now, 8);
			memcpy(p + 8, &c->id, 4);
			memcpy(p + 12, &c->seq, 4);
		}
		c->wstamp = now;
		c->wframes = k;
		c->woff = 0;
		c->wlen = k * g_frame;
	}
	ssize_t r;
	if (c->ssl) { /* all or nothing; after WANT_WRITE, the same bytes again */
		int w = wolfSSL_write(c->ssl, c->wbuf + c->woff, (int)(c->wlen - c->woff));
		r = w;
		if (w <= 0) {
			int e = wolfSSL_get_error(c->ssl, w);
			errno = e == WOLFSSL_ERROR_WANT_WRITE || e == WOLFSSL_ERROR_WANT_READ ? EAGAIN
											      : EPIPE;
			r = -1;
		}
	} else {
		r = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL | MSG_DONTWAIT);
	}
	if (r < 0) {
		if (errno == EINTR)
			return 1;
		if (errno == EAGAIN)
			c->writable = 0;
		else
			conn_dead(t, c);
		return 0;
	}
	c->woff += (uint32_t)r;
	if (c->woff < c->wlen) { /* socket buffer full: wait for EPOLLOUT */
		c->writable = 0;
		return 0;
	}
	add(&t->st.tx, c->wframes);
	if (c->wstamp >= g_t0 && c->wstamp < g_t1)
		add(&t->st.tx_win, c->wframes);
	return has_work(c, now);
}

/* Rate mode: sender j of this thread owes frame k at
 * t_go + (k + gidx / senders) / rate, so every sender is paced evenly and the senders'
 * phases are spread over one period. Frames due before now + pace quantum are released.
 * Returns the next due time. */
static int64_t sched(struct thr *t, int64_t now)
{
	int64_t horizon = now + g_pace_ns;

	while (!t->sched_done) {
		uint64_t k = t->slot / (uint64_t)t->nsnd;
		struct conn *c = t->snd[t->slot % (uint64_t)t->nsnd];
		int64_t ts = g_tgo + (int64_t)(((double)k + (double)c->gidx / g_nsend) * g_period);
		if (ts >= g_t1) {
			t->sched_done = 1;
			break;
		}
		if (ts > horizon)
			return ts;
		t->slot++;
		if (c->dead)
			continue;
		c->due++;
		if (c->writable)
			wq_push(t, c);
	}
	return INT64_MAX;
}

static void *thr_run(void *arg)
{
	struct thr *t = arg;
	struct epoll_event ev[MAX_EV];

	prctl(PR_SET_TIMERSLACK, 1000UL);
	t->sched_done = g_rate <= 0 || !t->nsnd;
	if (g_rate <= 0)
		for (int i = 0; i < t->nsnd; i++)
			wq_push(t, t->snd[i]);
	while (!__atomic_load_n(&g_stop, __ATOMIC_RELAXED)) {
		int64_t now = now_ns(), wait = 10000000;
		int64_t next = t->sched_done ? INT64_MAX : sched(t, now);
		if (t->rqn || t->wqn)
			wait = 0;
		else if (next != INT64_MAX && next - now < wait)
			wait = next > now ? next - now : 0;
		struct timespec ts = { (time_t)(wait / 1000000000), (long)(wait % 1000000000) };
		int ne = epoll_pwait2(t->ep, ev, MAX_EV, &ts, NULL);
		now = now_ns();
		for (int i = 0; i < ne; i++) {
			struct conn *c = ev[i].data.ptr;
			if (ev[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP))
				rq_push(t, c);
			if (ev[i].events & EPOLLOUT) {
				c->writable = 1;
				if (has_work(c, now))
					wq_push(t, c);
			}
		}
		for (int k = t->rqn; k > 0; k--) {
			struct conn *c = t->rq[t->rqh];
			t->rqh = (t->rqh + 1) % t->n;
			t->rqn--;
			c->in_rq = 0;
			if (!c->dead && conn_read(t, c))
				rq_push(t, c);
		}
		/* Writes get a byte budget per turn, so receivers are read often however many
		 * senders are flooding: a receiver served late would make the server drop. */
		int64_t budget = WRITE_BUDGET;
		for (int k = t->wqn; k > 0 && budget > 0; k--) {
			struct conn *c = t->wq[t->wqh];
			budget -= c->woff < c->wlen ? c->wlen - c->woff : (int64_t)g_batch * g_frame;
			t->wqh = (t->wqh + 1) % t->n;
			t->wqn--;
			c->in_wq = 0;
			if (!c->dead && conn_write(t, c))
				wq_push(t, c);
		}
	}
	return NULL;
}

/* ---- results and output ---------------------------------------------------------------- */

struct result {
	int clients;
	double login_s, measured_s, drain_s;
	uint64_t sent, delivered, delivered_win, bytes_win, other, wrong, closed;
	double pps, gbps, loss_pct, p50, p99, p999, max;
	double srv_cpu, bench_cpu, mach_pct, softirq_pct, steal_pct, others_pct;
	long srv_hwm, srv_rss;
	double fresh_ms;
	char fresh_err[200];
	char capped[160];
};

static void stats_sum(struct thr *t, int nt, struct stats *s)
{
	memset(s, 0, sizeof *s);
	for (int i = 0; i < nt; i++) {
		s->tx += get(&t[i].st.tx);
		s->tx_win += get(&t[i].st.tx_win);
		s->rx += get(&t[i].st.rx);
		s->rx_win += get(&t[i].st.rx_win);
		s->rx_win_bytes += get(&t[i].st.rx_win_bytes);
		s->rx_of_win += get(&t[i].st.rx_of_win);
		s->other += get(&t[i].st.other);
		s->wrong += get(&t[i].st.wrong);
		s->closed += get(&t[i].st.closed);
	}
}

static const char *shape_name(void)
{
	return o.ring ? "ring" : "pairs";
}

static void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			printf("\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			printf("\\u%04x", *s);
		else
			putchar(*s);
	}
	putchar('"');
}

static void json_common(const struct target *tg, const char *mode)
{
	printf("{\"tool\":\"derpd-bench\",\"version\":\"%s\",\"mode\":\"%s\",\"server\":\"%s\","
	       "\"transport\":\"%s\",\"label\":",
	       DERPD_VERSION, mode, tg->kind, tg->raw ? "tcp" : o.tls ? "https" : "http");
	json_str(o.label ? o.label : "");
	printf(",\"server_pid\":%d,\"cores\":%ld", (int)tg->pid, sysconf(_SC_NPROCESSORS_ONLN));
}

static void print_relay(const struct target *tg, const struct result *r, long fdlim)
{
	char rate[64];

	if (o.rate > 0)
		snprintf(rate, sizeof rate, "%.0f packets/s per sender", o.rate);
	else
		snprintf(rate, sizeof rate, "unlimited");
	if (!o.quiet) {
		printf("derpd-bench %s: %s at %s (pid %d), %s\n", DERPD_VERSION, tg->kind,
		       tg->hostport, (int)tg->pid,
		       tg->raw ? "raw TCP relay of the same frames"
			       : o.tls ? "DERP over TLS (HTTPS)" : "DERP over plain HTTP");
		if (o.ring)
			printf("  %-12s ring of %d clients", "shape", r->clients);
		else
			printf("  %-12s %d pairs", "shape", o.pairs);
		printf(", %d-byte payloads, offered %s, %d threads\n", o.size, rate, o.threads);
		printf("  %-12s %.2f s measured after %.2f s warm-up; login %.2f s, drain %.2f s\n",
		       "time", r->measured_s, o.warmup, r->login_s, r->drain_s);
		printf("  %-12s %.0f packets/s, %.3f Gbit/s payload\n", "delivered", r->pps,
		       r->gbps);
		printf("  %-12s %.3f %% (%llu sent in the window = %.0f packets/s, %llu of them "
		       "delivered)\n", "loss", r->loss_pct, (unsigned long long)r->sent,
		       (double)r->sent / r->measured_s, (unsigned long long)r->delivered);
		printf("  %-12s p50 %.1f us, p99 %.1f us, p99.9 %.1f us, max %.1f us\n",
		       "latency", r->p50, r->p99, r->p999, r->max);
		printf("  %-12s CPU %.2f s (%.0f %%), peak RSS %.1f MiB, RSS %.1f MiB\n", "server",
		       r->srv_cpu, 100 * r->srv_cpu / r->measured_s, r->srv_hwm / 1024.0,
		       r->srv_rss / 1024.0);
		printf("  %-12s CPU %.2f s (%.0f %%)\n", "bench", r->bench_cpu,
		       100 * r->bench_cpu / r->measured_s);
		printf("  %-12s %.0f %% busy of %ld00 %%, softirq %.0f %%, steal %.0f %%, other "
		       "processes %.0f %% (%.0f %% busy before the run)\n", "machine", r->mach_pct,
		       sysconf(_SC_NPROCESSORS_ONLN), r->softirq_pct, r->steal_pct, r->others_pct,
		       g_busy_before);
		if (r->other || r->wrong || r->closed)
			printf("  %-12s %llu other frames, %llu misdelivered, %llu connections "
			       "closed\n", "anomalies", (unsigned long long)r->other,
			       (unsigned long long)r->wrong, (unsigned long long)r->closed);
		if (r->fresh_ms >= 0 || !tg->raw)
			printf("  %-12s a fresh pair logged in and relayed a packet %.1f ms after "
			       "the window%s%s\n", "recovery", r->fresh_ms,
			       r->fresh_ms < 0 ? ": FAILED: " : "", r->fresh_err);
		if (r->capped[0])
			printf("  %-12s %s\n", "capped", r->capped);
	}
	json_common(tg, "relay");
	printf(",\"topology\":\"%s\",\"pairs\":%d,\"clients\":%d,\"payload\":%d,"
	       "\"rate_pps\":%.0f,\"offered_pps\":%.0f,\"threads\":%d,\"warmup_s\":%.3f,"
	       "\"duration_s\":%.3f,\"login_s\":%.3f,\"drain_s\":%.3f,\"sent\":%llu,\"sent_pps\":%.1f,"
	       "\"delivered\":%llu,\"delivered_pps\":%.1f,\"payload_gbps\":%.4f,"
	       "\"loss_pct\":%.4f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
	       "\"max_us\":%.1f,\"server_cpu_s\":%.2f,\"server_cpu_pct\":%.1f,"
	       "\"server_peak_rss_kib\":%ld,\"server_rss_kib\":%ld,\"bench_cpu_s\":%.2f,\"machine_cpu_pct\":%.1f,\"softirq_pct\":%.1f,\"steal_pct\":%.1f,"
	       "\"others_cpu_pct\":%.1f,\"busy_before_pct\":%.1f,\"waited_s\":%.1f,"
	       "\"fresh_pair_ms\":%.1f,"
	       "\"other_frames\":%llu,\"misdelivered\":%llu,\"closed\":%llu,\"fd_limit\":%ld,"
	       "\"capped\":",
	       shape_name(), o.ring ? 0 : o.pairs, r->clients, o.size, o.rate,
	       o.rate * (o.ring ? r->clients : o.pairs), o.threads, o.warmup, r->measured_s,
	       r->login_s, r->drain_s, (unsigned long long)r->sent, (double)r->sent / r->measured_s,
	       (unsigned long long)r->delivered, r->pps, r->gbps, r->loss_pct, r->p50, r->p99,
	       r->p999, r->max, r->srv_cpu, 100 * r->srv_cpu / r->measured_s, r->srv_hwm,
	       r->srv_rss, r->bench_cpu, r->mach_pct, r->softirq_pct, r->steal_pct, r->others_pct,
	       g_busy_before, g_waited, r->fresh_ms,
	       (unsigned long long)r->other,
	       (unsigned long long)r->wrong, (unsigned long long)r->closed, fdlim);
	json_str(r->capped);
	printf(",\"fresh_pair_error\":");
	json_str(r->fresh_err);
	printf("}\n");
	fflush(stdout);
}

/* ---- relay run ---------------------------------------------------------------------- */

/* Raw relay: for each pair, connect the sender to the relay, then accept the connection
 * the relay makes to our upstream listener: that is the pair's receiver. */
static void raw_connect_all(const struct target *tg, int *fds, int npairs)
{
	char err[160];

	for (int p = 0; p < npairs; p++) {
		int s = connect_from(&tg->addr, p, err, sizeof err);
		if (s < 0)
			die("pair %d: %s: %s", p, tg->hostport, err);
		struct pollfd pf = { tg->upfd, POLLIN, 0 };
		if (poll(&pf, 1, 5000) != 1)
			die("pair %d: the relay did not connect to 127.0.0.1:%d within 5 s", p,
			    bound_port(tg->upfd));
		int r = accept4(tg->upfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (r < 0)
			die("accept: %s", strerror(errno));
		int one = 1;
		setsockopt(r, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		fcntl(s, F_SETFL, fcntl(s, F_GETFL) | O_NONBLOCK);
		fds[2 * p] = r;
		fds[2 * p + 1] = s;
		if ((p & 63) == 0)
			progress("connecting %d/%d pairs", p, npairs);
	}
}

/* Overload must not wedge the server: right after the window, with the backlog still
 * draining, a fresh pair logs in and relays one packet. Milliseconds, -1 on failure. */
static double fresh_pair_ms(const struct target *tg, char *err, size_t el)
{
	struct derp_client_opts op = { .timeout_ms = 5000, .tls = o.tls, .tls_insecure = 1 };
	char host[INET_ADDRSTRLEN];
	double ms = -1;
	int64_t t0 = now_ns();
	int r = 0;

	inet_ntop(AF_INET, &tg->addr.sin_addr, host, sizeof host);
	struct derp_client *a = derp_client_connect(host, ntohs(tg->addr.sin_port), &op);
	struct derp_client *b = a ? derp_client_connect(host, ntohs(tg->addr.sin_port), &op) : NULL;
	if (!b)
		snprintf(err, el, "login %s: %s", a ? "b" : "a", derp_client_error());
	else if ((r = derp_client_send(a, derp_client_public_key(b), "fresh pair", 10)) != 0)
		snprintf(err, el, "send: %s", derp_client_error());
	for (struct derp_msg m; b && !r && ms < 0;) {
		if ((r = derp_client_recv(b, &m, 5000)) != 0)
			snprintf(err, el, "receive (%.0f ms): %s", (double)(now_ns() - t0) / 1e6,
				 r == DERP_CLIENT_TIMEOUT ? "no packet within 5 s"
							  : derp_client_error());
		else if (m.kind == DERP_MSG_PACKET)
			ms = (double)(now_ns() - t0) / 1e6;
	}
	if (b && r == DERP_CLIENT_TIMEOUT) {
		/* Lost, or stuck until something else moves it: in the receiver's queue (a packet
		 * from a third client frees it) or unread on the sender's socket (one more from
		 * the sender does)? */
		struct derp_msg m;
		int got[2] = { 0, 0 };
		struct derp_client *c = derp_client_connect(host, ntohs(tg->addr.sin_port), &op);
		for (int i = 0; i < 2; i++) {
			derp_client_send(i ? a : c ? c : a, derp_client_public_key(b), "fresh", 5);
			while (derp_client_recv(b, &m, 1000) == 0)
				got[i] += m.kind == DERP_MSG_PACKET;
		}
		derp_client_close(c);
		size_t l = strlen(err);
		snprintf(err + l, el - l, "; then a packet from a third client brought %d, one more "
			 "from the sender %d", got[0], got[1]);
	}
	derp_client_close(a);
	derp_client_close(b);
	return ms;
}

static void run_relay(struct target *tg, long fdlim)
{
	struct result r = { 0 };
	int nclients;

	/* pairs: client 2p receives from client 2p+1; ring: client i sends to i+1. */
	long need = (o.ring ? o.ring : 2L * o.pairs) + 64;
	if (need > fdlim) {
		long max = fdlim - 64;
		snprintf(r.capped, sizeof r.capped,
			 "this process's fd limit %ld allows %ld clients, not %ld", fdlim, max,
			 need - 64);
		fprintf(stderr, "derpd-bench: %s\n", r.capped);
		if (o.ring)
			o.ring = (int)max;
		else
			o.pairs = (int)(max / 2);
	}
	nclients = o.ring ? o.ring : 2 * o.pairs;
	r.clients = nclients;
	int *fds = malloc(sizeof(int) * (size_t)nclients);
	uint8_t(*pubs)[32] = calloc((size_t)nclients, 32);
	WOLFSSL **ssls = o.tls ? calloc((size_t)nclients, sizeof *ssls) : NULL;
	if (!fds || !pubs || (o.tls && !ssls))
		die("out of memory");

	int64_t l0 = now_ns();
	if (tg->raw) {
		raw_connect_all(tg, fds, o.pairs);
	} else {
		long ok = 0, fail = 0;
		char err[160] = "";
		if (login_all(tg, 0, nclients, o.login_threads, fds, pubs, ssls, &ok, &fail, err,
			      sizeof err, 1))
			die("%ld of %d logins failed: %s", fail, nclients, err);
	}
	r.login_s = (double)(now_ns() - l0) / 1e9;

	g_frame = (uint32_t)(PFX + o.size);
	g_batch = BATCH_BYTES / g_frame ? BATCH_BYTES / g_frame : 1;
	g_rxtype = tg->raw ? FRAME_SEND_PACKET : FRAME_RECV_PACKET;
	g_rate = o.rate;
	g_period = o.rate > 0 ? 1e9 / o.rate : 0;
	g_pace_ns = (int64_t)(o.pace_us * 1000);
	g_nsend = o.ring ? nclients : o.pairs;

	int nt = o.threads;
	struct thr *th = aligned_alloc(64, sizeof(struct thr) * (size_t)nt);
	struct conn *cs = calloc((size_t)nclients, sizeof *cs);
	if (!th || !cs)
		die("out of memory");
	memset(th, 0, sizeof(struct thr) * (size_t)nt);
	for (int i = 0; i < nt; i++) {
		th[i].idx = i;
		th[i].ep = epoll_create1(EPOLL_CLOEXEC);
		th[i].c = calloc((size_t)nclients, sizeof(struct conn *));
		th[i].snd = calloc((size_t)nclients, sizeof(struct conn *));
		th[i].rq = calloc((size_t)nclients, sizeof(struct conn *));
		th[i].wq = calloc((size_t)nclients, sizeof(struct conn *));
		th[i].rbuf = malloc(RBUF_LEN);
		th[i].hist = calloc(HIST_N, sizeof(uint64_t));
		if (th[i].ep < 0 || !th[i].c || !th[i].snd || !th[i].rq || !th[i].wq ||
		    !th[i].rbuf || !th[i].hist)
			die("out of memory");
	}
	/* Threads: pair p's sender on thread p % T, its receiver on (p + 1) % T, so even one
	 * pair uses two threads; ring client i on thread i % T. Senders in rank order. */
	for (int i = 0; i < nclients; i++) {
		struct conn *c = &cs[i];
		int rank, tix;
		const uint8_t *dst;
		c->fd = fds[i];
		c->ssl = ssls ? ssls[i] : NULL;
		c->writable = 1;
		if (o.ring) {
			rank = i;
			c->role = R_SEND | R_RECV;
			c->id = (uint32_t)i;
			c->expect = (uint32_t)((i + nclients - 1) % nclients);
			dst = pubs[(i + 1) % nclients];
			tix = i % nt;
		} else if (i % 2 == 0) {
			rank = -1;
			c->role = R_RECV;
			c->expect = (uint32_t)(i / 2);
			dst = NULL;
			tix = (i / 2 + 1) % nt;
		} else {
			rank = i / 2;
			c->role = R_SEND;
			c->id = (uint32_t)(i / 2);
			dst = pubs[i - 1];
			tix = (i / 2) % nt;
		}
		struct thr *t = &th[tix];
		t->c[t->n++] = c;
		struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.ptr = c };
		if (c->role & R_SEND) {
			ev.events |= EPOLLOUT;
			c->gidx = (uint32_t)rank;
			t->snd[t->nsnd++] = c;
			c->wbuf = malloc((size_t)g_batch * g_frame);
			if (!c->wbuf)
				die("out of memory");
			memset(c->wbuf, 0, (size_t)g_batch * g_frame);
			for (uint32_t k = 0; k < g_batch; k++) {
				uint8_t *f = c->wbuf + (size_t)k * g_frame;
				frame_put_header(f, FRAME_SEND_PACKET, (uint32_t)(DERP_KEY_LEN + o.size));
				memcpy(f + FRAME_HEADER_LEN, dst, DERP_KEY_LEN);
			}
		}
		int one = 1;
		if ((c->role & R_RECV) && !c->ssl)
			setsockopt(c->fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
		if (epoll_ctl(t->ep, EPOLL_CTL_ADD, c->fd, &ev) != 0)
			die("epoll_ctl: %s", strerror(errno));
	}

	/* Go. The window is [t0, t1): sends stamped in it are "sent", receives in it count
	 * toward throughput and latency, and sends stamped in it that arrive (even during the
	 * drain) count as delivered for the loss figure. */
	struct timespec rt;
	clock_gettime(CLOCK_REALTIME, &rt);
	g_rt_off = (int64_t)rt.tv_sec * 1000000000 + rt.tv_nsec - now_ns();
	g_tgo = now_ns() + 2000000;
	g_t0 = g_tgo + (int64_t)(o.warmup * 1e9);
	g_t1 = g_t0 + (int64_t)(o.duration * 1e9);
	g_stop = 0;
	for (int i = 0; i < nt; i++)
		if (pthread_create(&th[i].th, NULL, thr_run, &th[i]) != 0)
			die("pthread_create: %s", strerror(errno));

	struct stats s;
	double cpu0 = -1, bcpu0 = 0;
	struct mcpu m0 = { 0, 0, 0, 0 };
	double oth0 = 0;
	uint64_t last_rx = 0;
	int64_t last_t = now_ns();
	for (int64_t t = now_ns(); t < g_t1; t = now_ns()) {
		int64_t next = t + 500000000;
		if (cpu0 < 0 && next >= g_t0)
			next = g_t0;
		if (next > g_t1)
			next = g_t1;
		sleep_until(next);
		t = now_ns();
		if (cpu0 < 0 && t >= g_t0) {
			cpu0 = tree_cpu(tg->pid);
			bcpu0 = self_cpu();
			m0 = machine_cpu();
			oth0 = others_cpu(tg->pid);
		}
		stats_sum(th, nt, &s);
		double el = (double)(t - last_t) / 1e9;
		if (el > 0.05)
			progress("%s %4.1f/%.1f s  %9.0f packets/s delivered  %6.3f Gbit/s",
				 t < g_t0 ? "warm-up" : "measure",
				 (double)(t - (t < g_t0 ? g_tgo : g_t0)) / 1e9,
				 t < g_t0 ? o.warmup : o.duration, (double)(s.rx - last_rx) / el,
				 (double)(s.rx - last_rx) / el * o.size * 8 / 1e9);
		last_rx = s.rx;
		last_t = t;
	}
	double cpu1 = tree_cpu(tg->pid), bcpu1 = self_cpu();
	struct mcpu m1 = machine_cpu();
	r.others_pct = 100 * (others_cpu(tg->pid) - oth0) / o.duration;
	double ncpu = (double)sysconf(_SC_NPROCESSORS_ONLN), mt = m1.total - m0.total;
	if (mt > 0) {
		r.mach_pct = 100 * ncpu * (m1.busy - m0.busy) / mt;
		r.softirq_pct = 100 * ncpu * (m1.softirq - m0.softirq) / mt;
		r.steal_pct = 100 * ncpu * (m1.steal - m0.steal) / mt;
	}
	r.measured_s = (double)(now_ns() - g_t0) / 1e9;
	r.fresh_ms = tg->raw ? -1 : fresh_pair_ms(tg, r.fresh_err, sizeof r.fresh_err);

	/* Drain: until every packet sent in the window has arrived, nothing arrives for
	 * 300 ms, or --drain seconds. */
	int64_t d0 = now_ns(), quiet_since = d0;
	stats_sum(th, nt, &s);
	last_rx = s.rx;
	while (s.rx_of_win < s.tx_win && now_ns() - d0 < (int64_t)(o.drain * 1e9) &&
	       now_ns() - quiet_since < 300000000) {
		usleep(20000);
		stats_sum(th, nt, &s);
		if (s.rx != last_rx) {
			last_rx = s.rx;
			quiet_since = now_ns();
		}
		progress("drain %.2f s: %llu of %llu delivered", (double)(now_ns() - d0) / 1e9,
			 (unsigned long long)s.rx_of_win, (unsigned long long)s.tx_win);
	}
	r.drain_s = (double)(now_ns() - d0) / 1e9;
	__atomic_store_n(&g_stop, 1, __ATOMIC_RELAXED);
	for (int i = 0; i < nt; i++)
		pthread_join(th[i].th, NULL);
	progress_end();
	r.srv_hwm = tree_status_kib(tg->pid, "VmHWM");
	r.srv_rss = tree_status_kib(tg->pid, "VmRSS");

	stats_sum(th, nt, &s);
	uint64_t *hist = calloc(HIST_N, sizeof(uint64_t));
	if (!hist)
		die("out of memory");
	for (int i = 0; i < nt; i++)
		for (unsigned k = 0; k < HIST_N; k++)
			hist[k] += th[i].hist[k];
	r.sent = s.tx_win;
	r.delivered = s.rx_of_win;
	r.delivered_win = s.rx_win;
	r.bytes_win = s.rx_win_bytes;
	r.other = s.other;
	r.wrong = s.wrong;
	r.closed = s.closed;
	r.pps = (double)s.rx_win / o.duration;
	r.gbps = (double)s.rx_win_bytes * 8 / o.duration / 1e9;
	r.loss_pct = s.tx_win ? 100.0 * (1.0 - (double)s.rx_of_win / (double)s.tx_win) : 0;
	if (r.loss_pct < 0)
		r.loss_pct = 0;
	r.p50 = hist_pct(hist, s.rx_win, 0.50) / 1000;
	r.p99 = hist_pct(hist, s.rx_win, 0.99) / 1000;
	r.p999 = hist_pct(hist, s.rx_win, 0.999) / 1000;
	for (unsigned k = 0; k < HIST_N; k++)
		if (hist[k])
			r.max = hist_val(k) / 1000;
	r.srv_cpu = cpu0 >= 0 && cpu1 >= 0 ? cpu1 - cpu0 : -1;
	r.bench_cpu = bcpu1 - bcpu0;
	r.measured_s = o.duration;

	for (int i = 0; i < nclients; i++) {
		if (cs[i].ssl)
			wolfSSL_free(cs[i].ssl);
		close_rst(cs[i].fd);
	}
	print_relay(tg, &r, fdlim);
	for (int i = 0; i < nt; i++) {
		close(th[i].ep);
		free(th[i].c);
		free(th[i].snd);
		free(th[i].rq);
		free(th[i].wq);
		free(th[i].rbuf);
		free(th[i].hist);
	}
	for (int i = 0; i < nclients; i++)
		free(cs[i].wbuf);
	free(th);
	free(cs);
	free(hist);
	free(fds);
	free(pubs);
	free(ssls);
}

/* ---- idle-connection run --------------------------------------------------------------- */

struct idle_share {  /* one per process, in shared memory */
	long ok, fail;
	int64_t t_done;
	int done;
	char err[160];
};

static void idle_child(const struct target *tg, struct idle_share *sh, long lo, long hi,
		       int threads, int ctl)
{
	int *fds = malloc(sizeof(int) * (size_t)(hi - lo));

	if (!fds)
		_exit(1);
	login_all(tg, lo, hi, threads, fds, NULL, NULL, &sh->ok, &sh->fail, sh->err,
		  sizeof sh->err, 0);
	sh->t_done = now_ns();
	__atomic_store_n(&sh->done, 1, __ATOMIC_RELEASE);
	char b;
	while (read(ctl, &b, 1) < 0 && errno == EINTR) /* hold them until the parent is done */
		;
	for (long i = 0; i < hi - lo; i++)
		close_rst(fds[i]);
	_exit(0);
}

static void run_idle(struct target *tg, long fdlim)
{
	char capped[200] = "";
	long n = o.idle;

	if (tg->raw)
		die("--idle needs a DERP server (--derpd or -s)");
	long srv_lim = tg->pid ? proc_fd_limit(tg->pid) : -1;
	long srv_open = tg->pid ? proc_fd_count(tg->pid) : -1;
	if (srv_lim > 0 && srv_open >= 0) {
		long room = srv_lim - srv_open - 16; /* derpd keeps a few fds for itself */
		if (o.idle_max || n > room) {
			snprintf(capped, sizeof capped,
				 "the server's fd limit %ld (%ld open) allows %ld connections%s", srv_lim,
				 srv_open, room, o.idle_max ? "" : "; fewer than asked");
			if (!o.idle_max)
				fprintf(stderr, "derpd-bench: %s\n", capped);
			n = room;
		}
	} else if (o.idle_max) {
		die("--idle max needs the server's pid (--derpd, or -s with --pid)");
	}
	if (n < 1)
		die("no connections to open");
	long per = fdlim - 64 - o.login_threads; /* fds one bench process can hold */
	int procs = o.procs > 0 ? o.procs : (int)((n + per - 1) / per);
	if ((n + procs - 1) / procs > per)
		die("%d processes x %ld fds cannot hold %ld connections", procs, per, n);
	int threads = o.login_threads / procs > 0 ? o.login_threads / procs : 1;

	sleep_s(0.2);
	long rss0 = proc_status_kib(tg->pid, "VmRSS");
	struct idle_share *sh = mmap(NULL, sizeof *sh * (size_t)procs, PROT_READ | PROT_WRITE,
				     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	int ctl[2];
	if (sh == MAP_FAILED || pipe2(ctl, O_CLOEXEC) != 0)
		die("mmap/pipe: %s", strerror(errno));
	memset(sh, 0, sizeof *sh * (size_t)procs);
	pid_t *kids = calloc((size_t)procs, sizeof(pid_t));
	fflush(stdout);
	fflush(stderr);
	int64_t t0 = now_ns();
	for (int i = 0; i < procs; i++) {
		long lo = n * i / procs, hi = n * (i + 1) / procs;
		kids[i] = fork();
		if (kids[i] < 0)
			die("fork: %s", strerror(errno));
		if (kids[i] == 0) {
			close(ctl[1]);
			spawned[0] = spawned[1] = 0;
			idle_child(tg, &sh[i], lo, hi, threads, ctl[0]);
		}
	}
	close(ctl[0]);
	long ok = 0, fail = 0;
	int64_t t_done = t0;
	for (int done = 0; done < procs;) {
		usleep(20000);
		ok = fail = 0;
		done = 0;
		for (int i = 0; i < procs; i++) {
			ok += __atomic_load_n(&sh[i].ok, __ATOMIC_RELAXED);
			fail += __atomic_load_n(&sh[i].fail, __ATOMIC_RELAXED);
			if (__atomic_load_n(&sh[i].done, __ATOMIC_ACQUIRE)) {
				done++;
				if (sh[i].t_done > t_done)
					t_done = sh[i].t_done;
			} else if (waitpid(kids[i], NULL, WNOHANG) == kids[i]) {
				die("login process %d died", i);
			}
		}
		progress("logging in: %ld of %ld (%ld failed), %.1f s", ok, n, fail,
			 (double)(now_ns() - t0) / 1e9);
	}
	double connect_s = (double)(t_done - t0) / 1e9;
	progress("logged in %ld; settling %.1f s", ok, o.settle);
	sleep_s(o.settle);
	long rss1 = proc_status_kib(tg->pid, "VmRSS");
	long hwm = proc_status_kib(tg->pid, "VmHWM");
	long srv_fds = proc_fd_count(tg->pid);
	close(ctl[1]);
	for (int i = 0; i < procs; i++)
		waitpid(kids[i], NULL, 0);
	progress_end();
	const char *err = "";
	for (int i = 0; i < procs && !err[0]; i++)
		err = sh[i].err;
	double per_conn = ok > 0 && rss0 > 0 && rss1 > 0 ? (double)(rss1 - rss0) * 1024 / ok : -1;

	if (!o.quiet) {
		printf("derpd-bench %s: %s at %s (pid %d), idle logged-in clients%s\n", DERPD_VERSION,
		       tg->kind, tg->hostport, (int)tg->pid, o.tls ? " over TLS" : "");
		printf("  %-12s %ld logged in of %ld (%ld failed%s%s), %d process%s x %d login "
		       "threads, %d source addresses\n", "clients", ok, n, fail,
		       err[0] ? ": " : "", err, procs, procs > 1 ? "es" : "", threads,
		       o.src_addrs);
		printf("  %-12s %.2f s to log them all in (%.0f logins/s)\n", "connect",
		       connect_s, connect_s > 0 ? ok / connect_s : 0);
		printf("  %-12s RSS %.1f MiB before, %.1f MiB with them (peak %.1f MiB): "
		       "%.0f bytes per connection\n", "server", rss0 / 1024.0, rss1 / 1024.0,
		       hwm / 1024.0, per_conn);
		printf("  %-12s %ld open descriptors, limit %ld\n", "server fds", srv_fds, srv_lim);
		if (capped[0])
			printf("  %-12s %s\n", "capped", capped);
	}
	json_common(tg, "idle");
	printf(",\"requested\":%ld,\"clients\":%ld,\"failed\":%ld,\"procs\":%d,"
	       "\"login_threads\":%d,\"src_addrs\":%d,\"connect_s\":%.3f,\"logins_per_s\":%.0f,"
	       "\"server_rss_before_kib\":%ld,\"server_rss_kib\":%ld,\"server_peak_rss_kib\":%ld,"
	       "\"rss_per_conn_bytes\":%.0f,\"server_fds\":%ld,\"server_fd_limit\":%ld,"
	       "\"fd_limit\":%ld,\"busy_before_pct\":%.1f,\"waited_s\":%.1f,\"error\":",
	       o.idle_max ? n : o.idle, ok, fail, procs, threads, o.src_addrs, connect_s,
	       connect_s > 0 ? ok / connect_s : 0, rss0, rss1, hwm, per_conn, srv_fds, srv_lim,
	       fdlim, g_busy_before, g_waited);
	json_str(err);
	printf(",\"capped\":");
	json_str(capped);
	printf("}\n");
	fflush(stdout);
	munmap(sh, sizeof *sh * (size_t)procs);
	free(kids);
}

/* ---- main ------------------------------------------------------------------------------ */

static void usage(FILE *f, int status)
{
	fprintf(f,
		"usage: derpd-bench (--derpd PATH | -s HOST:PORT [--pid PID] | --nginx [PATH] |\n"
		"                    --raw HOST:PORT --upstream-port Q) [options]\n"
		"server (one of):\n"
		"  --derpd PATH        start PATH -a 127.0.0.1:0 -c <tmp>/k.json -stun=false\n"
		"  --derpd-arg ARG     one more argument for that derpd (repeatable)\n"
		"  -s, --server H:P    a derpd already running (plain HTTP)\n"
		"  --pid PID           its pid, for CPU and RSS from /proc\n"
		"  --nginx[=PATH]      the reference: start nginx forwarding raw TCP\n"
		"  --relay-workers N   nginx worker processes (default: online CPUs)\n"
		"  --raw H:P           a running TCP relay that forwards to 127.0.0.1:Q\n"
		"  --upstream-port Q   where the bench listens for that relay (--raw)\n"
		"relay runs:\n"
		"  -p, --pairs N       sender->receiver pairs (default 10)\n"
		"  --ring N            ring of N clients, each sending to the next\n"
		"  -l, --size B        payload bytes, 16..65536 (default 1200)\n"
		"  -r, --rate R        packets/s per sender, 0 = unlimited (default 0)\n"
		"  -d, --duration S    measured seconds (default 3)\n"
		"  -W, --warmup S      warm-up seconds (default 1)\n"
		"  --drain S           longest wait for packets in flight after (default 3)\n"
		"  --pace-us U         rate-mode pacing quantum in microseconds (default 100)\n"
		"  -j, --threads N     client epoll threads (default: online CPUs)\n"
		"idle runs:\n"
		"  --idle N|max        log in N silent clients (max: what the server's fd limit allows)\n"
		"  --procs N           bench processes to spread them over (default: as needed)\n"
		"  --settle S          wait before reading the server's RSS (default 1)\n"
		"both:\n"
		"  --login-threads N   concurrent logins (default 8)\n"
		"  --src-addrs N       loopback source addresses 127.0.0.2.. (default 8, 0 = kernel)\n"
		"  --tls               DERP over TLS (--derpd: self-signed certificate)\n"
		"  --wait-quiet S      first wait up to S s for the machine to be under 25 %% busy\n"
		"  --label TEXT        copied into the JSON line\n"
		"  -q, --quiet         only the JSON line\n"
		"  --progress, --no-progress   progress line on stderr (default: if a terminal)\n");
	exit(status);
}

static double num(const char *s, const char *what, double lo, double hi)
{
	char *end;
	double v = strtod(s, &end);

	if (end == s || *end || !(v >= lo && v <= hi)) {
		fprintf(stderr, "derpd-bench: %s: \"%s\" is not a number in %g..%g\n", what, s,
			lo, hi);
		exit(2);
	}
	return v;
}

int main(int argc, char **argv)
{
	enum { O_PID = 256, O_DERPD, O_DERPD_ARG, O_NGINX, O_RAW, O_UP, O_RW, O_RING, O_DRAIN,
	       O_PACE, O_IDLE, O_PROCS, O_SETTLE, O_LT, O_SRC, O_TLS, O_LABEL, O_PROG, O_NOPROG, O_QUIET };
	static const struct option lo[] = {
		{ "server", 1, 0, 's' }, { "pid", 1, 0, O_PID }, { "derpd", 1, 0, O_DERPD },
		{ "derpd-arg", 1, 0, O_DERPD_ARG }, { "nginx", 2, 0, O_NGINX },
		{ "raw", 1, 0, O_RAW }, { "upstream-port", 1, 0, O_UP },
		{ "relay-workers", 1, 0, O_RW }, { "pairs", 1, 0, 'p' }, { "ring", 1, 0, O_RING },
		{ "size", 1, 0, 'l' }, { "rate", 1, 0, 'r' }, { "duration", 1, 0, 'd' },
		{ "warmup", 1, 0, 'W' }, { "drain", 1, 0, O_DRAIN }, { "pace-us", 1, 0, O_PACE },
		{ "threads", 1, 0, 'j' }, { "idle", 1, 0, O_IDLE }, { "procs", 1, 0, O_PROCS },
		{ "settle", 1, 0, O_SETTLE }, { "login-threads", 1, 0, O_LT },
		{ "src-addrs", 1, 0, O_SRC }, { "tls", 0, 0, O_TLS }, { "label", 1, 0, O_LABEL },
		{ "quiet", 0, 0, 'q' }, { "progress", 0, 0, O_PROG },
		{ "no-progress", 0, 0, O_NOPROG }, { "wait-quiet", 1, 0, O_QUIET }, { "help", 0, 0, 'h' }, { 0, 0, 0, 0 },
	};
	int opt;

	o.threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
	while ((opt = getopt_long(argc, argv, "s:p:l:r:d:W:j:qh", lo, NULL)) != -1) {
		switch (opt) {
		case 's': o.server = optarg; break;
		case O_PID: o.pid = (int)num(optarg, "--pid", 1, 1 << 30); break;
		case O_DERPD: o.derpd = optarg; break;
		case O_DERPD_ARG:
			if (o.n_derpd_args >= 32)
				die("too many --derpd-arg");
			o.derpd_args[o.n_derpd_args++] = optarg;
			break;
		case O_NGINX: o.nginx = optarg ? optarg : "nginx"; break;
		case O_RAW: o.raw = optarg; break;
		case O_UP: o.upstream_port = (int)num(optarg, "--upstream-port", 1, 65535); break;
		case O_RW: o.relay_workers = (int)num(optarg, "--relay-workers", 1, 64); break;
		case 'p': o.pairs = (int)num(optarg, "--pairs", 1, 1000000); break;
		case O_RING: o.ring = (int)num(optarg, "--ring", 2, 1000000); break;
		case 'l': o.size = (int)num(optarg, "--size", STAMP_LEN, DERP_MAX_PACKET); break;
		case 'r': o.rate = num(optarg, "--rate", 0, 1e9); break;
		case 'd': o.duration = num(optarg, "--duration", 0.1, 86400); break;
		case 'W': o.warmup = num(optarg, "--warmup", 0, 86400); break;
		case O_DRAIN: o.drain = num(optarg, "--drain", 0, 600); break;
		case O_PACE: o.pace_us = num(optarg, "--pace-us", 0, 1e6); break;
		case 'j': o.threads = (int)num(optarg, "--threads", 1, 256); break;
		case O_IDLE:
			if (!strcmp(optarg, "max"))
				o.idle_max = 1, o.idle = 1;
			else
				o.idle = (long)num(optarg, "--idle", 1, 1e7);
			break;
		case O_PROCS: o.procs = (int)num(optarg, "--procs", 1, 1000); break;
		case O_SETTLE: o.settle = num(optarg, "--settle", 0, 600); break;
		case O_LT: o.login_threads = (int)num(optarg, "--login-threads", 1, 1024); break;
		case O_SRC: o.src_addrs = (int)num(optarg, "--src-addrs", 0, 250); break;
		case O_TLS: o.tls = 1; break;
		case O_LABEL: o.label = optarg; break;
		case 'q': o.quiet = 1; break;
		case O_PROG: o.progress = 1; break;
		case O_NOPROG: o.progress = 0; break;
		case O_QUIET: o.wait_quiet = num(optarg, "--wait-quiet", 0, 3600); break;
		case 'h': usage(stdout, 0); break;
		default: usage(stderr, 2);
		}
	}
	if (optind != argc)
		usage(stderr, 2);
	if (!!o.server + !!o.derpd + !!o.nginx + !!o.raw != 1) {
		fprintf(stderr, "derpd-bench: give exactly one of --derpd, -s, --nginx, --raw\n");
		usage(stderr, 2);
	}
	if (o.tls && (o.nginx || o.raw))
		die("--tls: the reference relay runs are plain TCP only");
	if (o.raw && !o.upstream_port)
		die("--raw needs --upstream-port");
	if ((o.nginx || o.raw) && o.ring)
		die("--ring needs a DERP server: a raw relay forwards one stream to one receiver");

	signal(SIGPIPE, SIG_IGN);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	if (key_init() != 0)
		die("libsodium initialisation failed");
	/* The client library calls wolfSSL_Init() for every connection; the first call is not
	 * safe from several login threads at once (it initialises wolfSSL's global RNG mutex):
	 * make it here, before any thread. */
	if (o.tls && wolfSSL_Init() != WOLFSSL_SUCCESS)
		die("wolfSSL initialisation failed");
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	getrlimit(RLIMIT_NOFILE, &rl);
	long fdlim = (long)rl.rlim_cur;

	struct target tg = { .kind = "derpd", .upfd = -1 };
	if (o.derpd) {
		start_derpd(&tg, o.derpd, o.derpd_args, o.n_derpd_args, o.tls);
	} else if (o.server) {
		parse_hostport(o.server, &tg.addr);
		set_hostport(&tg);
		tg.pid = o.pid;
	} else if (o.nginx) {
		tg.kind = "nginx";
		tg.raw = 1;
		start_nginx(&tg, o.nginx, o.relay_workers > 0 ? o.relay_workers
						   : (int)sysconf(_SC_NPROCESSORS_ONLN));
	} else {
		tg.kind = "relay";
		tg.raw = 1;
		parse_hostport(o.raw, &tg.addr);
		set_hostport(&tg);
		tg.pid = o.pid;
		struct sockaddr_in a = { .sin_family = AF_INET,
					 .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
					 .sin_port = htons((uint16_t)o.upstream_port) };
		int one = 1;
		tg.upfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		setsockopt(tg.upfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (bind(tg.upfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(tg.upfd, 4096) < 0)
			die("listen on 127.0.0.1:%d: %s", o.upstream_port, strerror(errno));
	}
	wait_quiet(o.wait_quiet);
	if (o.idle)
		run_idle(&tg, fdlim);
	else
		run_relay(&tg, fdlim);
	stop_target(&tg);
	return 0;
}
