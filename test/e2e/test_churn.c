/* A short churn soak (issue 13, "the attacks as tests"): several threads churn
 * connections against one derpd, from several loopback source addresses (127.0.0.2..9),
 * with a realistic mix; after each round derpd must be back to the descriptors it had
 * at start and to no connection at all, its RSS must not keep growing from one round to
 * the next, every client that logged in must have had its partner's packets, and at the
 * end it must still serve. Two servers, one test each: plain (DERP, WebSocket, HTTP on one port) and TLS
 * (the same over TLS on the main port, plus abandoned handshakes and plain HTTP on the
 * port-80 listener). Both have a mesh key, so a few mesh watchers log in too.
 *
 * The mix per cycle kind (see kind_names): a pair logs in, exchanges packets both ways
 * and leaves cleanly; clients vanish (RST: SO_LINGER 0) silently or with half a TLS
 * handshake, in the HTTP head, right after the upgrade, after ClientInfo (before or after
 * ServerInfo), in the middle of a frame, and with unread packets; WebSocket clients
 * relay with a partner and close cleanly or vanish; keep-alive HTTP clients ask for
 * /generate_204 and /derp/probe and vanish idle, mid-request or with /debug/varz unread.
 *
 * Rounds: a warm-up, then round 1 and round 2 of the same number of cycles. Each round
 * is bounded by a cycle count and by a wall-clock deadline; then the test waits (with a
 * deadline) until derpd has no connection left and its descriptors are back. RSS may grow
 * in the warm-up and round 1 (allocator caches) but a leak grows it every round, so round
 * 2 may add at most RSS_SLACK_KB (a leaked 640-byte struct conn adds ~3 MB in either
 * test; smaller leaks are LeakSanitizer's, in the ASan run).
 *
 * DERPD_TEST_WORK: a factor (0.05 .. 1) on the cycle counts for slow builds. Unset, it is
 * 1, or 0.25 when the derpd binary is built with ThreadSanitizer and 0.5 with
 * AddressSanitizer (found by their symbols in DERPD_BIN). The deadlines do not scale:
 * a slow machine does fewer cycles rather than fail. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test/e2e/harness.h"
#include "test/e2e/test_churn_util.h"
#include "test/e2e/test_mesh_util.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/resource.h>

#define THREADS 4
#define SOURCES 8            /* 127.0.0.2 .. 127.0.0.9 */
#define OP_MS 10000          /* bound on one client step (login, one packet, one reply) */
#define WARM_CYCLES 400
#define WARM_MS 1500
#define ROUND_CYCLES 4000
#define ROUND_MS 3000
#define ROUND2_MS 4500       /* round 2 may take a little longer to match round 1 */
#define SETTLE_MS 10000      /* derpd takes ~10 ms, ~30 ms under a sanitizer */
#define FD_SLACK 4           /* a scrape in flight, a lazily opened file */
/* Round 2's RSS growth allowed: ~300 kB is seen over 4,000 cycles (allocator noise; it
 * flattens out over more rounds); under a sanitizer its own bookkeeping adds ~2 MB. */
#define RSS_SLACK_KB 1024
#define RSS_SLACK_SANITIZER_KB 6144

enum kind { K_PAIR, K_HALF, K_HEAD, K_UPGRADE, K_INFO, K_MIDFRAME, K_UNREAD, K_WS, K_HTTP,
	    K_MESH, NKINDS };
static const char *const kind_names[NKINDS] = {
	"pair", "half", "head", "upgrade", "info", "midframe", "unread", "ws", "http", "mesh",
};
/* The mix, taken in order by cycle number: pairs and HTTP most, a mesh watcher rarely. */
static const enum kind schedule[] = {
	K_PAIR, K_HALF, K_HTTP, K_PAIR, K_HEAD, K_WS, K_UPGRADE, K_PAIR, K_INFO, K_HTTP,
	K_MIDFRAME, K_WS, K_UNREAD, K_PAIR, K_HALF, K_HTTP, K_INFO, K_MESH,
};
#define SCHED_LEN (sizeof schedule / sizeof schedule[0])
static const int conns_per[NKINDS] = { [K_PAIR] = 2, [K_UNREAD] = 2, [K_WS] = 2 };

struct srv {
	struct harness_server *s;
	int tls;
	uint16_t port80;     /* TLS server: its plain port-80 listener */
	uint8_t mesh_key[32];
	char dir[64], mesh_path[128], certdir[128];
	WOLFSSL_CTX *ctx;    /* main thread's, for scrapes over TLS */
};

/* One round, shared by its threads. */
struct round {
	const struct srv *v;
	int target;
	int64_t deadline;
	atomic_int next;
	atomic_int done[NKINDS], fail[NKINDS];
	atomic_int logins, exchanged; /* pair/ws clients logged in; got all partner packets */
	pthread_mutex_t mu;
	char why[NKINDS][200];        /* first failure of each kind */
};

struct worker_arg {
	struct round *r;
	int id;
	WOLFSSL_CTX *ctx;
};

static double work = 1.0;
static int sanitizer; /* derpd is built with ASan or TSan */

static void fail_why(struct round *r, enum kind k, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void fail_why(struct round *r, enum kind k, const char *fmt, ...)
{
	va_list ap;

	atomic_fetch_add(&r->fail[k], 1);
	pthread_mutex_lock(&r->mu);
	if (!r->why[k][0]) {
		va_start(ap, fmt);
		vsnprintf(r->why[k], sizeof r->why[k], fmt, ap);
		va_end(ap);
	}
	pthread_mutex_unlock(&r->mu);
}

static void src_addr(char *out, size_t cap, int n)
{
	snprintf(out, cap, "127.0.0.%d", 2 + n % SOURCES);
}

/* ---- DERP clients from a chosen source address --------------------------------------- */

/* stage 0: upgraded (101 and ServerKey read); 1: ClientInfo sent too; 2: logged in. */
static struct derp_client *dial(const struct srv *v, const char *src, int stage,
				const uint8_t *mesh_key)
{
	char host[32];
	struct derp_client_opts o = { .timeout_ms = OP_MS, .tls = v->tls, .tls_insecure = v->tls,
				      .mesh_key = mesh_key };
	int fd = cu_tcp(src, v->s->port, OP_MS);

	if (fd < 0)
		return NULL;
	snprintf(host, sizeof host, "127.0.0.1:%u", v->s->port);
	struct derp_client *c = derp_client_open_fd(fd, host, &o);
	if (c && stage >= 1 && derp_client_send_info(c) != 0)
		goto fail;
	if (c && stage >= 2 && derp_client_finish(c) != 0)
		goto fail;
	return c;
fail:
	derp_client_close(c);
	return NULL;
}

static void derp_rst(struct derp_client *c)
{
	struct linger l = { 1, 0 };

	setsockopt(derp_client_fd(c), SOL_SOCKET, SO_LINGER, &l, sizeof l);
	derp_client_close(c);
}

/* The next packet on c (other messages skipped) must be from src with exactly p. */
static int expect_packet(struct derp_client *c, const uint8_t src[32], const void *p, size_t n)
{
	struct derp_msg m;

	for (;;) {
		if (derp_client_recv(c, &m, OP_MS) != 0)
			return -1;
		if (m.kind == DERP_MSG_PACKET)
			return memcmp(m.key, src, 32) == 0 && m.len == n && memcmp(m.data, p, n) == 0
				       ? 0 : -1;
	}
}

/* ---- the cycles ------------------------------------------------------------------------ */

#define PKTS 3

static void cyc_pair(struct round *r, int i, const char *src, const char *src2)
{
	struct derp_client *a = dial(r->v, src, 2, NULL), *b = a ? dial(r->v, src2, 2, NULL) : NULL;
	uint8_t pa[PKTS][1200], pb[PKTS][1200];
	size_t la = 64 + (size_t)(i % 7) * 150, lb = 1200 - (size_t)(i % 5) * 200;

	if (!a || !b) {
		fail_why(r, K_PAIR, "login: %s", derp_client_error());
		goto out;
	}
	atomic_fetch_add(&r->logins, 2);
	randombytes_buf(pa, sizeof pa);
	randombytes_buf(pb, sizeof pb);
	for (int k = 0; k < PKTS; k++)
		if (derp_client_send(a, derp_client_public_key(b), pa[k], la) != 0 ||
		    derp_client_send(b, derp_client_public_key(a), pb[k], lb) != 0) {
			fail_why(r, K_PAIR, "send: %s", derp_client_error());
			goto out;
		}
	for (int k = 0; k < PKTS; k++)
		if (expect_packet(b, derp_client_public_key(a), pa[k], la) != 0 ||
		    expect_packet(a, derp_client_public_key(b), pb[k], lb) != 0) {
			fail_why(r, K_PAIR, "packet %d of %d not relayed intact: %s", k, PKTS,
				 derp_client_error());
			goto out;
		}
	atomic_fetch_add(&r->exchanged, 2);
	atomic_fetch_add(&r->done[K_PAIR], 1);
out:
	derp_client_close(a); /* an orderly close: FIN */
	derp_client_close(b);
}

/* Reads nothing: the handshake stops after the ClientHello, whatever the server sent. */
static int never_read(WOLFSSL *ssl, char *buf, int sz, void *ctx)
{
	(void)ssl, (void)buf, (void)sz, (void)ctx;
	return WOLFSSL_CBIO_ERR_WANT_READ;
}

/* Plain: connect and vanish before a byte (or after one). TLS: the ClientHello goes out,
 * then vanish at once or once the server's first flight is waiting unread. */
static void cyc_half(struct round *r, int i, const char *src, WOLFSSL_CTX *ctx)
{
	int fd = cu_tcp(src, r->v->s->port, OP_MS);

	if (fd < 0) {
		fail_why(r, K_HALF, "connect failed");
		return;
	}
	if (r->v->tls) {
		WOLFSSL *ssl = wolfSSL_new(ctx);
		wolfSSL_set_fd(ssl, fd);
		wolfSSL_SSLSetIORecv(ssl, never_read);
		int rc = wolfSSL_connect(ssl);
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (rc == WOLFSSL_SUCCESS || wolfSSL_get_error(ssl, rc) != WOLFSSL_ERROR_WANT_READ)
			fail_why(r, K_HALF, "ClientHello not sent (%d)", wolfSSL_get_error(ssl, rc));
		else if (i % 2 && poll(&p, 1, OP_MS) != 1)
			fail_why(r, K_HALF, "no ServerHello");
		else
			atomic_fetch_add(&r->done[K_HALF], 1);
		wolfSSL_free(ssl);
	} else {
		if (i % 2)
			send(fd, "G", 1, MSG_NOSIGNAL);
		atomic_fetch_add(&r->done[K_HALF], 1);
	}
	cu_rst_fd(fd);
}

/* Vanish in the middle of the upgrade request's head. */
static void cyc_head(struct round *r, int i, const char *src, WOLFSSL_CTX *ctx)
{
	static const char head[] = "GET /derp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
				   "Upgrade: DERP\r\nDerp-Fast-Start: 1\r\n";
	struct xp x;

	if (xp_dial(&x, src, r->v->s->port, r->v->tls ? ctx : NULL, OP_MS) != 0) {
		fail_why(r, K_HEAD, "connect failed");
		return;
	}
	if (xp_write(&x, head, 1 + (size_t)(i * 7) % (sizeof head - 2)) != 0)
		fail_why(r, K_HEAD, "write failed");
	else
		atomic_fetch_add(&r->done[K_HEAD], 1);
	xp_close(&x, 1);
}

/* Vanish once the 101 and ServerKey are read. */
static void cyc_upgrade(struct round *r, const char *src)
{
	struct derp_client *c = dial(r->v, src, 0, NULL);

	if (!c) {
		fail_why(r, K_UPGRADE, "upgrade: %s", derp_client_error());
		return;
	}
	atomic_fetch_add(&r->done[K_UPGRADE], 1);
	derp_rst(c);
}

/* Vanish after ClientInfo: before ServerInfo arrives (odd i) or after it. */
static void cyc_info(struct round *r, int i, const char *src)
{
	struct derp_client *c = dial(r->v, src, i % 2 ? 1 : 2, NULL);

	if (!c) {
		fail_why(r, K_INFO, "login: %s", derp_client_error());
		return;
	}
	atomic_fetch_add(&r->done[K_INFO], 1);
	derp_rst(c);
}

/* Log in and vanish in the middle of a SendPacket frame (or of its header). */
static void cyc_midframe(struct round *r, int i, const char *src)
{
	struct derp_client *c = dial(r->v, src, 2, NULL);
	uint8_t f[5 + 32 + 600];

	if (!c) {
		fail_why(r, K_MIDFRAME, "login: %s", derp_client_error());
		return;
	}
	frame_put_header(f, FRAME_SEND_PACKET, 32 + 1000);
	randombytes_buf(f + 5, sizeof f - 5);
	if (derp_client_write_raw(c, f, i % 2 ? 3 : sizeof f) != 0)
		fail_why(r, K_MIDFRAME, "write: %s", derp_client_error());
	else
		atomic_fetch_add(&r->done[K_MIDFRAME], 1);
	derp_rst(c);
}

/* v logs in, s sends it packets it never reads; v vanishes with them unread (and
 * derpd's queue for it maybe not empty), s sends a few more to the gone key. */
static void cyc_unread(struct round *r, const char *src, const char *src2)
{
	struct derp_client *v = dial(r->v, src, 2, NULL), *s = v ? dial(r->v, src2, 2, NULL) : NULL;
	uint8_t pkt[1000];

	if (!v || !s) {
		fail_why(r, K_UNREAD, "login: %s", derp_client_error());
		goto out;
	}
	randombytes_buf(pkt, sizeof pkt);
	for (int k = 0; k < 16; k++)
		if (derp_client_send(s, derp_client_public_key(v), pkt, sizeof pkt) != 0) {
			fail_why(r, K_UNREAD, "send: %s", derp_client_error());
			goto out;
		}
	struct pollfd p = { .fd = derp_client_fd(v), .events = POLLIN };
	if (!derp_client_buffered(v) && poll(&p, 1, OP_MS) != 1) {
		fail_why(r, K_UNREAD, "nothing arrived");
		goto out;
	}
	uint8_t key[32];
	memcpy(key, derp_client_public_key(v), 32);
	derp_rst(v);
	v = NULL;
	for (int k = 0; k < 4; k++)
		derp_client_send(s, key, pkt, sizeof pkt);
	atomic_fetch_add(&r->done[K_UNREAD], 1);
out:
	if (v)
		derp_rst(v);
	derp_client_close(s);
}

/* A WebSocket client relays with a DERP partner both ways, then closes with a close
 * frame, vanishes, or vanishes in the middle of a WebSocket frame. */
static void cyc_ws(struct round *r, int i, const char *src, const char *src2, WOLFSSL_CTX *ctx)
{
	struct wsc *w = calloc(1, sizeof *w);
	struct derp_client *p = dial(r->v, src2, 2, NULL);
	uint8_t f[32 + 300], back[200];

	if (w)
		w->x.fd = -1;
	if (!w || !p) {
		fail_why(r, K_WS, "partner login: %s", derp_client_error());
		goto out;
	}
	if (xp_dial(&w->x, src, r->v->s->port, r->v->tls ? ctx : NULL, OP_MS) != 0) {
		fail_why(r, K_WS, "connect failed");
		goto out;
	}
	if (wsc_login(w, r->v->s->port) != 0) {
		fail_why(r, K_WS, "WebSocket login failed");
		goto out;
	}
	atomic_fetch_add(&r->logins, 2);
	memcpy(f, derp_client_public_key(p), 32);
	randombytes_buf(f + 32, sizeof f - 32);
	randombytes_buf(back, sizeof back);
	if (wsc_send_derp(w, FRAME_SEND_PACKET, f, sizeof f) != 0 ||
	    expect_packet(p, w->pub, f + 32, sizeof f - 32) != 0 ||
	    derp_client_send(p, w->pub, back, sizeof back) != 0 ||
	    wsc_expect_packet(w, derp_client_public_key(p), back, sizeof back) != 0) {
		fail_why(r, K_WS, "packets not relayed intact: %s", derp_client_error());
		goto out;
	}
	atomic_fetch_add(&r->exchanged, 2);
	atomic_fetch_add(&r->done[K_WS], 1);
	if (i % 3 == 0) {
		uint8_t cl[125];
		wsc_send(w, WS_OP_CLOSE, cl, ws_build_close(cl, WS_CLOSE_NORMAL, "bye"));
	} else if (i % 3 == 1) {
		uint8_t h[14], mask[4] = { 1, 2, 3, 4 };
		xp_write(&w->x, h, ws_build_masked_header(h, WS_OP_BINARY, 1, 500, mask));
	}
out:
	if (w && w->x.fd >= 0)
		xp_close(&w->x, i % 3 != 0);
	free(w);
	derp_client_close(p);
}

/* Keep-alive HTTP: /generate_204 and /derp/probe, then vanish idle, mid-request, with
 * /debug/varz unread, or close cleanly. The TLS server's plain port-80 listener gets
 * every other one (/generate_204 only: the rest is redirected there). */
static void cyc_http(struct round *r, int i, const char *src, WOLFSSL_CTX *ctx)
{
	static const char g204[] = "GET /generate_204 HTTP/1.1\r\nHost: derp.test\r\n\r\n";
	static const char probe[] = "GET /derp/probe HTTP/1.1\r\nHost: derp.test\r\n\r\n";
	static const char varz[] = "GET /debug/varz HTTP/1.1\r\nHost: derp.test\r\n\r\n";
	int p80 = r->v->port80 && i % 2;
	struct xp x;
	char head[2048];

	if (xp_dial(&x, src, p80 ? r->v->port80 : r->v->s->port, r->v->tls && !p80 ? ctx : NULL,
		    OP_MS) != 0) {
		fail_why(r, K_HTTP, "connect failed");
		return;
	}
	int st1 = xp_write(&x, g204, sizeof g204 - 1) == 0 ? xp_response(&x) : -1;
	const char *second = p80 ? g204 : probe;
	int st2 = xp_write(&x, second, strlen(second)) == 0 ? xp_response(&x) : -1;
	if (st1 != 204 || st2 != (p80 ? 204 : 200)) {
		fail_why(r, K_HTTP, "%s: statuses %d, %d", p80 ? "port 80" : "main port", st1, st2);
		xp_close(&x, 1);
		return;
	}
	int rst = 1;
	switch ((i / 2) % 4) {
	case 0: /* idle */
		break;
	case 1: /* half a request */
		xp_write(&x, varz, 20);
		break;
	case 2: /* a big response left unread */
		if (!p80 && (xp_write(&x, varz, sizeof varz - 1) != 0 ||
			     xp_head(&x, head, sizeof head) != 200)) {
			fail_why(r, K_HTTP, "/debug/varz not answered");
			xp_close(&x, 1);
			return;
		}
		break;
	default:
		rst = 0;
	}
	atomic_fetch_add(&r->done[K_HTTP], 1);
	xp_close(&x, rst);
}

/* A mesh watcher logs in, gets the flood (its own PeerPresent ends it), and leaves. */
static void cyc_mesh(struct round *r, int i, const char *src)
{
	struct derp_client *c = dial(r->v, src, 2, r->v->mesh_key);
	struct derp_msg m;
	int64_t end = harness_now_ms() + OP_MS;

	if (!c || derp_client_watch_conns(c) != 0) {
		fail_why(r, K_MESH, "watcher login: %s", derp_client_error());
		goto out;
	}
	for (;;) {
		int64_t left = end - harness_now_ms();
		if (derp_client_recv(c, &m, left > 0 ? (int)left : 0) != 0) {
			fail_why(r, K_MESH, "no own PeerPresent: %s", derp_client_error());
			goto out;
		}
		if (m.kind == DERP_MSG_PEER_PRESENT && memcmp(m.key, derp_client_public_key(c), 32) == 0)
			break;
	}
	atomic_fetch_add(&r->done[K_MESH], 1);
out:
	if (c && i % 2)
		derp_rst(c);
	else
		derp_client_close(c);
}

static void *churn_thread(void *arg)
{
	struct worker_arg *a = arg;
	struct round *r = a->r;

	for (;;) {
		int i = atomic_fetch_add(&r->next, 1);
		if (i >= r->target || harness_now_ms() >= r->deadline)
			break;
		char src[16], src2[16];
		src_addr(src, sizeof src, i);
		src_addr(src2, sizeof src2, i + 3);
		int j = i / (int)SCHED_LEN; /* varies the variant within a kind */
		switch (schedule[i % SCHED_LEN]) {
		case K_PAIR: cyc_pair(r, i, src, src2); break;
		case K_HALF: cyc_half(r, j, src, a->ctx); break;
		case K_HEAD: cyc_head(r, i, src, a->ctx); break;
		case K_UPGRADE: cyc_upgrade(r, src); break;
		case K_INFO: cyc_info(r, j + i, src); break;
		case K_MIDFRAME: cyc_midframe(r, j, src); break;
		case K_UNREAD: cyc_unread(r, src, src2); break;
		case K_WS: cyc_ws(r, j + i, src, src2, a->ctx); break;
		case K_HTTP: cyc_http(r, j + i, src, a->ctx); break;
		case K_MESH: cyc_mesh(r, j, src); break;
		default: break;
		}
	}
	return NULL;
}

/* ---- running rounds ---------------------------------------------------------------- */

/* Run up to target cycles before deadline_ms from now; returns the cycles run. */
static int run_round(const struct srv *v, const char *name, int target, int deadline_ms,
		     int *logins, int *exchanged)
{
	static struct round r;
	pthread_t th[THREADS];
	struct worker_arg a[THREADS];
	int64_t t0 = harness_now_ms();
	char line[512];
	int total = 0, n = 0, failed = 0, conns = 0;

	memset(&r, 0, sizeof r);
	pthread_mutex_init(&r.mu, NULL);
	r.v = v;
	r.target = target;
	r.deadline = t0 + deadline_ms;
	for (int t = 0; t < THREADS; t++) {
		a[t] = (struct worker_arg){ &r, t, NULL };
		if (v->tls) {
			assert_non_null(a[t].ctx = wolfSSL_CTX_new(wolfSSLv23_client_method()));
			wolfSSL_CTX_set_verify(a[t].ctx, WOLFSSL_VERIFY_NONE, NULL);
		}
		assert_int_equal(pthread_create(&th[t], NULL, churn_thread, &a[t]), 0);
	}
	for (int t = 0; t < THREADS; t++) {
		pthread_join(th[t], NULL);
		if (a[t].ctx)
			wolfSSL_CTX_free(a[t].ctx);
	}
	for (int k = 0; k < NKINDS; k++) {
		int d = atomic_load(&r.done[k]), f = atomic_load(&r.fail[k]);
		total += d + f;
		failed += f;
		conns += (d + f) * (conns_per[k] ? conns_per[k] : 1);
		if (d + f)
			n += snprintf(line + n, sizeof line - (size_t)n, " %s %d%s", kind_names[k], d,
				      f ? "!" : "");
	}
	print_message("%s %s: %d cycles (%d connections) in %lld ms:%s\n", v->tls ? "tls" : "plain",
		      name, total, conns, (long long)(harness_now_ms() - t0), line);
	for (int k = 0; k < NKINDS; k++)
		if (atomic_load(&r.fail[k]))
			print_message("  %s: %d failed, first: %s\n", kind_names[k],
				      atomic_load(&r.fail[k]), r.why[k]);
	if (failed) {
		harness_dump_log(v->s);
		fail_msg("%d of %d cycles failed", failed, total);
	}
	*logins += atomic_load(&r.logins);
	*exchanged += atomic_load(&r.exchanged);
	pthread_mutex_destroy(&r.mu);
	return total;
}

/* ---- derpd's figures --------------------------------------------------------------- */

/* GET path on the main port (over TLS for the TLS server); status, body in page. */
static char page[1 << 18];
static int fetch(const struct srv *v, const char *path)
{
	struct xp x;
	char req[256];
	size_t n = 0;

	page[0] = '\0';
	if (xp_dial(&x, "127.0.0.1", v->s->port, v->tls ? v->ctx : NULL, 5000) != 0)
		return -1;
	int rl = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: derp.test\r\n"
			  "Connection: close\r\n\r\n", path);
	if (xp_write(&x, req, (size_t)rl) == 0)
		while (xp_fill(&x) == 0 && n + x.len < sizeof page) { /* to the server's close */
			memcpy(page + n, x.buf, x.len);
			n += x.len;
			x.len = 0;
		}
	page[n] = '\0';
	xp_close(&x, 0);
	int st = -1;
	return sscanf(page, "HTTP/1.%*d %d", &st) == 1 ? st : -1;
}

/* A series without labels from path (NAN if absent). */
static double metric(const struct srv *v, const char *path, const char *name)
{
	char needle[128];

	if (fetch(v, path) != 200)
		return NAN;
	snprintf(needle, sizeof needle, "\n%s ", name);
	const char *p = strstr(page, needle);
	return p ? strtod(p + strlen(needle), NULL) : NAN;
}

struct settle {
	const struct srv *v;
	int max_fds;
	double conns, watchers, http;
	int fds;
};

/* No DERP connection, watcher or HTTP connection left (the scrape itself is one), and
 * the descriptors back under max_fds. */
static int settled(void *arg)
{
	struct settle *st = arg;

	st->conns = metric(st->v, "/debug/varz", "derp_current_connections");
	st->watchers = metric(st->v, "/debug/varz", "derp_watchers");
	st->http = metric(st->v, "/metrics", "derpd_http_connections");
	st->fds = open_fds(st->v->s->pid);
	return st->conns == 0 && st->watchers == 0 && st->http <= 1 &&
	       st->fds >= 0 && st->fds <= st->max_fds;
}

static void settle(const struct srv *v, int max_fds, const char *after, int *fds, long *rss)
{
	struct settle st = { .v = v, .max_fds = max_fds };
	int64_t t0 = harness_now_ms();

	if (!harness_wait(settled, &st, SETTLE_MS)) {
		harness_dump_log(v->s);
		fail_msg("%s: not settled after %d ms: %g connections, %g watchers, %g HTTP "
			 "connections, %d descriptors (at most %d wanted)", after, SETTLE_MS,
			 st.conns, st.watchers, st.http, st.fds, max_fds);
	}
	*fds = st.fds;
	*rss = rss_kb(v->s->pid);
	print_message("%s %s: settled in %lld ms: %d descriptors, RSS %ld kB\n",
		      v->tls ? "tls" : "plain", after, (long long)(harness_now_ms() - t0), *fds,
		      *rss);
}

/* ---- the test ------------------------------------------------------------------------ */

static int scaled(int n)
{
	int k = (int)(n * work);
	return k < 20 ? 20 : k;
}

static void soak(struct srv *v)
{
	int logins = 0, exchanged = 0, f0, f1, f2, fw;
	long r0, r1, r2, rw;

	f0 = open_fds(v->s->pid);
	r0 = rss_kb(v->s->pid);
	print_message("%s start: %d descriptors, RSS %ld kB (work factor %.2f)\n",
		      v->tls ? "tls" : "plain", f0, r0, work);
	run_round(v, "warm-up", scaled(WARM_CYCLES), WARM_MS, &logins, &exchanged);
	settle(v, f0 + FD_SLACK, "warm-up", &fw, &rw);
	int n1 = run_round(v, "round 1", scaled(ROUND_CYCLES), ROUND_MS, &logins, &exchanged);
	settle(v, f0 + FD_SLACK, "round 1", &f1, &r1);
	int n2 = run_round(v, "round 2", n1, ROUND2_MS, &logins, &exchanged);
	settle(v, f0 + FD_SLACK, "round 2", &f2, &r2);
	print_message("%s: %d logins, %d got all their partner's packets; descriptors %d at "
		      "start, %d / %d / %d after warm-up / round 1 / round 2; RSS %ld kB at start, "
		      "%ld after warm-up, %+ld kB in round 1 (%d cycles), %+ld kB in round 2 (%d "
		      "cycles)\n", v->tls ? "tls" : "plain", logins, exchanged, f0, fw, f1, f2, r0, rw,
		      r1 - rw, n1, r2 - r1, n2);
	assert_int_equal(exchanged, logins);
	long slack = sanitizer ? RSS_SLACK_SANITIZER_KB : RSS_SLACK_KB;
	if (r2 - r1 > slack)
		fail_msg("RSS grew %ld kB in round 2 (%d cycles, after %+ld kB in round 1), more "
			 "than %ld kB: a leak", r2 - r1, n2, r1 - rw, slack);

	/* still serving: a fresh pair relays, /derp/probe answers */
	struct derp_client_opts o = harness_opts();
	o.tls = o.tls_insecure = v->tls;
	struct derp_client *a = harness_client(v->s, &o), *b = harness_client(v->s, &o);
	harness_relay_check(a, b);
	derp_client_close(a);
	derp_client_close(b);
	assert_int_equal(fetch(v, "/derp/probe"), 200);
	int fe;
	long re;
	settle(v, f0 + FD_SLACK, "the end", &fe, &re);
}

/* derpd with a mesh key (and TLS: manual mode, self-signed for 127.0.0.1, with the
 * port-80 listener on a free port). */
static struct srv *srv_start(int tls)
{
	struct srv *v = calloc(1, sizeof *v);
	struct rlimit rl;

	assert_non_null(v);
	/* the client side holds thousands of sockets over a round */
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
	rl.rlim_cur = rl.rlim_max;
	setrlimit(RLIMIT_NOFILE, &rl);
	v->tls = tls;
	mu_tmpdir(v->dir, sizeof v->dir);
	mu_write(v->mesh_path, sizeof v->mesh_path, v->dir, "mesh.key", MESH_KEY_HEX "\n");
	mu_key(v->mesh_key, MESH_KEY_HEX);
	snprintf(v->certdir, sizeof v->certdir, "%s/certs", v->dir);
	const char *plain[] = { "-mesh-psk-file", v->mesh_path, NULL };
	const char *tlsargs[] = { "-mesh-psk-file", v->mesh_path, "-certmode", "manual",
				  "-hostname", "127.0.0.1", "-certdir", v->certdir,
				  "-http-port", "0", NULL };
	v->s = harness_start_opts(tls ? tlsargs : plain, tls ? HARNESS_TLS : 0);
	if (tls) {
		/* "http: serving port-80 HTTP on 127.0.0.1:<port>" */
		FILE *f = fopen(v->s->log_path, "r");
		char line[512];
		const char *tag = "serving port-80 HTTP on 127.0.0.1:";
		while (f && fgets(line, sizeof line, f))
			if (strstr(line, tag))
				v->port80 = (uint16_t)atoi(strstr(line, tag) + strlen(tag));
		if (f)
			fclose(f);
		assert_true(v->port80 > 0);
		assert_non_null(v->ctx = wolfSSL_CTX_new(wolfSSLv23_client_method()));
		wolfSSL_CTX_set_verify(v->ctx, WOLFSSL_VERIFY_NONE, NULL);
	}
	return v;
}

static void srv_stop(struct srv *v)
{
	harness_stop(v->s);
	if (v->ctx)
		wolfSSL_CTX_free(v->ctx);
	mu_rmdir(v->dir);
	free(v);
}

static int setup_plain(void **state)
{
	*state = srv_start(0);
	return 0;
}

static int setup_tls(void **state)
{
	*state = srv_start(1);
	return 0;
}

static int teardown(void **state)
{
	srv_stop(*state);
	return 0;
}

static void test_churn_plain(void **state)
{
	soak(*state);
}

static void test_churn_tls(void **state)
{
	soak(*state);
}

int main(void)
{
	const char *bin = getenv("DERPD_BIN"), *w = getenv("DERPD_TEST_WORK");

	if (!bin || !*bin)
		bin = "./derpd";
	int tsan = binary_has(bin, "__tsan_init"), asan = binary_has(bin, "__asan_init");
	sanitizer = tsan || asan;
	work = w && *w ? strtod(w, NULL) : tsan ? 0.25 : asan ? 0.5 : 1;
	if (!(work >= 0.05 && work <= 1))
		work = work > 1 ? 1 : 0.05;
	/* ASan holds freed memory in a 256 MB quarantine, so derpd's RSS would grow with
	 * every round; a small one fills in the warm-up and still catches a late use. */
	const char *ao = getenv("ASAN_OPTIONS");
	if (asan && !(ao && strstr(ao, "quarantine_size_mb"))) {
		char opts[512];
		snprintf(opts, sizeof opts, "%s%squarantine_size_mb=8", ao ? ao : "",
			 ao && *ao ? ":" : "");
		setenv("ASAN_OPTIONS", opts, 1);
	}
	if (sodium_init() < 0)
		return 1;
	wolfSSL_Init();
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_churn_plain, setup_plain, teardown),
		cmocka_unit_test_setup_teardown(test_churn_tls, setup_tls, teardown),
	};
	int rc = cmocka_run_group_tests(tests, NULL, NULL);
	wolfSSL_Cleanup();
	return rc;
}
