/* STUN end to end on loopback: real UDP requests to the responder thread (in process, and
 * through the derpd binary when it is built), replies checked against the socket's own
 * address. Every wait is poll() with a deadline; "no answer" is proven by ordering: a bad
 * datagram followed by a good one from the same socket must yield exactly the good reply. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "stun/stun.h"

#define REPLY_MS 2000 /* generous: a loaded CI box, but a lost reply still fails fast */

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct sockaddr_storage loopback(int family, int port)
{
	struct sockaddr_storage ss;

	memset(&ss, 0, sizeof ss);
	if (family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		sin6->sin6_addr = in6addr_loopback;
	}
	return ss;
}

static socklen_t sslen(const struct sockaddr_storage *ss)
{
	return ss->ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
}

/* A client socket bound to loopback; *self gets its real address and port. */
static int client_open(int family, struct sockaddr_storage *self)
{
	struct sockaddr_storage ss = loopback(family, 0);
	int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	int buf = 1 << 20;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
	assert_int_equal(bind(fd, (struct sockaddr *)&ss, sslen(&ss)), 0);
	socklen_t len = sizeof *self;
	assert_int_equal(getsockname(fd, (struct sockaddr *)self, &len), 0);
	return fd;
}

static void send_to(int fd, const struct sockaddr_storage *to, const void *b, size_t n)
{
	ssize_t r = sendto(fd, b, n, 0, (const struct sockaddr *)to, sslen(to));
	if (r != (ssize_t)n)
		fail_msg("sendto %zu bytes: %s", n, strerror(errno));
}

/* Wait up to ms for one datagram; returns its length or -1 on timeout. */
static ssize_t recv_deadline(int fd, uint8_t *b, size_t cap, int ms)
{
	int64_t end = now_ms() + ms;

	for (;;) {
		int left = (int)(end - now_ms());
		if (left < 0)
			left = 0;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int r = poll(&p, 1, left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		ssize_t n = recv(fd, b, cap, MSG_DONTWAIT);
		if (n >= 0)
			return n;
		if (errno != EAGAIN && errno != EINTR)
			fail_msg("recv: %s", strerror(errno));
	}
}

static void txid_make(uint8_t tx[STUN_TXID_LEN], uint32_t seq)
{
	for (int i = 0; i < STUN_TXID_LEN; i++)
		tx[i] = (uint8_t)rand();
	memcpy(tx, &seq, sizeof seq);
}

static bool addr_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
	if (a->ss_family != b->ss_family)
		return false;
	if (a->ss_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
		return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
	}
	const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
	return x->sin6_port == y->sin6_port &&
	       memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
}

/* Check one reply: right txid, right length for want_family, XOR-MAPPED = self. */
static void reply_check(const uint8_t *b, ssize_t n, const uint8_t tx[STUN_TXID_LEN],
			const struct sockaddr_storage *self)
{
	uint8_t got_tx[STUN_TXID_LEN];
	struct sockaddr_storage mapped;

	assert_true(n > 0);
	assert_true(stun_is(b, (size_t)n));
	/* IPv4 (and IPv4 seen through a dual-stack socket) is family 1, 32 bytes. */
	assert_int_equal(n, self->ss_family == AF_INET ? 32 : 44);
	assert_int_equal(b[25], self->ss_family == AF_INET ? 0x01 : 0x02);
	assert_int_equal(stun_parse_response(b, (size_t)n, got_tx, &mapped), STUN_OK);
	assert_memory_equal(got_tx, tx, STUN_TXID_LEN);
	if (!addr_equal(&mapped, self))
		fail_msg("XOR-MAPPED-ADDRESS is not the client's own address and port");
}

/* One request, one checked reply. */
static void exchange(int fd, const struct sockaddr_storage *server,
		     const struct sockaddr_storage *self)
{
	static uint32_t seq;
	uint8_t tx[STUN_TXID_LEN], req[STUN_REQUEST_LEN], b[2048];

	txid_make(tx, ++seq);
	stun_build_request(tx, req);
	send_to(fd, server, req, sizeof req);
	ssize_t n = recv_deadline(fd, b, sizeof b, REPLY_MS);
	if (n < 0)
		fail_msg("no STUN reply within %d ms", REPLY_MS);
	reply_check(b, n, tx, self);
}

/* The thread counts a reply after sendmmsg returns, so the client can see the reply a
 * moment before the counter moves: wait (bounded) until success reaches want, then read. */
static void counters_settle(const struct stun_counters *c0, uint64_t want,
			    struct stun_counters *c1)
{
	int64_t end = now_ms() + REPLY_MS;

	for (;;) {
		stun_counters_get(c1);
		if (c1->success - c0->success >= want || now_ms() > end)
			return;
		poll(NULL, 0, 1);
	}
}

static struct stun_server *start(const char *host)
{
	char err[256] = "";
	struct stun_server *s = stun_start(host, 0, err, sizeof err);
	if (!s)
		fail_msg("stun_start(\"%s\", 0): %s", host, err);
	assert_true(stun_port(s) > 0);
	return s;
}

static void test_ipv4_loopback(void **state)
{
	(void)state;
	struct stun_counters c0, c1;
	struct sockaddr_storage self;

	stun_counters_get(&c0);
	struct stun_server *s = start("127.0.0.1");
	struct sockaddr_storage server = loopback(AF_INET, stun_port(s));
	int fd = client_open(AF_INET, &self);
	for (int i = 0; i < 10; i++)
		exchange(fd, &server, &self);
	close(fd);
	counters_settle(&c0, 10, &c1);
	stun_stop(s);
	assert_int_equal(c1.success - c0.success, 10);
	assert_int_equal(c1.ipv4 - c0.ipv4, 10);
	assert_int_equal(c1.ipv6 - c0.ipv6, 0);
	assert_int_equal(c1.not_stun - c0.not_stun, 0);
}

static void test_ipv6_loopback(void **state)
{
	(void)state;
	struct stun_counters c0, c1;
	struct sockaddr_storage self;

	stun_counters_get(&c0);
	struct stun_server *s = start("::1");
	struct sockaddr_storage server = loopback(AF_INET6, stun_port(s));
	int fd = client_open(AF_INET6, &self);
	for (int i = 0; i < 10; i++)
		exchange(fd, &server, &self);
	close(fd);
	counters_settle(&c0, 10, &c1);
	stun_stop(s);
	assert_int_equal(c1.success - c0.success, 10);
	assert_int_equal(c1.ipv6 - c0.ipv6, 10);
	assert_int_equal(c1.ipv4 - c0.ipv4, 0);
}

/* Host "" (-a ":port"): one IPv4 and one IPv6-only socket on the same port. */
static void test_all_interfaces(void **state)
{
	(void)state;
	struct sockaddr_storage self4, self6;
	struct stun_server *s = start("");
	struct sockaddr_storage srv4 = loopback(AF_INET, stun_port(s));
	struct sockaddr_storage srv6 = loopback(AF_INET6, stun_port(s));
	int fd4 = client_open(AF_INET, &self4), fd6 = client_open(AF_INET6, &self6);

	for (int i = 0; i < 5; i++) {
		exchange(fd4, &srv4, &self4);
		exchange(fd6, &srv6, &self6);
	}
	close(fd4);
	close(fd6);
	stun_stop(s);
}

/* Host "::" is dual-stack as in Go: an IPv4 client arrives as ::ffff:127.0.0.1 and still
 * gets the answer it expects, family 1 with its IPv4 address, counted as ipv4. */
static void test_dual_stack_v4mapped(void **state)
{
	(void)state;
	struct stun_counters c0, c1;
	struct sockaddr_storage self;

	stun_counters_get(&c0);
	struct stun_server *s = start("::");
	struct sockaddr_storage server = loopback(AF_INET, stun_port(s));
	int fd = client_open(AF_INET, &self);
	for (int i = 0; i < 3; i++)
		exchange(fd, &server, &self);
	close(fd);
	counters_settle(&c0, 3, &c1);
	stun_stop(s);
	assert_int_equal(c1.ipv4 - c0.ipv4, 3);
	assert_int_equal(c1.ipv6 - c0.ipv6, 0);
}

/* Malformed datagrams, derived from a good request; each must get no answer. */
static size_t bad_make(int which, uint8_t *b, size_t cap, const char **name)
{
	uint8_t tx[STUN_TXID_LEN];
	uint8_t good[STUN_REQUEST_LEN];

	memset(tx, 0x77, sizeof tx);
	stun_build_request(tx, good);
	memcpy(b, good, sizeof good);
	switch (which) {
	case 0: *name = "empty datagram"; return 0;
	case 1: *name = "19 bytes"; return 19;
	case 2: *name = "bad cookie"; b[7] ^= 1; return sizeof good;
	case 3: *name = "top bits set"; b[0] |= 0x40; return sizeof good;
	case 4: *name = "success response"; b[0] = 0x01; b[1] = 0x01; return sizeof good;
	case 5: *name = "binding indication"; b[1] = 0x11; return sizeof good;
	case 6: *name = "allocate request"; b[1] = 0x03; return sizeof good;
	case 7: *name = "truncated fingerprint"; return sizeof good - 1;
	case 8: *name = "no fingerprint"; return sizeof good - 8;
	case 9: *name = "bad fingerprint"; b[39] ^= 0x80; return sizeof good;
	case 10: *name = "wrong software"; b[31] = 'f'; return sizeof good;
	case 11: *name = "attr length past end"; b[22] = 0x40; return sizeof good;
	case 12: *name = "trailing 3 bytes"; memset(b + 40, 0, 3); return sizeof good + 3;
	case 13: *name = "header only"; return 20;
	case 14: *name = "garbage"; for (size_t i = 0; i < 64; i++) b[i] = (uint8_t)(i * 37 + 11);
		return 64;
	case 15: *name = "60000 zero bytes"; memset(b, 0, 60000); return 60000;
	case 16: *name = "60000 bytes, good header, no attrs valid";
		memset(b + 40, 0xff, 60000 - 40); return 60000;
	case 17: *name = "a real server's response (google)";
		{
			static const uint8_t g[] = {
				0x01, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42, 0x23, 0x60, 0xb1, 0x1e,
				0x3e, 0xc6, 0x8f, 0xfa, 0x93, 0xe0, 0x80, 0x07, 0x00, 0x20, 0x00, 0x08,
				0x00, 0x01, 0xc7, 0x86, 0x69, 0x57, 0x85, 0x6f };
			memcpy(b, g, sizeof g);
			return sizeof g;
		}
	}
	(void)cap;
	return (size_t)-1;
}

static void malformed_run(int family, const char *host)
{
	static uint8_t bad[65536];
	struct stun_counters c0, c1;
	struct sockaddr_storage self;
	int nbad = 0;

	struct stun_server *s = start(host);
	struct sockaddr_storage server = loopback(family, stun_port(s));
	int fd = client_open(family, &self);

	stun_counters_get(&c0);
	exchange(fd, &server, &self);
	for (int which = 0;; which++) {
		const char *name = NULL;
		size_t n = bad_make(which, bad, sizeof bad, &name);
		if (n == (size_t)-1)
			break;
		send_to(fd, &server, bad, n);
		nbad++;
		/* The server answers in arrival order; if the bad one were answered, its reply
		 * (txid 77 x 12) would arrive before this good one's. */
		uint8_t tx[STUN_TXID_LEN], req[STUN_REQUEST_LEN], b[2048];
		txid_make(tx, 0x10000u + (uint32_t)which);
		stun_build_request(tx, req);
		send_to(fd, &server, req, sizeof req);
		ssize_t r = recv_deadline(fd, b, sizeof b, REPLY_MS);
		if (r < 0)
			fail_msg("after \"%s\": the good request got no reply", name);
		if (r >= 20 && memcmp(b + 8, tx, STUN_TXID_LEN) != 0)
			fail_msg("\"%s\" was answered", name);
		reply_check(b, r, tx, &self);
	}
	/* Nothing else queued: the next reply is the next good request's. */
	exchange(fd, &server, &self);
	counters_settle(&c0, (uint64_t)nbad + 2, &c1);
	assert_int_equal(c1.not_stun - c0.not_stun, nbad);
	assert_int_equal(c1.success - c0.success, nbad + 2);
	assert_int_equal(c1.read_error - c0.read_error, 0);
	assert_int_equal(c1.write_error - c0.write_error, 0);
	close(fd);
	stun_stop(s);
}

static void test_malformed_ipv4(void **state) { (void)state; malformed_run(AF_INET, "127.0.0.1"); }
static void test_malformed_ipv6(void **state) { (void)state; malformed_run(AF_INET6, "::1"); }

/* Many sockets, many requests in flight: batches must route every reply to its sender. */
static void test_burst_many_sockets(void **state)
{
	(void)state;
	enum { NSOCK = 16, PER = 40 };
	int fds[NSOCK];
	struct sockaddr_storage self[NSOCK];
	static uint8_t seen[NSOCK][PER];
	struct stun_counters c0, c1;

	stun_counters_get(&c0);
	struct stun_server *s = start("127.0.0.1");
	struct sockaddr_storage server = loopback(AF_INET, stun_port(s));
	memset(seen, 0, sizeof seen);
	for (int i = 0; i < NSOCK; i++)
		fds[i] = client_open(AF_INET, &self[i]);
	for (int k = 0; k < PER; k++)
		for (int i = 0; i < NSOCK; i++) {
			uint8_t tx[STUN_TXID_LEN] = { (uint8_t)i, (uint8_t)k, 0xbe, 0xef };
			uint8_t req[STUN_REQUEST_LEN];
			stun_build_request(tx, req);
			send_to(fds[i], &server, req, sizeof req);
		}
	for (int i = 0; i < NSOCK; i++)
		for (int k = 0; k < PER; k++) {
			uint8_t b[2048];
			ssize_t n = recv_deadline(fds[i], b, sizeof b, REPLY_MS);
			if (n < 0)
				fail_msg("socket %d: only %d of %d replies", i, k, PER);
			assert_int_equal(n, 32);
			uint8_t tx[STUN_TXID_LEN];
			memcpy(tx, b + 8, sizeof tx);
			assert_int_equal(tx[0], i); /* reply came back to the socket that asked */
			assert_true(tx[1] < PER);
			assert_int_equal(seen[i][tx[1]], 0);
			seen[i][tx[1]] = 1;
			reply_check(b, n, tx, &self[i]);
		}
	for (int i = 0; i < NSOCK; i++)
		close(fds[i]);
	counters_settle(&c0, NSOCK * PER, &c1);
	stun_stop(s);
	assert_int_equal(c1.success - c0.success, NSOCK * PER);
}

/* Start/stop leaves nothing behind: the port is free again at once. */
static void test_start_stop(void **state)
{
	(void)state;
	for (int i = 0; i < 20; i++) {
		struct stun_server *s = start(i % 2 ? "" : "127.0.0.1");
		int port = stun_port(s);
		stun_stop(s);
		struct sockaddr_storage ss = loopback(AF_INET, port);
		int fd = socket(AF_INET, SOCK_DGRAM, 0);
		assert_int_equal(bind(fd, (struct sockaddr *)&ss, sslen(&ss)), 0);
		close(fd);
	}
	stun_stop(NULL);
}

/* A flood keeps every batch full; stun_stop must still return promptly. */
struct flood {
	int fd;
	struct sockaddr_storage to;
	int stop;
};

static void *flood_run(void *arg)
{
	struct flood *f = arg;
	uint8_t tx[STUN_TXID_LEN] = { 0xf1 }, req[STUN_REQUEST_LEN];
	struct mmsghdr m[64];
	struct iovec iov = { req, sizeof req };

	stun_build_request(tx, req);
	for (int i = 0; i < 64; i++)
		m[i].msg_hdr = (struct msghdr){ .msg_name = &f->to, .msg_namelen = sslen(&f->to),
						.msg_iov = &iov, .msg_iovlen = 1 };
	while (!__atomic_load_n(&f->stop, __ATOMIC_RELAXED))
		(void)sendmmsg(f->fd, m, 64, 0);
	return NULL;
}

static void *stop_run(void *arg)
{
	void **a = arg;
	stun_stop(a[0]);
	uint64_t one = 1;
	if (write(*(int *)a[1], &one, sizeof one) != sizeof one)
		abort();
	return NULL;
}

static void test_stop_under_flood(void **state)
{
	(void)state;
	enum { NFLOOD = 2 };
	struct flood f[NFLOOD];
	pthread_t ft[NFLOOD], st;
	struct sockaddr_storage self;
	struct stun_counters c0, c1;

	struct stun_server *s = start("127.0.0.1");
	for (int i = 0; i < NFLOOD; i++) {
		f[i].fd = client_open(AF_INET, &self);
		f[i].to = loopback(AF_INET, stun_port(s));
		f[i].stop = 0;
		assert_int_equal(pthread_create(&ft[i], NULL, flood_run, &f[i]), 0);
	}
	/* Let the flood build up: wait until the server has answered plenty. */
	stun_counters_get(&c0);
	int64_t end = now_ms() + 5000;
	do {
		poll(NULL, 0, 5);
		stun_counters_get(&c1);
	} while (c1.success - c0.success < 20000 && now_ms() < end);
	assert_true(c1.success - c0.success >= 20000);

	int done = eventfd(0, EFD_CLOEXEC);
	assert_true(done >= 0);
	void *args[2] = { s, &done };
	assert_int_equal(pthread_create(&st, NULL, stop_run, args), 0);
	struct pollfd p = { .fd = done, .events = POLLIN };
	int r = poll(&p, 1, 5000);
	for (int i = 0; i < NFLOOD; i++) {
		__atomic_store_n(&f[i].stop, 1, __ATOMIC_RELAXED);
		pthread_join(ft[i], NULL);
		close(f[i].fd);
	}
	if (r != 1)
		fail_msg("stun_stop did not return within 5 s under a flood");
	pthread_join(st, NULL);
	close(done);
}

/* derper ignores STUN bind errors; derpd reports them and start-up fails. */
static void test_bind_error(void **state)
{
	(void)state;
	char err[256] = "";
	struct sockaddr_storage self;
	int fd = client_open(AF_INET, &self);
	int port = ntohs(((struct sockaddr_in *)&self)->sin_port);

	assert_null(stun_start("127.0.0.1", port, err, sizeof err));
	assert_non_null(strstr(err, "127.0.0.1"));
	assert_non_null(strstr(err, "in use"));
	/* "" binds IPv4 too, so the same port is taken there. */
	assert_null(stun_start("", port, err, sizeof err));
	assert_null(stun_start("127.0.0.1", 65536, err, sizeof err));
	assert_null(stun_start("127.0.0.1", -1, err, sizeof err));
	close(fd);
}

/* The log line main's callers (and the binary test) rely on, with the real port. */
static void test_log_line(void **state)
{
	(void)state;
	char path[] = "/tmp/test_stun_logXXXXXX", text[4096], want[64];
	int tmp = mkstemp(path);
	assert_true(tmp >= 0);
	unlink(path);
	int saved = dup(2);
	fflush(stderr);
	dup2(tmp, 2);
	struct stun_server *s = stun_start("127.0.0.1", 0, text, sizeof text);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	assert_non_null(s);
	ssize_t n = pread(tmp, text, sizeof text - 1, 0);
	close(tmp);
	assert_true(n > 0);
	text[n] = 0;
	snprintf(want, sizeof want, "STUN server listening on 127.0.0.1:%d\n", stun_port(s));
	if (!strstr(text, want))
		fail_msg("log has no \"%s\": %s", want, text);
	stun_stop(s);
}

/* ---- the real binary ---- */
struct proc {
	pid_t pid;
	int err;         /* read end of the child's stderr */
	char dir[32];    /* temporary directory holding the key file */
	char log[8192];
	size_t have;
	bool eof;
};

/* A failed assertion longjmps out of a test; the group teardown ends what it left. */
static struct proc *live;
static void proc_end(struct proc *p);

static const char *derpd_bin(void)
{
	const char *bin = getenv("DERPD_BIN");
	struct stat st;

	if (!bin || stat(bin, &st) != 0 || !(st.st_mode & S_IXUSR)) {
		print_message("DERPD_BIN (%s) not built: binary case skipped\n", bin ? bin : "unset");
		return NULL;
	}
	return bin;
}

/* derpd -a 127.0.0.1:0 -c <tmp>/k.json <extra...> with stderr on a pipe. */
static void proc_start(struct proc *p, const char *bin, const char *const *extra)
{
	char key[64];
	const char *argv[16];
	int n = 0, pipefd[2];

	if (live) /* left running by a test that failed part-way */
		proc_end(live);
	memset(p, 0, sizeof *p);
	strcpy(p->dir, "/tmp/test_stun_XXXXXX");
	assert_non_null(mkdtemp(p->dir));
	snprintf(key, sizeof key, "%s/k.json", p->dir);
	argv[n++] = bin;
	argv[n++] = "-a";
	argv[n++] = "127.0.0.1:0";
	argv[n++] = "-c";
	argv[n++] = key;
	while (*extra && n < 15)
		argv[n++] = *extra++;
	argv[n] = NULL;
	assert_int_equal(pipe2(pipefd, O_CLOEXEC), 0);
	p->pid = fork();
	assert_true(p->pid >= 0);
	if (p->pid == 0) {
		dup2(pipefd[1], 2);
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	close(pipefd[1]);
	p->err = pipefd[0];
	live = p;
}

/* Read stderr until a complete line containing want appears (returns a pointer just
 * past want), stderr closes, or ms pass (NULL). */
static const char *proc_wait_line(struct proc *p, const char *want, int ms)
{
	int64_t end = now_ms() + ms;

	for (;;) {
		p->log[p->have] = 0;
		const char *m = strstr(p->log, want);
		if (m && strchr(m, '\n'))
			return m + strlen(want);
		if (p->eof || p->have == sizeof p->log - 1 || now_ms() >= end)
			return NULL;
		struct pollfd pf = { .fd = p->err, .events = POLLIN };
		if (poll(&pf, 1, (int)(end - now_ms())) <= 0)
			continue;
		ssize_t n = read(p->err, p->log + p->have, sizeof p->log - 1 - p->have);
		if (n <= 0)
			p->eof = true;
		else
			p->have += (size_t)n;
	}
}

/* Wait up to ms for the child to exit by itself; -1 if it is still running. */
static int proc_wait_exit(struct proc *p, int ms)
{
	int64_t end = now_ms() + ms;
	int status;

	for (;;) {
		pid_t r = waitpid(p->pid, &status, WNOHANG);
		if (r == p->pid) {
			p->pid = 0;
			return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
		}
		if (now_ms() >= end)
			return -1;
		poll(NULL, 0, 10);
	}
}

static void proc_end(struct proc *p)
{
	char key[64];

	if (p->pid > 0) {
		kill(p->pid, SIGTERM);
		if (proc_wait_exit(p, 5000) < 0) {
			kill(p->pid, SIGKILL);
			waitpid(p->pid, NULL, 0);
		}
	}
	close(p->err);
	snprintf(key, sizeof key, "%s/k.json", p->dir);
	unlink(key);
	rmdir(p->dir);
	live = NULL;
}

static int teardown_procs(void **state)
{
	(void)state;
	if (live)
		proc_end(live);
	return 0;
}

/* GET path over plain HTTP on 127.0.0.1:port into buf (headers and body); false on
 * failure or when ms pass. */
static bool http_get(int port, const char *path, char *buf, size_t cap, int ms)
{
	struct sockaddr_storage ss = loopback(AF_INET, port);
	int64_t end = now_ms() + ms;
	size_t have = 0;
	char req[256];
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0 || connect(fd, (struct sockaddr *)&ss, sslen(&ss)) != 0) {
		if (fd >= 0)
			close(fd);
		return false;
	}
	int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
			 "Connection: close\r\n\r\n", path);
	if (write(fd, req, (size_t)n) != n) {
		close(fd);
		return false;
	}
	for (;;) {
		struct pollfd pf = { .fd = fd, .events = POLLIN };
		int left = (int)(end - now_ms());
		if (left <= 0 || poll(&pf, 1, left) <= 0)
			break;
		ssize_t r = read(fd, buf + have, cap - 1 - have);
		if (r <= 0)
			break;
		have += (size_t)r;
		if (have == cap - 1)
			break;
	}
	close(fd);
	buf[have] = 0;
	return have > 0;
}

/* The value of one exact sample line "name{labels} N" in a varz body, or -1. */
static long long varz_value(const char *body, const char *sample)
{
	char want[128];
	snprintf(want, sizeof want, "\n%s ", sample);
	const char *m = strstr(body, want);
	return m ? atoll(m + strlen(want)) : -1;
}

/* derpd -a 127.0.0.1:0 -stun-port 0: the log names the real port, and it answers. */
static void test_binary(void **state)
{
	(void)state;
	static const char *const extra[] = { "-stun-port", "0", NULL };
	const char *bin = derpd_bin();
	static struct proc p;

	if (!bin)
		skip();
	proc_start(&p, bin, extra);
	const char *at = proc_wait_line(&p, "STUN server listening on 127.0.0.1:", 10000);
	int port = at ? atoi(at) : 0;
	if (port > 0) {
		struct sockaddr_storage self;
		struct sockaddr_storage server = loopback(AF_INET, port);
		int fd = client_open(AF_INET, &self);
		uint8_t junk[40] = { 0 };
		send_to(fd, &server, junk, sizeof junk);
		exchange(fd, &server, &self); /* the junk got no answer, the request did */
		exchange(fd, &server, &self);
		close(fd);
	}
	/* The same counts, under derper's names, in the relay's /debug/varz. */
	const char *hat = proc_wait_line(&p, "serving on 127.0.0.1:", 5000);
	int http_port = hat ? atoi(hat) : 0;
	static char body[65536];
	long long ok = -1, bad = -1, v4 = -1;
	int64_t end = now_ms() + 5000;
	while (port > 0 && http_port > 0 && now_ms() < end) {
		if (http_get(http_port, "/debug/varz", body, sizeof body, 2000)) {
			ok = varz_value(body, "stun_requests{disposition=\"success\"}");
			bad = varz_value(body, "stun_requests{disposition=\"not_stun\"}");
			v4 = varz_value(body, "stun_addrfamily{family=\"ipv4\"}");
			if (ok >= 2)
				break;
		}
		poll(NULL, 0, 20);
	}
	proc_end(&p);
	if (port <= 0)
		fail_msg("%s printed no \"STUN server listening on 127.0.0.1:<port>\" in 10 s; "
			 "stderr:\n%s", bin, p.log);
	if (ok != 2 || bad != 1 || v4 != 2)
		fail_msg("/debug/varz on port %d: success %lld, not_stun %lld, ipv4 %lld; want 2, 1, 2",
			 http_port, ok, bad, v4);
}

/* A STUN port that cannot be bound fails start-up (derper would ignore it). */
static void test_binary_bind_error(void **state)
{
	(void)state;
	const char *bin = derpd_bin();
	struct sockaddr_storage self;
	char port[16];
	static struct proc p;

	if (!bin)
		skip();
	int fd = client_open(AF_INET, &self); /* holds 127.0.0.1:<port> */
	snprintf(port, sizeof port, "%d", ntohs(((struct sockaddr_in *)&self)->sin_port));
	const char *const extra[] = { "-stun-port", port, NULL };
	proc_start(&p, bin, extra);
	int rc = proc_wait_exit(&p, 10000);
	proc_wait_line(&p, "\x01never", 2000); /* the whole of stderr, up to its end */
	proc_end(&p);
	close(fd);
	if (rc != 1)
		fail_msg("want exit status 1 when the STUN port is taken, got %d; stderr:\n%s", rc,
			 p.log);
	if (!strstr(p.log, "STUN") || !strstr(p.log, port))
		fail_msg("the error does not name STUN and the port; stderr:\n%s", p.log);
}

/* -stun=false opens no STUN socket: the port we hold does not stop start-up. */
static void test_binary_stun_disabled(void **state)
{
	(void)state;
	const char *bin = derpd_bin();
	struct sockaddr_storage self;
	char port[16];
	static struct proc p;

	if (!bin)
		skip();
	int fd = client_open(AF_INET, &self);
	snprintf(port, sizeof port, "%d", ntohs(((struct sockaddr_in *)&self)->sin_port));
	const char *const extra[] = { "-stun=false", "-stun-port", port, NULL };
	proc_start(&p, bin, extra);
	bool serving = proc_wait_line(&p, "serving on", 10000) != NULL;
	proc_end(&p);
	close(fd);
	if (!serving)
		fail_msg("derpd -stun=false did not start; stderr:\n%s", p.log);
	if (strstr(p.log, "STUN server listening"))
		fail_msg("-stun=false still started STUN; stderr:\n%s", p.log);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ipv4_loopback),
		cmocka_unit_test(test_ipv6_loopback),
		cmocka_unit_test(test_all_interfaces),
		cmocka_unit_test(test_dual_stack_v4mapped),
		cmocka_unit_test(test_malformed_ipv4),
		cmocka_unit_test(test_malformed_ipv6),
		cmocka_unit_test(test_burst_many_sockets),
		cmocka_unit_test(test_start_stop),
		cmocka_unit_test(test_stop_under_flood),
		cmocka_unit_test(test_bind_error),
		cmocka_unit_test(test_log_line),
		cmocka_unit_test(test_binary),
		cmocka_unit_test(test_binary_bind_error),
		cmocka_unit_test(test_binary_stun_disabled),
	};
	signal(SIGPIPE, SIG_IGN);
	srand((unsigned)time(NULL));
	return cmocka_run_group_tests(tests, NULL, teardown_procs);
}
