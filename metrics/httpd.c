/* The libmicrohttpd daemons and derper's URL routing (SERVER.md §6). The main daemon has
 * no listener: workers hand it connections whose first request is not a DERP upgrade.
 * In TLS mode a second daemon owns the plain-HTTP port-80 listener (§6.6) and routes
 * into the same handlers; --metrics-addr adds a third. Each daemon has one internal
 * epoll thread; nothing here blocks (scrapes read relaxed per-worker counters, bootstrap
 * DNS reads a cache, /debug/traffic streams from a thread of its own), so a slow HTTP
 * client costs only its own connection. */
#include "metrics/internal.h"

#include "acme/cert.h"
#include "server/config.h"
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
#include <strings.h>
#include <time.h>
#include <unistd.h>

#ifndef DERPD_VERSION
#define DERPD_VERSION "unknown"
#endif

#define HTTP_TIMEOUT_S 30         /* derper's ReadTimeout / idle timeout */
#define HTTP_MAX_CONNECTIONS 1024 /* HTTP only; DERP connections never count here */
#define HTTP_PER_IP_LIMIT 64
#define HTTP_HEAD_MEMORY (64 * 1024) /* request head limit per connection */
/* derper's port-80 WriteTimeout (there for long profiles). libmicrohttpd's timeout is an
 * idle one, and a suspended stream never idles out, so it bounds /debug/traffic instead:
 * the only response that can run that long. */
#define PORT80_WRITE_TIMEOUT_S 300

static const struct config *cfg;
static struct MHD_Daemon *main_daemon, *metrics_daemon, *port80_daemon;
static int metrics_port, port80_port;
static int metrics_cls, port80_cls; /* on_request's cls: which listener */
static int seen;                    /* *state after a request's first call */
static time_t started;
static int show_abuse_info;

static const char *const csp =
	"default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'self'; "
	"block-all-mixed-content; object-src 'none'";
static const char *const csp_debug =
	"default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'self'; "
	"block-all-mixed-content; object-src 'none'; style-src 'self' 'unsafe-inline'";

enum { BROWSER = 1, BROWSER_DEBUG = 2 };

/* Queue a response built from body (copied); extra headers as name, value pairs, NULL
 * terminated. Go's sniffing gives text bodies "text/plain; charset=utf-8", so callers
 * always name a Content-Type when there is a body. */
static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, int flags,
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

/* Go's http.Error: text/plain, nosniff, the message and a newline. */
static enum MHD_Result http_error(struct MHD_Connection *c, unsigned status, const char *msg)
{
	struct mbuf b = { 0 };
	mbuf_printf(&b, "%s\n", msg);
	enum MHD_Result r = reply(c, status, 0, b.p, b.len, "Content-Type",
				  "text/plain; charset=utf-8", "X-Content-Type-Options", "nosniff",
				  NULL);
	mbuf_free(&b);
	return r;
}

static const char *header(struct MHD_Connection *c, const char *name)
{
	return MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
}

static const struct sockaddr *peer_of(struct MHD_Connection *c)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	return ci ? ci->client_addr : NULL;
}

static int debug_allowed(struct MHD_Connection *c, const char *method)
{
	const char *xff = header(c, "X-Forwarded-For");
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
	return http_error(c, 403, msg);
}

/* Go's http.Redirect body for GET; HEAD gets the headers only (libmicrohttpd drops it).
 * Location gets Go's hexEscapeNonASCII (bytes >= 0x80 as lower-case %xx). */
static enum MHD_Result redirect(struct MHD_Connection *c, const char *method, unsigned status,
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
		? reply(c, status, flags, b.p, b.len, "Location", where, "Content-Type",
			"text/html; charset=utf-8", NULL)
		: reply(c, status, flags, NULL, 0, "Location", where, NULL);
	mbuf_free(&b);
	mbuf_free(&loc);
	return r;
}

/* derper's prod host rule ^derp([^.]*)\.tailscale\.com\.?$ */
static int prod_hostname(const char *h)
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
		return reply(c, 200, BROWSER, NULL, 0, "Content-Type", "text/html; charset=utf-8",
			     NULL);
	if (home[0] != '\0')
		return redirect(c, method, 302, home, BROWSER);
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
	if (debug_allowed(c, method))
		mbuf_puts(&b, "\n<p>Debug info at <a href='/debug/'>/debug/</a>.</p>\n");
	mbuf_puts(&b, "\n</body>\n</html>\n");
	enum MHD_Result r = reply(c, 200, BROWSER, b.p, b.len, "Content-Type",
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

static enum MHD_Result serve_no_content(struct MHD_Connection *c)
{
	const char *ch = NULL;
	size_t n = 0;
	char resp[80];
	const char *cc = "no-cache, no-store, must-revalidate, no-transform, max-age=0";
	if (MHD_lookup_connection_value_n(c, MHD_HEADER_KIND, "X-Tailscale-Challenge", 21, &ch,
					  &n) == MHD_YES &&
	    challenge_ok(ch, n)) {
		snprintf(resp, sizeof resp, "response %.*s", (int)n, ch);
		return reply(c, 204, 0, NULL, 0, "X-Tailscale-Response", resp, "Cache-Control", cc,
			     NULL);
	}
	return reply(c, 204, 0, NULL, 0, "Cache-Control", cc, NULL);
}

static enum MHD_Result serve_probe(struct MHD_Connection *c, const char *method)
{
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return http_error(c, 405, "bogus probe method");
	return reply(c, 200, 0, NULL, 0, "Access-Control-Allow-Origin", "*", NULL);
}

/* /derp reaching libmicrohttpd: never a first request that upgrades (workers keep those). */
static enum MHD_Result serve_derp(struct MHD_Connection *c)
{
	if (cfg && !cfg->run_derp)
		return http_error(c, 404, "derp server disabled");
	const char *up = header(c, "Upgrade");
	char low[16] = "";
	if (up != NULL && strlen(up) < sizeof low)
		for (size_t i = 0; (low[i] = (char)tolower((unsigned char)up[i])) != '\0'; i++)
			;
	if (strcmp(low, "derp") != 0 && strcmp(low, "websocket") != 0) {
		if (up != NULL && up[0] != '\0')
			log_debug("Weird upgrade: \"%s\"", up);
		return http_error(c, 426, "DERP requires connection upgrade");
	}
	/* A real upgrade on a connection already served as HTTP (keep-alive): derpd's workers
	 * own DERP connections, so ask the client to retry on a fresh one (RFC 9110 421). */
	struct mbuf b = { 0 };
	mbuf_puts(&b, "DERP upgrade must be the first request on its connection\n");
	enum MHD_Result r = reply(c, 421, 0, b.p, b.len, "Content-Type", "text/plain; charset=utf-8",
				  "Connection", "close", NULL);
	mbuf_free(&b);
	return r;
}

static enum MHD_Result serve_bootstrap_dns(struct MHD_Connection *c)
{
	size_t len = 0;
	char *body = bootstrap_dns_answer(
		MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "q"), peer_of(c), &len);
	/* cross-region and randomized per request: keeping the connection is pointless */
	enum MHD_Result r = reply(c, 200, BROWSER, body, len, "Content-Type", "application/json",
				  "Connection", "close", NULL);
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
	if (b.oom) {
		mbuf_free(&b);
		return http_error(c, 500, "out of memory");
	}
	enum MHD_Result r = reply(c, 200, flags, b.p, b.len, "Content-Type",
				  clean ? "text/plain; version=0.0.4; charset=utf-8"
					: "text/plain; charset=utf-8", NULL);
	mbuf_free(&b);
	return r;
}

static void uptime_string(char *out, size_t n)
{
	long long s = (long long)(time(NULL) - started);
	if (s >= 3600)
		snprintf(out, n, "%lldh%lldm%llds", s / 3600, s / 60 % 60, s % 60);
	else if (s >= 60)
		snprintf(out, n, "%lldm%llds", s / 60, s % 60);
	else
		snprintf(out, n, "%llds", s);
}

static void html_escaped(struct mbuf *b, const char *s)
{
	for (; *s; s++)
		switch (*s) {
		case '<': mbuf_puts(b, "&lt;"); break;
		case '>': mbuf_puts(b, "&gt;"); break;
		case '&': mbuf_puts(b, "&amp;"); break;
		case '\'': mbuf_puts(b, "&#39;"); break;
		case '"': mbuf_puts(b, "&#34;"); break;
		default: mbuf_add(b, s, 1);
		}
}

static enum MHD_Result serve_debug_index(struct MHD_Connection *c)
{
	char up[64], host[256] = "";
	uptime_string(up, sizeof up);
	gethostname(host, sizeof host - 1);
	int mesh = server_have_mesh_key();
	const char *kv[][2] = { { "Uptime", up },
				{ "Version", DERPD_VERSION },
				{ "Machine", host },
				{ "TLS hostname", cfg && cfg->hostname ? cfg->hostname : "" },
				{ "Mesh key", mesh ? "true" : "false" } };
	static const char *const links[][2] = {
		{ "/debug/vars", "Metrics (Go)" },
		{ "/debug/varz", "Metrics (Prometheus)" },
		{ "/metrics", "Metrics (Prometheus conventions)" },
		{ "/debug/check", "Consistency check" },
		{ "/debug/traffic", "Traffic check" },
	};
	struct mbuf b = { 0 };
	mbuf_puts(&b, "<html><body><h1>derper debug</h1><ul>");
	for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++) {
		mbuf_printf(&b, "<li><b>%s:</b> ", kv[i][0]);
		html_escaped(&b, kv[i][1]);
		mbuf_puts(&b, "</li>");
	}
	for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
		mbuf_printf(&b, "<li><a href=\"%s\">%s</a> (%s)</li>", links[i][0], links[i][0],
			    links[i][1]);
	enum MHD_Result r = reply(c, 200, BROWSER, b.p, b.len, "Content-Type",
				  "text/html; charset=utf-8", NULL);
	mbuf_free(&b);
	return r;
}

static enum MHD_Result serve_debug(struct MHD_Connection *c, const char *path,
				   const char *method)
{
	if (!debug_allowed(c, method))
		return debug_denied(c);
	if (strcmp(path, "/debug/") == 0)
		return serve_debug_index(c);
	if (strcmp(path, "/debug/varz") == 0)
		return serve_scrape(c, 0, BROWSER_DEBUG);
	if (strcmp(path, "/debug/vars") == 0) {
		struct metrics_snapshot s;
		metrics_gather(&s, cfg);
		char *j = vars_json(&s);
		enum MHD_Result r = reply(c, 200, BROWSER_DEBUG, j, j ? strlen(j) : 0, "Content-Type",
					  "application/json; charset=utf-8", NULL);
		free(j);
		return r;
	}
	if (strcmp(path, "/debug/check") == 0) {
		char problems[4096] = "";
		if (server_consistency_check(problems, sizeof problems) != 0)
			return http_error(c, 500, problems);
		const char *ok = "derp.Server ConsistencyCheck okay";
		return reply(c, 200, BROWSER_DEBUG, ok, strlen(ok), "Content-Type",
			     "text/plain; charset=utf-8", NULL);
	}
	if (strcmp(path, "/debug/traffic") == 0) {
		const union MHD_ConnectionInfo *ci =
			MHD_get_connection_info(c, MHD_CONNECTION_INFO_DAEMON);
		int port80 = ci && port80_daemon && ci->daemon == port80_daemon;
		struct MHD_Response *r = traffic_response(c, port80 ? PORT80_WRITE_TIMEOUT_S : 0);
		if (r == NULL)
			return http_error(c, 503, "too many /debug/traffic streams");
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
	return http_error(c, 404, "404 page not found");
}

/* Go's path.Clean plus ServeMux's rule that a trailing slash survives. */
static void clean_path(const char *p, char *out, size_t n)
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

static enum MHD_Result route_main(struct MHD_Connection *c, const char *url,
				  const char *method)
{
	if (url[0] != '/')
		return http_error(c, 400, "400 Bad Request");
	char clean[2048];
	clean_path(url, clean, sizeof clean);
	if (strcmp(clean, url) != 0) {
		struct mbuf loc = { 0 };
		mbuf_puts(&loc, clean);
		MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, add_query_arg, &loc);
		enum MHD_Result r = redirect(c, method, 301, loc.p, 0);
		mbuf_free(&loc);
		return r;
	}
	if (strcmp(url, "/derp") == 0)
		return serve_derp(c);
	if (strcmp(url, "/derp/probe") == 0 || strcmp(url, "/derp/latency-check") == 0)
		return serve_probe(c, method);
	if (strcmp(url, "/bootstrap-dns") == 0)
		return serve_bootstrap_dns(c);
	if (strcmp(url, "/robots.txt") == 0) {
		const char *t = "User-agent: *\nDisallow: /\n";
		return reply(c, 200, BROWSER, t, strlen(t), "Content-Type",
			     "text/plain; charset=utf-8", NULL);
	}
	if (strcmp(url, "/generate_204") == 0)
		return serve_no_content(c);
	if (strcmp(url, "/debug") == 0)
		return redirect(c, method, 301, "/debug/", 0);
	if (strncmp(url, "/debug/", 7) == 0)
		return serve_debug(c, url, method);
	if (strcmp(url, "/metrics") == 0) /* derpd's extension, guarded like /debug/ */
		return debug_allowed(c, method) ? serve_scrape(c, 1, 0) : debug_denied(c);
	return serve_home(c, method);
}

/* RFC 9110 token: the only characters a method may have. */
static int is_token(const char *s)
{
	if (*s == '\0')
		return 0;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && !strchr("!#$%&'*+-.^_`|~", *s))
			return 0;
	return 1;
}

/* ---- the port-80 listener (SERVER.md §6.6) ---- */

/* One request on the port-80 listener. uri is the request-target as sent (Go's
 * RequestURI): libmicrohttpd's url argument is decoded and has lost its query, but
 * derper's redirects and its "/debug" test use the raw form. */
struct port80_req {
	int announced;
	char uri[];
};

static void *port80_uri_cb(void *cls, const char *uri, struct MHD_Connection *c)
{
	(void)cls;
	(void)c;
	size_t n = strlen(uri);
	struct port80_req *rq = malloc(sizeof *rq + n + 1);
	if (rq != NULL) {
		rq->announced = 0;
		memcpy(rq->uri, uri, n + 1);
	}
	return rq; /* NULL: on_request answers 500 */
}

/* libmicrohttpd calls this for every request the URI callback saw, also failed ones. */
static void port80_completed(void *cls, struct MHD_Connection *c, void **state,
			     enum MHD_RequestTerminationCode why)
{
	(void)cls;
	(void)c;
	(void)why;
	if (*state != &seen)
		free(*state);
	*state = NULL;
}

static int is_alnum(unsigned char ch)
{
	return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
}

/* Go's url shouldEscape(ch, encodePath). */
static int path_should_escape(unsigned char ch)
{
	return !is_alnum(ch) && (ch == '\0' || !strchr("-_.~$&+,/:;=@", ch));
}

static void path_escape(struct mbuf *b, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (path_should_escape((unsigned char)s[i]))
			mbuf_printf(b, "%%%02X", (unsigned char)s[i]);
		else
			mbuf_add(b, s + i, 1);
}

static int hex_value(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* Go's URL.EscapedPath() of a request path as sent: the raw form if it is a valid
 * encoding (validEncoded), else the decoded path re-escaped. -1 on a bad %-escape (Go
 * refuses to parse such a request). */
static int path_escaped(struct mbuf *b, const char *raw, size_t n)
{
	int valid = 1;
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)raw[i];
		if (ch == '%' && (i + 2 >= n || hex_value(raw[i + 1]) < 0 || hex_value(raw[i + 2]) < 0))
			return -1;
		if (ch != '%' && !strchr("!$&'()*+,;=:@[]", ch ? ch : '-') && path_should_escape(ch))
			valid = 0;
	}
	if (valid) {
		mbuf_add(b, raw, n);
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		char ch = raw[i];
		if (ch == '%') {
			ch = (char)(hex_value(raw[i + 1]) << 4 | hex_value(raw[i + 2]));
			i += 2;
		}
		path_escape(b, &ch, 1);
	}
	return 0;
}

/* httpguts.ValidHostHeader: only bytes that may appear in a host[:port]. */
static int host_header_valid(const char *h)
{
	for (; *h; h++)
		if (!is_alnum((unsigned char)*h) && !strchr("!$%&'()*+,-.:;=[]_~", *h))
			return 0;
	return 1;
}

struct head_scan {
	int hosts;
	const char *why; /* first problem found */
};

static enum MHD_Result scan_header(void *cls, enum MHD_ValueKind kind, const char *key,
				   size_t key_size, const char *value, size_t value_size)
{
	struct head_scan *h = cls;
	(void)kind;
	if (key_size == 4 && strncasecmp(key, "Host", 4) == 0)
		h->hosts++;
	for (size_t i = 0; i < key_size && !h->why; i++)
		if (!is_alnum((unsigned char)key[i]) && !strchr("!#$%&'*+-.^_`|~", key[i] ? key[i] : ' '))
			h->why = "invalid header name";
	for (size_t i = 0; value && i < value_size && !h->why; i++) {
		unsigned char ch = (unsigned char)value[i];
		if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
			h->why = "invalid header value";
	}
	return MHD_YES;
}

/* What Go's server refuses before any handler runs (answered 400 "400 Bad Request",
 * plus ": <why>" for its badRequestError cases): NULL if nothing, "" for the plain
 * form. The Host checks matter here: Host goes into the redirect. */
static const char *port80_head_error(struct MHD_Connection *c, const char *uri,
				     const char *version)
{
	struct head_scan h = { 0, NULL };
	const char *why = NULL;
	int generic = 0;
	for (const char *p = uri; *p && !generic; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			generic = 1; /* net/url: invalid control character in URL */
	MHD_get_connection_values_n(c, MHD_HEADER_KIND, scan_header, &h);
	const char *host = header(c, "Host");
	if (generic || h.hosts > 1)
		why = "";
	else if (h.hosts == 0 && strcmp(version, MHD_HTTP_VERSION_1_1) == 0)
		why = "missing required Host header";
	else if (host != NULL && !host_header_valid(host))
		why = "malformed Host header";
	else
		why = h.why;
	return why;
}

/* Go's answer to a request it cannot parse: no handler ran, the connection closes. */
static enum MHD_Result bad_request(struct MHD_Connection *c, const char *why)
{
	struct mbuf b = { 0 };
	mbuf_printf(&b, "400 Bad Request%s%s", why[0] ? ": " : "", why);
	enum MHD_Result r = reply(c, 400, 0, b.p, b.len, "Content-Type",
				  "text/plain; charset=utf-8", "Connection", "close", NULL);
	mbuf_free(&b);
	return r;
}

/* derper's letsencrypt/gcp host policy, which autocert applies to HTTP-01 requests:
 * the prod rule for the default hostname, else HostWhitelist(--hostname), an exact
 * match against the lower-cased name. 1 if allowed, else 0 and autocert's message. */
static int acme_host_allowed(const char *host, char *why, size_t n)
{
	const char *name = cfg && cfg->hostname ? cfg->hostname : "";
	if (strcmp(name, "derp.tailscale.com") == 0) {
		if (prod_hostname(host))
			return 1;
		snprintf(why, n, "invalid hostname");
		return 0;
	}
	size_t i = 0;
	for (; name[i] && host[i]; i++)
		if (tolower((unsigned char)name[i]) != host[i])
			break;
	if (name[i] == '\0' && host[i] == '\0' && name[0] != '\0')
		return 1;
	snprintf(why, n, "acme/autocert: host \"%s\" not configured in HostWhitelist", host);
	return 0;
}

/* An HTTP-01 answer (len >= 0: the path is ACME's). With --acme-ip-certs derper's IP
 * manager answers every challenge path from its own table; otherwise autocert's
 * handler checks the host policy first and reports a miss as its cache does. */
static enum MHD_Result serve_acme(struct MHD_Connection *c, const char *body, int len)
{
	if (cfg && cfg->acme_ip_certs) {
		if (len == 0)
			return http_error(c, 404, "404 page not found");
		return reply(c, 200, 0, body, (size_t)len, "Content-Type", "text/plain", NULL);
	}
	const char *host = header(c, "Host");
	char why[512];
	if (!acme_host_allowed(host ? host : "", why, sizeof why))
		return http_error(c, 403, why);
	if (len == 0)
		return http_error(c, 404, "acme/autocert: certificate cache miss");
	return reply(c, 200, 0, body, (size_t)len, "Content-Type", "text/plain; charset=utf-8",
		     NULL);
}

/* derper's port-80 mux: Go's request checks, ServeMux's clean-path redirect,
 * /generate_204, the cert provider's HTTP-01 handler, then tsweb.Port80Handler. */
static enum MHD_Result route_port80(struct MHD_Connection *c, const char *uri, const char *url,
				    const char *method, const char *version)
{
	const char *bad = port80_head_error(c, uri, version);
	if (bad != NULL)
		return bad_request(c, bad);
	if (strcmp(method, "CONNECT") == 0) /* no CONNECT handling on plain HTTP */
		return http_error(c, 400, "Use HTTPS");
	if (strcmp(uri, "*") == 0)
		return reply(c, 400, 0, NULL, 0, "Connection", "close", NULL);
	if (uri[0] != '/') /* absolute-form: refused, as on the main listener */
		return http_error(c, 400, "400 Bad Request");

	/* ServeMux cleans the escaped path and redirects (301, relative) when that changed
	 * it; the new URL's path is escaped again, as Go's url.URL.String() does. */
	size_t plen = strcspn(uri, "?");
	const char *query = uri[plen] ? uri + plen + 1 : "";
	struct mbuf esc = { 0 };
	if (path_escaped(&esc, uri, plen) != 0) {
		mbuf_free(&esc);
		return bad_request(c, ""); /* net/url: invalid URL escape */
	}
	char *clean = malloc(esc.len + 2);
	if (esc.oom || clean == NULL) {
		mbuf_free(&esc);
		free(clean);
		return http_error(c, 500, "out of memory");
	}
	clean_path(esc.p ? esc.p : "", clean, esc.len + 2);
	int dirty = strcmp(clean, esc.p ? esc.p : "") != 0;
	mbuf_free(&esc);
	if (dirty) {
		struct mbuf loc = { 0 };
		path_escape(&loc, clean, strlen(clean));
		if (query[0])
			mbuf_printf(&loc, "?%s", query);
		free(clean);
		enum MHD_Result r = loc.oom ? http_error(c, 500, "out of memory")
					    : redirect(c, method, 301, loc.p, 0);
		mbuf_free(&loc);
		return r;
	}
	free(clean);

	if (strcmp(url, "/generate_204") == 0)
		return serve_no_content(c);
	char token[1024];
	int len = acme_http01_response(url, token, sizeof token);
	if (len >= 0)
		return serve_acme(c, token, len);

	/* tsweb.Port80Handler: debug pages stay reachable over plain HTTP (still access
	 * checked); everything else is sent to HTTPS on the host the client asked for. */
	if (strncmp(uri, "/debug", 6) == 0)
		return route_main(c, url, method);
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return http_error(c, 400, "Use HTTPS");
	const char *path = strcmp(uri, "/") == 0 && debug_allowed(c, method) ? "/debug/" : uri;
	const char *host = header(c, "Host");
	struct mbuf target = { 0 };
	mbuf_printf(&target, "https://%s%s", host ? host : "", path);
	enum MHD_Result r = target.oom ? http_error(c, 500, "out of memory")
				       : redirect(c, method, 302, target.p, 0);
	mbuf_free(&target);
	return r;
}

/* The first call only announces the request; request bodies (which no endpoint reads)
 * are consumed and dropped; the response goes out on the final call. On the port-80
 * listener *state is that request's struct port80_req from the start. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
				  const char *method, const char *version, const char *upload,
				  size_t *upload_size, void **state)
{
	(void)upload;
	struct port80_req *rq = cls == &port80_cls && *state != &seen ? *state : NULL;
	if (rq != NULL && !rq->announced) {
		rq->announced = 1;
		return MHD_YES;
	}
	if (rq == NULL && *state == NULL) {
		*state = &seen;
		return MHD_YES;
	}
	if (*upload_size != 0) {
		*upload_size = 0;
		return MHD_YES;
	}
	if (!is_token(method)) /* Go refuses such requests; libmicrohttpd would route them */
		return bad_request(c, "");
	if (cls == NULL)
		return route_main(c, url, method);
	if (cls == &port80_cls)
		return rq ? route_port80(c, rq->uri, url, method, version)
			  : http_error(c, 500, "out of memory");
	/* the --metrics-addr listener: scrapes only, its bind address is the access rule */
	if (strcmp(url, "/metrics") == 0)
		return serve_scrape(c, 1, 0);
	if (strcmp(url, "/debug/varz") == 0)
		return serve_scrape(c, 0, 0);
	return http_error(c, 404, "404 page not found");
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	(void)cls;
	if (!log_verbose)
		return; /* like derper's filter: per-connection HTTP noise is not news */
	char msg[512];
	vsnprintf(msg, sizeof msg, fmt, ap);
	size_t n = strlen(msg);
	while (n > 0 && msg[n - 1] == '\n')
		msg[--n] = '\0';
	log_info("http: %s", msg);
}

/* A listening TCP socket on host:port (port 0: any free one, *bound set to it). Empty
 * host: all interfaces on one IPv6 socket that takes IPv4 too, as Go listens, or IPv4
 * alone on a host without IPv6. SO_KEEPALIVE and TCP_USER_TIMEOUT as the main listener
 * has them (SERVER.md §5; accepted sockets inherit them). what names it in errors. */
static int listen_tcp(const char *host, const char *port, const char *what, int *bound,
		      char *err, size_t errlen)
{
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
	return listen_tcp(h, colon + 1, what, &metrics_port, err, errlen);
}

/* TLS mode's plain-HTTP listener on <host of -a>:<-http-port> (SERVER.md §6.6). */
static int port80_start(const struct config *c, char *err, size_t errlen)
{
	char port[16], what[64];
	snprintf(port, sizeof port, "%d", c->http_port);
	snprintf(what, sizeof what, "-http-port %d", c->http_port);
	int fd = listen_tcp(c->listen_host, port, what, &port80_port, err, errlen);
	if (fd < 0)
		return -1;
	/* the main daemon's limits; suspend/resume for /debug/traffic; derper's 30 s
	 * ReadTimeout as the idle timeout (its idle timeout defaults to that too) */
	port80_daemon = MHD_start_daemon(
		MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG, 0, NULL,
		NULL, on_request, &port80_cls, MHD_OPTION_LISTEN_SOCKET, fd,
		MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_TIMEOUT_S,
		MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTP_MAX_CONNECTIONS,
		MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)HTTP_PER_IP_LIMIT,
		MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)HTTP_HEAD_MEMORY,
		MHD_OPTION_URI_LOG_CALLBACK, port80_uri_cb, NULL,
		MHD_OPTION_NOTIFY_COMPLETED, port80_completed, NULL,
		MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_END);
	if (port80_daemon == NULL) {
		close(fd);
		return snprintf(err, errlen, "libmicrohttpd: cannot start the port-80 listener"), -1;
	}
	if (strchr(c->listen_host, ':'))
		log_info("derpd: serving port-80 HTTP on [%s]:%d", c->listen_host, port80_port);
	else
		log_info("derpd: serving port-80 HTTP on %s:%d", c->listen_host, port80_port);
	return 0;
}

int httpd_start(const struct config *c, char *err, size_t errlen)
{
	cfg = c;
	started = time(NULL);
	if (debug_access_init(err, errlen) != 0)
		return -1;
	show_abuse_info = c && c->hostname && prod_hostname(c->hostname);
	unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_NO_LISTEN_SOCKET |
			 MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
	main_daemon = MHD_start_daemon(
		flags, 0, NULL, NULL, on_request, NULL,
		MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_TIMEOUT_S,
		MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTP_MAX_CONNECTIONS,
		MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)HTTP_PER_IP_LIMIT,
		MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)HTTP_HEAD_MEMORY,
		MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_END);
	if (main_daemon == NULL)
		return snprintf(err, errlen, "libmicrohttpd: cannot start the HTTP daemon"), -1;
	if (c && c->metrics_addr && c->metrics_addr[0]) {
		int fd = listen_on(c->metrics_addr, err, errlen);
		if (fd < 0) {
			httpd_stop();
			return -1;
		}
		metrics_daemon = MHD_start_daemon(
			MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL, on_request,
			&metrics_cls, MHD_OPTION_LISTEN_SOCKET, fd,
			MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_TIMEOUT_S,
			MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
			MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_END);
		if (metrics_daemon == NULL) {
			close(fd);
			httpd_stop();
			return snprintf(err, errlen, "libmicrohttpd: cannot start the metrics listener"), -1;
		}
		log_info("metrics listening on %s (port %d)", c->metrics_addr, metrics_port);
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
		if (send(fd, bad, sizeof bad - 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
			log_debug("http: 400 to a bad head: %s", strerror(errno));
		close(fd);
		return 0;
	}
	return MHD_add_connection(main_daemon, fd, peer, peerlen) == MHD_YES ? 0 : -1;
}

int httpd_metrics_port(void)
{
	return metrics_daemon ? metrics_port : 0;
}

int httpd_port80_port(void)
{
	return port80_daemon ? port80_port : 0;
}

void httpd_stop(void)
{
	traffic_shutdown();
	if (metrics_daemon) {
		MHD_stop_daemon(metrics_daemon);
		metrics_daemon = NULL;
	}
	if (port80_daemon) {
		MHD_stop_daemon(port80_daemon);
		port80_daemon = NULL;
	}
	if (main_daemon) {
		MHD_stop_daemon(main_daemon);
		main_daemon = NULL;
	}
	bootstrap_dns_stop();
	metrics_port = port80_port = 0;
}
