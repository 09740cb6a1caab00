/* The HTTP stage of a connection: peek at the request head, and either take the
 * connection over for DERP (PROTOCOL.md §3.2) or answer the request as plain HTTP.
 * Peeking (MSG_PEEK) leaves every byte in the socket until the decision is made, so a
 * non-DERP connection can be handed on untouched. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "server/frame.h"
#include "server/http_head.h"
#include "server/key.h"
#include "server/log.h"
#include "server/relay.h"

static int send_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1; /* a full socket buffer on a fresh connection: give up on it */
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

static int http_respond(struct conn *c, int status, const char *reason, const char *extra,
			const char *body, int head_only, int keep_alive)
{
	char resp[1024];
	size_t blen = strlen(body);
	int n = snprintf(resp, sizeof resp,
			 "HTTP/1.1 %d %s\r\n%sContent-Length: %zu\r\n%s\r\n%s", status, reason,
			 extra, blen, keep_alive ? "" : "Connection: close\r\n",
			 head_only ? "" : body);
	return send_all(c->fd, resp, (size_t)n);
}

/* Requests that are not a DERP upgrade. */
static int http_answer(struct conn *c, const struct http_req *r)
{
	int head = http_str_ieq(r->method, "HEAD");
	int keep = r->minor >= 1 && !http_has_token(r->connection, "close") &&
		   !r->transfer_encoding.p &&
		   (!r->content_length.p || http_str_ieq(r->content_length, "0"));
	int rc;

	if (http_str_ieq(r->path, "/derp") && !relay.cfg->run_derp) {
		rc = http_respond(c, 404, "Not Found", "Content-Type: text/plain; charset=utf-8\r\n",
				  "derp server disabled\n", head, keep);
	} else if (http_str_ieq(r->path, "/derp")) {
		rc = http_respond(c, 426, "Upgrade Required",
				  "Content-Type: text/plain; charset=utf-8\r\n"
				  "X-Content-Type-Options: nosniff\r\n",
				  "DERP requires connection upgrade\n", head, keep);
	} else if (http_str_ieq(r->path, "/derp/probe") ||
		   http_str_ieq(r->path, "/derp/latency-check")) {
		if (head || http_str_ieq(r->method, "GET"))
			rc = http_respond(c, 200, "OK", "Access-Control-Allow-Origin: *\r\n", "", head,
					  keep);
		else
			rc = http_respond(c, 405, "Method Not Allowed",
					  "Content-Type: text/plain; charset=utf-8\r\n",
					  "bogus probe method\n", 0, keep);
	} else {
		rc = http_respond(c, 404, "Not Found", "Content-Type: text/plain; charset=utf-8\r\n",
				  "404 page not found\n", head, keep);
	}
	if (rc != 0 || !keep) {
		conn_close(c, "HTTP request served");
		return -1;
	}
	c->deadline_ms = now_ms() + 30000;
	worker_timer_set(c, c->deadline_ms);
	return 0;
}

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
		conn_queue_local(c, (const uint8_t *)resp, (uint32_t)n);
	}
	conn_queue_local(c, sk, (uint32_t)frame_server_key(sk, relay.pub));
	conn_start_handshake(c);
}

int conn_http(struct conn *c)
{
	char *buf = (char *)c->w->scratch;

	for (;;) {
		struct http_req r;
		ssize_t n = recv(c->fd, buf, WORKER_SCRATCH, MSG_PEEK);
		if (n == 0) {
			conn_close(c, "EOF before request");
			return -1;
		}
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return 0;
			conn_close(c, strerror(errno));
			return -1;
		}
		int hl = http_head_parse(buf, (size_t)n, &r);
		if (hl == 0 && n < WORKER_SCRATCH)
			return 0; /* wait for the rest of the head */
		if (hl <= 0) {
			http_respond(c, hl == 0 ? 431 : 400,
				     hl == 0 ? "Request Header Fields Too Large" : "Bad Request",
				     "Content-Type: text/plain; charset=utf-8\r\n",
				     hl == 0 ? "431 Request Header Fields Too Large" : "400 Bad Request",
				     0, 0);
			conn_close(c, "bad HTTP request");
			return -1;
		}
		/* Consume exactly the head: anything after it (a fast-start ClientInfo, the next
		 * pipelined request) stays in the socket. */
		if (recv(c->fd, buf, (size_t)hl, 0) != hl) {
			conn_close(c, "short read of request head");
			return -1;
		}
		int ws = http_str_ieq(r.upgrade, "websocket");
		if (relay.cfg->run_derp && http_str_ieq(r.path, "/derp") && ws && r.ws_protocol.p &&
		    memmem(r.ws_protocol.p, r.ws_protocol.n, "derp", 4)) {
			http_respond(c, 501, "Not Implemented",
				     "Content-Type: text/plain; charset=utf-8\r\n",
				     "derpd: DERP over WebSocket is not supported yet\n", 0, 0);
			conn_close(c, "WebSocket DERP not supported yet");
			return -1;
		}
		if (relay.cfg->run_derp && http_str_ieq(r.path, "/derp") &&
		    (http_str_ieq(r.upgrade, "derp") || ws)) {
			derp_upgrade(c, &r);
			return 0;
		}
		if (http_answer(c, &r) < 0)
			return -1;
	}
}
