/* DERP client: handshake, framing and messages (spec PROTOCOL.md §3.1, §6, §12). */
#include "mesh/derp_client.h"
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
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "server/key.h"

#define MAX_HTTP_HEAD   16384
#define MAX_SERVER_KEY  1024u      /* Go clients refuse a longer greeting */
#define MAX_FRAME       (1u << 20) /* Go clients refuse longer frames */
#define MAX_INFO_LEN    (1u << 20) /* MaxInfoLen: bound on the ServerInfo box */
#define RBUF_INIT       4096

struct derp_client {
	int fd;
	struct WOLFSSL *ssl;      /* TLS session, or NULL for plain HTTP */
	int timeout_ms;
	int fast_start;
	uint8_t priv[32], pub[32], server_key[32];
	int have_server_key;
	uint8_t mesh_key[32];
	int have_mesh_key, is_prober;
	char *info_json;          /* caller's ClientInfo plaintext, or NULL */
	size_t info_json_len;
	/* fast start: the request, sent together with the next write */
	char *pend;
	size_t pend_len;
	/* read side: unread bytes are rbuf[rpos, rlen); consumed = the frame handed out by
	 * the previous recv, discarded at the start of the next one */
	uint8_t *rbuf;
	size_t rcap, rpos, rlen, consumed;
	char *http_head;
	char *server_info;
	/* advisory send limit from ServerInfo (token bucket in bytes, Go rate.Limiter); set
	 * at the handshake (a later ServerInfo resets it: then the writer needs a lock) */
	double tb_rate, tb_burst, tb_tokens;
	int64_t tb_last_ns;
};

static _Thread_local char err_buf[256];

const char *derp_client_error(void)
{
	return err_buf;
}

__attribute__((format(printf, 1, 2)))
static void set_err(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err_buf, sizeof err_buf, fmt, ap);
	va_end(ap);
}

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t deadline_after(int timeout_ms)
{
	return now_ns() + (int64_t)timeout_ms * 1000000;
}

/* Milliseconds left until deadline, rounded up, never negative. */
static int remaining_ms(int64_t deadline)
{
	int64_t left = deadline - now_ns();

	if (left <= 0)
		return 0;
	return (int)((left + 999999) / 1000000);
}

static int wait_fd(int fd, short events, int64_t deadline)
{
	struct pollfd p = { .fd = fd, .events = events };

	for (;;) {
		int r = poll(&p, 1, remaining_ms(deadline));
		if (r > 0)
			return 0;
		if (r == 0) {
			set_err("timed out");
			return DERP_CLIENT_TIMEOUT;
		}
		if (errno != EINTR) {
			set_err("poll: %s", strerror(errno));
			return DERP_CLIENT_ERROR;
		}
	}
}

/* ---- read side ---------------------------------------------------------------- */

/* Make room for want unread bytes, then read whatever arrives (at least one byte). */
static int read_more(struct derp_client *c, size_t want, int64_t deadline)
{
	if (c->rpos > 0 && (c->rpos == c->rlen || c->rlen == c->rcap || c->rcap - c->rpos < want)) {
		memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
		c->rlen -= c->rpos;
		c->rpos = 0;
	}
	if (c->rcap - c->rpos < want || c->rlen == c->rcap) {
		size_t ncap = c->rcap ? c->rcap : RBUF_INIT;
		while (ncap - c->rpos < want || ncap == c->rlen)
			ncap *= 2;
		uint8_t *nb = realloc(c->rbuf, ncap);
		if (!nb) {
			set_err("out of memory");
			return DERP_CLIENT_ERROR;
		}
		c->rbuf = nb;
		c->rcap = ncap;
	}
	for (;;) {
		short want = POLLIN;
		ssize_t n = c->ssl ? client_tls_read(c->ssl, c->rbuf + c->rlen, c->rcap - c->rlen, &want)
				   : recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
		if (n > 0) {
			c->rlen += (size_t)n;
			return 0;
		}
		if (n == 0) {
			set_err("connection closed by server (EOF)");
			return DERP_CLIENT_CLOSED;
		}
		if (errno == EINTR)
			continue;
		if (errno == ECONNRESET || errno == EPIPE) {
			set_err("connection reset by server");
			return DERP_CLIENT_CLOSED;
		}
		if (errno != EAGAIN && errno != EWOULDBLOCK) {
			set_err("recv: %s", strerror(errno));
			return DERP_CLIENT_ERROR;
		}
		int r = wait_fd(c->fd, want, deadline);
		if (r)
			return r;
	}
}

/* Ensure n unread bytes are buffered. */
static int fill(struct derp_client *c, size_t n, int64_t deadline)
{
	while (c->rlen - c->rpos < n) {
		int r = read_more(c, n, deadline);
		if (r)
			return r;
	}
	return 0;
}

/* Next whole frame; its payload stays in rbuf until the next call. */
static int read_frame(struct derp_client *c, uint8_t *type, uint32_t *len,
		      const uint8_t **payload, uint32_t max_len, int64_t deadline)
{
	int r;

	c->rpos += c->consumed;
	c->consumed = 0;
	if ((r = fill(c, FRAME_HEADER_LEN, deadline)))
		return r;
	frame_get_header(c->rbuf + c->rpos, type, len);
	if (*len > max_len) {
		set_err("frame type 0x%02x too long: %u bytes", *type, *len);
		return DERP_CLIENT_ERROR;
	}
	if ((r = fill(c, FRAME_HEADER_LEN + (size_t)*len, deadline)))
		return r;
	*payload = c->rbuf + c->rpos + FRAME_HEADER_LEN;
	c->consumed = FRAME_HEADER_LEN + (size_t)*len;
	return 0;
}

/* ---- write side --------------------------------------------------------------- */

static int write_iov(struct derp_client *c, const struct iovec *in, int nin)
{
	struct iovec iov[8];
	int n = 0;
	int64_t deadline = deadline_after(c->timeout_ms);

	if (c->pend_len)
		iov[n++] = (struct iovec){ c->pend, c->pend_len };
	for (int i = 0; i < nin && n < 8; i++)
		if (in[i].iov_len)
			iov[n++] = in[i];
	struct iovec *v = iov;
	while (n > 0) {
		struct msghdr mh = { .msg_iov = v, .msg_iovlen = (size_t)n };
		short want = POLLOUT;
		/* TLS: one record per buffer; these are tests and mesh control traffic. */
		ssize_t w = c->ssl ? client_tls_write(c->ssl, v->iov_base, v->iov_len, &want)
				   : sendmsg(c->fd, &mh, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				int r = wait_fd(c->fd, want, deadline);
				if (r)
					return r;
				continue;
			}
			set_err("send: %s", strerror(errno));
			return (errno == EPIPE || errno == ECONNRESET) ? DERP_CLIENT_CLOSED
								      : DERP_CLIENT_ERROR;
		}
		while (n > 0 && (size_t)w >= v->iov_len) {
			w -= (ssize_t)v->iov_len;
			v++;
			n--;
		}
		if (n > 0) {
			v->iov_base = (char *)v->iov_base + w;
			v->iov_len -= (size_t)w;
		}
	}
	free(c->pend);
	c->pend = NULL;
	c->pend_len = 0;
	return 0;
}

int derp_client_write_raw(struct derp_client *c, const void *buf, size_t len)
{
	struct iovec v = { (void *)buf, len };

	return write_iov(c, &v, 1);
}

int derp_client_write_frame(struct derp_client *c, uint8_t type, const void *payload,
			    uint32_t len)
{
	uint8_t hdr[FRAME_HEADER_LEN];
	struct iovec v[2] = { { hdr, sizeof hdr }, { (void *)payload, payload ? len : 0 } };

	frame_put_header(hdr, type, len);
	return write_iov(c, v, 2);
}

/* Go's rate.Limiter.AllowN: refill, then take n tokens if there are enough. */
static int rate_allow(struct derp_client *c, size_t n)
{
	int64_t t = now_ns();

	c->tb_tokens += c->tb_rate * (double)(t - c->tb_last_ns) / 1e9;
	if (c->tb_tokens > c->tb_burst)
		c->tb_tokens = c->tb_burst;
	c->tb_last_ns = t;
	if ((double)n > c->tb_tokens)
		return 0;
	c->tb_tokens -= (double)n;
	return 1;
}

int derp_client_send(struct derp_client *c, const uint8_t dst[32], const void *pkt, size_t len)
{
	uint8_t hdr[FRAME_HEADER_LEN];
	struct iovec v[3] = { { hdr, sizeof hdr }, { (void *)dst, 32 }, { (void *)pkt, len } };

	if (c->tb_rate > 0 && !rate_allow(c, FRAME_HEADER_LEN + 32 + len))
		return 0; /* dropped silently, as a Go client does */
	frame_put_header(hdr, FRAME_SEND_PACKET, (uint32_t)(32 + len));
	return write_iov(c, v, 3);
}

int derp_client_forward(struct derp_client *c, const uint8_t src[32], const uint8_t dst[32],
			const void *pkt, size_t len)
{
	uint8_t hdr[FRAME_HEADER_LEN];
	struct iovec v[4] = { { hdr, sizeof hdr }, { (void *)src, 32 }, { (void *)dst, 32 },
			      { (void *)pkt, len } };

	frame_put_header(hdr, FRAME_FORWARD_PACKET, (uint32_t)(64 + len));
	return write_iov(c, v, 4);
}

int derp_client_ping(struct derp_client *c, const uint8_t data[8])
{
	return derp_client_write_frame(c, FRAME_PING, data, 8);
}

int derp_client_pong(struct derp_client *c, const uint8_t data[8])
{
	return derp_client_write_frame(c, FRAME_PONG, data, 8);
}

int derp_client_note_preferred(struct derp_client *c, int preferred)
{
	uint8_t b = preferred ? 1 : 0;

	return derp_client_write_frame(c, FRAME_NOTE_PREFERRED, &b, 1);
}

int derp_client_watch_conns(struct derp_client *c)
{
	return derp_client_write_frame(c, FRAME_WATCH_CONNS, NULL, 0);
}

int derp_client_close_peer(struct derp_client *c, const uint8_t key[32])
{
	return derp_client_write_frame(c, FRAME_CLOSE_PEER, key, 32);
}

int derp_client_shutdown_write(struct derp_client *c)
{
	if (shutdown(c->fd, SHUT_WR) != 0) {
		set_err("shutdown: %s", strerror(errno));
		return DERP_CLIENT_ERROR;
	}
	return 0;
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
		snprintf(mesh, sizeof mesh, "\"meshKey\":\"%s\",", hex);
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
		set_err("server key unknown");
		return DERP_CLIENT_ERROR;
	}
	if (!plain) {
		plen = default_info_json(c, def, sizeof def);
		plain = def;
	}
	size_t cap = FRAME_HEADER_LEN + 32 + crypto_box_NONCEBYTES + crypto_box_MACBYTES + plen;
	uint8_t *frame = malloc(cap);
	if (!frame) {
		set_err("out of memory");
		return DERP_CLIENT_ERROR;
	}
	size_t n = derp_client_build_info(frame, cap, c->priv, c->server_key, plain, plen);
	int r = n ? derp_client_write_raw(c, frame, n) : DERP_CLIENT_ERROR;
	if (!n)
		set_err("cannot seal ClientInfo");
	free(frame);
	return r;
}

/* Open the ServerInfo box and check its JSON; keeps the plaintext in c->server_info
 * and applies the advisory rate limit. */
static int parse_server_info(struct derp_client *c, const uint8_t *b, uint32_t len)
{
	if (len < crypto_box_NONCEBYTES + crypto_box_MACBYTES ||
	    len > crypto_box_NONCEBYTES + MAX_INFO_LEN) {
		set_err("bad ServerInfo length %u", len);
		return DERP_CLIENT_ERROR;
	}
	size_t plen = len - crypto_box_NONCEBYTES - crypto_box_MACBYTES;
	char *plain = malloc(plen + 1);
	if (!plain) {
		set_err("out of memory");
		return DERP_CLIENT_ERROR;
	}
	if (crypto_box_open_easy((uint8_t *)plain, b + crypto_box_NONCEBYTES,
				 len - crypto_box_NONCEBYTES, b, c->server_key, c->priv) != 0) {
		free(plain);
		set_err("ServerInfo box does not open with the server key");
		return DERP_CLIENT_ERROR;
	}
	plain[plen] = '\0';
	json_error_t je;
	json_t *j = json_loadb(plain, plen, JSON_DECODE_ANY, &je);
	if (!j || !(json_is_object(j) || json_is_null(j))) {
		json_decref(j);
		set_err("ServerInfo is not a JSON object: %.100s", plain);
		free(plain);
		return DERP_CLIENT_ERROR;
	}
	json_t *rate = json_object_get(j, "TokenBucketBytesPerSecond");
	json_t *burst = json_object_get(j, "TokenBucketBytesBurst");
	c->tb_rate = json_is_integer(rate) ? (double)json_integer_value(rate) : 0;
	c->tb_burst = json_is_integer(burst) ? (double)json_integer_value(burst) : 0;
	c->tb_tokens = c->tb_burst;
	c->tb_last_ns = now_ns();
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
	int r = read_frame(c, &type, &len, &p, MAX_SERVER_KEY, deadline);

	if (r)
		return r;
	if (type != FRAME_SERVER_KEY || len < DERP_MAGIC_LEN + 32 ||
	    memcmp(p, DERP_MAGIC, DERP_MAGIC_LEN) != 0) {
		set_err("invalid server greeting (frame type 0x%02x, %u bytes)", type, len);
		return DERP_CLIENT_ERROR;
	}
	if (c->have_server_key && memcmp(c->server_key, p + DERP_MAGIC_LEN, 32) != 0) {
		set_err("ServerKey frame carries a different key than expected");
		return DERP_CLIENT_ERROR;
	}
	memcpy(c->server_key, p + DERP_MAGIC_LEN, 32);
	c->have_server_key = 1;
	return 0;
}

int derp_client_finish(struct derp_client *c)
{
	int64_t deadline = deadline_after(c->timeout_ms);
	uint8_t type;
	uint32_t len;
	const uint8_t *p;
	int r;

	if (c->fast_start && (r = read_server_key(c, deadline)))
		return r;
	if ((r = read_frame(c, &type, &len, &p, MAX_FRAME, deadline)))
		return r;
	if (type != FRAME_SERVER_INFO) {
		set_err("first frame after ServerKey is type 0x%02x, not ServerInfo", type);
		return DERP_CLIENT_ERROR;
	}
	return parse_server_info(c, p, len);
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
			set_err("HTTP response head too long");
			return DERP_CLIENT_ERROR;
		}
		int r = read_more(c, 1, deadline);
		if (r)
			return r;
	}
	size_t hl = (size_t)(end + 4 - (char *)(c->rbuf + c->rpos));
	free(c->http_head);
	c->http_head = strndup((char *)c->rbuf + c->rpos, hl);
	c->rpos += hl;
	if (!c->http_head) {
		set_err("out of memory");
		return DERP_CLIENT_ERROR;
	}
	int status = 0;
	if (sscanf(c->http_head, "HTTP/%*d.%*d %d", &status) != 1 || status != 101) {
		set_err("HTTP upgrade failed: %.*s", (int)strcspn(c->http_head, "\r\n"),
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
		set_err("resolve %s: %s", host, gai_strerror(g));
		return -1;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
			    ai->ai_protocol);
		if (fd < 0) {
			set_err("socket: %s", strerror(errno));
			continue;
		}
		if (rcvbuf > 0)
			setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
		int one = 1; /* Go dials with TCP_NODELAY */
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		if (errno == EINPROGRESS && wait_fd(fd, POLLOUT, deadline) == 0) {
			int err = 0;
			socklen_t el = sizeof err;
			getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
			if (err == 0)
				break;
			errno = err;
		}
		set_err("connect %s:%u: %s", host, port, strerror(errno));
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
		set_err("out of memory");
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
		set_err("sodium_init failed");
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
		set_err("fast start needs the server key");
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
		int64_t dl = deadline_after(c->timeout_ms);
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
			set_err("%s", terr);
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
		set_err("upgrade request too long");
		goto fail;
	}
	if (o->extra_headers) { /* insert before the final blank line */
		size_t el = strlen(o->extra_headers);
		if ((size_t)n + el >= sizeof req) {
			set_err("upgrade request too long");
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
	int64_t deadline = deadline_after(c->timeout_ms);
	if (derp_client_write_raw(c, req, (size_t)n) != 0 || read_http_head(c, deadline) != 0 ||
	    read_server_key(c, deadline) != 0)
		goto fail;
	return c;
fail:
	if (!err_buf[0])
		set_err("out of memory");
	derp_client_close(c);
	return NULL;
}

struct derp_client *derp_client_open(const char *host, uint16_t port,
				     const struct derp_client_opts *opts)
{
	int tmo = opts && opts->timeout_ms > 0 ? opts->timeout_ms : DERP_CLIENT_DEFAULT_TIMEOUT_MS;
	char hostport[300];

	err_buf[0] = '\0';
	int fd = connect_tcp(host, port, opts ? opts->rcvbuf : 0, deadline_after(tmo));
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
		set_err(c->pend_len ? "upgrade request not sent yet" : "%zu bytes buffered", n);
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

/* ---- steady state ------------------------------------------------------------- */

int derp_client_recv(struct derp_client *c, struct derp_msg *m, int timeout_ms)
{
	int64_t deadline = deadline_after(timeout_ms < 0 ? c->timeout_ms : timeout_ms);
	const uint8_t *b;
	uint8_t type;
	uint32_t n;
	int r;

	if ((r = read_frame(c, &type, &n, &b, MAX_FRAME, deadline)))
		return r;
	memset(m, 0, sizeof *m);
	m->frame_type = type;
	m->frame_len = n;
	m->data = b;
	m->len = n;
	/* Short forms a Go client skips are reported as DERP_MSG_SHORT instead, so that a
	 * test sees them. */
	switch (type) {
	case FRAME_RECV_PACKET:
	case FRAME_PEER_GONE:
	case FRAME_PEER_PRESENT:
		if (n < 32) {
			m->kind = DERP_MSG_SHORT;
			break;
		}
		memcpy(m->key, b, 32);
		m->data = b + 32;
		m->len = n - 32;
		if (type == FRAME_RECV_PACKET) {
			m->kind = DERP_MSG_PACKET;
		} else if (type == FRAME_PEER_GONE) {
			m->kind = DERP_MSG_PEER_GONE;
			m->reason = n > 32 ? b[32] : PEER_GONE_DISCONNECTED;
		} else {
			m->kind = DERP_MSG_PEER_PRESENT;
			if (n >= 32 + 18) {
				m->has_addr = 1;
				memcpy(m->ip, b + 32, 16);
				m->port = (uint16_t)(b[48] << 8 | b[49]);
			}
			if (n >= 32 + 19) {
				m->has_flags = 1;
				m->flags = b[50];
			}
		}
		break;
	case FRAME_KEEP_ALIVE:
		m->kind = DERP_MSG_KEEP_ALIVE;
		break;
	case FRAME_PING:
	case FRAME_PONG:
	case FRAME_RESTARTING:
		if (n < 8) {
			m->kind = DERP_MSG_SHORT;
			break;
		}
		memcpy(m->ping8, b, 8);
		m->reconnect_ms = frame_get_be32(b);
		m->try_for_ms = frame_get_be32(b + 4);
		m->kind = type == FRAME_PING ? DERP_MSG_PING
			: type == FRAME_PONG ? DERP_MSG_PONG : DERP_MSG_RESTARTING;
		break;
	case FRAME_HEALTH:
		m->kind = DERP_MSG_HEALTH;
		break;
	case FRAME_SERVER_INFO:
		if ((r = parse_server_info(c, b, n)))
			return r;
		m->kind = DERP_MSG_SERVER_INFO;
		m->data = (const uint8_t *)c->server_info;
		m->len = strlen(c->server_info);
		break;
	case FRAME_SERVER_KEY:
		if (n >= DERP_MAGIC_LEN + 32 && memcmp(b, DERP_MAGIC, DERP_MAGIC_LEN) == 0) {
			m->kind = DERP_MSG_SERVER_KEY;
			memcpy(m->key, b + DERP_MAGIC_LEN, 32);
		} else {
			m->kind = DERP_MSG_UNKNOWN;
		}
		break;
	default:
		m->kind = DERP_MSG_UNKNOWN;
		break;
	}
	return 0;
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
