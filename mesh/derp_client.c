/* DERP client set-up (spec PROTOCOL.md §3.1, §12): connect, HTTP upgrade, the handshake
 * (ServerKey, ClientInfo, ServerInfo), close and detach. Frame I/O is in client_io.c. */
#include "mesh/derp_client.h"
#include "mesh/client_conn.h"
#include "mesh/client_tls.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/key.h"

#define MAX_HTTP_HEAD   16384
#define MAX_SERVER_KEY  1024u      /* Go clients refuse a longer greeting */
#define MAX_INFO_LEN    (1u << 20) /* MaxInfoLen: bound on the ServerInfo box */

static _Thread_local char err_buf[256];

const char *derp_client_error(void)
{
	return err_buf;
}

void client_set_err(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err_buf, sizeof err_buf, fmt, ap);
	va_end(ap);
}

/* ---- handshake ---------------------------------------------------------------- */

size_t derp_client_build_info(uint8_t *out, size_t cap, const uint8_t priv[32],
			      const uint8_t server_key[32], const void *plain, size_t plain_len)
{
	size_t payload = 32 + crypto_box_NONCEBYTES + crypto_box_MACBYTES + plain_len;
	uint8_t pub[32];

	if (cap < FRAME_HEADER_LEN + payload || payload > UINT32_MAX)
		return 0;
	key_public(pub, priv);
	frame_put_header(out, FRAME_CLIENT_INFO, (uint32_t)payload);
	memcpy(out + 5, pub, 32);
	randombytes_buf(out + 5 + 32, crypto_box_NONCEBYTES);
	if (crypto_box_easy(out + 5 + 32 + crypto_box_NONCEBYTES, plain, plain_len,
			    out + 5 + 32, server_key, priv) != 0)
		return 0;
	return FRAME_HEADER_LEN + payload;
}

/* What a Go client sends: {"meshKey":…,"version":2,"CanAckPings":false,"IsProber":true}. */
static size_t default_info_json(const struct derp_client *c, char *out, size_t cap)
{
	char mesh[80] = "";

	if (c->have_mesh_key) {
		char hex[KEY_HEX_LEN + 1];
		key_to_hex(hex, c->mesh_key);
		snprintf(mesh, sizeof mesh, "\"meshKey\":\"%s\",",
			 c->mesh_key_text[0] ? c->mesh_key_text : hex);
	}
	int n = snprintf(out, cap, "{%s\"version\":%d,\"CanAckPings\":false%s}", mesh,
			 DERP_PROTO_VERSION, c->is_prober ? ",\"IsProber\":true" : "");
	return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

int derp_client_send_info(struct derp_client *c)
{
	char def[200];
	const char *plain = c->info_json;
	size_t plen = c->info_json_len;

	if (!c->have_server_key) {
		client_set_err("server key unknown");
		return DERP_CLIENT_ERROR;
	}
	if (!plain) {
		plen = default_info_json(c, def, sizeof def);
		plain = def;
	}
	size_t cap = FRAME_HEADER_LEN + 32 + crypto_box_NONCEBYTES + crypto_box_MACBYTES + plen;
	uint8_t *frame = malloc(cap);
	if (!frame) {
		client_set_err("out of memory");
		return DERP_CLIENT_ERROR;
	}
	size_t n = derp_client_build_info(frame, cap, c->priv, c->server_key, plain, plen);
	int r = n ? derp_client_write_raw(c, frame, n) : DERP_CLIENT_ERROR;
	if (!n)
		client_set_err("cannot seal ClientInfo");
	free(frame);
	return r;
}

/* Open the ServerInfo box and check its JSON; keeps the plaintext in c->server_info
 * and applies the advisory rate limit. */
int client_parse_server_info(struct derp_client *c, const uint8_t *b, uint32_t len)
{
	if (len < crypto_box_NONCEBYTES + crypto_box_MACBYTES ||
	    len > crypto_box_NONCEBYTES + MAX_INFO_LEN) {
		client_set_err("bad ServerInfo length %u", len);
		return DERP_CLIENT_ERROR;
	}
	size_t plen = len - crypto_box_NONCEBYTES - crypto_box_MACBYTES;
	char *plain = malloc(plen + 1);
	if (!plain) {
		client_set_err("out of memory");
		return DERP_CLIENT_ERROR;
	}
	if (crypto_box_open_easy((uint8_t *)plain, b + crypto_box_NONCEBYTES,
				 len - crypto_box_NONCEBYTES, b, c->server_key, c->priv) != 0) {
		free(plain);
		client_set_err("ServerInfo box does not open with the server key");
		return DERP_CLIENT_ERROR;
	}
	plain[plen] = '\0';
	json_error_t je;
	json_t *j = json_loadb(plain, plen, JSON_DECODE_ANY, &je);
	if (!j || !(json_is_object(j) || json_is_null(j))) {
		json_decref(j);
		client_set_err("ServerInfo is not a JSON object: %.100s", plain);
		free(plain);
		return DERP_CLIENT_ERROR;
	}
	json_t *rate = json_object_get(j, "TokenBucketBytesPerSecond");
	json_t *burst = json_object_get(j, "TokenBucketBytesBurst");
	c->tb_rate = json_is_integer(rate) ? (double)json_integer_value(rate) : 0;
	c->tb_burst = json_is_integer(burst) ? (double)json_integer_value(burst) : 0;
	c->tb_tokens = c->tb_burst;
	c->tb_last_ns = client_now_ns();
	json_decref(j);
	free(c->server_info);
	c->server_info = plain;
	return 0;
}

static int read_server_key(struct derp_client *c, int64_t deadline)
{
	uint8_t type;
	uint32_t len;
	const uint8_t *p;
	int r = client_read_frame(c, &type, &len, &p, MAX_SERVER_KEY, deadline);

	if (r)
		return r;
	if (type != FRAME_SERVER_KEY || len < DERP_MAGIC_LEN + 32 ||
	    memcmp(p, DERP_MAGIC, DERP_MAGIC_LEN) != 0) {
		client_set_err("invalid server greeting (frame type 0x%02x, %u bytes)", type, len);
		return DERP_CLIENT_ERROR;
	}
	if (c->have_server_key && memcmp(c->server_key, p + DERP_MAGIC_LEN, 32) != 0) {
		client_set_err("ServerKey frame carries a different key than expected");
		return DERP_CLIENT_ERROR;
	}
	memcpy(c->server_key, p + DERP_MAGIC_LEN, 32);
	c->have_server_key = 1;
	return 0;
}

int derp_client_finish(struct derp_client *c)
{
	int64_t deadline = client_deadline_after(c->timeout_ms);
	uint8_t type;
	uint32_t len;
	const uint8_t *p;
	int r;

	if (c->fast_start && (r = read_server_key(c, deadline)))
		return r;
	if ((r = client_read_frame(c, &type, &len, &p, MAX_FRAME, deadline)))
		return r;
	if (type != FRAME_SERVER_INFO) {
		client_set_err("first frame after ServerKey is type 0x%02x, not ServerInfo", type);
		return DERP_CLIENT_ERROR;
	}
	return client_parse_server_info(c, p, len);
}

/* Read the response head and check for 101 (a Go client checks nothing else). */
static int read_http_head(struct derp_client *c, int64_t deadline)
{
	char *end;

	for (;;) {
		end = c->rbuf ? memmem(c->rbuf + c->rpos, c->rlen - c->rpos, "\r\n\r\n", 4) : NULL;
		if (end)
			break;
		if (c->rlen - c->rpos >= MAX_HTTP_HEAD) {
			client_set_err("HTTP response head too long");
			return DERP_CLIENT_ERROR;
		}
		int r = client_read_more(c, 1, deadline);
		if (r)
			return r;
	}
	size_t hl = (size_t)(end + 4 - (char *)(c->rbuf + c->rpos));
	free(c->http_head);
	c->http_head = strndup((char *)c->rbuf + c->rpos, hl);
	c->rpos += hl;
	if (!c->http_head) {
		client_set_err("out of memory");
		return DERP_CLIENT_ERROR;
	}
	int status = 0;
	if (sscanf(c->http_head, "HTTP/%*d.%*d %d", &status) != 1 || status != 101) {
		client_set_err("HTTP upgrade failed: %.*s", (int)strcspn(c->http_head, "\r\n"),
			c->http_head);
		return DERP_CLIENT_ERROR;
	}
	return 0;
}

static int connect_tcp(const char *host, uint16_t port, int rcvbuf, int64_t deadline)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res, *ai;
	char portstr[8];
	int fd = -1;

	snprintf(portstr, sizeof portstr, "%u", port);
	int g = getaddrinfo(host, portstr, &hints, &res);
	if (g) {
		client_set_err("resolve %s: %s", host, gai_strerror(g));
		return -1;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
			    ai->ai_protocol);
		if (fd < 0) {
			client_set_err("socket: %s", strerror(errno));
			continue;
		}
		if (rcvbuf > 0)
			setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
		int one = 1; /* Go dials with TCP_NODELAY */
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		if (errno == EINPROGRESS && client_wait_fd(fd, POLLOUT, deadline) == 0) {
			int err = 0;
			socklen_t el = sizeof err;
			getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
			if (err == 0)
				break;
			errno = err;
		}
		client_set_err("connect %s:%u: %s", host, port, strerror(errno));
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	return fd;
}

static struct derp_client *client_new(int fd, const uint8_t *priv)
{
	struct derp_client *c = calloc(1, sizeof *c);

	if (!c) {
		client_set_err("out of memory");
		return NULL;
	}
	c->fd = fd;
	/* every wait is a poll() with a deadline, so the socket must never block */
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0)
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	c->timeout_ms = DERP_CLIENT_DEFAULT_TIMEOUT_MS;
	if (priv)
		memcpy(c->priv, priv, 32);
	else
		key_generate(c->priv);
	key_public(c->pub, c->priv);
	return c;
}

struct derp_client *derp_client_attach(int fd, const uint8_t priv[32],
				       const uint8_t server_key[32])
{
	if (key_init() != 0) {
		client_set_err("sodium_init failed");
		return NULL;
	}
	struct derp_client *c = client_new(fd, priv);
	if (c && server_key) {
		memcpy(c->server_key, server_key, 32);
		c->have_server_key = 1;
	}
	return c;
}

struct derp_client *derp_client_open_fd(int fd, const char *host,
					const struct derp_client_opts *opts)
{
	static const struct derp_client_opts none;
	const struct derp_client_opts *o = opts ? opts : &none;
	struct derp_client *c;
	char req[4096];

	err_buf[0] = '\0';
	if (o->fast_start && !o->server_key && !o->tls) {
		client_set_err("fast start needs the server key");
		close(fd);
		return NULL;
	}
	c = derp_client_attach(fd, o->private_key, o->server_key);
	if (!c) {
		close(fd);
		return NULL;
	}
	if (o->timeout_ms > 0)
		c->timeout_ms = o->timeout_ms;
	c->fast_start = o->fast_start;
	if (o->tls) {
		struct client_tls_meta meta;
		struct client_tls_opts to = { o->tls_server_name ? o->tls_server_name : host,
					      o->tls_ca_file, o->tls_insecure, o->tls_max_version,
					      o->fast_start && !o->server_key ? &meta : NULL };
		char terr[256];
		int64_t dl = client_deadline_after(c->timeout_ms);
		/* host may be "name:port": the TLS name is the part before the port. */
		char name[256];
		if (!o->tls_server_name) {
			snprintf(name, sizeof name, "%s", host);
			char *colon = strrchr(name, ':');
			if (colon && name[0] != '[')
				*colon = '\0';
			to.server_name = name;
		}
		c->ssl = client_tls_start(fd, &to, dl / 1000000, terr, sizeof terr);
		if (!c->ssl) {
			client_set_err("%s", terr);
			derp_client_close(c);
			return NULL;
		}
		if (to.meta) { /* Go: fast start only with a key and a version from the cert */
			c->fast_start = meta.version != 0;
			memcpy(c->server_key, meta.key, 32);
			c->have_server_key = c->fast_start;
		}
	}
	c->is_prober = o->is_prober;
	if (o->mesh_key) {
		memcpy(c->mesh_key, o->mesh_key, 32);
		c->have_mesh_key = 1;
		if (o->mesh_key_text && strlen(o->mesh_key_text) == KEY_HEX_LEN)
			memcpy(c->mesh_key_text, o->mesh_key_text, KEY_HEX_LEN + 1);
	}
	if (o->info_json) {
		c->info_json_len = o->info_json_len ? o->info_json_len : strlen(o->info_json);
		c->info_json = malloc(c->info_json_len + 1);
		if (!c->info_json)
			goto fail;
		memcpy(c->info_json, o->info_json, c->info_json_len);
	}
	/* Go puts the extra headers in sorted order after Host and User-Agent. */
	const char *up = o->upgrade ? o->upgrade : "DERP";
	int n = snprintf(req, sizeof req,
			 "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: derpd-client/1\r\n"
			 "Connection: Upgrade\r\n%s%s%s%s%s%s%s\r\n",
			 o->path ? o->path : "/derp", o->host ? o->host : host,
			 c->fast_start ? "Derp-Fast-Start: 1\r\n" : "",
			 o->ideal_node ? "Ideal-Node: " : "", o->ideal_node ? o->ideal_node : "",
			 o->ideal_node ? "\r\n" : "",
			 *up ? "Upgrade: " : "", up, *up ? "\r\n" : "");
	if (n < 0 || (size_t)n >= sizeof req) {
		client_set_err("upgrade request too long");
		goto fail;
	}
	if (o->extra_headers) { /* insert before the final blank line */
		size_t el = strlen(o->extra_headers);
		if ((size_t)n + el >= sizeof req) {
			client_set_err("upgrade request too long");
			goto fail;
		}
		memmove(req + n - 2 + el, req + n - 2, 3);
		memcpy(req + n - 2, o->extra_headers, el);
		n += (int)el;
	}
	if (c->fast_start) { /* held back: goes out in the same send() as ClientInfo */
		c->pend = strndup(req, (size_t)n);
		if (!c->pend)
			goto fail;
		c->pend_len = (size_t)n;
		return c;
	}
	int64_t deadline = client_deadline_after(c->timeout_ms);
	if (derp_client_write_raw(c, req, (size_t)n) != 0 || read_http_head(c, deadline) != 0 ||
	    read_server_key(c, deadline) != 0)
		goto fail;
	return c;
fail:
	if (!err_buf[0])
		client_set_err("out of memory");
	derp_client_close(c);
	return NULL;
}

struct derp_client *derp_client_open(const char *host, uint16_t port,
				     const struct derp_client_opts *opts)
{
	int tmo = opts && opts->timeout_ms > 0 ? opts->timeout_ms : DERP_CLIENT_DEFAULT_TIMEOUT_MS;
	char hostport[300];

	err_buf[0] = '\0';
	int fd = connect_tcp(host, port, opts ? opts->rcvbuf : 0, client_deadline_after(tmo));
	if (fd < 0)
		return NULL;
	snprintf(hostport, sizeof hostport, strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, port);
	return derp_client_open_fd(fd, hostport, opts);
}

struct derp_client *derp_client_connect(const char *host, uint16_t port,
					const struct derp_client_opts *opts)
{
	struct derp_client *c = derp_client_open(host, port, opts);

	if (c && (derp_client_send_info(c) != 0 || derp_client_finish(c) != 0)) {
		char why[sizeof err_buf];
		memcpy(why, err_buf, sizeof why);
		derp_client_close(c);
		memcpy(err_buf, why, sizeof why);
		return NULL;
	}
	return c;
}

void derp_client_close(struct derp_client *c)
{
	if (!c)
		return;
	if (c->ssl)
		client_tls_free(c->ssl);
	if (c->fd >= 0)
		close(c->fd);
	sodium_memzero(c->priv, sizeof c->priv);
	free(c->info_json);
	free(c->pend);
	free(c->rbuf);
	free(c->http_head);
	free(c->server_info);
	free(c);
}

int derp_client_detach(struct derp_client *c, uint8_t *buf, size_t cap, size_t *len)
{
	size_t n = derp_client_buffered(c);

	if (n > cap || c->pend_len) {
		client_set_err(c->pend_len ? "upgrade request not sent yet" : "%zu bytes buffered", n);
		return -1;
	}
	if (n)
		memcpy(buf, c->rbuf + c->rpos + c->consumed, n);
	*len = n;
	int fd = c->fd;
	c->fd = -1;
	derp_client_close(c);
	return fd;
}

int derp_client_detach_tls(struct derp_client *c, struct WOLFSSL **ssl, uint8_t *buf,
			   size_t cap, size_t *len)
{
	struct WOLFSSL *s = c->ssl;

	c->ssl = NULL; /* not freed by the close inside detach */
	int fd = derp_client_detach(c, buf, cap, len);
	if (fd < 0) {
		c->ssl = s;
		return -1;
	}
	*ssl = s;
	return fd;
}

int derp_client_tls_version(const struct derp_client *c)
{
	return c->ssl ? client_tls_version(c->ssl) : 0;
}

int derp_client_fd(const struct derp_client *c)
{
	return c->fd;
}

const uint8_t *derp_client_public_key(const struct derp_client *c)
{
	return c->pub;
}

const uint8_t *derp_client_server_key(const struct derp_client *c)
{
	return c->have_server_key ? c->server_key : NULL;
}

const char *derp_client_http_response(const struct derp_client *c)
{
	return c->http_head ? c->http_head : "";
}

const char *derp_client_server_info(const struct derp_client *c)
{
	return c->server_info ? c->server_info : "";
}

void derp_client_set_timeout(struct derp_client *c, int timeout_ms)
{
	c->timeout_ms = timeout_ms > 0 ? timeout_ms : DERP_CLIENT_DEFAULT_TIMEOUT_MS;
}

size_t derp_client_buffered(const struct derp_client *c)
{
	return c->rlen - c->rpos - c->consumed + (c->ssl ? client_tls_pending(c->ssl) : 0);
}
