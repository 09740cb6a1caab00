/* Many clients and misbehaving receivers (PROTOCOL.md §7.5, §7.6; DESIGN.md "a slow
 * receiver must cost only itself", "overload must not wedge anything"). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <poll.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "test/e2e/harness.h"

#define PUB(c) derp_client_public_key(c)
#define NCLIENTS 1000

static void raise_fd_limit(void)
{
	struct rlimit rl;

	assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
	rl.rlim_cur = rl.rlim_max;
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
	if (rl.rlim_cur < NCLIENTS + 100)
		skip(); /* cannot hold the clients here */
}

static void disco_packet(uint8_t out[62], const uint8_t key[32])
{
	memcpy(out, DISCO_MAGIC, DISCO_MAGIC_LEN);
	memcpy(out + 6, key, 32);
	memset(out + 38, 0, 24);
}

/* Probe key with disco packets until the server answers NotHere (the key is gone);
 * returns the milliseconds it took. Other messages on c are ignored. */
static int64_t wait_gone(struct derp_client *c, const uint8_t key[32], int timeout_ms)
{
	uint8_t pkt[62];
	struct derp_msg m;
	int64_t start = harness_now_ms(), end = start + timeout_ms;

	disco_packet(pkt, key);
	while (harness_now_ms() < end) {
		assert_int_equal(derp_client_send(c, key, pkt, sizeof pkt), 0);
		int64_t until = harness_now_ms() + 200;
		while (harness_now_ms() < until) {
			int r = derp_client_recv(c, &m, (int)(until - harness_now_ms()));
			if (r == DERP_CLIENT_TIMEOUT)
				break;
			assert_int_equal(r, 0);
			if (m.kind == DERP_MSG_PEER_GONE && m.reason == PEER_GONE_NOT_HERE &&
			    memcmp(m.key, key, 32) == 0)
				return harness_now_ms() - start;
		}
	}
	fail_msg("key still registered after %d ms", timeout_ms);
	return -1;
}

/* 1,000 clients at once (500 pairs, half of them fast start with overlapping
 * handshakes); each sends one packet to its partner; every packet arrives. Then a fresh
 * pair relays within a second. */
static void test_thousand_clients(void **state)
{
	struct harness_server *s = *state;
	struct derp_client **c = calloc(NCLIENTS, sizeof *c);
	struct pollfd *p = calloc(NCLIENTS, sizeof *p);
	int *got = calloc(NCLIENTS, sizeof *got);
	struct derp_client_opts fast = harness_opts();
	struct derp_msg m;

	raise_fd_limit();
	fast.timeout_ms = 20000;
	fast.fast_start = 1;
	fast.server_key = s->pub;
	int64_t t0 = harness_now_ms();
	/* fast start: all handshakes in flight together */
	for (int i = 0; i < NCLIENTS; i += 2) {
		c[i] = derp_client_open("127.0.0.1", s->port, &fast);
		if (!c[i])
			fail_msg("client %d: %s", i, derp_client_error());
		assert_int_equal(derp_client_send_info(c[i]), 0);
	}
	for (int i = 1; i < NCLIENTS; i += 2)
		c[i] = harness_client(s, NULL);
	for (int i = 0; i < NCLIENTS; i += 2)
		if (derp_client_finish(c[i]) != 0)
			fail_msg("client %d: %s", i, derp_client_error());
	int64_t t1 = harness_now_ms();
	for (int i = 0; i < NCLIENTS; i++) {
		uint32_t id = (uint32_t)i;
		assert_int_equal(derp_client_send(c[i], PUB(c[i ^ 1]), &id, sizeof id), 0);
	}
	int total = 0;
	int64_t end = harness_now_ms() + 20000;
	while (total < NCLIENTS && harness_now_ms() < end) {
		for (int i = 0; i < NCLIENTS; i++)
			p[i] = (struct pollfd){ derp_client_fd(c[i]), POLLIN, 0 };
		if (poll(p, NCLIENTS, 200) <= 0)
			continue;
		for (int i = 0; i < NCLIENTS; i++) {
			if (!p[i].revents && !derp_client_buffered(c[i]))
				continue;
			while (derp_client_recv(c[i], &m, 0) == 0) {
				if (m.kind == DERP_MSG_KEEP_ALIVE)
					continue;
				assert_int_equal(m.kind, DERP_MSG_PACKET);
				assert_memory_equal(m.key, PUB(c[i ^ 1]), 32);
				assert_int_equal(m.len, 4);
				uint32_t id;
				memcpy(&id, m.data, 4);
				assert_int_equal(id, (uint32_t)(i ^ 1));
				got[i]++;
				total++;
			}
		}
	}
	int64_t t2 = harness_now_ms();
	print_message("thousand: %d clients connected in %lld ms, %d packets delivered in "
		      "%lld ms\n", NCLIENTS, (long long)(t1 - t0), total, (long long)(t2 - t1));
	for (int i = 0; i < NCLIENTS; i++)
		if (got[i] != 1)
			fail_msg("client %d got %d packets", i, got[i]);
	/* a newcomer is served at once while all of them are still connected */
	int64_t t3 = harness_now_ms();
	struct derp_client *a = harness_client(s, NULL), *b = harness_client(s, NULL);
	harness_relay_check(a, b);
	int64_t dt = harness_now_ms() - t3;
	print_message("thousand: fresh pair relayed in %lld ms\n", (long long)dt);
	assert_true(dt < 1000);
	derp_client_close(a);
	derp_client_close(b);
	assert_true(harness_wait_metric(s, "derp_current_connections", NCLIENTS, 5000) ==
		    NCLIENTS);
	for (int i = 0; i < NCLIENTS; i++)
		derp_client_close(c[i]);
	free(c);
	free(p);
	free(got);
}

/* Blast packets from s to r (which never reads) and run f->pair checks meanwhile, until
 * done() or the deadline. Returns packets sent. */
struct blast {
	struct harness_server *srv;
	struct derp_client *s, *r, *a, *b;
};

static int blast_until(struct blast *bl, int (*done)(struct blast *), int timeout_ms)
{
	static uint8_t pkt[16384];
	int64_t end = harness_now_ms() + timeout_ms;
	int sent = 0;

	memset(pkt, 0x5a, sizeof pkt);
	while (harness_now_ms() < end) {
		for (int i = 0; i < 64; i++, sent++) {
			int r = derp_client_send(bl->s, PUB(bl->r), pkt, sizeof pkt);
			if (r)
				fail_msg("sender blocked or closed after %d packets: %s", sent,
					 derp_client_error());
		}
		harness_relay_check(bl->a, bl->b); /* bystanders are served meanwhile */
		if (done(bl))
			return sent;
	}
	fail_msg("condition not reached after %d packets in %d ms", sent, timeout_ms);
	return sent;
}

static int queue_head_drops(struct blast *bl)
{
	double v = harness_metric(bl->srv, "derp_packets_dropped{reason=\"queue_head\","
				  "kind=\"other\"}");
	return !isnan(v) && v > 0;
}

/* §7.5: a receiver that never reads costs only itself: the sender is never blocked,
 * others keep relaying, and its overflow is dropped oldest-first and counted. The write
 * timeout is off so the receiver stays connected. */
static void test_never_reading_receiver(void **state)
{
	(void)state;
	static const char *const args[] = { "--tcp-write-timeout", "0", NULL };
	struct harness_server *srv = harness_start(args);
	struct derp_client_opts small = harness_opts();
	small.rcvbuf = 4096;
	struct blast bl = { srv, harness_client(srv, NULL), harness_client(srv, &small),
			    harness_client(srv, NULL), harness_client(srv, NULL) };

	int sent = blast_until(&bl, queue_head_drops, 15000);
	print_message("never-reading: queue_head drops after %d packets\n", sent);
	/* still connected: the key is registered, r's socket has data waiting */
	harness_ping(bl.s, 5000);
	derp_client_close(bl.s);
	derp_client_close(bl.r);
	derp_client_close(bl.a);
	derp_client_close(bl.b);
	harness_stop(srv);
}

static int r_gone(struct blast *bl)
{
	uint8_t pkt[62];
	struct derp_msg m;

	disco_packet(pkt, PUB(bl->r));
	assert_int_equal(derp_client_send(bl->s, PUB(bl->r), pkt, sizeof pkt), 0);
	while (derp_client_recv(bl->s, &m, 100) == 0)
		if (m.kind == DERP_MSG_PEER_GONE && m.reason == PEER_GONE_NOT_HERE)
			return 1;
	return 0;
}

/* §7.6: with the default 2 s write timeout a receiver that never reads is disconnected
 * (its key disappears), and nobody else notices. */
static void test_write_timeout_closes_stalled(void **state)
{
	struct harness_server *srv = *state;
	struct derp_client_opts small = harness_opts();
	small.rcvbuf = 4096;
	struct blast bl = { srv, harness_client(srv, NULL), harness_client(srv, &small),
			    harness_client(srv, NULL), harness_client(srv, NULL) };
	int64_t t0 = harness_now_ms();

	/* 2 s of no progress after the buffers fill (well under a second of blasting); the
	 * 15 s TCP_USER_TIMEOUT must not be what ends it */
	int sent = blast_until(&bl, r_gone, 10000);
	print_message("write timeout: stalled receiver dropped after %d packets, %lld ms\n",
		      sent, (long long)(harness_now_ms() - t0));
	assert_true(harness_now_ms() - t0 >= 1500);
	harness_relay_check(bl.a, bl.b);
	derp_client_close(bl.s);
	derp_client_close(bl.r);
	derp_client_close(bl.a);
	derp_client_close(bl.b);
}

/* A client that sends half a SendPacket and vanishes (full close): it is unregistered,
 * and the others carry on. */
static void test_vanish_mid_frame(void **state)
{
	struct harness_server *srv = *state;
	struct derp_client *a = harness_client(srv, NULL), *b = harness_client(srv, NULL);
	struct derp_client *v = harness_client(srv, NULL);
	uint8_t key[32], frame[5 + 32 + 500];

	memcpy(key, PUB(v), 32);
	frame_put_header(frame, FRAME_SEND_PACKET, 32 + 1000);
	memcpy(frame + 5, PUB(a), 32);
	memset(frame + 37, 1, 500);
	assert_int_equal(derp_client_write_raw(v, frame, sizeof frame), 0);
	derp_client_close(v);
	wait_gone(a, key, 5000);
	harness_relay_check(a, b);
	harness_ping(a, 5000);
	harness_ping(b, 5000);
	derp_client_close(a);
	derp_client_close(b);
}

/* Churn: 200 clients connect, send, and close abruptly (some mid-frame), while a pair
 * keeps relaying; the server then has exactly the three steady clients left. */
static void test_churn(void **state)
{
	struct harness_server *srv = *state;
	struct derp_client *a = harness_client(srv, NULL), *b = harness_client(srv, NULL);
	struct derp_client *sink = harness_client(srv, NULL);
	uint8_t half[5 + 32 + 10];

	frame_put_header(half, FRAME_SEND_PACKET, 32 + 100);
	memcpy(half + 5, PUB(sink), 32);
	memset(half + 37, 0, 10);
	for (int i = 0; i < 200; i++) {
		struct derp_client *c = harness_client(srv, NULL);
		if (i % 3 == 0)
			assert_int_equal(derp_client_write_raw(c, half, sizeof half), 0);
		else if (i % 3 == 1)
			assert_int_equal(derp_client_send(c, PUB(sink), "z", 1), 0);
		derp_client_close(c);
		if (i % 20 == 0)
			harness_relay_check(a, b);
	}
	/* sink got the packets and a PeerGone for each of their senders */
	struct derp_msg m;
	int pkts = 0, gone = 0;
	while ((gone < 67 || pkts < 67) && derp_client_recv(sink, &m, 2000) == 0) {
		pkts += m.kind == DERP_MSG_PACKET;
		gone += m.kind == DERP_MSG_PEER_GONE && m.reason == PEER_GONE_DISCONNECTED;
	}
	assert_int_equal(pkts, 67);
	assert_int_equal(gone, 67);
	harness_relay_check(a, b);
	assert_true(harness_wait_metric(srv, "derp_current_connections", 3, 5000) == 3);
	derp_client_close(a);
	derp_client_close(b);
	derp_client_close(sink);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, harness_setup, harness_teardown)
	const struct CMUnitTest tests[] = {
		T(test_thousand_clients),
		cmocka_unit_test(test_never_reading_receiver),
		T(test_write_timeout_closes_stalled),
		T(test_vanish_mid_frame),
		T(test_churn),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
