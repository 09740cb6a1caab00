/* systemd notification (man page "Running under systemd"): with NOTIFY_SOCKET set, derpd
 * sends READY=1 once it serves, WATCHDOG=1 at half of WATCHDOG_USEC, RELOADING=1 +
 * MONOTONIC_USEC then READY=1 around SIGHUP, STOPPING=1 on SIGTERM. The test is the
 * service manager: it binds the datagram socket and reads what arrives, in order. */
#include <dirent.h>
#include <errno.h>
#include <sched.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "test/e2e/harness.h"
#include "test/e2e/test_tls_util.h"

/* Generous: ASan/TSan builds on a loaded 2-core machine. */
#define MSG_TIMEOUT_MS 10000

struct nsock {
	int fd;
	char dir[64];
	char env[128]; /* the NOTIFY_SOCKET value */
};

/* Bind a datagram socket: a path in a fresh directory, or (abstract) "@derpd-test-<pid>". */
static void nsock_open(struct nsock *n, int abstract)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	socklen_t len;

	n->dir[0] = '\0';
	n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	assert_true(n->fd >= 0);
	if (abstract) {
		snprintf(n->env, sizeof n->env, "@derpd-notify-test-%d-%lld", (int)getpid(),
			 (long long)harness_now_ms());
		memcpy(a.sun_path + 1, n->env + 1, strlen(n->env) - 1);
		len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(n->env));
	} else {
		tu_tmpdir(n->dir, sizeof n->dir);
		snprintf(n->env, sizeof n->env, "%s/notify", n->dir);
		strcpy(a.sun_path, n->env);
		len = sizeof a;
	}
	assert_int_equal(bind(n->fd, (struct sockaddr *)&a, len), 0);
}

static void nsock_close(struct nsock *n)
{
	close(n->fd);
	if (n->dir[0])
		tu_rmdir(n->dir);
}

/* The next message (NUL-terminated in buf), or -1 after timeout_ms. */
static int nsock_recv(struct nsock *n, char *buf, size_t cap, int timeout_ms)
{
	int64_t end = harness_now_ms() + timeout_ms;

	for (;;) {
		int64_t left = end - harness_now_ms();
		struct pollfd p = { .fd = n->fd, .events = POLLIN };
		if (left < 0)
			return -1;
		int r = poll(&p, 1, (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		ssize_t got = recv(n->fd, buf, cap - 1, MSG_DONTWAIT);
		if (got < 0)
			continue;
		buf[got] = '\0';
		return (int)got;
	}
}

/* The next message that is not a bare WATCHDOG=1 (those are counted in *pings). */
static void nsock_next(struct nsock *n, char *buf, size_t cap, int *pings)
{
	for (;;) {
		if (nsock_recv(n, buf, cap, MSG_TIMEOUT_MS) < 0)
			fail_msg("no notification within %d ms", MSG_TIMEOUT_MS);
		if (strcmp(buf, "WATCHDOG=1") != 0)
			return;
		++*pings;
	}
}

/* msg has the line "line" (exactly, or as a "KEY=" prefix when line ends in '='). */
static const char *has_line(const char *msg, const char *line)
{
	size_t l = strlen(line);

	for (const char *p = msg; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
		if (!strncmp(p, line, l) && (line[l - 1] == '=' || p[l] == '\n' || p[l] == '\0'))
			return p + l;
	return NULL;
}

/* Start derpd with the notify environment (unset again at once: the harness passes our
 * environment to every derpd it starts). */
static struct harness_server *start(const struct nsock *n, const char *wd_usec,
				    const char *wd_pid, const char *const *extra, unsigned flags)
{
	setenv("NOTIFY_SOCKET", n->env, 1);
	if (wd_usec)
		setenv("WATCHDOG_USEC", wd_usec, 1);
	if (wd_pid)
		setenv("WATCHDOG_PID", wd_pid, 1);
	struct harness_server *s = harness_start_opts(extra, flags);
	unsetenv("NOTIFY_SOCKET");
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
	return s;
}

static int exited(void *arg)
{
	struct harness_server *s = arg;
	int st;

	if (waitpid(s->pid, &st, WNOHANG) != s->pid)
		return 0;
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	return 1;
}

/* SIGTERM: STOPPING=1 first, then derpd exits 0. */
static void stop_checked(struct harness_server *s, struct nsock *n, int *pings)
{
	char msg[512];

	kill(s->pid, SIGTERM);
	nsock_next(n, msg, sizeof msg, pings);
	assert_non_null(has_line(msg, "STOPPING=1"));
	assert_true(harness_wait(exited, s, MSG_TIMEOUT_MS));
	s->pid = 0;
	harness_stop(s);
}

static void test_lifecycle(void **state)
{
	(void)state;
	struct nsock n;
	char msg[512];
	int pings = 0;

	nsock_open(&n, 0);
	struct harness_server *s = start(&n, "400000", NULL, NULL, 0);

	/* READY=1 comes first (no watchdog ping before it) and names the port, which serves. */
	assert_true(nsock_recv(&n, msg, sizeof msg, MSG_TIMEOUT_MS) > 0);
	assert_non_null(has_line(msg, "READY=1"));
	const char *st = has_line(msg, "STATUS=");
	assert_non_null(st);
	char want[64];
	snprintf(want, sizeof want, "serving on 127.0.0.1:%d", s->port);
	assert_true(!strncmp(st, want, strlen(want)));
	close(harness_tcp(s));

	/* Pings at about 200 ms: drop those queued while the harness started derpd, then
	 * four take at least three intervals (~600 ms), and come well within 10 s. */
	while (nsock_recv(&n, msg, sizeof msg, 0) > 0)
		assert_string_equal(msg, "WATCHDOG=1");
	int64_t t0 = harness_now_ms();
	while (pings < 4) {
		assert_true(nsock_recv(&n, msg, sizeof msg, MSG_TIMEOUT_MS) > 0);
		assert_string_equal(msg, "WATCHDOG=1");
		pings++;
	}
	assert_true(harness_now_ms() - t0 >= 400);

	/* SIGHUP: RELOADING=1 with a CLOCK_MONOTONIC stamp from just now, then READY=1. */
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	uint64_t before = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
	kill(s->pid, SIGHUP);
	nsock_next(&n, msg, sizeof msg, &pings);
	assert_non_null(has_line(msg, "RELOADING=1"));
	const char *mono = has_line(msg, "MONOTONIC_USEC=");
	assert_non_null(mono);
	uint64_t at = strtoull(mono, NULL, 10);
	clock_gettime(CLOCK_MONOTONIC, &ts);
	uint64_t after = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
	assert_true(at >= before && at <= after);
	nsock_next(&n, msg, sizeof msg, &pings);
	assert_non_null(has_line(msg, "READY=1"));

	/* Still pinging after the reload. */
	int p0 = pings;
	while (pings < p0 + 2) {
		assert_true(nsock_recv(&n, msg, sizeof msg, MSG_TIMEOUT_MS) > 0);
		assert_string_equal(msg, "WATCHDOG=1");
		pings++;
	}
	stop_checked(s, &n, &pings);
	nsock_close(&n);
}

/* An abstract NOTIFY_SOCKET; WATCHDOG_PID naming another process: READY=1 but no pings. */
static void test_abstract_other_pid(void **state)
{
	(void)state;
	struct nsock n;
	char msg[512], pid[16];
	int pings = 0;

	nsock_open(&n, 1);
	snprintf(pid, sizeof pid, "%d", (int)getpid());
	struct harness_server *s = start(&n, "200000", pid, NULL, 0);
	assert_true(nsock_recv(&n, msg, sizeof msg, MSG_TIMEOUT_MS) > 0);
	assert_non_null(has_line(msg, "READY=1"));
	/* 1 s is ten ping intervals. */
	assert_int_equal(nsock_recv(&n, msg, sizeof msg, 1000), -1);
	stop_checked(s, &n, &pings);
	assert_int_equal(pings, 0);
	nsock_close(&n);
}

/* TLS: READY=1 once the certificate is loaded (here: generated for an IP hostname); the
 * harness's start-up probe has completed a TLS handshake by the time we read it. */
static void test_tls_ready(void **state)
{
	(void)state;
	struct nsock n;
	char msg[512], cd[96], dir[64];
	int pings = 0;

	tu_tmpdir(dir, sizeof dir);
	snprintf(cd, sizeof cd, "%s/certs", dir);
	const char *extra[] = { "-certmode", "manual", "-hostname", "127.0.0.1", "-certdir", cd,
				"-http-port", "-1", NULL };
	nsock_open(&n, 0);
	struct harness_server *s = start(&n, NULL, NULL, extra, HARNESS_TLS);
	assert_true(nsock_recv(&n, msg, sizeof msg, MSG_TIMEOUT_MS) > 0);
	assert_non_null(has_line(msg, "READY=1"));
	assert_non_null(strstr(msg, "(TLS)"));
	stop_checked(s, &n, &pings);
	assert_int_equal(pings, 0);
	nsock_close(&n);
	tu_rmdir(dir);
}

/* Let's Encrypt mode without a cached certificate: STATUS says derpd is obtaining one, and
 * READY=1 waits for the first order to end (here it fails: the CA is unreachable) and
 * says so. */
static void test_acme_ready_waits(void **state)
{
	(void)state;
	struct nsock n;
	char msg[512], cd[96], dir[64];
	int pings = 0;

	tu_tmpdir(dir, sizeof dir);
	snprintf(cd, sizeof cd, "%s/certs", dir);
	/* ACME modes serve TLS only on port 443, as derper: free in our network namespace. */
	const char *extra[] = { "-a", "127.0.0.1:443", "-certmode", "letsencrypt",
				"-hostname", "derp.acme.test",
				"-certdir", cd, "--acme-directory", "https://127.0.0.1:1/dir",
				"-http-port", "-1", NULL };
	nsock_open(&n, 0);
	struct harness_server *s = start(&n, NULL, NULL, extra, HARNESS_TLS | HARNESS_NO_PROBE);
	assert_true(nsock_recv(&n, msg, sizeof msg, MSG_TIMEOUT_MS) > 0);
	assert_null(has_line(msg, "READY=1"));
	assert_non_null(strstr(msg, "STATUS=listening; obtaining a certificate for derp.acme.test"));
	assert_true(nsock_recv(&n, msg, sizeof msg, MSG_TIMEOUT_MS) > 0);
	assert_non_null(has_line(msg, "READY=1"));
	assert_non_null(strstr(msg, "first ACME order failed"));
	assert_true(harness_log_contains(s, "getting cert for derp.acme.test"));
	stop_checked(s, &n, &pings);
	nsock_close(&n);
	tu_rmdir(dir);
}

/* The thread of worker 0 (named "derpd-w0"), or -1. */
static pid_t worker_tid(pid_t pid)
{
	char path[320], comm[32];
	pid_t found = -1;
	DIR *d;

	snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
	if (!(d = opendir(path)))
		return -1;
	for (struct dirent *e; found < 0 && (e = readdir(d));) {
		snprintf(path, sizeof path, "/proc/%d/task/%s/comm", (int)pid, e->d_name);
		FILE *f = fopen(path, "r");
		if (f && fgets(comm, sizeof comm, f) && !strcmp(comm, "derpd-w0\n"))
			found = (pid_t)atoi(e->d_name);
		if (f)
			fclose(f);
	}
	closedir(d);
	return found;
}

/* A stuck worker: one worker thread stopped by ptrace (the rest of derpd runs on) makes
 * derpd withhold its pings, and say so; let go, the pings come back. */
static void test_stuck_worker(void **state)
{
	(void)state;
	struct nsock n;
	char msg[512];
	int pings = 0, st;
	const char *extra[] = { "--workers", "2", NULL };

	nsock_open(&n, 0);
	struct harness_server *s = start(&n, "400000", NULL, extra, 0);
	assert_true(nsock_recv(&n, msg, sizeof msg, MSG_TIMEOUT_MS) > 0);
	assert_non_null(has_line(msg, "READY=1"));
	assert_true(nsock_recv(&n, msg, sizeof msg, MSG_TIMEOUT_MS) > 0);
	assert_string_equal(msg, "WATCHDOG=1");

	pid_t tid = worker_tid(s->pid);
	assert_true(tid > 0);
	assert_int_equal(ptrace(PTRACE_SEIZE, tid, 0, 0), 0);
	assert_int_equal(ptrace(PTRACE_INTERRUPT, tid, 0, 0), 0);
	assert_int_equal(waitpid(tid, &st, __WALL), tid);
	assert_true(WIFSTOPPED(st));

	/* Pings due before the worker's last turn grew older than the interval (400 ms) may
	 * still come; then a whole second of silence, within 10 s. */
	int64_t end = harness_now_ms() + MSG_TIMEOUT_MS;
	while (nsock_recv(&n, msg, sizeof msg, 1000) > 0) {
		assert_string_equal(msg, "WATCHDOG=1");
		if (harness_now_ms() > end)
			fail_msg("derpd kept pinging with a worker stopped");
	}
	assert_true(harness_log_contains(s, "withholding the watchdog ping"));

	assert_int_equal(ptrace(PTRACE_DETACH, tid, 0, 0), 0);
	assert_true(nsock_recv(&n, msg, sizeof msg, MSG_TIMEOUT_MS) > 0);
	assert_string_equal(msg, "WATCHDOG=1");
	struct derp_client *a = harness_client(s, NULL), *b = harness_client(s, NULL);
	harness_relay_check(a, b);
	derp_client_close(a);
	derp_client_close(b);
	stop_checked(s, &n, &pings);
	nsock_close(&n);
}

int main(void)
{
	/* A network namespace of our own (as root), so port 443 is ours. */
	if (unshare(CLONE_NEWNET) != 0 || system("ip link set lo up") != 0) {
		fprintf(stderr, "test_notify: unshare(CLONE_NEWNET) or ip link: %s (needs root)\n",
			strerror(errno));
		return 1;
	}
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lifecycle),
		cmocka_unit_test(test_abstract_other_pid),
		cmocka_unit_test(test_tls_ready),
		cmocka_unit_test(test_acme_ready_waits),
		cmocka_unit_test(test_stuck_worker),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
