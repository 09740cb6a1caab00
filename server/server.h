/* The relay as seen from other modules (metrics, HTTP debug pages, mesh later). */
#ifndef DERPD_SERVER_H
#define DERPD_SERVER_H
#include <stdint.h>
#include <sys/socket.h>
#include "server/stats.h"

struct config;
/* Bind one SO_REUSEPORT listener per worker on cfg's -a and start the workers. */
int server_start(const struct config *cfg, const uint8_t priv[32], char *err, size_t errlen);
/* The port the relay listens on (after server_start; -a :0 gives a kernel-chosen one). */
int server_port(void);
/* Copy up to max workers' last loop-turn times (CLOCK_MONOTONIC ms) into turn_ms; returns
 * how many workers there are. For the systemd watchdog: a stuck worker stops turning. */
int server_worker_turns(int64_t *turn_ms, int max);
/* Stop accepting, close every connection, join the workers. */
void server_stop(void);
/* Free what the workers shared (the map, counters): once nothing reads them any more. */
void server_free(void);
struct cert_provider;
struct rate_config;
/* TLS mode: where connections get their certificates (acme/cert.h). Before server_start. */
void server_set_cert_provider(struct cert_provider *p);
/* Apply a (re)loaded --rate-config to every connection, live ones included. */
void server_set_rate_config(const struct rate_config *rc);

/* Failed TLS handshakes on the relay listener, by reason (tls.c): the log summarises
 * them, /metrics has derpd_tls_handshake_failures_total{reason}. */
enum tls_fail {
	TLS_FAIL_EOF,              /* the client closed or reset the connection */
	TLS_FAIL_TIMEOUT,          /* not done within the handshake timeout */
	TLS_FAIL_NOT_TLS,          /* not a TLS record: plain HTTP on the TLS port */
	TLS_FAIL_PROTOCOL_VERSION, /* no TLS version in common (1.2 is the least) */
	TLS_FAIL_NO_SHARED_CIPHER, /* no cipher suite, group or signature in common */
	TLS_FAIL_BAD_CERTIFICATE,  /* the client refused our certificate (its alert) */
	TLS_FAIL_UNKNOWN_SNI,      /* no certificate for the server name it asked for */
	TLS_FAIL_OTHER,
	TLS_FAIL_N
};
extern const char *const server_tls_fail_name[TLS_FAIL_N];
void server_tls_failures(uint64_t out[TLS_FAIL_N]);

/* Logins refused, by reason (handshake.c): one summary line per interval, not one each. */
enum login_refusal {
	LOGIN_BAD_CLIENT_INFO,  /* ClientInfo unreadable: bad box, zero key, bad JSON */
	LOGIN_NOT_ADMITTED,     /* -verify-clients / -verify-client-url said no */
	LOGIN_ADMISSION_BUSY,   /* too many admission checks waiting */
	LOGIN_NO_MESH_KEY,      /* a mesh-only frame (WatchConns, ...) without the mesh key */
	LOGIN_OTHER,
	LOGIN_N
};
/* peer: "ip:port [abcde]" (may be NULL); detail: why. */
void server_login_refused(enum login_refusal why, const char *peer, const char *detail);

/* The server's public key (valid after start-up). */
const uint8_t *server_public_key(void);

struct server_client_info {
	uint8_t key[32];
	struct sockaddr_storage peer;  /* remote ip:port */
	uint64_t unique_senders;       /* approximate distinct source keys (0 = none) */
	int is_mesh_peer, is_prober, preferred;
};
/* Call cb for every registered local connection. cb must not call back into the
 * server; it runs with a map shard locked. */
void server_clients_foreach(void (*cb)(void *arg, const struct server_client_info *ci),
			    void *arg);

/* derper's /debug/check: 0 and "" if consistent, else -1 and the problems. */
int server_consistency_check(char *buf, size_t len);

/* ---- the regional mesh (used by mesh/) ---- */

/* The region's mesh key (SERVER.md §11); NULL or all-zero = none. Call before
 * server_start(). Clients presenting it in ClientInfo become mesh peers. */
void server_set_mesh_key(const uint8_t key[32]);
/* Whether a mesh key is configured. */
int server_have_mesh_key(void);

/* Hand a logged-in outbound DERP connection to a region peer (this server dialled it with
 * its own key and the mesh key, and already sent WatchConns) to a worker. From then on the
 * peer's PeerPresent/PeerGone stream maintains the forwarder table, and SendPackets for
 * keys connected there are forwarded over this connection as ForwardPacket frames.
 * buf/len: bytes already read past ServerInfo (copied). name: for logs.
 * on_closed(arg) runs once, on a worker thread, after the connection has ended and every
 * key learned through it has been unregistered; it must not block. fwd_drops (may be
 * NULL) counts, with relaxed atomic adds, the packets bound for this peer that were
 * dropped (derpd_mesh_forward_drops_total); it must outlive the connection. Returns 0, or
 * -1 with fd closed and on_closed not called. */
int server_mesh_adopt(int fd, const uint8_t *buf, size_t len, const char *name,
		      void (*on_closed)(void *arg), void *arg, uint64_t *fwd_drops);
/* The same for a connection dialled over TLS (https://host/derp): ssl is the established
 * wolfSSL client session on fd (it may hold decrypted bytes of its own); the worker reads
 * and writes through it and frees it. */
struct WOLFSSL;
int server_mesh_adopt_tls(int fd, struct WOLFSSL *ssl, const uint8_t *buf, size_t len,
			  const char *name, void (*on_closed)(void *arg), void *arg,
			  uint64_t *fwd_drops);

#endif
