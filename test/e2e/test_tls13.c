/* TLS 1.3 after the handshake, on the real binary (issue 13, items 6 and 7), with
 * wolfSSL's own client API as the peer:
 *  - KeyUpdate, requested and not, on a DERP connection (Ping/Pong and packets relayed
 *    both ways afterwards, derpd's answering KeyUpdate seen) and on the HTTP side
 *    through the TLS bridge (the next request on the same keep-alive connection is
 *    answered), before the first request and between requests;
 *  - KeyUpdate while derpd's socket to the client is full (the client stops reading
 *    while a flood or a large answer fills it): derpd's answering KeyUpdate cannot be
 *    sent at once, and the stream that follows must still be whole, on DERP (every
 *    packet intact, drops counted on /debug/varz, the Ping answered) and on HTTP;
 *  - session resumption with a ticket derpd issued (wolfSSL_session_reused), repeated so
 *    that resumed connections land on other workers than the one that issued the ticket
 *    (four workers, SO_REUSEPORT), and a resumed connection carries DERP.
 *
 * The group's server is manual mode for 127.0.0.1 with derpd's self-signed certificate,
 * as in test_tls.c. Every read is bounded by the socket's 5 s receive timeout. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test/e2e/harness.h"
#include "test/e2e/test_tls_util.h"

#include <sodium.h>

#include "server/frame.h"

#include <poll.h>
#include <sys/ioctl.h>

#define T 5000 /* ms: bound on one expected event */
#define RESUMES 8

static struct harness_server *srv;
static char tmp[64], certdir[128];

static int group_setup(void **state)
{
	(void)state;
	assert_int_equal(sodium_init() < 0, 0);
	tu_tmpdir(tmp, sizeof tmp);
	snprintf(certdir, sizeof certdir, "%s/certs", tmp);
	const char *extra[] = { "-certmode", "manual", "-hostname", "127.0.0.1", "-certdir",
				certdir, "-http-port=-1", "--workers", "4", NULL };
	srv = harness_start_opts(extra, HARNESS_TLS);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	harness_stop(srv);
	tu_rmdir(tmp);
	return 0;
}

/* ---- a blocking TLS 1.3 client (5 s socket timeouts bound every call) ---------------- */

struct tc {
	int fd;
	WOLFSSL_CTX *ctx;
	WOLFSSL *ssl;
	uint8_t priv[32], pub[32], server[32]; /* DERP keys, after tc_derp_login */
};

/* TLS 1.3 to srv offering ALPN http/1.1, resuming sess if given (no verification);
 * rcvbuf > 0 sets a small receive buffer before connect (a small window: derpd's socket
 * to us fills soon after we stop reading). */
static void tc_dial_buf(struct tc *c, WOLFSSL_SESSION *sess, int rcvbuf)
{
	static char alpn[] = "http/1.1";
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(srv->port) };
	struct timeval tv = { T / 1000, 0 };

	memset(c, 0, sizeof *c);
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(c->fd >= 0);
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	if (rcvbuf > 0)
		setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
	assert_int_equal(connect(c->fd, (struct sockaddr *)&sa, sizeof sa), 0);
	assert_non_null(c->ctx = wolfSSL_CTX_new(wolfTLSv1_3_client_method()));
	wolfSSL_CTX_set_verify(c->ctx, WOLFSSL_VERIFY_NONE, NULL);
	assert_non_null(c->ssl = wolfSSL_new(c->ctx));
	wolfSSL_set_fd(c->ssl, c->fd);
	wolfSSL_UseALPN(c->ssl, alpn, sizeof alpn - 1, WOLFSSL_ALPN_FAILED_ON_MISMATCH);
	if (sess)
		assert_int_equal(wolfSSL_set_session(c->ssl, sess), WOLFSSL_SUCCESS);
	int r = wolfSSL_connect(c->ssl);
	if (r != WOLFSSL_SUCCESS) {
		char msg[WOLFSSL_MAX_ERROR_SZ];
		harness_dump_log(srv);
		fail_msg("TLS handshake%s: %s", sess ? " (resuming)" : "",
			 wolfSSL_ERR_error_string((unsigned long)wolfSSL_get_error(c->ssl, r), msg));
	}
	assert_int_equal(wolfSSL_version(c->ssl), TLS1_3_VERSION);
}

static void tc_dial(struct tc *c, WOLFSSL_SESSION *sess)
{
	tc_dial_buf(c, sess, 0);
}

static void tc_close(struct tc *c)
{
	wolfSSL_free(c->ssl);
	wolfSSL_CTX_free(c->ctx);
	close(c->fd);
	c->fd = -1;
}

static void tc_write(struct tc *c, const void *p, size_t n)
{
	int r = wolfSSL_write(c->ssl, p, (int)n);
	if (r != (int)n)
		fail_msg("TLS write: error %d", wolfSSL_get_error(c->ssl, r));
}

/* Exactly n bytes; fails on EOF, error or the 5 s timeout. */
static void tc_read(struct tc *c, void *p, size_t n, const char *what)
{
	for (size_t got = 0; got < n;) {
		int r = wolfSSL_read(c->ssl, (uint8_t *)p + got, (int)(n - got));
		if (r <= 0) {
			char msg[WOLFSSL_MAX_ERROR_SZ];
			harness_dump_log(srv);
			fail_msg("%s: TLS read got %zu of %zu bytes: %s", what, got, n,
				 wolfSSL_ERR_error_string((unsigned long)wolfSSL_get_error(c->ssl, r),
							  msg));
		}
		got += (size_t)r;
	}
}

/* KeyUpdate: requested (derpd must answer with its own) or not. wolfSSL sends
 * update_requested unless an update it requested is still unanswered, so "not
 * requested" is a pair: requested, then not requested at once (which also makes wolfSSL
 * stop waiting for the answer). Call with no update outstanding. */
static void tc_key_update(struct tc *c, int requested)
{
	int pending = -1;

	assert_int_equal(wolfSSL_update_keys(c->ssl), WOLFSSL_SUCCESS);
	if (!requested)
		assert_int_equal(wolfSSL_update_keys(c->ssl), WOLFSSL_SUCCESS);
	assert_int_equal(wolfSSL_key_update_response(c->ssl, &pending), 0);
	assert_int_equal(pending, requested);
}

/* derpd's KeyUpdate answered every one we requested (seen by the reads since). */
static void tc_key_update_answered(struct tc *c)
{
	int pending = 1;

	assert_int_equal(wolfSSL_key_update_response(c->ssl, &pending), 0);
	assert_int_equal(pending, 0);
}

/* ---- HTTP over it ------------------------------------------------------------------ */

/* GET /generate_204 on the keep-alive connection; the 204's head is read whole. */
static void tc_generate_204(struct tc *c, const char *what)
{
	static const char req[] = "GET /generate_204 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
	char head[1024];
	size_t n = 0;

	tc_write(c, req, sizeof req - 1);
	while (n < 4 || memcmp(head + n - 4, "\r\n\r\n", 4) != 0) {
		assert_true(n + 1 < sizeof head);
		tc_read(c, head + n++, 1, what);
	}
	head[n] = '\0';
	if (strncmp(head, "HTTP/1.1 204 ", 13) != 0)
		fail_msg("%s: expected a 204, got: %s", what, head);
}

/* ---- DERP over it ------------------------------------------------------------------ */

static void tc_frame_write(struct tc *c, uint8_t type, const void *p, size_t n)
{
	uint8_t b[5 + 1024];

	assert_true(n <= sizeof b - 5);
	frame_put_header(b, type, (uint32_t)n);
	memcpy(b + 5, p, n);
	tc_write(c, b, 5 + n);
}

/* The next frame other than KeepAlive; its payload (at most cap bytes) in p. */
static uint8_t tc_frame_read(struct tc *c, void *p, size_t cap, size_t *len)
{
	for (;;) {
		uint8_t h[5];
		tc_read(c, h, 5, "DERP frame header");
		uint32_t n = frame_get_be32(h + 1);
		assert_true(n <= cap);
		tc_read(c, p, n, "DERP frame");
		if (h[0] != FRAME_KEEP_ALIVE) {
			*len = n;
			return h[0];
		}
	}
}

/* Upgrade, ServerKey, ClientInfo, ServerInfo (PROTOCOL.md §3) as a fresh client. */
static void tc_derp_login(struct tc *c)
{
	static const char req[] = "GET /derp HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: DERP\r\n"
				  "Connection: Upgrade\r\n\r\n";
	static const char info[] = "{\"version\":2}";
	uint8_t b[1024], ci[32 + crypto_box_NONCEBYTES + crypto_box_MACBYTES + sizeof info];
	char head[1024];
	size_t n = 0;

	tc_write(c, req, sizeof req - 1);
	while (n < 4 || memcmp(head + n - 4, "\r\n\r\n", 4) != 0) {
		assert_true(n + 1 < sizeof head);
		tc_read(c, head + n++, 1, "upgrade response");
	}
	head[n] = '\0';
	assert_int_equal(strncmp(head, "HTTP/1.1 101 ", 13), 0);
	assert_int_equal(tc_frame_read(c, b, sizeof b, &n), FRAME_SERVER_KEY);
	assert_true(n >= DERP_MAGIC_LEN + 32);
	assert_memory_equal(b, DERP_MAGIC, DERP_MAGIC_LEN);
	memcpy(c->server, b + DERP_MAGIC_LEN, 32);
	crypto_box_keypair(c->pub, c->priv);
	memcpy(ci, c->pub, 32);
	randombytes_buf(ci + 32, crypto_box_NONCEBYTES);
	assert_int_equal(crypto_box_easy(ci + 32 + crypto_box_NONCEBYTES,
					 (const uint8_t *)info, sizeof info - 1, ci + 32, c->server,
					 c->priv), 0);
	tc_frame_write(c, FRAME_CLIENT_INFO, ci, sizeof ci - 1);
	assert_int_equal(tc_frame_read(c, b, sizeof b, &n), FRAME_SERVER_INFO);
}

/* Ping with fresh data; the matching Pong must be the next frame. */
static void tc_ping(struct tc *c)
{
	uint8_t ping[8], b[1024];
	size_t n;

	randombytes_buf(ping, sizeof ping);
	tc_frame_write(c, FRAME_PING, ping, sizeof ping);
	assert_int_equal(tc_frame_read(c, b, sizeof b, &n), FRAME_PONG);
	assert_int_equal(n, sizeof ping);
	assert_memory_equal(b, ping, sizeof ping);
}

/* Packets both ways between c and the library client d. */
static void tc_relay(struct tc *c, struct derp_client *d, int round)
{
	uint8_t out[32 + 100], b[1024];
	size_t n;

	memcpy(out, derp_client_public_key(d), 32);
	memset(out + 32, 'a' + round % 26, 100);
	tc_frame_write(c, FRAME_SEND_PACKET, out, sizeof out);
	harness_expect_packet(d, c->pub, out + 32, 100, T);

	memset(out + 32, 'A' + round % 26, 100);
	assert_int_equal(derp_client_send(d, c->pub, out + 32, 100), 0);
	assert_int_equal(tc_frame_read(c, b, sizeof b, &n), FRAME_RECV_PACKET);
	assert_int_equal(n, sizeof out);
	assert_memory_equal(b, derp_client_public_key(d), 32);
	assert_memory_equal(b + 32, out + 32, 100);
}

static struct derp_client *lib_client(void)
{
	struct derp_client_opts o = harness_opts();
	o.tls = 1;
	o.tls_insecure = 1;
	return harness_client(srv, &o);
}

/* ---- KeyUpdate --------------------------------------------------------------------- */

/* A DERP connection survives KeyUpdates: after each, a Ping is answered and packets go
 * both ways; a requested one is answered by derpd's own (wolfSSL marks it seen). */
static void test_key_update_derp(void **state)
{
	(void)state;
	struct derp_client *d = lib_client();
	struct tc c;

	tc_dial(&c, NULL);
	tc_derp_login(&c);
	tc_ping(&c);
	for (int i = 0; i < 6; i++) {
		tc_key_update(&c, i % 2 == 0);
		tc_ping(&c);
		tc_key_update_answered(&c);
		tc_relay(&c, d, i);
	}
	/* an update and frames in one flight: derpd reads them from one socket read */
	assert_int_equal(wolfSSL_update_keys(c.ssl), WOLFSSL_SUCCESS);
	tc_relay(&c, d, 99);
	tc_ping(&c);
	tc_key_update_answered(&c);
	tc_close(&c);
	derp_client_close(d);
}

/* The HTTP side through the TLS bridge: a request after a KeyUpdate on the same
 * keep-alive connection is answered, whether the update came before the first request
 * or between two, requested or not. */
static void test_key_update_http(void **state)
{
	(void)state;
	struct tc c;

	tc_dial(&c, NULL);
	tc_key_update(&c, 1); /* before the request head: derpd is still reading it */
	tc_generate_204(&c, "request after a KeyUpdate before the first request");
	tc_key_update_answered(&c);
	for (int i = 0; i < 4; i++) {
		tc_key_update(&c, i % 2);
		tc_generate_204(&c, "request after a KeyUpdate on a keep-alive connection");
		tc_key_update_answered(&c);
	}
	tc_close(&c);
}

/* ---- KeyUpdate while derpd's socket to the client is full ----------------------------- */

#define SMALL_RCVBUF 4096 /* the client's receive buffer: a small window */
#define FLOOD_LEN 1000    /* payload bytes of one flood packet */
#define FLOOD_N 200       /* packets per round of a flood */
#define FLOOD_MAX 12000   /* packets: beyond the largest send buffer (tcp_wmem) and more */
#define FLOOD_FRAME (5 + 32 + FLOOD_LEN)
#define VARZ_PIPELINE 16  /* /debug/varz answers asked for at once */
#define VARZ_MAX 1200     /* answers: as FLOOD_MAX */

/* derpd's unsent bytes on its end of c's connection (tx_queue in /proc/net/tcp, or tcp6
 * where a dual-stack listener shows a v4 peer), -1 if the socket is not found. */
static long server_txq(const struct tc *c)
{
	static const char *const files[] = { "/proc/net/tcp", "/proc/net/tcp6" };
	struct sockaddr_in me;
	socklen_t len = sizeof me;

	assert_int_equal(getsockname(c->fd, (struct sockaddr *)&me, &len), 0);
	for (int f = 0; f < 2; f++) {
		FILE *fp = fopen(files[f], "r");
		char line[512];
		if (!fp)
			continue;
		while (fgets(line, sizeof line, fp)) {
			unsigned lp, rp, st;
			unsigned long txq, rxq;
			if (sscanf(line, " %*d: %*[0-9A-Fa-f]:%x %*[0-9A-Fa-f]:%x %x %lx:%lx", &lp, &rp,
				   &st, &txq, &rxq) == 5 &&
			    lp == srv->port && rp == ntohs(me.sin_port)) {
				fclose(fp);
				return (long)txq;
			}
		}
		fclose(fp);
	}
	return -1;
}

/* Bytes waiting in our own receive queue. */
static long client_inq(const struct tc *c)
{
	int n = 0;

	assert_int_equal(ioctl(c->fd, FIONREAD, &n), 0);
	return n;
}

/* After a burst toward c: once derpd's end has settled (its unsent bytes the same over
 * three samples), is its socket full? Yes when both ends' kernel buffers hold clearly
 * less than was sent our way: derpd kept the rest because the socket took no more.
 * (The kernel grows derpd's send buffer as it goes: callers send in rounds until so.) */
static int socket_full(const struct tc *c, size_t sent)
{
	int64_t end = harness_now_ms() + 1000;
	long last = -1, txq = -1;
	int same = 0;

	while (same < 2 && harness_now_ms() < end) {
		poll(NULL, 0, 50);
		txq = server_txq(c);
		same = txq == last ? same + 1 : 0;
		last = txq;
	}
	return same >= 2 && txq > 0 && (size_t)(txq + client_inq(c)) + 8 * FLOOD_FRAME < sent;
}

static void flood_fill(uint8_t *p, uint32_t seq)
{
	frame_put_be32(p, seq);
	for (int i = 4; i < FLOOD_LEN; i++)
		p[i] = (uint8_t)(seq * 31u + (unsigned)i);
}

/* A flood packet from d, intact, and later than the last one seen (drops leave gaps). */
static void flood_check(const uint8_t *b, size_t n, struct derp_client *d, uint32_t *last)
{
	uint8_t want[FLOOD_LEN];

	assert_int_equal(n, 32 + FLOOD_LEN);
	assert_memory_equal(b, derp_client_public_key(d), 32);
	uint32_t seq = frame_get_be32(b + 32);
	if (seq <= *last)
		fail_msg("packet %u after %u: out of order or repeated", seq, *last);
	flood_fill(want, seq);
	if (memcmp(b + 32, want, FLOOD_LEN) != 0)
		fail_msg("packet %u corrupt", seq);
	*last = seq;
}

/* The sum of derp_packets_dropped over every reason and kind (/debug/varz over TLS). */
static double varz_dropped(void)
{
	static const char req[] = "GET /debug/varz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
				  "Connection: close\r\n\r\n";
	static const char series[] = "\nderp_packets_dropped{";
	static char body[1 << 18];
	struct tc v;
	size_t n = 0;
	double sum = 0;
	int found = 0;

	tc_dial(&v, NULL);
	tc_write(&v, req, sizeof req - 1);
	for (int r; (r = wolfSSL_read(v.ssl, body + n, (int)(sizeof body - 1 - n))) > 0;) {
		n += (size_t)r;
		assert_true(n < sizeof body - 1);
	}
	body[n] = '\0';
	tc_close(&v);
	for (char *l = strstr(body, series); l; l = strstr(l + 1, series)) {
		char *sp = strchr(l + 1, ' ');
		assert_non_null(sp);
		sum += strtod(sp + 1, NULL);
		found++;
	}
	assert_true(found > 0);
	return sum;
}

/* A client stops reading while another floods it until derpd's socket to it is full,
 * then sends a KeyUpdate asking for derpd's and a Ping. derpd's answer cannot be sent
 * at once; what it writes after must still be a well-formed stream: every record
 * decrypts, the packets that come are intact and in order (the rest counted as drops),
 * the Pong matches, derpd's KeyUpdate arrives, and the connection goes on. Twice. */
static void test_key_update_full_derp(void **state)
{
	(void)state;
	struct derp_client *d = lib_client();
	uint8_t p[FLOOD_LEN], b[2048], ping[8];
	uint32_t sent = 0, got = 0, last = 0;
	struct tc c;
	size_t n;

	tc_dial_buf(&c, NULL, SMALL_RCVBUF);
	tc_derp_login(&c);
	tc_ping(&c);
	double dropped0 = varz_dropped();
	for (int round = 0; round < 2; round++) {
		do {
			if (sent - got > FLOOD_MAX)
				fail_msg("derpd's socket did not fill: %ld bytes unsent, %u packets "
					 "sent our way", server_txq(&c), sent - got);
			for (int i = 0; i < FLOOD_N; i++) {
				flood_fill(p, ++sent);
				assert_int_equal(derp_client_send(d, c.pub, p, sizeof p), 0);
			}
		} while (!socket_full(&c, (size_t)(sent - got) * FLOOD_FRAME));
		assert_int_equal(wolfSSL_update_keys(c.ssl), WOLFSSL_SUCCESS);
		randombytes_buf(ping, sizeof ping);
		tc_frame_write(&c, FRAME_PING, ping, sizeof ping);
		poll(NULL, 0, 200); /* derpd reads both while its socket is still full */
		assert_true(server_txq(&c) > 0);
		uint8_t t;
		while ((t = tc_frame_read(&c, b, sizeof b, &n)) == FRAME_RECV_PACKET) {
			flood_check(b, n, d, &last);
			got++;
		}
		assert_int_equal(t, FRAME_PONG);
		assert_int_equal(n, sizeof ping);
		assert_memory_equal(b, ping, sizeof ping);
		/* The rest of the flood: what is not delivered was dropped, and counted. */
		int64_t end = harness_now_ms() + T;
		for (;;) {
			double dropped = varz_dropped() - dropped0;
			if (got + dropped == sent)
				break;
			if (got + dropped > sent || harness_now_ms() >= end)
				fail_msg("round %d: %u sent, %u delivered, %.0f dropped", round, sent,
					 got, dropped);
			assert_int_equal(tc_frame_read(&c, b, sizeof b, &n), FRAME_RECV_PACKET);
			flood_check(b, n, d, &last);
			got++;
		}
		tc_key_update_answered(&c);
		tc_ping(&c);
		tc_relay(&c, d, round);
	}
	tc_close(&c);
	derp_client_close(d);
}

/* One answer's head and body; its status must be want. Returns the body length. */
static size_t tc_http_answer(struct tc *c, int want, char *body, size_t cap, const char *what)
{
	char head[1024];
	size_t n = 0, len = 0;
	int status = 0;

	while (n < 4 || memcmp(head + n - 4, "\r\n\r\n", 4) != 0) {
		assert_true(n + 1 < sizeof head);
		tc_read(c, head + n++, 1, what);
	}
	head[n] = '\0';
	if (sscanf(head, "HTTP/1.1 %d ", &status) != 1 || status != want)
		fail_msg("%s: expected %d, got: %s", what, want, head);
	const char *cl = strcasestr(head, "\r\nContent-Length:");
	if (cl)
		len = strtoul(cl + 17, NULL, 10);
	else if (want != 204)
		fail_msg("%s: no Content-Length: %s", what, head);
	assert_true(len < cap);
	tc_read(c, body, len, what);
	body[len] = '\0';
	return len;
}

/* The HTTP side through the bridge: a client asks for many /debug/varz answers and
 * reads none until derpd's socket to it is full, then sends a KeyUpdate asking for
 * derpd's and one more request. Every answer must then arrive whole, and the
 * connection serve on. */
static void test_key_update_full_http(void **state)
{
	(void)state;
	static const char varz[] = "GET /debug/varz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
	static const char g204[] = "GET /generate_204 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
	static char req[VARZ_PIPELINE * sizeof varz], body[1 << 18];
	struct tc c;
	size_t one, n = 0;
	int asked = 0;

	tc_dial_buf(&c, NULL, SMALL_RCVBUF);
	tc_write(&c, varz, sizeof varz - 1);
	one = tc_http_answer(&c, 200, body, sizeof body, "first /debug/varz");
	assert_non_null(strstr(body, "derp_accepts"));
	for (int i = 0; i < VARZ_PIPELINE; i++, n += sizeof varz - 1)
		memcpy(req + n, varz, sizeof varz - 1);
	do {
		if (asked >= VARZ_MAX)
			fail_msg("derpd's socket did not fill: %ld bytes unsent, %d answers asked",
				 server_txq(&c), asked);
		tc_write(&c, req, n);
		asked += VARZ_PIPELINE;
	} while (!socket_full(&c, (size_t)asked * one));
	tc_key_update(&c, 1);
	tc_write(&c, g204, sizeof g204 - 1);
	poll(NULL, 0, 200);
	assert_true(server_txq(&c) > 0);
	for (int i = 0; i < asked; i++) {
		size_t len = tc_http_answer(&c, 200, body, sizeof body, "pipelined /debug/varz");
		/* sizes vary a little with the counters; the text must be whole */
		if (len + 512 < one || !strstr(body, "derp_accepts") || body[len - 1] != '\n')
			fail_msg("answer %d: %zu bytes, not a whole /debug/varz", i, len);
	}
	tc_http_answer(&c, 204, body, sizeof body, "request after the KeyUpdate");
	tc_key_update_answered(&c);
	tc_generate_204(&c, "request after that");
	tc_close(&c);
}

/* ---- resumption -------------------------------------------------------------------- */

/* A fresh session's ticket (TLS 1.3 sends it after the handshake: a request's answer
 * makes the client read it). */
static WOLFSSL_SESSION *ticket_session(void)
{
	struct tc c;

	tc_dial(&c, NULL);
	tc_generate_204(&c, "first connection");
	WOLFSSL_SESSION *s = wolfSSL_get1_session(c.ssl);
	assert_non_null(s);
	assert_int_equal(wolfSSL_SESSION_has_ticket(s), 1);
	tc_close(&c);
	return s;
}

/* Resuming with derpd's ticket works on whichever worker the connection lands, again
 * and again, and HTTP is served on the resumed connection. */
static void test_resume_http(void **state)
{
	(void)state;
	WOLFSSL_SESSION *s = ticket_session();

	for (int i = 0; i < RESUMES; i++) {
		struct tc c;
		tc_dial(&c, s);
		if (!wolfSSL_session_reused(c.ssl))
			fail_msg("resumption %d: derpd made a full handshake", i);
		tc_generate_204(&c, "request on a resumed connection");
		tc_close(&c);
	}
	wolfSSL_SESSION_free(s);
}

/* A resumed connection logs in to DERP and relays; a resumed one's own new ticket
 * resumes too. */
static void test_resume_derp(void **state)
{
	(void)state;
	WOLFSSL_SESSION *s = ticket_session();
	struct tc c;

	for (int i = 0; i < 2; i++) {
		struct derp_client *d = lib_client(); /* fresh: no PeerGone of the last one */
		tc_dial(&c, s);
		assert_true(wolfSSL_session_reused(c.ssl));
		tc_derp_login(&c);
		tc_ping(&c);
		tc_relay(&c, d, i);
		tc_key_update(&c, 1);
		tc_ping(&c);
		tc_key_update_answered(&c);
		wolfSSL_SESSION_free(s);
		assert_non_null(s = wolfSSL_get1_session(c.ssl));
		tc_close(&c);
		derp_client_close(d);
	}
	wolfSSL_SESSION_free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_key_update_derp),
		cmocka_unit_test(test_key_update_http),
		cmocka_unit_test(test_key_update_full_derp),
		cmocka_unit_test(test_key_update_full_http),
		cmocka_unit_test(test_resume_http),
		cmocka_unit_test(test_resume_derp),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
