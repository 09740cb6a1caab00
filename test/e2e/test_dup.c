/* Several connections with one key (PROTOCOL.md §8; CONFORMANCE 65-67, 73): all stay
 * open and are read, the newest is active, last-writer-is-active, and removal hands the
 * traffic back. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <sodium.h>
#include <stdio.h>
#include <string.h>

#include "server/key.h"
#include "test/e2e/harness.h"

#define PUB(c) derp_client_public_key(c)

struct dup {
	struct derp_client *s;     /* sender */
	struct derp_client *c[3];  /* connections sharing one key */
	uint8_t priv[32], key[32];
	uint32_t seq;
};

static void dup_connect(struct harness_server *srv, struct dup *d, int n)
{
	struct derp_client_opts o = harness_opts();

	memset(d, 0, sizeof *d);
	key_generate(d->priv);
	key_public(d->key, d->priv);
	o.private_key = d->priv;
	d->s = harness_client(srv, NULL);
	for (int i = 0; i < n; i++)
		d->c[i] = harness_client(srv, &o); /* returns after registration */
}

static void dup_close(struct dup *d)
{
	derp_client_close(d->s);
	for (int i = 0; i < 3; i++)
		derp_client_close(d->c[i]);
}

/* One packet from s to the key must land on c[want]. */
static void expect_active(struct dup *d, int want)
{
	uint32_t seq = ++d->seq;

	assert_int_equal(derp_client_send(d->s, d->key, &seq, sizeof seq), 0);
	harness_expect_packet(d->c[want], PUB(d->s), &seq, sizeof seq, 5000);
}

/* After a change that takes effect asynchronously (a close), keep sending until c[want]
 * gets a packet; packets that still went elsewhere are fine. */
static void wait_active(struct dup *d, int want)
{
	int64_t end = harness_now_ms() + 5000;
	struct derp_msg m;

	while (harness_now_ms() < end) {
		uint32_t seq = ++d->seq;
		assert_int_equal(derp_client_send(d->s, d->key, &seq, sizeof seq), 0);
		int r = derp_client_recv(d->c[want], &m, 50);
		if (r == 0 && m.kind == DERP_MSG_PACKET)
			return;
		assert_true(r == 0 || r == DERP_CLIENT_TIMEOUT);
	}
	fail_msg("connection %d never became active", want);
}

/* Everything s sent to the key while c[i] was not meant to be active must not exist:
 * after a ping round trip, c[i] has nothing queued. */
static void expect_idle(struct dup *d, int i)
{
	harness_ping(d->c[i], 5000);
}

/* §8 / 73: newest active; each speaker becomes active; the newer closing hands the key
 * back to the older. */
static void test_last_writer_is_active(void **state)
{
	struct harness_server *srv = *state;
	struct dup d;

	dup_connect(srv, &d, 2);
	expect_active(&d, 1);
	expect_idle(&d, 0);
	harness_ping(d.c[0], 5000); /* c0 speaks */
	expect_active(&d, 0);
	expect_idle(&d, 1);
	harness_ping(d.c[1], 5000); /* c1 speaks */
	expect_active(&d, 1);
	expect_idle(&d, 0);
	/* any frame counts, e.g. a packet: and the inactive one's frames are still served */
	assert_int_equal(derp_client_send(d.c[0], PUB(d.s), "from c0", 7), 0);
	harness_expect_packet(d.s, d.key, "from c0", 7, 5000);
	expect_active(&d, 0);
	expect_idle(&d, 1);
	harness_ping(d.c[1], 5000);
	expect_active(&d, 1);
	/* the newer (and active) one leaves: the older one gets the traffic */
	derp_client_close(d.c[1]);
	d.c[1] = NULL;
	wait_active(&d, 0);
	expect_active(&d, 0);
	dup_close(&d);
}

/* 65-67: the older leaving keeps the newer active, without a pause. */
static void test_older_leaves(void **state)
{
	struct harness_server *srv = *state;
	struct dup d;

	dup_connect(srv, &d, 2);
	expect_active(&d, 1);
	derp_client_close(d.c[0]);
	d.c[0] = NULL;
	for (int i = 0; i < 20; i++)
		expect_active(&d, 1);
	dup_close(&d);
}

/* Three members: active follows the speaker; removing a non-active member changes
 * nothing; removing the active one falls back to the previous speaker. */
static void test_three(void **state)
{
	struct harness_server *srv = *state;
	struct dup d;

	dup_connect(srv, &d, 3);
	expect_active(&d, 2);
	harness_ping(d.c[1], 5000);
	expect_active(&d, 1);
	derp_client_close(d.c[2]); /* not active */
	d.c[2] = NULL;
	for (int i = 0; i < 10; i++)
		expect_active(&d, 1);
	harness_ping(d.c[0], 5000);
	expect_active(&d, 0);
	harness_ping(d.c[1], 5000);
	expect_active(&d, 1);
	derp_client_close(d.c[1]);
	d.c[1] = NULL;
	wait_active(&d, 0);
	dup_close(&d);
}

/* §8 removal: one duplicate leaving is not "the key left" (no PeerGone to those who
 * heard from it); the last one leaving is. */
static void test_peer_gone_only_for_last(void **state)
{
	struct harness_server *srv = *state;
	struct dup d;
	struct derp_msg m;

	dup_connect(srv, &d, 2);
	assert_int_equal(derp_client_send(d.c[0], PUB(d.s), "x", 1), 0);
	harness_expect_packet(d.s, d.key, "x", 1, 5000);
	assert_int_equal(derp_client_send(d.c[1], PUB(d.s), "y", 1), 0);
	harness_expect_packet(d.s, d.key, "y", 1, 5000);
	derp_client_close(d.c[0]);
	d.c[0] = NULL;
	wait_active(&d, 1);
	harness_ping(d.s, 5000);
	harness_expect_nothing(d.s, 300);
	derp_client_close(d.c[1]);
	d.c[1] = NULL;
	harness_recv(d.s, &m, 5000);
	assert_int_equal(m.kind, DERP_MSG_PEER_GONE);
	assert_memory_equal(m.key, d.key, 32);
	assert_int_equal(m.reason, PEER_GONE_DISCONNECTED);
	harness_ping(d.s, 5000);
	dup_close(&d);
}

/* 66, 67 via /debug/varz. */
static void test_dup_gauges(void **state)
{
	struct harness_server *srv = *state;
	struct dup d;

	dup_connect(srv, &d, 2);
	assert_true(harness_wait_metric(srv, "derp_current_dup_client_keys", 1, 5000) == 1);
	assert_true(harness_metric(srv, "derp_current_dup_client_conns") == 2);
	assert_true(harness_metric(srv, "derp_total_dup_client_conns") == 1);
	assert_true(harness_metric(srv, "derp_current_connections") == 3);
	assert_true(harness_metric(srv, "derp_clients_local") == 2);
	derp_client_close(d.c[0]);
	d.c[0] = NULL;
	assert_true(harness_wait_metric(srv, "derp_current_dup_client_keys", 0, 5000) == 0);
	assert_true(harness_wait_metric(srv, "derp_current_dup_client_conns", 0, 5000) == 0);
	assert_true(harness_wait_metric(srv, "derp_current_connections", 2, 5000) == 2);
	assert_true(harness_metric(srv, "derp_total_dup_client_conns") == 1);
	dup_close(&d);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, harness_setup, harness_teardown)
	const struct CMUnitTest tests[] = {
		T(test_last_writer_is_active),
		T(test_older_leaves),
		T(test_three),
		T(test_peer_gone_only_for_last),
		T(test_dup_gauges),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
