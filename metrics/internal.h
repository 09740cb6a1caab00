/* Shared between the files of metrics/ only; other modules include metrics/httpd.h. */
#ifndef DERPD_METRICS_INTERNAL_H
#define DERPD_METRICS_INTERNAL_H
#include <microhttpd.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "acme/cert.h"
#include "mesh/mesh.h"
#include "metrics/httpd.h"
#include "server/admission.h"
#include "server/server.h"
#include "server/stats.h"
#include "stun/stun.h"

struct config;

/* ---- growable text buffer (buf.c) ---- */
struct mbuf {
	char *p;
	size_t len, cap;
	int oom; /* an allocation failed: contents are truncated */
};
void mbuf_add(struct mbuf *b, const char *s, size_t n);
void mbuf_puts(struct mbuf *b, const char *s);
void mbuf_printf(struct mbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void mbuf_free(struct mbuf *b);
/* Append v the way Go prints a float64 with %v / strconv 'g' -1: shortest digits that
 * round-trip, exponent form for decimal exponents < -4 or >= 6 ("1e+06", "1.5e-05"),
 * else plain ("123456.7"); "+Inf", "-Inf", "NaN" as Prometheus spells them. */
void mbuf_go_float(struct mbuf *b, double v);
/* The same into a fixed buffer; returns the length. */
size_t go_float_format(char *out, size_t n, double v);

/* ---- connection accounting for the HTTP daemons (conntab.c) ---- */
/* One table per daemon: admission under a limit (closing the longest-idle keep-alive
 * connection to make room), whole-request read deadlines, counters. Hook it into the
 * daemon with MHD_OPTION_CONNECTION_LIMIT conntab_mhd_limit(t),
 * MHD_OPTION_NOTIFY_CONNECTION conntab_notify t, and the request_* calls below. */
struct conntab;
/* external: connections arrive by MHD_add_connection (conntab_reserve first); else the
 * daemon accepts them itself (pass conntab_accept_policy, t as MHD_start_daemon's apc). */
struct conntab *conntab_new(unsigned limit, int64_t read_ms, int external);
/* After MHD_stop_daemon of its daemon. */
void conntab_free(struct conntab *t);
/* libmicrohttpd's own limit: above what conntab ever admits, so 0.9.75's lock leak on
 * reaching it (see conntab.c) cannot happen. */
unsigned conntab_mhd_limit(const struct conntab *t);
/* A slot for one MHD_add_connection (1), or 0: over the limit, refuse it (counted). */
int conntab_reserve(struct conntab *t);
/* MHD_add_connection failed after conntab_reserve; refused: count it as refused. */
void conntab_unreserve(struct conntab *t, int refused);
enum MHD_Result conntab_accept_policy(void *cls, const struct sockaddr *addr, socklen_t len);
void conntab_notify(void *cls, struct MHD_Connection *c, void **socket_context,
		    enum MHD_ConnectionNotificationCode code);
/* A request line arrived (URI log callback): its read limit starts. */
void conntab_request_begin(struct MHD_Connection *c);
/* The request is read (the handler's last call): no read limit while answering. */
void conntab_request_read(struct MHD_Connection *c);
/* Its response went out (NOTIFY_COMPLETED): idle keep-alive, may give its place up. */
void conntab_request_end(struct MHD_Connection *c);
/* The reaper thread that enforces read deadlines (every 100 ms). */
int conntab_start(void);
void conntab_stop(void);
struct conntab_counters {
	uint64_t refused, evicted, read_timeouts;
	int64_t open;
};
void conntab_counters_get(struct conntab_counters *c);

/* ---- bootstrap DNS (bootstrap_dns.c, SERVER.md §9) ---- */
struct bootstrap_dns_counters {
	uint64_t requests, published_hits, published_misses;
	uint64_t unpublished_hits, unpublished_misses, unpublished_percent_misses;
	uint64_t queried_domains; /* current size of the queried-names set */
};
struct dns_map; /* name -> addresses (+ rollout percentage) */

/* Start the resolver thread (only if a list is non-empty): resolve, sleep 10 min, repeat. */
int bootstrap_dns_start(const char *published, const char *unpublished, char *err,
			size_t errlen);
void bootstrap_dns_stop(void);
/* One synchronous resolution pass over both lists, as the thread does it. */
void bootstrap_dns_refresh(void);
/* The /bootstrap-dns body for query q (NULL or "" = none) from peer; malloc'd, *len set. */
char *bootstrap_dns_answer(const char *q, const struct sockaddr *peer, size_t *len);
void bootstrap_dns_counters_get(struct bootstrap_dns_counters *c);
/* Rollout: does this client fall inside percent (0..1)? Deterministic per IP. */
int bootstrap_dns_percent_match(const struct sockaddr *peer, double percent);
/* The rollout percentage from a DNS answer to a TXT query (ans: len bytes): the last TXT
 * record (its strings joined, as Go's LookupTXT does) that is an integer 0..100, in
 * *percent as 0..1. 1 found, 0 none valid. */
int bootstrap_dns_txt_percent(const uint8_t *ans, size_t len, double *percent);
/* Build and install maps directly (the resolver uses these; so do unit tests). */
struct dns_map *dns_map_new(void);
int dns_map_set(struct dns_map *m, const char *name, const char *const *addrs, size_t n,
		double percent);
void dns_map_free(struct dns_map *m);
/* Install new maps (either may be NULL = keep); takes ownership. */
void bootstrap_dns_install(struct dns_map *published, struct dns_map *unpublished);

/* ---- debug access (access.c, SERVER.md §6.4) ---- */
/* Read TS_ALLOW_DEBUG_IP, TS_DEBUG_TRUSTED_CIDRS, TS_DEBUG_KEY_PATH. -1 + err if a CIDR
 * is invalid (derper exits). */
int debug_access_init(char *err, size_t errlen);
/* derper's rules in order: debugkey (GET only), X-Forwarded-For denies, then loopback,
 * Tailscale addresses, TS_ALLOW_DEBUG_IP, TS_DEBUG_TRUSTED_CIDRS. */
int debug_access_allowed(const struct sockaddr *peer, int is_get, const char *debugkey,
			 int has_forwarded_for);
/* 100.64.0.0/10 minus 100.115.92.0/23, or fd7a:115c:a1e0::/48 (v4-mapped unmapped). */
int debug_addr_is_tailscale(const struct sockaddr *sa);
/* Text form of the IP without port, IPv4-mapped addresses unmapped ("" if unknown). */
void sockaddr_ip_string(const struct sockaddr *sa, char *out, size_t n);

/* ---- metrics snapshot and writers (snapshot.c, varz.c, prom.c) ---- */
struct metrics_snapshot {
	struct derp_stats_snapshot derp;
	struct stun_counters stun;
	struct bootstrap_dns_counters dns;
	uint64_t admission[ADMISSION_NRESULTS];     /* checks by result (prom.c only) */
	uint64_t tls_request[HTTPD_TLS_NVERSIONS];
	int64_t tls_active[HTTPD_TLS_NVERSIONS];
	unsigned tls_request_seen, tls_active_seen; /* bit per version: label exists */
	int tls_mode;                               /* tls_listener_* exist only then */
	uint64_t tls_accepted, tls_rejected;
	uint64_t tls_handshake_failures[TLS_FAIL_N]; /* by server/server.h's reason */
	struct conntab_counters http;               /* derpd_http_* (prom.c only) */
	int rate_limit;                             /* --rate-config given */
	/* process */
	int64_t open_fds, max_fds, threads;
	int64_t rss_bytes, vsize_bytes;
	double vsize_max_bytes;   /* RLIMIT_AS; 2^64 when unlimited, as client_golang shows it */
	double cpu_seconds;
	double start_time;        /* Unix seconds, sub-second precision */
	int64_t boot_time;        /* /proc/stat btime, 0 if unknown */
	int64_t uptime_sec;
	const char *version;      /* DERPD_VERSION */
	char binary[64];          /* base name of the executable */
	/* derpd's SLO families (prom_slo.c) */
	const char *revision;     /* DERPD_REVISION: git describe at build time, or "unknown" */
	const char *tls_library;  /* "wolfSSL 5.5.4" */
	int aesni;
	struct cert_expiry *certs; /* malloc'd (metrics_release) */
	size_t ncerts;
	uint64_t acme_orders, acme_failures;
	struct mesh_peer_status *mesh; /* malloc'd (metrics_release) */
	size_t nmesh;
};
/* Fill every field: the relay's per-worker counters summed (never blocks a worker), STUN,
 * bootstrap DNS, TLS counters and /proc. */
void metrics_gather(struct metrics_snapshot *s, const struct config *cfg);
/* Free what metrics_gather allocated. */
void metrics_release(struct metrics_snapshot *s);
/* derper's /debug/varz, byte for byte in its order and types (SERVER.md §15). */
void varz_write(struct mbuf *b, const struct metrics_snapshot *s);
/* derpd's /metrics: same values, Prometheus naming conventions, HELP on everything. */
void prom_write(struct mbuf *b, const struct metrics_snapshot *s);
/* The families an SLO needs (prom_slo.c): build info, queue delay and RTT histograms,
 * certificate expiry, ACME orders, mesh peers; prom_write calls it. */
void prom_write_slo(struct mbuf *b, const struct metrics_snapshot *s);
/* derpd_build_info{version,revision,tls_library,aesni}, HELP and TYPE first (also in
 * /debug/varz, where derper's native registry part is). */
void prom_build_info(struct mbuf *b, const struct metrics_snapshot *s);
/* /debug/vars: the varz values as one JSON object (malloc'd string). */
char *vars_json(const struct metrics_snapshot *s);

/* ---- /debug/, the live status page (status.c) ---- */
/* The sampler thread behind its rates and sparkline (every 5 s, ten minutes kept). */
int status_start(void);
void status_stop(void);
/* The page for snapshot s (HTML, no script, nothing fetched from elsewhere). */
void status_page(struct mbuf *b, const struct metrics_snapshot *s, const struct config *cfg);

/* ---- /debug/traffic (traffic.c, SERVER.md §6.5) ---- */
struct traffic_entry {
	char peer[64]; /* "ip:port" as ss prints it, brackets removed, v4-mapped unmapped */
	uint64_t sent, recv;
};
/* A streaming response for conn (NULL if MAX_STREAMS are already running). It ends after
 * max_seconds (0: runs until the client goes away). */
struct MHD_Response *traffic_response(struct MHD_Connection *conn, unsigned max_seconds);
/* End all streams and resume their connections before the daemon stops. */
void traffic_shutdown(void);
/* Parse `ss -i -H -t` output: pairs of lines, field 4 of the first is the peer. Returns
 * the number of entries (at most max). */
size_t traffic_parse_ss(const char *out, struct traffic_entry *e, size_t max);

/* ---- the HTTP daemons (httpd.c, port80.c, SERVER.md §6) ---- */
#define HTTP_MAX_CONNECTIONS 1024 /* HTTP only; DERP connections never count here */
#define HTTP_PER_IP_LIMIT 64
#define HTTP_HEAD_MEMORY (64 * 1024) /* libmicrohttpd's memory per connection */
/* Request heads above this get Go's 431: the rest of HTTP_HEAD_MEMORY holds the longest
 * answer (a redirect repeats the target, escaped), which would not fit otherwise. */
#define HTTP_HEAD_LIMIT (16 * 1024)

/* Queue a response built from body (copied); extra headers as name, value pairs, NULL
 * terminated; flags adds the browser security headers (0: none). Go's sniffing gives
 * text bodies "text/plain; charset=utf-8", so callers always name a Content-Type when
 * there is a body. */
enum MHD_Result httpd_reply(struct MHD_Connection *c, unsigned status, int flags,
			    const char *body, size_t len, ...);
/* Go's http.Error: text/plain, nosniff, the message and a newline. */
enum MHD_Result httpd_error(struct MHD_Connection *c, unsigned status, const char *msg);
/* Go's answer to a request it cannot parse: no handler ran, the connection closes. */
enum MHD_Result httpd_bad_request(struct MHD_Connection *c, const char *why);
/* reqcheck.c: net/http's head rules that libmicrohttpd lacks, for a handler's first call
 * (before any body is read): a head over HTTP_HEAD_LIMIT (431), Transfer-Encoding other
 * than one "chunked" (501), a Content-Length that is no number or repeated with another
 * value (400). 1: refused, *ret is the queued answer (libmicrohttpd reads no more and
 * closes); 0: go on; -1: answer now, unread body and all (HTTP/1.0 with
 * Transfer-Encoding, which Go ignores and libmicrohttpd would obey). */
int httpd_head_check(struct MHD_Connection *c, const char *version, enum MHD_Result *ret);
/* A request-target of "*": OPTIONS gets Go's empty 200, anything else ServeMux's 400. */
enum MHD_Result httpd_serve_star(struct MHD_Connection *c, const char *method);
/* Go's http.Redirect body for GET; HEAD gets the headers only (libmicrohttpd drops it).
 * Location gets Go's hexEscapeNonASCII (bytes >= 0x80 as lower-case %xx). */
enum MHD_Result httpd_redirect(struct MHD_Connection *c, const char *method, unsigned status,
			       const char *url, int flags);
/* A request header's value, NULL if absent. */
const char *httpd_header(struct MHD_Connection *c, const char *name);
/* May this request see /debug/ (debug_access_allowed on its peer and headers)? */
int httpd_debug_allowed(struct MHD_Connection *c, const char *method);
/* derper's prod host rule ^derp([^.]*)\.tailscale\.com\.?$ */
int httpd_prod_hostname(const char *h);
/* RFC 9110 token: the only characters a method may have. */
int httpd_is_token(const char *s);
/* Go's path.Clean plus ServeMux's rule that a trailing slash survives. */
void httpd_clean_path(const char *p, char *out, size_t n);
/* The main listener's routes (SERVER.md §6.1-6.5), url already decoded. */
enum MHD_Result httpd_route_main(struct MHD_Connection *c, const char *url, const char *method);
/* /generate_204, with its X-Tailscale-Challenge answer. */
enum MHD_Result httpd_serve_no_content(struct MHD_Connection *c);
/* Every daemon's MHD_OPTION_EXTERNAL_LOGGER (its first option): debug lines, "http:". */
void httpd_log(void *cls, const char *fmt, va_list ap);
/* A listening TCP socket on host:port (port 0: any free one, *bound set to it). Empty
 * host: all interfaces on one IPv6 socket that takes IPv4 too, as Go listens, or IPv4
 * alone on a host without IPv6. SO_KEEPALIVE and TCP_USER_TIMEOUT as the main listener
 * has them (SERVER.md §5; accepted sockets inherit them). what names it in errors. */
int httpd_listen_tcp(const char *host, const char *port, const char *what, int *bound,
		     char *err, size_t errlen);

/* port80.c: start TLS mode's plain-HTTP listener on <host of -a>:<-http-port>
 * (SERVER.md §6.6; httpd_port80_port() reports it). 0, or -1 with a message in err. */
int port80_start(const struct config *c, char *err, size_t errlen);
/* The idle timeout libmicrohttpd takes (whole seconds, at least 1) for a read limit. */
unsigned httpd_idle_timeout_s(int64_t read_ms);
void port80_stop(void);
/* The bound on a streaming response on c: derper's port-80 WriteTimeout if c came in on
 * the port-80 listener, else 0 (none). */
unsigned port80_stream_limit(struct MHD_Connection *c);

#endif
