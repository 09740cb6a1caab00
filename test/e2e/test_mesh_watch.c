/* Serving the mesh on one derpd (spec PROTOCOL.md §6.3, §7.9-7.11, §5.2; CONFORMANCE 26-34,
 * 47-49): the mesh key from its file (and what is refused), WatchConns flood and stream,
 * PeerPresent address and flags, ClosePeer, ForwardPacket, derp_watchers. Mesh clients here
 * are raw clients from the client library presenting the key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test/e2e/harness.h"
#include "test/e2e/test_mesh_util.h"

#include <math.h>
#include <sodium.h>
#include <sys/stat.h>

#define T 5000 /* ms: bound on any single expected event */

struct fixture {
	char dir[64];
	char key_path[128];
	struct harness_server *s;
	uint8_t mesh_key[32];
};

/* derpd with the test mesh key in a file given by -mesh-psk-file. */
static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof *f);

	assert_non_null(f);
	mu_tmpdir(f->dir, sizeof f->dir);
	mu_write(f->key_path, sizeof f->key_path, f->dir, "mesh.key", MESH_KEY_HEX "\n");
	mu_key(f->mesh_key, MESH_KEY_HEX);
	const char *extra[] = { "-mesh-psk-file", f->key_path, NULL };
	f->s = harness_start(extra);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	harness_stop(f->s);
	mu_rmdir(f->dir);
	free(f);
	return 0;
}

static struct derp_client *mesh_client(const struct harness_server *s, const uint8_t *mesh_key)
{
	struct derp_client_opts o = harness_opts();

	o.mesh_key = mesh_key;
	return harness_client(s, &o);
}

static const uint8_t *pub(struct derp_client *c)
{
	return derp_client_public_key(c);
}

/* A watcher with mesh_key: 1 if WatchConns gave it the flood (its own PeerPresent comes
 * with flag IsMeshPeer), 0 if the server closed it. */
static int watch_privileged(const struct harness_server *s, const uint8_t *mesh_key)
{
	struct derp_client *w = mesh_client(s, mesh_key);
	struct derp_msg m;
	int priv = 0;

	assert_int_equal(derp_client_watch_conns(w), 0);
	for (;;) {
		int r = derp_client_recv(w, &m, T);
		if (r == DERP_CLIENT_CLOSED)
			break;
		if (r)
			fail_msg("watcher: neither flood nor close: %s", derp_client_error());
		if (m.kind == DERP_MSG_PEER_PRESENT && memcmp(m.key, pub(w), 32) == 0) {
			assert_int_equal(m.flags, 0x02);
			priv = 1;
			break;
		}
	}
	derp_client_close(w);
	return priv;
}

/* CONFORMANCE 26-34 (upstream TestWatch), step by step. */
static void test_watch_flood_and_stream(void **state)
{
	struct fixture *f = *state;
	uint8_t keys[8][32], flags[8];

	/* 26: w1's flood is itself */
	struct derp_client *w1 = mesh_client(f->s, f->mesh_key);
	assert_int_equal(derp_client_watch_conns(w1), 0);
	mu_expect_present(w1, pub(w1), 0x02, T);
	/* 27, 28: regular clients are announced with IsRegular */
	struct derp_client *c1 = harness_client(f->s, NULL);
	mu_expect_present(w1, pub(c1), 0x01, T);
	struct derp_client *c2 = harness_client(f->s, NULL);
	mu_expect_present(w1, pub(c2), 0x01, T);
	/* 30: w2 (29: flags never 0) */
	struct derp_client *w2 = mesh_client(f->s, f->mesh_key);
	mu_expect_present(w1, pub(w2), 0x02, T);
	assert_int_equal(derp_client_watch_conns(w2), 0);
	mu_read_present(w2, keys, flags, 4, T);
	const uint8_t *want2[] = { pub(w1), pub(w2), pub(c1), pub(c2) };
	for (int i = 0; i < 4; i++) {
		int k = mu_find(keys, 4, want2[i]);
		assert_true(k >= 0);
		assert_int_equal(flags[k], i < 2 ? 0x02 : 0x01);
	}
	harness_expect_nothing(w2, 200);
	/* 31 */
	struct derp_client *c3 = harness_client(f->s, NULL);
	mu_expect_present(w1, pub(c3), 0x01, T);
	mu_expect_present(w2, pub(c3), 0x01, T);
	/* 32 */
	uint8_t k2[32];
	memcpy(k2, pub(c2), 32);
	derp_client_close(c2);
	mu_expect_gone(w1, k2, 0x00, T);
	mu_expect_gone(w2, k2, 0x00, T);
	/* 33 */
	struct derp_client *w3 = mesh_client(f->s, f->mesh_key);
	mu_expect_present(w1, pub(w3), 0x02, T);
	mu_expect_present(w2, pub(w3), 0x02, T);
	assert_int_equal(derp_client_watch_conns(w3), 0);
	mu_read_present(w3, keys, flags, 5, T);
	const uint8_t *want3[] = { pub(c1), pub(c3), pub(w1), pub(w2), pub(w3) };
	for (int i = 0; i < 5; i++)
		assert_true(mu_find(keys, 5, want3[i]) >= 0);
	harness_expect_nothing(w3, 200);
	assert_int_equal(harness_wait_metric(f->s, "derp_watchers", 3, T), 3);
	/* 34 */
	uint8_t k1[32];
	memcpy(k1, pub(c1), 32);
	derp_client_close(c1);
	mu_expect_gone(w1, k1, 0x00, T);
	mu_expect_gone(w2, k1, 0x00, T);
	mu_expect_gone(w3, k1, 0x00, T);
	/* a watcher leaving is a client leaving, and one watcher fewer */
	uint8_t kw3[32];
	memcpy(kw3, pub(w3), 32);
	derp_client_close(w3);
	mu_expect_gone(w1, kw3, 0x00, T);
	assert_int_equal(harness_wait_metric(f->s, "derp_watchers", 2, T), 2);
	derp_client_close(c3);
	derp_client_close(w1);
	derp_client_close(w2);
	assert_int_equal(harness_wait_metric(f->s, "derp_watchers", 0, T), 0);
	assert_int_equal(harness_wait_metric(f->s, "derp_clients_local", 0, T), 0);
}

/* CONFORMANCE 129: a watcher with a fixed key (as a peer server's) whose connection breaks
 * and is made again, ten times: each time its flood is exactly itself. */
static void test_watch_reconnect(void **state)
{
	struct fixture *f = *state;
	struct derp_client_opts o = harness_opts();
	uint8_t priv[32], me[32];

	key_generate(priv);
	key_public(me, priv);
	o.private_key = priv;
	o.mesh_key = f->mesh_key;
	for (int i = 0; i < 10; i++) {
		struct derp_client *w = harness_client(f->s, &o);
		assert_int_equal(derp_client_watch_conns(w), 0);
		mu_expect_present(w, me, 0x02, T);
		harness_expect_nothing(w, 50);
		derp_client_close(w);
		assert_int_equal(harness_wait_metric(f->s, "derp_clients_local", 0, T), 0);
	}
	assert_int_equal(harness_metric(f->s, "derp_watchers"), 0);
}

/* PROTOCOL.md §5.2: the client's ip:port (IPv4-mapped) and flags as upstream sets them;
 * a duplicate connection is announced again, and PeerGone only comes for the last one. */
static void test_present_addr_and_flags(void **state)
{
	struct fixture *f = *state;
	struct derp_client *w = mesh_client(f->s, f->mesh_key);
	struct derp_msg m;

	assert_int_equal(derp_client_watch_conns(w), 0);
	mu_expect_present(w, pub(w), 0x02, T);

	struct derp_client *c = harness_client(f->s, NULL);
	struct sockaddr_in sa;
	socklen_t sl = sizeof sa;
	assert_int_equal(getsockname(derp_client_fd(c), (struct sockaddr *)&sa, &sl), 0);
	harness_recv(w, &m, T);
	assert_int_equal(m.kind, DERP_MSG_PEER_PRESENT);
	assert_memory_equal(m.key, pub(c), 32);
	static const uint8_t mapped[16] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff,
					    127, 0, 0, 1 };
	assert_true(m.has_addr);
	assert_memory_equal(m.ip, mapped, 16);
	assert_int_equal(m.port, ntohs(sa.sin_port));
	assert_int_equal(m.frame_len, 51);
	assert_int_equal(m.flags, 0x01);

	struct derp_client_opts o = harness_opts();
	o.is_prober = 1;
	struct derp_client *p = harness_client(f->s, &o);
	mu_expect_present(w, pub(p), 0x04, T);
	o = harness_opts();
	o.ideal_node = "900b";
	struct derp_client *ni = harness_client(f->s, &o);
	mu_expect_present(w, pub(ni), 0x08, T);
	o.is_prober = 1;
	o.mesh_key = f->mesh_key;
	struct derp_client *all = harness_client(f->s, &o);
	mu_expect_present(w, pub(all), 0x0e, T);

	/* a key's second connection is announced again; gone only when both left */
	o = harness_opts();
	uint8_t priv[32];
	key_generate(priv);
	o.private_key = priv;
	struct derp_client *d1 = harness_client(f->s, &o);
	mu_expect_present(w, pub(d1), 0x01, T);
	struct derp_client *d2 = harness_client(f->s, &o);
	mu_expect_present(w, pub(d1), 0x01, T);
	derp_client_close(d1);
	harness_expect_nothing(w, 300);
	derp_client_close(d2);
	uint8_t dk[32];
	key_public(dk, priv);
	mu_expect_gone(w, dk, 0x00, T);

	derp_client_close(all);
	derp_client_close(ni);
	derp_client_close(p);
	derp_client_close(c);
	derp_client_close(w);
}

/* CONFORMANCE 47-49: only the identical key is a mesh peer; a non-mesh client sending
 * WatchConns is closed. */
static void test_mesh_key_match(void **state)
{
	struct fixture *f = *state;
	uint8_t other[32];

	mu_key(other, MESH_KEY_OTHER);
	assert_false(watch_privileged(f->s, NULL));
	assert_false(watch_privileged(f->s, other));
	assert_true(watch_privileged(f->s, f->mesh_key));
	assert_int_equal(harness_wait_metric(f->s, "derp_watchers", 0, T), 0);
}

/* PROTOCOL.md §7.10: ClosePeer from a non-mesh client closes the sender; from a mesh peer
 * it closes every connection of the target, and watchers hear it is gone. */
static void test_close_peer(void **state)
{
	struct fixture *f = *state;
	uint8_t priv[32], tk[32], other[32];
	struct derp_client_opts o = harness_opts();

	key_generate(priv);
	key_public(tk, priv);
	o.private_key = priv;
	struct derp_client *t1 = harness_client(f->s, &o);
	struct derp_client *t2 = harness_client(f->s, &o);
	struct derp_client *bystander = harness_client(f->s, NULL);

	struct derp_client *plain = harness_client(f->s, NULL);
	assert_int_equal(derp_client_close_peer(plain, tk), 0);
	harness_expect_closed(plain, T);
	derp_client_close(plain);
	mu_key(other, MESH_KEY_OTHER);
	struct derp_client *wrong = mesh_client(f->s, other);
	assert_int_equal(derp_client_close_peer(wrong, tk), 0);
	harness_expect_closed(wrong, T);
	derp_client_close(wrong);
	harness_ping(t1, T);
	harness_ping(t2, T);

	struct derp_client *w = mesh_client(f->s, f->mesh_key);
	assert_int_equal(derp_client_watch_conns(w), 0);
	/* the flood names each key once, with its active (newest) connection's address */
	struct sockaddr_in sa;
	socklen_t sl = sizeof sa;
	assert_int_equal(getsockname(derp_client_fd(t2), (struct sockaddr *)&sa, &sl), 0);
	int seen_w = 0, seen_t = 0, seen_b = 0;
	uint16_t tport = 0;
	for (int i = 0; i < 3; i++) {
		struct derp_msg m;
		harness_recv(w, &m, T);
		assert_int_equal(m.kind, DERP_MSG_PEER_PRESENT);
		if (memcmp(m.key, tk, 32) == 0 && seen_t++ == 0)
			tport = m.port;
		seen_w += memcmp(m.key, pub(w), 32) == 0;
		seen_b += memcmp(m.key, pub(bystander), 32) == 0;
	}
	if (seen_w != 1 || seen_t != 1 || seen_b != 1)
		fail_msg("flood: watcher %d, duplicated key %d, bystander %d times (want 1 each)",
			 seen_w, seen_t, seen_b);
	assert_int_equal(tport, ntohs(sa.sin_port));
	harness_expect_nothing(w, 200);
	uint8_t unknown[32];
	key_generate(unknown);
	assert_int_equal(derp_client_close_peer(w, unknown), 0); /* only logged */
	assert_int_equal(derp_client_close_peer(w, tk), 0);
	harness_expect_closed(t1, T);
	harness_expect_closed(t2, T);
	mu_expect_gone(w, tk, 0x00, T);
	harness_ping(w, T);
	harness_ping(bystander, T);
	derp_client_close(t1);
	derp_client_close(t2);
	derp_client_close(bystander);
	derp_client_close(w);
}

/* PROTOCOL.md §7.11: ForwardPacket needs the mesh key; it is delivered locally with the
 * source the peer named, counted as forwarded in and not as received. */
static void test_forward_packet(void **state)
{
	struct fixture *f = *state;
	struct derp_client *dst = harness_client(f->s, NULL);
	uint8_t src[32], pkt[300], other[32];

	key_generate(src);
	randombytes_buf(pkt, sizeof pkt);
	struct derp_client *plain = harness_client(f->s, NULL);
	assert_int_equal(derp_client_forward(plain, src, pub(dst), pkt, sizeof pkt), 0);
	harness_expect_closed(plain, T);
	derp_client_close(plain);
	mu_key(other, MESH_KEY_OTHER);
	struct derp_client *wrong = mesh_client(f->s, other);
	assert_int_equal(derp_client_forward(wrong, src, pub(dst), pkt, sizeof pkt), 0);
	harness_expect_closed(wrong, T);
	derp_client_close(wrong);
	harness_expect_nothing(dst, 100);

	double in0 = harness_metric(f->s, "derp_packets_forwarded_in");
	double rx0 = harness_metric(f->s, "derp_packets_received");
	const char *unk = "derp_packets_dropped{reason=\"unknown_dest_on_fwd\",kind=\"other\"}";
	double unk0 = harness_metric(f->s, unk);
	assert_false(isnan(in0) || isnan(rx0) || isnan(unk0));
	struct derp_client *m = mesh_client(f->s, f->mesh_key);
	assert_int_equal(derp_client_forward(m, src, pub(dst), pkt, sizeof pkt), 0);
	harness_expect_packet(dst, src, pkt, sizeof pkt, T);
	uint8_t nobody[32];
	key_generate(nobody);
	assert_int_equal(derp_client_forward(m, src, nobody, pkt, sizeof pkt), 0);
	harness_ping(m, T);
	assert_int_equal(harness_wait_metric(f->s, "derp_packets_forwarded_in", in0 + 2, T),
			 in0 + 2);
	assert_int_equal(harness_wait_metric(f->s, unk, unk0 + 1, T), unk0 + 1);
	assert_int_equal(harness_metric(f->s, "derp_packets_received"), rx0);
	/* a disco packet for a key not here: the mesh peer is told NotHere */
	uint8_t disco[80] = { 0x54, 0x53, 0xf0, 0x9f, 0x92, 0xac };
	assert_int_equal(derp_client_forward(m, src, nobody, disco, sizeof disco), 0);
	mu_expect_gone(m, nobody, 0x01, T);
	/* the destination can answer the forwarded source only through the region: it is
	 * unknown here, so the reply is dropped, not sent back to the mesh peer */
	assert_int_equal(derp_client_send(dst, src, "x", 1), 0);
	harness_expect_nothing(m, 200);
	derp_client_close(m);
	derp_client_close(dst);
}

/* ---- the outbound watch loop, against one peer -------------------------------------- */

/* host/dialhost: the TCP connection goes to dialhost (the name does not even resolve),
 * and the peer counts this server as a watcher. */
static void test_dialhost(void **state)
{
	struct fixture *f = *state;
	char with[96];

	snprintf(with, sizeof with, "peer.invalid:%u/127.0.0.1", f->s->port);
	const char *extra[] = { "-mesh-psk-file", f->key_path, "-mesh-with", with, NULL };
	struct harness_server *s2 = harness_start(extra);
	assert_int_equal(harness_wait_metric(f->s, "derp_watchers", 1, T), 1);
	/* s2 knows f's clients, f knows s2's outbound client (and s2 itself, announced by f) */
	struct derp_client *c = harness_client(f->s, NULL);
	assert_int_equal(harness_wait_metric(s2, "derp_clients_remote", 2, T), 2);
	struct derp_client *c2 = harness_client(s2, NULL);
	uint8_t pkt[40];
	randombytes_buf(pkt, sizeof pkt);
	assert_int_equal(derp_client_send(c2, pub(c), pkt, sizeof pkt), 0);
	harness_expect_packet(c, pub(c2), pkt, sizeof pkt, T);
	assert_int_equal(harness_metric(s2, "derp_packets_forwarded_out"), 1);
	assert_int_equal(harness_metric(f->s, "derp_packets_forwarded_in"), 1);
	derp_client_close(c2);
	derp_client_close(c);
	harness_stop(s2);
	assert_int_equal(harness_wait_metric(f->s, "derp_watchers", 0, T), 0);
}

/* CONFORMANCE 130: a peer that cannot be dialled is logged with the dial error and tried
 * again after 5 s. */
static void test_connect_error_retry(void **state)
{
	struct fixture *f = *state;
	char with[64], line[128];
	int resv;

	snprintf(with, sizeof with, "127.0.0.1:%u", mu_reserve_port(&resv)); /* not listening */
	snprintf(line, sizeof line, "peer \"%s\": mesh connect: dial 127.0.0.1:", with);
	const char *extra[] = { "-mesh-psk-file", f->key_path, "-mesh-with", with, NULL };
	struct harness_server *s = harness_start(extra);
	int64_t start = harness_now_ms(), first = -1;
	while (harness_now_ms() - start < 8000) {
		char *log = NULL;
		size_t n = 0;
		FILE *lf = fopen(s->log_path, "r");
		if (lf) {
			getdelim(&log, &n, 0, lf);
			fclose(lf);
		}
		char *p = log ? strstr(log, line) : NULL;
		if (p && first < 0)
			first = harness_now_ms();
		int twice = p && strstr(p + 1, line);
		if (p && !strstr(p, "Connection refused"))
			fail_msg("the dial error is not in the log line");
		free(log);
		if (twice)
			break;
		poll(NULL, 0, 50);
	}
	int64_t took = harness_now_ms() - start;
	if (first < 0)
		fail_msg("no \"%s\" line in the log", line);
	if (took < 4000 || took >= 8000)
		fail_msg("second attempt after %lld ms, want about 5000", (long long)took);
	harness_stop(s);
	close(resv);
}

/* A peer that accepts TCP but never answers keeps the login waiting; SIGTERM must not. */
static void test_stop_during_login(void **state)
{
	struct fixture *f = *state;
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t sl = sizeof sa;
	char with[64];
	int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	assert_int_equal(bind(ls, (struct sockaddr *)&sa, sizeof sa), 0);
	assert_int_equal(listen(ls, 4), 0);
	assert_int_equal(getsockname(ls, (struct sockaddr *)&sa, &sl), 0);
	snprintf(with, sizeof with, "127.0.0.1:%u", ntohs(sa.sin_port));
	const char *extra[] = { "-mesh-psk-file", f->key_path, "-mesh-with", with, NULL };
	struct harness_server *s = harness_start(extra);
	struct pollfd p = { .fd = ls, .events = POLLIN };
	assert_int_equal(poll(&p, 1, T), 1);
	int peer = accept(ls, NULL, NULL);
	assert_true(peer >= 0);
	char req[512];
	assert_true(harness_read_head(peer, req, sizeof req, T) > 0); /* the upgrade request */
	assert_non_null(strstr(req, "GET /derp HTTP/1.1\r\n"));
	assert_non_null(strcasestr(req, "\r\nHost: 127.0.0.1:"));
	assert_non_null(strcasestr(req, "\r\nUpgrade: DERP\r\n"));
	int64_t t0 = harness_now_ms();
	harness_stop(s);
	int64_t took = harness_now_ms() - t0;
	if (took > 4000)
		fail_msg("derpd took %lld ms to stop while a mesh login was waiting", (long long)took);
	close(peer);
	close(ls);
}

/* ---- the key file, as derpd starts ------------------------------------------------ */

static void start_args(const char *dir, const char **argv, int *argc)
{
	static char key[160];

	snprintf(key, sizeof key, "%s/derper.key", dir);
	argv[(*argc)++] = "-a";
	argv[(*argc)++] = "127.0.0.1:0";
	argv[(*argc)++] = "-c";
	argv[(*argc)++] = key;
	argv[(*argc)++] = "-stun=false";
}

/* derpd with these extra arguments must exit with status want, saying msg. */
static void expect_exit(const char *dir, const char *const *extra, int want, const char *msg)
{
	const char *argv[24];
	int argc = 0;
	static char out[16384];

	start_args(dir, argv, &argc);
	for (int i = 0; extra[i]; i++)
		argv[argc++] = extra[i];
	argv[argc] = NULL;
	int rc = mu_run_exit(argv, 10000, out, sizeof out);
	if (rc != want || !strstr(out, msg))
		fail_msg("derpd %s...: exit %d (want %d), output lacks \"%s\":\n%s", extra[0], rc,
			 want, msg, out);
}

/* SERVER.md §11: the file's white space is trimmed and hex of either case is the same key;
 * an empty file or the all-zero key means no key (nobody is a mesh peer). */
static void test_key_file_forms(void **state)
{
	char dir[64], path[128];
	uint8_t key[32];

	(void)state;
	mu_tmpdir(dir, sizeof dir);
	mu_key(key, MESH_KEY_HEX);
	static const struct { const char *content, *log; int priv; } cases[] = {
		{ " \t" "0123456789ABCDEF0123456789abcdef0123456789ABCDEF0123456789abcdef" "\r\n\n",
		  "DERP mesh key configured", 1 },
		{ "\xc2\xa0" MESH_KEY_HEX "\xe3\x80\x80", "DERP mesh key configured", 1 },
		{ "", "No mesh key configured", 0 },
		{ "0000000000000000000000000000000000000000000000000000000000000000\n",
		  "No mesh key configured", 0 },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		mu_write(path, sizeof path, dir, "mesh.key", cases[i].content);
		const char *extra[] = { "-mesh-psk-file", path, NULL };
		struct harness_server *s = harness_start(extra);
		if (!harness_log_contains(s, cases[i].log))
			fail_msg("case %zu: log lacks \"%s\"", i, cases[i].log);
		assert_int_equal(watch_privileged(s, key), cases[i].priv);
		uint8_t zero[32] = { 0 };
		assert_false(watch_privileged(s, zero));
		harness_stop(s);
	}
	mu_rmdir(dir);
}

/* SERVER.md §2, §11: a bad or unreadable key file is fatal (exit 1, as log.Fatal). */
static void test_key_file_invalid(void **state)
{
	char dir[64], path[128], missing[128];

	(void)state;
	mu_tmpdir(dir, sizeof dir);
	static const char *const bad[] = {
		"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde",   /* 63 */
		"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0", /* 65 */
		"g123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		"0123456789abcdef0123456789abcdef 123456789abcdef0123456789abcdef",
		"   \n",
		"\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		mu_write(path, sizeof path, dir, "mesh.key", bad[i]);
		const char *extra[] = { "-mesh-psk-file", path, NULL };
		expect_exit(dir, extra, 1, "invalid mesh key");
	}
	snprintf(missing, sizeof missing, "%s/nonexistent.key", dir);
	const char *extra[] = { "-mesh-psk-file", missing, NULL };
	expect_exit(dir, extra, 1, missing);
	mu_rmdir(dir);
}

/* SERVER.md §2: with no -mesh-psk-file, $HOME/keys/derp-mesh.key is used when present. */
static void test_key_file_default_path(void **state)
{
	char dir[64], keys[128], path[160];
	struct stat st;
	uint8_t key[32];

	(void)state;
	if (stat("/home/derp/keys/derp-mesh.key", &st) == 0)
		skip(); /* that one would win */
	mu_tmpdir(dir, sizeof dir);
	snprintf(keys, sizeof keys, "%s/keys", dir);
	assert_int_equal(mkdir(keys, 0700), 0);
	mu_write(path, sizeof path, keys, "derp-mesh.key", MESH_KEY_HEX "\n");
	char *old = getenv("HOME") ? strdup(getenv("HOME")) : NULL;
	setenv("HOME", dir, 1);
	struct harness_server *s = harness_start(NULL);
	if (old)
		setenv("HOME", old, 1);
	else
		unsetenv("HOME");
	free(old);
	mu_key(key, MESH_KEY_HEX);
	assert_true(harness_log_contains(s, "DERP mesh key configured"));
	assert_true(watch_privileged(s, key));
	harness_stop(s);
	mu_rmdir(dir);
}

/* SERVER.md §2, §11: -mesh-with needs a key; an entry has at most one '/'; https entries
 * (no port or port 443) start their watch loop (test_mesh_tls.c meshes over https); this
 * server's own -hostname is skipped (test_secrets.c covers -secrets-url). */
static void test_mesh_with_config(void **state)
{
	char dir[64], path[128];

	(void)state;
	mu_tmpdir(dir, sizeof dir);
	mu_write(path, sizeof path, dir, "mesh.key", MESH_KEY_HEX);
	const char *nokey[] = { "-mesh-with", "127.0.0.1:1", NULL };
	expect_exit(dir, nokey, 1, "--mesh-with requires --mesh-psk-file or -secrets-url");
	const char *slashes[] = { "-mesh-psk-file", path, "-mesh-with", "a:1/b/c", NULL };
	expect_exit(dir, slashes, 1, "too many components");
	const char *port[] = { "-mesh-psk-file", path, "-mesh-with", "127.0.0.1:99999", NULL };
	expect_exit(dir, port, 1, "invalid host");

	const char *self[] = { "-mesh-psk-file", path, "-hostname", "derp1.example.com",
			       "-mesh-with", "derp1.example.com,127.0.0.1:443", NULL };
	struct harness_server *s = harness_start(self);
	assert_true(harness_log_contains(s, "peer \"derp1.example.com\": this server's own"));
	int64_t end = harness_now_ms() + 5000;
	while (!harness_log_contains(s, "peer \"127.0.0.1:443\": mesh connect: ") &&
	       harness_now_ms() < end)
		poll(NULL, 0, 10);
	assert_true(harness_log_contains(s, "peer \"127.0.0.1:443\": mesh connect: "));
	harness_stop(s);
	mu_rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_watch_flood_and_stream, setup, teardown),
		cmocka_unit_test_setup_teardown(test_watch_reconnect, setup, teardown),
		cmocka_unit_test_setup_teardown(test_present_addr_and_flags, setup, teardown),
		cmocka_unit_test_setup_teardown(test_mesh_key_match, setup, teardown),
		cmocka_unit_test_setup_teardown(test_close_peer, setup, teardown),
		cmocka_unit_test_setup_teardown(test_forward_packet, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dialhost, setup, teardown),
		cmocka_unit_test_setup_teardown(test_connect_error_retry, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stop_during_login, setup, teardown),
		cmocka_unit_test(test_key_file_forms),
		cmocka_unit_test(test_key_file_invalid),
		cmocka_unit_test(test_key_file_default_path),
		cmocka_unit_test(test_mesh_with_config),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
