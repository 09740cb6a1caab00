/* TLS mode's plain-HTTP listener (-http-port; SERVER.md §1, §6.6, §10.4) on the real
 * binary: manual certificates for 127.0.0.1 (self-signed on the spot), -http-port 0, and
 * every routing rule: /generate_204, ACME paths (not manual mode's: redirected), debug
 * pages over plain HTTP with their access rule, "Use HTTPS", the redirects with the
 * client's Host and raw request URI, Go's request checks and ServeMux clean-path
 * redirect, HEAD and keep-alive; the TLS port still relays; which sockets listen with
 * -http-port 0 / -1 / plain HTTP. The HTTP-01 answers of the ACME modes (letsencrypt
 * host policy, --acme-ip-certs) run in-process against a provider whose ACME directory
 * is a closed loopback port, so nothing leaves the machine. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "acme/cert.h"
#include "acme/internal.h"
#include "metrics/httpd.h"
#include "server/config.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test/e2e/harness.h"
#include "test/e2e/test_http_util.h"

static struct harness_server *srv; /* TLS derpd for the group */
static struct harness_server p80;  /* srv with the port-80 listener's port */
static char certdir[64];

/* Port from the "http: serving port-80 HTTP on 127.0.0.1:<port>" log line, 0 if none. */
static uint16_t logged_port80(const struct harness_server *s)
{
	FILE *f = fopen(s->log_path, "r");
	char line[512];
	int port = 0;
	assert_non_null(f);
	while (fgets(line, sizeof line, f)) {
		const char *p = strstr(line, "http: serving port-80 HTTP on 127.0.0.1:");
		if (p)
			port = atoi(p + strlen("http: serving port-80 HTTP on 127.0.0.1:"));
	}
	fclose(f);
	return port > 0 && port < 65536 ? (uint16_t)port : 0;
}

static void rm_certdir(const char *dir)
{
	char path[512];
	DIR *d = opendir(dir);
	for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
		unlink(path);
	}
	if (d)
		closedir(d);
	rmdir(dir);
}

/* derpd in TLS mode (manual, self-signed for 127.0.0.1) with extra arguments after the
 * TLS ones; certs go to a fresh directory of the caller's. */
static struct harness_server *start_tls(char *dir, size_t n, const char *http_port)
{
	char cd[96];
	snprintf(dir, n, "/tmp/derpd-p80-XXXXXX");
	assert_non_null(mkdtemp(dir));
	snprintf(cd, sizeof cd, "%s/certs", dir);
	const char *extra[] = { "-certmode", "manual", "-hostname", "127.0.0.1", "-certdir", cd,
				"-http-port", http_port, NULL };
	return harness_start_opts(extra, HARNESS_TLS);
}

static void stop_tls(struct harness_server *s, const char *dir)
{
	char cd[96];
	harness_stop(s);
	snprintf(cd, sizeof cd, "%s/certs", dir);
	rm_certdir(cd);
	rmdir(dir);
}

static int group_setup(void **state)
{
	(void)state;
	srv = start_tls(certdir, sizeof certdir, "0");
	p80 = *srv;
	p80.port = logged_port80(srv);
	if (p80.port == 0) {
		harness_dump_log(srv);
		fail_msg("no \"serving port-80 HTTP on 127.0.0.1:<port>\" in the log");
	}
	assert_int_not_equal(p80.port, srv->port);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	stop_tls(srv, certdir);
	return 0;
}

/* One raw request on a fresh connection to the port-80 listener. */
static int raw(const char *request, int head_only)
{
	int fd = harness_tcp(&p80);
	assert_int_equal(send(fd, request, strlen(request), MSG_NOSIGNAL), (ssize_t)strlen(request));
	int st = read_resp(fd, resp, sizeof resp, head_only, 5000);
	close(fd);
	return st;
}

/* ---- routing ---- */

static void test_generate_204(void **state)
{
	(void)state;
	static const char *const cc = "no-cache, no-store, must-revalidate, no-transform, max-age=0";
	assert_int_equal(req(&p80, "GET", "/generate_204", "X-Tailscale-Challenge: ab.C-1_2:3\r\n"),
			 204);
	expect_hdr("X-Tailscale-Response", "response ab.C-1_2:3");
	expect_hdr("Cache-Control", cc);
	assert_null(hdr("Strict-Transport-Security"));
	assert_null(hdr("Location"));
	/* a bad challenge: still 204, no response header */
	assert_int_equal(req(&p80, "GET", "/generate_204", "X-Tailscale-Challenge: a!b\r\n"), 204);
	assert_null(hdr("X-Tailscale-Response"));
	char long_ch[128];
	snprintf(long_ch, sizeof long_ch, "X-Tailscale-Challenge: %065d\r\n", 0);
	assert_int_equal(req(&p80, "GET", "/generate_204", long_ch), 204);
	assert_null(hdr("X-Tailscale-Response"));
	assert_int_equal(req(&p80, "GET", "/generate_204", NULL), 204);
	assert_null(hdr("X-Tailscale-Response"));
	expect_hdr("Cache-Control", cc);
	/* any method, as the mux routes it before the port-80 handler */
	assert_int_equal(req(&p80, "POST", "/generate_204", "Content-Length: 2\r\n\r\nhi"), 204);
	assert_int_equal(req(&p80, "HEAD", "/generate_204", NULL), 204);
}

static void test_acme_path_in_manual_mode(void **state)
{
	(void)state;
	/* manual mode has no HTTP-01 handler: derper's fallback redirects the path */
	assert_int_equal(req(&p80, "GET", "/.well-known/acme-challenge/sometoken", NULL), 302);
	expect_hdr("Location", "https://derp.test/.well-known/acme-challenge/sometoken");
}

static void test_debug_over_http(void **state)
{
	(void)state;
	assert_int_equal(req(&p80, "GET", "/debug/", NULL), 200);
	assert_non_null(strstr(body(), "<h2>derper debug</h2>"));
	assert_non_null(strstr(body(), "<td id=\"hostname\">127.0.0.1</td>"));
	expect_browser_headers(CSP_DEBUG);
	assert_int_equal(req(&p80, "GET", "/debug/varz", NULL), 200);
	assert_non_null(strstr(body(), "\n# TYPE derp_accepts counter\n"));
	expect_hdr("Content-Type", "text/plain; charset=utf-8");
	assert_int_equal(req(&p80, "HEAD", "/debug/varz", NULL), 200);
	/* the main routes answer every URI that starts with /debug */
	assert_int_equal(req(&p80, "GET", "/debug", NULL), 301);
	expect_hdr("Location", "/debug/");
	assert_int_equal(req(&p80, "GET", "/debug/nope", NULL), 404);
	assert_int_equal(req(&p80, "GET", "/debugging", NULL), 200); /* the home page */
	assert_non_null(strstr(body(), "<h1>DERP</h1>"));
	assert_int_equal(req(&p80, "POST", "/debug/varz", "Content-Length: 0\r\n"), 200);
	/* /debug/traffic streams here too (the connection waits suspended between rounds) */
	int fd = harness_tcp(&p80);
	const char *r = "GET /debug/traffic HTTP/1.1\r\nHost: h\r\n\r\n";
	assert_int_equal(send(fd, r, strlen(r), MSG_NOSIGNAL), (ssize_t)strlen(r));
	assert_true(harness_read_head(fd, resp, sizeof resp, 5000) > 0);
	assert_non_null(strstr(resp, "HTTP/1.1 200 "));
	expect_hdr("Transfer-Encoding", "chunked");
	char chunk[512] = "";
	size_t got = 0;
	while (got < sizeof chunk - 1 && !strstr(chunk, "1\r\n\n\r\n") && !strstr(chunk, "ss failed") &&
	       harness_read_exact(fd, chunk + got, 1, 5000) == 1)
		chunk[++got] = '\0';
	if (!strstr(chunk, "1\r\n\n\r\n") && !strstr(chunk, "ss failed"))
		fail_msg("no /debug/traffic round within 5 s: \"%s\"", chunk);
	close(fd);
	/* still access-checked */
	assert_int_equal(req(&p80, "GET", "/debug/", "X-Forwarded-For: 1.2.3.4\r\n"), 403);
	assert_string_equal(body(), "debug access denied\n");
	assert_int_equal(req(&p80, "GET", "/debug/varz", "X-Forwarded-For: 1.2.3.4\r\n"), 403);
}

static void test_use_https(void **state)
{
	(void)state;
	assert_int_equal(req(&p80, "POST", "/", "Content-Length: 3\r\n\r\nabc"), 400);
	assert_string_equal(body(), "Use HTTPS\n");
	expect_hdr("Content-Type", "text/plain; charset=utf-8");
	expect_hdr("X-Content-Type-Options", "nosniff");
	assert_int_equal(req(&p80, "PUT", "/foo?x=1", "Content-Length: 0\r\n"), 400);
	assert_string_equal(body(), "Use HTTPS\n");
	assert_int_equal(req(&p80, "DELETE", "/", NULL), 400);
	assert_int_equal(req(&p80, "OPTIONS", "/x", NULL), 400);
}

static void test_redirects(void **state)
{
	(void)state;
	/* "/" from a debug-allowed client (loopback) goes to the debug pages */
	assert_int_equal(req(&p80, "GET", "/", NULL), 302);
	expect_hdr("Location", "https://derp.test/debug/");
	expect_hdr("Content-Type", "text/html; charset=utf-8");
	assert_string_equal(body(), "<a href=\"https://derp.test/debug/\">Found</a>.\n\n");
	assert_null(hdr("Strict-Transport-Security"));
	/* not debug-allowed: X-Forwarded-For denies */
	assert_int_equal(req(&p80, "GET", "/", "X-Forwarded-For: 1.2.3.4\r\n"), 302);
	expect_hdr("Location", "https://derp.test/");
	/* only the request URI "/" exactly */
	assert_int_equal(req(&p80, "GET", "/?x=1", NULL), 302);
	expect_hdr("Location", "https://derp.test/?x=1");
	/* everything else keeps its request URI, query included, as sent */
	assert_int_equal(req(&p80, "GET", "/foo?x=1", NULL), 302);
	expect_hdr("Location", "https://derp.test/foo?x=1");
	assert_string_equal(body(), "<a href=\"https://derp.test/foo?x=1\">Found</a>.\n\n");
	assert_int_equal(req(&p80, "GET", "/a%20b/c?q=%41&r", NULL), 302);
	expect_hdr("Location", "https://derp.test/a%20b/c?q=%41&r");
	assert_int_equal(req(&p80, "GET", "/x?a=<b>&c='\"", NULL), 302);
	assert_string_equal(body(), "<a href=\"https://derp.test/x?a=&lt;b&gt;&amp;c=&#39;&#34;\">"
				    "Found</a>.\n\n");
	/* bytes >= 0x80 are hex-escaped in Location (lower case, as Go) */
	assert_int_equal(raw("GET /caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n", 0), 302);
	expect_hdr("Location", "https://h/caf%c3%a9");
	/* the Host as sent, port included */
	assert_int_equal(raw("GET /foo HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n", 0), 302);
	expect_hdr("Location", "https://127.0.0.1:8080/foo");
	assert_int_equal(raw("GET /foo HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", 0), 302);
	expect_hdr("Location", "https://[::1]:80/foo");
	/* HTTP/1.0 may omit Host */
	assert_int_equal(raw("GET /foo HTTP/1.0\r\n\r\n", 0), 302);
	expect_hdr("Location", "https:///foo");
	/* the ACME prefix without a token is no challenge path either */
	assert_int_equal(req(&p80, "GET", "/.well-known/acme-challenge", NULL), 302);
	expect_hdr("Location", "https://derp.test/.well-known/acme-challenge");
}

/* HEAD gets the head only: the next pipelined response follows it at once. */
static void test_head_and_keepalive(void **state)
{
	(void)state;
	int fd = harness_tcp(&p80);
	const char *r = "HEAD /foo HTTP/1.1\r\nHost: h\r\n\r\n"
			"GET /generate_204 HTTP/1.1\r\nHost: h\r\n\r\n"
			"GET /bar HTTP/1.1\r\nHost: h\r\n\r\n";
	assert_int_equal(send(fd, r, strlen(r), MSG_NOSIGNAL), (ssize_t)strlen(r));
	assert_int_equal(read_resp(fd, resp, sizeof resp, 1, 5000), 302);
	expect_hdr("Location", "https://h/foo");
	assert_int_equal(read_resp(fd, resp, sizeof resp, 0, 5000), 204);
	assert_int_equal(read_resp(fd, resp, sizeof resp, 0, 5000), 302);
	expect_hdr("Location", "https://h/bar");
	/* the connection is still usable afterwards */
	r = "GET /baz HTTP/1.1\r\nHost: h\r\n\r\n";
	assert_int_equal(send(fd, r, strlen(r), MSG_NOSIGNAL), (ssize_t)strlen(r));
	assert_int_equal(read_resp(fd, resp, sizeof resp, 0, 5000), 302);
	expect_hdr("Location", "https://h/baz");
	close(fd);
}

/* What Go's server and ServeMux do before the port-80 handler sees a request. */
static void test_go_request_rules(void **state)
{
	(void)state;
	/* unclean paths: 301 to the cleaned (escaped-again) path, relative, query kept */
	assert_int_equal(req(&p80, "GET", "//a/./b/../c?q=1", NULL), 301);
	expect_hdr("Location", "/a/c?q=1");
	assert_string_equal(body(), "<a href=\"/a/c?q=1\">Moved Permanently</a>.\n\n");
	assert_int_equal(req(&p80, "GET", "/x/../generate_204", NULL), 301);
	expect_hdr("Location", "/generate_204");
	assert_int_equal(req(&p80, "GET", "/a//b/", NULL), 301);
	expect_hdr("Location", "/a/b/");
	assert_int_equal(req(&p80, "GET", "//a%20b", NULL), 301);
	expect_hdr("Location", "/a%2520b"); /* Go's url.URL.String() escapes the '%' again */
	assert_int_equal(req(&p80, "POST", "/a/../", "Content-Length: 0\r\n"), 301);
	expect_hdr("Location", "/");
	/* a bad %-escape, "*", missing / malformed / repeated Host: 400 and close */
	assert_int_equal(raw("GET /%zz HTTP/1.1\r\nHost: h\r\n\r\n", 0), 400);
	assert_string_equal(body(), "400 Bad Request");
	expect_hdr("Connection", "close");
	assert_int_equal(raw("GET * HTTP/1.1\r\nHost: h\r\n\r\n", 0), 400);
	assert_int_equal(raw("GET /foo HTTP/1.1\r\n\r\n", 0), 400);
	assert_string_equal(body(), "400 Bad Request: missing required Host header");
	assert_int_equal(raw("GET /foo HTTP/1.1\r\nHost: a<b>\r\n\r\n", 0), 400);
	assert_string_equal(body(), "400 Bad Request: malformed Host header");
	assert_int_equal(raw("GET /foo HTTP/1.1\r\nHost: a/b\r\n\r\n", 0), 400);
	assert_int_equal(raw("GET /foo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 0), 400);
	assert_string_equal(body(), "400 Bad Request");
	assert_int_equal(raw("GET /foo HTTP/1.1\r\nHost: a\r\nX-A: b\x01" "c\r\n\r\n", 0), 400);
	/* the listener keeps serving */
	assert_int_equal(req(&p80, "GET", "/generate_204", NULL), 204);
}

/* The TLS listener still serves: DERP over TLS logs in and relays. */
static void test_tls_port_serves(void **state)
{
	(void)state;
	struct derp_client_opts o = harness_opts();
	o.tls = o.tls_insecure = 1;
	struct derp_client *a = harness_client(srv, &o), *b = harness_client(srv, &o);
	harness_relay_check(a, b);
	derp_client_close(a);
	derp_client_close(b);
	/* and plain HTTP on the TLS port is not an HTTP answer */
	int fd = harness_tcp(srv);
	const char *r = "GET /generate_204 HTTP/1.1\r\nHost: h\r\n\r\n";
	send(fd, r, strlen(r), MSG_NOSIGNAL);
	assert_true(read_resp(fd, resp, sizeof resp, 0, 5000) != 204);
	close(fd);
}

/* ---- which sockets listen ---- */

/* The ports pid's TCP sockets listen on: how many sockets on each (counts) and the first
 * one's local address as /proc/net/tcp spells it (addrs). Returns the number of ports. */
static int listening_ports(pid_t pid, int ports[], int counts[], int max, char addrs[][64])
{
	char path[64], link[64];
	unsigned long inodes[512];
	int ni = 0, np = 0;
	snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
	DIR *d = opendir(path);
	assert_non_null(d);
	for (struct dirent *e; (e = readdir(d)) != NULL && ni < 512;) {
		char fdp[400];
		snprintf(fdp, sizeof fdp, "%s/%s", path, e->d_name);
		ssize_t n = readlink(fdp, link, sizeof link - 1);
		if (n > 0) {
			link[n] = '\0';
			if (sscanf(link, "socket:[%lu]", &inodes[ni]) == 1)
				ni++;
		}
	}
	closedir(d);
	for (int v6 = 0; v6 < 2; v6++) {
		snprintf(path, sizeof path, "/proc/%d/net/tcp%s", (int)pid, v6 ? "6" : "");
		FILE *f = fopen(path, "r");
		char line[512];
		if (f == NULL)
			continue;
		while (fgets(line, sizeof line, f)) {
			char local[64];
			unsigned st;
			unsigned long inode;
			if (sscanf(line, " %*d: %63s %*s %x %*s %*s %*s %*s %*s %lu", local, &st,
				   &inode) != 3 || st != 0x0A)
				continue;
			int mine = 0;
			for (int i = 0; i < ni; i++)
				mine |= inodes[i] == inode;
			if (!mine)
				continue;
			int port = (int)strtol(strchr(local, ':') + 1, NULL, 16), k;
			for (k = 0; k < np && ports[k] != port; k++)
				;
			if (k == np && np < max) {
				ports[np] = port;
				counts[np] = 0;
				snprintf(addrs[np], sizeof addrs[0], "%s", local);
				np++;
			}
			if (k < max)
				counts[k]++;
		}
		fclose(f);
	}
	return np;
}

static void test_listeners(void **state)
{
	(void)state;
	int ports[8], counts[8];
	char addrs[8][64];
	/* -http-port 0: the main port (one socket per worker) and one port-80 socket, bound
	 * to the IP of -a */
	int np = listening_ports(srv->pid, ports, counts, 8, addrs);
	assert_int_equal(np, 2);
	int k = ports[0] == p80.port ? 0 : 1;
	assert_int_equal(ports[k], p80.port);
	assert_int_equal(counts[k], 1);
	assert_true(strncmp(addrs[k], "0100007F:", 9) == 0); /* 127.0.0.1 */
	assert_int_equal(ports[1 - k], srv->port);

	/* -http-port=-1: no port-80 listener */
	char dir[64];
	struct harness_server *s = start_tls(dir, sizeof dir, "-1");
	np = listening_ports(s->pid, ports, counts, 8, addrs);
	assert_int_equal(np, 1);
	assert_int_equal(ports[0], s->port);
	assert_false(harness_log_contains(s, "port-80"));
	stop_tls(s, dir);

	/* plain HTTP: -http-port is unused, as in derper */
	const char *extra[] = { "-http-port", "0", NULL };
	s = harness_start(extra);
	np = listening_ports(s->pid, ports, counts, 8, addrs);
	assert_int_equal(np, 1);
	assert_int_equal(ports[0], s->port);
	assert_false(harness_log_contains(s, "port-80"));
	harness_stop(s);
}

/* A port that is taken makes start-up fail, as derper's log.Fatal does. */
static void test_port_taken(void **state)
{
	(void)state;
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof a;
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
	assert_int_equal(listen(fd, 1), 0);
	getsockname(fd, (struct sockaddr *)&a, &al);
	char port[16], dir[] = "/tmp/derpd-p80-XXXXXX", cd[64], key[64];
	snprintf(port, sizeof port, "%d", ntohs(a.sin_port));
	assert_non_null(mkdtemp(dir));
	snprintf(cd, sizeof cd, "%s/certs", dir);
	snprintf(key, sizeof key, "%s/k", dir);
	const char *bin = getenv("DERPD_BIN") ? getenv("DERPD_BIN") : "./derpd";
	pid_t pid = fork();
	if (pid == 0) {
		int nul = open("/dev/null", O_WRONLY);
		dup2(nul, 1);
		dup2(nul, 2);
		execl(bin, bin, "-a", "127.0.0.1:0", "-c", key, "-stun=false", "-certmode", "manual",
		      "-hostname", "127.0.0.1", "-certdir", cd, "-http-port", port, (char *)NULL);
		_exit(127);
	}
	int st = 0;
	int64_t end = harness_now_ms() + 10000;
	while (waitpid(pid, &st, WNOHANG) != pid) {
		if (harness_now_ms() > end) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			fail_msg("derpd kept running with its -http-port taken");
		}
		poll(NULL, 0, 10);
	}
	close(fd);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 1);
	unlink(key);
	rm_certdir(cd);
	rmdir(dir);
}

/* ---- the ACME modes' HTTP-01 answers, in-process ---- */

static struct harness_server inproc; /* only .port: harness_http and req() use it */

static int closed_port(int *fd)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof a;
	*fd = socket(AF_INET, SOCK_STREAM, 0); /* bound, never listening: connects are refused */
	assert_int_equal(bind(*fd, (struct sockaddr *)&a, sizeof a), 0);
	getsockname(*fd, (struct sockaddr *)&a, &al);
	return ntohs(a.sin_port);
}

/* Parse derpd's flags, point ACME at a closed loopback port, start the provider and
 * the HTTP side. ip_certs: --acme-ip-certs (refused by the flag parser for now). */
static struct cert_provider *acme_start(struct config *cfg, const char *hostname, int ip_certs,
					char *dir, char *directory, size_t dl)
{
	static const uint8_t pub[32] = { 1, 2, 3 };
	char *argv[] = { "derpd", "-a", "127.0.0.1:443", "-c", "/nonexistent/k", "-certmode",
			 "letsencrypt", "-hostname", (char *)hostname, "-certdir", dir,
			 "-http-port", "0", NULL };
	char err[256];
	int sock;
	assert_int_equal(config_parse(cfg, 13, argv), 0);
	assert_int_equal(cfg->tls, 1);
	snprintf(directory, dl, "http://127.0.0.1:%d/directory", closed_port(&sock));
	cfg->acme_directory = directory;
	cfg->acme_ip_certs = ip_certs;
	struct cert_provider *p = cert_provider_start(cfg, pub, err, sizeof err);
	close(sock);
	if (p == NULL)
		fail_msg("cert_provider_start: %s", err);
	if (httpd_start(cfg, err, sizeof err) != 0)
		fail_msg("httpd_start: %s", err);
	inproc.port = (uint16_t)httpd_port80_port();
	assert_true(inproc.port > 0);
	return p;
}

static void acme_stop(struct cert_provider *p, char *dir)
{
	httpd_stop();
	assert_int_equal(httpd_port80_port(), 0);
	cert_provider_stop(p);
	rm_certdir(dir);
}

static int get_acme(const char *token, const char *host)
{
	char r[512];
	snprintf(r, sizeof r, "GET /.well-known/acme-challenge/%s HTTP/1.1\r\nHost: %s\r\n"
		 "Connection: close\r\n\r\n", token, host);
	return harness_http(&inproc, r, resp, sizeof resp);
}

static void test_acme_letsencrypt(void **state)
{
	(void)state;
	struct config cfg;
	char dir[] = "/tmp/derpd-p80-acme-XXXXXX", directory[64];
	assert_non_null(mkdtemp(dir));
	struct cert_provider *p = acme_start(&cfg, "Derp.Example.test", 0, dir, directory,
					     sizeof directory);
	/* autocert: host policy first (HostWhitelist: the lower-cased name, exactly) */
	assert_int_equal(get_acme("tok1", "other.test"), 403);
	assert_string_equal(harness_http_body(resp),
			    "acme/autocert: host \"other.test\" not configured in HostWhitelist\n");
	assert_int_equal(get_acme("tok1", "derp.example.test:80"), 403);
	assert_int_equal(get_acme("tok1", "Derp.Example.test"), 403);
	/* then the token table, a miss reported as autocert's cache miss */
	assert_int_equal(get_acme("tok1", "derp.example.test"), 404);
	assert_string_equal(harness_http_body(resp), "acme/autocert: certificate cache miss\n");
	assert_int_equal(http01_put("tok1", "tok1.thumbprint"), 0);
	assert_int_equal(get_acme("tok1", "derp.example.test"), 200);
	assert_string_equal(harness_http_body(resp), "tok1.thumbprint");
	assert_non_null(strcasestr(resp, "\r\nContent-Type: text/plain; charset=utf-8\r\n"));
	assert_int_equal(get_acme("tok2", "derp.example.test"), 404);
	http01_del("tok1");
	assert_int_equal(get_acme("tok1", "derp.example.test"), 404);
	/* other paths: the usual port-80 routes */
	assert_int_equal(req(&inproc, "GET", "/foo", NULL), 302);
	expect_hdr("Location", "https://derp.test/foo");
	assert_int_equal(req(&inproc, "GET", "/generate_204", NULL), 204);
	acme_stop(p, dir);

	/* the default hostname: derper's prod policy */
	assert_non_null(mkdtemp(strcpy(dir, "/tmp/derpd-p80-acme-XXXXXX")));
	p = acme_start(&cfg, "derp.tailscale.com", 0, dir, directory, sizeof directory);
	assert_int_equal(get_acme("t", "example.com"), 403);
	assert_string_equal(harness_http_body(resp), "invalid hostname\n");
	assert_int_equal(get_acme("t", "derp1b.tailscale.com"), 404);
	assert_int_equal(get_acme("t", "derp.tailscale.com."), 404);
	assert_int_equal(get_acme("t", "derp02.bar.tailscale.com"), 403);
	acme_stop(p, dir);
}

static void test_acme_ip_certs(void **state)
{
	(void)state;
	struct config cfg;
	char dir[] = "/tmp/derpd-p80-acme-XXXXXX", directory[64];
	assert_non_null(mkdtemp(dir));
	struct cert_provider *p = acme_start(&cfg, "127.0.0.1", 1, dir, directory,
					     sizeof directory);
	/* derper's IP manager answers every challenge path from its table, any Host */
	assert_int_equal(get_acme("ip1", "127.0.0.1"), 404);
	assert_string_equal(harness_http_body(resp), "404 page not found\n");
	assert_int_equal(http01_put("ip1", "ip1.thumbprint"), 0);
	assert_int_equal(get_acme("ip1", "anything.example"), 200);
	assert_string_equal(harness_http_body(resp), "ip1.thumbprint");
	assert_non_null(strcasestr(resp, "\r\nContent-Type: text/plain\r\n"));
	http01_del("ip1");
	acme_stop(p, dir);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest group[] = {
		cmocka_unit_test(test_generate_204),
		cmocka_unit_test(test_acme_path_in_manual_mode),
		cmocka_unit_test(test_debug_over_http),
		cmocka_unit_test(test_use_https),
		cmocka_unit_test(test_redirects),
		cmocka_unit_test(test_head_and_keepalive),
		cmocka_unit_test(test_go_request_rules),
		cmocka_unit_test(test_tls_port_serves),
		cmocka_unit_test(test_listeners),
	};
	const struct CMUnitTest alone[] = {
		cmocka_unit_test(test_port_taken),
		cmocka_unit_test(test_acme_letsencrypt),
		cmocka_unit_test(test_acme_ip_certs),
	};
	int rc = cmocka_run_group_tests(group, group_setup, group_teardown);
	return rc | cmocka_run_group_tests(alone, NULL, NULL);
}
