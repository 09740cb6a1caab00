/* Client admission (server/admission.h) against a fake tailscaled LocalAPI on a unix socket
 * and a fake admission webhook on 127.0.0.1, both run by this test. The first byte of a
 * client key picks how the fakes answer for it, so one configuration can be asked about
 * many behaviours at once (allow, deny, stall, fail, bad bodies, the 4 KiB limit). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "server/admission.h"
#include "server/log.h"
#include "server/config.h"

/* ---- behaviours, chosen by key[0] ---- */
enum {
	/* LocalAPI */
	L_OK = 1, L_NULL, L_404, L_403, L_OLD, L_500, L_BADJSON, L_ARRAY,
	/* webhook */
	W_ALLOW = 0x20, W_DENY, W_LOWER, W_NOTBOOL, W_NULL, W_MISSING, W_500, W_BADJSON,
	W_BIG_LATE, W_BIG_EARLY, W_TRAILING, W_STALL_HEAD, W_STALL_BODY, W_VALUE_STALL,
	W_HANGUP, W_REDIRECT, W_DUP_LAST_FALSE,
};

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- a tiny HTTP server, one thread per connection ---- */

#define MAXREQ 64

struct fake {
	int lfd;
	char path[108];      /* unix socket, or "" for TCP */
	uint16_t port;
	pthread_t th;
	int stop;
	int (*serve)(struct fake *, int fd, const char *req, int mode);
};

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static struct { int ts; char text[4096]; } reqlog[MAXREQ]; /* ts: 1 LocalAPI, 0 webhook */
static int nreq;
static int release_stalls; /* atomic */
static char tmpdir[64];
static struct fake localapi, webhook;
static pthread_t main_thread;

static void send_all(int fd, const char *s, size_t n)
{
	while (n) {
		ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
		if (w <= 0)
			return;
		s += w;
		n -= (size_t)w;
	}
}

static void respond(int fd, int status, const char *body)
{
	char head[256];
	int n = snprintf(head, sizeof head, "HTTP/1.1 %d X\r\nContent-Length: %zu\r\n"
			 "Connection: close\r\n\r\n", status, strlen(body));
	send_all(fd, head, (size_t)n);
	send_all(fd, body, strlen(body));
}

/* Hold the connection until the client hangs up or the test releases stalls. */
static void stall(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	char b[64];
	int64_t end = now_ms() + 15000;

	while (!__atomic_load_n(&release_stalls, __ATOMIC_ACQUIRE) && now_ms() < end) {
		if (poll(&p, 1, 50) > 0 && recv(fd, b, sizeof b, 0) <= 0)
			return;
	}
}

static int key_mode(const char *req)
{
	const char *p = strstr(req, "nodekey%3A");
	unsigned v = 0;

	p = p ? p + 10 : strstr(req, "nodekey:") ? strstr(req, "nodekey:") + 8 : NULL;
	if (!p || sscanf(p, "%2x", &v) != 1)
		return 0;
	return (int)v;
}

static int serve_localapi(struct fake *f, int fd, const char *req, int mode)
{
	(void)f, (void)req;
	switch (mode) {
	case L_NULL: respond(fd, 200, "null"); break;
	case L_404: respond(fd, 404, "{\"error\":\"no match for IP:port\"}"); break;
	case L_403: respond(fd, 403, "{\"error\":\"whois access denied\"}"); break;
	case L_OLD: respond(fd, 400, "invalid 'addr' parameter"); break;
	case L_500: respond(fd, 500, "boom"); break;
	case L_BADJSON: respond(fd, 200, "{\"Node\":"); break;
	case L_ARRAY: respond(fd, 200, "[1]"); break;
	default:
		/* anything the webhook is asked about has to get past tailscaled first */
		respond(fd, 200, "{\"Node\":{\"ID\":1},\"UserProfile\":{\"ID\":2}}");
	}
	return 0;
}

static int serve_webhook(struct fake *f, int fd, const char *req, int mode)
{
	static char big[6000];
	(void)f;
	switch (mode) {
	case W_DENY: respond(fd, 200, "{\"Allow\": false}"); break;
	case W_LOWER: respond(fd, 200, "{\"allow\":true}"); break;
	case W_NOTBOOL: respond(fd, 200, "{\"Allow\":\"yes\"}"); break;
	case W_NULL: respond(fd, 200, "{\"Allow\":null}"); break;
	case W_MISSING: respond(fd, 200, "{\"Other\":true}"); break;
	case W_500: respond(fd, 500, "{\"Allow\":true}"); break;
	case W_BADJSON: respond(fd, 200, "{\"Allow\":tru"); break;
	case W_TRAILING: respond(fd, 200, "{\"Allow\":true} and then garbage"); break;
	case W_DUP_LAST_FALSE: respond(fd, 200, "{\"Allow\":true,\"ALLOW\":false}"); break;
	case W_BIG_LATE: /* a value that only ends after the first 4 KiB: never decoded */
	case W_BIG_EARLY: /* a whole value first, then 5 KB of junk that is never read */
		memset(big, 0, sizeof big);
		strcat(big, mode == W_BIG_EARLY ? "{\"Allow\":true}" : "{\"pad\":\"");
		memset(big + strlen(big), 'x', 5000);
		if (mode == W_BIG_LATE)
			strcat(big, "\",\"Allow\":true}");
		respond(fd, 200, big);
		break;
	case W_STALL_HEAD:
		stall(fd);
		break;
	case W_STALL_BODY: {
		const char *h = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"Allow\":tr";
		send_all(fd, h, strlen(h));
		stall(fd);
		break;
	}
	case W_VALUE_STALL: {
		/* Go's decoder stops at the end of the first value: no need for the rest */
		const char *h = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"Allow\":true}";
		send_all(fd, h, strlen(h));
		stall(fd);
		break;
	}
	case W_HANGUP:
		break;
	case W_REDIRECT:
		if (strstr(req, "POST /hook/redirected ")) {
			respond(fd, 200, "{\"Allow\":true}");
		} else {
			const char *h = "HTTP/1.1 307 Temporary Redirect\r\nLocation: /hook/redirected\r\n"
					"Content-Length: 0\r\nConnection: close\r\n\r\n";
			send_all(fd, h, strlen(h));
		}
		break;
	default:
		respond(fd, 200, "{\"Allow\":true}");
	}
	return 0;
}

struct conn_arg { struct fake *f; int fd; };

static void *conn_main(void *p)
{
	struct conn_arg *a = p;
	char req[4096];
	size_t n = 0;
	int64_t end = now_ms() + 5000;

	/* head, then Content-Length bytes of body */
	for (;;) {
		struct pollfd pf = { .fd = a->fd, .events = POLLIN };
		if (poll(&pf, 1, 100) <= 0) {
			if (now_ms() > end)
				goto out;
			continue;
		}
		ssize_t r = recv(a->fd, req + n, sizeof req - 1 - n, 0);
		if (r <= 0)
			goto out;
		n += (size_t)r;
		req[n] = '\0';
		char *e = strstr(req, "\r\n\r\n");
		if (e) {
			const char *cl = strcasestr(req, "\r\nContent-Length:");
			size_t want = (size_t)(e + 4 - req) + (cl && cl < e ? strtoul(cl + 17, NULL, 10) : 0);
			if (n >= want)
				break;
		}
		if (n == sizeof req - 1)
			goto out;
	}
	pthread_mutex_lock(&log_mu);
	if (nreq < MAXREQ) {
		reqlog[nreq].ts = a->f == &localapi;
		snprintf(reqlog[nreq].text, sizeof reqlog[nreq].text, "%s", req);
		nreq++;
	}
	pthread_mutex_unlock(&log_mu);
	a->f->serve(a->f, a->fd, req, key_mode(req));
out:
	close(a->fd);
	free(a);
	return NULL;
}

static void *accept_main(void *p)
{
	struct fake *f = p;

	while (!__atomic_load_n(&f->stop, __ATOMIC_ACQUIRE)) {
		struct pollfd pf = { .fd = f->lfd, .events = POLLIN };
		if (poll(&pf, 1, 50) <= 0)
			continue;
		int fd = accept(f->lfd, NULL, NULL);
		if (fd < 0)
			continue;
		struct conn_arg *a = malloc(sizeof *a);
		pthread_t t;
		a->f = f;
		a->fd = fd;
		if (pthread_create(&t, NULL, conn_main, a) == 0)
			pthread_detach(t);
		else
			close(fd), free(a);
	}
	return NULL;
}

static int fake_start(struct fake *f, int unix_socket)
{
	if (unix_socket) {
		struct sockaddr_un un = { .sun_family = AF_UNIX };
		snprintf(f->path, sizeof f->path, "%s/tailscaled.sock", tmpdir);
		snprintf(un.sun_path, sizeof un.sun_path, "%s", f->path);
		f->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (f->lfd < 0 || bind(f->lfd, (struct sockaddr *)&un, sizeof un) != 0)
			return -1;
		f->serve = serve_localapi;
	} else {
		struct sockaddr_in in = { .sin_family = AF_INET };
		socklen_t sl = sizeof in;
		in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (f->lfd < 0 || bind(f->lfd, (struct sockaddr *)&in, sizeof in) != 0 ||
		    getsockname(f->lfd, (struct sockaddr *)&in, &sl) != 0)
			return -1;
		f->port = ntohs(in.sin_port);
		f->serve = serve_webhook;
	}
	if (listen(f->lfd, 256) != 0)
		return -1;
	return pthread_create(&f->th, NULL, accept_main, f) == 0 ? 0 : -1;
}

static void fake_stop(struct fake *f)
{
	__atomic_store_n(&f->stop, 1, __ATOMIC_RELEASE);
	pthread_join(f->th, NULL);
	close(f->lfd);
}

static int group_setup(void **state)
{
	(void)state;
	signal(SIGPIPE, SIG_IGN);
	main_thread = pthread_self();
	snprintf(tmpdir, sizeof tmpdir, "/tmp/derpd-adm-XXXXXX");
	if (!mkdtemp(tmpdir))
		return -1;
	return fake_start(&localapi, 1) || fake_start(&webhook, 0) ? -1 : 0;
}

static int group_teardown(void **state)
{
	char cmd[128];
	(void)state;
	__atomic_store_n(&release_stalls, 1, __ATOMIC_RELEASE);
	fake_stop(&localapi);
	fake_stop(&webhook);
	snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

/* ---- asking ---- */

struct result {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int calls, allow, on_main;
	int64_t at;
	uint8_t gone; /* the client left (admission_gone) */
};

static void on_done(void *arg, int allow)
{
	struct result *r = arg;

	pthread_mutex_lock(&r->mu);
	r->calls++;
	r->allow = allow;
	r->at = now_ms();
	r->on_main |= pthread_equal(pthread_self(), main_thread);
	pthread_cond_broadcast(&r->cv);
	pthread_mutex_unlock(&r->mu);
}

static void result_init(struct result *r)
{
	memset(r, 0, sizeof *r);
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->cv, NULL);
	r->allow = -1;
}

/* Wait for the answer; fails the test if none comes in time. Returns allow. */
static int result_wait(struct result *r, int timeout_ms)
{
	struct timespec ts;
	int64_t end = now_ms() + timeout_ms;

	pthread_mutex_lock(&r->mu);
	while (!r->calls && now_ms() < end) {
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 20 * 1000000;
		if (ts.tv_nsec >= 1000000000)
			ts.tv_sec++, ts.tv_nsec -= 1000000000;
		pthread_cond_timedwait(&r->cv, &r->mu, &ts);
	}
	int calls = r->calls, allow = r->allow, on_main = r->on_main;
	pthread_mutex_unlock(&r->mu);
	if (!calls)
		fail_msg("no admission answer within %d ms", timeout_ms);
	assert_int_equal(on_main, 0); /* never from inside admission_check's caller */
	return allow;
}

static void make_key(uint8_t key[32], int mode, int salt)
{
	for (int i = 0; i < 32; i++)
		key[i] = (uint8_t)(i * 17 + salt);
	key[0] = (uint8_t)mode;
}

static const struct sockaddr *loopback(socklen_t *len)
{
	static struct sockaddr_in in;
	in.sin_family = AF_INET;
	in.sin_port = htons(40000);
	in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	*len = sizeof in;
	return (const struct sockaddr *)&in;
}

static void ask(struct result *r, int mode, int salt)
{
	uint8_t key[32];
	socklen_t sl;
	const struct sockaddr *sa = loopback(&sl);

	make_key(key, mode, salt);
	result_init(r);
	admission_check(key, sa, sl, &r->gone, on_done, r);
}

/* One synchronous question. */
static int decide(int mode)
{
	static int salt;
	struct result r;

	ask(&r, mode, ++salt);
	return result_wait(&r, 8000);
}

static char hook_url[128];

static void start(int verify, int hook, int fail_open)
{
	struct config cfg;
	char err[200];

	if (admission_enabled()) /* an earlier test failed half-way */
		admission_stop();
	memset(&cfg, 0, sizeof cfg);
	cfg.verify_clients = verify;
	snprintf(hook_url, sizeof hook_url, "http://127.0.0.1:%u/hook", webhook.port);
	cfg.verify_client_url = hook ? hook_url : "";
	cfg.verify_client_url_fail_open = fail_open;
	cfg.socket_path = localapi.path;
	assert_int_equal(admission_start(&cfg, err, sizeof err), 0);
	assert_int_equal(admission_enabled(), 1);
	pthread_mutex_lock(&log_mu);
	nreq = 0;
	pthread_mutex_unlock(&log_mu);
	__atomic_store_n(&release_stalls, 0, __ATOMIC_RELEASE);
}

static void stop(void)
{
	__atomic_store_n(&release_stalls, 1, __ATOMIC_RELEASE);
	admission_stop();
	assert_int_equal(admission_enabled(), 0);
}

static void key_hex(const uint8_t key[32], char out[65])
{
	for (int i = 0; i < 32; i++)
		sprintf(out + 2 * i, "%02x", key[i]);
}

static const char *request(int i)
{
	static char copy[4096];
	pthread_mutex_lock(&log_mu);
	snprintf(copy, sizeof copy, "%s", i < nreq ? reqlog[i].text : "");
	pthread_mutex_unlock(&log_mu);
	return copy;
}

static int requests(void)
{
	pthread_mutex_lock(&log_mu);
	int n = nreq;
	pthread_mutex_unlock(&log_mu);
	return n;
}

/* Nothing configured: nothing starts, and a stray question is admitted (off-thread). */
static void test_not_configured(void **state)
{
	(void)state;
	struct config cfg;
	char err[100];
	struct result r;

	memset(&cfg, 0, sizeof cfg);
	cfg.verify_client_url = "";
	cfg.verify_client_url_fail_open = 1;
	assert_int_equal(admission_start(&cfg, err, sizeof err), 0);
	assert_int_equal(admission_enabled(), 0);
	ask(&r, W_DENY, 1);
	assert_int_equal(result_wait(&r, 2000), 1);
	assert_int_equal(requests(), 0);
}

/* §12.1: exactly upstream's request. */
static void test_localapi_request(void **state)
{
	(void)state;
	struct result r;
	uint8_t key[32];
	char hex[65], want[200];

	start(1, 0, 1);
	ask(&r, L_OK, 9);
	assert_int_equal(result_wait(&r, 5000), 1);
	make_key(key, L_OK, 9);
	key_hex(key, hex);
	snprintf(want, sizeof want, "GET /localapi/v0/whois?addr=nodekey%%3A%s HTTP/1.1\r\n", hex);
	const char *req = request(0);
	assert_int_equal(requests(), 1);
	if (strncmp(req, want, strlen(want)) != 0)
		fail_msg("request line: %s", req);
	assert_non_null(strstr(req, "\r\nHost: local-tailscaled.sock\r\n"));
	assert_non_null(strstr(req, "\r\nTailscale-Cap: 145\r\n"));
	assert_null(strcasestr(req, "\r\nAccept:"));
	assert_int_equal(r.calls, 1);
	stop();
}

static void test_localapi_answers(void **state)
{
	(void)state;
	static const struct { int mode, allow; } cases[] = {
		{ L_OK, 1 }, { L_NULL, 1 }, { L_404, 0 }, { L_403, 0 }, { L_OLD, 0 },
		{ L_500, 0 }, { L_BADJSON, 0 }, { L_ARRAY, 0 },
	};
	start(1, 0, 1);
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
		if (decide(cases[i].mode) != cases[i].allow)
			fail_msg("LocalAPI behaviour %d: allow should be %d", cases[i].mode,
				 cases[i].allow);
	stop();

	/* no tailscaled at all: refused (fail-open is only about the webhook) */
	struct config cfg;
	char err[100], path[160];
	memset(&cfg, 0, sizeof cfg);
	snprintf(path, sizeof path, "%s/none.sock", tmpdir);
	cfg.verify_clients = 1;
	cfg.verify_client_url = "";
	cfg.verify_client_url_fail_open = 1;
	cfg.socket_path = path;
	assert_int_equal(admission_start(&cfg, err, sizeof err), 0);
	assert_int_equal(decide(L_OK), 0);
	stop();
}

/* §12.2: exactly upstream's request, for each kind of source address. */
static void test_webhook_request(void **state)
{
	(void)state;
	struct sockaddr_in6 v6 = { .sin6_family = AF_INET6, .sin6_port = htons(5) };
	struct sockaddr_in6 mapped = v6;
	uint8_t key[32];
	char hex[65], want[300];
	socklen_t sl;
	struct result r;

	inet_pton(AF_INET6, "2001:db8::5", &v6.sin6_addr);
	inet_pton(AF_INET6, "::ffff:203.0.113.5", &mapped.sin6_addr);
	const struct { const struct sockaddr *sa; socklen_t len; const char *src; } peers[] = {
		{ loopback(&sl), sizeof(struct sockaddr_in), "127.0.0.1" },
		{ (struct sockaddr *)&v6, sizeof v6, "2001:db8::5" },
		{ (struct sockaddr *)&mapped, sizeof mapped, "203.0.113.5" },
		{ NULL, 0, "" },
	};
	start(0, 1, 1);
	make_key(key, W_ALLOW, 3);
	key_hex(key, hex);
	for (size_t i = 0; i < sizeof peers / sizeof *peers; i++) {
		result_init(&r);
		admission_check(key, peers[i].sa, peers[i].len, &r.gone, on_done, &r);
		assert_int_equal(result_wait(&r, 5000), 1);
		const char *req = request((int)i);
		assert_true(strncmp(req, "POST /hook HTTP/1.1\r\n", 21) == 0);
		snprintf(want, sizeof want, "\r\n\r\n{\"NodePublic\":\"nodekey:%s\",\"Source\":\"%s\"}",
			 hex, peers[i].src);
		const char *body = strstr(req, "\r\n\r\n");
		if (!body || strcmp(body, want) != 0)
			fail_msg("request %zu: %s", i, req);
		snprintf(want, sizeof want, "\r\nContent-Length: %zu\r\n", strlen(want) - 4);
		assert_non_null(strstr(req, want));
		snprintf(want, sizeof want, "\r\nHost: 127.0.0.1:%u\r\n", webhook.port);
		assert_non_null(strstr(req, want));
		assert_null(strcasestr(req, "\r\nContent-Type:"));
		assert_null(strcasestr(req, "\r\nExpect:"));
	}
	stop();
}

static void test_webhook_answers(void **state)
{
	(void)state;
	static const struct { int mode, open, closed; } cases[] = {
		{ W_ALLOW, 1, 1 }, { W_DENY, 0, 0 }, { W_LOWER, 1, 1 }, { W_NOTBOOL, 0, 0 },
		{ W_NULL, 0, 0 }, { W_MISSING, 0, 0 }, { W_500, 0, 0 }, { W_BADJSON, 0, 0 },
		{ W_BIG_LATE, 0, 0 }, { W_BIG_EARLY, 1, 1 }, { W_TRAILING, 1, 1 },
		{ W_REDIRECT, 1, 1 }, { W_DUP_LAST_FALSE, 0, 0 },
		/* hung up without an answer: a transport error, fail-open decides */
		{ W_HANGUP, 1, 0 },
	};
	for (int open = 1; open >= 0; open--) {
		start(0, 1, open);
		for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
			int want = open ? cases[i].open : cases[i].closed;
			if (decide(cases[i].mode) != want)
				fail_msg("webhook behaviour 0x%x, fail-open %d: allow should be %d",
					 cases[i].mode, open, want);
		}
		stop();
	}
}

/* A webhook nobody listens on: fail-open admits, fail-closed refuses, both at once. */
static void test_webhook_unreachable(void **state)
{
	(void)state;
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in in = { .sin_family = AF_INET };
	socklen_t sl = sizeof in;
	struct config cfg;
	char err[100], url[100];

	/* a port that was just free: bound, never listened */
	in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&in, sizeof in), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&in, &sl), 0);
	snprintf(url, sizeof url, "http://127.0.0.1:%u/hook", ntohs(in.sin_port));
	for (int open = 1; open >= 0; open--) {
		memset(&cfg, 0, sizeof cfg);
		cfg.verify_client_url = url;
		cfg.verify_client_url_fail_open = open;
		assert_int_equal(admission_start(&cfg, err, sizeof err), 0);
		int64_t t0 = now_ms();
		assert_int_equal(decide(W_ALLOW), open);
		assert_true(now_ms() - t0 < 2000);
		stop();
	}
	close(fd);
}

/* The 5 s timeout. Stalls before the answer are transport errors (fail-open decides);
 * a stall in the body of a 200 is a decode error (refused); a complete value followed by a
 * stall is decided at once; and stalled checks do not hold up anyone else. */
static void test_webhook_stalls(void **state)
{
	(void)state;
	struct result head, body, value, quick, closed;

	start(0, 1, 1);
	int64_t t0 = now_ms();
	ask(&head, W_STALL_HEAD, 1);
	ask(&body, W_STALL_BODY, 2);
	ask(&value, W_VALUE_STALL, 3);
	ask(&quick, W_ALLOW, 4);
	assert_int_equal(result_wait(&value, 2000), 1);
	assert_int_equal(result_wait(&quick, 2000), 1);
	assert_true(quick.at - t0 < 2000);
	assert_true(value.at - t0 < 2000);
	assert_int_equal(result_wait(&head, 9000), 1);
	assert_int_equal(result_wait(&body, 9000), 0);
	print_message("stalled webhook decided after %lld ms\n", (long long)(head.at - t0));
	assert_true(head.at - t0 >= 4500 && head.at - t0 < 8000);
	assert_true(body.at - t0 >= 4500 && body.at - t0 < 8000);
	stop();

	start(0, 1, 0);
	t0 = now_ms();
	ask(&closed, W_STALL_HEAD, 5);
	assert_int_equal(result_wait(&closed, 9000), 0);
	assert_true(closed.at - t0 >= 4500 && closed.at - t0 < 8000);
	stop();
}

/* Both: tailscaled first; a refusal there means the webhook is never asked. */
static void test_both(void **state)
{
	(void)state;
	start(1, 1, 1);
	assert_int_equal(decide(L_404), 0);
	assert_int_equal(requests(), 1);
	assert_int_equal(reqlog[0].ts, 1);
	assert_int_equal(decide(L_OK), 1);
	assert_int_equal(requests(), 3);
	assert_int_equal(reqlog[1].ts, 1);
	assert_int_equal(reqlog[2].ts, 0);
	assert_int_equal(decide(W_DENY), 0);
	assert_int_equal(requests(), 5);
	assert_int_equal(reqlog[3].ts, 1);
	assert_int_equal(reqlog[4].ts, 0);
	/* fail-open is about the webhook only */
	assert_int_equal(decide(W_HANGUP), 1);
	stop();
}

/* Queue full: refused at once, never admitted unchecked (whatever fail-open says), and
 * counted as busy. admission_stop answers everything still pending with allow=0,
 * promptly, exactly once. (Small limits; derpd's are 512 in flight, 4096 waiting.) */
static void test_queue_full_and_stop(void **state)
{
	(void)state;
	enum { FLIGHT = 4, WAIT = 16, N = FLIGHT + WAIT };
	struct result *rs = calloc(N + 1, sizeof *rs);
	uint64_t before[ADMISSION_NRESULTS], after[ADMISSION_NRESULTS];

	admission_limits_for_tests(FLIGHT, WAIT);
	for (int open = 1; open >= 0; open--) {
		start(0, 1, open);
		admission_counters_get(before);
		for (int i = 0; i < FLIGHT; i++)
			ask(&rs[i], W_STALL_HEAD, i);
		int64_t end = now_ms() + 5000;
		while (requests() < FLIGHT && now_ms() < end)
			usleep(10000);
		assert_int_equal(requests(), FLIGHT); /* four checks in flight, no more */
		for (int i = FLIGHT; i < N; i++)
			ask(&rs[i], W_STALL_HEAD, i);
		int64_t t0 = now_ms();
		ask(&rs[N], W_ALLOW, N);
		assert_int_equal(result_wait(&rs[N], 2000), 0);
		assert_true(now_ms() - t0 < 2000);
		assert_int_equal(requests(), FLIGHT);
		admission_counters_get(after);
		assert_int_equal(after[ADMISSION_BUSY] - before[ADMISSION_BUSY], 1);
		t0 = now_ms();
		admission_stop();
		for (int i = 0; i < N; i++) {
			assert_int_equal(result_wait(&rs[i], 100), 0);
			assert_int_equal(rs[i].calls, 1);
		}
		print_message("stop answered %d pending checks in %lld ms\n", N,
			      (long long)(now_ms() - t0));
		assert_true(now_ms() - t0 < 3000);
		__atomic_store_n(&release_stalls, 1, __ATOMIC_RELEASE);
	}
	admission_limits_for_tests(0, 0);
	free(rs);
	/* after stop: refused, still never in the caller's thread */
	struct result late;
	ask(&late, W_ALLOW, 77);
	assert_int_equal(result_wait(&late, 2000), 0);
}

/* A client that leaves: a check still waiting for a slot is never sent, one in flight is
 * cut off at once; both are answered allow=0 and counted as abandoned. A stalled check
 * holds nobody else up: all slots but the stalled ones keep answering. */
static void test_gone(void **state)
{
	(void)state;
	struct result stalled, waiting, quick;
	uint64_t before[ADMISSION_NRESULTS], after[ADMISSION_NRESULTS];

	admission_limits_for_tests(1, 0);
	start(0, 1, 1);
	admission_counters_get(before);
	ask(&stalled, W_STALL_HEAD, 1);
	int64_t end = now_ms() + 5000;
	while (requests() < 1 && now_ms() < end)
		usleep(10000);
	assert_int_equal(requests(), 1);
	ask(&waiting, W_ALLOW, 2); /* no slot: it waits */
	admission_gone(&waiting.gone);
	int64_t t0 = now_ms();
	assert_int_equal(result_wait(&waiting, 2000), 0);
	admission_gone(&stalled.gone);
	assert_int_equal(result_wait(&stalled, 2000), 0);
	assert_true(now_ms() - t0 < 2000);
	assert_int_equal(requests(), 1); /* the waiting one never went out */
	admission_counters_get(after);
	assert_int_equal(after[ADMISSION_ABANDONED] - before[ADMISSION_ABANDONED], 2);
	assert_int_equal(after[ADMISSION_ADMITTED] - before[ADMISSION_ADMITTED], 0);
	/* the slot is free again */
	ask(&quick, W_ALLOW, 3);
	assert_int_equal(result_wait(&quick, 2000), 1);
	stop();
	admission_limits_for_tests(0, 0);
}

/* With --verbose one line per refusal, with the client and the reason (without, they are
 * summarised: test_log.c). */
static void test_log_lines(void **state)
{
	(void)state;
	char path[128], buf[8192], want[300];
	int saved = dup(2);

	snprintf(path, sizeof path, "%s/log", tmpdir);
	int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
	assert_true(fd >= 0 && saved >= 0);
	fflush(stderr);
	dup2(fd, 2);
	log_debug_mask = 1u << LS_ADMISSION;
	start(1, 1, 1);
	int a = decide(L_404), b = decide(L_OLD), c = decide(W_DENY);
	stop();
	log_debug_mask = 0;
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	close(fd);
	assert_int_equal(a + b + c, 0);
	FILE *f = fopen(path, "r");
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	snprintf(want, sizeof want, "DEBUG admission: 127.0.0.1:40000 [");
	if (!strstr(buf, want) || !strstr(buf, "]: nodekey:") ||
	    !strstr(buf, "not found in local tailscaled") ||
	    !strstr(buf, "tailscaled version is too old") || !strstr(buf, "not allowed"))
		fail_msg("log: %s", buf);
	int lines = 0;
	for (char *p = buf; (p = strstr(p, " refused: ")); p++)
		lines++;
	assert_int_equal(lines, 3);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_not_configured),
		cmocka_unit_test(test_localapi_request),
		cmocka_unit_test(test_localapi_answers),
		cmocka_unit_test(test_webhook_request),
		cmocka_unit_test(test_webhook_answers),
		cmocka_unit_test(test_webhook_unreachable),
		cmocka_unit_test(test_webhook_stalls),
		cmocka_unit_test(test_both),
		cmocka_unit_test(test_queue_full_and_stop),
		cmocka_unit_test(test_gone),
		cmocka_unit_test(test_log_lines),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
