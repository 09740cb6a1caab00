/* server/log.c and server/logsum.c: line format (levels, journald's <N> prefix or the UTC
 * millisecond timestamp), the JOURNAL_STREAM check, addresses and short keys as lines
 * name clients, one write per line under threads, debug lines that cost nothing when
 * off, and the summary lines of a tally. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>
#include <cmocka.h>

#include "server/key.h"
#include "server/log.h"
#include "server/logsum.h"

static size_t fmt(char *out, size_t cap, int journal, int64_t ms, enum log_level lv,
		  enum log_sub sub, const char *f, ...)
{
	va_list ap;
	va_start(ap, f);
	size_t n = log_format(out, cap, journal, ms, lv, sub, f, ap);
	va_end(ap);
	return n;
}

/* 2026-12-07T20:31:02.123Z */
#define MS ((int64_t)1796675462 * 1000 + 123)

static void test_format_plain(void **state)
{
	char b[256];

	(void)state;
	size_t n = fmt(b, sizeof b, 0, MS, LOG_L_INFO, LS_TLS, "reloaded %s %d", "x", 5);
	assert_string_equal(b, "2026-12-07T20:31:02.123Z INFO tls: reloaded x 5\n");
	assert_int_equal(n, strlen(b));
	fmt(b, sizeof b, 0, MS + 877, LOG_L_ERROR, LS_DERPD, "no");
	assert_string_equal(b, "2026-12-07T20:31:03.000Z ERROR derpd: no\n");
	fmt(b, sizeof b, 0, 7, LOG_L_WARN, LS_DNS, "w");
	assert_string_equal(b, "1970-01-01T00:00:00.007Z WARN bootstrap-dns: w\n");
	fmt(b, sizeof b, 0, MS, LOG_L_DEBUG, LS_DERP, "d");
	assert_string_equal(b, "2026-12-07T20:31:02.123Z DEBUG derp: d\n");
}

static void test_format_journal(void **state)
{
	static const struct { enum log_level lv; const char *want; } c[] = {
		{ LOG_L_ERROR, "<3>mesh: m\n" }, { LOG_L_WARN, "<4>mesh: m\n" },
		{ LOG_L_INFO, "<6>mesh: m\n" }, { LOG_L_DEBUG, "<7>mesh: m\n" },
	};
	char b[128];

	(void)state;
	for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
		fmt(b, sizeof b, 1, MS, c[i].lv, LS_MESH, "m");
		assert_string_equal(b, c[i].want);
	}
}

/* One event, one line: inner newlines become spaces, trailing ones go; long messages
 * are cut and still end with a newline. */
static void test_format_one_line(void **state)
{
	char b[64], big[300];

	(void)state;
	fmt(b, sizeof b, 1, 0, LOG_L_DEBUG, LS_HTTP, "a\nb\r\nc\n\n");
	assert_string_equal(b, "<7>http: a b  c\n");
	memset(big, 'x', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	size_t n = fmt(b, sizeof b, 1, 0, LOG_L_INFO, LS_HTTP, "%s", big);
	assert_int_equal(n, sizeof b - 1);
	assert_int_equal(strlen(b), sizeof b - 1);
	assert_int_equal(b[n - 1], '\n');
	assert_int_equal(strncmp(b, "<6>http: xxx", 12), 0);
}

static void test_journal_match(void **state)
{
	char path[] = "/tmp/derpd-log-XXXXXX", js[80];
	struct stat st;

	(void)state;
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	snprintf(js, sizeof js, "%llu:%llu", (unsigned long long)st.st_dev,
		 (unsigned long long)st.st_ino);
	assert_true(log_journal_match(js, fd));
	snprintf(js, sizeof js, "%llu:%llu", (unsigned long long)st.st_dev,
		 (unsigned long long)st.st_ino + 1);
	assert_false(log_journal_match(js, fd)); /* another file: stderr was redirected */
	snprintf(js, sizeof js, "%llu:%llu", (unsigned long long)st.st_dev + 1,
		 (unsigned long long)st.st_ino);
	assert_false(log_journal_match(js, fd));
	snprintf(js, sizeof js, "%llu:%llux", (unsigned long long)st.st_dev,
		 (unsigned long long)st.st_ino);
	assert_false(log_journal_match(js, fd));
	assert_false(log_journal_match("", fd));
	assert_false(log_journal_match(NULL, fd));
	assert_false(log_journal_match("1:2", -1));
	close(fd);
	unlink(path);
}

static void test_addr_and_short_key(void **state)
{
	char out[LOG_ADDR_LEN], ks[8];
	struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(51234) };
	struct sockaddr_in6 in6 = { .sin6_family = AF_INET6, .sin6_port = htons(443) };
	uint8_t key[32];

	(void)state;
	inet_pton(AF_INET, "192.0.2.7", &in.sin_addr);
	log_addr(out, (struct sockaddr *)&in);
	assert_string_equal(out, "192.0.2.7:51234");
	inet_pton(AF_INET6, "2001:db8::1", &in6.sin6_addr);
	log_addr(out, (struct sockaddr *)&in6);
	assert_string_equal(out, "[2001:db8::1]:443");
	inet_pton(AF_INET6, "::ffff:198.51.100.9", &in6.sin6_addr);
	log_addr(out, (struct sockaddr *)&in6);
	assert_string_equal(out, "198.51.100.9:443");
	log_addr(out, NULL);
	assert_string_equal(out, "?");
	/* derper's key.NodePublic.ShortString: "[" + 5 chars of std base64 + "]" */
	for (int i = 0; i < 32; i++)
		key[i] = (uint8_t)i;
	key_short(ks, key); /* base64(00 01 02 03 ...) = "AAECAwQF..." */
	assert_string_equal(ks, "[AAECA]");
	key[0] = 0xfb;
	key[1] = 0xff;
	key_short(ks, key);
	assert_string_equal(ks, "[+/8CA]");
	memset(key, 0, sizeof key);
	key_short(ks, key);
	assert_string_equal(ks, "");
}

static int evaluated;
static int side_effect(void)
{
	return ++evaluated;
}

/* A debug line that is off costs a branch: its arguments are not even evaluated. */
static void test_debug_off_is_free(void **state)
{
	int p[2];
	char b[256];

	(void)state;
	assert_int_equal(pipe(p), 0);
	log_set_output(p[1], 1);
	log_debug_mask = 0;
	log_debug(LS_DERP, "%d", side_effect());
	assert_int_equal(evaluated, 0);
	log_debug_mask = 1u << LS_DERP; /* DERP_DEBUG_LOGS: the derp subsystem only */
	log_debug(LS_TLS, "%d", side_effect());
	assert_int_equal(evaluated, 0);
	log_debug(LS_DERP, "n=%d", side_effect());
	assert_int_equal(evaluated, 1);
	log_debug_mask = 0;
	ssize_t n = read(p[0], b, sizeof b - 1);
	assert_true(n > 0);
	b[n] = '\0';
	assert_string_equal(b, "<7>derp: n=1\n");
	log_set_output(2, 0);
	close(p[0]);
	close(p[1]);
}

/* --verbose: debug for all; derper's DERP_DEBUG_LOGS (a Go boolean): for derp only. */
static void test_init_levels(void **state)
{
	(void)state;
	unsetenv("JOURNAL_STREAM");
	unsetenv("DERP_DEBUG_LOGS");
	log_init(0);
	assert_int_equal(log_debug_mask, 0);
	log_init(1);
	assert_int_equal(log_debug_mask, (1u << LS_N) - 1);
	static const char *const yes[] = { "1", "t", "true", "TRUE", "True" };
	for (size_t i = 0; i < sizeof yes / sizeof *yes; i++) {
		setenv("DERP_DEBUG_LOGS", yes[i], 1);
		log_init(0);
		assert_int_equal(log_debug_mask, 1u << LS_DERP);
	}
	static const char *const no[] = { "0", "false", "yes", "" };
	for (size_t i = 0; i < sizeof no / sizeof *no; i++) {
		setenv("DERP_DEBUG_LOGS", no[i], 1);
		log_init(0);
		assert_int_equal(log_debug_mask, 0);
	}
	unsetenv("DERP_DEBUG_LOGS");
	log_debug_mask = 0;
}

/* Lines from many threads never interleave: each is one write. */
#define THREADS 8
#define LINES 400
static void *writer(void *arg)
{
	char pad[300];
	int id = (int)(intptr_t)arg;

	memset(pad, 'a' + id, sizeof pad - 1);
	pad[sizeof pad - 1] = '\0';
	for (int i = 0; i < LINES; i++)
		log_info(LS_DERP, "t%d %04d %s", id, i, pad);
	return NULL;
}

static void test_atomic_lines(void **state)
{
	char path[] = "/tmp/derpd-log-XXXXXX", line[1024];
	pthread_t t[THREADS];
	int seen[THREADS] = { 0 };

	(void)state;
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	log_set_output(fd, 0);
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&t[i], NULL, writer, (void *)(intptr_t)i), 0);
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	log_set_output(2, 0);
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	int n = 0;
	while (fgets(line, sizeof line, f)) {
		int id, k;
		char *p = strstr(line, " INFO derp: t");
		assert_non_null(p);
		assert_int_equal(sscanf(p, " INFO derp: t%d %d", &id, &k), 2);
		assert_true(id >= 0 && id < THREADS);
		assert_int_equal(k, seen[id]++); /* in order, none lost or torn */
		const char *pad = strchr(strchr(p + 13, ' ') + 1, ' ') + 1;
		for (int i = 0; i < 299; i++)
			assert_int_equal(pad[i], 'a' + id);
		assert_string_equal(pad + 299, "\n");
		n++;
	}
	fclose(f);
	close(fd);
	unlink(path);
	assert_int_equal(n, THREADS * LINES);
}

/* ---- tallies ---- */

static const char *const reasons[] = { "eof", "not_tls", "protocol_version", "other" };

static void test_tally_line(void **state)
{
	static struct log_tally t = LOG_TALLY_INIT(LS_TLS, "failed TLS handshake", reasons, 4);
	char line[400];
	uint64_t tot[4];

	(void)state;
	/* nothing pending: no line */
	pthread_mutex_lock(&t.mu);
	assert_int_equal(log_tally_line_locked(&t, 1000, line, sizeof line), 0);
	pthread_mutex_unlock(&t.mu);
	/* counted by hand (log_tally_add would write its first line at once) */
	pthread_mutex_lock(&t.mu);
	t.first_ms = 1000;
	t.window[0] = 30;
	t.window[1] = 5;
	t.window[2] = 2;
	snprintf(t.last, sizeof t.last, "192.0.2.7:51234: unexpected EOF");
	size_t n = log_tally_line_locked(&t, 60500, line, sizeof line);
	pthread_mutex_unlock(&t.mu);
	assert_int_equal(n, strlen(line));
	assert_string_equal(line, "37 failed TLS handshakes in the last 60s (eof 30, not_tls 5, "
				  "protocol_version 2); last from 192.0.2.7:51234: unexpected EOF");
	/* the window is empty again; most frequent first */
	pthread_mutex_lock(&t.mu);
	assert_int_equal(log_tally_line_locked(&t, 70000, line, sizeof line), 0);
	t.first_ms = 70000;
	t.window[2] = 3;
	t.window[3] = 3;
	t.window[0] = 1;
	log_tally_line_locked(&t, 70200, line, sizeof line);
	pthread_mutex_unlock(&t.mu);
	assert_string_equal(line, "7 failed TLS handshakes in the last 1s (protocol_version 3, "
				  "other 3, eof 1); last from 192.0.2.7:51234: unexpected EOF");
	log_tally_totals(&t, tot); /* by hand: no totals */
	assert_int_equal(tot[0], 0);
}

/* log_tally_add: the first event is written at once, with its peer and detail; the
 * next ones wait for the summary; totals count all. */
static void test_tally_add(void **state)
{
	static struct log_tally t = LOG_TALLY_INIT(LS_DERP, "refused login", reasons, 4);
	int p[2];
	char b[1024];
	uint64_t tot[4];

	(void)state;
	assert_int_equal(pipe(p), 0);
	log_set_output(p[1], 1);
	log_tally_add(&t, 1, "192.0.2.7:4242 [AAECA]", "bad box");
	log_tally_add(&t, 0, "192.0.2.8:1", NULL);
	log_tally_add(&t, 99, NULL, "x"); /* out of range: the last reason, "other" */
	log_set_output(2, 0);
	close(p[1]);
	ssize_t n = read(p[0], b, sizeof b - 1);
	close(p[0]);
	assert_true(n > 0);
	b[n] = '\0';
	assert_string_equal(b, "<6>derp: refused login (not_tls) from 192.0.2.7:4242 [AAECA]: "
			       "bad box; more are summarised every 60s\n");
	log_tally_totals(&t, tot);
	assert_int_equal(tot[0], 1);
	assert_int_equal(tot[1], 1);
	assert_int_equal(tot[3], 1);
	pthread_mutex_lock(&t.mu);
	log_tally_line_locked(&t, t.first_ms + 1, b, sizeof b);
	pthread_mutex_unlock(&t.mu);
	assert_string_equal(b, "2 refused logins in the last 1s (eof 1, other 1); last from ?: x");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_format_plain),
		cmocka_unit_test(test_format_journal),
		cmocka_unit_test(test_format_one_line),
		cmocka_unit_test(test_journal_match),
		cmocka_unit_test(test_addr_and_short_key),
		cmocka_unit_test(test_debug_off_is_free),
		cmocka_unit_test(test_init_levels),
		cmocka_unit_test(test_atomic_lines),
		cmocka_unit_test(test_tally_line),
		cmocka_unit_test(test_tally_add),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
