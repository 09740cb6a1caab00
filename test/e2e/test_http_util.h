/* Test-only helpers shared by test/e2e/test_http*.c: one HTTP exchange at a time on the
 * harness's derpd, response headers and body by name. Include after harness.h. */
#ifndef DERPD_TEST_HTTP_UTIL_H
#define DERPD_TEST_HTTP_UTIL_H
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define RESP_MAX (256 * 1024)
static char resp[RESP_MAX];

__attribute__((unused)) static const char *const CSP =
	"default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'self'; "
	"block-all-mixed-content; object-src 'none'";
/* The debug pages' (the status page's style is inline). */
__attribute__((unused)) static const char *const CSP_DEBUG =
	"default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'self'; "
	"block-all-mixed-content; object-src 'none'; style-src 'self' 'unsafe-inline'";

/* Read one response from fd into buf (head + body, chunked bodies decoded). head_only: a
 * HEAD request (a Content-Length but no body follows). Returns the status or -1. */
__attribute__((unused)) static int read_resp(int fd, char *buf, size_t cap, int head_only, int timeout_ms)
{
	int n = harness_read_head(fd, buf, cap, timeout_ms);
	if (n <= 0)
		return -1;
	int status = -1;
	sscanf(buf, "HTTP/1.%*d %d", &status);
	if (head_only || status == 204 || status == 304)
		return status;
	const char *cl = strcasestr(buf, "\r\nContent-Length: ");
	if (cl != NULL) {
		size_t len = strtoul(cl + 18, NULL, 10);
		if ((size_t)n + len + 1 > cap)
			return -1;
		if (harness_read_exact(fd, buf + n, len, timeout_ms) != len)
			return -1;
		buf[n + len] = '\0';
		return status;
	}
	if (strcasestr(buf, "\r\nTransfer-Encoding: chunked") != NULL) {
		size_t w = (size_t)n;
		for (;;) { /* size line, data, CRLF */
			char line[32];
			size_t k = 0;
			while (k < sizeof line - 1 && harness_read_exact(fd, line + k, 1, timeout_ms) == 1)
				if (line[k++] == '\n')
					break;
			line[k] = '\0';
			size_t sz = strtoul(line, NULL, 16);
			if (sz == 0) {
				char crlf[2];
				harness_read_exact(fd, crlf, 2, timeout_ms);
				break;
			}
			if (w + sz + 1 > cap || harness_read_exact(fd, buf + w, sz, timeout_ms) != sz)
				return -1;
			w += sz;
			char crlf[2];
			harness_read_exact(fd, crlf, 2, timeout_ms);
		}
		buf[w] = '\0';
		return status;
	}
	size_t w = (size_t)n; /* to EOF */
	for (;;) {
		size_t k = harness_read_exact(fd, buf + w, 1, timeout_ms);
		if (k == 0 || w + 2 >= cap)
			break;
		w++;
	}
	buf[w] = '\0';
	return status;
}

/* One request on a fresh connection. */
__attribute__((unused)) static int req(const struct harness_server *s, const char *method, const char *path,
	       const char *extra_headers)
{
	char r[8192];
	snprintf(r, sizeof r, "%s %s HTTP/1.1\r\nHost: derp.test\r\n%s\r\n", method, path,
		 extra_headers ? extra_headers : "");
	int fd = harness_tcp(s);
	assert_int_equal(send(fd, r, strlen(r), MSG_NOSIGNAL), (ssize_t)strlen(r));
	int st = read_resp(fd, resp, sizeof resp, strcmp(method, "HEAD") == 0, 5000);
	close(fd);
	return st;
}

/* Value of response header name (copied), or NULL when absent. */
__attribute__((unused)) static const char *hdr(const char *name)
{
	static char v[1024];
	char needle[128];
	snprintf(needle, sizeof needle, "\r\n%s: ", name);
	const char *end = strstr(resp, "\r\n\r\n");
	const char *p = strcasestr(resp, needle);
	if (p == NULL || (end && p > end))
		return NULL;
	p += strlen(needle);
	size_t n = strcspn(p, "\r\n");
	snprintf(v, sizeof v, "%.*s", (int)n, p);
	return v;
}

__attribute__((unused)) static const char *body(void)
{
	return harness_http_body(resp);
}

__attribute__((unused)) static void expect_hdr(const char *name, const char *want)
{
	const char *v = hdr(name);
	if (v == NULL || strcmp(v, want) != 0)
		fail_msg("header %s: got %s, want %s\n%s", name, v ? v : "(absent)", want, resp);
}

__attribute__((unused)) static void expect_browser_headers(const char *csp)
{
	expect_hdr("Strict-Transport-Security", "max-age=63072000; includeSubDomains");
	expect_hdr("Content-Security-Policy", csp);
	expect_hdr("X-Frame-Options", "DENY");
	expect_hdr("X-Content-Type-Options", "nosniff");
}

/* A TCP connection to the server from source address src (an address on lo). */
__attribute__((unused)) static int tcp_from(const struct harness_server *s, const char *src)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET };
	inet_pton(AF_INET, src, &a.sin_addr);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
	struct sockaddr_in d = { .sin_family = AF_INET, .sin_port = htons(s->port) };
	inet_pton(AF_INET, "127.0.0.1", &d.sin_addr);
	assert_int_equal(connect(fd, (struct sockaddr *)&d, sizeof d), 0);
	return fd;
}

/* One request on a fresh connection from src. */
__attribute__((unused)) static int req_from(const struct harness_server *s, const char *src, const char *method,
		    const char *path, const char *extra_headers)
{
	char r[8192];
	snprintf(r, sizeof r, "%s %s HTTP/1.1\r\nHost: derp.test\r\n%s\r\n", method, path,
		 extra_headers ? extra_headers : "");
	int fd = tcp_from(s, src);
	assert_int_equal(send(fd, r, strlen(r), MSG_NOSIGNAL), (ssize_t)strlen(r));
	int st = read_resp(fd, resp, sizeof resp, strcmp(method, "HEAD") == 0, 5000);
	close(fd);
	return st;
}

#endif
