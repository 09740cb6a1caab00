/* HTTP upgrade and DERP handshake against the real derpd (PROTOCOL.md §3, §6;
 * CONFORMANCE 7, 9, 12, 125, 126). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/key.h"
#include "test/e2e/harness.h"

#define PUB(c) derp_client_public_key(c)

/* §3.2 step 5: the exact 101 response. */
static void test_101_exact(void **state)
{
	struct harness_server *s = *state;
	struct derp_client_opts o = harness_opts();
	struct derp_client *c = derp_client_open("127.0.0.1", s->port, &o);
	char hex[65], want[512];

	assert_non_null(c);
	key_to_hex(hex, s->pub);
	snprintf(want, sizeof want,
		 "HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n"
		 "Derp-Version: 2\r\nDerp-Public-Key: %s\r\n\r\n", hex);
	assert_string_equal(derp_client_http_response(c), want);
	assert_int_equal(derp_client_send_info(c), 0);
	assert_int_equal(derp_client_finish(c), 0);
	derp_client_close(c);
}

/* SERVER.md §3: the -c file is derper's {"PrivateKey": "privkey:<hex>"} and its key is
 * the one the server speaks with. */
static void test_key_file(void **state)
{
	struct harness_server *s = *state;
	json_error_t je;
	json_t *j = json_load_file(s->key_path, 0, &je);
	uint8_t priv[32], pub[32];

	if (!j)
		fail_msg("key file %s: %s", s->key_path, je.text);
	const char *pk = json_string_value(json_object_get(j, "PrivateKey"));
	assert_non_null(pk);
	assert_int_equal(key_parse_typed(priv, "privkey:", pk), 0);
	key_public(pub, priv);
	assert_memory_equal(pub, s->pub, 32);
	json_decref(j);
}

/* ServerKey frame bytes (§14.2). */
static void expect_server_key(int fd, const uint8_t pub[32])
{
	uint8_t b[45];

	assert_int_equal(harness_read_exact(fd, b, 45, 5000), 45);
	assert_memory_equal(b, "\x01\x00\x00\x00\x28" DERP_MAGIC, 13);
	assert_memory_equal(b + 13, pub, 32);
}

/* Request + ClientInfo in one send; returns the client private key in priv. */
static int raw_pipelined(struct harness_server *s, int fast, uint8_t priv[32])
{
	char req[256];
	uint8_t buf[1024];
	static const char json[] = "{\"version\":2,\"CanAckPings\":false}";
	int fd = harness_tcp(s);

	int n = snprintf(req, sizeof req, "GET /derp HTTP/1.1\r\nHost: 127.0.0.1\r\n"
			 "Connection: Upgrade\r\n%sUpgrade: DERP\r\n\r\n",
			 fast ? "Derp-Fast-Start: 1\r\n" : "");
	memcpy(buf, req, (size_t)n);
	key_generate(priv);
	size_t fl = derp_client_build_info(buf + n, sizeof buf - (size_t)n, priv, s->pub,
					   json, sizeof json - 1);
	assert_true(fl > 0);
	assert_int_equal(send(fd, buf, (size_t)n + fl, MSG_NOSIGNAL), (ssize_t)(n + fl));
	return fd;
}

/* §3.3: fast start, request and ClientInfo in one write: no HTTP response at all, the
 * first bytes are the ServerKey frame, then ServerInfo. */
static void test_fast_start_raw(void **state)
{
	struct harness_server *s = *state;
	uint8_t priv[32];
	int fd = raw_pipelined(s, 1, priv);

	expect_server_key(fd, s->pub);
	/* §14.2: ServerInfo is 03 00 00 00 35 ‖ nonce ‖ box of {"version":2}, 58 bytes */
	uint8_t si[58], plain[13];
	assert_int_equal(harness_read_exact(fd, si, sizeof si, 5000), sizeof si);
	assert_memory_equal(si, "\x03\x00\x00\x00\x35", 5);
	assert_int_equal(crypto_box_open_easy(plain, si + 5 + 24, sizeof si - 5 - 24, si + 5,
					      s->pub, priv), 0);
	assert_memory_equal(plain, "{\"version\":2}", 13);
	struct derp_client *c = derp_client_attach(fd, priv, s->pub);
	struct derp_client *other = harness_client(s, NULL);
	harness_relay_check(c, other);
	derp_client_close(other);
	derp_client_close(c);
}

/* The same through the client library (which checks ServerKey then ServerInfo). */
static void test_fast_start_client(void **state)
{
	struct harness_server *s = *state;
	struct derp_client_opts o = harness_opts();

	o.fast_start = 1;
	o.server_key = s->pub;
	struct derp_client *a = harness_client(s, &o), *b = harness_client(s, &o);
	assert_string_equal(derp_client_http_response(a), "");
	harness_relay_check(a, b);
	derp_client_close(a);
	derp_client_close(b);
}

/* §3.2 step 4: a classic client that pipelines ClientInfo behind its request still
 * gets 101, ServerKey, ServerInfo: bytes past the header belong to DERP. */
static void test_classic_pipelined(void **state)
{
	struct harness_server *s = *state;
	uint8_t priv[32];
	char head[1024];
	struct derp_msg m;
	int fd = raw_pipelined(s, 0, priv);

	assert_true(harness_read_head(fd, head, sizeof head, 5000) > 0);
	assert_true(strncmp(head, "HTTP/1.1 101 ", 13) == 0);
	expect_server_key(fd, s->pub);
	struct derp_client *c = derp_client_attach(fd, priv, s->pub);
	assert_int_equal(derp_client_recv(c, &m, 5000), 0);
	assert_int_equal(m.kind, DERP_MSG_SERVER_INFO);
	harness_ping(c, 5000);
	derp_client_close(c);
}

/* The request head arriving one byte at a time is reassembled. */
static void test_request_byte_by_byte(void **state)
{
	struct harness_server *s = *state;
	static const char req[] = "GET /derp HTTP/1.1\r\nHost: 127.0.0.1\r\n"
				  "Connection: Upgrade\r\nUpgrade: DERP\r\n\r\n";
	char head[1024];
	int fd = harness_tcp(s);

	for (size_t i = 0; i < sizeof req - 1; i++) {
		assert_int_equal(send(fd, req + i, 1, MSG_NOSIGNAL), 1);
		if (i % 7 == 0)
			usleep(1000);
	}
	assert_true(harness_read_head(fd, head, sizeof head, 5000) > 0);
	assert_true(strncmp(head, "HTTP/1.1 101 ", 13) == 0);
	expect_server_key(fd, s->pub);
	close(fd);
}

/* Close c, which has sent to peer: peer hears PeerGone(c, Disconnected) (§7.6). */
static void close_seen(struct derp_client *c, struct derp_client *peer)
{
	uint8_t k[32];
	struct derp_msg m;

	memcpy(k, PUB(c), 32);
	derp_client_close(c);
	harness_recv(peer, &m, 5000);
	assert_int_equal(m.kind, DERP_MSG_PEER_GONE);
	assert_memory_equal(m.key, k, 32);
	assert_int_equal(m.reason, PEER_GONE_DISCONNECTED);
}

/* §3.2 step 3: the Upgrade value is compared lower-cased; "websocket" without the derp
 * subprotocol is plain DERP too. */
static void test_upgrade_any_case(void **state)
{
	struct harness_server *s = *state;
	static const char *const values[] = { "DERP", "derp", "DeRp", "websocket", "WebSocket" };
	struct derp_client *peer = harness_client(s, NULL);

	for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
		struct derp_client_opts o = harness_opts();
		o.upgrade = values[i];
		struct derp_client *c = derp_client_connect("127.0.0.1", s->port, &o);
		if (!c)
			fail_msg("Upgrade: %s refused: %s", values[i], derp_client_error());
		harness_relay_check(c, peer);
		close_seen(c, peer);
	}
	derp_client_close(peer);
}

static void expect_426(struct harness_server *s, const char *req)
{
	static char resp[8192];

	assert_int_equal(harness_http(s, req, resp, sizeof resp), 426);
	assert_non_null(strcasestr(resp, "\r\nContent-Type: text/plain; charset=utf-8\r\n"));
	assert_non_null(strcasestr(resp, "\r\nX-Content-Type-Options: nosniff\r\n"));
	assert_string_equal(harness_http_body(resp), "DERP requires connection upgrade\n");
}

/* 125 (the part that is stable): /derp without a DERP Upgrade -> 426. */
static void test_no_upgrade_426(void **state)
{
	struct harness_server *s = *state;

	expect_426(s, "GET /derp HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
	expect_426(s, "GET /derp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
		   "Upgrade: h2c\r\n\r\n");
	expect_426(s, "GET /derp HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: derpx\r\n\r\n");
	/* and the DERP port still works */
	struct derp_client *c = harness_client(s, NULL);
	harness_ping(c, 5000);
	derp_client_close(c);
}

/* A path other than /derp is served by the HTTP side: Go's ServeMux sends every
 * unmatched path to the home page (SERVER.md §6), so 200 with HTML. */
static void test_other_path(void **state)
{
	struct harness_server *s = *state;
	static char resp[65536];

	int st = harness_http(s, "GET /no-such-page HTTP/1.1\r\nHost: 127.0.0.1\r\n"
			      "Connection: close\r\n\r\n", resp, sizeof resp);
	assert_int_equal(st, 200);
	assert_non_null(strstr(resp, "text/html"));
}

/* §3.4: an Ideal-Node header does not change the handshake. */
static void test_ideal_node(void **state)
{
	struct harness_server *s = *state;
	struct derp_client_opts o = harness_opts();

	o.ideal_node = "derp1b";
	struct derp_client *a = harness_client(s, &o), *b = harness_client(s, NULL);
	harness_relay_check(a, b);
	assert_true(harness_wait_metric(s, "derp_current_notideal_connections", 1, 5000) == 1);
	derp_client_close(a);
	assert_true(harness_wait_metric(s, "derp_current_notideal_connections", 0, 5000) == 0);
	derp_client_close(b);
}

/* §6.3, CONFORMANCE 7, 9: ClientInfo JSON variants that must be accepted. */
static const char *const good_json[] = {
	"null",
	"{}",
	"{\"VERSION\":2,\"canackpings\":true,\"ISPROBER\":true,\"appname\":\"x\"}",
	"{\"Version\":5,\"CanAckPings\":false}",
	"{\"version\":2,\"foo\":{\"bar\":[1,2,null]},\"baz\":\"q\"}",
	" \n\t{\"version\":2} \r\n",
	/* null for a plain field is a no-op in Go (not so for meshKey: see test_malformed) */
	"{\"version\":null,\"CanAckPings\":null,\"IsProber\":null,\"AppName\":null}",
	"{\"version\":-1,\"version\":2,\"AppName\":\"caf\\u00e9 \\\"x\\\"\"}",
	/* a well-formed mesh key the server does not have: accepted, just not a mesh peer */
	"{\"version\":2,\"MeshKey\":\"6d529e9d4ef632d22d4a4214cb49da8f1ba1b72697061fb24e312984c35ec8d8\"}",
};

static void test_client_info_accepted(void **state)
{
	struct harness_server *s = *state;
	struct derp_client *peer = harness_client(s, NULL);

	for (size_t i = 0; i < sizeof good_json / sizeof good_json[0]; i++) {
		struct derp_client_opts o = harness_opts();
		o.info_json = good_json[i];
		struct derp_client *c = derp_client_connect("127.0.0.1", s->port, &o);
		if (!c)
			fail_msg("ClientInfo %s refused: %s", good_json[i], derp_client_error());
		harness_relay_check(c, peer);
		close_seen(c, peer);
	}
	derp_client_close(peer);
}

/* §6.5: ServerInfo is the first frame after ServerKey even while packets for the key
 * are streaming in during its handshake (fresh key, then a duplicate of a live key). */
static void test_server_info_first_under_load(void **state)
{
	struct harness_server *s = *state;
	struct derp_client *spam = harness_client(s, NULL);
	uint8_t priv[32], pub[32], pkt[200];
	struct derp_client_opts o = harness_opts();

	key_generate(priv);
	key_public(pub, priv);
	o.private_key = priv;
	memset(pkt, 0x77, sizeof pkt);
	struct derp_client *keep = NULL;
	for (int round = 0; round < 40; round++) {
		o.fast_start = round % 2;
		o.server_key = o.fast_start ? s->pub : NULL;
		if (round == 20) /* second half: a live duplicate holds the key meanwhile */
			keep = harness_client(s, &o);
		struct derp_client *c = derp_client_open("127.0.0.1", s->port, &o);
		assert_non_null(c);
		for (int i = 0; i < 20; i++)
			assert_int_equal(derp_client_send(spam, pub, pkt, sizeof pkt), 0);
		assert_int_equal(derp_client_send_info(c), 0);
		for (int i = 0; i < 100; i++)
			assert_int_equal(derp_client_send(spam, pub, pkt, sizeof pkt), 0);
		if (derp_client_finish(c) != 0)
			fail_msg("round %d: %s", round, derp_client_error());
		harness_ping(spam, 5000);
		derp_client_close(c);
	}
	/* drain keep: only packets (and a pong) may be there */
	struct derp_msg m;
	while (derp_client_recv(keep, &m, 200) == 0)
		assert_true(m.kind == DERP_MSG_PACKET || m.kind == DERP_MSG_KEEP_ALIVE ||
			    m.kind == DERP_MSG_PEER_GONE);
	derp_client_close(keep);
	derp_client_close(spam);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, harness_setup, harness_teardown)
	const struct CMUnitTest tests[] = {
		T(test_101_exact),
		T(test_key_file),
		T(test_fast_start_raw),
		T(test_fast_start_client),
		T(test_classic_pipelined),
		T(test_request_byte_by_byte),
		T(test_upgrade_any_case),
		T(test_no_upgrade_426),
		T(test_other_path),
		T(test_ideal_node),
		T(test_client_info_accepted),
		T(test_server_info_first_under_load),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
