/* DERP over TLS on the real binary (SERVER.md §5, §10; PROTOCOL.md §3.3; CONFORMANCE
 * 62-64, 115-116): login and relay between TLS clients up to 64 KiB packets, TLS 1.2 and
 * 1.3 both, 1.1 refused, ALPN http/1.1, HTTP endpoints through the TLS bridge, the served
 * chain [leaf, meta certificate] read on the wire, fast start with the key taken from the
 * meta certificate, the SNI rules of manual mode (IP and DNS host names), stalled
 * handshakes cut at 10 s while others relay, certificate reload under live connections.
 *
 * The group's server is manual mode for 127.0.0.1 with an empty -certdir, so derpd makes
 * its own self-signed certificate (CONFORMANCE 116); the SNI, stall and reload tests
 * start their own. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test/e2e/harness.h"
#include "test/e2e/test_tls_util.h"

#include <poll.h>
#include <signal.h>
#include <sodium.h>
#include <sys/stat.h>
#include <time.h>

#include "server/frame.h"
#include "server/key.h"

#define T 5000 /* ms: bound on one expected event */

static struct harness_server *srv;
static char tmp[64], certdir[128];
static time_t started; /* before srv started: the meta certificate's clock */

static int group_setup(void **state)
{
	(void)state;
	tu_tmpdir(tmp, sizeof tmp);
	snprintf(certdir, sizeof certdir, "%s/certs", tmp); /* does not exist yet */
	started = time(NULL);
	const char *extra[] = { "-certmode", "manual", "-hostname", "127.0.0.1", "-certdir",
				certdir, "-http-port=-1", NULL };
	srv = harness_start_opts(extra, HARNESS_TLS);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	harness_stop(srv);
	tu_rmdir(tmp);
	return 0;
}

/* Options of a TLS client to srv-like servers: no verification unless ca is given. */
static struct derp_client_opts tls_opts(int max_version, const char *ca)
{
	struct derp_client_opts o = harness_opts();
	o.tls = 1;
	o.tls_insecure = ca == NULL;
	o.tls_ca_file = ca;
	o.tls_max_version = max_version;
	return o;
}

static struct derp_client *tls_client(const struct harness_server *s, int max_version)
{
	struct derp_client_opts o = tls_opts(max_version, NULL);
	return harness_client(s, &o);
}

/* ---- relay ------------------------------------------------------------------------- */

/* Every size up to the 64 KiB maximum, across TLS record boundaries, both ways; then
 * interleaved so both writers' records mix on the server. */
static void test_relay_sizes(void **state)
{
	static const size_t sizes[] = { 0,     1,     100,   1399,  4096,  16379, 16384,
					16385, 16411, 32768, 49152, 65000, 65535, DERP_MAX_PACKET };
	enum { N = sizeof sizes / sizeof sizes[0] };
	static uint8_t buf[N][DERP_MAX_PACKET];
	struct derp_client *a = tls_client(srv, 0), *b = tls_client(srv, 0);

	(void)state;
	assert_int_equal(derp_client_tls_version(a), 0x0304);
	assert_memory_equal(derp_client_server_key(a), srv->pub, 32);
	for (int i = 0; i < N; i++)
		randombytes_buf(buf[i], sizes[i]);
	for (int dir = 0; dir < 2; dir++) {
		struct derp_client *from = dir ? b : a, *to = dir ? a : b;
		for (int i = 0; i < N; i++)
			assert_int_equal(derp_client_send(from, derp_client_public_key(to), buf[i],
							  sizes[i]), 0);
		for (int i = 0; i < N; i++)
			harness_expect_packet(to, derp_client_public_key(from), buf[i], sizes[i], T);
	}
	for (int i = 0; i < N; i++) {
		assert_int_equal(derp_client_send(a, derp_client_public_key(b), buf[i], sizes[i]), 0);
		assert_int_equal(derp_client_send(b, derp_client_public_key(a), buf[N - 1 - i],
						  sizes[N - 1 - i]), 0);
	}
	for (int i = 0; i < N; i++) {
		harness_expect_packet(b, derp_client_public_key(a), buf[i], sizes[i], T);
		harness_expect_packet(a, derp_client_public_key(b), buf[N - 1 - i], sizes[N - 1 - i],
				      T);
	}
	derp_client_close(a);
	derp_client_close(b);
}

/* SERVER.md §5: minimum TLS 1.2. A 1.2 client and a 1.3 client relay to each other; a
 * 1.1 client never gets past the handshake; the version counters saw 1.2 and 1.3. */
static void test_versions(void **state)
{
	struct derp_client *c12 = tls_client(srv, 2), *c13 = tls_client(srv, 0);
	struct tu_tls t;
	static char resp[1 << 20];

	(void)state;
	assert_int_equal(derp_client_tls_version(c12), 0x0303);
	assert_int_equal(derp_client_tls_version(c13), 0x0304);
	harness_relay_check(c12, c13);

	struct derp_client_opts o = tls_opts(1, NULL);
	struct derp_client *c11 = derp_client_connect("127.0.0.1", srv->port, &o);
	if (c11)
		fail_msg("a TLS 1.1 client logged in (version 0x%04x)", derp_client_tls_version(c11));
	assert_non_null(strstr(derp_client_error(), "TLS"));
	assert_int_equal(tu_tls_dial(srv->port, NULL, NULL, 1, &t), -1);
	assert_int_equal(tu_tls_dial(srv->port, NULL, NULL, 2, &t), 0);
	assert_int_equal(t.version, TLS1_2_VERSION);
	tu_tls_close(&t);

	/* derper_tls_request_version counts requests per version; DERP ones included */
	assert_int_equal(tu_https(srv->port, "GET /debug/varz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
				  "Connection: close\r\n\r\n", resp, sizeof resp), 200);
	for (int i = 0; i < 2; i++) {
		const char *want = i ? "derper_tls_request_version{version=\"1.3\"} "
				     : "derper_tls_request_version{version=\"1.2\"} ";
		const char *p = strstr(resp, want);
		if (!p || atof(p + strlen(want)) < 1)
			fail_msg("no %s>= 1 in /debug/varz over TLS", want);
	}
	assert_null(strstr(resp, "derper_tls_request_version{version=\"1.1\"} 1"));
	derp_client_close(c12);
	derp_client_close(c13);
}

/* ---- HTTP through the TLS bridge --------------------------------------------------- */

/* PROTOCOL.md §3.6, SERVER.md §6.3: the ordinary endpoints answer over TLS exactly as
 * over plain HTTP. */
static void test_http_endpoints(void **state)
{
	static char r[65536];

	(void)state;
	assert_int_equal(tu_https(srv->port, "GET /derp/probe HTTP/1.1\r\nHost: 127.0.0.1\r\n"
				  "Connection: close\r\n\r\n", r, sizeof r), 200);
	assert_non_null(strcasestr(r, "\r\nAccess-Control-Allow-Origin: *\r\n"));
	assert_int_equal(tu_https(srv->port, "HEAD /derp/latency-check HTTP/1.1\r\nHost: x\r\n"
				  "Connection: close\r\n\r\n", r, sizeof r), 200);
	assert_int_equal(tu_https(srv->port, "POST /derp/probe HTTP/1.1\r\nHost: x\r\n"
				  "Content-Length: 0\r\nConnection: close\r\n\r\n", r, sizeof r), 405);
	assert_non_null(strstr(r, "\r\n\r\nbogus probe method\n"));
	assert_int_equal(tu_https(srv->port, "GET /generate_204 HTTP/1.1\r\nHost: x\r\n"
				  "X-Tailscale-Challenge: abc-1.2_3:4\r\nConnection: close\r\n\r\n",
				  r, sizeof r), 204);
	assert_non_null(strcasestr(r, "\r\nX-Tailscale-Response: response abc-1.2_3:4\r\n"));
	assert_non_null(strcasestr(r, "\r\nCache-Control: no-cache, no-store, must-revalidate, "
				   "no-transform, max-age=0\r\n"));
	assert_int_equal(tu_https(srv->port, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close"
				  "\r\n\r\n", r, sizeof r), 200);
	assert_non_null(strstr(r, "DERP"));
	/* and DERP still logs in on the same port afterwards */
	derp_client_close(tls_client(srv, 0));
}

/* ---- the served chain ---------------------------------------------------------------- */

static time_t cert_time(const uint8_t *p, int len)
{
	const byte *date;
	byte format;
	int dl;
	struct tm tm;

	assert_int_equal(wc_GetDateInfo(p, len, &date, &format, &dl), 0);
	assert_int_equal(wc_GetDateAsCalendarTime(date, dl, format, &tm), 0);
	return timegm(&tm);
}

/* CONFORMANCE 62/63, PROTOCOL.md §3.3, as a client sees it on the wire. */
static void check_meta(const uint8_t *der, size_t len, const uint8_t pub[32])
{
	char want[72] = "derpkey";
	DecodedCert dc;
	time_t now = time(NULL);
	const time_t d30 = 30 * 86400;

	for (int i = 0; i < 32; i++)
		snprintf(want + 7 + 2 * i, 3, "%02x", pub[i]);
	wc_InitDecodedCert(&dc, der, (word32)len, NULL);
	assert_int_equal(wc_ParseCert(&dc, CERT_TYPE, NO_VERIFY, NULL), 0);
	assert_int_equal(dc.subjectCNLen, 71);
	assert_memory_equal(dc.subjectCN, want, 71);
	assert_int_equal(dc.serialSz, 1);
	assert_int_equal(dc.serial[0], 2);
	assert_int_equal(dc.keyOID, ED25519k);
	assert_true(dc.selfSigned);
	assert_true(dc.extBasicConstSet);
	assert_false(dc.isCA);
	/* exactly one extension: count the entries of the Extensions SEQUENCE */
	struct der_rd r = { dc.extensions, (size_t)dc.extensionsSz }, c, e;
	uint8_t tag;
	int n = 0;
	assert_int_equal(der_next(&r, &tag, &c), 0);
	if (tag == 0xa3) { /* [3] EXPLICIT around the SEQUENCE */
		r = c;
		assert_int_equal(der_next(&r, &tag, &c), 0);
	}
	assert_int_equal(tag, 0x30);
	while (der_next(&c, &tag, &e) == 0)
		n++;
	assert_int_equal(n, 1);
	time_t nb = cert_time(dc.beforeDate, dc.beforeDateLen);
	time_t na = cert_time(dc.afterDate, dc.afterDateLen);
	assert_true(nb >= started - d30 - 1 && nb <= now - d30 + 1);
	assert_true(na >= started + d30 - 1 && na <= now + d30 + 1);
	wc_FreeDecodedCert(&dc);
}

/* CONFORMANCE 64/116: [leaf, meta] under either version and any SNI; the leaf is the
 * self-signed certificate derpd wrote to -certdir; ALPN is http/1.1. */
static void test_chain_and_alpn(void **state)
{
	static const char *const snis[] = { NULL, "derp.example.com", "127.0.0.1" };
	char crt[192];
	size_t ll;
	uint8_t *leaf;

	(void)state;
	snprintf(crt, sizeof crt, "%s/127.0.0.1.crt", certdir);
	leaf = tu_pem_leaf(crt, &ll);
	for (int v = 0; v < 2; v++) {
		for (size_t i = 0; i < sizeof snis / sizeof snis[0]; i++) {
			struct tu_tls t;
			if (tu_tls_dial(srv->port, snis[i], NULL, v ? 2 : 0, &t) != 0)
				fail_msg("SNI %s, TLS 1.%d: %s", snis[i] ? snis[i] : "(none)",
					 v ? 2 : 3, t.err);
			assert_int_equal(t.version, v ? TLS1_2_VERSION : TLS1_3_VERSION);
			assert_string_equal(t.alpn, "http/1.1");
			assert_int_equal(t.n, 2);
			assert_int_equal(t.len[0], ll);
			assert_memory_equal(t.der[0], leaf, ll);
			check_meta(t.der[1], t.len[1], srv->pub);
			tu_tls_close(&t);
		}
	}
	free(leaf);
}

/* ---- fast start from the meta certificate ------------------------------------------ */

/* PROTOCOL.md §3.3: a Go-style client takes the key from the meta certificate under TLS
 * 1.3, sends Derp-Fast-Start and reads no HTTP response (a 101 head before the ServerKey
 * frame would fail its first frame read); under TLS 1.2 it falls back to the 101. */
static void test_fast_start_meta(void **state)
{
	struct derp_client_opts o = tls_opts(0, NULL);
	struct derp_client *fast, *slow, *peer = tls_client(srv, 0);

	(void)state;
	o.fast_start = 1;
	fast = harness_client(srv, &o);
	assert_string_equal(derp_client_http_response(fast), "");
	assert_memory_equal(derp_client_server_key(fast), srv->pub, 32);
	assert_true(strlen(derp_client_server_info(fast)) > 0);
	harness_relay_check(fast, peer);

	o.tls_max_version = 2;
	slow = harness_client(srv, &o);
	assert_int_equal(derp_client_tls_version(slow), 0x0303);
	assert_int_equal(strncmp(derp_client_http_response(slow), "HTTP/1.1 101 ", 13), 0);
	assert_memory_equal(derp_client_server_key(slow), srv->pub, 32);
	harness_relay_check(slow, fast);
	derp_client_close(fast);
	derp_client_close(slow);
	derp_client_close(peer);
}

/* ---- SNI ----------------------------------------------------------------------------- */

/* SERVER.md §10.3: a DNS -hostname needs SNI equal to it; anything else (or none) fails
 * the handshake. Clients that verify against the CA log in and relay, and fast start
 * works with verification on. */
static void test_sni_dns(void **state)
{
	char dir[64];
	struct tu_ca ca;
	struct tu_tls t;
	size_t ll;
	uint8_t pub[32];

	(void)state;
	tu_tmpdir(dir, sizeof dir);
	tu_ca_make(&ca, dir);
	uint8_t *leaf = tu_leaf(&ca, dir, "derp.test", "derp.test", NULL, NULL, &ll, NULL);
	const char *extra[] = { "-certmode", "manual", "-hostname", "derp.test", "-certdir", dir,
				"-http-port=-1", NULL };
	struct harness_server *s = harness_start_opts(extra, HARNESS_NO_PROBE);

	if (tu_tls_dial(s->port, "derp.test", ca.pem_path, 0, &t) != 0)
		fail_msg("SNI derp.test: %s", t.err);
	assert_int_equal(t.n, 2);
	assert_int_equal(t.len[0], ll);
	assert_memory_equal(t.der[0], leaf, ll);
	{ /* the server key, from the meta certificate */
		DecodedCert dc;
		wc_InitDecodedCert(&dc, t.der[1], (word32)t.len[1], NULL);
		assert_int_equal(wc_ParseCert(&dc, CERT_TYPE, NO_VERIFY, NULL), 0);
		assert_int_equal(dc.subjectCNLen, 71);
		assert_int_equal(key_from_hex(pub, dc.subjectCN + 7, 64), 0);
		wc_FreeDecodedCert(&dc);
	}
	tu_tls_close(&t);
	if (tu_tls_dial(s->port, "other.test", NULL, 0, &t) == 0)
		fail_msg("SNI other.test: handshake succeeded");
	if (tu_tls_dial(s->port, NULL, NULL, 0, &t) == 0)
		fail_msg("no SNI: handshake succeeded");
	if (tu_tls_dial(s->port, "derp.test.example", NULL, 2, &t) == 0)
		fail_msg("SNI derp.test.example (TLS 1.2): handshake succeeded");

	struct derp_client_opts o = tls_opts(0, ca.pem_path);
	o.tls_server_name = "derp.test";
	struct derp_client *a = harness_client(s, &o);
	assert_memory_equal(derp_client_server_key(a), pub, 32);
	o.fast_start = 1;
	struct derp_client *b = harness_client(s, &o);
	assert_string_equal(derp_client_http_response(b), "");
	harness_relay_check(a, b);
	o.fast_start = 0;
	o.tls_server_name = "other.test";
	assert_null(derp_client_connect("127.0.0.1", s->port, &o));
	o.tls_server_name = "derp.test";
	o.tls_ca_file = NULL; /* the system's roots do not know the test CA */
	assert_null(derp_client_connect("127.0.0.1", s->port, &o));
	assert_true(harness_log_contains(s, "serving on"));
	derp_client_close(a);
	derp_client_close(b);
	harness_stop(s);
	tu_ca_free(&ca);
	free(leaf);
	tu_rmdir(dir);
}

/* ---- stalled handshakes ------------------------------------------------------------- */

/* SERVER.md §5 / DESIGN.md: a handshake that stalls (nothing sent, or half a ClientHello)
 * is cut at 10 s and never holds the (only) worker: meanwhile two clients keep relaying
 * and fresh clients log in within a second or two. */
static void test_stalled_handshake(void **state)
{
	enum { SILENT = 4, HALF = 4, NS = SILENT + HALF };
	const char *extra[] = { "-certmode", "manual", "-hostname", "127.0.0.1", "-certdir",
				certdir, "-http-port=-1", "--workers", "1", NULL };
	struct harness_server *s = harness_start_opts(extra, HARNESS_TLS);
	struct derp_client *a = tls_client(s, 0), *b = tls_client(s, 0), *w = tls_client(s, 0);
	int fds[NS];
	int64_t t0[NS], closed[NS] = { 0 };
	/* a TLS record header promising 512 bytes of ClientHello, then only the start of it */
	uint8_t half[64] = { 0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03 };

	(void)state;
	randombytes_buf(half + 11, sizeof half - 11);
	for (int i = 0; i < NS; i++) {
		fds[i] = harness_tcp(s);
		t0[i] = harness_now_ms();
		if (i >= SILENT)
			assert_int_equal(send(fds[i], half, sizeof half, MSG_NOSIGNAL), sizeof half);
	}
	int open = NS, relays = 0, logins = 0;
	int64_t end = t0[0] + 14000, next_login = 0;
	while (open > 0 && harness_now_ms() < end) {
		struct pollfd p[NS];
		for (int i = 0; i < NS; i++)
			p[i] = (struct pollfd){ .fd = closed[i] ? -1 : fds[i], .events = POLLIN };
		poll(p, NS, 100);
		for (int i = 0; i < NS; i++) {
			char junk[256];
			if (closed[i] || !(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			ssize_t r = recv(fds[i], junk, sizeof junk, MSG_DONTWAIT);
			if (r == 0 || (r < 0 && errno != EAGAIN)) {
				closed[i] = harness_now_ms();
				open--;
			}
		}
		int64_t t = harness_now_ms();
		harness_relay_check(a, b);
		if (harness_now_ms() - t > 1000)
			fail_msg("a relay round trip took %lld ms during stalled handshakes",
				 (long long)(harness_now_ms() - t));
		relays++;
		if (harness_now_ms() >= next_login) {
			t = harness_now_ms();
			struct derp_client *c = tls_client(s, 0);
			uint8_t ck[32];
			struct derp_msg m;
			harness_relay_check(c, w);
			memcpy(ck, derp_client_public_key(c), 32);
			derp_client_close(c);
			harness_recv(w, &m, T); /* w heard from c: told that it left */
			assert_int_equal(m.kind, DERP_MSG_PEER_GONE);
			assert_memory_equal(m.key, ck, 32);
			if (harness_now_ms() - t > 2000)
				fail_msg("a fresh TLS login took %lld ms during stalled handshakes",
					 (long long)(harness_now_ms() - t));
			logins++;
			next_login = harness_now_ms() + 1000;
		}
	}
	for (int i = 0; i < NS; i++) {
		if (!closed[i])
			fail_msg("stalled handshake %d (%s) still open after %lld ms", i,
				 i < SILENT ? "silent" : "half ClientHello",
				 (long long)(harness_now_ms() - t0[i]));
		int64_t took = closed[i] - t0[i];
		if (took < 9000 || took > 12000)
			fail_msg("stalled handshake %d closed after %lld ms, want ~10000", i,
				 (long long)took);
		close(fds[i]);
	}
	assert_true(relays >= 20);
	assert_true(logins >= 8);
	harness_relay_check(a, b);
	derp_client_close(a);
	derp_client_close(b);
	derp_client_close(w);
	harness_stop(s);
}

/* ---- certificate reload ----------------------------------------------------------- */

static int count_in_log(const struct harness_server *s, const char *needle)
{
	size_t n;
	char *log = file_read(s->log_path, &n);
	int k = 0;

	for (const char *p = log; p && (p = strstr(p, needle)) != NULL; p += strlen(needle))
		k++;
	free(log);
	return k;
}

/* The leaf a fresh handshake gets is exactly der. */
static int serves(const struct harness_server *s, const uint8_t *der, size_t len)
{
	struct tu_tls t;
	int same;

	if (tu_tls_dial(s->port, NULL, NULL, 0, &t) != 0)
		fail_msg("handshake: %s", t.err);
	same = t.n == 2 && t.len[0] == len && memcmp(t.der[0], der, len) == 0;
	tu_tls_close(&t);
	return same;
}

struct serves_arg {
	const struct harness_server *s;
	const uint8_t *der;
	size_t len;
};

static int serves_cond(void *arg)
{
	struct serves_arg *a = arg;
	return serves(a->s, a->der, a->len);
}

/* SIGHUP (cert.h: cert_provider_reload): a new certificate serves new handshakes, live
 * connections keep relaying; a bad one (garbage, wrong IP, key not matching) is refused
 * and the old certificate keeps serving. */
static void test_cert_reload(void **state)
{
	char dir[64], crt[128];
	struct tu_ca ca;
	size_t la, lb, lx;
	char *key_b;
	const char *refused = "certificate reload refused";

	(void)state;
	tu_tmpdir(dir, sizeof dir);
	tu_ca_make(&ca, dir);
	uint8_t *leaf_a = tu_leaf(&ca, dir, "127.0.0.1", NULL, "127.0.0.1", NULL, &la, NULL);
	const char *extra[] = { "-certmode", "manual", "-hostname", "127.0.0.1", "-certdir", dir,
				"-http-port=-1", NULL };
	struct harness_server *s = harness_start_opts(extra, HARNESS_TLS);
	struct derp_client_opts o = tls_opts(0, ca.pem_path); /* verified: name 127.0.0.1 */
	struct derp_client *a = harness_client(s, &o), *b = harness_client(s, &o);
	harness_relay_check(a, b);
	assert_true(serves(s, leaf_a, la));

	uint8_t *leaf_b = tu_leaf(&ca, dir, "127.0.0.1", NULL, "127.0.0.1", NULL, &lb, &key_b);
	assert_int_equal(kill(s->pid, SIGHUP), 0);
	struct serves_arg sb = { s, leaf_b, lb };
	if (!harness_wait(serves_cond, &sb, T)) {
		harness_dump_log(s);
		fail_msg("the new certificate is not served %d ms after SIGHUP", T);
	}
	assert_true(harness_log_contains(s, "certificate reloaded from"));
	assert_int_equal(count_in_log(s, refused), 0);
	harness_relay_check(a, b);
	struct derp_client *c = harness_client(s, &o);
	harness_relay_check(c, a);

	snprintf(crt, sizeof crt, "%s/127.0.0.1.crt", dir);
	for (int bad = 0; bad < 3; bad++) {
		int before = count_in_log(s, refused);
		uint8_t *x = NULL;
		if (bad == 0)
			tu_write(crt, "-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n",
				 63);
		else if (bad == 1) /* valid, but not for -hostname 127.0.0.1 */
			x = tu_leaf(&ca, dir, "127.0.0.1", NULL, "10.1.2.3", NULL, &lx, NULL);
		else /* a new certificate with the previous key: not a pair */
			x = tu_leaf(&ca, dir, "127.0.0.1", NULL, "127.0.0.1", key_b, &lx, NULL);
		free(x);
		assert_int_equal(kill(s->pid, SIGHUP), 0);
		int64_t end = harness_now_ms() + T;
		while (count_in_log(s, refused) == before && harness_now_ms() < end)
			poll(NULL, 0, 10);
		if (count_in_log(s, refused) == before) {
			harness_dump_log(s);
			fail_msg("bad certificate %d: no \"%s\" within %d ms", bad, refused, T);
		}
		assert_true(serves(s, leaf_b, lb));
		harness_relay_check(a, b);
		harness_relay_check(c, b);
	}
	assert_int_equal(kill(s->pid, 0), 0);
	derp_client_close(a);
	derp_client_close(b);
	derp_client_close(c);
	harness_stop(s);
	tu_ca_free(&ca);
	free(leaf_a);
	free(leaf_b);
	free(key_b);
	tu_rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_relay_sizes),
		cmocka_unit_test(test_versions),
		cmocka_unit_test(test_http_endpoints),
		cmocka_unit_test(test_chain_and_alpn),
		cmocka_unit_test(test_fast_start_meta),
		cmocka_unit_test(test_sni_dns),
		cmocka_unit_test(test_stalled_handshake),
		cmocka_unit_test(test_cert_reload),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
