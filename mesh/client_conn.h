/* The DERP client's connection state (internal to mesh/), shared by its two halves:
 * derp_client.c sets a connection up (connect, upgrade, handshake, close, detach) and
 * client_io.c moves bytes and frames over it (buffered reads, writes, recv, send). */
#ifndef DERPD_CLIENT_CONN_H
#define DERPD_CLIENT_CONN_H
#include <stddef.h>
#include <stdint.h>

#define MAX_FRAME       (1u << 20) /* Go clients refuse longer frames */

struct WOLFSSL;

struct derp_client {
	int fd;
	struct WOLFSSL *ssl;      /* TLS session, or NULL for plain HTTP */
	int timeout_ms;
	int fast_start;
	uint8_t priv[32], pub[32], server_key[32];
	int have_server_key;
	uint8_t mesh_key[32];
	char mesh_key_text[65];   /* "meshKey" as configured (case kept), "" = hex of mesh_key */
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

/* derp_client.c: the text derp_client_error() returns on this thread. */
__attribute__((format(printf, 1, 2)))
void client_set_err(const char *fmt, ...);
/* derp_client.c: open the ServerInfo box (at the handshake, or a later one in recv). */
int client_parse_server_info(struct derp_client *c, const uint8_t *b, uint32_t len);

/* client_io.c: CLOCK_MONOTONIC time, and poll() until an fd is ready or a deadline. */
int64_t client_now_ns(void);
int64_t client_deadline_after(int timeout_ms);
int client_wait_fd(int fd, short events, int64_t deadline);
/* client_io.c: buffer at least one more byte (room for want unread ones), or the next
 * whole frame (its payload stays in c->rbuf until the next read). */
int client_read_more(struct derp_client *c, size_t want, int64_t deadline);
int client_read_frame(struct derp_client *c, uint8_t *type, uint32_t *len,
		      const uint8_t **payload, uint32_t max_len, int64_t deadline);

#endif
