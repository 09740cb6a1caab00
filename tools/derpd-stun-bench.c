/* derpd-stun-bench: STUN Binding requests answered per second on loopback, from many
 * client sockets each keeping a window of requests in flight. Targets an in-process
 * responder (the same stun/ code derpd runs) or any running server given with -s.
 * Prints a human table, then one JSON line. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "stun/stun.h"

#define BATCH      64
#define HIST_US    100000 /* latency histogram: 1 us buckets up to 100 ms, then overflow */
#define LOST_AFTER_NS 200000000LL /* no reply for this long on loopback: lost */

enum phase { WARMUP, MEASURE, STOP };

struct client {
	int fd;
	uint32_t idx;
	int outstanding;
	int64_t last_rx_ns;
	struct sockaddr_storage self;
};

struct worker {
	pthread_t thread;
	struct client *c;
	int n;
	int ep;
	uint64_t sent, answered, lost, bad, stray, send_fail;
	uint32_t *hist; /* HIST_US + 1 buckets */
};

static struct sockaddr_storage target;
static socklen_t target_len;
static int window = 4;
static int phase = WARMUP; /* written by main, read relaxed by workers */

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *fmt, const char *arg)
{
	fprintf(stderr, "derpd-stun-bench: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\n");
	exit(1);
}

static void usage(FILE *f, int status)
{
	fprintf(f,
		"usage: derpd-stun-bench [-6] [-s host:port] [-c clients] [-w window] [-d seconds]\n"
		"                        [-W warmup-seconds] [-j threads]\n"
		"  -s host:port  server to measure (default: an in-process responder on loopback)\n"
		"  -6            use ::1 instead of 127.0.0.1 for the in-process responder/clients\n"
		"  -c N          client UDP sockets (default 256)\n"
		"  -w N          requests in flight per socket (default 4)\n"
		"  -d S          measured seconds (default 5)\n"
		"  -W S          warm-up seconds, not measured (default 1)\n"
		"  -j N          client threads (default 1)\n"
		"  --version     print \"derpd-stun-bench VERSION\" and exit\n"
		"  -h, --help    this text\n");
	exit(status);
}

/* "127.0.0.1:3478", "[::1]:3478" -> target. */
static void target_parse(const char *s)
{
	char host[256];
	const char *colon = strrchr(s, ':');
	struct addrinfo hints = { .ai_socktype = SOCK_DGRAM }, *res;

	if (!colon || colon == s || (size_t)(colon - s) >= sizeof host)
		die("bad -s address \"%s\" (want host:port)", s);
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = 0;
	char *h = host;
	size_t hl = strlen(h);
	if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
		h[hl - 1] = 0;
		h++;
	}
	if (getaddrinfo(h, colon + 1, &hints, &res) != 0)
		die("cannot resolve \"%s\"", s);
	memcpy(&target, res->ai_addr, res->ai_addrlen);
	target_len = res->ai_addrlen;
	freeaddrinfo(res);
}

static void client_open(struct client *c, uint32_t idx)
{
	struct sockaddr_storage ss;
	socklen_t len;

	memset(&ss, 0, sizeof ss);
	ss.ss_family = target.ss_family;
	if (ss.ss_family == AF_INET)
		((struct sockaddr_in *)&ss)->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	else
		((struct sockaddr_in6 *)&ss)->sin6_addr = in6addr_loopback;
	c->fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		die("socket: %s", strerror(errno));
	/* Loopback targets need a loopback source; others let the kernel choose. */
	int loop = ss.ss_family == AF_INET
			   ? ((struct sockaddr_in *)&target)->sin_addr.s_addr == htonl(INADDR_LOOPBACK)
			   : IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)&target)->sin6_addr);
	if (loop && bind(c->fd, (struct sockaddr *)&ss,
			 ss.ss_family == AF_INET ? sizeof(struct sockaddr_in)
						 : sizeof(struct sockaddr_in6)) < 0)
		die("bind: %s", strerror(errno));
	if (connect(c->fd, (struct sockaddr *)&target, target_len) < 0)
		die("connect: %s", strerror(errno));
	len = sizeof c->self;
	getsockname(c->fd, (struct sockaddr *)&c->self, &len);
	c->idx = idx;
	c->outstanding = 0;
	c->last_rx_ns = now_ns();
}

static uint16_t self_port(const struct client *c)
{
	return ntohs(c->self.ss_family == AF_INET
			     ? ((const struct sockaddr_in *)&c->self)->sin_port
			     : ((const struct sockaddr_in6 *)&c->self)->sin6_port);
}

/* Send k requests; txid = socket index (4 bytes) + send time in ns (8 bytes). */
static void client_send(struct worker *w, struct client *c, int k)
{
	uint8_t req[BATCH][STUN_REQUEST_LEN];
	struct mmsghdr m[BATCH];
	struct iovec iov[BATCH];
	int64_t t = now_ns();

	if (k > BATCH)
		k = BATCH;
	for (int i = 0; i < k; i++) {
		uint8_t tx[STUN_TXID_LEN];
		memcpy(tx, &c->idx, 4);
		memcpy(tx + 4, &t, 8);
		stun_build_request(tx, req[i]);
		iov[i] = (struct iovec){ req[i], STUN_REQUEST_LEN };
		m[i].msg_hdr = (struct msghdr){ .msg_iov = &iov[i], .msg_iovlen = 1 };
	}
	int r = sendmmsg(c->fd, m, (unsigned)k, 0);
	if (r < 0)
		r = 0;
	c->outstanding += r;
	if (__atomic_load_n(&phase, __ATOMIC_RELAXED) == MEASURE) {
		w->sent += (uint64_t)r;
		w->send_fail += (uint64_t)(k - r);
	}
}

static void client_read(struct worker *w, struct client *c)
{
	uint8_t buf[BATCH][128];
	struct mmsghdr m[BATCH];
	struct iovec iov[BATCH];

	for (;;) {
		for (int i = 0; i < BATCH; i++) {
			iov[i] = (struct iovec){ buf[i], sizeof buf[i] };
			m[i].msg_hdr = (struct msghdr){ .msg_iov = &iov[i], .msg_iovlen = 1 };
		}
		int n = recvmmsg(c->fd, m, BATCH, MSG_DONTWAIT, NULL);
		if (n <= 0)
			break;
		int64_t t = now_ns();
		bool measure = __atomic_load_n(&phase, __ATOMIC_RELAXED) == MEASURE;
		for (int i = 0; i < n; i++) {
			uint8_t tx[STUN_TXID_LEN];
			struct sockaddr_storage a;
			uint32_t idx;
			int64_t sent_at;

			if (c->outstanding > 0)
				c->outstanding--;
			int r = stun_parse_response(buf[i], m[i].msg_len, tx, &a);
			memcpy(&idx, tx, 4);
			memcpy(&sent_at, tx + 4, 8);
			uint16_t port = ntohs(a.ss_family == AF_INET
						      ? ((struct sockaddr_in *)&a)->sin_port
						      : ((struct sockaddr_in6 *)&a)->sin6_port);
			/* Another socket's txid: a late answer to an earlier run whose socket
			 * had this port. Not the server's fault; counted apart. */
			if (r == STUN_OK && (idx != c->idx || sent_at > t)) {
				if (measure)
					w->stray++;
				continue;
			}
			if (r != STUN_OK || port != self_port(c)) {
				if (measure)
					w->bad++;
				continue;
			}
			if (measure) {
				int64_t us = (t - sent_at) / 1000;
				w->answered++;
				w->hist[us < HIST_US ? us : HIST_US]++;
			}
		}
		c->last_rx_ns = t;
		if (n < BATCH)
			break;
	}
	if (c->outstanding < window)
		client_send(w, c, window - c->outstanding);
}

/* Requests lost (e.g. a full socket buffer) would shrink a window for good: re-prime. */
static void sweep(struct worker *w, int64_t t)
{
	bool measure = __atomic_load_n(&phase, __ATOMIC_RELAXED) == MEASURE;

	for (int i = 0; i < w->n; i++) {
		struct client *c = &w->c[i];
		if (t - c->last_rx_ns < LOST_AFTER_NS)
			continue;
		if (measure)
			w->lost += (uint64_t)c->outstanding;
		c->outstanding = 0;
		c->last_rx_ns = t;
		client_send(w, c, window);
	}
}

static void *worker_run(void *arg)
{
	struct worker *w = arg;
	struct epoll_event ev[256];
	int64_t last_sweep = now_ns();

	for (int i = 0; i < w->n; i++)
		client_send(w, &w->c[i], window);
	while (__atomic_load_n(&phase, __ATOMIC_RELAXED) != STOP) {
		int n = epoll_wait(w->ep, ev, 256, 50);
		for (int i = 0; i < n; i++)
			client_read(w, &w->c[ev[i].data.u32]);
		int64_t t = now_ns();
		if (t - last_sweep > LOST_AFTER_NS / 2) {
			sweep(w, t);
			last_sweep = t;
		}
	}
	return NULL;
}

static double pct(const uint64_t *hist, uint64_t total, double p)
{
	uint64_t want = (uint64_t)(p * (double)total), acc = 0;

	for (int i = 0; i <= HIST_US; i++) {
		acc += hist[i];
		if (acc > want)
			return i;
	}
	return HIST_US;
}

static double cpu_seconds(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
	       ru.ru_stime.tv_usec / 1e6;
}

int main(int argc, char **argv)
{
	int clients = 256, threads = 1, v6 = 0;
	double seconds = 5, warmup = 1;
	const char *server = NULL;
	int opt;

	static const struct option lo[] = {
		{ "help", 0, 0, 'h' }, { "version", 0, 0, 'V' }, { 0, 0, 0, 0 },
	};
	while ((opt = getopt_long(argc, argv, "6s:c:w:d:W:j:h", lo, NULL)) != -1) {
		switch (opt) {
		case '6': v6 = 1; break;
		case 's': server = optarg; break;
		case 'c': clients = atoi(optarg); break;
		case 'w': window = atoi(optarg); break;
		case 'd': seconds = atof(optarg); break;
		case 'W': warmup = atof(optarg); break;
		case 'j': threads = atoi(optarg); break;
		case 'h': usage(stdout, 0); break;
		case 'V': printf("derpd-stun-bench %s\n", DERPD_VERSION); return 0;
		default: usage(stderr, 2);
		}
	}
	if (optind != argc || clients < 1 || window < 1 || window > BATCH || threads < 1 ||
	    threads > clients || seconds <= 0 || warmup < 0)
		usage(stderr, 2);

	struct stun_server *srv = NULL;
	if (server) {
		target_parse(server);
	} else {
		char err[256];
		srv = stun_start(v6 ? "::1" : "127.0.0.1", 0, err, sizeof err);
		if (!srv)
			die("%s", err);
		char addr[64];
		snprintf(addr, sizeof addr, v6 ? "[::1]:%d" : "127.0.0.1:%d", stun_port(srv));
		target_parse(addr);
	}
	char target_text[80], ip[INET6_ADDRSTRLEN];
	if (target.ss_family == AF_INET) {
		inet_ntop(AF_INET, &((struct sockaddr_in *)&target)->sin_addr, ip, sizeof ip);
		snprintf(target_text, sizeof target_text, "%s:%d", ip,
			 ntohs(((struct sockaddr_in *)&target)->sin_port));
	} else {
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&target)->sin6_addr, ip, sizeof ip);
		snprintf(target_text, sizeof target_text, "[%s]:%d", ip,
			 ntohs(((struct sockaddr_in6 *)&target)->sin6_port));
	}

	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}

	struct client *cl = calloc((size_t)clients, sizeof *cl);
	struct worker *w = calloc((size_t)threads, sizeof *w);
	if (!cl || !w)
		die("%s", "out of memory");
	for (int i = 0; i < clients; i++)
		client_open(&cl[i], (uint32_t)i);
	struct stun_counters c0, c1;
	for (int t = 0, first = 0; t < threads; t++) {
		int n = clients / threads + (t < clients % threads);
		w[t].c = cl + first;
		w[t].n = n;
		first += n;
		w[t].hist = calloc(HIST_US + 1, sizeof *w[t].hist);
		w[t].ep = epoll_create1(EPOLL_CLOEXEC);
		if (!w[t].hist || w[t].ep < 0)
			die("%s", "out of memory");
		for (int i = 0; i < n; i++) {
			struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)i };
			epoll_ctl(w[t].ep, EPOLL_CTL_ADD, w[t].c[i].fd, &ev);
		}
	}
	for (int t = 0; t < threads; t++)
		pthread_create(&w[t].thread, NULL, worker_run, &w[t]);

	struct timespec ws = { (time_t)warmup, (long)((warmup - (double)(time_t)warmup) * 1e9) };
	nanosleep(&ws, NULL);
	stun_counters_get(&c0);
	double cpu0 = cpu_seconds();
	int64_t t0 = now_ns();
	__atomic_store_n(&phase, MEASURE, __ATOMIC_RELAXED);
	struct timespec ms = { (time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9) };
	nanosleep(&ms, NULL);
	__atomic_store_n(&phase, STOP, __ATOMIC_RELAXED);
	int64_t t1 = now_ns();
	double cpu1 = cpu_seconds();
	stun_counters_get(&c1);
	for (int t = 0; t < threads; t++)
		pthread_join(w[t].thread, NULL);

	uint64_t sent = 0, answered = 0, lost = 0, bad = 0, stray = 0, send_fail = 0, max_us = 0;
	uint64_t *hist = calloc(HIST_US + 1, sizeof *hist);
	for (int t = 0; t < threads; t++) {
		sent += w[t].sent;
		answered += w[t].answered;
		lost += w[t].lost;
		bad += w[t].bad;
		stray += w[t].stray;
		send_fail += w[t].send_fail;
		for (int i = 0; i <= HIST_US; i++)
			hist[i] += w[t].hist[i];
	}
	for (int i = 0; i <= HIST_US; i++)
		if (hist[i])
			max_us = (uint64_t)i;
	double el = (double)(t1 - t0) / 1e9;
	double rate = (double)answered / el;
	double p50 = pct(hist, answered, 0.50), p99 = pct(hist, answered, 0.99);
	double cpu = cpu1 - cpu0;

	printf("derpd-stun-bench: %s %s, %d client sockets x %d in flight, %d thread%s, %.1f s\n",
	       srv ? "in-process responder on" : "server", target_text, clients, window, threads,
	       threads > 1 ? "s" : "", el);
	printf("  %-24s %14.0f\n", "answered/s", rate);
	printf("  %-24s %14llu\n", "requests sent", (unsigned long long)sent);
	printf("  %-24s %14llu\n", "answered", (unsigned long long)answered);
	printf("  %-24s %14llu\n", "lost (no reply 200 ms)", (unsigned long long)lost);
	printf("  %-24s %14llu\n", "bad replies", (unsigned long long)bad);
	printf("  %-24s %14llu\n", "stray replies", (unsigned long long)stray);
	printf("  %-24s %14llu\n", "send failures", (unsigned long long)send_fail);
	printf("  %-24s %14.0f\n", "latency p50 (us)", p50);
	printf("  %-24s %14.0f\n", "latency p99 (us)", p99);
	printf("  %-24s %14llu%s\n", "latency max (us)", (unsigned long long)max_us,
	       max_us >= HIST_US ? "+" : "");
	printf("  %-24s %14.2f\n", "process CPU (s)", cpu);
	if (srv)
		printf("  %-24s %14llu\n", "server stun success",
		       (unsigned long long)(c1.success - c0.success));
	printf("{\"tool\":\"derpd-stun-bench\",\"target\":\"%s\",\"in_process\":%s,"
	       "\"clients\":%d,\"window\":%d,\"threads\":%d,\"seconds\":%.3f,"
	       "\"answered_per_sec\":%.0f,\"sent\":%llu,\"answered\":%llu,\"lost\":%llu,"
	       "\"bad\":%llu,\"stray\":%llu,\"send_failures\":%llu,\"p50_us\":%.0f,\"p99_us\":%.0f,"
	       "\"max_us\":%llu,\"cpu_seconds\":%.3f}\n",
	       target_text, srv ? "true" : "false", clients, window, threads, el, rate,
	       (unsigned long long)sent, (unsigned long long)answered, (unsigned long long)lost,
	       (unsigned long long)bad, (unsigned long long)stray, (unsigned long long)send_fail, p50,
	       p99,
	       (unsigned long long)max_us, cpu);

	for (int i = 0; i < clients; i++)
		close(cl[i].fd);
	stun_stop(srv);
	return bad ? 1 : 0;
}
