/* /bootstrap-dns on the real binary (SERVER.md §9, CONFORMANCE.md 107-108): derpd runs in
 * a network + mount namespace this test made, whose resolv.conf points at a DNS server
 * the test runs on 127.0.0.1:53 (test/unit/test_bootstrap_dnsd.h). derpd resolves
 * through its normal path; nothing in it knows it is being tested. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test/e2e/harness.h"
#include "test/e2e/test_http_util.h"
#include "test/unit/test_bootstrap_dnsd.h"

static int ns_ready;

static void test_bootstrap_dns(void **state)
{
	(void)state;
	assert_true(ns_ready);
	dnsd_set("login.test", 1, "192.0.2.10");
	dnsd_set("login.test", 28, "2001:db8::10");
	dnsd_set("controlplane.test", 1, "192.0.2.20");
	dnsd_set("log.test", 1, "192.0.2.30");
	dnsd_set("rollout.log.test", 16, "100");
	const char *extra[] = { "-bootstrap-dns-names=login.test,controlplane.test,gone.test",
				"-unpublished-bootstrap-dns-names=log.test/rollout.log.test", NULL };
	struct harness_server *s = harness_start(extra);

	/* the resolver thread fills the cache soon after start; requests never resolve */
	json_t *j = NULL;
	for (int i = 0; i < 500 && j == NULL; i++) {
		assert_int_equal(req(s, "GET", "/bootstrap-dns", NULL), 200);
		j = json_loads(body(), 0, NULL);
		if (j == NULL)
			poll(NULL, 0, 10);
	}
	assert_non_null(j);
	expect_hdr("Content-Type", "application/json");
	expect_hdr("Connection", "close");
	expect_browser_headers(CSP);
	assert_int_equal(json_object_size(j), 2); /* gone.test does not resolve */
	assert_int_equal(json_array_size(json_object_get(j, "login.test")), 2);
	assert_string_equal(json_string_value(json_array_get(json_object_get(j, "controlplane.test"), 0)),
			    "192.0.2.20");
	json_decref(j);
	/* tab-indented as Go's MarshalIndent(..., "", "\t") */
	assert_non_null(strstr(body(), "{\n\t\"controlplane.test\": [\n\t\t\"192.0.2.20\"\n\t],\n"));

	/* unpublished: answered only when asked, and only that name (CONFORMANCE 107-108) */
	assert_int_equal(req(s, "GET", "/bootstrap-dns?q=log.test", NULL), 200);
	assert_string_equal(body(), "{\n\t\"log.test\": [\n\t\t\"192.0.2.30\"\n\t]\n}");
	assert_int_equal(req(s, "GET", "/bootstrap-dns?q=login.test", NULL), 200);
	assert_non_null(strstr(body(), "login.test"));
	assert_null(strstr(body(), "\"log.test\""));
	assert_int_equal(req(s, "GET", "/bootstrap-dns?q=random.example", NULL), 200);
	assert_null(strstr(body(), "\"log.test\""));

	assert_true(harness_metric(s, "bootstrap_dns_unpublished_hits") == 1);
	assert_true(harness_metric(s, "bootstrap_dns_published_hits") == 1);
	assert_true(harness_metric(s, "bootstrap_dns_unpublished_misses") == 1);
	assert_true(harness_metric(s, "bootstrap_dns_queried_domains") == 3);
	harness_stop(s);
}

int main(void)
{
	char err[256];
	signal(SIGPIPE, SIG_IGN);
	if (dnsd_netns_enter(err, sizeof err) != 0 || dnsd_start(err, sizeof err) != 0)
		fprintf(stderr, "test_http_dns: namespace setup failed: %s\n", err);
	else
		ns_ready = 1;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bootstrap_dns),
	};
	int rc = cmocka_run_group_tests(tests, NULL, NULL);
	dnsd_stop();
	return rc;
}
