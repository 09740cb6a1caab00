/* The HTTP side of the real binary (SERVER.md §6, §15; CONFORMANCE.md 99-105, 125): every
 * endpoint's status, headers and body, keep-alive and HEAD after the worker's handoff,
 * the 421 for a late DERP upgrade, --derp=false, --home, the debug access rule as seen
 * from loopback (X-Forwarded-For denies), /debug/varz and /metrics linted by promtool and
 * checked against traffic this test made, --metrics-addr, /debug/traffic, and bad HTTP
 * (oversize head, garbage, slowloris) that must harm no one else. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test/e2e/harness.h"
#include "test/e2e/test_http_util.h"

/* ---- endpoints ---- */

static void test_home_page(void **state)
{
	struct harness_server *s = *state;
	assert_int_equal(req(s, "GET", "/", NULL), 200);
	expect_browser_headers(CSP);
	expect_hdr("Content-Type", "text/html; charset=utf-8");
	const char *b = body();
	assert_true(strncmp(b, "<html><body>\n<h1>DERP</h1>\n", 26) == 0);
	assert_non_null(strstr(b, "If you suspect abuse")); /* default -hostname derp.tailscale.com */
	assert_non_null(strstr(b, "Tailscale Security Policies"));
	assert_non_null(strstr(b, "Tailscale Acceptable Use Policies"));
	assert_non_null(strstr(b, "Debug info at <a href='/debug/'>/debug/</a>.")); /* loopback */
	assert_non_null(strstr(b, "https://tailscale.com/kb/1232/derp-servers"));
	assert_non_null(strstr(b, "https://pkg.go.dev/tailscale.com/derp"));
	assert_non_null(strstr(b, "https://github.com/tailscale/tailscale/tree/main/cmd/derper#derp"));
	assert_null(strstr(b, "Status:"));
	assert_string_equal(b + strlen(b) - 17, "\n</body>\n</html>\n");
	size_t len = strlen(b);
	assert_int_equal(strtoul(hdr("Content-Length"), NULL, 10), len);

	/* any unmatched path is the home page; a forwarded request gets no debug link */
	assert_int_equal(req(s, "GET", "/some/where?x=1", "X-Forwarded-For: 1.2.3.4\r\n"), 200);
	assert_null(strstr(body(), "Debug info"));
	assert_non_null(strstr(body(), "<h1>DERP</h1>"));
	assert_int_equal(req(s, "POST", "/", "Content-Length: 5\r\n\r\nhello"), 200);
	/* derper's mux: /derp/sdf is not /derp, so it is the home page (CONFORMANCE 125 is
	 * the bare handler's answer, 426) */
	assert_int_equal(req(s, "GET", "/derp/sdf", NULL), 200);
	/* unclean paths redirect to the clean one, query kept */
	assert_int_equal(req(s, "GET", "/a/../robots.txt?x=1", NULL), 301);
	expect_hdr("Location", "/robots.txt?x=1");
	assert_int_equal(req(s, "GET", "//robots.txt", NULL), 301);
	expect_hdr("Location", "/robots.txt");
}

static void test_robots(void **state)
{
	struct harness_server *s = *state;
	assert_int_equal(req(s, "GET", "/robots.txt", NULL), 200);
	expect_browser_headers(CSP);
	expect_hdr("Content-Type", "text/plain; charset=utf-8");
	expect_hdr("Content-Length", "26");
	assert_string_equal(body(), "User-agent: *\nDisallow: /\n");
	assert_int_equal(req(s, "HEAD", "/robots.txt", NULL), 200);
	expect_hdr("Content-Length", "26");
}

/* CONFORMANCE 99-104 and the edges of the character set and length rule. */
static void test_generate_204(void **state)
{
	struct harness_server *s = *state;
	char x64[65], x65[66];
	memset(x64, 'x', 64);
	x64[64] = '\0';
	memset(x65, 'x', 65);
	x65[65] = '\0';
	struct { const char *challenge, *response; } t[] = {
		{ NULL, NULL },
		{ "input", "response input" },
		{ "ts_derp99b.tailscale.com", "response ts_derp99b.tailscale.com" },
		{ "foo bar", NULL },
		{ x64, NULL /* filled below */ },
		{ x65, NULL },
		{ "aZ09.-_:", "response aZ09.-_:" },
		{ "a/b", NULL }, { "a+b", NULL }, { "a,b", NULL }, { "caf\xc3\xa9", NULL },
		{ "", NULL },
	};
	char r64[80];
	snprintf(r64, sizeof r64, "response %s", x64);
	t[4].response = r64;
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
		char h[256] = "";
		if (t[i].challenge)
			snprintf(h, sizeof h, "X-Tailscale-Challenge: %s\r\n", t[i].challenge);
		assert_int_equal(req(s, "GET", "/generate_204", h), 204);
		expect_hdr("Cache-Control", "no-cache, no-store, must-revalidate, no-transform, max-age=0");
		const char *got = hdr("X-Tailscale-Response");
		if (t[i].response == NULL ? got != NULL : (got == NULL || strcmp(got, t[i].response)))
			fail_msg("challenge \"%s\": got %s", t[i].challenge ? t[i].challenge : "(none)",
				 got ? got : "(absent)");
		assert_null(hdr("Strict-Transport-Security")); /* no browser headers here */
		assert_string_equal(body(), "");
	}
	/* a NUL inside the value: refused as a bad request, or answered without the echo */
	int fd = harness_tcp(s);
	static const char nul[] = "GET /generate_204 HTTP/1.1\r\nHost: x\r\n"
				  "X-Tailscale-Challenge: foo\0bar\r\n\r\n";
	assert_int_equal(send(fd, nul, sizeof nul - 1, MSG_NOSIGNAL), (ssize_t)sizeof nul - 1);
	int st = read_resp(fd, resp, sizeof resp, 0, 5000);
	close(fd);
	assert_true(st == 204 || st == 400);
	assert_null(hdr("X-Tailscale-Response"));
}

static void test_probe(void **state)
{
	struct harness_server *s = *state;
	const char *paths[] = { "/derp/probe", "/derp/latency-check" };
	for (int i = 0; i < 2; i++) {
		assert_int_equal(req(s, "GET", paths[i], NULL), 200);
		expect_hdr("Access-Control-Allow-Origin", "*");
		expect_hdr("Content-Length", "0");
		assert_int_equal(req(s, "HEAD", paths[i], NULL), 200);
		expect_hdr("Access-Control-Allow-Origin", "*");
		assert_int_equal(req(s, "POST", paths[i], "Content-Length: 0\r\n"), 405);
		expect_hdr("Content-Type", "text/plain; charset=utf-8");
		expect_hdr("X-Content-Type-Options", "nosniff");
		assert_null(hdr("Access-Control-Allow-Origin"));
		assert_string_equal(body(), "bogus probe method\n");
		assert_int_equal(req(s, "PUT", paths[i], "Content-Length: 0\r\n"), 405);
	}
}

static void test_derp_without_upgrade(void **state)
{
	struct harness_server *s = *state;
	const char *hs[] = { "", "Upgrade: h2c\r\nConnection: Upgrade\r\n", "Upgrade: \r\n" };
	for (int i = 0; i < 3; i++) {
		assert_int_equal(req(s, "GET", "/derp", hs[i]), 426);
		expect_hdr("Content-Type", "text/plain; charset=utf-8");
		expect_hdr("X-Content-Type-Options", "nosniff");
		assert_string_equal(body(), "DERP requires connection upgrade\n");
	}
}

/* The worker hands the connection over once; it then stays with the HTTP server. */
static void test_keepalive_head_and_late_upgrade(void **state)
{
	struct harness_server *s = *state;
	int fd = harness_tcp(s);
	const char *r1 = "GET /robots.txt HTTP/1.1\r\nHost: x\r\n\r\n";
	const char *r2 = "HEAD /robots.txt HTTP/1.1\r\nHost: x\r\n\r\n";
	const char *r3 = "GET /derp/probe HTTP/1.1\r\nHost: x\r\n\r\n";
	const char *r4 = "GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n";
	send(fd, r1, strlen(r1), MSG_NOSIGNAL);
	assert_int_equal(read_resp(fd, resp, sizeof resp, 0, 5000), 200);
	assert_string_equal(body(), "User-agent: *\nDisallow: /\n");
	send(fd, r2, strlen(r2), MSG_NOSIGNAL);
	assert_int_equal(read_resp(fd, resp, sizeof resp, 1, 5000), 200);
	expect_hdr("Content-Length", "26");
	/* two pipelined requests: the HEAD above left no body bytes behind */
	char both[256];
	snprintf(both, sizeof both, "%s%s", r3, r3);
	send(fd, both, strlen(both), MSG_NOSIGNAL);
	assert_int_equal(read_resp(fd, resp, sizeof resp, 0, 5000), 200);
	assert_int_equal(read_resp(fd, resp, sizeof resp, 0, 5000), 200);
	expect_hdr("Access-Control-Allow-Origin", "*");
	send(fd, r4, strlen(r4), MSG_NOSIGNAL);
	assert_int_equal(read_resp(fd, resp, sizeof resp, 0, 5000), 421);
	expect_hdr("Connection", "close");
	char c;
	assert_int_equal(harness_read_exact(fd, &c, 1, 5000), 0); /* closed: retry fresh */
	close(fd);
	/* and a fresh connection upgrades fine */
	struct derp_client_opts o = harness_opts();
	struct derp_client *a = harness_client(s, &o), *b = harness_client(s, &o);
	harness_relay_check(a, b);
	derp_client_close(a);
	derp_client_close(b);
}

static void test_debug_pages(void **state)
{
	struct harness_server *s = *state;
	assert_int_equal(req(s, "GET", "/debug", NULL), 301);
	expect_hdr("Location", "/debug/");
	assert_int_equal(req(s, "GET", "/debug/", NULL), 200);
	/* derpd's live status page (test_status.c) in place of derper's list; its style is
	 * inline, hence the debug pages' CSP. derper's facts and links are all on it. */
	expect_browser_headers(CSP_DEBUG);
	expect_hdr("Content-Type", "text/html; charset=utf-8");
	expect_hdr("Cache-Control", "no-store");
	const char *b = body();
	assert_true(strncmp(b, "<!DOCTYPE html>\n<html><head>", 28) == 0);
	assert_non_null(strstr(b, "<tr><th>Uptime</th><td id=\"uptime\">"));
	assert_non_null(strstr(b, "<tr><th>Version</th><td id=\"version\">"));
	assert_non_null(strstr(b, "<tr><th>Machine</th><td id=\"machine\">"));
	assert_non_null(strstr(b, "<td id=\"hostname\">derp.tailscale.com</td>"));
	assert_non_null(strstr(b, "<td id=\"mesh-key\">false</td>"));
	assert_non_null(strstr(b, "<li><a href=\"/debug/varz\">/debug/varz</a> (Metrics (Prometheus))</li>"));
	assert_non_null(strstr(b, "<li><a href=\"/debug/check\">/debug/check</a> (Consistency check)</li>"));
	assert_non_null(strstr(b, "<li><a href=\"/debug/traffic\">/debug/traffic</a> (Traffic check)</li>"));

	assert_int_equal(req(s, "GET", "/debug/check", NULL), 200);
	expect_browser_headers(CSP_DEBUG);
	assert_string_equal(body(), "derp.Server ConsistencyCheck okay");
	assert_int_equal(req(s, "GET", "/debug/vars", NULL), 200);
	expect_hdr("Content-Type", "application/json; charset=utf-8");
	assert_non_null(strstr(body(), "\"derp\": {"));
	assert_int_equal(req(s, "GET", "/debug/varz", NULL), 200);
	expect_hdr("Content-Type", "text/plain; charset=utf-8");
	expect_browser_headers(CSP_DEBUG);
	assert_int_equal(req(s, "GET", "/debug/pprof/", NULL), 404);
	assert_string_equal(body(), "404 page not found\n");

	/* denied: any X-Forwarded-For, on every debug page and derpd's /metrics */
	const char *denied[] = { "/debug/", "/debug/varz", "/debug/check", "/debug/traffic",
				 "/debug/nonexistent", "/metrics" };
	for (size_t i = 0; i < sizeof denied / sizeof denied[0]; i++) {
		assert_int_equal(req(s, "GET", denied[i], "X-Forwarded-For: 127.0.0.1\r\n"), 403);
		expect_hdr("Content-Type", "text/plain; charset=utf-8");
		assert_string_equal(body(), "debug access denied\n");
	}
}

static void test_bootstrap_dns_no_names(void **state)
{
	struct harness_server *s = *state;
	double before = harness_metric(s, "bootstrap_dns_requests");
	assert_int_equal(req(s, "GET", "/bootstrap-dns", NULL), 200);
	expect_browser_headers(CSP);
	expect_hdr("Content-Type", "application/json");
	expect_hdr("Connection", "close");
	assert_string_equal(body(), ""); /* nothing ever resolved */
	assert_int_equal(req(s, "GET", "/bootstrap-dns?q=unknown.example", NULL), 200);
	assert_int_equal(req(s, "POST", "/bootstrap-dns?q=a.example", "Content-Length: 0\r\n"), 200);
	assert_true(harness_metric(s, "bootstrap_dns_requests") == before + 3);
	assert_true(harness_metric(s, "bootstrap_dns_unpublished_misses") == 2);
	assert_true(harness_metric(s, "bootstrap_dns_queried_domains") == 2);
}

/* ---- metrics ---- */

static double series(const char *text, const char *name)
{
	char needle[256];
	snprintf(needle, sizeof needle, "\n%s ", name);
	const char *p = strstr(text, needle);
	return p ? strtod(p + strlen(needle), NULL) : NAN;
}

static void test_metrics_values_and_lint(void **state)
{
	struct harness_server *s = *state;
	struct derp_client_opts o = harness_opts();
	struct derp_client *a = harness_client(s, &o), *b = harness_client(s, &o);
	for (int i = 0; i < 3; i++)
		harness_relay_check(a, b); /* 3 x (100 + 77 bytes), 6 packets */
	harness_ping(a, 5000);
	harness_ping(b, 5000);

	assert_int_equal(req(s, "GET", "/debug/varz", NULL), 200);
	static char varz[RESP_MAX], out[65536];
	snprintf(varz, sizeof varz, "%s", body());
	/* derper's names predate the conventions: only these lint complaints are expected */
	int rc = harness_promtool(varz, out, sizeof out);
	if (rc != 0 && rc != 3)
		fail_msg("promtool on /debug/varz: exit %d\n%s", rc, out);
	for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n"))
		if (!strstr(line, "should have \"_total\" suffix") && !strstr(line, "no help text") &&
		    !strstr(line, "abbreviated units") && !strstr(line, "should not have \"_total\""))
			fail_msg("promtool on /debug/varz: %s", line);

	assert_true(series(varz, "derp_accepts") >= 2);
	assert_true(series(varz, "derp_current_connections") == 2);
	assert_true(series(varz, "derp_clients_local") == 2);
	assert_true(series(varz, "derp_clients_total") == 2);
	assert_true(series(varz, "derp_packets_received") == 6);
	assert_true(series(varz, "derp_packets_sent") == 6);
	assert_true(series(varz, "derp_bytes_received") == 3 * 177);
	assert_true(series(varz, "derp_bytes_sent") == 3 * 177);
	assert_true(series(varz, "derp_got_ping") == 2);
	assert_true(series(varz, "derp_sent_pong") == 2);
	assert_true(series(varz, "derp_packets_received_kind{kind=\"other\"}") == 6);
	assert_true(series(varz, "derp_packets_dropped{reason=\"unknown_dest\",kind=\"other\"}") == 0);
	assert_true(series(varz, "process_open_fds") > 5);
	assert_true(series(varz, "process_resident_memory_bytes") > 1e5);
	assert_true(series(varz, "uptime_sec") >= 0);
	assert_non_null(strstr(varz, "\nversion{version=\""));
	assert_non_null(strstr(varz, "derpd_build_info{version=\""));

	/* a drop: a packet to a key nobody has */
	uint8_t nobody[32] = { 1, 2, 3 };
	assert_int_equal(derp_client_send(a, nobody, "hi", 2), 0);
	harness_ping(a, 5000);
	assert_true(harness_metric(s, "derp_packets_dropped{reason=\"unknown_dest\",kind=\"other\"}") == 1);
	assert_true(harness_metric(s, "derp_bytes_dropped{kind=\"other\",reason=\"unknown_dest\"}") == 2);

	/* /metrics: same values, clean for promtool */
	assert_int_equal(req(s, "GET", "/metrics", NULL), 200);
	expect_hdr("Content-Type", "text/plain; version=0.0.4; charset=utf-8");
	static char clean[RESP_MAX];
	snprintf(clean, sizeof clean, "%s", body());
	rc = harness_promtool(clean, out, sizeof out);
	if (rc != 0)
		fail_msg("promtool on /metrics: exit %d\n%s", rc, out);
	assert_true(series(clean, "derp_packets_received_total") == 7);
	assert_true(series(clean, "derp_bytes_received_total") == 3 * 177 + 2);
	assert_true(series(clean, "derp_current_connections") == 2);
	assert_true(series(clean, "derp_packets_dropped_total{reason=\"unknown_dest\",kind=\"other\"}") == 1);
	derp_client_close(a);
	derp_client_close(b);
	assert_true(harness_wait_metric(s, "derp_current_connections", 0, 5000) == 0);
}

static void test_traffic_stream(void **state)
{
	struct harness_server *s = *state;
	struct derp_client_opts o = harness_opts();
	struct derp_client *a = harness_client(s, &o), *b = harness_client(s, &o);
	harness_relay_check(a, b);
	char key[80] = "\"Key\":\"nodekey:";
	for (int i = 0; i < 32; i++)
		snprintf(key + strlen(key), 3, "%02x", derp_client_public_key(a)[i]);
	int fd = harness_tcp(s);
	const char *r = "GET /debug/traffic HTTP/1.1\r\nHost: x\r\n\r\n";
	send(fd, r, strlen(r), MSG_NOSIGNAL);
	assert_true(harness_read_head(fd, resp, sizeof resp, 5000) > 0);
	assert_non_null(strstr(resp, "HTTP/1.1 200 OK\r\n"));
	assert_non_null(strcasestr(resp, "Transfer-Encoding: chunked"));
	/* the first round lists every client with bytes; a later round those that grew */
	static char stream[65536];
	size_t n = 0;
	int64_t end = harness_now_ms() + 8000;
	int rounds = 0;
	while (harness_now_ms() < end && n < sizeof stream - 1) {
		size_t k = harness_read_exact(fd, stream + n, 1, 3000);
		if (k == 0)
			break;
		n++;
		stream[n] = '\0';
		if (n >= 2 && stream[n - 1] == '\n' && stream[n - 2] == '\n' && ++rounds == 1)
			harness_relay_check(a, b); /* grow the counters for round two */
		if (rounds >= 2 && strstr(stream, key))
			break;
	}
	close(fd);
	assert_non_null(strstr(stream, key));
	assert_non_null(strstr(stream, "{\"Sent\":"));
	derp_client_close(a);
	derp_client_close(b);
}

/* ---- servers with other flags ---- */

/* harness_start() opens a DERP connection to learn the key, which -derp=false refuses:
 * start that server by hand; harness_stop() still stops and checks it. */
static struct harness_server *start_without_derp(void)
{
	struct harness_server *s = calloc(1, sizeof *s);
	assert_non_null(s);
	snprintf(s->dir, sizeof s->dir, "/tmp/derpd-e2e-XXXXXX");
	assert_non_null(mkdtemp(s->dir));
	snprintf(s->key_path, sizeof s->key_path, "%s/derper.key", s->dir);
	snprintf(s->log_path, sizeof s->log_path, "%s/derpd.log", s->dir);
	int logfd = open(s->log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(logfd >= 0);
	s->pid = fork();
	if (s->pid == 0) {
		dup2(logfd, 1);
		dup2(logfd, 2);
		execl(getenv("DERPD_BIN"), "derpd", "-a", "127.0.0.1:0", "-c", s->key_path,
		      "-stun=false", "-derp=false", (char *)NULL);
		_exit(127);
	}
	close(logfd);
	for (int i = 0; i < 1000 && s->port == 0; i++) {
		FILE *f = fopen(s->log_path, "r");
		char line[512];
		while (f && fgets(line, sizeof line, f)) {
			const char *p = strstr(line, "serving on 127.0.0.1:");
			if (p)
				s->port = (uint16_t)atoi(p + 21);
		}
		if (f)
			fclose(f);
		poll(NULL, 0, 10);
	}
	assert_true(s->port != 0);
	return s;
}

static void test_derp_disabled(void **state)
{
	(void)state;
	struct harness_server *s = start_without_derp();
	assert_int_equal(req(s, "GET", "/derp", "Upgrade: DERP\r\nConnection: Upgrade\r\n"), 404);
	assert_string_equal(body(), "derp server disabled\n");
	expect_hdr("Content-Type", "text/plain; charset=utf-8");
	assert_int_equal(req(s, "GET", "/derp", NULL), 404);
	assert_int_equal(req(s, "GET", "/", NULL), 200);
	assert_non_null(strstr(body(), "<p>Status: <b>disabled</b></p>"));
	assert_int_equal(req(s, "GET", "/derp/probe", NULL), 200);
	assert_int_equal(req(s, "GET", "/generate_204", NULL), 204);
	assert_int_equal(req(s, "GET", "/bootstrap-dns", NULL), 200);
	harness_stop(s);
}

static void test_home_flags(void **state)
{
	(void)state;
	const char *blank[] = { "-home=blank", "-hostname=relay.example.com", NULL };
	struct harness_server *s = harness_start(blank);
	assert_int_equal(req(s, "GET", "/", NULL), 200);
	expect_hdr("Content-Type", "text/html; charset=utf-8");
	expect_browser_headers(CSP);
	assert_string_equal(body(), "");
	harness_stop(s);

	const char *url[] = { "-home=https://example.com/x?a=b&c", NULL };
	s = harness_start(url);
	assert_int_equal(req(s, "GET", "/anything", NULL), 302);
	expect_hdr("Location", "https://example.com/x?a=b&c");
	assert_string_equal(body(), "<a href=\"https://example.com/x?a=b&amp;c\">Found</a>.\n\n");
	assert_int_equal(req(s, "POST", "/", "Content-Length: 0\r\n"), 302);
	harness_stop(s);

	const char *host[] = { "-hostname=relay.example.com", NULL };
	s = harness_start(host);
	assert_int_equal(req(s, "GET", "/", NULL), 200);
	assert_null(strstr(body(), "If you suspect abuse"));
	assert_null(strstr(body(), "Tailscale Security Policies"));
	harness_stop(s);

	/* an unknown --home value is fatal, as in derper */
	pid_t pid = fork();
	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY);
		dup2(null, 2);
		execl(getenv("DERPD_BIN"), "derpd", "-dev", "-home=bogus", (char *)NULL);
		_exit(127);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) != 0);
}

static void test_metrics_addr(void **state)
{
	(void)state;
	const char *extra[] = { "--metrics-addr=127.0.0.1:0", NULL };
	struct harness_server *s = harness_start(extra);
	/* the log names the bound port */
	char path[256];
	snprintf(path, sizeof path, "%s", s->log_path);
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	char line[512];
	int port = 0;
	while (fgets(line, sizeof line, f))
		if (strstr(line, "metrics listening on"))
			sscanf(strstr(line, "(port "), "(port %d)", &port);
	fclose(f);
	assert_true(port > 0);
	struct harness_server m = *s;
	m.port = (uint16_t)port;
	assert_int_equal(req(&m, "GET", "/metrics", "X-Forwarded-For: 8.8.8.8\r\n"), 200);
	assert_non_null(strstr(body(), "\n# TYPE derp_accepts_total counter\n"));
	assert_int_equal(req(&m, "GET", "/debug/varz", NULL), 200);
	assert_non_null(strstr(body(), "\n# TYPE derp_accepts counter\n"));
	assert_int_equal(req(&m, "GET", "/", NULL), 404);
	assert_int_equal(req(&m, "GET", "/debug/", NULL), 404);
	harness_stop(s);
}

/* ---- bad HTTP ---- */

static int served_quickly(const struct harness_server *s)
{
	int64_t t0 = harness_now_ms();
	int st = req(s, "GET", "/robots.txt", NULL);
	return st == 200 && harness_now_ms() - t0 < 2000;
}

static void test_bad_http(void **state)
{
	struct harness_server *s = *state;
	/* an oversize head: an error status or a close, never a 2xx */
	static char big[200 * 1024];
	int n = snprintf(big, sizeof big, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: ");
	memset(big + n, 'a', sizeof big - (size_t)n - 8);
	memcpy(big + sizeof big - 8, "\r\n\r\n", 5);
	int fd = harness_tcp(s);
	send(fd, big, strlen(big), MSG_NOSIGNAL);
	int st = read_resp(fd, resp, sizeof resp, 0, 5000);
	close(fd);
	if (st >= 0 && (st < 400 || st > 499))
		fail_msg("oversize head answered %d", st);
	assert_true(served_quickly(s));

	/* garbage: a TLS ClientHello to the plain listener, random bytes, a bare newline */
	const char *garbage[] = { "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
				  "\x01\x02\x03\x04\r\n\r\n", "\r\n\r\n", "GET\r\n\r\n",
				  "GET / HTTP/9.9\r\n\r\n", "G\xc3\xa9T / HTTP/1.1\r\nHost: x\r\n\r\n" };
	for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++) {
		fd = harness_tcp(s);
		send(fd, garbage[i], strlen(garbage[i]), MSG_NOSIGNAL);
		shutdown(fd, SHUT_WR);
		st = read_resp(fd, resp, sizeof resp, 0, 5000);
		close(fd);
		if (st >= 0 && st < 400)
			fail_msg("garbage %zu answered %d", i, st);
	}
	assert_true(served_quickly(s));

	/* slowloris on the handed-over side: finish one request, trickle the next forever.
	 * More than the per-address limit from 127.0.0.1 hurts only 127.0.0.1. */
	enum { SLOW = 80 };
	int slow[SLOW];
	for (int i = 0; i < SLOW; i++) {
		slow[i] = tcp_from(s, "127.0.0.1");
		const char *r = "GET /derp/probe HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost:";
		send(slow[i], r, strlen(r), MSG_NOSIGNAL);
	}
	/* a different client address is served at once, DERP included */
	fd = tcp_from(s, "127.0.0.2");
	const char *r = "GET /robots.txt HTTP/1.1\r\nHost: x\r\n\r\n";
	int64_t t0 = harness_now_ms();
	send(fd, r, strlen(r), MSG_NOSIGNAL);
	assert_int_equal(read_resp(fd, resp, sizeof resp, 0, 2000), 200);
	assert_true(harness_now_ms() - t0 < 2000);
	close(fd);
	struct derp_client_opts o = harness_opts();
	struct derp_client *a = harness_client(s, &o), *b = harness_client(s, &o);
	harness_relay_check(a, b);
	/* slowloris before the handoff: heads that never finish */
	int early[SLOW];
	for (int i = 0; i < SLOW; i++) {
		early[i] = tcp_from(s, "127.0.0.3");
		send(early[i], "GET / HTTP/1.1\r\nHo", 18, MSG_NOSIGNAL);
	}
	fd = tcp_from(s, "127.0.0.4");
	t0 = harness_now_ms();
	send(fd, r, strlen(r), MSG_NOSIGNAL);
	assert_int_equal(read_resp(fd, resp, sizeof resp, 0, 2000), 200);
	assert_true(harness_now_ms() - t0 < 2000);
	close(fd);
	harness_relay_check(a, b);
	for (int i = 0; i < SLOW; i++) {
		close(slow[i]);
		close(early[i]);
	}
	derp_client_close(a);
	derp_client_close(b);
	/* once the HTTP thread has seen those closes, 127.0.0.1 is welcome again */
	int ok = 0;
	for (int i = 0; i < 20 && !ok; i++)
		if (!(ok = served_quickly(s)))
			poll(NULL, 0, 100);
	assert_true(ok);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_home_page, harness_setup, harness_teardown),
		cmocka_unit_test_setup_teardown(test_robots, harness_setup, harness_teardown),
		cmocka_unit_test_setup_teardown(test_generate_204, harness_setup, harness_teardown),
		cmocka_unit_test_setup_teardown(test_probe, harness_setup, harness_teardown),
		cmocka_unit_test_setup_teardown(test_derp_without_upgrade, harness_setup, harness_teardown),
		cmocka_unit_test_setup_teardown(test_keepalive_head_and_late_upgrade, harness_setup,
						harness_teardown),
		cmocka_unit_test_setup_teardown(test_debug_pages, harness_setup, harness_teardown),
		cmocka_unit_test_setup_teardown(test_bootstrap_dns_no_names, harness_setup,
						harness_teardown),
		cmocka_unit_test_setup_teardown(test_metrics_values_and_lint, harness_setup,
						harness_teardown),
		cmocka_unit_test_setup_teardown(test_traffic_stream, harness_setup, harness_teardown),
		cmocka_unit_test(test_derp_disabled),
		cmocka_unit_test(test_home_flags),
		cmocka_unit_test(test_metrics_addr),
		cmocka_unit_test_setup_teardown(test_bad_http, harness_setup, harness_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
