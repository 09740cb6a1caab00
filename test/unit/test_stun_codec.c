/* STUN codec: byte-exact vectors written out from RFC 5389 and upstream's rules
 * (SERVER.md §7, CONFORMANCE.md 119-123). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stun/stun.h"

/* "00 01 ab" -> bytes; returns the count. Vectors below read like the RFC's figures. */
static size_t unhex(const char *s, uint8_t *out, size_t cap)
{
	size_t n = 0;

	while (*s) {
		if (*s == ' ' || *s == '\n') {
			s++;
			continue;
		}
		unsigned v;
		assert_int_equal(sscanf(s, "%2x", &v), 1);
		assert_true(n < cap);
		out[n++] = (uint8_t)v;
		s += 2;
	}
	return n;
}

static void fill(uint8_t *b, size_t n, uint8_t v) { memset(b, v, n); }

static struct sockaddr_storage sa4(const char *ip, int port)
{
	struct sockaddr_storage ss;
	struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

	memset(&ss, 0, sizeof ss);
	sin->sin_family = AF_INET;
	sin->sin_port = htons((uint16_t)port);
	assert_int_equal(inet_pton(AF_INET, ip, &sin->sin_addr), 1);
	return ss;
}

static struct sockaddr_storage sa6(const char *ip, int port)
{
	struct sockaddr_storage ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

	memset(&ss, 0, sizeof ss);
	sin6->sin6_family = AF_INET6;
	sin6->sin6_port = htons((uint16_t)port);
	assert_int_equal(inet_pton(AF_INET6, ip, &sin6->sin6_addr), 1);
	return ss;
}

/* Check a parsed address against text form and port. */
static void assert_addr(const struct sockaddr_storage *ss, const char *want_ip, int want_port)
{
	char ip[INET6_ADDRSTRLEN];

	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof ip);
		assert_int_equal(ntohs(sin->sin_port), want_port);
	} else {
		assert_int_equal(ss->ss_family, AF_INET6);
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof ip);
		assert_int_equal(ntohs(sin6->sin6_port), want_port);
	}
	assert_string_equal(ip, want_ip);
}

/* ---- 119: is it STUN ---- */
static void test_is(void **state)
{
	(void)state;
	uint8_t b[32];

	memset(b, 0, sizeof b);
	assert_false(stun_is(b, 0));
	assert_false(stun_is(b, 20)); /* 20 zero bytes: no cookie */
	unhex("21 12 a4 42", b + 4, 4);
	assert_false(stun_is(b, 19));
	assert_true(stun_is(b, 20));
	assert_true(stun_is(b, 23));
	b[0] = 0xf0;
	assert_false(stun_is(b, 20));
	b[0] = 0x40;
	assert_false(stun_is(b, 20));
	b[0] = 0x80;
	assert_false(stun_is(b, 20));
	b[0] = 0x20; /* non-zero, but not the top two bits */
	assert_true(stun_is(b, 20));
	b[7] = 0x43; /* one cookie bit off */
	assert_false(stun_is(b, 20));
}

/* SERVER.md §7 worked example: txid 01 x 12. */
static const char *req_01 =
	"00 01 00 14 21 12 a4 42 01 01 01 01 01 01 01 01 01 01 01 01"
	"80 22 00 08 74 61 69 6c 6e 6f 64 65 80 28 00 04 35 5f 9b 89";

static void test_build_request_exact(void **state)
{
	(void)state;
	uint8_t tx[12], want[64], got[STUN_REQUEST_LEN];

	fill(tx, 12, 0x01);
	size_t wn = unhex(req_01, want, sizeof want);
	assert_int_equal(wn, 40);
	assert_int_equal(stun_build_request(tx, got), 40);
	assert_memory_equal(got, want, 40);
}

/* 122: the XDP fast path relies on SOFTWARE first. */
static void test_attr_order_for_xdp(void **state)
{
	(void)state;
	uint8_t tx[12], req[STUN_REQUEST_LEN];

	for (int i = 0; i < 12; i++)
		tx[i] = (uint8_t)rand();
	stun_build_request(tx, req);
	assert_int_equal(req[20], 0x80);
	assert_int_equal(req[21], 0x22);
	assert_memory_equal(req + 24, "tailnode", 8);
}

/* 120: a request for a random txid parses back to the same txid. */
static void test_parse_request_roundtrip(void **state)
{
	(void)state;
	uint8_t tx[12], got[12], req[STUN_REQUEST_LEN];

	for (int round = 0; round < 1000; round++) {
		for (int i = 0; i < 12; i++)
			tx[i] = (uint8_t)rand();
		stun_build_request(tx, req);
		assert_int_equal(stun_parse_binding_request(req, sizeof req, got), STUN_OK);
		assert_memory_equal(got, tx, 12);
	}
}

static void test_parse_request_worked_example(void **state)
{
	(void)state;
	uint8_t b[64], tx[12], want[12];

	size_t n = unhex(req_01, b, sizeof b);
	fill(want, 12, 0x01);
	assert_int_equal(stun_parse_binding_request(b, n, tx), STUN_OK);
	assert_memory_equal(tx, want, 12);
}

/* Every acceptance rule, one vector each. Fingerprints marked "fp ok" were recomputed
 * for the mutated bytes (CRC-32/IEEE of all bytes before the FINGERPRINT attribute,
 * XOR 0x5354554e), so only the rule under test can reject them. Txid 0a x 12. */
static const struct {
	const char *name;
	const char *hex;
	int want;
} request_cases[] = {
	{ "good", "00 01 00 14 21 12 a4 42 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a"
		  "80 22 00 08 74 61 69 6c 6e 6f 64 65 80 28 00 04 eb c1 1a fc", STUN_OK },
	/* Upstream never reads the header's length field (fp ok): accepted. */
	{ "length field 0", "00 01 00 00 21 12 a4 42 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a"
		  "80 22 00 08 74 61 69 6c 6e 6f 64 65 80 28 00 04 3a 67 f5 28", STUN_OK },
	/* Other attributes are fine as long as FINGERPRINT is last (fp ok). */
	{ "extra attr in the middle", "00 01 00 1c 21 12 a4 42 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a"
		  "80 22 00 08 74 61 69 6c 6e 6f 64 65 80 21 00 04 de ad be ef"
		  "80 28 00 04 33 f5 5a 42", STUN_OK },
	/* Length field changed without fixing the fingerprint: the CRC covers the header. */
	{ "length field 0, stale fp", "00 01 00 00 21 12 a4 42 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a"
		  "80 22 00 08 74 61 69 6c 6e 6f 64 65 80 28 00 04 eb c1 1a fc",
	  STUN_ERR_WRONG_FINGERPRINT },
	{ "bad cookie", "00 01 00 14 21 12 a4 43 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a"
		  "80 22 00 08 74 61 69 6c 6e 6f 64 65 80 28 00 04 eb c1 1a fc", STUN_ERR_NOT_STUN },
	{ "top bits set", "40 01 00 14 21 12 a4 42 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a"
		  "80 22 00 08 74 61 69 6c 6e 6f 64 65 80 28 00 04 eb c1 1a fc", STUN_ERR_NOT_STUN },
	{ "19 bytes", "00 01 00 14 21 12 a4 42 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a", STUN_ERR_NOT_STUN },
	{ "empty", "", STUN_ERR_NOT_STUN },
	{ "success response (fp ok)", "01 01 00 14 21 12 a4 42 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a"
		  "80 22 00 08 74 61 69 6c 6e 6f 64 65 80 28 00 04 1a 1b 1f 56",
	  STUN_ERR_NOT_BINDING_REQUEST },
	{ "binding indication (fp ok)", "00 11 00 14 21 12 a4 42 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a"
		  "80 22 00 08 74 61 69 6c 6e 6f 64 65 80 28 00 04 05 bf 97 ec",
	  STUN_ERR_NOT_BINDING_REQUEST },
	{ "header only", "00 01 00 00 21 12 a4 42 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a",
	  STUN_ERR_WRONG_SOFTWARE },
	{ "software tailnodf (fp ok)", "00 01 00 14 21 12 a4 42 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a"
		  "80 22 00 08 74 61 69 6c 6e 6f 64 66 80 28 00 04 72 c8 4b 46",
	  STUN_ERR_WRONG_SOFTWARE },
	{ "software length 9 (fp ok)", "00 01 00 18 21 12 a4 42 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a"
		  "80 22 00 09 74 61 69 6c 6e 6f 64 65 00 00 00 00 80 28 00 04 1d 98 98 cf",
	  STUN_ERR_WRONG_SOFTWARE },
	{ "no fingerprint", "00 01 00 0c 21 12 a4 42 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a"
		  "80 22 00 08 74 61 69 6c 6e 6f 64 65", STUN_ERR_NO_FINGERPRINT },
	{ "fingerprint first", "00 01 00 14 21 12 a4 42 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a"
		  "80 28 00 04 00 00 00 00 80 22 00 08 74 61 69 6c 6e 6f 64 65",
	  STUN_ERR_NO_FINGERPRINT },
	{ "attr after fingerprint", "00 01 00 1c 21 12 a4 42 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a"
		  "80 22 00 08 74 61 69 6c 6e 6f 64 65 80 28 00 04 eb c1 1a fc"
		  "80 21 00 00", STUN_ERR_NO_FINGERPRINT },
	{ "fingerprint off by one bit", "00 01 00 14 21 12 a4 42 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a"
		  "80 22 00 08 74 61 69 6c 6e 6f 64 65 80 28 00 04 eb c1 1a fd",
	  STUN_ERR_WRONG_FINGERPRINT },
	{ "fingerprint without the xor", "00 01 00 14 21 12 a4 42 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a"
		  "80 22 00 08 74 61 69 6c 6e 6f 64 65 80 28 00 04 b8 95 4f b2",
	  STUN_ERR_WRONG_FINGERPRINT },
	{ "changed txid byte", "00 01 00 14 21 12 a4 42 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0b"
		  "80 22 00 08 74 61 69 6c 6e 6f 64 65 80 28 00 04 eb c1 1a fc",
	  STUN_ERR_WRONG_FINGERPRINT },
	{ "fingerprint truncated", "00 01 00 14 21 12 a4 42 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a"
		  "80 22 00 08 74 61 69 6c 6e 6f 64 65 80 28 00 04 eb c1 1a",
	  STUN_ERR_MALFORMED_ATTRS },
	{ "trailing 2 bytes", "00 01 00 14 21 12 a4 42 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a"
		  "80 22 00 08 74 61 69 6c 6e 6f 64 65 80 28 00 04 eb c1 1a fc 00 00",
	  STUN_ERR_MALFORMED_ATTRS },
	{ "attr length past the end", "00 01 00 14 21 12 a4 42 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a"
		  "80 22 00 08 74 61 69 6c 6e 6f 64 65 80 28 00 08 eb c1 1a fc",
	  STUN_ERR_MALFORMED_ATTRS },
	{ "software length 0xffff", "00 01 00 14 21 12 a4 42 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a"
		  "80 22 ff ff 74 61 69 6c 6e 6f 64 65 80 28 00 04 eb c1 1a fc",
	  STUN_ERR_MALFORMED_ATTRS },
	/* Padding counts: a 1-byte value needs 4 bytes of room. */
	{ "unpadded last attr", "00 01 00 11 21 12 a4 42 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a"
		  "80 22 00 08 74 61 69 6c 6e 6f 64 65 80 21 00 01 ff",
	  STUN_ERR_MALFORMED_ATTRS },
};

static void test_parse_request_cases(void **state)
{
	(void)state;
	uint8_t b[128], tx[12], want_tx[12];

	fill(want_tx, 12, 0x0a);
	for (size_t i = 0; i < sizeof request_cases / sizeof request_cases[0]; i++) {
		size_t n = unhex(request_cases[i].hex, b, sizeof b);
		memset(tx, 0xee, sizeof tx);
		int r = stun_parse_binding_request(b, n, tx);
		if (r != request_cases[i].want)
			fail_msg("case \"%s\": got %d (%s), want %d (%s)", request_cases[i].name, r,
				 stun_strerror(r), request_cases[i].want,
				 stun_strerror(request_cases[i].want));
		if (r == STUN_OK)
			assert_memory_equal(tx, want_tx, 12);
	}
}

/* Every prefix of a good request is rejected (and never read past its end under ASan). */
static void test_parse_request_truncations(void **state)
{
	(void)state;
	uint8_t tx[12], req[STUN_REQUEST_LEN];

	fill(tx, 12, 0x5a);
	stun_build_request(tx, req);
	for (size_t n = 0; n < sizeof req; n++) {
		uint8_t *copy = malloc(n ? n : 1);
		memcpy(copy, req, n);
		assert_int_not_equal(stun_parse_binding_request(copy, n, tx), STUN_OK);
		free(copy);
	}
}

/* Every single-bit flip of a good request is rejected: the CRC covers every byte but its
 * own, and a flip inside the CRC no longer matches it. */
static void test_parse_request_bit_flips(void **state)
{
	(void)state;
	uint8_t tx[12], req[STUN_REQUEST_LEN], got[12];

	fill(tx, 12, 0x33);
	stun_build_request(tx, req);
	for (size_t bit = 0; bit < sizeof req * 8; bit++) {
		req[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		int r = stun_parse_binding_request(req, sizeof req, got);
		/* Bytes 2-3 (the length field) are covered only by the fingerprint: still rejected. */
		if (r == STUN_OK)
			fail_msg("bit %zu flipped, still accepted", bit);
		req[bit / 8] ^= (uint8_t)(1u << (bit % 8));
	}
	assert_int_equal(stun_parse_binding_request(req, sizeof req, got), STUN_OK);
}

/* ---- responses, byte exact ---- */
static void check_response(uint8_t txbyte, const struct sockaddr_storage *src, const char *hex)
{
	uint8_t tx[12], want[64], got[STUN_RESPONSE_MAX];

	fill(tx, 12, txbyte);
	size_t wn = unhex(hex, want, sizeof want);
	size_t n = stun_build_response(tx, (const struct sockaddr *)src, got);
	assert_int_equal(n, wn);
	assert_memory_equal(got, want, wn);
}

static void test_build_response_ipv4(void **state)
{
	(void)state;
	struct sockaddr_storage a = sa4("1.2.3.4", 254);

	/* SERVER.md §7: port 254 ^ 0x2112 = 21 ec; 1.2.3.4 ^ 21 12 a4 42 = 20 10 a7 46. */
	check_response(0x01, &a,
		       "01 01 00 0c 21 12 a4 42 01 01 01 01 01 01 01 01 01 01 01 01"
		       "00 20 00 08 00 01 21 ec 20 10 a7 46");
	a = sa4("1.2.3.4", 257); /* 0x0101 ^ 0x2112 = 20 13 */
	check_response(0x02, &a,
		       "01 01 00 0c 21 12 a4 42 02 02 02 02 02 02 02 02 02 02 02 02"
		       "00 20 00 08 00 01 20 13 20 10 a7 46");
	a = sa4("127.0.0.1", 61300); /* 0xef74 ^ 0x2112 = ce 66; 7f 00 00 01 ^ cookie */
	check_response(0xeb, &a,
		       "01 01 00 0c 21 12 a4 42 eb eb eb eb eb eb eb eb eb eb eb eb"
		       "00 20 00 08 00 01 ce 66 5e 12 a4 43");
}

/* A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d: they get the IPv4 answer. */
static void test_build_response_v4mapped(void **state)
{
	(void)state;
	struct sockaddr_storage a = sa6("::ffff:1.2.3.4", 254);

	check_response(0x01, &a,
		       "01 01 00 0c 21 12 a4 42 01 01 01 01 01 01 01 01 01 01 01 01"
		       "00 20 00 08 00 01 21 ec 20 10 a7 46");
}

static void test_build_response_ipv6(void **state)
{
	(void)state;
	struct sockaddr_storage a = sa6("1::4", 254);

	/* Length 24 (0x18); 00 01 00 00 | 00 x 11 04 XOR 21 12 a4 42 | 03 x 12. */
	check_response(0x03, &a,
		       "01 01 00 18 21 12 a4 42 03 03 03 03 03 03 03 03 03 03 03 03"
		       "00 20 00 14 00 02 21 ec 21 13 a4 42 03 03 03 03 03 03 03 03"
		       "03 03 03 07");
}

static void test_build_response_ipv6_more(void **state)
{
	(void)state;
	struct sockaddr_storage a = sa6("1::4", 257);

	check_response(0x04, &a,
		       "01 01 00 18 21 12 a4 42 04 04 04 04 04 04 04 04 04 04 04 04"
		       "00 20 00 14 00 02 20 13 21 13 a4 42 04 04 04 04 04 04 04 04"
		       "04 04 04 00");
	a = sa6("::1", 40000); /* 0x9c40 ^ 0x2112 = bd 52 */
	check_response(0x00, &a,
		       "01 01 00 18 21 12 a4 42 00 00 00 00 00 00 00 00 00 00 00 00"
		       "00 20 00 14 00 02 bd 52 21 12 a4 42 00 00 00 00 00 00 00 00"
		       "00 00 00 01");
}

static void test_build_response_bad_family(void **state)
{
	(void)state;
	struct sockaddr_storage a;
	uint8_t tx[12] = { 0 }, out[STUN_RESPONSE_MAX];

	memset(&a, 0, sizeof a);
	a.ss_family = AF_UNIX;
	assert_int_equal(stun_build_response(tx, (struct sockaddr *)&a, out), 0);
}

/* 121: responses parse back to the same txid, address and port. */
static void test_response_roundtrip(void **state)
{
	(void)state;
	static const struct { uint8_t tx; const char *ip; int port; } c[] = {
		{ 1, "1.2.3.4", 254 }, { 2, "1.2.3.4", 257 }, { 3, "1::4", 254 }, { 4, "1::4", 257 },
		{ 5, "255.255.255.255", 65535 }, { 6, "ffff:ffff::ffff", 0 },
	};
	for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
		struct sockaddr_storage src = strchr(c[i].ip, ':') ? sa6(c[i].ip, c[i].port)
								   : sa4(c[i].ip, c[i].port);
		struct sockaddr_storage got;
		uint8_t tx[12], tx2[12], b[STUN_RESPONSE_MAX];

		fill(tx, 12, c[i].tx);
		size_t n = stun_build_response(tx, (struct sockaddr *)&src, b);
		assert_true(stun_is(b, n));
		assert_int_equal(stun_parse_response(b, n, tx2, &got), STUN_OK);
		assert_memory_equal(tx, tx2, 12);
		assert_addr(&got, c[i].ip, c[i].port);
		/* A response is never mistaken for a request. */
		assert_int_equal(stun_parse_binding_request(b, n, tx2), STUN_ERR_NOT_BINDING_REQUEST);
	}
}

/* 123: upstream's reference responses from real servers. */
static const struct {
	const char *name, *hex, *txid, *ip;
	int port;
} response_vectors[] = {
	{ "google-1",
	  "01 01 00 0c 21 12 a4 42 23 60 b1 1e 3e c6 8f fa 93 e0 80 07 00 20 00 08"
	  "00 01 c7 86 69 57 85 6f",
	  "23 60 b1 1e 3e c6 8f fa 93 e0 80 07", "72.69.33.45", 59028 },
	{ "google-2",
	  "01 01 00 0c 21 12 a4 42 f9 f1 21 cb de 7d 7c 75 92 3c e2 71 00 20 00 08"
	  "00 01 c7 87 69 57 85 6f",
	  "f9 f1 21 cb de 7d 7c 75 92 3c e2 71", "72.69.33.45", 59029 },
	{ "stun-sipgate-net-10000",
	  "01 01 00 44 21 12 a4 42 48 2e b6 47 15 e8 b2 8e ae ad 64 44 00 01 00 08"
	  "00 01 e4 ab 48 45 21 2d 00 04 00 08 00 01 27 10 d9 0a 44 98 00 05 00 08"
	  "00 01 27 11 d9 74 7a 8a 80 20 00 08 00 01 c5 b9 69 57 85 6f 80 22 00 10"
	  "56 6f 76 69 64 61 2e 6f 72 67 20 30 2e 39 36 00",
	  "48 2e b6 47 15 e8 b2 8e ae ad 64 44", "72.69.33.45", 58539 },
	{ "stun-powervoip-com-3478 (MAPPED-ADDRESS only)",
	  "01 01 00 24 21 12 a4 42 7e 57 96 68 29 f4 44 60 9d 1d ea a6 00 01 00 08"
	  "00 01 e9 d3 48 45 21 2d 00 04 00 08 00 01 0d 96 4d 48 a9 d4 00 05 00 08"
	  "00 01 0d 97 4d 48 a9 d5",
	  "7e 57 96 68 29 f4 44 60 9d 1d ea a6", "72.69.33.45", 59859 },
	{ "in-process-pion-server (trailing bytes past the length field)",
	  "01 01 00 24 21 12 a4 42 eb c2 d3 6e f4 71 21 7c 4f 3e 30 8e 80 22 00 0a"
	  "65 6e 64 70 6f 69 6e 74 65 72 00 00 00 20 00 08 00 01 ce 66 5e 12 a4 43"
	  "80 28 00 04 b6 99 bb 02 01 01 00 24 21 12 a4 42",
	  "eb c2 d3 6e f4 71 21 7c 4f 3e 30 8e", "127.0.0.1", 61300 },
	{ "stuntman-server-ipv6",
	  "01 01 00 48 21 12 a4 42 06 f5 66 85 d2 8a f3 e6 9c e3 41 e2 00 01 00 14"
	  "00 02 90 ce 26 02 00 d1 b4 cf c1 00 38 b2 31 ff fe ef 96 f6 80 2b 00 14"
	  "00 02 0d 96 26 04 a8 80 00 02 00 d1 00 00 00 00 00 c5 70 01 00 20 00 14"
	  "00 02 b1 dc 07 10 a4 93 b2 3a a7 85 ea 38 c2 19 62 0c d7 14",
	  "06 f5 66 85 d2 8a f3 e6 9c e3 41 e2", "2602:d1:b4cf:c100:38b2:31ff:feef:96f6", 37070 },
	{ "software-a (padded length 1)",
	  "01 01 00 14 21 12 a4 42 eb c2 d3 6e f4 71 21 7c 4f 3e 30 8e 80 22 00 01"
	  "61 00 00 00 00 20 00 08 00 01 ce 66 5e 12 a4 43",
	  "eb c2 d3 6e f4 71 21 7c 4f 3e 30 8e", "127.0.0.1", 61300 },
	{ "software-abc (padded length 3)",
	  "01 01 00 14 21 12 a4 42 eb c2 d3 6e f4 71 21 7c 4f 3e 30 8e 80 22 00 03"
	  "61 62 63 00 00 20 00 08 00 01 ce 66 5e 12 a4 43",
	  "eb c2 d3 6e f4 71 21 7c 4f 3e 30 8e", "127.0.0.1", 61300 },
	{ "no-4in6 (upstream's dual-stack form)",
	  "01 01 00 18 21 12 a4 42 4f d5 d2 02 dc b3 7d 31 fc 77 33 06 00 20 00 14"
	  "00 02 cd 3d 21 12 a4 42 4f d5 d2 02 dc b3 82 ce 2d c3 fc c7",
	  "4f d5 d2 02 dc b3 7d 31 fc 77 33 06", "209.180.207.193", 60463 },
	/* SERVER.md §7: 1.2.3.4:254 as ::ffff:1.2.3.4 from upstream's dual-stack socket. */
	{ "worked example, dual-stack form",
	  "01 01 00 18 21 12 a4 42 01 01 01 01 01 01 01 01 01 01 01 01 00 20 00 14 00 02 21 ec"
	  "21 12 a4 42 01 01 01 01 01 01 fe fe 00 03 02 05",
	  "01 01 01 01 01 01 01 01 01 01 01 01", "1.2.3.4", 254 },
};

static void test_parse_response_vectors(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof response_vectors / sizeof response_vectors[0]; i++) {
		uint8_t b[128], want_tx[12], tx[12];
		struct sockaddr_storage a;

		size_t n = unhex(response_vectors[i].hex, b, sizeof b);
		assert_int_equal(unhex(response_vectors[i].txid, want_tx, 12), 12);
		int r = stun_parse_response(b, n, tx, &a);
		if (r != STUN_OK)
			fail_msg("%s: %s", response_vectors[i].name, stun_strerror(r));
		assert_memory_equal(tx, want_tx, 12);
		assert_addr(&a, response_vectors[i].ip, response_vectors[i].port);
	}
}

static void test_parse_response_rejects(void **state)
{
	(void)state;
	static const struct { const char *name, *hex; int want; } c[] = {
		{ "error response 0x0111",
		  "01 11 00 0c 21 12 a4 42 01 01 01 01 01 01 01 01 01 01 01 01"
		  "00 20 00 08 00 01 21 ec 20 10 a7 46", STUN_ERR_NOT_SUCCESS_RESPONSE },
		{ "request", "00 01 00 00 21 12 a4 42 01 01 01 01 01 01 01 01 01 01 01 01",
		  STUN_ERR_NOT_SUCCESS_RESPONSE },
		{ "length field past the end",
		  "01 01 00 10 21 12 a4 42 01 01 01 01 01 01 01 01 01 01 01 01"
		  "00 20 00 08 00 01 21 ec 20 10 a7 46", STUN_ERR_MALFORMED_ATTRS },
		{ "no address attribute",
		  "01 01 00 08 21 12 a4 42 01 01 01 01 01 01 01 01 01 01 01 01"
		  "80 22 00 01 61 00 00 00", STUN_ERR_MALFORMED_ATTRS },
		{ "family 3",
		  "01 01 00 0c 21 12 a4 42 01 01 01 01 01 01 01 01 01 01 01 01"
		  "00 20 00 08 00 03 21 ec 20 10 a7 46", STUN_ERR_MALFORMED_ATTRS },
		{ "family 2 with 4 address bytes",
		  "01 01 00 0c 21 12 a4 42 01 01 01 01 01 01 01 01 01 01 01 01"
		  "00 20 00 08 00 02 21 ec 20 10 a7 46", STUN_ERR_MALFORMED_ATTRS },
		{ "address attribute of 3 bytes",
		  "01 01 00 08 21 12 a4 42 01 01 01 01 01 01 01 01 01 01 01 01"
		  "00 20 00 03 00 01 21 00", STUN_ERR_MALFORMED_ATTRS },
		{ "length field cuts the attribute",
		  "01 01 00 08 21 12 a4 42 01 01 01 01 01 01 01 01 01 01 01 01"
		  "00 20 00 08 00 01 21 ec 20 10 a7 46", STUN_ERR_MALFORMED_ATTRS },
		{ "short", "01 01 00 00 21 12 a4 42 01 01", STUN_ERR_NOT_STUN },
	};
	for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
		uint8_t b[128], tx[12];
		struct sockaddr_storage a;
		size_t n = unhex(c[i].hex, b, sizeof b);
		int r = stun_parse_response(b, n, tx, &a);
		if (r != c[i].want)
			fail_msg("%s: got %d, want %d", c[i].name, r, c[i].want);
	}
}

static void test_strerror(void **state)
{
	(void)state;
	for (int r = 0; r >= STUN_ERR_NOT_SUCCESS_RESPONSE; r--)
		assert_string_not_equal(stun_strerror(r), "unknown STUN error");
	assert_string_equal(stun_strerror(-100), "unknown STUN error");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_is),
		cmocka_unit_test(test_build_request_exact),
		cmocka_unit_test(test_attr_order_for_xdp),
		cmocka_unit_test(test_parse_request_roundtrip),
		cmocka_unit_test(test_parse_request_worked_example),
		cmocka_unit_test(test_parse_request_cases),
		cmocka_unit_test(test_parse_request_truncations),
		cmocka_unit_test(test_parse_request_bit_flips),
		cmocka_unit_test(test_build_response_ipv4),
		cmocka_unit_test(test_build_response_v4mapped),
		cmocka_unit_test(test_build_response_ipv6),
		cmocka_unit_test(test_build_response_ipv6_more),
		cmocka_unit_test(test_build_response_bad_family),
		cmocka_unit_test(test_response_roundtrip),
		cmocka_unit_test(test_parse_response_vectors),
		cmocka_unit_test(test_parse_response_rejects),
		cmocka_unit_test(test_strerror),
	};
	srand(5389);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
