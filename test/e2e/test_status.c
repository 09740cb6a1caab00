/* /debug/, the live status page (man page "HTTP endpoints"): a derpd meshed with a second
 * one relays packets; the page, fetched plainly and rendered by headless Chromium, shows
 * the connections, rates and totals that move, the mesh link up, the build, derper's links
 * and a sparkline; a TLS derpd's page shows its certificate's days left. A screenshot goes
 * into the build directory (status-derpd.png), not into the tree. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "test/e2e/browser.h"
#include "test/e2e/harness.h"
#include "test/e2e/test_mesh_util.h"
#include "test/e2e/test_tls_util.h"

static char dir[64], certdir[128], keyfile[128];

static struct harness_server *peer_b, *node_a;

static double num(const char *dom, const char *id)
{
	char v[64];

	if (browser_text_by_id(dom, id, v, sizeof v) != 0)
		fail_msg("the page has no element #%s", id);
	return strtod(v, NULL);
}

static char *page(void)
{
	static char resp[1 << 17];

	assert_int_equal(harness_http(node_a, "GET /debug/ HTTP/1.1\r\nHost: x\r\n"
				      "Connection: close\r\n\r\n", resp, sizeof resp), 200);
	return (char *)harness_http_body(resp);
}

static int link_up(void *unused)
{
	(void)unused;
	char v[16];
	return browser_text_by_id(page(), "mesh-0-link", v, sizeof v) == 0 && !strcmp(v, "up");
}

static int group_setup(void **state)
{
	(void)state;
	char mesh_with[64];

	mu_tmpdir(dir, sizeof dir);
	mu_write(keyfile, sizeof keyfile, dir, "mesh.key", MESH_KEY_HEX);
	snprintf(certdir, sizeof certdir, "%s/certs", dir);
	const char *b_args[] = { "-mesh-psk-file", keyfile, NULL };
	peer_b = harness_start(b_args);
	snprintf(mesh_with, sizeof mesh_with, "127.0.0.1:%u", peer_b->port);
	const char *a_args[] = { "-mesh-psk-file", keyfile, "-mesh-with", mesh_with, NULL };
	node_a = harness_start(a_args);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	harness_stop(node_a);
	harness_stop(peer_b);
	mu_rmdir(dir);
	return 0;
}

/* The numbers move: packets relayed between two fetches show in the totals and the rate;
 * the page is HTML with no script and nothing from elsewhere. */
static void test_numbers_move(void **state)
{
	(void)state;
	struct derp_client *x = harness_client(node_a, NULL), *y = harness_client(node_a, NULL);

	assert_true(harness_wait(link_up, NULL, 10000));
	char *p = page();
	assert_null(strstr(p, "<script"));
	assert_null(strstr(p, "src=\"http"));
	assert_null(strstr(p, "href=\"http"));
	double in0 = num(p, "packets-in");
	assert_int_equal((int)num(p, "connections"), 2);
	for (int i = 0; i < 200; i++)
		assert_int_equal(derp_client_send(x, derp_client_public_key(y), "ping!", 5), 0);
	for (int i = 0; i < 200; i++)
		harness_expect_packet(y, derp_client_public_key(x), "ping!", 5, 5000);
	p = page();
	assert_true(num(p, "packets-in") >= in0 + 200);
	assert_true(num(p, "packets-out") >= 200);
	assert_true(num(p, "pps-in") > 0);
	assert_true(num(p, "bps-in") > 0);
	assert_true(num(p, "rate-interval") > 0);
	/* derper's links stay */
	static const char *const links[] = { "/debug/vars", "/debug/varz", "/metrics",
					      "/debug/check", "/debug/traffic" };
	for (size_t i = 0; i < sizeof links / sizeof *links; i++) {
		char want[64];
		snprintf(want, sizeof want, "<a href=\"%s\">", links[i]);
		assert_non_null(strstr(p, want));
	}
	derp_client_close(x);
	derp_client_close(y);
}

/* Chromium renders it: the numbers read back from the DOM, and a screenshot. */
static void test_chromium(void **state)
{
	(void)state;
	char url[96], profile[128], png[256], v[128];

	if (!browser_path()) {
		print_message("SKIPPED: chromium is not installed (apt-get install chromium)\n");
		skip();
	}
	struct derp_client *x = harness_client(node_a, NULL), *y = harness_client(node_a, NULL);
	for (int i = 0; i < 50; i++)
		assert_int_equal(derp_client_send(x, derp_client_public_key(y), "hello", 5), 0);
	for (int i = 0; i < 50; i++)
		harness_expect_packet(y, derp_client_public_key(x), "hello", 5, 5000);

	snprintf(url, sizeof url, "http://127.0.0.1:%u/debug/", node_a->port);
	snprintf(profile, sizeof profile, "%s/chromium-profile", dir);
	char *dom = browser_dom(url, profile, 60000);
	if (!dom)
		fail_msg("chromium rendered nothing for %s", url);
	assert_true(num(dom, "connections") >= 2);
	assert_true(num(dom, "packets-in") >= 50);
	assert_true(num(dom, "pps-in") > 0);
	assert_int_equal(browser_text_by_id(dom, "mesh-0-link", v, sizeof v), 0);
	assert_string_equal(v, "up");
	assert_non_null(strstr(dom, "id=\"certs-none\"")); /* plain HTTP */
	assert_int_equal(browser_text_by_id(dom, "version", v, sizeof v), 0);
	assert_true(strlen(v) > 0);
	assert_non_null(strstr(dom, "<svg id=\"sparkline\""));
	assert_non_null(strstr(dom, "<polyline"));
	free(dom);

	/* The picture an operator sees, beside the binary (DERPD_BIN's directory). */
	const char *bin = getenv("DERPD_BIN") ? getenv("DERPD_BIN") : "build/derpd";
	const char *slash = strrchr(bin, '/');
	snprintf(png, sizeof png, "%.*s/status-derpd.png", slash ? (int)(slash - bin) : 1,
		 slash ? bin : ".");
	assert_int_equal(browser_screenshot(url, png, 900, 1500, profile, 60000), 0);
	print_message("status page screenshot: %s\n", png);
	derp_client_close(x);
	derp_client_close(y);
}

/* A TLS derpd's page lists its certificate and the days it has left. */
static void test_certificate(void **state)
{
	(void)state;
	static char resp[1 << 17];
	const char *args[] = { "-certmode", "manual", "-hostname", "127.0.0.1", "-certdir",
			       certdir, "-http-port", "-1", NULL };
	struct harness_server *t = harness_start_opts(args, HARNESS_TLS);

	assert_int_equal(tu_https(t->port, "GET /debug/ HTTP/1.1\r\nHost: x\r\n"
				  "Connection: close\r\n\r\n", resp, sizeof resp), 200);
	const char *body = strstr(resp, "\r\n\r\n");
	assert_non_null(body);
	assert_non_null(strstr(body, "<th>127.0.0.1</th>"));
	double days = num(body, "cert-0-days");
	assert_true(days > 1 && days < 400); /* the generated certificate's lifetime */
	harness_stop(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_numbers_move),
		cmocka_unit_test(test_chromium),
		cmocka_unit_test(test_certificate),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
