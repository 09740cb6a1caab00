/* TCP at the edge, against the real binary (spec SERVER.md §5, PROTOCOL.md §7.6): the
 * write timeout, keepalive and user-timeout socket options as the kernel holds them,
 * slowloris handshakes cut by the 10 s deadline, and surviving EMFILE on accept. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "server/frame.h"
#include "test/e2e/harness.h"

#define PUB(c) derp_client_public_key(c)

/* ---- the server's own sockets, read with pidfd_getfd(2) ---- */

/* The socket inode of derpd's end of a connection (local port = derpd's, remote port =
 * rport), or of its listener (rport 0, state LISTEN). 0 if not found. */
static unsigned long find_inode(pid_t pid, uint16_t lport, uint16_t rport)
{
	char path[64], line[512];
	unsigned long found = 0;

	snprintf(path, sizeof path, "/proc/%d/net/tcp", (int)pid);
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	while (!found && fgets(line, sizeof line, f)) {
		unsigned la, lp, ra, rp, st;
		unsigned long inode;
		if (sscanf(line, " %*d: %x:%x %x:%x %x %*x:%*x %*x:%*x %*x %*d %*d %lu", &la, &lp, &ra,
			   &rp, &st, &inode) != 6)
			continue;
		if (lp == lport && (rport ? rp == rport && st == 1 /* ESTABLISHED */ : st == 10))
			found = inode;
	}
	fclose(f);
	return found;
}

/* Our own copy of derpd's file descriptor for that socket inode. */
static int grab_fd(pid_t pid, unsigned long inode)
{
	char dir[64], link[128], want[64];
	struct dirent *e;
	int target = -1;

	snprintf(dir, sizeof dir, "/proc/%d/fd", (int)pid);
	snprintf(want, sizeof want, "socket:[%lu]", inode);
	DIR *d = opendir(dir);
	assert_non_null(d);
	while (target < 0 && (e = readdir(d))) {
		char p[400];
		snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
		ssize_t n = readlink(p, link, sizeof link - 1);
		if (n > 0) {
			link[n] = '\0';
			if (strcmp(link, want) == 0)
				target = atoi(e->d_name);
		}
	}
	closedir(d);
	if (target < 0)
		fail_msg("derpd holds no fd for socket inode %lu", inode);
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (pidfd < 0)
		skip(); /* kernel without pidfds: nothing to look at */
	int fd = (int)syscall(SYS_pidfd_getfd, pidfd, target, 0);
	close(pidfd);
	if (fd < 0 && (errno == EPERM || errno == ENOSYS))
		skip(); /* not allowed to look into another process here */
	assert_true(fd >= 0);
	return fd;
}

static int sockopt(int fd, int level, int name)
{
	int v = -1;
	socklen_t l = sizeof v;
	assert_int_equal(getsockopt(fd, level, name, &v, &l), 0);
	return v;
}

static uint16_t local_port(int fd)
{
	struct sockaddr_in in;
	socklen_t l = sizeof in;
	assert_int_equal(getsockname(fd, (struct sockaddr *)&in, &l), 0);
	return ntohs(in.sin_port);
}

struct sockopts { int keepalive, idle, intvl, cnt, user_timeout, listen_user_timeout; };

static struct sockopts server_sockopts(const struct harness_server *s, struct derp_client *c)
{
	struct sockopts o;
	unsigned long ino = find_inode(s->pid, s->port, local_port(derp_client_fd(c)));
	assert_true(ino != 0);
	int fd = grab_fd(s->pid, ino);
	o.keepalive = sockopt(fd, SOL_SOCKET, SO_KEEPALIVE);
	o.idle = sockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE);
	o.intvl = sockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL);
	o.cnt = sockopt(fd, IPPROTO_TCP, TCP_KEEPCNT);
	o.user_timeout = sockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT);
	close(fd);
	ino = find_inode(s->pid, s->port, 0);
	assert_true(ino != 0);
	fd = grab_fd(s->pid, ino);
	o.listen_user_timeout = sockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT);
	close(fd);
	print_message("keepalive %d idle %d s interval %d s count %d, user timeout %d ms "
		      "(listener %d ms)\n", o.keepalive, o.idle, o.intvl, o.cnt, o.user_timeout,
		      o.listen_user_timeout);
	return o;
}

/* §5: SO_KEEPALIVE with idle = --tcp-keepalive-time (10 min), TCP_USER_TIMEOUT =
 * --tcp-user-timeout (15 s) on the listener and so on every accepted connection. The
 * probe interval: Go >= 1.23 (derper today) sets 15 s and 9 probes, older Go set it equal
 * to the idle time; either is accepted here. */
static void test_keepalive_options(void **state)
{
	(void)state;
	static const struct { const char *const args[5]; int idle, user_ms; } runs[] = {
		{ { NULL }, 600, 15000 },
		{ { "--tcp-keepalive-time", "42s", "--tcp-user-timeout", "7500ms", NULL }, 42, 7500 },
	};
	for (size_t i = 0; i < sizeof runs / sizeof *runs; i++) {
		struct harness_server *s = harness_start(runs[i].args);
		struct derp_client *c = harness_client(s, NULL);
		struct sockopts o = server_sockopts(s, c);
		assert_int_equal(o.keepalive, 1);
		assert_int_equal(o.idle, runs[i].idle);
		assert_true(o.intvl == 15 || o.intvl == runs[i].idle);
		assert_int_equal(o.listen_user_timeout, runs[i].user_ms);
		assert_int_equal(o.user_timeout, runs[i].user_ms);
		derp_client_close(c);
		harness_stop(s);
	}
}

/* ---- the write timeout ---- */

/* §7.6: a receiver that never reads is dropped once a write has made no progress for
 * --tcp-write-timeout (2 s), counted in derp_sclient_write_timeouts; the sender and an
 * unrelated pair never notice. */
static void test_write_timeout(void **state)
{
	struct harness_server *s = *state;
	struct derp_client_opts small = harness_opts();
	small.rcvbuf = 4096;
	struct derp_client *snd = harness_client(s, NULL), *r = harness_client(s, &small);
	struct derp_client *a = harness_client(s, NULL), *b = harness_client(s, NULL);
	uint8_t pkt[1200];
	int sent = 0;

	assert_int_equal(harness_metric(s, "derp_sclient_write_timeouts"), 0);
	memset(pkt, 0x5a, sizeof pkt);
	int64_t t0 = harness_now_ms(), end = t0 + 15000, gone = 0;
	/* keep r's queue non-empty so the server keeps trying to write to it */
	while (!gone && harness_now_ms() < end) {
		for (int i = 0; i < 50; i++, sent++)
			assert_int_equal(derp_client_send(snd, PUB(r), pkt, sizeof pkt), 0);
		double v = harness_metric(s, "derp_sclient_write_timeouts");
		if (v >= 1)
			gone = harness_now_ms();
		else
			poll(NULL, 0, 20);
	}
	if (!gone) {
		harness_dump_log(s);
		fail_msg("never-reading receiver still there after 15 s (%d packets)", sent);
	}
	print_message("write timeout after %lld ms, %d packets\n", (long long)(gone - t0), sent);
	/* not before the 2 s of no progress (the first second or so fills the buffers) */
	assert_true(gone - t0 >= 1900);
	/* well before TCP_USER_TIMEOUT (15 s) could have done it */
	assert_true(gone - t0 < 10000);
	assert_int_equal(harness_metric(s, "derp_sclient_write_timeouts"), 1);
	harness_relay_check(a, b);
	harness_ping(snd, 5000);
	derp_client_close(snd);
	derp_client_close(r);
	derp_client_close(a);
	derp_client_close(b);
}

/* ---- slowloris ---- */

/* Upgraded connections that never finish the handshake (no ClientInfo, or half of one)
 * are closed by the 10 s handshake deadline, all of them, while a real client logs in and
 * relays as usual. */
static void test_slowloris_handshake(void **state)
{
	struct harness_server *s = *state;
	enum { N = 100 };
	int fds[N];
	int64_t opened[N], closed[N];
	struct derp_client_opts o = harness_opts();

	for (int i = 0; i < N; i++) {
		struct derp_client *c = derp_client_open("127.0.0.1", s->port, &o);
		if (!c)
			fail_msg("slow connection %d: %s", i, derp_client_error());
		if (i % 2) {
			/* half a ClientInfo frame: header for 200 bytes, then 10 of them */
			uint8_t part[15] = { FRAME_CLIENT_INFO, 0, 0, 0, 200 };
			assert_int_equal(derp_client_write_raw(c, part, sizeof part), 0);
		}
		uint8_t rest[64];
		size_t n;
		fds[i] = derp_client_detach(c, rest, sizeof rest, &n);
		assert_true(fds[i] >= 0);
		opened[i] = harness_now_ms();
		closed[i] = 0;
	}
	/* meanwhile: business as usual */
	struct derp_client *a = harness_client(s, NULL), *b = harness_client(s, NULL);
	harness_relay_check(a, b);

	int left = N;
	int64_t end = harness_now_ms() + 16000;
	while (left && harness_now_ms() < end) {
		struct pollfd p[N];
		for (int i = 0; i < N; i++)
			p[i] = (struct pollfd){ .fd = closed[i] ? -1 : fds[i], .events = POLLIN };
		if (poll(p, N, 200) <= 0)
			continue;
		for (int i = 0; i < N; i++) {
			char buf[256];
			if (!p[i].revents)
				continue;
			ssize_t r = recv(fds[i], buf, sizeof buf, MSG_DONTWAIT);
			if (r == 0 || (r < 0 && errno != EAGAIN)) {
				closed[i] = harness_now_ms();
				left--;
			} else if (r > 0) {
				fail_msg("slow connection %d was sent %zd bytes", i, r);
			}
		}
	}
	if (left)
		fail_msg("%d of %d stalled handshakes still open after 16 s", left, N);
	int64_t lo = INT64_MAX, hi = 0;
	for (int i = 0; i < N; i++) {
		int64_t d = closed[i] - opened[i];
		lo = d < lo ? d : lo;
		hi = d > hi ? d : hi;
		close(fds[i]);
	}
	print_message("stalled handshakes closed after %lld..%lld ms\n", (long long)lo,
		      (long long)hi);
	assert_true(lo >= 9500);
	assert_true(hi <= 12500);
	harness_relay_check(a, b);
	derp_client_close(a);
	derp_client_close(b);
}

/* ---- EMFILE ---- */

static int count_fds(pid_t pid)
{
	char dir[64];
	struct dirent *e;
	int n = 0;

	snprintf(dir, sizeof dir, "/proc/%d/fd", (int)pid);
	DIR *d = opendir(dir);
	assert_non_null(d);
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

static int upgrade_fd(const struct harness_server *s)
{
	char req[160];
	int fd = harness_tcp(s);
	int n = snprintf(req, sizeof req, "GET /derp HTTP/1.1\r\nHost: 127.0.0.1:%u\r\n"
			 "Upgrade: DERP\r\nConnection: Upgrade\r\n\r\n", s->port);
	assert_int_equal(send(fd, req, (size_t)n, MSG_NOSIGNAL), n);
	return fd;
}

static int got_101(int fd)
{
	char head[512];
	return harness_read_head(fd, head, sizeof head, 300) > 0 && strncmp(head, "HTTP/1.1 101", 12) == 0;
}

/* How many lines of the server's log contain needle. */
static int log_count(const struct harness_server *s, const char *needle)
{
	char line[1024];
	int n = 0;
	FILE *f = fopen(s->log_path, "re");

	while (f && fgets(line, sizeof line, f))
		n += strstr(line, needle) != NULL;
	if (f)
		fclose(f);
	return n;
}

static int accepting_again(void *arg)
{
	return harness_log_contains(arg, "accepting again;");
}

/* Out of file descriptors (RLIMIT_NOFILE lowered, soft and hard, on the running derpd):
 * accept fails, derpd says so and keeps serving the clients it has; once some connections
 * go away, new clients log in again. */
static void test_emfile(void **state)
{
	(void)state;
	struct harness_server *s = harness_start(NULL);
	struct derp_client *a = harness_client(s, NULL), *b = harness_client(s, NULL);
	enum { SPARE = 8, EXTRA = 40 };
	int fds[EXTRA], ok = 0;

	int n0 = count_fds(s->pid);
	struct rlimit rl = { (rlim_t)(n0 + SPARE), (rlim_t)(n0 + SPARE) };
	assert_int_equal(prlimit(s->pid, RLIMIT_NOFILE, &rl, NULL), 0);
	for (int i = 0; i < EXTRA; i++)
		fds[i] = upgrade_fd(s);
	int64_t end = harness_now_ms() + 5000;
	while (!harness_log_contains(s, "Too many open files") && harness_now_ms() < end)
		poll(NULL, 0, 20);
	if (!harness_log_contains(s, "Too many open files")) {
		harness_dump_log(s);
		fail_msg("derpd never ran out of descriptors (%d open, limit %d)", n0, n0 + SPARE);
	}
	for (int i = 0; i < EXTRA; i++)
		ok += got_101(fds[i]);
	print_message("%d of %d connections upgraded with %d spare descriptors\n", ok, EXTRA,
		      SPARE);
	assert_true(ok <= SPARE + 4); /* a descriptor or two may have been in transit at n0 */
	assert_true(ok < EXTRA);
	/* the clients it has are served as before */
	harness_relay_check(a, b);
	harness_ping(a, 3000);

	/* some go away: derpd accepts again (the backlog first, then a new client) */
	for (int i = 0; i < EXTRA; i++)
		close(fds[i]);
	struct derp_client_opts o = harness_opts();
	o.timeout_ms = 10000;
	struct derp_client *c = harness_client(s, &o);
	harness_relay_check(a, c);
	harness_relay_check(a, b);
	/* said once per worker and episode (it was ~20 lines a second), and its end */
	assert_true(harness_wait(accepting_again, s, 10000));
	int said = log_count(s, "Too many open files");
	print_message("\"Too many open files\" logged %d time(s)\n", said);
	assert_true(said >= 1 && said <= 2);
	derp_client_close(a);
	derp_client_close(b);
	derp_client_close(c);
	rl.rlim_cur = rl.rlim_max = 4096;
	prlimit(s->pid, RLIMIT_NOFILE, &rl, NULL);
	harness_stop(s);
}

/* derpd started with stdin, stdout and stderr closed: 0-2 are held by /dev/null, so no
 * socket or eventfd takes them (log lines would be written into it), and it serves. */
static void test_stdio_closed(void **state)
{
	(void)state;
	struct harness_server s = { .pid = 0 };
	char key[160], addr[32], link[64], target[128];
	int probe = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof sa;

	/* a free port, released just before derpd binds it: derpd cannot log it to us */
	assert_int_equal(bind(probe, (struct sockaddr *)&sa, sizeof sa), 0);
	assert_int_equal(getsockname(probe, (struct sockaddr *)&sa, &len), 0);
	s.port = ntohs(sa.sin_port);
	close(probe);
	snprintf(s.dir, sizeof s.dir, "/tmp/derpd-e2e-XXXXXX");
	assert_non_null(mkdtemp(s.dir));
	snprintf(key, sizeof key, "%s/derper.key", s.dir);
	snprintf(addr, sizeof addr, "127.0.0.1:%u", s.port);
	const char *bin = getenv("DERPD_BIN") ? getenv("DERPD_BIN") : "./derpd";
	s.pid = fork();
	assert_true(s.pid >= 0);
	if (s.pid == 0) {
		close(0);
		close(1);
		close(2);
		execl(bin, bin, "-a", addr, "-c", key, "-stun=false", (char *)NULL);
		_exit(127);
	}
	char resp[4096];
	int status = -1;
	for (int64_t end = harness_now_ms() + 10000; harness_now_ms() < end; poll(NULL, 0, 20))
		if ((status = harness_http(&s, "GET /derp/probe HTTP/1.1\r\nHost: x\r\n"
					     "Connection: close\r\n\r\n", resp, sizeof resp)) == 200)
			break;
	char bad[200] = "";
	if (status != 200)
		snprintf(bad, sizeof bad, "GET /derp/probe: %d", status);
	for (int fd = 0; fd <= 2 && !bad[0]; fd++) {
		snprintf(link, sizeof link, "/proc/%d/fd/%d", (int)s.pid, fd);
		ssize_t n = readlink(link, target, sizeof target - 1);
		target[n > 0 ? n : 0] = 0;
		if (strcmp(target, "/dev/null") != 0)
			snprintf(bad, sizeof bad, "derpd's fd %d is %s, not /dev/null", fd, target);
	}
	kill(s.pid, SIGTERM); /* before failing: a failed test leaves no server behind */
	int st;
	assert_int_equal(waitpid(s.pid, &st, 0), s.pid);
	if (bad[0])
		fail_msg("%s", bad);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	unlink(key);
	rmdir(s.dir);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_keepalive_options),
		cmocka_unit_test_setup_teardown(test_write_timeout, harness_setup, harness_teardown),
		cmocka_unit_test_setup_teardown(test_slowloris_handshake, harness_setup,
						harness_teardown),
		cmocka_unit_test(test_emfile),
		cmocka_unit_test(test_stdio_closed),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
