/* derpd-bench: connecting and logging in clients, from several loopback source addresses
 * and login threads; the raw relay's pairs; the fresh pair that checks a loaded server
 * still takes new clients. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include "mesh/derp_client.h"
#include "tools/bench/bench.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

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
	if (opt.src_addrs > 0 && (ntohl(dst->sin_addr.s_addr) >> 24) == 127) {
		struct sockaddr_in src = { .sin_family = AF_INET };
		src.sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)(idx % opt.src_addrs));
		setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
		if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
			snprintf(err, el, "bind 127.0.0.%ld: %s", 2 + idx % opt.src_addrs,
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
	struct derp_client_opts op = { .timeout_ms = 15000, .tls = opt.tls, .tls_insecure = 1 };
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
	int keep = opt.tls ? derp_client_detach_tls(c, &s, extra, sizeof extra, &nextra)
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

long login_all(const struct target *t, long base, long end, int nthreads, int *fds,
	       uint8_t (*pubs)[32], WOLFSSL **ssls, long *ok, long *fail, char *err, size_t el,
	       int show)
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

/* Raw relay: for each pair, connect the sender to the relay, then accept the connection
 * the relay makes to our upstream listener: that is the pair's receiver. */
void raw_connect_all(const struct target *tg, int *fds, int npairs)
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
double fresh_pair_ms(const struct target *tg, char *err, size_t el)
{
	struct derp_client_opts op = { .timeout_ms = 5000, .tls = opt.tls, .tls_insecure = 1 };
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
