/* A client that sends part of a request head and then its FIN: the head can never
 * complete, so the server hangs up at once, as Go's net/http does on EOF, rather than
 * holding the connection for the 30 s head timeout (found by fuzz_server_conn). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "test/e2e/harness.h"

static struct harness_server *srv;

static int group_setup(void **state)
{
	(void)state;
	srv = harness_start(NULL);
	return srv ? 0 : -1;
}

static int group_teardown(void **state)
{
	(void)state;
	harness_stop(srv);
	return 0;
}

/* Send part, shut our side, and return how long the server took to close (-1: > 5 s). */
static int64_t closed_after(const char *part)
{
	int fd = harness_tcp(srv);
	char buf[512];
	struct pollfd p = { fd, POLLIN, 0 };
	int64_t t0 = harness_now_ms();

	assert_int_equal(write(fd, part, strlen(part)), (ssize_t)strlen(part));
	shutdown(fd, SHUT_WR);
	for (;;) {
		if (poll(&p, 1, 5000) != 1) {
			close(fd);
			return -1;
		}
		if (read(fd, buf, sizeof buf) <= 0)
			break;
	}
	close(fd);
	return harness_now_ms() - t0;
}

static void test_partial_head_then_eof(void **state)
{
	(void)state;
	int64_t ms = closed_after("GET /derp HTTP/1.1\r\nHost: x\r\n");
	print_message("partial head + FIN: closed after %lld ms\n", (long long)ms);
	assert_true(ms >= 0 && ms < 2000);
	ms = closed_after("G");
	assert_true(ms >= 0 && ms < 2000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_partial_head_then_eof),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
