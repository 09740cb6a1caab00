/* DERP client frame I/O (spec PROTOCOL.md §6, §12): the buffered read side, the write
 * side with its advisory rate limit, and the frames a client sends and receives. */
#include "mesh/derp_client.h"
#include "mesh/client_conn.h"
#include "mesh/client_tls.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#define RBUF_INIT       4096

int64_t client_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t client_deadline_after(int timeout_ms)
{
	return client_now_ns() + (int64_t)timeout_ms * 1000000;
}

/* Milliseconds left until deadline, rounded up, never negative. */
static int remaining_ms(int64_t deadline)
{
	int64_t left = deadline - client_now_ns();

	if (left <= 0)
		return 0;
	return (int)((left + 999999) / 1000000);
}

int client_wait_fd(int fd, short events, int64_t deadline)
{
	struct pollfd p = { .fd = fd, .events = events };

	for (;;) {
		int r = poll(&p, 1, remaining_ms(deadline));
		if (r > 0)
			return 0;
		if (r == 0) {
			client_set_err("timed out");
			return DERP_CLIENT_TIMEOUT;
		}
		if (errno != EINTR) {
			client_set_err("poll: %s", strerror(errno));
			return DERP_CLIENT_ERROR;
		}
	}
}

/* ---- read side ---------------------------------------------------------------- */

/* Make room for want unread bytes, then read whatever arrives (at least one byte). */
int client_read_more(struct derp_client *c, size_t want, int64_t deadline)
{
	if (c->rpos > 0 && (c->rpos == c->rlen || c->rlen == c->rcap || c->rcap - c->rpos < want)) {
		memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
		c->rlen -= c->rpos;
		c->rpos = 0;
	}
	if (c->rcap - c->rpos < want || c->rlen == c->rcap) {
		size_t ncap = c->rcap ? c->rcap : RBUF_INIT;
		while (ncap - c->rpos < want || ncap == c->rlen)
			ncap *= 2;
		uint8_t *nb = realloc(c->rbuf, ncap);
		if (!nb) {
			client_set_err("out of memory");
			return DERP_CLIENT_ERROR;
		}
		c->rbuf = nb;
		c->rcap = ncap;
	}
	for (;;) {
		short want = POLLIN;
		ssize_t n = c->ssl ? client_tls_read(c->ssl, c->rbuf + c->rlen, c->rcap - c->rlen, &want)
				   : recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
		if (n > 0) {
			c->rlen += (size_t)n;
			return 0;
		}
		if (n == 0) {
			client_set_err("connection closed by server (EOF)");
			return DERP_CLIENT_CLOSED;
		}
		if (errno == EINTR)
			continue;
		if (errno == ECONNRESET || errno == EPIPE) {
			client_set_err("connection reset by server");
			return DERP_CLIENT_CLOSED;
		}
		if (errno != EAGAIN && errno != EWOULDBLOCK) {
			client_set_err("recv: %s", strerror(errno));
			return DERP_CLIENT_ERROR;
		}
		int r = client_wait_fd(c->fd, want, deadline);
		if (r)
			return r;
	}
}

/* Ensure n unread bytes are buffered. */
static int fill(struct derp_client *c, size_t n, int64_t deadline)
{
	while (c->rlen - c->rpos < n) {
		int r = client_read_more(c, n, deadline);
		if (r)
			return r;
	}
	return 0;
}

/* Next whole frame; its payload stays in rbuf until the next call. */
int client_read_frame(struct derp_client *c, uint8_t *type, uint32_t *len,
		      const uint8_t **payload, uint32_t max_len, int64_t deadline)
{
	int r;

	c->rpos += c->consumed;
	c->consumed = 0;
	if ((r = fill(c, FRAME_HEADER_LEN, deadline)))
		return r;
	frame_get_header(c->rbuf + c->rpos, type, len);
	if (*len > max_len) {
		client_set_err("frame type 0x%02x too long: %u bytes", *type, *len);
		return DERP_CLIENT_ERROR;
	}
	if ((r = fill(c, FRAME_HEADER_LEN + (size_t)*len, deadline)))
		return r;
	*payload = c->rbuf + c->rpos + FRAME_HEADER_LEN;
	c->consumed = FRAME_HEADER_LEN + (size_t)*len;
	return 0;
}

/* ---- write side --------------------------------------------------------------- */

static int write_iov(struct derp_client *c, const struct iovec *in, int nin)
{
	struct iovec iov[8];
	int n = 0;
	int64_t deadline = client_deadline_after(c->timeout_ms);

	if (c->pend_len)
		iov[n++] = (struct iovec){ c->pend, c->pend_len };
	for (int i = 0; i < nin && n < 8; i++)
		if (in[i].iov_len)
			iov[n++] = in[i];
	struct iovec *v = iov;
	while (n > 0) {
		struct msghdr mh = { .msg_iov = v, .msg_iovlen = (size_t)n };
		short want = POLLOUT;
		/* TLS: one record per buffer; these are tests and mesh control traffic. */
		ssize_t w = c->ssl ? client_tls_write(c->ssl, v->iov_base, v->iov_len, &want)
				   : sendmsg(c->fd, &mh, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				int r = client_wait_fd(c->fd, want, deadline);
				if (r)
					return r;
				continue;
			}
			client_set_err("send: %s", strerror(errno));
			return (errno == EPIPE || errno == ECONNRESET) ? DERP_CLIENT_CLOSED
								      : DERP_CLIENT_ERROR;
		}
		while (n > 0 && (size_t)w >= v->iov_len) {
			w -= (ssize_t)v->iov_len;
			v++;
			n--;
		}
		if (n > 0) {
			v->iov_base = (char *)v->iov_base + w;
			v->iov_len -= (size_t)w;
		}
	}
	free(c->pend);
	c->pend = NULL;
	c->pend_len = 0;
	return 0;
}

int derp_client_write_raw(struct derp_client *c, const void *buf, size_t len)
{
	struct iovec v = { (void *)buf, len };

	return write_iov(c, &v, 1);
}

int derp_client_write_frame(struct derp_client *c, uint8_t type, const void *payload,
			    uint32_t len)
{
	uint8_t hdr[FRAME_HEADER_LEN];
	struct iovec v[2] = { { hdr, sizeof hdr }, { (void *)payload, payload ? len : 0 } };

	frame_put_header(hdr, type, len);
	return write_iov(c, v, 2);
}

/* Go's rate.Limiter.AllowN: refill, then take n tokens if there are enough. */
static int rate_allow(struct derp_client *c, size_t n)
{
	int64_t t = client_now_ns();

	c->tb_tokens += c->tb_rate * (double)(t - c->tb_last_ns) / 1e9;
	if (c->tb_tokens > c->tb_burst)
		c->tb_tokens = c->tb_burst;
	c->tb_last_ns = t;
	if ((double)n > c->tb_tokens)
		return 0;
	c->tb_tokens -= (double)n;
	return 1;
}

int derp_client_send(struct derp_client *c, const uint8_t dst[32], const void *pkt, size_t len)
{
	uint8_t hdr[FRAME_HEADER_LEN];
	struct iovec v[3] = { { hdr, sizeof hdr }, { (void *)dst, 32 }, { (void *)pkt, len } };

	if (c->tb_rate > 0 && !rate_allow(c, FRAME_HEADER_LEN + 32 + len))
		return 0; /* dropped silently, as a Go client does */
	frame_put_header(hdr, FRAME_SEND_PACKET, (uint32_t)(32 + len));
	return write_iov(c, v, 3);
}

int derp_client_forward(struct derp_client *c, const uint8_t src[32], const uint8_t dst[32],
			const void *pkt, size_t len)
{
	uint8_t hdr[FRAME_HEADER_LEN];
	struct iovec v[4] = { { hdr, sizeof hdr }, { (void *)src, 32 }, { (void *)dst, 32 },
			      { (void *)pkt, len } };

	frame_put_header(hdr, FRAME_FORWARD_PACKET, (uint32_t)(64 + len));
	return write_iov(c, v, 4);
}

int derp_client_ping(struct derp_client *c, const uint8_t data[8])
{
	return derp_client_write_frame(c, FRAME_PING, data, 8);
}

int derp_client_pong(struct derp_client *c, const uint8_t data[8])
{
	return derp_client_write_frame(c, FRAME_PONG, data, 8);
}

int derp_client_note_preferred(struct derp_client *c, int preferred)
{
	uint8_t b = preferred ? 1 : 0;

	return derp_client_write_frame(c, FRAME_NOTE_PREFERRED, &b, 1);
}

int derp_client_watch_conns(struct derp_client *c)
{
	return derp_client_write_frame(c, FRAME_WATCH_CONNS, NULL, 0);
}

int derp_client_close_peer(struct derp_client *c, const uint8_t key[32])
{
	return derp_client_write_frame(c, FRAME_CLOSE_PEER, key, 32);
}

int derp_client_shutdown_write(struct derp_client *c)
{
	if (shutdown(c->fd, SHUT_WR) != 0) {
		client_set_err("shutdown: %s", strerror(errno));
		return DERP_CLIENT_ERROR;
	}
	return 0;
}

/* ---- steady state ------------------------------------------------------------- */

int derp_client_recv(struct derp_client *c, struct derp_msg *m, int timeout_ms)
{
	int64_t deadline = client_deadline_after(timeout_ms < 0 ? c->timeout_ms : timeout_ms);
	const uint8_t *b;
	uint8_t type;
	uint32_t n;
	int r;

	if ((r = client_read_frame(c, &type, &n, &b, MAX_FRAME, deadline)))
		return r;
	memset(m, 0, sizeof *m);
	m->frame_type = type;
	m->frame_len = n;
	m->data = b;
	m->len = n;
	/* Short forms a Go client skips are reported as DERP_MSG_SHORT instead, so that a
	 * test sees them. */
	switch (type) {
	case FRAME_RECV_PACKET:
	case FRAME_PEER_GONE:
	case FRAME_PEER_PRESENT:
		if (n < 32) {
			m->kind = DERP_MSG_SHORT;
			break;
		}
		memcpy(m->key, b, 32);
		m->data = b + 32;
		m->len = n - 32;
		if (type == FRAME_RECV_PACKET) {
			m->kind = DERP_MSG_PACKET;
		} else if (type == FRAME_PEER_GONE) {
			m->kind = DERP_MSG_PEER_GONE;
			m->reason = n > 32 ? b[32] : PEER_GONE_DISCONNECTED;
		} else {
			m->kind = DERP_MSG_PEER_PRESENT;
			if (n >= 32 + 18) {
				m->has_addr = 1;
				memcpy(m->ip, b + 32, 16);
				m->port = (uint16_t)(b[48] << 8 | b[49]);
			}
			if (n >= 32 + 19) {
				m->has_flags = 1;
				m->flags = b[50];
			}
		}
		break;
	case FRAME_KEEP_ALIVE:
		m->kind = DERP_MSG_KEEP_ALIVE;
		break;
	case FRAME_PING:
	case FRAME_PONG:
	case FRAME_RESTARTING:
		if (n < 8) {
			m->kind = DERP_MSG_SHORT;
			break;
		}
		memcpy(m->ping8, b, 8);
		m->reconnect_ms = frame_get_be32(b);
		m->try_for_ms = frame_get_be32(b + 4);
		m->kind = type == FRAME_PING ? DERP_MSG_PING
			: type == FRAME_PONG ? DERP_MSG_PONG : DERP_MSG_RESTARTING;
		break;
	case FRAME_HEALTH:
		m->kind = DERP_MSG_HEALTH;
		break;
	case FRAME_SERVER_INFO:
		if ((r = client_parse_server_info(c, b, n)))
			return r;
		m->kind = DERP_MSG_SERVER_INFO;
		m->data = (const uint8_t *)c->server_info;
		m->len = strlen(c->server_info);
		break;
	case FRAME_SERVER_KEY:
		if (n >= DERP_MAGIC_LEN + 32 && memcmp(b, DERP_MAGIC, DERP_MAGIC_LEN) == 0) {
			m->kind = DERP_MSG_SERVER_KEY;
			memcpy(m->key, b + DERP_MAGIC_LEN, 32);
		} else {
			m->kind = DERP_MSG_UNKNOWN;
		}
		break;
	default:
		m->kind = DERP_MSG_UNKNOWN;
		break;
	}
	return 0;
}
