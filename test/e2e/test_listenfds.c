/* Socket activation (man page "Running under systemd"): derpd takes its listening sockets
 * from a service manager (LISTEN_FDS, LISTEN_PID) when one matches a listener's type and
 * port. The test plays systemd: it binds the sockets, hands them over, and keeps its own
 * copies, so a connection made while no derpd runs waits in the backlog and is answered
 * by the next derpd. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "test/e2e/harness.h"
#include "stun/stun.h"

/* A socket on 127.0.0.1 at an ephemeral port (stream ones listening); *port set. */
static int bound_socket(int type, uint16_t *port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof a;
	int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
	if (type == SOCK_STREAM)
		assert_int_equal(listen(fd, 64), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &al), 0);
	*port = ntohs(a.sin_port);
	return fd;
}

/* A TCP connection to 127.0.0.1:port; the kernel completes it from the backlog even
 * when nobody accepts yet. */
static int tcp_to(uint16_t port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
	return fd;
}

static void send_all(int fd, const char *s)
{
	assert_int_equal(write(fd, s, strlen(s)), (ssize_t)strlen(s));
}

/* One STUN binding request to port answered within 5 s. */
static void stun_check(uint16_t port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	uint8_t tx[STUN_TXID_LEN] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 };
	uint8_t req[STUN_REQUEST_LEN], resp[512];
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct pollfd p = { .fd = fd, .events = POLLIN };

	assert_true(fd >= 0);
	size_t n = stun_build_request(tx, req);
	assert_int_equal(sendto(fd, req, n, 0, (struct sockaddr *)&a, sizeof a), (ssize_t)n);
	assert_int_equal(poll(&p, 1, 5000), 1);
	ssize_t got = recv(fd, resp, sizeof resp, 0);
	assert_true(got > 20);
	assert_memory_equal(resp + 8, tx, sizeof tx); /* the transaction id comes back */
	close(fd);
}

/* The -a socket (shared by every worker) and the STUN socket come from the manager. */
static void test_inherited_sockets_serve(void **state)
{
	(void)state;
	uint16_t port, sport;
	int fds[2] = { bound_socket(SOCK_STREAM, &port), bound_socket(SOCK_DGRAM, &sport) };
	char a[32], sp[16];

	snprintf(a, sizeof a, "127.0.0.1:%u", port);
	snprintf(sp, sizeof sp, "%u", sport);
	const char *extra[] = { "-a", a, "-stun=true", "-stun-port", sp, "--workers", "4", NULL };
	harness_inherit(fds, 2);
	struct harness_server *s = harness_start(extra);
	assert_int_equal(s->port, port);
	assert_true(harness_log_contains(s, "-a: using the socket from the service manager"));
	assert_true(harness_log_contains(s, "-stun-port: using the socket from the service manager"));

	/* Every worker accepts from the one socket: many logins, each relays. */
	struct derp_client *c[16];
	for (int i = 0; i < 16; i++)
		c[i] = harness_client(s, NULL);
	for (int i = 0; i < 16; i += 2)
		harness_relay_check(c[i], c[i + 1]);
	for (int i = 0; i < 16; i++)
		derp_client_close(c[i]);
	stun_check(sport);
	harness_stop(s);
	close(fds[0]);
	close(fds[1]);
}

/* derpd stops; a client connects and sends its request while none runs; the next derpd
 * (same inherited socket) answers it: a restart refuses nobody. */
static void test_restart_refuses_nothing(void **state)
{
	(void)state;
	uint16_t port;
	int lfd = bound_socket(SOCK_STREAM, &port);
	char a[32], resp[512];

	snprintf(a, sizeof a, "127.0.0.1:%u", port);
	const char *extra[] = { "-a", a, NULL };
	harness_inherit(&lfd, 1);
	struct harness_server *s1 = harness_start(extra);
	struct derp_client *x = harness_client(s1, NULL), *y = harness_client(s1, NULL);
	harness_relay_check(x, y);
	derp_client_close(x);
	derp_client_close(y);
	harness_stop(s1);

	int waiting = tcp_to(port); /* nobody accepts now: this one waits in the backlog */
	send_all(waiting, "GET /derp/probe HTTP/1.1\r\nHost: derp\r\nConnection: close\r\n\r\n");

	harness_inherit(&lfd, 1);
	struct harness_server *s2 = harness_start(extra);
	int n = harness_read_head(waiting, resp, sizeof resp, 10000);
	assert_true(n > 0);
	assert_non_null(strstr(resp, "HTTP/1.1 200"));
	close(waiting);
	x = harness_client(s2, NULL);
	y = harness_client(s2, NULL);
	harness_relay_check(x, y);
	derp_client_close(x);
	derp_client_close(y);
	harness_stop(s2);
	close(lfd);
}

/* Start derpd by hand with fd handed over as descriptor 3 and LISTEN_PID = pid_delta +
 * its pid; wait (10 s at most) for it to exit and return its log and status. */
static int run_expect_exit(int fd, int pid_delta, const char *const *argv_tail, char *log,
			   size_t cap)
{
	const char *bin = getenv("DERPD_BIN") ? getenv("DERPD_BIN") : "./derpd";
	const char *argv[16] = { bin };
	char path[] = "/tmp/derpd-lfd-XXXXXX";
	int n = 1, st = -1, out = mkstemp(path);

	assert_true(out >= 0);
	for (int i = 0; argv_tail[i] && n < 15; i++)
		argv[n++] = argv_tail[i];
	argv[n] = NULL;
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char v[32];
		int high = fcntl(fd, F_DUPFD, 10); /* dup2(3, 3) would keep close-on-exec */
		dup2(out, 1);
		dup2(out, 2);
		dup2(high, 3);
		setenv("LISTEN_FDS", "1", 1);
		snprintf(v, sizeof v, "%d", (int)getpid() + pid_delta);
		setenv("LISTEN_PID", v, 1);
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	int64_t end = harness_now_ms() + 10000;
	while (waitpid(pid, &st, WNOHANG) != pid) {
		if (harness_now_ms() > end) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			fail_msg("derpd did not exit within 10 s");
		}
		poll(NULL, 0, 10);
	}
	ssize_t got = pread(out, log, cap - 1, 0);
	log[got > 0 ? got : 0] = '\0';
	close(out);
	unlink(path);
	return st;
}

/* A socket no listener wants means the unit and the flags disagree: say which, exit 1.
 * Not a listening socket: the same. A LISTEN_PID naming another process: ignored. */
static void test_mismatch_is_an_error(void **state)
{
	(void)state;
	uint16_t port, other;
	int lfd = bound_socket(SOCK_STREAM, &port), free_port_fd = bound_socket(SOCK_STREAM, &other);
	char a[32], want[64], log[8192];

	close(free_port_fd); /* a port nobody listens on: -a below uses it */
	snprintf(a, sizeof a, "127.0.0.1:%u", other);
	char dir[] = "/tmp/derpd-lfd-dir-XXXXXX", key[64];
	assert_non_null(mkdtemp(dir));
	snprintf(key, sizeof key, "%s/k", dir);
	const char *args[] = { "-a", a, "-c", key, "-stun=false", NULL };

	int st = run_expect_exit(lfd, 0, args, log, sizeof log);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
	snprintf(want, sizeof want, "tcp 127.0.0.1:%u: inherited from the service manager", port);
	if (!strstr(log, want))
		fail_msg("log lacks \"%s\":\n%s", want, log);

	int unlistened = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	st = run_expect_exit(unlistened, 0, args, log, sizeof log);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
	if (!strstr(log, "inherited descriptor 3 is not a socket") && !strstr(log, "is not listening"))
		fail_msg("log lacks the not-listening error:\n%s", log);
	close(unlistened);

	/* Meant for some other process: derpd ignores it and binds -a itself, which fails
	 * here because that port is the inherited socket's (taken, it would have served). */
	snprintf(a, sizeof a, "127.0.0.1:%u", port);
	st = run_expect_exit(lfd, 1, args, log, sizeof log);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
	if (strstr(log, "service manager") || !strstr(log, "Address already in use"))
		fail_msg("LISTEN_PID of another process not ignored:\n%s", log);
	close(lfd);
	unlink(key);
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_inherited_sockets_serve),
		cmocka_unit_test(test_restart_refuses_nothing),
		cmocka_unit_test(test_mismatch_is_an_error),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
