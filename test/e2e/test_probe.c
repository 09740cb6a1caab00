/* derpd-probe -once (issue 15) against real derpd nodes: a healthy two-node region served
 * over TLS by a test CA's certificates for "localhost", meshed, with STUN (IPv4 from derpd,
 * IPv6 from a responder on ::1 in this process) -> every probe good, exit 0; the same region
 * with a node that is down -> exit 1, that node named; nodes with an expired certificate, a
 * certificate for another name and one about to expire -> bad with the reason (the last one
 * good with a warning); without the test CA among the roots nothing verifies; the map from
 * a fake tailscaled's LocalAPI (-derp-map local); nodes that never answer, or answer
 * garbage, and hostile maps -> bad, within the probes' deadlines, never a hang. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test/e2e/harness.h"
#include "test/e2e/setec_fake.h"
#include "test/e2e/test_mesh_util.h"
#include "test/e2e/test_tls_util.h"
#include "test/e2e/test_probe_util.h"

#include <pthread.h>
#include <sys/un.h>

#include "stun/stun.h"

#define OUT_MAX (256 << 10)
#define MESHED  16000 /* ms: two nodes find each other (a 5 s reconnect backoff and some) */
#define RUN     60000 /* ms: bound on one -once run */

static struct {
	char dir[64], psk[128], good[128], url[600], caenv[300];
	struct tu_ca ca;
	struct pu_node a, b;
	struct stun_server *stun6;
} R;

static char out[OUT_MAX], err[OUT_MAX];

static void wait_meshed(struct pu_node *n)
{
	double v = harness_wait_metric(&n->p80, "derp_watchers", 1, MESHED);
	if (v != 1) {
		harness_dump_log(n->s);
		fail_msg("node on port %u: derp_watchers %g, want 1", n->port, v);
	}
}

static int region_setup(void **state)
{
	char with[128], nodes[1024] = "";
	time_t now = time(NULL);

	(void)state;
	signal(SIGPIPE, SIG_IGN);
	mu_tmpdir(R.dir, sizeof R.dir);
	mu_write(R.psk, sizeof R.psk, R.dir, "mesh.key", MESH_KEY_HEX "\n");
	tu_ca_make(&R.ca, R.dir);
	snprintf(R.caenv, sizeof R.caenv, "SSL_CERT_FILE=%s", R.ca.pem_path);
	snprintf(R.good, sizeof R.good, "%s/good", R.dir);
	mkdir(R.good, 0700);
	pu_leaf(&R.ca, R.good, PU_NAME, PU_NAME, NULL, now - 3600, now + 90 * 86400);
	R.a.port = mu_reserve_port(&R.a.resv_fd);
	R.b.port = mu_reserve_port(&R.b.resv_fd);
	snprintf(with, sizeof with, PU_NAME ":%u," PU_NAME ":%u", R.a.port, R.b.port);
	pu_node_start(&R.a, R.dir, R.good, PU_NAME, R.psk, with, R.ca.pem_path);
	pu_node_start(&R.b, R.dir, R.good, PU_NAME, R.psk, with, R.ca.pem_path);
	/* node a's STUN over IPv6: the map gives it IPv6 ::1 and the same STUN port */
	char e[200];
	R.stun6 = stun_start("::1", R.a.stun_port, e, sizeof e);
	if (!R.stun6)
		fail_msg("STUN on [::1]:%u: %s", R.a.stun_port, e);
	wait_meshed(&R.a);
	wait_meshed(&R.b);
	pu_map_node(nodes, sizeof nodes, "900a", PU_NAME, R.a.port, R.a.stun_port, "::1");
	pu_map_node(nodes, sizeof nodes, "900b", PU_NAME, R.b.port, R.b.stun_port, NULL);
	pu_map_write(R.url, sizeof R.url, R.dir, "region.json", nodes);
	return 0;
}

static int region_teardown(void **state)
{
	(void)state;
	if (R.stun6)
		stun_stop(R.stun6);
	pu_node_stop(&R.a);
	pu_node_stop(&R.b);
	tu_ca_free(&R.ca);
	mu_rmdir(R.dir);
	return 0;
}

/* derpd-probe -once on map url with more flags (NULL-ended); returns the exit status. */
static int probe_once(const char *url, const char *const *more, const char *const *env,
		      int64_t *took)
{
	const char *args[40] = { "-once", "-spread=false", "-derp-map", url, "-mesh-psk-file",
				 R.psk };
	int n = 6;
	for (int i = 0; more && more[i] && n < 39; i++)
		args[n++] = more[i];
	args[n] = NULL;
	int rc = pu_run(args, env, RUN, out, sizeof out, err, sizeof err, took);
	if (getenv("PU_VERBOSE")) /* the reports, for a reader checking what the tests see */
		print_message("---- derpd-probe exit %d ----\n%s", rc, out);
	if (strstr(err, "Sanitizer") || strstr(err, "runtime error:"))
		fail_msg("derpd-probe under a sanitizer:\n%s", err);
	if (rc < 0)
		fail_msg("derpd-probe did not finish within %d ms\nstdout:\n%s\nstderr:\n%s", RUN,
			 out, err);
	return rc;
}

static void test_healthy_region(void **state)
{
	static const char *const more[] = { "-bw-interval", "10s", "-bw-probe-size-bytes", "300000",
					    NULL };
	const char *env[] = { R.caenv, NULL };
	static const char *const probes[] = {
		"derpmap-probe", "derp/t/900a/tls", "derp/t/900b/tls", "derp/t/900a/udp",
		"derp/t/900a/udp6", "derp/t/900b/udp", "derp/t/900a/900a/mesh",
		"derp/t/900a/900b/mesh", "derp/t/900b/900a/mesh", "derp/t/900b/900b/mesh",
		"derp/t/900a/900a/bw", "derp/t/900a/900b/bw", "derp/t/900b/900a/bw",
		"derp/t/900b/900b/bw",
	};
	int64_t took;

	(void)state;
	int rc = probe_once(R.url, more, env, &took);
	for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++)
		pu_expect(out, probes[i], 1, NULL);
	pu_expect(out, "derp/t/900a/tls", 1, "certificate expires in 89 days");
	pu_expect(out, "derp/t/900a/900b/bw", 1, "300000 bytes in");
	if (rc != 0 || !strstr(out, "all 14 probes good\n"))
		fail_msg("exit %d, report:\n%s", rc, out);
	print_message("healthy region: 14 probes good in %lld ms\n", (long long)took);

	/* the same without the test CA among the roots: nothing over TLS verifies */
	static const char *const none[] = { "-bw-interval", "0", NULL };
	rc = probe_once(R.url, none, NULL, NULL);
	assert_int_equal(rc, 1);
	pu_expect(out, "derp/t/900a/tls", 0, "certificate signed by unknown authority");
	pu_expect(out, "derp/t/900b/900b/mesh", 0, "connecting to 900b (https://127.0.0.1:");
	pu_expect(out, "derp/t/900a/udp", 1, NULL);
	/* --ca-file names the roots instead */
	char ca[300];
	snprintf(ca, sizeof ca, "--ca-file=%s", R.ca.pem_path);
	const char *with_ca[] = { ca, NULL };
	assert_int_equal(probe_once(R.url, with_ca, NULL, NULL), 0);
}

/* -secrets-url: the mesh key from setec (before -mesh-psk-file, which probe_once also
 * passes); setec refusing is an error at start-up that names its status. */
static void test_setec_key(void **state)
{
	char surl[64], cache[300], cflag[320];
	const char *env[] = { R.caenv, NULL };

	(void)state;
	setec_start();
	setec_set(SETEC_OK, MESH_KEY_HEX, 7);
	snprintf(surl, sizeof surl, "http://127.0.0.1:%u", setec.port);
	snprintf(cache, sizeof cache, "%s/setec-cache", R.dir);
	snprintf(cflag, sizeof cflag, "-secrets-cache-dir=%s", cache);
	const char *more[] = { "-secrets-url", surl, cflag, "-bw-interval", "0", NULL };
	assert_int_equal(probe_once(R.url, more, env, NULL), 0);
	if (!strstr(err, "Got mesh key from setec store (version 7)"))
		fail_msg("the key did not come from setec:\n%s", err);
	pthread_mutex_lock(&setec.mu);
	assert_string_equal(setec.last_name, "prod/derp/meshkey");
	pthread_mutex_unlock(&setec.mu);
	unlink(cache); /* no cached copy: setec's answer decides */

	/* Neither -secrets-url nor -mesh-psk-file: the variable (upstream: only with -dev). */
	const char *args[] = { "-once", "-spread=false", "-bw-interval", "0", "-derp-map", R.url,
			       NULL };
	const char *env_key[] = { R.caenv, "TAILSCALE_DERPER_MESH_KEY=" MESH_KEY_HEX, NULL };
	assert_int_equal(pu_run(args, env_key, RUN, out, sizeof out, err, sizeof err, NULL), 0);
	if (!strstr(err, "Set mesh key from TAILSCALE_DERPER_MESH_KEY"))
		fail_msg("the key did not come from the environment:\n%s", err);

	setec_set(SETEC_FORBIDDEN, MESH_KEY_HEX, 7);
	int rc = probe_once(R.url, more, env, NULL);
	assert_int_not_equal(rc, 0);
	if (!strstr(err, "HTTP 403"))
		fail_msg("no clear error for setec's 403:\n%s", err);
	setec_stop();
}

/* A node that is down: its probes fail at once (connection refused), the summary names it
 * and not the healthy nodes. */
static void test_node_down(void **state)
{
	char nodes[2048] = "", url[600], want[200];
	int fd, ufd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof sa;
	const char *env[] = { R.caenv, NULL };

	(void)state;
	uint16_t down = mu_reserve_port(&fd); /* bound, not listening: refused */
	assert_int_equal(bind(ufd, (struct sockaddr *)&sa, sizeof sa), 0);
	assert_int_equal(getsockname(ufd, (struct sockaddr *)&sa, &sl), 0);
	close(ufd); /* a free UDP port: the kernel answers with port unreachable */
	pu_map_node(nodes, sizeof nodes, "900a", PU_NAME, R.a.port, R.a.stun_port, NULL);
	pu_map_node(nodes, sizeof nodes, "900b", PU_NAME, R.b.port, R.b.stun_port, NULL);
	pu_map_node(nodes, sizeof nodes, "900c", PU_NAME, down, ntohs(sa.sin_port), NULL);
	pu_map_write(url, sizeof url, R.dir, "down.json", nodes);
	int rc = probe_once(url, NULL, env, NULL);
	close(fd);
	assert_int_equal(rc, 1);
	snprintf(want, sizeof want, "connecting to 127.0.0.1:%u: Connection refused", down);
	pu_expect(out, "derp/t/900c/tls", 0, want);
	pu_expect(out, "derp/t/900c/udp", 0, "Connection refused");
	pu_expect(out, "derp/t/900c/900c/mesh", 0, "connecting to 900c");
	pu_expect(out, "derp/t/900a/900c/mesh", 0, "connecting to 900c");
	pu_expect(out, "derp/t/900c/900b/mesh", 0, NULL);
	pu_expect(out, "derp/t/900a/900b/mesh", 1, NULL);
	pu_expect(out, "derp/t/900b/tls", 1, NULL);
	if (!strstr(out, "7 of 16 probes bad; failing: 900c\n"))
		fail_msg("the summary does not name 900c alone:\n%s", out);
}

/* Certificates: expired, for another name, and two days from the warning threshold. */
static void test_bad_certificates(void **state)
{
	struct pu_node e = { 0 }, w = { 0 }, s = { 0 };
	char dirs[3][128], nodes[2048] = "", url[600];
	const char *env[] = { R.caenv, NULL };
	time_t now = time(NULL);
	static const char *const sub[3] = { "expired", "wrong", "soon" };

	(void)state;
	for (int i = 0; i < 3; i++) {
		snprintf(dirs[i], sizeof dirs[i], "%s/%s", R.dir, sub[i]);
		mkdir(dirs[i], 0700);
	}
	pu_leaf(&R.ca, dirs[0], PU_NAME, PU_NAME, NULL, now - 30 * 86400, now - 3 * 86400);
	pu_leaf(&R.ca, dirs[1], "127.0.0.1", NULL, "127.0.0.1", now - 3600, now + 90 * 86400);
	pu_leaf(&R.ca, dirs[2], PU_NAME, PU_NAME, NULL, now - 3600, now + 12 * 86400 + 3600);
	pu_node_start(&e, R.dir, dirs[0], PU_NAME, R.psk, NULL, R.ca.pem_path);
	/* serves its certificate for 127.0.0.1 whatever the client asks for */
	pu_node_start(&w, R.dir, dirs[1], "127.0.0.1", R.psk, NULL, R.ca.pem_path);
	pu_node_start(&s, R.dir, dirs[2], PU_NAME, R.psk, NULL, R.ca.pem_path);
	pu_map_node(nodes, sizeof nodes, "900e", PU_NAME, e.port, e.stun_port, NULL);
	pu_map_node(nodes, sizeof nodes, "900w", PU_NAME, w.port, w.stun_port, NULL);
	pu_map_node(nodes, sizeof nodes, "900s", PU_NAME, s.port, s.stun_port, NULL);
	pu_map_write(url, sizeof url, R.dir, "certs.json", nodes);
	static const char *const more[] = { "-mesh-interval", "0", NULL };
	int rc = probe_once(url, more, env, NULL);
	pu_node_stop(&e);
	pu_node_stop(&w);
	pu_node_stop(&s);
	assert_int_equal(rc, 1);
	pu_expect(out, "derp/t/900e/tls", 0, "expired 3 days ago");
	pu_expect(out, "derp/t/900w/tls", 0, "certificate is valid for 127.0.0.1, not localhost");
	pu_expect(out, "derp/t/900s/tls", 1, "warning: certificate expires in 12 days");
	pu_expect(out, "derp/t/900e/udp", 1, NULL);
	if (!strstr(out, "2 of 7 probes bad; failing: 900e, 900w\n"))
		fail_msg("the summary does not name 900e and 900w:\n%s", out);
}

/* ---- -derp-map local: a fake tailscaled on a unix socket ---- */

static struct {
	int lfd, status;
	const char *body;
	char req[4096];
	pthread_t th;
} T;

static void *tailscaled_main(void *arg)
{
	(void)arg;
	int fd = accept4(T.lfd, NULL, NULL, SOCK_CLOEXEC);
	size_t n = 0;
	struct pollfd p = { .fd = fd, .events = POLLIN };

	if (fd < 0)
		return NULL;
	while (n + 1 < sizeof T.req && !strstr(T.req, "\r\n\r\n") && poll(&p, 1, 10000) == 1) {
		ssize_t r = read(fd, T.req + n, sizeof T.req - 1 - n);
		if (r <= 0)
			break;
		n += (size_t)r;
		T.req[n] = '\0';
	}
	char head[256];
	int hl = snprintf(head, sizeof head, "HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
			  "Content-Length: %zu\r\nConnection: close\r\n\r\n", T.status,
			  strlen(T.body));
	if (write(fd, head, (size_t)hl) < 0 || write(fd, T.body, strlen(T.body)) < 0)
		print_message("fake tailscaled: write failed\n");
	close(fd);
	return NULL;
}

static int local_run(const char *sock, int status, const char *body)
{
	char sockarg[300];
	const char *env[] = { R.caenv, NULL };

	T.status = status;
	T.body = body;
	T.req[0] = '\0';
	assert_int_equal(pthread_create(&T.th, NULL, tailscaled_main, NULL), 0);
	snprintf(sockarg, sizeof sockarg, "--socket=%s", sock);
	const char *more[] = { sockarg, "-mesh-interval", "0", NULL };
	int rc = probe_once("local", more, env, NULL);
	pthread_join(T.th, NULL);
	return rc;
}

static void test_local_map(void **state)
{
	struct sockaddr_un un = { .sun_family = AF_UNIX };
	char map[1024], nodes[512] = "";

	(void)state;
	snprintf(un.sun_path, sizeof un.sun_path, "%s/tailscaled.sock", R.dir);
	T.lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_int_equal(bind(T.lfd, (struct sockaddr *)&un, sizeof un), 0);
	assert_int_equal(listen(T.lfd, 4), 0);
	pu_map_node(nodes, sizeof nodes, "900a", PU_NAME, R.a.port, R.a.stun_port, NULL);
	snprintf(map, sizeof map, "{\"Regions\":{\"900\":{\"RegionID\":900,\"RegionCode\":\"t\","
		 "\"Nodes\":[%s]}}}", nodes);

	assert_int_equal(local_run(un.sun_path, 200, map), 0);
	assert_non_null(strstr(T.req, "GET /localapi/v0/derpmap HTTP/1.1\r\n"));
	assert_non_null(strstr(T.req, "\r\nHost: local-tailscaled.sock\r\n"));
	assert_non_null(strstr(T.req, "\r\nTailscale-Cap: "));
	pu_expect(out, "derpmap-probe", 1, "1 region, 1 node");
	pu_expect(out, "derp/t/900a/tls", 1, NULL);
	pu_expect(out, "derp/t/900a/udp", 1, NULL);

	/* tailscaled refusing, or answering nonsense: the map probe is bad, nothing else runs */
	assert_int_equal(local_run(un.sun_path, 403, "{\"error\":\"access denied\"}"), 1);
	pu_expect(out, "derpmap-probe", 0, "HTTP 403: {\"error\":\"access denied\"}");
	assert_int_equal(local_run(un.sun_path, 200, "{\"Regions\":{\"900\":{\"Nodes\":7}}}"), 1);
	pu_expect(out, "derpmap-probe", 0, "region 900: Nodes is not an array");
	assert_non_null(strstr(out, "1 of 1 probes bad; failing: (the DERP map)\n"));
	close(T.lfd);
	/* no tailscaled at all */
	const char *more[] = { "--socket=/nonexistent/tailscaled.sock", NULL };
	assert_int_equal(probe_once("local", more, NULL, NULL), 1);
	pu_expect(out, "derpmap-probe", 0, "fetching the DERP map from tailscaled at "
		  "/nonexistent/tailscaled.sock");
}

/* ---- servers that never answer, or answer garbage ---- */

static int G_stop; /* atomic */
static int G_tcp, G_udp;

/* Every TCP connection gets 4 KiB of noise and a close; every datagram a noisy answer. */
static void *garbage_main(void *arg)
{
	(void)arg;
	uint8_t noise[4096];
	while (!__atomic_load_n(&G_stop, __ATOMIC_RELAXED)) {
		struct pollfd p[2] = { { .fd = G_tcp, .events = POLLIN },
				       { .fd = G_udp, .events = POLLIN } };
		if (poll(p, 2, 50) <= 0)
			continue;
		for (size_t i = 0; i < sizeof noise; i++)
			noise[i] = (uint8_t)(i * 131 + 7);
		if (p[0].revents & POLLIN) {
			int fd = accept4(G_tcp, NULL, NULL, SOCK_CLOEXEC);
			if (fd >= 0) {
				if (write(fd, noise, sizeof noise) < 0)
					(void)0;
				close(fd);
			}
		}
		if (p[1].revents & POLLIN) {
			struct sockaddr_storage from;
			socklen_t fl = sizeof from;
			uint8_t buf[1500];
			ssize_t n = recvfrom(G_udp, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
			if (n > 0)
				sendto(G_udp, noise, 40, 0, (struct sockaddr *)&from, fl);
		}
	}
	return NULL;
}

static uint16_t bound(int fd)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof sa;
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
	return ntohs(sa.sin_port);
}

static void test_unresponsive_and_garbage(void **state)
{
	char nodes[1024] = "", url[600];
	pthread_t th;
	int64_t took;

	(void)state;
	/* silent: TCP connects (the kernel's backlog) but nobody ever reads; UDP swallowed */
	int st = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int su = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	uint16_t sp = bound(st), sup = bound(su);
	assert_int_equal(listen(st, 16), 0);
	G_tcp = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	G_udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	uint16_t gp = bound(G_tcp), gup = bound(G_udp);
	assert_int_equal(listen(G_tcp, 16), 0);
	__atomic_store_n(&G_stop, 0, __ATOMIC_RELAXED);
	assert_int_equal(pthread_create(&th, NULL, garbage_main, NULL), 0);
	pu_map_node(nodes, sizeof nodes, "silent", PU_NAME, sp, sup, NULL);
	pu_map_node(nodes, sizeof nodes, "noise", PU_NAME, gp, gup, NULL);
	pu_map_write(url, sizeof url, R.dir, "hostile.json", nodes);
	/* 2 s intervals: each run gets 1.6 s */
	static const char *const more[] = { "-interval", "2s", "-tls-interval", "2s",
					    "-mesh-interval", "2s", "-stun-interval", "2s", NULL };
	int rc = probe_once(url, more, NULL, &took);
	__atomic_store_n(&G_stop, 1, __ATOMIC_RELAXED);
	pthread_join(th, NULL);
	close(G_tcp), close(G_udp), close(st), close(su);
	assert_int_equal(rc, 1);
	pu_expect(out, "derp/t/silent/tls", 0, "timed out");
	pu_expect(out, "derp/t/silent/udp", 0, "timeout reading from 127.0.0.1:");
	pu_expect(out, "derp/t/silent/silent/mesh", 0, "connecting to silent");
	pu_expect(out, "derp/t/noise/tls", 0, "TLS handshake with 127.0.0.1:");
	pu_expect(out, "derp/t/noise/udp", 0, "parsing STUN response from 127.0.0.1:");
	pu_expect(out, "derp/t/noise/noise/mesh", 0, "connecting to noise");
	if (!strstr(out, "failing: silent, noise\n") && !strstr(out, "failing: noise, silent\n"))
		fail_msg("summary:\n%s", out);
	/* every probe ran in parallel within its 1.6 s; a few seconds for everything else */
	if (took > 8000)
		fail_msg("-once took %lld ms against servers that never answer", (long long)took);
	print_message("silent and noisy nodes: all bad in %lld ms\n", (long long)took);
}

/* Maps nobody should send: each is refused whole, with a reason, and nothing hangs. */
static void test_hostile_maps(void **state)
{
	static const struct {
		const char *json, *why;
	} cases[] = {
		{ "[1,2,3]", "not an object" },
		{ "{\"Regions\":[1]}", "Regions is not an object" },
		{ "{\"Regions\":{\"x\":{}}}", "region key \"x\" is not an integer" },
		{ "{\"Regions\":{\"1\":{\"Nodes\":[{\"Name\":\"a\",\"HostName\":\"h\","
		  "\"DERPPort\":\"443\"}]}}}", "DERPPort is not an integer" },
		{ "{\"Regions\":{\"1\":{\"Nodes\":[{\"Name\":\"a\",\"HostName\":\"h\","
		  "\"STUNPort\":70000}]}}}", "STUNPort 70000 is out of range" },
		{ "{\"Regions\":{\"1\":{\"Nodes\":[{\"Name\":\"a\",\"HostName\":\"h\"},"
		  "{\"Name\":\"a\",\"HostName\":\"h\"}]}}}", "duplicate nodes: a" },
		{ "{\"Regions\":{\"1\":{\"Nodes\":[{\"Name\":\"a\\u0007\",\"HostName\":\"h\"}]}}}",
		  "Name holds a control character" },
		{ "{\"Regions\":{\"1\":{\"Nodes\":[{\"HostName\":\"h\"}]}}}", "has no Name" },
	};
	char path[300], url[400];
	static char big[(5u << 20) + 64];

	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		snprintf(path, sizeof path, "%s/hostile%zu.json", R.dir, i);
		tu_write(path, cases[i].json, strlen(cases[i].json));
		snprintf(url, sizeof url, "file://%s", path);
		assert_int_equal(probe_once(url, NULL, NULL, NULL), 1);
		pu_expect(out, "derpmap-probe", 0, cases[i].why);
	}
	/* deep: 100000 nested arrays */
	memset(big, '[', 100000);
	snprintf(path, sizeof path, "%s/deep.json", R.dir);
	tu_write(path, big, 100000);
	snprintf(url, sizeof url, "file://%s", path);
	assert_int_equal(probe_once(url, NULL, NULL, NULL), 1);
	pu_expect(out, "derpmap-probe", 0, "decoding DERP map JSON: nested more than 32 deep");
	/* huge: 5 MiB */
	memset(big, ' ', sizeof big - 1);
	memcpy(big, "{\"x\":\"", 6);
	memcpy(big + sizeof big - 4, "\"}", 3);
	snprintf(path, sizeof path, "%s/huge.json", R.dir);
	tu_write(path, big, strlen(big));
	snprintf(url, sizeof url, "file://%s", path);
	assert_int_equal(probe_once(url, NULL, NULL, NULL), 1);
	pu_expect(out, "derpmap-probe", 0, "more than 4194304 bytes");
	/* many regions: past the limit */
	size_t n = snprintf(big, sizeof big, "{\"Regions\":{");
	for (int i = 1; i <= 600; i++)
		n += (size_t)snprintf(big + n, sizeof big - n, "%s\"%d\":{}", i > 1 ? "," : "", i);
	snprintf(big + n, sizeof big - n, "}}");
	snprintf(path, sizeof path, "%s/many.json", R.dir);
	tu_write(path, big, strlen(big));
	snprintf(url, sizeof url, "file://%s", path);
	assert_int_equal(probe_once(url, NULL, NULL, NULL), 1);
	pu_expect(out, "derpmap-probe", 0, "600 regions, more than 512");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_healthy_region),
		cmocka_unit_test(test_node_down),
		cmocka_unit_test(test_setec_key),
		cmocka_unit_test(test_bad_certificates),
		cmocka_unit_test(test_local_map),
		cmocka_unit_test(test_unresponsive_and_garbage),
		cmocka_unit_test(test_hostile_maps),
	};
	return cmocka_run_group_tests(tests, region_setup, region_teardown);
}
