/* Relaying among clients of one plain-HTTP derpd (CONFORMANCE 12-25, 35, 126, 127;
 * PROTOCOL.md §7). Each test gets a fresh server. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test/e2e/harness.h"

#define PUB(c) derp_client_public_key(c)

static void connect3(struct harness_server *s, struct derp_client *c[3])
{
	for (int i = 0; i < 3; i++)
		c[i] = harness_client(s, NULL);
}

static void close3(struct derp_client *c[3])
{
	for (int i = 0; i < 3; i++)
		derp_client_close(c[i]);
}

/* 62-byte disco-looking packet addressed to key (§14.3). */
static void disco_packet(uint8_t out[62], const uint8_t key[32])
{
	memcpy(out, DISCO_MAGIC, DISCO_MAGIC_LEN);
	memcpy(out + 6, key, 32);
	memset(out + 38, 0, 24);
}

/* 12: the first message after the handshake is ServerInfo (the client library refuses
 * anything else), it opens with the server key, and it is {"version":2}. */
static void test_server_info_first(void **state)
{
	struct harness_server *s = *state;
	struct derp_client *c[3];

	connect3(s, c);
	for (int i = 0; i < 3; i++) {
		json_t *j = json_loads(derp_client_server_info(c[i]), 0, NULL);
		assert_non_null(j);
		assert_true(json_is_object(j));
		assert_int_equal(json_integer_value(json_object_get(j, "version")), 2);
		json_decref(j);
		assert_memory_equal(derp_client_server_key(c[i]), s->pub, 32);
	}
	close3(c);
}

/* 13, 14, 126: packets reach exactly their destination with the sender as source. */
static void test_send_recv(void **state)
{
	struct harness_server *s = *state;
	struct derp_client *c[3];

	connect3(s, c);
	assert_int_equal(derp_client_send(c[0], PUB(c[1]), "hello 0->1\n", 11), 0);
	harness_expect_packet(c[1], PUB(c[0]), "hello 0->1\n", 11, 5000);
	assert_int_equal(derp_client_send(c[1], PUB(c[2]), "hello 1->2\n", 11), 0);
	harness_expect_packet(c[2], PUB(c[1]), "hello 1->2\n", 11, 5000);
	for (int i = 0; i < 3; i++)
		harness_ping(c[i], 5000); /* nothing else arrived before the pong */
	harness_expect_nothing(c[0], 100);
	close3(c);
}

/* A client may send to itself. */
static void test_send_to_self(void **state)
{
	struct harness_server *s = *state;
	struct derp_client *c = harness_client(s, NULL);

	assert_int_equal(derp_client_send(c, PUB(c), "me", 2), 0);
	harness_expect_packet(c, PUB(c), "me", 2, 5000);
	derp_client_close(c);
}

/* 15: a non-disco packet to an unknown key produces no PeerGone. */
static void test_unknown_dest_not_disco(void **state)
{
	struct harness_server *s = *state;
	struct derp_client *c = harness_client(s, NULL);
	uint8_t k[32], pkt[100];

	randombytes_buf(k, 32);
	memset(pkt, 0x42, sizeof pkt);
	assert_int_equal(derp_client_send(c, k, pkt, sizeof pkt), 0);
	assert_int_equal(derp_client_send(c, k, pkt, 61), 0); /* one byte short of disco */
	harness_ping(c, 5000);
	harness_expect_nothing(c, 300);
	derp_client_close(c);
}

/* 16, 17: a disco packet to an unknown key -> PeerGone(key, NotHere); 6 of them in a
 * burst -> exactly 3 (1/s, burst 3). */
static void test_disco_not_here_rate_limit(void **state)
{
	struct harness_server *s = *state;
	struct derp_client *c = harness_client(s, NULL);
	uint8_t k[32], pkt[62];
	struct derp_msg m;
	int gone = 0;

	randombytes_buf(k, 32);
	disco_packet(pkt, k);
	assert_int_equal(derp_client_send(c, k, pkt, sizeof pkt), 0);
	harness_recv(c, &m, 5000);
	assert_int_equal(m.kind, DERP_MSG_PEER_GONE);
	assert_memory_equal(m.key, k, 32);
	assert_int_equal(m.reason, PEER_GONE_NOT_HERE);
	assert_int_equal(m.frame_len, 33);
	gone = 1;
	for (int i = 0; i < 5; i++)
		assert_int_equal(derp_client_send(c, k, pkt, sizeof pkt), 0);
	uint8_t ping[8] = { 9, 9, 9, 9, 9, 9, 9, 9 };
	assert_int_equal(derp_client_ping(c, ping), 0);
	/* the pong proves all 5 were processed; PeerGones may come on either side of it,
	 * so keep counting for a while after it */
	int got_pong = 0;
	int64_t quiet_until = harness_now_ms() + 5000;
	while (harness_now_ms() < quiet_until) {
		int r = derp_client_recv(c, &m, (int)(quiet_until - harness_now_ms()));
		if (r == DERP_CLIENT_TIMEOUT)
			break;
		assert_int_equal(r, 0);
		if (m.kind == DERP_MSG_PONG) {
			got_pong = 1;
			quiet_until = harness_now_ms() + 300;
		} else if (m.kind == DERP_MSG_PEER_GONE) {
			assert_memory_equal(m.key, k, 32);
			assert_int_equal(m.reason, PEER_GONE_NOT_HERE);
			gone++;
		} else if (m.kind != DERP_MSG_KEEP_ALIVE) {
			fail_msg("unexpected message kind %d", m.kind);
		}
	}
	assert_true(got_pong);
	assert_int_equal(gone, 3);
	derp_client_close(c);
}

/* Send disco probes to key until the server says NotHere: proof that key is no longer
 * registered. Any other message (but KeepAlive) fails the test. */
static void wait_not_here(struct derp_client *c, const uint8_t key[32])
{
	uint8_t pkt[62];
	struct derp_msg m;
	int64_t end = harness_now_ms() + 5000;

	disco_packet(pkt, key);
	while (harness_now_ms() < end) {
		assert_int_equal(derp_client_send(c, key, pkt, sizeof pkt), 0);
		int r = derp_client_recv(c, &m, 300);
		while (r == 0) {
			if (m.kind == DERP_MSG_PEER_GONE && m.reason == PEER_GONE_NOT_HERE &&
			    memcmp(m.key, key, 32) == 0)
				return;
			if (m.kind != DERP_MSG_KEEP_ALIVE)
				fail_msg("unexpected message kind %d while waiting", m.kind);
			r = derp_client_recv(c, &m, 300);
		}
		assert_int_equal(r, DERP_CLIENT_TIMEOUT);
	}
	fail_msg("key still registered after 5 s");
}

/* 22, 23: when client1 (who sent to client2) leaves, client2 alone gets
 * PeerGone(client1, Disconnected); when client2 (who sent to nobody) leaves, nobody
 * hears about it. */
static void test_peer_gone_disconnected(void **state)
{
	struct harness_server *s = *state;
	struct derp_client *c[3];
	struct derp_msg m;
	uint8_t k1[32], k2[32];

	connect3(s, c);
	memcpy(k1, PUB(c[1]), 32);
	memcpy(k2, PUB(c[2]), 32);
	assert_int_equal(derp_client_send(c[0], k1, "a", 1), 0);
	harness_expect_packet(c[1], PUB(c[0]), "a", 1, 5000);
	assert_int_equal(derp_client_send(c[1], k2, "b", 1), 0);
	harness_expect_packet(c[2], k1, "b", 1, 5000);

	derp_client_close(c[1]);
	c[1] = NULL;
	harness_recv(c[2], &m, 5000);
	assert_int_equal(m.kind, DERP_MSG_PEER_GONE);
	assert_memory_equal(m.key, k1, 32);
	assert_int_equal(m.reason, PEER_GONE_DISCONNECTED);
	assert_int_equal(m.frame_len, 33);
	wait_not_here(c[0], k1); /* c0 never received from c1: no PeerGone for it */
	harness_ping(c[2], 5000);      /* exactly one PeerGone for c2 */

	derp_client_close(c[2]);
	c[2] = NULL;
	wait_not_here(c[0], k2);
	harness_ping(c[0], 5000);
	harness_expect_nothing(c[0], 200);
	derp_client_close(c[0]);
}

/* 18-21, 23 via /debug/varz: the home-connection gauge follows NotePreferred changes,
 * never drifts, and a preferred connection leaving decrements it. */
static void test_home_gauges(void **state)
{
	struct harness_server *s = *state;
	struct derp_client *c[3];
	const char *conns = "derp_current_connections", *home = "derp_current_home_connections";

	connect3(s, c);
	assert_true(harness_wait_metric(s, conns, 3, 5000) == 3);
	assert_true(harness_metric(s, home) == 0);
	/* a ping round trip means the server has processed the NotePreferred before it */
	assert_int_equal(derp_client_note_preferred(c[0], 1), 0);
	harness_ping(c[0], 5000);
	assert_true(harness_wait_metric(s, home, 1, 5000) == 1);
	assert_int_equal(derp_client_note_preferred(c[0], 1), 0);
	harness_ping(c[0], 5000);
	assert_true(harness_metric(s, home) == 1);
	assert_int_equal(derp_client_note_preferred(c[0], 0), 0);
	harness_ping(c[0], 5000);
	assert_true(harness_wait_metric(s, home, 0, 5000) == 0);
	assert_int_equal(derp_client_note_preferred(c[0], 0), 0);
	harness_ping(c[0], 5000);
	assert_true(harness_metric(s, home) == 0);

	assert_int_equal(derp_client_note_preferred(c[1], 1), 0);
	harness_ping(c[1], 5000);
	assert_true(harness_wait_metric(s, home, 1, 5000) == 1);
	derp_client_close(c[1]);
	c[1] = NULL;
	assert_true(harness_wait_metric(s, conns, 2, 5000) == 2);
	assert_true(harness_wait_metric(s, home, 0, 5000) == 0);

	assert_int_equal(derp_client_note_preferred(c[2], 1), 0);
	harness_ping(c[2], 5000);
	assert_true(harness_wait_metric(s, home, 1, 5000) == 1);
	assert_int_equal(derp_client_note_preferred(c[2], 0), 0);
	harness_ping(c[2], 5000);
	assert_true(harness_wait_metric(s, home, 0, 5000) == 0);
	derp_client_close(c[2]);
	c[2] = NULL;
	assert_true(harness_wait_metric(s, conns, 1, 5000) == 1);
	assert_true(harness_metric(s, home) == 0);
	derp_client_close(c[0]);
}

/* 24, 25: alice sends to bob and cathy every 2 ms. Once cathy stops reading (tiny
 * receive buffer, never drained) bob keeps getting packets without a stall and alice's
 * sends never block. */
static void test_send_freeze(void **state)
{
	struct harness_server *s = *state;
	struct derp_client_opts small = harness_opts();
	small.rcvbuf = 4096;
	struct derp_client *alice = harness_client(s, NULL), *bob = harness_client(s, NULL);
	struct derp_client *cathy = harness_client(s, &small);
	static uint8_t pkt[8192];
	struct derp_msg m;
	int bob_got = 0, cathy_got = 0, sent = 0, bob_before = 0;
	int64_t t0 = harness_now_ms(), next = t0, last_bob = t0, max_gap = 0;
	const int64_t phase1 = 300, phase2 = 2500;

	randombytes_buf(pkt, sizeof pkt);
	while (harness_now_ms() < t0 + phase1 + phase2) {
		int64_t now = harness_now_ms();
		int frozen = now >= t0 + phase1;
		if (now >= next) {
			size_t len = frozen ? sizeof pkt : 500;
			memcpy(pkt, &sent, sizeof sent);
			assert_int_equal(derp_client_send(alice, PUB(bob), pkt, len), 0);
			assert_int_equal(derp_client_send(alice, PUB(cathy), pkt, len), 0);
			sent++;
			next += 2;
		}
		struct pollfd p[3] = { { derp_client_fd(bob), POLLIN, 0 },
				       { derp_client_fd(alice), POLLIN, 0 },
				       { derp_client_fd(cathy), frozen ? 0 : POLLIN, 0 } };
		int64_t wait = next - harness_now_ms();
		poll(p, 3, wait > 0 ? (int)wait : 0);
		while (derp_client_recv(bob, &m, 0) == 0) {
			if (m.kind == DERP_MSG_KEEP_ALIVE)
				continue;
			assert_int_equal(m.kind, DERP_MSG_PACKET);
			assert_memory_equal(m.key, PUB(alice), 32);
			now = harness_now_ms();
			if (now - last_bob > max_gap && now > t0 + phase1)
				max_gap = now - last_bob;
			last_bob = now;
			bob_got++;
		}
		while (derp_client_recv(alice, &m, 0) == 0)
			if (m.kind != DERP_MSG_KEEP_ALIVE)
				fail_msg("alice received message kind %d", m.kind);
		while (!frozen && derp_client_recv(cathy, &m, 0) == 0)
			if (m.kind == DERP_MSG_PACKET)
				cathy_got++;
		if (!frozen)
			bob_before = bob_got;
	}
	/* drain what is still in flight to bob */
	int64_t end = harness_now_ms() + 3000;
	while (bob_got < sent && harness_now_ms() < end) {
		if (derp_client_recv(bob, &m, 100) != 0)
			continue;
		if (m.kind == DERP_MSG_PACKET)
			bob_got++;
	}
	print_message("send_freeze: sent %d each, bob got %d (%d before freeze), cathy %d, "
		      "max bob gap %lld ms\n", sent, bob_got, bob_before, cathy_got,
		      (long long)max_gap);
	assert_true(bob_before > 0);
	assert_true(cathy_got > 0);
	assert_true(max_gap < 500);
	assert_true(bob_got >= sent * 9 / 10);
	derp_client_close(alice);
	derp_client_close(bob);
	derp_client_close(cathy);
}

/* 35, 127: Pong echoes the 8 bytes; a longer ping (up to 1000) echoes its first 8. */
static void test_ping_pong(void **state)
{
	struct harness_server *s = *state;
	struct derp_client *c = harness_client(s, NULL);
	static const uint8_t data[8] = { 1, 2, 3, 4, 5, 6, 7, 0x2a };
	uint8_t big[1000];
	struct derp_msg m;

	assert_int_equal(derp_client_ping(c, data), 0);
	harness_recv(c, &m, 5000);
	assert_int_equal(m.kind, DERP_MSG_PONG);
	assert_int_equal(m.frame_len, 8);
	assert_memory_equal(m.ping8, data, 8);
	randombytes_buf(big, sizeof big);
	assert_int_equal(derp_client_write_frame(c, FRAME_PING, big, sizeof big), 0);
	harness_recv(c, &m, 5000);
	assert_int_equal(m.kind, DERP_MSG_PONG);
	assert_int_equal(m.frame_len, 8);
	assert_memory_equal(m.ping8, big, 8);
	harness_ping(c, 5000);
	derp_client_close(c);
}

/* Payloads of 0, 1, 1200, 65535 and 65536 bytes arrive byte-exact. */
static void test_payload_sizes(void **state)
{
	struct harness_server *s = *state;
	struct derp_client *a = harness_client(s, NULL), *b = harness_client(s, NULL);
	static const size_t sizes[] = { 0, 1, 1200, 65535, 65536 };
	static uint8_t pkt[65536];

	for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
		randombytes_buf(pkt, sizeof pkt);
		assert_int_equal(derp_client_send(a, PUB(b), pkt, sizes[i]), 0);
		harness_expect_packet(b, PUB(a), pkt, sizes[i], 5000);
	}
	/* all in one burst too */
	for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
		assert_int_equal(derp_client_send(a, PUB(b), pkt, sizes[i]), 0);
	for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
		harness_expect_packet(b, PUB(a), pkt, sizes[i], 5000);
	derp_client_close(a);
	derp_client_close(b);
}

/* A 65537-byte packet closes the sender only (§7.2); the others keep relaying. */
static void test_oversize_packet_closes_sender(void **state)
{
	struct harness_server *s = *state;
	struct derp_client *a = harness_client(s, NULL), *b = harness_client(s, NULL);
	struct derp_client *c = harness_client(s, NULL);
	static uint8_t pkt[65537];

	int r = derp_client_send(a, PUB(b), pkt, sizeof pkt);
	assert_true(r == 0 || r == DERP_CLIENT_CLOSED);
	harness_expect_closed(a, 5000);
	harness_relay_check(b, c);
	harness_expect_nothing(b, 100);
	derp_client_close(a);
	derp_client_close(b);
	derp_client_close(c);
}

/* --keepalive-interval 1s (derpd extension): KeepAlive frames (06 00 00 00 00) every 1 s
 * plus a jitter fixed for the connection, at most a twelfth of the interval (derper: the
 * interval plus up to 5 s, on 60 s); the wheel's 100 ms tick is the slack. */
static void test_keepalive(void **state)
{
	(void)state;
	static const char *const args[] = { "--keepalive-interval", "1s", "--verbose", NULL };
	struct harness_server *s = harness_start(args);
	struct derp_client *c = harness_client(s, NULL);
	struct derp_msg m;
	int64_t t[3] = { harness_now_ms() };

	for (int i = 1; i < 3; i++) {
		if (derp_client_recv(c, &m, 3000)) {
			harness_dump_log(s);
			fail_msg("no KeepAlive within 3 s: %s", derp_client_error());
		}
		assert_int_equal(m.kind, DERP_MSG_KEEP_ALIVE);
		assert_int_equal(m.frame_len, 0);
		t[i] = harness_now_ms();
		int64_t dt = t[i] - t[i - 1];
		print_message("KeepAlive %d after %lld ms\n", i, (long long)dt);
		assert_true(dt >= 900 && dt <= 1084 + 250);
	}
	derp_client_close(c);
	harness_stop(s);
}

/* Packet counters via /debug/varz (§7.2, §7.5). */
static void test_packet_metrics(void **state)
{
	struct harness_server *s = *state;
	struct derp_client *a = harness_client(s, NULL), *b = harness_client(s, NULL);
	uint8_t k[32], disco[62];

	for (int i = 0; i < 10; i++)
		assert_int_equal(derp_client_send(a, PUB(b), "0123456789", 10), 0);
	for (int i = 0; i < 10; i++)
		harness_expect_packet(b, PUB(a), "0123456789", 10, 5000);
	randombytes_buf(k, 32);
	disco_packet(disco, k);
	assert_int_equal(derp_client_send(a, k, disco, sizeof disco), 0);
	struct derp_msg m;
	harness_recv(a, &m, 5000);
	assert_int_equal(m.kind, DERP_MSG_PEER_GONE);
	harness_ping(a, 5000);
	assert_true(harness_wait_metric(s, "derp_packets_received", 11, 5000) == 11);
	assert_true(harness_metric(s, "derp_bytes_received") == 100 + 62);
	assert_true(harness_metric(s, "derp_packets_sent") == 10);
	assert_true(harness_metric(s, "derp_bytes_sent") == 100);
	assert_true(harness_metric(s, "derp_packets_dropped{reason=\"unknown_dest\","
				   "kind=\"disco\"}") == 1);
	assert_true(harness_metric(s, "derp_got_ping") >= 1);
	derp_client_close(a);
	derp_client_close(b);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, harness_setup, harness_teardown)
	const struct CMUnitTest tests[] = {
		T(test_server_info_first),
		T(test_send_recv),
		T(test_send_to_self),
		T(test_unknown_dest_not_disco),
		T(test_disco_not_here_rate_limit),
		T(test_peer_gone_disconnected),
		T(test_home_gauges),
		T(test_send_freeze),
		T(test_ping_pong),
		T(test_payload_sizes),
		T(test_oversize_packet_closes_sender),
		cmocka_unit_test(test_keepalive),
		T(test_packet_metrics),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
