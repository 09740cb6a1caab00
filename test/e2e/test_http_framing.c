/* Request framing on every HTTP listener (issue 13, items 9 and 10): the main port in
 * plain HTTP, the TLS port and TLS mode's port-80 listener answer as Go's net/http does
 * before any handler runs. Differing repeated Content-Length, a Content-Length that is
 * no number and a Transfer-Encoding other than one "chunked" are refused and the
 * connection closed, so a request smuggled after them is never served; equal repeats,
 * chunked with a Content-Length, "OPTIONS *" and long request heads are answered. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <poll.h>

#include "test/e2e/harness.h"
#include "test/e2e/test_http_util.h"
#include "test/e2e/test_tls_util.h"

enum { PLAIN, TLS, PORT80, NLISTENERS };
static const char *const names[NLISTENERS] = { "main (plain)", "TLS", "port 80" };

static struct harness_server *plain, *tls;
static struct harness_server p80; /* tls with its port-80 listener's port */
static char tmp[64];

static uint16_t logged_port80(const struct harness_server *s)
{
	static const char needle[] = "http: serving port-80 HTTP on 127.0.0.1:";
	FILE *f = fopen(s->log_path, "r");
	char line[512];
	int port = 0;
	assert_non_null(f);
	while (fgets(line, sizeof line, f))
		if (strstr(line, needle))
			port = atoi(strstr(line, needle) + strlen(needle));
	fclose(f);
	return port > 0 && port < 65536 ? (uint16_t)port : 0;
}

static int group_setup(void **state)
{
	(void)state;
	char cd[96];
	tu_tmpdir(tmp, sizeof tmp);
	snprintf(cd, sizeof cd, "%s/certs", tmp);
	const char *extra[] = { "-certmode", "manual", "-hostname", "127.0.0.1", "-certdir", cd,
				"-http-port", "0", NULL };
	tls = harness_start_opts(extra, HARNESS_TLS);
	p80 = *tls;
	p80.port = logged_port80(tls);
	assert_int_not_equal(p80.port, 0);
	plain = harness_start(NULL);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	harness_stop(plain);
	harness_stop(tls);
	tu_rmdir(tmp);
	return 0;
}

/* Send request on a fresh connection to listener l and read everything until the server
 * closes (or 5 s pass): out holds every response, NUL-terminated. Returns the bytes read,
 * -1 if the server had not closed by then. */
static int exchange(int l, const char *request, size_t len, char *out, size_t cap)
{
	int64_t deadline = harness_now_ms() + 5000;
	size_t n = 0;
	int closed = 0;
	out[0] = '\0';
	if (l == TLS) {
		struct tu_tls t;
		if (tu_tls_dial(tls->port, NULL, NULL, 0, &t) != 0)
			fail_msg("TLS dial: %s", t.err);
		assert_int_equal(wolfSSL_write(t.ssl, request, (int)len), (int)len);
		while (!closed && n + 1 < cap && harness_now_ms() < deadline) {
			int r = wolfSSL_read(t.ssl, out + n, (int)(cap - 1 - n));
			if (r > 0)
				n += (size_t)r;
			else
				closed = 1; /* EOF, or the 5 s receive timeout the dial set */
		}
		tu_tls_close(&t);
		out[n] = '\0';
		return harness_now_ms() < deadline ? (int)n : -1;
	}
	int fd = harness_tcp(l == PLAIN ? plain : &p80);
	assert_int_equal(send(fd, request, len, MSG_NOSIGNAL), (ssize_t)len);
	while (!closed && n + 1 < cap) {
		int64_t left = deadline - harness_now_ms();
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (left <= 0 || poll(&p, 1, (int)left) <= 0)
			break;
		ssize_t r = recv(fd, out + n, cap - 1 - n, 0);
		if (r > 0)
			n += (size_t)r;
		else
			closed = 1;
	}
	close(fd);
	out[n] = '\0';
	return closed ? (int)n : -1;
}

/* How many responses out holds: status lines at its start or a line's (no body here
 * has a line starting "HTTP/1."). */
static int responses(const char *out)
{
	int k = strncmp(out, "HTTP/1.", 7) == 0;
	for (const char *p = out; (p = strstr(p, "\nHTTP/1.")) != NULL; p++)
		k++;
	return k;
}

/* The last response in out. */
static const char *last_response(const char *out)
{
	const char *p = out, *q;
	while ((q = strstr(p, "\nHTTP/1.")) != NULL)
		p = q + 1;
	return p;
}

static int status_of(const char *out)
{
	int st = -1;
	sscanf(out, "HTTP/1.%*d %d", &st);
	return st;
}

/* Exactly one response with this status and body, then the server closed. */
static void expect_refused(int l, const char *request, int status, const char *body)
{
	int n = exchange(l, request, strlen(request), resp, sizeof resp);
	/* body NULL: libmicrohttpd's own refusal, whose head 0.9.75 writes twice */
	int one = body ? responses(resp) == 1 : status_of(last_response(resp)) == status;
	if (n < 0 || !one || status_of(resp) != status ||
	    !strstr(resp, "\r\nConnection: close\r\n")) {
		fail_msg("%s: want one %d and a close for\n%.300s\ngot%s\n%.600s", names[l], status, request,
			 n < 0 ? " (no close)" : "", resp);
	}
	const char *b = strstr(resp, "\r\n\r\n");
	if (body && (!b || strcmp(b + 4, body) != 0))
		fail_msg("%s: body \"%s\", want \"%s\"", names[l], b ? b + 4 : "", body);
}

/* want responses, the last one with status last (the pipelined request was served). */
static void expect_served(int l, const char *request, int want, int last)
{
	int n = exchange(l, request, strlen(request), resp, sizeof resp);
	if (n < 0 || responses(resp) != want || status_of(last_response(resp)) != last)
		fail_msg("%s: want %d responses, the last %d, for\n%.300s\ngot%s\n%.600s", names[l], want,
			 last, request, n < 0 ? " (no close)" : "", resp);
}

/* the pipelined request a smuggler hides in the body; it closes when served */
#define NEXT "GET /robots.txt HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"

static void test_conflicting_content_length(void **state)
{
	(void)state;
	for (int l = 0; l < NLISTENERS; l++) {
		expect_refused(l, "POST /derp/probe HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
				  "Content-Length: 6\r\n\r\nhello" NEXT, 400, "400 Bad Request");
		expect_refused(l, "POST /derp/probe HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n"
				  "Content-Length: 5\r\n\r\nhello" NEXT, 400, "400 Bad Request");
		expect_refused(l, "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n"
				  "Content-Length: 5\r\n\r\nhello" NEXT, 400, "400 Bad Request");
		/* equal repeats are one value to Go (spaces trimmed): both requests served */
		expect_served(l, "GET /derp/probe HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
				 "Content-Length:  5 \r\n\r\nhello" NEXT, 2, l == PORT80 ? 302 : 200);
	}
	/* a DERP upgrade that breaks the rule is refused, not upgraded */
	for (int l = 0; l < PORT80; l++)
		expect_refused(l, "GET /derp HTTP/1.1\r\nHost: h\r\nUpgrade: DERP\r\nConnection: "
				  "Upgrade\r\nContent-Length: 0\r\nContent-Length: 1\r\n\r\n",
			       400, "400 Bad Request");
}

static void test_content_length_not_a_number(void **state)
{
	(void)state;
	for (int l = 0; l < NLISTENERS; l++) {
		/* over 2^63-1 (strconv.ParseUint(s, 10, 63)) */
		expect_refused(l, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: "
				  "9223372036854775808\r\n\r\nhello" NEXT, 400, "400 Bad Request");
		/* libmicrohttpd refuses these itself (its own body) */
		expect_refused(l, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n"
				  "hello" NEXT, 400, NULL);
		expect_refused(l, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -5\r\n\r\n"
				  "hello" NEXT, 400, NULL);
		expect_refused(l, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \r\n\r\nhello"
				  NEXT, 400, NULL);
		/* leading zeros are a number */
		expect_served(l, "GET /derp/probe HTTP/1.1\r\nHost: h\r\nContent-Length: 005\r\n"
				 "\r\nhello" NEXT, 2, l == PORT80 ? 302 : 200);
	}
}

static void test_transfer_encoding(void **state)
{
	(void)state;
	for (int l = 0; l < NLISTENERS; l++) {
		const char *bad[] = { "gzip", "chunked, chunked", "gzip, chunked", "identity" };
		char r[512];
		for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
			snprintf(r, sizeof r, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: %s\r\n"
					      "\r\n5\r\nhello\r\n0\r\n\r\n" NEXT, bad[i]);
			expect_refused(l, r, 501, "Unsupported transfer encoding");
		}
		expect_refused(l, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
				  "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" NEXT,
			       501, "Unsupported transfer encoding");
		/* chunked wins over Content-Length: the chunked body, then the next request */
		expect_served(l, "GET /derp/probe HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
				 "Transfer-Encoding: CHUNKED\r\n\r\n5\r\nhello\r\n0\r\n\r\n" NEXT,
			      2, l == PORT80 ? 302 : 200);
		/* HTTP/1.0: Go ignores Transfer-Encoding; the request is answered, no more */
		expect_served(l, "GET /derp/probe HTTP/1.0\r\nHost: h\r\nContent-Length: 5\r\n"
				 "Transfer-Encoding: gzip\r\n\r\nhello" NEXT, 1,
			      l == PORT80 ? 302 : 200);
	}
}

static void test_options_star(void **state)
{
	(void)state;
	for (int l = 0; l < NLISTENERS; l++) {
		/* net/http's globalOptionsHandler: 200, Content-Length: 0, kept alive */
		expect_served(l, "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n" NEXT, 2,
			      l == PORT80 ? 302 : 200);
		assert_int_equal(status_of(resp), 200);
		char *end = strstr(resp, "\r\n\r\n");
		assert_non_null(end);
		*end = '\0';
		if (!strstr(resp, "\r\nContent-Length: 0") || strstr(resp, "Content-Type"))
			fail_msg("%s: OPTIONS * head:\n%s", names[l], resp);
		expect_served(l, "OPTIONS * HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nabcd"
				 NEXT, 2, l == PORT80 ? 302 : 200);
		/* any other method with "*" is ServeMux's empty 400, and a close */
		expect_refused(l, "GET * HTTP/1.1\r\nHost: h\r\n\r\n" NEXT, 400, "");
	}
}

static void test_long_head(void **state)
{
	(void)state;
	size_t cap = 70000;
	char *r = malloc(cap);
	assert_non_null(r);
	for (int l = 0; l < NLISTENERS; l++) {
		/* a 60 KB request-target: over derpd's head limit, Go's 431 and a close */
		memcpy(r, "GET /", 5);
		memset(r + 5, 'a', 60000);
		snprintf(r + 60005, cap - 60005, " HTTP/1.1\r\nHost: h\r\n\r\n" NEXT);
		expect_refused(l, r, 431, "431 Request Header Fields Too Large");
		/* 10 KB is answered in full: the port-80 redirect repeats it all, the main
		 * port's clean-path redirect too (it was cut at 2 KB) */
		memcpy(r, "GET //", 6);
		memset(r + 6, 'b', 10000);
		snprintf(r + 10006, cap - 10006, " HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
		int n = exchange(l, r, strlen(r), resp, sizeof resp);
		assert_true(n > 0);
		assert_int_equal(responses(resp), 1);
		assert_int_equal(status_of(resp), 301);
		const char *loc = strstr(resp, "\r\nLocation: /b");
		assert_non_null(loc);
		assert_int_equal(strcspn(loc + 12, "\r"), 10001);
		if (l == PORT80) {
			memcpy(r, "GET /", 5);
			memset(r + 5, 'c', 10000);
			snprintf(r + 10005, cap - 10005, " HTTP/1.1\r\nHost: h\r\n\r\n" NEXT);
			expect_served(l, r, 2, 302);
			loc = strstr(resp, "\r\nLocation: https://h/c");
			assert_non_null(loc);
			assert_int_equal(strcspn(loc + 12, "\r"), 10010);
		}
	}
	free(r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_conflicting_content_length),
		cmocka_unit_test(test_content_length_not_a_number),
		cmocka_unit_test(test_transfer_encoding),
		cmocka_unit_test(test_options_star),
		cmocka_unit_test(test_long_head),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
