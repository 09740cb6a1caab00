/* The regional mesh over https (SERVER.md §11: "a DERP-over-HTTPS client to
 * https://<host>/derp"): three derpd nodes that serve only TLS, each with a certificate
 * from a test CA for 127.0.0.1, its own reserved port, --mesh-ca-file naming the test CA
 * and -mesh-with naming all three (host:port entries are https because the server itself
 * serves TLS). Packets cross the mesh both ways; a killed node comes back and the region
 * heals; peers whose certificate does not verify (another CA, or the system's roots) are
 * never meshed with; an unreadable --mesh-ca-file stops start-up.
 *
 * Metrics come from each node's port-80 listener (-http-port 0), which serves /debug/ to
 * loopback clients: the TLS port itself speaks only TLS. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test/e2e/harness.h"
#include "test/e2e/test_mesh_util.h"
#include "test/e2e/test_tls_util.h"

#include <math.h>
#include <sodium.h>
#include <sys/stat.h>

#define T    5000  /* ms: bound on a single expected event */
#define HEAL 16000 /* ms: two 5 s reconnect backoffs and some */

enum { A, B, C, NODES };

struct node {
	struct harness_server *s;
	struct harness_server p80; /* s with the port-80 listener's port, for metrics */
	uint16_t port;
	int resv_fd;
	char key_path[128];
};

static struct region {
	char dir[64];
	char psk[128];
	char with[128];
	struct tu_ca ca;
	struct node n[NODES];
} R;

/* Port from "http: serving port-80 HTTP on 127.0.0.1:<port>", 0 if not logged. */
static uint16_t port80(const struct harness_server *s)
{
	const char *tag = "serving port-80 HTTP on 127.0.0.1:";
	size_t n;
	char *log = file_read(s->log_path, &n), *p = log ? strstr(log, tag) : NULL;
	long v = p ? strtol(p + strlen(tag), NULL, 10) : 0;

	free(log);
	return v > 0 && v < 65536 ? (uint16_t)v : 0;
}

/* A TLS node: -hostname 127.0.0.1 with the CA's certificate in R.dir, mesh over https.
 * ca_file: the roots it trusts for its peers (NULL: no flag, the system's). */
static struct harness_server *tls_node(uint16_t port, const char *key_path, const char *with,
				       const char *ca_file)
{
	char addr[32];

	snprintf(addr, sizeof addr, "127.0.0.1:%u", port);
	/* -a and -c given again override the harness's own (last one wins) */
	const char *extra[] = { "-a", addr, "-c", key_path, "-certmode", "manual", "-hostname",
				"127.0.0.1", "-certdir", R.dir, "-http-port", "0",
				"-mesh-psk-file", R.psk, "-mesh-with", with,
				ca_file ? "--mesh-ca-file" : NULL, ca_file, NULL };
	return harness_start_opts(extra, HARNESS_TLS);
}

static void node_start(int i)
{
	struct node *n = &R.n[i];

	n->s = tls_node(n->port, n->key_path, R.with, R.ca.pem_path);
	assert_int_equal(n->s->port, n->port);
	n->p80 = *n->s;
	n->p80.port = port80(n->s);
	assert_true(n->p80.port != 0);
}

/* SIGKILL: no goodbye on any connection beyond what the kernel does. */
static void node_kill(int i)
{
	struct harness_server *s = R.n[i].s;
	int st;

	R.n[i].s = NULL;
	kill(s->pid, SIGKILL);
	assert_int_equal(waitpid(s->pid, &st, 0), s->pid);
	mu_rmdir(s->dir);
	free(s);
}

/* Wait until node i shows these gauges. */
static void wait_node(int i, int watchers, int local, int total, int timeout_ms)
{
	static const char *const names[] = { "derp_watchers", "derp_clients_local",
					     "derp_clients_total" };
	int want[] = { watchers, local, total };
	int64_t end = harness_now_ms() + timeout_ms;

	for (int k = 0; k < 3; k++) {
		int64_t left = end - harness_now_ms();
		double v = harness_wait_metric(&R.n[i].p80, names[k], want[k],
					       left > 0 ? (int)left : 0);
		if (v != want[k]) {
			harness_dump_log(R.n[i].s);
			fail_msg("node %c: %s = %g, want %d (after %d ms)", 'A' + i, names[k], v,
				 want[k], timeout_ms);
		}
	}
}

/* All three nodes meshed (each watches the other two), clients[i] clients on node i. */
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
	size_t ll;

	(void)state;
	mu_tmpdir(R.dir, sizeof R.dir);
	mu_write(R.psk, sizeof R.psk, R.dir, "mesh.key", MESH_KEY_HEX "\n");
	tu_ca_make(&R.ca, R.dir);
	free(tu_leaf(&R.ca, R.dir, "127.0.0.1", NULL, "127.0.0.1", NULL, &ll, NULL));
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

static int region_teardown(void **state)
{
	(void)state;
	for (int i = 0; i < NODES; i++) {
		harness_stop(R.n[i].s);
		close(R.n[i].resv_fd);
	}
	tu_ca_free(&R.ca);
	mu_rmdir(R.dir);
	return 0;
}

/* A client of node i that verifies the node's certificate against the test CA. */
static struct derp_client *client_at(int i)
{
	struct derp_client_opts o = harness_opts();

	o.tls = 1;
	o.tls_ca_file = R.ca.pem_path;
	return harness_client(R.n[i].s, &o);
}

/* Every ordered pair of the clients exchanges a packet of its own. */
static void all_pairs(struct derp_client *cl[NODES])
{
	static uint8_t buf[3000];

	for (int f = 0; f < NODES; f++) {
		for (int t = 0; t < NODES; t++) {
			if (f == t)
				continue;
			size_t len = 100 + 1000 * (size_t)t;
			randombytes_buf(buf, len);
			buf[0] = (uint8_t)(f * 3 + t);
			assert_int_equal(derp_client_send(cl[f], derp_client_public_key(cl[t]), buf,
							  len), 0);
			harness_expect_packet(cl[t], derp_client_public_key(cl[f]), buf, len, T);
		}
	}
}

/* The region formed over https (setup); one client per node; packets cross every way.
 * The nodes' ports speak only TLS, so the mesh connections are TLS ones. */
static void test_packets_cross(void **state)
{
	struct derp_client *cl[NODES];

	(void)state;
	for (int i = 0; i < NODES; i++)
		cl[i] = client_at(i);
	wait_region(ONE_EACH, T);
	all_pairs(cl);
	for (int i = 0; i < NODES; i++) {
		/* watchers here: the other two nodes' outbound TLS mesh clients */
		double v = harness_metric(&R.n[i].p80, "derper_tls_request_version{version=\"1.3\"}");
		if (isnan(v) || v < 3)
			fail_msg("node %c: derper_tls_request_version{1.3} = %g", 'A' + i, v);
		derp_client_close(cl[i]);
	}
	wait_region(NONE, T);
}

/* A node killed outright comes back on its port with its key; the others redial it
 * (5 s backoff) over https and packets cross again both ways. */
static void test_node_restart_heals(void **state)
{
	struct derp_client *cl[NODES];

	(void)state;
	cl[A] = client_at(A);
	cl[C] = client_at(C);
	node_kill(B);
	/* A: C's watcher; local C's mesh client and a; known too: A's own mesh client
	 * and c, which C announces. C likewise. */
	wait_node(A, 1, 2, 4, HEAL);
	wait_node(C, 1, 2, 4, HEAL);
	node_start(B);
	cl[B] = client_at(B);
	wait_region(ONE_EACH, HEAL);
	all_pairs(cl);
	for (int i = 0; i < NODES; i++)
		derp_client_close(cl[i]);
	wait_region(NONE, T);
}

static int log_has(void *arg)
{
	return harness_log_contains(arg, "\": mesh connect: TLS");
}

/* Verification is real: a node trusting another CA, and one trusting only the system's
 * roots, fail the TLS handshake with A, log why, and never join the region. */
static void test_untrusted_peer(void **state)
{
	char other[96], with[64], k1[128], k2[128];
	struct tu_ca ca2;

	(void)state;
	snprintf(other, sizeof other, "%s/other", R.dir);
	assert_int_equal(mkdir(other, 0700), 0);
	tu_ca_make(&ca2, other);
	snprintf(with, sizeof with, "127.0.0.1:%u", R.n[A].port);
	snprintf(k1, sizeof k1, "%s/d1.key", R.dir);
	snprintf(k2, sizeof k2, "%s/d2.key", R.dir);
	/* port 0: each takes a fresh port; both dial A at once */
	struct harness_server *d1 = tls_node(0, k1, with, ca2.pem_path);
	struct harness_server *d2 = tls_node(0, k2, with, NULL);
	int ok1 = harness_wait(log_has, d1, T), ok2 = harness_wait(log_has, d2, T);
	if (!ok1 || !ok2) {
		harness_dump_log(ok1 ? d2 : d1);
		fail_msg("no \"mesh connect: TLS ...\" failure logged by the %s node",
			 ok1 ? "system-roots" : "other-CA");
	}
	wait_region(NONE, T); /* nobody joined */
	harness_stop(d1);
	harness_stop(d2);
	tu_ca_free(&ca2);
}

/* Without --mesh-ca-file the roots follow Go's environment, as derper's do:
 * SSL_CERT_FILE naming the test CA's PEM, or SSL_CERT_DIR naming a directory holding it,
 * makes a node trust node A (which then counts it as a third watcher). */
static void test_ssl_cert_env(void **state)
{
	char with[32], k[128], dir[128], copy[192];

	(void)state;
	snprintf(with, sizeof with, "127.0.0.1:%u", R.n[A].port);
	snprintf(k, sizeof k, "%s/env.key", R.dir);
	snprintf(dir, sizeof dir, "%s/certdir", R.dir);
	assert_int_equal(mkdir(dir, 0700), 0);
	size_t n;
	char *pem = file_read(R.ca.pem_path, &n);
	assert_non_null(pem);
	mu_write(copy, sizeof copy, dir, "test-ca.pem", pem);
	free(pem);
	for (int i = 0; i < 2; i++) {
		setenv(i ? "SSL_CERT_DIR" : "SSL_CERT_FILE", i ? dir : R.ca.pem_path, 1);
		struct harness_server *d = tls_node(0, k, with, NULL);
		unsetenv("SSL_CERT_FILE");
		unsetenv("SSL_CERT_DIR");
		double v = harness_wait_metric(&R.n[A].p80, "derp_watchers", 3, T);
		if (v != 3) {
			harness_dump_log(d);
			fail_msg("with %s set the node did not mesh with A (A's derp_watchers = %g)",
				 i ? "SSL_CERT_DIR" : "SSL_CERT_FILE", v);
		}
		harness_stop(d);
		wait_region(NONE, T);
	}
}

/* --mesh-ca-file must be readable when there is a mesh to dial. */
static void test_ca_file_unreadable(void **state)
{
	char out[4096], missing[128];

	(void)state;
	snprintf(missing, sizeof missing, "%s/no-such-ca.pem", R.dir);
	const char *args[] = { "-a", "127.0.0.1:0", "-c", R.n[A].key_path, "-stun=false",
			       "-mesh-psk-file", R.psk, "-mesh-with", "127.0.0.1:1",
			       "--mesh-ca-file", missing, NULL };
	assert_int_equal(mu_run_exit(args, T, out, sizeof out), 1);
	assert_non_null(strstr(out, "--mesh-ca-file"));
	assert_non_null(strstr(out, "no-such-ca.pem"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_packets_cross),
		cmocka_unit_test(test_untrusted_peer),
		cmocka_unit_test(test_ca_file_unreadable),
		cmocka_unit_test(test_ssl_cert_env),
		cmocka_unit_test(test_node_restart_heals),
	};
	return cmocka_run_group_tests(tests, region_setup, region_teardown);
}
