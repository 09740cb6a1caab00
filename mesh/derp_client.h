/* A DERP client (spec PROTOCOL.md §3, §6, §12): blocking calls on a non-blocking socket,
 * each bounded by a timeout via poll(). Used by tests and tools now, by mesh later.
 *
 * One reader and one writer may use a client from two threads at once (the read side and
 * the write side share no state after the handshake); anything more needs a lock.
 *
 * Errors: functions returning int give 0 on success or a negative DERP_CLIENT_* code;
 * functions returning a pointer give NULL. derp_client_error() then says why. */
#ifndef DERPD_DERP_CLIENT_H
#define DERPD_DERP_CLIENT_H
#include <stddef.h>
#include <stdint.h>
#include "server/frame.h"

#define DERP_CLIENT_CLOSED   (-1)  /* peer closed: EOF or connection reset */
#define DERP_CLIENT_TIMEOUT  (-2)  /* nothing (complete) within the timeout; state kept */
#define DERP_CLIENT_ERROR    (-3)  /* I/O error or protocol violation by the server */

#define DERP_CLIENT_DEFAULT_TIMEOUT_MS 5000

struct derp_client;

struct derp_client_opts {
	const uint8_t *private_key;  /* 32 bytes; NULL = a fresh key */
	/* Known server key (32 bytes). Required for fast_start without TLS. Without fast
	 * start, if set, the ServerKey frame must carry this key. */
	const uint8_t *server_key;
	/* send Derp-Fast-Start: 1, pipeline ClientInfo. With tls and no server_key, as a Go
	 * client: the key comes from the meta certificate if TLS 1.3 was negotiated, and
	 * without one (TLS 1.2, no meta certificate) the classic 101 exchange is used. */
	int fast_start;
	const char *ideal_node;      /* Ideal-Node header value, NULL = none */
	const char *path;            /* request path, NULL = "/derp" */
	const char *upgrade;         /* Upgrade header value, NULL = "DERP", "" = no header */
	const char *host;            /* Host header, NULL = "<host>:<port>" */
	const char *extra_headers;   /* raw "Name: v\r\n" lines appended, NULL = none */
	const uint8_t *mesh_key;     /* 32 bytes -> "meshKey" in ClientInfo, NULL = none */
	/* with mesh_key: the text to send as "meshKey" (64 hex digits as configured, case
	 * kept), NULL = mesh_key in lower-case hex */
	const char *mesh_key_text;
	int is_prober;               /* "IsProber":true in ClientInfo */
	/* Replace the whole ClientInfo plaintext (for malformed-input tests). */
	const char *info_json;
	size_t info_json_len;        /* 0 = strlen(info_json) */
	int rcvbuf;                  /* SO_RCVBUF before connecting (0 = kernel default) */
	/* DERP over TLS (https://host/derp): ALPN http/1.1, SNI = tls_server_name unless it
	 * is an IP literal (as Go), certificate verified against tls_ca_file (NULL = the
	 * system's roots, or SSL_CERT_FILE / SSL_CERT_DIR as Go reads them) unless
	 * tls_insecure. tls_max_version: 0 = up to 1.3, 2 = 1.2,
	 * 1 = 1.1 (to test that a server refuses it). */
	int tls;
	const char *tls_server_name; /* NULL = host */
	const char *tls_ca_file;
	int tls_insecure;
	int tls_max_version;
	int timeout_ms;              /* per-call timeout, 0 = DERP_CLIENT_DEFAULT_TIMEOUT_MS */
};

enum derp_msg_kind {
	DERP_MSG_PACKET = 1,   /* RecvPacket: key = source, data/len = packet */
	DERP_MSG_PEER_GONE,    /* key, reason (0x00 when the frame has no reason byte) */
	DERP_MSG_PEER_PRESENT, /* key, ip (16, v4-mapped), port, flags; has_* for short forms */
	DERP_MSG_KEEP_ALIVE,
	DERP_MSG_PING,         /* ping8 */
	DERP_MSG_PONG,         /* ping8 */
	DERP_MSG_HEALTH,       /* data/len = problem text, empty = healthy */
	DERP_MSG_RESTARTING,   /* reconnect_ms, try_for_ms */
	DERP_MSG_SERVER_INFO,  /* data/len = decrypted JSON */
	DERP_MSG_SERVER_KEY,   /* a (late) ServerKey frame: key = its key */
	DERP_MSG_SHORT,        /* known type, too short to decode (a Go client skips these) */
	DERP_MSG_UNKNOWN,      /* any other type: data/len = payload */
};

struct derp_msg {
	enum derp_msg_kind kind;
	uint8_t frame_type;
	uint32_t frame_len;
	uint8_t key[32];
	const uint8_t *data;   /* points into the client's buffer: valid until the next recv */
	size_t len;
	uint8_t reason;
	uint8_t ip[16];
	uint16_t port;
	uint8_t flags;
	int has_addr, has_flags;
	uint8_t ping8[8];
	uint32_t reconnect_ms, try_for_ms;
};

/* Why the last call on this thread failed. */
const char *derp_client_error(void);

/* TCP connect to host:port (numeric or name), HTTP upgrade, ServerKey, ClientInfo,
 * ServerInfo: a client ready to send and receive. opts may be NULL. */
struct derp_client *derp_client_connect(const char *host, uint16_t port,
					const struct derp_client_opts *opts);

/* The same handshake in steps, for tests that break it on purpose:
 *   open: connect, send the upgrade request, and (classic mode) read the 101 and the
 *         ServerKey frame. In fast start nothing is written yet: the request goes out
 *         with the next write, in the same send() (normally the ClientInfo).
 *   send_info: write the ClientInfo frame (opts.info_json or the default JSON).
 *   finish: read ServerInfo (fast start: ServerKey first, then ServerInfo); it must be
 *           the first frame after ServerKey.
 * open_fd does what open does on an already connected socket (it takes ownership). */
struct derp_client *derp_client_open(const char *host, uint16_t port,
				     const struct derp_client_opts *opts);
struct derp_client *derp_client_open_fd(int fd, const char *host,
					const struct derp_client_opts *opts);
int derp_client_send_info(struct derp_client *c);
int derp_client_finish(struct derp_client *c);

/* Wrap a socket already in the steady state (no handshake); for codec tests. */
struct derp_client *derp_client_attach(int fd, const uint8_t priv[32],
				       const uint8_t server_key[32]);

void derp_client_close(struct derp_client *c);
/* Take the socket out of c for another owner (the relay's epoll loop): copies the bytes
 * received but not yet returned by recv into buf (*len of them; see
 * derp_client_buffered() for the size needed), frees c and returns the still-open fd.
 * Returns -1 and leaves c untouched if they do not fit or a fast-start request is still
 * unsent. */
/* derp_client_detach for a TLS client: also hands over the wolfSSL session (*ssl), which
 * may hold decrypted bytes of its own; the new owner frees it with wolfSSL_free. */
struct WOLFSSL;
int derp_client_detach_tls(struct derp_client *c, struct WOLFSSL **ssl, uint8_t *buf,
			   size_t cap, size_t *len);
/* The negotiated TLS version (0x0303 = 1.2, 0x0304 = 1.3), or 0 without TLS. */
int derp_client_tls_version(const struct derp_client *c);
int derp_client_detach(struct derp_client *c, uint8_t *buf, size_t cap, size_t *len);

/* Accessors. */
int derp_client_fd(const struct derp_client *c);
const uint8_t *derp_client_public_key(const struct derp_client *c);
const uint8_t *derp_client_server_key(const struct derp_client *c);
const char *derp_client_http_response(const struct derp_client *c); /* raw head, "" if none */
const char *derp_client_server_info(const struct derp_client *c);   /* JSON, "" if none */
void derp_client_set_timeout(struct derp_client *c, int timeout_ms);
/* Bytes received but not yet returned by recv (poll() cannot see them). */
size_t derp_client_buffered(const struct derp_client *c);

/* Receive one message. timeout_ms: < 0 = the client's timeout, 0 = only what is already
 * readable. Returns 0 and fills m, or DERP_CLIENT_TIMEOUT / _CLOSED / _ERROR. */
int derp_client_recv(struct derp_client *c, struct derp_msg *m, int timeout_ms);

/* Frames a client sends. len is the packet length (0 .. DERP_MAX_PACKET; longer is
 * written anyway so tests can send oversize frames). send returns 0 also when the
 * advisory rate limit from ServerInfo dropped the packet silently (as Go clients do). */
int derp_client_send(struct derp_client *c, const uint8_t dst[32], const void *pkt, size_t len);
int derp_client_forward(struct derp_client *c, const uint8_t src[32], const uint8_t dst[32],
			const void *pkt, size_t len);
int derp_client_ping(struct derp_client *c, const uint8_t data[8]);
int derp_client_pong(struct derp_client *c, const uint8_t data[8]);
int derp_client_note_preferred(struct derp_client *c, int preferred);
int derp_client_watch_conns(struct derp_client *c);
int derp_client_close_peer(struct derp_client *c, const uint8_t key[32]);
/* Any frame: header(type, len) + payload. */
int derp_client_write_frame(struct derp_client *c, uint8_t type, const void *payload,
			    uint32_t len);
/* Arbitrary bytes, for malformed-input tests. */
int derp_client_write_raw(struct derp_client *c, const void *buf, size_t len);
/* Half-close: the server reads EOF, we can still read. */
int derp_client_shutdown_write(struct derp_client *c);

/* Build a ClientInfo frame (header included) sealing plaintext for server_key with priv.
 * Returns the frame length, or 0 if out is too small (needs 5 + 72 + plain_len). */
size_t derp_client_build_info(uint8_t *out, size_t cap, const uint8_t priv[32],
			      const uint8_t server_key[32], const void *plain, size_t plain_len);

#endif
