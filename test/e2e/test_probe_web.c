/* derpd-probe in daemon mode (issue 15): a region of two healthy meshed TLS nodes and one
 * that is down, probed on a schedule. /metrics is linted by promtool and carries upstream's
 * names; /healthz answers as upstream's; the status page, rendered by headless Chromium,
 * shows the numbers /metrics has (read back from the DOM) and a latency chart per node,
 * and a screenshot of it goes to <build>/test-probe-status.png (not committed). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test/e2e/browser.h"
#include "test/e2e/harness.h"
#include "test/e2e/test_mesh_util.h"
#include "test/e2e/test_tls_util.h"
#include "test/e2e/test_probe_util.h"

#include <math.h>

#include "stun/stun.h"

#define MESHED  16000
#define BIG     (1 << 20)

static struct {
	char dir[64], psk[128], good[128], url[600], caenv[300], log[300];
	struct tu_ca ca;
	struct pu_node a, b;
	struct stun_server *stun6;
	pid_t pid;
	struct harness_server web; /* only .port: harness_http's target */
} R;

static char resp[BIG], metrics[BIG], dom[BIG];

static int setup(void **state)
{
	char with[128], nodes[2048] = "", e[200];
	time_t now = time(NULL);
	int fd;

	(void)state;
	signal(SIGPIPE, SIG_IGN);
	mu_tmpdir(R.dir, sizeof R.dir);
	mu_write(R.psk, sizeof R.psk, R.dir, "mesh.key", MESH_KEY_HEX "\n");
	tu_ca_make(&R.ca, R.dir);
	snprintf(R.caenv, sizeof R.caenv, "SSL_CERT_FILE=%s", R.ca.pem_path);
	snprintf(R.good, sizeof R.good, "%s/good", R.dir);
	mkdir(R.good, 0700);
	pu_leaf(&R.ca, R.good, PU_NAME, PU_NAME, NULL, now - 3600, now + 30 * 86400);
	R.a.port = mu_reserve_port(&R.a.resv_fd);
	R.b.port = mu_reserve_port(&R.b.resv_fd);
	snprintf(with, sizeof with, PU_NAME ":%u," PU_NAME ":%u", R.a.port, R.b.port);
	pu_node_start(&R.a, R.dir, R.good, PU_NAME, R.psk, with, R.ca.pem_path);
	pu_node_start(&R.b, R.dir, R.good, PU_NAME, R.psk, with, R.ca.pem_path);
	if (!(R.stun6 = stun_start("::1", R.a.stun_port, e, sizeof e)))
		fail_msg("STUN on [::1]: %s", e);
	assert_true(harness_wait_metric(&R.a.p80, "derp_watchers", 1, MESHED) == 1);
	assert_true(harness_wait_metric(&R.b.p80, "derp_watchers", 1, MESHED) == 1);
	uint16_t down = mu_reserve_port(&fd); /* node c: refused on TCP and (closed) UDP */
	close(fd);
	pu_map_node(nodes, sizeof nodes, "900a", PU_NAME, R.a.port, R.a.stun_port, "::1");
	pu_map_node(nodes, sizeof nodes, "900b", PU_NAME, R.b.port, R.b.stun_port, NULL);
	pu_map_node(nodes, sizeof nodes, "900c", PU_NAME, down, down, NULL);
	pu_map_write(R.url, sizeof R.url, R.dir, "region.json", nodes);

	/* the daemon: the map, TLS and STUN once an hour (their numbers hold still while the
	 * test reads them back), the DERP round trips every second (they fill the charts) */
	snprintf(R.log, sizeof R.log, "%s/probe.log", R.dir);
	R.pid = fork();
	assert_true(R.pid >= 0);
	if (R.pid == 0) {
		int lfd = open(R.log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(lfd, 1);
		dup2(lfd, 2);
		putenv(R.caenv);
		execl(pu_probe_bin(), pu_probe_bin(), "-listen", "127.0.0.1:0", "-spread=false",
		      "-derp-map", R.url, "-mesh-psk-file", R.psk, "-interval", "1h",
		      "-tls-interval", "1h", "-stun-interval", "1h", "-mesh-interval", "1s",
		      (char *)NULL);
		_exit(127);
	}
	int64_t end = harness_now_ms() + 10000;
	while (!R.web.port && harness_now_ms() < end) {
		size_t n;
		char *log = file_read(R.log, &n), *p = log ? strstr(log, "Listening on 127.0.0.1:") : NULL;
		if (p)
			R.web.port = (uint16_t)atoi(p + strlen("Listening on 127.0.0.1:"));
		free(log);
		if (!R.web.port)
			poll(NULL, 0, 20);
	}
	if (!R.web.port)
		fail_msg("derpd-probe did not log its listening address within 10 s");
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	if (R.pid > 0) {
		kill(R.pid, SIGKILL);
		waitpid(R.pid, NULL, 0);
	}
	if (R.stun6)
		stun_stop(R.stun6);
	pu_node_stop(&R.a);
	pu_node_stop(&R.b);
	tu_ca_free(&R.ca);
	mu_rmdir(R.dir);
	return 0;
}

static int get(const char *path, char *out, size_t cap)
{
	char req[256];
	snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
		 path);
	int st = harness_http(&R.web, req, resp, sizeof resp);
	snprintf(out, cap, "%s", harness_http_body(resp));
	return st;
}

/* The value of a series (exact name with labels as written), NAN if absent. */
static double series(const char *text, const char *s)
{
	char needle[512];
	snprintf(needle, sizeof needle, "\n%s ", s);
	const char *p = strstr(text, needle);
	return p ? strtod(p + strlen(needle), NULL) : NAN;
}

static int count(const char *text, const char *needle)
{
	int n = 0;
	for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

#define LBL(name, cls, extra) \
	"{name=\"" name "\",class=\"" cls "\",region=\"t\",region_id=\"900\",hostname=\"localhost\"" extra "}"

/* Every probe has a result and node a's round trip has run at least 4 times. */
static int settled(void *arg)
{
	(void)arg;
	if (get("/metrics", metrics, sizeof metrics) != 200)
		return 0;
	return count(metrics, "\nderpprobe_result{") == 17 &&
	       series(metrics, "derpprobe_attempts_total" LBL("derp/t/900a/900a/mesh", "derp_mesh",
				",derp_path=\"single\",status=\"ok\"")) >= 4;
}

static void test_metrics_and_healthz(void **state)
{
	char out[65536];

	(void)state;
	if (!harness_wait(settled, NULL, 30000))
		fail_msg("17 probe results and 4 round trips on 900a not seen within 30 s:\n%s",
			 metrics);
	/* upstream's names and labels */
	assert_true(series(metrics, "derpprobe_result" LBL("derp/t/900a/tls", "tls", "")) == 1);
	assert_true(series(metrics, "derpprobe_result" LBL("derp/t/900c/tls", "tls", "")) == 0);
	assert_true(series(metrics, "derpprobe_result" LBL("derp/t/900a/udp6", "derp_udp",
							 ",address_family=\"ipv6\"")) == 1);
	assert_true(series(metrics, "derpprobe_result" LBL("derp/t/900a/900b/mesh", "derp_mesh",
							 ",derp_path=\"mesh\"")) == 1);
	assert_true(series(metrics, "derpprobe_result{name=\"derpmap-probe\",class=\"derp_map\"}") == 1);
	assert_true(series(metrics, "derpprobe_interval_secs" LBL("derp/t/900a/tls", "tls", "")) == 3600);
	assert_true(series(metrics, "derpprobe_latency_millis" LBL("derp/t/900b/udp", "derp_udp",
							 ",address_family=\"ipv4\"")) >= 0);
	assert_true(isnan(series(metrics, "derpprobe_latency_millis" LBL("derp/t/900c/tls", "tls", ""))));
	double exp = series(metrics, "derpprobe_tls_cert_expiry_secs" LBL("derp/t/900a/tls", "tls", ""));
	assert_true(fabs(exp - ((double)time(NULL) + 30 * 86400)) < 3600);
	assert_true(series(metrics, "derpprobe_last_success_secs" LBL("derp/t/900b/tls", "tls", "")) > 0);
	assert_true(count(metrics, "\nderpprobe_result{") == 17);
	assert_true(count(metrics, "} 0\n") >= 7);

	/* promtool: clean */
	char path[300], cmd[400];
	snprintf(path, sizeof path, "%s/metrics.txt", R.dir);
	tu_write(path, metrics, strlen(metrics));
	snprintf(cmd, sizeof cmd, "promtool check metrics < %s 2>&1", path);
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	size_t n = fread(out, 1, sizeof out - 1, p);
	out[n] = '\0';
	int st = pclose(p);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || n)
		fail_msg("promtool check metrics: status %d\n%s", st, out);

	/* /healthz as upstream: the prober is up (200 "ok") though a node is down */
	assert_int_equal(get("/healthz", out, sizeof out), 200);
	assert_string_equal(out, "ok\n");
	assert_int_equal(get("/debug/varz", out, sizeof out), 200);
	assert_non_null(strstr(out, "derpprobe_result{"));
	assert_int_equal(get("/nope", out, sizeof out), 404);
}

/* attr="value" of the first element after anchor (and before stop, if given) that has
 * marker in it; NAN if none. */
static double dom_num(const char *anchor, const char *stop, const char *marker,
		      const char *attr)
{
	const char *a = strstr(dom, anchor), *end = a && stop ? strstr(a, stop) : NULL;
	const char *m = a ? strstr(a, marker) : NULL;
	char needle[64];

	if (!m || (end && m > end))
		return NAN;
	snprintf(needle, sizeof needle, " %s=\"", attr);
	const char *v = strstr(m, needle), *close = strchr(m, '>');
	if (!v || (close && v > close))
		return NAN;
	return strtod(v + strlen(needle), NULL);
}

static void test_status_page_in_chromium(void **state)
{
	char url[64], shot[700], profile[300];
	char scrape2[BIG / 4];

	(void)state;
	if (!browser_path()) {
		print_message("SKIPPED: chromium is not installed (apt-get install chromium)\n");
		skip();
	}
	if (!harness_wait(settled, NULL, 30000))
		fail_msg("probe results not seen within 30 s");
	snprintf(url, sizeof url, "http://127.0.0.1:%u/", R.web.port);
	snprintf(profile, sizeof profile, "%s/chromium", R.dir);
	char *page = browser_dom(url, profile, 90000);
	if (!page || !strstr(page, "</html>"))
		fail_msg("chromium --dump-dom: %zu bytes", page ? strlen(page) : 0);
	snprintf(dom, sizeof dom, "%s", page);
	free(page);
	assert_int_equal(get("/metrics", scrape2, sizeof scrape2), 200);

	/* the summary: as many probes and bad ones as /metrics has results and zeros */
	double total = dom_num("id=\"summary\"", NULL, "id=\"summary\"", "data-total");
	double bad = dom_num("id=\"summary\"", NULL, "id=\"summary\"", "data-bad");
	assert_true(total == count(scrape2, "\nderpprobe_result{"));
	assert_true(bad == 7); /* 900c: tls, udp, and the five DERP paths through it */

	/* 900a: STUN latency (hourly: still) equals /metrics' figure */
	const char *ra = "data-node=\"900a\"", *rb = "data-node=\"900b\"";
	const char *rc_ = "data-node=\"900c\"", *tr = "</tr>";
	double udp_ms = dom_num(ra, tr, "class=\"udp good", "data-latency-ms");
	double udp_s = series(scrape2, "derpprobe_latency_seconds" LBL("derp/t/900a/udp", "derp_udp",
									",address_family=\"ipv4\""));
	if (!(fabs(udp_ms - udp_s * 1000) < 0.001))
		fail_msg("900a STUN latency: page %.3f ms, /metrics %.6f s", udp_ms, udp_s);
	double v6 = dom_num(ra, tr, "class=\"udp6 good", "data-latency-ms");
	assert_true(v6 > 0 && v6 < 5000);
	/* TLS days left from the certificate's expiry in /metrics */
	double days = dom_num(ra, tr, "class=\"tls good", "data-days-left");
	double exp = series(scrape2, "derpprobe_tls_cert_expiry_secs" LBL("derp/t/900a/tls", "tls", ""));
	if (!(fabs(days - (exp - (double)time(NULL)) / 86400) < 0.1 && days > 29 && days < 30.1))
		fail_msg("900a TLS: page %.1f days left, /metrics expiry %.0f", days, exp);
	/* the DERP round trip: a latency, and the chart's last point is that latency */
	double derp = dom_num(ra, tr, "class=\"derp good", "data-latency-ms");
	double last = dom_num(ra, tr, "class=\"chart\"", "data-last-ms");
	double pts = dom_num(ra, tr, "class=\"chart\"", "data-points");
	if (!(derp > 0 && derp < 1000 && fabs(derp - last) < 0.001 && pts >= 4))
		fail_msg("900a chart: derp %.3f ms, chart last %.3f ms, %g points", derp, last, pts);
	const char *poly = strstr(strstr(dom, ra), "<polyline");
	assert_non_null(poly);
	assert_int_equal(count(strndupa(poly, strcspn(poly, ">")), ","), (int)pts);
	assert_true(dom_num(rb, tr, "class=\"derp good", "data-latency-ms") > 0);
	/* the mesh column: a reaches b but not c; c is down all over */
	assert_true(dom_num(ra, tr, "class=\"mesh bad", "data-good") == 1);
	assert_true(dom_num(ra, tr, "class=\"mesh bad", "data-total") == 2);
	assert_true(dom_num(rc_, tr, "class=\"mesh bad", "data-good") == 0);
	assert_non_null(strstr(strstr(dom, rc_), "class=\"tls bad\" data-state=\"bad\""));
	assert_non_null(strstr(strstr(dom, rc_), "class=\"derp bad\" data-state=\"bad\""));
	assert_null(strstr(dom, "<script"));

	/* the screenshot, for a person to look at */
	snprintf(shot, sizeof shot, "%s/test-probe-status.png", pu_build_dir());
	unlink(shot);
	int rc = browser_screenshot(url, shot, 1400, 1000, profile, 90000);
	size_t n;
	char *png = file_read(shot, &n);
	if (rc != 0 || !png || n < 10000 || memcmp(png, "\x89PNG", 4) != 0)
		fail_msg("chromium --screenshot: %d, %zu bytes in %s", rc, png ? n : 0, shot);
	free(png);
	print_message("status page: %g probes, %g bad; 900a DERP %.2f ms over %g points; "
		      "screenshot %s\n", total, bad, derp, pts, shot);
}

/* SIGTERM: the daemon stops at once (its runs are bounded) and says so. */
static void test_stop(void **state)
{
	int st;

	(void)state;
	assert_int_equal(kill(R.pid, SIGTERM), 0);
	int64_t end = harness_now_ms() + 10000;
	while (waitpid(R.pid, &st, WNOHANG) != R.pid) {
		if (harness_now_ms() > end)
			fail_msg("derpd-probe did not stop within 10 s of SIGTERM");
		poll(NULL, 0, 20);
	}
	R.pid = 0;
	size_t n;
	char *log = file_read(R.log, &n);
	assert_non_null(log);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail_msg("derpd-probe exited with 0x%x on SIGTERM; its log:\n%s", st, log);
	assert_non_null(strstr(log, "Terminated: stopping"));
	if (strstr(log, "Sanitizer") || strstr(log, "runtime error:"))
		fail_msg("derpd-probe's log:\n%s", log);
	free(log);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_metrics_and_healthz),
		cmocka_unit_test(test_status_page_in_chromium),
		cmocka_unit_test(test_stop),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
