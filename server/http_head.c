#include "server/http_head.h"

#include <string.h>
#include <strings.h>

int http_str_ieq(struct http_str s, const char *lit)
{
	return s.p && strlen(lit) == s.n && strncasecmp(s.p, lit, s.n) == 0;
}

int http_has_token(struct http_str s, const char *token)
{
	size_t tl = strlen(token), i = 0;

	while (s.p && i < s.n) {
		size_t start, end;
		while (i < s.n && (s.p[i] == ' ' || s.p[i] == '\t' || s.p[i] == ','))
			i++;
		start = i;
		while (i < s.n && s.p[i] != ',')
			i++;
		end = i;
		while (end > start && (s.p[end - 1] == ' ' || s.p[end - 1] == '\t'))
			end--;
		if (end - start == tl && strncasecmp(s.p + start, token, tl) == 0)
			return 1;
	}
	return 0;
}

/* A line ends at LF; a CR before it is dropped (Go accepts bare LF too). */
static const char *line_end(const char *p, const char *end, size_t *len)
{
	const char *nl = memchr(p, '\n', (size_t)(end - p));

	if (!nl)
		return NULL;
	*len = (size_t)(nl - p);
	if (*len > 0 && p[*len - 1] == '\r')
		(*len)--;
	return nl + 1;
}

static int is_tchar(char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
	       (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static int parse_request_line(const char *p, size_t n, struct http_req *r)
{
	const char *sp1 = memchr(p, ' ', n), *sp2;

	if (!sp1 || sp1 == p)
		return -1;
	r->method = (struct http_str){ p, (size_t)(sp1 - p) };
	for (size_t i = 0; i < r->method.n; i++)
		if (!is_tchar(p[i]))
			return -1;
	sp2 = memchr(sp1 + 1, ' ', (size_t)(p + n - sp1 - 1));
	if (!sp2 || sp2 == sp1 + 1)
		return -1;
	r->target = (struct http_str){ sp1 + 1, (size_t)(sp2 - sp1 - 1) };
	const char *q = memchr(r->target.p, '?', r->target.n);
	r->path = (struct http_str){ r->target.p, q ? (size_t)(q - r->target.p) : r->target.n };
	const char *v = sp2 + 1;
	size_t vl = (size_t)(p + n - v);
	if (vl != 8 || strncmp(v, "HTTP/", 5) != 0 || v[6] != '.' || v[5] < '0' || v[5] > '9' ||
	    v[7] < '0' || v[7] > '9')
		return -1;
	r->major = v[5] - '0';
	r->minor = v[7] - '0';
	return r->major == 1 ? 0 : -1;
}

static void keep_first(struct http_str *dst, const char *v, size_t n)
{
	if (!dst->p)
		*dst = (struct http_str){ v, n };
}

/* net/http's body framing rules (transfer.go): on HTTP/1.1 one Transfer-Encoding and
 * only "chunked" (HTTP/1.0 ignores it); a Content-Length of digits only, below 2^63. A
 * request that breaks them is Go's 400 or 501, which the HTTP server gives. */
static int framing_ok(const struct http_req *r)
{
	if (r->transfer_encoding.p && r->minor > 0 && !http_str_ieq(r->transfer_encoding, "chunked"))
		return 0;
	struct http_str cl = r->content_length;
	if (!cl.p)
		return 1;
	while (cl.n > 1 && cl.p[0] == '0')
		cl.p++, cl.n--;
	if (cl.n == 0 || cl.n > 19 || (cl.n == 19 && memcmp(cl.p, "9223372036854775807", 19) > 0))
		return 0;
	for (size_t i = 0; i < cl.n; i++)
		if (cl.p[i] < '0' || cl.p[i] > '9')
			return 0;
	return 1;
}

int http_head_parse(const char *buf, size_t len, struct http_req *r)
{
	const char *p = buf, *end = buf + len, *next;
	size_t n;

	memset(r, 0, sizeof *r);
	/* RFC 9112 §2.2: ignore empty lines before the request line. */
	while ((next = line_end(p, end, &n)) && n == 0)
		p = next;
	if (!next)
		return 0;
	if (parse_request_line(p, n, r) != 0)
		return -1;
	for (p = next; (next = line_end(p, end, &n)); p = next) {
		if (n == 0) {
			r->head_len = (size_t)(next - buf);
			return framing_ok(r) ? (int)r->head_len : -1;
		}
		const char *colon = memchr(p, ':', n);
		if (!colon || colon == p)
			return -1;
		for (const char *k = p; k < colon; k++)
			if (!is_tchar(*k))
				return -1; /* also rejects obsolete line folding */
		struct http_str name = { p, (size_t)(colon - p) };
		const char *v = colon + 1, *ve = p + n;
		while (v < ve && (*v == ' ' || *v == '\t'))
			v++;
		while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
			ve--;
		size_t vn = (size_t)(ve - v);
		if (http_str_ieq(name, "Upgrade"))
			keep_first(&r->upgrade, v, vn);
		else if (http_str_ieq(name, "Derp-Fast-Start"))
			keep_first(&r->fast_start, v, vn);
		else if (http_str_ieq(name, "Ideal-Node"))
			keep_first(&r->ideal_node, v, vn);
		else if (http_str_ieq(name, "Sec-WebSocket-Protocol"))
			keep_first(&r->ws_protocol, v, vn);
		else if (http_str_ieq(name, "Connection"))
			keep_first(&r->connection, v, vn);
		else if (http_str_ieq(name, "Content-Length")) {
			/* Go refuses differing repeats (request smuggling): malformed */
			if (r->content_length.p && (r->content_length.n != vn ||
						    memcmp(r->content_length.p, v, vn) != 0))
				return -1;
			keep_first(&r->content_length, v, vn);
		} else if (http_str_ieq(name, "Transfer-Encoding")) {
			if (r->transfer_encoding.p && r->minor > 0)
				return -1; /* Go: "too many transfer encodings" */
			keep_first(&r->transfer_encoding, v, vn);
		}
		else if (http_str_ieq(name, "Host"))
			keep_first(&r->host, v, vn);
		else if (http_str_ieq(name, "Sec-WebSocket-Key"))
			keep_first(&r->ws_key, v, vn);
		else if (http_str_ieq(name, "Sec-WebSocket-Version"))
			keep_first(&r->ws_version, v, vn);
	}
	return 0;
}
