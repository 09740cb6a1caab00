/* derpd-probe: watches the DERP nodes of a DERP map, as Tailscale's derpprobe does
 * (man/derpd-probe.1). Internal header of the tool; its files:
 *
 *   derpmap.c  the DERP map JSON (jansson) -> struct derp_map, with hard limits
 *   fetch.c    getting that JSON: https:// / http:// / file:// (libcurl) or "local"
 *              (tailscaled's LocalAPI over its unix socket)
 *   checks.c   one run of each kind of probe: TLS, STUN (udp/udp6), mesh pair, bandwidth
 *   sched.c    the probes of the current map, their schedule, worker threads, results
 *   web.c      daemon mode's HTTP: /metrics, /healthz; status.c: the HTML page at /
 *   main.c     flags, the mesh key, -once output */
#ifndef DERPD_PROBE_H
#define DERPD_PROBE_H
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* ---- the DERP map (tailcfg.DERPMap) ------------------------------------------------- */

/* Hostile-map limits: a map past any of them is refused whole, with a reason. */
#define DM_MAX_BYTES    (4u << 20)  /* JSON text */
#define DM_MAX_REGIONS  512
#define DM_MAX_NODES    64          /* per region */
#define DM_MAX_ALL      1024        /* nodes in the whole map */
#define DM_NAME_LEN     64          /* Name, RegionCode */
#define DM_HOST_LEN     256         /* HostName, CertName, RegionName */
#define DM_IP_LEN       64          /* IPv4, IPv6 */

struct dm_node {
	char name[DM_NAME_LEN];
	char host[DM_HOST_LEN];
	char cert_name[DM_HOST_LEN];
	char ipv4[DM_IP_LEN], ipv6[DM_IP_LEN];
	int region_id;
	int stun_port;      /* 0 = 3478, -1 = no STUN */
	int derp_port;      /* 0 = 443 (TLS) or 3340 (plain HTTP) */
	int stun_only, insecure, can_port80;
};

struct dm_region {
	int id;
	char code[DM_NAME_LEN];
	char name[DM_HOST_LEN];
	int n_nodes;
	struct dm_node *nodes;
};

struct derp_map {
	int n_regions;             /* sorted by id */
	struct dm_region *regions;
};

/* Parse len bytes of JSON as Go's encoding/json decodes a tailcfg.DERPMap (field names
 * matched case-insensitively; a known field of the wrong type is an error). 0, or -1 with
 * err set (never empty). *m is only written on success; free it with derpmap_free. */
int derpmap_parse(const char *json, size_t len, struct derp_map *m, char *err, size_t errlen);
void derpmap_free(struct derp_map *m);

/* Fetch and parse the map named by url: "https://..", "http://..", "file://..", or "local"
 * (GET /localapi/v0/derpmap on tailscaled's socket). Gives up at timeout_ms. */
int derpmap_fetch(const char *url, const char *socket_path, int timeout_ms, struct derp_map *m,
		  char *err, size_t errlen);

/* ---- one probe run (checks.c) -------------------------------------------------------- */

enum probe_class { PC_MAP, PC_TLS, PC_UDP, PC_MESH, PC_BW };

struct check_ctx {
	const uint8_t *mesh_key;   /* 32 bytes or NULL */
	int64_t bw_size;           /* -bw-probe-size-bytes */
	const char *ca_file;       /* --ca-file: roots for TLS; NULL = system / SSL_CERT_FILE */
	int force_http;            /* TS_DEBUG_USE_DERP_HTTP: every node over plain HTTP */
};

struct check_result {
	int ok;
	char err[384];             /* why it failed (ok == 0) */
	char note[160];            /* good but worth saying: "certificate expires in 10 days" */
	double not_after;          /* TLS: the leaf's NotAfter (Unix seconds), 0 = unknown */
	double transfer_s;         /* bandwidth: seconds the payload took */
};

/* deadline: CLOCK_MONOTONIC milliseconds. family: AF_INET or AF_INET6 (udp only). */
void check_tls(const struct check_ctx *c, const struct dm_node *n, int64_t deadline,
	       struct check_result *r);
void check_udp(const struct check_ctx *c, const struct dm_node *n, int family,
	       int64_t deadline, struct check_result *r);
void check_pair(const struct check_ctx *c, const struct dm_node *from, const struct dm_node *to,
		int bandwidth, int64_t deadline, struct check_result *r);
/* Plain HTTP for this node (InsecureForTests, or force_http)? */
int check_plain_http(const struct check_ctx *c, const struct dm_node *n);

int64_t mono_ms(void);
double wall_s(void);

/* ---- the prober (sched.c) ------------------------------------------------------------ */

#define PROBE_NAME_LEN 200
#define PROBE_RECENT   10   /* upstream's recentHistSize: the success ratio, the median */
#define PROBE_HIST     60   /* latencies kept for the status page's chart */
#define PROBE_MAX      20000 /* probes one map may ask for */

struct prober_opts {
	const char *map_url, *socket_path, *region;
	int64_t interval_ms, mesh_ms, stun_ms, tls_ms, bw_ms;  /* 0 = that class is off */
	int spread, once, workers;
	struct check_ctx check;
};

/* What a probe is and its last results: a copy, taken under the prober's lock. */
struct probe_info {
	char name[PROBE_NAME_LEN];
	enum probe_class cls;
	char region_code[DM_NAME_LEN];
	int region_id;
	char region_name[DM_HOST_LEN];
	char node[DM_NAME_LEN], to[DM_NAME_LEN];  /* to: mesh and bw only */
	char host[DM_HOST_LEN];
	int family;                       /* udp */
	int64_t interval_ms;
	/* results from here on: kept across map reloads (sched.c copies from in_flight on) */
	int in_flight;
	double start, end;                /* Unix seconds of the last run; 0 = never */
	double last_success;
	double latency_s;                 /* last run's duration if it succeeded, else 0 */
	double last_run_s;                /* last run's duration either way */
	int ran, ok;
	char err[384], note[160];
	uint64_t attempts_ok, attempts_fail;
	double seconds_ok, seconds_fail;
	double not_after;                 /* tls */
	double transfer_s_total;          /* bw */
	int n_recent;                     /* oldest first */
	uint8_t recent_ok[PROBE_RECENT];
	int n_hist;                       /* successful latencies in ms, oldest first */
	float hist_ms[PROBE_HIST];
};

int prober_start(const struct prober_opts *o, char *err, size_t errlen);
/* -once: block until the map probe and every probe it made have run once. */
void prober_wait_once(void);
void prober_stop(void);
/* All probes, sorted by name (malloc'd array; the caller frees it). */
struct probe_info *prober_snapshot(int *n);
const char *probe_class_name(enum probe_class c);

/* ---- HTTP (web.c, status.c) ---------------------------------------------------------- */

/* Serve on addr ("host:port", ":port", "[v6]:port"). Logs the bound address. */
int web_start(const char *addr, char *err, size_t errlen);
void web_stop(void);
/* The Prometheus text of a snapshot. malloc'd. */
char *web_metrics(const struct probe_info *p, int n);
/* The status page. malloc'd. */
char *status_html(const struct probe_info *p, int n);

/* The log: one line on stderr in Go's log format, as upstream derpprobe writes it
 * ("2006/01/02 15:04:05 msg"); a line is one write(2), so threads never interleave. */
void plog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- small shared helpers (web.c) ---------------------------------------------------- */
struct sbuf {
	char *p;
	size_t len, cap;
	int oom;
};
void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sb_html(struct sbuf *b, const char *s);   /* s escaped for HTML text and attributes */
/* Go's time.Duration.String() of seconds: "1.234567ms", "2.5s", "1m30s". */
void fmt_duration(char *out, size_t cap, double seconds);

#endif
