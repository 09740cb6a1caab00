/* -ace, the CONNECT proxy (man page "ACE CONNECT proxy", SERVER.md §13). The test runs in
 * network and mount namespaces of its own (as root): targets listen on 127.0.0.x:443 and
 * :80, and a private /etc/hosts makes *.tailscale.com names resolve to them. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "test/e2e/harness.h"
#include "test/e2e/test_tls_util.h"

#define HOSTS \
	"127.0.0.1 localhost\n" \
	"127.0.0.2 controlplane.tailscale.com\n" \
	"127.0.0.3 closed.tailscale.com\n" \
	"127.0.0.4 blackhole.tailscale.com\n" \
	"127.0.0.2 derp9.tailscale.com example.com tailscale.com\n"

/* ---- targets: echo servers on 127.0.0.2:443 and :80: "echo:" before the first bytes
 * echoed on a connection, the rest echoed as they come ---- */

static struct target {
	int lfd, stop;
	pthread_t thread;
	uint16_t port;
	pthread_mutex_t mu;
	int accepted, eofs;    /* connections taken; of them, ended by the proxy's EOF */
	char first[64];        /* the first bytes the last connection sent */
	int flood;             /* answer every read with 64 KiB more (a slow-reader test) */
} tgt[2] = { { .lfd = -1, .mu = PTHREAD_MUTEX_INITIALIZER },
	     { .lfd = -1, .mu = PTHREAD_MUTEX_INITIALIZER } };

static int listen_on(const char *ip, uint16_t port, int backlog)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	inet_pton(AF_INET, ip, &a.sin_addr);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
	assert_int_equal(listen(fd, backlog), 0);
	return fd;
}

static void *target_conn(struct target *t, int fd)
{
	char buf[65536] = "echo:";
	int first = 1;

	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (__atomic_load_n(&t->stop, __ATOMIC_RELAXED))
			break;
		if (poll(&p, 1, 50) <= 0)
			continue;
		ssize_t r = read(fd, buf + 5, sizeof buf - 5);
		if (r <= 0) {
			pthread_mutex_lock(&t->mu);
			t->eofs += r == 0;
			pthread_mutex_unlock(&t->mu);
			break;
		}
		const char *from = buf + 5;
		size_t n = (size_t)r;
		if (first) {
			pthread_mutex_lock(&t->mu);
			snprintf(t->first, sizeof t->first, "%.*s", (int)(r < 63 ? r : 63), buf + 5);
			pthread_mutex_unlock(&t->mu);
			first = 0;
			from = buf;
			n += 5;
		}
		/* Blocking writes with a bound, so a stop request is seen. */
		struct timeval tv = { 0, 200000 };
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
		if (__atomic_load_n(&t->flood, __ATOMIC_RELAXED)) {
			/* Send until the proxy gives up on its client (EPIPE / RST) or we stop. */
			while (!__atomic_load_n(&t->stop, __ATOMIC_RELAXED) &&
			       (write(fd, buf, sizeof buf) > 0 || errno == EAGAIN))
				;
			break;
		}
		for (size_t off = 0; off < n;) {
			ssize_t w = write(fd, from + off, n - off);
			if (w <= 0)
				break;
			off += (size_t)w;
		}
	}
	close(fd);
	return NULL;
}

static void *target_main(void *arg)
{
	struct target *t = arg;

	while (!__atomic_load_n(&t->stop, __ATOMIC_RELAXED)) {
		struct pollfd p = { .fd = t->lfd, .events = POLLIN };
		if (poll(&p, 1, 50) <= 0)
			continue;
		int fd = accept(t->lfd, NULL, NULL);
		if (fd < 0)
			continue;
		pthread_mutex_lock(&t->mu);
		t->accepted++;
		pthread_mutex_unlock(&t->mu);
		target_conn(t, fd); /* one at a time is all the tests need */
	}
	return NULL;
}

static int tgt_get(struct target *t, int *field)
{
	pthread_mutex_lock(&t->mu);
	int v = *field;
	pthread_mutex_unlock(&t->mu);
	return v;
}

/* ---- the client side ---- */

static char certdir[96], tmp[64];

static struct harness_server *start(int ace, int tls, const char *write_timeout)
{
	const char *extra[16];
	int n = 0;

	if (tls) {
		extra[n++] = "-certmode";
		extra[n++] = "manual";
		extra[n++] = "-hostname";
		extra[n++] = "127.0.0.1";
		extra[n++] = "-certdir";
		extra[n++] = certdir;
		extra[n++] = "-http-port";
		extra[n++] = "-1";
	}
	if (ace)
		extra[n++] = "-ace";
	if (write_timeout) {
		extra[n++] = "-tcp-write-timeout";
		extra[n++] = write_timeout;
	}
	extra[n] = NULL;
	return harness_start_opts(extra, tls ? HARNESS_TLS : 0);
}

/* CONNECT target over TLS (+ extra bytes in the same write); the response head in head. */
static int tls_connect(const struct harness_server *s, const char *target, const char *extra,
		       struct tu_tls *t, char *head, size_t cap)
{
	char req[512];
	size_t n = 0;

	assert_int_equal(tu_tls_dial(s->port, NULL, NULL, 0, t), 0);
	struct timeval tv = { 20, 0 }; /* the dial timeout is 15 s */
	setsockopt(t->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	snprintf(req, sizeof req, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n%s", target, target,
		 extra ? extra : "");
	assert_int_equal(wolfSSL_write(t->ssl, req, (int)strlen(req)), (int)strlen(req));
	head[0] = '\0';
	/* Byte by byte to the blank line: what follows it is the target's. */
	while (n + 1 < cap && !strstr(head, "\r\n\r\n")) {
		if (wolfSSL_read(t->ssl, head + n, 1) != 1)
			break;
		head[++n] = '\0';
	}
	int status = -1;
	if (sscanf(head, "HTTP/1.1 %d", &status) != 1)
		status = -1;
	return status;
}

/* The body of an error answer (read to the close). */
static void read_rest(struct tu_tls *t, char *buf, size_t cap)
{
	size_t n = 0;
	int r;

	while (n + 1 < cap && (r = wolfSSL_read(t->ssl, buf + n, (int)(cap - 1 - n))) > 0)
		n += (size_t)r;
	buf[n] = '\0';
}

static void expect_refused(const struct harness_server *s, const char *target, int code,
			   const char *msg)
{
	struct tu_tls t;
	char head[1024], body[256];

	int st = tls_connect(s, target, NULL, &t, head, sizeof head);
	if (st != code)
		fail_msg("CONNECT %s: status %d, want %d (%s)", target, st, code, head);
	assert_non_null(strstr(head, "Content-Type: text/plain; charset=utf-8"));
	read_rest(&t, body, sizeof body);
	char want[128];
	snprintf(want, sizeof want, "%s\n", msg);
	if (strcmp(body, want) != 0)
		fail_msg("CONNECT %s: body \"%s\", want \"%s\"", target, body, msg);
	tu_tls_close(&t);
}

/* A /debug/varz value of a TLS derpd (the harness's own reader speaks plain HTTP). */
static double tls_metric(const struct harness_server *s, const char *name)
{
	static char resp[1 << 18];
	char want[128];

	if (tu_https(s->port, "GET /debug/varz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
		     resp, sizeof resp) != 200)
		return -1;
	snprintf(want, sizeof want, "\n%s ", name);
	const char *p = strstr(resp, want);
	return p ? strtod(p + strlen(want), NULL) : -1;
}

static double wait_tls_metric(const struct harness_server *s, const char *name, double want)
{
	double v = -1;
	for (int64_t end = harness_now_ms() + 10000; harness_now_ms() < end; poll(NULL, 0, 50))
		if ((v = tls_metric(s, name)) == want)
			break;
	return v;
}

/* ---- tests ---- */

/* Without -ace: 403 "CONNECT not enabled" on TLS; plain HTTP keeps today's answer. With
 * -ace on a plain listener: 403 "CONNECT requires TLS". Then every bad target. */
static void test_refusals(void **state)
{
	(void)state;
	struct harness_server *s = start(0, 1, NULL);
	expect_refused(s, "controlplane.tailscale.com:443", 403, "CONNECT not enabled");
	harness_stop(s);

	char resp[1024];
	s = start(1, 0, NULL);
	int st = harness_http(s, "CONNECT controlplane.tailscale.com:443 HTTP/1.1\r\n"
			      "Host: controlplane.tailscale.com:443\r\n\r\n", resp, sizeof resp);
	assert_int_equal(st, 403);
	assert_string_equal(harness_http_body(resp), "CONNECT requires TLS\n");
	harness_stop(s);

	s = start(1, 1, NULL);
	static const char *const bad[] = {
		"controlplane.tailscale.com:8443", "controlplane.tailscale.com:4430",
		"controlplane.tailscale.com", "derp9.tailscale.com:443", "example.com:443",
		"tailscale.com:443", "[::1]:443", "controlplane.tailscale.com.:443",
		"controlplane.tailscale.com:https", "a:b.tailscale.com:443",
	};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
		expect_refused(s, bad[i], 403, "Invalid CONNECT target");
	assert_true(harness_log_contains(s, "CONNECT target \"derp9.tailscale.com:443\" not allowed"));
	/* Nothing was dialled for any of them. */
	assert_int_equal(tgt_get(&tgt[0], &tgt[0].accepted), 0);
	harness_stop(s);
}

/* 200 OK, then bytes both ways: the ones sent with the request head first, a megabyte
 * each way, port 80 too; either side's close ends both. */
static void test_relay(void **state)
{
	(void)state;
	struct harness_server *s = start(1, 1, NULL);
	struct tu_tls t;
	char head[256];
	static char big[1 << 20], back[(1 << 20) + 64];

	assert_int_equal(tls_connect(s, "controlplane.tailscale.com:443", "early", &t, head,
				     sizeof head), 200);
	assert_string_equal(head, "HTTP/1.1 200 OK\r\n\r\n");
	/* "early" went with the head: the target got it first, and echoes it. */
	char got[16] = "";
	assert_int_equal(wolfSSL_read(t.ssl, got, 10), 10);
	assert_memory_equal(got, "echo:early", 10);
	assert_int_equal(tgt_get(&tgt[0], &tgt[0].accepted), 1);
	pthread_mutex_lock(&tgt[0].mu);
	assert_string_equal(tgt[0].first, "early");
	pthread_mutex_unlock(&tgt[0].mu);

	/* A megabyte in 16 KiB writes comes back whole and in order. */
	for (size_t i = 0; i < sizeof big; i++)
		big[i] = (char)('a' + i % 26);
	size_t have = 0;
	for (size_t off = 0; off < sizeof big; off += 16384) {
		assert_int_equal(wolfSSL_write(t.ssl, big + off, 16384), 16384);
		while (have < off + 16384) {
			int r = wolfSSL_read(t.ssl, back + have, (int)(off + 16384 - have));
			assert_true(r > 0);
			have += (size_t)r;
		}
	}
	assert_int_equal(have, sizeof big);
	assert_memory_equal(back, big, sizeof big);

	/* The client closes: the target sees EOF. */
	int eofs = tgt_get(&tgt[0], &tgt[0].eofs);
	tu_tls_close(&t);
	int64_t end = harness_now_ms() + 5000;
	while (tgt_get(&tgt[0], &tgt[0].eofs) == eofs && harness_now_ms() < end)
		poll(NULL, 0, 10);
	assert_int_equal(tgt_get(&tgt[0], &tgt[0].eofs), eofs + 1);

	/* Port 80, and the target closing: the client sees the end. */
	assert_int_equal(tls_connect(s, "controlplane.tailscale.com:80", NULL, &t, head,
				     sizeof head), 200);
	assert_int_equal(wolfSSL_write(t.ssl, "hi", 2), 2);
	assert_int_equal(wolfSSL_read(t.ssl, got, 7), 7);
	assert_memory_equal(got, "echo:hi", 7);
	__atomic_store_n(&tgt[1].stop, 1, __ATOMIC_RELAXED); /* its connection ends */
	pthread_join(tgt[1].thread, NULL);
	assert_true(wolfSSL_read(t.ssl, got, 1) <= 0);
	tu_tls_close(&t);
	harness_stop(s);
}

/* A target that refuses, a name that does not resolve: 502 "Connect failure", logged. */
static void test_dial_failures(void **state)
{
	(void)state;
	struct harness_server *s = start(1, 1, NULL);
	expect_refused(s, "closed.tailscale.com:443", 502, "Connect failure");
	expect_refused(s, "nowhere.tailscale.com:443", 502, "Connect failure");
	assert_true(harness_log_contains(s, "error CONNECT dialing closed.tailscale.com:443"));
	assert_true(harness_log_contains(s, "error CONNECT dialing nowhere.tailscale.com:443"));
	harness_stop(s);
}

/* A target whose backlog is full never answers the SYN: 502 after 15 s, not before. */
static void test_dial_timeout(void **state)
{
	(void)state;
	int lfd = listen_on("127.0.0.4", 443, 0);
	int fill[4];
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(443) };
	inet_pton(AF_INET, "127.0.0.4", &a.sin_addr);
	for (int i = 0; i < 4; i++) { /* fill the accept queue; later SYNs are dropped */
		fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		connect(fill[i], (struct sockaddr *)&a, sizeof a);
	}
	poll(NULL, 0, 200);
	struct harness_server *s = start(1, 1, NULL);
	int64_t t0 = harness_now_ms();
	expect_refused(s, "blackhole.tailscale.com:443", 502, "Connect failure");
	int64_t took = harness_now_ms() - t0;
	if (took < 14500 || took > 20000)
		fail_msg("502 after %lld ms, want 15 s", (long long)took);
	assert_true(harness_log_contains(s, "no connection within 15 s"));
	harness_stop(s);
	for (int i = 0; i < 4; i++)
		close(fill[i]);
	close(lfd);
}

/* A client that stops reading while the target sends: closed after -tcp-write-timeout,
 * counted; other clients are served meanwhile and derpd's descriptors come back. */
static void test_slow_reader(void **state)
{
	(void)state;
	struct harness_server *s = start(1, 1, "500ms");
	struct tu_tls t, u;
	char head[256], got[16];
	double fds0 = tls_metric(s, "process_open_fds");

	__atomic_store_n(&tgt[0].flood, 1, __ATOMIC_RELAXED);
	assert_int_equal(tls_connect(s, "controlplane.tailscale.com:443", "go", &t, head,
				     sizeof head), 200);
	/* Never read again: the target's flood fills the buffers; derpd gives up. */
	double wt = wait_tls_metric(s, "derp_sclient_write_timeouts", 1);
	if (wt != 1) {
		harness_dump_log(s);
		fail_msg("derp_sclient_write_timeouts %g, want 1", wt);
	}
	tu_tls_close(&t);
	__atomic_store_n(&tgt[0].flood, 0, __ATOMIC_RELAXED);

	assert_int_equal(tls_connect(s, "controlplane.tailscale.com:443", "ok", &u, head,
				     sizeof head), 200);
	assert_int_equal(wolfSSL_read(u.ssl, got, 7), 7);
	assert_memory_equal(got, "echo:ok", 7);
	tu_tls_close(&u);
	assert_true(fds0 > 0);
	assert_true(wait_tls_metric(s, "process_open_fds", fds0) == fds0);
	harness_stop(s);
}

static int group_setup(void **state)
{
	(void)state;
	char hosts[96];

	/* Our own network (127.0.0.x:443 is free) and mount namespace (our /etc/hosts). */
	if (unshare(CLONE_NEWNET | CLONE_NEWNS) != 0 || system("ip link set lo up") != 0 ||
	    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) {
		fprintf(stderr, "test_connect: namespaces: %s (needs root)\n", strerror(errno));
		return -1;
	}
	tu_tmpdir(tmp, sizeof tmp);
	snprintf(hosts, sizeof hosts, "%s/hosts", tmp);
	tu_write(hosts, HOSTS, strlen(HOSTS));
	if (mount(hosts, "/etc/hosts", NULL, MS_BIND, NULL) != 0) {
		fprintf(stderr, "test_connect: bind-mount /etc/hosts: %s\n", strerror(errno));
		return -1;
	}
	snprintf(certdir, sizeof certdir, "%s/certs", tmp);
	static const uint16_t ports[2] = { 443, 80 };
	for (int i = 0; i < 2; i++) {
		tgt[i].lfd = listen_on("127.0.0.2", ports[i], 16);
		if (pthread_create(&tgt[i].thread, NULL, target_main, &tgt[i]) != 0)
			return -1;
	}
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	for (int i = 0; i < 2; i++) {
		if (!__atomic_exchange_n(&tgt[i].stop, 1, __ATOMIC_RELAXED))
			pthread_join(tgt[i].thread, NULL);
		close(tgt[i].lfd);
	}
	umount("/etc/hosts");
	tu_rmdir(tmp);
	return 0;
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_relay),
		cmocka_unit_test(test_dial_failures),
		cmocka_unit_test(test_slow_reader),
		cmocka_unit_test(test_dial_timeout),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
