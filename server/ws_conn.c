/* DERP over WebSocket on a relay connection (PROTOCOL.md §3.5): the upgrade, decoding the
 * client's frames in place in the read chunk (the DERP parser then sees a plain stream),
 * and wrapping each output batch in one binary message. The codec is websocket.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "server/frame.h"
#include "server/http_head.h"
#include "server/log.h"
#include "server/relay.h"
#include "server/websocket.h"

#define WS_CTL_OUT 512 /* pending pong/close frames */

struct ws_conn {
	struct ws_decoder dec;
	uint32_t wpos, wraw;    /* undecoded client bytes are rchunk->data[wpos, wraw) */
	uint32_t ctl_len;
	uint8_t closing;        /* a close frame is queued: hang up once it is written */
	uint8_t ctl[WS_CTL_OUT];
};

static int reply(struct conn *c, int status, const char *reason, const char *extra,
		 const char *body)
{
	char resp[512];
	int n = snprintf(resp, sizeof resp,
			 "HTTP/1.1 %d %s\r\n%sContent-Type: text/plain; charset=utf-8\r\n"
			 "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
			 status, reason, extra, strlen(body), body);
	struct iovec v = { resp, (size_t)n };

	if (conn_writev(c, &v, 1) < 0) {
		char name[CONN_NAME_LEN];
		log_debug(LS_DERP, "%s: WebSocket upgrade refusal not written: %s",
			  conn_name(c, name), strerror(errno));
	}
	conn_close(c, "WebSocket upgrade refused");
	return -1;
}

/* Queue a control frame; the next batch carries it before any data. */
static void queue_ctl(struct conn *c, uint8_t opcode, const uint8_t *p, size_t len)
{
	struct ws_conn *ws = c->ws;

	if (ws->ctl_len + 10 + len > WS_CTL_OUT)
		return; /* a flood of pings: the pongs already queued answer them */
	ws->ctl_len += (uint32_t)ws_build_header(ws->ctl + ws->ctl_len, opcode, 1, len);
	memcpy(ws->ctl + ws->ctl_len, p, len);
	ws->ctl_len += (uint32_t)len;
	worker_mark_ready(c);
}

static void ws_close_with(struct conn *c, uint16_t status, const char *reason)
{
	uint8_t p[2 + 123];

	queue_ctl(c, WS_OP_CLOSE, p, ws_build_close(p, status, reason));
	c->ws->closing = 1;
}

int ws_upgrade(struct conn *c, const struct http_req *r)
{
	char accept[29], resp[512];
	size_t toklen;

	if (!http_str_ieq(r->method, "GET"))
		return reply(c, 405, "Method Not Allowed", "", "method not allowed\n");
	if (r->minor < 1 || !http_has_token(r->connection, "upgrade"))
		return reply(c, 426, "Upgrade Required", "", "upgrade required\n");
	if (!http_str_ieq(r->ws_version, "13"))
		return reply(c, 400, "Bad Request", "Sec-WebSocket-Version: 13\r\n",
			     "unsupported WebSocket protocol version\n");
	if (!r->ws_key.p || !ws_key_valid(r->ws_key.p, r->ws_key.n) ||
	    ws_accept_key(r->ws_key.p, r->ws_key.n, accept) != 0)
		return reply(c, 400, "Bad Request", "", "invalid Sec-WebSocket-Key\n");
	const char *tok = ws_header_token(r->ws_protocol.p, r->ws_protocol.n, "derp", &toklen);
	int n = snprintf(resp, sizeof resp,
			 "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
			 "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n",
			 accept);
	if (tok)
		n += snprintf(resp + n, sizeof resp - (size_t)n, "Sec-WebSocket-Protocol: %.*s\r\n",
			      (int)toklen, tok);
	n += snprintf(resp + n, sizeof resp - (size_t)n, "\r\n");
	/* Written now, before the connection speaks WebSocket; a fresh socket takes it. */
	struct iovec v = { resp, (size_t)n };
	if (conn_writev(c, &v, 1) != n) {
		conn_close(c, "cannot write the WebSocket upgrade");
		return -1;
	}
	if (!(c->ws = calloc(1, sizeof *c->ws))) {
		conn_close(c, "out of memory");
		return -1;
	}
	ws_decoder_init(&c->ws->dec);
	/* Bytes already read past the head (TLS) are WebSocket frames still to decode. */
	if (c->rchunk) {
		c->ws->wpos = c->rstart;
		c->ws->wraw = c->rend;
		c->rend = c->rstart;
	}
	STAT_ADD(&c->w->stats, websocket_accepts, 1);
	if (!tok) {
		ws_close_with(c, WS_CLOSE_POLICY, "client must speak the derp subprotocol");
		return conn_flush(c);
	}
	return 0;
}

uint32_t ws_data_end(const struct conn *c)
{
	return c->ws ? c->ws->wraw : c->rend;
}

void ws_shift(struct conn *c, uint32_t by)
{
	if (c->ws) {
		c->ws->wpos -= by;
		c->ws->wraw -= by;
	}
}

void ws_fresh_chunk(struct conn *c)
{
	if (c->ws)
		c->ws->wpos = c->ws->wraw = 0;
}

int ws_ingest(struct conn *c, uint32_t n)
{
	struct ws_conn *ws = c->ws;
	uint8_t *data = c->rchunk->data;

	ws->wraw += n;
	while (ws->wpos < ws->wraw) {
		size_t used, made;
		int r = ws_decode(&ws->dec, data + ws->wpos, ws->wraw - ws->wpos, data + c->rend,
				  &used, &made);
		ws->wpos += (uint32_t)used;
		c->rend += (uint32_t)made;
		if (r == WS_DEC_MORE)
			break;
		if (r == WS_DEC_ERROR) {
			char name[CONN_NAME_LEN];
			log_debug(LS_DERP, "%s: WebSocket: %s", conn_name(c, name),
				  ws->dec.err_reason);
			ws_close_with(c, ws->dec.err_status, ws->dec.err_reason);
			conn_flush(c);
			if (c->state != CS_CLOSED)
				conn_close(c, "WebSocket protocol error");
			return -1;
		}
		if (ws->dec.ctl_opcode == WS_OP_PING) {
			queue_ctl(c, WS_OP_PONG, ws->dec.ctl, ws->dec.ctl_len);
		} else if (ws->dec.ctl_opcode == WS_OP_CLOSE) {
			queue_ctl(c, WS_OP_CLOSE, ws->dec.ctl, ws->dec.ctl_len >= 2 ? 2 : 0);
			conn_flush(c);
			if (c->state != CS_CLOSED)
				conn_close(c, "WebSocket closed by the client");
			return -1;
		}
	}
	/* Everything decoded: no raw leftovers, so reads continue right after the stream. */
	if (ws->wpos == ws->wraw)
		ws->wpos = ws->wraw = c->rend;
	return 0;
}

size_t ws_batch_prefix(struct conn *c, uint8_t *out, size_t cap, uint64_t data_len)
{
	struct ws_conn *ws = c->ws;
	size_t n = 0;

	if (ws->ctl_len && ws->ctl_len + 10 <= cap) {
		memcpy(out, ws->ctl, ws->ctl_len);
		n = ws->ctl_len;
		ws->ctl_len = 0;
	}
	if (data_len)
		n += ws_build_header(out + n, WS_OP_BINARY, 1, data_len);
	return n;
}

int ws_pending(const struct conn *c)
{
	return c->ws && c->ws->ctl_len;
}

int ws_closing(const struct conn *c)
{
	return c->ws && c->ws->closing;
}

void ws_free(struct conn *c)
{
	free(c->ws);
	c->ws = NULL;
}
