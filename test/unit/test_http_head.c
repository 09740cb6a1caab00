/* The request-head parser that decides whether a connection becomes DERP. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "server/http_head.h"

static int parse(const char *s, struct http_req *r)
{
	return http_head_parse(s, strlen(s), r);
}

static void test_derp_upgrade(void **state)
{
	const char *req = "GET /derp?x=1 HTTP/1.1\r\nHost: h:1\r\nUser-Agent: Go-http-client/1.1\r\n"
			  "Connection: Upgrade\r\nDerp-Fast-Start: 1\r\nIdeal-Node: 900a\r\n"
			  "upgrade:   DeRp  \r\n\r\nTRAILING";
	struct http_req r;
	(void)state;
	assert_int_equal(parse(req, &r), (int)(strstr(req, "TRAILING") - req));
	assert_true(http_str_ieq(r.method, "GET"));
	assert_true(http_str_ieq(r.path, "/derp"));
	assert_true(http_str_ieq(r.target, "/derp?x=1"));
	assert_true(http_str_ieq(r.upgrade, "derp"));
	assert_true(http_str_ieq(r.fast_start, "1"));
	assert_true(http_str_ieq(r.ideal_node, "900a"));
	assert_true(http_has_token(r.connection, "upgrade"));
	assert_int_equal(r.minor, 1);
}

static void test_incomplete_and_bare_lf(void **state)
{
	struct http_req r;
	(void)state;
	assert_int_equal(parse("GET /derp HTTP/1.1\r\nHost: x\r\n", &r), 0);
	assert_int_equal(parse("GET /derp HTTP/1.1\r\nHost: x", &r), 0);
	assert_int_equal(parse("GET / HTTP/1.0\n\n", &r), 16);
	assert_int_equal(r.minor, 0);
	assert_int_equal(parse("\r\nGET / HTTP/1.1\r\n\r\n", &r), 20);
}

static void test_first_header_wins(void **state)
{
	struct http_req r;
	(void)state;
	assert_true(parse("GET /derp HTTP/1.1\r\nUpgrade: derp\r\nUpgrade: websocket\r\n\r\n", &r) > 0);
	assert_true(http_str_ieq(r.upgrade, "derp"));
}

static void test_malformed(void **state)
{
	const char *bad[] = {
		"GET\r\n\r\n", "GET /derp\r\n\r\n", "GET /derp HTTP/2.0\r\n\r\n",
		"GET /derp FTP/1.1\r\n\r\n", "GE(T / HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.1\r\nNoColon\r\n\r\n", "GET / HTTP/1.1\r\n: empty\r\n\r\n",
		"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", "GET / HTTP/1.1\r\n folded\r\n\r\n",
		"GET  / HTTP/1.1\r\n\r\n",
	};
	(void)state;
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		struct http_req r;
		assert_int_equal(parse(bad[i], &r), -1);
	}
}

/* Go's body framing rules: breaking them makes the head malformed (the HTTP server then
 * answers 400 or 501 as Go does, instead of a DERP upgrade). */
static void test_framing(void **state)
{
	struct http_req r;
	(void)state;
	static const char *const ok[] = {
		"GET /derp HTTP/1.1\r\nContent-Length: 5\r\nContent-Length:  5\r\n\r\n",
		"GET /derp HTTP/1.1\r\nContent-Length: 0009223372036854775807\r\n\r\n",
		"GET /derp HTTP/1.1\r\nTransfer-Encoding: Chunked\r\nContent-Length: 3\r\n\r\n",
		"GET /derp HTTP/1.0\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: x\r\n\r\n",
	};
	static const char *const bad[] = {
		"GET /derp HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
		"GET /derp HTTP/1.1\r\ncontent-length: 6\r\nCONTENT-LENGTH: 5\r\n\r\n",
		"GET /derp HTTP/1.1\r\nContent-Length: 9223372036854775808\r\n\r\n",
		"GET /derp HTTP/1.1\r\nContent-Length: 5x\r\n\r\n",
		"GET /derp HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
		"GET /derp HTTP/1.1\r\nContent-Length: \r\n\r\n",
		"GET /derp HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
		"GET /derp HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
	};
	for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
		if (parse(ok[i], &r) <= 0)
			fail_msg("refused %s", ok[i]);
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		if (parse(bad[i], &r) != -1)
			fail_msg("accepted %s", bad[i]);
}

static void test_tokens(void **state)
{
	struct http_str s = { "keep-alive, Upgrade ,close", 26 };
	(void)state;
	assert_true(http_has_token(s, "upgrade"));
	assert_true(http_has_token(s, "close"));
	assert_true(http_has_token(s, "KEEP-ALIVE"));
	assert_false(http_has_token(s, "alive"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_derp_upgrade),
		cmocka_unit_test(test_incomplete_and_bare_lf),
		cmocka_unit_test(test_first_header_wins),
		cmocka_unit_test(test_malformed),
		cmocka_unit_test(test_framing),
		cmocka_unit_test(test_tokens),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
