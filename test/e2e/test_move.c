/* A sender whose packets all go to a receiver of another worker is moved to that worker
 * (server/move.c). Against the real binary with two workers: the move happens, no packet
 * is lost or reordered across it, and a moved connection is a whole connection on its
 * new worker: it relays both ways, answers pings, gets its keepalives (timers), and its
 * departure reaches its peer (PeerGone). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/frame.h"
#include "test/e2e/harness.h"

/* 16 pairs on 2 workers: all of them on the same side has odds of 1 in 65,536. */
#define PAIRS 16
#define PAYLOAD 64
#define BURST 128
#define BURSTS 8 /* 1024 packets a pair, past the 256 in a row that make a move */
#define MAX_BURSTS 64

static double conn_moves(const struct harness_server *s)
{
	static char resp[1 << 20];
	const char *name = "\nderpd_conn_moves_total ";

	if (harness_http(s, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"
			 "Connection: close\r\n\r\n", resp, sizeof resp) != 200)
		return -1;
	const char *p = strstr(resp, name);
	return p ? strtod(p + strlen(name), NULL) : -1;
}

static void send_burst(struct derp_client *snd, const uint8_t dst[32], uint32_t first,
		       uint8_t *buf)
{
	size_t flen = FRAME_HEADER_LEN + 32 + PAYLOAD;

	for (int i = 0; i < BURST; i++) {
		uint8_t *f = buf + (size_t)i * flen;
		f[0] = FRAME_SEND_PACKET;
		frame_put_be32(f + 1, 32 + PAYLOAD);
		memcpy(f + FRAME_HEADER_LEN, dst, 32);
		frame_put_be32(f + FRAME_HEADER_LEN + 32, first + (uint32_t)i);
	}
	assert_int_equal(derp_client_write_raw(snd, buf, BURST * flen), 0);
}

static void test_moved_senders_stay_whole(void **state)
{
	(void)state;
	const char *args[] = { "--workers", "2", "--keepalive-interval", "1s", NULL };
	struct harness_server *s = harness_start(args);
	struct derp_client *snd[PAIRS], *rcv[PAIRS];
	uint8_t *buf = calloc(BURST, FRAME_HEADER_LEN + 32 + PAYLOAD);

	assert_non_null(buf);
	assert_true(conn_moves(s) == 0);
	for (int p = 0; p < PAIRS; p++) {
		snd[p] = harness_client(s, NULL);
		rcv[p] = harness_client(s, NULL);
	}
	/* Every packet arrives, in order, while senders move. A sender held back by a busy
	 * receiver cannot move then, and on a loaded machine that can last several streaks:
	 * keep sending (bounded: MAX_BURSTS) until one has moved. */
	for (int k = 0; k < BURSTS || (conn_moves(s) < 1 && k < MAX_BURSTS); k++) {
		for (int p = 0; p < PAIRS; p++)
			send_burst(snd[p], derp_client_public_key(rcv[p]), (uint32_t)(k * BURST), buf);
		for (int p = 0; p < PAIRS; p++)
			for (int i = 0; i < BURST; i++) {
				struct derp_msg m;
				harness_recv(rcv[p], &m, 5000);
				assert_int_equal(m.kind, DERP_MSG_PACKET);
				assert_memory_equal(m.key, derp_client_public_key(snd[p]), 32);
				assert_int_equal(m.len, PAYLOAD);
				assert_int_equal(frame_get_be32(m.data), (uint32_t)(k * BURST + i));
			}
	}
	double moved = conn_moves(s);
	fprintf(stderr, "connections moved: %.0f\n", moved);
	assert_true(moved >= 1);

	/* Both ways, pings, and timers (keepalives every second) on whichever worker. */
	for (int p = 0; p < PAIRS; p++) {
		harness_relay_check(snd[p], rcv[p]);
		harness_ping(snd[p], 5000);
	}
	for (int p = 0; p < PAIRS; p++) {
		struct derp_msg m;
		int64_t end = harness_now_ms() + 8000;
		int got = 0;
		while (!got && harness_now_ms() < end) {
			assert_int_equal(derp_client_recv(snd[p], &m, 8000), 0);
			got = m.kind == DERP_MSG_KEEP_ALIVE;
		}
		assert_true(got);
	}
	/* A moved sender's departure reaches the receiver it sent to. */
	for (int p = 0; p < PAIRS; p++) {
		uint8_t key[32];
		struct derp_msg m;
		memcpy(key, derp_client_public_key(snd[p]), 32);
		derp_client_close(snd[p]);
		harness_recv(rcv[p], &m, 5000);
		assert_int_equal(m.kind, DERP_MSG_PEER_GONE);
		assert_memory_equal(m.key, key, 32);
		derp_client_close(rcv[p]);
	}
	free(buf);
	harness_stop(s); /* exits cleanly (connections moved or in transit included) */
}

/* Stopping while connections move: every worker still closes what it owns. */
static void test_stop_while_moving(void **state)
{
	(void)state;
	const char *args[] = { "--workers", "2", NULL };
	struct harness_server *s = harness_start(args);
	struct derp_client *snd[PAIRS], *rcv[PAIRS];
	uint8_t *buf = calloc(BURST, FRAME_HEADER_LEN + 32 + PAYLOAD);

	assert_non_null(buf);
	for (int p = 0; p < PAIRS; p++) {
		snd[p] = harness_client(s, NULL);
		rcv[p] = harness_client(s, NULL);
	}
	for (int k = 0; k < 3; k++)
		for (int p = 0; p < PAIRS; p++)
			send_burst(snd[p], derp_client_public_key(rcv[p]), (uint32_t)(k * BURST), buf);
	harness_stop(s);
	for (int p = 0; p < PAIRS; p++) {
		derp_client_close(snd[p]);
		derp_client_close(rcv[p]);
	}
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_moved_senders_stay_whole),
		cmocka_unit_test(test_stop_while_moving),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
