/* TLS 1.3 after the handshake, on the real binary (issue 13, items 6 and 7), with
 * wolfSSL's own client API as the peer:
 *  - KeyUpdate, requested and not, on a DERP connection (Ping/Pong and packets relayed
 *    both ways afterwards, derpd's answering KeyUpdate seen) and on the HTTP side
 *    through the TLS bridge (the next request on the same keep-alive connection is
 *    answered), before the first request and between requests;
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

/* TLS 1.3 to srv offering ALPN http/1.1, resuming sess if given (no verification). */
static void tc_dial(struct tc *c, WOLFSSL_SESSION *sess)
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
		cmocka_unit_test(test_resume_http),
		cmocka_unit_test(test_resume_derp),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
