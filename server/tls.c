/* TLS on a relay connection (wolfSSL, non-blocking, driven by the worker's epoll loop),
 * and the bridge that carries a TLS connection's plain HTTP to libmicrohttpd through a
 * socketpair. Which certificate is served, SNI, ALPN and the meta certificate are decided
 * by the certificate provider (acme/cert.h) inside the handshake. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "acme/cert.h"
#include "metrics/httpd.h"
#include "server/log.h"
#include "server/relay.h"

#define TLS_RECORD 16384 /* one TLS record's worth of plaintext per write */
#define BRIDGE_BUF 16384

struct bridge {
	int fd;                 /* our end of the socketpair; the other is libmicrohttpd's */
	uint32_t up_len, up_off;     /* client -> HTTP server */
	uint32_t down_len, down_off; /* HTTP server -> client */
	uint8_t up[BRIDGE_BUF], down[BRIDGE_BUF];
};

static struct cert_provider *provider;

void server_set_cert_provider(struct cert_provider *p)
{
	provider = p;
}

int tls_conn_start(struct conn *c)
{
	c->ssl = cert_provider_ssl_new(provider, c->fd);
	return c->ssl ? 0 : -1;
}

static enum httpd_tls_version tls_version_of(WOLFSSL *ssl)
{
	switch (wolfSSL_version(ssl)) {
	case TLS1_VERSION: return HTTPD_TLS_10;
	case TLS1_1_VERSION: return HTTPD_TLS_11;
	case TLS1_2_VERSION: return HTTPD_TLS_12;
	case TLS1_3_VERSION: return HTTPD_TLS_13;
	default: return HTTPD_TLS_UNKNOWN;
	}
}

int tls_handshake(struct conn *c)
{
	int r = wolfSSL_accept(c->ssl);

	if (r == WOLFSSL_SUCCESS) {
		c->tls_done = 1;
		/* As derper: the request head gets its own 30 s once the handshake is done. */
		c->deadline_ms = now_ms() + HTTP_HEAD_TIMEOUT_MS;
		worker_timer_set(c, c->deadline_ms);
		c->tls_version = (uint8_t)tls_version_of(c->ssl);
		httpd_tls_request_begin((enum httpd_tls_version)c->tls_version);
		return 1;
	}
	int err = wolfSSL_get_error(c->ssl, r);
	if (err == WOLFSSL_ERROR_WANT_READ || err == WOLFSSL_ERROR_WANT_WRITE)
		return 0;
	char msg[WOLFSSL_MAX_ERROR_SZ];
	log_debug("derpd: conn %llu: TLS handshake: %s", (unsigned long long)c->id,
		  wolfSSL_ERR_error_string((unsigned long)err, msg));
	conn_close(c, "TLS handshake failed");
	return -1;
}

ssize_t conn_recv(struct conn *c, void *buf, size_t len)
{
	if (!c->ssl)
		return read(c->fd, buf, len);
	int r = wolfSSL_read(c->ssl, buf, (int)len);
	if (r > 0)
		return r;
	int err = wolfSSL_get_error(c->ssl, r);
	if (err == WOLFSSL_ERROR_WANT_READ || err == WOLFSSL_ERROR_WANT_WRITE) {
		errno = EAGAIN;
		return -1;
	}
	if (err == WOLFSSL_ERROR_ZERO_RETURN || err == SOCKET_PEER_CLOSED_E || r == 0)
		return 0;
	errno = EPROTO;
	return -1;
}

/* One TLS write of n bytes from buf; on WANT_WRITE the bytes are kept for the retry
 * wolfSSL requires (same data, same length). Returns n, or -1 with errno. */
static ssize_t tls_write_once(struct conn *c, const uint8_t *buf, uint32_t n)
{
	int r = wolfSSL_write(c->ssl, buf, (int)n);

	if (r > 0)
		return r;
	int err = wolfSSL_get_error(c->ssl, r);
	if (err != WOLFSSL_ERROR_WANT_WRITE && err != WOLFSSL_ERROR_WANT_READ) {
		errno = EPIPE;
		return -1;
	}
	if (buf != c->tls_wbuf) {
		if (!c->tls_wbuf && !(c->tls_wbuf = malloc(TLS_RECORD))) {
			errno = ENOMEM;
			return -1;
		}
		memcpy(c->tls_wbuf, buf, n);
	}
	c->tls_wlen = n;
	errno = EAGAIN;
	return -1;
}

ssize_t conn_writev(struct conn *c, const struct iovec *iov, int n)
{
	if (!c->ssl)
		return writev(c->fd, iov, n);
	ssize_t total = 0;
	/* A write wolfSSL asked us to repeat: those bytes are the first ones of iov. */
	if (c->tls_wlen) {
		ssize_t r = tls_write_once(c, c->tls_wbuf, c->tls_wlen);
		if (r < 0)
			return -1;
		total = r;
		c->tls_wlen = 0;
		free(c->tls_wbuf);
		c->tls_wbuf = NULL;
	}
	/* Gather into whole records: fewer, fuller records than one per frame. */
	uint8_t *stage = c->w->scratch;
	size_t skip = (size_t)total;
	int i = 0;
	while (i < n) {
		uint32_t len = 0;
		while (i < n && len < TLS_RECORD) {
			const uint8_t *p = iov[i].iov_base;
			size_t avail = iov[i].iov_len;
			if (skip >= avail) {
				skip -= avail;
				i++;
				continue;
			}
			p += skip;
			avail -= skip;
			size_t k = avail < TLS_RECORD - len ? avail : TLS_RECORD - len;
			memcpy(stage + len, p, k);
			len += (uint32_t)k;
			skip += k;
			if (skip == iov[i].iov_len) {
				skip = 0;
				i++;
			}
		}
		if (!len)
			break;
		ssize_t r = tls_write_once(c, stage, len);
		if (r < 0)
			return total ? total : -1;
		total += r;
	}
	return total;
}

void tls_conn_end(struct conn *c)
{
	if (c->ssl) {
		if (c->tls_done && !c->outbound)
			httpd_tls_request_end((enum httpd_tls_version)c->tls_version);
		wolfSSL_free(c->ssl);
		c->ssl = NULL;
	}
	free(c->tls_wbuf);
	c->tls_wbuf = NULL;
	if (c->bridge) {
		close(c->bridge->fd);
		free(c->bridge);
		c->bridge = NULL;
	}
}

/* ---- the HTTP bridge ---- */

int bridge_start(struct conn *c)
{
	struct bridge *b = calloc(1, sizeof *b);
	int sp[2];
	struct sockaddr_storage peer;
	socklen_t plen;

	if (!b || socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp) != 0) {
		free(b);
		conn_close(c, "bridge: out of resources");
		return -1;
	}
	b->fd = sp[0];
	c->bridge = b;
	/* What the worker already read (the request head and anything after it) goes first. */
	if (c->rchunk && c->rend > c->rstart) {
		uint32_t k = c->rend - c->rstart;
		if (k > BRIDGE_BUF)
			k = BRIDGE_BUF; /* conn_http never reads more than one head's worth */
		memcpy(b->up, c->rchunk->data + c->rstart, k);
		b->up_len = k;
	}
	if (c->rchunk) {
		chunk_put(c->rchunk);
		c->rchunk = NULL;
	}
	c->state = CS_BRIDGE;
	c->deadline_ms = 0; /* the HTTP server keeps its own idle timeout */
	worker_timer_del(c);
	struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
				  .data.u64 = (uint64_t)(uintptr_t)c | 1 };
	conn_peer(c, &peer, &plen);
	if (epoll_ctl(c->w->epfd, EPOLL_CTL_ADD, b->fd, &ev) != 0 ||
	    httpd_add_connection(sp[1], (struct sockaddr *)&peer, plen) != 0) {
		conn_close(c, "bridge: cannot reach the HTTP server");
		return -1;
	}
	bridge_pump(c);
	return 0;
}

/* Move bytes both ways until neither side can take or give more. */
void bridge_pump(struct conn *c)
{
	struct bridge *b = c->bridge;
	int progress = 1;

	while (progress && c->state == CS_BRIDGE) {
		progress = 0;
		if (b->up_off < b->up_len) {
			ssize_t r = write(b->fd, b->up + b->up_off, b->up_len - b->up_off);
			if (r > 0) {
				b->up_off += (uint32_t)r;
				progress = 1;
			} else if (r < 0 && errno != EAGAIN) {
				/* The HTTP side stopped reading (it refused the connection, or
				 * answered and closed): drop what the client sends, but still
				 * deliver the answer; its EOF below ends the connection. */
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
		if (b->down_off < b->down_len) {
			ssize_t r;
			if (c->tls_wlen)
				r = tls_write_once(c, c->tls_wbuf, c->tls_wlen);
			else
				r = tls_write_once(c, b->down + b->down_off, b->down_len - b->down_off);
			if (r > 0) {
				c->tls_wlen = 0;
				b->down_off += (uint32_t)r;
				progress = 1;
			} else if (errno != EAGAIN) {
				conn_close(c, "write to client failed");
				return;
			}
		}
		if (b->down_off == b->down_len) {
			b->down_off = b->down_len = 0;
			ssize_t r = read(b->fd, b->down, BRIDGE_BUF);
			if (r > 0) {
				b->down_len = (uint32_t)r;
				progress = 1;
			} else if (r == 0 || errno != EAGAIN) {
				conn_close(c, "HTTP server closed");
				return;
			}
		}
	}
}
