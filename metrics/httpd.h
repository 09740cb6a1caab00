/* derpd's HTTP side (everything but the DERP upgrade), served by libmicrohttpd:
 * /, /robots.txt, /generate_204, /derp/probe, /derp/latency-check, /bootstrap-dns,
 * /debug/ (index, varz, vars, check, traffic) and derpd's own /metrics (SERVER.md §6, §9,
 * §15). Workers hand over every accepted connection whose first request is not a DERP or
 * WebSocket upgrade; TLS mode's plain-HTTP listener on -http-port (/generate_204, ACME
 * http-01 answers, redirects to HTTPS, §6.6) and --metrics-addr have listeners of their
 * own. */
#ifndef DERPD_HTTPD_H
#define DERPD_HTTPD_H
#include <sys/socket.h>

struct config;

/* Start the libmicrohttpd daemon for handed-over connections (it has no listener of its
 * own), the --metrics-addr listener if set, in TLS mode the port-80 listener on
 * <host of -a>:<-http-port> unless that is -1 (logged as "derpd: serving port-80 HTTP on
 * <host>:<port>"; start the cert provider first, it answers the ACME challenges there),
 * and the bootstrap DNS resolver thread if a name list is set. cfg must outlive
 * httpd_stop(). 0, or -1 with a message in err. */
int httpd_start(const struct config *cfg, char *err, size_t errlen);

/* Take ownership of an accepted stream connection whose HTTP request head has only been
 * peeked (MSG_PEEK), so every byte is still unread in the socket. fd may be a TCP socket
 * or one end of a socketpair whose other end a TLS worker pumps plaintext through; peer is
 * the client's real address (used for debug access and bootstrap DNS rollouts). The fd is
 * closed by libmicrohttpd in every case, also on failure (-1, e.g. before httpd_start).
 * Safe from any thread. Keep-alive connections stay with libmicrohttpd for life; a DERP
 * upgrade sent later on such a connection is answered 421 Misdirected Request with
 * Connection: close, so the client retries on a fresh connection (RFC 9110 §15.5.20). */
int httpd_add_connection(int fd, const struct sockaddr *peer, socklen_t peerlen);

/* The port the --metrics-addr listener is bound to (useful with port 0), or 0 if none. */
int httpd_metrics_port(void);
/* The port the port-80 listener is bound to (useful with -http-port 0), or 0 if none. */
int httpd_port80_port(void);

/* Stop every daemon and the resolver thread; open HTTP connections are closed. */
void httpd_stop(void);

/* ---- counters kept here for the TLS side (SERVER.md §5, §15.3) ---- */
enum httpd_tls_version { HTTPD_TLS_10, HTTPD_TLS_11, HTTPD_TLS_12, HTTPD_TLS_13,
			 HTTPD_TLS_UNKNOWN, HTTPD_TLS_NVERSIONS };

/* A request (for DERP: a connection) arrived over TLS: derper_tls_request_version +1 and
 * derper_tls_active_version +1 until the matching httpd_tls_request_end(). */
void httpd_tls_request_begin(enum httpd_tls_version v);
void httpd_tls_request_end(enum httpd_tls_version v);
/* The TLS listener's accept limiter let a connection through (1) or closed it (0):
 * tls_listener_accepted_connections / tls_listener_rejected_connections. */
void httpd_tls_listener_count(int accepted);

#endif
