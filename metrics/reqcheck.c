/* Go's request-head rules that libmicrohttpd does not apply, checked when a request's
 * head is in (the handler's first call), before libmicrohttpd reads any body. A request
 * refused here is answered at once: libmicrohttpd then reads nothing more from the
 * connection and closes it, so bytes after the head (a smuggled request) are never
 * served. The rules are net/http's readRequest: transfer.go parseTransferEncoding,
 * fixLength and parseContentLength, and its MaxHeaderBytes answer (server.go). */
#include "metrics/internal.h"

#include <ctype.h>
#include <microhttpd.h>
#include <string.h>
#include <strings.h>

/* Go writes these by hand, before any handler: no Date, no Content-Length. libmicrohttpd
 * adds both; the status, Content-Type, Connection and body are Go's. */
static enum MHD_Result go_error(struct MHD_Connection *c, unsigned status, const char *body)
{
	return httpd_reply(c, status, 0, body, strlen(body), "Content-Type",
			   "text/plain; charset=utf-8", "Connection", "close", NULL);
}

struct head_fields {
	int n_cl, n_te, cl_conflict;
	const char *cl, *te; /* first of each, trimmed: cl_n / te_n bytes */
	size_t cl_n, te_n;
};

/* textproto.TrimString: ASCII space and tab only (as libmicrohttpd trims too). */
static void trim(const char **p, size_t *n)
{
	while (*n > 0 && (**p == ' ' || **p == '\t'))
		(*p)++, (*n)--;
	while (*n > 0 && ((*p)[*n - 1] == ' ' || (*p)[*n - 1] == '\t'))
		(*n)--;
}

static enum MHD_Result collect(void *cls, enum MHD_ValueKind kind, const char *key,
			       size_t key_size, const char *value, size_t value_size)
{
	struct head_fields *h = cls;
	(void)kind;
	const char *v = value ? value : "";
	size_t vn = value ? value_size : 0;
	trim(&v, &vn);
	if (key_size == 14 && strncasecmp(key, "Content-Length", 14) == 0) {
		if (h->n_cl++ == 0)
			h->cl = v, h->cl_n = vn;
		else if (vn != h->cl_n || memcmp(v, h->cl, vn) != 0)
			h->cl_conflict = 1; /* equal repeats are one value to Go */
	} else if (key_size == 17 && strncasecmp(key, "Transfer-Encoding", 17) == 0) {
		if (h->n_te++ == 0)
			h->te = v, h->te_n = vn;
	}
	return MHD_YES;
}

/* strconv.ParseUint(s, 10, 63): digits only, at most 2^63-1. */
static int valid_length(const char *s, size_t n)
{
	static const char max[] = "9223372036854775807";
	while (n > 1 && *s == '0')
		s++, n--;
	if (n == 0 || n > sizeof max - 1)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			return 0;
	return n < sizeof max - 1 || memcmp(s, max, n) <= 0;
}

int httpd_head_check(struct MHD_Connection *c, const char *version, enum MHD_Result *ret)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(c, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
	if (ci != NULL && ci->header_size > HTTP_HEAD_LIMIT) {
		*ret = go_error(c, 431, "431 Request Header Fields Too Large");
		return 1;
	}
	struct head_fields h = { 0 };
	MHD_get_connection_values_n(c, MHD_HEADER_KIND, collect, &h);
	/* HTTP/1.0: Go ignores Transfer-Encoding (the body is Content-Length's), while
	 * libmicrohttpd would read a chunked body; the caller answers such a request at
	 * once, so neither framing is used and the connection closes after it. */
	int http10 = strcmp(version, MHD_HTTP_VERSION_1_0) == 0;
	if (h.n_te > 0 && !http10 &&
	    (h.n_te > 1 || h.te_n != 7 || strncasecmp(h.te, "chunked", 7) != 0)) {
		*ret = go_error(c, 501, "Unsupported transfer encoding");
		return 1;
	}
	if (h.cl_conflict || (h.n_cl > 0 && !valid_length(h.cl, h.cl_n))) {
		*ret = go_error(c, 400, "400 Bad Request");
		return 1;
	}
	return h.n_te > 0 && http10 ? -1 : 0;
}

int httpd_is_token(const char *s)
{
	if (*s == '\0')
		return 0;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && !strchr("!#$%&'*+-.^_`|~", *s))
			return 0;
	return 1;
}

enum MHD_Result httpd_bad_request(struct MHD_Connection *c, const char *why)
{
	struct mbuf b = { 0 };
	mbuf_printf(&b, "400 Bad Request%s%s", why[0] ? ": " : "", why);
	enum MHD_Result r = httpd_reply(c, 400, 0, b.p, b.len, "Content-Type",
					"text/plain; charset=utf-8", "Connection", "close", NULL);
	mbuf_free(&b);
	return r;
}

enum MHD_Result httpd_serve_star(struct MHD_Connection *c, const char *method)
{
	/* net/http's globalOptionsHandler: an empty 200 (Content-Length: 0); any other
	 * method reaches ServeMux, which refuses "*" with an empty 400 and closes */
	if (strcmp(method, "OPTIONS") == 0)
		return httpd_reply(c, 200, 0, NULL, 0, NULL);
	return httpd_reply(c, 400, 0, NULL, 0, "Connection", "close", NULL);
}
