/* The /metrics families an SLO is built on (issue 14.4), beside derper's: build identity,
 * queue delay and TCP RTT as real cumulative histograms in seconds, certificate expiry
 * per served name, ACME order outcomes, and each mesh peer's link and forwarding drops.
 * Same conventions as prom.c: HELP and TYPE on every family, counters end in _total, base
 * units, every label value of a known set present from the start. */
#include "metrics/internal.h"

#include <string.h>

static void fam(struct mbuf *b, const char *name, const char *type, const char *help)
{
	mbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value as the text format wants it: backslash, quote and newline escaped. */
static void label_value(struct mbuf *b, const char *v)
{
	for (; *v; v++) {
		if (*v == '\\' || *v == '"')
			mbuf_printf(b, "\\%c", *v);
		else if (*v == '\n')
			mbuf_puts(b, "\\n");
		else
			mbuf_add(b, v, 1);
	}
}

void prom_build_info(struct mbuf *b, const struct metrics_snapshot *s)
{
	fam(b, "derpd_build_info", "gauge",
	    "derpd's version, source revision, TLS library and AES-NI use, as a constant 1.");
	mbuf_puts(b, "derpd_build_info{version=\"");
	label_value(b, s->version ? s->version : "unknown");
	mbuf_puts(b, "\",revision=\"");
	label_value(b, s->revision ? s->revision : "unknown");
	mbuf_puts(b, "\",tls_library=\"");
	label_value(b, s->tls_library ? s->tls_library : "unknown");
	mbuf_printf(b, "\",aesni=\"%s\"} 1\n", s->aesni ? "true" : "false");
}

/* Bounds in microseconds, printed in seconds; buckets non-cumulative as the workers keep
 * them, summed here. */
static void hist_us(struct mbuf *b, const char *name, const char *help, const int64_t *le_us,
		    int nle, const uint64_t *per, uint64_t count, uint64_t sum_us)
{
	fam(b, name, "histogram", help);
	uint64_t cum = 0;
	for (int i = 0; i < nle; i++) {
		cum += per[i];
		mbuf_printf(b, "%s_bucket{le=\"", name);
		mbuf_go_float(b, (double)le_us[i] / 1e6);
		mbuf_printf(b, "\"} %llu\n", (unsigned long long)cum);
	}
	/* +Inf is the count, read apart from the buckets: a scrape racing a worker must
	 * still see cumulative, monotone buckets */
	cum += per[nle];
	if (count < cum)
		count = cum;
	mbuf_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum ", name, (unsigned long long)count,
		    name);
	mbuf_go_float(b, (double)sum_us / 1e6);
	mbuf_printf(b, "\n%s_count %llu\n", name, (unsigned long long)count);
}

void prom_write_slo(struct mbuf *b, const struct metrics_snapshot *s)
{
	const struct derp_stats *d = &s->derp.sum;

	hist_us(b, "derpd_queue_delay_seconds",
		"Time packets spent in a receiver's send queue (millisecond resolution).",
		stats_queue_delay_le_us, STATS_QUEUE_DELAY_BUCKETS, d->queue_delay_bucket,
		d->queue_delay_count, d->queue_delay_sum);
	hist_us(b, "derpd_tcp_rtt_seconds",
		"Kernel-smoothed TCP round-trip time of DERP connections, at login and every 10 s.",
		stats_rtt_le_us, STATS_RTT_BUCKETS, d->rtt_bucket, d->rtt_count, d->rtt_sum);

	fam(b, "derpd_tls_certificate_expiry_timestamp_seconds", "gauge",
	    "notAfter of each certificate served, by name (Unix seconds).");
	for (size_t i = 0; i < s->ncerts; i++) {
		mbuf_puts(b, "derpd_tls_certificate_expiry_timestamp_seconds{name=\"");
		label_value(b, s->certs[i].name);
		mbuf_printf(b, "\"} %lld\n", (long long)s->certs[i].not_after);
	}
	fam(b, "derpd_acme_orders_total", "counter",
	    "ACME certificate orders (issuances and renewals) attempted.");
	mbuf_printf(b, "derpd_acme_orders_total %llu\n", (unsigned long long)s->acme_orders);
	fam(b, "derpd_acme_order_failures_total", "counter",
	    "ACME certificate orders that failed (retried after a backoff).");
	mbuf_printf(b, "derpd_acme_order_failures_total %llu\n",
		    (unsigned long long)s->acme_failures);

	fam(b, "derpd_mesh_peer_up", "gauge",
	    "1 while the outbound mesh link to the --mesh-with peer is logged in, else 0.");
	for (size_t i = 0; i < s->nmesh; i++) {
		mbuf_puts(b, "derpd_mesh_peer_up{peer=\"");
		label_value(b, s->mesh[i].peer);
		mbuf_printf(b, "\"} %d\n", s->mesh[i].up ? 1 : 0);
	}
	fam(b, "derpd_mesh_forward_drops_total", "counter",
	    "Packets bound for a mesh peer that were dropped (link gone or write failed).");
	for (size_t i = 0; i < s->nmesh; i++) {
		mbuf_puts(b, "derpd_mesh_forward_drops_total{peer=\"");
		label_value(b, s->mesh[i].peer);
		mbuf_printf(b, "\"} %llu\n", (unsigned long long)s->mesh[i].fwd_drops);
	}
}
