/* TLS mode's plain-HTTP listener on <host of -a>:<-http-port> (SERVER.md §6.6): derper's
 * port-80 mux, a daemon of its own (one internal epoll thread, like httpd.c's). It answers
 * /generate_204 and the cert provider's HTTP-01 challenges itself, hands /debug to the
 * main routing in httpd.c and redirects everything else to HTTPS. */
#include "metrics/internal.h"

#include "acme/cert.h"
#include "server/config.h"
#include "server/log.h"

#include <ctype.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* derper's port-80 WriteTimeout (there for long profiles). libmicrohttpd's timeout is an
 * idle one, and a suspended stream never idles out, so it bounds /debug/traffic instead:
 * the only response that can run that long. */
#define PORT80_WRITE_TIMEOUT_S 300

static const struct config *cfg;
static struct MHD_Daemon *port80_daemon;
static struct conntab *port80_tab;
static int port80_port;
static int seen; /* *state after a request's first call if the URI callback failed */

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
	conntab_request_begin(c);
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
	(void)why;
	conntab_request_end(c);
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
	const char *host = httpd_header(c, "Host");
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

/* derper's letsencrypt/gcp host policy, which autocert applies to HTTP-01 requests:
 * the prod rule for the default hostname, else HostWhitelist(--hostname), an exact
 * match against the lower-cased name. 1 if allowed, else 0 and autocert's message. */
static int acme_host_allowed(const char *host, char *why, size_t n)
{
	const char *name = cfg && cfg->hostname ? cfg->hostname : "";
	if (strcmp(name, "derp.tailscale.com") == 0) {
		if (httpd_prod_hostname(host))
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
			return httpd_error(c, 404, "404 page not found");
		return httpd_reply(c, 200, 0, body, (size_t)len, "Content-Type", "text/plain",
				   NULL);
	}
	const char *host = httpd_header(c, "Host");
	char why[512];
	if (!acme_host_allowed(host ? host : "", why, sizeof why))
		return httpd_error(c, 403, why);
	if (len == 0)
		return httpd_error(c, 404, "acme/autocert: certificate cache miss");
	return httpd_reply(c, 200, 0, body, (size_t)len, "Content-Type",
			   "text/plain; charset=utf-8", NULL);
}

/* derper's port-80 mux: Go's request checks, ServeMux's clean-path redirect,
 * /generate_204, the cert provider's HTTP-01 handler, then tsweb.Port80Handler. */
static enum MHD_Result route_port80(struct MHD_Connection *c, const char *uri, const char *url,
				    const char *method, const char *version)
{
	const char *bad = port80_head_error(c, uri, version);
	if (bad != NULL)
		return httpd_bad_request(c, bad);
	if (strcmp(uri, "*") == 0 && strcmp(method, "OPTIONS") == 0)
		return httpd_serve_star(c, method); /* net/http answers it before any mux */
	if (strcmp(method, "CONNECT") == 0) /* no CONNECT handling on plain HTTP */
		return httpd_error(c, 400, "Use HTTPS");
	if (strcmp(uri, "*") == 0)
		return httpd_serve_star(c, method);
	if (uri[0] != '/') /* absolute-form: refused, as on the main listener */
		return httpd_error(c, 400, "400 Bad Request");

	/* ServeMux cleans the escaped path and redirects (301, relative) when that changed
	 * it; the new URL's path is escaped again, as Go's url.URL.String() does. */
	size_t plen = strcspn(uri, "?");
	const char *query = uri[plen] ? uri + plen + 1 : "";
	struct mbuf esc = { 0 };
	if (path_escaped(&esc, uri, plen) != 0) {
		mbuf_free(&esc);
		return httpd_bad_request(c, ""); /* net/url: invalid URL escape */
	}
	char *clean = malloc(esc.len + 2);
	if (esc.oom || clean == NULL) {
		mbuf_free(&esc);
		free(clean);
		return httpd_error(c, 500, "out of memory");
	}
	httpd_clean_path(esc.p ? esc.p : "", clean, esc.len + 2);
	int dirty = strcmp(clean, esc.p ? esc.p : "") != 0;
	mbuf_free(&esc);
	if (dirty) {
		struct mbuf loc = { 0 };
		path_escape(&loc, clean, strlen(clean));
		if (query[0])
			mbuf_printf(&loc, "?%s", query);
		free(clean);
		enum MHD_Result r = loc.oom ? httpd_error(c, 500, "out of memory")
					    : httpd_redirect(c, method, 301, loc.p, 0);
		mbuf_free(&loc);
		return r;
	}
	free(clean);

	if (strcmp(url, "/generate_204") == 0)
		return httpd_serve_no_content(c);
	char token[1024];
	int len = acme_http01_response(url, token, sizeof token);
	if (len >= 0)
		return serve_acme(c, token, len);

	/* tsweb.Port80Handler: debug pages stay reachable over plain HTTP (still access
	 * checked); everything else is sent to HTTPS on the host the client asked for. */
	if (strncmp(uri, "/debug", 6) == 0)
		return httpd_route_main(c, url, method);
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return httpd_error(c, 400, "Use HTTPS");
	const char *path =
		strcmp(uri, "/") == 0 && httpd_debug_allowed(c, method) ? "/debug/" : uri;
	const char *host = httpd_header(c, "Host");
	struct mbuf target = { 0 };
	mbuf_printf(&target, "https://%s%s", host ? host : "", path);
	enum MHD_Result r = target.oom ? httpd_error(c, 500, "out of memory")
				       : httpd_redirect(c, method, 302, target.p, 0);
	mbuf_free(&target);
	return r;
}

/* As httpd.c's on_request, but *state is the request's struct port80_req from the start:
 * the URI callback made it. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
				  const char *method, const char *version, const char *upload,
				  size_t *upload_size, void **state)
{
	(void)cls;
	(void)upload;
	struct port80_req *rq = *state != &seen ? *state : NULL;
	if ((rq != NULL && !rq->announced) || (rq == NULL && *state == NULL)) {
		if (rq != NULL)
			rq->announced = 1;
		else
			*state = &seen;
		enum MHD_Result r;
		int k = httpd_head_check(c, version, &r); /* may answer before any body */
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
	return rq ? route_port80(c, rq->uri, url, method, version)
		  : httpd_error(c, 500, "out of memory");
}

int port80_start(const struct config *c, char *err, size_t errlen)
{
	char port[16], what[64];
	cfg = c;
	snprintf(port, sizeof port, "%d", c->http_port);
	snprintf(what, sizeof what, "-http-port %d", c->http_port);
	int fd = httpd_listen_tcp(c->listen_host, port, what, &port80_port, err, errlen);
	if (fd < 0)
		return -1;
	/* the main daemon's limits and read limit (conntab); suspend/resume for
	 * /debug/traffic; derper's ReadTimeout as the idle timeout (its IdleTimeout) */
	port80_tab = conntab_new(HTTP_MAX_CONNECTIONS, c->http_read_timeout_ms, 0);
	port80_daemon = port80_tab == NULL ? NULL : MHD_start_daemon(
		MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG, 0,
		conntab_accept_policy, port80_tab, on_request, NULL,
		MHD_OPTION_EXTERNAL_LOGGER, httpd_log, NULL, MHD_OPTION_LISTEN_SOCKET, fd,
		MHD_OPTION_CONNECTION_TIMEOUT, httpd_idle_timeout_s(c->http_read_timeout_ms),
		MHD_OPTION_CONNECTION_LIMIT, conntab_mhd_limit(port80_tab),
		MHD_OPTION_NOTIFY_CONNECTION, conntab_notify, port80_tab,
		MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)HTTP_PER_IP_LIMIT,
		MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)HTTP_HEAD_MEMORY,
		MHD_OPTION_URI_LOG_CALLBACK, port80_uri_cb, NULL,
		MHD_OPTION_NOTIFY_COMPLETED, port80_completed, NULL, MHD_OPTION_END);
	if (port80_daemon == NULL) {
		close(fd);
		conntab_free(port80_tab);
		port80_tab = NULL;
		return snprintf(err, errlen, "libmicrohttpd: cannot start the port-80 listener"), -1;
	}
	if (strchr(c->listen_host, ':'))
		log_info(LS_HTTP, "serving port-80 HTTP on [%s]:%d", c->listen_host, port80_port);
	else
		log_info(LS_HTTP, "serving port-80 HTTP on %s:%d", c->listen_host, port80_port);
	return 0;
}

unsigned port80_stream_limit(struct MHD_Connection *c)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(c, MHD_CONNECTION_INFO_DAEMON);
	int port80 = ci && port80_daemon && ci->daemon == port80_daemon;
	return port80 ? PORT80_WRITE_TIMEOUT_S : 0;
}

int httpd_port80_port(void)
{
	return port80_daemon ? port80_port : 0;
}

void port80_stop(void)
{
	if (port80_daemon) {
		MHD_stop_daemon(port80_daemon);
		port80_daemon = NULL;
	}
	conntab_free(port80_tab);
	port80_tab = NULL;
	port80_port = 0;
}
