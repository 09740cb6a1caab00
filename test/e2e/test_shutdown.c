/* Graceful stop (a derpd extension, man page SIGNALS): on SIGTERM every logged-in client
 * gets a Restarting frame, queued packets still go out, and derpd exits 0. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "mesh/derp_client.h"
#include "test/e2e/harness.h"

/* Wait up to timeout_ms for pid to exit; returns its wait status, or -1. */
static int wait_exit(pid_t pid, int timeout_ms)
{
	int64_t end = harness_now_ms() + timeout_ms;
	int st;

	while (harness_now_ms() < end) {
		if (waitpid(pid, &st, WNOHANG) == pid)
			return st;
		usleep(10000);
	}
	return -1;
}

static void test_sigterm_sends_restarting(void **state)
{
	(void)state;
	struct harness_server *s = harness_start(NULL);
	struct derp_client *a = harness_client(s, NULL), *b = harness_client(s, NULL);
	struct derp_msg m;
	static const char hello[] = "last words";

	/* A packet in flight when the signal lands is still delivered first. */
	assert_int_equal(derp_client_send(a, derp_client_public_key(b), hello, sizeof hello), 0);
	harness_expect_packet(b, derp_client_public_key(a), hello, sizeof hello, 5000);
	assert_int_equal(kill(s->pid, SIGTERM), 0);

	struct derp_client *both[2] = { a, b };
	for (int i = 0; i < 2; i++) {
		int saw_restart = 0, r;
		while ((r = derp_client_recv(both[i], &m, 5000)) == 0) {
			if (m.kind == DERP_MSG_RESTARTING) {
				assert_int_equal(m.reconnect_ms, 1000);
				assert_int_equal(m.try_for_ms, 5000);
				saw_restart = 1;
			}
		}
		assert_true(saw_restart);
		assert_int_equal(r, DERP_CLIENT_CLOSED);
	}
	int st = wait_exit(s->pid, 10000);
	assert_true(st != -1);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	assert_true(harness_log_contains(s, "shutting down"));
	s->pid = 0; /* already reaped: nothing for harness_stop to signal */
	derp_client_close(a);
	derp_client_close(b);
	harness_stop(s);
}

/* A second derpd on a port one already serves must fail (exit 1, "address already in
 * use", as derper does), not quietly share it through SO_REUSEPORT and split the
 * traffic; the first keeps serving. */
static void test_port_in_use(void **state)
{
	(void)state;
	struct harness_server *s = harness_start(NULL);
	char addr[32], key[256];
	snprintf(addr, sizeof addr, "127.0.0.1:%u", s->port);
	snprintf(key, sizeof key, "%s/second.key", s->dir);
	int out[2];
	assert_int_equal(pipe(out), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		dup2(out[1], 2);
		execl(getenv("DERPD_BIN"), "derpd", "-a", addr, "-c", key, "-stun=false",
		      (char *)NULL);
		_exit(127);
	}
	close(out[1]);
	int st = wait_exit(pid, 10000);
	if (st == -1)
		kill(pid, SIGKILL), waitpid(pid, NULL, 0);
	char log[4096] = "";
	ssize_t n = read(out[0], log, sizeof log - 1);
	log[n > 0 ? n : 0] = '\0';
	close(out[0]);
	assert_true(st != -1);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 1);
	assert_non_null(strstr(log, "Address already in use"));
	struct derp_client *a = harness_client(s, NULL), *b = harness_client(s, NULL);
	harness_relay_check(a, b);
	derp_client_close(a);
	derp_client_close(b);
	unlink(key);
	harness_stop(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sigterm_sends_restarting),
		cmocka_unit_test(test_port_in_use),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
