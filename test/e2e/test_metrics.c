/* /metrics' SLO families against the real derpd (issue 14.4): derpd_build_info's labels;
 * the queue delay and TCP RTT histograms grow as packets are relayed, with cumulative,
 * monotone buckets and +Inf equal to the count; the certificate expiry gauge equals the
 * served certificate's notAfter (and follows a SIGHUP reload); mesh peer up goes 1 when
 * the peer is up and 0 when it is killed, a self-connect entry is not listed; and a live
 * scrape with every family populated (TLS, mesh) is clean for `promtool check metrics`. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "test/e2e/harness.h"
#include "test/e2e/test_mesh_util.h"
#include "test/e2e/test_tls_util.h"

#define SCRAPE_MAX (1 << 18)

/* GET /metrics over plain HTTP (tls 0) or TLS; the body, or fail. */
static const char *scrape(const struct harness_server *s, int tls)
{
	static char resp[SCRAPE_MAX];
	const char *req = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
	int st = tls ? tu_https(s->port, req, resp, sizeof resp) : harness_http(s, req, resp, sizeof resp);
	if (st != 200)
		fail_msg("GET /metrics: status %d", st);
	return harness_http_body(resp);
}

/* The value of the sample line `series value` exactly as derpd prints it; NAN if absent. */
static double sample(const char *text, const char *series)
{
	char needle[512];
	snprintf(needle, sizeof needle, "\n%s ", series);
	const char *p = strstr(text, needle);
	return p ? strtod(p + strlen(needle), NULL) : NAN;
}

static void expect_type(const char *text, const char *family, const char *type)
{
	char want[256];
	snprintf(want, sizeof want, "\n# TYPE %s %s\n", family, type);
	if (!strstr(text, want))
		fail_msg("no \"# TYPE %s %s\" in /metrics", family, type);
}

/* A histogram family: buckets in increasing le, cumulative (never decreasing), +Inf last
 * and equal to _count, _sum >= 0. Returns the count. */
static double check_histogram(const char *text, const char *family)
{
	char pre[160];
	double last_le = -1, last = 0, inf = NAN;
	int nb = 0;

	expect_type(text, family, "histogram");
	snprintf(pre, sizeof pre, "\n%s_bucket{le=\"", family);
	for (const char *p = text; (p = strstr(p, pre)) != NULL; p++) {
		const char *le = p + strlen(pre);
		const char *close = strstr(le, "\"} ");
		assert_non_null(close);
		double v = strtod(close + 3, NULL);
		if (v < last)
			fail_msg("%s: bucket le=%.*s is %g, below the one before (%g)", family,
				 (int)(close - le), le, v, last);
		last = v;
		nb++;
		if (strncmp(le, "+Inf\"", 5) == 0) {
			inf = v;
			continue;
		}
		if (!isnan(inf))
			fail_msg("%s: a bucket after +Inf", family);
		double b = strtod(le, NULL);
		if (b <= last_le)
			fail_msg("%s: le %g after %g", family, b, last_le);
		last_le = b;
	}
	assert_true(nb >= 5);
	char name[160];
	snprintf(name, sizeof name, "%s_count", family);
	double count = sample(text, name);
	snprintf(name, sizeof name, "%s_sum", family);
	double sum = sample(text, name);
	if (isnan(inf) || inf != count)
		fail_msg("%s: +Inf %g, count %g", family, inf, count);
	assert_true(sum >= 0);
	return count;
}

/* ---- build info and histograms (plain server) ---- */

struct grown { const struct harness_server *s; const char *series; double want; };

static int grown(void *arg)
{
	struct grown *g = arg;
	return sample(scrape(g->s, 0), g->series) >= g->want; /* NAN compares false */
}

static void test_build_info_and_histograms(void **state)
{
	struct harness_server *s = *state;
	const char *t = scrape(s, 0);

	expect_type(t, "derpd_build_info", "gauge");
	const char *bi = strstr(t, "\nderpd_build_info{version=\"");
	assert_non_null(bi);
	char rev[128], lib[128], aes[16];
	assert_int_equal(sscanf(bi, "\nderpd_build_info{version=\"%*[^\"]\",revision=\"%127[^\"]\","
				"tls_library=\"%127[^\"]\",aesni=\"%15[^\"]\"} 1",
				rev, lib, aes), 3);
	assert_true(strlen(rev) > 0);
	assert_memory_equal(lib, "wolfSSL ", 8);
	assert_true(strcmp(aes, "true") == 0 || strcmp(aes, "false") == 0);

	double q0 = check_histogram(t, "derpd_queue_delay_seconds");
	double r0 = check_histogram(t, "derpd_tcp_rtt_seconds");

	struct derp_client_opts o = harness_opts();
	struct derp_client *a = harness_client(s, &o), *b = harness_client(s, &o);
	for (int i = 0; i < 5; i++)
		harness_relay_check(a, b); /* 10 packets through the receivers' queues */
	/* every packet written was counted when it left its queue; each login sampled RTT */
	struct grown gq = { s, "derpd_queue_delay_seconds_count", q0 + 10 };
	if (!harness_wait(grown, &gq, 5000))
		fail_msg("queue delay count did not reach %g", q0 + 10);
	struct grown gr = { s, "derpd_tcp_rtt_seconds_count", r0 + 2 };
	if (!harness_wait(grown, &gr, 5000))
		fail_msg("RTT count did not reach %g", r0 + 2);
	t = scrape(s, 0);
	check_histogram(t, "derpd_queue_delay_seconds");
	check_histogram(t, "derpd_tcp_rtt_seconds");
	/* loopback: every RTT well under a second, every queue wait too */
	assert_true(sample(t, "derpd_tcp_rtt_seconds_bucket{le=\"1\"}") ==
		    sample(t, "derpd_tcp_rtt_seconds_count"));
	assert_true(sample(t, "derpd_queue_delay_seconds_bucket{le=\"1\"}") ==
		    sample(t, "derpd_queue_delay_seconds_count"));
	/* the families derper also has keep their names */
	expect_type(t, "derp_average_queue_duration_seconds", "gauge");
	expect_type(t, "derp_tcp_rtt_samples_total", "counter");
	derp_client_close(a);
	derp_client_close(b);
}

/* ---- TLS: certificate expiry; a scrape with every family, linted ---- */

static void test_cert_expiry_and_lint(void **state)
{
	(void)state;
	char tmp[64], certdir[128], psk[160], with[64];
	struct tu_ca ca;
	size_t dl;
	int resv;

	tu_tmpdir(tmp, sizeof tmp);
	snprintf(certdir, sizeof certdir, "%s/certs", tmp);
	assert_int_equal(mkdir(certdir, 0700), 0);
	tu_ca_make(&ca, tmp);
	uint8_t *der = tu_leaf(&ca, certdir, "127.0.0.1", NULL, "127.0.0.1", NULL, &dl, NULL);
	struct cert_info ci;
	assert_int_equal(cert_info_parse(der, dl, &ci), 0);
	free(der);
	mu_write(psk, sizeof psk, tmp, "psk", MESH_KEY_HEX "\n");
	/* a mesh peer nobody serves: its families are there, up 0 */
	uint16_t dead = mu_reserve_port(&resv);
	snprintf(with, sizeof with, "127.0.0.1:%u", dead);
	const char *extra[] = { "-certmode", "manual", "-hostname", "127.0.0.1", "-certdir",
				certdir, "-http-port=-1", "-mesh-psk-file", psk, "-mesh-with",
				with, NULL };
	struct harness_server *s = harness_start_opts(extra, HARNESS_TLS);

	const char *t = scrape(s, 1);
	expect_type(t, "derpd_tls_certificate_expiry_timestamp_seconds", "gauge");
	double exp = sample(t, "derpd_tls_certificate_expiry_timestamp_seconds{name=\"127.0.0.1\"}");
	if (exp != (double)ci.not_after)
		fail_msg("expiry %g, the certificate says %lld", exp, (long long)ci.not_after);
	char series[128];
	snprintf(series, sizeof series, "derpd_mesh_peer_up{peer=\"%s\"}", with);
	assert_true(sample(t, series) == 0);
	snprintf(series, sizeof series, "derpd_mesh_forward_drops_total{peer=\"%s\"}", with);
	assert_true(sample(t, series) == 0);
	assert_true(sample(t, "derpd_acme_orders_total") == 0); /* manual mode orders nothing */
	assert_true(sample(t, "derpd_acme_order_failures_total") == 0);
	static char out[65536];
	int rc = harness_promtool(t, out, sizeof out);
	if (rc != 0)
		fail_msg("promtool on a TLS + mesh /metrics: exit %d\n%s", rc, out);

	/* a new certificate and SIGHUP: the gauge follows (its notAfter differs by the
	 * second at least once the clock has moved; wait for that) */
	int64_t until = harness_now_ms() + 3000;
	uint8_t *der2;
	struct cert_info ci2;
	do {
		der2 = tu_leaf(&ca, certdir, "127.0.0.1", NULL, "127.0.0.1", NULL, &dl, NULL);
		assert_int_equal(cert_info_parse(der2, dl, &ci2), 0);
		free(der2);
		if (ci2.not_after != ci.not_after)
			break;
		poll(NULL, 0, 100);
	} while (harness_now_ms() < until);
	assert_true(ci2.not_after != ci.not_after);
	kill(s->pid, SIGHUP);
	snprintf(series, sizeof series,
		 "derpd_tls_certificate_expiry_timestamp_seconds{name=\"127.0.0.1\"}");
	until = harness_now_ms() + 5000;
	while ((exp = sample(scrape(s, 1), series)) != (double)ci2.not_after &&
	       harness_now_ms() < until)
		poll(NULL, 0, 50);
	if (exp != (double)ci2.not_after)
		fail_msg("after reload: expiry %g, the new certificate says %lld", exp,
			 (long long)ci2.not_after);
	harness_stop(s);
	close(resv);
	tu_ca_free(&ca);
	tu_rmdir(tmp);
}

/* ---- mesh: peer up 1, then 0 when it is killed ---- */

struct up_arg { const struct harness_server *s; const char *series; double want; };

static int peer_up_is(void *arg)
{
	struct up_arg *u = arg;
	return sample(scrape(u->s, 0), u->series) == u->want;
}

static int logged_self(void *arg)
{
	return harness_log_contains(arg, "detected self-connect");
}

static void test_mesh_peer_up(void **state)
{
	(void)state;
	char dir[64], psk[160], with[96], addr[2][32], series[128];
	int resv[2];
	uint16_t port[2];
	struct harness_server *n[2];

	mu_tmpdir(dir, sizeof dir);
	mu_write(psk, sizeof psk, dir, "psk", MESH_KEY_HEX "\n");
	for (int i = 0; i < 2; i++) {
		port[i] = mu_reserve_port(&resv[i]);
		snprintf(addr[i], sizeof addr[i], "127.0.0.1:%u", port[i]);
	}
	/* both nodes get the same list, themselves included, as a region is configured */
	snprintf(with, sizeof with, "%s,%s", addr[0], addr[1]);
	for (int i = 0; i < 2; i++) {
		const char *extra[] = { "-a", addr[i], "-mesh-psk-file", psk, "-mesh-with", with,
					NULL };
		n[i] = harness_start(extra);
		assert_int_equal(n[i]->port, port[i]);
	}
	snprintf(series, sizeof series, "derpd_mesh_peer_up{peer=\"%s\"}", addr[1]);
	struct up_arg up = { n[0], series, 1 };
	if (!harness_wait(peer_up_is, &up, 10000))
		fail_msg("%s did not become 1 on node A", series);
	/* A's own entry is found to be itself and then not listed */
	if (!harness_wait(logged_self, n[0], 10000))
		fail_msg("node A never detected its own entry");
	char self[128];
	snprintf(self, sizeof self, "derpd_mesh_peer_up{peer=\"%s\"}", addr[0]);
	assert_true(isnan(sample(scrape(n[0], 0), self)));
	char drops[128];
	snprintf(drops, sizeof drops, "derpd_mesh_forward_drops_total{peer=\"%s\"}", addr[1]);
	assert_true(sample(scrape(n[0], 0), drops) >= 0);

	/* B dies without a goodbye: A's link breaks and the gauge goes 0 */
	kill(n[1]->pid, SIGKILL);
	int st;
	assert_int_equal(waitpid(n[1]->pid, &st, 0), n[1]->pid);
	n[1]->pid = 0;
	harness_stop(n[1]);
	up.want = 0;
	if (!harness_wait(peer_up_is, &up, 10000))
		fail_msg("%s did not go 0 on node A after B was killed", series);
	harness_stop(n[0]);
	for (int i = 0; i < 2; i++)
		close(resv[i]);
	mu_rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_build_info_and_histograms, harness_setup,
						harness_teardown),
		cmocka_unit_test(test_cert_expiry_and_lint),
		cmocka_unit_test(test_mesh_peer_up),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
