/* metrics/: Go float formatting, the /debug/ access rule with addresses, derper's varz
 * order and shapes from a synthetic snapshot, the `ss` parser, and the connection handoff
 * in process (accept on loopback, peek, httpd_add_connection), over TCP and over a
 * socketpair as a TLS bridge would use it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "metrics/httpd.h"
#include "metrics/internal.h"
#include "server/config.h"

static void test_go_float(void **state)
{
	(void)state;
	static const struct { double v; const char *want; } t[] = {
		{ 0, "0" }, { 1, "1" }, { 0.8, "0.8" }, { 10, "10" }, { 100000, "100000" },
		{ 123456.7, "123456.7" }, { 1e6, "1e+06" }, { 1234567, "1.234567e+06" },
		{ 0.0001, "0.0001" }, { 0.00001, "1e-05" }, { 1.5e-5, "1.5e-05" },
		{ 0.1 + 0.2, "0.30000000000000004" }, { 1712345678.25, "1.71234567825e+09" },
		{ 18446744073709551615.0, "1.8446744073709552e+19" }, { -2.5, "-2.5" },
		{ INFINITY, "+Inf" }, { -INFINITY, "-Inf" }, { NAN, "NaN" },
	};
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
		char out[48];
		go_float_format(out, sizeof out, t[i].v);
		assert_string_equal(out, t[i].want);
	}
}

static struct sockaddr_storage addr(const char *ip)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
	if (inet_pton(AF_INET, ip, &v4->sin_addr) == 1) {
		v4->sin_family = AF_INET;
		v4->sin_port = htons(4242);
	} else {
		assert_int_equal(inet_pton(AF_INET6, ip, &v6->sin6_addr), 1);
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons(4242);
	}
	return ss;
}

static int allowed(const char *ip)
{
	struct sockaddr_storage ss = addr(ip);
	return debug_access_allowed((struct sockaddr *)&ss, 1, NULL, 0);
}

static void test_debug_access_addresses(void **state)
{
	(void)state;
	char err[128];
	unsetenv("TS_ALLOW_DEBUG_IP");
	unsetenv("TS_DEBUG_TRUSTED_CIDRS");
	unsetenv("TS_DEBUG_KEY_PATH");
	assert_int_equal(debug_access_init(err, sizeof err), 0);
	static const struct { const char *ip; int ok; } t[] = {
		{ "127.0.0.1", 1 }, { "127.1.2.3", 1 }, { "::1", 1 }, { "::ffff:127.0.0.1", 1 },
		{ "100.64.0.1", 1 }, { "100.127.255.255", 1 }, { "::ffff:100.100.1.1", 1 },
		{ "100.115.92.1", 0 }, { "100.115.93.255", 0 }, { "100.115.94.0", 1 },
		{ "100.63.255.255", 0 }, { "100.128.0.0", 0 },
		{ "fd7a:115c:a1e0::1", 1 }, { "fd7a:115c:a1e0:ffff::1", 1 }, { "fd7a:115c:a1e1::1", 0 },
		{ "8.8.8.8", 0 }, { "10.0.0.1", 0 }, { "192.168.1.1", 0 }, { "2001:db8::1", 0 },
		{ "::2", 0 }, { "0.0.0.0", 0 },
	};
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
		if (allowed(t[i].ip) != t[i].ok)
			fail_msg("%s: want %d", t[i].ip, t[i].ok);
	}
	/* any X-Forwarded-For denies, even from loopback */
	struct sockaddr_storage lo = addr("127.0.0.1");
	assert_false(debug_access_allowed((struct sockaddr *)&lo, 1, NULL, 1));
	assert_false(debug_access_allowed(NULL, 1, NULL, 0));
}

static void test_debug_access_env(void **state)
{
	(void)state;
	char err[128], path[] = "/tmp/derpd-test-debugkey-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "  s3cret\n", 9), 9);
	close(fd);
	setenv("TS_ALLOW_DEBUG_IP", "203.0.113.5", 1);
	setenv("TS_DEBUG_TRUSTED_CIDRS", "192.0.2.0/24, 2001:db8::/32", 1);
	setenv("TS_DEBUG_KEY_PATH", path, 1);
	assert_int_equal(debug_access_init(err, sizeof err), 0);
	assert_true(allowed("203.0.113.5"));
	assert_false(allowed("203.0.113.6"));
	assert_true(allowed("192.0.2.200"));
	assert_true(allowed("::ffff:192.0.2.1"));
	assert_false(allowed("192.0.3.1"));
	assert_true(allowed("2001:db8:1::1"));
	struct sockaddr_storage far = addr("8.8.8.8");
	struct sockaddr *fa = (struct sockaddr *)&far;
	assert_true(debug_access_allowed(fa, 1, "s3cret", 0));
	assert_true(debug_access_allowed(fa, 1, "s3cret", 1)); /* the key wins over XFF */
	assert_false(debug_access_allowed(fa, 0, "s3cret", 0)); /* GET only */
	assert_false(debug_access_allowed(fa, 1, "s3cre", 0));
	assert_false(debug_access_allowed(fa, 1, "", 0));
	unlink(path);
	setenv("TS_DEBUG_TRUSTED_CIDRS", "192.0.2.0/24,nonsense", 1);
	assert_int_equal(debug_access_init(err, sizeof err), -1);
	assert_non_null(strstr(err, "nonsense"));
	setenv("TS_DEBUG_TRUSTED_CIDRS", "10.0.0.0/33", 1);
	assert_int_equal(debug_access_init(err, sizeof err), -1);
	/* As many entries as given (derper has no limit; 64 was fatal here), empty ones skipped */
	static char many[200 * 20];
	size_t n = 0;
	for (int i = 0; i < 200; i++)
		n += (size_t)snprintf(many + n, sizeof many - n, "%s10.%d.%d.0/24", i ? "," : "",
				      i / 100, i % 100);
	snprintf(many + n, sizeof many - n, ", ,");
	setenv("TS_DEBUG_TRUSTED_CIDRS", many, 1);
	assert_int_equal(debug_access_init(err, sizeof err), 0);
	assert_true(allowed("10.1.99.7"));
	assert_false(allowed("10.2.0.1"));
	unsetenv("TS_ALLOW_DEBUG_IP");
	unsetenv("TS_DEBUG_TRUSTED_CIDRS");
	unsetenv("TS_DEBUG_KEY_PATH");
	assert_int_equal(debug_access_init(err, sizeof err), 0);
}

/* Family names in order of appearance (from "# TYPE" lines and untyped samples). */
static size_t families(const char *text, char names[][64], size_t max)
{
	size_t n = 0;
	for (const char *p = text; *p && n < max;) {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);
		char line[512];
		snprintf(line, sizeof line, "%.*s", (int)len, p);
		p += len + (nl != NULL);
		char name[64] = "";
		if (sscanf(line, "# TYPE %63s", name) != 1 && line[0] != '#')
			sscanf(line, "%63[^{ ]", name);
		if (name[0] == '\0')
			continue;
		char base[64];
		snprintf(base, sizeof base, "%s", name);
		if (n > 0 && strncmp(base, names[n - 1], strlen(names[n - 1])) == 0)
			continue; /* samples of the family just named (_bucket, _sum, labels) */
		snprintf(names[n++], 64, "%s", base);
	}
	return n;
}

static void test_varz_order_and_shapes(void **state)
{
	(void)state;
	struct metrics_snapshot s;
	memset(&s, 0, sizeof s);
	s.version = "9.9.9";
	snprintf(s.binary, sizeof s.binary, "derpd");
	s.derp.sum.accepts = 12;
	s.derp.sum.current_connections = 3;
	s.derp.sum.packets_received_kind[KIND_DISCO] = 4;
	s.derp.sum.packets_received_kind[KIND_OTHER] = 250;
	s.derp.average_queue_duration_ms = 0.8;
	s.derp.sum.packets_dropped[DROP_QUEUE_HEAD][KIND_OTHER] = 17;
	s.derp.sum.tcp_rtt[RTT_10MS] = 5;
	s.derp.sum.tcp_rtt[RTT_100MS] = 2;
	s.derp.sum.tcp_rtt[RTT_NON_TCP] = 1;
	s.derp.sum.write_frames_bucket[0] = 0;
	s.derp.sum.write_frames_bucket[1] = 3; /* le=1 */
	s.derp.sum.write_frames_bucket[2] = 2; /* le=2 */
	s.derp.sum.write_frames_bucket[STATS_WRITE_FRAMES_BUCKETS] = 1; /* > 100 */
	s.derp.sum.write_frames_count = 6;
	s.derp.sum.write_frames_sum = 1000007;
	s.derp.clients_local = 2;
	s.derp.clients_remote = 5;
	s.stun.success = 7;
	s.tls_request_seen = 1u << HTTPD_TLS_13;
	s.tls_request[HTTPD_TLS_13] = 9;
	s.boot_time = 1700000000;
	s.start_time = 1712345678.5;
	struct mbuf b = { 0 };
	varz_write(&b, &s);
	assert_false(b.oom);
	const char *t = b.p;

	static const char *const want[] = {
		"derpd_build_info", "process_cpu_seconds_total", "process_max_fds",
		"process_open_fds", "process_resident_memory_bytes", "process_start_time_seconds",
		"process_virtual_memory_bytes", "process_virtual_memory_max_bytes",
		"bootstrap_dns_published_hits", "bootstrap_dns_published_misses",
		"bootstrap_dns_queried_domains", "bootstrap_dns_requests",
		"bootstrap_dns_unpublished_hits", "bootstrap_dns_unpublished_misses",
		"bootstrap_dns_unpublished_percent_misses",
		/* the derp group, by raw expvar key: accepts, average_..., bytes_*, counter_*,
		 * gauge_*, then the rest */
		"derp_accepts", "derp_average_queue_duration_ms", "derp_bytes_received",
		"derp_bytes_sent", "derp_buffered_write_frames", "derp_mesh_update_batch_size",
		"derp_mesh_update_loop_count", "derp_packets_received_kind", "derp_tcp_rtt",
		"derp_total_dup_client_conns", "derp_clients_local", "derp_clients_remote",
		"derp_clients_total", "derp_current_connections", "derp_current_dup_client_conns",
		"derp_current_dup_client_keys", "derp_current_file_descriptors",
		"derp_current_home_connections", "derp_current_notideal_connections",
		"derp_memstats_sys0", "derp_watchers", "derp_got_ping", "derp_home_moves_in",
		"derp_home_moves_out", "derp_multiforwarder_created", "derp_multiforwarder_deleted",
		"derp_packet_forwarder_delete_other_value", "derp_packets_forwarded_in",
		"derp_packets_forwarded_out", "derp_packets_received", "derp_packets_sent",
		"derp_peer_gone_disconnected_frames", "derp_peer_gone_not_here_frames",
		"derp_sclient_write_timeouts", "derp_sent_pong", "derp_unknown_frames",
		"derp_bytes_dropped", "derp_packets_dropped", "derp_websocket_accepts",
		"derper_tls_active_version", "derper_tls_request_version", "goroutines",
		"node_boot_time_seconds", "process_start_unix_time", "stun_addrfamily",
		"stun_requests", "uptime_sec", "version",
	};
	char got[128][64];
	size_t n = families(t, got, 128);
	size_t nw = sizeof want / sizeof want[0];
	for (size_t i = 0; i < nw && i < n; i++)
		if (strcmp(got[i], want[i]) != 0)
			fail_msg("family %zu: got %s, want %s", i, got[i], want[i]);
	assert_int_equal(n, nw);

	/* exact lines, as upstream prints them */
	static const char *const lines[] = {
		"# TYPE derp_accepts counter\nderp_accepts 12\n",
		"\nderp_average_queue_duration_ms 0.8\n",
		"# TYPE derp_current_connections gauge\nderp_current_connections 3\n",
		"# TYPE derp_packets_received_kind counter\n"
		"derp_packets_received_kind{kind=\"disco\"} 4\n"
		"derp_packets_received_kind{kind=\"other\"} 250\n",
		/* only used labels, sorted as strings */
		"# TYPE derp_tcp_rtt counter\nderp_tcp_rtt{le=\"100ms\"} 2\n"
		"derp_tcp_rtt{le=\"10ms\"} 5\nderp_tcp_rtt{le=\"non-tcp\"} 1\n# TYPE derp_total",
		"derp_buffered_write_frames_bucket{le=\"0\"} 0\n"
		"derp_buffered_write_frames_bucket{le=\"1\"} 3\n"
		"derp_buffered_write_frames_bucket{le=\"2\"} 5\n"
		"derp_buffered_write_frames_bucket{le=\"3\"} 5\n",
		"derp_buffered_write_frames_bucket{le=\"100\"} 5\n"
		"derp_buffered_write_frames_bucket{le=\"+Inf\"} 6\n"
		"derp_buffered_write_frames_sum 1.000007e+06\n"
		"derp_buffered_write_frames_count 6\n",
		"# TYPE derp_clients_total gauge\nderp_clients_total 7\n",
		"# TYPE derp_packets_dropped counter\n"
		"# HELP derp_packets_dropped DERP packets dropped by reason and by kind\n"
		"derp_packets_dropped{reason=\"dup_client\",kind=\"disco\"} 0\n",
		"derp_packets_dropped{reason=\"queue_head\",kind=\"other\"} 17\n",
		"derp_packets_dropped{reason=\"unknown_dest\",kind=\"other\"} 0\n"
		"derp_packets_dropped{reason=\"unknown_dest_on_fwd\",kind=\"disco\"} 0\n",
		"derp_packets_dropped{reason=\"write_error\",kind=\"other\"} 0\n"
		"# TYPE derp_websocket_accepts counter\n",
		"# TYPE derper_tls_active_version gauge\n"
		"derper_tls_request_version{version=\"1.3\"} 9\n",
		"# skipping expvar \"derp_version\" (Go type *expvar.String) with undeclared "
		"Prometheus type\n",
		"\nnode_boot_time_seconds 1700000000\nprocess_start_unix_time 1712345678\n",
		"stun_requests{disposition=\"success\"} 7\n",
		"\nversion{version=\"9.9.9\",binary=\"derpd\"} 1\n",
		"\nprocess_start_time_seconds 1.7123456785e+09\n",
	};
	for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
		if (strstr(t, lines[i]) == NULL)
			fail_msg("missing:\n%s\n--- in ---\n%s", lines[i], t);
	assert_null(strstr(t, "tls_listener")); /* TLS mode only */
	int ndropped = 0;
	for (const char *p = t; (p = strstr(p, "\nderp_bytes_dropped{")) != NULL; p++)
		ndropped++;
	assert_int_equal(ndropped, DROP_NREASONS * KIND_N);
	mbuf_free(&b);

	s.tls_mode = 1;
	s.tls_accepted = 4;
	varz_write(&b, &s);
	assert_non_null(strstr(b.p, "\n# TYPE tls_listener_accepted_connections counter\n"
				    "tls_listener_accepted_connections 4\n"
				    "# TYPE tls_listener_rejected_connections counter\n"
				    "tls_listener_rejected_connections 0\n# TYPE uptime_sec"));
	mbuf_free(&b);
}

static void test_prom_conventions(void **state)
{
	(void)state;
	struct metrics_snapshot s;
	memset(&s, 0, sizeof s);
	s.version = "1";
	s.derp.average_queue_duration_ms = 250;
	s.derp.sum.packets_sent = 3;
	struct mbuf b = { 0 };
	prom_write(&b, &s);
	assert_non_null(strstr(b.p, "\nderp_average_queue_duration_seconds 0.25\n"));
	assert_non_null(strstr(b.p, "\nderp_packets_sent_total 3\n"));
	/* every TYPE has a HELP right before it; every counter ends in _total */
	for (const char *p = b.p; (p = strstr(p, "# TYPE ")) != NULL; p++) {
		char name[96], type[16];
		assert_int_equal(sscanf(p, "# TYPE %95s %15s", name, type), 2);
		char help[128];
		snprintf(help, sizeof help, "# HELP %s ", name);
		assert_non_null(strstr(b.p, help));
		if (strcmp(type, "counter") == 0)
			assert_string_equal(name + strlen(name) - 6, "_total");
	}
	mbuf_free(&b);
}

/* derpd's SLO families: labels, cumulative histogram buckets in seconds, +Inf == count,
 * escaped label values, one sample per served certificate and per mesh peer. */
static void test_prom_slo(void **state)
{
	(void)state;
	struct metrics_snapshot s;
	memset(&s, 0, sizeof s);
	s.version = "1.2";
	s.revision = "v1-3-gabc";
	s.tls_library = "wolfSSL 5.5.4";
	s.aesni = 1;
	s.derp.sum.queue_delay_bucket[0] = 4;  /* <= 1 ms */
	s.derp.sum.queue_delay_bucket[2] = 1;  /* <= 5 ms */
	s.derp.sum.queue_delay_bucket[STATS_QUEUE_DELAY_BUCKETS] = 2; /* > 5 s */
	s.derp.sum.queue_delay_count = 7;
	s.derp.sum.queue_delay_sum = 12003000; /* us */
	s.derp.sum.rtt_bucket[1] = 3;
	s.derp.sum.rtt_count = 2; /* lags its buckets (a racing scrape): +Inf takes the buckets */
	s.derp.sum.rtt_sum = 2500;
	struct cert_expiry certs[2] = { { "derp.example.com", 1767225600 }, { "a\"b", 5 } };
	s.certs = certs;
	s.ncerts = 2;
	s.acme_orders = 3;
	s.acme_failures = 1;
	struct mesh_peer_status mesh[2] = { { "derp2.example.com:443", 1, 0 },
					    { "[::1]:8443", 0, 9 } };
	s.mesh = mesh;
	s.nmesh = 2;
	struct mbuf b = { 0 };
	prom_write(&b, &s);
	assert_false(b.oom);
	static const char *const lines[] = {
		"\nderpd_build_info{version=\"1.2\",revision=\"v1-3-gabc\","
		"tls_library=\"wolfSSL 5.5.4\",aesni=\"true\"} 1\n",
		"# TYPE derpd_queue_delay_seconds histogram\n"
		"derpd_queue_delay_seconds_bucket{le=\"0.001\"} 4\n"
		"derpd_queue_delay_seconds_bucket{le=\"0.0025\"} 4\n"
		"derpd_queue_delay_seconds_bucket{le=\"0.005\"} 5\n",
		"derpd_queue_delay_seconds_bucket{le=\"5\"} 5\n"
		"derpd_queue_delay_seconds_bucket{le=\"+Inf\"} 7\n"
		"derpd_queue_delay_seconds_sum 12.003\n"
		"derpd_queue_delay_seconds_count 7\n",
		"derpd_tcp_rtt_seconds_bucket{le=\"0.0005\"} 0\n"
		"derpd_tcp_rtt_seconds_bucket{le=\"0.001\"} 3\n",
		"derpd_tcp_rtt_seconds_bucket{le=\"+Inf\"} 3\n"
		"derpd_tcp_rtt_seconds_sum 0.0025\n"
		"derpd_tcp_rtt_seconds_count 3\n",
		"# TYPE derpd_tls_certificate_expiry_timestamp_seconds gauge\n"
		"derpd_tls_certificate_expiry_timestamp_seconds{name=\"derp.example.com\"} 1767225600\n"
		"derpd_tls_certificate_expiry_timestamp_seconds{name=\"a\\\"b\"} 5\n",
		"\nderpd_acme_orders_total 3\n",
		"\nderpd_acme_order_failures_total 1\n",
		"\nderpd_mesh_peer_up{peer=\"derp2.example.com:443\"} 1\n"
		"derpd_mesh_peer_up{peer=\"[::1]:8443\"} 0\n",
		"\nderpd_mesh_forward_drops_total{peer=\"derp2.example.com:443\"} 0\n"
		"derpd_mesh_forward_drops_total{peer=\"[::1]:8443\"} 9\n",
	};
	for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
		if (strstr(b.p, lines[i]) == NULL)
			fail_msg("missing:\n%s\n--- in ---\n%s", lines[i], b.p);
	mbuf_free(&b);

	/* /debug/varz carries the same build info line (derper's native-registry part) */
	varz_write(&b, &s);
	assert_non_null(strstr(b.p, "derpd_build_info{version=\"1.2\",revision=\"v1-3-gabc\""));
	mbuf_free(&b);
}

static void test_ss_parse(void **state)
{
	(void)state;
	const char *out =
		"ESTAB 0      0      127.0.0.1:3340   127.0.0.1:51234\n"
		"\t cubic wscale:7,7 rto:204 bytes_sent:1500 bytes_acked:1500 bytes_received:77 segs_out:3\n"
		"ESTAB 0      0      [::ffff:127.0.0.1]:3340   [::ffff:127.0.0.1]:40000\n"
		"\t cubic bytes_sent:10 bytes_received:20\n"
		"ESTAB 0      0      [2001:db8::1]:443   [2001:db8:0:0::2]:5555\n"
		"\t bytes_received:9\n"
		"ESTAB 0      0      127.0.0.1:3340   localhost:ssh\n"
		"\t bytes_sent:1\n"
		"short line\n";
	struct traffic_entry e[8];
	size_t n = traffic_parse_ss(out, e, 8);
	assert_int_equal(n, 3);
	assert_string_equal(e[0].peer, "127.0.0.1:51234");
	assert_int_equal(e[0].sent, 1500);
	assert_int_equal(e[0].recv, 77);
	assert_string_equal(e[1].peer, "127.0.0.1:40000");
	assert_int_equal(e[1].sent, 10);
	assert_int_equal(e[1].recv, 20);
	assert_string_equal(e[2].peer, "[2001:db8::2]:5555");
	assert_int_equal(e[2].sent, 0);
	assert_int_equal(e[2].recv, 9);
}

/* ---- the handoff, in process ---- */

static struct config cfg;

static int setup_httpd(void **state)
{
	(void)state;
	char err[256];
	memset(&cfg, 0, sizeof cfg);
	cfg.run_derp = 1;
	cfg.home = "";
	cfg.hostname = "derp.example.com";
	cfg.bootstrap_dns_names = cfg.unpublished_bootstrap_dns_names = "";
	cfg.metrics_addr = "127.0.0.1:0";
	if (httpd_start(&cfg, err, sizeof err) != 0)
		fail_msg("httpd_start: %s", err);
	return 0;
}

static int teardown_httpd(void **state)
{
	(void)state;
	httpd_stop();
	return 0;
}

static int read_response(int fd, char *buf, size_t cap)
{
	size_t n = 0;
	while (n < cap - 1) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 5000) != 1)
			break;
		ssize_t k = read(fd, buf + n, cap - 1 - n);
		if (k <= 0)
			break;
		n += (size_t)k;
		buf[n] = '\0';
		const char *end = strstr(buf, "\r\n\r\n");
		const char *cl = strstr(buf, "Content-Length: ");
		if (end && cl && n >= (size_t)(end + 4 - buf) + strtoul(cl + 16, NULL, 10))
			break;
	}
	buf[n] = '\0';
	return (int)n;
}

/* Accept on loopback, peek the head as a worker does, hand the socket over. */
static void test_handoff_tcp(void **state)
{
	(void)state;
	int ls = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof sin;
	assert_int_equal(bind(ls, (struct sockaddr *)&sin, sizeof sin), 0);
	assert_int_equal(listen(ls, 4), 0);
	getsockname(ls, (struct sockaddr *)&sin, &sl);
	int cl = socket(AF_INET, SOCK_STREAM, 0);
	assert_int_equal(connect(cl, (struct sockaddr *)&sin, sizeof sin), 0);
	const char *req = "GET /robots.txt HTTP/1.1\r\nHost: x\r\n\r\n"
			  "HEAD /derp/probe HTTP/1.1\r\nHost: x\r\n\r\n";
	assert_int_equal(write(cl, req, strlen(req)), (ssize_t)strlen(req));
	struct sockaddr_storage peer;
	socklen_t pl = sizeof peer;
	int fd = accept(ls, (struct sockaddr *)&peer, &pl);
	assert_true(fd >= 0);
	char peek[256];
	assert_true(recv(fd, peek, sizeof peek, MSG_PEEK) > 0);
	assert_int_equal(httpd_add_connection(fd, (struct sockaddr *)&peer, pl), 0);
	/* both answers, in order, on the same connection (they may share one read) */
	char resp[8192] = "";
	size_t n = 0;
	while (strstr(resp, "Access-Control-Allow-Origin: *\r\n") == NULL) {
		struct pollfd p = { .fd = cl, .events = POLLIN };
		assert_int_equal(poll(&p, 1, 5000), 1);
		ssize_t k = read(cl, resp + n, sizeof resp - 1 - n);
		assert_true(k > 0);
		n += (size_t)k;
		resp[n] = '\0';
	}
	const char *first = strstr(resp, "HTTP/1.1 200 OK\r\n");
	assert_non_null(first);
	const char *body = strstr(first, "\r\n\r\nUser-agent: *\nDisallow: /\n");
	assert_non_null(body);
	const char *second = strstr(body, "HTTP/1.1 200 OK\r\n");
	assert_non_null(second);
	assert_non_null(strstr(second, "Access-Control-Allow-Origin: *\r\n"));
	close(cl);
	close(ls);
}

/* A socketpair end stands for a TLS bridge: the peer address given is what counts. */
static void test_handoff_socketpair(void **state)
{
	(void)state;
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	struct sockaddr_storage far = addr("198.51.100.7");
	assert_int_equal(httpd_add_connection(sv[1], (struct sockaddr *)&far,
					      sizeof(struct sockaddr_in)), 0);
	const char *req = "GET /debug/ HTTP/1.1\r\nHost: x\r\n\r\n";
	assert_int_equal(write(sv[0], req, strlen(req)), (ssize_t)strlen(req));
	char resp[16384]; /* the status page */
	read_response(sv[0], resp, sizeof resp);
	assert_non_null(strstr(resp, "HTTP/1.1 403 Forbidden\r\n"));
	assert_non_null(strstr(resp, "\r\n\r\ndebug access denied\n"));
	close(sv[0]);

	struct sockaddr_storage ts = addr("100.100.100.100");
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(httpd_add_connection(sv[1], (struct sockaddr *)&ts,
					      sizeof(struct sockaddr_in)), 0);
	/* no relay runs in this process: pages that read the relay are e2e-tested */
	req = "GET /debug/ HTTP/1.1\r\nHost: x\r\n\r\n";
	assert_int_equal(write(sv[0], req, strlen(req)), (ssize_t)strlen(req));
	read_response(sv[0], resp, sizeof resp);
	assert_non_null(strstr(resp, "HTTP/1.1 200 OK\r\n"));
	assert_non_null(strstr(resp, "<h2>derper debug</h2>"));
	close(sv[0]);
}

static void test_metrics_listener(void **state)
{
	(void)state;
	int port = httpd_metrics_port();
	assert_true(port > 0);
	int cl = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	assert_int_equal(connect(cl, (struct sockaddr *)&sin, sizeof sin), 0);
	/* scrapes only here (their content needs a relay: see test/e2e/test_http.c) */
	const char *req = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
	static char resp[65536];
	assert_int_equal(write(cl, req, strlen(req)), (ssize_t)strlen(req));
	read_response(cl, resp, sizeof resp);
	assert_non_null(strstr(resp, "HTTP/1.1 404 Not Found\r\n"));
	close(cl);
}

static void test_add_before_start_closes(void **state)
{
	(void)state;
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(httpd_add_connection(sv[1], NULL, 0), -1);
	char c;
	assert_int_equal(read(sv[0], &c, 1), 0); /* closed, not leaked */
	close(sv[0]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_go_float),
		cmocka_unit_test(test_debug_access_addresses),
		cmocka_unit_test(test_debug_access_env),
		cmocka_unit_test(test_varz_order_and_shapes),
		cmocka_unit_test(test_prom_conventions),
		cmocka_unit_test(test_prom_slo),
		cmocka_unit_test(test_ss_parse),
		cmocka_unit_test(test_add_before_start_closes),
		cmocka_unit_test_setup_teardown(test_handoff_tcp, setup_httpd, teardown_httpd),
		cmocka_unit_test_setup_teardown(test_handoff_socketpair, setup_httpd, teardown_httpd),
		cmocka_unit_test_setup_teardown(test_metrics_listener, setup_httpd, teardown_httpd),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
