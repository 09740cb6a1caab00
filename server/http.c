/* The HTTP stage of a connection: peek at the request head and either take the
 * connection over for DERP (PROTOCOL.md §3.2) or hand it, untouched, to the HTTP server
 * (metrics/httpd.h). Peeking (MSG_PEEK) leaves every byte in the socket until the decision
 * is made, so the HTTP server reads the request as if it had accepted the socket itself. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "metrics/httpd.h"
#include "server/frame.h"
#include "server/http_head.h"
#include "server/key.h"
#include "server/log.h"
#include "server/relay.h"

static void derp_upgrade(struct conn *c, const struct http_req *r)
{
	uint8_t sk[45];

	STAT_ADD(&c->w->stats, accepts, 1);
	c->not_ideal = r->ideal_node.n > 0;
	c->fast_start = r->fast_start.n == 1 && r->fast_start.p[0] == '1';
	if (!c->fast_start) {
		char hex[KEY_HEX_LEN + 1], resp[256];
		key_to_hex(hex, relay.pub);
		int n = snprintf(resp, sizeof resp,
				 "HTTP/1.1 101 Switching Protocols\r\n"
				 "Upgrade: DERP\r\n"
				 "Connection: Upgrade\r\n"
				 "Derp-Version: %d\r\n"
				 "Derp-Public-Key: %s\r\n\r\n",
				 DERP_PROTO_VERSION, hex);
		/* Buffered with the ServerKey frame: one write carries both, as upstream. */
		conn_queue_local(c, (const uint8_t *)resp, (uint32_t)n);
	}
	conn_queue_local(c, sk, (uint32_t)frame_server_key(sk, relay.pub));
	conn_start_handshake(c);
}

/* Is this request one the relay keeps? Everything else, malformed requests included,
 * belongs to the HTTP server, which answers it as derper would. */
static int is_websocket_derp(const struct http_req *r);

static int is_derp_upgrade(const struct http_req *r)
{
	if (!relay.cfg->run_derp || !http_str_ieq(r->path, "/derp") || is_websocket_derp(r))
		return 0;
	/* "websocket" without the derp subprotocol: very old clients spoke raw DERP that way. */
	return http_str_ieq(r->upgrade, "derp") || http_str_ieq(r->upgrade, "websocket");
}

static int is_websocket_derp(const struct http_req *r)
{
	return relay.cfg->run_derp && http_str_ieq(r->path, "/derp") &&
	       http_str_ieq(r->upgrade, "websocket") && r->ws_protocol.p &&
	       memmem(r->ws_protocol.p, r->ws_protocol.n, "derp", 4);
}

static void hand_off(struct conn *c)
{
	struct sockaddr_storage peer;
	socklen_t plen;
	int fd = conn_detach(c, &peer, &plen);

	if (httpd_add_connection(fd, (struct sockaddr *)&peer, plen) != 0)
		log_debug(LS_HTTP, "handing a connection to the HTTP server failed");
}

/* TLS: the head cannot be peeked, so read decrypted bytes into the read chunk. Returns
 * the bytes buffered, 0 if none yet (EAGAIN), -1 if the connection was closed. */
static ssize_t tls_fill(struct conn *c)
{
	for (;;) {
		if (c->rchunk && c->rend - c->rstart >= WORKER_SCRATCH)
			return c->rend - c->rstart; /* a head's worth: enough to decide */
		if (conn_ensure_space(c) != 0) {
			conn_close(c, "out of memory");
			return -1;
		}
		uint32_t room = c->rchunk->cap - c->rend;
		if (room > WORKER_SCRATCH - (c->rend - c->rstart))
			room = WORKER_SCRATCH - (c->rend - c->rstart);
		ssize_t n = conn_recv(c, c->rchunk->data + c->rend, room);
		if (n > 0) {
			c->rend += (uint32_t)n;
			continue;
		}
		if (n < 0 && errno == EAGAIN)
			return c->rend - c->rstart;
		conn_close(c, n == 0 ? "EOF before request" : "TLS read failed");
		return -1;
	}
}

int conn_http(struct conn *c)
{
	char *buf = (char *)c->w->scratch;
	struct http_req r;
	ssize_t n;

	if (c->ssl) {
		if ((n = tls_fill(c)) <= 0)
			return (int)n;
		buf = (char *)c->rchunk->data + c->rstart;
	} else {
		do
			n = recv(c->fd, buf, WORKER_SCRATCH, MSG_PEEK);
		while (n < 0 && errno == EINTR);
		if (n == 0) {
			conn_close(c, "EOF before request");
			return -1;
		}
		if (n < 0) {
			if (errno == EAGAIN)
				return 0;
			conn_close(c, strerror(errno));
			return -1;
		}
	}
	int hl = http_head_parse(buf, (size_t)n, &r);
	if (hl == 0 && n < WORKER_SCRATCH) {
		/* After the client's FIN the head can never complete: hang up now, as Go does
		 * on EOF, rather than hold the socket for the head timeout. */
		if (c->peer_shut) {
			conn_close(c, "EOF before complete request head");
			return -1;
		}
		return 0; /* wait for the rest of the head */
	}
	/* Methods are case-sensitive (Go's too). */
	if (hl > 0 && r.method.n == 7 && !memcmp(r.method.p, "CONNECT", 7) &&
	    connect_start(c, &r, hl) != 0)
		return -1;
	if (hl <= 0 || (!is_derp_upgrade(&r) && !is_websocket_derp(&r))) {
		if (c->ssl)
			bridge_start(c);
		else
			hand_off(c);
		return -1;
	}
	/* Consume exactly the head: bytes after it (a fast-start client's ClientInfo) stay
	 * for the DERP reader (in the socket, or over TLS in the read chunk). */
	if (c->ssl)
		c->rstart += (uint32_t)hl;
	else if (recv(c->fd, buf, (size_t)hl, 0) != hl) {
		conn_close(c, "short read of request head");
		return -1;
	}
	if (is_websocket_derp(&r)) {
		/* No 101-with-DERP-headers and no fast start: ServerKey comes inside the first
		 * binary message; Ideal-Node is ignored on this path (as upstream). */
		uint8_t sk[45];
		if (ws_upgrade(c, &r) != 0 || c->state == CS_CLOSED)
			return -1;
		STAT_ADD(&c->w->stats, accepts, 1);
		conn_queue_local(c, sk, (uint32_t)frame_server_key(sk, relay.pub));
		conn_start_handshake(c);
		return 0;
	}
	derp_upgrade(c, &r);
	return 0;
}
