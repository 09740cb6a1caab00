/* The HTTP side under abuse (issue 13, item 1): more keep-alive clients than the HTTP
 * connection limit, from many source addresses, must not wedge libmicrohttpd; every
 * closed connection's descriptor is released; over-limit connections are answered and
 * counted; requests trickled byte by byte (body or head) are cut at the read limit
 * (--http-read-timeout, derper's 30 s ReadTimeout by default); SIGTERM still ends derpd
 * within a few seconds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test/e2e/harness.h"
#include "test/e2e/test_http_util.h"

enum {
	FLOOD = 1100,     /* more than derpd's 1,024 HTTP connections (and FD_SETSIZE) */
	SOURCES = 39,     /* 127.0.0.2 .. 127.0.0.40: ~29 each, under the per-address limit */
	SIGTERM_MS = 5000 /* derpd must exit this soon after SIGTERM */
};

static int open_fds(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
	DIR *d = opendir(path);
	if (d == NULL)
		return -1;
	int n = 0;
	for (struct dirent *e; (e = readdir(d)) != NULL;)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

struct fd_goal {
	pid_t pid;
	int max;
	int last;
};

static int fds_back(void *arg)
{
	struct fd_goal *g = arg;
	g->last = open_fds(g->pid);
	return g->last >= 0 && g->last <= g->max;
}

/* Status of one request on a fresh connection within timeout_ms, -1 on reset/EOF/late. */
static int quick_status(const struct harness_server *s, const char *path, int timeout_ms)
{
	char r[256];
	snprintf(r, sizeof r, "GET %s HTTP/1.1\r\nHost: derp.test\r\n\r\n", path);
	int fd = tcp_from(s, "127.0.0.1");
	int st = -1;
	if (send(fd, r, strlen(r), MSG_NOSIGNAL) == (ssize_t)strlen(r))
		st = read_resp(fd, resp, sizeof resp, 0, timeout_ms);
	close(fd);
	return st;
}

struct endpoints {
	const struct harness_server *s;
};

static int endpoints_answer(void *arg)
{
	const struct endpoints *e = arg;
	return quick_status(e->s, "/generate_204", 1000) == 204 &&
	       quick_status(e->s, "/derp/probe", 1000) == 200 &&
	       quick_status(e->s, "/debug/varz", 1000) == 200;
}

static void raise_fd_limit(void)
{
	struct rlimit rl;
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
	rl.rlim_cur = rl.rlim_max;
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
	if (rl.rlim_cur < FLOOD + 200)
		skip();
}

/* SIGTERM, and the milliseconds derpd took to exit (fails past SIGTERM_MS). */
static int64_t stop_timed(struct harness_server *s)
{
	int64_t t0 = harness_now_ms();
	kill(s->pid, SIGTERM);
	int st = 0, done = 0;
	while (harness_now_ms() - t0 < SIGTERM_MS)
		if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
			done = 1;
			break;
		} else {
			poll(NULL, 0, 10);
		}
	int64_t took = harness_now_ms() - t0;
	if (!done) {
		harness_dump_log(s);
		kill(s->pid, SIGKILL);
		waitpid(s->pid, &st, 0);
		fail_msg("derpd did not exit within %d ms of SIGTERM", SIGTERM_MS);
	}
	s->pid = 0; /* reaped: harness_stop only checks the log */
	harness_stop(s);
	return took;
}

/* Wait until every socket has its response head (or was closed); counts by outcome. */
static void read_all(const int *fds, int n, int *ok, int *refused, int *closed, int timeout_ms)
{
	static char buf[FLOOD][64];
	static size_t got[FLOOD];
	static int done[FLOOD];
	memset(got, 0, sizeof got);
	memset(done, 0, sizeof done);
	*ok = *refused = *closed = 0;
	int left = n;
	int64_t end = harness_now_ms() + timeout_ms;
	static struct pollfd p[FLOOD];
	while (left > 0 && harness_now_ms() < end) {
		int k = 0;
		for (int i = 0; i < n; i++)
			if (!done[i])
				p[k++] = (struct pollfd){ .fd = fds[i], .events = POLLIN };
		if (poll(p, (nfds_t)k, 100) <= 0)
			continue;
		for (int i = 0, j = 0; i < n; i++) {
			if (done[i])
				continue;
			struct pollfd *q = &p[j++];
			if (!q->revents)
				continue;
			ssize_t r = recv(fds[i], buf[i] + got[i], sizeof buf[i] - 1 - got[i],
					 MSG_DONTWAIT);
			if (r <= 0 && !(r < 0 && errno == EAGAIN)) {
				done[i] = 1, left--, (*closed)++;
				continue;
			}
			if (r > 0)
				got[i] += (size_t)r;
			buf[i][got[i]] = '\0';
			if (strncmp(buf[i], "HTTP/1.1 204", 12) == 0)
				done[i] = 1, left--, (*ok)++;
			else if (strncmp(buf[i], "HTTP/1.1 503", 12) == 0)
				done[i] = 1, left--, (*refused)++;
			else if (got[i] >= 12)
				done[i] = 1, left--, (*closed)++; /* anything else: counted as lost */
		}
	}
	for (int i = 0, shown = 0; i < n && shown < 5; i++)
		if (!done[i])
			print_message("no answer on %d (fd %d): %zu bytes \"%s\"\n", i, fds[i], got[i],
				      buf[i]), shown++;
}

static void test_keepalive_flood(void **state)
{
	(void)state;
	raise_fd_limit();
	struct harness_server *s = harness_start(NULL);
	assert_non_null(s);
	struct endpoints e = { s };
	assert_true(endpoints_answer(&e));
	int fds0 = open_fds(s->pid);
	assert_true(fds0 > 0);

	static int fds[FLOOD];
	const char *r = "GET /generate_204 HTTP/1.1\r\nHost: derp.test\r\n\r\n";
	for (int i = 0; i < FLOOD; i++) {
		char src[32];
		snprintf(src, sizeof src, "127.0.0.%d", 2 + i % SOURCES);
		fds[i] = tcp_from(s, src);
		assert_int_equal(send(fds[i], r, strlen(r), MSG_NOSIGNAL), (ssize_t)strlen(r));
	}
	/* Every client hears back: 204, or a clean 503 when over the limit (or its idle
	 * keep-alive connection was closed to make room for a newer one). */
	int ok, refused, closed;
	read_all(fds, FLOOD, &ok, &refused, &closed, 15000);
	print_message("flood: %d answered 204, %d refused 503, %d closed\n", ok, refused, closed);
	assert_int_equal(ok + refused + closed, FLOOD);
	assert_true(ok >= 1000);

	/* While the flood holds its connections, a new client is still served. */
	int64_t t0 = harness_now_ms();
	assert_true(harness_wait(endpoints_answer, &e, 5000));
	print_message("served during the flood after %lld ms\n", (long long)(harness_now_ms() - t0));

	for (int i = 0; i < FLOOD; i++)
		close(fds[i]);
	t0 = harness_now_ms();
	assert_true(harness_wait(endpoints_answer, &e, 5000));
	int64_t served = harness_now_ms() - t0;
	struct fd_goal g = { s->pid, fds0 + 8, -1 };
	int back = harness_wait(fds_back, &g, 5000);
	print_message("after the flood: served in %lld ms, descriptors %d at start, %d now (%lld ms)\n",
		      (long long)served, fds0, g.last, (long long)(harness_now_ms() - t0));
	if (!back)
		fail_msg("derpd still holds %d descriptors (%d at start)", g.last, fds0);

	/* refusals are counted where derpd's own metrics live */
	assert_int_equal(req(s, "GET", "/metrics", NULL), 200);
	assert_non_null(strstr(body(), "\nderpd_http_connections_refused_total "));
	assert_non_null(strstr(body(), "\nderpd_http_connections_evicted_total "));

	int64_t took = stop_timed(s);
	print_message("SIGTERM took %lld ms\n", (long long)took);
}

/* A request trickled one byte at a time keeps the idle timer fresh; the read limit still
 * cuts it (derper: ReadTimeout). */
static int64_t cut_after(int fd, const char *trickle, size_t n, int gap_ms, int max_ms)
{
	int64_t t0 = harness_now_ms();
	for (size_t i = 0; harness_now_ms() - t0 < max_ms; i = (i + 1) % n) {
		if (send(fd, trickle + i, 1, MSG_NOSIGNAL) != 1)
			break;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, gap_ms) > 0) {
			char b[512];
			ssize_t r = recv(fd, b, sizeof b, MSG_DONTWAIT);
			if (r == 0 || (r < 0 && errno != EAGAIN))
				break;
		}
	}
	return harness_now_ms() - t0;
}

/* A counter from derpd's /metrics (NAN if absent). */
static double prom_value(const struct harness_server *s, const char *name)
{
	char needle[128];
	if (req(s, "GET", "/metrics", NULL) != 200)
		return NAN;
	snprintf(needle, sizeof needle, "\n%s ", name);
	const char *p = strstr(body(), needle);
	return p ? strtod(p + strlen(needle), NULL) : NAN;
}

static void test_slow_requests_cut(void **state)
{
	(void)state;
	const char *args[] = { "--http-read-timeout", "2s", NULL };
	struct harness_server *s = harness_start(args);
	assert_non_null(s);
	double cut0 = prom_value(s, "derpd_http_read_timeouts_total");

	/* a POST body at 2 bytes/s */
	int fd = tcp_from(s, "127.0.0.1");
	const char *h = "POST / HTTP/1.1\r\nHost: derp.test\r\nContent-Length: 1000\r\n\r\n";
	assert_int_equal(send(fd, h, strlen(h), MSG_NOSIGNAL), (ssize_t)strlen(h));
	int64_t ms = cut_after(fd, "abcdefgh", 8, 500, 10000);
	close(fd);
	print_message("slow body cut after %lld ms\n", (long long)ms);
	assert_true(ms >= 1400 && ms < 6000);

	/* the second request head on a keep-alive connection, trickled */
	fd = tcp_from(s, "127.0.0.1");
	const char *r = "GET /derp/probe HTTP/1.1\r\nHost: derp.test\r\n\r\n";
	assert_int_equal(send(fd, r, strlen(r), MSG_NOSIGNAL), (ssize_t)strlen(r));
	assert_int_equal(read_resp(fd, resp, sizeof resp, 0, 5000), 200);
	const char *slow = "GET / HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
	ms = cut_after(fd, slow, strlen(slow), 500, 15000);
	close(fd);
	print_message("slow head cut after %lld ms\n", (long long)ms);
	/* an idle wait and a read limit, as Go's IdleTimeout (= ReadTimeout) then ReadTimeout */
	assert_true(ms >= 1400 && ms < 8000);

	/* a complete request is still answered, and both cuts were counted */
	assert_int_equal(req(s, "GET", "/generate_204", NULL), 204);
	double cut1 = prom_value(s, "derpd_http_read_timeouts_total");
	assert_false(isnan(cut0));
	assert_true(cut1 - cut0 >= 2);
	stop_timed(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_keepalive_flood),
		cmocka_unit_test(test_slow_requests_cut),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
