/* A mesh carries what one node carries (issue 13.3): two meshed derpd nodes, clients on A
 * sending to clients on B. A packet forwarded to a mesh peer waits with its sender while
 * the peer link drains, as one delivered locally waits for its receiver's worker, instead
 * of dropping the oldest of the link's queue; a link that is truly stuck is cut by its
 * write timeout, which releases the senders (their packets then dropped, and counted).
 * The tests share one region and run in order; the last one stops node B. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test/e2e/harness.h"
#include "test/e2e/test_mesh_util.h"

#include <math.h>
#include <pthread.h>

#include "server/frame.h"

#define T    5000  /* ms: bound on a single expected event */
#define HEAL 16000 /* ms: two 5 s reconnect backoffs and some */

enum { A, B, NODES };

static struct region {
	char dir[64];
	char psk[128];
	char with[96];
	struct harness_server *s[NODES];
	uint16_t port[NODES];
	int resv_fd[NODES];
	char key_path[NODES][128];
} R;

static void node_start(int i)
{
	char addr[32];

	snprintf(addr, sizeof addr, "127.0.0.1:%u", R.port[i]);
	const char *extra[] = { "-a", addr, "-c", R.key_path[i], "-mesh-psk-file", R.psk,
				"-mesh-with", R.with, "--workers", "2", NULL };
	R.s[i] = harness_start(extra);
	assert_int_equal(R.s[i]->port, R.port[i]);
}

/* Both nodes meshed (each watches the other) with clients[i] clients on node i: local
 * keys are the other node's mesh client and our clients, the region adds our own key. */
static void wait_region(const int clients[NODES], int timeout_ms)
{
	int all = clients[A] + clients[B];
	int64_t end = harness_now_ms() + timeout_ms;

	for (int i = 0; i < NODES; i++) {
		const char *names[] = { "derp_watchers", "derp_clients_local", "derp_clients_total" };
		int want[] = { 1, 1 + clients[i], 2 + all };
		for (int k = 0; k < 3; k++) {
			int64_t left = end - harness_now_ms();
			double v = harness_wait_metric(R.s[i], names[k], want[k], left > 0 ? (int)left : 0);
			if (v != want[k])
				fail_msg("node %c: %s = %g, want %d", 'A' + i, names[k], v, want[k]);
		}
	}
}

static int region_setup(void **state)
{
	(void)state;
	mu_tmpdir(R.dir, sizeof R.dir);
	mu_write(R.psk, sizeof R.psk, R.dir, "mesh.key", MESH_KEY_HEX "\n");
	for (int i = 0; i < NODES; i++) {
		R.port[i] = mu_reserve_port(&R.resv_fd[i]);
		char kp[sizeof R.key_path[i]];
		snprintf(kp, sizeof kp, "%s/node%c.key", R.dir, 'A' + i);
		memcpy(R.key_path[i], kp, sizeof kp);
	}
	snprintf(R.with, sizeof R.with, "127.0.0.1:%u,127.0.0.1:%u", R.port[A], R.port[B]);
	for (int i = 0; i < NODES; i++)
		node_start(i);
	const int none[NODES] = { 0, 0 };
	wait_region(none, HEAL);
	return 0;
}

static int region_teardown(void **state)
{
	(void)state;
	for (int i = 0; i < NODES; i++) {
		if (R.s[i])
			kill(R.s[i]->pid, SIGCONT); /* in case a failed test left it stopped */
		harness_stop(R.s[i]);
		close(R.resv_fd[i]);
	}
	mu_rmdir(R.dir);
	return 0;
}

/* The sum of node i's derp_packets_dropped series (every reason and kind); each non-zero
 * one is printed. */
static double drops(int i, int show)
{
	static char resp[1 << 20];
	double sum = 0;

	if (harness_http(R.s[i], "GET /debug/varz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
			 resp, sizeof resp) != 200)
		fail_msg("node %c: /debug/varz unreadable", 'A' + i);
	for (char *l = strtok((char *)harness_http_body(resp), "\n"); l; l = strtok(NULL, "\n")) {
		if (strncmp(l, "derp_packets_dropped{", 21) != 0)
			continue;
		const char *v = strrchr(l, ' ');
		double d = v ? atof(v + 1) : 0;
		if (d && show)
			print_message("node %c: %s\n", 'A' + i, l);
		sum += d;
	}
	return sum;
}

static double metric(int i, const char *name)
{
	double v = harness_metric(R.s[i], name);

	if (isnan(v))
		fail_msg("node %c: no %s in /debug/varz", 'A' + i, name);
	return v;
}

/* Clients a test opened, closed by test_teardown whatever happened, so that a failed
 * test leaves the region as it found it for the next one. */
static struct derp_client *live[2 * 100 + 8];

static struct derp_client *track(struct derp_client *c)
{
	for (size_t i = 0; i < sizeof live / sizeof live[0]; i++)
		if (!live[i])
			return live[i] = c;
	fail_msg("too many clients");
	return NULL;
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

/* n SendPacket frames of payload bytes to dst, numbered from seq0, in buf. */
static size_t frames_fill(uint8_t *buf, const uint8_t dst[32], int n, uint32_t payload,
			  uint32_t seq0)
{
	size_t flen = FRAME_HEADER_LEN + 32 + payload;

	for (int i = 0; i < n; i++) {
		uint8_t *f = buf + (size_t)i * flen;
		f[0] = FRAME_SEND_PACKET;
		frame_put_be32(f + 1, 32 + payload);
		memcpy(f + FRAME_HEADER_LEN, dst, 32);
		frame_put_be32(f + FRAME_HEADER_LEN + 32, seq0 + (uint32_t)i);
		memset(f + FRAME_HEADER_LEN + 36, (int)(seq0 + (uint32_t)i), payload - 4);
	}
	return (size_t)n * flen;
}

/* ---- bursts ---------------------------------------------------------------------- */

/* The case: 30 bursts of 50 packets of 1,004 bytes, each written at once, from a
 * client on A to one on B. Through one node none is lost; through two none may be. */
#define BURSTS 30
#define BURST 50
#define BURST_PAYLOAD 1004

static void test_bursts_lose_nothing(void **state)
{
	(void)state;
	struct derp_client *a = track(harness_client(R.s[A], NULL));
	struct derp_client *b = track(harness_client(R.s[B], NULL));
	const int one_each[NODES] = { 1, 1 };
	uint8_t *buf = malloc((size_t)BURST * (FRAME_HEADER_LEN + 32 + BURST_PAYLOAD));
	double drops0[NODES], out0 = metric(A, "derp_packets_forwarded_out");
	int lost = 0, reordered = 0;

	assert_non_null(buf);
	wait_region(one_each, T);
	for (int i = 0; i < NODES; i++)
		drops0[i] = drops(i, 0);
	for (int k = 0; k < BURSTS; k++) {
		uint32_t first = (uint32_t)(k * BURST), last = first + BURST - 1, next = first;
		size_t len = frames_fill(buf, derp_client_public_key(b), BURST, BURST_PAYLOAD, first);
		assert_int_equal(derp_client_write_raw(a, buf, len), 0);
		/* Until the burst's last packet, or 2 s of silence if that one was lost. */
		while (next <= last) {
			struct derp_msg m;
			int r = derp_client_recv(b, &m, 2000);
			if (r == DERP_CLIENT_TIMEOUT)
				break;
			assert_int_equal(r, 0);
			if (m.kind == DERP_MSG_KEEP_ALIVE)
				continue;
			assert_int_equal(m.kind, DERP_MSG_PACKET);
			assert_memory_equal(m.key, derp_client_public_key(a), 32);
			assert_int_equal(m.len, BURST_PAYLOAD);
			uint32_t got = frame_get_be32(m.data);
			assert_int_equal(m.data[BURST_PAYLOAD - 1], (uint8_t)got);
			if (got < next || got > last) {
				reordered++;
				continue;
			}
			lost += (int)(got - next);
			next = got + 1;
		}
		lost += (int)(last + 1 - next);
	}
	double dA = drops(A, 1) - drops0[A], dB = drops(B, 1) - drops0[B];
	print_message("%d x %d packets of %d bytes across the mesh: %d lost, %d out of order; "
		      "drops on A %g, on B %g; forwarded out by A %g\n", BURSTS, BURST,
		      BURST_PAYLOAD, lost, reordered, dA, dB,
		      metric(A, "derp_packets_forwarded_out") - out0);
	assert_int_equal(lost, 0);
	assert_int_equal(reordered, 0);
	assert_true(dA == 0);
	assert_true(dB == 0);
	assert_true(metric(A, "derp_packets_forwarded_out") - out0 == BURSTS * BURST);
	free(buf);
}

/* ---- sustained load --------------------------------------------------------------- */

/* Senders on A flood receivers on B as fast as their sockets take it (unlimited offered
 * load) for a while. Whatever A reads it must forward: no drops on A, everything it
 * forwarded arrives at B, and the receivers (which read as fast as they can) get it. */
#define PAIRS 100
#define FLOOD_PAYLOAD 1200
#define FLOOD_FRAMES 32 /* per sender's block */
#define FLOOD_MS 2000

struct flood {
	struct derp_client *snd[PAIRS], *rcv[PAIRS];
	uint8_t *blk[PAIRS];
	size_t len, off[PAIRS];
	int stop;
	uint64_t sent_bytes, got;
};

static void *flood_send(void *arg)
{
	struct flood *f = arg;

	while (!__atomic_load_n(&f->stop, __ATOMIC_RELAXED)) {
		int wrote = 0;
		for (int i = 0; i < PAIRS; i++) {
			ssize_t n = send(derp_client_fd(f->snd[i]), f->blk[i] + f->off[i],
					 f->len - f->off[i], MSG_DONTWAIT | MSG_NOSIGNAL);
			if (n > 0) {
				f->off[i] = (f->off[i] + (size_t)n) % f->len;
				f->sent_bytes += (uint64_t)n;
				wrote = 1;
			}
		}
		if (!wrote)
			usleep(200);
	}
	return NULL;
}

/* Receive until stopped and nothing arrived for a while (each client's own buffer is
 * drained with timeout 0; poll() waits on all of them). */
static void *flood_recv(void *arg)
{
	struct flood *f = arg;
	struct pollfd pfd[PAIRS];
	int64_t quiet_since = harness_now_ms();

	for (int i = 0; i < PAIRS; i++)
		pfd[i] = (struct pollfd){ .fd = derp_client_fd(f->rcv[i]), .events = POLLIN };
	for (;;) {
		int any = 0;
		for (int i = 0; i < PAIRS; i++) {
			struct derp_msg m;
			for (int k = 0; k < 256 && derp_client_recv(f->rcv[i], &m, 0) == 0; k++)
				if (m.kind == DERP_MSG_PACKET) {
					__atomic_add_fetch(&f->got, 1, __ATOMIC_RELAXED);
					any = 1;
				}
		}
		int64_t now = harness_now_ms();
		if (any)
			quiet_since = now;
		else if (__atomic_load_n(&f->stop, __ATOMIC_RELAXED) == 2 && now - quiet_since > 1500)
			return NULL;
		if (!any)
			poll(pfd, PAIRS, 20);
	}
}

static void test_sustained_flood(void **state)
{
	(void)state;
	struct flood *f = calloc(1, sizeof *f);
	const int pairs[NODES] = { PAIRS, PAIRS };
	double drops0[NODES], out0, in0;
	pthread_t ts, tr;

	assert_non_null(f);
	for (int i = 0; i < PAIRS; i++) {
		f->snd[i] = track(harness_client(R.s[A], NULL));
		f->rcv[i] = track(harness_client(R.s[B], NULL));
	}
	wait_region(pairs, 2 * T);
	f->len = (size_t)FLOOD_FRAMES * (FRAME_HEADER_LEN + 32 + FLOOD_PAYLOAD);
	for (int i = 0; i < PAIRS; i++) {
		assert_non_null(f->blk[i] = malloc(f->len));
		frames_fill(f->blk[i], derp_client_public_key(f->rcv[i]), FLOOD_FRAMES,
			    FLOOD_PAYLOAD, 0);
	}
	for (int i = 0; i < NODES; i++)
		drops0[i] = drops(i, 0);
	out0 = metric(A, "derp_packets_forwarded_out");
	in0 = metric(B, "derp_packets_forwarded_in");
	assert_int_equal(pthread_create(&tr, NULL, flood_recv, f), 0);
	assert_int_equal(pthread_create(&ts, NULL, flood_send, f), 0);
	int64_t until = harness_now_ms() + FLOOD_MS;
	while (harness_now_ms() < until)
		poll(NULL, 0, 50);
	__atomic_store_n(&f->stop, 1, __ATOMIC_RELAXED);
	pthread_join(ts, NULL);
	/* What A has read it forwards; wait until B has all of it and the receivers too. */
	__atomic_store_n(&f->stop, 2, __ATOMIC_RELAXED);
	pthread_join(tr, NULL);
	double out = metric(A, "derp_packets_forwarded_out") - out0;
	double in = metric(B, "derp_packets_forwarded_in") - in0;
	double dA = drops(A, 1) - drops0[A], dB = drops(B, 1) - drops0[B];
	uint64_t got = __atomic_load_n(&f->got, __ATOMIC_RELAXED);
	print_message("%d senders on A -> %d receivers on B, %d ms: offered %.1f MB, forwarded "
		      "out %g, in %g, received %llu (%.0f/s); drops on A %g, on B %g\n", PAIRS,
		      PAIRS, FLOOD_MS, (double)f->sent_bytes / 1e6, out, in,
		      (unsigned long long)got, (double)got * 1000 / FLOOD_MS, dA, dB);
	assert_true(out > 0);
	assert_true(dA == 0);
	/* Sender packets still in A's sockets when the clients close are not A's to forward;
	 * everything A did forward crossed, and reached a receiver unless B counted a drop. */
	assert_true(in == out);
	assert_true((double)got + dB == in);
	for (int i = 0; i < PAIRS; i++)
		free(f->blk[i]);
	free(f);
}

/* ---- a stuck peer ----------------------------------------------------------------- */

/* B stops (SIGSTOP): it reads nothing any more. A client on A keeps sending to a client
 * on B; once the link to B is full, the sender is held. The link's write timeout (5 s,
 * as upstream's for forwarded packets) cuts it: the sender is released (it answers a
 * ping), and what was queued or held is counted as dropped. */
static void test_stuck_peer_cut(void **state)
{
	(void)state;
	struct derp_client *a = track(harness_client(R.s[A], NULL));
	struct derp_client *b = track(harness_client(R.s[B], NULL));
	struct derp_client *a2 = track(harness_client(R.s[A], NULL));
	const int clients[NODES] = { 2, 1 };
	enum { N = 64 };
	size_t flen = FRAME_HEADER_LEN + 32 + FLOOD_PAYLOAD;
	uint8_t *buf = malloc(N * flen);

	assert_non_null(buf);
	wait_region(clients, T);
	double to0 = metric(A, "derp_sclient_write_timeouts"), drops0 = drops(A, 0);
	frames_fill(buf, derp_client_public_key(b), N, FLOOD_PAYLOAD, 0);
	assert_int_equal(kill(R.s[B]->pid, SIGSTOP), 0);
	/* Write until A stops reading us (the link, B's socket and ours are full), at most
	 * 64 MB: loopback buffers hold far less. */
	int fd = derp_client_fd(a);
	size_t off = 0, total = 0;
	int64_t t0 = harness_now_ms(), last_write = t0;
	while (total < (64u << 20) && harness_now_ms() - last_write < 1000 &&
	       harness_now_ms() - t0 < 20000) {
		ssize_t n = send(fd, buf + off, N * flen - off, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n > 0) {
			off = (off + (size_t)n) % (N * flen);
			total += (size_t)n;
			last_write = harness_now_ms();
		} else {
			poll(NULL, 0, 5);
		}
	}
	int64_t held_at = harness_now_ms();
	print_message("stuck peer: A took %.1f MB in %lld ms, then stopped reading the sender\n",
		      (double)total / 1e6, (long long)(held_at - t0));
	assert_true(harness_now_ms() - last_write >= 1000); /* it did stop: held, not dropped */
	/* Meanwhile A still serves its other clients at once. */
	harness_relay_check(a2, a2);
	/* Cut within the write timeout (+ a timer tick, + sanitizer slack). */
	double to = harness_wait_metric(R.s[A], "derp_sclient_write_timeouts", to0 + 1, 10000);
	int64_t cut_at = harness_now_ms();
	print_message("stuck peer: link cut %lld ms after A stopped reading the sender\n",
		      (long long)(cut_at - held_at));
	assert_true(to == to0 + 1);
	char logline[96];
	snprintf(logline, sizeof logline, "peer \"127.0.0.1:%u\": connection closed: write timeout",
		 R.port[B]);
	assert_true(harness_log_contains(R.s[A], logline));
	/* Its sender is released: A reads the rest of what it sent (dropped: B's client is
	 * no longer known here) and answers its ping, which follows the frame we were in. */
	derp_client_set_timeout(a, 15000);
	if (off % flen)
		assert_int_equal(derp_client_write_raw(a, buf + off, flen - off % flen), 0);
	harness_ping(a, 15000);
	double dA = drops(A, 1) - drops0;
	print_message("stuck peer: sender answered %lld ms after the cut; %g drops on A\n",
		      (long long)(harness_now_ms() - cut_at), dA);
	assert_true(dA > 0);
	/* B's client goes (it would not read what B still has for it), B runs again and the
	 * region heals (A redials B). */
	for (size_t i = 0; i < sizeof live / sizeof live[0]; i++)
		if (live[i] == b)
			live[i] = NULL;
	derp_client_close(b);
	assert_int_equal(kill(R.s[B]->pid, SIGCONT), 0);
	const int back[NODES] = { 2, 0 };
	wait_region(back, HEAL);
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_bursts_lose_nothing, test_teardown),
		cmocka_unit_test_teardown(test_sustained_flood, test_teardown),
		cmocka_unit_test_teardown(test_stuck_peer_cut, test_teardown),
	};
	return cmocka_run_group_tests(tests, region_setup, region_teardown);
}
