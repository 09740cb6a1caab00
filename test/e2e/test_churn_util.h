/* Test-only helpers for test/e2e/test_churn.c, safe to call from many threads (they
 * never fail the cmocka test; they return -1 and the caller counts it): a connection
 * from a chosen loopback source address, plain or TLS (wolfSSL, no verification), with a
 * small read buffer; an HTTP response head reader; a WebSocket DERP client; RST closes
 * (SO_LINGER 0); derpd's descriptors and RSS from /proc. Every read and write is
 * bounded by the socket's SO_RCVTIMEO / SO_SNDTIMEO. Include after harness.h. */
#ifndef DERPD_TEST_CHURN_UTIL_H
#define DERPD_TEST_CHURN_UTIL_H
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include "server/frame.h"
#include "server/websocket.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

struct xp {
	int fd;
	WOLFSSL *ssl;
	uint8_t buf[4096]; /* read but not yet consumed */
	size_t len;
};

/* A blocking TCP socket from src to 127.0.0.1:port, every call bounded by timeout_ms.
 * The port is chosen at connect (IP_BIND_ADDRESS_NO_PORT): thousands of short
 * connections from one address do not run out of ports at bind. -1 on failure. */
static int cu_tcp(const char *src, uint16_t port, int timeout_ms)
{
	struct sockaddr_in a = { .sin_family = AF_INET }, d = { .sin_family = AF_INET };
	struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
	int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	inet_pton(AF_INET, src, &a.sin_addr);
	inet_pton(AF_INET, "127.0.0.1", &d.sin_addr);
	d.sin_port = htons(port);
	setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
	/* as Go's clients: TLS flights written in pieces must not wait for delayed ACKs */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
	    connect(fd, (struct sockaddr *)&d, sizeof d) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Abortive close: the peer sees RST, nothing lingers in TIME_WAIT. */
static void cu_rst_fd(int fd)
{
	struct linger l = { 1, 0 };
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
	close(fd);
}

/* Connect (and with ctx, complete a TLS handshake offering ALPN http/1.1). */
static int xp_dial(struct xp *x, const char *src, uint16_t port, WOLFSSL_CTX *ctx,
		   int timeout_ms)
{
	static char alpn[] = "http/1.1";

	x->ssl = NULL;
	x->len = 0;
	if ((x->fd = cu_tcp(src, port, timeout_ms)) < 0)
		return -1;
	if (!ctx)
		return 0;
	if (!(x->ssl = wolfSSL_new(ctx)))
		goto fail;
	wolfSSL_set_fd(x->ssl, x->fd);
	wolfSSL_UseALPN(x->ssl, alpn, sizeof alpn - 1, WOLFSSL_ALPN_CONTINUE_ON_MISMATCH);
	if (wolfSSL_connect(x->ssl) == WOLFSSL_SUCCESS)
		return 0;
fail:
	if (x->ssl)
		wolfSSL_free(x->ssl);
	x->ssl = NULL;
	close(x->fd);
	x->fd = -1;
	return -1;
}

/* rst: abortive close; else an orderly one (close_notify first on TLS). */
static void xp_close(struct xp *x, int rst)
{
	if (x->ssl) {
		if (!rst)
			wolfSSL_shutdown(x->ssl);
		wolfSSL_free(x->ssl);
	}
	if (rst)
		cu_rst_fd(x->fd);
	else
		close(x->fd);
	x->fd = -1;
	x->ssl = NULL;
}

static int xp_write(struct xp *x, const void *p, size_t n)
{
	if (x->ssl)
		return wolfSSL_write(x->ssl, p, (int)n) == (int)n ? 0 : -1;
	for (size_t off = 0; off < n;) {
		ssize_t r = send(x->fd, (const char *)p + off, n - off, MSG_NOSIGNAL);
		if (r <= 0)
			return -1;
		off += (size_t)r;
	}
	return 0;
}

/* Append what arrives next to x->buf; -1 on EOF, error or timeout. */
static int xp_fill(struct xp *x)
{
	if (x->len == sizeof x->buf)
		return -1;
	int r = x->ssl ? wolfSSL_read(x->ssl, x->buf + x->len, (int)(sizeof x->buf - x->len))
		       : (int)recv(x->fd, x->buf + x->len, sizeof x->buf - x->len, 0);
	if (r <= 0)
		return -1;
	x->len += (size_t)r;
	return 0;
}

static void xp_consume(struct xp *x, size_t n)
{
	memmove(x->buf, x->buf + n, x->len - n);
	x->len -= n;
}

/* Read a response head; returns its status and consumes the head (not the body). */
static int xp_head(struct xp *x, char *head, size_t cap)
{
	for (;;) {
		uint8_t *end = memmem(x->buf, x->len, "\r\n\r\n", 4);
		if (end) {
			size_t n = (size_t)(end + 4 - x->buf);
			snprintf(head, cap, "%.*s", (int)n, (const char *)x->buf);
			xp_consume(x, n);
			int status = -1;
			return sscanf(head, "HTTP/1.%*d %d", &status) == 1 ? status : -1;
		}
		if (xp_fill(x) != 0)
			return -1;
	}
}

/* A response with a Content-Length body, read whole. Status or -1. */
static int xp_response(struct xp *x)
{
	char head[2048];
	int st = xp_head(x, head, sizeof head);
	const char *cl = strcasestr(head, "\r\nContent-Length:");
	size_t left = cl ? strtoul(cl + 17, NULL, 10) : 0;

	if (st < 0 || (!cl && st != 204 && st != 304))
		return -1;
	while (left > 0) {
		if (x->len == 0 && xp_fill(x) != 0)
			return -1;
		size_t k = x->len < left ? x->len : left;
		xp_consume(x, k);
		left -= k;
	}
	return st;
}

/* ---- derpd's figures ---------------------------------------------------------------- */

static int open_fds(pid_t pid)
{
	char path[64];
	int n = 0;

	snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
	DIR *d = opendir(path);
	if (!d)
		return -1;
	for (struct dirent *e; (e = readdir(d)) != NULL;)
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

static long rss_kb(pid_t pid)
{
	char path[64], line[256];
	long kb = -1;

	snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	while (f && fgets(line, sizeof line, f))
		if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb;
}

/* The binary at path contains needle (a sanitizer's symbols). */
static int binary_has(const char *path, const char *needle)
{
	FILE *f = fopen(path, "rb");
	static char buf[1 << 16];
	size_t keep = 0, nl = strlen(needle);
	int found = 0;

	while (f && !found) {
		size_t r = fread(buf + keep, 1, sizeof buf - keep, f);
		if (r == 0)
			break;
		size_t have = keep + r;
		found = memmem(buf, have, needle, nl) != NULL;
		keep = have < nl - 1 ? have : nl - 1; /* a match may straddle two reads */
		memmove(buf, buf + have - keep, keep);
	}
	if (f)
		fclose(f);
	return found;
}

/* ---- a WebSocket DERP client (subprotocol "derp", one DERP frame per message) ------- */

struct wsc {
	struct xp x;
	uint8_t pub[32], priv[32], server_key[32];
	uint8_t stream[8192]; /* DERP bytes from binary messages, not yet returned */
	size_t slen;
};

static int wsc_send(struct wsc *w, uint8_t op, const void *p, size_t n)
{
	uint8_t mask[4], buf[14 + 2048];

	if (n > 2048)
		return -1;
	randombytes_buf(mask, 4);
	size_t hl = ws_build_masked_header(buf, op, 1, n, mask);
	memcpy(buf + hl, p, n);
	ws_unmask(buf + hl, n, mask, 0);
	return xp_write(&w->x, buf, hl + n);
}

static int wsc_send_derp(struct wsc *w, uint8_t type, const void *p, uint32_t n)
{
	uint8_t f[FRAME_HEADER_LEN + 2048];

	if (n > 2048)
		return -1;
	frame_put_header(f, type, n);
	memcpy(f + FRAME_HEADER_LEN, p, n);
	return wsc_send(w, WS_OP_BINARY, f, FRAME_HEADER_LEN + n);
}

/* The next DERP frame that is not a KeepAlive (payload into out, up to cap). Type, or -1
 * on close, timeout or anything malformed. */
static int wsc_frame(struct wsc *w, uint8_t *out, size_t cap, uint32_t *len)
{
	for (;;) {
		while (w->slen >= FRAME_HEADER_LEN) {
			uint8_t type;
			uint32_t n;
			frame_get_header(w->stream, &type, &n);
			if (n > sizeof w->stream - FRAME_HEADER_LEN)
				return -1;
			if (w->slen < FRAME_HEADER_LEN + n)
				break;
			if (type != FRAME_KEEP_ALIVE && n > cap)
				return -1;
			memcpy(out, w->stream + FRAME_HEADER_LEN, type == FRAME_KEEP_ALIVE ? 0 : n);
			w->slen -= FRAME_HEADER_LEN + n;
			memmove(w->stream, w->stream + FRAME_HEADER_LEN + n, w->slen);
			if (type == FRAME_KEEP_ALIVE)
				continue;
			*len = n;
			return type;
		}
		struct ws_frame f;
		int h = ws_parse_header(w->x.buf, w->x.len, 0, &f);
		if (h < 0 || (h > 0 && f.masked))
			return -1;
		if (h == 0 || w->x.len < (size_t)h + f.len) {
			if (xp_fill(&w->x) != 0)
				return -1;
			continue;
		}
		if (f.opcode == WS_OP_CLOSE)
			return -1;
		if (f.opcode == WS_OP_BINARY || f.opcode == WS_OP_CONT) {
			if (w->slen + f.len > sizeof w->stream)
				return -1;
			memcpy(w->stream + w->slen, w->x.buf + h, f.len);
			w->slen += f.len;
		}
		xp_consume(&w->x, (size_t)h + f.len);
	}
}

/* Upgrade (on a connected w->x), ServerKey, ClientInfo, ServerInfo. 0 or -1. */
static int wsc_login(struct wsc *w, uint16_t port)
{
	char key[25], req[512], head[1024], accept[29], want[80];
	uint8_t nonce[16], buf[1024];
	uint32_t n;
	const char *plain = "{\"version\":2}";

	crypto_box_keypair(w->pub, w->priv);
	randombytes_buf(nonce, sizeof nonce);
	sodium_bin2base64(key, sizeof key, nonce, sizeof nonce, sodium_base64_VARIANT_ORIGINAL);
	int rl = snprintf(req, sizeof req,
			  "GET /derp HTTP/1.1\r\nHost: 127.0.0.1:%u\r\nUpgrade: websocket\r\n"
			  "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
			  "Sec-WebSocket-Protocol: derp\r\n\r\n", port, key);
	if (xp_write(&w->x, req, (size_t)rl) != 0 || xp_head(&w->x, head, sizeof head) != 101)
		return -1;
	ws_accept_key(key, strlen(key), accept);
	snprintf(want, sizeof want, "\r\nSec-WebSocket-Accept: %s\r\n", accept);
	if (!strstr(head, want))
		return -1;
	if (wsc_frame(w, buf, sizeof buf, &n) != FRAME_SERVER_KEY || n != DERP_MAGIC_LEN + 32)
		return -1;
	memcpy(w->server_key, buf + DERP_MAGIC_LEN, 32);
	size_t fl = derp_client_build_info(buf, sizeof buf, w->priv, w->server_key, plain,
					   strlen(plain));
	if (fl == 0 || wsc_send(w, WS_OP_BINARY, buf, fl) != 0)
		return -1;
	return wsc_frame(w, buf, sizeof buf, &n) == FRAME_SERVER_INFO ? 0 : -1;
}

/* The next RecvPacket must come from src with exactly p (PeerPresent/Gone skipped). */
static int wsc_expect_packet(struct wsc *w, const uint8_t src[32], const void *p, size_t n)
{
	uint8_t buf[2048];
	uint32_t len;
	int type;

	while ((type = wsc_frame(w, buf, sizeof buf, &len)) != FRAME_RECV_PACKET)
		if (type != FRAME_PEER_PRESENT && type != FRAME_PEER_GONE)
			return -1;
	return len == 32 + n && memcmp(buf, src, 32) == 0 && memcmp(buf + 32, p, n) == 0 ? 0
											  : -1;
}

#endif
