/* The bridge: a TLS connection's plain bytes carried, both ways, to another socket on
 * the same worker -- a socketpair to libmicrohttpd for HTTP over TLS, or the target of an
 * ACE CONNECT (connect.c). Edge-triggered on both ends; each direction holds one buffer,
 * so a side that stops reading stops the other side being read (flow control), and a
 * client that stops reading what comes back is closed after the write timeout. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "metrics/httpd.h"
#include "server/relay.h"

#define BRIDGE_BUF 16384

struct bridge {
	int fd;                      /* the other end: libmicrohttpd's socketpair, a target */
	const char *other;           /* "HTTP server", "CONNECT target": for close reasons */
	uint32_t up_len, up_off;     /* client -> other end */
	uint32_t down_len;           /* other end -> client (wolfSSL takes it whole) */
	uint8_t up[BRIDGE_BUF], down[BRIDGE_BUF];
};

int bridge_open(struct conn *c, int fd, const char *other, const uint8_t *first, uint32_t n)
{
	struct bridge *b = calloc(1, sizeof *b);

	if (!b) {
		close(fd);
		conn_close(c, "bridge: out of memory");
		return -1;
	}
	b->fd = fd;
	b->other = other;
	c->bridge = b;
	/* What the worker already read past what was consumed goes first. */
	if (n > BRIDGE_BUF)
		n = BRIDGE_BUF; /* conn_http never reads more than one head's worth */
	if (n)
		memcpy(b->up, first, n);
	b->up_len = n;
	if (c->rchunk) {
		chunk_put(c->rchunk);
		c->rchunk = NULL;
	}
	c->state = CS_BRIDGE;
	c->deadline_ms = 0; /* the other end keeps its own idle timeout */
	worker_timer_del(c);
	struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
				  .data.u64 = (uint64_t)(uintptr_t)c | 1 };
	if (epoll_ctl(c->w->epfd, EPOLL_CTL_ADD, b->fd, &ev) != 0) {
		conn_close(c, "bridge: epoll");
		return -1;
	}
	bridge_pump(c);
	return 0;
}

int bridge_start(struct conn *c)
{
	int sp[2];
	struct sockaddr_storage peer;
	socklen_t plen;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp) != 0) {
		conn_close(c, "bridge: out of resources");
		return -1;
	}
	conn_peer(c, &peer, &plen);
	/* The request head and anything after it: the HTTP server reads it all. */
	const uint8_t *first = c->rchunk ? c->rchunk->data + c->rstart : NULL;
	uint32_t n = c->rchunk ? c->rend - c->rstart : 0;
	if (bridge_open(c, sp[0], "HTTP server", first, n) != 0) {
		close(sp[1]);
		return -1;
	}
	if (httpd_add_connection(sp[1], (struct sockaddr *)&peer, plen) != 0) {
		conn_close(c, "bridge: cannot reach the HTTP server");
		return -1;
	}
	return 0;
}

void bridge_end(struct conn *c)
{
	if (!c->bridge)
		return;
	close(c->bridge->fd);
	free(c->bridge);
	c->bridge = NULL;
}

/* Move bytes both ways until neither side can take or give more. */
void bridge_pump(struct conn *c)
{
	struct bridge *b = c->bridge;
	int progress = 1;
	char why[64];

	while (progress && c->state == CS_BRIDGE) {
		progress = 0;
		if (b->up_off < b->up_len) {
			ssize_t r = write(b->fd, b->up + b->up_off, b->up_len - b->up_off);
			if (r > 0) {
				b->up_off += (uint32_t)r;
				progress = 1;
			} else if (r < 0 && errno != EAGAIN) {
				/* The other end stopped reading (the HTTP server refused the
				 * connection, or answered and closed): drop what the client sends,
				 * but still deliver the answer; its EOF below ends the connection. */
				b->up_off = b->up_len;
				progress = 1;
			}
		}
		if (b->up_off == b->up_len) {
			b->up_off = b->up_len = 0;
			ssize_t r = conn_recv(c, b->up, BRIDGE_BUF);
			if (r > 0) {
				b->up_len = (uint32_t)r;
				progress = 1;
			} else if (r == 0 || errno != EAGAIN) {
				conn_close(c, "client closed");
				return;
			}
		}
		/* The answer goes out in order: kept TLS output first, then more of it. */
		if (c->tls_olen) {
			if (tls_flush(c) == 0) {
				progress = 1;
			} else if (errno != EAGAIN) {
				conn_close(c, "write to client failed");
				return;
			}
		}
		if (b->down_len && !c->tls_olen) {
			if (tls_write(c, b->down, b->down_len) < 0) {
				conn_close(c, "write to client failed");
				return;
			}
			b->down_len = 0;
			progress = 1;
		}
		/* Only once all is on the socket: the other end's EOF ends the connection. */
		if (!b->down_len && !c->tls_olen) {
			ssize_t r = read(b->fd, b->down, BRIDGE_BUF);
			if (r > 0) {
				b->down_len = (uint32_t)r;
				progress = 1;
			} else if (r == 0 || errno != EAGAIN) {
				snprintf(why, sizeof why, "%s closed", b->other);
				conn_close(c, why);
				return;
			}
		}
	}
	/* Output the client leaves unread starts the write timeout (conn_on_timer). */
	if (c->state == CS_BRIDGE)
		conn_set_stalled(c, c->tls_olen != 0);
}
