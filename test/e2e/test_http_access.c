/* The /debug/ access rule on the real binary, from addresses that are not loopback: the
 * test enters a network namespace of its own (root needed; CI is root), puts test
 * addresses on its lo and connects to derpd from each. Denied: a documentation address
 * and the ChromeOS hole in 100.64/10; allowed: a Tailscale address, TS_ALLOW_DEBUG_IP,
 * TS_DEBUG_TRUSTED_CIDRS and ?debugkey= with TS_DEBUG_KEY_PATH (SERVER.md §6.4). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test/e2e/harness.h"
#include "test/e2e/test_http_util.h"

#define OUTSIDER "192.0.2.1"    /* TEST-NET-1: nobody's debug address */
#define TAILNET "100.64.0.7"    /* a Tailscale (CGNAT) address */
#define CHROMEOS "100.115.92.5" /* inside 100.64/10 but excluded upstream */

static const char *const debug_paths[] = { "/debug/", "/debug/varz", "/debug/vars",
					   "/debug/check", "/debug/traffic", "/metrics" };

static void expect_denied(const struct harness_server *s, const char *src)
{
	for (size_t i = 0; i < sizeof debug_paths / sizeof debug_paths[0]; i++) {
		int st = req_from(s, src, "GET", debug_paths[i], NULL);
		if (st != 403 || strcmp(body(), "debug access denied\n") != 0)
			fail_msg("%s from %s: %d %s", debug_paths[i], src, st, body());
		expect_hdr("Content-Type", "text/plain; charset=utf-8");
		expect_hdr("X-Content-Type-Options", "nosniff");
	}
	/* the home page is public but shows no debug link */
	assert_int_equal(req_from(s, src, "GET", "/", NULL), 200);
	assert_null(strstr(body(), "Debug info"));
	assert_int_equal(req_from(s, src, "GET", "/robots.txt", NULL), 200);
}

static void expect_allowed(const struct harness_server *s, const char *src)
{
	assert_int_equal(req_from(s, src, "GET", "/debug/", NULL), 200);
	assert_non_null(strstr(body(), "<h2>derper debug</h2>"));
	assert_int_equal(req_from(s, src, "GET", "/debug/varz", NULL), 200);
	assert_int_equal(req_from(s, src, "GET", "/metrics", NULL), 200);
	assert_int_equal(req_from(s, src, "GET", "/", NULL), 200);
	assert_non_null(strstr(body(), "Debug info at"));
}

static void test_default_rule(void **state)
{
	struct harness_server *s = *state;
	expect_denied(s, OUTSIDER);
	expect_denied(s, CHROMEOS);
	expect_allowed(s, TAILNET);
	expect_allowed(s, "127.0.0.1");
	/* an X-Forwarded-For turns even a Tailscale address away */
	assert_int_equal(req_from(s, TAILNET, "GET", "/debug/", "X-Forwarded-For: 100.64.0.8\r\n"), 403);
}

static void test_allow_ip(void **state)
{
	(void)state;
	setenv("TS_ALLOW_DEBUG_IP", OUTSIDER, 1);
	struct harness_server *s = harness_start(NULL);
	unsetenv("TS_ALLOW_DEBUG_IP");
	expect_allowed(s, OUTSIDER);
	expect_denied(s, CHROMEOS);
	harness_stop(s);
}

static void test_trusted_cidrs(void **state)
{
	(void)state;
	setenv("TS_DEBUG_TRUSTED_CIDRS", "10.9.0.0/16,100.115.92.0/24", 1);
	struct harness_server *s = harness_start(NULL);
	unsetenv("TS_DEBUG_TRUSTED_CIDRS");
	expect_allowed(s, CHROMEOS);
	expect_denied(s, OUTSIDER);
	harness_stop(s);
}

static void test_debug_key(void **state)
{
	(void)state;
	char path[] = "/tmp/derpd-debugkey-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "opensesame\n", 11), 11);
	close(fd);
	setenv("TS_DEBUG_KEY_PATH", path, 1);
	struct harness_server *s = harness_start(NULL);
	unsetenv("TS_DEBUG_KEY_PATH");
	assert_int_equal(req_from(s, OUTSIDER, "GET", "/debug/varz?debugkey=opensesame", NULL), 200);
	assert_non_null(strstr(body(), "# TYPE derp_accepts counter"));
	assert_int_equal(req_from(s, OUTSIDER, "GET", "/debug/varz?debugkey=wrong", NULL), 403);
	assert_int_equal(req_from(s, OUTSIDER, "POST", "/debug/varz?debugkey=opensesame",
				  "Content-Length: 0\r\n"), 403); /* GET only */
	harness_stop(s);
	unlink(path);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	if (unshare(CLONE_NEWNET) != 0) {
		fprintf(stderr, "test_http_access: unshare(CLONE_NEWNET): %s (needs root)\n",
			strerror(errno));
		return 1;
	}
	if (system("ip link set lo up && ip addr add " OUTSIDER "/32 dev lo && "
		   "ip addr add " TAILNET "/32 dev lo && ip addr add " CHROMEOS "/32 dev lo") != 0) {
		fprintf(stderr, "test_http_access: cannot configure lo with ip(8)\n");
		return 1;
	}
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_default_rule, harness_setup, harness_teardown),
		cmocka_unit_test(test_allow_ip),
		cmocka_unit_test(test_trusted_cidrs),
		cmocka_unit_test(test_debug_key),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
