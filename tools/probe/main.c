/* derpd-probe: probes the DERP nodes of a DERP map (man/derpd-probe.1), the C counterpart
 * of Tailscale's cmd/derpprobe. Flags as Go's flag package reads them (-flag and --flag,
 * -flag=value or -flag value, bools as -flag or -flag=false), upstream's names and
 * defaults. This file: flags, the mesh key, -once's report, daemon mode's life. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <sodium.h>
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include "mesh/mesh.h"
#include "server/config.h"
#include "server/key.h"
#include "tools/probe/probe.h"

int64_t probe_bw_size = 1000000; /* -bw-probe-size-bytes; web.c reports it */

enum ftype { T_BOOL, T_STR, T_DUR, T_INT };

static struct {
	int dev, version, once, spread, help, workers, qd_pps;
	const char *derp_map, *listen, *tun, *region, *psk_file, *secrets_url, *secrets_prefix,
		*secrets_cache, *socket_path, *ca_file;
	int64_t interval, mesh, stun, tls, bw, qd_timeout, bw_size;
} F = {
	.spread = 1, .workers = 32,
	.derp_map = "https://login.tailscale.com/derpmap/default", .listen = ":8030",
	.tun = "", .region = "", .psk_file = "", .secrets_url = "", .secrets_prefix = "prod/derp",
	.secrets_cache = "", .socket_path = "/var/run/tailscale/tailscaled.sock", .ca_file = "",
	.interval = 15000, .mesh = 15000, .stun = 15000, .tls = 15000, .bw = 0,
	.qd_timeout = 5000, .bw_size = 1000000,
};

static const struct flag {
	const char *name;
	enum ftype t;
	void *p;
	const char *help;
} flags[] = {
	{ "dev", T_BOOL, &F.dev, "run in localhost development mode" },
	{ "derp-map", T_STR, &F.derp_map, "URL to DERP map (https:// or file://) or 'local' to use "
	  "the local tailscaled's DERP map" },
	{ "version", T_BOOL, &F.version, "print version and exit" },
	{ "listen", T_STR, &F.listen, "HTTP listen address" },
	{ "once", T_BOOL, &F.once, "probe once and print results, then exit; ignores the listen flag" },
	{ "spread", T_BOOL, &F.spread, "whether to spread probing over time" },
	{ "interval", T_DUR, &F.interval, "probe interval" },
	{ "mesh-interval", T_DUR, &F.mesh, "mesh probe interval" },
	{ "stun-interval", T_DUR, &F.stun, "STUN probe interval" },
	{ "tls-interval", T_DUR, &F.tls, "TLS probe interval" },
	{ "bw-interval", T_DUR, &F.bw, "bandwidth probe interval (0 = no bandwidth probing)" },
	{ "bw-probe-size-bytes", T_INT, &F.bw_size, "bandwidth probe size" },
	{ "bw-tun-ipv4-addr", T_STR, &F.tun, "bandwidth probes over a TUN device (not supported)" },
	{ "qd-packets-per-second", T_INT, &F.qd_pps, "queuing delay probing (not supported: 0 only)" },
	{ "qd-packet-timeout", T_DUR, &F.qd_timeout, "queuing delay packet timeout (unused)" },
	{ "region-code", T_STR, &F.region, "probe only this region (e.g. 'lax' or '17'); if left "
	  "blank, all regions will be probed" },
	{ "mesh-psk-file", T_STR, &F.psk_file, "if non-empty, path to file containing the mesh "
	  "pre-shared key file. It must be 64 lowercase hexadecimal characters; whitespace is "
	  "trimmed." },
	{ "secrets-url", T_STR, &F.secrets_url, "SETEC server URL for secrets retrieval of mesh key" },
	{ "secrets-path-prefix", T_STR, &F.secrets_prefix, "setec path prefix for \"meshkey\" "
	  "secret for DERP mesh key" },
	{ "secrets-cache-dir", T_STR, &F.secrets_cache, "directory to cache setec secrets in "
	  "(default $HOME/.cache/derper-secrets)" },
	/* derpd's own */
	{ "socket", T_STR, &F.socket_path, "tailscaled's LocalAPI socket, for -derp-map local" },
	{ "ca-file", T_STR, &F.ca_file, "PEM file of the roots that node certificates must chain "
	  "to (default: the system's, or SSL_CERT_FILE / SSL_CERT_DIR)" },
	{ "workers", T_INT, &F.workers, "probes that may run at once" },
	{ "help", T_BOOL, &F.help, "this text" },
};
#define NFLAGS (sizeof flags / sizeof flags[0])

static void usage(FILE *f)
{
	fprintf(f, "usage: derpd-probe [flags]\n");
	for (size_t i = 0; i < NFLAGS; i++) {
		const struct flag *x = &flags[i];
		const char *t = x->t == T_STR ? " string" : x->t == T_DUR ? " duration"
			      : x->t == T_INT ? " int" : "";
		fprintf(f, "  -%s%s\n    \t%s\n", x->name, t, x->help);
	}
	fprintf(f, "  --version prints \"derpd-probe %s\"\n", DERPD_VERSION);
}

static int bad_usage(const char *fmt, const char *a, const char *b)
{
	fprintf(stderr, "derpd-probe: ");
	fprintf(stderr, fmt, a, b);
	fprintf(stderr, "\n");
	usage(stderr);
	return 2;
}

static int set_flag(const struct flag *x, const char *v)
{
	char *end;
	switch (x->t) {
	case T_BOOL:
		if (!strcmp(v, "1") || !strcasecmp(v, "t") || !strcasecmp(v, "true"))
			*(int *)x->p = 1;
		else if (!strcmp(v, "0") || !strcasecmp(v, "f") || !strcasecmp(v, "false"))
			*(int *)x->p = 0;
		else
			return -1;
		return 0;
	case T_STR:
		*(const char **)x->p = v;
		return 0;
	case T_DUR: {
		int64_t ms = config_parse_duration_ms(v);
		if (ms < 0)
			return -1;
		*(int64_t *)x->p = ms;
		return 0;
	}
	case T_INT: {
		errno = 0;
		long long n = strtoll(v, &end, 0);
		if (!*v || *end || errno)
			return -1;
		if (x->p == &F.bw_size)
			F.bw_size = n;
		else if (n < -2147483647LL || n > 2147483647LL)
			return -1;
		else
			*(int *)x->p = (int)n;
		return 0;
	}
	}
	return -1;
}

static int parse_flags(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--"))
			return i + 1 < argc ? bad_usage("unexpected argument %s%s", argv[i + 1], "") : 0;
		if (a[0] != '-' || !a[1])
			return bad_usage("unexpected argument %s%s", a, "");
		a += a[1] == '-' ? 2 : 1;
		const char *eq = strchr(a, '=');
		size_t nl = eq ? (size_t)(eq - a) : strlen(a);
		const struct flag *x = NULL;
		for (size_t k = 0; k < NFLAGS && !x; k++)
			if (strlen(flags[k].name) == nl && !strncmp(flags[k].name, a, nl))
				x = &flags[k];
		if (!x && nl == 1 && *a == 'h')
			x = &flags[NFLAGS - 1];
		if (!x)
			return bad_usage("flag provided but not defined: %s%s", argv[i], "");
		const char *v = eq ? eq + 1 : NULL;
		if (!v && x->t == T_BOOL)
			v = "true";
		if (!v) {
			if (i + 1 >= argc)
				return bad_usage("flag needs an argument: -%s%s", x->name, "");
			v = argv[++i];
		}
		if (set_flag(x, v) != 0)
			return bad_usage("invalid value \"%s\" for flag -%s", v, x->name);
	}
	return 0;
}

/* The mesh key, as upstream's getMeshKey: -dev: TAILSCALE_DERPER_MESH_KEY; else
 * -secrets-url (setec, read and cached as derpd does); else -mesh-psk-file; else (where
 * upstream has none) the variable if it is set. */
static int load_mesh_key(uint8_t key[32], int *have)
{
	char err[600], *text = NULL;
	size_t len = 0;
	const char *env = getenv(MESH_KEY_ENV);

	*have = 0;
	if (F.dev || (!F.secrets_url[0] && !F.psk_file[0] && env && *env)) {
		if (!env || !*env) {
			plog("No mesh key specified for dev via %s", MESH_KEY_ENV);
			return 0;
		}
		text = strdup(env);
		len = text ? strlen(text) : 0;
		plog("Set mesh key from %s", MESH_KEY_ENV);
	} else if (F.secrets_url[0]) {
		char cache[4096], value[512];
		int64_t version;
		int cached;
		struct config c;
		memset(&c, 0, sizeof c);
		snprintf(cache, sizeof cache, "%s/.cache/derper-secrets",
			 getenv("HOME") ? getenv("HOME") : "");
		c.secrets_url = F.secrets_url;
		c.secrets_path_prefix = F.secrets_prefix;
		c.secrets_cache_dir = F.secrets_cache[0] ? F.secrets_cache : cache;
		if (mesh_secrets_load(&c, value, sizeof value, &version, &cached, err,
				      sizeof err) != 0) {
			plog("failed to get mesh key: %s", err);
			return -1;
		}
		text = strdup(value);
		len = text ? strlen(text) : 0;
		sodium_memzero(value, sizeof value);
	} else if (F.psk_file[0]) {
		FILE *f = fopen(F.psk_file, "rb");
		if (!f) {
			plog("failed to get mesh key: %s: %s", F.psk_file, strerror(errno));
			return -1;
		}
		text = malloc(4097);
		len = text ? fread(text, 1, 4096, f) : 0;
		fclose(f);
		if (!text)
			return -1;
		text[len] = '\0';
		plog("Got mesh key from static file");
	} else {
		plog("No mesh key found, mesh key is empty");
		return 0;
	}
	int rc = text ? mesh_parse_key(text, len, key, NULL, err, sizeof err) : -1;
	sodium_memzero(text, len);
	free(text);
	if (rc != 0) {
		plog("failed to get mesh key: %s", err);
		return -1;
	}
	*have = !key_is_zero(key);
	return 0;
}

static int by_name(const void *a, const void *b)
{
	return strcmp(((const struct probe_info *)a)->name, ((const struct probe_info *)b)->name);
}

/* A node's own probe (TLS, STUN, the single-node DERP round trip) or a pair's. */
static int own(const struct probe_info *p)
{
	return !p->to[0] || !strcmp(p->node, p->to);
}

static void add_name(char *list, size_t cap, const char *name)
{
	char tag[2 * DM_NAME_LEN + 8];
	snprintf(tag, sizeof tag, " %s,", name);
	if (!strstr(list, tag) && strlen(list) + strlen(tag) + 1 < cap)
		strcat(list, tag);
}

/* -once's report: upstream's "good: <probe>: <latency>" and "bad: <probe>: <error>" lines
 * (good ones first, each group by name), then one line naming what failed: the nodes whose
 * own probes failed, and pairs that fail between nodes that are fine on their own. */
static int report(void)
{
	int n, bad = 0;
	struct probe_info *p = prober_snapshot(&n);
	char d[48], nodes[1024] = "", pairs[1024] = "";

	if (!p)
		return 1;
	qsort(p, (size_t)n, sizeof *p, by_name);
	for (int pass = 0; pass < 2; pass++)
		for (int i = 0; i < n; i++) {
			if (!p[i].ran || (pass == 0) != (p[i].ok != 0))
				continue;
			fmt_duration(d, sizeof d, p[i].ok ? p[i].latency_s : p[i].last_run_s);
			if (p[i].ok) {
				printf("good: %s: %s%s%s%s\n", p[i].name, d, p[i].note[0] ? " (" : "",
				       p[i].note, p[i].note[0] ? ")" : "");
				continue;
			}
			printf("bad: %s: %s (after %s)\n", p[i].name, p[i].err, d);
			bad++;
			if (p[i].cls == PC_MAP)
				add_name(nodes, sizeof nodes, "(the DERP map)");
			else if (own(&p[i]))
				add_name(nodes, sizeof nodes, p[i].node);
		}
	for (int i = 0; i < n; i++) {
		char a[DM_NAME_LEN + 2], b[DM_NAME_LEN + 2], pair[2 * DM_NAME_LEN + 8];
		if (!p[i].ran || p[i].ok || own(&p[i]))
			continue;
		snprintf(a, sizeof a, " %s,", p[i].node);
		snprintf(b, sizeof b, " %s,", p[i].to);
		if (strstr(nodes, a) || strstr(nodes, b))
			continue; /* explained by a node that fails on its own */
		snprintf(pair, sizeof pair, "%s->%s", p[i].node, p[i].to);
		add_name(pairs, sizeof pairs, pair);
	}
	if (bad) {
		size_t nl = strlen(nodes), pl = strlen(pairs);
		if (nl)
			nodes[nl - 1] = '\0';
		if (pl)
			pairs[pl - 1] = '\0';
		printf("%d of %d probes bad%s%s%s%s\n", bad, n, nl ? "; failing:" : "", nodes,
		       pl ? "; failing between nodes:" : "", pairs);
	} else {
		printf("all %d probes good\n", n);
	}
	fflush(stdout);
	free(p);
	return bad ? 1 : 0;
}

int main(int argc, char **argv)
{
	uint8_t mesh_key[32];
	int have_key = 0, rc;
	char err[300];

	if ((rc = parse_flags(argc, argv)) != 0)
		return rc;
	if (F.help) {
		usage(stdout);
		return 0;
	}
	if (F.version) {
		printf("derpd-probe %s\n", DERPD_VERSION);
		return 0;
	}
	/* upstream features that need what this program does not have: refused by name */
	if (F.tun[0])
		return bad_usage("-bw-tun-ipv4-addr: TUN bandwidth probes are not supported%s%s", "", "");
	if (F.qd_pps != 0)
		return bad_usage("-qd-packets-per-second: queuing delay probes are not supported%s%s",
				 "", "");
	if (F.interval <= 0)
		return bad_usage("-interval must be more than 0%s%s", "", "");
	if (F.bw_size < 0 || F.bw_size > (1LL << 40))
		return bad_usage("-bw-probe-size-bytes: out of range 0..2^40%s%s", "", "");
	if (F.workers < 1 || F.workers > 1024)
		return bad_usage("-workers: out of range 1..1024%s%s", "", "");
	if (strcmp(F.derp_map, "local") && strncmp(F.derp_map, "https://", 8) &&
	    strncmp(F.derp_map, "http://", 7) && strncmp(F.derp_map, "file://", 7))
		return bad_usage("-derp-map %s: want https://, http://, file:// or local%s",
				 F.derp_map, "");
	signal(SIGPIPE, SIG_IGN);
	/* wolfSSL_Init's first call is not thread-safe; the probes' threads all use TLS */
	wolfSSL_Init();
	if (key_init() != 0) {
		plog("cannot initialise libsodium");
		return 1;
	}
	if (load_mesh_key(mesh_key, &have_key) != 0)
		return 1;
	probe_bw_size = F.bw_size;

	struct prober_opts o = {
		.map_url = F.derp_map, .socket_path = F.socket_path, .region = F.region,
		.interval_ms = F.interval, .mesh_ms = F.mesh, .stun_ms = F.stun, .tls_ms = F.tls,
		.bw_ms = F.bw, .spread = F.spread, .once = F.once, .workers = F.workers,
		.check = { .mesh_key = have_key ? mesh_key : NULL, .bw_size = F.bw_size,
			   .ca_file = F.ca_file[0] ? F.ca_file : NULL },
	};
	const char *force = getenv("TS_DEBUG_USE_DERP_HTTP");
	o.check.force_http = force && (!strcmp(force, "1") || !strcasecmp(force, "true"));

	/* signals go to sigwait below, not to whichever thread happens to run */
	sigset_t ss;
	sigemptyset(&ss);
	sigaddset(&ss, SIGINT);
	sigaddset(&ss, SIGTERM);
	if (!F.once)
		pthread_sigmask(SIG_BLOCK, &ss, NULL);

	if (!F.once && web_start(F.listen, err, sizeof err) != 0) {
		plog("%s", err);
		return 1;
	}
	if (F.once)
		plog("Waiting for all probes (may take up to 1m)");
	if (prober_start(&o, err, sizeof err) != 0) {
		plog("%s", err);
		return 1;
	}
	if (F.once) {
		prober_wait_once();
		rc = report();
		prober_stop();
		return rc;
	}
	int sig = 0;
	sigwait(&ss, &sig);
	plog("%s: stopping", strsignal(sig));
	web_stop();
	prober_stop();
	return 0;
}
