/* Rate-config loader and token bucket (server/ratelimit.h): CONFORMANCE 80 and 84 at the
 * unit level, 88-93, and Go's json rules for the file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "server/ratelimit.h"

static char dir[64];

static int make_dir(void **state)
{
	(void)state;
	snprintf(dir, sizeof dir, "/tmp/derpd-rl-XXXXXX");
	return mkdtemp(dir) ? 0 : -1;
}

static int remove_dir(void **state)
{
	char cmd[128];
	(void)state;
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static const char *write_file(const char *name, const char *content)
{
	static char path[128];
	FILE *f;

	snprintf(path, sizeof path, "%s/%s", dir, name);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(content, f);
	fclose(f);
	return path;
}

static int parse(const char *json, struct rate_config *rc)
{
	char err[200] = "";
	int r = rate_config_parse(json, strlen(json), rc, err, sizeof err);
	if (r != 0)
		assert_true(err[0]); /* every failure says why */
	return r;
}

/* 88 */
static void test_parse_conformance(void **state)
{
	(void)state;
	struct rate_config rc;

	assert_int_equal(parse("{\"PerClientRateLimitBytesPerSec\": 1, \"PerClientRateBurstBytes\": 2}",
			       &rc), 0);
	assert_true(rc.bytes_per_sec == 1 && rc.burst == 2);
	assert_int_equal(parse("{\"PerClientRateLimitBytesPerSec\": 1}", &rc), 0);
	assert_true(rc.bytes_per_sec == 1 && rc.burst == 0);
	assert_int_equal(parse("{\"PerClientRateLimitBytesPerSec\": 0, \"PerClientRateBurstBytes\": 0}",
			       &rc), 0);
	assert_true(rc.bytes_per_sec == 0 && rc.burst == 0);
	assert_int_equal(parse("{}", &rc), 0);
	assert_true(rc.bytes_per_sec == 0 && rc.burst == 0);
}

/* Go's encoding/json into struct{ uint64; uint64 }. */
static void test_parse_go_rules(void **state)
{
	(void)state;
	struct rate_config rc;

	/* keys in any case; unknown keys (of any type) ignored; whitespace anywhere */
	assert_int_equal(parse(" {\"perclientratelimitbytespersec\":7,\"PERCLIENTRATEBURSTBYTES\":9,"
			       "\"x\":[1,{\"y\":null}],\"Other\":\"s\"}\n", &rc), 0);
	assert_true(rc.bytes_per_sec == 7 && rc.burst == 9);
	/* the later of two spellings wins */
	assert_int_equal(parse("{\"PerClientRateBurstBytes\":1,\"perclientrateburstbytes\":5}", &rc), 0);
	assert_true(rc.burst == 5);
	/* null leaves a field alone; a top-level null is valid and all zero */
	assert_int_equal(parse("{\"PerClientRateLimitBytesPerSec\":null,\"PerClientRateBurstBytes\":3}",
			       &rc), 0);
	assert_true(rc.bytes_per_sec == 0 && rc.burst == 3);
	assert_int_equal(parse("null", &rc), 0);
	assert_true(rc.bytes_per_sec == 0 && rc.burst == 0);
	/* big values up to INT64_MAX */
	assert_int_equal(parse("{\"PerClientRateLimitBytesPerSec\":9223372036854775807}", &rc), 0);
	assert_true(rc.bytes_per_sec == INT64_MAX);

	static const char *bad[] = {
		"", "   ", "not json", "{", "[]", "[1,2]", "1", "\"x\"", "true",
		"{\"PerClientRateLimitBytesPerSec\": -1}",
		"{\"PerClientRateLimitBytesPerSec\": 1.5}",
		"{\"PerClientRateLimitBytesPerSec\": 1e3}",
		"{\"PerClientRateLimitBytesPerSec\": \"100\"}",
		"{\"PerClientRateLimitBytesPerSec\": true}",
		"{\"PerClientRateBurstBytes\": [1]}",
		"{\"PerClientRateBurstBytes\": {}}",
		"{\"PerClientRateLimitBytesPerSec\": 1} trailing",
		"{\"PerClientRateLimitBytesPerSec\": 1}{}",
		"{\"PerClientRateLimitBytesPerSec\": 1,}",
	};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		rc.bytes_per_sec = 42;
		if (parse(bad[i], &rc) == 0)
			fail_msg("accepted %s", bad[i]);
		assert_true(rc.bytes_per_sec == 42); /* untouched on error */
	}
}

/* The whole uint64 range, as Go's json fills a uint64 (jansson's integers are int64). */
static void test_parse_uint64_range(void **state)
{
	(void)state;
	struct rate_config rc;

	assert_int_equal(parse("{\"PerClientRateLimitBytesPerSec\":9223372036854775808}", &rc), 0);
	assert_true(rc.bytes_per_sec == (uint64_t)INT64_MAX + 1);
	assert_int_equal(parse("{\"PerClientRateLimitBytesPerSec\": 18446744073709551615 ,"
			       "\"PerClientRateBurstBytes\":18446744073709551614}", &rc), 0);
	assert_true(rc.bytes_per_sec == UINT64_MAX && rc.burst == UINT64_MAX - 1);
	/* unknown fields are skipped whatever their number, as Go skips them */
	assert_int_equal(parse("{\"x\":[18446744073709551615,-3,-0,99999999999999999999999,-1.5e9],"
			       "\"y\":{\"z\":-9223372036854775808},\"PerClientRateBurstBytes\":"
			       "9223372036854775809}", &rc), 0);
	assert_true(rc.burst == (uint64_t)INT64_MAX + 2 && rc.bytes_per_sec == 0);
	/* digits inside strings are strings, escaped quotes included */
	assert_int_equal(parse("{\"a\\\"18446744073709551615\":\"-1 \\\" 18446744073709551615\","
			       "\"PerClientRateBurstBytes\":18446744073709551615}", &rc), 0);
	assert_true(rc.burst == UINT64_MAX);

	static const char *bad[] = {
		"{\"PerClientRateLimitBytesPerSec\": 18446744073709551616}",
		"{\"PerClientRateLimitBytesPerSec\": 99999999999999999999999}",
		"{\"PerClientRateLimitBytesPerSec\": -1}",
		"{\"PerClientRateLimitBytesPerSec\": -0}",
		"{\"PerClientRateLimitBytesPerSec\": -9223372036854775808}",
		"{\"PerClientRateLimitBytesPerSec\": -18446744073709551615}",
		"{\"PerClientRateLimitBytesPerSec\": 18446744073709551615.0}",
		"{\"PerClientRateLimitBytesPerSec\": 1.8446744073709551615e19}",
		"{\"PerClientRateLimitBytesPerSec\": 018446744073709551615}",
		"{\"PerClientRateLimitBytesPerSec\": \"18446744073709551615\"}",
		"{\"PerClientRateLimitBytesPerSec\": 18446744073709551615",
		"18446744073709551615",
	};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		rc.bytes_per_sec = 42;
		if (parse(bad[i], &rc) == 0)
			fail_msg("accepted %s", bad[i]);
		assert_true(rc.bytes_per_sec == 42);
	}
}

static void test_applied(void **state)
{
	(void)state;
	struct rate_config a;

	a = rate_config_applied((struct rate_config){ 0, 123456 });
	assert_true(a.bytes_per_sec == 0 && a.burst == 0);
	a = rate_config_applied((struct rate_config){ 1, 2 });
	assert_true(a.bytes_per_sec == 1 && a.burst == RATE_MIN_BURST);
	a = rate_config_applied((struct rate_config){ 5, RATE_MIN_BURST + 1 });
	assert_true(a.bytes_per_sec == 5 && a.burst == RATE_MIN_BURST + 1);
	assert_int_equal(RATE_MIN_BURST, 65536 + 32);
}

/* 89-93 */
static void test_load(void **state)
{
	(void)state;
	struct rate_config rc = { 99, 99 };
	char err[256];
	const char *p;

	/* 89 / 93: errors leave *out alone, so the caller keeps the old config */
	err[0] = '\0';
	assert_int_equal(rate_config_load("", &rc, err, sizeof err), -1);
	assert_string_equal(err, "rate config path is empty");
	assert_int_equal(rate_config_load(NULL, &rc, err, sizeof err), -1);
	err[0] = '\0';
	assert_int_equal(rate_config_load("/nonexistent/derpd/rate.json", &rc, err, sizeof err), -1);
	assert_non_null(strstr(err, "error reading rate config"));
	p = write_file("bad.json", "not json");
	err[0] = '\0';
	assert_int_equal(rate_config_load(p, &rc, err, sizeof err), -1);
	assert_non_null(strstr(err, "error parsing rate config"));
	assert_true(rc.bytes_per_sec == 99 && rc.burst == 99);
	/* a directory is not a file */
	assert_int_equal(rate_config_load(dir, &rc, err, sizeof err), -1);

	/* 90 */
	p = write_file("r.json", "{\"PerClientRateLimitBytesPerSec\": 65568, \"PerClientRateBurstBytes\": 65569}");
	assert_int_equal(rate_config_load(p, &rc, err, sizeof err), 0);
	assert_true(rc.bytes_per_sec == 65568 && rc.burst == 65569);
	/* 91 */
	p = write_file("r.json", "{\"PerClientRateLimitBytesPerSec\": 1250000, \"PerClientRateBurstBytes\": 10}");
	assert_int_equal(rate_config_load(p, &rc, err, sizeof err), 0);
	assert_true(rc.bytes_per_sec == 1250000 && rc.burst == 65568);
	/* 92: rewritten to {} -> everything off */
	p = write_file("r.json", "{}");
	assert_int_equal(rate_config_load(p, &rc, err, sizeof err), 0);
	assert_true(rc.bytes_per_sec == 0 && rc.burst == 0);
	/* burst without a rate is off too */
	p = write_file("r.json", "{\"PerClientRateBurstBytes\": 1000000}");
	assert_int_equal(rate_config_load(p, &rc, err, sizeof err), 0);
	assert_true(rc.bytes_per_sec == 0 && rc.burst == 0);
	/* 93 after a good load */
	rc = (struct rate_config){ 7, 70000 };
	assert_int_equal(rate_config_load("/nonexistent/x.json", &rc, err, sizeof err), -1);
	assert_true(rc.bytes_per_sec == 7 && rc.burst == 70000);
}

/* 84 */
static void test_bucket_wait(void **state)
{
	(void)state;
	struct token_bucket b;

	tb_init(&b, 1000, 5000, 0);
	/* n <= available: no wait */
	assert_int_equal(tb_take(&b, 3000, 0), 0);
	assert_int_equal(tb_take(&b, 2000, 0), 0);
	/* exhausted: a positive wait, exactly what refills n at 1000 B/s */
	int64_t w = tb_take(&b, 500, 0);
	assert_int_equal(w, 500);
	/* cancelled while waiting: nothing was taken, so the bucket is unchanged */
	assert_int_equal(tb_take(&b, 500, 250), 250);
	assert_int_equal(tb_take(&b, 500, 500), 0);
	/* n > burst: an error at once, whatever the tokens */
	tb_init(&b, 1000, 5000, 0);
	assert_int_equal(tb_take(&b, 5001, 0), -1);
	assert_int_equal(tb_take(&b, 5000, 0), 0); /* and it took nothing */
}

/* 80, at the unit level: rate 65568, burst 65568. */
static void test_bucket_throttled(void **state)
{
	(void)state;
	struct token_bucket b;

	tb_init(&b, 65568, 65568, 1000);
	assert_int_equal(tb_take(&b, 65568, 1000), 0);
	int64_t w = tb_take(&b, 65568, 1000);
	assert_int_equal(w, 1000);
	assert_true(tb_take(&b, 65568, 1999) > 0);
	assert_int_equal(tb_take(&b, 65568, 2000), 0);
	assert_int_equal(tb_take(&b, 1, 2000), 1); /* 1 byte at 65568 B/s: well under 1 ms */
}

static void test_bucket_refill(void **state)
{
	(void)state;
	struct token_bucket b;

	tb_init(&b, 100, 1000, 0);
	assert_int_equal(tb_take(&b, 1000, 0), 0);
	/* refills at the rate, capped at the burst */
	assert_int_equal(tb_take(&b, 100, 999), 1);
	assert_int_equal(tb_take(&b, 100, 1000), 0);
	assert_int_equal(tb_take(&b, 1000, 100000), 0);
	assert_true(tb_take(&b, 1, 100000) > 0);
	/* a clock that steps back adds nothing and breaks nothing */
	tb_init(&b, 100, 1000, 5000);
	assert_int_equal(tb_take(&b, 1000, 5000), 0);
	assert_true(tb_take(&b, 100, 4000) > 0);
	assert_int_equal(tb_take(&b, 100, 6000), 0);
	/* waiting exactly the time returned is always enough, for awkward rates too */
	static const uint64_t rates[] = { 1, 3, 7, 999, 65567, 65569, 1250000, 123456789 };
	for (size_t i = 0; i < sizeof rates / sizeof *rates; i++) {
		int64_t now = 77;
		tb_init(&b, rates[i], 70000, now);
		for (int k = 0; k < 50; k++) {
			uint64_t n = 1 + (uint64_t)(k * 7919) % 65568;
			int64_t wait = tb_take(&b, n, now);
			assert_true(wait >= 0);
			if (wait > 0) {
				now += wait;
				assert_int_equal(tb_take(&b, n, now), 0);
			}
		}
	}
	/* rate 0: limiting off */
	tb_init(&b, 0, 0, 0);
	for (int i = 0; i < 10; i++)
		assert_int_equal(tb_take(&b, 65568, 0), 0);
}

/* 85: a new config applies in place; the bucket starts full, as upstream's fresh limiter. */
static void test_bucket_set(void **state)
{
	(void)state;
	struct token_bucket b;

	tb_init(&b, 65568, 65568, 0);
	assert_int_equal(tb_take(&b, 65568, 0), 0);
	assert_true(tb_take(&b, 65568, 0) > 0);
	tb_set(&b, 131136, 200000, 10);
	assert_true(b.rate == 131136 && b.burst == 200000);
	assert_int_equal(tb_take(&b, 65568, 10), 0);
	assert_int_equal(tb_take(&b, 65568, 10), 0);
	assert_int_equal(tb_take(&b, 65568, 10), 0);
	assert_true(tb_take(&b, 65568, 10) > 0);
	/* 86: applying an all-zero config turns it off */
	tb_set(&b, 0, 0, 20);
	assert_int_equal(tb_take(&b, 65568, 20), 0);
	assert_int_equal(tb_take(&b, 65568, 20), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_conformance),
		cmocka_unit_test(test_parse_go_rules),
		cmocka_unit_test(test_parse_uint64_range),
		cmocka_unit_test(test_applied),
		cmocka_unit_test(test_load),
		cmocka_unit_test(test_bucket_wait),
		cmocka_unit_test(test_bucket_throttled),
		cmocka_unit_test(test_bucket_refill),
		cmocka_unit_test(test_bucket_set),
	};
	return cmocka_run_group_tests(tests, make_dir, remove_dir);
}
