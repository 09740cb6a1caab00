/* Command line: derper's flags with Go `flag` package syntax (spec SERVER.md §2),
 * plus derpd's own. One table drives parsing and --help. */
#include "server/config.h"

#include "server/log.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <arpa/inet.h>
#include <stdarg.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef DERPD_VERSION
#define DERPD_VERSION "unknown"
#endif

#define DEFAULT_KEY_PATH "/var/lib/derper/derper.key"
#define MAX_WORKERS 1024

enum flag_type { FT_BOOL, FT_INT, FT_INT64, FT_FLOAT, FT_STRING, FT_DURATION, FT_VERSION };

struct flag_def {
	const char *name;
	enum flag_type type;
	size_t off;              /* field in struct config (unused for FT_VERSION) */
	unsigned extension : 1;  /* derpd's own, not derper's */
	const char *help;        /* one or more lines, '\n' separated */
};

#define FLAG(n, t, field, ext, h) { n, t, offsetof(struct config, field), ext, h }

static const struct flag_def flags[] = {
	FLAG("dev", FT_BOOL, dev, 0,
	     "localhost development mode: listen on :3340 (overrides -a), use a fresh\n"
	     "random key instead of the key file"),
	{ "version", FT_VERSION, 0, 0, "print the version and exit" },
	FLAG("a", FT_STRING, addr, 0,
	     "listen address for HTTP/HTTPS: \":port\", \"ip:port\" or \"[ipv6]:port\"; no IP\n"
	     "means all interfaces. HTTPS if the port is 443 or https, or -certmode is manual"),
	FLAG("http-port", FT_INT, http_port, 0,
	     "plain-HTTP port served beside HTTPS (ACME, /generate_204), bound to the IP of -a;\n"
	     "-1 disables"),
	FLAG("stun-port", FT_INT, stun_port, 0,
	     "UDP port of the STUN server, bound to the IP of -a"),
	FLAG("c", FT_STRING, config_path, 0,
	     "key file path (JSON {\"PrivateKey\": \"privkey:<hex>\"}, created if missing);\n"
	     "empty: " DEFAULT_KEY_PATH " when run as root, else an error"),
	FLAG("certmode", FT_STRING, certmode, 0,
	     "how to get the TLS certificate: manual, letsencrypt or gcp"),
	FLAG("certdir", FT_STRING, certdir, 0,
	     "directory for ACME certificates or, with -certmode manual, the certificate files"),
	FLAG("hostname", FT_STRING, hostname, 0,
	     "TLS host name for the certificate; may be an IP address with -certmode manual\n"
	     "or -acme-ip-certs"),
	FLAG("acme-eab-kid", FT_STRING, acme_eab_kid, 0,
	     "ACME External Account Binding key ID (required for -certmode gcp)"),
	FLAG("acme-eab-key", FT_STRING, acme_eab_key, 0,
	     "ACME External Account Binding HMAC key, base64 (required for -certmode gcp)"),
	FLAG("acme-email", FT_STRING, acme_email, 0,
	     "ACME account contact e-mail (required for gcp, optional for letsencrypt)"),
	FLAG("acme-ip-certs", FT_BOOL, acme_ip_certs, 0,
	     "get short-lived Let's Encrypt certificates for the server's own IP addresses\n"
	     "on demand (needs -certmode letsencrypt and port 80 reachable)"),
	FLAG("stun", FT_BOOL, run_stun, 0,
	     "run the STUN server, bound to the IP of -a"),
	FLAG("derp", FT_BOOL, run_derp, 0,
	     "serve DERP at /derp; false answers 404 there but keeps STUN and the other\n"
	     "endpoints (for decommissioning a node)"),
	FLAG("home", FT_STRING, home, 0,
	     "root page: empty for the built-in page, \"blank\" for an empty page, or an\n"
	     "http:// or https:// URL to redirect to"),
	FLAG("mesh-psk-file", FT_STRING, mesh_psk_file, 0,
	     "file holding the mesh pre-shared key (64 hex digits; whitespace trimmed);\n"
	     "default: /home/derp/keys/derp-mesh.key or $HOME/keys/derp-mesh.key if present"),
	FLAG("mesh-with", FT_STRING, mesh_with, 0,
	     "comma-separated region peers to mesh with (may include this server);\n"
	     "an entry host/dialhost dials dialhost but uses host as the name"),
	FLAG("secrets-url", FT_STRING, secrets_url, 0,
	     "setec server URL to fetch the mesh key from (before -mesh-psk-file)"),
	FLAG("secrets-path-prefix", FT_STRING, secrets_path_prefix, 0,
	     "setec path prefix; the secret read is <prefix>/meshkey"),
	FLAG("secrets-cache-dir", FT_STRING, secrets_cache_dir, 0,
	     "setec's cache file (a directory: its derper-secrets file), so a restart\n"
	     "while setec is down still has the mesh key"),
	FLAG("bootstrap-dns-names", FT_STRING, bootstrap_dns_names, 0,
	     "comma-separated host names to resolve and publish at /bootstrap-dns"),
	FLAG("unpublished-bootstrap-dns-names", FT_STRING, unpublished_bootstrap_dns_names, 0,
	     "comma-separated host names answered at /bootstrap-dns?q= but not listed;\n"
	     "name/txtname rolls out by the percentage in txtname's TXT record"),
	FLAG("verify-clients", FT_BOOL, verify_clients, 0,
	     "admit only clients known to the local tailscaled"),
	FLAG("verify-client-url", FT_STRING, verify_client_url, 0,
	     "admission controller URL asked before admitting each client"),
	FLAG("verify-client-url-fail-open", FT_BOOL, verify_client_url_fail_open, 0,
	     "admit clients when -verify-client-url cannot be reached"),
	FLAG("socket", FT_STRING, socket_path, 0,
	     "tailscaled socket path for -verify-clients (empty: the OS default)"),
	FLAG("accept-connection-limit", FT_FLOAT, accept_connection_limit, 0,
	     "rate limit for accepting TCP connections on the TLS listener, per second"),
	FLAG("accept-connection-burst", FT_INT64, accept_connection_burst, 0,
	     "burst for -accept-connection-limit"),
	FLAG("rate-config", FT_STRING, rate_config, 0,
	     "JSON file of per-client receive rate limits (experimental), reloaded on SIGHUP"),
	FLAG("tcp-keepalive-time", FT_DURATION, tcp_keepalive_ms, 0,
	     "TCP keepalive idle time and interval on accepted connections"),
	FLAG("tcp-user-timeout", FT_DURATION, tcp_user_timeout_ms, 0,
	     "TCP_USER_TIMEOUT on listening and accepted sockets"),
	FLAG("tcp-write-timeout", FT_DURATION, tcp_write_timeout_ms, 0,
	     "write timeout to DERP clients (not mesh peers); 0 means none"),
	FLAG("ace", FT_BOOL, ace, 0,
	     "enable the experimental ACE CONNECT proxy on the TLS listener"),
	FLAG("workers", FT_INT, workers, 1,
	     "worker threads, one epoll loop each (1.." "1024" ")"),
	FLAG("verbose", FT_BOOL, verbose, 1,
	     "log per-connection detail (the debug level of every subsystem)"),
	FLAG("keepalive-interval", FT_DURATION, keepalive_ms, 1,
	     "DERP keepalive frame period before a per-connection jitter (up to 5 s, at most\n"
	     "a twelfth of it); must be > 0"),
	FLAG("http-read-timeout", FT_DURATION, http_read_timeout_ms, 1,
	     "time limit for reading one HTTP request, head and body, on the non-DERP\n"
	     "endpoints (derper's ReadTimeout); also the keep-alive idle timeout; > 0"),
	FLAG("secrets-poll-interval", FT_DURATION, secrets_poll_ms, 1,
	     "how often to ask setec for a new mesh key version (-secrets-url); 0: never"),
	FLAG("acme-directory", FT_STRING, acme_directory, 1,
	     "ACME directory URL; empty: Let's Encrypt production (-certmode gcp: Google's)"),
	FLAG("acme-ca-file", FT_STRING, acme_ca_file, 1,
	     "PEM file of CA certificates trusted for the ACME server's HTTPS; empty: the\n"
	     "system's"),
	FLAG("mesh-ca-file", FT_STRING, mesh_ca_file, 1,
	     "PEM file of CA certificates trusted for the HTTPS of -mesh-with peers; empty:\n"
	     "the system's"),
	FLAG("metrics-addr", FT_STRING, metrics_addr, 1,
	     "host:port of a listener serving only /metrics and /debug/varz, with no\n"
	     "debug access check (the bind address is the access control); empty: none"),
};
#define NFLAGS (sizeof flags / sizeof flags[0])

/* Computed defaults live here: config is parsed once at start-up, and static storage
 * keeps them leak-free without changing struct config. */
static char certdir_buf[4096];
static char mesh_psk_buf[4096];
static char secrets_cache_buf[4096];

/* ---- Go value syntax ------------------------------------------------------------ */

/* strconv.ParseBool */
static int parse_bool(const char *s, int *out)
{
	static const char *const t[] = { "1", "t", "T", "TRUE", "true", "True" };
	static const char *const f[] = { "0", "f", "F", "FALSE", "false", "False" };

	for (size_t i = 0; i < 6; i++) {
		if (strcmp(s, t[i]) == 0) {
			*out = 1;
			return 0;
		}
		if (strcmp(s, f[i]) == 0) {
			*out = 0;
			return 0;
		}
	}
	return -1;
}

static int digit_value(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	return c >= 'a' && c <= 'z' ? c - 'a' + 10 : 99;
}

/* strconv.ParseInt(s, 0, 64): sign, 0x/0o/0b/0 prefixes, '_' between digits. */
static int parse_int64(const char *s, int64_t *out)
{
	int neg = 0, base = 10, prev_digit = 0;
	uint64_t v = 0, limit;

	if (*s == '+' || *s == '-')
		neg = *s++ == '-';
	if (*s == '\0')
		return -1;
	if (s[0] == '0' && s[1] != '\0') {
		int c = tolower((unsigned char)s[1]);
		if (c == 'x' || c == 'o' || c == 'b') {
			if (s[2] == '\0')
				return -1;
			base = c == 'x' ? 16 : c == 'o' ? 8 : 2;
			s += 2;
		} else {
			base = 8;
			s += 1;
		}
		prev_digit = 1; /* a base prefix counts as a digit before '_' */
	}
	limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
	for (; *s; s++) {
		int d;
		if (*s == '_') {
			/* Go allows '_' only with base 0 syntax, between digits. */
			if (!prev_digit || digit_value((unsigned char)s[1]) >= base)
				return -1;
			prev_digit = 0;
			continue;
		}
		d = digit_value((unsigned char)*s);
		if (d >= base)
			return -1;
		if (v > (limit - (uint64_t)d) / (uint64_t)base)
			return -1;
		v = v * (uint64_t)base + (uint64_t)d;
		prev_digit = 1;
	}
	*out = neg ? (int64_t)(0 - v) : (int64_t)v;
	return 0;
}

/* strconv.ParseFloat(s, 64), via strtod: same decimal/hex/inf/nan forms; Go rejects
 * surrounding space and out-of-range values, so do we. */
static int parse_float(const char *s, double *out)
{
	char *end;

	if (*s == '\0' || isspace((unsigned char)*s))
		return -1;
	errno = 0;
	*out = strtod(s, &end);
	if (*end != '\0' || errno == ERANGE)
		return -1;
	return 0;
}

/* time.ParseDuration: [-+]?([0-9]*(\.[0-9]*)?unit)+ or "0". Result in nanoseconds. */
static int parse_duration_ns(const char *s, int64_t *out)
{
	static const struct { const char *u; uint64_t ns; } units[] = {
		{ "ns", 1 }, { "us", 1000 }, { "\xc2\xb5s", 1000 }, { "\xce\xbcs", 1000 },
		{ "ms", 1000000 }, { "s", 1000000000ULL }, { "m", 60000000000ULL },
		{ "h", 3600000000000ULL },
	};
	const uint64_t max = (uint64_t)1 << 63;
	uint64_t d = 0;
	int neg = 0;

	if (*s == '+' || *s == '-')
		neg = *s++ == '-';
	if (strcmp(s, "0") == 0) {
		*out = 0;
		return 0;
	}
	if (*s == '\0')
		return -1;
	while (*s) {
		uint64_t v = 0, f = 0, unit = 0;
		double scale = 1;
		int pre = 0, post = 0, fdone = 0;
		size_t ul = 0;

		if (!(*s == '.' || isdigit((unsigned char)*s)))
			return -1;
		for (; isdigit((unsigned char)*s); s++, pre = 1) {
			if (v > (max - 1) / 10)
				return -1;
			v = v * 10 + (uint64_t)(*s - '0');
			if (v > max)
				return -1;
		}
		if (*s == '.') {
			/* Extra fraction digits past float precision are consumed, not kept. */
			for (s++; isdigit((unsigned char)*s); s++, post = 1) {
				if (fdone || f > (max - 1) / 10 || f * 10 + (uint64_t)(*s - '0') > max) {
					fdone = 1;
					continue;
				}
				f = f * 10 + (uint64_t)(*s - '0');
				scale *= 10;
			}
		}
		if (!pre && !post)
			return -1;
		while (s[ul] && s[ul] != '.' && !isdigit((unsigned char)s[ul]))
			ul++;
		if (ul == 0)
			return -1; /* missing unit */
		for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
			if (strlen(units[i].u) == ul && memcmp(s, units[i].u, ul) == 0)
				unit = units[i].ns;
		if (unit == 0)
			return -1; /* unknown unit */
		s += ul;
		if (v > max / unit)
			return -1;
		v *= unit;
		if (f > 0) {
			v += (uint64_t)((double)f * ((double)unit / scale));
			if (v > max)
				return -1;
		}
		d += v;
		if (d > max)
			return -1;
	}
	if (!neg && d > max - 1)
		return -1;
	*out = neg ? (int64_t)(0 - d) : (int64_t)d;
	return 0;
}

int64_t config_parse_duration_ms(const char *s)
{
	int64_t ns;

	if (s == NULL || parse_duration_ns(s, &ns) != 0 || ns < 0)
		return -1;
	return ns / 1000000; /* truncated, as Go's Duration.Milliseconds() */
}

/* Go's Duration.String() for whole milliseconds, for --help defaults. */
static void format_duration_ms(char *out, size_t len, int64_t ms)
{
	int64_t h = ms / 3600000, m = ms / 60000 % 60, s = ms / 1000 % 60, frac = ms % 1000;
	char sec[32];
	size_t n = 0;

	if (ms < 1000) {
		snprintf(out, len, ms == 0 ? "0s" : "%lldms", (long long)ms);
		return;
	}
	if (frac) {
		snprintf(sec, sizeof sec, "%lld.%03lld", (long long)s, (long long)frac);
		for (n = strlen(sec); sec[n - 1] == '0'; n--)
			sec[n - 1] = '\0';
	} else {
		snprintf(sec, sizeof sec, "%lld", (long long)s);
	}
	if (h)
		snprintf(out, len, "%lldh%lldm%ss", (long long)h, (long long)m, sec);
	else if (m)
		snprintf(out, len, "%lldm%ss", (long long)m, sec);
	else
		snprintf(out, len, "%ss", sec);
}

/* ---- defaults ------------------------------------------------------------------- */

/* filepath.Join for two or three parts: skips empty parts, no doubled slashes. */
static void path_join(char *out, size_t len, const char *a, const char *b, const char *c)
{
	const char *parts[3] = { a, b, c };
	size_t n = 0;

	out[0] = '\0';
	for (int i = 0; i < 3; i++) {
		const char *p = parts[i];
		size_t pl;
		if (p == NULL || *p == '\0')
			continue;
		if (n > 0 && out[n - 1] != '/')
			n += (size_t)snprintf(out + n, n < len ? len - n : 0, "/");
		while (n > 0 && *p == '/')
			p++;
		pl = strlen(p);
		while (pl > 1 && p[pl - 1] == '/')
			pl--;
		n += (size_t)snprintf(out + n, n < len ? len - n : 0, "%.*s", (int)pl, p);
	}
}

static int online_cpus(void)
{
	cpu_set_t set;
	long n;

	/* The CPUs we may run on (containers, taskset), else all online ones. */
	if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
		return CPU_COUNT(&set);
	n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? (int)(n > MAX_WORKERS ? MAX_WORKERS : n) : 1;
}

static void config_defaults(struct config *cfg)
{
	const char *home = getenv("HOME"), *xdg = getenv("XDG_CACHE_HOME");
	struct stat st;
	char try[4096];

	memset(cfg, 0, sizeof *cfg);
	cfg->addr = ":443";
	cfg->http_port = 80;
	cfg->stun_port = 3478;
	cfg->config_path = "";
	cfg->certmode = "letsencrypt";

	/* Go's os.UserCacheDir on Linux: $XDG_CACHE_HOME (absolute) or $HOME/.cache. */
	certdir_buf[0] = '\0';
	if (xdg != NULL && xdg[0] == '/')
		path_join(certdir_buf, sizeof certdir_buf, xdg, "tailscale", "derper-certs");
	else if ((xdg == NULL || xdg[0] == '\0') && home != NULL && home[0] != '\0')
		path_join(certdir_buf, sizeof certdir_buf, home, ".cache/tailscale", "derper-certs");
	cfg->certdir = certdir_buf;

	cfg->hostname = "derp.tailscale.com";
	cfg->acme_eab_kid = cfg->acme_eab_key = cfg->acme_email = "";
	cfg->run_stun = cfg->run_derp = 1;
	cfg->home = "";

	mesh_psk_buf[0] = '\0';
	if (stat("/home/derp/keys/derp-mesh.key", &st) == 0) {
		snprintf(mesh_psk_buf, sizeof mesh_psk_buf, "/home/derp/keys/derp-mesh.key");
	} else {
		path_join(try, sizeof try, home, "keys", "derp-mesh.key");
		if (stat(try, &st) == 0)
			snprintf(mesh_psk_buf, sizeof mesh_psk_buf, "%s", try);
	}
	cfg->mesh_psk_file = mesh_psk_buf;

	cfg->mesh_with = cfg->secrets_url = "";
	cfg->secrets_path_prefix = "prod/derp";
	path_join(secrets_cache_buf, sizeof secrets_cache_buf, home, ".cache", "derper-secrets");
	cfg->secrets_cache_dir = secrets_cache_buf;
	cfg->bootstrap_dns_names = cfg->unpublished_bootstrap_dns_names = "";
	cfg->metrics_addr = "";
	cfg->acme_directory = cfg->acme_ca_file = cfg->mesh_ca_file = "";
	cfg->verify_client_url = "";
	cfg->verify_client_url_fail_open = 1;
	cfg->socket_path = "";
	cfg->accept_connection_limit = INFINITY;
	cfg->accept_connection_burst = INT64_MAX;
	cfg->rate_config = "";
	cfg->tcp_keepalive_ms = 10 * 60 * 1000;
	cfg->tcp_user_timeout_ms = 15 * 1000;
	cfg->tcp_write_timeout_ms = 2 * 1000;
	cfg->workers = online_cpus();
	cfg->keepalive_ms = 60 * 1000;
	cfg->http_read_timeout_ms = 30 * 1000;
	cfg->secrets_poll_ms = 60 * 60 * 1000; /* setec's store polls hourly */
}

/* ---- usage ---------------------------------------------------------------------- */

static const char *type_name(enum flag_type t)
{
	switch (t) {
	case FT_BOOL: case FT_VERSION: return "bool";
	case FT_INT: case FT_INT64: return "int";
	case FT_FLOAT: return "float";
	case FT_STRING: return "string";
	case FT_DURATION: return "duration";
	}
	return "?";
}

static void format_value(char *out, size_t len, const struct flag_def *f, const struct config *c)
{
	const char *p = (const char *)c + f->off;

	switch (f->type) {
	case FT_VERSION: snprintf(out, len, "false"); break;
	case FT_BOOL: snprintf(out, len, "%s", *(const int *)p ? "true" : "false"); break;
	case FT_INT: snprintf(out, len, "%d", *(const int *)p); break;
	case FT_INT64: snprintf(out, len, "%lld", (long long)*(const int64_t *)p); break;
	case FT_FLOAT: {
		double v = *(const double *)p;
		if (isinf(v))
			snprintf(out, len, "%sInf", v > 0 ? "+" : "-");
		else
			snprintf(out, len, "%g", v);
		break;
	}
	case FT_STRING: snprintf(out, len, "\"%s\"", *(const char *const *)p); break;
	case FT_DURATION: format_duration_ms(out, len, *(const int64_t *)p); break;
	}
}

static void print_usage(FILE *out)
{
	struct config def;

	config_defaults(&def);
	fprintf(out,
		"Usage: derpd [flags]\n\n"
		"derpd is a DERP relay server, a drop-in replacement for Tailscale's derper.\n"
		"Flags take one or two dashes; values as -flag=value or -flag value. Booleans are\n"
		"-flag or -flag=true|false (not \"-flag false\"). Durations use Go syntax: 500ms,\n"
		"15s, 10m, 1h30m. See derpd(8).\n\n");
	for (size_t i = 0; i < NFLAGS; i++) {
		const struct flag_def *f = &flags[i];
		const char *h = f->help;
		char val[4200];

		fprintf(out, "  %s%s %s\n", f->extension ? "--" : "-", f->name, type_name(f->type));
		while (*h) {
			size_t n = strcspn(h, "\n");
			fprintf(out, "    \t%.*s\n", (int)n, h);
			h += n + (h[n] == '\n');
		}
		format_value(val, sizeof val, f, &def);
		if (f->type == FT_INT && f->off == offsetof(struct config, workers))
			fprintf(out, "    \t(default %s: the number of usable CPUs)", val);
		else
			fprintf(out, "    \t(default %s)", val);
		if (f->extension)
			fprintf(out, " (derpd extension)");
		fputc('\n', out);
	}
}

/* ---- parsing -------------------------------------------------------------------- */

static const struct flag_def *flag_find(const char *name, size_t len)
{
	for (size_t i = 0; i < NFLAGS; i++)
		if (strlen(flags[i].name) == len && memcmp(flags[i].name, name, len) == 0)
			return &flags[i];
	return NULL;
}

/* Store value text into the flag's field; -1 if it does not parse as the flag's type,
 * -2 if it parses but is out of the field's range. */
static int flag_set(const struct flag_def *f, struct config *cfg, int *version, const char *v)
{
	char *p = (char *)cfg + f->off;
	int64_t i64;

	switch (f->type) {
	case FT_VERSION: return parse_bool(v, version);
	case FT_BOOL: return parse_bool(v, (int *)p);
	case FT_INT:
		/* Go's int is 64-bit; no int flag means anything beyond 32 bits. */
		if (parse_int64(v, &i64) != 0)
			return -1;
		if (i64 > INT32_MAX || i64 < INT32_MIN)
			return -2;
		*(int *)p = (int)i64;
		return 0;
	case FT_INT64: return parse_int64(v, (int64_t *)p);
	case FT_FLOAT: return parse_float(v, (double *)p);
	case FT_STRING: *(const char **)p = v; return 0;
	case FT_DURATION:
		if (parse_duration_ns(v, &i64) != 0)
			return -1;
		/* Negative Go durations are valid syntax; keep the sign for the range check. */
		*(int64_t *)p = i64 < 0 && i64 > -1000000 ? -1 : i64 / 1000000;
		return 0;
	}
	return -1;
}


/* A command-line syntax error: the message, then the usage, on stderr (as Go's flag). */
static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "derpd: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	print_usage(stderr);
	return 2;
}

/* net.SplitHostPort, then the port as a number or service name. */
static int addr_split(struct config *cfg, const char *addr, const char **why)
{
	const char *colon = strrchr(addr, ':'), *port, *host = addr, *rest;
	size_t hl;
	char *end;
	long n;

	if (colon == NULL)
		return *why = "missing port in address", -1;
	if (addr[0] == '[') {
		const char *rb = strchr(addr, ']');
		if (rb == NULL)
			return *why = "missing ']' in address", -1;
		if (rb[1] == '\0')
			return *why = "missing port in address", -1;
		if (rb + 1 != colon)
			return *why = rb[1] == ':' ? "too many colons in address" :
						  "missing port in address", -1;
		host = addr + 1;
		hl = (size_t)(rb - host);
		rest = rb + 1;
	} else {
		hl = (size_t)(colon - addr);
		if (memchr(addr, ':', hl) != NULL)
			return *why = "too many colons in address", -1;
		rest = addr;
	}
	if (memchr(host, '[', hl) != NULL || strchr(rest, '[') != NULL)
		return *why = "unexpected '[' in address", -1;
	if (strchr(rest, ']') != NULL)
		return *why = "unexpected ']' in address", -1;
	port = colon + 1;
	if (hl >= sizeof cfg->listen_host)
		return *why = "host name too long", -1;
	memcpy(cfg->listen_host, host, hl);
	cfg->listen_host[hl] = '\0';

	if (*port == '\0')
		return *why = "missing port in address", -1;
	if (isdigit((unsigned char)*port)) {
		errno = 0;
		n = strtol(port, &end, 10);
		if (*end != '\0' || errno != 0 || n > 65535)
			return *why = "invalid port", -1;
		cfg->listen_port = (int)n;
	} else if (strcmp(port, "https") == 0) {
		cfg->listen_port = 443;
	} else if (strcmp(port, "http") == 0) {
		cfg->listen_port = 80;
	} else {
		struct servent *se = getservbyname(port, "tcp");
		if (se == NULL)
			return *why = "unknown port name", -1;
		cfg->listen_port = ntohs((uint16_t)se->s_port);
	}
	/* derper's rule compares the port text, not its number. */
	cfg->tls = strcmp(port, "443") == 0 || strcmp(port, "https") == 0 ||
		   strcmp(cfg->certmode, "manual") == 0;
	return 0;
}

/* Ranges and enumerated values; prints the message. 0 ok, 2 usage error. */
static int config_check(const struct config *cfg)
{
	static const struct { const char *name; size_t off; } durs[] = {
		{ "tcp-keepalive-time", offsetof(struct config, tcp_keepalive_ms) },
		{ "tcp-user-timeout", offsetof(struct config, tcp_user_timeout_ms) },
		{ "tcp-write-timeout", offsetof(struct config, tcp_write_timeout_ms) },
		{ "keepalive-interval", offsetof(struct config, keepalive_ms) },
		{ "http-read-timeout", offsetof(struct config, http_read_timeout_ms) },
	};

	if (cfg->http_port < -1 || cfg->http_port > 65535) {
		fprintf(stderr, "derpd: -http-port %d out of range (-1 disables, else 0..65535)\n",
			cfg->http_port);
		return 2;
	}
	if (cfg->stun_port < 0 || cfg->stun_port > 65535) {
		fprintf(stderr, "derpd: -stun-port %d out of range (0..65535)\n", cfg->stun_port);
		return 2;
	}
	for (size_t i = 0; i < sizeof durs / sizeof durs[0]; i++) {
		if (*(const int64_t *)((const char *)cfg + durs[i].off) < 0) {
			fprintf(stderr, "derpd: -%s must not be negative\n", durs[i].name);
			return 2;
		}
	}
	if (cfg->keepalive_ms == 0) {
		fprintf(stderr, "derpd: --keepalive-interval must be at least 1ms\n");
		return 2;
	}
	if (cfg->http_read_timeout_ms == 0) {
		fprintf(stderr, "derpd: --http-read-timeout must be at least 1ms\n");
		return 2;
	}
	if (cfg->workers < 1 || cfg->workers > MAX_WORKERS) {
		fprintf(stderr, "derpd: --workers %d out of range (1..%d)\n", cfg->workers, MAX_WORKERS);
		return 2;
	}
	if (strcmp(cfg->certmode, "manual") != 0 && strcmp(cfg->certmode, "letsencrypt") != 0 &&
	    strcmp(cfg->certmode, "gcp") != 0) {
		fprintf(stderr, "derpd: unsupport cert mode: \"%s\" (want manual, letsencrypt or gcp)\n",
			cfg->certmode);
		return 2;
	}
	if (cfg->home[0] != '\0' && strcmp(cfg->home, "blank") != 0 &&
	    strncmp(cfg->home, "http://", 7) != 0 && strncmp(cfg->home, "https://", 8) != 0) {
		fprintf(stderr, "derpd: unknown --home value \"%s\"\n", cfg->home);
		return 2;
	}
	return 0;
}

int config_parse(struct config *cfg, int argc, char **argv)
{
	const char *why = NULL;
	int version = 0, i, rc;

	config_defaults(cfg);
	for (i = 1; i < argc; i++) {
		const char *s = argv[i], *name, *eq, *val;
		const struct flag_def *f;
		size_t nl;

		if (s[0] != '-' || s[1] == '\0')
			break; /* first non-flag argument ends the flags, as in Go */
		if (strcmp(s, "--") == 0) {
			i++;
			break;
		}
		name = s[1] == '-' ? s + 2 : s + 1;
		if (name[0] == '-' || name[0] == '=')
			return usage_error("bad flag syntax: %s", s);
		eq = strchr(name, '=');
		nl = eq ? (size_t)(eq - name) : strlen(name);
		val = eq ? eq + 1 : NULL;
		f = flag_find(name, nl);
		if (f == NULL) {
			if ((nl == 1 && name[0] == 'h') || (nl == 4 && memcmp(name, "help", 4) == 0)) {
				print_usage(stdout);
				fflush(stdout);
				exit(0);
			}
			return usage_error("flag provided but not defined: -%.*s", (int)nl, name);
		}
		if (val == NULL && f->type != FT_BOOL && f->type != FT_VERSION) {
			if (i + 1 >= argc)
				return usage_error("flag needs an argument: -%s", f->name);
			val = argv[++i];
		}
		if (val == NULL)
			val = "true";
		if ((rc = flag_set(f, cfg, &version, val)) != 0)
			return usage_error("invalid value \"%s\" for flag -%s: %s (%s)", val, f->name,
					   rc == -2 ? "value out of range" : "parse error",
					   type_name(f->type));
	}
	if (i < argc)
		return usage_error("unexpected argument \"%s\"", argv[i]);
	if (version) {
		printf("derpd %s\n", DERPD_VERSION);
		fflush(stdout);
		exit(0);
	}

	if ((rc = config_check(cfg)) != 0)
		return rc;
	if (cfg->dev)
		cfg->addr = ":3340";
	if (addr_split(cfg, cfg->addr, &why) != 0) {
		fprintf(stderr, "derpd: invalid -a address \"%s\": %s\n", cfg->addr, why);
		return 2;
	}
	if (isnan(cfg->accept_connection_limit) || cfg->accept_connection_limit < 0) {
		fprintf(stderr, "derpd: -accept-connection-limit must be a rate >= 0 per second\n");
		return 2;
	}
	if (cfg->accept_connection_burst < 0) {
		fprintf(stderr, "derpd: -accept-connection-burst must be >= 0\n");
		return 2;
	}

	if (!cfg->dev && cfg->config_path[0] == '\0') {
		if (getuid() != 0) {
			fprintf(stderr, "derpd: -c <config path> not specified\n");
			return 2;
		}
		cfg->config_path = DEFAULT_KEY_PATH;
		log_info(LS_CONFIG, "no config path specified; using %s", cfg->config_path);
	}
	return 0;
}

int config_env_bool(const char *name)
{
	static const char *const yes[] = { "1", "t", "T", "TRUE", "true", "True" };
	const char *v = getenv(name);

	for (size_t i = 0; v && i < sizeof yes / sizeof *yes; i++)
		if (strcmp(v, yes[i]) == 0)
			return 1;
	return 0;
}
