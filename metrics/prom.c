/* /metrics: derpd's own exposition of the same values as /debug/varz, following the
 * Prometheus conventions that derper's names predate: HELP and TYPE on every family,
 * counters end in _total, base units (seconds, bytes), every label value present from
 * the start. `promtool check metrics` finds nothing to say about it. */
#include "metrics/internal.h"

#include <string.h>

static void fam(struct mbuf *b, const char *name, const char *type, const char *help)
{
	mbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Values print signed: a gauge summed from per-worker deltas may dip below 0 briefly. */
static void one(struct mbuf *b, const char *name, const char *type, const char *help,
		long long v)
{
	fam(b, name, type, help);
	mbuf_printf(b, "%s %lld\n", name, v);
}

static void onef(struct mbuf *b, const char *name, const char *type, const char *help,
		 double v)
{
	fam(b, name, type, help);
	mbuf_printf(b, "%s ", name);
	mbuf_go_float(b, v);
	mbuf_puts(b, "\n");
}

static void hist(struct mbuf *b, const char *name, const char *help, const int *le, int nle,
		 const uint64_t *per, uint64_t count, double sum)
{
	fam(b, name, "histogram", help);
	uint64_t cum = 0;
	for (int i = 0; i < nle; i++) {
		cum += per ? per[i] : 0;
		mbuf_printf(b, "%s_bucket{le=\"%d\"} %lld\n", name, le[i], (long long)cum);
	}
	mbuf_printf(b, "%s_bucket{le=\"+Inf\"} %lld\n%s_sum ", name, (long long)count,
		    name);
	mbuf_go_float(b, sum);
	mbuf_printf(b, "\n%s_count %lld\n", name, (long long)count);
}

static const char *const tls_label[HTTPD_TLS_NVERSIONS] = { "1.0", "1.1", "1.2", "1.3",
							     "unknown" };

static void derp_counters(struct mbuf *b, const struct derp_stats *d)
{
	static const struct {
		const char *name, *help;
		size_t off;
	} c[] = {
#define C(n, f, h) { n, h, offsetof(struct derp_stats, f) }
		C("derp_accepts_total", accepts, "Connections handed to the DERP layer."),
		C("derp_bytes_received_total", bytes_received, "Packet payload bytes received in SendPacket frames."),
		C("derp_bytes_sent_total", bytes_sent, "Packet payload bytes written in RecvPacket frames."),
		C("derp_dup_client_conns_total", total_dup_client_conns, "Connections registered while their key was already connected."),
		C("derp_got_ping_total", got_ping, "Ping frames received."),
		C("derp_home_moves_in_total", home_moves_in, "Clients that made this server their home (NotePreferred 0 to 1)."),
		C("derp_home_moves_out_total", home_moves_out, "Clients that stopped using this server as home (NotePreferred 1 to 0)."),
		C("derp_multiforwarder_created_total", multiforwarder_created, "Keys that became claimed by two or more mesh peers."),
		C("derp_multiforwarder_deleted_total", multiforwarder_deleted, "Multi-peer forwarders collapsed back to one."),
		C("derp_packet_forwarder_delete_other_value_total", packet_forwarder_delete_other_value, "Forwarder removals that did not match the current forwarder."),
		C("derp_packets_forwarded_in_total", packets_forwarded_in, "ForwardPacket frames received from mesh peers."),
		C("derp_packets_forwarded_out_total", packets_forwarded_out, "Packets forwarded to mesh peers."),
		C("derp_packets_received_total", packets_received, "SendPacket frames accepted."),
		C("derp_packets_sent_total", packets_sent, "RecvPacket frames written."),
		C("derp_peer_gone_disconnected_frames_total", peer_gone_disconnected_frames, "PeerGone frames with reason disconnected written."),
		C("derp_peer_gone_not_here_frames_total", peer_gone_not_here_frames, "PeerGone frames with reason not-here written."),
		C("derp_sclient_write_timeouts_total", sclient_write_timeouts, "Connections ended by a write deadline."),
		C("derp_sent_pong_total", sent_pong, "Pong frames written."),
		C("derp_websocket_accepts_total", websocket_accepts, "WebSocket DERP connections accepted."),
#undef C
	};
	for (size_t i = 0; i < sizeof c / sizeof c[0]; i++)
		one(b, c[i].name, "counter", c[i].help,
		    (long long)*(const uint64_t *)((const char *)d + c[i].off));
}

static void dropped(struct mbuf *b, const char *name, const char *help,
		    const uint64_t v[DROP_NREASONS][KIND_N])
{
	fam(b, name, "counter", help);
	for (int r = 0; r < DROP_NREASONS; r++)
		for (int k = 0; k < KIND_N; k++)
			mbuf_printf(b, "%s{reason=\"%s\",kind=\"%s\"} %lld\n", name,
				    stats_drop_reason_name[r], stats_kind_name[k],
				    (long long)v[r][k]);
}

void prom_write(struct mbuf *b, const struct metrics_snapshot *s)
{
	const struct derp_stats *d = &s->derp.sum;
	const struct derp_stats_snapshot *g = &s->derp;
	prom_build_info(b, s);
	onef(b, "process_cpu_seconds_total", "counter",
	     "Total user and system CPU time spent in seconds.", s->cpu_seconds);
	one(b, "process_max_fds", "gauge", "Maximum number of open file descriptors.",
	    (long long)s->max_fds);
	one(b, "process_open_fds", "gauge", "Number of open file descriptors.",
	    (long long)s->open_fds);
	one(b, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
	    (long long)s->rss_bytes);
	onef(b, "process_start_time_seconds", "gauge",
	     "Start time of the process since unix epoch in seconds.", s->start_time);
	one(b, "process_threads", "gauge", "Number of OS threads in the process.",
	    (long long)s->threads);
	one(b, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.",
	    (long long)s->vsize_bytes);
	onef(b, "process_virtual_memory_max_bytes", "gauge",
	     "Maximum amount of virtual memory available in bytes.", s->vsize_max_bytes);
	if (s->boot_time != 0)
		one(b, "node_boot_time_seconds", "gauge", "Machine boot time, Unix seconds.",
		    (long long)s->boot_time);
	one(b, "derpd_startup_resident_memory_bytes", "gauge",
	    "Resident memory when the relay started (derper's derp_memstats_sys0).",
	    (long long)g->memstats_sys0);

	one(b, "derpd_conn_moves_total", "counter",
	    "Connections moved to the worker thread their packets go to.",
	    (long long)d->conn_moves);
	one(b, "derpd_http_connections", "gauge",
	    "Connections open on the HTTP endpoints (not DERP), every listener.",
	    (long long)s->http.open);
	one(b, "derpd_http_connections_refused_total", "counter",
	    "HTTP connections refused because every slot had a request in progress.",
	    (long long)s->http.refused);
	one(b, "derpd_http_connections_evicted_total", "counter",
	    "Idle keep-alive HTTP connections closed to make room for a new one.",
	    (long long)s->http.evicted);
	one(b, "derpd_http_read_timeouts_total", "counter",
	    "HTTP requests cut because they were not read within --http-read-timeout.",
	    (long long)s->http.read_timeouts);
	derp_counters(b, d);
	onef(b, "derp_average_queue_duration_seconds", "gauge",
	     "Moving average (alpha 0.1) of the time packets spent queued.",
	     g->average_queue_duration_ms / 1000.0);
	hist(b, "derp_buffered_write_frames", "Frames written per flush.", stats_write_frames_le,
	     STATS_WRITE_FRAMES_BUCKETS, d->write_frames_bucket, d->write_frames_count,
	     (double)d->write_frames_sum);
	fam(b, "derp_packets_received_kind_total", "counter", "SendPacket packets by kind.");
	for (int k = 0; k < KIND_N; k++)
		mbuf_printf(b, "derp_packets_received_kind_total{kind=\"%s\"} %lld\n",
			    stats_kind_name[k], (long long)d->packets_received_kind[k]);
	fam(b, "derp_tcp_rtt_samples_total", "counter",
	    "TCP round-trip-time samples by bucket (upper bound, non-tcp, or error).");
	for (int i = 0; i < RTT_N; i++)
		mbuf_printf(b, "derp_tcp_rtt_samples_total{bucket=\"%s\"} %lld\n", stats_rtt_label[i],
			    (long long)d->tcp_rtt[i]);
	dropped(b, "derp_packets_dropped_total", "DERP packets dropped by reason and by kind.",
		d->packets_dropped);
	dropped(b, "derp_bytes_dropped_total", "DERP bytes dropped by reason and by kind.",
		d->bytes_dropped);
	one(b, "derp_clients_local", "gauge", "Distinct keys connected here.",
	    (long long)g->clients_local);
	one(b, "derp_clients_remote", "gauge", "Keys known only through mesh peers.",
	    (long long)g->clients_remote);
	one(b, "derp_clients_known", "gauge", "Keys known in the region (derper's derp_clients_total).",
	    (long long)(g->clients_local + g->clients_remote));
	one(b, "derp_current_connections", "gauge", "Registered DERP connections.",
	    (long long)d->current_connections);
	one(b, "derp_current_home_connections", "gauge", "Connections whose client calls this server home.",
	    (long long)d->current_home_connections);
	one(b, "derp_current_notideal_connections", "gauge", "Connections that arrived with an Ideal-Node header.",
	    (long long)d->current_notideal_connections);
	one(b, "derp_current_dup_client_keys", "gauge", "Keys with two or more connections.",
	    (long long)g->current_dup_client_keys);
	one(b, "derp_current_dup_client_conns", "gauge", "Connections belonging to such keys.",
	    (long long)g->current_dup_client_conns);
	one(b, "derp_watchers", "gauge", "Connections subscribed to peer presence (mesh).",
	    (long long)d->watchers);
	fam(b, "derpd_admission_checks_total", "counter",
	    "Client admission checks (-verify-clients, -verify-client-url) by how they ended.");
	for (int i = 0; i < ADMISSION_NRESULTS; i++)
		mbuf_printf(b, "derpd_admission_checks_total{result=\"%s\"} %lld\n",
			    admission_result_name[i], (long long)s->admission[i]);

	prom_write_slo(b, s);

	fam(b, "stun_requests_total", "counter", "STUN packets by outcome.");
	mbuf_printf(b, "stun_requests_total{disposition=\"not_stun\"} %lld\n"
		       "stun_requests_total{disposition=\"read_error\"} %lld\n"
		       "stun_requests_total{disposition=\"success\"} %lld\n"
		       "stun_requests_total{disposition=\"write_error\"} %lld\n",
		    (long long)s->stun.not_stun, (long long)s->stun.read_error,
		    (long long)s->stun.success, (long long)s->stun.write_error);
	fam(b, "stun_addrfamily_total", "counter", "Valid STUN requests by address family.");
	mbuf_printf(b, "stun_addrfamily_total{family=\"ipv4\"} %lld\n"
		       "stun_addrfamily_total{family=\"ipv6\"} %lld\n",
		    (long long)s->stun.ipv4, (long long)s->stun.ipv6);

	one(b, "bootstrap_dns_requests_total", "counter", "Requests to /bootstrap-dns.",
	    s->dns.requests);
	one(b, "bootstrap_dns_published_hits_total", "counter",
	    "Queries for a published name that has addresses.", s->dns.published_hits);
	one(b, "bootstrap_dns_published_misses_total", "counter",
	    "Queries for a published name without addresses.", s->dns.published_misses);
	one(b, "bootstrap_dns_unpublished_hits_total", "counter",
	    "Queries for an unpublished name that has addresses.", s->dns.unpublished_hits);
	one(b, "bootstrap_dns_unpublished_misses_total", "counter",
	    "Queries for a name in neither list.", s->dns.unpublished_misses);
	one(b, "bootstrap_dns_unpublished_percent_misses_total", "counter",
	    "Unpublished hits outside the rollout percentage.", s->dns.unpublished_percent_misses);
	one(b, "bootstrap_dns_queried_domains", "gauge",
	    "Distinct names queried (the set is cleared past 500).", s->dns.queried_domains);

	fam(b, "derper_tls_requests_total", "counter", "Requests received over TLS by version.");
	for (int v = 0; v < HTTPD_TLS_NVERSIONS; v++)
		mbuf_printf(b, "derper_tls_requests_total{version=\"%s\"} %lld\n", tls_label[v],
			    (long long)s->tls_request[v]);
	fam(b, "derper_tls_active_requests", "gauge",
	    "Requests (DERP: connections) in flight over TLS by version.");
	for (int v = 0; v < HTTPD_TLS_NVERSIONS; v++)
		mbuf_printf(b, "derper_tls_active_requests{version=\"%s\"} %lld\n", tls_label[v],
			    (long long)s->tls_active[v]);
	fam(b, "derpd_tls_handshake_failures_total", "counter",
	    "TLS handshakes on the relay listener that failed, by reason.");
	for (int r = 0; r < TLS_FAIL_N; r++)
		mbuf_printf(b, "derpd_tls_handshake_failures_total{reason=\"%s\"} %lld\n",
			    server_tls_fail_name[r], (long long)s->tls_handshake_failures[r]);
	if (s->tls_mode) {
		one(b, "tls_listener_accepted_connections_total", "counter",
		    "Connections let through by the accept limiter.", s->tls_accepted);
		one(b, "tls_listener_rejected_connections_total", "counter",
		    "Connections closed by the accept limiter.", s->tls_rejected);
	}
}
