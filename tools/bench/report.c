/* What derpd-bench prints: the progress line on stderr, then a human table (unless -q)
 * and one JSON line on stdout. scripts/bench.sh reads the JSON: keep its field names. */
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#include "tools/bench/bench.h"

#ifndef DERPD_VERSION
#define DERPD_VERSION "dev"
#endif

/* ---- the progress line ----------------------------------------------------------- */

static int show_progress(void)
{
	return !opt.quiet && (opt.progress > 0 || (opt.progress < 0 && isatty(2)));
}

void progress(const char *fmt, ...)
{
	char line[160];
	va_list ap;

	if (!show_progress())
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\r%-79.79s", line);
	fflush(stderr);
}

void progress_end(void)
{
	if (show_progress())
		fprintf(stderr, "\r%79s\r", "");
}

/* ---- the table and the JSON line ------------------------------------------------- */

static const char *shape_name(void)
{
	return opt.ring ? "ring" : "pairs";
}

static void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			printf("\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			printf("\\u%04x", *s);
		else
			putchar(*s);
	}
	putchar('"');
}

/* A server figure that was not measured (no pid: -s or --raw without --pid) is -1 inside;
 * people see "n/a" and JSON readers null, never a negative CPU time or size. */
static const char *fig(char *buf, size_t len, const char *fmt, double v, double scale)
{
	if (v < 0)
		return "n/a";
	snprintf(buf, len, fmt, v * scale);
	return buf;
}

static void json_fig(const char *key, const char *fmt, double v)
{
	printf(",\"%s\":", key);
	if (v < 0)
		printf("null");
	else
		printf(fmt, v);
}

/* " (pid N)" when the server's process is known, else nothing. */
static const char *pid_note(const struct target *tg)
{
	static char buf[32];

	if (tg->pid <= 0)
		return "";
	snprintf(buf, sizeof buf, " (pid %d)", (int)tg->pid);
	return buf;
}

static void json_common(const struct target *tg, const char *mode)
{
	printf("{\"tool\":\"derpd-bench\",\"version\":\"%s\",\"mode\":\"%s\",\"server\":\"%s\","
	       "\"transport\":\"%s\",\"label\":",
	       DERPD_VERSION, mode, tg->kind, tg->raw ? "tcp" : opt.tls ? "https" : "http");
	json_str(opt.label ? opt.label : "");
	json_fig("server_pid", "%.0f", tg->pid > 0 ? (double)tg->pid : -1);
	printf(",\"cores\":%ld", sysconf(_SC_NPROCESSORS_ONLN));
}

void report_relay(const struct target *tg, const struct relay_result *r, long fdlim)
{
	char rate[64];

	if (opt.rate > 0)
		snprintf(rate, sizeof rate, "%.0f packets/s per sender", opt.rate);
	else
		snprintf(rate, sizeof rate, "unlimited");
	if (!opt.quiet) {
		printf("derpd-bench %s: %s at %s%s, %s\n", DERPD_VERSION, tg->kind,
		       tg->hostport, pid_note(tg),
		       tg->raw ? "raw TCP relay of the same frames"
			       : opt.tls ? "DERP over TLS (HTTPS)" : "DERP over plain HTTP");
		if (opt.ring)
			printf("  %-12s ring of %d clients", "shape", r->clients);
		else
			printf("  %-12s %d pairs", "shape", opt.pairs);
		printf(", %d-byte payloads, offered %s, %d threads\n", opt.size, rate, opt.threads);
		printf("  %-12s %.2f s measured after %.2f s warm-up; login %.2f s, drain %.2f s\n",
		       "time", r->measured_s, opt.warmup, r->login_s, r->drain_s);
		printf("  %-12s %.0f packets/s, %.3f Gbit/s payload\n", "delivered", r->pps,
		       r->gbps);
		printf("  %-12s %.3f %% (%llu sent in the window = %.0f packets/s, %llu of them "
		       "delivered)\n", "loss", r->loss_pct, (unsigned long long)r->sent,
		       (double)r->sent / r->measured_s, (unsigned long long)r->delivered);
		printf("  %-12s p50 %.1f us, p99 %.1f us, p99.9 %.1f us, max %.1f us\n",
		       "latency", r->p50, r->p99, r->p999, r->max);
		char b1[32], b2[32], b3[32], b4[32];
		printf("  %-12s CPU %s (%s), peak RSS %s, RSS %s\n", "server",
		       fig(b1, sizeof b1, "%.2f s", r->srv_cpu, 1),
		       fig(b2, sizeof b2, "%.0f %%", r->srv_cpu, 100 / r->measured_s),
		       fig(b3, sizeof b3, "%.1f MiB", (double)r->srv_hwm, 1 / 1024.0),
		       fig(b4, sizeof b4, "%.1f MiB", (double)r->srv_rss, 1 / 1024.0));
		printf("  %-12s CPU %.2f s (%.0f %%)\n", "bench", r->bench_cpu,
		       100 * r->bench_cpu / r->measured_s);
		printf("  %-12s %.0f %% busy of %ld00 %%, softirq %.0f %%, steal %.0f %%, other "
		       "processes %.0f %% (%.0f %% busy before the run)\n", "machine", r->mach_pct,
		       sysconf(_SC_NPROCESSORS_ONLN), r->softirq_pct, r->steal_pct, r->others_pct,
		       g_busy_before);
		if (r->other || r->wrong || r->closed)
			printf("  %-12s %llu other frames, %llu misdelivered, %llu connections "
			       "closed\n", "anomalies", (unsigned long long)r->other,
			       (unsigned long long)r->wrong, (unsigned long long)r->closed);
		if (r->fresh_ms >= 0)
			printf("  %-12s a fresh pair logged in and relayed a packet %.1f ms after "
			       "the window\n", "recovery", r->fresh_ms);
		else if (!tg->raw)
			printf("  %-12s FAILED: no fresh pair logged in and relayed a packet "
			       "after the window: %s\n", "recovery", r->fresh_err);
		if (r->capped[0])
			printf("  %-12s %s\n", "capped", r->capped);
	}
	json_common(tg, "relay");
	printf(",\"topology\":\"%s\",\"pairs\":%d,\"clients\":%d,\"payload\":%d,"
	       "\"rate_pps\":%.0f,\"offered_pps\":%.0f,\"threads\":%d,\"warmup_s\":%.3f,"
	       "\"duration_s\":%.3f,\"login_s\":%.3f,\"drain_s\":%.3f,\"sent\":%llu,\"sent_pps\":%.1f,"
	       "\"delivered\":%llu,\"delivered_pps\":%.1f,\"payload_gbps\":%.4f,"
	       "\"loss_pct\":%.4f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
	       "\"max_us\":%.1f",
	       shape_name(), opt.ring ? 0 : opt.pairs, r->clients, opt.size, opt.rate,
	       opt.rate * (opt.ring ? r->clients : opt.pairs), opt.threads, opt.warmup, r->measured_s,
	       r->login_s, r->drain_s, (unsigned long long)r->sent, (double)r->sent / r->measured_s,
	       (unsigned long long)r->delivered, r->pps, r->gbps, r->loss_pct, r->p50, r->p99,
	       r->p999, r->max);
	json_fig("server_cpu_s", "%.2f", r->srv_cpu);
	json_fig("server_cpu_pct", "%.1f", r->srv_cpu < 0 ? -1 : 100 * r->srv_cpu / r->measured_s);
	json_fig("server_peak_rss_kib", "%.0f", (double)r->srv_hwm);
	json_fig("server_rss_kib", "%.0f", (double)r->srv_rss);
	printf(",\"bench_cpu_s\":%.2f,\"machine_cpu_pct\":%.1f,\"softirq_pct\":%.1f,\"steal_pct\":%.1f,"
	       "\"others_cpu_pct\":%.1f,\"busy_before_pct\":%.1f,\"waited_s\":%.1f,"
	       "\"fresh_pair_ms\":%.1f,"
	       "\"other_frames\":%llu,\"misdelivered\":%llu,\"closed\":%llu,\"fd_limit\":%ld,"
	       "\"capped\":",
	       r->bench_cpu, r->mach_pct, r->softirq_pct, r->steal_pct, r->others_pct,
	       g_busy_before, g_waited, r->fresh_ms,
	       (unsigned long long)r->other,
	       (unsigned long long)r->wrong, (unsigned long long)r->closed, fdlim);
	json_str(r->capped);
	printf(",\"fresh_pair_error\":");
	json_str(r->fresh_err);
	printf("}\n");
	fflush(stdout);
}


void report_idle(const struct target *tg, const struct idle_result *r, long fdlim)
{
	if (!opt.quiet) {
		printf("derpd-bench %s: %s at %s%s, idle logged-in clients%s\n", DERPD_VERSION,
		       tg->kind, tg->hostport, pid_note(tg), opt.tls ? " over TLS" : "");
		printf("  %-12s %ld logged in of %ld (%ld failed%s%s), %d process%s x %d login "
		       "threads, %d source addresses\n", "clients", r->ok, r->n, r->fail,
		       r->err[0] ? ": " : "", r->err, r->procs, r->procs > 1 ? "es" : "",
		       r->threads, opt.src_addrs);
		printf("  %-12s %.2f s to log them all in (%.0f logins/s)\n", "connect",
		       r->connect_s, r->connect_s > 0 ? r->ok / r->connect_s : 0);
		char b1[32], b2[32], b3[32], b4[32], b5[32], b6[32];
		printf("  %-12s RSS %s before, %s with them (peak %s): %s per connection\n",
		       "server", fig(b1, sizeof b1, "%.1f MiB", (double)r->rss0, 1 / 1024.0),
		       fig(b2, sizeof b2, "%.1f MiB", (double)r->rss1, 1 / 1024.0),
		       fig(b3, sizeof b3, "%.1f MiB", (double)r->hwm, 1 / 1024.0),
		       fig(b4, sizeof b4, "%.0f bytes", r->per_conn, 1));
		printf("  %-12s %s open descriptors, limit %s\n", "server fds",
		       fig(b5, sizeof b5, "%.0f", (double)r->srv_fds, 1),
		       fig(b6, sizeof b6, "%.0f", (double)r->srv_lim, 1));
		if (r->capped[0])
			printf("  %-12s %s\n", "capped", r->capped);
	}
	json_common(tg, "idle");
	printf(",\"requested\":%ld,\"clients\":%ld,\"failed\":%ld,\"procs\":%d,"
	       "\"login_threads\":%d,\"src_addrs\":%d,\"connect_s\":%.3f,\"logins_per_s\":%.0f",
	       opt.idle_max ? r->n : opt.idle, r->ok, r->fail, r->procs, r->threads, opt.src_addrs,
	       r->connect_s, r->connect_s > 0 ? r->ok / r->connect_s : 0);
	json_fig("server_rss_before_kib", "%.0f", (double)r->rss0);
	json_fig("server_rss_kib", "%.0f", (double)r->rss1);
	json_fig("server_peak_rss_kib", "%.0f", (double)r->hwm);
	json_fig("rss_per_conn_bytes", "%.0f", r->per_conn);
	json_fig("server_fds", "%.0f", (double)r->srv_fds);
	json_fig("server_fd_limit", "%.0f", (double)r->srv_lim);
	printf(",\"fd_limit\":%ld,\"busy_before_pct\":%.1f,\"waited_s\":%.1f,\"error\":",
	       fdlim, g_busy_before, g_waited);
	json_str(r->err);
	printf(",\"capped\":");
	json_str(r->capped);
	printf("}\n");
	fflush(stdout);
}
