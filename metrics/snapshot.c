/* One consistent-enough read of every number a scrape shows: the relay's per-worker
 * counters (summed with relaxed loads, so a scrape never stalls a worker), STUN, bootstrap
 * DNS, the TLS counters kept here, and the process figures from /proc. */
#include "metrics/internal.h"

#include "server/config.h"
#include "server/server.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#ifndef DERPD_VERSION
#define DERPD_VERSION "unknown"
#endif
#ifndef DERPD_REVISION
#define DERPD_REVISION "unknown"
#endif
#define CERTS_MAX 64

static uint64_t tls_request[HTTPD_TLS_NVERSIONS];
static int64_t tls_active[HTTPD_TLS_NVERSIONS];
static unsigned tls_request_seen, tls_active_seen;
static uint64_t tls_accepted, tls_rejected;

void httpd_tls_request_begin(enum httpd_tls_version v)
{
	if ((unsigned)v >= HTTPD_TLS_NVERSIONS)
		v = HTTPD_TLS_UNKNOWN;
	__atomic_fetch_or(&tls_request_seen, 1u << v, __ATOMIC_RELAXED);
	__atomic_fetch_or(&tls_active_seen, 1u << v, __ATOMIC_RELAXED);
	__atomic_fetch_add(&tls_request[v], 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&tls_active[v], 1, __ATOMIC_RELAXED);
}

void httpd_tls_request_end(enum httpd_tls_version v)
{
	if ((unsigned)v >= HTTPD_TLS_NVERSIONS)
		v = HTTPD_TLS_UNKNOWN;
	__atomic_fetch_sub(&tls_active[v], 1, __ATOMIC_RELAXED);
}

void httpd_tls_listener_count(int accepted)
{
	__atomic_fetch_add(accepted ? &tls_accepted : &tls_rejected, 1, __ATOMIC_RELAXED);
}

static int64_t count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	if (d == NULL)
		return 0;
	int64_t n = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL)
		if (de->d_name[0] != '.')
			n++;
	closedir(d);
	return n; /* includes the directory's own fd, as upstream's count does */
}

static int64_t read_boot_time(void)
{
	FILE *f = fopen("/proc/stat", "r");
	if (f == NULL)
		return 0;
	char line[256];
	long long bt = 0;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "btime %lld", &bt) == 1)
			break;
	fclose(f);
	return bt;
}

/* /proc/self/stat fields after the command name: utime 14, stime 15, num_threads 20,
 * starttime 22, vsize 23, rss 24 (1-based, as in proc(5)). */
static void read_self_stat(struct metrics_snapshot *s)
{
	char buf[1024];
	FILE *f = fopen("/proc/self/stat", "r");
	if (f == NULL)
		return;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	if (p == NULL)
		return;
	unsigned long long v[64] = { 0 };
	int field = 3;
	for (char *tok = strtok(p + 2, " "); tok && field < 64; tok = strtok(NULL, " "), field++)
		v[field] = strtoull(tok, NULL, 10);
	long tck = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
	if (tck <= 0)
		tck = 100;
	s->cpu_seconds = (double)(v[14] + v[15]) / (double)tck;
	s->threads = (int64_t)v[20];
	s->vsize_bytes = (int64_t)v[23];
	s->rss_bytes = (int64_t)v[24] * page;
	if (s->boot_time > 0)
		s->start_time = (double)s->boot_time + (double)v[22] / (double)tck;
}

static void read_binary_name(char *out, size_t n)
{
	char path[4096];
	ssize_t k = readlink("/proc/self/exe", path, sizeof path - 1);
	if (k <= 0) {
		snprintf(out, n, "derpd");
		return;
	}
	path[k] = '\0';
	const char *base = strrchr(path, '/');
	base = base ? base + 1 : path;
	size_t l = strlen(base) < n - 1 ? strlen(base) : n - 1;
	memcpy(out, base, l);
	out[l] = '\0';
}

void metrics_gather(struct metrics_snapshot *s, const struct config *cfg)
{
	memset(s, 0, sizeof *s);
	server_stats_sum(&s->derp);
	stun_counters_get(&s->stun);
	admission_counters_get(s->admission);
	bootstrap_dns_counters_get(&s->dns);
	for (int v = 0; v < HTTPD_TLS_NVERSIONS; v++) {
		s->tls_request[v] = __atomic_load_n(&tls_request[v], __ATOMIC_RELAXED);
		s->tls_active[v] = __atomic_load_n(&tls_active[v], __ATOMIC_RELAXED);
	}
	s->tls_request_seen = __atomic_load_n(&tls_request_seen, __ATOMIC_RELAXED);
	s->tls_active_seen = __atomic_load_n(&tls_active_seen, __ATOMIC_RELAXED);
	s->tls_accepted = __atomic_load_n(&tls_accepted, __ATOMIC_RELAXED);
	s->tls_rejected = __atomic_load_n(&tls_rejected, __ATOMIC_RELAXED);
	server_tls_failures(s->tls_handshake_failures);
	conntab_counters_get(&s->http);
	s->tls_mode = cfg ? cfg->tls : 0;
	s->rate_limit = cfg && cfg->rate_config && cfg->rate_config[0];

	s->open_fds = count_fds();
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
		s->max_fds = rl.rlim_cur == RLIM_INFINITY ? -1 : (int64_t)rl.rlim_cur;
	if (getrlimit(RLIMIT_AS, &rl) == 0)
		s->vsize_max_bytes = rl.rlim_cur == RLIM_INFINITY ? 18446744073709551615.0
								  : (double)rl.rlim_cur;
	s->boot_time = read_boot_time();
	read_self_stat(s);
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	if (s->start_time <= 0)
		s->start_time = (double)now.tv_sec;
	double up = (double)now.tv_sec + now.tv_nsec / 1e9 - s->start_time;
	s->uptime_sec = up > 0 ? (int64_t)llround(up) : 0;
	s->version = DERPD_VERSION;
	read_binary_name(s->binary, sizeof s->binary);

	s->revision = DERPD_REVISION;
	s->tls_library = cert_tls_library_version();
	s->aesni = cert_tls_aesni();
	if ((s->certs = malloc(CERTS_MAX * sizeof *s->certs)) != NULL)
		s->ncerts = cert_expiry_list(s->certs, CERTS_MAX);
	cert_acme_counters(&s->acme_orders, &s->acme_failures);
	/* peers may come and go between the two calls only at start-up and shutdown */
	size_t n = mesh_peers_status(NULL, 0);
	if (n && (s->mesh = malloc(n * sizeof *s->mesh)) != NULL) {
		size_t got = mesh_peers_status(s->mesh, n);
		s->nmesh = got < n ? got : n;
	}
}

void metrics_release(struct metrics_snapshot *s)
{
	free(s->certs);
	free(s->mesh);
	s->certs = NULL;
	s->mesh = NULL;
	s->ncerts = s->nmesh = 0;
}
