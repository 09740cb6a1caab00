/* derpd-bench relay runs: N sender->receiver pairs (or a ring of N clients), fixed
 * payload size, offered rate per sender (paced) or unlimited, warm-up then a measured
 * window. Every packet carries its send time, sender id and sequence number in its first
 * 16 payload bytes. Client threads: one epoll loop each (--threads), non-blocking sockets
 * after the blocking login, 64 KiB writes, 256 KiB reads. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include "server/frame.h"
#include "tools/bench/bench.h"

#define PFX         (FRAME_HEADER_LEN + DERP_KEY_LEN) /* header + key: 37 */
#define HEAD_LEN    (PFX + STAMP_LEN)                 /* what a receiver looks at: 53 */
#define BATCH_BYTES 65536
#define RBUF_LEN    (256 * 1024)
#define HIST_N      (59 * 64) /* log-linear latency histogram, 64 steps per octave */
#define MAX_EV      512
#define WRITE_BUDGET (512 * 1024) /* bytes a thread writes between two looks at epoll */

/* ---- client threads -------------------------------------------------------------- */

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

static void add(uint64_t *p, uint64_t v) /* owner writes, main thread reads relaxed */
{
	__atomic_store_n(p, *p + v, __ATOMIC_RELAXED);
}

static uint64_t get(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

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

/* ---- the run: log in, start the threads, measure, drain, collect ----------------- */

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

void relay_run(struct target *tg, long fdlim)
{
	struct relay_result r = { 0 };
	int nclients;

	/* pairs: client 2p receives from client 2p+1; ring: client i sends to i+1. */
	long need = (opt.ring ? opt.ring : 2L * opt.pairs) + 64;
	if (need > fdlim) {
		long max = fdlim - 64;
		snprintf(r.capped, sizeof r.capped,
			 "this process's fd limit %ld allows %ld clients, not %ld", fdlim, max,
			 need - 64);
		fprintf(stderr, "derpd-bench: %s\n", r.capped);
		if (opt.ring)
			opt.ring = (int)max;
		else
			opt.pairs = (int)(max / 2);
	}
	nclients = opt.ring ? opt.ring : 2 * opt.pairs;
	r.clients = nclients;
	int *fds = malloc(sizeof(int) * (size_t)nclients);
	uint8_t(*pubs)[32] = calloc((size_t)nclients, 32);
	WOLFSSL **ssls = opt.tls ? calloc((size_t)nclients, sizeof *ssls) : NULL;
	if (!fds || !pubs || (opt.tls && !ssls))
		die("out of memory");

	int64_t l0 = now_ns();
	if (tg->raw) {
		raw_connect_all(tg, fds, opt.pairs);
	} else {
		long ok = 0, fail = 0;
		char err[160] = "";
		if (login_all(tg, 0, nclients, opt.login_threads, fds, pubs, ssls, &ok, &fail, err,
			      sizeof err, 1))
			die("%ld of %d logins failed: %s", fail, nclients, err);
	}
	r.login_s = (double)(now_ns() - l0) / 1e9;

	g_frame = (uint32_t)(PFX + opt.size);
	g_batch = BATCH_BYTES / g_frame ? BATCH_BYTES / g_frame : 1;
	g_rxtype = tg->raw ? FRAME_SEND_PACKET : FRAME_RECV_PACKET;
	g_rate = opt.rate;
	g_period = opt.rate > 0 ? 1e9 / opt.rate : 0;
	g_pace_ns = (int64_t)(opt.pace_us * 1000);
	g_nsend = opt.ring ? nclients : opt.pairs;

	int nt = opt.threads;
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
		if (opt.ring) {
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
				frame_put_header(f, FRAME_SEND_PACKET, (uint32_t)(DERP_KEY_LEN + opt.size));
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
	g_t0 = g_tgo + (int64_t)(opt.warmup * 1e9);
	g_t1 = g_t0 + (int64_t)(opt.duration * 1e9);
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
				 t < g_t0 ? opt.warmup : opt.duration, (double)(s.rx - last_rx) / el,
				 (double)(s.rx - last_rx) / el * opt.size * 8 / 1e9);
		last_rx = s.rx;
		last_t = t;
	}
	double cpu1 = tree_cpu(tg->pid), bcpu1 = self_cpu();
	struct mcpu m1 = machine_cpu();
	r.others_pct = 100 * (others_cpu(tg->pid) - oth0) / opt.duration;
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
	while (s.rx_of_win < s.tx_win && now_ns() - d0 < (int64_t)(opt.drain * 1e9) &&
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
	r.pps = (double)s.rx_win / opt.duration;
	r.gbps = (double)s.rx_win_bytes * 8 / opt.duration / 1e9;
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
	r.measured_s = opt.duration;

	for (int i = 0; i < nclients; i++) {
		if (cs[i].ssl)
			wolfSSL_free(cs[i].ssl);
		close_rst(cs[i].fd);
	}
	report_relay(tg, &r, fdlim);
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
