/* End-to-end harness: see harness.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test/e2e/harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "server/key.h"

#define START_TIMEOUT_MS 10000
#define STOP_TIMEOUT_MS  10000
#define HTTP_TIMEOUT_MS  5000

int64_t harness_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int harness_wait(int (*cond)(void *arg), void *arg, int timeout_ms)
{
	int64_t end = harness_now_ms() + timeout_ms;

	for (;;) {
		if (cond(arg))
			return 1;
		if (harness_now_ms() >= end)
			return 0;
		poll(NULL, 0, 10);
	}
}

static char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t n = 0, cap = 0;

	if (!f)
		return NULL;
	for (;;) {
		if (cap - n < 4096) {
			cap = cap ? cap * 2 : 8192;
			buf = realloc(buf, cap + 1);
			assert_non_null(buf);
		}
		size_t r = fread(buf + n, 1, cap - n, f);
		if (r == 0)
			break;
		n += r;
	}
	fclose(f);
	buf[n] = '\0';
	if (len)
		*len = n;
	return buf;
}

int harness_log_contains(const struct harness_server *s, const char *needle)
{
	char *log = read_file(s->log_path, NULL);
	int found = log && strstr(log, needle) != NULL;

	free(log);
	return found;
}

/* Port from "serving on 127.0.0.1:<port>", 0 if not logged yet. */
static uint16_t logged_port(const struct harness_server *s)
{
	char *log = read_file(s->log_path, NULL);
	char *p = log ? strstr(log, "serving on 127.0.0.1:") : NULL;
	long port = p ? strtol(p + strlen("serving on 127.0.0.1:"), NULL, 10) : 0;

	free(log);
	return port > 0 && port < 65536 ? (uint16_t)port : 0;
}

void harness_dump_log(const struct harness_server *s)
{
	size_t n;
	char *log = read_file(s->log_path, &n);

	if (log) {
		fprintf(stderr, "---- derpd log (%s) ----\n%s\n----\n", s->log_path,
			n > 8000 ? log + n - 8000 : log);
		free(log);
	}
}

static int inherit_fds[8], inherit_n;

void harness_inherit(const int *fds, int n)
{
	assert_true(n >= 0 && n <= 8);
	memcpy(inherit_fds, fds, sizeof *fds * (size_t)n);
	inherit_n = n;
}

/* In the child: the inherited sockets at 3, 4, ... (moved above the range first, so
 * placing one never overwrites another) and the variables that name them. */
static void inherit_place(void)
{
	int tmp[8];
	char v[32];

	for (int i = 0; i < inherit_n; i++)
		tmp[i] = fcntl(inherit_fds[i], F_DUPFD, 3 + inherit_n);
	for (int i = 0; i < inherit_n; i++) {
		dup2(tmp[i], 3 + i); /* dup2 clears close-on-exec */
		close(tmp[i]);
	}
	snprintf(v, sizeof v, "%d", inherit_n);
	setenv("LISTEN_FDS", v, 1);
	snprintf(v, sizeof v, "%d", (int)getpid());
	setenv("LISTEN_PID", v, 1);
}

struct harness_server *harness_start(const char *const *extra)
{
	return harness_start_opts(extra, 0);
}

struct harness_server *harness_start_opts(const char *const *extra, unsigned flags)
{
	const char *bin = getenv("DERPD_BIN");
	struct harness_server *s = calloc(1, sizeof *s);
	const char *argv[64];
	int argc = 0;
	char addr_arg[] = "127.0.0.1:0";

	assert_non_null(s);
	assert_int_equal(key_init(), 0);
	if (!bin || !*bin)
		bin = "./derpd";
	snprintf(s->dir, sizeof s->dir, "/tmp/derpd-e2e-XXXXXX");
	if (!mkdtemp(s->dir))
		fail_msg("mkdtemp: %s", strerror(errno));
	snprintf(s->key_path, sizeof s->key_path, "%s/derper.key", s->dir);
	snprintf(s->log_path, sizeof s->log_path, "%s/derpd.log", s->dir);
	argv[argc++] = bin;
	argv[argc++] = "-a";
	argv[argc++] = addr_arg;
	argv[argc++] = "-c";
	argv[argc++] = s->key_path;
	argv[argc++] = "-stun=false";
	for (int i = 0; extra && extra[i] && argc < 63; i++)
		argv[argc++] = extra[i];
	argv[argc] = NULL;

	int logfd = open(s->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_true(logfd >= 0);
	pid_t parent = getpid();
	s->pid = fork();
	assert_true(s->pid >= 0);
	if (s->pid == 0) {
		/* die with the test process, so a crashed test leaves no server behind */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		dup2(logfd, 1);
		dup2(logfd, 2);
		int nul = open("/dev/null", O_RDONLY);
		if (nul >= 0)
			dup2(nul, 0);
		if (inherit_n)
			inherit_place();
		execv(bin, (char *const *)argv);
		fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
		_exit(127);
	}
	close(logfd);
	inherit_n = 0;

	int64_t end = harness_now_ms() + START_TIMEOUT_MS;
	while (!(s->port = logged_port(s))) {
		int st;
		if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
			harness_dump_log(s);
			fail_msg("derpd (%s) exited during start-up (status 0x%x)", bin, st);
		}
		if (harness_now_ms() > end) {
			harness_dump_log(s);
			kill(s->pid, SIGKILL);
			waitpid(s->pid, NULL, 0);
			fail_msg("derpd did not log \"serving on 127.0.0.1:<port>\" within 10 s");
		}
		poll(NULL, 0, 10);
	}
	if (flags & HARNESS_NO_PROBE)
		return s;
	/* Learn the server key from a real greeting (checked against the key file in the
	 * handshake tests). */
	struct derp_client_opts o = harness_opts();
	o.tls = o.tls_insecure = (flags & HARNESS_TLS) != 0;
	struct derp_client *c = derp_client_open("127.0.0.1", s->port, &o);
	if (!c) {
		harness_dump_log(s);
		fail_msg("cannot open a DERP connection to derpd: %s", derp_client_error());
	}
	memcpy(s->pub, derp_client_server_key(c), 32);
	derp_client_close(c);
	return s;
}

int harness_run_to_exit(const char *const *extra, char *log, size_t cap)
{
	struct harness_server s = { 0 };
	char dir[] = "/tmp/derpd-e2e-exit-XXXXXX", key[64], logp[64];
	const char *bin = getenv("DERPD_BIN") && *getenv("DERPD_BIN") ? getenv("DERPD_BIN")
								      : "./derpd";
	const char *argv[64] = { bin, "-a", "127.0.0.1:0", "-c", key, "-stun=false" };
	int argc = 6, st = 0;

	assert_non_null(mkdtemp(dir));
	snprintf(key, sizeof key, "%s/derper.key", dir);
	snprintf(logp, sizeof logp, "%s/derpd.log", dir);
	for (int i = 0; extra && extra[i] && argc < 63; i++)
		argv[argc++] = extra[i];
	int out = open(logp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_true(out >= 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(out, 1);
		dup2(out, 2);
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	close(out);
	int64_t end = harness_now_ms() + START_TIMEOUT_MS;
	while (waitpid(pid, &st, WNOHANG) != pid) {
		if (harness_now_ms() > end) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			snprintf(s.log_path, sizeof s.log_path, "%s", logp);
			harness_dump_log(&s);
			fail_msg("derpd did not exit within %d ms", START_TIMEOUT_MS);
		}
		poll(NULL, 0, 10);
	}
	size_t n = 0;
	char *text = read_file(logp, &n);
	snprintf(log, cap, "%s", text ? text : "");
	free(text);
	unlink(logp);
	unlink(key);
	rmdir(dir);
	return st;
}

void harness_stop(struct harness_server *s)
{
	int st = 0, done = 0;

	if (!s)
		return;
	/* pid 0: the test reaped derpd itself (never kill(0, ...): that is our own group). */
	int64_t end = harness_now_ms() + STOP_TIMEOUT_MS;
	if (s->pid > 0)
		kill(s->pid, SIGTERM);
	else
		done = 1, end = 0;
	while (harness_now_ms() < end) {
		if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
			done = 1;
			break;
		}
		poll(NULL, 0, 10);
	}
	if (!done) {
		kill(s->pid, SIGKILL);
		waitpid(s->pid, &st, 0);
	}
	int bad_log = harness_log_contains(s, "Sanitizer") ||
		      harness_log_contains(s, "runtime error:");
	int bad_exit = !done || (WIFEXITED(st) && WEXITSTATUS(st) != 0) ||
		       (WIFSIGNALED(st) && WTERMSIG(st) != SIGTERM);
	if (bad_log || bad_exit)
		harness_dump_log(s);
	if (!getenv("DERPD_KEEP_TMP") && !bad_log && !bad_exit) {
		unlink(s->key_path);
		unlink(s->log_path);
		rmdir(s->dir);
	}
	struct harness_server copy = *s;
	free(s);
	if (!done)
		fail_msg("derpd did not exit within 10 s of SIGTERM (killed)");
	if (bad_log)
		fail_msg("derpd log shows a sanitizer report (kept in %s)", copy.dir);
	if (bad_exit)
		fail_msg("derpd exit status 0x%x after SIGTERM (log in %s)", st, copy.dir);
}

int harness_setup(void **state)
{
	*state = harness_start(NULL);
	return 0;
}

int harness_teardown(void **state)
{
	harness_stop(*state);
	*state = NULL;
	return 0;
}

/* ---- HTTP ------------------------------------------------------------------------- */

static int tcp_connect(uint16_t port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

int harness_tcp(const struct harness_server *s)
{
	int fd = tcp_connect(s->port);

	if (fd < 0)
		fail_msg("connect 127.0.0.1:%u: %s", s->port, strerror(errno));
	return fd;
}

size_t harness_read_exact(int fd, void *buf, size_t n, int timeout_ms)
{
	int64_t end = harness_now_ms() + timeout_ms;
	size_t got = 0;

	while (got < n) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int64_t left = end - harness_now_ms();
		if (left <= 0 || poll(&p, 1, (int)left) <= 0)
			break;
		ssize_t r = recv(fd, (char *)buf + got, n - got, MSG_DONTWAIT);
		if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
			break;
		if (r > 0)
			got += (size_t)r;
	}
	return got;
}

int harness_read_head(int fd, char *buf, size_t cap, int timeout_ms)
{
	int64_t end = harness_now_ms() + timeout_ms;
	size_t n = 0;

	while (n + 1 < cap) {
		int64_t left = end - harness_now_ms();
		if (harness_read_exact(fd, buf + n, 1, left > 0 ? (int)left : 0) != 1)
			break;
		n++;
		buf[n] = '\0';
		if (n >= 4 && memcmp(buf + n - 4, "\r\n\r\n", 4) == 0)
			return (int)n;
	}
	buf[n] = '\0';
	return -1;
}

/* Decode a chunked body in place; returns its length or -1 if incomplete. */
static long dechunk(char *body, size_t n)
{
	size_t in = 0, out = 0;

	for (;;) {
		char *eol = memmem(body + in, n - in, "\r\n", 2);
		if (!eol)
			return -1;
		unsigned long sz = strtoul(body + in, NULL, 16);
		in = (size_t)(eol - body) + 2;
		if (sz == 0)
			return (long)out;
		if (n - in < sz + 2)
			return -1;
		memmove(body + out, body + in, sz);
		out += sz;
		in += sz + 2;
	}
}

/* Response complete? Then finalize resp (dechunk) and return 1. */
static int http_complete(char *resp, size_t *n, int eof)
{
	char *hend = strstr(resp, "\r\n\r\n");

	if (!hend)
		return 0;
	char *body = hend + 4;
	size_t blen = *n - (size_t)(body - resp);
	char *cl = strcasestr(resp, "\r\ncontent-length:");
	char *te = strcasestr(resp, "\r\ntransfer-encoding: chunked");
	if (te && te < hend) {
		char *tmp = malloc(blen + 1);
		assert_non_null(tmp);
		memcpy(tmp, body, blen);
		long d = dechunk(tmp, blen);
		if (d >= 0) {
			memcpy(body, tmp, (size_t)d);
			*n = (size_t)(body - resp) + (size_t)d;
			resp[*n] = '\0';
		}
		free(tmp);
		return d >= 0 || eof;
	}
	if (cl && cl < hend)
		return blen >= strtoul(cl + strlen("\r\ncontent-length:"), NULL, 10) || eof;
	int status = 0;
	sscanf(resp, "HTTP/%*d.%*d %d", &status);
	if (status == 204 || status == 304 || (status >= 100 && status < 200))
		return 1;
	return eof;
}

int harness_http(const struct harness_server *s, const char *request, char *resp, size_t cap)
{
	int fd = tcp_connect(s->port);
	size_t n = 0, len = strlen(request);
	int status = -1;

	resp[0] = '\0';
	if (fd < 0)
		return -1;
	if (send(fd, request, len, MSG_NOSIGNAL) != (ssize_t)len)
		goto out;
	int64_t end = harness_now_ms() + HTTP_TIMEOUT_MS;
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int64_t left = end - harness_now_ms();
		if (left <= 0 || poll(&p, 1, (int)left) <= 0)
			goto out;
		ssize_t r = n + 1 < cap ? recv(fd, resp + n, cap - 1 - n, 0) : 0;
		if (r > 0) {
			n += (size_t)r;
			resp[n] = '\0';
		}
		if (r < 0 && errno != ECONNRESET)
			goto out;
		if (http_complete(resp, &n, r <= 0))
			break;
		if (r <= 0)
			goto out;
	}
	if (sscanf(resp, "HTTP/%*d.%*d %d", &status) != 1)
		status = -1;
out:
	close(fd);
	return status;
}

const char *harness_http_body(const char *resp)
{
	const char *b = strstr(resp, "\r\n\r\n");

	return b ? b + 4 : "";
}

/* ---- metrics ---------------------------------------------------------------------- */

/* Canonical form of a series: name{labels sorted}, so that label order does not matter. */
static void canon_series(const char *in, size_t n, char *out, size_t cap)
{
	const char *brace = memchr(in, '{', n);
	char labels[32][256];
	int nl = 0;

	if (!brace || in[n - 1] != '}') {
		snprintf(out, cap, "%.*s", (int)n, in);
		return;
	}
	const char *p = brace + 1, *end = in + n - 1;
	while (p < end && nl < 32) {
		const char *q = p;
		int quoted = 0;
		while (q < end && (quoted || *q != ',')) {
			if (*q == '"' && q[-1] != '\\')
				quoted = !quoted;
			q++;
		}
		snprintf(labels[nl++], sizeof labels[0], "%.*s", (int)(q - p), p);
		p = q + 1;
	}
	qsort(labels, (size_t)nl, sizeof labels[0], (int (*)(const void *, const void *))strcmp);
	int w = snprintf(out, cap, "%.*s{", (int)(brace - in), in);
	for (int i = 0; i < nl && w > 0 && (size_t)w < cap; i++)
		w += snprintf(out + w, cap - (size_t)w, "%s%s", i ? "," : "", labels[i]);
	if (w > 0 && (size_t)w < cap)
		snprintf(out + w, cap - (size_t)w, "}");
}

double harness_metric(const struct harness_server *s, const char *series)
{
	static char resp[1 << 20];
	char want[1024], have[1024];
	double v = NAN;

	if (harness_http(s, "GET /debug/varz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
			 "Connection: close\r\n\r\n", resp, sizeof resp) != 200)
		return NAN;
	canon_series(series, strlen(series), want, sizeof want);
	for (char *line = (char *)harness_http_body(resp); line && *line;) {
		char *nl = strchr(line, '\n');
		if (nl)
			*nl = '\0';
		if (*line != '#') {
			/* the series ends at the first space outside the braces */
			char *sp = line;
			int in_braces = 0;
			while (*sp && (in_braces || *sp != ' ')) {
				if (*sp == '{')
					in_braces = 1;
				else if (*sp == '}')
					in_braces = 0;
				sp++;
			}
			if (*sp == ' ' && sp > line) {
				canon_series(line, (size_t)(sp - line), have, sizeof have);
				if (strcmp(have, want) == 0) {
					v = strtod(sp + 1, NULL);
					break;
				}
			}
		}
		line = nl ? nl + 1 : NULL;
	}
	return v;
}

double harness_wait_metric(const struct harness_server *s, const char *series, double want,
			   int timeout_ms)
{
	int64_t end = harness_now_ms() + timeout_ms;
	double v;

	for (;;) {
		v = harness_metric(s, series);
		if (v == want || harness_now_ms() >= end)
			return v;
		poll(NULL, 0, 20);
	}
}

/* ---- DERP clients ----------------------------------------------------------------- */

int harness_promtool(const char *text, char *out, size_t cap)
{
	char in_path[] = "/tmp/derpd-promtool-XXXXXX", cmd[256];
	int fd = mkstemp(in_path);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	snprintf(cmd, sizeof cmd, "promtool check metrics < %s 2>&1", in_path);
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	size_t n = fread(out, 1, cap - 1, p);
	out[n] = '\0';
	int st = pclose(p);
	unlink(in_path);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

struct derp_client_opts harness_opts(void)
{
	return (struct derp_client_opts){ .timeout_ms = 5000 };
}

struct derp_client *harness_client(const struct harness_server *s,
				   const struct derp_client_opts *opts)
{
	struct derp_client_opts o = opts ? *opts : harness_opts();
	struct derp_client *c = derp_client_connect("127.0.0.1", s->port, &o);

	if (!c)
		fail_msg("DERP connect to derpd failed: %s", derp_client_error());
	return c;
}

static const char *kind_name(enum derp_msg_kind k)
{
	static const char *const names[] = {
		"?", "packet", "peer_gone", "peer_present", "keep_alive", "ping", "pong",
		"health", "restarting", "server_info", "server_key", "short", "unknown",
	};
	return (size_t)k < sizeof names / sizeof names[0] ? names[k] : "?";
}

void harness_recv(struct derp_client *c, struct derp_msg *m, int timeout_ms)
{
	int64_t end = harness_now_ms() + timeout_ms;

	for (;;) {
		int64_t left = end - harness_now_ms();
		int r = derp_client_recv(c, m, left > 0 ? (int)left : 0);
		if (r)
			fail_msg("expected a message within %d ms, got %s (%s)", timeout_ms,
				 r == DERP_CLIENT_TIMEOUT ? "timeout" : r == DERP_CLIENT_CLOSED
				 ? "close" : "error", derp_client_error());
		if (m->kind != DERP_MSG_KEEP_ALIVE)
			return;
	}
}

void harness_expect_packet(struct derp_client *c, const uint8_t src[32], const void *data,
			   size_t len, int timeout_ms)
{
	struct derp_msg m;

	harness_recv(c, &m, timeout_ms);
	if (m.kind != DERP_MSG_PACKET)
		fail_msg("expected a packet, got %s (frame 0x%02x, %u bytes)", kind_name(m.kind),
			 m.frame_type, m.frame_len);
	assert_memory_equal(m.key, src, 32);
	assert_int_equal(m.len, len);
	if (len)
		assert_memory_equal(m.data, data, len);
}

void harness_expect_nothing(struct derp_client *c, int timeout_ms)
{
	int64_t end = harness_now_ms() + timeout_ms;
	struct derp_msg m;

	for (;;) {
		int64_t left = end - harness_now_ms();
		if (left <= 0)
			return;
		int r = derp_client_recv(c, &m, (int)left);
		if (r == DERP_CLIENT_TIMEOUT)
			return;
		if (r)
			fail_msg("expected silence, got %s", derp_client_error());
		if (m.kind != DERP_MSG_KEEP_ALIVE)
			fail_msg("expected silence, got %s (frame 0x%02x, %u bytes)",
				 kind_name(m.kind), m.frame_type, m.frame_len);
	}
}

int64_t harness_expect_closed(struct derp_client *c, int timeout_ms)
{
	int64_t start = harness_now_ms(), end = start + timeout_ms;
	struct derp_msg m;

	for (;;) {
		int64_t left = end - harness_now_ms();
		int r = derp_client_recv(c, &m, left > 0 ? (int)left : 0);
		if (r == DERP_CLIENT_CLOSED)
			return harness_now_ms() - start;
		if (r == DERP_CLIENT_TIMEOUT)
			fail_msg("server did not close the connection within %d ms", timeout_ms);
		if (r)
			fail_msg("expected close, got error: %s", derp_client_error());
	}
}

void harness_ping(struct derp_client *c, int timeout_ms)
{
	uint8_t data[8];
	struct derp_msg m;

	randombytes_buf(data, sizeof data);
	if (derp_client_ping(c, data) != 0)
		fail_msg("ping write failed: %s", derp_client_error());
	harness_recv(c, &m, timeout_ms);
	if (m.kind != DERP_MSG_PONG)
		fail_msg("expected pong, got %s (frame 0x%02x)", kind_name(m.kind), m.frame_type);
	assert_memory_equal(m.ping8, data, 8);
}

void harness_relay_check(struct derp_client *a, struct derp_client *b)
{
	uint8_t pa[100], pb[77];

	randombytes_buf(pa, sizeof pa);
	randombytes_buf(pb, sizeof pb);
	assert_int_equal(derp_client_send(a, derp_client_public_key(b), pa, sizeof pa), 0);
	assert_int_equal(derp_client_send(b, derp_client_public_key(a), pb, sizeof pb), 0);
	harness_expect_packet(b, derp_client_public_key(a), pa, sizeof pa, 5000);
	harness_expect_packet(a, derp_client_public_key(b), pb, sizeof pb, 5000);
}
