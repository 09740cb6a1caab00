/* Parse one HTTP/1.x request head (request line + headers + blank line). Only the fields
 * the DERP upgrade decision needs are extracted; values point into the caller's buffer. */
#ifndef DERPD_HTTP_HEAD_H
#define DERPD_HTTP_HEAD_H
#include <stddef.h>

struct http_str {
	const char *p;
	size_t n;
};

struct http_req {
	struct http_str method, target, path; /* path = target without ?query */
	int major, minor;
	/* First occurrence of each header (Go's Header.Get), value trimmed. */
	struct http_str upgrade, fast_start, ideal_node, ws_protocol, connection,
		content_length, transfer_encoding, host, ws_key, ws_version;
	size_t head_len; /* bytes up to and including the blank line */
};

/* > 0: head length; 0: incomplete (need more bytes); -1: malformed. */
int http_head_parse(const char *buf, size_t len, struct http_req *r);

/* Case-insensitive comparison of s with a NUL-terminated literal. */
int http_str_ieq(struct http_str s, const char *lit);
/* Does the comma-separated list s contain token (case-insensitive)? */
int http_has_token(struct http_str s, const char *token);

#endif
