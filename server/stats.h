/* Data-plane counters, one block per worker so the hot path never shares a cache line.
 * Only the owning worker writes its block (STAT_ADD); readers (the metrics scrape) sum all
 * blocks with relaxed loads via server_stats_sum(). Gauges are kept as per-worker deltas
 * whose sum is the gauge (a connection may be counted up on one worker, down on another). */
#ifndef DERPD_STATS_H
#define DERPD_STATS_H
#include <stdint.h>

enum drop_reason {
	DROP_UNKNOWN_DEST,
	DROP_UNKNOWN_DEST_ON_FWD,
	DROP_GONE_DISCONNECTED,
	DROP_QUEUE_HEAD,
	DROP_QUEUE_TAIL,
	DROP_WRITE_ERROR,
	DROP_DUP_CLIENT,
	DROP_NREASONS
};
enum packet_kind { KIND_DISCO, KIND_OTHER, KIND_N };

extern const char *const stats_drop_reason_name[DROP_NREASONS]; /* "unknown_dest", ... */
extern const char *const stats_kind_name[KIND_N];                /* "disco", "other" */

/* derp_buffered_write_frames bucket bounds (le), then +Inf. */
#define STATS_WRITE_FRAMES_BUCKETS 16
extern const int stats_write_frames_le[STATS_WRITE_FRAMES_BUCKETS];

/* derp_mesh_update_batch_size / derp_mesh_update_loop_count bounds (le), then +Inf. */
#define STATS_MESH_BATCH_BUCKETS 11
#define STATS_MESH_LOOP_BUCKETS 8
extern const int stats_mesh_batch_le[STATS_MESH_BATCH_BUCKETS];
extern const int stats_mesh_loop_le[STATS_MESH_LOOP_BUCKETS];

/* derpd_queue_delay_seconds and derpd_tcp_rtt_seconds bucket bounds (le) in microseconds,
 * then +Inf: real cumulative histograms beside derper's moving average and RTT labels. */
#define STATS_QUEUE_DELAY_BUCKETS 12
#define STATS_RTT_BUCKETS 14
extern const int64_t stats_queue_delay_le_us[STATS_QUEUE_DELAY_BUCKETS];
extern const int64_t stats_rtt_le_us[STATS_RTT_BUCKETS];

/* derp_tcp_rtt labels, in order. */
enum rtt_bucket { RTT_10MS, RTT_20MS, RTT_50MS, RTT_100MS, RTT_150MS, RTT_250MS, RTT_500MS,
		  RTT_INF, RTT_NON_TCP, RTT_ERROR, RTT_N };
extern const char *const stats_rtt_label[RTT_N];

struct derp_stats {
	/* counters */
	uint64_t accepts;
	uint64_t total_dup_client_conns;
	uint64_t bytes_received, bytes_sent;
	uint64_t packets_received, packets_sent;
	uint64_t packets_received_kind[KIND_N];
	uint64_t home_moves_in, home_moves_out;
	uint64_t got_ping, sent_pong;
	uint64_t peer_gone_disconnected_frames, peer_gone_not_here_frames;
	uint64_t packets_forwarded_out, packets_forwarded_in;
	uint64_t multiforwarder_created, multiforwarder_deleted; /* from the forwarder table */
	uint64_t packet_forwarder_delete_other_value;
	uint64_t sclient_write_timeouts;
	uint64_t websocket_accepts;
	uint64_t rate_limit_per_client_waited;
	uint64_t packets_dropped[DROP_NREASONS][KIND_N];
	uint64_t bytes_dropped[DROP_NREASONS][KIND_N];
	uint64_t write_frames_bucket[STATS_WRITE_FRAMES_BUCKETS + 1]; /* non-cumulative; last = +Inf */
	uint64_t write_frames_sum, write_frames_count;
	uint64_t mesh_batch_bucket[STATS_MESH_BATCH_BUCKETS + 1], mesh_batch_sum, mesh_batch_count;
	uint64_t mesh_loop_bucket[STATS_MESH_LOOP_BUCKETS + 1], mesh_loop_sum, mesh_loop_count;
	uint64_t tcp_rtt[RTT_N];
	uint64_t queue_ns_sum, queue_count; /* for derp_average_queue_duration_ms */
	/* derpd_queue_delay_seconds, derpd_tcp_rtt_seconds: non-cumulative, microseconds */
	uint64_t queue_delay_bucket[STATS_QUEUE_DELAY_BUCKETS + 1], queue_delay_sum, queue_delay_count;
	uint64_t rtt_bucket[STATS_RTT_BUCKETS + 1], rtt_sum, rtt_count;
	uint64_t conn_moves;                /* derpd_conn_moves_total (move.c) */
	/* gauges (deltas; the sum over workers is the value) */
	int64_t current_connections;
	int64_t current_home_connections;
	int64_t current_notideal_connections;
	int64_t watchers;
} __attribute__((aligned(64)));

/* Single-writer increment: a relaxed atomic load/store pair, which compiles to a plain add
 * but keeps concurrent scrapes free of data races. */
#define STAT_ADD(st, field, n) \
	__atomic_store_n(&(st)->field, __atomic_load_n(&(st)->field, __ATOMIC_RELAXED) + (n), \
			 __ATOMIC_RELAXED)

/* Count v in a histogram kept as non-cumulative buckets (bounds le[0..n-1], then +Inf). */
#define STAT_OBSERVE(st, name, le, n, v)                                         \
	do {                                                                   \
		int b_ = (n);                                                  \
		for (int i_ = 0; i_ < (n); i_++)                               \
			if ((int64_t)(v) <= (le)[i_]) {                        \
				b_ = i_;                                       \
				break;                                         \
			}                                                      \
		STAT_ADD(st, name##_bucket[b_], 1);                            \
		STAT_ADD(st, name##_sum, (uint64_t)(v));                       \
		STAT_ADD(st, name##_count, 1);                                 \
	} while (0)

/* Everything a scrape needs from the relay, summed over workers plus the map's gauges. */
struct derp_stats_snapshot {
	struct derp_stats sum;
	int64_t clients_local;          /* distinct local keys */
	int64_t clients_remote;         /* keys known only via mesh */
	int64_t current_dup_client_keys;
	int64_t current_dup_client_conns;
	double average_queue_duration_ms;
	int rate_config;                 /* --rate-config is set: the rate metrics exist */
	uint64_t rate_bytes_per_sec, rate_burst_bytes;
	double memstats_sys0;
};

/* Fill snap from every worker's block and the client map. Safe from any thread. */
void server_stats_sum(struct derp_stats_snapshot *snap);

#endif
