/* DERP over WebSocket against the real binary (spec PROTOCOL.md §3.5): a browser-style
 * client written here (masked frames, fragmented messages, pings) logs in and relays with
 * plain DERP clients; every malformed frame closes only its own connection; and headless
 * Chromium runs a page served on loopback that speaks DERP over a real browser WebSocket
 * (NaCl box from tweetnacl, installed from npm into the build directory at test time). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "server/frame.h"
#include "server/websocket.h"
#include "test/e2e/harness.h"

#define PUB(c) derp_client_public_key(c)

/* ---- a WebSocket DERP client ---- */

struct wsc {
	int fd;
	uint8_t pub[32], priv[32], server_key[32];
	uint8_t raw[1 << 17];     /* undecoded server bytes */
	size_t rlen;
	uint8_t stream[1 << 18];  /* the DERP byte stream from binary messages */
	size_t slen;
	int eof, got_close, pongs;
	size_t msg_len, msg_max;  /* the binary message being read; the longest one */
	uint16_t close_status;
	uint8_t pong[125];
	size_t pong_len;
	char head[1024];          /* the 101 response */
};

static void wsc_send(struct wsc *w, uint8_t op, int fin, const void *p, size_t n)
{
	uint8_t mask[4], h[14];
	uint8_t *buf = malloc(n + 14);

	randombytes_buf(mask, 4);
	size_t hl = ws_build_masked_header(h, op, fin, n, mask);
	memcpy(buf, h, hl);
	memcpy(buf + hl, p, n);
	ws_unmask(buf + hl, n, mask, 0);
	size_t off = 0;
	while (off < hl + n) {
		ssize_t r = send(w->fd, buf + off, hl + n - off, MSG_NOSIGNAL);
		if (r <= 0)
			break; /* the server may have hung up on purpose */
		off += (size_t)r;
	}
	free(buf);
}

/* One DERP frame as one binary message (what upstream's client does). */
static void wsc_send_derp(struct wsc *w, uint8_t type, const void *p, uint32_t n)
{
	uint8_t *f = malloc(FRAME_HEADER_LEN + n);
	frame_put_header(f, type, n);
	memcpy(f + FRAME_HEADER_LEN, p, n);
	wsc_send(w, WS_OP_BINARY, 1, f, FRAME_HEADER_LEN + n);
	free(f);
}

/* Read and decode what the server sent; 0, or -1 once it hung up. */
static int wsc_pump(struct wsc *w, int timeout_ms)
{
	struct pollfd p = { .fd = w->fd, .events = POLLIN };

	if (w->eof)
		return -1;
	if (poll(&p, 1, timeout_ms) <= 0)
		return 0;
	ssize_t r = recv(w->fd, w->raw + w->rlen, sizeof w->raw - w->rlen, 0);
	if (r <= 0) {
		w->eof = 1;
		return -1;
	}
	w->rlen += (size_t)r;
	for (;;) {
		struct ws_frame f;
		int h = ws_parse_header(w->raw, w->rlen, 0, &f);
		if (h < 0)
			fail_msg("server sent a malformed WebSocket frame");
		if (h == 0 || w->rlen < (size_t)h + f.len)
			break;
		assert_int_equal(f.masked, 0); /* server frames are never masked */
		const uint8_t *pl = w->raw + h;
		switch (f.opcode) {
		case WS_OP_BINARY: case WS_OP_CONT:
			assert_true(w->slen + f.len <= sizeof w->stream);
			memcpy(w->stream + w->slen, pl, f.len);
			w->slen += f.len;
			w->msg_len += f.len;
			if (f.fin) {
				if (w->msg_len > w->msg_max)
					w->msg_max = w->msg_len;
				w->msg_len = 0;
			}
			break;
		case WS_OP_PONG:
			w->pongs++;
			memcpy(w->pong, pl, f.len);
			w->pong_len = f.len;
			break;
		case WS_OP_CLOSE:
			w->got_close = 1;
			w->close_status = f.len >= 2 ? (uint16_t)(pl[0] << 8 | pl[1]) : 1005;
			break;
		default:
			fail_msg("server sent WebSocket opcode %d", f.opcode);
		}
		memmove(w->raw, w->raw + h + f.len, w->rlen - h - f.len);
		w->rlen -= h + f.len;
	}
	return 0;
}

/* The next DERP frame that is not a KeepAlive (payload copied to out). */
static uint8_t wsc_frame(struct wsc *w, uint8_t *out, uint32_t *len, int timeout_ms)
{
	int64_t end = harness_now_ms() + timeout_ms;

	for (;;) {
		while (w->slen >= FRAME_HEADER_LEN) {
			uint8_t type;
			uint32_t n;
			frame_get_header(w->stream, &type, &n);
			if (w->slen < FRAME_HEADER_LEN + n)
				break;
			memcpy(out, w->stream + FRAME_HEADER_LEN, n);
			memmove(w->stream, w->stream + FRAME_HEADER_LEN + n,
				w->slen - FRAME_HEADER_LEN - n);
			w->slen -= FRAME_HEADER_LEN + n;
			if (type == FRAME_KEEP_ALIVE)
				continue;
			*len = n;
			return type;
		}
		int64_t left = end - harness_now_ms();
		if (left <= 0)
			fail_msg("no DERP frame over WebSocket within %d ms", timeout_ms);
		if (wsc_pump(w, (int)left) < 0)
			fail_msg("server closed the WebSocket (close frame %d, status %u)", w->got_close,
				 w->close_status);
	}
}

/* The upgrade only; returns the status code. */
static int wsc_upgrade(struct wsc *w, const struct harness_server *s, const char *protocol)
{
	char key[25], req[512], accept[29];
	uint8_t nonce[16];
	size_t kl = sizeof key;

	randombytes_buf(nonce, sizeof nonce);
	sodium_bin2base64(key, kl, nonce, sizeof nonce, sodium_base64_VARIANT_ORIGINAL);
	int n = snprintf(req, sizeof req,
			 "GET /derp HTTP/1.1\r\nHost: 127.0.0.1:%u\r\nUpgrade: websocket\r\n"
			 "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
			 "%s%s%sOrigin: http://example.test\r\n\r\n", s->port, key,
			 protocol ? "Sec-WebSocket-Protocol: " : "", protocol ? protocol : "",
			 protocol ? "\r\n" : "");
	w->fd = harness_tcp(s);
	assert_int_equal(send(w->fd, req, (size_t)n, MSG_NOSIGNAL), n);
	assert_true(harness_read_head(w->fd, w->head, sizeof w->head, 5000) > 0);
	int status = atoi(w->head + 9);
	if (status == 101) {
		assert_int_equal(ws_accept_key(key, strlen(key), accept), 0);
		char want[80];
		snprintf(want, sizeof want, "\r\nSec-WebSocket-Accept: %s\r\n", accept);
		if (!strstr(w->head, want) || !strcasestr(w->head, "\r\nUpgrade: websocket\r\n") ||
		    !strcasestr(w->head, "\r\nConnection: Upgrade\r\n"))
			fail_msg("bad 101: %s", w->head);
		assert_null(strcasestr(w->head, "Sec-WebSocket-Extensions"));
	}
	return status;
}

/* Upgrade (subprotocol "derp"), ServerKey, ClientInfo, ServerInfo. */
static struct wsc *wsc_login(const struct harness_server *s)
{
	struct wsc *w = calloc(1, sizeof *w);
	uint8_t buf[1024], info[512];
	uint32_t n;
	const char *plain = "{\"version\":2}";

	assert_non_null(w);
	crypto_box_keypair(w->pub, w->priv);
	assert_int_equal(wsc_upgrade(w, s, "derp"), 101);
	assert_non_null(strstr(w->head, "\r\nSec-WebSocket-Protocol: derp\r\n"));
	/* no fast start, no Derp-* headers on this path: the stream starts with ServerKey */
	assert_int_equal(wsc_frame(w, buf, &n, 5000), FRAME_SERVER_KEY);
	assert_int_equal(n, DERP_MAGIC_LEN + 32);
	assert_memory_equal(buf, DERP_MAGIC, DERP_MAGIC_LEN);
	memcpy(w->server_key, buf + DERP_MAGIC_LEN, 32);
	assert_memory_equal(w->server_key, s->pub, 32);
	size_t fl = derp_client_build_info(info, sizeof info, w->priv, w->server_key, plain,
					   strlen(plain));
	assert_true(fl > 0);
	/* the ClientInfo frame split over a fragmented message, a ping in the middle */
	wsc_send(w, WS_OP_BINARY, 0, info, 7);
	wsc_send(w, WS_OP_PING, 1, "mid", 3);
	wsc_send(w, WS_OP_CONT, 0, info + 7, 30);
	wsc_send(w, WS_OP_CONT, 1, info + 37, fl - 37);
	assert_int_equal(wsc_frame(w, buf, &n, 5000), FRAME_SERVER_INFO);
	assert_int_equal(w->pongs, 1);
	assert_int_equal(w->pong_len, 3);
	assert_memory_equal(w->pong, "mid", 3);
	return w;
}

static void wsc_free(struct wsc *w)
{
	if (w) {
		close(w->fd);
		free(w);
	}
}

/* Send a packet from the WebSocket client to dst. */
static void wsc_send_packet(struct wsc *w, const uint8_t dst[32], const void *p, size_t n)
{
	uint8_t f[32 + 2048];
	memcpy(f, dst, 32);
	memcpy(f + 32, p, n);
	wsc_send_derp(w, FRAME_SEND_PACKET, f, (uint32_t)(32 + n));
}

static void wsc_expect_packet(struct wsc *w, const uint8_t src[32], const void *p, size_t n)
{
	static uint8_t buf[1 << 17];
	uint32_t len;
	uint8_t type;

	while ((type = wsc_frame(w, buf, &len, 5000)) != FRAME_RECV_PACKET)
		if (type != FRAME_PEER_PRESENT && type != FRAME_PEER_GONE)
			fail_msg("expected RecvPacket over WebSocket, got frame 0x%02x", type);
	assert_int_equal(len, 32 + n);
	assert_memory_equal(buf, src, 32);
	assert_memory_equal(buf + 32, p, n);
}

/* Wait until the server hangs up; returns 1 if it sent a close frame first. */
static int wsc_expect_closed(struct wsc *w, int timeout_ms)
{
	int64_t end = harness_now_ms() + timeout_ms;
	while (!w->eof && harness_now_ms() < end)
		wsc_pump(w, 50);
	if (!w->eof)
		fail_msg("server kept the WebSocket open for %d ms", timeout_ms);
	return w->got_close;
}

/* ---- tests ---- */

/* §3.5: log in over WebSocket and relay both ways with a plain DERP client; several DERP
 * frames in one message and one frame over many messages are the same stream. */
static void test_login_and_relay(void **state)
{
	struct harness_server *s = *state;
	struct derp_client *b = harness_client(s, NULL);
	struct wsc *w = wsc_login(s);
	const char *hello = "hello over websocket", *back = "and back again";

	assert_int_equal(harness_metric(s, "derp_websocket_accepts"), 1);
	wsc_send_packet(w, PUB(b), hello, strlen(hello));
	harness_expect_packet(b, w->pub, hello, strlen(hello), 5000);
	assert_int_equal(derp_client_send(b, w->pub, back, strlen(back)), 0);
	wsc_expect_packet(w, PUB(b), back, strlen(back));

	/* three SendPackets in one binary message */
	uint8_t msg[3 * (5 + 32 + 4)];
	for (int i = 0; i < 3; i++) {
		uint8_t *f = msg + i * (5 + 32 + 4);
		frame_put_header(f, FRAME_SEND_PACKET, 36);
		memcpy(f + 5, PUB(b), 32);
		memcpy(f + 37, "pkt", 3);
		f[40] = (uint8_t)('0' + i);
	}
	wsc_send(w, WS_OP_BINARY, 1, msg, sizeof msg);
	harness_expect_packet(b, w->pub, "pkt0", 4, 5000);
	harness_expect_packet(b, w->pub, "pkt1", 4, 5000);
	harness_expect_packet(b, w->pub, "pkt2", 4, 5000);
	/* one 1200-byte packet dribbled a byte per message, as empty and tiny fragments */
	uint8_t big[5 + 32 + 1200];
	frame_put_header(big, FRAME_SEND_PACKET, 32 + 1200);
	memcpy(big + 5, PUB(b), 32);
	for (int i = 0; i < 1200; i++)
		big[37 + i] = (uint8_t)i;
	for (size_t i = 0; i < sizeof big; i += 97) {
		size_t k = sizeof big - i < 97 ? sizeof big - i : 97;
		wsc_send(w, WS_OP_BINARY, 1, big + i, k);
		wsc_send(w, WS_OP_BINARY, 1, "", 0);
	}
	harness_expect_packet(b, w->pub, big + 37, 1200, 5000);
	/* a DERP ping travels as a binary message too */
	wsc_send_derp(w, FRAME_PING, "12345678", 8);
	uint8_t buf[64];
	uint32_t n;
	assert_int_equal(wsc_frame(w, buf, &n, 5000), FRAME_PONG);
	assert_memory_equal(buf, "12345678", 8);
	/* a WebSocket close is answered and ends the connection */
	uint8_t cl[125];
	wsc_send(w, WS_OP_CLOSE, 1, cl, ws_build_close(cl, WS_CLOSE_NORMAL, "bye"));
	assert_int_equal(wsc_expect_closed(w, 3000), 1);
	assert_int_equal(w->close_status, WS_CLOSE_NORMAL);
	wsc_free(w);
	derp_client_close(b);
}

/* Upstream's client (and the browser one: the same WebSocket library) reads messages of
 * at most 32768 bytes and hangs up on a longer one, so derpd never sends one: a 64 KiB
 * packet and a burst of packets that would make one long batch arrive intact in messages
 * of at most 32768 bytes. */
static void test_message_limit(void **state)
{
	struct harness_server *s = *state;
	struct derp_client *b = harness_client(s, NULL);
	struct wsc *w = wsc_login(s);
	static uint8_t big[DERP_MAX_PACKET], small[30][1200], buf[1 << 17];
	uint32_t n;

	/* B must be a sender W has heard of (a Ping makes sure W is registered). */
	wsc_send_derp(w, FRAME_PING, "87654321", 8);
	assert_int_equal(wsc_frame(w, buf, &n, 5000), FRAME_PONG);
	randombytes_buf(big, sizeof big);
	assert_int_equal(derp_client_send(b, w->pub, big, sizeof big), 0);
	for (int i = 0; i < 30; i++) {
		randombytes_buf(small[i], sizeof small[i]);
		assert_int_equal(derp_client_send(b, w->pub, small[i], sizeof small[i]), 0);
	}
	assert_int_equal(wsc_frame(w, buf, &n, 5000), FRAME_RECV_PACKET);
	assert_int_equal(n, 32 + sizeof big);
	assert_memory_equal(buf, PUB(b), 32);
	assert_memory_equal(buf + 32, big, sizeof big);
	for (int i = 0; i < 30; i++)
		wsc_expect_packet(w, PUB(b), small[i], sizeof small[i]);
	if (w->msg_max > WS_READ_LIMIT)
		fail_msg("derpd sent a binary message of %zu bytes (limit %d)", w->msg_max,
			 WS_READ_LIMIT);
	print_message("longest message %zu bytes\n", w->msg_max);
	wsc_free(w);
	derp_client_close(b);
}

/* Without the derp subprotocol the upgrade still succeeds, then closes with 1008. */
static void test_subprotocol_required(void **state)
{
	struct harness_server *s = *state;
	struct wsc *w = calloc(1, sizeof *w);

	assert_int_equal(wsc_upgrade(w, s, "chat, xderp"), 101);
	assert_null(strcasestr(w->head, "Sec-WebSocket-Protocol"));
	assert_int_equal(wsc_expect_closed(w, 3000), 1);
	assert_int_equal(w->close_status, WS_CLOSE_POLICY);
	wsc_free(w);
	/* "DERP" in another case is the client's spelling of the same token */
	w = calloc(1, sizeof *w);
	assert_int_equal(wsc_upgrade(w, s, "chat, derp"), 101);
	assert_non_null(strstr(w->head, "\r\nSec-WebSocket-Protocol: derp\r\n"));
	wsc_free(w);
}

/* Every malformed frame ends its own connection (with the right close status where the
 * server can still say one) and nobody else's. */
static void test_malformed_frames(void **state)
{
	struct harness_server *s = *state;
	struct derp_client *a = harness_client(s, NULL), *b = harness_client(s, NULL);
	struct wsc *other = wsc_login(s);
	static uint8_t big[WS_READ_LIMIT + 1];
	static const struct { const char *name; uint8_t raw[16]; size_t n; uint16_t status; } bad[] = {
		{ "unmasked", { 0x82, 0x01, 'x' }, 3, 0 }, /* upstream hangs up without a word */
		{ "RSV1", { 0xc2, 0x81, 1, 2, 3, 4, 'x' }, 7, WS_CLOSE_PROTOCOL },
		{ "RSV3", { 0x92, 0x81, 1, 2, 3, 4, 'x' }, 7, WS_CLOSE_PROTOCOL },
		{ "reserved opcode", { 0x83, 0x81, 1, 2, 3, 4, 'x' }, 7, WS_CLOSE_PROTOCOL },
		{ "fragmented ping", { 0x09, 0x80, 1, 2, 3, 4 }, 6, WS_CLOSE_PROTOCOL },
		{ "long ping", { 0x89, 0xfe, 0x00, 0x7e, 1, 2, 3, 4 }, 8, WS_CLOSE_PROTOCOL },
		{ "lone continuation", { 0x80, 0x81, 1, 2, 3, 4, 'x' }, 7, WS_CLOSE_PROTOCOL },
		{ "64-bit length, top bit", { 0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4 }, 14,
		  WS_CLOSE_PROTOCOL },
		{ "text message", { 0x81, 0x82, 1, 2, 3, 4, 'h' ^ 1, 'i' ^ 2 }, 8, WS_CLOSE_UNSUPPORTED },
		{ "bad close code", { 0x88, 0x82, 0, 0, 0, 0, 0x03, 0xed }, 8, WS_CLOSE_PROTOCOL },
	};
	for (size_t i = 0; i <= sizeof bad / sizeof *bad; i++) {
		struct wsc *w = wsc_login(s);
		const char *name;
		uint16_t want;
		if (i < sizeof bad / sizeof *bad) {
			name = bad[i].name;
			want = bad[i].status;
			assert_int_equal(send(w->fd, bad[i].raw, bad[i].n, MSG_NOSIGNAL), (ssize_t)bad[i].n);
		} else {
			/* upstream's library refuses a message over 32768 bytes with 1009 */
			name = "message over the read limit";
			want = WS_CLOSE_TOO_BIG;
			wsc_send(w, WS_OP_BINARY, 1, big, sizeof big);
		}
		int closed = wsc_expect_closed(w, 3000);
		if (want && (!closed || w->close_status != want))
			fail_msg("%s: close frame %d status %u, want %u", name, closed, w->close_status,
				 want);
		wsc_free(w);
		harness_relay_check(a, b);
	}
	/* the WebSocket client beside them never noticed */
	wsc_send_packet(other, PUB(a), "still here", 10);
	harness_expect_packet(a, other->pub, "still here", 10, 5000);
	wsc_free(other);
	derp_client_close(a);
	derp_client_close(b);
}

/* ---- Chromium ---- */

static pthread_mutex_t page_mu = PTHREAD_MUTEX_INITIALIZER;
static char reports[8][512];
static int nreports;

struct page_server {
	int lfd;
	uint16_t port;
	int stop;
	pthread_t th;
	char *html, *nacl;
	size_t nacl_len;
};

static void page_reply(int fd, const char *type, const char *body, size_t n)
{
	char head[256];
	int hl = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Type: %s\r\n"
			  "Content-Length: %zu\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
			  type, n);
	send(fd, head, (size_t)hl, MSG_NOSIGNAL);
	for (size_t off = 0; off < n;) {
		ssize_t w = send(fd, body + off, n - off, MSG_NOSIGNAL);
		if (w <= 0)
			break;
		off += (size_t)w;
	}
}

/* One request per connection: the page, tweetnacl, or a report from the page. */
static void *page_main(void *arg)
{
	struct page_server *ps = arg;

	while (!__atomic_load_n(&ps->stop, __ATOMIC_ACQUIRE)) {
		struct pollfd p = { .fd = ps->lfd, .events = POLLIN };
		if (poll(&p, 1, 50) <= 0)
			continue;
		int fd = accept(ps->lfd, NULL, NULL);
		if (fd < 0)
			continue;
		char req[2048];
		int n = harness_read_head(fd, req, sizeof req, 2000);
		if (n <= 0) {
			close(fd);
			continue;
		}
		if (strncmp(req, "GET /nacl.js ", 13) == 0) {
			page_reply(fd, "text/javascript", ps->nacl, ps->nacl_len);
		} else if (strncmp(req, "GET /report?", 12) == 0) {
			char *e = strchr(req + 12, ' ');
			if (e)
				*e = '\0';
			pthread_mutex_lock(&page_mu);
			if (nreports < 8)
				snprintf(reports[nreports++], sizeof reports[0], "%.500s", req + 12);
			pthread_mutex_unlock(&page_mu);
			page_reply(fd, "text/plain", "ok", 2);
		} else if (strncmp(req, "GET / ", 6) == 0) {
			page_reply(fd, "text/html", ps->html, strlen(ps->html));
		} else {
			page_reply(fd, "text/plain", "", 0);
		}
		close(fd);
	}
	return NULL;
}

static const char PAGE[] =
	"<!doctype html><html><head><meta charset=utf-8><title>derp ws</title></head><body>\n"
	"<script src=\"/nacl.js\"></script><script>\n"
	"(function () {\n"
	"function report(q) { fetch('/report?' + q).catch(function () {}); }\n"
	"function hex(b) { return Array.from(b, function (x) { return x.toString(16).padStart(2, '0'); }).join(''); }\n"
	"function unhex(h) { var b = new Uint8Array(h.length / 2);\n"
	"  for (var i = 0; i < b.length; i++) b[i] = parseInt(h.substr(2 * i, 2), 16); return b; }\n"
	"function frame(type, p) { var f = new Uint8Array(5 + p.length); f[0] = type;\n"
	"  new DataView(f.buffer).setUint32(1, p.length); f.set(p, 5); return f; }\n"
	"var peer = unhex('%s'), kp = nacl.box.keyPair(), buf = new Uint8Array(0);\n"
	"var ws = new WebSocket('ws://127.0.0.1:%u/derp', 'derp');\n"
	"ws.binaryType = 'arraybuffer';\n"
	"ws.onerror = function () { report('step=error'); };\n"
	"ws.onclose = function (e) { report('step=closed&code=' + e.code); };\n"
	"ws.onmessage = function (ev) {\n"
	"  var d = new Uint8Array(ev.data), nb = new Uint8Array(buf.length + d.length);\n"
	"  nb.set(buf); nb.set(d, buf.length); buf = nb;\n"
	"  while (buf.length >= 5) {\n"
	"    var len = new DataView(buf.buffer, buf.byteOffset).getUint32(1);\n"
	"    if (buf.length < 5 + len) break;\n"
	"    var type = buf[0], p = buf.slice(5, 5 + len); buf = buf.slice(5 + len);\n"
	"    if (type === 1) {\n"
	"      var nonce = nacl.randomBytes(24);\n"
	"      var msg = new TextEncoder().encode(JSON.stringify({ version: 2 }));\n"
	"      var box = nacl.box(msg, nonce, p.slice(8, 40), kp.secretKey);\n"
	"      var ci = new Uint8Array(56 + box.length);\n"
	"      ci.set(kp.publicKey); ci.set(nonce, 32); ci.set(box, 56);\n"
	"      ws.send(frame(2, ci));\n"
	"    } else if (type === 3) {\n"
	"      report('step=login&key=' + hex(kp.publicKey));\n"
	"      var data = new TextEncoder().encode('hello from chromium');\n"
	"      var sp = new Uint8Array(32 + data.length); sp.set(peer); sp.set(data, 32);\n"
	"      ws.send(frame(4, sp));\n"
	"    } else if (type === 5) {\n"
	"      report('step=recv&src=' + hex(p.slice(0, 32)) + '&data=' +\n"
	"             encodeURIComponent(new TextDecoder().decode(p.slice(32))));\n"
	"    }\n"
	"  }\n"
	"};\n"
	"})();\n"
	"</script></body></html>\n";

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *b = malloc((size_t)n + 1);
	if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
		free(b);
		b = NULL;
	}
	fclose(f);
	if (b) {
		b[n] = '\0';
		*len = (size_t)n;
	}
	return b;
}

/* tweetnacl from npm, installed under the build directory (never into the repository). */
static char *load_tweetnacl(size_t *len)
{
	const char *bin = getenv("DERPD_BIN");
	char binpath[512], dir[600], path[700], cmd[1400];

	snprintf(binpath, sizeof binpath, "%s", bin && *bin ? bin : "./derpd");
	snprintf(dir, sizeof dir, "%s/npm", dirname(binpath)); /* dirname may modify binpath */
	snprintf(path, sizeof path, "%s/node_modules/tweetnacl/nacl-fast.min.js", dir);
	char *js = slurp(path, len);
	if (js)
		return js;
	snprintf(cmd, sizeof cmd, "npm install --prefix '%s' --no-audit --no-fund --no-save "
		 "--loglevel=error tweetnacl@1.0.3 >'%s.log' 2>&1", dir, dir);
	mkdir(dir, 0755);
	if (system(cmd) != 0)
		return NULL;
	return slurp(path, len);
}

static const char *chromium_path(void)
{
	static const char *paths[] = { "/usr/bin/chromium", "/usr/bin/chromium-browser" };
	for (size_t i = 0; i < 2; i++)
		if (access(paths[i], X_OK) == 0)
			return paths[i];
	return NULL;
}

static int report_index(const char *prefix)
{
	pthread_mutex_lock(&page_mu);
	int found = -1;
	for (int i = 0; i < nreports && found < 0; i++)
		if (strncmp(reports[i], prefix, strlen(prefix)) == 0)
			found = i;
	pthread_mutex_unlock(&page_mu);
	return found;
}

static int wait_report(const char *prefix, int timeout_ms)
{
	int64_t end = harness_now_ms() + timeout_ms;
	int i;
	while ((i = report_index(prefix)) < 0 && harness_now_ms() < end)
		poll(NULL, 0, 50);
	return i;
}

static void dump_file(const char *path)
{
	size_t n;
	char *b = slurp(path, &n);
	if (b) {
		fprintf(stderr, "---- %s ----\n%s\n----\n", path, n > 6000 ? b + n - 6000 : b);
		free(b);
	}
}

/* A real browser: a page from 127.0.0.1 opens ws://127.0.0.1:<derpd>/derp with the derp
 * subprotocol, logs in (NaCl box from tweetnacl), sends a packet a plain C client receives,
 * and reports the packet that client sends back. */
static void test_chromium(void **state)
{
	struct harness_server *s = *state;
	const char *chrome = chromium_path();
	struct page_server ps = { 0 };
	char hex[65], url[128], profile[256], clog[256], want[200];

	if (!chrome) {
		print_message("SKIPPED: chromium is not installed (apt-get install chromium)\n");
		skip();
	}
	if (!(ps.nacl = load_tweetnacl(&ps.nacl_len))) {
		print_message("SKIPPED: tweetnacl could not be installed from npm\n");
		skip();
	}
	struct derp_client *b = harness_client(s, NULL);
	sodium_bin2hex(hex, sizeof hex, PUB(b), 32);
	size_t hl = sizeof PAGE + 128;
	ps.html = malloc(hl);
	snprintf(ps.html, hl, PAGE, hex, s->port);
	struct sockaddr_in in = { .sin_family = AF_INET };
	socklen_t sl = sizeof in;
	in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ps.lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_int_equal(bind(ps.lfd, (struct sockaddr *)&in, sizeof in), 0);
	assert_int_equal(getsockname(ps.lfd, (struct sockaddr *)&in, &sl), 0);
	assert_int_equal(listen(ps.lfd, 16), 0);
	ps.port = ntohs(in.sin_port);
	assert_int_equal(pthread_create(&ps.th, NULL, page_main, &ps), 0);

	snprintf(url, sizeof url, "http://127.0.0.1:%u/", ps.port);
	snprintf(profile, sizeof profile, "--user-data-dir=%s/chromium-profile", s->dir);
	snprintf(clog, sizeof clog, "%s/chromium.log", s->dir);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		setpgid(0, 0);
		int fd = open(clog, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execl(chrome, chrome, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		      "--no-first-run", "--disable-background-networking", "--disable-component-update",
		      "--disable-sync", "--disable-dev-shm-usage", "--no-proxy-server", profile, url,
		      (char *)NULL);
		_exit(127);
	}
	setpgid(pid, pid);

	int login = wait_report("step=login&key=", 60000);
	if (login < 0) {
		dump_file(clog);
		harness_dump_log(s);
		for (int i = 0; i < nreports; i++)
			fprintf(stderr, "page reported: %s\n", reports[i]);
		kill(-pid, SIGKILL);
		waitpid(pid, NULL, 0);
		fail_msg("the page did not log in over WebSocket within 60 s");
	}
	uint8_t page_key[32];
	assert_int_equal(sodium_hex2bin(page_key, 32, reports[login] + 15, 64, NULL, NULL, NULL), 0);
	harness_expect_packet(b, page_key, "hello from chromium", 19, 10000);
	assert_int_equal(derp_client_send(b, page_key, "hello from C", 12), 0);
	snprintf(want, sizeof want, "step=recv&src=%s&data=hello%%20from%%20C", hex);
	int got = wait_report(want, 10000);
	if (got < 0) {
		dump_file(clog);
		for (int i = 0; i < nreports; i++)
			fprintf(stderr, "page reported: %s\n", reports[i]);
	}
	kill(-pid, SIGKILL);
	waitpid(pid, NULL, 0);
	__atomic_store_n(&ps.stop, 1, __ATOMIC_RELEASE);
	pthread_join(ps.th, NULL);
	close(ps.lfd);
	free(ps.html);
	free(ps.nacl);
	assert_true(got >= 0);
	assert_true(harness_metric(s, "derp_websocket_accepts") >= 1);
	print_message("Chromium logged in over WebSocket and relayed both ways\n");
	derp_client_close(b);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	assert_int_equal(sodium_init() >= 0, 1);
#define T(fn) cmocka_unit_test_setup_teardown(fn, harness_setup, harness_teardown)
	const struct CMUnitTest tests[] = {
		T(test_login_and_relay),
		T(test_message_limit),
		T(test_subprotocol_required),
		T(test_malformed_frames),
		T(test_chromium),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
