/* DERP client library over a socketpair: the test plays the server by writing bytes into
 * the other end. Encoding byte-exact (CONFORMANCE 41, 42, PROTOCOL.md §14), decoding
 * (36-40 and the other server frames), handshake checks (§12) and the advisory
 * ServerInfo rate limit (43, 44). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mesh/derp_client.h"
#include "server/key.h"

struct fake {
	int srv;                 /* the test's end */
	int cli;                 /* the client's end (owned by the client once opened) */
	uint8_t spriv[32], spub[32];
	uint8_t cpriv[32], cpub[32];
};

static int setup(void **state)
{
	struct fake *f = calloc(1, sizeof *f);
	int sv[2];

	assert_int_equal(key_init(), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	f->srv = sv[0];
	f->cli = sv[1];
	int big = 1 << 20;
	setsockopt(f->srv, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
	setsockopt(f->cli, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
	key_generate(f->spriv);
	key_public(f->spub, f->spriv);
	key_generate(f->cpriv);
	key_public(f->cpub, f->cpriv);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fake *f = *state;

	close(f->srv);
	free(f);
	return 0;
}

static void put(struct fake *f, const void *b, size_t n)
{
	assert_int_equal(write(f->srv, b, n), (ssize_t)n);
}

static void put_frame(struct fake *f, uint8_t type, const void *p, uint32_t n)
{
	uint8_t h[5];

	frame_put_header(h, type, n);
	put(f, h, 5);
	if (n)
		put(f, p, n);
}

static void put_server_key(struct fake *f)
{
	uint8_t b[45];

	frame_server_key(b, f->spub);
	put(f, b, sizeof b);
}

static void put_server_info(struct fake *f, const char *json)
{
	size_t n = strlen(json);
	uint8_t *p = malloc(24 + 16 + n);

	randombytes_buf(p, 24);
	assert_int_equal(crypto_box_easy(p + 24, (const uint8_t *)json, n, p, f->cpub, f->spriv), 0);
	put_frame(f, FRAME_SERVER_INFO, p, (uint32_t)(24 + 16 + n));
	free(p);
}

static const char resp101[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\n"
			      "Connection: Upgrade\r\nDerp-Version: 2\r\n\r\n";

/* Everything written to the test's end so far (the socket is drained). */
static size_t take(struct fake *f, uint8_t *buf, size_t cap)
{
	size_t n = 0;

	for (;;) {
		ssize_t r = recv(f->srv, buf + n, cap - n, MSG_DONTWAIT);
		if (r <= 0)
			break;
		n += (size_t)r;
	}
	return n;
}

static struct derp_client *classic(struct fake *f, const char *info_json)
{
	struct derp_client_opts o = { .private_key = f->cpriv, .timeout_ms = 1000 };

	put(f, resp101, sizeof resp101 - 1);
	put_server_key(f);
	put_server_info(f, info_json);
	struct derp_client *c = derp_client_open_fd(f->cli, "example:1", &o);
	assert_non_null(c);
	assert_int_equal(derp_client_send_info(c), 0);
	assert_int_equal(derp_client_finish(c), 0);
	return c;
}

/* Check one ClientInfo frame at p and return its plaintext (static buffer). */
static const char *open_info(struct fake *f, const uint8_t *p, size_t n)
{
	static char plain[512];
	uint8_t t;
	uint32_t l;

	assert_true(n >= 5 + 56 + 16);
	frame_get_header(p, &t, &l);
	assert_int_equal(t, FRAME_CLIENT_INFO);
	assert_int_equal(l + 5, n);
	assert_memory_equal(p + 5, f->cpub, 32);
	assert_true(l - 56 - 16 < sizeof plain);
	assert_int_equal(crypto_box_open_easy((uint8_t *)plain, p + 5 + 56, l - 56, p + 5 + 32,
					      f->cpub, f->spriv), 0);
	plain[l - 56 - 16] = '\0';
	return plain;
}

static void test_handshake_classic(void **state)
{
	struct fake *f = *state;
	struct derp_client *c = classic(f, "{\"version\":2}");
	uint8_t buf[4096];
	size_t n = take(f, buf, sizeof buf);

	buf[n] = 0;
	char *end = strstr((char *)buf, "\r\n\r\n");
	assert_non_null(end);
	*end = 0;
	assert_true(strncmp((char *)buf, "GET /derp HTTP/1.1\r\n", 20) == 0);
	assert_non_null(strstr((char *)buf, "\r\nHost: example:1"));
	assert_non_null(strstr((char *)buf, "\r\nConnection: Upgrade"));
	assert_non_null(strstr((char *)buf, "\r\nUpgrade: DERP"));
	assert_null(strstr((char *)buf, "Derp-Fast-Start"));
	/* §14.2: default ClientInfo is 110 bytes with this plaintext */
	uint8_t *fr = (uint8_t *)end + 4;
	size_t fl = n - (size_t)(fr - buf);
	assert_int_equal(fl, 110);
	assert_memory_equal(fr, "\x02\x00\x00\x00\x69", 5);
	assert_string_equal(open_info(f, fr, fl), "{\"version\":2,\"CanAckPings\":false}");
	assert_memory_equal(derp_client_server_key(c), f->spub, 32);
	assert_string_equal(derp_client_server_info(c), "{\"version\":2}");
	assert_non_null(strstr(derp_client_http_response(c), "101 Switching"));
	derp_client_close(c);
}

/* Fast start: nothing is written by open; request and ClientInfo go out in one send. */
static void test_handshake_fast_start(void **state)
{
	struct fake *f = *state;
	uint8_t mk[32], buf[4096];
	struct derp_client_opts o = { .private_key = f->cpriv, .server_key = f->spub,
				      .fast_start = 1, .mesh_key = mk, .is_prober = 1,
				      .ideal_node = "derp9b", .timeout_ms = 1000 };

	memset(mk, 0xab, sizeof mk);
	struct derp_client *c = derp_client_open_fd(f->cli, "h", &o);
	assert_non_null(c);
	assert_int_equal(recv(f->srv, buf, sizeof buf, MSG_DONTWAIT), -1);
	assert_int_equal(derp_client_send_info(c), 0);
	ssize_t n = recv(f->srv, buf, sizeof buf - 1, MSG_DONTWAIT); /* one read: one send */
	assert_true(n > 0);
	buf[n] = 0;
	char *end = strstr((char *)buf, "\r\n\r\n");
	assert_non_null(end);
	*end = 0;
	assert_non_null(strstr((char *)buf, "\r\nDerp-Fast-Start: 1\r\n"));
	assert_non_null(strstr((char *)buf, "\r\nIdeal-Node: derp9b\r\n"));
	uint8_t *fr = (uint8_t *)end + 4;
	char want[200], hex[65];
	key_to_hex(hex, mk);
	snprintf(want, sizeof want,
		 "{\"meshKey\":\"%s\",\"version\":2,\"CanAckPings\":false,\"IsProber\":true}", hex);
	assert_string_equal(open_info(f, fr, (size_t)(n - (fr - buf))), want);
	/* the server still sends ServerKey first, then ServerInfo */
	put_server_key(f);
	put_server_info(f, "{\"version\":2}");
	assert_int_equal(derp_client_finish(c), 0);
	derp_client_close(c);
}

/* mesh_key_text goes out as written (upper-case digits stay upper-case). */
static void test_mesh_key_text(void **state)
{
	struct fake *f = *state;
	uint8_t mk[32], buf[4096];
	const char *text = "ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB";
	struct derp_client_opts o = { .private_key = f->cpriv, .server_key = f->spub,
				      .fast_start = 1, .mesh_key = mk, .mesh_key_text = text,
				      .timeout_ms = 1000 };

	memset(mk, 0xab, sizeof mk);
	struct derp_client *c = derp_client_open_fd(f->cli, "h", &o);
	assert_non_null(c);
	assert_int_equal(derp_client_send_info(c), 0);
	ssize_t n = recv(f->srv, buf, sizeof buf - 1, MSG_DONTWAIT);
	assert_true(n > 0);
	buf[n] = 0;
	char *end = strstr((char *)buf, "\r\n\r\n");
	assert_non_null(end);
	uint8_t *fr = (uint8_t *)end + 4;
	char want[200];
	snprintf(want, sizeof want, "{\"meshKey\":\"%s\",\"version\":2,\"CanAckPings\":false}", text);
	assert_string_equal(open_info(f, fr, (size_t)(n - (fr - buf))), want);
	derp_client_close(c);
}

static void expect_open_fails(struct fake *f, const void *bytes, size_t n)
{
	struct derp_client_opts o = { .private_key = f->cpriv, .timeout_ms = 500 };

	put(f, bytes, n);
	assert_null(derp_client_open_fd(f->cli, "h", &o));
}

static void test_reject_not_101(void **state)
{
	static const char r[] = "HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n";
	struct fake *f = *state;

	expect_open_fails(f, r, sizeof r - 1);
	assert_non_null(strstr(derp_client_error(), "426"));
}

static void test_reject_bad_magic(void **state)
{
	struct fake *f = *state;
	uint8_t b[45 + sizeof resp101];

	memcpy(b, resp101, sizeof resp101 - 1);
	frame_server_key(b + sizeof resp101 - 1, f->spub);
	b[sizeof resp101 - 1 + 5] = 'X';
	expect_open_fails(f, b, sizeof resp101 - 1 + 45);
}

static void test_reject_long_server_key(void **state)
{
	struct fake *f = *state;
	uint8_t p[1025] = DERP_MAGIC;

	put(f, resp101, sizeof resp101 - 1);
	put_frame(f, FRAME_SERVER_KEY, p, sizeof p);
	expect_open_fails(f, "", 0);
}

/* A server greeting longer than 40 (up to 1024) is allowed (§12). */
static void test_accept_longer_server_key(void **state)
{
	struct fake *f = *state;
	uint8_t p[100] = DERP_MAGIC;
	struct derp_client_opts o = { .private_key = f->cpriv, .timeout_ms = 500 };

	memcpy(p + 8, f->spub, 32);
	put(f, resp101, sizeof resp101 - 1);
	put_frame(f, FRAME_SERVER_KEY, p, sizeof p);
	struct derp_client *c = derp_client_open_fd(f->cli, "h", &o);
	assert_non_null(c);
	assert_memory_equal(derp_client_server_key(c), f->spub, 32);
	derp_client_close(c);
}

static void test_reject_frame_before_server_info(void **state)
{
	struct fake *f = *state;
	struct derp_client_opts o = { .private_key = f->cpriv, .timeout_ms = 500 };

	put(f, resp101, sizeof resp101 - 1);
	put_server_key(f);
	put_frame(f, FRAME_KEEP_ALIVE, NULL, 0);
	put_server_info(f, "{}");
	struct derp_client *c = derp_client_open_fd(f->cli, "h", &o);
	assert_non_null(c);
	assert_int_equal(derp_client_send_info(c), 0);
	assert_int_equal(derp_client_finish(c), DERP_CLIENT_ERROR);
	derp_client_close(c);
}

static void test_reject_server_info_wrong_key(void **state)
{
	struct fake *f = *state;
	struct derp_client_opts o = { .private_key = f->cpriv, .timeout_ms = 500 };

	put(f, resp101, sizeof resp101 - 1);
	put_server_key(f);
	key_generate(f->spriv); /* seal with a different key than the greeting's */
	put_server_info(f, "{}");
	struct derp_client *c = derp_client_open_fd(f->cli, "h", &o);
	assert_non_null(c);
	assert_int_equal(derp_client_send_info(c), 0);
	assert_int_equal(derp_client_finish(c), DERP_CLIENT_ERROR);
	derp_client_close(c);
}

static struct derp_client *attached(struct fake *f)
{
	struct derp_client *c = derp_client_attach(f->cli, f->cpriv, f->spub);

	assert_non_null(c);
	derp_client_set_timeout(c, 500);
	return c;
}

/* Items 41, 42 and the other client frames of §14. */
static void test_encode(void **state)
{
	struct fake *f = *state;
	struct derp_client *c = attached(f);
	uint8_t k1[32], k2[32], buf[256];

	memset(k1, 0x11, 32);
	memset(k2, 0x22, 32);
	assert_int_equal(derp_client_ping(c, (const uint8_t *)"\x01\x02\x03\x04\x05\x06\x07\x08"), 0);
	assert_int_equal(take(f, buf, sizeof buf), 13);
	assert_memory_equal(buf, "\x12\x00\x00\x00\x08\x01\x02\x03\x04\x05\x06\x07\x08", 13);
	assert_int_equal(derp_client_pong(c, (const uint8_t *)"\x01\x02\x03\x04\x05\x06\x07\x08"), 0);
	assert_int_equal(take(f, buf, sizeof buf), 13);
	assert_memory_equal(buf, "\x13\x00\x00\x00\x08\x01\x02\x03\x04\x05\x06\x07\x08", 13);
	/* §14.1 SendPacket D=11.., "hello": 42 bytes */
	assert_int_equal(derp_client_send(c, k1, "hello", 5), 0);
	assert_int_equal(take(f, buf, sizeof buf), 42);
	assert_memory_equal(buf, "\x04\x00\x00\x00\x25", 5);
	assert_memory_equal(buf + 5, k1, 32);
	assert_memory_equal(buf + 37, "hello", 5);
	assert_int_equal(derp_client_note_preferred(c, 1), 0);
	assert_int_equal(take(f, buf, sizeof buf), 6);
	assert_memory_equal(buf, "\x07\x00\x00\x00\x01\x01", 6);
	assert_int_equal(derp_client_note_preferred(c, 0), 0);
	assert_int_equal(take(f, buf, sizeof buf), 6);
	assert_memory_equal(buf, "\x07\x00\x00\x00\x01\x00", 6);
	assert_int_equal(derp_client_watch_conns(c), 0);
	assert_int_equal(take(f, buf, sizeof buf), 5);
	assert_memory_equal(buf, "\x10\x00\x00\x00\x00", 5);
	assert_int_equal(derp_client_close_peer(c, k1), 0);
	assert_int_equal(take(f, buf, sizeof buf), 37);
	assert_memory_equal(buf, "\x11\x00\x00\x00\x20", 5);
	assert_memory_equal(buf + 5, k1, 32);
	/* §14.2 ForwardPacket(S=22.., D=11.., "hi") */
	assert_int_equal(derp_client_forward(c, k2, k1, "hi", 2), 0);
	assert_int_equal(take(f, buf, sizeof buf), 71);
	assert_memory_equal(buf, "\x0a\x00\x00\x00\x42", 5);
	assert_memory_equal(buf + 5, k2, 32);
	assert_memory_equal(buf + 37, k1, 32);
	assert_memory_equal(buf + 69, "hi", 2);
	assert_int_equal(derp_client_send(c, k1, NULL, 0), 0);
	assert_int_equal(take(f, buf, sizeof buf), 37);
	assert_memory_equal(buf, "\x04\x00\x00\x00\x20", 5);
	derp_client_close(c);
}

static void recv_ok(struct derp_client *c, struct derp_msg *m, enum derp_msg_kind kind)
{
	int r = derp_client_recv(c, m, 500);

	if (r)
		fail_msg("recv: %d %s", r, derp_client_error());
	assert_int_equal(m->kind, kind);
}

/* Items 36-40 and the frames a server sends. */
static void test_decode(void **state)
{
	struct fake *f = *state;
	struct derp_client *c = attached(f);
	struct derp_msg m;
	uint8_t k[32], p[64];

	memset(k, 0x22, 32);
	put(f, "\x12\x00\x00\x00\x08\x01\x02\x03\x04\x05\x06\x07\x08", 13);
	recv_ok(c, &m, DERP_MSG_PING);
	assert_memory_equal(m.ping8, "\x01\x02\x03\x04\x05\x06\x07\x08", 8);
	put(f, "\x13\x00\x00\x00\x08\x01\x02\x03\x04\x05\x06\x07\x08", 13);
	recv_ok(c, &m, DERP_MSG_PONG);
	assert_memory_equal(m.ping8, "\x01\x02\x03\x04\x05\x06\x07\x08", 8);
	put(f, "\x14\x00\x00\x00\x03\x42\x41\x44", 8);
	recv_ok(c, &m, DERP_MSG_HEALTH);
	assert_int_equal(m.len, 3);
	assert_memory_equal(m.data, "BAD", 3);
	put(f, "\x14\x00\x00\x00\x00", 5);
	recv_ok(c, &m, DERP_MSG_HEALTH);
	assert_int_equal(m.len, 0);
	put(f, "\x15\x00\x00\x00\x08\x00\x00\x00\x01\x00\x00\x00\x02", 13);
	recv_ok(c, &m, DERP_MSG_RESTARTING);
	assert_int_equal(m.reconnect_ms, 1);
	assert_int_equal(m.try_for_ms, 2);
	put(f, "\x06\x00\x00\x00\x00", 5);
	recv_ok(c, &m, DERP_MSG_KEEP_ALIVE);
	/* §14.1 RecvPacket from 22.. "hello" */
	memcpy(p, k, 32);
	memcpy(p + 32, "hello", 5);
	put_frame(f, FRAME_RECV_PACKET, p, 37);
	recv_ok(c, &m, DERP_MSG_PACKET);
	assert_memory_equal(m.key, k, 32);
	assert_int_equal(m.len, 5);
	assert_memory_equal(m.data, "hello", 5);
	/* PeerGone with and without the reason byte */
	p[32] = PEER_GONE_NOT_HERE;
	put_frame(f, FRAME_PEER_GONE, p, 33);
	recv_ok(c, &m, DERP_MSG_PEER_GONE);
	assert_memory_equal(m.key, k, 32);
	assert_int_equal(m.reason, PEER_GONE_NOT_HERE);
	put_frame(f, FRAME_PEER_GONE, p, 32);
	recv_ok(c, &m, DERP_MSG_PEER_GONE);
	assert_int_equal(m.reason, PEER_GONE_DISCONNECTED);
	/* PeerPresent in its three lengths */
	uint8_t pp[56];
	static const uint8_t ip[16] = { [10] = 0xff, [11] = 0xff, 1, 2, 3, 4 };
	frame_peer_present(pp, k, ip, 5678, PEER_PRESENT_REGULAR);
	put(f, pp, 56);
	recv_ok(c, &m, DERP_MSG_PEER_PRESENT);
	assert_true(m.has_addr && m.has_flags);
	assert_memory_equal(m.ip, ip, 16);
	assert_int_equal(m.port, 5678);
	assert_int_equal(m.flags, PEER_PRESENT_REGULAR);
	put_frame(f, FRAME_PEER_PRESENT, pp + 5, 50);
	recv_ok(c, &m, DERP_MSG_PEER_PRESENT);
	assert_true(m.has_addr && !m.has_flags);
	put_frame(f, FRAME_PEER_PRESENT, pp + 5, 32);
	recv_ok(c, &m, DERP_MSG_PEER_PRESENT);
	assert_false(m.has_addr);
	/* short forms and unknown types */
	put_frame(f, FRAME_RECV_PACKET, p, 31);
	recv_ok(c, &m, DERP_MSG_SHORT);
	put_frame(f, FRAME_PING, p, 7);
	recv_ok(c, &m, DERP_MSG_SHORT);
	put_frame(f, 0x42, p, 3);
	recv_ok(c, &m, DERP_MSG_UNKNOWN);
	assert_int_equal(m.frame_type, 0x42);
	assert_int_equal(m.len, 3);
	/* a late ServerKey is just reported */
	put_server_key(f);
	recv_ok(c, &m, DERP_MSG_SERVER_KEY);
	assert_memory_equal(m.key, f->spub, 32);
	derp_client_close(c);
}

/* A frame split across writes is reassembled; a timeout mid-frame loses nothing. */
static void test_partial_frame(void **state)
{
	struct fake *f = *state;
	struct derp_client *c = attached(f);
	struct derp_msg m;
	static uint8_t big[5 + 32 + 65536];

	for (size_t i = 0; i < sizeof big; i++)
		big[i] = (uint8_t)(i * 7);
	frame_put_header(big, FRAME_RECV_PACKET, 32 + 65536);
	assert_int_equal(derp_client_recv(c, &m, 0), DERP_CLIENT_TIMEOUT);
	put(f, big, 3);
	assert_int_equal(derp_client_recv(c, &m, 20), DERP_CLIENT_TIMEOUT);
	put(f, big + 3, 1000);
	assert_int_equal(derp_client_recv(c, &m, 0), DERP_CLIENT_TIMEOUT);
	put(f, big + 1003, sizeof big - 1003);
	recv_ok(c, &m, DERP_MSG_PACKET);
	assert_int_equal(m.len, 65536);
	assert_memory_equal(m.data, big + 37, 65536);
	assert_int_equal(derp_client_buffered(c), 0);
	derp_client_close(c);
}

/* Frames over 1 MiB kill the connection, like a Go client (§12); EOF is CLOSED. */
static void test_too_large_and_eof(void **state)
{
	struct fake *f = *state;
	struct derp_client *c = attached(f);
	struct derp_msg m;

	put(f, "\x42\x00\x10\x00\x01", 5);
	assert_int_equal(derp_client_recv(c, &m, 100), DERP_CLIENT_ERROR);
	derp_client_close(c);

	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	c = derp_client_attach(sv[1], f->cpriv, f->spub);
	assert_int_equal(write(sv[0], "\x06\x00\x00\x00\x00\x04\x00", 7), 7);
	close(sv[0]);
	recv_ok(c, &m, DERP_MSG_KEEP_ALIVE);
	assert_int_equal(derp_client_recv(c, &m, 100), DERP_CLIENT_CLOSED);
	derp_client_close(c);
}

/* Count SendPacket frames the fake server got (drains as it goes). */
static int sends_written(struct fake *f, struct derp_client *c, int n, size_t plen)
{
	static uint8_t pkt[1000], buf[1 << 16];
	uint8_t dst[32] = { 1 };
	size_t got = 0;

	for (int i = 0; i < n; i++) {
		assert_int_equal(derp_client_send(c, dst, pkt, plen), 0);
		got += take(f, buf, sizeof buf);
	}
	return (int)(got / (5 + 32 + plen));
}

/* Item 43: no token-bucket fields -> every send is written. */
static void test_no_rate_limit(void **state)
{
	struct fake *f = *state;
	struct derp_client *c = classic(f, "{\"version\":2}");

	take(f, (uint8_t[4096]){ 0 }, 4096);
	assert_int_equal(sends_written(f, c, 1000, 1000), 1000);
	derp_client_close(c);
}

/* Item 44: 1 B/s, burst of two frames -> some but not all written, no error. */
static void test_rate_limit(void **state)
{
	struct fake *f = *state;
	char json[128];

	snprintf(json, sizeof json,
		 "{\"version\":2,\"TokenBucketBytesPerSecond\":1,\"TokenBucketBytesBurst\":%d}",
		 2 * (5 + 32 + 1000));
	struct derp_client *c = classic(f, json);
	take(f, (uint8_t[4096]){ 0 }, 4096);
	int n = sends_written(f, c, 1000, 1000);
	assert_true(n >= 2);
	assert_true(n < 1000);
	derp_client_close(c);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_handshake_classic),
		T(test_handshake_fast_start),
		T(test_mesh_key_text),
		T(test_reject_not_101),
		T(test_reject_bad_magic),
		T(test_reject_long_server_key),
		T(test_accept_longer_server_key),
		T(test_reject_frame_before_server_info),
		T(test_reject_server_info_wrong_key),
		T(test_encode),
		T(test_decode),
		T(test_partial_frame),
		T(test_too_large_and_eof),
		T(test_no_rate_limit),
		T(test_rate_limit),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
