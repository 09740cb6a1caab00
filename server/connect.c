/* ACE, derper's experimental CONNECT proxy for Tailscale control traffic (SERVER.md §13;
 * upstream cmd/derper/ace.go and net/connectproxy): on the TLS listener, with -ace,
 * "CONNECT <name>.tailscale.com:443|80" is dialled (15 s) and then carried both ways by the
 * worker's bridge (bridge.c). Name resolution and connect block, so each dial runs on a
 * short-lived thread of its own that hands the socket back to the worker (as admission
 * answers come back); the bytes never leave the worker. */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/http_head.h"
#include "server/log.h"
#include "server/relay.h"

#define DIAL_TIMEOUT_MS 15000 /* connectproxy's */
#define MAX_DIALS 256         /* dial threads at once; more get 502 at once */

struct dial {
	struct dial *next;      /* on its worker's dialed list */
	struct worker *w;
	struct conn *c;         /* NULL once the connection went (worker-owned field) */
	uint32_t first;         /* bytes of the client's read chunk past the request head */
	char target[300];       /* host:port as asked */
	char host[256], port[8];
	int fd;                 /* the connected socket, or -1 */
	char err[400];
};

static pthread_mutex_t dial_mu = PTHREAD_MUTEX_INITIALIZER;
static int dials, stopping; /* under dial_mu */

/* An error answer as Go's http.Error writes one, then the end of the connection. Whatever
 * else the client sent is read first, so the close sends FIN, not a RST that could
 * destroy the answer in flight. */
static void refuse(struct conn *c, int code, const char *msg)
{
	char resp[320];
	uint8_t sink[512];
	const char *reason = code == 403 ? "Forbidden" : code == 502 ? "Bad Gateway"
								     : "Service Unavailable";
	int n = snprintf(resp, sizeof resp,
			 "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
			 "X-Content-Type-Options: nosniff\r\nContent-Length: %zu\r\n"
			 "Connection: close\r\n\r\n%s\n", code, reason, strlen(msg) + 1, msg);
	if (c->ssl)
		(void)tls_write(c, (const uint8_t *)resp, (uint32_t)n);
	else
		(void)!write(c->fd, resp, (size_t)n);
	while (conn_recv(c, sink, sizeof sink) > 0)
		;
	conn_close(c, msg);
}

int connect_target_allowed(const char *t, char *host, size_t hcap, char *port, size_t pcap)
{
	const char *colon = strrchr(t, ':');

	if (!colon || t[0] == '[') /* no port, or an IPv6 literal (never .tailscale.com) */
		return 0;
	size_t hl = (size_t)(colon - t);
	const char *suffix = ".tailscale.com";
	size_t sl = strlen(suffix);
	if (hl >= hcap || strlen(colon + 1) >= pcap || memchr(t, ':', hl))
		return 0;
	snprintf(host, hcap, "%.*s", (int)hl, t);
	snprintf(port, pcap, "%s", colon + 1);
	return (!strcmp(port, "443") || !strcmp(port, "80")) && hl > sl &&
	       !strcmp(host + hl - sl, suffix) && !strstr(host, "derp");
}

/* Connect to one address within the deadline; the socket, or -1 with errno. */
static int dial_one(const struct addrinfo *ai, int64_t deadline)
{
	int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
		return fd;
	while (errno == EINPROGRESS || errno == EINTR) {
		struct pollfd p = { .fd = fd, .events = POLLOUT };
		int64_t left = deadline - now_ms();
		if (left <= 0) {
			errno = ETIMEDOUT;
			break;
		}
		int r = poll(&p, 1, (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r == 0) {
			errno = ETIMEDOUT;
			break;
		}
		int e = 0;
		socklen_t el = sizeof e;
		getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el);
		if (e == 0)
			return fd;
		errno = e;
		break;
	}
	int e = errno;
	close(fd);
	errno = e;
	return -1;
}

static void *dial_main(void *arg)
{
	struct dial *d = arg;
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG }, *res;
	/* The worker's timer decides at DIAL_TIMEOUT_MS; this only bounds the thread. */
	int64_t deadline = now_ms() + DIAL_TIMEOUT_MS + 1000;
	int g = getaddrinfo(d->host, d->port, &hints, &res);

	if (g != 0) {
		snprintf(d->err, sizeof d->err, "lookup %s: %s", d->host,
			 g == EAI_SYSTEM ? strerror(errno) : gai_strerror(g));
	} else {
		for (struct addrinfo *ai = res; ai && d->fd < 0; ai = ai->ai_next)
			if ((d->fd = dial_one(ai, deadline)) < 0)
				snprintf(d->err, sizeof d->err, "dial tcp %s: %s", d->target,
					 strerror(errno));
		freeaddrinfo(res);
	}
	/* The worker may be gone (derpd stopping): then nobody wants the socket. */
	pthread_mutex_lock(&dial_mu);
	dials--;
	if (stopping) {
		if (d->fd >= 0)
			close(d->fd);
		free(d);
	} else {
		struct worker *w = d->w;
		pthread_mutex_lock(&w->ready_mu);
		d->next = w->dialed;
		__atomic_store_n(&w->dialed, d, __ATOMIC_RELAXED);
		pthread_mutex_unlock(&w->ready_mu);
		worker_wake(w);
	}
	pthread_mutex_unlock(&dial_mu);
	return NULL;
}

int connect_start(struct conn *c, const struct http_req *r, int hl)
{
	struct dial *d;
	char name[CONN_NAME_LEN];

	if (!relay.cfg->ace) {
		if (!c->ssl)
			return 0; /* plain HTTP: the HTTP server answers as for any other method */
		refuse(c, 403, "CONNECT not enabled");
		return -1;
	}
	if (!c->ssl) {
		refuse(c, 403, "CONNECT requires TLS");
		return -1;
	}
	if (!(d = calloc(1, sizeof *d))) {
		conn_close(c, "out of memory");
		return -1;
	}
	d->fd = -1;
	snprintf(d->target, sizeof d->target, "%.*s", (int)r->target.n, r->target.p);
	if (r->target.n >= sizeof d->target ||
	    !connect_target_allowed(d->target, d->host, sizeof d->host, d->port, sizeof d->port)) {
		log_info(LS_HTTP, "%s: CONNECT target \"%s\" not allowed", conn_name(c, name),
			 d->target);
		free(d);
		refuse(c, 403, "Invalid CONNECT target");
		return -1;
	}
	/* Bytes after the head (a pipelined ClientHello) go to the target once it answers. */
	c->rstart += (uint32_t)hl;
	d->first = c->rend - c->rstart;
	d->w = c->w;
	d->c = c;

	pthread_attr_t a;
	pthread_t t;
	int busy;
	pthread_attr_init(&a);
	pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&a, 256 * 1024);
	pthread_mutex_lock(&dial_mu);
	busy = dials >= MAX_DIALS || stopping;
	if (!busy && pthread_create(&t, &a, dial_main, d) == 0)
		dials++;
	else
		busy = 1;
	pthread_mutex_unlock(&dial_mu);
	pthread_attr_destroy(&a);
	if (busy) {
		log_warn(LS_HTTP, "%s: CONNECT %s: %d dials under way already", conn_name(c, name),
			 d->target, MAX_DIALS);
		free(d);
		refuse(c, 502, "Connect failure");
		return -1;
	}
	c->dial = d;
	c->state = CS_DIAL;
	c->deadline_ms = now_ms() + DIAL_TIMEOUT_MS;
	worker_timer_set(c, c->deadline_ms);
	return -1;
}

void connect_forget(struct conn *c)
{
	if (c->dial) {
		c->dial->c = NULL; /* the dial thread's result is dropped when it comes */
		c->dial = NULL;
	}
}

void connect_on_timer(struct conn *c)
{
	char name[CONN_NAME_LEN];

	log_info(LS_HTTP, "%s: CONNECT %s: no connection within %d s", conn_name(c, name),
		 c->dial ? c->dial->target : "?", DIAL_TIMEOUT_MS / 1000);
	connect_forget(c);
	refuse(c, 502, "Connect failure");
}

void connect_dialed(struct worker *w)
{
	char name[CONN_NAME_LEN];

	pthread_mutex_lock(&w->ready_mu);
	struct dial *list = w->dialed;
	__atomic_store_n(&w->dialed, NULL, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&w->ready_mu);
	while (list) {
		struct dial *d = list;
		struct conn *c = d->c;
		list = d->next;
		if (!c) {
			if (d->fd >= 0)
				close(d->fd);
		} else if (d->fd < 0) {
			log_info(LS_HTTP, "%s: error CONNECT dialing %s: %s", conn_name(c, name),
				 d->target, d->err);
			connect_forget(c);
			refuse(c, 502, "Connect failure");
		} else {
			static const char ok[] = "HTTP/1.1 200 OK\r\n\r\n";
			connect_forget(c);
			log_debug(LS_HTTP, "%s: CONNECT %s: connected", conn_name(c, name), d->target);
			if (tls_write(c, (const uint8_t *)ok, sizeof ok - 1) < 0) {
				close(d->fd);
				conn_close(c, "write to client failed");
			} else {
				const uint8_t *first = c->rchunk ? c->rchunk->data + c->rstart : NULL;
				bridge_open(c, d->fd, "CONNECT target", first, d->first);
			}
		}
		free(d);
	}
}

void connect_worker_free(struct worker *w)
{
	connect_dialed(w); /* every connection is closed by now: this only frees */
}

void connect_stop(void)
{
	pthread_mutex_lock(&dial_mu);
	stopping = 1;
	pthread_mutex_unlock(&dial_mu);
}
