/* The regional mesh end to end (spec SERVER.md §11, PROTOCOL.md §9; issue 7): three derpd
 * processes on reserved loopback ports, each started with -mesh-with naming all three (so
 * each also meets itself and must notice), share one region. The tests run in order on the
 * same region and leave it as they found it; the last two kill a node and bring it back.
 *
 * With no clients, node X has two local keys (the other nodes' outbound mesh clients), and
 * knows three keys in the region (those two and its own, which the others announce):
 * derp_clients_local = 2 + its clients, derp_clients_total = 3 + all clients. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test/e2e/harness.h"
#include "test/e2e/test_mesh_util.h"

#include <math.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>

#define T      5000  /* ms: bound on a single expected event */
#define HEAL   16000 /* ms: two 5 s reconnect backoffs and some */
#define MOVE_BOUND_MS 2000 /* a client that moved is reachable from elsewhere within this */

enum { A, B, C, NODES };

struct node {
	struct harness_server *s;
	uint16_t port;
	int resv_fd;
	char key_path[128];
};

static struct region {
	char dir[64];
	char psk[128];
	char with[128];
	struct node n[NODES];
} R;

static void node_start(int i)
{
	char addr[32];

	snprintf(addr, sizeof addr, "127.0.0.1:%u", R.n[i].port);
	/* -a and -c given again override the harness's own (last one wins) */
	const char *extra[] = { "-a", addr, "-c", R.n[i].key_path, "-mesh-psk-file", R.psk,
				"-mesh-with", R.with, NULL };
	R.n[i].s = harness_start(extra);
	assert_int_equal(R.n[i].s->port, R.n[i].port);
}

/* SIGKILL: no goodbye on any connection beyond what the kernel does. */
static void node_kill(int i)
{
	struct harness_server *s = R.n[i].s;
	int st;

	R.n[i].s = NULL;
	kill(s->pid, SIGKILL);
	assert_int_equal(waitpid(s->pid, &st, 0), s->pid);
	assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
	mu_rmdir(s->dir);
	free(s);
}

static double metric(int i, const char *name)
{
	double v = harness_metric(R.n[i].s, name);

	if (isnan(v))
		fail_msg("node %c: no %s in /debug/varz", 'A' + i, name);
	return v;
}

/* Wait until node i shows these gauges (-1 = don't care). */
static void wait_node(int i, int watchers, int local, int total, int timeout_ms)
{
	static const char *const names[] = { "derp_watchers", "derp_clients_local",
					     "derp_clients_total" };
	int want[] = { watchers, local, total };
	int64_t end = harness_now_ms() + timeout_ms;

	for (int k = 0; k < 3; k++) {
		if (want[k] < 0)
			continue;
		int64_t left = end - harness_now_ms();
		double v = harness_wait_metric(R.n[i].s, names[k], want[k], left > 0 ? (int)left : 0);
		if (v != want[k])
			fail_msg("node %c: %s = %g, want %d (after %d ms)", 'A' + i, names[k], v,
				 want[k], timeout_ms);
	}
	double remote = metric(i, "derp_clients_remote");
	if (local >= 0 && total >= 0 && remote != total - local)
		fail_msg("node %c: derp_clients_remote = %g, want %d", 'A' + i, remote,
			 total - local);
}

/* All three nodes up and meshed, with clients[i] clients on node i. */
static void wait_region(const int clients[NODES], int timeout_ms)
{
	int all = clients[A] + clients[B] + clients[C];
	int64_t end = harness_now_ms() + timeout_ms;

	for (int i = 0; i < NODES; i++) {
		int64_t left = end - harness_now_ms();
		wait_node(i, 2, 2 + clients[i], 3 + all, left > 0 ? (int)left : 0);
	}
}

static const int NONE[NODES] = { 0, 0, 0 };
static const int ONE_EACH[NODES] = { 1, 1, 1 };

static int region_setup(void **state)
{
	(void)state;
	mu_tmpdir(R.dir, sizeof R.dir);
	mu_write(R.psk, sizeof R.psk, R.dir, "mesh.key", MESH_KEY_HEX "\n");
	for (int i = 0; i < NODES; i++) {
		R.n[i].port = mu_reserve_port(&R.n[i].resv_fd);
		/* via a local buffer: gcc cannot tell R.dir from R.n[i] (-Wrestrict) */
		char kp[sizeof R.n[i].key_path];
		snprintf(kp, sizeof kp, "%s/node%c.key", R.dir, 'A' + i);
		memcpy(R.n[i].key_path, kp, sizeof kp);
	}
	snprintf(R.with, sizeof R.with, "127.0.0.1:%u,127.0.0.1:%u,127.0.0.1:%u", R.n[A].port,
		 R.n[B].port, R.n[C].port);
	for (int i = 0; i < NODES; i++)
		node_start(i);
	wait_region(NONE, HEAL);
	return 0;
}

static struct derp_client *ka_, *kc_; /* a on A and c on C live across the last two tests */

static int region_teardown(void **state)
{
	(void)state;
	derp_client_close(ka_);
	derp_client_close(kc_);
	for (int i = 0; i < NODES; i++) {
		harness_stop(R.n[i].s);
		close(R.n[i].resv_fd);
	}
	mu_rmdir(R.dir);
	return 0;
}

static const uint8_t *pub(struct derp_client *c)
{
	return derp_client_public_key(c);
}

/* Clients a test opened, closed by test_teardown whatever happened, so that a failed
 * test leaves the region as it found it for the next one. */
static struct derp_client *live[32];

static struct derp_client *track(struct derp_client *c)
{
	for (size_t i = 0; i < sizeof live / sizeof live[0]; i++)
		if (!live[i]) {
			live[i] = c;
			return c;
		}
	fail_msg("too many clients");
	return NULL;
}

static struct derp_client *client_at(int i, const uint8_t *priv)
{
	struct derp_client_opts o = harness_opts();

	o.private_key = priv;
	return track(harness_client(R.n[i].s, &o));
}

/* Close a tracked client now (a test step). */
static void cl_close(struct derp_client *c)
{
	for (size_t i = 0; i < sizeof live / sizeof live[0]; i++)
		if (live[i] == c)
			live[i] = NULL;
	derp_client_close(c);
}

/* Every live node's non-zero drop counters, to explain a lost packet. */
static void dump_drops(void)
{
	static char resp[1 << 20];

	for (int i = 0; i < NODES; i++) {
		if (!R.n[i].s || harness_http(R.n[i].s, "GET /debug/varz HTTP/1.1\r\nHost: x\r\n"
					      "Connection: close\r\n\r\n", resp, sizeof resp) != 200)
			continue;
		for (char *l = strtok((char *)harness_http_body(resp), "\n"); l; l = strtok(NULL, "\n"))
			if (strncmp(l, "derp_packets_dropped{", 21) == 0 && !strstr(l, "} 0"))
				print_message("node %c: %s\n", 'A' + i, l);
	}
}

static int test_teardown(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof live / sizeof live[0]; i++)
		if (live[i]) {
			derp_client_close(live[i]);
			live[i] = NULL;
		}
	return 0;
}

/* ---- packets that say who sent them and in which order ---------------------------- */

static size_t pkt_size(uint32_t seq)
{
	static const size_t sz[] = { 5, 17, 64, 333, 1000, 1400, 4096, 9000, 30000, 65536 };

	return sz[seq % (sizeof sz / sizeof sz[0])];
}

static void pkt_fill(uint8_t *p, uint8_t sender, uint32_t seq)
{
	size_t len = pkt_size(seq);

	p[0] = sender;
	p[1] = (uint8_t)(seq >> 24);
	p[2] = (uint8_t)(seq >> 16);
	p[3] = (uint8_t)(seq >> 8);
	p[4] = (uint8_t)seq;
	for (size_t i = 5; i < len; i++)
		p[i] = (uint8_t)(sender * 31u + seq * 7u + i);
}

static void pkt_send(struct derp_client *from, uint8_t id, struct derp_client *to, uint32_t seq)
{
	static uint8_t buf[65536];

	pkt_fill(buf, id, seq);
	if (derp_client_send(from, pub(to), buf, pkt_size(seq)) != 0)
		fail_msg("send from %u seq %u: %s", id, seq, derp_client_error());
}

/* A received packet is sender's packet seq, byte for byte: 0 if so, else why not. */
static const char *pkt_check(const struct derp_msg *m, uint8_t sender, uint32_t seq)
{
	static uint8_t want[65536];

	if (m->kind != DERP_MSG_PACKET)
		return "not a packet";
	if (m->len < 5 || m->data[0] != sender)
		return "wrong sender byte";
	uint32_t got = (uint32_t)m->data[1] << 24 | (uint32_t)m->data[2] << 16 |
		       (uint32_t)m->data[3] << 8 | m->data[4];
	if (got != seq)
		return got < seq ? "duplicate or reordered" : "out of order (packets lost)";
	pkt_fill(want, sender, seq);
	if (m->len != pkt_size(seq) || memcmp(m->data, want, m->len) != 0)
		return "payload corrupted";
	return NULL;
}

/* c receives packets first .. first+n-1 from each of the nsrc senders (keys srcs, ids
 * ids), in order per sender, interleaved in any way, and nothing else. */
static void recv_streams(struct derp_client *c, const uint8_t *const *srcs, const uint8_t *ids,
			 int nsrc, uint32_t first, uint32_t n)
{
	uint32_t next[8] = { first, first, first, first, first, first, first, first };
	struct derp_msg m;

	for (uint32_t total = 0; total < n * (uint32_t)nsrc; total++) {
		harness_recv(c, &m, T);
		int k = 0;
		while (k < nsrc && (m.kind != DERP_MSG_PACKET || memcmp(m.key, srcs[k], 32) != 0))
			k++;
		if (k == nsrc)
			fail_msg("unexpected message (frame 0x%02x, %u bytes) after %u packets",
				 m.frame_type, m.frame_len, total);
		const char *why = pkt_check(&m, ids[k], next[k]);
		if (why)
			dump_drops();
		if (why)
			fail_msg("from sender %u, packet %u: %s", ids[k], next[k], why);
		next[k]++;
	}
}

/* ---- tests ------------------------------------------------------------------------ */

/* Every node watches the other two, ignored itself, and counts the region. */
static void test_region_formed(void **state)
{
	char self[64];

	(void)state;
	for (int i = 0; i < NODES; i++) {
		snprintf(self, sizeof self, "peer \"127.0.0.1:%u\": detected self-connect",
			 R.n[i].port);
		assert_true(harness_log_contains(R.n[i].s, "DERP mesh key configured"));
		if (!harness_log_contains(R.n[i].s, self))
			fail_msg("node %c did not notice itself in -mesh-with", 'A' + i);
		assert_int_equal(metric(i, "derp_clients_remote"), 1);
	}
}

/* Clients on three nodes exchange packets in both directions, none lost, in order; each
 * packet crosses the mesh once, counted as forwarded out by the sender's node and in by
 * the receiver's. */
static void test_exchange_both_ways(void **state)
{
	enum { N = 40, ROUND = 5 };
	struct derp_client *c[NODES];
	double out0[NODES], in0[NODES], rx0[NODES];

	(void)state;
	for (int i = 0; i < NODES; i++)
		c[i] = client_at(i, NULL);
	wait_region(ONE_EACH, T);
	for (int i = 0; i < NODES; i++) {
		out0[i] = metric(i, "derp_packets_forwarded_out");
		in0[i] = metric(i, "derp_packets_forwarded_in");
		rx0[i] = metric(i, "derp_packets_received");
	}
	/* in rounds, so that no receiver ever has more queued than its queue holds (32) */
	for (uint32_t seq0 = 0; seq0 < N; seq0 += ROUND) {
		for (uint32_t seq = seq0; seq < seq0 + ROUND; seq++)
			for (int i = 0; i < NODES; i++)
				for (int j = 0; j < NODES; j++)
					if (i != j)
						pkt_send(c[i], (uint8_t)i, c[j], seq);
		for (int j = 0; j < NODES; j++) {
			const uint8_t *srcs[2];
			uint8_t ids[2];
			int k = 0;
			for (int i = 0; i < NODES; i++)
				if (i != j) {
					srcs[k] = pub(c[i]);
					ids[k++] = (uint8_t)i;
				}
			recv_streams(c[j], srcs, ids, 2, seq0, ROUND);
		}
	}
	for (int i = 0; i < NODES; i++) {
		assert_int_equal(metric(i, "derp_packets_forwarded_out"), out0[i] + 2 * N);
		assert_int_equal(metric(i, "derp_packets_forwarded_in"), in0[i] + 2 * N);
		assert_int_equal(metric(i, "derp_packets_received"), rx0[i] + 2 * N);
	}
	for (int i = 0; i < NODES; i++)
		cl_close(c[i]);
	wait_region(NONE, T);
}

/* A key connected here and on another node: packets from here go to the local connection,
 * not over the mesh. When the local one leaves, the remote one takes over, and since the
 * key is still in the region nobody is told it is gone. */
static void test_local_wins(void **state)
{
	uint8_t k[32], kp[32];

	(void)state;
	key_generate(k);
	key_public(kp, k);
	struct derp_client *a = client_at(A, NULL);
	struct derp_client *kb = client_at(B, k);
	wait_region((int[]){ 1, 1, 0 }, T);
	struct derp_client *ka = client_at(A, k);
	wait_node(A, 2, 4, 5, T); /* one more local connection, no new key */
	assert_int_equal(derp_client_send(ka, pub(a), "hi", 2), 0);
	harness_expect_packet(a, pub(ka), "hi", 2, T);

	double out0 = metric(A, "derp_packets_forwarded_out");
	assert_int_equal(derp_client_send(a, pub(ka), "local", 5), 0);
	harness_expect_packet(ka, pub(a), "local", 5, T);
	harness_expect_nothing(kb, 200);
	assert_int_equal(metric(A, "derp_packets_forwarded_out"), out0);

	cl_close(ka);
	wait_node(A, 2, 3, 5, T);
	assert_int_equal(derp_client_send(a, pub(kb), "remote", 6), 0);
	harness_expect_packet(kb, pub(a), "remote", 6, T);
	assert_int_equal(metric(A, "derp_packets_forwarded_out"), out0 + 1);
	harness_expect_nothing(a, 200); /* no PeerGone: k is still on B */
	cl_close(kb);
	mu_expect_gone(a, kp, 0x00, T); /* now it is gone from the region */
	cl_close(a);
	wait_region(NONE, T);
}

/* c on C keeps sending to k until k, now on node `on`, gets one; returns the time it took
 * (fails past MOVE_BOUND_MS). c must receive nothing meanwhile. */
static int64_t reach(struct derp_client *c, struct derp_client *k)
{
	int64_t start = harness_now_ms();
	struct derp_msg m;

	for (uint32_t seq = 0;; seq++) {
		if (harness_now_ms() - start > MOVE_BOUND_MS)
			fail_msg("moved client not reachable from node C within %d ms", MOVE_BOUND_MS);
		uint8_t b[8] = { 'm', 'v', 0, 0, (uint8_t)(seq >> 24), (uint8_t)(seq >> 16),
				 (uint8_t)(seq >> 8), (uint8_t)seq };
		assert_int_equal(derp_client_send(c, pub(k), b, sizeof b), 0);
		int r = derp_client_recv(k, &m, 20);
		if (r == 0 && m.kind == DERP_MSG_PACKET) {
			assert_memory_equal(m.key, pub(c), 32);
			break;
		}
		if (r != 0 && r != DERP_CLIENT_TIMEOUT)
			fail_msg("moved client: %s", derp_client_error());
		r = derp_client_recv(c, &m, 0);
		if (r == 0 && m.kind != DERP_MSG_KEEP_ALIVE)
			fail_msg("sender got frame 0x%02x while its peer moved", m.frame_type);
	}
	int64_t took = harness_now_ms() - start;
	/* drain the rest of the probes so later checks start clean */
	while (derp_client_recv(k, &m, 100) == 0)
		;
	return took;
}

/* A client moving from A to B is reachable from C within a bound: first by leaving A then
 * joining B (C tells its sender the peer is gone in between), then by joining A again
 * before leaving B (no PeerGone: the key never left the region). */
static void test_move(void **state)
{
	uint8_t k[32], kp[32];

	(void)state;
	key_generate(k);
	key_public(kp, k);
	struct derp_client *c = client_at(C, NULL);
	struct derp_client *ka = client_at(A, k);
	wait_region((int[]){ 1, 0, 1 }, T);
	assert_int_equal(derp_client_send(ka, pub(c), "from-k", 6), 0);
	harness_expect_packet(c, kp, "from-k", 6, T);
	assert_int_equal(derp_client_send(c, kp, "to-k", 4), 0);
	harness_expect_packet(ka, pub(c), "to-k", 4, T);

	cl_close(ka);
	mu_expect_gone(c, kp, 0x00, T);
	struct derp_client *kb = client_at(B, k);
	int64_t t1 = reach(c, kb);

	struct derp_client *ka2 = client_at(A, k);
	wait_node(C, 2, 3, 5, T); /* the key twice in the region is one key */
	cl_close(kb);
	int64_t t2 = reach(c, ka2);
	harness_expect_nothing(c, 200);
	print_message("moved client reachable after %lld ms (A->B), %lld ms (B->A overlapped)\n",
		      (long long)t1, (long long)t2);
	/* (no PeerGone expected now: upstream tells a receiver only once per source) */
	cl_close(ka2);
	cl_close(c);
	wait_region(NONE, T);
}

/* A node with the wrong mesh key is refused: its WatchConns gets its connection closed,
 * it learns nothing, the region does not count it as a watcher or forward to it; raw
 * clients with a wrong or no key are refused the same way. */
static void test_wrong_key_refused(void **state)
{
	char dir[64], psk[128], with[64], addr[32];
	int resv;
	uint8_t other[32], priv[32];

	(void)state;
	mu_tmpdir(dir, sizeof dir);
	mu_write(psk, sizeof psk, dir, "wrong.key", MESH_KEY_OTHER "\n");
	snprintf(with, sizeof with, "127.0.0.1:%u", R.n[A].port);
	snprintf(addr, sizeof addr, "127.0.0.1:%u", mu_reserve_port(&resv));
	const char *extra[] = { "-a", addr, "-mesh-psk-file", psk, "-mesh-with", with, NULL };
	struct harness_server *d = harness_start(extra);
	char ended[96];
	snprintf(ended, sizeof ended, "peer \"%s\": connection ended", with);
	int64_t end = harness_now_ms() + T;
	while (!harness_log_contains(d, ended) && harness_now_ms() < end)
		poll(NULL, 0, 20);
	if (!harness_log_contains(d, ended))
		fail_msg("node with the wrong key: its mesh connection to A was not closed");
	/* and its log says why (it said only "connection ended; reconnecting") */
	if (!harness_log_contains(d, "after WatchConns: the peer refused our mesh key")) {
		harness_dump_log(d);
		fail_msg("node with the wrong key: no \"refused our mesh key\" in its log");
	}
	wait_region(NONE, T);
	assert_int_equal(harness_metric(d, "derp_clients_remote"), 0);
	assert_int_equal(harness_metric(d, "derp_watchers"), 0);

	struct derp_client *a = client_at(A, NULL);
	struct derp_client_opts o = harness_opts();
	struct derp_client *dc = track(harness_client(d, &o));
	assert_int_equal(derp_client_send(dc, pub(a), "nope", 4), 0);
	harness_ping(dc, T);
	harness_expect_nothing(a, 300);
	cl_close(dc);

	mu_key(other, MESH_KEY_OTHER);
	for (int i = 0; i < 2; i++) {
		o = harness_opts();
		key_generate(priv);
		o.private_key = priv;
		o.mesh_key = i ? other : NULL;
		struct derp_client *w = track(harness_client(R.n[A].s, &o));
		assert_int_equal(derp_client_watch_conns(w), 0);
		harness_expect_closed(w, T);
		cl_close(w);
	}
	harness_ping(a, T);
	cl_close(a);
	harness_stop(d);
	close(resv);
	mu_rmdir(dir);
	wait_region(NONE, T);
}

/* A node whose key file is written in upper-case hex sends the key text as written,
 * trimmed: derpers before key.DERPMesh compare the ClientInfo "meshKey" text with their
 * own file's, so re-encoding it in lower case would be refused by them. The test plays a
 * mesh peer: it accepts derpd's outbound connection, answers the upgrade, and opens the
 * ClientInfo. */
static void test_key_text_as_written(void **state)
{
	const char *upper = "0123456789ABCDEF0123456789abcdef0123456789ABCDEF0123456789ABCDEF";
	char dir[64], psk[128], content[80], with[64], head[4096];
	uint8_t spriv[32], spub[32], hdr[5], *body;
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t sl = sizeof sa;
	uint32_t len;
	uint8_t type;

	(void)state;
	key_generate(spriv);
	key_public(spub, spriv);
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(l >= 0);
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	assert_int_equal(bind(l, (struct sockaddr *)&sa, sizeof sa), 0);
	assert_int_equal(listen(l, 4), 0);
	assert_int_equal(getsockname(l, (struct sockaddr *)&sa, &sl), 0);
	snprintf(with, sizeof with, "127.0.0.1:%u", ntohs(sa.sin_port));
	mu_tmpdir(dir, sizeof dir);
	snprintf(content, sizeof content, " %s\n", upper);
	mu_write(psk, sizeof psk, dir, "mesh.key", content);
	const char *extra[] = { "-mesh-psk-file", psk, "-mesh-with", with, NULL };
	struct harness_server *d = harness_start(extra);

	struct pollfd pfd = { .fd = l, .events = POLLIN };
	assert_int_equal(poll(&pfd, 1, T), 1);
	int fd = accept(l, NULL, NULL);
	assert_true(fd >= 0);
	assert_true(harness_read_head(fd, head, sizeof head, T) > 0);
	assert_non_null(strstr(head, "GET /derp HTTP/1.1\r\n"));
	static const char resp101[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\n"
				      "Connection: Upgrade\r\nDerp-Version: 2\r\n\r\n";
	uint8_t sk[45];
	frame_server_key(sk, spub);
	assert_int_equal(write(fd, resp101, sizeof resp101 - 1), (ssize_t)(sizeof resp101 - 1));
	assert_int_equal(write(fd, sk, sizeof sk), (ssize_t)sizeof sk);
	assert_int_equal(harness_read_exact(fd, hdr, 5, T), 5);
	frame_get_header(hdr, &type, &len);
	assert_int_equal(type, FRAME_CLIENT_INFO);
	assert_true(len > 32 + 24 + 16 && len < 1024);
	body = malloc(len);
	assert_int_equal(harness_read_exact(fd, body, len, T), len);
	assert_memory_equal(body, d->pub, 32); /* the server's own key as its client key */
	char plain[1024] = "";
	assert_int_equal(crypto_box_open_easy((uint8_t *)plain, body + 56, len - 56, body + 32,
					      body, spriv), 0);
	char want[100];
	snprintf(want, sizeof want, "\"meshKey\":\"%s\"", upper);
	if (!strstr(plain, want))
		fail_msg("ClientInfo %s does not carry the key as written (%s)", plain, want);
	free(body);
	close(fd);
	close(l);
	harness_stop(d);
	mu_rmdir(dir);
}

/* ---- burst ---- */

#define BURST_N 400
#define WINDOW  12 /* per sender: two senders stay under the receiver's queue of 32 */

struct sender {
	struct derp_client *c, *to;
	uint8_t id;
	atomic_uint received;  /* by the receiver, in order */
	const char *err;
};

static void *sender_run(void *arg)
{
	struct sender *s = arg;
	static _Thread_local uint8_t buf[65536];

	for (uint32_t seq = 0; seq < BURST_N; seq++) {
		int64_t end = harness_now_ms() + T;
		while (seq - atomic_load(&s->received) >= WINDOW) {
			if (harness_now_ms() > end) {
				s->err = "receiver stopped making progress";
				return NULL;
			}
			poll(NULL, 0, 1);
		}
		pkt_fill(buf, s->id, seq);
		if (derp_client_send(s->c, pub(s->to), buf, pkt_size(seq)) != 0) {
			s->err = "send failed";
			return NULL;
		}
	}
	return NULL;
}

/* Senders on A and C stream mixed-size packets (5 B .. 64 KiB) to b on B through the
 * mesh, each keeping a bounded number in flight so that no queue may drop: every packet
 * arrives, byte-exact, in order per sender. */
static void test_burst_in_order(void **state)
{
	struct sender snd[2];
	pthread_t th[2];
	struct derp_msg m;
	uint32_t next[2] = { 0, 0 };

	(void)state;
	struct derp_client *b = client_at(B, NULL);
	memset(snd, 0, sizeof snd);
	for (int i = 0; i < 2; i++) {
		snd[i].c = client_at(i ? C : A, NULL);
		snd[i].to = b;
		snd[i].id = (uint8_t)i;
		atomic_init(&snd[i].received, 0);
	}
	wait_region(ONE_EACH, T);
	double in0 = metric(B, "derp_packets_forwarded_in");
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&th[i], NULL, sender_run, &snd[i]), 0);
	const char *fail = NULL;
	for (uint32_t got = 0; got < 2 * BURST_N && !fail; got++) {
		if (derp_client_recv(b, &m, T) != 0) {
			fail = "receiver: no packet within 5 s";
			break;
		}
		if (m.kind == DERP_MSG_KEEP_ALIVE) {
			got--;
			continue;
		}
		int k = m.kind == DERP_MSG_PACKET && memcmp(m.key, pub(snd[1].c), 32) == 0;
		if (m.kind != DERP_MSG_PACKET ||
		    (!k && memcmp(m.key, pub(snd[0].c), 32) != 0))
			fail = "receiver: unexpected message";
		else if ((fail = pkt_check(&m, (uint8_t)k, next[k])) == NULL)
			atomic_store(&snd[k].received, ++next[k]);
	}
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	if (fail)
		dump_drops();
	if (fail)
		fail_msg("burst: %s (sender 0 at %u, sender 1 at %u)", fail, next[0], next[1]);
	for (int i = 0; i < 2; i++)
		if (snd[i].err)
			fail_msg("burst sender %d: %s", i, snd[i].err);
	assert_int_equal(metric(B, "derp_packets_forwarded_in"), in0 + 2 * BURST_N);
	harness_expect_nothing(b, 100);
	cl_close(b);
	cl_close(snd[0].c);
	cl_close(snd[1].c);
	wait_region(NONE, T);
}

/* ---- losing a node, and getting it back ---- */

/* SIGKILL node B: A and C drop what they learned from it and tell the clients that had
 * heard from B's client that it is gone; nothing else changes and a <-> c keeps working. */
static void test_kill_node(void **state)
{
	(void)state;
	ka_ = harness_client(R.n[A].s, NULL); /* untracked: test_restart_heals uses them */
	kc_ = harness_client(R.n[C].s, NULL);
	struct derp_client *b = client_at(B, NULL);
	wait_region(ONE_EACH, T);
	uint8_t bk[32];
	memcpy(bk, pub(b), 32);
	harness_relay_check(ka_, b);
	harness_relay_check(kc_, b);
	harness_relay_check(ka_, kc_);

	node_kill(B);
	cl_close(b);
	mu_expect_gone(ka_, bk, 0x00, T);
	mu_expect_gone(kc_, bk, 0x00, T);
	/* A: local = C's mesh client + a; region = those + A (via C) + c */
	wait_node(A, 1, 2, 4, T);
	wait_node(C, 1, 2, 4, T);
	harness_relay_check(ka_, kc_);
	harness_expect_nothing(ka_, 300);
	harness_expect_nothing(kc_, 10);
	const char *unk = "derp_packets_dropped{reason=\"unknown_dest\",kind=\"other\"}";
	double u0 = metric(A, unk);
	assert_int_equal(derp_client_send(ka_, bk, "late", 4), 0);
	harness_ping(ka_, T);
	assert_int_equal(harness_wait_metric(R.n[A].s, unk, u0 + 1, T), u0 + 1);
}

/* Restart B on its port with its key: the region heals within the reconnect backoff and
 * traffic through B resumes. */
static void test_restart_heals(void **state)
{
	(void)state;
	if (!ka_ || R.n[B].s)
		skip(); /* needs test_kill_node's state */
	node_start(B);
	wait_region((int[]){ 1, 0, 1 }, HEAL);
	struct derp_client *b = client_at(B, NULL);
	wait_region(ONE_EACH, T);
	harness_relay_check(ka_, b);
	harness_relay_check(kc_, b);
	harness_relay_check(ka_, kc_);
	cl_close(b);
	derp_client_close(ka_);
	derp_client_close(kc_);
	ka_ = kc_ = NULL;
	wait_region(NONE, T);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_region_formed, test_teardown),
		cmocka_unit_test_teardown(test_exchange_both_ways, test_teardown),
		cmocka_unit_test_teardown(test_local_wins, test_teardown),
		cmocka_unit_test_teardown(test_move, test_teardown),
		cmocka_unit_test_teardown(test_wrong_key_refused, test_teardown),
		cmocka_unit_test_teardown(test_key_text_as_written, test_teardown),
		cmocka_unit_test_teardown(test_burst_in_order, test_teardown),
		cmocka_unit_test_teardown(test_kill_node, test_teardown),
		cmocka_unit_test_teardown(test_restart_heals, test_teardown),
	};
	return cmocka_run_group_tests(tests, region_setup, region_teardown);
}
