/* Bootstrap DNS (SERVER.md §9, CONFORMANCE.md 107-114): the rollout percentage, the
 * published / unpublished answers and their counters, the queried-names set, and real
 * resolution by the resolver thread against a DNS server this test runs in a namespace of
 * its own (test_bootstrap_dnsd.h), including "a failed lookup keeps the last answer".
 * Tests share the module's process-wide state, so they run in this order. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metrics/internal.h"
#include "test/unit/test_bootstrap_dnsd.h"

static struct sockaddr_storage ip4(const char *ip, int port)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
	v4->sin_family = AF_INET;
	v4->sin_port = htons((uint16_t)port);
	assert_int_equal(inet_pton(AF_INET, ip, &v4->sin_addr), 1);
	return ss;
}

static int match(const char *ip, double pct)
{
	struct sockaddr_storage ss = ip4(ip, 1234);
	return bootstrap_dns_percent_match((struct sockaddr *)&ss, pct);
}

static void test_percent(void **state)
{
	(void)state;
	assert_false(match("10.0.0.1", 0));
	assert_true(match("10.0.0.1", 1));
	assert_true(bootstrap_dns_percent_match(NULL, 1));
	assert_false(bootstrap_dns_percent_match(NULL, 0));
	assert_false(bootstrap_dns_percent_match(NULL, 0.5));
	static const struct { const char *ip; int want; } t[] = {
		{ "1.2.3.4", 1 }, { "1.2.3.5", 1 }, { "1.2.3.6", 0 }, { "1.2.3.7", 1 },
		{ "1.2.3.8", 0 }, { "1.2.3.9", 1 }, { "1.2.3.10", 1 },
	};
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
		if (match(t[i].ip, 0.5) != t[i].want)
			fail_msg("%s at 0.5: want %d", t[i].ip, t[i].want);
	int yes = 0;
	for (int a = 0; a < 256; a++)
		for (int b = 0; b < 256; b++) {
			char ip[32];
			snprintf(ip, sizeof ip, "1.2.%d.%d", a, b);
			struct sockaddr_storage ss = ip4(ip, 12345);
			yes += bootstrap_dns_percent_match((struct sockaddr *)&ss, 0.5);
		}
	double frac = yes / 65536.0;
	if (frac < 0.495 || frac > 0.505)
		fail_msg("match fraction %f", frac);
	/* an IPv6 client is deterministic too */
	struct sockaddr_in6 v6 = { .sin6_family = AF_INET6 };
	inet_pton(AF_INET6, "2001:db8::7", &v6.sin6_addr);
	int first = bootstrap_dns_percent_match((struct sockaddr *)&v6, 0.5);
	for (int i = 0; i < 20; i++)
		assert_int_equal(bootstrap_dns_percent_match((struct sockaddr *)&v6, 0.5), first);
}

static char *answer(const char *q, size_t *len)
{
	struct sockaddr_storage ss = ip4("198.51.100.9", 4000);
	return bootstrap_dns_answer(q, (struct sockaddr *)&ss, len);
}

static void test_nothing_resolved_yet(void **state)
{
	(void)state;
	size_t len = 99;
	char *b = answer(NULL, &len);
	assert_int_equal(len, 0); /* upstream: empty body until the first refresh */
	free(b);
}

static void test_unpublished_empty_list(void **state)
{
	(void)state;
	struct dns_map *pub = dns_map_new(), *unpub = dns_map_new();
	const char *ten[] = { "10.10.10.10" }, *cp[] = { "1.2.3.4" };
	assert_int_equal(dns_map_set(pub, "tailscale.com", ten, 1, 1.0), 0);
	assert_int_equal(dns_map_set(unpub, "log.tailscale.com", NULL, 0, 1.0), 0);
	assert_int_equal(dns_map_set(unpub, "controlplane.tailscale.com", cp, 1, 1.0), 0);
	bootstrap_dns_install(pub, unpub);
	const char *published = "{\n\t\"tailscale.com\": [\n\t\t\"10.10.10.10\"\n\t]\n}";

	struct bootstrap_dns_counters c0, c1;
	const char *miss[] = { "log.tailscale.com", "login.tailscale.com" };
	for (int i = 0; i < 2; i++) { /* CacheMiss */
		bootstrap_dns_counters_get(&c0);
		size_t len;
		char *b = answer(miss[i], &len);
		assert_string_equal(b, published);
		assert_int_equal(len, strlen(published));
		free(b);
		bootstrap_dns_counters_get(&c1);
		assert_int_equal(c1.requests - c0.requests, 1);
		assert_int_equal(c1.unpublished_hits - c0.unpublished_hits, 0);
		assert_int_equal(c1.unpublished_misses - c0.unpublished_misses, 1);
	}
	bootstrap_dns_counters_get(&c0); /* CacheHit: only the name asked for */
	size_t len;
	char *b = answer("controlplane.tailscale.com", &len);
	assert_string_equal(b, "{\n\t\"controlplane.tailscale.com\": [\n\t\t\"1.2.3.4\"\n\t]\n}");
	free(b);
	bootstrap_dns_counters_get(&c1);
	assert_int_equal(c1.unpublished_hits - c0.unpublished_hits, 1);
	assert_int_equal(c1.unpublished_misses - c0.unpublished_misses, 0);

	bootstrap_dns_counters_get(&c0); /* a published name: published hit */
	b = answer("tailscale.com", &len);
	assert_string_equal(b, published);
	free(b);
	b = answer(NULL, &len); /* no q: no lookup counters, just the list */
	assert_string_equal(b, published);
	free(b);
	b = answer("", &len);
	free(b);
	bootstrap_dns_counters_get(&c1);
	assert_int_equal(c1.published_hits - c0.published_hits, 1);
	assert_int_equal(c1.requests - c0.requests, 3);
	assert_int_equal(c1.unpublished_misses, c0.unpublished_misses);

	/* 0 % rollout: a hit, then a percent miss, then the published list */
	unpub = dns_map_new();
	assert_int_equal(dns_map_set(unpub, "controlplane.tailscale.com", cp, 1, 0), 0);
	bootstrap_dns_install(NULL, unpub);
	bootstrap_dns_counters_get(&c0);
	b = answer("controlplane.tailscale.com", &len);
	assert_string_equal(b, published);
	free(b);
	bootstrap_dns_counters_get(&c1);
	assert_int_equal(c1.unpublished_hits - c0.unpublished_hits, 1);
	assert_int_equal(c1.unpublished_percent_misses - c0.unpublished_percent_misses, 1);
	assert_int_equal(c1.unpublished_misses - c0.unpublished_misses, 1);

	/* a name in the published map with no addresses is a published miss */
	pub = dns_map_new();
	assert_int_equal(dns_map_set(pub, "empty.example", NULL, 0, 1.0), 0);
	bootstrap_dns_install(pub, NULL);
	bootstrap_dns_counters_get(&c0);
	b = answer("empty.example", &len);
	assert_string_equal(b, "{\n\t\"empty.example\": []\n}");
	free(b);
	bootstrap_dns_counters_get(&c1);
	assert_int_equal(c1.published_misses - c0.published_misses, 1);
	bootstrap_dns_install(dns_map_new(), NULL); /* nothing resolved: Go marshals nil as null */
	b = answer(NULL, &len);
	assert_string_equal(b, "null");
	free(b);
}

static void test_queried_domains(void **state)
{
	(void)state;
	struct bootstrap_dns_counters c0, c1;
	bootstrap_dns_counters_get(&c0);
	const char *q[] = { "a.io", "b.io", "c.io", "d.io", "e.io", "e.io", "e.io", "a.io" };
	for (size_t i = 0; i < 8; i++) {
		size_t len;
		free(answer(q[i], &len));
	}
	bootstrap_dns_counters_get(&c1);
	assert_int_equal(c1.queried_domains - c0.queried_domains, 5);
	for (int i = 0; c1.queried_domains <= 500 && i < 600; i++) {
		char name[32];
		snprintf(name, sizeof name, "n%d.example", i);
		size_t len;
		free(answer(name, &len));
		bootstrap_dns_counters_get(&c1);
		if (c1.queried_domains == 0)
			break; /* cleared as it passed 500 */
		assert_true(c1.queried_domains <= 500);
	}
	assert_int_equal(c1.queried_domains, 0);
}

/* ---- real resolution in a namespace of our own ---- */

static int ns_ready;

static json_t *published_json(void)
{
	size_t len;
	char *b = answer(NULL, &len);
	json_t *j = b && len ? json_loads(b, JSON_REJECT_DUPLICATES, NULL) : NULL;
	free(b);
	return j;
}

static int has_addr(json_t *j, const char *name, const char *ip)
{
	json_t *arr = json_object_get(j, name), *v;
	size_t i;
	json_array_foreach(arr, i, v)
		if (strcmp(json_string_value(v), ip) == 0)
			return 1;
	return 0;
}

static void test_resolver_thread(void **state)
{
	(void)state;
	assert_true(ns_ready);
	dnsd_set("pub1.test", 1, "192.0.2.10");
	dnsd_set("pub1.test", 28, "2001:db8::10");
	dnsd_set("pub2.test", 1, "192.0.2.20");
	dnsd_set("hidden.test", 1, "192.0.2.30");
	dnsd_set("rollout.test", 16, "100");
	dnsd_set("hidden0.test", 1, "192.0.2.40");
	dnsd_set("rollout0.test", 16, "abc"); /* malformed: 0 % */
	bootstrap_dns_install(dns_map_new(), dns_map_new());
	char err[128];
	assert_int_equal(bootstrap_dns_start("pub1.test,pub2.test,missing.test",
					     "hidden.test/rollout.test,hidden0.test/rollout0.test",
					     err, sizeof err), 0);
	json_t *j = NULL;
	for (int i = 0; i < 500; i++) { /* the thread resolves at once; 5 s bound */
		j = published_json();
		if (j && json_object_size(j) == 2)
			break;
		json_decref(j);
		j = NULL;
		struct timespec ts = { 0, 10 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	assert_non_null(j);
	assert_int_equal(json_array_size(json_object_get(j, "pub1.test")), 2);
	assert_true(has_addr(j, "pub1.test", "192.0.2.10"));
	assert_true(has_addr(j, "pub1.test", "2001:db8::10"));
	assert_true(has_addr(j, "pub2.test", "192.0.2.20"));
	assert_null(json_object_get(j, "missing.test")); /* failed and never good: left out */
	assert_null(json_object_get(j, "hidden.test"));   /* unpublished: never listed */
	json_decref(j);

	size_t len;
	char *b = answer("hidden.test", &len);
	assert_string_equal(b, "{\n\t\"hidden.test\": [\n\t\t\"192.0.2.30\"\n\t]\n}");
	free(b);
	b = answer("hidden0.test", &len); /* rollout TXT malformed: 0 %, the public list */
	assert_null(strstr(b, "hidden0"));
	assert_non_null(strstr(b, "pub1.test"));
	free(b);

	/* the resolver fails: every name keeps its last good answer */
	dnsd_servfail(1);
	unsigned q0 = dnsd_queries();
	bootstrap_dns_refresh();
	assert_true(dnsd_queries() > q0); /* it did ask */
	j = published_json();
	assert_true(has_addr(j, "pub1.test", "2001:db8::10"));
	assert_true(has_addr(j, "pub2.test", "192.0.2.20"));
	json_decref(j);
	b = answer("hidden.test", &len);
	assert_non_null(strstr(b, "192.0.2.30"));
	free(b);

	/* back, with a new address and a 0 % rollout */
	dnsd_servfail(0);
	dnsd_set("pub2.test", 1, "192.0.2.21");
	dnsd_set("rollout.test", 16, "0");
	bootstrap_dns_refresh();
	j = published_json();
	assert_true(has_addr(j, "pub2.test", "192.0.2.21"));
	assert_false(has_addr(j, "pub2.test", "192.0.2.20"));
	json_decref(j);
	b = answer("hidden.test", &len);
	assert_null(strstr(b, "hidden.test"));
	free(b);

	/* addresses are shuffled on each refresh */
	int seen_v4_first = 0, seen_v6_first = 0;
	for (int i = 0; i < 24 && !(seen_v4_first && seen_v6_first); i++) {
		bootstrap_dns_refresh();
		j = published_json();
		const char *first = json_string_value(json_array_get(json_object_get(j, "pub1.test"), 0));
		if (first && strcmp(first, "192.0.2.10") == 0)
			seen_v4_first = 1;
		else if (first)
			seen_v6_first = 1;
		json_decref(j);
	}
	assert_true(seen_v4_first && seen_v6_first);
	bootstrap_dns_stop();
}

int main(void)
{
	char err[256];
	/* before any thread exists: a private namespace with our resolver */
	if (dnsd_netns_enter(err, sizeof err) != 0 || dnsd_start(err, sizeof err) != 0)
		fprintf(stderr, "test_bootstrap_dns: namespace setup failed: %s\n", err);
	else
		ns_ready = 1;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_nothing_resolved_yet),
		cmocka_unit_test(test_percent),
		cmocka_unit_test(test_unpublished_empty_list),
		cmocka_unit_test(test_queried_domains),
		cmocka_unit_test(test_resolver_thread),
	};
	int rc = cmocka_run_group_tests(tests, NULL, NULL);
	dnsd_stop();
	return rc;
}
