/* WebSocket codec (server/websocket.h): RFC 6455's worked examples, every header error,
 * masking at any offset, close payloads, and the in-place stream decoder fed whole, byte by
 * byte and at random split points. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "server/websocket.h"

static const uint8_t MASK[4] = { 0x37, 0xfa, 0x21, 0x3d }; /* RFC 6455 §5.7 */

/* RFC 6455 §1.3: the handshake example (base64 of SHA-1 b37a4f2c...bec4ea). */
static void test_accept_key(void **state)
{
	(void)state;
	char out[29];
	const char *k = "dGhlIHNhbXBsZSBub25jZQ==";

	assert_int_equal(ws_accept_key(k, strlen(k), out), 0);
	assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
	/* another key, computed independently (Python: base64(sha1(key + GUID))) */
	k = "x3JJHMbDL1EzLkh9GBhXDw==";
	assert_int_equal(ws_accept_key(k, strlen(k), out), 0);
	assert_string_equal(out, "HSmrc0sMlYUkAGmm5OPpG2HaGWk=");
	/* the empty key still hashes (validity is ws_key_valid's job) */
	assert_int_equal(ws_accept_key("", 0, out), 0);
	assert_int_equal(strlen(out), 28);
}

static void test_key_valid(void **state)
{
	(void)state;
	static const char *good[] = { "dGhlIHNhbXBsZSBub25jZQ==", "  dGhlIHNhbXBsZSBub25jZQ==\t",
				      "AAAAAAAAAAAAAAAAAAAAAA==", "++++////++++////++++//==",
				      "dGhlIHNhbXBs\r\nZSBub25jZQ==" };
	static const char *bad[] = { "", "dGhlIHNhbXBsZSBub25jZQ", "dGhlIHNhbXBsZSBub25jZQ=",
				     "dGhlIHNhbXBsZSBub25jZQ===", "dGhlIHNhbXBsZSBub25jZ===",
				     "dGhlIHNhbXBsZSBub25j", "dGhlIHNhbXBsZSBub25jZQ-=",
				     "dGhlIHNhbXBsZSBub2 jZQ==", "dGhlIHNhbXBsZSBub25jZQAA",
				     "dGhlIHNhbXBsZSBub25jZQ==AAAA", "dGhl_HNhbXBsZSBub25jZQ==" };
	for (size_t i = 0; i < sizeof good / sizeof *good; i++)
		assert_true(ws_key_valid(good[i], strlen(good[i])));
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
		if (ws_key_valid(bad[i], strlen(bad[i])))
			fail_msg("accepted bad key %zu: %s", i, bad[i]);
}

static void test_header_token(void **state)
{
	(void)state;
	size_t tl = 0;
	const char *v = "chat, DERP ,x";
	const char *t = ws_header_token(v, strlen(v), "derp", &tl);

	assert_non_null(t);
	assert_int_equal(tl, 4);
	assert_memory_equal(t, "DERP", 4);
	v = "derp";
	assert_ptr_equal(ws_header_token(v, 4, "derp", &tl), v);
	assert_null(ws_header_token("derpx, xderp", 12, "derp", &tl));
	assert_null(ws_header_token("", 0, "derp", &tl));
	assert_null(ws_header_token("de rp", 5, "derp", &tl));
	v = ",,\t derp\t,";
	assert_ptr_equal(ws_header_token(v, strlen(v), "derp", &tl), v + 4);
	/* only len bytes are looked at */
	assert_null(ws_header_token("chat, derp", 6, "derp", &tl));
}

/* RFC 6455 §5.7 examples. */
static void test_rfc_examples(void **state)
{
	(void)state;
	struct ws_frame f;
	static const uint8_t hello[] = { 0x81, 0x05, 'H', 'e', 'l', 'l', 'o' };
	static const uint8_t mhello[] = { 0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d,
					  0x7f, 0x9f, 0x4d, 0x51, 0x58 };
	static const uint8_t frag1[] = { 0x01, 0x03, 'H', 'e', 'l' };
	static const uint8_t frag2[] = { 0x80, 0x02, 'l', 'o' };
	static const uint8_t ping[] = { 0x89, 0x05, 'H', 'e', 'l', 'l', 'o' };
	static const uint8_t mpong[] = { 0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d,
					 0x7f, 0x9f, 0x4d, 0x51, 0x58 };
	static const uint8_t b256[] = { 0x82, 0x7e, 0x01, 0x00 };
	static const uint8_t b64k[] = { 0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0 };
	uint8_t buf[16];

	assert_int_equal(ws_parse_header(hello, sizeof hello, 0, &f), 2);
	assert_int_equal(f.fin, 1);
	assert_int_equal(f.opcode, WS_OP_TEXT);
	assert_int_equal(f.masked, 0);
	assert_true(f.len == 5);
	/* a server must refuse it: client frames are masked */
	assert_int_equal(ws_parse_header(hello, sizeof hello, 1, &f), -1);

	assert_int_equal(ws_parse_header(mhello, sizeof mhello, 1, &f), 6);
	assert_int_equal(f.masked, 1);
	assert_memory_equal(f.mask, MASK, 4);
	assert_true(f.len == 5);
	memcpy(buf, mhello + 6, 5);
	ws_unmask(buf, 5, f.mask, 0);
	assert_memory_equal(buf, "Hello", 5);
	/* the same in two pieces, the second knowing its offset */
	memcpy(buf, mhello + 6, 5);
	ws_unmask(buf, 2, f.mask, 0);
	ws_unmask(buf + 2, 3, f.mask, 2);
	assert_memory_equal(buf, "Hello", 5);

	assert_int_equal(ws_parse_header(frag1, sizeof frag1, 0, &f), 2);
	assert_int_equal(f.fin, 0);
	assert_int_equal(f.opcode, WS_OP_TEXT);
	assert_int_equal(ws_parse_header(frag2, sizeof frag2, 0, &f), 2);
	assert_int_equal(f.fin, 1);
	assert_int_equal(f.opcode, WS_OP_CONT);

	assert_int_equal(ws_parse_header(ping, sizeof ping, 0, &f), 2);
	assert_int_equal(f.opcode, WS_OP_PING);
	assert_int_equal(ws_parse_header(mpong, sizeof mpong, 1, &f), 6);
	assert_int_equal(f.opcode, WS_OP_PONG);

	assert_int_equal(ws_parse_header(b256, sizeof b256, 0, &f), 4);
	assert_true(f.len == 256);
	assert_int_equal(f.opcode, WS_OP_BINARY);
	assert_int_equal(ws_parse_header(b64k, sizeof b64k, 0, &f), 10);
	assert_true(f.len == 65536);

	/* the server side of the same examples */
	assert_int_equal(ws_build_header(buf, WS_OP_TEXT, 1, 5), 2);
	assert_memory_equal(buf, hello, 2);
	assert_int_equal(ws_build_header(buf, WS_OP_TEXT, 0, 3), 2);
	assert_memory_equal(buf, frag1, 2);
	assert_int_equal(ws_build_header(buf, WS_OP_CONT, 1, 2), 2);
	assert_memory_equal(buf, frag2, 2);
	assert_int_equal(ws_build_header(buf, WS_OP_BINARY, 1, 256), 4);
	assert_memory_equal(buf, b256, 4);
	assert_int_equal(ws_build_header(buf, WS_OP_BINARY, 1, 65536), 10);
	assert_memory_equal(buf, b64k, 10);
	assert_int_equal(ws_build_masked_header(buf, WS_OP_TEXT, 1, 5, MASK), 6);
	assert_memory_equal(buf, mhello, 6);
}

static void test_lengths(void **state)
{
	(void)state;
	static const uint64_t lens[] = { 0, 1, 125, 126, 127, 65535, 65536, 1u << 31,
					 0x7fffffffffffffffull };
	uint8_t h[14];
	struct ws_frame f;

	for (size_t i = 0; i < sizeof lens / sizeof *lens; i++) {
		size_t want = lens[i] < 126 ? 2 : lens[i] <= 0xffff ? 4 : 10;
		size_t n = ws_build_header(h, WS_OP_BINARY, 1, lens[i]);
		assert_int_equal(n, want);
		assert_int_equal(ws_parse_header(h, n, 0, &f), (int)n);
		assert_true(f.len == lens[i]);
		/* every shorter prefix asks for more */
		for (size_t k = 0; k < n; k++)
			assert_int_equal(ws_parse_header(h, k, 0, &f), 0);
		n = ws_build_masked_header(h, WS_OP_BINARY, 0, lens[i], MASK);
		assert_int_equal(n, want + 4);
		assert_int_equal(ws_parse_header(h, n, 1, &f), (int)n);
		assert_true(f.len == lens[i]);
		assert_int_equal(f.fin, 0);
		assert_memory_equal(f.mask, MASK, 4);
		for (size_t k = 0; k < n; k++)
			assert_int_equal(ws_parse_header(h, k, 1, &f), 0);
	}
	/* a non-minimal length encoding is tolerated, as upstream's library does */
	static const uint8_t nonmin[] = { 0x82, 0xfe, 0x00, 0x05, 1, 2, 3, 4 };
	assert_int_equal(ws_parse_header(nonmin, sizeof nonmin, 1, &f), 8);
	assert_true(f.len == 5);
}

static void test_header_errors(void **state)
{
	(void)state;
	struct ws_frame f;
	uint8_t h[14];

	/* RSV1, RSV2, RSV3: no extension is ever negotiated */
	for (int bit = 4; bit <= 6; bit++) {
		uint8_t b[] = { (uint8_t)(0x82 | 1 << bit), 0x80, 1, 2, 3, 4 };
		assert_int_equal(ws_parse_header(b, sizeof b, 1, &f), -1);
		assert_int_equal(ws_parse_header(b, 1 + 1, 1, &f), -1); /* known from 2 bytes */
	}
	/* reserved opcodes */
	for (int op = 0; op < 16; op++) {
		uint8_t b[] = { (uint8_t)(0x80 | op), 0x80, 1, 2, 3, 4 };
		int known = op <= 2 || (op >= 8 && op <= 10);
		assert_int_equal(ws_parse_header(b, sizeof b, 1, &f), known ? 6 : -1);
	}
	/* control frames: at most 125 bytes, never fragmented */
	for (int op = 8; op <= 10; op++) {
		uint8_t b[] = { (uint8_t)(0x80 | op), 0x80 | 125, 1, 2, 3, 4 };
		assert_int_equal(ws_parse_header(b, sizeof b, 1, &f), 6);
		b[1] = 0x80 | 126;
		assert_int_equal(ws_parse_header(b, 2, 1, &f), -1);
		b[1] = 0x80 | 127;
		assert_int_equal(ws_parse_header(b, 2, 1, &f), -1);
		b[0] = (uint8_t)op; /* FIN clear */
		b[1] = 0x80;
		assert_int_equal(ws_parse_header(b, sizeof b, 1, &f), -1);
	}
	/* 64-bit length with the top bit set */
	size_t n = ws_build_masked_header(h, WS_OP_BINARY, 1, 0x8000000000000000ull, MASK);
	assert_int_equal(ws_parse_header(h, n, 1, &f), -1);
	n = ws_build_masked_header(h, WS_OP_BINARY, 1, UINT64_MAX, MASK);
	assert_int_equal(ws_parse_header(h, n, 1, &f), -1);
	/* unmasked client frame, for every length form */
	static const uint64_t lens[] = { 3, 300, 70000 };
	for (size_t i = 0; i < 3; i++) {
		n = ws_build_header(h, WS_OP_BINARY, 1, lens[i]);
		assert_int_equal(ws_parse_header(h, n, 1, &f), -1);
		assert_int_equal(ws_parse_header(h, n, 0, &f), (int)n);
	}
}

static void test_unmask(void **state)
{
	(void)state;
	uint8_t data[200], ref[200];

	for (size_t n = 0; n <= 150; n++) {
		for (uint64_t off = 0; off < 9; off++) {
			for (size_t i = 0; i < n; i++)
				data[i + 1] = ref[i] = (uint8_t)(i * 7 + n);
			ws_unmask(data + 1, n, MASK, off); /* misaligned on purpose */
			for (size_t i = 0; i < n; i++)
				ref[i] ^= MASK[(off + i) % 4];
			assert_memory_equal(data + 1, ref, n);
		}
	}
	/* XOR is its own inverse */
	memcpy(data, "Hello, world", 12);
	ws_unmask(data, 12, MASK, 3);
	ws_unmask(data, 12, MASK, 3);
	assert_memory_equal(data, "Hello, world", 12);
}

static void test_close_payloads(void **state)
{
	(void)state;
	uint8_t p[125];
	char reason[300];
	uint16_t st = 0;

	assert_int_equal(ws_build_close(p, 1008, "client must speak the derp subprotocol"), 2 + 38);
	assert_int_equal(p[0], 0x03);
	assert_int_equal(p[1], 0xf0);
	assert_memory_equal(p + 2, "client must speak the derp subprotocol", 38);
	assert_int_equal(ws_build_close(p, 1011, "closing"), 9);
	assert_int_equal(ws_build_close(p, 1000, NULL), 2);
	assert_int_equal(ws_build_close(p, 0, "ignored"), 0);
	memset(reason, 'x', sizeof reason - 1);
	reason[sizeof reason - 1] = '\0';
	assert_int_equal(ws_build_close(p, 1000, reason), 125);
	/* "é" (2 bytes) straddling the cut at 123 is left out whole */
	memset(reason, 'a', 122);
	memcpy(reason + 122, "\xc3\xa9tail", 7);
	assert_int_equal(ws_build_close(p, 1000, reason), 2 + 122);

	assert_int_equal(ws_parse_close(p, 0, &st), 0);
	assert_int_equal(st, WS_CLOSE_NO_STATUS);
	assert_int_equal(ws_parse_close(p, 1, &st), -1);
	static const struct { uint16_t code; int ok; } codes[] = {
		{ 999, 0 }, { 1000, 1 }, { 1001, 1 }, { 1003, 1 }, { 1004, 0 }, { 1005, 0 },
		{ 1006, 0 }, { 1007, 1 }, { 1011, 1 }, { 1014, 1 }, { 1015, 0 }, { 2999, 0 },
		{ 3000, 1 }, { 4999, 1 }, { 5000, 0 }, { 0, 0 }, { 65535, 0 },
	};
	for (size_t i = 0; i < sizeof codes / sizeof *codes; i++) {
		uint8_t b[4] = { (uint8_t)(codes[i].code >> 8), (uint8_t)codes[i].code, 'o', 'k' };
		int r = ws_parse_close(b, 4, &st);
		assert_int_equal(r, codes[i].ok ? 0 : -1);
		if (codes[i].ok)
			assert_int_equal(st, codes[i].code);
	}
	/* the reason must be UTF-8 (RFC 6455 7.1.6) */
	static const struct { const char *reason; int ok; } reasons[] = {
		{ "bye", 1 }, { "gr\xc3\xbc\xc3\x9f", 1 }, { "\xe2\x82\xac", 1 },
		{ "\xf0\x9f\x92\xac", 1 }, { "\xff", 0 }, { "\xc3", 0 }, { "\xc0\xaf", 0 },
		{ "\xe0\x80\xaf", 0 }, { "\xed\xa0\x80", 0 }, { "\xf4\x90\x80\x80", 0 },
		{ "\x80", 0 }, { "ok\xe2\x82", 0 },
	};
	for (size_t i = 0; i < sizeof reasons / sizeof *reasons; i++) {
		uint8_t b[16] = { 0x03, 0xe8 };
		size_t rl = strlen(reasons[i].reason);
		memcpy(b + 2, reasons[i].reason, rl);
		assert_int_equal(ws_parse_close(b, 2 + rl, &st), reasons[i].ok ? 0 : -2);
	}
}

/* ---- stream decoder ---- */

/* Append a masked client frame to buf at *len. */
static void put_frame(uint8_t *buf, size_t *len, uint8_t op, int fin, const void *payload,
		      size_t n)
{
	uint8_t m[4] = { (uint8_t)(*len * 13 + 1), 0x5a, (uint8_t)n, 0xc3 };
	*len += ws_build_masked_header(buf + *len, op, fin, n, m);
	memcpy(buf + *len, payload, n);
	ws_unmask(buf + *len, n, m, 0);
	*len += n;
}

/* Decode wire[0..n) in chunks of at most step bytes (0 = whole) through a scratch buffer
 * decoded in place, answering control frames by recording them. Returns the last result;
 * out gets the data stream. */
struct dec_out { uint8_t data[70000]; size_t len; int pings, pongs, closes; uint8_t last_ctl[125];
		 size_t last_ctl_len; };

static int run_decoder(struct ws_decoder *d, const uint8_t *wire, size_t n, size_t step,
		       struct dec_out *o)
{
	static uint8_t scratch[140000];
	size_t pos = 0;
	int r = WS_DEC_MORE;

	memset(o, 0, sizeof *o);
	while (pos < n) {
		size_t k = step && n - pos > step ? step : n - pos, off = 0;
		memcpy(scratch, wire + pos, k);
		pos += k;
		while (off < k) {
			size_t used = 0, made = 0;
			/* in place: output lands at the front of the unread part */
			r = ws_decode(d, scratch + off, k - off, scratch + off, &used, &made);
			assert_true(made <= used);
			memcpy(o->data + o->len, scratch + off, made);
			o->len += made;
			off += used;
			if (r == WS_DEC_ERROR)
				return r;
			if (r == WS_DEC_CONTROL) {
				o->pings += d->ctl_opcode == WS_OP_PING;
				o->pongs += d->ctl_opcode == WS_OP_PONG;
				o->closes += d->ctl_opcode == WS_OP_CLOSE;
				memcpy(o->last_ctl, d->ctl, d->ctl_len);
				o->last_ctl_len = d->ctl_len;
			} else {
				assert_int_equal(off, k); /* MORE means everything was used */
			}
		}
	}
	return r;
}

static void test_decode_stream(void **state)
{
	(void)state;
	static uint8_t wire[80000];
	static uint8_t payload[40000];
	static struct dec_out o;
	size_t n = 0, want = 0;
	struct ws_decoder d;

	for (size_t i = 0; i < sizeof payload; i++)
		payload[i] = (uint8_t)(i * 31 + (i >> 8));
	/* one small message, one 16-bit-length message fragmented in three with a ping and a
	 * pong in the middle, empty frames, a 32768-byte message (the limit exactly) */
	put_frame(wire, &n, WS_OP_BINARY, 1, payload, 5);
	want += 5;
	put_frame(wire, &n, WS_OP_BINARY, 0, payload + 5, 300);
	put_frame(wire, &n, WS_OP_PING, 1, "ping!", 5);
	put_frame(wire, &n, WS_OP_CONT, 0, payload + 305, 0);
	put_frame(wire, &n, WS_OP_PONG, 1, "", 0);
	put_frame(wire, &n, WS_OP_CONT, 1, payload + 305, 1000);
	want += 1300;
	put_frame(wire, &n, WS_OP_BINARY, 1, payload, 0);
	put_frame(wire, &n, WS_OP_BINARY, 1, payload + 1305, WS_READ_LIMIT);
	want += WS_READ_LIMIT;
	put_frame(wire, &n, WS_OP_CLOSE, 1, "\x03\xe8" "bye", 5);

	static const size_t steps[] = { 0, 1, 2, 3, 7, 13, 100, 4096 };
	for (size_t s = 0; s < sizeof steps / sizeof *steps; s++) {
		ws_decoder_init(&d);
		int r = run_decoder(&d, wire, n, steps[s], &o);
		assert_int_equal(r, WS_DEC_CONTROL);
		assert_int_equal(o.len, want);
		assert_memory_equal(o.data, payload, want);
		assert_int_equal(o.pings, 1);
		assert_int_equal(o.pongs, 1);
		assert_int_equal(o.closes, 1);
		assert_int_equal(o.last_ctl_len, 5);
		assert_memory_equal(o.last_ctl, "\x03\xe8" "bye", 5);
	}
	/* random split points */
	srand(7);
	for (int t = 0; t < 200; t++) {
		ws_decoder_init(&d);
		int r = run_decoder(&d, wire, n, 1 + (size_t)rand() % 9000, &o);
		assert_int_equal(r, WS_DEC_CONTROL);
		assert_int_equal(o.len, want);
		assert_memory_equal(o.data, payload, want);
	}
}

/* Decode wire whole; return the result and the error status. */
static int decode_all(const uint8_t *wire, size_t n, uint64_t limit, uint16_t *status,
		      size_t *out_len)
{
	static struct dec_out o;
	struct ws_decoder d;

	ws_decoder_init(&d);
	d.limit = limit;
	int r = run_decoder(&d, wire, n, 0, &o);
	*status = r == WS_DEC_ERROR ? d.err_status : 0;
	if (r == WS_DEC_ERROR)
		assert_non_null(d.err_reason);
	*out_len = o.len;
	return r;
}

static void test_decode_errors(void **state)
{
	(void)state;
	static uint8_t wire[70000], big[40000];
	size_t n, out;
	uint16_t st;

	/* text message: 1003, nothing of it delivered */
	n = 0;
	put_frame(wire, &n, WS_OP_BINARY, 1, "ok", 2);
	put_frame(wire, &n, WS_OP_TEXT, 1, "hi", 2);
	assert_int_equal(decode_all(wire, n, WS_READ_LIMIT, &st, &out), WS_DEC_ERROR);
	assert_int_equal(st, WS_CLOSE_UNSUPPORTED);
	assert_int_equal(out, 2);
	/* continuation with no message open */
	n = 0;
	put_frame(wire, &n, WS_OP_CONT, 1, "x", 1);
	assert_int_equal(decode_all(wire, n, WS_READ_LIMIT, &st, &out), WS_DEC_ERROR);
	assert_int_equal(st, WS_CLOSE_PROTOCOL);
	/* a finished message cannot be continued */
	n = 0;
	put_frame(wire, &n, WS_OP_BINARY, 1, "a", 1);
	put_frame(wire, &n, WS_OP_CONT, 1, "b", 1);
	assert_int_equal(decode_all(wire, n, WS_READ_LIMIT, &st, &out), WS_DEC_ERROR);
	assert_int_equal(st, WS_CLOSE_PROTOCOL);
	/* a new message while one is open */
	n = 0;
	put_frame(wire, &n, WS_OP_BINARY, 0, "a", 1);
	put_frame(wire, &n, WS_OP_BINARY, 1, "b", 1);
	assert_int_equal(decode_all(wire, n, WS_READ_LIMIT, &st, &out), WS_DEC_ERROR);
	assert_int_equal(st, WS_CLOSE_PROTOCOL);
	/* unmasked, RSV, reserved opcode, fragmented ping, long ping */
	static const uint8_t unmasked[] = { 0x82, 0x01, 'x' };
	static const uint8_t rsv[] = { 0xc2, 0x81, 1, 2, 3, 4, 'x' };
	static const uint8_t resop[] = { 0x83, 0x81, 1, 2, 3, 4, 'x' };
	static const uint8_t fragping[] = { 0x09, 0x81, 1, 2, 3, 4, 'x' };
	static const uint8_t longping[] = { 0x89, 0xfe, 0x00, 0x7e };
	static const uint8_t top[] = { 0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4 };
	const struct { const uint8_t *b; size_t n; } bad[] = {
		{ unmasked, sizeof unmasked }, { rsv, sizeof rsv }, { resop, sizeof resop },
		{ fragping, sizeof fragping }, { longping, sizeof longping }, { top, sizeof top },
	};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		assert_int_equal(decode_all(bad[i].b, bad[i].n, WS_READ_LIMIT, &st, &out),
				 WS_DEC_ERROR);
		assert_int_equal(st, WS_CLOSE_PROTOCOL);
		assert_int_equal(out, 0);
	}
	/* bad close payloads: one byte, reserved codes */
	static const char *closes[] = { "\x03", "\x03\xed", "\x03\xee", "\x00\x00", "\x13\x88" };
	static const size_t closelen[] = { 1, 2, 2, 2, 2 };
	for (size_t i = 0; i < 5; i++) {
		n = 0;
		put_frame(wire, &n, WS_OP_CLOSE, 1, closes[i], closelen[i]);
		assert_int_equal(decode_all(wire, n, WS_READ_LIMIT, &st, &out), WS_DEC_ERROR);
		assert_int_equal(st, WS_CLOSE_PROTOCOL);
	}
	/* a close whose reason is not UTF-8 -> 1007 */
	n = 0;
	put_frame(wire, &n, WS_OP_CLOSE, 1, "\x03\xe8\xff", 3);
	assert_int_equal(decode_all(wire, n, WS_READ_LIMIT, &st, &out), WS_DEC_ERROR);
	assert_int_equal(st, WS_CLOSE_INVALID_DATA);
	/* an empty close is fine */
	n = 0;
	put_frame(wire, &n, WS_OP_CLOSE, 1, "", 0);
	assert_int_equal(decode_all(wire, n, WS_READ_LIMIT, &st, &out), WS_DEC_CONTROL);

	/* the read limit: one byte over in one frame, or summed over fragments -> 1009 */
	n = 0;
	put_frame(wire, &n, WS_OP_BINARY, 1, big, WS_READ_LIMIT + 1);
	assert_int_equal(decode_all(wire, n, WS_READ_LIMIT, &st, &out), WS_DEC_ERROR);
	assert_int_equal(st, WS_CLOSE_TOO_BIG);
	n = 0;
	put_frame(wire, &n, WS_OP_BINARY, 0, big, 20000);
	put_frame(wire, &n, WS_OP_CONT, 1, big, 12769);
	assert_int_equal(decode_all(wire, n, WS_READ_LIMIT, &st, &out), WS_DEC_ERROR);
	assert_int_equal(st, WS_CLOSE_TOO_BIG);
	/* ... which is per message, and 0 means none */
	n = 0;
	put_frame(wire, &n, WS_OP_BINARY, 1, big, 20000);
	put_frame(wire, &n, WS_OP_BINARY, 1, big, 20000);
	assert_int_equal(decode_all(wire, n, WS_READ_LIMIT, &st, &out), WS_DEC_MORE);
	assert_int_equal(out, 40000);
	n = 0;
	put_frame(wire, &n, WS_OP_BINARY, 1, big, 40000);
	assert_int_equal(decode_all(wire, n, 0, &st, &out), WS_DEC_MORE);
	assert_int_equal(out, 40000);
}

/* A frame split at every possible point across two calls still decodes, and a header split
 * is carried inside the decoder (the caller may drop consumed bytes). */
static void test_decode_split_everywhere(void **state)
{
	(void)state;
	uint8_t wire[400], a[400], out[400];
	uint8_t payload[300];
	size_t n = 0;

	for (size_t i = 0; i < sizeof payload; i++)
		payload[i] = (uint8_t)(255 - i);
	put_frame(wire, &n, WS_OP_BINARY, 0, payload, 200);
	put_frame(wire, &n, WS_OP_PING, 1, "p", 1);
	put_frame(wire, &n, WS_OP_CONT, 1, payload + 200, 100);
	for (size_t cut = 0; cut <= n; cut++) {
		struct ws_decoder d;
		size_t got = 0, used, made, off;
		int r, ctl = 0;
		ws_decoder_init(&d);
		/* first part */
		memcpy(a, wire, cut);
		for (off = 0; off < cut; off += used) {
			r = ws_decode(&d, a + off, cut - off, out + got, &used, &made);
			got += made;
			assert_int_not_equal(r, WS_DEC_ERROR);
			ctl += r == WS_DEC_CONTROL;
		}
		memcpy(a, wire + cut, n - cut);
		for (off = 0; off < n - cut; off += used) {
			r = ws_decode(&d, a + off, n - cut - off, out + got, &used, &made);
			got += made;
			assert_int_not_equal(r, WS_DEC_ERROR);
			ctl += r == WS_DEC_CONTROL;
		}
		assert_int_equal(ctl, 1);
		assert_int_equal(got, 300);
		assert_memory_equal(out, payload, 300);
		assert_int_equal(d.in_message, 0);
		assert_int_equal(d.in_frame, 0);
		assert_int_equal(d.hlen, 0);
	}
	/* nothing in, nothing out */
	struct ws_decoder d;
	size_t used = 9, made = 9;
	ws_decoder_init(&d);
	assert_int_equal(ws_decode(&d, wire, 0, out, &used, &made), WS_DEC_MORE);
	assert_int_equal(used, 0);
	assert_int_equal(made, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_accept_key),
		cmocka_unit_test(test_key_valid),
		cmocka_unit_test(test_header_token),
		cmocka_unit_test(test_rfc_examples),
		cmocka_unit_test(test_lengths),
		cmocka_unit_test(test_header_errors),
		cmocka_unit_test(test_unmask),
		cmocka_unit_test(test_close_payloads),
		cmocka_unit_test(test_decode_stream),
		cmocka_unit_test(test_decode_errors),
		cmocka_unit_test(test_decode_split_everywhere),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
