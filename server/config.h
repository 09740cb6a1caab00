/* The parsed command line: every derper flag (spec SERVER.md §2) plus derpd's own.
 * Filled by config_parse(); read-only after start-up. */
#ifndef DERPD_CONFIG_H
#define DERPD_CONFIG_H
#include <stdint.h>

struct config {
	/* derper flags, same names and defaults */
	int dev;                      /* -dev */
	const char *addr;             /* -a, default ":443" (":3340" forced by -dev) */
	int http_port;                /* -http-port, 80; -1 disables */
	int stun_port;                /* -stun-port, 3478 */
	const char *config_path;      /* -c */
	const char *certmode;         /* -certmode, "letsencrypt" */
	const char *certdir;          /* -certdir */
	const char *hostname;         /* -hostname, "derp.tailscale.com" */
	const char *acme_eab_kid;     /* -acme-eab-kid */
	const char *acme_eab_key;     /* -acme-eab-key */
	const char *acme_email;       /* -acme-email */
	int acme_ip_certs;            /* -acme-ip-certs */
	int run_stun;                 /* -stun, true */
	int run_derp;                 /* -derp, true */
	const char *home;             /* -home */
	const char *mesh_psk_file;    /* -mesh-psk-file */
	const char *mesh_with;        /* -mesh-with */
	const char *secrets_url;      /* -secrets-url */
	const char *secrets_path_prefix; /* -secrets-path-prefix, "prod/derp" */
	const char *secrets_cache_dir;   /* -secrets-cache-dir */
	int64_t secrets_poll_ms;         /* --secrets-poll-interval, 1h */
	const char *bootstrap_dns_names;             /* -bootstrap-dns-names */
	const char *unpublished_bootstrap_dns_names; /* -unpublished-bootstrap-dns-names */
	int verify_clients;           /* -verify-clients */
	const char *verify_client_url; /* -verify-client-url */
	int verify_client_url_fail_open; /* -verify-client-url-fail-open, true */
	const char *socket_path;      /* -socket */
	double accept_connection_limit; /* -accept-connection-limit, +Inf */
	int64_t accept_connection_burst; /* -accept-connection-burst, INT64_MAX */
	const char *rate_config;      /* -rate-config */
	int64_t tcp_keepalive_ms;     /* -tcp-keepalive-time, 10m */
	int64_t tcp_user_timeout_ms;  /* -tcp-user-timeout, 15s */
	int64_t tcp_write_timeout_ms; /* -tcp-write-timeout, 2s; 0 = none */
	int ace;                      /* -ace */

	/* derpd extensions */
	int workers;                  /* --workers, default: number of CPUs */
	int verbose;                  /* --verbose */
	const char *metrics_addr;     /* --metrics-addr host:port, "" = none (issue 4) */
	int64_t http_read_timeout_ms; /* --http-read-timeout, 30s: derper's ReadTimeout */
	int64_t keepalive_ms;         /* --keepalive-interval, 60s (plus per-connection jitter) */
	const char *acme_directory;   /* --acme-directory URL, "" = Let's Encrypt (gcp: Google) */
	const char *acme_ca_file;     /* --acme-ca-file PEM roots for the ACME server, "" = system */
	const char *mesh_ca_file;     /* --mesh-ca-file PEM roots for mesh peers' HTTPS, "" = system */

	/* derived by config_parse */
	int tls;                      /* derper's rule: -a port 443/https or certmode manual */
	char listen_host[256];        /* host part of -a ("" = all interfaces) */
	int listen_port;              /* port part of -a (0 = ephemeral, for tests) */
};

/* Parse argv into cfg (defaults first). Handles --help / --version itself (prints and
 * exits 0). On a usage error, prints a message naming the flag
 * and returns 2; the caller exits with that status. Returns 0 on success. */
int config_parse(struct config *cfg, int argc, char **argv);

/* Go duration syntax ("1h30m", "15s", "500ms", "0"): milliseconds, or -1 if invalid. */
int64_t config_parse_duration_ms(const char *s);

/* An environment variable as derper reads its booleans (Go's strconv.ParseBool truths:
 * 1, t, T, TRUE, true, True); anything else, or unset, is false. */
int config_env_bool(const char *name);

#endif
