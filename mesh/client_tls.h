/* TLS for the DERP client (internal to mesh/): a wolfSSL client session on a connected
 * non-blocking socket, read and written like the socket itself. */
#ifndef DERPD_CLIENT_TLS_H
#define DERPD_CLIENT_TLS_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct WOLFSSL;
struct WOLFSSL_CTX;

/* The server's DERP key as its meta certificate carries it (PROTOCOL.md §3.3). */
struct client_tls_meta {
	uint8_t key[32];
	int version;             /* the certificate's serial: DERP protocol version; 0 = none */
};

/* Read one DER certificate as a meta certificate: 1 (and m filled) if it is one, else 0.
 * Exposed for the fuzz target; the handshake calls it on every served certificate. */
int client_tls_meta_parse(const uint8_t *der, size_t len, struct client_tls_meta *m);

struct client_tls_opts {
	const char *server_name; /* SNI and the name the certificate must carry */
	const char *ca_file;     /* PEM roots to verify against; NULL = the system's */
	int insecure;            /* skip verification (tests only) */
	int max_version;         /* 0 = TLS 1.3; 2 = at most TLS 1.2; 1 = TLS 1.1 (tests) */
	/* If set: filled from the served chain's meta certificate when TLS 1.3 was
	 * negotiated, as a Go client does (version 0 otherwise: no fast start). */
	struct client_tls_meta *meta;
};

/* Handshake on fd, waiting with poll() until deadline_ms (CLOCK_MONOTONIC ms). The session
 * offers ALPN http/1.1 only, like a Go DERP client. NULL with err on failure. */
struct WOLFSSL *client_tls_start(int fd, const struct client_tls_opts *o, int64_t deadline_ms,
				 char *err, size_t errlen);
/* Like recv/send on a non-blocking socket: >0 bytes, 0 EOF (read), or -1 with errno
 * (EAGAIN: *want is POLLIN or POLLOUT, what to wait for). */
ssize_t client_tls_read(struct WOLFSSL *ssl, void *buf, size_t len, short *want);
ssize_t client_tls_write(struct WOLFSSL *ssl, const void *buf, size_t len, short *want);
size_t client_tls_pending(struct WOLFSSL *ssl);
/* The negotiated version: 0x0303 for TLS 1.2, 0x0304 for TLS 1.3. */
int client_tls_version(struct WOLFSSL *ssl);
void client_tls_free(struct WOLFSSL *ssl);
/* The roots when no CA file is named, as Go's crypto/x509 finds them on Linux (derper,
 * derpprobe): SSL_CERT_FILE replaces the default bundle and SSL_CERT_DIR (colon-separated)
 * the default directories, so an environment that makes Go trust a private CA does the
 * same here; without either, the system's store. 1 if any root was loaded. */
int client_tls_load_roots(struct WOLFSSL_CTX *ctx);

#endif
