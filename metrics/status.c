/* /debug/: the live status page (issue 15.4). One HTML page, no JavaScript and nothing
 * fetched from elsewhere, that a reload refreshes: connections, packets and bytes per
 * second, drops by reason, mesh links, certificates, the build, and an SVG sparkline of the
 * last ten minutes of packets. Rates come from a sampler thread that keeps the relay's
 * counters every SAMPLE_MS; the newest rate is from the last sample to the request. */
#include "metrics/internal.h"

#include "server/config.h"
#include "server/server.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SAMPLE_MS 5000
#define NSAMPLES 121 /* ten minutes of intervals */

struct sample {
	int64_t ms; /* CLOCK_MONOTONIC */
	uint64_t pkts_in, pkts_out, bytes_in, bytes_out, drops;
};

static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_t thread;
	int running, stop;
	struct sample s[NSAMPLES]; /* ring; n valid, newest at (head - 1) */
	int head, n;
} st = { .mu = PTHREAD_MUTEX_INITIALIZER };

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sample_of(const struct derp_stats_snapshot *d, struct sample *out)
{
	memset(out, 0, sizeof *out);
	out->ms = mono_ms();
	out->pkts_in = d->sum.packets_received;
	out->pkts_out = d->sum.packets_sent;
	out->bytes_in = d->sum.bytes_received;
	out->bytes_out = d->sum.bytes_sent;
	for (int r = 0; r < DROP_NREASONS; r++)
		for (int k = 0; k < KIND_N; k++)
			out->drops += d->sum.packets_dropped[r][k];
}

static void take_sample(void)
{
	struct derp_stats_snapshot d;
	struct sample x;

	server_stats_sum(&d);
	sample_of(&d, &x);
	pthread_mutex_lock(&st.mu);
	st.s[st.head] = x;
	st.head = (st.head + 1) % NSAMPLES;
	if (st.n < NSAMPLES)
		st.n++;
	pthread_mutex_unlock(&st.mu);
}

static void *sampler(void *unused)
{
	(void)unused;
	pthread_mutex_lock(&st.mu);
	while (!st.stop) {
		pthread_mutex_unlock(&st.mu);
		take_sample();
		pthread_mutex_lock(&st.mu);
		struct timespec until;
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_sec += SAMPLE_MS / 1000;
		while (!st.stop && pthread_cond_timedwait(&st.cv, &st.mu, &until) == 0)
			;
	}
	pthread_mutex_unlock(&st.mu);
	return NULL;
}

int status_start(void)
{
	pthread_condattr_t ca;

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&st.cv, &ca);
	pthread_condattr_destroy(&ca);
	st.stop = 0;
	st.n = st.head = 0;
	if (pthread_create(&st.thread, NULL, sampler, NULL) != 0)
		return -1;
	st.running = 1;
	return 0;
}

void status_stop(void)
{
	if (!st.running)
		return;
	pthread_mutex_lock(&st.mu);
	st.stop = 1;
	pthread_cond_signal(&st.cv);
	pthread_mutex_unlock(&st.mu);
	pthread_join(st.thread, NULL);
	pthread_cond_destroy(&st.cv);
	st.running = 0;
}

/* ---- the page ---- */

static void esc(struct mbuf *b, const char *s)
{
	for (; s && *s; s++)
		switch (*s) {
		case '<': mbuf_puts(b, "&lt;"); break;
		case '>': mbuf_puts(b, "&gt;"); break;
		case '&': mbuf_puts(b, "&amp;"); break;
		case '"': mbuf_puts(b, "&#34;"); break;
		case '\'': mbuf_puts(b, "&#39;"); break;
		default: mbuf_add(b, s, 1);
		}
}

static double per_s(uint64_t a, uint64_t b, int64_t ms)
{
	return ms > 0 && b >= a ? (double)(b - a) * 1000.0 / (double)ms : 0;
}

/* A row: label, then the value in a cell with an id the tests (and scrapers of the page)
 * can find. */
static void row_num(struct mbuf *b, const char *label, const char *id, double v, const char *fmt)
{
	mbuf_printf(b, "<tr><th>%s</th><td id=\"%s\">", label, id);
	mbuf_printf(b, fmt, v);
	mbuf_puts(b, "</td></tr>\n");
}

static void row_text(struct mbuf *b, const char *label, const char *id, const char *v)
{
	mbuf_printf(b, "<tr><th>%s</th><td id=\"%s\">", label, id);
	esc(b, v);
	mbuf_puts(b, "</td></tr>\n");
}

static void duration(char *out, size_t n, long long s)
{
	if (s >= 86400)
		snprintf(out, n, "%lldd %lldh%lldm", s / 86400, s / 3600 % 24, s / 60 % 60);
	else if (s >= 3600)
		snprintf(out, n, "%lldh%lldm%llds", s / 3600, s / 60 % 60, s % 60);
	else if (s >= 60)
		snprintf(out, n, "%lldm%llds", s / 60, s % 60);
	else
		snprintf(out, n, "%llds", s);
}

/* Packets per second in and out over the sampled minutes, as two step lines on a time
 * axis (ten minutes wide, now at the right edge): each interval between samples is a
 * level segment, so even the first one shows. */
static void sparkline(struct mbuf *b, const struct sample *s, int n)
{
	enum { W = 360, H = 60 };
	const double span_ms = (double)(NSAMPLES - 1) * SAMPLE_MS;
	double rate[2][NSAMPLES + 1], max = 1;

	for (int i = 1; i < n; i++) {
		int64_t dt = s[i].ms - s[i - 1].ms;
		rate[0][i] = per_s(s[i - 1].pkts_in, s[i].pkts_in, dt);
		rate[1][i] = per_s(s[i - 1].pkts_out, s[i].pkts_out, dt);
		for (int k = 0; k < 2; k++)
			if (rate[k][i] > max)
				max = rate[k][i];
	}
	mbuf_printf(b, "<svg id=\"sparkline\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
		    "role=\"img\" aria-label=\"packets per second, last %d minutes\">"
		    "<rect width=\"%d\" height=\"%d\" fill=\"#f6f6f6\"/>", W, H + 4, W, H + 4,
		    (int)(span_ms / 60000), W, H + 4);
	static const char *const color[2] = { "#1f77b4", "#ff7f0e" };
	for (int k = 0; k < 2 && n > 1; k++) {
		mbuf_printf(b, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"",
			    color[k]);
		for (int i = 1; i < n; i++) {
			double y = 2 + H - rate[k][i] / max * H;
			for (int e = i - 1; e <= i; e++) {
				double x = W - (double)(s[n - 1].ms - s[e].ms) / span_ms * W;
				mbuf_printf(b, "%.1f,%.1f ", x < 0 ? 0 : x, y);
			}
		}
		mbuf_puts(b, "\"/>");
	}
	mbuf_printf(b, "<text x=\"4\" y=\"12\" font-size=\"10\">max %.0f/s</text></svg>", max);
}

void status_page(struct mbuf *b, const struct metrics_snapshot *s, const struct config *cfg)
{
	struct sample hist[NSAMPLES + 1] = { { 0 } }, now;
	int n;
	char host[256] = "", up[64], t[64];

	gethostname(host, sizeof host - 1);
	sample_of(&s->derp, &now);
	pthread_mutex_lock(&st.mu);
	n = st.n;
	for (int i = 0; i < n; i++)
		hist[i] = st.s[(st.head - n + i + NSAMPLES) % NSAMPLES];
	pthread_mutex_unlock(&st.mu);
	/* "Now" is the last sample to this request (at least a second, else the interval
	 * before it); the sparkline ends with it. */
	const struct sample *from = n ? &hist[n - 1] : &now;
	if (n >= 2 && now.ms - from->ms < 1000)
		from = &hist[n - 2];
	int64_t dt = now.ms - from->ms;
	hist[n++] = now;

	const struct derp_stats *d = &s->derp.sum;
	mbuf_puts(b, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>derpd status: ");
	esc(b, host);
	mbuf_puts(b, "</title><style>body{font:14px system-ui,sans-serif;margin:1.5em}"
		     "table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{padding:2px 10px;"
		     "text-align:left;border-bottom:1px solid #ddd}td{font-variant-numeric:"
		     "tabular-nums}.bad{color:#b00;font-weight:bold}.good{color:#070}"
		     "h2{font-size:1.1em;margin-bottom:0}</style></head><body>\n<h1>derpd on ");
	esc(b, host);
	mbuf_puts(b, "</h1>\n<p>Figures as of this request; reload to refresh.</p>\n");

	duration(up, sizeof up, s->uptime_sec);
	mbuf_puts(b, "<h2>Server</h2><table>\n");
	row_text(b, "Uptime", "uptime", up);
	row_text(b, "Version", "version", s->version);
	row_text(b, "Revision", "revision", s->revision ? s->revision : "unknown");
	row_text(b, "TLS library", "tls-library", s->tls_library ? s->tls_library : "");
	row_text(b, "AES-NI", "aesni", s->aesni ? "in use" : "not in use");
	row_text(b, "Machine", "machine", host);
	row_text(b, "TLS hostname", "hostname", cfg && cfg->hostname ? cfg->hostname : "");
	row_text(b, "Mesh key", "mesh-key", server_have_mesh_key() ? "true" : "false");
	mbuf_puts(b, "</table>\n");

	mbuf_puts(b, "<h2>Traffic</h2><table>\n");
	row_num(b, "Connections", "connections", (double)(int64_t)d->current_connections, "%.0f");
	row_num(b, "Home connections", "home-connections",
		(double)(int64_t)d->current_home_connections, "%.0f");
	row_num(b, "Clients here", "clients-local", (double)s->derp.clients_local, "%.0f");
	row_num(b, "Clients on mesh peers", "clients-remote", (double)s->derp.clients_remote, "%.0f");
	row_num(b, "Packets/s in", "pps-in", per_s(from->pkts_in, now.pkts_in, dt), "%.1f");
	row_num(b, "Packets/s out", "pps-out", per_s(from->pkts_out, now.pkts_out, dt), "%.1f");
	row_num(b, "Bytes/s in", "bps-in", per_s(from->bytes_in, now.bytes_in, dt), "%.0f");
	row_num(b, "Bytes/s out", "bps-out", per_s(from->bytes_out, now.bytes_out, dt), "%.0f");
	row_num(b, "Drops/s", "drops-per-s", per_s(from->drops, now.drops, dt), "%.1f");
	row_num(b, "Packets in (total)", "packets-in", (double)now.pkts_in, "%.0f");
	row_num(b, "Packets out (total)", "packets-out", (double)now.pkts_out, "%.0f");
	row_num(b, "Rate interval (s)", "rate-interval", (double)dt / 1000.0, "%.3f");
	mbuf_printf(b, "<tr><th>Packets/s, last %d min (<span style=\"color:#1f77b4\">in</span>, "
		    "<span style=\"color:#ff7f0e\">out</span>)</th><td>",
		    (NSAMPLES - 1) * SAMPLE_MS / 60000);
	sparkline(b, hist, n);
	mbuf_puts(b, "</td></tr>\n</table>\n");

	mbuf_puts(b, "<h2>Drops by reason</h2><table>\n<tr><th>reason</th><th>packets</th>"
		     "<th>bytes</th></tr>\n");
	for (int r = 0; r < DROP_NREASONS; r++) {
		uint64_t p = 0, by = 0;
		for (int k = 0; k < KIND_N; k++) {
			p += d->packets_dropped[r][k];
			by += d->bytes_dropped[r][k];
		}
		mbuf_printf(b, "<tr><th>%s</th><td id=\"drops-%s\">%llu</td><td>%llu</td></tr>\n",
			    stats_drop_reason_name[r], stats_drop_reason_name[r],
			    (unsigned long long)p, (unsigned long long)by);
	}
	mbuf_puts(b, "</table>\n");

	mbuf_puts(b, "<h2>Mesh peers</h2>");
	if (s->nmesh == 0) {
		mbuf_puts(b, "<p id=\"mesh-none\">No -mesh-with peers.</p>\n");
	} else {
		mbuf_puts(b, "<table>\n<tr><th>peer</th><th>link</th><th>forward drops</th></tr>\n");
		for (size_t i = 0; i < s->nmesh; i++) {
			mbuf_puts(b, "<tr><th>");
			esc(b, s->mesh[i].peer);
			mbuf_printf(b, "</th><td id=\"mesh-%zu-link\" class=\"%s\">%s</td><td>%llu</td>"
				    "</tr>\n", i, s->mesh[i].up ? "good" : "bad",
				    s->mesh[i].up ? "up" : "down",
				    (unsigned long long)s->mesh[i].fwd_drops);
		}
		mbuf_puts(b, "</table>\n");
	}

	mbuf_puts(b, "<h2>Certificates</h2>");
	if (s->ncerts == 0) {
		mbuf_puts(b, "<p id=\"certs-none\">None served (plain HTTP, or not issued yet).</p>\n");
	} else {
		time_t wall = time(NULL);
		mbuf_puts(b, "<table>\n<tr><th>name</th><th>expires (UTC)</th><th>days left</th></tr>\n");
		for (size_t i = 0; i < s->ncerts; i++) {
			time_t na = (time_t)s->certs[i].not_after;
			struct tm tm;
			gmtime_r(&na, &tm);
			strftime(t, sizeof t, "%Y-%m-%d %H:%M", &tm);
			double days = (double)(na - wall) / 86400.0;
			mbuf_puts(b, "<tr><th>");
			esc(b, s->certs[i].name);
			mbuf_printf(b, "</th><td>%s</td><td id=\"cert-%zu-days\" class=\"%s\">%.1f</td>"
				    "</tr>\n", t, i, days < 14 ? "bad" : "good", days);
		}
		mbuf_puts(b, "</table>\n");
	}

	static const char *const links[][2] = {
		{ "/debug/vars", "Metrics (Go)" },
		{ "/debug/varz", "Metrics (Prometheus)" },
		{ "/metrics", "Metrics (Prometheus conventions)" },
		{ "/debug/check", "Consistency check" },
		{ "/debug/traffic", "Traffic check" },
	};
	mbuf_puts(b, "<h2>derper debug</h2><ul>\n");
	for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
		mbuf_printf(b, "<li><a href=\"%s\">%s</a> (%s)</li>\n", links[i][0], links[i][0],
			    links[i][1]);
	mbuf_puts(b, "</ul>\n</body></html>\n");
}
