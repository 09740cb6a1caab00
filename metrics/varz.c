/* /debug/varz exactly as derper prints it (SERVER.md §15): first what upstream's native
 * Prometheus registry gives (here: derpd_build_info and the process_* family), then the
 * expvar-converted variables sorted by name with type prefixes removed; inside the "derp"
 * group, members in the order of their raw expvar keys (prefixes included), which is how
 * Go's expvar.Map iterates. Existing dashboards and alerts keep working unchanged. */
#include "metrics/internal.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static void typed(struct mbuf *b, const char *name, const char *type, long long v)
{
	mbuf_printf(b, "# TYPE %s %s\n%s %lld\n", name, type, name, v);
}

static void native(struct mbuf *b, const char *name, const char *type, const char *help,
		   double v)
{
	mbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s ", name, help, name, type, name);
	mbuf_go_float(b, v);
	mbuf_puts(b, "\n");
}

/* Go's metrics.Histogram.PromExport; bucket counts are cumulative, +Inf is the count. */
static void histogram(struct mbuf *b, const char *name, const int *le, int nle,
		      const uint64_t *per_bucket, uint64_t count, double sum)
{
	mbuf_printf(b, "# TYPE %s histogram\n", name);
	uint64_t cum = 0;
	for (int i = 0; i < nle; i++) {
		cum += per_bucket ? per_bucket[i] : 0;
		mbuf_printf(b, "%s_bucket{le=\"%d\"} %llu\n", name, le[i], (unsigned long long)cum);
	}
	mbuf_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum ", name, (unsigned long long)count,
		    name);
	mbuf_go_float(b, sum);
	mbuf_printf(b, "\n%s_count %llu\n", name, (unsigned long long)count);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* derp_packets_dropped / derp_bytes_dropped: a MultiLabelMap, samples sorted by their
 * rendered label string; all 14 pairs exist from the start. */
static void dropped(struct mbuf *b, const char *name, const char *help,
		    const uint64_t v[DROP_NREASONS][KIND_N])
{
	char lines[DROP_NREASONS * KIND_N][128];
	const char *sorted[DROP_NREASONS * KIND_N];
	int n = 0;
	for (int r = 0; r < DROP_NREASONS; r++)
		for (int k = 0; k < KIND_N; k++, n++) {
			snprintf(lines[n], sizeof lines[n], "{reason=\"%s\",kind=\"%s\"} %llu",
				 stats_drop_reason_name[r], stats_kind_name[k],
				 (unsigned long long)v[r][k]);
			sorted[n] = lines[n];
		}
	qsort(sorted, (size_t)n, sizeof sorted[0], cmp_str);
	mbuf_printf(b, "# TYPE %s counter\n# HELP %s %s\n", name, name, help);
	for (int i = 0; i < n; i++)
		mbuf_printf(b, "%s%s\n", name, sorted[i]);
}

static const char *const tls_label[HTTPD_TLS_NVERSIONS] = { "1.0", "1.1", "1.2", "1.3",
							     "unknown" };

static void derp_group(struct mbuf *b, const struct metrics_snapshot *s)
{
	const struct derp_stats *d = &s->derp.sum;
	const struct derp_stats_snapshot *g = &s->derp;
	typed(b, "derp_accepts", "counter", (long long)d->accepts);
	mbuf_puts(b, "derp_average_queue_duration_ms ");
	mbuf_go_float(b, g->average_queue_duration_ms);
	mbuf_puts(b, "\n");
	typed(b, "derp_bytes_received", "counter", (long long)d->bytes_received);
	typed(b, "derp_bytes_sent", "counter", (long long)d->bytes_sent);
	histogram(b, "derp_buffered_write_frames", stats_write_frames_le,
		  STATS_WRITE_FRAMES_BUCKETS, d->write_frames_bucket, d->write_frames_count,
		  (double)d->write_frames_sum);
	histogram(b, "derp_mesh_update_batch_size", stats_mesh_batch_le, STATS_MESH_BATCH_BUCKETS,
		  d->mesh_batch_bucket, d->mesh_batch_count, (double)d->mesh_batch_sum);
	histogram(b, "derp_mesh_update_loop_count", stats_mesh_loop_le, STATS_MESH_LOOP_BUCKETS,
		  d->mesh_loop_bucket, d->mesh_loop_count, (double)d->mesh_loop_sum);
	mbuf_puts(b, "# TYPE derp_packets_received_kind counter\n");
	for (int k = 0; k < KIND_N; k++) /* "disco" < "other" */
		mbuf_printf(b, "derp_packets_received_kind{kind=\"%s\"} %llu\n", stats_kind_name[k],
			    (unsigned long long)d->packets_received_kind[k]);
	mbuf_puts(b, "# TYPE derp_tcp_rtt counter\n");
	const char *rtt[RTT_N];
	char rtt_lines[RTT_N][80];
	int nrtt = 0;
	for (int i = 0; i < RTT_N; i++)
		if (d->tcp_rtt[i] != 0) { /* a label appears when first used */
			snprintf(rtt_lines[nrtt], sizeof rtt_lines[nrtt], "%s\"} %llu",
				 stats_rtt_label[i], (unsigned long long)d->tcp_rtt[i]);
			rtt[nrtt] = rtt_lines[nrtt];
			nrtt++;
		}
	qsort(rtt, (size_t)nrtt, sizeof rtt[0], cmp_str);
	for (int i = 0; i < nrtt; i++)
		mbuf_printf(b, "derp_tcp_rtt{le=\"%s\n", rtt[i]);
	typed(b, "derp_total_dup_client_conns", "counter", (long long)d->total_dup_client_conns);
	typed(b, "derp_clients_local", "gauge", (long long)g->clients_local);
	typed(b, "derp_clients_remote", "gauge", (long long)g->clients_remote);
	typed(b, "derp_clients_total", "gauge", (long long)(g->clients_local + g->clients_remote));
	typed(b, "derp_current_connections", "gauge", (long long)d->current_connections);
	typed(b, "derp_current_dup_client_conns", "gauge", (long long)g->current_dup_client_conns);
	typed(b, "derp_current_dup_client_keys", "gauge", (long long)g->current_dup_client_keys);
	typed(b, "derp_current_file_descriptors", "gauge", (long long)s->open_fds);
	typed(b, "derp_current_home_connections", "gauge", (long long)d->current_home_connections);
	typed(b, "derp_current_notideal_connections", "gauge",
	      (long long)d->current_notideal_connections);
	typed(b, "derp_memstats_sys0", "gauge", (long long)g->memstats_sys0);
	typed(b, "derp_watchers", "gauge", (long long)d->watchers);
	typed(b, "derp_got_ping", "counter", (long long)d->got_ping);
	typed(b, "derp_home_moves_in", "counter", (long long)d->home_moves_in);
	typed(b, "derp_home_moves_out", "counter", (long long)d->home_moves_out);
	typed(b, "derp_multiforwarder_created", "counter", (long long)d->multiforwarder_created);
	typed(b, "derp_multiforwarder_deleted", "counter", (long long)d->multiforwarder_deleted);
	typed(b, "derp_packet_forwarder_delete_other_value", "counter",
	      (long long)d->packet_forwarder_delete_other_value);
	typed(b, "derp_packets_forwarded_in", "counter", (long long)d->packets_forwarded_in);
	typed(b, "derp_packets_forwarded_out", "counter", (long long)d->packets_forwarded_out);
	typed(b, "derp_packets_received", "counter", (long long)d->packets_received);
	typed(b, "derp_packets_sent", "counter", (long long)d->packets_sent);
	typed(b, "derp_peer_gone_disconnected_frames", "counter",
	      (long long)d->peer_gone_disconnected_frames);
	typed(b, "derp_peer_gone_not_here_frames", "counter",
	      (long long)d->peer_gone_not_here_frames);
	if (g->rate_config) {
		/* Only with --rate-config, as upstream publishes them. */
		mbuf_printf(b, "derp_rate_limit_per_client_burst_bytes %llu\n",
			    (unsigned long long)g->rate_burst_bytes);
		mbuf_printf(b, "derp_rate_limit_per_client_bytes_per_second %llu\n",
			    (unsigned long long)g->rate_bytes_per_sec);
		typed(b, "derp_rate_limit_per_client_waited", "counter",
		      (long long)d->rate_limit_per_client_waited);
	}
	typed(b, "derp_sclient_write_timeouts", "counter", (long long)d->sclient_write_timeouts);
	typed(b, "derp_sent_pong", "counter", (long long)d->sent_pong);
	typed(b, "derp_unknown_frames", "counter", 0); /* declared, never counted upstream */
	mbuf_puts(b, "# skipping expvar \"derp_version\" (Go type *expvar.String) with "
		     "undeclared Prometheus type\n");
}

void varz_write(struct mbuf *b, const struct metrics_snapshot *s)
{
	/* the native-registry part, sorted by family name */
	prom_build_info(b, s);
	native(b, "process_cpu_seconds_total", "counter",
	       "Total user and system CPU time spent in seconds.", s->cpu_seconds);
	native(b, "process_max_fds", "gauge", "Maximum number of open file descriptors.",
	       (double)s->max_fds);
	native(b, "process_open_fds", "gauge", "Number of open file descriptors.",
	       (double)s->open_fds);
	native(b, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
	       (double)s->rss_bytes);
	native(b, "process_start_time_seconds", "gauge",
	       "Start time of the process since unix epoch in seconds.", s->start_time);
	native(b, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.",
	       (double)s->vsize_bytes);
	native(b, "process_virtual_memory_max_bytes", "gauge",
	       "Maximum amount of virtual memory available in bytes.", s->vsize_max_bytes);

	/* the expvar part */
	typed(b, "bootstrap_dns_published_hits", "counter", (long long)s->dns.published_hits);
	typed(b, "bootstrap_dns_published_misses", "counter", (long long)s->dns.published_misses);
	typed(b, "bootstrap_dns_queried_domains", "counter", (long long)s->dns.queried_domains);
	typed(b, "bootstrap_dns_requests", "counter", (long long)s->dns.requests);
	typed(b, "bootstrap_dns_unpublished_hits", "counter", (long long)s->dns.unpublished_hits);
	typed(b, "bootstrap_dns_unpublished_misses", "counter",
	      (long long)s->dns.unpublished_misses);
	typed(b, "bootstrap_dns_unpublished_percent_misses", "counter",
	      (long long)s->dns.unpublished_percent_misses);
	derp_group(b, s);
	dropped(b, "derp_bytes_dropped", "DERP bytes dropped by reason and by kind",
		s->derp.sum.bytes_dropped);
	dropped(b, "derp_packets_dropped", "DERP packets dropped by reason and by kind",
		s->derp.sum.packets_dropped);
	typed(b, "derp_websocket_accepts", "counter", (long long)s->derp.sum.websocket_accepts);
	mbuf_puts(b, "# TYPE derper_tls_active_version gauge\n");
	for (int v = 0; v < HTTPD_TLS_NVERSIONS; v++)
		if (s->tls_active_seen & (1u << v))
			mbuf_printf(b, "derper_tls_active_version{version=\"%s\"} %lld\n",
				    tls_label[v], (long long)s->tls_active[v]);
	for (int v = 0; v < HTTPD_TLS_NVERSIONS; v++) /* untyped upstream: no TYPE line */
		if (s->tls_request_seen & (1u << v))
			mbuf_printf(b, "derper_tls_request_version{version=\"%s\"} %llu\n",
				    tls_label[v], (unsigned long long)s->tls_request[v]);
	typed(b, "goroutines", "gauge", (long long)s->threads); /* derpd: its threads */
	if (s->boot_time != 0)
		mbuf_printf(b, "node_boot_time_seconds %lld\n", (long long)s->boot_time);
	mbuf_printf(b, "process_start_unix_time %lld\n", (long long)s->start_time);
	mbuf_printf(b, "# TYPE stun_addrfamily counter\n"
		       "stun_addrfamily{family=\"ipv4\"} %llu\nstun_addrfamily{family=\"ipv6\"} %llu\n",
		    (unsigned long long)s->stun.ipv4, (unsigned long long)s->stun.ipv6);
	mbuf_printf(b, "# TYPE stun_requests counter\n"
		       "stun_requests{disposition=\"not_stun\"} %llu\n"
		       "stun_requests{disposition=\"read_error\"} %llu\n"
		       "stun_requests{disposition=\"success\"} %llu\n"
		       "stun_requests{disposition=\"write_error\"} %llu\n",
		    (unsigned long long)s->stun.not_stun, (unsigned long long)s->stun.read_error,
		    (unsigned long long)s->stun.success, (unsigned long long)s->stun.write_error);
	if (s->tls_mode) {
		typed(b, "tls_listener_accepted_connections", "counter", (long long)s->tls_accepted);
		typed(b, "tls_listener_rejected_connections", "counter", (long long)s->tls_rejected);
	}
	typed(b, "uptime_sec", "counter", (long long)s->uptime_sec);
	mbuf_printf(b, "version{version=\"%s\",binary=\"%s\"} 1\n", s->version, s->binary);
}

/* /debug/vars: upstream prints Go's expvar JSON; derpd gives the same variables under
 * the same raw names (type prefixes kept), numbers only. */
char *vars_json(const struct metrics_snapshot *s)
{
	const struct derp_stats *d = &s->derp.sum;
	const struct derp_stats_snapshot *g = &s->derp;
	json_t *o = json_object(), *derp = json_object();
#define J(obj, k, v) json_object_set_new(obj, k, json_integer((json_int_t)(v)))
	J(o, "counter_bootstrap_dns_requests", s->dns.requests);
	J(o, "counter_bootstrap_dns_published_hits", s->dns.published_hits);
	J(o, "counter_bootstrap_dns_published_misses", s->dns.published_misses);
	J(o, "counter_bootstrap_dns_unpublished_hits", s->dns.unpublished_hits);
	J(o, "counter_bootstrap_dns_unpublished_misses", s->dns.unpublished_misses);
	J(o, "counter_bootstrap_dns_unpublished_percent_misses", s->dns.unpublished_percent_misses);
	J(o, "counter_bootstrap_dns_queried_domains", s->dns.queried_domains);
	J(o, "counter_uptime_sec", s->uptime_sec);
	J(o, "gauge_goroutines", s->threads);
	J(o, "process_start_unix_time", (long long)s->start_time);
	J(o, "derp_websocket_accepts", d->websocket_accepts);
	json_object_set_new(o, "version", json_string(s->version));
	J(derp, "accepts", d->accepts);
	json_object_set_new(derp, "average_queue_duration_ms",
			    json_real(g->average_queue_duration_ms));
	J(derp, "bytes_received", d->bytes_received);
	J(derp, "bytes_sent", d->bytes_sent);
	J(derp, "packets_received", d->packets_received);
	J(derp, "packets_sent", d->packets_sent);
	J(derp, "got_ping", d->got_ping);
	J(derp, "sent_pong", d->sent_pong);
	J(derp, "home_moves_in", d->home_moves_in);
	J(derp, "home_moves_out", d->home_moves_out);
	J(derp, "peer_gone_disconnected_frames", d->peer_gone_disconnected_frames);
	J(derp, "peer_gone_not_here_frames", d->peer_gone_not_here_frames);
	J(derp, "packets_forwarded_in", d->packets_forwarded_in);
	J(derp, "packets_forwarded_out", d->packets_forwarded_out);
	J(derp, "sclient_write_timeouts", d->sclient_write_timeouts);
	J(derp, "counter_total_dup_client_conns", d->total_dup_client_conns);
	J(derp, "gauge_clients_local", g->clients_local);
	J(derp, "gauge_clients_remote", g->clients_remote);
	J(derp, "gauge_clients_total", g->clients_local + g->clients_remote);
	J(derp, "gauge_current_connections", d->current_connections);
	J(derp, "gauge_current_home_connections", d->current_home_connections);
	J(derp, "gauge_current_notideal_connections", d->current_notideal_connections);
	J(derp, "gauge_current_dup_client_keys", g->current_dup_client_keys);
	J(derp, "gauge_current_dup_client_conns", g->current_dup_client_conns);
	J(derp, "gauge_current_file_descriptors", s->open_fds);
	J(derp, "gauge_memstats_sys0", (long long)g->memstats_sys0);
	J(derp, "gauge_watchers", d->watchers);
	json_t *kind = json_object();
	for (int k = 0; k < KIND_N; k++)
		J(kind, stats_kind_name[k], d->packets_received_kind[k]);
	json_object_set_new(derp, "counter_packets_received_kind", kind);
	json_object_set_new(o, "derp", derp);
	json_t *stun = json_object(), *req = json_object(), *fam = json_object();
	J(req, "not_stun", s->stun.not_stun);
	J(req, "read_error", s->stun.read_error);
	J(req, "success", s->stun.success);
	J(req, "write_error", s->stun.write_error);
	J(fam, "ipv4", s->stun.ipv4);
	J(fam, "ipv6", s->stun.ipv6);
	json_object_set_new(stun, "counter_requests", req);
	json_object_set_new(stun, "counter_addrfamily", fam);
	json_object_set_new(o, "stun", stun);
#undef J
	char *out = json_dumps(o, JSON_INDENT(1) | JSON_SORT_KEYS);
	json_decref(o);
	return out;
}
