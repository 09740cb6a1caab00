/* The libmicrohttpd daemons and derper's URL routing (SERVER.md §6). The main daemon has
 * no listener: workers hand it connections whose first request is not a DERP upgrade.
 * In TLS mode a second daemon owns the plain-HTTP port-80 listener (§6.6, port80.c) and
 * routes into the same handlers; --metrics-addr adds a third. Each daemon has one internal
 * epoll thread; nothing here blocks (scrapes read relaxed per-worker counters, bootstrap
 * DNS reads a cache, /debug/traffic streams from a thread of its own), so a slow HTTP
 * client costs only its own connection. */
#include "metrics/internal.h"

#include "server/config.h"
#include "server/listenfds.h"
#include "server/log.h"
#include "server/server.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef DERPD_VERSION
#define DERPD_VERSION "unknown"
#endif

static const struct config *cfg;
static struct MHD_Daemon *main_daemon, *metrics_daemon;
static struct conntab *main_tab, *metrics_tab;
static int metrics_port;
static int metrics_cls; /* on_request's cls: which listener */
static int seen;        /* *state after a request's first call */
static int star, star_seen; /* the same for a request-target of "*" */
static time_t started;
static int show_abuse_info;

static const char *const csp =
	"default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'self'; "
	"block-all-mixed-content; object-src 'none'";
static const char *const csp_debug =
	"default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'self'; "
	"block-all-mixed-content; object-src 'none'; style-src 'self' 'unsafe-inline'";

enum { BROWSER = 1, BROWSER_DEBUG = 2 };

enum MHD_Result httpd_reply(struct MHD_Connection *c, unsigned status, int flags,
			    const char *body, size_t len, ...)
{
	struct MHD_Response *r =
		MHD_create_response_from_buffer(len, (void *)(body ? body : ""), MHD_RESPMEM_MUST_COPY);
	if (r == NULL)
		return MHD_NO;
	if (flags & (BROWSER | BROWSER_DEBUG)) {
		MHD_add_response_header(r, "Strict-Transport-Security",
					"max-age=63072000; includeSubDomains");
		MHD_add_response_header(r, "Content-Security-Policy",
					(flags & BROWSER_DEBUG) ? csp_debug : csp);
		MHD_add_response_header(r, "X-Frame-Options", "DENY");
		MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
	}
	va_list ap;
	va_start(ap, len);
	for (const char *k; (k = va_arg(ap, const char *)) != NULL;) {
		const char *v = va_arg(ap, const char *);
		MHD_add_response_header(r, k, v);
	}
	va_end(ap);
	enum MHD_Result ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

enum MHD_Result httpd_error(struct MHD_Connection *c, unsigned status, const char *msg)
{
	struct mbuf b = { 0 };
	mbuf_printf(&b, "%s\n", msg);
	enum MHD_Result r = httpd_reply(c, status, 0, b.p, b.len, "Content-Type",
					"text/plain; charset=utf-8", "X-Content-Type-Options", "nosniff",
					NULL);
	mbuf_free(&b);
	return r;
}

const char *httpd_header(struct MHD_Connection *c, const char *name)
{
	return MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
}

static const struct sockaddr *peer_of(struct MHD_Connection *c)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	return ci ? ci->client_addr : NULL;
}

int httpd_debug_allowed(struct MHD_Connection *c, const char *method)
{
	const char *xff = httpd_header(c, "X-Forwarded-For");
	return debug_access_allowed(peer_of(c), strcmp(method, "GET") == 0,
				    MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "debugkey"),
				    xff != NULL && xff[0] != '\0');
}

static enum MHD_Result debug_denied(struct MHD_Connection *c)
{
	char msg[160] = "debug access denied";
	if (cfg && cfg->dev) {
		char ip[INET6_ADDRSTRLEN];
		sockaddr_ip_string(peer_of(c), ip, sizeof ip);
		snprintf(msg, sizeof msg, "debug access denied; to permit access, set "
					  "TS_ALLOW_DEBUG_IP=%s", ip);
	}
	return httpd_error(c, 403, msg);
}

enum MHD_Result httpd_redirect(struct MHD_Connection *c, const char *method, unsigned status,
			       const char *url, int flags)
{
	struct mbuf b = { 0 }, loc = { 0 };
	int get_or_head = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
	for (const char *p = url; *p; p++)
		if ((unsigned char)*p >= 0x80)
			mbuf_printf(&loc, "%%%x", (unsigned char)*p);
		else
			mbuf_add(&loc, p, 1);
	if (loc.oom) {
		mbuf_free(&loc);
		return MHD_NO;
	}
	const char *where = loc.p ? loc.p : "";
	if (get_or_head) {
		mbuf_puts(&b, "<a href=\"");
		for (const char *p = url; *p; p++) /* html.EscapeString */
			switch (*p) {
			case '<': mbuf_puts(&b, "&lt;"); break;
			case '>': mbuf_puts(&b, "&gt;"); break;
			case '&': mbuf_puts(&b, "&amp;"); break;
			case '\'': mbuf_puts(&b, "&#39;"); break;
			case '"': mbuf_puts(&b, "&#34;"); break;
			default: mbuf_add(&b, p, 1);
			}
		mbuf_printf(&b, "\">%s</a>.\n\n", status == 301 ? "Moved Permanently" : "Found");
	}
	enum MHD_Result r = get_or_head
		? httpd_reply(c, status, flags, b.p, b.len, "Location", where, "Content-Type",
			      "text/html; charset=utf-8", NULL)
		: httpd_reply(c, status, flags, NULL, 0, "Location", where, NULL);
	mbuf_free(&b);
	mbuf_free(&loc);
	return r;
}

int httpd_prod_hostname(const char *h)
{
	if (strncmp(h, "derp", 4) != 0)
		return 0;
	h += 4 + strcspn(h + 4, ".");
	return strcmp(h, ".tailscale.com") == 0 || strcmp(h, ".tailscale.com.") == 0;
}

/* ---- the pages ---- */

static enum MHD_Result serve_home(struct MHD_Connection *c, const char *method)
{
	const char *home = cfg && cfg->home ? cfg->home : "";
	if (strcmp(home, "blank") == 0)
		return httpd_reply(c, 200, BROWSER, NULL, 0, "Content-Type",
				   "text/html; charset=utf-8", NULL);
	if (home[0] != '\0')
		return httpd_redirect(c, method, 302, home, BROWSER);
	/* upstream's template, with its {{if}} blocks expanded the way Go renders them */
	struct mbuf b = { 0 };
	mbuf_puts(&b, "<html><body>\n<h1>DERP</h1>\n<p>\n  This is a <a href=\"https://tailscale.com/\">"
		      "Tailscale</a> DERP server.\n</p>\n\n<p>\n  It provides STUN, interactive "
		      "connectivity establishment, and relaying of end-to-end encrypted traffic\n  "
		      "for Tailscale clients.\n</p>\n\n");
	if (show_abuse_info)
		mbuf_puts(&b, "\n<p>\n  If you suspect abuse, please contact <a href=\"mailto:"
			      "security@tailscale.com\">security@tailscale.com</a>.\n</p>\n");
	mbuf_puts(&b, "\n\n<p>\n  Documentation:\n</p>\n\n<ul>\n");
	if (show_abuse_info)
		mbuf_puts(&b, "\n  <li><a href=\"https://tailscale.com/security-policies\">Tailscale "
			      "Security Policies</a></li>\n  <li><a href=\"https://tailscale.com/"
			      "tailscale-aup\">Tailscale Acceptable Use Policies</a></li>\n");
	mbuf_puts(&b, "\n  <li><a href=\"https://tailscale.com/kb/1232/derp-servers\">About DERP"
		      "</a></li>\n  <li><a href=\"https://pkg.go.dev/tailscale.com/derp\">Protocol & "
		      "Go docs</a></li>\n  <li><a href=\"https://github.com/tailscale/tailscale/tree/"
		      "main/cmd/derper#derp\">How to run a DERP server</a></li>\n</ul>\n\n");
	if (cfg && !cfg->run_derp)
		mbuf_puts(&b, "\n<p>Status: <b>disabled</b></p>\n");
	mbuf_puts(&b, "\n\n");
	if (httpd_debug_allowed(c, method))
		mbuf_puts(&b, "\n<p>Debug info at <a href='/debug/'>/debug/</a>.</p>\n");
	mbuf_puts(&b, "\n</body>\n</html>\n");
	enum MHD_Result r = httpd_reply(c, 200, BROWSER, b.p, b.len, "Content-Type",
					"text/html; charset=utf-8", NULL);
	mbuf_free(&b);
	return r;
}

static int challenge_ok(const char *s, size_t n)
{
	if (n == 0 || n > 64)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '.' && s[i] != '-' && s[i] != '_' &&
		    s[i] != ':')
			return 0;
	return 1;
}

enum MHD_Result httpd_serve_no_content(struct MHD_Connection *c)
{
	const char *ch = NULL;
	size_t n = 0;
	char resp[80];
	const char *cc = "no-cache, no-store, must-revalidate, no-transform, max-age=0";
	if (MHD_lookup_connection_value_n(c, MHD_HEADER_KIND, "X-Tailscale-Challenge", 21, &ch,
					  &n) == MHD_YES &&
	    challenge_ok(ch, n)) {
		snprintf(resp, sizeof resp, "response %.*s", (int)n, ch);
		return httpd_reply(c, 204, 0, NULL, 0, "X-Tailscale-Response", resp,
				   "Cache-Control", cc, NULL);
	}
	return httpd_reply(c, 204, 0, NULL, 0, "Cache-Control", cc, NULL);
}

static enum MHD_Result serve_probe(struct MHD_Connection *c, const char *method)
{
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return httpd_error(c, 405, "bogus probe method");
	return httpd_reply(c, 200, 0, NULL, 0, "Access-Control-Allow-Origin", "*", NULL);
}

/* /derp reaching libmicrohttpd: never a first request that upgrades (workers keep those). */
static enum MHD_Result serve_derp(struct MHD_Connection *c)
{
	if (cfg && !cfg->run_derp)
		return httpd_error(c, 404, "derp server disabled");
	const char *up = httpd_header(c, "Upgrade");
	char low[16] = "";
	if (up != NULL && strlen(up) < sizeof low)
		for (size_t i = 0; (low[i] = (char)tolower((unsigned char)up[i])) != '\0'; i++)
			;
	if (strcmp(low, "derp") != 0 && strcmp(low, "websocket") != 0) {
		if (up != NULL && up[0] != '\0')
			log_debug(LS_HTTP, "Weird upgrade: \"%s\"", up);
		return httpd_error(c, 426, "DERP requires connection upgrade");
	}
	/* A real upgrade on a connection already served as HTTP (keep-alive): derpd's workers
	 * own DERP connections, so ask the client to retry on a fresh one (RFC 9110 421). */
	struct mbuf b = { 0 };
	mbuf_puts(&b, "DERP upgrade must be the first request on its connection\n");
	enum MHD_Result r = httpd_reply(c, 421, 0, b.p, b.len, "Content-Type",
					"text/plain; charset=utf-8", "Connection", "close", NULL);
	mbuf_free(&b);
	return r;
}

static enum MHD_Result serve_bootstrap_dns(struct MHD_Connection *c)
{
	size_t len = 0;
	char *body = bootstrap_dns_answer(
		MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "q"), peer_of(c), &len);
	/* cross-region and randomized per request: keeping the connection is pointless */
	enum MHD_Result r = httpd_reply(c, 200, BROWSER, body, len, "Content-Type",
					"application/json", "Connection", "close", NULL);
	free(body);
	return r;
}

static enum MHD_Result serve_scrape(struct MHD_Connection *c, int clean, int flags)
{
	struct metrics_snapshot s;
	metrics_gather(&s, cfg);
	struct mbuf b = { 0 };
	if (clean)
		prom_write(&b, &s);
	else
		varz_write(&b, &s);
	metrics_release(&s);
	if (b.oom) {
		mbuf_free(&b);
		return httpd_error(c, 500, "out of memory");
	}
	enum MHD_Result r = httpd_reply(c, 200, flags, b.p, b.len, "Content-Type",
					clean ? "text/plain; version=0.0.4; charset=utf-8"
					: "text/plain; charset=utf-8", NULL);
	mbuf_free(&b);
	return r;
}

static enum MHD_Result serve_debug_index(struct MHD_Connection *c)
{
	struct metrics_snapshot s;
	struct mbuf b = { 0 };

	metrics_gather(&s, cfg);
	status_page(&b, &s, cfg);
	metrics_release(&s);
	enum MHD_Result r = b.oom ? httpd_error(c, 500, "out of memory")
				  : httpd_reply(c, 200, BROWSER_DEBUG, b.p, b.len, "Content-Type",
						"text/html; charset=utf-8", "Cache-Control", "no-store",
						NULL);
	mbuf_free(&b);
	return r;
}

static enum MHD_Result serve_debug(struct MHD_Connection *c, const char *path,
				   const char *method)
{
	if (!httpd_debug_allowed(c, method))
		return debug_denied(c);
	if (strcmp(path, "/debug/") == 0)
		return serve_debug_index(c);
	if (strcmp(path, "/debug/varz") == 0)
		return serve_scrape(c, 0, BROWSER_DEBUG);
	if (strcmp(path, "/debug/vars") == 0) {
		struct metrics_snapshot s;
		metrics_gather(&s, cfg);
		char *j = vars_json(&s);
		metrics_release(&s);
		enum MHD_Result r = httpd_reply(c, 200, BROWSER_DEBUG, j, j ? strlen(j) : 0,
						"Content-Type", "application/json; charset=utf-8",
						NULL);
		free(j);
		return r;
	}
	if (strcmp(path, "/debug/check") == 0) {
		char problems[4096] = "";
		if (server_consistency_check(problems, sizeof problems) != 0)
			return httpd_error(c, 500, problems);
		const char *ok = "derp.Server ConsistencyCheck okay";
		return httpd_reply(c, 200, BROWSER_DEBUG, ok, strlen(ok), "Content-Type",
				   "text/plain; charset=utf-8", NULL);
	}
	if (strcmp(path, "/debug/traffic") == 0) {
		struct MHD_Response *r = traffic_response(c, port80_stream_limit(c));
		if (r == NULL)
			return httpd_error(c, 503, "too many /debug/traffic streams");
		MHD_add_response_header(r, "Strict-Transport-Security",
					"max-age=63072000; includeSubDomains");
		MHD_add_response_header(r, "Content-Security-Policy", csp_debug);
		MHD_add_response_header(r, "X-Frame-Options", "DENY");
		MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
		MHD_add_response_header(r, "Content-Type", "text/plain; charset=utf-8");
		enum MHD_Result ret = MHD_queue_response(c, 200, r);
		MHD_destroy_response(r);
		return ret;
	}
	return httpd_error(c, 404, "404 page not found");
}

void httpd_clean_path(const char *p, char *out, size_t n)
{
	size_t w = 0, len = strlen(p);
	if (n < 2) {
		if (n)
			out[0] = '\0';
		return;
	}
	out[w++] = '/';
	for (size_t r = 0; r < len;) {
		while (r < len && p[r] == '/')
			r++;
		size_t s = r;
		while (r < len && p[r] != '/')
			r++;
		size_t seg = r - s;
		if (seg == 0 || (seg == 1 && p[s] == '.'))
			continue;
		if (seg == 2 && p[s] == '.' && p[s + 1] == '.') {
			if (w > 1) { /* drop the last element */
				w--;
				while (w > 1 && out[w - 1] != '/')
					w--;
				if (w > 1)
					w--;
			}
			continue;
		}
		if (w > 1 && w < n - 1)
			out[w++] = '/';
		for (size_t i = 0; i < seg && w < n - 1; i++)
			out[w++] = p[s + i];
	}
	if (len > 0 && p[len - 1] == '/' && w > 1 && w < n - 1)
		out[w++] = '/';
	out[w] = '\0';
}

static enum MHD_Result add_query_arg(void *cls, enum MHD_ValueKind kind, const char *key,
				     const char *value)
{
	(void)kind;
	struct mbuf *b = cls;
	mbuf_puts(b, b->len && strchr(b->p, '?') ? "&" : "?");
	for (int part = 0; part < 2; part++) {
		const char *s = part ? value : key;
		if (part && s == NULL)
			break;
		if (part)
			mbuf_puts(b, "=");
		for (; *s; s++) {
			if (isalnum((unsigned char)*s) || strchr("-_.~", *s))
				mbuf_add(b, s, 1);
			else
				mbuf_printf(b, "%%%02X", (unsigned char)*s);
		}
	}
	return MHD_YES;
}

enum MHD_Result httpd_route_main(struct MHD_Connection *c, const char *url, const char *method)
{
	if (url[0] != '/')
		return httpd_error(c, 400, "400 Bad Request");
	/* as long as the path (a fixed buffer cut long paths and redirected to the cut) */
	size_t n = strlen(url) + 2;
	char *clean = malloc(n);
	if (clean == NULL)
		return httpd_error(c, 500, "out of memory");
	httpd_clean_path(url, clean, n);
	if (strcmp(clean, url) != 0) {
		struct mbuf loc = { 0 };
		mbuf_puts(&loc, clean);
		free(clean);
		MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, add_query_arg, &loc);
		enum MHD_Result r = loc.oom ? httpd_error(c, 500, "out of memory")
					    : httpd_redirect(c, method, 301, loc.p, 0);
		mbuf_free(&loc);
		return r;
	}
	free(clean);
	if (strcmp(url, "/derp") == 0)
		return serve_derp(c);
	if (strcmp(url, "/derp/probe") == 0 || strcmp(url, "/derp/latency-check") == 0)
		return serve_probe(c, method);
	if (strcmp(url, "/bootstrap-dns") == 0)
		return serve_bootstrap_dns(c);
	if (strcmp(url, "/robots.txt") == 0) {
		const char *t = "User-agent: *\nDisallow: /\n";
		return httpd_reply(c, 200, BROWSER, t, strlen(t), "Content-Type",
				   "text/plain; charset=utf-8", NULL);
	}
	if (strcmp(url, "/generate_204") == 0)
		return httpd_serve_no_content(c);
	if (strcmp(url, "/debug") == 0)
		return httpd_redirect(c, method, 301, "/debug/", 0);
	if (strncmp(url, "/debug/", 7) == 0)
		return serve_debug(c, url, method);
	if (strcmp(url, "/metrics") == 0) /* derpd's extension, guarded like /debug/ */
		return httpd_debug_allowed(c, method) ? serve_scrape(c, 1, 0) : debug_denied(c);
	return serve_home(c, method);
}

/* The first call only announces the request (after Go's head checks, which may answer
 * it there); request bodies (which no endpoint reads) are consumed and dropped; the
 * response goes out on the final call. The port-80 listener has a handler of its own
 * (port80.c). */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
				  const char *method, const char *version, const char *upload,
				  size_t *upload_size, void **state)
{
	(void)upload;
	if (*state == NULL || *state == &star) {
		*state = *state == &star ? &star_seen : &seen;
		enum MHD_Result r;
		int k = httpd_head_check(c, version, &r);
		if (k > 0)
			return r;
		if (k == 0)
			return MHD_YES;
	} else if (*upload_size != 0) {
		*upload_size = 0;
		return MHD_YES;
	}
	conntab_request_read(c);
	if (!httpd_is_token(method)) /* Go refuses these; libmicrohttpd would route them */
		return httpd_bad_request(c, "");
	if (cls == NULL)
		return *state == &star_seen ? httpd_serve_star(c, method)
					    : httpd_route_main(c, url, method);
	/* the --metrics-addr listener: scrapes only, its bind address is the access rule */
	if (strcmp(url, "/metrics") == 0)
		return serve_scrape(c, 1, 0);
	if (strcmp(url, "/debug/varz") == 0)
		return serve_scrape(c, 0, 0);
	return httpd_error(c, 404, "404 page not found");
}

/* Request boundaries for conntab's read limit and idle list (port80.c has its own). */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c)
{
	(void)cls;
	conntab_request_begin(c);
	/* on_request's *state starts here; the raw target "*" is not a path (Go's
	 * RequestURI): libmicrohttpd's url would not tell it from "%2A" */
	return strcmp(uri, "*") == 0 ? &star : NULL;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **state,
			 enum MHD_RequestTerminationCode why)
{
	(void)cls;
	(void)state;
	(void)why;
	conntab_request_end(c);
}

unsigned httpd_idle_timeout_s(int64_t read_ms)
{
	return read_ms < 1000 ? 1 : (unsigned)((read_ms + 999) / 1000);
}

void httpd_log(void *cls, const char *fmt, va_list ap)
{
	(void)cls;
	/* Debug: like derper's filter, per-connection HTTP noise is not news; the daemon
	 * failing to start is reported by its caller. */
	if (log_debug_on(LS_HTTP))
		log_vmsg(LOG_L_DEBUG, LS_HTTP, fmt, ap);
}

/* What accepted connections inherit from their listener. */
static void listen_tune(int fd)
{
	int one = 1;

	if (cfg && cfg->tcp_keepalive_ms > 0) {
		int secs = cfg->tcp_keepalive_ms < 1000 ? 1 : (int)(cfg->tcp_keepalive_ms / 1000);
		setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &secs, sizeof secs);
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &secs, sizeof secs);
	}
	if (cfg && cfg->tcp_user_timeout_ms > 0) {
		unsigned ms = (unsigned)cfg->tcp_user_timeout_ms;
		setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof ms);
	}
}

int httpd_listen_tcp(const char *host, const char *port, const char *what, int *bound,
		     char *err, size_t errlen)
{
	int inherited = listenfds_take(SOCK_STREAM, atoi(port), what); /* derpd.socket */
	if (inherited >= 0) {
		listen_tune(inherited);
		*bound = atoi(port);
		return inherited;
	}
	struct addrinfo hints = { .ai_family = host[0] ? AF_UNSPEC : AF_INET6,
				  .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
	struct addrinfo *res = NULL;
	int rc = getaddrinfo(host[0] ? host : "::", port, &hints, &res);
	if (rc != 0)
		return snprintf(err, errlen, "%s: %s", what, gai_strerror(rc)), -1;
	struct sockaddr_in v4 = { .sin_family = AF_INET, .sin_port = 0 };
	const struct sockaddr *sa = res->ai_addr;
	socklen_t sl = res->ai_addrlen;
	int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1, zero = 0;
	if (fd < 0 && !host[0]) {
		v4.sin_port = ((const struct sockaddr_in6 *)sa)->sin6_port;
		sa = (const struct sockaddr *)&v4;
		sl = sizeof v4;
		fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	}
	if (fd >= 0) {
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (sa->sa_family == AF_INET6 && !host[0])
			setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
		listen_tune(fd);
	}
	if (fd < 0 || bind(fd, sa, sl) != 0 || listen(fd, 128) != 0) {
		snprintf(err, errlen, "%s: %s", what, strerror(errno));
		if (fd >= 0)
			close(fd);
		freeaddrinfo(res);
		return -1;
	}
	freeaddrinfo(res);
	struct sockaddr_storage ss;
	socklen_t ssl = sizeof ss;
	getsockname(fd, (struct sockaddr *)&ss, &ssl);
	*bound = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
					       : ((struct sockaddr_in6 *)&ss)->sin6_port);
	return fd;
}

/* --metrics-addr: "host:port", "[v6]:port" or ":port" -> a listening socket. */
static int listen_on(const char *addr, char *err, size_t errlen)
{
	char host[256], what[300];
	const char *colon = strrchr(addr, ':');
	if (colon == NULL || (size_t)(colon - addr) >= sizeof host)
		return snprintf(err, errlen, "--metrics-addr \"%s\": want host:port", addr), -1;
	memcpy(host, addr, (size_t)(colon - addr));
	host[colon - addr] = '\0';
	char *h = host;
	size_t hl = strlen(h);
	if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
		h[hl - 1] = '\0';
		h++;
	}
	snprintf(what, sizeof what, "--metrics-addr \"%s\"", addr);
	return httpd_listen_tcp(h, colon + 1, what, &metrics_port, err, errlen);
}

int httpd_start(const struct config *c, char *err, size_t errlen)
{
	cfg = c;
	started = time(NULL);
	if (debug_access_init(err, errlen) != 0)
		return -1;
	show_abuse_info = c && c->hostname && httpd_prod_hostname(c->hostname);
	int64_t read_ms = c ? c->http_read_timeout_ms : 30000;
	unsigned idle_s = httpd_idle_timeout_s(read_ms);
	unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_NO_LISTEN_SOCKET |
			 MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
	if (conntab_start() != 0)
		return snprintf(err, errlen, "cannot start the HTTP reaper thread"), -1;
	if (status_start() != 0) {
		httpd_stop();
		return snprintf(err, errlen, "cannot start the status sampler thread"), -1;
	}
	main_tab = conntab_new(HTTP_MAX_CONNECTIONS, read_ms, 1);
	if (main_tab == NULL) {
		httpd_stop();
		return snprintf(err, errlen, "out of memory"), -1;
	}
	/* Go's IdleTimeout is its ReadTimeout: the idle timeout here; the whole-request read
	 * limit is conntab's (libmicrohttpd restarts its timer on every byte). */
	/* The logger comes first: libmicrohttpd logs through what is set when a message
	 * arises, and says so (with --verbose) if it is not the first option. */
	main_daemon = MHD_start_daemon(
		flags, 0, NULL, NULL, on_request, NULL,
		MHD_OPTION_EXTERNAL_LOGGER, httpd_log, NULL,
		MHD_OPTION_CONNECTION_TIMEOUT, idle_s,
		MHD_OPTION_CONNECTION_LIMIT, conntab_mhd_limit(main_tab),
		MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)HTTP_PER_IP_LIMIT,
		MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)HTTP_HEAD_MEMORY,
		MHD_OPTION_NOTIFY_CONNECTION, conntab_notify, main_tab,
		MHD_OPTION_URI_LOG_CALLBACK, on_uri, NULL,
		MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL, MHD_OPTION_END);
	if (main_daemon == NULL) {
		httpd_stop();
		return snprintf(err, errlen, "libmicrohttpd: cannot start the HTTP daemon"), -1;
	}
	if (c && c->metrics_addr && c->metrics_addr[0]) {
		int fd = listen_on(c->metrics_addr, err, errlen);
		if (fd < 0) {
			httpd_stop();
			return -1;
		}
		metrics_tab = conntab_new(64, read_ms, 0);
		metrics_daemon = metrics_tab == NULL ? NULL : MHD_start_daemon(
			MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG, 0, conntab_accept_policy,
			metrics_tab, on_request, &metrics_cls,
			MHD_OPTION_EXTERNAL_LOGGER, httpd_log, NULL, MHD_OPTION_LISTEN_SOCKET, fd,
			MHD_OPTION_CONNECTION_TIMEOUT, idle_s,
			MHD_OPTION_CONNECTION_LIMIT, conntab_mhd_limit(metrics_tab),
			MHD_OPTION_NOTIFY_CONNECTION, conntab_notify, metrics_tab,
			MHD_OPTION_URI_LOG_CALLBACK, on_uri, NULL,
			MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL, MHD_OPTION_END);
		if (metrics_daemon == NULL) {
			close(fd);
			httpd_stop();
			return snprintf(err, errlen, "libmicrohttpd: cannot start the metrics listener"), -1;
		}
		log_info(LS_HTTP, "metrics listening on %s (port %d)", c->metrics_addr, metrics_port);
	}
	if (c && c->tls && c->http_port >= 0 && port80_start(c, err, errlen) != 0) {
		httpd_stop();
		return -1;
	}
	if (bootstrap_dns_start(c ? c->bootstrap_dns_names : "",
				c ? c->unpublished_bootstrap_dns_names : "", err, errlen) != 0) {
		httpd_stop();
		return -1;
	}
	return 0;
}

/* Answer a connection libmicrohttpd will not see, and close it. The head was only
 * peeked: read what is there first, or the close would reset the connection and the
 * client might never see the answer. */
static void answer_and_close(int fd, const char *resp, size_t len)
{
	char sink[4096];
	for (int i = 0; i < 16 && recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0; i++)
		;
	if (send(fd, resp, len, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
		log_debug(LS_HTTP, "answer before close: %s", strerror(errno));
	shutdown(fd, SHUT_WR);
	close(fd);
}

/* libmicrohttpd cuts header values at a NUL, so "X: a\0b" would reach a handler as "a".
 * Go refuses control bytes in a request head with 400; check the (still unread, only
 * peeked) head of the first request the same way before handing the socket over. */
static int head_has_control_bytes(int fd)
{
	char buf[16 * 1024]; /* what a worker peeks */
	ssize_t n = recv(fd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
	if (n <= 0)
		return 0;
	const char *end = memmem(buf, (size_t)n, "\r\n\r\n", 4);
	size_t len = end ? (size_t)(end - buf) : (size_t)n;
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)buf[i];
		if ((ch < 0x20 && ch != '\t' && ch != '\r' && ch != '\n') || ch == 0x7f)
			return 1;
	}
	return 0;
}

int httpd_add_connection(int fd, const struct sockaddr *peer, socklen_t peerlen)
{
	struct sockaddr_storage ss;
	if (main_daemon == NULL) {
		close(fd);
		errno = ENOTCONN;
		return -1;
	}
	if (peer == NULL) {
		peerlen = sizeof ss;
		if (getpeername(fd, (struct sockaddr *)&ss, &peerlen) != 0)
			memset(&ss, 0, peerlen = sizeof(struct sockaddr_in));
		peer = (struct sockaddr *)&ss;
	}
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0)
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	if (head_has_control_bytes(fd)) {
		static const char bad[] = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; "
					  "charset=utf-8\r\nConnection: close\r\nContent-Length: 15"
					  "\r\n\r\n400 Bad Request";
		answer_and_close(fd, bad, sizeof bad - 1);
		return 0;
	}
	if (!conntab_reserve(main_tab)) {
		/* every slot is busy with a request in progress: Go would queue it without
		 * bound; refusing keeps memory, descriptors and the daemon's thread bounded */
		static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
					   "text/plain; charset=utf-8\r\nConnection: close\r\n"
					   "Retry-After: 1\r\nContent-Length: 24\r\n\r\n"
					   "503 Service Unavailable\n";
		answer_and_close(fd, busy, sizeof busy - 1);
		return 0;
	}
	if (MHD_add_connection(main_daemon, fd, peer, peerlen) != MHD_YES) {
		conntab_unreserve(main_tab, 1); /* e.g. the per-address limit; fd is closed */
		return -1;
	}
	return 0;
}

int httpd_metrics_port(void)
{
	return metrics_daemon ? metrics_port : 0;
}

void httpd_stop(void)
{
	conntab_stop(); /* nothing shuts a socket down while the daemons close them */
	traffic_shutdown();
	if (metrics_daemon) {
		MHD_stop_daemon(metrics_daemon);
		metrics_daemon = NULL;
	}
	port80_stop();
	if (main_daemon) {
		MHD_stop_daemon(main_daemon);
		main_daemon = NULL;
	}
	conntab_free(main_tab);
	conntab_free(metrics_tab);
	main_tab = metrics_tab = NULL;
	bootstrap_dns_stop();
	status_stop();
	metrics_port = 0;
}
