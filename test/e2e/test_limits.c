/* Admission and per-client rate limits against the real binary (spec PROTOCOL.md §6.4,
 * §10; SERVER.md §12, §14; CONFORMANCE 80-93): -verify-clients against a fake tailscaled
 * LocalAPI on a unix socket and -verify-client-url against a local webhook, both run here;
 * --rate-config measured on the wire, reloaded on SIGHUP, mesh peers exempt. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "server/frame.h"
#include "test/e2e/harness.h"

#define PUB(c) derp_client_public_key(c)
#define MESH_KEY_HEX "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static char tmpdir[64];

static void write_file(const char *path, const char *content)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(content, f);
	fclose(f);
}

/* ---- fake tailscaled and webhook: one thread per connection ---- */

enum verdict { V_UNKNOWN, V_ALLOW, V_DENY, V_STALL };

#define MAXKEYS 16
static pthread_mutex_t fk_mu = PTHREAD_MUTEX_INITIALIZER;
static struct { char hex[65]; enum verdict ts, hook; } keys[MAXKEYS];
static int nkeys, ts_asked, hook_asked, stop_fakes;
static char last_ts_req[1024], last_hook_req[1024];

static void set_key(const uint8_t pub[32], enum verdict ts, enum verdict hook)
{
	pthread_mutex_lock(&fk_mu);
	assert_true(nkeys < MAXKEYS);
	sodium_bin2hex(keys[nkeys].hex, 65, pub, 32);
	keys[nkeys].ts = ts;
	keys[nkeys].hook = hook;
	nkeys++;
	pthread_mutex_unlock(&fk_mu);
}

static void lookup(const char *req, enum verdict *ts, enum verdict *hook)
{
	*ts = *hook = V_UNKNOWN;
	pthread_mutex_lock(&fk_mu);
	for (int i = 0; i < nkeys; i++)
		if (strstr(req, keys[i].hex)) {
			*ts = keys[i].ts;
			*hook = keys[i].hook;
		}
	pthread_mutex_unlock(&fk_mu);
}

static void respond(int fd, int status, const char *body)
{
	char buf[512];
	int n = snprintf(buf, sizeof buf, "HTTP/1.1 %d X\r\nContent-Length: %zu\r\n"
			 "Connection: close\r\n\r\n%s", status, strlen(body), body);
	send(fd, buf, (size_t)n, MSG_NOSIGNAL);
}

struct fk_conn { int fd, is_ts; };

static void *fk_conn_main(void *p)
{
	struct fk_conn *c = p;
	char req[2048];
	size_t n = 0;
	int64_t end = harness_now_ms() + 5000;

	while (n < sizeof req - 1 && harness_now_ms() < end) {
		struct pollfd pf = { .fd = c->fd, .events = POLLIN };
		if (poll(&pf, 1, 100) <= 0)
			continue;
		ssize_t r = recv(c->fd, req + n, sizeof req - 1 - n, 0);
		if (r <= 0)
			break;
		n += (size_t)r;
		req[n] = '\0';
		char *e = strstr(req, "\r\n\r\n");
		/* the webhook's body is small and follows its head at once */
		if (e && (c->is_ts || strchr(e, '}')))
			break;
	}
	req[n] = '\0';
	enum verdict ts, hook, v;
	lookup(req, &ts, &hook);
	pthread_mutex_lock(&fk_mu);
	if (c->is_ts) {
		ts_asked++;
		snprintf(last_ts_req, sizeof last_ts_req, "%.1000s", req);
	} else {
		hook_asked++;
		snprintf(last_hook_req, sizeof last_hook_req, "%.1000s", req);
	}
	pthread_mutex_unlock(&fk_mu);
	v = c->is_ts ? ts : hook;
	if (v == V_STALL) {
		/* until the caller gives up (its 5 s timeout) or the test ends */
		struct pollfd pf = { .fd = c->fd, .events = POLLIN };
		int64_t until = harness_now_ms() + 20000;
		char b[64];
		while (!__atomic_load_n(&stop_fakes, __ATOMIC_ACQUIRE) && harness_now_ms() < until)
			if (poll(&pf, 1, 50) > 0 && recv(c->fd, b, sizeof b, 0) <= 0)
				break;
	} else if (c->is_ts) {
		if (v == V_ALLOW)
			respond(c->fd, 200, "{\"Node\":{\"ID\":1}}");
		else
			respond(c->fd, 404, "{\"error\":\"no match\"}");
	} else {
		respond(c->fd, 200, v == V_ALLOW ? "{\"Allow\":true}" : "{\"Allow\":false}");
	}
	close(c->fd);
	free(c);
	return NULL;
}

struct fake { int lfd, is_ts; pthread_t th; };
static struct fake ts_fake, hook_fake;
static char ts_path[128];
static uint16_t hook_port;

static void *fk_accept_main(void *p)
{
	struct fake *f = p;
	while (!__atomic_load_n(&stop_fakes, __ATOMIC_ACQUIRE)) {
		struct pollfd pf = { .fd = f->lfd, .events = POLLIN };
		if (poll(&pf, 1, 50) <= 0)
			continue;
		int fd = accept(f->lfd, NULL, NULL);
		if (fd < 0)
			continue;
		struct fk_conn *c = malloc(sizeof *c);
		pthread_t t;
		c->fd = fd;
		c->is_ts = f->is_ts;
		if (pthread_create(&t, NULL, fk_conn_main, c) == 0)
			pthread_detach(t);
		else
			close(fd), free(c);
	}
	return NULL;
}

static int group_setup(void **state)
{
	(void)state;
	signal(SIGPIPE, SIG_IGN);
	if (sodium_init() < 0)
		return -1;
	snprintf(tmpdir, sizeof tmpdir, "/tmp/derpd-limits-XXXXXX");
	if (!mkdtemp(tmpdir))
		return -1;
	struct sockaddr_un un = { .sun_family = AF_UNIX };
	snprintf(ts_path, sizeof ts_path, "%s/tailscaled.sock", tmpdir);
	snprintf(un.sun_path, sizeof un.sun_path, "%.100s", ts_path);
	ts_fake.lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ts_fake.is_ts = 1;
	if (bind(ts_fake.lfd, (struct sockaddr *)&un, sizeof un) || listen(ts_fake.lfd, 64))
		return -1;
	struct sockaddr_in in = { .sin_family = AF_INET };
	socklen_t sl = sizeof in;
	in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	hook_fake.lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (bind(hook_fake.lfd, (struct sockaddr *)&in, sizeof in) ||
	    getsockname(hook_fake.lfd, (struct sockaddr *)&in, &sl) || listen(hook_fake.lfd, 64))
		return -1;
	hook_port = ntohs(in.sin_port);
	if (pthread_create(&ts_fake.th, NULL, fk_accept_main, &ts_fake) ||
	    pthread_create(&hook_fake.th, NULL, fk_accept_main, &hook_fake))
		return -1;
	return 0;
}

static int group_teardown(void **state)
{
	char cmd[128];
	(void)state;
	__atomic_store_n(&stop_fakes, 1, __ATOMIC_RELEASE);
	pthread_join(ts_fake.th, NULL);
	pthread_join(hook_fake.th, NULL);
	close(ts_fake.lfd);
	close(hook_fake.lfd);
	snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static void reset_fakes(void)
{
	pthread_mutex_lock(&fk_mu);
	nkeys = ts_asked = hook_asked = 0;
	pthread_mutex_unlock(&fk_mu);
}

static int asked(int ts)
{
	pthread_mutex_lock(&fk_mu);
	int n = ts ? ts_asked : hook_asked;
	pthread_mutex_unlock(&fk_mu);
	return n;
}

/* ---- clients with keys chosen in advance ---- */

struct who { uint8_t pub[32], priv[32]; };

static struct who new_key(enum verdict ts, enum verdict hook)
{
	struct who w;
	crypto_box_keypair(w.pub, w.priv);
	set_key(w.pub, ts, hook);
	return w;
}

static struct derp_client *login(const struct harness_server *s, const struct who *w,
				 int timeout_ms)
{
	struct derp_client_opts o = harness_opts();
	o.private_key = w->priv;
	o.timeout_ms = timeout_ms;
	return derp_client_connect("127.0.0.1", s->port, &o);
}

/* Refused: the server closes without ServerInfo. */
static void expect_refused(const struct harness_server *s, const struct who *w, int timeout_ms)
{
	struct derp_client *c = login(s, w, timeout_ms);
	if (c) {
		derp_client_close(c);
		harness_dump_log(s);
		fail_msg("a client that should be refused logged in");
	}
}

struct bg_login { const struct harness_server *s; const struct who *w; struct derp_client *c;
		  int64_t took; };

static void *bg_login_main(void *p)
{
	struct bg_login *b = p;
	int64_t t0 = harness_now_ms();
	b->c = login(b->s, b->w, 12000);
	b->took = harness_now_ms() - t0;
	return NULL;
}

/* ---- admission ---- */

/* §12.1: only keys tailscaled knows; mesh peers are never asked about. */
static void test_verify_clients(void **state)
{
	(void)state;
	char psk[160];
	reset_fakes();
	snprintf(psk, sizeof psk, "%s/mesh.key", tmpdir);
	write_file(psk, MESH_KEY_HEX "\n");
	const char *args[] = { "-verify-clients", "-socket", ts_path, "-mesh-psk-file", psk, NULL };
	struct harness_server *s = harness_start(args);
	struct who a = new_key(V_ALLOW, V_UNKNOWN), b = new_key(V_ALLOW, V_UNKNOWN);
	struct who stranger = new_key(V_DENY, V_UNKNOWN);
	int before = asked(1);

	struct derp_client *ca = login(s, &a, 5000), *cb = login(s, &b, 5000);
	assert_non_null(ca);
	assert_non_null(cb);
	harness_relay_check(ca, cb);
	char want[200];
	sodium_bin2hex(want, 65, a.pub, 32);
	expect_refused(s, &stranger, 5000);
	assert_int_equal(asked(1) - before, 3);
	assert_true(harness_log_contains(s, "not found in local tailscaled"));
	pthread_mutex_lock(&fk_mu);
	assert_non_null(strstr(last_ts_req, "GET /localapi/v0/whois?addr=nodekey%3A"));
	assert_non_null(strstr(last_ts_req, "\r\nTailscale-Cap: 145\r\n"));
	assert_non_null(strstr(last_ts_req, "\r\nHost: local-tailscaled.sock\r\n"));
	pthread_mutex_unlock(&fk_mu);

	/* a mesh peer with a key tailscaled never heard of: admitted, tailscaled not asked */
	uint8_t mk[32];
	sodium_hex2bin(mk, 32, MESH_KEY_HEX, 64, NULL, NULL, NULL);
	struct derp_client_opts o = harness_opts();
	o.mesh_key = mk;
	int n = asked(1);
	struct derp_client *m = harness_client(s, &o);
	assert_int_equal(asked(1), n);
	derp_client_close(m);
	derp_client_close(ca);
	derp_client_close(cb);
	harness_stop(s);
}

/* §12.2: the webhook decides; a stalled webhook holds only that login (fail-open admits it
 * after the 5 s timeout) while others log in at once. */
static void test_verify_client_url(void **state)
{
	(void)state;
	char url[96];
	reset_fakes();
	snprintf(url, sizeof url, "http://127.0.0.1:%u/admit", hook_port);
	const char *args[] = { "-verify-client-url", url, NULL };
	struct harness_server *s = harness_start(args);
	struct who a = new_key(V_UNKNOWN, V_ALLOW), b = new_key(V_UNKNOWN, V_ALLOW);
	struct who d = new_key(V_UNKNOWN, V_DENY), slow = new_key(V_UNKNOWN, V_STALL);

	struct bg_login bg = { s, &slow, NULL, 0 };
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, bg_login_main, &bg), 0);
	int64_t end = harness_now_ms() + 3000;
	while (asked(0) < 1 && harness_now_ms() < end)
		poll(NULL, 0, 10);
	assert_int_equal(asked(0), 1); /* the stalled question is out */
	int64_t t0 = harness_now_ms();
	struct derp_client *ca = login(s, &a, 5000), *cb = login(s, &b, 5000);
	assert_non_null(ca);
	assert_non_null(cb);
	assert_true(harness_now_ms() - t0 < 2000);
	harness_relay_check(ca, cb);
	expect_refused(s, &d, 5000);
	pthread_join(t, NULL);
	print_message("stalled webhook: admitted after %lld ms (fail-open)\n", (long long)bg.took);
	assert_non_null(bg.c);
	assert_true(bg.took >= 4500 && bg.took < 9000);
	harness_relay_check(bg.c, ca);
	pthread_mutex_lock(&fk_mu);
	char want[200], hex[65];
	sodium_bin2hex(hex, sizeof hex, d.pub, 32);
	snprintf(want, sizeof want, "{\"NodePublic\":\"nodekey:%s\",\"Source\":\"127.0.0.1\"}", hex);
	assert_non_null(strstr(last_hook_req, "POST /admit HTTP/1.1\r\n"));
	assert_non_null(strstr(last_hook_req, want));
	pthread_mutex_unlock(&fk_mu);
	derp_client_close(bg.c);
	derp_client_close(ca);
	derp_client_close(cb);
	harness_stop(s);
}

/* Fail-closed: a stalled or unreachable webhook refuses. */
static void test_verify_client_url_fail_closed(void **state)
{
	(void)state;
	char url[96];
	reset_fakes();
	snprintf(url, sizeof url, "http://127.0.0.1:%u/admit", hook_port);
	const char *args[] = { "-verify-client-url", url, "-verify-client-url-fail-open=false", NULL };
	struct harness_server *s = harness_start(args);
	struct who a = new_key(V_UNKNOWN, V_ALLOW), slow = new_key(V_UNKNOWN, V_STALL);

	struct derp_client *ca = login(s, &a, 5000);
	assert_non_null(ca);
	int64_t t0 = harness_now_ms();
	expect_refused(s, &slow, 12000);
	print_message("stalled webhook, fail-closed: refused after %lld ms\n",
		      (long long)(harness_now_ms() - t0));
	assert_true(harness_now_ms() - t0 >= 4500);
	derp_client_close(ca);
	harness_stop(s);

	/* nobody listening at all */
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in in = { .sin_family = AF_INET };
	socklen_t sl = sizeof in;
	in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&in, sizeof in), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&in, &sl), 0);
	snprintf(url, sizeof url, "http://127.0.0.1:%u/admit", ntohs(in.sin_port));
	s = harness_start(args);
	expect_refused(s, &a, 5000);
	harness_stop(s);
	const char *open_args[] = { "-verify-client-url", url, NULL };
	s = harness_start(open_args);
	ca = login(s, &a, 5000);
	assert_non_null(ca); /* fail-open (the default) */
	assert_true(harness_log_contains(s, "admission controller unreachable"));
	derp_client_close(ca);
	harness_stop(s);
	close(fd);
}

/* Both: tailscaled first; its refusal means the webhook is never asked. */
static void test_verify_both(void **state)
{
	(void)state;
	char url[96];
	reset_fakes();
	snprintf(url, sizeof url, "http://127.0.0.1:%u/admit", hook_port);
	const char *args[] = { "-verify-clients", "-socket", ts_path, "-verify-client-url", url, NULL };
	struct harness_server *s = harness_start(args);
	struct who ok = new_key(V_ALLOW, V_ALLOW), ts_no = new_key(V_DENY, V_ALLOW);
	struct who hook_no = new_key(V_ALLOW, V_DENY);

	struct derp_client *c = login(s, &ok, 5000);
	assert_non_null(c);
	assert_int_equal(asked(1), 1); /* harness_start's greeting never sent a ClientInfo */
	assert_int_equal(asked(0), 1);
	expect_refused(s, &ts_no, 5000);
	assert_int_equal(asked(1), 2);
	assert_int_equal(asked(0), 1);
	expect_refused(s, &hook_no, 5000);
	assert_int_equal(asked(1), 3);
	assert_int_equal(asked(0), 2);
	derp_client_close(c);
	harness_stop(s);
}

/* ---- rate limits ---- */

static const char *rate_file(const char *content)
{
	static char path[128];
	snprintf(path, sizeof path, "%s/rate.json", tmpdir);
	write_file(path, content);
	return path;
}

/* Send n packets of size bytes from c to dst, then a Ping; returns the ms until its Pong,
 * i.e. until the server had read and processed everything c sent. */
static int64_t send_and_sync(struct derp_client *c, const uint8_t dst[32], int n, size_t size)
{
	static uint8_t pkt[DERP_MAX_PACKET];
	int64_t t0 = harness_now_ms();

	memset(pkt, 0x42, size);
	for (int i = 0; i < n; i++) {
		pkt[0] = (uint8_t)i;
		assert_int_equal(derp_client_send(c, dst, pkt, size), 0);
	}
	harness_ping(c, 30000);
	return harness_now_ms() - t0;
}

/* CONFORMANCE 80 on the wire: rate = burst = 65568. One maximal frame passes at once, the
 * next waits about a second; derp_rate_limit_per_client_waited = 1. */
static void test_rate_throttled(void **state)
{
	(void)state;
	const char *args[] = { "--rate-config", rate_file("{\"PerClientRateLimitBytesPerSec\": 65568,"
				" \"PerClientRateBurstBytes\": 65568}"), NULL };
	struct harness_server *s = harness_start(args);
	struct derp_client_opts o = harness_opts();
	o.timeout_ms = 10000;
	struct derp_client *a = harness_client(s, &o), *b = harness_client(s, &o);
	static uint8_t pkt[DERP_MAX_PACKET];

	assert_int_equal(harness_metric(s, "derp_rate_limit_per_client_bytes_per_second"), 65568);
	assert_int_equal(harness_metric(s, "derp_rate_limit_per_client_burst_bytes"), 65568);
	assert_int_equal(harness_metric(s, "derp_rate_limit_per_client_waited"), 0);
	memset(pkt, 7, sizeof pkt);
	int64_t t0 = harness_now_ms();
	assert_int_equal(derp_client_send(a, PUB(b), pkt, sizeof pkt), 0);
	assert_int_equal(derp_client_send(a, PUB(b), pkt, sizeof pkt), 0);
	harness_expect_packet(b, PUB(a), pkt, sizeof pkt, 5000);
	int64_t first = harness_now_ms() - t0;
	harness_expect_packet(b, PUB(a), pkt, sizeof pkt, 5000);
	int64_t second = harness_now_ms() - t0;
	print_message("65536-byte packets at 65568 B/s: first after %lld ms, second after %lld ms\n",
		      (long long)first, (long long)second);
	assert_true(first < 500);
	assert_true(second >= 900 && second < 2500);
	assert_int_equal(harness_metric(s, "derp_rate_limit_per_client_waited"), 1);
	/* the limited client is slowed, never cut off */
	harness_relay_check(a, b);
	derp_client_close(a);
	derp_client_close(b);
	harness_stop(s);
}

/* Large frames get the configured rate too: each wait ends on time, not on a coarse
 * timer tick (which once made 64 KiB frames run at half the rate). 10 maximal frames at
 * 1.25 MB/s: the first from the burst, then (9 x 65568) / 1.25e6 = 472 ms. */
static void test_rate_large_frames(void **state)
{
	(void)state;
	const char *args[] = { "--rate-config",
			       rate_file("{\"PerClientRateLimitBytesPerSec\": 1250000}"), NULL };
	struct harness_server *s = harness_start(args);
	struct derp_client_opts o = harness_opts();
	o.timeout_ms = 10000;
	struct derp_client *a = harness_client(s, &o), *b = harness_client(s, &o);

	int64_t took = send_and_sync(a, PUB(b), 10, DERP_MAX_PACKET);
	print_message("10 x 65536-byte packets at 1.25 MB/s: %lld ms (ideal 472)\n",
		      (long long)took);
	assert_true(took >= 420 && took < 750);
	derp_client_close(a);
	derp_client_close(b);
	harness_stop(s);
}

/* A limited client's delivered rate is the configured rate; another client's own bucket
 * is untouched by it; a mesh peer is never limited. */
static void test_rate_measured(void **state)
{
	(void)state;
	char psk[160];
	snprintf(psk, sizeof psk, "%s/mesh.key", tmpdir);
	write_file(psk, MESH_KEY_HEX "\n");
	const char *args[] = { "--rate-config", rate_file("{\"PerClientRateLimitBytesPerSec\": 300000}"),
			       "-mesh-psk-file", psk, NULL };
	struct harness_server *s = harness_start(args);
	struct derp_client_opts o = harness_opts();
	o.timeout_ms = 20000;
	struct derp_client *lim = harness_client(s, &o), *sink = harness_client(s, &o);
	struct derp_client *c = harness_client(s, &o), *d = harness_client(s, &o);
	uint8_t mk[32];
	sodium_hex2bin(mk, 32, MESH_KEY_HEX, 64, NULL, NULL, NULL);
	struct derp_client_opts mo = o;
	mo.mesh_key = mk;
	struct derp_client *mesh = harness_client(s, &mo);

	/* 600 x 1000-byte packets cost 600 x 1032 tokens: after the 65568 burst, ~1.85 s */
	int64_t limited = send_and_sync(lim, PUB(sink), 600, 1000);
	double rate = (600.0 * 1032 - 65568) / ((double)limited / 1000.0);
	print_message("limited client: 619200 bytes processed in %lld ms (%.0f B/s past the "
		      "burst, limit 300000)\n", (long long)limited, rate);
	assert_true(limited >= 1600 && limited < 4000);
	/* the receiver got what the queue kept, last packet included */
	struct derp_msg m;
	int got = 0, last = -1;
	while (derp_client_recv(sink, &m, 300) == 0)
		if (m.kind == DERP_MSG_PACKET)
			got++, last = m.data[0];
	assert_true(got > 0);
	assert_int_equal(last, (uint8_t)599);

	/* another client's burst is its own: 60 KB while lim is throttled goes straight through */
	static uint8_t big[1000];
	for (int i = 0; i < 300; i++)
		assert_int_equal(derp_client_send(lim, PUB(sink), big, sizeof big), 0);
	int64_t other = send_and_sync(c, PUB(d), 60, 1000);
	print_message("unlimited-by-others client: 60 KB processed in %lld ms\n", (long long)other);
	assert_true(other < 800);

	/* a mesh peer: 2 MB of ForwardPacket processed far faster than 300 KB/s would allow */
	static uint8_t fwd[1000];
	int64_t t0 = harness_now_ms();
	for (int i = 0; i < 2000; i++)
		assert_int_equal(derp_client_forward(mesh, PUB(c), PUB(d), fwd, sizeof fwd), 0);
	harness_ping(mesh, 30000);
	int64_t meshed = harness_now_ms() - t0;
	print_message("mesh peer: 2 MB processed in %lld ms\n", (long long)meshed);
	assert_true(meshed < 3000);
	harness_ping(lim, 30000);
	derp_client_close(lim);
	derp_client_close(sink);
	derp_client_close(c);
	derp_client_close(d);
	derp_client_close(mesh);
	harness_stop(s);
}

/* SERVER.md §14, CONFORMANCE 90-93 on the binary: SIGHUP reloads and applies to existing
 * connections; a bad file keeps the old limits; {} turns limiting off. */
static void test_rate_sighup(void **state)
{
	(void)state;
	const char *path = rate_file("{\"PerClientRateLimitBytesPerSec\": 65568, "
				     "\"PerClientRateBurstBytes\": 65569}");
	const char *args[] = { "--rate-config", path, NULL };
	struct harness_server *s = harness_start(args);
	struct derp_client_opts o = harness_opts();
	o.timeout_ms = 10000;
	struct derp_client *a = harness_client(s, &o), *b = harness_client(s, &o);

	assert_int_equal(harness_metric(s, "derp_rate_limit_per_client_bytes_per_second"), 65568);
	assert_int_equal(harness_metric(s, "derp_rate_limit_per_client_burst_bytes"), 65569);
	assert_true(harness_log_contains(s, "client-rate=65568 bytes/sec, client-burst=65569 bytes"));
	/* 91: a tiny burst is raised to 65568 */
	write_file(path, "{\"PerClientRateLimitBytesPerSec\": 1250000, \"PerClientRateBurstBytes\": 10}");
	kill(s->pid, SIGHUP);
	harness_wait_metric(s, "derp_rate_limit_per_client_bytes_per_second", 1250000, 5000);
	assert_int_equal(harness_metric(s, "derp_rate_limit_per_client_burst_bytes"), 65568);
	/* 93: a bad file is refused and the limits stay */
	write_file(path, "not json");
	kill(s->pid, SIGHUP);
	int64_t end = harness_now_ms() + 5000;
	while (!harness_log_contains(s, "error parsing rate config") && harness_now_ms() < end)
		poll(NULL, 0, 20);
	assert_true(harness_log_contains(s, "error parsing rate config"));
	assert_int_equal(harness_metric(s, "derp_rate_limit_per_client_bytes_per_second"), 1250000);
	/* limiting applies to the existing connection: 10 maximal packets need ~0.5 s */
	int64_t took = send_and_sync(a, PUB(b), 10, DERP_MAX_PACKET);
	print_message("10 x 64 KiB at 1.25 MB/s: %lld ms\n", (long long)took);
	assert_true(took >= 350);
	/* 92: {} turns it all off, for the same connection too */
	write_file(path, "{}");
	kill(s->pid, SIGHUP);
	harness_wait_metric(s, "derp_rate_limit_per_client_bytes_per_second", 0, 5000);
	assert_int_equal(harness_metric(s, "derp_rate_limit_per_client_burst_bytes"), 0);
	double waited = harness_metric(s, "derp_rate_limit_per_client_waited");
	took = send_and_sync(a, PUB(b), 40, DERP_MAX_PACKET);
	print_message("40 x 64 KiB unlimited: %lld ms\n", (long long)took);
	assert_true(took < 1500);
	assert_true(harness_metric(s, "derp_rate_limit_per_client_waited") == waited);
	derp_client_close(a);
	derp_client_close(b);
	harness_stop(s);
}

/* SERVER.md §14: a SIGHUP that lifts the limit frees a sender already waiting at once. At
 * 1 byte/s (burst raised to 65568) the second maximal packet would wait ~65 s. */
static void test_rate_waiter_sighup(void **state)
{
	(void)state;
	const char *path = rate_file("{\"PerClientRateLimitBytesPerSec\": 1}");
	const char *args[] = { "--rate-config", path, NULL };
	struct harness_server *s = harness_start(args);
	struct derp_client *a = harness_client(s, NULL), *b = harness_client(s, NULL);
	static uint8_t p1[DERP_MAX_PACKET], p2[DERP_MAX_PACKET];

	memset(p1, 1, sizeof p1);
	memset(p2, 2, sizeof p2);
	assert_int_equal(derp_client_send(a, PUB(b), p1, sizeof p1), 0);
	assert_int_equal(derp_client_send(a, PUB(b), p2, sizeof p2), 0);
	harness_expect_packet(b, PUB(a), p1, sizeof p1, 5000);
	harness_expect_nothing(b, 300); /* the second waits for tokens */
	assert_int_equal(harness_metric(s, "derp_rate_limit_per_client_waited"), 1);
	write_file(path, "{}");
	int64_t t0 = harness_now_ms();
	kill(s->pid, SIGHUP);
	harness_expect_packet(b, PUB(a), p2, sizeof p2, 3000);
	print_message("the waiting packet arrived %lld ms after SIGHUP lifted the limit\n",
		      (long long)(harness_now_ms() - t0));
	derp_client_close(a);
	derp_client_close(b);
	harness_stop(s);
}

/* No --rate-config: no rate metrics (upstream publishes them only then). A bad file at
 * start-up is fatal. */
static void test_rate_config_startup(void **state)
{
	(void)state;
	struct harness_server *s = harness_start(NULL);
	assert_true(isnan(harness_metric(s, "derp_rate_limit_per_client_waited")));
	assert_true(isnan(harness_metric(s, "derp_rate_limit_per_client_bytes_per_second")));
	harness_stop(s);

	static const char *bad[] = { "/nonexistent/derpd-rate.json", NULL };
	bad[1] = rate_file("[1, 2]");
	for (int i = 0; i < 2; i++) {
		const char *bin = getenv("DERPD_BIN");
		char key[160], log[160];
		snprintf(key, sizeof key, "%s/k%d.key", tmpdir, i);
		snprintf(log, sizeof log, "%s/start%d.log", tmpdir, i);
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			FILE *f = freopen(log, "w", stderr);
			(void)f;
			execl(bin && *bin ? bin : "./derpd", "derpd", "-a", "127.0.0.1:0", "-c", key,
			      "-stun=false", "--rate-config", bad[i], (char *)NULL);
			_exit(127);
		}
		int st = 0;
		int64_t end = harness_now_ms() + 10000;
		while (waitpid(pid, &st, WNOHANG) == 0) {
			if (harness_now_ms() > end) {
				kill(pid, SIGKILL);
				waitpid(pid, NULL, 0);
				fail_msg("derpd kept running with a bad --rate-config (%s)", bad[i]);
			}
			poll(NULL, 0, 20);
		}
		assert_true(WIFEXITED(st) && WEXITSTATUS(st) != 0);
	}
}

/* ---- the accept limiter (TLS listener) ---- */

/* derpd in TLS mode (self-signed IP certificate) with its metrics on a plain listener;
 * returns the pid, fills the TLS port and a harness_server pointing at the metrics port. */
static pid_t start_tls(const char *const *extra, uint16_t *tls_port, struct harness_server *m)
{
	const char *bin = getenv("DERPD_BIN");
	char log[160], key[160], certdir[160], *argv[32];
	int argc = 0;

	snprintf(log, sizeof log, "%s/tls.log", tmpdir);
	snprintf(key, sizeof key, "%s/tls.key", tmpdir);
	snprintf(certdir, sizeof certdir, "%s/certs", tmpdir);
	argv[argc++] = (char *)(bin && *bin ? bin : "./derpd");
	const char *base[] = { "-a", "127.0.0.1:0", "-c", key, "-stun=false", "-certmode", "manual",
			       "-hostname", "127.0.0.1", "-certdir", certdir, "-http-port=-1",
			       "--metrics-addr", "127.0.0.1:0" };
	for (size_t i = 0; i < sizeof base / sizeof *base; i++)
		argv[argc++] = (char *)base[i];
	for (int i = 0; extra[i]; i++)
		argv[argc++] = (char *)extra[i];
	argv[argc] = NULL;
	memset(m, 0, sizeof *m);
	snprintf(m->log_path, sizeof m->log_path, "%s", log);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		FILE *f = freopen(log, "w", stderr);
		(void)f;
		execv(argv[0], argv);
		_exit(127);
	}
	int64_t end = harness_now_ms() + 10000;
	*tls_port = 0;
	while ((!*tls_port || !m->port) && harness_now_ms() < end) {
		char buf[8192];
		FILE *f = fopen(log, "r");
		size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
		if (f)
			fclose(f);
		buf[n] = '\0';
		char *p = strstr(buf, "serving on 127.0.0.1:");
		if (p)
			*tls_port = (uint16_t)atoi(p + strlen("serving on 127.0.0.1:"));
		p = strstr(buf, "metrics listening on ");
		if (p && (p = strstr(p, "(port ")))
			m->port = (uint16_t)atoi(p + 6);
		poll(NULL, 0, 20);
	}
	if (!*tls_port || !m->port) {
		harness_dump_log(m);
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		fail_msg("derpd in TLS mode did not start");
	}
	return pid;
}

static int tcp_to(uint16_t port)
{
	struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(port) };
	in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_int_equal(connect(fd, (struct sockaddr *)&in, sizeof in), 0);
	return fd;
}

/* Closed by the server within ms (a refused connection), or still open. */
static int closed_within(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	char b[16];
	if (poll(&p, 1, ms) <= 0)
		return 0;
	ssize_t r = recv(fd, b, sizeof b, MSG_DONTWAIT);
	return r == 0 || (r < 0 && errno != EAGAIN);
}

/* SERVER.md §5: each accepted TLS-listener connection takes a token (burst 3, 2/s); the
 * rest are closed at once and counted, and derpd keeps accepting (derper would exit). */
static void test_accept_limit(void **state)
{
	(void)state;
	const char *extra[] = { "--accept-connection-limit", "2", "--accept-connection-burst", "3",
				NULL };
	struct harness_server m;
	uint16_t port;
	pid_t pid = start_tls(extra, &port, &m);
	enum { N = 10 };
	int fds[N], open = 0;

	for (int i = 0; i < N; i++)
		fds[i] = tcp_to(port);
	for (int i = 0; i < N; i++)
		open += !closed_within(fds[i], i ? 50 : 1000);
	print_message("accept limiter: %d of %d connections kept\n", open, N);
	assert_true(open >= 3 && open <= 4);
	harness_wait_metric(&m, "tls_listener_rejected_connections", N - open, 3000);
	assert_int_equal(harness_metric(&m, "tls_listener_rejected_connections"), N - open);
	assert_int_equal(harness_metric(&m, "tls_listener_accepted_connections"), open);
	/* a second later there is a token again, and the server is still there */
	poll(NULL, 0, 1100);
	int fd = tcp_to(port);
	assert_false(closed_within(fd, 500));
	assert_int_equal(harness_metric(&m, "tls_listener_accepted_connections"), open + 1);
	close(fd);
	for (int i = 0; i < N; i++)
		close(fds[i]);
	assert_int_equal(waitpid(pid, NULL, WNOHANG), 0);
	kill(pid, SIGTERM);
	int64_t end = harness_now_ms() + 10000;
	while (waitpid(pid, NULL, WNOHANG) == 0 && harness_now_ms() < end)
		poll(NULL, 0, 20);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, WNOHANG);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_verify_clients),
		cmocka_unit_test(test_verify_client_url),
		cmocka_unit_test(test_verify_client_url_fail_closed),
		cmocka_unit_test(test_verify_both),
		cmocka_unit_test(test_rate_throttled),
		cmocka_unit_test(test_rate_measured),
		cmocka_unit_test(test_rate_large_frames),
		cmocka_unit_test(test_rate_sighup),
		cmocka_unit_test(test_rate_waiter_sighup),
		cmocka_unit_test(test_rate_config_startup),
		cmocka_unit_test(test_accept_limit),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
