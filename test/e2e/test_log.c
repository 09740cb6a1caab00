/* derpd's log as an operator reads it (server/log.h): the line format, journald's form
 * when JOURNAL_STREAM names stderr, summaries of failed TLS handshakes (with the metric
 * derpd_tls_handshake_failures_total) and of refused logins, and a quiet --verbose
 * start-up. */
#include <fcntl.h>
#include <poll.h>
#include <regex.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "test/e2e/harness.h"
#include "test/e2e/test_tls_util.h"

#define T 10000 /* ms: bound on one expected event */

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf = NULL;
	size_t n = 0;

	if (f) {
		if (getdelim(&buf, &n, 0, f) < 0) {
			free(buf);
			buf = NULL;
		}
		fclose(f);
	}
	return buf ? buf : strdup("");
}

/* ---- failed TLS handshakes: one summary, not one line each ------------------------- */

enum { R_EOF, R_NOT_TLS, R_PROTO, R_BADCERT, R_N };
static const char *const rname[R_N] = { "eof", "not_tls", "protocol_version",
					"bad_certificate" };

/* Sum what the "tls:" summary lines of the log report, by reason (others in *other). */
static int tally_log(const char *path, int got[R_N], int *other, int *lines)
{
	char *log = slurp(path), *save = NULL;
	int total = 0;

	memset(got, 0, sizeof(int) * R_N);
	*other = *lines = 0;
	for (char *l = strtok_r(log, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
		char *p = strstr(l, " INFO tls: ");
		if (!p)
			continue;
		p += strlen(" INFO tls: ");
		char list[256] = "";
		if (strncmp(p, "failed TLS handshake (", 22) == 0) {
			/* the first in a while, at once: "failed TLS handshake (eof) from ..." */
			char *e = strchr(p + 22, ')');
			if (!e)
				continue;
			snprintf(list, sizeof list, "%.*s 1", (int)(e - p - 22), p + 22);
		} else if (p[0] >= '0' && p[0] <= '9' && strstr(p, " in the last ")) {
			/* "37 failed TLS handshakes in the last 1s (eof 30, not_tls 7); last ..." */
			char *b = strchr(p, '('), *e = b ? strchr(b, ')') : NULL;
			if (!e)
				continue;
			snprintf(list, sizeof list, "%.*s", (int)(e - b - 1), b + 1);
		} else {
			continue;
		}
		(*lines)++;
		char *s2 = NULL;
		for (char *it = strtok_r(list, ",", &s2); it; it = strtok_r(NULL, ",", &s2)) {
			char name[64];
			int n;
			if (sscanf(it, " %63s %d", name, &n) != 2)
				fail_msg("cannot read \"%s\" in: %s", it, l);
			total += n;
			int k = 0;
			while (k < R_N && strcmp(rname[k], name) != 0)
				k++;
			if (k < R_N)
				got[k] += n;
			else
				*other += n;
		}
	}
	free(log);
	return total;
}

/* A connection that sends bytes and waits for the server to close it. */
static void send_and_wait_close(const struct harness_server *s, const char *bytes)
{
	int fd = harness_tcp(s);
	char buf[256];

	if (bytes)
		assert_true(write(fd, bytes, strlen(bytes)) == (ssize_t)strlen(bytes));
	else
		shutdown(fd, SHUT_WR);
	struct pollfd pf = { .fd = fd, .events = POLLIN };
	while (poll(&pf, 1, T) == 1 && read(fd, buf, sizeof buf) > 0)
		;
	close(fd);
}

static void test_tls_summary(void **state)
{
	char tmp[64], certdir[128], other_ca_dir[128], resp[65536];
	struct tu_ca other;
	struct tu_tls t;

	(void)state;
	tu_tmpdir(tmp, sizeof tmp);
	snprintf(certdir, sizeof certdir, "%s/certs", tmp);
	snprintf(other_ca_dir, sizeof other_ca_dir, "%s/other", tmp);
	assert_int_equal(mkdir(other_ca_dir, 0700), 0);
	tu_ca_make(&other, other_ca_dir); /* a CA that did not sign derpd's certificate */
	setenv("DERPD_LOG_SUMMARY_INTERVAL", "1s", 1);
	const char *extra[] = { "-certmode", "manual", "-hostname", "127.0.0.1", "-certdir",
				certdir, "-http-port=-1", NULL };
	struct harness_server *s = harness_start_opts(extra, HARNESS_TLS);
	unsetenv("DERPD_LOG_SUMMARY_INTERVAL");

	int want[R_N] = { 0 };
	for (int i = 0; i < 4; i++, want[R_NOT_TLS]++) /* plain HTTP on the TLS port */
		send_and_wait_close(s, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
	for (int i = 0; i < 3; i++, want[R_EOF]++)     /* closed before a byte was sent */
		send_and_wait_close(s, NULL);
	for (int i = 0; i < 2; i++, want[R_PROTO]++) { /* TLS 1.1 only */
		assert_int_equal(tu_tls_dial(s->port, NULL, NULL, 1, &t), -1);
	}
	/* refuses derpd's certificate (TLS 1.2: its alert says why) */
	assert_int_equal(tu_tls_dial(s->port, NULL, other.pem_path, 2, &t), -1);
	want[R_BADCERT]++;
	int n = 0;
	for (int i = 0; i < R_N; i++)
		n += want[i];

	/* Every failure is in a summary line, with its reason, within an interval or two. */
	int got[R_N], other_n, lines, total = 0;
	int64_t end = harness_now_ms() + T;
	while ((total = tally_log(s->log_path, got, &other_n, &lines)) < n &&
	       harness_now_ms() < end)
		poll(NULL, 0, 50);
	/* The client that refuses the certificate sends its alert and closes with the rest of
	 * our flight unread: its reset can overtake the alert (then it is an eof). */
	int badcert_as_eof = got[R_BADCERT] == 0 && got[R_EOF] == want[R_EOF] + 1;
	if (badcert_as_eof) {
		got[R_EOF]--;
		got[R_BADCERT]++;
		print_message("the bad_certificate handshake was counted as eof (reset first)\n");
	}
	if (total != n || memcmp(got, want, sizeof got) != 0 || other_n) {
		harness_dump_log(s);
		fail_msg("summaries say %d failures (eof %d, not_tls %d, protocol_version %d, "
			 "bad_certificate %d, other %d), want %d (eof %d, not_tls %d, "
			 "protocol_version %d, bad_certificate %d)", total, got[R_EOF],
			 got[R_NOT_TLS], got[R_PROTO], got[R_BADCERT], other_n, n, want[R_EOF],
			 want[R_NOT_TLS], want[R_PROTO], want[R_BADCERT]);
	}
	/* Summarised: far fewer lines than failures (the first at once, the rest per 1 s). */
	if (lines > 4)
		fail_msg("%d summary lines for %d failures", lines, n);
	assert_true(harness_log_contains(s, "; last from 127.0.0.1:"));
	assert_false(harness_log_contains(s, "DEBUG tls:")); /* not one line each */

	/* The same counts on /metrics, every reason present. */
	assert_int_equal(tu_https(s->port, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"
			 "Connection: close\r\n\r\n", resp, sizeof resp), 200);
	static const char *const all[] = { "eof", "timeout", "not_tls", "protocol_version",
					   "no_shared_cipher", "bad_certificate", "unknown_sni",
					   "other" };
	for (size_t i = 0; i < sizeof all / sizeof *all; i++) {
		char series[128];
		snprintf(series, sizeof series,
			 "\nderpd_tls_handshake_failures_total{reason=\"%s\"} ", all[i]);
		const char *p = strstr(resp, series);
		if (!p)
			fail_msg("/metrics lacks %s", series + 1);
		long v = strtol(p + strlen(series), NULL, 10), w = 0;
		for (int k = 0; k < R_N; k++)
			if (strcmp(rname[k], all[i]) == 0)
				w = want[k] + (badcert_as_eof ? (k == R_EOF) - (k == R_BADCERT) : 0);
		if (v != w)
			fail_msg("%s%ld, want %ld", series + 1, v, w);
	}
	assert_non_null(strstr(resp, "# TYPE derpd_tls_handshake_failures_total counter\n"));
	harness_stop(s);
	tu_ca_free(&other);
	tu_rmdir(tmp);
}

/* ---- refused logins: a client without the mesh key asks for WatchConns ------------- */

static int refused_logged(void *arg)
{
	return harness_log_contains(arg, "INFO derp: refused login (no_mesh_key) from 127.0.0.1:");
}

static void test_refused_login(void **state)
{
	(void)state;
	struct harness_server *s = harness_start(NULL);
	struct derp_client *c = harness_client(s, NULL);

	assert_int_equal(derp_client_watch_conns(c), 0);
	harness_expect_closed(c, T);
	derp_client_close(c);
	if (!harness_wait(refused_logged, s, T)) {
		harness_dump_log(s);
		fail_msg("no summary line for the refused WatchConns");
	}
	/* the line names the client by ip:port and short key */
	regex_t re;
	assert_int_equal(regcomp(&re, "refused login \\(no_mesh_key\\) from 127\\.0\\.0\\.1:[0-9]+ "
				 "\\[[A-Za-z0-9+/]{5}\\]: insufficient permissions for watch conns",
				 REG_EXTENDED), 0);
	char *log = slurp(s->log_path);
	int ok = regexec(&re, log, 0, NULL, 0) == 0;
	regfree(&re);
	free(log);
	if (!ok) {
		harness_dump_log(s);
		fail_msg("the refusal does not name ip:port [short key] and the reason");
	}
	harness_stop(s);
}

/* ---- the line format ---------------------------------------------------------------- */

/* derpd on 127.0.0.1:0 with stderr into s->log_path and JOURNAL_STREAM as given (NULL:
 * the "dev:inode" of that very file). Waits for "serving on". */
static struct harness_server *start_logging(const char *journal_stream, const char *flag)
{
	struct harness_server *s = calloc(1, sizeof *s);
	char js[64];
	struct stat st;

	assert_non_null(s);
	snprintf(s->dir, sizeof s->dir, "/tmp/derpd-e2e-XXXXXX");
	assert_non_null(mkdtemp(s->dir));
	snprintf(s->key_path, sizeof s->key_path, "%s/derper.key", s->dir);
	snprintf(s->log_path, sizeof s->log_path, "%s/derpd.log", s->dir);
	int logfd = open(s->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_true(logfd >= 0);
	assert_int_equal(fstat(logfd, &st), 0);
	snprintf(js, sizeof js, "%llu:%llu", (unsigned long long)st.st_dev,
		 (unsigned long long)st.st_ino);
	s->pid = fork();
	assert_true(s->pid >= 0);
	if (s->pid == 0) {
		dup2(logfd, 1);
		dup2(logfd, 2);
		setenv("JOURNAL_STREAM", journal_stream ? journal_stream : js, 1);
		execl(getenv("DERPD_BIN"), "derpd", "-a", "127.0.0.1:0", "-c", s->key_path,
		      "-stun=false", flag ? flag : "-http-port=-1", (char *)NULL);
		_exit(127);
	}
	close(logfd);
	int64_t end = harness_now_ms() + T;
	while (!harness_log_contains(s, "serving on 127.0.0.1:") && harness_now_ms() < end)
		poll(NULL, 0, 10);
	if (!harness_log_contains(s, "serving on 127.0.0.1:")) {
		harness_dump_log(s);
		fail_msg("derpd did not start");
	}
	return s;
}

/* Stop s (SIGTERM, exit 0 within T) and return its whole log. */
static char *stop_logging(struct harness_server *s)
{
	int st = 0;
	int64_t end = harness_now_ms() + T;

	kill(s->pid, SIGTERM);
	while (waitpid(s->pid, &st, WNOHANG) == 0 && harness_now_ms() < end)
		poll(NULL, 0, 10);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	s->pid = 0; /* reaped: harness_stop only checks the log and cleans up */
	char *log = slurp(s->log_path);
	harness_stop(s);
	return log;
}

/* Every line of log matches pattern (extended regex); the first that does not fails. */
static void all_lines_match(const char *log, const char *pattern)
{
	regex_t re;
	char *copy = strdup(log), *save = NULL;
	int n = 0;

	assert_int_equal(regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB), 0);
	for (char *l = strtok_r(copy, "\n", &save); l; l = strtok_r(NULL, "\n", &save), n++)
		if (regexec(&re, l, 0, NULL, 0) != 0)
			fail_msg("line \"%s\" does not match %s; log:\n%s", l, pattern, log);
	regfree(&re);
	free(copy);
	assert_true(n >= 3);
}

/* JOURNAL_STREAM naming stderr: "<N>subsystem: ..." and no timestamp on every line. */
static void test_journal_stream(void **state)
{
	(void)state;
	char *log = stop_logging(start_logging(NULL, NULL));

	all_lines_match(log, "^<[3467]>(derpd|config|derp|tls|cert|acme|http|bootstrap-dns|mesh|"
			     "stun|admission|systemd): [^ ]");
	assert_non_null(strstr(log, "<6>derpd: serving on 127.0.0.1:"));
	assert_non_null(strstr(log, "<6>derpd: stopped\n"));
	free(log);
}

/* JOURNAL_STREAM that names another file (a unit that redirected stderr): timestamps. */
static void test_journal_stream_elsewhere(void **state)
{
	(void)state;
	struct stat st;
	char js[64];

	assert_int_equal(stat("/dev/null", &st), 0);
	snprintf(js, sizeof js, "%llu:%llu", (unsigned long long)st.st_dev,
		 (unsigned long long)st.st_ino);
	char *log = stop_logging(start_logging(js, NULL));
	all_lines_match(log, "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z "
			     "(ERROR|WARN|INFO|DEBUG) [a-z-]+: [^ ]");
	assert_null(strstr(log, "<6>"));
	free(log);
}

/* --verbose start-up and stop: debug lines in the format, and nothing from
 * libmicrohttpd about its options (it warned when the logger was not its first). */
static void test_verbose_startup(void **state)
{
	(void)state;
	char *log = stop_logging(start_logging("", "--verbose"));

	all_lines_match(log, "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z "
			     "(ERROR|WARN|INFO|DEBUG) [a-z-]+: [^ ]");
	assert_null(strstr(log, "MHD_OPTION"));
	assert_null(strstr(log, " WARN "));
	assert_null(strstr(log, " ERROR "));
	free(log);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tls_summary),
		cmocka_unit_test(test_refused_login),
		cmocka_unit_test(test_journal_stream),
		cmocka_unit_test(test_journal_stream_elsewhere),
		cmocka_unit_test(test_verbose_startup),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
