/* Frame codec: header read/write and the fixed-frame builders, byte-exact against
 * PROTOCOL.md §14 (CONFORMANCE items 1-5 and the server side of 36-40). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "server/frame.h"

static void fill(uint8_t *k, uint8_t v)
{
	memset(k, v, 32);
}

/* Items 1-3: reader. */
static void test_read_header(void **state)
{
	(void)state;
	static const struct { uint8_t in[5]; uint8_t type; uint32_t len; } cases[] = {
		{ { 0x04, 0x00, 0x00, 0x04, 0x00 }, FRAME_SEND_PACKET, 1024 },
		{ { 0x06, 0x00, 0x00, 0x00, 0x00 }, FRAME_KEEP_ALIVE, 0 },
		{ { 0x05, 0xff, 0xff, 0xff, 0xff }, FRAME_RECV_PACKET, 4294967295u },
		{ { 0x12, 0x80, 0x00, 0x00, 0x01 }, FRAME_PING, 0x80000001u }, /* sign bit set */
		{ { 0xff, 0x01, 0x02, 0x03, 0x04 }, 0xff, 0x01020304u },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		uint8_t t = 0;
		uint32_t l = 0;
		frame_get_header(cases[i].in, &t, &l);
		assert_int_equal(t, cases[i].type);
		assert_true(l == cases[i].len);
	}
}

/* Item 4: writer. */
static void test_write_header(void **state)
{
	(void)state;
	uint8_t out[5];

	frame_put_header(out, FRAME_SEND_PACKET, 1024);
	assert_memory_equal(out, "\x04\x00\x00\x04\x00", 5);
	frame_put_header(out, FRAME_KEEP_ALIVE, 0);
	assert_memory_equal(out, "\x06\x00\x00\x00\x00", 5);
	frame_put_header(out, FRAME_RECV_PACKET, 0xffffffffu);
	assert_memory_equal(out, "\x05\xff\xff\xff\xff", 5);
	/* §14.1: a 1024-byte packet makes SendPacket length 1056 */
	frame_put_header(out, FRAME_SEND_PACKET, 32 + 1024);
	assert_memory_equal(out, "\x04\x00\x00\x04\x20", 5);
}

/* Item 5: a header written right behind earlier bytes, at every offset up to the end of
 * a small buffer, lands intact and touches nothing else. */
static void test_write_header_at_boundary(void **state)
{
	(void)state;
	uint8_t buf[16];

	for (size_t off = 0; off + 5 <= sizeof buf; off++) {
		memset(buf, 0xaa, sizeof buf);
		frame_put_header(buf + off, FRAME_RECV_PACKET, 0x01020304u);
		for (size_t i = 0; i < off; i++)
			assert_int_equal(buf[i], 0xaa);
		assert_memory_equal(buf + off, "\x05\x01\x02\x03\x04", 5);
		for (size_t i = off + 5; i < sizeof buf; i++)
			assert_int_equal(buf[i], 0xaa);
	}
}

static void test_round_trip(void **state)
{
	(void)state;
	uint32_t lens[] = { 0, 1, 255, 256, 65535, 65536, 65568, 0x7fffffffu, 0x80000000u,
			    0xfffffffeu, 0xffffffffu };
	for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
		uint8_t b[5], t;
		uint32_t l;
		frame_put_header(b, (uint8_t)i, lens[i]);
		frame_get_header(b, &t, &l);
		assert_int_equal(t, (uint8_t)i);
		assert_true(l == lens[i]);
		assert_true(frame_get_be32(b + 1) == lens[i]);
	}
}

/* §14.2 ServerKey: 01 00 00 00 28 ‖ magic ‖ key, 45 bytes. */
static void test_server_key(void **state)
{
	(void)state;
	uint8_t k[32], out[45];

	fill(k, 0x33);
	assert_int_equal(frame_server_key(out, k), 45);
	assert_memory_equal(out, "\x01\x00\x00\x00\x28", 5);
	assert_memory_equal(out + 5, "\x44\x45\x52\x50\xf0\x9f\x94\x91", 8);
	assert_memory_equal(out + 13, k, 32);
}

/* §14.2 PeerGone(K, NotHere): 08 00 00 00 21 ‖ K ‖ 01. */
static void test_peer_gone(void **state)
{
	(void)state;
	uint8_t k[32], out[38];

	fill(k, 0x44);
	assert_int_equal(frame_peer_gone(out, k, PEER_GONE_NOT_HERE), 38);
	assert_memory_equal(out, "\x08\x00\x00\x00\x21", 5);
	assert_memory_equal(out + 5, k, 32);
	assert_int_equal(out[37], 0x01);
	assert_int_equal(frame_peer_gone(out, k, PEER_GONE_DISCONNECTED), 38);
	assert_int_equal(out[37], 0x00);
}

/* §14.2 PeerPresent(K, 1.2.3.4:5678, regular). */
static void test_peer_present(void **state)
{
	(void)state;
	static const uint8_t ip[16] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4 };
	uint8_t k[32], out[56];

	fill(k, 0x55);
	assert_int_equal(frame_peer_present(out, k, ip, 5678, PEER_PRESENT_REGULAR), 56);
	assert_memory_equal(out, "\x09\x00\x00\x00\x33", 5);
	assert_memory_equal(out + 5, k, 32);
	assert_memory_equal(out + 37, ip, 16);
	assert_memory_equal(out + 53, "\x16\x2e\x01", 3);
	frame_peer_present(out, k, ip, 65535,
			   PEER_PRESENT_MESH_PEER | PEER_PRESENT_PROBER | PEER_PRESENT_NOT_IDEAL);
	assert_memory_equal(out + 53, "\xff\xff\x0e", 3);
}

/* §14.2 Pong reply and item 37's bytes. */
static void test_pong(void **state)
{
	(void)state;
	uint8_t out[13];

	assert_int_equal(frame_pong(out, (const uint8_t *)"\x01\x02\x03\x04\x05\x06\x07\x2a"), 13);
	assert_memory_equal(out, "\x13\x00\x00\x00\x08\x01\x02\x03\x04\x05\x06\x07\x2a", 13);
	frame_pong(out, (const uint8_t *)"\x01\x02\x03\x04\x05\x06\x07\x08");
	assert_memory_equal(out, "\x13\x00\x00\x00\x08\x01\x02\x03\x04\x05\x06\x07\x08", 13);
}

static void test_keep_alive(void **state)
{
	(void)state;
	uint8_t out[5];

	assert_int_equal(frame_keep_alive(out), 5);
	assert_memory_equal(out, "\x06\x00\x00\x00\x00", 5);
}

/* §14.2 Restarting(1 ms, 2 ms), item 40's bytes. */
static void test_restarting(void **state)
{
	(void)state;
	uint8_t out[13];

	assert_int_equal(frame_restarting(out, 1, 2), 13);
	assert_memory_equal(out, "\x15\x00\x00\x00\x08\x00\x00\x00\x01\x00\x00\x00\x02", 13);
	frame_restarting(out, 0xdeadbeef, 0x01020304);
	assert_memory_equal(out + 5, "\xde\xad\xbe\xef\x01\x02\x03\x04", 8);
}

/* §7.4 / §14.3: disco iff len >= 62 and the 6-byte magic leads. */
static void test_is_disco(void **state)
{
	(void)state;
	uint8_t p[100];

	memset(p, 0, sizeof p);
	memcpy(p, "\x54\x53\xf0\x9f\x92\xac", 6);
	assert_true(frame_is_disco(p, 62));
	assert_true(frame_is_disco(p, 100));
	assert_false(frame_is_disco(p, 61));
	assert_false(frame_is_disco(p, 6));
	assert_false(frame_is_disco(p, 0));
	p[5] = 0xad;
	assert_false(frame_is_disco(p, 62));
	p[5] = 0xac;
	p[0] = 0x55;
	assert_false(frame_is_disco(p, 62));
}

static void test_constants(void **state)
{
	(void)state;
	assert_int_equal(FRAME_HEADER_LEN, 5);
	assert_int_equal(DERP_MAX_PACKET, 65536);
	assert_int_equal(CLIENTINFO_MIN, 56);
	assert_int_equal(CLIENTINFO_MAX, 262144);
	assert_int_equal(PING_MIN, 8);
	assert_int_equal(PING_MAX, 1000);
	assert_int_equal(DISCO_MIN_LEN, 62);
	assert_memory_equal(DERP_MAGIC, "\x44\x45\x52\x50\xf0\x9f\x94\x91", DERP_MAGIC_LEN);
	assert_memory_equal(DISCO_MAGIC, "\x54\x53\xf0\x9f\x92\xac", DISCO_MAGIC_LEN);
	assert_int_equal(FRAME_FORWARD_PACKET, 0x0a);
	assert_int_equal(FRAME_WATCH_CONNS, 0x10);
	assert_int_equal(FRAME_RESTARTING, 0x15);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_read_header),
		cmocka_unit_test(test_write_header),
		cmocka_unit_test(test_write_header_at_boundary),
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_server_key),
		cmocka_unit_test(test_peer_gone),
		cmocka_unit_test(test_peer_present),
		cmocka_unit_test(test_pong),
		cmocka_unit_test(test_keep_alive),
		cmocka_unit_test(test_restarting),
		cmocka_unit_test(test_is_disco),
		cmocka_unit_test(test_constants),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
