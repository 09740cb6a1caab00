/* Malformed input (PROTOCOL.md §13, §6.2-6.3, §7; CONFORMANCE 10, 11): each bad
 * connection is closed, promptly (well inside the 10 s handshake deadline), and a client
 * pair connected before keeps relaying afterwards. Unknown frames are skipped.
 * One server for the whole file: errors on one connection never affect others. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/key.h"
#include "test/e2e/harness.h"

#define CLOSE_MS 5000 /* a rule-based close, not the 10 s handshake timeout */

static struct harness_server *srv;

enum stage {
	PRE_INFO,  /* after the 101 and ServerKey, before any ClientInfo */
	BAD_JSON,  /* ClientInfo carrying .json */
	STEADY,    /* after a full handshake (with .json as ClientInfo if set) */
};

struct fixture;
struct mcase {
	const char *name;
	enum stage stage;
	const char *json;
	void (*act)(struct fixture *f, struct derp_client *c);
};

struct fixture {
	const struct mcase *mc;
	struct derp_client *a, *b; /* the bystander pair */
	uint8_t priv[32], pub[32]; /* the victim's key */
};

static int group_setup(void **state)
{
	(void)state;
	srv = harness_start(NULL);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	harness_stop(srv);
	return 0;
}

static int fixture_setup(void **state)
{
	struct fixture *f = calloc(1, sizeof *f);

	f->mc = *state;
	f->a = harness_client(srv, NULL);
	f->b = harness_client(srv, NULL);
	harness_relay_check(f->a, f->b);
	key_generate(f->priv);
	key_public(f->pub, f->priv);
	*state = f;
	return 0;
}

static int fixture_teardown(void **state)
{
	struct fixture *f = *state;

	derp_client_close(f->a);
	derp_client_close(f->b);
	free(f);
	return 0;
}

/* The bystanders still relay, and heard nothing about the victim. */
static void bystanders_ok(struct fixture *f)
{
	harness_relay_check(f->a, f->b);
	harness_ping(f->a, 5000);
	harness_ping(f->b, 5000);
}

static void run_case(void **state)
{
	struct fixture *f = *state;
	const struct mcase *mc = f->mc;
	struct derp_client_opts o = harness_opts();
	struct derp_client *c;

	o.private_key = f->priv;
	o.info_json = mc->json;
	if (mc->stage == STEADY) {
		c = harness_client(srv, &o);
		harness_ping(c, 5000);
	} else {
		c = derp_client_open("127.0.0.1", srv->port, &o);
		if (!c)
			fail_msg("open: %s", derp_client_error());
		if (mc->stage == BAD_JSON)
			assert_int_equal(derp_client_send_info(c), 0);
	}
	if (mc->act)
		mc->act(f, c);
	harness_expect_closed(c, CLOSE_MS);
	derp_client_close(c);
	bystanders_ok(f);
}

/* ---- acts -------------------------------------------------------------------------- */

static void raw(struct derp_client *c, const void *b, size_t n)
{
	int r = derp_client_write_raw(c, b, n);

	/* the server may already have closed: a reset while writing is fine */
	assert_true(r == 0 || r == DERP_CLIENT_CLOSED);
}

static void frame(struct derp_client *c, uint8_t type, uint32_t len)
{
	static const uint8_t zero[70000];
	uint8_t h[5];

	frame_put_header(h, type, len);
	raw(c, h, 5);
	if (len)
		raw(c, zero, len);
}

/* Header announcing len, then only `send` payload bytes. */
static void frame_partial(struct derp_client *c, uint8_t type, uint32_t len, size_t send)
{
	static const uint8_t zero[4096];
	uint8_t h[5];

	frame_put_header(h, type, len);
	raw(c, h, 5);
	raw(c, zero, send);
}

static void act_first_send(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame(c, FRAME_SEND_PACKET, 32 + 5);
}
static void act_first_ping(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame(c, FRAME_PING, 8);
}
static void act_first_preferred(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame(c, FRAME_NOTE_PREFERRED, 1);
}
static void act_first_unknown(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame(c, 0x42, 3);
}
static void act_first_empty_info(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame(c, FRAME_CLIENT_INFO, 0);
}
static void act_info_55(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame(c, FRAME_CLIENT_INFO, 55);
}
static void act_info_56(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame(c, FRAME_CLIENT_INFO, 56);
}
static void act_info_box_15(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame(c, FRAME_CLIENT_INFO, 56 + 15);
}
/* > 262144 declared: closed without us sending the rest */
static void act_info_too_long(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame_partial(c, FRAME_CLIENT_INFO, CLIENTINFO_MAX + 1, 1000);
}
static void act_info_max_len(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame_partial(c, FRAME_CLIENT_INFO, 0xffffffffu, 1000);
}

static const char good_json[] = "{\"version\":2,\"CanAckPings\":false}";

/* A well-formed ClientInfo frame, then `spoil` applied to it. */
static void send_info_spoiled(struct fixture *f, struct derp_client *c, const uint8_t *seal_key,
			      void (*spoil)(uint8_t *fr, size_t n))
{
	uint8_t fr[256];
	size_t n = derp_client_build_info(fr, sizeof fr, f->priv, seal_key, good_json,
					  sizeof good_json - 1);

	assert_true(n > 0);
	if (spoil)
		spoil(fr, n);
	raw(c, fr, n);
}
static void act_info_wrong_server_key(struct fixture *f, struct derp_client *c)
{
	uint8_t k[32], p[32];

	key_generate(k);
	key_public(p, k);
	send_info_spoiled(f, c, p, NULL);
}
static void spoil_flip_tag(uint8_t *fr, size_t n)
{
	(void)n;
	fr[5 + 56] ^= 1;
}
static void spoil_flip_last(uint8_t *fr, size_t n)
{
	fr[n - 1] ^= 0x80;
}
static void spoil_zero_key(uint8_t *fr, size_t n)
{
	(void)n;
	memset(fr + 5, 0, 32);
}
static void spoil_other_key(uint8_t *fr, size_t n)
{
	uint8_t k[32];

	(void)n;
	key_generate(k);
	key_public(fr + 5, k);
}
static void spoil_nonce(uint8_t *fr, size_t n)
{
	(void)n;
	fr[5 + 32] ^= 0xff;
}
static void act_info_corrupt_tag(struct fixture *f, struct derp_client *c)
{
	send_info_spoiled(f, c, srv->pub, spoil_flip_tag);
}
static void act_info_corrupt_body(struct fixture *f, struct derp_client *c)
{
	send_info_spoiled(f, c, srv->pub, spoil_flip_last);
}
static void act_info_zero_client_key(struct fixture *f, struct derp_client *c)
{
	send_info_spoiled(f, c, srv->pub, spoil_zero_key);
}
static void act_info_other_client_key(struct fixture *f, struct derp_client *c)
{
	send_info_spoiled(f, c, srv->pub, spoil_other_key);
}
static void act_info_bad_nonce(struct fixture *f, struct derp_client *c)
{
	send_info_spoiled(f, c, srv->pub, spoil_nonce);
}

static void act_preferred_0(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame(c, FRAME_NOTE_PREFERRED, 0);
}
static void act_preferred_2(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame(c, FRAME_NOTE_PREFERRED, 2);
}
static void act_send_31(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame(c, FRAME_SEND_PACKET, 31);
}
static void act_send_0(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame(c, FRAME_SEND_PACKET, 0);
}
static void act_send_oversize_declared(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame_partial(c, FRAME_SEND_PACKET, 32 + DERP_MAX_PACKET + 1, 1000);
}
static void act_send_max_declared(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame_partial(c, FRAME_SEND_PACKET, 0xffffffffu, 1000);
}
static void act_forward(struct fixture *f, struct derp_client *c)
{
	assert_int_equal(derp_client_forward(c, derp_client_public_key(f->a),
					     derp_client_public_key(f->b), "hi", 2), 0);
}
static void act_forward_short(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame(c, FRAME_FORWARD_PACKET, 10);
}
static void act_watch(struct fixture *f, struct derp_client *c)
{
	(void)f;
	assert_int_equal(derp_client_watch_conns(c), 0);
}
static void act_watch_1(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame(c, FRAME_WATCH_CONNS, 1);
}
static void act_close_peer(struct fixture *f, struct derp_client *c)
{
	assert_int_equal(derp_client_close_peer(c, derp_client_public_key(f->a)), 0);
}
static void act_close_peer_31(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame(c, FRAME_CLOSE_PEER, 31);
}
static void act_ping_0(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame(c, FRAME_PING, 0);
}
static void act_ping_7(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame(c, FRAME_PING, 7);
}
static void act_ping_1001(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame(c, FRAME_PING, 1001);
}
static void act_ping_max_declared(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame_partial(c, FRAME_PING, 0xffffffffu, 100);
}
static void act_eof_mid_payload(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame_partial(c, FRAME_SEND_PACKET, 100, 50);
	assert_int_equal(derp_client_shutdown_write(c), 0);
}
static void act_eof_mid_header(struct fixture *f, struct derp_client *c)
{
	(void)f;
	raw(c, "\x04\x00\x00", 3);
	assert_int_equal(derp_client_shutdown_write(c), 0);
}
static void act_eof_mid_ping(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame_partial(c, FRAME_PING, 8, 4);
	assert_int_equal(derp_client_shutdown_write(c), 0);
}
static void act_eof_mid_info(struct fixture *f, struct derp_client *c)
{
	(void)f;
	frame_partial(c, FRAME_CLIENT_INFO, 100, 40);
	assert_int_equal(derp_client_shutdown_write(c), 0);
}

#define MESH_KEY_HEX "6d529e9d4ef632d22d4a4214cb49da8f1ba1b72697061fb24e312984c35ec8d8"

static const struct mcase cases[] = {
	/* §6.2: the first frame must be a well-formed ClientInfo */
	{ "first_frame_send_packet", PRE_INFO, NULL, act_first_send },
	{ "first_frame_ping", PRE_INFO, NULL, act_first_ping },
	{ "first_frame_note_preferred", PRE_INFO, NULL, act_first_preferred },
	{ "first_frame_unknown_type", PRE_INFO, NULL, act_first_unknown },
	{ "info_len_0", PRE_INFO, NULL, act_first_empty_info },
	{ "info_len_55", PRE_INFO, NULL, act_info_55 },
	{ "info_len_56_no_box", PRE_INFO, NULL, act_info_56 },
	{ "info_box_15_bytes", PRE_INFO, NULL, act_info_box_15 },
	{ "info_len_262145_partial", PRE_INFO, NULL, act_info_too_long },
	{ "info_len_4294967295_partial", PRE_INFO, NULL, act_info_max_len },
	{ "info_sealed_for_other_server", PRE_INFO, NULL, act_info_wrong_server_key },
	{ "info_box_tag_corrupt", PRE_INFO, NULL, act_info_corrupt_tag },
	{ "info_box_body_corrupt", PRE_INFO, NULL, act_info_corrupt_body },
	{ "info_box_nonce_changed", PRE_INFO, NULL, act_info_bad_nonce },
	{ "info_zero_client_key", PRE_INFO, NULL, act_info_zero_client_key },
	{ "info_client_key_not_sealer", PRE_INFO, NULL, act_info_other_client_key },
	{ "eof_mid_client_info", PRE_INFO, NULL, act_eof_mid_info },
	/* §6.3: invalid JSON */
	{ "json_empty", BAD_JSON, "", NULL },
	{ "json_unterminated", BAD_JSON, "{\"version\":2", NULL },
	{ "json_trailing_garbage", BAD_JSON, "{} x", NULL },
	{ "json_two_values", BAD_JSON, "{}{}", NULL },
	{ "json_trailing_comma", BAD_JSON, "{\"version\":2,}", NULL },
	{ "json_bare_word", BAD_JSON, "nul", NULL },
	/* §6.3: wrong JSON types */
	{ "json_array", BAD_JSON, "[]", NULL },
	{ "json_string", BAD_JSON, "\"hello\"", NULL },
	{ "json_number", BAD_JSON, "5", NULL },
	{ "json_true", BAD_JSON, "true", NULL },
	{ "json_version_string", BAD_JSON, "{\"version\":\"2\"}", NULL },
	{ "json_version_fraction", BAD_JSON, "{\"version\":2.5}", NULL },
	{ "json_version_2_0", BAD_JSON, "{\"version\":2.0}", NULL },
	{ "json_version_exponent", BAD_JSON, "{\"version\":1e2}", NULL },
	{ "json_version_object", BAD_JSON, "{\"version\":{}}", NULL },
	{ "json_canackpings_number", BAD_JSON, "{\"CanAckPings\":1}", NULL },
	{ "json_isprober_string", BAD_JSON, "{\"IsProber\":\"yes\"}", NULL },
	{ "json_appname_number", BAD_JSON, "{\"AppName\":5}", NULL },
	/* §6.3, CONFORMANCE 10, 11: bad mesh keys */
	{ "meshkey_too_short", BAD_JSON, "{\"version\":5,\"meshKey\":\"abcdefg\"}", NULL },
	{ "meshkey_68_hex", BAD_JSON, "{\"meshKey\":\"" MESH_KEY_HEX "abcd\"}", NULL },
	{ "meshkey_63_hex", BAD_JSON,
	  "{\"meshKey\":\"6d529e9d4ef632d22d4a4214cb49da8f1ba1b72697061fb24e312984c35ec8d\"}",
	  NULL },
	{ "meshkey_not_hex", BAD_JSON,
	  "{\"meshKey\":\"zz529e9d4ef632d22d4a4214cb49da8f1ba1b72697061fb24e312984c35ec8d8\"}",
	  NULL },
	{ "meshkey_empty", BAD_JSON, "{\"meshKey\":\"\"}", NULL },
	{ "meshkey_null", BAD_JSON, "{\"meshKey\":null}", NULL },
	{ "meshkey_number", BAD_JSON, "{\"MeshKey\":123}", NULL },
	/* §7: steady-state length and permission rules */
	{ "note_preferred_len_0", STEADY, NULL, act_preferred_0 },
	{ "note_preferred_len_2", STEADY, NULL, act_preferred_2 },
	{ "send_packet_len_0", STEADY, NULL, act_send_0 },
	{ "send_packet_len_31", STEADY, NULL, act_send_31 },
	{ "send_packet_65537_declared", STEADY, NULL, act_send_oversize_declared },
	{ "send_packet_4294967295_declared", STEADY, NULL, act_send_max_declared },
	{ "forward_packet_not_mesh", STEADY, NULL, act_forward },
	{ "forward_packet_short_not_mesh", STEADY, NULL, act_forward_short },
	{ "watch_conns_not_mesh", STEADY, NULL, act_watch },
	{ "watch_conns_other_mesh_key", STEADY, "{\"meshKey\":\"" MESH_KEY_HEX "\"}", act_watch },
	{ "watch_conns_len_1", STEADY, NULL, act_watch_1 },
	{ "close_peer_not_mesh", STEADY, NULL, act_close_peer },
	{ "close_peer_len_31", STEADY, NULL, act_close_peer_31 },
	{ "ping_len_0", STEADY, NULL, act_ping_0 },
	{ "ping_len_7", STEADY, NULL, act_ping_7 },
	{ "ping_len_1001", STEADY, NULL, act_ping_1001 },
	{ "ping_4294967295_declared", STEADY, NULL, act_ping_max_declared },
	{ "eof_mid_header", STEADY, NULL, act_eof_mid_header },
	{ "eof_mid_send_packet", STEADY, NULL, act_eof_mid_payload },
	{ "eof_mid_ping", STEADY, NULL, act_eof_mid_ping },
};

/* ---- not closed ---------------------------------------------------------------------- */

/* §5, §7.12: frames of unknown or server-to-client types are skipped, any length. */
static void test_unknown_frames_skipped(void **state)
{
	struct fixture *f = *state;
	struct derp_client *c = harness_client(srv, NULL);
	static const uint8_t types[] = { 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x16, 0x20, 0x7f, 0x80,
		0xff, FRAME_SERVER_KEY, FRAME_CLIENT_INFO, FRAME_SERVER_INFO, FRAME_RECV_PACKET,
		FRAME_KEEP_ALIVE, FRAME_PEER_GONE, FRAME_PEER_PRESENT, FRAME_PONG, FRAME_HEALTH,
		FRAME_RESTARTING };
	static const uint32_t lens[] = { 0, 1, 33, 1000, 65537, 70000 };

	for (size_t i = 0; i < sizeof types; i++)
		for (size_t j = 0; j < sizeof lens / sizeof lens[0]; j++)
			frame(c, types[i], lens[j]);
	harness_ping(c, 5000);
	harness_relay_check(c, f->a);
	derp_client_close(c);
	/* c had sent to a */
	struct derp_msg m;
	harness_recv(f->a, &m, 5000);
	assert_int_equal(m.kind, DERP_MSG_PEER_GONE);
	bystanders_ok(f);
}

/* An unknown frame with a huge declared length (32 MiB), streamed in pieces with
 * pauses, is discarded as it comes; the connection keeps working after it. */
static void test_unknown_huge_streamed(void **state)
{
	struct fixture *f = *state;
	struct derp_client *c = harness_client(srv, NULL);
	static uint8_t piece[65536];
	const uint32_t total = 32u << 20;
	uint8_t h[5];

	memset(piece, 0xee, sizeof piece);
	frame_put_header(h, 0x42, total);
	assert_int_equal(derp_client_write_raw(c, h, 5), 0);
	for (uint32_t sent = 0; sent < total; sent += sizeof piece) {
		assert_int_equal(derp_client_write_raw(c, piece, sizeof piece), 0);
		if (sent % (4u << 20) == 0)
			harness_relay_check(f->a, f->b); /* others are served meanwhile */
	}
	harness_ping(c, 5000);
	uint8_t pkt[10] = "after";
	assert_int_equal(derp_client_send(c, derp_client_public_key(f->b), pkt, sizeof pkt), 0);
	harness_expect_packet(f->b, derp_client_public_key(c), pkt, sizeof pkt, 5000);
	derp_client_close(c);
	struct derp_msg m;
	harness_recv(f->b, &m, 5000);
	assert_int_equal(m.kind, DERP_MSG_PEER_GONE);
	bystanders_ok(f);
}

/* §6.2: a client that never sends ClientInfo is closed at the 10 s deadline. */
static void test_handshake_timeout(void **state)
{
	struct fixture *f = *state;
	struct derp_client_opts o = harness_opts();
	struct derp_client *c = derp_client_open("127.0.0.1", srv->port, &o);
	struct derp_client *partial = derp_client_open("127.0.0.1", srv->port, &o);

	assert_non_null(c);
	assert_non_null(partial);
	raw(partial, "\x02\x00\x00\x00\x69", 5); /* a ClientInfo header, then nothing */
	int64_t ms = harness_expect_closed(c, 15000);
	print_message("handshake timeout: closed after %lld ms\n", (long long)ms);
	assert_true(ms >= 8000);
	harness_expect_closed(partial, 3000);
	derp_client_close(c);
	derp_client_close(partial);
	bystanders_ok(f);
}

int main(void)
{
	enum { NCASES = sizeof cases / sizeof cases[0] };
	struct CMUnitTest tests[NCASES + 3];

	for (size_t i = 0; i < NCASES; i++)
		tests[i] = (struct CMUnitTest){ cases[i].name, run_case, fixture_setup,
						fixture_teardown, (void *)&cases[i] };
	static const struct mcase plain = { "plain", STEADY, NULL, NULL };
	tests[NCASES] = (struct CMUnitTest){ "unknown_frames_skipped", test_unknown_frames_skipped,
					     fixture_setup, fixture_teardown, (void *)&plain };
	tests[NCASES + 1] = (struct CMUnitTest){ "unknown_huge_streamed",
						 test_unknown_huge_streamed, fixture_setup,
						 fixture_teardown, (void *)&plain };
	tests[NCASES + 2] = (struct CMUnitTest){ "handshake_timeout", test_handshake_timeout,
						 fixture_setup, fixture_teardown, (void *)&plain };
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
